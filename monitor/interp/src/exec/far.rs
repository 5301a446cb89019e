//! Far control transfer: far JMP and CALL (direct, indirect, through call gates), far RET, IRET.

use iced_x86::Instruction;

use crate::{Bus, Cpu, Fault, Res};

impl<B: Bus> Cpu<B> {
    pub(super) fn jmp_far(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("jmp_far: not implemented yet"))
    }
    pub(super) fn call_far(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("call_far: not implemented yet"))
    }
    pub(super) fn retf(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("retf: not implemented yet"))
    }
    pub(super) fn iret(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("iret: not implemented yet"))
    }
}
