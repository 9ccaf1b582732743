//! Latency percentiles and rate meters for the result markers.

use alloc::vec::Vec;

/// Nearest-rank percentile `q` (0..=100) of `samples` (sorted in place); 0 when empty.
pub fn percentile(samples: &mut [u32], q: u32) -> u32 {
    if samples.is_empty() {
        return 0;
    }
    samples.sort_unstable();
    let n = samples.len();
    let rank = (u64::from(q.min(100)) * n as u64).div_ceil(100).max(1) as usize;
    samples[rank.min(n) - 1]
}

/// Round-trip times in microseconds.
#[derive(Debug, Clone, Default)]
pub struct Rtts {
    samples: Vec<u32>,
}

impl Rtts {
    /// Records one sample (saturating at `u32::MAX` µs).
    pub fn push(&mut self, us: u64) {
        self.samples.push(us.min(u64::from(u32::MAX)) as u32);
    }

    /// Samples recorded.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// No sample.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// `rtt_us_p50=.. rtt_us_p99=.. rtt_us_min=.. rtt_us_max=..`.
    pub fn fields(&mut self) -> alloc::string::String {
        let s = &mut self.samples;
        let (p50, p99) = (percentile(s, 50), percentile(s, 99));
        let (min, max) = (s.first().copied().unwrap_or(0), s.last().copied().unwrap_or(0));
        alloc::format!("rtt_us_p50={p50} rtt_us_p99={p99} rtt_us_min={min} rtt_us_max={max}")
    }
}

/// Bits per second of `bytes` over `us` microseconds (0 for an empty interval).
pub fn bps(bytes: u64, us: u64) -> u64 {
    if us == 0 {
        return 0;
    }
    (u128::from(bytes) * 8 * 1_000_000 / u128::from(us)).min(u128::from(u64::MAX)) as u64
}

/// Turns running byte counters into per-interval rates.
#[derive(Debug, Clone, Copy, Default)]
pub struct RateMeter {
    last_us: u64,
    last: (u64, u64),
}

impl RateMeter {
    /// Starts at `now_us` with the counters `(tx, rx)`.
    pub fn new(now_us: u64, counters: (u64, u64)) -> Self {
        Self {
            last_us: now_us,
            last: counters,
        }
    }

    /// Rates `(tx_bps, rx_bps)` since the previous call, and restarts the interval.
    pub fn sample(&mut self, now_us: u64, counters: (u64, u64)) -> (u64, u64) {
        let us = now_us.saturating_sub(self.last_us);
        let r = (
            bps(counters.0.saturating_sub(self.last.0), us),
            bps(counters.1.saturating_sub(self.last.1), us),
        );
        self.last_us = now_us;
        self.last = counters;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let mut v: Vec<u32> = (1..=100).rev().collect();
        assert_eq!(percentile(&mut v, 50), 50);
        assert_eq!(percentile(&mut v, 99), 99);
        assert_eq!(percentile(&mut v, 100), 100);
        assert_eq!(percentile(&mut v, 0), 1);
        assert_eq!(percentile(&mut [7], 99), 7);
        assert_eq!(percentile(&mut [], 50), 0);
        let mut r = Rtts::default();
        for us in [30, 10, 20] {
            r.push(us);
        }
        assert_eq!(r.fields(), "rtt_us_p50=20 rtt_us_p99=30 rtt_us_min=10 rtt_us_max=30");
    }

    #[test]
    fn rates() {
        assert_eq!(bps(125_000, 1_000_000), 1_000_000);
        assert_eq!(bps(1, 0), 0);
        let mut m = RateMeter::new(0, (0, 0));
        assert_eq!(m.sample(500_000, (62_500, 125_000)), (1_000_000, 2_000_000));
        assert_eq!(m.sample(1_500_000, (62_500, 125_000)), (0, 0));
    }
}
