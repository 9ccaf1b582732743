//! Liveness of a channel's peer: the optional `heartbeat-ms` promise and its check, shared by
//! every driver domain (net, block, media), so that a guest VM that died without closing its
//! channel frees its port.
//!
//! An end that publishes `heartbeat-ms = <1..=60000>` promises to bump its heartbeat counter
//! ([`Backend::beat`](crate::Backend::beat)) at least that often. A [`Liveness`] built from a
//! guest's keys declares it dead once the counter stayed unchanged for [`HEARTBEAT_MISSES`]
//! periods. Time is passed in (nanoseconds).

use crate::KeyMap;

/// The liveness key (both ends): the promised heartbeat period in milliseconds.
pub const HEARTBEAT_KEY: &str = "heartbeat-ms";
/// Periods without a heartbeat after which a peer is declared dead.
pub const HEARTBEAT_MISSES: u64 = 5;
/// Longest period a peer may promise, ms.
pub const MAX_HEARTBEAT_MS: u64 = 60_000;

/// A peer's heartbeat promise and the last change of its counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    period_ns: u64,
    last: u32,
    since_ns: u64,
}

impl Liveness {
    /// The promise in `keys`, if any, starting from the peer's current counter `heartbeat` at
    /// `now_ns`. `Err` if the key is there but not a number in `1..=60000`.
    pub fn from_keys(keys: &KeyMap, heartbeat: u32, now_ns: u64) -> Result<Option<Self>, iconnect::Error> {
        let Some(v) = keys.get(HEARTBEAT_KEY) else {
            return Ok(None);
        };
        let ms = iconnect::keys::parse_in_range(HEARTBEAT_KEY, v, 1, MAX_HEARTBEAT_MS)?;
        Ok(Some(Self { period_ns: ms * 1_000_000, last: heartbeat, since_ns: now_ns }))
    }

    /// Takes the peer's counter `heartbeat` at `now_ns`; `false` once it stayed unchanged for
    /// more than [`HEARTBEAT_MISSES`] periods (the peer is dead).
    pub fn observe(&mut self, heartbeat: u32, now_ns: u64) -> bool {
        if heartbeat != self.last {
            (self.last, self.since_ns) = (heartbeat, now_ns);
            return true;
        }
        now_ns.saturating_sub(self.since_ns) <= self.period_ns.saturating_mul(HEARTBEAT_MISSES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(v: Option<&str>) -> KeyMap {
        let mut k = KeyMap::new();
        if let Some(v) = v {
            k.insert(HEARTBEAT_KEY, v).unwrap();
        }
        k
    }

    #[test]
    fn no_key_no_promise_and_bad_values_are_refused() {
        assert_eq!(Liveness::from_keys(&keys(None), 0, 0), Ok(None));
        for bad in ["0", "60001", "-1", "x", "", "99999999999999999999999"] {
            assert!(Liveness::from_keys(&keys(Some(bad)), 0, 0).is_err(), "{bad:?} accepted");
        }
        assert!(Liveness::from_keys(&keys(Some("60000")), 0, 0).unwrap().is_some());
    }

    #[test]
    fn dead_only_after_the_missed_periods_and_a_beat_resets_the_clock() {
        let ms = 1_000_000;
        let mut l = Liveness::from_keys(&keys(Some("100")), 7, 0).unwrap().unwrap();
        assert!(l.observe(7, 500 * ms), "exactly 5 periods is not yet dead");
        assert!(!l.observe(7, 500 * ms + 1));
        assert!(l.observe(8, 501 * ms), "a beat revives the count");
        assert!(l.observe(8, 1001 * ms));
        assert!(!l.observe(8, 1001 * ms + 1));
        // A counter that wraps is still a change.
        let mut w = Liveness::from_keys(&keys(Some("1")), u32::MAX, 0).unwrap().unwrap();
        assert!(w.observe(0, 10 * ms));
    }
}
