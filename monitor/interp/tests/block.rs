//! The block cache `run` executes from (`src/block.rs`): self-modifying code within a block,
//! through another linear alias and by REP STOS; code changed by someone else between runs;
//! exact budgets; the CS limit in the middle of a block; 16-bit offset wrap-around.
//!
//! Expected values come from the SDM (vol. 3 §11.6: a store to an instruction that has not
//! yet executed is seen when it executes; vol. 2 "Protection-mode exceptions": #GP(0) for
//! an instruction not entirely within the CS limit). Where the SDM says nothing precise (the
//! 16-bit wrap), the reference is the single-instruction path (`step`), which the block
//! cache must reproduce exactly: every test also runs its guest with `step` and compares.

mod common;

use common::sys::*;
use common::*;
use vmm_interp::mmu::pte;
use vmm_interp::state::attr;
use vmm_interp::{Bus, Cpu, CpuState, Exit, RamBus};

const EAX: usize = 0;
const ECX: usize = 1;
const EBX: usize = 3;
const ESI: usize = 6;

/// Run `cpu` with `run(budget)` and a clone with `step` (the same budget), and check both
/// end in the same exit, state, instruction count and RAM. Returns the `run` result.
fn run_and_step(mut cpu: Cpu<RamBus>, budget: u64) -> (Cpu<RamBus>, Exit) {
    let mut other = Cpu::with_state(cpu.state.clone(), cpu.bus.clone());
    other.intercept = cpu.intercept;
    other.report = cpu.report;
    other.icount = cpu.icount;
    let exit = cpu.run(budget);
    let mut step_exit = Exit::Budget;
    for _ in 0..budget {
        if let Some(e) = other.step() {
            step_exit = e;
            break;
        }
    }
    assert_eq!(exit, step_exit, "run and step end differently");
    assert_eq!(cpu.state, other.state, "run and step end in different states");
    assert_eq!(cpu.icount, other.icount, "run and step retire different counts");
    assert!(cpu.bus.ram == other.bus.ram, "run and step leave different memory");
    (cpu, exit)
}

/// A flat CPL 0 guest (paging off) with `bytes` at CODE.
fn flat(bytes: &[u8], setup: impl FnOnce(&mut CpuState)) -> Cpu<RamBus> {
    let mut bus = RamBus::new(RAM);
    bus.ram[CODE as usize..CODE as usize + bytes.len()].copy_from_slice(bytes);
    let mut st = CpuState::flat_protected(0);
    st.eip = CODE;
    st.gpr[4] = STACK_TOP;
    st.eflags = 0x2;
    setup(&mut st);
    let mut cpu = Cpu::with_state(st, bus);
    cpu.intercept = !0;
    cpu
}

fn le(v: u32) -> [u8; 4] {
    v.to_le_bytes()
}

#[test]
fn store_into_the_next_instruction_is_seen() {
    // 1000: mov byte [1008], 0x42 ; 1007: mov al, 0x11 ; 1009: hlt
    let mut code = vec![0xc6, 0x05];
    code.extend(le(CODE + 8));
    code.extend([0x42, 0xb0, 0x11, 0xf4]);
    let (cpu, exit) = run_and_step(flat(&code, |_| {}), 100);
    assert_eq!(exit, Exit::Halt);
    assert_eq!(cpu.state.gpr[EAX] & 0xff, 0x42, "the modified immediate executes");
    assert_eq!(cpu.icount, 3);
}

#[test]
fn loop_patching_an_instruction_later_in_its_block() {
    // 1000: mov ecx, 5
    // 1005: mov [100d], cl      ; patches the immediate of the ADD below
    // 100b: add ebx, 0          ; 83 c3 ib
    // 100e: dec ecx
    // 100f: jnz 1005
    // 1011: hlt
    let mut code = vec![0xb9, 5, 0, 0, 0, 0x88, 0x0d];
    code.extend(le(CODE + 0xd));
    code.extend([0x83, 0xc3, 0x00, 0x49, 0x75, 0xf4, 0xf4]);
    let (cpu, exit) = run_and_step(flat(&code, |_| {}), 1000);
    assert_eq!(exit, Exit::Halt);
    assert_eq!(cpu.state.gpr[EBX], 5 + 4 + 3 + 2 + 1);
    assert_eq!(cpu.icount, 1 + 5 * 4 + 1);
}

#[test]
fn store_through_another_linear_alias_is_seen() {
    // The code page is also mapped at ALIAS; the store goes through the alias.
    const ALIAS: u32 = 0x50_0000;
    let mut g = SysGuest::new();
    g.identity_map(pte::RW);
    g.set_pte(ALIAS, KCODE | pte::P | pte::RW);
    let mut code = vec![0xc6, 0x05];
    code.extend(le(ALIAS + 8));
    code.extend([0x42, 0xb0, 0x11, 0xf4]);
    g.bus.ram[KCODE as usize..KCODE as usize + code.len()].copy_from_slice(&code);
    let st = g.state(true);
    let mut cpu = Cpu::with_state(st, g.bus);
    cpu.intercept = !0;
    let (cpu, exit) = run_and_step(cpu, 100);
    assert_eq!(exit, Exit::Halt);
    assert_eq!(cpu.state.gpr[EAX] & 0xff, 0x42);
}

#[test]
fn rep_stos_over_the_following_instructions_is_seen() {
    // 1000: mov edi, 100f ; 1005: mov al, 0x90 ; 1007: mov ecx, 2 ; 100c: cld
    // 100d: rep stosb ; 100f: inc ebx ; 1010: inc ebx ; 1011: hlt
    let mut code = vec![0xbf];
    code.extend(le(CODE + 0xf));
    code.extend([0xb0, 0x90, 0xb9, 2, 0, 0, 0, 0xfc, 0xf3, 0xaa, 0x43, 0x43, 0xf4]);
    let (cpu, exit) = run_and_step(flat(&code, |_| {}), 100);
    assert_eq!(exit, Exit::Halt);
    assert_eq!(cpu.state.gpr[EBX], 0, "the INCs were overwritten by NOPs before they ran");
}

#[test]
fn code_changed_between_runs_is_seen() {
    // top: inc ebx ; jmp top
    let mut cpu = flat(&[0x43, 0xeb, 0xfd], |_| {});
    assert_eq!(cpu.run(100), Exit::Budget);
    assert_eq!(cpu.state.gpr[EBX], 50);
    assert_eq!(cpu.icount, 100);
    cpu.bus.ram()[CODE as usize] = 0x46; // inc esi
    let (cpu, exit) = run_and_step(cpu, 100);
    assert_eq!(exit, Exit::Budget);
    assert_eq!(cpu.state.gpr[EBX], 50);
    assert_eq!(cpu.state.gpr[ESI], 50);
    assert_eq!(cpu.icount, 200);
}

#[test]
fn budget_is_exact() {
    // 20 x inc eax ; hlt
    let mut code = vec![0x40; 20];
    code.push(0xf4);
    for budget in [1u64, 2, 7, 19, 20] {
        let (cpu, exit) = run_and_step(flat(&code, |_| {}), budget);
        assert_eq!(exit, Exit::Budget);
        assert_eq!(cpu.icount, budget);
        assert_eq!(cpu.state.gpr[EAX], budget as u32);
        assert_eq!(cpu.state.eip, CODE + budget as u32);
    }
    let (cpu, exit) = run_and_step(flat(&code, |_| {}), 21);
    assert_eq!(exit, Exit::Halt);
    assert_eq!(cpu.icount, 21);
}

#[test]
fn cs_limit_inside_a_block() {
    // add eax, 1 (83 c0 01) x 3 at 1000, 1003, 1006; the limit ends inside the third.
    let code = [0x83, 0xc0, 0x01, 0x83, 0xc0, 0x01, 0x83, 0xc0, 0x01, 0xf4];
    let cpu = flat(&code, |st| st.seg[1].limit = CODE + 7);
    let (cpu, exit) = run_and_step(cpu, 100);
    assert_eq!(exit, Exit::Exception { vector: GP, error_code: Some(0), cr2: 0, eip: CODE + 6 });
    assert_eq!(cpu.state.gpr[EAX], 2);
    assert_eq!(cpu.icount, 2);
}

#[test]
fn taken_and_fall_through_branches_in_one_block() {
    // mov ecx, 10 ; top: test cl, 1 ; jz skip ; inc ebx ; skip: dec ecx ; jnz top ; hlt
    let code = [0xb9, 10, 0, 0, 0, 0xf6, 0xc1, 0x01, 0x74, 0x01, 0x43, 0x49, 0x75, 0xf7, 0xf4];
    let (cpu, exit) = run_and_step(flat(&code, |_| {}), 1000);
    assert_eq!(exit, Exit::Halt);
    assert_eq!(cpu.state.gpr[EBX], 5, "odd counts 9 7 5 3 1");
    assert_eq!(cpu.state.gpr[ECX], 0);
}

#[test]
fn fault_in_the_middle_of_a_block() {
    // inc eax ; inc eax ; xor edx, edx ; div edx (#DE) ; inc eax ; hlt
    let code = [0x40, 0x40, 0x31, 0xd2, 0xf7, 0xf2, 0x40, 0xf4];
    let (cpu, exit) = run_and_step(flat(&code, |_| {}), 100);
    assert_eq!(exit, Exit::Exception { vector: 0, error_code: None, cr2: 0, eip: CODE + 4 });
    assert_eq!(cpu.state.gpr[EAX], 2);
    assert_eq!(cpu.icount, 3);
}

#[test]
fn sixteen_bit_code_wrapping_at_64k() {
    // A 16-bit code segment whose limit goes past 64 KiB: MOV AX, imm16 at FFFE ends past
    // FFFF, and execution continues at IP 0001 (the next IP is 16 bits), not at 10001.
    let mut bus = RamBus::new(RAM);
    bus.ram[0xfffe..0x10001].copy_from_slice(&[0xb8, 0x34, 0x12]);
    bus.ram[0x0001..0x0003].copy_from_slice(&[0x43, 0xf4]); // inc bx ; hlt
    bus.ram[0x10001..0x10003].copy_from_slice(&[0x41, 0xf4]); // inc cx ; hlt
    let mut st = CpuState::flat_protected(0);
    st.seg[1].attr &= !attr::DB;
    st.seg[1].attr &= !attr::G;
    st.seg[1].limit = 0xf_ffff;
    st.eip = 0xfffe;
    st.eflags = 0x2;
    st.gpr[4] = STACK_TOP;
    let mut cpu = Cpu::with_state(st, bus);
    cpu.intercept = !0;
    let (cpu, exit) = run_and_step(cpu, 100);
    assert_eq!(exit, Exit::Halt);
    assert_eq!(cpu.state.gpr[EAX] & 0xffff, 0x1234);
    assert_eq!(cpu.state.gpr[EBX] & 0xffff, 1);
    assert_eq!(cpu.state.gpr[ECX] & 0xffff, 0);
    assert_eq!(cpu.state.eip, 3);
}

#[test]
fn instruction_crossing_a_page_end_between_blocks() {
    // NOPs up to a MOV EAX, imm32 that straddles the end of the page, then INC and HLT.
    let start = 0x1ff8u32;
    let mut bus = RamBus::new(RAM);
    let mut code = vec![0x90; 6]; // 1ff8..1ffd
    code.extend([0xb8, 0x78, 0x56, 0x34, 0x12, 0x40, 0xf4]); // 1ffe: mov eax ; 2003: inc eax
    bus.ram[start as usize..start as usize + code.len()].copy_from_slice(&code);
    let mut st = CpuState::flat_protected(0);
    st.eip = start;
    st.eflags = 0x2;
    let mut cpu = Cpu::with_state(st, bus);
    cpu.intercept = !0;
    let (cpu, exit) = run_and_step(cpu, 100);
    assert_eq!(exit, Exit::Halt);
    assert_eq!(cpu.state.gpr[EAX], 0x1234_5679);
    assert_eq!(cpu.icount, 9);
}
