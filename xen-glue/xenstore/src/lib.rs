//! # xenstore — the xenstore protocol, without `unsafe`
//!
//! Xen's configuration database is how domains find each other: device directories under
//! `/local/domain/<domid>/device/...` (frontend) and `.../backend/...` (backend) carry ring
//! references, event channels, states and, for iConnect, the semantic keys. A domain talks to the
//! daemon over one shared page (`io/xs_wire.h`) and an event channel.
//!
//! * [`wire`]: message header and payload conventions, path rules, error names;
//! * [`ring`]: the two 1 KiB byte rings of the shared page, on `xen_abi::shmem::SharedMem`, with
//!   every peer-written index validated;
//! * [`client`]: a non-blocking client (queue requests, pump bytes, collect replies by id, queue
//!   watch events) that the domain's event loop drives after each notification;
//! * [`sim`]: an in-memory daemon (nodes, watches, transactions) for host tests and seeded
//!   simulations of frontend↔backend handshakes.
//!
//! Nothing here blocks or reads a clock; the Xen glue in the images supplies the page, the event
//! channel and the waiting.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod client;
pub mod fuzzing;
pub mod ring;
pub mod sim;
pub mod wire;

pub use client::{Client, Request, TxId, WatchEvent};
pub use ring::{Side, XsRing};

/// Errors of the xenstore layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XsError {
    /// `ENOENT`: no such node (or transaction).
    NoEntry,
    /// `EACCES`.
    Denied,
    /// `EEXIST`.
    Exists,
    /// `EAGAIN`: the transaction raced another commit; retry it.
    Again,
    /// `EINVAL` or a malformed argument.
    Invalid,
    /// `E2BIG`/`ENOSPC`/`ENOMEM`: too large.
    TooBig,
    /// `EBUSY`.
    Busy,
    /// An error name this crate does not know.
    Other,
    /// A path that xenstored would refuse.
    BadPath,
    /// The peer broke the protocol (bad index, bad header): the connection is unusable.
    Protocol,
}
