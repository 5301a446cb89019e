//! Adaptive retranslation (ARCHITECTURE.md section 5, docs/bt.md "Adaptive retranslation"):
//! a guest instruction that keeps faulting in translated code is retranslated as an `Emulate`
//! callout, as VMware's adaptive binary translation did.
//!
//! An IDENT instruction copied into the TC runs at native speed until it touches something the
//! monitor must handle: a store into a frame that holds translated code (write-protected for
//! coherence), an access into the monitor area or page 0 (never mapped for the guest), MMIO (no
//! RAM behind it). Each time, the host raises a signal (SIGSEGV: tens of microseconds with the
//! exit, the classification and the interpreter) and, for a code frame, the frame's fragments
//! are invalidated and translated again when they next run. A callout does the same work
//! without the signal (a gate round trip, ~1 us) and, for stores, without the re-translation
//! churn: the interpreter performs the write through the monitor's mapping, and only fragments
//! whose guest bytes overlap the written bytes are invalidated ([`Direct::bt_code_write_range`]).
//!
//! The policy:
//! * every signal from translated code whose handling ends in one of [`FAULT_EXITS`] counts
//!   against its guest instruction, named by linear address (CS base + EIP) and translation
//!   mode ([`FaultCounters`]; other signals, such as hidden page faults that map a page or the
//!   guest's own page faults, do not count: they are not repeated at the same place for ever,
//!   and a callout would not avoid them);
//! * at [`RETRANSLATE_AFTER`] counted faults the instruction is added to the translator's hints
//!   (`Config::hints`: emit it as an `Emulate` callout of kind `Adaptive`), and the live
//!   fragments that contain it (in the same mode) are invalidated, so its unit is translated
//!   again, with the callout, when it next runs (exit `bt-retranslate`; each execution of such a
//!   callout counts as `bt-adaptive-callout`);
//! * bounds: at most [`MAX_HINTS`] hints (at the cap the set is cleared and starts again:
//!   fragments already translated with callouts keep them until they are retranslated), at most
//!   [`MAX_COUNTERS`] counters (at the cap the counters are cleared). Hints are kept across full
//!   TC flushes: a flush happens because the TC is full, which says nothing about the guest
//!   code's behaviour; a hint that became wrong (the code at that address changed) only costs
//!   speed, never correctness, since the interpreter executes the instruction exactly.
//!
//! * going back: a callout is slower than the native instruction when the instruction mostly
//!   does *not* fault (Linux's `memcpy` `rep movsd` faults on a few fixmap or code-frame
//!   copies and runs native for all others). Before each adaptive callout the runtime decodes
//!   the instruction's memory accesses with the current registers ([`Direct::bt_would_fault`]:
//!   an access into the monitor area or page 0, a write into a frame holding translated code,
//!   an address without RAM behind it); after [`REVERT_AFTER`] executions in a row that would
//!   not have faulted, the hint is dropped and the fragments that contain the instruction are
//!   invalidated (exit `bt-unhint`), so it is copied again. Each time an instruction is
//!   un-hinted its threshold doubles (up to [`MAX_BACKOFF`] doublings), so an instruction that
//!   alternates costs ever fewer signals and retranslations.
//!
//! Instructions with translations other than IDENT (branches, lookups, inline sequences)
//! ignore hints.

use rustc_hash::FxHashMap as HashMap;

use vmm_scanner::cache::{CodeRange, FragId, Invalidation};
use vmm_scanner::classify::CalloutKind;
use vmm_scanner::{CalloutOp, Mode};

use vmm_interp::state::SegReg;

use crate::direct::Direct;
use crate::engine::RunStats;

/// Counted faults of one guest instruction after which it is retranslated as a callout. Low,
/// because one fault costs about as much as 20-50 callouts; not 1, so that an instruction that
/// faults once (the first write to a page that later stays data, a one-off probe) stays native.
pub const RETRANSLATE_AFTER: u32 = 4;

/// Adaptive callouts in a row that would not have faulted natively, after which the hint is
/// dropped. A callout costs ~1 us more than a native instruction and a fault ~20 us more than
/// a callout: 64 clean executions outweigh the faults a hint saves at the threshold.
pub const REVERT_AFTER: u32 = 64;

/// Most doublings of an instruction's threshold after it was un-hinted.
pub const MAX_BACKOFF: u32 = 8;

/// Most instructions hinted at once.
pub const MAX_HINTS: usize = 4096;

/// Most instructions with a fault counter at once.
pub const MAX_COUNTERS: usize = 65536;

/// The exits (`RunStats::exits` names) of a signal from translated code that count as a fault
/// a callout would avoid: the interpreter emulated the instruction (monitor area, page 0, MMIO,
/// a #GP of a segment truncated below the monitor area, the refault heuristic) or its store
/// invalidated translated code (`bt-code-write`).
pub const FAULT_EXITS: &[&str] = &["monitor-area", "page0", "mmio", "gp-emulate", "refault", "bt-code-write"];

/// Per guest instruction (linear address, mode): faults counted so far.
#[derive(Debug, Default)]
pub struct FaultCounters {
    counts: HashMap<(u32, Mode), u32>,
    /// Hinted instructions: adaptive callouts in a row that would not have faulted.
    clean: HashMap<(u32, Mode), u32>,
    /// Times each instruction was un-hinted (its threshold is doubled as often).
    reverts: HashMap<(u32, Mode), u32>,
}

impl FaultCounters {
    /// Counts one fault of the instruction at `lin` in `mode`; true when it reaches
    /// [`RETRANSLATE_AFTER`] (its counter is then dropped).
    pub fn record(&mut self, lin: u32, mode: Mode) -> bool {
        let key = (lin, mode);
        if self.counts.len() >= MAX_COUNTERS && !self.counts.contains_key(&key) {
            self.counts.clear();
        }
        let back = self.reverts.get(&key).copied().unwrap_or(0).min(MAX_BACKOFF);
        let c = self.counts.entry(key).or_default();
        *c += 1;
        if *c >= RETRANSLATE_AFTER << back {
            self.counts.remove(&key);
            self.clean.remove(&key);
            return true;
        }
        false
    }

    /// An adaptive callout of the instruction ran; `would_fault`: natively it would have
    /// faulted. True when the hint should be dropped ([`REVERT_AFTER`] clean ones in a row).
    pub fn callout(&mut self, lin: u32, mode: Mode, would_fault: bool) -> bool {
        let key = (lin, mode);
        if would_fault {
            self.clean.remove(&key);
            return false;
        }
        if self.clean.len() >= MAX_HINTS && !self.clean.contains_key(&key) {
            self.clean.clear();
        }
        let c = self.clean.entry(key).or_default();
        *c += 1;
        if *c >= REVERT_AFTER {
            self.clean.remove(&key);
            if self.reverts.len() >= MAX_COUNTERS && !self.reverts.contains_key(&key) {
                self.reverts.clear();
            }
            *self.reverts.entry(key).or_default() += 1;
            return true;
        }
        false
    }

    /// Instructions with a counter.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// No counters.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

/// The sum of the [`FAULT_EXITS`] counters.
pub(crate) fn fault_exits(stats: &RunStats) -> u64 {
    FAULT_EXITS.iter().map(|n| stats.exits.get(n).copied().unwrap_or(0)).sum()
}

/// A signal from translated code, before it is classified: which guest instruction, and the
/// fault exits counted so far.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fault {
    lin: u32,
    mode: Mode,
    /// TC address of the signal.
    tc: u32,
    exits_before: u64,
}

impl Direct<'_> {
    /// Call with the guest state at the faulting instruction, before classifying the signal.
    pub(crate) fn bt_fault_begin(&self, tc: u32) -> Fault {
        let s = &self.cpu.state;
        Fault { lin: s.seg(SegReg::Cs).base.wrapping_add(s.eip), mode: super::mode_of(s), tc, exits_before: fault_exits(&self.stats) }
    }

    /// After the signal was handled: count it if it ended in a fault exit and, at the
    /// threshold, hint the instruction and invalidate the fragments that contain it.
    pub(crate) fn bt_fault_end(&mut self, f: Fault) {
        if fault_exits(&self.stats) == f.exits_before {
            return;
        }
        let Some(bt) = self.bt.as_mut() else { return };
        if bt.cfg.hints.contains(f.lin, f.mode) || !bt.faults.record(f.lin, f.mode) {
            return;
        }
        if bt.cfg.hints.len() >= MAX_HINTS {
            bt.cfg.hints.clear();
        }
        bt.cfg.hints.insert(f.lin, f.mode);
        self.bt_retranslate(f.lin, f.mode, Some(f.tc));
        self.stats.exit("bt-retranslate");
    }

    /// Invalidates the live fragments (of `mode`) that contain the instruction at `lin`, and
    /// the one holding TC address `tc`.
    fn bt_retranslate(&mut self, lin: u32, mode: Mode, tc: Option<u32>) {
        let frame = self.cpu.probe_translation(lin).map(|p| p >> 12);
        let Some(bt) = self.bt.as_mut() else { return };
        let mut ids: Vec<FragId> = Vec::new();
        if let Some(frame) = frame {
            let off = lin & 0xfff;
            ids = bt.cache.overlapping(frame, off, off + 1);
            ids.retain(|id| bt.cache.get(*id).is_some_and(|r| r.mode == mode));
        }
        if let Some(id) = tc.and_then(|tc| bt.cache.fragment_at(tc)) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        let inv = bt.cache.invalidate(&ids, &bt.abi);
        self.bt_apply_invalidation(inv);
    }

    /// At an `Emulate` callout (guest state = before the instruction, `tc` = the return
    /// address): for an adaptive one, count it (`--stats`) and drop the hint if the
    /// instruction stopped faulting.
    /// `decoded`: the instruction at CS:EIP, if the caller has it.
    pub(crate) fn bt_note_callout(&mut self, tc: u32, decoded: Option<&super::Decoded>) {
        let Some(bt) = self.bt.as_mut() else { return };
        let (op, arg) = (bt.abi.callout_op, bt.abi.callout_arg);
        if bt.vr32(op) != CalloutOp::Emulate as u32 || bt.vr32(arg) != CalloutKind::Adaptive as u32 {
            return;
        }
        self.stats.exit("bt-adaptive-callout");
        let s = &self.cpu.state;
        let (lin, mode) = (s.seg(SegReg::Cs).base.wrapping_add(s.eip), super::mode_of(s));
        let would = self.bt_would_fault(decoded);
        let Some(bt) = self.bt.as_mut() else { return };
        if bt.faults.callout(lin, mode, would) && bt.cfg.hints.remove(lin, mode) {
            self.bt_retranslate(lin, mode, Some(tc));
            self.stats.exit("bt-unhint");
        }
    }

    /// Whether the instruction at CS:EIP, executed natively now, would fault into the monitor:
    /// an access into page 0 or the monitor area, a write into a frame holding translated
    /// code, an access where no RAM is (its memory operands decoded with the current
    /// registers; REP strings by ECX). Undecodable: true.
    pub(crate) fn bt_would_fault(&mut self, decoded: Option<&super::Decoded>) -> bool {
        let ranges = match decoded {
            Some(d) => self.memory_ranges_decoded(d),
            None => self.memory_ranges_at_eip(),
        };
        let Some((ranges, unresolved)) = ranges else { return true };
        if unresolved {
            return true;
        }
        let ram = self.cpu.bus.ram.len() as u64;
        for (start, len, write) in ranges {
            let end = start as u64 + len as u64;
            if start < 0x1000 || end > self.monitor_base as u64 {
                return true;
            }
            let mut at = start as u64 & !0xfff;
            while at < end {
                match self.cpu.probe_translation(at as u32) {
                    None => return true, // a page fault (hidden or the guest's): not a hint's business, but not clean
                    Some(p) if p as u64 >= ram => return true,
                    Some(p) if write && self.shadow.map.code_frames.contains(&(p >> 12)) => return true,
                    Some(_) => {}
                }
                at += 0x1000;
            }
        }
        false
    }

    /// Writes what an invalidation asks for (unchain patches, empty lookup slots), forgets the
    /// removed fragments' pages, and stops protecting frames left without translated code.
    pub(crate) fn bt_apply_invalidation(&mut self, inv: Invalidation) {
        let Some(bt) = self.bt.as_mut() else { return };
        for p in inv.unchain {
            bt.write_patch(p);
        }
        for i in inv.ibl_slots {
            bt.reset_ibl_slot(i);
        }
        for r in inv.removed {
            for (_, frame) in bt.forget(r) {
                if !bt.cache.frame_has_code(frame) && !bt.seg.frames.contains(&frame) {
                    self.shadow.map.code_frames.remove(&frame);
                }
            }
        }
    }

    /// The interpreter wrote guest-linear bytes `[start, start + len)`: invalidate the
    /// fragments whose guest bytes overlap them (not every fragment of the frames: data next to
    /// code stays data). True if any was.
    pub(crate) fn bt_code_write_range(&mut self, start: u32, len: u32) -> bool {
        if self.bt.is_none() || self.shadow.map.code_frames.is_empty() || len == 0 {
            return false;
        }
        let mut any = false;
        let end = start as u64 + len as u64;
        let mut at = start as u64;
        let mut pages = 0;
        while at < end && pages <= 512 {
            let lin = (at & 0xffff_ffff) as u32;
            let stop = end.min(((at >> 12) + 1) << 12);
            pages += 1;
            let (s, e) = (lin & 0xfff, (stop - (at & !0xfff)) as u32);
            at = stop;
            let Some(frame) = self.cpu.probe_translation(lin).map(|p| p >> 12) else { continue };
            if self.bt_seg_watches(frame) {
                // A descriptor-table frame the selector table relies on (segs.rs).
                self.bt_seg_drop_range(frame, s, e);
            }
            if self.bt_fsys_watches(frame) {
                // A frame the system-call block relies on (fastsys.rs).
                self.bt_fsys_drop_range(frame, s, e);
            }
            if !self.shadow.map.code_frames.contains(&frame) {
                continue;
            }
            let Some(bt) = self.bt.as_mut() else { return any };
            let ids = bt.cache.overlapping(frame, s, e);
            if ids.is_empty() {
                continue;
            }
            let inv = bt.cache.invalidate(&ids, &bt.abi);
            bt.invalidations += 1;
            self.bt_apply_invalidation(inv);
            any = true;
        }
        any
    }
}

/// The guest byte ranges of a unit, per frame: its instructions, plus up to 15 bytes where it
/// ends at an invalid or unreadable instruction (the bytes that made it so).
pub(crate) fn unit_code_ranges(unit: &vmm_scanner::Unit, pages: &[(u32, u32)]) -> Vec<CodeRange> {
    use vmm_scanner::units::UnitEnd;
    let tail = match unit.end {
        UnitEnd::Invalid { .. } | UnitEnd::FetchFault { .. } => 15,
        _ => 0,
    };
    let lin = unit.cs_base.wrapping_add(unit.start);
    CodeRange::of_linear(lin, unit.guest_len() + tail, pages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_reach_the_threshold_once() {
        let mut c = FaultCounters::default();
        let m = Mode::kernel32();
        for _ in 1..RETRANSLATE_AFTER {
            assert!(!c.record(0x1000, m));
            assert!(!c.record(0x2000, m));
        }
        assert!(c.record(0x1000, m));
        assert_eq!(c.len(), 1, "the counter of 0x1000 is dropped, 0x2000's kept");
        assert!(!c.record(0x1000, Mode { cpl: 3, ..m }), "another mode counts apart");
    }

    #[test]
    fn clean_callouts_revert_and_double_the_threshold() {
        let mut c = FaultCounters::default();
        let m = Mode::kernel32();
        for _ in 1..REVERT_AFTER {
            assert!(!c.callout(0x1000, m, false));
        }
        assert!(!c.callout(0x1000, m, true), "a would-be fault restarts the streak");
        for _ in 1..REVERT_AFTER {
            assert!(!c.callout(0x1000, m, false));
        }
        assert!(c.callout(0x1000, m, false));
        // Un-hinted once: twice the faults before the next hint.
        for _ in 1..2 * RETRANSLATE_AFTER {
            assert!(!c.record(0x1000, m));
        }
        assert!(c.record(0x1000, m));
    }
}
