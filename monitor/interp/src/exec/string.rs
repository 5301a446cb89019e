//! String instructions: MOVS CMPS SCAS LODS STOS INS OUTS (byte, word, doubleword), with
//! REP, REPE/REPZ and REPNE/REPNZ, the direction flag, a segment override of the source
//! (DS by default; the ES destination cannot be overridden) and 16-bit addressing (SI, DI,
//! CX) or 32-bit addressing (ESI, EDI, ECX) (SDM vol. 2, and vol. 1, 7.3.9).
//!
//! A repeated instruction works as on the CPU:
//!
//! * a count of 0 does nothing (not even the I/O permission check of INS/OUTS);
//! * every completed iteration is committed (registers and flags), so a fault in iteration
//!   k is delivered at the instruction with ECX/ESI/EDI as after iteration k-1, and the
//!   handler's IRET resumes the instruction;
//! * at most [`MAX_ITER`] iterations run per step; the instruction then stays at the same
//!   EIP and continues on the next step, so interrupts are taken between iterations;
//! * with EFLAGS.TF set, one iteration runs per step (a single-step trap follows each
//!   iteration, as on the CPU);
//! * REP with F2 (REPNE) on MOVS/LODS/STOS/INS/OUTS repeats like REP.
//!
//! CMPS computes `[src] - ES:[(E)DI]`, SCAS `accumulator - ES:[(E)DI]`, with the flags of
//! SUB. INS checks the destination (segmentation and paging) before reading the port, so a
//! faulting INS does not consume port data (Bochs does the same).
//!
//! Fast path: REP MOVS and REP STOS forward with 32-bit addressing (what kernels use for
//! memcpy and memset) copy or fill whole chunks that stay within one page of the source
//! and one page of the destination, after the segmentation check of the whole chunk and
//! the translation of both pages; anything else (overlap where the forward element order
//! matters, MMIO, alignment checking, a chunk that would fault) goes element by element.

use iced_x86::{Instruction, Mnemonic as M};

use super::arith::sub_flags;
use super::operand::mask;
use crate::mmu::Access;
use crate::state::{cr, flags, SegReg};
use crate::{Bus, Cpu, Exit, IoAction, Res};

/// Iterations of a repeated string instruction per step.
const MAX_ITER: u32 = 4096;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Movs,
    Cmps,
    Scas,
    Lods,
    Stos,
    Ins,
    Outs,
}

fn kind_size(m: M) -> Option<(Kind, u8)> {
    Some(match m {
        M::Movsb => (Kind::Movs, 1),
        M::Movsw => (Kind::Movs, 2),
        M::Movsd => (Kind::Movs, 4),
        M::Cmpsb => (Kind::Cmps, 1),
        M::Cmpsw => (Kind::Cmps, 2),
        M::Cmpsd => (Kind::Cmps, 4),
        M::Scasb => (Kind::Scas, 1),
        M::Scasw => (Kind::Scas, 2),
        M::Scasd => (Kind::Scas, 4),
        M::Lodsb => (Kind::Lods, 1),
        M::Lodsw => (Kind::Lods, 2),
        M::Lodsd => (Kind::Lods, 4),
        M::Stosb => (Kind::Stos, 1),
        M::Stosw => (Kind::Stos, 2),
        M::Stosd => (Kind::Stos, 4),
        M::Insb => (Kind::Ins, 1),
        M::Insw => (Kind::Ins, 2),
        M::Insd => (Kind::Ins, 4),
        M::Outsb => (Kind::Outs, 1),
        M::Outsw => (Kind::Outs, 2),
        M::Outsd => (Kind::Outs, 4),
        _ => return None,
    })
}

/// The repeat prefix as it applies to a given string instruction.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rep {
    None,
    /// REP, or REPE/REPZ for CMPS/SCAS.
    E,
    /// REPNE/REPNZ for CMPS/SCAS.
    Ne,
}

impl<B: Bus> Cpu<B> {
    pub(super) fn string(&mut self, i: &Instruction) -> Res<()> {
        let Some((kind, size)) = kind_size(i.mnemonic()) else {
            return Err(crate::exc::ud());
        };
        let rep = if i.has_repne_prefix() {
            if matches!(kind, Kind::Cmps | Kind::Scas) {
                Rep::Ne
            } else {
                Rep::E
            }
        } else if i.has_rep_prefix() {
            Rep::E
        } else {
            Rep::None
        };
        let a16 = self.addr16(i);
        let am: u32 = if a16 { 0xffff } else { 0xffff_ffff };
        // The source segment (DS unless overridden) of MOVS CMPS LODS OUTS.
        let src = if matches!(kind, Kind::Movs | Kind::Cmps | Kind::Lods | Kind::Outs) {
            crate::exec::operand::sreg(i.memory_segment())
        } else {
            SegReg::Ds
        };
        let port = self.state.gpr[2] as u16;

        // The I/O permission check comes first: a REP INS/OUTS with a count of 0 still
        // raises #GP(0) where the port is not permitted (as the host CPU does).
        if matches!(kind, Kind::Ins | Kind::Outs) {
            self.check_io(port, size)?;
        }
        if rep != Rep::None && self.state.gpr[1] & am == 0 {
            return Ok(());
        }
        if rep == Rep::None {
            return self.string_once(kind, size, src, am, port);
        }

        let budget = if self.saved_eflags & flags::TF != 0 { 1 } else { MAX_ITER };
        let mut done = 0u32;
        loop {
            let fast = !a16 && self.state.eflags & flags::DF == 0 && matches!(kind, Kind::Movs | Kind::Stos);
            if fast {
                let n = self.fast_chunk(kind, size, src, budget - done)?;
                if n > 0 {
                    done += n;
                    self.commit();
                    if self.state.gpr[1] == 0 {
                        return Ok(());
                    }
                    if done >= budget {
                        self.next_eip = self.cur_eip;
                        return Ok(());
                    }
                    continue;
                }
            }
            self.string_once(kind, size, src, am, port)?;
            let c = self.state.gpr[1].wrapping_sub(1) & am;
            self.state.gpr[1] = (self.state.gpr[1] & !am) | c;
            self.commit();
            done += 1;
            if c == 0 {
                return Ok(());
            }
            if matches!(kind, Kind::Cmps | Kind::Scas) {
                let zf = self.state.eflags & flags::ZF != 0;
                if (rep == Rep::E && !zf) || (rep == Rep::Ne && zf) {
                    return Ok(());
                }
            }
            if done >= budget || self.pending_exit.is_some() {
                self.next_eip = self.cur_eip;
                return Ok(());
            }
        }
    }

    /// Commit a completed iteration: a later fault restores the state from here.
    #[inline]
    fn commit(&mut self) {
        self.saved_gpr = self.state.gpr;
        self.saved_eflags = self.state.eflags;
    }

    /// Advance (E)SI or (E)DI by one element in the direction of DF.
    #[inline]
    fn advance(&mut self, r: usize, size: u8, am: u32) {
        let v = self.state.gpr[r];
        let n =
            if self.state.eflags & flags::DF != 0 { v.wrapping_sub(size as u32) } else { v.wrapping_add(size as u32) };
        self.state.gpr[r] = (v & !am) | (n & am);
    }

    /// One iteration, without the count.
    fn string_once(&mut self, kind: Kind, size: u8, src: SegReg, am: u32, port: u16) -> Res<()> {
        const ESI: usize = 6;
        const EDI: usize = 7;
        let si = self.state.gpr[ESI] & am;
        let di = self.state.gpr[EDI] & am;
        match kind {
            Kind::Movs => {
                let v = self.read(src, si, size)?;
                self.write(SegReg::Es, di, size, v)?;
                self.advance(ESI, size, am);
                self.advance(EDI, size, am);
            }
            Kind::Cmps => {
                // The host CPU accesses ES:[EDI] first (a misaligned destination raises #AC
                // before the source's #PF), unlike MOVS, which reads its source first. When
                // both operands page-fault the host has been seen to report either address,
                // and the differential test accepts either.
                let b = self.read(SegReg::Es, di, size)?;
                let a = self.read(src, si, size)?;
                let (_, f) = sub_flags(a, b, 0, size);
                self.set_status(f);
                self.advance(ESI, size, am);
                self.advance(EDI, size, am);
            }
            Kind::Scas => {
                let a = self.state.gpr[0] & mask(size);
                let b = self.read(SegReg::Es, di, size)?;
                let (_, f) = sub_flags(a, b, 0, size);
                self.set_status(f);
                self.advance(EDI, size, am);
            }
            Kind::Lods => {
                let v = self.read(src, si, size)?;
                let m = mask(size);
                self.state.gpr[0] = (self.state.gpr[0] & !m) | (v & m);
                self.advance(ESI, size, am);
            }
            Kind::Stos => {
                let v = self.state.gpr[0];
                self.write(SegReg::Es, di, size, v)?;
                self.advance(EDI, size, am);
            }
            Kind::Ins => {
                let l = self.data_loc(SegReg::Es, di, size, true)?;
                let v = self.bus.io_in(port, size);
                self.loc_write(l, v as u64);
                self.advance(EDI, size, am);
            }
            Kind::Outs => {
                let v = self.read(src, si, size)?;
                if self.bus.io_out(port, size, v) == IoAction::Exit {
                    self.pending_exit = Some(Exit::PortIo { port, size, value: v });
                }
                self.advance(ESI, size, am);
            }
        }
        Ok(())
    }

    /// REP MOVS / REP STOS forward with 32-bit addressing: run up to `budget` iterations
    /// as one block if they stay within one source page and one destination page, all in
    /// RAM, with no overlap that the element order would make visible. Returns the number
    /// of iterations done (0: take the element-by-element path). A fault is returned only
    /// where the first element would raise the same one.
    fn fast_chunk(&mut self, kind: Kind, size: u8, src: SegReg, budget: u32) -> Res<u32> {
        let sz = size as u32;
        let count = self.state.gpr[1];
        let si = self.state.gpr[6];
        let di = self.state.gpr[7];
        let cpl3 = self.state.cpl == 3;
        if cpl3 && size > 1 && self.state.eflags & flags::AC != 0 && self.state.cr0 & cr::CR0_AM != 0 {
            return Ok(0);
        }
        // Linear addresses of the first element (segment base + offset), checked below.
        let es = &self.state.seg[SegReg::Es as usize];
        let dst_lin0 = es.base.wrapping_add(di);
        let mut n = count.min(budget).min((0x1000 - (dst_lin0 & 0xfff)) / sz);
        let src_lin0 = if kind == Kind::Movs {
            let s = self.state.seg[src as usize].base.wrapping_add(si);
            n = n.min((0x1000 - (s & 0xfff)) / sz);
            s
        } else {
            0
        };
        if n < 2 {
            return Ok(0);
        }
        let len = n * sz;
        // Segmentation for the whole chunk; no wrap of the offsets.
        if di.checked_add(len).is_none() || (kind == Kind::Movs && si.checked_add(len).is_none()) {
            return Ok(0);
        }
        if kind == Kind::Movs && self.seg_linear(src, si, len, false).is_err() {
            return Ok(0);
        }
        if self.seg_linear(SegReg::Es, di, len, true).is_err() {
            return Ok(0);
        }
        let ram_len = self.bus.ram().len() as u64;
        if kind == Kind::Movs {
            // Same faults, in the same order, as the first element's read and write.
            let ps = self.translate(src_lin0, Access::read(cpl3))?;
            let pd = self.translate(dst_lin0, Access::write(cpl3))?;
            if ps as u64 + len as u64 > ram_len || pd as u64 + len as u64 > ram_len {
                return Ok(0);
            }
            // Forward element order equals memmove unless the destination starts inside
            // the source (then earlier writes feed later reads).
            if pd > ps && (pd as u64) < ps as u64 + len as u64 {
                return Ok(0);
            }
            let (ps, pd, l) = (ps as usize, pd as usize, len as usize);
            self.bus.ram().copy_within(ps..ps + l, pd);
            self.state.gpr[6] = si.wrapping_add(len);
        } else {
            let pd = self.translate(dst_lin0, Access::write(cpl3))?;
            if pd as u64 + len as u64 > ram_len {
                return Ok(0);
            }
            let v = self.state.gpr[0].to_le_bytes();
            let (pd, l) = (pd as usize, len as usize);
            let dst = &mut self.bus.ram()[pd..pd + l];
            match size {
                1 => dst.fill(v[0]),
                2 => dst.chunks_exact_mut(2).for_each(|c| c.copy_from_slice(&v[..2])),
                _ => dst.chunks_exact_mut(4).for_each(|c| c.copy_from_slice(&v)),
            }
        }
        self.state.gpr[7] = di.wrapping_add(len);
        self.state.gpr[1] = count - n;
        Ok(n)
    }
}
