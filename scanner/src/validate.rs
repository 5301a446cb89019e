//! The checker of emitted code (used by the tests, the property test and the fuzz target; the
//! runtime may run it in debug builds).
//!
//! A fragment passes when its bytes decode completely as 32-bit code, every branch stays inside
//! it, its exits are rel32 branches to their stubs or (checked exits) indirect jumps through
//! their check slots, its entry, body, check sites' continuations and stubs are instruction
//! boundaries, and every instruction is in the allowed set:
//!
//! * instructions the table classifies IDENT (at CPL 0, with the model), plus near relative
//!   branches, LAHF/SAHF/SETO/CLD/STD/BT, PUSHF/POPF (the inline flag sequences), RDTSC,
//!   UD2 (the tripwire after callouts that never return), `mov ds/es/fs, ecx` and
//!   `verr/verw cx` (the inline segment load and check, ECX read from the selector table);
//! * the translator's own accesses to the vCPU region through GS: MOV/MOVZX/PUSH/AND/OR/ADD/
//!   ADC/CMP/TEST/SETB with a GS memory operand, `jmp dword gs:[slot]` (a scratch slot, a check
//!   slot or a check slot's continuation), `mov gs:[callout_ss], ss`,
//!   `lss esp, gs:[callout_stack or callout_esp]`, the far call `call far gs:[gate]` and
//!   `bound r32, gs:[ugs_bounds + 8n]` (the offset check of user GS accesses);
//!   every GS displacement inside the vCPU region.
//!
//! Never allowed, whatever else holds: INT n, INT3, INTO, INT1, SYSCALL, SYSENTER, SYSEXIT,
//! SYSRET, IRET, far RET, HLT, any far JMP/CALL other than through the gate pointer, any use of
//! GS as a register operand, any CS-relative memory operand.

use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

use crate::abi::Abi;
use crate::classify::{classify, uses_reserved_segment, Model, Translation};
use crate::emit::Fragment;
use crate::Mode;

/// `jmp dword gs:[disp]` reads a scratch slot (the lookup's hit), a check slot or a check
/// slot's continuation.
fn jump_slot(disp: u32, abi: &Abi) -> bool {
    let in_array = |base: u32| disp >= base && disp < base + 4 * abi.check_max && (disp - base).is_multiple_of(4);
    (disp >= abi.scratch && disp < abi.scratch + 4 * crate::abi::SCRATCH_SLOTS)
        || in_array(abi.check_slots)
        || in_array(abi.check_conts)
}

fn gs_form_allowed(i: &Instruction, abi: &Abi) -> Result<(), String> {
    use Code as C;
    let in_fsys = |d: u32| (abi.fsys..abi.fsys + crate::abi::fsys::SIZE).contains(&d);
    let sreg_operand = |i: &Instruction| if i.op0_kind() == OpKind::Register { i.op0_register() } else { i.op1_register() };
    let code = i.code();
    let disp = i.memory_displacement32();
    let has_base = i.memory_base() != Register::None || i.memory_index() != Register::None;
    if i.memory_segment() != Register::GS || i.op_kinds().all(|k| k != OpKind::Memory) {
        return Err("GS prefix without a GS memory operand".into());
    }
    if has_base {
        // Indexed accesses: the CPUID table and the lookup table (base register, small disp).
        if disp >= abi.vcpu_size {
            return Err(format!("GS displacement {disp:#x} outside the vCPU region"));
        }
    } else if disp
        .checked_add(i.memory_size().size() as u32)
        .is_none_or(|e| e > abi.vcpu_size)
    {
        return Err(format!("GS access at {disp:#x} outside the vCPU region"));
    }
    match code {
        C::Mov_rm8_imm8
        | C::Mov_rm32_imm32
        | C::Mov_rm32_r32
        | C::Mov_r32_rm32
        | C::Mov_rm16_r16
        | C::Mov_r16_rm16
        | C::Mov_rm8_r8
        | C::Mov_r8_rm8 => Ok(()),
        C::Movzx_r32_rm16 | C::Movzx_r32_rm8 | C::Push_rm32 | C::Push_rm16 => Ok(()),
        C::And_r32_rm32
        | C::Or_r32_rm32
        | C::Add_r32_rm32
        | C::Adc_r32_rm32
        | C::Cmp_r32_rm32
        | C::Test_rm32_imm32
        | C::Add_r8_rm8
        | C::And_rm32_imm32
        | C::Or_rm32_r32
        | C::Setb_rm8 => Ok(()),
        C::Jmp_rm32 if !has_base && jump_slot(disp, abi) => Ok(()),
        C::Mov_rm16_Sreg
            if i.op1_register() == Register::SS && !has_base && disp == abi.callout_ss =>
        {
            Ok(())
        }
        // VERR/VERW of a `cs:` operand: ES saved to a scratch slot, loaded with the CS
        // shadow, restored; the inline segment loads read the register they would load
        // (a load of the selector it holds is skipped).
        C::Mov_rm16_Sreg
            if [Register::DS, Register::ES, Register::FS].contains(&i.op1_register())
                && !has_base
                && (abi.scratch..abi.scratch + 4 * crate::abi::SCRATCH_SLOTS).contains(&disp) =>
        {
            Ok(())
        }
        C::Mov_Sreg_rm16
            if i.op0_register() == Register::ES
                && !has_base
                && (disp == abi.cs_shadow
                    || (abi.scratch..abi.scratch + 4 * crate::abi::SCRATCH_SLOTS).contains(&disp)) =>
        {
            Ok(())
        }
        C::Lss_r32_m1632
            if i.op0_register() == Register::ESP
                && !has_base
                && (disp == abi.callout_stack || disp == abi.callout_esp) =>
        {
            Ok(())
        }
        C::Call_m1632 if !has_base && disp == abi.gate => Ok(()),
        // System calls without a callout (mangle/syscall.rs): the virtual NT and IF, the
        // block's own fields, and the host selectors and stacks the runtime wrote there.
        C::Test_rm8_imm8 if !has_base && disp == abi.vflags + 1 => Ok(()),
        C::And_rm8_r8 if !has_base && disp == abi.vif => Ok(()),
        C::Cmp_r16_rm16 | C::Add_rm32_imm8 if !has_base && in_fsys(disp) => Ok(()),
        C::Mov_Sreg_rm16 | C::Mov_rm16_Sreg
            if [Register::DS, Register::ES, Register::FS].contains(&sreg_operand(i)) && !has_base && in_fsys(disp) =>
        {
            Ok(())
        }
        C::Lss_r32_m1632
            if i.op0_register() == Register::ESP
                && !has_base
                && (disp == abi.fsys + crate::abi::fsys::INT_STACK || disp == abi.fsys + crate::abi::fsys::RET_STACK) =>
        {
            Ok(())
        }
        // The offset check of a user GS access (mangle/user_gs.rs) against a constant pair.
        C::Bound_r32_m3232
            if !has_base
                && disp >= abi.ugs_bounds
                && disp + 8 <= abi.ugs_bounds + 8 * crate::abi::UGS_BOUND_SIZES.len() as u32 =>
        {
            Ok(())
        }
        _ => Err(format!("{code:?} is not one of the translator's GS forms")),
    }
}

/// Checks one instruction of emitted code against the allowed set.
pub fn check_instruction(i: &Instruction, abi: &Abi, model: &Model) -> Result<(), String> {
    use Mnemonic as M;
    let m = i.mnemonic();
    if matches!(
        m,
        M::Int
            | M::Int1
            | M::Int3
            | M::Into
            | M::Syscall
            | M::Sysenter
            | M::Sysexit
            | M::Sysret
            | M::Iret
            | M::Iretd
            | M::Retf
            | M::Hlt
    ) {
        return Err(format!("forbidden instruction {m:?}"));
    }
    if i.op_kinds().any(|k| k == OpKind::Register)
        && (0..i.op_count())
            .any(|n| i.op_kind(n) == OpKind::Register && i.op_register(n) == Register::GS)
    {
        return Err("GS as a register operand".into());
    }
    if i.op_kinds().any(|k| k == OpKind::Memory) && i.memory_segment() == Register::CS {
        return Err("CS-relative memory operand".into());
    }
    let far = i.code().is_jmp_far()
        || i.code().is_call_far()
        || i.code().is_jmp_far_indirect()
        || i.code().is_call_far_indirect();
    if uses_reserved_segment(i) {
        return gs_form_allowed(i, abi);
    }
    if far {
        return Err("far transfer".into());
    }
    if matches!(
        m,
        M::Pushf
            | M::Pushfd
            | M::Popf
            | M::Popfd
            | M::Rdtsc
            | M::Ud2
            | M::Lahf
            | M::Sahf
            | M::Cld
            | M::Std
    ) {
        return Ok(());
    }
    if i.code() == Code::Mov_Sreg_r32m16
        && i.op1_kind() == OpKind::Register
        && matches!(i.op1_register(), Register::ECX | Register::CX)
        && matches!(i.op0_register(), Register::DS | Register::ES | Register::FS)
    {
        // The inline segment load's `mov sreg, ecx` (ECX from the selector table).
        return Ok(());
    }
    if matches!(i.code(), Code::Verr_r32m16 | Code::Verw_r32m16 | Code::Verr_rm16 | Code::Verw_rm16)
        && i.op0_kind() == OpKind::Register
        && matches!(i.op0_register(), Register::ECX | Register::CX)
    {
        // Inline VERR/VERW on the host selector from the selector table.
        return Ok(());
    }
    let c = classify(i, Mode::kernel32(), model);
    match c.translation {
        Translation::Ident => Ok(()),
        Translation::Relink => Ok(()),
        t => Err(format!(
            "{:?} ({}) would be translated as {t:?}",
            i.code(),
            c.class.name
        )),
    }
}

/// Checks a fragment (see the module documentation).
pub fn check_fragment(f: &Fragment, abi: &Abi, model: &Model) -> Result<(), String> {
    let start = f.tc_addr as u64;
    let end = start + f.code.len() as u64;
    let mut dec = Decoder::with_ip(32, &f.code, start, DecoderOptions::NONE);
    let mut boundaries = Vec::new();
    let mut branches = Vec::new();
    let mut slot_jumps = Vec::new();
    while dec.can_decode() {
        let i = dec.decode();
        if i.code() == Code::INVALID {
            return Err(format!("undecodable bytes at offset {:#x}", i.ip() - start));
        }
        boundaries.push((i.ip() - start) as u32);
        check_instruction(&i, abi, model)
            .map_err(|e| format!("offset {:#x}: {e}", i.ip() - start))?;
        if i.code() == Code::Jmp_rm32 && i.memory_segment() == Register::GS {
            slot_jumps.push(i.memory_displacement32());
        }
        if i.op_kinds()
            .any(|k| matches!(k, OpKind::NearBranch16 | OpKind::NearBranch32))
        {
            branches.push((i.ip(), i.near_branch_target(), i.len()));
        }
    }
    if dec.position() != f.code.len() {
        return Err("trailing bytes".into());
    }
    for (ip, t, _) in &branches {
        if *t < start || *t >= end || boundaries.binary_search(&((t - start) as u32)).is_err() {
            return Err(format!(
                "branch at {:#x} to {t:#x} leaves the fragment or lands mid-instruction",
                ip - start
            ));
        }
    }
    if boundaries.binary_search(&f.entry_off).is_err() {
        return Err("entry is not an instruction boundary".into());
    }
    if boundaries.binary_search(&f.body_off).is_err() {
        return Err("body is not an instruction boundary".into());
    }
    for s in &f.sites {
        if s.slot >= abi.check_max {
            return Err(format!("check slot {} beyond the slots", s.slot));
        }
        if !slot_jumps.contains(&abi.check_slot(s.slot)) {
            return Err(format!("check slot {}: no jump through it", s.slot));
        }
        for off in [s.cont_off, s.stub_off] {
            if boundaries.binary_search(&off).is_err() {
                return Err(format!("check slot {}: {off:#x} is not an instruction boundary", s.slot));
            }
        }
    }
    for (n, x) in f.exits.iter().enumerate() {
        if let Some(slot) = x.slot {
            if !f.sites.iter().any(|s| s.slot == slot && s.cont_off == x.stub_off) {
                return Err(format!("exit {n}: its check slot does not lead to its stub"));
            }
            continue;
        }
        let br = branches
            .iter()
            .find(|(ip, _, len)| (ip - start) as u32 + *len as u32 == x.patch_off + 4);
        let Some((_, t, len)) = br else {
            return Err(format!("exit {n}: no branch ends at its patch site"));
        };
        if *len < 5 || (t - start) as u32 != x.stub_off {
            return Err(format!("exit {n}: not a rel32 branch to its stub"));
        }
    }
    for w in f.pc_map.windows(2) {
        if w[0].off >= w[1].off {
            return Err("PC map not ascending".into());
        }
    }
    Ok(())
}
