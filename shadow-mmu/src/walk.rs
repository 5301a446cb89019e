//! The guest page-table walker: non-PAE 2-level paging, 4 KiB pages and (with CR4.PSE)
//! 4 MiB pages, protection by U/S, R/W and CR0.WP, the page-fault error code as the CPU
//! computes it, and the Accessed/Dirty updates.
//!
//! The walk is split in two so that the caller decides when guest memory changes:
//! [`walk`] has no side effects (it only reads guest-physical memory) and
//! [`set_accessed_dirty`] performs the A/D writes of a successful access, in the order a
//! P6-class processor (and the interpreter, `vmm_interp::mmu`) performs them: PDE.A first
//! (4 KiB pages only), then the leaf's A (and D on a write). A faulting access changes
//! nothing in guest memory.

/// Page-table entry bits (PDE and PTE).
pub mod pte {
    pub const P: u32 = 1 << 0;
    pub const RW: u32 = 1 << 1;
    pub const US: u32 = 1 << 2;
    pub const PWT: u32 = 1 << 3;
    pub const PCD: u32 = 1 << 4;
    pub const A: u32 = 1 << 5;
    pub const D: u32 = 1 << 6;
    /// In a PDE: 4 MiB page (honoured only with CR4.PSE).
    pub const PS: u32 = 1 << 7;
    pub const G: u32 = 1 << 8;
    /// Bits 21:13 of a 4 MiB PDE: reserved when PSE-36 is absent (our virtual CPU).
    pub const LARGE_RSVD: u32 = 0x003f_e000;
}

/// Page-fault error code bits. Non-PAE paging has no execute-disable, so the I/D bit is
/// never set.
pub mod pf {
    /// The fault was a protection violation (0: the page was not present).
    pub const P: u32 = 1 << 0;
    /// The access was a write.
    pub const W: u32 = 1 << 1;
    /// The access was made at CPL 3.
    pub const U: u32 = 1 << 2;
    /// A reserved bit was set in a paging-structure entry.
    pub const RSVD: u32 = 1 << 3;
}

/// What the guest's paging control registers say: CR0.PG, CR4.PSE, CR4.PGE, CR0.WP and CR3.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PagingMode {
    pub paging: bool,
    pub pse: bool,
    pub pge: bool,
    pub wp: bool,
    pub cr3: u32,
}

/// The kind of a guest access. `Fetch` is checked like `Read` (no NX without PAE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    Fetch,
}

impl Access {
    #[inline]
    pub fn is_write(self) -> bool {
        matches!(self, Access::Write)
    }
}

/// Guest-physical memory as the walker needs it (the monitor implements it over guest RAM).
pub trait GuestPhys {
    /// The little-endian dword at `paddr`; `None` if it is not (wholly) in RAM.
    fn read_u32(&mut self, paddr: u32) -> Option<u32>;
    /// Store a dword (the A/D updates); `false` if `paddr` is not in RAM.
    fn write_u32(&mut self, paddr: u32, value: u32) -> bool;
}

/// Guest RAM as a byte vector starting at guest-physical 0 (tests, tools).
impl GuestPhys for Vec<u8> {
    fn read_u32(&mut self, paddr: u32) -> Option<u32> {
        let i = paddr as usize;
        let b = self.get(i..i.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn write_u32(&mut self, paddr: u32, value: u32) -> bool {
        let i = paddr as usize;
        match i.checked_add(4).and_then(|e| self.get_mut(i..e)) {
            Some(b) => {
                b.copy_from_slice(&value.to_le_bytes());
                true
            }
            None => false,
        }
    }
}

/// A successful translation of one linear address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// Guest-physical address of the 4 KiB frame that holds the linear page.
    pub frame: u32,
    /// The translation came from a 4 MiB page (a PDE with PS and CR4.PSE).
    pub large: bool,
    /// User-accessible: U/S set in the PDE and (4 KiB pages) in the PTE.
    pub user: bool,
    /// Writable by user code and, with CR0.WP, by supervisor code: R/W in the PDE and PTE.
    pub writable: bool,
    /// The leaf's Dirty bit *before* this access's update.
    pub dirty: bool,
    /// The leaf's Accessed bit before this access's update.
    pub accessed: bool,
    /// The leaf's G bit (the caller combines it with CR4.PGE).
    pub global: bool,
    /// Where the PDE is and what it held (for the A/D updates).
    pub pde_addr: u32,
    pub pde: u32,
    /// Where the leaf (PTE, or the PDE of a 4 MiB page) is and what it held.
    pub leaf_addr: u32,
    pub leaf: u32,
}

impl Translation {
    /// The identity translation used while paging is off: everything is allowed.
    fn identity(lin: u32) -> Translation {
        Translation {
            frame: lin & !0xfff,
            large: false,
            user: true,
            writable: true,
            dirty: true,
            accessed: true,
            global: false,
            pde_addr: 0,
            pde: 0,
            leaf_addr: 0,
            leaf: 0,
        }
    }

    /// Whether the host mapping of this page may be writable for code running with the
    /// given privilege once the access that caused the walk has completed: only if the guest
    /// entry is dirty (so that the first write always reaches the walker and sets D) and a
    /// write by that privilege is allowed (user: R/W; supervisor: R/W or !CR0.WP).
    pub fn host_writable(&self, user: bool, wp: bool, dirty_now: bool) -> bool {
        dirty_now
            && if user {
                self.user && self.writable
            } else {
                self.writable || !wp
            }
    }
}

/// The outcome of a walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Walk {
    Ok(Translation),
    /// A guest #PF with this error code (CR2 is the linear address).
    Fault {
        error_code: u32,
    },
    /// A paging-structure entry lies outside RAM (CR3 or a PDE pointing at MMIO): the
    /// monitor emulates the access with the interpreter, which reads it from the bus.
    TableNotRam {
        paddr: u32,
    },
}

/// Walk the guest page tables for an access to `lin` by code at CPL 3 (`user`) or CPL 0-2.
/// No side effects on guest memory. With paging off the translation is the identity.
pub fn walk(
    mode: &PagingMode,
    lin: u32,
    access: Access,
    user: bool,
    mem: &mut impl GuestPhys,
) -> Walk {
    if !mode.paging {
        return Walk::Ok(Translation::identity(lin));
    }
    let mut code = 0;
    if access.is_write() {
        code |= pf::W;
    }
    if user {
        code |= pf::U;
    }
    let pde_addr = (mode.cr3 & !0xfff) | ((lin >> 22) << 2);
    let Some(pde) = mem.read_u32(pde_addr) else {
        return Walk::TableNotRam { paddr: pde_addr };
    };
    if pde & pte::P == 0 {
        return Walk::Fault { error_code: code };
    }
    let t = if pde & pte::PS != 0 && mode.pse {
        if pde & pte::LARGE_RSVD != 0 {
            return Walk::Fault {
                error_code: code | pf::P | pf::RSVD,
            };
        }
        Translation {
            frame: (pde & 0xffc0_0000) | (lin & 0x003f_f000),
            large: true,
            user: pde & pte::US != 0,
            writable: pde & pte::RW != 0,
            dirty: pde & pte::D != 0,
            accessed: pde & pte::A != 0,
            global: pde & pte::G != 0,
            pde_addr,
            pde,
            leaf_addr: pde_addr,
            leaf: pde,
        }
    } else {
        let pte_addr = (pde & !0xfff) | ((lin >> 10) & 0xffc);
        let Some(e) = mem.read_u32(pte_addr) else {
            return Walk::TableNotRam { paddr: pte_addr };
        };
        if e & pte::P == 0 {
            return Walk::Fault { error_code: code };
        }
        Translation {
            frame: e & !0xfff,
            large: false,
            user: pde & e & pte::US != 0,
            writable: pde & e & pte::RW != 0,
            dirty: e & pte::D != 0,
            accessed: e & pte::A != 0,
            global: e & pte::G != 0,
            pde_addr,
            pde,
            leaf_addr: pte_addr,
            leaf: e,
        }
    };
    let allowed = if user {
        t.user && (!access.is_write() || t.writable)
    } else {
        !access.is_write() || t.writable || !mode.wp
    };
    if !allowed {
        return Walk::Fault {
            error_code: code | pf::P,
        };
    }
    Walk::Ok(t)
}

/// The A/D updates of a successful access through `t`: PDE.A (4 KiB pages), then the leaf's
/// A, and D on a write. Returns whether the leaf is dirty afterwards. Does nothing for the
/// identity translation of paging-off mode.
pub fn set_accessed_dirty(t: &Translation, access: Access, mem: &mut impl GuestPhys) -> bool {
    if t.pde == 0 {
        // Paging off (a PDE that translated has P set, so it is never 0).
        return t.dirty;
    }
    if !t.large && t.pde & pte::A == 0 {
        mem.write_u32(t.pde_addr, t.pde | pte::A);
    }
    let mut leaf = t.leaf | pte::A;
    if access.is_write() {
        leaf |= pte::D;
    }
    if leaf != t.leaf {
        mem.write_u32(t.leaf_addr, leaf);
    }
    leaf & pte::D != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const CR3: u32 = 0x1000;

    fn mem() -> Vec<u8> {
        vec![0; 0x10_000]
    }

    fn put(m: &mut Vec<u8>, a: u32, v: u32) {
        assert!(m.write_u32(a, v));
    }

    fn get(m: &mut Vec<u8>, a: u32) -> u32 {
        m.read_u32(a).unwrap()
    }

    fn mode(wp: bool) -> PagingMode {
        PagingMode {
            paging: true,
            pse: true,
            pge: false,
            wp,
            cr3: CR3,
        }
    }

    /// PDE 0 -> page table at 0x2000; PTE 5 -> frame 0x7000 with `flags`.
    fn small(m: &mut Vec<u8>, pde_flags: u32, pte_flags: u32) {
        put(m, CR3, 0x2000 | pde_flags);
        put(m, 0x2000 + 5 * 4, 0x7000 | pte_flags);
    }

    #[test]
    fn vec_phys_bounds() {
        let mut m = vec![0u8; 8];
        assert_eq!(m.read_u32(4), Some(0));
        assert_eq!(m.read_u32(5), None);
        assert!(!m.write_u32(6, 1));
        assert_eq!(m.read_u32(u32::MAX), None);
    }

    #[test]
    fn paging_off_is_identity() {
        let mut m = mem();
        let w = walk(
            &PagingMode::default(),
            0x1234_5678,
            Access::Write,
            true,
            &mut m,
        );
        let Walk::Ok(t) = w else { panic!("{w:?}") };
        assert_eq!(t.frame, 0x1234_5000);
        assert!(t.user && t.writable && t.dirty);
        assert!(set_accessed_dirty(&t, Access::Write, &mut m));
        assert!(m.iter().all(|&b| b == 0));
    }

    #[test]
    fn not_present_pde_and_pte_error_codes() {
        let mut m = mem();
        let md = mode(true);
        assert_eq!(
            walk(&md, 0x5000, Access::Read, false, &mut m),
            Walk::Fault { error_code: 0 }
        );
        assert_eq!(
            walk(&md, 0x5000, Access::Write, false, &mut m),
            Walk::Fault { error_code: pf::W }
        );
        assert_eq!(
            walk(&md, 0x5000, Access::Write, true, &mut m),
            Walk::Fault {
                error_code: pf::W | pf::U
            }
        );
        assert_eq!(
            walk(&md, 0x5000, Access::Fetch, true, &mut m),
            Walk::Fault { error_code: pf::U }
        );
        small(&mut m, pte::P | pte::RW | pte::US, 0); // PTE not present
        assert_eq!(
            walk(&md, 0x5abc, Access::Read, true, &mut m),
            Walk::Fault { error_code: pf::U }
        );
    }

    #[test]
    fn user_supervisor_protection() {
        let mut m = mem();
        let md = mode(true);
        // Supervisor-only PTE under a user PDE, and user PTE under a supervisor PDE.
        small(&mut m, pte::P | pte::RW | pte::US, pte::P | pte::RW);
        assert_eq!(
            walk(&md, 0x5000, Access::Read, true, &mut m),
            Walk::Fault {
                error_code: pf::P | pf::U
            }
        );
        assert!(matches!(walk(&md, 0x5000, Access::Read, false, &mut m), Walk::Ok(t) if !t.user));
        small(&mut m, pte::P | pte::RW, pte::P | pte::RW | pte::US);
        assert_eq!(
            walk(&md, 0x5000, Access::Write, true, &mut m),
            Walk::Fault {
                error_code: pf::P | pf::W | pf::U
            }
        );
    }

    #[test]
    fn read_only_and_cr0_wp() {
        let mut m = mem();
        small(&mut m, pte::P | pte::RW | pte::US, pte::P | pte::US); // read-only PTE
        assert_eq!(
            walk(&mode(true), 0x5000, Access::Write, true, &mut m),
            Walk::Fault {
                error_code: pf::P | pf::W | pf::U
            }
        );
        // User writes fault whatever WP says.
        assert_eq!(
            walk(&mode(false), 0x5000, Access::Write, true, &mut m),
            Walk::Fault {
                error_code: pf::P | pf::W | pf::U
            }
        );
        assert_eq!(
            walk(&mode(true), 0x5000, Access::Write, false, &mut m),
            Walk::Fault {
                error_code: pf::P | pf::W
            }
        );
        let Walk::Ok(t) = walk(&mode(false), 0x5000, Access::Write, false, &mut m) else {
            panic!()
        };
        assert!(!t.writable);
        // Read-only PDE over a writable PTE is read-only too.
        small(&mut m, pte::P | pte::US, pte::P | pte::RW | pte::US);
        assert_eq!(
            walk(&mode(true), 0x5000, Access::Write, false, &mut m),
            Walk::Fault {
                error_code: pf::P | pf::W
            }
        );
    }

    #[test]
    fn large_pages_and_reserved_bits() {
        let mut m = mem();
        put(
            &mut m,
            CR3 + 4,
            0x0080_0000 | pte::PS | pte::P | pte::RW | pte::US | pte::G,
        );
        let Walk::Ok(t) = walk(&mode(true), 0x0045_6789, Access::Read, true, &mut m) else {
            panic!()
        };
        assert_eq!(t.frame, 0x0085_6000);
        assert!(t.large && t.user && t.writable && t.global && !t.dirty);
        // Without CR4.PSE the PDE points at a page table (at 0x0080_0000: outside RAM here).
        let md = PagingMode {
            pse: false,
            ..mode(true)
        };
        assert_eq!(
            walk(&md, 0x0045_6789, Access::Read, true, &mut m),
            Walk::TableNotRam {
                paddr: 0x0080_0000 | 0x56 << 2
            }
        );
        // Bits 21:13 set: RSVD|P, plus W/U as usual.
        put(
            &mut m,
            CR3 + 4,
            0x0080_2000 | pte::PS | pte::P | pte::RW | pte::US,
        );
        assert_eq!(
            walk(&mode(true), 0x0045_6789, Access::Write, true, &mut m),
            Walk::Fault {
                error_code: pf::P | pf::W | pf::U | pf::RSVD
            }
        );
        // Not present beats reserved bits.
        put(&mut m, CR3 + 4, 0x0080_2000 | pte::PS | pte::RW | pte::US);
        assert_eq!(
            walk(&mode(true), 0x0045_6789, Access::Read, false, &mut m),
            Walk::Fault { error_code: 0 }
        );
    }

    #[test]
    fn accessed_dirty_updates() {
        let mut m = mem();
        small(
            &mut m,
            pte::P | pte::RW | pte::US,
            pte::P | pte::RW | pte::US,
        );
        let Walk::Ok(t) = walk(&mode(true), 0x5000, Access::Read, true, &mut m) else {
            panic!()
        };
        assert!(!set_accessed_dirty(&t, Access::Read, &mut m));
        assert_eq!(
            get(&mut m, CR3),
            0x2000 | pte::P | pte::RW | pte::US | pte::A
        );
        assert_eq!(
            get(&mut m, 0x2014),
            0x7000 | pte::P | pte::RW | pte::US | pte::A
        );
        let Walk::Ok(t) = walk(&mode(true), 0x5000, Access::Write, true, &mut m) else {
            panic!()
        };
        assert!(set_accessed_dirty(&t, Access::Write, &mut m));
        assert_eq!(
            get(&mut m, 0x2014),
            0x7000 | pte::P | pte::RW | pte::US | pte::A | pte::D
        );
        // PDE never gets D; a 4 MiB PDE gets A and D.
        assert_eq!(get(&mut m, CR3) & pte::D, 0);
        put(&mut m, CR3 + 4, 0x0080_0000 | pte::PS | pte::P | pte::RW);
        let Walk::Ok(t) = walk(&mode(true), 0x0040_0000, Access::Write, false, &mut m) else {
            panic!()
        };
        assert!(set_accessed_dirty(&t, Access::Write, &mut m));
        assert_eq!(
            get(&mut m, CR3 + 4),
            0x0080_0000 | pte::PS | pte::P | pte::RW | pte::A | pte::D
        );
    }

    #[test]
    fn faults_change_nothing() {
        let mut m = mem();
        small(&mut m, pte::P | pte::US, pte::P | pte::US);
        let before = m.clone();
        assert!(matches!(
            walk(&mode(true), 0x5000, Access::Write, true, &mut m),
            Walk::Fault { .. }
        ));
        assert_eq!(m, before);
    }

    #[test]
    fn host_writable_rule() {
        let mut m = mem();
        small(&mut m, pte::P | pte::RW | pte::US, pte::P | pte::US);
        let Walk::Ok(t) = walk(&mode(false), 0x5000, Access::Read, false, &mut m) else {
            panic!()
        };
        assert!(
            !t.host_writable(false, false, false),
            "clean: read-only until dirty"
        );
        assert!(
            t.host_writable(false, false, true),
            "WP=0 supervisor may write a dirty read-only page"
        );
        assert!(!t.host_writable(false, true, true));
        assert!(!t.host_writable(true, false, true));
    }
}
