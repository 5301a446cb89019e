//! Data transfer: MOV MOVZX MOVSX XCHG CMOVcc LEA CBW CWDE CWD CDQ XLAT CMPXCHG CMPXCHG8B XADD LAHF SAHF, flag operations CLC STC CMC CLD STD, SALC.
//!
//! MOV, MOVZX/MOVSX, LEA, XCHG reg,reg, CMOVcc (and SETcc in `bit`) are on the hot path of
//! CPU-bound guests: their register forms touch nothing but the register file.
//!
//! Memory semantics worth noting:
//!
//! * XCHG, XADD and CMPXCHG with a memory operand are read-modify-writes: the operand is
//!   translated for writing before anything is committed, so a read-only page faults with
//!   the W bit in the error code. CMPXCHG writes its destination whether or not the
//!   comparison succeeds (the old value when it fails), as the SDM describes; CMPXCHG8B
//!   likewise.
//! * CMOVcc reads a memory source even when the condition is false, so it can fault.
//! * LEA computes the offset only (no segmentation, no access); the address size truncates
//!   the address and the operand size truncates the result. LEA with a register source is
//!   #UD: iced-x86 does not decode it (it becomes an invalid instruction, hence #UD).
//!
//! No flag of this family is undefined: CMPXCHG sets the six status flags as CMP does,
//! XADD as ADD does, CMPXCHG8B only ZF; SALC (the undocumented D6) changes no flags.

use iced_x86::{Instruction, Mnemonic, OpKind};

use super::arith::{add_flags, sub_flags};
use super::operand::{mask, sext, Place};
use crate::exc;
use crate::state::flags::*;
use crate::{Bus, Cpu, Res};

impl<B: Bus> Cpu<B> {
    pub(super) fn mov(&mut self, i: &Instruction) -> Res<()> {
        let v = self.read_op(i, 1)?;
        self.write_op(i, 0, v)
    }

    #[inline]
    pub(super) fn movzx(&mut self, i: &Instruction) -> Res<()> {
        let v = self.read_op(i, 1)?;
        self.set_reg(i.op0_register(), v);
        Ok(())
    }

    #[inline]
    pub(super) fn movsx(&mut self, i: &Instruction) -> Res<()> {
        let size = self.op_size(i, 1);
        let v = sext(self.read_op(i, 1)?, size);
        self.set_reg(i.op0_register(), v);
        Ok(())
    }

    #[inline]
    pub(super) fn xchg(&mut self, i: &Instruction) -> Res<()> {
        if i.op0_kind() == OpKind::Register && i.op1_kind() == OpKind::Register {
            let (r0, r1) = (i.op0_register(), i.op1_register());
            let (a, b) = (self.reg(r0), self.reg(r1));
            self.set_reg(r0, b);
            self.set_reg(r1, a);
            return Ok(());
        }
        // A memory operand (iced-x86 puts it first; accept either order).
        let (mem, reg) = if i.op0_kind() == OpKind::Memory { (0, i.op1_register()) } else { (1, i.op0_register()) };
        let (m, p) = self.rmw_op(i, mem)?;
        let r = self.reg(reg);
        self.put(p, r);
        self.set_reg(reg, m);
        Ok(())
    }

    #[inline]
    pub(super) fn cmovcc(&mut self, i: &Instruction) -> Res<()> {
        let v = self.read_op(i, 1)?;
        if self.cond(i.condition_code()) {
            self.set_reg(i.op0_register(), v);
        }
        Ok(())
    }

    #[inline]
    pub(super) fn lea(&mut self, i: &Instruction) -> Res<()> {
        if i.op1_kind() != OpKind::Memory {
            return Err(exc::ud());
        }
        // `ea` already truncates a 16-bit address; `set_reg` truncates to the operand size.
        let (_, a) = self.ea(i);
        self.set_reg(i.op0_register(), a);
        Ok(())
    }

    /// CBW CWDE CWD CDQ.
    pub(super) fn convert(&mut self, i: &Instruction) -> Res<()> {
        let eax = self.state.gpr[0];
        match i.mnemonic() {
            Mnemonic::Cbw => self.state.gpr[0] = (eax & 0xffff_0000) | (sext(eax, 1) & 0xffff),
            Mnemonic::Cwde => self.state.gpr[0] = sext(eax, 2),
            Mnemonic::Cwd => {
                let hi = if eax & 0x8000 != 0 { 0xffff } else { 0 };
                self.state.gpr[2] = (self.state.gpr[2] & 0xffff_0000) | hi;
            }
            _ => self.state.gpr[2] = ((eax as i32) >> 31) as u32,
        }
        Ok(())
    }

    /// XLAT: AL = [seg:(E)BX + AL], the segment override honoured. iced-x86 describes the
    /// operand as a memory operand with base (E)BX and index AL, which `ea` computes (16-bit
    /// addressing wraps at 64 KiB).
    pub(super) fn xlat(&mut self, i: &Instruction) -> Res<()> {
        let (s, off) = self.ea(i);
        let v = self.read_u8(s, off)?;
        self.state.gpr[0] = (self.state.gpr[0] & !0xff) | v as u32;
        Ok(())
    }

    /// CMPXCHG r/m, r: compare the accumulator with DEST (flags as CMP accumulator, DEST);
    /// equal: DEST = SRC; else the accumulator = DEST and DEST is rewritten unchanged.
    pub(super) fn cmpxchg(&mut self, i: &Instruction) -> Res<()> {
        let size = self.op_size(i, 0);
        let src = self.reg(i.op1_register());
        let (d, p) = self.rmw_op(i, 0)?;
        let acc = self.state.gpr[0] & mask(size);
        let (_, f) = sub_flags(acc, d, 0, size);
        if f & ZF != 0 {
            self.put(p, src);
        } else {
            if let Place::Mem(_) = p {
                self.put(p, d);
            }
            let acc_reg = match size {
                1 => iced_x86::Register::AL,
                2 => iced_x86::Register::AX,
                _ => iced_x86::Register::EAX,
            };
            self.set_reg(acc_reg, d);
        }
        self.set_status(f);
        Ok(())
    }

    /// CMPXCHG8B m64: compare EDX:EAX with m64; equal: ZF = 1 and m64 = ECX:EBX; else
    /// ZF = 0, EDX:EAX = m64 and m64 is rewritten unchanged. Other flags are unchanged.
    pub(super) fn cmpxchg8b(&mut self, i: &Instruction) -> Res<()> {
        if i.op0_kind() != OpKind::Memory {
            return Err(exc::ud());
        }
        let (s, off) = self.ea(i);
        let l = self.data_loc(s, off, 8, true)?;
        let m = self.loc_read(l);
        let g = &self.state.gpr;
        let cmp = (g[2] as u64) << 32 | g[0] as u64;
        if m == cmp {
            let new = (g[1] as u64) << 32 | g[3] as u64;
            self.loc_write(l, new);
            self.state.eflags |= ZF;
        } else {
            self.loc_write(l, m);
            self.state.gpr[0] = m as u32;
            self.state.gpr[2] = (m >> 32) as u32;
            self.state.eflags &= !ZF;
        }
        Ok(())
    }

    /// XADD r/m, r: TEMP = SRC + DEST; SRC = DEST; DEST = TEMP (flags as ADD).
    pub(super) fn xadd(&mut self, i: &Instruction) -> Res<()> {
        let size = self.op_size(i, 0);
        let sreg = i.op1_register();
        let src = self.reg(sreg);
        let (d, p) = self.rmw_op(i, 0)?;
        let (r, f) = add_flags(d, src, 0, size);
        self.set_reg(sreg, d);
        self.put(p, r);
        self.set_status(f);
        Ok(())
    }

    /// LAHF: AH = SF:ZF:0:AF:0:PF:1:CF.
    pub(super) fn lahf(&mut self, _i: &Instruction) -> Res<()> {
        let ah = (self.state.eflags & (SF | ZF | AF | PF | CF)) | FIXED1;
        self.state.gpr[0] = (self.state.gpr[0] & !0xff00) | (ah << 8);
        Ok(())
    }

    /// SAHF: SF ZF AF PF CF = AH bits 7 6 4 2 0 (OF and the reserved bits are unchanged).
    pub(super) fn sahf(&mut self, _i: &Instruction) -> Res<()> {
        let ah = (self.state.gpr[0] >> 8) & 0xff;
        let m = SF | ZF | AF | PF | CF;
        self.state.eflags = (self.state.eflags & !m) | (ah & m);
        Ok(())
    }

    /// CLC STC CMC CLD STD.
    pub(super) fn flag_op(&mut self, i: &Instruction) -> Res<()> {
        let f = &mut self.state.eflags;
        match i.mnemonic() {
            Mnemonic::Clc => *f &= !CF,
            Mnemonic::Stc => *f |= CF,
            Mnemonic::Cmc => *f ^= CF,
            Mnemonic::Cld => *f &= !DF,
            _ => *f |= DF,
        }
        Ok(())
    }

    /// SALC (undocumented D6, present on P6): AL = CF ? 0xFF : 0. No flags change.
    pub(super) fn salc(&mut self, _i: &Instruction) -> Res<()> {
        let al = if self.flag(CF) { 0xff } else { 0 };
        self.state.gpr[0] = (self.state.gpr[0] & !0xff) | al;
        Ok(())
    }
}
