//! Binary arithmetic: ADD ADC SUB SBB CMP INC DEC NEG MUL IMUL DIV IDIV (SDM vol. 2).
//!
//! The flag helpers here ([`add_flags`], [`sub_flags`], [`szp`]) are shared with the other
//! families that compute arithmetic flags (CMPS/SCAS, CMPXCHG, XADD).
//!
//! Undefined flags follow the host CPU (an AMD EPYC), as the differential test in strict mode
//! (`VMM_DIFF_STRICT=1`) checks: after MUL/IMUL, SF ZF AF PF are left unchanged; after a
//! DIV/IDIV that completes, SF ZF PF are clear, AF is set, CF and OF are unchanged.

use iced_x86::{Instruction, OpKind};

use super::operand::{mask, sext, sign_bit};
use crate::exc;
use crate::state::flags::*;
use crate::{Bus, Cpu, Res};

/// SF, ZF and PF of a result of `size` bytes.
#[inline]
pub(crate) fn szp(r: u32, size: u8) -> u32 {
    let r = r & mask(size);
    let mut f = 0;
    if r == 0 {
        f |= ZF;
    }
    if r & sign_bit(size) != 0 {
        f |= SF;
    }
    if (r as u8).count_ones() & 1 == 0 {
        f |= PF;
    }
    f
}

/// `a + b + carry` at `size` bytes: the result and the six status flags.
#[inline]
pub(crate) fn add_flags(a: u32, b: u32, carry: u32, size: u8) -> (u32, u32) {
    let m = mask(size);
    let (a, b) = (a & m, b & m);
    let wide = a as u64 + b as u64 + carry as u64;
    let r = (wide as u32) & m;
    let mut f = szp(r, size);
    if wide > m as u64 {
        f |= CF;
    }
    if (a ^ b ^ r) & 0x10 != 0 {
        f |= AF;
    }
    if (a ^ r) & (b ^ r) & sign_bit(size) != 0 {
        f |= OF;
    }
    (r, f)
}

/// `a - b - borrow` at `size` bytes: the result and the six status flags.
#[inline]
pub(crate) fn sub_flags(a: u32, b: u32, borrow: u32, size: u8) -> (u32, u32) {
    let m = mask(size);
    let (a, b) = (a & m, b & m);
    let r = a.wrapping_sub(b).wrapping_sub(borrow) & m;
    let mut f = szp(r, size);
    if (b as u64 + borrow as u64) > a as u64 {
        f |= CF;
    }
    if (a ^ b ^ r) & 0x10 != 0 {
        f |= AF;
    }
    if (a ^ b) & (a ^ r) & sign_bit(size) != 0 {
        f |= OF;
    }
    (r, f)
}

impl<B: Bus> Cpu<B> {
    /// The common shape of ADD/ADC/SUB/SBB/CMP: destination op 0, source op 1.
    #[inline]
    fn alu2(&mut self, i: &Instruction, sub: bool, with_carry: bool, store: bool) -> Res<()> {
        let size = self.op_size(i, 0);
        let b = self.read_op(i, 1)?;
        let c = if with_carry { self.state.eflags & CF } else { 0 };
        let (a, place) = if store {
            let (a, p) = self.rmw_op(i, 0)?;
            (a, Some(p))
        } else {
            (self.read_op(i, 0)?, None)
        };
        let (r, f) = if sub { sub_flags(a, b, c, size) } else { add_flags(a, b, c, size) };
        if let Some(p) = place {
            self.put(p, r);
        }
        self.set_status(f);
        Ok(())
    }

    pub(super) fn add(&mut self, i: &Instruction) -> Res<()> {
        self.alu2(i, false, false, true)
    }
    pub(super) fn adc(&mut self, i: &Instruction) -> Res<()> {
        self.alu2(i, false, true, true)
    }
    pub(super) fn sub(&mut self, i: &Instruction) -> Res<()> {
        self.alu2(i, true, false, true)
    }
    pub(super) fn sbb(&mut self, i: &Instruction) -> Res<()> {
        self.alu2(i, true, true, true)
    }
    pub(super) fn cmp(&mut self, i: &Instruction) -> Res<()> {
        self.alu2(i, true, false, false)
    }

    /// INC and DEC leave CF alone.
    pub(super) fn inc(&mut self, i: &Instruction) -> Res<()> {
        let size = self.op_size(i, 0);
        let (a, p) = self.rmw_op(i, 0)?;
        let (r, f) = add_flags(a, 1, 0, size);
        self.put(p, r);
        self.set_status((f & !CF) | (self.state.eflags & CF));
        Ok(())
    }
    pub(super) fn dec(&mut self, i: &Instruction) -> Res<()> {
        let size = self.op_size(i, 0);
        let (a, p) = self.rmw_op(i, 0)?;
        let (r, f) = sub_flags(a, 1, 0, size);
        self.put(p, r);
        self.set_status((f & !CF) | (self.state.eflags & CF));
        Ok(())
    }

    /// NEG: 0 - x; CF is set unless the operand was zero.
    pub(super) fn neg(&mut self, i: &Instruction) -> Res<()> {
        let size = self.op_size(i, 0);
        let (a, p) = self.rmw_op(i, 0)?;
        let (r, f) = sub_flags(0, a, 0, size);
        self.put(p, r);
        self.set_status(f);
        Ok(())
    }

    /// The accumulator pair of a one-operand multiply/divide: (low, high) = AL/AH, AX/DX,
    /// EAX/EDX as a wide value for sizes 1, 2, 4.
    #[inline]
    fn acc_wide(&self, size: u8) -> u64 {
        let eax = self.state.gpr[0];
        let edx = self.state.gpr[2];
        match size {
            1 => (eax & 0xffff) as u64,
            2 => ((edx & 0xffff) as u64) << 16 | (eax & 0xffff) as u64,
            _ => (edx as u64) << 32 | eax as u64,
        }
    }

    #[inline]
    fn set_acc_pair(&mut self, size: u8, lo: u32, hi: u32) {
        match size {
            1 => {
                self.state.gpr[0] = (self.state.gpr[0] & 0xffff_0000) | (lo & 0xff) | ((hi & 0xff) << 8);
            }
            2 => {
                self.state.gpr[0] = (self.state.gpr[0] & 0xffff_0000) | (lo & 0xffff);
                self.state.gpr[2] = (self.state.gpr[2] & 0xffff_0000) | (hi & 0xffff);
            }
            _ => {
                self.state.gpr[0] = lo;
                self.state.gpr[2] = hi;
            }
        }
    }

    /// Flags after a multiply: CF = OF = `overflow`; SF ZF AF PF (undefined) are left as
    /// they were, as the host CPU does.
    #[inline]
    fn mul_flags(&mut self, _lo: u32, _size: u8, overflow: bool) {
        let keep = self.state.eflags & (SF | ZF | AF | PF);
        let f = if overflow { CF | OF } else { 0 };
        self.set_status(f | keep);
    }

    pub(super) fn mul(&mut self, i: &Instruction) -> Res<()> {
        let size = self.op_size(i, 0);
        let src = self.read_op(i, 0)? as u64;
        let a = (self.state.gpr[0] & mask(size)) as u64;
        let p = a * src;
        let bits = 8 * size as u32;
        let lo = (p as u32) & mask(size);
        let hi = ((p >> bits) as u32) & mask(size);
        self.set_acc_pair(size, lo, hi);
        self.mul_flags(lo, size, hi != 0);
        Ok(())
    }

    pub(super) fn imul(&mut self, i: &Instruction) -> Res<()> {
        match i.op_count() {
            1 => {
                let size = self.op_size(i, 0);
                let src = sext(self.read_op(i, 0)?, size) as i32 as i64;
                let a = sext(self.state.gpr[0], size) as i32 as i64;
                let p = a * src;
                let bits = 8 * size as u32;
                let lo = (p as u32) & mask(size);
                let hi = ((p >> bits) as u32) & mask(size);
                self.set_acc_pair(size, lo, hi);
                // Overflow when the product does not fit the low half sign-extended.
                self.mul_flags(lo, size, sext(lo, size) as i32 as i64 != p);
            }
            n => {
                let size = self.op_size(i, 0);
                let (a, b) = if n == 2 {
                    (self.read_op(i, 0)?, self.read_op(i, 1)?)
                } else {
                    (self.read_op(i, 1)?, imm_sized(i, 2))
                };
                let p = sext(a, size) as i32 as i64 * sext(b, size) as i32 as i64;
                let lo = (p as u32) & mask(size);
                self.set_reg(i.op0_register(), lo);
                self.mul_flags(lo, size, sext(lo, size) as i32 as i64 != p);
            }
        }
        Ok(())
    }

    pub(super) fn div(&mut self, i: &Instruction) -> Res<()> {
        let size = self.op_size(i, 0);
        let d = self.read_op(i, 0)? as u64;
        if d == 0 {
            return Err(exc::de());
        }
        let n = self.acc_wide(size);
        let q = n / d;
        let r = n % d;
        if q > mask(size) as u64 {
            return Err(exc::de());
        }
        self.set_acc_pair(size, q as u32, r as u32);
        self.div_flags();
        Ok(())
    }

    /// The undefined flags after a DIV/IDIV that completed, as the host CPU leaves them:
    /// SF ZF PF clear, AF set, CF and OF unchanged.
    #[inline]
    fn div_flags(&mut self) {
        self.state.eflags = (self.state.eflags & !(SF | ZF | PF)) | AF;
    }

    pub(super) fn idiv(&mut self, i: &Instruction) -> Res<()> {
        let size = self.op_size(i, 0);
        let d = sext(self.read_op(i, 0)?, size) as i32 as i64;
        if d == 0 {
            return Err(exc::de());
        }
        let bits = 16 * size as u32;
        let wide = self.acc_wide(size);
        // Sign-extend the 2*size-byte dividend.
        let n = ((wide << (64 - bits)) as i64) >> (64 - bits);
        let (q, r) = match (n.checked_div(d), n.checked_rem(d)) {
            (Some(q), Some(r)) => (q, r),
            _ => return Err(exc::de()),
        };
        let half = 8 * size as u32;
        let min = -(1i64 << (half - 1));
        let max = (1i64 << (half - 1)) - 1;
        if q < min || q > max {
            return Err(exc::de());
        }
        self.set_acc_pair(size, q as u32 & mask(size), r as u32 & mask(size));
        self.div_flags();
        Ok(())
    }
}

/// The immediate operand `n`, sign-extended to 32 bits as the instruction defines it.
#[inline]
pub(crate) fn imm_sized(i: &Instruction, n: u32) -> u32 {
    match i.op_kind(n) {
        OpKind::Immediate8 => i.immediate8() as u32,
        OpKind::Immediate8to16 => i.immediate8to16() as u16 as u32,
        OpKind::Immediate16 => i.immediate16() as u32,
        _ => i.immediate(n) as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_flags_edges() {
        assert_eq!(add_flags(0xff, 1, 0, 1), (0, CF | ZF | PF | AF));
        assert_eq!(add_flags(0x7f, 1, 0, 1), (0x80, SF | OF | AF));
        assert_eq!(add_flags(0xffff_ffff, 0, 1, 4), (0, CF | ZF | PF | AF));
    }

    #[test]
    fn sub_flags_edges() {
        assert_eq!(sub_flags(0, 1, 0, 1), (0xff, CF | SF | PF | AF));
        assert_eq!(sub_flags(0x80, 1, 0, 1), (0x7f, OF | AF));
        assert_eq!(sub_flags(5, 5, 0, 4), (0, ZF | PF));
    }
}
