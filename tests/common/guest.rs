//! Building Multiboot test guests: an ELF32 writer, a GDT/IDT/TSS and page-table builder, and a
//! small kernel framework (entry, segment set-up, serial output routines, system calls, a trip
//! to CPL 3) on which each test writes only what it tests. All code is assembled with iced-x86
//! `code_asm`; the tables are built in Rust from the assembled label addresses.
//!
//! Physical layout (paging off, or identity-mapped by the tests that turn it on):
//!
//! | address | what |
//! |---|---|
//! | 0x100000 | Multiboot header and entry (the prologue), then the kernel's code at [`KERNEL_MAIN`] |
//! | 0x110000 | GDT, GDTR/IDTR pseudo-descriptors, TSS, IDT, kernel strings, kernel variables |
//! | 0x120000 | page directory, then page tables (when the test builds them) |
//! | 0x130000 | kernel stack (grows down from 0x140000) |
//! | 0x300000 | user code; user strings at 0x308000; user stack below 0x310000 |
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

use iced_x86::code_asm::*;
use iced_x86::BlockEncoderOptions;

pub const KERNEL_BASE: u32 = 0x10_0000;
pub const KERNEL_MAIN: u32 = KERNEL_BASE + 0x40;
pub const DATA: u32 = 0x11_0000;
pub const GDT: u32 = DATA;
pub const GDTR: u32 = DATA + 0x80;
pub const IDTR: u32 = DATA + 0x88;
pub const TSS: u32 = DATA + 0x100;
pub const IDT: u32 = DATA + 0x1000;
pub const STRINGS: u32 = DATA + 0x2000;
/// Kernel variables (zeroed): tests use `VARS + 4 * n`.
pub const VARS: u32 = DATA + 0x4000;
/// EAX and EBX as the boot loader left them (saved by the prologue).
pub const BOOT_EAX: u32 = VARS + 0xf00;
pub const BOOT_EBX: u32 = VARS + 0xf04;
const DATA_END: u32 = DATA + 0x5000;
pub const PAGE_DIR: u32 = 0x12_0000;
pub const PAGE_TABLES: u32 = 0x12_1000;
pub const KSTACK_BOTTOM: u32 = 0x13_0000;
pub const KSTACK_TOP: u32 = 0x14_0000;
pub const USER_BASE: u32 = 0x30_0000;
pub const USER_DATA: u32 = 0x30_8000;
pub const USER_STACK_TOP: u32 = 0x31_0000;

pub const KCODE: u16 = 0x08;
pub const KDATA: u16 = 0x10;
pub const UCODE: u16 = 0x1b;
pub const UDATA: u16 = 0x23;
pub const TSS_SEL: u16 = 0x28;

/// The status word tests' kernels write to the debug-exit port when all went well.
pub const OK: u8 = 0x10;
/// What `vmm` exits with for [`OK`]: `(0x10 << 1) | 1`.
pub const OK_STATUS: i32 = 0x21;
/// Written by the default handler of an unexpected exception.
pub const UNEXPECTED: u8 = 0x3f;

pub const PTE_P: u32 = 1;
pub const PTE_W: u32 = 2;
pub const PTE_U: u32 = 4;
pub const PDE_PS: u32 = 0x80;

/// A minimal ELF32 i386 executable: header, one program header per segment, then the bytes.
/// `segments`: (physical = virtual address, file bytes, memory size).
pub fn elf32(entry: u32, segments: &[(u32, Vec<u8>, u32)]) -> Vec<u8> {
    let phoff = 52u32;
    let mut data_off = (phoff + 32 * segments.len() as u32 + 15) & !15;
    let mut out = Vec::new();
    out.extend_from_slice(b"\x7fELF\x01\x01\x01\0\0\0\0\0\0\0\0\0");
    out.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    out.extend_from_slice(&3u16.to_le_bytes()); // EM_386
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&entry.to_le_bytes());
    out.extend_from_slice(&phoff.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // no section headers
    out.extend_from_slice(&0u32.to_le_bytes());
    for h in [52u16, 32, segments.len() as u16, 40, 0, 0] {
        out.extend_from_slice(&h.to_le_bytes());
    }
    let mut offsets = Vec::new();
    for (addr, bytes, memsz) in segments {
        offsets.push(data_off);
        // PT_LOAD, offset, vaddr, paddr, filesz, memsz, flags RWX, align.
        for v in [
            1,
            data_off,
            *addr,
            *addr,
            bytes.len() as u32,
            (*memsz).max(bytes.len() as u32),
            7,
            16,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        data_off = (data_off + bytes.len() as u32 + 15) & !15;
    }
    for ((_, bytes, _), off) in segments.iter().zip(offsets) {
        out.resize(off as usize, 0);
        out.extend_from_slice(bytes);
    }
    out
}

/// The Multiboot 1 header: magic, flags (bit 1: memory information wanted), checksum.
pub fn multiboot_header() -> [u32; 3] {
    let magic = 0x1bad_b002u32;
    let flags = 0x2u32;
    [magic, flags, 0u32.wrapping_sub(magic).wrapping_sub(flags)]
}

/// A 32-bit segment descriptor.
pub fn descriptor(base: u32, limit: u32, access: u8, flags: u8) -> u64 {
    (limit as u64 & 0xffff)
        | ((base as u64 & 0xff_ffff) << 16)
        | ((access as u64) << 40)
        | (((limit as u64 >> 16) & 0xf) << 48)
        | (((flags as u64) & 0xf) << 52)
        | (((base as u64) >> 24) << 56)
}

/// Two-level 32-bit page tables, built in Rust and loaded at [`PAGE_DIR`].
#[derive(Clone, Debug)]
pub struct Paging {
    pub pd: Vec<u32>,
    /// (directory index, entries); table `i` lives at `PAGE_TABLES + i * 0x1000`.
    tables: Vec<(usize, Vec<u32>)>,
}

impl Default for Paging {
    fn default() -> Self {
        Paging::new()
    }
}

impl Paging {
    pub fn new() -> Paging {
        Paging {
            pd: vec![0; 1024],
            tables: Vec::new(),
        }
    }

    /// The page table covering `lin` (created empty, all not present, if needed). Returns its
    /// physical address. Its directory entry allows everything: the PTEs decide.
    pub fn table(&mut self, lin: u32) -> u32 {
        let pdi = (lin >> 22) as usize;
        let i = match self.tables.iter().position(|(d, _)| *d == pdi) {
            Some(i) => i,
            None => {
                self.tables.push((pdi, vec![0; 1024]));
                self.tables.len() - 1
            }
        };
        let addr = PAGE_TABLES + 0x1000 * i as u32;
        self.pd[pdi] = addr | PTE_P | PTE_W | PTE_U;
        addr
    }

    pub fn map_4k(&mut self, lin: u32, phys: u32, flags: u32) {
        self.table(lin);
        let pdi = (lin >> 22) as usize;
        let t = self
            .tables
            .iter_mut()
            .find(|(d, _)| *d == pdi)
            .map(|(_, t)| t)
            .unwrap();
        t[((lin >> 12) & 0x3ff) as usize] = (phys & !0xfff) | flags;
    }

    pub fn identity_4k(&mut self, start: u32, end: u32, flags: u32) {
        let mut a = start & !0xfff;
        while a < end {
            self.map_4k(a, a, flags);
            a += 0x1000;
        }
    }

    pub fn map_4m(&mut self, lin: u32, phys: u32, flags: u32) {
        self.pd[(lin >> 22) as usize] = (phys & 0xffc0_0000) | flags | PDE_PS;
    }

    /// The physical address of the PTE for `lin` (its table must exist).
    pub fn pte_addr(&self, lin: u32) -> u32 {
        let pdi = (lin >> 22) as usize;
        let i = self
            .tables
            .iter()
            .position(|(d, _)| *d == pdi)
            .expect("no page table for this address");
        PAGE_TABLES + 0x1000 * i as u32 + 4 * ((lin >> 12) & 0x3ff)
    }

    fn blob(&self) -> Vec<u8> {
        let mut out: Vec<u8> = self.pd.iter().flat_map(|e| e.to_le_bytes()).collect();
        for (_, t) in &self.tables {
            out.extend(t.iter().flat_map(|e| e.to_le_bytes()));
        }
        out
    }
}

/// The usual paging for these guests: the first 4 MiB identity-mapped with 4 KiB pages,
/// supervisor-only except the user area (code and strings read-only, stack writable).
pub fn standard_paging() -> Paging {
    let mut p = Paging::new();
    p.identity_4k(0, 0x40_0000, PTE_P | PTE_W);
    p.identity_4k(USER_BASE, USER_DATA + 0x1000, PTE_P | PTE_U);
    p.identity_4k(
        USER_STACK_TOP - 0x4000,
        USER_STACK_TOP,
        PTE_P | PTE_W | PTE_U,
    );
    p
}

/// An IDT gate to install: vector, handler, DPL, trap (true) or interrupt gate.
struct Gate {
    vector: u8,
    handler: CodeLabel,
    dpl: u8,
    trap: bool,
}

/// A test kernel being written.
pub struct Guest {
    /// Kernel code, assembled at [`KERNEL_MAIN`]; execution starts at its first instruction
    /// with the GDT, IDT and TSS loaded and the segment registers reloaded.
    pub k: CodeAssembler,
    /// User code, assembled at [`USER_BASE`].
    pub u: CodeAssembler,
    /// `puts`: print the NUL-terminated string at ESI on COM1 (clobbers EAX, EDX, ESI).
    pub puts: CodeLabel,
    /// `puthex`: print EAX as `0x` and eight hex digits (preserves all but EFLAGS).
    pub puthex: CodeLabel,
    strings: Vec<u8>,
    ustrings: Vec<u8>,
    gates: Vec<Gate>,
    pub paging: Option<Paging>,
    /// The IDT limit loaded by the prologue.
    pub idt_limit: u16,
    syscalls: bool,
}

fn check(r: Result<(), IcedError>) {
    r.expect("assembling a test guest")
}

impl Guest {
    pub fn new() -> Guest {
        let mut k = CodeAssembler::new(32).unwrap();
        let u = CodeAssembler::new(32).unwrap();
        let puts = k.create_label();
        let puthex = k.create_label();
        // Reload every segment register from the new GDT and load the task register.
        check((|| {
            k.mov(ax, KDATA as u32)?;
            k.mov(ds, ax)?;
            k.mov(es, ax)?;
            k.mov(fs, ax)?;
            k.mov(gs, ax)?;
            k.mov(ss, ax)?;
            k.mov(esp, KSTACK_TOP)?;
            k.mov(ax, TSS_SEL as u32)?;
            k.ltr(ax)
        })());
        Guest {
            k,
            u,
            puts,
            puthex,
            strings: Vec::new(),
            ustrings: Vec::new(),
            gates: Vec::new(),
            paging: None,
            idt_limit: 0x7ff,
            syscalls: false,
        }
    }

    /// A NUL-terminated kernel string; returns its address.
    pub fn kstr(&mut self, s: &str) -> u32 {
        let a = STRINGS + self.strings.len() as u32;
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        assert!(self.strings.len() < 0x2000, "kernel strings overflow");
        a
    }

    /// A user string; returns (address, length without the NUL).
    pub fn ustr(&mut self, s: &str) -> (u32, u32) {
        let a = USER_DATA + self.ustrings.len() as u32;
        self.ustrings.extend_from_slice(s.as_bytes());
        self.ustrings.push(0);
        (a, s.len() as u32)
    }

    /// Kernel: print `s`.
    pub fn print(&mut self, s: &str) {
        let a = self.kstr(s);
        let puts = self.puts;
        check((|| {
            self.k.mov(esi, a)?;
            self.k.call(puts)
        })());
    }

    /// Kernel: print EAX in hex.
    pub fn print_eax(&mut self) {
        let l = self.puthex;
        check(self.k.call(l));
    }

    /// Kernel: write `v` to the debug-exit port (the run ends there).
    pub fn exit(&mut self, v: u8) {
        check((|| {
            self.k.mov(al, v as u32)?;
            self.k.out(0xf4, al)?;
            self.k.hlt()
        })());
    }

    /// The kernel code that follows is the handler of `vector`, through an interrupt gate
    /// (IF cleared on entry) of privilege `dpl`.
    pub fn interrupt_handler(&mut self, vector: u8, dpl: u8) {
        let mut l = self.k.create_label();
        check(self.k.set_label(&mut l));
        self.gates.push(Gate {
            vector,
            handler: l,
            dpl,
            trap: false,
        });
    }

    /// The kernel code that follows is the handler of `vector`, through a trap gate (IF
    /// unchanged) of privilege `dpl`.
    pub fn trap_handler(&mut self, vector: u8, dpl: u8) {
        let mut l = self.k.create_label();
        check(self.k.set_label(&mut l));
        self.gates.push(Gate {
            vector,
            handler: l,
            dpl,
            trap: true,
        });
    }

    /// `int 0x80` system calls for the user task: EAX = 1: write(EBX = buffer, ECX = length);
    /// EAX = 2: exit(EBX = debug-exit value). A DPL 3 interrupt gate.
    pub fn install_syscalls(&mut self) {
        self.syscalls = true;
    }

    /// User: write `s` through system call 1.
    pub fn user_print(&mut self, s: &str) {
        let (a, n) = self.ustr(s);
        check((|| {
            self.u.mov(eax, 1u32)?;
            self.u.mov(ebx, a)?;
            self.u.mov(ecx, n)?;
            self.u.int(0x80)
        })());
    }

    /// User: exit through system call 2 with debug-exit value `v`.
    pub fn user_exit(&mut self, v: u8) {
        check((|| {
            self.u.mov(eax, 2u32)?;
            self.u.mov(ebx, v as u32)?;
            self.u.int(0x80)
        })());
    }

    /// User: a counted loop, `mov edi, n; xor esi, esi; top: body; dec edi; jnz top` (ESI is
    /// the body's accumulator).
    pub fn user_loop(
        &mut self,
        n: u32,
        body: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
    ) {
        let u = &mut self.u;
        check((|| {
            let mut top = u.create_label();
            u.mov(edi, n)?;
            u.xor(esi, esi)?;
            u.set_label(&mut top)?;
            body(u)?;
            u.dec(edi)?;
            u.jnz(top)
        })());
    }

    /// User: if the flags say equal (the last CMP matched), print `s` and exit with [`OK`];
    /// otherwise exit with 0x55.
    pub fn user_pass_if_equal(&mut self, s: &str) {
        let mut bad = self.u.create_label();
        check(self.u.jne(bad));
        self.user_print(s);
        self.user_exit(OK);
        check(self.u.set_label(&mut bad));
        self.user_exit(0x55);
    }

    /// Kernel: load the page directory, set CR4.PSE if `pse`, and CR0.PG (and CR0.WP if `wp`).
    pub fn enable_paging(&mut self, pse: bool, wp: bool) {
        check((|| {
            self.k.mov(eax, PAGE_DIR)?;
            self.k.mov(cr3, eax)?;
            if pse {
                self.k.mov(eax, cr4)?;
                self.k.or(eax, 0x10)?;
                self.k.mov(cr4, eax)?;
            }
            self.k.mov(eax, cr0)?;
            self.k.or(
                eax,
                if wp {
                    0x8001_0000u32 as i32
                } else {
                    0x8000_0000u32 as i32
                },
            )?;
            self.k.mov(cr0, eax)
        })());
    }

    /// Kernel: drop to the user task at [`USER_BASE`] with IRET (EFLAGS = `eflags`).
    pub fn enter_user(&mut self, eflags: u32) {
        check((|| {
            self.k.mov(ax, UDATA as u32)?;
            self.k.mov(ds, ax)?;
            self.k.mov(es, ax)?;
            self.k.push(UDATA as u32)?;
            self.k.push(USER_STACK_TOP)?;
            self.k.push(eflags)?;
            self.k.push(UCODE as u32)?;
            self.k.push(USER_BASE)?;
            self.k.iretd()
        })());
    }

    fn emit_routines(&mut self) -> Vec<(u8, CodeLabel)> {
        let k = &mut self.k;
        let mut defaults = Vec::new();
        let (mut puts, mut puthex) = (self.puts, self.puthex);
        let unexpected_msg = {
            let a = STRINGS + self.strings.len() as u32;
            self.strings
                .extend_from_slice(b"[kernel] unexpected exception, vector \0");
            a
        };
        let at_msg = {
            let a = STRINGS + self.strings.len() as u32;
            self.strings.extend_from_slice(b" at eip \0");
            a
        };
        let nl = {
            let a = STRINGS + self.strings.len() as u32;
            self.strings.extend_from_slice(b"\r\n\0");
            a
        };
        let syscalls = self.syscalls;
        let mut syscall_gate = None;
        check((|| {
            // Falling off the end of the test's kernel code stops the CPU.
            k.cli()?;
            k.hlt()?;
            // puts(esi)
            let mut wait = k.create_label();
            let mut done = k.create_label();
            k.set_label(&mut puts)?;
            k.mov(dx, 0x3fdu32)?;
            k.set_label(&mut wait)?;
            k.in_(al, dx)?;
            k.test(al, 0x20)?;
            k.jz(wait)?;
            k.lodsb()?;
            k.test(al, al)?;
            k.jz(done)?;
            k.mov(dx, 0x3f8u32)?;
            k.out(dx, al)?;
            k.jmp(puts)?;
            k.set_label(&mut done)?;
            k.ret()?;
            // puthex(eax)
            let mut digit = k.create_label();
            let mut lp = k.create_label();
            k.set_label(&mut puthex)?;
            k.pushad()?;
            k.mov(ebx, eax)?;
            k.mov(dx, 0x3f8u32)?;
            k.mov(al, b'0' as u32)?;
            k.out(dx, al)?;
            k.mov(al, b'x' as u32)?;
            k.out(dx, al)?;
            k.mov(ecx, 8u32)?;
            k.set_label(&mut lp)?;
            k.rol(ebx, 4)?;
            k.mov(al, bl)?;
            k.and(al, 0xf)?;
            k.add(al, b'0' as i32)?;
            k.cmp(al, b'9' as i32)?;
            k.jbe(digit)?;
            k.add(al, 7)?;
            k.set_label(&mut digit)?;
            k.out(dx, al)?;
            k.dec(ecx)?;
            k.jnz(lp)?;
            k.popad()?;
            k.ret()?;
            // Default exception handlers: report the vector and the EIP, exit UNEXPECTED.
            let mut common = k.create_label();
            for v in 0u8..32 {
                let mut l = k.create_label();
                k.set_label(&mut l)?;
                // Vectors with an error code: drop it so the frame is uniform.
                if matches!(v, 8 | 10..=14 | 17) {
                    k.add(esp, 4)?;
                }
                k.push(v as u32)?;
                k.jmp(common)?;
                defaults.push((v, l));
            }
            k.set_label(&mut common)?;
            k.mov(esi, unexpected_msg)?;
            k.call(puts)?;
            k.pop(eax)?;
            k.call(puthex)?;
            k.mov(esi, at_msg)?;
            k.call(puts)?;
            k.pop(eax)?;
            k.call(puthex)?;
            k.mov(esi, nl)?;
            k.call(puts)?;
            k.mov(al, UNEXPECTED as u32)?;
            k.out(0xf4, al)?;
            k.hlt()?;
            // System calls.
            if syscalls {
                let mut l = k.create_label();
                let mut write = k.create_label();
                let mut out = k.create_label();
                let mut ret = k.create_label();
                let mut wait = k.create_label();
                let mut wdone = k.create_label();
                k.set_label(&mut l)?;
                syscall_gate = Some(l);
                k.cmp(eax, 1)?;
                k.je(write)?;
                k.cmp(eax, 2)?;
                k.jne(ret)?;
                k.mov(eax, ebx)?;
                k.out(0xf4, al)?;
                k.hlt()?;
                k.set_label(&mut ret)?;
                k.iretd()?;
                k.set_label(&mut write)?;
                k.pushad()?;
                k.set_label(&mut out)?;
                k.jecxz(wdone)?;
                k.mov(dx, 0x3fdu32)?;
                k.set_label(&mut wait)?;
                k.in_(al, dx)?;
                k.test(al, 0x20)?;
                k.jz(wait)?;
                k.mov(al, byte_ptr(ebx))?;
                k.mov(dx, 0x3f8u32)?;
                k.out(dx, al)?;
                k.inc(ebx)?;
                k.dec(ecx)?;
                k.jmp(out)?;
                k.set_label(&mut wdone)?;
                k.popad()?;
                k.iretd()?;
            }
            Ok(())
        })());
        if let Some(l) = syscall_gate {
            self.gates.push(Gate {
                vector: 0x80,
                handler: l,
                dpl: 3,
                trap: false,
            });
        }
        defaults
    }

    /// Assemble and package as a Multiboot ELF image.
    pub fn build(mut self) -> Vec<u8> {
        let defaults = self.emit_routines();
        // The prologue: header, save EAX/EBX, LGDT, LIDT, far jump to reload CS.
        let mut p = CodeAssembler::new(32).unwrap();
        check((|| {
            for d in multiboot_header() {
                p.dd(&[d])?;
            }
            p.mov(dword_ptr(BOOT_EAX), eax)?;
            p.mov(dword_ptr(BOOT_EBX), ebx)?;
            p.lgdt(ptr(GDTR))?;
            p.lidt(ptr(IDTR))?;
            p.add_instruction(iced_x86::Instruction::with_far_branch(
                iced_x86::Code::Jmp_ptr1632,
                KCODE,
                KERNEL_MAIN,
            )?)
        })());
        let mut prologue = p.assemble(KERNEL_BASE as u64).unwrap();
        assert!(prologue.len() <= (KERNEL_MAIN - KERNEL_BASE) as usize);
        prologue.resize((KERNEL_MAIN - KERNEL_BASE) as usize, 0x90);
        let r = self
            .k
            .assemble_options(
                KERNEL_MAIN as u64,
                BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
            )
            .unwrap();
        let kcode = r.inner.code_buffer.clone();
        assert!(kcode.len() < 0xffc0, "kernel code too large");
        let mut text = prologue;
        text.extend_from_slice(&kcode);

        // IDT: defaults first, then the test's gates over them.
        let mut idt = vec![0u8; 256 * 8];
        let mut put = |vector: u8, addr: u32, dpl: u8, trap: bool| {
            let ty: u32 = if trap { 0x8f00 } else { 0x8e00 } | ((dpl as u32 & 3) << 13);
            let lo = ((KCODE as u32) << 16) | (addr & 0xffff);
            let hi = (addr & 0xffff_0000) | ty;
            idt[vector as usize * 8..vector as usize * 8 + 4].copy_from_slice(&lo.to_le_bytes());
            idt[vector as usize * 8 + 4..vector as usize * 8 + 8]
                .copy_from_slice(&hi.to_le_bytes());
        };
        for (v, l) in &defaults {
            put(*v, r.label_ip(l).unwrap() as u32, 0, false);
        }
        for g in &self.gates {
            put(
                g.vector,
                r.label_ip(&g.handler).unwrap() as u32,
                g.dpl,
                g.trap,
            );
        }

        // GDT, pseudo-descriptors, TSS, IDT, strings.
        let mut data = vec![0u8; (STRINGS - DATA) as usize];
        let gdt = [
            0u64,
            descriptor(0, 0xfffff, 0x9a, 0xc),
            descriptor(0, 0xfffff, 0x92, 0xc),
            descriptor(0, 0xfffff, 0xfa, 0xc),
            descriptor(0, 0xfffff, 0xf2, 0xc),
            descriptor(TSS, 0x67, 0x89, 0x0),
        ];
        for (i, d) in gdt.iter().enumerate() {
            data[i * 8..i * 8 + 8].copy_from_slice(&d.to_le_bytes());
        }
        let off = (GDTR - DATA) as usize;
        data[off..off + 2].copy_from_slice(&((gdt.len() * 8 - 1) as u16).to_le_bytes());
        data[off + 2..off + 6].copy_from_slice(&GDT.to_le_bytes());
        let off = (IDTR - DATA) as usize;
        data[off..off + 2].copy_from_slice(&self.idt_limit.to_le_bytes());
        data[off + 2..off + 6].copy_from_slice(&IDT.to_le_bytes());
        let off = (TSS - DATA) as usize;
        data[off + 4..off + 8].copy_from_slice(&KSTACK_TOP.to_le_bytes()); // ESP0
        data[off + 8..off + 12].copy_from_slice(&(KDATA as u32).to_le_bytes()); // SS0
        data[off + 0x66..off + 0x68].copy_from_slice(&0x68u16.to_le_bytes()); // no I/O bitmap
        let off = (IDT - DATA) as usize;
        data[off..off + idt.len()].copy_from_slice(&idt);
        data.extend_from_slice(&self.strings);

        let user = self.u.assemble(USER_BASE as u64).unwrap();
        assert!(user.len() < (USER_DATA - USER_BASE) as usize);

        let mut segments = vec![
            (KERNEL_BASE, text, 0),
            (DATA, data, DATA_END - DATA),
            (KSTACK_BOTTOM, Vec::new(), KSTACK_TOP - KSTACK_BOTTOM),
            (USER_BASE, user, 0),
            (
                USER_DATA,
                self.ustrings.clone(),
                (USER_STACK_TOP - USER_DATA),
            ),
        ];
        if let Some(p) = &self.paging {
            segments.push((PAGE_DIR, p.blob(), 0));
        }
        elf32(KERNEL_BASE + 12, &segments)
    }
}

impl Default for Guest {
    fn default() -> Self {
        Guest::new()
    }
}

/// Write `image` to a temporary file and run `vmm run <file> <args>`.
pub fn run_vmm(image: &[u8], args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kernel.elf");
    std::fs::write(&path, image).unwrap();
    // Debugging aid: VMM_KEEP_GUEST=<file> keeps a copy of the last image run.
    if let Some(keep) = std::env::var_os("VMM_KEEP_GUEST") {
        let _ = std::fs::write(keep, image);
    }
    run_vmm_path(&path, args)
}

pub fn run_vmm_path(path: &std::path::Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(vmm_bin());
    cmd.arg("run").arg(path).args(args);
    cmd.output().expect("running vmm")
}

pub fn vmm_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vmm"))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
