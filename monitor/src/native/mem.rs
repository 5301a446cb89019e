//! The low guest pages of the native runner, kept mapped between runs.
//!
//! Mapping and unmapping per case would cost several system calls and page faults per page;
//! instead every page a case used stays mapped (private anonymous, ours) and the next case only
//! rewrites contents and, where the protection differs, calls `mprotect`. Pages of earlier cases
//! that the current case does not use are made `PROT_NONE` (a guest access then faults with P=0,
//! exactly as for an unmapped page); past [`STALE_LIMIT`] such pages they are unmapped.
//!
//! Every page that is accessible in a case has been written by the runner, so it is populated:
//! a write to a read-only page reports P=1 in the page-fault error code, never P=0.

use std::collections::BTreeMap;

use super::sys::PAGE;
use super::{NativeError, Prot, Region};

/// Stale pages kept mapped (`PROT_NONE`) for reuse before they are unmapped.
const STALE_LIMIT: usize = 1024;

impl Prot {
    fn host(self) -> i32 {
        match self {
            Prot::Read => libc::PROT_READ,
            Prot::ReadWrite => libc::PROT_READ | libc::PROT_WRITE,
            Prot::ReadExec => libc::PROT_READ | libc::PROT_EXEC,
            Prot::ReadWriteExec => libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
            Prot::None => libc::PROT_NONE,
        }
    }

    /// Whether guest code can change the page (so its contents must be copied out).
    pub fn writable(self) -> bool {
        matches!(self, Prot::ReadWrite | Prot::ReadWriteExec)
    }

    fn readable(self) -> bool {
        !matches!(self, Prot::None)
    }
}

/// The pages the runner has mapped in the low 4 GiB: page number -> current host protection.
pub(crate) struct Pages {
    map: BTreeMap<u32, Prot>,
}

fn sys_err(op: &'static str, addr: u32) -> NativeError {
    NativeError::Sys {
        op,
        addr,
        source: std::io::Error::last_os_error(),
    }
}

fn mprotect(addr: u32, len: u32, prot: Prot) -> Result<(), NativeError> {
    // SAFETY: [addr, addr+len) lies in the low 4 GiB and is mapped by us (recorded in `Pages`);
    // no Rust object lives there, so changing its protection cannot invalidate a reference.
    let r = unsafe {
        libc::mprotect(
            addr as usize as *mut libc::c_void,
            len as usize,
            prot.host(),
        )
    };
    if r != 0 {
        return Err(sys_err("mprotect", addr));
    }
    Ok(())
}

/// Calls `f(first_page, count)` for each maximal run of consecutive page numbers.
fn for_runs(
    pages: impl IntoIterator<Item = u32>,
    mut f: impl FnMut(u32, u32) -> Result<(), NativeError>,
) -> Result<(), NativeError> {
    let mut run: Option<(u32, u32)> = None;
    for p in pages {
        run = match run {
            Some((s, n)) if s + n == p => Some((s, n + 1)),
            Some((s, n)) => {
                f(s, n)?;
                Some((p, 1))
            }
            None => Some((p, 1)),
        };
    }
    if let Some((s, n)) = run {
        f(s, n)?;
    }
    Ok(())
}

impl Pages {
    pub(crate) const fn new() -> Self {
        Pages {
            map: BTreeMap::new(),
        }
    }

    /// Maps (or reuses), fills and protects every region; makes the other pages inaccessible.
    /// The regions have been validated (page-aligned, non-empty, disjoint, below 4 GiB).
    pub(crate) fn prepare(&mut self, regions: &[Region]) -> Result<(), NativeError> {
        for (index, r) in regions.iter().enumerate() {
            self.prepare_one(index, r)?;
        }
        // Pages of earlier cases that this case does not use.
        let in_case = |p: u32| {
            regions.iter().any(|r| {
                let first = r.addr / PAGE;
                p >= first && p - first < (r.bytes.len() as u32) / PAGE
            })
        };
        let stale: Vec<u32> = self.map.keys().copied().filter(|&p| !in_case(p)).collect();
        if stale.len() > STALE_LIMIT {
            for_runs(stale.iter().copied(), |s, n| {
                // SAFETY: the run is mapped by us (in `self.map`) and holds no Rust object.
                let r = unsafe {
                    libc::munmap(
                        (s * PAGE) as usize as *mut libc::c_void,
                        (n * PAGE) as usize,
                    )
                };
                if r != 0 {
                    return Err(sys_err("munmap", s * PAGE));
                }
                Ok(())
            })?;
            for p in stale {
                self.map.remove(&p);
            }
        } else {
            let accessible: Vec<u32> = stale
                .into_iter()
                .filter(|p| self.map[p] != Prot::None)
                .collect();
            for_runs(accessible.iter().copied(), |s, n| {
                mprotect(s * PAGE, n * PAGE, Prot::None)
            })?;
            for p in accessible {
                self.map.insert(p, Prot::None);
            }
        }
        Ok(())
    }

    fn prepare_one(&mut self, index: usize, r: &Region) -> Result<(), NativeError> {
        let len = r.bytes.len() as u32;
        let first = r.addr / PAGE;
        let count = len / PAGE;
        // Map the pages that are not ours yet, read-write.
        let missing: Vec<u32> = (first..first + count)
            .filter(|p| !self.map.contains_key(p))
            .collect();
        let map = &mut self.map;
        for_runs(missing, |s, n| {
            let want = (s * PAGE) as usize;
            // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping; a fresh anonymous
            // mapping in the low 4 GiB aliases nothing of the host.
            let got = unsafe {
                libc::mmap(
                    want as *mut libc::c_void,
                    (n * PAGE) as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                    -1,
                    0,
                )
            };
            if got == libc::MAP_FAILED {
                let e = std::io::Error::last_os_error();
                return Err(if e.raw_os_error() == Some(libc::EEXIST) {
                    NativeError::AddressInUse {
                        index,
                        addr: s * PAGE,
                    }
                } else {
                    NativeError::Sys {
                        op: "mmap",
                        addr: s * PAGE,
                        source: e,
                    }
                });
            }
            if got as usize != want {
                // A kernel without MAP_FIXED_NOREPLACE treats the address as a hint.
                // SAFETY: `got` is the mapping just created, of this length.
                unsafe { libc::munmap(got, (n * PAGE) as usize) };
                return Err(NativeError::AddressInUse {
                    index,
                    addr: s * PAGE,
                });
            }
            for p in s..s + n {
                map.insert(p, Prot::ReadWrite);
            }
            Ok(())
        })?;

        let all_are = |m: &BTreeMap<u32, Prot>, prot: Prot| {
            m.range(first..first + count).all(|(_, &q)| q == prot)
        };
        let ptr = r.addr as usize as *mut u8;
        let want = r.prot;
        if all_are(&self.map, want) {
            if want == Prot::None {
                return Ok(());
            }
            if want.writable() {
                // SAFETY: the region is mapped by us, readable and writable; `bytes` has `len`
                // bytes and lives in the Rust heap, so the two do not overlap.
                unsafe { std::ptr::copy_nonoverlapping(r.bytes.as_ptr(), ptr, len as usize) };
                return Ok(());
            }
            // Read-only page already holding the wanted bytes: nothing to do.
            // SAFETY: mapped by us and readable; no Rust object lives there.
            let cur = unsafe { std::slice::from_raw_parts(ptr, len as usize) };
            if cur == &r.bytes[..] {
                return Ok(());
            }
        }
        let writable_now = self
            .map
            .range(first..first + count)
            .all(|(_, &q)| q.writable());
        let uniform = if writable_now {
            let q = self.map[&first];
            all_are(&self.map, q).then_some(q)
        } else {
            mprotect(r.addr, len, Prot::ReadWrite)?;
            Some(Prot::ReadWrite)
        };
        if want.readable() {
            // SAFETY: as above, the region is now readable and writable.
            unsafe { std::ptr::copy_nonoverlapping(r.bytes.as_ptr(), ptr, len as usize) };
        }
        if uniform != Some(want) {
            mprotect(r.addr, len, want)?;
        }
        for p in first..first + count {
            self.map.insert(p, want);
        }
        Ok(())
    }
}
