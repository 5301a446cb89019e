//! The virtual processor model: CPUID answers and the feature switches that change the
//! interpreter's behaviour.
//!
//! The default is a modest P6-class CPU (ARCHITECTURE.md section 8): FPU, TSC, CX8, CMOV,
//! MMX, FXSR, SSE, SSE2, PSE, PGE, MSR; no APIC, no PAE, no SEP (until SYSENTER is
//! virtualized by the monitor), no PSE-36.
//!
//! It also tells software the TSC's rate, as Intel processors since Skylake do: the maximum
//! basic leaf is 0x16, leaf 0x15 gives the TSC/crystal ratio and the crystal's frequency, leaf
//! 0x16 the base frequency ([`CpuModel::set_tsc_hz`]). Linux (`native_calibrate_tsc`, for a
//! GenuineIntel CPU with `cpuid_level >= 0x15`) takes the TSC rate from leaf 0x15 instead of
//! calibrating it against the PIT, and marks it known (no later refinement). Every leaf from 3
//! to 0x14 but 7 answers zeros: no serial number, no deterministic cache parameters (leaf 2's
//! descriptors stay the source), no MONITOR/MWAIT, thermal, performance-monitoring, topology or
//! XSAVE features, which is what the interpreter has.
//!
//! Leaf 7 advertises one thing, IA32_ARCH_CAPABILITIES, which reads MDS_NO and TAA_NO. Without
//! it Linux counts a family-6 Intel CPU as open to MDS and runs VERW on every return to user
//! mode to clear the CPU's buffers. Under vmm that VERW clears nothing: the guest's kernel and
//! its user code share one host process at one host privilege level, VERW is emulated (a
//! callout per system call under `bt`), and the host CPU's buffers are the host kernel's
//! business, which it clears on its own exits to user mode. TAA needs TSX, which the model has
//! not. Nothing else is claimed (no RDCL_NO: Linux's Meltdown and L1TF reports stay as they
//! were; the 32-bit non-PAE kernel has no page-table isolation to turn off anyway).

/// CPUID leaf 1 EDX feature bits.
pub mod edx1 {
    pub const FPU: u32 = 1 << 0;
    pub const VME: u32 = 1 << 1;
    pub const DE: u32 = 1 << 2;
    pub const PSE: u32 = 1 << 3;
    pub const TSC: u32 = 1 << 4;
    pub const MSR: u32 = 1 << 5;
    pub const PAE: u32 = 1 << 6;
    pub const MCE: u32 = 1 << 7;
    pub const CX8: u32 = 1 << 8;
    pub const APIC: u32 = 1 << 9;
    pub const SEP: u32 = 1 << 11;
    pub const MTRR: u32 = 1 << 12;
    pub const PGE: u32 = 1 << 13;
    pub const MCA: u32 = 1 << 14;
    pub const CMOV: u32 = 1 << 15;
    pub const PAT: u32 = 1 << 16;
    pub const PSE36: u32 = 1 << 17;
    pub const CLFSH: u32 = 1 << 19;
    pub const MMX: u32 = 1 << 23;
    pub const FXSR: u32 = 1 << 24;
    pub const SSE: u32 = 1 << 25;
    pub const SSE2: u32 = 1 << 26;
}

/// CPUID leaf 7 (subleaf 0) EDX feature bits.
pub mod edx7 {
    /// IA32_ARCH_CAPABILITIES (MSR 0x10A) exists.
    pub const ARCH_CAPABILITIES: u32 = 1 << 29;
}

/// IA32_ARCH_CAPABILITIES bits (SDM vol. 4, MSR 10AH).
pub mod arch_cap {
    /// Not susceptible to Microarchitectural Data Sampling.
    pub const MDS_NO: u64 = 1 << 5;
    /// Not susceptible to TSX Asynchronous Abort.
    pub const TAA_NO: u64 = 1 << 8;
}

/// One CPUID answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    pub leaf: u32,
    pub subleaf: Option<u32>,
    pub regs: [u32; 4],
}

/// The virtual CPU model. Change `leaves` to answer CPUID differently; the booleans gate
/// behaviour that depends on the model.
#[derive(Clone, Debug)]
pub struct CpuModel {
    /// EAX, EBX, ECX, EDX per leaf (and subleaf where it matters).
    pub leaves: Vec<Leaf>,
    /// 4 MiB PDEs may use bits 13-16 as physical-address bits 32-35 (otherwise reserved).
    pub pse36: bool,
    /// SYSENTER/SYSEXIT execute (otherwise #UD).
    pub sep: bool,
    /// TSC frequency (Hz) that CPUID leaves 0x15 and 0x16 report; set it with
    /// [`CpuModel::set_tsc_hz`]. The interpreter's TSC itself comes from its bus.
    pub tsc_hz: u64,
    /// What RDMSR 0x10A (IA32_ARCH_CAPABILITIES) reads, where leaf 7 advertises the MSR
    /// ([`edx7::ARCH_CAPABILITIES`]); read-only.
    pub arch_capabilities: u64,
}

impl CpuModel {
    /// The P6-class default.
    pub fn p6() -> CpuModel {
        let vendor = *b"GenuineIntel";
        let w = |i: usize| u32::from_le_bytes(vendor[i..i + 4].try_into().unwrap());
        let edx = edx1::FPU
            | edx1::DE
            | edx1::PSE
            | edx1::TSC
            | edx1::MSR
            | edx1::CX8
            | edx1::PGE
            | edx1::CMOV
            | edx1::MMX
            | edx1::FXSR
            | edx1::SSE
            | edx1::SSE2;
        let mut leaves = vec![
            // Max leaf 0x16 (leaves 3 to 0x14 are zeros); "GenuineIntel" in EBX, EDX, ECX.
            Leaf { leaf: 0, subleaf: None, regs: [0x16, w(0), w(8), w(4)] },
            // Family 6, model 8 (Pentium III "Coppermine"), stepping 3.
            Leaf { leaf: 1, subleaf: None, regs: [0x0000_0683, 0, 0, edx] },
            // Cache descriptors: 32 KiB L1, 256 KiB L2 (leaf 2 format).
            Leaf { leaf: 2, subleaf: None, regs: [0x0302_0101, 0, 0, 0x0c04_0843] },
            // Structured extended features: none but IA32_ARCH_CAPABILITIES (see the module
            // documentation: it tells Linux not to clear CPU buffers with VERW).
            Leaf { leaf: 7, subleaf: Some(0), regs: [0, 0, 0, edx7::ARCH_CAPABILITIES] },
            Leaf { leaf: 0x8000_0000, subleaf: None, regs: [0x8000_0004, 0, 0, 0] },
            Leaf { leaf: 0x8000_0001, subleaf: None, regs: [0, 0, 0, 0] },
        ];
        let brand = *b"vmm virtual P6-class CPU\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
        for (k, chunk) in brand.chunks(16).enumerate() {
            let mut regs = [0u32; 4];
            for (j, r) in regs.iter_mut().enumerate() {
                *r = u32::from_le_bytes(chunk[4 * j..4 * j + 4].try_into().unwrap());
            }
            leaves.push(Leaf { leaf: 0x8000_0002 + k as u32, subleaf: None, regs });
        }
        let mut m = CpuModel {
            leaves,
            pse36: false,
            sep: false,
            tsc_hz: 0,
            arch_capabilities: arch_cap::MDS_NO | arch_cap::TAA_NO,
        };
        m.set_tsc_hz(Self::DEFAULT_TSC_HZ);
        m
    }

    /// The TSC rate [`CpuModel::p6`] reports until told otherwise (a bus without a clock
    /// counts retired instructions: there is no true rate).
    pub const DEFAULT_TSC_HZ: u64 = 1_000_000_000;

    /// Report a TSC counting at `hz` (used to the kHz, Linux's precision): leaf 0x15 =
    /// (EAX denominator, EBX numerator, ECX crystal Hz) with crystal × EBX / EAX = the TSC
    /// rate (SDM vol. 2, CPUID leaf 15H), leaf 0x16 EAX = EBX = base and maximum MHz (rounded),
    /// ECX = the crystal as the bus frequency in MHz.
    ///
    /// The crystal is a nominal 1 MHz and the ratio is reduced, so that Linux's computation
    /// `crystal_khz * EBX / EAX`, done in 32 bits, neither overflows nor rounds: exact to the
    /// kHz up to 4.29 GHz; a faster TSC gets a slower nominal crystal. Below 1 kHz, leaf 0x15
    /// reads zeros (no ratio: software must measure).
    pub fn set_tsc_hz(&mut self, hz: u64) {
        self.tsc_hz = hz;
        let khz = hz / 1000;
        let mut l15 = [0u32; 4];
        for crystal_khz in [1000u64, 100, 10, 1] {
            if khz == 0 {
                break;
            }
            let g = gcd(khz, crystal_khz);
            let (num, den) = (khz / g, crystal_khz / g);
            if crystal_khz * num <= u32::MAX as u64 {
                l15 = [den as u32, num as u32, (crystal_khz * 1000) as u32, 0];
                break;
            }
        }
        let mhz = u32::try_from((hz + 500_000) / 1_000_000).unwrap_or(0xffff).min(0xffff);
        let l16 = [mhz, mhz, l15[2] / 1_000_000, 0];
        for (leaf, regs) in [(0x15, l15), (0x16, l16)] {
            self.leaves.retain(|l| l.leaf != leaf);
            self.leaves.push(Leaf { leaf, subleaf: None, regs });
        }
        if let Some(l0) = self.leaves.iter_mut().find(|l| l.leaf == 0) {
            l0.regs[0] = l0.regs[0].max(0x16);
        }
    }

    /// The CPUID answer for EAX=`leaf`, ECX=`subleaf`. Leaves above the maximum answer like
    /// the highest basic leaf (as Intel CPUs do); unknown leaves in range answer zeros.
    pub fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        let max_basic = self.find(0, 0).map(|r| r[0]).unwrap_or(0);
        let max_ext = self.find(0x8000_0000, 0).map(|r| r[0]).unwrap_or(0);
        let leaf = if leaf >= 0x8000_0000 {
            if leaf > max_ext {
                max_basic
            } else {
                leaf
            }
        } else if leaf > max_basic {
            max_basic
        } else {
            leaf
        };
        self.find(leaf, subleaf).unwrap_or([0; 4])
    }

    fn find(&self, leaf: u32, subleaf: u32) -> Option<[u32; 4]> {
        self.leaves
            .iter()
            .find(|l| l.leaf == leaf && l.subleaf.is_none_or(|s| s == subleaf))
            .map(|l| l.regs)
    }

    /// The leaf-1 EDX feature bits.
    pub fn features_edx(&self) -> u32 {
        self.find(1, 0).map(|r| r[3]).unwrap_or(0)
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl Default for CpuModel {
    fn default() -> Self {
        CpuModel::p6()
    }
}
