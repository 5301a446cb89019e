//! The scanner and translator of guest kernel code (ARCHITECTURE.md section 5,
//! docs/translator.md).
//!
//! Pure code: no OS calls, no `unsafe`, so that it can be unit-tested, property-tested and
//! fuzzed on its own. The runtime (monitor) provides guest memory through [`units::GuestCode`],
//! a byte range for the translation cache and the vCPU region laid out as [`abi::Abi`] says,
//! and implements the callouts. One module per concern, after DynamoRIO:
//!
//! | module | concern |
//! |---|---|
//! | [`units`] | decoding guest code into translation units |
//! | [`classify`] | the sensitive-instruction table (data) and the classifier |
//! | [`abi`] | the vCPU page layout and the callout convention |
//! | [`mangle`] | every rewrite rule: guest instruction to emitted `Instruction`s |
//! | [`emit`] | encoding a mangled unit into a fragment (BlockEncoder), exits and the PC map |
//! | [`hints`] | adaptive retranslation: instructions the runtime wants as callouts |
//! | [`cache`] | translation-cache bookkeeping: allocation, indexes, chaining, invalidation |
//! | [`validate`] | the checker of emitted code: decodes fully, only allowed instructions |
#![forbid(unsafe_code)]

pub mod abi;
pub mod cache;
pub mod classify;
pub mod emit;
pub mod hints;
pub mod mangle;
pub mod units;
pub mod validate;

pub use abi::{Abi, CalloutOp};
pub use emit::Fragment;
pub use hints::Hints;
pub use mangle::io::NullPorts;
pub use units::{GuestCode, Limits, Unit};

/// The guest state a translation depends on (a fragment is valid only in its mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mode {
    /// Guest CPL (0 for kernel code; anything else makes every sensitive instruction a callout).
    pub cpl: u8,
    /// The code segment is 32-bit (D=1); 16-bit otherwise.
    pub code32: bool,
    /// The stack segment is 32-bit (B=1): inline sequences use ESP. With a 16-bit stack the
    /// stack-touching rewrites are callouts.
    pub stack32: bool,
    /// Guest paging is on (CR0.PG).
    pub paging: bool,
    /// The guest's CR0.TS or CR0.EM is set: x87/MMX/SSE instructions are callouts (#NM/#UD).
    pub fpu_trap: bool,
    /// User code (CPL 3) whose guest GS can be reached through the flat DS: GS is a present,
    /// writable, expand-up data segment with a 4 GiB limit and DS has base 0. Then an
    /// instruction with a GS memory operand is inline code (`mangle/user_gs.rs`: linear
    /// address = [`Abi::ugs_base`] + offset, accessed through DS) instead of a callout. The
    /// runtime sets it ([`Mode::kernel32`]: false); a GS or DS load that changes it is a
    /// change of mode (the fragment is left).
    pub user_gs: bool,
}

impl Mode {
    /// Flat 32-bit kernel code with paging.
    pub fn kernel32() -> Mode {
        Mode {
            cpl: 0,
            code32: true,
            stack32: true,
            paging: true,
            fpu_trap: false,
            user_gs: false,
        }
    }

    /// The mode as a small integer (for the cache key).
    pub fn bits(self) -> u8 {
        (self.cpl & 3)
            | (self.code32 as u8) << 2
            | (self.stack32 as u8) << 3
            | (self.paging as u8) << 4
            | (self.fpu_trap as u8) << 5
            | (self.user_gs as u8) << 6
    }
}

/// Everything the translator needs besides the code.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// The vCPU page layout and conventions.
    pub abi: Abi,
    /// Unit size bounds.
    pub limits: Limits,
    /// The virtual CPU's features.
    pub model: classify::Model,
    /// The features of guest user code (CPL 3) if not `model`'s: [`classify::Model::host`]
    /// when user code also runs directly and so sees the host's CPUID.
    pub user_model: Option<classify::Model>,
    /// Instructions to emit as `Emulate` callouts (adaptive retranslation; the runtime fills it).
    pub hints: Hints,
    /// The first check slot (`Abi::check_slots`) the next translation may use: its sites get
    /// `slot_base`, `slot_base + 1`, ... (`Fragment::sites`). The runtime sets it from
    /// `Cache::next_slot` before each translation.
    pub slot_base: u32,
    /// The machine's null ports (IN and OUT there are inline at CPL 0: mangle/io.rs); the
    /// runtime sets it from its machine for a whole run and writes the matching maps at
    /// [`Abi::null_port_maps`]. Default: none.
    pub null_ports: NullPorts,
}

/// Scans and translates the unit at guest `eip` for translation-cache address `tc_addr`.
pub fn translate(
    code: &mut dyn GuestCode,
    cs_base: u32,
    eip: u32,
    mode: Mode,
    tc_addr: u32,
    cfg: &Config,
) -> Result<(Unit, Fragment), emit::EmitError> {
    let unit = units::decode_unit(code, cs_base, eip, mode, cfg.limits);
    let seq = mangle::mangle(&unit, cfg);
    let frag = emit::emit(&seq, tc_addr)?;
    Ok((unit, frag))
}
