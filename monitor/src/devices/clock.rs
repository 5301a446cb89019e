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

use std::cell::Cell;
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
///
/// Reading `CLOCK_MONOTONIC` costs a vDSO call (tens of nanoseconds here, and the run loop
/// reads the clock at every exit), so between two readings of it the time is the host TSC
/// scaled by its rate ([`native::tsc::hz`], calibrated against `CLOCK_MONOTONIC`): the clock
/// reads `CLOCK_MONOTONIC` again (an *anchor*) once [`HostClock::RESYNC_NS`] have passed by
/// the TSC, so it follows the host's clock, NTP slewing included, to within the rate's error
/// over that interval (a few ppm of 1 ms: nanoseconds). It never goes backwards: a reading
/// below one already returned (an anchor behind the TSC's estimate) returns that one.
#[derive(Clone, Debug)]
pub struct HostClock {
    origin: Instant,
    /// Nanoseconds per TSC tick in 32.32 fixed point.
    ns_per_tick: u64,
    /// TSC ticks after the anchor at which the host clock is read again.
    resync_ticks: u64,
    anchor: Cell<Anchor>,
}

/// The last reading of the host clock and the TSC then, and the last time returned.
#[derive(Clone, Copy, Debug)]
struct Anchor {
    tsc: u64,
    ns: u64,
    last: u64,
}

impl HostClock {
    /// How long the clock runs on the TSC alone before it reads `CLOCK_MONOTONIC` again.
    pub const RESYNC_NS: u64 = 1_000_000;

    /// Also measures the host TSC's rate if this process has not yet (about 10 ms, see
    /// [`native::tsc`]): here, before any engine has locked the process down.
    pub fn new() -> HostClock {
        let hz = native::tsc::hz().max(1);
        let origin = Instant::now();
        let clock = HostClock {
            origin,
            ns_per_tick: u64::try_from((1_000_000_000u128 << 32) / hz as u128).unwrap_or(u64::MAX),
            resync_ticks: u64::try_from(Self::RESYNC_NS as u128 * hz as u128 / 1_000_000_000).unwrap_or(u64::MAX).max(1),
            anchor: Cell::new(Anchor { tsc: 0, ns: 0, last: 0 }),
        };
        clock.resync();
        clock
    }

    /// `CLOCK_MONOTONIC` since the origin.
    fn host_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// A new anchor: the host clock, and the TSC at that reading: the middle of a TSC
    /// bracket around it, the narrowest of a few if one was wide (the thread was preempted
    /// inside it); if every one was, the bracket's end (the clock then reads late, never
    /// early, until the next anchor). Returns the host clock's reading.
    fn resync(&self) -> u64 {
        let narrow = (self.resync_ticks / 1000).max(1);
        let mut tries = 0;
        let (tsc, ns) = loop {
            let t0 = native::tsc::read();
            let ns = self.host_ns();
            let t1 = native::tsc::read();
            let width = t1.wrapping_sub(t0);
            tries += 1;
            if width <= narrow {
                break (t0.wrapping_add(width / 2), ns);
            }
            if tries == 4 {
                break (t1, ns);
            }
        };
        let last = self.anchor.get().last;
        self.anchor.set(Anchor { tsc, ns, last });
        ns
    }
}

impl Default for HostClock {
    fn default() -> Self {
        HostClock::new()
    }
}

impl Clock for HostClock {
    fn now_ns(&self) -> u64 {
        let a = self.anchor.get();
        // A TSC that went backwards (a CPU with another TSC) wraps to a huge difference and
        // reads the host clock.
        let dt = native::tsc::read().wrapping_sub(a.tsc);
        let ns = if dt < self.resync_ticks {
            a.ns.saturating_add(((dt as u128 * self.ns_per_tick as u128) >> 32) as u64)
        } else {
            self.resync()
        };
        let ns = ns.max(a.last);
        let mut a = self.anchor.get();
        a.last = ns;
        self.anchor.set(a);
        ns
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
    fn host_clock_follows_the_host_monotonic_clock() {
        // Over 20 ms (twenty anchors), every reading lies between two readings of
        // CLOCK_MONOTONIC taken around it, within 5 us (the TSC's rate error over one
        // RESYNC_NS is nanoseconds; a wrong rate, e.g. 1 GHz for 2.6 GHz, is off by 0.6 ms
        // within the first millisecond).
        let c = HostClock::new();
        let origin = c.origin;
        let host = || u64::try_from(origin.elapsed().as_nanos()).unwrap();
        let end = host() + 20_000_000;
        let mut n = 0u64;
        let mut prev = 0;
        loop {
            let lo = host();
            let t = c.now_ns();
            let hi = host();
            assert!(t + 5_000 >= lo && t <= hi + 5_000, "clock {t} ns, host clock between {lo} and {hi}");
            assert!(t >= prev, "went backwards: {prev} then {t}");
            prev = t;
            n += 1;
            if lo > end {
                break;
            }
        }
        assert!(n > 100);
    }

    #[test]
    fn host_clock_is_monotonic() {
        let c = HostClock::new();
        let a = c.now_ns();
        c.sleep_until(a + 1_000_000);
        assert!(c.now_ns() >= a + 1_000_000);
    }
}
