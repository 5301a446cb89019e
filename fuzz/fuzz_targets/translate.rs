//! Arbitrary bytes as guest code for the scanner and translator: no panic, every fragment
//! decodes completely, and contains only allowed instructions (no far transfer to a host
//! selector, no system-call instruction, no use of the reserved segment register outside the
//! translator's own vCPU-page accesses). The first two bytes choose the mode and the bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm_scanner::units::SliceCode;
use vmm_scanner::{translate, validate, Config, Limits, Mode};

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (hdr, code) = data.split_at(2);
    let m = Mode {
        cpl: if hdr[0] & 1 != 0 { 3 } else { 0 },
        code32: hdr[0] & 2 == 0,
        stack32: hdr[0] & 4 == 0,
        paging: hdr[0] & 8 == 0,
        fpu_trap: hdr[0] & 16 != 0,
        user_gs: hdr[0] & 32 != 0,
    };
    let cfg = Config {
        limits: Limits {
            max_bytes: 64 + hdr[1] as u32 * 4,
            max_insns: 1 + (hdr[1] as u32 & 63),
            max_jcc: (hdr[0] >> 6) as u32 * 2,
        },
        ..Config::default()
    };
    // Start anywhere in the data, so that units also run off its end (fetch faults).
    let base = if m.code32 { 0xc010_0ff0 } else { 0xf000 };
    let mut eip = base;
    loop {
        let (unit, f) = translate(
            &mut SliceCode { base, bytes: code },
            0,
            eip,
            m,
            0xffc0_0000,
            &cfg,
        )
        .expect("fragment encodes");
        if let Err(e) = validate::check_fragment(&f, &cfg.abi, &cfg.model) {
            panic!(
                "invalid fragment for {:02x?}: {e}",
                &code[(eip - base) as usize..]
            );
        }
        // Continue with the next unit while it lies in the data.
        let next = eip.wrapping_add(unit.guest_len());
        if unit.insns.is_empty() || next <= eip || (next - base) as usize >= code.len() {
            break;
        }
        eip = next;
    }
});
