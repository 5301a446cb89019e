//! Guest RAM: guest-physical memory from address 0.
//!
//! Every access to guest RAM goes through [`GuestRam`], so that other backings (a `memfd`
//! shared with the `direct` and `bt` engines' shadow mappings) can be added as variants
//! without touching the devices, the loaders or the engines.

use crate::space::MemfdRam;

/// Guest-physical RAM, starting at physical address 0.
#[derive(Debug)]
pub enum GuestRam {
    /// Plain process memory: enough for the `interp` engine.
    Heap(Vec<u8>),
    /// A `memfd` mapped whole above 4 GiB (the physmap); the `direct` engine maps its pages
    /// into the low 4 GiB as the shadow page tables.
    Memfd(MemfdRam),
}

impl GuestRam {
    /// `bytes` of zeroed RAM on the heap.
    pub fn heap(bytes: usize) -> GuestRam {
        GuestRam::Heap(vec![0; bytes])
    }

    /// `bytes` of zeroed RAM in a memfd (for the `direct` engine).
    pub fn memfd(bytes: usize) -> std::io::Result<GuestRam> {
        MemfdRam::new(bytes).map(GuestRam::Memfd)
    }

    /// Move the contents into a memfd (no-op if they are in one already).
    pub fn into_memfd(self) -> std::io::Result<GuestRam> {
        match self {
            GuestRam::Heap(v) => MemfdRam::from_slice(&v).map(GuestRam::Memfd),
            m @ GuestRam::Memfd(_) => Ok(m),
        }
    }

    pub fn memfd_ram(&self) -> Option<&MemfdRam> {
        match self {
            GuestRam::Memfd(m) => Some(m),
            GuestRam::Heap(_) => None,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            GuestRam::Heap(v) => v.len(),
            GuestRam::Memfd(m) => m.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        match self {
            GuestRam::Heap(v) => v,
            GuestRam::Memfd(m) => m.as_slice(),
        }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        match self {
            GuestRam::Heap(v) => v,
            GuestRam::Memfd(m) => m.as_mut_slice(),
        }
    }

    /// The bytes `[addr, addr + len)`, or `None` if any of them is outside RAM.
    pub fn slice(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let start = usize::try_from(addr).ok()?;
        let end = start.checked_add(len)?;
        self.as_slice().get(start..end)
    }

    /// Copy `bytes` to guest-physical `addr`. Fails (and writes nothing) if they do not fit.
    pub fn write(&mut self, addr: u64, bytes: &[u8]) -> Result<(), OutOfRam> {
        let range = self.range(addr, bytes.len())?;
        self.as_mut_slice()[range].copy_from_slice(bytes);
        Ok(())
    }

    /// Zero `[addr, addr + len)`. Fails (and writes nothing) if it does not fit.
    pub fn zero(&mut self, addr: u64, len: usize) -> Result<(), OutOfRam> {
        let range = self.range(addr, len)?;
        self.as_mut_slice()[range].fill(0);
        Ok(())
    }

    pub fn read_u32(&self, addr: u64) -> Option<u32> {
        self.slice(addr, 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn write_u32(&mut self, addr: u64, value: u32) -> Result<(), OutOfRam> {
        self.write(addr, &value.to_le_bytes())
    }

    fn range(&self, addr: u64, len: usize) -> Result<std::ops::Range<usize>, OutOfRam> {
        let err = OutOfRam { addr, len, ram: self.len() };
        let start = usize::try_from(addr).map_err(|_| err)?;
        let end = start.checked_add(len).ok_or(err)?;
        if end > self.len() {
            return Err(err);
        }
        Ok(start..end)
    }
}

/// An access that does not fit in guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("guest-physical range {addr:#x}+{len:#x} is outside guest RAM ({ram:#x} bytes)")]
pub struct OutOfRam {
    pub addr: u64,
    pub len: usize,
    pub ram: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_checked() {
        let mut ram = GuestRam::heap(0x1000);
        assert_eq!(ram.len(), 0x1000);
        ram.write(0xffc, &[1, 2, 3, 4]).unwrap();
        assert_eq!(ram.read_u32(0xffc), Some(0x0403_0201));
        assert!(ram.write(0xffd, &[1, 2, 3, 4]).is_err());
        assert!(ram.zero(u64::MAX, 2).is_err());
        assert_eq!(ram.read_u32(0xffd), None);
        ram.zero(0xffc, 4).unwrap();
        assert_eq!(ram.read_u32(0xffc), Some(0));
    }
}
