//! Smoke test of the system-guest builder: a kernel that enters user mode with IRET and
//! comes back with INT 0x80.
mod common;
use common::sys::*;
use iced_x86::code_asm::*;
use vmm_interp::Exit;

#[test]
fn user_mode_round_trip_through_int80() {
    let mut g = SysGuest::new();
    g.identity_map(vmm_interp::mmu::pte::RW | vmm_interp::mmu::pte::US);
    g.set_idt(0x80, HANDLERS, false, 3);
    g.code(HANDLERS, |a| {
        a.mov(ebx, eax).unwrap();
        a.hlt().unwrap();
    });
    g.code(UCODE, |a| {
        a.mov(eax, 0x1234).unwrap();
        a.int(0x80).unwrap();
    });
    g.code(KCODE, |a| {
        a.push(SEL_UDATA as u32).unwrap();
        a.push(USTACK_TOP).unwrap();
        a.push(0x202).unwrap();
        a.push(SEL_UCODE as u32).unwrap();
        a.push(UCODE).unwrap();
        a.iretd().unwrap();
    });
    let st = g.state(true);
    let (cpu, exit) = g.run(st);
    assert_eq!(exit, Exit::Halt, "{exit}");
    assert_eq!(cpu.state.gpr[3], 0x1234);
    assert_eq!(cpu.state.cpl, 0);
    assert_eq!(cpu.state.gpr[4], KSTACK_TOP - 20);
}
