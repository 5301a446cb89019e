//! `vmm bench nano --quick`: every nanobenchmark guest runs to its end under the interpreter
//! and the direct engine and reports a number; the JSON and the SVG chart are well-formed.
//! QEMU is never required (the column is left out here).

use std::path::PathBuf;
use std::process::Command;

const NAMES: [&str; 10] = [
    "syscall",
    "in",
    "cr3wr",
    "call/ret",
    "pgfault",
    "hidden",
    "divzero",
    "ptemod",
    "sti/cli",
    "pushf/popf",
];

fn vmm() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vmm"))
}

/// Tags balance (a small well-formedness check: no XML crate in the tree).
fn check_xml(s: &str) {
    let mut stack: Vec<String> = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find('<') {
        let j = rest[i..].find('>').expect("unterminated tag") + i;
        let tag = &rest[i + 1..j];
        rest = &rest[j + 1..];
        if tag.starts_with('?') || tag.starts_with('!') || tag.ends_with('/') {
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(
                stack.pop().as_deref(),
                Some(name.trim()),
                "mismatched </{name}>"
            );
        } else {
            let name = tag.split_whitespace().next().expect("empty tag");
            stack.push(name.to_string());
        }
    }
    assert!(stack.is_empty(), "unclosed tags: {stack:?}");
    assert!(!rest.contains('>'), "stray text after the root element");
}

#[test]
fn quick_run_reports_every_benchmark() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("nano.svg");
    let out = Command::new(vmm())
        .args([
            "bench",
            "nano",
            "--quick",
            "--format",
            "json",
            "--engines",
            "interp,direct,bt",
            "--svg",
        ])
        .arg(&svg)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "vmm bench nano failed:\n{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON output");
    assert!(v["host_tsc_ghz"].as_f64().unwrap() > 0.0);
    let benches = v["benchmarks"].as_array().unwrap();
    let names: Vec<&str> = benches
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, NAMES);
    for b in benches {
        let name = b["name"].as_str().unwrap();
        let interp = b["engines"]["interp"]["ns"].as_f64();
        assert!(
            interp.is_some_and(|x| x > 0.0),
            "{name} under interp: {}",
            b["engines"]["interp"]
        );
        let direct = b["engines"]["direct"]["ns"].as_f64();
        assert!(
            direct.is_some_and(|x| x >= 0.0),
            "{name} under direct: {}",
            b["engines"]["direct"]
        );
        // bt: a number once built, else "not built".
        let bt = &b["engines"]["bt"];
        assert!(
            bt["ns"].as_f64().is_some() || bt["why"] == "not built",
            "{name} under bt: {bt}"
        );
        // Native: a number where a host equivalent exists, else an explanation.
        let native = &b["native"];
        assert!(
            native["ns"].as_f64().is_some_and(|x| x > 0.0)
                || native["why"].as_str().is_some_and(|w| w.starts_with("n/a")),
            "{name}: {native}"
        );
    }
    // The ops that trap under direct cost more than one that does not.
    let ns = |n: &str, e: &str| {
        benches.iter().find(|b| b["name"] == n).unwrap()["engines"][e]["ns"]
            .as_f64()
            .unwrap()
    };
    assert!(ns("cr3wr", "direct") > ns("call/ret", "direct"));

    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(
        chart.starts_with("<svg"),
        "{}",
        &chart[..chart.len().min(200)]
    );
    check_xml(&chart);
    for n in NAMES {
        assert!(
            chart.contains(&format!(">{n}</text>")),
            "{n} not labelled in the chart"
        );
    }
}

#[test]
fn table_and_bad_engine() {
    let out = Command::new(vmm())
        .args(["bench", "nano", "--quick", "--engines", "interp"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(
        t.contains("native") && t.contains("interp") && t.contains("pgfault"),
        "{t}"
    );
    let out = Command::new(vmm())
        .args(["bench", "nano", "--engines", "kvm"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown engine"));
}
