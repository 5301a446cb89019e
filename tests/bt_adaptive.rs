//! Adaptive retranslation under `--kernel-engine bt` (docs/bt.md): a guest instruction that
//! keeps faulting in translated code is retranslated as a callout. Each guest runs under the
//! interpreter (the oracle) and under `bt`; the final guest-visible state must be the same, and
//! the `bt` run's statistics must show that the instruction was retranslated and that the
//! faults stopped: the signal-driven exits are bounded by the threshold, not proportional to
//! the loop count.

use std::time::Duration;

use iced_x86::code_asm::*;
use vmm_interp::state::{attr, Segment};
use vmm_interp::{CpuState, TableReg};
use vmm_monitor::bt::adaptive::RETRANSLATE_AFTER;
use vmm_monitor::devices::HostClock;
use vmm_monitor::engine::{self, EngineKind, Outcome, RunOptions, RunResult};
use vmm_monitor::machine::Machine;
use vmm_monitor::memory::GuestRam;
use vmm_monitor::space::DEFAULT_MONITOR_BASE;

const GDT: u32 = 0x1000;
const IDT: u32 = 0x2000;
const PD: u32 = 0x4000;
const PT: u32 = 0x5000;
/// With paging: the page table of the monitor area's 4 MiB, which maps its first page to
/// [`HIGH_FRAME`] (as Linux's fixmap maps pages at the top of the linear space).
const PT_HIGH: u32 = 0x6000;
const HIGH_FRAME: u32 = 0x7000;
const KSTACK: u32 = 0x9000;
const CODE: u32 = 0x1_0000;
/// A subroutine in the code's page: `mov eax, imm32; ret`.
const SUB: u32 = CODE + 0x400;
/// Data in the code's page.
const DATA_IN_CODE: u32 = CODE + 0x800;
const HANDLER: u32 = 0x1_8000;
const RAM: usize = 1 << 20;
/// Loop iterations: far more than the threshold.
const N: u32 = 2000;

fn desc(base: u32, limit: u32, access: u8, flags: u8) -> u64 {
    (limit as u64 & 0xffff)
        | ((base as u64 & 0xff_ffff) << 16)
        | ((access as u64) << 40)
        | (((limit as u64 >> 16) & 0xf) << 48)
        | ((flags as u64 & 0xf) << 52)
        | (((base as u64) >> 24) << 56)
}

/// A flat CPL-0 guest running `code` at CODE (and `sub` at SUB); any exception ends the run
/// through the debug-exit port with 0x21.
fn guest(code: &[u8], sub: &[u8], paging: bool) -> (Machine, CpuState) {
    let mut ram = GuestRam::heap(RAM);
    let gdt = [0u64, desc(0, 0xfffff, 0x9a, 0xc), desc(0, 0xfffff, 0x92, 0xc), desc(0x3000, 0x67, 0x89, 0)];
    for (i, d) in gdt.iter().enumerate() {
        ram.write((GDT + 8 * i as u32) as u64, &d.to_le_bytes()).unwrap();
    }
    for v in 0..32u32 {
        ram.write_u32((IDT + v * 8) as u64, (0x08u32 << 16) | (HANDLER & 0xffff)).unwrap();
        ram.write_u32((IDT + v * 8 + 4) as u64, (HANDLER & 0xffff_0000) | 0x8e00).unwrap();
    }
    ram.write(CODE as u64, code).unwrap();
    ram.write(SUB as u64, sub).unwrap();
    let mut h = CodeAssembler::new(32).unwrap();
    h.mov(al, 0x21u32).unwrap();
    h.out(0xf4, al).unwrap();
    h.hlt().unwrap();
    ram.write(HANDLER as u64, &h.assemble(HANDLER as u64).unwrap()).unwrap();
    // Page 0 holds known words (the read loop sums them).
    for i in 0..16u32 {
        ram.write_u32(4 * i as u64, 0x0101_0101u32.wrapping_mul(i + 1)).unwrap();
        ram.write_u32((HIGH_FRAME + 4 * i) as u64, 0x0301_0701u32.wrapping_mul(i + 3)).unwrap();
    }
    let mut s = CpuState::flat_protected(0);
    if paging {
        ram.write_u32(PD as u64, PT | 3).unwrap();
        for i in 0..256u32 {
            ram.write_u32((PT + 4 * i) as u64, (i << 12) | 3).unwrap();
        }
        let high = DEFAULT_MONITOR_BASE;
        ram.write_u32((PD + 4 * (high >> 22)) as u64, PT_HIGH | 3).unwrap();
        ram.write_u32((PT_HIGH + 4 * ((high >> 12) & 0x3ff)) as u64, HIGH_FRAME | 3).unwrap();
        s.cr3 = PD;
        s.cr0 |= vmm_interp::state::cr::CR0_PG;
    }
    s.eip = CODE;
    s.gpr = [1, 2, 3, 4, KSTACK, 6, 7, 8];
    s.gdtr = TableReg { base: GDT, limit: (gdt.len() * 8 - 1) as u16 };
    s.idtr = TableReg { base: IDT, limit: 0xff };
    s.tr = Segment { selector: 0x18, base: 0x3000, limit: 0x67, attr: attr::P | 11 };
    (Machine::new(ram, Box::new(HostClock::new()), Box::new(std::io::sink())), s)
}

fn run(code: &[u8], sub: &[u8], paging: bool, kernel: EngineKind) -> RunResult {
    let (m, s) = guest(code, sub, paging);
    let opts = RunOptions { kernel_engine: kernel, user_engine: EngineKind::Interp, timeout: Some(Duration::from_secs(60)), ..RunOptions::default() };
    engine::run(m, s, &opts).unwrap()
}

/// What the guest can see: how the run ended, registers, the code page (what the tests write
/// in it, and a checksum of all of it), the stack.
fn visible(r: &RunResult) -> String {
    let s = &r.state;
    let mem = |a: u32, n: usize| r.machine.ram.slice(a as u64, n).unwrap().to_vec();
    let sum = mem(CODE, 0x1000).iter().enumerate().fold(0u64, |h, (i, b)| h.wrapping_mul(31).wrapping_add(*b as u64 ^ i as u64));
    format!(
        "outcome {:?}\ngpr {:08x?}\neip {:08x} eflags {:08x}\nsub {:02x?} data {:02x?} page sum {sum:016x}\nstack {:02x?}",
        r.outcome,
        s.gpr,
        s.eip,
        s.eflags,
        mem(SUB, 6),
        mem(DATA_IN_CODE, 4),
        mem(KSTACK - 64, 64)
    )
}

fn exits(r: &RunResult, name: &str) -> u64 {
    r.stats.exits.get(name).copied().unwrap_or(0)
}

fn ends(a: &mut CodeAssembler) {
    a.mov(al, 0u32).unwrap();
    a.out(0xf4, al).unwrap();
    a.hlt().unwrap();
}

fn sub_code() -> Vec<u8> {
    let mut b = CodeAssembler::new(32).unwrap();
    b.mov(eax, 100u32).unwrap();
    b.ret().unwrap();
    b.assemble(SUB as u64).unwrap()
}

/// The kernel's loop stores into the page holding its own code (data next to code) at every
/// iteration, with one store instruction that every 256th iteration patches the immediate of a
/// subroutine in the same page instead. Before retranslation each store is a write fault on a
/// write-protected code frame that invalidates the frame's fragments; after it, the store is a
/// callout, the data stores invalidate nothing, and the patches invalidate only the subroutine.
#[test]
fn stores_next_to_code_become_callouts() {
    let mut a = CodeAssembler::new(32).unwrap();
    let mut top = a.create_label();
    let mut store = a.create_label();
    a.mov(ecx, N).unwrap();
    a.xor(ebx, ebx).unwrap();
    a.set_label(&mut top).unwrap();
    a.mov(edi, DATA_IN_CODE).unwrap();
    a.mov(eax, ecx).unwrap();
    a.test(ecx, 255).unwrap();
    a.jnz(store).unwrap();
    a.mov(edi, SUB + 1).unwrap(); // the next call returns ECX
    a.set_label(&mut store).unwrap();
    a.mov(dword_ptr(edi), eax).unwrap(); // the store that keeps faulting
    a.call(SUB as u64).unwrap();
    a.add(ebx, eax).unwrap();
    a.imul_2(ebx, ebx).unwrap();
    a.dec(ecx).unwrap();
    a.jnz(top).unwrap();
    ends(&mut a);
    let code = a.assemble(CODE as u64).unwrap();
    assert!(code.len() < 0x400);
    for paging in [false, true] {
        let i = run(&code, &sub_code(), paging, EngineKind::Interp);
        assert_eq!(i.outcome, Outcome::DebugExit { value: 0 });
        let b = run(&code, &sub_code(), paging, EngineKind::Bt);
        let st = b.stats.render();
        assert_eq!(visible(&b), visible(&i), "paging {paging}\n{st}");
        assert!(exits(&b, "bt-retranslate") >= 1, "{st}");
        // The faulting store: signals until the threshold, then none.
        let signals = exits(&b, "bt-code-write") + exits(&b, "refault");
        assert!(signals <= RETRANSLATE_AFTER as u64 + 2, "{signals} code-write signals for {N} stores\n{st}");
        assert!(exits(&b, "bt-adaptive-callout") >= (N - RETRANSLATE_AFTER - 2) as u64, "{st}");
        // No re-translation churn: the patches (every 256th iteration) invalidate the
        // subroutine's fragment, the data stores nothing.
        let patches = (N / 256) as u64;
        assert!(exits(&b, "bt-code-write-emulated") >= patches, "{st}");
        assert!(b.stats.translated <= 8 * (patches + RETRANSLATE_AFTER as u64) + 16, "{st}");
        assert!(b.stats.native_exits < 4 * N as u64, "{st}");
    }
}

/// The kernel's loop reads page 0 / the monitor area (which the monitor never maps for the
/// guest: every access faults and the interpreter performs it) at every iteration; the guest
/// maps a RAM page there (with paging) and the reads must see it.
#[test]
fn reads_of_page0_and_the_monitor_area_become_callouts() {
    for (addr, pagings) in [(0x10u32, &[false, true][..]), (DEFAULT_MONITOR_BASE + 0x10, &[true][..])] {
        let mut a = CodeAssembler::new(32).unwrap();
        let mut top = a.create_label();
        a.mov(ecx, N).unwrap();
        a.xor(ebx, ebx).unwrap();
        a.set_label(&mut top).unwrap();
        a.mov(eax, dword_ptr(addr)).unwrap(); // the read that keeps faulting
        a.add(ebx, eax).unwrap();
        a.rol(ebx, 3).unwrap();
        a.dec(ecx).unwrap();
        a.jnz(top).unwrap();
        ends(&mut a);
        let code = a.assemble(CODE as u64).unwrap();
        for &paging in pagings {
            let i = run(&code, &sub_code(), paging, EngineKind::Interp);
            assert_eq!(i.outcome, Outcome::DebugExit { value: 0 });
            let b = run(&code, &sub_code(), paging, EngineKind::Bt);
            let st = b.stats.render();
            assert_eq!(visible(&b), visible(&i), "{addr:#x} paging {paging}\n{st}");
            assert!(exits(&b, "bt-retranslate") >= 1, "{addr:#x}\n{st}");
            let signals: u64 = vmm_monitor::bt::adaptive::FAULT_EXITS.iter().map(|e| exits(&b, e)).sum();
            assert!(signals <= RETRANSLATE_AFTER as u64 + 2, "{addr:#x}: {signals} fault signals for {N} reads\n{st}");
            // The read faulted before the retranslation (a #PF into page 0 or the monitor
            // area, or the #GP of a data segment truncated below the monitor area).
            assert!(signals >= 1, "{st}");
            assert!(exits(&b, "bt-adaptive-callout") >= (N - RETRANSLATE_AFTER - 2) as u64, "{st}");
        }
    }
}
