//! The engine columns: each engine runs the study's guest through `engine::run`.
//!
//! Adding an engine is one line in [`ENGINES`] (its name and the `EngineKind` that runs it);
//! an engine listed with `None` is shown as "not built".

use std::time::Duration;

use vmm_monitor::devices::HostClock;
use vmm_monitor::engine::{self, EngineKind, Outcome, RunOptions};
use vmm_monitor::machine::Machine;
use vmm_monitor::memory::GuestRam;

use super::catalogue::{Case, Src};
use super::guest::{self, Ctx};
use super::{End, Observed};

/// The engines of the table, in column order. `None`: not built yet (the `bt` translator).
pub const ENGINES: &[(&str, Option<EngineKind>)] = &[
    ("interp", Some(EngineKind::Interp)),
    ("direct", Some(EngineKind::Direct)),
    ("bt", None),
];

/// Run `case` at `ctx.cpl` with `kind` for both guest privilege levels.
pub fn run(case: &Case, ctx: &Ctx, kind: EngineKind) -> Observed {
    match run_inner(case, ctx, kind) {
        Ok(o) => o,
        Err(e) => Observed {
            end: End::Failed(e),
            values: vec![],
            trapped: None,
        },
    }
}

fn run_inner(case: &Case, ctx: &Ctx, kind: EngineKind) -> Result<Observed, String> {
    let image = guest::build(case, ctx)?;
    let mut ram = if kind == EngineKind::Interp {
        GuestRam::heap(guest::RAM)
    } else {
        GuestRam::memfd(guest::RAM).map_err(|e| format!("guest RAM: {e}"))?
    };
    for (at, bytes) in &image.chunks {
        ram.write(*at as u64, bytes).map_err(|e| e.to_string())?;
    }
    let machine = Machine::new(ram, Box::new(HostClock::new()), Box::new(std::io::sink()));
    let opts = RunOptions {
        kernel_engine: kind,
        user_engine: kind,
        timeout: Some(Duration::from_secs(10)),
        ..RunOptions::default()
    };
    let r = engine::run(machine, image.state, &opts).map_err(|e| e.to_string())?;
    let ram = &r.machine.ram;
    let rd = |addr: u32, size: u8| -> Option<u32> {
        let b = ram.slice(addr as u64, size as usize)?;
        let mut w = [0u8; 4];
        w[..size as usize].copy_from_slice(b);
        Some(u32::from_le_bytes(w))
    };
    let end = match &r.outcome {
        Outcome::DebugExit { value } if *value == guest::DONE => End::Completed,
        Outcome::DebugExit { value } if *value == guest::EVENT => End::Event {
            vector: rd(guest::RES_VEC, 4).unwrap_or(0xff) as u8,
            error: rd(guest::RES_ERR, 4).unwrap_or(0),
            cs: rd(guest::RES_CS, 2).map(|c| c as u16),
        },
        Outcome::DeadHalt { .. } => End::Halted,
        other => End::Failed(other.message()),
    };
    let s = &r.state;
    let values = case
        .obs
        .iter()
        .map(|o| match o.src {
            Src::Gpr(i) => rd(guest::RES + 4 * i as u32, 4),
            Src::Mem(a, n) => rd(a, n),
            Src::Stack(below) => rd(ctx.stack_top() - below, 4),
            Src::Eflags => Some(s.eflags),
            Src::GdtrBase => Some(s.gdtr.base),
            Src::GdtrLimit => Some(s.gdtr.limit as u32),
            Src::IdtrLimit => Some(s.idtr.limit as u32),
            Src::Ldtr => Some(s.ldtr.selector as u32),
            Src::Tr => Some(s.tr.selector as u32),
            Src::Cr3 => Some(s.cr3),
        })
        .collect();
    // The exit through the debug-exit port (the epilogue's or the handler's OUT) is one
    // emulated instruction; any other was the instruction under study (or its consequence).
    let trapped = (kind != EngineKind::Interp).then(|| {
        let exit_out = u64::from(matches!(r.outcome, Outcome::DebugExit { .. }));
        r.stats.emulated > exit_out
    });
    Ok(Observed {
        end,
        values,
        trapped,
    })
}
