//! The one place the direct engine calls the shadow MMU (crate `vmm-shadow-mmu`, interface in
//! `smmu-api.md`): page faults, invalidation, ring compression, and the descriptor shadowing
//! rules. Everything else in the engine goes through [`Shadow`] and the functions here.
//!
//! TEMPORARY: until `vmm-shadow-mmu` lands, [`stub`] stands in for it. The stub has no page
//! walker of its own: it resolves a fault with the interpreter's walk (`Cpu::translate`, which
//! sets A/D and CR2 exactly as the CPU does), maps one page at a time, writable only after a
//! write was allowed (so D is set by the first write), drops everything on every CPL change
//! (ring compression by flushing) and reports no user limit. Its descriptor rules are the
//! minimum (DPL 3, limit truncated below `top`). Delete it when the crate is merged.

use vmm_interp::mmu::Access;
use vmm_interp::state::{cr, vector};
use vmm_interp::{Cpu, Exception, Fault};

use crate::machine::Machine;
use crate::space::LowMap;

/// A host fault at a guest-linear address, resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Hidden: the page is mapped now; restart the instruction.
    Mapped,
    /// A true guest #PF.
    GuestFault { cr2: u32, error_code: u32 },
    /// Guest-physical memory outside RAM: emulate the instruction.
    NotRam { phys: u32 },
}

/// How a fault was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Read,
    Write,
    Fetch,
}

/// Counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct ShadowStats {
    pub hidden_faults: u64,
    pub guest_faults: u64,
    pub flushes: u64,
    pub evictions: u64,
}

/// The shadow page tables of one guest.
pub struct Shadow {
    inner: stub::ShadowMmu,
    pub map: LowMap,
}

impl Shadow {
    pub fn new(map: LowMap, ram_bytes: u32) -> Shadow {
        Shadow { inner: stub::ShadowMmu::new(ram_bytes, 60_000), map }
    }

    /// A host page fault at `lin`.
    pub fn fault(&mut self, cpu: &mut Cpu<Machine>, lin: u32, kind: Kind) -> std::io::Result<Resolution> {
        self.inner.handle_fault(cpu, lin, kind, &mut self.map)
    }

    pub fn invlpg(&mut self, lin: u32) -> std::io::Result<()> {
        self.inner.invlpg(lin, &mut self.map)
    }

    pub fn cr3_written(&mut self) -> std::io::Result<()> {
        self.inner.flush_all(&mut self.map)
    }

    pub fn flush_all(&mut self) -> std::io::Result<()> {
        self.inner.flush_all(&mut self.map)
    }

    pub fn set_user(&mut self, user: bool) -> std::io::Result<()> {
        self.inner.set_user(user, &mut self.map)
    }

    pub fn user(&self) -> bool {
        self.inner.user
    }

    pub fn user_limit(&self) -> u32 {
        self.inner.user_limit()
    }

    pub fn mapped_pages(&self) -> usize {
        self.inner.mapped.len()
    }

    pub fn stats(&self) -> ShadowStats {
        self.inner.stats
    }
}

/// What a guest descriptor becomes in the host LDT (always DPL 3).
pub use stub::{cached_slot_selector, host_selector_for_guest, shadow_descriptor, HostDesc};

/// The paging bits whose change drops every shadow mapping.
pub fn paging_bits(cr0: u32, cr4: u32) -> (u32, u32) {
    (cr0 & (cr::CR0_PG | cr::CR0_WP | cr::CR0_PE), cr4 & (cr::CR4_PSE | cr::CR4_PGE | cr::CR4_PAE))
}

mod stub {
    use super::*;
    use std::collections::BTreeSet;

    pub struct ShadowMmu {
        ram_bytes: u32,
        max: usize,
        /// Mapped linear page numbers.
        pub mapped: BTreeSet<u32>,
        pub user: bool,
        pub stats: ShadowStats,
    }

    impl ShadowMmu {
        pub fn new(ram_bytes: u32, max: usize) -> ShadowMmu {
            ShadowMmu { ram_bytes, max, mapped: BTreeSet::new(), user: false, stats: ShadowStats::default() }
        }

        pub fn handle_fault(
            &mut self,
            cpu: &mut Cpu<Machine>,
            lin: u32,
            kind: Kind,
            map: &mut LowMap,
        ) -> std::io::Result<Resolution> {
            let user = cpu.state.cpl == 3;
            let acc = match kind {
                Kind::Read => Access::read(user),
                Kind::Write => Access::write(user),
                Kind::Fetch => Access::fetch(user),
            };
            let saved_cr2 = cpu.state.cr2;
            match cpu.translate(lin, acc) {
                Ok(phys) => {
                    let frame = phys & !0xfff;
                    if frame >= self.ram_bytes || frame < 0x1000 && lin < 0x1000 {
                        return Ok(Resolution::NotRam { phys });
                    }
                    if self.mapped.len() >= self.max {
                        self.stats.evictions += 1;
                        self.flush_all(map)?;
                    }
                    map.map_pages(lin & !0xfff, frame, 1, kind == Kind::Write)?;
                    self.mapped.insert(lin >> 12);
                    self.stats.hidden_faults += 1;
                    Ok(Resolution::Mapped)
                }
                Err(Fault::Exc(Exception { vector: vector::PF, error: Some(code) })) => {
                    let cr2 = cpu.state.cr2;
                    cpu.state.cr2 = saved_cr2;
                    self.stats.guest_faults += 1;
                    Ok(Resolution::GuestFault { cr2, error_code: code })
                }
                Err(_) => Ok(Resolution::NotRam { phys: lin }),
            }
        }

        pub fn invlpg(&mut self, lin: u32, map: &mut LowMap) -> std::io::Result<()> {
            // 4 MiB pages are mapped as 4 KiB pieces: drop the whole 4 MiB region.
            let first = (lin & !0x3f_ffff) >> 12;
            let pages: Vec<u32> = self.mapped.range(first..first + 1024).copied().collect();
            for p in pages {
                map.unmap_pages(p << 12, 1)?;
                self.mapped.remove(&p);
            }
            Ok(())
        }

        pub fn flush_all(&mut self, map: &mut LowMap) -> std::io::Result<()> {
            self.stats.flushes += 1;
            let pages = std::mem::take(&mut self.mapped);
            let mut run: Option<(u32, u32)> = None;
            for p in pages {
                run = match run {
                    Some((s, n)) if s + n == p => Some((s, n + 1)),
                    Some((s, n)) => {
                        map.unmap_pages(s << 12, n)?;
                        Some((p, 1))
                    }
                    None => Some((p, 1)),
                };
            }
            if let Some((s, n)) = run {
                map.unmap_pages(s << 12, n)?;
            }
            Ok(())
        }

        pub fn set_user(&mut self, user: bool, map: &mut LowMap) -> std::io::Result<()> {
            if user != self.user {
                self.user = user;
                self.flush_all(map)?;
            }
            Ok(())
        }

        pub fn user_limit(&self) -> u32 {
            u32::MAX
        }
    }

    /// A guest descriptor as the host LDT will hold it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct HostDesc {
        pub base: u32,
        pub limit_pages: bool,
        pub limit: u32,
        pub code: bool,
        pub conforming_or_expand_down: bool,
        pub writable_or_readable: bool,
        pub big: bool,
        pub present: bool,
    }

    pub fn shadow_descriptor(raw: u64, top: u32) -> Option<HostDesc> {
        let d = vmm_interp::seg::Descriptor(raw);
        if !d.is_segment() || !d.present() {
            return None;
        }
        let base = d.base();
        let code = d.is_code();
        let dc = d.ty() & 4 != 0;
        if !code && dc {
            // Expand-down: valid offsets are (limit, top of segment]; keep as is if the
            // segment stays below `top`, else refuse (the monitor emulates).
            let upper = if raw & (1 << 54) != 0 { u32::MAX } else { 0xffff };
            if (base as u64) + upper as u64 >= top as u64 {
                return None;
            }
        }
        let mut limit = d.limit();
        if !(!code && dc) {
            let max = top.checked_sub(1).and_then(|t| t.checked_sub(base));
            match max {
                Some(m) => limit = limit.min(m),
                None => return None,
            }
        }
        let limit_pages = limit > 0xf_ffff;
        let (limit, limit_pages) = if limit_pages {
            if limit & 0xfff != 0xfff {
                // Not expressible in pages: round down to whole pages.
                ((limit >> 12).saturating_sub(1), true)
            } else {
                (limit >> 12, true)
            }
        } else {
            (limit, false)
        };
        Some(HostDesc {
            base,
            limit_pages,
            limit,
            code,
            conforming_or_expand_down: dc,
            writable_or_readable: d.ty() & 2 != 0,
            big: raw & (1 << 54) != 0,
            present: true,
        })
    }

    pub fn host_selector_for_guest(guest_sel: u16) -> Option<u16> {
        let index = (guest_sel >> 3) as u32;
        let host = if guest_sel & 4 != 0 {
            if index >= 4096 {
                return None;
            }
            index
        } else {
            if index == 0 || index >= 3840 {
                return None;
            }
            4096 + index
        };
        Some(((host as u16) << 3) | 7)
    }

    pub fn cached_slot_selector(sreg: usize) -> u16 {
        (((8000 + sreg) as u16) << 3) | 7
    }
}
