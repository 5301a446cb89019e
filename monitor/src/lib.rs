//! The `vmm` runtime.
//!
//! `unsafe` code lives only in the modules named here, each block with a `// SAFETY:` comment:
//!
//! * [`native`]: the hardware oracle. Runs a user-level 32-bit snippet on the host CPU in
//!   compatibility mode inside this process and reports the final state or the exception.
//!   `native::tsc`: RDTSC for the monitor, and the host TSC's rate.
//! * [`space`]: the address space of the direct engine: the reservation of the low 4 GiB, guest
//!   RAM as a memfd (physmap), the shadow mappings (mmap of memfd pages).
//! * [`direct`] (`direct::entry`: entry/exit stubs, signal handlers, timer, seccomp, CPUID
//!   faulting; `direct::ldt`: `modify_ldt`): the trap-and-emulate engine.
//! * [`bt`] (`bt::area`: the monitor area's mmap/memfd; `bt::gate`: the 64-bit callout gate;
//!   `bt`: the signal handler's TC fields): the binary-translation engine, on the direct
//!   engine's runtime.
//! * [`seccomp`]: the allow-list filter the `direct` engine runs under once set up.
//!
//! Everything else is safe Rust:
//!
//! * [`memory`]: guest RAM; [`devices`]: the PC device models; [`machine`]: RAM and devices
//!   as the CPU's bus; [`loader`]: boot loaders (Linux, Multiboot 1); [`console`]: the serial
//!   console as the terminal (raw mode, input, Ctrl-A x, watching for power-down); [`engine`]: choosing and
//!   running an execution engine (the `interp` run loop).

pub mod bt;
pub mod console;
pub mod devices;
pub mod direct;
pub mod engine;
pub mod loader;
pub mod machine;
pub mod memory;
pub mod native;
pub mod seccomp;
pub mod space;
