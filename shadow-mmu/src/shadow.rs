//! The shadow mapping state: which guest-linear pages the host maps right now, and how.
//! See the crate documentation for the invariants.

use std::collections::BTreeSet;

use crate::walk::{
    pte, set_accessed_dirty, walk, Access, GuestPhys, PagingMode, Translation, Walk,
};

/// What the monitor does to the host page tables of the low 4 GiB (mmap of the guest-RAM
/// memfd at a fixed address, and munmap or a `PROT_NONE` remap).
///
/// An `Err` is passed through unchanged; the shadow state then still describes what was
/// mapped before the failed call (the runtime should treat it as fatal or `flush_all`).
pub trait MapOps {
    type Error: std::fmt::Debug;
    /// Map `pages` 4 KiB pages at guest-linear `lin` to guest-physical `frame` (both page
    /// aligned; the frames are contiguous and wholly inside RAM; the range never touches the
    /// monitor area). Replaces whatever was mapped there (`MAP_FIXED`). Readable (and
    /// executable) always, writable only if `writable`.
    fn map(&mut self, lin: u32, frame: u32, pages: u32, writable: bool) -> Result<(), Self::Error>;
    /// Remove `pages` 4 KiB pages at `lin` (every page in the range is currently mapped).
    fn unmap(&mut self, lin: u32, pages: u32) -> Result<(), Self::Error>;
}

/// What `handle_fault` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// A hidden fault: the shadow now maps the page (restart the instruction).
    Mapped,
    /// A true guest page fault: deliver #PF with this CR2 and error code. Guest memory is
    /// unchanged.
    GuestFault { cr2: u32, error_code: u32 },
    /// The access needs guest-physical memory outside RAM (MMIO): `phys` is the physical
    /// address of the access, or of a paging-structure entry that lies outside RAM. Emulate
    /// the instruction with the interpreter (it performs the A/D updates: none were done).
    NotRam { phys: u32 },
    /// The linear address is in the monitor area, which is never mapped for the guest:
    /// emulate the instruction with the interpreter (it walks the guest tables itself, so a
    /// guest #PF there is raised by the interpreter). Guest memory is unchanged.
    MonitorArea,
}

/// Counters for `--stats` and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShadowStats {
    /// Faults resolved by mapping (`Resolution::Mapped`).
    pub hidden_faults: u64,
    /// Faults reflected to the guest as #PF.
    pub guest_faults: u64,
    /// `Resolution::NotRam` answers.
    pub not_ram: u64,
    /// `Resolution::MonitorArea` answers.
    pub monitor_area: u64,
    /// Full flushes forced by `max_mapped_pages`.
    pub evictions: u64,
    /// `flush_all` calls.
    pub flushes: u64,
    /// `cr3_written` calls.
    pub cr3_writes: u64,
    /// Pages mapped by `prefault`.
    pub prefaults: u64,
    /// Pages that stayed mapped at CR3 writes because the new address space maps them the
    /// same way (not counting global pages).
    pub cr3_kept: u64,
    /// `invlpg` calls.
    pub invlpgs: u64,
    /// `MapOps::map` calls and the pages they mapped (a run counts once as a call).
    pub map_calls: u64,
    pub pages_mapped: u64,
    /// Pages unmapped by `set_user(true)` (ring compression).
    pub user_unmapped: u64,
}

/// How one linear page is mapped in the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MappedPage {
    /// Guest-physical frame (page aligned).
    pub frame: u32,
    /// The host mapping is writable.
    pub writable: bool,
    /// The guest entry allows user access (U/S in PDE and PTE).
    pub user: bool,
    /// The guest entry is writable (R/W in PDE and PTE).
    pub guest_writable: bool,
    /// Global (G in the leaf with CR4.PGE at the time of the fault): survives CR3 writes.
    pub global: bool,
    /// A piece of a guest 4 MiB page.
    pub large: bool,
}

/// Most pages one `handle_fault` maps in one run (a 16-page aligned window around the fault).
pub const RUN_PAGES: u32 = 16;

const PAGES_PER_TABLE: usize = 1024;
const E_VALID: u32 = 1;
const E_HOST_W: u32 = 2;
const E_USER: u32 = 4;
const E_GUEST_W: u32 = 8;
const E_GLOBAL: u32 = 16;
const E_LARGE: u32 = 32;

/// A page that must not stay mapped while the guest runs at CPL 3 (below `user_limit`):
/// supervisor-only, or host-writable although user code may not write it (CR0.WP = 0).
fn user_unsafe(e: u32) -> bool {
    e & E_USER == 0 || (e & E_HOST_W != 0 && e & E_GUEST_W == 0)
}

/// The shadow MMU of one vCPU. See the crate documentation.
pub struct ShadowMmu {
    ram_bytes: u32,
    max_pages: usize,
    monitor_base: u32,
    /// Two-level table keyed by linear page number: `tables[page >> 10][page & 1023]` holds
    /// `frame | E_*` flags, 0 when unmapped. Leaf tables exist only while they map something.
    tables: Vec<Option<Box<[u32; PAGES_PER_TABLE]>>>,
    counts: Vec<u16>,
    /// Per leaf table: how many of its entries are not global (a CR3 write looks only at
    /// tables that have some: the kernel's global pages fill dozens of tables).
    local: Vec<u16>,
    mapped: usize,
    /// Mapped pages that are `user_unsafe` (any address; `set_user` looks below the limit).
    unsafe_pages: BTreeSet<u32>,
    user: bool,
    user_limit: u32,
    strict: bool,
    stats: ShadowStats,
}

impl ShadowMmu {
    /// `ram_bytes` of guest RAM from guest-physical 0; at most `max_mapped_pages` host pages
    /// mapped at once (at least one run is always allowed); the monitor area is
    /// `[monitor_base, 4 GiB)` (rounded down to a page; never mapped for the guest).
    pub fn new(ram_bytes: u32, max_mapped_pages: usize, monitor_base: u32) -> ShadowMmu {
        let monitor_base = monitor_base & !0xfff;
        ShadowMmu {
            ram_bytes,
            max_pages: max_mapped_pages.max(1),
            monitor_base,
            tables: (0..PAGES_PER_TABLE).map(|_| None).collect(),
            counts: vec![0; PAGES_PER_TABLE],
            local: vec![0; PAGES_PER_TABLE],
            mapped: 0,
            unsafe_pages: BTreeSet::new(),
            user: false,
            user_limit: monitor_base,
            strict: false,
            stats: ShadowStats::default(),
        }
    }

    /// The base of the monitor area (its end is 4 GiB).
    pub fn monitor_base(&self) -> u32 {
        self.monitor_base
    }

    /// Pages currently mapped.
    pub fn mapped_pages(&self) -> usize {
        self.mapped
    }

    pub fn stats(&self) -> ShadowStats {
        self.stats
    }

    /// Whether the last `set_user` entered user mode.
    pub fn user_mode(&self) -> bool {
        self.user
    }

    /// The top of user-mode segments (ring compression): the start of the lowest present
    /// supervisor-only PDE above every present user PDE of the current page directory, or
    /// the monitor base if there is none (or paging is off); never above the monitor base.
    /// 0xC000_0000 for a 3G/1G Linux. Recomputed by `cr3_written` and `flush_all`.
    pub fn user_limit(&self) -> u32 {
        self.user_limit
    }

    /// Strict ring compression: `set_user(true)` unmaps every mapped page that user code
    /// must not reach, not only those below `user_limit()` (for guests whose user code may
    /// load flat host selectors; see the crate documentation). Off by default.
    pub fn set_strict_ring_compression(&mut self, strict: bool) {
        self.strict = strict;
    }

    /// How `lin` is mapped now, if it is.
    pub fn mapping(&self, lin: u32) -> Option<MappedPage> {
        let e = self.entry(lin >> 12);
        (e & E_VALID != 0).then_some(MappedPage {
            frame: e & !0xfff,
            writable: e & E_HOST_W != 0,
            user: e & E_USER != 0,
            guest_writable: e & E_GUEST_W != 0,
            global: e & E_GLOBAL != 0,
            large: e & E_LARGE != 0,
        })
    }

    /// A host fault at guest-linear `lin` by guest code at CPL 3 (`user`) or CPL 0
    /// (`user` must agree with the last `set_user`). See the crate documentation.
    pub fn handle_fault<M: MapOps>(
        &mut self,
        mode: &PagingMode,
        lin: u32,
        access: Access,
        user: bool,
        mem: &mut impl GuestPhys,
        map: &mut M,
    ) -> Result<Resolution, M::Error> {
        if lin >= self.monitor_base {
            self.stats.monitor_area += 1;
            return Ok(Resolution::MonitorArea);
        }
        let t = match walk(mode, lin, access, user, mem) {
            Walk::Ok(t) => t,
            Walk::Fault { error_code } => {
                self.stats.guest_faults += 1;
                return Ok(Resolution::GuestFault {
                    cr2: lin,
                    error_code,
                });
            }
            Walk::TableNotRam { paddr } => {
                self.stats.not_ram += 1;
                return Ok(Resolution::NotRam { phys: paddr });
            }
        };
        if !self.frame_in_ram(t.frame) {
            self.stats.not_ram += 1;
            return Ok(Resolution::NotRam {
                phys: t.frame | (lin & 0xfff),
            });
        }
        let dirty = set_accessed_dirty(&t, access, mem);
        let flags = Self::flags(&t, mode, user, dirty);
        self.map_translation(mode, &t, lin >> 12, flags, user, mem, map)?;
        self.stats.hidden_faults += 1;
        Ok(Resolution::Mapped)
    }

    /// Maps the page of `lin` ahead of an access by the current privilege (`user`), if it is
    /// unmapped and a fault there now would map it without writing guest memory: the guest
    /// entries are present, allow the access, and have PDE.A and the leaf's A set (the host
    /// mapping is writable only if D is set too), as for the neighbours a fault maps. For the
    /// page of CR2 when the guest returns to user code after a page fault: its handler made
    /// the entry (Linux makes it accessed, and dirty for a write) and the instruction it
    /// returns to will touch the page, so this saves the hidden fault. True if it mapped.
    pub fn prefault<M: MapOps>(
        &mut self,
        mode: &PagingMode,
        lin: u32,
        user: bool,
        mem: &mut impl GuestPhys,
        map: &mut M,
    ) -> Result<bool, M::Error> {
        if lin >= self.monitor_base || self.entry(lin >> 12) & E_VALID != 0 {
            return Ok(false);
        }
        let Walk::Ok(t) = walk(mode, lin, Access::Read, user, mem) else {
            return Ok(false);
        };
        if !self.frame_in_ram(t.frame) || !t.accessed || (mode.paging && !t.large && t.pde & pte::A == 0) {
            return Ok(false);
        }
        let flags = Self::flags(&t, mode, user, t.dirty);
        self.map_translation(mode, &t, lin >> 12, flags, user, mem, map)?;
        self.stats.prefaults += 1;
        Ok(true)
    }

    /// Maps `page` (translated as `t`, with `flags`) and the neighbours of its run, evicting
    /// first if the bound would be exceeded.
    #[allow(clippy::too_many_arguments)]
    fn map_translation<M: MapOps>(
        &mut self,
        mode: &PagingMode,
        t: &Translation,
        page: u32,
        flags: u32,
        user: bool,
        mem: &mut impl GuestPhys,
        map: &mut M,
    ) -> Result<(), M::Error> {
        let t = *t;
        let (mut first, mut n) = self.run(mode, &t, page, flags, user, mem);
        let fresh = n as usize - usize::from(self.entry(page) & E_VALID != 0);
        if self.mapped + fresh > self.max_pages {
            self.evict(map)?;
            (first, n) = self.run(mode, &t, page, flags, user, mem);
        }
        let frame0 = t.frame.wrapping_sub((page - first) << 12);
        map.map(first << 12, frame0, n, flags & E_HOST_W != 0)?;
        self.stats.map_calls += 1;
        self.stats.pages_mapped += u64::from(n);
        for i in 0..n {
            self.set_entry(first + i, (frame0 + (i << 12)) | flags);
        }
        Ok(())
    }

    /// INVLPG: drop the page of `lin`, and every piece of a guest 4 MiB page mapped in the
    /// 4 MiB region around it (global or not).
    pub fn invlpg<M: MapOps>(&mut self, lin: u32, map: &mut M) -> Result<(), M::Error> {
        self.stats.invlpgs += 1;
        let page = lin >> 12;
        let region = page & !0x3ff;
        self.drop_where(region, region + 0x400, map, |q, e| {
            q == page || e & E_LARGE != 0
        })?;
        Ok(())
    }

    /// A guest CR3 write (the CR3 in `mode` is the new one): drop every non-global mapping
    /// (every mapping if CR4.PGE is clear) except those the new address space maps the same
    /// way with the Accessed (and, if writable, Dirty) bits already set (a shell and the
    /// children it forks share their program's code frames), and recompute `user_limit`.
    pub fn cr3_written<M: MapOps>(
        &mut self,
        mode: &PagingMode,
        mem: &mut impl GuestPhys,
        map: &mut M,
    ) -> Result<(), M::Error> {
        self.stats.cr3_writes += 1;
        let keep_global = mode.pge && mode.paging;
        let mut kept = 0u64;
        self.drop_where_tables(0, 1 << 20, keep_global, map, |q, e| {
            if keep_global && e & E_GLOBAL != 0 {
                return false;
            }
            let same = mode.paging && Self::same_in(mode, q, e, mem);
            kept += u64::from(same);
            !same
        })?;
        self.stats.cr3_kept += kept;
        self.user_limit = self.compute_user_limit(mode, mem);
        Ok(())
    }

    /// Whether the mapping `e` of linear page `q` is, in the address space of `mode`, what a
    /// fault there would map (or less), so that it may stay across a CR3 write: after the
    /// TLB flush a CPU's next access would walk the tables, find the same frame with the same
    /// rights and write nothing (PDE.A and the leaf's A already set, and D if the host
    /// mapping is writable). Pages the new address space maps differently or not at all, or
    /// has not accessed, go: mapping them would skip an A/D update or a #PF.
    fn same_in(mode: &PagingMode, q: u32, e: u32, mem: &mut impl GuestPhys) -> bool {
        let Walk::Ok(t) = walk(mode, q << 12, Access::Read, false, mem) else {
            return false;
        };
        // The rights a fault would give, host write aside (the last condition judges it).
        let rights = E_VALID | E_USER | E_GUEST_W | E_GLOBAL | E_LARGE;
        t.frame == e & !0xfff
            && t.accessed
            && (t.large || t.pde & pte::A != 0)
            && Self::flags(&t, mode, false, false) & rights == e & rights
            && (e & E_HOST_W == 0 || (t.dirty && t.writable))
    }

    /// Drop every mapping (changes to CR0.PG/WP or CR4.PSE/PGE/PAE; `mode` is the new mode)
    /// and recompute `user_limit`.
    pub fn flush_all<M: MapOps>(
        &mut self,
        mode: &PagingMode,
        mem: &mut impl GuestPhys,
        map: &mut M,
    ) -> Result<(), M::Error> {
        self.stats.flushes += 1;
        self.drop_where(0, 1 << 20, map, |_, _| true)?;
        self.user_limit = self.compute_user_limit(mode, mem);
        Ok(())
    }

    /// Whether entering user mode now ([`Self::set_user`]`(true)`) would unmap nothing: no
    /// page it would unmap is mapped. Translated code that enters user mode without the
    /// runtime (an inline IRET) may do so only while this holds.
    pub fn user_entry_unmaps_nothing(&self) -> bool {
        let limit = if self.strict { 1 << 20 } else { self.user_limit >> 12 };
        self.unsafe_pages.range(..limit).next().is_none()
    }

    /// Ring compression: the guest's CPL changed (`user` = CPL 3). Entering user mode unmaps
    /// every mapped page below `user_limit()` that user code must not reach with the rights
    /// the host mapping gives (supervisor-only pages, and pages made host-writable by a
    /// supervisor write under CR0.WP = 0 that user code may only read); with strict ring
    /// compression, every such page.
    pub fn set_user<M: MapOps>(&mut self, user: bool, map: &mut M) -> Result<(), M::Error> {
        self.user = user;
        if user {
            let limit = if self.strict {
                1 << 20
            } else {
                self.user_limit >> 12
            };
            // Most of the time there are none (a CPL change per system call comes here).
            if self.unsafe_pages.first().is_none_or(|&p| p >= limit) {
                return Ok(());
            }
            let victims: Vec<u32> = self.unsafe_pages.range(..limit).copied().collect();
            for (start, n) in runs(victims.into_iter()) {
                map.unmap(start << 12, n)?;
                for q in start..start + n {
                    self.clear_entry(q);
                }
                self.stats.user_unmapped += u64::from(n);
            }
        }
        Ok(())
    }

    // ---- internals ----

    fn frame_in_ram(&self, frame: u32) -> bool {
        u64::from(frame) + 0x1000 <= u64::from(self.ram_bytes)
    }

    fn entry(&self, page: u32) -> u32 {
        match &self.tables[(page >> 10) as usize] {
            Some(t) => t[(page & 0x3ff) as usize],
            None => 0,
        }
    }

    fn set_entry(&mut self, page: u32, e: u32) {
        let ti = (page >> 10) as usize;
        let t = self.tables[ti].get_or_insert_with(|| Box::new([0; PAGES_PER_TABLE]));
        let slot = &mut t[(page & 0x3ff) as usize];
        if *slot & E_VALID == 0 {
            self.counts[ti] += 1;
            self.mapped += 1;
        } else if *slot & E_GLOBAL == 0 {
            self.local[ti] -= 1;
        }
        if e & E_GLOBAL == 0 {
            self.local[ti] += 1;
        }
        *slot = e;
        if user_unsafe(e) {
            self.unsafe_pages.insert(page);
        } else {
            self.unsafe_pages.remove(&page);
        }
    }

    fn clear_entry(&mut self, page: u32) {
        let ti = (page >> 10) as usize;
        let Some(t) = &mut self.tables[ti] else {
            return;
        };
        let slot = &mut t[(page & 0x3ff) as usize];
        if *slot & E_VALID == 0 {
            return;
        }
        if *slot & E_GLOBAL == 0 {
            self.local[ti] -= 1;
        }
        *slot = 0;
        self.mapped -= 1;
        self.counts[ti] -= 1;
        if self.counts[ti] == 0 {
            self.tables[ti] = None;
        }
        self.unsafe_pages.remove(&page);
    }

    /// Unmap (in ascending runs) every mapped page in `[lo, hi)` (page numbers) for which
    /// `pred(page, entry)` holds. Returns how many pages went.
    fn drop_where<M: MapOps>(
        &mut self,
        lo: u32,
        hi: u32,
        map: &mut M,
        pred: impl FnMut(u32, u32) -> bool,
    ) -> Result<usize, M::Error> {
        self.drop_where_tables(lo, hi, false, map, pred)
    }

    /// [`Self::drop_where`], looking only at tables that hold non-global entries if
    /// `local_only` (the predicate must then keep every global entry).
    fn drop_where_tables<M: MapOps>(
        &mut self,
        lo: u32,
        hi: u32,
        local_only: bool,
        map: &mut M,
        mut pred: impl FnMut(u32, u32) -> bool,
    ) -> Result<usize, M::Error> {
        let mut victims = Vec::new();
        for ti in (lo >> 10)..=((hi - 1) >> 10) {
            if local_only && self.local[ti as usize] == 0 {
                continue;
            }
            let Some(t) = &self.tables[ti as usize] else {
                continue;
            };
            for (j, &e) in t.iter().enumerate() {
                let q = (ti << 10) | j as u32;
                if q >= lo && q < hi && e & E_VALID != 0 && pred(q, e) {
                    victims.push(q);
                }
            }
        }
        let total = victims.len();
        for (start, n) in runs(victims.into_iter()) {
            map.unmap(start << 12, n)?;
            for q in start..start + n {
                self.clear_entry(q);
            }
        }
        Ok(total)
    }

    fn evict<M: MapOps>(&mut self, map: &mut M) -> Result<(), M::Error> {
        self.stats.evictions += 1;
        self.drop_where(0, 1 << 20, map, |_, _| true)?;
        Ok(())
    }

    fn flags(t: &Translation, mode: &PagingMode, user: bool, dirty: bool) -> u32 {
        let mut f = E_VALID;
        if t.host_writable(user, mode.wp, dirty) {
            f |= E_HOST_W;
        }
        if t.user {
            f |= E_USER;
        }
        if t.writable {
            f |= E_GUEST_W;
        }
        if t.global && mode.pge && mode.paging {
            f |= E_GLOBAL;
        }
        if t.large {
            f |= E_LARGE;
        }
        f
    }

    /// The run of pages to map for a fault on `page` (translated as `t`, mapped with
    /// `flags`): `page` itself plus neighbours in its 16-page aligned window that are not
    /// mapped, lie below the monitor area, translate to the next/previous frames in RAM with
    /// exactly the same rights, and (4 KiB pages) whose PTE is present and already Accessed
    /// (so that mapping them ahead of use changes nothing the guest can observe). Pieces of a
    /// 4 MiB page and identity pages (paging off) share the leaf, hence the rights.
    fn run(
        &self,
        mode: &PagingMode,
        t: &Translation,
        page: u32,
        flags: u32,
        user: bool,
        mem: &mut impl GuestPhys,
    ) -> (u32, u32) {
        let cap = (RUN_PAGES as usize).min(self.max_pages) as u32;
        let win_lo = page & !(RUN_PAGES - 1);
        let win_hi = win_lo + RUN_PAGES; // exclusive
        let mut eligible = |q: u32| -> bool {
            if q < win_lo || q >= win_hi || u64::from(q) << 12 >= u64::from(self.monitor_base) {
                return false;
            }
            if self.entry(q) & E_VALID != 0 {
                return false;
            }
            let frame = i64::from(t.frame) + (i64::from(q) - i64::from(page)) * 0x1000;
            if frame < 0 || frame + 0x1000 > i64::from(self.ram_bytes) {
                return false;
            }
            if !mode.paging || t.large {
                return true;
            }
            let pte_addr = (t.pde & !0xfff) | ((q & 0x3ff) << 2);
            let Some(e) = mem.read_u32(pte_addr) else {
                return false;
            };
            if e & pte::P == 0 || e & pte::A == 0 || i64::from(e & !0xfff) != frame {
                return false;
            }
            let n = Translation {
                frame: e & !0xfff,
                user: t.pde & e & pte::US != 0,
                writable: t.pde & e & pte::RW != 0,
                dirty: e & pte::D != 0,
                accessed: true,
                global: e & pte::G != 0,
                leaf_addr: pte_addr,
                leaf: e,
                ..*t
            };
            // A neighbour must be accessible by the faulting privilege at all.
            if user && !n.user {
                return false;
            }
            Self::flags(&n, mode, user, n.dirty) == flags
        };
        let mut first = page;
        let mut n = 1;
        while n < cap && eligible(first + n) {
            n += 1;
        }
        while n < cap && first > win_lo && eligible(first - 1) {
            first -= 1;
            n += 1;
        }
        (first, n)
    }

    /// The user limit: scanning the page directory down from the monitor area, the lowest
    /// supervisor-only PDE above the highest PDE through which user code reaches a page.
    /// A user PDE whose page table holds no present user PTE counts as reaching nothing,
    /// like a non-present one: Linux sets the user bit on every PDE that points at a kernel
    /// page table (vmalloc, fixmap) and relies on the PTEs, and judging by PDEs alone would
    /// put the limit at the monitor area, so that every kernel page would be unmapped at each
    /// return to user mode. A limit too low is safe (user code that reaches above it faults
    /// on its segment limit and is emulated); it is recomputed at every CR3 write.
    fn compute_user_limit(&self, mode: &PagingMode, mem: &mut impl GuestPhys) -> u32 {
        if !mode.paging {
            return self.monitor_base;
        }
        let user_table = |mem: &mut dyn FnMut(u32) -> Option<u32>, table: u32| {
            (0..1024u32).any(|i| mem(table | (i << 2)).is_none_or(|pte| pte & pte::P != 0 && pte & pte::US != 0))
        };
        // PDEs that cover at least one page below the monitor area.
        let n_pde = ((u64::from(self.monitor_base) + 0x3f_ffff) >> 22) as u32;
        let mut limit = self.monitor_base;
        for i in (0..n_pde).rev() {
            let pde = mem.read_u32((mode.cr3 & !0xfff) | (i << 2)).unwrap_or(0);
            if pde & pte::P == 0 {
                continue;
            }
            if pde & pte::US != 0 {
                let large = mode.pse && pde & pte::PS != 0;
                if large || user_table(&mut |a| mem.read_u32(a), pde & !0xfff) {
                    break;
                }
                continue;
            }
            limit = limit.min(i << 22);
        }
        limit
    }
}

/// Group ascending page numbers into (start, length) runs of consecutive pages.
fn runs(pages: impl Iterator<Item = u32>) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for q in pages {
        match out.last_mut() {
            Some((s, n)) if *s + *n == q => *n += 1,
            _ => out.push((q, 1)),
        }
    }
    out
}
