//! Translation units: guest code decoded on demand (DynamoRIO's "basic blocks").
//!
//! A unit starts at a guest EIP and extends up to and including the first control transfer
//! (anything whose iced-x86 flow control is not `Next`), an instruction the classification says
//! ends a unit (mode-changing callouts such as MOV CR0 or MOV SS), or a size bound (bytes,
//! instructions, and conditional branches). The instruction after an STI is always included when
//! it can be decoded (the STI interrupt shadow: the pending-interrupt check comes after it).
//!
//! A conditional branch (Jcc) does not end a unit while [`Limits::max_jcc`] allows: the unit
//! goes on with its fall-through path (a *superblock*), so that the translated code keeps the
//! guest's straight-line layout: the not-taken way costs no jump between fragments, and a branch
//! to a later instruction of the same unit stays inside the fragment (`mangle.rs`). When the
//! fall-through bytes cannot be decoded (an unreadable page, an invalid encoding), the unit ends
//! at the branch instead, falling through to a unit of its own, so that a fragment never
//! depends on a page it only might run.
//!
//! Code is read through [`GuestCode`], by linear address; a unit records every guest page it
//! was decoded from (an instruction that straddles a page boundary adds both pages), so the
//! cache can index it by guest frame. The unit ends with a marker when the bytes run out
//! ([`UnitEnd::FetchFault`]: the instruction at that EIP could not be read completely) or do not
//! form a valid instruction ([`UnitEnd::Invalid`]).
//!
//! 16-bit code segments decode in 16-bit mode; the instructions keep their operand and
//! address sizes when the translator re-encodes them as 32-bit code. IP wraps at 64 KiB (EIP
//! at 4 GiB): a unit ends before it would wrap.

use iced_x86::{Code, Decoder, DecoderError, DecoderOptions, FlowControl, Instruction, Mnemonic};

use crate::classify::{self, Translation};
use crate::Mode;

/// Guest code, read by guest linear address.
pub trait GuestCode {
    /// Copies up to `buf.len()` bytes of guest code starting at linear address `lin` into `buf`
    /// and returns how many are readable from `lin` on (fewer than asked, possibly 0, when an
    /// unreadable page follows). Reads never wrap past 4 GiB.
    fn read(&mut self, lin: u32, buf: &mut [u8]) -> usize;
}

/// A flat byte slice at a linear base address: handy for tests and fuzzing.
pub struct SliceCode<'a> {
    /// Linear address of `bytes[0]`.
    pub base: u32,
    /// The code.
    pub bytes: &'a [u8],
}

impl GuestCode for SliceCode<'_> {
    fn read(&mut self, lin: u32, buf: &mut [u8]) -> usize {
        let Some(off) = lin.checked_sub(self.base) else {
            return 0;
        };
        let off = off as usize;
        if off >= self.bytes.len() {
            return 0;
        }
        let n = buf.len().min(self.bytes.len() - off);
        buf[..n].copy_from_slice(&self.bytes[off..off + n]);
        n
    }
}

/// Size bounds of a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Maximum guest bytes in a unit (the instruction that crosses it is still included).
    pub max_bytes: u32,
    /// Maximum instructions in a unit.
    pub max_insns: u32,
    /// Conditional branches (Jcc) a unit may go on past; 0: every Jcc ends its unit (basic
    /// blocks).
    pub max_jcc: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 256,
            max_insns: 64,
            max_jcc: 4,
        }
    }
}

/// One guest instruction of a unit.
#[derive(Clone, Debug)]
pub struct GuestInsn {
    /// Its guest EIP (offset in CS).
    pub eip: u32,
    /// Its bytes (`len` of them are valid).
    pub bytes: [u8; 15],
    /// Its length.
    pub len: u8,
    /// The decoded instruction; its `ip()` is the guest EIP.
    pub instr: Instruction,
}

impl GuestInsn {
    /// The guest EIP of the next instruction.
    pub fn next_eip(&self) -> u32 {
        self.eip.wrapping_add(self.len as u32)
    }
}

/// Why a unit ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitEnd {
    /// The last instruction transfers control (or is a callout that ends units).
    Branch,
    /// A size bound was reached; the unit falls through to `next`.
    Limit {
        /// Guest EIP that follows.
        next: u32,
    },
    /// The bytes at `eip` are not a valid instruction: "raise #UD here".
    Invalid {
        /// Where.
        eip: u32,
    },
    /// The instruction at `eip` could not be read (completely): "fetch fault here".
    FetchFault {
        /// Where.
        eip: u32,
    },
}

/// A decoded translation unit.
#[derive(Clone, Debug)]
pub struct Unit {
    /// Guest EIP of the first instruction.
    pub start: u32,
    /// CS base the unit was decoded with (linear = base + EIP).
    pub cs_base: u32,
    /// The mode it was decoded under.
    pub mode: Mode,
    /// The instructions, in order.
    pub insns: Vec<GuestInsn>,
    /// How it ends.
    pub end: UnitEnd,
    /// Linear page numbers (address >> 12) of every byte decoded, ascending, without duplicates.
    pub pages: Vec<u32>,
}

impl Unit {
    /// Guest bytes covered by the unit's instructions.
    pub fn guest_len(&self) -> u32 {
        self.insns.iter().map(|i| i.len as u32).sum()
    }
}

fn add_pages(pages: &mut Vec<u32>, lin: u32, len: u32) {
    if len == 0 {
        return;
    }
    let first = lin >> 12;
    let last = lin.wrapping_add(len - 1) >> 12;
    for p in [first, last] {
        if let Err(pos) = pages.binary_search(&p) {
            pages.insert(pos, p);
        }
    }
}

/// Decodes the unit at guest `eip` (linear `cs_base + eip`) under `mode`.
pub fn decode_unit(
    code: &mut dyn GuestCode,
    cs_base: u32,
    eip: u32,
    mode: Mode,
    limits: Limits,
) -> Unit {
    let bitness = if mode.code32 { 32 } else { 16 };
    let ip_mask: u64 = if mode.code32 { 0xffff_ffff } else { 0xffff };
    let mut unit = Unit {
        start: eip,
        cs_base,
        mode,
        insns: Vec::new(),
        end: UnitEnd::Limit { next: eip },
        pages: Vec::new(),
    };
    let mut cur = eip;
    let mut bytes_total = 0u32;
    let mut jccs = 0u32;
    // The unit went on past a Jcc at the previous instruction.
    let mut past_jcc = false;
    loop {
        let lin = cs_base.wrapping_add(cur);
        let mut buf = [0u8; 15];
        let want = (0x1_0000_0000u64 - lin as u64).min(15) as usize;
        let avail = code.read(lin, &mut buf[..want]).min(want);
        let mut dec = Decoder::with_ip(bitness, &buf[..avail], cur as u64, DecoderOptions::NONE);
        let instr = dec.decode();
        if instr.code() == Code::INVALID && past_jcc {
            // Only the fall-through way would run it: end at the branch.
            unit.end = UnitEnd::Branch;
            return unit;
        }
        if instr.code() == Code::INVALID {
            let err = dec.last_error();
            // An instruction cut short by an unreadable page (or by 4 GiB) is a fetch fault;
            // otherwise the bytes are simply not an instruction.
            // The decoder can run out of bytes on an invalid encoding too: decode again with
            // the missing bytes as zeros to tell the two apart.
            let cut_short = err == DecoderError::NoMoreBytes && avail < 15 && {
                let mut padded = [0u8; 15];
                padded[..avail].copy_from_slice(&buf[..avail]);
                Decoder::with_ip(bitness, &padded[..want], cur as u64, DecoderOptions::NONE)
                    .decode()
                    .code()
                    != Code::INVALID
            };
            unit.end = if cut_short {
                add_pages(&mut unit.pages, lin, avail.max(1) as u32);
                UnitEnd::FetchFault { eip: cur }
            } else {
                add_pages(&mut unit.pages, lin, avail as u32);
                UnitEnd::Invalid { eip: cur }
            };
            return unit;
        }
        let len = instr.len() as u32;
        add_pages(&mut unit.pages, lin, len);
        let next = cur as u64 + len as u64;
        let mut gi = GuestInsn {
            eip: cur,
            bytes: [0; 15],
            len: len as u8,
            instr,
        };
        gi.bytes[..len as usize].copy_from_slice(&buf[..len as usize]);
        let goes_on = gi.instr.code().is_jcc_short_or_near() && jccs < limits.max_jcc;
        let ends = !goes_on && ends_unit(&gi.instr, mode);
        jccs += goes_on as u32;
        past_jcc = goes_on;
        let is_sti = gi.instr.mnemonic() == Mnemonic::Sti;
        unit.insns.push(gi);
        bytes_total += len;
        if ends {
            unit.end = UnitEnd::Branch;
            return unit;
        }
        if next > ip_mask || (lin as u64 + len as u64) > 0xffff_ffff {
            // IP would wrap (or the linear address would): stop here and let the next unit
            // start at the wrapped EIP.
            unit.end = if past_jcc {
                UnitEnd::Branch
            } else {
                UnitEnd::Limit {
                    next: (next & ip_mask) as u32,
                }
            };
            return unit;
        }
        cur = next as u32;
        let at_limit =
            bytes_total >= limits.max_bytes || unit.insns.len() as u32 >= limits.max_insns;
        if at_limit && !is_sti {
            unit.end = if past_jcc {
                UnitEnd::Branch
            } else {
                UnitEnd::Limit { next: cur }
            };
            return unit;
        }
    }
}

/// Whether `instr` ends a unit: control transfers, and callouts after which the mode may
/// differ.
pub fn ends_unit(instr: &Instruction, mode: Mode) -> bool {
    if instr.flow_control() != FlowControl::Next {
        return true;
    }
    let c = classify::classify(instr, mode, &classify::Model::default());
    match c.translation {
        Translation::Callout(k) => c.class.ends_unit || k.ends_unit(),
        _ => c.class.ends_unit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode32() -> Mode {
        Mode::kernel32()
    }

    fn unit(bytes: &[u8], base: u32) -> Unit {
        decode_unit(
            &mut SliceCode { base, bytes },
            0,
            base,
            mode32(),
            Limits::default(),
        )
    }

    #[test]
    fn stops_after_a_branch() {
        // mov eax,1; add eax,ebx; jmp $; nop
        let u = unit(&[0xb8, 1, 0, 0, 0, 0x01, 0xd8, 0xeb, 0xfe, 0x90], 0x1000);
        assert_eq!(u.insns.len(), 3);
        assert_eq!(u.end, UnitEnd::Branch);
        assert_eq!(u.insns[2].eip, 0x1007);
        assert_eq!(&u.insns[0].bytes[..5], &[0xb8, 1, 0, 0, 0]);
        assert_eq!(u.pages, vec![1]);
    }

    #[test]
    fn invalid_encoding_marks_ud() {
        let u = unit(&[0x90, 0x0f, 0x04], 0x1000);
        assert_eq!(u.insns.len(), 1);
        assert_eq!(u.end, UnitEnd::Invalid { eip: 0x1001 });
    }

    #[test]
    fn unreadable_page_marks_fetch_fault() {
        // A 5-byte MOV whose last 2 bytes lie in an unreadable page.
        let u = unit(&[0x90, 0xb8, 1, 2], 0x1ffc);
        assert_eq!(u.insns.len(), 1);
        assert_eq!(u.end, UnitEnd::FetchFault { eip: 0x1ffd });
        let u = unit(&[0x90, 0x90], 0x1ffe);
        assert_eq!(u.end, UnitEnd::FetchFault { eip: 0x2000 });
        assert_eq!(u.pages, vec![1, 2]);
    }

    #[test]
    fn straddling_instruction_records_both_pages() {
        // mov eax, imm32 across 0x2000, then ret.
        let u = unit(&[0xb8, 1, 2, 3, 4, 0xc3], 0x1ffe);
        assert_eq!(u.insns.len(), 2);
        assert_eq!(u.pages, vec![1, 2]);
    }

    #[test]
    fn size_bounds() {
        let nops = [0x90u8; 100];
        let u = decode_unit(
            &mut SliceCode {
                base: 0,
                bytes: &nops,
            },
            0,
            0,
            mode32(),
            Limits {
                max_bytes: 1000,
                max_insns: 10,
                max_jcc: 0,
            },
        );
        assert_eq!(u.insns.len(), 10);
        assert_eq!(u.end, UnitEnd::Limit { next: 10 });
        let u = decode_unit(
            &mut SliceCode {
                base: 0,
                bytes: &nops,
            },
            0,
            0,
            mode32(),
            Limits {
                max_bytes: 7,
                max_insns: 100,
                max_jcc: 0,
            },
        );
        assert_eq!(u.insns.len(), 7);
    }

    #[test]
    fn sti_keeps_its_shadow_instruction() {
        // nop; sti; nop; nop with a 2-instruction bound: STI's shadow instruction stays.
        let code = [0x90, 0xfb, 0x90, 0x90];
        let u = decode_unit(
            &mut SliceCode {
                base: 0,
                bytes: &code,
            },
            0,
            0,
            mode32(),
            Limits {
                max_bytes: 100,
                max_insns: 2,
                max_jcc: 0,
            },
        );
        assert_eq!(u.insns.len(), 3);
    }

    #[test]
    fn sixteen_bit_code_and_ip_wrap() {
        let mut m = mode32();
        m.code32 = false;
        // mov ax, 1 (3 bytes in 16-bit code), at 0xfffd: IP wraps after it.
        let code = [0xb8, 1, 0];
        let u = decode_unit(
            &mut SliceCode {
                base: 0x1_fffd,
                bytes: &code,
            },
            0x1_0000,
            0xfffd,
            m,
            Limits::default(),
        );
        assert_eq!(u.insns.len(), 1);
        assert_eq!(u.insns[0].instr.code(), Code::Mov_r16_imm16);
        assert_eq!(u.end, UnitEnd::Limit { next: 0 });
    }

    #[test]
    fn mode_changing_callouts_end_units() {
        // mov cr0, eax; nop
        let u = unit(&[0x0f, 0x22, 0xc0, 0x90], 0);
        assert_eq!(u.insns.len(), 1);
        assert_eq!(u.end, UnitEnd::Branch);
        // out dx, al; nop; ret — OUT does not end the unit.
        let u = unit(&[0xee, 0x90, 0xc3], 0);
        assert_eq!(u.insns.len(), 3);
    }
}
