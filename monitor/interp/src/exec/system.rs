//! System instructions: MOV to/from CRn and DRn, RDMSR WRMSR CPUID RDTSC RDPMC HLT CLI STI INVLPG INVD WBINVD IN OUT SYSENTER SYSEXIT.

use iced_x86::Instruction;

use crate::seg::sys_type;
use crate::state::flags;
use crate::{exc, Bus, Cpu, Fault, Res};

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

    /// The I/O permission check of IN, OUT, INS and OUTS (SDM vol. 1, 19.5): allowed when
    /// CPL <= IOPL in protected mode (always in real mode); otherwise every bit of the
    /// TSS I/O permission bitmap for `port..port+size` must be clear. #GP(0) if not.
    pub(crate) fn check_io(&mut self, port: u16, size: u8) -> Res<()> {
        if !self.state.protected_mode() {
            return Ok(());
        }
        if self.state.eflags & flags::VM == 0 && self.state.cpl <= self.state.iopl() {
            return Ok(());
        }
        let tr = self.state.tr;
        let ty = tr.system_type();
        if !tr.present() || (ty != sys_type::TSS32_AVAIL && ty != sys_type::TSS32_BUSY) || tr.limit < 0x67 {
            return Err(exc::gp0());
        }
        let base = self.sys_read_u16(tr.base.wrapping_add(0x66))? as u32;
        let byte = base + port as u32 / 8;
        if byte + 1 > tr.limit {
            return Err(exc::gp0());
        }
        let bits = self.sys_read_u16(tr.base.wrapping_add(byte))? as u32;
        let m = ((1u32 << size) - 1) << (port & 7);
        if bits & m != 0 {
            return Err(exc::gp0());
        }
        Ok(())
    }
}
