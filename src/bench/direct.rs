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

use std::time::{Duration, Instant};

use iced_x86::code_asm::*;
use vmm_interp::state::{attr, Segment};
use vmm_interp::{CpuState, TableReg};
use vmm_monitor::devices::HostClock;
use vmm_monitor::engine::{self, EngineKind, Outcome, RunOptions};
use vmm_monitor::machine::Machine;
use vmm_monitor::memory::GuestRam;

const GDT: u32 = 0x1000;
const IDT: u32 = 0x2000;
const TSS: u32 = 0x3000;
const KSTACK: u32 = 0x9000;
const CODE: u32 = 0x1_0000;
const HANDLER: u32 = 0x1_8000;
const USER: u32 = 0x2_0000;
const USTACK: u32 = 0x3_0000;
const TOUCH: u32 = 0x40_0000;
const RAM: usize = 64 << 20;

fn desc(base: u32, limit: u32, access: u8, flags: u8) -> u64 {
    (limit as u64 & 0xffff)
        | ((base as u64 & 0xff_ffff) << 16)
        | ((access as u64) << 40)
        | (((limit as u64 >> 16) & 0xf) << 48)
        | ((flags as u64 & 0xf) << 52)
        | (((base as u64) >> 24) << 56)
}

fn asm(at: u32, f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(32).unwrap();
    f(&mut a).unwrap();
    a.assemble(at as u64).unwrap()
}

/// A kernel at CODE that runs `body` `iters` times (ECX counts down, `iters` = 0 runs it not at
/// all), then exits; `tail` assembles what follows the exit (a subroutine at `sub`, which
/// `body` may call). No handler, no user code.
fn counted_loop(
    iters: u32,
    body: impl FnOnce(&mut CodeAssembler, CodeLabel) -> Result<(), IcedError>,
    tail: impl FnOnce(&mut CodeAssembler, &mut CodeLabel) -> Result<(), IcedError>,
) -> [Vec<u8>; 3] {
    [
        asm(CODE, |a| {
            let mut top = a.create_label();
            let mut done = a.create_label();
            let mut sub = a.create_label();
            a.mov(ecx, iters)?;
            a.jecxz(done)?;
            a.set_label(&mut top)?;
            body(a, sub)?;
            a.dec(ecx)?;
            a.jnz(top)?;
            a.set_label(&mut done)?;
            exit_code(a)?;
            tail(a, &mut sub)
        }),
        vec![],
        vec![],
    ]
}

fn exit_code(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.mov(al, 0u32)?;
    a.out(0xf4, al)?;
    a.hlt()
}

/// The machine and the CPU state for `kernel` (at CODE), `handler` (vector 0x80) and `user`.
fn machine(kernel: &[u8], handler: &[u8], user: &[u8]) -> (Machine, CpuState) {
    let mut ram = GuestRam::heap(RAM);
    let gdt = [
        0u64,
        desc(0, 0xfffff, 0x9a, 0xc),
        desc(0, 0xfffff, 0x92, 0xc),
        desc(0, 0xfffff, 0xfa, 0xc),
        desc(0, 0xfffff, 0xf2, 0xc),
        desc(TSS, 0x67, 0x8b, 0),
    ];
    for (i, d) in gdt.iter().enumerate() {
        ram.write((GDT + 8 * i as u32) as u64, &d.to_le_bytes()).unwrap();
    }
    let gate_lo = (0x08u32 << 16) | (HANDLER & 0xffff);
    let gate_hi = (HANDLER & 0xffff_0000) | 0xee00; // DPL 3 interrupt gate
    ram.write_u32((IDT + 0x80 * 8) as u64, gate_lo).unwrap();
    ram.write_u32((IDT + 0x80 * 8 + 4) as u64, gate_hi).unwrap();
    ram.write_u32((TSS + 4) as u64, KSTACK).unwrap();
    ram.write_u32((TSS + 8) as u64, 0x10).unwrap();
    ram.write(CODE as u64, kernel).unwrap();
    ram.write(HANDLER as u64, handler).unwrap();
    ram.write(USER as u64, user).unwrap();
    let mut s = CpuState::flat_protected(0);
    s.eip = CODE;
    s.gpr[4] = KSTACK;
    s.gdtr = TableReg { base: GDT, limit: (gdt.len() * 8 - 1) as u16 };
    s.idtr = TableReg { base: IDT, limit: 0x7ff };
    s.tr = Segment { selector: 0x28, base: TSS, limit: 0x67, attr: attr::P | 11 };
    let m = Machine::new(ram, Box::new(HostClock::new()), Box::new(std::io::sink()));
    (m, s)
}

/// One run: (time, hidden faults, exits).
fn run_once(kernel: &[u8], handler: &[u8], user: &[u8], k: EngineKind, u: EngineKind) -> Result<(f64, u64), String> {
    let (m, s) = machine(kernel, handler, user);
    let opts = RunOptions { kernel_engine: k, user_engine: u, timeout: Some(Duration::from_secs(120)), ..RunOptions::default() };
    let t0 = Instant::now();
    let r = engine::run(m, s, &opts).map_err(|e| e.to_string())?;
    let t = t0.elapsed().as_secs_f64();
    if r.outcome != (Outcome::DebugExit { value: 0 }) {
        return Err(format!("bench guest ended badly: {}\n{}", r.outcome.message(), engine::cpu_report(&r.state)));
    }
    Ok((t, r.stats.hidden_faults))
}

/// Cost per operation: (t(n) - t(0)) / ops(n), median of three; and the hidden faults of a run.
fn cost(build: &dyn Fn(u32) -> [Vec<u8>; 3], n: u32, k: EngineKind, u: EngineKind, per_fault: bool) -> Result<f64, String> {
    let mut v = Vec::new();
    for _ in 0..3 {
        let [a0, b0, c0] = build(0);
        let (t0, f0) = run_once(&a0, &b0, &c0, k, u)?;
        let [a, b, c] = build(n);
        let (t, f) = run_once(&a, &b, &c, k, u)?;
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

    // The translator against both: a kernel CLI/STI loop (inline under bt, two exits an
    // iteration under direct) and the system call (kernel bt, user direct).
    let cli_sti = |iters: u32| {
        counted_loop(
            iters,
            |a, _| {
                a.cli()?;
                a.sti()
            },
            |_, _| Ok(()),
        )
    };
    let call_ret = |iters: u32| {
        counted_loop(
            iters,
            |a, sub| a.call(sub),
            |a, sub| {
                a.set_label(sub)?;
                a.ret()
            },
        )
    };
    use EngineKind::Bt;
    let rows: Vec<(&str, [f64; 3], &str)> = vec![
        (
            "kernel CLI+STI loop",
            [
                cost(&cli_sti, n(20_000_000.0), Bt, Direct, false)?,
                cost(&cli_sti, n(20000.0), Direct, Direct, false)?,
                cost(&cli_sti, n(200000.0), Interp, Interp, false)?,
            ],
            "per iteration (CLI, STI, DEC, JNZ)",
        ),
        (
            "kernel CALL/RET loop",
            [
                cost(&call_ret, n(20_000_000.0), Bt, Direct, false)?,
                cost(&call_ret, n(20_000_000.0), Direct, Direct, false)?,
                cost(&call_ret, n(200000.0), Interp, Interp, false)?,
            ],
            "per iteration (CALL, RET: lookup-table hit, DEC, JNZ)",
        ),
        (
            "system call, user direct",
            [
                cost(&syscall, n(10000.0), Bt, Direct, false)?,
                cost(&syscall, n(10000.0), Direct, Direct, false)?,
                cost(&syscall, n(10000.0), Interp, Interp, false)?,
            ],
            "int 0x80 + IRET (interp: both interp)",
        ),
    ];
    println!();
    println!("{:<42} {:>12} {:>12} {:>12}  note", "measurement (kernel engine)", "bt (us)", "direct (us)", "interp (us)");
    for (what, [b, d, i], note) in rows {
        println!("{what:<42} {:>12.4} {:>12.4} {:>12.4}  {note}", b * 1e6, d * 1e6, i * 1e6);
    }
    Ok(())
}
