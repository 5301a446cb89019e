//! An interpreter of the 32-bit x86 architecture as a P6-class processor defines it
//! (Intel SDM volumes 2 and 3): the oracle of `vmm`.
//!
//! It decodes with iced-x86 and executes one instruction at a time on a [`CpuState`] against a
//! [`Bus`] (guest-physical memory, I/O ports, the interrupt line). It serves three purposes:
//!
//! * the **oracle**: the host CPU checks it (differential tests at CPL 3), and it checks the
//!   binary translator;
//! * the **single-instruction emulator** the monitor uses where an instruction cannot run
//!   natively (MMIO, accesses into the monitor area, privileged instructions that trapped);
//! * the **`interp` engine**, which runs a whole guest.
//!
//! Layout, after Bochs's `cpu/`: the semantics are split by instruction family under
//! [`exec`](crate::exec) (arithmetic, logic, shift, bit, BCD, data transfer, stack, string,
//! control transfer, far transfers, protection, system, x87/SSE state); the machinery is in
//! [`seg`] (segmentation and descriptors), [`mmu`] (paging and the TLB), `mem` (memory
//! operands), `decode` (the decoded-instruction cache), `block` (the block cache `run` executes
//! from) and [`exception`] (event delivery).
//!
//! There is no `unsafe` code in this crate.
#![forbid(unsafe_code)]

mod block;
pub mod bus;
pub mod cpuid;
mod decode;
pub mod exception;
mod exec;
mod fast;
mod mem;
pub mod mmu;
pub mod seg;
pub mod state;

use iced_x86::Instruction;

pub use bus::{Bus, IoAction, RamBus};
pub use cpuid::CpuModel;
pub use state::{CpuState, FpuState, Segment, SegReg, TableReg};

/// An exception as the CPU raises it: vector and error code (for vectors that push one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exception {
    pub vector: u8,
    pub error: Option<u32>,
}

/// Why an instruction did not complete. Internal to instruction execution: an
/// [`Exception`] is delivered to the guest (or intercepted), `Unsupported` ends the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Exc(Exception),
    Unsupported(&'static str),
}

impl From<Exception> for Fault {
    fn from(e: Exception) -> Fault {
        Fault::Exc(e)
    }
}

/// Result of one step of instruction execution.
pub type Res<T> = Result<T, Fault>;

/// Why [`Cpu::step`] or [`Cpu::run`] stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// HLT executed; EIP points after it. The caller waits for an interrupt and runs again
    /// (the CPU stays halted, and `step` keeps returning `Halt`, until an interrupt is taken).
    Halt,
    /// A port write whose bus handler returned [`IoAction::Exit`]. The instruction completed.
    PortIo { port: u16, size: u8, value: u32 },
    /// An exception whose vector is in [`Cpu::intercept`]: it was *not* delivered. The state
    /// is the one at the faulting instruction (for faults) or after it (for traps: INT3,
    /// INTO, single-step), as the host CPU reports it in a signal frame.
    Exception { vector: u8, error_code: Option<u32>, cr2: u32, eip: u32 },
    /// An exception or interrupt whose vector is in [`Cpu::report`] was delivered through
    /// the IDT; the CPU is at the first instruction of its handler.
    Delivered { vector: u8, error_code: Option<u32> },
    /// A fault while delivering a double fault: the processor shuts down. The state is the
    /// one at the instruction that started the cascade.
    TripleFault { first: u8, second: u8 },
    /// An instruction or mode this interpreter does not implement (task switches, virtual-8086
    /// mode, x87 arithmetic). The state is the one before the instruction.
    Unsupported { eip: u32, reason: &'static str, instruction: String },
    /// `run` executed its whole budget of instructions.
    Budget,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Halt => write!(f, "HLT"),
            Exit::PortIo { port, size, value } => write!(f, "port write {port:#x} ({size} bytes) = {value:#x}"),
            Exit::Exception { vector, error_code, cr2, eip } => {
                write!(f, "exception {} at eip {eip:#010x}", exception::name(*vector))?;
                if let Some(e) = error_code {
                    write!(f, " error code {e:#x}")?;
                }
                if *vector == state::vector::PF {
                    write!(f, " cr2 {cr2:#010x}")?;
                }
                Ok(())
            }
            Exit::Delivered { vector, .. } => write!(f, "delivered {}", exception::name(*vector)),
            Exit::TripleFault { first, second } => write!(
                f,
                "triple fault ({} while delivering {} and then #DF)",
                exception::name(*second),
                exception::name(*first)
            ),
            Exit::Unsupported { eip, reason, instruction } => {
                write!(f, "unsupported by the interpreter at eip {eip:#010x}: {instruction} ({reason})")
            }
            Exit::Budget => write!(f, "instruction budget exhausted"),
        }
    }
}

/// Behaviour the SDM leaves undefined and the host CPU does not do consistently.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quirks {
    /// CMPS accesses its source (DS:ESI) before its destination (ES:EDI). The default
    /// (destination first) is what this host does for a single CMPS: a null ES raises #GP
    /// before an unmapped source's #PF, a null DS only after an unmapped destination's #PF.
    /// Under REP the host has also been seen to take the source first; the differential test
    /// accepts a CMPS fault that either order reproduces exactly.
    pub cmps_source_first: bool,
}

/// The interpreter: a CPU state, the machine it is attached to, and its caches.
pub struct Cpu<B: Bus> {
    pub state: CpuState,
    pub bus: B,
    /// The CPUID answers and feature set of the virtual processor.
    pub model: CpuModel,
    /// Bit `v` set: exception vector `v` ends `run` with [`Exit::Exception`] instead of being
    /// delivered through the IDT (used to compare with the host CPU, which reports through
    /// signals, and by the monitor for the exceptions it handles itself).
    pub intercept: u32,
    /// Bit `v` set: after delivering vector `v` (exception, INT n or interrupt) through the
    /// IDT, `run` returns [`Exit::Delivered`].
    pub report: u32,
    /// Instructions retired since creation.
    pub icount: u64,
    /// Choices the SDM leaves to the implementation, where the host CPU is not consistent.
    pub quirks: Quirks,
    pub(crate) tlb: mmu::Tlb,
    pub(crate) icache: decode::DecodeCache,
    pub(crate) blocks: block::BlockCache,
    /// Where execution continues after the current instruction (handlers of control
    /// transfers overwrite it).
    pub(crate) next_eip: u32,
    /// An exit requested by the current instruction, returned once it has completed.
    pub(crate) pending_exit: Option<Exit>,
    /// Registers at the start of the current instruction, restored when it faults.
    pub(crate) saved_gpr: [u32; 8],
    pub(crate) saved_eflags: u32,
    /// The instruction being executed (for Unsupported reports and exception classes).
    pub(crate) cur_eip: u32,
}

impl<B: Bus> Cpu<B> {
    /// A CPU in the reset state attached to `bus`, with the default P6-class model.
    pub fn new(bus: B) -> Cpu<B> {
        Cpu::with_state(CpuState::reset(), bus)
    }

    /// A CPU with `state` attached to `bus`, with the default P6-class model reporting the
    /// bus's TSC rate ([`Bus::tsc_hz`]) when it has one.
    pub fn with_state(state: CpuState, bus: B) -> Cpu<B> {
        let mut model = CpuModel::default();
        if let Some(hz) = bus.tsc_hz() {
            model.set_tsc_hz(hz);
        }
        Cpu {
            state,
            bus,
            model,
            intercept: 0,
            report: 0,
            icount: 0,
            quirks: Quirks::default(),
            tlb: mmu::Tlb::new(),
            icache: decode::DecodeCache::new(),
            blocks: block::BlockCache::new(),
            next_eip: 0,
            pending_exit: None,
            saved_gpr: [0; 8],
            saved_eflags: 0,
            cur_eip: 0,
        }
    }

    /// Forget every cached translation. Call after changing `state` (CR0, CR3, CR4, segment
    /// caches) from outside the interpreter; instructions executed by the interpreter itself
    /// keep the caches coherent.
    pub fn flush_caches(&mut self) {
        self.tlb.flush_all();
    }

    /// Execute at most `budget` instructions, stopping early at any [`Exit`].
    ///
    /// Runs of instructions execute from the block cache (see `block.rs`): pending interrupts
    /// are recognised between blocks, a few instructions later at most than `step` would.
    /// Each instruction attempted (completed or faulted) counts against the budget.
    pub fn run(&mut self, budget: u64) -> Exit {
        let mut left = budget;
        while left > 0 {
            if let Some(exit) = self.poll_interrupt() {
                return exit;
            }
            // Single-step traps and the interrupt shadow (the one instruction after STI, MOV SS
            // or POP SS, after which a pending interrupt is taken) stay instruction-exact:
            // those instructions take the single-instruction path.
            if self.state.eflags & state::flags::TF == 0 && !self.state.int_shadow {
                match self.run_block(&mut left) {
                    BlockRun::Done => continue,
                    BlockRun::Exit(exit) => return exit,
                    BlockRun::NoBlock => {}
                }
            }
            left -= 1;
            if let Some(exit) = self.step_insn() {
                return exit;
            }
        }
        Exit::Budget
    }

    /// Take a pending external interrupt if EFLAGS.IF allows it, then execute one
    /// instruction. Returns the exit it caused, if any.
    pub fn step(&mut self) -> Option<Exit> {
        if let Some(exit) = self.poll_interrupt() {
            return Some(exit);
        }
        self.step_insn()
    }

    /// What happens at an instruction boundary before the instruction: a pending external
    /// interrupt is taken if EFLAGS.IF allows it; a halted CPU stays halted.
    #[inline]
    fn poll_interrupt(&mut self) -> Option<Exit> {
        if self.state.eflags & state::flags::IF != 0 && !self.state.int_shadow && self.bus.interrupt_pending() {
            if let Some(vector) = self.bus.acknowledge_interrupt() {
                self.state.halted = false;
                if let Some(exit) = self.deliver_event(vector, None, exception::EventKind::External) {
                    return Some(exit);
                }
                if self.report & (1 << (vector & 31)) != 0 && vector < 32 {
                    return Some(Exit::Delivered { vector, error_code: None });
                }
            }
        }
        if self.state.halted {
            return Some(Exit::Halt);
        }
        None
    }

    /// Fetch, decode and execute the one instruction at CS:EIP.
    fn step_insn(&mut self) -> Option<Exit> {
        self.state.int_shadow = false;
        self.cur_eip = self.state.eip;
        self.saved_gpr = self.state.gpr;
        self.saved_eflags = self.state.eflags;
        let slot = match self.fetch_decode() {
            Ok(s) => s,
            Err(f) => return self.fault(f, None),
        };
        let insn = *self.cached_insn(slot);
        self.execute_decoded(&insn)
    }

    /// [`Cpu::step`] for an instruction the caller has already decoded: `insn`, decoded from
    /// `bytes` (exactly its encoding) at CS:EIP with the current code size. It behaves as
    /// `step` does: a pending interrupt first, then every check of the fetch that can differ
    /// from the caller's decode: the CS limit (first and last byte: #GP(0)), the page-level
    /// fetch check of the instruction's page (#PF, accessed bits, through the TLB as a fetch
    /// goes), and that the bytes at the physical address it translates to are `bytes`. Where
    /// they are not (the code changed or is mapped elsewhere now), the instruction crosses a
    /// page, lies outside RAM or `insn` is not for CS:EIP in this mode, it fetches and decodes
    /// as `step` does. Saves the decoder where the caller (the monitor's callouts) decoded the
    /// instruction once when it translated it.
    pub fn step_decoded(&mut self, insn: &Instruction, bytes: &[u8]) -> Option<Exit> {
        if let Some(exit) = self.poll_interrupt() {
            return Some(exit);
        }
        self.state.int_shadow = false;
        self.cur_eip = self.state.eip;
        self.saved_gpr = self.state.gpr;
        self.saved_eflags = self.state.eflags;
        match self.fetch_check(insn, bytes) {
            Ok(true) => self.execute_decoded(insn),
            Ok(false) => {
                let slot = match self.fetch_decode() {
                    Ok(s) => s,
                    Err(f) => return self.fault(f, None),
                };
                let insn = *self.cached_insn(slot);
                self.execute_decoded(&insn)
            }
            Err(f) => self.fault(f, None),
        }
    }

    /// The fetch of [`Cpu::step_decoded`]: Ok(true) if `insn` is the instruction at CS:EIP,
    /// Ok(false) if the ordinary fetch must decide, Err for the faults the fetch raises in
    /// the order it raises them (limit of the first byte, the page, limit of the last byte).
    fn fetch_check(&mut self, insn: &Instruction, bytes: &[u8]) -> Res<bool> {
        let cs = self.state.seg[SegReg::Cs as usize];
        let eip = self.state.eip;
        let len = insn.len();
        let code32 = self.state.code32();
        let size_ok = insn.code_size() == if code32 { iced_x86::CodeSize::Code32 } else { iced_x86::CodeSize::Code16 };
        if insn.is_invalid() || !size_ok || insn.ip() != eip as u64 || len == 0 || len != bytes.len() {
            return Ok(false);
        }
        if eip > cs.limit {
            return Err(exc::gp0());
        }
        let lin = cs.base.wrapping_add(eip);
        if (lin & 0xfff) as usize + len > 0x1000 {
            return Ok(false); // crosses a page: the ordinary fetch translates both
        }
        let p0 = self.translate(lin, mmu::Access::fetch(self.state.cpl == 3))? as usize;
        let same = self.bus.ram().get(p0..p0 + len).is_some_and(|b| b == bytes);
        if !same {
            return Ok(false);
        }
        let last = eip.wrapping_add(len as u32 - 1);
        if last > cs.limit || last < eip {
            return Err(exc::gp0());
        }
        Ok(true)
    }

    /// Execute instructions from the block at CS:EIP, at most `*left` of them (decremented
    /// per instruction). EFLAGS.TF and the interrupt shadow are clear. `NoBlock` (nothing
    /// done) where the single-instruction path must handle CS:EIP: a fetch fault, a CS limit
    /// violation, code outside RAM, an instruction crossing the page end, an invalid encoding.
    fn run_block(&mut self, left: &mut u64) -> BlockRun {
        let cs = self.state.seg[SegReg::Cs as usize];
        let eip = self.state.eip;
        if eip > cs.limit {
            return BlockRun::NoBlock;
        }
        let code32 = self.state.code32();
        let p0 = match self.translate(cs.base.wrapping_add(eip), mmu::Access::fetch(self.state.cpl == 3)) {
            Ok(p) => p,
            Err(_) => return BlockRun::NoBlock,
        };
        let ram = self.bus.ram();
        let Some(slot) = self.blocks.lookup(ram, p0, eip, if code32 { 32 } else { 16 }) else {
            return BlockRun::NoBlock;
        };
        let insns = std::mem::take(&mut self.blocks.slots[slot].insns);
        let fast = std::mem::take(&mut self.blocks.slots[slot].fast);
        let blen = self.blocks.slots[slot].bytes.len() as u32;
        let mut n = insns.len();
        if eip as u64 + blen as u64 - 1 > cs.limit as u64 {
            // Only the instructions entirely within the limit.
            n = insns.iter().take_while(|i| i.ip32() as u64 + i.len() as u64 - 1 <= cs.limit as u64).count();
        }
        let n = (n as u64).min(*left) as usize;
        if n == 0 {
            self.blocks.slots[slot].insns = insns;
            self.blocks.slots[slot].fast = fast;
            return BlockRun::NoBlock;
        }
        let mask = if code32 { !0u32 } else { 0xffff };
        self.blocks.guard.arm(p0, blen);
        let mut k = 0;
        let result = loop {
            let insn = &insns[k];
            let f = fast[k];
            self.next_eip = self.state.eip.wrapping_add(insn.len() as u32) & mask;
            *left -= 1;
            // A fast path changes no register or flag before its last fallible step (see
            // `fast.rs`): its snapshot is taken only if it fails.
            let generic = f == fast::Fast::Generic;
            let r = if generic {
                self.cur_eip = self.state.eip;
                self.snapshot_gpr();
                self.saved_eflags = self.state.eflags;
                self.exec(insn)
            } else {
                self.exec_fast(f, insn)
            };
            match r {
                Ok(()) => {
                    self.state.eip = self.next_eip;
                    self.icount += 1;
                    if let Some(exit) = self.pending_exit.take() {
                        break BlockRun::Exit(exit);
                    }
                    k += 1;
                    if k == n || self.blocks.guard.hit || self.state.eip != insns[k].ip32() {
                        break BlockRun::Done;
                    }
                }
                Err(e) => {
                    if !generic {
                        self.cur_eip = self.state.eip;
                        self.saved_gpr = self.state.gpr;
                        self.saved_eflags = self.state.eflags;
                    }
                    break match self.fault(e, Some(insn)) {
                        Some(exit) => BlockRun::Exit(exit),
                        None => BlockRun::Done,
                    }
                }
            }
        };
        self.blocks.guard.disarm();
        self.blocks.slots[slot].insns = insns;
        self.blocks.slots[slot].fast = fast;
        result
    }

    /// Execute one already-decoded instruction at the current EIP (the monitor's
    /// single-instruction emulation path uses this after decoding the bytes it trapped on).
    pub fn execute(&mut self, insn: &Instruction) -> Option<Exit> {
        self.saved_gpr = self.state.gpr;
        self.saved_eflags = self.state.eflags;
        self.cur_eip = self.state.eip;
        self.execute_decoded(insn)
    }

    /// Execute `insn` at the current EIP; the register snapshot for faults has been taken.
    #[inline]
    fn execute_decoded(&mut self, insn: &Instruction) -> Option<Exit> {
        let single_step = self.state.eflags & state::flags::TF != 0;
        let len = insn.len() as u32;
        self.next_eip = if self.state.code32() {
            self.state.eip.wrapping_add(len)
        } else {
            self.state.eip.wrapping_add(len) & 0xffff
        };
        match self.exec(insn) {
            Ok(()) => {
                self.state.eip = self.next_eip;
                self.icount += 1;
                if let Some(exit) = self.pending_exit.take() {
                    return Some(exit);
                }
                if single_step {
                    self.state.dr[6] |= 1 << 14; // BS
                    return self.raise_trap(state::vector::DB, None);
                }
                None
            }
            Err(f) => self.fault(f, Some(insn)),
        }
    }

    /// `saved_gpr = state.gpr`, one register at a time. The previous instruction has just
    /// stored some registers with 4-byte stores; a wider (vectorised) load of the array
    /// cannot be forwarded from them and stalls until they retire, which cost a third of the
    /// time per instruction. The compiler fences (no machine instruction) keep the copies
    /// 4 bytes wide.
    #[inline(always)]
    fn snapshot_gpr(&mut self) {
        use std::sync::atomic::{compiler_fence, Ordering};
        for r in 0..8 {
            self.saved_gpr[r] = self.state.gpr[r];
            compiler_fence(Ordering::SeqCst);
        }
    }

    /// A fault ended the current instruction: restore its starting registers and deliver,
    /// intercept or report.
    fn fault(&mut self, f: Fault, insn: Option<&Instruction>) -> Option<Exit> {
        self.state.gpr = self.saved_gpr;
        self.state.eflags = self.saved_eflags;
        self.state.eip = self.cur_eip;
        self.pending_exit = None;
        match f {
            Fault::Exc(e) => {
                if self.intercept & (1 << e.vector) != 0 {
                    return Some(Exit::Exception {
                        vector: e.vector,
                        error_code: e.error,
                        cr2: self.state.cr2,
                        eip: self.state.eip,
                    });
                }
                let exit = self.deliver_event(e.vector, e.error, exception::EventKind::Exception);
                if exit.is_none() && self.report & (1 << e.vector) != 0 {
                    return Some(Exit::Delivered { vector: e.vector, error_code: e.error });
                }
                exit
            }
            Fault::Unsupported(reason) => {
                let instruction = match insn {
                    Some(i) => format!("{i}"),
                    None => "(instruction fetch)".to_string(),
                };
                Some(Exit::Unsupported { eip: self.cur_eip, reason, instruction })
            }
        }
    }

    /// Raise a trap-class exception after the current instruction completed (EIP already
    /// points after it): INT3, INTO, single-step.
    pub(crate) fn raise_trap(&mut self, vector: u8, error: Option<u32>) -> Option<Exit> {
        if self.intercept & (1 << vector) != 0 {
            return Some(Exit::Exception { vector, error_code: error, cr2: self.state.cr2, eip: self.state.eip });
        }
        let exit = self.deliver_event(vector, error, exception::EventKind::Exception);
        if exit.is_none() && self.report & (1 << vector) != 0 {
            return Some(Exit::Delivered { vector, error_code: error });
        }
        exit
    }

    /// Inject an external interrupt now, as if the INTR line had been acknowledged with
    /// `vector` (the caller has checked EFLAGS.IF). Used by the monitor's engines.
    pub fn inject_interrupt(&mut self, vector: u8) -> Option<Exit> {
        self.state.halted = false;
        self.deliver_event(vector, None, exception::EventKind::External)
    }

    /// Deliver an exception to the guest (the monitor reflects host traps with this).
    pub fn inject_exception(&mut self, vector: u8, error: Option<u32>) -> Option<Exit> {
        self.deliver_event(vector, error, exception::EventKind::Exception)
    }
}

/// What [`Cpu::run_block`] did.
enum BlockRun {
    /// Instructions ran (possibly ending in a delivered exception); go on.
    Done,
    /// Stop the run.
    Exit(Exit),
    /// No block here: take the single-instruction path.
    NoBlock,
}

/// Shorthand constructors for exceptions.
pub mod exc {
    use super::{Exception, Fault};
    use crate::state::vector;

    #[inline]
    pub fn gp(code: u32) -> Fault {
        Fault::Exc(Exception { vector: vector::GP, error: Some(code) })
    }
    #[inline]
    pub fn gp0() -> Fault {
        gp(0)
    }
    #[inline]
    pub fn ss(code: u32) -> Fault {
        Fault::Exc(Exception { vector: vector::SS, error: Some(code) })
    }
    #[inline]
    pub fn np(code: u32) -> Fault {
        Fault::Exc(Exception { vector: vector::NP, error: Some(code) })
    }
    #[inline]
    pub fn ts(code: u32) -> Fault {
        Fault::Exc(Exception { vector: vector::TS, error: Some(code) })
    }
    #[inline]
    pub fn ud() -> Fault {
        Fault::Exc(Exception { vector: vector::UD, error: None })
    }
    #[inline]
    pub fn de() -> Fault {
        Fault::Exc(Exception { vector: vector::DE, error: None })
    }
    #[inline]
    pub fn nm() -> Fault {
        Fault::Exc(Exception { vector: vector::NM, error: None })
    }
    #[inline]
    pub fn br() -> Fault {
        Fault::Exc(Exception { vector: vector::BR, error: None })
    }
    #[inline]
    pub fn ac() -> Fault {
        Fault::Exc(Exception { vector: vector::AC, error: Some(0) })
    }
    #[inline]
    pub fn mf() -> Fault {
        Fault::Exc(Exception { vector: vector::MF, error: None })
    }
    #[inline]
    pub fn xm() -> Fault {
        Fault::Exc(Exception { vector: vector::XM, error: None })
    }
}
