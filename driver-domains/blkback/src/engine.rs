//! The engine of one blkif interface: requests from the ring, validation, copies through
//! [`GrantAccess`], operations on a [`Volume`], responses and notifications.
//!
//! The owner (blk-dd's per-guest task) calls [`Blkback::poll`] when the event channel (or
//! doorbell) fired, when the volume signalled completions, or when a previous poll reported
//! `more`; it kicks the frontend when a poll says `notify`. Everything is non-blocking and
//! bounded: at most [`Config::max_in_flight`] requests (and about
//! [`Config::max_in_flight_bytes`] of data) are being served at once, and a request is only
//! taken off the ring when the volume can accept it (back-pressure stays in the ring).
//!
//! ## Validation (every field the frontend wrote is hostile)
//! * Ring indices: checked by [`BackRing`]; a violation breaks the interface (fatal).
//! * Slot contents: parsed by [`xen_abi::blkif::Request`] (operation, segment counts,
//!   `first_sect <= last_sect <= 7`, discard flags and overflow, indirect sub-operation).
//! * Against the volume: the whole sector range must lie inside the volume (checked
//!   arithmetic), writes/discards on a read-only volume are refused, and with 4096-byte
//!   sectors the start sector (in 512-byte units, as the protocol always counts) must be a
//!   multiple of 8 and every segment a whole number of 4 KiB sectors (Linux blkback's rule).
//! * Indirect requests: at most the advertised `feature-max-indirect-segments`; the indirect
//!   pages are copied once into a private buffer, then every descriptor is validated.
//! * Grants: a copy that fails (bad reference, read-only page for a read) turns the request into
//!   an error response; nothing outside a segment's sectors is ever asked for.
//!
//! A bad request costs only itself: it is answered with `BLKIF_RSP_ERROR`
//! (`BLKIF_RSP_EOPNOTSUPP` for operations not offered: barriers, secure discard, flush or discard
//! on a volume without them, unknown codes), like Linux blkback. Stricter than Linux on purpose:
//! a FLUSH_DISKCACHE carrying segments is refused (Linux writes them).
//!
//! ## Ordering and durability
//! Reads and writes go to the volume at once and complete in any order (the frontend orders
//! what it needs). A FLUSH_DISKCACHE is held until every write submitted before it has
//! completed, then sent to the volume; its response is pushed only when the volume's flush
//! completes `Ok`, i.e. when those writes are durable. Responses echo the request's id and
//! operation; for an indirect request the operation is its `indirect_op` (as Linux blkback
//! does, and as Linux blkfront expects).

use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec;
use alloc::vec::Vec;

use netback::grant::{CopyIn, CopyOut, GrantAccess};
use xen_abi::PAGE_SIZE;
use xen_abi::blkif::{
    self, BlkRing, MAX_SEGMENTS_PER_REQUEST, Request, RequestPacket, Response, RwOp, SECTOR_SIZE,
    Segment, Status, op,
};
use xen_abi::ring::BackRing;
use xen_abi::shmem::SharedMem;

use crate::Error;
use crate::volume::{Geometry, IoCompletion, IoKind, IoRequest, Volume};

/// Limits of one interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// `feature-max-indirect-segments` advertised (0: indirect requests are not offered and are
    /// answered with `EOPNOTSUPP`). At most [`blkif::MAX_INDIRECT_SEGMENTS`].
    pub max_indirect_segments: u16,
    /// Requests served at once at most.
    pub max_in_flight: usize,
    /// Data bytes of the requests being served at most (checked before a request is taken
    /// off the ring, so one request may overshoot it by at most its own size). Bounds the
    /// private buffers an interface can make the driver domain hold.
    pub max_in_flight_bytes: usize,
}

impl Default for Config {
    /// 64 indirect segments (256 KiB per request), 32 requests and 1 MiB in flight.
    fn default() -> Self {
        Self {
            max_indirect_segments: 64,
            max_in_flight: 32,
            max_in_flight_bytes: 1 << 20,
        }
    }
}

/// Counters of one interface.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests taken off the ring.
    pub requests: u64,
    /// Reads completed `Okay`.
    pub reads: u64,
    /// Writes completed `Okay`.
    pub writes: u64,
    /// Flushes completed `Okay` (durable).
    pub flushes: u64,
    /// Discards completed `Okay`.
    pub discards: u64,
    /// Requests that used indirect segments.
    pub indirect: u64,
    /// Bytes read for the frontend.
    pub bytes_read: u64,
    /// Bytes written for the frontend.
    pub bytes_written: u64,
    /// Requests answered `ERROR` because they were malformed or out of range.
    pub bad_requests: u64,
    /// Requests answered `EOPNOTSUPP`.
    pub unsupported: u64,
    /// Requests answered `ERROR` because a grant copy failed.
    pub copy_errors: u64,
    /// Requests answered `ERROR` because the volume failed them.
    pub io_errors: u64,
    /// Completions the volume reported for tags the engine does not know (a volume bug;
    /// ignored).
    pub stray_completions: u64,
}

/// What a [`Blkback::poll`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Poll {
    /// Requests taken off the ring.
    pub requests: usize,
    /// Responses pushed.
    pub responses: usize,
    /// The frontend must be notified.
    pub notify: bool,
    /// Requests remain on the ring (budget, in-flight limit or a full volume stopped the
    /// poll): poll again after the next completion (or at once, for the budget).
    pub more: bool,
    /// Requests being served.
    pub in_flight: usize,
}

#[derive(Debug)]
enum Kind {
    Read(Vec<Segment>),
    Write(u64),
    Flush,
    Discard,
}

#[derive(Debug)]
struct Pending {
    id: u64,
    /// Operation echoed in the response.
    op: u8,
    kind: Kind,
    /// Submitted to the volume (a flush may be held first).
    submitted: bool,
    /// Data bytes held for it (counted against `max_in_flight_bytes`).
    bytes: usize,
}

/// The backend engine of one blkif interface over its ring.
#[derive(Debug)]
pub struct Blkback<M: SharedMem> {
    ring: BackRing<M, BlkRing>,
    geometry: Geometry,
    config: Config,
    pending: BTreeMap<u64, Pending>,
    /// Flushes waiting for earlier writes, in order.
    held: VecDeque<u64>,
    next_tag: u64,
    pending_bytes: usize,
    stats: Stats,
    broken: Option<Error>,
    indirect: Vec<u8>,
    /// Re-arm the ring's request event when the ring is found empty (see [`Blkback::set_rearm`]).
    rearm: bool,
}

/// Why a request is answered without reaching the volume.
enum Refuse {
    Bad,
    Unsupported,
    Copy,
}

/// Copies the segments' sectors out of the frontend's pages into `data` (their total size),
/// as one batch; whether every copy succeeded.
fn gather<G: GrantAccess + ?Sized>(grants: &mut G, segs: &[Segment], data: &mut [u8]) -> bool {
    let mut ops = Vec::with_capacity(segs.len());
    let mut rest = data;
    for s in segs {
        let (dst, r) = rest.split_at_mut(s.byte_len());
        rest = r;
        ops.push(CopyIn {
            gref: s.gref,
            offset: s.byte_offset() as u16,
            dst,
            ok: false,
        });
    }
    grants.copy_from_batch(&mut ops);
    ops.iter().all(|o| o.ok)
}

/// Copies `data` (the segments' total size) into the frontend's pages, as one batch; whether
/// every copy succeeded.
fn scatter<G: GrantAccess + ?Sized>(grants: &mut G, segs: &[Segment], data: &[u8]) -> bool {
    let mut ops = Vec::with_capacity(segs.len());
    let mut rest = data;
    for s in segs {
        let (src, r) = rest.split_at(s.byte_len());
        rest = r;
        ops.push(CopyOut {
            gref: s.gref,
            offset: s.byte_offset() as u16,
            src,
            ok: false,
        });
    }
    grants.copy_to_batch(&mut ops);
    ops.iter().all(|o| o.ok)
}

impl<M: SharedMem> Blkback<M> {
    /// Attaches to the frontend's ring (already reachable as `ring_mem`; nothing is written
    /// until a request is answered), serving a volume with `geometry`.
    pub fn new(ring_mem: M, geometry: Geometry, config: Config) -> Result<Self, Error> {
        geometry.validate()?;
        if config.max_in_flight == 0
            || config.max_in_flight_bytes == 0
            || usize::from(config.max_indirect_segments) > blkif::MAX_INDIRECT_SEGMENTS
        {
            return Err(Error::BadConfig);
        }
        Ok(Self {
            ring: BackRing::attach(ring_mem).map_err(Error::Ring)?,
            geometry,
            config,
            pending: BTreeMap::new(),
            held: VecDeque::new(),
            next_tag: 1,
            pending_bytes: 0,
            stats: Stats::default(),
            broken: None,
            indirect: Vec::new(),
            rearm: true,
        })
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The geometry served.
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// The limits.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The fatal error that broke this interface, if any.
    pub fn broken(&self) -> Option<Error> {
        self.broken
    }

    /// Requests being served.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Whether a poll that finds the ring empty re-arms its request event (the default), so
    /// that the frontend notifies for its next request. An owner that keeps polling anyway for
    /// a while (a bounded busy-poll) turns this off meanwhile: the frontend then sends no
    /// doorbells (its `req_event` stays behind), and must turn it on again for the last poll
    /// before it sleeps (that poll arms and re-checks the ring, so nothing is missed).
    pub fn set_rearm(&mut self, rearm: bool) {
        self.rearm = rearm;
    }

    fn fatal(&mut self, e: xen_abi::Error) -> Error {
        let e = Error::Ring(e);
        if self.broken.is_none() {
            self.broken = Some(e);
        }
        e
    }

    /// Collects the volume's completions (answering them), sends held flushes whose writes
    /// are done, takes up to `budget` new requests off the ring, publishes the responses and
    /// tells whether to notify. A ring violation breaks the interface and is returned (every
    /// later call returns [`Error::Broken`]).
    pub fn poll<G, V>(&mut self, now_us: u64, grants: &mut G, volume: &mut V, budget: usize) -> Result<Poll, Error>
    where
        G: GrantAccess + ?Sized,
        V: Volume + ?Sized,
    {
        if self.broken.is_some() {
            return Err(Error::Broken);
        }
        let mut poll = Poll::default();
        self.completions(now_us, grants, volume, &mut poll)?;
        loop {
            if poll.requests >= budget
                || self.pending.len() >= self.config.max_in_flight
                || self.pending_bytes >= self.config.max_in_flight_bytes
                || !volume.can_submit()
            {
                poll.more = self.ring.unconsumed_requests().map_err(|e| self.fatal(e))? > 0;
                break;
            }
            let raw = match self.ring.pop_request() {
                Ok(Some(r)) => r,
                Ok(None) if !self.rearm => break,
                Ok(None) => match self.ring.final_check_for_requests() {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(e) => return Err(self.fatal(e)),
                },
                Err(e) => return Err(self.fatal(e)),
            };
            poll.requests += 1;
            self.stats.requests += 1;
            self.request(&raw, grants, volume, &mut poll)?;
        }
        // Writes may have completed synchronously during submission.
        self.completions(now_us, grants, volume, &mut poll)?;
        poll.notify = self.ring.publish_responses_and_check_notify();
        poll.in_flight = self.pending.len();
        Ok(poll)
    }

    fn respond(&mut self, id: u64, operation: u8, status: Status, poll: &mut Poll) -> Result<(), Error> {
        let rsp = Response { id, operation, status };
        self.ring.push_response(&rsp.to_bytes()).map_err(|e| self.fatal(e))?;
        poll.responses += 1;
        Ok(())
    }

    fn refuse(&mut self, id: u64, operation: u8, why: Refuse, poll: &mut Poll) -> Result<(), Error> {
        let status = match why {
            Refuse::Bad => {
                self.stats.bad_requests += 1;
                Status::Error
            }
            Refuse::Copy => {
                self.stats.copy_errors += 1;
                Status::Error
            }
            Refuse::Unsupported => {
                self.stats.unsupported += 1;
                Status::EOpNotSupp
            }
        };
        self.respond(id, operation, status, poll)
    }

    /// One request, already copied out of the ring.
    fn request<G, V>(&mut self, raw: &[u8; blkif::REQUEST_SIZE], grants: &mut G, volume: &mut V, poll: &mut Poll) -> Result<(), Error>
    where
        G: GrantAccess + ?Sized,
        V: Volume + ?Sized,
    {
        let pkt = RequestPacket::new_checked(&raw[..]).map_err(|e| self.fatal(e))?;
        let id = pkt.id();
        // The operation to echo even when the request does not parse.
        let echo = if pkt.operation() == op::INDIRECT { pkt.byte1() } else { pkt.operation() };
        let req = match Request::parse(&pkt) {
            Ok(r) => r,
            Err(xen_abi::Error::UnknownOperation) if pkt.operation() != op::INDIRECT => {
                return self.refuse(id, echo, Refuse::Unsupported, poll);
            }
            Err(_) => return self.refuse(id, echo, Refuse::Bad, poll),
        };
        match req {
            Request::Rw {
                op: rw @ (RwOp::Read | RwOp::Write),
                sector,
                nr_segments,
                segments,
                ..
            } => {
                let segs = &segments[..usize::from(nr_segments).min(MAX_SEGMENTS_PER_REQUEST)];
                self.rw(id, rw, sector, segs, grants, volume, poll)
            }
            Request::Rw {
                op: RwOp::WriteBarrier,
                ..
            } => self.refuse(id, op::WRITE_BARRIER, Refuse::Unsupported, poll),
            Request::Rw {
                op: RwOp::FlushDiskcache,
                nr_segments,
                ..
            } => {
                if !self.geometry.flush {
                    return self.refuse(id, op::FLUSH_DISKCACHE, Refuse::Unsupported, poll);
                }
                if nr_segments != 0 {
                    return self.refuse(id, op::FLUSH_DISKCACHE, Refuse::Bad, poll);
                }
                let tag = self.tag();
                self.pending.insert(
                    tag,
                    Pending {
                        id,
                        op: op::FLUSH_DISKCACHE,
                        kind: Kind::Flush,
                        submitted: false,
                        bytes: 0,
                    },
                );
                self.held.push_back(tag);
                self.release_flushes(volume);
                Ok(())
            }
            Request::Discard {
                secure,
                sector,
                nr_sectors,
                ..
            } => {
                if !self.geometry.discard || secure {
                    return self.refuse(id, op::DISCARD, Refuse::Unsupported, poll);
                }
                let Some((offset, len)) = self.byte_range(sector, nr_sectors.checked_mul(SECTOR_SIZE as u64)) else {
                    return self.refuse(id, op::DISCARD, Refuse::Bad, poll);
                };
                if self.geometry.read_only || !len.is_multiple_of(u64::from(self.geometry.sector_size)) {
                    return self.refuse(id, op::DISCARD, Refuse::Bad, poll);
                }
                self.submit(volume, id, op::DISCARD, Kind::Discard, IoKind::Discard, offset, len, Vec::new());
                Ok(())
            }
            Request::Indirect {
                op: rw,
                sector,
                nr_segments,
                indirect_grefs,
                ..
            } => {
                let code = rw.code();
                if self.config.max_indirect_segments == 0 {
                    return self.refuse(id, code, Refuse::Unsupported, poll);
                }
                if nr_segments > self.config.max_indirect_segments {
                    return self.refuse(id, code, Refuse::Bad, poll);
                }
                self.stats.indirect += 1;
                let n = usize::from(nr_segments);
                // Copy the descriptor pages once into a private buffer, then validate.
                let mut buf = core::mem::take(&mut self.indirect);
                buf.clear();
                buf.resize(n * blkif::SEGMENT_SIZE, 0);
                let mut ops: Vec<CopyIn<'_>> = buf
                    .chunks_mut(PAGE_SIZE)
                    .zip(indirect_grefs.iter())
                    .map(|(dst, &gref)| CopyIn {
                        gref,
                        offset: 0,
                        dst,
                        ok: false,
                    })
                    .collect();
                grants.copy_from_batch(&mut ops);
                let copied = ops.iter().all(|o| o.ok);
                drop(ops);
                let mut segs = vec![Segment::default(); n];
                let parsed = copied && blkif::parse_indirect_segments(&buf, &mut segs).is_ok();
                self.indirect = buf;
                if !copied {
                    return self.refuse(id, code, Refuse::Copy, poll);
                }
                if !parsed {
                    return self.refuse(id, code, Refuse::Bad, poll);
                }
                self.rw(id, rw, sector, &segs, grants, volume, poll)
            }
        }
    }

    fn tag(&mut self) -> u64 {
        let t = self.next_tag;
        self.next_tag += 1;
        t
    }

    /// `(byte offset, byte length)` of `len_bytes` at 512-byte `sector`, if the range lies
    /// inside the volume and starts on a volume sector.
    fn byte_range(&self, sector: u64, len_bytes: Option<u64>) -> Option<(u64, u64)> {
        let len = len_bytes?;
        let offset = sector.checked_mul(SECTOR_SIZE as u64)?;
        let end = offset.checked_add(len)?;
        if end > self.geometry.size || !offset.is_multiple_of(u64::from(self.geometry.sector_size)) {
            return None;
        }
        Some((offset, len))
    }

    #[allow(clippy::too_many_arguments)]
    fn submit<V: Volume + ?Sized>(&mut self, volume: &mut V, id: u64, op: u8, kind: Kind, io: IoKind, offset: u64, len: u64, data: Vec<u8>) {
        let tag = self.tag();
        let bytes = match kind {
            Kind::Read(_) | Kind::Write(_) => len as usize,
            _ => 0,
        };
        self.pending_bytes += bytes;
        self.pending.insert(
            tag,
            Pending {
                id,
                op,
                kind,
                submitted: true,
                bytes,
            },
        );
        volume.submit(IoRequest {
            tag,
            kind: io,
            offset,
            len,
            data,
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn rw<G, V>(&mut self, id: u64, rw: RwOp, sector: u64, segs: &[Segment], grants: &mut G, volume: &mut V, poll: &mut Poll) -> Result<(), Error>
    where
        G: GrantAccess + ?Sized,
        V: Volume + ?Sized,
    {
        let code = rw.code();
        let ss = self.geometry.sector_size as usize;
        if segs.iter().any(|s| !s.byte_len().is_multiple_of(ss)) {
            return self.refuse(id, code, Refuse::Bad, poll);
        }
        let total: u64 = segs.iter().map(|s| s.byte_len() as u64).sum();
        let Some((offset, len)) = self.byte_range(sector, Some(total)) else {
            return self.refuse(id, code, Refuse::Bad, poll);
        };
        if rw == RwOp::Write {
            if self.geometry.read_only {
                return self.refuse(id, code, Refuse::Bad, poll);
            }
            let mut data = vec![0u8; len as usize];
            if !gather(grants, segs, &mut data) {
                return self.refuse(id, code, Refuse::Copy, poll);
            }
            self.submit(volume, id, code, Kind::Write(len), IoKind::Write, offset, len, data);
        } else {
            self.submit(volume, id, code, Kind::Read(segs.to_vec()), IoKind::Read, offset, len, Vec::new());
        }
        Ok(())
    }

    /// Sends held flushes, in order, once no write submitted before them is pending.
    fn release_flushes<V: Volume + ?Sized>(&mut self, volume: &mut V) {
        while let Some(&f) = self.held.front() {
            let earlier_write = self.pending.range(..f).any(|(_, p)| matches!(p.kind, Kind::Write(_)));
            if earlier_write || !volume.can_submit() {
                return;
            }
            self.held.pop_front();
            if let Some(p) = self.pending.get_mut(&f) {
                p.submitted = true;
            }
            volume.submit(IoRequest {
                tag: f,
                kind: IoKind::Flush,
                offset: 0,
                len: 0,
                data: Vec::new(),
            });
        }
    }

    fn completions<G, V>(&mut self, now_us: u64, grants: &mut G, volume: &mut V, poll: &mut Poll) -> Result<(), Error>
    where
        G: GrantAccess + ?Sized,
        V: Volume + ?Sized,
    {
        loop {
            while let Some(c) = volume.poll(now_us) {
                self.complete(c, grants, poll)?;
            }
            let before = self.held.len();
            self.release_flushes(volume);
            if self.held.len() == before {
                return Ok(());
            }
        }
    }

    fn complete<G: GrantAccess + ?Sized>(&mut self, c: IoCompletion, grants: &mut G, poll: &mut Poll) -> Result<(), Error> {
        if !self.pending.get(&c.tag).is_some_and(|p| p.submitted) {
            self.stats.stray_completions += 1;
            return Ok(());
        }
        let Some(p) = self.pending.remove(&c.tag) else { return Ok(()) };
        self.pending_bytes -= p.bytes;
        let status = match (c.result, &p.kind) {
            (Ok(()), Kind::Read(segs)) => {
                let total: usize = segs.iter().map(|s| s.byte_len()).sum();
                if c.data.len() != total {
                    self.stats.io_errors += 1;
                    Status::Error
                } else if scatter(grants, segs, &c.data) {
                    self.stats.reads += 1;
                    self.stats.bytes_read += total as u64;
                    Status::Okay
                } else {
                    self.stats.copy_errors += 1;
                    Status::Error
                }
            }
            (Ok(()), Kind::Write(len)) => {
                self.stats.writes += 1;
                self.stats.bytes_written += len;
                Status::Okay
            }
            (Ok(()), Kind::Flush) => {
                self.stats.flushes += 1;
                Status::Okay
            }
            (Ok(()), Kind::Discard) => {
                self.stats.discards += 1;
                Status::Okay
            }
            (Err(Error::Unsupported), _) => {
                self.stats.unsupported += 1;
                Status::EOpNotSupp
            }
            (Err(_), _) => {
                self.stats.io_errors += 1;
                Status::Error
            }
        };
        self.respond(p.id, p.op, status, poll)
    }
}
