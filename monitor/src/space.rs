//! The process's address space as the `direct` engine lays it out (ARCHITECTURE.md section 3).
//!
//! * [`Reservation`]: `[0x1000, 4 GiB)` reserved with `PROT_NONE` + `MAP_NORESERVE` mappings
//!   (`MAP_FIXED_NOREPLACE`, so nothing of the host is ever replaced) so that nothing of the
//!   host lands there afterwards. Host mappings that already live below 4 GiB are detected
//!   (from `/proc/self/maps`) and reported; guest pages can never be mapped over them.
//! * [`MemfdRam`]: guest RAM as one `memfd`, mapped whole by the monitor above 4 GiB (the
//!   "physmap"): what [`GuestRam::Memfd`](crate::memory::GuestRam) slices.
//! * [`LowMap`]: the shadow page tables *are* the host page tables of the low 4 GiB. `map`
//!   is an `mmap(MAP_SHARED | MAP_FIXED)` of memfd pages at the guest-linear address; `unmap`
//!   maps `PROT_NONE` anonymous memory back over the range, keeping the reservation.
//! * The monitor area: `[monitor_base, 4 GiB)` stays `PROT_NONE`; every guest segment is
//!   truncated below it (see `direct::ldt`), and [`LowMap`] refuses to map into it.
//!
//! This is one of the few modules with `unsafe` code (mmap, munmap, memfd_create, ftruncate).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::native::sys;

/// The lowest address that can be mapped on this host (vm.mmap_min_addr is 4096 here).
pub const LOW_START: u64 = 0x1000;
/// The end of the guest-linear space.
pub const LOW_END: u64 = 1 << 32;
/// Default base of the monitor area: the top 16 MiB (VMware used 4 MiB; the translation cache
/// of a Linux boot needs ~15 MiB, docs/bt.md).
pub const DEFAULT_MONITOR_BASE: u32 = 0xff00_0000;
/// The highest accepted monitor base: the smallest area, 4 MiB.
pub const MAX_MONITOR_BASE: u32 = 0xffc0_0000;
/// The lowest accepted monitor base: guests need some linear space.
pub const MIN_MONITOR_BASE: u32 = 0x1000_0000;

const PAGE: u64 = sys::PAGE as u64;

/// Why the address space could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SpaceError {
    #[error("the monitor area base {0:#x} is not usable: it must be 4 MiB aligned, at least {MIN_MONITOR_BASE:#x} and at most {MAX_MONITOR_BASE:#x}")]
    BadMonitorBase(u64),
    #[error("guest RAM of {ram:#x} bytes does not fit below the monitor area at {monitor_base:#x} (with paging off the guest sees its RAM identity-mapped)")]
    RamTooLarge { ram: u64, monitor_base: u32 },
    #[error("another address space reservation is active in this process")]
    Busy,
    #[error("{what}: {source}")]
    Sys { what: &'static str, source: io::Error },
}

fn sys_err(what: &'static str) -> SpaceError {
    SpaceError::Sys { what, source: io::Error::last_os_error() }
}

/// Checks a `--monitor-area` value.
pub fn check_monitor_base(base: u64) -> Result<u32, SpaceError> {
    if base & ((4 << 20) - 1) != 0 || base < MIN_MONITOR_BASE as u64 || base > MAX_MONITOR_BASE as u64 {
        return Err(SpaceError::BadMonitorBase(base));
    }
    Ok(base as u32)
}

/// Host mappings found below 4 GiB (start, end, description).
pub type LowMappings = Vec<(u64, u64, String)>;

/// Reads `/proc/self/maps` and returns what of the process lives below 4 GiB.
pub fn host_low_mappings() -> io::Result<LowMappings> {
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut out = Vec::new();
    for line in maps.lines() {
        let mut parts = line.split_whitespace();
        let Some(range) = parts.next() else { continue };
        let Some((a, b)) = range.split_once('-') else { continue };
        let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else { continue };
        if a < LOW_END {
            let name = line.split_whitespace().nth(5).unwrap_or("[anonymous]").to_string();
            out.push((a, b.min(LOW_END), name));
        }
    }
    Ok(out)
}

static RESERVED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether a [`Reservation`] exists now (at most one per process).
pub fn reservation_active() -> bool {
    RESERVED.load(std::sync::atomic::Ordering::SeqCst)
}

/// The reservation of the low 4 GiB. Dropping it unmaps everything it covered (guest pages
/// included).
#[derive(Debug)]
pub struct Reservation {
    /// The reserved ranges (the gaps between host mappings, normally one range).
    ranges: Vec<(u64, u64)>,
    /// Host mappings below 4 GiB that existed before the reservation.
    pub host_low: LowMappings,
    pub monitor_base: u32,
}

impl Reservation {
    /// Reserve `[0x1000, 4 GiB)`. At most one reservation exists per process.
    pub fn new(monitor_base: u32) -> Result<Reservation, SpaceError> {
        if RESERVED.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Err(SpaceError::Busy);
        }
        let mut r = Reservation { ranges: Vec::new(), host_low: Vec::new(), monitor_base };
        match r.reserve() {
            Ok(()) => Ok(r),
            Err(e) => Err(e), // Drop releases what was reserved and the flag.
        }
    }

    fn reserve(&mut self) -> Result<(), SpaceError> {
        self.host_low = host_low_mappings().map_err(|source| SpaceError::Sys { what: "reading /proc/self/maps", source })?;
        let mut gaps = Vec::new();
        let mut cur = LOW_START;
        let mut host: Vec<(u64, u64)> = self.host_low.iter().map(|(a, b, _)| (*a, *b)).collect();
        host.sort();
        for (a, b) in host {
            if a > cur {
                gaps.push((cur, a));
            }
            cur = cur.max(b);
        }
        if cur < LOW_END {
            gaps.push((cur, LOW_END));
        }
        for (a, b) in gaps {
            // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping; the range is
            // inside the low 4 GiB, which no Rust object of ours uses.
            let p = unsafe {
                libc::mmap(
                    a as *mut libc::c_void,
                    (b - a) as usize,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED_NOREPLACE,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(sys_err("reserving the low 4 GiB"));
            }
            if p as u64 != a {
                // An old kernel that ignores MAP_FIXED_NOREPLACE: give the mapping back.
                // SAFETY: the mapping was just created by us.
                unsafe { libc::munmap(p, (b - a) as usize) };
                return Err(SpaceError::Sys {
                    what: "reserving the low 4 GiB",
                    source: io::Error::other("the kernel placed the reservation elsewhere (no MAP_FIXED_NOREPLACE)"),
                });
            }
            self.ranges.push((a, b));
        }
        Ok(())
    }

    /// Whether `[lin, lin + len)` lies inside the reservation (the monitor area included).
    pub fn reserves(&self, lin: u64, len: u64) -> bool {
        let end = lin + len;
        self.ranges.iter().any(|&(a, b)| a <= lin && end <= b)
    }

    /// Whether `[lin, lin + len)` lies inside the reservation and below the monitor area.
    pub fn covers(&self, lin: u64, len: u64) -> bool {
        let end = lin + len;
        end <= self.monitor_base as u64 && self.ranges.iter().any(|&(a, b)| a <= lin && end <= b)
    }

    /// Makes everything below the monitor area `PROT_NONE` reservation again (the guest
    /// pages a previous run mapped there are gone), for a reservation reused by the next run
    /// (`engine::Session`). The monitor area is left as it is.
    pub fn clear_guest_part(&self) -> io::Result<()> {
        for &(a, b) in &self.ranges {
            let b = b.min(self.monitor_base as u64);
            if a >= b {
                continue;
            }
            // SAFETY: `[a, b)` is ours (reserved in `reserve`) and below the monitor area;
            // guest pages mapped there are not referenced by any Rust object. MAP_FIXED
            // replaces only our own reservation or guest pages.
            let p = unsafe {
                libc::mmap(
                    a as *mut libc::c_void,
                    (b - a) as usize,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        for &(a, b) in &self.ranges {
            // SAFETY: the ranges are ours (reserved above); guest pages mapped into them are
            // not referenced by any Rust object.
            unsafe { libc::munmap(a as *mut libc::c_void, (b - a) as usize) };
        }
        RESERVED.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Guest RAM as a `memfd`, mapped whole (shared, read-write) where the kernel chooses: above
/// 4 GiB, since the low 4 GiB are either reserved or, before the reservation, the kernel's
/// top-down allocator never goes there in a 64-bit process.
pub struct MemfdRam {
    fd: OwnedFd,
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is owned by this value; access goes through `&self`/`&mut self`.
unsafe impl Send for MemfdRam {}

impl std::fmt::Debug for MemfdRam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MemfdRam {{ fd: {}, physmap: {:p}, len: {:#x} }}", self.fd.as_raw_fd(), self.ptr, self.len)
    }
}

impl MemfdRam {
    /// `len` bytes of zeroed guest RAM (`len` a multiple of 4 KiB, nonzero).
    pub fn new(len: usize) -> io::Result<MemfdRam> {
        if len == 0 || len as u64 & (PAGE - 1) != 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "guest RAM size must be a nonzero multiple of 4 KiB"));
        }
        // SAFETY: a static NUL-terminated name; memfd_create has no other preconditions.
        let fd = unsafe { libc::memfd_create(c"vmm-guest-ram".as_ptr(), sys::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: plain ftruncate of our memfd.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new shared mapping of the whole memfd at an address the kernel chooses.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_NORESERVE,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(MemfdRam { fd, ptr: p.cast(), len })
    }

    /// A memfd holding a copy of `bytes`.
    pub fn from_slice(bytes: &[u8]) -> io::Result<MemfdRam> {
        let mut m = MemfdRam::new(bytes.len())?;
        m.as_mut_slice().copy_from_slice(bytes);
        Ok(m)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The physmap address of guest-physical 0 (for diagnostics).
    pub fn physmap(&self) -> *const u8 {
        self.ptr
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` is our mapping, alive as long as `self`. Guest code writes the
        // same pages through the low aliases only while the monitor is inside the entry stub,
        // when no Rust reference to this memory is in use (one thread runs the guest).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; `&mut self` makes this the only reference from Rust.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for MemfdRam {
    fn drop(&mut self) {
        // SAFETY: the physmap is ours; no slice into it outlives `self`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// The host page tables of the low 4 GiB as the shadow MMU's map/unmap operations.
#[derive(Debug)]
pub struct LowMap {
    pub reservation: Reservation,
    fd: RawFd,
    ram_len: u64,
    /// Counters.
    pub maps: u64,
    pub unmaps: u64,
    /// Guest frames (physical page numbers) holding translated code (`bt`): always mapped
    /// without write permission, so that a guest write to them faults.
    pub code_frames: rustc_hash::FxHashSet<u32>,
    /// Writable shadow mappings: linear page -> guest frame (page numbers), and the reverse,
    /// so that a frame that becomes a code frame loses write permission at every alias.
    writable_by_lin: std::collections::BTreeMap<u32, u32>,
    writable_by_frame: rustc_hash::FxHashMap<u32, Vec<u32>>,
}

impl LowMap {
    /// Map guest RAM (`fd`, `ram_len` bytes) into the low 4 GiB of `reservation`.
    pub fn new(reservation: Reservation, ram: &MemfdRam) -> LowMap {
        LowMap { reservation, fd: ram.fd(), ram_len: ram.len() as u64, maps: 0, unmaps: 0, code_frames: Default::default(), writable_by_lin: Default::default(), writable_by_frame: Default::default() }
    }

    pub fn monitor_base(&self) -> u32 {
        self.reservation.monitor_base
    }

    /// Map `pages` pages at guest-linear `lin` to guest-physical `frame` (pages of code frames
    /// without write permission).
    pub fn map_pages(&mut self, lin: u32, frame: u32, pages: u32, writable: bool) -> io::Result<()> {
        if writable && !self.code_frames.is_empty() && (0..pages).any(|i| self.code_frames.contains(&((frame >> 12) + i))) {
            for i in 0..pages {
                let f = frame + (i << 12);
                let w = !self.code_frames.contains(&(f >> 12));
                self.map_run(lin + (i << 12), f, 1, w)?;
            }
            return Ok(());
        }
        self.map_run(lin, frame, pages, writable)
    }

    /// Makes guest frame `frame` (a page number) a code frame: from now on it is mapped without
    /// write permission, and every writable shadow mapping of it loses write permission now.
    /// False if it already was one.
    pub fn protect_code_frame(&mut self, frame: u32) -> io::Result<bool> {
        if !self.code_frames.insert(frame) {
            return Ok(false);
        }
        for lin_page in self.writable_by_frame.remove(&frame).unwrap_or_default() {
            self.writable_by_lin.remove(&lin_page);
            let lin = lin_page << 12;
            // SAFETY: the page is a live shadow mapping of guest RAM that `map_run` created
            // inside our reservation below the monitor area (tracked until unmapped or
            // replaced); only its protection changes.
            if unsafe { libc::mprotect(lin as usize as *mut libc::c_void, PAGE as usize, libc::PROT_READ | libc::PROT_EXEC) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(true)
    }

    /// Forgets the writable mappings of linear pages `[first, first + pages)`.
    fn forget_writable(&mut self, first: u32, pages: u32) {
        let end = first as u64 + pages as u64;
        let gone: Vec<(u32, u32)> = self.writable_by_lin.range(first..).take_while(|(l, _)| (**l as u64) < end).map(|(l, f)| (*l, *f)).collect();
        for (l, f) in gone {
            self.writable_by_lin.remove(&l);
            if let Some(v) = self.writable_by_frame.get_mut(&f) {
                v.retain(|x| *x != l);
                if v.is_empty() {
                    self.writable_by_frame.remove(&f);
                }
            }
        }
    }

    fn map_run(&mut self, lin: u32, frame: u32, pages: u32, writable: bool) -> io::Result<()> {
        let len = pages as u64 * PAGE;
        if (lin | frame) as u64 & (PAGE - 1) != 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "unaligned shadow mapping"));
        }
        if !self.reservation.covers(lin as u64, len) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{lin:#x}+{len:#x} is outside the guest's part of the low 4 GiB")));
        }
        if frame as u64 + len > self.ram_len {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("frame {frame:#x}+{len:#x} is outside guest RAM")));
        }
        let prot = libc::PROT_READ | libc::PROT_EXEC | if writable { libc::PROT_WRITE } else { 0 };
        // SAFETY: the range is inside our reservation (checked above), below the monitor area;
        // no Rust object lives there. MAP_FIXED replaces only our own reservation or guest pages.
        let p = unsafe {
            libc::mmap(
                lin as usize as *mut libc::c_void,
                len as usize,
                prot,
                libc::MAP_SHARED | libc::MAP_FIXED,
                self.fd,
                frame as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        self.maps += 1;
        self.forget_writable(lin >> 12, pages);
        if writable {
            for i in 0..pages {
                let (l, f) = ((lin >> 12) + i, (frame >> 12) + i);
                self.writable_by_lin.insert(l, f);
                self.writable_by_frame.entry(f).or_default().push(l);
            }
        }
        Ok(())
    }

    /// Make `pages` pages at `lin` inaccessible again (reservation kept).
    pub fn unmap_pages(&mut self, lin: u32, pages: u32) -> io::Result<()> {
        let len = pages as u64 * PAGE;
        if !self.reservation.covers(lin as u64, len) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{lin:#x}+{len:#x} is outside the guest's part of the low 4 GiB")));
        }
        // SAFETY: as in `map_pages`: our own range, replaced by a PROT_NONE reservation again.
        let p = unsafe {
            libc::mmap(
                lin as usize as *mut libc::c_void,
                len as usize,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        self.unmaps += 1;
        self.forget_writable(lin >> 12, pages);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_base_is_checked() {
        assert_eq!(check_monitor_base(0xffc0_0000).unwrap(), 0xffc0_0000);
        assert_eq!(check_monitor_base(0xc000_0000).unwrap(), 0xc000_0000);
        assert!(check_monitor_base(0xffc0_1000).is_err());
        assert!(check_monitor_base(0x1_0000_0000).is_err());
        assert!(check_monitor_base(0x40_0000).is_err());
    }

    /// Reserve, map a memfd page at a low address, see the physmap's bytes through it,
    /// unmap it again. (One test only: the reservation is process-wide.)
    #[test]
    fn reservation_and_low_mappings() {
        // The reservation is process-wide: hold the lock every other reserver holds (the
        // direct and bt engines, the bt tests), or a test running in parallel finds it Busy.
        let _lock = crate::direct::entry::RUN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let mut ram = MemfdRam::new(1 << 20).unwrap();
        assert!(ram.physmap() as u64 >= LOW_END);
        ram.as_mut_slice()[0x3008] = 0x5a;
        let res = Reservation::new(DEFAULT_MONITOR_BASE).unwrap();
        assert!(matches!(Reservation::new(DEFAULT_MONITOR_BASE), Err(SpaceError::Busy)));
        let mut low = LowMap::new(res, &ram);
        low.map_pages(0x4000_0000, 0x3000, 1, true).unwrap();
        // SAFETY (test): the page was just mapped readable and writable.
        let v = unsafe { std::ptr::read_volatile(0x4000_0008 as *const u8) };
        assert_eq!(v, 0x5a);
        // SAFETY (test): as above.
        unsafe { std::ptr::write_volatile(0x4000_0009 as *mut u8, 0xa5) };
        assert_eq!(ram.as_slice()[0x3009], 0xa5);
        // A code frame loses write permission at every alias, now and later.
        low.map_pages(0x5000_0000, 0x3000, 1, true).unwrap();
        assert!(low.protect_code_frame(3).unwrap());
        assert!(!low.protect_code_frame(3).unwrap());
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        assert!(maps.lines().any(|l| l.starts_with("40000000-40001000 r-xs")), "{maps}");
        assert!(maps.lines().any(|l| l.starts_with("50000000-50001000 r-xs")), "{maps}");
        low.map_pages(0x5000_0000, 0x2000, 2, true).unwrap();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        assert!(maps.lines().any(|l| l.starts_with("50000000-50001000 rwxs")), "{maps}");
        assert!(maps.lines().any(|l| l.starts_with("50001000-50002000 r-xs")), "{maps}");
        low.unmap_pages(0x5000_0000, 2).unwrap();
        low.unmap_pages(0x4000_0000, 1).unwrap();
        assert!(low.map_pages(0xffc0_0000, 0, 1, false).is_err(), "the monitor area is never mapped");
        assert!(low.map_pages(0x1000, 0xff000, 2, false).is_err(), "frames outside RAM");
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        assert!(maps.lines().any(|l| l.starts_with("00001000-")), "{maps}");
        drop(low);
        assert!(!std::fs::read_to_string("/proc/self/maps").unwrap().lines().any(|l| l.starts_with("00001000-")));
    }
}
