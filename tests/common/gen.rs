//! Generated user-level (CPL 3) test cases for the differential tests: a start state (registers,
//! EFLAGS, memory) and a short sequence of instructions, encoded with iced-x86.
//!
//! Instruction forms are not listed by hand: every legacy iced-x86 `Code` valid in 32-bit mode
//! whose mnemonic is in [`FAMILIES`] and whose operands this generator can fill is a candidate,
//! so every encoding form of every integer instruction (8/16/32-bit operands, `66h`/`67h`
//! prefixes, accumulator short forms, immediates sign-extended or not) is exercised.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::OnceLock;

use iced_x86::{
    BlockEncoder, BlockEncoderOptions, Code, EncodingKind, Instruction, InstructionBlock,
    MemoryOperand, Mnemonic, OpCodeOperandKind as K, Register, RepPrefixKind,
};
use proptest::prelude::*;
use proptest::test_runner::TestRng;
use rand::RngExt;

/// The guest's layout, the same for the host CPU and the interpreter.
pub const CODE: u32 = 0x1000_0000;
pub const CODE_PAGES: u32 = 2;
pub const DATA: u32 = 0x1000_4000;
pub const DATA_PAGES: u32 = 4;
/// A read-only page right after the data, then a page with no access at all.
pub const RO: u32 = DATA + DATA_PAGES * 0x1000;
pub const NONE: u32 = RO + 0x1000;
pub const STACK: u32 = DATA + 0x3000;
/// Far pointers (offset, selector) planted in the data for LDS/LES/LSS/LFS/LGS.
pub const FARPTRS: u32 = DATA + 0x100;

/// Selectors the generator loads into segment registers: usable ones, null ones, DPL-0 ones,
/// system ones, beyond the GDT limit, in the (empty) LDT.
pub const SELECTORS: [u16; 16] = [
    0x2b, 0x2b, 0x23, 0x28, 0x2a, 0x0, 0x3, 0x33, 0x08, 0x10, 0x1b, 0x40, 0x63, 0x07, 0x80, 0xfffc,
];

/// Instruction families of the generator; a case draws from the families it is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Arith,
    Logic,
    Shift,
    Bit,
    Bcd,
    Data,
    Stack,
    String,
    Control,
    Segment,
    Privileged,
}

pub const ALL_FAMILIES: [Family; 11] = [
    Family::Arith,
    Family::Logic,
    Family::Shift,
    Family::Bit,
    Family::Bcd,
    Family::Data,
    Family::Stack,
    Family::String,
    Family::Control,
    Family::Segment,
    Family::Privileged,
];

fn family_of(m: Mnemonic) -> Option<Family> {
    use Mnemonic as M;
    Some(match m {
        M::Add
        | M::Adc
        | M::Sub
        | M::Sbb
        | M::Cmp
        | M::Inc
        | M::Dec
        | M::Neg
        | M::Mul
        | M::Imul
        | M::Div
        | M::Idiv => Family::Arith,
        M::And | M::Or | M::Xor | M::Not | M::Test => Family::Logic,
        M::Shl
        | M::Sal
        | M::Shr
        | M::Sar
        | M::Rol
        | M::Ror
        | M::Rcl
        | M::Rcr
        | M::Shld
        | M::Shrd => Family::Shift,
        M::Bt
        | M::Bts
        | M::Btr
        | M::Btc
        | M::Bsf
        | M::Bsr
        | M::Bswap
        | M::Seto
        | M::Setno
        | M::Setb
        | M::Setae
        | M::Sete
        | M::Setne
        | M::Setbe
        | M::Seta
        | M::Sets
        | M::Setns
        | M::Setp
        | M::Setnp
        | M::Setl
        | M::Setge
        | M::Setle
        | M::Setg => Family::Bit,
        M::Daa | M::Das | M::Aaa | M::Aas | M::Aam | M::Aad => Family::Bcd,
        M::Mov
        | M::Movzx
        | M::Movsx
        | M::Xchg
        | M::Cmovo
        | M::Cmovno
        | M::Cmovb
        | M::Cmovae
        | M::Cmove
        | M::Cmovne
        | M::Cmovbe
        | M::Cmova
        | M::Cmovs
        | M::Cmovns
        | M::Cmovp
        | M::Cmovnp
        | M::Cmovl
        | M::Cmovge
        | M::Cmovle
        | M::Cmovg
        | M::Lea
        | M::Cbw
        | M::Cwde
        | M::Cwd
        | M::Cdq
        | M::Xlatb
        | M::Cmpxchg
        | M::Cmpxchg8b
        | M::Xadd
        | M::Lahf
        | M::Sahf
        | M::Clc
        | M::Stc
        | M::Cmc
        | M::Cld
        | M::Std
        | M::Nop
        | M::Salc => Family::Data,
        M::Push
        | M::Pop
        | M::Pusha
        | M::Pushad
        | M::Popa
        | M::Popad
        | M::Pushf
        | M::Pushfd
        | M::Popf
        | M::Popfd
        | M::Enter
        | M::Leave => Family::Stack,
        M::Movsb
        | M::Movsw
        | M::Movsd
        | M::Cmpsb
        | M::Cmpsw
        | M::Cmpsd
        | M::Scasb
        | M::Scasw
        | M::Scasd
        | M::Lodsb
        | M::Lodsw
        | M::Lodsd
        | M::Stosb
        | M::Stosw
        | M::Stosd
        | M::Insb
        | M::Insw
        | M::Insd
        | M::Outsb
        | M::Outsw
        | M::Outsd => Family::String,
        M::Jo
        | M::Jno
        | M::Jb
        | M::Jae
        | M::Je
        | M::Jne
        | M::Jbe
        | M::Ja
        | M::Js
        | M::Jns
        | M::Jp
        | M::Jnp
        | M::Jl
        | M::Jge
        | M::Jle
        | M::Jg
        | M::Jmp
        | M::Call
        | M::Loop
        | M::Loope
        | M::Loopne
        | M::Jcxz
        | M::Jecxz
        | M::Int3
        | M::Into
        | M::Int
        | M::Bound
        | M::Ud2
        | M::Ret => Family::Control,
        M::Lds
        | M::Les
        | M::Lfs
        | M::Lgs
        | M::Lss
        | M::Lar
        | M::Lsl
        | M::Verr
        | M::Verw
        | M::Arpl => Family::Segment,
        M::Cli
        | M::Sti
        | M::Hlt
        | M::In
        | M::Out
        | M::Lgdt
        | M::Lidt
        | M::Lldt
        | M::Ltr
        | M::Lmsw
        | M::Clts
        | M::Invlpg
        | M::Wbinvd
        | M::Invd
        | M::Rdmsr
        | M::Wrmsr => Family::Privileged,
        _ => return None,
    })
}

/// Operand kinds this generator fills.
fn fillable(k: K) -> bool {
    matches!(
        k,
        K::r8_or_mem
            | K::r16_or_mem
            | K::r32_or_mem
            | K::mem
            | K::mem_offs
            | K::r8_reg
            | K::r8_opcode
            | K::r16_reg
            | K::r16_opcode
            | K::r16_rm
            | K::r16_reg_mem
            | K::r32_reg
            | K::r32_opcode
            | K::r32_rm
            | K::r32_reg_mem
            | K::seg_reg
            | K::cr_reg
            | K::dr_reg
            | K::imm8
            | K::imm8_const_1
            | K::imm8sex16
            | K::imm8sex32
            | K::imm16
            | K::imm32
            | K::al
            | K::cl
            | K::ax
            | K::dx
            | K::eax
            | K::es
            | K::cs
            | K::ss
            | K::ds
            | K::fs
            | K::gs
            | K::br32_1
            | K::br16_2
            | K::br32_4
            | K::seg_rSI
            | K::es_rDI
            | K::seg_rBX_al
    )
}

/// Candidate codes per family, computed once from iced-x86's opcode tables.
pub fn codes() -> &'static HashMap<Family, Vec<Code>> {
    static C: OnceLock<HashMap<Family, Vec<Code>>> = OnceLock::new();
    C.get_or_init(|| {
        let mut map: HashMap<Family, Vec<Code>> = HashMap::new();
        for code in Code::values() {
            let oc = code.op_code();
            if !oc.is_instruction()
                || oc.encoding() != EncodingKind::Legacy
                || !oc.is_available_in_mode(32)
            {
                continue;
            }
            let m = code.mnemonic();
            let Some(fam) = family_of(m) else { continue };
            // 8086/286/386-only encodings (POP CS, ...) mean something else on a P6.
            if code
                .cpuid_features()
                .iter()
                .any(|f| format!("{f:?}").ends_with("_ONLY"))
            {
                continue;
            }
            if !oc.op_kinds().iter().all(|k| fillable(*k)) {
                continue;
            }
            // Far forms, 64-bit forms and forms that change the code size are not generated:
            // far transfers to host selectors would leave the runner's control.
            let name = format!("{code:?}");
            if matches!(m, Mnemonic::Jmp | Mnemonic::Call)
                && (name.contains("_m1616") || name.contains("_m1632"))
            {
                continue;
            }
            // Return forms are generated only as part of the CALL/RET patterns below.
            if m == Mnemonic::Ret
                || m == Mnemonic::Call && !oc.op_kinds().iter().any(|k| matches!(k, K::br32_4))
            {
                continue;
            }
            if m == Mnemonic::Jmp
                && !oc
                    .op_kinds()
                    .iter()
                    .any(|k| matches!(k, K::br32_1 | K::br32_4 | K::br16_1 | K::br16_2))
            {
                continue;
            }
            // MOVSD/CMPSD with XMM operands were filtered by `fillable`.
            map.entry(fam).or_default().push(code);
        }
        map
    })
}

/// An instruction of a case before encoding: branch targets are indices into the case's
/// instruction list (`len` = the final HLT).
#[derive(Clone, Debug)]
pub struct GenInsn {
    pub insn: Instruction,
    /// For near branches: the index of the target instruction.
    pub target: Option<usize>,
    /// For `push imm32` / `mov r32, imm32` in the RET/indirect-jump patterns: the index whose
    /// address becomes the immediate.
    pub addr_of: Option<usize>,
}

/// A generated case.
#[derive(Clone, Debug)]
pub struct Case {
    pub gpr: [u32; 8],
    pub eflags: u32,
    pub seed: u64,
    pub insns: Vec<GenInsn>,
}

impl Case {
    /// Encode at [`CODE`] followed by the HLT sentinel; returns (bytes, address of the HLT).
    pub fn encode(&self) -> Option<(Vec<u8>, u32)> {
        // Two passes: branch targets and address immediates refer to instruction addresses,
        // which are known after the first encoding (immediates have fixed sizes).
        let n = self.insns.len();
        let mut addrs: Vec<u64> = (0..=n).map(|k| 0x7000_0000 + 16 * k as u64).collect();
        for pass in 0..2 {
            let mut list = Vec::with_capacity(n + 1);
            for (k, g) in self.insns.iter().enumerate() {
                let mut i = g.insn;
                i.set_ip(0x7000_0000 + 16 * k as u64);
                if let Some(t) = g.target {
                    // Targets name instructions by their provisional IPs; BlockEncoder relocates them.
                    i.set_near_branch32(0x7000_0000 + 16 * t as u32);
                }
                if let Some(t) = g.addr_of {
                    let v = if pass == 0 { CODE } else { addrs[t] as u32 };
                    i.set_immediate32(v);
                }
                list.push(i);
            }
            let mut hlt = Instruction::with(Code::Hlt);
            hlt.set_ip(0x7000_0000 + 16 * n as u64);
            list.push(hlt);
            let block = InstructionBlock::new(&list, CODE as u64);
            let r = BlockEncoder::encode(
                32,
                block,
                BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
            )
            .ok()?;
            if pass == 1 {
                let stop = CODE + *r.new_instruction_offsets.last()?;
                if r.code_buffer.len() > (CODE_PAGES * 0x1000) as usize {
                    return None;
                }
                return Some((r.code_buffer, stop));
            }
            for (k, off) in r.new_instruction_offsets.iter().enumerate() {
                addrs[k] = CODE as u64 + *off as u64;
            }
        }
        None
    }

    /// The initial contents of the data pages: bytes from the seed, with far pointers
    /// planted at [`FARPTRS`].
    pub fn data(&self) -> Vec<u8> {
        let mut v = vec![0u8; (DATA_PAGES * 0x1000) as usize];
        let mut x = self.seed | 1;
        for b in v.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = (x >> 24) as u8;
        }
        for (k, sel) in SELECTORS.iter().enumerate() {
            let off = (FARPTRS - DATA) as usize + 8 * k;
            let target = DATA + 0x200 + 4 * k as u32;
            v[off..off + 4].copy_from_slice(&target.to_le_bytes());
            v[off + 4..off + 6].copy_from_slice(&sel.to_le_bytes());
        }
        v
    }

    /// The read-only page's contents.
    pub fn ro_data(&self) -> Vec<u8> {
        (0..0x1000u32)
            .map(|k| (k.wrapping_mul(0x9e37_79b1) >> 24) as u8 ^ self.seed as u8)
            .collect()
    }
}

fn edge32(rng: &mut TestRng) -> u32 {
    const E: [u32; 12] = [
        0,
        1,
        2,
        0x7f,
        0x80,
        0xff,
        0x7fff,
        0x8000,
        0xffff,
        0x7fff_ffff,
        0x8000_0000,
        0xffff_ffff,
    ];
    match rng.random_range(0..4) {
        0 => E[rng.random_range(0..E.len())],
        1 => rng.random_range(0..64),
        _ => rng.random(),
    }
}

fn gpr32(rng: &mut TestRng, allow_esp: bool) -> Register {
    const R: [Register; 8] = [
        Register::EAX,
        Register::ECX,
        Register::EDX,
        Register::EBX,
        Register::ESP,
        Register::EBP,
        Register::ESI,
        Register::EDI,
    ];
    loop {
        let r = R[rng.random_range(0..8)];
        // Keep EBX/EBP (memory bases) and ESP mostly intact so that later memory operands
        // still reach the data pages.
        let keep = match r {
            Register::ESP => !allow_esp || rng.random_range(0..16) != 0,
            Register::EBX | Register::EBP => rng.random_range(0..4) != 0,
            _ => false,
        };
        if !keep {
            return r;
        }
    }
}

fn gpr16(rng: &mut TestRng) -> Register {
    to16(gpr32(rng, false))
}

fn to16(r: Register) -> Register {
    let n = r as u32 - Register::EAX as u32;
    [
        Register::AX,
        Register::CX,
        Register::DX,
        Register::BX,
        Register::SP,
        Register::BP,
        Register::SI,
        Register::DI,
    ][n as usize]
}

fn gpr8(rng: &mut TestRng) -> Register {
    const R: [Register; 8] = [
        Register::AL,
        Register::CL,
        Register::DL,
        Register::BL,
        Register::AH,
        Register::CH,
        Register::DH,
        Register::BH,
    ];
    R[rng.random_range(0..8)]
}

fn seg_prefix(rng: &mut TestRng) -> Register {
    match rng.random_range(0..12) {
        0 => Register::ES,
        1 => Register::CS,
        2 => Register::SS,
        3 => Register::DS,
        4 => Register::FS,
        5 => Register::GS,
        _ => Register::None,
    }
}

/// A memory operand that usually lands in the data pages, sometimes at their edges, in the
/// read-only or inaccessible page, in the code, or (16-bit addressing) far away.
fn mem(rng: &mut TestRng) -> MemoryOperand {
    let seg = seg_prefix(rng);
    match rng.random_range(0..20) {
        0..=8 => {
            let d: i32 = match rng.random_range(0..4) {
                0 => rng.random_range(-8..8) + (0x4000 - 0x40),
                1 => rng.random_range(-16..0),
                _ => rng.random_range(0..0x3000),
            };
            MemoryOperand::with_base_displ_size_bcst_seg(Register::EBX, d as i64, 4, false, seg)
        }
        9..=12 => {
            let a = match rng.random_range(0..6) {
                0 => RO + rng.random_range(0..0x1000),
                1 => NONE + rng.random_range(0..0x1000),
                2 => CODE + rng.random_range(0..0x40),
                3 => RO - rng.random_range(1..8),
                _ => DATA + rng.random_range(0..DATA_PAGES * 0x1000),
            };
            MemoryOperand::with_displ(a as u64, 4).with_seg(seg)
        }
        13..=16 => {
            // A pointer register plus a scaled small index (ECX is often a small count).
            let base = [Register::ESI, Register::EDI, Register::EBP][rng.random_range(0..3)];
            let scale = [1, 2, 4, 8][rng.random_range(0..4)];
            let d: i64 = rng.random_range(-128..128);
            MemoryOperand::new(base, Register::ECX, scale, d, 1, false, seg)
        }
        17 | 18 => {
            let d: i64 = rng.random_range(-64..0x800);
            MemoryOperand::new(
                Register::ESP,
                Register::None,
                1,
                d,
                if d == 0 { 0 } else { 4 },
                false,
                seg,
            )
        }
        _ => {
            // 16-bit addressing: the address is below 64 KiB, where nothing is mapped.
            let (b, i) = [
                (Register::BX, Register::SI),
                (Register::BX, Register::DI),
                (Register::BP, Register::SI),
                (Register::BP, Register::DI),
                (Register::SI, Register::None),
                (Register::BX, Register::None),
            ][rng.random_range(0..6)];
            MemoryOperand::new(b, i, 1, rng.random_range(0..0x100), 2, false, seg)
        }
    }
}

trait WithSeg {
    fn with_seg(self, seg: Register) -> MemoryOperand;
}
impl WithSeg for MemoryOperand {
    fn with_seg(mut self, seg: Register) -> MemoryOperand {
        self.segment_prefix = seg;
        self
    }
}

/// Build one instruction of `code` with random operands; `None` if iced refuses the combination.
fn build(code: Code, rng: &mut TestRng) -> Option<Instruction> {
    use Mnemonic as M;
    let m = code.mnemonic();
    let oc = code.op_code();
    // String instructions have their own constructors.
    let rep = match rng.random_range(0..3) {
        0 => RepPrefixKind::None,
        1 => RepPrefixKind::Repe,
        _ => RepPrefixKind::Repne,
    };
    let asz = if rng.random_range(0..8) == 0 { 16 } else { 32 };
    let seg = seg_prefix(rng);
    let s = match m {
        M::Movsb => Some(Instruction::with_movsb(asz, seg, rep)),
        M::Movsw => Some(Instruction::with_movsw(asz, seg, rep)),
        M::Movsd => Some(Instruction::with_movsd(asz, seg, rep)),
        M::Cmpsb => Some(Instruction::with_cmpsb(asz, seg, rep)),
        M::Cmpsw => Some(Instruction::with_cmpsw(asz, seg, rep)),
        M::Cmpsd => Some(Instruction::with_cmpsd(asz, seg, rep)),
        M::Scasb => Some(Instruction::with_scasb(asz, rep)),
        M::Scasw => Some(Instruction::with_scasw(asz, rep)),
        M::Scasd => Some(Instruction::with_scasd(asz, rep)),
        M::Lodsb => Some(Instruction::with_lodsb(asz, seg, rep)),
        M::Lodsw => Some(Instruction::with_lodsw(asz, seg, rep)),
        M::Lodsd => Some(Instruction::with_lodsd(asz, seg, rep)),
        M::Stosb => Some(Instruction::with_stosb(asz, rep)),
        M::Stosw => Some(Instruction::with_stosw(asz, rep)),
        M::Stosd => Some(Instruction::with_stosd(asz, rep)),
        M::Insb => Some(Instruction::with_insb(asz, rep)),
        M::Insw => Some(Instruction::with_insw(asz, rep)),
        M::Insd => Some(Instruction::with_insd(asz, rep)),
        M::Outsb => Some(Instruction::with_outsb(asz, seg, rep)),
        M::Outsw => Some(Instruction::with_outsw(asz, seg, rep)),
        M::Outsd => Some(Instruction::with_outsd(asz, seg, rep)),
        M::Xlatb => {
            let base = if asz == 16 {
                Register::BX
            } else {
                Register::EBX
            };
            let mo = MemoryOperand::new(base, Register::AL, 1, 0, 0, false, seg);
            return Instruction::with1(code, mo).ok();
        }
        _ => None,
    };
    if let Some(r) = s {
        return r.ok();
    }
    let mut ops: Vec<Op> = Vec::new();
    for (n, k) in oc.op_kinds().iter().enumerate() {
        let op = match k {
            K::r8_or_mem => {
                if rng.random_range(0..2) == 0 {
                    Op::R(gpr8(rng))
                } else {
                    Op::M(mem(rng))
                }
            }
            K::r16_or_mem => {
                if rng.random_range(0..2) == 0 {
                    Op::R(gpr16(rng))
                } else {
                    Op::M(mem(rng))
                }
            }
            K::r32_or_mem => {
                if rng.random_range(0..2) == 0 {
                    Op::R(gpr32(rng, n > 0))
                } else {
                    Op::M(mem(rng))
                }
            }
            K::mem if matches!(m, M::Lds | M::Les | M::Lfs | M::Lgs | M::Lss) => {
                let k = rng.random_range(0..SELECTORS.len() as u32);
                let seg = seg_prefix(rng);
                Op::M(MemoryOperand::with_displ((FARPTRS + 8 * k) as u64, 4).with_seg(seg))
            }
            K::mem_offs => {
                // moffs: a bare displacement (32-bit, or 16-bit with a 67h prefix).
                let seg = seg_prefix(rng);
                if rng.random_range(0..8) == 0 {
                    Op::M(MemoryOperand::with_displ(rng.random_range(0..0x10000), 2).with_seg(seg))
                } else {
                    let a = DATA + rng.random_range(0..DATA_PAGES * 0x1000 + 0x1100);
                    Op::M(MemoryOperand::with_displ(a as u64, 4).with_seg(seg))
                }
            }
            K::mem => Op::M(mem(rng)),
            K::r8_reg | K::r8_opcode => Op::R(gpr8(rng)),
            K::r16_reg | K::r16_opcode | K::r16_rm | K::r16_reg_mem => Op::R(gpr16(rng)),
            K::r32_reg | K::r32_opcode | K::r32_rm | K::r32_reg_mem => Op::R(gpr32(rng, n > 0)),
            K::seg_reg => {
                let all = [
                    Register::ES,
                    Register::CS,
                    Register::SS,
                    Register::DS,
                    Register::FS,
                    Register::GS,
                ];
                Op::R(all[rng.random_range(0..6)])
            }
            K::cr_reg => Op::R(
                [Register::CR0, Register::CR2, Register::CR3, Register::CR4]
                    [rng.random_range(0..4)],
            ),
            K::dr_reg => Op::R(
                [Register::DR0, Register::DR3, Register::DR6, Register::DR7]
                    [rng.random_range(0..4)],
            ),
            K::imm8 => {
                let v: u32 = match m {
                    M::Int => [3u32, 4, 1, 0x21, 0x40, 0xff, 0x0d, 0x0e][rng.random_range(0..8)],
                    M::Enter => rng.random_range(0..4),
                    _ => edge32(rng) & 0xff,
                };
                Op::I(v)
            }
            K::imm8_const_1 => Op::I(1),
            K::imm8sex16 | K::imm8sex32 => Op::I((edge32(rng) & 0xff) as i8 as i32 as u32),
            K::imm16 => Op::I(if m == M::Enter {
                rng.random_range(0..64)
            } else {
                edge32(rng) & 0xffff
            }),
            K::imm32 => Op::I(edge32(rng)),
            K::al => Op::R(Register::AL),
            K::cl => Op::R(Register::CL),
            K::ax => Op::R(Register::AX),
            K::dx => Op::R(Register::DX),
            K::eax => Op::R(Register::EAX),
            K::es => Op::R(Register::ES),
            K::cs => Op::R(Register::CS),
            K::ss => Op::R(Register::SS),
            K::ds => Op::R(Register::DS),
            K::fs => Op::R(Register::FS),
            K::gs => Op::R(Register::GS),
            K::br16_2 => return Instruction::with_branch(code, rng.random_range(0..0x10000)).ok(),
            K::br32_1 | K::br32_4 => return Instruction::with_branch(code, 0).ok(),
            _ => return None,
        };
        ops.push(op);
    }
    // MOV to CS is #UD and iced encodes it; keep it. POP CS does not exist in 32-bit mode.
    let r = match ops.as_slice() {
        [] => Some(Instruction::with(code)),
        [a] => a.with1(code),
        [a, b] => a.with2(code, b),
        [a, b, c] => a.with3(code, b, c),
        _ => None,
    };
    r
}

#[derive(Clone, Copy)]
enum Op {
    R(Register),
    M(MemoryOperand),
    I(u32),
}

impl Op {
    fn with1(&self, code: Code) -> Option<Instruction> {
        match *self {
            Op::R(r) => Instruction::with1(code, r).ok(),
            Op::M(m) => Instruction::with1(code, m).ok(),
            Op::I(i) => Instruction::with1(code, i).ok(),
        }
    }
    fn with2(&self, code: Code, b: &Op) -> Option<Instruction> {
        match (*self, *b) {
            (Op::R(a), Op::R(b)) => Instruction::with2(code, a, b).ok(),
            (Op::R(a), Op::M(b)) => Instruction::with2(code, a, b).ok(),
            (Op::R(a), Op::I(b)) => Instruction::with2(code, a, b).ok(),
            (Op::M(a), Op::R(b)) => Instruction::with2(code, a, b).ok(),
            (Op::M(a), Op::I(b)) => Instruction::with2(code, a, b).ok(),
            (Op::I(a), Op::I(b)) => Instruction::with2(code, a, b).ok(),
            (Op::I(a), Op::R(b)) => Instruction::with2(code, a, b).ok(),
            _ => None,
        }
    }
    fn with3(&self, code: Code, b: &Op, c: &Op) -> Option<Instruction> {
        match (*self, *b, *c) {
            (Op::R(a), Op::R(b), Op::I(c)) => Instruction::with3(code, a, b, c).ok(),
            (Op::R(a), Op::M(b), Op::I(c)) => Instruction::with3(code, a, b, c).ok(),
            (Op::M(a), Op::R(b), Op::I(c)) => Instruction::with3(code, a, b, c).ok(),
            (Op::R(a), Op::R(b), Op::R(c)) => Instruction::with3(code, a, b, c).ok(),
            (Op::M(a), Op::R(b), Op::R(c)) => Instruction::with3(code, a, b, c).ok(),
            _ => None,
        }
    }
}

/// Generate a case of `len` instructions drawn from `fams`.
pub fn generate(rng: &mut TestRng, fams: &[Family], len: usize) -> Case {
    let table = codes();
    let mut insns: Vec<GenInsn> = Vec::new();
    // Indices that continue a pattern: no branch may land there.
    let mut inside: Vec<usize> = Vec::new();
    while insns.len() < len {
        let fam = fams[rng.random_range(0..fams.len())];
        let Some(list) = table.get(&fam) else {
            continue;
        };
        // Patterns: CALL/RET and indirect transfers need addresses of the case's own code.
        if fam == Family::Control && rng.random_range(0..6) == 0 {
            let start = insns.len();
            pattern(rng, &mut insns, len);
            inside.extend(start + 1..insns.len());
            continue;
        }
        let code = list[rng.random_range(0..list.len())];
        let Some(insn) = build(code, rng) else {
            continue;
        };
        if let Some(setup) = selector_setup(&insn, rng) {
            insns.push(GenInsn {
                insn: setup,
                target: None,
                addr_of: None,
            });
            inside.push(insns.len());
        }
        let is_branch = insn.op0_kind() == iced_x86::OpKind::NearBranch32;
        let target = if is_branch {
            // Forward only: no generated case loops.
            let here = insns.len();
            Some(rng.random_range(here + 1..=len.max(here + 1)))
        } else {
            None
        };
        insns.push(GenInsn {
            insn,
            target,
            addr_of: None,
        });
    }
    // Targets past the end go to the HLT; targets inside a pattern move to its end.
    let n = insns.len();
    let fix = |t: usize| {
        let mut t = t.min(n);
        while t < n && inside.contains(&t) {
            t += 1;
        }
        t
    };
    for g in insns.iter_mut() {
        if let Some(t) = g.target.as_mut() {
            *t = fix(*t);
        }
        if let Some(t) = g.addr_of.as_mut() {
            *t = fix(*t);
        }
    }
    let mut gpr = [0u32; 8];
    for (k, r) in gpr.iter_mut().enumerate() {
        *r = match k {
            3 => DATA + rng.random_range(0..0x200),
            4 => {
                STACK
                    + 4 * rng.random_range(0..64)
                    + if rng.random_range(0..16) == 0 { 2 } else { 0 }
            }
            5 => DATA + 0x1000 + rng.random_range(0..0x100),
            6 | 7 => {
                if rng.random_range(0..4) == 0 {
                    edge32(rng)
                } else {
                    DATA + rng.random_range(0..DATA_PAGES * 0x1000)
                }
            }
            1 => {
                if rng.random_range(0..3) == 0 {
                    rng.random_range(0..40)
                } else {
                    edge32(rng)
                }
            }
            _ => edge32(rng),
        };
    }
    let mut eflags = 0x202 | (rng.random::<u32>() & 0x8d5);
    if rng.random_range(0..4) == 0 {
        eflags |= 0x400; // DF
    }
    if rng.random_range(0..10) == 0 {
        eflags |= 0x4_0000; // AC: alignment checking (Linux sets CR0.AM)
    }
    Case {
        gpr,
        eflags,
        seed: rng.random(),
        insns,
    }
}

/// Segment loads and selector inspections get a selector from [`SELECTORS`] in their source
/// register (or on the stack, for POP Sreg) from an instruction inserted before them.
fn selector_setup(i: &Instruction, rng: &mut TestRng) -> Option<Instruction> {
    use Mnemonic as M;
    let sel = SELECTORS[rng.random_range(0..SELECTORS.len())] as u32;
    let src = |n: u32| (i.op_kind(n) == iced_x86::OpKind::Register).then(|| i.op_register(n));
    match i.mnemonic() {
        M::Mov
            if i.op0_kind() == iced_x86::OpKind::Register
                && i.op0_register().is_segment_register() =>
        {
            let r = src(1)?;
            Instruction::with2(
                if r.size() == 4 {
                    Code::Mov_r32_imm32
                } else {
                    Code::Mov_r16_imm16
                },
                r,
                sel,
            )
            .ok()
        }
        M::Lar | M::Lsl | M::Verr | M::Verw | M::Arpl => {
            let n = if matches!(i.mnemonic(), M::Verr | M::Verw) {
                0
            } else {
                1
            };
            let r = src(n)?;
            Instruction::with2(
                if r.size() == 4 {
                    Code::Mov_r32_imm32
                } else {
                    Code::Mov_r16_imm16
                },
                r,
                sel,
            )
            .ok()
        }
        M::Pop
            if i.op0_kind() == iced_x86::OpKind::Register
                && i.op0_register().is_segment_register() =>
        {
            let c = if format!("{:?}", i.code()).ends_with("16") {
                Code::Push_imm16
            } else {
                Code::Pushd_imm32
            };
            Instruction::with1(c, sel).ok()
        }
        _ => None,
    }
}

/// CALL/RET and indirect transfer patterns.
fn pattern(rng: &mut TestRng, insns: &mut Vec<GenInsn>, len: usize) {
    let here = insns.len();
    let t = rng.random_range(here + 1..=len.max(here + 2));
    match rng.random_range(0..4) {
        0 => {
            // call L; ... L: (the return address stays on the stack)
            insns.push(GenInsn {
                insn: Instruction::with_branch(Code::Call_rel32_32, 0).unwrap(),
                target: Some(t + 1),
                addr_of: None,
            });
        }
        1 => {
            // push <addr>; ret  (or ret imm16)
            insns.push(GenInsn {
                insn: Instruction::with1(Code::Pushd_imm32, 0u32).unwrap(),
                target: None,
                addr_of: Some(t + 2),
            });
            let ret = if rng.random_range(0..2) == 0 {
                Instruction::with(Code::Retnd)
            } else {
                Instruction::with1(Code::Retnd_imm16, rng.random_range(0..16u32) * 2).unwrap()
            };
            insns.push(GenInsn {
                insn: ret,
                target: None,
                addr_of: None,
            });
        }
        2 => {
            // mov reg, <addr>; jmp reg   or  call reg
            let r = [Register::EAX, Register::EDX, Register::ESI][rng.random_range(0..3)];
            insns.push(GenInsn {
                insn: Instruction::with2(Code::Mov_r32_imm32, r, 0u32).unwrap(),
                target: None,
                addr_of: Some(t + 2),
            });
            let c = if rng.random_range(0..2) == 0 {
                Code::Jmp_rm32
            } else {
                Code::Call_rm32
            };
            insns.push(GenInsn {
                insn: Instruction::with1(c, r).unwrap(),
                target: None,
                addr_of: None,
            });
        }
        _ => {
            // jmp [mem] through a pointer written just before
            let r = Register::EAX;
            insns.push(GenInsn {
                insn: Instruction::with2(Code::Mov_r32_imm32, r, 0u32).unwrap(),
                target: None,
                addr_of: Some(t + 3),
            });
            let slot = MemoryOperand::with_base_displ(Register::EBX, 0x40);
            insns.push(GenInsn {
                insn: Instruction::with2(Code::Mov_rm32_r32, slot, r).unwrap(),
                target: None,
                addr_of: None,
            });
            insns.push(GenInsn {
                insn: Instruction::with1(Code::Jmp_rm32, slot).unwrap(),
                target: None,
                addr_of: None,
            });
        }
    }
}

/// The proptest strategy of cases drawn from `fams`, 1 to `max_len` instructions.
pub fn cases(fams: &'static [Family], max_len: usize) -> impl Strategy<Value = Case> {
    (1..=max_len, any::<u64>()).prop_perturb(move |(len, _), mut rng| generate(&mut rng, fams, len))
}
