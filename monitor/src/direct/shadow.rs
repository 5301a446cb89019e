//! The one place the direct engine calls the shadow MMU (crate `vmm-shadow-mmu`): page
//! faults, invalidation, ring compression, and the descriptor shadowing rules. Everything
//! else in the engine goes through [`Shadow`] and the functions re-exported here.
//!
//! The monitor's side of the interface: [`LowMap`] is the `MapOps` (mmap of memfd pages into
//! the low 4 GiB, `PROT_NONE` back over them), guest RAM through the physmap is the
//! `GuestPhys`, the paging mode comes from the vCPU.

use vmm_interp::state::cr;
use vmm_interp::{Cpu, CpuState};
use vmm_shadow_mmu as smmu;

use crate::machine::Machine;
use crate::space::LowMap;

pub use smmu::{cached_slot_selector, host_selector_for_guest, shadow_descriptor, HostDesc, Resolution, ShadowStats};

/// Pages mapped at most at once. The host allows 65530 mappings (VMAs) per process
/// (`vm.max_map_count`), and a page mapped alone inside the PROT_NONE reservation splits it:
/// one isolated page costs two VMAs (measured: 1,000 isolated pages add 1,999 VMAs; unmapping
/// merges them back). 32,000 pages keep the worst case, every page isolated, at ~64,000 VMAs
/// plus the process's own few hundred. Beyond it the shadow MMU evicts (a full flush).
pub const MAX_MAPPED_PAGES: usize = 32_000;

/// How a fault was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Read,
    Write,
    Fetch,
}

/// Linear page 0 cannot be mapped on this host (vm.mmap_min_addr): runs that include it are
/// clipped (the engine emulates every access to page 0 with the interpreter instead).
fn clip(lin: u32, frame: u32, pages: u32) -> Option<(u32, u32, u32)> {
    let low = crate::space::LOW_START as u32;
    if lin >= low {
        return Some((lin, frame, pages));
    }
    let skip = (low - lin) >> 12;
    (pages > skip).then(|| (low, frame + (skip << 12), pages - skip))
}

impl smmu::MapOps for LowMap {
    type Error = std::io::Error;
    fn map(&mut self, lin: u32, frame: u32, pages: u32, writable: bool) -> std::io::Result<()> {
        match clip(lin, frame, pages) {
            Some((l, f, n)) => self.map_pages(l, f, n, writable),
            None => Ok(()),
        }
    }
    fn unmap(&mut self, lin: u32, pages: u32) -> std::io::Result<()> {
        match clip(lin, 0, pages) {
            Some((l, _, n)) => self.unmap_pages(l, n),
            None => Ok(()),
        }
    }
}

/// Guest RAM (the physmap) as the walker's guest-physical memory.
struct Phys<'a>(&'a mut [u8]);

impl smmu::GuestPhys for Phys<'_> {
    fn read_u32(&mut self, paddr: u32) -> Option<u32> {
        let i = paddr as usize;
        let b = self.0.get(i..i.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn write_u32(&mut self, paddr: u32, value: u32) -> bool {
        let i = paddr as usize;
        match i.checked_add(4).and_then(|e| self.0.get_mut(i..e)) {
            Some(b) => {
                b.copy_from_slice(&value.to_le_bytes());
                true
            }
            None => false,
        }
    }
}

/// The vCPU's paging mode as the shadow MMU reads it.
pub fn paging_mode(s: &CpuState) -> smmu::PagingMode {
    smmu::PagingMode {
        paging: s.cr0 & cr::CR0_PG != 0,
        pse: s.cr4 & cr::CR4_PSE != 0,
        pge: s.cr4 & cr::CR4_PGE != 0,
        wp: s.cr0 & cr::CR0_WP != 0,
        cr3: s.cr3,
    }
}

/// Whether the guest maps linear `lin` with a global page (CR4.PGE set and G in the leaf, the
/// PTE or the PDE of a 4 MiB page): its TLB entry survives a CR3 write (SDM vol. 3 4.10.4.1).
pub fn global_page(cpu: &mut Cpu<Machine>, lin: u32) -> bool {
    let mode = paging_mode(&cpu.state);
    let mut mem = Phys(cpu.bus.ram.as_mut_slice());
    mode.pge && matches!(smmu::walk(&mode, lin, smmu::Access::Read, false, &mut mem), smmu::Walk::Ok(t) if t.global)
}

/// The shadow page tables of one guest.
pub struct Shadow {
    inner: smmu::ShadowMmu,
    pub map: LowMap,
}

impl Shadow {
    pub fn new(map: LowMap, ram_bytes: u32) -> Shadow {
        let base = map.monitor_base();
        Shadow { inner: smmu::ShadowMmu::new(ram_bytes, MAX_MAPPED_PAGES, base), map }
    }

    /// A host page fault at `lin` by guest code at the vCPU's CPL.
    pub fn fault(&mut self, cpu: &mut Cpu<Machine>, lin: u32, kind: Kind) -> std::io::Result<Resolution> {
        let mode = paging_mode(&cpu.state);
        let user = cpu.state.cpl == 3;
        let access = match kind {
            Kind::Read => smmu::Access::Read,
            Kind::Write => smmu::Access::Write,
            Kind::Fetch => smmu::Access::Fetch,
        };
        let mut mem = Phys(cpu.bus.ram.as_mut_slice());
        self.inner.handle_fault(&mode, lin, access, user, &mut mem, &mut self.map)
    }

    /// Maps the page of `lin` ahead of an access at the vCPU's CPL if a fault there would
    /// map it without changing guest memory (`ShadowMmu::prefault`). True if it did.
    pub fn prefault(&mut self, cpu: &mut Cpu<Machine>, lin: u32) -> std::io::Result<bool> {
        let mode = paging_mode(&cpu.state);
        let user = cpu.state.cpl == 3;
        let mut mem = Phys(cpu.bus.ram.as_mut_slice());
        self.inner.prefault(&mode, lin, user, &mut mem, &mut self.map)
    }

    pub fn invlpg(&mut self, lin: u32) -> std::io::Result<()> {
        self.inner.invlpg(lin, &mut self.map)
    }

    pub fn cr3_written(&mut self, cpu: &mut Cpu<Machine>) -> std::io::Result<()> {
        let mode = paging_mode(&cpu.state);
        let mut mem = Phys(cpu.bus.ram.as_mut_slice());
        self.inner.cr3_written(&mode, &mut mem, &mut self.map)
    }

    pub fn flush_all(&mut self, cpu: &mut Cpu<Machine>) -> std::io::Result<()> {
        let mode = paging_mode(&cpu.state);
        let mut mem = Phys(cpu.bus.ram.as_mut_slice());
        self.inner.flush_all(&mode, &mut mem, &mut self.map)
    }

    pub fn set_user(&mut self, user: bool) -> std::io::Result<()> {
        self.inner.set_user(user, &mut self.map)
    }

    /// Whether `set_user(true)` would unmap nothing now.
    pub fn user_entry_unmaps_nothing(&self) -> bool {
        self.inner.user_entry_unmaps_nothing()
    }

    pub fn user(&self) -> bool {
        self.inner.user_mode()
    }

    /// How `lin` is mapped now, if it is.
    pub fn mapping(&self, lin: u32) -> Option<smmu::MappedPage> {
        self.inner.mapping(lin)
    }

    pub fn user_limit(&self) -> u32 {
        self.inner.user_limit()
    }

    pub fn mapped_pages(&self) -> usize {
        self.inner.mapped_pages()
    }

    pub fn stats(&self) -> ShadowStats {
        self.inner.stats()
    }
}

/// The paging bits whose change drops every shadow mapping.
pub fn paging_bits(cr0: u32, cr4: u32) -> (u32, u32) {
    (cr0 & (cr::CR0_PG | cr::CR0_WP | cr::CR0_PE), cr4 & (cr::CR4_PSE | cr::CR4_PGE | cr::CR4_PAE))
}
