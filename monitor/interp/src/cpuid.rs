//! The virtual processor model: CPUID answers and the feature switches that change the
//! interpreter's behaviour.
//!
//! The default is a modest P6-class CPU (ARCHITECTURE.md section 8): FPU, TSC, CX8, CMOV,
//! MMX, FXSR, SSE, SSE2, PSE, PGE, MSR; no APIC, no PAE, no SEP (until SYSENTER is
//! virtualized by the monitor), no PSE-36.

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
    /// TSC frequency reported to whoever asks (Hz); informational for the interpreter.
    pub tsc_hz: u64,
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
            // Max leaf 2; "GenuineIntel" in EBX, EDX, ECX.
            Leaf { leaf: 0, subleaf: None, regs: [2, w(0), w(8), w(4)] },
            // Family 6, model 8 (Pentium III "Coppermine"), stepping 3.
            Leaf { leaf: 1, subleaf: None, regs: [0x0000_0683, 0, 0, edx] },
            // Cache descriptors: 32 KiB L1, 256 KiB L2 (leaf 2 format).
            Leaf { leaf: 2, subleaf: None, regs: [0x0302_0101, 0, 0, 0x0c04_0843] },
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
        CpuModel { leaves, pse36: false, sep: false, tsc_hz: 1_000_000_000 }
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

impl Default for CpuModel {
    fn default() -> Self {
        CpuModel::p6()
    }
}
