//! Segmentation: descriptors, descriptor-table lookups with the CPU's error codes, and the
//! loading of data and stack segment registers with every protection check (SDM vol. 3,
//! chapter 5; vol. 2, MOV/POP/LDS).

use crate::exc;
use crate::state::{attr, flags, SegReg, Segment};
use crate::{Bus, Cpu, Fault, Res};

/// System-descriptor types (S = 0).
pub mod sys_type {
    pub const TSS16_AVAIL: u8 = 1;
    pub const LDT: u8 = 2;
    pub const TSS16_BUSY: u8 = 3;
    pub const CALL_GATE16: u8 = 4;
    pub const TASK_GATE: u8 = 5;
    pub const INT_GATE16: u8 = 6;
    pub const TRAP_GATE16: u8 = 7;
    pub const TSS32_AVAIL: u8 = 9;
    pub const TSS32_BUSY: u8 = 11;
    pub const CALL_GATE32: u8 = 12;
    pub const INT_GATE32: u8 = 14;
    pub const TRAP_GATE32: u8 = 15;
}

/// A raw 8-byte segment or gate descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Descriptor(pub u64);

impl Descriptor {
    pub fn base(self) -> u32 {
        let d = self.0;
        (((d >> 16) & 0xff_ffff) | (((d >> 56) & 0xff) << 24)) as u32
    }
    /// The limit in bytes, scaled by the granularity bit.
    pub fn limit(self) -> u32 {
        let d = self.0;
        let raw = ((d & 0xffff) | (((d >> 48) & 0xf) << 16)) as u32;
        if d & (1 << 55) != 0 {
            (raw << 12) | 0xfff
        } else {
            raw
        }
    }
    /// Access byte and flags in the layout of [`attr`].
    pub fn attr(self) -> u16 {
        let d = self.0;
        (((d >> 40) & 0xff) | (((d >> 52) & 0xf) << 12)) as u16
    }
    pub fn present(self) -> bool {
        self.0 & (1 << 47) != 0
    }
    pub fn dpl(self) -> u8 {
        ((self.0 >> 45) & 3) as u8
    }
    /// S bit: code or data (true) or system (false).
    pub fn is_segment(self) -> bool {
        self.0 & (1 << 44) != 0
    }
    /// The 4-bit type field.
    pub fn ty(self) -> u8 {
        ((self.0 >> 40) & 0xf) as u8
    }
    pub fn is_code(self) -> bool {
        self.is_segment() && self.ty() & 8 != 0
    }
    pub fn is_data(self) -> bool {
        self.is_segment() && self.ty() & 8 == 0
    }
    pub fn conforming(self) -> bool {
        self.is_code() && self.ty() & 4 != 0
    }
    pub fn readable(self) -> bool {
        self.is_data() || (self.is_code() && self.ty() & 2 != 0)
    }
    pub fn writable(self) -> bool {
        self.is_data() && self.ty() & 2 != 0
    }
    pub fn accessed(self) -> bool {
        self.ty() & 1 != 0
    }
    /// Gate fields.
    pub fn gate_selector(self) -> u16 {
        (self.0 >> 16) as u16
    }
    pub fn gate_offset(self) -> u32 {
        ((self.0 & 0xffff) | ((self.0 >> 32) & 0xffff_0000)) as u32
    }
    pub fn gate_param_count(self) -> u8 {
        ((self.0 >> 32) & 0x1f) as u8
    }
    /// The hidden descriptor cache this descriptor loads.
    pub fn to_segment(self, selector: u16) -> Segment {
        Segment { selector, base: self.base(), limit: self.limit(), attr: self.attr() }
    }
    /// Build a descriptor (tests and loaders).
    pub fn new(base: u32, limit: u32, attr: u16) -> Descriptor {
        let (limit, g) = if limit > 0xf_ffff { (limit >> 12, 1u64) } else { (limit, 0) };
        let a = attr as u64;
        Descriptor(
            (limit as u64 & 0xffff)
                | ((base as u64 & 0xff_ffff) << 16)
                | ((a & 0xff) << 40)
                | (((limit as u64 >> 16) & 0xf) << 48)
                | (((a >> 12) & 0x7) << 52)
                | ((g | ((a >> 15) & 1)) << 55)
                | (((base as u64) >> 24) << 56),
        )
    }
}

impl<B: Bus> Cpu<B> {
    /// Linear address of the descriptor for `sel` in the GDT or LDT, after the table limit
    /// check. `err` builds the fault for a selector outside the table (its argument is the
    /// selector's error code, `sel & 0xfffc`).
    pub(crate) fn descriptor_addr(&mut self, sel: u16, err: impl Fn(u32) -> Fault) -> Res<u32> {
        let index = (sel & !7) as u32;
        let (base, limit) = if sel & 4 != 0 {
            let l = self.state.ldtr;
            if !l.present() || l.selector & !3 == 0 {
                return Err(err((sel & 0xfffc) as u32));
            }
            (l.base, l.limit)
        } else {
            (self.state.gdtr.base, self.state.gdtr.limit as u32)
        };
        if index + 7 > limit {
            return Err(err((sel & 0xfffc) as u32));
        }
        Ok(base.wrapping_add(index))
    }

    /// Read the descriptor a selector names (supervisor access, whatever the CPL).
    pub(crate) fn read_descriptor(&mut self, sel: u16, err: impl Fn(u32) -> Fault) -> Res<Descriptor> {
        let addr = self.descriptor_addr(sel, err)?;
        Ok(Descriptor(self.sys_read_u64(addr)?))
    }

    /// Set the Accessed bit of a code or data descriptor, as loading it does.
    pub(crate) fn set_accessed(&mut self, sel: u16, d: Descriptor) -> Res<()> {
        if d.is_segment() && !d.accessed() {
            let addr = self.descriptor_addr(sel, exc::gp)?;
            let byte = ((d.0 >> 40) as u8) | 1;
            self.sys_write_u8(addr + 5, byte)?;
        }
        Ok(())
    }

    /// Load a data segment register (DS, ES, FS, GS) or SS as MOV, POP, LDS/LES/LFS/LGS/LSS do.
    /// Not for CS: code-segment loads are far transfers.
    pub(crate) fn load_seg(&mut self, s: SegReg, sel: u16) -> Res<()> {
        debug_assert!(s != SegReg::Cs);
        if !self.state.protected_mode() || self.state.eflags & flags::VM != 0 {
            // Real mode and virtual-8086 mode: base = selector * 16; the limit and attributes
            // of the hidden cache stay as they were (real mode), or become those of a
            // 64 KiB data segment at DPL 3 (virtual-8086 mode).
            let seg = &mut self.state.seg[s as usize];
            seg.selector = sel;
            seg.base = (sel as u32) << 4;
            if self.state.eflags & flags::VM != 0 {
                seg.limit = 0xffff;
                seg.attr = attr::P | attr::S | attr::RW | attr::ACCESSED | (3 << attr::DPL_SHIFT);
            } else if seg.attr == 0 {
                seg.attr = attr::P | attr::S | attr::RW | attr::ACCESSED;
            }
            if s == SegReg::Ss {
                self.state.int_shadow = true;
            }
            return Ok(());
        }
        let cpl = self.state.cpl;
        let rpl = (sel & 3) as u8;
        let code = (sel & 0xfffc) as u32;
        if sel & 0xfffc == 0 {
            if s == SegReg::Ss {
                return Err(exc::gp0());
            }
            // A null selector loads an unusable segment; using it raises #GP(0).
            self.state.seg[s as usize] = Segment { selector: sel, base: 0, limit: 0, attr: 0 };
            return Ok(());
        }
        let d = self.read_descriptor(sel, exc::gp)?;
        if s == SegReg::Ss {
            if rpl != cpl || !d.writable() || d.dpl() != cpl {
                return Err(exc::gp(code));
            }
            if !d.present() {
                return Err(exc::ss(code));
            }
        } else {
            if !d.readable() {
                return Err(exc::gp(code));
            }
            if (d.is_data() || !d.conforming()) && (rpl > d.dpl() || cpl > d.dpl()) {
                return Err(exc::gp(code));
            }
            if !d.present() {
                return Err(exc::np(code));
            }
        }
        self.set_accessed(sel, d)?;
        let mut seg = d.to_segment(sel);
        seg.attr |= attr::ACCESSED;
        self.state.seg[s as usize] = seg;
        if s == SegReg::Ss {
            self.state.int_shadow = true;
        }
        Ok(())
    }
}
