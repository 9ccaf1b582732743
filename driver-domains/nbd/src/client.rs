//! The sans-IO NBD client state machine.
//!
//! One [`Client`] serves one export over a sequence of TCP connections. The owner moves bytes and
//! time in and out:
//!
//! ```text
//! connect(now)                      -- a new TCP connection is established
//! loop {
//!     send(client.transmit()); client.sent(n)     -- bytes to write to the socket
//!     client.receive(now, bytes_read)             -- bytes read from the socket
//!     client.poll(now)                            -- timeouts
//!     while let Some(ev) = client.next_event() { ... }   -- Ready / Done / Down
//!     sleep until client.poll_at() or socket activity
//! }
//! ```
//!
//! ## Handshake
//! Newstyle fixed only: the greeting must carry `NBD_FLAG_FIXED_NEWSTYLE`; the client answers
//! `NBD_FLAG_C_FIXED_NEWSTYLE` (plus `NO_ZEROES` when offered) and sends `NBD_OPT_GO` with the
//! export name, asking for `NBD_INFO_BLOCK_SIZE` (so it promises to honour the constraints). It
//! accepts `NBD_REP_INFO` (export size and transmission flags — mandatory — block sizes,
//! ignored names/descriptions/unknown types) until `NBD_REP_ACK`, then emits [`Event::Ready`].
//! An error reply is answered with `NBD_OPT_ABORT` and [`Event::Down`] with
//! [`Error::Refused`]. Structured replies are not negotiated: any structured chunk is a
//! protocol violation.
//!
//! ## Transmission
//! [`Client::read`], [`Client::write`] (or [`Client::write_with`]), [`Client::flush`] and
//! [`Client::trim`] queue a request and return its [`Handle`] (also the wire cookie; handles are
//! never reused, across reconnects too). Requests are checked locally first against the
//! negotiated export (size, read-only, flags, block-size constraints, payload limit, in-flight
//! limit). Replies may come in any order; each completes its request with one [`Event::Done`].
//!
//! ## Failure and reconnect
//! Every server byte is validated: bad magic, a reply to an unknown (or not yet sent) cookie, a
//! structured reply, an oversized option reply, malformed information — any violation takes the
//! connection down. So do timeouts ([`Config::handshake_timeout_us`],
//! [`Config::request_timeout_us`]) and [`Client::connection_lost`]. Going down completes every
//! in-flight request with `Err(`[`Error::Disconnected`]`)` (the request may or may not have
//! reached the disk; the owner retries it after reconnecting), then emits [`Event::Down`]. The
//! guarantee: every handle gets exactly one `Done`; `Ok` only for a server acknowledgement
//! received on the connection it was sent on. [`Client::connect`] starts the next connection
//! and handshake; if the export's size changed meanwhile the connection is refused
//! ([`Error::ExportChanged`]).

use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;

use crate::Error;
use crate::wire::{
    self, BlockSize, Command, Greeting, Info, OptionReply, Request, SimpleReply, cflags, errno,
    handshake, opt, rep, tflags,
};

/// Identifies a request; also its wire cookie. Never reused by one [`Client`].
pub type Handle = u64;

/// Client configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Export name sent in `NBD_OPT_GO` (at most 4096 bytes).
    pub export: String,
    /// Requests in flight at most ([`Error::Busy`] beyond).
    pub max_in_flight: usize,
    /// Largest READ/WRITE payload this client sends (further limited by the server's maximum
    /// block size).
    pub max_payload: u32,
    /// The handshake must finish within this time after [`Client::connect`] (µs).
    pub handshake_timeout_us: u64,
    /// Every request must be answered within this time after its submission (µs).
    pub request_timeout_us: u64,
}

impl Config {
    /// Defaults for `export`: 64 requests in flight, 4 MiB payloads, 10 s handshake timeout,
    /// 30 s request timeout.
    pub fn new(export: &str) -> Self {
        Self {
            export: String::from(export),
            max_in_flight: 64,
            max_payload: 4 << 20,
            handshake_timeout_us: 10_000_000,
            request_timeout_us: 30_000_000,
        }
    }
}

/// The export as negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportInfo {
    /// Size in bytes.
    pub size: u64,
    /// Transmission flags ([`wire::tflags`]).
    pub flags: u16,
    /// Block size constraints (the server's, or [`BlockSize::DEFAULT`]).
    pub block: BlockSize,
    /// Largest READ/WRITE payload the client will send (server maximum and
    /// [`Config::max_payload`], rounded down to the minimum block size).
    pub max_payload: u32,
}

impl ExportInfo {
    /// `NBD_FLAG_READ_ONLY`.
    pub fn read_only(&self) -> bool {
        self.flags & tflags::READ_ONLY != 0
    }
    /// `NBD_FLAG_SEND_FLUSH`.
    pub fn can_flush(&self) -> bool {
        self.flags & tflags::SEND_FLUSH != 0
    }
    /// `NBD_FLAG_SEND_FUA`.
    pub fn can_fua(&self) -> bool {
        self.flags & tflags::SEND_FUA != 0
    }
    /// `NBD_FLAG_SEND_TRIM`.
    pub fn can_trim(&self) -> bool {
        self.flags & tflags::SEND_TRIM != 0
    }
}

/// The outcome of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The request.
    pub handle: Handle,
    /// Its command.
    pub command: Command,
    /// Its offset.
    pub offset: u64,
    /// Its length.
    pub len: u32,
    /// Whether it was sent with FUA.
    pub fua: bool,
    /// `Ok` when the server acknowledged it; [`Error::Server`] with the server's errno;
    /// [`Error::Disconnected`] when the connection went down first (retry it).
    pub result: Result<(), Error>,
    /// The data of a successful READ (`len` bytes); empty otherwise.
    pub data: Vec<u8>,
}

/// What the client reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The handshake finished: requests may be submitted.
    Ready(ExportInfo),
    /// A request completed.
    Done(Completion),
    /// The connection is finished (the reason; [`Error::Closed`] after a requested soft
    /// disconnect). Every in-flight request was completed before this event. The owner sends
    /// what [`Client::transmit`] still holds (an `NBD_OPT_ABORT` or `NBD_CMD_DISC`), closes
    /// the socket, and may [`Client::connect`] again.
    Down(Error),
}

/// Where the client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No connection yet.
    Idle,
    /// Greeting and option haggling.
    Handshake,
    /// Transmission.
    Ready,
    /// Down (after [`Event::Down`]); waiting for [`Client::connect`].
    Down,
}

/// Counters (across connections).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections started.
    pub connects: u64,
    /// Handshakes completed.
    pub handshakes: u64,
    /// Requests submitted.
    pub submitted: u64,
    /// Requests acknowledged by the server.
    pub ok: u64,
    /// Requests answered with a server error.
    pub server_errors: u64,
    /// Requests failed because the connection went down.
    pub disconnected: u64,
    /// Connections taken down by a protocol violation of the server.
    pub protocol_errors: u64,
    /// Connections taken down by a timeout.
    pub timeouts: u64,
    /// Payload bytes read.
    pub bytes_read: u64,
    /// Payload bytes written.
    pub bytes_written: u64,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    command: Command,
    offset: u64,
    len: u32,
    fua: bool,
    submitted_us: u64,
    /// Absolute tx position just past this request's bytes.
    wire_end: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rx {
    Greeting,
    OptHeader,
    OptData(OptionReply),
    ReplyHeader,
    ReadData(Handle),
}

/// The NBD client (see the [module documentation](self)).
#[derive(Debug)]
pub struct Client {
    config: Config,
    phase: Phase,
    rx: Rx,
    acc: Vec<u8>,
    need: usize,
    tx: Vec<u8>,
    tx_off: usize,
    tx_queued: u64,
    tx_sent: u64,
    in_flight: BTreeMap<Handle, InFlight>,
    next_handle: Handle,
    events: VecDeque<Event>,
    export: Option<ExportInfo>,
    known_size: Option<u64>,
    got_export: Option<(u64, u16)>,
    got_block: Option<BlockSize>,
    closing: bool,
    since_us: u64,
    stats: Stats,
}

impl Client {
    /// A client for `config.export`, not connected.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            phase: Phase::Idle,
            rx: Rx::Greeting,
            acc: Vec::new(),
            need: wire::GREETING_SIZE,
            tx: Vec::new(),
            tx_off: 0,
            tx_queued: 0,
            tx_sent: 0,
            in_flight: BTreeMap::new(),
            next_handle: 1,
            events: VecDeque::new(),
            export: None,
            known_size: None,
            got_export: None,
            got_block: None,
            closing: false,
            since_us: 0,
            stats: Stats::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Where the client is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The export of the current connection (in [`Phase::Ready`]).
    pub fn export(&self) -> Option<&ExportInfo> {
        self.export.as_ref()
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether another request may be submitted now.
    pub fn can_submit(&self) -> bool {
        self.phase == Phase::Ready && !self.closing && self.in_flight.len() < self.config.max_in_flight
    }

    /// A new TCP connection to the server is established: starts the handshake. Requests
    /// still in flight on an earlier connection are failed first ([`Error::Disconnected`]).
    pub fn connect(&mut self, now_us: u64) {
        self.fail_in_flight();
        self.phase = Phase::Handshake;
        self.rx = Rx::Greeting;
        self.acc.clear();
        self.need = wire::GREETING_SIZE;
        self.tx.clear();
        self.tx_off = 0;
        self.tx_queued = self.tx_sent;
        self.export = None;
        self.got_export = None;
        self.got_block = None;
        self.closing = false;
        self.since_us = now_us;
        self.stats.connects += 1;
    }

    /// The TCP connection was closed or reset (by the peer or the network): the connection goes
    /// down with [`Error::Disconnected`] (nothing happens if it is already down).
    pub fn connection_lost(&mut self) {
        if matches!(self.phase, Phase::Handshake | Phase::Ready) {
            self.go_down(Error::Disconnected);
        }
    }

    /// Asks for a soft disconnect: no new requests; once every request in flight is answered,
    /// `NBD_CMD_DISC` is queued and [`Event::Down`]`(`[`Error::Closed`]`)` emitted. During the
    /// handshake, the connection closes as soon as the pending `NBD_OPT_GO` is answered.
    pub fn close(&mut self) {
        match self.phase {
            Phase::Handshake if self.rx == Rx::Greeting => self.go_down(Error::Closed),
            Phase::Handshake => self.closing = true,
            Phase::Ready => {
                self.closing = true;
                self.maybe_disc();
            }
            Phase::Idle | Phase::Down => {}
        }
    }

    /// Bytes to send to the server (call [`sent`](Self::sent) with how many were written).
    pub fn transmit(&self) -> &[u8] {
        &self.tx[self.tx_off..]
    }

    /// `n` bytes of [`transmit`](Self::transmit) were written to the socket.
    pub fn sent(&mut self, n: usize) {
        let n = n.min(self.tx.len() - self.tx_off);
        self.tx_off += n;
        self.tx_sent += n as u64;
        if self.tx_off == self.tx.len() {
            self.tx.clear();
            self.tx_off = 0;
        } else if self.tx_off >= 64 * 1024 && self.tx_off * 2 >= self.tx.len() {
            self.tx.drain(..self.tx_off);
            self.tx_off = 0;
        }
    }

    /// The next event, if any.
    pub fn next_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Checks the timeouts at `now_us`.
    pub fn poll(&mut self, now_us: u64) {
        if let Some(t) = self.poll_at()
            && now_us >= t
        {
            self.stats.timeouts += 1;
            self.go_down(Error::Timeout);
        }
    }

    /// When [`poll`](Self::poll) must be called next at the latest (µs), if a timeout is armed.
    pub fn poll_at(&self) -> Option<u64> {
        match self.phase {
            Phase::Handshake => Some(self.since_us.saturating_add(self.config.handshake_timeout_us)),
            Phase::Ready => self
                .in_flight
                .values()
                .map(|f| f.submitted_us)
                .min()
                .map(|t| t.saturating_add(self.config.request_timeout_us)),
            Phase::Idle | Phase::Down => None,
        }
    }

    /// Feeds bytes received from the server. A protocol violation takes the connection down
    /// (see [`Event::Down`]) and is also returned. Bytes arriving while down are ignored.
    pub fn receive(&mut self, _now_us: u64, mut data: &[u8]) -> Result<(), Error> {
        loop {
            if !matches!(self.phase, Phase::Handshake | Phase::Ready) {
                return Ok(());
            }
            if self.acc.len() == self.need {
                if let Err(e) = self.step() {
                    self.stats.protocol_errors += 1;
                    self.go_down(e);
                    return Err(e);
                }
                continue;
            }
            if data.is_empty() {
                return Ok(());
            }
            let take = (self.need - self.acc.len()).min(data.len());
            self.acc.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
    }

    // -----------------------------------------------------------------------------------------
    // Requests

    /// Queues a READ of `len` bytes at `offset`.
    pub fn read(&mut self, now_us: u64, offset: u64, len: u32) -> Result<Handle, Error> {
        self.check_rw(offset, len, false)?;
        Ok(self.queue(now_us, Command::Read, offset, len, false, |_| {}))
    }

    /// Queues a WRITE of `data` at `offset`; `fua`: durable before the acknowledgement.
    pub fn write(&mut self, now_us: u64, offset: u64, data: &[u8], fua: bool) -> Result<Handle, Error> {
        let len = u32::try_from(data.len()).map_err(|_| Error::TooLarge)?;
        self.write_with(now_us, offset, len, fua, |buf| buf.copy_from_slice(data))
    }

    /// Queues a WRITE of `len` bytes at `offset` whose payload `fill` writes directly into the
    /// transmit buffer (no intermediate copy).
    pub fn write_with<F: FnOnce(&mut [u8])>(
        &mut self,
        now_us: u64,
        offset: u64,
        len: u32,
        fua: bool,
        fill: F,
    ) -> Result<Handle, Error> {
        self.check_rw(offset, len, true)?;
        self.check_fua(fua)?;
        Ok(self.queue(now_us, Command::Write, offset, len, fua, fill))
    }

    /// Queues a FLUSH: every write acknowledged before it was sent is durable when it is
    /// acknowledged.
    pub fn flush(&mut self, now_us: u64) -> Result<Handle, Error> {
        let info = self.check_ready()?;
        if !info.can_flush() {
            return Err(Error::Unsupported);
        }
        Ok(self.queue(now_us, Command::Flush, 0, 0, false, |_| {}))
    }

    /// Queues a TRIM of `len` bytes at `offset` (`fua`: the trim is durable before the
    /// acknowledgement).
    pub fn trim(&mut self, now_us: u64, offset: u64, len: u32, fua: bool) -> Result<Handle, Error> {
        let info = self.check_ready()?;
        if !info.can_trim() {
            return Err(Error::Unsupported);
        }
        if info.read_only() {
            return Err(Error::ReadOnly);
        }
        self.check_range(&info, offset, len)?;
        self.check_fua(fua)?;
        Ok(self.queue(now_us, Command::Trim, offset, len, fua, |_| {}))
    }

    fn check_ready(&self) -> Result<ExportInfo, Error> {
        match (self.phase, self.export) {
            (Phase::Ready, Some(info)) if !self.closing => {
                if self.in_flight.len() >= self.config.max_in_flight {
                    Err(Error::Busy)
                } else {
                    Ok(info)
                }
            }
            _ => Err(Error::NotReady),
        }
    }

    fn check_range(&self, info: &ExportInfo, offset: u64, len: u32) -> Result<(), Error> {
        if len == 0 {
            return Err(Error::BadLength);
        }
        let min = u64::from(info.block.min);
        if !offset.is_multiple_of(min) || !u64::from(len).is_multiple_of(min) {
            return Err(Error::Misaligned);
        }
        match offset.checked_add(u64::from(len)) {
            Some(end) if end <= info.size => Ok(()),
            _ => Err(Error::OutOfRange),
        }
    }

    fn check_rw(&self, offset: u64, len: u32, write: bool) -> Result<(), Error> {
        let info = self.check_ready()?;
        if write && info.read_only() {
            return Err(Error::ReadOnly);
        }
        if len > info.max_payload {
            return Err(Error::TooLarge);
        }
        self.check_range(&info, offset, len)
    }

    fn check_fua(&self, fua: bool) -> Result<(), Error> {
        match self.export {
            Some(info) if fua && !info.can_fua() => Err(Error::Unsupported),
            _ => Ok(()),
        }
    }

    fn queue<F: FnOnce(&mut [u8])>(
        &mut self,
        now_us: u64,
        command: Command,
        offset: u64,
        len: u32,
        fua: bool,
        fill: F,
    ) -> Handle {
        let handle = self.next_handle;
        self.next_handle += 1;
        let start = self.tx.len();
        Request {
            flags: if fua { cflags::FUA } else { 0 },
            command,
            cookie: handle,
            offset,
            length: if command == Command::Flush { 0 } else { len },
        }
        .emit(&mut self.tx);
        if command == Command::Write {
            let at = self.tx.len();
            self.tx.resize(at + len as usize, 0);
            fill(&mut self.tx[at..]);
        }
        self.tx_queued += (self.tx.len() - start) as u64;
        self.in_flight.insert(
            handle,
            InFlight {
                command,
                offset,
                len,
                fua,
                submitted_us: now_us,
                wire_end: self.tx_queued,
            },
        );
        self.stats.submitted += 1;
        handle
    }

    // -----------------------------------------------------------------------------------------
    // Receive steps

    fn expect(&mut self, rx: Rx, need: usize) {
        self.rx = rx;
        self.acc.clear();
        self.need = need;
    }

    fn push_tx(&mut self, f: impl FnOnce(&mut Vec<u8>)) {
        let start = self.tx.len();
        f(&mut self.tx);
        self.tx_queued += (self.tx.len() - start) as u64;
    }

    /// Processes the complete unit in `acc` (exactly `need` bytes).
    fn step(&mut self) -> Result<(), Error> {
        match self.rx {
            Rx::Greeting => {
                let g = Greeting::parse(&self.acc)?;
                if g.flags & handshake::FIXED_NEWSTYLE == 0 {
                    return Err(Error::NotFixedNewstyle);
                }
                let mut cflags = wire::client::FIXED_NEWSTYLE;
                if g.flags & handshake::NO_ZEROES != 0 {
                    cflags |= wire::client::NO_ZEROES;
                }
                let name = self.config.export.as_bytes();
                if name.len() > wire::MAX_STRING {
                    return Err(Error::TooLong);
                }
                let go = wire::go_data(name, &[wire::info::BLOCK_SIZE]);
                self.push_tx(|tx| {
                    tx.extend_from_slice(&cflags.to_be_bytes());
                    wire::emit_option(tx, opt::GO, &go);
                });
                self.expect(Rx::OptHeader, wire::OPTION_REPLY_HEADER_SIZE);
            }
            Rx::OptHeader => {
                let r = OptionReply::from_bytes(&self.acc)?;
                if r.option != opt::GO {
                    return Err(Error::UnexpectedReply);
                }
                self.expect(Rx::OptData(r), r.length as usize);
            }
            Rx::OptData(r) => self.option_reply(r)?,
            Rx::ReplyHeader => {
                let r = SimpleReply::from_bytes(&self.acc)?;
                let f = match self.in_flight.get(&r.cookie) {
                    Some(f) if f.wire_end <= self.tx_sent => *f,
                    _ => return Err(Error::UnknownCookie),
                };
                if r.error == 0 && f.command == Command::Read {
                    self.expect(Rx::ReadData(r.cookie), f.len as usize);
                } else {
                    self.expect(Rx::ReplyHeader, wire::SIMPLE_REPLY_SIZE);
                    let result = if r.error == 0 { Ok(()) } else { Err(Error::Server(r.error)) };
                    if r.error == errno::ESHUTDOWN {
                        // The server is shutting down: the client must disconnect softly.
                        self.closing = true;
                    }
                    self.complete(r.cookie, result, Vec::new());
                }
            }
            Rx::ReadData(h) => {
                let data = core::mem::take(&mut self.acc);
                self.expect(Rx::ReplyHeader, wire::SIMPLE_REPLY_SIZE);
                self.complete(h, Ok(()), data);
            }
        }
        Ok(())
    }

    fn option_reply(&mut self, r: OptionReply) -> Result<(), Error> {
        match r.reply_type {
            rep::INFO => {
                match Info::parse(&self.acc)? {
                    Info::Export { size, flags } => self.got_export = Some((size, flags)),
                    Info::BlockSize(bs) => self.got_block = Some(bs),
                    Info::Other(_) => {}
                }
                self.expect(Rx::OptHeader, wire::OPTION_REPLY_HEADER_SIZE);
            }
            rep::ACK => {
                if r.length != 0 {
                    return Err(Error::BadInfo);
                }
                let (size, flags) = self.got_export.ok_or(Error::NoExportInfo)?;
                if self.known_size.is_some_and(|s| s != size) {
                    return Err(Error::ExportChanged);
                }
                let block = self.got_block.unwrap_or(BlockSize::DEFAULT);
                let max = block.max.min(self.config.max_payload);
                let max_payload = max - max % block.min;
                if max_payload == 0 {
                    return Err(Error::BadInfo);
                }
                let info = ExportInfo {
                    size,
                    flags,
                    block,
                    max_payload,
                };
                self.known_size = Some(size);
                self.export = Some(info);
                self.phase = Phase::Ready;
                self.stats.handshakes += 1;
                self.expect(Rx::ReplyHeader, wire::SIMPLE_REPLY_SIZE);
                self.events.push_back(Event::Ready(info));
                self.maybe_disc();
            }
            t if t & rep::ERROR_BIT != 0 => {
                // Refused (unknown export, TLS required, ...): the message is for humans only.
                self.go_down(Error::Refused(t));
                self.push_tx(|tx| wire::emit_option(tx, opt::ABORT, &[]));
            }
            _ => return Err(Error::UnexpectedReply),
        }
        Ok(())
    }

    fn complete(&mut self, h: Handle, result: Result<(), Error>, data: Vec<u8>) {
        let Some(f) = self.in_flight.remove(&h) else { return };
        match result {
            Ok(()) => {
                self.stats.ok += 1;
                match f.command {
                    Command::Read => self.stats.bytes_read += u64::from(f.len),
                    Command::Write => self.stats.bytes_written += u64::from(f.len),
                    _ => {}
                }
            }
            Err(Error::Disconnected) => self.stats.disconnected += 1,
            Err(_) => self.stats.server_errors += 1,
        }
        self.events.push_back(Event::Done(Completion {
            handle: h,
            command: f.command,
            offset: f.offset,
            len: f.len,
            fua: f.fua,
            result,
            data,
        }));
        self.maybe_disc();
    }

    /// After a close request, sends `NBD_CMD_DISC` once nothing is in flight.
    fn maybe_disc(&mut self) {
        if self.phase == Phase::Ready && self.closing && self.in_flight.is_empty() {
            let cookie = self.next_handle;
            self.next_handle += 1;
            self.push_tx(|tx| {
                Request {
                    flags: 0,
                    command: Command::Disc,
                    cookie,
                    offset: 0,
                    length: 0,
                }
                .emit(tx)
            });
            self.phase = Phase::Down;
            self.export = None;
            self.events.push_back(Event::Down(Error::Closed));
        }
    }

    fn fail_in_flight(&mut self) {
        let handles: Vec<Handle> = self.in_flight.keys().copied().collect();
        for h in handles {
            self.complete(h, Err(Error::Disconnected), Vec::new());
        }
    }

    /// Takes the connection down: unsent bytes are dropped (so a request reported failed is
    /// never sent later), in-flight requests fail, then `Down(e)`.
    fn go_down(&mut self, e: Error) {
        self.phase = Phase::Down;
        self.export = None;
        self.tx.clear();
        self.tx_off = 0;
        self.tx_queued = self.tx_sent;
        self.acc.clear();
        self.fail_in_flight();
        self.events.push_back(Event::Down(e));
    }
}
