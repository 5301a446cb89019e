//! The block cache: how [`Cpu::run`](crate::Cpu::run) executes runs of instructions without
//! paying for a fetch, a decode-cache probe and an instruction copy per instruction.
//!
//! # Blocks
//!
//! A block is a run of decoded instructions that lie entirely in one physical page, decoded
//! from its first instruction on until (and including) the first instruction that is not on
//! the *continuation whitelist* ([`continues`]), an instruction that would cross the page
//! end (left out: the single-instruction path handles it), an invalid encoding (left out:
//! the single-instruction path raises #UD), the end of a 16-bit code segment's offset space,
//! or [`MAX_INSNS`]. A block is keyed by (physical address of its first byte, EIP, code
//! size); these determine its contents completely given its bytes (the CS base only enters
//! through the translation, which is redone at each entry).
//!
//! The whitelist holds the instructions that cannot change anything the block was decoded or
//! entered under: not CS, CPL, the code size, paging or the TLB, EFLAGS.IF/TF, the interrupt
//! shadow, the halted state, and that do no I/O (which may run device code that writes RAM)
//! and write RAM only through the ordinary physical-write path (REP string instructions are
//! out: they write whole chunks directly). Conditional branches and LOOP/JCXZ are on the
//! whitelist: a block continues past a branch that falls through; after every instruction
//! the block checks that EIP equals the next instruction's address and leaves otherwise
//! (taken branch, fault). Everything else (far transfers, IRET, INT, MOV CRn, LMSW, CLTS,
//! STI/CLI/POPF, MOV/POP to a segment register, HLT, I/O, system instructions, unknown ones)
//! ends the block as its last instruction.
//!
//! # Entry and validation
//!
//! At each block entry `run` does what `step` does before an instruction: it polls the
//! interrupt line (so interrupts are recognised at block boundaries: a delay of a few
//! instructions, architecturally invisible, as on a real CPU between instruction
//! boundaries) and the halted state. Then it checks CS:EIP against the CS limit, translates
//! the fetch address (one TLB lookup for the whole block), finds the block and compares its
//! bytes with RAM. A mismatch rebuilds it. Like the decoded-instruction cache, the block
//! cache thus needs no invalidation: whoever changed the code (the guest, a device, the
//! monitor) is seen at the next entry. If the block extends past the CS limit, only the
//! instructions that lie entirely within it run from the block. With EFLAGS.TF set, or where
//! no block can be built (page outside RAM, first instruction crossing the page end or
//! invalid), `run` falls back to the single-instruction path (`step`), which is exact by
//! construction. `run(budget)` never executes more than `budget` instructions: a block is
//! cut to the budget left.
//!
//! # Self-modifying code
//!
//! Writes *during* a block are caught without any notification from the writers: while a
//! block runs, the physical range of its bytes is armed in a [`Guard`], and every physical
//! write (`phys_write_*`) compares its address against that range (one subtraction and one
//! comparison); any MMIO access also trips it (a device model may write RAM). A tripped guard
//! ends the block after the writing instruction, so the next instruction is fetched through
//! a new entry, which revalidates the bytes: a store into the next instruction is seen by
//! that instruction, exactly as with one fetch per instruction.
//!
//! # What stays per instruction
//!
//! The register snapshot for the fault path, the next-EIP computation, the dispatch and the
//! handler, and the checks that end a block (pending exit, guard, EIP).

use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic as M, OpKind};

use crate::fast::{classify, Fast};

/// Most instructions in a block.
pub(crate) const MAX_INSNS: usize = 32;
const BITS: u32 = 12;
const SLOTS: usize = 1 << BITS;

#[derive(Clone, Default)]
pub(crate) struct Block {
    pub phys: u32,
    pub eip: u32,
    /// 16 or 32; 0 for an empty slot.
    pub mode: u32,
    /// The bytes the instructions were decoded from (`bytes.len()` is the block's length).
    pub bytes: Vec<u8>,
    pub insns: Vec<Instruction>,
    /// The fast path of each instruction (`fast.rs`).
    pub fast: Vec<Fast>,
}

/// The physical byte range of the running block, armed while it runs.
#[derive(Clone, Copy, Default)]
pub(crate) struct Guard {
    /// First byte of the block minus 7, so that a write of up to 8 bytes starting before the
    /// block but reaching into it is caught.
    lo: u32,
    /// Length of the armed range (0: disarmed).
    span: u32,
    /// Set by a write into the armed range (or any MMIO access).
    pub hit: bool,
}

impl Guard {
    /// Note a physical write of up to 8 bytes at `p`.
    #[inline(always)]
    pub fn write(&mut self, p: u32) {
        if p.wrapping_sub(self.lo) < self.span {
            self.hit = true;
        }
    }

    pub fn arm(&mut self, phys: u32, len: u32) {
        self.lo = phys.wrapping_sub(7);
        self.span = len + 7;
        self.hit = false;
    }

    pub fn disarm(&mut self) {
        self.span = 0;
    }
}

pub(crate) struct BlockCache {
    /// Allocated on first use (many short-lived CPUs never run a block).
    pub slots: Vec<Block>,
    pub guard: Guard,
    pub builds: u64,
}

impl BlockCache {
    pub fn new() -> BlockCache {
        BlockCache { slots: Vec::new(), guard: Guard::default(), builds: 0 }
    }

    #[inline]
    fn slot(phys: u32, eip: u32) -> usize {
        (phys.wrapping_add(eip << 20).wrapping_mul(0x9e37_79b1) >> (32 - BITS)) as usize
    }

    /// The slot of a valid block for (`phys`, `eip`, `mode`), building it from `ram` if
    /// needed; `None` if no block can start here (see the module documentation).
    #[inline]
    pub fn lookup(&mut self, ram: &[u8], phys: u32, eip: u32, mode: u32) -> Option<usize> {
        if self.slots.is_empty() {
            self.slots = vec![Block::default(); SLOTS];
        }
        let s = BlockCache::slot(phys, eip);
        let b = &self.slots[s];
        if b.phys == phys && b.eip == eip && b.mode == mode {
            let p = phys as usize;
            if let Some(r) = ram.get(p..p + b.bytes.len()) {
                if same(r, &b.bytes) {
                    return Some(s);
                }
            }
        }
        self.build(s, ram, phys, eip, mode)
    }

    #[cold]
    fn build(&mut self, s: usize, ram: &[u8], phys: u32, eip: u32, mode: u32) -> Option<usize> {
        self.builds += 1;
        let b = &mut self.slots[s];
        b.mode = 0;
        b.insns.clear();
        b.fast.clear();
        b.bytes.clear();
        let p = phys as usize;
        let page_end = (p | 0xfff) + 1;
        let bytes = ram.get(p..page_end)?;
        // The highest offset + 1 an instruction may end at without the next one wrapping.
        let top: u64 = if mode == 32 { 1 << 32 } else { 1 << 16 };
        let mut d = Decoder::with_ip(mode, bytes, eip as u64, DecoderOptions::NONE);
        let mut insn = Instruction::default();
        let mut len = 0;
        while b.insns.len() < MAX_INSNS && d.can_decode() {
            d.decode_out(&mut insn);
            if insn.code() == Code::INVALID {
                // Invalid, or truncated by the page end.
                break;
            }
            b.insns.push(insn);
            b.fast.push(classify(&insn));
            len = d.position();
            if !continues(&insn) || eip as u64 + len as u64 >= top {
                break;
            }
        }
        if b.insns.is_empty() {
            return None;
        }
        b.bytes.extend_from_slice(&bytes[..len]);
        b.phys = phys;
        b.eip = eip;
        b.mode = mode;
        Some(s)
    }
}

/// `a == b` for slices of equal length, 8 bytes at a time (blocks are a few dozen bytes: a
/// call to `memcmp` cost more than the comparison).
#[inline(always)]
fn same(a: &[u8], b: &[u8]) -> bool {
    let mut diff = 0u64;
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        diff |= u64::from_le_bytes(x.try_into().unwrap()) ^ u64::from_le_bytes(y.try_into().unwrap());
    }
    diff == 0 && ra == rb
}

/// Whether a block may continue after `i` (see the module documentation).
pub(crate) fn continues(i: &Instruction) -> bool {
    match i.mnemonic() {
        M::Add | M::Adc | M::Sub | M::Sbb | M::Cmp | M::Inc | M::Dec | M::Neg | M::Mul | M::Imul | M::Div
        | M::Idiv | M::And | M::Or | M::Xor | M::Not | M::Test | M::Shl | M::Sal | M::Shr | M::Sar | M::Rol
        | M::Ror | M::Rcl | M::Rcr | M::Shld | M::Shrd | M::Bt | M::Bts | M::Btr | M::Btc | M::Bsf | M::Bsr
        | M::Bswap | M::Seto | M::Setno | M::Setb | M::Setae | M::Sete | M::Setne | M::Setbe | M::Seta
        | M::Sets | M::Setns | M::Setp | M::Setnp | M::Setl | M::Setge | M::Setle | M::Setg | M::Daa
        | M::Das | M::Aaa | M::Aas | M::Aam | M::Aad | M::Movzx | M::Movsx | M::Xchg | M::Cmovo | M::Cmovno
        | M::Cmovb | M::Cmovae | M::Cmove | M::Cmovne | M::Cmovbe | M::Cmova | M::Cmovs | M::Cmovns
        | M::Cmovp | M::Cmovnp | M::Cmovl | M::Cmovge | M::Cmovle | M::Cmovg | M::Lea | M::Cbw | M::Cwde
        | M::Cwd | M::Cdq | M::Xlatb | M::Cmpxchg | M::Cmpxchg8b | M::Xadd | M::Lahf | M::Sahf | M::Clc
        | M::Stc | M::Cmc | M::Cld | M::Std | M::Nop | M::Salc | M::Push | M::Pusha | M::Pushad | M::Pushf
        | M::Pushfd | M::Enter | M::Leave | M::Bound => true,
        // Conditional near branches: the block goes on if the branch falls through.
        M::Jo | M::Jno | M::Jb | M::Jae | M::Je | M::Jne | M::Jbe | M::Ja | M::Js | M::Jns | M::Jp | M::Jnp
        | M::Jl | M::Jge | M::Jle | M::Jg | M::Loop | M::Loope | M::Loopne | M::Jcxz | M::Jecxz => true,
        // Not to a segment, control, debug or test register.
        M::Mov | M::Pop => !has_special_reg(i),
        // String instructions without a repeat prefix (REP writes RAM in chunks directly);
        // not INS/OUTS (I/O).
        M::Movsb | M::Movsw | M::Movsd | M::Cmpsb | M::Cmpsw | M::Cmpsd | M::Scasb | M::Scasw | M::Scasd
        | M::Lodsb | M::Lodsw | M::Lodsd | M::Stosb | M::Stosw | M::Stosd => {
            !i.has_rep_prefix() && !i.has_repne_prefix()
        }
        _ => false,
    }
}

fn has_special_reg(i: &Instruction) -> bool {
    (0..i.op_count()).any(|n| {
        i.op_kind(n) == OpKind::Register && {
            let r = i.op_register(n);
            r.is_segment_register() || r.is_cr() || r.is_dr() || r.is_tr()
        }
    })
}
