//! Adaptive-translation hints: guest instructions the runtime saw fault again and again in
//! translated code (a store into a write-protected code frame, an access into the monitor area,
//! page 0 or MMIO), which the translator therefore emits as `Emulate` callouts (callout kind
//! [`CalloutKind::Adaptive`](crate::classify::CalloutKind::Adaptive)) instead of copying them:
//! a callout costs a gate round trip, a fault a host signal (docs/bt.md, "Adaptive
//! retranslation").
//!
//! A hint names an instruction by guest *linear* address (CS base + EIP) and the [`Mode`] it is
//! translated under, so the same bytes reached through another code segment or in another mode
//! are translated independently. Only instructions the translator would otherwise copy (IDENT)
//! follow a hint: branches, lookups and inline sequences keep their rules. A hint never changes
//! what the guest sees (the interpreter executes the instruction exactly), only how fast it
//! runs. The policy (when to hint, how many) is the runtime's.

use std::collections::HashSet;

use crate::Mode;

/// The set of hinted instructions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hints {
    set: HashSet<(u32, Mode)>,
}

impl Hints {
    /// An empty set.
    pub fn new() -> Hints {
        Hints::default()
    }

    /// Hints the instruction at linear address `lin` in `mode`; false if it already was.
    pub fn insert(&mut self, lin: u32, mode: Mode) -> bool {
        self.set.insert((lin, mode))
    }

    /// Whether the instruction at linear address `lin` in `mode` is to be a callout.
    pub fn contains(&self, lin: u32, mode: Mode) -> bool {
        !self.set.is_empty() && self.set.contains(&(lin, mode))
    }

    /// Drops the hint of the instruction at `lin` in `mode`; false if there was none.
    pub fn remove(&mut self, lin: u32, mode: Mode) -> bool {
        self.set.remove(&(lin, mode))
    }

    /// Number of hinted instructions.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// No hints.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// Forgets every hint (fragments already translated with callouts keep them).
    pub fn clear(&mut self) {
        self.set.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_by_linear_address_and_mode() {
        let mut h = Hints::new();
        assert!(!h.contains(0x1000, Mode::kernel32()));
        assert!(h.insert(0x1000, Mode::kernel32()));
        assert!(!h.insert(0x1000, Mode::kernel32()));
        assert!(h.contains(0x1000, Mode::kernel32()));
        assert!(!h.contains(0x1001, Mode::kernel32()));
        let user = Mode {
            cpl: 3,
            ..Mode::kernel32()
        };
        assert!(!h.contains(0x1000, user));
        assert_eq!(h.len(), 1);
        assert!(h.remove(0x1000, Mode::kernel32()) && !h.contains(0x1000, Mode::kernel32()));
        assert!(!h.remove(0x1000, Mode::kernel32()));
        h.insert(0x1000, Mode::kernel32());
        h.clear();
        assert!(h.is_empty() && !h.contains(0x1000, Mode::kernel32()));
    }
}
