//! The architectural state of a 32-bit x86 CPU: what a snapshot of the processor holds.
//!
//! Everything here is plain data. The engines of the monitor (`interp`, `direct`, `bt`) all
//! read and write the guest's state through this one type.

/// EFLAGS bits.
pub mod flags {
    pub const CF: u32 = 1 << 0;
    pub const FIXED1: u32 = 1 << 1;
    pub const PF: u32 = 1 << 2;
    pub const AF: u32 = 1 << 4;
    pub const ZF: u32 = 1 << 6;
    pub const SF: u32 = 1 << 7;
    pub const TF: u32 = 1 << 8;
    pub const IF: u32 = 1 << 9;
    pub const DF: u32 = 1 << 10;
    pub const OF: u32 = 1 << 11;
    pub const IOPL: u32 = 3 << 12;
    pub const IOPL_SHIFT: u32 = 12;
    pub const NT: u32 = 1 << 14;
    pub const RF: u32 = 1 << 16;
    pub const VM: u32 = 1 << 17;
    pub const AC: u32 = 1 << 18;
    pub const VIF: u32 = 1 << 19;
    pub const VIP: u32 = 1 << 20;
    pub const ID: u32 = 1 << 21;
    /// The six arithmetic status flags.
    pub const STATUS: u32 = CF | PF | AF | ZF | SF | OF;
    /// Bits that exist on a P6-class processor (everything else reads as 0, bit 1 as 1).
    pub const IMPLEMENTED: u32 = STATUS | TF | IF | DF | IOPL | NT | RF | VM | AC | VIF | VIP | ID;
}

/// Control-register bits the interpreter implements.
pub mod cr {
    pub const CR0_PE: u32 = 1 << 0;
    pub const CR0_MP: u32 = 1 << 1;
    pub const CR0_EM: u32 = 1 << 2;
    pub const CR0_TS: u32 = 1 << 3;
    pub const CR0_ET: u32 = 1 << 4;
    pub const CR0_NE: u32 = 1 << 5;
    pub const CR0_WP: u32 = 1 << 16;
    pub const CR0_AM: u32 = 1 << 18;
    pub const CR0_NW: u32 = 1 << 29;
    pub const CR0_CD: u32 = 1 << 30;
    pub const CR0_PG: u32 = 1 << 31;
    pub const CR0_VALID: u32 =
        CR0_PE | CR0_MP | CR0_EM | CR0_TS | CR0_ET | CR0_NE | CR0_WP | CR0_AM | CR0_NW | CR0_CD | CR0_PG;

    pub const CR4_VME: u32 = 1 << 0;
    pub const CR4_PVI: u32 = 1 << 1;
    pub const CR4_TSD: u32 = 1 << 2;
    pub const CR4_DE: u32 = 1 << 3;
    pub const CR4_PSE: u32 = 1 << 4;
    pub const CR4_PAE: u32 = 1 << 5;
    pub const CR4_MCE: u32 = 1 << 6;
    pub const CR4_PGE: u32 = 1 << 7;
    pub const CR4_PCE: u32 = 1 << 8;
    pub const CR4_OSFXSR: u32 = 1 << 9;
    pub const CR4_OSXMMEXCPT: u32 = 1 << 10;
    pub const CR4_UMIP: u32 = 1 << 11;
}

/// Exception vectors.
pub mod vector {
    pub const DE: u8 = 0;
    pub const DB: u8 = 1;
    pub const NMI: u8 = 2;
    pub const BP: u8 = 3;
    pub const OF: u8 = 4;
    pub const BR: u8 = 5;
    pub const UD: u8 = 6;
    pub const NM: u8 = 7;
    pub const DF: u8 = 8;
    pub const TS: u8 = 10;
    pub const NP: u8 = 11;
    pub const SS: u8 = 12;
    pub const GP: u8 = 13;
    pub const PF: u8 = 14;
    pub const MF: u8 = 16;
    pub const AC: u8 = 17;
    pub const MC: u8 = 18;
    pub const XM: u8 = 19;
}

/// The segment registers in their x86 encoding order (the `sreg` field of ModRM).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SegReg {
    Es = 0,
    Cs = 1,
    Ss = 2,
    Ds = 3,
    Fs = 4,
    Gs = 5,
}

impl SegReg {
    pub const ALL: [SegReg; 6] = [SegReg::Es, SegReg::Cs, SegReg::Ss, SegReg::Ds, SegReg::Fs, SegReg::Gs];

    pub fn from_index(i: usize) -> SegReg {
        Self::ALL[i]
    }

    pub fn name(self) -> &'static str {
        ["es", "cs", "ss", "ds", "fs", "gs"][self as usize]
    }
}

/// Segment attribute bits, laid out like VMX "access rights": bits 0-7 are the descriptor's
/// access byte (type, S, DPL, P), bits 12-15 are AVL, L, D/B and G.
pub mod attr {
    pub const ACCESSED: u16 = 1 << 0;
    /// Data: writable. Code: readable.
    pub const RW: u16 = 1 << 1;
    /// Data: expand-down. Code: conforming.
    pub const DC: u16 = 1 << 2;
    pub const CODE: u16 = 1 << 3;
    /// S: 1 for code/data segments, 0 for system descriptors.
    pub const S: u16 = 1 << 4;
    pub const DPL_SHIFT: u16 = 5;
    pub const DPL: u16 = 3 << 5;
    pub const P: u16 = 1 << 7;
    pub const AVL: u16 = 1 << 12;
    pub const L: u16 = 1 << 13;
    pub const DB: u16 = 1 << 14;
    pub const G: u16 = 1 << 15;
}

/// A segment register: the visible selector and the hidden descriptor cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    pub selector: u16,
    pub base: u32,
    /// The effective limit in bytes (already scaled by the granularity bit).
    pub limit: u32,
    /// See [`attr`]. Zero marks an unusable (null-loaded) segment in protected mode.
    pub attr: u16,
}

impl Segment {
    /// A real-mode segment with the given selector: base = selector * 16, 64 KiB limit,
    /// a present, writable, accessed data segment (or readable code).
    pub fn real_mode(selector: u16, code: bool) -> Segment {
        let ty = if code { attr::CODE | attr::RW | attr::ACCESSED } else { attr::RW | attr::ACCESSED };
        Segment { selector, base: (selector as u32) << 4, limit: 0xffff, attr: ty | attr::S | attr::P }
    }

    /// A flat 4 GiB protected-mode segment at the given DPL.
    pub fn flat(selector: u16, code: bool, dpl: u8) -> Segment {
        let ty = if code { attr::CODE | attr::RW | attr::ACCESSED } else { attr::RW | attr::ACCESSED };
        Segment {
            selector,
            base: 0,
            limit: 0xffff_ffff,
            attr: ty | attr::S | attr::P | attr::DB | attr::G | ((dpl as u16 & 3) << attr::DPL_SHIFT),
        }
    }

    #[inline]
    pub fn present(&self) -> bool {
        self.attr & attr::P != 0
    }
    #[inline]
    pub fn dpl(&self) -> u8 {
        ((self.attr & attr::DPL) >> attr::DPL_SHIFT) as u8
    }
    #[inline]
    pub fn is_system(&self) -> bool {
        self.attr & attr::S == 0
    }
    #[inline]
    pub fn is_code(&self) -> bool {
        self.attr & (attr::S | attr::CODE) == (attr::S | attr::CODE)
    }
    #[inline]
    pub fn is_data(&self) -> bool {
        self.attr & (attr::S | attr::CODE) == attr::S
    }
    /// D/B bit: 32-bit code segment, 32-bit stack, or 4 GiB upper bound of an expand-down segment.
    #[inline]
    pub fn big(&self) -> bool {
        self.attr & attr::DB != 0
    }
    #[inline]
    pub fn conforming(&self) -> bool {
        self.is_code() && self.attr & attr::DC != 0
    }
    /// A data segment register holding this segment is loaded with the null selector by a
    /// return (RET far, IRET) to privilege `cpl`: a data or non-conforming code segment of a
    /// DPL below it.
    #[inline]
    pub fn nulled_by_return_to(&self, cpl: u8) -> bool {
        (self.is_data() || (self.is_code() && !self.conforming())) && self.dpl() < cpl
    }
    #[inline]
    pub fn expand_down(&self) -> bool {
        self.is_data() && self.attr & attr::DC != 0
    }
    #[inline]
    pub fn readable(&self) -> bool {
        self.is_data() || (self.is_code() && self.attr & attr::RW != 0)
    }
    #[inline]
    pub fn writable(&self) -> bool {
        self.is_data() && self.attr & attr::RW != 0
    }
    /// The system-descriptor type (bits 0-3) for system segments.
    #[inline]
    pub fn system_type(&self) -> u8 {
        (self.attr & 0xf) as u8
    }
}

/// GDTR or IDTR.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableReg {
    pub base: u32,
    pub limit: u16,
}

/// The x87/SSE state, kept as the 512-byte FXSAVE image (Intel SDM vol. 1, 10.5.1), 16-byte
/// aligned as FXSAVE/FXRSTOR require of their operand (the monitor loads and saves it in place).
#[derive(Clone, PartialEq, Eq)]
#[repr(C, align(16))]
pub struct FpuState(pub [u8; 512]);

impl FpuState {
    /// The state after FNINIT (FCW 0x037f, empty tags) with MXCSR at its reset value 0x1f80.
    pub fn reset() -> FpuState {
        let mut s = FpuState([0; 512]);
        s.set_fcw(0x037f);
        s.set_mxcsr(0x1f80);
        s
    }
    fn u16_at(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.0[off], self.0[off + 1]])
    }
    fn set_u16_at(&mut self, off: usize, v: u16) {
        self.0[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }
    pub fn fcw(&self) -> u16 {
        self.u16_at(0)
    }
    pub fn set_fcw(&mut self, v: u16) {
        self.set_u16_at(0, v)
    }
    pub fn fsw(&self) -> u16 {
        self.u16_at(2)
    }
    pub fn set_fsw(&mut self, v: u16) {
        self.set_u16_at(2, v)
    }
    /// The abridged tag byte of the FXSAVE image (one bit per register, 1 = valid).
    pub fn ftw_abridged(&self) -> u8 {
        self.0[4]
    }
    pub fn set_ftw_abridged(&mut self, v: u8) {
        self.0[4] = v
    }
    pub fn mxcsr(&self) -> u32 {
        u32::from_le_bytes(self.0[24..28].try_into().unwrap())
    }
    pub fn set_mxcsr(&mut self, v: u32) {
        self.0[24..28].copy_from_slice(&v.to_le_bytes());
    }
}

impl Default for FpuState {
    fn default() -> Self {
        Self::reset()
    }
}

impl std::fmt::Debug for FpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FpuState {{ fcw: {:#x}, fsw: {:#x}, mxcsr: {:#x} }}", self.fcw(), self.fsw(), self.mxcsr())
    }
}

/// General-purpose register indices in encoding order.
pub mod reg {
    pub const EAX: usize = 0;
    pub const ECX: usize = 1;
    pub const EDX: usize = 2;
    pub const EBX: usize = 3;
    pub const ESP: usize = 4;
    pub const EBP: usize = 5;
    pub const ESI: usize = 6;
    pub const EDI: usize = 7;
    pub const NAMES: [&str; 8] = ["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"];
}

/// The model-specific registers the interpreter implements (a 32-bit Linux touches these).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Msrs {
    /// IA32_TSC is host/bus time plus this offset.
    pub tsc_offset: u64,
    pub sysenter_cs: u32,
    pub sysenter_esp: u32,
    pub sysenter_eip: u32,
    /// IA32_MISC_ENABLE (read back as written).
    pub misc_enable: u64,
    /// IA32_PAT.
    pub pat: u64,
}

/// The complete architectural state of the virtual CPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuState {
    /// EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI.
    pub gpr: [u32; 8],
    pub eip: u32,
    pub eflags: u32,
    /// ES, CS, SS, DS, FS, GS (index with [`SegReg`]).
    pub seg: [Segment; 6],
    pub ldtr: Segment,
    pub tr: Segment,
    pub gdtr: TableReg,
    pub idtr: TableReg,
    pub cr0: u32,
    pub cr2: u32,
    pub cr3: u32,
    pub cr4: u32,
    /// DR0-DR7 (DR4/DR5 alias DR6/DR7 as with CR4.DE clear). Kept as storage: no breakpoints.
    pub dr: [u32; 8],
    /// The current privilege level. In protected mode it equals CS.RPL except in the middle of
    /// a transfer; in real mode it is 0.
    pub cpl: u8,
    pub msr: Msrs,
    pub fpu: FpuState,
    /// Set by HLT; cleared when an interrupt is taken.
    pub halted: bool,
    /// Interrupts are inhibited for one instruction (after STI that set IF, after MOV SS / POP SS).
    pub int_shadow: bool,
}

impl CpuState {
    /// The state after RESET/INIT, adjusted for a flat start: real mode, CS:IP = F000:FFF0 with
    /// the architectural CS base 0xFFFF0000.
    pub fn reset() -> CpuState {
        let mut cs = Segment::real_mode(0xf000, true);
        cs.base = 0xffff_0000;
        let ds = Segment::real_mode(0, false);
        CpuState {
            gpr: [0; 8],
            eip: 0xfff0,
            eflags: flags::FIXED1,
            seg: [ds, cs, ds, ds, ds, ds],
            ldtr: Segment { selector: 0, base: 0, limit: 0xffff, attr: attr::P | 2 },
            tr: Segment { selector: 0, base: 0, limit: 0xffff, attr: attr::P | 11 },
            gdtr: TableReg { base: 0, limit: 0xffff },
            idtr: TableReg { base: 0, limit: 0x3ff },
            cr0: cr::CR0_ET | cr::CR0_CD | cr::CR0_NW,
            cr2: 0,
            cr3: 0,
            cr4: 0,
            dr: [0, 0, 0, 0, 0, 0, 0xffff0ff0, 0x400],
            cpl: 0,
            msr: Msrs::default(),
            fpu: FpuState::reset(),
            halted: false,
            int_shadow: false,
        }
    }

    /// A state ready to run flat 32-bit protected-mode code at the given CPL with paging off.
    /// Selectors follow a conventional GDT: 0x08 kernel code, 0x10 kernel data,
    /// 0x1b user code, 0x23 user data. The descriptor caches are loaded directly: the GDT
    /// itself is not consulted until a segment register is reloaded.
    pub fn flat_protected(cpl: u8) -> CpuState {
        let mut s = CpuState::reset();
        let (cs_sel, ds_sel) = if cpl == 0 { (0x08, 0x10) } else { (0x18 | cpl as u16, 0x20 | cpl as u16) };
        let cs = Segment::flat(cs_sel, true, cpl);
        let ds = Segment::flat(ds_sel, false, cpl);
        s.seg = [ds, cs, ds, ds, ds, ds];
        s.cr0 = cr::CR0_PE | cr::CR0_ET | cr::CR0_NE;
        s.cpl = cpl;
        s.eip = 0;
        s.ldtr = Segment::default();
        s.tr = Segment::default();
        s.gdtr = TableReg::default();
        s.idtr = TableReg::default();
        s
    }

    #[inline]
    pub fn protected_mode(&self) -> bool {
        self.cr0 & cr::CR0_PE != 0
    }
    #[inline]
    pub fn paging(&self) -> bool {
        self.cr0 & cr::CR0_PG != 0
    }
    #[inline]
    pub fn v86(&self) -> bool {
        self.eflags & flags::VM != 0
    }
    #[inline]
    pub fn iopl(&self) -> u8 {
        ((self.eflags & flags::IOPL) >> flags::IOPL_SHIFT) as u8
    }
    #[inline]
    pub fn seg(&self, s: SegReg) -> &Segment {
        &self.seg[s as usize]
    }
    #[inline]
    pub fn seg_mut(&mut self, s: SegReg) -> &mut Segment {
        &mut self.seg[s as usize]
    }
    /// 32-bit code segment (CS.D) in protected mode.
    #[inline]
    pub fn code32(&self) -> bool {
        self.protected_mode() && !self.v86() && self.seg[SegReg::Cs as usize].big()
    }
    /// 32-bit stack (SS.B).
    #[inline]
    pub fn stack32(&self) -> bool {
        self.protected_mode() && !self.v86() && self.seg[SegReg::Ss as usize].big()
    }
    #[inline]
    pub fn interrupts_enabled(&self) -> bool {
        self.eflags & flags::IF != 0
    }
}

impl Default for CpuState {
    fn default() -> Self {
        Self::reset()
    }
}
