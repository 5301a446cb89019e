//! A builder for system-level test guests: GDT, IDT, TSS and page tables laid out in a
//! `RamBus`, code assembled with iced-x86 `code_asm`, and a protected-mode start state.
#![allow(dead_code)]

use iced_x86::code_asm::CodeAssembler;
use vmm_interp::mmu::pte;
use vmm_interp::seg::{sys_type, Descriptor};
use vmm_interp::state::{attr, cr, SegReg, Segment, TableReg};
use vmm_interp::{Cpu, CpuState, Exit, RamBus};

pub const RAM_SIZE: usize = 8 << 20;
pub const GDT: u32 = 0x800;
pub const IDT: u32 = 0x1000;
pub const TSS: u32 = 0x1800;
pub const PD: u32 = 0x2000;
/// Page tables for the first 8 MiB (two tables) at 0x3000 and 0x4000.
pub const PT0: u32 = 0x3000;
pub const KCODE: u32 = 0x10000;
pub const HANDLERS: u32 = 0x14000;
pub const UCODE: u32 = 0x20000;
pub const KSTACK_TOP: u32 = 0x9000;
pub const USTACK_TOP: u32 = 0x30000;
pub const DATA: u32 = 0x40000;

pub const SEL_KCODE: u16 = 0x08;
pub const SEL_KDATA: u16 = 0x10;
pub const SEL_UCODE: u16 = 0x1b;
pub const SEL_UDATA: u16 = 0x23;
pub const SEL_TSS: u16 = 0x28;
/// Free GDT slots start at index 6 (selector 0x30).
pub const FIRST_FREE: usize = 6;

pub const CODE32: u16 = attr::P | attr::S | attr::CODE | attr::RW | attr::DB | attr::G;
pub const DATA32: u16 = attr::P | attr::S | attr::RW | attr::DB | attr::G;

pub struct SysGuest {
    pub bus: RamBus,
}

impl SysGuest {
    /// RAM with a GDT (null, kernel code/data DPL 0, user code/data DPL 3, a 32-bit TSS),
    /// an empty IDT (limit 0x7ff), and a TSS whose SS0:ESP0 is SEL_KDATA:KSTACK_TOP with
    /// an I/O bitmap offset beyond the limit (no bitmap).
    pub fn new() -> SysGuest {
        let mut g = SysGuest { bus: RamBus::new(RAM_SIZE) };
        g.set_gdt(1, Descriptor::new(0, 0xffff_ffff, CODE32));
        g.set_gdt(2, Descriptor::new(0, 0xffff_ffff, DATA32));
        g.set_gdt(3, Descriptor::new(0, 0xffff_ffff, CODE32 | (3 << attr::DPL_SHIFT)));
        g.set_gdt(4, Descriptor::new(0, 0xffff_ffff, DATA32 | (3 << attr::DPL_SHIFT)));
        g.set_gdt(5, Descriptor::new(TSS, 0x67, attr::P | sys_type::TSS32_AVAIL as u16));
        g.w32(TSS + 4, KSTACK_TOP);
        g.w32(TSS + 8, SEL_KDATA as u32);
        g.w16(TSS + 0x66, 0x68);
        g
    }

    pub fn w8(&mut self, a: u32, v: u8) {
        self.bus.ram[a as usize] = v;
    }
    pub fn w16(&mut self, a: u32, v: u16) {
        self.bus.ram[a as usize..a as usize + 2].copy_from_slice(&v.to_le_bytes());
    }
    pub fn w32(&mut self, a: u32, v: u32) {
        self.bus.ram[a as usize..a as usize + 4].copy_from_slice(&v.to_le_bytes());
    }
    pub fn r32(&self, a: u32) -> u32 {
        u32::from_le_bytes(self.bus.ram[a as usize..a as usize + 4].try_into().unwrap())
    }
    pub fn w64(&mut self, a: u32, v: u64) {
        self.bus.ram[a as usize..a as usize + 8].copy_from_slice(&v.to_le_bytes());
    }

    pub fn set_gdt(&mut self, index: usize, d: Descriptor) {
        self.w64(GDT + 8 * index as u32, d.0);
    }

    /// A gate descriptor (interrupt/trap/call/task) of `ty` with `dpl`.
    pub fn gate(selector: u16, offset: u32, ty: u8, dpl: u8, params: u8) -> Descriptor {
        Descriptor(
            (offset as u64 & 0xffff)
                | ((selector as u64) << 16)
                | ((params as u64 & 0x1f) << 32)
                | ((ty as u64) << 40)
                | ((dpl as u64 & 3) << 45)
                | (1u64 << 47)
                | ((offset as u64 >> 16) << 48),
        )
    }

    /// A 32-bit interrupt gate (or trap gate) for `vector` to SEL_KCODE:`offset`.
    pub fn set_idt(&mut self, vector: u8, offset: u32, trap: bool, dpl: u8) {
        let ty = if trap { sys_type::TRAP_GATE32 } else { sys_type::INT_GATE32 };
        self.w64(IDT + 8 * vector as u32, Self::gate(SEL_KCODE, offset, ty, dpl, 0).0);
    }

    /// Identity-map the first 8 MiB with 4 KiB pages, with `flags` (P is added).
    pub fn identity_map(&mut self, flags: u32) {
        for t in 0..2u32 {
            let pt = PT0 + t * 0x1000;
            self.w32(PD + 4 * t, pt | pte::P | pte::RW | pte::US);
            for e in 0..1024u32 {
                let phys = (t << 22) | (e << 12);
                self.w32(pt + 4 * e, phys | flags | pte::P);
            }
        }
    }

    /// Set the PTE of the identity-mapped page containing `lin`.
    pub fn set_pte(&mut self, lin: u32, value: u32) {
        let pt = PT0 + (lin >> 22) * 0x1000;
        self.w32(pt + 4 * ((lin >> 12) & 0x3ff), value);
    }
    pub fn pte(&self, lin: u32) -> u32 {
        let pt = PT0 + (lin >> 22) * 0x1000;
        self.r32(pt + 4 * ((lin >> 12) & 0x3ff))
    }

    /// Assemble code at `addr` (32-bit); returns the address just past it.
    pub fn code(&mut self, addr: u32, f: impl FnOnce(&mut CodeAssembler)) -> u32 {
        let mut a = CodeAssembler::new(32).unwrap();
        f(&mut a);
        let bytes = a.assemble(addr as u64).expect("assemble");
        self.bus.ram[addr as usize..addr as usize + bytes.len()].copy_from_slice(&bytes);
        addr + bytes.len() as u32
    }

    /// Protected mode at CPL 0 at KCODE, GDTR/IDTR/TR loaded, paging on if `paging` (CR3 =
    /// PD, CR4.PSE), kernel stack.
    pub fn state(&self, paging: bool) -> CpuState {
        let mut s = CpuState::flat_protected(0);
        s.gdtr = TableReg { base: GDT, limit: 8 * 16 - 1 };
        s.idtr = TableReg { base: IDT, limit: 0x7ff };
        s.tr = Segment { selector: SEL_TSS, base: TSS, limit: 0x67, attr: attr::P | sys_type::TSS32_BUSY as u16 };
        s.ldtr = Segment::default();
        s.eip = KCODE;
        s.gpr[4] = KSTACK_TOP;
        s.eflags = 0x2;
        if paging {
            s.cr3 = PD;
            s.cr4 |= cr::CR4_PSE;
            s.cr0 |= cr::CR0_PG | cr::CR0_WP;
        }
        let _ = SegReg::Cs;
        s
    }

    /// Run until an exit (budget 10 million instructions).
    pub fn run(self, state: CpuState) -> (Cpu<RamBus>, Exit) {
        let mut cpu = Cpu::with_state(state, self.bus);
        let exit = cpu.run(10_000_000);
        (cpu, exit)
    }
}

impl Default for SysGuest {
    fn default() -> Self {
        Self::new()
    }
}
