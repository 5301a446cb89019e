//! x87/MMX/SSE state management: FXSAVE FXRSTOR FNINIT FNSTSW FNSTCW FLDCW FNSTENV FLDENV
//! FNSAVE FRSTOR FNCLEX FWAIT EMMS LDMXCSR STMXCSR, and the availability checks every
//! x87/MMX/SSE instruction makes first (CR0.EM, CR0.TS, CR0.MP, CR4.OSFXSR; SDM vol. 3,
//! 2.5 and table 2-2; vol. 2, each instruction's exception list).
//!
//! The state lives in `CpuState::fpu` as a 512-byte FXSAVE image (SDM vol. 1, 10.5.1):
//! registers in stack order, the abridged tag byte. The 14/28-byte environment and the
//! 94/108-byte FNSAVE image are converted from and to it as the SDM describes: the full
//! 2-bit tag of a non-empty register is computed from its 80-bit value (valid, zero,
//! special), and physical register `p` is ST((p - TOP) mod 8).
//!
//! Choices where the SDM leaves room:
//!
//! * Availability: x87 instructions raise #NM when CR0.EM or CR0.TS is set; FWAIT only when
//!   both CR0.TS and CR0.MP are; FXSAVE/FXRSTOR raise #NM for CR0.EM or CR0.TS (SDM FXSAVE
//!   exception list); MMX instructions #UD for CR0.EM, then #NM for CR0.TS; SSE instructions
//!   (XMM operands, LDMXCSR, STMXCSR) #UD for CR0.EM or CR4.OSFXSR clear, then #NM for
//!   CR0.TS (the order Bochs uses). A model without the instruction's CPUID feature: #UD.
//! * Pending x87 exceptions: the waiting instructions (FWAIT, FLDCW, FLDENV, FRSTOR, every
//!   x87 arithmetic instruction, MMX instructions) raise #MF when FSW.ES is set and CR0.NE
//!   is set. With CR0.NE clear a PC reports the error through FERR#/IRQ 13, which the
//!   interpreter does not model: the instruction proceeds. FSW.ES and FSW.B are recomputed
//!   (set iff an exception flag is set whose mask bit is clear) whenever FCW or FSW is loaded
//!   (FLDCW, FLDENV, FRSTOR, FXRSTOR); FNSTENV masks all exceptions and clears them, as
//!   FNSTENV is defined to and Bochs does.
//! * FCW bit 6 reads as 1 and bits 15:13 and 7 as 0 whatever is loaded (as on hardware).
//! * The unused upper halves of the 28-byte environment's FCW, FSW, FTW and FDS (and FIP,
//!   FDP in the real-mode layout) are written as 0xFFFF, as Bochs and Intel processors do.
//! * Real-mode layouts hold 20/32-bit linear pointers; the interpreter stores them as FIP
//!   and FDP with FCS/FDS 0 (it never executes the x87 instructions that would set them).
//! * FXSAVE writes bytes 0-287 (header, ST0-ST7, XMM0-XMM7) and leaves 288-511 alone (the
//!   XMM8-15 area and the reserved/software area of the 32-bit format); the whole 512-byte
//!   operand is checked against the segment limit. It always saves MXCSR and the XMM
//!   registers, and FXRSTOR always restores them and raises #GP(0) for MXCSR bits outside
//!   MXCSR_MASK, whatever CR4.OSFXSR says (the SDM lets the processor choose).
//! * MXCSR_MASK is 0xFFFF: every MXCSR bit including DAZ is supported.
//! * Alignment (FXSAVE/FXRSTOR need 16 bytes) is checked on the linear address, before the
//!   segment limit, as Bochs does; the fault is #GP(0) for any segment.

use iced_x86::{Instruction, Mnemonic as M, OpKind};

use crate::state::{cr, SegReg};
use crate::{exc, Bus, Cpu, Res};

/// The MXCSR bits this processor implements (reported in the FXSAVE image).
pub(crate) const MXCSR_MASK: u32 = 0xffff;

const FCW_INIT: u16 = 0x037f;
const FSW_ES: u16 = 1 << 7;
const FSW_B: u16 = 1 << 15;
const FSW_EXC: u16 = 0x3f;

// Offsets in the FXSAVE image.
const FOP: usize = 6;
const FIP: usize = 8;
const FCS: usize = 12;
const FDP: usize = 16;
const FDS: usize = 20;
const MXCSR_MASK_OFF: usize = 28;
const ST0: usize = 32;
/// The part of the image FXSAVE writes in 32-bit mode.
const FXSAVE_LEN: usize = 288;

/// How an instruction's availability is decided.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FpClass {
    Wait,
    X87,
    Fxsr,
    Mmx,
    Sse,
}

fn fp_class(i: &Instruction) -> FpClass {
    let regs = |f: fn(iced_x86::Register) -> bool| {
        (0..i.op_count()).any(|n| i.op_kind(n) == OpKind::Register && f(i.op_register(n)))
    };
    match i.mnemonic() {
        M::Wait => FpClass::Wait,
        M::Fxsave | M::Fxrstor => FpClass::Fxsr,
        M::Ldmxcsr | M::Stmxcsr => FpClass::Sse,
        M::Emms => FpClass::Mmx,
        _ if super::is_fpu_opcode(i) => FpClass::X87,
        _ if regs(|r| r.is_xmm()) => FpClass::Sse,
        _ if regs(|r| r.is_mm()) => FpClass::Mmx,
        _ => FpClass::X87,
    }
}

/// x87 control instructions that do not check for pending exceptions.
fn non_waiting(m: M) -> bool {
    matches!(m, M::Fninit | M::Fnclex | M::Fnstsw | M::Fnstcw | M::Fnstenv | M::Fnsave | M::Fneni | M::Fndisi | M::Fnsetpm)
}

/// FCW as the processor keeps it: bit 6 set, reserved bits 15:13 and 7 clear.
fn norm_fcw(v: u16) -> u16 {
    (v & !0xe0c0) | 0x0040
}

/// The 2-bit tag of a non-empty register from its 80-bit value: 00 valid, 01 zero,
/// 10 special (NaN, infinity, denormal, unnormal, pseudo-denormal).
fn tag_of(reg: &[u8]) -> u16 {
    let mant = u64::from_le_bytes(reg[0..8].try_into().unwrap_or([0; 8]));
    let exp = u16::from_le_bytes([reg[8], reg[9]]) & 0x7fff;
    if exp == 0x7fff {
        2
    } else if exp == 0 {
        if mant == 0 {
            1
        } else {
            2
        }
    } else if mant >> 63 == 1 {
        0
    } else {
        2
    }
}

impl<B: Bus> Cpu<B> {
    /// The checks an x87/MMX/SSE instruction makes before anything else (see the module doc).
    pub(crate) fn fpu_available(&mut self, i: &Instruction) -> Res<()> {
        let cr0 = self.state.cr0;
        let em = cr0 & cr::CR0_EM != 0;
        let ts = cr0 & cr::CR0_TS != 0;
        let class = fp_class(i);
        match class {
            FpClass::Wait => {
                if ts && cr0 & cr::CR0_MP != 0 {
                    return Err(exc::nm());
                }
            }
            FpClass::X87 | FpClass::Fxsr => {
                if em || ts {
                    return Err(exc::nm());
                }
            }
            FpClass::Mmx => {
                if em {
                    return Err(exc::ud());
                }
                if ts {
                    return Err(exc::nm());
                }
            }
            FpClass::Sse => {
                if em || self.state.cr4 & cr::CR4_OSFXSR == 0 {
                    return Err(exc::ud());
                }
                if ts {
                    return Err(exc::nm());
                }
            }
        }
        let waiting = match class {
            FpClass::Wait | FpClass::Mmx => true,
            FpClass::X87 => !non_waiting(i.mnemonic()),
            _ => false,
        };
        if waiting && self.state.fpu.fsw() & FSW_ES != 0 && cr0 & cr::CR0_NE != 0 {
            return Err(exc::mf());
        }
        Ok(())
    }

    /// FXSAVE FXRSTOR FNINIT FNSTSW FNSTCW FLDCW FNSTENV FLDENV FNSAVE FRSTOR FNCLEX FWAIT
    /// EMMS LDMXCSR STMXCSR.
    pub(super) fn fpu_state(&mut self, i: &Instruction) -> Res<()> {
        if i.cpuid_features().iter().any(|f| !self.model_has(*f)) {
            return Err(exc::ud());
        }
        self.fpu_available(i)?;
        match i.mnemonic() {
            M::Fxsave => self.fxsave(i),
            M::Fxrstor => self.fxrstor(i),
            M::Fninit => {
                self.fninit();
                Ok(())
            }
            M::Fnstsw => {
                let v = self.state.fpu.fsw() as u32;
                self.write_op(i, 0, v)
            }
            M::Fnstcw => {
                let v = self.state.fpu.fcw() as u32;
                self.write_op(i, 0, v)
            }
            M::Fldcw => {
                let v = self.read_op(i, 0)? as u16;
                self.state.fpu.set_fcw(norm_fcw(v));
                self.update_es();
                Ok(())
            }
            M::Fnstenv => {
                let size32 = i.memory_size().size() == 28;
                let mut buf = [0u8; 28];
                let n = self.store_env(size32, &mut buf);
                let (s, off) = self.ea(i);
                self.write_block(s, off, &buf[..n])?;
                let fcw = self.state.fpu.fcw();
                self.state.fpu.set_fcw(fcw | FSW_EXC);
                let fsw = self.state.fpu.fsw();
                self.state.fpu.set_fsw(fsw & !(FSW_ES | FSW_B));
                Ok(())
            }
            M::Fldenv => {
                let size32 = i.memory_size().size() == 28;
                let mut buf = [0u8; 28];
                let n = if size32 { 28 } else { 14 };
                let (s, off) = self.ea(i);
                self.read_block(s, off, &mut buf[..n])?;
                self.load_env(size32, &buf);
                Ok(())
            }
            M::Fnsave => {
                let size32 = i.memory_size().size() == 108;
                let mut buf = [0u8; 108];
                let n = self.store_env(size32, &mut buf);
                for k in 0..8 {
                    let src = ST0 + 16 * k;
                    buf[n + 10 * k..n + 10 * k + 10].copy_from_slice(&self.state.fpu.0[src..src + 10]);
                }
                let (s, off) = self.ea(i);
                self.write_block(s, off, &buf[..n + 80])?;
                self.fninit();
                Ok(())
            }
            M::Frstor => {
                let size32 = i.memory_size().size() == 108;
                let n = if size32 { 28 } else { 14 };
                let mut buf = [0u8; 108];
                let (s, off) = self.ea(i);
                self.read_block(s, off, &mut buf[..n + 80])?;
                for k in 0..8 {
                    let dst = ST0 + 16 * k;
                    self.state.fpu.0[dst..dst + 10].copy_from_slice(&buf[n + 10 * k..n + 10 * k + 10]);
                    self.state.fpu.0[dst + 10..dst + 16].fill(0);
                }
                // The registers first: the tag word is converted against the new values.
                self.load_env(size32, &buf);
                Ok(())
            }
            M::Fnclex => {
                let fsw = self.state.fpu.fsw();
                self.state.fpu.set_fsw(fsw & 0x7f00);
                Ok(())
            }
            M::Wait => Ok(()),
            M::Emms => {
                self.state.fpu.set_ftw_abridged(0);
                Ok(())
            }
            M::Ldmxcsr => {
                let v = self.read_op(i, 0)?;
                if v & !MXCSR_MASK != 0 {
                    return Err(exc::gp0());
                }
                self.state.fpu.set_mxcsr(v);
                Ok(())
            }
            M::Stmxcsr => {
                let v = self.state.fpu.mxcsr();
                self.write_op(i, 0, v)
            }
            _ => Err(crate::Fault::Unsupported("x87/MMX/SSE arithmetic is not implemented by the interpreter")),
        }
    }

    /// FNINIT: FCW 0x37F, FSW 0, all tags empty, instruction and data pointers and opcode 0.
    /// The register contents and MXCSR are kept.
    fn fninit(&mut self) {
        let f = &mut self.state.fpu;
        f.set_fcw(FCW_INIT);
        f.set_fsw(0);
        f.set_ftw_abridged(0);
        f.0[FOP..FDS + 4].fill(0);
    }

    /// FSW.ES and FSW.B summarize the unmasked exception flags.
    fn update_es(&mut self) {
        let f = &mut self.state.fpu;
        let (fcw, fsw) = (f.fcw(), f.fsw());
        let fsw = if fsw & !fcw & FSW_EXC != 0 { fsw | FSW_ES | FSW_B } else { fsw & !(FSW_ES | FSW_B) };
        f.set_fsw(fsw);
    }

    fn fpu_u16(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.state.fpu.0[off], self.state.fpu.0[off + 1]])
    }
    fn fpu_u32(&self, off: usize) -> u32 {
        let b = &self.state.fpu.0;
        u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
    }
    fn set_fpu_u16(&mut self, off: usize, v: u16) {
        self.state.fpu.0[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn set_fpu_u32(&mut self, off: usize, v: u32) {
        self.state.fpu.0[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// The full tag word from the abridged tag byte and the register values.
    pub(crate) fn full_tag_word(&self) -> u16 {
        let f = &self.state.fpu;
        let top = ((f.fsw() >> 11) & 7) as usize;
        let mut tw = 0u16;
        for p in 0..8 {
            let t = if f.ftw_abridged() & (1 << p) == 0 {
                3
            } else {
                let st = (p + 8 - top) & 7;
                tag_of(&f.0[ST0 + 16 * st..ST0 + 16 * st + 10])
            };
            tw |= t << (2 * p);
        }
        tw
    }

    /// Write the 14- or 28-byte environment for the current mode into `buf`; returns its size.
    fn store_env(&self, size32: bool, buf: &mut [u8]) -> usize {
        let f = &self.state.fpu;
        let (fcw, fsw, ftw) = (f.fcw(), f.fsw(), self.full_tag_word());
        let fop = self.fpu_u16(FOP) as u32 & 0x7ff;
        let (fip, fcs, fdp, fds) = (self.fpu_u32(FIP), self.fpu_u16(FCS), self.fpu_u32(FDP), self.fpu_u16(FDS));
        let pm = self.state.protected_mode() && !self.state.v86();
        let mut put32 = |k: usize, v: u32| buf[4 * k..4 * k + 4].copy_from_slice(&v.to_le_bytes());
        if size32 {
            let hi = 0xffff_0000;
            put32(0, hi | fcw as u32);
            put32(1, hi | fsw as u32);
            put32(2, hi | ftw as u32);
            if pm {
                put32(3, fip);
                put32(4, fcs as u32 | fop << 16);
                put32(5, fdp);
                put32(6, hi | fds as u32);
            } else {
                put32(3, hi | (fip & 0xffff));
                put32(4, ((fip >> 16) << 12) | fop);
                put32(5, hi | (fdp & 0xffff));
                put32(6, (fdp >> 16) << 12);
            }
            28
        } else {
            let words: [u16; 7] = if pm {
                [fcw, fsw, ftw, fip as u16, fcs, fdp as u16, fds]
            } else {
                [
                    fcw,
                    fsw,
                    ftw,
                    fip as u16,
                    ((((fip >> 16) & 0xf) << 12) | fop) as u16,
                    fdp as u16,
                    (((fdp >> 16) & 0xf) << 12) as u16,
                ]
            };
            for (k, w) in words.iter().enumerate() {
                buf[2 * k..2 * k + 2].copy_from_slice(&w.to_le_bytes());
            }
            14
        }
    }

    /// Load the environment (FLDENV, FRSTOR); the registers must already be in place.
    fn load_env(&mut self, size32: bool, buf: &[u8]) {
        let pm = self.state.protected_mode() && !self.state.v86();
        let g32 = |k: usize| u32::from_le_bytes([buf[4 * k], buf[4 * k + 1], buf[4 * k + 2], buf[4 * k + 3]]);
        let g16 = |k: usize| u16::from_le_bytes([buf[2 * k], buf[2 * k + 1]]);
        let (fcw, fsw, ftw, fip, fcs, fop, fdp, fds);
        if size32 {
            (fcw, fsw, ftw) = (g32(0) as u16, g32(1) as u16, g32(2) as u16);
            if pm {
                (fip, fcs, fop, fdp, fds) = (g32(3), g32(4) as u16, (g32(4) >> 16) as u16, g32(5), g32(6) as u16);
            } else {
                fip = (g32(3) & 0xffff) | (((g32(4) >> 12) & 0xffff) << 16);
                fop = g32(4) as u16;
                fdp = (g32(5) & 0xffff) | (((g32(6) >> 12) & 0xffff) << 16);
                (fcs, fds) = (0, 0);
            }
        } else {
            (fcw, fsw, ftw) = (g16(0), g16(1), g16(2));
            if pm {
                (fip, fcs, fop, fdp, fds) = (g16(3) as u32, g16(4), 0, g16(5) as u32, g16(6));
            } else {
                fip = g16(3) as u32 | ((g16(4) as u32 >> 12) << 16);
                fop = g16(4);
                fdp = g16(5) as u32 | ((g16(6) as u32 >> 12) << 16);
                (fcs, fds) = (0, 0);
            }
        }
        let mut abridged = 0u8;
        for p in 0..8 {
            if (ftw >> (2 * p)) & 3 != 3 {
                abridged |= 1 << p;
            }
        }
        let f = &mut self.state.fpu;
        f.set_fcw(norm_fcw(fcw));
        f.set_fsw(fsw);
        f.set_ftw_abridged(abridged);
        self.set_fpu_u16(FOP, fop & 0x7ff);
        self.set_fpu_u32(FIP, fip);
        self.set_fpu_u16(FCS, fcs);
        self.set_fpu_u32(FDP, fdp);
        self.set_fpu_u16(FDS, fds);
        self.update_es();
    }

    /// The linear address of a FXSAVE/FXRSTOR operand, which must be 16-byte aligned.
    fn fx_operand(&mut self, i: &Instruction) -> Res<(SegReg, u32)> {
        let (s, off) = self.ea(i);
        if self.state.seg(s).base.wrapping_add(off) & 15 != 0 {
            return Err(exc::gp0());
        }
        Ok((s, off))
    }

    fn fxsave(&mut self, i: &Instruction) -> Res<()> {
        let (s, off) = self.fx_operand(i)?;
        self.seg_linear(s, off, 512, true)?;
        let mut img = [0u8; FXSAVE_LEN];
        img.copy_from_slice(&self.state.fpu.0[..FXSAVE_LEN]);
        img[MXCSR_MASK_OFF..MXCSR_MASK_OFF + 4].copy_from_slice(&MXCSR_MASK.to_le_bytes());
        self.write_block(s, off, &img)
    }

    fn fxrstor(&mut self, i: &Instruction) -> Res<()> {
        let (s, off) = self.fx_operand(i)?;
        let mut img = [0u8; 512];
        self.read_block(s, off, &mut img)?;
        let mxcsr = u32::from_le_bytes([img[24], img[25], img[26], img[27]]);
        if mxcsr & !MXCSR_MASK != 0 {
            return Err(exc::gp0());
        }
        let f = &mut self.state.fpu;
        f.0[..FXSAVE_LEN].copy_from_slice(&img[..FXSAVE_LEN]);
        // Reserved fields and the padding of the 80-bit registers are not state.
        f.0[5] = 0;
        f.0[14..16].fill(0);
        f.0[22..24].fill(0);
        f.0[MXCSR_MASK_OFF..MXCSR_MASK_OFF + 4].fill(0);
        for k in 0..8 {
            f.0[ST0 + 16 * k + 10..ST0 + 16 * k + 16].fill(0);
        }
        let fcw = f.fcw();
        f.set_fcw(norm_fcw(fcw));
        let fop = self.fpu_u16(FOP);
        self.set_fpu_u16(FOP, fop & 0x7ff);
        self.update_es();
        Ok(())
    }
}
