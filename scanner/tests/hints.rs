//! Adaptive retranslation on the translator's side: an instruction named in `Config::hints`
//! (by linear address and mode) is emitted as an `Emulate` callout of kind `Adaptive` instead
//! of being copied; everything else is translated as without hints.

mod common;
use common::*;
use iced_x86::{Code, Register};
use vmm_scanner::classify::CalloutKind;
use vmm_scanner::units::SliceCode;
use vmm_scanner::{translate, validate, Abi, CalloutOp, Config, Fragment, Mode};

/// The callouts of a fragment as (op, eip, next, arg) from the stores before each far call.
fn callouts(f: &Fragment) -> Vec<(u32, u32, u32, u32)> {
    let a = Abi::default();
    let is = decode(f);
    let mut out = Vec::new();
    for (k, i) in is.iter().enumerate() {
        if i.code() == Code::Call_m1632 {
            let (mut op, mut eip, mut next, mut arg) = (0, 0, 0, 0);
            for j in &is[k.saturating_sub(5)..k] {
                if j.code() == Code::Mov_rm32_imm32 && j.memory_segment() == Register::GS {
                    let (d, v) = (j.memory_displacement32(), j.immediate32());
                    if d == a.callout_op {
                        op = v
                    } else if d == a.callout_eip {
                        eip = v
                    } else if d == a.callout_next {
                        next = v
                    } else if d == a.callout_arg {
                        arg = v
                    }
                }
            }
            out.push((op, eip, next, arg));
        }
    }
    out
}

fn translate_with(code: &[u8], cs_base: u32, eip: u32, mode: Mode, cfg: &Config) -> Fragment {
    let (_, f) = translate(&mut SliceCode { base: cs_base.wrapping_add(eip), bytes: code }, cs_base, eip, mode, TC, cfg).expect("encodes");
    validate::check_fragment(&f, &cfg.abi, &cfg.model).unwrap_or_else(|e| panic!("{e}\n{}", listing(&f).join("\n")));
    f
}

const EMU: u32 = CalloutOp::Emulate as u32;
const ADAPTIVE: u32 = CalloutKind::Adaptive as u32;

// 0x1000: mov eax, [0]          a1 00 00 00 00   (5 bytes)
// 0x1005: mov [ebx], ecx        89 0b            (2)
// 0x1007: add eax, 1            83 c0 01         (3)
// 0x100a: ret                   c3
const CODE: [u8; 11] = [0xa1, 0, 0, 0, 0, 0x89, 0x0b, 0x83, 0xc0, 0x01, 0xc3];

#[test]
fn hinted_instruction_is_an_emulate_callout() {
    let plain = translate_with(&CODE, 0, 0x1000, Mode::kernel32(), &Config::default());
    assert!(callouts(&plain).iter().all(|c| c.3 != ADAPTIVE), "no hints, no adaptive callouts");
    assert!(listing(&plain).iter().any(|l| l == "mov [ebx],ecx"), "{}", text(&plain));

    let mut cfg = Config::default();
    cfg.hints.insert(0x1005, Mode::kernel32());
    let f = translate_with(&CODE, 0, 0x1000, Mode::kernel32(), &cfg);
    assert!(callouts(&f).contains(&(EMU, 0x1005, 0x1007, ADAPTIVE)), "{}", text(&f));
    assert!(!listing(&f).iter().any(|l| l == "mov [ebx],ecx"), "the store is no longer copied:\n{}", text(&f));
    // The other instructions keep their translations.
    assert!(listing(&f).iter().any(|l| l == "mov eax,[0]"), "{}", text(&f));
    assert!(listing(&f).iter().any(|l| l == "add eax,1"), "{}", text(&f));
    assert_eq!(callouts(&f).iter().filter(|c| c.3 == ADAPTIVE).count(), 1);
    // A PC-map entry puts a fault at the callout on the guest instruction.
    assert!(f.pc_map.iter().any(|e| e.guest_eip == 0x1005));
}

#[test]
fn hints_are_keyed_by_linear_address_and_mode() {
    // The same code through a code segment based at 0x10000: the hint names CS base + EIP.
    let mut cfg = Config::default();
    cfg.hints.insert(0x1_1000, Mode::kernel32());
    let f = translate_with(&CODE, 0x1_0000, 0x1000, Mode::kernel32(), &cfg);
    assert!(callouts(&f).contains(&(EMU, 0x1000, 0x1005, ADAPTIVE)), "{}", text(&f));
    // Not at EIP 0x1000 with base 0, nor in another mode.
    let f = translate_with(&CODE, 0, 0x1000, Mode::kernel32(), &cfg);
    assert!(callouts(&f).iter().all(|c| c.3 != ADAPTIVE), "{}", text(&f));
    let nopaging = Mode { paging: false, ..Mode::kernel32() };
    let f = translate_with(&CODE, 0x1_0000, 0x1000, nopaging, &cfg);
    assert!(callouts(&f).iter().all(|c| c.3 != ADAPTIVE), "{}", text(&f));
}

#[test]
fn only_ident_instructions_follow_hints() {
    // A hinted RET (a lookup, not IDENT) keeps its translation.
    let mut cfg = Config::default();
    cfg.hints.insert(0x100a, Mode::kernel32());
    let f = translate_with(&CODE, 0, 0x1000, Mode::kernel32(), &cfg);
    let plain = translate_with(&CODE, 0, 0x1000, Mode::kernel32(), &Config::default());
    assert_eq!(listing(&f), listing(&plain));
}
