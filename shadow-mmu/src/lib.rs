//! Shadow MMU logic (ARCHITECTURE.md section 7): the guest page-table walker, the shadow
//! mapping state and the descriptor shadowing rules, behind a small map/unmap/protect trait.
//!
//! Pure code: no OS calls, no `unsafe`. Built in the monitor issue.
#![forbid(unsafe_code)]
