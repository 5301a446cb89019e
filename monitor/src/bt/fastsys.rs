//! System calls without a callout, the runtime half (scanner's `mangle/syscall.rs` emits the
//! sequences; docs/bt.md, "System calls without a callout").
//!
//! Translated user code makes `INT n` inline, and translated kernel code `IRETD` back to user
//! code, when the block at `Abi::fsys` describes what they would do. This module fills the
//! block before each entry into the TC and follows what the sequences did after each exit:
//!
//! * **INT** (one vector: the last one user code called out with): the gate is a present
//!   32-bit interrupt or trap gate of DPL 3 to a present, accessed, non-conforming 32-bit
//!   code segment of DPL 0 in the GDT whose limit covers the offset; the TSS is a present
//!   32-bit TSS whose SS0 is a present, accessed, writable, expand-up 32-bit data segment of
//!   DPL 0 (RPL 0) in the GDT with room for the five-dword frame below ESP0. Nothing of the
//!   delivery can fail then but the frame's writes, whose faults make the runtime execute the
//!   INT itself (`Recovery::emulate`). The kernel lookup table must hold the handler's mode.
//! * **IRETD** to user code: to one user CS (present, accessed, non-conforming 32-bit code of
//!   DPL 3 with a 4 GiB limit) and one user data selector (present, accessed, writable,
//!   expand-up 32-bit data of DPL 3, base 0, 4 GiB limit) for SS, with DS ES FS each that
//!   selector or a null one and GS one that IRET does not null: the selectors the guest was
//!   last seen at CPL 3 with. The user lookup table must hold the user mode in this address
//!   space (checked since the last CR3 change), and entering user mode must unmap nothing
//!   (`ShadowMmu::user_entry_unmaps_nothing`).
//! * **Watching**: the bytes validation read (the gate, the four descriptors, TSS.ESP0/SS0)
//!   are in write-protected frames, as the selector table's (`segs.rs`): a guest write that
//!   overlaps them empties the block; CR3 writes and INVLPGs have the pages walked again.
//! * **Following**: the sequences write `fsys::VCPL`. After an exit, a value other than the
//!   guest's CPL means the TC changed privilege: the CPL, CS and SS become what the validated
//!   descriptors give (DS ES FS come back from their host selectors, `segs.rs`), and the
//!   shadow MMU's user mode follows.

use rustc_hash::FxHashSet as HashSet;

use vmm_interp::seg::{sys_type, Descriptor};
use vmm_interp::state::{attr, cr, SegReg, Segment};
use vmm_scanner::abi::fsys;
use vmm_scanner::Mode;

use super::{gs_flat, Bt};
use crate::direct::Direct;

/// A validated INT path.
#[derive(Clone, Copy, Debug)]
struct IntPath {
    vector: u8,
    cs: Segment,
    ss: Segment,
    esp0: u32,
    eip: u32,
    trap: bool,
    cs_host: u16,
    ss_host: u16,
    /// The mode after the INT (the kernel lookup table's).
    mode: Mode,
}

/// A validated IRETD target.
#[derive(Clone, Copy, Debug)]
struct RetPath {
    cs: Segment,
    usel: Segment,
    usel_host: u16,
    /// The user mode after the IRETD, but for `Mode::user_gs` (GS may change between entries).
    mode: Mode,
}

/// What validation depended on, besides memory (watched) and paging (walked again).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Key {
    gdtr: (u32, u16),
    idtr: (u32, u16),
    tr: (u16, u32, u32, u16),
    cr0: u32,
    cr4: u32,
    /// Where user-mode shadows are truncated.
    top: u32,
    vector: Option<u8>,
    user: Option<(u16, u16)>,
}

/// The block's bookkeeping.
#[derive(Default)]
pub struct FastSys {
    key: Option<Key>,
    int: Option<IntPath>,
    ret: Option<RetPath>,
    /// (linear page, frame, first byte, end) of every piece of guest memory validation read.
    pieces: Vec<(u32, u32, u32, u32)>,
    /// Their frames, write-protected while the block relies on them.
    pub(crate) frames: HashSet<u32>,
    /// (CR3, INVLPGs executed) when the pieces were last walked.
    walk: (u32, u64),
    /// The vector of the last `INT n` user code called out with.
    pub(crate) want_vector: Option<u8>,
    /// CS and SS last seen at CPL 3.
    want_user: Option<(u16, u16)>,
    /// The sequences' counters as last read.
    seen: (u32, u32),
    /// The last validation refused a candidate path, and how many times in a row: what it
    /// refused may change without a change of the key (the interpreter setting an Accessed
    /// bit, writing a TSS field while emulating a callout): the INT and IRETD callouts ask
    /// for a validation again, at exponentially spaced ones.
    refused: u32,
    retry_count: u32,
    /// Inline INTs and IRETDs, validations, emptyings.
    pub ints: u64,
    pub irets: u64,
    pub validations: u64,
    pub drops: u64,
}

impl Bt {
    fn fw32(&mut self, off: u32, v: u32) {
        let at = self.abi.fsys + off;
        self.vw32(at, v);
    }

    fn fr32(&mut self, off: u32) -> u32 {
        let at = self.abi.fsys + off;
        self.vr32(at)
    }

    /// Empties the block (the sequences take their callouts); returns the frames it watched.
    pub(crate) fn fsys_clear(&mut self) -> HashSet<u32> {
        self.fw32(fsys::INT_VEC, u32::MAX);
        self.fw32(fsys::RET_OK, 0);
        let f = &mut self.fsys;
        f.key = None;
        f.int = None;
        f.ret = None;
        f.pieces.clear();
        std::mem::take(&mut f.frames)
    }
}

/// Reads of guest memory for validation, remembering the pieces.
struct Reads<'a> {
    pieces: &'a mut Vec<(u32, u32, u32, u32)>,
}

impl Reads<'_> {
    /// `n` (<= 8) bytes at linear `lin`, little-endian, through the guest's page tables.
    fn read(&mut self, cpu: &mut vmm_interp::Cpu<crate::machine::Machine>, lin: u32, n: u32) -> Option<u64> {
        let mut v = [0u8; 8];
        let mut at = 0u32;
        while at < n {
            let a = lin.wrapping_add(at);
            let len = (0x1000 - (a & 0xfff)).min(n - at);
            let p = cpu.probe_translation(a)?;
            let bytes = cpu.bus.ram.as_slice().get(p as usize..(p + len) as usize)?;
            v[at as usize..(at + len) as usize].copy_from_slice(bytes);
            self.pieces.push((a >> 12, p >> 12, a & 0xfff, (a & 0xfff) + len));
            at += len;
        }
        Some(u64::from_le_bytes(v))
    }

    /// The GDT descriptor of `sel` (GDT only, within the limit).
    fn gdt(&mut self, cpu: &mut vmm_interp::Cpu<crate::machine::Machine>, sel: u16) -> Option<Descriptor> {
        let s = &cpu.state;
        let off = (sel & !7) as u32;
        if sel & 4 != 0 || sel & !3 == 0 || off + 7 > s.gdtr.limit as u32 {
            return None;
        }
        let base = s.gdtr.base;
        self.read(cpu, base.wrapping_add(off), 8).map(Descriptor)
    }
}

/// A present, accessed, writable, expand-up 32-bit data segment of DPL `dpl`.
fn stack_like(d: Descriptor, dpl: u8) -> bool {
    let s = d.to_segment(0);
    d.is_segment() && d.is_data() && d.writable() && d.present() && d.accessed() && d.dpl() == dpl && s.big() && !s.expand_down()
}

/// A present, accessed, non-conforming 32-bit code segment of DPL `dpl`.
fn code_like(d: Descriptor, dpl: u8) -> bool {
    d.is_segment() && d.is_code() && d.present() && d.accessed() && !d.conforming() && d.dpl() == dpl && d.to_segment(0).big()
}

/// The translation mode at `cpl` with 32-bit code and stack segments (both paths validate
/// those) under `cr0`; `user_gs` false (the IRETD's is decided at each entry).
fn flat32_mode(cpl: u8, cr0: u32) -> Mode {
    Mode {
        cpl,
        code32: true,
        stack32: true,
        paging: cr0 & cr::CR0_PG != 0,
        fpu_trap: cr0 & (cr::CR0_TS | cr::CR0_EM) != 0,
        user_gs: false,
    }
}

impl Direct<'_> {
    /// Whether the block watches `frame`.
    pub(crate) fn bt_fsys_watches(&self, frame: u32) -> bool {
        self.bt.as_ref().is_some_and(|bt| bt.fsys.frames.contains(&frame))
    }

    /// Empties the block and stops protecting its frames (those nothing else needs).
    pub(crate) fn bt_fsys_drop(&mut self) {
        let Some(bt) = self.bt.as_mut() else { return };
        if bt.fsys.key.is_none() {
            return;
        }
        bt.fsys.drops += 1;
        let frames = bt.fsys_clear();
        for f in frames {
            if !bt.cache.frame_has_code(f) && !bt.seg.frames.contains(&f) {
                self.shadow.map.code_frames.remove(&f);
            }
        }
    }

    /// An INT or IRETD callout (the inline path was not taken): after a refused validation,
    /// ask for another at the next entry (at the 1st, 2nd, 4th, 8th... such callout).
    pub(crate) fn bt_fsys_callout(&mut self) {
        let Some(bt) = self.bt.as_mut() else { return };
        let f = &mut bt.fsys;
        if f.refused > 0 {
            f.retry_count = f.retry_count.wrapping_add(1);
            if f.retry_count.is_power_of_two() {
                f.key = None;
            }
        }
    }

    /// The interpreter wrote bytes `[start, end)` of `frame`, a frame the block watches: it is
    /// emptied if the write overlaps what validation read.
    pub(crate) fn bt_fsys_drop_range(&mut self, frame: u32, start: u32, end: u32) {
        let hit = self
            .bt
            .as_ref()
            .is_some_and(|bt| bt.fsys.pieces.iter().any(|&(_, f, s, e)| f == frame && s < end && start < e));
        if hit {
            self.stats.exit("bt-fsys-drop-write");
            self.bt_fsys_drop();
        }
    }

    /// Before an entry into the TC: the block for the guest state now (module documentation).
    pub(crate) fn bt_fsys_sync(&mut self) {
        let Some(bt) = self.bt.as_ref() else { return };
        let s = &self.cpu.state;
        let cpl = s.cpl;
        let mut want_user = bt.fsys.want_user;
        if cpl == 3 {
            want_user = Some((s.seg(SegReg::Cs).selector, s.seg(SegReg::Ss).selector));
        }
        let usable = s.protected_mode() && !s.v86() && s.cr4 & cr::CR4_PAE == 0;
        let key = Key {
            gdtr: (s.gdtr.base, s.gdtr.limit),
            idtr: (s.idtr.base, s.idtr.limit),
            tr: (s.tr.selector, s.tr.base, s.tr.limit, s.tr.attr),
            cr0: s.cr0,
            cr4: s.cr4,
            top: self.shadow.user_limit().min(self.monitor_base),
            vector: bt.fsys.want_vector,
            user: want_user,
        };
        let walk = (s.cr3, self.shadow.stats().invlpgs);
        let stale_walk = bt.fsys.walk != walk;
        let mut same = bt.fsys.key == Some(key);
        if same && stale_walk {
            // The pages read may map other frames now.
            let pieces = bt.fsys.pieces.clone();
            same = pieces.iter().all(|&(p, f, _, _)| self.cpu.probe_translation(p << 12).map(|x| x >> 12) == Some(f));
        }
        if let Some(bt) = self.bt.as_mut() {
            bt.fsys.want_user = want_user;
            bt.fsys.walk = walk;
            bt.fw32(fsys::VCPL, cpl as u32);
        }
        if !usable {
            self.bt_fsys_drop();
            return;
        }
        if !same {
            self.bt_fsys_drop();
            self.bt_fsys_validate(key);
        }
        self.bt_fsys_publish();
    }

    /// Reads and checks the gate, the TSS and the descriptors (module documentation).
    fn bt_fsys_validate(&mut self, key: Key) {
        let mut pieces = Vec::new();
        let mut r = Reads { pieces: &mut pieces };
        let cpu = &mut self.cpu;
        let int = key.vector.and_then(|v| {
            let off = v as u32 * 8;
            if off + 7 > key.idtr.1 as u32 {
                return None;
            }
            let gate = Descriptor(r.read(cpu, key.idtr.0.wrapping_add(off), 8)?);
            let trap = match (gate.is_segment(), gate.ty()) {
                (false, sys_type::INT_GATE32) => false,
                (false, sys_type::TRAP_GATE32) => true,
                _ => return None,
            };
            if !gate.present() || gate.dpl() != 3 {
                return None;
            }
            let sel = gate.gate_selector() & !3;
            let cd = r.gdt(cpu, sel)?;
            let eip = gate.gate_offset();
            if !code_like(cd, 0) || eip > cd.to_segment(sel).limit {
                return None;
            }
            let tr = cpu.state.tr;
            if !tr.present() || tr.system_type() != sys_type::TSS32_BUSY || tr.limit < 9 {
                return None;
            }
            let t = r.read(cpu, tr.base.wrapping_add(4), 6)?;
            let (esp0, ss0) = (t as u32, (t >> 32) as u16);
            if ss0 & 3 != 0 {
                return None;
            }
            let sd = r.gdt(cpu, ss0)?;
            let ss = sd.to_segment(ss0);
            if !stack_like(sd, 0) || esp0 < 20 || esp0 - 1 > ss.limit {
                return None;
            }
            let cs = cd.to_segment(sel);
            let mode = flat32_mode(0, cpu.state.cr0);
            Some(IntPath { vector: v, cs, ss, esp0, eip, trap, cs_host: 0, ss_host: 0, mode })
        });
        let ret = key.user.and_then(|(csel, ssel)| {
            if csel & 3 != 3 || ssel & 3 != 3 {
                return None;
            }
            let cd = r.gdt(cpu, csel)?;
            let sd = r.gdt(cpu, ssel)?;
            let (cs, usel) = (cd.to_segment(csel), sd.to_segment(ssel));
            if !code_like(cd, 3) || cs.limit != u32::MAX || !stack_like(sd, 3) || usel.base != 0 || usel.limit != u32::MAX {
                return None;
            }
            Some(RetPath { cs, usel, usel_host: 0, mode: flat32_mode(3, cpu.state.cr0) })
        });
        // The host selectors: table shadows of these descriptors (kernel mode for the INT's,
        // user mode for the IRETD's data selector), nothing else (a cached slot is reused).
        let (monitor_base, top) = (self.monitor_base, key.top);
        let Direct { ldt, cpu, .. } = self;
        // (Never a register's cached slot: these are other modes' selectors, asked while the
        // guest may use a cached slot of the same register.)
        let mut shadow_of = |seg: &Segment, user: bool| {
            let top = if user { top } else { monitor_base };
            ldt.table_selector_for(seg, top, user, &mut |s| crate::direct::table_entry(cpu, s))
        };
        let int = int.and_then(|mut p| {
            p.cs_host = shadow_of(&p.cs, false)?;
            p.ss_host = shadow_of(&p.ss, false)?;
            Some(p)
        });
        let ret = ret.and_then(|mut p| {
            p.usel_host = shadow_of(&p.usel, true)?;
            Some(p)
        });
        let mut ok = true;
        for &(_, f, _, _) in &pieces {
            ok &= self.shadow.map.protect_code_frame(f).is_ok();
        }
        let Some(bt) = self.bt.as_mut() else { return };
        bt.fsys.frames.extend(pieces.iter().map(|p| p.1));
        bt.fsys.pieces = pieces;
        bt.fsys.key = Some(key);
        bt.fsys.validations += 1;
        if ok {
            bt.fsys.int = int;
            bt.fsys.ret = ret;
        }
        let refused = (key.vector.is_some() && bt.fsys.int.is_none()) || (key.user.is_some() && bt.fsys.ret.is_none());
        bt.fsys.refused = if refused { bt.fsys.refused.saturating_add(1) } else { 0 };
        if !refused {
            bt.fsys.retry_count = 0;
        }
    }

    /// The block's per-entry part: what holds now of the validated paths.
    fn bt_fsys_publish(&mut self) {
        let s = &self.cpu.state;
        let (cpl, cr3, pge) = (s.cpl, s.cr3, s.cr4 & cr::CR4_PGE != 0);
        let segs = [SegReg::Ds, SegReg::Es, SegReg::Fs].map(|r| s.seg[r as usize]);
        let gs = *s.seg(SegReg::Gs);
        let (gs_ok, user_gs) = (!gs.nulled_by_return_to(3), gs_flat(&gs));
        let clean = self.shadow.user_entry_unmaps_nothing();
        let monitor_base = self.monitor_base;
        let Some(bt) = self.bt.as_ref() else { return };
        let (int, ret) = (bt.fsys.int, bt.fsys.ret);
        let usel = ret.map(|r| r.usel);
        // Segment registers holding the user data selector hold its current descriptor.
        let coherent = |seg: &Segment| usel.is_none_or(|u| seg.selector != u.selector || *seg == u);
        let all = [segs[0], segs[1], segs[2], *s.seg(SegReg::Ss), gs];
        let coherent = all.iter().all(coherent);
        let int_ok = int.filter(|p| bt.ibl[0].key == Some((p.mode, p.cs.base, cr3, pge)) && coherent);
        let ret_ok = ret.filter(|p| {
            let mode = Mode { user_gs, ..p.mode };
            gs_ok
                && clean
                && coherent
                && !bt.revalidate
                && bt.last_cr3 == Some(cr3)
                && bt.ibl[1].key == Some((mode, p.cs.base, cr3, pge))
        });
        // At CPL 3: the kernel-mode shadows of DS, ES, FS for the INT (in kernel mode the
        // inline IRETD writes them).
        let mut k = [0u16; 3];
        let mut int_ok = int_ok;
        if cpl == 3 && int_ok.is_some() {
            let Direct { ldt, cpu, .. } = self;
            for (i, seg) in segs.iter().enumerate() {
                if seg.attr == 0 || !seg.present() {
                    k[i] = 0;
                    continue;
                }
                // Kernel-mode table slots only (a cached slot is the user-mode register's).
                match ldt.table_selector_for(seg, monitor_base, false, &mut |s| crate::direct::table_entry(cpu, s)) {
                    Some(h) => k[i] = h,
                    None => int_ok = None,
                }
            }
        }
        let Some(bt) = self.bt.as_mut() else { return };
        match int_ok {
            Some(p) => {
                bt.fw32(fsys::INT_STACK, p.esp0);
                bt.fw32(fsys::INT_STACK + 4, p.ss_host as u32);
                bt.fw32(fsys::INT_EIP, p.eip);
                bt.fw32(fsys::INT_CS, p.cs.selector as u32);
                bt.fw32(fsys::INT_SS, p.ss.selector as u32);
                bt.fw32(fsys::INT_CS_HOST, p.cs_host as u32);
                bt.fw32(fsys::INT_VIF, p.trap as u32);
                if cpl == 3 {
                    bt.fw32(fsys::K_DS, k[0] as u32);
                    bt.fw32(fsys::K_ES, k[1] as u32);
                    bt.fw32(fsys::K_FS, k[2] as u32);
                }
                bt.fw32(fsys::INT_VEC, p.vector as u32);
            }
            None => bt.fw32(fsys::INT_VEC, u32::MAX),
        }
        match ret_ok {
            Some(p) => {
                bt.fw32(fsys::RET_CS, p.cs.selector as u32);
                bt.fw32(fsys::USEL, p.usel.selector as u32);
                bt.fw32(fsys::USEL_HOST, p.usel_host as u32);
                bt.fw32(fsys::RET_STACK + 4, p.usel_host as u32);
                bt.fw32(fsys::RET_OK, 1);
            }
            None => bt.fw32(fsys::RET_OK, 0),
        }
    }

    /// After an exit from the TC: the privilege change translated code made, if any (module
    /// documentation), and the sequences' counters.
    pub(crate) fn bt_fsys_follow(&mut self) -> std::io::Result<()> {
        let Some(bt) = self.bt.as_mut() else { return Ok(()) };
        let (ni, nr) = (bt.fr32(fsys::N_INT), bt.fr32(fsys::N_IRET));
        let (di, dr) = (ni.wrapping_sub(bt.fsys.seen.0), nr.wrapping_sub(bt.fsys.seen.1));
        bt.fsys.seen = (ni, nr);
        bt.fsys.ints += di as u64;
        bt.fsys.irets += dr as u64;
        let vcpl = bt.fr32(fsys::VCPL) as u8;
        let cs_sel = bt.vr32(bt.abi.vseg_of(iced_x86::Register::CS)) as u16;
        let ss_sel = bt.vr32(bt.abi.vseg_of(iced_x86::Register::SS)) as u16;
        let (int, ret) = (bt.fsys.int, bt.fsys.ret);
        if di != 0 {
            // The hot-user policy counts system calls per address space (`hot.rs`).
            let cr3 = self.cpu.state.cr3;
            self.hot.credit_syscalls(cr3, di);
        }
        let s = &mut self.cpu.state;
        if vcpl == s.cpl {
            return Ok(());
        }
        let accessed = |mut seg: Segment, sel: u16| {
            seg.attr |= attr::ACCESSED;
            seg.selector = sel;
            seg
        };
        match (vcpl, int, ret) {
            (0, Some(p), _) => {
                s.seg[SegReg::Cs as usize] = accessed(p.cs, cs_sel);
                s.seg[SegReg::Ss as usize] = accessed(p.ss, ss_sel);
            }
            (3, _, Some(p)) => {
                s.seg[SegReg::Cs as usize] = accessed(p.cs, cs_sel);
                s.seg[SegReg::Ss as usize] = accessed(p.usel, ss_sel);
            }
            _ => {
                self.fatal = Some(crate::engine::Outcome::Unexpected(format!(
                    "bt: translated code changed the privilege level to {vcpl} without a validated path"
                )));
                return Ok(());
            }
        }
        s.cpl = vcpl;
        self.shadow.set_user(vcpl == 3)
    }
}
