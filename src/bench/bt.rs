//! `vmm bench bt`: the translator's goals, measured in one run.
//!
//! Five guest kernel loops (and an empty one for reference) (CPL 0, flat protected mode, the `counted_loop` guests of
//! `kernel.rs`: ECX counts down, DEC, JNZ), each run under the engines `bt` (user engine
//! direct), `direct` and `interp`, and natively on the host CPU at CPL 3 in compatibility mode
//! (the native runner, `vmm_monitor::native`):
//!
//! | loop | body | native baseline |
//! |---|---|---|
//! | `empty` | nothing: the loop's own cost, for reference | the same loop |
//! | `cli/sti` | CLI; STI | NOP; NOP |
//! | `pushf/popf` | PUSHFD; POPFD | PUSH EAX; POP EAX |
//! | `call/ret` | CALL to a RET | the same loop |
//! | `jmp-ind` | MOV EAX, imm32; JMP EAX (to the loop's DEC ECX) | the same loop |
//! | `port-io` | IN AL, 0xe0 (no device: `bt` reads it inline) | MOV AL, 0xff (what the read returns) |
//!
//! The native baseline replaces the sensitive instruction by a NOP of the same kind (the same
//! length and the same effect on registers and stack, without the sensitivity); call/ret and
//! the indirect jump are not sensitive, their native baseline is the loop itself.
//!
//! Each figure is `(t(N) - t(0)) / N` for a whole run (setup, translation and teardown
//! cancel), the median of `reps` pairs of runs, where `t` is the CPU time of the process (user
//! and system: the host's signal delivery for an exit counts, waiting for a CPU on a loaded
//! machine does not). The goals (from the translator's issue):
//! CLI/STI and PUSHF/POPF under `bt` within 3x native, CALL/RET within 5x native, and `bt` at
//! least 20x faster than `direct` wherever `direct` traps. Whether `direct` traps is measured,
//! not assumed: the direct engine's native exits (host signals) per iteration.
//!
//! The native runner and the direct engine must not share a process (each installs
//! process-wide signal handlers, and the runner keeps its low pages mapped, where the direct
//! engine reserves the address space): the native column comes from a child process,
//! `vmm bench bt --native-only`, which prints it as JSON.

use std::process::Command;

use iced_x86::code_asm::*;
use iced_x86::{Code, Decoder, DecoderOptions, Register};
use serde_json::{json, Value};
use vmm_monitor::engine::{EngineKind, RunStats};
use vmm_monitor::native::{self, NativeCase, Prot, Region};

use super::kernel::{counted_loop, run_once, CODE, USTACK};
use super::nano::process_cpu_seconds;

/// A loop body: assembles one iteration. The label is the tail's subroutine, if any; the
/// address is where the body ends (the loop's DEC ECX), for a body that jumps there through a
/// register (see [`build`]).
type Body = fn(&mut CodeAssembler, CodeLabel, u32) -> Result<(), IcedError>;
/// What follows the guest's exit (the subroutine `call/ret` calls).
type Tail = fn(&mut CodeAssembler, &mut CodeLabel) -> Result<(), IcedError>;

/// The port the `port-io` loop reads: no device claims it (checked on every run).
const NULL_PORT: u8 = 0xe0;

/// One of the five loops.
struct Loop {
    name: &'static str,
    body: Body,
    what: &'static str,
    /// The native loop's body when it differs (the sensitive instruction replaced).
    native: Option<(Body, &'static str)>,
    tail: Tail,
    /// The sensitive body also runs at host CPL 3 without trapping (POPF ignores IF there):
    /// the report shows that loop natively too, for reference.
    also_native_as_is: bool,
    /// Goal: `bt` within this many times native.
    goal_native: Option<f64>,
    /// Iterations at scale 1: native, bt, direct, interp (a few tenths of a second each, so
    /// that the loop outweighs the jitter of a run's setup; `direct` runs a loop that does not
    /// trap at native speed).
    n: [f64; 4],
}

fn no_tail(_: &mut CodeAssembler, _: &mut CodeLabel) -> Result<(), IcedError> {
    Ok(())
}

fn loops() -> Vec<Loop> {
    vec![
        Loop {
            name: "empty",
            body: |_, _, _| Ok(()),
            what: "nothing (the loop's own cost)",
            native: None,
            tail: no_tail,
            also_native_as_is: false,
            goal_native: None,
            n: [1e8, 2e7, 1e8, 1e6],
        },
        Loop {
            name: "cli/sti",
            body: |a, _, _| {
                a.cli()?;
                a.sti()
            },
            what: "CLI; STI",
            native: Some((
                |a, _, _| {
                    a.nop()?;
                    a.nop()
                },
                "NOP; NOP",
            )),
            tail: no_tail,
            also_native_as_is: false,
            goal_native: Some(3.0),
            n: [1e8, 2e7, 2e4, 1e6],
        },
        Loop {
            name: "pushf/popf",
            body: |a, _, _| {
                a.pushfd()?;
                a.popfd()
            },
            what: "PUSHFD; POPFD",
            native: Some((
                |a, _, _| {
                    a.push(eax)?;
                    a.pop(eax)
                },
                "PUSH EAX; POP EAX",
            )),
            tail: no_tail,
            also_native_as_is: true,
            goal_native: Some(3.0),
            n: [1e8, 2e7, 1e8, 1e6],
        },
        Loop {
            name: "call/ret",
            body: |a, sub, _| a.call(sub),
            what: "CALL to a RET",
            native: None,
            tail: |a, sub| {
                a.set_label(sub)?;
                a.ret()
            },
            also_native_as_is: false,
            goal_native: Some(5.0),
            n: [1e8, 2e7, 1e8, 1e6],
        },
        Loop {
            name: "jmp-ind",
            body: |a, _, next| {
                a.mov(eax, next)?;
                a.jmp(eax)
            },
            what: "MOV EAX, imm32; JMP EAX (to the DEC)",
            native: None,
            tail: no_tail,
            also_native_as_is: false,
            goal_native: None,
            n: [1e8, 2e7, 1e8, 1e6],
        },
        Loop {
            name: "port-io",
            body: |a, _, _| a.in_(al, NULL_PORT as u32),
            what: "IN AL, 0xe0 (a port no device claims)",
            native: Some((|a, _, _| a.mov(al, 0xffu32), "MOV AL, 0xff")),
            tail: no_tail,
            also_native_as_is: false,
            goal_native: None,
            n: [1e8, 2e7, 5e4, 1e6],
        },
    ]
}

/// Options of `vmm bench bt`.
#[derive(Clone, Debug)]
pub struct BtOptions {
    /// Multiplies every iteration count.
    pub scale: f64,
    /// Pairs of runs per figure (the median is reported).
    pub reps: usize,
}

fn iterations(base: f64, scale: f64) -> u32 {
    ((base * scale) as u32).max(100)
}

// ---- native (in the child process) -------------------------------------------------------

/// One native run of `code` (at CODE): the CPU time of `native::run`.
fn native_once(code: &[u8]) -> Result<f64, String> {
    // The guest's debug-exit `OUT 0xf4, AL` #GPs at CPL 3: that is where the run stops.
    let mut dec = Decoder::with_ip(32, code, CODE as u64, DecoderOptions::NONE);
    let stop = dec
        .iter()
        .find(|i| i.code() == Code::Out_imm8_AL && i.immediate8() == 0xf4)
        .map(|i| i.ip32())
        .ok_or("the native loop has no debug-exit OUT")?;
    let mut page = code.to_vec();
    page.resize(code.len().div_ceil(0x1000) * 0x1000, 0xf4);
    let mut gpr = [0u32; 8];
    gpr[4] = USTACK;
    let case = NativeCase {
        regions: vec![
            Region {
                addr: CODE,
                bytes: page,
                prot: Prot::ReadExec,
            },
            Region {
                addr: USTACK - 0x1000,
                bytes: vec![0; 0x1000],
                prot: Prot::ReadWrite,
            },
        ],
        gpr,
        eflags: 0x202,
        eip: CODE,
        stop_eip: stop,
        timeout_ms: 120_000,
    };
    let t = process_cpu_seconds();
    let out = native::run(&case).map_err(|e| e.to_string())?;
    let dt = process_cpu_seconds() - t;
    if let Some(e) = out.exception {
        return Err(format!(
            "the native loop raised vector {} at eip {:#x}",
            e.vector, out.eip
        ));
    }
    if out.gpr[1] != 0 {
        return Err(format!(
            "the native loop stopped with ECX = {:#x}, not 0",
            out.gpr[1]
        ));
    }
    Ok(dt)
}

/// The guest of loop `l` (its native variant if `native`) running `iters` iterations. Two
/// passes: the first finds where the body ends (the first DEC ECX: no body has one), the
/// second passes that address to the body (MOV EAX, imm32 keeps the layout); checked.
fn build(l: &Loop, iters: u32, native: bool) -> Result<[Vec<u8>; 3], String> {
    let body = if native {
        l.native.map(|(b, _)| b).unwrap_or(l.body)
    } else {
        l.body
    };
    let end_of_body = |code: &[u8]| {
        Decoder::with_ip(32, code, CODE as u64, DecoderOptions::NONE)
            .iter()
            .find(|i| i.code() == Code::Dec_r32 && i.op0_register() == Register::ECX)
            .map(|i| i.ip32())
            .ok_or_else(|| format!("{}: no DEC ECX in the loop", l.name))
    };
    let [first, _, _] = counted_loop(iters, |a, s| body(a, s, 0), l.tail);
    let after = end_of_body(&first)?;
    let guest = counted_loop(iters, |a, s| body(a, s, after), l.tail);
    if end_of_body(&guest[0])? != after {
        return Err(format!(
            "{}: the loop's layout changed between the passes",
            l.name
        ));
    }
    Ok(guest)
}

/// `vmm bench bt --native-only`: the native column as JSON (seconds per iteration).
pub fn native_only(o: &BtOptions) -> Result<(), String> {
    let mut rows = Vec::new();
    for l in loops() {
        let n = iterations(l.n[0], o.scale);
        let per_iter = |nop: bool| -> Result<Vec<f64>, String> {
            let mut v = Vec::new();
            for _ in 0..o.reps {
                let t0 = native_once(&build(&l, 0, nop)?[0])?;
                let t = native_once(&build(&l, n, nop)?[0])?;
                v.push((t - t0).max(0.0) / n as f64);
            }
            Ok(v)
        };
        let v = per_iter(true)?;
        let mut row = json!({"loop": l.name, "seconds": super::median(v.clone()), "reps": v, "iterations": n});
        if l.also_native_as_is {
            row["seconds_as_is"] = json!(super::median(per_iter(false)?));
        }
        rows.push(row);
    }
    println!("{}", json!({ "native": rows }));
    Ok(())
}

/// The native column from a child process, by loop name: seconds per iteration of the
/// baseline, and of the loop as it is where it runs at CPL 3 ([`Loop::also_native_as_is`]).
fn native_from_child(o: &BtOptions) -> Result<Vec<(String, f64, Option<f64>)>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let out = Command::new(exe)
        .args([
            "bench",
            "bt",
            "--native-only",
            "--scale",
            &o.scale.to_string(),
            "--reps",
            &o.reps.to_string(),
        ])
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
    v["native"]
        .as_array()
        .ok_or("the native child's output has no \"native\" array")?
        .iter()
        .map(|r| match (r["loop"].as_str(), r["seconds"].as_f64()) {
            (Some(n), Some(s)) => Ok((n.to_string(), s, r["seconds_as_is"].as_f64())),
            _ => Err(format!("a malformed native row: {r}")),
        })
        .collect()
}

// ---- the engines ---------------------------------------------------------------------------

/// Seconds per iteration under kernel engine `k` and host signals (native exits) per
/// iteration, medians of `reps` pairs of runs.
fn engine_cost(l: &Loop, n: u32, k: EngineKind, reps: usize) -> Result<(f64, f64), String> {
    let u = if k == EngineKind::Interp {
        EngineKind::Interp
    } else {
        EngineKind::Direct
    };
    let mut t = Vec::new();
    let mut exits = Vec::new();
    for _ in 0..reps {
        let [c0, h0, u0] = build(l, 0, false)?;
        let r0 = run_once(&c0, &h0, &u0, k, u)?;
        let [c, h, us] = build(l, n, false)?;
        let r1 = run_once(&c, &h, &us, k, u)?;
        let (t0, t1, s0, s1) = (r0.cpu, r1.cpu, r0.stats, r1.stats);
        check_null_port(l, n, k, &s1)?;
        t.push((t1 - t0).max(0.0) / n as f64);
        exits.push(s1.native_exits.saturating_sub(s0.native_exits) as f64 / n as f64);
    }
    Ok((super::median(t), super::median(exits)))
}

/// The `port-io` loop must really read a port no device claims: where the reads reach the
/// machine (`direct`, `interp`), it counted each as unclaimed; `bt` reads a null port inline
/// (scanner/src/mangle/io.rs), without the machine: there the port must be one of the
/// machine's null ports (`Machine::null_ports`, what `bt` was given).
fn check_null_port(l: &Loop, n: u32, k: EngineKind, s: &RunStats) -> Result<(), String> {
    if l.name != "port-io" {
        return Ok(());
    }
    if k == EngineKind::Bt {
        let [c, h, u] = build(l, 0, false)?;
        let (m, _) = super::kernel::machine(&c, &h, &u);
        if !m.null_ports().contains(NULL_PORT as u16) {
            return Err(format!("port-io: port {NULL_PORT:#x} is not a null port of the machine"));
        }
        return Ok(());
    }
    let seen = s
        .machine
        .unclaimed_by_port
        .get(&(NULL_PORT as u16))
        .copied()
        .unwrap_or(0);
    if seen < n as u64 {
        return Err(format!(
            "port-io: {seen} of {n} reads of port {NULL_PORT:#x} were unclaimed: a device claims the port"
        ));
    }
    Ok(())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

struct Row {
    name: &'static str,
    native: f64,
    native_as_is: Option<f64>,
    bt: f64,
    direct: f64,
    interp: f64,
    direct_traps: f64,
    goal_native: Option<f64>,
}

fn ns(s: f64) -> String {
    let v = s * 1e9;
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn times(r: f64) -> String {
    if r >= 100.0 {
        format!("{r:.0}x")
    } else {
        format!("{r:.2}x")
    }
}

fn ratio(a: f64, b: f64) -> String {
    times(a / b.max(1e-15))
}

/// `vmm bench bt`.
pub fn run(o: &BtOptions) -> Result<(), String> {
    let load_before = loadavg();
    // The native column first, in a child process (before this process installs the direct
    // engine's signal handlers and seccomp filter).
    let native = native_from_child(o)?;
    let mut rows = Vec::new();
    for l in loops() {
        let (nat, as_is) = native
            .iter()
            .find(|(n, _, _)| n == l.name)
            .map(|(_, s, a)| (*s, *a))
            .ok_or_else(|| format!("the native child reported no {}", l.name))?;
        let (bt, _) = engine_cost(&l, iterations(l.n[1], o.scale), EngineKind::Bt, o.reps)?;
        let (direct, traps) =
            engine_cost(&l, iterations(l.n[2], o.scale), EngineKind::Direct, o.reps)?;
        let (interp, _) = engine_cost(&l, iterations(l.n[3], o.scale), EngineKind::Interp, o.reps)?;
        rows.push(Row {
            name: l.name,
            native: nat,
            native_as_is: as_is,
            bt,
            direct,
            interp,
            direct_traps: traps,
            goal_native: l.goal_native,
        });
    }
    let load_after = loadavg();

    println!(
        "vmm bench bt: guest kernel loops, ns per iteration (median of {} runs of (t(N) - t(0)) / N, t = process CPU time)",
        o.reps
    );
    println!(
        "load average: {load_before} (before), {load_after} (after); host CPUs: {}",
        host_cpus()
    );
    println!();
    println!(
        "{:<11} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>14}",
        "loop", "native", "bt", "direct", "interp", "bt/native", "direct/bt", "direct traps"
    );
    for r in &rows {
        println!(
            "{:<11} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>14.2}",
            r.name,
            ns(r.native),
            ns(r.bt),
            ns(r.direct),
            ns(r.interp),
            ratio(r.bt, r.native),
            ratio(r.direct, r.bt),
            r.direct_traps
        );
    }
    println!();
    println!("loops (ECX counts down: body; DEC ECX; JNZ), and the native baseline (host CPL 3):");
    for l in loops() {
        let nat = l.native.map(|(_, w)| w).unwrap_or("the same loop");
        println!("  {:<11} {:<40} native: {nat}", l.name, l.what);
    }
    for r in &rows {
        if let Some(a) = r.native_as_is {
            println!(
                "  {:<11} for reference, the loop as it is natively (it does not trap at CPL 3): {} ns = {} the baseline; bt = {} that",
                r.name,
                ns(a),
                ratio(a, r.native),
                ratio(r.bt, a)
            );
        }
    }
    println!("direct traps: the direct engine's host signals per iteration (measured).");
    if rows
        .iter()
        .any(|r| [r.native, r.bt, r.direct, r.interp].contains(&0.0))
    {
        println!("WARNING: a figure of 0 means t(N) was not above t(0): the loop is too short at this --scale to measure.");
    }
    println!();
    println!("goals:");
    for r in &rows {
        if let Some(g) = r.goal_native {
            let x = r.bt / r.native.max(1e-15);
            println!(
                "  {:<11} bt within {g}x of native: {} (bt {} ns = {} native {} ns)",
                r.name,
                if x <= g { "met" } else { "MISSED" },
                ns(r.bt),
                times(x),
                ns(r.native)
            );
        }
    }
    for r in &rows {
        if r.direct_traps >= 0.5 {
            let x = r.direct / r.bt.max(1e-15);
            println!(
                "  {:<11} bt at least 20x faster than direct (direct traps): {} (direct {} ns = {} bt {} ns)",
                r.name,
                if x >= 20.0 { "met" } else { "MISSED" },
                ns(r.direct),
                times(x),
                ns(r.bt)
            );
        } else {
            println!(
                "  {:<11} bt at least 20x faster than direct: no goal (direct does not trap: {:.2} signals per iteration)",
                r.name, r.direct_traps
            );
        }
    }
    Ok(())
}

fn host_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
