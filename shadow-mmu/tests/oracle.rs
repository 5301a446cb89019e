//! The interpreter is the oracle of the shadow MMU: for random page tables and random
//! (linear address, access, CPL, CR0.WP, CR4.PSE/PGE), `ShadowMmu::handle_fault` must decide
//! what `vmm_interp::Cpu::translate` decides:
//! * a guest fault with the same #PF error code (and CR2 = the address), no memory change;
//! * a hidden fault mapping the same physical frame, with the same A/D bits written to guest
//!   memory; every page of the mapped run must be a translation the interpreter gives for an
//!   access by the same privilege *without* writing guest memory (A, and D when writable,
//!   already set), and the run is writable exactly when the interpreter would let such a
//!   write through without setting D;
//! * `NotRam` exactly when the translation (or a paging-structure entry) is outside RAM.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use vmm_interp::mmu::Access as IAccess;
use vmm_interp::state::{cr, vector};
use vmm_interp::{Cpu, CpuState, Exception, Fault, RamBus};
use vmm_shadow_mmu::{Access, MapOps, PagingMode, Resolution, ShadowMmu};

const RAM_PAGES: u32 = 24;
const RAM: u32 = RAM_PAGES << 12;
const HOLE: u32 = 0xffc0_0000;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 16) as u32
    }
}

/// Guest RAM where every dword is a plausible paging-structure entry.
fn random_ram(seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed | 1);
    let mut ram = Vec::with_capacity(RAM as usize);
    for _ in 0..RAM / 4 {
        let r = rng.next();
        let mut flags = rng.next() & 0x1ff;
        if rng.next() & 3 != 0 {
            flags |= 1; // mostly present
        }
        let w = match r % 8 {
            0..=4 => ((rng.next() % (RAM_PAGES + 4)) << 12) | flags,
            5 => ((rng.next() % 2) << 22) | flags | 0x80,
            6 => ((rng.next() % 2) << 22) | ((rng.next() & 0x1ff) << 13) | flags | 0x80,
            _ => 0,
        };
        ram.extend_from_slice(&w.to_le_bytes());
    }
    ram
}

#[derive(Default)]
struct Rec(Vec<(u32, u32, u32, bool)>);

impl MapOps for Rec {
    type Error = ();
    fn map(&mut self, lin: u32, frame: u32, pages: u32, writable: bool) -> Result<(), ()> {
        self.0.push((lin, frame, pages, writable));
        Ok(())
    }
    fn unmap(&mut self, _lin: u32, _pages: u32) -> Result<(), ()> {
        Ok(())
    }
}

#[derive(Clone, Copy, Debug)]
struct Step {
    lin: u32,
    access: Access,
    user: bool,
}

fn step_strategy() -> impl Strategy<Value = Step> {
    (
        prop_oneof![4 => 0u32..1024, 1 => Just(1023u32)],
        prop_oneof![0u32..RAM_PAGES + 8, 0u32..1024],
        0u32..4096,
        prop_oneof![Just(Access::Read), Just(Access::Write), Just(Access::Fetch)],
        any::<bool>(),
    )
        .prop_map(|(pdi, pti, off, access, user)| Step {
            lin: (pdi << 22) | (pti << 12) | off,
            access,
            user,
        })
}

fn iaccess(a: Access, user: bool) -> IAccess {
    match a {
        Access::Read => IAccess::read(user),
        Access::Write => IAccess::write(user),
        Access::Fetch => IAccess::fetch(user),
    }
}

fn cpu(mode: &PagingMode, ram: Vec<u8>) -> Cpu<RamBus> {
    let mut st = CpuState::flat_protected(0);
    st.cr0 |= cr::CR0_PG;
    if mode.wp {
        st.cr0 |= cr::CR0_WP;
    }
    st.cr3 = mode.cr3;
    st.cr4 = if mode.pse { cr::CR4_PSE } else { 0 } | if mode.pge { cr::CR4_PGE } else { 0 };
    let mut c = Cpu::with_state(st, RamBus { ram });
    c.flush_caches();
    c
}

/// The address of the page-table entry of `lin` if the PDE is present, points at a page
/// table (not a 4 MiB page) and that entry lies outside RAM.
fn pte_outside_ram(mode: &PagingMode, ram: &[u8], lin: u32) -> Option<u32> {
    let a = ((mode.cr3 & !0xfff) | ((lin >> 22) << 2)) as usize;
    let pde = u32::from_le_bytes(ram[a..a + 4].try_into().unwrap());
    let large = pde & 0x80 != 0 && mode.pse;
    let pte_addr = (pde & !0xfff) | ((lin >> 10) & 0xffc);
    (pde & 1 != 0 && !large && pte_addr >= RAM).then_some(pte_addr)
}

fn check(seed: u64, mode: PagingMode, steps: &[Step]) -> Result<(), TestCaseError> {
    let mut mem = random_ram(seed);
    let mut oracle = cpu(&mode, mem.clone());
    let mut mmu = ShadowMmu::new(RAM, 1 << 16, HOLE);
    let mut rec = Rec::default();
    let mut stats = (0, 0, 0, 0);
    for s in steps {
        let r = mmu
            .handle_fault(&mode, s.lin, s.access, s.user, &mut mem, &mut rec)
            .unwrap();
        oracle.flush_caches();
        let want = oracle.translate(s.lin, iaccess(s.access, s.user));
        match r {
            Resolution::GuestFault { cr2, error_code } => {
                stats.0 += 1;
                prop_assert_eq!(cr2, s.lin);
                prop_assert_eq!(
                    want,
                    Err(Fault::Exc(Exception {
                        vector: vector::PF,
                        error: Some(error_code)
                    })),
                    "{:?}",
                    s
                );
                prop_assert_eq!(oracle.state.cr2, s.lin);
                prop_assert!(mem == oracle.bus.ram, "memory differs after a guest fault");
            }
            Resolution::Mapped => {
                stats.1 += 1;
                let Ok(phys) = want else {
                    return Err(TestCaseError::fail(format!(
                        "{s:?}: mapped but the interpreter says {want:?}"
                    )));
                };
                let &(first, frame0, pages, writable) = rec.0.last().unwrap();
                let page = s.lin & !0xfff;
                prop_assert!(
                    page >= first && page < first + (pages << 12),
                    "{:?} not in the run",
                    s
                );
                prop_assert_eq!(frame0 + (page - first), phys & !0xfff, "{:?}", s);
                prop_assert!(mem == oracle.bus.ram, "A/D updates differ: {:?}", s);
                prop_assert!(frame0 + (pages << 12) <= RAM);
                // Every page of the run: the interpreter translates it the same way for this
                // privilege without touching memory, and lets writes through without setting
                // D exactly when the host mapping is writable.
                let mut probe = cpu(&mode, mem.clone());
                for i in 0..pages {
                    let q = first + (i << 12);
                    probe.flush_caches();
                    let t = probe.translate(q, IAccess::read(s.user));
                    prop_assert_eq!(t, Ok(frame0 + (i << 12)), "run page {:#x} of {:?}", q, s);
                    prop_assert!(
                        probe.bus.ram == mem,
                        "run page {:#x} was not accessed yet",
                        q
                    );
                    probe.flush_caches();
                    let w = probe.translate(q, IAccess::write(s.user));
                    let through = w.is_ok() && probe.bus.ram == mem;
                    prop_assert_eq!(
                        writable,
                        through,
                        "writability of run page {:#x} of {:?}",
                        q,
                        s
                    );
                    probe.bus.ram.copy_from_slice(&mem);
                }
            }
            Resolution::NotRam { phys } => {
                stats.2 += 1;
                match want {
                    Ok(p) if p == phys => prop_assert!(p >= RAM),
                    _ => prop_assert_eq!(
                        Some(phys),
                        pte_outside_ram(&mode, &mem, s.lin),
                        "{:?} {:?}",
                        s,
                        want
                    ),
                }
                // The runtime emulates the instruction with the interpreter: take its memory.
                mem.copy_from_slice(&oracle.bus.ram);
            }
            Resolution::MonitorArea => {
                stats.3 += 1;
                prop_assert!(s.lin >= HOLE);
                mem.copy_from_slice(&oracle.bus.ram);
            }
        }
        if !matches!(r, Resolution::NotRam { .. }) {
            prop_assert!(
                pte_outside_ram(&mode, &mem, s.lin).is_none() || r == Resolution::MonitorArea
            );
        }
    }
    let _ = stats;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn walker_agrees_with_the_interpreter(
        seed in any::<u64>(),
        cr3_page in 0u32..RAM_PAGES,
        wp in any::<bool>(),
        pse in any::<bool>(),
        pge in any::<bool>(),
        steps in prop::collection::vec(step_strategy(), 1..6),
    ) {
        let mode = PagingMode { paging: true, pse, pge, wp, cr3: cr3_page << 12 };
        check(seed, mode, &steps)?;
    }

    /// The same address accessed repeatedly in all ways: read-only-until-dirty, CR0.WP and
    /// the D bit sequence.
    #[test]
    fn repeated_accesses_agree(
        seed in any::<u64>(),
        cr3_page in 0u32..RAM_PAGES,
        wp in any::<bool>(),
        pse in any::<bool>(),
        base in step_strategy(),
        kinds in prop::collection::vec((prop_oneof![Just(Access::Read), Just(Access::Write), Just(Access::Fetch)], any::<bool>()), 2..8),
    ) {
        let mode = PagingMode { paging: true, pse, pge: true, wp, cr3: cr3_page << 12 };
        let steps: Vec<Step> = kinds.iter().map(|&(access, user)| Step { access, user, ..base }).collect();
        check(seed, mode, &steps)?;
    }
}

/// The generator reaches every outcome (guards against a vacuous oracle test).
#[test]
fn generator_covers_all_outcomes() {
    let mut seen = [0u32; 4];
    let (mut runs, mut writable_maps) = (0, 0);
    for seed in 0..400u64 {
        let mut mem = random_ram(seed * 7919 + 1);
        let mut rng = Rng(seed + 99);
        let mode = PagingMode {
            paging: true,
            pse: seed % 2 == 0,
            pge: true,
            wp: seed % 3 != 0,
            cr3: (rng.next() % RAM_PAGES) << 12,
        };
        let mut mmu = ShadowMmu::new(RAM, 1 << 16, HOLE);
        for _ in 0..8 {
            let pti = if rng.next() & 1 == 0 {
                rng.next() % RAM_PAGES
            } else {
                rng.next() % 1024
            };
            let pdi = if rng.next() & 7 == 0 {
                1023
            } else {
                rng.next() % 1024
            };
            let lin = (pdi << 22) | (pti << 12);
            let acc = [Access::Read, Access::Write, Access::Fetch][(rng.next() % 3) as usize];
            let mut rec = Rec::default();
            let r = mmu
                .handle_fault(&mode, lin, acc, rng.next() & 1 == 0, &mut mem, &mut rec)
                .unwrap();
            if let Some(&(_, _, pages, writable)) = rec.0.last() {
                runs += u32::from(pages > 1);
                writable_maps += u32::from(writable);
            }
            seen[match r {
                Resolution::GuestFault { .. } => 0,
                Resolution::Mapped => 1,
                Resolution::NotRam { .. } => 2,
                Resolution::MonitorArea => 3,
            }] += 1;
        }
    }
    assert!(seen.iter().all(|&n| n >= 10), "outcomes {seen:?}");
    assert!(
        runs >= 10 && writable_maps >= 10,
        "runs {runs}, writable maps {writable_maps}"
    );
}

/// What stays mapped must be what the interpreter, with a flushed TLB, translates the same way
/// without writing guest memory, for every privilege the mapping lets in (reads; writes if
/// the host mapping is writable). Checked after a CR3 write (same or another directory, after
/// random changes to the entries of mapped pages) and after `prefault`. Returns (pages kept,
/// pages prefaulted).
fn check_kept(seed: u64, mode: PagingMode, steps: &[Step], flips: &[(u32, u32)], cr3b: Option<u32>, pre: &[Step]) -> Result<(u64, u64), TestCaseError> {
    let mut mem = random_ram(seed);
    let mut mmu = ShadowMmu::new(RAM, 1 << 16, HOLE);
    let mut rec = Rec::default();
    for s in steps {
        mmu.handle_fault(&mode, s.lin, s.access, s.user, &mut mem, &mut rec).unwrap();
    }
    // Change entries of mapped pages: the PDE or the PTE, a flag or the frame.
    let runs: Vec<(u32, u32)> = rec.0.iter().map(|&(l, _, n, _)| (l, n)).collect();
    for &(pick, bits) in flips {
        let Some(&(first, n)) = runs.get(pick as usize % runs.len().max(1)) else { break };
        let lin = first + (((pick >> 8) % n) << 12);
        let pde_addr = (mode.cr3 & !0xfff) | ((lin >> 22) << 2);
        let pde = u32::from_le_bytes(mem[pde_addr as usize..pde_addr as usize + 4].try_into().unwrap());
        let addr = if bits & 1 == 0 || pde & 0x80 != 0 { pde_addr } else { (pde & !0xfff) | ((lin >> 10) & 0xffc) };
        if addr + 4 > RAM {
            continue;
        }
        let flag = [0x1, 0x2, 0x4, 0x20, 0x40, 0x100, 0x1000][(bits >> 1) as usize % 7];
        let v = u32::from_le_bytes(mem[addr as usize..addr as usize + 4].try_into().unwrap()) ^ flag;
        mem[addr as usize..addr as usize + 4].copy_from_slice(&v.to_le_bytes());
    }
    let mode2 = PagingMode { cr3: cr3b.unwrap_or(mode.cr3), ..mode };
    let before = mem.clone();
    let pages_before = mmu.mapped_pages();
    mmu.cr3_written(&mode2, &mut mem, &mut rec).unwrap();
    prop_assert!(mem == before, "a CR3 write changed guest memory");
    let mut prefaulted = 0;
    for s in pre {
        let before = mem.clone();
        if mmu.prefault(&mode2, s.lin, s.user, &mut mem, &mut rec).unwrap() {
            prefaulted += 1;
            let &(first, _, n, _) = rec.0.last().unwrap();
            prop_assert!(s.lin & !0xfff >= first && s.lin & !0xfff < first + (n << 12));
        }
        prop_assert!(mem == before, "a prefault changed guest memory");
    }
    let mut probe = cpu(&mode2, mem.clone());
    for &(first, _, n, _) in &rec.0 {
        for i in 0..n {
            let q = first + (i << 12);
            let Some(m) = mmu.mapping(q) else { continue };
            if m.global && mode2.pge {
                continue; // a global TLB entry survives the CR3 write
            }
            for user in [false, true] {
                if user && !m.user {
                    continue;
                }
                probe.flush_caches();
                prop_assert_eq!(probe.translate(q, IAccess::read(user)), Ok(m.frame), "page {:#x} user {}", q, user);
                prop_assert!(probe.bus.ram == mem, "page {:#x} was not accessed", q);
                if m.writable && (!user || m.guest_writable) {
                    probe.flush_caches();
                    prop_assert_eq!(probe.translate(q, IAccess::write(user)), Ok(m.frame), "write to {:#x} user {}", q, user);
                    prop_assert!(probe.bus.ram == mem, "page {:#x} was not dirty", q);
                }
            }
        }
    }
    let kept = mmu.stats().cr3_kept;
    prop_assert!(kept as usize <= pages_before);
    Ok((kept, prefaulted))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn kept_and_prefaulted_pages_agree_with_the_interpreter(
        seed in any::<u64>(),
        cr3_page in 0u32..RAM_PAGES,
        other in prop::option::of(0u32..RAM_PAGES),
        wp in any::<bool>(),
        pse in any::<bool>(),
        pge in any::<bool>(),
        steps in prop::collection::vec(step_strategy(), 1..8),
        flips in prop::collection::vec((any::<u32>(), any::<u32>()), 0..4),
        pre in prop::collection::vec(step_strategy(), 0..4),
    ) {
        let mode = PagingMode { paging: true, pse, pge, wp, cr3: cr3_page << 12 };
        check_kept(seed, mode, &steps, &flips, other.map(|p| p << 12), &pre)?;
    }
}

/// The CR3 test keeps and drops pages and prefaults some (guards against a vacuous test).
#[test]
fn kept_generator_keeps_drops_and_prefaults() {
    let (mut kept, mut dropped, mut pre) = (0, 0, 0);
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strat = (
        any::<u64>(),
        0u32..RAM_PAGES,
        prop::collection::vec(step_strategy(), 1..8),
        prop::collection::vec((any::<u32>(), any::<u32>()), 0..4),
        prop::collection::vec(step_strategy(), 0..4),
    );
    for _ in 0..400 {
        let (seed, cr3_page, steps, flips, p) = strat.new_tree(&mut runner).unwrap().current();
        let mode = PagingMode { paging: true, pse: true, pge: false, wp: true, cr3: cr3_page << 12 };
        let (k, n) = check_kept(seed, mode, &steps, &flips, None, &p).unwrap();
        let mut mem = random_ram(seed);
        let mut mmu = ShadowMmu::new(RAM, 1 << 16, HOLE);
        let mut rec = Rec::default();
        for s in &steps {
            mmu.handle_fault(&mode, s.lin, s.access, s.user, &mut mem, &mut rec).unwrap();
        }
        kept += k;
        dropped += u64::from(!flips.is_empty() && (mmu.mapped_pages() as u64) > k);
        pre += n;
    }
    assert!(kept >= 20 && dropped >= 20 && pre >= 20, "kept {kept}, dropped {dropped}, prefaulted {pre}");
}
