//! Stack: PUSH POP (general registers, memory, immediates; segment registers go to protection), PUSHA POPA, PUSHF POPF, ENTER LEAVE.

use iced_x86::Instruction;

use crate::{Bus, Cpu, Fault, Res};

impl<B: Bus> Cpu<B> {
    pub(super) fn push_op(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("push_op: not implemented yet"))
    }
    pub(super) fn pop_op(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("pop_op: not implemented yet"))
    }
    pub(super) fn pusha(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("pusha: not implemented yet"))
    }
    pub(super) fn popa(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("popa: not implemented yet"))
    }
    pub(super) fn pushf(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("pushf: not implemented yet"))
    }
    pub(super) fn popf(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("popf: not implemented yet"))
    }
    pub(super) fn enter(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("enter: not implemented yet"))
    }
    pub(super) fn leave(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("leave: not implemented yet"))
    }
}
