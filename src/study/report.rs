//! The report: a table on the terminal, `--format json`, `--format markdown`.

use serde_json::{json, Value};

use super::{describe_expect, matches, native_behaviour, Cell, Observed, Row};

/// A cell's verdict: "exact", "differs", "not built", "n/a" (native at CPL 0), "error".
fn verdict(row: &Row, cell: &Cell) -> &'static str {
    match cell {
        Cell::NotBuilt => "not built",
        Cell::Missing(_) => "error",
        Cell::Ran(o) if matches(&row.case, &row.expect, o) => "exact",
        Cell::Ran(_) => "differs",
    }
}

/// The verdict with how it came about, for engines that run guest code on the CPU: "exact,
/// trapped" (the instruction trapped and was emulated), "differs, ran" (it ran on the CPU
/// and showed the host's view).
fn verdict_long(row: &Row, cell: &Cell) -> String {
    let v = verdict(row, cell);
    match cell {
        Cell::Ran(Observed {
            trapped: Some(true),
            ..
        }) => format!("{v}, trapped"),
        Cell::Ran(Observed {
            trapped: Some(false),
            ..
        }) => format!("{v}, ran"),
        _ => v.to_string(),
    }
}

fn observed_text(row: &Row, cell: &Cell) -> String {
    match cell {
        Cell::NotBuilt => "not built".into(),
        Cell::Missing(m) => format!("error: {m}"),
        Cell::Ran(o) => o.describe(&row.case),
    }
}

fn cell_json(row: &Row, cell: &Cell) -> Value {
    let mut v = json!({ "verdict": verdict(row, cell) });
    match cell {
        Cell::Ran(o) => {
            if let Some(t) = o.trapped {
                v["trapped"] = json!(t);
            }
            v["observed"] = json!(o.describe(&row.case));
            v["raw"] = o.to_json();
        }
        Cell::Missing(m) => v["error"] = json!(m),
        Cell::NotBuilt => {}
    }
    v
}

pub fn json(rows: &[Row]) -> Value {
    let results: Vec<Value> = rows
        .iter()
        .map(|r| {
            let mut engines = serde_json::Map::new();
            for (name, cell) in &r.engines {
                engines.insert(name.to_string(), cell_json(r, cell));
            }
            let native = match &r.native {
                None => Value::Null,
                Some(c) => {
                    let mut v = cell_json(r, c);
                    if let Cell::Ran(o) = c {
                        v["behaviour"] = json!(native_behaviour(&r.case, &r.expect, o));
                    }
                    v
                }
            };
            json!({
                "instruction": r.case.name,
                "syntax": r.case.syntax,
                "privileged": r.case.privileged.as_str(),
                "sensitive": r.case.sensitive,
                "robin_irvine": r.case.robin_irvine,
                "cpl": r.cpl,
                "expected": describe_expect(&r.case, &r.expect),
                "rule": r.case.rule,
                "native": native,
                "engines": Value::Object(engines),
            })
        })
        .collect();
    json!({
        "engines": super::engines::ENGINES.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        "host": host(),
        "results": results,
    })
}

/// The host CPU's model name (for the record).
fn host() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn native_short(r: &Row) -> String {
    match &r.native {
        None => "-".into(),
        Some(Cell::Ran(o)) => match &o.end {
            super::End::Event { .. } => format!("traps {}", o.describe(&r.case)),
            _ => native_behaviour(&r.case, &r.expect, o).to_string(),
        },
        Some(c) => verdict(r, c).to_string(),
    }
}

/// The differing cells of the report, as (row, column, observed) lines.
fn differences(rows: &[Row]) -> Vec<(String, String, String, String)> {
    let mut out = Vec::new();
    for r in rows {
        let mut cells: Vec<(&str, &Cell)> = r.native.iter().map(|c| ("native", c)).collect();
        cells.extend(r.engines.iter().map(|(n, c)| (*n, c)));
        for (name, c) in cells {
            if matches!(verdict(r, c), "differs" | "error") {
                out.push((
                    format!("{} at CPL {}", r.case.name, r.cpl),
                    name.to_string(),
                    observed_text(r, c),
                    describe_expect(&r.case, &r.expect),
                ));
            }
        }
    }
    out
}

pub fn table(rows: &[Row]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let names: Vec<&str> = super::engines::ENGINES.iter().map(|(n, _)| *n).collect();
    let we = rows
        .iter()
        .map(|r| describe_expect(&r.case, &r.expect).len())
        .max()
        .unwrap_or(0)
        .max(16);
    let wn = rows
        .iter()
        .map(|r| native_short(r).len())
        .max()
        .unwrap_or(0)
        .max(19);
    let _ = write!(
        s,
        "{:<14} {:<5} {:<5} {:<3} {:<we$} {:<wn$}",
        "instruction", "priv", "sens", "cpl", "a real CPU shows", "host CPL 3 (native)"
    );
    for n in &names {
        let _ = write!(s, " {n:<16}");
    }
    s.push('\n');
    for r in rows {
        let _ = write!(
            s,
            "{:<14} {:<5} {:<5} {:<3} {:<we$} {:<wn$}",
            r.case.name,
            r.case.privileged.as_str(),
            if r.case.sensitive { "yes" } else { "no" },
            r.cpl,
            describe_expect(&r.case, &r.expect),
            native_short(r)
        );
        for (_, c) in &r.engines {
            let _ = write!(s, " {:<16}", verdict_long(r, c));
        }
        s.push('\n');
    }
    let diffs = differences(rows);
    if !diffs.is_empty() {
        s.push_str("\nWhere the guest did not see what a real CPU shows (observed / expected):\n");
        for (what, col, got, want) in diffs {
            let _ = writeln!(
                s,
                "  {what:<22} {col:<7} {got}\n  {:<22} {:<7} {want}  (expected)",
                "", ""
            );
        }
    }
    s
}

/// A Markdown table cell: pipes escaped.
fn md(s: &str) -> String {
    s.replace('|', "\\|")
}

pub fn markdown(rows: &[Row]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let names: Vec<&str> = super::engines::ENGINES.iter().map(|(n, _)| *n).collect();
    let _ = write!(
        s,
        "| instruction | privileged | sensitive | CPL | a real CPU shows | host CPL 3 (native) |"
    );
    for n in &names {
        let _ = write!(s, " {n} |");
    }
    s.push_str("\n|---|---|---|---|---|---|");
    for _ in &names {
        s.push_str("---|");
    }
    s.push('\n');
    for r in rows {
        let _ = write!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            r.case.name,
            r.case.privileged.as_str(),
            if r.case.sensitive { "yes" } else { "no" },
            r.cpl,
            md(&describe_expect(&r.case, &r.expect)),
            md(&native_short(r))
        );
        for (_, c) in &r.engines {
            let v = verdict_long(r, c);
            if verdict(r, c) == "differs" {
                let _ = write!(s, " **{v}**: {} |", md(&observed_text(r, c)));
            } else {
                let _ = write!(s, " {v} |");
            }
        }
        s.push('\n');
    }
    let diffs = differences(rows);
    if !diffs.is_empty() {
        s.push_str("\n| where | column | observed | a real CPU shows |\n|---|---|---|---|\n");
        for (what, col, got, want) in diffs {
            let _ = writeln!(
                s,
                "| {} | {col} | {} | {} |",
                md(&what),
                md(&got),
                md(&want)
            );
        }
    }
    s
}
