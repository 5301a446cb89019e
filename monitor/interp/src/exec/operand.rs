//! Operands: registers by iced-x86 `Register`, effective addresses (16- and 32-bit
//! addressing), immediates, and read/write/read-modify-write of an instruction's operand.

use iced_x86::{Instruction, OpKind, Register};

use crate::mem::Loc;
use crate::state::{flags, SegReg};
use crate::{Bus, Cpu, Res};

const AL: u32 = Register::AL as u32;
const BL: u32 = Register::BL as u32;
const AH: u32 = Register::AH as u32;
const BH: u32 = Register::BH as u32;
const AX: u32 = Register::AX as u32;
const DI: u32 = Register::DI as u32;
const EAX: u32 = Register::EAX as u32;
const EDI: u32 = Register::EDI as u32;
const ES: u32 = Register::ES as u32;
const GS: u32 = Register::GS as u32;

/// Where a read-modify-write operand lives.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Place {
    Reg(Register),
    Mem(Loc),
}

/// The segment register an iced-x86 segment `Register` names.
#[inline]
pub(crate) fn sreg(r: Register) -> SegReg {
    let n = r as u32;
    debug_assert!((ES..=GS).contains(&n));
    SegReg::from_index((n - ES) as usize)
}

/// Size in bytes of a general register.
#[inline]
pub(crate) fn reg_size(r: Register) -> u8 {
    let n = r as u32;
    if (EAX..=EDI).contains(&n) {
        4
    } else if (AX..=DI).contains(&n) {
        2
    } else {
        1
    }
}

/// Mask for an operand size in bytes.
#[inline]
pub(crate) fn mask(size: u8) -> u32 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        _ => 0xffff_ffff,
    }
}

/// The sign bit for an operand size in bytes.
#[inline]
pub(crate) fn sign_bit(size: u8) -> u32 {
    match size {
        1 => 0x80,
        2 => 0x8000,
        _ => 0x8000_0000,
    }
}

/// Sign-extend the low `size` bytes of `v` to 32 bits.
#[inline]
pub(crate) fn sext(v: u32, size: u8) -> u32 {
    match size {
        1 => v as u8 as i8 as i32 as u32,
        2 => v as u16 as i16 as i32 as u32,
        _ => v,
    }
}

impl<B: Bus> Cpu<B> {
    /// Read a general register of any size (AL..BH, AX..DI, EAX..EDI).
    #[inline(always)]
    pub(crate) fn reg(&self, r: Register) -> u32 {
        let n = r as u32;
        if (EAX..=EDI).contains(&n) {
            self.state.gpr[(n - EAX) as usize]
        } else if (AX..=DI).contains(&n) {
            self.state.gpr[(n - AX) as usize] & 0xffff
        } else if (AL..=BL).contains(&n) {
            self.state.gpr[(n - AL) as usize] & 0xff
        } else if (AH..=BH).contains(&n) {
            (self.state.gpr[(n - AH) as usize] >> 8) & 0xff
        } else if (ES..=GS).contains(&n) {
            self.state.seg[(n - ES) as usize].selector as u32
        } else {
            0
        }
    }

    /// Write a general register of any size; 8- and 16-bit writes keep the other bits.
    #[inline(always)]
    pub(crate) fn set_reg(&mut self, r: Register, v: u32) {
        let n = r as u32;
        if (EAX..=EDI).contains(&n) {
            self.state.gpr[(n - EAX) as usize] = v;
        } else if (AX..=DI).contains(&n) {
            let g = &mut self.state.gpr[(n - AX) as usize];
            *g = (*g & 0xffff_0000) | (v & 0xffff);
        } else if (AL..=BL).contains(&n) {
            let g = &mut self.state.gpr[(n - AL) as usize];
            *g = (*g & 0xffff_ff00) | (v & 0xff);
        } else if (AH..=BH).contains(&n) {
            let g = &mut self.state.gpr[(n - AH) as usize];
            *g = (*g & 0xffff_00ff) | ((v & 0xff) << 8);
        } else {
            debug_assert!(false, "set_reg({r:?})");
        }
    }

    /// The effective address (offset) and segment of the instruction's memory operand.
    #[inline(always)]
    pub(crate) fn ea(&self, i: &Instruction) -> (SegReg, u32) {
        let base = i.memory_base();
        let index = i.memory_index();
        let mut a = i.memory_displacement32();
        let mut a16 = false;
        if base != Register::None {
            a = a.wrapping_add(self.reg(base));
            a16 = reg_size(base) == 2;
        }
        if index != Register::None {
            a = a.wrapping_add(self.reg(index).wrapping_mul(i.memory_index_scale()));
            // XLAT's AL index is not 16-bit addressing; the base register says which it is.
            a16 |= reg_size(index) == 2;
        }
        if base == Register::None && index == Register::None {
            a16 = i.memory_displ_size() == 2;
        }
        if a16 {
            a &= 0xffff;
        }
        (sreg(i.memory_segment()), a)
    }

    /// Whether the instruction uses 16-bit addressing for its implicit (E)SI/(E)DI/(E)CX
    /// (string instructions, LOOP, JCXZ): from the operand kinds, or from the code size and
    /// the 67h prefix as iced-x86 encodes it in the instruction's code.
    #[inline]
    pub(crate) fn addr16(&self, i: &Instruction) -> bool {
        for n in 0..i.op_count() {
            match i.op_kind(n) {
                OpKind::MemorySegSI | OpKind::MemorySegDI | OpKind::MemoryESDI => return true,
                OpKind::MemorySegESI | OpKind::MemorySegEDI | OpKind::MemoryESEDI => return false,
                _ => {}
            }
        }
        match i.op_code().address_size() {
            16 => true,
            32 => false,
            _ => !self.state.code32(),
        }
    }

    /// Size in bytes of operand `n`.
    #[inline]
    pub(crate) fn op_size(&self, i: &Instruction, n: u32) -> u8 {
        match i.op_kind(n) {
            OpKind::Register => reg_size(i.op_register(n)),
            OpKind::Memory => i.memory_size().size() as u8,
            OpKind::Immediate8 => 1,
            OpKind::Immediate16 | OpKind::Immediate8to16 => 2,
            _ => 4,
        }
    }

    /// Read operand `n` (register, memory or immediate), zero-extended.
    #[inline(always)]
    pub(crate) fn read_op(&mut self, i: &Instruction, n: u32) -> Res<u32> {
        match i.op_kind(n) {
            OpKind::Register => Ok(self.reg(i.op_register(n))),
            OpKind::Memory => {
                let (s, off) = self.ea(i);
                self.read(s, off, i.memory_size().size() as u8)
            }
            OpKind::Immediate8 => Ok(i.immediate8() as u32),
            OpKind::Immediate16 => Ok(i.immediate16() as u32),
            OpKind::Immediate8to16 => Ok(i.immediate8to16() as u16 as u32),
            _ => Ok(i.immediate(n) as u32),
        }
    }

    /// Write operand `n` (register or memory).
    #[inline(always)]
    pub(crate) fn write_op(&mut self, i: &Instruction, n: u32, v: u32) -> Res<()> {
        match i.op_kind(n) {
            OpKind::Register => {
                self.set_reg(i.op_register(n), v);
                Ok(())
            }
            _ => {
                let (s, off) = self.ea(i);
                self.write(s, off, i.memory_size().size() as u8, v)
            }
        }
    }

    /// Begin a read-modify-write of operand `n`: a memory operand is translated for writing
    /// (so a read-only page faults with W set, as on the CPU) and read.
    #[inline(always)]
    pub(crate) fn rmw_op(&mut self, i: &Instruction, n: u32) -> Res<(u32, Place)> {
        match i.op_kind(n) {
            OpKind::Register => {
                let r = i.op_register(n);
                Ok((self.reg(r), Place::Reg(r)))
            }
            _ => {
                let (s, off) = self.ea(i);
                let l = self.data_loc(s, off, i.memory_size().size() as u8, true)?;
                Ok((self.loc_read(l) as u32, Place::Mem(l)))
            }
        }
    }

    /// Finish a read-modify-write.
    #[inline(always)]
    pub(crate) fn put(&mut self, p: Place, v: u32) {
        match p {
            Place::Reg(r) => self.set_reg(r, v),
            Place::Mem(l) => self.loc_write(l, v as u64),
        }
    }

    /// Replace the arithmetic status flags (CF PF AF ZF SF OF) with `f`.
    #[inline]
    pub(crate) fn set_status(&mut self, f: u32) {
        self.state.eflags = (self.state.eflags & !flags::STATUS) | (f & flags::STATUS);
    }

    #[inline]
    pub(crate) fn flag(&self, f: u32) -> bool {
        self.state.eflags & f != 0
    }

    #[inline]
    pub(crate) fn set_flag(&mut self, f: u32, on: bool) {
        if on {
            self.state.eflags |= f;
        } else {
            self.state.eflags &= !f;
        }
    }

    /// The condition of a Jcc/SETcc/CMOVcc.
    #[inline]
    pub(crate) fn cond(&self, cc: iced_x86::ConditionCode) -> bool {
        use iced_x86::ConditionCode as C;
        let f = self.state.eflags;
        let cf = f & flags::CF != 0;
        let zf = f & flags::ZF != 0;
        let sf = f & flags::SF != 0;
        let of = f & flags::OF != 0;
        let pf = f & flags::PF != 0;
        match cc {
            C::o => of,
            C::no => !of,
            C::b => cf,
            C::ae => !cf,
            C::e => zf,
            C::ne => !zf,
            C::be => cf || zf,
            C::a => !cf && !zf,
            C::s => sf,
            C::ns => !sf,
            C::p => pf,
            C::np => !pf,
            C::l => sf != of,
            C::ge => sf == of,
            C::le => zf || sf != of,
            C::g => !zf && sf == of,
            C::None => true,
        }
    }

    // ---- the stack at the current privilege level ----

    /// Push `size` (2 or 4) bytes on SS:(E)SP.
    #[inline]
    pub(crate) fn push(&mut self, size: u8, v: u32) -> Res<()> {
        let big = self.state.stack32();
        let sp = self.state.gpr[4];
        let new = if big { sp.wrapping_sub(size as u32) } else { sp.wrapping_sub(size as u32) & 0xffff };
        self.write(SegReg::Ss, new, size, v)?;
        self.set_sp(new, big);
        Ok(())
    }

    /// Pop `size` (2 or 4) bytes from SS:(E)SP.
    #[inline]
    pub(crate) fn pop(&mut self, size: u8) -> Res<u32> {
        let big = self.state.stack32();
        let sp = if big { self.state.gpr[4] } else { self.state.gpr[4] & 0xffff };
        let v = self.read(SegReg::Ss, sp, size)?;
        self.set_sp(sp.wrapping_add(size as u32), big);
        Ok(v)
    }

    /// Read `size` bytes at SS:(E)SP + `delta` without moving the stack pointer (far
    /// returns and IRET read their whole frame before committing).
    #[inline]
    pub(crate) fn stack_peek(&mut self, delta: u32, size: u8) -> Res<u32> {
        let big = self.state.stack32();
        let sp = if big {
            self.state.gpr[4].wrapping_add(delta)
        } else {
            self.state.gpr[4].wrapping_add(delta) & 0xffff
        };
        self.read(SegReg::Ss, sp, size)
    }

    /// Operand size of the instruction in bytes (2 or 4), as its code says (iced-x86 codes
    /// carry the operand size: `Push_r16` / `Push_r32`), else from the code-segment size.
    #[inline]
    pub(crate) fn osize(&self, i: &Instruction) -> u8 {
        match i.op_code().operand_size() {
            16 => 2,
            32 => 4,
            _ => {
                if self.state.code32() {
                    4
                } else {
                    2
                }
            }
        }
    }
}
