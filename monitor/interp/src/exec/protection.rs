//! Protection: MOV/PUSH/POP of segment registers, LDS LES LFS LGS LSS, LAR LSL VERR VERW ARPL, LGDT LIDT LLDT LTR SGDT SIDT SLDT STR SMSW LMSW CLTS.

use iced_x86::Instruction;

use crate::{Bus, Cpu, Fault, Res};

impl<B: Bus> Cpu<B> {
    pub(super) fn mov_to_sreg(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("mov_to_sreg: not implemented yet"))
    }
    pub(super) fn mov_from_sreg(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("mov_from_sreg: not implemented yet"))
    }
    pub(super) fn load_far_pointer(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("load_far_pointer: not implemented yet"))
    }
    pub(super) fn lar(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("lar: not implemented yet"))
    }
    pub(super) fn lsl(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("lsl: not implemented yet"))
    }
    pub(super) fn verr_verw(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("verr_verw: not implemented yet"))
    }
    pub(super) fn arpl(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("arpl: not implemented yet"))
    }
    pub(super) fn lgdt_lidt(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("lgdt_lidt: not implemented yet"))
    }
    pub(super) fn sgdt_sidt(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("sgdt_sidt: not implemented yet"))
    }
    pub(super) fn lldt(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("lldt: not implemented yet"))
    }
    pub(super) fn ltr(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("ltr: not implemented yet"))
    }
    pub(super) fn sldt(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("sldt: not implemented yet"))
    }
    pub(super) fn str_(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("str_: not implemented yet"))
    }
    pub(super) fn smsw(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("smsw: not implemented yet"))
    }
    pub(super) fn lmsw(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("lmsw: not implemented yet"))
    }
    pub(super) fn clts(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("clts: not implemented yet"))
    }
}
