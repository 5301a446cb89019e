//! Paging: the 2-level walk (4 KiB pages and, with CR4.PSE, 4 MiB pages), the Accessed and
//! Dirty updates, protection by U/S, R/W and CR0.WP, page faults with CR2 and the error
//! code, global pages, and a software TLB that follows x86 invalidation rules (INVLPG, CR3
//! writes keep global entries when CR4.PGE is set, CR0/CR4 paging changes flush all).
//!
//! Physical accesses go to the bus: RAM directly, anything above RAM through MMIO.

use crate::state::{cr, vector};
use crate::{Bus, Cpu, Exception, Fault, Res};

/// Page-table entry bits.
pub mod pte {
    pub const P: u32 = 1 << 0;
    pub const RW: u32 = 1 << 1;
    pub const US: u32 = 1 << 2;
    pub const PWT: u32 = 1 << 3;
    pub const PCD: u32 = 1 << 4;
    pub const A: u32 = 1 << 5;
    pub const D: u32 = 1 << 6;
    /// In a PDE: 4 MiB page (with CR4.PSE).
    pub const PS: u32 = 1 << 7;
    pub const G: u32 = 1 << 8;
}

/// Page-fault error code bits.
pub mod pf {
    pub const P: u32 = 1 << 0;
    pub const W: u32 = 1 << 1;
    pub const U: u32 = 1 << 2;
    pub const RSVD: u32 = 1 << 3;
    pub const I: u32 = 1 << 4;
}

/// The kind of a linear access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    pub write: bool,
    /// A user-mode access (CPL 3 data or code access). Implicit accesses to descriptor
    /// tables and the TSS are supervisor accesses whatever the CPL.
    pub user: bool,
    pub fetch: bool,
}

impl Access {
    pub const fn read(user: bool) -> Access {
        Access { write: false, user, fetch: false }
    }
    pub const fn write(user: bool) -> Access {
        Access { write: true, user, fetch: false }
    }
    pub const fn fetch(user: bool) -> Access {
        Access { write: false, user, fetch: true }
    }
}

const TLB_SIZE: usize = 1024;
const VALID: u32 = 1;
// Permission bits cached in a TLB entry. A write permission is only cached when the
// entry's Dirty bit is already set, so that the first write walks and sets it.
const T_USER_R: u8 = 1;
const T_USER_W: u8 = 2;
const T_SUP_W: u8 = 4;
const T_GLOBAL: u8 = 8;

#[derive(Clone, Copy, Default)]
struct TlbEntry {
    /// Linear page base | VALID.
    tag: u32,
    /// Physical page base.
    phys: u32,
    perm: u8,
}

/// A direct-mapped software TLB of 4 KiB translations.
pub struct Tlb {
    entries: Box<[TlbEntry; TLB_SIZE]>,
}

impl Tlb {
    pub fn new() -> Tlb {
        Tlb { entries: Box::new([TlbEntry::default(); TLB_SIZE]) }
    }

    #[inline]
    fn slot(lin: u32) -> usize {
        ((lin >> 12) as usize) & (TLB_SIZE - 1)
    }

    pub fn flush_all(&mut self) {
        self.entries.iter_mut().for_each(|e| e.tag = 0);
    }

    /// What a CR3 write does: drop everything but global entries.
    pub fn flush_non_global(&mut self) {
        for e in self.entries.iter_mut() {
            if e.perm & T_GLOBAL == 0 {
                e.tag = 0;
            }
        }
    }

    /// INVLPG: drop the translation of one page (global or not). A 4 MiB page is cached as
    /// its 4 KiB pieces, so INVLPG of any address in it must drop all of them.
    pub fn flush_page(&mut self, lin: u32) {
        let s = Tlb::slot(lin);
        if self.entries[s].tag == (lin & !0xfff) | VALID {
            self.entries[s].tag = 0;
        }
    }

    /// Drop every cached piece of the 4 MiB region containing `lin`.
    pub fn flush_large(&mut self, lin: u32) {
        let base = lin & !0x3f_ffff;
        for e in self.entries.iter_mut() {
            if e.tag & VALID != 0 && (e.tag & !0x3f_ffff) == base {
                e.tag = 0;
            }
        }
    }
}

impl Default for Tlb {
    fn default() -> Self {
        Tlb::new()
    }
}

impl<B: Bus> Cpu<B> {
    /// Translate a linear address to a physical one for an access of the given kind, walking
    /// the page tables on a TLB miss. Raises #PF (setting CR2) as the CPU would.
    #[inline(always)]
    pub fn translate(&mut self, lin: u32, acc: Access) -> Res<u32> {
        if self.state.cr0 & cr::CR0_PG == 0 {
            return Ok(lin);
        }
        let e = &self.tlb.entries[Tlb::slot(lin)];
        if e.tag == (lin & !0xfff) | VALID {
            let need = match (acc.user, acc.write) {
                (false, false) => 0,
                (true, false) => T_USER_R,
                (true, true) => T_USER_W,
                (false, true) => T_SUP_W,
            };
            if e.perm & need == need {
                return Ok(e.phys | (lin & 0xfff));
            }
        }
        self.walk(lin, acc)
    }

    fn page_fault(&mut self, lin: u32, code: u32) -> Fault {
        self.state.cr2 = lin;
        Fault::Exc(Exception { vector: vector::PF, error: Some(code) })
    }

    /// The page walk. On success sets Accessed (and Dirty on a write) and fills the TLB.
    #[inline(never)]
    fn walk(&mut self, lin: u32, acc: Access) -> Res<u32> {
        let mut code = 0;
        if acc.write {
            code |= pf::W;
        }
        if acc.user {
            code |= pf::U;
        }
        let wp = self.state.cr0 & cr::CR0_WP != 0;
        let pde_addr = (self.state.cr3 & !0xfff) | ((lin >> 22) << 2);
        let pde = self.phys_read_u32(pde_addr);
        if pde & pte::P == 0 {
            return Err(self.page_fault(lin, code));
        }
        let large = pde & pte::PS != 0 && self.state.cr4 & cr::CR4_PSE != 0;
        let (leaf, leaf_addr, phys, user_ok, write_ok) = if large {
            // Without PSE-36, bits 21:13 of a 4 MiB PDE are reserved.
            if pde & 0x003f_e000 != 0 && !self.model.pse36 {
                return Err(self.page_fault(lin, code | pf::P | pf::RSVD));
            }
            let phys = (pde & 0xffc0_0000) | (lin & 0x003f_f000);
            (pde, pde_addr, phys, pde & pte::US != 0, pde & pte::RW != 0)
        } else {
            let pte_addr = (pde & !0xfff) | ((lin >> 10) & 0xffc);
            let pte = self.phys_read_u32(pte_addr);
            if pte & pte::P == 0 {
                return Err(self.page_fault(lin, code));
            }
            let user_ok = pde & pte::US != 0 && pte & pte::US != 0;
            let write_ok = pde & pte::RW != 0 && pte & pte::RW != 0;
            (pte, pte_addr, pte & !0xfff, user_ok, write_ok)
        };
        let allowed = if acc.user {
            user_ok && (!acc.write || write_ok)
        } else {
            !acc.write || write_ok || !wp
        };
        if !allowed {
            return Err(self.page_fault(lin, code | pf::P));
        }
        // Accessed and Dirty.
        if !large && pde & pte::A == 0 {
            self.phys_write_u32(pde_addr, pde | pte::A);
        }
        let mut new_leaf = leaf | pte::A;
        if acc.write {
            new_leaf |= pte::D;
        }
        if new_leaf != leaf {
            self.phys_write_u32(leaf_addr, new_leaf);
        }
        let dirty = new_leaf & pte::D != 0;
        let mut perm = 0;
        if user_ok {
            perm |= T_USER_R;
            if write_ok && dirty {
                perm |= T_USER_W;
            }
        }
        if dirty && (write_ok || !wp) {
            perm |= T_SUP_W;
        }
        if new_leaf & pte::G != 0 && self.state.cr4 & cr::CR4_PGE != 0 {
            perm |= T_GLOBAL;
        }
        let s = Tlb::slot(lin);
        self.tlb.entries[s] = TlbEntry { tag: (lin & !0xfff) | VALID, phys, perm };
        Ok(phys | (lin & 0xfff))
    }

    /// The walk's result without side effects (no A/D updates, no TLB fill, no CR2): for
    /// debuggers and the monitor. `None` if not present.
    pub fn probe_translation(&mut self, lin: u32) -> Option<u32> {
        if !self.state.paging() {
            return Some(lin);
        }
        let pde = self.phys_read_u32((self.state.cr3 & !0xfff) | ((lin >> 22) << 2));
        if pde & pte::P == 0 {
            return None;
        }
        if pde & pte::PS != 0 && self.state.cr4 & cr::CR4_PSE != 0 {
            return Some((pde & 0xffc0_0000) | (lin & 0x003f_ffff));
        }
        let pte = self.phys_read_u32((pde & !0xfff) | ((lin >> 10) & 0xffc));
        if pte & pte::P == 0 {
            return None;
        }
        Some((pte & !0xfff) | (lin & 0xfff))
    }

    // ---- physical memory ----

    #[inline]
    pub fn phys_read_u8(&mut self, p: u32) -> u8 {
        let ram = self.bus.ram();
        match ram.get(p as usize) {
            Some(&b) => b,
            None => self.mmio_read(p, 1) as u8,
        }
    }

    #[inline]
    pub fn phys_read_u16(&mut self, p: u32) -> u16 {
        let ram = self.bus.ram();
        let i = p as usize;
        if i + 2 <= ram.len() {
            u16::from_le_bytes([ram[i], ram[i + 1]])
        } else {
            self.mmio_read(p, 2) as u16
        }
    }

    #[inline]
    pub fn phys_read_u32(&mut self, p: u32) -> u32 {
        let ram = self.bus.ram();
        let i = p as usize;
        if i + 4 <= ram.len() {
            u32::from_le_bytes(ram[i..i + 4].try_into().unwrap())
        } else {
            self.mmio_read(p, 4)
        }
    }

    #[inline]
    pub fn phys_write_u8(&mut self, p: u32, v: u8) {
        self.blocks.guard.write(p);
        let ram = self.bus.ram();
        match ram.get_mut(p as usize) {
            Some(b) => *b = v,
            None => self.mmio_write(p, 1, v as u32),
        }
    }

    #[inline]
    pub fn phys_write_u16(&mut self, p: u32, v: u16) {
        self.blocks.guard.write(p);
        let ram = self.bus.ram();
        let i = p as usize;
        if i + 2 <= ram.len() {
            ram[i..i + 2].copy_from_slice(&v.to_le_bytes());
        } else {
            self.mmio_write(p, 2, v as u32)
        }
    }

    #[inline]
    pub fn phys_write_u32(&mut self, p: u32, v: u32) {
        self.blocks.guard.write(p);
        let ram = self.bus.ram();
        let i = p as usize;
        if i + 4 <= ram.len() {
            ram[i..i + 4].copy_from_slice(&v.to_le_bytes());
        } else {
            self.mmio_write(p, 4, v)
        }
    }

    /// MMIO goes to the bus; a device may write RAM on any access, so a running block ends
    /// after this instruction (see `block.rs`).
    #[cold]
    fn mmio_read(&mut self, p: u32, size: u8) -> u32 {
        self.blocks.guard.hit = true;
        self.bus.mmio_read(p, size)
    }

    #[cold]
    fn mmio_write(&mut self, p: u32, size: u8, v: u32) {
        self.blocks.guard.hit = true;
        self.bus.mmio_write(p, size, v)
    }
}
