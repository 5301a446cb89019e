//! User code's GS memory operands as inline code (docs/translator.md, "GS in user code").
//!
//! i386 user code reaches its thread-local storage through GS: the system call itself
//! (`call dword gs:[0x10]`, the vsyscall entry), `errno`, the stack-protector canary
//! (`gs:[0x14]`), TLS variables (`mov eax, gs:[reg]`). GS is the translator's reserved segment
//! register, so without this rule each of them is an `Emulate` callout.
//!
//! When the runtime says the guest's GS is reachable through the flat DS ([`Mode::user_gs`]:
//! CPL 3, GS a present writable expand-up data segment with a 4 GiB limit, DS base 0), the
//! operand's linear address is `GS base + offset`, and the access goes through DS instead:
//!
//! ```text
//! mov gs:[s0], R                      ; R: a register the instruction does not use
//! lea R, [base + index*scale + disp + 80000000h]   ; offsets from registers, size > 1:
//! bound R, gs:[ugs_bounds + pair(size)]            ;   #BR if the access runs past 4 GiB
//! mov R, gs:[ugs_base]                ; the guest GS base (the runtime keeps it current)
//! lea R, [base + R]                   ; only when the operand has base and index
//! <the instruction with the operand [R + disp], [base + R + disp] or
//!  [R + index*scale + disp], segment DS>
//! mov R, gs:[s0]
//! ```
//!
//! No flag changes. Addresses wrap modulo 2^32 in both (32-bit addressing), so the host's
//! linear address is the guest's. Every instruction from the LEA on carries the recovery "R from s0": a
//! fault (the access's #PF, a #GP of the DS shadow's truncated limit, the #BR) rebuilds the
//! state before the guest instruction, and the runtime's interpreter re-executes it with the
//! guest's GS (the same linear address, so the same CR2; the #GP of an access past 4 GiB).
//! An offset known at translation time (no registers) is checked here instead: an access
//! past 4 GiB stays a callout.
//!
//! `call`/`jmp dword gs:[m]` load the target through the same address into EAX and go through
//! the indirect-branch lookup. Everything else with GS stays a callout: string instructions
//! (GS on their implicit source), 16-bit addressing, `pop gs:[esp+x]` (its address uses
//! ESP after the pop), BT-family with a register bit offset (the access is not at the
//! operand), instructions that use every candidate register, and whatever the table would
//! not copy with DS in place of GS (segment loads, far transfers, sensitive instructions).

use iced_x86::{Code, Instruction, InstructionInfoFactory, MemoryOperand, Mnemonic, OpKind, Register};

use super::{emulate_here, encodable, mk, Builder, Done, Recovery, FALL, S0, S_A, S_C, STOP};
use crate::classify::{classify, CalloutKind, Translation};
use crate::units::{GuestInsn, Unit};
use crate::Config;

/// Candidates for the register that holds the linear address (never ESP; not EBP, whose
/// default segment is SS).
const CANDIDATES: [Register; 6] = [
    Register::ECX,
    Register::EDX,
    Register::EAX,
    Register::EBX,
    Register::ESI,
    Register::EDI,
];

/// The rule: Some if the instruction (which uses GS, `unit.mode.user_gs` set) was translated
/// here; None: the caller makes the usual `ReservedSegment` callout.
pub(super) fn user_gs(b: &mut Builder<'_>, gi: &GuestInsn, unit: &Unit, cfg: &Config, next: u32) -> Option<Done> {
    let i = &gi.instr;
    if unit.mode.cpl != 3 || !unit.mode.user_gs {
        return None;
    }
    if cfg.hints.contains(unit.cs_base.wrapping_add(gi.eip), unit.mode) {
        // It kept faulting inline (adaptive retranslation).
        return Some(emulate_here(b, gi, next, CalloutKind::Adaptive));
    }
    // What the instruction is with its default segment (DS, or SS for EBP/ESP bases).
    let mut plain = *i;
    plain.set_ip(0);
    plain.set_segment_prefix(Register::None);
    let model = match &cfg.user_model {
        Some(m) => m,
        None => &cfg.model,
    };
    let translation = classify(&plain, unit.mode, model).translation;
    let mem_ops = (0..i.op_count()).filter(|&n| i.op_kind(n) == OpKind::Memory).count();
    let mut info = InstructionInfoFactory::new();
    let info = info.info(i);
    if info.used_memory().is_empty() {
        // LEA, NOP r/m, a GS prefix without a memory operand: the segment means nothing.
        if translation != Translation::Ident || !encodable(&plain) {
            return None;
        }
        b.ins(plain);
        return Some(FALL);
    }
    let gpr32_or_none = |r: Register| r == Register::None || r.is_gpr32();
    if mem_ops != 1 || addr16(i) || !gpr32_or_none(i.memory_base()) || !gpr32_or_none(i.memory_index()) {
        // 16-bit addressing; a vector index (VSIB gathers).
        return None;
    }
    // Every register the instruction reads or writes, explicitly or not.
    let used: Vec<Register> = info
        .used_registers()
        .iter()
        .map(|u| u.register())
        .chain([i.memory_base(), i.memory_index()])
        .filter(|r| r.is_gpr())
        .map(|r| r.full_register32())
        .collect();
    match translation {
        Translation::Ident => {
            if matches!(i.mnemonic(), Mnemonic::Pop) && uses_esp(i) {
                return None;
            }
            if matches!(i.mnemonic(), Mnemonic::Bt | Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc)
                && i.op_kind(1) == OpKind::Register
            {
                return None;
            }
            let r = CANDIDATES.into_iter().find(|r| !used.contains(r))?;
            let size = i.memory_size().size() as u32;
            let check = offset_check(b, i, size)?;
            let access = at_operand(i, final_operand(i, r))?;
            let s0 = b.slot(S0);
            let rec = Recovery::reg(r, s0);
            b.st32(s0, r);
            linear_address(b, i, r, check, rec);
            b.ins_rec(access, rec);
            b.ld32(r, s0);
            Some(FALL)
        }
        Translation::Lookup if i.code().is_call_near_indirect() || i.code().is_jmp_near_indirect() => {
            Some(branch(b, i, next)?)
        }
        _ => None,
    }
}

/// 16-bit addressing (the 0x67 prefix in 32-bit code, or 16-bit code without it).
fn addr16(i: &Instruction) -> bool {
    i.memory_base().size() == 2
        || i.memory_index().size() == 2
        || (i.memory_base() == Register::None && i.memory_index() == Register::None && i.memory_displ_size() == 2)
}

fn uses_esp(i: &Instruction) -> bool {
    i.memory_base() == Register::ESP || i.memory_index() == Register::ESP
}

/// How the offset is checked against the end of the 4 GiB segment.
#[derive(Clone, Copy)]
enum Check {
    /// Nothing to check (one byte, or a constant offset checked here).
    None,
    /// BOUND against the pair at this vCPU offset.
    Bound(u32),
}

/// None if the access cannot be inline: a constant offset whose access runs past 4 GiB, or a
/// register offset of a size without a BOUND pair.
fn offset_check(b: &Builder<'_>, i: &Instruction, size: u32) -> Option<Check> {
    if size == 0 {
        return None;
    }
    if i.memory_base() == Register::None && i.memory_index() == Register::None {
        return i.memory_displacement32().checked_add(size - 1).map(|_| Check::None);
    }
    if size == 1 {
        return Some(Check::None);
    }
    b.abi.ugs_bound_of(size).map(Check::Bound)
}

/// The memory operand the rewritten instruction uses once R holds the GS base (plus the
/// guest's base register when base and index are both used): `[R + disp]`,
/// `[base + R + disp]` (the guest's base stays the base: ESP cannot be an index),
/// `[R + index*scale + disp]`. Segment DS, explicit where the base is ESP or EBP.
#[derive(Clone, Copy)]
struct Operand {
    base: Register,
    index: Register,
    scale: u32,
    disp: u32,
}

fn final_operand(i: &Instruction, r: Register) -> Operand {
    let (base, index, scale, disp) = (
        i.memory_base(),
        i.memory_index(),
        i.memory_index_scale(),
        i.memory_displacement32(),
    );
    match (base, index) {
        (Register::None, Register::None) => Operand { base: r, index: Register::None, scale: 1, disp },
        (base, Register::None) => Operand { base, index: r, scale: 1, disp },
        (_, index) => Operand { base: r, index, scale, disp },
    }
}

/// The instruction with its memory operand replaced by `op` (segment DS); moffs forms become
/// their ModRM forms. None if that does not encode.
fn at_operand(i: &Instruction, op: Operand) -> Option<Instruction> {
    let mut c = *i;
    c.set_ip(0);
    let code = match i.code() {
        Code::Mov_AL_moffs8 => Some(Code::Mov_r8_rm8),
        Code::Mov_AX_moffs16 => Some(Code::Mov_r16_rm16),
        Code::Mov_EAX_moffs32 => Some(Code::Mov_r32_rm32),
        Code::Mov_moffs8_AL => Some(Code::Mov_rm8_r8),
        Code::Mov_moffs16_AX => Some(Code::Mov_rm16_r16),
        Code::Mov_moffs32_EAX => Some(Code::Mov_rm32_r32),
        _ => None,
    };
    if let Some(code) = code {
        c.set_code(code);
    }
    let ss_default = matches!(op.base, Register::ESP | Register::EBP);
    c.set_segment_prefix(if ss_default { Register::DS } else { Register::None });
    c.set_memory_base(op.base);
    c.set_memory_index(op.index);
    c.set_memory_index_scale(op.scale);
    c.set_memory_displacement32(op.disp);
    c.set_memory_displ_size(if op.disp == 0 { 0 } else { 4 });
    encodable(&c).then_some(c)
}

fn lea(r: Register, base: Register, index: Register, scale: u32, disp: u32) -> Instruction {
    let size = if disp == 0 && base != Register::None { 0 } else { 4 };
    mk(Instruction::with2(
        Code::Lea_r32_m,
        r,
        MemoryOperand::new(base, index, scale, disp as i32 as i64, size, false, Register::None),
    ))
}

/// R (already saved) = the GS base, plus the guest's base register when the operand also
/// has an index (see [`final_operand`]), after the BOUND check of the offset if there is one.
fn linear_address(b: &mut Builder<'_>, i: &Instruction, r: Register, check: Check, rec: Recovery) {
    let (base, index, scale, disp) = (
        i.memory_base(),
        i.memory_index(),
        i.memory_index_scale(),
        i.memory_displacement32(),
    );
    if let Check::Bound(pair) = check {
        b.ins_rec(lea(r, base, index, scale, disp.wrapping_add(0x8000_0000)), rec);
        b.ins_rec(mk(Instruction::with2(Code::Bound_r32_m3232, r, super::gs(pair))), rec);
    }
    b.ins_rec(mk(Instruction::with2(Code::Mov_r32_rm32, r, super::gs(b.abi.ugs_base))), rec);
    if base != Register::None && index != Register::None {
        b.ins_rec(lea(r, base, r, 1, 0), rec);
    }
}

/// `call`/`jmp` near through a GS memory operand: the target loaded into EAX through the
/// linear address, then the indirect-branch lookup (as `mangle::lookup` does for other
/// operands).
fn branch(b: &mut Builder<'_>, i: &Instruction, next: u32) -> Option<Done> {
    let size16 = i.op_code().operand_size() == 16;
    let size = if size16 { 2 } else { 4 };
    let check = offset_check(b, i, size)?;
    let op_regs = [i.memory_base(), i.memory_index()];
    let (sa, sc, s0) = (b.slot(S_A), b.slot(S_C), b.slot(S0));
    // The address register: ECX or EAX (both saved for the lookup anyway), else EDX.
    let (r, r_slot) = if !op_regs.contains(&Register::ECX) {
        (Register::ECX, sc)
    } else if !op_regs.contains(&Register::EAX) {
        (Register::EAX, sa)
    } else {
        (Register::EDX, s0)
    };
    let op = final_operand(i, r);
    let seg = if matches!(op.base, Register::ESP | Register::EBP) { Register::DS } else { Register::None };
    let ld = mk(Instruction::with2(
        if size16 { Code::Movzx_r32_rm16 } else { Code::Mov_r32_rm32 },
        Register::EAX,
        MemoryOperand::new(op.base, op.index, op.scale, op.disp as i32 as i64, if op.disp == 0 { 0 } else { 4 }, false, seg),
    ));
    b.st32(sa, Register::EAX);
    b.st32(sc, Register::ECX);
    if r == Register::EDX {
        b.st32(s0, Register::EDX);
    }
    let rec = Recovery::reg(r, r_slot);
    linear_address(b, i, r, check, rec);
    b.ins_rec(ld, rec);
    if r == Register::EDX {
        b.ld32(Register::EDX, s0);
    }
    if i.code().is_call_near_indirect() {
        let rec = Recovery {
            restore: [Some((Register::EAX, sa)), (r == Register::ECX).then_some((Register::ECX, sc))],
            esp_adjust: 0,
            emulate: false,
        };
        let push = if size16 {
            mk(Instruction::with1(Code::Push_imm16, next & 0xffff))
        } else {
            mk(Instruction::with1(Code::Pushd_imm32, next))
        };
        b.ins_rec(push, rec);
    }
    b.ibl();
    Some(STOP)
}
