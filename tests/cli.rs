//! `vmm run` on bad input: a clear message on stderr, a non-zero exit, never a panic or hang.

#[allow(dead_code)]
mod common;

use std::time::{Duration, Instant};

use common::guest::*;

fn assert_clean_failure(out: &std::process::Output, code: i32, needle: &str) {
    let se = stderr(out);
    assert_eq!(out.status.code(), Some(code), "stderr:\n{se}");
    assert!(se.contains(needle), "{needle:?} missing from stderr:\n{se}");
    assert!(!se.contains("panicked"), "{se}");
}

#[test]
fn not_a_multiboot_elf() {
    let out = run_vmm(b"#!/bin/sh\necho this is not a kernel\n", &[]);
    assert_clean_failure(&out, 2, "not an ELF file");
    // An ELF without the Multiboot header.
    let img = elf32(0x10_0000, &[(0x10_0000, vec![0xf4; 64], 64)]);
    let out = run_vmm(&img, &[]);
    assert_clean_failure(&out, 2, "no Multiboot header");
    // A 64-bit ELF.
    let mut img = elf32(0x10_0000, &[(0x10_0000, vec![0xf4; 64], 64)]);
    img[4] = 2;
    let out = run_vmm(&img, &[]);
    assert_clean_failure(&out, 2, "not a 32-bit ELF");
    // A truncated image.
    let out = run_vmm(&Guest::new().build()[..40], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!stderr(&out).contains("panicked"));
}

#[test]
fn missing_kernel_file() {
    let out = run_vmm_path(std::path::Path::new("/nonexistent/kernel.elf"), &[]);
    assert_clean_failure(&out, 2, "cannot read");
}

#[test]
fn kernel_larger_than_guest_memory() {
    let mut text: Vec<u8> = multiboot_header()
        .iter()
        .flat_map(|d| d.to_le_bytes())
        .collect();
    text.push(0xf4);
    // 64 MiB of BSS in a 16 MiB guest.
    let img = elf32(0x10_000c, &[(0x10_0000, text, 64 << 20)]);
    let out = run_vmm(&img, &["--mem", "16M"]);
    assert_clean_failure(&out, 2, "more than the guest's");
}

#[test]
fn memory_size_limits() {
    let img = Guest::new().build();
    let out = run_vmm(&img, &["--mem", "2M"]);
    assert_clean_failure(&out, 2, "at least 4M");
    let out = run_vmm(&img, &["--mem", "4G"]);
    assert_clean_failure(&out, 2, "at most 3G");
    let out = run_vmm(&img, &["--mem", "lots"]);
    assert_clean_failure(&out, 2, "not a size");
}

#[test]
fn guest_that_never_halts_times_out() {
    let mut g = Guest::new();
    g.print("spinning\r\n");
    let mut top = g.k.create_label();
    g.k.set_label(&mut top).unwrap();
    g.k.jmp(top).unwrap();
    let t0 = Instant::now();
    let out = run_vmm(&g.build(), &["--timeout", "2"]);
    let took = t0.elapsed();
    assert_eq!(stdout(&out), "spinning\r\n");
    assert_clean_failure(&out, 8, "timeout");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(20),
        "{took:?}"
    );
}

#[test]
fn halt_with_interrupts_disabled_ends_the_run() {
    let mut g = Guest::new();
    g.k.cli().unwrap();
    g.k.hlt().unwrap();
    let out = run_vmm(&g.build(), &["--timeout", "30"]);
    assert_clean_failure(&out, 10, "interrupts disabled");
}

#[test]
fn direct_engine_bad_input() {
    let img = Guest::new().build();
    for bad in ["0x12345", "0x100000000", "0x400000", "high"] {
        let out = run_vmm(&img, &["--user-engine", "direct", "--monitor-area", bad]);
        assert_clean_failure(&out, 2, "--monitor-area");
    }
    // With paging off the guest sees its RAM identity-mapped: it must fit below the hole.
    let out = run_vmm(
        &img,
        &[
            "--kernel-engine",
            "direct",
            "--mem",
            "1G",
            "--monitor-area",
            "0x20000000",
        ],
    );
    assert_clean_failure(&out, 2, "does not fit below the monitor area");
    let out = run_vmm(&img, &["--kernel-engine", "jit"]);
    assert_eq!(out.status.code(), Some(2));
}

/// A kernel spinning with interrupts disabled in chained translated code still ends at the
/// timeout (the timer forces an exit once the deadline has passed).
#[test]
fn bt_kernel_that_never_halts_times_out() {
    let mut g = Guest::new();
    g.print("spinning\r\n");
    let mut top = g.k.create_label();
    g.k.set_label(&mut top).unwrap();
    g.k.jmp(top).unwrap();
    let t0 = Instant::now();
    let out = run_vmm(&g.build(), &["--timeout", "1", "--kernel-engine", "bt", "--stats"]);
    let took = t0.elapsed();
    assert_eq!(stdout(&out), "spinning\r\n");
    assert_clean_failure(&out, 8, "timeout");
    assert!(stderr(&out).contains("bt-forced-timer"), "{}", stderr(&out));
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[test]
fn direct_kernel_that_never_halts_times_out() {
    let mut g = Guest::new();
    g.print("spinning\r\n");
    let mut top = g.k.create_label();
    g.k.set_label(&mut top).unwrap();
    g.k.jmp(top).unwrap();
    let t0 = Instant::now();
    let out = run_vmm(
        &g.build(),
        &["--timeout", "1", "--kernel-engine", "direct", "--stats"],
    );
    let took = t0.elapsed();
    assert_eq!(stdout(&out), "spinning\r\n");
    assert_clean_failure(&out, 8, "timeout");
    // The host timer forced exits while the guest spun natively.
    assert!(stderr(&out).contains("timer"), "{}", stderr(&out));
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(20),
        "{took:?}"
    );
}

#[test]
fn no_arguments_runs_the_demo() {
    let out = std::process::Command::new(vmm_bin()).output().unwrap();
    let so = stdout(&out);
    assert!(out.status.success(), "{so}\n{}", stderr(&out));
    assert!(so.contains("[real mode] vmm demo guest"));
    assert!(so.contains("[kernel] timer interrupt (IRQ 0, vector 0x20), tick 0x00000003: it interrupted the user task at CPL 3"));
    assert!(so.contains("[kernel] powering off through the debug-exit port"));
}
