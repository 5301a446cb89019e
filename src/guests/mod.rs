//! Guests built into the `vmm` binary, assembled in Rust with iced-x86 `code_asm`.

pub mod demo;
