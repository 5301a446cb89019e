//! `vmm bench nano`: nanobenchmarks after Adams and Agesen, "A Comparison of Software and
//! Hardware Techniques for x86 Virtualization" (ASPLOS 2006), section 6.
//!
//! One Multiboot guest per operation (`nano_guest.rs`) times `n` iterations with RDTSC inside
//! the guest, minus an empty loop of `n` iterations, `reps` times; the median is reported. The
//! same ELF images run under each engine of `vmm` and, where `qemu-system-i386` is installed,
//! under QEMU's TCG. The native column is the host's own cost of the nearest equivalent,
//! measured from Rust in the same run.
//!
//! **Units.** Everything is reported in nanoseconds per operation. The guest TSC is the host
//! TSC under every engine: `interp` reads it through the `Machine`'s clock, under `direct`
//! RDTSC is not intercepted (guest kernel and user code run on the CPU at host CPL 3, CR4.TSD
//! clear), `bt` inlines it; QEMU's TCG derives its TSC from the host TSC too. Readings are
//! converted with the host TSC rate, calibrated against `CLOCK_MONOTONIC` at the start of the
//! run.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vmm_monitor::devices::{HostClock, SharedBuffer};
use vmm_monitor::engine::{self, EngineKind, Outcome, RunOptions};
use vmm_monitor::loader::multiboot;
use vmm_monitor::machine::Machine;
use vmm_monitor::memory::GuestRam;

use super::nano_guest::{self, Op};

/// Options of `vmm bench nano`.
#[derive(Clone, Debug)]
pub struct NanoOptions {
    pub quick: bool,
    pub json: bool,
    pub svg: Option<std::path::PathBuf>,
    /// Columns to run: any of interp, direct, bt, qemu.
    pub engines: Vec<String>,
}

pub const COLUMNS: [&str; 4] = ["interp", "direct", "bt", "qemu"];

/// A column's result for one benchmark.
#[derive(Clone, Debug)]
enum Cell {
    /// Nanoseconds per operation (median) and each repetition's value.
    Ns(f64, Vec<f64>),
    /// Why there is no number.
    None(String),
}

impl Cell {
    fn ns(&self) -> Option<f64> {
        match self {
            Cell::Ns(v, _) => Some(*v),
            Cell::None(_) => None,
        }
    }
}

/// Iterations per timed loop and the warm-up, per operation.
fn sizes(op: Op, quick: bool) -> (u32, u32, u32) {
    let (n, reps, warm) = match op {
        Op::CallRet | Op::PushfPopf => (100_000, 5, 10_000),
        Op::Hidden => (1000, 5, 100),
        _ => (5000, 5, 500),
    };
    if quick {
        ((n / 10).max(10), 3, warm / 10)
    } else {
        (n, reps, warm)
    }
}

/// The host TSC rate in GHz (ticks per nanosecond), against the monotonic clock.
pub fn tsc_ghz() -> f64 {
    let mut v = Vec::new();
    for _ in 0..3 {
        let t0 = Instant::now();
        let c0 = rdtsc();
        while t0.elapsed() < Duration::from_millis(30) {}
        let c1 = rdtsc();
        let ns = t0.elapsed().as_nanos() as f64;
        v.push((c1 - c0) as f64 / ns);
    }
    super::median(v)
}

/// CPU time of this process (user and system, all threads) in seconds: what a benchmark on a
/// loaded machine measures instead of the wall clock (time spent waiting for a CPU excluded).
pub fn process_cpu_seconds() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant the kernel knows.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(r, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID) failed");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no memory effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Nanoseconds per op from the guest's (empty, op) TSC pairs at `ticks_per_ns`.
fn per_op(pairs: &[(u64, u64)], n: u32, ticks_per_ns: f64) -> Cell {
    let v: Vec<f64> = pairs
        .iter()
        .map(|(e, o)| (*o as f64 - *e as f64).max(0.0) / n as f64 / ticks_per_ns)
        .collect();
    Cell::Ns(super::median(v.clone()), v)
}

/// Run one guest image under vmm: the serial output.
fn run_vmm(image: &[u8], k: EngineKind, u: EngineKind) -> Result<String, String> {
    let mut ram = if k == EngineKind::Interp && u == EngineKind::Interp {
        GuestRam::heap(nano_guest::RAM_BYTES)
    } else {
        GuestRam::memfd(nano_guest::RAM_BYTES).map_err(|e| e.to_string())?
    };
    let kernel = multiboot::load(&mut ram, image, "").map_err(|e| e.to_string())?;
    let serial = SharedBuffer::new();
    let machine = Machine::new(ram, Box::new(HostClock::new()), Box::new(serial.clone()));
    let opts = RunOptions {
        kernel_engine: k,
        user_engine: u,
        timeout: Some(Duration::from_secs(300)),
        ..RunOptions::default()
    };
    let r = engine::run(machine, kernel.state, &opts).map_err(|e| e.to_string())?;
    match r.outcome {
        Outcome::DebugExit { value: 0 } => Ok(serial.text()),
        Outcome::DebugExit { value } if value >= 0x40 => Err(format!(
            "unexpected exception {} at eip {:#x}",
            value - 0x40,
            r.state.eip
        )),
        o => Err(o.message()),
    }
}

fn qemu_binary() -> Option<&'static str> {
    let ok = std::process::Command::new("qemu-system-i386")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    ok.then_some("qemu-system-i386")
}

/// Run one guest image under QEMU's TCG: the serial output.
fn run_qemu(bin: &str, image: &[u8], name: &str) -> Result<String, String> {
    let path = std::env::temp_dir().join(format!(
        "vmm-nano-{}-{}.elf",
        std::process::id(),
        name.replace('/', "-")
    ));
    std::fs::write(&path, image).map_err(|e| e.to_string())?;
    let out = std::process::Command::new("timeout")
        .arg("300")
        .arg(bin)
        .args(["-accel", "tcg", "-m", "128", "-kernel"])
        .arg(&path)
        .args([
            "-nographic",
            "-no-reboot",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-serial",
            "stdio",
            "-display",
            "none",
            "-monitor",
            "none",
        ])
        .stdin(std::process::Stdio::null())
        .output();
    let _ = std::fs::remove_file(&path);
    let out = out.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // isa-debug-exit: status (value << 1) | 1; the guests write 0.
    if out.status.code() != Some(1) {
        return Err(format!(
            "qemu exited with {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(text)
}

// ---- native costs ----------------------------------------------------------------------------

/// Native cost of the nearest host equivalent (ns per operation), or why there is none.
fn native(op: Op, quick: bool) -> Cell {
    let reps = if quick { 3 } else { 9 };
    let f: fn(u64) -> f64 = match op {
        Op::Syscall => native_getpid,
        Op::CallRet => native_call_ret,
        Op::PushfPopf => native_pushf_popf,
        Op::PgFault => native_segv,
        Op::DivZero => native_fpe,
        Op::Hidden => native_minor_fault,
        Op::In => return Cell::None("n/a: IN at CPL 3 traps (IOPL 0, no ioperm)".into()),
        Op::Cr3 => return Cell::None("n/a: MOV CR3 is privileged".into()),
        Op::PteMod => return Cell::None("n/a: no user-level page tables".into()),
        Op::CliSti => return Cell::None("n/a: CLI/STI at CPL 3 trap (IOPL 0)".into()),
    };
    let n: u64 = match op {
        Op::CallRet | Op::PushfPopf => 1_000_000,
        Op::Hidden => 2000,
        _ => 20_000,
    } / if quick { 10 } else { 1 };
    let v: Vec<f64> = (0..reps).map(|_| f(n)).collect();
    Cell::Ns(super::median(v.clone()), v)
}

fn time_ns(n: u64, f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_nanos() as f64 / n as f64
}

fn native_getpid(n: u64) -> f64 {
    time_ns(n, || {
        for _ in 0..n {
            // SAFETY: getpid has no arguments and no effects.
            unsafe { libc::syscall(libc::SYS_getpid) };
        }
    })
}

fn empty_loop(n: u64) -> f64 {
    time_ns(n, || unsafe {
        // SAFETY: a register-only loop.
        core::arch::asm!("2:", "dec {n}", "jnz 2b", n = inout(reg) n => _, options(nomem, nostack));
    })
}

fn native_call_ret(n: u64) -> f64 {
    let t = time_ns(n, || unsafe {
        // SAFETY: calls a local `ret`; uses only the stack below RSP (no `nostack`).
        core::arch::asm!("2:", "call 3f", "dec {n}", "jnz 2b", "jmp 4f", "3:", "ret", "4:", n = inout(reg) n => _);
    });
    (t - empty_loop(n)).max(0.0)
}

fn native_pushf_popf(n: u64) -> f64 {
    let t = time_ns(n, || unsafe {
        // SAFETY: pushes and pops RFLAGS unchanged.
        core::arch::asm!("2:", "pushfq", "popfq", "dec {n}", "jnz 2b", n = inout(reg) n => _);
    });
    (t - empty_loop(n)).max(0.0)
}

/// SIGSEGV/SIGFPE handler for the native fault benchmarks: skip the 2-byte faulting instruction.
extern "C" fn skip2(_sig: libc::c_int, _info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid ucontext_t.
    unsafe {
        let uc = ctx as *mut libc::ucontext_t;
        (*uc).uc_mcontext.gregs[libc::REG_RIP as usize] += 2;
    }
}

/// Run `f` with `skip2` as the handler of `sig`, then restore the previous action.
fn with_skip_handler(sig: libc::c_int, f: impl FnOnce() -> f64) -> f64 {
    // SAFETY: a plain sigaction install and restore; the handler only edits the context.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = skip2 as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER;
        libc::sigemptyset(&mut sa.sa_mask);
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, &sa, &mut old);
        let r = f();
        libc::sigaction(sig, &old, std::ptr::null_mut());
        r
    }
}

fn native_fpe(n: u64) -> f64 {
    with_skip_handler(libc::SIGFPE, || {
        time_ns(n, || unsafe {
            // SAFETY: `div ecx` (F7 F1, 2 bytes) with ECX = 0 raises #DE; the handler skips it.
            core::arch::asm!("2:", "xor edx, edx", "div ecx", "dec {n}", "jnz 2b",
                n = inout(reg) n => _, in("ecx") 0u32, out("eax") _, out("edx") _);
        })
    })
}

fn native_segv(n: u64) -> f64 {
    // SAFETY: a fresh PROT_NONE page, unmapped at the end.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        let r = with_skip_handler(libc::SIGSEGV, || {
            time_ns(n, || {
                // `mov eax, [rdi]` (8B 07, 2 bytes) faults; the handler skips it.
                core::arch::asm!("2:", "mov eax, [rdi]", "dec {n}", "jnz 2b",
                    n = inout(reg) n => _, in("rdi") p, out("eax") _);
            })
        });
        libc::munmap(p, 4096);
        r
    }
}

fn native_minor_fault(n: u64) -> f64 {
    let len = n as usize * 4096;
    // SAFETY: a fresh anonymous mapping, each page written once, then unmapped.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        let b = p as *mut u8;
        let t = time_ns(n, || {
            for i in 0..n as usize {
                std::ptr::write_volatile(b.add(i * 4096), 1);
            }
        });
        libc::munmap(p, len);
        t
    }
}

// ---- the run ---------------------------------------------------------------------------------

struct Row {
    op: Op,
    n: u32,
    native: Cell,
    cols: Vec<(String, Cell)>,
}

pub fn run(o: &NanoOptions) -> Result<(), String> {
    for e in &o.engines {
        if !COLUMNS.contains(&e.as_str()) {
            return Err(format!(
                "unknown engine {e:?} (expected some of {})",
                COLUMNS.join(",")
            ));
        }
    }
    let ghz = tsc_ghz();
    // Native first: later, the direct engine's seccomp filter (which stays for the life of
    // the process) would tax every host system call.
    let mut rows: Vec<Row> = Op::ALL
        .iter()
        .map(|&op| Row {
            op,
            n: sizes(op, o.quick).0,
            native: native(op, o.quick),
            cols: Vec::new(),
        })
        .collect();
    let qemu = qemu_binary();
    let bt: Option<EngineKind> = "bt".parse().ok();
    let mut failures = 0;
    for col in COLUMNS.iter().filter(|c| o.engines.iter().any(|e| e == *c)) {
        for row in rows.iter_mut() {
            let (n, reps, warm) = sizes(row.op, o.quick);
            let image = nano_guest::image(row.op, n, reps, warm);
            let (out, ticks_per_ns) = match *col {
                "interp" => (run_vmm(&image, EngineKind::Interp, EngineKind::Interp), ghz),
                "direct" => (run_vmm(&image, EngineKind::Direct, EngineKind::Direct), ghz),
                "bt" => match bt {
                    Some(b) => (run_vmm(&image, b, EngineKind::Direct), ghz),
                    None => (Err("not built".to_string()), 1.0),
                },
                _ => match qemu {
                    Some(q) => (run_qemu(q, &image, row.op.name()), ghz),
                    None => (Err("not installed".to_string()), 1.0),
                },
            };
            let cell = match out {
                Ok(text) => match nano_guest::parse(&text) {
                    Some(pairs) => per_op(&pairs, n, ticks_per_ns),
                    None => Cell::None(format!("no result line in the serial output: {text:?}")),
                },
                Err(e) => Cell::None(e),
            };
            if let Cell::None(why) = &cell {
                if why != "not built" && why != "not installed" {
                    eprintln!("vmm bench nano: {} under {col}: {why}", row.op.name());
                    failures += 1;
                }
            }
            row.cols.push((col.to_string(), cell));
        }
    }
    if o.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&to_json(&rows, ghz)).unwrap()
        );
    } else {
        print!("{}", table(&rows, ghz));
    }
    if let Some(path) = &o.svg {
        std::fs::write(path, svg(&rows))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if failures > 0 {
        return Err(format!(
            "{failures} benchmark run(s) failed (above); their cells say \"failed\""
        ));
    }
    Ok(())
}

fn fmt_ns(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn fmt_ratio(r: f64) -> String {
    if r >= 10.0 {
        format!("x{r:.0}")
    } else if r >= 1.0 {
        format!("x{r:.1}")
    } else {
        format!("x{r:.2}")
    }
}

fn table(rows: &[Row], ghz: f64) -> String {
    let mut s = String::new();
    let cols: Vec<String> = rows
        .first()
        .map(|r| r.cols.iter().map(|c| c.0.clone()).collect())
        .unwrap_or_default();
    s += &format!(
        "nanobenchmarks: ns per operation (median); (xN) = ratio to native in this run. Host TSC {ghz:.3} GHz.\n"
    );
    s += &format!("{:<11} {:>9}", "benchmark", "native");
    for c in &cols {
        s += &format!(" {:>20}", if c == "qemu" { "qemu-tcg" } else { c.as_str() });
    }
    s += "\n";
    for r in rows {
        s += &format!(
            "{:<11} {:>9}",
            r.op.name(),
            r.native.ns().map(fmt_ns).unwrap_or_else(|| "n/a".into())
        );
        for (_, c) in &r.cols {
            let t = match (c.ns(), r.native.ns()) {
                (Some(v), Some(nat)) if nat > 0.0 => {
                    format!("{} ({})", fmt_ns(v), fmt_ratio(v / nat))
                }
                (Some(v), _) => fmt_ns(v),
                (None, _) => match c {
                    Cell::None(w) if w == "not built" || w == "not installed" => w.clone(),
                    _ => "failed".into(),
                },
            };
            s += &format!(" {t:>20}");
        }
        s += "\n";
    }
    s += "\nwhat each one times:\n";
    for r in rows {
        s += &format!("  {:<11} {} (n = {})\n", r.op.name(), r.op.what(), r.n);
        if let Cell::None(w) = &r.native {
            s += &format!("  {:<11}   native: {w}\n", "");
        }
    }
    s += "native: getpid (syscall), call/ret, pushfq/popfq, SIGSEGV on a PROT_NONE page caught and skipped (pgfault),\n\
          a minor fault on a fresh anonymous page (hidden), SIGFPE caught and skipped (divzero).\n\
          Units: every engine's guest TSC (and QEMU TCG's) is the host TSC, converted with the rate above.\n";
    s
}

fn to_json(rows: &[Row], ghz: f64) -> Value {
    let cell = |c: &Cell| match c {
        Cell::Ns(v, reps) => json!({"ns": v, "reps_ns": reps}),
        Cell::None(w) => json!({"ns": null, "why": w}),
    };
    json!({
        "units": "nanoseconds per operation (median of repetitions)",
        "host_tsc_ghz": ghz,
        "benchmarks": rows.iter().map(|r| {
            let mut engines = serde_json::Map::new();
            for (name, c) in &r.cols {
                let mut v = cell(c);
                if let (Some(x), Some(nat)) = (c.ns(), r.native.ns()) {
                    if nat > 0.0 {
                        v["ratio_to_native"] = json!(x / nat);
                    }
                }
                engines.insert(name.clone(), v);
            }
            json!({
                "name": r.op.name(),
                "what": r.op.what(),
                "iterations": r.n,
                "native": cell(&r.native),
                "engines": engines,
            })
        }).collect::<Vec<_>>(),
    })
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A horizontal bar chart, log scale, one group of bars per benchmark.
fn svg(rows: &[Row]) -> String {
    let palette = [
        "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1",
    ];
    let mut series: Vec<String> = vec!["native".into()];
    if let Some(r) = rows.first() {
        series.extend(r.cols.iter().map(|c| c.0.clone()));
    }
    let values = |r: &Row| -> Vec<Option<f64>> {
        std::iter::once(r.native.ns())
            .chain(r.cols.iter().map(|c| c.1.ns()))
            .collect()
    };
    let all: Vec<f64> = rows
        .iter()
        .flat_map(values)
        .flatten()
        .filter(|v| *v > 0.0)
        .collect();
    let lo = all.iter().cloned().fold(f64::INFINITY, f64::min).max(1e-3);
    let hi = all.iter().cloned().fold(0.0, f64::max).max(lo * 10.0);
    let (d0, d1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    let (left, top, width, bar, gap) = (110.0, 60.0, 620.0, 13.0, 12.0);
    let group = bar * series.len() as f64 + gap;
    let height = top + group * rows.len() as f64 + 40.0;
    let x = |v: f64| left + (v.log10() - d0 as f64) / (d1 - d0) as f64 * width;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"18\" font-size=\"14\" font-weight=\"bold\">vmm bench nano: nanoseconds per operation (log scale)</text>\n",
        w = left + width + 140.0
    );
    for d in d0..=d1 {
        let xx = x(10f64.powi(d));
        s += &format!(
            "<line x1=\"{xx:.1}\" y1=\"{:.1}\" x2=\"{xx:.1}\" y2=\"{:.1}\" stroke=\"#ccc\"/>\n<text x=\"{xx:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#555\">{}</text>\n",
            top - 8.0,
            height - 30.0,
            height - 16.0,
            match d {
                d if d >= 0 => format!("{}", 10u64.pow(d as u32)),
                d => format!("{}", 10f64.powi(d)),
            }
        );
    }
    for (i, name) in series.iter().enumerate() {
        let lx = left + 10.0 + 110.0 * i as f64;
        s += &format!(
            "<rect x=\"{lx}\" y=\"30\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"39\">{}</text>\n",
            palette[i % palette.len()],
            lx + 14.0,
            xml_escape(if name == "qemu" { "qemu-tcg" } else { name })
        );
    }
    for (gi, r) in rows.iter().enumerate() {
        let gy = top + group * gi as f64;
        s += &format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" font-weight=\"bold\">{}</text>\n",
            left - 8.0,
            gy + bar * series.len() as f64 / 2.0 + 4.0,
            xml_escape(r.op.name())
        );
        for (i, v) in values(r).iter().enumerate() {
            let y = gy + bar * i as f64;
            match v {
                Some(v) if *v > 0.0 => {
                    let w = (x(*v) - left).max(1.0);
                    s += &format!(
                        "<rect x=\"{left}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\">{}</text>\n",
                        bar - 2.0,
                        palette[i % palette.len()],
                        left + w + 3.0,
                        y + bar - 4.0,
                        fmt_ns(*v)
                    );
                }
                _ => {
                    let why = if i == 0 {
                        "n/a".to_string()
                    } else {
                        match &r.cols[i - 1].1 {
                            Cell::None(w) if w == "not built" || w == "not installed" => w.clone(),
                            _ => "failed".to_string(),
                        }
                    };
                    let name = if series[i] == "qemu" {
                        "qemu-tcg"
                    } else {
                        series[i].as_str()
                    };
                    s += &format!(
                        "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"#888\">{}: {}</text>\n",
                        left + 3.0,
                        y + bar - 4.0,
                        xml_escape(name),
                        xml_escape(&why)
                    );
                }
            }
        }
    }
    s += "</svg>\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_pairs() {
        let p = nano_guest::parse("boot\nNANO 0000000000000010 0000000000000110\n").unwrap();
        assert_eq!(p, vec![(0x10, 0x110)]);
        assert!(nano_guest::parse("NANO 1").is_none());
        assert!(nano_guest::parse("nothing").is_none());
        let q = nano_guest::parse(
            "\x1bcSeaBIOS\r\nBooting from ROM..NANO 0000000000000001 0000000000000003\n",
        )
        .unwrap();
        assert_eq!(q, vec![(1, 3)]);
        match per_op(&p, 16, 1.0) {
            Cell::Ns(v, _) => assert_eq!(v, 16.0),
            _ => panic!(),
        }
    }

    #[test]
    fn every_guest_assembles() {
        for op in Op::ALL {
            let img = nano_guest::image(op, 10, 2, 1);
            assert_eq!(&img[..4], b"\x7fELF");
        }
    }
}
