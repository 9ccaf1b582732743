//! # media-dsp: the audio signal path of the media driver domain
//!
//! Pure, `no_std` (+`alloc`), `forbid(unsafe_code)` DSP that `media-dd` runs between its guests'
//! sndif streams and its one sound device. Nothing here does I/O or keeps time: callers push
//! samples in and pull frames out, so every behaviour is reproducible on the host.
//!
//! **Integer signal path.** The images are built for `x86_64-unknown-none`, which has no SSE
//! (soft-float: every `f32` operation is a library call). So everything per sample is integer:
//! samples are Q31 `i32`, filter coefficients Q30, gains Q28, sums 64-bit, saturated to Q31
//! once at the end; floating point runs only per block (dB to gain, level meters) and in the
//! `f32` convenience wrappers the tests use. Measured quality is unchanged by this (SNR > 88 dB).
//!
//! * [`format`] — sample formats (every linear PCM `XENSND_PCM_FORMAT_*`: s8/u8, s16/u16,
//!   s24/u24 in 4 bytes, s32/u32, f32, f64, both byte orders) to and from `f32` (float path) and
//!   Q31 (integer path, lossless when widening). Hostile floats (NaN, inf, out of range) are
//!   sanitised on input; output saturates, never wraps.
//! * [`channels`] — mono/stereo/N mapping and downmix (5.1 to stereo) of Q31 frames, never
//!   clipping.
//! * [`resample`] — a rational polyphase Kaiser-windowed-sinc resampler (about 90 dB stop-band,
//!   Q30 coefficients, 64-bit accumulation),
//!   streaming with state across blocks of any size, output independent of the chunking.
//! * [`mixer`] — N streams, each with its own rate/channels/priority, mixed at the device's
//!   native rate and channels: per-channel guest volume and mute, platform cap and mute,
//!   priority ducking with attack/release/hold ramps, all gain changes ramped per sample;
//!   `f32` summing clamped to full scale; exact per-stream play positions.
//! * [`fanout`] — capture: one device stream decoded once and delivered to each consumer in its
//!   own rate and channels.
//! * [`measure`] — sines, Goertzel, least-squares sine fit (frequency, amplitude, SNR), RMS:
//!   the instruments of the tests, the benchmark and level meters.
//!
//! ## Evidence (`cargo test -p media-dsp`, `cargo bench -p media-dsp`)
//! `tests/signal.rs` measures on synthetic signals: SNR and frequency of resampled sines for
//! 44.1k<->48k, 8k/16k->48k and 48k->8k/16k, pass-band flatness, alias and image rejection,
//! block-size independence, mixing levels, ducking depth and ramp smoothness, volume/mute/cap,
//! saturation, capture fan-out to several rates; `tests/props.rs` checks with proptest that no
//! input (any bytes, any block sizes) panics, overflows or leaves `[-1, 1]`. `benches/dsp.rs`
//! measures mixer and resampler throughput in frames per second on one core.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod channels;
pub mod fanout;
mod fifo;
pub mod format;
pub mod measure;
pub mod mixer;
pub mod resample;
mod slots;

pub use fanout::{ConsumerId, ConsumerStats, FanOut};
pub use format::SampleFormat;
pub use mixer::{DuckConfig, MixStats, Mixer, MixerConfig, StreamId, StreamParams, StreamStats};
pub use resample::Resampler;

/// Every error of this crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Error {
    /// A sample format this crate does not convert (compressed, mu-law, ...).
    UnsupportedFormat,
    /// A rate outside 1 kHz..768 kHz, or a ratio needing more than 2560 polyphase
    /// phases or a 1 MiB filter.
    UnsupportedRate,
    /// Zero or more than 64 channels.
    UnsupportedChannels,
    /// A buffer is not a whole number of samples/frames, or input and output disagree.
    Length,
    /// A stream or consumer handle that does not exist.
    NoSuchStream,
    /// No room for another stream or consumer.
    TooManyStreams,
    /// A parameter outside its range (channel index, capacity, non-finite gain).
    BadParameter,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Error::UnsupportedFormat => "unsupported sample format",
            Error::UnsupportedRate => "unsupported sample rate or rate ratio",
            Error::UnsupportedChannels => "unsupported channel count",
            Error::Length => "buffer length is not a whole number of frames",
            Error::NoSuchStream => "no such stream",
            Error::TooManyStreams => "too many streams",
            Error::BadParameter => "parameter out of range",
        })
    }
}

impl core::error::Error for Error {}

/// dB to linear amplitude gain (`-inf` dB and below -200 dB give 0).
pub fn db_to_gain(db: f32) -> f32 {
    if db <= -200.0 {
        0.0
    } else {
        libm::powf(10.0, db / 20.0)
    }
}

/// Linear amplitude gain to dB (0 gives `-inf`).
pub fn gain_to_db(g: f32) -> f32 {
    20.0 * libm::log10f(g)
}
