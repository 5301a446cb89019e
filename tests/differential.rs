//! The differential test: the host CPU checks the interpreter.
//!
//! Generated instruction sequences (see `common/gen.rs`) run twice from the same start state:
//! natively on the host CPU in compatibility mode at CPL 3 (`vmm_monitor::native`), and on the
//! interpreter at CPL 3 with the same memory layout (paging on, identical protections) and a
//! GDT/IDT mirroring the host's. Registers, EFLAGS, the data pages and the exception raised
//! (vector, error code, CR2, EIP) must agree.
//!
//! EFLAGS are compared with RF masked (the host sets it in the frame of every fault) and with
//! the flags the SDM leaves undefined masked: a data-flow pass over the instructions actually
//! executed (iced-x86's `rflags_undefined`/`rflags_modified`) gives the flags that are
//! undefined at the end. A case in which an instruction *reads* an undefined flag (its result
//! may legitimately differ) is counted as "undefined-dependent" and not compared; the test
//! asserts that such cases stay rare.
//!
//! Every case also runs on a second interpreter through `run` (the block cache): it must end
//! exactly where the single-instruction path (`step`) does (exit, state, memory, count).
//!
//! Case counts: `VMM_DIFF_CASES` (default 100,000 in all, split across the families); the
//! long mode documented in docs/testing.md sets it to millions.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};

use common::gen::*;
use iced_x86::{Decoder, DecoderOptions, Instruction};
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use vmm_interp::mmu::pte;
use vmm_interp::seg::Descriptor;
use vmm_interp::state::{attr, cr, flags, Segment, TableReg};
use vmm_interp::{Cpu, CpuState, Exit, RamBus};
use vmm_monitor::native::{self, NativeCase, NativeOutcome, Prot, Region};

// Guest-physical layout of the interpreter's side.
const PD: u32 = 0x1000;
const PT: u32 = 0x2000;
const GDT: u32 = 0x3000;
const IDT: u32 = 0x4000;
/// Where the GDT and IDT appear in the linear address space: supervisor pages at an address
/// generated cases practically never reach (the host has nothing mapped there either).
const TABLES_LIN: u32 = 0x6b5a_3000;
const PT_TABLES: u32 = 0x5000;
const PHYS_CODE: u32 = 0x10000;
const PHYS_DATA: u32 = 0x14000;
const PHYS_RO: u32 = 0x18000;
const RAM: usize = 0x20000;

/// VMM_DIFF_STRICT=1: compare undefined flags too in every test (the interpreter means to
/// match the host; `everything_strict` always does).
fn strict_env() -> bool {
    std::env::var("VMM_DIFF_STRICT").is_ok_and(|v| v == "1")
}

fn total_cases() -> u64 {
    std::env::var("VMM_DIFF_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

/// The host's GDT as user code sees it (Linux x86-64): the user segments are probed with LAR and
/// LSL natively, the DPL-0 ones (which LAR cannot see from CPL 3) are Linux's constants.
fn host_gdt() -> &'static Vec<(u16, u64)> {
    static G: std::sync::OnceLock<Vec<(u16, u64)>> = std::sync::OnceLock::new();
    G.get_or_init(|| {
        let mut v = vec![
            (0x08, 0x00cf_9b00_0000_ffff), // __KERNEL32_CS
            (0x10, 0x00af_9b00_0000_ffff), // __KERNEL_CS (64-bit)
            (0x18, 0x00cf_9300_0000_ffff), // __KERNEL_DS
            (0x40, 0x0000_8b00_0000_0067), // TSS (busy, 64-bit), as a system descriptor
        ];
        // 0x7b is Linux's CPUNODE segment (its limit encodes the CPU number: only its type
        // and DPL matter to the cases, which load it from random data now and then).
        for sel in [0x23u16, 0x2b, 0x33, 0x7b] {
            let (ar, limit) = probe_lar_lsl(sel);
            // LAR gives bits 8..23 of the descriptor's high dword (type..G); LSL the byte limit.
            let hi = (ar & 0x00f0_ff00) as u64;
            let raw_limit = if ar & (1 << 23) != 0 {
                limit >> 12
            } else {
                limit
            };
            let d = (raw_limit as u64 & 0xffff) | ((raw_limit as u64 >> 16) & 0xf) << 48 | hi << 32;
            v.push((sel, d));
        }
        v
    })
}

fn probe_lar_lsl(sel: u16) -> (u32, u32) {
    use iced_x86::code_asm::*;
    let mut a = CodeAssembler::new(32).unwrap();
    a.mov(ecx, sel as u32).unwrap();
    a.lar(eax, ecx).unwrap();
    a.lsl(edx, ecx).unwrap();
    a.hlt().unwrap();
    let code = a.assemble(CODE as u64).unwrap();
    let mut page = vec![0u8; 0x1000];
    page[..code.len()].copy_from_slice(&code);
    let stop = CODE + code.len() as u32 - 1;
    let out = native::run(&NativeCase {
        regions: vec![Region {
            addr: CODE,
            bytes: page,
            prot: Prot::ReadExec,
        }],
        gpr: [0; 8],
        eflags: 0x202,
        eip: CODE,
        stop_eip: stop,
        timeout_ms: 1000,
    })
    .expect("native LAR/LSL probe");
    assert!(
        out.exception.is_none() && out.eflags & flags::ZF != 0,
        "LAR {sel:#x} failed on the host"
    );
    (out.gpr[0], out.gpr[2])
}

/// The interpreter set up like the native runner's environment for `case`.
fn interp_for(case: &Case, code: &[u8]) -> Cpu<RamBus> {
    let mut bus = RamBus::new(RAM);
    let ram = &mut bus.ram;
    let w32 = |ram: &mut Vec<u8>, a: u32, v: u32| {
        ram[a as usize..a as usize + 4].copy_from_slice(&v.to_le_bytes())
    };
    // Page tables: the 4 MiB region holding the case, user pages with the runner's protections.
    w32(ram, PD + 4 * (CODE >> 22), PT | pte::P | pte::RW | pte::US);
    let map = |ram: &mut Vec<u8>, lin: u32, phys: u32, rw: bool| {
        let e = PT + 4 * ((lin >> 12) & 0x3ff);
        let f = pte::P | pte::US | if rw { pte::RW } else { 0 };
        ram[e as usize..e as usize + 4].copy_from_slice(&(phys | f).to_le_bytes());
    };
    for p in 0..CODE_PAGES {
        map(ram, CODE + p * 0x1000, PHYS_CODE + p * 0x1000, false);
    }
    for p in 0..DATA_PAGES {
        map(ram, DATA + p * 0x1000, PHYS_DATA + p * 0x1000, true);
    }
    map(ram, RO, PHYS_RO, false);
    // GDT and IDT: supervisor pages.
    w32(
        ram,
        PD + 4 * (TABLES_LIN >> 22),
        PT_TABLES | pte::P | pte::RW,
    );
    for (k, phys) in [GDT, IDT].iter().enumerate() {
        let e = PT_TABLES + 4 * (((TABLES_LIN >> 12) + k as u32) & 0x3ff);
        w32(ram, e, phys | pte::P | pte::RW);
    }
    ram[PHYS_CODE as usize..PHYS_CODE as usize + code.len()].copy_from_slice(code);
    let data = case.data();
    ram[PHYS_DATA as usize..PHYS_DATA as usize + data.len()].copy_from_slice(&data);
    let ro = case.ro_data();
    ram[PHYS_RO as usize..PHYS_RO as usize + ro.len()].copy_from_slice(&ro);
    // GDT mirror; IDT with Linux's user-callable gates (3, 4, 0x80) at DPL 3.
    for (sel, d) in host_gdt() {
        let a = GDT + (*sel as u32 & !7);
        ram[a as usize..a as usize + 8].copy_from_slice(&d.to_le_bytes());
    }
    const { assert!(IDT + 0x800 <= PT_TABLES) };
    for v in 0..256u32 {
        let dpl = if v == 3 || v == 4 || v == 0x80 {
            3u64
        } else {
            0
        };
        let gate: u64 = 0x10 << 16 | (0x8e | dpl << 5) << 40;
        let a = IDT + 8 * v;
        ram[a as usize..a as usize + 8].copy_from_slice(&gate.to_le_bytes());
    }

    let mut st = CpuState::flat_protected(3);
    let seg = |sel: u16| -> Segment {
        let d = host_gdt()
            .iter()
            .find(|(s, _)| *s & !7 == sel & !7)
            .unwrap()
            .1;
        let mut s = Descriptor(d).to_segment(sel);
        s.attr |= attr::ACCESSED;
        s
    };
    let ds = seg(0x2b);
    st.seg = [ds, seg(0x23), ds, ds, ds, ds];
    st.gdtr = TableReg {
        base: TABLES_LIN,
        limit: 0x7f,
    };
    st.idtr = TableReg {
        base: TABLES_LIN + 0x1000,
        limit: 0x7ff,
    };
    st.cr0 = cr::CR0_PE | cr::CR0_PG | cr::CR0_WP | cr::CR0_AM | cr::CR0_ET | cr::CR0_NE;
    st.cr3 = PD;
    st.cr4 = cr::CR4_PSE | cr::CR4_PGE | cr::CR4_OSFXSR;
    st.gpr = case.gpr;
    st.eflags = case.eflags;
    st.eip = CODE;
    let mut cpu = Cpu::with_state(st, bus);
    cpu.intercept = !0;
    cpu
}

/// iced-x86's `RflagsBits` as EFLAGS bits.
fn eflags_of(r: u32) -> u32 {
    use iced_x86::RflagsBits as R;
    let map = [
        (R::OF, flags::OF),
        (R::SF, flags::SF),
        (R::ZF, flags::ZF),
        (R::AF, flags::AF),
        (R::CF, flags::CF),
        (R::PF, flags::PF),
        (R::DF, flags::DF),
        (R::IF, flags::IF),
        (R::AC, flags::AC),
    ];
    map.iter()
        .filter(|(i, _)| r & i != 0)
        .fold(0, |a, (_, e)| a | e)
}

#[derive(Default)]
struct Stats {
    compared: AtomicU64,
    undefined_dependent: AtomicU64,
    unencodable: AtomicU64,
    faulted: AtomicU64,
}

fn disasm(code: &[u8]) -> String {
    let mut d = Decoder::with_ip(32, code, CODE as u64, DecoderOptions::NONE);
    let mut out = String::new();
    let mut f = iced_x86::IntelFormatter::new();
    use iced_x86::Formatter;
    let mut i = Instruction::default();
    while d.can_decode() {
        d.decode_out(&mut i);
        let mut s = String::new();
        f.format(&i, &mut s);
        out += &format!("  {:08x}  {s}\n", i.ip());
        if i.code() == iced_x86::Code::Hlt {
            break;
        }
    }
    out
}

/// Run one case both ways and compare. A CMPS that faults differently is run again on the
/// interpreter with the other operand order (`Quirks::cmps_source_first`): the host has been
/// seen to use both, and the SDM does not say.
fn check(case: &Case, stats: &Stats, strict: bool) -> Result<(), TestCaseError> {
    match check_with(case, stats, strict, false) {
        Err(e) if e.to_string().contains("exception: ") && e.to_string().contains("cmps") => {
            check_with(case, stats, strict, true).map_err(|_| e)
        }
        r => r,
    }
}

fn check_with(case: &Case, stats: &Stats, strict: bool, cmps_source_first: bool) -> Result<(), TestCaseError> {
    let Some((code, stop)) = case.encode() else {
        stats.unencodable.fetch_add(1, Ordering::Relaxed);
        if std::env::var("VMM_DIFF_TRACE_UNENCODABLE").is_ok() {
            for g in &case.insns {
                eprintln!("  {:?} {}", g.insn.code(), g.insn);
            }
            eprintln!("--");
        }
        return Ok(());
    };
    let mut code_page = vec![0u8; (CODE_PAGES * 0x1000) as usize];
    code_page[..code.len()].copy_from_slice(&code);
    let ncase = NativeCase {
        regions: vec![
            Region {
                addr: CODE,
                bytes: code_page,
                prot: Prot::ReadExec,
            },
            Region {
                addr: DATA,
                bytes: case.data(),
                prot: Prot::ReadWrite,
            },
            Region {
                addr: RO,
                bytes: case.ro_data(),
                prot: Prot::Read,
            },
            Region {
                addr: NONE,
                bytes: vec![0; 0x1000],
                prot: Prot::None,
            },
        ],
        gpr: case.gpr,
        eflags: case.eflags,
        eip: CODE,
        stop_eip: stop,
        timeout_ms: 2000,
    };
    if std::env::var("VMM_DIFF_TRACE").is_ok() {
        eprintln!(
            "case:\n{}start: gpr {:08x?} eflags {:#x}",
            disasm(&code),
            case.gpr,
            case.eflags
        );
    }
    if std::env::var("VMM_DIFF_DEBUG_SKIP_NATIVE").is_ok() {
        let mut cpu = interp_for(case, &code);
        let e = cpu.run(1_000_000);
        eprintln!("interp only: {e:?}");
        return Ok(());
    }
    let hw = native::run(&ncase).map_err(|e| TestCaseError::fail(format!("native runner: {e}")))?;

    let mut cpu = interp_for(case, &code);
    cpu.quirks.cmps_source_first = cmps_source_first;
    let mut undefined = 0u32;
    let mut dependent = false;
    let mut exit = None;
    for _ in 0..2_000_000 {
        let mut bytes = [0u8; 15];
        let eip = cpu.state.eip;
        let insn = cpu
            .peek_linear(eip, &mut bytes)
            .map(|_| Decoder::with_ip(32, &bytes, eip as u64, DecoderOptions::NONE).decode());
        if let Some(e) = cpu.step() {
            exit = Some(e);
            break;
        }
        if let Some(i) = insn.filter(|_| !strict) {
            if eflags_of(i.rflags_read()) & undefined != 0 {
                dependent = true;
            }
            undefined =
                (undefined & !eflags_of(i.rflags_modified())) | eflags_of(i.rflags_undefined());
        }
    }
    let report = |what: &str| {
        TestCaseError::fail(format!(
            "{what}\ncode:\n{}start: gpr {:08x?} eflags {:#x}\nhost:   gpr {:08x?} eip {:#x} eflags {:#x} exc {:?}\ninterp: gpr {:08x?} eip {:#x} eflags {:#x} exit {:?}",
            disasm(&code),
            case.gpr,
            case.eflags,
            hw.gpr,
            hw.eip,
            hw.eflags,
            hw.exception,
            cpu.state.gpr,
            cpu.state.eip,
            cpu.state.eflags,
            exit
        ))
    };
    // The block cache (`run`) must reproduce the single-instruction path (`step`) exactly.
    let mut blk = interp_for(case, &code);
    blk.quirks.cmps_source_first = cmps_source_first;
    let bexit = blk.run(2_000_000);
    if Some(&bexit).filter(|e| **e != Exit::Budget) != exit.as_ref()
        || blk.state != cpu.state
        || blk.icount != cpu.icount
        || blk.bus.ram != cpu.bus.ram
    {
        return Err(report(&format!(
            "run (block cache) and step disagree: run gpr {:08x?} eip {:#x} eflags {:#x} icount {} exit {bexit:?}, step icount {}",
            blk.state.gpr, blk.state.eip, blk.state.eflags, blk.icount, cpu.icount
        )));
    }
    // The exits.
    let iexc = match &exit {
        Some(Exit::Exception {
            vector,
            error_code,
            cr2,
            eip,
        }) => {
            if *eip == stop && *vector == 13 {
                None
            } else {
                Some((*vector, *error_code, *cr2))
            }
        }
        Some(Exit::Unsupported { .. }) => {
            return Err(report("the interpreter stopped: unsupported"))
        }
        other => return Err(report(&format!("unexpected interpreter exit {other:?}"))),
    };
    match (&hw.exception, iexc) {
        (None, None) => {}
        (Some(h), Some((v, err, cr2))) => {
            if h.vector != v {
                return Err(report("exception: different vectors"));
            }
            if native::has_error_code(v) {
                let mask = if v == 14 { 7 } else { 0xffff };
                if h.error_code & mask != err.unwrap_or(!0) & mask {
                    return Err(report("exception: different error codes"));
                }
            }
            if v == 14 && h.cr2 != cr2 {
                return Err(report("exception: different CR2"));
            }
            stats.faulted.fetch_add(1, Ordering::Relaxed);
        }
        _ => return Err(report("exception: raised by only one of the two")),
    }
    // A case where an instruction read a flag the SDM leaves undefined: the interpreter means
    // to produce the host's values, so compare it in full; if it differs, count it as an
    // allowed divergence instead of a failure (the strict test is where that fails).
    let undefined = if dependent { 0 } else { undefined };
    let diverged = |what: &str| -> Result<(), TestCaseError> {
        if dependent {
            stats.undefined_dependent.fetch_add(1, Ordering::Relaxed);
            Ok(())
        } else {
            Err(report(what))
        }
    };
    if hw.eip != cpu.state.eip {
        return diverged("different EIP");
    }
    if hw.gpr != cpu.state.gpr {
        return diverged("different registers");
    }
    let mask = !(undefined | flags::RF | flags::FIXED1);
    if hw.eflags & mask != cpu.state.eflags & mask {
        return diverged(&format!("different EFLAGS (undefined mask {undefined:#x})"));
    }
    let data = &cpu.bus.ram[PHYS_DATA as usize..(PHYS_DATA + DATA_PAGES * 0x1000) as usize];
    if hw.memory[1] != data {
        let at = hw.memory[1]
            .iter()
            .zip(data)
            .position(|(a, b)| a != b)
            .unwrap();
        return diverged(&format!(
            "different memory at {:#x}: host {:02x} interp {:02x}",
            DATA + at as u32,
            hw.memory[1][at],
            data[at]
        ));
    }
    stats.compared.fetch_add(1, Ordering::Relaxed);
    let _: Option<&NativeOutcome> = None;
    Ok(())
}

fn run_families(name: &str, fams: &'static [Family], share: u64, max_len: usize) {
    run_families_mode(name, fams, share, max_len, strict_env())
}

fn run_families_mode(name: &str, fams: &'static [Family], share: u64, max_len: usize, strict: bool) {
    let cases = (total_cases() * share / 100).max(1) as u32;
    // A fixed seed per family by default, so that CI runs the same cases every time;
    // VMM_DIFF_SEED=<n> (or "random") explores others.
    let seed = match std::env::var("VMM_DIFF_SEED").ok().as_deref() {
        Some("random") => rand::random::<u64>(),
        Some(v) => v.parse().expect("VMM_DIFF_SEED: a number or \"random\""),
        None => 0x766d_6d00,
    } ^ name
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    eprintln!("{name}: seed {seed:#x} (VMM_DIFF_SEED to change)");
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let rng = proptest::test_runner::TestRng::from_seed(
        proptest::test_runner::RngAlgorithm::ChaCha,
        &seed_bytes,
    );
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(config, rng);
    let stats = Stats::default();
    let r = runner.run(&cases_strategy(fams, max_len), |c| check(&c, &stats, strict));
    let (cmp, dep, une, flt) = (
        stats.compared.load(Ordering::Relaxed),
        stats.undefined_dependent.load(Ordering::Relaxed),
        stats.unencodable.load(Ordering::Relaxed),
        stats.faulted.load(Ordering::Relaxed),
    );
    eprintln!("{name}: {cases} cases: {cmp} compared in full ({flt} ended in an exception), {dep} diverged after reading an undefined flag, {une} not encodable");
    if let Err(e) = r {
        panic!("{name}: {e}");
    }
    assert!(
        cmp >= cases as u64 * 8 / 10,
        "{name}: too few cases were compared in full ({cmp} of {cases})"
    );
}

fn cases_strategy(
    fams: &'static [Family],
    max_len: usize,
) -> impl proptest::strategy::Strategy<Value = Case> {
    cases(fams, max_len)
}

// The shares of the total case count add up to 100 (plus 10 for the strict run).

#[test]
fn arith_logic() {
    run_families("arith+logic", &[Family::Arith, Family::Logic], 12, 6);
}

#[test]
fn shift_bit() {
    run_families("shift+bit", &[Family::Shift, Family::Bit], 12, 6);
}

#[test]
fn bcd_data() {
    run_families("bcd+data", &[Family::Bcd, Family::Data], 12, 6);
}

#[test]
fn stack() {
    run_families("stack", &[Family::Stack, Family::Arith], 10, 6);
}

#[test]
fn string() {
    run_families("string", &[Family::String, Family::Data], 10, 5);
}

#[test]
fn control() {
    run_families(
        "control",
        &[Family::Control, Family::Arith, Family::Logic],
        10,
        8,
    );
}

#[test]
fn segment() {
    run_families(
        "segment",
        &[Family::Segment, Family::Data, Family::String],
        8,
        6,
    );
}

#[test]
fn privileged() {
    run_families("privileged", &[Family::Privileged, Family::Arith], 6, 4);
}

#[test]
fn everything_mixed() {
    run_families("mixed", &ALL_FAMILIES, 20, 10);
}

/// Every family with the undefined flags compared too: the interpreter gives them the host's
/// values (docs/interpreter.md).
#[test]
fn everything_strict() {
    run_families_mode("strict", &ALL_FAMILIES, 10, 10, true);
}
