//! The `vmm` runtime.
//!
//! `unsafe` code lives only in the modules named here, each block with a `// SAFETY:` comment:
//!
//! * [`native`]: the hardware oracle. Runs a user-level 32-bit snippet on the host CPU in
//!   compatibility mode inside this process and reports the final state or the exception.
//!
//! Everything else is safe Rust:
//!
//! * [`memory`]: guest RAM; [`devices`]: the PC device models; [`machine`]: RAM and devices
//!   as the CPU's bus; [`loader`]: boot loaders (Linux, Multiboot 1); [`console`]: the serial
//!   console as the terminal (raw mode, input, Ctrl-A x, watching for power-down); [`engine`]: choosing and
//!   running an execution engine (the `interp` run loop).

pub mod console;
pub mod devices;
pub mod engine;
pub mod loader;
pub mod machine;
pub mod memory;
pub mod native;
