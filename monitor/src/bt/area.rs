//! The monitor area's memory (ARCHITECTURE.md section 3): one `memfd` holding the translation
//! cache, the vCPU region and the callout stack, mapped twice:
//!
//! * low, at the `--monitor-area` base (guest-linear, reachable by 32-bit code): the TC
//!   read + execute, the vCPU region and the callout stack read + write;
//! * high (above 4 GiB, where the kernel puts it): the whole memfd read + write, the alias the
//!   monitor writes the TC through. Guest code can never write the TC: its only mapping below
//!   4 GiB is not writable.
//!
//! Layout, from the base: the TC (whatever the area leaves: [`MonitorArea::tc_size`], 15.9 MiB
//! with the default 16 MiB area; its first [`TC_RESERVED`] bytes hold the gate trampolines and
//! the lookup-miss routine), the callout stack ([`STACK_SIZE`]), the vCPU region
//! (`Abi::vcpu_size` rounded up to a page), one unused page below 4 GiB. The stack and the
//! vCPU region's writable part are adjacent: [`MonitorArea::set_open`] changes both with one
//! `mprotect`. This module's `unsafe` is the
//! mmap/memfd calls.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::native::sys;
use crate::space::Reservation;

/// The smallest translation cache accepted (a 4 MiB monitor area gives ~3.9 MiB).
pub const MIN_TC_SIZE: u32 = 1 << 20;
/// Bytes at the start of the TC kept for the runtime (trampolines, the lookup-miss routine).
pub const TC_RESERVED: u32 = 0x400;
/// Bytes of callout stack.
pub const STACK_SIZE: u32 = 16 << 10;

const PAGE: u32 = sys::PAGE;

fn round_page(n: u32) -> u32 {
    (n + PAGE - 1) & !(PAGE - 1)
}

/// The monitor area's mappings.
pub struct MonitorArea {
    _fd: OwnedFd,
    alias: *mut u8,
    len: usize,
    /// Guest-linear base of the area (= of the TC).
    pub base: u32,
    /// Bytes of translation cache from `base`.
    pub tc_size: u32,
    /// Guest-linear address of the vCPU region.
    pub vcpu: u32,
    /// Size of the vCPU region (as the ABI says; the mapping is rounded up to a page).
    pub vcpu_size: u32,
    /// Bytes at the start of the vCPU region that translated code writes (the rest, the
    /// lookup table, it only reads: mapped read-only low, written through the alias).
    pub vcpu_writable: u32,
    /// Guest-linear address of the callout stack (its lowest byte).
    pub stack: u32,
    /// The low mappings are accessible (translated code runs); otherwise PROT_NONE.
    open: bool,
}

// SAFETY: the mappings are owned by this value and used by one thread at a time (RUN_LOCK).
unsafe impl Send for MonitorArea {}

fn os(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

impl MonitorArea {
    /// Maps the area at `base` inside `reservation` for a vCPU region of `vcpu_size` bytes, of
    /// which translated code writes the first `vcpu_writable`.
    pub fn new(reservation: &Reservation, base: u32, vcpu_size: u32, vcpu_writable: u32) -> io::Result<MonitorArea> {
        let vcpu_writable = round_page(vcpu_writable.min(vcpu_size));
        let area = (1u64 << 32).saturating_sub(base as u64);
        let tc_size = area.saturating_sub((round_page(vcpu_size) + STACK_SIZE + PAGE) as u64) as u32 & !(PAGE - 1);
        let stack_off = tc_size;
        let vcpu_off = stack_off + STACK_SIZE;
        let len = (vcpu_off + round_page(vcpu_size)) as usize;
        if tc_size < MIN_TC_SIZE || !reservation.reserves(base as u64, len as u64) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("the monitor area at {base:#x} cannot hold a translation cache")));
        }
        // SAFETY: a static NUL-terminated name.
        let fd = unsafe { libc::memfd_create(c"vmm-monitor-area".as_ptr(), sys::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(os("memfd_create"));
        }
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ftruncate of our memfd.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
            return Err(os("ftruncate"));
        }
        // SAFETY: a new shared mapping where the kernel chooses (above 4 GiB: the low 4 GiB are
        // reserved).
        let alias = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd.as_raw_fd(), 0)
        };
        if alias == libc::MAP_FAILED {
            return Err(os("mmap of the monitor area's alias"));
        }
        let area = MonitorArea { _fd: fd, alias: alias.cast(), len, base, tc_size, vcpu: base + vcpu_off, vcpu_size, vcpu_writable, stack: base + stack_off, open: true };
        if (alias as u64) < 1 << 32 {
            return Err(io::Error::other("the monitor area's alias landed below 4 GiB"));
        }
        let low = |off: u32, size: u32, prot: i32| -> io::Result<()> {
            // SAFETY: `[base + off, +size)` is inside our reservation (checked above) and in the
            // monitor area, where no guest page and no Rust object lives; MAP_FIXED replaces only
            // the PROT_NONE reservation.
            let p = unsafe {
                libc::mmap(
                    (base + off) as usize as *mut libc::c_void,
                    size as usize,
                    prot,
                    libc::MAP_SHARED | libc::MAP_FIXED,
                    area._fd.as_raw_fd(),
                    off as libc::off_t,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(os("mmap of the monitor area"));
            }
            Ok(())
        };
        low(0, tc_size, libc::PROT_READ | libc::PROT_EXEC)?;
        low(stack_off, STACK_SIZE + vcpu_writable, libc::PROT_READ | libc::PROT_WRITE)?;
        let vcpu_end = vcpu_off + round_page(vcpu_size);
        if vcpu_end > vcpu_off + vcpu_writable {
            low(vcpu_off + vcpu_writable, vcpu_end - vcpu_off - vcpu_writable, libc::PROT_READ)?;
        }
        Ok(area)
    }

    /// Opens (translated code is about to run) or closes (guest code is about to run directly:
    /// user code can load the host's flat selectors and must not reach the vCPU region, the
    /// lookup table or the callout stack) the low mappings of the writable parts (the lookup
    /// table is read-only low: reading it tells TC addresses, nothing more). A guest
    /// access while closed faults like any access into the monitor area (the interpreter
    /// executes it with the guest's view).
    ///
    /// The TC stays read + execute: it holds nothing guest code could not write itself, and
    /// changing the protection of its megabytes costs the host a walk of every page table
    /// entry (measured: two `mprotect`s of a 16 MiB TC at every change of engine made a
    /// Linux guest's system calls ten times slower). What direct code can do with it is read
    /// translated guest kernel code, the same leak as the host's flat selectors give
    /// (docs/direct.md, ring compression).
    pub fn set_open(&mut self, open: bool) -> io::Result<()> {
        if self.open == open {
            return Ok(());
        }
        let prot = if open { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_NONE };
        // The stack and the writable part of the vCPU region that follows it (`new`).
        let (at, size) = (self.stack, STACK_SIZE + self.vcpu_writable);
        // SAFETY: our own low mappings (created in `new`); only their protection changes.
        if unsafe { libc::mprotect(at as usize as *mut libc::c_void, size as usize, prot) } != 0 {
            return Err(os("mprotect of the monitor area"));
        }
        self.open = open;
        Ok(())
    }

    /// The whole area through the writable alias (offsets from [`MonitorArea::base`]).
    pub fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: our alias mapping of `len` bytes, alive as long as `self`. Guest code writes
        // the vCPU region and the callout stack through the low mapping only while the monitor
        // is inside the entry stub (one thread), when no Rust reference is in use.
        unsafe { std::slice::from_raw_parts_mut(self.alias, self.len) }
    }

    /// The alias (host) address of guest-linear `lin` in the area (for the signal handler).
    pub fn alias_of(&self, lin: u32) -> u64 {
        self.alias as u64 + (lin - self.base) as u64
    }

    /// Writes `data` at guest-linear `lin` (in the area) through the alias.
    pub fn write(&mut self, lin: u32, data: &[u8]) {
        let off = (lin - self.base) as usize;
        self.bytes()[off..off + data.len()].copy_from_slice(data);
    }

    /// Reads `N` bytes at guest-linear `lin` (in the area).
    pub fn read<const N: usize>(&mut self, lin: u32) -> [u8; N] {
        let off = (lin - self.base) as usize;
        self.bytes()[off..off + N].try_into().expect("N bytes")
    }
}

impl Drop for MonitorArea {
    fn drop(&mut self) {
        // SAFETY: the low range is ours (mapped in `new`, inside the reservation, which the
        // engine drops after this value): it becomes PROT_NONE reservation again. The alias is
        // ours and no slice into it outlives `self`. If the reservation is already gone (a
        // panic unwound through the engine, which drops the shadow MMU's reservation first),
        // its munmap took the low range too: mapping it again would leave a host mapping
        // below 4 GiB that the next reservation would have to go around, with no room for
        // the next monitor area.
        unsafe {
            if crate::space::reservation_active() {
                libc::mmap(
                    self.base as usize as *mut libc::c_void,
                    self.len,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                    -1,
                    0,
                );
            }
            libc::munmap(self.alias.cast(), self.len);
        }
    }
}
