//! The learning bridge: where a frame entering on one port goes.
//!
//! [`Bridge::forward`] looks at the Ethernet header only (destination, source). Rules, in order:
//! 1. a frame shorter than an Ethernet header, or entering on a port that is not up, is dropped;
//! 2. a multicast or all-zero source is dropped ([`DropReason::BadSource`]);
//! 3. on a pinned port (a guest), a source other than the pinned MAC is dropped
//!    ([`DropReason::Spoofed`], counted per port);
//! 4. the source is learnt (a pinned MAC is a static entry and never moves; a learnt entry
//!    moves to the port it was last seen on and expires after the aging time);
//! 5. broadcast, multicast and unknown unicast destinations are flooded to every other port
//!    that is up; a known destination goes to its port, unless that is the ingress port
//!    ([`DropReason::Hairpin`]: never back out of the port a frame came in on).
//!
//! The table holds at most `capacity` learnt entries (pinned ones are extra, one per port at
//! most): a new MAC beyond that evicts the least recently seen learnt entry.

use alloc::vec::Vec;

use crate::{Error, MAX_PORTS, PortId};

/// An Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// `ff:ff:ff:ff:ff:ff`.
    pub const BROADCAST: Mac = Mac([0xff; 6]);

    /// Group (multicast or broadcast) address: the I/G bit.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }

    /// All zero.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }

    /// Can be a port's own address (unicast, not zero).
    pub fn is_valid_unicast(&self) -> bool {
        !self.is_multicast() && !self.is_zero()
    }

    /// Parses exactly `xx:xx:xx:xx:xx:xx` (hex digits, either case).
    pub fn parse(s: &str) -> Option<Mac> {
        let b = s.as_bytes();
        if b.len() != 17 {
            return None;
        }
        let mut mac = [0u8; 6];
        for (i, byte) in mac.iter_mut().enumerate() {
            let at = i * 3;
            if i > 0 && b[at - 1] != b':' {
                return None;
            }
            let hex = |c: u8| (c as char).to_digit(16);
            *byte = (hex(b[at])? * 16 + hex(b[at + 1])?) as u8;
        }
        Some(Mac(mac))
    }

    /// Destination of an Ethernet frame (`None` if shorter than a header).
    pub fn dst_of(frame: &[u8]) -> Option<Mac> {
        Some(Mac(frame.get(0..6)?.try_into().ok()?))
    }

    /// Source of an Ethernet frame (`None` if shorter than a header).
    pub fn src_of(frame: &[u8]) -> Option<Mac> {
        if frame.len() < ETH_HEADER {
            return None;
        }
        Some(Mac(frame.get(6..12)?.try_into().ok()?))
    }
}

impl core::fmt::Display for Mac {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// Ethernet header length (destination, source, ethertype).
pub const ETH_HEADER: usize = 14;

/// A set of ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PortSet(pub u64);

impl PortSet {
    /// No port.
    pub const EMPTY: PortSet = PortSet(0);

    /// Whether `p` is in the set.
    pub fn contains(&self, p: PortId) -> bool {
        usize::from(p) < MAX_PORTS && self.0 & (1 << p) != 0
    }

    /// Adds `p` (ignored if out of range).
    pub fn insert(&mut self, p: PortId) {
        if usize::from(p) < MAX_PORTS {
            self.0 |= 1 << p;
        }
    }

    /// Removes `p`.
    pub fn remove(&mut self, p: PortId) {
        if usize::from(p) < MAX_PORTS {
            self.0 &= !(1 << p);
        }
    }

    /// Number of ports.
    pub fn len(&self) -> usize {
        self.0.count_ones() as usize
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    /// The ports, ascending.
    pub fn iter(&self) -> impl Iterator<Item = PortId> + '_ {
        let bits = self.0;
        (0..MAX_PORTS as u8).filter(move |&p| bits & (1 << p) != 0)
    }
}

/// Why a frame was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Shorter than an Ethernet header.
    Runt,
    /// The ingress port is not up.
    PortDown,
    /// Multicast or all-zero source address.
    BadSource,
    /// A pinned (guest) port sent with a source other than its MAC.
    Spoofed,
    /// The destination is on the ingress port.
    Hairpin,
    /// Flooded, but no other port is up.
    NoPeer,
}

/// Where a frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Forward {
    /// To one port.
    To(PortId),
    /// To each of these ports (never contains the ingress port).
    Flood(PortSet),
    /// Nowhere.
    Drop(DropReason),
}

/// Bridge counters (totals; per-port spoof counts in [`Bridge::spoofed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BridgeStats {
    /// Frames sent to one port.
    pub unicast: u64,
    /// Frames flooded.
    pub flooded: u64,
    /// Frames dropped (any reason).
    pub dropped: u64,
    /// Of those: spoofed sources.
    pub spoofed: u64,
    /// MACs learnt (new entries).
    pub learned: u64,
    /// Learnt entries evicted because the table was full.
    pub evicted: u64,
    /// Learnt entries that expired.
    pub aged: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    mac: Mac,
    port: PortId,
    seen_ns: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct PortState {
    up: bool,
    pinned: Option<Mac>,
    spoofed: u64,
}

/// The learning bridge.
#[derive(Debug)]
pub struct Bridge {
    ports: [PortState; MAX_PORTS],
    up: PortSet,
    learnt: Vec<Entry>,
    capacity: usize,
    age_ns: u64,
    stats: BridgeStats,
}

/// Default learnt-entry capacity.
pub const DEFAULT_CAPACITY: usize = 256;
/// Default aging time (like Linux bridges: 300 s).
pub const DEFAULT_AGE_NS: u64 = 300_000_000_000;

impl Bridge {
    /// A bridge with no ports, at most `capacity` learnt entries expiring after `age_ns`.
    pub fn new(capacity: usize, age_ns: u64) -> Self {
        Self {
            ports: [PortState::default(); MAX_PORTS],
            up: PortSet::EMPTY,
            learnt: Vec::with_capacity(capacity),
            capacity,
            age_ns,
            stats: BridgeStats::default(),
        }
    }

    /// Brings port `p` up; `pinned` = the only source MAC it may send with (a guest's
    /// announced MAC; it becomes a static entry). [`Error::MacInUse`] if another port has that
    /// MAC pinned, [`Error::BadMac`] if it is not a unicast address.
    pub fn add_port(&mut self, p: PortId, pinned: Option<Mac>) -> Result<(), Error> {
        let i = usize::from(p);
        if i >= MAX_PORTS {
            return Err(Error::BadPort);
        }
        if self.ports[i].up {
            return Err(Error::PortInUse);
        }
        if let Some(m) = pinned {
            if !m.is_valid_unicast() {
                return Err(Error::BadMac);
            }
            if self.pinned_port(m).is_some() {
                return Err(Error::MacInUse);
            }
            // A learnt entry for that MAC elsewhere is stale now.
            self.learnt.retain(|e| e.mac != m);
        }
        self.ports[i] = PortState {
            up: true,
            pinned,
            spoofed: 0,
        };
        self.up.insert(p);
        Ok(())
    }

    /// Takes port `p` down: forgets its pinned MAC and every entry learnt on it.
    pub fn remove_port(&mut self, p: PortId) {
        let i = usize::from(p);
        if i >= MAX_PORTS {
            return;
        }
        self.ports[i] = PortState::default();
        self.up.remove(p);
        self.learnt.retain(|e| e.port != p);
    }

    /// Ports that are up.
    pub fn ports_up(&self) -> PortSet {
        self.up
    }

    /// The port `mac` is pinned to.
    pub fn pinned_port(&self, mac: Mac) -> Option<PortId> {
        self.ports
            .iter()
            .position(|s| s.up && s.pinned == Some(mac))
            .map(|i| i as PortId)
    }

    /// Where `mac` is (pinned or learnt and not expired at `now_ns`).
    pub fn lookup(&self, mac: Mac, now_ns: u64) -> Option<PortId> {
        self.pinned_port(mac).or_else(|| {
            self.learnt
                .iter()
                .find(|e| e.mac == mac && now_ns.saturating_sub(e.seen_ns) < self.age_ns)
                .map(|e| e.port)
        })
    }

    /// Learnt entries currently held (expired ones may still be counted until swept).
    pub fn learnt_len(&self) -> usize {
        self.learnt.len()
    }

    /// Counters.
    pub fn stats(&self) -> &BridgeStats {
        &self.stats
    }

    /// Spoofed frames dropped on port `p` since it came up.
    pub fn spoofed(&self, p: PortId) -> u64 {
        self.ports.get(usize::from(p)).map_or(0, |s| s.spoofed)
    }

    /// Removes learnt entries older than the aging time.
    pub fn sweep(&mut self, now_ns: u64) {
        let before = self.learnt.len();
        let age = self.age_ns;
        self.learnt
            .retain(|e| now_ns.saturating_sub(e.seen_ns) < age);
        self.stats.aged += (before - self.learnt.len()) as u64;
    }

    fn drop(&mut self, r: DropReason) -> Forward {
        self.stats.dropped += 1;
        Forward::Drop(r)
    }

    fn learn(&mut self, mac: Mac, port: PortId, now_ns: u64) {
        if self.pinned_port(mac).is_some() {
            return; // static: never moved by learning
        }
        if let Some(e) = self.learnt.iter_mut().find(|e| e.mac == mac) {
            e.port = port;
            e.seen_ns = now_ns;
            return;
        }
        if self.capacity == 0 {
            return;
        }
        if self.learnt.len() >= self.capacity {
            self.sweep(now_ns);
        }
        if self.learnt.len() >= self.capacity {
            // Evict the least recently seen entry.
            if let Some((i, _)) = self
                .learnt
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.seen_ns)
            {
                self.learnt.swap_remove(i);
                self.stats.evicted += 1;
            }
        }
        self.learnt.push(Entry {
            mac,
            port,
            seen_ns: now_ns,
        });
        self.stats.learned += 1;
    }

    /// Decides where `frame`, entering on `ingress` at `now_ns`, goes (and learns its source).
    pub fn forward(&mut self, ingress: PortId, frame: &[u8], now_ns: u64) -> Forward {
        let (Some(dst), Some(src)) = (Mac::dst_of(frame), Mac::src_of(frame)) else {
            return self.drop(DropReason::Runt);
        };
        let Some(state) = self.ports.get(usize::from(ingress)).copied() else {
            return self.drop(DropReason::PortDown);
        };
        if !state.up {
            return self.drop(DropReason::PortDown);
        }
        if !src.is_valid_unicast() {
            return self.drop(DropReason::BadSource);
        }
        if let Some(pin) = state.pinned
            && pin != src
        {
            self.ports[usize::from(ingress)].spoofed += 1;
            self.stats.spoofed += 1;
            return self.drop(DropReason::Spoofed);
        }
        self.learn(src, ingress, now_ns);
        if !dst.is_multicast()
            && let Some(p) = self.lookup(dst, now_ns)
        {
            if p == ingress {
                return self.drop(DropReason::Hairpin);
            }
            self.stats.unicast += 1;
            return Forward::To(p);
        }
        let mut set = self.up;
        set.remove(ingress);
        if set.is_empty() {
            return self.drop(DropReason::NoPeer);
        }
        self.stats.flooded += 1;
        Forward::Flood(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u8) -> Mac {
        Mac([0x52, 0x54, 0, 0x12, 0x34, n])
    }

    fn frame(dst: Mac, src: Mac) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst.0);
        f.extend_from_slice(&src.0);
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&[0u8; 46]);
        f
    }

    const UP: PortId = 0;
    const STACK: PortId = 1;

    fn bridge() -> Bridge {
        let mut b = Bridge::new(4, 1000);
        b.add_port(UP, None).unwrap();
        b.add_port(STACK, Some(mac(15))).unwrap();
        b.add_port(2, Some(mac(20))).unwrap();
        b.add_port(3, Some(mac(21))).unwrap();
        b
    }

    #[test]
    fn mac_parse_and_display() {
        let m = Mac::parse("52:54:00:12:34:AB").unwrap();
        assert_eq!(m, Mac([0x52, 0x54, 0, 0x12, 0x34, 0xab]));
        assert_eq!(alloc::format!("{m}"), "52:54:00:12:34:ab");
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:ab:",
            "52-54-00-12-34-ab",
            "g2:54:00:12:34:ab",
            "52:54:00:12:34:+b",
        ] {
            assert_eq!(Mac::parse(bad), None, "{bad:?}");
        }
        assert!(Mac::BROADCAST.is_multicast());
        assert!(!Mac::default().is_valid_unicast());
    }

    #[test]
    fn learning_unicast_and_flooding() {
        let mut b = bridge();
        let host = mac(2);
        // Unknown destination from a guest: flooded to every other port.
        let f = b.forward(2, &frame(host, mac(20)), 0);
        assert_eq!(f, Forward::Flood(PortSet(0b1011)));
        // The host answers on the uplink: learnt there, delivered to the guest's pinned port.
        assert_eq!(b.forward(UP, &frame(mac(20), host), 1), Forward::To(2));
        assert_eq!(b.lookup(host, 1), Some(UP));
        assert_eq!(b.forward(2, &frame(host, mac(20)), 2), Forward::To(UP));
        // Broadcast and multicast always flood, never back to the ingress port.
        assert_eq!(
            b.forward(3, &frame(Mac::BROADCAST, mac(21)), 3),
            Forward::Flood(PortSet(0b0111))
        );
        let mcast = Mac([0x01, 0, 0x5e, 0, 0, 1]);
        assert_eq!(
            b.forward(UP, &frame(mcast, host), 3),
            Forward::Flood(PortSet(0b1110))
        );
        // Guest to guest and to the stack.
        assert_eq!(b.forward(3, &frame(mac(20), mac(21)), 4), Forward::To(2));
        assert_eq!(
            b.forward(3, &frame(mac(15), mac(21)), 4),
            Forward::To(STACK)
        );
        // A destination on the ingress port is dropped.
        let other = mac(3);
        b.forward(UP, &frame(host, other), 5);
        assert_eq!(
            b.forward(UP, &frame(other, host), 5),
            Forward::Drop(DropReason::Hairpin)
        );
    }

    #[test]
    fn spoofing_is_dropped_and_counted() {
        let mut b = bridge();
        // Guest 2 claims guest 3's MAC, or a random one, or a multicast one.
        for src in [mac(21), mac(99)] {
            assert_eq!(
                b.forward(2, &frame(Mac::BROADCAST, src), 0),
                Forward::Drop(DropReason::Spoofed)
            );
        }
        assert_eq!(
            b.forward(2, &frame(mac(1), Mac::BROADCAST), 0),
            Forward::Drop(DropReason::BadSource)
        );
        assert_eq!(b.spoofed(2), 2);
        assert_eq!(b.spoofed(3), 0);
        assert_eq!(b.stats().spoofed, 2);
        // Nothing was learnt: guest 3's MAC still leads to guest 3.
        assert_eq!(b.lookup(mac(21), 0), Some(3));
        assert_eq!(b.lookup(mac(99), 0), None);
        // Even the uplink cannot move a pinned MAC.
        b.forward(UP, &frame(Mac::BROADCAST, mac(21)), 1);
        assert_eq!(b.lookup(mac(21), 1), Some(3));
        assert_eq!(b.forward(2, &frame(mac(21), mac(20)), 1), Forward::To(3));
        // Runts and frames from ports that are not up.
        assert_eq!(b.forward(2, &[0u8; 13], 0), Forward::Drop(DropReason::Runt));
        assert_eq!(
            b.forward(9, &frame(mac(1), mac(5)), 0),
            Forward::Drop(DropReason::PortDown)
        );
    }

    #[test]
    fn pinned_macs_are_unique_and_ports_come_and_go() {
        let mut b = bridge();
        assert_eq!(b.add_port(4, Some(mac(20))), Err(Error::MacInUse));
        assert_eq!(b.add_port(4, Some(Mac::BROADCAST)), Err(Error::BadMac));
        assert_eq!(b.add_port(2, None), Err(Error::PortInUse));
        assert_eq!(b.add_port(64, None), Err(Error::BadPort));
        b.forward(UP, &frame(Mac::BROADCAST, mac(2)), 0);
        b.remove_port(2);
        assert_eq!(b.lookup(mac(20), 0), None);
        assert_eq!(
            b.forward(2, &frame(mac(2), mac(20)), 0),
            Forward::Drop(DropReason::PortDown)
        );
        // Unknown now: flooded to the remaining ports.
        assert_eq!(
            b.forward(UP, &frame(mac(20), mac(2)), 0),
            Forward::Flood(PortSet(0b1010))
        );
        // The guest reconnects (a new generation) with the same MAC.
        b.add_port(2, Some(mac(20))).unwrap();
        assert_eq!(b.forward(UP, &frame(mac(20), mac(2)), 0), Forward::To(2));
        b.remove_port(UP);
        assert_eq!(
            b.lookup(mac(2), 0),
            None,
            "entries learnt on a removed port go"
        );
    }

    #[test]
    fn aging_and_bounded_table() {
        let mut b = bridge();
        for n in 0..10u8 {
            b.forward(UP, &frame(Mac::BROADCAST, mac(100 + n)), u64::from(n));
            assert!(b.learnt_len() <= 4);
        }
        assert_eq!(b.stats().evicted, 6);
        // The oldest went first: the last four are known.
        for n in 0..6u8 {
            assert_eq!(b.lookup(mac(100 + n), 10), None);
        }
        for n in 6..10u8 {
            assert_eq!(b.lookup(mac(100 + n), 10), Some(UP));
        }
        // Refreshing keeps an entry; the others expire after 1000 ns.
        b.forward(UP, &frame(Mac::BROADCAST, mac(109)), 900);
        assert_eq!(b.lookup(mac(106), 1006), None);
        assert_eq!(b.lookup(mac(107), 1006), Some(UP));
        assert_eq!(b.lookup(mac(109), 1006), Some(UP));
        b.sweep(1010);
        assert_eq!(b.learnt_len(), 1);
        assert_eq!(b.stats().aged, 3);
        // Expired destinations are flooded again.
        assert_eq!(
            b.forward(2, &frame(mac(106), mac(20)), 1010),
            Forward::Flood(PortSet(0b1011))
        );
    }
}
