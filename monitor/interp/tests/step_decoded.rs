//! `Cpu::step_decoded`: one instruction the caller decoded beforehand (the monitor's callouts
//! decode their instruction when they translate it). The reference is `step`, which fetches
//! and decodes: given the instruction at CS:EIP and its bytes, `step_decoded` must end in the
//! same exit, state, instruction count and memory; given a stale decode (the bytes in memory
//! changed, or the instruction is for another EIP or code size) it must execute what memory
//! holds, as `step` does. The fetch's checks come from the SDM: #GP(0) for an instruction not
//! entirely within the CS limit (vol. 2, "Protected mode exceptions"), #PF for a fetch from a
//! not-present or (at CPL 3) supervisor page (vol. 3 §4.6), the accessed bit set by the walk.

mod common;

use common::sys::*;
use iced_x86::{Decoder, DecoderOptions, Instruction};
use vmm_interp::mmu::pte;
use vmm_interp::state::{attr, vector};
use vmm_interp::{Cpu, Exit, RamBus};

const EAX: usize = 0;

fn decode(bits: u32, bytes: &[u8], eip: u32) -> Instruction {
    Decoder::with_ip(bits, bytes, eip as u64, DecoderOptions::NONE).decode()
}

/// Steps a clone of `cpu` with `step` and `cpu` itself with `step_decoded(insn, bytes)`;
/// asserts both end alike and returns the exit.
fn same_as_step(mut cpu: Cpu<RamBus>, insn: &Instruction, bytes: &[u8]) -> (Cpu<RamBus>, Option<Exit>) {
    let mut other = Cpu::with_state(cpu.state.clone(), cpu.bus.clone());
    other.intercept = cpu.intercept;
    other.icount = cpu.icount;
    let want = other.step();
    let got = cpu.step_decoded(insn, bytes);
    assert_eq!(got, want, "step_decoded and step end differently");
    assert_eq!(cpu.state, other.state, "step_decoded and step end in different states");
    assert_eq!(cpu.icount, other.icount);
    assert!(cpu.bus.ram == other.bus.ram, "step_decoded and step leave different memory");
    (cpu, got)
}

/// A CPL 0 guest with paging on (identity map) and `bytes` at KCODE.
fn guest(bytes: &[u8], pte_flags: u32) -> Cpu<RamBus> {
    let mut g = SysGuest::new();
    g.identity_map(pte::RW | pte::US);
    g.set_pte(KCODE, KCODE | pte_flags);
    g.bus.ram[KCODE as usize..KCODE as usize + bytes.len()].copy_from_slice(bytes);
    let mut cpu = Cpu::with_state(g.state(true), g.bus);
    cpu.intercept = !0;
    cpu
}

const MOV_EAX: [u8; 5] = [0xb8, 0x78, 0x56, 0x34, 0x12]; // mov eax, 0x12345678

#[test]
fn the_decoded_instruction_executes_as_step_would() {
    let cpu = guest(&MOV_EAX, pte::P | pte::RW);
    let insn = decode(32, &MOV_EAX, KCODE);
    let (cpu, exit) = same_as_step(cpu, &insn, &MOV_EAX);
    assert_eq!(exit, None);
    assert_eq!(cpu.state.gpr[EAX], 0x1234_5678);
    assert_eq!(cpu.state.eip, KCODE + 5);
    // The fetch walked the page tables: the code page's PTE is accessed (SDM vol. 3 §4.8).
    let pt = u32::from_le_bytes(cpu.bus.ram[(PT0 + 4 * (KCODE >> 12)) as usize..][..4].try_into().unwrap());
    assert_ne!(pt & pte::A, 0);
}

#[test]
fn a_stale_decode_executes_what_memory_holds() {
    // Memory says mov eax, 0x12345678; the caller's decode is of mov eax, 1.
    let old = [0xb8, 1, 0, 0, 0];
    let cpu = guest(&MOV_EAX, pte::P | pte::RW);
    let (cpu, _) = same_as_step(cpu, &decode(32, &old, KCODE), &old);
    assert_eq!(cpu.state.gpr[EAX], 0x1234_5678);
    // The right bytes but an instruction for another EIP, or decoded as 16-bit code.
    let cpu = guest(&MOV_EAX, pte::P | pte::RW);
    let (cpu, _) = same_as_step(cpu, &decode(32, &MOV_EAX, KCODE + 0x10), &MOV_EAX);
    assert_eq!((cpu.state.gpr[EAX], cpu.state.eip), (0x1234_5678, KCODE + 5));
    let cpu = guest(&MOV_EAX, pte::P | pte::RW);
    let (cpu, _) = same_as_step(cpu, &decode(16, &MOV_EAX, KCODE), &MOV_EAX[..3]);
    assert_eq!((cpu.state.gpr[EAX], cpu.state.eip), (0x1234_5678, KCODE + 5));
}

#[test]
fn fetch_checks_still_apply() {
    let insn = decode(32, &MOV_EAX, KCODE);
    // The CS limit ends inside the instruction: #GP(0), nothing executed.
    let mut cpu = guest(&MOV_EAX, pte::P | pte::RW);
    cpu.state.seg[1].attr &= !attr::G;
    cpu.state.seg[1].limit = KCODE + 3;
    let (cpu, exit) = same_as_step(cpu, &insn, &MOV_EAX);
    assert_eq!(exit, Some(Exit::Exception { vector: vector::GP, error_code: Some(0), cr2: 0, eip: KCODE }));
    assert_eq!(cpu.state.gpr[EAX], 0);
    // The code page is not present: #PF at CPL 0, CR2 = EIP (error code 0: without PAE and
    // NX the I/D bit is not reported, SDM vol. 3 §4.7).
    let cpu = guest(&MOV_EAX, 0);
    let (cpu, exit) = same_as_step(cpu, &insn, &MOV_EAX);
    assert_eq!(exit, Some(Exit::Exception { vector: vector::PF, error_code: Some(0), cr2: KCODE, eip: KCODE }));
    assert_eq!(cpu.state.gpr[EAX], 0);
    // A supervisor page fetched at CPL 3: #PF with P and U/S set.
    let mut cpu = guest(&MOV_EAX, pte::P | pte::RW);
    cpu.state.cpl = 3;
    cpu.state.seg[1].selector = SEL_UCODE;
    cpu.state.seg[1].attr |= 3 << attr::DPL_SHIFT;
    let (_, exit) = same_as_step(cpu, &insn, &MOV_EAX);
    assert_eq!(exit, Some(Exit::Exception { vector: vector::PF, error_code: Some(0x5), cr2: KCODE, eip: KCODE }));
}

#[test]
fn an_instruction_across_a_page_end_and_a_pending_interrupt() {
    // mov eax, imm32 straddling the end of KCODE's page: fetched from both pages.
    let at = KCODE + 0xffe;
    let mut cpu = guest(&[], pte::P | pte::RW);
    cpu.bus.ram[at as usize..at as usize + 5].copy_from_slice(&MOV_EAX);
    cpu.state.eip = at;
    let insn = decode(32, &MOV_EAX, at);
    let (cpu, exit) = same_as_step(cpu, &insn, &MOV_EAX);
    assert_eq!((exit, cpu.state.gpr[EAX], cpu.state.eip), (None, 0x1234_5678, at + 5));
    // HLT'd CPU: step reports the halt before any fetch; so does step_decoded.
    let mut cpu = guest(&MOV_EAX, pte::P | pte::RW);
    cpu.state.halted = true;
    let (cpu, exit) = same_as_step(cpu, &insn, &MOV_EAX);
    assert_eq!((exit, cpu.state.gpr[EAX]), (Some(Exit::Halt), 0));
}
