//! Where device time comes from.
//!
//! Devices never read the host clock themselves: the [`Machine`](crate::machine::Machine)
//! reads a [`Clock`] and passes "now" (nanoseconds since an arbitrary origin) to them. In
//! production it is the host's monotonic clock ([`HostClock`]); unit tests use a
//! [`ManualClock`] they advance by hand, so device behaviour is deterministic.
//!
//! A clock also keeps the guest's time stamp counter ([`Clock::tsc`]), so that the TSC and
//! the devices' time advance together: the host clock's is the host TSC itself (what guest
//! code run directly or translated reads with RDTSC), a manual clock's is its nanoseconds
//! scaled by a fixed rate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::native;

/// A monotonic clock in nanoseconds.
pub trait Clock: Send {
    /// Nanoseconds since this clock's origin. Never decreases.
    fn now_ns(&self) -> u64;

    /// Wait until `now_ns() >= deadline_ns` (the engines' "HLT sleeps until the next event").
    /// A host clock sleeps; a manual clock jumps there.
    fn sleep_until(&self, deadline_ns: u64);

    /// The guest's time stamp counter. Never decreases.
    fn tsc(&self) -> u64;

    /// The rate of [`tsc`](Clock::tsc) in Hz (what the virtual CPU reports in CPUID).
    fn tsc_hz(&self) -> u64;
}

/// The host's monotonic clock (`CLOCK_MONOTONIC` through [`Instant`]), from its creation,
/// and the host's TSC.
#[derive(Clone, Debug)]
pub struct HostClock {
    origin: Instant,
}

impl HostClock {
    /// Also measures the host TSC's rate if this process has not yet (about 10 ms, see
    /// [`native::tsc`]): here, before any engine has locked the process down.
    pub fn new() -> HostClock {
        native::tsc::hz();
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

    /// The host TSC, as RDTSC reads it in guest code run directly or translated.
    fn tsc(&self) -> u64 {
        native::tsc::read()
    }

    fn tsc_hz(&self) -> u64 {
        native::tsc::hz()
    }
}

/// A clock that moves only when told to. Clones share the same time. Its TSC is its time
/// scaled by a fixed rate ([`ManualClock::DEFAULT_TSC_HZ`] unless set), so runs are
/// deterministic.
#[derive(Clone, Debug)]
pub struct ManualClock {
    ns: Arc<AtomicU64>,
    tsc_hz: u64,
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock { ns: Arc::default(), tsc_hz: ManualClock::DEFAULT_TSC_HZ }
    }
}

impl ManualClock {
    /// The TSC rate of [`ManualClock::new`]: 2.5 GHz, a typical TSC and not 1 GHz, so that a
    /// TSC that is mistaken for nanoseconds shows.
    pub const DEFAULT_TSC_HZ: u64 = 2_500_000_000;

    pub fn new() -> ManualClock {
        ManualClock::default()
    }

    /// A manual clock whose TSC counts at `tsc_hz` (at least 1 Hz).
    pub fn with_tsc_hz(tsc_hz: u64) -> ManualClock {
        ManualClock { ns: Arc::default(), tsc_hz: tsc_hz.max(1) }
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

    /// Nanoseconds × rate / 10⁹, rounded down (exact in 128-bit arithmetic).
    fn tsc(&self) -> u64 {
        let t = self.now_ns() as u128 * self.tsc_hz as u128 / 1_000_000_000;
        u64::try_from(t).unwrap_or(u64::MAX)
    }

    fn tsc_hz(&self) -> u64 {
        self.tsc_hz
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
    fn manual_clock_tsc_is_its_time_at_its_rate() {
        let c = ManualClock::with_tsc_hz(2_596_150_000);
        assert_eq!((c.tsc(), c.tsc_hz()), (0, 2_596_150_000));
        c.advance(1_000_000_000);
        assert_eq!(c.tsc(), 2_596_150_000);
        c.advance(1);
        // 1 ns more is 2.59615 ticks: rounded down.
        assert_eq!(c.tsc(), 2_596_150_002);
        // 10⁹ s of nanoseconds does not overflow the intermediate product.
        let c = ManualClock::new();
        c.set(1_000_000_000 * 1_000_000_000);
        assert_eq!(c.tsc(), 2_500_000_000 * 1_000_000_000);
        assert_eq!(ManualClock::new().tsc_hz(), ManualClock::DEFAULT_TSC_HZ);
    }

    #[test]
    fn host_clock_tsc_is_the_host_tsc() {
        let c = HostClock::new();
        let a = native::tsc::read();
        let b = c.tsc();
        let d = native::tsc::read();
        assert!(a <= b && b <= d, "{a} {b} {d}");
        assert_eq!(c.tsc_hz(), native::tsc::hz());
    }

    #[test]
    fn host_clock_is_monotonic() {
        let c = HostClock::new();
        let a = c.now_ns();
        c.sleep_until(a + 1_000_000);
        assert!(c.now_ns() >= a + 1_000_000);
    }
}
