//! x87 arithmetic (exec/x87.rs): values derived from the SDM and IEEE 754.
mod common;

use common::*;
use iced_x86::code_asm::*;
use vmm_interp::{Cpu, RamBus};

const DATA: u32 = 0x2000;

fn st(cpu: &Cpu<RamBus>, i: usize) -> u128 {
    let mut b = [0u8; 16];
    b[..10].copy_from_slice(&cpu.state.fpu.0[32 + 16 * i..42 + 16 * i]);
    u128::from_le_bytes(b)
}
fn fsw(cpu: &Cpu<RamBus>) -> u16 {
    cpu.state.fpu.fsw()
}
fn r32(cpu: &Cpu<RamBus>, a: u32) -> u32 {
    let a = a as usize;
    u32::from_le_bytes(cpu.bus.ram[a..a + 4].try_into().unwrap())
}

/// Run with data qwords at DATA (f64 bit patterns).
fn run(data: &[u64], f: impl FnOnce(&mut CodeAssembler)) -> Cpu<RamBus> {
    let mut a = CodeAssembler::new(32).unwrap();
    a.fninit().unwrap();
    f(&mut a);
    a.hlt().unwrap();
    let code = a.assemble(CODE as u64).unwrap();
    // Re-run with data in place.
    let mut a = CodeAssembler::new(32).unwrap();
    a.db(&code).unwrap();
    let mut bus = RamBus::new(RAM);
    let bytes = a.assemble(CODE as u64).unwrap();
    bus.ram[CODE as usize..CODE as usize + bytes.len()].copy_from_slice(&bytes);
    for (k, v) in data.iter().enumerate() {
        let o = DATA as usize + 8 * k;
        bus.ram[o..o + 8].copy_from_slice(&v.to_le_bytes());
    }
    let mut s = vmm_interp::CpuState::flat_protected(0);
    s.eip = CODE;
    s.gpr[4] = STACK_TOP;
    s.eflags = 0x202;
    let mut cpu = Cpu::with_state(s, bus);
    cpu.intercept = !0;
    let exit = cpu.run(100_000);
    assert_eq!(exit, vmm_interp::Exit::Halt);
    cpu
}

fn q(k: u32) -> AsmMemoryOperand {
    qword_ptr(DATA + 8 * k)
}

const ONE: u128 = 0x3fff_8000_0000_0000_0000;

#[test]
fn kernel_fdiv_bug_check() {
    // arch/x86/kernel/fpu/bugs.c: 4195835.0 / 3145727.0 * 3145727.0 - 4195835.0, fistp.
    let x = 4195835.0f64.to_bits();
    let y = 3145727.0f64.to_bits();
    let cpu = run(&[x, y, 0x1234_5678], |a| {
        a.fld(q(0)).unwrap();
        a.fdiv(q(1)).unwrap();
        a.fmul(q(1)).unwrap();
        a.fld(q(0)).unwrap();
        a.fsubp(st1, st0).unwrap();
        a.fistp(dword_ptr(DATA + 16)).unwrap();
    });
    assert_eq!(r32(&cpu, DATA + 16), 0);
    assert_eq!(cpu.state.fpu.ftw_abridged(), 0, "stack empty again");
    assert_eq!((fsw(&cpu) >> 11) & 7, 0, "TOP back to 0");
}

#[test]
fn load_constants_and_stack() {
    let cpu = run(&[], |a| {
        a.fld1().unwrap();
        a.fldz().unwrap();
    });
    assert_eq!(st(&cpu, 0), 0);
    assert_eq!(st(&cpu, 1), ONE);
    assert_eq!((fsw(&cpu) >> 11) & 7, 6);
    assert_eq!(cpu.state.fpu.ftw_abridged(), 0xc0);
}

#[test]
fn one_third_rounding_and_c1() {
    // 1/3 = 1.0101..b x 2^-2: the 64-bit significand 0xAAAA_AAAA_AAAA_AAAA is followed by
    // 1010..b (more than half): nearest rounds up (C1=1), toward zero does not (C1=0).
    let cpu = run(&[3.0f64.to_bits()], |a| {
        a.fld1().unwrap();
        a.fdiv(q(0)).unwrap();
    });
    assert_eq!(st(&cpu, 0), 0x3ffd_aaaa_aaaa_aaaa_aaab);
    assert_eq!(fsw(&cpu) & 0x3f, 0x20, "PE");
    assert_eq!(fsw(&cpu) & 0x200, 0x200, "C1: rounded up");
    let cpu = run(&[3.0f64.to_bits(), 0x0f7f], |a| {
        a.fldcw(word_ptr(DATA + 8)).unwrap();
        a.fld1().unwrap();
        a.fdiv(q(0)).unwrap();
    });
    assert_eq!(st(&cpu, 0), 0x3ffd_aaaa_aaaa_aaaa_aaaa);
    assert_eq!(fsw(&cpu) & 0x200, 0, "C1: truncated");
}

#[test]
fn precision_control_53() {
    // PC=10b (53 bits): 1/3 rounds to the double 0x3FD5555555555555 widened.
    let cpu = run(&[3.0f64.to_bits(), 0x027f], |a| {
        a.fldcw(word_ptr(DATA + 8)).unwrap();
        a.fld1().unwrap();
        a.fdiv(q(0)).unwrap();
        a.fstp(qword_ptr(DATA + 16)).unwrap();
    });
    let v = u64::from_le_bytes(cpu.bus.ram[DATA as usize + 16..DATA as usize + 24].try_into().unwrap());
    assert_eq!(v, (1.0f64 / 3.0).to_bits());
}

#[test]
fn divide_by_zero_and_invalid_masked() {
    let cpu = run(&[0], |a| {
        a.fld1().unwrap();
        a.fdiv(q(0)).unwrap();
    });
    assert_eq!(st(&cpu, 0), 0x7fff_8000_0000_0000_0000, "+inf");
    assert_eq!(fsw(&cpu) & 0x3f, 4, "ZE");
    let cpu = run(&[0], |a| {
        a.fldz().unwrap();
        a.fdiv(q(0)).unwrap();
    });
    assert_eq!(st(&cpu, 0), 0xffff_c000_0000_0000_0000, "indefinite");
    assert_eq!(fsw(&cpu) & 0x3f, 1, "IE");
}

#[test]
fn fist_rounding_and_indefinite() {
    // 2.5 -> 2 (nearest even), 1e10 in 32 bits -> invalid, integer indefinite.
    let cpu = run(&[2.5f64.to_bits(), 1e10f64.to_bits()], |a| {
        a.fld(q(0)).unwrap();
        a.fistp(dword_ptr(DATA + 16)).unwrap();
        a.fld(q(1)).unwrap();
        a.fistp(dword_ptr(DATA + 20)).unwrap();
    });
    assert_eq!(r32(&cpu, DATA + 16), 2);
    assert_eq!(r32(&cpu, DATA + 20), 0x8000_0000);
    assert_eq!(fsw(&cpu) & 0x3f, 0x21, "IE and PE");
}

#[test]
fn stack_underflow_and_overflow() {
    let cpu = run(&[], |a| {
        a.db(&[0xd8, 0xc1]).unwrap(); // fadd st0, st1
    });
    assert_eq!(fsw(&cpu) & 0x7f, 0x41, "IE|SF");
    assert_eq!(fsw(&cpu) & 0x200, 0, "C1=0 underflow");
    assert_eq!(st(&cpu, 0), 0xffff_c000_0000_0000_0000);
    let cpu = run(&[], |a| {
        for _ in 0..9 {
            a.fld1().unwrap();
        }
    });
    assert_eq!(fsw(&cpu) & 0x7f, 0x41, "IE|SF");
    assert_eq!(fsw(&cpu) & 0x200, 0x200, "C1=1 overflow");
    assert_eq!(st(&cpu, 0), 0xffff_c000_0000_0000_0000);
}

#[test]
fn compares() {
    let cpu = run(&[2.0f64.to_bits()], |a| {
        a.fld1().unwrap();
        a.fcom(q(0)).unwrap();
    });
    assert_eq!(fsw(&cpu) & 0x4500, 0x0100, "less: C0");
    let cpu = run(&[], |a| {
        a.fld1().unwrap();
        a.fld1().unwrap();
        a.fcompp().unwrap();
    });
    assert_eq!(fsw(&cpu) & 0x4500, 0x4000, "equal: C3");
    assert_eq!(cpu.state.fpu.ftw_abridged(), 0);
    let cpu = run(&[], |a| {
        a.fld1().unwrap();
        a.fchs().unwrap();
        a.ftst().unwrap();
    });
    assert_eq!(fsw(&cpu) & 0x4500, 0x0100, "-1 < 0");
    assert_eq!(st(&cpu, 0), ONE | 1 << 79);
}

#[test]
fn fxch_fabs_fild_fst() {
    let cpu = run(&[(-7i64) as u64], |a| {
        a.fild(qword_ptr(DATA)).unwrap();
        a.fld1().unwrap();
        a.db(&[0xd9, 0xc9]).unwrap(); // fxch st1
        a.fabs().unwrap();
        a.fst(dword_ptr(DATA + 8)).unwrap();
    });
    assert_eq!(r32(&cpu, DATA + 8), 7.0f32.to_bits());
    assert_eq!(st(&cpu, 1), ONE);
}
