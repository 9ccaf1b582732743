//! # iconnect-channel: one iConnect channel over one shared region
//!
//! On the QEMU platform a channel between a backend (a driver domain) and a frontend (a guest)
//! is one `ivshmem-doorbell` region (`hal::ivshmem::SharedRegion`, any
//! [`SharedMem`](xen_abi::shmem::SharedMem)). This crate defines what lives in that region and
//! the two endpoints that use it. It plays the parts Xen splits between xenstore (states and
//! keys), the grant table (references to data pages) and event channels (doorbell vectors,
//! which stay outside: the caller rings after a `notify` flag). `#![no_std]` + `alloc`, no
//! `unsafe`: everything the peer writes is copied out through the seam, then strictly parsed.
//!
//! ## Region layout (all offsets in bytes, little-endian, pages of 4 KiB)
//!
//! | region pages | what | written by |
//! |---|---|---|
//! | 0 | control page | header and ring descriptors: frontend; each end block and key area: its end |
//! | `ring[i].first_page ..` `+ 2^ring[i].page_order` | ring *i*, `io/ring.h` layout ([`xen_abi::ring`]) | frontend initialises; then indices per `ring.h` |
//! | `data_first_page ..` `+ data_pages` | data area: pages the frontend allocates and references in requests | both, per request |
//!
//! ### Control page
//!
//! | offset | size | field | written by |
//! |-------:|-----:|-------|------------|
//! | 0x000 | 4 | magic [`layout::MAGIC`] (`"ICCH"`) | frontend, at setup |
//! | 0x004 | 4 | layout version [`layout::VERSION`] | frontend |
//! | 0x008 | 8 | region size in bytes (must equal the backend's view) | frontend |
//! | 0x010 | 4 | number of rings, 1..=[`layout::MAX_RINGS`] | frontend |
//! | 0x014 | 4 | `data_first_page` | frontend |
//! | 0x018 | 4 | `data_pages` | frontend |
//! | 0x01c | 36 | reserved, zero | frontend |
//! | 0x040 | 64 | frontend end block (below) | frontend |
//! | 0x080 | 64 | backend end block | backend |
//! | 0x0c0 | 64 | reserved | — |
//! | 0x100 | 4 × 16 | ring descriptors: `first_page` u32, `page_order` u32 (`ring-page-order`, ≤ 4), `slot_bytes` u32 (size of the request/response union), `vector` u32 (doorbell vector of this ring) | frontend |
//! | 0x140 | 192 | reserved | — |
//! | 0x200 | 1792 | frontend key area | frontend |
//! | 0x900 | 1792 | backend key area | backend |
//!
//! End block (at 0x040 for the frontend, 0x080 for the backend):
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | +0x00 | 4 | xenbus state, 0..=8 as in `io/xenbus.h` ([`xen_abi::xenbus::XenbusState`]) |
//! | +0x04 | 4 | generation: bumped each time this end (re)starts (never 0 once started) |
//! | +0x08 | 4 | peer generation: the peer's generation this end's state answers |
//! | +0x0c | 4 | heartbeat: bumped by [`Backend::beat`]/[`Frontend::beat`] (liveness, caller-timed) |
//! | +0x10 | 4 | key sequence: odd while the key area is being rewritten (a seqlock) |
//! | +0x14 | 4 | key area length in bytes |
//!
//! An end interprets the peer's state only when the peer's "peer generation" equals its own
//! generation, so a state left over from an earlier session (a VM that restarted) is never
//! mistaken for an answer. A change of the peer's generation is a restart of the peer.
//!
//! Key area: `keys_len` bytes of records `[key_len u8][value_len u8][key][value]`; keys 1..=64
//! bytes of `[A-Za-z0-9._-]`, values 0..=255 bytes of printable ASCII, at most
//! [`keys::MAX_KEYS`] records, no duplicate key, records exactly filling `keys_len`
//! ([`keys::KeyMap`]). Anything else is [`Error::BadKeys`]: a protocol error of this channel.
//! The xenbus-like keys (`feature-*`, `mac`, ...) and the iConnect semantic keys (`iconnect-qos-*`
//! etc., parsed by the `iconnect` crate through [`iconnect::KeySource`]) live there.
//!
//! ## Handshake (xenbus, [`xen_abi::xenbus`] state machines)
//! The backend starts ([`Backend::new`]): bumps its generation, publishes its keys, writes
//! `InitWait`. The frontend starts ([`Frontend::new`]): bumps its generation, writes
//! `Initialising`. When the frontend sees the backend's `InitWait` it lays out and writes the
//! header and ring descriptors, initialises every ring (`SHARED_RING_INIT`), publishes its keys,
//! and writes `Connected` (net style) or `Initialised` (block style). The backend then copies
//! the header once, validates it against the region (magic, version, size, rings inside the
//! region, not overlapping each other, the control page or the data area), reads the
//! frontend's keys and reports [`BackendEvent::Connect`]: its owner answers keys (e.g. a QoS
//! decision), takes its ring halves and accepts (`Connected`) or refuses (`Closing`). A peer
//! that writes garbage (bad state, header, keys) gets the channel closed; the error is reported
//! as [`BackendEvent::Failed`] and never disturbs anything outside this region.
//!
//! ## Data references
//! See [`data`]: the `u32` references in requests are data page numbers, validated like grant
//! references; [`DataArea`] implements the netback engine's grant seam
//! ([`netback::GrantAccess`]), so one backend engine serves Xen and this channel.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod data;
pub mod endpoint;
pub mod fuzzing;
pub mod keys;
pub mod layout;
pub mod liveness;
pub mod window;

pub use data::{DataArea, DataRef, PageAllocator};
pub use endpoint::{Backend, BackendEvent, Frontend, FrontendConfig, FrontendEvent};
pub use keys::KeyMap;
pub use layout::{Layout, RingDesc, RingSpec};
pub use liveness::Liveness;
pub use window::Window;

/// Every error of this crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Error {
    /// The region cannot hold a control page, one ring page and the layout asked for.
    RegionTooSmall,
    /// Control page magic is not [`layout::MAGIC`].
    BadMagic,
    /// Unsupported layout version.
    BadVersion,
    /// The region size in the header differs from the region.
    BadRegionSize,
    /// A ring descriptor (count, page range, order, slot size, vector) is invalid.
    BadRing,
    /// The data area lies outside the region or overlaps a ring or the control page.
    BadDataArea,
    /// A peer's xenbus state is outside 0..=8.
    BadState,
    /// The peer's key area is malformed (length, record, characters, duplicates).
    BadKeys,
    /// A key or value we were asked to publish breaks the key rules, or the area is full.
    KeyRejected,
    /// The peer's key area was being rewritten during every read attempt.
    KeysBusy,
    /// A data reference outside the data area.
    BadRef,
    /// Offset/length outside the referenced page or range.
    BadOffset,
    /// A buffer is shorter than its wire format.
    Truncated,
    /// Asked for a ring that does not exist or with a different slot size.
    RingMismatch,
    /// The rings are not set up (not connected yet).
    NotConnected,
    /// A ring-level error from `xen-abi`.
    Ring(xen_abi::Error),
}

impl From<xen_abi::Error> for Error {
    fn from(e: xen_abi::Error) -> Self {
        Error::Ring(e)
    }
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let s = match self {
            Error::RegionTooSmall => "region too small for the channel layout",
            Error::BadMagic => "bad control page magic",
            Error::BadVersion => "unsupported layout version",
            Error::BadRegionSize => "region size in the header differs from the region",
            Error::BadRing => "invalid ring descriptor",
            Error::BadDataArea => "invalid data area",
            Error::BadState => "peer xenbus state out of range",
            Error::BadKeys => "malformed key area",
            Error::KeyRejected => "key or value not publishable",
            Error::KeysBusy => "peer key area busy",
            Error::BadRef => "data reference outside the data area",
            Error::BadOffset => "offset/length outside the referenced range",
            Error::Truncated => "buffer too short",
            Error::RingMismatch => "no such ring or different slot size",
            Error::NotConnected => "channel not set up",
            Error::Ring(e) => return write!(f, "ring: {e}"),
        };
        f.write_str(s)
    }
}

impl core::error::Error for Error {}
