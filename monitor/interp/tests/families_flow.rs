//! Stack, string and near control-transfer families, checked against the SDM's definitions.
mod common;
use common::sys::*;
use common::*;
use iced_x86::code_asm::*;
use vmm_interp::mmu::pte;
use vmm_interp::state::flags::*;
use vmm_interp::state::{vector, SegReg, Segment};
use vmm_interp::{Bus, Cpu, CpuState, Exit, IoAction, RamBus};

const S: u32 = STACK_TOP;

// ---------------------------------------------------------------- helpers

fn asm(addr: u32, f: impl FnOnce(&mut CodeAssembler)) -> Vec<u8> {
    let mut a = CodeAssembler::new(32).unwrap();
    f(&mut a);
    a.assemble(addr as u64).expect("assemble")
}

/// Run flat code at `cpl` on any bus (code at CODE, other blobs as given), all exceptions
/// intercepted.
fn run_on<B: Bus>(
    mut bus: B,
    cpl: u8,
    mem: &[(u32, &[u8])],
    setup: impl FnOnce(&mut CpuState),
    f: impl FnOnce(&mut CodeAssembler),
) -> (Cpu<B>, Exit) {
    let code = asm(CODE, f);
    bus.ram()[CODE as usize..CODE as usize + code.len()].copy_from_slice(&code);
    for (a, d) in mem {
        bus.ram()[*a as usize..*a as usize + d.len()].copy_from_slice(d);
    }
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

/// Flat CPL 0 guest with memory contents; expects HLT.
fn run_mem(mem: &[(u32, &[u8])], setup: impl FnOnce(&mut CpuState), f: impl FnOnce(&mut CodeAssembler)) -> Cpu<RamBus> {
    let (cpu, exit) = run_on(RamBus::new(RAM), 0, mem, setup, |a| {
        f(a);
        a.hlt().unwrap();
    });
    assert_eq!(exit, Exit::Halt, "guest did not halt cleanly at {:#x}", cpu.state.eip);
    cpu
}

fn r8(cpu: &Cpu<RamBus>, a: u32) -> u8 {
    cpu.bus.ram[a as usize]
}
fn r16(cpu: &Cpu<RamBus>, a: u32) -> u16 {
    u16::from_le_bytes(cpu.bus.ram[a as usize..a as usize + 2].try_into().unwrap())
}
fn r32(cpu: &Cpu<RamBus>, a: u32) -> u32 {
    u32::from_le_bytes(cpu.bus.ram[a as usize..a as usize + 4].try_into().unwrap())
}

fn sys_run(g: SysGuest, st: CpuState, intercept: u32) -> (Cpu<RamBus>, Exit) {
    let mut cpu = Cpu::with_state(st, g.bus);
    cpu.intercept = intercept;
    let exit = cpu.run(10_000_000);
    (cpu, exit)
}

/// A SysGuest state at CPL 3 in UCODE with the user stack.
fn user_state(g: &SysGuest) -> CpuState {
    let mut st = g.state(false);
    let d = Segment::flat(SEL_UDATA, false, 3);
    st.seg = [d, Segment::flat(SEL_UCODE, true, 3), d, d, d, d];
    st.cpl = 3;
    st.eip = UCODE;
    st.gpr[4] = USTACK_TOP;
    st.eflags = 0x202;
    st
}

/// STD and CLD through PUSHFD/POPFD (the flag instructions belong to another family).
fn set_df(a: &mut CodeAssembler) {
    a.pushfd().unwrap();
    a.or(dword_ptr(esp), DF as i32).unwrap();
    a.popfd().unwrap();
}
fn clear_df(a: &mut CodeAssembler) {
    a.pushfd().unwrap();
    a.and(dword_ptr(esp), !DF as i32).unwrap();
    a.popfd().unwrap();
}

fn exc(vector: u8, error_code: Option<u32>, fault_addr: u32, eip: u32) -> Exit {
    Exit::Exception { vector, error_code, cr2: fault_addr, eip }
}

// ---------------------------------------------------------------- PUSH / POP

#[test]
fn push_pop_sizes() {
    let cpu = run_mem(
        &[],
        |s| s.gpr[6] = 0xaaaa_0000,
        |a| {
            a.mov(dword_ptr(0x2000), 0xcafe_babe_u32 as i32).unwrap();
            a.push(dword_ptr(0x2000)).unwrap();
            a.pop(word_ptr(0x2012)).unwrap();
            a.pop(word_ptr(0x2010)).unwrap();
            a.mov(eax, 0x1122_3344).unwrap();
            a.push(eax).unwrap(); // S-4
            a.push(ax).unwrap(); // S-6
            a.push(-2).unwrap(); // imm8 sign-extended to 32 bits: S-10
            a.db(&[0x66, 0x6a, 0xfd]).unwrap(); // push imm8 with a 16-bit operand: S-12
            a.push(0x1234_5678).unwrap(); // S-16
            a.pop(ebx).unwrap();
            a.pop(cx).unwrap();
            a.pop(edx).unwrap();
            a.pop(si).unwrap();
            a.pop(edi).unwrap();
        },
    );
    assert_eq!(r32(&cpu, S - 4), 0x1122_3344);
    assert_eq!(r16(&cpu, S - 6), 0x3344);
    assert_eq!(r32(&cpu, S - 10), 0xffff_fffe);
    assert_eq!(r16(&cpu, S - 12), 0xfffd);
    assert_eq!(r32(&cpu, S - 16), 0x1234_5678);
    assert_eq!(cpu.state.gpr[3], 0x1234_5678);
    assert_eq!(cpu.state.gpr[1], 0xfffd);
    assert_eq!(cpu.state.gpr[2], 0xffff_fffe);
    assert_eq!(cpu.state.gpr[6], 0xaaaa_3344);
    assert_eq!(cpu.state.gpr[7], 0x1122_3344);
    assert_eq!(cpu.state.gpr[4], S);
    assert_eq!(r32(&cpu, 0x2010), 0xbabe_cafe);
}

#[test]
fn push_esp_pop_esp_pop_mem_esp() {
    let cpu = run_mem(
        &[],
        |_| {},
        |a| {
            a.push(esp).unwrap(); // pushes S
            a.pop(eax).unwrap();
            a.push(0x1234_5678).unwrap();
            a.push(dword_ptr(esp)).unwrap(); // address computed before the push
            a.pop(ebx).unwrap();
            a.pop(ecx).unwrap();
            a.push(0x1111_1111).unwrap(); // S-4
            a.push(0x2222_2222).unwrap(); // S-8
            a.pop(dword_ptr(esp + 4)).unwrap(); // ESP = S-4 after the pop: writes [S]
            a.pop(edx).unwrap(); // 0x11111111
            a.push(0x7_0000).unwrap();
            a.pop(esp).unwrap();
        },
    );
    assert_eq!(cpu.state.gpr[0], S);
    assert_eq!(cpu.state.gpr[3], 0x1234_5678);
    assert_eq!(cpu.state.gpr[1], 0x1234_5678);
    assert_eq!(r32(&cpu, S), 0x2222_2222);
    assert_eq!(cpu.state.gpr[2], 0x1111_1111);
    assert_eq!(cpu.state.gpr[4], 0x7_0000);
}

#[test]
fn pop_esp_16bit_and_pop_mem_esp_base() {
    let cpu = run_mem(
        &[],
        |_| {},
        |a| {
            a.push(0x3333_3333).unwrap(); // S-4
            a.push(0x4444_4444).unwrap(); // S-8
            a.pop(dword_ptr(esp)).unwrap(); // writes the new top, S-4
            a.pop(ebx).unwrap();
            a.mov(eax, 0x0001_2344).unwrap();
            a.push(ax).unwrap();
            a.db(&[0x66, 0x5c]).unwrap(); // pop sp
        },
    );
    assert_eq!(cpu.state.gpr[3], 0x4444_4444);
    // SP gets the popped word; the upper half of ESP is kept.
    assert_eq!(cpu.state.gpr[4], (S & 0xffff_0000) | 0x2344);
}

#[test]
fn push_segment_register_zero_extends() {
    let cpu = run_mem(
        &[],
        |s| s.seg[SegReg::Fs as usize].selector = 0x10,
        |a| {
            a.mov(dword_ptr(esp - 4), 0xaaaa_aaaa_u32 as i32).unwrap();
            a.mov(dword_ptr(esp - 8), 0xbbbb_bbbb_u32 as i32).unwrap();
            a.push(fs).unwrap(); // 32-bit operand size: the selector zero-extended
            a.db(&[0x66, 0x0f, 0xa0]).unwrap(); // push fs with a 16-bit operand size
        },
    );
    assert_eq!(r32(&cpu, S - 4), 0x0000_0010);
    assert_eq!(r16(&cpu, S - 6), 0x0010);
    assert_eq!(cpu.state.gpr[4], S - 6);
}

#[test]
fn pop_segment_registers() {
    let mut g = SysGuest::new();
    g.code(KCODE, |a| {
        a.push(0xffff_0000u32 as i32 | SEL_UDATA as i32).unwrap(); // upper half ignored
        a.pop(ds).unwrap();
        a.push(SEL_UDATA as i32).unwrap();
        a.db(&[0x66, 0x0f, 0xa1]).unwrap(); // pop fs, 16-bit: ESP += 2
        a.pop(ax).unwrap();
        a.push(SEL_KDATA as i32).unwrap();
        a.pop(ss).unwrap();
        a.push(0x1230).unwrap(); // beyond the GDT limit
        a.pop(ds).unwrap();
    });
    let mut st = g.state(false);
    st.seg[SegReg::Ds as usize].selector = 0;
    let (cpu, exit) = sys_run(g, st, 1 << GP);
    assert_eq!(exit, exc(GP, Some(0x1230), 0, KCODE + 5 + 1 + 2 + 3 + 2 + 2 + 1 + 5));
    assert_eq!(cpu.state.seg[SegReg::Ds as usize].selector, SEL_UDATA, "DS kept after the fault");
    assert_eq!(cpu.state.seg[SegReg::Ds as usize].dpl(), 3);
    assert_eq!(cpu.state.seg[SegReg::Fs as usize].selector, SEL_UDATA);
    assert_eq!(cpu.state.seg[SegReg::Ss as usize].selector, SEL_KDATA);
    // The faulting POP leaves ESP pointing at the bad selector.
    assert_eq!(cpu.state.gpr[4], KSTACK_TOP - 4);

    // POP SS with RPL 3 at CPL 0: #GP(selector), ESP unchanged.
    let mut g = SysGuest::new();
    g.code(KCODE, |a| {
        a.push(SEL_UDATA as i32).unwrap();
        a.pop(ss).unwrap();
    });
    let st = g.state(false);
    let (cpu, exit) = sys_run(g, st, 1 << GP);
    assert_eq!(exit, exc(GP, Some(SEL_UDATA as u32 & 0xfffc), 0, KCODE + 2));
    assert_eq!(cpu.state.gpr[4], KSTACK_TOP - 4);
    assert_eq!(cpu.state.seg[SegReg::Ss as usize].selector, SEL_KDATA);
}

#[test]
fn push_pop_on_a_16bit_stack() {
    let cpu = run_mem(
        &[],
        |s| {
            s.seg[SegReg::Ss as usize].attr &= !vmm_interp::state::attr::DB;
            s.gpr[4] = 0x1234_0002;
        },
        |a| {
            a.mov(eax, 0xaabb_ccdd_u32 as i32).unwrap();
            a.push(eax).unwrap(); // SP wraps: 0xfffe
            a.mov(ebx, esp).unwrap();
            a.pop(ecx).unwrap();
        },
    );
    assert_eq!(cpu.state.gpr[3], 0x1234_fffe);
    assert_eq!(r32(&cpu, 0xfffe), 0xaabb_ccdd);
    assert_eq!(cpu.state.gpr[1], 0xaabb_ccdd);
    assert_eq!(cpu.state.gpr[4], 0x1234_0002);
}

#[test]
fn pusha_popa() {
    let cpu = run_mem(
        &[],
        |s| s.gpr = [1, 2, 3, 4, S, 6, 7, 8],
        |a| {
            a.pushad().unwrap();
            a.mov(eax, dword_ptr(esp + 12)).unwrap(); // the ESP slot
            a.mov(dword_ptr(0x2000), eax).unwrap();
            a.mov(dword_ptr(esp + 12), 0xdead).unwrap();
            for r in [eax, ecx, edx, ebx, ebp, esi, edi] {
                a.mov(r, 0).unwrap();
            }
            a.popad().unwrap();
        },
    );
    for (k, v) in [1u32, 2, 3, 4, 0xdead, 6, 7, 8].iter().enumerate() {
        assert_eq!(r32(&cpu, S - 4 - 4 * k as u32), *v, "slot {k}");
    }
    assert_eq!(r32(&cpu, 0x2000), S, "PUSHAD pushes the original ESP");
    assert_eq!(cpu.state.gpr, [1, 2, 3, 4, S, 6, 7, 8]);

    let cpu = run_mem(
        &[],
        |s| s.gpr = [0x1_0001, 0x1_0002, 0x1_0003, 0x1_0004, S, 0x1_0006, 0x1_0007, 0x1_0008],
        |a| {
            a.db(&[0x66, 0x60]).unwrap(); // pusha (16-bit)
            for r in [eax, ecx, edx, ebx, ebp, esi, edi] {
                a.mov(r, 0xffff_0000u32 as i32).unwrap();
            }
            a.db(&[0x66, 0x61]).unwrap(); // popa (16-bit)
        },
    );
    for (k, v) in [1u16, 2, 3, 4, S as u16, 6, 7, 8].iter().enumerate() {
        assert_eq!(r16(&cpu, S - 2 - 2 * k as u32), *v, "slot {k}");
    }
    assert_eq!(
        cpu.state.gpr,
        [0xffff_0001, 0xffff_0002, 0xffff_0003, 0xffff_0004, S, 0xffff_0006, 0xffff_0007, 0xffff_0008]
    );
}

// ---------------------------------------------------------------- PUSHF / POPF

/// `push pushed; popf(d); hlt` at `cpl` with EFLAGS = `initial`: the EFLAGS after POPF.
fn popf_result(cpl: u8, initial: u32, pushed: u32, wide: bool) -> u32 {
    let (cpu, exit) = run_flat(
        cpl,
        |s| s.eflags = initial,
        |a| {
            a.push(pushed as i32).unwrap();
            if wide {
                a.popfd().unwrap();
            } else {
                a.db(&[0x66, 0x9d]).unwrap();
            }
            a.hlt().unwrap();
        },
    );
    if cpl == 0 {
        assert_eq!(exit, Exit::Halt);
    } else {
        assert_eq!(vec_of(&exit), GP, "{exit:?}"); // HLT at CPL 3
    }
    cpu.state.eflags
}

#[test]
fn popf_at_cpl0() {
    // Everything writable except VM/VIF/VIP; RF cleared by a 32-bit POPF; reserved bits and
    // bits above ID stay clear. (TF is left out to avoid a single-step trap.)
    let all = CF | PF | AF | ZF | SF | IF | DF | OF | IOPL | NT | AC | ID | FIXED1;
    assert_eq!(popf_result(0, 0x202 | RF, !TF, true), all);
    assert_eq!(popf_result(0, 0x202 | RF, 0xffc0_8028, true), FIXED1);
    // VIF and VIP are kept, whatever was popped.
    assert_eq!(popf_result(0, 0x3202 | VIF | VIP, 0, true), FIXED1 | VIF | VIP);
    assert_eq!(popf_result(0, 0x3202, VM | VIF | VIP, true), FIXED1);
    // 16-bit: only the low word; RF and AC (upper word) untouched.
    assert_eq!(popf_result(0, 0x202 | RF | AC, 0x3001, false), RF | AC | 0x3003);
}

#[test]
fn popf_at_cpl3_iopl0_leaves_if_and_iopl_silently() {
    let status = CF | ZF | SF | DF;
    assert_eq!(popf_result(3, 0x202, IOPL | status, true), 0x202 | status);
    assert_eq!(popf_result(3, 0x002, IF | IOPL, true), 0x002);
    assert_eq!(popf_result(3, 0x202, 0, false), 0x202);
    assert_eq!(popf_result(3, 0x002, IF, false), 0x002);
    assert_eq!(popf_result(3, 0x202, 0xffc0_8028, true), 0x202);
}

#[test]
fn popf_at_cpl3_iopl3_changes_if_not_iopl() {
    assert_eq!(popf_result(3, 0x3202, 0, true), 0x3002);
    assert_eq!(popf_result(3, 0x3002, IF, true), 0x3202);
    assert_eq!(popf_result(3, 0x3002, IF | CF, false), 0x3203);
}

#[test]
fn pushf_image() {
    let cpu = run_mem(
        &[],
        |s| s.eflags = 0x202 | RF | CF | AC | ID | IOPL,
        |a| {
            a.pushfd().unwrap();
            a.pushf().unwrap();
        },
    );
    assert_eq!(r32(&cpu, S - 4), 0x203 | AC | ID | IOPL);
    assert_eq!(r16(&cpu, S - 6), (0x203 | IOPL) as u16);
    assert_eq!(cpu.state.gpr[4], S - 6);
}

// ---------------------------------------------------------------- ENTER / LEAVE

#[test]
fn enter_level0_and_leave() {
    let cpu = run_mem(
        &[],
        |s| s.gpr[5] = 0x1234,
        |a| {
            a.enter(16u32, 0u32).unwrap();
            a.mov(esi, esp).unwrap();
            a.mov(edi, ebp).unwrap();
            a.leave().unwrap();
        },
    );
    assert_eq!(r32(&cpu, S - 4), 0x1234);
    assert_eq!(cpu.state.gpr[7], S - 4);
    assert_eq!(cpu.state.gpr[6], S - 4 - 16);
    assert_eq!(cpu.state.gpr[4], S);
    assert_eq!(cpu.state.gpr[5], 0x1234);
}

#[test]
fn enter_level1() {
    let cpu = run_mem(
        &[],
        |s| s.gpr[5] = 0x5555,
        |a| {
            a.enter(8u32, 1u32).unwrap();
        },
    );
    assert_eq!(r32(&cpu, S - 4), 0x5555);
    assert_eq!(r32(&cpu, S - 8), S - 4);
    assert_eq!(cpu.state.gpr[4], S - 16);
    assert_eq!(cpu.state.gpr[5], S - 4);
    // Level 33 is level 1 (mod 32).
    let cpu2 = run_mem(
        &[],
        |s| s.gpr[5] = 0x5555,
        |a| {
            a.db(&[0xc8, 8, 0, 33]).unwrap();
        },
    );
    assert_eq!(cpu2.state.gpr, cpu.state.gpr);
}

#[test]
fn enter_level3_copies_frame_pointers() {
    const F: u32 = 0x7_0000;
    let mem: Vec<u8> = [0xa2u32, 0xa1].iter().flat_map(|v| v.to_le_bytes()).collect();
    let cpu = run_mem(
        &[(F - 8, &mem)],
        |s| s.gpr[5] = F,
        |a| {
            a.enter(4u32, 3u32).unwrap();
        },
    );
    assert_eq!(r32(&cpu, S - 4), F);
    assert_eq!(r32(&cpu, S - 8), 0xa1); // [F-4]
    assert_eq!(r32(&cpu, S - 12), 0xa2); // [F-8]
    assert_eq!(r32(&cpu, S - 16), S - 4); // the new frame pointer
    assert_eq!(cpu.state.gpr[4], S - 20);
    assert_eq!(cpu.state.gpr[5], S - 4);
}

#[test]
fn enter_leave_16bit_operand() {
    const F: u32 = 0x7_0010;
    let cpu = run_mem(
        &[(F - 2, &[0xb1, 0x00])],
        |s| s.gpr[5] = F,
        |a| {
            a.db(&[0x66, 0xc8, 8, 0, 2]).unwrap(); // enter 8, 2 (o16)
            a.mov(esi, esp).unwrap();
            a.mov(edi, ebp).unwrap();
            a.db(&[0x66, 0xc9]).unwrap(); // leave (o16)
        },
    );
    assert_eq!(r16(&cpu, S - 2), F as u16);
    assert_eq!(r16(&cpu, S - 4), 0xb1);
    assert_eq!(r16(&cpu, S - 6), (S - 2) as u16);
    assert_eq!(cpu.state.gpr[6], S - 14);
    assert_eq!(cpu.state.gpr[7], (F & 0xffff_0000) | ((S - 2) & 0xffff));
    assert_eq!(cpu.state.gpr[4], S);
    assert_eq!(cpu.state.gpr[5], F);
}

// ---------------------------------------------------------------- strings

const SRC: u32 = 0x1_0000;
const DST: u32 = 0x1_1000;

#[test]
fn movs_single_and_rep() {
    let cpu = run_mem(
        &[(SRC, b"hello, world")],
        |s| {
            s.gpr[6] = SRC;
            s.gpr[7] = DST;
            s.gpr[1] = 0x77;
        },
        |a| {
            a.movsb().unwrap();
        },
    );
    assert_eq!(r8(&cpu, DST), b'h');
    assert_eq!(r8(&cpu, DST + 1), 0);
    assert_eq!((cpu.state.gpr[6], cpu.state.gpr[7], cpu.state.gpr[1]), (SRC + 1, DST + 1, 0x77));

    let cpu = run_mem(
        &[(SRC, b"hello, world")],
        |s| {
            s.gpr[6] = SRC;
            s.gpr[7] = DST;
            s.gpr[1] = 5;
        },
        |a| {
            a.rep().movsb().unwrap();
            a.mov(ecx, 1).unwrap();
            a.rep().movsw().unwrap();
            a.mov(ecx, 1).unwrap();
            a.rep().movsd().unwrap();
        },
    );
    assert_eq!(&cpu.bus.ram[DST as usize..DST as usize + 12], b"hello, worl\0");
    assert_eq!((cpu.state.gpr[6], cpu.state.gpr[7], cpu.state.gpr[1]), (SRC + 11, DST + 11, 0));
}

#[test]
fn movs_backwards_with_df() {
    let cpu = run_mem(
        &[(SRC, b"abcdefgh")],
        |s| {
            s.gpr[6] = SRC + 7;
            s.gpr[7] = DST + 7;
            s.gpr[1] = 8;
        },
        |a| {
            set_df(a);
            a.rep().movsb().unwrap();
        },
    );
    assert_eq!(&cpu.bus.ram[DST as usize..DST as usize + 8], b"abcdefgh");
    assert_eq!((cpu.state.gpr[6], cpu.state.gpr[7], cpu.state.gpr[1]), (SRC - 1, DST - 1, 0));

    let cpu = run_mem(
        &[(SRC, b"abcdefgh")],
        |s| {
            s.gpr[6] = SRC + 4;
            s.gpr[7] = DST + 4;
            s.gpr[1] = 2;
        },
        |a| {
            set_df(a);
            a.rep().movsd().unwrap();
        },
    );
    assert_eq!(&cpu.bus.ram[DST as usize..DST as usize + 8], b"abcdefgh");
    assert_eq!((cpu.state.gpr[6], cpu.state.gpr[7]), (SRC - 4, DST - 4));
}

#[test]
fn rep_movs_overlapping_follows_element_order() {
    // MOVSB with EDI = ESI + 1 replicates the first byte.
    let cpu = run_mem(
        &[(SRC, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10])],
        |s| {
            s.gpr[6] = SRC;
            s.gpr[7] = SRC + 1;
            s.gpr[1] = 8;
        },
        |a| {
            a.rep().movsb().unwrap();
        },
    );
    assert_eq!(&cpu.bus.ram[SRC as usize..SRC as usize + 10], &[1, 1, 1, 1, 1, 1, 1, 1, 1, 10]);

    // MOVSD with EDI = ESI + 2: a reference element-by-element model.
    let init: Vec<u8> = (1..=40).collect();
    let mut model = init.clone();
    for k in 0..8usize {
        let v: [u8; 4] = model[4 * k..4 * k + 4].try_into().unwrap();
        model[4 * k + 2..4 * k + 6].copy_from_slice(&v);
    }
    let cpu = run_mem(
        &[(SRC, &init)],
        |s| {
            s.gpr[6] = SRC;
            s.gpr[7] = SRC + 2;
            s.gpr[1] = 8;
        },
        |a| {
            a.rep().movsd().unwrap();
        },
    );
    assert_eq!(&cpu.bus.ram[SRC as usize..SRC as usize + 40], &model[..]);
}

#[test]
fn rep_movs_large_crosses_pages_and_resumes() {
    let data: Vec<u8> = (0..20000u32).map(|i| (i * 7 % 251) as u8).collect();
    let cpu = run_mem(
        &[(0x2_0000, &data)],
        |s| {
            s.gpr[6] = 0x2_0001;
            s.gpr[7] = 0x4_0ffd;
            s.gpr[1] = 10000;
        },
        |a| {
            a.rep().movsb().unwrap();
            a.mov(esi, 0x2_0000).unwrap();
            a.mov(edi, 0x6_0002).unwrap();
            a.mov(ecx, 4999).unwrap();
            a.rep().movsd().unwrap();
        },
    );
    assert_eq!(&cpu.bus.ram[0x4_0ffd..0x4_0ffd + 10000], &data[1..10001]);
    assert_eq!(cpu.bus.ram[0x4_0ffd + 10000], 0);
    assert_eq!(&cpu.bus.ram[0x6_0002..0x6_0002 + 19996], &data[..19996]);
    assert_eq!(cpu.bus.ram[0x6_0002 + 19996], 0);
    assert_eq!(cpu.state.gpr[1], 0);
    assert_eq!(cpu.state.gpr[6], 0x2_0000 + 19996);
    assert_eq!(cpu.state.gpr[7], 0x6_0002 + 19996);
    // Several steps for the instructions over 4096 iterations.
    assert!(cpu.icount > 8, "icount {}", cpu.icount);
}

#[test]
fn stos_and_lods() {
    let cpu = run_mem(
        &[],
        |s| {
            s.gpr[0] = 0x1122_33ab;
            s.gpr[7] = 0x1_2345;
            s.gpr[1] = 100;
        },
        |a| {
            a.rep().stosb().unwrap();
            a.mov(edi, 0x2_0002).unwrap();
            a.mov(ecx, 3000).unwrap();
            a.rep().stosd().unwrap();
            a.mov(edi, 0x3_0010).unwrap();
            a.mov(ecx, 3).unwrap();
            set_df(a);
            a.rep().stosw().unwrap();
            clear_df(a);
            a.stosb().unwrap();
        },
    );
    assert_eq!(r8(&cpu, 0x1_2344), 0);
    assert!(cpu.bus.ram[0x1_2345..0x1_2345 + 100].iter().all(|&b| b == 0xab));
    assert_eq!(r8(&cpu, 0x1_2345 + 100), 0);
    assert_eq!(r16(&cpu, 0x2_0000), 0);
    for k in 0..3000 {
        assert_eq!(r32(&cpu, 0x2_0002 + 4 * k), 0x1122_33ab);
    }
    assert_eq!(r16(&cpu, 0x2_0002 + 12000), 0);
    // Backwards: words at 0x30010, 0x3000e, 0x3000c; then STOSB at 0x3000a.
    assert_eq!(r16(&cpu, 0x3_0012), 0);
    for a in [0x3_0010, 0x3_000e, 0x3_000c] {
        assert_eq!(r16(&cpu, a), 0x33ab);
    }
    assert_eq!(r8(&cpu, 0x3_000a), 0xab);
    assert_eq!(r8(&cpu, 0x3_000b), 0);
    assert_eq!(cpu.state.gpr[7], 0x3_000b);

    let cpu = run_mem(
        &[(SRC, &[0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd])],
        |s| {
            s.gpr[0] = 0xffff_ffff;
            s.gpr[6] = SRC;
        },
        |a| {
            a.lodsb().unwrap();
            a.mov(ebx, eax).unwrap();
            a.mov(ecx, 3).unwrap();
            a.rep().lodsd().unwrap();
        },
    );
    assert_eq!(cpu.state.gpr[3], 0xffff_ff11);
    assert_eq!(cpu.state.gpr[0], 0xddcc_bbaa);
    assert_eq!(cpu.state.gpr[6], SRC + 13);
}

#[test]
fn scas() {
    let cpu = run_mem(
        &[(SRC, b"abcdef\0")],
        |s| {
            s.gpr[0] = 0;
            s.gpr[7] = SRC;
            s.gpr[1] = 0xffff_ffff;
        },
        |a| {
            a.repne().scasb().unwrap();
        },
    );
    assert_eq!(cpu.state.gpr[7], SRC + 7);
    assert_eq!(cpu.state.gpr[1], 0xffff_fff8);
    assert_ne!(cpu.state.eflags & ZF, 0);

    let cpu = run_mem(
        &[(SRC, b"aaab")],
        |s| {
            s.gpr[0] = b'a' as u32;
            s.gpr[7] = SRC;
            s.gpr[1] = 10;
        },
        |a| {
            a.repe().scasb().unwrap();
        },
    );
    assert_eq!(cpu.state.gpr[7], SRC + 4);
    assert_eq!(cpu.state.gpr[1], 6);
    // 'a' - 'b' = 0xff: CF SF AF PF.
    assert_eq!(cpu.state.eflags & STATUS, CF | SF | AF | PF);

    let cpu = run_mem(
        &[(SRC, &0x1234_5678u32.to_le_bytes())],
        |s| {
            s.gpr[0] = 0x1234_5678;
            s.gpr[7] = SRC;
        },
        |a| {
            a.scasd().unwrap();
        },
    );
    assert_eq!(cpu.state.eflags & STATUS, ZF | PF);
    assert_eq!(cpu.state.gpr[7], SRC + 4);
}

#[test]
fn cmps() {
    // [ESI] - [EDI]: 1 - 2.
    let cpu = run_mem(
        &[(SRC, &[1]), (DST, &[2])],
        |s| {
            s.gpr[6] = SRC;
            s.gpr[7] = DST;
        },
        |a| {
            a.cmpsb().unwrap();
        },
    );
    assert_eq!(cpu.state.eflags & STATUS, CF | PF | AF | SF);
    assert_eq!((cpu.state.gpr[6], cpu.state.gpr[7]), (SRC + 1, DST + 1));

    // REPE CMPSB stops at the first difference.
    let cpu = run_mem(
        &[(SRC, b"abcdef"), (DST, b"abcXef")],
        |s| {
            s.gpr[6] = SRC;
            s.gpr[7] = DST;
            s.gpr[1] = 6;
        },
        |a| {
            a.repe().cmpsb().unwrap();
        },
    );
    assert_eq!((cpu.state.gpr[6], cpu.state.gpr[7], cpu.state.gpr[1]), (SRC + 4, DST + 4, 2));
    // 'd' - 'X' = 0x0c.
    assert_eq!(cpu.state.eflags & STATUS, AF | PF);

    // Equal strings run to the end with ZF set.
    let cpu = run_mem(
        &[(SRC, b"abcdef"), (DST, b"abcdef")],
        |s| {
            s.gpr[6] = SRC;
            s.gpr[7] = DST;
            s.gpr[1] = 6;
        },
        |a| {
            a.repe().cmpsb().unwrap();
        },
    );
    assert_eq!(cpu.state.gpr[1], 0);
    assert_eq!(cpu.state.eflags & STATUS, ZF | PF);

    // REPNE CMPSD stops at the first equal pair.
    let src: Vec<u8> = [1u32, 2, 3, 4].iter().flat_map(|v| v.to_le_bytes()).collect();
    let dst: Vec<u8> = [9u32, 9, 3, 9].iter().flat_map(|v| v.to_le_bytes()).collect();
    let cpu = run_mem(
        &[(SRC, &src), (DST, &dst)],
        |s| {
            s.gpr[6] = SRC;
            s.gpr[7] = DST;
            s.gpr[1] = 4;
        },
        |a| {
            a.repne().cmpsd().unwrap();
        },
    );
    assert_eq!((cpu.state.gpr[6], cpu.state.gpr[7], cpu.state.gpr[1]), (SRC + 12, DST + 12, 1));
    assert_ne!(cpu.state.eflags & ZF, 0);
}

#[test]
fn rep_single_steps_each_iteration() {
    let (mut cpu, exit) = run_flat(
        0,
        |s| {
            s.eflags |= TF;
            s.gpr[6] = SRC;
            s.gpr[7] = DST;
            s.gpr[1] = 3;
        },
        |a| {
            a.rep().movsb().unwrap();
            a.hlt().unwrap();
        },
    );
    assert_eq!(exit, exc(vector::DB, None, 0, CODE));
    assert_eq!((cpu.state.gpr[1], cpu.state.gpr[6], cpu.state.gpr[7]), (2, SRC + 1, DST + 1));
    assert_eq!(cpu.run(10), exc(vector::DB, None, 0, CODE));
    assert_eq!(cpu.run(10), exc(vector::DB, None, 0, CODE + 2));
    assert_eq!(cpu.state.gpr[1], 0);
}

#[test]
fn rep_with_zero_count_does_nothing() {
    let cpu = run_mem(
        &[(SRC, b"xyz"), (DST, b"abc")],
        |s| {
            s.eflags |= CF;
            s.gpr[6] = SRC;
            s.gpr[7] = DST;
            s.gpr[1] = 0;
        },
        |a| {
            a.rep().movsb().unwrap();
            a.repe().cmpsb().unwrap();
            a.rep().stosd().unwrap();
            a.rep().lodsb().unwrap();
        },
    );
    assert_eq!(&cpu.bus.ram[DST as usize..DST as usize + 3], b"abc");
    assert_eq!((cpu.state.gpr[6], cpu.state.gpr[7], cpu.state.gpr[1], cpu.state.gpr[0]), (SRC, DST, 0, 0));
    assert_eq!(cpu.state.eflags & STATUS, CF);
}

#[test]
fn source_segment_override() {
    let cpu = run_mem(
        &[(0x5100, b"Ffg"), (0x0100, b"Ddh")],
        |s| {
            s.seg[SegReg::Fs as usize].base = 0x5000;
            s.gpr[6] = 0x100;
            s.gpr[7] = DST;
        },
        |a| {
            a.db(&[0x64, 0xa4]).unwrap(); // movsb with FS:ESI
            a.movsb().unwrap(); // DS:ESI+1
            a.db(&[0x64, 0xac]).unwrap(); // lodsb with FS:[ESI]
        },
    );
    assert_eq!(r8(&cpu, DST), b'F');
    assert_eq!(r8(&cpu, DST + 1), b'd');
    assert_eq!(cpu.state.gpr[0] & 0xff, b'g' as u32);
    assert_eq!(cpu.state.gpr[6], 0x103);
}

#[test]
fn sixteen_bit_addressing() {
    let cpu = run_mem(
        &[(0x0800, b"Q"), (0xffff, b"W")],
        |s| {
            s.gpr[6] = 0x1234_0800;
            s.gpr[7] = 0x5678_0900;
            s.gpr[1] = 0x0001_0003;
        },
        |a| {
            a.db(&[0x67, 0xa4]).unwrap(); // movsb with SI, DI
            a.db(&[0x67, 0xf3, 0xa4]).unwrap(); // rep movsb with CX = 3
            a.mov(esi, 0x0003_ffff).unwrap();
            a.db(&[0x67, 0xac]).unwrap(); // lodsb: SI wraps to 0
            a.mov(ebx, esi).unwrap();
            a.mov(edx, eax).unwrap();
            set_df(a);
            a.db(&[0x67, 0xac]).unwrap(); // lodsb at SI 0, SI -> 0xffff
        },
    );
    assert_eq!(r8(&cpu, 0x0900), b'Q');
    assert_eq!(cpu.state.gpr[7], 0x5678_0904);
    assert_eq!(cpu.state.gpr[1], 0x0001_0000);
    assert_eq!(cpu.state.gpr[3], 0x0003_0000);
    assert_eq!(cpu.state.gpr[2] & 0xff, b'W' as u32);
    assert_eq!(cpu.state.gpr[6], 0x0003_ffff);
    assert_eq!(cpu.state.gpr[0] & 0xff, r8(&cpu, 0) as u32);
}

/// A paged SysGuest running `rep` code at KCODE with #PF intercepted.
fn paged_fault(
    dst_pte: u32,
    src: u32,
    dst: u32,
    count: u32,
    f: impl FnOnce(&mut CodeAssembler),
) -> (Cpu<RamBus>, Exit) {
    let mut g = SysGuest::new();
    g.identity_map(pte::RW);
    for k in 0..64u32 {
        g.w8(DATA + k, k as u8 + 1);
    }
    g.set_pte(0x5_0000, dst_pte);
    g.set_pte(0x6_0000, 0);
    g.code(KCODE, f);
    let mut st = g.state(true);
    st.gpr[6] = src;
    st.gpr[7] = dst;
    st.gpr[1] = count;
    sys_run(g, st, 1 << vector::PF)
}

#[test]
fn rep_movsb_faults_on_not_present_page_mid_way() {
    let (mut cpu, exit) = paged_fault(0, DATA, 0x5_0000 - 8, 32, |a| {
        a.rep().movsb().unwrap();
        a.hlt().unwrap();
    });
    assert_eq!(exit, exc(vector::PF, Some(2), 0x5_0000, KCODE));
    assert_eq!((cpu.state.gpr[1], cpu.state.gpr[6], cpu.state.gpr[7]), (24, DATA + 8, 0x5_0000));
    assert_eq!(&cpu.bus.ram[0x4_fff8..0x5_0000], &[1, 2, 3, 4, 5, 6, 7, 8]);
    // Map the page: the instruction resumes where it stopped.
    let pte_addr = PT0 + 4 * (0x5_0000 >> 12);
    cpu.bus.ram[pte_addr as usize..pte_addr as usize + 4].copy_from_slice(&(0x5_0000 | pte::P | pte::RW).to_le_bytes());
    assert_eq!(cpu.run(1000), Exit::Halt);
    assert_eq!(cpu.state.gpr[1], 0);
    let want: Vec<u8> = (1..=32).collect();
    assert_eq!(&cpu.bus.ram[0x4_fff8..0x5_0018], &want[..]);
}

#[test]
fn rep_movsb_faults_on_read_only_page() {
    let (cpu, exit) = paged_fault(0x5_0000 | pte::P, DATA, 0x5_0000 - 3, 10, |a| {
        a.rep().movsb().unwrap();
    });
    assert_eq!(exit, exc(vector::PF, Some(3), 0x5_0000, KCODE));
    assert_eq!((cpu.state.gpr[1], cpu.state.gpr[6], cpu.state.gpr[7]), (7, DATA + 3, 0x5_0000));
}

#[test]
fn rep_movs_faults_on_source_and_on_straddling_element() {
    let (cpu, exit) = paged_fault(0x5_0000 | pte::P | pte::RW, 0x6_0000 - 4, DATA + 0x100, 16, |a| {
        a.rep().movsb().unwrap();
    });
    assert_eq!(exit, exc(vector::PF, Some(0), 0x6_0000, KCODE));
    assert_eq!((cpu.state.gpr[1], cpu.state.gpr[6], cpu.state.gpr[7]), (12, 0x6_0000, DATA + 0x104));

    // A doubleword that straddles into the not-present page: nothing written, no progress.
    let (cpu, exit) = paged_fault(0, DATA, 0x5_0000 - 2, 4, |a| {
        a.rep().movsd().unwrap();
    });
    assert_eq!(exit, exc(vector::PF, Some(2), 0x5_0000, KCODE));
    assert_eq!((cpu.state.gpr[1], cpu.state.gpr[6], cpu.state.gpr[7]), (4, DATA, 0x5_0000 - 2));
    assert_eq!(&cpu.bus.ram[0x4_fffe..0x5_0000], &[0, 0]);

    let (cpu, exit) = paged_fault(0, DATA, 0x5_0000 - 16, 10, |a| {
        a.rep().stosd().unwrap();
    });
    assert_eq!(exit, exc(vector::PF, Some(2), 0x5_0000, KCODE));
    assert_eq!((cpu.state.gpr[1], cpu.state.gpr[7]), (6, 0x5_0000));
}

// ---------------------------------------------------------------- INS / OUTS

#[derive(Default)]
struct IoBus {
    ram: Vec<u8>,
    log: Vec<(char, u16, u8, u32)>,
    next_in: u32,
    exit_port: Option<u16>,
}

impl IoBus {
    fn new() -> IoBus {
        IoBus { ram: vec![0; RAM], ..Default::default() }
    }
}

impl Bus for IoBus {
    fn ram(&mut self) -> &mut [u8] {
        &mut self.ram
    }
    fn io_in(&mut self, port: u16, size: u8) -> u32 {
        self.next_in += 1;
        let v = self.next_in.wrapping_mul(0x0101_0101) & (u32::MAX >> (32 - 8 * size as u32));
        self.log.push(('i', port, size, v));
        v
    }
    fn io_out(&mut self, port: u16, size: u8, value: u32) -> IoAction {
        self.log.push(('o', port, size, value));
        if self.exit_port == Some(port) {
            IoAction::Exit
        } else {
            IoAction::Continue
        }
    }
}

#[test]
fn ins_outs() {
    let (cpu, exit) = run_on(
        IoBus::new(),
        0,
        &[(SRC, b"ABCDEFGH")],
        |s| {
            s.gpr[6] = SRC;
            s.gpr[7] = DST;
            s.gpr[2] = 0x3f8;
            s.gpr[1] = 4;
        },
        |a| {
            a.rep().outsb().unwrap();
            a.outsw().unwrap(); // "EF"
            a.mov(dx, 0x60).unwrap();
            a.mov(ecx, 3).unwrap();
            a.rep().insw().unwrap();
            a.insd().unwrap();
            set_df(a);
            a.insb().unwrap();
            a.hlt().unwrap();
        },
    );
    assert_eq!(exit, Exit::Halt);
    let log = &cpu.bus.log;
    assert_eq!(
        &log[..5],
        &[
            ('o', 0x3f8, 1, b'A' as u32),
            ('o', 0x3f8, 1, b'B' as u32),
            ('o', 0x3f8, 1, b'C' as u32),
            ('o', 0x3f8, 1, b'D' as u32),
            ('o', 0x3f8, 2, 0x4645),
        ]
    );
    assert_eq!(
        &log[5..],
        &[
            ('i', 0x60, 2, 0x0101),
            ('i', 0x60, 2, 0x0202),
            ('i', 0x60, 2, 0x0303),
            ('i', 0x60, 4, 0x0404_0404),
            ('i', 0x60, 1, 0x05)
        ]
    );
    let d = DST as usize;
    assert_eq!(&cpu.bus.ram[d..d + 11], &[1, 1, 2, 2, 3, 3, 4, 4, 4, 4, 5]);
    assert_eq!(cpu.state.gpr[6], SRC + 6);
    assert_eq!(cpu.state.gpr[7], DST + 9);
}

#[test]
fn rep_outs_port_exit_stops_after_the_iteration() {
    let mut bus = IoBus::new();
    bus.exit_port = Some(0xe9);
    let (mut cpu, exit) = run_on(
        bus,
        0,
        &[(SRC, b"xyz")],
        |s| {
            s.gpr[6] = SRC;
            s.gpr[2] = 0xe9;
            s.gpr[1] = 3;
        },
        |a| {
            a.rep().outsb().unwrap();
            a.hlt().unwrap();
        },
    );
    assert_eq!(exit, Exit::PortIo { port: 0xe9, size: 1, value: b'x' as u32 });
    assert_eq!((cpu.state.eip, cpu.state.gpr[1], cpu.state.gpr[6]), (CODE, 2, SRC + 1));
    assert_eq!(cpu.run(100), Exit::PortIo { port: 0xe9, size: 1, value: b'y' as u32 });
    assert_eq!(cpu.state.eip, CODE);
    assert_eq!(cpu.run(100), Exit::PortIo { port: 0xe9, size: 1, value: b'z' as u32 });
    assert_eq!((cpu.state.eip, cpu.state.gpr[1]), (CODE + 2, 0));
    assert_eq!(cpu.run(100), Exit::Halt);
    assert_eq!(cpu.bus.log.len(), 3);
}

#[test]
fn ins_outs_io_permission() {
    // CPL 3 > IOPL 0 and no TSS: #GP(0), even for a REP with a count of 0: the permission
    // check comes before the count (what the host CPU does; found by the differential test).
    let (cpu, exit) = run_on(
        IoBus::new(),
        3,
        &[],
        |s| s.gpr[1] = 0,
        |a| {
            a.rep().outsb().unwrap();
            a.rep().insb().unwrap();
            a.outsb().unwrap();
        },
    );
    assert_eq!(exit, exc(GP, Some(0), 0, CODE));
    assert!(cpu.bus.log.is_empty());
}

// ---------------------------------------------------------------- near JMP / CALL / RET

#[test]
fn near_jmp_call_ret() {
    let f = asm(0x3000, |a| {
        a.inc(ebx).unwrap();
        a.ret().unwrap();
    });
    let g = asm(0x3100, |a| {
        a.mov(ecx, dword_ptr(esp + 4)).unwrap();
        a.mov(edx, dword_ptr(esp + 8)).unwrap();
        a.ret_1(8).unwrap();
    });
    let h = asm(0x3200, |a| {
        a.mov(esi, 1).unwrap();
        a.jmp(0x3300u64).unwrap();
    });
    let k = asm(0x3300, |a| {
        a.mov(edi, 2).unwrap();
        a.mov(dword_ptr(0x2004), 0x3400).unwrap();
        a.jmp(dword_ptr(0x2004)).unwrap();
    });
    let rec = asm(0x3500, |a| {
        a.mov(ebp, dword_ptr(esp)).unwrap();
        a.ret().unwrap();
    });
    let (cpu, exit) = run_on(
        RamBus::new(RAM),
        0,
        &[(0x3000, &f), (0x3100, &g), (0x3200, &h), (0x3300, &k), (0x3400, &[0xf4]), (0x3500, &rec)],
        |_| {},
        |a| {
            a.call(0x3500u64).unwrap(); // 5 bytes
            a.xor(ebx, ebx).unwrap();
            a.mov(eax, 0x3000).unwrap();
            a.call(eax).unwrap();
            a.mov(dword_ptr(0x2000), 0x3000).unwrap();
            a.call(dword_ptr(0x2000)).unwrap();
            a.push(0x11).unwrap();
            a.push(0x22).unwrap();
            a.call(0x3100u64).unwrap();
            a.mov(eax, 0x3200).unwrap();
            a.jmp(eax).unwrap();
        },
    );
    assert_eq!(exit, Exit::Halt);
    assert_eq!(cpu.state.eip, 0x3401);
    assert_eq!(cpu.state.gpr[5], CODE + 5);
    assert_eq!(cpu.state.gpr[3], 2);
    assert_eq!((cpu.state.gpr[1], cpu.state.gpr[2]), (0x22, 0x11));
    assert_eq!(cpu.state.gpr[4], S);
    assert_eq!((cpu.state.gpr[6], cpu.state.gpr[7]), (1, 2));
}

#[test]
fn near_transfers_with_16bit_operand_size() {
    let f = asm(0x3600, |a| {
        a.mov(ebp, esp).unwrap();
        a.xor(ecx, ecx).unwrap();
        a.mov(cx, word_ptr(esp)).unwrap();
        a.db(&[0x66, 0xc3]).unwrap(); // ret (o16): IP = popped word
    });
    let (cpu, exit) = run_on(
        RamBus::new(RAM),
        0,
        &[(0x3600, &f), (0x3700, &[0xf4])],
        |_| {},
        |a| {
            a.mov(eax, 0xabcd_3600u32 as i32).unwrap(); // 5 bytes
            a.db(&[0x66, 0xff, 0xd0]).unwrap(); // call ax: pushes a word, IP = 0x3600
            a.mov(esi, esp).unwrap();
            a.mov(eax, 0xabcd_3700u32 as i32).unwrap();
            a.db(&[0x66, 0xff, 0xe0]).unwrap(); // jmp ax
        },
    );
    assert_eq!(exit, Exit::Halt);
    assert_eq!(cpu.state.gpr[5], S - 2);
    assert_eq!(cpu.state.gpr[1], CODE + 8);
    assert_eq!(cpu.state.gpr[6], S);
    assert_eq!(cpu.state.eip, 0x3701);
}

#[test]
fn jcc() {
    let cpu = run_ok(
        |_| {},
        |a| {
            let mut skip = a.create_label();
            let mut top = a.create_label();
            a.xor(ebx, ebx).unwrap();
            a.mov(ecx, 10).unwrap();
            a.set_label(&mut top).unwrap();
            a.add(ebx, ecx).unwrap();
            a.dec(ecx).unwrap();
            a.jne(top).unwrap();
            a.cmp(ebx, 55).unwrap();
            a.je(skip).unwrap();
            a.mov(ebx, 0).unwrap();
            a.set_label(&mut skip).unwrap();
            a.cmp(ebx, 1).unwrap();
            a.jl(skip).unwrap(); // not taken (55 >= 1)
            a.nop().unwrap();
        },
    );
    assert_eq!(cpu.state.gpr[3], 55);
}

#[test]
fn near_targets_beyond_cs_limit_raise_gp() {
    let limit = |s: &mut CpuState| s.seg[SegReg::Cs as usize].limit = 0x3fff;
    let (cpu, exit) = run_flat(0, limit, |a| {
        a.jmp(0x5000u64).unwrap();
    });
    assert_eq!(exit, exc(GP, Some(0), 0, CODE));
    assert_eq!(cpu.state.gpr[4], S);

    let (cpu, exit) = run_flat(0, limit, |a| {
        a.call(0x4000u64).unwrap();
    });
    assert_eq!(exit, exc(GP, Some(0), 0, CODE));
    assert_eq!(cpu.state.gpr[4], S, "nothing pushed");
    assert_eq!(r32(&cpu, S - 4), 0);

    let (cpu, exit) = run_flat(0, limit, |a| {
        a.push(0x4000).unwrap(); // 5 bytes
        a.ret().unwrap();
    });
    assert_eq!(exit, exc(GP, Some(0), 0, CODE + 5));
    assert_eq!(cpu.state.gpr[4], S - 4);

    // Taken Jcc beyond the limit faults; not taken does not; the last byte is in range.
    let (_, exit) = run_flat(0, limit, |a| {
        a.xor(eax, eax).unwrap(); // ZF = 1, 2 bytes
        a.jne(0x5000u64).unwrap(); // 6 bytes, not taken
        a.jmp(0x3fffu64).unwrap(); // 5 bytes
    });
    // At 0x3fff: zero bytes decode as ADD [EAX], AL, which runs past the limit.
    assert_eq!(exit, exc(GP, Some(0), 0, 0x3fff));
    let (_, exit) = run_flat(0, limit, |a| {
        a.xor(eax, eax).unwrap();
        a.je(0x4000u64).unwrap();
    });
    assert_eq!(exit, exc(GP, Some(0), 0, CODE + 2));
}

#[test]
fn near_target_at_the_limit_is_allowed() {
    let (cpu, exit) = run_on(
        RamBus::new(RAM),
        0,
        &[(0x3fff, &[0xf4])],
        |s| s.seg[SegReg::Cs as usize].limit = 0x3fff,
        |a| {
            a.jmp(0x3fffu64).unwrap();
        },
    );
    assert_eq!(exit, Exit::Halt);
    assert_eq!(cpu.state.eip, 0x4000);
}

// ---------------------------------------------------------------- LOOP / JCXZ

#[test]
fn loop_with_ecx_and_cx() {
    let cpu = run_ok(
        |_| {},
        |a| {
            let mut l = a.create_label();
            a.xor(ebx, ebx).unwrap();
            a.mov(ecx, 0x1_0001).unwrap();
            a.set_label(&mut l).unwrap();
            a.inc(ebx).unwrap();
            a.loop_(l).unwrap();
            // a16 LOOP: CX only.
            a.xor(esi, esi).unwrap();
            a.mov(ecx, 0x5_0003).unwrap();
            a.inc(esi).unwrap(); // 1 byte: the loop target
            a.db(&[0x67, 0xe2, 0xfc]).unwrap(); // loop (CX) back by 4
        },
    );
    assert_eq!(cpu.state.gpr[3], 0x1_0001);
    assert_eq!(cpu.state.gpr[6], 3);
    assert_eq!(cpu.state.gpr[1], 0x5_0000);
}

#[test]
fn loope_loopne() {
    let cpu = run_ok(
        |_| {},
        |a| {
            let mut l1 = a.create_label();
            let mut l2 = a.create_label();
            let mut l3 = a.create_label();
            a.xor(ebx, ebx).unwrap();
            a.mov(ecx, 10).unwrap();
            a.set_label(&mut l1).unwrap();
            a.inc(ebx).unwrap();
            a.cmp(ebx, 3).unwrap();
            a.loopne(l1).unwrap(); // until EBX = 3
            a.mov(esi, ecx).unwrap();
            a.xor(eax, eax).unwrap();
            a.xor(edi, edi).unwrap();
            a.mov(ecx, 5).unwrap();
            a.set_label(&mut l2).unwrap();
            a.inc(edi).unwrap();
            a.test(eax, eax).unwrap(); // ZF = 1
            a.loope(l2).unwrap(); // until ECX = 0
            a.xor(ebp, ebp).unwrap();
            a.mov(edx, 5).unwrap();
            a.mov(ecx, edx).unwrap();
            a.set_label(&mut l3).unwrap();
            a.inc(ebp).unwrap();
            a.cmp(ebp, 0).unwrap(); // ZF = 0
            a.loope(l3).unwrap();
        },
    );
    assert_eq!((cpu.state.gpr[3], cpu.state.gpr[6]), (3, 7));
    assert_eq!(cpu.state.gpr[7], 5);
    assert_eq!((cpu.state.gpr[5], cpu.state.gpr[1]), (1, 4));
}

#[test]
fn jcxz_and_jecxz() {
    let cpu = run_ok(
        |s| s.gpr[1] = 0x1_0000,
        |a| {
            a.db(&[0xe3, 0x01]).unwrap(); // jecxz +1: ECX != 0, not taken
            a.inc(ebx).unwrap();
            a.db(&[0x67, 0xe3, 0x01]).unwrap(); // jcxz +1: CX = 0, taken
            a.inc(esi).unwrap();
            a.xor(ecx, ecx).unwrap();
            a.db(&[0xe3, 0x01]).unwrap(); // taken
            a.inc(edi).unwrap();
        },
    );
    assert_eq!((cpu.state.gpr[3], cpu.state.gpr[6], cpu.state.gpr[7]), (1, 0, 0));
}

// ---------------------------------------------------------------- INT n, INT3, INTO, INT1

#[test]
fn int_n_through_idt_gate() {
    let mut g = SysGuest::new();
    g.set_idt(0x40, HANDLERS, false, 0);
    g.code(HANDLERS, |a| {
        a.mov(ebx, dword_ptr(esp)).unwrap();
        a.mov(ecx, dword_ptr(esp + 4)).unwrap();
        a.mov(edx, dword_ptr(esp + 8)).unwrap();
        a.pushfd().unwrap();
        a.pop(esi).unwrap();
        a.hlt().unwrap();
    });
    g.code(KCODE, |a| {
        a.int(0x40).unwrap();
    });
    let mut st = g.state(false);
    st.eflags = 0x202;
    let (cpu, exit) = sys_run(g, st, 0);
    assert_eq!(exit, Exit::Halt);
    assert_eq!(cpu.state.gpr[3], KCODE + 2);
    assert_eq!(cpu.state.gpr[1], SEL_KCODE as u32);
    assert_eq!(cpu.state.gpr[2], 0x202);
    assert_eq!(cpu.state.gpr[6] & IF, 0, "interrupt gate clears IF");
    assert_eq!(cpu.state.gpr[4], KSTACK_TOP - 12);
}

#[test]
fn int_n_gate_dpl_checked_from_cpl3() {
    let mut g = SysGuest::new();
    g.set_idt(0x40, HANDLERS, false, 0);
    g.code(UCODE, |a| {
        a.int(0x40).unwrap();
    });
    let st = user_state(&g);
    let (cpu, exit) = sys_run(g, st, 1 << GP);
    assert_eq!(exit, exc(GP, Some(0x40 * 8 + 2), 0, UCODE));
    assert_eq!(cpu.state.cpl, 3);

    // With DPL 3 the gate is taken, with a switch to the TSS stack.
    let mut g = SysGuest::new();
    g.set_idt(0x40, HANDLERS, true, 3);
    g.code(HANDLERS, |a| a.hlt().unwrap());
    g.code(UCODE, |a| a.int(0x40).unwrap());
    let st = user_state(&g);
    let (cpu, exit) = sys_run(g, st, 1 << GP);
    assert_eq!(exit, Exit::Halt);
    assert_eq!(cpu.state.cpl, 0);
    assert_eq!(cpu.state.gpr[4], KSTACK_TOP - 20);
    let frame: Vec<u32> = (0..5)
        .map(|k| cpu.bus.ram[(KSTACK_TOP - 20 + 4 * k) as usize..][..4].to_vec())
        .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(frame, vec![UCODE + 2, SEL_UCODE as u32, 0x202, USTACK_TOP, SEL_UDATA as u32]);
}

#[test]
fn int3_and_int1_from_cpl3() {
    // INT3 is a software exception: the gate DPL is checked.
    let mut g = SysGuest::new();
    g.set_idt(3, HANDLERS, false, 0);
    g.code(UCODE, |a| a.int3().unwrap());
    let st = user_state(&g);
    let (_, exit) = sys_run(g, st, 1 << GP);
    assert_eq!(exit, exc(GP, Some(3 * 8 + 2), 0, UCODE));

    // INT1 (ICEBP) is delivered like a hardware exception: no DPL check, trap.
    let mut g = SysGuest::new();
    g.set_idt(1, HANDLERS, false, 0);
    g.code(HANDLERS, |a| a.hlt().unwrap());
    g.code(UCODE, |a| a.int1().unwrap());
    let st = user_state(&g);
    let (cpu, exit) = sys_run(g, st, 1 << GP);
    assert_eq!(exit, Exit::Halt);
    assert_eq!(cpu.state.cpl, 0);
    assert_eq!(r32(&cpu, KSTACK_TOP - 20), UCODE + 1);

    // INT 1 (CD 01) is an INT n: DPL checked.
    let mut g = SysGuest::new();
    g.set_idt(1, HANDLERS, false, 0);
    g.code(UCODE, |a| a.int(1).unwrap());
    let st = user_state(&g);
    let (_, exit) = sys_run(g, st, 1 << GP);
    assert_eq!(exit, exc(GP, Some(8 + 2), 0, UCODE));
}

/// CPL 3 code at UCODE with gates for #DB (DPL 0), #BP and #OF (DPL 3), those vectors
/// intercepted (the gate checks still happen).
fn user_trap(f: impl FnOnce(&mut CodeAssembler)) -> (Cpu<RamBus>, Exit) {
    let mut g = SysGuest::new();
    g.set_idt(1, HANDLERS, false, 0);
    g.set_idt(3, HANDLERS, false, 3);
    g.set_idt(4, HANDLERS, false, 3);
    g.code(UCODE, f);
    let st = user_state(&g);
    sys_run(g, st, (1 << vector::DB) | (1 << vector::BP) | (1 << vector::OF) | (1 << GP))
}

#[test]
fn intercepted_int3_int1_are_traps() {
    let (_, exit) = user_trap(|a| a.int3().unwrap());
    assert_eq!(exit, exc(vector::BP, None, 0, UCODE + 1));
    let (cpu, exit) = user_trap(|a| a.int1().unwrap());
    assert_eq!(exit, exc(vector::DB, None, 0, UCODE + 1));
    assert_eq!(cpu.state.eip, UCODE + 1);
}

#[test]
fn into_with_of_set_and_clear() {
    let (cpu, exit) = user_trap(|a| {
        a.mov(al, 0x7f).unwrap(); // 2 bytes
        a.add(al, 1).unwrap(); // 2 bytes, OF = 1
        a.into().unwrap();
    });
    assert_eq!(exit, exc(vector::OF, None, 0, UCODE + 5));
    assert_eq!(cpu.state.eip, UCODE + 5);
    let (cpu, exit) = user_trap(|a| {
        a.xor(eax, eax).unwrap();
        a.into().unwrap();
        a.hlt().unwrap();
    });
    assert_eq!(exit, exc(GP, Some(0), 0, UCODE + 3), "INTO with OF clear falls through to HLT");
    assert_eq!(cpu.state.cpl, 3);
}

// ---------------------------------------------------------------- BOUND

fn bound_run(index: u32, sixteen: bool) -> Exit {
    let b32: Vec<u8> = [-5i32, 5].iter().flat_map(|v| v.to_le_bytes()).collect();
    let b16: Vec<u8> = [-16i16, 16].iter().flat_map(|v| v.to_le_bytes()).collect();
    let (_, exit) = run_on(
        RamBus::new(RAM),
        0,
        &[(0x2000, &b32), (0x2010, &b16)],
        |s| s.gpr[0] = index,
        |a| {
            if sixteen {
                a.db(&[0x66, 0x62, 0x05, 0x10, 0x20, 0, 0]).unwrap(); // bound ax, [0x2010]
            } else {
                a.db(&[0x62, 0x05, 0x00, 0x20, 0, 0]).unwrap(); // bound eax, [0x2000]
            }
            a.hlt().unwrap();
        },
    );
    exit
}

#[test]
fn bound_signed_bounds() {
    for v in [-5i32, -3, 0, 5] {
        assert_eq!(bound_run(v as u32, false), Exit::Halt, "{v}");
    }
    for v in [6i32, -6, i32::MAX, i32::MIN] {
        assert_eq!(bound_run(v as u32, false), exc(vector::BR, None, 0, CODE), "{v}");
    }
    for v in [0xfff0u32, 0xfff5, 0x10, 0x7fff_0005] {
        assert_eq!(bound_run(v, true), Exit::Halt, "{v:#x}");
    }
    for v in [0x11u32, 0xffef, 0x8000] {
        assert_eq!(bound_run(v, true), exc(vector::BR, None, 0, CODE), "{v:#x}");
    }
}
