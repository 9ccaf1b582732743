//! A simulated sndif frontend written from `sndif.h`: it owns its grant table (FakeGrants), its
//! request ring and event page, grants a page directory and buffer pages for OPEN, and behaves
//! like ALSA over `snd-xen-front`: a playback client keeps its ring buffer full, paced by the
//! backend's `CUR_POS` events; a capture client reads each period once the position says it was
//! captured.
#![allow(dead_code)]

use std::collections::VecDeque;

use iconnect::media::Direction;
use media_dsp::SampleFormat;
use media_dsp::format::{decode_f32, encode_f32};
use netback::grant::FakeGrants;
use sndback::sim::SimFront as Front;
use sndback::{Caps, Hub, PollResult, Sndback};
use xen_abi::shmem::HostMem;
use xen_abi::sndif::{BufferOp, Event, Response, Trigger};

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
