//! x87 arithmetic: FLD FST FSTP FILD FIST FISTP FADD FSUB FSUBR FMUL FDIV FDIVR (all forms,
//! with P and FI* variants) FCHS FABS FXCH FLD1 FLDZ FCOM FCOMP FCOMPP FUCOM FUCOMP FUCOMPP
//! FICOM FICOMP FTST (SDM vol. 1, chapter 8; vol. 2, each instruction).
//!
//! Exact: values are the 80-bit extended format, computed with `rustc_apfloat`'s
//! `X87DoubleExtended` (IEEE correctly rounded, status flags), never with host floats.
//!
//! * Registers: `CpuState::fpu` is the FXSAVE image, so ST(i) is at `32 + 16 * i` and its
//!   tag is bit `(TOP + i) mod 8` of the abridged tag byte (as in `fpu.rs`). A push or pop
//!   rotates the register area by 16 bytes and changes TOP.
//! * Precision control: the result is first computed to 64 bits rounding to odd (truncate,
//!   then set the last bit if inexact), then rounded once to 24 or 53 bits with the
//!   extended exponent range; 64 >= p + 2 makes that equal to a single rounding.
//!   The reserved PC value 01b computes to 64 bits, as the host (AMD Zen) does.
//! * C1 after a rounded result is 1 iff the magnitude was rounded up; after a stack fault
//!   1 for overflow, 0 for underflow; otherwise 0.
//! * NaN operands (SDM vol. 1, table 4-7): an SNaN signals IE; the result is the quieted
//!   NaN; of an SNaN and a QNaN the QNaN, of two NaNs of one kind the one with the larger
//!   significand (the first operand on a tie). Unsupported encodings (pseudo-NaN, pseudo-infinity, unnormal) are invalid
//!   operands. Invalid operations give the real indefinite 0xFFFF_C000000000000000.
//! * Exception priority (SDM vol. 1, 4.9.2): an invalid operation or a division by zero
//!   suppresses the denormal-operand flag (the host agrees). FST and FIST have no #D.
//! * Masked exceptions produce the masked response; an unmasked IE/DE/ZE leaves the
//!   destination and TOP unchanged and sets FSW.ES/B. An unmasked OE or UE (which would
//!   deliver a rescaled result) is reported as `Fault::Unsupported`.
//! * FIP/FDP/FOP are not updated.

use iced_x86::{Instruction, MemorySize as MS, Mnemonic as M, OpKind, Register};
use rustc_apfloat::ieee::{IeeeFloat, Semantics, X87DoubleExtended as X};
use rustc_apfloat::{Float, FloatConvert, Round, Status};

use crate::{Bus, Cpu, Fault, Res};

const IE: u16 = 1;
const DE: u16 = 2;
const ZE: u16 = 4;
const OE: u16 = 8;
const UE: u16 = 0x10;
const PE: u16 = 0x20;
const SF: u16 = 0x40;
const C0: u16 = 1 << 8;
const C1: u16 = 1 << 9;
const C2: u16 = 1 << 10;
const C3: u16 = 1 << 14;
const ST0: usize = 32;

/// The real indefinite: negative quiet NaN with significand 0xC000...0.
pub(crate) const INDEFINITE: u128 = 0xffff_c000_0000_0000_0000;
const MASK80: u128 = (1 << 80) - 1;

struct P53;
impl Semantics for P53 {
    const BITS: usize = 68;
    const EXP_BITS: usize = 15;
}
struct P24;
impl Semantics for P24 {
    const BITS: usize = 39;
    const EXP_BITS: usize = 15;
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Add,
    Sub,
    Mul,
    Div,
}

fn exp_of(v: u128) -> u16 {
    ((v >> 64) & 0x7fff) as u16
}
fn mant_of(v: u128) -> u64 {
    v as u64
}
fn is_nan(v: u128) -> bool {
    exp_of(v) == 0x7fff && mant_of(v) << 1 != 0 && mant_of(v) >> 63 == 1
}
fn is_snan(v: u128) -> bool {
    is_nan(v) && mant_of(v) >> 62 & 1 == 0
}
/// Pseudo-NaN, pseudo-infinity, unnormal: encodings the 387 and later reject.
fn unsupported(v: u128) -> bool {
    let e = exp_of(v);
    e != 0 && mant_of(v) >> 63 == 0
}
fn is_denormal(v: u128) -> bool {
    exp_of(v) == 0 && mant_of(v) != 0
}
fn quiet(v: u128) -> u128 {
    v | 1 << 62
}
fn round_of(fcw: u16) -> Round {
    match (fcw >> 10) & 3 {
        0 => Round::NearestTiesToEven,
        1 => Round::TowardNegative,
        2 => Round::TowardPositive,
        _ => Round::TowardZero,
    }
}

/// x87 flags from apfloat status.
fn flags_of(s: Status) -> u16 {
    let mut f = 0;
    if s.contains(Status::INVALID_OP) {
        f |= IE;
    }
    if s.contains(Status::DIV_BY_ZERO) {
        f |= ZE;
    }
    if s.contains(Status::OVERFLOW) {
        f |= OE;
    }
    if s.contains(Status::UNDERFLOW) {
        f |= UE;
    }
    if s.contains(Status::INEXACT) {
        f |= PE;
    }
    f
}

/// NaN propagation for a two-operand operation (one of them is a NaN or unsupported).
fn nan_result(a: u128, b: u128) -> (u128, u16) {
    if unsupported(a) || unsupported(b) {
        return (INDEFINITE, IE);
    }
    let flags = if is_snan(a) || is_snan(b) { IE } else { 0 };
    let r = match (is_nan(a), is_nan(b)) {
        (true, true) if is_snan(a) != is_snan(b) => {
            if is_snan(a) {
                b
            } else {
                a
            }
        }
        (true, true) => {
            if mant_of(quiet(b)) > mant_of(quiet(a)) {
                b
            } else {
                a
            }
        }
        (true, false) => a,
        _ => b,
    };
    (quiet(r), flags)
}

fn apply(op: Op, a: X, b: X, r: Round) -> rustc_apfloat::StatusAnd<X> {
    match op {
        Op::Add => a.add_r(b, r),
        Op::Sub => a.sub_r(b, r),
        Op::Mul => a.mul_r(b, r),
        Op::Div => a.div_r(b, r),
    }
}

fn round_pc<S: Semantics>(odd: X, mode: Round) -> (u128, u16, bool)
where
    X: FloatConvert<IeeeFloat<S>>,
    IeeeFloat<S>: FloatConvert<X>,
{
    let mut lost = false;
    let r = FloatConvert::<IeeeFloat<S>>::convert_r(odd, mode, &mut lost);
    let t = FloatConvert::<IeeeFloat<S>>::convert_r(odd, Round::TowardZero, &mut lost).value;
    let back: X = r.value.convert(&mut lost).value;
    let tb: X = t.convert(&mut lost).value;
    let up = back.to_bits() != tb.to_bits();
    (back.to_bits(), flags_of(r.status), up)
}

/// A correctly rounded arithmetic result under FCW: (value, flags, rounded up).
pub(crate) fn arith(op: Op2, a: u128, b: u128, fcw: u16) -> (u128, u16, bool) {
    let op = match op {
        Op2::Add => Op::Add,
        Op2::Sub => Op::Sub,
        Op2::Mul => Op::Mul,
        Op2::Div => Op::Div,
    };
    if is_nan(a) || is_nan(b) || unsupported(a) || unsupported(b) {
        let (r, f) = nan_result(a, b);
        return (r, f, false);
    }
    let de = if is_denormal(a) || is_denormal(b) { DE } else { 0 };
    let (xa, xb) = (X::from_bits(a), X::from_bits(b));
    let mode = round_of(fcw);
    let pc = (fcw >> 8) & 3;
    let t = apply(op, xa, xb, Round::TowardZero);
    let special = flags_of(t.status) & (IE | ZE);
    if special & IE != 0 {
        return (INDEFINITE, IE, false);
    }
    if special & ZE != 0 {
        // Division of a finite nonzero by zero: infinity of the xor'ed sign.
        let r = apply(op, xa, xb, mode).value;
        return (r.to_bits() & MASK80, ZE, false);
    }
    let (v, f, up) = if pc & 1 == 1 {
        let r = apply(op, xa, xb, mode);
        let up = r.value.to_bits() != t.value.to_bits();
        (r.value.to_bits(), flags_of(r.status), up)
    } else {
        let mut odd = t.value;
        if t.status.contains(Status::INEXACT) && !t.status.contains(Status::OVERFLOW) {
            odd = X::from_bits(odd.to_bits() | 1);
        }
        let (v, f, up) = if pc == 2 { round_pc::<P53>(odd, mode) } else { round_pc::<P24>(odd, mode) };
        let f = f | flags_of(t.status) & (OE | PE);
        (v, f, up)
    };
    // apfloat does not report overflow when the rounding mode gives the largest finite
    // number: the exact result is >= 2^16384 iff half of it truncates to exponent 0x7ffe.
    let f = if f & (PE | OE) == PE && exp_of(v) == 0x7ffe && v as u64 >> 40 == 0xff_ffff {
        let half = xa.scalbn_r(-1, Round::TowardZero);
        let h = match op {
            Op::Add | Op::Sub => apply(op, half, xb.scalbn_r(-1, Round::TowardZero), Round::TowardZero),
            _ => apply(op, half, xb, Round::TowardZero),
        };
        if exp_of(h.value.to_bits()) == 0x7ffe {
            f | OE
        } else {
            f
        }
    } else {
        f
    };
    let f = if f & (OE | UE) != 0 { f | PE } else { f };
    // Denormal operands are only reported when nothing else makes the operation invalid.
    (v & MASK80, f | de, up)
}

/// The public operation selector of [`arith`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Op2 {
    Add,
    Sub,
    Mul,
    Div,
}

/// Compare: (C3 C2 C0 bits, flags); `unordered_ok` for FUCOM (QNaNs do not signal).
fn compare(a: u128, b: u128, unordered_ok: bool) -> (u16, u16) {
    if is_nan(a) || is_nan(b) || unsupported(a) || unsupported(b) {
        let sig = unsupported(a) || unsupported(b) || is_snan(a) || is_snan(b) || !unordered_ok;
        return (C3 | C2 | C0, if sig { IE } else { 0 });
    }
    let de = if is_denormal(a) || is_denormal(b) { DE } else { 0 };
    let (xa, xb) = (X::from_bits(a), X::from_bits(b));
    let cc = match xa.partial_cmp(&xb) {
        Some(core::cmp::Ordering::Greater) => 0,
        Some(core::cmp::Ordering::Less) => C0,
        Some(core::cmp::Ordering::Equal) => C3,
        None => C3 | C2 | C0,
    };
    (cc, de)
}

impl<B: Bus> Cpu<B> {
    fn x_top(&self) -> usize {
        ((self.state.fpu.fsw() >> 11) & 7) as usize
    }
    fn x_empty(&self, i: usize) -> bool {
        let p = (self.x_top() + i) & 7;
        self.state.fpu.ftw_abridged() & (1 << p) == 0
    }
    fn x_get(&self, i: usize) -> u128 {
        let o = ST0 + 16 * (i & 7);
        let mut b = [0u8; 16];
        b[..10].copy_from_slice(&self.state.fpu.0[o..o + 10]);
        u128::from_le_bytes(b)
    }
    fn x_set(&mut self, i: usize, v: u128) {
        let o = ST0 + 16 * (i & 7);
        self.state.fpu.0[o..o + 10].copy_from_slice(&v.to_le_bytes()[..10]);
        let p = (self.x_top() + i) & 7;
        let t = self.state.fpu.ftw_abridged() | 1 << p;
        self.state.fpu.set_ftw_abridged(t);
    }
    fn x_set_top(&mut self, top: usize) {
        let fsw = self.state.fpu.fsw();
        self.state.fpu.set_fsw((fsw & !0x3800) | ((top as u16 & 7) << 11));
    }
    fn x_push(&mut self, v: u128) {
        self.state.fpu.0[ST0..ST0 + 128].rotate_right(16);
        let top = (self.x_top() + 7) & 7;
        self.x_set_top(top);
        self.x_set(0, v);
    }
    fn x_pop(&mut self) {
        let top = self.x_top();
        let t = self.state.fpu.ftw_abridged() & !(1 << top);
        self.state.fpu.set_ftw_abridged(t);
        self.state.fpu.0[ST0..ST0 + 128].rotate_left(16);
        self.x_set_top(top + 1);
    }
    fn x_set_cc(&mut self, mask: u16, v: u16) {
        let fsw = self.state.fpu.fsw();
        self.state.fpu.set_fsw((fsw & !mask) | (v & mask));
    }

    /// Record exception flags. Returns whether the result may be written (no unmasked
    /// IE, DE or ZE); an unmasked OE/UE is unsupported.
    fn x_signal(&mut self, flags: u16) -> Res<bool> {
        let fcw = self.state.fpu.fcw();
        let mut fsw = self.state.fpu.fsw() | flags;
        let unmasked = flags & !fcw & 0x3f;
        if unmasked != 0 {
            fsw |= 1 << 7 | 1 << 15;
        }
        self.state.fpu.set_fsw(fsw);
        if unmasked & (OE | UE) != 0 {
            return Err(Fault::Unsupported("x87: unmasked overflow/underflow exception"));
        }
        Ok(unmasked & (IE | DE | ZE) == 0)
    }

    /// A stack underflow: IE|SF with C1=0. Returns whether masked.
    fn x_underflow(&mut self) -> Res<bool> {
        self.x_set_cc(C1, 0);
        self.x_signal(IE | SF)
    }

    fn x_read_mem(&mut self, i: &Instruction) -> Res<[u8; 10]> {
        let (s, off) = self.ea(i);
        let mut b = [0u8; 10];
        let len = (i.memory_size().size()).min(10);
        self.read_block(s, off, &mut b[..len])?;
        Ok(b)
    }

    /// A memory operand converted to the extended format (exact): (value, flags).
    fn x_mem_value(&mut self, i: &Instruction) -> Res<(u128, u16)> {
        let b = self.x_read_mem(i)?;
        Ok(match i.memory_size() {
            MS::Float32 => {
                let v = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                let (s, e, m) = ((v >> 31) as u128, (v >> 23) & 0xff, (v & 0x7f_ffff) as u64);
                ext_from(s, e as i32, m << 40, 0xff, 127, v as u64 & 0x40_0000 != 0, e == 0 && m != 0)
            }
            MS::Float64 => {
                let v = u64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8]));
                let (s, e, m) = ((v >> 63) as u128, ((v >> 52) & 0x7ff) as u32, v & ((1 << 52) - 1));
                ext_from(s, e as i32, m << 11, 0x7ff, 1023, v & 1 << 51 != 0, e == 0 && m != 0)
            }
            MS::Float80 => (u128::from_le_bytes({
                let mut w = [0u8; 16];
                w[..10].copy_from_slice(&b);
                w
            }), 0),
            MS::Int16 => (int_to_ext(i16::from_le_bytes([b[0], b[1]]) as i64), 0),
            MS::Int32 => (int_to_ext(i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64), 0),
            _ => (int_to_ext(i64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8]))), 0),
        })
    }

    /// Dispatch of the x87 arithmetic instructions (after `fpu_available`).
    pub(super) fn x87(&mut self, i: &Instruction) -> Res<()> {
        self.fpu_available(i)?;
        let m = i.mnemonic();
        match m {
            M::Fld | M::Fild => self.x_fld(i),
            M::Fld1 => self.x_load_const(0x3fff_8000_0000_0000_0000),
            M::Fldz => self.x_load_const(0),
            M::Fst | M::Fstp => self.x_fst(i, m == M::Fstp),
            M::Fist | M::Fistp => self.x_fist(i, m == M::Fistp),
            M::Fadd | M::Faddp | M::Fiadd => self.x_arith(i, Op2::Add, false),
            M::Fsub | M::Fsubp | M::Fisub => self.x_arith(i, Op2::Sub, false),
            M::Fsubr | M::Fsubrp | M::Fisubr => self.x_arith(i, Op2::Sub, true),
            M::Fmul | M::Fmulp | M::Fimul => self.x_arith(i, Op2::Mul, false),
            M::Fdiv | M::Fdivp | M::Fidiv => self.x_arith(i, Op2::Div, false),
            M::Fdivr | M::Fdivrp | M::Fidivr => self.x_arith(i, Op2::Div, true),
            M::Fchs | M::Fabs => {
                if self.x_empty(0) {
                    if self.x_underflow()? {
                        self.x_set(0, INDEFINITE);
                    }
                    return Ok(());
                }
                self.x_set_cc(C1, 0);
                let v = self.x_get(0);
                let v = if m == M::Fchs { v ^ 1 << 79 } else { v & !(1 << 79) };
                self.x_set(0, v);
                Ok(())
            }
            M::Fxch => {
                let j = st_index(i.op1_register());
                let (e0, ej) = (self.x_empty(0), self.x_empty(j));
                if (e0 || ej) && !self.x_underflow()? {
                    return Ok(());
                }
                self.x_set_cc(C1, 0);
                let a = if e0 { INDEFINITE } else { self.x_get(0) };
                let b = if ej { INDEFINITE } else { self.x_get(j) };
                self.x_set(0, b);
                self.x_set(j, a);
                Ok(())
            }
            M::Fcom | M::Fcomp | M::Fcompp | M::Fucom | M::Fucomp | M::Fucompp | M::Ficom | M::Ficomp | M::Ftst => {
                self.x_compare(i)
            }
            _ => Err(Fault::Unsupported("x87 instruction not implemented by the interpreter")),
        }
    }

    fn x_load_const(&mut self, v: u128) -> Res<()> {
        if !self.x_empty(7) {
            self.x_set_cc(C1, C1);
            if self.x_signal(IE | SF)? {
                self.x_push(INDEFINITE);
            }
            return Ok(());
        }
        self.x_set_cc(C1, 0);
        self.x_push(v);
        Ok(())
    }

    fn x_fld(&mut self, i: &Instruction) -> Res<()> {
        let (v, flags) = if i.op0_kind() == OpKind::Memory {
            self.x_mem_value(i)?
        } else {
            let j = st_index(i.op0_register());
            if self.x_empty(j) {
                if !self.x_empty(7) {
                    return self.x_load_const(0);
                }
                if self.x_underflow()? {
                    self.x_push(INDEFINITE);
                }
                return Ok(());
            }
            (self.x_get(j), 0)
        };
        if !self.x_empty(7) {
            return self.x_load_const(0);
        }
        self.x_set_cc(C1, 0);
        if flags != 0 && !self.x_signal(flags)? {
            return Ok(());
        }
        self.x_push(v);
        Ok(())
    }

    fn x_fst(&mut self, i: &Instruction, pop: bool) -> Res<()> {
        let fcw = self.state.fpu.fcw();
        // Masked stack underflow: store the indefinite.
        if self.x_empty(0) && !self.x_underflow()? {
            return Ok(());
        }
        let v = if self.x_empty(0) { INDEFINITE } else { self.x_get(0) };
        if i.op0_kind() == OpKind::Register {
            let j = st_index(i.op0_register());
            if !self.x_empty(0) {
                self.x_set_cc(C1, 0);
            }
            self.x_set(j, v);
        } else {
            let (bytes, len, flags, up) = store_format(i.memory_size(), v, fcw);
            if flags != 0 {
                self.x_set_cc(C1, if up { C1 } else { 0 });
                let fcw_unmasked = flags & !fcw & 0x3f;
                if fcw_unmasked & (IE | DE) != 0 {
                    self.x_signal(flags)?;
                    return Ok(());
                }
            } else if !self.x_empty(0) {
                self.x_set_cc(C1, 0);
            }
            let (s, off) = self.ea(i);
            self.write_block(s, off, &bytes[..len])?;
            self.x_signal(flags)?;
        }
        if pop {
            self.x_pop();
        }
        Ok(())
    }

    fn x_fist(&mut self, i: &Instruction, pop: bool) -> Res<()> {
        let fcw = self.state.fpu.fcw();
        let width = i.memory_size().size() * 8;
        let indef = 1i128 << (width - 1);
        let (val, flags, up) = if self.x_empty(0) {
            self.x_set_cc(C1, 0);
            (indef, IE | SF, false)
        } else {
            let v = self.x_get(0);
            if is_nan(v) || unsupported(v) || exp_of(v) == 0x7fff {
                (indef, IE, false)
            } else {
                let de = 0; // FIST has no #D (SDM; the host agrees)
                let x = X::from_bits(v);
                let mut exact = false;
                let r = x.to_i128_r(width, round_of(fcw), &mut exact);
                if r.status.contains(Status::INVALID_OP) {
                    (indef, IE | de, false)
                } else {
                    let t = x.to_i128_r(width, Round::TowardZero, &mut exact).value;
                    (r.value, flags_of(r.status) | de, r.value != t)
                }
            }
        };
        if flags & IE == 0 {
            self.x_set_cc(C1, if up { C1 } else { 0 });
        } else if flags & SF == 0 {
            self.x_set_cc(C1, 0);
        }
        if flags & !fcw & (IE | DE) != 0 {
            self.x_signal(flags)?;
            return Ok(());
        }
        let bytes = (val as u64).to_le_bytes();
        let (s, off) = self.ea(i);
        self.write_block(s, off, &bytes[..width / 8])?;
        self.x_signal(flags)?;
        if pop {
            self.x_pop();
        }
        Ok(())
    }

    fn x_arith(&mut self, i: &Instruction, op: Op2, reverse: bool) -> Res<()> {
        let pop = matches!(i.mnemonic(), M::Faddp | M::Fsubp | M::Fsubrp | M::Fmulp | M::Fdivp | M::Fdivrp);
        let (d, a, b, mflags) = if i.op0_kind() == OpKind::Memory {
            let (v, f) = self.x_mem_value(i)?;
            if self.x_empty(0) {
                if self.x_underflow()? {
                    self.x_set(0, INDEFINITE);
                }
                return Ok(());
            }
            (0, self.x_get(0), v, f)
        } else {
            let (d, s) = (st_index(i.op0_register()), st_index(i.op1_register()));
            if self.x_empty(d) || self.x_empty(s) {
                if self.x_underflow()? {
                    self.x_set(d, INDEFINITE);
                    if pop {
                        self.x_pop();
                    }
                }
                return Ok(());
            }
            (d, self.x_get(d), self.x_get(s), 0)
        };
        let (a, b) = if reverse { (b, a) } else { (a, b) };
        let (v, flags, up) = if mflags & IE != 0 {
            // An SNaN memory operand (already quieted): normal NaN propagation.
            let (r, f) = nan_result(a, b);
            (r, f | IE, false)
        } else {
            arith(op, a, b, self.state.fpu.fcw())
        };
        let flags = flags | (mflags & DE);
        self.x_set_cc(C1, if up { C1 } else { 0 });
        if !self.x_signal(flags)? {
            return Ok(());
        }
        self.x_set(d, v);
        if pop {
            self.x_pop();
        }
        Ok(())
    }

    fn x_compare(&mut self, i: &Instruction) -> Res<()> {
        let m = i.mnemonic();
        let pops = match m {
            M::Fcomp | M::Fucomp | M::Ficomp => 1,
            M::Fcompp | M::Fucompp => 2,
            _ => 0,
        };
        let unordered_ok = matches!(m, M::Fucom | M::Fucomp | M::Fucompp);
        let (b, mflags, other_empty) = if m == M::Ftst {
            (0, 0, false)
        } else if i.op_count() > 0 && i.op0_kind() == OpKind::Memory {
            let (v, f) = self.x_mem_value(i)?;
            (v, f, false)
        } else {
            let j = if i.op_count() >= 2 { st_index(i.op1_register()) } else { 1 };
            (self.x_get(j), 0, self.x_empty(j))
        };
        let all = C0 | C1 | C2 | C3;
        if self.x_empty(0) || other_empty {
            self.x_set_cc(all, 0);
            if self.x_signal(IE | SF)? {
                self.x_set_cc(all, C0 | C2 | C3);
                for _ in 0..pops {
                    self.x_pop();
                }
            }
            return Ok(());
        }
        let (cc, flags) = compare(self.x_get(0), b, unordered_ok);
        let flags = flags | mflags;
        self.x_set_cc(all, 0);
        if !self.x_signal(flags)? {
            return Ok(());
        }
        self.x_set_cc(all, cc);
        for _ in 0..pops {
            self.x_pop();
        }
        Ok(())
    }
}

fn st_index(r: Register) -> usize {
    (r as usize).wrapping_sub(Register::ST0 as usize) & 7
}

fn int_to_ext(v: i64) -> u128 {
    if v == 0 {
        return 0;
    }
    let s = if v < 0 { 1u128 << 79 } else { 0 };
    let m = v.unsigned_abs();
    let lz = m.leading_zeros();
    let e = 16383 + 63 - lz as u128;
    s | e << 64 | (m << lz) as u128
}

/// A float of a narrower format (fraction left-aligned in 63 bits) in the extended format.
fn ext_from(s: u128, e: i32, frac63: u64, emax: i32, bias: i32, quiet_bit: bool, denormal: bool) -> (u128, u16) {
    let sign = s << 79;
    if e == emax {
        if frac63 == 0 {
            return (sign | 0x7fff << 64 | 1 << 63, 0);
        }
        let f = if quiet_bit { 0 } else { IE };
        return (sign | 0x7fff << 64 | (1 << 63 | 1 << 62 | frac63) as u128, f);
    }
    if e == 0 {
        if frac63 == 0 {
            return (sign, 0);
        }
        let lz = frac63.leading_zeros(); // >= 1
        let e2 = 16383 - bias + 1 - lz as i32;
        return (sign | (e2 as u128) << 64 | (frac63 << lz) as u128, if denormal { DE } else { 0 });
    }
    let e2 = e - bias + 16383;
    (sign | (e2 as u128) << 64 | (1 << 63 | frac63) as u128, 0)
}

/// ST(0) in a memory format: (bytes, length, flags, rounded up).
fn store_format(ms: MS, v: u128, fcw: u16) -> ([u8; 10], usize, u16, bool) {
    let mut out = [0u8; 10];
    match ms {
        MS::Float80 => {
            out.copy_from_slice(&v.to_le_bytes()[..10]);
            (out, 10, 0, false)
        }
        MS::Float32 | MS::Float64 => {
            let single = ms == MS::Float32;
            let sign = (v >> 79) as u64;
            let (bits, flags, up) = if unsupported(v) {
                (if single { 0xffc0_0000 } else { 0xfff8_0000_0000_0000 }, IE, false)
            } else if is_nan(v) {
                let f = if is_snan(v) { IE } else { 0 };
                let m = mant_of(v) | 1 << 62;
                if single {
                    ((sign << 31) | 0x7f80_0000 | (m >> 40) & 0x7f_ffff, f, false)
                } else {
                    ((sign << 63) | 0x7ff0_0000_0000_0000 | (m >> 11) & ((1 << 52) - 1), f, false)
                }
            } else {
                let de = 0; // FST has no #D (SDM; the host agrees)
                let x = X::from_bits(v);
                let mut lost = false;
                let mode = round_of(fcw);
                if single {
                    let r: rustc_apfloat::StatusAnd<rustc_apfloat::ieee::Single> = x.convert_r(mode, &mut lost);
                    let t: rustc_apfloat::ieee::Single = x.convert_r(Round::TowardZero, &mut lost).value;
                    (r.value.to_bits() as u64, flags_of(r.status) | de, r.value.to_bits() != t.to_bits())
                } else {
                    let r: rustc_apfloat::StatusAnd<rustc_apfloat::ieee::Double> = x.convert_r(mode, &mut lost);
                    let t: rustc_apfloat::ieee::Double = x.convert_r(Round::TowardZero, &mut lost).value;
                    (r.value.to_bits() as u64, flags_of(r.status) | de, r.value.to_bits() != t.to_bits())
                }
            };
            // apfloat does not report overflow when the rounding mode gives the largest
            // finite number: overflow iff |ST(0)| >= 2^(emax + 1).
            let emax = if single { 127 } else { 1023 };
            let flags = if flags & PE != 0 && !is_nan(v) && exp_of(v) as i32 - 16383 > emax { flags | OE } else { flags };
            let flags = if flags & (OE | UE) != 0 { flags | PE } else { flags };
            let len = if single { 4 } else { 8 };
            out[..8].copy_from_slice(&bits.to_le_bytes());
            (out, len, flags, up)
        }
        _ => (out, 0, IE, false),
    }
}
