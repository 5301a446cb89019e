//! Bit instructions: BT BTS BTR BTC (register and memory bit strings), BSF BSR, BSWAP, SETcc.

use iced_x86::Instruction;

use crate::{Bus, Cpu, Fault, Res};

impl<B: Bus> Cpu<B> {
    pub(super) fn bt(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("bt: not implemented yet"))
    }
    pub(super) fn bsf(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("bsf: not implemented yet"))
    }
    pub(super) fn bsr(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("bsr: not implemented yet"))
    }
    pub(super) fn bswap(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("bswap: not implemented yet"))
    }
    pub(super) fn setcc(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("setcc: not implemented yet"))
    }
}
