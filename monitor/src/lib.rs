//! The `vmm` runtime.
//!
//! `unsafe` code lives only in the modules named here, each block with a `// SAFETY:` comment:
//!
//! * [`native`]: the hardware oracle. Runs a user-level 32-bit snippet on the host CPU in
//!   compatibility mode inside this process and reports the final state or the exception.

pub mod native;
