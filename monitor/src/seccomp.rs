//! The allow-list seccomp filter the `direct` engine runs under once set up (ARCHITECTURE.md
//! section 9, after Firecracker).
//!
//! Guest user code that runs directly can execute `int 0x80`, `sysenter` and `syscall`, and can
//! far-jump to the host's 64-bit code selector. The first filter (installed before the first
//! guest instruction, `native::install_seccomp`) already turns every i386 system call and every
//! system call made from below 4 GiB (guest memory) into SIGSYS, which the monitor handles as a
//! guest event. This second filter, installed when setup is over, limits what is left: a system
//! call from the monitor's own code (above 4 GiB, x86-64 ABI) is allowed only if it is one of
//! the few the run loop needs; any other returns EPERM (not a kill, so that a path we did not
//! foresee fails with an error message instead of a silent death). A guest that escaped into
//! 64-bit code and tried to reuse the monitor's code for `execve`, `openat` or `socket` gets
//! EPERM.
//!
//! Filters stack: for i386 calls and calls from below 4 GiB this one returns TRAP too, so the
//! guest's system calls keep arriving as SIGSYS.
//!
//! `unsafe`: the `prctl` that installs the filter.

use crate::native::sys;

/// System calls the run loop makes after setup (found with strace on the test guests and
/// reviewed): memory management (the shadow MMU's mmap/munmap, the allocator), signals (the
/// exit path's rt_sigreturn; the handler's re-raise of a fault that is the host's own), the
/// interval timer, sleeping in HLT and waiting for input, console I/O and terminal
/// restoration, modify_ldt for the shadow descriptors, and exit.
const ALLOWED: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_readv,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_pselect6,
    libc::SYS_ioctl,
    libc::SYS_fcntl,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_modify_ldt,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_tgkill,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_timer_settime,
    libc::SYS_timer_gettime,
    libc::SYS_timer_delete,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_getrandom,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const SECCOMP_DATA_NR: u32 = 0;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const BPF_JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K

/// The filter program.
fn program() -> Vec<libc::sock_filter> {
    let f = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    let n = ALLOWED.len();
    let mut p = vec![
        // Not x86-64 (i386): the guest's, trap.
        f(sys::BPF_LD_W_ABS, 0, 0, sys::SECCOMP_DATA_ARCH),
        f(sys::BPF_JMP_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        f(sys::BPF_RET_K, 0, 0, sys::SECCOMP_RET_TRAP),
        // From below 4 GiB (guest memory): trap.
        f(sys::BPF_LD_W_ABS, 0, 0, sys::SECCOMP_DATA_IP_HI),
        f(sys::BPF_JMP_JEQ_K, 0, 1, 0),
        f(sys::BPF_RET_K, 0, 0, sys::SECCOMP_RET_TRAP),
        // The x32 ABI: refused.
        f(sys::BPF_LD_W_ABS, 0, 0, SECCOMP_DATA_NR),
        f(BPF_JGE_K, 0, 1, X32_SYSCALL_BIT),
        f(sys::BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | libc::EPERM as u32),
    ];
    // One comparison per allowed call: equal jumps to the ALLOW at the end.
    for (i, nr) in ALLOWED.iter().enumerate() {
        let to_allow = (n - i) as u8; // skip the remaining comparisons and the EPERM
        p.push(f(sys::BPF_JMP_JEQ_K, to_allow, 0, *nr as u32));
    }
    p.push(f(sys::BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | libc::EPERM as u32));
    p.push(f(sys::BPF_RET_K, 0, 0, sys::SECCOMP_RET_ALLOW));
    p
}

/// Install the allow-list filter on the calling thread (and, with no_new_privs already set by
/// the first filter, for good). Call it when setup is over.
pub fn lock_down() -> std::io::Result<()> {
    let mut prog = program();
    let fprog = libc::sock_fprog { len: prog.len() as u16, filter: prog.as_mut_ptr() };
    // SAFETY: plain prctl calls; `fprog` points at a valid filter for the duration of the call.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &fprog as *const _) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run the filter program on a (arch, nr, ip) triple, as the kernel would.
    fn eval(arch: u32, nr: u32, ip: u64) -> u32 {
        let data = |k: u32| match k {
            SECCOMP_DATA_NR => nr,
            x if x == sys::SECCOMP_DATA_ARCH => arch,
            x if x == sys::SECCOMP_DATA_IP_HI => (ip >> 32) as u32,
            _ => panic!("unexpected load {k}"),
        };
        let p = program();
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = p[pc];
            match i.code {
                c if c == sys::BPF_LD_W_ABS => acc = data(i.k),
                c if c == sys::BPF_JMP_JEQ_K => {
                    pc += if acc == i.k { i.jt as usize } else { i.jf as usize };
                }
                BPF_JGE_K => pc += if acc >= i.k { i.jt as usize } else { i.jf as usize },
                c if c == sys::BPF_RET_K => return i.k,
                c => panic!("unexpected opcode {c:#x}"),
            }
            pc += 1;
        }
    }

    #[test]
    fn allowed_calls_from_the_monitor_pass() {
        for nr in ALLOWED {
            assert_eq!(eval(AUDIT_ARCH_X86_64, *nr as u32, 0x5555_0000_1000), sys::SECCOMP_RET_ALLOW, "{nr}");
        }
    }

    #[test]
    fn other_calls_get_eperm() {
        for nr in [libc::SYS_execve, libc::SYS_openat, libc::SYS_socket, libc::SYS_clone, libc::SYS_ptrace] {
            assert_eq!(eval(AUDIT_ARCH_X86_64, nr as u32, 0x5555_0000_1000), SECCOMP_RET_ERRNO | libc::EPERM as u32);
        }
        assert_eq!(eval(AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 1, 0x5555_0000_1000), SECCOMP_RET_ERRNO | libc::EPERM as u32);
    }

    #[test]
    fn guest_calls_trap() {
        // int 0x80 from guest code: i386 arch.
        assert_eq!(eval(sys::AUDIT_ARCH_I386, 1, 0x1000), sys::SECCOMP_RET_TRAP);
        // syscall from guest code that switched to 64-bit mode: IP below 4 GiB.
        assert_eq!(eval(AUDIT_ARCH_X86_64, libc::SYS_write as u32, 0x0804_8000), sys::SECCOMP_RET_TRAP);
    }
}
