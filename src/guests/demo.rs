//! The built-in demo guest, assembled in Rust with iced-x86 `code_asm`.
//!
//! It narrates on COM1 what it does: starts in real mode, enters protected mode, turns paging
//! on (4 KiB pages and a 4 MiB page), loads an IDT and a TSS, drops to a user task with IRET;
//! the user task makes `int 0x80` system calls, takes a demand-paging fault that the kernel
//! resolves, asks the kernel to start the timer and waits for three timer interrupts (8254
//! channel 0 at 100 Hz through the 8259A on IRQ 0), which the kernel narrates as they
//! interrupt the user task, and finally tries CLI, which at CPL 3 raises #GP: the kernel
//! reports it and powers off through the debug-exit port with the built-in guests' success
//! code.

use iced_x86::code_asm::*;
use iced_x86::{Code, Instruction};
use vmm_interp::state::{SegReg, Segment, TableReg};
use vmm_interp::CpuState;

/// Written to the debug-exit port by built-in guests that end as planned.
pub const SUCCESS: u8 = 0x10;

/// Physical (= kernel linear) layout.
const GDT: u32 = 0x500;
const GDTR: u32 = 0x600;
const IDT: u32 = 0x1000;
const TSS: u32 = 0x1800;
const PD: u32 = 0x2000;
const PT: u32 = 0x3000;
const KSTACK: u32 = 0x7000;
const REAL_ENTRY: u32 = 0x7c00;
const KERNEL: u32 = 0x8000;
const SYS_HANDLER: u32 = 0x8a00;
const TIMER_HANDLER: u32 = 0x8900;
/// The kernel's tick counter.
const TICKS: u32 = 0x6000;
/// Timer ticks the user task waits for.
const TICKS_WANTED: u32 = 3;
/// 8254 count for 100 Hz: 1193182 / 100.
const PIT_100HZ: u32 = 11932;
const PF_HANDLER: u32 = 0x8500;
const GP_HANDLER: u32 = 0x8600;
const PUTS: u32 = 0x8700;
const PUTHEX: u32 = 0x8800;
const KSTRINGS: u32 = 0x9000;
const USER: u32 = 0x20000;
const USTRINGS: u32 = 0x21000;
const USTACK: u32 = 0x22000;
const DEMAND: u32 = 0x30000;
const DEMAND_FRAME: u32 = 0x31000;
const BIG_PAGE: u32 = 0x40_0000;

pub const RAM_BYTES: usize = 8 << 20;

/// A guest image: bytes to load at physical addresses, and the state to start from.
pub struct Image {
    pub chunks: Vec<(u32, Vec<u8>)>,
    pub state: CpuState,
}

struct Strings {
    base: u32,
    bytes: Vec<u8>,
}

impl Strings {
    fn new(base: u32) -> Strings {
        Strings {
            base,
            bytes: Vec::new(),
        }
    }
    /// Add a NUL-terminated string; returns its address.
    fn add(&mut self, s: &str) -> u32 {
        let a = self.base + self.bytes.len() as u32;
        self.bytes.extend_from_slice(s.as_bytes());
        self.bytes.push(0);
        a
    }
}

fn asm_err(e: IcedError) -> String {
    format!("assembling the demo guest: {e}")
}

/// Poll the UART's line status register, then write AL to THR.
fn putc(a: &mut CodeAssembler) -> Result<(), IcedError> {
    let mut wait = a.create_label();
    a.push(eax)?;
    a.mov(dx, 0x3fdu32)?;
    a.set_label(&mut wait)?;
    a.in_(al, dx)?;
    a.test(al, 0x20)?;
    a.jz(wait)?;
    a.pop(eax)?;
    a.mov(dx, 0x3f8u32)?;
    a.out(dx, al)
}

pub fn image() -> Result<Image, String> {
    let mut ks = Strings::new(KSTRINGS);
    let s_real = ks.add("[real mode] vmm demo guest: hello from 16-bit real mode at 0000:7c00\r\n");
    let s_enter_pm = ks.add("[real mode] LGDT, set CR0.PE, far jump to a 32-bit code segment\r\n");
    let s_pm = ks.add("[kernel] protected mode, CPL 0, flat 4 GiB segments\r\n");
    let s_paging =
        ks.add("[kernel] paging on: 4 KiB pages below 4 MiB, one 4 MiB page (CR4.PSE), CR0.WP\r\n");
    let s_big = ks.add("[kernel] wrote and read back through the 4 MiB page at 0x00400000\r\n");
    let s_user = ks.add("[kernel] IDT and TSS loaded; IRET to the user task at CPL 3\r\n");
    let s_pf1 = ks.add("[kernel] page fault at ");
    let s_pf2 = ks.add(", error code ");
    let s_pf3 = ks.add(": demand paging maps a fresh frame\r\n");
    let s_gp1 = ks.add("[kernel] #GP from user mode at eip ");
    let s_gp2 = ks.add(": CLI is privileged at CPL 3, the task is stopped\r\n");
    let s_off = ks.add("[kernel] powering off through the debug-exit port\r\n");
    let s_timer = ks.add("[kernel] 8259A PICs at vectors 0x20-0x2f, 8254 channel 0 at 100 Hz (IRQ 0 masked for now)\r\n");
    let s_tick1 = ks.add("[kernel] timer interrupt (IRQ 0, vector 0x20), tick ");
    let s_tick_user = ks.add(": it interrupted the user task at CPL 3\r\n");
    let s_tick_kernel = ks.add(": it interrupted the kernel at CPL 0\r\n");
    let mut us = Strings::new(USTRINGS);
    let u1 = "[user] hello from CPL 3 through an int 0x80 system call\r\n";
    let u2 = "[user] wrote 0x1234abcd to a page that was not mapped, and read it back\r\n";
    let u3 = "[user] now trying CLI...\r\n";
    let u4 = "[user] asking the kernel to start the timer, then waiting for 3 ticks\r\n";
    let u5 = "[user] the kernel counted 3 timer ticks while I ran; timer stopped\r\n";
    let (a1, a2, a3) = (us.add(u1), us.add(u2), us.add(u3));
    let (a4, a5) = (us.add(u4), us.add(u5));

    // ---- 16-bit real-mode entry ----
    let mut r = CodeAssembler::new(16).map_err(asm_err)?;
    (|| -> Result<(), IcedError> {
        let mut puts = r.create_label();
        let mut done = r.create_label();
        r.cli()?;
        r.xor(ax, ax)?;
        r.mov(ds, ax)?;
        r.mov(ss, ax)?;
        r.mov(sp, KSTACK)?;
        r.mov(si, s_real)?;
        r.call(puts)?;
        r.mov(si, s_enter_pm)?;
        r.call(puts)?;
        r.lgdt(ptr(GDTR))?;
        r.mov(eax, cr0)?;
        r.or(eax, 1)?;
        r.mov(cr0, eax)?;
        r.add_instruction(Instruction::with_far_branch(
            Code::Jmp_ptr1632,
            0x08,
            KERNEL,
        )?)?;
        r.set_label(&mut puts)?;
        r.lodsb()?;
        r.test(al, al)?;
        r.jz(done)?;
        r.mov(dx, 0x3f8u32)?;
        r.out(dx, al)?;
        r.jmp(puts)?;
        r.set_label(&mut done)?;
        r.ret()
    })()
    .map_err(asm_err)?;
    let real = r.assemble(REAL_ENTRY as u64).map_err(asm_err)?;

    // ---- 32-bit kernel: the main path and its routines at fixed addresses ----
    let mut k = CodeAssembler::new(32).map_err(asm_err)?;
    (|| -> Result<(), IcedError> {
        let mut fill = k.create_label();
        let mut bad = k.create_label();
        k.mov(ax, 0x10u32)?;
        k.mov(ds, ax)?;
        k.mov(es, ax)?;
        k.mov(ss, ax)?;
        k.mov(fs, ax)?;
        k.mov(gs, ax)?;
        k.mov(esp, KSTACK)?;
        k.mov(esi, s_pm)?;
        k.call(PUTS as u64)?;
        // Page table: identity-map the first 1 MiB for the kernel (supervisor, RW).
        k.mov(edi, PT)?;
        k.mov(eax, 3u32)?;
        k.mov(ecx, 256u32)?;
        k.set_label(&mut fill)?;
        k.stosd()?;
        k.add(eax, 0x1000)?;
        k.loop_(fill)?;
        // User pages: code and strings read-only, stack read-write; the demand page absent.
        k.mov(dword_ptr(PT + 4 * (USER >> 12)), USER | 5)?;
        k.mov(dword_ptr(PT + 4 * (USTRINGS >> 12)), USTRINGS | 5)?;
        k.mov(
            dword_ptr(PT + 4 * ((USTACK - 0x1000) >> 12)),
            (USTACK - 0x1000) | 7,
        )?;
        k.mov(dword_ptr(PT + 4 * (DEMAND >> 12)), 0u32)?;
        k.mov(dword_ptr(PD), PT | 7)?;
        k.mov(dword_ptr(PD + 4), BIG_PAGE | 0x83)?;
        k.mov(eax, PD)?;
        k.mov(cr3, eax)?;
        k.mov(eax, cr4)?;
        k.or(eax, 0x10)?;
        k.mov(cr4, eax)?;
        k.mov(eax, cr0)?;
        k.or(eax, 0x8001_0000u32 as i32)?;
        k.mov(cr0, eax)?;
        k.mov(esi, s_paging)?;
        k.call(PUTS as u64)?;
        k.mov(dword_ptr(BIG_PAGE + 0x1234), 0x5a5a_a5a5u32)?;
        k.cmp(dword_ptr(BIG_PAGE + 0x1234), 0x5a5a_a5a5u32 as i32)?;
        k.jne(bad)?;
        k.mov(esi, s_big)?;
        k.call(PUTS as u64)?;
        // IDT gates: #GP, #PF, the timer (interrupt gates), int 0x80 (a DPL 3 interrupt
        // gate: the kernel runs with interrupts off, so ticks only interrupt the user task).
        for (vec, handler, ty) in [
            (13u32, GP_HANDLER, 0x8e00u32),
            (14, PF_HANDLER, 0x8e00),
            (0x20, TIMER_HANDLER, 0x8e00),
            (0x80, SYS_HANDLER, 0xee00),
        ] {
            k.mov(dword_ptr(IDT + 8 * vec), (0x08 << 16) | (handler & 0xffff))?;
            k.mov(dword_ptr(IDT + 8 * vec + 4), (handler & 0xffff_0000) | ty)?;
        }
        k.lidt(ptr(GDTR + 8))?;
        // The PIC pair: ICW1 (edge, cascade, ICW4), ICW2 (vectors 0x20 and 0x28), ICW3
        // (slave on IRQ 2), ICW4 (8086 mode); then mask everything.
        k.mov(al, 0x11u32)?;
        k.out(0x20, al)?;
        k.out(0xa0, al)?;
        k.mov(al, 0x20u32)?;
        k.out(0x21, al)?;
        k.mov(al, 0x28u32)?;
        k.out(0xa1, al)?;
        k.mov(al, 0x04u32)?;
        k.out(0x21, al)?;
        k.mov(al, 0x02u32)?;
        k.out(0xa1, al)?;
        k.mov(al, 0x01u32)?;
        k.out(0x21, al)?;
        k.out(0xa1, al)?;
        k.mov(al, 0xffu32)?;
        k.out(0x21, al)?;
        k.out(0xa1, al)?;
        // The PIT: channel 0, LSB then MSB, mode 2 (rate generator), 100 Hz.
        k.mov(al, 0x34u32)?;
        k.out(0x43, al)?;
        k.mov(al, PIT_100HZ & 0xff)?;
        k.out(0x40, al)?;
        k.mov(al, PIT_100HZ >> 8)?;
        k.out(0x40, al)?;
        k.mov(dword_ptr(TICKS), 0u32)?;
        k.mov(esi, s_timer)?;
        k.call(PUTS as u64)?;
        k.mov(ax, 0x28u32)?;
        k.ltr(ax)?;
        k.mov(esi, s_user)?;
        k.call(PUTS as u64)?;
        // IRET to CPL 3 would null DS and ES holding DPL-0 selectors: load user data
        // selectors first, as a kernel does (they serve the kernel's handlers too).
        k.mov(ax, 0x23u32)?;
        k.mov(ds, ax)?;
        k.mov(es, ax)?;
        k.push(0x23u32)?;
        k.push(USTACK)?;
        k.push(0x202u32)?;
        k.push(0x1bu32)?;
        k.push(USER)?;
        k.iretd()?;
        k.set_label(&mut bad)?;
        k.hlt()
    })()
    .map_err(asm_err)?;
    let kernel = k.assemble(KERNEL as u64).map_err(asm_err)?;

    // int 0x80: eax = 1: write(ebx = buffer, ecx = length); 2: start the timer (unmask
    // IRQ 0); 3: eax = ticks so far; 4: stop the timer (mask IRQ 0).
    let mut h = CodeAssembler::new(32).map_err(asm_err)?;
    (|| -> Result<(), IcedError> {
        let mut out = h.create_label();
        let mut ret = h.create_label();
        let mut start = h.create_label();
        let mut ticks = h.create_label();
        let mut stop = h.create_label();
        h.cmp(eax, 2)?;
        h.je(start)?;
        h.cmp(eax, 3)?;
        h.je(ticks)?;
        h.cmp(eax, 4)?;
        h.je(stop)?;
        h.cmp(eax, 1)?;
        h.jne(ret)?;
        h.set_label(&mut out)?;
        h.jecxz(ret)?;
        h.mov(al, byte_ptr(ebx))?;
        putc(&mut h)?;
        h.inc(ebx)?;
        h.dec(ecx)?;
        h.jmp(out)?;
        h.set_label(&mut ret)?;
        h.iretd()?;
        h.set_label(&mut start)?;
        h.in_(al, 0x21)?;
        h.and(al, 0xfe)?;
        h.out(0x21, al)?;
        h.iretd()?;
        h.set_label(&mut ticks)?;
        h.mov(eax, dword_ptr(TICKS))?;
        h.iretd()?;
        h.set_label(&mut stop)?;
        h.in_(al, 0x21)?;
        h.or(al, 0x01)?;
        h.out(0x21, al)?;
        h.iretd()
    })()
    .map_err(asm_err)?;
    let sys = h.assemble(SYS_HANDLER as u64).map_err(asm_err)?;

    // The timer: count, narrate which privilege level was interrupted, EOI.
    let mut h = CodeAssembler::new(32).map_err(asm_err)?;
    (|| -> Result<(), IcedError> {
        let mut kernel = h.create_label();
        let mut said = h.create_label();
        h.pushad()?;
        h.inc(dword_ptr(TICKS))?;
        h.mov(esi, s_tick1)?;
        h.call(PUTS as u64)?;
        h.mov(eax, dword_ptr(TICKS))?;
        h.call(PUTHEX as u64)?;
        // The interrupted CS is above the 32 bytes of PUSHAD and the saved EIP.
        h.test(dword_ptr(esp + 36), 3)?;
        h.jz(kernel)?;
        h.mov(esi, s_tick_user)?;
        h.jmp(said)?;
        h.set_label(&mut kernel)?;
        h.mov(esi, s_tick_kernel)?;
        h.set_label(&mut said)?;
        h.call(PUTS as u64)?;
        h.mov(al, 0x20u32)?;
        h.out(0x20, al)?; // non-specific EOI
        h.popad()?;
        h.iretd()
    })()
    .map_err(asm_err)?;
    let timer = h.assemble(TIMER_HANDLER as u64).map_err(asm_err)?;

    // #PF: report CR2 and the error code, map the demand page, return.
    let mut h = CodeAssembler::new(32).map_err(asm_err)?;
    (|| -> Result<(), IcedError> {
        h.pushad()?;
        h.mov(esi, s_pf1)?;
        h.call(PUTS as u64)?;
        h.mov(eax, cr2)?;
        h.call(PUTHEX as u64)?;
        h.mov(esi, s_pf2)?;
        h.call(PUTS as u64)?;
        h.mov(eax, dword_ptr(esp + 32))?;
        h.call(PUTHEX as u64)?;
        h.mov(esi, s_pf3)?;
        h.call(PUTS as u64)?;
        h.mov(eax, cr2)?;
        h.shr(eax, 12)?;
        h.mov(dword_ptr(eax * 4 + PT), DEMAND_FRAME | 7)?;
        h.mov(eax, cr2)?;
        h.invlpg(ptr(eax))?;
        h.popad()?;
        h.add(esp, 4)?;
        h.iretd()
    })()
    .map_err(asm_err)?;
    let pf = h.assemble(PF_HANDLER as u64).map_err(asm_err)?;

    // #GP: report and power off.
    let mut h = CodeAssembler::new(32).map_err(asm_err)?;
    (|| -> Result<(), IcedError> {
        h.mov(esi, s_gp1)?;
        h.call(PUTS as u64)?;
        h.mov(eax, dword_ptr(esp + 4))?;
        h.call(PUTHEX as u64)?;
        h.mov(esi, s_gp2)?;
        h.call(PUTS as u64)?;
        h.mov(esi, s_off)?;
        h.call(PUTS as u64)?;
        h.mov(al, SUCCESS as u32)?;
        h.out(0xf4, al)?;
        h.hlt()
    })()
    .map_err(asm_err)?;
    let gp = h.assemble(GP_HANDLER as u64).map_err(asm_err)?;

    // puts(esi): a NUL-terminated string.
    let mut h = CodeAssembler::new(32).map_err(asm_err)?;
    (|| -> Result<(), IcedError> {
        let mut top = h.create_label();
        let mut done = h.create_label();
        h.set_label(&mut top)?;
        h.lodsb()?;
        h.test(al, al)?;
        h.jz(done)?;
        putc(&mut h)?;
        h.jmp(top)?;
        h.set_label(&mut done)?;
        h.ret()
    })()
    .map_err(asm_err)?;
    let puts = h.assemble(PUTS as u64).map_err(asm_err)?;

    // puthex(eax): "0x" and eight hex digits.
    let mut h = CodeAssembler::new(32).map_err(asm_err)?;
    (|| -> Result<(), IcedError> {
        let mut top = h.create_label();
        let mut digit = h.create_label();
        h.push(ecx)?;
        h.mov(ebx, eax)?;
        h.mov(al, b'0' as u32)?;
        putc(&mut h)?;
        h.mov(al, b'x' as u32)?;
        putc(&mut h)?;
        h.mov(ecx, 8u32)?;
        h.set_label(&mut top)?;
        h.rol(ebx, 4)?;
        h.mov(al, bl)?;
        h.and(al, 0xf)?;
        h.add(al, b'0' as i32)?;
        h.cmp(al, b'9' as i32)?;
        h.jbe(digit)?;
        h.add(al, 7)?;
        h.set_label(&mut digit)?;
        putc(&mut h)?;
        h.loop_(top)?;
        h.pop(ecx)?;
        h.ret()
    })()
    .map_err(asm_err)?;
    let puthex = h.assemble(PUTHEX as u64).map_err(asm_err)?;
    for (what, at, len, room) in [
        ("kernel", KERNEL, kernel.len(), 0x400),
        ("int 0x80 handler", SYS_HANDLER, sys.len(), 0x200),
        ("timer handler", TIMER_HANDLER, timer.len(), 0x100),
        ("#PF handler", PF_HANDLER, pf.len(), 0x100),
        ("#GP handler", GP_HANDLER, gp.len(), 0x100),
        ("puts", PUTS, puts.len(), 0x100),
        ("puthex", PUTHEX, puthex.len(), 0x100),
    ] {
        if len > room {
            return Err(format!(
                "demo guest: the {what} at {at:#x} is {len} bytes, more than its {room}"
            ));
        }
    }

    // ---- user task ----
    let mut u = CodeAssembler::new(32).map_err(asm_err)?;
    (|| -> Result<(), IcedError> {
        let mut spin = u.create_label();
        u.mov(eax, 1u32)?;
        u.mov(ebx, a1)?;
        u.mov(ecx, u1.len() as u32)?;
        u.int(0x80)?;
        u.mov(dword_ptr(DEMAND + 0x10), 0x1234_abcdu32)?;
        u.cmp(dword_ptr(DEMAND + 0x10), 0x1234_abcdu32 as i32)?;
        u.jne(spin)?;
        let mut wait = u.create_label();
        for (addr, s) in [(a2, u2), (a4, u4)] {
            u.mov(eax, 1u32)?;
            u.mov(ebx, addr)?;
            u.mov(ecx, s.len() as u32)?;
            u.int(0x80)?;
        }
        u.mov(eax, 2u32)?;
        u.int(0x80)?;
        u.set_label(&mut wait)?;
        u.mov(eax, 3u32)?;
        u.int(0x80)?;
        u.cmp(eax, TICKS_WANTED)?;
        u.jb(wait)?;
        u.mov(eax, 4u32)?;
        u.int(0x80)?;
        for (addr, s) in [(a5, u5), (a3, u3)] {
            u.mov(eax, 1u32)?;
            u.mov(ebx, addr)?;
            u.mov(ecx, s.len() as u32)?;
            u.int(0x80)?;
        }
        u.cli()?;
        u.set_label(&mut spin)?;
        u.jmp(spin)
    })()
    .map_err(asm_err)?;
    let user = u.assemble(USER as u64).map_err(asm_err)?;

    // ---- tables ----
    let mut gdt = Vec::new();
    for d in [
        0u64,
        0x00cf_9a00_0000_ffff, // 0x08 kernel code
        0x00cf_9200_0000_ffff, // 0x10 kernel data
        0x00cf_fa00_0000_ffff, // 0x18 user code (0x1b)
        0x00cf_f200_0000_ffff, // 0x20 user data (0x23)
        tss_descriptor(TSS, 0x67),
    ] {
        gdt.extend_from_slice(&d.to_le_bytes());
    }
    let mut gdtr = Vec::new();
    gdtr.extend_from_slice(&((gdt.len() - 1) as u16).to_le_bytes());
    gdtr.extend_from_slice(&GDT.to_le_bytes());
    gdtr.extend_from_slice(&[0, 0]);
    gdtr.extend_from_slice(&0x7ffu16.to_le_bytes());
    gdtr.extend_from_slice(&IDT.to_le_bytes());
    let mut tss = vec![0u8; 0x68];
    tss[4..8].copy_from_slice(&KSTACK.to_le_bytes());
    tss[8..12].copy_from_slice(&0x10u32.to_le_bytes());
    tss[0x66..0x68].copy_from_slice(&0x68u16.to_le_bytes());

    let mut state = CpuState::reset();
    state.seg[SegReg::Cs as usize] = Segment::real_mode(0, true);
    state.eip = REAL_ENTRY;
    state.idtr = TableReg {
        base: 0,
        limit: 0x3ff,
    };
    Ok(Image {
        chunks: vec![
            (GDT, gdt),
            (GDTR, gdtr),
            (TSS, tss),
            (REAL_ENTRY, real),
            (KERNEL, kernel),
            (SYS_HANDLER, sys),
            (TIMER_HANDLER, timer),
            (PF_HANDLER, pf),
            (GP_HANDLER, gp),
            (PUTS, puts),
            (PUTHEX, puthex),
            (KSTRINGS, ks.bytes),
            (USER, user),
            (USTRINGS, us.bytes),
        ],
        state,
    })
}

fn tss_descriptor(base: u32, limit: u32) -> u64 {
    (limit as u64 & 0xffff)
        | ((base as u64 & 0xff_ffff) << 16)
        | (0x89u64 << 40)
        | (((limit as u64 >> 16) & 0xf) << 48)
        | (((base as u64) >> 24) << 56)
}
