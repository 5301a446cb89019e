//! Engines: what executes guest instructions. This is the seam where one is chosen.
//!
//! The design has three engines chosen per guest privilege level (`--kernel-engine`,
//! `--user-engine`): `bt` (translation), `direct` (trap-and-emulate) and `interp` (the
//! interpreter). `interp` has its own run loop ([`run_interp`]); `direct` and `bt` share the
//! direct engine's (`crate::direct`, `crate::bt`). A new engine adds a variant to
//! [`EngineKind`], a run loop next to
//! [`run_interp`] with the same contract (consume a [`Machine`] and a [`CpuState`], honour
//! [`RunOptions`], end with an [`Outcome`] and [`RunStats`]), and a dispatch arm in [`run`].
//!
//! The run loop's contract, whatever the engine:
//! * the debug-exit port ends the run with the guest's status;
//! * HLT sleeps (on the machine's [`Clock`](crate::devices::Clock), never spinning) until the
//!   next device deadline, then lets the pending interrupt in; a HLT nothing can wake (IF = 0,
//!   or no timer programmed and no input source) ends the run;
//! * a triple fault ends the run with a report of the CPU state;
//! * an instruction the engine cannot execute ends the run with what and where;
//! * `timeout` bounds the run in clock time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use vmm_interp::state::{flags, reg, SegReg};
use vmm_interp::{exception, Cpu, CpuState, Exit};

use crate::devices::DebugExit;
use crate::machine::{Machine, MachineStats, StopReason};

/// An execution engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EngineKind {
    /// Trap-and-emulate: guest code runs natively at host CPL 3.
    Direct,
    /// The interpreter: slow and exact.
    Interp,
    /// Binary translation: guest code runs as translations in the translation cache.
    Bt,
}

impl EngineKind {
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Direct => "direct",
            EngineKind::Interp => "interp",
            EngineKind::Bt => "bt",
        }
    }
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for EngineKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "direct" => Ok(EngineKind::Direct),
            "interp" => Ok(EngineKind::Interp),
            "bt" => Ok(EngineKind::Bt),
            _ => Err(format!("unknown engine {s:?} (expected bt, direct or interp)")),
        }
    }
}

/// How to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The engine for guest code at CPL 0.
    pub kernel_engine: EngineKind,
    /// The engine for guest code at CPL 3.
    pub user_engine: EngineKind,
    /// End the run after this much clock time.
    pub timeout: Option<Duration>,
    /// Instructions per slice of the interpreter between checks of the timeout.
    pub slice: u64,
    /// Base of the monitor area (the `direct` engine truncates every guest segment below it).
    pub monitor_base: u32,
    /// Once set up, run the `direct` engine under the allow-list seccomp filter
    /// (`crate::seccomp`). It stays for the life of the process: `vmm run` sets it; a process
    /// that runs several guests (benchmarks, tests) does not.
    pub lockdown: bool,
    /// Collect the costlier statistics too (emulated instructions by mnemonic): `--stats`.
    pub detailed_stats: bool,
    /// Adaptive user-mode translation (`crate::bt::hot`): with the user engine `direct` and a
    /// `bt` engine present, hot user pages run translated.
    pub adaptive_user: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            kernel_engine: EngineKind::Interp,
            user_engine: EngineKind::Interp,
            timeout: None,
            slice: 100_000,
            monitor_base: crate::space::DEFAULT_MONITOR_BASE,
            lockdown: false,
            detailed_stats: false,
            adaptive_user: true,
        }
    }
}

/// The engine cannot run at all.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("the {0} engine is not built yet: use --kernel-engine interp --user-engine interp")]
    NotBuilt(EngineKind),
    /// The host could not be set up for the engine (address space, signals, guest RAM).
    #[error("cannot set up the direct engine: {0}")]
    Setup(String),
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The guest wrote `value` to the debug-exit port: process exit status `(value << 1) | 1`.
    DebugExit { value: u8 },
    /// The CPU shut down: `second` while delivering `first`, then a fault delivering #DF.
    TripleFault { first: u8, second: u8 },
    /// An instruction the engine does not implement.
    Unsupported { eip: u32, reason: &'static str, instruction: String },
    /// HLT with nothing that can ever wake the CPU.
    DeadHalt { eip: u32, interrupts_enabled: bool },
    /// The timeout expired.
    Timeout { after: Duration, eip: u32 },
    /// An engine exit the run loop does not expect (a bug of the monitor).
    Unexpected(String),
    /// The platform ended the run: reset, power-off, kernel panic or the user's Ctrl-A x.
    Stopped(StopReason),
}

/// Process exit codes for endings that are not the guest's own choice. All even, so they
/// never collide with a debug-exit status (always odd).
pub mod exit_code {
    /// Bad command line or kernel image (also clap's usage-error code).
    pub const ERROR: u8 = 2;
    pub const TRIPLE_FAULT: u8 = 4;
    pub const UNSUPPORTED: u8 = 6;
    pub const TIMEOUT: u8 = 8;
    pub const DEAD_HALT: u8 = 10;
    pub const UNEXPECTED: u8 = 12;
    /// The guest kernel panicked.
    pub const GUEST_PANIC: u8 = 14;
}

impl Outcome {
    /// The process exit code for this ending.
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::DebugExit { value } => (crate::devices::debug_exit::status_for(*value) & 0xff) as u8,
            Outcome::TripleFault { .. } => exit_code::TRIPLE_FAULT,
            Outcome::Unsupported { .. } => exit_code::UNSUPPORTED,
            Outcome::Timeout { .. } => exit_code::TIMEOUT,
            Outcome::DeadHalt { .. } => exit_code::DEAD_HALT,
            Outcome::Unexpected(_) => exit_code::UNEXPECTED,
            Outcome::Stopped(r) if r.is_clean() => 0,
            Outcome::Stopped(_) => exit_code::GUEST_PANIC,
        }
    }

    /// One line saying how the run ended.
    pub fn message(&self) -> String {
        match self {
            Outcome::DebugExit { value } => format!(
                "the guest wrote {value:#04x} to the debug-exit port: exit status {}",
                crate::devices::debug_exit::status_for(*value)
            ),
            Outcome::TripleFault { first, second } => format!(
                "triple fault: {} while delivering {}, then a fault delivering #DF; the virtual CPU shut down",
                exception::name(*second),
                exception::name(*first)
            ),
            Outcome::Unsupported { eip, reason, instruction } => {
                format!("the interpreter does not support the instruction at eip {eip:#010x}: {instruction} ({reason})")
            }
            Outcome::DeadHalt { eip, interrupts_enabled: false } => format!(
                "the guest halted with interrupts disabled (HLT at eip {:#010x} with IF = 0): nothing can wake it",
                eip.wrapping_sub(1)
            ),
            Outcome::DeadHalt { eip, interrupts_enabled: true } => format!(
                "the guest halted (HLT at eip {:#010x}) with no timer programmed and no input to wake it",
                eip.wrapping_sub(1)
            ),
            Outcome::Timeout { after, eip } => {
                format!("timeout: the guest was still running after {:.1} s (eip {eip:#010x})", after.as_secs_f64())
            }
            Outcome::Unexpected(what) => format!("unexpected engine exit: {what}"),
            Outcome::Stopped(StopReason::Reset) => "the guest reset the machine: exit status 0".into(),
            Outcome::Stopped(StopReason::PowerOff) => "the guest powered off: exit status 0".into(),
            Outcome::Stopped(StopReason::Panic) => {
                format!("the guest kernel panicked: exit status {}", exit_code::GUEST_PANIC)
            }
            Outcome::Stopped(StopReason::Quit) => "quit (Ctrl-A x)".into(),
        }
    }

    /// Whether the CPU state report helps explain this ending.
    pub fn wants_report(&self) -> bool {
        !matches!(self, Outcome::DebugExit { .. } | Outcome::Stopped(_))
    }
}

/// What happened during a run (`--stats`).
#[derive(Clone, Debug, Default)]
pub struct RunStats {
    pub engine: &'static str,
    pub instructions: u64,
    /// Clock time from start to end.
    pub elapsed: Duration,
    /// Clock time spent asleep in HLT.
    pub halted: Duration,
    /// Engine exits by reason.
    pub exits: BTreeMap<&'static str, u64>,
    pub machine: MachineStats,
    /// The direct engine: time spent in guest code (between entry and exit).
    pub guest_time: Duration,
    /// The direct engine: native exits (signals) and instructions emulated by the interpreter.
    pub native_exits: u64,
    pub emulated: u64,
    /// Shadow MMU: hidden faults (filled by the monitor), true guest page faults, flushes.
    pub hidden_faults: u64,
    pub guest_faults: u64,
    pub shadow_flushes: u64,
    /// Host LDT entries written (`modify_ldt`).
    pub ldt_writes: u64,
    /// `bt`: fragments translated, exits chained.
    pub translated: u64,
    pub chained: u64,
    /// `bt`: full flushes of the translation cache, invalidations by guest writes to code.
    pub tc_flushes: u64,
    pub tc_invalidations: u64,
    /// Shadow MMU: every counter (map calls, CR3 writes, ring-compression unmaps...).
    pub shadow: vmm_shadow_mmu::ShadowStats,
    /// Instructions the interpreter executed for the `direct`/`bt` engines, by mnemonic and
    /// the privilege level they ran at (what to translate inline next).
    pub emulated_by: rustc_hash::FxHashMap<(iced_x86::Mnemonic, u8), u64>,
}

impl RunStats {
    pub(crate) fn exit(&mut self, why: &'static str) {
        *self.exits.entry(why).or_default() += 1;
    }

    /// A human-readable table.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let secs = self.elapsed.as_secs_f64();
        let _ = writeln!(s, "engine          {}", self.engine);
        let _ = writeln!(s, "instructions    {}", self.instructions);
        let _ = writeln!(s, "time            {:.3} s ({:.3} s halted)", secs, self.halted.as_secs_f64());
        let running = (self.elapsed.saturating_sub(self.halted)).as_secs_f64();
        if running > 0.0 {
            let _ = writeln!(s, "speed           {:.1} M instructions/s while running", self.instructions as f64 / running / 1e6);
        }
        let _ = writeln!(s, "exits:");
        for (why, n) in &self.exits {
            let _ = writeln!(s, "  {why:<22} {n}");
        }
        if self.engine != "interp" {
            let guest = self.guest_time.as_secs_f64();
            let monitor = (running - guest).max(0.0);
            let _ = writeln!(s, "native exits    {}", self.native_exits);
            let _ = writeln!(s, "emulated insns  {}", self.emulated);
            let _ = writeln!(s, "page faults     {} hidden, {} guest", self.hidden_faults, self.guest_faults);
            let _ = writeln!(s, "shadow flushes  {}", self.shadow_flushes);
            let sh = &self.shadow;
            let _ = writeln!(
                s,
                "shadow mmu      {} maps ({} pages; {} prefaults), {} CR3 writes ({} pages kept), {} INVLPGs, {} evictions, {} pages unmapped entering user mode",
                sh.map_calls, sh.pages_mapped, sh.prefaults, sh.cr3_writes, sh.cr3_kept, sh.invlpgs, sh.evictions, sh.user_unmapped
            );
            if !self.emulated_by.is_empty() {
                let mut top: Vec<_> = self.emulated_by.iter().collect();
                top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
                let list: Vec<String> =
                    top.iter().take(16).map(|((m, cpl), n)| format!("{}@{cpl}:{n}", format!("{m:?}").to_lowercase())).collect();
                let _ = writeln!(s, "emulated by insn {}", list.join(" "));
            }
            let _ = writeln!(s, "ldt writes      {}", self.ldt_writes);
            if self.translated > 0 {
                let _ = writeln!(s, "translated      {} fragments, {} exits chained", self.translated, self.chained);
                let _ = writeln!(s, "tc flushes      {} full, {} code-frame invalidations", self.tc_flushes, self.tc_invalidations);
            }
            let _ = writeln!(s, "time in guest   {guest:.3} s, in monitor {monitor:.3} s");
        }
        let m = &self.machine;
        let _ = writeln!(s, "port reads      {}", m.port_reads);
        let _ = writeln!(s, "port writes     {}", m.port_writes);
        let _ = writeln!(s, "unclaimed ports {}", m.unclaimed_ports);
        if self.translated > 0 {
            // scanner/src/mangle/io.rs: translated IN/OUT to null ports never reach the machine.
            let _ = writeln!(s, "  (port counts: without translated code's inline IN/OUT to null ports)");
        }
        if !m.unclaimed_by_port.is_empty() {
            let mut top: Vec<_> = m.unclaimed_by_port.iter().collect();
            top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let list: Vec<String> = top.iter().take(12).map(|(p, n)| format!("{p:#x}:{n}")).collect();
            let _ = writeln!(s, "  by port       {}", list.join(" "));
        }
        let _ = writeln!(s, "interrupts      {} ({} timer edges)", m.interrupts, m.timer_irqs);
        s
    }
}

/// The end of a run: how, the counters, and the final CPU and machine.
pub struct RunResult {
    pub outcome: Outcome,
    pub stats: RunStats,
    pub state: CpuState,
    pub machine: Machine,
}

/// Run `state` on `machine` with the engines `opts` selects.
pub fn run(machine: Machine, state: CpuState, opts: &RunOptions) -> Result<RunResult, EngineError> {
    if opts.kernel_engine == EngineKind::Interp && opts.user_engine == EngineKind::Interp {
        return Ok(run_interp(machine, state, opts));
    }
    crate::direct::run(machine, state, opts)
}

/// Consecutive runs in one thread that share the host setup: [`Session::run`] has the
/// contract of [`run`] (and gives the same results), but after the first run of the `direct`
/// or `bt` engine it reuses the reservation of the low 4 GiB, the `bt` engine's monitor area
/// and translation cache (flushed), and guest RAM's memfd (refilled), instead of making and
/// tearing them down each time (`crate::direct::session` says how each is made like new).
/// For callers that run many small guests: the property tests (`tests/bt_prop.rs`), where
/// the setup cost ten times the guest's run.
///
/// Differences from [`run`], none guest-visible: heap RAM ([`crate::memory::GuestRam::Heap`])
/// comes back as heap RAM (the pages the run changed copied back) rather than as a memfd; and
/// from its first `direct`/`bt` run until it is dropped, the session holds the process-wide
/// run lock, so other runs of those engines in the process (other threads' [`run`] or
/// sessions) wait for it. Calling [`run`] with those engines from the thread that holds a
/// session deadlocks: use the session. `interp`-only runs need no host setup and go to
/// [`run_interp`].
pub struct Session {
    held: crate::direct::session::Held,
}

impl Session {
    pub fn new() -> Session {
        Session { held: crate::direct::session::Held::session() }
    }

    /// Run `state` on `machine` with the engines `opts` selects, as [`run`].
    pub fn run(&mut self, machine: Machine, state: CpuState, opts: &RunOptions) -> Result<RunResult, EngineError> {
        if opts.kernel_engine == EngineKind::Interp && opts.user_engine == EngineKind::Interp {
            return Ok(run_interp(machine, state, opts));
        }
        crate::direct::run_held(&mut self.held, machine, state, opts)
    }
}

impl Default for Session {
    fn default() -> Self {
        Session::new()
    }
}

/// HLT: sleep on the machine's clock until an interrupt can be taken. Returns the time slept
/// (clock nanoseconds), or how the run ends (a HLT nothing can wake, the timeout).
pub(crate) fn halt_sleep(cpu: &mut Cpu<Machine>, deadline: Option<u64>, opts: &RunOptions) -> Result<u64, Outcome> {
    let mut halted_ns = 0;
    loop {
        let iflag = cpu.state.eflags & flags::IF != 0;
        if iflag && cpu.bus.interrupt_requested() {
            return Ok(halted_ns);
        }
        if let Some(r) = cpu.bus.stop_request() {
            return Err(Outcome::Stopped(r));
        }
        if !iflag {
            // Linux's poweroff without ACPI, or its halt after a panic.
            if let Some(r) = cpu.bus.halt_stop() {
                return Err(Outcome::Stopped(r));
            }
        }
        let next = cpu.bus.next_deadline_ns();
        if !iflag || (next.is_none() && !cpu.bus.input_open()) {
            return Err(Outcome::DeadHalt { eip: cpu.state.eip, interrupts_enabled: iflag });
        }
        let now = cpu.bus.now_ns();
        if deadline.is_some_and(|d| now >= d) {
            return Err(Outcome::Timeout { after: opts.timeout.unwrap_or_default(), eip: cpu.state.eip });
        }
        // With only console input to wait for, look again at least every second.
        let next = next.unwrap_or(now + 1_000_000_000);
        let wake = deadline.map_or(next, |d| next.min(d));
        // Sleeps on the clock, or polls the console's input until then.
        cpu.bus.wait_until(wake);
        halted_ns += cpu.bus.now_ns().saturating_sub(now);
    }
}

/// The `interp` engine's run loop.
pub fn run_interp(machine: Machine, state: CpuState, opts: &RunOptions) -> RunResult {
    let mut cpu = Cpu::with_state(state, machine);
    let mut stats = RunStats { engine: "interp", ..RunStats::default() };
    let start = cpu.bus.now_ns();
    let deadline = opts.timeout.map(|t| start.saturating_add(u64::try_from(t.as_nanos()).unwrap_or(u64::MAX)));
    let mut halted_ns = 0u64;
    let slice = opts.slice.max(1);
    let outcome = 'run: loop {
        if let Some(d) = deadline {
            if cpu.bus.now_ns() >= d {
                break Outcome::Timeout { after: opts.timeout.unwrap_or_default(), eip: cpu.state.eip };
            }
        }
        if let Some(r) = cpu.bus.stop_request() {
            break Outcome::Stopped(r);
        }
        cpu.bus.update();
        match cpu.run(slice) {
            Exit::Budget => {
                stats.exit("budget");
                // Console input, without waiting.
                if cpu.bus.input_open() {
                    cpu.bus.poll_input(Duration::ZERO);
                }
            }
            Exit::PortIo { port: DebugExit::PORT, .. } => {
                stats.exit("debug-exit");
                break Outcome::DebugExit { value: cpu.bus.debug_exit.value.unwrap_or(0) };
            }
            Exit::PortIo { .. } => stats.exit("port-io"),
            Exit::Halt => {
                stats.exit("hlt");
                match halt_sleep(&mut cpu, deadline, opts) {
                    Ok(ns) => halted_ns += ns,
                    Err(o) => break 'run o,
                }
            }
            Exit::TripleFault { first, second } => {
                stats.exit("triple-fault");
                break Outcome::TripleFault { first, second };
            }
            Exit::Unsupported { eip, reason, instruction } => {
                stats.exit("unsupported");
                break Outcome::Unsupported { eip, reason, instruction };
            }
            other => {
                stats.exit("unexpected");
                break Outcome::Unexpected(other.to_string());
            }
        }
    };
    cpu.bus.flush();
    stats.instructions = cpu.icount;
    stats.elapsed = Duration::from_nanos(cpu.bus.now_ns().saturating_sub(start));
    stats.halted = Duration::from_nanos(halted_ns);
    stats.machine = cpu.bus.stats.clone();
    let Cpu { state, bus, .. } = cpu;
    RunResult { outcome, stats, state, machine: bus }
}

/// A multi-line report of the CPU state: general registers, EFLAGS, segments (selector and
/// descriptor cache), descriptor-table registers and control registers.
pub fn cpu_report(s: &CpuState) -> String {
    let mut out = String::new();
    let g = |r: usize| s.gpr[r];
    let _ = writeln!(
        out,
        "  eax={:08x} ebx={:08x} ecx={:08x} edx={:08x}",
        g(reg::EAX),
        g(reg::EBX),
        g(reg::ECX),
        g(reg::EDX)
    );
    let _ = writeln!(
        out,
        "  esi={:08x} edi={:08x} ebp={:08x} esp={:08x}",
        g(reg::ESI),
        g(reg::EDI),
        g(reg::EBP),
        g(reg::ESP)
    );
    let _ = writeln!(out, "  eip={:08x} eflags={:08x} cpl={}", s.eip, s.eflags, s.cpl);
    for r in SegReg::ALL {
        let d = s.seg(r);
        let _ = writeln!(
            out,
            "  {}={:04x} base={:08x} limit={:08x} attr={:04x}",
            r.name(),
            d.selector,
            d.base,
            d.limit,
            d.attr
        );
    }
    let _ = writeln!(
        out,
        "  ldtr={:04x} base={:08x} limit={:08x}   tr={:04x} base={:08x} limit={:08x}",
        s.ldtr.selector, s.ldtr.base, s.ldtr.limit, s.tr.selector, s.tr.base, s.tr.limit
    );
    let _ = writeln!(
        out,
        "  gdtr base={:08x} limit={:04x}   idtr base={:08x} limit={:04x}",
        s.gdtr.base, s.gdtr.limit, s.idtr.base, s.idtr.limit
    );
    let _ = writeln!(out, "  cr0={:08x} cr2={:08x} cr3={:08x} cr4={:08x}", s.cr0, s.cr2, s.cr3, s.cr4);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::{Clock, ManualClock, SharedBuffer};
    use crate::memory::GuestRam;
    use iced_x86::code_asm::*;

    const CODE: u32 = 0x1000;

    fn machine(code: &[u8]) -> (Machine, ManualClock, SharedBuffer) {
        let clock = ManualClock::new();
        let out = SharedBuffer::new();
        let mut ram = GuestRam::heap(1 << 20);
        ram.write(CODE as u64, code).unwrap();
        // GDT at 0x3000: null, flat code 0x08, flat data 0x10.
        for (i, d) in [0u64, 0x00cf_9a00_0000_ffff, 0x00cf_9200_0000_ffff].iter().enumerate() {
            ram.write(0x3000 + 8 * i as u64, &d.to_le_bytes()).unwrap();
        }
        (Machine::new(ram, Box::new(clock.clone()), Box::new(out.clone())), clock, out)
    }

    fn state() -> CpuState {
        let mut s = CpuState::flat_protected(0);
        s.eip = CODE;
        s.gpr[reg::ESP] = 0x8000;
        s.gdtr = vmm_interp::TableReg { base: 0x3000, limit: 23 };
        s
    }

    fn asm(f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
        let mut a = CodeAssembler::new(32).unwrap();
        f(&mut a).unwrap();
        a.assemble(CODE as u64).unwrap()
    }

    #[test]
    fn debug_exit_ends_the_run() {
        let code = asm(|a| {
            a.mov(al, 0x41)?;
            a.out(0xe9, al)?; // unclaimed
            a.mov(al, 3)?;
            a.out(0xf4, al)?;
            a.hlt()
        });
        let (m, _, _) = machine(&code);
        let r = run(m, state(), &RunOptions::default()).unwrap();
        assert_eq!(r.outcome, Outcome::DebugExit { value: 3 });
        assert_eq!(r.outcome.exit_code(), 7);
        assert_eq!(r.stats.instructions, 4);
    }

    #[test]
    fn engine_names_parse() {
        assert_eq!("interp".parse::<EngineKind>(), Ok(EngineKind::Interp));
        assert_eq!("direct".parse::<EngineKind>(), Ok(EngineKind::Direct));
        assert_eq!("bt".parse::<EngineKind>(), Ok(EngineKind::Bt));
        assert!("jit".parse::<EngineKind>().is_err());
    }

    #[test]
    fn cli_hlt_is_a_dead_halt() {
        let (m, _, _) = machine(&asm(|a| {
            a.cli()?;
            a.hlt()
        }));
        let r = run(m, state(), &RunOptions::default()).unwrap();
        assert_eq!(r.outcome, Outcome::DeadHalt { eip: CODE + 2, interrupts_enabled: false });
        assert!(r.outcome.message().contains("interrupts disabled"));
        assert_eq!(r.outcome.exit_code(), exit_code::DEAD_HALT);
    }

    #[test]
    fn timeout_stops_a_spinning_guest() {
        let (m, clock, _) = machine(&asm(|a| {
            let mut top = a.create_label();
            a.set_label(&mut top)?;
            a.jmp(top)
        }));
        // The manual clock does not move by itself: move it from outside by a slice's worth
        // each time the loop checks, through a thread.
        let c2 = clock.clone();
        let h = std::thread::spawn(move || {
            for _ in 0..1000 {
                c2.advance(10_000_000);
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        let opts = RunOptions { timeout: Some(Duration::from_millis(50)), slice: 1000, ..RunOptions::default() };
        let r = run(m, state(), &opts).unwrap();
        assert!(matches!(r.outcome, Outcome::Timeout { .. }), "{:?}", r.outcome);
        assert_eq!(r.outcome.exit_code(), exit_code::TIMEOUT);
        drop(h);
    }

    /// HLT with the timer running sleeps until the tick (on the manual clock: no real waiting)
    /// and the handler runs; three ticks are counted, then the guest exits.
    #[test]
    fn hlt_sleeps_until_the_timer() {
        let idt = 0x2000u32;
        let handler_at = CODE + 0x800;
        let mut code = asm(|a| {
            let mut wait = a.create_label();
            // IDT at 0x2000 with vector 0x20 -> handler (an interrupt gate).
            a.mov(dword_ptr(idt + 0x100), (0x08 << 16) | (handler_at & 0xffff))?;
            a.mov(dword_ptr(idt + 0x104), (handler_at & 0xffff_0000) | 0x8e00)?;
            a.push(0x2000u32)?;
            a.push(0x07ff_0000u32)?;
            a.lidt(ptr(esp + 2))?;
            // PIC: vectors 0x20/0x28, only IRQ 0 unmasked.
            for (p, v) in [(0x20u32, 0x11u32), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01), (0x21, 0xfe)] {
                a.mov(al, v)?;
                a.out(p, al)?;
            }
            // PIT channel 0, mode 2, 1000 Hz.
            a.mov(al, 0x34u32)?;
            a.out(0x43, al)?;
            a.mov(al, 1193u32 & 0xff)?;
            a.out(0x40, al)?;
            a.mov(al, 1193u32 >> 8)?;
            a.out(0x40, al)?;
            a.xor(ebx, ebx)?;
            a.set_label(&mut wait)?;
            a.sti()?;
            a.hlt()?;
            a.cmp(ebx, 3)?;
            a.jb(wait)?;
            a.mov(al, bl)?;
            a.out(0xf4, al)
        });
        let mut h = CodeAssembler::new(32).unwrap();
        h.inc(ebx).unwrap();
        h.mov(al, 0x20u32).unwrap();
        h.out(0x20, al).unwrap();
        h.iretd().unwrap();
        let handler = h.assemble(handler_at as u64).unwrap();
        assert!(code.len() < 0x800);
        code.resize(0x800, 0xcc);
        code.extend_from_slice(&handler);
        let (m, clock, _) = machine(&code);
        let r = run(m, state(), &RunOptions::default()).unwrap();
        assert_eq!(r.outcome, Outcome::DebugExit { value: 3 });
        assert_eq!(r.stats.exits.get("hlt"), Some(&3));
        assert_eq!(r.machine.stats.interrupts, 3);
        // Three periods of 1193 ticks passed on the clock, all of them asleep.
        let t = crate::devices::pit::ticks_to_ns(3 * 1193);
        assert_eq!(clock.now_ns(), t);
        assert_eq!(r.stats.halted, Duration::from_nanos(t));
    }

    #[test]
    fn report_names_registers_and_control_registers() {
        let mut s = state();
        s.cr3 = 0x1234_5000;
        let r = cpu_report(&s);
        for w in ["eax=", "esp=00008000", "eip=00001000", "cs=0008", "gdtr", "idtr", "cr3=12345000"] {
            assert!(r.contains(w), "{w} missing from\n{r}");
        }
    }
}
