//! The nanobenchmark guests of `vmm bench nano`: one Multiboot 1 ELF kernel per benchmark,
//! assembled here with iced-x86 `code_asm` (the same images run under every engine and under
//! QEMU).
//!
//! Each guest loads its own GDT, IDT and TSS, masks the 8259s, turns paging on (the first 4 MiB
//! identity-mapped with 4 KiB pages, user-accessible; page 0x3ff000 not present; a region of
//! fresh identity-mapped pages from 4 MiB for the hidden-fault benchmark), then (at CPL 0, or
//! at CPL 3 for `syscall`) runs `warm` iterations of its operation, and `reps` times: an empty
//! loop of `n` iterations and the operation's loop of `n` iterations, each timed with RDTSC.
//! The 64-bit TSC deltas are stored at [`RESULTS`] and printed on COM1 as one line
//! `NANO <empty0> <op0> <empty1> <op1> ...` (16 hex digits each); the guest then writes 0 to
//! the debug-exit port 0xf4. An unexpected exception `v` exits with `0x40 + v`.

use iced_x86::code_asm::*;
use iced_x86::BlockEncoderOptions;

const KBASE: u32 = 0x10_0000;
const KMAIN: u32 = KBASE + 0x40;
const DATA: u32 = 0x11_0000;
const GDT: u32 = DATA;
const GDTR: u32 = DATA + 0x80;
const IDTR: u32 = DATA + 0x88;
const TSS: u32 = DATA + 0x100;
const IDT: u32 = DATA + 0x1000;
const DATA_END: u32 = DATA + 0x2000;
const PD: u32 = 0x12_0000;
const KSTACK_BOTTOM: u32 = 0x13_0000;
const KSTACK_TOP: u32 = 0x14_0000;
const UCODE: u32 = 0x30_0000;
/// Where the guest stores its TSC deltas (user-writable: the syscall benchmark times in user mode).
pub const RESULTS: u32 = 0x30_c000;
const USTACK_TOP: u32 = 0x31_0000;
/// The page whose PTE `ptemod` rewrites.
const PTEMOD_PAGE: u32 = 0x3f_e000;
/// A page that is never present (`pgfault`).
const NOT_PRESENT: u32 = 0x3f_f000;
/// The first page of the hidden-fault region.
const HIDDEN: u32 = 0x40_0000;
/// Guest RAM the benchmarks need (the hidden region ends below it).
pub const RAM_BYTES: usize = 64 << 20;
/// Pages the hidden-fault region can hold.
pub const HIDDEN_PAGES: u32 = (32 << 20) / 4096 - 1024;

/// The operations timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Syscall,
    In,
    Cr3,
    CallRet,
    PgFault,
    Hidden,
    DivZero,
    PteMod,
    CliSti,
    PushfPopf,
}

impl Op {
    pub const ALL: [Op; 10] = [
        Op::Syscall,
        Op::In,
        Op::Cr3,
        Op::CallRet,
        Op::PgFault,
        Op::Hidden,
        Op::DivZero,
        Op::PteMod,
        Op::CliSti,
        Op::PushfPopf,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::Syscall => "syscall",
            Op::In => "in",
            Op::Cr3 => "cr3wr",
            Op::CallRet => "call/ret",
            Op::PgFault => "pgfault",
            Op::Hidden => "hidden",
            Op::DivZero => "divzero",
            Op::PteMod => "ptemod",
            Op::CliSti => "sti/cli",
            Op::PushfPopf => "pushf/popf",
        }
    }

    pub fn what(self) -> &'static str {
        match self {
            Op::Syscall => "user int 0x80 to a kernel handler that IRETs back",
            Op::In => "kernel in al, 0x80",
            Op::Cr3 => "kernel mov cr3 (same page directory)",
            Op::CallRet => "kernel call to a ret",
            Op::PgFault => "kernel load from a not-present page; the #PF handler skips it",
            Op::Hidden => "kernel first write to a mapped, never touched page",
            Op::DivZero => "kernel div by zero; the #DE handler skips it",
            Op::PteMod => "kernel PTE write (A bit toggled) then invlpg",
            Op::CliSti => "kernel sti; cli",
            Op::PushfPopf => "kernel pushfd; popfd",
        }
    }
}

fn ok(r: Result<(), IcedError>) {
    r.expect("assembling a nanobenchmark guest")
}

fn descriptor(base: u32, limit: u32, access: u8, flags: u8) -> u64 {
    (limit as u64 & 0xffff)
        | ((base as u64 & 0xff_ffff) << 16)
        | ((access as u64) << 40)
        | (((limit as u64 >> 16) & 0xf) << 48)
        | (((flags as u64) & 0xf) << 52)
        | (((base as u64) >> 24) << 56)
}

/// A minimal ELF32 i386 executable: `segments` are (address, file bytes, memory size).
pub fn elf32(entry: u32, segments: &[(u32, Vec<u8>, u32)]) -> Vec<u8> {
    let phoff = 52u32;
    let mut off = (phoff + 32 * segments.len() as u32 + 15) & !15;
    let mut out = Vec::new();
    out.extend_from_slice(b"\x7fELF\x01\x01\x01\0\0\0\0\0\0\0\0\0");
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&3u16.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&entry.to_le_bytes());
    out.extend_from_slice(&phoff.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    for h in [52u16, 32, segments.len() as u16, 40, 0, 0] {
        out.extend_from_slice(&h.to_le_bytes());
    }
    let mut offsets = Vec::new();
    for (addr, bytes, memsz) in segments {
        offsets.push(off);
        for v in [
            1,
            off,
            *addr,
            *addr,
            bytes.len() as u32,
            (*memsz).max(bytes.len() as u32),
            7,
            16,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        off = (off + bytes.len() as u32 + 15) & !15;
    }
    for ((_, bytes, _), o) in segments.iter().zip(offsets) {
        out.resize(o as usize, 0);
        out.extend_from_slice(bytes);
    }
    out
}

/// `mov ecx, n; top: <op>; dec ecx; jnz top` (nothing when `n` is 0).
fn op_loop(
    a: &mut CodeAssembler,
    op: Option<Op>,
    n: u32,
    fret: CodeLabel,
) -> Result<(), IcedError> {
    if n == 0 {
        return Ok(());
    }
    let mut top = a.create_label();
    a.mov(ecx, n)?;
    a.set_label(&mut top)?;
    match op {
        None => {}
        Some(Op::Syscall) => {
            a.xor(eax, eax)?;
            a.int(0x80)?;
        }
        Some(Op::In) => a.in_(al, 0x80)?,
        Some(Op::Cr3) => {
            a.mov(eax, PD)?;
            a.mov(cr3, eax)?;
        }
        Some(Op::CallRet) => a.call(fret)?,
        // EBX = NOT_PRESENT: `mov eax, [ebx]` is 2 bytes, which the #PF handler skips.
        Some(Op::PgFault) => a.mov(eax, dword_ptr(ebx))?,
        Some(Op::Hidden) => {
            a.mov(dword_ptr(edi), eax)?;
            a.add(edi, 0x1000)?;
        }
        // EBX = 0: `div ebx` is 2 bytes, which the #DE handler skips.
        Some(Op::DivZero) => a.div(ebx)?,
        Some(Op::PteMod) => {
            a.xor(dword_ptr(PD + 0x1000 + 4 * (PTEMOD_PAGE >> 12)), 0x20)?;
            a.invlpg(ptr(PTEMOD_PAGE))?;
        }
        // STI's interrupt shadow covers the CLI: no interrupt can come in between.
        Some(Op::CliSti) => {
            a.sti()?;
            a.cli()?;
        }
        Some(Op::PushfPopf) => {
            a.pushfd()?;
            a.popfd()?;
        }
    }
    a.dec(ecx)?;
    a.jnz(top)
}

/// The timed part: set-up, warm-up, then `reps` x (empty loop, op loop), deltas at RESULTS.
fn body(
    a: &mut CodeAssembler,
    op: Op,
    n: u32,
    reps: u32,
    warm: u32,
    fret: CodeLabel,
) -> Result<(), IcedError> {
    match op {
        Op::PgFault => a.mov(ebx, NOT_PRESENT)?,
        Op::DivZero => a.xor(ebx, ebx)?,
        Op::Hidden => a.mov(edi, HIDDEN)?,
        _ => {}
    }
    a.mov(esi, RESULTS)?;
    op_loop(a, Some(op), warm, fret)?;
    a.mov(ebp, reps)?;
    let mut rep = a.create_label();
    a.set_label(&mut rep)?;
    for o in [None, Some(op)] {
        a.rdtsc()?;
        a.mov(dword_ptr(esi), eax)?;
        a.mov(dword_ptr(esi + 4), edx)?;
        op_loop(a, o, n, fret)?;
        a.rdtsc()?;
        a.sub(eax, dword_ptr(esi))?;
        a.sbb(edx, dword_ptr(esi + 4))?;
        a.mov(dword_ptr(esi), eax)?;
        a.mov(dword_ptr(esi + 4), edx)?;
        a.add(esi, 8)?;
    }
    a.dec(ebp)?;
    a.jnz(rep)
}

/// The guest for `op`: `n` operations per timed loop, `reps` timed pairs, `warm` operations
/// first. For `Hidden`, `warm + reps * n` must not exceed [`HIDDEN_PAGES`].
pub fn image(op: Op, n: u32, reps: u32, warm: u32) -> Vec<u8> {
    assert!(n > 0 && (1..=64).contains(&reps));
    if op == Op::Hidden {
        assert!(
            warm + reps * n <= HIDDEN_PAGES,
            "too many pages for the hidden-fault region"
        );
    }
    let mut k = CodeAssembler::new(32).unwrap();
    let mut u = CodeAssembler::new(32).unwrap();
    let mut fret = k.create_label();
    let mut putc = k.create_label();
    let mut puthex = k.create_label();
    let mut report = k.create_label();
    let mut syscall = k.create_label();
    let mut skip_de = k.create_label();
    let mut skip_pf = k.create_label();
    let mut stubs = Vec::new();
    ok((|| {
        k.mov(ax, 0x10u32)?;
        k.mov(ds, ax)?;
        k.mov(es, ax)?;
        k.mov(fs, ax)?;
        k.mov(gs, ax)?;
        k.mov(ss, ax)?;
        k.mov(esp, KSTACK_TOP)?;
        k.mov(ax, 0x28u32)?;
        k.ltr(ax)?;
        // Mask both 8259s (QEMU's firmware leaves IRQ 0 unmasked).
        k.mov(al, 0xffu32)?;
        k.out(0x21, al)?;
        k.out(0xa1, al)?;
        k.mov(eax, PD)?;
        k.mov(cr3, eax)?;
        k.mov(eax, cr0)?;
        k.or(eax, 0x8000_0000u32 as i32)?;
        k.mov(cr0, eax)?;
        if op == Op::Syscall {
            k.mov(ax, 0x23u32)?;
            k.mov(ds, ax)?;
            k.mov(es, ax)?;
            k.push(0x23u32)?;
            k.push(USTACK_TOP)?;
            k.push(0x2u32)?;
            k.push(0x1bu32)?;
            k.push(UCODE)?;
            k.iretd()?;
            body(&mut u, op, n, reps, warm, fret)?;
            u.mov(eax, 1u32)?;
            u.int(0x80)?;
        } else {
            body(&mut k, op, n, reps, warm, fret)?;
            k.jmp(report)?;
        }
        k.set_label(&mut fret)?;
        k.ret()?;
        // System call: EAX = 0 returns at once; anything else reports and exits.
        k.set_label(&mut syscall)?;
        k.test(eax, eax)?;
        k.jnz(report)?;
        k.iretd()?;
        k.set_label(&mut skip_de)?;
        k.add(dword_ptr(esp), 2)?;
        k.iretd()?;
        k.set_label(&mut skip_pf)?;
        k.add(esp, 4)?;
        k.add(dword_ptr(esp), 2)?;
        k.iretd()?;
        // putc(al)
        let mut wait = k.create_label();
        k.set_label(&mut putc)?;
        k.push(edx)?;
        k.push(eax)?;
        k.mov(dx, 0x3fdu32)?;
        k.set_label(&mut wait)?;
        k.in_(al, dx)?;
        k.test(al, 0x20)?;
        k.jz(wait)?;
        k.pop(eax)?;
        k.mov(dx, 0x3f8u32)?;
        k.out(dx, al)?;
        k.pop(edx)?;
        k.ret()?;
        // puthex(eax): eight hex digits.
        let mut digit = k.create_label();
        let mut dec = k.create_label();
        k.set_label(&mut puthex)?;
        k.pushad()?;
        k.mov(ebx, eax)?;
        k.mov(ecx, 8u32)?;
        k.set_label(&mut digit)?;
        k.rol(ebx, 4)?;
        k.mov(eax, ebx)?;
        k.and(eax, 0xf)?;
        k.cmp(al, 10)?;
        k.jb(dec)?;
        k.add(al, (b'a' - b'0' - 10) as u32)?;
        k.set_label(&mut dec)?;
        k.add(al, b'0' as u32)?;
        k.call(putc)?;
        k.dec(ecx)?;
        k.jnz(digit)?;
        k.popad()?;
        k.ret()?;
        // report: "NANO" and the 2 * reps deltas, then debug-exit 0.
        let mut next = k.create_label();
        k.set_label(&mut report)?;
        for c in b"NANO" {
            k.mov(al, *c as u32)?;
            k.call(putc)?;
        }
        k.mov(esi, RESULTS)?;
        k.mov(ecx, 2 * reps)?;
        k.set_label(&mut next)?;
        k.mov(al, b' ' as u32)?;
        k.call(putc)?;
        k.mov(eax, dword_ptr(esi + 4))?;
        k.call(puthex)?;
        k.mov(eax, dword_ptr(esi))?;
        k.call(puthex)?;
        k.add(esi, 8)?;
        k.dec(ecx)?;
        k.jnz(next)?;
        k.mov(al, b'\n' as u32)?;
        k.call(putc)?;
        k.mov(al, 0u32)?;
        k.out(0xf4, al)?;
        k.hlt()?;
        // Unexpected exceptions: debug-exit 0x40 + vector.
        for v in 0u32..32 {
            let mut l = k.create_label();
            k.set_label(&mut l)?;
            k.mov(al, 0x40 + v)?;
            k.out(0xf4, al)?;
            k.hlt()?;
            stubs.push(l);
        }
        Ok(())
    })());

    let mut p = CodeAssembler::new(32).unwrap();
    ok((|| {
        let magic = 0x1bad_b002u32;
        let flags = 0x2u32;
        p.dd(&[magic, flags, 0u32.wrapping_sub(magic).wrapping_sub(flags)])?;
        p.lgdt(ptr(GDTR))?;
        p.lidt(ptr(IDTR))?;
        p.add_instruction(iced_x86::Instruction::with_far_branch(
            iced_x86::Code::Jmp_ptr1632,
            0x08,
            KMAIN,
        )?)
    })());
    let mut text = p.assemble(KBASE as u64).unwrap();
    assert!(text.len() <= (KMAIN - KBASE) as usize);
    text.resize((KMAIN - KBASE) as usize, 0x90);
    let r = k
        .assemble_options(
            KMAIN as u64,
            BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
        )
        .unwrap();
    text.extend_from_slice(&r.inner.code_buffer);
    assert!(text.len() < (DATA - KBASE) as usize);
    let at = |l: &CodeLabel| r.label_ip(l).unwrap() as u32;

    // IDT: the stubs, the skipping handlers this benchmark expects, the system call gate.
    let mut idt = vec![0u8; 256 * 8];
    let mut gate = |v: usize, addr: u32, dpl: u32| {
        let lo = (0x08u32 << 16) | (addr & 0xffff);
        let hi = (addr & 0xffff_0000) | 0x8e00 | (dpl << 13);
        idt[v * 8..v * 8 + 4].copy_from_slice(&lo.to_le_bytes());
        idt[v * 8 + 4..v * 8 + 8].copy_from_slice(&hi.to_le_bytes());
    };
    for (v, l) in stubs.iter().enumerate() {
        gate(v, at(l), 0);
    }
    if op == Op::DivZero {
        gate(0, at(&skip_de), 0);
    }
    if op == Op::PgFault {
        gate(14, at(&skip_pf), 0);
    }
    gate(0x80, at(&syscall), 3);

    let mut data = vec![0u8; (DATA_END - DATA) as usize];
    let gdt = [
        0u64,
        descriptor(0, 0xfffff, 0x9a, 0xc),
        descriptor(0, 0xfffff, 0x92, 0xc),
        descriptor(0, 0xfffff, 0xfa, 0xc),
        descriptor(0, 0xfffff, 0xf2, 0xc),
        descriptor(TSS, 0x67, 0x89, 0),
    ];
    for (i, d) in gdt.iter().enumerate() {
        data[i * 8..i * 8 + 8].copy_from_slice(&d.to_le_bytes());
    }
    let put = |data: &mut Vec<u8>, at: u32, b: &[u8]| {
        let o = (at - DATA) as usize;
        data[o..o + b.len()].copy_from_slice(b);
    };
    put(&mut data, GDTR, &((gdt.len() * 8 - 1) as u16).to_le_bytes());
    put(&mut data, GDTR + 2, &GDT.to_le_bytes());
    put(&mut data, IDTR, &0x7ffu16.to_le_bytes());
    put(&mut data, IDTR + 2, &IDT.to_le_bytes());
    put(&mut data, TSS + 4, &KSTACK_TOP.to_le_bytes());
    put(&mut data, TSS + 8, &0x10u32.to_le_bytes());
    put(&mut data, TSS + 0x66, &0x68u16.to_le_bytes());
    put(&mut data, IDT, &idt);

    // Page directory and tables: [0, 4 MiB) and the hidden region, identity, user + write.
    let tables = 1 + (HIDDEN_PAGES as usize).div_ceil(1024);
    let mut pt = vec![0u32; 1024 * (1 + tables)];
    for t in 0..tables {
        pt[t] = (PD + 0x1000 * (t as u32 + 1)) | 7;
        for i in 0..1024 {
            let page = (t * 1024 + i) as u32;
            if page == 0 || page == NOT_PRESENT >> 12 {
                continue;
            }
            if page >= 1024 && page - 1024 >= HIDDEN_PAGES {
                break;
            }
            pt[1024 * (t + 1) + i] = (page << 12) | 7;
        }
    }
    let pt: Vec<u8> = pt.iter().flat_map(|e| e.to_le_bytes()).collect();

    let user = u.assemble(UCODE as u64).unwrap();
    assert!(user.len() < (RESULTS - UCODE) as usize);
    elf32(
        KBASE + 12,
        &[
            (KBASE, text, 0),
            (DATA, data, 0),
            (PD, pt, 0),
            (KSTACK_BOTTOM, Vec::new(), KSTACK_TOP - KSTACK_BOTTOM),
            (UCODE, user, 0),
            (RESULTS, Vec::new(), USTACK_TOP - RESULTS),
        ],
    )
}

/// The (empty, op) TSC deltas of a guest's `NANO` line.
pub fn parse(serial: &str) -> Option<Vec<(u64, u64)>> {
    // QEMU's firmware prints its banner on the same line, before ours.
    let line = serial
        .lines()
        .find_map(|l| l.find("NANO").map(|i| &l[i + 4..]))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .map(|w| u64::from_str_radix(w, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    if v.is_empty() || !v.len().is_multiple_of(2) {
        return None;
    }
    Some(v.chunks(2).map(|c| (c[0], c[1])).collect())
}
