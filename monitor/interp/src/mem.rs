//! Memory operands: segmentation checks (limit, type, expand-down, null segments), the
//! alignment check, translation through paging, and accesses that cross a page boundary
//! (both pages are translated before any byte is written, as the CPU does).

use crate::exc;
use crate::mmu::Access;
use crate::state::{cr, flags, SegReg};
use crate::{Bus, Cpu, Res};

/// A translated location of up to 8 bytes: the physical address of the first byte and, for
/// an access that crosses into the next page, of the first byte in that page.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Loc {
    pub p0: u32,
    pub p1: u32,
    /// Bytes in the first page (== size when the access does not cross).
    pub n0: u8,
    pub size: u8,
}

impl<B: Bus> Cpu<B> {
    /// Segmentation: check an access of `size` bytes at `off` in segment `s` and return the
    /// linear address. Raises #GP(0) (#SS(0) for SS) as the CPU does.
    #[inline(always)]
    pub(crate) fn seg_linear(&mut self, s: SegReg, off: u32, size: u32, write: bool) -> Res<u32> {
        let seg = &self.state.seg[s as usize];
        let fail = || if s == SegReg::Ss { exc::ss(0) } else { exc::gp0() };
        if self.state.cr0 & cr::CR0_PE != 0 && self.state.eflags & flags::VM == 0 {
            // Protected mode: a null-loaded segment has attr 0 (not present).
            if !seg.present() {
                return Err(fail());
            }
            if write {
                if !seg.writable() {
                    return Err(fail());
                }
            } else if !seg.readable() {
                return Err(fail());
            }
        }
        let last = off.wrapping_add(size - 1);
        if seg.expand_down() {
            let upper = if seg.big() { 0xffff_ffff } else { 0xffff };
            if off <= seg.limit || last > upper || last < off {
                return Err(fail());
            }
        } else if last > seg.limit || last < off {
            // An access that runs past offset 0xFFFFFFFF faults even in a 4 GiB segment
            // (the host CPU raises #GP; there is no wrap-around).
            return Err(fail());
        }
        Ok(seg.base.wrapping_add(off))
    }

    /// Translate a linear access of `size` bytes (1..=8), both pages if it crosses.
    #[inline(always)]
    pub(crate) fn lin_loc(&mut self, lin: u32, size: u8, acc: Access) -> Res<Loc> {
        let in_page = 0x1000 - (lin & 0xfff);
        let p0 = self.translate(lin, acc)?;
        if (size as u32) <= in_page {
            return Ok(Loc { p0, p1: 0, n0: size, size });
        }
        let p1 = self.translate(lin.wrapping_add(in_page), acc)?;
        Ok(Loc { p0, p1, n0: in_page as u8, size })
    }

    /// A data access at the current privilege level: segmentation, alignment check, paging.
    ///
    /// The alignment check (#AC: CPL 3, CR0.AM and EFLAGS.AC, a misaligned 2/4/8-byte access)
    /// comes before the page walk: a misaligned access to a page that is not present raises
    /// #AC, not #PF. That is what the host CPU does (found by the differential test), although
    /// the SDM's table of simultaneous exceptions lists #PF first.
    #[inline(always)]
    pub(crate) fn data_loc(&mut self, s: SegReg, off: u32, size: u8, write: bool) -> Res<Loc> {
        let lin = self.seg_linear(s, off, size as u32, write)?;
        let user = self.state.cpl == 3;
        if user
            && size > 1
            && lin & (size as u32 - 1) != 0
            && self.state.eflags & flags::AC != 0
            && self.state.cr0 & cr::CR0_AM != 0
        {
            return Err(exc::ac());
        }
        self.lin_loc(lin, size, if write { Access::write(user) } else { Access::read(user) })
    }

    #[inline(always)]
    pub(crate) fn loc_read(&mut self, l: Loc) -> u64 {
        if l.n0 == l.size {
            return match l.size {
                1 => self.phys_read_u8(l.p0) as u64,
                2 => self.phys_read_u16(l.p0) as u64,
                4 => self.phys_read_u32(l.p0) as u64,
                _ => self.phys_read_u32(l.p0) as u64 | (self.phys_read_u32(l.p0 + 4) as u64) << 32,
            };
        }
        let mut v = 0u64;
        for i in 0..l.size as u32 {
            let p = if i < l.n0 as u32 { l.p0 + i } else { l.p1 + (i - l.n0 as u32) };
            v |= (self.phys_read_u8(p) as u64) << (8 * i);
        }
        v
    }

    #[inline(always)]
    pub(crate) fn loc_write(&mut self, l: Loc, v: u64) {
        if l.n0 == l.size {
            return match l.size {
                1 => self.phys_write_u8(l.p0, v as u8),
                2 => self.phys_write_u16(l.p0, v as u16),
                4 => self.phys_write_u32(l.p0, v as u32),
                _ => {
                    self.phys_write_u32(l.p0, v as u32);
                    self.phys_write_u32(l.p0 + 4, (v >> 32) as u32)
                }
            };
        }
        for i in 0..l.size as u32 {
            let p = if i < l.n0 as u32 { l.p0 + i } else { l.p1 + (i - l.n0 as u32) };
            self.phys_write_u8(p, (v >> (8 * i)) as u8);
        }
    }

    // ---- data accesses through a segment, at the current privilege level ----

    #[inline(always)]
    pub(crate) fn read(&mut self, s: SegReg, off: u32, size: u8) -> Res<u32> {
        let l = self.data_loc(s, off, size, false)?;
        Ok(self.loc_read(l) as u32)
    }
    #[inline(always)]
    pub(crate) fn write(&mut self, s: SegReg, off: u32, size: u8, v: u32) -> Res<()> {
        let l = self.data_loc(s, off, size, true)?;
        self.loc_write(l, v as u64);
        Ok(())
    }
    #[inline]
    pub(crate) fn read_u8(&mut self, s: SegReg, off: u32) -> Res<u8> {
        Ok(self.read(s, off, 1)? as u8)
    }
    #[inline]
    pub(crate) fn read_u16(&mut self, s: SegReg, off: u32) -> Res<u16> {
        Ok(self.read(s, off, 2)? as u16)
    }
    #[inline]
    pub(crate) fn read_u32(&mut self, s: SegReg, off: u32) -> Res<u32> {
        self.read(s, off, 4)
    }
    #[inline]
    pub(crate) fn write_u16(&mut self, s: SegReg, off: u32, v: u16) -> Res<()> {
        self.write(s, off, 2, v as u32)
    }
    #[inline]
    pub(crate) fn write_u32(&mut self, s: SegReg, off: u32, v: u32) -> Res<()> {
        self.write(s, off, 4, v)
    }

    /// Read `dst.len()` bytes (FXSAVE images, descriptor-table operands) as one access:
    /// every page is checked before any byte is read. No alignment check.
    pub(crate) fn read_block(&mut self, s: SegReg, off: u32, dst: &mut [u8]) -> Res<()> {
        let n = dst.len() as u32;
        let lin = self.seg_linear(s, off, n, false)?;
        let user = self.state.cpl == 3;
        let mut phys = Vec::with_capacity(dst.len());
        for i in 0..n {
            let a = lin.wrapping_add(i);
            if i == 0 || a & 0xfff == 0 {
                phys.push(self.translate(a, Access::read(user))?);
            }
        }
        for (i, b) in dst.iter_mut().enumerate() {
            let a = lin.wrapping_add(i as u32);
            let page = ((a & !0xfff).wrapping_sub(lin & !0xfff) >> 12) as usize;
            *b = self.phys_read_u8((phys[page] & !0xfff) | (a & 0xfff));
        }
        Ok(())
    }

    /// Write `src` as one access: every page is checked before any byte is written.
    pub(crate) fn write_block(&mut self, s: SegReg, off: u32, src: &[u8]) -> Res<()> {
        let n = src.len() as u32;
        let lin = self.seg_linear(s, off, n, true)?;
        let user = self.state.cpl == 3;
        let mut phys = Vec::with_capacity(src.len() / 4096 + 2);
        for i in 0..n {
            let a = lin.wrapping_add(i);
            if i == 0 || a & 0xfff == 0 {
                phys.push(self.translate(a, Access::write(user))?);
            }
        }
        for (i, &b) in src.iter().enumerate() {
            let a = lin.wrapping_add(i as u32);
            let page = ((a & !0xfff).wrapping_sub(lin & !0xfff) >> 12) as usize;
            self.phys_write_u8((phys[page] & !0xfff) | (a & 0xfff), b);
        }
        Ok(())
    }

    // ---- implicit supervisor accesses (descriptor tables, IDT, TSS) by linear address ----

    pub(crate) fn sys_read_u32(&mut self, lin: u32) -> Res<u32> {
        let l = self.lin_loc(lin, 4, Access::read(false))?;
        Ok(self.loc_read(l) as u32)
    }
    pub(crate) fn sys_read_u16(&mut self, lin: u32) -> Res<u16> {
        let l = self.lin_loc(lin, 2, Access::read(false))?;
        Ok(self.loc_read(l) as u16)
    }
    pub(crate) fn sys_read_u64(&mut self, lin: u32) -> Res<u64> {
        let l = self.lin_loc(lin, 8, Access::read(false))?;
        Ok(self.loc_read(l))
    }
    pub(crate) fn sys_write_u8(&mut self, lin: u32, v: u8) -> Res<()> {
        let l = self.lin_loc(lin, 1, Access::write(false))?;
        self.loc_write(l, v as u64);
        Ok(())
    }

    /// A read of guest-linear memory with no side effects on the guest (debuggers, reports):
    /// `None` where a page is not present.
    pub fn peek_linear(&mut self, lin: u32, dst: &mut [u8]) -> Option<()> {
        for (i, b) in dst.iter_mut().enumerate() {
            let p = self.probe_translation(lin.wrapping_add(i as u32))?;
            *b = self.phys_read_u8(p);
        }
        Some(())
    }
}
