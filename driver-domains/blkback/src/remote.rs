//! A [`Volume`] on a remote NBD export: [`NbdVolume`] over the sans-IO [`nbd::Client`].
//!
//! The owner moves the client's bytes (smoltcp TCP in blk-dd, `std` TCP in tests) through
//! [`NbdVolume::client_mut`], reconnects when [`NbdVolume::needs_connect`] says so, and polls the
//! volume like any other. What this layer adds to the client:
//!
//! * **Splitting**: an operation becomes parts of at most the negotiated payload (reads and
//!   writes) or `u32` range (trims); the operation completes when all parts did, failed if any
//!   part failed for good.
//! * **Retry across reconnects**: a part failed with [`nbd::Error::Disconnected`] is queued
//!   again and resent on the next connection (at most [`RemoteConfig::max_attempts`] times),
//!   so a dropped connection costs the guest latency, not an error.
//! * **No acknowledged write lost**: the server acknowledged a write, but only a FLUSH makes it
//!   durable; if the connection (or the server) dies in between, the write may be gone. So
//!   every write acknowledged since the last completed flush is kept (the *replay log*); after a
//!   reconnect the log is written again, one write at a time in acknowledgement order, before
//!   anything else is sent. A flush trims the log of everything acknowledged before it was
//!   sent. Discards (trims) are logged and replayed the same way (in order with the writes, so
//!   an old write never resurrects discarded data). When the log holds more than
//!   [`RemoteConfig::max_log_bytes`], the volume sends a flush of its own (traffic goes on); at
//!   twice that, it sends nothing else until a flush has trimmed the log (FUA writes would not
//!   do: replaying an older logged write would overwrite a newer FUA write).
//! * **Deadline**: an operation still unfinished [`RemoteConfig::op_timeout_us`] after its
//!   submission (no server to reconnect to) fails with [`Error::Io`], so the guest gets an
//!   error response instead of waiting forever.
//! * **Durability**: the volume's FLUSH is `NBD_CMD_FLUSH`; it completes `Ok` only on the
//!   server's acknowledgement (on the connection where every logged write was acknowledged).

use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;

use nbd::{Client, Event, ExportInfo, Phase};

use crate::Error;
use crate::volume::{Geometry, IoCompletion, IoKind, IoRequest, Volume};

/// Limits of an [`NbdVolume`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteConfig {
    /// Sector size exposed to the guest (512 or 4096).
    pub sector_size: u32,
    /// Operations accepted at once.
    pub max_ops: usize,
    /// Sends of one part at most (1 = no retry).
    pub max_attempts: u32,
    /// Replay-log bytes above which the volume flushes on its own (the log holds at most
    /// about twice this).
    pub max_log_bytes: usize,
    /// An operation not finished this long after submission fails with [`Error::Io`] (the
    /// server is unreachable); `None`: wait forever.
    pub op_timeout_us: Option<u64>,
}

impl Default for RemoteConfig {
    /// 512-byte sectors, 64 operations, 8 attempts, 1 MiB of replay log, 60 s per operation.
    fn default() -> Self {
        Self {
            sector_size: 512,
            max_ops: 64,
            max_attempts: 8,
            max_log_bytes: 1 << 20,
            op_timeout_us: Some(60_000_000),
        }
    }
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RemoteStats {
    /// Parts sent again after a disconnect.
    pub retried: u64,
    /// Logged writes replayed after a reconnect.
    pub replayed: u64,
    /// Flushes the volume sent on its own because the log was full.
    pub log_flushes: u64,
    /// Logged writes the server refused when replayed (the next flush then fails).
    pub replay_failed: u64,
    /// Connections that reached transmission.
    pub sessions: u64,
}

#[derive(Debug)]
struct Op {
    kind: IoKind,
    /// Write payload, or the read buffer being filled.
    data: Vec<u8>,
    parts_left: usize,
    error: Option<Error>,
    /// When the operation fails if still waiting (set at the first poll after submission).
    deadline: Option<u64>,
    /// Failed by its deadline (its queued parts were dropped).
    expired: bool,
}

#[derive(Debug, Clone, Copy)]
struct Part {
    tag: u64,
    /// Byte offset inside the operation.
    at: u64,
    /// Absolute offset in the export.
    offset: u64,
    len: u32,
    attempts: u32,
}

#[derive(Debug, Clone, Copy)]
enum Sent {
    Part(Part),
    /// A replay of log entry `seq`.
    Replay(u64),
    /// A flush of operation `tag` (`None`: the volume's own): trims the log below `seq` when
    /// it succeeds.
    Flush(Option<u64>, u64),
}

/// What a log entry changed.
#[derive(Debug)]
enum Logged {
    Write(Vec<u8>),
    Trim(u32),
}

/// A remote volume (see the [module documentation](self)).
#[derive(Debug)]
pub struct NbdVolume {
    client: Client,
    config: RemoteConfig,
    export: Option<ExportInfo>,
    ops: BTreeMap<u64, Op>,
    queue: VecDeque<Part>,
    flushes: VecDeque<u64>,
    sent: BTreeMap<nbd::Handle, Sent>,
    done: VecDeque<IoCompletion>,
    /// Writes and trims acknowledged since the flush boundary: `(seq, offset, what)`.
    log: VecDeque<(u64, u64, Logged)>,
    /// The volume's own flush is in flight.
    own_flush: bool,
    log_bytes: usize,
    next_seq: u64,
    /// Log entries still to replay on this connection (by seq), in order.
    replay: VecDeque<u64>,
    replay_in_flight: bool,
    /// A replay failed: the next flush cannot vouch for durability.
    poisoned: bool,
    stats: RemoteStats,
}

impl NbdVolume {
    /// A volume over `client` (not yet connected: the owner connects it).
    pub fn new(client: Client, config: RemoteConfig) -> Self {
        Self {
            client,
            config,
            export: None,
            ops: BTreeMap::new(),
            queue: VecDeque::new(),
            flushes: VecDeque::new(),
            sent: BTreeMap::new(),
            done: VecDeque::new(),
            log: VecDeque::new(),
            own_flush: false,
            log_bytes: 0,
            next_seq: 0,
            replay: VecDeque::new(),
            replay_in_flight: false,
            poisoned: false,
            stats: RemoteStats::default(),
        }
    }

    /// The NBD client, for the owner to move bytes and (re)connect.
    pub fn client_mut(&mut self) -> &mut Client {
        &mut self.client
    }

    /// The NBD client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Whether the connection is down (or never made): the owner opens a TCP connection and
    /// calls `client_mut().connect(now)`.
    pub fn needs_connect(&self) -> bool {
        matches!(self.client.phase(), Phase::Idle | Phase::Down)
    }

    /// Whether the first handshake finished (the geometry is known).
    pub fn is_ready(&self) -> bool {
        self.export.is_some()
    }

    /// Counters.
    pub fn stats(&self) -> &RemoteStats {
        &self.stats
    }

    /// Bytes in the replay log.
    pub fn log_bytes(&self) -> usize {
        self.log_bytes
    }

    fn fail_op(&mut self, tag: u64, e: Error) {
        if let Some(op) = self.ops.get_mut(&tag) {
            op.error.get_or_insert(e);
        }
    }

    fn part_done(&mut self, tag: u64) {
        let finished = match self.ops.get_mut(&tag) {
            Some(op) => {
                op.parts_left -= 1;
                op.parts_left == 0
            }
            None => false,
        };
        if finished && let Some(op) = self.ops.remove(&tag) {
            let result = match op.error {
                Some(e) => Err(e),
                None => Ok(()),
            };
            let data = if op.kind == IoKind::Read && result.is_ok() { op.data } else { Vec::new() };
            self.done.push_back(IoCompletion { tag, result, data });
        }
    }

    /// Handles the client's events.
    fn events(&mut self) {
        while let Some(ev) = self.client.next_event() {
            match ev {
                Event::Ready(info) => {
                    self.stats.sessions += 1;
                    if self.export.is_none() {
                        self.export = Some(info);
                    }
                    // Everything acknowledged but not flushed is written again first.
                    self.replay = self.log.iter().map(|e| e.0).collect();
                    self.replay_in_flight = false;
                }
                Event::Done(c) => {
                    let Some(s) = self.sent.remove(&c.handle) else { continue };
                    match s {
                        Sent::Part(mut p) => match c.result {
                            Ok(()) => {
                                if let Some(op) = self.ops.get_mut(&p.tag) {
                                    let at = p.at as usize;
                                    match op.kind {
                                        IoKind::Read => {
                                            op.data[at..at + c.data.len()].copy_from_slice(&c.data);
                                        }
                                        IoKind::Write => {
                                            let d = op.data[at..at + p.len as usize].to_vec();
                                            self.log_bytes += d.len();
                                            self.log.push_back((self.next_seq, p.offset, Logged::Write(d)));
                                            self.next_seq += 1;
                                        }
                                        IoKind::Discard => {
                                            self.log_bytes += 64;
                                            self.log.push_back((self.next_seq, p.offset, Logged::Trim(p.len)));
                                            self.next_seq += 1;
                                        }
                                        IoKind::Flush => {}
                                    }
                                }
                                self.part_done(p.tag);
                            }
                            Err(nbd::Error::Disconnected) if p.attempts < self.config.max_attempts => {
                                self.stats.retried += 1;
                                p.attempts += 1;
                                self.queue.push_front(p);
                            }
                            Err(nbd::Error::Unsupported) => {
                                self.fail_op(p.tag, Error::Unsupported);
                                self.part_done(p.tag);
                            }
                            Err(_) => {
                                self.fail_op(p.tag, Error::Io);
                                self.part_done(p.tag);
                            }
                        },
                        Sent::Replay(seq) => {
                            self.replay_in_flight = false;
                            match c.result {
                                Ok(()) => {
                                    self.stats.replayed += 1;
                                    if self.replay.front() == Some(&seq) {
                                        self.replay.pop_front();
                                    }
                                }
                                // Replayed again on the next connection (the whole log is).
                                Err(nbd::Error::Disconnected) => {}
                                // The server refuses the data: it cannot be made durable; the
                                // next flush reports an error instead of success.
                                Err(_) => {
                                    self.stats.replay_failed += 1;
                                    self.poisoned = true;
                                    if self.replay.front() == Some(&seq) {
                                        self.replay.pop_front();
                                    }
                                }
                            }
                        }
                        Sent::Flush(None, seq) => {
                            self.own_flush = false;
                            if c.result.is_ok() && !self.poisoned {
                                self.trim_log(seq);
                            }
                        }
                        Sent::Flush(Some(tag), seq) => match c.result {
                            Ok(()) => {
                                self.trim_log(seq);
                                if core::mem::take(&mut self.poisoned) {
                                    self.fail_op(tag, Error::Io);
                                }
                                self.part_done(tag);
                            }
                            Err(nbd::Error::Disconnected) => self.flushes.push_front(tag),
                            Err(nbd::Error::Unsupported) => {
                                self.fail_op(tag, Error::Unsupported);
                                self.part_done(tag);
                            }
                            Err(_) => {
                                self.fail_op(tag, Error::Io);
                                self.part_done(tag);
                            }
                        },
                    }
                }
                Event::Down(_) => {
                    self.replay.clear();
                    self.replay_in_flight = false;
                }
            }
        }
    }

    /// Arms the deadline of new operations; fails those past it. Their queued parts (and a
    /// queued flush) are dropped; parts already sent complete normally but cannot make the
    /// operation succeed.
    fn expire(&mut self, now_us: u64) {
        let Some(timeout) = self.config.op_timeout_us else { return };
        let mut late = Vec::new();
        for (tag, op) in self.ops.iter_mut() {
            match op.deadline {
                None => op.deadline = Some(now_us.saturating_add(timeout)),
                Some(d) if now_us >= d && !op.expired => {
                    op.expired = true;
                    late.push(*tag);
                }
                Some(_) => {}
            }
        }
        for tag in late {
            let before = self.queue.len() + self.flushes.len();
            self.queue.retain(|p| p.tag != tag);
            self.flushes.retain(|&f| f != tag);
            let dropped = before - self.queue.len() - self.flushes.len();
            self.fail_op(tag, Error::Io);
            for _ in 0..dropped {
                self.part_done(tag);
            }
        }
    }

    /// Drops the log entries acknowledged before a flush that succeeded (sequence below `seq`).
    fn trim_log(&mut self, seq: u64) {
        while self.log.front().is_some_and(|e| e.0 < seq) {
            if let Some((_, _, what)) = self.log.pop_front() {
                self.log_bytes -= match what {
                    Logged::Write(d) => d.len(),
                    Logged::Trim(_) => 64,
                };
            }
        }
    }

    /// Sends what can be sent on the current connection.
    fn send(&mut self, now_us: u64) {
        if self.client.phase() != Phase::Ready {
            return;
        }
        // Replay first, one write at a time, in acknowledgement order.
        if let Some(&seq) = self.replay.front() {
            if !self.replay_in_flight && self.client.can_submit() {
                if let Some((_, off, what)) = self.log.iter().find(|e| e.0 == seq) {
                    let r = match what {
                        Logged::Write(data) => self.client.write(now_us, *off, data, false),
                        Logged::Trim(len) => self.client.trim(now_us, *off, *len, false),
                    };
                    if let Ok(h) = r {
                        self.sent.insert(h, Sent::Replay(seq));
                        self.replay_in_flight = true;
                    }
                } else {
                    self.replay.pop_front();
                }
            }
            return;
        }
        // A full log: flush (pipelined with the traffic); at twice the limit, send nothing
        // else until a flush has trimmed it.
        if self.log_bytes >= self.config.max_log_bytes {
            if !self.own_flush && self.client.can_submit() {
                let seq = self.next_seq;
                if let Ok(h) = self.client.flush(now_us) {
                    self.sent.insert(h, Sent::Flush(None, seq));
                    self.own_flush = true;
                    self.stats.log_flushes += 1;
                }
            }
            if self.log_bytes >= self.config.max_log_bytes.saturating_mul(2) {
                return;
            }
        }
        while self.client.can_submit() {
            if let Some(p) = self.queue.pop_front() {
                let Some(op) = self.ops.get(&p.tag) else { continue };
                let kind = op.kind;
                let r = match kind {
                    IoKind::Read => self.client.read(now_us, p.offset, p.len),
                    IoKind::Write => {
                        let at = p.at as usize;
                        let data = &op.data[at..at + p.len as usize];
                        self.client.write(now_us, p.offset, data, false)
                    }
                    IoKind::Discard => self.client.trim(now_us, p.offset, p.len, false),
                    IoKind::Flush => Err(nbd::Error::Unsupported),
                };
                match r {
                    Ok(h) => {
                        self.sent.insert(h, Sent::Part(p));
                    }
                    Err(e) => {
                        self.fail_op(p.tag, if e == nbd::Error::Unsupported { Error::Unsupported } else { Error::Io });
                        self.part_done(p.tag);
                    }
                }
            } else if let Some(tag) = self.flushes.pop_front() {
                let seq = self.next_seq;
                match self.client.flush(now_us) {
                    Ok(h) => {
                        self.sent.insert(h, Sent::Flush(Some(tag), seq));
                    }
                    Err(e) => {
                        self.fail_op(tag, if e == nbd::Error::Unsupported { Error::Unsupported } else { Error::Io });
                        self.part_done(tag);
                    }
                }
            } else {
                break;
            }
        }
    }
}

impl Volume for NbdVolume {
    /// The export's geometry (before the first handshake: an empty, read-only volume).
    fn geometry(&self) -> Geometry {
        let ss = self.config.sector_size;
        match &self.export {
            Some(e) => Geometry {
                size: e.size - e.size % u64::from(ss),
                sector_size: ss,
                read_only: e.read_only(),
                flush: e.can_flush(),
                discard: e.can_trim(),
            },
            None => Geometry {
                size: 0,
                sector_size: ss,
                read_only: true,
                flush: false,
                discard: false,
            },
        }
    }

    fn can_submit(&self) -> bool {
        self.ops.len() < self.config.max_ops
    }

    fn submit(&mut self, req: IoRequest) {
        let tag = req.tag;
        let g = self.geometry();
        let in_range = req.offset.checked_add(req.len).is_some_and(|e| e <= g.size);
        let mut op = Op {
            kind: req.kind,
            data: req.data,
            parts_left: 1,
            error: None,
            deadline: None,
            expired: false,
        };
        let refuse = match req.kind {
            IoKind::Flush => (!g.flush).then_some(Error::Unsupported),
            IoKind::Discard if !g.discard => Some(Error::Unsupported),
            IoKind::Write | IoKind::Discard if g.read_only => Some(Error::ReadOnly),
            IoKind::Write if op.data.len() as u64 != req.len => Some(Error::OutOfRange),
            _ if !in_range || req.len == 0 => Some(Error::OutOfRange),
            _ => None,
        };
        if let Some(e) = refuse {
            self.done.push_back(IoCompletion {
                tag,
                result: Err(e),
                data: Vec::new(),
            });
            return;
        }
        if req.kind == IoKind::Flush {
            self.ops.insert(tag, op);
            self.flushes.push_back(tag);
            return;
        }
        // Parts: the negotiated payload for reads/writes, the largest aligned u32 for trims.
        let (max, min) = match &self.export {
            Some(e) => (e.max_payload, u64::from(e.block.min)),
            None => (0, 1),
        };
        let chunk = if req.kind == IoKind::Discard { u64::from(u32::MAX) / min * min } else { u64::from(max) };
        if chunk == 0 {
            self.done.push_back(IoCompletion {
                tag,
                result: Err(Error::Io),
                data: Vec::new(),
            });
            return;
        }
        if req.kind == IoKind::Read {
            op.data = alloc::vec![0; req.len as usize];
        }
        let n = req.len.div_ceil(chunk);
        op.parts_left = n as usize;
        self.ops.insert(tag, op);
        for i in 0..n {
            let at = i * chunk;
            let len = (req.len - at).min(chunk) as u32;
            self.queue.push_back(Part {
                tag,
                at,
                offset: req.offset + at,
                len,
                attempts: 1,
            });
        }
    }

    fn poll(&mut self, now_us: u64) -> Option<IoCompletion> {
        self.client.poll(now_us);
        self.events();
        self.expire(now_us);
        self.send(now_us);
        self.events();
        self.done.pop_front()
    }
}
