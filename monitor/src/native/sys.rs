//! Host constants the `libc` crate does not provide (or provides only as functions), in one place.

/// The host's flat 32-bit user code selector (GDT entry 4, RPL 3): compatibility mode.
pub const USER32_CS: u16 = 0x23;
/// The host's flat user data/stack selector (GDT entry 5, RPL 3), valid in both modes.
pub const USER_DS: u16 = 0x2b;
/// The host's 64-bit user code selector (GDT entry 6, RPL 3).
pub const USER64_CS: u16 = 0x33;

/// Page size of the host and of the regions a case maps.
pub const PAGE: u32 = 4096;

/// The real-time signal the per-thread timeout timer raises. glibc reserves the two lowest
/// real-time signals (32, 33) only; the top of the range is free for us.
pub const TIMER_SIGNAL: i32 = 62;

/// Byte offset of the 16-bit CS field inside `ucontext_t` on x86-64 Linux
/// (`uc_mcontext.gregs[REG_CSGSFS]`, whose low 16 bits are CS, then GS, FS, SS).
pub const UC_CS_OFFSET: usize =
    std::mem::offset_of!(libc::ucontext_t, uc_mcontext) + (libc::REG_CSGSFS as usize) * 8;

/// Byte offset of RIP inside `ucontext_t` on x86-64 Linux (`uc_mcontext.gregs[REG_RIP]`).
pub const UC_RIP_OFFSET: usize =
    std::mem::offset_of!(libc::ucontext_t, uc_mcontext) + (libc::REG_RIP as usize) * 8;

/// `AT_HWCAP2` bit announcing that the kernel enabled FSGSBASE for user space.
pub const HWCAP2_FSGSBASE: u64 = 1 << 1;

/// `AUDIT_ARCH_I386` (EM_386 | __AUDIT_ARCH_LE): the `arch` of a system call made from 32-bit code.
pub const AUDIT_ARCH_I386: u32 = 0x4000_0003;
/// `SECCOMP_RET_TRAP`: the filter result that turns a system call into SIGSYS.
pub const SECCOMP_RET_TRAP: u32 = 0x0003_0000;
/// `SECCOMP_RET_ALLOW`.
pub const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
/// Offset of `arch` in `struct seccomp_data`.
pub const SECCOMP_DATA_ARCH: u32 = 4;
/// Offset of the high half of `instruction_pointer` (a u64 at 8) in `struct seccomp_data`.
pub const SECCOMP_DATA_IP_HI: u32 = 12;
/// classic BPF opcodes used by the filter.
pub const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
pub const BPF_JMP_JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
pub const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K

/// EFLAGS bits.
pub const EFL_CF: u32 = 1 << 0;
pub const EFL_FIXED1: u32 = 1 << 1;
pub const EFL_PF: u32 = 1 << 2;
pub const EFL_AF: u32 = 1 << 4;
pub const EFL_ZF: u32 = 1 << 6;
pub const EFL_SF: u32 = 1 << 7;
pub const EFL_TF: u32 = 1 << 8;
pub const EFL_IF: u32 = 1 << 9;
pub const EFL_DF: u32 = 1 << 10;
pub const EFL_OF: u32 = 1 << 11;
pub const EFL_NT: u32 = 1 << 14;
pub const EFL_RF: u32 = 1 << 16;
pub const EFL_AC: u32 = 1 << 18;
pub const EFL_ID: u32 = 1 << 21;

// ---- the direct engine's additions (kept here: one module of host constants) ----

/// `arch_prctl` codes for CPUID faulting (`asm/prctl.h`).
pub const ARCH_GET_CPUID: i32 = 0x1011;
pub const ARCH_SET_CPUID: i32 = 0x1012;

/// `modify_ldt` function 0x11: write one LDT entry ("new mode").
pub const MODIFY_LDT_WRITE: i32 = 0x11;
/// Entries in the host LDT.
pub const LDT_ENTRIES: u32 = 8192;

/// `struct user_desc` of `asm/ldt.h` (16 bytes; the bit fields packed into `flags`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct UserDesc {
    pub entry_number: u32,
    pub base_addr: u32,
    pub limit: u32,
    /// bit 0 seg_32bit, bits 1-2 contents, bit 3 read_exec_only, bit 4 limit_in_pages,
    /// bit 5 seg_not_present, bit 6 useable, bit 7 lm.
    pub flags: u32,
}

pub const UD_SEG_32BIT: u32 = 1 << 0;
pub const UD_CONTENTS_SHIFT: u32 = 1;
/// `contents` values: data, expand-down data, code (conforming code must be not present).
pub const UD_CONTENTS_DATA: u32 = 0;
pub const UD_CONTENTS_STACK: u32 = 1;
pub const UD_CONTENTS_CODE: u32 = 2;
pub const UD_READ_EXEC_ONLY: u32 = 1 << 3;
pub const UD_LIMIT_IN_PAGES: u32 = 1 << 4;
pub const UD_SEG_NOT_PRESENT: u32 = 1 << 5;
pub const UD_USEABLE: u32 = 1 << 6;

/// Byte offsets of `gregs[REG_TRAPNO]` etc. are taken through `libc::REG_*`; the SS selector
/// sits in the top 16 bits of `REG_CSGSFS` (Linux saves it there since 4.6).
pub const CSGSFS_SS_SHIFT: u32 = 48;

/// `MFD_CLOEXEC` for `memfd_create`.
pub const MFD_CLOEXEC: u32 = 1;
