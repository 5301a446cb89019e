//! System instructions: MOV to/from CRn and DRn, RDMSR WRMSR CPUID RDTSC RDPMC HLT CLI STI INVLPG INVD WBINVD IN OUT SYSENTER SYSEXIT.

use iced_x86::Instruction;

use crate::{Bus, Cpu, Fault, Res};

impl<B: Bus> Cpu<B> {
    pub(super) fn mov_cr(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("mov_cr: not implemented yet"))
    }
    pub(super) fn mov_dr(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("mov_dr: not implemented yet"))
    }
    pub(super) fn rdmsr(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("rdmsr: not implemented yet"))
    }
    pub(super) fn wrmsr(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("wrmsr: not implemented yet"))
    }
    pub(super) fn cpuid(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("cpuid: not implemented yet"))
    }
    pub(super) fn rdtsc(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("rdtsc: not implemented yet"))
    }
    pub(super) fn rdpmc(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("rdpmc: not implemented yet"))
    }
    /// HLT: privileged; stops until an interrupt (the caller waits: [`Exit::Halt`]).
    pub(super) fn hlt(&mut self, _i: &Instruction) -> Res<()> {
        if self.state.cpl != 0 {
            return Err(crate::exc::gp0());
        }
        self.state.halted = true;
        self.pending_exit = Some(crate::Exit::Halt);
        Ok(())
    }
    pub(super) fn cli(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("cli: not implemented yet"))
    }
    pub(super) fn sti(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("sti: not implemented yet"))
    }
    pub(super) fn invlpg(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("invlpg: not implemented yet"))
    }
    pub(super) fn invd(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("invd: not implemented yet"))
    }
    pub(super) fn in_(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("in_: not implemented yet"))
    }
    pub(super) fn out(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("out: not implemented yet"))
    }
    pub(super) fn sysenter(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("sysenter: not implemented yet"))
    }
    pub(super) fn sysexit(&mut self, _i: &Instruction) -> Res<()> {
        Err(Fault::Unsupported("sysexit: not implemented yet"))
    }
}
