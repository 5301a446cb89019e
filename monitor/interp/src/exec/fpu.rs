//! x87/MMX/SSE state management (FXSAVE FXRSTOR FNINIT FNSTSW FNSTCW FLDCW FNSTENV FLDENV FNCLEX FWAIT EMMS LDMXCSR STMXCSR FNSAVE FRSTOR) and the CR0.EM/TS availability checks.

use iced_x86::Instruction;

use crate::{Bus, Cpu, Fault, Res};

impl<B: Bus> Cpu<B> {
    pub(super) fn fpu_state(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("fpu_state: not implemented yet"))
    }
    pub(crate) fn fpu_available(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("fpu_available: not implemented yet"))
    }
}
