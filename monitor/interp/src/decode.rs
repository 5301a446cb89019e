//! Instruction fetch and the decoded-instruction cache.
//!
//! Decoding with iced-x86 costs more than executing most instructions, so decoded
//! instructions are kept in a direct-mapped cache keyed by physical address, EIP and code
//! size. A hit is only taken if the instruction's bytes in RAM still equal the bytes that
//! were decoded, so the cache needs no invalidation when anything (the guest, a device, the
//! monitor) writes code: self-modifying code just misses.
//!
//! Instructions that cross a page boundary, or that lie outside RAM, are never cached.
//!
//! This is the single-instruction path: `step`, and `run` where it cannot use a block (with
//! EFLAGS.TF set, in an interrupt shadow, at a page-crossing or invalid instruction, at the
//! CS limit, outside RAM). `run` otherwise executes from the block cache (`block.rs`), which
//! applies the same validation once per block instead of once per instruction.

use iced_x86::{Code, Decoder, DecoderError, DecoderOptions, Instruction};

use crate::exc;
use crate::mmu::Access;
use crate::state::SegReg;
use crate::{Bus, Cpu, Res};

/// 4096 entries: `run()` executes from the block cache (`block.rs`); this cache serves `step()`
/// (single-instruction emulation, the monitor's callouts, the oracle's step-by-step runs).
const BITS: u32 = 12;
const SIZE: usize = 1 << BITS;

#[derive(Clone, Copy)]
struct Entry {
    phys: u32,
    eip: u32,
    /// 16 or 32; 0 for an empty entry.
    mode: u32,
    lo: u64,
    hi: u64,
    mlo: u64,
    mhi: u64,
    insn: Instruction,
}

pub(crate) struct DecodeCache {
    entries: Vec<Entry>,
    pub hits: u64,
    pub misses: u64,
}

impl DecodeCache {
    /// An empty cache: the table is allocated at the first lookup, so that creating a CPU
    /// costs nothing (the oracle creates one per test case).
    pub fn new() -> DecodeCache {
        DecodeCache { entries: Vec::new(), hits: 0, misses: 0 }
    }

    #[inline]
    fn ensure(&mut self) {
        if self.entries.is_empty() {
            let empty = Entry { phys: 0, eip: 0, mode: 0, lo: 0, hi: 0, mlo: 0, mhi: 0, insn: Instruction::default() };
            // One extra entry past the cache proper holds instructions that are never cached.
            self.entries = vec![empty; SIZE + 1];
        }
    }

    #[inline]
    fn slot(phys: u32) -> usize {
        (phys.wrapping_mul(0x9e37_79b1) >> (32 - BITS)) as usize
    }
}

#[inline]
fn load16(ram: &[u8], p: usize) -> Option<(u64, u64)> {
    let b = ram.get(p..p + 16)?;
    Some((u64::from_le_bytes(b[0..8].try_into().unwrap()), u64::from_le_bytes(b[8..16].try_into().unwrap())))
}

fn masks(len: usize) -> (u64, u64) {
    let lo = if len >= 8 { !0 } else { (1u64 << (8 * len)) - 1 };
    let hi = if len <= 8 { 0 } else if len >= 16 { !0 } else { (1u64 << (8 * (len - 8))) - 1 };
    (lo, hi)
}

impl<B: Bus> Cpu<B> {
    /// The instruction in cache slot `slot` (as returned by `fetch_decode`).
    #[inline]
    pub(crate) fn cached_insn(&self, slot: usize) -> &Instruction {
        &self.icache.entries[slot].insn
    }

    /// Fetch and decode the instruction at CS:EIP (code-segment limit, paging, #UD). Returns
    /// the index of the cache entry holding it (the instruction is not returned by value:
    /// moving a 40-byte `Instruction` through a `Result` cost a store-forwarding stall per
    /// instruction).
    pub(crate) fn fetch_decode(&mut self) -> Res<usize> {
        let cs = self.state.seg[SegReg::Cs as usize];
        let eip = self.state.eip;
        let mode = if self.state.code32() { 32 } else { 16 };
        if eip > cs.limit {
            return Err(exc::gp0());
        }
        let lin = cs.base.wrapping_add(eip);
        let acc = Access::fetch(self.state.cpl == 3);
        let p0 = self.translate(lin, acc)?;

        let slot = DecodeCache::slot(p0);
        self.icache.ensure();
        {
            let e = &self.icache.entries[slot];
            if e.phys == p0 && e.eip == eip && e.mode == mode {
                let ram = self.bus.ram();
                if let Some((lo, hi)) = load16(ram, p0 as usize) {
                    if (lo ^ e.lo) & e.mlo == 0 && (hi ^ e.hi) & e.mhi == 0 {
                        let len = e.insn.len() as u32;
                        self.icache.hits += 1;
                        let last = eip.wrapping_add(len - 1);
                        if last > cs.limit || last < eip {
                            return Err(exc::gp0());
                        }
                        return Ok(slot);
                    }
                }
            }
        }
        self.icache.misses += 1;

        // Slow path: the bytes up to the end of the page, then the next page if needed.
        let mut buf = [0u8; 15];
        let in_page = (0x1000 - (lin & 0xfff)).min(15) as usize;
        for (i, b) in buf[..in_page].iter_mut().enumerate() {
            *b = self.phys_read_u8(p0 + i as u32);
        }
        let mut n = in_page;
        let mut insn = decode_one(mode, &buf[..n], eip);
        let mut crossed = false;
        if insn.is_none() && n < 15 {
            // Truncated by the page end: the instruction continues on the next page.
            let p1 = self.translate(lin.wrapping_add(n as u32), acc)?;
            for (k, b) in buf.iter_mut().enumerate().skip(n) {
                *b = self.phys_read_u8(p1 + (k - n) as u32);
            }
            n = 15;
            crossed = true;
            insn = decode_one(mode, &buf[..n], eip);
        }
        let insn = match insn {
            Some(i) if i.code() != Code::INVALID => i,
            _ => return Err(exc::ud()),
        };
        let len = insn.len();
        let last = eip.wrapping_add(len as u32 - 1);
        if last > cs.limit || last < eip {
            return Err(exc::gp0());
        }
        if !crossed {
            let ram = self.bus.ram();
            if let Some((lo, hi)) = load16(ram, p0 as usize) {
                let (mlo, mhi) = masks(len);
                self.icache.entries[slot] = Entry { phys: p0, eip, mode, lo, hi, mlo, mhi, insn };
                return Ok(slot);
            }
        }
        // Not cacheable: the scratch entry, which never matches a lookup (mode 0).
        self.icache.entries[SIZE] = Entry { phys: 0, eip: 0, mode: 0, lo: 0, hi: 0, mlo: 0, mhi: 0, insn };
        Ok(SIZE)
    }
}

/// Decode one instruction; `None` if the bytes end before the instruction does.
/// An invalid encoding comes back as `Code::INVALID`.
fn decode_one(bitness: u32, bytes: &[u8], eip: u32) -> Option<Instruction> {
    let mut d = Decoder::with_ip(bitness, bytes, eip as u64, DecoderOptions::NONE);
    let i = d.decode();
    if i.code() == Code::INVALID && d.last_error() == DecoderError::NoMoreBytes {
        return None;
    }
    Some(i)
}
