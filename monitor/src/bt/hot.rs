//! Adaptive user-mode translation (ARCHITECTURE.md section 5, docs/bt.md "Hot user regions"):
//! guest user code that keeps trapping runs from the translation cache instead of directly.
//!
//! Under `--user-engine direct` every guest system call is a host signal: `int 0x80` in
//! compatibility mode enters the host kernel's ia32 entry, the seccomp filter turns it into
//! SIGSYS, the signal frame is built and torn down, and the monitor switches from the direct
//! engine (guest user code) to the translator (guest kernel code) and back, closing and
//! reopening the vCPU region each way. Translated user code makes the same `int 0x80` a
//! callout: a far call through the 64-bit gate, no signal, no switch of engine.
//!
//! The policy, per address space (CR3) and 4 KiB linear page of user code:
//! * a page becomes *hot* when [`HOT_AFTER`] system calls trapped from it (counted per page);
//! * while the vCPU is at CPL 3 and its EIP is in a hot page, the user engine is `bt`
//!   ([`crate::direct::Direct::engine`]); execution drops back to `direct` as soon as it leaves
//!   the hot pages (the next lookup of a fragment outside them returns to the run loop, which
//!   picks the direct engine);
//! * the region grows: a page that translated user code left for [`GROW_AFTER`] times (the
//!   caller of a system-call wrapper, the loop around it) becomes hot too, so that a loop
//!   that calls a wrapper in another page ends up wholly translated;
//! * a hot page whose translated code makes many callouts that are not system calls cools
//!   ([`COOL_RATIO`]): it runs directly again and never becomes hot again;
//! * an address space switched out for longer than [`IDLE_NS`] is forgotten when it comes
//!   back ([`HotUser::switched_to`], called at every CR3 write): its CR3 may belong to
//!   another process by then;
//! * bounds: at most [`MAX_HOT_PAGES`] hot pages (at the cap the set is cleared and starts
//!   again), at most [`MAX_COUNTERS`] counters per address space and kind (cleared at the
//!   cap), at most [`MAX_REGIONS`] address spaces. Hot pages of one address space mean nothing
//!   in another: they are keyed by CR3.
//!
//! Correctness does not depend on any of this: translated user code is the same translation
//! `--user-engine bt` runs (tested against the interpreter), and either engine may run any
//! user instruction.

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

/// System calls trapped from a page before it becomes hot. High enough that a short-lived
/// process (a fork and exec of `/bin/true`: ~40 system calls from a few pages) stays direct:
/// translating its user code would cost more than its signals.
pub const HOT_AFTER: u32 = 32;
/// Departures of translated user code to a page before that page becomes hot.
pub const GROW_AFTER: u32 = 16;
/// An address space switched out for longer than this (host nanoseconds) is forgotten when it
/// is switched back in: its trap counters, hot and cold pages. Hot is about sustained
/// activity, and the CR3 that keys the state may meanwhile belong to another process (Linux
/// reuses the page directory's frame of a process that exited for the next one: the children
/// of a shell loop took turns on two or three CR3 values, added up their system calls there,
/// and ran their short lives translated, which cost them more than it saved).
pub const IDLE_NS: u64 = 1_000_000;
/// Callouts from a hot page over which it is judged.
pub const JUDGE_EVERY: u32 = 256;
/// A hot page cools (runs directly again, for good) when, over [`JUDGE_EVERY`] of its callouts
/// that are not system calls, its address space's translated code made fewer than
/// 1/`COOL_RATIO` as many system calls (less a margin): a callout (~1 us) is worth paying where
/// it saves a system call's signal (several us), not for code that mostly computes. Such code
/// pays callouts for instructions that run natively under
/// `direct` (GS-relative accesses, i386 TLS and stack-protector checks, go through a callout
/// at CPL 3, GS being the translator's reserved segment register).
pub const COOL_RATIO: u32 = 8;
/// Pages cooled at most per address space (cleared at the cap).
pub const MAX_COLD_PAGES: usize = 1024;
/// Hot pages at most (all address spaces).
pub const MAX_HOT_PAGES: usize = 256;
/// Counters at most per address space and kind.
pub const MAX_COUNTERS: usize = 4096;
/// Address spaces with state at most.
pub const MAX_REGIONS: usize = 64;

/// What the policy keeps about one address space (CR3), by linear page number.
#[derive(Default)]
struct Region {
    pages: HashSet<u32>,
    traps: HashMap<u32, u32>,
    departures: HashMap<u32, u32>,
    /// Per hot page: (the region's system-call count when it was last judged, its other
    /// callouts since).
    callouts: HashMap<u32, (u64, u32)>,
    /// System calls made from translated user code.
    syscalls: u64,
    /// Pages that cooled: never hot again (while the region is remembered).
    cold: HashSet<u32>,
    /// When the address space was switched out (host ns), while it is not current.
    left_at: Option<u64>,
}

/// The hot user pages and the counters that make them.
#[derive(Default)]
pub struct HotUser {
    regions: HashMap<u32, Region>,
    /// Hot pages in all regions.
    hot: usize,
    /// The address space last switched to ([`HotUser::switched_to`]).
    current: Option<u32>,
    /// Pages made hot by system calls and by growth, pages cooled, address spaces forgotten
    /// after [`IDLE_NS`] away (statistics).
    pub made_hot: u64,
    pub grown: u64,
    pub cooled: u64,
    pub forgotten: u64,
}

/// What brings a page toward hot ([`HotUser::heat`]).
#[derive(Clone, Copy)]
enum Heat {
    /// A system call trapped from it ([`HOT_AFTER`]).
    Trap,
    /// Translated code left the hot pages for it ([`GROW_AFTER`]).
    Departure,
}

fn key(cr3: u32) -> u32 {
    cr3 & !0xfff
}

fn bump(map: &mut HashMap<u32, u32>, k: u32) -> u32 {
    if map.len() >= MAX_COUNTERS && !map.contains_key(&k) {
        map.clear();
    }
    let n = map.entry(k).or_default();
    *n += 1;
    *n
}

impl HotUser {
    /// Whether user code at linear `lin` in address space `cr3` runs translated.
    pub fn is_hot(&self, cr3: u32, lin: u32) -> bool {
        self.hot != 0 && self.regions.get(&key(cr3)).is_some_and(|r| r.pages.contains(&(lin >> 12)))
    }

    /// The region of `cr3`, made if needed (at [`MAX_REGIONS`], regions away for longer than
    /// [`IDLE_NS`] go first, everything if there are none).
    fn region(&mut self, cr3: u32) -> &mut Region {
        let k = key(cr3);
        if !self.regions.contains_key(&k) && self.regions.len() >= MAX_REGIONS {
            // `left_at` is set on every region but the current one: the oldest half goes.
            let mut left: Vec<u64> = self.regions.values().filter_map(|r| r.left_at).collect();
            left.sort_unstable();
            let cut = left.get(left.len() / 2).copied().unwrap_or(0);
            self.regions.retain(|_, r| r.left_at.is_none_or(|t| t > cut));
            if self.regions.len() >= MAX_REGIONS {
                self.regions.clear();
            }
            self.hot = self.regions.values().map(|r| r.pages.len()).sum();
        }
        self.regions.entry(k).or_default()
    }

    fn insert(&mut self, cr3: u32, page: u32) {
        if self.hot >= MAX_HOT_PAGES {
            for r in self.regions.values_mut() {
                r.pages.clear();
                r.callouts.clear();
            }
            self.hot = 0;
        }
        if self.region(cr3).pages.insert(page) {
            self.hot += 1;
        }
    }

    /// The guest loaded CR3 with `cr3` at host time `now_ns`. An address space coming back
    /// after more than [`IDLE_NS`] away is forgotten (true: it had state).
    pub fn switched_to(&mut self, cr3: u32, now_ns: u64) -> bool {
        let k = key(cr3);
        if self.current == Some(k) {
            return false;
        }
        if let Some(r) = self.current.and_then(|c| self.regions.get_mut(&c)) {
            r.left_at = Some(now_ns);
        }
        self.current = Some(k);
        let Some(r) = self.regions.get_mut(&k) else {
            return false;
        };
        let away = r.left_at.take().map(|t| now_ns.saturating_sub(t));
        if away.is_none_or(|a| a <= IDLE_NS) {
            return false;
        }
        if let Some(r) = self.regions.remove(&k) {
            self.hot -= r.pages.len();
        }
        self.forgotten += 1;
        true
    }

    /// Translated user code at linear `lin` made a callout (`syscall`: a system call). True
    /// if the page just cooled.
    pub fn callout(&mut self, cr3: u32, lin: u32, syscall: bool) -> bool {
        let page = lin >> 12;
        let Some(r) = self.regions.get_mut(&key(cr3)) else {
            return false;
        };
        if !r.pages.contains(&page) {
            return false;
        }
        if syscall {
            r.syscalls += 1;
            return false;
        }
        let now = r.syscalls;
        let c = r.callouts.entry(page).or_insert((now, 0));
        c.1 += 1;
        if c.1 < JUDGE_EVERY {
            return false;
        }
        let sys = now.saturating_sub(c.0);
        *c = (now, 0);
        if u64::from(JUDGE_EVERY) <= u64::from(COOL_RATIO) * (sys + 2) {
            return false;
        }
        r.callouts.remove(&page);
        r.pages.remove(&page);
        if r.cold.len() >= MAX_COLD_PAGES {
            r.cold.clear();
        }
        r.cold.insert(page);
        self.hot -= 1;
        self.cooled += 1;
        true
    }

    /// `n` system calls translated user code of address space `cr3` made without a callout
    /// (inline INT, `fastsys.rs`): counted as [`HotUser::callout`] counts a system call's.
    pub fn credit_syscalls(&mut self, cr3: u32, n: u32) {
        if let Some(r) = self.regions.get_mut(&key(cr3)) {
            r.syscalls += u64::from(n);
        }
    }

    /// A system call trapped from direct user code at linear `lin`. True if its page just
    /// became hot.
    pub fn syscall_trap(&mut self, cr3: u32, lin: u32) -> bool {
        let hot = self.heat(cr3, lin >> 12, Heat::Trap);
        self.made_hot += u64::from(hot);
        hot
    }

    /// Translated user code left the hot pages for linear `lin`. True if that page just
    /// became hot.
    pub fn departure(&mut self, cr3: u32, lin: u32) -> bool {
        let hot = self.heat(cr3, lin >> 12, Heat::Departure);
        self.grown += u64::from(hot);
        hot
    }

    /// Counts an event of kind `why` for `page` of `cr3` (neither hot nor cold); at its
    /// threshold the page becomes hot. True if it just did.
    fn heat(&mut self, cr3: u32, page: u32, why: Heat) -> bool {
        let r = self.region(cr3);
        if r.pages.contains(&page) || r.cold.contains(&page) {
            return false;
        }
        let (counts, after) = match why {
            Heat::Trap => (&mut r.traps, HOT_AFTER),
            Heat::Departure => (&mut r.departures, GROW_AFTER),
        };
        if bump(counts, page) < after {
            return false;
        }
        counts.remove(&page);
        self.insert(cr3, page);
        true
    }

    /// Forget everything (a full flush of the translation cache).
    pub fn clear(&mut self) {
        self.regions.clear();
        self.hot = 0;
    }

    pub fn hot_pages(&self) -> usize {
        self.hot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_become_hot_after_enough_traps_per_address_space() {
        let mut h = HotUser::default();
        for _ in 0..HOT_AFTER - 1 {
            assert!(!h.syscall_trap(0x1000, 0x0804_8123));
        }
        assert!(!h.is_hot(0x1000, 0x0804_8000));
        // A trap from another page or another address space counts separately.
        assert!(!h.syscall_trap(0x2000, 0x0804_8123));
        assert!(!h.syscall_trap(0x1000, 0x0804_9123));
        assert!(h.syscall_trap(0x1000, 0x0804_8ffe));
        assert!(h.is_hot(0x1000, 0x0804_8000) && h.is_hot(0x1abc, 0x0804_8fff), "CR3's low bits and the offset do not matter");
        assert!(!h.is_hot(0x2000, 0x0804_8000));
        assert!(!h.is_hot(0x1000, 0x0804_9000));
        assert!(!h.syscall_trap(0x1000, 0x0804_8123), "already hot");
        assert_eq!(h.made_hot, 1);
    }

    #[test]
    fn the_region_grows_to_pages_translated_code_keeps_leaving_for() {
        let mut h = HotUser::default();
        for _ in 0..GROW_AFTER - 1 {
            assert!(!h.departure(0x1000, 0x0805_0000));
        }
        assert!(h.departure(0x1000, 0x0805_0010));
        assert!(h.is_hot(0x1000, 0x0805_0000));
        assert_eq!(h.grown, 1);
    }

    #[test]
    fn pages_whose_translation_makes_other_callouts_cool_for_good() {
        let mut h = HotUser::default();
        for _ in 0..HOT_AFTER {
            h.syscall_trap(0x1000, 0x0804_8000);
        }
        // A system call (from another page of the region, the vDSO) per four other callouts
        // (a wrapper's GS accesses): stays.
        for _ in 0..4 * JUDGE_EVERY {
            h.callout(0x1000, 0x0804_8000, true);
            h.syscall_trap(0x1000, 0x0804_8000);
            for _ in 0..4 {
                assert!(!h.callout(0x1000, 0x0804_8000, false));
            }
        }
        assert!(h.is_hot(0x1000, 0x0804_8000));
        // Only other callouts (a computing loop): cools at the next judgement, stays cold.
        let cooled = (0..2 * JUDGE_EVERY).filter(|_| h.callout(0x1000, 0x0804_8000, false)).count();
        assert_eq!(cooled, 1);
        assert!(!h.is_hot(0x1000, 0x0804_8000));
        for _ in 0..2 * HOT_AFTER {
            assert!(!h.syscall_trap(0x1000, 0x0804_8000));
            assert!(!h.departure(0x1000, 0x0804_8000));
        }
        assert!(!h.is_hot(0x1000, 0x0804_8000));
        assert_eq!(h.cooled, 1);
    }

    #[test]
    fn bounded() {
        let mut h = HotUser::default();
        for p in 0..MAX_HOT_PAGES as u32 + 1 {
            for _ in 0..HOT_AFTER {
                h.syscall_trap(0x1000, p << 12);
            }
        }
        assert!(h.hot_pages() <= MAX_HOT_PAGES);
        assert!(h.is_hot(0x1000, (MAX_HOT_PAGES as u32) << 12), "the newest stays");
        for p in 0..2 * MAX_COUNTERS as u32 {
            h.departure(0x1000, 0x4000_0000 + (p << 12));
        }
        assert!(h.regions.values().all(|r| r.departures.len() <= MAX_COUNTERS));
        for cr3 in 0..2 * MAX_REGIONS as u32 {
            h.switched_to(cr3 << 12, u64::from(cr3));
            h.syscall_trap(cr3 << 12, 0x0804_8000);
        }
        assert!(h.regions.len() <= MAX_REGIONS);
        assert_eq!(h.hot_pages(), h.regions.values().map(|r| r.pages.len()).sum::<usize>());
        h.clear();
        assert_eq!(h.hot_pages(), 0);
    }

    fn make_hot(h: &mut HotUser, cr3: u32, lin: u32) {
        for _ in 0..HOT_AFTER {
            h.syscall_trap(cr3, lin);
        }
        assert!(h.is_hot(cr3, lin));
    }

    #[test]
    fn an_address_space_away_for_long_is_forgotten() {
        let mut h = HotUser::default();
        let t0 = 5_000_000_000;
        h.switched_to(0x1000, t0);
        make_hot(&mut h, 0x1000, 0x0804_8000);
        for _ in 0..HOT_AFTER - 1 {
            h.syscall_trap(0x1000, 0x0805_0000);
        }
        // Another address space for a while, not long: all kept.
        h.switched_to(0x2000, t0 + 10);
        make_hot(&mut h, 0x2000, 0x0804_8000);
        assert!(!h.switched_to(0x1000, t0 + 10 + IDLE_NS));
        assert!(h.is_hot(0x1000, 0x0804_8000) && h.is_hot(0x2000, 0x0804_8000));
        assert!(h.syscall_trap(0x1000, 0x0805_0000), "the counter was kept");
        // A reload of the current CR3 (a TLB flush) is no switch.
        assert!(!h.switched_to(0x1000, t0 + 100 * IDLE_NS));
        assert!(h.is_hot(0x1000, 0x0804_8000));
        // 0x2000 away since t0 + 10 + IDLE_NS: forgotten when it comes back after longer
        // than IDLE_NS, counters included; 0x1000 (left now) is not.
        let t1 = t0 + 100 * IDLE_NS;
        assert!(h.switched_to(0x2000, t1));
        assert!(!h.is_hot(0x2000, 0x0804_8000) && h.is_hot(0x1000, 0x0805_0000));
        assert_eq!((h.forgotten, h.hot_pages()), (1, 2));
        for _ in 0..HOT_AFTER - 1 {
            assert!(!h.syscall_trap(0x2000, 0x0804_8000));
        }
        assert!(h.syscall_trap(0x2000, 0x0804_8000));
        // Cold pages are forgotten too.
        h.switched_to(0x1000, t1 + 1);
        for _ in 0..JUDGE_EVERY {
            h.callout(0x1000, 0x0804_8000, false);
        }
        assert!(!h.is_hot(0x1000, 0x0804_8000));
        make_hot_fails(&mut h, 0x1000, 0x0804_8000);
        h.switched_to(0x2000, t1 + 2);
        assert!(h.switched_to(0x1000, t1 + 3 + IDLE_NS));
        make_hot(&mut h, 0x1000, 0x0804_8000);
    }

    fn make_hot_fails(h: &mut HotUser, cr3: u32, lin: u32) {
        for _ in 0..2 * HOT_AFTER {
            assert!(!h.syscall_trap(cr3, lin));
        }
        assert!(!h.is_hot(cr3, lin));
    }
}
