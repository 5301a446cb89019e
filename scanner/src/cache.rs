//! Translation-cache bookkeeping, without memory of its own.
//!
//! The runtime owns the TC bytes (executable at `base` in the monitor area, written through its
//! high alias); this module allocates ranges in it (a bump allocator: a fragment is never
//! freed alone, the whole cache is flushed when it fills), keeps a record per fragment (guest
//! EIP and linear address, mode, guest frames, TC range, PC map, exits and their chaining
//! state), the index by (guest linear address, mode) and by guest frame, and computes the bytes
//! the runtime must write for chaining and unchaining.
//!
//! Protocol:
//!
//! 1. `alloc(len)`; on `Err(Full)` call `flush()` (drop every fragment; the runtime also resets
//!    its lookup table) and retry.
//! 2. Encode at the returned address, copy the bytes in, `insert`.
//! 3. When exit `n` of fragment `f` is taken (`CalloutOp::Exit`), `chain(f, n, to)` gives the
//!    patch to write.
//! 4. A write to a guest frame that holds translated code: `invalidate_frame(frame)` removes
//!    its fragments and returns the patches that unchain every exit that jumped into them
//!    (restoring the jump to their stubs) and the lookup-table slots to reset.

use rustc_hash::FxHashMap as HashMap;

use crate::abi::Abi;
use crate::emit::{CheckSite, ExitSite, Fragment, PcEntry};
use crate::Mode;

/// A fragment's id (stable until the next flush).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FragId(pub u32);

/// Bytes the runtime writes into the TC (through the writable alias), or into a check slot's
/// continuation (`Abi::check_conts`, for a checked exit: the runtime also updates the live
/// slot while no interrupt is pending).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Patch {
    /// TC address of the first byte (or the continuation's address in the vCPU region).
    pub addr: u32,
    /// The new rel32 (or the continuation's absolute address).
    pub bytes: [u8; 4],
}

/// The cache is full: flush it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full;

/// The record of one fragment.
#[derive(Clone, Debug)]
pub struct FragRec {
    /// Guest EIP of the unit.
    pub guest_eip: u32,
    /// Guest linear address of the unit (CS base + EIP).
    pub lin: u32,
    /// Mode it was translated under.
    pub mode: Mode,
    /// Guest frames (physical page numbers) the code came from.
    pub frames: Vec<u32>,
    /// TC address of its first byte.
    pub tc_addr: u32,
    /// Its size in bytes.
    pub size: u32,
    /// Entry point offset.
    pub entry_off: u32,
    /// Offset past the entry's pending-interrupt check (where chains lead).
    pub body_off: u32,
    /// Its pending-interrupt check sites.
    pub sites: Vec<CheckSite>,
    /// PC map.
    pub pc_map: Vec<PcEntry>,
    /// Exits and what each is chained to.
    pub exits: Vec<(ExitSite, Option<FragId>)>,
    /// The guest bytes it was decoded from, per frame ([`Cache::set_code_ranges`]); empty:
    /// unknown, every byte of its frames counts.
    pub code: Vec<CodeRange>,
}

/// Guest bytes of a fragment in one guest frame: offsets `[start, end)` in the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodeRange {
    /// Guest frame (physical page number).
    pub frame: u32,
    /// First byte (offset in the frame).
    pub start: u16,
    /// One past the last byte (at most 4096).
    pub end: u16,
}

impl CodeRange {
    /// The ranges, one per page, of the guest linear bytes `[lin, lin + len)` whose linear
    /// pages translate to frames as `pages` says ((linear page, frame) pairs); bytes on pages
    /// not in `pages` are left out. Linear addresses wrap at 4 GiB.
    pub fn of_linear(lin: u32, len: u32, pages: &[(u32, u32)]) -> Vec<CodeRange> {
        let mut out = Vec::new();
        let mut at = lin as u64;
        let end = lin as u64 + len as u64;
        while at < end {
            let a = (at & 0xffff_ffff) as u32;
            let page_end = ((at >> 12) + 1) << 12;
            let stop = end.min(page_end);
            if let Some(&(_, frame)) = pages.iter().find(|(p, _)| *p == a >> 12) {
                out.push(CodeRange {
                    frame,
                    start: (a & 0xfff) as u16,
                    end: (stop - (at & !0xfff)) as u16,
                });
            }
            at = stop;
        }
        out
    }
}

impl FragRec {
    /// TC address of the entry point.
    pub fn entry(&self) -> u32 {
        self.tc_addr + self.entry_off
    }

    /// TC address past the entry's pending-interrupt check.
    pub fn body(&self) -> u32 {
        self.tc_addr + self.body_off
    }
}

/// What an invalidation asks the runtime to do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Invalidation {
    /// Fragments removed (their code stays in the TC, dead, until the next flush).
    pub removed: Vec<FragId>,
    /// Patches that unchain exits of surviving fragments that jumped into removed ones.
    pub unchain: Vec<Patch>,
    /// Lookup-table indexes whose entries may name a removed fragment (reset them to empty).
    pub ibl_slots: Vec<u32>,
}

/// The translation cache's bookkeeping.
#[derive(Clone, Debug)]
pub struct Cache {
    base: u32,
    size: u32,
    top: u32,
    frags: Vec<Option<FragRec>>,
    by_key: HashMap<(u32, Mode), FragId>,
    by_frame: HashMap<u32, Vec<FragId>>,
    /// For each fragment, the (fragment, exit) pairs chained into it.
    incoming: HashMap<FragId, Vec<(FragId, u32)>>,
    /// Fragment ids in TC-address order (allocation order).
    order: Vec<FragId>,
    /// The TC address of each of `order`'s fragments, kept when the fragment is removed.
    order_addr: Vec<u32>,
    /// `order_addr` is strictly ascending (fragments inserted in allocation order, as the
    /// runtime does): `fragment_at` is then one binary search.
    ordered: bool,
    flushes: u64,
    /// Address of the check slots' continuations (`Abi::check_conts` in the vCPU region).
    conts: u32,
    /// The first check slot not used by a live fragment.
    next_slot: u32,
}

fn rel32(site: u32, target: u32) -> [u8; 4] {
    target.wrapping_sub(site.wrapping_add(4)).to_le_bytes()
}

/// The patch that makes exit `site` of the fragment at `tc` go to `target`: its rel32, or for
/// a checked exit its slot's continuation (in the array at `conts`).
fn exit_patch(conts: u32, tc: u32, site: &ExitSite, target: u32) -> Patch {
    match site.slot {
        Some(n) => Patch {
            addr: conts.wrapping_add(4 * n),
            bytes: target.to_le_bytes(),
        },
        None => {
            let addr = tc + site.patch_off;
            Patch {
                addr,
                bytes: rel32(addr, target),
            }
        }
    }
}

impl Cache {
    /// A cache over the TC bytes `[base, base + size)`. `reserved` bytes at the start are kept
    /// for the runtime (the lookup miss routine).
    pub fn new(base: u32, size: u32, reserved: u32) -> Cache {
        assert!(reserved <= size);
        Cache {
            base,
            size,
            top: reserved,
            frags: Vec::new(),
            by_key: HashMap::default(),
            by_frame: HashMap::default(),
            incoming: HashMap::default(),
            order: Vec::new(),
            order_addr: Vec::new(),
            ordered: true,
            flushes: 0,
            conts: 0,
            next_slot: 0,
        }
    }

    /// Where the check slots' continuations are (the vCPU region's address plus
    /// `Abi::check_conts`): chaining a checked exit patches there.
    pub fn set_check_conts(&mut self, addr: u32) {
        self.conts = addr;
    }

    /// The first check slot the next fragment may use (`Config::slot_base`); slots are
    /// given out in order and all freed by a flush.
    pub fn next_slot(&self) -> u32 {
        self.next_slot
    }

    /// Bytes in use.
    pub fn used(&self) -> u32 {
        self.top
    }

    /// Number of full flushes so far.
    pub fn flushes(&self) -> u64 {
        self.flushes
    }

    /// Number of live fragments.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// No live fragments.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Reserves `len` bytes (16-byte aligned) and returns their TC address.
    pub fn alloc(&mut self, len: u32) -> Result<u32, Full> {
        let start = self.top.checked_add(15).ok_or(Full)? & !15;
        let end = start.checked_add(len).ok_or(Full)?;
        if end > self.size {
            return Err(Full);
        }
        self.top = end;
        Ok(self.base + start)
    }

    /// Drops every fragment (the runtime resets its lookup table too). Keeps the reserved
    /// bytes given to [`Cache::new`]... which the caller re-passes here.
    pub fn flush(&mut self, reserved: u32) {
        self.top = reserved;
        self.frags.clear();
        self.by_key.clear();
        self.by_frame.clear();
        self.incoming.clear();
        self.order.clear();
        self.order_addr.clear();
        self.ordered = true;
        self.next_slot = 0;
        self.flushes += 1;
    }

    /// Records a fragment encoded at an address `alloc` returned. A live fragment with the same
    /// key is replaced: the returned invalidation unchains the exits that jumped into it.
    pub fn insert(
        &mut self,
        frag: &Fragment,
        lin: u32,
        mode: Mode,
        frames: &[u32],
    ) -> (FragId, Invalidation) {
        let id = FragId(self.frags.len() as u32);
        let mut inv = Invalidation::default();
        if let Some(old) = self.by_key.get(&(lin, mode)).copied() {
            self.remove(old, &mut inv, &mut Vec::new());
        }
        if let Some(last) = frag.sites.iter().map(|s| s.slot + 1).max() {
            self.next_slot = self.next_slot.max(last);
        }
        let mut frames = frames.to_vec();
        frames.sort_unstable();
        frames.dedup();
        for f in &frames {
            self.by_frame.entry(*f).or_default().push(id);
        }
        self.frags.push(Some(FragRec {
            guest_eip: frag.start_eip,
            lin,
            mode,
            frames,
            tc_addr: frag.tc_addr,
            size: frag.code.len() as u32,
            entry_off: frag.entry_off,
            body_off: frag.body_off,
            sites: frag.sites.clone(),
            pc_map: frag.pc_map.clone(),
            exits: frag.exits.iter().map(|e| (*e, None)).collect(),
            code: Vec::new(),
        }));
        self.by_key.insert((lin, mode), id);
        if self.order_addr.last().is_some_and(|&a| a >= frag.tc_addr) {
            self.ordered = false;
        }
        self.order.push(id);
        self.order_addr.push(frag.tc_addr);
        (id, inv)
    }

    /// The live fragment for (linear address, mode).
    pub fn lookup(&self, lin: u32, mode: Mode) -> Option<FragId> {
        self.by_key.get(&(lin, mode)).copied()
    }

    /// The record of a live fragment.
    pub fn get(&self, id: FragId) -> Option<&FragRec> {
        self.frags.get(id.0 as usize).and_then(|f| f.as_ref())
    }

    /// The live fragment whose code contains TC address `addr`.
    pub fn fragment_at(&self, addr: u32) -> Option<FragId> {
        if self.ordered {
            // Fragments do not overlap and start at ascending addresses: only the last one
            // that starts at or below `addr` can contain it (removed or not).
            let i = self.order_addr.partition_point(|&a| a <= addr);
            let id = self.order[i.checked_sub(1)?];
            let f = self.frags[id.0 as usize].as_ref()?;
            return (addr < f.tc_addr + f.size).then_some(id);
        }
        // Inserted out of address order (not what the runtime does): look at every one.
        self.order.iter().rev().find_map(|id| {
            let f = self.frags[id.0 as usize].as_ref()?;
            (addr >= f.tc_addr && addr < f.tc_addr + f.size).then_some(*id)
        })
    }

    /// Precise exceptions: the guest EIP and recovery for a fault at TC address `addr`.
    pub fn guest_state_at(&self, addr: u32) -> Option<PcEntry> {
        let f = self.get(self.fragment_at(addr)?)?;
        let off = addr - f.tc_addr;
        let i = f.pc_map.partition_point(|e| e.off <= off);
        i.checked_sub(1).map(|i| f.pc_map[i])
    }

    /// Chains exit `exit` of `from` to fragment `to` (past its entry's check: a forward exit
    /// needs none, a checked exit made it at its slot): the patch to write.
    pub fn chain(&mut self, from: FragId, exit: u32, to: FragId) -> Option<Patch> {
        let target = self.get(to)?.body();
        let conts = self.conts;
        let f = self.frags.get_mut(from.0 as usize)?.as_mut()?;
        let (site, chained) = f.exits.get_mut(exit as usize)?;
        let patch = exit_patch(conts, f.tc_addr, site, target);
        *chained = Some(to);
        // Chained again (a checked exit's stub left through the exit stub): one edge.
        let v = self.incoming.entry(to).or_default();
        if !v.contains(&(from, exit)) {
            v.push((from, exit));
        }
        Some(patch)
    }

    /// The patch that points exit `exit` of `from` at `to` again, after [`Cache::unchain_patch`]
    /// (the record of the chain is still there: nothing is recorded).
    pub fn rechain_patch(&self, from: FragId, exit: u32, to: FragId) -> Option<Patch> {
        let target = self.get(to)?.body();
        let f = self.get(from)?;
        let (site, chained) = f.exits.get(exit as usize)?;
        (*chained == Some(to)).then(|| exit_patch(self.conts, f.tc_addr, site, target))
    }

    /// The patch that points exit `exit` of `from` back at its stub (the cache's record is
    /// left as it is: for undoing chains the runtime made without telling it).
    pub fn unchain_patch(&self, from: FragId, exit: u32) -> Option<Patch> {
        let f = self.get(from)?;
        let (site, _) = f.exits.get(exit as usize)?;
        Some(exit_patch(self.conts, f.tc_addr, site, f.tc_addr + site.stub_off))
    }

    fn remove(&mut self, id: FragId, inv: &mut Invalidation, owners: &mut Vec<FragId>) {
        let Some(rec) = self.frags.get_mut(id.0 as usize).and_then(|f| f.take()) else {
            return;
        };
        inv.removed.push(id);
        self.by_key.remove(&(rec.lin, rec.mode));
        for fr in &rec.frames {
            if let Some(v) = self.by_frame.get_mut(fr) {
                v.retain(|x| *x != id);
                if v.is_empty() {
                    self.by_frame.remove(fr);
                }
            }
        }
        // Exits of other fragments that jump here go back to their stubs.
        for (from, exit) in self.incoming.remove(&id).unwrap_or_default() {
            if let Some(f) = self.frags.get_mut(from.0 as usize).and_then(|f| f.as_mut()) {
                if let Some((site, chained)) = f.exits.get_mut(exit as usize) {
                    if *chained == Some(id) {
                        *chained = None;
                        inv.unchain.push(exit_patch(
                            self.conts,
                            f.tc_addr,
                            site,
                            f.tc_addr + site.stub_off,
                        ));
                        owners.push(from);
                    }
                }
            }
        }
        // Its own outgoing chains no longer count as incoming edges of their targets.
        for (_, to) in &rec.exits {
            if let Some(to) = to {
                if let Some(v) = self.incoming.get_mut(to) {
                    v.retain(|(f, _)| *f != id);
                }
            }
        }
        let _ = rec;
    }

    /// Records the guest bytes a live fragment was decoded from (for [`Cache::overlapping`]).
    pub fn set_code_ranges(&mut self, id: FragId, code: Vec<CodeRange>) {
        if let Some(f) = self.frags.get_mut(id.0 as usize).and_then(|f| f.as_mut()) {
            f.code = code;
        }
    }

    /// The live fragments decoded from bytes `[start, end)` of guest frame `frame` (offsets in
    /// the frame); a fragment without recorded ranges counts if it came from the frame at all.
    pub fn overlapping(&self, frame: u32, start: u32, end: u32) -> Vec<FragId> {
        let Some(ids) = self.by_frame.get(&frame) else {
            return Vec::new();
        };
        ids.iter()
            .copied()
            .filter(|id| {
                self.get(*id).is_some_and(|r| {
                    r.code.is_empty()
                        || r.code.iter().any(|c| {
                            c.frame == frame && (c.start as u32) < end && start < c.end as u32
                        })
                })
            })
            .collect()
    }

    /// Removes every fragment decoded from guest frame `frame`.
    pub fn invalidate_frame(&mut self, frame: u32, abi: &Abi) -> Invalidation {
        let ids = self.by_frame.get(&frame).cloned().unwrap_or_default();
        self.invalidate(&ids, abi)
    }

    /// Removes the fragments `ids` (ids no longer live are skipped).
    pub fn invalidate(&mut self, ids: &[FragId], abi: &Abi) -> Invalidation {
        let mut inv = Invalidation::default();
        let mut owners = Vec::new();
        for &id in ids {
            if let Some(r) = self.get(id) {
                let slot = abi.ibl_index(r.guest_eip);
                if !inv.ibl_slots.contains(&slot) {
                    inv.ibl_slots.push(slot);
                }
            }
            self.remove(id, &mut inv, &mut owners);
        }
        // Patches of removed fragments are useless: keep those of survivors only.
        let removed = inv.removed.clone();
        let mut owner = owners.into_iter();
        inv.unchain
            .retain(|_| owner.next().is_some_and(|f| !removed.contains(&f)));
        inv
    }

    /// Whether guest frame `frame` holds translated code (the shadow MMU keeps it read-only).
    pub fn frame_has_code(&self, frame: u32) -> bool {
        self.by_frame.contains_key(&frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::SliceCode;
    use crate::{translate, Config};

    fn frag(cache: &mut Cache, code: &[u8], eip: u32) -> Fragment {
        let cfg = Config::default();
        let mut probe = SliceCode {
            base: eip,
            bytes: code,
        };
        let (_, f) = translate(&mut probe, 0, eip, Mode::kernel32(), 0, &cfg).unwrap();
        let at = cache.alloc(f.code.len() as u32).unwrap();
        let mut probe = SliceCode {
            base: eip,
            bytes: code,
        };
        translate(&mut probe, 0, eip, Mode::kernel32(), at, &cfg)
            .unwrap()
            .1
    }

    /// `fragment_at` against a scan of every live fragment, while fragments are added and
    /// removed (in allocation order, and not).
    #[test]
    fn fragment_at_finds_the_live_fragment_holding_an_address() {
        let abi = Abi::default();
        for shuffled in [false, true] {
            let mut c = Cache::new(0xffc0_0000, 0x10000, 64);
            let mut ids = Vec::new();
            let mut seed = 0x1234_5678u32;
            let mut rnd = || {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                seed
            };
            // Fragments of different lengths (a nop sled of 1-20 bytes, then ret).
            let mut frags: Vec<(Fragment, u32)> = (0..40u32)
                .map(|k| {
                    let mut code = vec![0x90; 1 + (k as usize * 7) % 20];
                    code.push(0xc3);
                    (frag(&mut c, &code, 0x1000 * (k + 1)), 0x1000 * (k + 1))
                })
                .collect();
            if shuffled {
                frags.swap(3, 17);
                frags.swap(20, 5);
            }
            for (k, (f, eip)) in frags.iter().enumerate() {
                let (id, _) = c.insert(f, *eip, Mode::kernel32(), &[k as u32 + 1]);
                ids.push(id);
                if rnd() % 3 == 0 {
                    let victim = ids[rnd() as usize % ids.len()];
                    c.invalidate(&[victim], &abi);
                }
            }
            let live: Vec<(u32, u32, FragId)> =
                ids.iter().filter_map(|&id| c.get(id).map(|r| (r.tc_addr, r.size, id))).collect();
            assert!(live.len() > 10 && live.len() < 40, "{}", live.len());
            for addr in 0xffc0_0000..0xffc0_0000 + c.used() + 32 {
                let want = live.iter().find(|&&(a, n, _)| addr >= a && addr < a + n).map(|l| l.2);
                assert_eq!(c.fragment_at(addr), want, "{addr:#x}, shuffled {shuffled}");
            }
        }
    }

    #[test]
    fn insert_lookup_chain_invalidate() {
        let abi = Abi::default();
        let mut c = Cache::new(0xffc0_0000, 0x10000, 64);
        // A: jmp B (at 0x1000, frame 1); B: ret (at 0x2000, frame 2).
        let fa = frag(&mut c, &[0xe9, 0xfb, 0x0f, 0, 0], 0x1000);
        let (a, _) = c.insert(&fa, 0x1000, Mode::kernel32(), &[1]);
        let fb = frag(&mut c, &[0xc3], 0x2000);
        let (b, _) = c.insert(&fb, 0x2000, Mode::kernel32(), &[2]);
        assert_eq!(c.lookup(0x1000, Mode::kernel32()), Some(a));
        assert_eq!(
            c.lookup(
                0x1000,
                Mode {
                    cpl: 3,
                    ..Mode::kernel32()
                }
            ),
            None
        );
        assert_eq!(fa.exits.len(), 1);
        assert_eq!(fa.exits[0].target_eip, 0x2000);
        let p = c.chain(a, 0, b).unwrap();
        let ra = c.get(a).unwrap();
        assert_eq!(p.addr, ra.tc_addr + fa.exits[0].patch_off);
        assert_eq!(
            p.addr
                .wrapping_add(4)
                .wrapping_add(u32::from_le_bytes(p.bytes)),
            c.get(b).unwrap().body()
        );
        assert_eq!(c.fragment_at(c.get(b).unwrap().tc_addr + 1), Some(b));
        assert!(c.frame_has_code(2));
        // Writing frame 2 removes B and unchains A's exit back to its stub.
        let inv = c.invalidate_frame(2, &abi);
        assert_eq!(inv.removed, vec![b]);
        assert_eq!(inv.unchain.len(), 1);
        let stub = ra_stub(&c, a);
        assert_eq!(
            inv.unchain[0]
                .addr
                .wrapping_add(4)
                .wrapping_add(u32::from_le_bytes(inv.unchain[0].bytes)),
            stub
        );
        assert_eq!(inv.ibl_slots, vec![abi.ibl_index(0x2000)]);
        assert!(c.lookup(0x2000, Mode::kernel32()).is_none());
        assert!(!c.frame_has_code(2));
        assert_eq!(c.len(), 1);
        // Writing frame 1 removes A; nothing to unchain.
        let inv = c.invalidate_frame(1, &abi);
        assert_eq!(inv.removed, vec![a]);
        assert!(inv.unchain.is_empty());
        assert!(c.is_empty());
    }

    #[test]
    fn replacing_a_fragment_unchains_its_callers() {
        let mut c = Cache::new(0xffc0_0000, 0x10000, 0);
        let fa = frag(&mut c, &[0xe9, 0xfb, 0x0f, 0, 0], 0x1000);
        let (a, _) = c.insert(&fa, 0x1000, Mode::kernel32(), &[1]);
        let fb = frag(&mut c, &[0xc3], 0x2000);
        let (b, _) = c.insert(&fb, 0x2000, Mode::kernel32(), &[2]);
        c.chain(a, 0, b).unwrap();
        let fb2 = frag(&mut c, &[0xc3], 0x2000);
        let (b2, inv) = c.insert(&fb2, 0x2000, Mode::kernel32(), &[2]);
        assert_ne!(b, b2);
        assert_eq!(inv.removed, vec![b]);
        assert_eq!(inv.unchain.len(), 1);
        assert_eq!(c.lookup(0x2000, Mode::kernel32()), Some(b2));
        assert!(c.get(b).is_none());
    }

    fn ra_stub(c: &Cache, a: FragId) -> u32 {
        let r = c.get(a).unwrap();
        r.tc_addr + r.exits[0].0.stub_off
    }

    #[test]
    fn code_ranges_and_precise_overlap() {
        let abi = Abi::default();
        // Linear 0x1ff0..0x2010 on pages 1 -> frame 7 and 2 -> frame 9.
        let r = CodeRange::of_linear(0x1ff0, 0x20, &[(1, 7), (2, 9)]);
        assert_eq!(
            r,
            vec![
                CodeRange { frame: 7, start: 0xff0, end: 0x1000 },
                CodeRange { frame: 9, start: 0, end: 0x10 }
            ]
        );
        // A page without a frame is left out; the top of the linear space wraps.
        assert_eq!(
            CodeRange::of_linear(0xffff_fff8, 0x10, &[(0, 3)]),
            vec![CodeRange { frame: 3, start: 0, end: 8 }]
        );
        let mut c = Cache::new(0xffc0_0000, 0x10000, 0);
        // A: `mov eax, 1; ret` at 0x1100 (frame 1, bytes 0x100..0x106); B: `ret` at 0x1800.
        let fa = frag(&mut c, &[0xb8, 1, 0, 0, 0, 0xc3], 0x1100);
        let (a, _) = c.insert(&fa, 0x1100, Mode::kernel32(), &[1]);
        c.set_code_ranges(a, CodeRange::of_linear(0x1100, 6, &[(1, 1)]));
        let fb = frag(&mut c, &[0xc3], 0x1800);
        let (b, _) = c.insert(&fb, 0x1800, Mode::kernel32(), &[1]);
        c.set_code_ranges(b, CodeRange::of_linear(0x1800, 1, &[(1, 1)]));
        assert!(c.overlapping(1, 0x400, 0x404).is_empty(), "data between the two");
        assert!(c.overlapping(1, 0xfc, 0x100).is_empty(), "ends where A starts");
        assert_eq!(c.overlapping(1, 0x105, 0x106), vec![a]);
        assert_eq!(c.overlapping(1, 0x800, 0x801), vec![b]);
        assert_eq!(c.overlapping(1, 0, 0x1000), vec![a, b]);
        assert!(c.overlapping(2, 0, 0x1000).is_empty());
        let inv = c.invalidate(&[a], &abi);
        assert_eq!(inv.removed, vec![a]);
        assert!(c.frame_has_code(1), "B still there");
        assert!(c.overlapping(1, 0x100, 0x101).is_empty());
        // Without recorded ranges a fragment counts wherever its frames are written.
        let fd = frag(&mut c, &[0xc3], 0x1c00);
        let (d, _) = c.insert(&fd, 0x1c00, Mode::kernel32(), &[1]);
        assert_eq!(c.overlapping(1, 0, 1), vec![d]);
    }

    #[test]
    fn fills_and_flushes() {
        let mut c = Cache::new(0x1000_0000, 256, 16);
        assert_eq!(c.alloc(100), Ok(0x1000_0010));
        assert_eq!(c.alloc(100), Ok(0x1000_0080));
        assert_eq!(c.alloc(100), Err(Full));
        c.flush(16);
        assert_eq!(c.flushes(), 1);
        assert_eq!(c.alloc(100), Ok(0x1000_0010));
    }

    #[test]
    fn precise_state_lookup() {
        let mut c = Cache::new(0xffc0_0000, 0x10000, 0);
        // mov eax, [ebx]; pushfd; ret
        let code = [0x8b, 0x03, 0x9c, 0xc3];
        let f = frag(&mut c, &code, 0x3000);
        let (id, _) = c.insert(&f, 0x3000, Mode::kernel32(), &[3]);
        let r = c.get(id).unwrap().clone();
        let dec: Vec<_> = iced_x86::Decoder::with_ip(32, &f.code, r.tc_addr as u64, 0)
            .into_iter()
            .collect();
        let mov = dec
            .iter()
            .find(|i| {
                i.code() == iced_x86::Code::Mov_r32_rm32
                    && i.memory_base() == iced_x86::Register::EBX
            })
            .unwrap();
        assert_eq!(c.guest_state_at(mov.ip() as u32).unwrap().guest_eip, 0x3000);
        let pushfd = dec
            .iter()
            .find(|i| i.code() == iced_x86::Code::Pushfd)
            .unwrap();
        assert_eq!(
            c.guest_state_at(pushfd.ip() as u32).unwrap().guest_eip,
            0x3002
        );
        assert!(c.guest_state_at(r.tc_addr + r.size).is_none());
    }
}
