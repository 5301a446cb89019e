//! `vmm study`: the Popek-Goldberg laboratory. Every sensitive or privileged instruction of
//! 32-bit x86 runs in a small guest at guest CPL 0 and CPL 3 under each engine, and natively at
//! host CPL 3; each result is compared with what a real CPU at that CPL would show, computed
//! from the SDM and the guest's known setup. See docs/study.md.
//!
//! * `catalogue.rs`: the instructions, as data (setup, observation, expected values);
//! * `guest.rs`: the guest built in memory (GDT, LDT, IDT, TSS, handlers, epilogue);
//! * `engines.rs`: the engine columns (`interp`, `direct`, `bt` when built);
//! * `native.rs`: the host column, run in a child process;
//! * `report.rs`: the terminal table, JSON and Markdown.

pub mod catalogue;
pub mod engines;
pub mod guest;
pub mod native;
pub mod report;

use serde_json::{json, Value};
use vmm_interp::exception;

use catalogue::{Case, Expect};
use guest::Ctx;

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// The instruction completed (the epilogue, or the native runner's sentinel, was reached).
    Completed,
    /// An exception or interrupt: vector, error code (0 if none), the CS the CPU pushed (the
    /// native runner cannot see it).
    Event {
        vector: u8,
        error: u32,
        cs: Option<u16>,
    },
    /// The CPU halted.
    Halted,
    /// The run could not be made or ended otherwise (message).
    Failed(String),
}

/// What a run showed: how it ended, and the case's observed values (`None`: not observable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub end: End,
    pub values: Vec<Option<u32>>,
    /// Engines that run guest code on the CPU: whether the instruction under study left guest
    /// code (a trap) and was emulated by the interpreter. `None` where it has no meaning
    /// (`interp`, the native runner).
    pub trapped: Option<bool>,
}

fn event_name(vector: u8, error: u32, cs: Option<u16>) -> String {
    let mut s = if vector == 0x80 {
        "host system call (SIGSYS)".to_string()
    } else if vector < 32 {
        let n = exception::name(vector);
        if matches!(vector, 8 | 10..=14 | 17) {
            format!("{n}({error:#x})")
        } else {
            n
        }
    } else {
        format!("int {vector:#x}")
    };
    if let Some(cs) = cs {
        if vector >= 32 {
            s.push_str(&format!(" cs={cs:#x}"));
        }
    }
    s
}

impl Observed {
    pub fn describe(&self, case: &Case) -> String {
        match &self.end {
            End::Completed => values_text(case, self.values.iter().copied()),
            End::Event { vector, error, cs } => event_name(*vector, *error, *cs),
            End::Halted => "halted".into(),
            End::Failed(m) => format!("failed: {m}"),
        }
    }

    pub fn to_json(&self) -> Value {
        let values: Vec<Value> = self
            .values
            .iter()
            .map(|v| v.map_or(Value::Null, |v| json!(v)))
            .collect();
        match &self.end {
            End::Completed => {
                json!({ "end": "completed", "values": values, "trapped": self.trapped })
            }
            End::Event { vector, error, cs } => {
                json!({ "end": "event", "vector": vector, "error": error, "cs": cs, "values": values, "trapped": self.trapped })
            }
            End::Halted => json!({ "end": "halted", "values": values, "trapped": self.trapped }),
            End::Failed(m) => {
                json!({ "end": "failed", "message": m, "values": values, "trapped": self.trapped })
            }
        }
    }

    pub fn from_json(v: &Value) -> Result<Observed, String> {
        let values = v["values"]
            .as_array()
            .ok_or("no values")?
            .iter()
            .map(|x| x.as_u64().map(|n| n as u32))
            .collect();
        let end = match v["end"].as_str() {
            Some("completed") => End::Completed,
            Some("halted") => End::Halted,
            Some("event") => End::Event {
                vector: v["vector"].as_u64().ok_or("no vector")? as u8,
                error: v["error"].as_u64().unwrap_or(0) as u32,
                cs: v["cs"].as_u64().map(|c| c as u16),
            },
            Some("failed") => End::Failed(v["message"].as_str().unwrap_or("").to_string()),
            other => return Err(format!("unknown end {other:?}")),
        };
        Ok(Observed {
            end,
            values,
            trapped: v["trapped"].as_bool(),
        })
    }
}

/// The values as text: EFLAGS bits masked to the flags observed, other values whole.
fn values_text(case: &Case, values: impl Iterator<Item = Option<u32>>) -> String {
    let parts: Vec<String> = case
        .obs
        .iter()
        .zip(values)
        .map(|(o, v)| match v {
            Some(v) if o.src == catalogue::Src::Eflags => format!("{}={:#x}", o.label, v & o.mask),
            Some(v) => format!("{}={v:#x}", o.label),
            None => format!("{}=?", o.label),
        })
        .collect();
    if parts.is_empty() {
        "completes".into()
    } else {
        parts.join(" ")
    }
}

pub fn describe_expect(case: &Case, e: &Expect) -> String {
    match e {
        Expect::Values(v) => values_text(case, v.iter().map(|x| Some(*x))),
        Expect::Fault(v, err) => event_name(*v, *err, None),
        Expect::Event(v, cs) => event_name(*v, 0, Some(*cs)),
        Expect::Halt => "halted".into(),
    }
}

/// Whether `o` is exactly what a real CPU shows (`e`), in the bits each observation compares
/// (values are recorded raw; the SDM's undefined bits are masked here).
pub fn matches(case: &Case, e: &Expect, o: &Observed) -> bool {
    match (e, &o.end) {
        (Expect::Values(v), End::Completed) => {
            v.len() == o.values.len()
                && v.len() == case.obs.len()
                && v.iter()
                    .zip(&o.values)
                    .zip(case.obs)
                    .all(|((a, b), ob)| b.is_some_and(|b| (a ^ b) & ob.mask == 0))
        }
        (Expect::Fault(v, err), End::Event { vector, error, .. }) => v == vector && err == error,
        (
            Expect::Event(v, cs),
            End::Event {
                vector, cs: ocs, ..
            },
        ) => v == vector && !matches!(ocs, Some(c) if c != cs),
        (Expect::Halt, End::Halted) => true,
        _ => false,
    }
}

/// One cell of an engine column.
#[derive(Clone, Debug)]
pub enum Cell {
    NotBuilt,
    Ran(Observed),
    /// The column could not be produced (the native child failed).
    Missing(String),
}

/// One line of the report: an instruction at a CPL.
pub struct Row {
    pub case: Case,
    pub cpl: u8,
    pub expect: Expect,
    /// Host CPL 3 (only for CPL 3 rows).
    pub native: Option<Cell>,
    /// One per `engines::ENGINES`.
    pub engines: Vec<(&'static str, Cell)>,
}

/// The native runner's behaviour in words.
pub fn native_behaviour(case: &Case, expect: &Expect, o: &Observed) -> &'static str {
    match &o.end {
        End::Event { vector: 0x80, .. } => "host system call",
        End::Event { .. } if matches(case, expect, o) => "traps, as a real CPU at CPL 3",
        End::Event { .. } => "traps",
        End::Completed if matches(case, expect, o) => "runs, same result",
        End::Completed if case.umip => "UMIP: host emulates with dummy values",
        End::Completed => "runs with a different result",
        End::Halted => "halts",
        End::Failed(_) => "failed",
    }
}

/// `--only`: instruction names, comma-separated, case-insensitive.
fn selected(only: Option<&str>) -> Vec<Case> {
    let all = catalogue::all();
    match only {
        None => all,
        Some(o) => {
            let want: Vec<String> = o
                .split(',')
                .map(|s| s.trim().to_ascii_lowercase())
                .collect();
            all.into_iter()
                .filter(|c| want.contains(&c.name.to_ascii_lowercase()))
                .collect()
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Markdown,
}

#[derive(clap::Args, Debug)]
pub struct StudyArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Only these instructions (names as in the table, comma-separated).
    #[arg(long)]
    pub only: Option<String>,
    /// Run only the native column in this process and print it as JSON (used by `vmm study`
    /// itself: the native runner and the direct engine cannot share a process).
    #[arg(long, hide = true)]
    pub native_only: bool,
}

/// `vmm study`.
pub fn run(args: &StudyArgs) -> Result<String, String> {
    let cases = selected(args.only.as_deref());
    if cases.is_empty() {
        return Err(format!(
            "no instruction matches --only {:?}",
            args.only.clone().unwrap_or_default()
        ));
    }
    if args.native_only {
        return Ok(native::child_main(&cases).to_string());
    }
    // The native column first, in a child process (see native.rs).
    let native_col = native::from_child(args.only.as_deref());
    let mut rows = Vec::new();
    for case in cases {
        for cpl in [0u8, 3] {
            let ctx = Ctx { cpl };
            let expect = (case.expect)(&ctx);
            let native = (cpl == 3).then(|| match &native_col {
                Ok(v) => v
                    .iter()
                    .find(|(n, _)| n == case.name)
                    .map(|(_, o)| Cell::Ran(o.clone()))
                    .unwrap_or_else(|| Cell::Missing("no result".into())),
                Err(e) => Cell::Missing(e.clone()),
            });
            let engines = engines::ENGINES
                .iter()
                .map(|(name, kind)| match kind {
                    Some(k) => (*name, Cell::Ran(engines::run(&case, &ctx, *k))),
                    None => (*name, Cell::NotBuilt),
                })
                .collect();
            rows.push(Row {
                case,
                cpl,
                expect,
                native,
                engines,
            });
        }
    }
    Ok(match args.format {
        Format::Table => report::table(&rows),
        Format::Json => report::json(&rows).to_string(),
        Format::Markdown => report::markdown(&rows),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_case_builds_at_both_cpls_and_natively() {
        let cases = catalogue::all();
        let mut names: Vec<&str> = cases.iter().map(|c| c.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), cases.len(), "names must be unique");
        for c in &cases {
            for cpl in [0, 3] {
                let ctx = Ctx { cpl };
                guest::build(c, &ctx).unwrap_or_else(|e| panic!("{}: {e}", c.name));
                if let Expect::Values(v) = (c.expect)(&ctx) {
                    assert_eq!(
                        v.len(),
                        c.obs.len(),
                        "{} at CPL {cpl}: one expected value per observation",
                        c.name
                    );
                }
            }
            guest::native_case(c).unwrap_or_else(|e| panic!("{}: {e}", c.name));
        }
    }

    #[test]
    fn comparison_masks_and_ends() {
        let c = catalogue::all()
            .into_iter()
            .find(|c| c.name == "LAR")
            .unwrap();
        let e = (c.expect)(&Ctx { cpl: 0 });
        // Bits 19:16 of LAR's result are undefined: not compared.
        let o = Observed {
            end: End::Completed,
            values: vec![Some(0x0041_9300), Some(0x40)],
            trapped: None,
        };
        assert!(matches(&c, &e, &o));
        let o = Observed {
            end: End::Completed,
            values: vec![Some(0x0040_9200), Some(0x40)],
            trapped: None,
        };
        assert!(!matches(&c, &e, &o));
        let o = Observed {
            end: End::Event {
                vector: 13,
                error: 0,
                cs: None,
            },
            values: vec![],
            trapped: None,
        };
        assert!(!matches(&c, &e, &o));
        assert!(matches(&c, &Expect::Fault(13, 0), &o));
        assert!(!matches(&c, &Expect::Fault(13, 8), &o));
        // JSON round trip.
        let o = Observed {
            end: End::Event {
                vector: 0x21,
                error: 0,
                cs: Some(0x1b),
            },
            values: vec![None, Some(3)],
            trapped: Some(true),
        };
        assert_eq!(Observed::from_json(&o.to_json()).unwrap(), o);
    }
}
