//! # netfront: the platform-independent netif frontend engine
//!
//! The guest half of Xen's network protocol (`public/io/netif.h`), the mirror of the `netback`
//! engine: two shared rings and buffer pages the backend copies from and into. This crate has
//! no I/O of its own and no `unsafe`:
//!
//! * [`Netfront`] — the engine over the front halves of the TX and RX rings
//!   ([`xen_abi::ring::FrontRing`] over any [`SharedMem`]):
//!   - **TX** ([`Netfront::send`]): copies a frame into buffer pages (one slot per page;
//!     several slots chained with `NETTXF_more_data` when the backend offers `feature-sg`),
//!     posts the requests and publishes them at once; [`Netfront::poll`] consumes the responses
//!     and recycles the buffers. A frame that does not fit (ring or buffers exhausted) is
//!     refused with [`Error::Full`]: back-pressure, never a wait.
//!   - **RX**: keeps the RX ring filled with up to [`Config::rx_buffers`] buffers;
//!     [`Netfront::recv`] reassembles the next frame from rx responses (`NETRXF_more_data`),
//!     copies it out into a private `Vec` and reposts the buffers; [`Netfront::recycle`] takes
//!     the `Vec` back so the steady state allocates nothing.
//!   - Notifications: every publish applies the event-index rule
//!     (`RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`); [`Netfront::take_notify`] says which ring's
//!     doorbell to ring, and [`Netfront::idle`] is `RING_FINAL_CHECK_FOR_RESPONSES` on both
//!     rings, so the owner knows when it may sleep without missing a response.
//! * [`Buffers`] — where buffer pages come from and how their bytes are reached: on an iConnect
//!   channel, data pages of the channel's data area ([`channel::ChannelBuffers`]); on Xen,
//!   granted pages.
//!
//! Time is not needed by the engine (the owner paces it); everything is bounded per call.
//!
//! ## Trust
//! The backend is untrusted too: its producer index is checked by the ring (a violation breaks
//! the interface), every response id must name a slot this frontend has in flight (else the
//! interface is broken: [`Error::BadResponseId`]), every status, flag, offset and length is
//! checked before a byte is copied (a bad one costs the frame and is counted in [`Stats`]), and
//! a reassembled frame never grows beyond [`Config::max_frame`]. The engine never panics on
//! anything the backend wrote; after a fatal error every call returns [`Error::Broken`] and the
//! owner tears the channel down.
//!
//! ## Evidence (`cargo test -p netfront`)
//! `tests/over_channel.rs`: this engine against the real `netback` engine over a `HostMem`
//! iConnect channel: frames both ways byte-exact (single- and multi-slot), ring-full and
//! buffer back-pressure, notifications, a hostile backend (bad ids, statuses, lengths, wild
//! producer index) and property tests of random traffic against a model.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod channel;
mod engine;

pub use engine::{Config, Netfront, Notify, Poll, RxFrame, Stats};

use xen_abi::GrantRef;

/// Buffer pages shared with the backend (4 KiB each), named by the `u32` reference put into
/// ring requests (a grant reference on Xen, a data page number on an iConnect channel).
///
/// The engine takes pages once ([`alloc`](Self::alloc)) and keeps reusing them; it only writes
/// a page while no request naming it is in flight, and only reads one after the backend's
/// response returned it.
pub trait Buffers {
    /// A fresh page, or `None` when none is left.
    fn alloc(&mut self) -> Option<GrantRef>;
    /// Gives a page back (the engine no longer uses it).
    fn free(&mut self, page: GrantRef);
    /// Copies `src` into `page` at `offset` (`offset + src.len() <= 4096`).
    fn write(&mut self, page: GrantRef, offset: usize, src: &[u8]) -> Result<(), Error>;
    /// Copies `dst.len()` bytes of `page` at `offset` into `dst`.
    fn read(&mut self, page: GrantRef, offset: usize, dst: &mut [u8]) -> Result<(), Error>;
}

/// Every error of this crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Error {
    /// No room for the frame now (ring slots or buffer pages): try again after a
    /// [`Netfront::poll`] returned some.
    Full,
    /// The frame is empty or larger than the negotiated maximum.
    FrameSize,
    /// A ring-level violation by the backend (`rsp_prod` out of range). Fatal.
    Ring(xen_abi::Error),
    /// A response names a request id that is not in flight. Fatal.
    BadResponseId,
    /// A buffer page could not be read or written.
    Buffer,
    /// The interface was broken by an earlier fatal error.
    Broken,
}

impl Error {
    /// Whether the error breaks the interface (the backend broke the protocol).
    pub fn is_fatal(&self) -> bool {
        matches!(self, Error::Ring(_) | Error::BadResponseId | Error::Broken)
    }
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Full => f.write_str("no room in the tx ring or buffers"),
            Error::FrameSize => f.write_str("frame empty or too large"),
            Error::Ring(e) => write!(f, "ring: {e}"),
            Error::BadResponseId => f.write_str("backend answered an id that is not in flight"),
            Error::Buffer => f.write_str("buffer page access failed"),
            Error::Broken => f.write_str("interface broken by an earlier fatal error"),
        }
    }
}

impl core::error::Error for Error {}
