//! A simulated sndif frontend written from `sndif.h`: it owns its grant table (FakeGrants), its
//! request ring and event page, grants a page directory and buffer pages for OPEN, and behaves
//! like ALSA over `snd-xen-front`: a playback client keeps its ring buffer full, paced by the
//! backend's `CUR_POS` events; a capture client reads each period once the position says it was
//! captured.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use iconnect::media::Direction;
use media_dsp::SampleFormat;
use media_dsp::format::{decode_f32, encode_f32};
use netback::grant::FakeGrants;
use sndback::{Caps, Hub, PollResult, Sndback};
use xen_abi::ring::FrontRing;
use xen_abi::shmem::{HostMem, SharedMem};
use xen_abi::sndif::{
    BufferOp, EVENT_IN_CONS_OFF, EVENT_IN_PROD_OFF, Event, MSG_SIZE, Open, Request, Response,
    SndRing, Trigger, event_offset,
};

/// One stream's frontend side.
pub struct Front {
    pub ring: FrontRing<HostMem, SndRing>,
    pub ring_mem: HostMem,
    pub evt: HostMem,
    next_id: u16,
    pub buffer: Vec<u32>,
    pub dir: u32,
    pub buffer_sz: u32,
    next_event_id: u16,
    /// Responses seen, in order.
    pub log: Vec<Response>,
}

impl Front {
    pub fn new() -> Self {
        let ring_mem = HostMem::pages(1);
        let ring = FrontRing::init(ring_mem.clone()).unwrap();
        Self {
            ring,
            ring_mem,
            evt: HostMem::pages(1),
            next_id: 0,
            buffer: Vec::new(),
            dir: 0,
            buffer_sz: 0,
            next_event_id: 0,
            log: Vec::new(),
        }
    }

    /// Grants a directory page at `first` and the buffer pages after it.
    pub fn grant_buffer(&mut self, g: &mut FakeGrants, first: u32, buffer_sz: u32) {
        let n = buffer_sz.div_ceil(4096);
        g.grant(first, true);
        self.dir = first;
        self.buffer = (0..n).map(|i| first + 1 + i).collect();
        for (i, r) in self.buffer.iter().enumerate() {
            g.grant(*r, false);
            g.page_mut(first).unwrap()[4 + 4 * i..8 + 4 * i].copy_from_slice(&r.to_le_bytes());
        }
        self.buffer_sz = buffer_sz;
    }

    pub fn send_raw(&mut self, raw: [u8; MSG_SIZE]) {
        self.ring.push_request(&raw).unwrap();
        self.ring.publish_requests();
    }

    /// Sends a request with a fresh id; returns the id.
    pub fn send(&mut self, mut req: Request) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        match &mut req {
            Request::Open { id: i, .. }
            | Request::Close { id: i }
            | Request::Buffer { id: i, .. }
            | Request::Trigger { id: i, .. }
            | Request::HwParamQuery { id: i, .. } => *i = id,
        }
        self.send_raw(req.to_bytes());
        id
    }

    pub fn open(&mut self, rate: u32, fmt: SampleFormat, channels: u8, period_sz: u32) -> u16 {
        self.send(Request::Open {
            id: 0,
            open: Open {
                pcm_rate: rate,
                pcm_format: fmt.sndif_code(),
                pcm_channels: channels,
                buffer_sz: self.buffer_sz,
                gref_directory: self.dir,
                period_sz,
            },
        })
    }

    pub fn buffer_op(&mut self, op: BufferOp, offset: u32, length: u32) -> u16 {
        self.send(Request::Buffer {
            id: 0,
            op,
            offset,
            length,
        })
    }

    pub fn trigger(&mut self, kind: Trigger) -> u16 {
        self.send(Request::Trigger { id: 0, kind })
    }

    /// New responses (also appended to `log`).
    pub fn responses(&mut self) -> Vec<Response> {
        let mut v = Vec::new();
        while let Some(r) = self.ring.pop_response().unwrap() {
            // Lenient: a response to an unknown operation echoes a code xen-abi refuses.
            let rsp = Response::from_bytes(&r).unwrap_or(Response {
                id: u16::from_le_bytes([r[0], r[1]]),
                operation: r[2],
                status: i32::from_le_bytes([r[4], r[5], r[6], r[7]]),
                hw_param: None,
            });
            v.push(rsp);
        }
        self.log.extend(v.iter().copied());
        v
    }

    /// New events; checks their ids run 0, 1, 2, ... and consumes them.
    pub fn events(&mut self) -> Vec<Event> {
        let prod = self.evt.load_u32(EVENT_IN_PROD_OFF, Ordering::Acquire);
        let mut cons = self.evt.load_u32(EVENT_IN_CONS_OFF, Ordering::Relaxed);
        let mut v = Vec::new();
        while cons != prod {
            let mut b = [0u8; MSG_SIZE];
            self.evt.read_bytes(event_offset(cons), &mut b);
            let ev = Event::from_bytes(&b).unwrap();
            let Event::CurPos { id, .. } = ev;
            assert_eq!(id, self.next_event_id, "event ids are sequential");
            self.next_event_id = self.next_event_id.wrapping_add(1);
            v.push(ev);
            cons = cons.wrapping_add(1);
        }
        self.evt
            .store_u32(EVENT_IN_CONS_OFF, cons, Ordering::Release);
        v
    }

    /// Writes into the shared buffer (the frontend's own pages), wrapping at its end.
    pub fn write_buf(&self, g: &mut FakeGrants, offset: u32, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            let at = (offset as usize + i) % self.buffer_sz as usize;
            g.page_mut(self.buffer[at / 4096]).unwrap()[at % 4096] = *b;
        }
    }

    pub fn read_buf(&self, g: &FakeGrants, offset: u32, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| {
                let at = (offset as usize + i) % self.buffer_sz as usize;
                g.page(self.buffer[at / 4096]).unwrap()[at % 4096]
            })
            .collect()
    }
}

/// A synthetic source: a sine, as interleaved frames.
pub struct Sine {
    pub rate: u32,
    pub freq: f64,
    pub amp: f64,
    pub channels: usize,
    pub n: u64,
}

impl Sine {
    pub fn next(&mut self, frames: usize) -> Vec<f32> {
        let mut mono = vec![0f32; frames];
        media_dsp::measure::sine(self.rate, self.freq, self.amp, self.n, &mut mono);
        self.n += frames as u64;
        mono.iter()
            .flat_map(|&v| std::iter::repeat_n(v, self.channels))
            .collect()
    }
}

/// One guest with one stream, its own grant table and its backend engine.
pub struct Guest {
    pub grants: FakeGrants,
    pub front: Front,
    pub be: Sndback<HostMem>,
    pub fmt: SampleFormat,
    pub channels: usize,
    pub frame: u32,
    pub period: u32,
    /// Playback: octets written (application pointer); capture: octets read.
    pub appl: u64,
    /// Last position from an event.
    pub hw: u64,
    pub source: Option<Sine>,
    /// Capture: READs in flight (offset, len) and the bytes received.
    pending: VecDeque<(u32, u32)>,
    pub captured: Vec<u8>,
    pub errors: Vec<Response>,
    pub last_poll: PollResult,
    pub capture: bool,
}

impl Guest {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        hub: &mut Hub,
        dir: Direction,
        priority: u8,
        rate: u32,
        fmt: SampleFormat,
        channels: u8,
        buffer_frames: u32,
        period_frames: u32,
    ) -> Self {
        let frame = (fmt.bytes() * channels as usize) as u32;
        let mut front = Front::new();
        let mut grants = FakeGrants::new();
        front.grant_buffer(&mut grants, 100, buffer_frames * frame);
        let mut be = Sndback::new(Caps::default(), priority);
        be.add_stream(dir, front.ring_mem.clone(), front.evt.clone())
            .unwrap();
        let mut g = Self {
            grants,
            front,
            be,
            fmt,
            channels: channels as usize,
            frame,
            period: period_frames * frame,
            appl: 0,
            hw: 0,
            source: None,
            pending: VecDeque::new(),
            captured: Vec::new(),
            errors: Vec::new(),
            last_poll: PollResult::default(),
            capture: dir == Direction::Capture,
        };
        g.front.open(rate, fmt, channels, g.period);
        g.poll(hub);
        g.check_responses();
        g
    }

    /// A playing guest: 10 ms periods, a 4-period buffer, a sine of `freq`/`amp` on every
    /// channel, started.
    #[allow(clippy::too_many_arguments)]
    pub fn player(
        hub: &mut Hub,
        priority: u8,
        rate: u32,
        fmt: SampleFormat,
        channels: u8,
        freq: f64,
        amp: f64,
    ) -> Self {
        let period = rate / 100;
        let mut g = Self::new(
            hub,
            Direction::Playback,
            priority,
            rate,
            fmt,
            channels,
            4 * period,
            period,
        );
        assert!(g.errors.is_empty(), "{:?}", g.errors);
        let sine = Sine {
            rate,
            freq,
            amp,
            channels: channels as usize,
            n: 0,
        };
        g.start_playback(hub, sine);
        g
    }

    /// A recording guest (10 ms periods, 4-period buffer), started.
    pub fn recorder(hub: &mut Hub, rate: u32, fmt: SampleFormat, channels: u8) -> Self {
        let period = rate / 100;
        let mut g = Self::new(
            hub,
            Direction::Capture,
            0,
            rate,
            fmt,
            channels,
            4 * period,
            period,
        );
        g.start_capture(hub);
        g
    }

    pub fn poll(&mut self, hub: &mut Hub) {
        self.last_poll = self.be.poll(&mut self.grants, hub).unwrap();
    }

    fn check_responses(&mut self) {
        for r in self.front.responses() {
            if r.status != 0 {
                self.errors.push(r);
            } else if r.operation == xen_abi::sndif::op::READ {
                let (off, len) = self.pending.pop_front().unwrap();
                let b = self.front.read_buf(&self.grants, off, len as usize);
                self.captured.extend_from_slice(&b);
            }
        }
    }

    /// Playback: fills the buffer up to what the backend has consumed, then starts.
    pub fn start_playback(&mut self, hub: &mut Hub, source: Sine) {
        self.source = Some(source);
        self.refill();
        self.poll(hub);
        self.front.trigger(Trigger::Start);
        self.poll(hub);
        self.check_responses();
    }

    fn refill(&mut self) {
        let size = self.front.buffer_sz as u64;
        let free = size - (self.appl - self.hw);
        let n = free / self.period as u64 * self.period as u64;
        if n == 0 {
            return;
        }
        let frames = (n / self.frame as u64) as usize;
        let samples = self.source.as_mut().unwrap().next(frames);
        let mut bytes = vec![0u8; n as usize];
        encode_f32(self.fmt, &samples, &mut bytes).unwrap();
        let off = (self.appl % size) as u32;
        self.front.write_buf(&mut self.grants, off, &bytes);
        // One WRITE per contiguous range (split at the end of the buffer).
        let first = (size - off as u64).min(n) as u32;
        self.front.buffer_op(BufferOp::Write, off, first);
        if (first as u64) < n {
            self.front.buffer_op(BufferOp::Write, 0, n as u32 - first);
        }
        self.appl += n;
    }

    /// Capture: starts the stream.
    pub fn start_capture(&mut self, hub: &mut Hub) {
        self.front.trigger(Trigger::Start);
        self.poll(hub);
        self.check_responses();
    }

    /// One service round: events, then refill (playback) or read periods (capture).
    pub fn service(&mut self, hub: &mut Hub) {
        self.poll(hub);
        self.check_responses();
        for ev in self.front.events() {
            let Event::CurPos { position, .. } = ev;
            assert!(position >= self.hw, "position went backwards");
            self.hw = position;
        }
        if !self.capture {
            if self.source.is_some() {
                self.refill();
            }
        } else {
            let size = self.front.buffer_sz as u64;
            while self.hw - self.appl >= self.period as u64 {
                let off = (self.appl % size) as u32;
                let len = (size - off as u64).min(self.period as u64) as u32;
                self.front.buffer_op(BufferOp::Read, off, len);
                self.pending.push_back((off, len));
                self.appl += len as u64;
            }
        }
        self.poll(hub);
        self.check_responses();
    }

    /// The captured samples, decoded.
    pub fn captured_f32(&self) -> Vec<f32> {
        let mut x = vec![0f32; self.captured.len() / self.fmt.bytes()];
        decode_f32(self.fmt, &self.captured, &mut x).unwrap();
        x
    }
}
