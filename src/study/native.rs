//! The native column: the same instruction bytes on the host CPU at host CPL 3, in
//! compatibility mode, through `vmm_monitor::native::run`.
//!
//! The native runner and the direct engine each install process-wide signal handlers (and
//! the native runner a seccomp filter on its thread) that do not know about each other, so
//! they must not run in the same process: `vmm study` re-executes itself as
//! `vmm study --native-only --format json` and reads this column from the child's output.

use std::process::Command;

use serde_json::{json, Value};
use vmm_monitor::native;

use super::catalogue::{Case, Src};
use super::guest::{self, USTACK};
use super::{End, Observed};

/// Run one case natively (in this process: only from `--native-only`).
pub fn run(case: &Case) -> Observed {
    let nc = match guest::native_case(case) {
        Ok(c) => c,
        Err(e) => {
            return Observed {
                end: End::Failed(e),
                values: vec![],
                trapped: None,
            }
        }
    };
    let out = match native::run(&nc) {
        Ok(o) => o,
        Err(e) => {
            return Observed {
                end: End::Failed(e.to_string()),
                values: vec![],
                trapped: None,
            }
        }
    };
    let end = match out.exception {
        None => End::Completed,
        Some(x) => End::Event {
            vector: x.vector,
            error: x.error_code,
            cs: None,
        },
    };
    let rd = |addr: u32, size: u8| -> Option<u32> {
        for (r, bytes) in nc.regions.iter().zip(&out.memory) {
            if addr >= r.addr && (addr + size as u32) <= r.addr + bytes.len() as u32 {
                let off = (addr - r.addr) as usize;
                let mut w = [0u8; 4];
                w[..size as usize].copy_from_slice(&bytes[off..off + size as usize]);
                return Some(u32::from_le_bytes(w));
            }
        }
        None
    };
    let values = case
        .obs
        .iter()
        .map(|o| {
            match o.src {
                Src::Gpr(i) => Some(out.gpr[i]),
                Src::Mem(a, n) => rd(a, n),
                Src::Stack(below) => rd(USTACK - below, 4),
                Src::Eflags => Some(out.eflags),
                // The host's descriptor-table registers and CR3 are not observable at CPL 3.
                _ => None,
            }
        })
        .collect();
    Observed {
        end,
        values,
        trapped: None,
    }
}

/// `vmm study --native-only --format json`: every case, one JSON object.
pub fn child_main(cases: &[Case]) -> Value {
    let rows: Vec<Value> = cases
        .iter()
        .map(|c| json!({ "instruction": c.name, "observed": run(c).to_json() }))
        .collect();
    json!({ "native": rows })
}

/// The native column, from a child process. Each entry is keyed by instruction name.
pub fn from_child(only: Option<&str>) -> Result<Vec<(String, Observed)>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.args(["study", "--native-only", "--format", "json"]);
    if let Some(o) = only {
        cmd.args(["--only", o]);
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run the native child: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "the native child failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let v: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("the native child's output: {e}"))?;
    let rows = v["native"]
        .as_array()
        .ok_or("the native child's output has no \"native\" array")?;
    rows.iter()
        .map(|r| {
            let name = r["instruction"]
                .as_str()
                .ok_or("a native row without a name")?
                .to_string();
            Ok((name, Observed::from_json(&r["observed"])?))
        })
        .collect()
}
