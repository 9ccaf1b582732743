//! # blkfront: the guest side of blkif
//!
//! [`Blkfront`] is a block frontend engine over a blkif front ring, with no I/O of its own and
//! no `unsafe`: the guest image (`blk-guest`) drives it over an iConnect channel, host tests
//! drive it against the real backend engine (`blkback`'s tests use this crate).
//!
//! The guest's buffers are pages it owns and names by reference in requests ([`FrontPages`]:
//! Xen grant references, or data page numbers of an iConnect channel, see [`channel`]). Every
//! request uses whole pages: segment `i` covers bytes `i * 4096..` of the request, sectors
//! `0..=last` of its page. Requests with more than 11 pages go indirect when the backend
//! offers it (`feature-max-indirect-segments`); [`Blkfront::max_request_bytes`] says how large
//! a request may be. Offsets and lengths must be multiples of the volume's sector size.
//!
//! The backend is not trusted either: a response for an unknown id, with the wrong
//! operation, or an impossible status is [`Error::BadResponse`] (the owner closes the channel);
//! the ring indices are checked by `xen-abi`'s front ring. [`BackendInfo::from_keys`] parses
//! the backend's xenbus keys strictly.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod channel;
pub mod keys;

use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;

use iconnect::KeySource;
use xen_abi::blkif::{
    self, BlkRing, MAX_INDIRECT_PAGES_PER_REQUEST, MAX_SEGMENTS_PER_REQUEST, Request, RwOp, Segment,
    Status,
};
use xen_abi::ring::FrontRing;
use xen_abi::shmem::SharedMem;
use xen_abi::{GrantRef, PAGE_SIZE};

use crate::keys as negotiate;

/// The frontend's buffer pages.
pub trait FrontPages {
    /// A free page the backend may read (`writable = false`) or also write; its reference.
    fn alloc(&mut self, writable: bool) -> Option<GrantRef>;
    /// Gives a page back (after the request using it completed).
    fn free(&mut self, page: GrantRef);
    /// Copies `src` into the page at `offset` (`false`: not a page of this source).
    fn write(&mut self, page: GrantRef, offset: usize, src: &[u8]) -> bool;
    /// Copies from the page at `offset` into `dst` (`false`: not a page of this source).
    fn read(&mut self, page: GrantRef, offset: usize, dst: &mut [u8]) -> bool;
}

/// What the backend announced (its xenbus keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendInfo {
    /// Size in units of `sector_size`.
    pub sectors: u64,
    /// Logical sector size (512 or 4096).
    pub sector_size: u32,
    /// `info` has `VDISK_READONLY`.
    pub read_only: bool,
    /// `feature-flush-cache`.
    pub flush: bool,
    /// `feature-discard`.
    pub discard: bool,
    /// `feature-max-indirect-segments` (0: none).
    pub max_indirect_segments: u16,
}

impl BackendInfo {
    /// Parses the backend's keys strictly: `sectors` required, `sector-size` 512 or 4096
    /// (default 512), flags `0`/`1`, `feature-max-indirect-segments` up to 4096.
    pub fn from_keys<S: KeySource + ?Sized>(src: &S) -> Result<Self, Error> {
        let num = |key: &'static str, min: u64, max: u64| -> Result<Option<u64>, Error> {
            match src.get(key) {
                None => Ok(None),
                Some(v) => iconnect::keys::parse_in_range(key, v, min, max)
                    .map(Some)
                    .map_err(|_| Error::BadKey(key)),
            }
        };
        let flag = |key: &'static str| -> Result<bool, Error> {
            match src.get(key) {
                None => Ok(false),
                Some(v) => iconnect::keys::parse_bool(key, v).map_err(|_| Error::BadKey(key)),
            }
        };
        let sector_size = num(negotiate::SECTOR_SIZE, 512, 4096)?.unwrap_or(512) as u32;
        if !matches!(sector_size, 512 | 4096) {
            return Err(Error::BadKey(negotiate::SECTOR_SIZE));
        }
        let sectors = num(negotiate::SECTORS, 0, u64::MAX / 4096)?.ok_or(Error::MissingKey(negotiate::SECTORS))?;
        let info = num(negotiate::INFO, 0, u64::from(u32::MAX))?.unwrap_or(0) as u32;
        let max_indirect = num(negotiate::FEATURE_MAX_INDIRECT_SEGMENTS, 0, blkif::MAX_INDIRECT_SEGMENTS as u64)?;
        Ok(Self {
            sectors,
            sector_size,
            read_only: info & negotiate::VDISK_READONLY != 0,
            flush: flag(negotiate::FEATURE_FLUSH_CACHE)?,
            discard: flag(negotiate::FEATURE_DISCARD)?,
            max_indirect_segments: max_indirect.unwrap_or(0) as u16,
        })
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.sectors * u64::from(self.sector_size)
    }
}

/// A finished request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontCompletion {
    /// The id [`Blkfront`] returned when the request was queued.
    pub id: u64,
    /// The backend's verdict.
    pub status: Status,
    /// The data of a successful read.
    pub data: Vec<u8>,
}

#[derive(Debug)]
struct Shadow {
    op: u8,
    len: usize,
    pages: Vec<GrantRef>,
    indirect: Vec<GrantRef>,
}

/// The block frontend engine (see the [crate documentation](crate)).
#[derive(Debug)]
pub struct Blkfront<M: SharedMem> {
    ring: FrontRing<M, BlkRing>,
    info: BackendInfo,
    /// Indirect segments this frontend uses (at most what the backend offers).
    indirect: u16,
    next_id: u64,
    shadow: BTreeMap<u64, Shadow>,
}

impl<M: SharedMem> Blkfront<M> {
    /// A frontend on an initialised front ring, for a backend that announced `info`; uses up
    /// to `max_indirect` indirect segments (capped by the backend's offer).
    pub fn new(ring: FrontRing<M, BlkRing>, info: BackendInfo, max_indirect: u16) -> Self {
        Self {
            ring,
            info,
            indirect: max_indirect.min(info.max_indirect_segments),
            next_id: 1,
            shadow: BTreeMap::new(),
        }
    }

    /// What the backend announced.
    pub fn info(&self) -> &BackendInfo {
        &self.info
    }

    /// Largest read or write in one request.
    pub fn max_request_bytes(&self) -> usize {
        usize::from(self.indirect).max(MAX_SEGMENTS_PER_REQUEST) * PAGE_SIZE
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.shadow.len()
    }

    /// Whether another request fits into the ring now.
    pub fn can_queue(&self) -> bool {
        self.ring.free_requests() > 0
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), Error> {
        let ss = u64::from(self.info.sector_size);
        if len == 0 || !offset.is_multiple_of(ss) || !len.is_multiple_of(ss) {
            return Err(Error::Misaligned);
        }
        match offset.checked_add(len) {
            Some(end) if end <= self.info.size() => Ok(()),
            _ => Err(Error::OutOfRange),
        }
    }

    fn id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn push(&mut self, id: u64, raw: &[u8; blkif::REQUEST_SIZE], shadow: Shadow) -> Result<u64, Error> {
        self.ring.push_request(raw).map_err(Error::Ring)?;
        self.shadow.insert(id, shadow);
        Ok(id)
    }

    /// Queues a read or write of whole pages (data copied into fresh pages for a write).
    fn rw<P: FrontPages + ?Sized>(&mut self, pages: &mut P, write: Option<&[u8]>, offset: u64, len: usize) -> Result<u64, Error> {
        self.check_range(offset, len as u64)?;
        if write.is_some() && self.info.read_only {
            return Err(Error::ReadOnly);
        }
        if len > self.max_request_bytes() {
            return Err(Error::TooLarge);
        }
        if !self.can_queue() {
            return Err(Error::Busy);
        }
        let n = len.div_ceil(PAGE_SIZE);
        let indirect = n > MAX_SEGMENTS_PER_REQUEST;
        let n_ind = if indirect { blkif::indirect_pages(n as u16) } else { 0 };
        let mut got: Vec<GrantRef> = Vec::with_capacity(n + n_ind);
        for i in 0..n + n_ind {
            match pages.alloc(write.is_none() && i < n) {
                Some(p) => got.push(p),
                None => {
                    for p in got {
                        pages.free(p);
                    }
                    return Err(Error::Busy);
                }
            }
        }
        let ind_pages = got.split_off(n);
        let mut segs = Vec::with_capacity(n);
        let mut copied = true;
        for (i, &p) in got.iter().enumerate() {
            let bytes = (len - i * PAGE_SIZE).min(PAGE_SIZE);
            if let Some(data) = write {
                copied &= pages.write(p, 0, &data[i * PAGE_SIZE..i * PAGE_SIZE + bytes]);
            }
            segs.push(Segment {
                gref: p,
                first_sect: 0,
                last_sect: (bytes / blkif::SECTOR_SIZE - 1) as u8,
            });
        }
        let op = if write.is_some() { RwOp::Write } else { RwOp::Read };
        let id = self.id();
        let sector = offset / blkif::SECTOR_SIZE as u64;
        let raw = if indirect {
            let mut grefs = [0; MAX_INDIRECT_PAGES_PER_REQUEST];
            let mut page = vec![0u8; PAGE_SIZE];
            for (k, chunk) in segs.chunks(blkif::SEGMENTS_PER_INDIRECT_PAGE).enumerate() {
                page.fill(0);
                for (j, s) in chunk.iter().enumerate() {
                    s.emit(&mut page[j * blkif::SEGMENT_SIZE..(j + 1) * blkif::SEGMENT_SIZE]);
                }
                copied &= pages.write(ind_pages[k], 0, &page);
                grefs[k] = ind_pages[k];
            }
            Request::Indirect {
                op,
                handle: 0,
                id,
                sector,
                nr_segments: n as u16,
                indirect_grefs: grefs,
            }
            .to_bytes()
        } else {
            let mut a = [Segment::default(); MAX_SEGMENTS_PER_REQUEST];
            a[..n].copy_from_slice(&segs);
            Request::Rw {
                op,
                handle: 0,
                id,
                sector,
                nr_segments: n as u8,
                segments: a,
            }
            .to_bytes()
        };
        if !copied {
            // The page source refused its own page: nothing is sent.
            for p in got.into_iter().chain(ind_pages) {
                pages.free(p);
            }
            return Err(Error::PageRefused);
        }
        let shadow = Shadow {
            op: op.code(),
            len,
            pages: got,
            indirect: ind_pages,
        };
        self.push(id, &raw, shadow)
    }

    /// Queues a read of `len` bytes at byte `offset`; the data comes with the completion.
    pub fn read<P: FrontPages + ?Sized>(&mut self, pages: &mut P, offset: u64, len: usize) -> Result<u64, Error> {
        self.rw(pages, None, offset, len)
    }

    /// Queues a write of `data` at byte `offset`.
    pub fn write<P: FrontPages + ?Sized>(&mut self, pages: &mut P, offset: u64, data: &[u8]) -> Result<u64, Error> {
        self.rw(pages, Some(data), offset, data.len())
    }

    /// Queues a flush: its `Okay` means every write completed before it is durable.
    pub fn flush(&mut self) -> Result<u64, Error> {
        if !self.info.flush {
            return Err(Error::Unsupported);
        }
        if !self.can_queue() {
            return Err(Error::Busy);
        }
        let id = self.id();
        let raw = Request::Rw {
            op: RwOp::FlushDiskcache,
            handle: 0,
            id,
            sector: 0,
            nr_segments: 0,
            segments: [Segment::default(); MAX_SEGMENTS_PER_REQUEST],
        }
        .to_bytes();
        self.push(id, &raw, Shadow { op: blkif::op::FLUSH_DISKCACHE, len: 0, pages: Vec::new(), indirect: Vec::new() })
    }

    /// Queues a discard of `len` bytes at byte `offset`.
    pub fn discard(&mut self, offset: u64, len: u64) -> Result<u64, Error> {
        if !self.info.discard {
            return Err(Error::Unsupported);
        }
        if self.info.read_only {
            return Err(Error::ReadOnly);
        }
        self.check_range(offset, len)?;
        if !self.can_queue() {
            return Err(Error::Busy);
        }
        let id = self.id();
        let raw = Request::Discard {
            secure: false,
            handle: 0,
            id,
            sector: offset / blkif::SECTOR_SIZE as u64,
            nr_sectors: len / blkif::SECTOR_SIZE as u64,
        }
        .to_bytes();
        self.push(id, &raw, Shadow { op: blkif::op::DISCARD, len: 0, pages: Vec::new(), indirect: Vec::new() })
    }

    /// Publishes queued requests; whether the backend must be notified.
    pub fn publish(&mut self) -> bool {
        self.ring.publish_requests_and_check_notify()
    }

    /// The next response, if any: read data gathered, pages freed. A response that names no
    /// request in flight, echoes another operation, or carries an unknown status is
    /// [`Error::BadResponse`]; ring violations are [`Error::Ring`].
    pub fn poll<P: FrontPages + ?Sized>(&mut self, pages: &mut P) -> Result<Option<FrontCompletion>, Error> {
        let Some(raw) = self.ring.pop_response().map_err(Error::Ring)? else {
            return Ok(None);
        };
        let id = u64::from_le_bytes(raw[..8].try_into().map_err(|_| Error::BadResponse)?);
        let status = match i16::from_le_bytes([raw[10], raw[11]]) {
            0 => Status::Okay,
            -1 => Status::Error,
            -2 => Status::EOpNotSupp,
            _ => return Err(Error::BadResponse),
        };
        let Some(sh) = self.shadow.get(&id) else { return Err(Error::BadResponse) };
        if raw[8] != sh.op {
            return Err(Error::BadResponse);
        }
        let Some(sh) = self.shadow.remove(&id) else { return Err(Error::BadResponse) };
        let mut data = Vec::new();
        let mut status = status;
        if sh.op == blkif::op::READ && status == Status::Okay {
            data = vec![0u8; sh.len];
            for (i, &p) in sh.pages.iter().enumerate() {
                let end = ((i + 1) * PAGE_SIZE).min(sh.len);
                if !pages.read(p, 0, &mut data[i * PAGE_SIZE..end]) {
                    status = Status::Error;
                    data.clear();
                    break;
                }
            }
        }
        for p in sh.pages.into_iter().chain(sh.indirect) {
            pages.free(p);
        }
        Ok(Some(FrontCompletion { id, status, data }))
    }

    /// The raw front ring, for a deliberately hostile guest (tests of the backend's
    /// validation). Requests pushed here bypass every check of this engine; responses to them
    /// must be popped here too (they name ids this engine does not know).
    pub fn raw_ring(&mut self) -> &mut FrontRing<M, BlkRing> {
        &mut self.ring
    }

    /// Arms the response event and re-checks (`RING_FINAL_CHECK_FOR_RESPONSES`): `true` if a
    /// response arrived meanwhile (poll again instead of sleeping).
    pub fn final_check(&mut self) -> Result<bool, Error> {
        self.ring.final_check_for_responses().map_err(Error::Ring)
    }
}

/// Every error of this crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Error {
    /// A ring-level violation (from `xen-abi`): the backend broke the ring.
    Ring(xen_abi::Error),
    /// A required backend key is missing.
    MissingKey(&'static str),
    /// A backend key has a value outside its strict syntax or range.
    BadKey(&'static str),
    /// Offset or length not a multiple of the sector size, or zero length.
    Misaligned,
    /// A range outside the volume.
    OutOfRange,
    /// A write or discard on a read-only volume.
    ReadOnly,
    /// The backend does not offer the operation.
    Unsupported,
    /// No free ring slot or buffer page: retry after completions.
    Busy,
    /// A request larger than one request may carry.
    TooLarge,
    /// The page source refused one of its own pages (nothing was sent).
    PageRefused,
    /// The backend answered an unknown id, with the wrong operation, or with an unknown status.
    BadResponse,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Ring(e) => write!(f, "ring: {e}"),
            Error::MissingKey(k) => write!(f, "{k}: missing"),
            Error::BadKey(k) => write!(f, "{k}: invalid value"),
            Error::Misaligned => f.write_str("range not aligned to the sector size"),
            Error::OutOfRange => f.write_str("range outside the volume"),
            Error::ReadOnly => f.write_str("volume is read-only"),
            Error::Unsupported => f.write_str("operation not offered by the backend"),
            Error::Busy => f.write_str("no free ring slot or page"),
            Error::TooLarge => f.write_str("request too large"),
            Error::PageRefused => f.write_str("page source refused its own page"),
            Error::BadResponse => f.write_str("malformed response from the backend"),
        }
    }
}

impl core::error::Error for Error {}
