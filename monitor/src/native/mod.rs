//! The native runner: the hardware oracle.
//!
//! [`run`] executes a user-level 32-bit snippet on the host CPU in compatibility mode (host
//! selectors 0x23 code, 0x2b data/stack) inside this process, with the registers and memory of a
//! [`NativeCase`], and returns the final registers, EFLAGS, memory and the exception raised.
//! It is what the interpreter is differential-tested against.
//!
//! # Execution environment
//!
//! * CS = 0x23 (flat 32-bit code), SS = DS = ES = FS = GS = 0x2b (flat data, base 0, 4 GiB).
//!   FS and GS are flat too, so `fs:`/`gs:` prefixes behave like `ds:`.
//! * EFLAGS: the caller's CF PF AF ZF SF TF DF OF NT RF AC ID are loaded by IRETQ; IF is 1 and
//!   IOPL is 0 (the host's: CPL 3 cannot change them). Other bits are ignored.
//! * Memory: only the case's regions are accessible below 4 GiB (plus whatever of the host lives
//!   there, normally nothing: a region that would overlap a host mapping is refused with
//!   [`NativeError::AddressInUse`]). Every accessible page is populated before the run.
//! * System calls from guest code (`int 0x80`, `syscall`, which AMD allows in compatibility mode)
//!   are blocked by a seccomp filter (`SECCOMP_RET_TRAP` for `AUDIT_ARCH_I386`) that the runner
//!   installs on each thread that calls [`run`] (with `PR_SET_NO_NEW_PRIVS`), and reported as an
//!   exception with vector 0x80 and signal SIGSYS.
//! * Not contained: guest code that far-transfers to the host's 64-bit selector 0x33 runs in
//!   64-bit mode and can reach the whole process. The runner limits the damage (its signals are
//!   still recognised as the guest's by RIP < 4 GiB, and the seccomp filter also traps system
//!   calls made from below 4 GiB) but case generators must not produce such transfers.
//!
//! # Exits: signal and trapno as observed on the development host
//!
//! (AMD EPYC, Linux 6.18, UMIP, FSGSBASE; see the tests in `monitor/tests/native.rs`.)
//!
//! | instruction / event | signal | si_code | trapno | REG_ERR | EIP reported | vector |
//! |---|---|---|---|---|---|---|
//! | `div` by zero, `idiv` overflow | SIGFPE | 1 (FPE_INTDIV) | 0 | 0 | faulting insn | #DE 0 |
//! | TF single step | SIGTRAP | 2 (TRAP_TRACE) | 1 | 0 | next insn | #DB 1 |
//! | `icebp` (F1) | SIGTRAP | 1 (TRAP_BRKPT) | 1 | 0 | **the icebp itself** (a trap on bare metal; likely the hypervisor) | #DB 1 |
//! | `int3` (CC), `int 3` (CD 03) | SIGTRAP | 128 (SI_KERNEL) | 3 | 0 | next insn | #BP 3 |
//! | `into` with OF=1, `int 4` (CD 04) | SIGSEGV | 128 | 4 | 0 | next insn | #OF 4 |
//! | `bound` out of range | SIGSEGV | 128 | 5 | 0 | faulting insn | #BR 5 |
//! | `ud2`, `sysenter` (AMD: #UD in long mode) | SIGILL | 2 (ILL_ILLOPN) | 6 | 0 | faulting insn | #UD 6 |
//! | `hlt`, `cli` (and `sti`, `in`, `out`, `mov cr`, per the probes) | SIGSEGV | 128 | 13 | 0 | faulting insn | #GP 13 |
//! | `int n` (n not 3, 4, 0x80) | SIGSEGV | 128 | 13 | (n<<3)\|2, e.g. 0x10a for 0x21, 0xa for `int 1` | faulting insn | #GP 13 |
//! | `mov ds, ax` with a bad selector (ax=0x1234, no LDT) | SIGSEGV | 128 | 13 | the selector, 0x1234 | faulting insn | #GP 13 |
//! | page fault | SIGSEGV | 1 (MAPERR, unmapped) or 2 (ACCERR) | 14 | raw: 7 write to RO, 4 read of PROT_NONE/unmapped, 6 write to PROT_NONE, 0x15 fetch from NX | faulting insn | #PF 14, cr2 = REG_CR2 |
//! | misaligned access with EFLAGS.AC=1 | SIGBUS | 1 (BUS_ADRALN) | 17 | 0 | faulting insn | #AC 17 |
//! | `int 0x80` | SIGSYS (seccomp) | 1 (SYS_SECCOMP) | 0 (stale) | 0 | next insn | 0x80 |
//! | `syscall` (AMD runs it in compatibility mode) | see below | | | | garbage | |
//!
//! `syscall` from 32-bit code never reaches a host system call (the seccomp filter), but Linux's
//! fast 32-bit system call path reads EBP from `[ESP]` and returns to the landing pad of the
//! 32-bit vDSO, which a 64-bit process does not have: with an unreadable `[ESP]` it ends as
//! SIGSEGV trapno 13, with a readable one as SIGSYS, in both cases at a meaningless EIP. Case
//! generators should not emit `syscall` (nor `sysenter`, nor `int 0x80`).
//!
//! `sgdt`, `sidt`, `sldt`, `smsw`, `str` do not fault: the host kernel emulates them (UMIP) with
//! dummy values. The mapping from signal to vector uses `trapno`, which Linux sets for every
//! hardware exception; see [`vector_of`]. REG_CR2 is stale for other exceptions: it is reported
//! in [`NativeException::cr2`] only for #PF.
//!
//! EFLAGS in the outcome is `REG_EFL` of the ucontext at the exit, raw. Bit 1 and IF (0x200) are
//! always set. **RF (0x10000) is set for faults** (#DE, #BR, #UD, #GP, #PF, #AC, and therefore
//! also at the normal end, the #GP of the sentinel `hlt`), and clear for traps (#BP, #OF, #DB
//! single step) and for SIGSYS. TF, DF and AC are reported as the guest left them. Compare with
//! RF masked (`sys::EFL_RF`).

//! # Implementation
//!
//! See `entry.rs` for the entry stub, the signal handler and the exit landing, `mem.rs` for the
//! reuse of the low mappings between runs. The runner is process-wide state: [`run`] serialises
//! callers with a global mutex. Each calling thread gets (once) a 64 KiB sigaltstack, a
//! `CLOCK_MONOTONIC` POSIX timer delivering [`sys::TIMER_SIGNAL`] to that thread only, and the
//! seccomp filter. The signal handlers (SIGSEGV, SIGILL, SIGTRAP, SIGFPE, SIGBUS, SIGSYS and the
//! timer signal) are installed once per process; a signal that did not interrupt guest code
//! reinstalls the previously installed action and happens again, so the process's own crashes
//! still crash normally.

mod entry;
mod mem;
pub mod sys;
pub mod tsc;

use std::cell::RefCell;
use std::sync::{Mutex, OnceLock};

use entry::{ExitRecord, SHARED};

/// Host protection of a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Prot {
    Read,
    ReadWrite,
    ReadExec,
    ReadWriteExec,
    None,
}

/// A range of guest memory. `addr` and `bytes.len()` are multiples of 4 KiB.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Region {
    pub addr: u32,
    pub bytes: Vec<u8>,
    pub prot: Prot,
}

/// Default timeout when [`NativeCase::timeout_ms`] is 0.
pub const DEFAULT_TIMEOUT_MS: u32 = 1000;

/// One snippet to run.
#[derive(Clone, Debug)]
pub struct NativeCase {
    pub regions: Vec<Region>,
    /// EAX ECX EDX EBX ESP EBP ESI EDI (x86 encoding order).
    pub gpr: [u32; 8],
    /// Arithmetic flags, TF, DF, NT, RF, AC, ID are honoured; IF and IOPL are the host's.
    pub eflags: u32,
    pub eip: u32,
    /// Address of the sentinel `hlt` (F4); a #GP(0) there is the normal end.
    pub stop_eip: u32,
    /// Wall-clock limit; 0 means [`DEFAULT_TIMEOUT_MS`].
    pub timeout_ms: u32,
}

/// An x86 exception raised by the snippet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NativeException {
    /// The x86 vector (0x80 for a blocked system call instruction).
    pub vector: u8,
    /// REG_ERR for vectors that push an error code (8, 10-14, 17), else 0. Raw: callers mask.
    pub error_code: u32,
    /// REG_CR2 for #PF, else 0.
    pub cr2: u32,
}

/// The final state of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NativeOutcome {
    /// EAX ECX EDX EBX ESP EBP ESI EDI.
    pub gpr: [u32; 8],
    /// The EIP the CPU reported: the faulting instruction for faults, the next one for traps;
    /// `stop_eip` at the normal end.
    pub eip: u32,
    /// REG_EFL at the exit, raw.
    pub eflags: u32,
    /// `None` when the sentinel `hlt` at `stop_eip` was reached.
    pub exception: Option<NativeException>,
    /// Final contents of each region, in the case's order (regions the guest cannot write,
    /// `Read`, `ReadExec` and `None`, are returned as given).
    pub memory: Vec<Vec<u8>>,
    /// Raw facts, for diagnostics.
    pub signal: i32,
    pub trapno: u32,
    pub si_code: i32,
    pub err: u32,
    pub cr2: u64,
    /// CS at the exit: 0x23, unless the guest switched to another code segment.
    pub cs: u16,
}

/// Why a case could not be run.
#[derive(Debug, thiserror::Error)]
pub enum NativeError {
    #[error("region {index} at {addr:#x} (length {len:#x}) is not page-aligned")]
    Misaligned { index: usize, addr: u32, len: usize },
    #[error("region {index} at {addr:#x} is empty")]
    EmptyRegion { index: usize, addr: u32 },
    #[error("region {index} at {addr:#x} (length {len:#x}) extends past 4 GiB")]
    OutOfRange { index: usize, addr: u32, len: usize },
    #[error("regions {a} and {b} overlap")]
    Overlap { a: usize, b: usize },
    #[error("region {index}: address {addr:#x} is already mapped by the host process")]
    AddressInUse { index: usize, addr: u32 },
    #[error("{op} at {addr:#x} failed: {source}")]
    Sys {
        op: &'static str,
        addr: u32,
        source: std::io::Error,
    },
    #[error("setup failed: {what}: {source}")]
    Setup {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("the host cannot run the native runner: {0}")]
    Unsupported(String),
    #[error("timeout after {ms} ms at eip {eip:#x}")]
    Timeout { ms: u32, eip: u32, gpr: [u32; 8] },
    #[error("unexpected signal {signal} (si_code {si_code}, trapno {trapno}) at eip {eip:#x}")]
    UnexpectedSignal {
        signal: i32,
        si_code: i32,
        trapno: u32,
        eip: u32,
    },
    #[error("internal error: {0}")]
    Internal(&'static str),
}

/// Protects the process-wide state: `entry::SHARED`, the signal handlers' use of it, and the
/// low mappings.
static RUNNER: Mutex<mem::Pages> = Mutex::new(mem::Pages::new());

/// Size of each thread's sigaltstack.
const ALTSTACK: usize = 64 * 1024;

fn last_err(what: &'static str) -> NativeError {
    NativeError::Setup {
        what,
        source: std::io::Error::last_os_error(),
    }
}

/// Per-thread resources: sigaltstack and timeout timer (and the seccomp filter, which cannot be
/// removed).
struct ThreadCtx {
    stack: *mut libc::c_void,
    timer: libc::timer_t,
}

impl ThreadCtx {
    fn new() -> Result<Self, NativeError> {
        install_seccomp()?;
        // SAFETY: a fresh anonymous mapping anywhere the kernel likes.
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
            return Err(last_err("mmap sigaltstack"));
        }
        let ss = libc::stack_t {
            ss_sp: stack,
            ss_flags: 0,
            ss_size: ALTSTACK,
        };
        // SAFETY: `ss` describes the mapping above, which lives until `drop` disables it.
        if unsafe { libc::sigaltstack(&ss, std::ptr::null_mut()) } != 0 {
            let e = last_err("sigaltstack");
            // SAFETY: the mapping is ours and unused.
            unsafe { libc::munmap(stack, ALTSTACK) };
            return Err(e);
        }
        // SAFETY: sigevent is plain data; all-zero is a valid start.
        let mut sev: libc::sigevent = unsafe { std::mem::zeroed() };
        sev.sigev_notify = libc::SIGEV_THREAD_ID;
        sev.sigev_signo = sys::TIMER_SIGNAL;
        // SAFETY: gettid has no preconditions.
        sev.sigev_notify_thread_id = unsafe { libc::gettid() };
        let mut timer: libc::timer_t = std::ptr::null_mut();
        // SAFETY: valid pointers to a sigevent and a timer_t.
        if unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut timer) } != 0 {
            let e = last_err("timer_create");
            // SAFETY: disable and free the stack installed above.
            unsafe {
                let off = libc::stack_t {
                    ss_sp: std::ptr::null_mut(),
                    ss_flags: libc::SS_DISABLE,
                    ss_size: 0,
                };
                libc::sigaltstack(&off, std::ptr::null_mut());
                libc::munmap(stack, ALTSTACK);
            }
            return Err(e);
        }
        Ok(ThreadCtx { stack, timer })
    }

    /// Arms (`ms` > 0) or disarms (`ms` = 0) the timeout timer.
    fn set_timer(&self, ms: u32) -> Result<(), NativeError> {
        let ts = |ms: u32| libc::timespec {
            tv_sec: (ms / 1000) as libc::time_t,
            tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long,
        };
        let spec = libc::itimerspec {
            it_interval: ts(if ms == 0 { 0 } else { 1 }),
            it_value: ts(ms),
        };
        // SAFETY: the timer is ours; `spec` is a valid itimerspec.
        if unsafe { libc::timer_settime(self.timer, 0, &spec, std::ptr::null_mut()) } != 0 {
            return Err(last_err("timer_settime"));
        }
        Ok(())
    }
}

impl Drop for ThreadCtx {
    fn drop(&mut self) {
        // SAFETY: the timer and the stack are ours; the stack is disabled before it is freed
        // (no guest code runs on this thread any more: the thread is exiting).
        unsafe {
            libc::timer_delete(self.timer);
            let mut cur: libc::stack_t = std::mem::zeroed();
            libc::sigaltstack(std::ptr::null(), &mut cur);
            if cur.ss_sp == self.stack {
                let off = libc::stack_t {
                    ss_sp: std::ptr::null_mut(),
                    ss_flags: libc::SS_DISABLE,
                    ss_size: 0,
                };
                libc::sigaltstack(&off, std::ptr::null_mut());
            }
            libc::munmap(self.stack, ALTSTACK);
        }
    }
}

thread_local! {
    static THREAD: RefCell<Option<ThreadCtx>> = const { RefCell::new(None) };
}

/// Installs, on the calling thread, a seccomp filter that turns into SIGSYS every i386 system
/// call and every system call made from code below 4 GiB (guest code that switched itself to
/// 64-bit mode). Only guest code does either (the host is a position-independent executable
/// mapped above 4 GiB), so the host is not affected.
pub(crate) fn install_seccomp() -> Result<(), NativeError> {
    let f = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    let mut prog = [
        /* 0 */ f(sys::BPF_LD_W_ABS, 0, 0, sys::SECCOMP_DATA_ARCH),
        /* 1 */ f(sys::BPF_JMP_JEQ_K, 2, 0, sys::AUDIT_ARCH_I386), // i386: trap
        /* 2 */ f(sys::BPF_LD_W_ABS, 0, 0, sys::SECCOMP_DATA_IP_HI),
        /* 3 */ f(sys::BPF_JMP_JEQ_K, 0, 1, 0), // IP below 4 GiB: trap
        /* 4 */ f(sys::BPF_RET_K, 0, 0, sys::SECCOMP_RET_TRAP),
        /* 5 */ f(sys::BPF_RET_K, 0, 0, sys::SECCOMP_RET_ALLOW),
    ];
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: plain prctl calls; `fprog` points at a valid filter for the duration of the call.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(last_err("PR_SET_NO_NEW_PRIVS"));
        }
        if libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &fprog as *const _,
        ) != 0
        {
            return Err(last_err("PR_SET_SECCOMP"));
        }
    }
    Ok(())
}

/// Once per process: check the host, install the signal handlers.
fn init_process() -> Result<(), NativeError> {
    static INIT: OnceLock<Result<(), String>> = OnceLock::new();
    INIT.get_or_init(|| {
        // SAFETY: getauxval has no preconditions.
        let hwcap2 = unsafe { libc::getauxval(libc::AT_HWCAP2) };
        if hwcap2 & sys::HWCAP2_FSGSBASE == 0 {
            return Err("FSGSBASE is not enabled for user space".into());
        }
        if sys::TIMER_SIGNAL < libc::SIGRTMIN() || sys::TIMER_SIGNAL > libc::SIGRTMAX() {
            return Err("the timer signal is outside the real-time range".into());
        }
        for sig in [
            libc::SIGSEGV,
            libc::SIGILL,
            libc::SIGTRAP,
            libc::SIGFPE,
            libc::SIGBUS,
            libc::SIGSYS,
            sys::TIMER_SIGNAL,
        ] {
            // SAFETY: sigaction is plain data; the handler is our assembly entry, valid for the
            // life of the process; PREV is written here only, before the handler can read it
            // (the handler reads PREV[sig] only after it is installed for `sig`).
            unsafe {
                let mut act: libc::sigaction = std::mem::zeroed();
                act.sa_sigaction = entry::handler_address();
                act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART;
                libc::sigfillset(&mut act.sa_mask);
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
                    return Err(format!(
                        "sigaction({sig}): {}",
                        std::io::Error::last_os_error()
                    ));
                }
                (*entry::PREV.0.get())[sig as usize] = Some(old);
                if libc::sigaction(sig, &act, std::ptr::null_mut()) != 0 {
                    return Err(format!(
                        "sigaction({sig}): {}",
                        std::io::Error::last_os_error()
                    ));
                }
            }
        }
        Ok(())
    })
    .clone()
    .map_err(NativeError::Unsupported)
}

fn validate(case: &NativeCase) -> Result<(), NativeError> {
    let page = sys::PAGE as usize;
    for (index, r) in case.regions.iter().enumerate() {
        let len = r.bytes.len();
        if len == 0 {
            return Err(NativeError::EmptyRegion {
                index,
                addr: r.addr,
            });
        }
        if (r.addr as usize | len) & (page - 1) != 0 {
            return Err(NativeError::Misaligned {
                index,
                addr: r.addr,
                len,
            });
        }
        if r.addr as u64 + len as u64 > 1 << 32 {
            return Err(NativeError::OutOfRange {
                index,
                addr: r.addr,
                len,
            });
        }
    }
    for (a, ra) in case.regions.iter().enumerate() {
        for (b, rb) in case.regions.iter().enumerate().skip(a + 1) {
            let (sa, ea) = (ra.addr as u64, ra.addr as u64 + ra.bytes.len() as u64);
            let (sb, eb) = (rb.addr as u64, rb.addr as u64 + rb.bytes.len() as u64);
            if sa < eb && sb < ea {
                return Err(NativeError::Overlap { a, b });
            }
        }
    }
    Ok(())
}

/// The EFLAGS bits a case may set.
const EFLAGS_IN: u32 = sys::EFL_CF
    | sys::EFL_PF
    | sys::EFL_AF
    | sys::EFL_ZF
    | sys::EFL_SF
    | sys::EFL_TF
    | sys::EFL_DF
    | sys::EFL_OF
    | sys::EFL_NT
    | sys::EFL_RF
    | sys::EFL_AC
    | sys::EFL_ID;

/// Runs one case natively. See the module documentation.
pub fn run(case: &NativeCase) -> Result<NativeOutcome, NativeError> {
    validate(case)?;
    init_process()?;
    THREAD
        .try_with(|t| run_on_thread(t, case))
        .map_err(|_| NativeError::Internal("run() called while the thread is exiting"))?
}

fn run_on_thread(
    t: &RefCell<Option<ThreadCtx>>,
    case: &NativeCase,
) -> Result<NativeOutcome, NativeError> {
    {
        let mut t = t
            .try_borrow_mut()
            .map_err(|_| NativeError::Internal("reentrant run()"))?;
        if t.is_none() {
            *t = Some(ThreadCtx::new()?);
        }
        let ctx = t.as_ref().ok_or(NativeError::Internal("thread context"))?;
        let mut pages = RUNNER.lock().unwrap_or_else(|e| e.into_inner());
        pages.prepare(&case.regions)?;
        let exit = run_locked(ctx, case)?;
        drop_guard_after(exit, case, pages)
    }
}

fn run_locked(ctx: &ThreadCtx, case: &NativeCase) -> Result<ExitRecord, NativeError> {
    let timeout = if case.timeout_ms == 0 {
        DEFAULT_TIMEOUT_MS
    } else {
        case.timeout_ms
    };
    // SAFETY: we hold RUNNER, so no other thread uses SHARED.
    unsafe {
        let sh = SHARED.get();
        (*sh).in_gpr = case.gpr;
        (*sh).in_eip = case.eip;
        (*sh).in_eflags = (case.eflags & EFLAGS_IN) | sys::EFL_FIXED1 | sys::EFL_IF;
        (*sh).exit = ExitRecord::default();
    }
    ctx.set_timer(timeout)?;
    // SAFETY: the lock is held, SHARED is filled, handlers and this thread's sigaltstack are
    // installed, the memory is prepared.
    unsafe {
        std::ptr::write_volatile(std::ptr::addr_of_mut!((*SHARED.get()).running), 1);
        entry::enter();
        std::ptr::write_volatile(std::ptr::addr_of_mut!((*SHARED.get()).running), 0);
    }
    ctx.set_timer(0)?;
    // SAFETY: the lock is held; the handler wrote `exit` before the landing returned.
    let exit = unsafe { (*SHARED.get()).exit };
    if exit.exited == 0 {
        return Err(NativeError::Internal(
            "returned from the guest without an exit record",
        ));
    }
    Ok(exit)
}

fn drop_guard_after(
    exit: ExitRecord,
    case: &NativeCase,
    pages: std::sync::MutexGuard<'_, mem::Pages>,
) -> Result<NativeOutcome, NativeError> {
    let memory = case
        .regions
        .iter()
        .map(|r| {
            if r.prot.writable() {
                // SAFETY: the region is mapped readable by us (lock held), nothing else aliases it.
                unsafe { std::slice::from_raw_parts(r.addr as usize as *const u8, r.bytes.len()) }
                    .to_vec()
            } else {
                r.bytes.clone()
            }
        })
        .collect();
    drop(pages);
    if exit.signal == sys::TIMER_SIGNAL {
        return Err(NativeError::Timeout {
            ms: if case.timeout_ms == 0 {
                DEFAULT_TIMEOUT_MS
            } else {
                case.timeout_ms
            },
            eip: exit.eip,
            gpr: exit.gpr,
        });
    }
    let exception = match vector_of(exit.signal, exit.trapno) {
        Some(vector) => {
            let error_code = if has_error_code(vector) { exit.err } else { 0 };
            let cr2 = if vector == 14 { exit.cr2 as u32 } else { 0 };
            if vector == 13 && error_code == 0 && exit.eip == case.stop_eip {
                None
            } else {
                Some(NativeException {
                    vector,
                    error_code,
                    cr2,
                })
            }
        }
        None => {
            return Err(NativeError::UnexpectedSignal {
                signal: exit.signal,
                si_code: exit.si_code,
                trapno: exit.trapno,
                eip: exit.eip,
            })
        }
    };
    Ok(NativeOutcome {
        gpr: exit.gpr,
        eip: exit.eip,
        eflags: exit.eflags,
        exception,
        memory,
        signal: exit.signal,
        trapno: exit.trapno,
        si_code: exit.si_code,
        err: exit.err,
        cr2: exit.cr2,
        cs: exit.cs,
    })
}

/// Whether the x86 exception `vector` pushes an error code.
pub fn has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21)
}

/// The x86 vector of an exit: Linux records the hardware vector in `trapno` for every exception
/// it turns into SIGSEGV, SIGBUS, SIGILL, SIGFPE or SIGTRAP; SIGSYS comes from the seccomp filter
/// (a system call instruction) and is reported as vector 0x80.
pub fn vector_of(signal: i32, trapno: u32) -> Option<u8> {
    match signal {
        libc::SIGSYS => Some(0x80),
        libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE | libc::SIGTRAP
            if trapno < 32 =>
        {
            Some(trapno as u8)
        }
        _ => None,
    }
}
