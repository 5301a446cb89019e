//! The translator's correctness statement (ARCHITECTURE.md section 5), property-tested on whole
//! runs: for generated guest kernel code rich in sensitive instructions (CLI/STI, PUSHF/POPF,
//! segment reads and loads, SGDT/SIDT/SLDT/STR/SMSW, CR reads and writes, CLTS, LAR/LSL/VERR/
//! VERW, CPUID, port I/O, GS-relative accesses, calls and returns, exceptions), running it with
//! `--kernel-engine bt` ends in the same guest-visible state as the interpreter: how the run
//! ended, the general registers, EIP, EFLAGS, CPL, the segment registers (selectors and
//! descriptor caches), LDTR, TR, GDTR, IDTR, CR0/CR2/CR3/CR4, DR0-DR7 and the whole of guest
//! RAM (an exception's frame, with its EIP, is on the stack; the handler ends the run).

use std::time::Duration;

use iced_x86::code_asm::*;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use vmm_interp::state::{attr, Segment};
use vmm_interp::{CpuState, TableReg};
use vmm_monitor::devices::HostClock;
use vmm_monitor::engine::{self, EngineKind, RunOptions, RunResult, Session};
use vmm_monitor::machine::Machine;
use vmm_monitor::memory::GuestRam;

const GDT: u32 = 0x1000;
const IDT: u32 = 0x2000;
const KSTACK: u32 = 0x9000;
const CODE: u32 = 0x1_0000;
const HANDLER: u32 = 0x1_8000;
const DATA: u32 = 0x2_0000;
const RAM: usize = 1 << 20;
/// With paging on: the page directory and the one page table (identity, 4 MiB).
const PD: u32 = 0x4000;
const PT: u32 = 0x5000;
/// A page that is not present with paging on.
const HOLE: u32 = 0x7000;

const fn desc(base: u32, limit: u32, access: u8, flags: u8) -> u64 {
    (limit as u64 & 0xffff)
        | ((base as u64 & 0xff_ffff) << 16)
        | ((access as u64) << 40)
        | (((limit as u64 >> 16) & 0xf) << 48)
        | ((flags as u64 & 0xf) << 52)
        | (((base as u64) >> 24) << 56)
}

const REGS: [AsmRegister32; 6] = [eax, ecx, edx, ebx, esi, edi];
const REGS16: [AsmRegister16; 6] = [ax, cx, dx, bx, si, di];
const SELS: [u32; 6] = [0x08, 0x10, 0x1b, 0x23, 0x28, 0x30];
/// The guest's LDT (three entries) and its selector in the GDT.
const LDT: u32 = 0x6000;
const LDT_SEL: u32 = 0x38;
/// A second GDT (LGDT switches to it) and the LGDT operands of both tables.
const GDT2: u32 = 0x1800;
const GDTRS: u32 = 0x1f00;
/// Selectors the data-segment loads use: null (two RPLs), readable code, data, data with RPL 3
/// over DPL 0 (#GP), ring-3 code and data, TSS (#GP), a 4 KiB data segment, not present
/// (#NP), a small 16-bit data segment, the spare entry the descriptor writes change, beyond
/// the GDT (#GP), the LDT's entries (flat, not present, 4 KiB), beyond the LDT, the LDT's
/// own descriptor (a system segment: #GP).
const LOAD_SELS: [u32; 18] = [0x00, 0x03, 0x08, 0x10, 0x13, 0x1b, 0x23, 0x28, 0x30, 0x40, 0x48, 0x50, 0x58, 0x04, 0x0c, 0x14, 0x1c, LDT_SEL];
/// Descriptors the descriptor-write steps store: flat data (accessed or not), a 4 KiB data
/// segment, not present, DPL 3, readable code, execute-only code (#GP when loaded).
const NEW_DESCS: [u64; 7] = [
    desc(0, 0xfffff, 0x92, 0xc),
    desc(0, 0xfffff, 0x93, 0xc),
    desc(DATA, 0xfff, 0x93, 0x4),
    desc(0, 0xfffff, 0x12, 0xc),
    desc(0, 0xfffff, 0xf3, 0xc),
    desc(0, 0xfffff, 0x9b, 0xc),
    desc(0, 0xfffff, 0x98, 0xc),
];
/// The descriptor slots the writes change: GDT entries 9 and 10, LDT entries 0 and 2.
const WRITTEN_SLOTS: [u32; 4] = [GDT + 0x48, GDT + 0x50, LDT, LDT + 0x10];

fn data_sreg(n: u32) -> AsmRegisterSegment {
    [ds, es, fs][(n % 3) as usize]
}

/// One generated step: a kind and two random words.
type Step = (u8, u32, u32);

fn emit(a: &mut CodeAssembler, (k, x, y): Step) -> Result<(), IcedError> {
    let r = REGS[(x % 6) as usize];
    let r2 = REGS[(y % 6) as usize];
    let mem = DATA + (y % 64) * 4;
    match k % 51 {
        0 => a.add(r, y as i32),
        1 => a.xor(r, r2),
        2 => a.imul_2(r, r2),
        3 => a.mov(dword_ptr(mem), r),
        4 => a.mov(r, dword_ptr(mem)),
        5 => {
            a.push(r)?;
            a.pop(r2)
        }
        6 => a.cli(),
        7 => a.sti(),
        8 => {
            a.pushfd()?;
            a.pop(r)
        }
        9 => {
            // POPF of a random image (TF included; VM, VIF, VIP, RF excluded).
            a.push(((y & 0x0024_7fd5) | 2) as i32)?;
            a.popfd()
        }
        10 => {
            a.pushfd()?;
            a.cli()?;
            a.popfd()
        }
        11 => a.mov(r, cs),
        12 => a.mov(r, ss),
        13 => {
            a.push(ds)?;
            a.pop(r)
        }
        14 => {
            // A segment load: valid, null, ring-3 data (a #GP at CPL 0 for SS only), TSS (#GP).
            a.mov(eax, SELS[(y % 6) as usize])?;
            if x % 2 == 0 {
                a.mov(es, ax)
            } else {
                a.mov(fs, ax)
            }
        }
        15 => a.sgdt(ptr(mem)),
        16 => a.sidt(ptr(mem)),
        17 => a.smsw(r),
        18 => a.str(r),
        19 => a.sldt(r),
        20 => a.mov(r, cr0),
        21 => {
            a.mov(eax, cr0)?;
            a.xor(eax, 8)?; // toggles CR0.TS
            a.mov(cr0, eax)
        }
        22 => a.clts(),
        23 => {
            a.mov(r2, SELS[(x % 6) as usize])?;
            match y % 4 {
                0 => a.lar(r, r2),
                1 => a.lsl(r, r2),
                2 => a.verr(ax),
                _ => a.verw(ax),
            }
        }
        24 => {
            a.mov(eax, y % 2)?;
            a.cpuid()
        }
        25 => {
            // Port I/O of every size, imm8 and DX forms: an OUT of EAX, then an IN (often of the
            // same port: it reads back what a device kept). The ports: with no device and the
            // delay port 0xed (null: `bt` does them inline), the POST code 0x80 and COM1's
            // scratch register 0x3ff (they keep what is written), and accesses that straddle
            // from a null port into one of those (0x7d-0x7f, 0x3fe) or wrap past 0xffff; the
            // INs also read the PIC's mask (0x21) and into COM1's receiver (0x3f6, 0x3f7).
            const OUT_PORTS: [u16; 10] = [0xe0, 0xed, 0x7d, 0x7e, 0x7f, 0x80, 0x3fe, 0x3ff, 0xfffe, 0xffff];
            const IN_PORTS: [u16; 3] = [0x21, 0x3f6, 0x3f7];
            let out_size = [1u32, 2, 4][(x % 3) as usize];
            let in_size = [1u32, 2, 4][((x / 3) % 3) as usize];
            // Bit fields of y: 0-3 the OUT's port, 4-5 which port the IN reads, 8-11 that
            // port, 12 and 13 the OUT's and the IN's form (imm8 where the port allows).
            let p_out = OUT_PORTS[(y & 15) as usize % 10];
            let sub = ((y >> 8) & 15) as usize;
            let p_in = match (y >> 4) % 4 {
                0 | 1 => p_out,
                2 => IN_PORTS[sub % 3],
                _ => OUT_PORTS[sub % 10],
            };
            let imm = |p: u16, bit: u32| p < 0x100 && (y >> bit) & 1 == 0;
            if imm(p_out, 12) {
                match out_size {
                    1 => a.out(p_out as u32, al)?,
                    2 => a.out(p_out as u32, ax)?,
                    _ => a.out(p_out as u32, eax)?,
                }
            } else {
                a.mov(dx, p_out as u32)?;
                match out_size {
                    1 => a.out(dx, al)?,
                    2 => a.out(dx, ax)?,
                    _ => a.out(dx, eax)?,
                }
            }
            if imm(p_in, 13) {
                match in_size {
                    1 => a.in_(al, p_in as u32),
                    2 => a.in_(ax, p_in as u32),
                    _ => a.in_(eax, p_in as u32),
                }
            } else {
                a.mov(dx, p_in as u32)?;
                match in_size {
                    1 => a.in_(al, dx),
                    2 => a.in_(ax, dx),
                    _ => a.in_(eax, dx),
                }
            }
        }
        26 => {
            a.mov(eax, 0x10u32)?;
            a.mov(gs, ax)?;
            a.mov(r2, dword_ptr(mem).gs())
        }
        27 => {
            let mut sub = a.create_label();
            let mut over = a.create_label();
            a.call(sub)?;
            a.jmp(over)?;
            a.set_label(&mut sub)?;
            a.add(r, 3)?;
            a.ret()?;
            a.set_label(&mut over)?;
            a.nop()
        }
        28 => {
            let mut skip = a.create_label();
            a.test(r, r2)?;
            a.jnz(skip)?;
            a.inc(r)?;
            a.set_label(&mut skip)?;
            a.nop()
        }
        29 => {
            // A division that may fault (#DE through the guest's IDT).
            a.mov(r2, y & 3)?;
            a.xor(edx, edx)?;
            a.mov(eax, x)?;
            a.div(r2)
        }
        30 => a.mov(r, cr3),
        31 => a.lea(r, dword_ptr(r2 + (y & 0xff))),
        32 => {
            // FS = a 4 KiB data segment: a read that may cross its limit (#GP inside the
            // translated code: the host's shadow is truncated the same way).
            a.mov(eax, 0x30u32)?;
            a.mov(fs, ax)?;
            a.mov(r2, dword_ptr(0xff8 + (y % 8)).fs())
        }
        33 => {
            // Around the end of guest RAM (1 MiB): reads of memory that is not RAM.
            a.mov(r, dword_ptr(RAM as u32 - 4 + (y % 8)))
        }
        // The hole (a #PF with paging on, inside IDENT and inline sequences).
        34 => a.mov(r, dword_ptr(HOLE + (y % 16) * 4)),
        35 => match y % 3 {
            0 => a.sgdt(ptr(HOLE + 0xffe - (x % 8))),
            1 => a.mov(word_ptr(HOLE + (x % 64)), cs),
            _ => a.str(word_ptr(HOLE - 1)),
        },
        36 => {
            // PUSHF with the stack at the hole's edge (#PF, then #DF: the handler's own pushes
            // fault too; a triple fault).
            a.mov(esp, HOLE + 0x1000 + (y % 3) * 4)?;
            a.pushfd()
        }
        37 => {
            // CALL (pushes the guest return address) or PUSH DS at the hole's edge.
            let mut sub = a.create_label();
            let mut over = a.create_label();
            a.mov(esp, HOLE + 0x1000 + (y % 2) * 4)?;
            if x % 2 == 0 {
                a.push(ds)?;
            } else {
                a.call(sub)?;
            }
            a.jmp(over)?;
            a.set_label(&mut sub)?;
            a.ret()?;
            a.set_label(&mut over)?;
            a.nop()
        }
        38 => {
            // An indirect jump (lookup table): `call n; n: pop r; lea r, [r+7]; jmp r; int3`.
            let mut n = a.create_label();
            a.call(n)?;
            a.set_label(&mut n)?;
            a.pop(r)?; // 1 byte
            a.lea(r, dword_ptr(r + 7))?; // 3 bytes
            a.jmp(r)?; // 2 bytes
            a.int3()?; // 1 byte
            a.nop()
        }
        39 => {
            // POPF from the hole (read #PF).
            a.mov(esp, HOLE + 0xffc + (y % 2) * 4)?;
            a.popfd()
        }
        40 => {
            // IRET to the next instruction at CPL 0 (emulated), with a random flags image.
            let mut n = a.create_label();
            a.push(((y & 0x0024_7ed5) | 2) as i32)?;
            a.push(0x08)?;
            a.call(n)?;
            a.set_label(&mut n)?;
            a.pop(r)?; // 1 byte
            a.lea(r, dword_ptr(r + 6))?; // 3 bytes
            a.push(r)?; // 1 byte
            a.iretd()?; // 1 byte
            a.nop()
        }
        41 => a.int3(),
        42 => {
            a.xchg(dword_ptr(mem), r)?;
            a.cmpxchg(dword_ptr(mem), r2)
        }
        43 => {
            // Data-segment loads from a register: the same selector twice (the second one
            // inline once the first has filled the selector table).
            let r16 = REGS16[(x % 6) as usize];
            a.mov(REGS[(x % 6) as usize], LOAD_SELS[(y % 18) as usize])?;
            a.mov(data_sreg(y >> 8), r16)?;
            a.mov(data_sreg(y >> 12), r16)
        }
        44 => {
            // POP of a data segment register (32-bit; 16-bit: `push word imm8; pop ds`).
            let sel = LOAD_SELS[(y % 18) as usize];
            if x % 4 == 0 {
                a.db(&[0x66, 0x6a, sel as u8])?;
                a.db(match (y >> 8) % 3 {
                    0 => &[0x66, 0x1f],
                    1 => &[0x66, 0x07],
                    _ => &[0x66, 0x0f, 0xa1],
                })
            } else {
                a.push(sel as i32)?;
                a.pop(data_sreg(y >> 8))
            }
        }
        45 => {
            // A load from memory.
            a.mov(dword_ptr(mem), LOAD_SELS[(x % 18) as usize])?;
            a.mov(data_sreg(y >> 8), word_ptr(mem))
        }
        46 => {
            // A descriptor write (GDT or LDT entry; one or both halves).
            let slot = WRITTEN_SLOTS[(x % 4) as usize];
            let d = NEW_DESCS[(y % 7) as usize];
            if (x >> 8) % 3 != 1 {
                a.mov(dword_ptr(slot + 4), (d >> 32) as u32)?;
            }
            if (x >> 8) % 3 != 0 {
                a.mov(dword_ptr(slot), d as u32)?;
            }
            a.nop()
        }
        47 => a.lgdt(fword_ptr(GDTRS + 8 * (y % 2))),
        48 => {
            a.mov(eax, if y % 3 == 0 { 0 } else { LDT_SEL })?;
            a.lldt(ax)
        }
        49 => {
            // A read through a loaded data segment (its base and limit).
            let at = (y % 16) * 4;
            match x % 3 {
                0 => a.mov(r2, dword_ptr(at).ds()),
                1 => a.mov(r2, dword_ptr(at).es()),
                _ => a.mov(r2, dword_ptr(at).fs()),
            }
        }
        _ => {
            // VERR/VERW of the load selectors (ZF into a register), from a register or memory.
            let sel = LOAD_SELS[(y % 18) as usize];
            a.mov(r, sel)?;
            let r16 = REGS16[(x % 6) as usize];
            match (y >> 8) % 4 {
                0 => a.verr(r16)?,
                1 => a.verw(r16)?,
                2 => {
                    a.mov(dword_ptr(mem), r)?;
                    a.verw(word_ptr(mem))?
                }
                _ if x % 2 == 0 => {
                    // A `cs:` operand (as Linux's `verw %cs:mds_verw_sel`).
                    a.mov(dword_ptr(mem), r)?;
                    a.verr(word_ptr(mem).cs())?
                }
                _ => {
                    // ... in the hole (a #PF with paging on, while ES holds the CS shadow).
                    a.verw(word_ptr(HOLE + (y % 16) * 2).cs())?
                }
            }
            a.setz(al)
        }
    }
}

fn guest(steps: &[Step]) -> (Machine, CpuState) {
    guest_with(steps, false)
}

fn guest_with(steps: &[Step], paging: bool) -> (Machine, CpuState) {
    let (ram, s) = image(steps, paging);
    (machine(ram), s)
}

fn machine(ram: Vec<u8>) -> Machine {
    Machine::new(GuestRam::Heap(ram), Box::new(HostClock::new()), Box::new(std::io::sink()))
}

/// IDT gates (all to the handler): the exceptions and the pending interrupt's vector.
const IDT_GATES: u32 = 0x30;
/// The IRQ (master PIC, no device on it) that is pending from the start in cases with `irq`.
const IRQ: u8 = 5;

/// The machine, with `irq`: the PIC initialised (vectors 0x20-0x27, only [`IRQ`] unmasked)
/// and IRQ 5 requested, so that an interrupt is pending from the first instruction on. The
/// guest starts with IF clear: the interrupt comes exactly where IF becomes 1 (after the
/// instruction following STI, after POPF or IRET), which under `bt` only the pending-interrupt
/// checks find.
fn machine_with(ram: Vec<u8>, irq: bool) -> Machine {
    let mut m = machine(ram);
    if irq {
        for (port, v) in [(0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01), (0x21, !(1u8 << IRQ))] {
            m.pic.write(port, v);
        }
        m.pic.set_irq(IRQ, true);
    }
    m
}

/// The generated code: the steps, then `out 0xf4, 0` (the debug exit) and HLT.
fn code(steps: &[Step]) -> Vec<u8> {
    let mut a = CodeAssembler::new(32).unwrap();
    for s in steps {
        emit(&mut a, *s).unwrap();
    }
    a.mov(al, 0u32).unwrap();
    a.out(0xf4, al).unwrap();
    a.hlt().unwrap();
    a.assemble(CODE as u64).unwrap()
}

/// The generated code as text (for a failing case's report).
fn disassembly(steps: &[Step]) -> String {
    listing(&code(steps))
}

/// Code at CODE as text, an instruction per line.
fn listing(bytes: &[u8]) -> String {
    use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};
    let mut d = Decoder::with_ip(32, bytes, CODE as u64, DecoderOptions::NONE);
    let mut f = IntelFormatter::new();
    let mut out = String::new();
    for insn in &mut d {
        let mut text = String::new();
        f.format(&insn, &mut text);
        out += &format!("  {:08x}  {text}\n", insn.ip());
    }
    out
}

/// Guest RAM (descriptor tables, handler, data, the code of `steps`, page tables if `paging`)
/// and the CPU state at the first step.
fn image(steps: &[Step], paging: bool) -> (Vec<u8>, CpuState) {
    let mut ram = GuestRam::heap(RAM);
    let gdt = [
        0u64,
        desc(0, 0xfffff, 0x9a, 0xc),
        desc(0, 0xfffff, 0x92, 0xc),
        desc(0, 0xfffff, 0xfa, 0xc),
        desc(0, 0xfffff, 0xf2, 0xc),
        desc(0x3000, 0x67, 0x89, 0),
        desc(DATA, 0xfff, 0x92, 0x4),
        desc(LDT, 0x17, 0x82, 0),
        desc(0, 0xfffff, 0x12, 0xc),
        desc(DATA + 0x100, 0xff, 0x92, 0),
        desc(0, 0xfffff, 0x92, 0xc),
    ];
    for (i, d) in gdt.iter().enumerate() {
        ram.write((GDT + 8 * i as u32) as u64, &d.to_le_bytes()).unwrap();
        // The second GDT: the same but for the last two entries.
        let d2 = if i >= 9 { desc(DATA + 0x40 * i as u32, 0xfff, 0x93, 0x4) } else { *d };
        ram.write((GDT2 + 8 * i as u32) as u64, &d2.to_le_bytes()).unwrap();
    }
    let limit = (gdt.len() * 8 - 1) as u16;
    for (k, base) in [GDT, GDT2].into_iter().enumerate() {
        ram.write((GDTRS + 8 * k as u32) as u64, &limit.to_le_bytes()).unwrap();
        ram.write_u32((GDTRS + 8 * k as u32 + 2) as u64, base).unwrap();
    }
    for (i, d) in [desc(0, 0xfffff, 0x92, 0xc), desc(0, 0xfffff, 0x12, 0xc), desc(DATA, 0xfff, 0x92, 0x4)].iter().enumerate() {
        ram.write((LDT + 8 * i as u32) as u64, &d.to_le_bytes()).unwrap();
    }
    for v in 0..IDT_GATES {
        let lo = (0x08u32 << 16) | (HANDLER & 0xffff);
        let hi = (HANDLER & 0xffff_0000) | 0x8e00;
        ram.write_u32((IDT + v * 8) as u64, lo).unwrap();
        ram.write_u32((IDT + v * 8 + 4) as u64, hi).unwrap();
    }
    ram.write(CODE as u64, &code(steps)).unwrap();
    let mut h = CodeAssembler::new(32).unwrap();
    h.mov(al, 0x21u32).unwrap();
    h.out(0xf4, al).unwrap();
    h.hlt().unwrap();
    ram.write(HANDLER as u64, &h.assemble(HANDLER as u64).unwrap()).unwrap();
    for i in 0..64u32 {
        ram.write_u32((DATA + 4 * i) as u64, i.wrapping_mul(0x9e37_79b9)).unwrap();
    }
    let mut s = CpuState::flat_protected(0);
    if paging {
        ram.write_u32(PD as u64, PT | 3).unwrap();
        for i in 0..1024u32 {
            let pte = if i == HOLE >> 12 { 0 } else { (i << 12) | 3 };
            ram.write_u32((PT + 4 * i) as u64, pte).unwrap();
        }
        s.cr3 = PD;
        s.cr0 |= vmm_interp::state::cr::CR0_PG;
    }
    s.eip = CODE;
    s.gpr = [1, 2, 3, 4, KSTACK, 6, 7, 8];
    s.gdtr = TableReg { base: GDT, limit: (gdt.len() * 8 - 1) as u16 };
    s.idtr = TableReg { base: IDT, limit: (IDT_GATES * 8 - 1) as u16 };
    s.tr = Segment { selector: 0x28, base: 0x3000, limit: 0x67, attr: attr::P | 11 };
    s.ldtr = Segment { selector: LDT_SEL as u16, base: LDT, limit: 0x17, attr: attr::P | 2 };
    let GuestRam::Heap(bytes) = ram else { unreachable!("heap RAM") };
    (bytes, s)
}

fn opts(kernel: EngineKind) -> RunOptions {
    RunOptions {
        kernel_engine: kernel,
        user_engine: EngineKind::Interp,
        timeout: Some(Duration::from_secs(20)),
        ..RunOptions::default()
    }
}

fn run(steps: &[Step], kernel: EngineKind, paging: bool) -> RunResult {
    run_with(steps, kernel, paging, false)
}

fn run_with(steps: &[Step], kernel: EngineKind, paging: bool, irq: bool) -> RunResult {
    let (ram, s) = image(steps, paging);
    engine::run(machine_with(ram, irq), s, &opts(kernel)).unwrap()
}

/// The guest-visible state compared.
fn visible(r: &RunResult) -> String {
    let s = &r.state;
    let seg = |g: &Segment| format!("{:04x} {:08x}/{:08x}/{:04x}", g.selector, g.base, g.limit, g.attr);
    let segs: Vec<String> = s.seg.iter().map(seg).collect();
    let mem = |a: u32, n: usize| r.machine.ram.slice(a as u64, n).unwrap().to_vec();
    format!(
        "outcome {:?}\npost code {:02x}\ngpr {:08x?}\neip {:08x} eflags {:08x} cpl {}\nseg {}\nldtr {} tr {}\ngdtr {:08x}/{:04x} idtr {:08x}/{:04x}\ncr0 {:08x} cr2 {:08x} cr3 {:08x} cr4 {:08x}\ndr {:08x?}\ndata {:02x?}\nstack {:02x?}",
        r.outcome,
        r.machine.post_code,
        s.gpr,
        s.eip,
        s.eflags,
        s.cpl,
        segs.join(", "),
        seg(&s.ldtr),
        seg(&s.tr),
        s.gdtr.base,
        s.gdtr.limit,
        s.idtr.base,
        s.idtr.limit,
        s.cr0,
        s.cr2,
        s.cr3,
        s.cr4,
        s.dr,
        mem(DATA, 256),
        mem(KSTACK - 256, 256),
    )
}

/// Where the guest RAM of two runs differs (the first differing bytes of each differing
/// page), or nothing.
fn ram_differences(bt: &RunResult, interp: &RunResult) -> String {
    let (b, i) = (bt.machine.ram.as_slice(), interp.machine.ram.as_slice());
    if b == i {
        return String::new();
    }
    let mut out = String::from("\n  RAM differs:");
    for (n, (pb, pi)) in b.chunks(4096).zip(i.chunks(4096)).enumerate().filter(|(_, (pb, pi))| pb != pi).take(8) {
        let at = (0..4096).find(|&k| pb[k] != pi[k]).unwrap_or(0);
        let end = (at + 16).min(4096);
        out += &format!("\n  {:08x}: bt {:02x?} interp {:02x?}", n * 4096 + at, &pb[at..end], &pi[at..end]);
    }
    out
}

/// The lines of two [`visible`] states that differ, `bt` first.
fn differences(bt: &str, interp: &str) -> String {
    let mut out = String::new();
    for (b, i) in bt.lines().zip(interp.lines()) {
        if b != i {
            out += &format!("\n  bt:     {b}\n  interp: {i}");
        }
    }
    out
}

/// Self-modifying kernel code: a subroutine's `mov eax, imm32` is patched between calls, once
/// in the page of the code that patches it and once in another page; the translated code must
/// see every new immediate (coherence), like the interpreter.
#[test]
fn self_modifying_kernel_code() {
    for (sub, via_gs) in [(CODE + 0x800, false), (CODE + 0x3000, false), (CODE + 0x3000, true)] {
        let build = || {
            let (mut m, s) = guest(&[]);
            let mut a = CodeAssembler::new(32).unwrap();
            let mut top = a.create_label();
            a.mov(ecx, 5u32).unwrap();
            a.xor(ebx, ebx).unwrap();
            a.set_label(&mut top).unwrap();
            a.call(sub as u64).unwrap();
            a.add(ebx, eax).unwrap();
            if via_gs {
                // A GS-relative store is emulated by the interpreter (GS is the translator's).
                a.mov(eax, 0x10u32).unwrap();
                a.mov(gs, ax).unwrap();
                a.mov(dword_ptr(sub + 1).gs(), ecx).unwrap();
            } else {
                a.mov(dword_ptr(sub + 1), ecx).unwrap(); // the next call returns ECX
            }
            a.imul_2(ebx, ebx).unwrap();
            a.dec(ecx).unwrap();
            a.jnz(top).unwrap();
            a.mov(al, 0u32).unwrap();
            a.out(0xf4, al).unwrap();
            m.ram.write(CODE as u64, &a.assemble(CODE as u64).unwrap()).unwrap();
            let mut b = CodeAssembler::new(32).unwrap();
            b.mov(eax, 100u32).unwrap();
            b.ret().unwrap();
            m.ram.write(sub as u64, &b.assemble(sub as u64).unwrap()).unwrap();
            (m, s)
        };
        let go = |k: EngineKind| {
            let (m, s) = build();
            let opts = RunOptions { kernel_engine: k, user_engine: EngineKind::Interp, timeout: Some(Duration::from_secs(20)), ..RunOptions::default() };
            engine::run(m, s, &opts).unwrap()
        };
        let i = go(EngineKind::Interp);
        let b = go(EngineKind::Bt);
        assert_eq!(i.outcome, vmm_monitor::engine::Outcome::DebugExit { value: 0 });
        assert_eq!(visible(&b), visible(&i), "sub at {sub:#x}\n{}", b.stats.render());
        let key = if via_gs { "bt-code-write-emulated" } else { "bt-code-write" };
        assert!(b.stats.exits.get(key).copied().unwrap_or(0) >= 4, "{}", b.stats.render());
    }
}

/// Inline segment loads never use a stale selector-table entry: a loop loads DS with the same
/// selector (GDT entry 10) five times per iteration and reads through it, then changes that
/// descriptor's base (0x20000 <-> 0x30000) by a store from translated code, by a GS-relative
/// store (emulated by the interpreter), by a store through another linear alias of the GDT's
/// frame (paging on), or by LGDT of a second table. Every load must see the descriptor as it
/// is (the sums of what the reads found are computed here from the bases), as under the
/// interpreter, and most loads must have been inline (fewer callouts than loads).
#[test]
fn segment_loads_see_descriptor_changes() {
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum How {
        Store,
        GsStore,
        Alias,
        Lgdt,
    }
    const N: u32 = 40;
    const LOADS: u32 = 4;
    for how in [How::Store, How::GsStore, How::Alias, How::Lgdt] {
        let build = || {
            let (mut m, s) = guest_with(&[], how == How::Alias);
            m.ram.write((GDT + 0x50) as u64, &desc(DATA, 0xffff, 0x93, 0).to_le_bytes()).unwrap();
            m.ram.write((GDT2 + 0x50) as u64, &desc(DATA + 0x1_0000, 0xffff, 0x93, 0).to_le_bytes()).unwrap();
            m.ram.write_u32((DATA + 0x1_0000) as u64, 0x5555).unwrap();
            m.ram.write_u32((DATA + 0x1_0004) as u64, 0x7777).unwrap();
            if how == How::Alias {
                m.ram.write_u32((PT + 4 * (HOLE >> 12)) as u64, GDT | 3).unwrap();
            }
            let mut a = CodeAssembler::new(32).unwrap();
            let mut top = a.create_label();
            a.mov(ecx, N).unwrap();
            a.xor(esi, esi).unwrap();
            a.xor(edi, edi).unwrap();
            a.mov(eax, 0x10u32).unwrap();
            a.mov(gs, ax).unwrap();
            a.set_label(&mut top).unwrap();
            a.mov(eax, 0x50u32).unwrap();
            for _ in 0..LOADS {
                a.mov(ds, ax).unwrap();
                a.add(esi, dword_ptr(0)).unwrap();
                a.add(edi, dword_ptr(4)).unwrap();
            }
            a.mov(eax, 0x10u32).unwrap();
            a.mov(ds, ax).unwrap();
            // Base bits 23:16 of entry 10: 0x02 <-> 0x03.
            match how {
                How::Store => a.xor(byte_ptr(GDT + 0x54), 1).unwrap(),
                How::GsStore => a.xor(byte_ptr(GDT + 0x54).gs(), 1).unwrap(),
                How::Alias => a.xor(byte_ptr(HOLE + 0x54), 1).unwrap(),
                How::Lgdt => {
                    let mut odd = a.create_label();
                    let mut done = a.create_label();
                    a.test(ecx, 1).unwrap();
                    a.jnz(odd).unwrap();
                    a.lgdt(fword_ptr(GDTRS + 8)).unwrap();
                    a.jmp(done).unwrap();
                    a.set_label(&mut odd).unwrap();
                    a.lgdt(fword_ptr(GDTRS)).unwrap();
                    a.set_label(&mut done).unwrap();
                    a.nop().unwrap();
                }
            }
            a.dec(ecx).unwrap();
            a.jnz(top).unwrap();
            a.mov(al, 0u32).unwrap();
            a.out(0xf4, al).unwrap();
            m.ram.write(CODE as u64, &a.assemble(CODE as u64).unwrap()).unwrap();
            (m, s)
        };
        let go = |k: EngineKind| {
            let (m, s) = build();
            let opts = RunOptions { kernel_engine: k, user_engine: EngineKind::Interp, timeout: Some(Duration::from_secs(20)), ..RunOptions::default() };
            engine::run(m, s, &opts).unwrap()
        };
        // What the reads find: the base alternates between DATA and DATA + 0x10000, starting
        // with DATA (the generated data at DATA: dword i is i * 0x9e3779b9).
        let (mut esi_want, mut edi_want) = (0u32, 0u32);
        for k in 0..N {
            let (lo, hi) = if k % 2 == 0 { (0, 0x9e37_79b9) } else { (0x5555, 0x7777) };
            esi_want = esi_want.wrapping_add(LOADS * lo);
            edi_want = edi_want.wrapping_add(LOADS * hi);
        }
        let i = go(EngineKind::Interp);
        let b = go(EngineKind::Bt);
        assert_eq!(i.outcome, vmm_monitor::engine::Outcome::DebugExit { value: 0 }, "{how:?}");
        assert_eq!((i.state.gpr[6], i.state.gpr[7]), (esi_want, edi_want), "{how:?}: the interpreter");
        assert_eq!(visible(&b), visible(&i), "{how:?}\n{}", b.stats.render());
        let exits = |k: &str| b.stats.exits.get(k).copied().unwrap_or(0);
        if std::env::var("SHOW_STATS").is_ok() {
            eprintln!("{how:?}\n{}", b.stats.render());
        }
        let loads = N * (LOADS + 1);
        assert!(exits("bt-emulate") < loads as u64, "{how:?}: every load a callout\n{}", b.stats.render());
        let drops = exits("bt-seg-drop-write") + exits("bt-seg-drop-tables");
        assert!(drops >= (N / 2) as u64, "{how:?}: the table was not emptied\n{}", b.stats.render());
    }
}

/// The generator's indirect-jump and IRET steps reach their targets (no INT3, no fault).
#[test]
fn generated_control_transfers_reach_their_targets() {
    for step in [(38u8, 0u32, 0u32), (38, 5, 0), (40, 1, 0), (40, 4, 0x0000_0ad5)] {
        for k in [EngineKind::Interp, EngineKind::Bt] {
            let r = run(&[step], k, false);
            assert_eq!(r.outcome, vmm_monitor::engine::Outcome::DebugExit { value: 0 }, "{step:?} {k:?}");
        }
    }
}

/// The generated cases: up to 40 steps of any kind (kinds 43-50: data-segment loads, descriptor
/// writes, LGDT/LLDT, reads through the loaded segments, VERR/VERW), paging on or off, an
/// interrupt pending from the start or not (one case in four).
fn generated_cases() -> impl Strategy<Value = (Vec<Step>, bool, bool)> {
    (prop::collection::vec((0u8..51, any::<u32>(), any::<u32>()), 1..40), any::<bool>(), prop::bool::weighted(0.25))
}

/// A session's runs (which reuse the host setup) end as one-shot runs of the same guests do:
/// the same guest-visible state and the same number of fragments translated, for generated
/// cases run in an order that mixes paging on and off.
#[test]
fn session_runs_match_one_shot_runs() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = generated_cases();
    let generated: Vec<(Vec<Step>, bool, bool)> = (0..64).map(|_| strategy.new_tree(&mut runner).unwrap().current()).collect();
    // One-shot runs first: the session holds the run lock from its first run until dropped.
    let one_shot: Vec<(String, u64)> = generated
        .iter()
        .map(|(steps, paging, irq)| {
            let r = run_with(steps, EngineKind::Bt, *paging, *irq);
            (visible(&r), r.stats.translated)
        })
        .collect();
    let mut session = Session::new();
    for ((steps, paging, irq), (want, translated)) in generated.iter().zip(&one_shot) {
        let (ram, s) = image(steps, *paging);
        let r = session.run(machine_with(ram, *irq), s, &opts(EngineKind::Bt)).unwrap();
        assert!(visible(&r) == *want, "paging {paging}, {steps:?}:{}", differences(&visible(&r), want));
        assert_eq!(r.stats.translated, *translated, "paging {paging}, {steps:?}");
    }
}

/// A session that switches engines (bt, direct, interp) and RAM sizes between runs ends each
/// run as a one-shot run does, and gives heap RAM back as heap RAM of the same size.
#[test]
fn session_switches_engines_and_ram_sizes() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = generated_cases();
    let plan = [(EngineKind::Bt, RAM), (EngineKind::Direct, RAM), (EngineKind::Bt, 2 * RAM), (EngineKind::Interp, RAM), (EngineKind::Bt, RAM), (EngineKind::Direct, 2 * RAM), (EngineKind::Bt, 2 * RAM)];
    let guests: Vec<(Vec<u8>, CpuState, EngineKind, bool)> = plan
        .iter()
        .map(|&(k, size)| {
            let (steps, paging, irq) = strategy.new_tree(&mut runner).unwrap().current();
            let (mut ram, s) = image(&steps, paging);
            ram.resize(size, 0);
            (ram, s, k, irq)
        })
        .collect();
    let one_shot: Vec<RunResult> = guests.iter().map(|(ram, s, k, irq)| engine::run(machine_with(ram.clone(), *irq), s.clone(), &opts(*k)).unwrap()).collect();
    let mut session = Session::new();
    for ((ram, s, k, irq), want) in guests.into_iter().zip(&one_shot) {
        let size = ram.len();
        let r = session.run(machine_with(ram, irq), s, &opts(k)).unwrap();
        assert!(matches!(r.machine.ram, GuestRam::Heap(ref v) if v.len() == size), "{k:?}: RAM not given back as heap RAM of {size:#x} bytes");
        let (vr, vw) = (visible(&r), visible(want));
        let ram = ram_differences(&r, want);
        assert!(vr == vw && ram.is_empty(), "{k:?} with {size:#x} bytes of RAM (session first):{}{ram}", differences(&vr, &vw));
    }
}

/// Cases of the property test in the default run (`VMM_BT_PROP_CASES` sets another number;
/// `scripts/test --long` runs 1,000,000).
const DEFAULT_CASES: u32 = 20_000;

/// The property: one generated case runs under the interpreter (one-shot) and under `bt` (in
/// a session that reuses the host setup between cases: `engine::Session`) and ends in the same
/// guest-visible state. A failure is shrunk by proptest to a minimal list of steps and reported
/// with their disassembly (and saved in `bt_prop.proptest-regressions`, replayed first by
/// every later run).
#[test]
fn translated_kernel_code_matches_the_interpreter() {
    use proptest::test_runner::{TestCaseError, TestError, TestRunner};
    let cases = std::env::var("VMM_BT_PROP_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_CASES);
    let mut runner = TestRunner::new(ProptestConfig { cases, source_file: Some(file!()), ..ProptestConfig::default() });
    let strategy = generated_cases();
    let session = std::cell::RefCell::new(Session::new());
    let result = runner.run(&strategy, |(steps, paging, irq)| {
        let (ram, s) = image(&steps, paging);
        let i = engine::run_interp(machine_with(ram.clone(), irq), s.clone(), &opts(EngineKind::Interp));
        let b = session.borrow_mut().run(machine_with(ram, irq), s, &opts(EngineKind::Bt)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(b.stats.translated > 0, "bt translated nothing: {}", b.stats.render());
        let (vb, vi) = (visible(&b), visible(&i));
        let ram = ram_differences(&b, &i);
        prop_assert!(vb == vi && ram.is_empty(), "{}{ram}", differences(&vb, &vi));
        Ok(())
    });
    drop(session); // releases the run lock: the replay below is a one-shot run
    match result {
        Ok(()) => {}
        Err(TestError::Fail(why, (steps, paging, irq))) => {
            // Replayed alone, with nothing left from earlier runs of the session.
            let (b, i) = (run_with(&steps, EngineKind::Bt, paging, irq), run_with(&steps, EngineKind::Interp, paging, irq));
            let alone = if visible(&b) == visible(&i) && ram_differences(&b, &i).is_empty() {
                "PASSES: the failure depends on the session's earlier runs (a reset bug: see session_runs_match_one_shot_runs)"
            } else {
                "fails too"
            };
            panic!(
                "bt and the interpreter differ: {why}\nminimal failing case (paging {paging}, interrupt pending {irq}): {steps:?}\n{}replayed alone (one-shot engine::run): {alone}\n{runner}",
                disassembly(&steps)
            )
        }
        Err(e) => panic!("{e}\n{runner}"),
    }
}

// ---------------------------------------------------------------------------------------------
// User code (CPL 3) under `--user-engine bt`: GS-relative accesses (i386 TLS), which are inline
// code when the guest GS is a flat data segment and DS has base 0 (scanner's
// `mangle/user_gs.rs`, `Mode::user_gs`), and callouts otherwise.

/// The TLS window: every flat GS selector's base puts offsets `W..W+0x100` in plain RAM.
const W: u32 = 0x2_8000;
/// A supervisor-only page (with paging).
const SUPER: u32 = 0x6000;
/// The user stack (top). GS-relative stack operands (`gs:[esp+x]`) under the GS whose base is
/// DATA - W land 0x8000 below it: in the page that is not present, not in the page tables
/// (a write there without INVLPG would leave the TLBs of the two engines disagreeing, as two
/// CPUs may).
const USTACK: u32 = 0xf000;
/// `add eax, 3; ret` (the target of `call gs:[x]`).
const SUB: u32 = 0x1_9000;
/// `add eax, 5; int 0x80` (the target of `jmp gs:[x]`: ends the run).
const SUB_JMP: u32 = 0x1_9010;
/// The handler of `int 0x80` (a DPL-3 gate): the debug exit with 0.
const HANDLER0: u32 = 0x1_8100;

/// GS selectors: flat with base DATA - W (offsets wrap around 4 GiB to DATA), flat base 0,
/// flat base 0x1000, a limit inside the window (W + 0x7f), read-only flat, expand-down,
/// null, and flat with base DATA + 0x100, where an offset near 4 GiB reaches RAM (the flat
/// ones are the inline path; the others the callout).
const GS_SELS: [u32; 8] = [0x3b, 0x43, 0x4b, 0x53, 0x5b, 0x6b, 0x00, 0x73];
/// DS selectors: the flat user data segment and one with base 0x1000 (GS accesses then are
/// callouts).
const DS_SELS: [u32; 2] = [0x23, 0x63];

fn user_gdt() -> Vec<u64> {
    let wrap = DATA.wrapping_sub(W);
    vec![
        0u64,
        desc(0, 0xfffff, 0x9a, 0xc),        // 0x08 kernel code
        desc(0, 0xfffff, 0x92, 0xc),        // 0x10 kernel data
        desc(0, 0xfffff, 0xfa, 0xc),        // 0x1b user code
        desc(0, 0xfffff, 0xf2, 0xc),        // 0x23 user data
        desc(0x3000, 0x67, 0x89, 0),        // 0x28 TSS
        desc(DATA, 0xfff, 0x92, 0x4),       // 0x30
        desc(wrap, 0xfffff, 0xf2, 0xc),     // 0x3b flat, base DATA - W
        desc(0, 0xfffff, 0xf2, 0xc),        // 0x43 flat, base 0
        desc(0x1000, 0xfffff, 0xf2, 0xc),   // 0x4b flat, base 0x1000
        desc(wrap, W + 0x7f, 0xf2, 0x4),    // 0x53 limit inside the window
        desc(0, 0xfffff, 0xf0, 0xc),        // 0x5b read-only
        desc(0x1000, 0xfffff, 0xf2, 0xc),   // 0x63 user data, base 0x1000 (for DS)
        desc(wrap, W - 1, 0xf6, 0x4),       // 0x6b expand-down: offsets from W on
        desc(DATA + 0x100, 0xfffff, 0xf2, 0xc), // 0x73 flat, base in DATA: offsets near 4 GiB reach RAM
    ]
}

fn user_emit(a: &mut CodeAssembler, (k, x, y): Step) -> Result<(), IcedError> {
    const R16: [AsmRegister16; 6] = [ax, cx, dx, bx, si, di];
    const R8: [AsmRegister8; 4] = [al, cl, dl, bl];
    let r = REGS[(x % 6) as usize];
    let r2 = REGS[(y % 6) as usize];
    let o = W + (y % 64) * 4;
    match k % 16 {
        0 => a.mov(r2, dword_ptr(o).gs()),
        1 => a.mov(dword_ptr(o).gs(), r),
        2 => {
            // Base register (unaligned offsets too).
            a.mov(r, y % 250)?;
            a.mov(r2, dword_ptr(r + W).gs())
        }
        3 => {
            // Index register, scaled.
            a.mov(r, y % 64)?;
            a.mov(dword_ptr(r * 4 + W).gs(), r2)
        }
        4 => {
            // Base and index (read-modify-write).
            a.mov(ebx, y % 128)?;
            a.mov(esi, x % 32)?;
            a.add(dword_ptr(ebx + esi * 4 + W).gs(), r)
        }
        5 => match y % 5 {
            0 => a.add(dword_ptr(o).gs(), r),
            1 => a.inc(byte_ptr(o + x % 4).gs()),
            2 => a.xchg(dword_ptr(o).gs(), r),
            3 => a.cmpxchg(dword_ptr(o).gs(), r),
            _ => a.lock().or(dword_ptr(o).gs(), r),
        },
        6 => match y % 8 {
            0..=2 => {
                a.mov(dword_ptr(W + 0xf8).gs(), SUB)?;
                a.call(dword_ptr(W + 0xf8).gs())
            }
            3 | 4 => {
                a.mov(ecx, 0xf8u32)?;
                a.mov(dword_ptr(ecx + W).gs(), SUB)?;
                a.call(dword_ptr(ecx + W).gs())
            }
            5 | 6 => {
                a.mov(eax, 0x78u32)?;
                a.mov(ecx, 0x80u32)?;
                a.mov(dword_ptr(eax + ecx + W).gs(), SUB)?;
                a.call(dword_ptr(eax + ecx + W).gs())
            }
            _ => {
                a.mov(dword_ptr(W + 0xf4).gs(), SUB_JMP)?;
                a.jmp(dword_ptr(W + 0xf4).gs())
            }
        },
        7 => {
            // A new GS (base, limit, type): the inline accesses after it must use it.
            a.mov(eax, GS_SELS[(y % 8) as usize])?;
            a.mov(gs, ax)
        }
        8 => {
            a.mov(eax, DS_SELS[(y % 2) as usize])?;
            a.mov(ds, ax)
        }
        9 => match y % 5 {
            // Faults: a page that is not present, a supervisor page (with paging), an access
            // that runs past offset 0xFFFFFFFF (#GP) or ends at it (no fault), statically.
            0 => {
                a.mov(eax, 0x43u32)?;
                a.mov(gs, ax)?;
                a.mov(r, dword_ptr(HOLE + (x % 16) * 4).gs())
            }
            1 => {
                a.mov(eax, 0x43u32)?;
                a.mov(gs, ax)?;
                a.mov(dword_ptr(SUPER + (x % 16) * 4).gs(), r2)
            }
            2 => {
                a.mov(esi, 0xffff_fffcu32 + x % 4)?;
                a.mov(r, dword_ptr(esi).gs())
            }
            3 => a.mov(r, dword_ptr(0xffff_fffcu32 + x % 4).gs()),
            _ => a.mov(r16_of(r, &R16), word_ptr(0xffff_fffeu32 + x % 2).gs()),
        },
        10 => match y % 3 {
            0 => a.mov(R16[(x % 6) as usize], word_ptr(o).gs()),
            1 => a.movzx(r, byte_ptr(o + 1).gs()),
            _ => a.mov(byte_ptr(o + 3).gs(), R8[(x % 4) as usize]),
        },
        11 => match y % 4 {
            0 => {
                a.push(dword_ptr(o).gs())?;
                a.pop(r)
            }
            1 => {
                a.push(r)?;
                a.pop(dword_ptr(o).gs())
            }
            // ESP in the operand: PUSH computes the address before it decrements ESP, POP
            // after it increments ESP (a callout).
            2 => {
                a.push(dword_ptr(esp + 4).gs())?;
                a.pop(r)
            }
            _ => {
                a.push(r)?;
                a.push(r2)?;
                a.pop(dword_ptr(esp + 4).gs())?;
                a.pop(r)
            }
        },
        12 => a.cmpxchg8b(qword_ptr(W + (y % 32) * 8).gs()),
        13 => a.lea(r, dword_ptr(r2 + (y & 0xff)).gs()),
        14 => {
            a.add(r, y as i32)?;
            a.mov(dword_ptr(DATA + (y % 64) * 4), r)
        }
        _ => match y % 3 {
            0 => a.mov(r, dword_ptr(esp + (y % 8) * 4).gs()),
            // EBP as the base (its default segment is SS: the rewritten operand names DS).
            1 => {
                a.mov(ebp, x % 250)?;
                a.mov(r, dword_ptr(ebp + W).gs())
            }
            _ => {
                a.mov(ebp, x % 120)?;
                a.mov(esi, y % 60)?;
                a.sub(dword_ptr(ebp + esi * 2 + W).gs(), r)
            }
        },
    }
}

fn r16_of(r: AsmRegister32, r16: &[AsmRegister16; 6]) -> AsmRegister16 {
    r16[REGS.iter().position(|&q| q == r).unwrap_or(0)]
}

/// The user code of `steps`, then `int 0x80` (the handler ends the run with 0).
fn user_code(steps: &[Step]) -> Vec<u8> {
    let mut a = CodeAssembler::new(32).unwrap();
    for s in steps {
        user_emit(&mut a, *s).unwrap();
    }
    a.int(0x80).unwrap();
    a.assemble(CODE as u64).unwrap()
}

fn user_disassembly(steps: &[Step]) -> String {
    listing(&user_code(steps))
}

/// Guest RAM and the CPU state at the first step: CPL 3, GS = `gs_sel`, the TSS's ring-0
/// stack for exceptions (handled at CPL 0: the debug exit with 0x21, the frame on KSTACK).
fn user_image_of(code: &[u8], paging: bool, gs_sel: u32) -> (Vec<u8>, CpuState) {
    let mut ram = GuestRam::heap(RAM);
    let gdt = user_gdt();
    for (i, d) in gdt.iter().enumerate() {
        ram.write((GDT + 8 * i as u32) as u64, &d.to_le_bytes()).unwrap();
    }
    let gate = |v: u32, handler: u32, dpl: u32| ((0x08u32 << 16) | (handler & 0xffff), (handler & 0xffff_0000) | 0x8e00 | dpl << 13, v);
    for (lo, hi, v) in (0..32u32).map(|v| gate(v, HANDLER, 0)).chain([gate(0x80, HANDLER0, 3)]) {
        ram.write_u32((IDT + v * 8) as u64, lo).unwrap();
        ram.write_u32((IDT + v * 8 + 4) as u64, hi).unwrap();
    }
    ram.write_u32(0x3004, KSTACK).unwrap(); // TSS.esp0
    ram.write_u32(0x3008, 0x10).unwrap(); // TSS.ss0
    ram.write(CODE as u64, code).unwrap();
    for (at, f) in [(HANDLER, 0x21u32), (HANDLER0, 0)] {
        let mut h = CodeAssembler::new(32).unwrap();
        h.mov(al, f).unwrap();
        h.out(0xf4, al).unwrap();
        h.hlt().unwrap();
        ram.write(at as u64, &h.assemble(at as u64).unwrap()).unwrap();
    }
    let mut sub = CodeAssembler::new(32).unwrap();
    sub.add(eax, 3).unwrap();
    sub.ret().unwrap();
    ram.write(SUB as u64, &sub.assemble(SUB as u64).unwrap()).unwrap();
    let mut sub = CodeAssembler::new(32).unwrap();
    sub.add(eax, 5).unwrap();
    sub.int(0x80).unwrap();
    ram.write(SUB_JMP as u64, &sub.assemble(SUB_JMP as u64).unwrap()).unwrap();
    for i in 0..64u32 {
        ram.write_u32((DATA + 4 * i) as u64, i.wrapping_mul(0x9e37_79b9)).unwrap();
        ram.write_u32((W + 4 * i) as u64, i.wrapping_mul(0x85eb_ca6b)).unwrap();
        ram.write_u32((W + 0x1000 + 4 * i) as u64, i.wrapping_mul(0xc2b2_ae35)).unwrap();
    }
    let mut s = CpuState::flat_protected(3);
    if paging {
        ram.write_u32(PD as u64, PT | 7).unwrap();
        for i in 0..1024u32 {
            // Code pages Accessed already: bt translates code without a guest-visible fetch
            // (a page that only translated code runs from stays not Accessed; the
            // interpreter's fetches set the bit), a difference outside this test's subject.
            let pte = match i << 12 {
                HOLE => 0,
                SUPER => (i << 12) | 3,
                CODE | SUB | HANDLER => (i << 12) | 0x27,
                _ => (i << 12) | 7,
            };
            ram.write_u32((PT + 4 * i) as u64, pte).unwrap();
        }
        s.cr3 = PD;
        s.cr0 |= vmm_interp::state::cr::CR0_PG;
    }
    let seg = |sel: u32| {
        if sel == 0 {
            Segment::default()
        } else {
            vmm_interp::seg::Descriptor(gdt[(sel >> 3) as usize] | 1 << 40).to_segment(sel as u16)
        }
    };
    s.seg = [seg(0x23), seg(0x1b), seg(0x23), seg(0x23), seg(0x23), seg(gs_sel)];
    s.eip = CODE;
    s.gpr = [1, 2, 3, 4, USTACK, 6, 7, 8];
    s.gdtr = TableReg { base: GDT, limit: (gdt.len() * 8 - 1) as u16 };
    s.idtr = TableReg { base: IDT, limit: 0x80 * 8 + 7 };
    s.tr = Segment { selector: 0x28, base: 0x3000, limit: 0x67, attr: attr::P | 11 };
    let GuestRam::Heap(bytes) = ram else { unreachable!("heap RAM") };
    (bytes, s)
}

fn user_image(steps: &[Step], paging: bool, gs_sel: u32) -> (Vec<u8>, CpuState) {
    user_image_of(&user_code(steps), paging, gs_sel)
}

fn user_opts(user: EngineKind) -> RunOptions {
    RunOptions {
        kernel_engine: if user == EngineKind::Interp { EngineKind::Interp } else { EngineKind::Bt },
        user_engine: user,
        timeout: Some(Duration::from_secs(20)),
        ..RunOptions::default()
    }
}

/// [`visible`] plus the TLS windows and the user stack.
fn user_visible(r: &RunResult) -> String {
    let mem = |a: u32, n: usize| r.machine.ram.slice(a as u64, n).unwrap().to_vec();
    format!("{}\nwindow {:02x?}\nustack {:02x?}", visible(r), mem(W, 256), mem(USTACK - 64, 64))
}

/// The user generator's steps reach the end (`int 0x80`, exit 0) where they should, under the
/// interpreter and under bt; and the GS accesses of flat segments are inline code: a loop of
/// them makes few callouts.
#[test]
fn user_gs_accesses_are_inline_and_match_the_interpreter() {
    // 200 iterations of: load, store, RMW with registers, call gs:[x].
    let mut a = CodeAssembler::new(32).unwrap();
    let mut top = a.create_label();
    a.mov(edi, 200u32).unwrap();
    a.set_label(&mut top).unwrap();
    for s in [(0u8, 1u32, 2u32), (1, 2, 7), (4, 3, 9), (5, 0, 10), (6, 0, 0), (6, 0, 3), (6, 0, 5), (10, 1, 1), (12, 0, 3)] {
        user_emit(&mut a, s).unwrap();
    }
    a.dec(edi).unwrap();
    a.jnz(top).unwrap();
    a.int(0x80).unwrap();
    let code = a.assemble(CODE as u64).unwrap();
    for (gs_sel, paging, inline) in [(0x3b, true, true), (0x43, false, true), (0x4b, true, true), (0x6b, true, false), (0x6b, false, false)] {
        let (ram, s) = user_image_of(&code, paging, gs_sel);
        let i = engine::run_interp(machine(ram.clone()), s.clone(), &user_opts(EngineKind::Interp));
        let b = engine::run(machine(ram), s, &user_opts(EngineKind::Bt)).unwrap();
        assert_eq!(i.outcome, vmm_monitor::engine::Outcome::DebugExit { value: 0 }, "GS {gs_sel:#x}");
        let (vb, vi) = (user_visible(&b), user_visible(&i));
        assert!(vb == vi && ram_differences(&b, &i).is_empty(), "GS {gs_sel:#x}:{}{}", differences(&vb, &vi), ram_differences(&b, &i));
        // 200 x 12 GS instructions: as callouts each is one `bt-emulate`.
        let emulated = b.stats.exits.get("bt-emulate").copied().unwrap_or(0);
        if inline {
            assert!(emulated < 50, "GS {gs_sel:#x}: {emulated} callouts\n{}", b.stats.render());
        } else {
            assert!(emulated >= 200 * 12, "GS {gs_sel:#x} (not flat): {emulated} callouts\n{}", b.stats.render());
        }
    }
}

/// A GS base change between two executions of the same fragment is seen: the loop reads
/// gs:[W] and switches GS between two flat segments with different bases (the `mov gs`
/// callout returns into the fragment), adding up what it read. With the inline code reading a
/// stale base, the sum differs from the interpreter's.
#[test]
fn user_gs_base_changes_are_seen() {
    let mut a = CodeAssembler::new(32).unwrap();
    let mut top = a.create_label();
    a.mov(edi, 50u32).unwrap();
    a.xor(ebx, ebx).unwrap();
    a.set_label(&mut top).unwrap();
    a.add(ebx, dword_ptr(W + 4).gs()).unwrap();
    a.mov(eax, 0x43u32).unwrap();
    a.mov(gs, ax).unwrap();
    a.add(ebx, dword_ptr(W + 4).gs()).unwrap();
    a.imul_2(ebx, ebx).unwrap();
    a.mov(eax, 0x3bu32).unwrap();
    a.mov(gs, ax).unwrap();
    a.dec(edi).unwrap();
    a.jnz(top).unwrap();
    a.int(0x80).unwrap();
    let code = a.assemble(CODE as u64).unwrap();
    let (ram, s) = user_image_of(&code, true, 0x3b);
    let i = engine::run_interp(machine(ram.clone()), s.clone(), &user_opts(EngineKind::Interp));
    let b = engine::run(machine(ram), s, &user_opts(EngineKind::Bt)).unwrap();
    assert_eq!(i.outcome, vmm_monitor::engine::Outcome::DebugExit { value: 0 });
    assert_eq!(user_visible(&b), user_visible(&i), "{}", b.stats.render());
    // The loads are inline: only the two GS loads per iteration are callouts.
    let emulated = b.stats.exits.get("bt-emulate").copied().unwrap_or(0);
    assert!(emulated <= 2 * 50 + 10, "{emulated} callouts\n{}", b.stats.render());
}

/// Cases of the user-mode property test in the default run (`VMM_BT_USER_PROP_CASES`).
const DEFAULT_USER_CASES: u32 = 3_000;

/// The property for user code: generated CPL-3 code rich in GS-relative accesses (loads,
/// stores, read-modify-write, `call`/`jmp gs:[x]`, base and index registers, GS segments that
/// are flat with bases 0, 0x1000 and one whose offsets wrap around 4 GiB, and ones that are not
/// (a limit inside the window, read-only, expand-down, null), DS with base 0 or not, faults:
/// a page not present, a supervisor page, an access past offset 0xFFFFFFFF) ends under
/// `--kernel-engine bt --user-engine bt` as under the interpreter.
#[test]
fn translated_user_code_matches_the_interpreter() {
    use proptest::test_runner::{TestCaseError, TestError, TestRunner};
    let cases = std::env::var("VMM_BT_USER_PROP_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_USER_CASES);
    let mut runner = TestRunner::new(ProptestConfig { cases, source_file: Some(file!()), ..ProptestConfig::default() });
    let strategy = (prop::collection::vec((0u8..16, any::<u32>(), any::<u32>()), 1..30), any::<bool>(), 0usize..8);
    let session = std::cell::RefCell::new(Session::new());
    let result = runner.run(&strategy, |(steps, paging, g)| {
        let (ram, s) = user_image(&steps, paging, GS_SELS[g]);
        let i = engine::run_interp(machine(ram.clone()), s.clone(), &user_opts(EngineKind::Interp));
        let b = session.borrow_mut().run(machine(ram), s, &user_opts(EngineKind::Bt)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(b.stats.translated > 0, "bt translated nothing: {}", b.stats.render());
        let (vb, vi) = (user_visible(&b), user_visible(&i));
        let ram = ram_differences(&b, &i);
        prop_assert!(vb == vi && ram.is_empty(), "{}{ram}", differences(&vb, &vi));
        Ok(())
    });
    drop(session);
    match result {
        Ok(()) => {}
        Err(TestError::Fail(why, (steps, paging, g))) => panic!(
            "bt and the interpreter differ in user code: {why}\nminimal failing case (paging {paging}, GS {:#x}): {steps:?}\n{}{runner}",
            GS_SELS[g],
            user_disassembly(&steps)
        ),
        Err(e) => panic!("{e}\n{runner}"),
    }
}

/// With an interrupt pending from the start, it is taken exactly where IF becomes 1, under
/// `bt` as under the interpreter: after the instruction in the STI shadow (also when that
/// instruction is a CALL that leaves the fragment, and when it is the last of a loop body),
/// after POPF, not at all when the shadow instruction is CLI.
#[test]
fn a_pending_interrupt_is_taken_where_if_becomes_set() {
    let popf_if = (9u8, 0, 0x0000_0200);
    let cases: [(&[Step], bool); 5] = [
        (&[(7, 0, 0), (0, 0, 1), (6, 0, 0), (0, 1, 2)], true),
        (&[(7, 0, 0), (6, 0, 0), (0, 1, 2)], false),
        (&[(7, 0, 0), (27, 0, 0), (0, 1, 2)], true),
        (&[(0, 1, 2), popf_if, (0, 0, 1)], true),
        (&[(28, 0, 1), (7, 0, 0), (28, 1, 0), (0, 2, 3)], true),
    ];
    for (steps, taken) in cases {
        let i = run_with(steps, EngineKind::Interp, false, true);
        let b = run_with(steps, EngineKind::Bt, false, true);
        let want = if taken { 0x21 } else { 0 };
        assert_eq!(i.outcome, vmm_monitor::engine::Outcome::DebugExit { value: want }, "{steps:?}\n{}", disassembly(steps));
        let (vb, vi) = (visible(&b), visible(&i));
        assert!(vb == vi, "{steps:?}\n{}{}\n{}", disassembly(steps), differences(&vb, &vi), b.stats.render());
    }
}

/// Endless loops of translated code with IF set take the timer's interrupt: the run of chained
/// fragments passes a pending-interrupt check infinitely often (a backward branch's check
/// slot, a lookup hit's check). Each loop: PIT channel 0 at 1 kHz on IRQ 0 (the only one
/// unmasked), STI, then the loop; the handler ends the run (debug exit 0x21). Without those
/// checks the run spins until its timeout.
#[test]
fn endless_translated_loops_take_the_timer_interrupt() {
    type Loop = fn(&mut CodeAssembler) -> Result<(), IcedError>;
    let loops: [(&str, Loop); 4] = [
        ("jmp $", |a| {
            let mut l = a.create_label();
            a.set_label(&mut l)?;
            a.jmp(l)
        }),
        ("inc; jmp back", |a| {
            let mut l = a.create_label();
            a.set_label(&mut l)?;
            a.inc(eax)?;
            a.jmp(l)
        }),
        ("jmp eax (lookup)", |a| {
            // call n; n: pop eax; lea eax, [eax+4]; l: inc ecx; jmp eax (EAX = l)
            let mut n = a.create_label();
            a.call(n)?;
            a.set_label(&mut n)?;
            a.pop(eax)?; // 1 byte
            a.lea(eax, dword_ptr(eax + 4))?; // 3 bytes
            a.inc(ecx)?;
            a.jmp(eax)
        }),
        ("call forward; ret; jmp back", |a| {
            let mut l = a.create_label();
            let mut sub = a.create_label();
            a.set_label(&mut l)?;
            a.call(sub)?;
            a.jmp(l)?;
            a.set_label(&mut sub)?;
            a.ret()
        }),
    ];
    for (name, body) in loops {
        let (mut ram, s) = image(&[], false);
        let mut a = CodeAssembler::new(32).unwrap();
        for (port, v) in [(0x43u8, 0x34u32), (0x40, 0xa9), (0x40, 0x04)] {
            a.mov(al, v).unwrap();
            a.out(port as u32, al).unwrap();
        }
        a.sti().unwrap();
        body(&mut a).unwrap();
        let code = a.assemble(CODE as u64).unwrap();
        ram[CODE as usize..CODE as usize + code.len()].copy_from_slice(&code);
        let mut m = machine(ram);
        for (port, v) in [(0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01), (0x21, 0xfe)] {
            m.pic.write(port, v);
        }
        let o = RunOptions { timeout: Some(Duration::from_secs(10)), ..opts(EngineKind::Bt) };
        let r = engine::run(m, s, &o).unwrap();
        assert_eq!(r.outcome, vmm_monitor::engine::Outcome::DebugExit { value: 0x21 }, "{name}\n{}", r.stats.render());
        assert!(r.stats.translated > 0);
        // The interrupt, not an exception: its frame's EIP lies in the loop.
        assert!(r.stats.exits.get("interrupt").copied().unwrap_or(0) >= 1, "{name}\n{}", r.stats.render());
        let at = r.state.gpr[4] as u64;
        let eip = u32::from_le_bytes(r.machine.ram.slice(at, 4).unwrap().try_into().unwrap());
        assert!((CODE..CODE + code.len() as u32).contains(&eip), "{name}: interrupted at {eip:#x}");
    }
}

/// Counted loops whose back edges are checked exits (a check slot), also with the check of an
/// STI shadow or a POPF right before the back edge, end as under the interpreter (with and
/// without an interrupt pending).
#[test]
fn loops_through_checked_exits_match_the_interpreter() {
    type Body = fn(&mut CodeAssembler) -> Result<(), IcedError>;
    let bodies: [(&str, Body); 5] = [
        ("empty", |_| Ok(())),
        ("cli; sti", |a| {
            a.cli()?;
            a.sti()
        }),
        ("pushfd; popfd", |a| {
            a.pushfd()?;
            a.popfd()
        }),
        ("cli; pushfd; sti; popfd", |a| {
            a.cli()?;
            a.pushfd()?;
            a.sti()?;
            a.popfd()
        }),
        ("add; cli; sti", |a| {
            a.add(ebx, ecx)?;
            a.cli()?;
            a.sti()
        }),
    ];
    for (name, body) in bodies {
        for irq in [false, true] {
            let build = || {
                let (mut ram, s) = image(&[], false);
                let mut a = CodeAssembler::new(32).unwrap();
                let mut top = a.create_label();
                a.mov(ecx, 1000u32).unwrap();
                a.set_label(&mut top).unwrap();
                body(&mut a).unwrap();
                a.dec(ecx).unwrap();
                a.jnz(top).unwrap();
                a.mov(al, 0u32).unwrap();
                a.out(0xf4, al).unwrap();
                let code = a.assemble(CODE as u64).unwrap();
                ram[CODE as usize..CODE as usize + code.len()].copy_from_slice(&code);
                (machine_with(ram, irq), s)
            };
            let (m, s) = build();
            let i = engine::run(m, s, &opts(EngineKind::Interp)).unwrap();
            let (m, s) = build();
            let b = engine::run(m, s, &opts(EngineKind::Bt)).unwrap();
            let (vb, vi) = (visible(&b), visible(&i));
            assert!(vb == vi, "{name}, interrupt pending {irq}:{}\n{}", differences(&vb, &vi), b.stats.render());
        }
    }
}

// System calls without a callout (scanner `mangle/syscall.rs`, monitor `bt/fastsys.rs`): user
// code's `int 0x80` and the kernel's IRETD back are inline while the gate, the TSS and the
// descriptors are the ones the runtime validated. The kernel's handler below changes what the
// inline paths rely on between calls (the gate's type, TSS.ESP0, the data segments IRET must
// null, the frame's flags, IF and ESP), and the user code changes its flags, registers and
// data segments, so that the inline paths, their fallbacks and their invalidation all run.

/// Syscall handler actions (EAX & 7 at the `int 0x80`; EAX = [`SYS_EXIT`] ends the run).
const SYS_EXIT: u32 = 0xdead;

/// The handler at `HANDLER0` (the DPL-3 gate 0x80): one action per call, then IRETD.
fn syscall_handler() -> Vec<u8> {
    let mut h = CodeAssembler::new(32).unwrap();
    let mut go = h.create_label();
    let mut done = h.create_label();
    h.cmp(eax, SYS_EXIT).unwrap();
    h.jne(go).unwrap();
    h.mov(al, 0).unwrap();
    h.out(0xf4, al).unwrap();
    h.hlt().unwrap();
    h.set_label(&mut go).unwrap();
    h.push(edx).unwrap();
    h.mov(edx, eax).unwrap();
    h.and(edx, 7).unwrap();
    let mut cases: Vec<CodeLabel> = (0..8).map(|_| h.create_label()).collect();
    for (k, l) in cases.iter().enumerate() {
        h.cmp(edx, k as u32).unwrap();
        h.je(*l).unwrap();
    }
    let frame = |o: i32| dword_ptr(esp + (4 + o));
    for (k, l) in cases.iter_mut().enumerate() {
        h.set_label(l).unwrap();
        match k {
            0 => h.inc(ebx).unwrap(),
            1 => h.xor(frame(8), 0x8d5u32).unwrap(), // the arithmetic flags of the frame
            2 => {
                h.mov(dx, 0x10u32).unwrap(); // ES of DPL 0: IRET nulls it
                h.mov(es, dx).unwrap();
            }
            3 => h.sub(frame(12), 4u32).unwrap(), // the user ESP
            4 => h.xor(byte_ptr(IDT + 0x80 * 8 + 5), 1u32).unwrap(), // interrupt <-> trap gate
            5 => h.xor(dword_ptr(0x3004u32), 0x100u32).unwrap(), // TSS.ESP0
            6 => h.xor(frame(8), 0x200u32).unwrap(), // IF of the frame
            _ => {
                h.mov(dx, 0x23u32).unwrap();
                h.mov(ds, dx).unwrap();
                h.mov(es, dx).unwrap();
                h.xor(edx, edx).unwrap();
                h.mov(fs, dx).unwrap();
            }
        }
        h.jmp(done).unwrap();
    }
    h.set_label(&mut done).unwrap();
    h.pop(edx).unwrap();
    h.iretd().unwrap();
    h.assemble(HANDLER0 as u64).unwrap()
}

/// User code: `rounds` times the steps (an operation, then `int 0x80` with an action), then
/// the exit call. EBP counts the rounds.
fn syscall_user_code(steps: &[(u8, u32, u8)], rounds: u32) -> Vec<u8> {
    const R: [AsmRegister32; 5] = [ecx, edx, ebx, esi, edi];
    let mut a = CodeAssembler::new(32).unwrap();
    let mut top = a.create_label();
    a.mov(ebp, rounds).unwrap();
    a.set_label(&mut top).unwrap();
    for &(k, v, action) in steps {
        let r = R[(v % 5) as usize];
        match k % 6 {
            0 => a.add(r, v).unwrap(),
            1 => a.xor(r, R[((v >> 8) % 5) as usize]).unwrap(),
            2 => {
                a.push(v).unwrap();
                a.pop(r).unwrap();
            }
            3 => {
                a.mov(dx, if v & 1 == 0 { 0x23u32 } else { 0 }).unwrap();
                if v & 2 == 0 {
                    a.mov(ds, dx).unwrap();
                } else {
                    a.mov(es, dx).unwrap();
                }
            }
            4 => {
                a.pushfd().unwrap();
                a.pop(r).unwrap();
            }
            _ => a.cmp(r, v).unwrap(),
        }
        a.mov(eax, action as u32).unwrap();
        a.int(0x80).unwrap();
    }
    a.dec(ebp).unwrap();
    a.jnz(top).unwrap();
    a.mov(eax, SYS_EXIT).unwrap();
    a.int(0x80).unwrap();
    a.assemble(CODE as u64).unwrap()
}

/// The guest of `syscall_user_code` (DS must be the flat one: the user steps' memory is the
/// stack only).
fn syscall_image(steps: &[(u8, u32, u8)], rounds: u32, paging: bool) -> (Vec<u8>, CpuState) {
    let (mut ram, mut s) = user_image_of(&syscall_user_code(steps, rounds), paging, 0x43);
    let h = syscall_handler();
    ram[HANDLER0 as usize..HANDLER0 as usize + h.len()].copy_from_slice(&h);
    s.eflags |= vmm_interp::state::flags::IF;
    (ram, s)
}

/// The steps for `--user-engine direct`: without PUSHFD, which natively shows the host's IF
/// (the virtual IF may be clear: handler action 6), a difference of direct execution.
fn without_pushfd(steps: &[(u8, u32, u8)]) -> Vec<(u8, u32, u8)> {
    steps.iter().map(|&(k, v, a)| (if k % 6 == 4 { 5 } else { k }, v, a)).collect()
}

/// A run of the system-call guest under `user` (kernel bt; interp for both with Interp).
fn syscall_run(ram: Vec<u8>, s: CpuState, user: EngineKind) -> RunResult {
    if user == EngineKind::Interp {
        engine::run_interp(machine(ram), s, &user_opts(EngineKind::Interp))
    } else {
        engine::run(machine(ram), s, &user_opts(user)).unwrap()
    }
}

/// A fixed guest: the inline paths are taken (counted), under `--user-engine bt` and under
/// `direct` (the page of `int 0x80` turns hot), and every run ends as the interpreter's.
#[test]
fn system_calls_are_inline_and_match_the_interpreter() {
    let steps: Vec<(u8, u32, u8)> = (0..16u32).map(|k| ((k % 6) as u8, k.wrapping_mul(0x9e37_79b9) | 1, if k % 4 == 3 { (k / 4) as u8 } else { 0 })).collect();
    for paging in [false, true] {
        for user in [EngineKind::Bt, EngineKind::Direct] {
            let steps = if user == EngineKind::Direct { without_pushfd(&steps) } else { steps.clone() };
            let (ram, s) = syscall_image(&steps, 40, paging);
            let i = syscall_run(ram.clone(), s.clone(), EngineKind::Interp);
            assert_eq!(i.outcome, vmm_monitor::engine::Outcome::DebugExit { value: 0 });
            let b = syscall_run(ram.clone(), s.clone(), user);
            let (vb, vi) = (user_visible(&b), user_visible(&i));
            let diff = ram_differences(&b, &i);
            assert!(vb == vi && diff.is_empty(), "{user:?} paging {paging}: {}{diff}\n{}", differences(&vb, &vi), b.stats.render());
            let n = |k: &str| b.stats.exits.get(k).copied().unwrap_or(0);
            // 641 system calls: most of them inline both ways.
            assert!(n("bt-inline-int") > 400 && n("bt-inline-iret") > 400, "{user:?} paging {paging}\n{}", b.stats.render());
        }
    }
}

/// Cases of the system-call property in the default run (`VMM_BT_SYSCALL_PROP_CASES`).
const DEFAULT_SYSCALL_CASES: u32 = 150;

/// The property: random user steps and handler actions, under `--user-engine bt` and
/// `direct`, end as under the interpreter (registers, flags, segments, memory: the kernel
/// stack's frames included).
#[test]
fn system_calls_without_callouts_match_the_interpreter() {
    use proptest::test_runner::{TestError, TestRunner};
    let cases = std::env::var("VMM_BT_SYSCALL_PROP_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_SYSCALL_CASES);
    let mut runner = TestRunner::new(ProptestConfig { cases, source_file: Some(file!()), ..ProptestConfig::default() });
    let strategy = (prop::collection::vec((0u8..6, any::<u32>(), 0u8..8), 1..24), 2u32..12, any::<bool>());
    let result = runner.run(&strategy, |(steps, rounds, paging)| {
        for user in [EngineKind::Bt, EngineKind::Direct] {
            let steps = if user == EngineKind::Direct { without_pushfd(&steps) } else { steps.clone() };
            let (ram, s) = syscall_image(&steps, rounds, paging);
            let i = syscall_run(ram.clone(), s.clone(), EngineKind::Interp);
            let b = syscall_run(ram.clone(), s.clone(), user);
            let (vb, vi) = (user_visible(&b), user_visible(&i));
            let diff = ram_differences(&b, &i);
            prop_assert!(vb == vi && diff.is_empty(), "{user:?}: {}{diff}", differences(&vb, &vi));
        }
        Ok(())
    });
    match result {
        Ok(()) => {}
        Err(TestError::Fail(why, (steps, rounds, paging))) => {
            panic!("bt and the interpreter differ: {why}\nminimal failing case ({rounds} rounds, paging {paging}): {steps:?}\n{runner}")
        }
        Err(e) => panic!("{e}\n{runner}"),
    }
}

/// Every form of the port-I/O step (`emit`, step 25: both sizes, every port and port pair,
/// imm8 and DX), each with its own value written and each IN's result stored apart, runs
/// under `bt` (which does the null ports inline) as under the interpreter: the same values
/// read, the same writes kept by the devices (the POST code is compared; COM1's scratch
/// register is read back). The interpreter's own run is checked against the floating bus and
/// the read-back, and `bt` must have left the machine fewer unclaimed accesses (inline ones).
#[test]
fn port_io_of_every_form_matches_the_interpreter() {
    const BUF: u32 = 0x4_0000;
    for x in 0..9u32 {
        let mut ys = Vec::new();
        for p in 0..10u32 {
            for (sel, subs) in [(0u32, 1u32), (2, 3), (3, 10)] {
                for sub in 0..subs {
                    for form in 0..4u32 {
                        ys.push(p | sel << 4 | sub << 8 | form << 12);
                    }
                }
            }
        }
        let build = || {
            let (mut ram, s) = image(&[], false);
            let mut a = CodeAssembler::new(32).unwrap();
            for (n, &y) in ys.iter().enumerate() {
                a.mov(eax, 0x0101_0101u32.wrapping_mul(n as u32 + 1) ^ 0x8040_2010).unwrap();
                emit(&mut a, (25, x, y)).unwrap();
                a.mov(dword_ptr(BUF + 4 * n as u32), eax).unwrap();
            }
            a.mov(al, 0u32).unwrap();
            a.out(0xf4, al).unwrap();
            let code = a.assemble(CODE as u64).unwrap();
            assert!(CODE as usize + code.len() <= HANDLER as usize, "{} bytes of code", code.len());
            ram[CODE as usize..CODE as usize + code.len()].copy_from_slice(&code);
            (machine(ram), s)
        };
        let (m, s) = build();
        let i = engine::run(m, s, &opts(EngineKind::Interp)).unwrap();
        let (m, s) = build();
        let b = engine::run(m, s, &opts(EngineKind::Bt)).unwrap();
        assert_eq!(i.outcome, vmm_monitor::engine::Outcome::DebugExit { value: 0 });
        let got = |r: &RunResult, n: usize| r.machine.ram.slice((BUF + 4 * n as u32) as u64, 4).unwrap().try_into().map(u32::from_le_bytes).unwrap();
        // The oracle itself: an IN of the port just written (p_in = p_out) at 0xe0 reads all
        // ones, at 0x80 (POST code) the byte written there.
        let in_size = [1u32, 2, 4][((x / 3) % 3) as usize];
        let mask = if in_size == 4 { u32::MAX } else { (1 << (8 * in_size)) - 1 };
        for (n, &y) in ys.iter().enumerate() {
            let (p, sel) = (y & 15, (y >> 4) & 3);
            if sel == 0 && p == 0 {
                assert_eq!(got(&i, n) & mask, mask, "in of 0xe0 (step {n}, y {y:#x})");
            }
            if sel == 0 && p == 5 {
                let written = 0x0101_0101u32.wrapping_mul(n as u32 + 1) ^ 0x8040_2010;
                assert_eq!(got(&i, n) & 0xff, written & 0xff, "in of 0x80 after an out there");
            }
        }
        let (vb, vi) = (visible(&b), visible(&i));
        let ram = ram_differences(&b, &i);
        assert!(vb == vi && ram.is_empty(), "sizes {x}:{}{ram}", differences(&vb, &vi));
        assert!(
            b.stats.machine.unclaimed_ports < i.stats.machine.unclaimed_ports,
            "bt did no null-port access inline: {} against {}",
            b.stats.machine.unclaimed_ports,
            i.stats.machine.unclaimed_ports
        );
    }
}

/// A case the property found: ES and DS hold LDT selector 4, the guest rewrites its
/// descriptor, then loads FS and ES with it again. The entry after FS's load (a callout)
/// gave ES the table slot of selector 4 from memory just before that slot was rewritten with
/// FS's new descriptor: ES ran with a descriptor it never loaded, and its inline reload (the
/// same host selector) looked like no change.
#[test]
fn a_register_keeps_its_descriptor_when_another_reloads_the_selector() {
    let steps: &[Step] = &[(43, 0, 1365015811), (46, 3623142790, 254276045), (43, 0, 530603509)];
    let i = run(steps, EngineKind::Interp, false);
    let b = run(steps, EngineKind::Bt, false);
    let (vb, vi) = (visible(&b), visible(&i));
    assert!(vb == vi, "{}\n{}", differences(&vb, &vi), b.stats.render());
}
