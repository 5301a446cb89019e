//! Far control transfer: far JMP and CALL (direct, indirect through memory, through call
//! gates), far RET, IRET (SDM vol. 2 pseudocode of JMP, CALL, RET, IRET; vol. 3, 5.8).
//!
//! Every check (and every read of the stack frame, the descriptor tables and the TSS) is
//! made before anything is committed; pushes onto a stack that is not yet loaded go through
//! `push_to`, and the new segment registers, CPL and stack pointer are written last.
//!
//! Choices where the SDM leaves room:
//! * A 32-bit push of CS (far CALL) or SS (CALL through a 32-bit gate) writes the selector
//!   zero-extended to 32 bits ("padded with 16 high-order bits").
//! * Returning to an outer privilege level (RET, IRET) loads DS, ES, FS and GS holding a data
//!   or non-conforming code segment whose (cached) DPL is below the new CPL with a null
//!   selector (selector 0, unusable).
//! * Task switches (JMP/CALL to a TSS or task gate, IRET with NT=1) and virtual-8086 mode
//!   (IRET with VM=1 at CPL 0, IRET in virtual-8086 mode) end with `Fault::Unsupported`,
//!   after the descriptor checks that precede the switch.

use iced_x86::{Instruction, MemorySize, OpKind, Register};

use crate::exc;
use crate::seg::{sys_type, Descriptor};
use crate::state::{attr, flags, SegReg, Segment};
use crate::{Bus, Cpu, Fault, Res};

/// Whether the memory operand uses 16-bit addressing (the second part of a far pointer or
/// of a descriptor-table operand wraps at 64 KiB).
pub(super) fn mem_addr16(i: &Instruction) -> bool {
    let b = i.memory_base();
    let x = i.memory_index();
    if b != Register::None {
        b.size() == 2
    } else if x != Register::None {
        x.size() == 2
    } else {
        i.memory_displ_size() == 2
    }
}

/// Offset `off + delta` of a memory operand, wrapped as the address size says.
pub(super) fn ea_plus(i: &Instruction, off: u32, delta: u32) -> u32 {
    let a = off.wrapping_add(delta);
    if mem_addr16(i) {
        a & 0xffff
    } else {
        a
    }
}

/// The unusable segment a null selector (or the nulling on return to an outer level) leaves.
const NULL_SEG: Segment = Segment { selector: 0, base: 0, limit: 0, attr: 0 };

impl<B: Bus> Cpu<B> {
    /// The target of a far JMP/CALL: (selector, offset, operand size in bytes).
    fn far_operand(&mut self, i: &Instruction) -> Res<(u16, u32, u8)> {
        match i.op0_kind() {
            OpKind::FarBranch16 => Ok((i.far_branch_selector(), i.far_branch16() as u32, 2)),
            OpKind::FarBranch32 => Ok((i.far_branch_selector(), i.far_branch32(), 4)),
            OpKind::Memory => {
                let size = match i.memory_size() {
                    MemorySize::SegPtr16 => 2,
                    MemorySize::SegPtr32 => 4,
                    _ => return Err(exc::ud()),
                };
                let (s, off) = self.ea(i);
                let target = self.read(s, off, size)?;
                let sel = self.read_u16(s, ea_plus(i, off, size as u32))?;
                Ok((sel, target, size))
            }
            _ => Err(exc::ud()),
        }
    }

    /// Real-address or virtual-8086 mode: load CS with base = selector * 16.
    fn load_cs_real(&mut self, sel: u16) {
        let v86 = self.state.v86();
        let cs = &mut self.state.seg[SegReg::Cs as usize];
        cs.selector = sel;
        cs.base = (sel as u32) << 4;
        if v86 {
            cs.limit = 0xffff;
            cs.attr = attr::P | attr::S | attr::CODE | attr::RW | attr::ACCESSED | (3 << attr::DPL_SHIFT);
        }
    }

    /// Load CS from a checked descriptor: set its Accessed bit (the one step that can still
    /// fault), then the cache, with RPL = `cpl`, and the CPL.
    fn commit_cs(&mut self, sel: u16, d: Descriptor, cpl: u8) -> Res<()> {
        self.set_accessed(sel, d)?;
        let mut cs = d.to_segment((sel & 0xfffc) | cpl as u16);
        cs.attr |= attr::ACCESSED;
        self.state.seg[SegReg::Cs as usize] = cs;
        self.state.cpl = cpl;
        Ok(())
    }

    /// Load SS from a checked descriptor whose Accessed bit the caller has already set.
    fn commit_ss(&mut self, sel: u16, d: Descriptor) -> Segment {
        let mut ss = d.to_segment(sel);
        ss.attr |= attr::ACCESSED;
        self.state.seg[SegReg::Ss as usize] = ss;
        ss
    }

    /// Whether `count` pushes of `size` bytes starting at `sp` fit in the stack segment `ss`
    /// (the same limit rules as `push_to`).
    fn stack_fits(&self, ss: &Segment, sp: u32, size: u8, count: u32) -> bool {
        let pm = self.state.protected_mode() && !self.state.v86();
        let big = pm && ss.big();
        let mut sp = sp;
        for _ in 0..count {
            let new = if big { sp.wrapping_sub(size as u32) } else { sp.wrapping_sub(size as u32) & 0xffff };
            let last = new.wrapping_add(size as u32 - 1);
            let ok = if !pm {
                last <= ss.limit || ss.limit == 0xffff_ffff
            } else if ss.expand_down() {
                let upper = if big { 0xffff_ffff } else { 0xffff };
                new > ss.limit && last <= upper
            } else {
                last <= ss.limit && last >= new
            };
            if !ok {
                return false;
            }
            sp = new;
        }
        true
    }

    /// The current stack segment and stack pointer (masked to 16 bits on a 16-bit stack).
    fn cur_stack(&self) -> (Segment, u32, bool) {
        let big = self.state.stack32();
        let mut ss = self.state.seg[SegReg::Ss as usize];
        if !big {
            ss.attr &= !attr::DB;
        }
        let sp = if big { self.state.gpr[4] } else { self.state.gpr[4] & 0xffff };
        (ss, sp, big)
    }

    /// Direct far JMP/CALL to a code segment: the privilege and presence checks.
    fn check_direct_code(&self, sel: u16, d: Descriptor) -> Res<()> {
        let cpl = self.state.cpl;
        let code = (sel & 0xfffc) as u32;
        if d.conforming() {
            if d.dpl() > cpl {
                return Err(exc::gp(code));
            }
        } else if (sel & 3) as u8 > cpl || d.dpl() != cpl {
            return Err(exc::gp(code));
        }
        if !d.present() {
            return Err(exc::np(code));
        }
        Ok(())
    }

    /// Checks common to far JMP and CALL on a call gate: gate DPL and presence, then the
    /// code-segment selector it holds. Returns that selector and its descriptor.
    fn check_call_gate(&mut self, sel: u16, gate: Descriptor) -> Res<(u16, Descriptor)> {
        let cpl = self.state.cpl;
        let rpl = (sel & 3) as u8;
        let code = (sel & 0xfffc) as u32;
        if gate.dpl() < cpl || gate.dpl() < rpl {
            return Err(exc::gp(code));
        }
        if !gate.present() {
            return Err(exc::np(code));
        }
        let csel = gate.gate_selector();
        if csel & 0xfffc == 0 {
            return Err(exc::gp0());
        }
        let cd = self.read_descriptor(csel, exc::gp)?;
        Ok((csel, cd))
    }

    /// JMP/CALL to a TSS or a task gate: the checks before the task switch, then Unsupported.
    fn far_to_task(&mut self, sel: u16, d: Descriptor) -> Res<()> {
        let cpl = self.state.cpl;
        let rpl = (sel & 3) as u8;
        let code = (sel & 0xfffc) as u32;
        let busy = matches!(d.ty(), sys_type::TSS16_BUSY | sys_type::TSS32_BUSY);
        if d.dpl() < cpl || d.dpl() < rpl || busy {
            return Err(exc::gp(code));
        }
        if !d.present() {
            return Err(exc::np(code));
        }
        Err(Fault::Unsupported("task switch"))
    }

    pub(super) fn jmp_far(&mut self, i: &Instruction) -> Res<()> {
        let (sel, off, size) = self.far_operand(i)?;
        let target = if size == 2 { off & 0xffff } else { off };
        if !self.state.protected_mode() || self.state.v86() {
            if target > self.state.seg[SegReg::Cs as usize].limit {
                return Err(exc::gp0());
            }
            self.load_cs_real(sel);
            self.next_eip = target;
            return Ok(());
        }
        if sel & 0xfffc == 0 {
            return Err(exc::gp0());
        }
        let cpl = self.state.cpl;
        let code = (sel & 0xfffc) as u32;
        let d = self.read_descriptor(sel, exc::gp)?;
        if d.is_code() {
            self.check_direct_code(sel, d)?;
            if target > d.limit() {
                return Err(exc::gp0());
            }
            self.commit_cs(sel, d, cpl)?;
            self.next_eip = target;
            return Ok(());
        }
        if d.is_segment() {
            return Err(exc::gp(code));
        }
        match d.ty() {
            sys_type::CALL_GATE16 | sys_type::CALL_GATE32 => {
                let (csel, cd) = self.check_call_gate(sel, d)?;
                let ccode = (csel & 0xfffc) as u32;
                if !cd.is_code() || (cd.conforming() && cd.dpl() > cpl) || (!cd.conforming() && cd.dpl() != cpl) {
                    return Err(exc::gp(ccode));
                }
                if !cd.present() {
                    return Err(exc::np(ccode));
                }
                let mut eip = d.gate_offset();
                if d.ty() == sys_type::CALL_GATE16 {
                    eip &= 0xffff;
                }
                if eip > cd.limit() {
                    return Err(exc::gp0());
                }
                self.commit_cs(csel, cd, cpl)?;
                self.next_eip = eip;
                Ok(())
            }
            sys_type::TASK_GATE
            | sys_type::TSS16_AVAIL
            | sys_type::TSS32_AVAIL
            | sys_type::TSS16_BUSY
            | sys_type::TSS32_BUSY => self.far_to_task(sel, d),
            _ => Err(exc::gp(code)),
        }
    }

    pub(super) fn call_far(&mut self, i: &Instruction) -> Res<()> {
        let (sel, off, size) = self.far_operand(i)?;
        let target = if size == 2 { off & 0xffff } else { off };
        let old_cs = self.state.seg[SegReg::Cs as usize].selector as u32;
        let ret = self.next_eip;
        let (ss, mut sp, big) = self.cur_stack();
        let cpl = self.state.cpl;

        if !self.state.protected_mode() || self.state.v86() {
            if !self.stack_fits(&ss, sp, size, 2) {
                return Err(exc::ss(0));
            }
            if target > self.state.seg[SegReg::Cs as usize].limit {
                return Err(exc::gp0());
            }
            self.push_to(&ss, &mut sp, size, old_cs, cpl, || exc::ss(0))?;
            self.push_to(&ss, &mut sp, size, ret, cpl, || exc::ss(0))?;
            self.set_sp(sp, big);
            self.load_cs_real(sel);
            self.next_eip = target;
            return Ok(());
        }
        if sel & 0xfffc == 0 {
            return Err(exc::gp0());
        }
        let code = (sel & 0xfffc) as u32;
        let d = self.read_descriptor(sel, exc::gp)?;
        if d.is_code() {
            self.check_direct_code(sel, d)?;
            if !self.stack_fits(&ss, sp, size, 2) {
                return Err(exc::ss(0));
            }
            if target > d.limit() {
                return Err(exc::gp0());
            }
            self.push_to(&ss, &mut sp, size, old_cs, cpl, || exc::ss(0))?;
            self.push_to(&ss, &mut sp, size, ret, cpl, || exc::ss(0))?;
            self.commit_cs(sel, d, cpl)?;
            self.set_sp(sp, big);
            self.next_eip = target;
            return Ok(());
        }
        if d.is_segment() {
            return Err(exc::gp(code));
        }
        match d.ty() {
            sys_type::CALL_GATE16 | sys_type::CALL_GATE32 => self.call_gate(d, sel, old_cs, ret),
            sys_type::TASK_GATE
            | sys_type::TSS16_AVAIL
            | sys_type::TSS32_AVAIL
            | sys_type::TSS16_BUSY
            | sys_type::TSS32_BUSY => self.far_to_task(sel, d),
            _ => Err(exc::gp(code)),
        }
    }

    /// CALL through a call gate: same privilege, or a more privileged non-conforming code
    /// segment with a stack switch through the TSS and the copy of the gate's parameters.
    fn call_gate(&mut self, gate: Descriptor, sel: u16, old_cs: u32, ret: u32) -> Res<()> {
        let cpl = self.state.cpl;
        let (csel, cd) = self.check_call_gate(sel, gate)?;
        let ccode = (csel & 0xfffc) as u32;
        if !cd.is_code() || cd.dpl() > cpl {
            return Err(exc::gp(ccode));
        }
        if !cd.present() {
            return Err(exc::np(ccode));
        }
        let gate32 = gate.ty() == sys_type::CALL_GATE32;
        let psize: u8 = if gate32 { 4 } else { 2 };
        let eip = if gate32 { gate.gate_offset() } else { gate.gate_offset() & 0xffff };
        let (ss, mut sp, big) = self.cur_stack();

        if cd.conforming() || cd.dpl() == cpl {
            if !self.stack_fits(&ss, sp, psize, 2) {
                return Err(exc::ss(0));
            }
            if eip > cd.limit() {
                return Err(exc::gp0());
            }
            self.push_to(&ss, &mut sp, psize, old_cs, cpl, || exc::ss(0))?;
            self.push_to(&ss, &mut sp, psize, ret, cpl, || exc::ss(0))?;
            self.commit_cs(csel, cd, cpl)?;
            self.set_sp(sp, big);
            self.next_eip = eip;
            return Ok(());
        }

        // More privileged: the new stack comes from the TSS.
        let dpl = cd.dpl();
        let (nss_sel, nesp) = self.tss_stack(dpl, 0)?;
        if nss_sel & 0xfffc == 0 {
            return Err(exc::ts(0));
        }
        let sscode = (nss_sel & 0xfffc) as u32;
        let sd = self.read_descriptor(nss_sel, exc::ts)?;
        if (nss_sel & 3) as u8 != dpl || sd.dpl() != dpl || !sd.writable() {
            return Err(exc::ts(sscode));
        }
        if !sd.present() {
            return Err(exc::ss(sscode));
        }
        let nss = sd.to_segment(nss_sel);
        let mut nsp = if nss.big() { nesp } else { nesp & 0xffff };
        let count = gate.gate_param_count() as u32;
        if !self.stack_fits(&nss, nsp, psize, count + 4) {
            return Err(exc::ss(sscode));
        }
        if eip > cd.limit() {
            return Err(exc::gp0());
        }
        // The parameters, read from the old stack at the old privilege level.
        let mut params = [0u32; 32];
        for (k, p) in params.iter_mut().enumerate().take(count as usize) {
            let a = sp.wrapping_add(k as u32 * psize as u32);
            let a = if big { a } else { a & 0xffff };
            *p = self.read(SegReg::Ss, a, psize)?;
        }
        let fail = || exc::ss(sscode);
        self.push_to(&nss, &mut nsp, psize, ss.selector as u32, dpl, fail)?;
        self.push_to(&nss, &mut nsp, psize, self.state.gpr[4], dpl, fail)?;
        for k in (0..count as usize).rev() {
            self.push_to(&nss, &mut nsp, psize, params[k], dpl, fail)?;
        }
        self.push_to(&nss, &mut nsp, psize, old_cs, dpl, fail)?;
        self.push_to(&nss, &mut nsp, psize, ret, dpl, fail)?;
        self.set_accessed(nss_sel, sd)?;
        self.commit_cs(csel, cd, dpl)?;
        let nss = self.commit_ss(nss_sel, sd);
        self.set_sp(nsp, nss.big());
        self.next_eip = eip;
        Ok(())
    }

    /// The checks on the CS selector of a far RET or IRET frame (protected mode). Returns
    /// its descriptor.
    fn check_return_cs(&mut self, sel: u16) -> Res<Descriptor> {
        if sel & 0xfffc == 0 {
            return Err(exc::gp0());
        }
        let code = (sel & 0xfffc) as u32;
        let rpl = (sel & 3) as u8;
        let d = self.read_descriptor(sel, exc::gp)?;
        if !d.is_code() || rpl < self.state.cpl {
            return Err(exc::gp(code));
        }
        if d.conforming() {
            if d.dpl() > rpl {
                return Err(exc::gp(code));
            }
        } else if d.dpl() != rpl {
            return Err(exc::gp(code));
        }
        if !d.present() {
            return Err(exc::np(code));
        }
        Ok(d)
    }

    /// The checks on the SS selector of a return to an outer privilege level `rpl`.
    fn check_return_ss(&mut self, sel: u16, rpl: u8) -> Res<Descriptor> {
        if sel & 0xfffc == 0 {
            return Err(exc::gp0());
        }
        let code = (sel & 0xfffc) as u32;
        let d = self.read_descriptor(sel, exc::gp)?;
        if (sel & 3) as u8 != rpl || !d.writable() || d.dpl() != rpl {
            return Err(exc::gp(code));
        }
        if !d.present() {
            return Err(exc::ss(code));
        }
        Ok(d)
    }

    /// After a return to the outer level `cpl`: DS, ES, FS and GS holding a data or
    /// non-conforming code segment more privileged than `cpl` become null.
    fn null_inaccessible_segments(&mut self, cpl: u8) {
        for s in [SegReg::Es, SegReg::Ds, SegReg::Fs, SegReg::Gs] {
            if self.state.seg[s as usize].nulled_by_return_to(cpl) {
                self.state.seg[s as usize] = NULL_SEG;
            }
        }
    }

    pub(super) fn retf(&mut self, i: &Instruction) -> Res<()> {
        let size = self.osize(i);
        let imm = if i.op_count() > 0 { i.immediate16() as u32 } else { 0 };
        let mut eip = self.stack_peek(0, size)?;
        if size == 2 {
            eip &= 0xffff;
        }
        let sel = self.stack_peek(size as u32, size)? as u16;
        let (_, sp, big) = self.cur_stack();
        let popped = sp.wrapping_add(2 * size as u32).wrapping_add(imm);

        if !self.state.protected_mode() || self.state.v86() {
            if eip > self.state.seg[SegReg::Cs as usize].limit {
                return Err(exc::gp0());
            }
            self.load_cs_real(sel);
            self.set_sp(popped, big);
            self.next_eip = eip;
            return Ok(());
        }
        let d = self.check_return_cs(sel)?;
        let rpl = (sel & 3) as u8;
        if rpl > self.state.cpl {
            let delta = 2 * size as u32 + imm;
            let mut new_esp = self.stack_peek(delta, size)?;
            if size == 2 {
                new_esp &= 0xffff;
            }
            let ss_sel = self.stack_peek(delta + size as u32, size)? as u16;
            let sd = self.check_return_ss(ss_sel, rpl)?;
            if eip > d.limit() {
                return Err(exc::gp0());
            }
            self.set_accessed(ss_sel, sd)?;
            self.commit_cs(sel, d, rpl)?;
            let ss = self.commit_ss(ss_sel, sd);
            self.set_sp(new_esp.wrapping_add(imm), ss.big());
            self.null_inaccessible_segments(rpl);
        } else {
            if eip > d.limit() {
                return Err(exc::gp0());
            }
            self.commit_cs(sel, d, self.state.cpl)?;
            self.set_sp(popped, big);
        }
        self.next_eip = eip;
        Ok(())
    }

    pub(super) fn iret(&mut self, i: &Instruction) -> Res<()> {
        let size = self.osize(i);
        let s = size as u32;
        if self.state.protected_mode() && self.state.v86() {
            return Err(Fault::Unsupported("IRET in virtual-8086 mode"));
        }
        if self.state.protected_mode() && self.state.eflags & flags::NT != 0 {
            return Err(Fault::Unsupported("IRET with NT=1 (task return: task switch)"));
        }
        let mut eip = self.stack_peek(0, size)?;
        if size == 2 {
            eip &= 0xffff;
        }
        let sel = self.stack_peek(s, size)? as u16;
        let fl = self.stack_peek(2 * s, size)?;
        let (_, sp, big) = self.cur_stack();
        let old = self.state.eflags;

        if !self.state.protected_mode() {
            if eip > self.state.seg[SegReg::Cs as usize].limit {
                return Err(exc::gp0());
            }
            let new = if size == 4 {
                (fl & 0x257fd5) | (old & 0x1a_0000)
            } else {
                (old & 0xffff_0000) | (fl & 0xffff)
            };
            self.load_cs_real(sel);
            self.set_sp(sp.wrapping_add(3 * s), big);
            self.state.eflags = (new & flags::IMPLEMENTED) | flags::FIXED1;
            self.next_eip = eip;
            return Ok(());
        }

        let cpl = self.state.cpl;
        if size == 4 && fl & flags::VM != 0 && cpl == 0 {
            return Err(Fault::Unsupported("IRET to virtual-8086 mode"));
        }
        let d = self.check_return_cs(sel)?;
        let rpl = (sel & 3) as u8;
        let outer = if rpl > cpl {
            let mut new_esp = self.stack_peek(3 * s, size)?;
            if size == 2 {
                new_esp &= 0xffff;
            }
            let ss_sel = self.stack_peek(4 * s, size)? as u16;
            let sd = self.check_return_ss(ss_sel, rpl)?;
            Some((new_esp, ss_sel, sd))
        } else {
            None
        };
        if eip > d.limit() {
            return Err(exc::gp0());
        }

        let mut mask = flags::STATUS | flags::TF | flags::DF | flags::NT;
        if size == 4 {
            mask |= flags::RF | flags::AC | flags::ID;
        }
        if cpl <= self.state.iopl() {
            mask |= flags::IF;
        }
        if cpl == 0 {
            mask |= flags::IOPL;
            if size == 4 {
                mask |= flags::VM | flags::VIF | flags::VIP;
            }
        }
        let new_flags = (((old & !mask) | (fl & mask)) & flags::IMPLEMENTED) | flags::FIXED1;

        match outer {
            Some((new_esp, ss_sel, sd)) => {
                self.set_accessed(ss_sel, sd)?;
                self.commit_cs(sel, d, rpl)?;
                let ss = self.commit_ss(ss_sel, sd);
                self.set_sp(new_esp, ss.big());
                self.null_inaccessible_segments(rpl);
            }
            None => {
                self.commit_cs(sel, d, cpl)?;
                self.set_sp(sp.wrapping_add(3 * s), big);
            }
        }
        self.state.eflags = new_flags;
        self.next_eip = eip;
        Ok(())
    }
}
