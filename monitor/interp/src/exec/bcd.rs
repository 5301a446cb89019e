//! Decimal arithmetic: DAA DAS AAA AAS AAM AAD, after the SDM's pseudocode.
//!
//! Flags the SDM leaves undefined follow the host (AMD Zen), checked against it on every AL
//! value with random AH and flags:
//!
//! * DAA/DAS: OF is the signed overflow of old AL + (DAS: -) the total adjustment
//!   (06h, 60h or 66h);
//! * AAA/AAS: SF ZF OF are those of the 16-bit AX + 106h (AAS: AX - 106h) before AL is
//!   masked, PF that of the unmasked AL; without an adjustment, SF ZF PF of AX and OF clear;
//! * AAM: OF AF CF cleared; AAD: OF AF CF of the byte addition AL + (AH * imm8 mod 256).

use iced_x86::Instruction;

use super::arith::{add_flags, szp};
use crate::exc;
use crate::state::flags::*;
use crate::{Bus, Cpu, Res};

impl<B: Bus> Cpu<B> {
    #[inline]
    fn al(&self) -> u32 {
        self.state.gpr[0] & 0xff
    }
    #[inline]
    fn set_al(&mut self, v: u32) {
        self.state.gpr[0] = (self.state.gpr[0] & !0xff) | (v & 0xff);
    }
    #[inline]
    fn set_ax(&mut self, v: u32) {
        self.state.gpr[0] = (self.state.gpr[0] & !0xffff) | (v & 0xffff);
    }

    /// DAA.
    pub(super) fn daa(&mut self, _i: &Instruction) -> Res<()> {
        self.decimal_adjust(false);
        Ok(())
    }

    /// DAS.
    pub(super) fn das(&mut self, _i: &Instruction) -> Res<()> {
        self.decimal_adjust(true);
        Ok(())
    }

    fn decimal_adjust(&mut self, sub: bool) {
        let old_al = self.al();
        let old_cf = self.flag(CF);
        let mut al = old_al;
        let mut cf = false;
        let mut af = false;
        if al & 0x0f > 9 || self.flag(AF) {
            if sub {
                cf = old_cf || al < 6;
                al = al.wrapping_sub(6) & 0xff;
            } else {
                cf = old_cf || al + 6 > 0xff;
                al = (al + 6) & 0xff;
            }
            af = true;
        }
        if old_al > 0x99 || old_cf {
            al = if sub { al.wrapping_sub(0x60) } else { al + 0x60 } & 0xff;
            cf = true;
        } else if !sub {
            // The SDM's DAA pseudocode clears CF here; DAS keeps the borrow of the first step.
            cf = false;
        }
        self.set_al(al);
        let mut f = szp(al, 1);
        // OF (undefined): signed overflow of old AL +/- the total adjustment.
        let adj = if af { 6 } else { 0 } + if cf && (old_al > 0x99 || old_cf) { 0x60 } else { 0 };
        let ovf = if sub { (old_al ^ adj) & (old_al ^ al) } else { !(old_al ^ adj) & (old_al ^ al) };
        if ovf & 0x80 != 0 {
            f |= OF;
        }
        if cf {
            f |= CF;
        }
        if af {
            f |= AF;
        }
        self.set_status(f);
    }

    /// AAA (AX + 106h when adjusting, as P6 and later do).
    pub(super) fn aaa(&mut self, _i: &Instruction) -> Res<()> {
        self.ascii_adjust(false);
        Ok(())
    }

    /// AAS (AX - 106h when adjusting: AL - 6 borrows from AH, then AH - 1).
    pub(super) fn aas(&mut self, _i: &Instruction) -> Res<()> {
        self.ascii_adjust(true);
        Ok(())
    }

    fn ascii_adjust(&mut self, sub: bool) {
        let ax = self.state.gpr[0] & 0xffff;
        let adjust = ax & 0x0f > 9 || self.flag(AF);
        let mut nax = ax;
        if adjust {
            nax = if sub {
                // AX <- AX - 6; AH <- AH - 1
                ax.wrapping_sub(0x106)
            } else {
                ax + 0x106
            } & 0xffff;
        }
        // SF ZF PF OF (undefined), as the host computes them: from the 16-bit addition
        // AX + 106h (AAS: subtraction of 106h) before AL is masked, or from AX itself when
        // there is no adjustment; PF from the low byte.
        let mut f = szp(nax, 2) & !PF | szp(nax, 1) & PF;
        if adjust {
            let ovf = if sub { (ax ^ 0x106) & (ax ^ nax) } else { !(ax ^ 0x106) & (ax ^ nax) };
            if ovf & 0x8000 != 0 {
                f |= OF;
            }
            f |= AF | CF;
        }
        self.set_ax(nax & 0xff0f);
        self.set_status(f);
    }

    /// AAM imm8: AH = AL / imm8, AL = AL mod imm8; a zero base raises #DE. OF AF CF
    /// (undefined) are cleared.
    pub(super) fn aam(&mut self, i: &Instruction) -> Res<()> {
        let base = i.immediate8() as u32;
        if base == 0 {
            return Err(exc::de());
        }
        let al = self.al();
        let (q, r) = (al / base, al % base);
        self.set_ax((q << 8) | r);
        self.set_status(szp(r, 1));
        Ok(())
    }

    /// AAD imm8: AL = AL + AH * imm8 (mod 256), AH = 0.
    pub(super) fn aad(&mut self, i: &Instruction) -> Res<()> {
        let base = i.immediate8() as u32;
        let ax = self.state.gpr[0];
        // The flags are those of the byte addition AL + (AH * imm8 mod 256), as the host
        // computes OF AF CF (undefined).
        let (al, f) = add_flags(ax & 0xff, ((ax >> 8) & 0xff) * base, 0, 1);
        self.set_ax(al);
        self.set_status(f);
        Ok(())
    }
}
