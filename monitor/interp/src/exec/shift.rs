//! Shifts and rotates: SHL SAL SHR SAR ROL ROR RCL RCR (every count), SHLD SHRD.

use iced_x86::Instruction;

use crate::{Bus, Cpu, Fault, Res};

impl<B: Bus> Cpu<B> {
    pub(super) fn shift(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("shift: not implemented yet"))
    }
    pub(super) fn shld(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("shld: not implemented yet"))
    }
    pub(super) fn shrd(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("shrd: not implemented yet"))
    }
}
