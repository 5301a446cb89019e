//! The emitter: encodes a mangled [`Seq`] into a fragment with iced-x86's `BlockEncoder`.
//!
//! Branch forms are kept as mangle.rs chose them (`DONT_FIX_BRANCHES`): every exit is a
//! `jmp rel32` or `jcc rel32`, so chaining can patch its displacement to any fragment, and the
//! short branches inside inline sequences stay short. Labels are given as instruction IPs in a
//! private range ([`LABEL_BASE`]); the block is encoded at its TC address.
//!
//! Out of the encoding come the fragment's bytes, its entry offset, its exits (offset of the
//! rel32 to patch, offset of the stub, guest target) and the PC map: for each emitted
//! instruction that starts a new (guest EIP, recovery) run, the TC offset, the guest EIP and
//! the [`Recovery`] that rebuilds the guest state if an instruction of the run faults.

use iced_x86::{BlockEncoder, BlockEncoderOptions, Instruction, InstructionBlock};

use crate::abi::Abi;
use crate::mangle::{Builder, Recovery, Seq};

/// Fake instruction IPs used as labels (far below any translation-cache address).
pub const LABEL_BASE: u64 = 0x100;

/// An exit of a fragment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitSite {
    /// Offset in the fragment of the rel32 field of the exit's branch (patched by chaining);
    /// 0 for a checked exit.
    pub patch_off: u32,
    /// Offset of the exit stub (what the rel32 points at while unchained).
    pub stub_off: u32,
    /// Guest EIP of the target.
    pub target_eip: u32,
    /// A checked exit (`jmp dword gs:[check slot]`): its check slot. Chaining writes the
    /// slot's continuation instead of a rel32.
    pub slot: Option<u32>,
}

/// A pending-interrupt check site (`Abi::check_slots`): the runtime sets the slot's
/// continuation to `tc_addr + cont_off` and its stub to `tc_addr + stub_off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckSite {
    /// The check slot.
    pub slot: u32,
    /// Offset of the continuation (for a checked exit, its exit stub).
    pub cont_off: u32,
    /// Offset of the check stub.
    pub stub_off: u32,
    /// An enabling site (after POPF or the STI shadow): armed whenever an interrupt is
    /// pending; the others only while the virtual IF is set too.
    pub enable: bool,
}

/// One run of the PC map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PcEntry {
    /// TC offset of the first emitted instruction of the run.
    pub off: u32,
    /// The guest instruction the run belongs to.
    pub guest_eip: u32,
    /// How to rebuild the guest state if an instruction of the run faults.
    pub recovery: Recovery,
    /// The guest instruction is in an STI shadow: a fault or an `Emulate` callout there stops
    /// before it, where no interrupt may be taken yet.
    pub shadow: bool,
}

/// An encoded fragment, not yet in the cache.
#[derive(Clone, Debug)]
pub struct Fragment {
    /// TC address it was encoded for.
    pub tc_addr: u32,
    /// The code.
    pub code: Vec<u8>,
    /// Offset of the entry point (through the pending-interrupt check: the runtime's entries).
    pub entry_off: u32,
    /// Offset of the first guest instruction, past the entry's check (chained exits and
    /// lookup-table entries).
    pub body_off: u32,
    /// Guest EIP of the unit.
    pub start_eip: u32,
    /// The exits, by number (the callout argument of `Exit`).
    pub exits: Vec<ExitSite>,
    /// The PC map, ascending by offset.
    pub pc_map: Vec<PcEntry>,
    /// The pending-interrupt check sites, ascending by slot.
    pub sites: Vec<CheckSite>,
}

impl Fragment {
    /// The guest EIP and recovery for a fault at TC offset `off` in this fragment.
    pub fn guest_state_at(&self, off: u32) -> Option<PcEntry> {
        if off as usize >= self.code.len() {
            return None;
        }
        let i = self.pc_map.partition_point(|e| e.off <= off);
        i.checked_sub(1).map(|i| self.pc_map[i])
    }
}

/// Encoding failed (a bug in mangle.rs, or a branch out of rel8 range).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmitError(pub String);

impl std::fmt::Display for EmitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "fragment encoding failed: {}", self.0)
    }
}

impl std::error::Error for EmitError {}

/// Encodes `seq` for TC address `tc_addr`.
pub fn emit(seq: &Seq, tc_addr: u32) -> Result<Fragment, EmitError> {
    let n = seq.items.len();
    let mut instrs: Vec<Instruction> = Vec::with_capacity(n);
    for (k, it) in seq.items.iter().enumerate() {
        let mut i = it.instr;
        i.set_ip(LABEL_BASE + k as u64);
        if let Some(l) = it.target {
            let idx = seq.labels[l.0 as usize]
                .ok_or_else(|| EmitError(format!("unbound label {}", l.0)))?;
            i.set_near_branch32((LABEL_BASE + idx as u64) as u32);
        }
        instrs.push(i);
    }
    let block = InstructionBlock::new(&instrs, tc_addr as u64);
    let r = BlockEncoder::encode(
        32,
        block,
        BlockEncoderOptions::DONT_FIX_BRANCHES
            | BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
    )
    .map_err(|e| EmitError(e.to_string()))?;
    let offs = &r.new_instruction_offsets;
    let code = r.code_buffer;
    let end_of = |k: usize| {
        if k + 1 < n {
            offs[k + 1]
        } else {
            code.len() as u32
        }
    };
    let label_off = |l: crate::mangle::Label| offs[seq.labels[l.0 as usize].expect("bound")];
    let mut exits: Vec<ExitSite> = seq
        .exits
        .iter()
        .map(|x| ExitSite {
            patch_off: 0,
            stub_off: label_off(x.stub),
            target_eip: x.target_eip,
            slot: x.slot,
        })
        .collect();
    let mut pc_map: Vec<PcEntry> = Vec::new();
    for (k, it) in seq.items.iter().enumerate() {
        if let Some(e) = it.exit {
            exits[e as usize].patch_off = end_of(k) - 4;
        }
        let entry = PcEntry {
            off: offs[k],
            guest_eip: it.guest_eip,
            recovery: it.recovery,
            shadow: it.shadow,
        };
        if pc_map.last().is_none_or(|p| {
            p.guest_eip != entry.guest_eip
                || p.recovery != entry.recovery
                || p.shadow != entry.shadow
        })
        {
            pc_map.push(entry);
        }
    }
    let entry_off = seq.entry.map(label_off).unwrap_or(0);
    let body_off = seq.body.map(label_off).unwrap_or(entry_off);
    let sites = seq
        .sites
        .iter()
        .map(|x| CheckSite {
            slot: x.slot,
            cont_off: label_off(x.cont),
            stub_off: label_off(x.stub),
            enable: x.enable,
        })
        .collect();
    Ok(Fragment {
        tc_addr,
        code,
        entry_off,
        body_off,
        start_eip: seq.start_eip,
        exits,
        pc_map,
        sites,
    })
}

/// The shared routine that empty lookup-table entries point at (the runtime places it once in
/// the TC, at `tc_addr`): only target 0 reaches it (an empty entry's tag is 0), and it makes
/// the `IndirectMiss` callout for target 0.
pub fn ibl_miss_routine(abi: &Abi, tc_addr: u32) -> Result<Vec<u8>, EmitError> {
    let seq = Builder::miss_routine(abi);
    Ok(emit(&seq, tc_addr)?.code)
}
