//! String instructions: MOVS CMPS SCAS LODS STOS INS OUTS, with REP/REPE/REPNE, segment overrides and 16-bit addressing.

use iced_x86::Instruction;

use crate::{Bus, Cpu, Fault, Res};

impl<B: Bus> Cpu<B> {
    pub(super) fn string(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("string: not implemented yet"))
    }
}
