//! Monotonic time from the TSC, calibrated once at boot.

use core::ops::{Add, Sub};
use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;

/// A point in time: nanoseconds since the image's first instruction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

impl Instant {
    /// The boot instant.
    pub const ZERO: Instant = Instant(0);

    /// From nanoseconds since boot.
    pub const fn from_nanos(ns: u64) -> Instant {
        Instant(ns)
    }

    /// From microseconds since boot.
    pub const fn from_micros(us: u64) -> Instant {
        Instant(us.saturating_mul(1000))
    }

    /// Nanoseconds since boot.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Microseconds since boot.
    pub const fn as_micros(self) -> u64 {
        self.0 / 1000
    }

    /// Milliseconds since boot.
    pub const fn as_millis(self) -> u64 {
        self.0 / 1_000_000
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        Instant(self.0.saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)))
    }
}

impl Sub for Instant {
    type Output = Duration;
    fn sub(self, earlier: Instant) -> Duration {
        self.saturating_duration_since(earlier)
    }
}

/// Converts TSC ticks to nanoseconds with a 32.32 fixed-point multiplier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TscScale {
    mult: u64,
}

impl TscScale {
    /// The scale for a TSC running at `hz` (at least 1 kHz).
    pub const fn new(hz: u64) -> TscScale {
        let hz = if hz < 1000 { 1000 } else { hz };
        TscScale { mult: ((1_000_000_000u128 << 32) / hz as u128) as u64 }
    }

    /// Nanoseconds in `ticks` TSC ticks.
    pub const fn ticks_to_nanos(self, ticks: u64) -> u64 {
        ((ticks as u128 * self.mult as u128) >> 32) as u64
    }
}

#[cfg(target_os = "none")]
mod clock {
    use super::*;

    pub(crate) static BOOT_TSC: AtomicU64 = AtomicU64::new(0);
    pub(crate) static TSC_HZ: AtomicU64 = AtomicU64::new(0);
    static MULT: AtomicU64 = AtomicU64::new(0);

    pub(crate) fn set(boot_tsc: u64, tsc_hz: u64) {
        BOOT_TSC.store(boot_tsc, Ordering::Relaxed);
        TSC_HZ.store(tsc_hz, Ordering::Relaxed);
        MULT.store(TscScale::new(tsc_hz).mult, Ordering::Relaxed);
    }

    /// The current time.
    pub fn now() -> Instant {
        let mult = MULT.load(Ordering::Relaxed);
        if mult == 0 {
            return Instant::ZERO;
        }
        let ticks = crate::arch::rdtsc().saturating_sub(BOOT_TSC.load(Ordering::Relaxed));
        Instant(TscScale { mult }.ticks_to_nanos(ticks))
    }

    /// The calibrated TSC frequency.
    pub fn tsc_hz() -> u64 {
        TSC_HZ.load(Ordering::Relaxed)
    }

    /// Busy-waits for `d` (for short device delays only).
    pub fn spin_for(d: Duration) {
        let end = now() + d;
        while now() < end {
            core::hint::spin_loop();
        }
    }
}

#[cfg(target_os = "none")]
pub use clock::{now, spin_for, tsc_hz};
#[cfg(target_os = "none")]
pub(crate) use clock::set;

// Keep the imports used on the host, where only the pure types compile.
#[cfg(not(target_os = "none"))]
const _: (Option<AtomicU64>, Ordering) = (None, Ordering::Relaxed);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_converts_exactly_for_round_frequencies() {
        let s = TscScale::new(2_000_000_000);
        assert_eq!(s.ticks_to_nanos(2_000_000_000), 1_000_000_000);
        assert_eq!(s.ticks_to_nanos(0), 0);
        let s = TscScale::new(1_000_000_000);
        assert_eq!(s.ticks_to_nanos(123_456_789), 123_456_789);
    }

    #[test]
    fn scale_is_accurate_for_odd_frequencies_and_large_counts() {
        let hz = 2_394_455_000u64;
        let s = TscScale::new(hz);
        let ticks = hz * 3600 * 24; // one day
        let ns = s.ticks_to_nanos(ticks);
        let exact = 86_400_000_000_000u64;
        assert!(ns.abs_diff(exact) < exact / 1_000_000, "{ns} vs {exact}");
        assert_eq!(TscScale::new(0), TscScale::new(1000));
    }

    #[test]
    fn instant_arithmetic_saturates() {
        let a = Instant::from_micros(5);
        assert_eq!((a + Duration::from_micros(10)).as_micros(), 15);
        assert_eq!(a - Instant::from_micros(7), Duration::ZERO);
        assert_eq!((Instant::from_nanos(u64::MAX) + Duration::MAX).as_nanos(), u64::MAX);
        assert_eq!(Instant::from_micros(u64::MAX).as_nanos(), u64::MAX);
    }
}
