//! The QoS scheduler: which guest port may send its next frame, and when.
//!
//! ## Where scheduling happens
//! Decisions are taken *before* a frame leaves a guest's TX ring. The owner asks [`Scheduler::pick`]
//! which port goes next, takes one frame from that port's ring (netback `poll_tx` with a budget
//! of one), forwards it and reports its size with [`Scheduler::complete`]. A port that is not
//! picked keeps its requests in its own ring: the guest is back-pressured (its ring fills, its
//! stack queues or slows down), exactly like xen-netback's credit scheduler, and the driver
//! domain neither buffers nor drops frames it will not send. Frame sizes are only known after
//! the frame is taken, so buckets are charged afterwards and may go negative by at most one
//! frame (repaid before the port is eligible again, so long-run rates are exact).
//!
//! ## Per port (from its grant, `iconnect::qos::NetQosGrant`)
//! * a *guarantee* bucket (rate `guaranteed_bps`, depth 2 ms at that rate or two frames; none
//!   when 0). It is shallow on purpose: credit saved while idle buys priority over other ports'
//!   guarantees, so a deep one would let one port's burst eat into another's guarantee,
//! * a *ceiling* bucket (rate `ceiling_bps`, depth `burst_bytes`: how far a port may run ahead
//!   of its ceiling rate): a port with an empty ceiling bucket is never picked, so the ceiling
//!   holds over every interval (rate × time + burst + one frame),
//! * a *weight*: its guaranteed rate, or the best-effort weight (default 5 % of the link) for
//!   ports without a guarantee,
//! * a class: `realtime`/`interactive` are *latency* classes, `background` yields to everyone.
//!
//! The whole switch egress is shaped by a *link* bucket at `link_bps` (depth: 2 ms or four
//! frames, whichever is more); nothing is picked while it is empty.
//!
//! ## Order of a pick (among backlogged ports whose ceiling bucket is not empty)
//! 1. **Latency**: latency-class ports with guarantee tokens (realtime before interactive).
//!    Served first, but only within their own guarantee, so they can never take what other
//!    ports were guaranteed (admission keeps the sum of guarantees ≤ `link_bps`).
//! 2. **Guarantee**: any port with guarantee tokens.
//! 3. **Spare**: any other port, `background` ports last.
//!
//! Within a phase the port with the smallest start tag wins (start-time fair queueing: a send of
//! `n` bytes advances the port's tag by `n / weight`; a port that becomes backlogged starts at
//! the current virtual time, the smallest tag among backlogged ports, so idling earns no credit). Every send advances the tag, whatever
//! its phase, so under contention ports share the link in proportion to their weights (a 2×
//! guarantee gets ≈2×), with each guarantee as a floor and each ceiling as a cap.

use alloc::vec::Vec;

use iconnect::Class;
use iconnect::qos::NetQosGrant;

use crate::{Error, MAX_PORTS, PortId};

const NS_PER_S: i128 = 1_000_000_000;
/// Largest frame the owner hands to the link in one piece (for the default link depth).
pub const MAX_FRAME: u64 = 1514;
/// Start-tag scale: bytes × `TAG_SCALE` / weight.
const TAG_SCALE: u128 = 1 << 40;

/// A token bucket counted in nano-bits (so refills are exact integers: `elapsed_ns × rate_bps`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bucket {
    rate_bps: u64,
    depth: i128,
    tokens: i128,
    last_ns: u64,
}

impl Bucket {
    /// A full bucket.
    fn new(rate_bps: u64, depth_bytes: u64, now_ns: u64) -> Self {
        let depth = i128::from(depth_bytes.max(1)) * 8 * NS_PER_S;
        Self {
            rate_bps,
            depth,
            tokens: depth,
            last_ns: now_ns,
        }
    }

    fn refill(&mut self, now_ns: u64) {
        if now_ns > self.last_ns {
            let add = i128::from(now_ns - self.last_ns) * i128::from(self.rate_bps);
            self.tokens = (self.tokens + add).min(self.depth);
            self.last_ns = now_ns;
        }
    }

    fn ready(&self) -> bool {
        self.tokens > 0
    }

    fn charge(&mut self, bytes: u64) {
        // Bounded below so a long run of charges can never overflow.
        self.tokens = (self.tokens - i128::from(bytes) * 8 * NS_PER_S).max(-(1i128 << 100));
    }

    /// When the bucket will hold a token again (`None`: never, rate 0).
    fn ready_at(&self) -> Option<u64> {
        if self.ready() {
            return Some(self.last_ns);
        }
        if self.rate_bps == 0 {
            return None;
        }
        let rate = i128::from(self.rate_bps);
        let need = 1 - self.tokens;
        let ns = (need + rate - 1) / rate;
        Some(
            self.last_ns
                .saturating_add(u64::try_from(ns).unwrap_or(u64::MAX)),
        )
    }
}

/// What the scheduler enforces for one port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortQos {
    /// Guaranteed rate, bits/s (0: best effort).
    pub guaranteed_bps: u64,
    /// Ceiling, bits/s.
    pub ceiling_bps: u64,
    /// Depth of both buckets, bytes.
    pub burst_bytes: u64,
    /// Class.
    pub class: Class,
}

impl PortQos {
    /// What a grant means.
    pub fn from_grant(g: &NetQosGrant) -> Self {
        Self {
            guaranteed_bps: g.guaranteed_bps,
            ceiling_bps: g.ceiling_bps.max(g.guaranteed_bps),
            burst_bytes: g.burst_bytes,
            class: g.class,
        }
    }

    /// A port without a request (or whose request was refused): no guarantee, the link as
    /// ceiling, 10 ms of burst at that rate (at least one frame), class bulk.
    pub fn best_effort(link_bps: u64) -> Self {
        Self {
            guaranteed_bps: 0,
            ceiling_bps: link_bps,
            burst_bytes: (link_bps / 8 / 100).max(MAX_FRAME),
            class: Class::Bulk,
        }
    }

    fn latency(&self) -> bool {
        matches!(self.class, Class::Realtime | Class::Interactive)
    }
}

/// The phase a port was picked in (how its send is charged).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// A latency-class port within its guarantee.
    Latency,
    /// Within its guarantee.
    Guarantee,
    /// Spare capacity, within its ceiling.
    Spare,
}

/// Permission for one port to send one frame; hand it back to [`Scheduler::complete`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// The port.
    pub port: PortId,
    /// Why it was picked.
    pub phase: Phase,
}

/// The answer of [`Scheduler::pick`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// Take one frame from this port now.
    Go(Grant),
    /// Backlogged ports exist but none may send before this time (ns).
    WaitUntil(u64),
    /// No port is backlogged.
    Idle,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    qos: PortQos,
    weight: u64,
    guar: Option<Bucket>,
    ceil: Bucket,
    backlog: bool,
    tag: u128,
    sent_bytes: u64,
    sent_frames: u64,
}

/// The scheduler of one switch.
#[derive(Debug)]
pub struct Scheduler {
    link_bps: u64,
    link: Bucket,
    slots: Vec<Option<Slot>>,
    vtime: u128,
    best_effort_weight: u64,
}

impl Scheduler {
    /// A scheduler for a link of `link_bps` (depth: 2 ms at that rate, at least four frames);
    /// best-effort ports weigh 5 % of the link (so with any guaranteed port busy, best effort still gets a share of the spare capacity, never of the guarantees).
    pub fn new(link_bps: u64, now_ns: u64) -> Self {
        let depth = (link_bps / 8 / 500).max(4 * MAX_FRAME);
        Self::with_link_depth(link_bps, depth, now_ns)
    }

    /// As [`new`](Self::new) with an explicit link bucket depth in bytes.
    pub fn with_link_depth(link_bps: u64, depth_bytes: u64, now_ns: u64) -> Self {
        Self {
            link_bps,
            link: Bucket::new(link_bps, depth_bytes, now_ns),
            slots: Vec::new(),
            vtime: 0,
            best_effort_weight: (link_bps / 20).max(1),
        }
    }

    /// Sets the weight of ports without a guarantee (bits/s-equivalent, at least 1).
    pub fn set_best_effort_weight(&mut self, w: u64) {
        self.best_effort_weight = w.max(1);
        for s in self.slots.iter_mut().flatten() {
            if s.qos.guaranteed_bps == 0 {
                s.weight = self.best_effort_weight;
            }
        }
    }

    /// The link rate.
    pub fn link_bps(&self) -> u64 {
        self.link_bps
    }

    /// Adds port `p` with `qos` (its buckets start full; not backlogged).
    pub fn add_port(&mut self, p: PortId, qos: PortQos, now_ns: u64) -> Result<(), Error> {
        let i = usize::from(p);
        if i >= MAX_PORTS {
            return Err(Error::BadPort);
        }
        if self.slots.len() <= i {
            self.slots.resize(i + 1, None);
        }
        if self.slots[i].is_some() {
            return Err(Error::PortInUse);
        }
        let weight = if qos.guaranteed_bps > 0 {
            qos.guaranteed_bps
        } else {
            self.best_effort_weight
        };
        self.slots[i] = Some(Slot {
            qos,
            weight,
            guar: (qos.guaranteed_bps > 0).then(|| {
                let depth = (qos.guaranteed_bps / 8 / 500).max(2 * MAX_FRAME);
                Bucket::new(qos.guaranteed_bps, depth, now_ns)
            }),
            ceil: Bucket::new(qos.ceiling_bps, qos.burst_bytes, now_ns),
            backlog: false,
            tag: self.vtime,
            sent_bytes: 0,
            sent_frames: 0,
        });
        Ok(())
    }

    /// Removes port `p`.
    pub fn remove_port(&mut self, p: PortId) {
        if let Some(s) = self.slots.get_mut(usize::from(p)) {
            *s = None;
        }
    }

    /// The port's QoS, if present.
    pub fn qos(&self, p: PortId) -> Option<PortQos> {
        self.slot(p).map(|s| s.qos)
    }

    fn slot(&self, p: PortId) -> Option<&Slot> {
        self.slots.get(usize::from(p))?.as_ref()
    }

    /// Marks whether port `p` has frames waiting (a doorbell, or `more` from its ring).
    pub fn set_backlog(&mut self, p: PortId, backlog: bool) {
        let vtime = self.vtime;
        if let Some(Some(s)) = self.slots.get_mut(usize::from(p)) {
            if backlog && !s.backlog {
                s.tag = s.tag.max(vtime);
            }
            s.backlog = backlog;
        }
    }

    /// Whether port `p` is marked backlogged.
    pub fn is_backlogged(&self, p: PortId) -> bool {
        self.slot(p).is_some_and(|s| s.backlog)
    }

    /// Bytes and frames sent by port `p` (as reported to [`complete`](Self::complete)).
    pub fn sent(&self, p: PortId) -> (u64, u64) {
        self.slot(p)
            .map_or((0, 0), |s| (s.sent_bytes, s.sent_frames))
    }

    /// Charges the link for traffic that is not scheduled here (the domain's own stack).
    pub fn charge_link(&mut self, bytes: usize, now_ns: u64) {
        self.link.refill(now_ns);
        self.link.charge(bytes as u64);
    }

    /// Which port sends next.
    pub fn pick(&mut self, now_ns: u64) -> Pick {
        if !self.slots.iter().flatten().any(|s| s.backlog) {
            return Pick::Idle;
        }
        self.link.refill(now_ns);
        if !self.link.ready() {
            return self.link.ready_at().map_or(Pick::Idle, Pick::WaitUntil);
        }
        let mut best: Option<((Phase, u8, u128, PortId), Grant)> = None;
        let mut wake: Option<u64> = None;
        let mut min_tag: Option<u128> = None;
        for (i, s) in self.slots.iter_mut().enumerate() {
            let Some(s) = s.as_mut().filter(|s| s.backlog) else {
                continue;
            };
            min_tag = Some(min_tag.map_or(s.tag, |m| m.min(s.tag)));
            s.ceil.refill(now_ns);
            if let Some(g) = s.guar.as_mut() {
                g.refill(now_ns);
            }
            if !s.ceil.ready() {
                if let Some(t) = s.ceil.ready_at() {
                    wake = Some(wake.map_or(t, |w| w.min(t)));
                }
                continue;
            }
            let guaranteed = s.guar.is_some_and(|g| g.ready());
            let (phase, rank) = if guaranteed && s.qos.latency() {
                (Phase::Latency, u8::from(s.qos.class != Class::Realtime))
            } else if guaranteed {
                (Phase::Guarantee, 0)
            } else {
                (Phase::Spare, u8::from(s.qos.class == Class::Background))
            };
            let port = i as PortId;
            let key = (phase, rank, s.tag, port);
            if best.as_ref().is_none_or(|(k, _)| key < *k) {
                best = Some((key, Grant { port, phase }));
            }
        }
        // Virtual time: the smallest start tag among backlogged ports (ports picked out of tag
        // order, for their guarantee, must not drag it forward).
        if let Some(m) = min_tag {
            self.vtime = self.vtime.max(m);
        }
        match (best, wake) {
            (Some((_, g)), _) => Pick::Go(g),
            (None, Some(t)) => Pick::WaitUntil(t),
            (None, None) => Pick::Idle,
        }
    }

    /// Reports what the picked port sent (`bytes`, 0 if its ring had nothing after all) and
    /// whether it still has frames waiting.
    pub fn complete(&mut self, g: Grant, bytes: usize, backlog: bool) {
        let Some(Some(s)) = self.slots.get_mut(usize::from(g.port)) else {
            return;
        };
        if bytes > 0 {
            let n = bytes as u64;
            self.link.charge(n);
            s.ceil.charge(n);
            if g.phase != Phase::Spare
                && let Some(b) = s.guar.as_mut()
            {
                b.charge(n);
            }
            s.tag += u128::from(n) * TAG_SCALE / u128::from(s.weight);
            s.sent_bytes += n;
            s.sent_frames += 1;
        }
        s.backlog = backlog;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_exactly_and_waits() {
        let mut b = Bucket::new(8_000, 10, 0); // 1000 bytes/s, 10 bytes deep
        assert!(b.ready());
        b.charge(30); // 20 bytes in debt
        assert!(!b.ready());
        // One nano-bit past zero: 20 bytes at 1000 B/s = 20 ms, plus a nanosecond's worth.
        let t = b.ready_at().unwrap();
        assert_eq!(t, 20_000_001);
        b.refill(t - 1);
        assert!(!b.ready());
        b.refill(t);
        assert!(b.ready());
        b.refill(10_000_000_000);
        assert_eq!(b.tokens, b.depth, "capped at the depth");
        let z = Bucket::new(0, 10, 0);
        let mut z2 = z;
        z2.charge(11);
        assert_eq!(z2.ready_at(), None);
    }

    #[test]
    fn latency_class_goes_first_within_its_guarantee_only() {
        let link = 100_000_000;
        let mut s = Scheduler::new(link, 0);
        let q = |class| PortQos {
            guaranteed_bps: 10_000_000,
            ceiling_bps: link,
            burst_bytes: 10_000,
            class,
        };
        s.add_port(1, q(Class::Bulk), 0).unwrap();
        s.add_port(2, q(Class::Realtime), 0).unwrap();
        s.set_backlog(1, true);
        s.set_backlog(2, true);
        // Equal tags, port 1 numbered first: the realtime port still goes first...
        let Pick::Go(g) = s.pick(0) else { panic!() };
        assert_eq!((g.port, g.phase), (2, Phase::Latency));
        // ...until its guarantee tokens are spent; then port 1's guarantee.
        s.complete(g, 5000, true);
        let Pick::Go(g) = s.pick(0) else { panic!() };
        assert_eq!((g.port, g.phase), (1, Phase::Guarantee));
        s.complete(g, 5000, true);
        // Spare capacity: no class priority, start tags decide (equal: lower port number).
        let Pick::Go(g) = s.pick(0) else { panic!() };
        assert_eq!((g.port, g.phase), (1, Phase::Spare));
        s.complete(g, 1000, true);
        let Pick::Go(g) = s.pick(0) else { panic!() };
        assert_eq!((g.port, g.phase), (2, Phase::Spare));
    }

    #[test]
    fn idle_and_single_port() {
        let mut s = Scheduler::new(1_000_000, 0);
        assert_eq!(s.pick(0), Pick::Idle);
        s.add_port(3, PortQos::best_effort(1_000_000), 0).unwrap();
        assert_eq!(
            s.add_port(3, PortQos::best_effort(1), 0),
            Err(Error::PortInUse)
        );
        assert_eq!(s.pick(0), Pick::Idle);
        s.set_backlog(3, true);
        let Pick::Go(g) = s.pick(0) else { panic!() };
        assert_eq!((g.port, g.phase), (3, Phase::Spare));
        s.complete(g, 1000, true);
        assert_eq!(s.sent(3), (1000, 1));
        // Nothing sent: the port leaves the backlog.
        let Pick::Go(g) = s.pick(0) else { panic!() };
        s.complete(g, 0, false);
        assert_eq!(s.pick(0), Pick::Idle);
        s.remove_port(3);
        s.set_backlog(3, true);
        assert_eq!(s.pick(0), Pick::Idle);
    }
}
