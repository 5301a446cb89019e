//! The built-in demo guest (`vmm` with no command, the README's main command), under every
//! combination of engines: same narration, clean power-off.

#[allow(dead_code)]
mod common;

use std::process::Command;

fn demo(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(common::guest::vmm_bin()).args(args).output().expect("run vmm");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What the guest must have said, in order.
const NARRATION: &[&str] = &[
    "[real mode] vmm demo guest",
    "[kernel] protected mode, CPL 0",
    "[kernel] paging on",
    "[kernel] wrote and read back through the 4 MiB page",
    "[user] hello from CPL 3 through an int 0x80 system call",
    "[kernel] page fault at 0x00030010, error code 0x00000006",
    "[user] wrote 0x1234abcd to a page that was not mapped",
    "tick 0x00000003: it interrupted the user task at CPL 3",
    "[kernel] #GP from user mode at eip",
    "[kernel] powering off through the debug-exit port",
];

fn check(args: &[&str], engines: &str) {
    let (code, out, err) = demo(args);
    assert_eq!(code, 0, "vmm {args:?}\nstdout:\n{out}\nstderr:\n{err}");
    let mut at = 0;
    for line in NARRATION {
        let found = out[at..].find(line).unwrap_or_else(|| panic!("{line:?} missing (in order) from:\n{out}"));
        at += found + line.len();
    }
    assert!(out.contains(&format!("(engines: {engines})")), "{out}");
}

#[test]
fn default_is_kernel_bt_user_direct() {
    check(&[], "bt (kernel) + direct (user)");
}

#[test]
fn every_engine_combination() {
    check(&["demo", "--kernel-engine", "interp", "--user-engine", "interp"], "interp");
    check(&["demo", "--kernel-engine", "direct", "--user-engine", "direct"], "direct");
    check(&["demo", "--kernel-engine", "direct", "--user-engine", "interp"], "direct (kernel) + interp (user)");
    check(&["demo", "--kernel-engine", "interp", "--user-engine", "direct"], "interp (kernel) + direct (user)");
    check(&["demo", "--kernel-engine", "bt", "--user-engine", "bt"], "bt");
}
