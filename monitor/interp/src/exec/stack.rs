//! Stack: PUSH POP (general registers, memory, immediates, segment registers), PUSHA POPA,
//! PUSHF POPF, ENTER LEAVE (SDM vol. 2).
//!
//! Notes on the cases the SDM singles out:
//!
//! * PUSH ESP pushes the value ESP had before the push; PUSH of a memory operand addressed
//!   with ESP computes the address before the push.
//! * POP ESP leaves the popped value in ESP; POP into memory addressed with ESP computes the
//!   address with ESP *after* the pop.
//! * PUSH of a segment register with a 32-bit operand size writes the selector zero-extended
//!   to 32 bits, as the host CPU the differential tests run on does (an AMD EPYC; the
//!   differential test caught the difference). The SDM allows either that or a 16-bit write
//!   that leaves the upper half of the slot unmodified (P6 family and recent Intel CPUs).
//! * POP of a segment register loads it with every protection check (`load_seg`) and moves
//!   ESP only if the load succeeds.
//! * POPF follows the protected-mode rules: at CPL 0 every flag but VM, VIP and VIF (RF is
//!   cleared by a 32-bit POPF); IOPL changes only at CPL 0; IF changes only when
//!   CPL <= IOPL and is otherwise *silently* left unchanged (no fault: the instruction that
//!   makes x86 not classically virtualizable). Bits that do not exist (reserved, above ID)
//!   are never set. POPF in virtual-8086 mode is not implemented.
//! * PUSHF pushes EFLAGS with VM and RF read as 0.
//! * ENTER follows the SDM pseudocode: the frame-pointer copies are read from SS:[EBP-k]
//!   (SS:[BP-k] on a 16-bit stack), FrameTemp is ESP (SP on a 16-bit stack) after the push
//!   of EBP, and the final stack pointer is checked for a write of the operand size (the
//!   SDM's #SS/#PF "if a write using the final value of the stack pointer would fault").

use iced_x86::{Instruction, OpKind, Register};

use super::operand::{reg_size, sreg};
use crate::state::{flags, SegReg};
use crate::{exc, Bus, Cpu, Fault, Res};

impl<B: Bus> Cpu<B> {
    pub(super) fn push_op(&mut self, i: &Instruction) -> Res<()> {
        let size = self.osize(i);
        match i.op0_kind() {
            OpKind::Register => {
                let r = i.op0_register();
                if r.is_segment_register() {
                    return self.push_sreg(r, size);
                }
                let v = self.reg(r);
                self.push(reg_size(r), v)
            }
            OpKind::Memory => {
                let (s, off) = self.ea(i);
                let v = self.read(s, off, size)?;
                self.push(size, v)
            }
            OpKind::Immediate8to16 => self.push(2, i.immediate8to16() as u16 as u32),
            OpKind::Immediate8to32 => self.push(size, i.immediate8to32() as u32),
            OpKind::Immediate16 => self.push(2, i.immediate16() as u32),
            OpKind::Immediate32 => self.push(4, i.immediate32()),
            _ => Err(exc::ud()),
        }
    }

    /// PUSH Sreg: the selector, zero-extended to the operand size (see the module doc).
    fn push_sreg(&mut self, r: Register, size: u8) -> Res<()> {
        let sel = self.state.seg(sreg(r)).selector as u32;
        self.push(size, sel)
    }

    pub(super) fn pop_op(&mut self, i: &Instruction) -> Res<()> {
        let size = self.osize(i);
        match i.op0_kind() {
            OpKind::Register => {
                let r = i.op0_register();
                if r.is_segment_register() {
                    let s = sreg(r);
                    if s == SegReg::Cs {
                        return Err(exc::ud());
                    }
                    let sel = self.stack_peek(0, size)? as u16;
                    self.load_seg(s, sel)?;
                    let big = self.state.stack32();
                    let sp = self.state.gpr[4];
                    self.set_sp(sp.wrapping_add(size as u32), big);
                    return Ok(());
                }
                let v = self.pop(reg_size(r))?;
                self.set_reg(r, v);
                Ok(())
            }
            OpKind::Memory => {
                let v = self.pop(size)?;
                // The address is computed with ESP after the pop.
                let (s, off) = self.ea(i);
                self.write(s, off, size, v)
            }
            _ => Err(exc::ud()),
        }
    }

    pub(super) fn pusha(&mut self, i: &Instruction) -> Res<()> {
        let size = self.osize(i);
        let temp = self.state.gpr[4];
        for r in 0..8 {
            let v = if r == 4 { temp } else { self.state.gpr[r] };
            self.push(size, v)?;
        }
        Ok(())
    }

    pub(super) fn popa(&mut self, i: &Instruction) -> Res<()> {
        let size = self.osize(i);
        for r in (0..8).rev() {
            let v = self.pop(size)?;
            if r == 4 {
                continue; // the ESP slot is skipped
            }
            if size == 2 {
                self.state.gpr[r] = (self.state.gpr[r] & 0xffff_0000) | (v & 0xffff);
            } else {
                self.state.gpr[r] = v;
            }
        }
        Ok(())
    }

    pub(super) fn pushf(&mut self, i: &Instruction) -> Res<()> {
        if self.state.v86() && self.state.iopl() < 3 {
            return Err(exc::gp0());
        }
        let size = self.osize(i);
        let image = self.state.eflags & !(flags::VM | flags::RF);
        self.push(size, image)
    }

    pub(super) fn popf(&mut self, i: &Instruction) -> Res<()> {
        if self.state.v86() {
            return Err(Fault::Unsupported("POPF in virtual-8086 mode"));
        }
        let size = self.osize(i);
        let v = self.pop(size)?;
        let cpl = self.state.cpl;
        // Every flag a P6 implements and POPF may write; VM, VIF, VIP and RF are excluded.
        let mut m = flags::STATUS | flags::TF | flags::IF | flags::DF | flags::IOPL | flags::NT | flags::AC | flags::ID;
        if cpl > 0 {
            m &= !flags::IOPL;
            if cpl > self.state.iopl() {
                m &= !flags::IF;
            }
        }
        if size == 2 {
            m &= 0xffff;
        }
        let mut new = (self.state.eflags & !m) | (v & m);
        if size == 4 {
            new &= !flags::RF;
        }
        self.state.eflags = new | flags::FIXED1;
        Ok(())
    }

    pub(super) fn enter(&mut self, i: &Instruction) -> Res<()> {
        let size = self.osize(i);
        let alloc = i.immediate16() as u32;
        let level = i.immediate8_2nd() as u32 % 32;
        let big = self.state.stack32();
        let ebp = self.state.gpr[5];
        self.push(size, ebp)?;
        let frame = if big { self.state.gpr[4] } else { self.state.gpr[4] & 0xffff };
        if level > 0 {
            let mut bp = ebp;
            for _ in 1..level {
                bp = bp.wrapping_sub(size as u32);
                let addr = if big { bp } else { bp & 0xffff };
                let v = self.read(SegReg::Ss, addr, size)?;
                self.push(size, v)?;
            }
            self.push(size, frame)?;
        }
        let sp = self.state.gpr[4];
        let new_sp = if big { sp.wrapping_sub(alloc) } else { sp.wrapping_sub(alloc) & 0xffff };
        // The final stack pointer must allow a write of the operand size.
        self.data_loc(SegReg::Ss, new_sp, size, true)?;
        self.set_sp(new_sp, big);
        if size == 4 {
            self.state.gpr[5] = frame;
        } else {
            self.state.gpr[5] = (self.state.gpr[5] & 0xffff_0000) | (frame & 0xffff);
        }
        Ok(())
    }

    pub(super) fn leave(&mut self, i: &Instruction) -> Res<()> {
        let size = self.osize(i);
        let big = self.state.stack32();
        let ebp = self.state.gpr[5];
        self.set_sp(ebp, big);
        let v = self.pop(size)?;
        if size == 4 {
            self.state.gpr[5] = v;
        } else {
            self.state.gpr[5] = (self.state.gpr[5] & 0xffff_0000) | (v & 0xffff);
        }
        Ok(())
    }
}
