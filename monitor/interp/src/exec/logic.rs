//! Logical instructions: AND OR XOR NOT TEST.
//!
//! AND, OR, XOR and TEST clear CF and OF and set SF ZF PF from the result; AF is undefined
//! and cleared, as the host CPU does (checked in strict mode). NOT changes no flags.

use iced_x86::Instruction;

use super::arith::szp;
use crate::{Bus, Cpu, Res};

#[derive(Clone, Copy)]
enum Op {
    And,
    Or,
    Xor,
}

impl<B: Bus> Cpu<B> {
    #[inline]
    fn logic2(&mut self, i: &Instruction, op: Op, store: bool) -> Res<()> {
        let size = self.op_size(i, 0);
        let b = self.read_op(i, 1)?;
        let (a, place) = if store {
            let (a, p) = self.rmw_op(i, 0)?;
            (a, Some(p))
        } else {
            (self.read_op(i, 0)?, None)
        };
        let r = match op {
            Op::And => a & b,
            Op::Or => a | b,
            Op::Xor => a ^ b,
        };
        if let Some(p) = place {
            self.put(p, r);
        }
        self.set_status(szp(r, size));
        Ok(())
    }

    pub(super) fn and(&mut self, i: &Instruction) -> Res<()> {
        self.logic2(i, Op::And, true)
    }
    pub(super) fn or(&mut self, i: &Instruction) -> Res<()> {
        self.logic2(i, Op::Or, true)
    }
    pub(super) fn xor(&mut self, i: &Instruction) -> Res<()> {
        self.logic2(i, Op::Xor, true)
    }
    pub(super) fn test(&mut self, i: &Instruction) -> Res<()> {
        self.logic2(i, Op::And, false)
    }
    pub(super) fn not(&mut self, i: &Instruction) -> Res<()> {
        let (a, p) = self.rmw_op(i, 0)?;
        self.put(p, !a);
        Ok(())
    }
}
