// Shared helpers of the scanner's integration tests.
#![allow(dead_code)]

use iced_x86::{Decoder, DecoderOptions, Formatter, Instruction, IntelFormatter};
use vmm_scanner::units::SliceCode;
use vmm_scanner::{translate, validate, Config, Fragment, Mode, Unit};

pub const TC: u32 = 0xffc0_0000;

pub fn tr_mode(code: &[u8], eip: u32, mode: Mode) -> (Unit, Fragment) {
    tr_cfg(code, eip, mode, &Config::default())
}

pub fn tr_cfg(code: &[u8], eip: u32, mode: Mode, cfg: &Config) -> (Unit, Fragment) {
    let (u, f) = translate(
        &mut SliceCode {
            base: eip,
            bytes: code,
        },
        0,
        eip,
        mode,
        TC,
        cfg,
    )
    .expect("encodes");
    validate::check_fragment(&f, &cfg.abi, &cfg.model)
        .unwrap_or_else(|e| panic!("{e}\n{}", listing(&f).join("\n")));
    (u, f)
}

pub fn tr(code: &[u8]) -> (Unit, Fragment) {
    tr_mode(code, 0x1000, Mode::kernel32())
}

pub fn decode(f: &Fragment) -> Vec<Instruction> {
    Decoder::with_ip(32, &f.code, f.tc_addr as u64, DecoderOptions::NONE)
        .into_iter()
        .collect()
}

pub fn listing(f: &Fragment) -> Vec<String> {
    let mut fmt = IntelFormatter::new();
    fmt.options_mut().set_hex_suffix("h");
    decode(f)
        .iter()
        .map(|i| {
            let mut s = String::new();
            fmt.format(i, &mut s);
            s
        })
        .collect()
}

/// The body: from the entry up to the first exit branch or callout stub (skips the entry check).
pub fn text(f: &Fragment) -> String {
    listing(f).join("\n")
}
