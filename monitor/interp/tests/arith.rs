//! Arithmetic and logic, checked against values from the SDM's definitions.
mod common;
use common::*;
use iced_x86::code_asm::*;
use vmm_interp::state::flags::*;

#[test]
fn add_sub_flags() {
    let cpu = run_ok(|_| {}, |a| {
        a.mov(eax, 0x7fff_ffffu32).unwrap();
        a.add(eax, 1).unwrap();
    });
    assert_eq!(cpu.state.gpr[0], 0x8000_0000);
    assert_eq!(cpu.state.eflags & STATUS, SF | OF | AF | PF);
    let cpu = run_ok(|_| {}, |a| {
        a.mov(ecx, 5).unwrap();
        a.sub(cl, 6).unwrap();
    });
    assert_eq!(cpu.state.gpr[1], 0xff);
    assert_eq!(cpu.state.eflags & STATUS, CF | SF | AF | PF);
}

#[test]
fn memory_operand_and_stack() {
    let cpu = run_ok(|_| {}, |a| {
        a.mov(dword_ptr(0x2000), 40).unwrap();
        a.add(dword_ptr(0x2000), 2).unwrap();
        a.mov(ebx, dword_ptr(0x2000)).unwrap();
        a.xor(eax, eax).unwrap();
    });
    assert_eq!(cpu.state.gpr[3], 42);
    assert_eq!(cpu.state.eflags & STATUS, ZF | PF);
}

#[test]
fn mul_div() {
    let cpu = run_ok(|_| {}, |a| {
        a.mov(eax, 0x1234_5678).unwrap();
        a.mov(ecx, 0x1000).unwrap();
        a.mul(ecx).unwrap();
        a.mov(ebx, 0x10007).unwrap();
        a.mov(esi, edx).unwrap();
        a.mov(edi, eax).unwrap();
        a.div(ebx).unwrap();
    });
    let n = 0x1234_5678u64 * 0x1000;
    assert_eq!(cpu.state.gpr[6] as u64, n >> 32);
    assert_eq!(cpu.state.gpr[0] as u64, n / 0x10007);
    assert_eq!(cpu.state.gpr[2] as u64, n % 0x10007);
}

#[test]
fn divide_error_restores_state() {
    let (cpu, exit) = run_fault(3, |a| {
        a.mov(eax, 10).unwrap();
        a.xor(ecx, ecx).unwrap();
        a.div(ecx).unwrap();
    });
    assert_eq!(vec_of(&exit), 0);
    assert_eq!(cpu.state.eip, CODE + 5 + 2);
    assert_eq!(cpu.state.gpr[0], 10);
}

#[test]
fn idiv_overflow_is_de() {
    let (_, exit) = run_fault(0, |a| {
        a.mov(eax, 0x8000_0000u32).unwrap();
        a.mov(edx, 0xffff_ffffu32).unwrap();
        a.mov(ecx, 0xffff_ffffu32).unwrap();
        a.idiv(ecx).unwrap();
    });
    assert_eq!(vec_of(&exit), 0);
}
