//! # iconnect: semantic negotiation between a VM and an iConnect driver domain
//!
//! Xen's split drivers negotiate *mechanism* (ring references, event channels, features) through
//! keys in the xenbus device directories. iConnect adds *meaning*: what service level a VM asks
//! for, and what the backend grants. This crate defines those keys, typed representations, strict
//! parsers and formatters, and the pure admission logic. It does no I/O: a [`KeySource`] supplies
//! key values (a xenstore directory snapshot, or the QEMU channel's control page) and a
//! [`KeySink`] receives the backend's answer. `#![no_std]`, no allocation, no `unsafe`.
//!
//! ## Keys written by the VM (frontend device directory)
//!
//! | key | value | meaning |
//! |-----|-------|---------|
//! | `iconnect-qos-guaranteed-bps` | decimal u64 | rate the VM must always get, bits/s (0 = none) |
//! | `iconnect-qos-ceiling-bps` | decimal u64 > 0 | rate never exceeded, bits/s |
//! | `iconnect-qos-burst-bytes` | decimal u64 > 0 | bytes that may be sent above the rate at once |
//! | `iconnect-qos-class` | `realtime` \| `interactive` \| `bulk` \| `background` | priority/latency class |
//! | `iconnect-storage-volume` | name, 1–64 of `[a-z0-9._-]`, starting alphanumeric | which of the VM's volumes (never a location: local or remote is the platform's choice) |
//! | `iconnect-storage-durable-flush` | `0` \| `1` | a completed flush must mean data is on stable storage |
//! | `iconnect-media-direction` | `playback` \| `capture` | stream direction |
//! | `iconnect-media-format` | sndif format name (`s16_le`, `float_le`, ...) | sample format |
//! | `iconnect-media-rate-hz` | decimal, 4000–384000 | sample rate |
//! | `iconnect-media-channels` | decimal, 1–64 | channels |
//! | `iconnect-media-class` | as `iconnect-qos-class` | priority/latency class |
//!
//! Xen's own `rate = "<bytes>,<usecs>"` key, which `xl` writes into the *backend* directory for a
//! vif `rate=` setting, is read as an administrative ceiling ([`qos::XenRate`]); the effective ceiling
//! is the lower of it and `iconnect-qos-ceiling-bps`.
//!
//! ## Keys written by the backend (backend device directory)
//!
//! | key | value |
//! |-----|-------|
//! | `iconnect-<area>-status` | `granted` \| `refused` (area = `qos`, `storage`, `media`) |
//! | `iconnect-<area>-reason` | when refused: `over-capacity` \| `invalid-request` \| `unsupported` \| `policy` \| `unknown-volume` |
//! | `iconnect-<area>-error-key` | when refused as `invalid-request`: the offending key |
//! | `iconnect-qos-granted-guaranteed-bps`, `-ceiling-bps`, `-burst-bytes`, `-class` | the granted QoS |
//! | `iconnect-storage-granted-durable-flush` | `0` \| `1` |
//! | `iconnect-media-granted-rate-hz`, `-channels`, `-format` | the granted stream shape |
//!
//! ## Parsing rules
//! Numbers are plain ASCII decimal: no sign, no spaces, no leading zeros (except `0` itself), no
//! overflow. Enumerated values match exactly (lower case). A missing optional key takes its
//! documented default; keys this crate does not know are ignored. Every error names the key
//! ([`Error`]), so a backend can answer `invalid-request` with `iconnect-<area>-error-key`.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod fuzzing;
pub mod keys;
pub mod media;
pub mod qos;
pub mod storage;

pub use keys::{KeySink, KeySource};

/// Every error of this crate; `key` names the xenbus key concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Error {
    /// A required key is absent.
    Missing {
        /// The key.
        key: &'static str,
    },
    /// The value is not a plain decimal number.
    NotANumber {
        /// The key.
        key: &'static str,
    },
    /// The number is outside the allowed range.
    OutOfRange {
        /// The key.
        key: &'static str,
    },
    /// The value is not one of the allowed words.
    BadToken {
        /// The key.
        key: &'static str,
    },
    /// A name with characters or a length outside the rules.
    BadName {
        /// The key.
        key: &'static str,
    },
    /// Values of several keys contradict each other (e.g. guaranteed above ceiling).
    Inconsistent {
        /// The key reported as wrong.
        key: &'static str,
    },
    /// The key sink refused a write (full, or store error).
    Sink,
}

impl Error {
    /// The key concerned, if any.
    pub fn key(&self) -> Option<&'static str> {
        match *self {
            Error::Missing { key }
            | Error::NotANumber { key }
            | Error::OutOfRange { key }
            | Error::BadToken { key }
            | Error::BadName { key }
            | Error::Inconsistent { key } => Some(key),
            Error::Sink => None,
        }
    }
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Error::Missing { key } => write!(f, "{key}: missing"),
            Error::NotANumber { key } => write!(f, "{key}: not a plain decimal number"),
            Error::OutOfRange { key } => write!(f, "{key}: out of range"),
            Error::BadToken { key } => write!(f, "{key}: not an allowed value"),
            Error::BadName { key } => write!(f, "{key}: invalid name"),
            Error::Inconsistent { key } => write!(f, "{key}: contradicts another key"),
            Error::Sink => f.write_str("key sink refused a write"),
        }
    }
}

impl core::error::Error for Error {}

/// Priority/latency class shared by network and media requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Class {
    /// Latency-critical (audio, control loops): served first, small queues.
    Realtime,
    /// Interactive traffic.
    Interactive,
    /// Throughput traffic (the default).
    #[default]
    Bulk,
    /// Only when nothing else wants the resource.
    Background,
}

impl Class {
    /// The key value.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Realtime => "realtime",
            Class::Interactive => "interactive",
            Class::Bulk => "bulk",
            Class::Background => "background",
        }
    }
    /// Parses a key value.
    pub fn parse(key: &'static str, v: &str) -> Result<Self, Error> {
        Ok(match v {
            "realtime" => Class::Realtime,
            "interactive" => Class::Interactive,
            "bulk" => Class::Bulk,
            "background" => Class::Background,
            _ => return Err(Error::BadToken { key }),
        })
    }
}

/// Why a backend refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefuseReason {
    /// Granting it would exceed what the backend can guarantee.
    OverCapacity,
    /// A key was malformed or inconsistent.
    InvalidRequest,
    /// The backend does not offer this kind of service.
    Unsupported,
    /// The platform's policy forbids it for this VM.
    Policy,
    /// The VM has no volume of that name.
    UnknownVolume,
}

impl RefuseReason {
    /// The key value.
    pub fn as_str(self) -> &'static str {
        match self {
            RefuseReason::OverCapacity => "over-capacity",
            RefuseReason::InvalidRequest => "invalid-request",
            RefuseReason::Unsupported => "unsupported",
            RefuseReason::Policy => "policy",
            RefuseReason::UnknownVolume => "unknown-volume",
        }
    }
    /// Parses a key value.
    pub fn parse(key: &'static str, v: &str) -> Result<Self, Error> {
        Ok(match v {
            "over-capacity" => RefuseReason::OverCapacity,
            "invalid-request" => RefuseReason::InvalidRequest,
            "unsupported" => RefuseReason::Unsupported,
            "policy" => RefuseReason::Policy,
            "unknown-volume" => RefuseReason::UnknownVolume,
            _ => return Err(Error::BadToken { key }),
        })
    }
}

/// A backend's answer to a request of type `G`'s area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision<G> {
    /// Granted, with what was granted.
    Granted(G),
    /// Refused.
    Refused {
        /// Why.
        reason: RefuseReason,
        /// For `InvalidRequest`: the offending key.
        error_key: Option<&'static str>,
    },
}

impl<G> Decision<G> {
    /// Refusal for a request that failed to parse.
    pub fn invalid(e: Error) -> Self {
        Decision::Refused {
            reason: RefuseReason::InvalidRequest,
            error_key: e.key(),
        }
    }
}

/// Key names of one negotiation area's answer.
#[derive(Debug, Clone, Copy)]
pub struct AnswerKeys {
    /// `iconnect-<area>-status`.
    pub status: &'static str,
    /// `iconnect-<area>-reason`.
    pub reason: &'static str,
    /// `iconnect-<area>-error-key`.
    pub error_key: &'static str,
}

/// Writes the status/reason part of a decision (the granted values are written by the area).
pub(crate) fn write_decision_head<G, S: KeySink + ?Sized>(
    d: &Decision<G>,
    k: &AnswerKeys,
    sink: &mut S,
) -> Result<(), Error> {
    match d {
        Decision::Granted(_) => sink.set(k.status, "granted"),
        Decision::Refused { reason, error_key } => {
            sink.set(k.status, "refused")?;
            sink.set(k.reason, reason.as_str())?;
            if let Some(ek) = error_key {
                sink.set(k.error_key, ek)?;
            }
            Ok(())
        }
    }
}

/// A refusal as read back: reason and optional offending key.
pub(crate) type Refusal = (RefuseReason, Option<&'static str>);

/// Reads the status/reason part of a decision; `Ok(None)` = no status key (not answered yet),
/// `Ok(Some(None))` = granted (the caller reads the values), `Ok(Some(Some(refusal)))` = refused.
pub(crate) fn read_decision_head<S: KeySource + ?Sized>(
    k: &AnswerKeys,
    src: &S,
) -> Result<Option<Option<Refusal>>, Error> {
    let Some(status) = src.get(k.status) else {
        return Ok(None);
    };
    match status {
        "granted" => Ok(Some(None)),
        "refused" => {
            let reason = RefuseReason::parse(
                k.reason,
                src.get(k.reason).ok_or(Error::Missing { key: k.reason })?,
            )?;
            let error_key = match src.get(k.error_key) {
                None => None,
                Some(v) => Some(keys::known_key(v).ok_or(Error::BadToken { key: k.error_key })?),
            };
            Ok(Some(Some((reason, error_key))))
        }
        _ => Err(Error::BadToken { key: k.status }),
    }
}
