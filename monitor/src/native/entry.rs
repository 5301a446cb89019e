//! Entering 32-bit guest code and leaving it through a signal.
//!
//! * `vmm_native_enter` (64-bit, called from Rust): saves the callee-saved registers, the host
//!   RSP, FS/GS bases and selectors, DS/ES, MXCSR and the x87 control word into [`SHARED`], builds
//!   an IRETQ frame (SS=0x2b, ESP, EFLAGS, CS=0x23, EIP), loads DS/ES/FS/GS with 0x2b (flat, base 0),
//!   the eight guest GPRs, and `iretq`s into compatibility mode.
//! * `vmm_native_signal` (the handler of every signal we catch, SA_SIGINFO|SA_ONSTACK): looks at the
//!   interrupted CS in the ucontext before touching anything else. CS=0x23 (or, while a run is
//!   under way, RIP below 4 GiB: guest code that switched itself to 64-bit mode) means guest code: clear
//!   EFLAGS.AC and EFLAGS.NT (the kernel leaves the guest's AC and NT set in the handler; with CR0.AM AC would make any
//!   unaligned access of the handler fault, and NT would make the next IRETQ fault), restore the host FS and GS bases with `wrfsbase`/
//!   `wrgsbase` (FS inside the handler is the guest's flat segment), then tail-call
//!   [`guest_exit`] which records the guest state and rewrites the frame so that sigreturn resumes
//!   at `vmm_native_landing`. Otherwise the signal is the host's own: the timer signal is ignored
//!   (plain `ret`, no Rust, because it may interrupt `vmm_native_enter` after FS was loaded), any
//!   other goes to [`host_signal`].
//! * `vmm_native_landing` (64-bit, reached by sigreturn with RSP = saved host RSP and
//!   EFLAGS = 0x202): restores selectors, FS/GS bases, reinitialises the x87 unit and reloads the
//!   saved control words, pops the callee-saved registers and returns to the caller of
//!   `vmm_native_enter`.

use std::cell::UnsafeCell;
use std::ffi::c_void;
use std::mem::offset_of;
use std::sync::atomic::{compiler_fence, Ordering};

use super::sys;

/// State shared between Rust, the entry stub, the signal handler and the landing. Only the thread
/// that holds the runner's global lock (and that thread's signal handlers) touches it.
#[repr(C)]
pub(crate) struct Shared {
    /// guest registers to load (EAX ECX EDX EBX ESP EBP ESI EDI).
    pub in_gpr: [u32; 8],
    pub in_eip: u32,
    pub in_eflags: u32,
    /// host context saved by `vmm_native_enter`.
    pub host_rsp: u64,
    pub host_fsbase: u64,
    pub host_gsbase: u64,
    pub host_ds: u16,
    pub host_es: u16,
    pub host_fs: u16,
    pub host_gs: u16,
    pub host_mxcsr: u32,
    pub host_fcw: u16,
    pub _pad: u16,
    /// Nonzero while the thread holding the lock is about to run or runs guest code: then a
    /// signal at RIP < 4 GiB is the guest's even if CS is not 0x23 (guest code that far-jumped
    /// to the 64-bit selector).
    pub running: u32,
    pub _pad2: u32,
    /// What the signal handler found (valid when `exited` is set).
    pub exit: ExitRecord,
}

/// The raw facts of one exit, copied from the siginfo and the ucontext.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub(crate) struct ExitRecord {
    pub exited: u32,
    pub signal: i32,
    pub si_code: i32,
    pub gpr: [u32; 8],
    pub eip: u32,
    pub eflags: u32,
    pub cs: u16,
    pub trapno: u32,
    pub err: u32,
    pub cr2: u64,
    pub si_addr: u64,
}

pub(crate) struct SharedCell(UnsafeCell<Shared>);
// SAFETY: access is serialised by the runner's global mutex; the signal handler that writes it
// runs on the thread holding that mutex, while that thread is in guest code.
unsafe impl Sync for SharedCell {}

impl SharedCell {
    pub(crate) fn get(&self) -> *mut Shared {
        self.0.get()
    }
}

pub(crate) static SHARED: SharedCell = SharedCell(UnsafeCell::new(Shared {
    in_gpr: [0; 8],
    in_eip: 0,
    in_eflags: 0,
    host_rsp: 0,
    host_fsbase: 0,
    host_gsbase: 0,
    host_ds: 0,
    host_es: 0,
    host_fs: 0,
    host_gs: 0,
    host_mxcsr: 0,
    host_fcw: 0,
    _pad: 0,
    running: 0,
    _pad2: 0,
    exit: ExitRecord {
        exited: 0,
        signal: 0,
        si_code: 0,
        gpr: [0; 8],
        eip: 0,
        eflags: 0,
        cs: 0,
        trapno: 0,
        err: 0,
        cr2: 0,
        si_addr: 0,
    },
}));

std::arch::global_asm!(
    ".pushsection .text.vmm_native,\"ax\",@progbits",
    // ---------------------------------------------------------------- enter
    ".globl vmm_native_enter",
    ".hidden vmm_native_enter",
    ".type vmm_native_enter,@function",
    ".p2align 4",
    "vmm_native_enter:",
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
    "mov ax, ds",
    "mov [r11 + {host_ds}], ax",
    "mov ax, es",
    "mov [r11 + {host_es}], ax",
    "mov ax, fs",
    "mov [r11 + {host_fs}], ax",
    "mov ax, gs",
    "mov [r11 + {host_gs}], ax",
    "stmxcsr [r11 + {host_mxcsr}]",
    "fnstcw [r11 + {host_fcw}]",
    // IRETQ frame: SS, RSP, RFLAGS, CS, RIP
    "push {ds}",
    "mov eax, [r11 + {in_gpr} + 16]",
    "push rax",
    "mov eax, [r11 + {in_eflags}]",
    "push rax",
    "push {cs32}",
    "mov eax, [r11 + {in_eip}]",
    "push rax",
    "mov eax, {ds}",
    "mov ds, eax",
    "mov es, eax",
    "mov fs, eax",
    "mov gs, eax",
    "mov eax, [r11 + {in_gpr} + 0]",
    "mov ecx, [r11 + {in_gpr} + 4]",
    "mov edx, [r11 + {in_gpr} + 8]",
    "mov ebx, [r11 + {in_gpr} + 12]",
    "mov ebp, [r11 + {in_gpr} + 20]",
    "mov esi, [r11 + {in_gpr} + 24]",
    "mov edi, [r11 + {in_gpr} + 28]",
    "iretq",
    ".size vmm_native_enter, . - vmm_native_enter",
    // ---------------------------------------------------------------- signal handler
    ".globl vmm_native_signal",
    ".hidden vmm_native_signal",
    ".type vmm_native_signal,@function",
    ".p2align 4",
    "vmm_native_signal:",
    // rdi = signo, rsi = siginfo *, rdx = ucontext *; RSP on the sigaltstack.
    "cmp word ptr [rdx + {uc_cs}], {cs32}",
    "je 1f",
    "cmp dword ptr [rip + {shared} + {running}], 0",
    "je 2f",
    "mov rax, [rdx + {uc_rip}]",
    "shr rax, 32",
    "jnz 2f",
    "1:",
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
    ".size vmm_native_signal, . - vmm_native_signal",
    // ---------------------------------------------------------------- exit landing
    ".globl vmm_native_landing",
    ".hidden vmm_native_landing",
    ".type vmm_native_landing,@function",
    ".p2align 4",
    "vmm_native_landing:",
    "lea r11, [rip + {shared}]",
    "movzx eax, word ptr [r11 + {host_ds}]",
    "mov ds, eax",
    "movzx eax, word ptr [r11 + {host_es}]",
    "mov es, eax",
    // load the selectors first: loading a null selector may clear the base on this CPU
    "movzx eax, word ptr [r11 + {host_fs}]",
    "mov fs, eax",
    "movzx eax, word ptr [r11 + {host_gs}]",
    "mov gs, eax",
    "mov rax, [r11 + {host_fsbase}]",
    "wrfsbase rax",
    "mov rax, [r11 + {host_gsbase}]",
    "wrgsbase rax",
    "fninit",
    "fldcw [r11 + {host_fcw}]",
    "ldmxcsr [r11 + {host_mxcsr}]",
    // RFLAGS as the host's code expects it: in particular NT clear. rt_sigreturn does not
    // restore NT from the frame (it is not in Linux's FIX_EFLAGS), so a guest that set NT
    // would otherwise leave it set here, and the next IRETQ in 64-bit mode would #GP.
    "push 0x202",
    "popfq",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbx",
    "pop rbp",
    "ret",
    ".size vmm_native_landing, . - vmm_native_landing",
    ".popsection",
    shared = sym SHARED,
    guest_exit = sym guest_exit,
    host_signal = sym host_signal,
    host_rsp = const offset_of!(Shared, host_rsp),
    host_fsbase = const offset_of!(Shared, host_fsbase),
    host_gsbase = const offset_of!(Shared, host_gsbase),
    host_ds = const offset_of!(Shared, host_ds),
    host_es = const offset_of!(Shared, host_es),
    host_fs = const offset_of!(Shared, host_fs),
    host_gs = const offset_of!(Shared, host_gs),
    host_mxcsr = const offset_of!(Shared, host_mxcsr),
    host_fcw = const offset_of!(Shared, host_fcw),
    in_gpr = const offset_of!(Shared, in_gpr),
    in_eip = const offset_of!(Shared, in_eip),
    in_eflags = const offset_of!(Shared, in_eflags),
    running = const offset_of!(Shared, running),
    uc_rip = const sys::UC_RIP_OFFSET,
    ds = const sys::USER_DS,
    cs32 = const sys::USER32_CS,
    uc_cs = const sys::UC_CS_OFFSET,
    not_ac_nt = const !(sys::EFL_AC | sys::EFL_NT),
    timer_sig = const sys::TIMER_SIGNAL,
);

extern "C" {
    /// Enters the guest with the registers in `SHARED.in_*`; returns when the guest raised a
    /// signal that the handler turned into an exit (`SHARED.exit`).
    fn vmm_native_enter();
    /// The signal handler (assembly prologue). Not callable from Rust; only its address is used.
    fn vmm_native_signal();
    /// The exit landing. Not callable from Rust; only its address is used.
    fn vmm_native_landing();
}

/// Address of the signal handler, for `sigaction`.
pub(crate) fn handler_address() -> usize {
    vmm_native_signal as *const () as usize
}

/// Runs the guest described by `SHARED.in_*` until it raises a signal.
///
/// # Safety
/// The caller holds the runner lock, has filled `SHARED.in_*`, installed the handlers, a
/// sigaltstack on this thread, and mapped the guest memory.
pub(crate) unsafe fn enter() {
    compiler_fence(Ordering::SeqCst);
    // SAFETY: the stub follows the C ABI as seen from the caller: the landing restores the
    // callee-saved registers, RSP, DF=0, MXCSR and x87 control word and returns here. The
    // caller's preconditions make the guest's exit come back through the landing.
    unsafe { vmm_native_enter() };
    compiler_fence(Ordering::SeqCst);
}

/// Previously installed actions, for signals that do not come from guest code.
pub(crate) struct PrevActions(pub UnsafeCell<[Option<libc::sigaction>; 65]>);
// SAFETY: written once under `Once` before the handlers are installed, read-only afterwards
// (read by `host_signal`).
unsafe impl Sync for PrevActions {}
pub(crate) static PREV: PrevActions = PrevActions(UnsafeCell::new([None; 65]));

/// Guest-code signal: record the state, redirect the frame to the landing.
///
/// Runs in signal context on the sigaltstack with the host FS/GS bases restored and AC clear.
/// Async-signal-safe: no allocation, no locks, only loads and stores.
unsafe extern "C" fn guest_exit(sig: i32, info: *mut libc::siginfo_t, uc: *mut c_void) {
    let uc = uc.cast::<libc::ucontext_t>();
    // SAFETY: the kernel passes valid siginfo and ucontext pointers to an SA_SIGINFO handler;
    // SHARED is ours (the thread holds the runner lock, see `SharedCell`).
    unsafe {
        let g = &mut (*uc).uc_mcontext.gregs;
        let sh = SHARED.get();
        let saved = *g;
        let r = |i: i32| saved[i as usize] as u64;
        let e = &mut (*sh).exit;
        e.signal = sig;
        e.si_code = (*info).si_code;
        e.si_addr = (*info).si_addr() as u64;
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
        e.eflags = r(libc::REG_EFL) as u32;
        e.cs = r(libc::REG_CSGSFS) as u16;
        e.trapno = r(libc::REG_TRAPNO) as u32;
        e.err = r(libc::REG_ERR) as u32;
        e.cr2 = r(libc::REG_CR2);
        e.exited = 1;

        // Resume at the landing in 64-bit mode on the host stack.
        g[libc::REG_RIP as usize] = vmm_native_landing as *const () as usize as i64;
        g[libc::REG_RSP as usize] = (*sh).host_rsp as i64;
        g[libc::REG_EFL as usize] = (sys::EFL_FIXED1 | sys::EFL_IF) as i64;
        let csgsfs = r(libc::REG_CSGSFS) & 0x0000_ffff_ffff_0000;
        g[libc::REG_CSGSFS as usize] =
            (csgsfs | sys::USER64_CS as u64 | (sys::USER_DS as u64) << 48) as i64;
    }
}

/// A signal that did not interrupt guest code: the process's own fault. Reinstall the previous
/// action and let it happen again (faults re-execute; traps and sent signals are re-raised).
unsafe extern "C" fn host_signal(sig: i32, info: *mut libc::siginfo_t, _uc: *mut c_void) {
    // SAFETY: PREV is read-only after installation; sigaction and raise are async-signal-safe;
    // info is valid (SA_SIGINFO).
    unsafe {
        let prev = (*PREV.0.get()).get(sig as usize).copied().flatten();
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        let act = prev.unwrap_or(dfl);
        libc::sigaction(sig, &act, std::ptr::null_mut());
        let code = (*info).si_code;
        if code <= 0 || sig == libc::SIGTRAP {
            libc::raise(sig);
        }
    }
}
