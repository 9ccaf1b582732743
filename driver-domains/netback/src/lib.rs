//! # netback: the platform-independent Xen network backend engine
//!
//! A Linux `xen-netfront` (or any netif frontend) talks to its backend through two shared rings
//! (`public/io/netif.h`) and grant references to its packet buffers. This crate is the backend's
//! logic for one such interface, with no I/O of its own and no `unsafe`:
//!
//! * [`Netback`] — the engine over the two rings ([`xen_abi::ring::BackRing`]):
//!   - **TX** (guest → backend, [`Netback::poll_tx`]): consumes tx requests, assembles packets
//!     across slots (`NETTXF_more_data`, extra-info slots) with xen-abi's
//!     [`TxPacketReader`](xen_abi::netif::TxPacketReader), validates them like Linux netback,
//!     copies the data out through [`GrantAccess`] into a private frame buffer, answers every slot
//!     (`OKAY`, `ERROR`, `NULL` for extra-info slots) and hands the frame to the caller.
//!   - **RX** (backend → guest, [`Netback::queue_rx`] + [`Netback::poll_rx`]): queues frames in a
//!     bounded queue (drops with a counter when full, never blocks), and when the frontend has
//!     posted enough buffers copies each frame into them through [`GrantAccess`] (one page per
//!     slot, several slots with `feature-sg`), writing rx responses with the negotiated checksum
//!     flags.
//!   - Rate: Xen's vif `rate = "<bytes>,<usecs>"` as a TX ceiling ([`Netback::set_tx_rate`]),
//!     with Linux netback's credit windows; time is passed in (`poll_tx(now_us, ..)`), so
//!     simulations are deterministic.
//!   - Notifications: every poll reports whether the frontend must be kicked
//!     (`RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`) and whether work remains after the final check
//!     for requests (`RING_FINAL_CHECK_FOR_REQUESTS`), so the owner knows when it may sleep.
//! * [`grant`] — [`GrantAccess`], the seam to a frontend's buffers by `(gref, offset, len)`: Xen
//!   implements it with `GNTTABOP_copy` (`rt::xen::copy_from_grant`/`copy_to_grant`), the QEMU
//!   platform with references into an ivshmem data area; [`grant::FakeGrants`] is a map of
//!   grant refs to pages for tests.
//! * [`negotiate`] — xenbus keys as pure logic: what the backend advertises, strict parsing of
//!   what the frontend wrote (rings, event channels, `request-rx-copy`, features), and Xen's
//!   `rate` key (parsed by `iconnect`).
//! * [`csum`] — fills in TCP/UDP checksums of frames sent with a blank checksum, for peers that
//!   cannot take checksum offload.
//! * [`fuzzing`] — fuzz entry points (also run, seeded, by `cargo test`).
//!
//! ## Evidence (`cargo test -p netback`)
//! Unit tests per module; `tests/sim.rs`: a simulated netfront written from `netif.h` (it
//! initialises the rings, grants its pages in [`grant::FakeGrants`], splits frames into slots at
//! random page offsets) drives thousands of random-size packets both ways byte-exact, plus
//! notifications, checksum flags, the rate ceiling and guest-to-guest through two engines;
//! `tests/hostile.rs`: every fault as a unit case and a property test mixing valid and hostile
//! packets against a model; `tests/two_threads.rs`: frontend and engine on two threads that
//! sleep on simulated event channels (no lost wakeup); `tests/fuzz_smoke.rs`: the [`fuzzing`]
//! entry points on seeded inputs.
//!
//! ## Trust
//! Everything the frontend writes is hostile until validated: ring indices (checked by the ring),
//! slot contents (checked before any copy), grant references (a bad one makes the copy fail,
//! which becomes an error response). The engine never asks [`GrantAccess`] for a range outside one
//! page. A violation Linux netback treats as fatal (an impossible producer index, a slot crossing
//! its page, more than [`xen_abi::netif::NR_SLOTS_MIN`] slots, a packet cut off at the producer
//! index, an invalid extra-info slot) breaks this interface only: the engine returns the error
//! and refuses further work, and the owner tears the vif down. Lesser faults (runt packets,
//! fragments larger than the announced size, failed copies) cost the frontend that packet
//! (error responses) and are counted in [`Stats`].
//!
//! Deviations from Linux netback (stricter, on purpose): unknown `NETTXF_*` bits, a fragment
//! with `NETTXF_extra_info`, and duplicate extra-info types are fatal (Linux ignores them); more
//! than 18 data slots is fatal (Linux drops 19–20 and kills above). GSO and multicast-control
//! extra-info are not advertised, so packets carrying them are answered with `ERROR`.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod csum;
pub mod engine;
pub mod fuzzing;
pub mod grant;
pub mod negotiate;

pub use engine::{Netback, RxMeta, RxPoll, RxPush, Stats, TxFrame, TxPoll};
pub use grant::GrantAccess;
pub use negotiate::{BackendFeatures, FrontendConfig};

/// Every error of this crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Error {
    /// A ring-level violation (impossible producer index, ring already broken, region too
    /// small), from `xen-abi`. Fatal for the interface.
    Ring(xen_abi::Error),
    /// A TX packet violated a rule Linux netback treats as fatal; the value says which
    /// (from `xen-abi`'s validators). Fatal for the interface.
    BadTxPacket(xen_abi::Error),
    /// A TX packet was not complete at the producer index (`NETTXF_more_data` or an extra-info
    /// chain ran past the published requests). Fatal for the interface.
    IncompletePacket,
    /// More data slots in one packet than `XEN_NETIF_NR_SLOTS_MIN`. Fatal for the interface.
    TooManySlots,
    /// The interface was broken by an earlier fatal error.
    Broken,
    /// A grant copy failed (bad reference, no permission, range outside the grant).
    GrantCopy,
    /// A frame is empty or larger than the negotiated maximum.
    FrameSize,
    /// The RX queue is full; the frame was dropped.
    QueueFull,
    /// A frame's checksum could not be completed (not TCP/UDP over IPv4/IPv6, or truncated).
    Checksum,
    /// A required xenbus key is missing.
    MissingKey(&'static str),
    /// A xenbus key has a value outside its strict syntax or range.
    BadKey(&'static str),
    /// The frontend did not write `request-rx-copy = 1` (only copying receivers are supported).
    RxCopyRequired,
}

impl Error {
    /// Whether the error is fatal for the interface (the frontend broke the protocol).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Error::Ring(_)
                | Error::BadTxPacket(_)
                | Error::IncompletePacket
                | Error::TooManySlots
                | Error::Broken
        )
    }
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Ring(e) => write!(f, "ring: {e}"),
            Error::BadTxPacket(e) => write!(f, "malformed tx packet: {e}"),
            Error::IncompletePacket => f.write_str("tx packet cut off at the producer index"),
            Error::TooManySlots => f.write_str("tx packet uses more than 18 slots"),
            Error::Broken => f.write_str("interface broken by an earlier fatal error"),
            Error::GrantCopy => f.write_str("grant copy failed"),
            Error::FrameSize => f.write_str("frame empty or too large"),
            Error::QueueFull => f.write_str("rx queue full"),
            Error::Checksum => f.write_str("cannot complete the frame's checksum"),
            Error::MissingKey(k) => write!(f, "{k}: missing"),
            Error::BadKey(k) => write!(f, "{k}: invalid value"),
            Error::RxCopyRequired => f.write_str("frontend does not request rx-copy"),
        }
    }
}

impl core::error::Error for Error {}
