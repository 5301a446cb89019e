//! The 64-bit callout gate (ARCHITECTURE.md section 4, docs/translator.md "Callouts").
//!
//! Translated code calls out with `call far gs:[gate]`: a 32-bit far call through the far
//! pointer on the vCPU page, whose selector is the host's 64-bit code segment (0x33) and whose
//! offset is a *trampoline* in the TC's reserved bytes (the far pointer's offset is 32 bits,
//! so its target must lie below 4 GiB; the gate itself is part of the `vmm` binary, above).
//! The trampoline is `jmp qword ptr [rip]` + the gate's 64-bit address: it changes no register.
//!
//! `vmm_bt_gate` (64-bit, on the callout stack: `[rsp]` = the return EIP, `[rsp+4]` = CS, both
//! 4-byte slots pushed by the 32-bit far call) stores the guest's GPRs, EFLAGS, the return EIP
//! and the segment selectors into the direct engine's exit record with `signal` = 0 (the mark
//! of a callout), clears DF, switches to the monitor stack saved by the entry stub and jumps to
//! the direct engine's exit landing, which restores the host FS/GS bases, saves
//! the guest's x87/SSE state and restores the host's MXCSR and x87 control word, and returns into the run loop: the
//! "Rust" the gate calls is the run loop's callout handling, after `entry::enter` returns. No
//! signal is involved. Continuing is an entry like any other (`iretq` to the 32-bit TC code
//! selector): either at the return address with the callout stack popped (the callout
//! "returns") or at a fragment's entry (it "resumes").
//!
//! `vmm_bt_echo` is a gate that only returns (`retf`: in 64-bit mode a far return's default
//! operand size is 32 bits, so it pops the 4-byte EIP and CS slots the compatibility-mode far
//! call pushed; `retfq` would pop 8-byte slots). The tests use it to check that and to measure
//! the raw mode-switch round trip.

use std::mem::offset_of;

use crate::direct::entry::{ExitRecord, Shared, SHARED};

const EXIT: usize = offset_of!(Shared, exit);
const EXIT_GPR: usize = EXIT + offset_of!(ExitRecord, gpr);
const EXIT_EIP: usize = EXIT + offset_of!(ExitRecord, eip);
const EXIT_EFLAGS: usize = EXIT + offset_of!(ExitRecord, eflags);
const EXIT_SEL: usize = EXIT + offset_of!(ExitRecord, sel);
const EXIT_SIGNAL: usize = EXIT + offset_of!(ExitRecord, signal);
const EXIT_EXITED: usize = EXIT + offset_of!(ExitRecord, exited);

std::arch::global_asm!(
    ".pushsection .text.vmm_bt,\"ax\",@progbits",
    ".globl vmm_bt_gate",
    ".hidden vmm_bt_gate",
    ".type vmm_bt_gate,@function",
    ".p2align 4",
    "vmm_bt_gate:",
    // The far call ran with a 32-bit stack: zero-extend ESP to RSP.
    "mov esp, esp",
    "mov [rip + {shared} + {gpr} + 0], eax",
    "mov [rip + {shared} + {gpr} + 4], ecx",
    "mov [rip + {shared} + {gpr} + 8], edx",
    "mov [rip + {shared} + {gpr} + 12], ebx",
    "mov [rip + {shared} + {gpr} + 16], esp",
    "mov [rip + {shared} + {gpr} + 20], ebp",
    "mov [rip + {shared} + {gpr} + 24], esi",
    "mov [rip + {shared} + {gpr} + 28], edi",
    "pushfq",
    "pop rax",
    "mov [rip + {shared} + {eflags}], eax",
    "mov eax, [rsp]",
    "mov [rip + {shared} + {eip}], eax",
    "mov ax, es",
    "mov [rip + {shared} + {sel} + 0], ax",
    "mov ax, [rsp + 4]",
    "mov [rip + {shared} + {sel} + 2], ax",
    "mov ax, ss",
    "mov [rip + {shared} + {sel} + 4], ax",
    "mov ax, ds",
    "mov [rip + {shared} + {sel} + 6], ax",
    "mov ax, fs",
    "mov [rip + {shared} + {sel} + 8], ax",
    "mov ax, gs",
    "mov [rip + {shared} + {sel} + 10], ax",
    "mov dword ptr [rip + {shared} + {signal}], 0",
    "mov dword ptr [rip + {shared} + {exited}], 1",
    "cld",
    "mov rsp, [rip + {shared} + {host_rsp}]",
    "jmp vmm_direct_landing",
    ".size vmm_bt_gate, . - vmm_bt_gate",
    ".globl vmm_bt_echo",
    ".hidden vmm_bt_echo",
    ".type vmm_bt_echo,@function",
    ".p2align 4",
    "vmm_bt_echo:",
    "retf",
    ".size vmm_bt_echo, . - vmm_bt_echo",
    ".popsection",
    shared = sym SHARED,
    gpr = const EXIT_GPR,
    eip = const EXIT_EIP,
    eflags = const EXIT_EFLAGS,
    sel = const EXIT_SEL,
    signal = const EXIT_SIGNAL,
    exited = const EXIT_EXITED,
    host_rsp = const offset_of!(Shared, host_rsp),
);

extern "C" {
    fn vmm_bt_gate();
    fn vmm_bt_echo();
}

/// The bytes of a trampoline to the real gate (`jmp qword ptr [rip]; dq gate`).
pub fn trampoline(echo: bool) -> [u8; 14] {
    let target = if echo { vmm_bt_echo as *const () as usize } else { vmm_bt_gate as *const () as usize } as u64;
    let mut t = [0u8; 14];
    t[..6].copy_from_slice(&[0xff, 0x25, 0, 0, 0, 0]);
    t[6..].copy_from_slice(&target.to_le_bytes());
    t
}
