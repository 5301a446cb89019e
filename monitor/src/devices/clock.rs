//! Where device time comes from.
//!
//! Devices never read the host clock themselves: the [`Machine`](crate::machine::Machine)
//! reads a [`Clock`] and passes "now" (nanoseconds since an arbitrary origin) to them. In
//! production it is the host's monotonic clock ([`HostClock`]); unit tests use a
//! [`ManualClock`] they advance by hand, so device behaviour is deterministic.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A monotonic clock in nanoseconds.
pub trait Clock: Send {
    /// Nanoseconds since this clock's origin. Never decreases.
    fn now_ns(&self) -> u64;

    /// Wait until `now_ns() >= deadline_ns` (the engines' "HLT sleeps until the next event").
    /// A host clock sleeps; a manual clock jumps there.
    fn sleep_until(&self, deadline_ns: u64);
}

/// The host's monotonic clock (`CLOCK_MONOTONIC` through [`Instant`]), from its creation.
#[derive(Clone, Debug)]
pub struct HostClock {
    origin: Instant,
}

impl HostClock {
    pub fn new() -> HostClock {
        HostClock { origin: Instant::now() }
    }
}

impl Default for HostClock {
    fn default() -> Self {
        HostClock::new()
    }
}

impl Clock for HostClock {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn sleep_until(&self, deadline_ns: u64) {
        let now = self.now_ns();
        if deadline_ns > now {
            std::thread::sleep(Duration::from_nanos(deadline_ns - now));
        }
    }
}

/// A clock that moves only when told to. Clones share the same time.
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    ns: Arc<AtomicU64>,
}

impl ManualClock {
    pub fn new() -> ManualClock {
        ManualClock::default()
    }

    pub fn set(&self, ns: u64) {
        self.ns.fetch_max(ns, Ordering::SeqCst);
    }

    pub fn advance(&self, ns: u64) {
        self.ns.fetch_add(ns, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ns(&self) -> u64 {
        self.ns.load(Ordering::SeqCst)
    }

    fn sleep_until(&self, deadline_ns: u64) {
        self.set(deadline_ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_forward_and_is_shared() {
        let c = ManualClock::new();
        let d = c.clone();
        assert_eq!(c.now_ns(), 0);
        c.advance(10);
        assert_eq!(d.now_ns(), 10);
        d.set(5);
        assert_eq!(c.now_ns(), 10);
        d.sleep_until(100);
        assert_eq!(c.now_ns(), 100);
    }

    #[test]
    fn host_clock_is_monotonic() {
        let c = HostClock::new();
        let a = c.now_ns();
        c.sleep_until(a + 1_000_000);
        assert!(c.now_ns() >= a + 1_000_000);
    }
}
