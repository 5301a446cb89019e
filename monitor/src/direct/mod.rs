//! The `direct` engine: trap-and-emulate. Guest code runs unchanged at host CPL 3 in
//! compatibility mode, on shadow segments (host LDT) and shadow page tables (the host page
//! tables of the low 4 GiB); whatever it cannot do there comes back as a host signal and is
//! classified:
//!
//! | exit | what the monitor does |
//! |---|---|
//! | timer signal | nothing: the run loop takes a pending interrupt if the virtual IF allows it |
//! | #PF, page mapped by the guest | hidden fault: the shadow MMU maps it, the instruction restarts |
//! | #PF, not mapped or not allowed | true guest fault: `inject_exception(14)` with CR2 |
//! | #PF into the monitor area, page 0, or MMIO | the interpreter executes the instruction |
//! | #GP (CLI, STI, HLT, IN, OUT, MOV CRn, LGDT, INT n, CPUID with faulting on, a segment truncated below the monitor area, a guest GDT selector that reached the host's GDT, ...) | the interpreter executes the instruction at the guest's CPL with the guest's view (`Cpu::step`) |
//! | SIGSYS (`int 0x80`, seccomp), #BP, #OF (traps: EIP after) | back up to the instruction and let the interpreter execute it (gate DPL checks included) |
//! | #DB single step | `inject_exception(1)` |
//! | #DE, #UD, #NM, #MF, #AC, #XM, #NP, #SS | the interpreter re-executes the instruction and raises what the CPU would |
//!
//! After an emulated instruction the engine looks at what changed: CR0.PG/WP/PE and
//! CR4.PSE/PGE/PAE drop every shadow mapping, a CR3 write (seen by peeking at the instruction:
//! the value may not change) drops the non-global ones, INVLPG one page, a CPL change moves the
//! ring compression (`set_user`); segment and descriptor-table changes are picked up at the next
//! entry ([`ldt`]). The virtual CPU keeps IF and IOPL; the host's IF is always 1.
//!
//! What guest kernel code run this way sees wrongly (the Popek-Goldberg failures this engine
//! exists to show, removed by the translator): POPF keeps the host's IF silently, PUSHF shows
//! IF = 1 and IOPL 0, `mov ax, cs` shows the host's shadow selector (RPL 3), SGDT/SIDT/SLDT/
//! STR/SMSW return the host kernel's UMIP dummies, LAR/LSL/VERR/VERW see the shadows.

pub mod entry;
pub mod ldt;
pub(crate) mod session;
pub mod shadow;

use std::time::Duration;

use vmm_interp::state::{cr, flags, SegReg};
use vmm_interp::{exception, Bus, Cpu, CpuState, Exit};

use crate::devices::DebugExit;
use crate::engine::{halt_sleep, EngineError, EngineKind, Outcome, RunOptions, RunResult, RunStats};
use crate::machine::Machine;
use crate::native::sys;
use crate::space::{LowMap, Reservation};
use ldt::HostLdt;
use shadow::{Kind, Resolution, Shadow};

/// Period of the host timer that forces exits while the guest runs.
pub const TIMER_PERIOD_US: u64 = 1000;

/// How often the run loop looks at console input and stop requests while the guest runs.
const INPUT_POLL_NS: u64 = 10_000_000;

/// EFLAGS bits that guest code changes natively (the rest are virtual).
const NATIVE_FLAGS: u32 = flags::STATUS | flags::TF | flags::DF | flags::NT | flags::AC | flags::ID;

/// Run a guest with the direct engine for the privilege levels `opts` gives it (and the
/// interpreter for the others).
pub fn run(machine: Machine, state: CpuState, opts: &RunOptions) -> Result<RunResult, EngineError> {
    // Nothing held before, nothing kept after: the held resources are dropped on return.
    run_held(&mut session::Held::default(), machine, state, opts)
}

/// [`run`] with the host setup `held` keeps between the runs of an `engine::Session`: taken
/// from it when it fits (made like new, see [`session`]), put back at the end.
pub(crate) fn run_held(held: &mut session::Held, mut machine: Machine, state: CpuState, opts: &RunOptions) -> Result<RunResult, EngineError> {
    let setup = |e: String| EngineError::Setup(e);
    let monitor_base = crate::space::check_monitor_base(opts.monitor_base as u64).map_err(|e| setup(e.to_string()))?;
    held.fit(monitor_base);
    let heap = held.ram_in(&mut machine.ram).map_err(|e| setup(format!("guest RAM as a memfd: {e}")))?;
    let ram_len = machine.ram.len() as u64;
    if ram_len > monitor_base as u64 {
        return Err(setup(crate::space::SpaceError::RamTooLarge { ram: ram_len, monitor_base }.to_string()));
    }
    let lock = &*held.lock.get_or_insert_with(|| entry::RUN_LOCK.lock().unwrap_or_else(|e| e.into_inner()));
    let reservation = match held.reservation.take() {
        Some(r) => {
            r.clear_guest_part().map_err(|e| setup(format!("clearing the previous run's guest mappings: {e}")))?;
            r
        }
        None => Reservation::new(monitor_base).map_err(|e| setup(e.to_string()))?,
    };
    if !reservation.host_low.is_empty() {
        for (a, b, name) in &reservation.host_low {
            tracing::warn!("host mapping below 4 GiB: {a:#x}-{b:#x} {name}: guest pages there cannot be mapped");
        }
    }
    let Some(memfd) = machine.ram.memfd_ram() else { return Err(setup("guest RAM is not a memfd".into())) };
    let low = LowMap::new(reservation, memfd);
    let thread = entry::Thread::prepare().map_err(setup)?;
    // Declared after `low`: dropped before the reservation it lives in, also on the error
    // returns below. Before the lockdown (memfd_create and ftruncate are not allowed after).
    let held_bt = held.bt.take();
    let bt = if opts.kernel_engine == EngineKind::Bt || opts.user_engine == EngineKind::Bt {
        Some(match held_bt {
            Some((mut bt, header)) => {
                bt.reset_for_next_run(&header);
                (bt, header)
            }
            None => {
                let mut bt = crate::bt::Bt::new(&low.reservation, monitor_base).map_err(setup)?;
                let header = session::vcpu_header(&mut bt);
                (bt, header)
            }
        })
    } else {
        drop(held_bt); // not used by this run: its monitor area must not stay open
        None
    };
    let (bt, bt_header) = match bt {
        Some((mut bt, header)) => {
            // Hot user code (adaptive user-mode translation, `crate::bt::hot`) was told the
            // host's CPUID while it ran directly: translate it with the host's model.
            bt.cfg.user_model = (opts.user_engine == EngineKind::Direct).then(vmm_scanner::classify::Model::host);
            bt.set_null_ports(machine.null_ports());
            (Some(bt), Some(header))
        }
        None => (None, None),
    };
    let tc_flushes_before = bt.as_ref().map_or(0, |bt| bt.cache.flushes());
    let ready = thread.set_timer(TIMER_PERIOD_US).map_err(setup).and_then(|()| {
        if opts.lockdown {
            crate::seccomp::lock_down().map_err(|e| setup(format!("installing the seccomp allow-list: {e}")))?;
        }
        Ok(())
    });
    if let Err(e) = ready {
        let _ = thread.set_timer(0);
        return Err(e);
    }
    if let Some(bt) = &bt {
        bt.install(lock);
    }
    let mut e = Direct {
        cpu: Cpu::with_state(state, machine),
        shadow: Shadow::new(low, ram_len as u32),
        ldt: HostLdt::default(),
        opts,
        stats: RunStats { engine: "direct", ..RunStats::default() },
        synced_paging: None,
        last_fault: (0, 0, 0),
        monitor_base,
        halted_ns: 0,
        fatal: None,
        bt,
        count_emulated: opts.detailed_stats,
        info: iced_x86::InstructionInfoFactory::new(),
        guest_ticks: 0,
        bt_emulate_exits: 0,
        bt_exit_cpl: 0,
        hot: crate::bt::hot::HotUser::default(),
        prefaulted_cr2: 0,
    };
    e.stats.engine = match (opts.kernel_engine, opts.user_engine) {
        (EngineKind::Direct, EngineKind::Direct) => "direct",
        (EngineKind::Bt, EngineKind::Bt) => "bt",
        (EngineKind::Bt, EngineKind::Direct) => "bt (kernel) + direct (user)",
        (EngineKind::Bt, EngineKind::Interp) => "bt (kernel) + interp (user)",
        (EngineKind::Interp, EngineKind::Bt) => "interp (kernel) + bt (user)",
        (EngineKind::Direct, EngineKind::Bt) => "direct (kernel) + bt (user)",
        (EngineKind::Interp, _) => "interp (kernel) + direct (user)",
        (_, _) => "direct (kernel) + interp (user)",
    };
    let start = e.cpu.bus.now_ns();
    let outcome = e.run_loop(lock, start);
    entry::restore_host_selectors(lock);
    let _ = thread.set_timer(0);
    e.cpu.bus.flush();
    let mut stats = e.stats;
    if e.bt_emulate_exits > 0 {
        *stats.exits.entry("bt-emulate").or_default() += e.bt_emulate_exits;
    }
    if let Some(bt) = e.bt.as_ref() {
        // Not exits: system calls translated code made without the monitor (bt/fastsys.rs).
        for (k, v) in [("bt-inline-int", bt.fsys.ints), ("bt-inline-iret", bt.fsys.irets)] {
            if v > 0 {
                *stats.exits.entry(k).or_default() += v;
            }
        }
    }
    let hz = crate::native::tsc::hz().max(1) as u128;
    stats.guest_time = Duration::from_nanos(u64::try_from(e.guest_ticks as u128 * 1_000_000_000 / hz).unwrap_or(u64::MAX));
    stats.instructions = e.cpu.icount;
    stats.elapsed = Duration::from_nanos(e.cpu.bus.now_ns().saturating_sub(start));
    stats.halted = Duration::from_nanos(e.halted_ns);
    stats.machine = e.cpu.bus.stats.clone();
    let s = e.shadow.stats();
    stats.hidden_faults = s.hidden_faults;
    stats.guest_faults = s.guest_faults;
    stats.shadow_flushes = s.flushes;
    stats.shadow = s;
    stats.ldt_writes = e.ldt.writes;
    if let Some(bt) = e.bt.take() {
        stats.translated = bt.translated;
        stats.chained = bt.chained;
        stats.tc_flushes = bt.cache.flushes() - tc_flushes_before;
        stats.tc_invalidations = bt.invalidations;
        crate::bt::Bt::uninstall(lock);
        // Kept for the next run, or dropped with `held` (before the reservation it lives in).
        held.bt = bt_header.map(|h| (bt, h));
    }
    let Shadow { map, .. } = e.shadow;
    held.reservation = Some(map.reservation); // kept, or dropped with `held`: unmaps the low 4 GiB
    let Cpu { state, mut bus, .. } = e.cpu;
    session::ram_out(&mut held.ram, &mut bus.ram, heap);
    Ok(RunResult { outcome, stats, state, machine: bus })
}

/// An instruction that changes paging state without changing a register value.
#[derive(Clone, Copy, Debug)]
enum Special {
    Invlpg(u32),
    Cr3Write,
}

/// The direct engine's run state (also the `bt` engine's: `crate::bt` extends it).
pub(crate) struct Direct<'a> {
    pub(crate) cpu: Cpu<Machine>,
    pub(crate) shadow: Shadow,
    pub(crate) ldt: HostLdt,
    opts: &'a RunOptions,
    pub(crate) stats: RunStats,
    synced_paging: Option<(u32, u32)>,
    /// (eip, cr2, repeats) of the last hidden fault.
    last_fault: (u32, u32, u32),
    pub(crate) monitor_base: u32,
    halted_ns: u64,
    /// A shadow-mapping failure found where it could not be returned.
    pub(crate) fatal: Option<Outcome>,
    /// The `bt` engine's translation cache and monitor area, when it is one of the engines.
    pub(crate) bt: Option<crate::bt::Bt>,
    /// Adaptive user-mode translation: the hot user pages (`crate::bt::hot`).
    pub(crate) hot: crate::bt::hot::HotUser,
    /// The CR2 whose page was last considered for `Shadow::prefault` at an entry into user code.
    prefaulted_cr2: u32,
    /// Count emulated instructions by mnemonic (`RunOptions::detailed_stats`).
    count_emulated: bool,
    /// Kept for its buffers (memory operands of emulated instructions).
    pub(crate) info: iced_x86::InstructionInfoFactory,
    /// Host TSC ticks spent in guest code (`RunStats::guest_time` at the end: two TSC reads
    /// per entry cost less than two clock reads, and this is only a statistic).
    pub(crate) guest_ticks: u64,
    /// The `bt-emulate` exits, the most frequent by far, counted here and added to
    /// `stats.exits` at the end of the run (a `BTreeMap` update by name per callout showed in
    /// profiles; nothing reads this counter during the run).
    pub(crate) bt_emulate_exits: u64,
    /// The guest's CPL when translated code last left the TC (0 if the last run of the bt
    /// engine ended before entering it).
    pub(crate) bt_exit_cpl: u8,
}

/// Continue, or end the run.
type Flow = Result<(), Outcome>;

/// A guest-linear range an instruction accesses: (start, length, written).
pub(crate) type MemRange = (u32, u32, bool);

/// The ranges of one instruction (up to four without a heap allocation: this is computed
/// for every instruction the `bt` engine emulates).
pub(crate) type MemRanges = smallvec::SmallVec<[MemRange; 4]>;

fn io(e: std::io::Error) -> Outcome {
    Outcome::Unexpected(format!("shadow mapping failed: {e}"))
}

impl Direct<'_> {
    /// The run's timeout (zero if none).
    pub(crate) fn opts_timeout(&self) -> Duration {
        self.opts.timeout.unwrap_or_default()
    }

    pub(crate) fn engine(&self) -> EngineKind {
        if self.cpu.state.cpl == 3 {
            if self.opts.user_engine == EngineKind::Direct && self.in_hot_user_page() {
                return EngineKind::Bt;
            }
            self.opts.user_engine
        } else {
            self.opts.kernel_engine
        }
    }

    /// Translated user code made a callout at CS:EIP (`syscall`: INT n): the hot-page policy
    /// judges the page (`crate::bt::hot`).
    pub(crate) fn hot_user_callout(&mut self, syscall: bool) {
        if self.opts.user_engine != EngineKind::Direct {
            return;
        }
        let s = &self.cpu.state;
        if self.hot.callout(s.cr3, s.seg(SegReg::Cs).base.wrapping_add(s.eip), syscall) {
            self.stats.exit("hot-user-cool");
        }
    }

    /// Whether user code at CS:EIP is in a hot page (`crate::bt::hot`): it then runs
    /// translated although the user engine is `direct`.
    fn in_hot_user_page(&self) -> bool {
        let s = &self.cpu.state;
        self.bt.is_some() && self.opts.adaptive_user && self.hot.is_hot(s.cr3, s.seg(SegReg::Cs).base.wrapping_add(s.eip))
    }

    /// Whether the guest can run natively now.
    pub(crate) fn can_direct(&self) -> bool {
        let s = &self.cpu.state;
        matches!(self.engine(), EngineKind::Direct | EngineKind::Bt) && s.protected_mode() && !s.v86() && s.cr4 & cr::CR4_PAE == 0
    }

    fn run_loop(&mut self, lock: &std::sync::MutexGuard<'_, ()>, start: u64) -> Outcome {
        let deadline = self.opts.timeout.map(|t| start.saturating_add(u64::try_from(t.as_nanos()).unwrap_or(u64::MAX)));
        let mut checks = 0u32;
        let mut next_poll = 0u64;
        // The last native run was translated user code of a hot region (`crate::bt::hot`).
        let mut hot_user = false;
        loop {
            checks = checks.wrapping_add(1);
            if checks & 15 == 0 {
                let now = self.cpu.bus.now_ns();
                if deadline.is_some_and(|d| now >= d) {
                    return Outcome::Timeout { after: self.opts.timeout.unwrap_or_default(), eip: self.cpu.state.eip };
                }
                // Console input while the guest runs (not only while it halts), and the
                // platform's requests to stop (Ctrl-A x, a kernel panic's end, a reset), every
                // INPUT_POLL_NS at most.
                if now >= next_poll {
                    next_poll = now + INPUT_POLL_NS;
                    if self.cpu.bus.input_open() {
                        self.cpu.bus.poll_input(Duration::ZERO);
                    }
                    if let Some(r) = self.cpu.bus.stop_request() {
                        return Outcome::Stopped(r);
                    }
                }
            }
            let was_hot_user = std::mem::take(&mut hot_user);
            let r = if !self.can_direct() {
                self.interp_slice(deadline)
            } else if self.cpu.state.halted || self.cpu.state.int_shadow {
                self.emulate(deadline)
            } else if self.cpu.state.interrupts_enabled() && self.cpu.bus.interrupt_requested() {
                match self.cpu.bus.acknowledge_interrupt() {
                    Some(v) => {
                        self.stats.exit("interrupt");
                        let exit = self.cpu.inject_interrupt(v);
                        self.after_change();
                        self.handle(exit, deadline)
                    }
                    None => Ok(()),
                }
            } else if self.engine() == EngineKind::Bt {
                let r = self.bt_native(lock, deadline);
                // Translated code may have entered user code itself (an inline IRETD): what
                // counts is the privilege it left the TC at.
                hot_user = self.bt_exit_cpl == 3 && self.opts.user_engine == EngineKind::Direct;
                r
            } else {
                if was_hot_user && self.cpu.state.cpl == 3 {
                    // Translated user code left its hot pages for this one.
                    let s = &self.cpu.state;
                    let lin = s.seg(SegReg::Cs).base.wrapping_add(s.eip);
                    if self.hot.departure(s.cr3, lin) {
                        self.stats.exit("hot-user-grow");
                    }
                    if self.engine() == EngineKind::Bt {
                        continue;
                    }
                }
                self.native(lock, deadline)
            };
            if let Err(o) = r {
                return o;
            }
            if let Some(o) = self.fatal.take() {
                return o;
            }
        }
    }

    /// The interpreter runs the guest while it is at a privilege level (or in a mode) the
    /// direct engine does not take.
    fn interp_slice(&mut self, deadline: Option<u64>) -> Flow {
        self.bt_seg_drop("bt-seg-drop-interp"); // its writes are not watched (bt/segs.rs)
        self.bt_fsys_drop(); // nor for the system-call block (bt/fastsys.rs)
        for _ in 0..self.opts.slice.max(1) {
            let special = self.peek_special();
            let n = self.cpu.icount;
            let exit = self.cpu.step();
            self.after_step(special, n)?;
            self.handle(exit, deadline)?;
            if self.can_direct() {
                break;
            }
        }
        Ok(())
    }

    /// Execute one instruction with the interpreter (the guest's view, the guest's CPL).
    pub(crate) fn emulate(&mut self, deadline: Option<u64>) -> Flow {
        self.emulate_decoded(deadline, None)
    }

    /// [`Direct::emulate`] with the instruction at CS:EIP already decoded (`site`: a `bt`
    /// callout's instruction, decoded when its fragment was translated, whose bytes the caller
    /// found at CS:EIP): the statistics, the special-instruction peek, the write prediction
    /// and the interpreter (`Cpu::step_decoded`) use it instead of decoding again.
    pub(crate) fn emulate_decoded(&mut self, deadline: Option<u64>, decoded: Option<&crate::bt::Decoded>) -> Flow {
        let site = decoded.map(|d| &d.g);
        self.stats.emulated += 1;
        if self.count_emulated {
            let m = match site {
                Some(g) => g.instr.mnemonic(),
                None => self.mnemonic_at_eip(),
            };
            *self.stats.emulated_by.entry((m, self.cpu.state.cpl)).or_default() += 1;
        }
        let special = match site {
            Some(g) => self.special_in(&g.bytes[..g.len as usize], Some(&g.instr)),
            None => self.peek_special(),
        };
        let writes = if self.bt.is_some() { self.bt_predict_writes(decoded) } else { Default::default() };
        let n = self.cpu.icount;
        let exit = match site {
            Some(g) => self.cpu.step_decoded(&g.instr, &g.bytes[..g.len as usize]),
            None => self.cpu.step(),
        };
        if self.bt.is_some() {
            self.bt_after_writes(&writes);
        }
        self.after_step(special, n)?;
        self.handle(exit, deadline)
    }

    fn after_step(&mut self, special: Option<Special>, icount_before: u64) -> Flow {
        if let Some(o) = self.fatal.take() {
            return Err(o);
        }
        if self.cpu.icount != icount_before {
            match special {
                Some(Special::Invlpg(lin)) => {
                    self.shadow.invlpg(lin).map_err(io)?;
                    self.bt_paging_changed(Some(lin >> 12));
                }
                Some(Special::Cr3Write) => {
                    self.shadow.cr3_written(&mut self.cpu).map_err(io)?;
                    self.bt_paging_changed(None);
                    if self.bt.is_some() && self.opts.adaptive_user {
                        let now = self.cpu.bus.now_ns();
                        if self.hot.switched_to(self.cpu.state.cr3, now) {
                            self.stats.exit("hot-user-forget");
                        }
                    }
                }
                None => {}
            }
        }
        self.after_change();
        Ok(())
    }

    /// Paging mode changes drop every shadow mapping.
    fn after_change(&mut self) {
        let bits = shadow::paging_bits(self.cpu.state.cr0, self.cpu.state.cr4);
        if self.synced_paging != Some(bits) {
            // The first time too: the user limit is computed from the guest's tables.
            if let Err(e) = self.shadow.flush_all(&mut self.cpu) {
                self.fatal = Some(io(e));
            }
            self.synced_paging = Some(bits);
        }
    }

    /// What an interpreter exit means for the run.
    fn handle(&mut self, exit: Option<Exit>, deadline: Option<u64>) -> Flow {
        match exit {
            None => Ok(()),
            Some(Exit::PortIo { port: DebugExit::PORT, .. }) => {
                self.stats.exit("debug-exit");
                Err(Outcome::DebugExit { value: self.cpu.bus.debug_exit.value.unwrap_or(0) })
            }
            Some(Exit::PortIo { .. }) => Ok(()),
            Some(Exit::Halt) => {
                self.stats.exit("hlt");
                let ns = halt_sleep(&mut self.cpu, deadline, self.opts)?;
                self.halted_ns += ns;
                Ok(())
            }
            Some(Exit::TripleFault { first, second }) => Err(Outcome::TripleFault { first, second }),
            Some(Exit::Unsupported { eip, reason, instruction }) => Err(Outcome::Unsupported { eip, reason, instruction }),
            Some(other) => Err(Outcome::Unexpected(other.to_string())),
        }
    }

    /// Bytes of guest-linear memory (no side effects; stops at an unmapped page).
    fn read_linear(&mut self, lin: u32, buf: &mut [u8]) -> usize {
        read_linear(&mut self.cpu, lin, buf)
    }

    /// The guest's descriptor for `sel` from its GDT or LDT.
    pub(crate) fn table_entry(&mut self, sel: u16) -> Option<u64> {
        table_entry(&mut self.cpu, sel)
    }

    /// INVLPG and MOV CR3 at CS:EIP, decoded before the interpreter executes them.
    fn peek_special(&mut self) -> Option<Special> {
        if !self.cpu.state.protected_mode() {
            return None;
        }
        let eip = self.cpu.state.eip;
        let lin = self.cpu.state.seg(SegReg::Cs).base.wrapping_add(eip);
        let mut b = [0u8; 15];
        let n = self.read_linear(lin, &mut b);
        self.special_in(&b[..n], None)
    }

    /// INVLPG and MOV CR3 in the bytes `b` at CS:EIP (`decoded`: their instruction, if the
    /// caller has it).
    fn special_in(&self, b: &[u8], decoded: Option<&iced_x86::Instruction>) -> Option<Special> {
        if !self.cpu.state.protected_mode() {
            return None;
        }
        let eip = self.cpu.state.eip;
        let n = b.len();
        let mut i = 0;
        while i < n.min(5) && matches!(b[i], 0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0x66 | 0x67 | 0xf0 | 0xf2 | 0xf3) {
            i += 1;
        }
        if i + 2 >= n || b[i] != 0x0f {
            return None;
        }
        let modrm = b[i + 2];
        match b[i + 1] {
            0x22 if (modrm >> 3) & 7 == 3 => Some(Special::Cr3Write),
            0x01 if (modrm >> 3) & 7 == 7 && modrm >> 6 != 3 => {
                let insn = match decoded {
                    Some(i) => *i,
                    None => {
                        let bits = if self.cpu.state.code32() { 32 } else { 16 };
                        iced_x86::Decoder::with_ip(bits, b, eip as u64, iced_x86::DecoderOptions::NONE).decode()
                    }
                };
                if insn.code() != iced_x86::Code::Invlpg_m {
                    return None;
                }
                let s = &self.cpu.state;
                let va = insn.virtual_address(0, 0, |r, _, _| reg_value(s, r))?;
                Some(Special::Invlpg(va as u32))
            }
            _ => None,
        }
    }

    /// Shadows for the current CPL and paging mode, then the entry state.
    pub(crate) fn entry_state(&mut self) -> Result<Option<entry::EntryState>, Outcome> {
        let user = self.cpu.state.cpl == 3;
        if self.shadow.user() != user {
            self.shadow.set_user(user).map_err(io)?;
        }
        self.after_change();
        let top = if user { self.shadow.user_limit().min(self.monitor_base) } else { self.monitor_base };
        let mut sel = [0u16; 6];
        let Direct { ldt, cpu, .. } = self;
        // Until no slot changes under the answers: a table slot one register's answer names
        // may be rewritten for a later register holding the same selector with another
        // descriptor (a guest that changed a descriptor and reloaded one register); the next
        // round sends the first one to its cached slot. Cached slots are per register, so the
        // second round changes no table slot.
        for _ in 0..3 {
            let before = ldt.generation();
            for (i, out) in sel.iter_mut().enumerate() {
                let seg = cpu.state.seg[i];
                match ldt.selector_for(i, &seg, top, user, &mut |s| table_entry(cpu, s)) {
                    Ok(h) => *out = h,
                    Err(_) => return Ok(None),
                }
            }
            if ldt.generation() == before {
                break;
            }
        }
        if sel[SegReg::Cs as usize] == 0 || sel[SegReg::Ss as usize] == 0 {
            return Ok(None);
        }
        let s = &self.cpu.state;
        Ok(Some(entry::EntryState {
            gpr: s.gpr,
            eip: s.eip,
            eflags: (s.eflags & NATIVE_FLAGS) | flags::IF | flags::FIXED1,
            sel,
        }))
    }

    /// One native run of guest code and the handling of its exit.
    fn native(&mut self, lock: &std::sync::MutexGuard<'_, ()>, deadline: Option<u64>) -> Flow {
        let Some(st) = self.entry_state()? else {
            self.stats.exit("not-shadowable");
            return self.emulate(deadline);
        };
        if self.cpu.state.cpl == 3 && self.cpu.state.cr2 != self.prefaulted_cr2 {
            // Back in user code after a page fault (CR2 changed): its handler made the entry,
            // and the instruction it returns to touches the page (docs/shadow-mmu.md).
            let cr2 = self.cpu.state.cr2;
            self.prefaulted_cr2 = cr2;
            // Page 0 cannot be mapped on this host (its accesses are emulated).
            if u64::from(cr2) >= crate::space::LOW_START {
                self.shadow.prefault(&mut self.cpu, cr2).map_err(io)?;
            }
        }
        if let Some(bt) = self.bt.as_mut() {
            // Code run directly must not reach the bt engine's monitor area (see bt::area).
            bt.area.set_open(false).map_err(|e| Outcome::Unexpected(format!("bt: {e}")))?;
        }
        let t0 = crate::native::tsc::read();
        let ex = entry::enter(lock, &st, &mut self.cpu.state.fpu);
        self.guest_ticks += crate::native::tsc::read().wrapping_sub(t0);
        self.stats.native_exits += 1;
        if ex.exited == 0 {
            return Err(Outcome::Unexpected("returned from guest code without an exit record".into()));
        }
        if ex.rip_high != 0 || ex.sel[SegReg::Cs as usize] == sys::USER64_CS {
            return Err(Outcome::Unexpected(format!(
                "guest code switched to the host's 64-bit code segment (rip {:#x}{:08x})",
                ex.rip_high, ex.eip
            )));
        }
        self.copy_back(&ex, &st);
        self.classify(&ex, deadline)
    }

    /// The guest state after an exit: registers, native EFLAGS bits, segment registers the
    /// guest changed (mapped back to the guest's selectors and descriptor caches).
    fn copy_back(&mut self, ex: &entry::ExitRecord, st: &entry::EntryState) {
        let s = &mut self.cpu.state;
        s.gpr = ex.gpr;
        s.eip = ex.eip;
        s.eflags = (s.eflags & !NATIVE_FLAGS) | (ex.eflags & NATIVE_FLAGS);
        for i in 0..6 {
            if ex.sel[i] == st.sel[i] {
                continue;
            }
            match self.ldt.guest_segment_for(ex.sel[i]) {
                Some(seg) => self.cpu.state.seg[i] = seg,
                None => {
                    // A GDT selector: the guest loaded one of its own GDT selectors by value and
                    // got the host's entry. Give it what it meant: its own descriptor.
                    self.stats.exit("gdt-selector-fixup");
                    let sel = ex.sel[i];
                    if let Some(raw) = self.table_entry(sel) {
                        let d = vmm_interp::seg::Descriptor(raw | (1 << 40));
                        if d.is_segment() && d.present() {
                            self.cpu.state.seg[i] = d.to_segment(sel);
                        }
                    }
                }
            }
        }
    }

    /// The mnemonic of the instruction at CS:EIP (statistics).
    fn mnemonic_at_eip(&mut self) -> iced_x86::Mnemonic {
        self.insn_at_eip().mnemonic()
    }

    /// The instruction at CS:EIP, decoded from guest memory without side effects (invalid if
    /// it cannot be read or decoded).
    pub(crate) fn insn_at_eip(&mut self) -> iced_x86::Instruction {
        let s = &self.cpu.state;
        let eip = s.eip;
        let lin = s.seg(SegReg::Cs).base.wrapping_add(eip);
        let bits = if s.code32() { 32 } else { 16 };
        let mut b = [0u8; 15];
        let n = self.read_linear(lin, &mut b);
        iced_x86::Decoder::with_ip(bits, &b[..n], eip as u64, iced_x86::DecoderOptions::NONE).decode()
    }

    /// The guest-linear memory the instruction at CS:EIP accesses with the current registers:
    /// a [`MemRange`] per memory operand (explicit and stack; REP strings by their
    /// count in ECX or CX, downwards with DF), and whether some operand's address could not be
    /// computed. None: the instruction does not decode.
    pub(crate) fn memory_ranges_at_eip(&mut self) -> Option<(MemRanges, bool)> {
        let insn = self.insn_at_eip();
        self.memory_ranges_of(&insn)
    }

    /// [`Direct::memory_ranges_at_eip`] for `insn`, the instruction at CS:EIP.
    pub(crate) fn memory_ranges_of(&mut self, insn: &iced_x86::Instruction) -> Option<(MemRanges, bool)> {
        if insn.is_invalid() {
            return None;
        }
        Some(memory_ranges(&self.cpu.state, insn, self.info.info(insn).used_memory()))
    }

    /// [`Direct::memory_ranges_of`] for a decoded instruction whose memory operands (`used`,
    /// iced's `InstructionInfo::used_memory`) are known.
    pub(crate) fn memory_ranges_decoded(&self, d: &crate::bt::Decoded) -> Option<(MemRanges, bool)> {
        if d.g.instr.is_invalid() {
            return None;
        }
        Some(memory_ranges(&self.cpu.state, &d.g.instr, &d.used))
    }
}

/// The [`MemRange`]s of `insn`'s memory operands `used` (iced's `InstructionInfo::used_memory`)
/// with the registers of `s`, and whether some address could not be computed.
fn memory_ranges(s: &CpuState, insn: &iced_x86::Instruction, used: &[iced_x86::UsedMemory]) -> (MemRanges, bool) {
    use iced_x86::OpAccess;
    let mut ranges = MemRanges::new();
    let mut unresolved = false;
    for m in used {
        let write = matches!(m.access(), OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite);
        let Some(va) = m.virtual_address(0, |r, _, _| reg_value(s, r)) else {
            unresolved = true;
            continue;
        };
        let size = m.memory_size().size().max(1) as u32;
        let count = if insn.has_rep_prefix() || insn.has_repne_prefix() {
            let c = if !s.code32() && insn.memory_size().size() > 0 { s.gpr[1] & 0xffff } else { s.gpr[1] };
            c.clamp(1, 1 << 20)
        } else {
            1
        };
        let len = size.saturating_mul(count);
        let start = if s.eflags & flags::DF != 0 { (va as u32).wrapping_sub(len - size) } else { va as u32 };
        ranges.push((start, len, write));
    }
    (ranges, unresolved)
}

impl Direct<'_> {
    fn byte_at(&mut self, eip: u32) -> Option<u8> {
        let lin = self.cpu.state.seg(SegReg::Cs).base.wrapping_add(eip);
        let mut b = [0u8; 1];
        (self.read_linear(lin, &mut b) == 1).then_some(b[0])
    }

    pub(crate) fn classify(&mut self, ex: &entry::ExitRecord, deadline: Option<u64>) -> Flow {
        if ex.signal == sys::TIMER_SIGNAL {
            self.stats.exit("timer");
            return Ok(());
        }
        let Some(vector) = crate::native::vector_of(ex.signal, ex.trapno) else {
            return Err(Outcome::Unexpected(format!(
                "signal {} (si_code {}, trapno {}) at eip {:#010x}",
                ex.signal, ex.si_code, ex.trapno, ex.eip
            )));
        };
        let eip = self.cpu.state.eip;
        match vector {
            0x80 => {
                // A system call instruction (int 0x80, sysenter, syscall: all two bytes);
                // EIP is after it. The interpreter executes it with the guest's IDT.
                self.stats.exit("syscall");
                self.cpu.state.eip = eip.wrapping_sub(2);
                let s = &self.cpu.state;
                if s.cpl == 3 && self.bt.is_some() && self.opts.adaptive_user && self.opts.user_engine == EngineKind::Direct {
                    let lin = s.seg(SegReg::Cs).base.wrapping_add(s.eip);
                    if self.hot.syscall_trap(s.cr3, lin) {
                        self.stats.exit("hot-user-page");
                    }
                }
                self.emulate(deadline)
            }
            vmm_interp::state::vector::BP | vmm_interp::state::vector::OF => {
                // Traps: EIP after INT3 (CC) / INTO (CE) or INT 3 / INT 4 (CD nn).
                self.stats.exit(if vector == 3 { "int3" } else { "into" });
                let one = if vector == 3 { 0xcc } else { 0xce };
                let back = if self.byte_at(eip.wrapping_sub(1)) == Some(one) { 1 } else { 2 };
                self.cpu.state.eip = eip.wrapping_sub(back);
                self.emulate(deadline)
            }
            vmm_interp::state::vector::DB if ex.si_code == 2 => {
                // TF single step (TRAP_TRACE): a trap after the instruction.
                self.stats.exit("single-step");
                self.cpu.state.dr[6] |= 1 << 14;
                let exit = self.cpu.inject_exception(1, None);
                self.after_change();
                self.handle(exit, deadline)
            }
            vmm_interp::state::vector::PF => self.page_fault(ex, deadline),
            v => {
                let why = match v {
                    13 if self.cpu.state.seg(SegReg::Cs).base.wrapping_add(eip) < self.monitor_base
                        && self.byte_at(eip) == Some(0x0f)
                        && self.byte_at(eip.wrapping_add(1)) == Some(0xa2) =>
                    {
                        "cpuid"
                    }
                    13 if ex.err & 3 == 2 => "int-n",
                    13 => "gp-emulate",
                    0 => "de",
                    6 => "ud",
                    7 => "nm",
                    10 => "ts",
                    11 => "np",
                    12 => "ss",
                    16 => "mf",
                    17 => "ac",
                    19 => "xm",
                    _ => "other-exception",
                };
                self.stats.exit(why);
                self.emulate(deadline)
            }
        }
    }

    fn page_fault(&mut self, ex: &entry::ExitRecord, deadline: Option<u64>) -> Flow {
        let lin = ex.cr2 as u32;
        let eip = self.cpu.state.eip;
        if lin >= self.monitor_base || lin < 0x1000 {
            self.stats.exit(if lin < 0x1000 { "page0" } else { "monitor-area" });
            return self.emulate(deadline);
        }
        if ex.err & 2 != 0 && self.bt_code_write(lin) {
            // A write to a frame holding translated code (its fragments are gone) or descriptors
            // the selector table relies on (bt/segs.rs): the interpreter performs the write
            // (and raises the guest's #PF if there is one).
            self.stats.exit("bt-code-write");
            return self.emulate(deadline);
        }
        if self.last_fault.0 == eip && self.last_fault.1 == lin {
            self.last_fault.2 += 1;
        } else {
            self.last_fault = (eip, lin, 0);
        }
        if self.last_fault.2 >= 3 {
            // The same fault again after it was resolved: let the interpreter do it.
            self.stats.exit("refault");
            self.last_fault = (0, 0, 0);
            return self.emulate(deadline);
        }
        let kind = if ex.err & 0x10 != 0 {
            Kind::Fetch
        } else if ex.err & 2 != 0 {
            Kind::Write
        } else {
            Kind::Read
        };
        match self.shadow.fault(&mut self.cpu, lin, kind).map_err(io)? {
            Resolution::Mapped => {
                self.stats.exit("hidden-pf");
                Ok(())
            }
            Resolution::GuestFault { .. } if self.engine() == EngineKind::Bt => {
                // Translated code: the host instruction that faulted may not be the guest's
                // access (an inline sequence probes a store with a read first, or splits
                // it): the interpreter re-executes the guest instruction and raises the
                // exact #PF (error code, CR2).
                self.stats.exit("guest-pf");
                self.emulate(deadline)
            }
            Resolution::GuestFault { cr2, error_code } => {
                self.stats.exit("guest-pf");
                self.cpu.state.cr2 = cr2;
                let exit = self.cpu.inject_exception(14, Some(error_code));
                self.after_change();
                self.handle(exit, deadline)
            }
            Resolution::NotRam { .. } => {
                self.stats.exit("mmio");
                self.emulate(deadline)
            }
            Resolution::MonitorArea => {
                self.stats.exit("monitor-area");
                self.emulate(deadline)
            }
        }
    }
}

/// The guest's descriptor for `sel` from its GDT or LDT (None: outside the table or unreadable).
pub(crate) fn table_entry(cpu: &mut Cpu<Machine>, sel: u16) -> Option<u64> {
    let s = &cpu.state;
    let (base, limit) = if sel & 4 != 0 {
        if s.ldtr.attr == 0 {
            return None;
        }
        (s.ldtr.base, s.ldtr.limit)
    } else {
        (s.gdtr.base, s.gdtr.limit as u32)
    };
    let off = (sel & !7) as u32;
    if off + 7 > limit {
        return None;
    }
    let mut b = [0u8; 8];
    (read_linear(cpu, base.wrapping_add(off), &mut b) == 8).then(|| u64::from_le_bytes(b))
}

/// Bytes of guest-linear memory (no side effects; stops at an unmapped page).
pub(crate) fn read_linear(cpu: &mut Cpu<Machine>, lin: u32, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        let a = lin.wrapping_add(n as u32);
        let Some(p) = cpu.probe_translation(a) else { break };
        let ram = cpu.bus.ram.as_slice();
        let Some(b) = ram.get(p as usize) else { break };
        buf[n] = *b;
        n += 1;
    }
    n
}

/// Register values for iced's address computation (segment registers give their base).
pub(crate) fn reg_value(s: &CpuState, r: iced_x86::Register) -> Option<u64> {
    use iced_x86::Register as R;
    let seg = |sr: SegReg| Some(s.seg(sr).base as u64);
    match r {
        R::ES => seg(SegReg::Es),
        R::CS => seg(SegReg::Cs),
        R::SS => seg(SegReg::Ss),
        R::DS => seg(SegReg::Ds),
        R::FS => seg(SegReg::Fs),
        R::GS => seg(SegReg::Gs),
        r if r.is_gpr32() => Some(s.gpr[r as usize - R::EAX as usize] as u64),
        r if r.is_gpr16() => Some((s.gpr[r as usize - R::AX as usize] & 0xffff) as u64),
        _ => None,
    }
}

/// The name of an exception vector (for messages).
pub fn vector_name(v: u8) -> String {
    exception::name(v)
}
