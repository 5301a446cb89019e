//! Property: for any bytes as guest kernel code, in any mode, the scanner and translator do not
//! panic, every fragment encodes, decodes completely and contains only allowed instructions.
mod common;
use proptest::prelude::*;
use vmm_scanner::units::SliceCode;
use vmm_scanner::{translate, validate, Config, Limits, Mode};

fn mode() -> impl Strategy<Value = Mode> {
    (
        0u8..4,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(cpl, code32, stack32, paging, fpu_trap, user_gs)| Mode {
            cpl: if cpl == 1 { 0 } else { cpl },
            code32,
            stack32,
            paging,
            fpu_trap,
            user_gs,
        })
}

/// Bytes biased towards the instructions the translator rewrites.
fn code() -> impl Strategy<Value = Vec<u8>> {
    let interesting: Vec<Vec<u8>> = vec![
        vec![0xfa],
        vec![0xfb],
        vec![0x9c],
        vec![0x9d],
        vec![0x66, 0x9c],
        vec![0x66, 0x9d],
        vec![0xcf],
        vec![0xc3],
        vec![0xc2, 4, 0],
        vec![0x0f, 0x01, 0x00],
        vec![0x0f, 0x00, 0xc0],
        vec![0x0f, 0x01, 0xe0],
        vec![0x0f, 0x20, 0xd8],
        vec![0x0f, 0x22, 0xd8],
        vec![0x0f, 0x31],
        vec![0x0f, 0xa2],
        vec![0xee],
        vec![0x8c, 0xd8],
        vec![0x8e, 0xd8],
        vec![0x0f, 0xa8],
        vec![0x1f],
        vec![0x65],
        vec![0x2e],
        vec![0x66],
        vec![0x67],
        vec![0xff, 0x10],
        vec![0xff, 0xe0],
        vec![0xe8, 0, 0, 0, 0],
        vec![0x74, 0x02],
        vec![0xe2, 0xfe],
        vec![0xe3, 0x00],
        vec![0xcd, 0x80],
        vec![0x0f, 0x05],
        vec![0x0f, 0x34],
        vec![0x90],
        vec![0x01, 0xd8],
        // GS operands (inline in user code with Mode::user_gs): mov eax, gs:[0x14];
        // call gs:[0x10]; mov eax, gs:[eax+ecx*4]; add gs:[ebx+8], ecx; push gs:[esp+4];
        // jmp gs:[eax]; movsd with GS.
        vec![0x65, 0xa1, 0x14, 0, 0, 0],
        vec![0x65, 0xff, 0x15, 0x10, 0, 0, 0],
        vec![0x65, 0x8b, 0x04, 0x88],
        vec![0x65, 0x01, 0x4b, 0x08],
        vec![0x65, 0xff, 0x74, 0x24, 0x04],
        vec![0x65, 0xff, 0x20],
        vec![0x65, 0xa5],
        // vpgatherdd xmm0, gs:[eax+xmm1*4], xmm2 (a vector index: stays a callout)
        vec![0x65, 0xc4, 0xe2, 0x69, 0x90, 0x04, 0x88],
    ];
    let piece = prop_oneof![
        3 => proptest::sample::select(interesting),
        2 => proptest::collection::vec(any::<u8>(), 1..6),
    ];
    proptest::collection::vec(piece, 0..24).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]
    #[test]
    fn fragments_are_well_formed(bytes in code(), m in mode(), eip_lo in 0u32..0x2000, max_insns in 1u32..80) {
        let cfg = Config { limits: Limits { max_bytes: 512, max_insns, ..Limits::default() }, ..Config::default() };
        let eip = 0x0010_0000 + eip_lo;
        let eip = if m.code32 { eip } else { eip & 0xffff };
        let (unit, f) = translate(&mut SliceCode { base: eip, bytes: &bytes }, 0, eip, m, common::TC, &cfg).expect("encodes");
        validate::check_fragment(&f, &cfg.abi, &cfg.model).map_err(|e| TestCaseError::fail(format!("{e}\n{}", common::listing(&f).join("\n"))))?;
        // Every guest instruction of the unit appears in the PC map.
        for gi in &unit.insns {
            prop_assert!(f.pc_map.iter().any(|p| p.guest_eip == gi.eip));
        }
        prop_assert!(!unit.pages.is_empty() || bytes.is_empty());
    }
}
