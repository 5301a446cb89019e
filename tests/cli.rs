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

/// A minimal bzImage: boot sector and setup header (protocol `version`), one setup sector,
/// then `payload` as the protected-mode kernel (loaded at 1 MiB).
fn bzimage(version: u16, payload: &[u8], init_size: u32) -> Vec<u8> {
    let mut img = vec![0u8; 1024];
    img[0x1f1] = 1;
    img[0x1fe] = 0x55;
    img[0x1ff] = 0xaa;
    img[0x200] = 0xeb;
    img[0x201] = 0x6a;
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x206..0x208].copy_from_slice(&version.to_le_bytes());
    img[0x211] = 0x01; // LOADED_HIGH
    img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
    img[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
    img[0x238..0x23c].copy_from_slice(&2048u32.to_le_bytes());
    img[0x258..0x260].copy_from_slice(&0x10_0000u64.to_le_bytes());
    img[0x260..0x264].copy_from_slice(&init_size.to_le_bytes());
    let sys = payload.len().div_ceil(16) as u32;
    img[0x1f4..0x1f8].copy_from_slice(&sys.to_le_bytes());
    img.extend_from_slice(payload);
    img.resize(1024 + sys as usize * 16, 0);
    img
}

fn run_linux(kernel: &[u8], initrd: Option<&[u8]>, args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("bzImage");
    std::fs::write(&k, kernel).unwrap();
    let mut cmd = std::process::Command::new(vmm_bin());
    cmd.arg("run").arg("--kernel").arg(&k);
    if let Some(i) = initrd {
        let p = dir.path().join("initrd");
        std::fs::write(&p, i).unwrap();
        cmd.arg("--initrd").arg(p);
    }
    cmd.args(args).output().unwrap()
}

#[test]
fn linux_bad_input() {
    // The 32-bit entry reaches a protected-mode kernel that writes to the debug-exit port;
    // it checks the boot protocol's registers: ESI = the zero page (0x7000), CS = 0x10.
    let mut a = iced_x86::code_asm::CodeAssembler::new(32).unwrap();
    use iced_x86::code_asm::*;
    let mut bad = a.create_label();
    a.cmp(esi, 0x7000).unwrap();
    a.jne(bad).unwrap();
    a.mov(eax, cs).unwrap();
    a.cmp(eax, 0x10).unwrap();
    a.jne(bad).unwrap();
    // The command line pointer (zero page + 0x228) points at "ok".
    a.mov(ebx, dword_ptr(esi + 0x228)).unwrap();
    a.cmp(word_ptr(ebx), 0x6b6f).unwrap();
    a.jne(bad).unwrap();
    a.mov(al, 0x10).unwrap();
    a.out(0xf4, al).unwrap();
    a.set_label(&mut bad).unwrap();
    a.mov(al, 0x11).unwrap();
    a.out(0xf4, al).unwrap();
    let code = a.assemble(0x10_0000).unwrap();
    let good = bzimage(0x020f, &code, 0x1000);
    let out = run_linux(&good, Some(b"initrd"), &["--append", "ok", "--mem", "32M"]);
    assert_eq!(out.status.code(), Some(0x21), "stderr: {}", stderr(&out));

    // Not a kernel, truncated, old protocol, too little memory, an initrd that does not fit.
    let out = run_linux(&[0u8; 4096], None, &[]);
    assert_clean_failure(&out, 2, "not an ELF file");
    let out = run_linux(&good[..0x204], None, &[]);
    assert_clean_failure(&out, 2, "not an ELF");
    let out = run_linux(&good[..1030], None, &[]);
    assert_clean_failure(&out, 2, "truncated");
    let out = run_linux(&bzimage(0x0204, &code, 0x1000), None, &[]);
    assert_clean_failure(&out, 2, "too old");
    let big = bzimage(0x020f, &code, 64 << 20);
    let out = run_linux(&big, None, &["--mem", "64M"]);
    assert_clean_failure(&out, 2, "--mem");
    let out = run_linux(&good, Some(&vec![0u8; 40 << 20]), &["--mem", "32M"]);
    assert_clean_failure(&out, 2, "initrd");
    let out = run_linux(&good, Some(b""), &[]);
    assert_clean_failure(&out, 2, "initrd is empty");
    let out = run_linux(&good, None, &["--append", &"x".repeat(3000)]);
    assert_clean_failure(&out, 2, "command line");
    // --initrd with a Multiboot kernel.
    let img = Guest::new().build();
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("k.elf");
    std::fs::write(&k, &img).unwrap();
    let out = std::process::Command::new(vmm_bin()).arg("run").arg(&k).args(["--initrd", "/dev/null"]).output().unwrap();
    assert_clean_failure(&out, 2, "not a bzImage");
}

/// COM1 input when standard input is not a terminal: piped bytes reach the guest's UART
/// (no raw mode, no escape key). The guest echoes what it reads until 'q'.
#[test]
fn piped_input_reaches_com1() {
    use iced_x86::code_asm::*;
    use std::io::Write;
    let mut g = Guest::new();
    g.print("ready\n");
    let mut poll = g.k.create_label();
    let mut done = g.k.create_label();
    g.k.set_label(&mut poll).unwrap();
    g.k.mov(dx, 0x3fd).unwrap();
    g.k.in_(al, dx).unwrap();
    g.k.test(al, 1).unwrap();
    g.k.jz(poll).unwrap();
    g.k.mov(dx, 0x3f8).unwrap();
    g.k.in_(al, dx).unwrap();
    g.k.cmp(al, b'q' as i32).unwrap();
    g.k.je(done).unwrap();
    g.k.out(dx, al).unwrap();
    g.k.jmp(poll).unwrap();
    g.k.set_label(&mut done).unwrap();
    g.exit(0x10);
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("echo.elf");
    std::fs::write(&k, g.build()).unwrap();
    let mut child = std::process::Command::new(vmm_bin())
        .arg("run")
        .arg(&k)
        .args(["--timeout", "60", "--kernel-engine", "interp", "--user-engine", "interp"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hello, guest\x01x q").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0x21), "stderr: {}", stderr(&out));
    // Ctrl-A x is only the escape on a terminal: here it is data.
    assert_eq!(stdout(&out), "ready\nhello, guest\x01x ");
}

/// On a terminal: raw mode while the guest runs, Ctrl-A x quits with status 0 (also from a
/// HLT that waits for input), and the terminal's settings are restored afterwards.
#[test]
fn ctrl_a_x_quits_and_restores_the_terminal() {
    use nix::sys::termios::{tcgetattr, LocalFlags};
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    let mut g = Guest::new();
    g.print("ready\n");
    // IF = 1, no timer, no interrupt sources: only console input (or the escape) can end it.
    g.k.sti().unwrap();
    let mut l = g.k.create_label();
    g.k.set_label(&mut l).unwrap();
    g.k.hlt().unwrap();
    g.k.jmp(l).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("wait.elf");
    std::fs::write(&k, g.build()).unwrap();

    let pty = nix::pty::openpty(None, None).expect("openpty");
    let before = tcgetattr(pty.slave.as_fd()).unwrap();
    assert!(before.local_flags.contains(LocalFlags::ICANON | LocalFlags::ECHO));
    let child = std::process::Command::new(vmm_bin())
        .arg("run")
        .arg(&k)
        .args(["--timeout", "60", "--kernel-engine", "interp", "--user-engine", "interp"])
        .stdin(std::process::Stdio::from(pty.slave.try_clone().unwrap()))
        .stdout(std::process::Stdio::from(pty.slave.try_clone().unwrap()))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut master = std::fs::File::from(pty.master);
    // Wait for the guest's "ready" (vmm sets raw mode before the guest starts).
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("ready") {
        let n = master.read(&mut buf).unwrap();
        assert!(n > 0);
        seen.extend_from_slice(&buf[..n]);
    }
    let during = tcgetattr(pty.slave.as_fd()).unwrap();
    assert!(!during.local_flags.contains(LocalFlags::ICANON), "raw mode while the guest runs");
    master.write_all(b"ab\x01x").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert!(stderr(&out).contains("quit (Ctrl-A x)"), "{}", stderr(&out));
    let after = tcgetattr(pty.slave.as_fd()).unwrap();
    assert_eq!(after.local_flags, before.local_flags);
    assert_eq!(after.input_flags, before.input_flags);
}

/// `vmm bench bt` at a tiny scale: the structure of the report, not its numbers (which a
/// tiny scale makes meaningless). Every loop has a row with the native, bt, direct and interp
/// figures and two ratios that parse, and every goal has a verdict.
#[test]
fn bench_bt_report_structure() {
    let out = std::process::Command::new(vmm_bin())
        .args(["bench", "bt", "--scale", "0.00001", "--reps", "1"])
        .output()
        .unwrap();
    let (so, se) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "stdout:\n{so}\nstderr:\n{se}");
    assert!(so.contains("load average: "), "{so}");
    let header = so.lines().find(|l| l.starts_with("loop ")).expect("no table header");
    let cols: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(
        cols,
        ["loop", "native", "bt", "direct", "interp", "bt/native", "direct/bt", "direct", "traps"],
        "{so}"
    );
    for name in ["empty", "cli/sti", "pushf/popf", "call/ret", "jmp-ind", "port-io"] {
        let row = so
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no row for {name}:\n{so}"));
        let f: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(f.len(), 8, "{row}");
        let num = |s: &str| -> f64 { s.parse().unwrap_or_else(|_| panic!("{s:?} in {row:?}")) };
        let times: Vec<f64> = f[1..5].iter().map(|s| num(s)).collect();
        assert!(times.iter().all(|t| *t >= 0.0), "{row}");
        for r in &f[5..7] {
            let x = num(r.strip_suffix('x').unwrap_or_else(|| panic!("ratio {r:?} in {row:?}")));
            assert!(x >= 0.0, "{row}");
        }
        assert!(num(f[7]) >= 0.0, "{row}");
        // The 20x goal: a verdict where direct trapped, "no goal" where it did not.
        let goal20 = so
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{name} ")) && l.contains("than direct"))
            .unwrap_or_else(|| panic!("no 20x verdict for {name}:\n{so}"));
        assert!(
            goal20.contains(": met (") || goal20.contains(": MISSED (") || goal20.contains("no goal (direct does not trap"),
            "{goal20}"
        );
    }
    for (name, x) in [("cli/sti", "3"), ("pushf/popf", "3"), ("call/ret", "5")] {
        let verdict = format!("{name} bt within {x}x of native: ");
        let line = so
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .find(|l| l.starts_with(&verdict))
            .unwrap_or_else(|| panic!("no verdict {verdict:?}:\n{so}"));
        assert!(line.contains(": met (") || line.contains(": MISSED ("), "{line}");
    }
    // CLI/STI and port I/O trap under direct (each a #GP), PUSHF/POPF does not (POPF at host
    // CPL 3 runs, ignoring IF): the engine's own signal count says so, even at this scale.
    let traps = |name: &str| -> f64 {
        let row = so.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap();
        row.split_whitespace().last().unwrap().parse().unwrap()
    };
    assert!(traps("cli/sti") >= 1.0, "{so}");
    assert!(traps("port-io") >= 1.0, "{so}");
    assert!(traps("pushf/popf") < 0.5, "{so}");
}

#[test]
fn bench_bt_bad_input() {
    for args in [["--scale", "0"], ["--reps", "0"], ["--scale", "x"]] {
        let out = std::process::Command::new(vmm_bin()).args(["bench", "bt"]).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(if args[1] == "0" && args[0] == "--scale" { 1 } else { 2 }), "{args:?}");
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
        assert!(stderr(&out).contains(args[0]), "{args:?}: {}", stderr(&out));
    }
}
