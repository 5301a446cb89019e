//! Entering guest code in compatibility mode with the guest's registers and shadow selectors,
//! and leaving it through a host signal. This module and `ldt.rs` hold the direct engine's
//! `unsafe` code (assembly stubs, signal handlers, sigaltstack, timer, seccomp, CPUID faulting).
//!
//! * `vmm_direct_enter` (64-bit, called from Rust): saves the callee-saved registers, the host
//!   RSP, FS/GS bases (the DS/ES/FS/GS selectors once per run: [`restore_host_selectors`])
//!   and the host's MXCSR and x87 control word (the
//!   only x87/SSE state the C ABI has a callee preserve), loads the guest's x87/SSE image in
//!   place (32-bit format: the vCPU's 16-byte aligned `FpuState`; `fxrstor`, or only MXCSR
//!   and the XMM registers when the hardware's x87 state, saved to a scratch area, is the
//!   image's), builds an
//!   IRETQ frame (guest SS:ESP, EFLAGS, CS:EIP, all shadow selectors in the host LDT), loads
//!   ES/DS (those that hold another selector) and GS/FS with the guest's shadow selectors,
//!   the eight GPRs, and `iretq`s.
//! * `vmm_direct_signal` (handler of SIGSEGV, SIGILL, SIGTRAP, SIGFPE, SIGBUS, SIGSYS and the
//!   timer signal; SA_ONSTACK): guest code is recognised by the interrupted CS (anything but
//!   the host's 64-bit 0x33) or, while the guest runs, by RIP < 4 GiB (guest code that jumped to
//!   0x33). For guest code it stores DS/ES/FS/GS (not in the signal frame), clears AC and NT,
//!   restores the host FS and GS bases with `wrfsbase`/`wrgsbase` before any Rust runs, and
//!   tail-calls [`guest_exit`], which copies the state out and rewrites the frame to resume at
//!   `vmm_direct_landing`. Host signals: the timer is ignored (`ret`, no Rust: it may arrive in
//!   the entry stub after FS was loaded); a CPUID fault in the monitor's own code is answered
//!   from the table captured before CPUID faulting was turned on; anything else re-raises with
//!   the previous action.
//! * `vmm_direct_landing` (64-bit, reached by sigreturn on the host stack): restores the host
//!   FS/GS bases (the selectors stay the guest's until the run ends), saves the guest x87/SSE
//!   state in place, leaves the x87 unit as the
//!   ABI wants it at a return (`fninit`, the host's control word) with the host's MXCSR, clears
//!   EFLAGS (0x202), pops the callee-saved registers and returns to the caller of the entry.

use std::cell::{RefCell, UnsafeCell};
use std::ffi::c_void;
use std::mem::offset_of;
use std::sync::atomic::{compiler_fence, AtomicBool, Ordering};
use std::sync::OnceLock;

use crate::native::sys;
use vmm_interp::FpuState;

/// State shared between Rust, the stubs and the handler. One thread at a time runs a guest
/// (the engine holds [`RUN_LOCK`]); the handler writes it only for signals from guest code on
/// that thread.
#[repr(C, align(64))]
pub(crate) struct Shared {
    /// The guest's FXSAVE image (the vCPU's `FpuState`, 16-byte aligned) for this entry:
    /// loaded by the entry stub, saved in place by the landing.
    pub guest_fx: *mut FpuState,
    /// The host's MXCSR and x87 control word, the only x87/SSE state the C ABI has the
    /// callee preserve (SysV x86-64 ABI §3.2.1: every XMM register and the x87 stack are
    /// caller-saved; the x87 stack is empty at a call).
    pub host_mxcsr: u32,
    pub host_fcw: u16,
    pub _pad_fx: u16,
    pub in_gpr: [u32; 8],
    pub in_eip: u32,
    pub in_eflags: u32,
    /// ES CS SS DS FS GS: host selectors to load.
    pub in_sel: [u16; 6],
    pub _pad0: u32,
    pub host_rsp: u64,
    pub host_fsbase: u64,
    pub host_gsbase: u64,
    pub host_ds: u16,
    pub host_es: u16,
    pub host_fs: u16,
    pub host_gs: u16,
    /// `host_ds`..`host_gs` hold the host's selectors (see [`restore_host_selectors`]).
    pub host_sels_saved: u32,
    pub running: u32,
    pub _pad1: u32,
    pub exit: ExitRecord,
    /// The `bt` engine's translation cache `[bt_tc_lo, bt_tc_hi)` (0, 0 otherwise): a timer
    /// signal that interrupts code there only sets the byte at `bt_irq` and returns (the
    /// translated code checks it at fragment entries; no exit mid-fragment).
    pub bt_tc_lo: u64,
    pub bt_tc_hi: u64,
    pub bt_irq: u64,
    /// The `bt` engine's 64-bit gate trampoline `[bt_tramp_lo, bt_tramp_hi)` below 4 GiB: a
    /// signal there (CS = 0x33) is a host signal, not guest code that left compatibility mode.
    pub bt_tramp_lo: u64,
    pub bt_tramp_hi: u64,
    /// Timer ticks in the TC that found `irq` still set (the guest did not take the previous
    /// one: its virtual IF is clear). At `bt_stale_limit` the tick becomes a full exit
    /// (imprecise: the runtime uses it only to end the run at its deadline).
    pub bt_stale: u64,
    pub bt_stale_limit: u64,
    /// The `bt` engine's pending-interrupt check slots (docs/bt.md): how armed they are (0:
    /// every slot holds its continuation; 1: the enabling sites' slots hold their stubs; 2:
    /// every slot its stub). A timer signal that sets `irq` arms them to 1 + the virtual IF
    /// (the byte before `irq`) if they are less armed: it copies `bt_nslots` u32s from
    /// `bt_stubs1` (level 1) or `bt_stubs` (level 2) over `bt_slots` (host addresses). The
    /// monitor sets the level before each entry.
    pub bt_armed: u64,
    pub bt_slots: u64,
    pub bt_stubs: u64,
    pub bt_stubs1: u64,
    pub bt_nslots: u64,
    /// Where the entry stub saves the hardware's x87/SSE state to compare it with the
    /// guest's image (see `vmm_direct_enter`).
    pub scratch_fx: FxArea,
}

/// A 16-byte aligned FXSAVE area.
#[repr(C, align(16))]
pub(crate) struct FxArea(pub [u8; 512]);

/// The raw facts of one exit.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct ExitRecord {
    pub exited: u32,
    pub signal: i32,
    pub si_code: i32,
    /// EAX ECX EDX EBX ESP EBP ESI EDI.
    pub gpr: [u32; 8],
    pub eip: u32,
    pub eflags: u32,
    /// ES CS SS DS FS GS as found at the exit (hardware selectors).
    pub sel: [u16; 6],
    pub trapno: u32,
    pub err: u32,
    pub cr2: u64,
    pub rip_high: u32,
}

pub(crate) struct SharedCell(UnsafeCell<Shared>);
// SAFETY: serialised by RUN_LOCK (see `Shared`).
unsafe impl Sync for SharedCell {}

pub(crate) static SHARED: SharedCell = SharedCell(UnsafeCell::new(Shared {
    guest_fx: std::ptr::null_mut(),
    host_mxcsr: 0,
    host_fcw: 0,
    _pad_fx: 0,
    in_gpr: [0; 8],
    in_eip: 0,
    in_eflags: 0,
    in_sel: [0; 6],
    _pad0: 0,
    host_rsp: 0,
    host_fsbase: 0,
    host_gsbase: 0,
    host_ds: 0,
    host_es: 0,
    host_fs: 0,
    host_gs: 0,
    host_sels_saved: 0,
    running: 0,
    _pad1: 0,
    exit: ExitRecord {
        exited: 0,
        signal: 0,
        si_code: 0,
        gpr: [0; 8],
        eip: 0,
        eflags: 0,
        sel: [0; 6],
        trapno: 0,
        err: 0,
        cr2: 0,
        rip_high: 0,
    },
    bt_tc_lo: 0,
    bt_tc_hi: 0,
    bt_irq: 0,
    bt_tramp_lo: 0,
    bt_tramp_hi: 0,
    bt_stale: 0,
    bt_stale_limit: u64::MAX,
    bt_armed: 0,
    bt_slots: 0,
    bt_stubs: 0,
    bt_stubs1: 0,
    bt_nslots: 0,
    scratch_fx: FxArea([0; 512]),
}));

/// The shared area (for the `bt` engine's gate, which exits through the same landing).
pub(crate) fn shared() -> *mut Shared {
    SHARED.0.get()
}

/// One guest at a time per process (the shared area, the signal handlers, the low 4 GiB).
pub(crate) static RUN_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

const EXIT_SEL: usize = offset_of!(Shared, exit) + offset_of!(ExitRecord, sel);

std::arch::global_asm!(
    ".pushsection .text.vmm_direct,\"ax\",@progbits",
    // ------------------------------------------------------------------ enter
    ".globl vmm_direct_enter",
    ".hidden vmm_direct_enter",
    ".type vmm_direct_enter,@function",
    ".p2align 4",
    "vmm_direct_enter:",
    "push rbp",
    "push rbx",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "lea r11, [rip + {shared}]",
    "mov [r11 + {host_rsp}], rsp",
    "rdfsbase rax",
    "mov [r11 + {host_fsbase}], rax",
    "rdgsbase rax",
    "mov [r11 + {host_gsbase}], rax",
    "stmxcsr [r11 + {host_mxcsr}]",
    "fnstcw [r11 + {host_fcw}]",
    // The guest's x87/SSE image. The host code that ran since the landing saved it leaves
    // the x87 part as it was (the landing's fast path does not touch it; host code does
    // not use the x87 unit) but uses the XMM registers and MXCSR freely. So: the hardware
    // state saved to the scratch area; if its x87 part (bytes 0-23: control, status and
    // tag words, last instruction and operand pointers; 32-159: the registers) is the
    // image's, loading MXCSR and XMM0-15 from the image gives what FXRSTOR would (FXSAVE
    // 74 and 16 loads against FXRSTOR's 150 cycles here); otherwise (the interpreter
    // changed the image, the landing reinitialised the x87 unit) FXRSTOR.
    "mov rax, [r11 + {guest_fx}]",
    "lea rcx, [r11 + {scratch_fx}]",
    "fxsave [rcx]",
    "mov rdx, [rax]",
    "cmp rdx, [rcx]",
    "jne 31f",
    "mov rdx, [rax + 8]",
    "cmp rdx, [rcx + 8]",
    "jne 31f",
    "mov rdx, [rax + 16]",
    "cmp rdx, [rcx + 16]",
    "jne 31f",
    "movdqa xmm0, [rax + 32]",
    "pcmpeqb xmm0, [rcx + 32]",
    "movdqa xmm1, [rax + 48]",
    "pcmpeqb xmm1, [rcx + 48]",
    "pand xmm0, xmm1",
    "movdqa xmm1, [rax + 64]",
    "pcmpeqb xmm1, [rcx + 64]",
    "pand xmm0, xmm1",
    "movdqa xmm1, [rax + 80]",
    "pcmpeqb xmm1, [rcx + 80]",
    "pand xmm0, xmm1",
    "movdqa xmm1, [rax + 96]",
    "pcmpeqb xmm1, [rcx + 96]",
    "pand xmm0, xmm1",
    "movdqa xmm1, [rax + 112]",
    "pcmpeqb xmm1, [rcx + 112]",
    "pand xmm0, xmm1",
    "movdqa xmm1, [rax + 128]",
    "pcmpeqb xmm1, [rcx + 128]",
    "pand xmm0, xmm1",
    "movdqa xmm1, [rax + 144]",
    "pcmpeqb xmm1, [rcx + 144]",
    "pand xmm0, xmm1",
    "pmovmskb edx, xmm0",
    "cmp edx, 0xffff",
    "jne 31f",
    "ldmxcsr [rax + 24]",
    "movdqa xmm0, [rax + 160]",
    "movdqa xmm1, [rax + 176]",
    "movdqa xmm2, [rax + 192]",
    "movdqa xmm3, [rax + 208]",
    "movdqa xmm4, [rax + 224]",
    "movdqa xmm5, [rax + 240]",
    "movdqa xmm6, [rax + 256]",
    "movdqa xmm7, [rax + 272]",
    "movdqa xmm8, [rax + 288]",
    "movdqa xmm9, [rax + 304]",
    "movdqa xmm10, [rax + 320]",
    "movdqa xmm11, [rax + 336]",
    "movdqa xmm12, [rax + 352]",
    "movdqa xmm13, [rax + 368]",
    "movdqa xmm14, [rax + 384]",
    "movdqa xmm15, [rax + 400]",
    "jmp 32f",
    "31:",
    "fxrstor [rax]",
    "32:",
    // IRETQ frame: SS, RSP, RFLAGS, CS, RIP
    "movzx eax, word ptr [r11 + {in_sel} + 4]",
    "push rax",
    "mov eax, [r11 + {in_gpr} + 16]",
    "push rax",
    "mov eax, [r11 + {in_eflags}]",
    "push rax",
    "movzx eax, word ptr [r11 + {in_sel} + 2]",
    "push rax",
    "mov eax, [r11 + {in_eip}]",
    "push rax",
    // ES and DS are loaded only if they hold another selector (a load costs 20-120
    // cycles here). One they already hold has the descriptor a load would give now: the
    // landing leaves the guest's there, the host GDT does not change, and the host kernel
    // reloads DS and ES in every thread of the process after each LDT change
    // (`refresh_ldt_segments`) and at each context switch.
    "mov cx, es",
    "cmp cx, word ptr [r11 + {in_sel} + 0]",
    "je 33f",
    "movzx eax, word ptr [r11 + {in_sel} + 0]",
    "mov es, eax",
    "33:",
    "mov cx, ds",
    "cmp cx, word ptr [r11 + {in_sel} + 6]",
    "je 34f",
    "movzx eax, word ptr [r11 + {in_sel} + 6]",
    "mov ds, eax",
    "34:",
    "movzx eax, word ptr [r11 + {in_sel} + 10]",
    "mov gs, eax",
    // FS: a null selector that FS already holds is not loaded again (a null load costs
    // 120 cycles here; the user code of Linux runs with a null FS). The landing wrote the
    // host's FS base under it, but a null FS faults in compatibility mode whatever its base
    // (the test `each_entry_runs_with_its_images_fpu_state_and_its_selectors` checks it).
    "movzx eax, word ptr [r11 + {in_sel} + 8]",
    "test eax, eax",
    "jnz 35f",
    "mov cx, fs",
    "test cx, cx",
    "jz 36f",
    "35:",
    "mov fs, eax",
    "36:",
    "mov ecx, [r11 + {in_gpr} + 4]",
    "mov edx, [r11 + {in_gpr} + 8]",
    "mov ebx, [r11 + {in_gpr} + 12]",
    "mov ebp, [r11 + {in_gpr} + 20]",
    "mov esi, [r11 + {in_gpr} + 24]",
    "mov edi, [r11 + {in_gpr} + 28]",
    "mov eax, [r11 + {in_gpr} + 0]",
    "iretq",
    ".size vmm_direct_enter, . - vmm_direct_enter",
    // ------------------------------------------------------------------ signal handler
    ".globl vmm_direct_signal",
    ".hidden vmm_direct_signal",
    ".type vmm_direct_signal,@function",
    ".p2align 4",
    "vmm_direct_signal:",
    // rdi = signo, rsi = siginfo *, rdx = ucontext *; RSP on the sigaltstack.
    "cmp word ptr [rdx + {uc_cs}], {cs64}",
    "jne 1f",
    "cmp dword ptr [rip + {shared} + {running}], 0",
    "je 2f",
    "mov rax, [rdx + {uc_rip}]",
    // The bt engine's gate trampoline (64-bit code below 4 GiB) is the monitor's.
    "cmp rax, [rip + {shared} + {bt_tramp_lo}]",
    "jb 4f",
    "cmp rax, [rip + {shared} + {bt_tramp_hi}]",
    "jb 2f",
    "4:",
    "shr rax, 32",
    "jnz 2f",
    "1:",
    // The timer in the bt engine's translation cache: set the pending byte, resume.
    "cmp edi, {timer_sig}",
    "jne 5f",
    "mov rax, [rdx + {uc_rip}]",
    "cmp rax, [rip + {shared} + {bt_tc_lo}]",
    "jb 5f",
    "cmp rax, [rip + {shared} + {bt_tc_hi}]",
    "jae 5f",
    "mov rax, [rip + {shared} + {bt_irq}]",
    "cmp byte ptr [rax], 0",
    "je 6f",
    "inc qword ptr [rip + {shared} + {bt_stale}]",
    "mov rax, [rip + {shared} + {bt_stale}]",
    "cmp rax, [rip + {shared} + {bt_stale_limit}]",
    "jae 5f",
    "mov rax, [rip + {shared} + {bt_irq}]",
    "6:",
    "mov byte ptr [rax], 1",
    // Arm the check slots to 1 + vif: the enabling sites' stubs, or every site's, over the
    // slots (the monitor disarms them).
    "movzx ecx, byte ptr [rax - 1]",
    "inc ecx",
    "cmp rcx, [rip + {shared} + {bt_armed}]",
    "jbe 7f",
    "mov [rip + {shared} + {bt_armed}], rcx",
    "mov rsi, [rip + {shared} + {bt_stubs}]",
    "cmp ecx, 2",
    "je 8f",
    "mov rsi, [rip + {shared} + {bt_stubs1}]",
    "8:",
    "mov rdi, [rip + {shared} + {bt_slots}]",
    "mov rcx, [rip + {shared} + {bt_nslots}]",
    "cld",
    "rep movsd",
    "7:",
    "ret",
    "5:",
    "mov ax, es",
    "mov [rip + {shared} + {exit_sel} + 0], ax",
    "mov ax, ds",
    "mov [rip + {shared} + {exit_sel} + 6], ax",
    "mov ax, fs",
    "mov [rip + {shared} + {exit_sel} + 8], ax",
    "mov ax, gs",
    "mov [rip + {shared} + {exit_sel} + 10], ax",
    "pushfq",
    "and dword ptr [rsp], {not_ac_nt}",
    "popfq",
    "mov rax, [rip + {shared} + {host_fsbase}]",
    "wrfsbase rax",
    "mov rax, [rip + {shared} + {host_gsbase}]",
    "wrgsbase rax",
    "jmp {guest_exit}",
    "2:",
    "cmp edi, {timer_sig}",
    "je 3f",
    "jmp {host_signal}",
    "3:",
    "ret",
    ".size vmm_direct_signal, . - vmm_direct_signal",
    // ------------------------------------------------------------------ exit landing
    ".globl vmm_direct_landing",
    ".hidden vmm_direct_landing",
    ".type vmm_direct_landing,@function",
    ".p2align 4",
    "vmm_direct_landing:",
    // DS, ES, FS and GS keep the guest's shadow selectors (see `restore_host_selectors`):
    // 64-bit code ignores DS and ES, and FS and GS matter only by their bases, which are
    // the host's again.
    "lea r11, [rip + {shared}]",
    "mov rax, [r11 + {host_fsbase}]",
    "wrfsbase rax",
    "mov rax, [r11 + {host_gsbase}]",
    "wrgsbase rax",
    // The guest's x87/SSE state saved in place; the host's as the ABI wants it at a return:
    // an empty x87 stack without a pending exception, the host's control word (`fninit`,
    // `fldcw`, skipped when the image shows all that already), the host's MXCSR. The XMM
    // registers are caller-saved: the guest's values may stay.
    "mov rax, [r11 + {guest_fx}]",
    "fxsave [rax]",
    "movzx ecx, word ptr [rax]", // FCW
    "cmp cx, word ptr [r11 + {host_fcw}]",
    "jne 7f",
    "cmp byte ptr [rax + 4], 0", // abridged tag word: every register empty
    "jne 7f",
    "test byte ptr [rax + 2], 0x80", // FSW.ES: an unmasked exception pending
    "jnz 7f",
    "8:",
    "mov ecx, [rax + 24]", // MXCSR
    "cmp ecx, [r11 + {host_mxcsr}]",
    "je 9f",
    "ldmxcsr [r11 + {host_mxcsr}]",
    "9:",
    "push 0x202",
    "popfq",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbx",
    "pop rbp",
    "ret",
    "7:",
    "fninit",
    "fldcw [r11 + {host_fcw}]",
    "jmp 8b",
    ".size vmm_direct_landing, . - vmm_direct_landing",
    // ------------------------------------------------------------------ host selectors
    ".globl vmm_direct_restore_selectors",
    ".hidden vmm_direct_restore_selectors",
    ".type vmm_direct_restore_selectors,@function",
    ".p2align 4",
    "vmm_direct_restore_selectors:",
    "lea r11, [rip + {shared}]",
    "rdfsbase rcx",
    "rdgsbase rdx",
    "movzx eax, word ptr [r11 + {host_ds}]",
    "mov ds, eax",
    "movzx eax, word ptr [r11 + {host_es}]",
    "mov es, eax",
    "movzx eax, word ptr [r11 + {host_fs}]",
    "mov fs, eax",
    "movzx eax, word ptr [r11 + {host_gs}]",
    "mov gs, eax",
    "wrfsbase rcx",
    "wrgsbase rdx",
    "ret",
    ".size vmm_direct_restore_selectors, . - vmm_direct_restore_selectors",
    ".popsection",
    shared = sym SHARED,
    guest_exit = sym guest_exit,
    host_signal = sym host_signal,
    guest_fx = const offset_of!(Shared, guest_fx),
    scratch_fx = const offset_of!(Shared, scratch_fx),
    host_mxcsr = const offset_of!(Shared, host_mxcsr),
    host_fcw = const offset_of!(Shared, host_fcw),
    host_rsp = const offset_of!(Shared, host_rsp),
    host_fsbase = const offset_of!(Shared, host_fsbase),
    host_gsbase = const offset_of!(Shared, host_gsbase),
    host_ds = const offset_of!(Shared, host_ds),
    host_es = const offset_of!(Shared, host_es),
    host_fs = const offset_of!(Shared, host_fs),
    host_gs = const offset_of!(Shared, host_gs),
    in_gpr = const offset_of!(Shared, in_gpr),
    in_eip = const offset_of!(Shared, in_eip),
    in_eflags = const offset_of!(Shared, in_eflags),
    in_sel = const offset_of!(Shared, in_sel),
    running = const offset_of!(Shared, running),
    bt_tc_lo = const offset_of!(Shared, bt_tc_lo),
    bt_tc_hi = const offset_of!(Shared, bt_tc_hi),
    bt_irq = const offset_of!(Shared, bt_irq),
    bt_tramp_lo = const offset_of!(Shared, bt_tramp_lo),
    bt_tramp_hi = const offset_of!(Shared, bt_tramp_hi),
    bt_stale = const offset_of!(Shared, bt_stale),
    bt_stale_limit = const offset_of!(Shared, bt_stale_limit),
    bt_armed = const offset_of!(Shared, bt_armed),
    bt_slots = const offset_of!(Shared, bt_slots),
    bt_stubs = const offset_of!(Shared, bt_stubs),
    bt_stubs1 = const offset_of!(Shared, bt_stubs1),
    bt_nslots = const offset_of!(Shared, bt_nslots),
    exit_sel = const EXIT_SEL,
    uc_rip = const sys::UC_RIP_OFFSET,
    uc_cs = const sys::UC_CS_OFFSET,
    cs64 = const sys::USER64_CS,
    not_ac_nt = const !(sys::EFL_AC | sys::EFL_NT),
    timer_sig = const sys::TIMER_SIGNAL,
);

extern "C" {
    fn vmm_direct_enter();
    fn vmm_direct_signal();
    fn vmm_direct_landing();
    fn vmm_direct_restore_selectors();
}

/// Records the host's DS, ES, FS and GS selectors if they are not recorded yet: the first
/// entry after a [`restore_host_selectors`] (or ever) finds the host's own in the registers.
///
/// # Safety
/// RUN_LOCK is held by the caller (SHARED is not used by anyone else).
unsafe fn save_host_selectors(sh: *mut Shared) {
    // SAFETY: the caller's; reading segment registers has no other effect.
    unsafe {
        if (*sh).host_sels_saved != 0 {
            return;
        }
        let (ds, es, fs, gs): (u16, u16, u16, u16);
        std::arch::asm!("mov {0:x}, ds", "mov {1:x}, es", "mov {2:x}, fs", "mov {3:x}, gs",
            out(reg) ds, out(reg) es, out(reg) fs, out(reg) gs, options(nomem, nostack, preserves_flags));
        (*sh).host_ds = ds;
        (*sh).host_es = es;
        (*sh).host_fs = fs;
        (*sh).host_gs = gs;
        (*sh).host_sels_saved = 1;
    }
}

/// Puts the host's DS, ES, FS and GS selectors back (keeping the FS and GS bases) after a run.
/// The exit landing leaves the guest's shadow selectors in them: a selector load costs more
/// than the rest of the landing, 64-bit code ignores DS and ES, and FS and GS are used only
/// by their bases, which the landing restores with `wrfsbase`/`wrgsbase` (with FSGSBASE the
/// kernel saves and restores both selector and base at a context switch; the signal handler
/// already ran Rust with the guest's selectors loaded). Call when the run's guest code is done.
pub(crate) fn restore_host_selectors(_lock: &std::sync::MutexGuard<'_, ()>) {
    let sh = SHARED.0.get();
    // SAFETY: RUN_LOCK is held (borrowed guard). The stub reloads the four selectors recorded
    // at the first entry (valid host selectors, or zero) and writes back the FS and GS bases
    // it read before, so TLS is what it was; it touches only caller-saved registers.
    unsafe {
        if (*sh).host_sels_saved == 0 {
            return;
        }
        vmm_direct_restore_selectors();
        (*sh).host_sels_saved = 0;
    }
}

/// What to load for one entry.
#[derive(Clone, Copy, Debug, Default)]
pub struct EntryState {
    pub gpr: [u32; 8],
    pub eip: u32,
    pub eflags: u32,
    /// ES CS SS DS FS GS host selectors.
    pub sel: [u16; 6],
}

/// Runs guest code until it raises a signal; returns what the handler recorded.
/// `fpu` is the guest's FXSAVE image, loaded before and saved (in place) after.
pub(crate) fn enter(_lock: &std::sync::MutexGuard<'_, ()>, st: &EntryState, fpu: &mut FpuState) -> ExitRecord {
    const _: () = assert!(std::mem::align_of::<FpuState>() >= 16 && std::mem::size_of::<FpuState>() == 512);
    let sh = SHARED.0.get();
    // SAFETY: RUN_LOCK is held (the guard is borrowed), so nothing else uses SHARED; the
    // handlers, this thread's sigaltstack and the guest mappings were set up by `Thread::prepare`
    // before (the caller obtained `Prepared`). `fpu` is a 512-byte, 16-byte aligned (the
    // assertion above) buffer borrowed mutably for the whole call: fxrstor/fxsave read and
    // write only it, and the pointer is cleared before the borrow ends. The stub returns
    // through the landing, which restores everything the C ABI requires (callee-saved
    // registers, RSP, DF=0, MXCSR and the x87 control word, an empty x87 stack, FS/GS).
    unsafe {
        (*sh).in_gpr = st.gpr;
        (*sh).in_eip = st.eip;
        (*sh).in_eflags = st.eflags;
        (*sh).in_sel = st.sel;
        save_host_selectors(sh);
        (*sh).guest_fx = fpu as *mut FpuState;
        (*sh).exit = ExitRecord::default();
        std::ptr::write_volatile(std::ptr::addr_of_mut!((*sh).running), 1);
        compiler_fence(Ordering::SeqCst);
        vmm_direct_enter();
        compiler_fence(Ordering::SeqCst);
        std::ptr::write_volatile(std::ptr::addr_of_mut!((*sh).running), 0);
        (*sh).guest_fx = std::ptr::null_mut();
        (*sh).exit
    }
}

/// Guest-code signal: record, redirect to the landing. Signal context, host FS/GS restored,
/// AC clear; only loads and stores.
unsafe extern "C" fn guest_exit(sig: i32, info: *mut libc::siginfo_t, uc: *mut c_void) {
    let uc = uc.cast::<libc::ucontext_t>();
    // SAFETY: valid siginfo/ucontext from the kernel (SA_SIGINFO); SHARED is ours (the
    // interrupted thread holds RUN_LOCK and is in guest code).
    unsafe {
        let g = &mut (*uc).uc_mcontext.gregs;
        let sh = SHARED.0.get();
        let saved = *g;
        let r = |i: i32| saved[i as usize] as u64;
        let e = &mut (*sh).exit;
        e.signal = sig;
        e.si_code = (*info).si_code;
        e.gpr = [
            r(libc::REG_RAX) as u32,
            r(libc::REG_RCX) as u32,
            r(libc::REG_RDX) as u32,
            r(libc::REG_RBX) as u32,
            r(libc::REG_RSP) as u32,
            r(libc::REG_RBP) as u32,
            r(libc::REG_RSI) as u32,
            r(libc::REG_RDI) as u32,
        ];
        e.eip = r(libc::REG_RIP) as u32;
        e.rip_high = (r(libc::REG_RIP) >> 32) as u32;
        e.eflags = r(libc::REG_EFL) as u32;
        let csgsfs = r(libc::REG_CSGSFS);
        e.sel[1] = csgsfs as u16;
        e.sel[2] = (csgsfs >> sys::CSGSFS_SS_SHIFT) as u16;
        e.trapno = r(libc::REG_TRAPNO) as u32;
        e.err = r(libc::REG_ERR) as u32;
        e.cr2 = r(libc::REG_CR2);
        e.exited = 1;
        g[libc::REG_RIP as usize] = vmm_direct_landing as *const () as usize as i64;
        g[libc::REG_RSP as usize] = (*sh).host_rsp as i64;
        g[libc::REG_EFL as usize] = (sys::EFL_FIXED1 | sys::EFL_IF) as i64;
        let keep = csgsfs & 0x0000_ffff_ffff_0000;
        g[libc::REG_CSGSFS as usize] =
            (keep | sys::USER64_CS as u64 | (sys::USER_DS as u64) << sys::CSGSFS_SS_SHIFT) as i64;
    }
}

// ---------------------------------------------------------------- CPUID faulting

/// Whether CPUID faulting is on for the thread that runs guests.
static CPUID_FAULTING: AtomicBool = AtomicBool::new(false);

const CPUID_SLOTS: usize = 512;

/// The host's CPUID answers, captured before CPUID faulting is turned on.
struct CpuidTable {
    n: usize,
    /// (leaf, subleaf, eax, ebx, ecx, edx)
    e: [(u32, u32, [u32; 4]); CPUID_SLOTS],
}

static CPUID_TABLE: OnceLock<CpuidTable> = OnceLock::new();

fn capture_cpuid() -> CpuidTable {
    use std::arch::x86_64::__cpuid_count;
    let mut t = CpuidTable { n: 0, e: [(0, 0, [0; 4]); CPUID_SLOTS] };
    let mut put = |leaf: u32, sub: u32| {
        if t.n < CPUID_SLOTS {
            // CPUID faulting is not on yet.
            let r = __cpuid_count(leaf, sub);
            t.e[t.n] = (leaf, sub, [r.eax, r.ebx, r.ecx, r.edx]);
            t.n += 1;
        }
    };
    let max = __cpuid_count(0, 0).eax.min(0x20);
    for leaf in 0..=max {
        let subs = match leaf {
            0xd => 64,
            4 | 7 | 0xb | 0xf | 0x10 | 0x12 | 0x14 | 0x17 | 0x18 | 0x1f => 8,
            _ => 1,
        };
        for sub in 0..subs {
            put(leaf, sub);
        }
    }
    let emax = __cpuid_count(0x8000_0000, 0).eax.clamp(0x8000_0000, 0x8000_0028);
    for leaf in 0x8000_0000..=emax {
        let subs = if leaf == 0x8000_001d { 8 } else { 1 };
        for sub in 0..subs {
            put(leaf, sub);
        }
    }
    t
}

fn cpuid_lookup(leaf: u32, sub: u32) -> [u32; 4] {
    let Some(t) = CPUID_TABLE.get() else { return [0; 4] };
    let entries = &t.e[..t.n];
    if let Some(e) = entries.iter().find(|e| e.0 == leaf && e.1 == sub) {
        return e.2;
    }
    // Leaves without subleaves ignore ECX.
    match entries.iter().filter(|e| e.0 == leaf).count() {
        1 => entries.iter().find(|e| e.0 == leaf).map(|e| e.2).unwrap_or([0; 4]),
        _ => [0; 4],
    }
}

/// The host's CPUID answer (from the captured table once faulting is on).
pub fn host_cpuid(leaf: u32, sub: u32) -> [u32; 4] {
    cpuid_lookup(leaf, sub)
}

/// Previous actions, for signals that are not ours.
struct Prev(UnsafeCell<[Option<libc::sigaction>; 65]>);
// SAFETY: written once (under `OnceLock` init) before the handlers are installed; read-only after.
unsafe impl Sync for Prev {}
static PREV: Prev = Prev(UnsafeCell::new([None; 65]));

/// A signal that did not interrupt guest code (host FS is the host's).
unsafe extern "C" fn host_signal(sig: i32, info: *mut libc::siginfo_t, uc: *mut c_void) {
    // SAFETY: valid pointers from the kernel; PREV is read-only now; the bytes at RIP are
    // mapped (the CPU just fetched them); sigaction/raise are async-signal-safe.
    unsafe {
        let uc = uc.cast::<libc::ucontext_t>();
        let g = &mut (*uc).uc_mcontext.gregs;
        if sig == libc::SIGSEGV && CPUID_FAULTING.load(Ordering::Relaxed) {
            let rip = g[libc::REG_RIP as usize] as usize as *const u8;
            if !rip.is_null() && *rip == 0x0f && *rip.add(1) == 0xa2 {
                let r = cpuid_lookup(g[libc::REG_RAX as usize] as u32, g[libc::REG_RCX as usize] as u32);
                g[libc::REG_RAX as usize] = r[0] as i64;
                g[libc::REG_RBX as usize] = r[1] as i64;
                g[libc::REG_RCX as usize] = r[2] as i64;
                g[libc::REG_RDX as usize] = r[3] as i64;
                g[libc::REG_RIP as usize] += 2;
                return;
            }
        }
        if sig != libc::SIGSYS && sig != sys::TIMER_SIGNAL && (*info).si_code > 0 {
            // A fault of the monitor itself: say where before the default action ends the
            // process (what a bug report needs; write(2) is async-signal-safe).
            let mut buf = [0u8; 192];
            let mut n = 0;
            let mut put = |b: &[u8]| {
                let k = b.len().min(buf.len() - n);
                buf[n..n + k].copy_from_slice(&b[..k]);
                n += k;
            };
            let hex = |v: u64| {
                let mut h = *b"0x0000000000000000";
                for i in 0..16 {
                    h[17 - i] = b"0123456789abcdef"[((v >> (4 * i)) & 0xf) as usize];
                }
                h
            };
            put(b"vmm: fatal signal ");
            put(&[b'0' + (sig / 10) as u8, b'0' + (sig % 10) as u8]);
            put(b" in the monitor at rip ");
            put(&hex(g[libc::REG_RIP as usize] as u64));
            put(b" (handler ");
            put(&hex(host_signal as *const () as u64));
            put(b"), address ");
            put(&hex((*info).si_addr() as u64));
            put(b", rax ");
            put(&hex(g[libc::REG_RAX as usize] as u64));
            put(b", thread ");
            let mut name = [0u8; 16];
            libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr());
            put(&name[..name.iter().position(|&b| b == 0).unwrap_or(16)]);
            put(b"\n");
            libc::write(2, buf.as_ptr().cast(), n);
        }
        let prev = (*PREV.0.get()).get(sig as usize).copied().flatten();
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(sig, &prev.unwrap_or(dfl), std::ptr::null_mut());
        if (*info).si_code <= 0 || sig == libc::SIGTRAP {
            libc::raise(sig);
        }
    }
}

/// The signals the direct engine catches.
pub const SIGNALS: [i32; 7] =
    [libc::SIGSEGV, libc::SIGILL, libc::SIGTRAP, libc::SIGFPE, libc::SIGBUS, libc::SIGSYS, sys::TIMER_SIGNAL];

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// Once per process: check the host, capture CPUID, install the handlers.
fn init_process() -> Result<(), String> {
    static INIT: OnceLock<Result<(), String>> = OnceLock::new();
    INIT.get_or_init(|| {
        // SAFETY: getauxval has no preconditions.
        if unsafe { libc::getauxval(libc::AT_HWCAP2) } & sys::HWCAP2_FSGSBASE == 0 {
            return Err("FSGSBASE is not enabled for user space".into());
        }
        let _ = CPUID_TABLE.set(capture_cpuid());
        for sig in SIGNALS {
            // SAFETY: plain sigaction calls; the handler is our assembly entry; PREV[sig] is
            // written before the handler for `sig` is installed.
            unsafe {
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
                    return Err(os_err("sigaction"));
                }
                (*PREV.0.get())[sig as usize] = Some(old);
                let mut act: libc::sigaction = std::mem::zeroed();
                act.sa_sigaction = vmm_direct_signal as *const () as usize;
                act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART;
                libc::sigfillset(&mut act.sa_mask);
                if libc::sigaction(sig, &act, std::ptr::null_mut()) != 0 {
                    return Err(os_err("sigaction"));
                }
            }
        }
        Ok(())
    })
    .clone()
}

const ALTSTACK: usize = 64 * 1024;

/// Per-thread resources: sigaltstack, the interval timer; seccomp and CPUID faulting (which
/// stay for the thread's life).
pub(crate) struct Thread {
    stack: *mut c_void,
    timer: libc::timer_t,
}

thread_local! {
    static THREAD: RefCell<Option<std::rc::Rc<Thread>>> = const { RefCell::new(None) };
}

impl Thread {
    /// Everything the calling thread needs before the first guest instruction.
    pub(crate) fn prepare() -> Result<std::rc::Rc<Thread>, String> {
        init_process()?;
        THREAD.with(|t| {
            if let Some(th) = t.borrow().as_ref() {
                return Ok(th.clone());
            }
            let th = std::rc::Rc::new(Thread::new()?);
            *t.borrow_mut() = Some(th.clone());
            Ok(th)
        })
    }

    fn new() -> Result<Thread, String> {
        crate::native::install_seccomp().map_err(|e| e.to_string())?;
        // SAFETY: a fresh anonymous mapping.
        let stack = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ALTSTACK,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if stack == libc::MAP_FAILED {
            return Err(os_err("mmap sigaltstack"));
        }
        let ss = libc::stack_t { ss_sp: stack, ss_flags: 0, ss_size: ALTSTACK };
        // SAFETY: `ss` describes the mapping above, which lives as long as the thread.
        if unsafe { libc::sigaltstack(&ss, std::ptr::null_mut()) } != 0 {
            return Err(os_err("sigaltstack"));
        }
        // SAFETY: sigevent is plain data.
        let mut sev: libc::sigevent = unsafe { std::mem::zeroed() };
        sev.sigev_notify = libc::SIGEV_THREAD_ID;
        sev.sigev_signo = sys::TIMER_SIGNAL;
        // SAFETY: no preconditions.
        sev.sigev_notify_thread_id = unsafe { libc::gettid() };
        let mut timer: libc::timer_t = std::ptr::null_mut();
        // SAFETY: valid pointers.
        if unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut timer) } != 0 {
            return Err(os_err("timer_create"));
        }
        // CPUID faulting: the table was captured in init_process.
        // SAFETY: plain arch_prctl.
        let cpuid_faulting = unsafe { libc::syscall(libc::SYS_arch_prctl, sys::ARCH_SET_CPUID, 0) } == 0;
        if cpuid_faulting {
            CPUID_FAULTING.store(true, Ordering::SeqCst);
        } else {
            static ONCE: std::sync::Once = std::sync::Once::new();
            ONCE.call_once(|| {
                eprintln!(
                    "vmm: CPUID faulting is not available ({}): guest CPUID runs unvirtualized under the direct engine",
                    std::io::Error::last_os_error()
                )
            });
        }
        Ok(Thread { stack, timer })
    }

    /// Arms the periodic exit timer (`period_us` > 0) or disarms it (0).
    pub(crate) fn set_timer(&self, period_us: u64) -> Result<(), String> {
        let ts = |us: u64| libc::timespec { tv_sec: (us / 1_000_000) as libc::time_t, tv_nsec: ((us % 1_000_000) * 1000) as libc::c_long };
        let spec = libc::itimerspec { it_interval: ts(period_us), it_value: ts(period_us) };
        // SAFETY: our timer, a valid itimerspec.
        if unsafe { libc::timer_settime(self.timer, 0, &spec, std::ptr::null_mut()) } != 0 {
            return Err(os_err("timer_settime"));
        }
        Ok(())
    }
}

impl Drop for Thread {
    fn drop(&mut self) {
        // SAFETY: our timer and stack; the stack is disabled before it is freed.
        unsafe {
            libc::timer_delete(self.timer);
            let off = libc::stack_t { ss_sp: std::ptr::null_mut(), ss_flags: libc::SS_DISABLE, ss_size: 0 };
            libc::sigaltstack(&off, std::ptr::null_mut());
            libc::munmap(self.stack, ALTSTACK);
        }
    }
}

/// Tests: the process-wide resources of one guest run: RUN_LOCK, then the reservation of
/// the low 4 GiB at the default monitor base (waiting while another test's is still going).
#[cfg(test)]
pub(crate) fn reserve() -> (std::sync::MutexGuard<'static, ()>, crate::space::Reservation) {
    use crate::space::{Reservation, SpaceError, DEFAULT_MONITOR_BASE};
    let lock = RUN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..200 {
        match Reservation::new(DEFAULT_MONITOR_BASE) {
            Ok(r) => return (lock, r),
            Err(SpaceError::Busy) => std::thread::sleep(std::time::Duration::from_millis(20)),
            Err(e) => panic!("{e}"),
        }
    }
    panic!("the reservation stayed busy");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bt::{area, Bt};
    use crate::space::DEFAULT_MONITOR_BASE;
    use iced_x86::code_asm::CodeAssembler;
    use vmm_interp::state::{flags, SegReg};


    /// Code in the bt engine's TC (compatibility mode, GS = the vCPU region); returns its address.
    fn place(bt: &mut Bt, f: impl FnOnce(&mut CodeAssembler)) -> u32 {
        let mut a = CodeAssembler::new(32).unwrap();
        f(&mut a);
        a.ud2().unwrap();
        let len = a.assemble(0).unwrap().len() as u32;
        let at = bt.cache.alloc(len + 16).unwrap();
        let code = a.assemble(at as u64).unwrap();
        bt.area.write(at, &code);
        at
    }

    fn state(bt: &Bt, eip: u32, es: u16, ds: u16) -> EntryState {
        EntryState {
            gpr: [0, 0, 0, 0, bt.area.stack + area::STACK_SIZE, 0, 0, 0],
            eip,
            eflags: flags::IF | flags::FIXED1,
            sel: [es, sys::USER32_CS, sys::USER_DS, ds, 0, bt.vcpu_sel],
        }
    }

    /// An FXSAVE image: XMM0's and XMM7's low dwords, MXCSR, FCW, and ST0 (TOP = 7, the
    /// other registers empty) as a float, or an empty stack.
    fn image(x0: u32, x7: u32, mxcsr: u32, fcw: u16, st: Option<f32>) -> FpuState {
        let mut f = FpuState::reset();
        f.set_fcw(fcw);
        f.set_mxcsr(mxcsr);
        if let Some(st) = st {
            f.set_fsw(7 << 11);
            f.0[4] = 0x80; // abridged tag: physical register 7 (ST0) valid
            // ST0 as an 80-bit extended: sign, 15-bit exponent, explicit integer bit.
            let b = st.to_bits();
            let (sign, exp, frac) = ((b >> 31) as u16, ((b >> 23) & 0xff) as u16, (b & 0x7f_ffff) as u64);
            let mant = (1u64 << 63) | frac << 40;
            f.0[32..40].copy_from_slice(&mant.to_le_bytes());
            f.0[40..42].copy_from_slice(&((sign << 15) | (exp + 16383 - 127)).to_le_bytes());
        }
        f.0[160..164].copy_from_slice(&x0.to_le_bytes());
        f.0[160 + 7 * 16..164 + 7 * 16].copy_from_slice(&x7.to_le_bytes());
        f
    }

    /// The guest sees the x87/SSE state of the image it is entered with: after host code
    /// used the XMM registers and MXCSR, after the image's x87 part or XMM part changed
    /// (what the interpreter does), and when entries alternate between two images. And ES
    /// and DS hold the selectors of each entry, changed or not.
    #[test]
    fn each_entry_runs_with_its_images_fpu_state_and_its_selectors() {
        let (lock, res) = reserve();
        let _thread = Thread::prepare().unwrap();
        let mut bt = Bt::new(&res, DEFAULT_MONITOR_BASE).unwrap();
        bt.install(&lock);
        let s = bt.abi.scratch;
        // EAX = XMM0, ECX = XMM7, EDX = MXCSR, EBX = FCW, ESI = FSW (none of these
        // instructions changes the x87 state).
        let read_fpu = place(&mut bt, |a| {
            use iced_x86::code_asm::*;
            a.movd(eax, xmm0).unwrap();
            a.movd(ecx, xmm7).unwrap();
            a.stmxcsr(dword_ptr(s).gs()).unwrap();
            a.mov(edx, dword_ptr(s).gs()).unwrap();
            a.fnstcw(word_ptr(s).gs()).unwrap();
            a.movzx(ebx, word_ptr(s).gs()).unwrap();
            a.fnstsw(word_ptr(s).gs()).unwrap();
            a.movzx(esi, word_ptr(s).gs()).unwrap();
        });
        // EAX = ST0 as a float.
        let read_st0 = place(&mut bt, |a| {
            use iced_x86::code_asm::*;
            a.fst(dword_ptr(s).gs()).unwrap();
            a.mov(eax, dword_ptr(s).gs()).unwrap();
        });
        // EAX = the first dword of physical register 0 (empty or not), through FXSAVE.
        let read_r0 = place(&mut bt, |a| {
            use iced_x86::code_asm::*;
            a.mov(ebp, esp).unwrap();
            a.sub(esp, 528).unwrap();
            a.and(esp, -16).unwrap();
            a.fxsave(ptr(esp)).unwrap();
            a.mov(eax, dword_ptr(esp + 32)).unwrap();
            a.mov(esp, ebp).unwrap();
        });
        let r0 = |fpu: &mut FpuState| {
            let ex = enter(&lock, &state(&bt, read_r0, sys::USER_DS, sys::USER_DS), fpu);
            assert_eq!(ex.signal, libc::SIGILL, "{ex:?}");
            ex.gpr[0]
        };
        let run = |fpu: &mut FpuState| {
            let ex = enter(&lock, &state(&bt, read_fpu, sys::USER_DS, sys::USER_DS), fpu);
            assert_eq!(ex.signal, libc::SIGILL, "{ex:?}");
            let g = ex.gpr;
            (g[0], g[1], g[2], g[3] as u16, g[6] as u16)
        };
        let st0 = |fpu: &mut FpuState| {
            let ex = enter(&lock, &state(&bt, read_st0, sys::USER_DS, sys::USER_DS), fpu);
            assert_eq!(ex.signal, libc::SIGILL, "{ex:?}");
            f32::from_bits(ex.gpr[0])
        };
        let clobber = || {
            // SAFETY: only registers the C ABI has callers save.
            unsafe {
                std::arch::asm!("pcmpeqd xmm0, xmm0", "pcmpeqd xmm7, xmm7", out("xmm0") _, out("xmm7") _);
            }
        };
        // The host's control word and an empty stack: the landing leaves the x87 unit as
        // the guest left it, and the next entry finds it unchanged.
        let mut f = image(0x1234_5678, 0x9abc_def0, 0x5f80, 0x037f, None);
        f.set_fsw(0x0100); // C0
        let want = (0x1234_5678, 0x9abc_def0, 0x5f80, 0x037f, 0x0100);
        assert_eq!(run(&mut f), want);
        for _ in 0..3 {
            clobber();
            assert_eq!(run(&mut f), want, "after host code used XMM0 and XMM7");
        }
        // The x87 part changed in the image (as the interpreter changes it).
        f.set_fsw(0x4500);
        let want = (0x1234_5678, 0x9abc_def0, 0x5f80, 0x037f, 0x4500);
        assert_eq!(run(&mut f), want);
        clobber();
        assert_eq!(run(&mut f), want);
        // The contents of an empty register changed in the image.
        assert_eq!(r0(&mut f), 0);
        f.0[32..36].copy_from_slice(&0xdead_beef_u32.to_le_bytes());
        assert_eq!(r0(&mut f), 0xdead_beef);
        // Only XMM and MXCSR changed in the image.
        f.0[160..164].copy_from_slice(&0x0bad_cafe_u32.to_le_bytes());
        f.set_mxcsr(0x1f80);
        let want = (0x0bad_cafe, 0x9abc_def0, 0x1f80, 0x037f, 0x4500);
        assert_eq!(run(&mut f), want);
        // Another control word and a value on the stack (the landing reinitialises the
        // x87 unit for the host), and the two images in turn (two vCPUs, or a session's runs).
        let mut a = image(7, 8, 0x3f80, 0x027f, Some(1.5));
        let want_a = (7, 8, 0x3f80, 0x027f, 7 << 11);
        for _ in 0..3 {
            assert_eq!(run(&mut a), want_a);
            assert_eq!(st0(&mut a), 1.5);
            assert_eq!(run(&mut f), want);
            clobber();
        }
        // The value on the stack changed in the image.
        a.0[32..42].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0x80, 0x00, 0x40]); // 2.0
        assert_eq!(st0(&mut a), 2.0);

        // ES and DS: each entry's, whether it changes them or not. EAX, ECX = ES, DS; EDX =
        // the dword at ES:scratch, EBX = the one at DS:scratch (the vCPU region through its
        // selector, the flat segment at the same offset otherwise: a fault there).
        let read_sel = place(&mut bt, |a| {
            use iced_x86::code_asm::*;
            a.mov(eax, es).unwrap();
            a.mov(ecx, ds).unwrap();
        });
        for (e, d) in [(sys::USER_DS, bt.vcpu_sel), (sys::USER_DS, bt.vcpu_sel), (bt.vcpu_sel, sys::USER_DS), (bt.vcpu_sel, bt.vcpu_sel), (sys::USER_DS, sys::USER_DS)] {
            let ex = enter(&lock, &state(&bt, read_sel, e, d), &mut a);
            assert_eq!(ex.signal, libc::SIGILL, "{ex:?}");
            assert_eq!((ex.gpr[0] as u16, ex.gpr[1] as u16), (e, d));
        }
        bt.vw32(s, 0x5151_5151);
        let read_es = place(&mut bt, |a| {
            use iced_x86::code_asm::*;
            a.mov(eax, dword_ptr(s).es()).unwrap();
        });
        let read_ds = place(&mut bt, |a| {
            use iced_x86::code_asm::*;
            a.mov(eax, dword_ptr(s).ds()).unwrap();
        });
        for _ in 0..2 {
            let ex = enter(&lock, &state(&bt, read_es, bt.vcpu_sel, sys::USER_DS), &mut a);
            assert_eq!((ex.signal, ex.gpr[0]), (libc::SIGILL, 0x5151_5151), "{ex:?}");
            let ex = enter(&lock, &state(&bt, read_ds, sys::USER_DS, bt.vcpu_sel), &mut a);
            assert_eq!((ex.signal, ex.gpr[0]), (libc::SIGILL, 0x5151_5151), "{ex:?}");
            // The flat segment at offset `scratch`: page 0 is never mapped, a fault.
            let ex = enter(&lock, &state(&bt, read_ds, bt.vcpu_sel, sys::USER_DS), &mut a);
            assert_eq!((ex.signal, ex.eip), (libc::SIGSEGV, read_ds), "{ex:?}");
        }
        // FS: a null FS faults (#GP) at every entry, also when the previous exit left it
        // null (the landing then wrote the host's FS base under it); a non-null one reads.
        let read_fs = place(&mut bt, |a| {
            use iced_x86::code_asm::*;
            a.mov(eax, dword_ptr(s).fs()).unwrap();
        });
        let with_fs = |fs: u16| {
            let mut st = state(&bt, read_fs, sys::USER_DS, sys::USER_DS);
            st.sel[SegReg::Fs as usize] = fs;
            st
        };
        for fs in [0, 0, bt.vcpu_sel, 0, 0, bt.vcpu_sel, bt.vcpu_sel, 0] {
            let ex = enter(&lock, &with_fs(fs), &mut a);
            if fs == 0 {
                assert_eq!((ex.signal, ex.trapno, ex.eip), (libc::SIGSEGV, 13, read_fs), "{ex:?}");
            } else {
                assert_eq!((ex.signal, ex.gpr[0]), (libc::SIGILL, 0x5151_5151), "{ex:?}");
            }
            assert_eq!(ex.sel[SegReg::Fs as usize], fs);
        }
        restore_host_selectors(&lock);
        Bt::uninstall(&lock);
    }
}
