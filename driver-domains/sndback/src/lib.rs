//! # sndback: the platform-independent sndif backend engine
//!
//! A guest's virtual sound card (`public/io/sndif.h`, protocol 2; Linux `snd-xen-front`, or an
//! iConnect guest over a channel) is a set of streams, each with a request ring, an event page
//! and a shared buffer described by a page directory. This crate is the backend's logic for one
//! such card, with no I/O and no `unsafe`; the device side is shared by all guests:
//!
//! * [`Sndback`] ([`engine`]) — one frontend: validates and serves OPEN/CLOSE/READ/WRITE/
//!   SET_VOLUME/GET_VOLUME/MUTE/UNMUTE/TRIGGER/HW_PARAM_QUERY, copies through
//!   [`netback::GrantAccess`] (Xen grant copies, an iConnect channel's data area, or
//!   [`netback::grant::FakeGrants`] in tests), sends `CUR_POS` events as the device consumes or
//!   captures, answers every hostile value with an error status (never a panic, never a copy
//!   outside what was granted).
//! * [`Hub`] ([`hub`]) — the device: `media_dsp`'s mixer (playback of every guest, at the
//!   device's native format, with each guest's priority for ducking, platform cap and mute) and
//!   fan-out (capture, one device stream to every guest in its own format and rate). The media
//!   domain calls [`Hub::render`] and [`Hub::capture`] from its device loop; time is the device's
//!   frame count, so simulations are deterministic.
//! * [`Caps`] ([`caps`]) — what the platform offers: the hw-param query and OPEN validation.
//! * [`buffer`] — the page directory and byte-range copies over a stream's pages.
//! * [`negotiate`] — the semantic keys: what a guest's `iconnect::media::MediaRequest` is
//!   granted on this platform, and the mixing priority of its role.
//! * [`sim`] — a simulated frontend (test and benchmark support).
//! * [`fuzzing`] — a fuzz entry point (hostile frontend scripted by bytes), replayed with a
//!   committed corpus by `tests/corpus.rs`.
//!
//! The mixing priority of a guest's playback comes from its semantic keys
//! ([`negotiate::priority`]: alert > voice > media > background).
//!
//! ## Evidence (`cargo test -p sndback`)
//! `tests/sim.rs`: simulated frontends written from `sndif.h` (page directories, ALSA-like
//! buffer refills paced by `CUR_POS` events) play 440 Hz at 44.1 kHz s16 stereo and 660 Hz at
//! 48 kHz f32 mono into a 48 kHz s16 device: both tones at the right frequencies and levels;
//! an alert guest ducks them by the configured depth; two capture guests at 16 kHz and
//! 44.1 kHz receive the device's tone at the right frequency. `tests/hostile.rs`: every error
//! path as a unit case and a property test of random requests. `tests/corpus.rs`: the fuzz
//! entry point on the corpus and mutations.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod buffer;
pub mod caps;
pub mod engine;
pub mod fuzzing;
pub mod hub;
pub mod negotiate;
pub mod sim;

pub use caps::Caps;
pub use engine::{PollResult, RunState, Sndback, Stats, StreamInfo};
pub use hub::{DeviceConfig, Hub};

/// Errors of this crate (request-level faults are answered as [`Status`], not returned).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Error {
    /// The frontend violated the ring or event-page protocol (from `xen-abi`). Fatal.
    Ring(xen_abi::Error),
    /// The engine was broken by an earlier fatal error.
    Broken,
    /// A device-side DSP configuration error (from `media-dsp`).
    Dsp(media_dsp::Error),
    /// More than 64 streams on one frontend.
    TooManyStreams,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Ring(e) => write!(f, "ring: {e}"),
            Error::Broken => f.write_str("frontend broken by an earlier protocol violation"),
            Error::Dsp(e) => write!(f, "dsp: {e}"),
            Error::TooManyStreams => f.write_str("too many streams"),
        }
    }
}

impl core::error::Error for Error {}

/// Status of a response: a negative Xen errno (`xen/include/public/errno.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// `EIO`: a grant copy failed.
    Io,
    /// `EBUSY`: already open, or no room in the hub.
    Busy,
    /// `EINVAL`: malformed, not offered, wrong state or range.
    Inval,
    /// `ENOSPC`: a write larger than the room in the stream's queue.
    NoSpace,
    /// `EOPNOTSUPP`: unknown operation.
    NotSupported,
}

impl Status {
    /// The negative errno carried in the response.
    pub fn errno(self) -> i32 {
        match self {
            Status::Io => -5,
            Status::Busy => -16,
            Status::Inval => -22,
            Status::NoSpace => -28,
            Status::NotSupported => -95,
        }
    }
}
