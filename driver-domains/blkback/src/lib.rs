//! # blkback: the platform-independent blkif backend engine
//!
//! A guest's block frontend (Linux `xen-blkfront`, or our iConnect block frontend on the QEMU
//! platform) talks to its backend through one shared ring of `public/io/blkif.h` requests and
//! grant references to its data pages. This crate is the storage driver domain's logic for one
//! such interface, with no I/O of its own and no `unsafe`:
//!
//! * [`Blkback`] ([`engine`]) — pops requests from the back ring, validates every field
//!   (operation, segment counts including indirect segments, sector ranges inside the volume,
//!   512- vs 4096-byte sectors), copies data through [`GrantAccess`], issues operations to a
//!   [`Volume`], answers bad requests with error responses, and answers a flush only once the
//!   volume says the data is durable.
//! * [`volume`] — the [`Volume`] seam: asynchronous submit + completion polling (a local
//!   virtio-blk slice and an NBD export with many requests in flight both fit), plus
//!   [`volume::MemVolume`], an in-memory volume with a volatile cache for tests.
//! * [`volumes`] — the platform's volume map (`vol=<name>:local:<offset>:<len>`,
//!   `vol=<name>:nbd://HOST:PORT/EXPORT`): parsing, non-overlap and in-disk checks, and
//!   [`volumes::Slice`], the only translation from volume to disk offsets (it refuses any range
//!   leaving the slice, so a guest can never reach another guest's blocks);
//!   [`volumes::DiskMux`] shares one local disk between the guests' engines through it.
//! * [`remote`] — [`remote::NbdVolume`], a [`Volume`] on an NBD export over the sans-IO
//!   `nbd` client: splitting, retry across reconnects, and a replay log so that no write the
//!   server acknowledged is lost before a flush makes it durable.
//! * [`fuzzing`] — a hostile frontend scripted by arbitrary bytes (fuzz entry point, replayed
//!   with its corpus by `cargo test`).
//! * [`negotiate`] — the xenbus keys the backend writes for a volume (`sectors`,
//!   `sector-size`, `feature-flush-cache`, `feature-discard`,
//!   `feature-max-indirect-segments`, ...) and strict parsing of the frontend's keys.
//!
//! `GrantAccess` is `netback`'s trait (Xen grant copies, or the iConnect channel's data area);
//! it is reused, not duplicated, until it moves to `xen-abi`.
//!
//! ## Evidence (`cargo test -p blkback`)
//! Unit tests per module; `tests/sim.rs`: a simulated blkfront written from `blkif.h` (it
//! initialises the ring, grants its pages in `FakeGrants`, builds direct and indirect
//! requests) drives the engine over `HostMem` with thousands of random reads/writes/discards/
//! flushes byte-exact against a model, with volumes completing out of order, 512- and
//! 4096-byte sectors, flush durability checked against the volume's durable image, every
//! hostile request as a unit case, and property tests mixing hostile and valid requests;
//! `tests/remote.rs`: the same frontend through the engine and [`remote::NbdVolume`] to a server
//! that loses unflushed writes when it crashes (the replay log must keep every acknowledged
//! write) and to the real `qemu-nbd`, killed twice mid-run (the image file must equal what the
//! guest wrote); `tests/over_channel.rs`: the engine serving a block-style iConnect channel,
//! volume chosen by `iconnect-storage-volume` from the platform's map; `tests/front.rs`:
//! the guest's `blkfront::Blkfront` against the engine (random workloads, over a channel too, hostile
//! responses); `tests/corpus.rs`: the [`fuzzing`] corpus. Measurements (not tests):
//! `cargo run --release -p blkback --example nbd_chain_iops`.
//!
//! ## Trust
//! Ring indices are checked by `xen-abi`'s ring (a violation breaks only this interface:
//! [`Error::Ring`], then [`Error::Broken`]); everything else a frontend can get wrong costs it
//! that one request, answered with `BLKIF_RSP_ERROR` / `BLKIF_RSP_EOPNOTSUPP`.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod engine;
pub mod fuzzing;
pub mod negotiate;
pub mod remote;
pub mod volume;
pub mod volumes;

pub use engine::{Blkback, Config, Poll, Stats};
pub use netback::GrantAccess;
pub use volume::{Geometry, IoCompletion, IoKind, IoRequest, Volume};
pub use volumes::{Backing, Slice, VolumeMap, VolumeSpec};

/// Every error of this crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Error {
    /// A ring-level violation by the frontend (from `xen-abi`). Fatal for the interface.
    Ring(xen_abi::Error),
    /// The interface was broken by an earlier fatal error.
    Broken,
    /// A geometry with a sector size other than 512/4096 or a partial last sector.
    BadGeometry,
    /// Engine limits out of range.
    BadConfig,
    /// A volume operation failed (I/O error, or a remote volume that could not complete it).
    Io,
    /// The volume does not support the operation.
    Unsupported,
    /// A range outside the volume or slice.
    OutOfRange,
    /// A write or discard on a read-only volume.
    ReadOnly,
    /// A volume map entry that does not follow the syntax.
    BadSpec,
    /// A slice (or sector size) not aligned as required.
    Misaligned,
    /// Two local slices overlap.
    Overlap,
    /// A local slice runs past the end of the disk.
    OutsideDisk,
    /// Two volumes with the same name.
    DuplicateName,
    /// A required xenbus key is missing.
    MissingKey(&'static str),
    /// A xenbus key has a value outside its strict syntax or range.
    BadKey(&'static str),
    /// (Frontend) no free ring slot or buffer page: retry after completions.
    Busy,
    /// (Frontend) a request larger than one request may carry.
    TooLarge,
    /// (Frontend) the backend answered an unknown id, with the wrong operation, or with an
    /// unknown status.
    BadResponse,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Ring(e) => write!(f, "ring: {e}"),
            Error::Broken => f.write_str("interface broken by an earlier fatal error"),
            Error::BadGeometry => f.write_str("invalid volume geometry"),
            Error::BadConfig => f.write_str("invalid engine limits"),
            Error::Io => f.write_str("I/O error"),
            Error::Unsupported => f.write_str("operation not supported by the volume"),
            Error::OutOfRange => f.write_str("range outside the volume"),
            Error::ReadOnly => f.write_str("volume is read-only"),
            Error::BadSpec => f.write_str("invalid volume map entry"),
            Error::Misaligned => f.write_str("slice or sector size misaligned"),
            Error::Overlap => f.write_str("local slices overlap"),
            Error::OutsideDisk => f.write_str("slice outside the disk"),
            Error::DuplicateName => f.write_str("duplicate volume name"),
            Error::MissingKey(k) => write!(f, "{k}: missing"),
            Error::BadKey(k) => write!(f, "{k}: invalid value"),
            Error::Busy => f.write_str("no free ring slot or page"),
            Error::TooLarge => f.write_str("request too large"),
            Error::BadResponse => f.write_str("malformed response from the backend"),
        }
    }
}

impl core::error::Error for Error {}
