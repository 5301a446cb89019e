//! Unit tests of the shadow mapping state: hand-built page tables in a `Vec<u8>` and a
//! recording `MapOps` that the exact map/unmap calls are asserted against.

use crate::walk::pte::{A, D, G, P, PS, RW, US};
use crate::*;

const RAM: u32 = 0x10_0000; // 1 MiB
const CR3: u32 = 0x1000;
const PT0: u32 = 0x2000; // page table of linear 0..4 MiB
const PTK: u32 = 0x3000; // page table of linear 0xC000_0000..
const HOLE: u32 = 0xffc0_0000;
const CR3B: u32 = 0x2_0000; // a second page directory (nothing present unless a test adds it)
const PT0B: u32 = 0x2_1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    Map {
        lin: u32,
        frame: u32,
        pages: u32,
        w: bool,
    },
    Unmap {
        lin: u32,
        pages: u32,
    },
}

fn m(lin: u32, frame: u32, pages: u32, w: bool) -> Call {
    Call::Map {
        lin,
        frame,
        pages,
        w,
    }
}

fn u(lin: u32, pages: u32) -> Call {
    Call::Unmap { lin, pages }
}

#[derive(Default)]
struct Rec {
    calls: Vec<Call>,
    fail: bool,
}

impl Rec {
    fn take(&mut self) -> Vec<Call> {
        std::mem::take(&mut self.calls)
    }
}

impl MapOps for Rec {
    type Error = &'static str;
    fn map(
        &mut self,
        lin: u32,
        frame: u32,
        pages: u32,
        writable: bool,
    ) -> Result<(), &'static str> {
        if self.fail {
            return Err("map failed");
        }
        assert_eq!(lin & 0xfff, 0);
        assert_eq!(frame & 0xfff, 0);
        assert!(
            u64::from(frame) + u64::from(pages) * 0x1000 <= u64::from(RAM),
            "beyond RAM"
        );
        assert!(
            u64::from(lin) + u64::from(pages) * 0x1000 <= u64::from(HOLE),
            "into the hole"
        );
        self.calls.push(m(lin, frame, pages, writable));
        Ok(())
    }
    fn unmap(&mut self, lin: u32, pages: u32) -> Result<(), &'static str> {
        if self.fail {
            return Err("unmap failed");
        }
        self.calls.push(u(lin, pages));
        Ok(())
    }
}

struct Env {
    mem: Vec<u8>,
    mmu: ShadowMmu,
    rec: Rec,
    mode: PagingMode,
}

impl Env {
    fn new() -> Env {
        let mut e = Env {
            mem: vec![0; RAM as usize],
            mmu: ShadowMmu::new(RAM, 1 << 16, HOLE),
            rec: Rec::default(),
            mode: PagingMode {
                paging: true,
                pse: true,
                pge: true,
                wp: true,
                cr3: CR3,
            },
        };
        e.put(CR3, PT0 | P | RW | US);
        e.put(CR3 + 0x300 * 4, PTK | P | RW);
        e
    }
    fn put(&mut self, a: u32, v: u32) {
        assert!(self.mem.write_u32(a, v));
    }
    fn get(&mut self, a: u32) -> u32 {
        self.mem.read_u32(a).unwrap()
    }
    /// PTE for linear page `lin` (in PDE 0 or the kernel PDE).
    fn pte(&mut self, lin: u32, v: u32) {
        let pt = if lin >= 0xc000_0000 { PTK } else { PT0 };
        self.put(pt + ((lin >> 12) & 0x3ff) * 4, v);
    }
    fn pte_of(&mut self, lin: u32) -> u32 {
        let pt = if lin >= 0xc000_0000 { PTK } else { PT0 };
        self.get(pt + ((lin >> 12) & 0x3ff) * 4)
    }
    fn fault(&mut self, lin: u32, acc: Access, user: bool) -> Resolution {
        self.mmu
            .handle_fault(&self.mode, lin, acc, user, &mut self.mem, &mut self.rec)
            .unwrap()
    }
    fn cr3(&mut self) {
        self.mmu
            .cr3_written(&self.mode, &mut self.mem, &mut self.rec)
            .unwrap()
    }
    fn flush(&mut self) {
        self.mmu
            .flush_all(&self.mode, &mut self.mem, &mut self.rec)
            .unwrap()
    }
}

#[test]
fn read_maps_read_only_until_dirty_then_write_remaps_writable() {
    let mut e = Env::new();
    e.pte(0x5000, 0x7000 | P | RW | US);
    assert_eq!(e.fault(0x5123, Access::Read, true), Resolution::Mapped);
    assert_eq!(e.rec.take(), [m(0x5000, 0x7000, 1, false)]);
    assert_eq!(e.get(CR3), PT0 | P | RW | US | A);
    assert_eq!(e.pte_of(0x5000), 0x7000 | P | RW | US | A);
    let pg = e.mmu.mapping(0x5fff).unwrap();
    assert!(!pg.writable && pg.user && pg.guest_writable && !pg.global && !pg.large);
    // The write faults again (read-only host mapping), sets D and remaps writable.
    assert_eq!(e.fault(0x5123, Access::Write, true), Resolution::Mapped);
    assert_eq!(e.rec.take(), [m(0x5000, 0x7000, 1, true)]);
    assert_eq!(e.pte_of(0x5000), 0x7000 | P | RW | US | A | D);
    assert_eq!(e.mmu.mapped_pages(), 1);
    assert_eq!(e.mmu.stats().hidden_faults, 2);
}

#[test]
fn read_of_dirty_writable_page_maps_writable() {
    let mut e = Env::new();
    e.pte(0x5000, 0x7000 | P | RW | US | A | D);
    assert_eq!(e.fault(0x5000, Access::Fetch, false), Resolution::Mapped);
    assert_eq!(e.rec.take(), [m(0x5000, 0x7000, 1, true)]);
}

#[test]
fn read_only_guest_page_never_host_writable_with_wp() {
    let mut e = Env::new();
    e.pte(0x5000, 0x7000 | P | US | A | D);
    assert_eq!(e.fault(0x5000, Access::Read, false), Resolution::Mapped);
    assert_eq!(e.rec.take(), [m(0x5000, 0x7000, 1, false)]);
    assert_eq!(
        e.fault(0x5000, Access::Write, false),
        Resolution::GuestFault {
            cr2: 0x5000,
            error_code: 3
        }
    );
    assert!(e.rec.take().is_empty());
}

#[test]
fn guest_faults_report_cr2_and_error_code_and_change_nothing() {
    let mut e = Env::new();
    e.pte(0x5000, 0x7000 | P | RW); // supervisor-only
    let before = e.mem.clone();
    assert_eq!(
        e.fault(0x5abc, Access::Write, true),
        Resolution::GuestFault {
            cr2: 0x5abc,
            error_code: 7
        }
    );
    assert_eq!(
        e.fault(0x6000, Access::Read, false),
        Resolution::GuestFault {
            cr2: 0x6000,
            error_code: 0
        }
    );
    assert_eq!(
        e.fault(0x0080_0000, Access::Fetch, true),
        Resolution::GuestFault {
            cr2: 0x0080_0000,
            error_code: 4
        }
    );
    assert_eq!(e.mem, before);
    assert!(e.rec.take().is_empty());
    assert_eq!(e.mmu.stats().guest_faults, 3);
    assert_eq!(e.mmu.mapped_pages(), 0);
}

#[test]
fn reserved_bits_in_large_pde() {
    let mut e = Env::new();
    e.put(CR3 + 4, 0x0040_2000 | PS | P | RW | US);
    assert_eq!(
        e.fault(0x0040_1000, Access::Read, true),
        Resolution::GuestFault {
            cr2: 0x0040_1000,
            error_code: pf::P | pf::U | pf::RSVD
        }
    );
}

#[test]
fn supervisor_write_with_wp_clear_and_ring_compression() {
    let mut e = Env::new();
    e.mode.wp = false;
    e.cr3(); // user_limit for this directory: 0xC000_0000
    assert_eq!(e.mmu.user_limit(), 0xc000_0000);
    e.pte(0x5000, 0x7000 | P | US); // user read-only
    e.pte(0x6000, 0x8000 | P | RW | A | D); // supervisor-only
    e.pte(0xc000_0000, 0x9000 | P | RW | A | D); // kernel page above the limit
    assert_eq!(e.fault(0x5000, Access::Write, false), Resolution::Mapped);
    assert_eq!(e.pte_of(0x5000), 0x7000 | P | US | A | D);
    assert_eq!(e.fault(0x6000, Access::Read, false), Resolution::Mapped);
    assert_eq!(
        e.fault(0xc000_0000, Access::Read, false),
        Resolution::Mapped
    );
    // 0x5000 is host-writable although the guest PTE is read-only (CR0.WP = 0).
    assert_eq!(
        e.rec.take(),
        [
            m(0x5000, 0x7000, 1, true),
            m(0x6000, 0x8000, 1, true),
            m(0xc000_0000, 0x9000, 1, true)
        ]
    );
    // Entering user mode: both unsafe pages below the limit go (one run), the kernel page stays.
    assert!(!e.mmu.user_entry_unmaps_nothing());
    e.mmu.set_user(true, &mut e.rec).unwrap();
    assert!(e.mmu.user_entry_unmaps_nothing());
    assert_eq!(e.rec.take(), [u(0x5000, 2)]);
    assert!(e.mmu.mapping(0xc000_0000).is_some());
    assert_eq!(e.mmu.stats().user_unmapped, 2);
    // In user mode the read-only page is mapped read-only again, the supervisor page faults.
    assert_eq!(e.fault(0x5000, Access::Read, true), Resolution::Mapped);
    assert_eq!(e.rec.take(), [m(0x5000, 0x7000, 1, false)]);
    assert_eq!(
        e.fault(0x6000, Access::Read, true),
        Resolution::GuestFault {
            cr2: 0x6000,
            error_code: 5
        }
    );
    // Back to kernel mode: nothing to do; a second set_user(true) finds nothing unsafe.
    e.mmu.set_user(false, &mut e.rec).unwrap();
    assert!(e.mmu.user_entry_unmaps_nothing());
    e.mmu.set_user(true, &mut e.rec).unwrap();
    assert!(e.rec.take().is_empty());
}

#[test]
fn user_limit_rules() {
    let mut e = Env::new();
    e.cr3();
    assert_eq!(e.mmu.user_limit(), 0xc000_0000);
    // A user PDE above the kernel's whose table maps no user page reaches nothing: the
    // limit stays (Linux's vmalloc and fixmap tables).
    const PTU: u32 = 0x4000;
    e.put(CR3 + 0x301 * 4, PTU | P | RW | US);
    e.put(PTU + 0x10 * 4, 0x9000 | P | RW); // a supervisor page
    e.cr3();
    assert_eq!(e.mmu.user_limit(), 0xc000_0000);
    // Once the table maps a user page, the limit is the supervisor PDE above it, if any.
    e.put(PTU + 0x3ff * 4, 0xa000 | P | US);
    e.cr3();
    assert_eq!(e.mmu.user_limit(), HOLE);
    e.put(CR3 + 0x302 * 4, PTK | P | RW);
    e.put(CR3 + 0x303 * 4, PTK | P | RW);
    e.cr3();
    assert_eq!(e.mmu.user_limit(), 0xc080_0000);
    // Supervisor PDEs below the highest user PDE do not count.
    e.put(CR3 + 0x301 * 4, 0);
    e.put(CR3 + 0x100 * 4, PTU | P | US);
    e.put(CR3 + 0x80 * 4, PTK | P);
    e.cr3();
    assert_eq!(e.mmu.user_limit(), 0xc000_0000);
    // Paging off: the monitor base.
    e.mode.paging = false;
    e.flush();
    assert_eq!(e.mmu.user_limit(), HOLE);
}

#[test]
fn four_kib_run_takes_accessed_contiguous_neighbours_with_same_rights() {
    let mut e = Env::new();
    // Window of 0x10000..0x20000 (pages 0x10..0x1f). Fault on page 0x14.
    for i in 0x10..0x20u32 {
        e.pte(i << 12, ((0x40 + i) << 12) | P | RW | US | A);
    }
    e.pte(0x12000, 0x52000 | P | RW | US); // not accessed: left boundary
    e.pte(0x18000, 0x58000 | P | RW | US | A | D); // dirty: different host rights
    e.pte(0x14000, 0x54000 | P | RW | US); // the faulting page (A is set by the walk)
    assert_eq!(e.fault(0x14000, Access::Read, true), Resolution::Mapped);
    assert_eq!(e.rec.take(), [m(0x13000, 0x53000, 5, false)]);
    assert_eq!(e.mmu.mapped_pages(), 5);
    // Non-contiguous frame stops a run; pages already mapped are not remapped.
    e.pte(0x1a000, 0x99000 | P | RW | US | A);
    assert_eq!(e.fault(0x19000, Access::Read, true), Resolution::Mapped);
    assert_eq!(e.rec.take(), [m(0x19000, 0x59000, 1, false)]);
    assert_eq!(e.fault(0x1b000, Access::Read, true), Resolution::Mapped);
    assert_eq!(
        e.rec.take(),
        [m(0x1b000, 0x5b000, 5, false)],
        "0x1a000 is not contiguous with 0x1b000"
    );
    // The window ends at page 0x1f: 0x1b..=0x1f.
    assert!(e.mmu.mapping(0x1f000).is_some() && e.mmu.mapping(0x20000).is_none());
    // Neighbours must be user-accessible for a user fault, and not-present ones never go.
    e.pte(0x21000, 0x61000 | P | RW | A);
    e.pte(0x22000, 0x62000 | P | RW | US | A);
    assert_eq!(e.fault(0x22000, Access::Read, true), Resolution::Mapped);
    assert_eq!(e.rec.take(), [m(0x22000, 0x62000, 1, false)]);
}

#[test]
fn write_fault_run_needs_dirty_neighbours() {
    let mut e = Env::new();
    e.pte(0x30000, 0x70000 | P | RW | US | A);
    e.pte(0x31000, 0x71000 | P | RW | US | A | D);
    e.pte(0x32000, 0x72000 | P | RW | US | A | D);
    e.pte(0x33000, 0x73000 | P | RW | US | A);
    assert_eq!(e.fault(0x31000, Access::Write, true), Resolution::Mapped);
    assert_eq!(e.rec.take(), [m(0x31000, 0x71000, 2, true)]);
}

#[test]
fn large_page_maps_a_run_and_invlpg_drops_all_pieces() {
    let mut e = Env::new();
    // 4 MiB page at linear 0x0040_0000 -> physical 0 (only the first 1 MiB is RAM).
    e.put(CR3 + 4, PS | P | RW | US | G);
    assert_eq!(
        e.fault(0x0040_5000, Access::Read, false),
        Resolution::Mapped
    );
    assert_eq!(e.rec.take(), [m(0x0040_0000, 0, 16, false)]);
    assert_eq!(e.get(CR3 + 4), PS | P | RW | US | G | A);
    let pg = e.mmu.mapping(0x0040_f000).unwrap();
    assert!(pg.large && pg.global && pg.frame == 0xf000);
    // The next window.
    assert_eq!(
        e.fault(0x0041_8000, Access::Read, false),
        Resolution::Mapped
    );
    assert_eq!(e.rec.take(), [m(0x0041_0000, 0x10000, 16, false)]);
    // Write: D in the PDE, and the faulting page remapped writable; its neighbours are
    // already mapped (read-only) and are not remapped.
    assert_eq!(
        e.fault(0x0040_3000, Access::Write, false),
        Resolution::Mapped
    );
    assert_eq!(e.rec.take(), [m(0x0040_3000, 0x3000, 1, true)]);
    assert_eq!(e.get(CR3 + 4) & D, D);
    // Never beyond RAM: the last RAM frame is 0xff000 (linear 0x004f_f000).
    assert_eq!(
        e.fault(0x004f_8000, Access::Read, false),
        Resolution::Mapped
    );
    assert_eq!(e.rec.take(), [m(0x004f_0000, 0xf0000, 16, true)]);
    assert_eq!(
        e.fault(0x0050_0000, Access::Read, false),
        Resolution::NotRam { phys: 0x0010_0000 }
    );
    assert_eq!(e.mmu.mapped_pages(), 48);
    // INVLPG anywhere in the large page drops every piece (in ascending runs).
    e.mmu.invlpg(0x0042_0000, &mut e.rec).unwrap();
    assert_eq!(e.rec.take(), [u(0x0040_0000, 32), u(0x004f_0000, 16)]);
    assert_eq!(e.mmu.mapped_pages(), 0);
}

#[test]
fn invlpg_of_a_small_page_drops_only_it() {
    let mut e = Env::new();
    for i in 0..4u32 {
        e.pte(
            0x8000 + (i << 12),
            (0x20000 + (i << 12)) | P | RW | US | A | D | G,
        );
    }
    assert_eq!(e.fault(0x8000, Access::Read, true), Resolution::Mapped);
    assert_eq!(e.rec.take(), [m(0x8000, 0x20000, 4, true)]);
    e.mmu.invlpg(0x9fff, &mut e.rec).unwrap();
    assert_eq!(e.rec.take(), [u(0x9000, 1)]);
    e.mmu.invlpg(0x9000, &mut e.rec).unwrap(); // not mapped: nothing
    assert!(e.rec.take().is_empty());
    assert_eq!(e.mmu.mapped_pages(), 3);
}

#[test]
fn cr3_write_keeps_global_pages_with_pge() {
    let mut e = Env::new();
    e.pte(0x5000, 0x7000 | P | RW | US | A | D);
    e.pte(0x6000, 0x9000 | P | RW | US | A | D | G);
    e.pte(0xc000_0000, 0x8000 | P | RW | A | D | G);
    e.pte(0xc000_1000, 0xa000 | P | RW | A | D);
    for lin in [0x5000, 0x6000, 0xc000_0000, 0xc000_1000] {
        assert_eq!(e.fault(lin, Access::Read, false), Resolution::Mapped);
    }
    e.rec.take();
    // Another address space that maps nothing: only the global pages stay.
    e.mode.cr3 = CR3B;
    e.cr3();
    assert_eq!(e.rec.take(), [u(0x5000, 1), u(0xc000_1000, 1)]);
    assert_eq!(e.mmu.mapped_pages(), 2);
    // Without PGE the G bit means nothing.
    e.mode.pge = false;
    e.cr3();
    assert_eq!(e.rec.take(), [u(0x6000, 1), u(0xc000_0000, 1)]);
    // Pages mapped while PGE was off are not global even if G is set.
    e.mode.cr3 = CR3;
    assert_eq!(e.fault(0x6000, Access::Read, false), Resolution::Mapped);
    assert!(!e.mmu.mapping(0x6000).unwrap().global);
    assert_eq!(e.mmu.stats().cr3_writes, 2);
}

#[test]
fn flush_all_unmaps_everything_in_runs() {
    let mut e = Env::new();
    e.pte(0x5000, 0x7000 | P | RW | US | A | D | G);
    e.pte(0x6000, 0x8000 | P | RW | US | A | D | G);
    e.pte(0x7000, 0x1_0000 | P | RW | US | A | D | G);
    for lin in [0x5000, 0x7000] {
        assert_eq!(e.fault(lin, Access::Read, false), Resolution::Mapped);
    }
    assert_eq!(
        e.rec.take(),
        [m(0x5000, 0x7000, 2, true), m(0x7000, 0x1_0000, 1, true)]
    );
    e.flush();
    assert_eq!(e.rec.take(), [u(0x5000, 3)]);
    assert_eq!(e.mmu.mapped_pages(), 0);
    assert_eq!(e.mmu.stats().flushes, 1);
}

#[test]
fn eviction_flushes_when_the_budget_would_be_exceeded() {
    let mut e = Env::new();
    e.mmu = ShadowMmu::new(RAM, 3, HOLE);
    for i in 0..8u32 {
        e.pte(
            0x10000 + (i << 16),
            (0x20000 + (i << 12)) | P | RW | US | A | D,
        );
    }
    for i in 0..3u32 {
        assert_eq!(
            e.fault(0x10000 + (i << 16), Access::Read, true),
            Resolution::Mapped
        );
    }
    assert_eq!(e.mmu.mapped_pages(), 3);
    e.rec.take();
    assert_eq!(e.fault(0x40000, Access::Read, true), Resolution::Mapped);
    assert_eq!(
        e.rec.take(),
        [
            u(0x10000, 1),
            u(0x20000, 1),
            u(0x30000, 1),
            m(0x40000, 0x23000, 1, true)
        ]
    );
    assert_eq!(e.mmu.stats().evictions, 1);
    assert_eq!(e.mmu.mapped_pages(), 1);
    // Runs are capped by the budget too.
    e.put(CR3 + 4, PS | P | RW | US | A | D);
    assert_eq!(
        e.fault(0x0040_0000, Access::Read, false),
        Resolution::Mapped
    );
    assert_eq!(e.rec.take(), [u(0x40000, 1), m(0x0040_0000, 0, 3, true)]);
    assert_eq!(e.mmu.stats().evictions, 2);
}

#[test]
fn paging_off_is_identity_within_ram() {
    let mut e = Env::new();
    e.mode = PagingMode::default();
    let before = e.mem.clone();
    assert_eq!(
        e.fault(0x000f_8123, Access::Write, true),
        Resolution::Mapped
    );
    assert_eq!(e.rec.take(), [m(0x000f_0000, 0x000f_0000, 16, true)]);
    assert_eq!(
        e.fault(0x0010_0000, Access::Read, false),
        Resolution::NotRam { phys: 0x0010_0000 }
    );
    assert_eq!(
        e.fault(0xfee0_0000, Access::Read, false),
        Resolution::NotRam { phys: 0xfee0_0000 }
    );
    assert_eq!(
        e.fault(0xffc0_0000, Access::Read, false),
        Resolution::MonitorArea
    );
    assert_eq!(e.mem, before, "no guest memory written with paging off");
    assert_eq!(e.mmu.stats().not_ram, 2);
}

#[test]
fn mmio_translations_and_tables_outside_ram() {
    let mut e = Env::new();
    e.pte(0x5000, 0xfee0_0000 | P | RW); // local APIC page
    let before = e.mem.clone();
    assert_eq!(
        e.fault(0x5020, Access::Write, false),
        Resolution::NotRam { phys: 0xfee0_0020 }
    );
    // Permissions come first.
    assert_eq!(
        e.fault(0x5020, Access::Write, true),
        Resolution::GuestFault {
            cr2: 0x5020,
            error_code: 7
        }
    );
    // A page table outside RAM.
    e.put(CR3 + 8, 0x0800_0000 | P | RW | US);
    assert_eq!(
        e.fault(0x0080_3000, Access::Read, true),
        Resolution::NotRam { phys: 0x0800_000c }
    );
    e.put(CR3 + 8, 0);
    assert_eq!(e.mem, before, "no A/D for NotRam");
    assert!(e.rec.take().is_empty());
}

#[test]
fn monitor_area_is_never_mapped_and_runs_stop_below_it() {
    let mut e = Env::new();
    // A 4 MiB page right below the hole and one over it, both to RAM.
    e.put(CR3 + 0x3fe * 4, PS | P | RW | A | D);
    e.put(CR3 + 0x3ff * 4, PS | P | RW | A | D);
    let before = e.mem.clone();
    assert_eq!(
        e.fault(0xffc0_0000, Access::Read, false),
        Resolution::MonitorArea
    );
    assert_eq!(
        e.fault(0xffff_ffff, Access::Write, true),
        Resolution::MonitorArea
    );
    assert_eq!(e.mem, before);
    assert!(e.rec.take().is_empty());
    assert_eq!(e.mmu.stats().monitor_area, 2);
    // With a hole that is not 64 KiB aligned, a run stops at its base.
    e.mmu = ShadowMmu::new(RAM, 1 << 16, 0xff88_8000);
    assert_eq!(
        e.fault(0xff88_3000, Access::Read, false),
        Resolution::Mapped
    );
    assert_eq!(e.rec.take(), [m(0xff88_0000, 0x8_0000, 8, true)]);
    assert_eq!(
        e.fault(0xff88_8000, Access::Read, false),
        Resolution::MonitorArea
    );
    assert_eq!(e.mmu.user_limit(), 0xff88_8000);
}

#[test]
fn map_errors_pass_through_and_leave_state_alone() {
    let mut e = Env::new();
    e.pte(0x5000, 0x7000 | P | RW | US | A | D);
    e.rec.fail = true;
    assert_eq!(
        e.mmu
            .handle_fault(&e.mode, 0x5000, Access::Read, true, &mut e.mem, &mut e.rec),
        Err("map failed")
    );
    assert_eq!(e.mmu.mapped_pages(), 0);
    e.rec.fail = false;
    assert_eq!(e.fault(0x5000, Access::Read, true), Resolution::Mapped);
    e.rec.fail = true;
    assert_eq!(e.mmu.invlpg(0x5000, &mut e.rec), Err("unmap failed"));
    assert_eq!(e.mmu.mapped_pages(), 1);
}

#[test]
fn strict_ring_compression_unmaps_kernel_pages_above_the_limit() {
    let mut e = Env::new();
    e.cr3();
    e.mmu.set_strict_ring_compression(true);
    e.pte(0x5000, 0x7000 | P | RW | US | A | D);
    e.pte(0xc000_0000, 0x9000 | P | RW | A | D);
    assert_eq!(e.fault(0x5000, Access::Read, false), Resolution::Mapped);
    assert_eq!(
        e.fault(0xc000_0000, Access::Read, false),
        Resolution::Mapped
    );
    e.rec.take();
    e.mmu.set_user(true, &mut e.rec).unwrap();
    assert_eq!(e.rec.take(), [u(0xc000_0000, 1)]);
    // A user access there (through a flat host selector) is now a guest #PF, as on hardware.
    assert_eq!(
        e.fault(0xc000_0000, Access::Read, true),
        Resolution::GuestFault {
            cr2: 0xc000_0000,
            error_code: pf::P | pf::U
        }
    );
    assert!(e.mmu.mapping(0x5000).is_some());
}

#[test]
fn cr3_write_keeps_pages_the_new_address_space_maps_the_same_way() {
    let mut e = Env::new();
    let pages = [0x5000, 0x6000, 0x8000, 0xa000, 0xc000, 0xd000];
    e.pte(0x5000, 0x7000 | P | RW | US | A | D);
    e.pte(0x6000, 0x9000 | P | US | A);
    e.pte(0x8000, 0xb000 | P | US | A);
    e.pte(0xa000, 0xd000 | P | RW | US | A | D);
    e.pte(0xc000, 0xe000 | P | US | A);
    e.pte(0xd000, 0xf000 | P | US | A);
    for lin in pages {
        assert_eq!(e.fault(lin, Access::Read, true), Resolution::Mapped);
    }
    assert!(e.mmu.mapping(0x5000).unwrap().writable && e.mmu.mapping(0xa000).unwrap().writable);
    e.rec.take();
    // The second address space: the same code frame (0x6000), the same dirty data frame
    // (0x5000); another frame (0x8000); writable but not dirty (0xa000: the mapping is
    // writable); not accessed (0xc000); supervisor-only (0xd000).
    e.put(CR3B, PT0B | P | RW | US | A);
    let pte_b = |lin: u32| PT0B + ((lin >> 12) & 0x3ff) * 4;
    e.put(pte_b(0x5000), 0x7000 | P | RW | US | A | D);
    e.put(pte_b(0x6000), 0x9000 | P | US | A);
    e.put(pte_b(0x8000), 0xc000 | P | US | A);
    e.put(pte_b(0xa000), 0xd000 | P | RW | US | A);
    e.put(pte_b(0xc000), 0xe000 | P | US);
    e.put(pte_b(0xd000), 0xf000 | P | A);
    let before = e.mem.clone();
    e.mode.cr3 = CR3B;
    e.cr3();
    assert!(e.mem == before, "a CR3 write changes no guest memory");
    assert_eq!(e.rec.take(), [u(0x8000, 1), u(0xa000, 1), u(0xc000, 2)]);
    assert_eq!(e.mmu.mapping(0x5000).map(|p| (p.frame, p.writable)), Some((0x7000, true)));
    assert_eq!(e.mmu.mapping(0x6000).map(|p| (p.frame, p.writable)), Some((0x9000, false)));
    assert_eq!(e.mmu.stats().cr3_kept, 2);
    // PDE.A clear: the CPU's walk would set it, so nothing stays.
    e.put(CR3B, PT0B | P | RW | US);
    e.cr3();
    assert_eq!(e.rec.take(), [u(0x5000, 2)]);
    assert_eq!(e.mmu.mapped_pages(), 0);
    assert_eq!(e.mmu.stats().cr3_kept, 2);
}

#[test]
fn prefault_maps_only_what_a_fault_would_map_without_writing_memory() {
    let mut e = Env::new();
    e.put(CR3, PT0 | P | RW | US | A);
    e.pte(0x5000, 0x7000 | P | RW | US | A | D); // accessed and dirty: writable
    e.pte(0x6000, 0x9000 | P | RW | US | A); // accessed, clean: read-only
    e.pte(0x8000, 0xb000 | P | RW | US); // not accessed: a fault would set A
    e.pte(0x9000, 0xc000 | P | RW | A | D); // supervisor-only
    e.pte(0xb000, 0xd000 | RW | US | A | D); // not present
    let before = e.mem.clone();
    let pre = |e: &mut Env, lin: u32, user: bool| {
        e.mmu
            .prefault(&e.mode, lin, user, &mut e.mem, &mut e.rec)
            .unwrap()
    };
    assert!(pre(&mut e, 0x5010, true));
    assert!(pre(&mut e, 0x6ffc, true));
    assert!(!pre(&mut e, 0x8000, true));
    assert!(!pre(&mut e, 0x9000, true));
    assert!(!pre(&mut e, 0xb000, true));
    assert!(!pre(&mut e, HOLE, false));
    assert!(!pre(&mut e, 0x5000, true), "already mapped");
    assert!(e.mem == before, "a prefault changes no guest memory");
    assert_eq!(e.rec.take(), [m(0x5000, 0x7000, 1, true), m(0x6000, 0x9000, 1, false)]);
    // The supervisor may have the supervisor-only page.
    assert!(pre(&mut e, 0x9000, false));
    assert_eq!(e.rec.take(), [m(0x9000, 0xc000, 1, true)]);
    // PDE.A clear: the walk would set it.
    e.put(CR3 + 0x300 * 4, PTK | P | RW);
    e.pte(0xc000_0000, 0x8000 | P | RW | A | D);
    assert!(!pre(&mut e, 0xc000_0000, false));
    assert_eq!(e.mmu.stats().prefaults, 3);
    assert_eq!(e.mmu.stats().hidden_faults, 0);
}
