//! The workloads, as tasks polled with the time passed in (host-tested over a simulated link).
//!
//! Each [`Workload::poll`] runs after `Interface::poll`, moves data through its sockets and
//! says when it wants to run again; when it is over it returns its [`Report`] (the
//! `ICONNECT-RESULT` fields). Byte counters ([`Workload::payload`]) feed the once-a-second
//! `ICONNECT-RATE` lines.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::net::Ipv4Addr;

use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::socket::{icmp, tcp};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{IpAddress, Icmpv4Packet, Icmpv4Repr};

use crate::config::{GuestConfig, Work};
use crate::stats::{self, Rtts};

/// TCP echo port of `serve`.
pub const ECHO_PORT: u16 = 7;
/// TCP discard port of `serve`.
pub const DISCARD_PORT: u16 = 9;
/// Listening sockets per `serve` service.
const SERVE_SOCKETS: usize = 4;
/// Echo buffers (each way).
const ECHO_BUF: usize = 16 * 1024;
/// Discard receive buffer (the receive window: a bulk sender is window-bound at buffer / RTT).
const DISCARD_BUF: usize = 256 * 1024;
/// `tcp-send` send buffer.
const SEND_BUF: usize = 128 * 1024;
/// `tcp-rtt` message.
const RTT_MSG: usize = 64;
/// ICMP echo payload.
const PING_DATA: usize = 56;
/// A ping not answered within this is lost.
const PING_TIMEOUT: Duration = Duration::from_secs(1);
/// A round trip not answered within this fails `tcp-rtt`.
const RTT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a finished TCP workload waits for its FIN to be acknowledged.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// The end of a workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Whether it achieved what it was asked.
    pub ok: bool,
    /// `key=value` fields (space separated; `why=` on failure).
    pub fields: String,
}

/// What a poll says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Poll again at the latest at this time (`None`: on the next event).
    Continue(Option<Instant>),
    /// Finished.
    Done(Report),
}

fn fail(why: impl Into<String>) -> Step {
    Step::Done(Report {
        ok: false,
        fields: format!("why={}", why.into().replace(' ', "_")),
    })
}

fn pattern(buf: &mut [u8], start: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        let x = start + i as u64;
        *b = (x ^ (x >> 8) ^ (x >> 16)) as u8;
    }
}

/// A running workload.
pub struct Workload {
    kind: Kind,
    /// Payload bytes sent / received so far.
    payload: (u64, u64),
}

enum Kind {
    Ping(Ping),
    Send(Send),
    Rtt(Rtt),
    Serve(Serve),
}

struct Ping {
    h: SocketHandle,
    ip: Ipv4Addr,
    ident: u16,
    count: u32,
    interval: Duration,
    max_lost: u32,
    /// Next sequence number; 0 is the uncounted warm-up.
    seq: u16,
    outstanding: Option<(u16, Instant)>,
    next_at: Instant,
    rtts: Rtts,
    warmup_us: Option<u64>,
    lost: u32,
}

struct Connect {
    h: SocketHandle,
    ip: Ipv4Addr,
    port: u16,
    local_port: u16,
    started: bool,
    deadline: Instant,
}

impl Connect {
    fn new(sockets: &mut SocketSet<'static>, ip: Ipv4Addr, port: u16, rx: usize, tx: usize, seed: u64, deadline: Instant) -> Self {
        let mut s = tcp::Socket::new(tcp::SocketBuffer::new(vec![0; rx]), tcp::SocketBuffer::new(vec![0; tx]));
        s.set_nagle_enabled(false);
        s.set_ack_delay(None);
        Self {
            h: sockets.add(s),
            ip,
            port,
            local_port: 49152 + (seed % 16000) as u16,
            started: false,
            deadline,
        }
    }

    /// `Ok(true)` once established.
    fn poll(&mut self, iface: &mut Interface, sockets: &mut SocketSet<'_>, now: Instant) -> Result<bool, String> {
        let s = sockets.get_mut::<tcp::Socket>(self.h);
        if !self.started {
            s.connect(iface.context(), (IpAddress::Ipv4(self.ip), self.port), self.local_port)
                .map_err(|e| format!("connect {}:{}: {e}", self.ip, self.port))?;
            self.started = true;
            return Ok(false);
        }
        match s.state() {
            tcp::State::Established => Ok(true),
            tcp::State::Closed => Err(format!("connection to {}:{} refused or reset", self.ip, self.port)),
            _ if now >= self.deadline => Err(format!("no connection to {}:{} in time", self.ip, self.port)),
            _ => Ok(false),
        }
    }
}

struct Send {
    c: Connect,
    secs: u32,
    chunk: Vec<u8>,
    written: u64,
    start: Option<Instant>,
    /// (bytes acknowledged, microseconds) at the end of the run.
    result: Option<(u64, u64)>,
    close_by: Instant,
}

struct Rtt {
    c: Connect,
    connected: bool,
    count: u32,
    done: u32,
    msg: [u8; RTT_MSG],
    got: usize,
    sent_at: Option<Instant>,
    rtts: Rtts,
    closing: Option<Instant>,
}

struct Pool {
    port: u16,
    handles: Vec<SocketHandle>,
    connected: Vec<bool>,
}

struct Serve {
    echo: Pool,
    discard: Pool,
    until: Option<Instant>,
    started: Instant,
    connections: u64,
    echoed: u64,
    discarded: u64,
}

impl Pool {
    fn new(sockets: &mut SocketSet<'static>, port: u16, rx: usize, tx: usize) -> Self {
        let handles: Vec<_> = (0..SERVE_SOCKETS)
            .map(|_| {
                let mut s = tcp::Socket::new(tcp::SocketBuffer::new(vec![0; rx]), tcp::SocketBuffer::new(vec![0; tx]));
                s.set_nagle_enabled(false);
                sockets.add(s)
            })
            .collect();
        Self {
            port,
            connected: vec![false; handles.len()],
            handles,
        }
    }

    /// Serves every socket: re-listen, `serve(socket) -> (received, sent)`, close when the peer
    /// closed. Returns (new connections, received, sent).
    fn poll(&mut self, sockets: &mut SocketSet<'_>, mut serve: impl FnMut(&mut tcp::Socket<'_>) -> (u64, u64)) -> (u64, u64, u64) {
        let (mut conns, mut rx, mut tx) = (0, 0, 0);
        for (i, &h) in self.handles.iter().enumerate() {
            let s = sockets.get_mut::<tcp::Socket>(h);
            if !s.is_open() {
                self.connected[i] = false;
                let _ = s.listen(self.port);
                continue;
            }
            if !self.connected[i] && s.state() == tcp::State::Established {
                self.connected[i] = true;
                conns += 1;
            }
            let (r, t) = serve(s);
            rx += r;
            tx += t;
            if s.state() == tcp::State::CloseWait && s.send_queue() == 0 && !s.can_recv() {
                s.close();
            }
        }
        (conns, rx, tx)
    }
}

impl Workload {
    /// Starts the workload of `cfg` (hostile modes are not workloads: the image runs them).
    pub fn new(cfg: &GuestConfig, sockets: &mut SocketSet<'static>, now: Instant, seed: u64) -> Option<Self> {
        let deadline = now + Duration::from_secs(u64::from(cfg.timeout_s));
        let kind = match cfg.work {
            Work::Ping { ip, count } => {
                let meta = || vec![icmp::PacketMetadata::EMPTY; 8];
                let mut s = icmp::Socket::new(
                    icmp::PacketBuffer::new(meta(), vec![0; 2048]),
                    icmp::PacketBuffer::new(meta(), vec![0; 2048]),
                );
                let ident = 0x4000 | (seed as u16 & 0x3fff);
                s.bind(icmp::Endpoint::Ident(ident)).ok()?;
                Kind::Ping(Ping {
                    h: sockets.add(s),
                    ip,
                    ident,
                    count,
                    interval: Duration::from_millis(u64::from(cfg.interval_ms)),
                    max_lost: cfg.max_lost,
                    seq: 0,
                    outstanding: None,
                    next_at: now,
                    rtts: Rtts::default(),
                    warmup_us: None,
                    lost: 0,
                })
            }
            Work::TcpSend { ip, port, secs } => {
                let mut chunk = vec![0; 4096];
                pattern(&mut chunk, 0);
                Kind::Send(Send {
                    c: Connect::new(sockets, ip, port, 4096, SEND_BUF, seed, deadline),
                    secs,
                    chunk,
                    written: 0,
                    start: None,
                    result: None,
                    close_by: now,
                })
            }
            Work::TcpRtt { ip, port, count } => Kind::Rtt(Rtt {
                c: Connect::new(sockets, ip, port, 4096, 4096, seed, deadline),
                connected: false,
                count,
                done: 0,
                msg: [0; RTT_MSG],
                got: 0,
                sent_at: None,
                rtts: Rtts::default(),
                closing: None,
            }),
            Work::Serve => Kind::Serve(Serve {
                echo: Pool::new(sockets, ECHO_PORT, ECHO_BUF, ECHO_BUF),
                discard: Pool::new(sockets, DISCARD_PORT, DISCARD_BUF, 1024),
                until: cfg.secs.map(|s| now + Duration::from_secs(u64::from(s))),
                started: now,
                connections: 0,
                echoed: 0,
                discarded: 0,
            }),
            Work::Hostile(_) => return None,
        };
        Some(Self { kind, payload: (0, 0) })
    }

    /// Payload bytes (sent, received) so far: TCP bytes acknowledged by the sink for
    /// `tcp-send`, received for `serve`, echo payloads for `tcp-rtt` and `ping`.
    pub fn payload(&self) -> (u64, u64) {
        self.payload
    }

    /// Whether the workload is `serve` (which only reports rates while traffic flows).
    pub fn is_serve(&self) -> bool {
        matches!(self.kind, Kind::Serve(_))
    }

    /// Runs the workload after an `Interface::poll`.
    pub fn poll(&mut self, iface: &mut Interface, sockets: &mut SocketSet<'_>, now: Instant) -> Step {
        match &mut self.kind {
            Kind::Ping(p) => p.poll(sockets, now, &mut self.payload),
            Kind::Send(s) => s.poll(iface, sockets, now, &mut self.payload),
            Kind::Rtt(r) => r.poll(iface, sockets, now, &mut self.payload),
            Kind::Serve(s) => s.poll(sockets, now, &mut self.payload),
        }
    }
}

impl Ping {
    fn poll(&mut self, sockets: &mut SocketSet<'_>, now: Instant, payload: &mut (u64, u64)) -> Step {
        let s = sockets.get_mut::<icmp::Socket>(self.h);
        let caps = ChecksumCapabilities::default();
        while let Ok((data, _from)) = s.recv() {
            let Ok(pkt) = Icmpv4Packet::new_checked(data) else { continue };
            let Ok(Icmpv4Repr::EchoReply { ident, seq_no, data }) = Icmpv4Repr::parse(&pkt, &caps) else {
                continue;
            };
            match self.outstanding {
                Some((seq, at)) if ident == self.ident && seq_no == seq && data.len() == PING_DATA => {
                    let us = (now - at).total_micros();
                    if seq == 0 {
                        self.warmup_us = Some(us);
                    } else {
                        self.rtts.push(us);
                    }
                    payload.1 += data.len() as u64;
                    self.outstanding = None;
                    self.next_at = now + self.interval;
                }
                _ => {}
            }
        }
        if let Some((seq, at)) = self.outstanding
            && now >= at + PING_TIMEOUT
        {
            if seq != 0 {
                self.lost += 1;
            }
            self.outstanding = None;
            self.next_at = now;
        }
        let sent = u32::from(self.seq).saturating_sub(1);
        if self.outstanding.is_none() && self.seq > 0 && sent >= self.count {
            let received = self.rtts.len() as u32;
            let ok = received > 0 && self.lost <= self.max_lost;
            let mut fields = format!(
                "target={} sent={sent} received={received} lost={} {}",
                self.ip,
                self.lost,
                self.rtts.fields()
            );
            if let Some(w) = self.warmup_us {
                fields += &format!(" warmup_us={w}");
            }
            if !ok {
                fields += " why=lost_pings";
            }
            return Step::Done(Report { ok, fields });
        }
        if self.outstanding.is_none() && now >= self.next_at && s.can_send() {
            let mut data = [0u8; PING_DATA];
            pattern(&mut data, u64::from(self.seq));
            let repr = Icmpv4Repr::EchoRequest {
                ident: self.ident,
                seq_no: self.seq,
                data: &data,
            };
            if let Ok(buf) = s.send(repr.buffer_len(), IpAddress::Ipv4(self.ip)) {
                repr.emit(&mut Icmpv4Packet::new_unchecked(buf), &caps);
                self.outstanding = Some((self.seq, now));
                payload.0 += PING_DATA as u64;
                self.seq = self.seq.wrapping_add(1);
            }
        }
        Step::Continue(Some(match self.outstanding {
            Some((_, at)) => at + PING_TIMEOUT,
            None => self.next_at,
        }))
    }
}

impl Send {
    fn poll(&mut self, iface: &mut Interface, sockets: &mut SocketSet<'_>, now: Instant, payload: &mut (u64, u64)) -> Step {
        if self.start.is_none() {
            match self.c.poll(iface, sockets, now) {
                Ok(true) => self.start = Some(now),
                Ok(false) => return Step::Continue(Some(self.c.deadline)),
                Err(e) => return fail(e),
            }
        }
        let start = self.start.unwrap_or(now);
        let end = start + Duration::from_secs(u64::from(self.secs));
        let s = sockets.get_mut::<tcp::Socket>(self.c.h);
        let acked = self.written - s.send_queue() as u64;
        payload.0 = acked;
        if let Some((bytes, us)) = self.result {
            let closed = matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait | tcp::State::FinWait2);
            if closed || now >= self.close_by {
                return Step::Done(Report {
                    ok: bytes > 0,
                    fields: format!(
                        "target={}:{} bytes={bytes} secs={:.3} bps={}{}",
                        self.c.ip,
                        self.c.port,
                        us as f64 / 1e6,
                        stats::bps(bytes, us),
                        if bytes > 0 { "" } else { " why=nothing_acknowledged" }
                    ),
                });
            }
            return Step::Continue(Some(self.close_by));
        }
        if now >= end {
            self.result = Some((acked, (now - start).total_micros()));
            s.close();
            self.close_by = now + CLOSE_WAIT;
            return Step::Continue(Some(self.close_by));
        }
        if !s.may_send() {
            return fail(format!("connection to {}:{} closed by the peer", self.c.ip, self.c.port));
        }
        while s.can_send() {
            let at = (self.written % self.chunk.len() as u64) as usize;
            match s.send_slice(&self.chunk[at..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => self.written += n as u64,
            }
        }
        Step::Continue(Some(end))
    }
}

impl Rtt {
    fn poll(&mut self, iface: &mut Interface, sockets: &mut SocketSet<'_>, now: Instant, payload: &mut (u64, u64)) -> Step {
        if !self.connected {
            match self.c.poll(iface, sockets, now) {
                Ok(true) => self.connected = true,
                Ok(false) => return Step::Continue(Some(self.c.deadline)),
                Err(e) => return fail(e),
            }
        }
        let s = sockets.get_mut::<tcp::Socket>(self.c.h);
        if let Some(by) = self.closing {
            let closed = matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait | tcp::State::FinWait2);
            if closed || now >= by {
                return Step::Done(Report {
                    ok: true,
                    fields: format!(
                        "target={}:{} count={} {}",
                        self.c.ip,
                        self.c.port,
                        self.rtts.len(),
                        self.rtts.fields()
                    ),
                });
            }
            return Step::Continue(Some(by));
        }
        if let Some(at) = self.sent_at {
            let mut buf = [0u8; RTT_MSG];
            while self.got < RTT_MSG {
                match s.recv_slice(&mut buf[..RTT_MSG - self.got]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if buf[..n] != self.msg[self.got..self.got + n] {
                            return fail(format!("echo {} came back changed", self.done));
                        }
                        self.got += n;
                    }
                }
            }
            if self.got < RTT_MSG {
                if now >= at + RTT_TIMEOUT {
                    return fail(format!("no echo for round trip {} in time", self.done));
                }
                if !s.may_recv() {
                    return fail("echo server closed the connection");
                }
                return Step::Continue(Some(at + RTT_TIMEOUT));
            }
            self.rtts.push((now - at).total_micros());
            payload.1 += RTT_MSG as u64;
            self.done += 1;
            self.sent_at = None;
            if self.done == self.count {
                s.close();
                self.closing = Some(now + CLOSE_WAIT);
                return Step::Continue(Some(now));
            }
        }
        if s.send_capacity() - s.send_queue() < RTT_MSG {
            return Step::Continue(None);
        }
        pattern(&mut self.msg, u64::from(self.done) * 977);
        if s.send_slice(&self.msg) != Ok(RTT_MSG) {
            return fail("could not queue a request");
        }
        payload.0 += RTT_MSG as u64;
        self.got = 0;
        self.sent_at = Some(now);
        Step::Continue(Some(now + RTT_TIMEOUT))
    }
}

impl Serve {
    fn poll(&mut self, sockets: &mut SocketSet<'_>, now: Instant, payload: &mut (u64, u64)) -> Step {
        let mut chunk = [0u8; 2048];
        let (c1, r1, t1) = self.echo.poll(sockets, |s| {
            let (mut rx, mut tx) = (0, 0);
            loop {
                let room = (s.send_capacity() - s.send_queue()).min(chunk.len());
                if room == 0 {
                    break;
                }
                let n = match s.recv_slice(&mut chunk[..room]) {
                    Ok(n) if n > 0 => n,
                    _ => break,
                };
                rx += n as u64;
                if let Ok(m) = s.send_slice(&chunk[..n]) {
                    tx += m as u64;
                }
            }
            (rx, tx)
        });
        let (c2, r2, _) = self.discard.poll(sockets, |s| {
            let mut rx = 0;
            while let Ok(n) = s.recv(|b| (b.len(), b.len())) {
                if n == 0 {
                    break;
                }
                rx += n as u64;
            }
            (rx, 0)
        });
        self.connections += c1 + c2;
        self.echoed += t1;
        self.discarded += r2;
        payload.0 += t1;
        payload.1 += r1 + r2;
        if let Some(until) = self.until
            && now >= until
        {
            let us = (now - self.started).total_micros();
            return Step::Done(Report {
                ok: true,
                fields: format!(
                    "connections={} echo_bytes={} discard_bytes={} secs={:.3} bps={}",
                    self.connections,
                    self.echoed,
                    self.discarded,
                    us as f64 / 1e6,
                    stats::bps(self.discarded, us)
                ),
            });
        }
        Step::Continue(self.until)
    }
}
