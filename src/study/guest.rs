//! The study's guest, built in memory: a GDT with a known base, an LDT, an IDT whose every
//! exception vector records what it saw, a TSS (with an I/O bitmap that lets CPL 3 reach only
//! the debug-exit port), known CR0 and MSR values, paging off. The instruction under study runs
//! from [`SNIPPET`] at CPL 0 or CPL 3 (the vCPU starts there, at that CPL: no setup code runs
//! under the engine being studied); it falls or jumps to [`EPILOGUE`], which stores the general
//! registers at [`RES`] and writes [`DONE`] to the debug-exit port. An exception or a software
//! interrupt lands in a handler that stores the vector, the error code and the pushed CS:EIP
//! and writes [`EVENT`]. Everything else observed (EFLAGS, descriptor-table registers, CR3) is
//! read from the final vCPU state, memory from guest RAM.

use iced_x86::code_asm::*;
use vmm_interp::state::{attr, Segment};
use vmm_interp::{CpuModel, CpuState, TableReg};
use vmm_monitor::native::{NativeCase, Prot, Region};

use super::catalogue::Case;

pub const GDT: u32 = 0x1000;
/// A copy of the GDT, for LGDT.
pub const GDT2: u32 = 0x1100;
pub const LDT: u32 = 0x1800;
pub const IDT: u32 = 0x2000;
pub const IDT_LIMIT: u16 = 0x7ff;
pub const TSS: u32 = 0x3000;
pub const TSS2: u32 = 0x3100;
/// Results: the 8 GPRs, then vector, error code, pushed EIP, pushed CS.
pub const RES: u32 = 0x5000;
pub const RES_VEC: u32 = RES + 32;
pub const RES_ERR: u32 = RES + 36;
pub const RES_EIP: u32 = RES + 40;
pub const RES_CS: u32 = RES + 44;
/// The data page the instructions store to and read from.
pub const MEM: u32 = 0x6000;
/// The dword at `MEM + 0x10`.
pub const MAGIC: u32 = 0x5a5a_1234;
pub const KSTACK: u32 = 0x9000;
pub const USTACK: u32 = 0x3_8000;
pub const SNIPPET: u32 = 0x1_0000;
pub const EPILOGUE: u32 = 0x1_0800;
pub const HANDLERS: u32 = 0x1_1000;
const COMMON_ERR: u32 = 0x1_1800;
const COMMON: u32 = 0x1_1900;
pub const RAM: usize = 4 << 20;

pub const TSS_SEL: u16 = 0x28;
pub const LDT_SEL: u16 = 0x30;
/// A DPL 0 data segment: base MEM, byte-granular limit 0x12345.
pub const PROBE_SEL: u16 = 0x38;
pub const PROBE_LIMIT: u32 = 0x12345;
/// LAR's answer for PROBE_SEL: access byte 0x93, D/B set.
pub const PROBE_AR: u32 = 0x0040_9300;
/// A DPL 3 data segment (RPL 3): base MEM, limit 0xabcd.
pub const UPROBE_SEL: u16 = 0x43;
/// LAR's answer for UPROBE_SEL: access byte 0xf3, D/B set.
pub const UPROBE_AR: u32 = 0x0040_f300;
/// An available TSS, for LTR.
pub const TSS2_SEL: u16 = 0x48;
pub const GDT_LIMIT: u16 = 10 * 8 - 1;
/// CR0: PE, ET, NE; paging off.
pub const CR0: u32 = 0x31;
/// IA32_MISC_ENABLE as the guest starts.
pub const MISC_ENABLE: u32 = 0x801;
/// Debug-exit values: the epilogue was reached; an exception or interrupt handler ran.
pub const DONE: u8 = 0x21;
pub const EVENT: u8 = 0x22;
/// Vectors with a handler: every exception, and 0x21 (a DPL 3 gate, for INT n).
const VECTORS: u32 = 0x22;
/// The TSS's limit: 0x68 bytes, a 32-byte I/O bitmap (ports 0-0xff) and its 0xff terminator.
const TSS_LIMIT: u32 = 0x68 + 32;

/// The privilege level a snippet runs at.
#[derive(Clone, Copy, Debug)]
pub struct Ctx {
    pub cpl: u8,
}

impl Ctx {
    pub fn cs(&self) -> u16 {
        if self.cpl == 0 {
            0x08
        } else {
            0x1b
        }
    }
    pub fn ds(&self) -> u16 {
        if self.cpl == 0 {
            0x10
        } else {
            0x23
        }
    }
    pub fn stack_top(&self) -> u32 {
        if self.cpl == 0 {
            KSTACK
        } else {
            USTACK
        }
    }
}

/// The virtual CPU the engines present (its CPUID is the expected answer).
pub fn virtual_cpu() -> CpuModel {
    CpuModel::p6()
}

fn desc(base: u32, limit: u32, access: u8, fl: u8) -> u64 {
    (limit as u64 & 0xffff)
        | ((base as u64 & 0xff_ffff) << 16)
        | ((access as u64) << 40)
        | (((limit as u64 >> 16) & 0xf) << 48)
        | ((fl as u64 & 0xf) << 52)
        | (((base as u64) >> 24) << 56)
}

fn gdt() -> Vec<u8> {
    let d = [
        0u64,
        desc(0, 0xfffff, 0x9b, 0xc),       // 0x08 kernel code
        desc(0, 0xfffff, 0x93, 0xc),       // 0x10 kernel data
        desc(0, 0xfffff, 0xfb, 0xc),       // 0x18 user code
        desc(0, 0xfffff, 0xf3, 0xc),       // 0x20 user data
        desc(TSS, TSS_LIMIT, 0x8b, 0),     // 0x28 TSS (busy)
        desc(LDT, 0xf, 0x82, 0),           // 0x30 LDT
        desc(MEM, PROBE_LIMIT, 0x93, 0x4), // 0x38 probe, DPL 0
        desc(MEM, 0xabcd, 0xf3, 0x4),      // 0x40 probe, DPL 3
        desc(TSS2, 0x67, 0x89, 0),         // 0x48 TSS (available)
    ];
    d.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn asm_at(
    at: u32,
    f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> Result<Vec<u8>, String> {
    let mut a = CodeAssembler::new(32).map_err(|e| e.to_string())?;
    f(&mut a).map_err(|e| e.to_string())?;
    a.assemble(at as u64).map_err(|e| e.to_string())
}

/// The snippet: the case's prologue and instruction, then a jump to the epilogue.
pub fn snippet(case: &Case, ctx: &Ctx) -> Result<Vec<u8>, String> {
    let b = asm_at(SNIPPET, |a| {
        (case.code)(a, ctx)?;
        a.jmp(EPILOGUE as u64)
    })
    .map_err(|e| format!("{}: {e}", case.name))?;
    if b.len() > (EPILOGUE - SNIPPET) as usize {
        return Err(format!("{}: the snippet is too long", case.name));
    }
    Ok(b)
}

/// The data page as every run starts: zeros, MAGIC at +0x10, LGDT's and LIDT's operands.
fn mem_page() -> Vec<u8> {
    let mut m = vec![0u8; 0x1000];
    m[0x10..0x14].copy_from_slice(&MAGIC.to_le_bytes());
    m[0x20..0x22].copy_from_slice(&GDT_LIMIT.to_le_bytes());
    m[0x22..0x26].copy_from_slice(&GDT2.to_le_bytes());
    m[0x28..0x2a].copy_from_slice(&0x3ffu16.to_le_bytes());
    m[0x2a..0x2e].copy_from_slice(&IDT.to_le_bytes());
    m
}

fn tss(esp0: u32) -> Vec<u8> {
    let mut t = vec![0u8; TSS_LIMIT as usize + 1];
    t[4..8].copy_from_slice(&esp0.to_le_bytes());
    t[8..12].copy_from_slice(&0x10u32.to_le_bytes());
    t[0x66..0x68].copy_from_slice(&0x68u16.to_le_bytes());
    for b in &mut t[0x68..0x88] {
        *b = 0xff;
    }
    t[0x68 + 0xf4 / 8] &= !(1 << (0xf4 % 8)); // the debug-exit port
    t[0x88] = 0xff;
    t
}

/// A guest image: (address, bytes) chunks and the vCPU state to start from.
pub struct Image {
    pub chunks: Vec<(u32, Vec<u8>)>,
    pub state: CpuState,
}

pub fn build(case: &Case, ctx: &Ctx) -> Result<Image, String> {
    let mut chunks = vec![(GDT, gdt()), (GDT2, gdt())];
    let mut ldt = vec![0u8; 8];
    ldt.extend_from_slice(&desc(0, 0xfffff, 0xf3, 0xc).to_le_bytes());
    chunks.push((LDT, ldt));
    let mut idt = Vec::new();
    for v in 0..VECTORS {
        let h = HANDLERS + 16 * v;
        let dpl3 = if v == 0x21 { 0x6000 } else { 0 };
        idt.extend_from_slice(&((0x08u32 << 16) | (h & 0xffff)).to_le_bytes());
        idt.extend_from_slice(&((h & 0xffff_0000) | 0x8e00 | dpl3).to_le_bytes());
    }
    chunks.push((IDT, idt));
    chunks.push((TSS, tss(KSTACK)));
    chunks.push((TSS2, tss(KSTACK)));
    chunks.push((MEM, mem_page()));
    chunks.push((SNIPPET, snippet(case, ctx)?));
    // The epilogue: store the GPRs through SS (the snippet may have changed DS), exit.
    chunks.push((
        EPILOGUE,
        asm_at(EPILOGUE, |a| {
            for (i, r) in [eax, ecx, edx, ebx, esp, ebp, esi, edi]
                .into_iter()
                .enumerate()
            {
                a.mov(dword_ptr(RES + 4 * i as u32).ss(), r)?;
            }
            a.mov(al, DONE as u32)?;
            a.out(0xf4, al)?;
            a.hlt()
        })?,
    ));
    for v in 0..VECTORS {
        let at = HANDLERS + 16 * v;
        let has_error = matches!(v, 8 | 10..=14 | 17);
        let code = asm_at(at, |a| {
            a.mov(dword_ptr(RES_VEC).ss(), v)?;
            a.jmp((if has_error { COMMON_ERR } else { COMMON }) as u64)
        })?;
        if code.len() > 16 {
            return Err(format!("handler stub {v} is {} bytes", code.len()));
        }
        chunks.push((at, code));
    }
    chunks.push((
        COMMON_ERR,
        asm_at(COMMON_ERR, |a| {
            a.pop(dword_ptr(RES_ERR).ss())?;
            a.jmp(COMMON as u64)
        })?,
    ));
    chunks.push((
        COMMON,
        asm_at(COMMON, |a| {
            a.mov(eax, dword_ptr(esp))?;
            a.mov(dword_ptr(RES_EIP).ss(), eax)?;
            a.mov(eax, dword_ptr(esp + 4))?;
            a.mov(dword_ptr(RES_CS).ss(), eax)?;
            a.mov(al, EVENT as u32)?;
            a.out(0xf4, al)?;
            a.hlt()
        })?,
    ));

    let mut s = CpuState::flat_protected(ctx.cpl);
    s.cr0 = CR0;
    s.eip = SNIPPET;
    s.gpr[4] = ctx.stack_top();
    s.eflags = case.eflags;
    s.gdtr = TableReg {
        base: GDT,
        limit: GDT_LIMIT,
    };
    s.idtr = TableReg {
        base: IDT,
        limit: IDT_LIMIT,
    };
    s.ldtr = Segment {
        selector: LDT_SEL,
        base: LDT,
        limit: 0xf,
        attr: attr::P | 2,
    };
    s.tr = Segment {
        selector: TSS_SEL,
        base: TSS,
        limit: TSS_LIMIT,
        attr: attr::P | 11,
    };
    s.msr.misc_enable = MISC_ENABLE as u64;
    Ok(Image { chunks, state: s })
}

/// The same instruction bytes for the native runner at host CPL 3: the snippet of CPL 3 with
/// the sentinel HLT at the epilogue, the data page, and a stack page.
pub fn native_case(case: &Case) -> Result<NativeCase, String> {
    let ctx = Ctx { cpl: 3 };
    let mut code = vec![0xccu8; 0x1000];
    let s = snippet(case, &ctx)?;
    code[..s.len()].copy_from_slice(&s);
    code[(EPILOGUE - SNIPPET) as usize] = 0xf4;
    let mut gpr = [0u32; 8];
    gpr[4] = USTACK;
    Ok(NativeCase {
        regions: vec![
            Region {
                addr: MEM,
                bytes: mem_page(),
                prot: Prot::ReadWrite,
            },
            Region {
                addr: USTACK - 0x1000,
                bytes: vec![0; 0x1000],
                prot: Prot::ReadWrite,
            },
            Region {
                addr: SNIPPET,
                bytes: code,
                prot: Prot::ReadExec,
            },
        ],
        gpr,
        eflags: case.eflags,
        eip: SNIPPET,
        stop_eip: EPILOGUE,
        timeout_ms: 0,
    })
}
