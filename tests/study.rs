//! `vmm study`: the Popek-Goldberg laboratory, run as the binary users run.

use std::process::Command;

use serde_json::Value;

/// Robin and Irvine's seventeen, and the privileged ones, as named in the report.
const INSTRUCTIONS: &[&str] = &[
    "SGDT",
    "SIDT",
    "SLDT",
    "SMSW",
    "PUSHF",
    "POPF",
    "LAR",
    "LSL",
    "VERR",
    "VERW",
    "PUSH sreg",
    "POP sreg",
    "far CALL",
    "far JMP",
    "INT n",
    "far RET",
    "STR",
    "MOV from sreg",
    "MOV to sreg",
    "CLI",
    "STI",
    "HLT",
    "MOV from CR0",
    "MOV to CR3",
    "LGDT",
    "LIDT",
    "LLDT",
    "LTR",
    "INVLPG",
    "IN",
    "OUT",
    "RDMSR",
    "WRMSR",
    "CPUID",
    "RDTSC",
    "SYSENTER",
    "IRET",
];

/// Entries beyond the list (a second probe of LAR, with a DPL 3 descriptor).
const EXTRA: &[&str] = &["LAR (DPL 3)"];

fn vmm(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(args)
        .output()
        .expect("run vmm")
}

fn study_json() -> Value {
    let out = vmm(&["study", "--format", "json"]);
    let so = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{so}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&so).unwrap_or_else(|e| panic!("the JSON does not parse: {e}\n{so}"))
}

fn row<'a>(results: &'a [Value], name: &str, cpl: u64) -> &'a Value {
    results
        .iter()
        .find(|r| r["instruction"] == name && r["cpl"] == cpl)
        .unwrap_or_else(|| panic!("{name} at CPL {cpl} missing"))
}

#[test]
fn json_report() {
    let v = study_json();
    let results = v["results"].as_array().expect("results");
    assert_eq!(v["engines"], serde_json::json!(["interp", "direct", "bt"]));

    // Every instruction of the list, at both CPLs.
    for name in INSTRUCTIONS {
        for cpl in [0, 3] {
            let r = row(results, name, cpl);
            assert!(
                r["expected"].is_string()
                    && r["privileged"].is_string()
                    && r["sensitive"].is_boolean(),
                "{r}"
            );
            // The native column exists at CPL 3 only.
            assert_eq!(r["native"].is_null(), cpl == 0, "{r}");
            // Binary translation removes every failure trap-and-emulate shows.
            assert_eq!(r["engines"]["bt"]["verdict"], "exact", "{r}");
        }
    }
    assert_eq!(results.len(), 2 * (INSTRUCTIONS.len() + EXTRA.len()));

    // The interpreter is exact everywhere (its expected values come from the SDM, not from it).
    for r in results {
        assert_eq!(r["engines"]["interp"]["verdict"], "exact", "{r}");
    }

    // Trap-and-emulate of a deprivileged kernel: POPF and `mov ax, cs` fail at CPL 0.
    let popf = row(results, "POPF", 0);
    assert_eq!(popf["engines"]["direct"]["verdict"], "differs", "{popf}");
    assert_eq!(
        popf["engines"]["direct"]["observed"], "if,iopl=0x200",
        "{popf}"
    );
    let cs = row(results, "MOV from sreg", 0);
    assert_eq!(cs["engines"]["direct"]["verdict"], "differs", "{cs}");
    let seen = cs["engines"]["direct"]["raw"]["values"][0]
        .as_u64()
        .unwrap();
    assert_eq!(seen & 3, 3, "the direct engine's CS shows RPL 3: {cs}");
    // How each came about: the failures ran on the CPU, the SGDT of an LDT code segment and
    // the privileged instructions trapped and were emulated.
    assert_eq!(popf["engines"]["direct"]["trapped"], false, "{popf}");
    assert_eq!(cs["engines"]["direct"]["trapped"], false, "{cs}");
    for name in ["CLI", "HLT"] {
        for cpl in [0, 3] {
            let r = row(results, name, cpl);
            assert_eq!(r["engines"]["direct"]["trapped"], true, "{r}");
        }
    }
    // SGDT runs on the CPU with the host's UMIP dummies (Robin and Irvine's failure), or, on
    // a host whose kernel does not emulate UMIP for LDT code segments, traps and is exact.
    for cpl in [0, 3] {
        let r = row(results, "SGDT", cpl);
        let d = &r["engines"]["direct"];
        let exact_trapped = d["trapped"] == true && d["verdict"] == "exact";
        let umip = d["trapped"] == false && d["verdict"] == "differs" && d["observed"] == "limit=0x0 base=0xfffe0000";
        assert!(exact_trapped || umip, "{r}");
    }
    // Trap-and-emulate is exact exactly where the instruction traps (Popek and Goldberg):
    // every direct cell that differs is one that ran on the CPU.
    for r in results {
        let d = &r["engines"]["direct"];
        if d["verdict"] == "differs" {
            assert_eq!(d["trapped"], false, "{r}");
        }
        assert!(r["engines"]["interp"].get("trapped").is_none(), "{r}");
    }
    // Direct-executed user code sees the host's descriptor tables: LAR of a guest DPL 3
    // selector reads the host's GDT entry instead.
    let lar = row(results, "LAR (DPL 3)", 3);
    assert_eq!(lar["engines"]["direct"]["verdict"], "differs", "{lar}");
    // Privileged instructions trap and are emulated: exact.
    for name in ["CLI", "HLT", "LGDT", "MOV to CR3"] {
        for cpl in [0, 3] {
            let r = row(results, name, cpl);
            assert_eq!(r["engines"]["direct"]["verdict"], "exact", "{r}");
        }
    }

    // The bare host at CPL 3: CLI and HLT raise #GP(0), SGDT gives the UMIP dummy value.
    for name in ["CLI", "HLT"] {
        let n = &row(results, name, 3)["native"];
        assert_eq!(n["raw"]["end"], "event", "{n}");
        assert_eq!(n["raw"]["vector"], 13, "{n}");
        assert_eq!(n["raw"]["error"], 0, "{n}");
        assert_eq!(n["verdict"], "exact", "{n}");
    }
    let sgdt = &row(results, "SGDT", 3)["native"];
    assert_eq!(sgdt["verdict"], "differs", "{sgdt}");
    assert_eq!(
        sgdt["behaviour"], "UMIP: host emulates with dummy values",
        "{sgdt}"
    );
    // Linux's UMIP_DUMMY_GDT_BASE, truncated to 32 bits, with limit 0.
    assert_eq!(
        sgdt["raw"]["values"],
        serde_json::json!([0, 0xfffe_0000u32]),
        "{sgdt}"
    );
}

#[test]
fn table_and_markdown() {
    let out = vmm(&["study", "--only", "popf,cli"]);
    let so = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{so}");
    assert!(
        so.contains("instruction") && so.contains("interp") && so.contains("bt"),
        "{so}"
    );
    assert!(
        so.contains("POPF at CPL 0") && so.contains("direct"),
        "{so}"
    );
    assert_eq!(
        so.lines().filter(|l| l.starts_with("CLI ")).count(),
        2,
        "{so}"
    );

    let out = vmm(&["study", "--only", "sgdt", "--format", "markdown"]);
    let so = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{so}");
    assert!(so.starts_with("| instruction |"), "{so}");
    assert!(so.contains("| SGDT | no | yes | 3 |"), "{so}");

    let out = vmm(&["study", "--only", "nonsense"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no instruction matches"));
}
