//! Event delivery: exceptions, external interrupts and software interrupts through the IVT
//! (real mode) or the IDT (protected mode) with every gate and descriptor check, the stack
//! switch through the TSS, and the double- and triple-fault rules (SDM vol. 3, 6.12-6.15).
//!
//! This is the one implementation of delivery in `vmm`: the monitor's engines reflect guest
//! exceptions and inject interrupts through [`Cpu::inject_exception`] and
//! [`Cpu::inject_interrupt`], which come here.

use crate::exc;
use crate::mmu::Access;
use crate::seg::sys_type;
use crate::state::{attr, flags, vector, SegReg, Segment};
use crate::{Bus, Cpu, Exit, Fault, Res};

/// What kind of event is being delivered: it decides the gate-DPL check and the EXT bit of
/// error codes raised during delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// An interrupt from the INTR line (EXT = 1, no DPL check).
    External,
    /// A processor exception (EXT = 1, no DPL check).
    Exception,
    /// INT n (EXT = 0, gate DPL must be >= CPL).
    SoftwareInt,
    /// INT3 and INTO: software exceptions (EXT = 0, gate DPL check).
    SoftwareException,
}

/// The mnemonic of an exception vector (`#PF`), or `int 0xNN` for others.
pub fn name(v: u8) -> String {
    const N: [&str; 20] = [
        "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "#MF(9)", "#TS", "#NP", "#SS", "#GP", "#PF",
        "#15", "#MF", "#AC", "#MC", "#XM",
    ];
    match N.get(v as usize) {
        Some(s) => s.to_string(),
        None => format!("int {v:#04x}"),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Benign,
    Contributory,
    PageFault,
}

fn class(v: u8) -> Class {
    match v {
        0 | 10 | 11 | 12 | 13 => Class::Contributory,
        14 => Class::PageFault,
        _ => Class::Benign,
    }
}

impl<B: Bus> Cpu<B> {
    /// Deliver an event; on a fault during delivery apply the double-fault rules. Returns an
    /// exit only for a triple fault, an intercepted nested exception, or an unsupported path
    /// (task gates, virtual-8086 mode).
    pub(crate) fn deliver_event(&mut self, v: u8, error: Option<u32>, kind: EventKind) -> Option<Exit> {
        let (mut v, mut error, mut kind) = (v, error, kind);
        let first = v;
        loop {
            match self.deliver_once(v, error, kind) {
                Ok(()) => return None,
                Err(Fault::Unsupported(reason)) => {
                    return Some(Exit::Unsupported {
                        eip: self.state.eip,
                        reason,
                        instruction: format!("delivery of {}", name(v)),
                    })
                }
                Err(Fault::Exc(e2)) => {
                    if v == vector::DF && kind == EventKind::Exception {
                        return Some(Exit::TripleFault { first, second: e2.vector });
                    }
                    if self.intercept & (1 << e2.vector) != 0 {
                        return Some(Exit::Exception {
                            vector: e2.vector,
                            error_code: e2.error,
                            cr2: self.state.cr2,
                            eip: self.state.eip,
                        });
                    }
                    let c1 = if kind == EventKind::Exception { class(v) } else { Class::Benign };
                    let c2 = class(e2.vector);
                    let double = match c1 {
                        Class::Contributory => c2 == Class::Contributory,
                        Class::PageFault => c2 != Class::Benign,
                        Class::Benign => false,
                    };
                    if double {
                        v = vector::DF;
                        error = Some(0);
                    } else {
                        v = e2.vector;
                        error = e2.error;
                    }
                    kind = EventKind::Exception;
                }
            }
        }
    }

    /// INT n, INT3, INTO, INT1 from an instruction handler. The return address pushed is the
    /// next instruction's; a fault during delivery is reported at the INT instruction itself
    /// (the caller returns the fault and the ordinary fault path delivers it). If the vector
    /// is intercepted, the gate checks still happen (an INT n the guest's IDT forbids at this
    /// CPL raises #GP) and the run then ends with [`Exit::Exception`] after the instruction.
    pub(crate) fn software_interrupt(&mut self, v: u8, kind: EventKind) -> Res<()> {
        if self.intercept & (1u32.checked_shl(v as u32).unwrap_or(0)) != 0 {
            self.check_soft_gate(v, kind)?;
            self.pending_exit =
                Some(Exit::Exception { vector: v, error_code: None, cr2: self.state.cr2, eip: self.next_eip });
            return Ok(());
        }
        let here = self.state.eip;
        self.state.eip = self.next_eip;
        match self.deliver_once(v, None, kind) {
            Ok(()) => {
                self.next_eip = self.state.eip;
                if self.report & (1u32.checked_shl(v as u32).unwrap_or(0)) != 0 {
                    self.pending_exit = Some(Exit::Delivered { vector: v, error_code: None });
                }
                Ok(())
            }
            Err(f) => {
                self.state.eip = here;
                Err(f)
            }
        }
    }

    /// The IDT checks a software interrupt makes before anything else: limit, gate type and
    /// gate DPL against CPL (protected mode only).
    fn check_soft_gate(&mut self, v: u8, kind: EventKind) -> Res<()> {
        if !self.state.protected_mode() || self.state.v86() {
            return Ok(());
        }
        let ext = if kind == EventKind::External || kind == EventKind::Exception { 1 } else { 0 };
        let off = v as u32 * 8;
        if off + 7 > self.state.idtr.limit as u32 {
            return Err(exc::gp(off + 2 + ext));
        }
        let gate = crate::seg::Descriptor(self.sys_read_u64(self.state.idtr.base.wrapping_add(off))?);
        let ok_type = !gate.is_segment()
            && matches!(
                gate.ty(),
                sys_type::INT_GATE32 | sys_type::TRAP_GATE32 | sys_type::INT_GATE16 | sys_type::TRAP_GATE16 | sys_type::TASK_GATE
            );
        if !ok_type {
            return Err(exc::gp(off + 2 + ext));
        }
        if matches!(kind, EventKind::SoftwareInt | EventKind::SoftwareException) && gate.dpl() < self.state.cpl {
            return Err(exc::gp(off + 2));
        }
        if !gate.present() {
            return Err(exc::np(off + 2 + ext));
        }
        Ok(())
    }

    fn deliver_once(&mut self, v: u8, error: Option<u32>, kind: EventKind) -> Res<()> {
        if !self.state.protected_mode() {
            return self.deliver_real(v);
        }
        if self.state.v86() {
            return Err(Fault::Unsupported("interrupt delivery in virtual-8086 mode"));
        }
        let ext = match kind {
            EventKind::External | EventKind::Exception => 1,
            _ => 0,
        };
        let idt = self.state.idtr;
        let off = v as u32 * 8;
        if off + 7 > idt.limit as u32 {
            return Err(exc::gp(off + 2 + ext));
        }
        let gate = crate::seg::Descriptor(self.sys_read_u64(idt.base.wrapping_add(off))?);
        let gtype = if gate.is_segment() { 0 } else { gate.ty() };
        let gate32 = match gtype {
            sys_type::INT_GATE32 | sys_type::TRAP_GATE32 => true,
            sys_type::INT_GATE16 | sys_type::TRAP_GATE16 => false,
            sys_type::TASK_GATE => {
                if !gate.present() {
                    return Err(exc::np(off + 2 + ext));
                }
                return Err(Fault::Unsupported("task gate in the IDT (task switch)"));
            }
            _ => return Err(exc::gp(off + 2 + ext)),
        };
        if matches!(kind, EventKind::SoftwareInt | EventKind::SoftwareException) && gate.dpl() < self.state.cpl {
            return Err(exc::gp(off + 2));
        }
        if !gate.present() {
            return Err(exc::np(off + 2 + ext));
        }
        let interrupt_gate = gtype == sys_type::INT_GATE32 || gtype == sys_type::INT_GATE16;
        let sel = gate.gate_selector();
        let offset = if gate32 { gate.gate_offset() } else { gate.gate_offset() & 0xffff };
        if sel & 0xfffc == 0 {
            return Err(exc::gp(ext));
        }
        let selcode = (sel & 0xfffc) as u32 + ext;
        let cd = self.read_descriptor(sel, |_| exc::gp(selcode))?;
        if !cd.is_code() || cd.dpl() > self.state.cpl {
            return Err(exc::gp(selcode));
        }
        if !cd.present() {
            return Err(exc::np(selcode));
        }
        let cpl = self.state.cpl;
        let dpl = cd.dpl();
        let old_cs = self.state.seg[SegReg::Cs as usize].selector;
        let old_eip = self.state.eip;
        let old_eflags = self.state.eflags;
        let psize = if gate32 { 4 } else { 2 };
        let mut new_cs = cd.to_segment(sel);

        if !cd.conforming() && dpl < cpl {
            // Inter-privilege: the new stack comes from the TSS.
            let (nss_sel, nesp) = self.tss_stack(dpl, ext)?;
            let ss_code = (nss_sel & 0xfffc) as u32 + ext;
            if nss_sel & 0xfffc == 0 {
                return Err(exc::ts(ext));
            }
            if (nss_sel & 3) as u8 != dpl {
                return Err(exc::ts(ss_code));
            }
            let sd = self.read_descriptor(nss_sel, |_| exc::ts(ss_code))?;
            if sd.dpl() != dpl || !sd.writable() {
                return Err(exc::ts(ss_code));
            }
            if !sd.present() {
                return Err(exc::ss(ss_code));
            }
            let nss = sd.to_segment(nss_sel);
            let old_ss = self.state.seg[SegReg::Ss as usize].selector;
            let old_esp = self.state.gpr[4];
            let mut sp = nesp;
            let vals = [old_ss as u32, old_esp, old_eflags, old_cs as u32, old_eip, error.unwrap_or(0)];
            for &val in &vals[..5 + usize::from(error.is_some())] {
                self.push_to(&nss, &mut sp, psize, val, dpl, || exc::ss(ss_code))?;
            }
            if offset > new_cs.limit {
                return Err(exc::gp(ext));
            }
            self.set_accessed(nss_sel, sd)?;
            self.set_accessed(sel, cd)?;
            let mut nss = nss;
            nss.attr |= attr::ACCESSED;
            self.state.seg[SegReg::Ss as usize] = nss;
            self.set_sp(sp, nss.big());
        } else if cd.conforming() || dpl == cpl {
            let ss = self.state.seg[SegReg::Ss as usize];
            let mut sp = if ss.big() { self.state.gpr[4] } else { self.state.gpr[4] & 0xffff };
            let vals = [old_eflags, old_cs as u32, old_eip, error.unwrap_or(0)];
            for &val in &vals[..3 + usize::from(error.is_some())] {
                self.push_to(&ss, &mut sp, psize, val, cpl, || exc::ss(ext))?;
            }
            if offset > new_cs.limit {
                return Err(exc::gp(ext));
            }
            self.set_accessed(sel, cd)?;
            self.set_sp(sp, ss.big());
        } else {
            return Err(exc::gp(selcode));
        }
        let new_cpl = if cd.conforming() { cpl } else { dpl };
        new_cs.selector = (sel & 0xfffc) | new_cpl as u16;
        new_cs.attr |= attr::ACCESSED;
        self.state.seg[SegReg::Cs as usize] = new_cs;
        self.state.cpl = new_cpl;
        self.state.eip = offset;
        self.state.eflags &= !(flags::TF | flags::NT | flags::RF | flags::VM);
        if interrupt_gate {
            self.state.eflags &= !flags::IF;
        }
        self.state.halted = false;
        Ok(())
    }

    /// Real-mode delivery through the interrupt vector table.
    fn deliver_real(&mut self, v: u8) -> Res<()> {
        let off = v as u32 * 4;
        if off + 3 > self.state.idtr.limit as u32 {
            return Err(exc::gp0());
        }
        let base = self.state.idtr.base.wrapping_add(off);
        let ip = self.sys_read_u16(base)?;
        let cs = self.sys_read_u16(base.wrapping_add(2))?;
        let ss = self.state.seg[SegReg::Ss as usize];
        let mut sp = self.state.gpr[4] & 0xffff;
        let vals = [self.state.eflags & 0xffff, self.state.seg[SegReg::Cs as usize].selector as u32, self.state.eip];
        for val in vals {
            self.push_to(&ss, &mut sp, 2, val, 0, || exc::ss(0))?;
        }
        self.set_sp(sp, false);
        let seg = &mut self.state.seg[SegReg::Cs as usize];
        seg.selector = cs;
        seg.base = (cs as u32) << 4;
        self.state.eip = ip as u32;
        self.state.eflags &= !(flags::IF | flags::TF | flags::AC | flags::RF);
        self.state.halted = false;
        Ok(())
    }

    /// SS:ESP for privilege level `dpl` from the current TSS.
    pub(crate) fn tss_stack(&mut self, dpl: u8, ext: u32) -> Res<(u16, u32)> {
        let tr = self.state.tr;
        let trcode = (tr.selector & 0xfffc) as u32 + ext;
        let ty = tr.system_type();
        if !tr.present() {
            return Err(exc::ts(trcode));
        }
        if ty == sys_type::TSS32_BUSY || ty == sys_type::TSS32_AVAIL {
            let off = 4 + 8 * dpl as u32;
            if off + 5 > tr.limit {
                return Err(exc::ts(trcode));
            }
            let esp = self.sys_read_u32(tr.base.wrapping_add(off))?;
            let ss = self.sys_read_u16(tr.base.wrapping_add(off + 4))?;
            Ok((ss, esp))
        } else {
            let off = 2 + 4 * dpl as u32;
            if off + 3 > tr.limit {
                return Err(exc::ts(trcode));
            }
            let sp = self.sys_read_u16(tr.base.wrapping_add(off))? as u32;
            let ss = self.sys_read_u16(tr.base.wrapping_add(off + 2))?;
            Ok((ss, sp))
        }
    }

    /// Push `size` bytes of `val` onto the stack described by `ss` (not necessarily the
    /// loaded SS), at privilege `pl`, moving `sp` (kept to 16 bits on a 16-bit stack).
    /// Memory is written; no register changes.
    pub(crate) fn push_to(
        &mut self,
        ss: &Segment,
        sp: &mut u32,
        size: u8,
        val: u32,
        pl: u8,
        fail: impl Fn() -> Fault,
    ) -> Res<()> {
        let new = if ss.big() { sp.wrapping_sub(size as u32) } else { sp.wrapping_sub(size as u32) & 0xffff };
        let last = new.wrapping_add(size as u32 - 1);
        let ok = if !self.state.protected_mode() {
            last <= ss.limit || ss.limit == 0xffff_ffff
        } else if ss.expand_down() {
            let upper = if ss.big() { 0xffff_ffff } else { 0xffff };
            new > ss.limit && last <= upper
        } else {
            last <= ss.limit && last >= new
        };
        if !ok {
            return Err(fail());
        }
        let lin = ss.base.wrapping_add(new);
        let l = self.lin_loc(lin, size, Access::write(pl == 3))?;
        self.loc_write(l, val as u64);
        *sp = new;
        Ok(())
    }

    /// Set ESP (32-bit stack) or SP (16-bit stack, upper half of ESP kept).
    #[inline]
    pub(crate) fn set_sp(&mut self, sp: u32, big: bool) {
        if big {
            self.state.gpr[4] = sp;
        } else {
            self.state.gpr[4] = (self.state.gpr[4] & 0xffff_0000) | (sp & 0xffff);
        }
    }
}
