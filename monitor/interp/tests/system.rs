//! System-level tests: tiny guests with GDT, IDT, TSS and page tables (built by `SysGuest`)
//! that page, fault, take interrupts, change privilege and stop on HLT. Expected values come
//! from the SDM (vol. 3 chapters 4-6; vol. 2 for each instruction).
//!
//! The handlers end with HLT rather than IRET so that each test depends only on the system
//! family and the MOV/ALU basics.
mod common;
use common::sys::*;
use iced_x86::code_asm::*;
use vmm_interp::mmu::pte;
use vmm_interp::state::{attr, cr, flags, vector, SegReg, Segment};
use vmm_interp::{Bus, Cpu, CpuState, Exit, IoAction, RamBus};

fn mk(g: SysGuest, st: CpuState) -> Cpu<RamBus> {
    Cpu::with_state(st, g.bus)
}

/// A CPL-3 start at UCODE with the user segments of the standard GDT.
fn user_state(g: &SysGuest, paging: bool) -> CpuState {
    let mut st = g.state(paging);
    let ucs = Segment::flat(SEL_UCODE, true, 3);
    let uds = Segment::flat(SEL_UDATA, false, 3);
    st.seg = [uds, ucs, uds, uds, uds, uds];
    st.cpl = 3;
    st.eip = UCODE;
    st.gpr[4] = USTACK_TOP;
    st
}

fn r32(cpu: &mut Cpu<RamBus>, a: u32) -> u32 {
    u32::from_le_bytes(cpu.bus.ram[a as usize..a as usize + 4].try_into().unwrap())
}

fn exc(e: &Exit) -> (u8, Option<u32>, u32, u32) {
    match *e {
        Exit::Exception { vector, error_code, cr2: fault_addr, eip } => (vector, error_code, fault_addr, eip),
        ref other => panic!("expected an intercepted exception, got {other:?}"),
    }
}

const EAX: usize = 0;
const ECX: usize = 1;
const EDX: usize = 2;
const EBX: usize = 3;
const ESP: usize = 4;
const ESI: usize = 6;
const EDI: usize = 7;

// ---------------------------------------------------------------- paging

#[test]
fn paging_4k_and_4m_pages() {
    let mut g = SysGuest::new();
    g.identity_map(pte::RW);
    // 4 KiB: linear 0x50000 -> physical 0x61000.
    g.set_pte(0x50000, 0x61000 | pte::P | pte::RW);
    // 4 MiB (CR4.PSE): linear 0x800000-0xbfffff -> physical 0x400000.
    g.w32(PD + 4 * 2, 0x40_0000 | pte::P | pte::RW | pte::PS);
    g.w32(0x40_1234, 0xcafe_f00d);
    g.w32(0x61010, 0x1111_2222);
    g.code(KCODE, |a| {
        a.mov(eax, dword_ptr(0x80_1234)).unwrap();
        a.mov(ebx, dword_ptr(0x50010)).unwrap();
        a.mov(dword_ptr(0x50020), 0x3333_4444u32).unwrap();
        a.mov(dword_ptr(0x8f_fff0), 0x5555_6666u32).unwrap();
        a.hlt().unwrap();
    });
    let st = g.state(true);
    let (mut cpu, exit) = g.run(st);
    assert_eq!(exit, Exit::Halt);
    assert_eq!(cpu.state.gpr[EAX], 0xcafe_f00d);
    assert_eq!(cpu.state.gpr[EBX], 0x1111_2222);
    assert_eq!(r32(&mut cpu, 0x61020), 0x3333_4444);
    assert_eq!(r32(&mut cpu, 0x50020), 0, "the identity page must be untouched");
    assert_eq!(r32(&mut cpu, 0x4f_fff0), 0x5555_6666);
}

#[test]
fn accessed_and_dirty_bits() {
    let mut g = SysGuest::new();
    g.identity_map(pte::RW);
    // Clear A in PD[1] (identity_map does not set it) and add two 4 MiB pages.
    g.w32(PD + 4 * 2, 0x40_0000 | pte::P | pte::RW | pte::PS);
    g.w32(PD + 4 * 3, 0x40_0000 | pte::P | pte::RW | pte::PS);
    g.code(KCODE, |a| {
        a.mov(eax, dword_ptr(0x50_0000)).unwrap();
        a.mov(dword_ptr(0x60_0000), ebx).unwrap();
        a.mov(eax, dword_ptr(0x80_0000)).unwrap();
        a.mov(dword_ptr(0xc0_0000), ebx).unwrap();
        a.hlt().unwrap();
    });
    let st = g.state(true);
    let (mut cpu, exit) = g.run(st);
    assert_eq!(exit, Exit::Halt);
    let pd1 = r32(&mut cpu, PD + 4);
    assert_ne!(pd1 & pte::A, 0, "PDE A set by the walk");
    assert_eq!(pd1 & pte::D, 0, "a PDE that maps a table has no D");
    let pt1 = PT0 + 0x1000;
    let read = r32(&mut cpu, pt1 + 4 * 0x100);
    let written = r32(&mut cpu, pt1 + 4 * 0x200);
    let untouched = r32(&mut cpu, pt1 + 4 * 0x300);
    assert_eq!(read & (pte::A | pte::D), pte::A);
    assert_eq!(written & (pte::A | pte::D), pte::A | pte::D);
    assert_eq!(untouched & (pte::A | pte::D), 0);
    assert_eq!(r32(&mut cpu, PD + 8) & (pte::A | pte::D), pte::A, "4 MiB page read: A only");
    assert_eq!(r32(&mut cpu, PD + 12) & (pte::A | pte::D), pte::A | pte::D, "4 MiB page written: A and D");
}

#[test]
fn page_fault_not_present_delivered_to_handler() {
    let mut g = SysGuest::new();
    g.identity_map(pte::RW);
    g.set_pte(DATA, 0); // not present
    g.set_idt(vector::PF, HANDLERS, false, 0);
    let pte_addr = PT0 + 4 * (DATA >> 12);
    g.code(HANDLERS, |a| {
        a.mov(eax, cr2).unwrap();
        a.mov(ebx, dword_ptr(esp)).unwrap(); // error code
        a.mov(ecx, dword_ptr(esp + 4)).unwrap(); // EIP of the faulting instruction
        a.mov(edx, dword_ptr(esp + 8)).unwrap(); // CS
        a.mov(dword_ptr(pte_addr), DATA | pte::P | pte::RW).unwrap();
        a.hlt().unwrap();
    });
    g.code(KCODE, |a| {
        a.mov(dword_ptr(DATA + 0x10), 0x1234u32).unwrap();
        a.hlt().unwrap();
    });
    let st = g.state(true);
    let (mut cpu, exit) = g.run(st);
    assert_eq!(exit, Exit::Halt);
    assert_eq!(cpu.state.gpr[EAX], DATA + 0x10, "CR2 holds the faulting linear address");
    assert_eq!(cpu.state.gpr[EBX], 2, "error code: not present (P=0), write (W=1), supervisor (U=0)");
    assert_eq!(cpu.state.gpr[ECX], KCODE, "the fault's EIP is the faulting instruction");
    assert_eq!(cpu.state.gpr[EDX], SEL_KCODE as u32);
    assert_eq!(cpu.state.gpr[ESP], KSTACK_TOP - 16, "EFLAGS, CS, EIP, error code");
    assert_eq!(cpu.state.eflags & flags::IF, 0, "interrupt gate clears IF");
    assert_eq!(r32(&mut cpu, pte_addr) & !(pte::A | pte::D), DATA | pte::P | pte::RW);
    assert_eq!(r32(&mut cpu, DATA + 0x10), 0, "the faulting write did not happen");
}

#[test]
fn write_protect_at_cpl0() {
    let mut g = SysGuest::new();
    g.identity_map(pte::RW);
    g.set_pte(DATA, DATA | pte::P); // read-only
    g.code(KCODE, |a| {
        a.mov(dword_ptr(DATA), 0x11u32).unwrap(); // WP = 0: allowed
        a.mov(eax, cr0).unwrap();
        a.or(eax, cr::CR0_WP).unwrap();
        a.mov(cr0, eax).unwrap();
        a.mov(dword_ptr(DATA + 4), 0x22u32).unwrap(); // WP = 1: #PF
        a.hlt().unwrap();
    });
    let mut st = g.state(true);
    st.cr0 &= !cr::CR0_WP;
    let mut cpu = mk(g, st);
    cpu.intercept = 1 << vector::PF;
    let exit = cpu.run(100);
    let (v, err, fault_addr, eip) = exc(&exit);
    assert_eq!(v, vector::PF);
    assert_eq!(err, Some(3), "present, write, supervisor");
    assert_eq!(fault_addr, DATA + 4);
    assert_eq!(eip, cpu.state.eip);
    assert_eq!(r32(&mut cpu, DATA), 0x11);
    assert_eq!(r32(&mut cpu, DATA + 4), 0);
    assert_ne!(cpu.state.cr0 & cr::CR0_WP, 0);
}

#[test]
fn user_access_to_supervisor_page() {
    let mut g = SysGuest::new();
    g.identity_map(pte::RW | pte::US);
    g.set_pte(DATA, DATA | pte::P | pte::RW); // supervisor
    g.code(UCODE, |a| {
        a.mov(eax, dword_ptr(DATA + 8)).unwrap();
        a.hlt().unwrap();
    });
    let st = user_state(&g, true);
    let mut cpu = mk(g, st);
    cpu.intercept = 1 << vector::PF;
    let (v, err, fault_addr, eip) = exc(&cpu.run(100));
    assert_eq!((v, err, fault_addr, eip), (vector::PF, Some(4 | 1), DATA + 8, UCODE), "present, read, user");
}

#[test]
fn invlpg_makes_pte_change_visible() {
    const L: u32 = 0x50_0000;
    let mut g = SysGuest::new();
    g.identity_map(pte::RW);
    g.w32(L, 0xaaaa);
    g.w32(L + 0x1000, 0xbbbb);
    let pte_addr = PT0 + 4 * (L >> 12);
    g.code(KCODE, |a| {
        a.mov(eax, dword_ptr(L)).unwrap(); // fills the TLB
        a.mov(dword_ptr(pte_addr), (L + 0x1000) | pte::P | pte::RW).unwrap();
        a.mov(ebx, dword_ptr(L)).unwrap(); // stale translation: architecturally allowed
        a.invlpg(ptr(L)).unwrap();
        a.mov(ecx, dword_ptr(L)).unwrap(); // new translation
        a.hlt().unwrap();
    });
    let st = g.state(true);
    let (cpu, exit) = g.run(st);
    assert_eq!(exit, Exit::Halt);
    assert_eq!(cpu.state.gpr[EAX], 0xaaaa);
    assert_eq!(cpu.state.gpr[EBX], 0xaaaa, "the TLB keeps the old translation until INVLPG");
    assert_eq!(cpu.state.gpr[ECX], 0xbbbb, "INVLPG drops it");
}

#[test]
fn global_page_survives_cr3_write_but_not_pge_toggle() {
    const G: u32 = 0x50_0000; // global
    const N: u32 = 0x60_0000; // not global
    let mut g = SysGuest::new();
    g.identity_map(pte::RW);
    g.set_pte(G, G | pte::P | pte::RW | pte::G);
    for base in [G, N] {
        g.w32(base, 0x100 + (base >> 20));
        g.w32(base + 0x1000, 0x200 + (base >> 20));
    }
    let pte_g = PT0 + 4 * (G >> 12);
    let pte_n = PT0 + 4 * (N >> 12);
    g.code(KCODE, |a| {
        a.mov(eax, dword_ptr(G)).unwrap();
        a.mov(eax, dword_ptr(N)).unwrap();
        a.mov(dword_ptr(pte_g), (G + 0x1000) | pte::P | pte::RW | pte::G).unwrap();
        a.mov(dword_ptr(pte_n), (N + 0x1000) | pte::P | pte::RW).unwrap();
        a.mov(ecx, cr3).unwrap();
        a.mov(cr3, ecx).unwrap();
        a.mov(ebx, dword_ptr(G)).unwrap(); // global: still the old page
        a.mov(esi, dword_ptr(N)).unwrap(); // not global: the new page
        a.mov(ecx, cr4).unwrap();
        a.and(ecx, !cr::CR4_PGE).unwrap();
        a.mov(cr4, ecx).unwrap();
        a.mov(edi, dword_ptr(G)).unwrap(); // PGE toggled: the new page
        a.hlt().unwrap();
    });
    let mut st = g.state(true);
    st.cr4 |= cr::CR4_PGE;
    let (cpu, exit) = g.run(st);
    assert_eq!(exit, Exit::Halt);
    assert_eq!(cpu.state.gpr[EBX], 0x105);
    assert_eq!(cpu.state.gpr[ESI], 0x206);
    assert_eq!(cpu.state.gpr[EDI], 0x205);
    assert_eq!(cpu.state.cr4 & cr::CR4_PGE, 0);
}

// ---------------------------------------------------------------- exceptions

#[test]
fn double_fault_from_gp_with_not_present_gate() {
    let mut g = SysGuest::new();
    g.identity_map(pte::RW);
    g.set_idt(vector::GP, HANDLERS + 0x100, false, 0);
    let gp_gate = IDT + 8 * vector::GP as u32;
    let hi = g.r32(gp_gate + 4);
    g.w32(gp_gate + 4, hi & !(1 << 15)); // P = 0
    g.set_idt(vector::DF, HANDLERS, false, 0);
    g.code(HANDLERS, |a| {
        a.mov(eax, dword_ptr(esp)).unwrap();
        a.mov(ebx, dword_ptr(esp + 4)).unwrap();
        a.hlt().unwrap();
    });
    let wrmsr_at = g.code(KCODE, |a| {
        a.mov(ecx, 0x1bu32).unwrap(); // IA32_APIC_BASE: absent (no APIC)
    });
    g.code(wrmsr_at, |a| {
        a.wrmsr().unwrap();
        a.hlt().unwrap();
    });
    let st = g.state(true);
    let (cpu, exit) = g.run(st);
    assert_eq!(exit, Exit::Halt);
    assert_eq!(cpu.state.eip, HANDLERS + 3 + 4 + 1, "stopped in the #DF handler");
    // #GP then #NP (both contributory) -> #DF with error code 0 (SDM table 6-5).
    assert_eq!(cpu.state.gpr[EAX], 0);
    assert_eq!(cpu.state.gpr[EBX], wrmsr_at);
}

#[test]
fn triple_fault_without_idt() {
    let mut g = SysGuest::new();
    g.code(KCODE, |a| {
        a.mov(ecx, 0x1bu32).unwrap();
        a.wrmsr().unwrap();
        a.hlt().unwrap();
    });
    let mut st = g.state(false);
    st.idtr.limit = 0;
    let (cpu, exit) = g.run(st);
    assert_eq!(exit, Exit::TripleFault { first: vector::GP, second: vector::GP });
    assert_eq!(cpu.state.eip, KCODE + 5, "state at the instruction that started the cascade");
}

// ---------------------------------------------------------------- interrupts and I/O

/// RAM, an interrupt line raising vector 0x20, ports with fixed answers and a log of writes.
struct TestBus {
    ram: Vec<u8>,
    irq: bool,
    acks: u32,
    outs: Vec<(u16, u8, u32)>,
}

impl TestBus {
    fn new(g: SysGuest) -> TestBus {
        TestBus { ram: g.bus.ram, irq: false, acks: 0, outs: Vec::new() }
    }
}

impl Bus for TestBus {
    fn ram(&mut self) -> &mut [u8] {
        &mut self.ram
    }
    fn io_in(&mut self, port: u16, _size: u8) -> u32 {
        if port == 0x80 {
            0x5a
        } else {
            0xffff_ffff
        }
    }
    fn io_out(&mut self, port: u16, size: u8, value: u32) -> IoAction {
        self.outs.push((port, size, value));
        if port == 0xf4 {
            IoAction::Exit
        } else {
            IoAction::Continue
        }
    }
    fn interrupt_pending(&mut self) -> bool {
        self.irq
    }
    fn acknowledge_interrupt(&mut self) -> Option<u8> {
        if self.irq {
            self.irq = false;
            self.acks += 1;
            Some(0x20)
        } else {
            None
        }
    }
}

#[test]
fn external_interrupt_respects_if_and_sti_shadow() {
    let mut g = SysGuest::new();
    g.set_idt(0x20, HANDLERS, false, 0);
    g.code(HANDLERS, |a| {
        a.mov(ebx, ecx).unwrap();
        a.mov(esi, edx).unwrap();
        a.mov(edi, dword_ptr(esp)).unwrap();
        a.hlt().unwrap();
    });
    let after_sti = g.code(KCODE, |a| {
        a.mov(eax, 1u32).unwrap(); // IF = 0: the pending interrupt waits
        a.mov(eax, 2u32).unwrap();
        a.sti().unwrap();
    });
    let second = g.code(after_sti, |a| {
        a.mov(ecx, 3u32).unwrap(); // in the STI shadow: completes first
    });
    g.code(second, |a| {
        a.mov(edx, 4u32).unwrap(); // the interrupt is taken before this one
        a.hlt().unwrap();
    });
    let st = g.state(false);
    let mut bus = TestBus::new(g);
    bus.irq = true;
    let mut cpu = Cpu::with_state(st, bus);
    assert_eq!(cpu.run(100), Exit::Halt);
    assert_eq!(cpu.bus.acks, 1);
    assert_eq!(cpu.state.gpr[EBX], 3, "the instruction after STI ran before the interrupt");
    assert_eq!(cpu.state.gpr[ESI], 0, "the interrupt came before the following one");
    assert_eq!(cpu.state.gpr[EDI], second, "the pushed EIP is the interrupted instruction");
    assert_eq!(cpu.state.eflags & flags::IF, 0);
}

#[test]
fn sti_hlt_wakes_up_on_interrupt() {
    let mut g = SysGuest::new();
    g.set_idt(0x20, HANDLERS, false, 0);
    g.code(HANDLERS, |a| {
        a.mov(ebx, 0x55u32).unwrap();
        a.mov(edi, dword_ptr(esp)).unwrap();
        a.hlt().unwrap();
    });
    let after_hlt = g.code(KCODE, |a| {
        a.sti().unwrap();
        a.hlt().unwrap();
    });
    let st = g.state(false);
    let mut bus = TestBus::new(g);
    bus.irq = true; // already pending: the STI shadow still lets HLT execute
    let mut cpu = Cpu::with_state(st, bus);
    assert_eq!(cpu.run(100), Exit::Halt);
    assert!(cpu.state.halted);
    assert_eq!(cpu.state.eip, after_hlt);
    assert_eq!(cpu.bus.acks, 0);
    assert_eq!(cpu.state.gpr[EBX], 0);
    // Running again takes the interrupt, which ends the halt.
    assert_eq!(cpu.run(100), Exit::Halt);
    assert_eq!(cpu.bus.acks, 1);
    assert_eq!(cpu.state.gpr[EBX], 0x55);
    assert_eq!(cpu.state.gpr[EDI], after_hlt, "the return address is after HLT");
    // Halted with no interrupt: stays halted without executing anything.
    let n = cpu.icount;
    assert_eq!(cpu.run(100), Exit::Halt);
    assert_eq!(cpu.icount, n);
}

#[test]
fn io_permission_bitmap_at_cpl3() {
    let mut g = SysGuest::new();
    // I/O bitmap at TSS+0x68 covering ports 0-0xff, all denied but port 0x80; the byte
    // after it is the architectural 0xff terminator.
    for k in 0..32 {
        g.w8(TSS + 0x68 + k, 0xff);
    }
    g.w8(TSS + 0x68 + 0x80 / 8, 0xfe);
    g.w8(TSS + 0x68 + 32, 0xff);
    let limit = 0x68 + 32;
    g.set_gdt(5, vmm_interp::seg::Descriptor::new(TSS, limit, attr::P | vmm_interp::seg::sys_type::TSS32_BUSY as u16));
    g.code(UCODE, |a| {
        a.in_(al, 0x80).unwrap();
        a.out(0x81, al).unwrap();
        a.hlt().unwrap();
    });
    let mut st = user_state(&g, false);
    st.tr.limit = limit;
    let mut cpu = Cpu::with_state(st, TestBus::new(g));
    cpu.intercept = 1 << vector::GP;
    let (v, err, _, eip) = exc(&cpu.run(100));
    assert_eq!((v, err, eip), (vector::GP, Some(0), UCODE + 2));
    assert_eq!(cpu.state.gpr[EAX] & 0xff, 0x5a, "IN from the permitted port");
    assert!(cpu.bus.outs.is_empty(), "the refused OUT did not reach the bus");
}

#[test]
fn debug_exit_port() {
    let mut g = SysGuest::new();
    let after_out = g.code(KCODE, |a| {
        a.mov(eax, 0x31u32).unwrap();
        a.out(0xf4, al).unwrap();
    });
    g.code(after_out, |a| {
        a.mov(dx, 0x3f8).unwrap();
        a.out(dx, ax).unwrap();
        a.mov(ebx, 1u32).unwrap();
        a.hlt().unwrap();
    });
    let st = g.state(false);
    let mut cpu = Cpu::with_state(st, TestBus::new(g));
    assert_eq!(cpu.run(100), Exit::PortIo { port: 0xf4, size: 1, value: 0x31 });
    assert_eq!(cpu.state.eip, after_out, "the OUT completed");
    assert_eq!(cpu.state.gpr[EBX], 0);
    assert_eq!(cpu.run(100), Exit::Halt);
    assert_eq!(cpu.state.gpr[EBX], 1);
    assert_eq!(cpu.bus.outs, vec![(0xf4, 1, 0x31), (0x3f8, 2, 0x31)]);
}

// ---------------------------------------------------------------- MSRs, CPUID, TSC, SYSENTER

#[test]
fn msrs() {
    for absent in [0x1bu32, 0xfe, 0x200, 0x2ff, 0x277, 0x174, 0xc000_0080] {
        let mut g = SysGuest::new();
        g.code(KCODE, |a| {
            a.mov(ecx, absent).unwrap();
            a.rdmsr().unwrap();
            a.hlt().unwrap();
        });
        let st = g.state(false);
        let mut cpu = mk(g, st);
        cpu.intercept = 1 << vector::GP;
        let (v, err, _, eip) = exc(&cpu.run(100));
        assert_eq!((v, err, eip), (vector::GP, Some(0), KCODE + 5), "RDMSR {absent:#x}");
    }
    let mut g = SysGuest::new();
    g.code(KCODE, |a| {
        a.mov(ecx, 0x1a0u32).unwrap(); // IA32_MISC_ENABLE: read back as written
        a.mov(eax, 0x1u32).unwrap();
        a.mov(edx, 0x4u32).unwrap();
        a.wrmsr().unwrap();
        a.mov(eax, 0u32).unwrap();
        a.mov(edx, 0u32).unwrap();
        a.rdmsr().unwrap();
        a.mov(esi, eax).unwrap();
        a.mov(edi, edx).unwrap();
        a.mov(ecx, 0x8bu32).unwrap(); // IA32_BIOS_SIGN_ID reads 0
        a.mov(eax, 7u32).unwrap();
        a.rdmsr().unwrap();
        a.mov(ebx, eax).unwrap();
        a.mov(ecx, 0x10u32).unwrap(); // IA32_TSC: write then read
        a.mov(eax, 1_000_000u32).unwrap();
        a.mov(edx, 0u32).unwrap();
        a.wrmsr().unwrap();
        a.rdtsc().unwrap();
        a.hlt().unwrap();
    });
    let st = g.state(false);
    let (cpu, exit) = g.run(st);
    assert_eq!(exit, Exit::Halt);
    assert_eq!((cpu.state.gpr[ESI], cpu.state.gpr[EDI]), (1, 4));
    assert_eq!(cpu.state.gpr[EBX], 0);
    assert_eq!(cpu.state.gpr[EDX], 0);
    // The TSC counts retired instructions here (RamBus has no clock): 1 after the WRMSR.
    assert_eq!(cpu.state.gpr[EAX], 1_000_001);

    // IA32_ARCH_CAPABILITIES (advertised by CPUID leaf 7): MDS_NO (bit 5) and TAA_NO (bit 8),
    // read-only: a write raises #GP(0).
    let mut g = SysGuest::new();
    g.code(KCODE, |a| {
        a.mov(ecx, 0x10au32).unwrap();
        a.rdmsr().unwrap();
        a.mov(esi, eax).unwrap();
        a.mov(edi, edx).unwrap();
        a.wrmsr().unwrap();
        a.hlt().unwrap();
    });
    let st = g.state(false);
    let mut cpu = mk(g, st);
    cpu.intercept = 1 << vector::GP;
    let (v, err, _, eip) = exc(&cpu.run(100));
    assert_eq!((v, err, eip), (vector::GP, Some(0), KCODE + 11), "WRMSR 0x10a");
    assert_eq!((cpu.state.gpr[ESI], cpu.state.gpr[EDI]), ((1 << 5) | (1 << 8), 0));

    // WRMSR at CPL 3: #GP(0).
    let mut g = SysGuest::new();
    g.code(UCODE, |a| {
        a.mov(ecx, 0x1a0u32).unwrap();
        a.rdmsr().unwrap();
    });
    let st = user_state(&g, false);
    let mut cpu = mk(g, st);
    cpu.intercept = 1 << vector::GP;
    let (v, err, _, eip) = exc(&cpu.run(100));
    assert_eq!((v, err, eip), (vector::GP, Some(0), UCODE + 5));
}

#[test]
fn cpuid_from_the_model() {
    let mut g = SysGuest::new();
    g.code(UCODE, |a| {
        a.xor(eax, eax).unwrap();
        a.cpuid().unwrap();
        a.mov(dword_ptr(DATA), ebx).unwrap();
        a.mov(dword_ptr(DATA + 4), edx).unwrap();
        a.mov(dword_ptr(DATA + 8), ecx).unwrap();
        a.mov(dword_ptr(DATA + 12), eax).unwrap();
        a.mov(eax, 1u32).unwrap();
        a.cpuid().unwrap();
        a.hlt().unwrap(); // #GP at CPL 3: ends the run
    });
    let st = user_state(&g, false);
    let mut cpu = mk(g, st);
    cpu.intercept = 1 << vector::GP;
    assert_eq!(exc(&cpu.run(100)).0, vector::GP);
    assert_eq!(&cpu.bus.ram[DATA as usize..DATA as usize + 12], b"GenuineIntel");
    assert_eq!(r32(&mut cpu, DATA + 12), 0x16, "max basic leaf: up to the TSC frequency leaves");
    let feat = cpu.state.gpr[EDX];
    assert_eq!(feat, cpu.model.features_edx());
    use vmm_interp::cpuid::edx1;
    for f in [edx1::FPU, edx1::TSC, edx1::MSR, edx1::CX8, edx1::PSE, edx1::PGE, edx1::CMOV, edx1::FXSR, edx1::SSE] {
        assert_ne!(feat & f, 0);
    }
    assert_eq!(feat & (edx1::PAE | edx1::APIC | edx1::SEP | edx1::MTRR), 0);
    assert_eq!(cpu.state.gpr[EAX], 0x683, "family 6 model 8 stepping 3");
}

#[test]
fn cpuid_reports_the_tsc_rate() {
    use vmm_interp::CpuModel;
    // SDM vol. 2, CPUID leaf 15H: TSC Hz = ECX (crystal Hz) × EBX / EAX; Linux 6.1
    // (native_calibrate_tsc) computes tsc_khz = (ECX / 1000) × EBX / EAX in 32 bits, and
    // cpu_khz = leaf 16H EAX × 1000.
    for hz in [1_000_000_000u64, 2_596_150_000, 2_596_151_000, 3_999_999_000, 4_294_968_000, 5_123_457_000, 12_345_000] {
        let mut m = CpuModel::p6();
        m.set_tsc_hz(hz);
        let [den, num, crystal, l15_edx] = m.cpuid(0x15, 0);
        assert!(den != 0 && num != 0 && crystal >= 1000 && l15_edx == 0, "{hz}: {den} {num} {crystal}");
        assert_eq!(crystal as u64 * num as u64 / den as u64, hz, "{hz}: SDM formula");
        let linux = (crystal / 1000).checked_mul(num).map(|p| p / den);
        assert_eq!(linux, Some((hz / 1000) as u32), "{hz}: Linux's 32-bit formula");
        let l16 = m.cpuid(0x16, 0);
        let mhz = ((hz as f64) / 1e6).round() as u32;
        assert_eq!((l16[0], l16[1], l16[3]), (mhz, mhz, 0), "{hz}: leaf 0x16");
        assert_eq!(m.cpuid(0, 0)[0], 0x16);
        assert_eq!(m.tsc_hz, hz);
    }
    // The leaves between 2 and 0x15 advertise nothing (the interpreter has none of what they
    // describe: deterministic caches, MONITOR, perfmon, topology, XSAVE), but leaf 7's
    // IA32_ARCH_CAPABILITIES (EDX bit 29, SDM vol. 2 CPUID) and nothing else of leaf 7.
    let m = CpuModel::p6();
    for leaf in 3..0x15 {
        for sub in 0..2 {
            let want = if leaf == 7 && sub == 0 { [0, 0, 0, 1 << 29] } else { [0; 4] };
            assert_eq!(m.cpuid(leaf, sub), want, "leaf {leaf:#x}.{sub}");
        }
    }
    // Above the maximum: the highest basic leaf's answer, as on Intel processors.
    assert_eq!(m.cpuid(0x17, 0), m.cpuid(0x16, 0));
    // Below 1 kHz there is no ratio to give.
    let mut m = CpuModel::p6();
    m.set_tsc_hz(999);
    assert_eq!(m.cpuid(0x15, 0), [0; 4]);
}

#[test]
fn rdtsc_with_tsd() {
    for (cpl, tsd, faults) in [(3u8, true, true), (3, false, false), (0, true, false)] {
        let mut g = SysGuest::new();
        let code = |a: &mut CodeAssembler| {
            a.rdtsc().unwrap();
            a.mov(ebx, 1u32).unwrap();
            a.hlt().unwrap();
        };
        let mut st = if cpl == 3 {
            g.code(UCODE, code);
            user_state(&g, false)
        } else {
            g.code(KCODE, code);
            g.state(false)
        };
        if tsd {
            st.cr4 |= cr::CR4_TSD;
        }
        let mut cpu = mk(g, st);
        cpu.intercept = 1 << vector::GP;
        let exit = cpu.run(100);
        if faults {
            assert_eq!(exc(&exit).0, vector::GP);
            assert_eq!(cpu.state.gpr[EBX], 0);
        } else {
            assert_eq!(cpu.state.gpr[EBX], 1, "cpl {cpl} tsd {tsd}: {exit:?}");
        }
    }
}

#[test]
fn sysenter_sysexit_round_trip() {
    let mut g = SysGuest::new();
    g.identity_map(pte::RW | pte::US);
    g.code(KCODE, |a| {
        for (msr, v) in [(0x174u32, SEL_KCODE as u32), (0x175, KSTACK_TOP - 0x100), (0x176, HANDLERS)] {
            a.mov(ecx, msr).unwrap();
            a.mov(eax, v).unwrap();
            a.xor(edx, edx).unwrap();
            a.wrmsr().unwrap();
        }
        a.mov(edx, UCODE).unwrap();
        a.mov(ecx, USTACK_TOP - 0x10).unwrap();
        a.sysexit().unwrap();
    });
    g.code(UCODE, |a| {
        a.mov(esi, 0x77u32).unwrap();
        a.sysenter().unwrap();
    });
    g.code(HANDLERS, |a| {
        a.mov(edi, esp).unwrap();
        a.hlt().unwrap();
    });
    let mut st = g.state(true);
    st.eflags |= flags::IF;
    let mut cpu = mk(g, st);
    cpu.model.sep = true;
    cpu.intercept = !0;
    while cpu.state.eip != UCODE {
        assert_eq!(cpu.step(), None);
    }
    assert_eq!(cpu.state.cpl, 3);
    let c = *cpu.state.seg(SegReg::Cs);
    let s = *cpu.state.seg(SegReg::Ss);
    assert_eq!((c.selector, s.selector), (SEL_KCODE + 16 + 3, SEL_KCODE + 24 + 3));
    assert_eq!((c.base, c.limit, c.dpl()), (0, 0xffff_ffff, 3));
    assert!(c.is_code() && c.big() && s.writable() && s.big() && s.dpl() == 3);
    assert_eq!(cpu.state.gpr[ESP], USTACK_TOP - 0x10);
    assert_eq!(cpu.run(100), Exit::Halt);
    assert_eq!(cpu.state.cpl, 0);
    assert_eq!(cpu.state.seg(SegReg::Cs).selector, SEL_KCODE);
    assert_eq!(cpu.state.seg(SegReg::Ss).selector, SEL_KCODE + 8);
    assert_eq!(cpu.state.gpr[ESI], 0x77);
    assert_eq!(cpu.state.gpr[EDI], KSTACK_TOP - 0x100);
    assert_eq!(cpu.state.eflags & flags::IF, 0, "SYSENTER clears IF");

    // Without SEP in the model: #UD.
    let mut g = SysGuest::new();
    g.code(KCODE, |a| a.sysenter().unwrap());
    let st = g.state(false);
    let mut cpu = mk(g, st);
    cpu.intercept = !0;
    assert_eq!(exc(&cpu.run(10)).0, vector::UD);
}

// ---------------------------------------------------------------- control registers

#[test]
fn control_and_debug_register_checks() {
    // Each snippet runs at CPL 0 from a fresh state and must raise `vector`.
    type Case = (&'static str, u8, Box<dyn Fn(&mut CodeAssembler)>);
    let cases: Vec<Case> = vec![
        ("PG without PE", vector::GP, Box::new(|a| {
            a.mov(eax, cr::CR0_PG | cr::CR0_ET).unwrap();
            a.mov(cr0, eax).unwrap();
        })),
        ("NW without CD", vector::GP, Box::new(|a| {
            a.mov(eax, cr::CR0_PE | cr::CR0_NW).unwrap();
            a.mov(cr0, eax).unwrap();
        })),
        ("CR4.PAE", vector::GP, Box::new(|a| {
            a.mov(eax, cr::CR4_PAE).unwrap();
            a.mov(cr4, eax).unwrap();
        })),
        ("CR4.VME", vector::GP, Box::new(|a| {
            a.mov(eax, cr::CR4_VME).unwrap();
            a.mov(cr4, eax).unwrap();
        })),
        ("DR4 with CR4.DE", vector::UD, Box::new(|a| {
            a.mov(eax, cr::CR4_DE).unwrap();
            a.mov(cr4, eax).unwrap();
            a.mov(eax, dr4).unwrap();
        })),
    ];
    for (what, v, f) in cases {
        let mut g = SysGuest::new();
        g.code(KCODE, |a| {
            f(a);
            a.hlt().unwrap();
        });
        let st = g.state(false);
        let mut cpu = mk(g, st);
        cpu.intercept = !0;
        let (got, err, _, _) = exc(&cpu.run(10));
        assert_eq!(got, v, "{what}");
        if v == vector::GP {
            assert_eq!(err, Some(0), "{what}");
        }
    }
    // Allowed writes, DR4/DR5 aliasing, DR6/DR7 fixed bits, and a CPL-3 MOV CR.
    let mut g = SysGuest::new();
    g.code(KCODE, |a| {
        a.mov(eax, cr::CR4_PSE | cr::CR4_PGE | cr::CR4_TSD | cr::CR4_PCE | cr::CR4_OSFXSR | cr::CR4_OSXMMEXCPT).unwrap();
        a.mov(cr4, eax).unwrap();
        a.mov(eax, 0u32).unwrap();
        a.mov(dr6, eax).unwrap();
        a.mov(eax, 0x1u32).unwrap();
        a.mov(dr5, eax).unwrap(); // DR7
        a.mov(ebx, dr4).unwrap(); // DR6
        a.mov(ecx, dr7).unwrap();
        a.mov(edx, 0x1234_5678u32).unwrap();
        a.mov(dr0, edx).unwrap();
        a.mov(esi, dr0).unwrap();
        a.mov(edi, 0xdead_b000u32).unwrap();
        a.mov(cr2, edi).unwrap();
        a.mov(edi, cr2).unwrap();
        a.hlt().unwrap();
    });
    let st = g.state(false);
    let (cpu, exit) = g.run(st);
    assert_eq!(exit, Exit::Halt);
    assert_eq!(cpu.state.gpr[EBX], 0xffff_0ff0, "DR6 reserved bits (P6)");
    assert_eq!(cpu.state.gpr[ECX], 0x401, "DR7 bit 10 reads 1");
    assert_eq!(cpu.state.gpr[ESI], 0x1234_5678);
    assert_eq!(cpu.state.gpr[EDI], 0xdead_b000);

    let mut g = SysGuest::new();
    g.code(UCODE, |a| a.mov(eax, cr0).unwrap());
    let st = user_state(&g, false);
    let mut cpu = mk(g, st);
    cpu.intercept = !0;
    assert_eq!(exc(&cpu.run(10)).0, vector::GP, "MOV from CR0 at CPL 3");
}

#[test]
fn cli_sti_follow_iopl() {
    let mut g = SysGuest::new();
    g.code(UCODE, |a| {
        a.cli().unwrap();
        a.sti().unwrap();
    });
    let mut st = user_state(&g, false);
    st.eflags |= 3 << flags::IOPL_SHIFT;
    let mut cpu = mk(g, st);
    cpu.intercept = !0;
    cpu.step();
    assert_eq!(cpu.state.eflags & flags::IF, 0);
    cpu.step();
    assert_ne!(cpu.state.eflags & flags::IF, 0);

    let mut g = SysGuest::new();
    g.code(UCODE, |a| a.cli().unwrap());
    let st = user_state(&g, false);
    let mut cpu = mk(g, st);
    cpu.intercept = !0;
    assert_eq!(exc(&cpu.run(10)).0, vector::GP, "CPL 3 > IOPL 0");
}

// ---------------------------------------------------------------- x87 and SSE state

#[test]
fn fxsave_fxrstor_round_trip() {
    const A: u32 = DATA + 0x200; // image saved from the start state
    const B: u32 = DATA + 0x400; // a prepared image
    const C: u32 = DATA + 0x600; // image of B after restoring it
    let mut g = SysGuest::new();
    // B: FCW 0x0f7f, FSW with TOP = 5, all tags valid, MXCSR 0x1fc0, XMM0 low dword 0xb0b0.
    g.w16(B, 0x0f7f);
    g.w16(B + 2, 5 << 11);
    g.w8(B + 4, 0xff);
    g.w32(B + 24, 0x1fc0);
    g.w32(B + 160, 0xb0b0);
    g.w32(B + 32, 0x5151); // ST0 mantissa low bits
    g.code(KCODE, |a| {
        a.fxsave(ptr(A)).unwrap();
        a.fxrstor(ptr(B)).unwrap();
        a.fnstcw(word_ptr(DATA)).unwrap();
        a.fnstsw(ax).unwrap();
        a.stmxcsr(dword_ptr(DATA + 4)).unwrap();
        a.fxsave(ptr(C)).unwrap();
        a.fxrstor(ptr(A)).unwrap();
        a.hlt().unwrap();
    });
    let mut st = g.state(false);
    st.cr4 |= cr::CR4_OSFXSR;
    st.fpu.0[160..164].copy_from_slice(&0xa0a0u32.to_le_bytes());
    let start_fpu = st.fpu.clone();
    let (mut cpu, exit) = g.run(st);
    assert_eq!(exit, Exit::Halt);
    let ram = |cpu: &mut Cpu<RamBus>, a: u32, n: usize| cpu.bus.ram[a as usize..a as usize + n].to_vec();
    // A: the reset state (FCW 0x37f, MXCSR 0x1f80) and XMM0.
    assert_eq!(ram(&mut cpu, A, 2), [0x7f, 0x03]);
    assert_eq!(r32(&mut cpu, A + 24), 0x1f80);
    assert_ne!(r32(&mut cpu, A + 28), 0, "MXCSR_MASK is reported");
    assert_eq!(r32(&mut cpu, A + 28) & 0xffbf, 0xffbf, "every architectural MXCSR bit is supported");
    assert_eq!(r32(&mut cpu, A + 160), 0xa0a0);
    // After FXRSTOR B.
    assert_eq!(r32(&mut cpu, DATA) & 0xffff, 0x0f7f);
    assert_eq!(cpu.state.gpr[EAX] & 0xffff, 5 << 11);
    assert_eq!(r32(&mut cpu, DATA + 4), 0x1fc0);
    assert_eq!(ram(&mut cpu, C, 5), ram(&mut cpu, B, 5));
    assert_eq!(r32(&mut cpu, C + 24), 0x1fc0);
    assert_eq!(r32(&mut cpu, C + 32), 0x5151);
    assert_eq!(r32(&mut cpu, C + 160), 0xb0b0);
    // Back to A.
    assert_eq!(cpu.state.fpu, start_fpu);
}

#[test]
fn fxsave_alignment_reserved_mxcsr_and_ts() {
    let run = |f: &dyn Fn(&mut CodeAssembler), cr0_set: u32, cr4_set: u32, prep: &dyn Fn(&mut SysGuest)| {
        let mut g = SysGuest::new();
        prep(&mut g);
        g.code(KCODE, |a| {
            f(a);
            a.hlt().unwrap();
        });
        let mut st = g.state(false);
        st.cr0 |= cr0_set;
        st.cr4 |= cr4_set;
        let mut cpu = mk(g, st);
        cpu.intercept = !0;
        cpu.run(10)
    };
    let none = |_: &mut SysGuest| {};
    let fx = |a: &mut CodeAssembler| a.fxsave(ptr(DATA + 8)).unwrap();
    assert_eq!(exc(&run(&fx, 0, cr::CR4_OSFXSR, &none)), (vector::GP, Some(0), 0, KCODE));
    let fx = |a: &mut CodeAssembler| a.fxsave(ptr(DATA)).unwrap();
    assert_eq!(exc(&run(&fx, cr::CR0_TS, cr::CR4_OSFXSR, &none)).0, vector::NM, "FXSAVE with CR0.TS");
    assert_eq!(exc(&run(&fx, cr::CR0_EM, cr::CR4_OSFXSR, &none)).0, vector::NM, "FXSAVE with CR0.EM");
    let rs = |a: &mut CodeAssembler| a.fxrstor(ptr(DATA)).unwrap();
    let bad = |g: &mut SysGuest| g.w32(DATA + 24, 0x1_0000);
    assert_eq!(exc(&run(&rs, 0, cr::CR4_OSFXSR, &bad)), (vector::GP, Some(0), 0, KCODE));
    let ld = |a: &mut CodeAssembler| a.ldmxcsr(dword_ptr(DATA)).unwrap();
    let mx = |g: &mut SysGuest| g.w32(DATA, 0x1f80);
    assert_eq!(exc(&run(&ld, 0, 0, &mx)).0, vector::UD, "LDMXCSR without CR4.OSFXSR");
    assert_eq!(exc(&run(&ld, cr::CR0_EM, cr::CR4_OSFXSR, &mx)).0, vector::UD, "LDMXCSR with CR0.EM");
    assert_eq!(exc(&run(&ld, cr::CR0_TS, cr::CR4_OSFXSR, &mx)).0, vector::NM, "LDMXCSR with CR0.TS");
    let bad_mx = |g: &mut SysGuest| g.w32(DATA, 0x1_1f80);
    assert_eq!(exc(&run(&ld, 0, cr::CR4_OSFXSR, &bad_mx)), (vector::GP, Some(0), 0, KCODE), "reserved MXCSR bit");
    assert_eq!(run(&ld, 0, cr::CR4_OSFXSR, &mx), Exit::Halt);
    let fi = |a: &mut CodeAssembler| a.fninit().unwrap();
    assert_eq!(exc(&run(&fi, cr::CR0_TS, 0, &none)).0, vector::NM, "x87 with CR0.TS");
    assert_eq!(exc(&run(&fi, cr::CR0_EM, 0, &none)).0, vector::NM, "x87 with CR0.EM");
    let wait = |a: &mut CodeAssembler| {
        a.wait().unwrap();
        a.mov(ebx, 1u32).unwrap();
    };
    assert_eq!(run(&wait, cr::CR0_TS, 0, &none), Exit::Halt, "FWAIT with TS but not MP");
    assert_eq!(exc(&run(&wait, cr::CR0_TS | cr::CR0_MP, 0, &none)).0, vector::NM, "FWAIT with TS and MP");
    let emms = |a: &mut CodeAssembler| a.emms().unwrap();
    assert_eq!(exc(&run(&emms, cr::CR0_EM, 0, &none)).0, vector::UD, "MMX with CR0.EM");
}

#[test]
fn fnstenv_of_fresh_fninit_state() {
    let mut g = SysGuest::new();
    for k in 0..28 {
        g.w8(DATA + k, 0xcc);
    }
    g.code(KCODE, |a| {
        a.fninit().unwrap();
        a.fnstenv(ptr(DATA)).unwrap();
        a.fnstcw(word_ptr(DATA + 0x40)).unwrap();
        a.hlt().unwrap();
    });
    let mut st = g.state(false);
    st.fpu.set_fcw(0x0360);
    st.fpu.set_fsw(0x3801);
    st.fpu.set_ftw_abridged(0x81);
    let (mut cpu, exit) = g.run(st);
    assert_eq!(exit, Exit::Halt);
    let w = |cpu: &mut Cpu<RamBus>, k: u32| r32(cpu, DATA + 4 * k) & 0xffff;
    assert_eq!(w(&mut cpu, 0), 0x037f, "FCW");
    assert_eq!(w(&mut cpu, 1), 0, "FSW");
    assert_eq!(w(&mut cpu, 2), 0xffff, "FTW: all empty");
    assert_eq!(r32(&mut cpu, DATA + 12), 0, "FIP");
    assert_eq!(r32(&mut cpu, DATA + 16) & 0x07ff_ffff, 0, "FCS and opcode");
    assert_eq!(r32(&mut cpu, DATA + 20), 0, "FDP");
    assert_eq!(w(&mut cpu, 6), 0, "FDS");
    assert_eq!(r32(&mut cpu, DATA + 0x40) & 0xffff, 0x037f);
}

#[test]
fn fnstenv_tag_word_and_fldenv() {
    let mut g = SysGuest::new();
    g.code(KCODE, |a| {
        a.fnstenv(ptr(DATA)).unwrap();
        a.fnstcw(word_ptr(DATA + 0x40)).unwrap();
        a.fninit().unwrap();
        a.fldenv(ptr(DATA)).unwrap();
        a.fnsave(ptr(DATA + 0x100)).unwrap();
        a.hlt().unwrap();
    });
    let mut st = g.state(false);
    // TOP = 6: ST0 is physical register 6, ST1 is 7, ST2 is 0.
    st.fpu.set_fcw(0x0360); // every exception unmasked
    st.fpu.set_fsw(6 << 11);
    st.fpu.set_ftw_abridged(0b1100_0001);
    let one = [0, 0, 0, 0, 0, 0, 0, 0x80, 0xff, 0x3f]; // 1.0
    let inf = [0, 0, 0, 0, 0, 0, 0, 0x80, 0xff, 0x7f]; // +infinity
    st.fpu.0[32..42].copy_from_slice(&one); // ST0: valid
    st.fpu.0[48..58].fill(0); // ST1: zero
    st.fpu.0[64..74].copy_from_slice(&inf); // ST2: special
    st.fpu.0[80..90].copy_from_slice(&one); // ST3 (physical 1): empty whatever it holds
    let (mut cpu, exit) = g.run(st);
    assert_eq!(exit, Exit::Halt);
    // Tags by physical register: p0 special (10), p1-p5 empty (11), p6 valid (00), p7 zero (01).
    assert_eq!(r32(&mut cpu, DATA + 8) & 0xffff, 0x4ffe);
    assert_eq!(r32(&mut cpu, DATA + 4) & 0xffff, 6 << 11);
    assert_eq!(r32(&mut cpu, DATA + 0x40) & 0xffff, 0x037f, "FNSTENV masks all exceptions");
    // FLDENV restored TOP and the tags (then FNSAVE stored them and reinitialised).
    assert_eq!(r32(&mut cpu, DATA + 0x100 + 8) & 0xffff, 0x4ffe);
    assert_eq!(r32(&mut cpu, DATA + 0x100 + 4) & 0xffff, 6 << 11);
    assert_eq!(&cpu.bus.ram[(DATA + 0x100 + 28) as usize..(DATA + 0x100 + 38) as usize], &one, "FNSAVE ST0");
    assert_eq!(&cpu.bus.ram[(DATA + 0x100 + 48) as usize..(DATA + 0x100 + 58) as usize], &inf, "FNSAVE ST2");
    assert_eq!(cpu.state.fpu.fcw(), 0x037f, "FNSAVE reinitialises");
    assert_eq!(cpu.state.fpu.ftw_abridged(), 0);
}

#[test]
fn x87_unimplemented_is_unsupported() {
    // FSQRT is outside the implemented x87 subset (exec/x87.rs).
    let mut g = SysGuest::new();
    g.code(KCODE, |a| {
        a.fninit().unwrap();
        a.fsqrt().unwrap();
        a.hlt().unwrap();
    });
    let st = g.state(false);
    let (cpu, exit) = g.run(st);
    match exit {
        Exit::Unsupported { eip, instruction, .. } => {
            assert_eq!(eip, KCODE + 2);
            assert!(instruction.contains("fsqrt"), "{instruction}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(cpu.state.eip, KCODE + 2);
}
