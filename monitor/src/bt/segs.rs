//! Inline segment loads, the runtime half (docs/bt.md, "Inline segment loads";
//! docs/translator.md has the sequence).
//!
//! Translated kernel code loads DS, ES and FS (MOV and POP) without a callout when the
//! selector table on the vCPU region (`Abi::seg_table`) has a nonzero entry for the guest
//! selector: the host selector of that selector's kernel-mode shadow in the host LDT. The
//! runtime fills an entry only when a load of that selector *now*, at CPL 0, would succeed and
//! give exactly the shadow in that host slot, and it empties the table whenever that could stop
//! being true:
//!
//! * **Filling** (before each entry into the TC, [`Direct::bt_seg_fill`]): for each of the
//!   guest's ES, DS, FS, GS, SS (Linux's `__KERNEL_DS` is only ever in SS, and VERW checks
//!   it on every return to user mode) whose host selector is the table shadow of its selector (the direct
//!   engine's `HostLdt::selector_for` chose the shadow slot because the guest's descriptor
//!   matches the register's cache), the guest's descriptor is read again and must equal the
//!   cache exactly (accessed bit included, so a load would write nothing), be a present data
//!   or readable code segment, and (data or non-conforming code) have DPL >= RPL: the checks
//!   of a data-segment load at CPL 0. Null selectors (0-3) load the null selector 3 and need
//!   no descriptor. Only in protected mode, outside virtual-8086 mode, at CPL 0; only
//!   CPL-0 fragments read the table (inline rules are callouts at other CPLs).
//! * **Watching**: the frames the descriptors were read from become protected frames (the
//!   same write protection as frames holding translated code, `LowMap::protect_code_frame`):
//!   a guest write to one is performed by the interpreter (a native write faults,
//!   `bt_code_write`, and the faulting instruction is emulated; after a few faults adaptive
//!   retranslation makes it an `Emulate` callout), whose predicted write ranges
//!   (`bt_code_write_range`) empty the entries whose descriptors they overlap
//!   ([`Direct::bt_seg_drop_range`]); the frame stays protected. The table is emptied by a change of GDTR, of the
//!   LDTR's selector or cache, of the paging mode or of protected / virtual-8086 mode, a
//!   CR3 write or INVLPG that maps a descriptor page to another frame (the pages are walked
//!   again), a full TC flush (it clears every protection), a stretch run by the interpreter
//!   outside `emulate` (its writes are not predicted), and the next run of a session.
//! * **The host slots** the entries name (`16 + 2i` for GDT entry `i`, `2064 + i` for LDT
//!   entry `i`) are written only with the shadow of the guest's current descriptor (kernel
//!   mode: truncated below the monitor area), so while the descriptor is unchanged they hold
//!   what the entry was filled with.
//! * **After an exit** from the TC ([`Direct::bt_seg_copy_back`]) the guest's ES, DS, FS are
//!   rebuilt from the host selectors found in the exit record (`HostLdt::guest_segment_for`)
//!   and the virtual selectors the inline loads stored (`Abi::vseg`).

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use vmm_interp::seg::Descriptor;
use vmm_interp::state::{cr, flags, SegReg, Segment};

use super::Bt;
use crate::direct::entry::{EntryState, ExitRecord};
use crate::direct::Direct;

/// The host selector a null guest selector loads (a null selector with RPL 3).
const HOST_NULL: u16 = 3;

/// What the entries were validated under: GDTR, LDTR (selector and cache), the paging and
/// protection bits of CR0/CR4 and EFLAGS.VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Key {
    gdtr: (u32, u16),
    ldtr: (u16, u32, u32, u16),
    modes: (u32, u32, bool),
}

impl Key {
    fn of(s: &vmm_interp::CpuState) -> Key {
        Key {
            gdtr: (s.gdtr.base, s.gdtr.limit),
            ldtr: (s.ldtr.selector, s.ldtr.base, s.ldtr.limit, s.ldtr.attr),
            modes: (s.cr0 & (cr::CR0_PE | cr::CR0_PG | cr::CR0_WP), s.cr4 & (cr::CR4_PSE | cr::CR4_PAE), s.eflags & flags::VM != 0),
        }
    }
}

/// The selector table's bookkeeping.
#[derive(Default)]
pub struct SegTable {
    /// Guest selector -> host selector, the nonzero entries of the table.
    filled: HashMap<u16, u16>,
    /// (linear page, frame) of the descriptor-table pages the filled entries were read from.
    pages: Vec<(u32, u32)>,
    /// Their frames: protected (write-faulting) while the table relies on them.
    pub(crate) frames: HashSet<u32>,
    /// What the entries were validated under.
    key: Option<Key>,
    /// (CR3, INVLPGs executed) when `pages` were last walked.
    walk: (u32, u64),
    /// Entries filled, times the table was emptied.
    pub fills: u64,
    pub drops: u64,
}

impl SegTable {
    pub fn is_empty(&self) -> bool {
        self.filled.is_empty()
    }
}

impl Bt {
    /// Empties the selector table; returns the frames it watched.
    pub(crate) fn seg_clear(&mut self) -> HashSet<u32> {
        let filled = std::mem::take(&mut self.seg.filled);
        for sel in filled.into_keys() {
            let off = self.abi.seg_entry(sel);
            self.vw16(off, 0);
        }
        self.seg.pages.clear();
        self.seg.key = None;
        std::mem::take(&mut self.seg.frames)
    }

    fn seg_set(&mut self, sel: u16, hw: u16) {
        let off = self.abi.seg_entry(sel);
        self.vw16(off, hw);
        self.seg.filled.insert(sel, hw);
        self.seg.fills += 1;
    }
}

impl Direct<'_> {
    /// Empties the selector table and stops protecting its frames (those without translated
    /// code); `why` is counted in the exit statistics.
    pub(crate) fn bt_seg_drop(&mut self, why: &'static str) {
        let Some(bt) = self.bt.as_mut() else { return };
        if bt.seg.filled.is_empty() && bt.seg.key.is_none() {
            return;
        }
        if !bt.seg.filled.is_empty() {
            bt.seg.drops += 1;
            self.stats.exit(why);
        }
        let frames = bt.seg_clear();
        for f in frames {
            if !bt.cache.frame_has_code(f) && !bt.fsys.frames.contains(&f) {
                self.shadow.map.code_frames.remove(&f);
            }
        }
    }

    /// The interpreter wrote bytes `[start, end)` of `frame` (page offsets), a frame the table
    /// watches: the entries whose descriptors the bytes overlap are emptied, wherever in the
    /// linear space the write was made (another mapping of the frame too); the others stay,
    /// and so does the frame's protection (Linux rewrites its GDT's TLS entries at every
    /// context switch; the kernel's own selectors are in other entries).
    pub(crate) fn bt_seg_drop_range(&mut self, frame: u32, start: u32, end: u32) {
        let s = &self.cpu.state;
        let (gdt, ldt) = (s.gdtr.base, s.ldtr.base);
        let Some(bt) = self.bt.as_mut() else { return };
        let pages = &bt.seg.pages;
        // Whether the 8 bytes at linear `d` touch [start, end) of `frame` (yes where a page of
        // them is not among the walked pages: cannot tell).
        let overlaps = |d: u32| {
            let mut at = d as u64;
            let stop = d as u64 + 8;
            while at < stop {
                let page = ((at >> 12) & 0xf_ffff) as u32;
                let next = stop.min(((at >> 12) + 1) << 12);
                let (lo, hi) = ((at & 0xfff) as u32, (next - (at & !0xfff)) as u32);
                match pages.iter().find(|&&(p, _)| p == page) {
                    None => return true,
                    Some(&(_, f)) if f == frame && lo < end && hi > start => return true,
                    _ => {}
                }
                at = next;
            }
            false
        };
        let hit: Vec<u16> = bt
            .seg
            .filled
            .keys()
            .copied()
            .filter(|&sel| sel & !3 != 0 && overlaps((if sel & 4 != 0 { ldt } else { gdt }).wrapping_add((sel & !7) as u32)))
            .collect();
        if hit.is_empty() {
            return;
        }
        for sel in hit {
            let off = bt.abi.seg_entry(sel);
            bt.vw16(off, 0);
            bt.seg.filled.remove(&sel);
        }
        bt.seg.drops += 1;
        self.stats.exit("bt-seg-drop-write");
    }

    /// Whether a guest write to `frame` must empty the selector table.
    pub(crate) fn bt_seg_watches(&self, frame: u32) -> bool {
        self.bt.as_ref().is_some_and(|bt| bt.seg.frames.contains(&frame))
    }

    /// Before an entry into the TC with host selectors `hw` (the guest's GS shadow at index 5,
    /// before the vCPU region replaces it): check that the table still holds, then fill the
    /// entries of the selectors the guest's ES, DS, FS, GS, SS hold (module documentation).
    pub(crate) fn bt_seg_fill(&mut self, hw: &[u16; 6]) {
        let key = Key::of(&self.cpu.state);
        let invlpgs = self.shadow.stats().invlpgs;
        let s = &self.cpu.state;
        let usable = s.protected_mode() && !s.v86();
        let (cpl, cr3) = (s.cpl, s.cr3);
        let Some(bt) = self.bt.as_mut() else { return };
        // For `cs:` operands of inline VERR/VERW (read through ES).
        let off = bt.abi.cs_shadow;
        bt.vw16(off, hw[SegReg::Cs as usize]);
        if bt.seg.key != Some(key) || !usable {
            self.bt_seg_drop("bt-seg-drop-tables");
            if !usable {
                return;
            }
            let Some(bt) = self.bt.as_mut() else { return };
            bt.seg.key = Some(key);
            bt.seg.walk = (cr3, invlpgs);
            for sel in 0..4 {
                bt.seg_set(sel, HOST_NULL);
            }
        } else if bt.seg.walk != (cr3, invlpgs) {
            // The descriptor pages may map to other frames now.
            let pages = bt.seg.pages.clone();
            bt.seg.walk = (cr3, invlpgs);
            if pages.iter().any(|&(p, f)| self.cpu.probe_translation(p << 12).map(|x| x >> 12) != Some(f)) {
                self.bt_seg_drop("bt-seg-drop-paging");
                let Some(bt) = self.bt.as_mut() else { return };
                bt.seg.key = Some(key);
                for sel in 0..4 {
                    bt.seg_set(sel, HOST_NULL);
                }
            }
        }
        if cpl != 0 {
            return;
        }
        for sreg in [SegReg::Es, SegReg::Ds, SegReg::Fs, SegReg::Gs, SegReg::Ss] {
            let seg = self.cpu.state.seg[sreg as usize];
            let sel = seg.selector;
            if self.bt.as_ref().is_none_or(|bt| bt.seg.filled.contains_key(&sel)) {
                continue;
            }
            let Some(shadow) = vmm_shadow_mmu::desc::host_selector_for_guest(sel, false) else { continue };
            if shadow & !3 == 0 || hw[sreg as usize] != shadow {
                continue;
            }
            let raw = crate::direct::ldt::encode(&seg);
            if self.table_entry(sel) != Some(raw) || !loadable_at_cpl0(raw, sel) {
                continue;
            }
            // The descriptor's pages: protected from now on.
            let s = &self.cpu.state;
            let base = if sel & 4 != 0 { s.ldtr.base } else { s.gdtr.base };
            let lin = base.wrapping_add((sel & !7) as u32);
            let mut pages = Vec::with_capacity(2);
            for p in [lin >> 12, lin.wrapping_add(7) >> 12] {
                if pages.iter().any(|&(q, _)| q == p) {
                    continue;
                }
                match self.cpu.probe_translation(p << 12) {
                    Some(f) => pages.push((p, f >> 12)),
                    None => break,
                }
            }
            if pages.len() != 1 + usize::from(lin >> 12 != lin.wrapping_add(7) >> 12) {
                continue;
            }
            let mut ok = true;
            for &(_, f) in &pages {
                ok &= self.shadow.map.protect_code_frame(f).is_ok();
            }
            let Some(bt) = self.bt.as_mut() else { return };
            for (p, f) in pages {
                bt.seg.frames.insert(f);
                if !bt.seg.pages.contains(&(p, f)) {
                    bt.seg.pages.push((p, f));
                }
            }
            if ok {
                bt.seg_set(sel, shadow);
            }
        }
    }

    /// After an exit from the TC entered with `st`: the guest's ES, DS, FS as the inline
    /// loads left them (the host selector in the exit record, the virtual selector on the
    /// vCPU region).
    pub(crate) fn bt_seg_copy_back(&mut self, ex: &ExitRecord, st: &EntryState) {
        let Some(bt) = self.bt.as_mut() else { return };
        let mut hw = ex.sel;
        if ex.signal != 0 {
            // A fault while an inline VERR/VERW had ES loaded with the CS shadow: the recovery
            // names the slot holding the guest's ES selector.
            if let Some(pc) = bt.cache.guest_state_at(ex.eip) {
                for (r, off) in pc.recovery.restore.iter().flatten() {
                    if *r == iced_x86::Register::ES {
                        hw[SegReg::Es as usize] = bt.vr32(*off) as u16;
                    }
                }
            }
        }
        if bt.seg.filled.is_empty() && hw == st.sel {
            return;
        }
        for sreg in [SegReg::Es, SegReg::Ds, SegReg::Fs] {
            let i = sreg as usize;
            let v = bt.vr32(bt.abi.vseg + 4 * i as u32) as u16;
            let cur = self.cpu.state.seg[i];
            if hw[i] == st.sel[i] && v == cur.selector {
                continue;
            }
            let seg = if hw[i] & !3 == 0 {
                Some(Segment { selector: v, ..Segment::default() })
            } else {
                self.ldt.guest_segment_for(hw[i]).map(|g| Segment { selector: v, ..g })
            };
            if let Some(seg) = seg {
                self.cpu.state.seg[i] = seg;
            }
        }
    }
}

/// Whether a data-segment register load of `sel` with descriptor `raw` succeeds at CPL 0
/// (the interpreter's `load_seg` for DS, ES, FS, GS in protected mode).
fn loadable_at_cpl0(raw: u64, sel: u16) -> bool {
    let d = Descriptor(raw);
    let rpl = (sel & 3) as u8;
    d.is_segment() && d.present() && d.readable() && !((d.is_data() || !d.conforming()) && rpl > d.dpl())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_interp::state::attr;

    #[test]
    fn cpl0_load_checks() {
        let data = |dpl: u16, p: bool| {
            let mut s = Segment::flat(0x10, false, dpl as u8);
            if !p {
                s.attr &= !attr::P;
            }
            crate::direct::ldt::encode(&s)
        };
        assert!(loadable_at_cpl0(data(0, true), 0x10));
        assert!(!loadable_at_cpl0(data(0, true), 0x13), "RPL 3 > DPL 0");
        assert!(loadable_at_cpl0(data(3, true), 0x13));
        assert!(!loadable_at_cpl0(data(3, false), 0x13), "not present");
        let code = crate::direct::ldt::encode(&Segment::flat(0x08, true, 0));
        assert_eq!(loadable_at_cpl0(code, 0x08), Descriptor(code).readable());
        assert!(!loadable_at_cpl0(0, 0x08), "a null descriptor");
    }
}
