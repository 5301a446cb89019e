//! Shadow descriptor tables (ARCHITECTURE.md section 6): the guest's segments as host LDT
//! entries, written with `modify_ldt` (the only `unsafe` here).
//!
//! For each segment register at each entry the engine asks [`HostLdt::selector_for`]:
//!
//! * the guest's *descriptor cache* is what the guest sees, so it is what gets shadowed
//!   (DPL 3, limit truncated below `top`: the monitor area's base, or the shadow MMU's user
//!   limit while the guest runs at CPL 3);
//! * if the table shadow of the guest's selector (`host_selector_for_guest`: guest GDT `i` ->
//!   host `16 + 2i` in kernel mode and `16 + 2i + 1` in user mode, guest LDT `i` -> host
//!   `2064 + i`) already holds that shadow, or can be made to
//!   because the guest's table entry still matches the cache, that selector is used: guest
//!   code that copies it (`mov ax, ds; mov es, ax`, `push cs; ... retf`) then keeps working;
//! * otherwise (the table entry changed since the load, or the segment was loaded in another
//!   mode) the register's "cached" slot (`8 + sreg`) receives the cache.
//!
//! [`HostLdt::guest_segment_for`] maps a hardware selector found at an exit back to the guest's
//! selector and descriptor cache.

use rustc_hash::FxHashMap as HashMap;

use vmm_interp::state::{attr, SegReg, Segment};

use super::shadow::{self, HostDesc};
use crate::native::sys::{self, UserDesc};

/// The host LDT as this process has written it.
#[derive(Default)]
pub struct HostLdt {
    /// index -> (what was written, the guest descriptor cache it shadows).
    written: HashMap<u16, (UserDesc, Segment)>,
    pub writes: u64,
    /// Changes of `written` so far (an entry written or the segment it shadows replaced).
    generation: u64,
    /// Per guest mode (kernel, user) and segment register: the last two answers of
    /// [`HostLdt::selector_for`] that the same question will get again while `written` does
    /// not change (see there). Per mode and two of them, since the guest goes back and forth
    /// between modes and between two segments in a register (a system call's entry loads the
    /// kernel's, its exit pops the user's).
    memo: [[[Option<Memo>; 2]; 6]; 2],
}

/// A remembered [`HostLdt::selector_for`]: its inputs, the `generation` after it, its answer.
#[derive(Clone, Copy)]
struct Memo {
    seg: Segment,
    top: u32,
    generation: u64,
    selector: u16,
}

/// The raw 8-byte descriptor a descriptor cache was loaded from (accessed bit set).
pub fn encode(seg: &Segment) -> u64 {
    let g = seg.attr & attr::G != 0;
    let raw_limit = if g { seg.limit >> 12 } else { seg.limit.min(0xf_ffff) } as u64;
    let a = (seg.attr | attr::ACCESSED) as u64;
    (raw_limit & 0xffff)
        | ((seg.base as u64 & 0xff_ffff) << 16)
        | ((a & 0xff) << 40)
        | (((raw_limit >> 16) & 0xf) << 48)
        | (((a >> 12) & 0xf) << 52)
        | (((seg.base as u64) >> 24) << 56)
}

fn user_desc(index: u16, d: &HostDesc) -> UserDesc {
    let contents = if d.code { sys::UD_CONTENTS_CODE } else if d.conforming_or_expand_down { sys::UD_CONTENTS_STACK } else { sys::UD_CONTENTS_DATA };
    // Conforming code cannot be written present by modify_ldt: shadow it as non-conforming.
    let mut flags = contents << sys::UD_CONTENTS_SHIFT | sys::UD_USEABLE;
    if d.big {
        flags |= sys::UD_SEG_32BIT;
    }
    if !d.writable_or_readable {
        flags |= sys::UD_READ_EXEC_ONLY;
    }
    if d.limit_pages {
        flags |= sys::UD_LIMIT_IN_PAGES;
    }
    if !d.present {
        flags |= sys::UD_SEG_NOT_PRESENT;
    }
    UserDesc { entry_number: index as u32, base_addr: d.base, limit: d.limit, flags }
}

pub(crate) fn modify_ldt(d: &UserDesc) -> std::io::Result<()> {
    // SAFETY: modify_ldt reads `size_of::<UserDesc>()` bytes from a valid pointer; writing an
    // LDT entry affects only segment loads that name it (the monitor's 64-bit code uses none).
    let r = unsafe {
        libc::syscall(libc::SYS_modify_ldt, sys::MODIFY_LDT_WRITE, d as *const UserDesc, std::mem::size_of::<UserDesc>())
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Why a segment cannot be run directly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotShadowable;

impl HostLdt {
    fn ensure(&mut self, index: u16, ud: UserDesc, seg: &Segment) -> std::io::Result<()> {
        match self.written.get_mut(&index) {
            Some((w, s)) if *w == ud => {
                if s != seg {
                    *s = *seg;
                    self.generation += 1;
                }
                return Ok(());
            }
            _ => {}
        }
        modify_ldt(&ud)?;
        self.writes += 1;
        self.generation += 1;
        self.written.insert(index, (ud, *seg));
        Ok(())
    }

    /// The host selector to load for segment register `sreg` holding `seg`, with segments
    /// truncated below `top`. `table_entry` reads the guest's GDT/LDT entry for a selector
    /// (None if outside the table or unreadable).
    ///
    /// The answer is remembered per segment register: asked again with the same `seg`, `top`
    /// and `user` while `written` has not changed since, the computation would take the same
    /// path without side effects (the table shadow it chose, or the cached slot, now holds
    /// exactly this shadow and segment), so the remembered answer is returned without it.
    /// Answers that depended on the guest's table (its entry no longer matched the cache, the
    /// register got its cached slot) are not remembered: the table is read again next time.
    #[inline]
    pub fn selector_for(
        &mut self,
        sreg: usize,
        seg: &Segment,
        top: u32,
        user: bool,
        table_entry: &mut dyn FnMut(u16) -> Option<u64>,
    ) -> Result<u16, NotShadowable> {
        let memo = &mut self.memo[usize::from(user)][sreg];
        for m in memo.iter().flatten() {
            if m.generation == self.generation && m.seg == *seg && m.top == top {
                return Ok(m.selector);
            }
        }
        let (selector, from_memory) = self.compute_selector(sreg, seg, top, user, table_entry)?;
        let memo = &mut self.memo[usize::from(user)][sreg];
        memo[1] = memo[0].take();
        memo[0] = (!from_memory).then_some(Memo { seg: *seg, top, generation: self.generation, selector });
        Ok(selector)
    }

    /// [`HostLdt::selector_for`] without the memo; also whether the answer depended on the
    /// guest's table (or on a failed write), so that the same question may get another one.
    #[inline(never)]
    fn compute_selector(
        &mut self,
        sreg: usize,
        seg: &Segment,
        top: u32,
        user: bool,
        table_entry: &mut dyn FnMut(u16) -> Option<u64>,
    ) -> Result<(u16, bool), NotShadowable> {
        if seg.attr == 0 || !seg.present() {
            return Ok((0, false));
        }
        let raw = encode(seg);
        let desc = shadow::shadow_descriptor(raw, top).ok_or(NotShadowable)?;
        if !desc.present {
            // A code segment wholly above `top` (a readable one may sit in a data register):
            // its shadow cannot be loaded (a not-present descriptor faults at the load, in the
            // entry stub). A data register gets the null selector instead, so that every
            // access through it faults and is emulated with the guest's segment; CS cannot.
            return if sreg == SegReg::Cs as usize { Err(NotShadowable) } else { Ok((0, false)) };
        }
        // The table shadow was refused: the guest's entry did not match (or its write failed).
        let refused = match self.table_slot(seg, raw, &desc, user, table_entry) {
            Some(Ok(hs)) => return Ok((hs, false)),
            Some(Err(())) => true,
            None => false,
        };
        let hs = shadow::cached_slot_selector(sreg);
        let ud = user_desc(hs >> 3, &desc);
        self.ensure(hs >> 3, ud, seg).map_err(|_| NotShadowable)?;
        Ok((hs, refused))
    }

    /// Changes with every write of a slot (or of the segment a slot stands for): an answer of
    /// [`HostLdt::selector_for`] given before a change may name a slot that holds another
    /// shadow since.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The table slot of `seg`'s selector holding its shadow (kernel or user mode, truncated
    /// below `top`), written if need be, when the guest's table entry is `seg`'s descriptor;
    /// otherwise None. Unlike [`HostLdt::selector_for`] it never uses a register's cached slot,
    /// so it may be asked about a mode other than the one being entered (the inline system
    /// calls' paths, `bt/fastsys.rs`): a table slot holds the shadow of the table's current
    /// descriptor, whoever asks, while a cached slot belongs to the register that is using it.
    pub fn table_selector_for(&mut self, seg: &Segment, top: u32, user: bool, table_entry: &mut dyn FnMut(u16) -> Option<u64>) -> Option<u16> {
        if seg.attr == 0 || !seg.present() {
            return None;
        }
        let raw = encode(seg);
        let desc = shadow::shadow_descriptor(raw, top).filter(|d| d.present)?;
        self.table_slot(seg, raw, &desc, user, table_entry)?.ok()
    }

    /// The table slot of `seg`'s selector (descriptor `raw`, shadow `desc`) for `user` mode,
    /// written with `desc` if need be: `Ok` with its host selector when the guest's table
    /// entry is `raw` (or the slot already stands for `seg`), `Err` when it is not or the
    /// write failed, None when the selector has no table slot.
    fn table_slot(&mut self, seg: &Segment, raw: u64, desc: &HostDesc, user: bool, table_entry: &mut dyn FnMut(u16) -> Option<u64>) -> Option<Result<u16, ()>> {
        let hs = shadow::host_selector_for_guest(seg.selector, user).filter(|h| h & !3 != 0)?;
        let index = hs >> 3;
        let ud = user_desc(index, desc);
        let ok = match self.written.get(&index) {
            Some((w, s)) if *w == ud && s == seg => true,
            _ => table_entry(seg.selector).is_some_and(|t| t | (1 << 40) == raw),
        };
        Some(if ok && self.ensure(index, ud, seg).is_ok() { Ok(hs) } else { Err(()) })
    }

    /// The guest's segment for a hardware selector `hw` found in a segment register at an exit.
    /// `None`: a selector of the host's GDT (the guest loaded one of its own GDT selectors by
    /// value, reaching the host's entry) or an entry this process never wrote.
    pub fn guest_segment_for(&self, hw: u16) -> Option<Segment> {
        if hw & 0xfffc == 0 {
            return Some(Segment { selector: hw, ..Segment::default() });
        }
        if hw & 4 == 0 {
            return None;
        }
        let index = hw >> 3;
        // A cached slot or a table shadow: the guest segment it holds, with the guest's selector.
        self.written.get(&index).map(|(_, seg)| *seg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_round_trips_through_the_interpreters_decoder() {
        for seg in [Segment::flat(0x08, true, 0), Segment::flat(0x23, false, 3), Segment { selector: 0x30, base: 0x1234_5000, limit: 0xffff, attr: 0x93 }] {
            let d = vmm_interp::seg::Descriptor(encode(&seg));
            let mut want = seg;
            want.attr |= attr::ACCESSED;
            assert_eq!(d.to_segment(seg.selector), want);
        }
    }

    #[test]
    fn a_code_segment_above_the_top_is_never_loaded_not_present() {
        // A readable code segment based above the monitor area: its shadow is not present, and
        // loading that into ES in the entry stub raised #NP (SIGBUS) in the monitor. Data
        // registers get the null selector (accesses fault and are emulated), CS cannot run.
        let mut seg = Segment::flat(0x08, true, 0);
        seg.base = 0xffc0_1000;
        seg.limit = 0xfff;
        let top = 0xff00_0000;
        assert!(!shadow::shadow_descriptor(encode(&seg), top).unwrap().present);
        let mut ldt = HostLdt::default();
        let mut no_table = |_| None;
        assert_eq!(ldt.selector_for(SegReg::Es as usize, &seg, top, false, &mut no_table), Ok(0));
        assert_eq!(ldt.selector_for(SegReg::Cs as usize, &seg, top, false, &mut no_table), Err(NotShadowable));
        assert_eq!(ldt.table_selector_for(&seg, top, false, &mut no_table), None);
        assert_eq!(ldt.writes, 0, "no slot written");
    }

    #[test]
    fn shadows_are_dpl3_and_truncated() {
        let seg = Segment::flat(0x10, false, 0);
        let d = shadow::shadow_descriptor(encode(&seg), 0xffc0_0000).unwrap();
        assert!(d.limit_pages);
        assert_eq!(d.limit, 0xffbff);
        let d = shadow::shadow_descriptor(encode(&Segment::flat(0x23, false, 3)), 0xc000_0000).unwrap();
        assert_eq!(d.limit, 0xbffff);
        let ud = user_desc(4098, &d);
        assert_eq!(ud.entry_number, 4098);
        assert_eq!(ud.flags & sys::UD_READ_EXEC_ONLY, 0);
    }
}
