//! Near control transfer: JMP Jcc CALL RET, LOOP LOOPE LOOPNE JCXZ JECXZ; software interrupts INT n INT3 INTO INT1; BOUND.

use iced_x86::Instruction;

use crate::{Bus, Cpu, Fault, Res};

impl<B: Bus> Cpu<B> {
    pub(super) fn jmp_near(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("jmp_near: not implemented yet"))
    }
    pub(super) fn jcc(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("jcc: not implemented yet"))
    }
    pub(super) fn call_near(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("call_near: not implemented yet"))
    }
    pub(super) fn ret_near(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("ret_near: not implemented yet"))
    }
    pub(super) fn loop_(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("loop_: not implemented yet"))
    }
    pub(super) fn jcxz(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("jcxz: not implemented yet"))
    }
    pub(super) fn int_n(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("int_n: not implemented yet"))
    }
    pub(super) fn int3(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("int3: not implemented yet"))
    }
    pub(super) fn into(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("into: not implemented yet"))
    }
    pub(super) fn int1(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("int1: not implemented yet"))
    }
    pub(super) fn bound(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("bound: not implemented yet"))
    }
}
