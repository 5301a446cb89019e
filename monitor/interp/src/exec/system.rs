//! System instructions: MOV to/from CRn and DRn, RDMSR WRMSR CPUID RDTSC RDPMC HLT CLI STI
//! INVLPG INVD WBINVD IN OUT SYSENTER SYSEXIT (SDM vol. 2; vol. 3 chapters 2, 4 and 5).
//!
//! Choices where the SDM leaves room, and what the model implements:
//!
//! * **CR0**: writes of reserved bits (28:19, 17, 15:6) are ignored and those bits read as 0,
//!   as on Intel and AMD processors in 32-bit mode (the SDM only mandates #GP for bits 63:32,
//!   which do not exist here). ET (bit 4) is hardwired to 1, as on every P6-class processor.
//!   PG without PE and NW without CD raise #GP(0). A change of PG, WP or PE flushes the TLB.
//! * **CR3** keeps the value written (the ignored bits read back as written); a write
//!   flushes every non-global translation.
//! * **CR4**: PSE, PGE, TSD, DE, PCE, OSFXSR, OSXMMEXCPT and MCE can be set (the first six
//!   only when the model advertises the feature behind them: PSE, PGE, TSC, DE, FXSR, SSE).
//!   VME, PVI, PAE, UMIP and every reserved bit raise #GP(0): the interpreter has neither
//!   virtual-8086 extensions nor PAE paging. A change of PGE or PSE flushes the whole TLB.
//! * CR1, CR5-CR7 (and CR8, LOCK MOV CR0) are rejected by the decoder: #UD.
//! * **DR0-DR7** are storage only (no breakpoints are armed). DR4/DR5 alias DR6/DR7 when
//!   CR4.DE is clear and raise #UD when it is set. DR6 reads with its reserved bits as on a
//!   P6 (31:16 and 11:4 set, 12 clear); DR7 bit 10 reads as 1 and bits 11, 12, 14, 15 as 0.
//!   With DR7.GD set, any MOV DR raises #DB (a fault) with DR6.BD set and DR7.GD cleared.
//!   Check order: CPL (#GP), then DR4/DR5 with CR4.DE (#UD), then GD (#DB), as Bochs does.
//! * **MSRs**: IA32_TSC (0x10; a write sets the offset, and as on P6-family processors only
//!   the low 32 bits are written, the upper half becoming 0; on a bus whose TSC is shared
//!   with directly executed code, `Bus::tsc_writable` false, the write is ignored),
//!   IA32_PLATFORM_ID (0x17, reads 0, read-only), IA32_ARCH_CAPABILITIES (0x10A, read-only,
//!   where CPUID leaf 7 advertises it: `CpuModel::arch_capabilities`), IA32_BIOS_SIGN_ID (0x8B, reads 0, writes
//!   ignored: the microcode-update protocol writes it), IA32_SYSENTER_CS/ESP/EIP
//!   (0x174-0x176, only when the model has SEP), IA32_MISC_ENABLE (0x1A0, read back as
//!   written) and IA32_PAT (0x277, only when the model advertises PAT; each entry must be
//!   0, 1, 4, 5, 6 or 7 else #GP(0)). Everything else, notably IA32_APIC_BASE (no APIC) and
//!   the MTRRs (no MTRR), raises #GP(0) as an unimplemented MSR does on hardware.
//! * **RDTSC** reads `Bus::tsc()` (or the retired-instruction count when the bus has no
//!   clock) plus the guest's offset. The model has no RDTSCP (#UD) and no IA32_TSC_ADJUST.
//!   RDPMC returns 0 for counters 0 and 1.
//! * **CLI/STI** follow IOPL only (no VME/PVI). STI that sets IF blocks interrupts until
//!   the next instruction has completed.
//! * **INVLPG** flushes the page and, since 4 MiB pages are cached as 4 KiB pieces, every
//!   piece of the 4 MiB region around it (over-invalidation is always architecturally
//!   allowed).
//! * **SYSENTER/SYSEXIT** raise #UD unless the model has SEP and then follow the SDM
//!   pseudocode, loading the flat CS/SS caches it defines without reading the GDT.

use iced_x86::{Instruction, OpKind, Register};

use super::operand::mask;
use crate::bus::IoAction;
use crate::cpuid::{edx1, edx7};
use crate::seg::sys_type;
use crate::state::{cr, flags, reg, vector, SegReg, Segment};
use crate::{exc, Bus, Cpu, Exception, Exit, Fault, Res};

/// CR0 bits that exist; the others are ignored on writes and read as 0.
const CR0_WRITABLE: u32 = cr::CR0_VALID;

/// MSR numbers.
pub mod msr {
    pub const TSC: u32 = 0x10;
    pub const PLATFORM_ID: u32 = 0x17;
    pub const BIOS_SIGN_ID: u32 = 0x8b;
    pub const SYSENTER_CS: u32 = 0x174;
    pub const SYSENTER_ESP: u32 = 0x175;
    pub const SYSENTER_EIP: u32 = 0x176;
    pub const ARCH_CAPABILITIES: u32 = 0x10a;
    pub const MISC_ENABLE: u32 = 0x1a0;
    pub const PAT: u32 = 0x277;
}

const DR6_FIXED1: u32 = 0xffff_0ff0;
const DR6_WRITABLE: u32 = 0x0000_e00f;
const DR7_FIXED1: u32 = 0x0000_0400;
const DR7_WRITABLE: u32 = 0xffff_23ff;
const DR7_GD: u32 = 1 << 13;
const DR6_BD: u32 = 1 << 13;

impl<B: Bus> Cpu<B> {
    /// CPL 0 is required (real mode is CPL 0; virtual-8086 mode is CPL 3).
    #[inline]
    pub(super) fn require_cpl0(&self) -> Res<()> {
        if self.state.protected_mode() && (self.state.cpl != 0 || self.state.v86()) {
            return Err(exc::gp0());
        }
        Ok(())
    }

    /// The CR4 bits this model lets software set.
    fn cr4_allowed(&self) -> u32 {
        let edx = self.model.features_edx();
        let mut ok = cr::CR4_PCE | cr::CR4_MCE;
        for (feature, bit) in [
            (edx1::PSE, cr::CR4_PSE),
            (edx1::PGE, cr::CR4_PGE),
            (edx1::TSC, cr::CR4_TSD),
            (edx1::DE, cr::CR4_DE),
            (edx1::FXSR, cr::CR4_OSFXSR),
            (edx1::SSE, cr::CR4_OSXMMEXCPT),
        ] {
            if edx & feature != 0 {
                ok |= bit;
            }
        }
        ok
    }

    /// MOV to or from CR0, CR2, CR3, CR4. The other control registers do not decode (#UD).
    pub(super) fn mov_cr(&mut self, i: &Instruction) -> Res<()> {
        let to_cr = i.op_register(0).is_cr();
        let (crr, gpr) = if to_cr { (i.op_register(0), i.op_register(1)) } else { (i.op_register(1), i.op_register(0)) };
        let n = crr as u32 - Register::CR0 as u32;
        if !matches!(n, 0 | 2 | 3 | 4) {
            return Err(exc::ud());
        }
        self.require_cpl0()?;
        if !to_cr {
            let v = match n {
                0 => self.state.cr0,
                2 => self.state.cr2,
                3 => self.state.cr3,
                _ => self.state.cr4,
            };
            self.set_reg(gpr, v);
            return Ok(());
        }
        let v = self.reg(gpr);
        match n {
            0 => {
                let new = (v & CR0_WRITABLE) | cr::CR0_ET;
                if new & cr::CR0_PG != 0 && new & cr::CR0_PE == 0 {
                    return Err(exc::gp0());
                }
                if new & cr::CR0_NW != 0 && new & cr::CR0_CD == 0 {
                    return Err(exc::gp0());
                }
                let old = self.state.cr0;
                self.state.cr0 = new;
                if (old ^ new) & (cr::CR0_PG | cr::CR0_WP | cr::CR0_PE) != 0 {
                    self.tlb.flush_all();
                }
            }
            2 => self.state.cr2 = v,
            3 => {
                self.state.cr3 = v;
                self.tlb.flush_non_global();
            }
            _ => {
                if v & !self.cr4_allowed() != 0 {
                    return Err(exc::gp0());
                }
                let old = self.state.cr4;
                self.state.cr4 = v;
                if (old ^ v) & (cr::CR4_PGE | cr::CR4_PSE) != 0 {
                    self.tlb.flush_all();
                }
            }
        }
        Ok(())
    }

    /// MOV to or from DR0-DR7.
    pub(super) fn mov_dr(&mut self, i: &Instruction) -> Res<()> {
        let to_dr = i.op_register(0).is_dr();
        let (drr, gpr) = if to_dr { (i.op_register(0), i.op_register(1)) } else { (i.op_register(1), i.op_register(0)) };
        let mut n = (drr as u32 - Register::DR0 as u32) as usize;
        if n > 7 {
            return Err(exc::ud());
        }
        self.require_cpl0()?;
        if n == 4 || n == 5 {
            if self.state.cr4 & cr::CR4_DE != 0 {
                return Err(exc::ud());
            }
            n += 2;
        }
        if self.state.dr[7] & DR7_GD != 0 {
            self.state.dr[6] |= DR6_BD;
            self.state.dr[7] &= !DR7_GD;
            return Err(Fault::Exc(Exception { vector: vector::DB, error: None }));
        }
        if to_dr {
            let v = self.reg(gpr);
            self.state.dr[n] = match n {
                6 => (v & DR6_WRITABLE) | DR6_FIXED1,
                7 => (v & DR7_WRITABLE) | DR7_FIXED1,
                _ => v,
            };
        } else {
            let v = self.state.dr[n];
            self.set_reg(gpr, v);
        }
        Ok(())
    }

    /// The time stamp counter as the guest sees it.
    fn tsc_now(&mut self) -> u64 {
        let raw = self.bus.tsc().unwrap_or(self.icount);
        raw.wrapping_add(self.state.msr.tsc_offset)
    }

    fn raw_tsc(&mut self) -> u64 {
        self.bus.tsc().unwrap_or(self.icount)
    }

    /// The value of an MSR, or `None` where the model has no such MSR.
    fn read_msr(&mut self, index: u32) -> Option<u64> {
        let m = self.state.msr;
        Some(match index {
            msr::TSC => self.tsc_now(),
            msr::PLATFORM_ID | msr::BIOS_SIGN_ID => 0,
            msr::SYSENTER_CS if self.model.sep => m.sysenter_cs as u64,
            msr::SYSENTER_ESP if self.model.sep => m.sysenter_esp as u64,
            msr::SYSENTER_EIP if self.model.sep => m.sysenter_eip as u64,
            msr::MISC_ENABLE => m.misc_enable,
            msr::ARCH_CAPABILITIES if self.model.cpuid(7, 0)[3] & edx7::ARCH_CAPABILITIES != 0 => {
                self.model.arch_capabilities
            }
            msr::PAT if self.model.features_edx() & edx1::PAT != 0 => m.pat,
            _ => return None,
        })
    }

    /// Write an MSR; `false` where the write raises #GP(0).
    fn write_msr(&mut self, index: u32, v: u64) -> bool {
        match index {
            msr::TSC if !self.bus.tsc_writable() => {}
            msr::TSC => {
                // P6 family: only the low 32 bits are written; the upper half becomes 0.
                let raw = self.raw_tsc();
                self.state.msr.tsc_offset = (v & 0xffff_ffff).wrapping_sub(raw);
            }
            msr::BIOS_SIGN_ID => {}
            msr::SYSENTER_CS if self.model.sep => self.state.msr.sysenter_cs = v as u32,
            msr::SYSENTER_ESP if self.model.sep => self.state.msr.sysenter_esp = v as u32,
            msr::SYSENTER_EIP if self.model.sep => self.state.msr.sysenter_eip = v as u32,
            msr::MISC_ENABLE => self.state.msr.misc_enable = v,
            msr::PAT if self.model.features_edx() & edx1::PAT != 0 => {
                // Each of the eight entries is a memory type: 0 UC, 1 WC, 4 WT, 5 WP, 6 WB,
                // 7 UC-; 2, 3 and bits 7:3 of an entry are reserved.
                if (0..8).any(|k| !matches!((v >> (8 * k)) as u8, 0 | 1 | 4 | 5 | 6 | 7)) {
                    return false;
                }
                self.state.msr.pat = v;
            }
            _ => return false,
        }
        true
    }

    pub(super) fn rdmsr(&mut self, _i: &Instruction) -> Res<()> {
        if self.model.features_edx() & edx1::MSR == 0 {
            return Err(exc::ud());
        }
        self.require_cpl0()?;
        let v = self.read_msr(self.state.gpr[reg::ECX]).ok_or_else(exc::gp0)?;
        self.state.gpr[reg::EAX] = v as u32;
        self.state.gpr[reg::EDX] = (v >> 32) as u32;
        Ok(())
    }

    pub(super) fn wrmsr(&mut self, _i: &Instruction) -> Res<()> {
        if self.model.features_edx() & edx1::MSR == 0 {
            return Err(exc::ud());
        }
        self.require_cpl0()?;
        let v = (self.state.gpr[reg::EDX] as u64) << 32 | self.state.gpr[reg::EAX] as u64;
        if !self.write_msr(self.state.gpr[reg::ECX], v) {
            return Err(exc::gp0());
        }
        Ok(())
    }

    /// CPUID: the model's answer for EAX (leaf) and ECX (subleaf), at any CPL.
    pub(super) fn cpuid(&mut self, _i: &Instruction) -> Res<()> {
        let r = self.model.cpuid(self.state.gpr[reg::EAX], self.state.gpr[reg::ECX]);
        self.state.gpr[reg::EAX] = r[0];
        self.state.gpr[reg::EBX] = r[1];
        self.state.gpr[reg::ECX] = r[2];
        self.state.gpr[reg::EDX] = r[3];
        Ok(())
    }

    pub(super) fn rdtsc(&mut self, _i: &Instruction) -> Res<()> {
        if self.model.features_edx() & edx1::TSC == 0 {
            return Err(exc::ud());
        }
        if self.state.cr4 & cr::CR4_TSD != 0 && self.state.protected_mode() && (self.state.cpl != 0 || self.state.v86())
        {
            return Err(exc::gp0());
        }
        let t = self.tsc_now();
        self.state.gpr[reg::EAX] = t as u32;
        self.state.gpr[reg::EDX] = (t >> 32) as u32;
        Ok(())
    }

    /// RDPMC: allowed at CPL 0 or with CR4.PCE; counters 0 and 1 exist and read 0.
    pub(super) fn rdpmc(&mut self, _i: &Instruction) -> Res<()> {
        if self.state.cr4 & cr::CR4_PCE == 0 {
            self.require_cpl0()?;
        }
        if self.state.gpr[reg::ECX] > 1 {
            return Err(exc::gp0());
        }
        self.state.gpr[reg::EAX] = 0;
        self.state.gpr[reg::EDX] = 0;
        Ok(())
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

    /// CLI and STI may change IF when CPL <= IOPL (protected mode), IOPL = 3 (virtual-8086
    /// mode without VME), always in real mode.
    fn check_iopl_if(&self) -> Res<()> {
        if !self.state.protected_mode() {
            return Ok(());
        }
        let ok = if self.state.v86() { self.state.iopl() == 3 } else { self.state.cpl <= self.state.iopl() };
        if ok {
            Ok(())
        } else {
            Err(exc::gp0())
        }
    }

    pub(super) fn cli(&mut self, _i: &Instruction) -> Res<()> {
        self.check_iopl_if()?;
        self.state.eflags &= !flags::IF;
        Ok(())
    }

    pub(super) fn sti(&mut self, _i: &Instruction) -> Res<()> {
        self.check_iopl_if()?;
        if self.state.eflags & flags::IF == 0 {
            self.state.int_shadow = true;
        }
        self.state.eflags |= flags::IF;
        Ok(())
    }

    /// INVLPG m: the linear address of the operand (segment base + offset; no limit or
    /// type check, no access).
    pub(super) fn invlpg(&mut self, i: &Instruction) -> Res<()> {
        if i.op0_kind() != OpKind::Memory {
            return Err(exc::ud());
        }
        self.require_cpl0()?;
        let (s, off) = self.ea(i);
        let lin = self.state.seg(s).base.wrapping_add(off);
        self.tlb.flush_page(lin);
        self.tlb.flush_large(lin);
        Ok(())
    }

    /// INVD and WBINVD: privileged; there are no caches to act on.
    pub(super) fn invd(&mut self, _i: &Instruction) -> Res<()> {
        self.require_cpl0()
    }

    /// The port of IN or OUT: an immediate byte or DX.
    fn io_port(&self, i: &Instruction, n: u32) -> u16 {
        match i.op_kind(n) {
            OpKind::Immediate8 => i.immediate8() as u16,
            _ => self.state.gpr[reg::EDX] as u16,
        }
    }

    /// IN AL/AX/EAX, imm8/DX.
    pub(super) fn in_(&mut self, i: &Instruction) -> Res<()> {
        let dst = i.op_register(0);
        let size = super::operand::reg_size(dst);
        let port = self.io_port(i, 1);
        self.check_io(port, size)?;
        let v = self.bus.io_in(port, size) & mask(size);
        self.set_reg(dst, v);
        Ok(())
    }

    /// OUT imm8/DX, AL/AX/EAX. A bus answer of [`IoAction::Exit`] ends the run after it.
    pub(super) fn out(&mut self, i: &Instruction) -> Res<()> {
        let src = i.op_register(1);
        let size = super::operand::reg_size(src);
        let port = self.io_port(i, 0);
        self.check_io(port, size)?;
        let value = self.reg(src) & mask(size);
        if self.bus.io_out(port, size, value) == IoAction::Exit {
            self.pending_exit = Some(Exit::PortIo { port, size, value });
        }
        Ok(())
    }

    /// SYSENTER: to CPL 0 at SYSENTER_CS:SYSENTER_EIP with SS = SYSENTER_CS + 8 and
    /// ESP = SYSENTER_ESP, flat segments, IF, VM and RF cleared.
    pub(super) fn sysenter(&mut self, _i: &Instruction) -> Res<()> {
        if !self.model.sep {
            return Err(exc::ud());
        }
        let cs_msr = self.state.msr.sysenter_cs as u16;
        if !self.state.protected_mode() || cs_msr & 0xfffc == 0 {
            return Err(exc::gp0());
        }
        self.state.eflags &= !(flags::VM | flags::IF | flags::RF);
        let cs_sel = cs_msr & 0xfffc;
        self.state.seg[SegReg::Cs as usize] = Segment::flat(cs_sel, true, 0);
        self.state.seg[SegReg::Ss as usize] = Segment::flat(cs_sel.wrapping_add(8), false, 0);
        self.state.cpl = 0;
        self.state.gpr[reg::ESP] = self.state.msr.sysenter_esp;
        self.next_eip = self.state.msr.sysenter_eip;
        Ok(())
    }

    /// SYSEXIT: from CPL 0 to CPL 3 at (SYSENTER_CS + 16) | 3 : EDX with
    /// SS = (SYSENTER_CS + 24) | 3 and ESP = ECX, flat segments.
    pub(super) fn sysexit(&mut self, _i: &Instruction) -> Res<()> {
        if !self.model.sep {
            return Err(exc::ud());
        }
        let cs_msr = self.state.msr.sysenter_cs as u16;
        if !self.state.protected_mode() || cs_msr & 0xfffc == 0 || self.state.cpl != 0 || self.state.v86() {
            return Err(exc::gp0());
        }
        let cs_sel = cs_msr.wrapping_add(16) | 3;
        let ss_sel = cs_msr.wrapping_add(24) | 3;
        self.state.seg[SegReg::Cs as usize] = Segment::flat(cs_sel, true, 3);
        self.state.seg[SegReg::Ss as usize] = Segment::flat(ss_sel, false, 3);
        self.state.cpl = 3;
        self.state.gpr[reg::ESP] = self.state.gpr[reg::ECX];
        self.next_eip = self.state.gpr[reg::EDX];
        Ok(())
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
