//! The `bt` engine (ARCHITECTURE.md section 5, docs/bt.md): guest kernel code runs only as
//! translations made by `vmm-scanner`, placed in the translation cache (TC) in the monitor
//! area and entered with the guest's registers, the shadow segments and GS = the vCPU region.
//!
//! The runtime is the direct engine's: the address space and shadow MMU, the entry stub
//! (`direct::entry::enter`: an `iretq` into 32-bit code), the signal handler and its exit
//! landing, the LDT shadows, the exit classification and the interpreter calls all come from
//! `crate::direct`; a `Direct` whose engine for the current CPL is `bt` calls
//! [`Direct::bt_native`] where it would run guest code natively. What this module adds:
//!
//! * [`area`]: the monitor area's memory (TC read + execute low, written through a high alias;
//!   the vCPU region; the callout stack) and the GS descriptor of the vCPU region in the
//!   monitor's own host LDT slot (`HOST_LDT_MONITOR`);
//! * [`gate`]: the 64-bit callout gate, which leaves the TC through the direct engine's exit
//!   landing without a signal;
//! * the callout handling (this file): `Emulate`-like callouts run the interpreter on the
//!   vCPU (`Cpu::step`, with the vCPU region's virtual state synced to and from `cpu.state`)
//!   and return into the fragment when the guest continues at the next instruction; exits and
//!   lookup misses find or translate the target's fragment; pending interrupts go to the run
//!   loop;
//! * signals from the TC (a hidden or guest page fault, #GP of a truncated segment, #DE...)
//!   are mapped to the guest EIP and registers with the fragment's PC map and recovery rules
//!   (`Cache::guest_state_at`), then classified as the direct engine does. The timer signal
//!   in the TC only sets the vCPU's `irq` byte (the signal handler does it, no exit).
//!
//! * [`segs`]: the selector table of inline segment loads and VERR/VERW (filled for
//!   selectors validated at CPL 0, emptied when a descriptor, the tables or the mode change),
//!   and the guest segments rebuilt after an exit;
//! * [`adaptive`]: an instruction that keeps faulting in translated code (a store next to code,
//!   an access into the monitor area) is retranslated as a callout; emulated writes invalidate
//!   only the fragments whose guest bytes they overlap.

pub mod adaptive;
pub mod area;
pub mod fastsys;
pub mod gate;
pub mod hot;
mod ports;
pub mod segs;

use std::sync::Arc;

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use vmm_interp::state::{cr, flags, SegReg};
use vmm_interp::{Cpu, CpuState};
use vmm_scanner::abi::{HOST_FLAGS, VIRT_MASK};
use vmm_scanner::cache::{Cache, FragId};
use vmm_scanner::units::GuestInsn;
use vmm_scanner::{Abi, CalloutOp, Config, GuestCode, Mode};

use crate::direct::entry::{self, EntryState, ExitRecord};
use crate::direct::Direct;
use crate::engine::{EngineKind, Outcome};
use crate::machine::Machine;
use crate::native::sys;
use crate::space::Reservation;
use area::{MonitorArea, TC_RESERVED};

/// Offset in the TC of the trampoline to the callout gate.
pub const GATE_OFF: u32 = 0;
/// Offset of the trampoline to the echo gate (tests, measurements).
pub const ECHO_OFF: u32 = 0x10;
/// End of the trampolines (64-bit code below 4 GiB).
pub const TRAMP_END: u32 = 0x20;
/// Offset of the shared lookup-miss routine.
pub const MISS_OFF: u32 = 0x40;

/// Host LDT index of the vCPU region's descriptor (GS).
pub const VCPU_LDT_INDEX: u16 = vmm_shadow_mmu::desc::HOST_LDT_MONITOR;

/// The `bt` engine's state: the monitor area, the TC bookkeeping, the translator's config.
pub struct Bt {
    pub area: MonitorArea,
    pub cfg: Config,
    pub abi: Abi,
    pub cache: Cache,
    /// The GS selector of the vCPU region.
    pub vcpu_sel: u16,
    /// Per fragment: the (linear page, guest frame) pairs it was translated from.
    pages: HashMap<FragId, Vec<(u32, u32)>>,
    /// Per fragment (indexed by `FragId`): the guest instructions of its `Emulate` callouts as
    /// the translator decoded them (a callout executes its instruction without decoding it
    /// again: `Direct::emulate_decoded`). The fragment's guest bytes are write-watched, so
    /// while it lives they are these instructions' bytes (the callout still compares them).
    sites: Vec<Option<Sites>>,
    /// Fragments recently found by [`Bt::fragment_at`], by TC address bits (a hint: checked
    /// against the live fragment's range before use).
    recent: [FragId; 64],
    /// What `sync_in` last wrote of the registers translated code only reads (None: unknown).
    synced_sys: Option<SysRegs>,
    /// The two lookup tables' state: kernel-mode fragments (index 0), user-mode (index 1).
    ibl: [IblState; 2],
    /// A lookup miss for this guest EIP: fill its table entry once its fragment is known.
    pending_ibl: Option<u32>,
    /// An unchained exit was taken: (calling fragment, exit number, target EIP, flush count).
    pending_chain: Option<(FragId, u32, u32, u64)>,
    /// Exits chained.
    pub chained: u64,
    /// Chained exits of user-mode (CPL 3) fragments. User code at one linear address differs
    /// between address spaces: at a CR3 change a chain whose target's guest pages do not map
    /// the frames it was translated from (in the new address space) is undone, and one that
    /// was undone so and whose target maps them again is redone (a shell and the children it
    /// forks take turns on the CPU; a child that has not touched the shell's code pages yet
    /// has no mapping for them).
    user_chains: HashMap<FragId, UserChains>,
    /// The CR3 the user chains were last checked for (at a user-mode lookup; None: check at
    /// the next one).
    last_cr3: Option<u32>,
    /// The guest may have remapped user code without changing CR3 (INVLPG of a page user
    /// fragments came from, or a CR3 write of the same value): user chains and lookup entries
    /// are checked again at the next fragment lookup, as after a CR3 change.
    revalidate: bool,
    /// Linear pages user-mode fragments were translated from since the last flush (a superset:
    /// pages of dropped fragments stay).
    user_code_pages: HashSet<u32>,
    /// Guest writes that invalidated translated code.
    pub invalidations: u64,
    /// Fragments translated.
    pub translated: u64,
    /// Adaptive retranslation: faults per guest instruction (`adaptive.rs`).
    pub faults: adaptive::FaultCounters,
    /// The selector table of inline segment loads (`segs.rs`).
    pub seg: segs::SegTable,
    /// The block of system calls without a callout (`fastsys.rs`).
    pub fsys: fastsys::FastSys,
    /// What each check slot holds armed to level 1 (its stub for an enabling site, its
    /// continuation otherwise); the signal handler copies from it.
    stubs1: Box<[u32]>,
    /// Which check slots are enabling sites.
    enabling: Vec<bool>,
}

/// An `Emulate` callout's guest instruction as the translator decoded it, and its memory
/// operands (iced's `InstructionInfo::used_memory`: the write prediction computes their
/// addresses with the registers of the moment).
pub(crate) struct Decoded {
    pub g: GuestInsn,
    pub used: Box<[iced_x86::UsedMemory]>,
}

/// A fragment's `Emulate` callout sites: (guest EIP, its instruction), by EIP.
type Sites = Box<[(u32, Arc<Decoded>)]>;

/// The registers [`Bt::sync_in`] copies into the vCPU region that translated code only reads.
#[derive(Clone, Copy, PartialEq, Eq)]
struct SysRegs {
    ldtr: u16,
    tr: u16,
    gdtr: (u16, u32),
    idtr: (u16, u32),
    cr: [u32; 5],
    dr: [u32; 8],
}

impl SysRegs {
    fn of(s: &CpuState) -> SysRegs {
        SysRegs {
            ldtr: s.ldtr.selector,
            tr: s.tr.selector,
            gdtr: (s.gdtr.limit, s.gdtr.base),
            idtr: (s.idtr.limit, s.idtr.base),
            cr: [s.cr0, 0, s.cr2, s.cr3, s.cr4],
            dr: s.dr,
        }
    }

    /// `*self == SysRegs::of(s)`, without building the value (a wide load of a value just
    /// stored in narrow pieces stalls: it showed in profiles).
    fn same_as(&self, s: &CpuState) -> bool {
        self.ldtr == s.ldtr.selector
            && self.tr == s.tr.selector
            && self.gdtr == (s.gdtr.limit, s.gdtr.base)
            && self.idtr == (s.idtr.limit, s.idtr.base)
            && self.cr == [s.cr0, 0, s.cr2, s.cr3, s.cr4]
            && self.dr == s.dr
    }
}

/// One lookup table's bookkeeping.
#[derive(Default)]
struct IblState {
    /// (mode, CS base, CR3, CR4.PGE) of the entries in the table. Entries whose fragment's
    /// code pages are all global (PTE.G with CR4.PGE) survive a change of CR3 alone, as the
    /// global TLB entries they rely on do on a CPU; the others are reset.
    key: Option<(Mode, u32, u32, bool)>,
    /// Indexes filled since the last reset (a full reset empties these, not the whole table).
    filled: IndexSet,
    /// Entries filled with a fragment whose code pages are not all global since the last
    /// reset: (fragment, guest EIP, whether the entry holds it now). A change of CR3 alone
    /// empties those whose fragment's pages do not map the frames it was translated from in
    /// the new address space, and fills again those that do after being emptied so.
    non_global: HashMap<u32, (FragId, u32, bool)>,
}

/// The chained exits into one user-mode fragment (see `Bt::user_chains`): they are valid or
/// not together, since that depends on their target's pages only.
#[derive(Default)]
struct UserChains {
    /// (from, exit number).
    exits: Vec<(FragId, u32)>,
    /// The exits jump to the target now (otherwise to their stubs).
    patched: bool,
    /// The target's (linear page, frame) pairs (its `Bt::pages`, which do not change while
    /// it lives), kept here for the check at each CR3 change without two cache misses per
    /// target.
    pages: smallvec::SmallVec<[(u32, u32); 2]>,
}

/// A set of lookup-table indexes: a list to walk and a bitmap against duplicates.
#[derive(Default)]
struct IndexSet {
    list: Vec<u32>,
    bits: Vec<u64>,
}

impl IndexSet {
    fn insert(&mut self, i: u32) {
        let (w, b) = ((i / 64) as usize, i % 64);
        if self.bits.len() <= w {
            self.bits.resize(w + 1, 0);
        }
        if self.bits[w] & (1 << b) == 0 {
            self.bits[w] |= 1 << b;
            self.list.push(i);
        }
    }

    /// The indexes, the set left empty.
    fn drain(&mut self) -> Vec<u32> {
        for &i in &self.list {
            self.bits[(i / 64) as usize] = 0;
        }
        std::mem::take(&mut self.list)
    }
}

/// Which lookup table fragments of privilege level `cpl` use.
fn table_index(cpl: u8) -> usize {
    usize::from(cpl == 3)
}

/// The vCPU region's descriptor: limit `size - 1`, byte-granular up to 1 MiB, in pages
/// beyond (a region larger than 1 MiB must be a whole number of pages: `Abi::check`).
fn ud_vcpu(base: u32, size: u32) -> sys::UserDesc {
    let flags = (sys::UD_CONTENTS_DATA << sys::UD_CONTENTS_SHIFT) | sys::UD_USEABLE | sys::UD_SEG_32BIT;
    let (limit, flags) = if size <= 1 << 20 { (size - 1, flags) } else { ((size >> 12) - 1, flags | sys::UD_LIMIT_IN_PAGES) };
    sys::UserDesc { entry_number: VCPU_LDT_INDEX as u32, base_addr: base, limit, flags }
}

impl Bt {
    /// Maps the monitor area at `base` (inside `reservation`), writes the vCPU region's GS
    /// descriptor, the gate trampolines, the lookup-miss routine, the far pointers of the gate
    /// and the callout stack, and an empty lookup table.
    pub fn new(reservation: &Reservation, base: u32) -> Result<Bt, String> {
        let cfg = Config::default();
        let abi = cfg.abi.clone();
        abi.check()?;
        let mut area = MonitorArea::new(reservation, base, abi.vcpu_size, abi.ibl_table).map_err(|e| format!("the monitor area: {e}"))?;
        crate::direct::ldt::modify_ldt(&ud_vcpu(area.vcpu, abi.vcpu_size)).map_err(|e| format!("modify_ldt (vCPU region): {e}"))?;
        area.write(base + GATE_OFF, &gate::trampoline(false));
        area.write(base + ECHO_OFF, &gate::trampoline(true));
        let miss = vmm_scanner::emit::ibl_miss_routine(&abi, base + MISS_OFF).map_err(|e| e.to_string())?;
        if MISS_OFF as usize + miss.len() > TC_RESERVED as usize {
            return Err("the lookup-miss routine does not fit in the TC's reserved bytes".into());
        }
        area.write(base + MISS_OFF, &miss);
        let tc_size = area.tc_size;
        let check_max = abi.check_max as usize;
        let mut cache = Cache::new(base, tc_size, TC_RESERVED);
        cache.set_check_conts(area.vcpu + abi.check_conts);
        let mut bt = Bt {
            area,
            cache,
            cfg,
            abi,
            vcpu_sel: vmm_shadow_mmu::desc::ldt_selector(VCPU_LDT_INDEX),
            pages: HashMap::default(),
            sites: Vec::new(),
            recent: [FragId(u32::MAX); 64],
            synced_sys: None,
            ibl: Default::default(),
            pending_ibl: None,
            pending_chain: None,
            chained: 0,
            user_chains: HashMap::default(),
            last_cr3: None,
            revalidate: false,
            user_code_pages: HashSet::default(),
            invalidations: 0,
            translated: 0,
            faults: adaptive::FaultCounters::default(),
            seg: segs::SegTable::default(),
            fsys: fastsys::FastSys::default(),
            stubs1: vec![0; check_max].into_boxed_slice(),
            enabling: vec![false; check_max],
        };
        bt.set_gate(false);
        let stack_top = bt.area.stack + area::STACK_SIZE;
        bt.vw32(bt.abi.callout_stack, stack_top);
        bt.vw16(bt.abi.callout_stack + 4, sys::USER_DS);
        bt.clear_ibl(0);
        bt.clear_ibl(1);
        let bounds = bt.abi.ugs_bounds_bytes();
        bt.vw(bt.abi.ugs_bounds, &bounds);
        bt.fsys_clear();
        Ok(bt)
    }

    /// Points the vCPU's gate far pointer at the real gate or at the echo gate.
    pub fn set_gate(&mut self, echo: bool) {
        let off = self.area.base + if echo { ECHO_OFF } else { GATE_OFF };
        self.vw32(self.abi.gate, off);
        self.vw16(self.abi.gate + 4, sys::USER64_CS);
    }

    fn vw(&mut self, off: u32, b: &[u8]) {
        let a = self.area.vcpu + off;
        self.area.write(a, b);
    }
    pub fn vw32(&mut self, off: u32, v: u32) {
        self.vw(off, &v.to_le_bytes());
    }
    pub fn vw16(&mut self, off: u32, v: u16) {
        self.vw(off, &v.to_le_bytes());
    }
    pub fn vw8(&mut self, off: u32, v: u8) {
        self.vw(off, &[v]);
    }
    pub fn vr32(&mut self, off: u32) -> u32 {
        let a = self.area.vcpu + off;
        u32::from_le_bytes(self.area.read::<4>(a))
    }
    pub fn vr8(&mut self, off: u32) -> u8 {
        let a = self.area.vcpu + off;
        self.area.read::<1>(a)[0]
    }

    fn table_offset(&self, t: usize) -> u32 {
        if t == 0 {
            self.abi.ibl_table
        } else {
            self.abi.ibl_user_table
        }
    }

    /// Every entry of lookup table `t` empty (pointing at the miss routine): the entries
    /// filled since the last reset (the whole table was emptied when it was made).
    fn reset_ibl(&mut self, t: usize) {
        for i in self.ibl[t].filled.drain() {
            self.reset_ibl_entry(t, i);
        }
        self.ibl[t].non_global.clear();
    }

    /// The whole of table `t` empty (at creation).
    fn clear_ibl(&mut self, t: usize) {
        let e = self.abi.ibl_empty_entry(self.area.base + MISS_OFF);
        let n = 1usize << self.abi.ibl_bits;
        let table: Vec<u8> = e.iter().copied().cycle().take(8 * n).collect();
        self.vw(self.table_offset(t), &table);
        self.ibl[t].filled.drain();
        self.ibl[t].non_global.clear();
    }

    /// Fills entry of guest `eip` in table `t` with TC address `tc`; `global`: the
    /// fragment's code pages are all global.
    fn fill_ibl(&mut self, t: usize, eip: u32, tc: u32, frag: FragId, global: bool) {
        let e = self.abi.ibl_entry(eip, tc);
        let i = self.abi.ibl_index(eip);
        self.vw(self.table_offset(t) + 8 * i, &e);
        self.ibl[t].filled.insert(i);
        if global {
            self.ibl[t].non_global.remove(&i);
        } else {
            self.ibl[t].non_global.insert(i, (frag, eip, true));
        }
    }

    /// A change of CR3 alone: the entries of table `t` of fragments not on global pages hold
    /// their fragment where it is `valid` in the new address space, are empty elsewhere.
    fn revalidate_ibl(&mut self, t: usize, valid: &mut impl FnMut(&Bt, FragId) -> bool) {
        let mut entries = std::mem::take(&mut self.ibl[t].non_global);
        entries.retain(|&i, (f, eip, present)| {
            let Some(tc) = self.cache.get(*f).map(|r| r.body()) else {
                return false; // dropped: the cache emptied its entries
            };
            let v = valid(self, *f);
            if v && !*present {
                let e = self.abi.ibl_entry(*eip, tc);
                self.vw(self.table_offset(t) + 8 * i, &e);
            } else if !v && *present {
                self.reset_ibl_entry(t, i);
            }
            *present = v;
            true
        });
        self.ibl[t].non_global = entries;
    }

    fn reset_ibl_entry(&mut self, t: usize, i: u32) {
        let e = self.abi.ibl_empty_entry(self.area.base + MISS_OFF);
        self.vw(self.table_offset(t) + 8 * i, &e);
    }

    /// Entry `i` empty in both tables (an invalidated fragment's slot).
    fn reset_ibl_slot(&mut self, i: u32) {
        self.reset_ibl_entry(0, i);
        self.reset_ibl_entry(1, i);
    }

    /// After a CR3 change: the recorded user-mode chained exits point at their target where it
    /// is `valid` in the address space now current, at their stub elsewhere. The work is per
    /// target whose validity changed (a shell and its children take turns: most targets keep
    /// theirs).
    fn rechain_user(&mut self, valid: &mut impl FnMut(&[(u32, u32)]) -> bool) {
        let mut groups = std::mem::take(&mut self.user_chains);
        groups.retain(|&to, g| {
            if self.cache.get(to).is_none() {
                return false; // dropped: the cache unchained its callers
            }
            let now = valid(&g.pages);
            if now != g.patched {
                self.patch_user_chains(to, g, now);
            }
            !g.exits.is_empty()
        });
        self.user_chains = groups;
    }

    /// Points the exits of `g` (into `to`) at `to` (`on`) or at their stubs; forgets those the
    /// cache no longer records as chained to `to` (unchained with a dropped fragment, or
    /// chained elsewhere since).
    fn patch_user_chains(&mut self, to: FragId, g: &mut UserChains, on: bool) {
        let mut exits = std::mem::take(&mut g.exits);
        exits.retain(|&(from, exit)| {
            let chained = self.cache.get(from).and_then(|f| f.exits.get(exit as usize)).map(|e| e.1);
            if chained != Some(Some(to)) {
                return false;
            }
            // Redone through the cache (which already records it), or undone without
            // telling it (it keeps the record for the next time).
            let p = if on { self.cache.rechain_patch(from, exit, to) } else { self.cache.unchain_patch(from, exit) };
            if let Some(p) = p {
                self.write_patch(p);
            }
            true
        });
        g.exits = exits;
        g.patched = on;
    }

    /// Forgets what the runtime keeps about removed fragment `id`.
    pub(crate) fn forget(&mut self, id: FragId) -> Vec<(u32, u32)> {
        if let Some(s) = self.sites.get_mut(id.0 as usize) {
            *s = None;
        }
        self.pages.remove(&id).unwrap_or_default()
    }

    /// The live fragment whose code contains TC address `tc` (`Cache::fragment_at`, with the
    /// answer remembered for the next callout from the same place).
    pub(crate) fn fragment_at(&mut self, tc: u32) -> Option<FragId> {
        let slot = (tc >> 4) as usize % self.recent.len();
        let hint = self.recent[slot];
        if self.cache.get(hint).is_some_and(|f| tc >= f.tc_addr && tc - f.tc_addr < f.size) {
            return Some(hint); // live fragments do not overlap: this is the one
        }
        let id = self.cache.fragment_at(tc)?;
        self.recent[slot] = id;
        Some(id)
    }

    /// The decoded instruction of fragment `id`'s `Emulate` callout at guest `eip`.
    fn site(&self, id: FragId, eip: u32) -> Option<&Arc<Decoded>> {
        let sites = self.sites.get(id.0 as usize)?.as_ref()?;
        sites.binary_search_by_key(&eip, |s| s.0).ok().map(|i| &sites[i].1)
    }

    /// Drops every fragment.
    fn flush(&mut self) {
        // Every frame protection goes with the fragments (the callers clear them): the
        // selector table relied on some.
        self.seg_clear();
        self.fsys_clear();
        self.user_chains.clear();
        self.user_code_pages.clear();
        self.cache.flush(TC_RESERVED);
        self.publish_slots();
        self.pages.clear();
        self.sites.clear();
        self.reset_ibl(0);
        self.reset_ibl(1);
    }

    /// Makes this state like a new one for the next run of a session (`engine::Session`):
    /// every fragment dropped, the lookup table's filled entries reset, the vCPU region's
    /// fixed part (everything before the lookup table) restored to `header` (what it held
    /// after [`Bt::new`]), the counters and pending state from zero. The TC's flush counter
    /// (`Cache::flushes`) keeps counting: the engine reports the difference.
    pub(crate) fn reset_for_next_run(&mut self, header: &[u8]) {
        self.flush();
        let vcpu = self.area.vcpu;
        self.area.write(vcpu, header);
        self.synced_sys = None;
        self.ibl[0].key = None;
        self.ibl[1].key = None;
        self.pending_ibl = None;
        self.pending_chain = None;
        self.last_cr3 = None;
        self.revalidate = false;
        self.chained = 0;
        self.invalidations = 0;
        self.translated = 0;
        // The header zeroed the block's counters; the candidates are this run's to find.
        self.fsys = fastsys::FastSys::default();
    }

    /// Tells the signal handler where the TC, the `irq` byte, the trampolines and the check
    /// slots are. (Whether the slots are armed, `bt_armed`, stays: every slot in use holds
    /// what the flag says, and a new or reset `Bt` uses none.)
    pub(crate) fn install(&self, _lock: &std::sync::MutexGuard<'_, ()>) {
        let sh = entry::shared();
        let slots = self.area.alias_of(self.area.vcpu + self.abi.check_slots);
        let stubs = self.area.alias_of(self.area.vcpu + self.abi.check_stubs);
        // SAFETY: RUN_LOCK is held (borrowed guard) and no guest code runs now: nothing else
        // reads or writes these fields of the shared area.
        unsafe {
            (*sh).bt_tc_lo = self.area.base as u64;
            (*sh).bt_tc_hi = (self.area.base + self.area.tc_size) as u64;
            (*sh).bt_irq = (self.area.vcpu + self.abi.irq) as u64;
            (*sh).bt_tramp_lo = self.area.base as u64;
            (*sh).bt_tramp_hi = (self.area.base + TRAMP_END) as u64;
            (*sh).bt_slots = slots;
            (*sh).bt_stubs = stubs;
            (*sh).bt_stubs1 = self.stubs1.as_ptr() as u64;
            (*sh).bt_nslots = self.cache.next_slot() as u64;
        }
    }

    /// How armed the check slots are (0, 1, 2: `Shared::bt_armed`; the signal handler may
    /// have armed them).
    fn armed(&self) -> u64 {
        // SAFETY: read while no guest code runs (the caller holds RUN_LOCK through the engine).
        unsafe { (*entry::shared()).bt_armed }
    }

    /// Arms the check slots in use to `level`: 0, every slot holds its continuation; 1, the
    /// enabling sites' (after POPF and the STI shadow) hold their stubs: an interrupt is
    /// pending but the virtual IF is clear, and only those sites can set it; 2, every slot
    /// holds its stub (the sites do the full pending-interrupt check).
    fn set_armed(&mut self, level: u64) {
        if self.armed() == level {
            return;
        }
        let n = self.cache.next_slot() as usize;
        let base = (self.area.vcpu - self.area.base) as usize;
        let to = base + self.abi.check_slots as usize;
        match level {
            0 => {
                let from = base + self.abi.check_conts as usize;
                self.area.bytes().copy_within(from..from + 4 * n, to);
            }
            1 => {
                let src: Vec<u8> = self.stubs1[..n].iter().flat_map(|v| v.to_le_bytes()).collect();
                self.area.bytes()[to..to + 4 * n].copy_from_slice(&src);
            }
            _ => {
                let from = base + self.abi.check_stubs as usize;
                self.area.bytes().copy_within(from..from + 4 * n, to);
            }
        }
        // SAFETY: as in `armed`.
        unsafe { (*entry::shared()).bt_armed = level };
    }

    /// Writes a chaining or unchaining patch; a checked exit's continuation also goes into its
    /// live slot unless the slot is armed, and into its level-1 value unless it is enabling.
    fn write_patch(&mut self, p: vmm_scanner::cache::Patch) {
        self.area.write(p.addr, &p.bytes);
        let conts = self.area.vcpu + self.abi.check_conts;
        if p.addr >= conts && p.addr < conts + 4 * self.abi.check_max {
            let n = (p.addr - conts) / 4;
            let enabling = self.enabling[n as usize];
            if !enabling {
                self.stubs1[n as usize] = u32::from_le_bytes(p.bytes);
            }
            let level = self.armed();
            if level == 0 || (level == 1 && !enabling) {
                self.vw(self.abi.check_slot(n), &p.bytes);
            }
        }
    }

    /// A new fragment's check slots: continuation, stubs, and the live slot as armed.
    fn set_sites(&mut self, tc: u32, sites: &[vmm_scanner::emit::CheckSite]) {
        let level = self.armed();
        for s in sites {
            let (cont, stub) = (tc + s.cont_off, tc + s.stub_off);
            let one = if s.enable { stub } else { cont };
            self.stubs1[s.slot as usize] = one;
            self.enabling[s.slot as usize] = s.enable;
            self.vw32(self.abi.check_cont(s.slot), cont);
            self.vw32(self.abi.check_stubs + 4 * s.slot, stub);
            self.vw32(self.abi.check_slot(s.slot), match level {
                0 => cont,
                1 => one,
                _ => stub,
            });
        }
        self.publish_slots();
    }

    /// Tells the signal handler how many check slots are in use.
    fn publish_slots(&self) {
        // SAFETY: as in `armed`.
        unsafe { (*entry::shared()).bt_nslots = self.cache.next_slot() as u64 };
    }

    /// Undoes [`Bt::install`].
    pub(crate) fn uninstall(_lock: &std::sync::MutexGuard<'_, ()>) {
        let sh = entry::shared();
        // SAFETY: as in `install`.
        unsafe {
            (*sh).bt_tc_lo = 0;
            (*sh).bt_tc_hi = 0;
            (*sh).bt_irq = 0;
            (*sh).bt_tramp_lo = 0;
            (*sh).bt_tramp_hi = 0;
            (*sh).bt_slots = 0;
            (*sh).bt_stubs = 0;
            (*sh).bt_nslots = 0;
        }
    }

    /// The vCPU region from the guest state (everything inline sequences read).
    fn sync_in(&mut self, s: &CpuState, ss_shadow: u16, irq: bool) {
        // The check sites check fully while an interrupt may be pending (only the enabling
        // ones while the virtual IF is clear).
        self.set_armed(if !irq { 0 } else if s.eflags & flags::IF != 0 { 2 } else { 1 });
        let (a, vcpu) = (&self.abi, self.area.vcpu);
        let area = &mut self.area;
        let mut w = |off: u32, b: &[u8]| area.write(vcpu + off, b);
        w(a.vif, &[(s.eflags & flags::IF != 0) as u8]);
        w(a.irq, &[irq as u8]);
        w(a.vflags, &(s.eflags & VIRT_MASK & !flags::IF).to_le_bytes());
        w(a.callout_esp, &s.gpr[4].to_le_bytes());
        w(a.callout_ss, &(ss_shadow as u32).to_le_bytes());
        for i in 0..6 {
            w(a.vseg + 4 * i as u32, &(s.seg[i].selector as u32).to_le_bytes());
        }
        // Translated code only reads these (SLDT, STR, SGDT, SIDT, MOV from CRn/DRn, SMSW):
        // written when they differ from what was written last.
        if !self.synced_sys.as_ref().is_some_and(|r| r.same_as(s)) {
            let sys = SysRegs::of(s);
            w(a.ldtr, &(sys.ldtr as u32).to_le_bytes());
            w(a.tr, &(sys.tr as u32).to_le_bytes());
            w(a.gdtr, &sys.gdtr.0.to_le_bytes());
            w(a.gdtr + 2, &sys.gdtr.1.to_le_bytes());
            w(a.idtr, &sys.idtr.0.to_le_bytes());
            w(a.idtr + 2, &sys.idtr.1.to_le_bytes());
            for (n, v) in sys.cr.into_iter().enumerate() {
                w(a.cr_of(n as u32), &v.to_le_bytes());
            }
            for (n, v) in sys.dr.into_iter().enumerate() {
                w(a.dr_of(n as u32), &v.to_le_bytes());
            }
            self.synced_sys = Some(sys);
        }
        w(a.cpuid_count, &0u32.to_le_bytes());
        // User code's inline GS accesses (Mode::user_gs) read the base; GS loads are
        // callouts, so it changes only between entries.
        w(a.ugs_base, &s.seg(SegReg::Gs).base.to_le_bytes());
    }

    /// The guest's EFLAGS from the host's and the virtual bits.
    fn eflags(&mut self, host: u32) -> u32 {
        let vif = self.vr8(self.abi.vif) & 1;
        let vflags = self.vr32(self.abi.vflags);
        (host & HOST_FLAGS) | (vflags & VIRT_MASK & !flags::IF) | if vif != 0 { flags::IF } else { 0 } | flags::FIXED1
    }
}

/// The frame of a page that does not translate (`Bt::pages`).
const NO_FRAME: u32 = u32::MAX;

/// Entries of `bt_fragment`'s page-to-frame memo, and the mark of an empty one (no linear
/// page number is that large).
const VALID_MEMO: usize = 512;
const NO_PAGE: u32 = u32::MAX;

/// The frame linear page `page` translates to now, or [`NO_FRAME`].
fn frame_of<B: vmm_interp::Bus>(cpu: &mut Cpu<B>, page: u32) -> u32 {
    cpu.probe_translation(page << 12).map_or(NO_FRAME, |f| f >> 12)
}

/// The translation mode of the current guest state.
pub fn mode_of(s: &CpuState) -> Mode {
    Mode {
        cpl: s.cpl,
        code32: s.seg(SegReg::Cs).big(),
        stack32: s.seg(SegReg::Ss).big(),
        paging: s.cr0 & cr::CR0_PG != 0,
        fpu_trap: s.cr0 & (cr::CR0_TS | cr::CR0_EM) != 0,
        user_gs: user_gs_flat(s),
    }
}

/// Whether user code's GS accesses can be inline (`Mode::user_gs`, scanner's
/// `mangle/user_gs.rs`): CPL 3 in protected mode (not virtual-8086), GS a present, writable,
/// expand-up data segment with a 4 GiB limit (no access can fail its segment checks but one
/// running past offset 0xFFFFFFFF, which the inline code checks), DS with base 0 (the access
/// goes through DS to GS base + offset). Anything the DS shadow refuses faults in the host
/// and the interpreter re-executes the instruction with the guest's GS.
pub fn user_gs_flat(s: &CpuState) -> bool {
    s.cpl == 3 && s.cr0 & cr::CR0_PE != 0 && s.eflags & flags::VM == 0 && gs_flat(s.seg(SegReg::Gs)) && s.seg(SegReg::Ds).base == 0
}

/// The GS half of [`user_gs_flat`]: a present, writable, expand-up data segment with a 4 GiB
/// limit.
pub fn gs_flat(gs: &vmm_interp::state::Segment) -> bool {
    use vmm_interp::state::attr;
    gs.present() && gs.attr & attr::S != 0 && gs.attr & attr::CODE == 0 && gs.writable() && !gs.expand_down() && gs.limit == 0xffff_ffff
}

/// Guest code through the guest's page tables (no side effects).
struct Reader<'a>(&'a mut Cpu<Machine>);

impl GuestCode for Reader<'_> {
    fn read(&mut self, lin: u32, buf: &mut [u8]) -> usize {
        let room = ((1u64 << 32) - lin as u64).min(buf.len() as u64) as usize;
        crate::direct::read_linear(self.0, lin, &mut buf[..room])
    }
}

fn outcome(e: impl std::fmt::Display) -> Outcome {
    Outcome::Unexpected(format!("bt: {e}"))
}

/// Continue, or end the run.
type Flow = Result<(), Outcome>;

impl Direct<'_> {
    /// The TC address of the fragment for the guest's CS:EIP in its current mode, translated
    /// now if there is none (or the one there came from other guest frames).
    fn bt_fragment(&mut self) -> Result<(FragId, u32), Outcome> {
        let Direct { bt, cpu, shadow, info, .. } = self;
        let bt = bt.as_mut().ok_or_else(|| outcome("no translation cache"))?;
        let s = &cpu.state;
        let mode = mode_of(s);
        let eip = s.eip;
        let cs_base = s.seg(SegReg::Cs).base;
        let lin = cs_base.wrapping_add(eip);
        let key = (mode, cs_base, s.cr3, s.cr4 & cr::CR4_PGE != 0);
        // Whether fragment `f`'s guest pages map the frames it was translated from, in the
        // address space now current (memoised for one CR3 change in a direct-mapped table of
        // (page, frame), made at the first use: every user fragment with chained callers is
        // checked at each CR3 change, and hashing showed in profiles of fork + exec).
        let mut memo: Vec<(u32, u32)> = Vec::new();
        let mut pages_valid = |pp: &[(u32, u32)]| {
            if memo.is_empty() {
                memo.resize(VALID_MEMO, (NO_PAGE, 0));
            }
            pp.iter().all(|&(p, fr)| {
                let slot = &mut memo[p as usize % VALID_MEMO];
                if slot.0 != p {
                    *slot = (p, frame_of(cpu, p));
                }
                slot.1 == fr
            })
        };
        // User chains matter only to user code: checked at user-mode lookups (a shell's
        // children that run no translated user code leave its chains alone).
        if mode.cpl == 3 && (bt.last_cr3 != Some(key.2) || bt.revalidate) {
            bt.rechain_user(&mut pages_valid);
            bt.last_cr3 = Some(key.2);
        }
        let mut valid = |bt: &Bt, f: FragId| bt.pages.get(&f).is_some_and(|pp| pages_valid(pp));
        if std::mem::take(&mut bt.revalidate) {
            // The user chains too, at the next user-mode lookup.
            if mode.cpl != 3 {
                bt.last_cr3 = None;
            }
            for other in 0..2 {
                if bt.ibl[other].key.is_some_and(|k| k.2 == key.2) {
                    bt.revalidate_ibl(other, &mut valid);
                }
            }
        }
        let t = table_index(mode.cpl);
        match bt.ibl[t].key {
            Some(k) if k == key => {}
            Some((m, b, _, g)) if (m, b, g) == (key.0, key.1, key.3) => bt.revalidate_ibl(t, &mut valid),
            _ => bt.reset_ibl(t),
        }
        bt.ibl[t].key = Some(key);
        if let Some(id) = bt.cache.lookup(lin, mode) {
            let ok = bt.pages.get(&id).is_some_and(|pp| pp.iter().all(|&(p, f)| frame_of(cpu, p) == f));
            if let (true, Some(r)) = (ok, bt.cache.get(id)) {
                return Ok((id, r.entry()));
            }
        }
        let unit = vmm_scanner::units::decode_unit(&mut Reader(cpu), cs_base, eip, mode, bt.cfg.limits);
        bt.cfg.slot_base = bt.cache.next_slot();
        let mut seq = vmm_scanner::mangle::mangle(&unit, &bt.cfg);
        if bt.cfg.slot_base + seq.sites.len() as u32 > bt.abi.check_max {
            // Out of check slots: like a full TC.
            bt.flush();
            shadow.map.code_frames.clear();
            bt.cfg.slot_base = 0;
            seq = vmm_scanner::mangle::mangle(&unit, &bt.cfg);
        }
        let len = vmm_scanner::emit::emit(&seq, bt.area.base + TC_RESERVED).map_err(outcome)?.code.len() as u32;
        let addr = match bt.cache.alloc(len) {
            Ok(a) => a,
            Err(_) => {
                bt.flush();
                shadow.map.code_frames.clear();
                bt.cache.alloc(len).map_err(|_| outcome("a fragment larger than the translation cache"))?
            }
        };
        let frag = vmm_scanner::emit::emit(&seq, addr).map_err(outcome)?;
        if frag.code.len() as u32 != len {
            return Err(outcome("a fragment's length depends on its address"));
        }
        bt.area.write(addr, &frag.code);
        // A page the unit could not be fetched from (it ends in a `FetchFault` callout) is
        // recorded as NO_FRAME: the fragment is valid only while that page stays unmapped.
        let pages: Vec<(u32, u32)> = unit.pages.iter().map(|&p| (p, frame_of(cpu, p))).collect();
        // The fetch sets the code pages' Accessed bits, as the CPU's would (a walk that
        // cannot fault: the pages translate; CR2 kept in any case).
        if mode.paging {
            let cr2 = cpu.state.cr2;
            for &(p, _) in pages.iter().filter(|p| p.1 != NO_FRAME) {
                let _ = cpu.translate(p << 12, vmm_interp::mmu::Access::fetch(mode.cpl == 3));
            }
            cpu.state.cr2 = cr2;
        }
        // Coherence: the frames become code frames, mapped without write from now on.
        for &(_, f) in pages.iter().filter(|p| p.1 != NO_FRAME) {
            shadow.map.protect_code_frame(f).map_err(outcome)?;
        }
        let frames: Vec<u32> = pages.iter().map(|p| p.1).filter(|&f| f != NO_FRAME).collect();
        let (id, inv) = bt.cache.insert(&frag, lin, mode, &frames);
        bt.set_sites(frag.tc_addr, &frag.sites);
        for p in inv.unchain {
            bt.write_patch(p);
        }
        for i in inv.ibl_slots {
            bt.reset_ibl_slot(i);
        }
        for r in inv.removed {
            bt.forget(r);
        }
        bt.cache.set_code_ranges(id, adaptive::unit_code_ranges(&unit, &pages));
        if mode.cpl == 3 {
            bt.user_code_pages.extend(unit.pages.iter().copied());
        }
        bt.pages.insert(id, pages);
        let i = id.0 as usize;
        if bt.sites.len() <= i {
            bt.sites.resize_with(i + 1, || None);
        }
        let decoded = |g: &GuestInsn| (g.eip, Arc::new(Decoded { g: g.clone(), used: info.info(&g.instr).used_memory().into() }));
        let mut sites: Vec<_> = unit.insns.iter().filter(|g| seq.emulate_eips.contains(&g.eip)).map(decoded).collect();
        sites.sort_unstable_by_key(|s| s.0);
        bt.sites[i] = Some(sites.into_boxed_slice());
        bt.translated += 1;
        self.stats.exit("bt-translate");
        Ok((id, frag.tc_addr + frag.entry_off))
    }

    /// The guest changed its paging without a new CR3: INVLPG of linear `page` (a page
    /// number), or a CR3 write (None; one of a new value is seen at the next lookup anyway).
    pub(crate) fn bt_paging_changed(&mut self, page: Option<u32>) {
        if let Some(bt) = self.bt.as_mut() {
            if page.is_none_or(|p| bt.user_code_pages.contains(&p)) {
                bt.revalidate = true;
            }
        }
    }

    /// A guest write faulted at `lin`: if its frame holds translated code, drop the frame's
    /// fragments (unchaining their callers, resetting lookup-table slots) and stop protecting
    /// it. True if it did.
    pub(crate) fn bt_code_write(&mut self, lin: u32) -> bool {
        if self.bt.is_none() {
            return false;
        }
        let Some(frame) = self.cpu.probe_translation(lin).map(|p| p >> 12) else { return false };
        // A descriptor-table frame the selector table relies on (segs.rs) stays protected: the
        // interpreter performs the write, and the entries whose descriptors it changes go.
        let watched = self.bt_seg_watches(frame) || self.bt_fsys_watches(frame);
        let Some(bt) = self.bt.as_mut() else { return false };
        if !self.shadow.map.code_frames.contains(&frame) {
            return false;
        }
        if !watched {
            self.shadow.map.code_frames.remove(&frame);
        }
        if !bt.cache.frame_has_code(frame) {
            return watched;
        }
        let inv = bt.cache.invalidate_frame(frame, &bt.abi);
        for p in inv.unchain {
            bt.write_patch(p);
        }
        for i in inv.ibl_slots {
            bt.reset_ibl_slot(i);
        }
        for r in inv.removed {
            bt.forget(r);
        }
        bt.invalidations += 1;
        true
    }

    /// The guest-linear ranges the instruction at CS:EIP writes (explicit operands and the
    /// stack, REP strings by their count), decoded before the interpreter executes it.
    /// `decoded`: the instruction at CS:EIP, if the caller has it.
    pub(crate) fn bt_predict_writes(&mut self, decoded: Option<&Decoded>) -> smallvec::SmallVec<[(u32, u32); 4]> {
        let s = &self.cpu.state;
        if !s.protected_mode() || self.shadow.map.code_frames.is_empty() {
            return Default::default();
        }
        let ranges = match decoded {
            Some(d) => self.memory_ranges_decoded(d),
            None => self.memory_ranges_at_eip(),
        };
        let Some((ranges, _)) = ranges else { return Default::default() };
        let mut writes = smallvec::SmallVec::new();
        for &(start, len, write) in &ranges {
            if write {
                writes.push((start, len));
            }
        }
        writes
    }

    /// After an emulated instruction: invalidate the code frames it wrote (the predicted
    /// ranges, and the top of the stack it left, where an exception or interrupt frame goes).
    pub(crate) fn bt_after_writes(&mut self, writes: &[(u32, u32)]) {
        if self.shadow.map.code_frames.is_empty() {
            return;
        }
        let s = &self.cpu.state;
        let sp = s.seg(SegReg::Ss).base.wrapping_add(s.gpr[4]);
        // Only fragments whose guest bytes the write overlaps (adaptive.rs): a store next to
        // code in the same frame leaves the code translated.
        for &(start, len) in writes.iter().chain(std::iter::once(&(sp, 24))) {
            if self.bt_code_write_range(start, len) {
                self.stats.exit("bt-code-write-emulated");
            }
        }
    }

    /// The entry state for translated code: shadows of ES, SS, DS, FS; CS = the host's flat
    /// 32-bit code (the TC), GS = the vCPU region. Also syncs the vCPU region.
    fn bt_entry_state(&mut self) -> Result<Option<EntryState>, Outcome> {
        let Some(mut st) = self.entry_state()? else { return Ok(None) };
        self.bt_seg_fill(&st.sel);
        let irq = self.cpu.bus.interrupt_requested();
        let bt = self.bt.as_mut().ok_or_else(|| outcome("no translation cache"))?;
        bt.sync_in(&self.cpu.state, st.sel[SegReg::Ss as usize], irq);
        self.bt_fsys_sync();
        let bt = self.bt.as_mut().ok_or_else(|| outcome("no translation cache"))?;
        st.sel[SegReg::Cs as usize] = sys::USER32_CS;
        st.sel[SegReg::Gs as usize] = bt.vcpu_sel;
        st.eflags = (self.cpu.state.eflags & HOST_FLAGS) | flags::IF | flags::FIXED1;
        Ok(Some(st))
    }

    /// Runs translated code from the guest's CS:EIP until something needs the run loop.
    pub(crate) fn bt_native(&mut self, lock: &std::sync::MutexGuard<'_, ()>, deadline: Option<u64>) -> Flow {
        self.bt_exit_cpl = 0;
        if self.cpu.state.eflags & flags::TF != 0 {
            // Single-stepping (the virtual TF): the interpreter raises #DB after each instruction.
            self.stats.exit("bt-single-step");
            return self.emulate(deadline);
        }
        let (to, tc) = self.bt_fragment()?;
        let global = match self.bt.as_ref() {
            Some(bt) if bt.pending_ibl.is_some() => {
                let pages = bt.pages.get(&to).cloned().unwrap_or_default();
                !pages.is_empty() && pages.iter().all(|&(p, _)| crate::direct::shadow::global_page(&mut self.cpu, p << 12))
            }
            _ => false,
        };
        if let Some(bt) = self.bt.as_mut() {
            if let Some((from, n, target, flushes)) = bt.pending_chain.take() {
                let same_mode = bt.cache.get(from).zip(bt.cache.get(to)).is_some_and(|(f, t)| f.mode == t.mode);
                if target == self.cpu.state.eip && flushes == bt.cache.flushes() && same_mode {
                    if let Some(p) = bt.cache.chain(from, n, to) {
                        bt.write_patch(p);
                        bt.chained += 1;
                        if bt.cache.get(from).is_some_and(|f| f.mode.cpl == 3) {
                            // The target was just found valid here: its other exits too.
                            let mut g = bt.user_chains.remove(&to).unwrap_or_else(|| UserChains {
                                pages: bt.pages.get(&to).map(|pp| pp.iter().copied().collect()).unwrap_or_default(),
                                ..UserChains::default()
                            });
                            if !g.exits.contains(&(from, n)) {
                                g.exits.push((from, n));
                            }
                            if !g.patched {
                                bt.patch_user_chains(to, &mut g, true);
                            }
                            g.patched = true;
                            bt.user_chains.insert(to, g);
                        }
                    }
                }
            }
            if let Some(eip) = bt.pending_ibl.take() {
                if eip == self.cpu.state.eip {
                    let t = table_index(self.cpu.state.cpl);
                    // Past the entry's check: the lookup's hit path checks.
                    let body = bt.cache.get(to).map_or(tc, |r| r.body());
                    bt.fill_ibl(t, eip, body, to, global);
                }
            }
        }
        let Some(mut st) = self.bt_entry_state()? else {
            self.stats.exit("not-shadowable");
            return self.emulate(deadline);
        };
        st.eip = tc;
        if let Some(bt) = self.bt.as_mut() {
            bt.area.set_open(true).map_err(outcome)?;
        }
        loop {
            // Ticks the guest may leave untaken (virtual IF clear) before a forced exit: the
            // time left to the deadline, in timer periods.
            let limit = match deadline {
                Some(d) => {
                    let now = self.cpu.bus.now_ns();
                    if now >= d {
                        return Ok(()); // the run loop ends the run
                    }
                    (d - now) / (crate::direct::TIMER_PERIOD_US * 1000) + 2
                }
                None => u64::MAX,
            };
            let sh = entry::shared();
            // SAFETY: RUN_LOCK is held (`lock`); no guest code runs, so the handler does not
            // touch these fields now.
            unsafe {
                (*sh).bt_stale = 0;
                (*sh).bt_stale_limit = limit;
            }
            let t0 = crate::native::tsc::read();
            let ex = entry::enter(lock, &st, &mut self.cpu.state.fpu);
            self.guest_ticks += crate::native::tsc::read().wrapping_sub(t0);
            self.stats.native_exits += 1;
            if ex.exited == 0 {
                return Err(outcome("returned from translated code without an exit record"));
            }
            self.bt_seg_copy_back(&ex, &st);
            self.bt_fsys_follow().map_err(|e| outcome(format!("set_user: {e}")))?;
            self.bt_exit_cpl = self.cpu.state.cpl;
            if let Some(o) = self.fatal.take() {
                return Err(o);
            }
            if ex.signal != 0 {
                return self.bt_signal(&ex, deadline);
            }
            match self.bt_callout(&ex, deadline)? {
                Some(next) => st = next,
                None => return Ok(()),
            }
        }
    }

    /// A callout: the guest state is the one before the instruction at `callout_eip`.
    /// Returns the entry state to continue in the TC, or None to go back to the run loop.
    fn bt_callout(&mut self, ex: &ExitRecord, deadline: Option<u64>) -> Result<Option<EntryState>, Outcome> {
        let bt = self.bt.as_mut().ok_or_else(|| outcome("no translation cache"))?;
        let callout_arg = bt.abi.callout_arg;
        let op = bt.vr32(bt.abi.callout_op);
        let eip = bt.vr32(bt.abi.callout_eip);
        let next = bt.vr32(bt.abi.callout_next);
        let esp = bt.vr32(bt.abi.callout_esp);
        let eflags = bt.eflags(ex.eflags);
        let s = &mut self.cpu.state;
        s.gpr = ex.gpr;
        s.gpr[4] = esp;
        s.eip = eip;
        s.eflags = eflags;
        let before = (mode_of(s), s.seg(SegReg::Cs).base);
        match CalloutOp::from_u32(op) {
            Some(kind @ (CalloutOp::Emulate | CalloutOp::Invalid | CalloutOp::FetchFault)) => {
                self.bt_emulate_exits += 1; // stats.exits["bt-emulate"] at the end of the run
                // The instruction after STI: no interrupt before it (the interpreter's step
                // would take one first). Looked up only when one would be taken.
                let shadow = self.cpu.state.interrupts_enabled()
                    && self.cpu.bus.interrupt_requested()
                    && self.bt.as_ref().and_then(|bt| bt.cache.guest_state_at(ex.eip)).is_some_and(|p| p.shadow);
                self.cpu.state.int_shadow = shadow;
                // The calling fragment, and its decoded instruction for this callout if the
                // bytes at CS:EIP are still the ones it was translated from.
                let Some(bt) = self.bt.as_mut() else { return Err(outcome("no translation cache")) };
                let (frag, flushes) = (bt.fragment_at(ex.eip), bt.cache.flushes());
                let site = match (kind, frag) {
                    (CalloutOp::Emulate, Some(id)) => bt.site(id, eip).cloned(),
                    _ => None,
                };
                let site = site.filter(|d| self.site_matches(&d.g));
                self.bt_note_callout(ex.eip, site.as_deref());
                if let Some(d) = site.as_deref() {
                    if matches!(d.g.instr.code(), iced_x86::Code::Int_imm8 | iced_x86::Code::Iretd) {
                        self.bt_fsys_callout();
                    }
                }
                if self.cpu.state.cpl == 3 {
                    if let (Some(d), Some(bt)) = (site.as_deref(), self.bt.as_mut()) {
                        if d.g.instr.code() == iced_x86::Code::Int_imm8 {
                            // A candidate for the inline INT (fastsys.rs).
                            bt.fsys.want_vector = Some(d.g.instr.immediate8());
                        }
                    }
                    let arg = self.bt.as_mut().map_or(0, |bt| bt.vr32(callout_arg));
                    self.hot_user_callout(arg == vmm_scanner::classify::CalloutKind::Interrupt as u32);
                }
                self.emulate_decoded(deadline, site.as_deref())?;
                // The instruction may have overwritten the calling fragment's guest code (no
                // flush happens in between: fragment ids are not reused).
                let live = self.bt.as_ref().is_some_and(|bt| {
                    frag.is_some_and(|id| bt.cache.flushes() == flushes && bt.cache.get(id).is_some())
                });
                let s = &self.cpu.state;
                let same = next != 0
                    && live
                    && s.eip == next
                    && (mode_of(s), s.seg(SegReg::Cs).base) == before
                    && !s.halted
                    && !s.int_shadow
                    && self.engine() == EngineKind::Bt
                    && self.can_direct();
                if same {
                    return self.bt_return(ex);
                }
                Ok(None)
            }
            Some(CalloutOp::Exit) => {
                self.stats.exit(if self.cpu.state.cpl == 3 { "bt-exit-user" } else { "bt-exit" });
                if let Some(bt) = self.bt.as_mut() {
                    let arg = bt.vr32(callout_arg);
                    // The return address lies in the calling fragment's exit stub.
                    if let Some(from) = bt.fragment_at(ex.eip) {
                        bt.pending_chain = Some((from, arg, eip, bt.cache.flushes()));
                    }
                }
                Ok(None)
            }
            Some(CalloutOp::IndirectMiss) => {
                self.stats.exit(if self.cpu.state.cpl == 3 { "bt-ibl-miss-user" } else { "bt-ibl-miss" });
                if let Some(bt) = self.bt.as_mut() {
                    bt.pending_ibl = Some(eip);
                }
                Ok(None)
            }
            Some(CalloutOp::PendingIrq) => {
                self.stats.exit("bt-pending-irq");
                if self.cpu.state.interrupts_enabled() && self.cpu.bus.interrupt_requested() {
                    return Ok(None);
                }
                if self.cpu.state.eflags & flags::TF != 0 {
                    return Ok(None);
                }
                self.bt_return(ex)
            }
            None => Err(outcome(format!("unknown callout operation {op} at eip {eip:#010x}"))),
        }
    }

    /// Whether the guest bytes at CS:EIP (through the guest's page tables, as
    /// `Direct::insn_at_eip` reads them) are `g`'s, decoded in the current code size.
    fn site_matches(&mut self, g: &GuestInsn) -> bool {
        let s = &self.cpu.state;
        let size = if s.code32() { iced_x86::CodeSize::Code32 } else { iced_x86::CodeSize::Code16 };
        if s.eip != g.eip || g.instr.code_size() != size {
            return false;
        }
        let lin = s.seg(SegReg::Cs).base.wrapping_add(g.eip);
        let len = g.len as usize;
        let mut off = 0;
        while off < len {
            let a = lin.wrapping_add(off as u32);
            let n = ((0x1000 - (a & 0xfff)) as usize).min(len - off);
            let Some(p) = self.cpu.probe_translation(a) else { return false };
            let p = p as usize;
            if self.cpu.bus.ram.as_slice().get(p..p + n) != Some(&g.bytes[off..off + n]) {
                return false;
            }
            off += n;
        }
        true
    }

    /// Continue after the far call of a callout: the guest state is `cpu.state` at
    /// `callout_next`; the fragment reloads SS:ESP from the vCPU region.
    fn bt_return(&mut self, ex: &ExitRecord) -> Result<Option<EntryState>, Outcome> {
        let Some(mut st) = self.bt_entry_state()? else { return Ok(None) };
        st.sel[SegReg::Ss as usize] = sys::USER_DS;
        st.eip = ex.eip;
        st.gpr[4] = ex.gpr[4].wrapping_add(8);
        Ok(Some(st))
    }

    /// A signal from translated code: rebuild the guest state at the faulting guest
    /// instruction (PC map, recovery) and classify the exit as the direct engine does.
    fn bt_signal(&mut self, ex: &ExitRecord, deadline: Option<u64>) -> Flow {
        let bt = self.bt.as_mut().ok_or_else(|| outcome("no translation cache"))?;
        let base = bt.area.base;
        let in_tc = ex.rip_high == 0 && ex.sel[SegReg::Cs as usize] == sys::USER32_CS && ex.eip >= base && ex.eip - base < bt.area.tc_size;
        if !in_tc {
            return Err(outcome(format!(
                "signal {} (trapno {}) at {:#x}{:08x} cs {:#x}, outside the translation cache",
                ex.signal, ex.trapno, ex.rip_high, ex.eip, ex.sel[1]
            )));
        }
        if ex.signal == sys::TIMER_SIGNAL {
            // The forced exit of a guest that kept its virtual IF clear past the deadline: the
            // state is not precise (any TC address), the run ends.
            self.stats.exit("bt-forced-timer");
            let eip = bt.cache.guest_state_at(ex.eip).map_or(self.cpu.state.eip, |p| p.guest_eip);
            return Err(Outcome::Timeout { after: self.opts_timeout(), eip });
        }
        let Some(pc) = bt.cache.guest_state_at(ex.eip) else {
            return Err(outcome(format!("signal {} (trapno {}) at TC address {:#010x}, in no fragment", ex.signal, ex.trapno, ex.eip)));
        };
        let mut gpr = ex.gpr;
        for (r, off) in pc.recovery.restore.iter().flatten() {
            let i = (*r as usize).wrapping_sub(iced_x86::Register::EAX as usize);
            if i < 8 {
                gpr[i] = bt.vr32(*off);
            }
        }
        gpr[4] = gpr[4].wrapping_add(pc.recovery.esp_adjust as u32);
        let eflags = bt.eflags(ex.eflags);
        let s = &mut self.cpu.state;
        s.gpr = gpr;
        s.eip = pc.guest_eip;
        s.eflags = eflags;
        // A fault of the instruction after STI: no interrupt before it completes.
        s.int_shadow = pc.shadow;
        if pc.recovery.emulate {
            // Not the guest's fault (an inline INT's or IRETD's frame, fastsys.rs): the
            // interpreter executes the instruction, and meets any fault that is the guest's.
            self.stats.exit("bt-inline-fallback");
            return self.emulate(deadline);
        }
        let fault = self.bt_fault_begin(ex.eip);
        self.classify(ex, deadline)?;
        self.bt_fault_end(fault);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use crate::space::DEFAULT_MONITOR_BASE;

    use entry::reserve;

    fn place(bt: &mut Bt, code: &[u8]) -> u32 {
        let a = bt.cache.alloc(code.len() as u32).unwrap();
        bt.area.write(a, code);
        a
    }

    /// `call far gs:[gate]`.
    fn call_gate(abi: &Abi) -> Vec<u8> {
        let mut v = vec![0x65, 0xff, 0x1d];
        v.extend_from_slice(&abi.gate.to_le_bytes());
        v
    }

    fn state(bt: &Bt, eip: u32) -> EntryState {
        EntryState {
            gpr: [0x1111_1111, 0x2222_2222, 0x3333_3333, 0x4444_4444, bt.area.stack + area::STACK_SIZE, 0x6666_6666, 0x7777_7777, 0x8888_8888],
            eip,
            eflags: flags::IF | flags::FIXED1 | flags::CF | flags::ZF,
            sel: [sys::USER_DS, sys::USER32_CS, sys::USER_DS, sys::USER_DS, 0, bt.vcpu_sel],
        }
    }

    /// The gate and the echo gate: what comes out, and what a round trip costs.
    #[test]
    fn callout_gate_round_trips() {
        let (lock, res) = reserve();
        let _thread = entry::Thread::prepare().unwrap();
        let mut bt = Bt::new(&res, DEFAULT_MONITOR_BASE).unwrap();
        bt.install(&lock);
        let mut fpu = CpuState::reset().fpu;

        // 1. The echo gate: `retf` in 64-bit mode pops the 4-byte EIP and CS slots.
        bt.set_gate(true);
        const N: u32 = 200_000;
        let mut code = vec![0xb9];
        code.extend_from_slice(&N.to_le_bytes()); // mov ecx, N
        code.extend_from_slice(&call_gate(&bt.abi)); // L: call far gs:[gate]
        code.extend_from_slice(&[0x49, 0x75, 0xf6, 0x0f, 0x0b]); // dec ecx; jnz L; ud2
        let a = place(&mut bt, &code);
        let st = state(&bt, a);
        let t = Instant::now();
        let ex = entry::enter(&lock, &st, &mut fpu);
        let echo_ns = t.elapsed().as_nanos() as f64 / N as f64;
        assert_eq!(ex.signal, libc::SIGILL, "{ex:?}");
        assert_eq!(ex.eip, a + code.len() as u32 - 2);
        assert_eq!(ex.gpr[1], 0, "the loop ran to the end");
        assert_eq!(ex.gpr[4], st.gpr[4], "retf popped exactly 8 bytes each time");
        assert_eq!(ex.gpr[0], st.gpr[0]);

        // 2. The real gate: the guest state comes out through the exit landing.
        bt.set_gate(false);
        let mut code = call_gate(&bt.abi);
        code.extend_from_slice(&[0x0f, 0x0b]);
        let a = place(&mut bt, &code);
        let st = state(&bt, a);
        let ex = entry::enter(&lock, &st, &mut fpu);
        assert_eq!((ex.exited, ex.signal), (1, 0), "{ex:?}");
        assert_eq!(ex.eip, a + 7, "the return address");
        let mut want = st.gpr;
        want[4] -= 8;
        assert_eq!(ex.gpr, want);
        assert_eq!(ex.eflags & HOST_FLAGS, flags::CF | flags::ZF);
        assert_eq!(ex.sel, [sys::USER_DS, sys::USER32_CS, sys::USER_DS, sys::USER_DS, 0, bt.vcpu_sel]);
        // Continuing at the return address with the callout stack popped reaches the ud2.
        let mut back = st;
        back.eip = ex.eip;
        let ex2 = entry::enter(&lock, &back, &mut fpu);
        assert_eq!((ex2.signal, ex2.eip), (libc::SIGILL, a + 7), "{ex2:?}");
        // The round trip as the engine makes it: entry (iretq), callout, exit landing.
        const M: u32 = 100_000;
        let t = Instant::now();
        for _ in 0..M {
            let ex = entry::enter(&lock, &st, &mut fpu);
            assert_eq!(ex.signal, 0);
        }
        let gate_ns = t.elapsed().as_nanos() as f64 / M as f64;
        eprintln!("bt gate: echo round trip (far call -> 64-bit retf) {echo_ns:.1} ns; entry + callout + landing {gate_ns:.1} ns");
        Bt::uninstall(&lock);
        drop(bt);
        drop(res);
    }

    /// Timer signals in the TC set `irq` and resume; the gate trampoline is host code.
    #[test]
    fn guest_readable_vcpu_region_and_readonly_tc() {
        let (lock, res) = reserve();
        let _thread = entry::Thread::prepare().unwrap();
        let mut bt = Bt::new(&res, DEFAULT_MONITOR_BASE).unwrap();
        bt.install(&lock);
        let mut fpu = CpuState::reset().fpu;
        // mov eax, gs:[vcpu_size - 4]; mov dword gs:[scratch], eax; mov [tc], eax (must fault)
        let last = bt.abi.vcpu_size - 4;
        bt.vw32(last, 0xfeed_f00d);
        let mut code = vec![0x65, 0xa1];
        code.extend_from_slice(&last.to_le_bytes());
        code.extend_from_slice(&[0x65, 0xa3]);
        code.extend_from_slice(&bt.abi.scratch.to_le_bytes());
        code.push(0xa3);
        code.extend_from_slice(&bt.area.base.to_le_bytes());
        let a = place(&mut bt, &code);
        let ex = entry::enter(&lock, &state(&bt, a), &mut fpu);
        assert_eq!(ex.signal, libc::SIGSEGV, "{ex:?}");
        assert_eq!(ex.eip, a + 12, "the write to the TC faults");
        assert_eq!(ex.gpr[0], 0xfeed_f00d);
        assert_eq!(bt.vr32(bt.abi.scratch), 0xfeed_f00d);
        // Closed for direct execution: nothing of the area is accessible below 4 GiB.
        let perms = |a: u32| {
            let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
            let inside = |l: &&str| {
                let (lo, hi) = l.split_whitespace().next().unwrap().split_once('-').unwrap();
                let (lo, hi) = (u64::from_str_radix(lo, 16).unwrap(), u64::from_str_radix(hi, 16).unwrap());
                lo <= a as u64 && (a as u64) < hi
            };
            maps.lines().find(inside).map(|l| l.split_whitespace().nth(1).unwrap().to_string()).unwrap_or_default()
        };
        assert_eq!(perms(bt.area.base), "r-xs");
        assert_eq!(perms(bt.area.vcpu), "rw-s");
        bt.area.set_open(false).unwrap();
        assert_eq!(perms(bt.area.base), "r-xs", "the TC stays read + execute");
        assert_eq!(perms(bt.area.vcpu), "---s");
        assert_eq!(perms(bt.area.stack), "---s");
        assert_eq!(perms(bt.area.vcpu + bt.abi.ibl_table), "r--s", "the lookup table is read-only low");
        bt.area.set_open(true).unwrap();
        assert_eq!(perms(bt.area.vcpu), "rw-s");
        // Beyond the GS limit: #GP.
        let mut code = vec![0x65, 0xa1];
        code.extend_from_slice(&bt.abi.vcpu_size.to_le_bytes());
        let a = place(&mut bt, &code);
        let ex = entry::enter(&lock, &state(&bt, a), &mut fpu);
        assert_eq!((ex.signal, ex.trapno, ex.eip), (libc::SIGSEGV, 13, a), "{ex:?}");
        Bt::uninstall(&lock);
        drop(bt);
        drop(res);
    }
}
