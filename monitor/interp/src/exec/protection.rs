//! Protection: MOV to/from segment registers, LDS LES LFS LGS LSS, LAR LSL VERR VERW ARPL,
//! LGDT LIDT LLDT LTR SGDT SIDT SLDT STR SMSW LMSW CLTS (SDM vol. 2 pseudocode; vol. 3,
//! chapter 5). PUSH/POP of segment registers are in the stack family.
//!
//! Choices where the SDM leaves room, after what P6-and-later processors (and the AMD host)
//! do:
//! * MOV r32, Sreg, SLDT r32 and STR r32 zero-extend the selector (P6 and later); to memory
//!   they always store 16 bits.
//! * SMSW r32 stores the whole of CR0 (the SDM calls the high half undefined; P6-and-later
//!   processors and AMD store CR0[31:0], as Bochs does). SMSW r16 and SMSW m16 store CR0[15:0].
//! * SGDT/SIDT store the 16-bit limit and the full 32-bit base whatever the operand size (the
//!   current SDM: "Full 32-bit base address stored" for both 16- and 32-bit operand sizes;
//!   the old 24-bit-plus-zero-byte description does not match 386-and-later hardware).
//!   LGDT/LIDT with a 16-bit operand size load a 24-bit base (the SDM).
//! * SGDT SIDT SLDT STR SMSW are not privileged on a P6 (the Popek-Goldberg problem): they
//!   store the true values at any CPL. Only with CR4.UMIP set do they raise #GP(0) at CPL > 0.
//! * LAR with a 32-bit operand stores the second descriptor doubleword masked with 00FFFF00H
//!   (bits 19:16, the limit's high nibble, which the SDM calls undefined, as the hardware and
//!   Bochs return them); with a 16-bit operand, masked with FF00H.
//! * LSS does not inhibit interrupts for one instruction (only MOV SS and POP SS do).

use iced_x86::{Instruction, Mnemonic, OpKind, Register};

use super::far::ea_plus;
use crate::exc;
use crate::seg::{sys_type, Descriptor};
use crate::state::{cr, flags, SegReg, Segment};
use crate::{Bus, Cpu, Res};

/// The segment register an iced-x86 register names, if it is one.
fn sreg_of(r: Register) -> Option<SegReg> {
    Some(match r {
        Register::ES => SegReg::Es,
        Register::CS => SegReg::Cs,
        Register::SS => SegReg::Ss,
        Register::DS => SegReg::Ds,
        Register::FS => SegReg::Fs,
        Register::GS => SegReg::Gs,
        _ => return None,
    })
}

impl<B: Bus> Cpu<B> {
    /// Protected mode outside virtual-8086 mode; otherwise #UD (LAR LSL VERR VERW ARPL
    /// LLDT LTR SLDT STR are not recognised in real-address and virtual-8086 mode).
    fn require_protected(&self) -> Res<()> {
        if !self.state.protected_mode() || self.state.v86() {
            return Err(exc::ud());
        }
        Ok(())
    }

    /// CR4.UMIP forbids SGDT SIDT SLDT SMSW STR at CPL > 0.
    fn umip_check(&self) -> Res<()> {
        if self.state.cr4 & cr::CR4_UMIP != 0 && self.state.cpl > 0 {
            return Err(exc::gp0());
        }
        Ok(())
    }

    pub(super) fn mov_to_sreg(&mut self, i: &Instruction) -> Res<()> {
        let s = sreg_of(i.op0_register()).ok_or(exc::ud())?;
        if s == SegReg::Cs {
            return Err(exc::ud());
        }
        let sel = self.read_op(i, 1)? as u16;
        self.load_seg(s, sel)
    }

    pub(super) fn mov_from_sreg(&mut self, i: &Instruction) -> Res<()> {
        let sel = self.reg(i.op1_register()) & 0xffff;
        self.write_op(i, 0, sel)
    }

    /// LDS LES LFS LGS LSS: offset then selector from memory, load the segment register,
    /// then the general register.
    pub(super) fn load_far_pointer(&mut self, i: &Instruction) -> Res<()> {
        if i.op1_kind() != OpKind::Memory {
            return Err(exc::ud());
        }
        let s = match i.mnemonic() {
            Mnemonic::Lds => SegReg::Ds,
            Mnemonic::Les => SegReg::Es,
            Mnemonic::Lfs => SegReg::Fs,
            Mnemonic::Lgs => SegReg::Gs,
            _ => SegReg::Ss,
        };
        let dst = i.op0_register();
        let size = super::operand::reg_size(dst);
        let (seg, off) = self.ea(i);
        let v = self.read(seg, off, size)?;
        let sel = self.read_u16(seg, ea_plus(i, off, size as u32))?;
        let shadow = self.state.int_shadow;
        self.load_seg(s, sel)?;
        self.state.int_shadow = shadow;
        self.set_reg(dst, v);
        Ok(())
    }

    /// The selector operand of LAR LSL VERR VERW LLDT LTR (r/m16; a 32-bit register gives
    /// its low 16 bits).
    fn selector_operand(&mut self, i: &Instruction, n: u32) -> Res<u16> {
        Ok(self.read_op(i, n)? as u16)
    }

    /// The descriptor a LAR/LSL/VERR/VERW selector names, if it is within its table (no
    /// fault for a selector outside it: ZF=0). A null selector gives `None`.
    fn probe_descriptor(&mut self, sel: u16) -> Res<Option<Descriptor>> {
        if sel & 0xfffc == 0 {
            return Ok(None);
        }
        if sel & 4 != 0 {
            let l = self.state.ldtr;
            if !l.present() || l.selector & 0xfffc == 0 {
                return Ok(None);
            }
        }
        let (base, limit) = if sel & 4 != 0 {
            (self.state.ldtr.base, self.state.ldtr.limit)
        } else {
            (self.state.gdtr.base, self.state.gdtr.limit as u32)
        };
        let index = (sel & 0xfff8) as u32;
        if index + 7 > limit {
            return Ok(None);
        }
        Ok(Some(Descriptor(self.sys_read_u64(base.wrapping_add(index))?)))
    }

    /// The DPL/RPL/CPL visibility rule of LAR LSL VERR: conforming code segments are always
    /// visible; anything else needs CPL <= DPL and RPL <= DPL.
    fn visible(&self, sel: u16, d: Descriptor) -> bool {
        d.conforming() || (self.state.cpl <= d.dpl() && (sel & 3) as u8 <= d.dpl())
    }

    /// LAR and LSL: the shared part. `valid` says which system types the instruction accepts.
    fn lar_lsl(&mut self, i: &Instruction, valid: fn(u8) -> bool, value: fn(Descriptor) -> u32) -> Res<()> {
        self.require_protected()?;
        let sel = self.selector_operand(i, 1)?;
        let ok = match self.probe_descriptor(sel)? {
            Some(d) if (d.is_segment() || valid(d.ty())) && self.visible(sel, d) => Some(d),
            _ => None,
        };
        match ok {
            Some(d) => {
                self.set_reg(i.op0_register(), value(d));
                self.set_flag(flags::ZF, true);
            }
            None => self.set_flag(flags::ZF, false),
        }
        Ok(())
    }

    pub(super) fn lar(&mut self, i: &Instruction) -> Res<()> {
        self.lar_lsl(
            i,
            |t| {
                matches!(
                    t,
                    sys_type::TSS16_AVAIL
                        | sys_type::LDT
                        | sys_type::TSS16_BUSY
                        | sys_type::CALL_GATE16
                        | sys_type::TASK_GATE
                        | sys_type::TSS32_AVAIL
                        | sys_type::TSS32_BUSY
                        | sys_type::CALL_GATE32
                )
            },
            // A 16-bit destination keeps the low 16 bits (set_reg): the FF00H mask.
            |d| ((d.0 >> 32) as u32) & 0x00ff_ff00,
        )
    }

    pub(super) fn lsl(&mut self, i: &Instruction) -> Res<()> {
        self.lar_lsl(
            i,
            |t| {
                matches!(
                    t,
                    sys_type::TSS16_AVAIL
                        | sys_type::LDT
                        | sys_type::TSS16_BUSY
                        | sys_type::TSS32_AVAIL
                        | sys_type::TSS32_BUSY
                )
            },
            |d| d.limit(),
        )
    }

    pub(super) fn verr_verw(&mut self, i: &Instruction) -> Res<()> {
        self.require_protected()?;
        let sel = self.selector_operand(i, 0)?;
        let write = i.mnemonic() == Mnemonic::Verw;
        let ok = match self.probe_descriptor(sel)? {
            Some(d) if d.is_segment() => {
                if write {
                    d.writable() && self.visible(sel, d)
                } else {
                    d.readable() && self.visible(sel, d)
                }
            }
            _ => false,
        };
        self.set_flag(flags::ZF, ok);
        Ok(())
    }

    /// ARPL: the destination is read, and written only when its RPL is raised (the host CPU
    /// reads a memory destination without write intent and does not write it otherwise: a
    /// non-writable destination faults only when the RPL changes).
    pub(super) fn arpl(&mut self, i: &Instruction) -> Res<()> {
        self.require_protected()?;
        let src = self.read_op(i, 1)? & 3;
        let dst = self.read_op(i, 0)?;
        if dst & 3 < src {
            self.write_op(i, 0, (dst & !3) | src)?;
            self.set_flag(flags::ZF, true);
        } else {
            self.set_flag(flags::ZF, false);
        }
        Ok(())
    }

    pub(super) fn lgdt_lidt(&mut self, i: &Instruction) -> Res<()> {
        self.require_cpl0()?;
        if i.op0_kind() != OpKind::Memory {
            return Err(exc::ud());
        }
        let (s, off) = self.ea(i);
        let limit = self.read_u16(s, off)?;
        let mut base = self.read_u32(s, ea_plus(i, off, 2))?;
        if self.osize(i) == 2 {
            base &= 0x00ff_ffff;
        }
        let t = if i.mnemonic() == Mnemonic::Lgdt { &mut self.state.gdtr } else { &mut self.state.idtr };
        t.base = base;
        t.limit = limit;
        Ok(())
    }

    pub(super) fn sgdt_sidt(&mut self, i: &Instruction) -> Res<()> {
        self.umip_check()?;
        if i.op0_kind() != OpKind::Memory {
            return Err(exc::ud());
        }
        let t = if i.mnemonic() == Mnemonic::Sgdt { self.state.gdtr } else { self.state.idtr };
        let (s, off) = self.ea(i);
        let mut img = [0u8; 6];
        img[..2].copy_from_slice(&t.limit.to_le_bytes());
        img[2..].copy_from_slice(&t.base.to_le_bytes());
        if super::far::mem_addr16(i) && off > 0xfffa {
            // The operand wraps at 64 KiB: two accesses.
            self.write_u16(s, off, t.limit)?;
            return self.write_u32(s, ea_plus(i, off, 2), t.base);
        }
        self.write_block(s, off, &img)
    }

    pub(super) fn lldt(&mut self, i: &Instruction) -> Res<()> {
        self.require_protected()?;
        self.require_cpl0()?;
        let sel = self.selector_operand(i, 0)?;
        if sel & 0xfffc == 0 {
            self.state.ldtr = Segment { selector: sel, base: 0, limit: 0, attr: 0 };
            return Ok(());
        }
        let code = (sel & 0xfffc) as u32;
        if sel & 4 != 0 {
            return Err(exc::gp(code));
        }
        let d = self.read_descriptor(sel, exc::gp)?;
        if d.is_segment() || d.ty() != sys_type::LDT {
            return Err(exc::gp(code));
        }
        if !d.present() {
            return Err(exc::np(code));
        }
        self.state.ldtr = d.to_segment(sel);
        Ok(())
    }

    pub(super) fn ltr(&mut self, i: &Instruction) -> Res<()> {
        self.require_protected()?;
        self.require_cpl0()?;
        let sel = self.selector_operand(i, 0)?;
        if sel & 0xfffc == 0 {
            return Err(exc::gp0());
        }
        let code = (sel & 0xfffc) as u32;
        if sel & 4 != 0 {
            return Err(exc::gp(code));
        }
        let d = self.read_descriptor(sel, exc::gp)?;
        if d.is_segment() || !matches!(d.ty(), sys_type::TSS16_AVAIL | sys_type::TSS32_AVAIL) {
            return Err(exc::gp(code));
        }
        if !d.present() {
            return Err(exc::np(code));
        }
        // Mark the TSS busy in the GDT (type 1 -> 3, 9 -> 11: bit 1 of the type).
        let addr = self.descriptor_addr(sel, exc::gp)?;
        let busy = Descriptor(d.0 | (2u64 << 40));
        self.sys_write_u8(addr.wrapping_add(5), (busy.0 >> 40) as u8)?;
        self.state.tr = busy.to_segment(sel);
        Ok(())
    }

    pub(super) fn sldt(&mut self, i: &Instruction) -> Res<()> {
        self.require_protected()?;
        self.umip_check()?;
        let v = self.state.ldtr.selector as u32;
        self.write_op(i, 0, v)
    }

    pub(super) fn str_(&mut self, i: &Instruction) -> Res<()> {
        self.require_protected()?;
        self.umip_check()?;
        let v = self.state.tr.selector as u32;
        self.write_op(i, 0, v)
    }

    pub(super) fn smsw(&mut self, i: &Instruction) -> Res<()> {
        self.umip_check()?;
        // A 32-bit register gets all of CR0; a 16-bit register or memory the low word
        // (write_op truncates to the operand's size).
        let v = self.state.cr0;
        self.write_op(i, 0, v)
    }

    pub(super) fn lmsw(&mut self, i: &Instruction) -> Res<()> {
        self.require_cpl0()?;
        let src = self.read_op(i, 0)?;
        let bits = cr::CR0_PE | cr::CR0_MP | cr::CR0_EM | cr::CR0_TS;
        let old = self.state.cr0;
        // PE can be set but not cleared.
        self.state.cr0 = (old & !bits) | (src & bits) | (old & cr::CR0_PE);
        Ok(())
    }

    pub(super) fn clts(&mut self, _i: &Instruction) -> Res<()> {
        self.require_cpl0()?;
        self.state.cr0 &= !cr::CR0_TS;
        Ok(())
    }
}
