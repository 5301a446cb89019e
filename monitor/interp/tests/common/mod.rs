//! Shared helpers for the interpreter's tests: flat guests assembled with iced-x86 `code_asm`.
#![allow(dead_code)]

pub mod sys;

use iced_x86::code_asm::CodeAssembler;
use vmm_interp::state::vector;
use vmm_interp::{Cpu, CpuState, Exit, RamBus};

/// Where `flat` guests are loaded, and their stack top.
pub const CODE: u32 = 0x1000;
pub const STACK_TOP: u32 = 0x8_0000;
pub const RAM: usize = 1 << 20;

/// Assemble `f`'s code at [`CODE`] and run it flat at `cpl` (paging off, 4 GiB segments)
/// until HLT (CPL 0) or any exception (all vectors intercepted). Returns the CPU and the exit.
pub fn run_flat(cpl: u8, setup: impl FnOnce(&mut CpuState), f: impl FnOnce(&mut CodeAssembler)) -> (Cpu<RamBus>, Exit) {
    let mut a = CodeAssembler::new(32).unwrap();
    f(&mut a);
    let bytes = a.assemble(CODE as u64).expect("assemble");
    let mut bus = RamBus::new(RAM);
    bus.ram[CODE as usize..CODE as usize + bytes.len()].copy_from_slice(&bytes);
    let mut st = CpuState::flat_protected(cpl);
    st.eip = CODE;
    st.gpr[4] = STACK_TOP;
    st.eflags = 0x202;
    setup(&mut st);
    let mut cpu = Cpu::with_state(st, bus);
    cpu.intercept = !0;
    let exit = cpu.run(1_000_000);
    (cpu, exit)
}

/// Run at CPL 0 and expect the final HLT.
pub fn run_ok(setup: impl FnOnce(&mut CpuState), f: impl FnOnce(&mut CodeAssembler)) -> Cpu<RamBus> {
    let (cpu, exit) = run_flat(0, setup, |a| {
        f(a);
        a.hlt().unwrap();
    });
    assert_eq!(exit, Exit::Halt, "guest did not halt cleanly");
    cpu
}

/// Run and expect an exception with this vector; returns the CPU (state at the fault) and the exit.
pub fn run_fault(cpl: u8, f: impl FnOnce(&mut CodeAssembler)) -> (Cpu<RamBus>, Exit) {
    let (cpu, exit) = run_flat(cpl, |_| {}, f);
    assert!(matches!(exit, Exit::Exception { .. }), "expected an exception, got {exit:?}");
    (cpu, exit)
}

pub fn vec_of(e: &Exit) -> u8 {
    match e {
        Exit::Exception { vector, .. } => *vector,
        _ => 0xff,
    }
}

pub const GP: u8 = vector::GP;
