//! The conventions between translated code and the runtime (docs/translator.md, "ABI").
//!
//! Translated guest kernel code runs in 32-bit compatibility mode at host CPL 3 with:
//!
//! * **CS** = the monitor's flat 32-bit code segment (it must reach the translation cache in the
//!   monitor area); the guest's CS selector is virtual (on the vCPU page).
//! * **DS, ES, FS, SS** = the shadows of the guest's segments (truncated below the monitor area).
//! * **GS** = the *reserved* segment register ([`RESERVED_SEGMENT`]): an LDT data segment whose
//!   base is the vCPU region and whose limit is [`Abi::vcpu_size`]` - 1`. Every access the
//!   translator makes to its own data goes through `gs:`; guest instructions that use GS are
//!   rewritten (classify.rs, "reserved segment register").
//! * **EFLAGS** = the guest's arithmetic flags (CF PF AF ZF SF OF) and DF; the host's IF=1,
//!   IOPL=0, and TF=NT=AC=0. The guest's IF is the byte [`Abi::vif`], its other system flags
//!   are in [`Abi::vflags`].
//! * the guest's general registers, unchanged.
//!
//! Why GS: a 32-bit Linux kernel keeps its per-CPU base in FS (`__KERNEL_PERCPU`) and, since
//! 5.x, reads its stack canary through FS too; GS is only loaded and saved on a context switch
//! (lazy user GS) and, in old kernels built with the stack protector, read as `%gs:0x14`. Kernel
//! accesses through GS are therefore rare and cheap to rewrite, while FS is on hot paths.
//! The host itself uses FS for its thread pointer in 64-bit mode, and nothing of the host
//! relies on the GS selector while guest code runs.

use iced_x86::Register;

/// The segment register the translator reserves for its own data (the vCPU region).
pub const RESERVED_SEGMENT: Register = Register::GS;

/// The virtual EFLAGS bits kept on the vCPU page instead of in the host EFLAGS: IF (in
/// [`Abi::vif`]), TF, IOPL, NT, RF, VM, AC, VIF, VIP, ID (in [`Abi::vflags`]).
pub const VIRT_MASK: u32 = 0x100
    | 0x200
    | 0x3000
    | 0x4000
    | 0x1_0000
    | 0x2_0000
    | 0x4_0000
    | 0x8_0000
    | 0x10_0000
    | 0x20_0000;

/// The EFLAGS bits translated code keeps in the host EFLAGS (the guest's values).
pub const HOST_FLAGS: u32 =
    0x0000_0001 | 0x0000_0004 | 0x0000_0010 | 0x0000_0040 | 0x0000_0080 | 0x0000_0400 | 0x0000_0800;

/// IF in EFLAGS.
pub const EFLAGS_IF: u32 = 0x200;

/// What the runtime is asked to do by a callout. Whatever the operation, the guest's
/// architectural state at a callout is exactly the state *before* the guest instruction at
/// [`Abi::callout_eip`] (registers, EFLAGS with the virtual bits merged, memory).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum CalloutOp {
    /// Execute the one guest instruction at `eip` (the interpreter), a heavy or privileged one.
    /// `arg` is the [`crate::classify::CalloutKind`] of the instruction. If afterwards the
    /// guest EIP equals `callout_next` (and the mode is unchanged) the runtime may return through
    /// the gate (a far return): the fragment continues with the next instruction. Otherwise it
    /// resumes elsewhere.
    Emulate = 1,
    /// A direct branch left the fragment for guest `eip`, not yet chained: find or translate
    /// the fragment for `eip`, chain exit number `arg` of the calling fragment (the gate's return
    /// address identifies it) and continue there. Never returns into the stub.
    Exit = 2,
    /// An indirect branch (RET, JMP/CALL r/m) missed the lookup table for guest `eip`: find or
    /// translate, fill the table entry, continue there. Never returns.
    IndirectMiss = 3,
    /// Fragment entry or an instruction that set the virtual IF found the `irq` byte set with
    /// IF=1: deliver the interrupt at `eip` (or, if none is pending any more, return).
    PendingIrq = 4,
    /// The bytes at `eip` are not a valid instruction (for iced-x86): let the interpreter raise
    /// #UD (or execute it, should it disagree). Same contract as `Emulate`.
    Invalid = 5,
    /// The instruction at `eip` could not be read when it was translated (unmapped page, or the
    /// instruction crosses into one): let the interpreter fetch it (it raises #PF, or the page
    /// has been mapped since and the runtime retranslates). Same contract as `Emulate`.
    FetchFault = 6,
}

impl CalloutOp {
    /// All operations.
    pub const ALL: [CalloutOp; 6] = [
        CalloutOp::Emulate,
        CalloutOp::Exit,
        CalloutOp::IndirectMiss,
        CalloutOp::PendingIrq,
        CalloutOp::Invalid,
        CalloutOp::FetchFault,
    ];

    /// The operation with this code.
    pub fn from_u32(v: u32) -> Option<CalloutOp> {
        CalloutOp::ALL.into_iter().find(|op| *op as u32 == v)
    }
}

/// The layout of the vCPU region (what GS points at) and the other conventions translated code
/// relies on. All offsets are relative to the GS base. The runtime allocates the region in the
/// monitor area, builds an LDT data segment over it (base = region, limit = `vcpu_size - 1`,
/// DPL 3) and loads its selector into GS before it enters translated code.
///
/// `Default` gives the layout documented in docs/translator.md; a runtime may move fields as long
/// as [`Abi::check`] accepts the result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Abi {
    /// u8: the guest's virtual EFLAGS.IF, 0 or 1. CLI/STI write it.
    pub vif: u32,
    /// u8 at `vif + 1` (checked): nonzero when the runtime has an interrupt for the guest (it
    /// sets it from the PIC state, also asynchronously from a signal handler).
    pub irq: u32,
    /// u32: the guest's virtual system flags other than IF ([`VIRT_MASK`] without IF).
    pub vflags: u32,
    /// u32: the guest's ESP saved by a callout sequence (and restored from here after it).
    pub callout_esp: u32,
    /// u16 at `callout_esp + 4` (checked): the guest's SS selector, idem.
    pub callout_ss: u32,
    /// m16:32: the callout stack (offset, selector) loaded with LSS before the far call, so
    /// that a callout never writes to the guest's stack.
    pub callout_stack: u32,
    /// m16:32: the far pointer (offset, selector) of the 64-bit callout gate.
    pub gate: u32,
    /// u32: the [`CalloutOp`].
    pub callout_op: u32,
    /// u32: the guest EIP the guest state stands at.
    pub callout_eip: u32,
    /// u32: for `Emulate`-like operations, the guest EIP of the instruction that follows in the
    /// fragment (where a normal return continues).
    pub callout_next: u32,
    /// u32: an operation-specific argument.
    pub callout_arg: u32,
    /// u32 × [`SCRATCH_SLOTS`]: scratch slots of the inline sequences (never live across a
    /// guest instruction boundary).
    pub scratch: u32,
    /// u32 × 6: the guest's segment selectors, zero-extended, in iced-x86 order
    /// ES CS SS DS FS GS.
    pub vseg: u32,
    /// u32: LDTR selector (zero-extended).
    pub ldtr: u32,
    /// u32: TR selector (zero-extended).
    pub tr: u32,
    /// 6 bytes: GDTR as SGDT stores it (u16 limit, u32 base).
    pub gdtr: u32,
    /// 6 bytes: IDTR, idem.
    pub idtr: u32,
    /// u32 × 5: CR0, CR1 (unused), CR2, CR3, CR4.
    pub cr: u32,
    /// u32 × 8: DR0-DR7.
    pub dr: u32,
    /// u64: added to the host TSC by RDTSC.
    pub tsc_offset: u32,
    /// u32: number of basic CPUID leaves (0..n) answered inline from `cpuid_table`; other leaves
    /// are an `Emulate` callout. Leaves whose answer depends on ECX must not be in the table.
    pub cpuid_count: u32,
    /// u32 (a u16 selector, zero-extended): the host selector of the guest CS's shadow, for
    /// inline sequences that read a `cs:` operand (VERR/VERW) through ES.
    pub cs_shadow: u32,
    /// 16 bytes × `cpuid_max`: EAX EBX ECX EDX of leaf 0, 1, ...
    pub cpuid_table: u32,
    /// Capacity of `cpuid_table` in leaves.
    pub cpuid_max: u32,
    /// u32: the guest GS segment's base (user code, `Mode::user_gs`): an inline GS access
    /// goes to this + offset through DS. The runtime keeps it current (GS loads are callouts).
    pub ugs_base: u32,
    /// [`UGS_BOUND_SIZES`]`.len()` × 8 bytes, constant: per access size n, the BOUND pair
    /// `{ i32::MIN, i32::MAX - (n - 1) }` against which an inline GS access checks its
    /// offset plus 2^31: an access that runs past offset 0xFFFFFFFF raises #BR there (the
    /// guest's #GP, raised by the interpreter re-executing the instruction). Written by the runtime
    /// ([`Abi::ugs_bounds_bytes`]).
    pub ugs_bounds: u32,
    /// The block of system calls without a callout ([`fsys`] gives the fields' offsets in it):
    /// the CPL translated code runs at, the runtime's validated description of one INT gate
    /// (from user code) and of one return target (IRETD to user code), and the inline
    /// sequences' own slots. See docs/translator.md, "System calls without a callout".
    pub fsys: u32,
    /// The indirect-branch lookup table: `1 << ibl_bits` entries of 8 bytes
    /// `{ -guest_eip: u32, tc_address: u32 }`, indexed by the low `ibl_bits` bits of the guest
    /// target EIP. An empty entry is `{ 0, address of the miss routine }`... see
    /// [`Abi::ibl_empty_entry`]: a "hit" on it lands in a routine that makes the miss callout.
    pub ibl_table: u32,
    /// The lookup table of user-mode (CPL 3) fragments, laid out as `ibl_table`: guest kernel
    /// and user code look up separately, so that neither reaches the other's translations
    /// and switching between them (every system call) resets neither table.
    pub ibl_user_table: u32,
    /// 8 or 16: the index is `movzx ecx, al` or `movzx ecx, ax` (flag-free).
    pub ibl_bits: u32,
    /// The selector table of inline data-segment loads (MOV/POP to DS, ES, FS at CPL 0):
    /// [`SEG_TABLE_ENTRIES`] u16 entries indexed by the guest selector (`movzx ecx, selector`,
    /// flag-free, no bounds check), each the host selector that loads that guest selector's
    /// shadow in kernel mode, or 0: unknown, make the `Emulate` callout. Written by the
    /// runtime only (read-only for guest code, like the lookup tables); see
    /// docs/translator.md, "Inline segment loads", for when an entry may be nonzero.
    pub seg_table: u32,
    /// u32 × `check_max`: the live *check slots*. A pending-interrupt check site is
    /// `jmp dword gs:[check_slots + 4 * n]`: the slot holds the site's continuation while no
    /// interrupt is pending (the runtime keeps it so) and the site's check stub while one is
    /// ("armed": the stub does the full check). Read-only for translated code.
    pub check_slots: u32,
    /// u32 × `check_max`: each slot's continuation (what the slot holds disarmed); a backward
    /// exit's check stub also continues through it (its exit stub, or the chained fragment).
    pub check_conts: u32,
    /// u32 × `check_max`: each slot's check stub (what the slot holds armed).
    pub check_stubs: u32,
    /// Number of check slots; a translation cache that needs more is flushed.
    pub check_max: u32,
    /// The null-port maps of the inline `IN`/`OUT ..., dx` (mangle/io.rs): one per size of
    /// [`NULL_PORT_SIZES`](crate::mangle::io::NULL_PORT_SIZES), [`NULL_PORT_MAP_SIZE`] bytes
    /// each, byte p = 1 if an access of that size at port p touches only null ports. Written by
    /// the runtime only ([`crate::mangle::io::NullPorts::map`]).
    pub null_port_maps: u32,
    /// Size of the whole vCPU region in bytes (the GS limit + 1).
    pub vcpu_size: u32,
}

/// Offsets in [`Abi::fsys`], the block of system calls without a callout (`mangle/syscall.rs`
/// emits the sequences, the runtime's `bt/fastsys.rs` fills and reads the block). u32 fields
/// unless said otherwise; selectors are zero-extended.
pub mod fsys {
    /// The CPL translated code is at: written by the runtime before each entry and by the
    /// inline INT (0) and IRETD (3), so that the runtime sees a change of privilege made
    /// without it.
    pub const VCPL: u32 = 0x00;
    /// The vector whose `INT n` from user code is inline, or `u32::MAX`: none.
    pub const INT_VEC: u32 = 0x04;
    /// m16:32 (8 bytes): the gate's stack, TSS.ESP0 and the host selector of SS0's
    /// kernel-mode shadow (`lss esp` loads it).
    pub const INT_STACK: u32 = 0x08;
    /// The handler's guest EIP (the gate's offset).
    pub const INT_EIP: u32 = 0x10;
    /// The guest CS selector after the INT (the gate's selector with RPL 0).
    pub const INT_CS: u32 = 0x14;
    /// The guest SS0 selector.
    pub const INT_SS: u32 = 0x18;
    /// The host selector of the new CS's kernel-mode shadow (for `Abi::cs_shadow`).
    pub const INT_CS_HOST: u32 = 0x1c;
    /// u8: ANDed into `Abi::vif`: 0 for an interrupt gate, 1 for a trap gate.
    pub const INT_VIF: u32 = 0x20;
    /// The kernel-mode host selectors of the guest's DS, ES, FS (while the guest is at CPL 3:
    /// the runtime writes them before entering user code, the inline IRETD as it leaves).
    pub const K_DS: u32 = 0x24;
    pub const K_ES: u32 = 0x28;
    pub const K_FS: u32 = 0x2c;
    /// 1 while IRETD to user code may be inline (0 otherwise) (the runtime's conditions hold).
    pub const RET_OK: u32 = 0x30;
    /// The guest user CS selector IRETD may return to.
    pub const RET_CS: u32 = 0x34;
    /// The guest user data selector: the SS IRETD may return to, and the one value besides
    /// a null selector that DS, ES and FS may hold for an inline IRETD or INT.
    pub const USEL: u32 = 0x38;
    /// The host selector of `USEL`'s user-mode shadow.
    pub const USEL_HOST: u32 = 0x3c;
    /// m16:32 (8 bytes): the user stack after an inline IRETD (the offset is written by the
    /// sequence; the selector is `USEL_HOST`, written by the runtime).
    pub const RET_STACK: u32 = 0x40;
    /// The IRETD frame as read (EIP, CS, EFLAGS, ESP, SS).
    pub const R_EIP: u32 = 0x48;
    pub const R_CS: u32 = 0x4c;
    pub const R_FL: u32 = 0x50;
    pub const R_ESP: u32 = 0x54;
    pub const R_SS: u32 = 0x58;
    /// The host selectors IRETD loads into DS, ES, FS.
    pub const U_DS: u32 = 0x5c;
    pub const U_ES: u32 = 0x60;
    pub const U_FS: u32 = 0x64;
    /// The arithmetic flags saved by LAHF/SETO.
    pub const SAVED_FLAGS: u32 = 0x68;
    /// The user ESP the inline INT saved.
    pub const SAVED_ESP: u32 = 0x6c;
    /// Counters: inline INTs and IRETDs done (wrapping).
    pub const N_INT: u32 = 0x70;
    pub const N_IRET: u32 = 0x74;
    /// Size of the block.
    pub const SIZE: u32 = 0x78;
}

/// Number of u32 scratch slots.
pub const SCRATCH_SLOTS: u32 = 8;

/// The access sizes with a BOUND pair at [`Abi::ugs_bounds`] (in this order).
pub const UGS_BOUND_SIZES: [u32; 6] = [2, 4, 8, 10, 16, 32];

/// Entries of [`Abi::seg_table`]: one per 16-bit selector value.
pub const SEG_TABLE_ENTRIES: u32 = 1 << 16;

/// Bytes of one null-port map ([`Abi::null_port_maps`]): one per port.
pub const NULL_PORT_MAP_SIZE: u32 = 1 << 16;
/// Bytes of the null-port maps, all sizes.
const NULL_PORT_MAPS: u32 = NULL_PORT_MAP_SIZE * crate::mangle::io::NULL_PORT_SIZES.len() as u32;

impl Default for Abi {
    fn default() -> Self {
        let ibl_bits = 16;
        let check_max = 0x1_0000;
        let seg_table = 0x1000 + 2 * (8 << ibl_bits);
        let checks = seg_table + 2 * SEG_TABLE_ENTRIES;
        Abi {
            vif: 0x000,
            irq: 0x001,
            vflags: 0x004,
            callout_esp: 0x008,
            callout_ss: 0x00c,
            callout_stack: 0x010,
            gate: 0x018,
            callout_op: 0x020,
            callout_eip: 0x024,
            callout_next: 0x028,
            callout_arg: 0x02c,
            scratch: 0x030,
            vseg: 0x050,
            ldtr: 0x068,
            tr: 0x06c,
            gdtr: 0x070,
            idtr: 0x078,
            cr: 0x080,
            dr: 0x0a0,
            tsc_offset: 0x0c0,
            cpuid_count: 0x0c8,
            cs_shadow: 0x0cc,
            cpuid_table: 0x100,
            cpuid_max: 16,
            ugs_base: 0x800,
            ugs_bounds: 0x840,
            fsys: 0x900,
            ibl_table: 0x1000,
            ibl_user_table: 0x1000 + (8 << ibl_bits),
            ibl_bits,
            seg_table,
            check_slots: checks,
            check_conts: checks + 4 * check_max,
            check_stubs: checks + 8 * check_max,
            check_max,
            null_port_maps: checks + 12 * check_max,
            vcpu_size: checks + 12 * check_max + NULL_PORT_MAPS,
        }
    }
}

impl Abi {
    /// The lookup table for fragments translated at guest CPL `cpl`.
    pub fn ibl_table_for(&self, cpl: u8) -> u32 {
        if cpl == 3 {
            self.ibl_user_table
        } else {
            self.ibl_table
        }
    }

    /// Offset of check slot `n` (see [`Abi::check_slots`]).
    pub fn check_slot(&self, n: u32) -> u32 {
        self.check_slots + 4 * n
    }

    /// Offset of the continuation of check slot `n`.
    pub fn check_cont(&self, n: u32) -> u32 {
        self.check_conts + 4 * n
    }

    /// The layout with a lookup table of `1 << ibl_bits` entries (8 or 16), the check slot
    /// arrays after the two tables.
    pub fn with_ibl_bits(ibl_bits: u32) -> Abi {
        let d = Abi::default();
        let seg_table = 0x1000 + 2 * (8 << ibl_bits);
        let checks = seg_table + 2 * SEG_TABLE_ENTRIES;
        Abi {
            ibl_user_table: 0x1000 + (8 << ibl_bits),
            ibl_bits,
            seg_table,
            check_slots: checks,
            check_conts: checks + 4 * d.check_max,
            check_stubs: checks + 8 * d.check_max,
            null_port_maps: checks + 12 * d.check_max,
            vcpu_size: checks + 12 * d.check_max + NULL_PORT_MAPS,
            ..d
        }
    }

    /// Offset of scratch slot `i`.
    pub fn slot(&self, i: u32) -> u32 {
        assert!(i < SCRATCH_SLOTS);
        self.scratch + 4 * i
    }

    /// Offset of the virtual selector of segment register `sreg` (ES..GS).
    pub fn vseg_of(&self, sreg: Register) -> u32 {
        let i = match sreg {
            Register::ES => 0,
            Register::CS => 1,
            Register::SS => 2,
            Register::DS => 3,
            Register::FS => 4,
            Register::GS => 5,
            _ => panic!("not a segment register: {sreg:?}"),
        };
        self.vseg + 4 * i
    }

    /// Offset of the BOUND pair for an inline GS access of `size` bytes, if there is one.
    pub fn ugs_bound_of(&self, size: u32) -> Option<u32> {
        UGS_BOUND_SIZES.iter().position(|&n| n == size).map(|i| self.ugs_bounds + 8 * i as u32)
    }

    /// The constant contents of [`Abi::ugs_bounds`].
    pub fn ugs_bounds_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        for n in UGS_BOUND_SIZES {
            v.extend_from_slice(&0x8000_0000u32.to_le_bytes());
            v.extend_from_slice(&(0x7fff_ffffu32 - (n - 1)).to_le_bytes());
        }
        v
    }

    /// Offset of virtual CRn (n in 0..=4).
    pub fn cr_of(&self, n: u32) -> u32 {
        assert!(n <= 4);
        self.cr + 4 * n
    }

    /// Offset of virtual DRn (n in 0..=7).
    pub fn dr_of(&self, n: u32) -> u32 {
        assert!(n <= 7);
        self.dr + 4 * n
    }

    /// Offset of the selector-table entry of guest selector `sel`.
    pub fn seg_entry(&self, sel: u16) -> u32 {
        self.seg_table + 2 * sel as u32
    }

    /// Offset of the null-port map for accesses of `size` bytes, if there is one.
    pub fn null_port_map(&self, size: u32) -> Option<u32> {
        let sizes = crate::mangle::io::NULL_PORT_SIZES;
        sizes.iter().position(|&n| n == size).map(|i| self.null_port_maps + NULL_PORT_MAP_SIZE * i as u32)
    }

    /// Index in the lookup table for a guest target EIP.
    pub fn ibl_index(&self, eip: u32) -> u32 {
        eip & ((1u32 << self.ibl_bits) - 1)
    }

    /// The 8 bytes of a lookup-table entry mapping `eip` to TC address `tc`.
    pub fn ibl_entry(&self, eip: u32, tc: u32) -> [u8; 8] {
        let mut e = [0u8; 8];
        e[..4].copy_from_slice(&eip.wrapping_neg().to_le_bytes());
        e[4..].copy_from_slice(&tc.to_le_bytes());
        e
    }

    /// The 8 bytes of an empty entry: `{ 0, miss }` where `miss` is the TC address of a routine
    /// emitted by [`crate::emit::ibl_miss_routine`]. A lookup of target 0 "hits" it, which is
    /// harmless: target 0 is the only one that can, and the routine makes the `IndirectMiss`
    /// callout for target 0.
    pub fn ibl_empty_entry(&self, miss: u32) -> [u8; 8] {
        self.ibl_entry(0, miss)
    }

    /// Checks the layout: fields inside the region, 4-byte alignment of u32 fields, the pairs
    /// that one instruction reads together are adjacent, nothing overlaps.
    pub fn check(&self) -> Result<(), String> {
        if self.irq != self.vif + 1 {
            return Err("irq must be the byte after vif (one 16-bit load reads both)".into());
        }
        if self.callout_ss != self.callout_esp + 4 {
            return Err("callout_ss must follow callout_esp (LSS reads both)".into());
        }
        if self.ibl_bits != 8 && self.ibl_bits != 16 {
            return Err("ibl_bits must be 8 or 16".into());
        }
        if self.vcpu_size > 1 << 20 && self.vcpu_size & 0xfff != 0 {
            return Err("a vCPU region over 1 MiB must be whole pages (its GS limit is in pages)".into());
        }
        let fields: Vec<(&str, u32, u32)> = vec![
            ("vif/irq", self.vif, 2),
            ("vflags", self.vflags, 4),
            ("callout_esp/ss", self.callout_esp, 6),
            ("callout_stack", self.callout_stack, 6),
            ("gate", self.gate, 6),
            ("callout_op", self.callout_op, 4),
            ("callout_eip", self.callout_eip, 4),
            ("callout_next", self.callout_next, 4),
            ("callout_arg", self.callout_arg, 4),
            ("scratch", self.scratch, 4 * SCRATCH_SLOTS),
            ("vseg", self.vseg, 24),
            ("ldtr", self.ldtr, 4),
            ("tr", self.tr, 4),
            ("gdtr", self.gdtr, 6),
            ("idtr", self.idtr, 6),
            ("cr", self.cr, 20),
            ("dr", self.dr, 32),
            ("tsc_offset", self.tsc_offset, 8),
            ("cpuid_count", self.cpuid_count, 4),
            ("cs_shadow", self.cs_shadow, 4),
            ("cpuid_table", self.cpuid_table, 16 * self.cpuid_max),
            ("ugs_base", self.ugs_base, 4),
            ("ugs_bounds", self.ugs_bounds, 8 * UGS_BOUND_SIZES.len() as u32),
            ("fsys", self.fsys, fsys::SIZE),
            ("ibl_table", self.ibl_table, 8 << self.ibl_bits),
            ("ibl_user_table", self.ibl_user_table, 8 << self.ibl_bits),
            ("seg_table", self.seg_table, 2 * SEG_TABLE_ENTRIES),
            ("check_slots", self.check_slots, 4 * self.check_max),
            ("check_conts", self.check_conts, 4 * self.check_max),
            ("check_stubs", self.check_stubs, 4 * self.check_max),
            ("null_port_maps", self.null_port_maps, NULL_PORT_MAPS),
        ];
        for (name, off, len) in &fields {
            if off.checked_add(*len).is_none_or(|end| end > self.vcpu_size) {
                return Err(format!("{name} lies outside the vCPU region"));
            }
            if *name != "vif/irq" && off % 2 != 0 {
                return Err(format!("{name} is misaligned"));
            }
        }
        for (i, (na, a, la)) in fields.iter().enumerate() {
            for (nb, b, lb) in &fields[i + 1..] {
                if a < &(b + lb) && b < &(a + la) {
                    return Err(format!("{na} overlaps {nb}"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_layout_is_consistent() {
        Abi::default().check().unwrap();
        let a = Abi::with_ibl_bits(8);
        a.check().unwrap();
        assert_eq!(Abi::with_ibl_bits(16), Abi::default());
    }

    #[test]
    fn bad_layouts_are_refused() {
        assert!(Abi {
            irq: 0x2,
            ..Abi::default()
        }
        .check()
        .is_err());
        assert!(Abi {
            gdtr: Abi::default().cr,
            ..Abi::default()
        }
        .check()
        .is_err());
        assert!(Abi {
            vcpu_size: 0x1000,
            ..Abi::default()
        }
        .check()
        .is_err());
    }

    #[test]
    fn virtual_and_host_flags_partition_the_defined_bits() {
        assert_eq!(VIRT_MASK & HOST_FLAGS, 0);
        assert_eq!(VIRT_MASK | HOST_FLAGS, 0x003f_7fd5);
        assert_eq!(CalloutOp::from_u32(3), Some(CalloutOp::IndirectMiss));
        assert_eq!(CalloutOp::from_u32(0), None);
    }

    #[test]
    fn ibl_entries() {
        let a = Abi::default();
        let e = a.ibl_entry(0xc010_0000, 0xffc0_1234);
        assert_eq!(
            u32::from_le_bytes(e[..4].try_into().unwrap()).wrapping_add(0xc010_0000),
            0
        );
        assert_eq!(a.ibl_index(0xc012_3456), 0x3456);
    }
}
