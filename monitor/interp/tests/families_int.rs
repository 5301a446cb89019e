//! Shift/rotate, bit, BCD and data-transfer families, checked against values derived from
//! the SDM's definitions (and, where the SDM leaves a flag undefined, against the host
//! behaviour the module docs describe, in tests named `host_*`).
mod common;
use common::*;
use iced_x86::code_asm::*;
use vmm_interp::mmu::pte;
use vmm_interp::state::{attr, cr, flags::*, vector, Segment};
use vmm_interp::{Cpu, CpuState, Exit, RamBus};

const EAX: usize = 0;
const ECX: usize = 1;
const EDX: usize = 2;
const EBX: usize = 3;
const ESI: usize = 6;
const EDI: usize = 7;
const DATA: u32 = 0x2000;
/// Page directory and the page table of the first 4 MiB for `paged` guests.
const PD: u32 = 0x5000;
const PT0: u32 = 0x6000;

fn st(cpu: &Cpu<RamBus>) -> u32 {
    cpu.state.eflags & STATUS
}

fn ram32(cpu: &Cpu<RamBus>, a: u32) -> u32 {
    u32::from_le_bytes(cpu.bus.ram[a as usize..a as usize + 4].try_into().unwrap())
}

fn ram16(cpu: &Cpu<RamBus>, a: u32) -> u16 {
    u16::from_le_bytes(cpu.bus.ram[a as usize..a as usize + 2].try_into().unwrap())
}

/// Flags after `mov eax,5; cmp eax,6` (5 - 6 = FFFFFFFF): CF SF AF PF.
const CMP_5_6: u32 = CF | SF | AF | PF;

// ---------------------------------------------------------------- shifts

#[test]
fn shl_by_one_cl_imm() {
    // 0x81 << 1 = 0x02, CF = old bit 7 = 1, OF = MSB(result) ^ CF = 1.
    let cpu = run_ok(|_| {}, |a| {
        a.mov(eax, 0x81).unwrap();
        a.shl(al, 1).unwrap();
    });
    assert_eq!(cpu.state.gpr[EAX], 0x02);
    assert_eq!(st(&cpu) & !AF, CF | OF);
    // 0x4000_0001 << 1 by CL = 0x8000_0002: CF 0, OF = 1 ^ 0.
    let cpu = run_ok(|_| {}, |a| {
        a.mov(eax, 0x4000_0001).unwrap();
        a.mov(ecx, 0xffff_ff01u32).unwrap(); // only CL counts
        a.shl(eax, cl).unwrap();
    });
    assert_eq!(cpu.state.gpr[EAX], 0x8000_0002);
    assert_eq!(st(&cpu) & !AF, SF | OF);
    // imm8 4: 0x1234 << 4 = 0x2340 (16-bit), CF = bit 12 of 0x1234 = 1.
    let cpu = run_ok(|_| {}, |a| {
        a.mov(eax, 0xaaaa_1234u32).unwrap();
        a.sal(ax, 4).unwrap();
    });
    assert_eq!(cpu.state.gpr[EAX], 0xaaaa_2340);
    assert_eq!(st(&cpu) & (CF | ZF | SF | PF), CF);
}

#[test]
fn shr_sar_count_one() {
    // SHR by 1: OF = MSB of the original operand.
    let cpu = run_ok(|_| {}, |a| {
        a.mov(eax, 0x81).unwrap();
        a.shr(al, 1).unwrap();
    });
    assert_eq!(cpu.state.gpr[EAX], 0x40);
    assert_eq!(st(&cpu) & !AF, CF | OF);
    // SAR by 1: OF = 0, sign kept.
    let cpu = run_ok(|_| {}, |a| {
        a.mov(eax, 0x8001).unwrap();
        a.sar(ax, 1).unwrap();
    });
    assert_eq!(cpu.state.gpr[EAX], 0xc000);
    assert_eq!(st(&cpu) & !AF, CF | SF | PF);
}

#[test]
fn masked_count_zero_changes_nothing() {
    for count in [0u32, 32, 0xe0] {
        let cpu = run_ok(|_| {}, |a| {
            a.mov(ecx, count).unwrap();
            a.mov(ebx, 0x8765_4321u32).unwrap();
            a.mov(dword_ptr(DATA), 0x1357_9bdfu32).unwrap();
            a.mov(eax, 5).unwrap();
            a.cmp(eax, 6).unwrap();
            a.shl(ebx, cl).unwrap();
            a.rcr(bl, cl).unwrap();
            a.rol(dword_ptr(DATA), cl).unwrap();
            a.sar(bx, 32).unwrap();
            a.shld(ebx, eax, cl).unwrap();
            a.shrd(word_ptr(DATA), ax, cl).unwrap();
        });
        assert_eq!(cpu.state.gpr[EBX], 0x8765_4321);
        assert_eq!(ram32(&cpu, DATA), 0x1357_9bdf);
        assert_eq!(st(&cpu), CMP_5_6, "count {count:#x}");
    }
}

#[test]
fn shifts_past_the_operand_size() {
    // The SDM leaves CF undefined for SHL/SHR counts >= the size; the result is defined.
    let cpu = run_ok(|_| {}, |a| {
        a.mov(eax, 0xff).unwrap();
        a.mov(ecx, 9).unwrap();
        a.shl(al, cl).unwrap();
        a.mov(ebx, 0xffff).unwrap();
        a.shr(bx, 17).unwrap();
        a.mov(edx, 0x80).unwrap();
        a.sar(dl, 20).unwrap();
        a.mov(esi, 0x7fff).unwrap();
        a.sar(si, 31).unwrap();
        a.mov(edi, 0xffff_ffffu32).unwrap();
        a.shl(edi, 31).unwrap();
    });
    assert_eq!(cpu.state.gpr[EAX], 0);
    assert_eq!(cpu.state.gpr[EBX], 0);
    assert_eq!(cpu.state.gpr[EDX], 0xff);
    assert_eq!(cpu.state.gpr[ESI], 0);
    assert_eq!(cpu.state.gpr[EDI], 0x8000_0000);
    assert_eq!(cpu.state.eflags & CF, CF); // bit 1 of EDI shifted out last
}

#[test]
fn host_shift_past_size_flags() {
    // Host behaviour (undefined by the SDM): the shift happens on a wide value.
    let cpu = run_ok(|_| {}, |a| {
        a.mov(eax, 0xff).unwrap();
        a.stc().unwrap();
        a.shl(al, 9).unwrap();
    });
    assert_eq!(st(&cpu) & CF, 0);
    let cpu = run_ok(|_| {}, |a| {
        a.mov(eax, 0x80).unwrap();
        a.sar(al, 20).unwrap();
    });
    assert_eq!(cpu.state.gpr[EAX], 0xff);
    assert_eq!(st(&cpu), CF | SF | PF | AF);
}

#[test]
fn rol_ror() {
    // ROL r8 by 8: the value is unchanged but CF = LSB(result) still updates.
    let cpu = run_ok(|_| {}, |a| {
        a.mov(eax, 0x81).unwrap();
        a.clc().unwrap();
        a.rol(al, 8).unwrap();
    });
    assert_eq!(cpu.state.gpr[EAX], 0x81);
    assert_eq!(cpu.state.eflags & CF, CF);
    // ROR 32 by 4: 0x1234_5678 -> 0x8123_4567, CF = MSB = 1.
    let cpu = run_ok(|_| {}, |a| {
        a.mov(eax, 0x1234_5678).unwrap();
        a.ror(eax, 4).unwrap();
    });
    assert_eq!(cpu.state.gpr[EAX], 0x8123_4567);
    assert_eq!(cpu.state.eflags & CF, CF);
    // ROL 16 by 1: 0x8000 -> 0x0001, CF = 1, OF = MSB ^ CF = 1. SF ZF PF unchanged (ZF from XOR).
    let cpu = run_ok(|_| {}, |a| {
        a.xor(ecx, ecx).unwrap();
        a.mov(eax, 0x8000).unwrap();
        a.rol(ax, 1).unwrap();
    });
    assert_eq!(cpu.state.gpr[EAX], 1);
    assert_eq!(st(&cpu), CF | OF | ZF | PF);
    // ROR 8 by 1: 0x01 -> 0x80, CF = 1, OF = bit7 ^ bit6 = 1.
    let cpu = run_ok(|_| {}, |a| {
        a.mov(eax, 1).unwrap();
        a.ror(al, 1).unwrap();
    });
    assert_eq!(cpu.state.gpr[EAX], 0x80);
    assert_eq!(cpu.state.eflags & (CF | OF), CF | OF);
}

/// RCL/RCR reference: rotate the (bits+1)-bit value CF:v by `count` mod (bits+1).
fn rc_ref(left: bool, v: u32, cf: bool, count: u32, bits: u32) -> (u32, bool) {
    let t = if bits == 32 { count & 31 } else { (count & 31) % (bits + 1) };
    let (mut v, mut cf) = (v, cf);
    for _ in 0..t {
        if left {
            let out = v >> (bits - 1) & 1 != 0;
            v = ((v << 1) | cf as u32) & ((1u64 << bits) - 1) as u32;
            cf = out;
        } else {
            let out = v & 1 != 0;
            v = (v >> 1) | ((cf as u32) << (bits - 1));
            cf = out;
        }
    }
    (v, cf)
}

#[test]
fn rcl_rcr_every_size() {
    let v = 0x9a5c_3e71u32;
    for (bits, counts) in [(8u32, &[1u32, 3, 8, 9, 10, 17, 18, 31][..]), (16, &[1, 7, 16, 17, 18, 31]), (32, &[1, 5, 31, 33])] {
        for &count in counts {
            for left in [true, false] {
                for cf in [false, true] {
                    let cpu = run_ok(|_| {}, |a| {
                        a.mov(edx, v).unwrap();
                        a.mov(ecx, count).unwrap();
                        if cf {
                            a.stc().unwrap()
                        } else {
                            a.clc().unwrap()
                        }
                        match (bits, left) {
                            (8, true) => a.rcl(dl, cl).unwrap(),
                            (8, false) => a.rcr(dl, cl).unwrap(),
                            (16, true) => a.rcl(dx, cl).unwrap(),
                            (16, false) => a.rcr(dx, cl).unwrap(),
                            (_, true) => a.rcl(edx, cl).unwrap(),
                            (_, false) => a.rcr(edx, cl).unwrap(),
                        }
                    });
                    let m = if bits == 32 { !0 } else { (1 << bits) - 1 };
                    let (r, rcf) = rc_ref(left, v & m, cf, count, bits);
                    assert_eq!(cpu.state.gpr[EDX], (v & !m) | r, "bits {bits} count {count} left {left} cf {cf}");
                    assert_eq!(cpu.state.eflags & CF != 0, rcf, "CF: bits {bits} count {count} left {left}");
                    if count & 31 == 1 {
                        // OF: RCL MSB(result) ^ CF(after); RCR MSB(dest) ^ CF(before).
                        let msb = |x: u32| x >> (bits - 1) & 1 != 0;
                        let of = if left { msb(r) ^ rcf } else { msb(v & m) ^ cf };
                        assert_eq!(cpu.state.eflags & OF != 0, of, "OF: bits {bits} left {left} cf {cf}");
                    }
                }
            }
        }
    }
}

#[test]
fn rcl_memory_by_imm() {
    let cpu = run_ok(|_| {}, |a| {
        a.mov(word_ptr(DATA), 0x8001u32).unwrap();
        a.stc().unwrap();
        a.rcl(word_ptr(DATA), 2).unwrap();
    });
    // CF:0x8001 = 1_1000_0000_0000_0001 rotated left by 2 -> 0x0007, CF = 0.
    assert_eq!(ram16(&cpu, DATA), 0x0007);
    assert_eq!(cpu.state.eflags & CF, 0);
}

#[test]
fn shld_shrd() {
    let cpu = run_ok(|_| {}, |a| {
        a.mov(eax, 0x1234_5678).unwrap();
        a.mov(ebx, 0x9abc_def0u32).unwrap();
        a.shld(eax, ebx, 8).unwrap();
        a.mov(edx, 0x1234_5678).unwrap();
        a.mov(ecx, 4).unwrap();
        a.shrd(edx, ebx, cl).unwrap();
    });
    assert_eq!(cpu.state.gpr[EAX], 0x3456_789a);
    assert_eq!(cpu.state.gpr[EDX], 0x0123_4567);
    assert_eq!(st(&cpu) & (CF | ZF | SF), CF); // last bit out of EDX: bit 3 of 0x..78 = 1
    // 16-bit, memory destination, count 16: DEST = SRC, CF = bit 0 of DEST (last out).
    let cpu = run_ok(|_| {}, |a| {
        a.mov(word_ptr(DATA), 0x0003u32).unwrap();
        a.mov(ebx, 0xbeef).unwrap();
        a.shld(word_ptr(DATA), bx, 16).unwrap();
    });
    assert_eq!(ram16(&cpu, DATA), 0xbeef);
    assert_eq!(st(&cpu) & (CF | ZF | SF), CF | SF);
    // SHLD by 1: OF = sign change.
    let cpu = run_ok(|_| {}, |a| {
        a.mov(eax, 0x4000).unwrap();
        a.mov(ebx, 0).unwrap();
        a.shld(ax, bx, 1).unwrap();
    });
    assert_eq!(cpu.state.gpr[EAX], 0x8000);
    assert_eq!(st(&cpu) & (CF | OF | SF | ZF), OF | SF);
}

#[test]
fn host_shld_shrd_16_above_16() {
    // Undefined by the SDM; the host shifts DEST:SRC:SRC (SHLD) / SRC:SRC:DEST (SHRD).
    let cpu = run_ok(|_| {}, |a| {
        a.mov(eax, 0xb3b5).unwrap();
        a.mov(ebx, 0x16aa).unwrap();
        a.mov(ecx, 17).unwrap();
        a.shld(ax, bx, cl).unwrap();
        a.mov(edx, 0x5c87).unwrap();
        a.mov(esi, 0x6add).unwrap();
        a.shrd(dx, si, cl).unwrap();
    });
    assert_eq!(cpu.state.gpr[EAX], 0x2d54);
    assert_eq!(cpu.state.gpr[EDX], 0xb56e);
}

// ---------------------------------------------------------------- paging helpers

/// A flat state at `cpl` with paging on (CR0.WP) over an identity map of the first 1 MiB
/// built in RAM, where the page at `DATA` has the PTE flags `data_pte` (P|US|RW by default
/// elsewhere).
fn paged(cpl: u8, data_pte: u32, f: impl FnOnce(&mut CodeAssembler)) -> (Cpu<RamBus>, Exit) {
    let mut a = CodeAssembler::new(32).unwrap();
    f(&mut a);
    let bytes = a.assemble(CODE as u64).unwrap();
    let mut bus = RamBus::new(RAM);
    bus.ram[CODE as usize..CODE as usize + bytes.len()].copy_from_slice(&bytes);
    let w32 = |bus: &mut RamBus, a: u32, v: u32| bus.ram[a as usize..a as usize + 4].copy_from_slice(&v.to_le_bytes());
    w32(&mut bus, PD, PT0 | pte::P | pte::RW | pte::US);
    for e in 0..256u32 {
        w32(&mut bus, PT0 + 4 * e, (e << 12) | pte::P | pte::RW | pte::US);
    }
    w32(&mut bus, PT0 + 4 * (DATA >> 12), DATA | data_pte);
    let mut s = CpuState::flat_protected(cpl);
    s.eip = CODE;
    s.gpr[4] = STACK_TOP;
    s.eflags = 0x202;
    s.cr3 = PD;
    s.cr0 |= cr::CR0_PG | cr::CR0_WP;
    let mut cpu = Cpu::with_state(s, bus);
    cpu.intercept = !0;
    let exit = cpu.run(1000);
    (cpu, exit)
}

const RO: u32 = pte::P | pte::US;

fn assert_pf(exit: &Exit, code: u32, addr: u32) {
    match exit {
        Exit::Exception { vector: v, error_code, cr2: c, .. } => {
            assert_eq!(*v, vector::PF, "{exit:?}");
            assert_eq!(*error_code, Some(code), "{exit:?}");
            assert_eq!(*c, addr);
        }
        _ => panic!("expected #PF, got {exit:?}"),
    }
}

#[test]
fn shift_by_zero_of_read_only_memory_faults_as_write() {
    let (cpu, exit) = paged(3, RO, |a| {
        a.mov(eax, 7).unwrap();
        a.xor(ecx, ecx).unwrap();
        a.shl(dword_ptr(DATA), cl).unwrap();
    });
    assert_pf(&exit, 7, DATA); // P | W | U
    assert_eq!(cpu.state.eip, CODE + 5 + 2);
    // A plain read of the same page is fine.
    let (cpu, exit) = paged(3, RO, |a| {
        a.mov(eax, dword_ptr(DATA)).unwrap();
        a.bt(dword_ptr(DATA), 3).unwrap();
        a.hlt().unwrap();
    });
    assert_eq!(vec_of(&exit), GP, "{exit:?}"); // HLT at CPL 3
    assert_eq!(cpu.state.gpr[EAX], 0);
}

// ---------------------------------------------------------------- bits

#[test]
fn bt_register_and_immediate_offsets() {
    let cpu = run_ok(|_| {}, |a| {
        a.mov(eax, 0x0000_0002).unwrap();
        a.bt(eax, 33).unwrap(); // bit 1
        a.setc(bl).unwrap();
        a.mov(ecx, 0xffff_ffe1u32).unwrap(); // mod 32 = 1
        a.bts(eax, ecx).unwrap(); // already set -> CF 1
        a.setc(bh).unwrap();
        a.mov(edx, 0x8000_0000u32).unwrap();
        a.btc(edx, 31).unwrap();
        a.setc(cl).unwrap();
        a.mov(esi, 0xffff).unwrap();
        a.btr(si, 17).unwrap(); // bit 1 of the 16-bit operand
        a.setc(ch).unwrap();
    });
    assert_eq!(cpu.state.gpr[EBX] & 0xffff, 0x0101);
    assert_eq!(cpu.state.gpr[EAX], 2);
    assert_eq!(cpu.state.gpr[EDX], 0);
    assert_eq!(cpu.state.gpr[ECX] & 0xffff, 0x0101);
    assert_eq!(cpu.state.gpr[ESI], 0xfffd);
}

#[test]
fn bt_flags_other_than_cf() {
    // ZF is unaffected; OF SF AF PF are undefined (the host leaves them unchanged too).
    let cpu = run_ok(|_| {}, |a| {
        a.mov(eax, 5).unwrap();
        a.cmp(eax, 6).unwrap();
        a.bt(eax, 1).unwrap();
    });
    assert_eq!(st(&cpu), CMP_5_6 & !CF);
}

#[test]
fn bt_memory_bit_string() {
    let cpu = run_ok(|_| {}, |a| {
        a.mov(dword_ptr(DATA - 4), 0x8000_0000u32).unwrap();
        a.mov(dword_ptr(DATA), 0).unwrap();
        a.mov(dword_ptr(DATA + 12), 0x10).unwrap();
        // -1: bit 31 of the dword at DATA - 4.
        a.mov(ebx, 0xffff_ffffu32).unwrap();
        a.bt(dword_ptr(DATA), ebx).unwrap();
        a.setc(al).unwrap();
        // 100 = 3 * 32 + 4: bit 4 of the dword at DATA + 12, cleared by BTR.
        a.mov(ecx, 100).unwrap();
        a.btr(dword_ptr(DATA), ecx).unwrap();
        a.setc(ah).unwrap();
        // -33 = -2 * 32 + 31: bit 31 of the dword at DATA - 8, set by BTS.
        a.mov(edx, 0xffff_ffdfu32).unwrap();
        a.mov(esi, DATA).unwrap();
        a.bts(dword_ptr(esi), edx).unwrap();
        // 16-bit: -1 is bit 15 of the word at DATA - 2 (= bit 31 of the dword at DATA - 4).
        a.mov(edi, 0xffff).unwrap();
        a.btc(word_ptr(DATA), di).unwrap();
        a.setc(dl).unwrap();
        // An immediate offset stays within the operand: bit 35 mod 32 = 3 of DATA.
        a.bts(dword_ptr(DATA), 35).unwrap();
    });
    assert_eq!(cpu.state.gpr[EAX] & 0xffff, 0x0101);
    assert_eq!(ram32(&cpu, DATA + 12), 0);
    assert_eq!(ram32(&cpu, DATA - 8), 0x8000_0000);
    assert_eq!(cpu.state.gpr[EDX] & 0xff, 1);
    assert_eq!(ram32(&cpu, DATA - 4), 0);
    assert_eq!(ram32(&cpu, DATA), 8);
}

#[test]
fn bsf_bsr() {
    let cpu = run_ok(|_| {}, |a| {
        a.mov(ebx, 0x0010_0100).unwrap();
        a.bsf(eax, ebx).unwrap();
        a.bsr(ecx, ebx).unwrap();
        a.mov(edx, 0x1234_5678).unwrap();
        a.mov(esi, 0).unwrap();
        a.bsf(edx, esi).unwrap(); // zero: ZF=1, EDX unchanged
    });
    assert_eq!(cpu.state.gpr[EAX], 8);
    assert_eq!(cpu.state.gpr[ECX], 20);
    assert_eq!(cpu.state.gpr[EDX], 0x1234_5678);
    assert_eq!(cpu.state.eflags & ZF, ZF);
    let cpu = run_ok(|_| {}, |a| {
        a.mov(eax, 0xffff_ffffu32).unwrap();
        a.mov(ebx, 0xffff_0000u32).unwrap();
        a.bsr(ax, bx).unwrap(); // 16-bit source 0
        a.setz(cl).unwrap();
        a.mov(word_ptr(DATA), 0x8000u32).unwrap();
        a.bsr(dx, word_ptr(DATA)).unwrap();
        a.bsf(si, word_ptr(DATA)).unwrap();
    });
    assert_eq!(cpu.state.gpr[EAX], 0xffff_ffff);
    assert_eq!(cpu.state.gpr[ECX] & 0xff, 1);
    assert_eq!(cpu.state.gpr[EDX] & 0xffff, 15);
    assert_eq!(cpu.state.gpr[ESI] & 0xffff, 15);
    assert_eq!(cpu.state.eflags & ZF, 0);
}

#[test]
fn bswap() {
    let cpu = run_ok(|_| {}, |a| {
        a.mov(eax, 0x1234_5678).unwrap();
        a.bswap(eax).unwrap();
        a.mov(ebx, 0x1234_5678).unwrap();
        a.db(&[0x66, 0x0f, 0xcb]).unwrap(); // bswap bx (undefined: low word 0)
    });
    assert_eq!(cpu.state.gpr[EAX], 0x7856_3412);
    assert_eq!(cpu.state.gpr[EBX], 0x1234_0000);
}

#[test]
fn setcc() {
    let cpu = run_ok(|_| {}, |a| {
        a.mov(eax, 5).unwrap();
        a.cmp(eax, 6).unwrap(); // 5 < 6: B, L, NE, S
        a.mov(ebx, 0xffff_ffffu32).unwrap();
        a.setb(bl).unwrap();
        a.setl(bh).unwrap();
        a.sete(cl).unwrap();
        a.setg(ch).unwrap();
        a.mov(byte_ptr(DATA), 0x55).unwrap();
        a.setne(byte_ptr(DATA)).unwrap();
        a.seto(byte_ptr(DATA + 1)).unwrap();
        a.setle(dl).unwrap();
        a.seta(dh).unwrap();
        a.setp(al).unwrap();
    });
    assert_eq!(cpu.state.gpr[EBX], 0xffff_0101);
    assert_eq!(cpu.state.gpr[ECX] & 0xffff, 0);
    assert_eq!(cpu.bus.ram[DATA as usize], 1);
    assert_eq!(cpu.bus.ram[DATA as usize + 1], 0);
    assert_eq!(cpu.state.gpr[EDX] & 0xffff, 0x0001);
    assert_eq!(cpu.state.gpr[EAX] & 0xff, 1);
}

// ---------------------------------------------------------------- BCD

#[test]
fn daa_das_sdm_examples() {
    // SDM DAA example: 79h + 35h = AEh; DAA -> 14h, CF=1 AF=1 (OSZAPC = X00111).
    let cpu = run_ok(|_| {}, |a| {
        a.mov(eax, 0x79).unwrap();
        a.mov(ebx, 0x35).unwrap();
        a.add(al, bl).unwrap();
        a.daa().unwrap();
    });
    assert_eq!(cpu.state.gpr[EAX], 0x14);
    assert_eq!(st(&cpu) & !OF, AF | PF | CF);
    // SDM DAS example: 35h - 47h = EEh; DAS -> 88h (OSZAPC = X10111).
    let cpu = run_ok(|_| {}, |a| {
        a.mov(eax, 0x35).unwrap();
        a.mov(ebx, 0x47).unwrap();
        a.sub(al, bl).unwrap();
        a.das().unwrap();
    });
    assert_eq!(cpu.state.gpr[EAX], 0x88);
    assert_eq!(st(&cpu) & !OF, SF | AF | PF | CF);
    // 99 + 1 = 9Ah -> DAA 00h with CF (decimal 100).
    let cpu = run_ok(|_| {}, |a| {
        a.mov(eax, 0x99).unwrap();
        a.add(al, 1).unwrap();
        a.daa().unwrap();
    });
    assert_eq!(cpu.state.gpr[EAX], 0x00);
    assert_eq!(st(&cpu) & !OF, CF | AF | ZF | PF);
    // 10 - 1 = 0Fh with AF -> DAS 09h, no borrow.
    let cpu = run_ok(|_| {}, |a| {
        a.mov(eax, 0x10).unwrap();
        a.sub(al, 1).unwrap();
        a.das().unwrap();
    });
    assert_eq!(cpu.state.gpr[EAX], 0x09);
    assert_eq!(st(&cpu) & !OF, AF | PF);
}

#[test]
fn daa_das_against_decimal_arithmetic() {
    // For every pair of packed-BCD bytes, ADD+DAA and SUB+DAS give the decimal result.
    let bcd = |n: u32| ((n / 10) << 4) | (n % 10);
    let mut pairs = Vec::new();
    for x in (0..100).step_by(7) {
        for y in (0..100).step_by(9) {
            pairs.push((x, y));
        }
    }
    for &(x, y) in &pairs {
        let cpu = run_ok(|_| {}, |a| {
            a.mov(eax, bcd(x)).unwrap();
            a.add(al, bcd(y) as i32).unwrap();
            a.daa().unwrap();
            a.mov(ebx, bcd(x)).unwrap();
            a.sub(bl, bcd(y) as i32).unwrap();
            a.xchg(eax, ebx).unwrap();
            a.das().unwrap();
            a.xchg(eax, ebx).unwrap();
        });
        let sum = x + y;
        assert_eq!(cpu.state.gpr[EAX] & 0xff, bcd(sum % 100), "{x} + {y}");
        let diff = (x + 100 - y) % 100;
        assert_eq!(cpu.state.gpr[EBX] & 0xff, bcd(diff), "{x} - {y}");
        assert_eq!(cpu.state.eflags & CF != 0, x < y, "borrow {x} - {y}");
    }
}

#[test]
fn aaa_aas() {
    // 9 + 8 = 11h (AF) -> AAA: AX = 0107h, CF = AF = 1.
    let cpu = run_ok(|_| {}, |a| {
        a.mov(eax, 0x0009).unwrap();
        a.add(al, 8).unwrap();
        a.aaa().unwrap();
    });
    assert_eq!(cpu.state.gpr[EAX], 0x0107);
    assert_eq!(st(&cpu) & (CF | AF), CF | AF);
    // 5 + 3 = 8 -> no adjustment, AH kept, high nibble of AL cleared.
    let cpu = run_ok(|_| {}, |a| {
        a.mov(eax, 0x0235).unwrap();
        a.add(al, 3).unwrap();
        a.aaa().unwrap();
    });
    assert_eq!(cpu.state.gpr[EAX], 0x0208);
    assert_eq!(st(&cpu) & (CF | AF), 0);
    // AX = 0103h (decimal 13): AL - 5 = FEh (AF) -> AAS: AX = 0008h, CF = AF = 1.
    let cpu = run_ok(|_| {}, |a| {
        a.mov(eax, 0x0103).unwrap();
        a.sub(al, 5).unwrap();
        a.aas().unwrap();
    });
    assert_eq!(cpu.state.gpr[EAX], 0x0008);
    assert_eq!(st(&cpu) & (CF | AF), CF | AF);
    // AL = 0Fh without AF: still adjusted (low nibble > 9): AX = 0009h - 6, AH - 1.
    let cpu = run_ok(|_| {}, |a| {
        a.mov(eax, 0x050f).unwrap();
        a.aas().unwrap();
    });
    assert_eq!(cpu.state.gpr[EAX], 0x0409);
}

#[test]
fn aam_aad() {
    let cpu = run_ok(|_| {}, |a| {
        a.mov(eax, 0xabcd_ff3fu32).unwrap(); // AL = 63
        a.aam(10).unwrap();
        a.mov(ebx, eax).unwrap();
        a.mov(eax, 0x00ff).unwrap();
        a.aam(16).unwrap(); // AH = 0Fh, AL = 0Fh
        a.mov(ecx, eax).unwrap();
        a.mov(eax, 0x0603).unwrap();
        a.aad(10).unwrap(); // 63 = 3Fh
        a.mov(edx, eax).unwrap();
        a.mov(eax, 0x1234_0a0b).unwrap();
        a.aad(16).unwrap(); // A0h + 0Bh = ABh
    });
    assert_eq!(cpu.state.gpr[EBX], 0xabcd_0603);
    assert_eq!(cpu.state.gpr[ECX], 0x0f0f);
    assert_eq!(cpu.state.gpr[EDX], 0x003f);
    assert_eq!(cpu.state.gpr[EAX], 0x1234_00ab);
    assert_eq!(st(&cpu) & (SF | ZF | PF), SF); // ABh: 5 bits set
    // AAM with a zero base: #DE, state restored.
    let (cpu, exit) = run_fault(3, |a| {
        a.mov(eax, 0x3f).unwrap();
        a.aam(0).unwrap();
    });
    assert_eq!(vec_of(&exit), vector::DE);
    assert_eq!(cpu.state.eip, CODE + 5);
    assert_eq!(cpu.state.gpr[EAX], 0x3f);
}

// ---------------------------------------------------------------- data transfer

#[test]
fn movzx_movsx() {
    let cpu = run_ok(|_| {}, |a| {
        a.mov(dword_ptr(DATA), 0x8081_8283u32).unwrap();
        a.mov(eax, 0xffff_ffffu32).unwrap();
        a.mov(ebx, 0xffff_ffffu32).unwrap();
        a.mov(ecx, 0x1111_1111).unwrap();
        a.mov(edx, 0x1111_1111).unwrap();
        a.movzx(eax, byte_ptr(DATA)).unwrap(); // 0x83
        a.movsx(ebx, byte_ptr(DATA)).unwrap(); // 0xffffff83
        a.movzx(cx, byte_ptr(DATA + 1)).unwrap(); // 0x0082 in CX
        a.movsx(dx, byte_ptr(DATA + 1)).unwrap(); // 0xff82 in DX
        a.movzx(esi, word_ptr(DATA + 2)).unwrap(); // 0x8081
        a.movsx(edi, word_ptr(DATA + 2)).unwrap(); // 0xffff8081
    });
    assert_eq!(cpu.state.gpr[EAX], 0x83);
    assert_eq!(cpu.state.gpr[EBX], 0xffff_ff83);
    assert_eq!(cpu.state.gpr[ECX], 0x1111_0082);
    assert_eq!(cpu.state.gpr[EDX], 0x1111_ff82);
    assert_eq!(cpu.state.gpr[ESI], 0x8081);
    assert_eq!(cpu.state.gpr[EDI], 0xffff_8081);
    let cpu = run_ok(|_| {}, |a| {
        a.mov(eax, 0x7f80).unwrap();
        a.movsx(ebx, al).unwrap();
        a.movsx(ecx, ah).unwrap();
        a.movzx(edx, ax).unwrap();
        a.movsx(si, al).unwrap();
    });
    assert_eq!(cpu.state.gpr[EBX], 0xffff_ff80);
    assert_eq!(cpu.state.gpr[ECX], 0x7f);
    assert_eq!(cpu.state.gpr[EDX], 0x7f80);
    assert_eq!(cpu.state.gpr[ESI] & 0xffff, 0xff80);
}

#[test]
fn xchg_forms() {
    let cpu = run_ok(|_| {}, |a| {
        a.mov(eax, 1).unwrap();
        a.mov(ebx, 2).unwrap();
        a.xchg(eax, ebx).unwrap();
        a.mov(ecx, 0x1234).unwrap();
        a.xchg(ch, cl).unwrap();
        a.mov(dword_ptr(DATA), 0xdead_beefu32).unwrap();
        a.mov(edx, 0x0bad_f00d).unwrap();
        a.xchg(dword_ptr(DATA), edx).unwrap();
        a.mov(esi, 0x5566).unwrap();
        a.xchg(word_ptr(DATA + 8), si).unwrap();
    });
    assert_eq!((cpu.state.gpr[EAX], cpu.state.gpr[EBX]), (2, 1));
    assert_eq!(cpu.state.gpr[ECX], 0x3412);
    assert_eq!(cpu.state.gpr[EDX], 0xdead_beef);
    assert_eq!(ram32(&cpu, DATA), 0x0bad_f00d);
    assert_eq!(cpu.state.gpr[ESI], 0);
    assert_eq!(ram16(&cpu, DATA + 8), 0x5566);
    // XCHG with read-only memory is a write: #PF with W, register unchanged.
    let (cpu, exit) = paged(3, RO, |a| {
        a.mov(eax, 7).unwrap();
        a.xchg(dword_ptr(DATA), eax).unwrap();
    });
    assert_pf(&exit, 7, DATA);
    assert_eq!(cpu.state.gpr[EAX], 7);
}

#[test]
fn cmovcc() {
    let cpu = run_ok(|_| {}, |a| {
        a.mov(dword_ptr(DATA), 0x1234_5678).unwrap();
        a.mov(eax, 5).unwrap();
        a.cmp(eax, 6).unwrap();
        a.mov(ebx, 1).unwrap();
        a.mov(ecx, 1).unwrap();
        a.mov(edx, 0xffff_ffffu32).unwrap();
        a.cmovb(ebx, dword_ptr(DATA)).unwrap();
        a.cmovae(ecx, dword_ptr(DATA)).unwrap();
        a.cmovl(dx, word_ptr(DATA)).unwrap();
    });
    assert_eq!(cpu.state.gpr[EBX], 0x1234_5678);
    assert_eq!(cpu.state.gpr[ECX], 1);
    assert_eq!(cpu.state.gpr[EDX], 0xffff_5678);
    // The memory source is read even when the condition is false: a not-present page faults.
    let (cpu, exit) = paged(3, 0, |a| {
        a.mov(eax, 1).unwrap();
        a.cmp(eax, 2).unwrap();
        a.cmove(eax, dword_ptr(DATA + 4)).unwrap();
    });
    assert_pf(&exit, 4, DATA + 4); // not present, read, user
    assert_eq!(cpu.state.gpr[EAX], 1);
    assert_eq!(cpu.bus.ram[cpu.state.eip as usize], 0x0f); // at the CMOVE (0F 44)
}

#[test]
fn lea_sizes() {
    let cpu = run_ok(|_| {}, |a| {
        a.mov(ebx, 0xffff_fff0u32).unwrap();
        a.mov(ecx, 0x10).unwrap();
        a.lea(eax, dword_ptr(ebx + ecx * 4 + 0x1234)).unwrap(); // wraps at 2^32
        a.mov(edx, 0xaaaa_aaaau32).unwrap();
        a.lea(dx, dword_ptr(ebx + 0x20)).unwrap(); // 32-bit address, 16-bit result
        a.mov(esi, 0x5555_5555).unwrap();
        a.lea(esi, dword_ptr(0x1234_5678)).unwrap();
    });
    assert_eq!(cpu.state.gpr[EAX], 0x1264);
    assert_eq!(cpu.state.gpr[EDX], 0xaaaa_0010);
    assert_eq!(cpu.state.gpr[ESI], 0x1234_5678);
    // LEA with a register source (8D C0) is #UD.
    let (_, exit) = run_fault(3, |a| {
        a.db(&[0x8d, 0xc0]).unwrap();
    });
    assert_eq!(vec_of(&exit), vector::UD);
    // 16-bit addressing in 32-bit code (67h): the address wraps at 64 KiB; 32-bit operand
    // size zero-extends it.
    let cpu = run_ok(|_| {}, |a| {
        a.mov(ebx, 0x1234_fff0).unwrap();
        a.mov(esi, 0x20).unwrap();
        a.mov(eax, 0xffff_ffffu32).unwrap();
        a.db(&[0x67, 0x8d, 0x40, 0x05]).unwrap(); // lea eax, [bx+si+5]
    });
    assert_eq!(cpu.state.gpr[EAX], 0x0015);
}

#[test]
fn convert() {
    let cpu = run_ok(|_| {}, |a| {
        a.mov(eax, 0x1234_5680).unwrap();
        a.cbw().unwrap(); // AX = FF80
        a.mov(ebx, eax).unwrap();
        a.cwde().unwrap(); // EAX = FFFFFF80
        a.mov(ecx, eax).unwrap();
        a.mov(edx, 0x1111_1111).unwrap();
        a.cwd().unwrap(); // DX = FFFF
        a.mov(esi, edx).unwrap();
        a.mov(eax, 0x7fff_ffff).unwrap();
        a.cdq().unwrap(); // EDX = 0
    });
    assert_eq!(cpu.state.gpr[EBX], 0x1234_ff80);
    assert_eq!(cpu.state.gpr[ECX], 0xffff_ff80);
    assert_eq!(cpu.state.gpr[ESI], 0x1111_ffff);
    assert_eq!(cpu.state.gpr[EDX], 0);
}

#[test]
fn xlat() {
    let cpu = run_ok(
        |s| s.seg[4].base = 0x1_0000, // FS base
        |a| {
            a.mov(byte_ptr(DATA + 0x80), 0x42).unwrap();
            a.mov(byte_ptr(0x1_0000 + DATA + 0x80), 0x99).unwrap();
            a.mov(ebx, DATA).unwrap();
            a.mov(eax, 0x1234_5680).unwrap(); // AL = 80h is an unsigned index
            a.xlatb().unwrap();
            a.mov(ecx, eax).unwrap();
            a.mov(eax, 0x80).unwrap();
            a.db(&[0x64, 0xd7]).unwrap(); // fs xlatb
        },
    );
    assert_eq!(cpu.state.gpr[ECX], 0x1234_5642);
    assert_eq!(cpu.state.gpr[EAX], 0x99);
}

#[test]
fn cmpxchg_both_outcomes() {
    let cpu = run_ok(|_| {}, |a| {
        a.mov(dword_ptr(DATA), 100).unwrap();
        a.mov(eax, 100).unwrap();
        a.mov(ecx, 200).unwrap();
        a.cmpxchg(dword_ptr(DATA), ecx).unwrap(); // equal: [DATA] = 200, ZF
        a.setz(bl).unwrap();
        a.mov(eax, 7).unwrap();
        a.cmpxchg(dword_ptr(DATA), ecx).unwrap(); // 7 != 200: EAX = 200, flags of 7 - 200
    });
    assert_eq!(ram32(&cpu, DATA), 200);
    assert_eq!(cpu.state.gpr[EBX] & 0xff, 1);
    assert_eq!(cpu.state.gpr[EAX], 200);
    // 7 - 200 = FFFFFF3F: CF SF; AF: 7 < 8 -> borrow from bit 4; PF: 3Fh has 6 ones.
    assert_eq!(st(&cpu), CF | SF | AF | PF);
    // Register forms, 8 and 16 bits.
    let cpu = run_ok(|_| {}, |a| {
        a.mov(eax, 0x1234_5655).unwrap();
        a.mov(edx, 0x55).unwrap();
        a.mov(ecx, 0x77).unwrap();
        a.cmpxchg(dl, cl).unwrap(); // equal: DL = 77h
        a.mov(ebx, 0x1111).unwrap();
        a.cmpxchg(bx, cx).unwrap(); // AX 5655 != 1111: AX = 1111
    });
    assert_eq!(cpu.state.gpr[EDX], 0x77);
    assert_eq!(cpu.state.gpr[EAX], 0x1234_1111);
    assert_eq!(cpu.state.gpr[EBX], 0x1111);
    assert_eq!(cpu.state.eflags & ZF, 0);
}

#[test]
fn cmpxchg_read_only_page_faults_with_w_either_way() {
    for equal in [true, false] {
        let (cpu, exit) = paged(3, RO, |a| {
            a.mov(eax, if equal { 0 } else { 1 }).unwrap();
            a.mov(ecx, 5).unwrap();
            a.cmpxchg(dword_ptr(DATA), ecx).unwrap();
        });
        assert_pf(&exit, 7, DATA);
        assert_eq!(cpu.state.eip, CODE + 10);
        assert_eq!(cpu.state.gpr[EAX], if equal { 0 } else { 1 });
    }
}

#[test]
fn cmpxchg8b() {
    let cpu = run_ok(|_| {}, |a| {
        a.mov(dword_ptr(DATA), 0x1111_1111).unwrap();
        a.mov(dword_ptr(DATA + 4), 0x2222_2222).unwrap();
        a.mov(eax, 0x1111_1111).unwrap();
        a.mov(edx, 0x2222_2222).unwrap();
        a.mov(ebx, 0x3333_3333).unwrap();
        a.mov(ecx, 0x4444_4444).unwrap();
        a.cmpxchg8b(qword_ptr(DATA)).unwrap(); // equal: m64 = ECX:EBX
        a.setz(byte_ptr(DATA + 16)).unwrap();
        a.cmpxchg8b(qword_ptr(DATA)).unwrap(); // not equal now: EDX:EAX = m64
    });
    assert_eq!(ram32(&cpu, DATA), 0x3333_3333);
    assert_eq!(ram32(&cpu, DATA + 4), 0x4444_4444);
    assert_eq!(cpu.bus.ram[DATA as usize + 16], 1);
    assert_eq!(cpu.state.gpr[EAX], 0x3333_3333);
    assert_eq!(cpu.state.gpr[EDX], 0x4444_4444);
    assert_eq!(cpu.state.eflags & ZF, 0);
    // Failing comparison still writes: read-only page faults with W.
    let (_, exit) = paged(3, RO, |a| {
        a.mov(eax, 1).unwrap();
        a.cmpxchg8b(qword_ptr(DATA)).unwrap();
    });
    assert_pf(&exit, 7, DATA);
}

#[test]
fn xadd() {
    let cpu = run_ok(|_| {}, |a| {
        a.mov(dword_ptr(DATA), 0xffff_ffffu32).unwrap();
        a.mov(ecx, 1).unwrap();
        a.xadd(dword_ptr(DATA), ecx).unwrap(); // [DATA] = 0, ECX = FFFFFFFF
    });
    assert_eq!(ram32(&cpu, DATA), 0);
    assert_eq!(cpu.state.gpr[ECX], 0xffff_ffff);
    assert_eq!(st(&cpu), CF | ZF | AF | PF);
    let cpu = run_ok(|_| {}, |a| {
        a.mov(eax, 0x7f).unwrap();
        a.mov(ebx, 0x01).unwrap();
        a.xadd(al, bl).unwrap();
        a.mov(ecx, 3).unwrap();
        a.xadd(ecx, ecx).unwrap(); // SRC = DEST first, then DEST = sum
    });
    assert_eq!(cpu.state.gpr[EAX], 0x80);
    assert_eq!(cpu.state.gpr[EBX], 0x7f);
    assert_eq!(cpu.state.gpr[ECX], 6);
}

#[test]
fn lahf_sahf_flag_ops_salc() {
    let cpu = run_ok(|_| {}, |a| {
        a.mov(eax, 0xff00).unwrap();
        a.sahf().unwrap(); // SF ZF AF PF CF set; OF untouched
        a.mov(eax, 0).unwrap();
        a.lahf().unwrap(); // AH = D7h (bit 1 reads as 1)
    });
    assert_eq!(cpu.state.gpr[EAX], 0xd700);
    assert_eq!(cpu.state.eflags & 0xff, 0xd7);
    assert_eq!(cpu.state.eflags & OF, 0);
    let cpu = run_ok(|_| {}, |a| {
        a.mov(eax, 0).unwrap();
        a.sahf().unwrap();
        a.stc().unwrap();
        a.db(&[0xd6]).unwrap(); // salc: AL = FF
        a.mov(ebx, eax).unwrap();
        a.cmc().unwrap();
        a.salc().unwrap(); // AL = 0
        a.std().unwrap();
        a.mov(ecx, 0).unwrap();
        a.std().unwrap();
        a.cld().unwrap();
        a.std().unwrap();
    });
    assert_eq!(cpu.state.gpr[EBX] & 0xff, 0xff);
    assert_eq!(cpu.state.gpr[EAX] & 0xff, 0);
    assert_eq!(cpu.state.eflags & (CF | DF), DF);
    assert_eq!(cpu.state.eflags & 0x2, 0x2);
    let cpu = run_ok(|_| {}, |a| {
        a.stc().unwrap();
        a.clc().unwrap();
        a.std().unwrap();
        a.cld().unwrap();
    });
    assert_eq!(cpu.state.eflags & (CF | DF), 0);
}

// ---------------------------------------------------------------- 16-bit code

/// Run `f`, assembled as 16-bit code, in a 16-bit protected-mode code segment (CS.D = 0)
/// with flat data segments, until HLT.
fn run16(f: impl FnOnce(&mut CodeAssembler)) -> Cpu<RamBus> {
    let mut a = CodeAssembler::new(16).unwrap();
    f(&mut a);
    a.hlt().unwrap();
    let bytes = a.assemble(CODE as u64).unwrap();
    let mut bus = RamBus::new(RAM);
    bus.ram[CODE as usize..CODE as usize + bytes.len()].copy_from_slice(&bytes);
    let mut s = CpuState::flat_protected(0);
    s.seg[1] = Segment { selector: 0x08, base: 0, limit: 0xffff, attr: attr::P | attr::S | attr::CODE | attr::RW };
    s.eip = CODE;
    s.gpr[4] = 0x8000;
    s.eflags = 0x2;
    let mut cpu = Cpu::with_state(s, bus);
    cpu.intercept = !0;
    let exit = cpu.run(1000);
    assert_eq!(exit, Exit::Halt);
    cpu
}

#[test]
fn sixteen_bit_addressing() {
    let cpu = run16(|a| {
        a.mov(bx, 0xfff0u32).unwrap();
        a.mov(si, 0x20u32).unwrap();
        a.lea(ax, word_ptr(bx + si + 5)).unwrap(); // wraps: 0x0015
        a.mov(ecx, 0xffff_ffffu32).unwrap();
        a.lea(ecx, word_ptr(bx + si + 5)).unwrap(); // zero-extended 16-bit address
        // XLAT uses BX.
        a.mov(byte_ptr(0x2010), 0x5au32).unwrap();
        a.mov(ebx, 0x7777_2000u32).unwrap(); // only BX counts
        a.mov(al, 0x10u32).unwrap();
        a.xlatb().unwrap();
        a.mov(dl, al).unwrap();
        // BT with a negative register offset wraps below 0 to 0xFFFE (the word at DS:FFFE).
        a.mov(word_ptr(0xfffe), 0x8000u32).unwrap();
        a.xor(di, di).unwrap();
        a.mov(bp, 0xffffu32).unwrap();
        a.bt(word_ptr(di), bp).unwrap();
        a.setc(dh).unwrap();
        // Shifts and MOVZX at 16-bit operand size.
        a.mov(si, 0x8001u32).unwrap();
        a.rcr(si, 1).unwrap();
        a.movsx(edi, byte_ptr(0x2010)).unwrap();
    });
    assert_eq!(cpu.state.gpr[EAX] & 0xffff_00ff, 0x5a);
    assert_eq!(cpu.state.gpr[ECX], 0x0015);
    assert_eq!(cpu.state.gpr[EDX] & 0xffff, 0x015a);
    // SI = 0x8001 RCR 1 with CF=1 (from BT): 0xC000, CF = 1.
    assert_eq!(cpu.state.gpr[ESI] & 0xffff, 0xc000);
    assert_eq!(cpu.state.eflags & CF, CF);
    assert_eq!(cpu.state.gpr[EDI], 0x5a);
}

/// `F3 0F BC` / `F3 0F BD` (TZCNT/LZCNT on BMI1/LZCNT CPUs) are BSF/BSR on the P6 model:
/// the prefix is ignored, as on a CPU without those features (Debian's kernel relies on it).
#[test]
fn rep_bsf_and_rep_bsr_are_bsf_and_bsr_on_a_p6() {
    let cpu = run_ok(
        |s| {
            s.gpr[0] = 0x0001_0100;
            s.gpr[1] = 0xdead_beef;
            s.gpr[2] = 0;
            s.gpr[3] = 0x1234_5678;
        },
        |a| {
            a.db(&[0xf3, 0x0f, 0xbc, 0xc8]).unwrap(); // tzcnt ecx, eax = rep bsf ecx, eax
            a.db(&[0xf3, 0x0f, 0xbd, 0xf0]).unwrap(); // lzcnt esi, eax = rep bsr esi, eax
            a.db(&[0xf3, 0x0f, 0xbc, 0xda]).unwrap(); // tzcnt ebx, edx: source 0
        },
    );
    assert_eq!(cpu.state.gpr[1], 8, "BSF of 0x10100");
    assert_eq!(cpu.state.gpr[6], 16, "BSR of 0x10100 (an LZCNT would give 15)");
    assert_eq!(cpu.state.gpr[3], 0x1234_5678, "a zero source leaves the destination");
    assert_ne!(cpu.state.eflags & vmm_interp::state::flags::ZF, 0, "and sets ZF");
}
