//! `vmm bench direct`: the cost of the direct engine's exits against the interpreter, measured
//! in one run on small guests built here (flat protected mode, a GDT, an IDT and a TSS):
//!
//! * **trap-and-emulate**: a guest kernel loop of CLI (each one a #GP exit emulated by the
//!   interpreter under `direct`);
//! * **hidden page fault**: a guest kernel (paging off) touching fresh pages (each fault
//!   filled by the shadow MMU with an mmap of the memfd; counted by the engine);
//! * **system call**: guest user code doing `int 0x80` to a kernel handler that IRETs back
//!   (SIGSYS under seccomp, then INT 0x80 and IRET by the interpreter; with `--kernel-engine
//!   direct` the handler runs natively too).
//!
//! Each cost is `(t(N) - t(0)) / N` (the median of three runs), so setup is excluded.

use iced_x86::code_asm::*;
use vmm_monitor::engine::EngineKind;

use super::kernel::{asm, counted_loop, exit_code, run_once, run_once_with, CODE, HANDLER, RAM, TOUCH, USER, USTACK};
use vmm_monitor::engine::RunOptions;

/// Cost per operation: (t(n) - t(0)) / ops(n), median of three; and the hidden faults of a run.
fn cost(build: &dyn Fn(u32) -> [Vec<u8>; 3], n: u32, k: EngineKind, u: EngineKind, per_fault: bool) -> Result<f64, String> {
    let mut v = Vec::new();
    for _ in 0..3 {
        let [a0, b0, c0] = build(0);
        let r0 = run_once(&a0, &b0, &c0, k, u)?;
        let [a, b, c] = build(n);
        let r = run_once(&a, &b, &c, k, u)?;
        let (t0, t, f0, f) = (r0.wall, r.wall, r0.stats.hidden_faults, r.stats.hidden_faults);
        let ops = if per_fault { f.saturating_sub(f0).max(1) as f64 } else { n as f64 };
        v.push((t - t0).max(0.0) / ops);
    }
    Ok(super::median(v))
}

pub fn run(scale: f64) -> Result<(), String> {
    use EngineKind::{Direct, Interp};
    let n = |base: f64| ((base * scale) as u32).max(10);

    let cli = |iters: u32| counted_loop(iters, |a, _| a.cli(), |_, _| Ok(()));
    let touch = |pages: u32| {
        [
            asm(CODE, |a| {
                let mut top = a.create_label();
                let mut done = a.create_label();
                a.mov(ecx, pages)?;
                a.mov(edi, TOUCH)?;
                a.jecxz(done)?;
                a.set_label(&mut top)?;
                a.mov(dword_ptr(edi), ecx)?;
                a.add(edi, 0x1000)?;
                a.dec(ecx)?;
                a.jnz(top)?;
                a.set_label(&mut done)?;
                exit_code(a)
            }),
            vec![],
            vec![],
        ]
    };
    let syscall = |calls: u32| {
        [
            asm(CODE, |a| {
                a.mov(ax, 0x23u32)?;
                a.mov(ds, ax)?;
                a.mov(es, ax)?;
                a.mov(ecx, calls)?;
                a.push(0x23u32)?;
                a.push(USTACK)?;
                a.push(0x202u32)?;
                a.push(0x1bu32)?;
                a.push(USER)?;
                a.iretd()
            }),
            asm(HANDLER, |a| {
                let mut out = a.create_label();
                a.test(ecx, ecx)?;
                a.jz(out)?;
                a.iretd()?;
                a.set_label(&mut out)?;
                exit_code(a)
            }),
            asm(USER, |a| {
                let mut top = a.create_label();
                let mut last = a.create_label();
                a.jecxz(last)?;
                a.set_label(&mut top)?;
                a.int(0x80)?;
                a.dec(ecx)?;
                a.jnz(top)?;
                a.set_label(&mut last)?;
                a.int(0x80)
            }),
        ]
    };

    let pages = n(4000.0).min(((RAM as u32 - TOUCH) >> 12) - 1);
    let rows: Vec<(&str, f64, f64, &str)> = vec![
        ("trap-and-emulate exit (kernel CLI)", cost(&cli, n(20000.0), Direct, Direct, false)?, cost(&cli, n(20000.0), Interp, Interp, false)?, "per CLI"),
        ("hidden page fault (kernel, paging off)", cost(&touch, pages, Direct, Direct, true)?, cost(&touch, pages, Interp, Interp, false)?, "direct: per hidden fault (maps a run of pages); interp: per page touched"),
        ("first touch of a page (kernel, paging off)", cost(&touch, pages, Direct, Direct, false)?, cost(&touch, pages, Interp, Interp, false)?, "per page touched"),
        ("system call, user direct, kernel interp", cost(&syscall, n(10000.0), Interp, Direct, false)?, cost(&syscall, n(10000.0), Interp, Interp, false)?, "int 0x80 + IRET"),
        ("system call, user and kernel direct", cost(&syscall, n(10000.0), Direct, Direct, false)?, cost(&syscall, n(10000.0), Interp, Interp, false)?, "int 0x80 + IRET"),
    ];
    println!("{:<42} {:>12} {:>12} {:>10}  note", "measurement", "direct (us)", "interp (us)", "interp/dir");
    for (what, d, i, note) in rows {
        println!("{what:<42} {:>12.3} {:>12.3} {:>10.2}  {note}", d * 1e6, i * 1e6, i / d.max(1e-12));
    }

    // The system call with the kernel translated (the kernel loops under bt, direct, interp
    // and native are `vmm bench bt`): with adaptive user-mode translation (the default: the
    // loop's page becomes hot and its `int 0x80` a callout) and without (every call a signal),
    // against a native system call of this host (getppid, 64-bit).
    use EngineKind::Bt;
    let no_adaptive = |calls: u32| -> Result<f64, String> {
        let mut v = Vec::new();
        for _ in 0..3 {
            let opts = RunOptions { kernel_engine: Bt, user_engine: Direct, adaptive_user: false, ..RunOptions::default() };
            let [a0, b0, c0] = syscall(0);
            let r0 = run_once_with(&a0, &b0, &c0, opts.clone())?;
            let [a, b, c] = syscall(calls);
            let r = run_once_with(&a, &b, &c, opts)?;
            v.push((r.wall - r0.wall).max(0.0) / calls as f64);
        }
        v.sort_by(|a, b| a.total_cmp(b));
        Ok(v[1])
    };
    let native = {
        let mut v = Vec::new();
        for _ in 0..3 {
            let m = 200_000;
            let t = std::time::Instant::now();
            for _ in 0..m {
                std::hint::black_box(std::os::unix::process::parent_id());
            }
            v.push(t.elapsed().as_secs_f64() / m as f64);
        }
        v.sort_by(|a, b| a.total_cmp(b));
        v[1]
    };
    let rows: Vec<(&str, [f64; 3], &str)> = vec![(
        "system call, user direct",
        [
            cost(&syscall, n(10000.0), Bt, Direct, false)?,
            cost(&syscall, n(10000.0), Direct, Direct, false)?,
            cost(&syscall, n(10000.0), Interp, Interp, false)?,
        ],
        "int 0x80 + IRET (interp: both interp)",
    )];
    println!();
    println!("{:<42} {:>12} {:>12} {:>12}  note", "measurement (kernel engine)", "bt (us)", "direct (us)", "interp (us)");
    for (what, [b, d, i], note) in rows {
        println!("{what:<42} {:>12.4} {:>12.4} {:>12.4}  {note}", b * 1e6, d * 1e6, i * 1e6);
    }
    let adaptive = cost(&syscall, n(10000.0), Bt, Direct, false)?;
    let trapping = no_adaptive(n(10000.0))?;
    println!();
    println!("{:<42} {:>12} {:>12}  note", "system call round trip, kernel bt", "us", "x native");
    for (what, t, note) in [
        ("user direct, adaptive (hot page translated)", adaptive, "int 0x80 a callout, no signal (the default)"),
        ("user direct, --no-adaptive-user", trapping, "int 0x80 a host signal (SIGSYS) each time"),
        ("native Linux system call (getppid)", native, "this host, 64-bit"),
    ] {
        println!("{what:<42} {:>12.3} {:>12.1}  {note}", t * 1e6, t / native.max(1e-12));
    }
    println!("goal (issue: within 3x of native): {}", if adaptive <= 3.0 * native { "met" } else { "missed" });
    println!("\n(kernel loops of CLI/STI, PUSHF/POPF, CALL/RET, indirect JMP and port I/O under bt, direct,\n interp and natively, with the goals: `vmm bench bt`)");
    Ok(())
}
