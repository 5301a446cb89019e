//! The small guests of `vmm bench direct` and `vmm bench bt`: flat protected mode, a GDT, an
//! IDT (vector 0x80: a DPL 3 interrupt gate to HANDLER), a TSS, the kernel at CODE, user code at
//! USER; every guest ends with debug-exit value 0 (`exit_code`).

use std::time::{Duration, Instant};

use iced_x86::code_asm::*;
use vmm_interp::state::{attr, Segment};
use vmm_interp::{CpuState, TableReg};
use vmm_monitor::devices::HostClock;
use vmm_monitor::engine::{self, EngineKind, Outcome, RunOptions, RunStats};
use vmm_monitor::machine::Machine;
use vmm_monitor::memory::GuestRam;

const GDT: u32 = 0x1000;
const IDT: u32 = 0x2000;
const TSS: u32 = 0x3000;
const KSTACK: u32 = 0x9000;
pub(super) const CODE: u32 = 0x1_0000;
pub(super) const HANDLER: u32 = 0x1_8000;
pub(super) const USER: u32 = 0x2_0000;
pub(super) const USTACK: u32 = 0x3_0000;
pub(super) const TOUCH: u32 = 0x40_0000;
pub(super) const RAM: usize = 64 << 20;

fn desc(base: u32, limit: u32, access: u8, flags: u8) -> u64 {
    (limit as u64 & 0xffff)
        | ((base as u64 & 0xff_ffff) << 16)
        | ((access as u64) << 40)
        | (((limit as u64 >> 16) & 0xf) << 48)
        | ((flags as u64 & 0xf) << 52)
        | (((base as u64) >> 24) << 56)
}

pub(super) fn asm(at: u32, f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(32).unwrap();
    f(&mut a).unwrap();
    a.assemble(at as u64).unwrap()
}

/// A kernel at CODE that runs `body` `iters` times (ECX counts down, `iters` = 0 runs it not at
/// all), then exits; `tail` assembles what follows the exit (a subroutine at `sub`, which
/// `body` may call). No handler, no user code.
pub(super) fn counted_loop(
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

pub(super) fn exit_code(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.mov(al, 0u32)?;
    a.out(0xf4, al)?;
    a.hlt()
}

/// The machine and the CPU state for `kernel` (at CODE), `handler` (vector 0x80) and `user`.
pub(super) fn machine(kernel: &[u8], handler: &[u8], user: &[u8]) -> (Machine, CpuState) {
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

/// What [`run_once`] measured.
pub(super) struct Timed {
    /// Wall-clock seconds.
    pub wall: f64,
    /// CPU seconds of this process (user and system, every thread).
    pub cpu: f64,
    pub stats: RunStats,
}

/// One run of the guest under the engines `k` (CPL 0) and `u` (CPL 3), which must end with
/// debug-exit value 0: the times of the whole run (setup included) and its statistics.
pub(super) fn run_once(
    kernel: &[u8],
    handler: &[u8],
    user: &[u8],
    k: EngineKind,
    u: EngineKind,
) -> Result<Timed, String> {
    run_once_with(kernel, handler, user, RunOptions { kernel_engine: k, user_engine: u, ..RunOptions::default() })
}

/// [`run_once`] with options (the engines and everything else; the timeout is set here).
pub(super) fn run_once_with(kernel: &[u8], handler: &[u8], user: &[u8], opts: RunOptions) -> Result<Timed, String> {
    let (m, s) = machine(kernel, handler, user);
    let opts = RunOptions { timeout: Some(Duration::from_secs(120)), ..opts };
    let (t0, c0) = (Instant::now(), super::nano::process_cpu_seconds());
    let r = engine::run(m, s, &opts).map_err(|e| e.to_string())?;
    let (t, cpu) = (t0.elapsed().as_secs_f64(), super::nano::process_cpu_seconds() - c0);
    if r.outcome != (Outcome::DebugExit { value: 0 }) {
        return Err(format!("bench guest ended badly: {}\n{}", r.outcome.message(), engine::cpu_report(&r.state)));
    }
    Ok(Timed { wall: t, cpu, stats: r.stats })
}
