//! The scanner and translator of guest kernel code (ARCHITECTURE.md section 5).
//!
//! Pure code: no OS calls, no `unsafe`. The translator is built in the binary-translator
//! issue; this crate exists now so that the workspace has its final shape.
#![forbid(unsafe_code)]
