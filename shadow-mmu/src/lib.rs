//! Shadow MMU logic (ARCHITECTURE.md sections 3, 6 and 7): the guest page-table walker, the
//! shadow mapping state and the descriptor shadowing rules. Pure code: no OS calls, no
//! `unsafe`. The monitor runtime supplies guest-physical memory ([`GuestPhys`]) and the
//! host page-table operations ([`MapOps`]: `mmap` of the guest-RAM memfd into the low
//! 4 GiB, and unmapping).
//!
//! # Design
//!
//! The host page tables of the low 4 GiB of the process *are* the shadow page table: a
//! guest-linear page L is either unmapped in the host (any access faults: a *hidden* fault
//! if the guest's own tables allow the access) or mapped at the same linear address to the
//! guest frame F its guest translation names, through the guest-RAM memfd. The
//! [`ShadowMmu`] records which pages are mapped and how (frame, host writability, the
//! guest's U/S and R/W, global, piece of a 4 MiB page) in a two-level table keyed by page
//! number (a leaf of 1024 entries exists only while it maps something).
//!
//! A host fault goes to [`ShadowMmu::handle_fault`], which walks the guest tables
//! ([`walk()`]) with the guest's privilege and access type and answers with a
//! [`Resolution`]:
//! * `GuestFault`: the guest's CPU would raise #PF here (CR2 and the error code exactly as
//!   the CPU computes them: P, W, U, RSVD; no I bit without PAE). Guest memory unchanged.
//! * `Mapped`: a hidden fault. Accessed (and Dirty on a write) are set in guest memory as
//!   the CPU sets them, and the page (plus a short run of neighbours) is mapped.
//! * `NotRam`: the translation (or a paging-structure entry) is outside RAM: MMIO. The
//!   runtime emulates the instruction with the interpreter (no A/D bits were set).
//! * `MonitorArea`: the address is in the monitor area `[monitor_base, 4 GiB)`, which is
//!   never mapped for the guest; the runtime emulates the instruction with the interpreter.
//!
//! # Invariants
//!
//! 1. **A host mapping never allows more than the guest entry allows** for the privilege
//!    the guest runs at: the host mapping of L names the frame of the guest translation
//!    of L as it was at the fault (or later: x86 allows a TLB to hold a stale
//!    translation until INVLPG/CR3), it is present only if the guest entry is present and
//!    accessible, and writable only if
//!    * the guest entry is **dirty**, and
//!    * a write by the current privilege is allowed: user: U/S and R/W; supervisor: R/W,
//!      or CR0.WP = 0 (then a read-only guest page is host-writable while the guest
//!      kernel runs; ring compression removes it before user code runs).
//! 2. **Read-only until dirty.** The Dirty bit must be set by the first write, which only
//!    the walker can do. So a clean page is mapped read-only even if the guest entry is
//!    writable: the first write faults (hidden), sets D, and remaps the page writable.
//!    Accessed is guaranteed the same way: a page is never mapped before its entry is
//!    Accessed (the faulting page gets A from the walk; neighbours mapped ahead in a run
//!    must already have A, and D if they are mapped writable).
//! 3. **The monitor area is never mapped** for the guest, and no run crosses into it.
//! 4. **Only RAM is mapped**: frames beyond RAM are MMIO and answered with `NotRam`.
//! 5. **TLB semantics, not tracing.** The shadow behaves as an x86 TLB: guest page-table
//!    pages are not write-protected; the guest invalidates with INVLPG ([`ShadowMmu::invlpg`]:
//!    one page, or every piece of a 4 MiB page), CR3 writes ([`ShadowMmu::cr3_written`]:
//!    all but global pages when CR4.PGE) and paging-mode changes ([`ShadowMmu::flush_all`]).
//!    Mapping a run of neighbours whose entries are present and already Accessed is what a
//!    CPU's prefetching TLB may do too.
//! 6. **Eviction**: at most `max_mapped_pages` pages are mapped at once (the host's
//!    `vm.max_map_count` is 65530 mappings; a page count bounds the mapping count). When a
//!    fault would exceed it, everything is unmapped first: a full flush is always legal
//!    under x86 TLB rules (counted in [`ShadowStats::evictions`]).
//! 7. **Ring compression** (section 7): guest CPL 0 and CPL 3 both run at host CPL 3, so the
//!    host page tables cannot tell them apart. While the guest runs at CPL 3, the pages it
//!    must not reach are kept out of reach in two ways: user-mode segments are truncated at
//!    [`ShadowMmu::user_limit`] (the lowest address above which the guest page directory
//!    maps only supervisor pages: 0xC000_0000 for a 3G/1G Linux; see its documentation),
//!    so kernel pages above it may stay mapped; and [`ShadowMmu::set_user`]`(true)` unmaps
//!    every mapped page below that limit that is supervisor-only or host-writable without
//!    being user-writable (the CR0.WP = 0 case). While in user mode, faults come with
//!    `user = true` and only user-accessible pages get mapped.
//!
//!    Segment truncation does not cover selectors the guest cannot be stopped from
//!    loading: direct-executed user code can load the host's flat GDT selectors (0x23,
//!    0x2b) and reach kernel pages above the limit that stay mapped. That leaks guest
//!    kernel memory to guest user code (not the monitor: the hole is never mapped).
//!    [`ShadowMmu::set_strict_ring_compression`] closes it: `set_user(true)` then unmaps
//!    every unsafe page whatever its address (a Linux guest then refaults its kernel
//!    pages after every return to user mode).
//!
//! # Paging off
//!
//! Linear = physical: `handle_fault` maps L to frame L (writable) if it is in RAM, answers
//! `NotRam` beyond RAM and `MonitorArea` in the hole; `user_limit` is the monitor base.
//!
//! # Descriptors
//!
//! [`shadow_descriptor`], [`host_selector_for_guest`] and [`cached_slot_selector`]: see
//! the [`desc`] module.
#![forbid(unsafe_code)]

pub mod desc;
mod shadow;
pub mod walk;

pub use desc::{cached_slot_selector, host_selector_for_guest, shadow_descriptor, HostDesc};
pub use shadow::{MapOps, MappedPage, Resolution, ShadowMmu, ShadowStats, RUN_PAGES};
pub use walk::{
    pf, pte, set_accessed_dirty, walk, Access, GuestPhys, PagingMode, Translation, Walk,
};

#[cfg(test)]
mod tests;
