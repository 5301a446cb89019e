//! Decimal arithmetic: DAA DAS AAA AAS AAM AAD.

use iced_x86::Instruction;

use crate::{Bus, Cpu, Fault, Res};

impl<B: Bus> Cpu<B> {
    pub(super) fn daa(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("daa: not implemented yet"))
    }
    pub(super) fn das(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("das: not implemented yet"))
    }
    pub(super) fn aaa(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("aaa: not implemented yet"))
    }
    pub(super) fn aas(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("aas: not implemented yet"))
    }
    pub(super) fn aam(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("aam: not implemented yet"))
    }
    pub(super) fn aad(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("aad: not implemented yet"))
    }
}
