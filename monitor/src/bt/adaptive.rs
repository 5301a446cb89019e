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
//! Not done: going back (an instruction hinted during boot that no longer faults stays a
//! callout until the hints are cleared); instructions with translations other than IDENT
//! (branches, lookups, inline sequences) ignore hints.

use std::collections::HashMap;

use vmm_scanner::cache::{CodeRange, FragId, Invalidation};
use vmm_scanner::classify::CalloutKind;
use vmm_scanner::{CalloutOp, Mode};

use crate::direct::Direct;
use crate::engine::RunStats;

/// Counted faults of one guest instruction after which it is retranslated as a callout. Low,
/// because one fault costs about as much as 20-50 callouts; not 1, so that an instruction that
/// faults once (the first write to a page that later stays data, a one-off probe) stays native.
pub const RETRANSLATE_AFTER: u32 = 4;

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
}

impl FaultCounters {
    /// Counts one fault of the instruction at `lin` in `mode`; true when it reaches
    /// [`RETRANSLATE_AFTER`] (its counter is then dropped).
    pub fn record(&mut self, lin: u32, mode: Mode) -> bool {
        let key = (lin, mode);
        if self.counts.len() >= MAX_COUNTERS && !self.counts.contains_key(&key) {
            self.counts.clear();
        }
        let c = self.counts.entry(key).or_default();
        *c += 1;
        if *c >= RETRANSLATE_AFTER {
            self.counts.remove(&key);
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
        Fault { lin: s.seg(vmm_interp::state::SegReg::Cs).base.wrapping_add(s.eip), mode: super::mode_of(s), tc, exits_before: fault_exits(&self.stats) }
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
        let mut ids: Vec<FragId> = Vec::new();
        if let Some(frame) = self.cpu.probe_translation(f.lin).map(|p| p >> 12) {
            let off = f.lin & 0xfff;
            ids = bt.cache.overlapping(frame, off, off + 1);
            ids.retain(|id| bt.cache.get(*id).is_some_and(|r| r.mode == f.mode));
        }
        if let Some(id) = bt.cache.fragment_at(f.tc) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        let inv = bt.cache.invalidate(&ids, &bt.abi);
        self.bt_apply_invalidation(inv);
        self.stats.exit("bt-retranslate");
    }

    /// Counts the executions of adaptive callouts (`--stats`). Call at an `Emulate` callout.
    pub(crate) fn bt_note_callout(&mut self) {
        let Some(bt) = self.bt.as_mut() else { return };
        let (op, arg) = (bt.abi.callout_op, bt.abi.callout_arg);
        if bt.vr32(op) == CalloutOp::Emulate as u32 && bt.vr32(arg) == CalloutKind::Adaptive as u32 {
            self.stats.exit("bt-adaptive-callout");
        }
    }

    /// Writes what an invalidation asks for (unchain patches, empty lookup slots), forgets the
    /// removed fragments' pages, and stops protecting frames left without translated code.
    pub(crate) fn bt_apply_invalidation(&mut self, inv: Invalidation) {
        let Some(bt) = self.bt.as_mut() else { return };
        for p in inv.unchain {
            bt.area.write(p.addr, &p.bytes);
        }
        for i in inv.ibl_slots {
            bt.reset_ibl_slot(i);
        }
        for r in inv.removed {
            for (_, frame) in bt.pages.remove(&r).unwrap_or_default() {
                if !bt.cache.frame_has_code(frame) {
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
}
