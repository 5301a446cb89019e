//! `vmm`: a binary-translation virtual machine monitor for 32-bit x86 guests, running inside an
//! ordinary Linux x86-64 process with no hardware virtualization.
//!
//! This binary is thin (after Firecracker): the command line, machine assembly and the study
//! and benchmark commands. The work is done by the crates `vmm-interp` (the x86 interpreter),
//! `vmm-monitor` (the runtime: devices, machine, loaders, engines), `vmm-scanner` (the
//! translator) and `vmm-shadow-mmu`.

mod bench;
mod guests;
mod study;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use vmm_monitor::console;
use vmm_monitor::devices::HostClock;
use vmm_monitor::engine::{self, exit_code, EngineKind, Outcome, RunOptions};
use vmm_monitor::loader::{linux, multiboot};
use vmm_monitor::machine::Machine;
use vmm_monitor::memory::GuestRam;

#[derive(Parser)]
#[command(
    name = "vmm",
    version,
    about = "Run 32-bit x86 guests inside this process by binary translation, trap-and-emulate or interpretation",
    long_about = "vmm runs unmodified 32-bit x86 guests inside an ordinary Linux x86-64 process, \
with no VT-x, AMD-V or KVM. Guest kernel code is translated before it runs; guest user code runs \
directly; an interpreter of the whole architecture is the oracle both are checked against.\n\n\
With no command, vmm runs its built-in demo guest."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a Linux bzImage or a Multiboot 1 ELF kernel on a virtual PC (serial console on the terminal).
    #[command(
        args_override_self = true,
        after_help = "Exit status: the guest's debug-exit status (port 0xf4: (value << 1) | 1, always odd); \
2 for a bad command line or kernel image, 4 for a triple fault, 6 for an instruction the engine \
does not support, 8 for --timeout, 10 for a HLT nothing can wake, 14 for a guest kernel panic; \
0 when the guest powers off or resets (Linux's poweroff and reboot) or on Ctrl-A x.\n\n\
The terminal is the serial console (COM1): raw mode while the guest runs; Ctrl-A x quits, \
Ctrl-A Ctrl-A sends Ctrl-A.\n\n\
Linux: vmm run --kernel bzImage --initrd initrd.gz --append \"console=ttyS0\" --mem 256M"
    )]
    Run(RunArgs),
    /// Run the built-in demo guest (what `vmm` with no command does).
    Demo(DemoArgs),
    /// Measure the engines; reports ratios against a baseline measured in the same run.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
    /// The Popek-Goldberg laboratory: every sensitive or privileged instruction at guest CPL 0
    /// and 3 under each engine and natively at host CPL 3, against what a real CPU shows.
    Study(study::StudyArgs),
}

/// The engines of the built-in demo guest.
#[derive(clap::Args, Clone, Debug)]
struct DemoArgs {
    /// The engine for the demo's kernel (CPL 0).
    #[arg(long, value_enum, default_value_t = EngineArg::Bt)]
    kernel_engine: EngineArg,
    /// The engine for the demo's user task (CPL 3).
    #[arg(long, value_enum, default_value_t = EngineArg::Direct)]
    user_engine: EngineArg,
    /// Print exits by reason, instructions and time on stderr at the end.
    #[arg(long)]
    stats: bool,
}

impl Default for DemoArgs {
    fn default() -> Self {
        DemoArgs { kernel_engine: EngineArg::Bt, user_engine: EngineArg::Direct, stats: false }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum EngineArg {
    /// Trap-and-emulate: guest code runs natively at host CPL 3.
    Direct,
    /// The interpreter.
    Interp,
    /// Binary translation (guest code runs as translations in the translation cache).
    Bt,
}

impl From<EngineArg> for EngineKind {
    fn from(e: EngineArg) -> EngineKind {
        match e {
            EngineArg::Direct => EngineKind::Direct,
            EngineArg::Interp => EngineKind::Interp,
            EngineArg::Bt => EngineKind::Bt,
        }
    }
}

#[derive(Args)]
struct RunArgs {
    /// The kernel: a Linux bzImage, or an ELF32 i386 file with a Multiboot 1 header (the
    /// format is detected).
    #[arg(required_unless_present = "kernel_opt", conflicts_with = "kernel_opt")]
    kernel: Option<PathBuf>,
    /// The kernel, as QEMU names the option (instead of the positional argument).
    #[arg(long = "kernel", id = "kernel_opt", value_name = "KERNEL")]
    kernel_opt: Option<PathBuf>,
    /// An initrd (initramfs) for a Linux kernel.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Linux: decompress the bzImage's kernel on the host and start it at vmlinux's
    /// startup_32, skipping the guest-side decompressor (minutes under the interpreter).
    #[arg(long)]
    unpack_kernel: bool,
    /// Guest RAM: bytes, or a number with K, M or G (4M to 3G).
    #[arg(long, default_value = "128M", value_parser = parse_mem)]
    mem: u64,
    /// The kernel command line (Linux: the zero page's cmd_line_ptr; Multiboot: the MBI).
    #[arg(long, visible_alias = "append", default_value = "")]
    cmdline: String,
    /// The engine for guest kernel code (CPL 0).
    #[arg(long, value_enum, default_value_t = EngineArg::Bt)]
    kernel_engine: EngineArg,
    /// The engine for guest user code (CPL 3).
    #[arg(long, value_enum, default_value_t = EngineArg::Direct)]
    user_engine: EngineArg,
    /// With `--user-engine direct` and `--kernel-engine bt`: do not run hot user code (pages
    /// that keep making system calls) from the translation cache; every guest system call is
    /// then a host signal (pure trap-and-emulate for user code).
    #[arg(long)]
    no_adaptive_user: bool,
    /// Print exits by reason, instructions and time on stderr at the end.
    #[arg(long)]
    stats: bool,
    /// Print the final CPU state on stderr at the end (however the run ended).
    #[arg(long)]
    final_state: bool,
    /// Trace the monitor on stderr (-v: debug, -vv: trace).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Stop the guest after this many seconds.
    #[arg(long, value_parser = parse_timeout)]
    timeout: Option<Duration>,
    /// Base of the monitor area at the top of the guest-linear space (direct and bt engines):
    /// 4 MiB aligned, 0x10000000 to 0xffc00000. Every guest segment is truncated below it; the
    /// translation cache fills it. A Linux kernel is told to keep out of it (`reservetop=`
    /// is added to its command line unless given).
    #[arg(long, default_value = "0xff000000", value_parser = parse_monitor_area)]
    monitor_area: u32,
}

#[derive(Subcommand)]
enum BenchWhat {
    /// The direct engine's exits (trap-and-emulate, hidden page fault, system call) against
    /// the interpreter, on small guests, in one run.
    Direct {
        /// Multiply the work.
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
    },
    /// Interpreted instructions per second on a CPU-bound guest loop, against the same loop
    /// run natively on the host CPU.
    Interp {
        /// Multiply the work (1.0 = about 50 million guest instructions).
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The translator's goals: guest kernel loops of CLI/STI, PUSHF/POPF, CALL/RET, an indirect
    /// JMP and port I/O to a null port under bt, direct and interp, against the same loop run
    /// natively (the sensitive instruction replaced by a NOP of the same kind), with a verdict
    /// per goal (bt within 3x native for CLI/STI and PUSHF/POPF, 5x for CALL/RET; bt 20x faster
    /// than direct wherever direct traps).
    #[command(after_help = "Each figure is (t(N) - t(0)) / N over whole runs, t the process's CPU time \
(user + system: the host's signal delivery for an exit counts, waiting for a CPU does not), the \
median of --reps pairs of runs; the load average before and after is printed with the table (a \
loaded machine still slows everything down through caches and SMT; the ratios drift less). The \
native column runs in a child process (vmm bench bt --native-only). docs/bt.md has a run and \
what it says.\n\nA quick look: vmm bench bt --scale 0.1 --reps 3")]
    Bt {
        /// Multiply every iteration count (1.0: about 25 s of CPU time).
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Pairs of runs per figure; the median is reported.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=99))]
        reps: u32,
        /// Print the native column as JSON and exit (what the report runs in its child process).
        #[arg(long, hide = true)]
        native_only: bool,
    },
    /// Nanobenchmarks after Adams and Agesen (ASPLOS 2006): syscall, in, cr3 write, call/ret,
    /// page fault, hidden fault, divide by zero, PTE write + INVLPG, sti/cli, pushf/popf, timed
    /// with RDTSC inside Multiboot guests under each engine (and QEMU's TCG when installed),
    /// against the host's native cost of the same operation, in one run.
    Nano {
        /// Fewer iterations and repetitions (a smoke test).
        #[arg(long)]
        quick: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = NanoFormat::Table)]
        format: NanoFormat,
        /// Also write a bar chart (SVG) to this file.
        #[arg(long)]
        svg: Option<PathBuf>,
        /// The columns to run, comma-separated: interp, direct, bt, qemu.
        #[arg(long, value_delimiter = ',', default_value = "interp,direct,bt,qemu")]
        engines: Vec<String>,
    },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum NanoFormat {
    Table,
    Json,
}

const MIN_MEM: u64 = 4 << 20;
const MAX_MEM: u64 = 3 << 30;

/// "64M", "1G", "4096K", "16777216": bytes of guest RAM, 4 MiB to 3 GiB, a multiple of 4 KiB.
fn parse_mem(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, mult) = match t.char_indices().last() {
        Some((i, c)) if c.eq_ignore_ascii_case(&'k') => (&t[..i], 1u64 << 10),
        Some((i, c)) if c.eq_ignore_ascii_case(&'m') => (&t[..i], 1 << 20),
        Some((i, c)) if c.eq_ignore_ascii_case(&'g') => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size (examples: 64M, 1G, 4194304)"))?;
    let bytes = n
        .checked_mul(mult)
        .ok_or_else(|| format!("{s} is too large"))?;
    if bytes < MIN_MEM {
        return Err(format!(
            "{s} is too small: guest memory must be at least 4M"
        ));
    }
    if bytes > MAX_MEM {
        return Err(format!(
            "{s} is too large: guest memory can be at most 3G (the top of the 32-bit space is for devices and the monitor)"
        ));
    }
    if bytes % 4096 != 0 {
        return Err(format!("{s} is not a multiple of 4K"));
    }
    Ok(bytes)
}

fn parse_monitor_area(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let v = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(&h.replace('_', ""), 16),
        None => t.replace('_', "").parse(),
    }
    .map_err(|_| format!("{s:?} is not an address (example: 0xff000000)"))?;
    vmm_monitor::space::check_monitor_base(v).map_err(|e| e.to_string())
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(secs > 0.0 && secs <= 1e6) {
        return Err(format!(
            "{s} seconds is not a usable timeout (0 < t <= 1000000)"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Run(args)) => run_kernel(args),
        Some(Command::Bench { what: BenchWhat::Direct { scale } }) => {
            let r = if !(scale > 0.0 && scale <= 100.0) {
                Err(format!("--scale must be in (0, 100], got {scale}"))
            } else {
                bench::direct::run(scale)
            };
            match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("vmm: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::Bench {
            what: BenchWhat::Interp { scale, json },
        }) => {
            let r = if !(scale > 0.0 && scale <= 100.0) {
                Err(format!("--scale must be in (0, 100], got {scale}"))
            } else {
                bench::interp::run(scale, json)
            };
            match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("vmm: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::Bench { what: BenchWhat::Bt { scale, reps, native_only } }) => {
            let o = bench::bt::BtOptions { scale, reps: reps as usize };
            let r = if !(scale > 0.0 && scale <= 100.0) {
                Err(format!("--scale must be in (0, 100], got {scale}"))
            } else if native_only {
                bench::bt::native_only(&o)
            } else {
                bench::bt::run(&o)
            };
            match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("vmm: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::Bench {
            what: BenchWhat::Nano { quick, format, svg, engines },
        }) => {
            let o = bench::nano::NanoOptions { quick, json: format == NanoFormat::Json, svg, engines };
            match bench::nano::run(&o) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("vmm: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::Demo(args)) => run_demo(args),
        Some(Command::Study(args)) => match study::run(&args) {
            Ok(out) => {
                println!("{out}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("vmm: {e}");
                ExitCode::FAILURE
            }
        },
        None => run_demo(DemoArgs::default()),
    }
}

fn init_tracing(verbose: u8) {
    if verbose == 0 {
        return;
    }
    let level = if verbose == 1 { "debug" } else { "trace" };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new(level))
        .try_init();
}

/// `vmm run`.
fn run_kernel(args: RunArgs) -> ExitCode {
    init_tracing(args.verbose);
    let fail = |msg: String| {
        eprintln!("vmm: {msg}");
        ExitCode::from(exit_code::ERROR)
    };
    let Some(kernel_path) = args.kernel.as_ref().or(args.kernel_opt.as_ref()) else {
        return fail("no kernel given".into());
    };
    let image = match std::fs::read(kernel_path) {
        Ok(b) => b,
        Err(e) => return fail(format!("cannot read {}: {e}", kernel_path.display())),
    };
    // The size was range-checked by the parser: at most 3 GiB fits in usize on x86-64.
    let Ok(mem) = usize::try_from(args.mem) else {
        return fail(format!("--mem {} does not fit this host", args.mem));
    };
    let direct = args.kernel_engine != EngineArg::Interp || args.user_engine != EngineArg::Interp;
    let mut ram = if direct {
        match GuestRam::memfd(mem) {
            Ok(r) => r,
            Err(e) => return fail(format!("cannot allocate {mem:#x} bytes of guest RAM: {e}")),
        }
    } else {
        GuestRam::heap(mem)
    };
    let state = if linux::is_bzimage(&image) {
        let initrd = match &args.initrd {
            None => None,
            Some(p) => match std::fs::read(p) {
                Ok(b) => Some(b),
                Err(e) => return fail(format!("cannot read the initrd {}: {e}", p.display())),
            },
        };
        let cmdline = linux::reserve_top(&args.cmdline, args.monitor_area);
        match linux::load_with(&mut ram, &image, initrd.as_deref(), &cmdline, args.unpack_kernel) {
            Ok(k) => {
                tracing::debug!(protocol = k.protocol, version = ?k.version, kernel = ?k.kernel, initrd = ?k.initrd, "Linux kernel loaded");
                k.state
            }
            Err(e) => return fail(format!("cannot load {}: {e}", kernel_path.display())),
        }
    } else {
        if args.initrd.is_some() {
            return fail(format!(
                "--initrd is for Linux kernels, and {} is not a bzImage",
                kernel_path.display()
            ));
        }
        match multiboot::load(&mut ram, &image, &args.cmdline) {
            Ok(k) => {
                tracing::debug!(entry = k.entry, mbi = k.mbi_addr, segments = ?k.segments, "kernel loaded");
                k.state
            }
            Err(e) => return fail(format!("cannot load {}: {e}", kernel_path.display())),
        }
    };
    let mut machine = Machine::new(ram, Box::new(HostClock::new()), Box::new(std::io::stdout()));
    // The terminal is the serial console: raw while the guest runs (restored on every way
    // out, panics included), typed bytes go to COM1, Ctrl-A x quits.
    let terminal = console::RawTerminal::enter();
    machine.set_input(Box::new(console::StdinInput::new(terminal.is_raw())));
    let opts = RunOptions {
        kernel_engine: args.kernel_engine.into(),
        user_engine: args.user_engine.into(),
        timeout: args.timeout,
        monitor_base: args.monitor_area,
        lockdown: true,
        detailed_stats: args.stats,
        adaptive_user: !args.no_adaptive_user,
        ..RunOptions::default()
    };
    let result = engine::run(machine, state, &opts);
    drop(terminal);
    let result = match result {
        Ok(r) => r,
        Err(e) => return fail(e.to_string()),
    };
    if args.final_state && !result.outcome.wants_report() {
        eprintln!(
            "vmm: final CPU state:\n{}",
            engine::cpu_report(&result.state)
        );
    }
    finish(&result, args.stats, args.verbose > 0)
}

/// Report how a run ended and turn it into the process exit code.
fn finish(result: &engine::RunResult, stats: bool, verbose: bool) -> ExitCode {
    let outcome = &result.outcome;
    if outcome.wants_report() {
        eprintln!("vmm: {}", outcome.message());
        eprintln!("vmm: CPU state:\n{}", engine::cpu_report(&result.state));
    } else if verbose || matches!(outcome, Outcome::Stopped(_)) {
        // A platform ending (power-off, reset, panic, Ctrl-A x) is worth one line: the
        // console may not say it.
        eprintln!("vmm: {}", outcome.message());
    }
    if stats {
        eprint!("{}", result.stats.render());
    }
    ExitCode::from(outcome.exit_code())
}

/// `vmm` with no arguments: the built-in demo guest under the interpreter.
fn run_demo(args: DemoArgs) -> ExitCode {
    let image = match guests::demo::image() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("vmm: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut ram = GuestRam::heap(guests::demo::RAM_BYTES);
    for (addr, bytes) in &image.chunks {
        if let Err(e) = ram.write(*addr as u64, bytes) {
            eprintln!("vmm: demo guest: {e}");
            return ExitCode::FAILURE;
        }
    }
    let machine = Machine::new(ram, Box::new(HostClock::new()), Box::new(std::io::stdout()));
    let opts = RunOptions {
        timeout: Some(Duration::from_secs(60)),
        kernel_engine: args.kernel_engine.into(),
        user_engine: args.user_engine.into(),
        ..RunOptions::default()
    };
    let result = match engine::run(machine, image.state, &opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vmm: {e}");
            return ExitCode::FAILURE;
        }
    };
    match result.outcome {
        Outcome::DebugExit { value } if value == guests::demo::SUCCESS => {
            if args.stats {
                finish(&result, true, false);
            }
            println!(
                "vmm: the demo guest powered off after {} timer interrupts (engines: {})",
                result.machine.stats.interrupts, result.stats.engine
            );
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("vmm: the demo guest did not end as planned");
            finish(&result, false, true);
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_sizes() {
        assert_eq!(parse_mem("64M"), Ok(64 << 20));
        assert_eq!(parse_mem("1G"), Ok(1 << 30));
        assert_eq!(parse_mem("3g"), Ok(3 << 30));
        assert_eq!(parse_mem("4096K"), Ok(4 << 20));
        assert_eq!(parse_mem("4194304"), Ok(4 << 20));
        assert!(parse_mem("2M").unwrap_err().contains("at least 4M"));
        assert!(parse_mem("4G").unwrap_err().contains("at most 3G"));
        assert!(parse_mem("99999999999999999999G").is_err());
        assert!(parse_mem("lots").is_err());
        assert!(parse_mem("").is_err());
        assert!(parse_mem("4194305").unwrap_err().contains("multiple"));
    }

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_timeout("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_timeout("0").is_err());
        assert!(parse_timeout("-1").is_err());
        assert!(parse_timeout("NaN").is_err());
    }
}
