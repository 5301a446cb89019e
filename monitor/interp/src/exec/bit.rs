//! Bit instructions: BT BTS BTR BTC (register and memory bit strings), BSF BSR, BSWAP, SETcc.
//!
//! BT/BTS/BTR/BTC: an immediate bit offset, or a register offset with a register operand,
//! is taken modulo the operand size. A register offset with a memory operand addresses a bit
//! string (SDM vol. 2, "Bit(BitBase, BitOffset)"): the offset is signed, the operand-size
//! word at EA + (offset SAR 4) * 2 (16-bit) or EA + (offset SAR 5) * 4 (32-bit) is accessed
//! (the sum wraps at the address size) and bit offset mod 16/32 of it is tested.
//!
//! Flags the SDM leaves undefined follow the host (AMD Zen), checked against it on random
//! cases:
//!
//! * BT*: OF SF AF PF are left unchanged (ZF is architecturally unchanged);
//! * BSF/BSR: CF OF SF AF cleared, PF from the low byte of the index (set for a zero
//!   source). A zero source sets ZF and leaves the destination unchanged (AMD documents
//!   this; Intel does it in practice);
//! * BSWAP with a 16-bit operand (undefined result; the SDM says to use XCHG instead): the
//!   low word becomes 0 and the upper half of the register is kept, as the host does.

use iced_x86::{Instruction, Mnemonic, OpKind, Register};

use super::arith::szp;
use super::operand::reg_size;
use crate::state::flags::*;
use crate::{Bus, Cpu, Res};

/// Whether the memory operand of `i` uses 16-bit addressing (as [`Cpu::ea`] decides).
#[inline]
fn mem_addr16(i: &Instruction) -> bool {
    let base = i.memory_base();
    let index = i.memory_index();
    if base == Register::None && index == Register::None {
        return i.memory_displ_size() == 2;
    }
    (base != Register::None && reg_size(base) == 2) || (index != Register::None && reg_size(index) == 2)
}

impl<B: Bus> Cpu<B> {
    pub(super) fn bt(&mut self, i: &Instruction) -> Res<()> {
        // 0 = BT, 1 = BTS, 2 = BTR, 3 = BTC
        let kind = match i.mnemonic() {
            Mnemonic::Bt => 0,
            Mnemonic::Bts => 1,
            Mnemonic::Btr => 2,
            _ => 3,
        };
        let size = self.op_size(i, 0);
        let bits = 8 * size as u32;
        let off = self.read_op(i, 1)?;
        let (a, place) = if i.op0_kind() == OpKind::Memory && i.op1_kind() == OpKind::Register {
            // A bit string in memory: signed offset.
            let (s, ea) = self.ea(i);
            let disp = if size == 2 {
                ((off as u16 as i16 >> 4) as i32 as u32).wrapping_mul(2)
            } else {
                ((off as i32 >> 5) as u32).wrapping_mul(4)
            };
            let mut addr = ea.wrapping_add(disp);
            if mem_addr16(i) {
                addr &= 0xffff;
            }
            let l = self.data_loc(s, addr, size, kind != 0)?;
            (self.loc_read(l) as u32, Some(super::operand::Place::Mem(l)))
        } else if kind == 0 {
            (self.read_op(i, 0)?, None)
        } else {
            let (a, p) = self.rmw_op(i, 0)?;
            (a, Some(p))
        };
        let bit = 1u32 << (off & (bits - 1));
        let cf = a & bit != 0;
        let r = match kind {
            1 => a | bit,
            2 => a & !bit,
            3 => a ^ bit,
            _ => a,
        };
        if kind != 0 {
            if let Some(p) = place {
                self.put(p, r);
            }
        }
        self.set_flag(CF, cf);
        Ok(())
    }

    pub(super) fn bsf(&mut self, i: &Instruction) -> Res<()> {
        let src = self.read_op(i, 1)?;
        if src == 0 {
            self.set_status(ZF | PF);
        } else {
            let r = src.trailing_zeros();
            self.set_reg(i.op0_register(), r);
            self.set_status(szp(r, 1) & PF);
        }
        Ok(())
    }

    pub(super) fn bsr(&mut self, i: &Instruction) -> Res<()> {
        let src = self.read_op(i, 1)?;
        if src == 0 {
            self.set_status(ZF | PF);
        } else {
            let r = 31 - src.leading_zeros();
            self.set_reg(i.op0_register(), r);
            self.set_status(szp(r, 1) & PF);
        }
        Ok(())
    }

    pub(super) fn bswap(&mut self, i: &Instruction) -> Res<()> {
        let r = i.op0_register();
        if reg_size(r) == 2 {
            self.set_reg(r, 0);
        } else {
            let v = self.reg(r);
            self.set_reg(r, v.swap_bytes());
        }
        Ok(())
    }

    #[inline]
    pub(super) fn setcc(&mut self, i: &Instruction) -> Res<()> {
        let v = self.cond(i.condition_code()) as u32;
        if i.op0_kind() == OpKind::Register {
            self.set_reg(i.op0_register(), v);
            Ok(())
        } else {
            self.write_op(i, 0, v)
        }
    }
}
