//! `vmm`: a binary-translation virtual machine monitor for 32-bit x86 guests, running inside an
//! ordinary Linux x86-64 process with no hardware virtualization.
//!
//! This binary is thin (after Firecracker): the command line, machine assembly and the study
//! and benchmark commands. The work is done by the crates `vmm-interp` (the x86 interpreter),
//! `vmm-monitor` (the runtime), `vmm-scanner` (the translator) and `vmm-shadow-mmu`.

mod bench;
mod guests;
mod machine;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "vmm",
    version,
    about = "Run 32-bit x86 guests inside this process by binary translation, trap-and-emulate or interpretation",
    long_about = "vmm runs unmodified 32-bit x86 guests inside an ordinary Linux x86-64 process, \
with no VT-x, AMD-V or KVM. Guest kernel code is translated before it runs; guest user code runs \
directly; an interpreter of the whole architecture is the oracle both are checked against."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Measure the engines; reports ratios against a baseline measured in the same run.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
}

#[derive(Subcommand)]
enum BenchWhat {
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Bench { what: BenchWhat::Interp { scale, json } }) => {
            if !(scale > 0.0 && scale <= 100.0) {
                Err(format!("--scale must be in (0, 100], got {scale}"))
            } else {
                bench::interp::run(scale, json)
            }
        }
        None => run_demo(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmm: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `vmm` with no arguments: the built-in demo guest under the interpreter.
fn run_demo() -> Result<(), String> {
    use vmm_interp::{Cpu, Exit};
    let image = guests::demo::image()?;
    let mut m = machine::Machine::new(guests::demo::RAM_BYTES, true);
    for (addr, bytes) in &image.chunks {
        m.ram[*addr as usize..*addr as usize + bytes.len()].copy_from_slice(bytes);
    }
    let mut cpu = Cpu::with_state(image.state, m);
    loop {
        match cpu.run(10_000_000) {
            Exit::Budget => continue,
            Exit::PortIo { port: machine::DEBUG_EXIT, value, .. } => {
                if value as u8 == guests::demo::SUCCESS {
                    println!("vmm: the demo guest powered off after {} instructions (interp engine)", cpu.icount);
                    return Ok(());
                }
                return Err(format!("the demo guest exited with debug-exit value {value:#x}"));
            }
            Exit::PortIo { .. } => continue,
            other => return Err(format!("the demo guest stopped: {other}")),
        }
    }
}
