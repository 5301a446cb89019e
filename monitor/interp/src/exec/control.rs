//! Near control transfer: JMP Jcc CALL RET, LOOP LOOPE LOOPNE JCXZ JECXZ; software
//! interrupts INT n INT3 INTO INT1; BOUND (SDM vol. 2).
//!
//! Every near transfer checks its target against the CS limit (#GP(0), raised at the
//! transferring instruction with nothing changed) and, with a 16-bit operand size, truncates
//! the target to 16 bits. Relative targets are computed from the instruction's own EIP and
//! displacement (not from the address iced-x86 decoded it at), so an instruction decoded
//! elsewhere by the monitor executes correctly.
//!
//! INT1 (ICEBP, F1) raises #DB as a hardware exception would (no gate-DPL check, EXT set in
//! error codes of faults during delivery), as a trap: the return address is the next
//! instruction. INT3 and INTO are software exceptions (gate-DPL check, EXT clear).

use iced_x86::{Instruction, Mnemonic, OpKind, Register};

use super::operand::reg_size;
use crate::exception::EventKind;
use crate::state::{flags, vector, SegReg};
use crate::{exc, Bus, Cpu, Res};

impl<B: Bus> Cpu<B> {
    /// The target of a relative branch (`NearBranch16/32` operand 0), truncated to the
    /// operand size.
    #[inline]
    fn rel_target(&self, i: &Instruction, size: u8) -> u32 {
        let disp = (i.near_branch_target() as u32).wrapping_sub(i.next_ip() as u32);
        let t = self.cur_eip.wrapping_add(i.len() as u32).wrapping_add(disp);
        if size == 2 {
            t & 0xffff
        } else {
            t
        }
    }

    /// The target of operand 0 of a near JMP/CALL: relative or register/memory indirect.
    #[inline]
    fn near_target(&mut self, i: &Instruction, size: u8) -> Res<u32> {
        match i.op0_kind() {
            OpKind::NearBranch16 | OpKind::NearBranch32 => Ok(self.rel_target(i, size)),
            OpKind::Register => {
                let v = self.reg(i.op0_register());
                Ok(if size == 2 { v & 0xffff } else { v })
            }
            _ => {
                let (s, off) = self.ea(i);
                self.read(s, off, size)
            }
        }
    }

    /// Transfer to `target` within the current code segment: #GP(0) beyond the CS limit.
    #[inline]
    fn near_jump(&mut self, target: u32) -> Res<()> {
        if target > self.state.seg[SegReg::Cs as usize].limit {
            return Err(exc::gp0());
        }
        self.next_eip = target;
        Ok(())
    }

    pub(super) fn jmp_near(&mut self, i: &Instruction) -> Res<()> {
        let size = self.osize(i);
        let t = self.near_target(i, size)?;
        self.near_jump(t)
    }

    pub(super) fn jcc(&mut self, i: &Instruction) -> Res<()> {
        if self.cond(i.condition_code()) {
            let size = self.osize(i);
            let t = self.rel_target(i, size);
            self.near_jump(t)?;
        }
        Ok(())
    }

    pub(super) fn call_near(&mut self, i: &Instruction) -> Res<()> {
        let size = self.osize(i);
        let t = self.near_target(i, size)?;
        if t > self.state.seg[SegReg::Cs as usize].limit {
            return Err(exc::gp0());
        }
        let ret = self.next_eip;
        self.push(size, ret)?;
        self.next_eip = t;
        Ok(())
    }

    pub(super) fn ret_near(&mut self, i: &Instruction) -> Res<()> {
        let size = self.osize(i);
        let mut t = self.pop(size)?;
        if size == 2 {
            t &= 0xffff;
        }
        self.near_jump(t)?;
        if i.op_count() > 0 && i.op0_kind() == OpKind::Immediate16 {
            let big = self.state.stack32();
            let sp = self.state.gpr[4].wrapping_add(i.immediate16() as u32);
            self.set_sp(sp, big);
        }
        Ok(())
    }

    /// The count register of LOOP/JCXZ: CX or ECX by the address size.
    #[inline]
    fn count_reg(&self, i: &Instruction) -> Register {
        if self.addr16(i) {
            Register::CX
        } else {
            Register::ECX
        }
    }

    pub(super) fn loop_(&mut self, i: &Instruction) -> Res<()> {
        let r = self.count_reg(i);
        let c = self.reg(r).wrapping_sub(1) & if r == Register::CX { 0xffff } else { 0xffff_ffff };
        self.set_reg(r, c);
        let zf = self.state.eflags & flags::ZF != 0;
        let taken = c != 0
            && match i.mnemonic() {
                Mnemonic::Loope => zf,
                Mnemonic::Loopne => !zf,
                _ => true,
            };
        if taken {
            let size = self.osize(i);
            let t = self.rel_target(i, size);
            self.near_jump(t)?;
        }
        Ok(())
    }

    pub(super) fn jcxz(&mut self, i: &Instruction) -> Res<()> {
        let r = self.count_reg(i);
        if self.reg(r) == 0 {
            let size = self.osize(i);
            let t = self.rel_target(i, size);
            self.near_jump(t)?;
        }
        Ok(())
    }

    pub(super) fn int_n(&mut self, i: &Instruction) -> Res<()> {
        self.software_interrupt(i.immediate8(), EventKind::SoftwareInt)
    }

    pub(super) fn int3(&mut self, _i: &Instruction) -> Res<()> {
        self.software_interrupt(vector::BP, EventKind::SoftwareException)
    }

    pub(super) fn into(&mut self, _i: &Instruction) -> Res<()> {
        if self.state.eflags & flags::OF != 0 {
            return self.software_interrupt(vector::OF, EventKind::SoftwareException);
        }
        Ok(())
    }

    /// INT1 / ICEBP: #DB delivered like a hardware exception, as a trap.
    pub(super) fn int1(&mut self, _i: &Instruction) -> Res<()> {
        self.software_interrupt(vector::DB, EventKind::Exception)
    }

    /// BOUND r16/r32, m16&16/m32&32: #BR unless lower <= index <= upper (signed).
    pub(super) fn bound(&mut self, i: &Instruction) -> Res<()> {
        if i.op1_kind() != OpKind::Memory {
            return Err(exc::ud());
        }
        let r = i.op0_register();
        let size = reg_size(r);
        let (s, off) = self.ea(i);
        let (base, index) = (i.memory_base(), i.memory_index());
        let a16 = if base == Register::None && index == Register::None {
            i.memory_displ_size() == 2
        } else {
            (base != Register::None && reg_size(base) == 2) || (index != Register::None && reg_size(index) == 2)
        };
        let off2 = off.wrapping_add(size as u32) & if a16 { 0xffff } else { 0xffff_ffff };
        let lower = self.read(s, off, size)?;
        let upper = self.read(s, off2, size)?;
        let idx = self.reg(r);
        let (idx, lower, upper) = if size == 2 {
            (idx as u16 as i16 as i32, lower as u16 as i16 as i32, upper as u16 as i16 as i32)
        } else {
            (idx as i32, lower as i32, upper as i32)
        };
        if idx < lower || idx > upper {
            return Err(exc::br());
        }
        Ok(())
    }
}
