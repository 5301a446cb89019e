//! Far transfers, IRET and the protection instructions on system guests (GDT, IDT and TSS in
//! RAM). Expected values come from the SDM (vol. 2 pseudocode, vol. 3 chapter 5).
//!
//! The guests use only instructions of the families implemented here plus MOV, CMP, OR and
//! HLT: stack frames are built with MOV to memory. A HLT at CPL 3 raises #GP(0), which the
//! tests intercept to stop a user-mode guest and inspect its state.
mod common;
use common::sys::*;
use iced_x86::code_asm::*;
use vmm_interp::seg::{sys_type, Descriptor};
use vmm_interp::state::{attr, flags, vector, SegReg, Segment};
use vmm_interp::{Cpu, CpuState, Exit, RamBus};

const GP: u8 = vector::GP;
const NP: u8 = vector::NP;

fn sel(index: usize, rpl: u16) -> u16 {
    ((index as u16) << 3) | rpl
}

/// Run with the given vectors intercepted.
fn run_with(g: SysGuest, st: CpuState, intercept: u32) -> (Cpu<RamBus>, Exit) {
    let mut cpu = Cpu::with_state(st, g.bus);
    cpu.intercept = intercept;
    let exit = cpu.run(100_000);
    (cpu, exit)
}

/// Run with every exception intercepted.
fn run_all(g: SysGuest, st: CpuState) -> (Cpu<RamBus>, Exit) {
    run_with(g, st, !0)
}

/// Protected mode, flat user segments, CPL 3 at UCODE, paging off.
fn user_state(g: &SysGuest) -> CpuState {
    let mut s = g.state(false);
    let code = Segment::flat(SEL_UCODE, true, 3);
    let data = Segment::flat(SEL_UDATA, false, 3);
    s.seg = [data, code, data, data, data, data];
    s.cpl = 3;
    s.eip = UCODE;
    s.gpr[4] = USTACK_TOP;
    s.eflags = 0x202;
    s
}

/// Assemble 32-bit code for instruction pointer `ip` and place it at physical `phys`.
fn code_at(g: &mut SysGuest, phys: u32, ip: u32, bits: u32, f: impl FnOnce(&mut CodeAssembler)) -> u32 {
    let mut a = CodeAssembler::new(bits).unwrap();
    f(&mut a);
    let bytes = a.assemble(ip as u64).expect("assemble");
    g.bus.ram[phys as usize..phys as usize + bytes.len()].copy_from_slice(&bytes);
    ip + bytes.len() as u32
}

fn exc(e: &Exit) -> (u8, Option<u32>, u32) {
    match e {
        Exit::Exception { vector, error_code, eip, .. } => (*vector, *error_code, *eip),
        other => panic!("expected an exception, got {other:?}"),
    }
}

/// The stop of a user-mode guest: #GP(0) at its HLT.
fn assert_user_hlt(e: &Exit, at: u32) {
    assert_eq!(exc(e), (GP, Some(0), at), "expected the user-mode HLT to fault");
}

fn r16(cpu: &Cpu<RamBus>, a: u32) -> u16 {
    u16::from_le_bytes(cpu.bus.ram[a as usize..a as usize + 2].try_into().unwrap())
}
fn r32(cpu: &Cpu<RamBus>, a: u32) -> u32 {
    u32::from_le_bytes(cpu.bus.ram[a as usize..a as usize + 4].try_into().unwrap())
}

const FAR_BASE: u32 = 0x50000;

// ---- far JMP, CALL, RET between code segments ----

#[test]
fn far_call_retf_and_jmp_between_code_segments() {
    let mut g = SysGuest::new();
    // A second ring-0 code segment with base FAR_BASE and a 64 KiB limit.
    let far = sel(FIRST_FREE, 0);
    g.set_gdt(FIRST_FREE, Descriptor::new(FAR_BASE, 0xffff, CODE32 & !attr::G));
    code_at(&mut g, FAR_BASE, 0, 32, |a| {
        a.mov(ecx, dword_ptr(esp)).unwrap();
        a.mov(edx, dword_ptr(esp + 4)).unwrap();
        a.mov(eax, 1).unwrap();
        a.retf().unwrap();
    });
    code_at(&mut g, FAR_BASE + 0x100, 0x100, 32, |a| {
        a.mov(esi, 3).unwrap();
        a.hlt().unwrap();
    });
    code_at(&mut g, FAR_BASE + 0x80, 0x80, 32, |a| {
        a.mov(ebx, 2).unwrap();
        // Indirect far JMP through an m16:32 pointer.
        a.jmp(fword_ptr(DATA)).unwrap();
    });
    g.w32(DATA, 0x100);
    g.w16(DATA + 4, far);
    let mut ret = 0;
    g.code(KCODE, |a| {
        a.call_far(far, 0).unwrap();
        ret = KCODE + 7;
        a.mov(edi, esp).unwrap();
        a.jmp_far(far, 0x80).unwrap();
    });
    let st = g.state(false);
    let (cpu, exit) = run_all(g, st);
    assert_eq!(exit, Exit::Halt);
    // The callee saw the return address and the caller's CS on its stack.
    assert_eq!(cpu.state.gpr[1], ret);
    assert_eq!(cpu.state.gpr[2], SEL_KCODE as u32);
    assert_eq!(cpu.state.gpr[0], 1);
    // RETF popped the whole frame.
    assert_eq!(cpu.state.gpr[7], KSTACK_TOP);
    assert_eq!(cpu.state.gpr[3], 2);
    assert_eq!(cpu.state.gpr[6], 3);
    let c = cpu.state.seg(SegReg::Cs);
    assert_eq!(c.selector, far);
    assert_eq!(c.base, FAR_BASE);
    assert_eq!(c.limit, 0xffff);
    assert_eq!(cpu.state.eip, 0x100 + 6);
    // Loading CS set the Accessed bit of the descriptor.
    assert_ne!(cpu.bus.ram[(GDT + 8 * FIRST_FREE as u32 + 5) as usize] & 1, 0);
}

#[test]
fn far_jmp_beyond_limit_is_gp0_and_rpl_is_replaced_by_cpl() {
    let mut g = SysGuest::new();
    g.set_gdt(FIRST_FREE, Descriptor::new(FAR_BASE, 0xfff, CODE32 & !attr::G));
    code_at(&mut g, FAR_BASE, 0, 32, |a| a.hlt().unwrap());
    g.code(KCODE, |a| a.jmp_far(sel(FIRST_FREE, 0), 0x1000).unwrap());
    let st = g.state(false);
    let (_, exit) = run_all(g, st);
    assert_eq!(exc(&exit), (GP, Some(0), KCODE));

    // A conforming DPL-0 segment entered from CPL 3 with an RPL-0 selector: CPL stays 3 and
    // CS.RPL becomes 3.
    let mut g = SysGuest::new();
    g.set_gdt(FIRST_FREE, Descriptor::new(FAR_BASE, 0xffff, (CODE32 & !attr::G) | attr::DC));
    code_at(&mut g, FAR_BASE, 0, 32, |a| a.hlt().unwrap());
    g.code(UCODE, |a| a.jmp_far(sel(FIRST_FREE, 0), 0).unwrap());
    let st = user_state(&g);
    let (cpu, exit) = run_all(g, st);
    assert_user_hlt(&exit, 0);
    assert_eq!(cpu.state.cpl, 3);
    assert_eq!(cpu.state.seg(SegReg::Cs).selector, sel(FIRST_FREE, 3));
}

#[test]
fn far_jmp_to_non_present_segment_is_np() {
    let mut g = SysGuest::new();
    g.set_gdt(FIRST_FREE, Descriptor::new(FAR_BASE, 0xffff, CODE32 & !attr::P));
    g.code(KCODE, |a| a.jmp_far(sel(FIRST_FREE, 0), 0).unwrap());
    let st = g.state(false);
    let (cpu, exit) = run_all(g, st);
    assert_eq!(exc(&exit), (NP, Some(sel(FIRST_FREE, 0) as u32), KCODE));
    assert_eq!(cpu.state.seg(SegReg::Cs).selector, SEL_KCODE);
}

#[test]
fn far_jmp_errors_null_data_and_nonconforming_other_dpl() {
    // Null selector: #GP(0). Data segment: #GP(sel). Non-conforming DPL 3 from CPL 0: #GP(sel).
    // A selector beyond the GDT limit: #GP(sel).
    for (target, err) in [(0u16, 0u32), (SEL_KDATA, SEL_KDATA as u32), (SEL_UCODE, 0x18), (0x80, 0x80)] {
        let mut g = SysGuest::new();
        g.code(KCODE, |a| a.jmp_far(target, 0).unwrap());
        let st = g.state(false);
        let (_, exit) = run_all(g, st);
        assert_eq!(exc(&exit), (GP, Some(err), KCODE), "target {target:#x}");
    }
}

#[test]
fn far_jmp_to_tss_is_unsupported_task_switch() {
    let mut g = SysGuest::new();
    g.set_gdt(FIRST_FREE, Descriptor::new(0x6000, 0x67, attr::P | sys_type::TSS32_AVAIL as u16));
    g.code(KCODE, |a| a.jmp_far(sel(FIRST_FREE, 0), 0).unwrap());
    let st = g.state(false);
    let (_, exit) = run_all(g, st);
    assert!(matches!(exit, Exit::Unsupported { reason: "task switch", .. }), "{exit:?}");
    // The busy TSS of TR: #GP(sel).
    let mut g = SysGuest::new();
    g.w8(GDT + 8 * 5 + 5, 0x8b);
    g.code(KCODE, |a| a.jmp_far(SEL_TSS, 0).unwrap());
    let st = g.state(false);
    let (_, exit) = run_all(g, st);
    assert_eq!(exc(&exit), (GP, Some(SEL_TSS as u32), KCODE));
}

// ---- call gates ----

const GATE_HANDLER: u32 = HANDLERS;

/// A CPL-3 guest that pushes two parameters and calls through a 32-bit call gate (DPL 3,
/// 2 parameters) to a ring-0 handler, which records its stack, loads DS with the kernel data
/// segment and returns with RETF 8.
#[test]
fn call_gate_cpl3_to_cpl0_copies_parameters_and_retf_returns() {
    let mut g = SysGuest::new();
    let gate = sel(FIRST_FREE, 3);
    g.set_gdt(FIRST_FREE, SysGuest::gate(SEL_KCODE, GATE_HANDLER, sys_type::CALL_GATE32, 3, 2));
    g.code(GATE_HANDLER, |a| {
        a.mov(ebp, esp).unwrap();
        a.mov(ax, SEL_KDATA as u32).unwrap();
        a.mov(ds, ax).unwrap();
        a.mov(ax, SEL_UDATA as u32).unwrap();
        a.mov(es, ax).unwrap();
        a.mov(ax, sel(FIRST_FREE + 1, 0) as u32).unwrap(); // conforming DPL-0 code
        a.mov(fs, ax).unwrap();
        a.retf_1(8).unwrap();
    });
    g.set_gdt(FIRST_FREE + 1, Descriptor::new(0, 0xffff_ffff, CODE32 | attr::DC));
    let sp0 = USTACK_TOP - 16;
    let hlt_at = g.code(UCODE, |a| {
        a.mov(dword_ptr(sp0 - 8), 0x1111).unwrap();
        a.mov(dword_ptr(sp0 - 4), 0x2222).unwrap();
        a.mov(esp, sp0 - 8).unwrap();
        a.call_far(gate, 0xdead).unwrap(); // the offset is ignored for a gate
    });
    let call_end = hlt_at;
    g.code(hlt_at, |a| a.hlt().unwrap());
    let st = user_state(&g);
    let (cpu, exit) = run_all(g, st);
    assert_user_hlt(&exit, hlt_at);
    // Back at CPL 3 with the old stack, minus the parameters RETF 8 released.
    assert_eq!(cpu.state.cpl, 3);
    assert_eq!(cpu.state.seg(SegReg::Cs).selector, SEL_UCODE);
    assert_eq!(cpu.state.seg(SegReg::Ss).selector, SEL_UDATA);
    assert_eq!(cpu.state.gpr[4], sp0);
    // The ring-0 stack came from TSS.ESP0 and holds, from the top: EIP, CS, the two
    // parameters in their original order, ESP, SS.
    let bp_ = cpu.state.gpr[5];
    assert_eq!(bp_, KSTACK_TOP - 24);
    assert_eq!(r32(&cpu, bp_), call_end);
    assert_eq!(r32(&cpu, bp_ + 4) & 0xffff, SEL_UCODE as u32);
    assert_eq!(r32(&cpu, bp_ + 8), 0x1111);
    assert_eq!(r32(&cpu, bp_ + 12), 0x2222);
    assert_eq!(r32(&cpu, bp_ + 16), sp0 - 8);
    assert_eq!(r32(&cpu, bp_ + 20) & 0xffff, SEL_UDATA as u32);
    // RETF to CPL 3 nulled DS (DPL 0 data), kept ES (DPL 3) and FS (conforming code).
    assert_eq!(cpu.state.seg(SegReg::Ds).selector, 0);
    assert!(!cpu.state.seg(SegReg::Ds).present());
    assert_eq!(cpu.state.seg(SegReg::Es).selector, SEL_UDATA);
    assert_eq!(cpu.state.seg(SegReg::Fs).selector, sel(FIRST_FREE + 1, 0));
}

#[test]
fn retf_to_outer_level_nulls_ds_and_a_ds_access_faults() {
    let mut g = SysGuest::new();
    let gate = sel(FIRST_FREE, 3);
    g.set_gdt(FIRST_FREE, SysGuest::gate(SEL_KCODE, GATE_HANDLER, sys_type::CALL_GATE32, 3, 0));
    g.code(GATE_HANDLER, |a| {
        a.mov(ax, SEL_KDATA as u32).unwrap();
        a.mov(ds, ax).unwrap();
        a.retf().unwrap();
    });
    let after = g.code(UCODE, |a| a.call_far(gate, 0).unwrap());
    g.code(after, |a| a.mov(eax, dword_ptr(0x100)).unwrap());
    let st = user_state(&g);
    let (cpu, exit) = run_all(g, st);
    assert_eq!(exc(&exit), (GP, Some(0), after));
    assert_eq!(cpu.state.cpl, 3);
    assert_eq!(cpu.state.seg(SegReg::Ds).selector, 0);
}

#[test]
fn call_gate_with_dpl0_from_cpl3_is_gp_gate_selector() {
    let mut g = SysGuest::new();
    g.set_gdt(FIRST_FREE, SysGuest::gate(SEL_KCODE, GATE_HANDLER, sys_type::CALL_GATE32, 0, 0));
    g.code(UCODE, |a| a.call_far(sel(FIRST_FREE, 3), 0).unwrap());
    let st = user_state(&g);
    let (cpu, exit) = run_all(g, st);
    assert_eq!(exc(&exit), (GP, Some(sel(FIRST_FREE, 0) as u32), UCODE));
    assert_eq!(cpu.state.cpl, 3);
    assert_eq!(cpu.state.gpr[4], USTACK_TOP);
}

#[test]
fn call_gate_same_privilege_16bit_gate_and_jmp_through_gate() {
    // A 16-bit call gate at CPL 0 to a ring-0 segment: pushes 16-bit CS:IP.
    let mut g = SysGuest::new();
    g.set_gdt(FIRST_FREE, SysGuest::gate(SEL_KCODE, 0x0001_5000, sys_type::CALL_GATE16, 0, 3));
    // The 16-bit gate's offset is 0x5000: the high word of the gate offset is ignored.
    g.w16(GDT + 8 * FIRST_FREE as u32 + 6, 0x1234);
    g.code(0x5000, |a| {
        a.mov(ecx, dword_ptr(esp)).unwrap();
        a.mov(edx, esp).unwrap();
        a.hlt().unwrap();
    });
    let ret = g.code(KCODE, |a| a.call_far(sel(FIRST_FREE, 0), 0).unwrap());
    let mut st = g.state(false);
    st.gpr[4] = KSTACK_TOP;
    let (cpu, exit) = run_all(g, st);
    assert_eq!(exit, Exit::Halt);
    assert_eq!(cpu.state.gpr[2], KSTACK_TOP - 4);
    assert_eq!(cpu.state.gpr[1], (ret & 0xffff) | ((SEL_KCODE as u32) << 16));

    // JMP through a call gate never changes privilege: to a non-conforming ring-0 segment
    // from CPL 3 it is #GP(code selector).
    let mut g = SysGuest::new();
    g.set_gdt(FIRST_FREE, SysGuest::gate(SEL_KCODE, GATE_HANDLER, sys_type::CALL_GATE32, 3, 0));
    g.code(UCODE, |a| a.jmp_far(sel(FIRST_FREE, 3), 0).unwrap());
    let st = user_state(&g);
    let (_, exit) = run_all(g, st);
    assert_eq!(exc(&exit), (GP, Some(SEL_KCODE as u32), UCODE));

    // ... and to a ring-3 segment from CPL 3 it works.
    let mut g = SysGuest::new();
    g.set_gdt(FIRST_FREE, SysGuest::gate(SEL_UCODE, UCODE + 0x100, sys_type::CALL_GATE32, 3, 0));
    g.code(UCODE + 0x100, |a| a.hlt().unwrap());
    g.code(UCODE, |a| a.jmp_far(sel(FIRST_FREE, 3), 0).unwrap());
    let st = user_state(&g);
    let (cpu, exit) = run_all(g, st);
    assert_user_hlt(&exit, UCODE + 0x100);
    assert_eq!(cpu.state.seg(SegReg::Cs).selector, SEL_UCODE);
}

#[test]
fn call_gate_stack_switch_faults() {
    // TSS.SS0 null: #TS(0). SS0 with RPL != DPL: #TS(SS0). Non-present SS0: #SS(SS0).
    let np_data = sel(FIRST_FREE + 1, 0);
    for (ss0, vec, err) in [
        (0u16, vector::TS, 0u32),
        (SEL_KDATA | 3, vector::TS, SEL_KDATA as u32),
        (np_data, vector::SS, np_data as u32),
    ] {
        let mut g = SysGuest::new();
        g.set_gdt(FIRST_FREE, SysGuest::gate(SEL_KCODE, GATE_HANDLER, sys_type::CALL_GATE32, 3, 0));
        g.set_gdt(FIRST_FREE + 1, Descriptor::new(0, 0xffff_ffff, DATA32 & !attr::P));
        g.w32(TSS + 8, ss0 as u32);
        g.code(UCODE, |a| a.call_far(sel(FIRST_FREE, 3), 0).unwrap());
        let st = user_state(&g);
        let (cpu, exit) = run_all(g, st);
        assert_eq!(exc(&exit), (vec, Some(err), UCODE), "ss0 {ss0:#x}");
        assert_eq!(cpu.state.cpl, 3);
        assert_eq!(cpu.state.seg(SegReg::Ss).selector, SEL_UDATA);
    }
}

// ---- IRET ----

/// Write an IRET frame (EIP CS EFLAGS ESP SS) at `at`.
fn iret_frame(g: &mut SysGuest, at: u32, vals: &[u32]) {
    for (k, v) in vals.iter().enumerate() {
        g.w32(at + 4 * k as u32, *v);
    }
}

fn iret_to_user_and_fault_back(trap: bool) -> (Cpu<RamBus>, Exit, u32) {
    let mut g = SysGuest::new();
    g.set_idt(GP, HANDLERS, trap, 0);
    g.code(HANDLERS, |a| a.hlt().unwrap());
    let hlt_at = g.code(UCODE, |a| a.mov(eax, 0x1234).unwrap());
    g.code(hlt_at, |a| a.hlt().unwrap());
    let frame = KSTACK_TOP - 20;
    iret_frame(&mut g, frame, &[UCODE, SEL_UCODE as u32, 0x202, USTACK_TOP, SEL_UDATA as u32]);
    g.code(KCODE, |a| {
        a.mov(esp, frame).unwrap();
        a.iretd().unwrap();
    });
    let st = g.state(false);
    let (cpu, exit) = run_with(g, st, 0);
    (cpu, exit, hlt_at)
}

#[test]
fn iret_to_cpl3_and_back_through_an_interrupt_gate_clears_if() {
    let (cpu, exit, hlt_at) = iret_to_user_and_fault_back(false);
    assert_eq!(exit, Exit::Halt);
    assert_eq!(cpu.state.cpl, 0);
    assert_eq!(cpu.state.gpr[0], 0x1234);
    assert_eq!(cpu.state.eflags & flags::IF, 0);
    // The #GP frame on the ring-0 stack: error code, EIP, CS, EFLAGS, ESP, SS.
    let sp_ = cpu.state.gpr[4];
    assert_eq!(sp_, KSTACK_TOP - 24);
    assert_eq!(r32(&cpu, sp_), 0);
    assert_eq!(r32(&cpu, sp_ + 4), hlt_at);
    assert_eq!(r32(&cpu, sp_ + 8) & 0xffff, SEL_UCODE as u32);
    assert_eq!(r32(&cpu, sp_ + 12), 0x202);
    assert_eq!(r32(&cpu, sp_ + 16), USTACK_TOP);
    assert_eq!(r32(&cpu, sp_ + 20) & 0xffff, SEL_UDATA as u32);
}

#[test]
fn iret_to_cpl3_and_back_through_a_trap_gate_keeps_if() {
    let (cpu, exit, _) = iret_to_user_and_fault_back(true);
    assert_eq!(exit, Exit::Halt);
    assert_eq!(cpu.state.cpl, 0);
    assert_ne!(cpu.state.eflags & flags::IF, 0);
}

/// A CPL-3 guest that IRETs (same privilege) with the given EFLAGS image to a HLT.
fn user_iret(eflags_before: u32, popped: u32) -> Cpu<RamBus> {
    let mut g = SysGuest::new();
    let frame = USTACK_TOP - 12;
    let hlt_at = UCODE + 0x100;
    g.code(hlt_at, |a| a.hlt().unwrap());
    iret_frame(&mut g, frame, &[hlt_at, SEL_UCODE as u32, popped]);
    g.code(UCODE, |a| {
        a.mov(esp, frame).unwrap();
        a.iretd().unwrap();
    });
    let mut st = user_state(&g);
    st.eflags = eflags_before;
    let (cpu, exit) = run_all(g, st);
    assert_user_hlt(&exit, hlt_at);
    assert_eq!(cpu.state.gpr[4], USTACK_TOP);
    cpu
}

#[test]
fn iret_at_cpl3_cannot_change_iopl_and_if_without_iopl() {
    // CPL 3, IOPL 0, IF 1: the popped IOPL 3 and IF 0 are ignored; CF and DF are loaded.
    let cpu = user_iret(0x202, 0x3000 | flags::CF | flags::DF | flags::FIXED1);
    assert_eq!(cpu.state.eflags, flags::FIXED1 | flags::IF | flags::CF | flags::DF);
    // CPL 3 with IOPL 3: IF follows the frame, IOPL still does not.
    let cpu = user_iret(0x3202, flags::FIXED1);
    assert_eq!(cpu.state.eflags, 0x3002);
}

#[test]
fn iret_at_cpl0_loads_iopl_and_nt_vm_are_unsupported() {
    // Same-privilege IRET at CPL 0 loads IOPL and IF and pops 12 bytes.
    let mut g = SysGuest::new();
    let frame = KSTACK_TOP - 12;
    let hlt_at = KCODE + 0x100;
    g.code(hlt_at, |a| a.hlt().unwrap());
    iret_frame(&mut g, frame, &[hlt_at, SEL_KCODE as u32, 0x3003]);
    g.code(KCODE, |a| {
        a.mov(esp, frame).unwrap();
        a.iretd().unwrap();
    });
    let st = g.state(false);
    let (cpu, exit) = run_all(g, st);
    assert_eq!(exit, Exit::Halt);
    assert_eq!(cpu.state.eflags, 0x3003);
    assert_eq!(cpu.state.gpr[4], KSTACK_TOP);

    // NT=1: a task return.
    let mut g = SysGuest::new();
    g.code(KCODE, |a| a.iretd().unwrap());
    let mut st = g.state(false);
    st.eflags |= flags::NT;
    let (_, exit) = run_all(g, st);
    assert!(matches!(exit, Exit::Unsupported { .. }), "{exit:?}");

    // VM=1 in the popped EFLAGS at CPL 0: a return to virtual-8086 mode.
    let mut g = SysGuest::new();
    iret_frame(&mut g, frame, &[0, 0x1000, flags::VM | 2]);
    g.code(KCODE, |a| {
        a.mov(esp, frame).unwrap();
        a.iretd().unwrap();
    });
    let st = g.state(false);
    let (cpu, exit) = run_all(g, st);
    assert!(matches!(exit, Exit::Unsupported { .. }), "{exit:?}");
    assert_eq!(cpu.state.eip, KCODE + 5);
}

// ---- segment-register loads ----

#[test]
fn mov_ds_null_then_access_is_gp0() {
    let mut g = SysGuest::new();
    let load = g.code(KCODE, |a| {
        a.mov(eax, 0).unwrap();
        a.mov(ds, ax).unwrap();
    });
    g.code(load, |a| a.mov(ebx, dword_ptr(0x100)).unwrap());
    let st = g.state(false);
    let (cpu, exit) = run_all(g, st);
    assert_eq!(exc(&exit), (GP, Some(0), load));
    assert_eq!(cpu.state.seg(SegReg::Ds).selector, 0);
}

#[test]
fn mov_ss_null_and_wrong_rpl() {
    for (s, err) in [(0u32, 0u32), (SEL_KDATA as u32 | 3, SEL_KDATA as u32), (SEL_UDATA as u32, SEL_UDATA as u32 & !3)]
    {
        let mut g = SysGuest::new();
        let at = g.code(KCODE, |a| a.mov(eax, s).unwrap());
        g.code(at, |a| a.mov(ss, ax).unwrap());
        let st = g.state(false);
        let (cpu, exit) = run_all(g, st);
        assert_eq!(exc(&exit), (GP, Some(err), at), "ss {s:#x}");
        assert_eq!(cpu.state.seg(SegReg::Ss).selector, SEL_KDATA);
    }
}

#[test]
fn mov_cs_is_ud_and_mov_from_sreg_sizes() {
    let mut g = SysGuest::new();
    g.code(KCODE, |a| a.db(&[0x8e, 0xc8]).unwrap()); // mov cs, ax
    let st = g.state(false);
    let (_, exit) = run_all(g, st);
    assert_eq!(exc(&exit), (vector::UD, None, KCODE));

    let mut g = SysGuest::new();
    g.w32(DATA, 0xffff_ffff);
    g.code(KCODE, |a| {
        a.mov(eax, 0xffff_ffffu32).unwrap();
        a.mov(ecx, 0xffff_ffffu32).unwrap();
        a.mov(eax, ss).unwrap(); // zero-extended on P6 and later
        a.mov(cx, ds).unwrap(); // 16-bit register: upper half kept
        a.mov(word_ptr(DATA), ss).unwrap(); // memory: always 16 bits
        a.hlt().unwrap();
    });
    let st = g.state(false);
    let (cpu, exit) = run_all(g, st);
    assert_eq!(exit, Exit::Halt);
    assert_eq!(cpu.state.gpr[0], SEL_KDATA as u32);
    assert_eq!(cpu.state.gpr[1], 0xffff_0000 | SEL_KDATA as u32);
    assert_eq!(r32(&cpu, DATA), 0xffff_0000 | SEL_KDATA as u32);
}

#[test]
fn mov_ds_from_user_to_kernel_data_is_gp_and_user_data_loads() {
    let mut g = SysGuest::new();
    let at = g.code(UCODE, |a| {
        a.mov(eax, SEL_UDATA as u32).unwrap();
        a.mov(ds, ax).unwrap();
        a.mov(eax, SEL_KDATA as u32 | 3).unwrap();
    });
    g.code(at, |a| a.mov(ds, ax).unwrap());
    let st = user_state(&g);
    let (cpu, exit) = run_all(g, st);
    assert_eq!(exc(&exit), (GP, Some(SEL_KDATA as u32), at));
    assert_eq!(cpu.state.seg(SegReg::Ds).selector, SEL_UDATA);
}

#[test]
fn lds_and_lss_load_pointer() {
    let mut g = SysGuest::new();
    g.w32(DATA, 0x1234_5678);
    g.w16(DATA + 4, SEL_UDATA);
    g.w32(DATA + 8, 0x7000);
    g.w16(DATA + 12, SEL_KDATA);
    g.w16(DATA + 16, 0x4321);
    g.w16(DATA + 18, SEL_KDATA);
    g.code(KCODE, |a| {
        a.lss(esp, fword_ptr(DATA + 8)).unwrap();
        a.les(bx, dword_ptr(DATA + 16)).unwrap();
        a.lds(esi, fword_ptr(DATA)).unwrap();
        a.hlt().unwrap();
    });
    let mut st = g.state(false);
    st.gpr[3] = 0xaaaa_0000;
    let (cpu, exit) = run_all(g, st);
    assert_eq!(exit, Exit::Halt);
    assert_eq!(cpu.state.gpr[4], 0x7000);
    assert_eq!(cpu.state.seg(SegReg::Ss).selector, SEL_KDATA);
    assert_eq!(cpu.state.gpr[3], 0xaaaa_4321);
    assert_eq!(cpu.state.seg(SegReg::Es).selector, SEL_KDATA);
    assert_eq!(cpu.state.gpr[6], 0x1234_5678);
    let d = cpu.state.seg(SegReg::Ds);
    assert_eq!(d.selector, SEL_UDATA);
    assert_eq!(d.dpl(), 3);

    // A faulting segment load leaves the destination register unchanged.
    let mut g = SysGuest::new();
    g.w32(DATA, 0x1234_5678);
    g.w16(DATA + 4, SEL_KCODE); // LSS with a code segment: #GP(sel)
    g.code(KCODE, |a| a.lss(esp, fword_ptr(DATA)).unwrap());
    let st = g.state(false);
    let (cpu, exit) = run_all(g, st);
    assert_eq!(exc(&exit), (GP, Some(SEL_KCODE as u32), KCODE));
    assert_eq!(cpu.state.gpr[4], KSTACK_TOP);
}

// ---- LAR LSL VERR VERW ----

#[derive(Clone, Copy, Debug)]
enum Probe {
    Lar,
    Lsl,
    Verr,
    Verw,
}

/// Run one probe of selector `s` at `cpl` twice (ZF clear and set before); returns ZF and EAX
/// (preloaded with a sentinel), checking that ZF never leaks from before.
fn probe(p: Probe, s: u16, cpl: u8, setup: impl Fn(&mut SysGuest)) -> (bool, u32) {
    let mut out = None;
    for zf_before in [false, true] {
        let mut g = SysGuest::new();
        setup(&mut g);
        let start = if cpl == 0 { KCODE } else { UCODE };
        let end = g.code(start, |a| {
            a.mov(eax, 0xdead_beefu32).unwrap();
            a.mov(ecx, s as u32).unwrap();
            if zf_before {
                a.cmp(eax, eax).unwrap();
            } else {
                a.cmp(eax, 0).unwrap();
            }
            match p {
                Probe::Lar => a.lar(eax, ecx).unwrap(),
                Probe::Lsl => a.lsl(eax, ecx).unwrap(),
                Probe::Verr => a.verr(cx).unwrap(),
                Probe::Verw => a.verw(cx).unwrap(),
            }
        });
        g.code(end, |a| a.hlt().unwrap());
        let st = if cpl == 0 { g.state(false) } else { user_state(&g) };
        let (cpu, exit) = run_all(g, st);
        if cpl == 0 {
            assert_eq!(exit, Exit::Halt);
        } else {
            assert_user_hlt(&exit, end);
        }
        let r = (cpu.state.eflags & flags::ZF != 0, cpu.state.gpr[0]);
        if let Some(prev) = out {
            assert_eq!(prev, r, "{p:?} {s:#x}: ZF before the instruction leaked");
        }
        out = Some(r);
    }
    out.unwrap()
}

const NONE: u32 = 0xdead_beef;

fn extra_gdt(g: &mut SysGuest) {
    // 6: conforming DPL-0 code; 7: 32-bit call gate DPL 3; 8: interrupt gate in the GDT;
    // 9: LDT descriptor DPL 0; 10: 16-bit data, byte-granular limit 0x1234, DPL 3, read-only.
    g.set_gdt(6, Descriptor::new(0, 0xffff_ffff, CODE32 | attr::DC));
    g.set_gdt(7, SysGuest::gate(SEL_KCODE, 0x1000, sys_type::CALL_GATE32, 3, 0));
    g.set_gdt(8, SysGuest::gate(SEL_KCODE, 0x1000, sys_type::INT_GATE32, 3, 0));
    g.set_gdt(9, Descriptor::new(0x7000, 0xff, attr::P | sys_type::LDT as u16));
    g.set_gdt(10, Descriptor::new(0x12_0000, 0x1234, attr::P | attr::S | (3 << attr::DPL_SHIFT)));
}

#[test]
fn lar_lsl_verr_verw_at_cpl0() {
    use Probe::*;
    // Access rights: descriptor dword 2 masked with 00FFFF00H.
    assert_eq!(probe(Lar, SEL_KCODE, 0, extra_gdt), (true, 0x00cf_9a00));
    assert_eq!(probe(Lsl, SEL_KCODE, 0, extra_gdt), (true, 0xffff_ffff));
    assert!(probe(Verr, SEL_KCODE, 0, extra_gdt).0);
    assert!(!probe(Verw, SEL_KCODE, 0, extra_gdt).0);
    assert_eq!(probe(Lar, SEL_KDATA, 0, extra_gdt), (true, 0x00cf_9200));
    assert!(probe(Verw, SEL_KDATA, 0, extra_gdt).0);
    assert_eq!(probe(Lar, SEL_UDATA, 0, extra_gdt), (true, 0x00cf_f200));
    // Read-only data: readable, not writable; byte-granular limit.
    assert!(probe(Verr, sel(10, 0), 0, extra_gdt).0);
    assert!(!probe(Verw, sel(10, 0), 0, extra_gdt).0);
    assert_eq!(probe(Lsl, sel(10, 0), 0, extra_gdt), (true, 0x1234));
    assert_eq!(probe(Lar, sel(10, 0), 0, extra_gdt), (true, 0x0000_f000));
    // System descriptors: the TSS (available in the GDT), an LDT, a call gate, an interrupt gate.
    assert_eq!(probe(Lar, SEL_TSS, 0, extra_gdt), (true, 0x0000_8900));
    assert_eq!(probe(Lsl, SEL_TSS, 0, extra_gdt), (true, 0x67));
    assert!(!probe(Verr, SEL_TSS, 0, extra_gdt).0);
    assert_eq!(probe(Lar, sel(9, 0), 0, extra_gdt), (true, 0x0000_8200));
    assert_eq!(probe(Lsl, sel(9, 0), 0, extra_gdt), (true, 0xff));
    assert!(probe(Lar, sel(7, 0), 0, extra_gdt).0);
    assert_eq!(probe(Lsl, sel(7, 0), 0, extra_gdt), (false, NONE));
    assert_eq!(probe(Lar, sel(8, 0), 0, extra_gdt), (false, NONE));
    // Null selector, selector beyond the GDT limit, LDT selector with no LDT: ZF=0, no fault.
    for s in [0u16, 3, 0x80, 0x0c] {
        assert_eq!(probe(Lar, s, 0, extra_gdt), (false, NONE), "{s:#x}");
        assert_eq!(probe(Lsl, s, 0, extra_gdt), (false, NONE), "{s:#x}");
        assert!(!probe(Verr, s, 0, extra_gdt).0, "{s:#x}");
        assert!(!probe(Verw, s, 0, extra_gdt).0, "{s:#x}");
    }
    // RPL 3 > DPL 0: invisible even at CPL 0.
    assert_eq!(probe(Lar, SEL_KDATA | 3, 0, extra_gdt), (false, NONE));
    assert!(!probe(Verw, SEL_KDATA | 3, 0, extra_gdt).0);
}

#[test]
fn lar_lsl_verr_verw_at_cpl3() {
    use Probe::*;
    assert_eq!(probe(Lar, SEL_KCODE, 3, extra_gdt), (false, NONE));
    assert_eq!(probe(Lsl, SEL_KDATA, 3, extra_gdt), (false, NONE));
    assert!(!probe(Verr, SEL_KDATA, 3, extra_gdt).0);
    assert_eq!(probe(Lar, SEL_UCODE, 3, extra_gdt), (true, 0x00cf_fa00));
    assert!(probe(Verr, SEL_UCODE, 3, extra_gdt).0);
    assert!(probe(Verw, SEL_UDATA, 3, extra_gdt).0);
    assert_eq!(probe(Lar, SEL_TSS, 3, extra_gdt), (false, NONE));
    // Conforming code is visible at any CPL.
    assert_eq!(probe(Lar, sel(6, 0), 3, extra_gdt), (true, 0x00cf_9e00));
    assert!(probe(Verr, sel(6, 0), 3, extra_gdt).0);
    // A DPL-3 call gate is visible.
    assert!(probe(Lar, sel(7, 3), 3, extra_gdt).0);
    assert_eq!(probe(Lar, 0, 3, extra_gdt), (false, NONE));
}

#[test]
fn lar_16bit_operand_and_real_mode_ud() {
    let mut g = SysGuest::new();
    g.code(KCODE, |a| {
        a.mov(eax, 0xdead_beefu32).unwrap();
        a.mov(ecx, SEL_KDATA as u32).unwrap();
        a.lar(ax, cx).unwrap();
        a.hlt().unwrap();
    });
    let st = g.state(false);
    let (cpu, exit) = run_all(g, st);
    assert_eq!(exit, Exit::Halt);
    assert_eq!(cpu.state.gpr[0], 0xdead_9200);

    for f in [
        (|a: &mut CodeAssembler| a.lar(ax, cx).unwrap()) as fn(&mut CodeAssembler),
        |a| a.lsl(ax, cx).unwrap(),
        |a| a.verr(cx).unwrap(),
        |a| a.verw(cx).unwrap(),
        |a| a.arpl(ax, cx).unwrap(),
        |a| a.sldt(ax).unwrap(),
        |a| a.str(ax).unwrap(),
        |a| a.lldt(ax).unwrap(),
        |a| a.ltr(ax).unwrap(),
    ] {
        let (_, exit) = run_real(f);
        assert_eq!(exc(&exit), (vector::UD, None, 0), "{exit:?}");
    }
}

#[test]
fn arpl_adjusts_rpl() {
    let mut g = SysGuest::new();
    g.w16(DATA, 0x10);
    g.code(KCODE, |a| {
        a.mov(eax, 0xffff_0010u32).unwrap();
        a.mov(ecx, 0x1b).unwrap();
        a.arpl(ax, cx).unwrap();
        a.arpl(word_ptr(DATA), cx).unwrap();
        a.hlt().unwrap();
    });
    let st = g.state(false);
    let (cpu, exit) = run_all(g, st);
    assert_eq!(exit, Exit::Halt);
    assert_eq!(cpu.state.gpr[0], 0xffff_0013);
    assert_eq!(r16(&cpu, DATA), 0x13);
    assert_ne!(cpu.state.eflags & flags::ZF, 0);

    let mut g = SysGuest::new();
    g.code(KCODE, |a| {
        a.mov(eax, 0x13).unwrap();
        a.mov(ecx, 0x10).unwrap();
        a.cmp(eax, eax).unwrap();
        a.arpl(ax, cx).unwrap();
        a.hlt().unwrap();
    });
    let st = g.state(false);
    let (cpu, exit) = run_all(g, st);
    assert_eq!(exit, Exit::Halt);
    assert_eq!(cpu.state.gpr[0], 0x13);
    assert_eq!(cpu.state.eflags & flags::ZF, 0);
}

// ---- descriptor-table registers, LDTR, TR, MSW ----

#[test]
fn lgdt_lidt_lldt_ltr_lmsw_clts_at_cpl3_are_gp0() {
    let ops: [fn(&mut CodeAssembler); 6] = [
        |a| a.lgdt(fword_ptr(DATA)).unwrap(),
        |a| a.lidt(fword_ptr(DATA)).unwrap(),
        |a| a.lldt(ax).unwrap(),
        |a| a.ltr(ax).unwrap(),
        |a| a.lmsw(ax).unwrap(),
        |a| a.clts().unwrap(),
    ];
    for f in ops {
        let mut g = SysGuest::new();
        g.code(UCODE, f);
        let st = user_state(&g);
        let (cpu, exit) = run_all(g, st);
        assert_eq!(exc(&exit), (GP, Some(0), UCODE));
        assert_eq!(cpu.state.gdtr.base, GDT);
    }
}

#[test]
fn sgdt_sidt_sldt_str_smsw_at_cpl3_store_the_real_values() {
    let mut g = SysGuest::new();
    let end = g.code(UCODE, |a| {
        a.mov(ebx, 0xffff_ffffu32).unwrap();
        a.mov(ecx, 0xffff_ffffu32).unwrap();
        a.mov(edx, 0xffff_ffffu32).unwrap();
        a.sgdt(fword_ptr(DATA)).unwrap();
        a.sidt(fword_ptr(DATA + 8)).unwrap();
        a.str(ebx).unwrap();
        a.sldt(ecx).unwrap();
        a.smsw(edx).unwrap();
        a.smsw(word_ptr(DATA + 16)).unwrap();
    });
    g.code(end, |a| a.hlt().unwrap());
    let st = user_state(&g);
    let cr0_ = st.cr0;
    let (cpu, exit) = run_all(g, st);
    assert_user_hlt(&exit, end);
    assert_eq!(r16(&cpu, DATA), 8 * 16 - 1);
    assert_eq!(r32(&cpu, DATA + 2), GDT);
    assert_eq!(r16(&cpu, DATA + 8), 0x7ff);
    assert_eq!(r32(&cpu, DATA + 10), IDT);
    assert_eq!(cpu.state.gpr[3], SEL_TSS as u32);
    assert_eq!(cpu.state.gpr[1], 0);
    assert_eq!(cpu.state.gpr[2], cr0_);
    assert_eq!(r16(&cpu, DATA + 16), cr0_ as u16);
}

#[test]
fn ltr_marks_the_tss_busy_and_lldt_loads_an_ldt() {
    let mut g = SysGuest::new();
    // An LDT at 0x7000 with one entry (index 1): DPL-0 data with base 0x123000.
    g.set_gdt(FIRST_FREE, Descriptor::new(0x7000, 0xf, attr::P | sys_type::LDT as u16));
    g.w64(0x7008, Descriptor::new(0x12_3000, 0xfff, DATA32 & !attr::G).0);
    g.code(KCODE, |a| {
        a.mov(eax, SEL_TSS as u32).unwrap();
        a.ltr(ax).unwrap();
        a.mov(eax, sel(FIRST_FREE, 0) as u32).unwrap();
        a.lldt(ax).unwrap();
        a.mov(eax, 0x0c).unwrap(); // LDT index 1, TI=1
        a.mov(ds, ax).unwrap();
        a.mov(ebx, 0xffff_ffffu32).unwrap();
        a.str(ebx).unwrap();
        a.sldt(ecx).unwrap();
        a.hlt().unwrap();
    });
    let mut st = g.state(false);
    st.tr = Segment::default();
    let (cpu, exit) = run_all(g, st);
    assert_eq!(exit, Exit::Halt);
    assert_eq!(cpu.bus.ram[(GDT + 8 * 5 + 5) as usize], 0x8b, "TSS marked busy in the GDT");
    assert_eq!(cpu.state.tr.selector, SEL_TSS);
    assert_eq!(cpu.state.tr.base, TSS);
    assert_eq!(cpu.state.tr.limit, 0x67);
    assert_eq!(cpu.state.tr.system_type(), sys_type::TSS32_BUSY);
    assert_eq!(cpu.state.ldtr.base, 0x7000);
    assert_eq!(cpu.state.ldtr.limit, 0xf);
    assert_eq!(cpu.state.seg(SegReg::Ds).base, 0x12_3000);
    assert_eq!(cpu.state.gpr[3], SEL_TSS as u32);
    assert_eq!(cpu.state.gpr[1], sel(FIRST_FREE, 0) as u32);
}

#[test]
fn ltr_and_lldt_faults() {
    let ldt = sel(FIRST_FREE, 0);
    let np_ldt = sel(FIRST_FREE + 1, 0);
    let setup = |g: &mut SysGuest| {
        g.set_gdt(FIRST_FREE, Descriptor::new(0x7000, 0xf, attr::P | sys_type::LDT as u16));
        g.set_gdt(FIRST_FREE + 1, Descriptor::new(0x7000, 0xf, sys_type::LDT as u16));
    };
    let cases: [(bool, u16, u8, Option<u32>); 8] = [
        (true, 0, GP, Some(0)),                           // LTR null
        (true, SEL_TSS | 4, GP, Some(SEL_TSS as u32 | 4)), // LTR with TI=1
        (true, SEL_KDATA, GP, Some(SEL_KDATA as u32)),     // LTR of a data segment
        (true, ldt, GP, Some(ldt as u32)),                  // LTR of an LDT
        (false, SEL_TSS, GP, Some(SEL_TSS as u32)),         // LLDT of a TSS
        (false, 0x0c, GP, Some(0x0c)),                      // LLDT with TI=1
        (false, np_ldt, NP, Some(np_ldt as u32)),           // LLDT non-present
        (false, 0x80, GP, Some(0x80)),                      // LLDT beyond the GDT limit
    ];
    for (is_ltr, s, v, e) in cases {
        let mut g = SysGuest::new();
        setup(&mut g);
        let at = g.code(KCODE, |a| a.mov(eax, s as u32).unwrap());
        g.code(at, |a| if is_ltr { a.ltr(ax).unwrap() } else { a.lldt(ax).unwrap() });
        let st = g.state(false);
        let (_, exit) = run_all(g, st);
        assert_eq!(exc(&exit), (v, e, at), "ltr={is_ltr} {s:#x}");
    }
    // LTR of the TSS already busy (TR's own): #GP(sel).
    let mut g = SysGuest::new();
    let at = g.code(KCODE, |a| {
        a.mov(eax, SEL_TSS as u32).unwrap();
        a.ltr(ax).unwrap();
    });
    g.code(at, |a| a.ltr(ax).unwrap());
    let st = g.state(false);
    let (_, exit) = run_all(g, st);
    assert_eq!(exc(&exit), (GP, Some(SEL_TSS as u32), at));
    // LLDT with a null selector makes LDTR unusable: loading an LDT selector then faults.
    let mut g = SysGuest::new();
    setup(&mut g);
    let at = g.code(KCODE, |a| {
        a.mov(eax, ldt as u32).unwrap();
        a.lldt(ax).unwrap();
        a.mov(eax, 0).unwrap();
        a.lldt(ax).unwrap();
        a.mov(eax, 0x0c).unwrap();
    });
    g.code(at, |a| a.mov(ds, ax).unwrap());
    let st = g.state(false);
    let (_, exit) = run_all(g, st);
    assert_eq!(exc(&exit), (GP, Some(0x0c), at));
}

#[test]
fn lmsw_cannot_clear_pe_and_clts_clears_ts() {
    let mut g = SysGuest::new();
    g.code(KCODE, |a| {
        a.mov(eax, 0xfff8u32 | 0x8).unwrap(); // TS set, PE clear, high bits ignored
        a.lmsw(ax).unwrap();
        a.smsw(ebx).unwrap();
        a.clts().unwrap();
        a.smsw(ecx).unwrap();
        a.hlt().unwrap();
    });
    let st = g.state(false);
    let cr0_ = st.cr0;
    let (cpu, exit) = run_all(g, st);
    assert_eq!(exit, Exit::Halt);
    assert_eq!(cpu.state.gpr[3], (cr0_ & !0xe) | 0x8 | 1);
    assert_eq!(cpu.state.gpr[1], (cr0_ & !0xe) | 1);
    assert!(cpu.state.protected_mode());
}

// ---- real mode ----

const REAL_CS: u16 = 0x1000; // base 0x10000 = KCODE

/// Reset-like real-mode state at REAL_CS:0, stack at 0:0x8000.
fn real_state() -> CpuState {
    let mut s = CpuState::reset();
    s.seg[SegReg::Cs as usize] = Segment::real_mode(REAL_CS, true);
    s.eip = 0;
    s.gpr[4] = 0x8000;
    s
}

fn run_real(f: impl FnOnce(&mut CodeAssembler)) -> (Cpu<RamBus>, Exit) {
    let mut g = SysGuest::new();
    code_at(&mut g, (REAL_CS as u32) << 4, 0, 16, f);
    run_all(g, real_state())
}

#[test]
fn real_mode_far_call_retf_iret_and_lgdt_24bit_base() {
    let mut g = SysGuest::new();
    // Callee at 0x2000:0x0010 returns with RETF 2.
    code_at(&mut g, 0x20010, 0x10, 16, |a| {
        a.mov(bx, 0x77).unwrap();
        a.retf_1(2).unwrap();
    });
    // IRET target at 0x3000:0x0020.
    code_at(&mut g, 0x30020, 0x20, 16, |a| {
        a.mov(word_ptr(0x600), 0x55).unwrap();
        a.lgdt(fword_ptr(0x700)).unwrap(); // 16-bit operand size: 24-bit base
        a.db(&[0x66]).unwrap();
        a.lidt(fword_ptr(0x708)).unwrap(); // o32: 32-bit base
        a.hlt().unwrap();
    });
    g.w16(0x700, 0x1ff);
    g.w32(0x702, 0x1234_5678);
    g.w16(0x708, 0x2ff);
    g.w32(0x70a, 0x8765_4321);
    code_at(&mut g, 0x10000, 0, 16, |a| {
        a.mov(word_ptr(0x7ffe), 0).unwrap(); // the word RETF 2 releases
        a.mov(sp, 0x7ffe).unwrap();
        a.call_far(0x2000, 0x10).unwrap();
        a.mov(si, sp).unwrap();
        // An IRET frame: IP, CS, FLAGS with IOPL 3 and CF.
        a.mov(word_ptr(0x7000), 0x20).unwrap();
        a.mov(word_ptr(0x7002), 0x3000).unwrap();
        a.mov(word_ptr(0x7004), 0x3003).unwrap();
        a.mov(sp, 0x7000).unwrap();
        a.iret().unwrap();
    });
    let (cpu, exit) = run_all(g, real_state());
    assert_eq!(exit, Exit::Halt);
    assert_eq!(cpu.state.gpr[3] & 0xffff, 0x77);
    assert_eq!(cpu.state.gpr[6] & 0xffff, 0x8000);
    let c = cpu.state.seg(SegReg::Cs);
    assert_eq!((c.selector, c.base), (0x3000, 0x30000));
    assert_eq!(cpu.state.eflags, 0x3003);
    assert_eq!(cpu.state.gpr[4] & 0xffff, 0x7006);
    assert_eq!(r16(&cpu, 0x600), 0x55);
    assert_eq!((cpu.state.gdtr.base, cpu.state.gdtr.limit), (0x34_5678, 0x1ff));
    assert_eq!((cpu.state.idtr.base, cpu.state.idtr.limit), (0x8765_4321, 0x2ff));
}

#[test]
fn real_mode_to_protected_mode_with_lmsw_and_far_jmp() {
    let mut g = SysGuest::new();
    let target = KCODE + 0x200;
    let end = g.code(target, |a| {
        a.mov(eax, SEL_KDATA as u32).unwrap();
        a.mov(ds, ax).unwrap();
        a.mov(ss, ax).unwrap();
        a.mov(esp, KSTACK_TOP).unwrap();
        a.mov(dword_ptr(DATA), 0x55aa_1234).unwrap();
        a.hlt().unwrap();
    });
    g.w16(0x700, 8 * 16 - 1);
    g.w32(0x702, GDT);
    let mut jmp = vec![0x66, 0xea];
    jmp.extend_from_slice(&target.to_le_bytes());
    jmp.extend_from_slice(&SEL_KCODE.to_le_bytes());
    code_at(&mut g, 0x10000, 0, 16, |a| {
        a.lgdt(fword_ptr(0x700)).unwrap();
        a.smsw(ax).unwrap();
        a.or(ax, 1).unwrap();
        a.lmsw(ax).unwrap();
        a.db(&jmp).unwrap(); // jmp dword far SEL_KCODE:target
    });
    let (cpu, exit) = run_all(g, real_state());
    assert_eq!(exit, Exit::Halt);
    assert!(cpu.state.protected_mode());
    assert_eq!(cpu.state.cpl, 0);
    let c = cpu.state.seg(SegReg::Cs);
    assert_eq!(c.selector, SEL_KCODE);
    assert_eq!(c.base, 0);
    assert!(c.big());
    assert_eq!(cpu.state.eip, end);
    assert_eq!(cpu.state.seg(SegReg::Ds).selector, SEL_KDATA);
    assert_eq!(r32(&cpu, DATA), 0x55aa_1234);
}

/// IRET to CPL 3, then INT 0x80 back through an interrupt gate (IF cleared) or a trap gate
/// (IF kept). INT n belongs to the control family: while it is still a stub the test stops
/// at it.
#[test]
fn iret_to_cpl3_and_int_back() {
    for trap in [false, true] {
        let mut g = SysGuest::new();
        g.set_idt(0x80, HANDLERS, trap, 3);
        g.code(HANDLERS, |a| a.hlt().unwrap());
        let int_end = g.code(UCODE, |a| {
            a.mov(eax, 0x1234).unwrap();
            a.int(0x80).unwrap();
        });
        let frame = KSTACK_TOP - 20;
        iret_frame(&mut g, frame, &[UCODE, SEL_UCODE as u32, 0x202, USTACK_TOP, SEL_UDATA as u32]);
        g.code(KCODE, |a| {
            a.mov(esp, frame).unwrap();
            a.iretd().unwrap();
        });
        let st = g.state(false);
        let (cpu, exit) = run_with(g, st, 0);
        assert_eq!(exit, Exit::Halt, "{exit}");
        assert_eq!(cpu.state.cpl, 0);
        assert_eq!(cpu.state.eflags & flags::IF != 0, trap);
        let sp_ = cpu.state.gpr[4];
        assert_eq!(sp_, KSTACK_TOP - 20);
        assert_eq!(r32(&cpu, sp_), int_end);
        assert_eq!(r32(&cpu, sp_ + 8), 0x202);
        assert_eq!(r32(&cpu, sp_ + 12), USTACK_TOP);
    }
}
