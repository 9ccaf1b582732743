//! # netswitch: the network driver domain's switch
//!
//! `net-dd` connects *ports*: the uplink NIC, its own TCP/IP stack, and one port per guest
//! (an iConnect channel served by the `netback` engine). This crate is the platform-independent
//! part in between, with no I/O and no clock of its own (time is passed in as nanoseconds, so
//! host simulations are deterministic):
//!
//! * [`bridge`] — a learning bridge. Source MACs are learnt per port with aging; unicast to a
//!   known MAC goes to its port, broadcast/multicast/unknown destinations are flooded to every
//!   other port that is up, and nothing ever goes back out of the port it came in on. A guest
//!   port is *pinned* to the MAC its frontend announced: a frame with any other source is
//!   dropped and counted (spoofing), and the pinned MAC is a static entry that learning can never
//!   move. The table has a fixed capacity; learnt entries beyond it evict the oldest learnt
//!   entry, and since guests can only ever send with their pinned MAC, no guest can grow it.
//! * [`sched`] — the QoS scheduler for guest traffic. Each guest port's grant
//!   (`iconnect::qos::NetQosGrant`: guaranteed rate, ceiling, burst, class; admitted by
//!   `iconnect::qos::LinkAdmission`) becomes two token buckets; the whole switch egress is
//!   shaped by a link bucket at `link_bps`. Decisions are made *before* a frame is taken from a
//!   guest's TX ring (pull scheduling, like xen-netback's credit scheduler): a port that is not
//!   picked simply leaves its requests in its ring, so an over-eager guest is back-pressured
//!   into its own ring instead of having frames dropped inside the driver domain, and the
//!   domain's memory does not grow with the offered load. See the module doc for the order
//!   (latency class within its guarantee, guarantees, spare capacity in proportion to weights,
//!   ceilings never exceeded).
//!
//! ## Evidence (`cargo test -p netswitch`)
//! Unit tests per module; `tests/qos_sim.rs` runs deterministic simulations of saturated and
//! bursty guests (2× guarantee gets ≈2×, a flooding port cannot push a guaranteed port below
//! 95 % of its guarantee, ceilings and the link rate hold, the latency class waits at most about
//! one frame time) and property tests of the scheduler's invariants over random admitted
//! configurations; `tests/bridge_props.rs` checks the bridge against a model (never back to the
//! ingress port, spoofed frames never forwarded, the table never above capacity).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod bridge;
pub mod sched;

pub use bridge::{Bridge, DropReason, Forward, Mac, PortSet};
pub use sched::{Grant, Phase, Pick, PortQos, Scheduler};

/// A port number (0..[`MAX_PORTS`]).
pub type PortId = u8;

/// Ports a switch can have (a [`PortSet`] is a 64-bit mask).
pub const MAX_PORTS: usize = 64;

/// Every error of this crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Error {
    /// The port number is at or above [`MAX_PORTS`].
    BadPort,
    /// The port is already present.
    PortInUse,
    /// The port is not present.
    NoSuchPort,
    /// The MAC is pinned to another port already.
    MacInUse,
    /// The MAC cannot be a port's address (multicast, broadcast or all zero).
    BadMac,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Error::BadPort => "port number out of range",
            Error::PortInUse => "port already present",
            Error::NoSuchPort => "no such port",
            Error::MacInUse => "mac-in-use",
            Error::BadMac => "bad-mac",
        })
    }
}

impl core::error::Error for Error {}
