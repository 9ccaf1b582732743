//! # snd-guest: a guest VM playing or recording sound through media-dd (host-tested logic)
//!
//! The image (`src/main.rs`, target only) takes its ivshmem device as an iConnect channel
//! (contract "sndif over an iConnect channel", `media_dd::channel`), states its stream with
//! `iconnect::media` keys, and plays a generated tone through an sndif stream like
//! `snd-xen-front` would: OPEN with a page directory, the buffer filled and WRITTEN, TRIGGER
//! start, then on every `CUR_POS` event the part the backend consumed is refilled, until
//! `secs` of audio were written and played; then TRIGGER stop and CLOSE.
//!
//! Command line: `play=sine:<hz>:<rate>:<format>:<channels>` (format: a sndif name such as
//! `s16_le`, or `s16`/`s32`/`f32`), `class=alert|voice|media|background` (or iconnect's class
//! names), `secs=<n>` (default 3), `amp_db=<dBFS peak>` (default -6), `delay_ms=<n>` (wait
//! after the link is up before playing), `name=<g>`, `chan=<ivshmem index>` (default 0),
//! `heartbeat_ms=<n>` (liveness promised to media-dd, default 500, 0 = none; the guest beats
//! every 100 ms), `hostile=ring` (instead of playing, publish a request producer index 1000 slots ahead of
//! the ring and expect the domain to close this channel alone).
//!
//! Capture: `capture=<rate>:<format>:<channels>` (with `secs=`, `class=`, `name=`) asks for a
//! capture stream instead ([`Recorder`]): OPEN, TRIGGER start, a READ of what was captured at
//! every `CUR_POS` event; every second of audio is measured in the guest (dominant frequency
//! of the first channel by FFT + Goertzel refinement, RMS level) and reported
//! (`ICONNECT-CAPTURE name= sec= peak_hz= rms_dbfs=`); after `secs` seconds the result line
//! carries the last second's `peak_hz=` and `rms_dbfs=`.
//!
//! Everything per sample of playback is integer (a Q15 sine table and a 32-bit phase accumulator: the
//! images are soft-float).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use iconnect::Class;
use iconnect::media::{Direction, Format, MediaGrant, MediaRequest};
use iconnect_channel::{DataArea, Frontend, KeyMap, Window};
use media_dd::channel::{EVENT_PAGE_KEY, HEARTBEAT_KEY, PEER_KEY, RING};
use media_dsp::SampleFormat;
use xen_abi::PAGE_SIZE;
use xen_abi::ring::FrontRing;
use xen_abi::shmem::SharedMem;
use xen_abi::sndif::{
    BufferOp, EVENT_IN_CONS_OFF, EVENT_IN_PROD_OFF, Event, MSG_SIZE, Open, Request, Response, SndRing, Trigger,
    event_offset, op,
};

/// Data page of the event page.
pub const EVENT_PAGE: u32 = 0;
/// Data page of the buffer's page directory.
pub const DIR_PAGE: u32 = 1;
/// First buffer page.
pub const BUFFER_PAGE: u32 = 2;

/// The guest's parsed command line.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Name in the result line.
    pub name: String,
    /// The `play=` text.
    pub play_text: String,
    /// Tone frequency, Hz.
    pub freq_hz: u32,
    /// The stream it asks for.
    pub request: MediaRequest,
    /// Seconds of audio.
    pub secs: u32,
    /// Peak amplitude, dBFS.
    pub amp_db: i32,
    /// Wait before playing, ms.
    pub delay_ms: u32,
    /// ivshmem device index.
    pub chan: usize,
    /// `hostile=ring`: break the ring instead of playing.
    pub hostile_ring: bool,
    /// `heartbeat_ms=` promised to the domain (default 500; 0: no promise).
    pub heartbeat_ms: u32,
    /// `capture=` text: record instead of playing (the request's direction is capture).
    pub capture_text: Option<String>,
}

fn format_code(v: &str) -> Option<u8> {
    let name = match v {
        "s16" => "s16_le",
        "s32" => "s32_le",
        "s24" => "s24_le",
        "f32" => "float_le",
        other => other,
    };
    xen_abi::sndif::pcm_format_from_name(name)
}

impl Config {
    /// Parses the command line (see the [crate documentation](crate)).
    pub fn from_cmdline(cmdline: &str) -> Result<Self, String> {
        let get = |k: &str| {
            cmdline.split_ascii_whitespace().find_map(|t| t.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
        };
        let num = |k: &str, d: u32| -> Result<u32, String> {
            get(k).map_or(Ok(d), |v| v.parse().map_err(|_| format!("bad {k}={v}")))
        };
        let capture = get("capture");
        // A capture's stream shape is parsed as a play= spec (its tone is unused).
        let shape = capture.map(|c| format!("sine:1:{c}"));
        let play = shape.as_deref().unwrap_or_else(|| get("play").unwrap_or("sine:440:48000:s16_le:2"));
        let parts: Vec<&str> = play.split(':').collect();
        let [kind, f, r, fmt, ch] = parts[..] else {
            return Err(match capture {
                Some(c) => format!("capture={c}: want <rate>:<format>:<channels>"),
                None => format!("play={play}: want sine:<hz>:<rate>:<format>:<channels>"),
            });
        };
        if kind != "sine" {
            return Err(format!("play={play}: only sine"));
        }
        let freq_hz: u32 = f.parse().map_err(|_| format!("play={play}: bad frequency"))?;
        let rate_hz: u32 = r.parse().map_err(|_| format!("play={play}: bad rate"))?;
        let code = format_code(fmt).ok_or_else(|| format!("play={play}: unknown format {fmt}"))?;
        SampleFormat::from_sndif(code).map_err(|_| format!("play={play}: format {fmt} not generated"))?;
        let channels: u8 = ch.parse().map_err(|_| format!("play={play}: bad channels"))?;
        if freq_hz == 0 || rate_hz < 4000 || freq_hz >= rate_hz / 2 || channels == 0 || channels > 8 {
            return Err(format!("play={play}: out of range"));
        }
        let class = match get("class").unwrap_or("media") {
            "alert" => Class::Realtime,
            "voice" => Class::Interactive,
            "media" => Class::Bulk,
            other => Class::parse(iconnect::media::CLASS, other).map_err(|_| format!("bad class={other}"))?,
        };
        let amp_db = match get("amp_db") {
            None => -6,
            Some(v) => v.parse::<i32>().ok().filter(|a| (-90..=0).contains(a)).ok_or_else(|| format!("bad amp_db={v}"))?,
        };
        Ok(Self {
            name: get("name").unwrap_or("g").into(),
            play_text: capture.unwrap_or(play).into(),
            freq_hz,
            request: MediaRequest {
                direction: if capture.is_some() { Direction::Capture } else { Direction::Playback },
                format: Format(code),
                rate_hz,
                channels,
                class,
            },
            secs: num("secs", 3)?,
            amp_db,
            delay_ms: num("delay_ms", 0)?,
            chan: num("chan", 0)? as usize,
            heartbeat_ms: num("heartbeat_ms", 500)?,
            capture_text: capture.map(String::from),
            hostile_ring: match get("hostile") {
                None => false,
                Some("ring") => true,
                Some(v) => return Err(format!("bad hostile={v} (ring)")),
            },
        })
    }

    /// The frontend keys: peer id, event page, the stream request.
    pub fn keys(&self, own_id: u16) -> Result<KeyMap, String> {
        let mut keys = KeyMap::new();
        keys.insert(PEER_KEY, &own_id.to_string()).map_err(|e| format!("keys: {e}"))?;
        keys.insert(EVENT_PAGE_KEY, &EVENT_PAGE.to_string()).map_err(|e| format!("keys: {e}"))?;
        if self.heartbeat_ms > 0 {
            keys.insert(HEARTBEAT_KEY, &self.heartbeat_ms.to_string()).map_err(|e| format!("keys: {e}"))?;
        }
        self.request.write(&mut keys).map_err(|e| format!("keys: {e}"))?;
        Ok(keys)
    }
}

/// `hostile=ring`: publishes a request producer index 1000 slots past the ring's start on a
/// ready channel (a ring of 32 slots: out of range); returns the value written.
pub fn wild_producer<M: SharedMem + Clone>(fe: &Frontend<M>) -> Result<u32, String> {
    let ring = fe.front_ring::<SndRing>(RING).map_err(|e| format!("ring: {e}"))?;
    let wild = ring.req_prod_pvt().wrapping_add(1000);
    ring.mem().store_u32(xen_abi::ring::REQ_PROD_OFF, wild, Ordering::Release);
    Ok(wild)
}

/// A sine generator: Q15 table of one cycle, 32-bit phase accumulator.
#[derive(Debug, Clone)]
pub struct Tone {
    table: Vec<i32>,
    phase: u32,
    step: u32,
    channels: usize,
}

const TABLE_BITS: u32 = 12;

impl Tone {
    /// `freq_hz` at `rate_hz`, peak `amp_db` dBFS, `channels` identical channels.
    pub fn new(freq_hz: u32, rate_hz: u32, amp_db: i32, channels: usize) -> Self {
        let amp = libm::powf(10.0, amp_db as f32 / 20.0);
        let n = 1usize << TABLE_BITS;
        let table = (0..n)
            .map(|i| (libm::sinf(i as f32 * core::f32::consts::TAU / n as f32) * amp * 2_147_483_647.0) as i32)
            .collect();
        let step = ((u64::from(freq_hz) << 32) / u64::from(rate_hz)) as u32;
        Self { table, phase: 0, step, channels }
    }

    /// Fills `out` (interleaved Q31 samples, whole frames).
    pub fn fill_q31(&mut self, out: &mut [i32]) {
        for frame in out.chunks_exact_mut(self.channels) {
            let v = self.table[(self.phase >> (32 - TABLE_BITS)) as usize];
            frame.fill(v);
            self.phase = self.phase.wrapping_add(self.step);
        }
    }
}

/// The result of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Frames written.
    pub frames: u64,
    /// Position events received.
    pub events: u64,
    /// Requests sent.
    pub requests: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Opening,
    Running,
    Closing,
    Done,
}

/// Buffer: 16 periods of 10 ms (a guest VM descheduled for a hundred ms under TCG on a loaded
/// host does not underrun; 8 periods did, once in a 4-guest run at load 8).
pub const PERIODS: u32 = 16;

/// The stream buffer's bytes `offset..offset + len` as pieces within its pages: (data page,
/// offset in the page, offset in the range, bytes).
fn pieces(offset: usize, len: usize) -> impl Iterator<Item = (u32, usize, usize, usize)> {
    let mut done = 0;
    core::iter::from_fn(move || {
        (done < len).then(|| {
            let off = offset + done;
            let n = (PAGE_SIZE - off % PAGE_SIZE).min(len - done);
            let piece = (BUFFER_PAGE + (off / PAGE_SIZE) as u32, off % PAGE_SIZE, done, n);
            done += n;
            piece
        })
    })
}

/// One sndif stream over the channel: ring, pages, event page, the OPEN'd shape, counters.
struct Link<M: SharedMem + Clone> {
    ring: FrontRing<Window<M>, SndRing>,
    data: DataArea<M>,
    evt: Window<M>,
    fmt: SampleFormat,
    channels: usize,
    frame: u32,
    buffer_sz: u32,
    period_sz: u32,
    next_id: u16,
    report: Report,
    notify: bool,
}

impl<M: SharedMem + Clone> Link<M> {
    /// Sets the stream up on a ready channel with the granted shape: zeroes the event page,
    /// writes the page directory, sends OPEN.
    fn open(fe: &Frontend<M>, grant: &MediaGrant) -> Result<Self, String> {
        let fmt = SampleFormat::from_sndif(grant.format.0).map_err(|_| format!("granted format {}", grant.format.as_str()))?;
        let channels = usize::from(grant.channels);
        let frame = (fmt.bytes() * channels) as u32;
        let period_sz = (grant.rate_hz / 100).max(16) * frame;
        let buffer_sz = PERIODS * period_sz;
        let pages = buffer_sz.div_ceil(PAGE_SIZE as u32);
        let data = fe.data_area().map_err(|e| format!("data area: {e}"))?;
        if data.pages() < BUFFER_PAGE + pages || pages as usize > PAGE_SIZE / 4 - 1 {
            return Err(format!("data area of {} pages too small", data.pages()));
        }
        let l = fe.layout();
        let evt = Window::new(fe.mem().clone(), l.data_offset() + EVENT_PAGE as usize * PAGE_SIZE, PAGE_SIZE)
            .map_err(|e| format!("event page: {e}"))?;
        let mut dir = vec![0u8; 4 + 4 * pages as usize];
        for i in 0..pages {
            let at = 4 + 4 * i as usize;
            dir[at..at + 4].copy_from_slice(&(BUFFER_PAGE + i).to_le_bytes());
        }
        data.copy_to_page(DIR_PAGE, 0, &dir).map_err(|e| format!("directory: {e}"))?;
        let ring = fe.front_ring::<SndRing>(RING).map_err(|e| format!("ring: {e}"))?;
        let mut l = Self {
            ring,
            data,
            evt,
            fmt,
            channels,
            frame,
            buffer_sz,
            period_sz,
            next_id: 0,
            report: Report { frames: 0, events: 0, requests: 0 },
            notify: false,
        };
        l.send(Request::Open {
            id: 0,
            open: Open {
                pcm_rate: grant.rate_hz,
                pcm_format: grant.format.0,
                pcm_channels: grant.channels,
                buffer_sz,
                gref_directory: DIR_PAGE,
                period_sz,
            },
        })?;
        Ok(l)
    }

    fn send(&mut self, mut req: Request) -> Result<(), String> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        match &mut req {
            Request::Open { id: i, .. }
            | Request::Close { id: i }
            | Request::Buffer { id: i, .. }
            | Request::Trigger { id: i, .. }
            | Request::HwParamQuery { id: i, .. } => *i = id,
        }
        self.ring.push_request(&req.to_bytes()).map_err(|e| format!("ring: {e}"))?;
        self.report.requests += 1;
        self.notify |= self.ring.publish_requests_and_check_notify();
        Ok(())
    }

    /// The next response; a failed request is an error.
    fn response(&mut self) -> Result<Option<Response>, String> {
        let Some(raw) = self.ring.pop_response().map_err(|e| format!("ring: {e}"))? else {
            return Ok(None);
        };
        let rsp = Response::from_bytes(&raw).map_err(|e| format!("response: {e}"))?;
        if rsp.status != 0 {
            return Err(format!("request op={} id={} failed status={}", rsp.operation, rsp.id, rsp.status));
        }
        Ok(Some(rsp))
    }

    /// The newest position among the pending `CUR_POS` events (consumed), if any.
    fn position_events(&mut self) -> Result<Option<u64>, String> {
        let prod = self.evt.load_u32(EVENT_IN_PROD_OFF, Ordering::Acquire);
        let mut cons = self.evt.load_u32(EVENT_IN_CONS_OFF, Ordering::Relaxed);
        let mut newest = None;
        while cons != prod {
            let mut b = [0u8; MSG_SIZE];
            self.evt.read_bytes(event_offset(cons), &mut b);
            let Event::CurPos { position, .. } = Event::from_bytes(&b).map_err(|e| format!("event: {e}"))?;
            newest = Some(newest.map_or(position, |n: u64| n.max(position)));
            self.report.events += 1;
            cons = cons.wrapping_add(1);
        }
        self.evt.store_u32(EVENT_IN_CONS_OFF, cons, Ordering::Release);
        Ok(newest)
    }

    /// Sends TRIGGER stop and CLOSE.
    fn close(&mut self) -> Result<(), String> {
        self.send(Request::Trigger { id: 0, kind: Trigger::Stop })?;
        self.send(Request::Close { id: 0 })
    }
}

/// One playback stream over the channel (see the [crate documentation](crate)).
pub struct Player<M: SharedMem + Clone> {
    link: Link<M>,
    tone: Tone,
    state: State,
    written: u64,
    position: u64,
    target: u64,
    q31: Vec<i32>,
    bytes: Vec<u8>,
}

impl<M: SharedMem + Clone> Player<M> {
    /// Sets the stream up on a ready channel with the granted shape and sends OPEN.
    pub fn start(fe: &Frontend<M>, cfg: &Config, grant: &MediaGrant) -> Result<Self, String> {
        let link = Link::open(fe, grant)?;
        let target = u64::from(cfg.secs) * u64::from(grant.rate_hz) * u64::from(link.frame);
        Ok(Self {
            tone: Tone::new(cfg.freq_hz, grant.rate_hz, cfg.amp_db, link.channels),
            link,
            state: State::Opening,
            written: 0,
            position: 0,
            target,
            q31: Vec::new(),
            bytes: Vec::new(),
        })
    }

    /// Whether the backend must be rung (requests published); clears it.
    pub fn take_notify(&mut self) -> bool {
        core::mem::take(&mut self.link.notify)
    }

    /// Frames the backend consumed so far.
    pub fn position_frames(&self) -> u64 {
        self.position / u64::from(self.link.frame)
    }

    /// Writes generated audio into the buffer up to `position + buffer` (at most `secs`), one
    /// WRITE per contiguous piece.
    fn refill(&mut self) -> Result<(), String> {
        let (frame, buffer_sz) = (self.link.frame, self.link.buffer_sz);
        let limit = (self.position + u64::from(buffer_sz)).min(self.target);
        while self.written < limit {
            let at = (self.written % u64::from(buffer_sz)) as u32;
            let len = ((limit - self.written) as u32).min(buffer_sz - at);
            let len = len - len % frame;
            if len == 0 {
                break;
            }
            let samples = (len / frame) as usize * self.link.channels;
            self.q31.resize(samples, 0);
            self.tone.fill_q31(&mut self.q31);
            self.bytes.resize(len as usize, 0);
            media_dsp::format::encode_q31(self.link.fmt, &self.q31, &mut self.bytes).map_err(|e| format!("encode: {e:?}"))?;
            for (page, in_page, from, n) in pieces(at as usize, len as usize) {
                self.link.data.copy_to_page(page, in_page, &self.bytes[from..from + n]).map_err(|e| format!("buffer: {e}"))?;
            }
            self.link.send(Request::Buffer { id: 0, op: BufferOp::Write, offset: at, length: len })?;
            self.written += u64::from(len);
            self.link.report.frames += u64::from(len / frame);
        }
        Ok(())
    }

    /// Reads responses and events, sends what follows. `Ok(Some(report))` once the stream
    /// played everything and is closed.
    pub fn poll(&mut self) -> Result<Option<Report>, String> {
        while let Some(rsp) = self.link.response()? {
            match (self.state, rsp.operation) {
                (State::Opening, op::OPEN) => {
                    self.state = State::Running;
                    self.refill()?;
                    self.link.send(Request::Trigger { id: 0, kind: Trigger::Start })?;
                }
                (State::Closing, op::CLOSE) => self.state = State::Done,
                _ => {}
            }
        }
        // A position only moves forward and never past what was written.
        let moved = match self.link.position_events()? {
            Some(p) if p > self.position && p <= self.written => {
                self.position = p;
                true
            }
            _ => false,
        };
        if self.state == State::Running && moved {
            self.refill()?;
        }
        // The last partial period raises no event: done once within a period of the end.
        if self.state == State::Running
            && self.written >= self.target
            && self.position + u64::from(self.link.period_sz) >= self.written
        {
            self.link.close()?;
            self.state = State::Closing;
        }
        Ok((self.state == State::Done).then(|| self.link.report.clone()))
    }
}

/// One second of captured audio, measured in the guest.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Second {
    /// Index (0 = the first full second).
    pub index: u32,
    /// Dominant frequency of the first channel, Hz (0 for silence).
    pub peak_hz: f32,
    /// RMS level of the first channel, dBFS.
    pub rms_dbfs: f32,
}

/// The result of a capture.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptureReport {
    /// Stream counters (frames = frames received).
    pub stream: Report,
    /// The last second's measurement.
    pub last: Option<Second>,
}

/// One capture stream over the channel: OPEN with the granted shape, TRIGGER start, then on
/// every `CUR_POS` event a READ of what was captured since the last one (one READ per
/// contiguous piece of the buffer); each READ's bytes are taken from the pages when its
/// response arrives. Every second of audio is measured ([`Second`]: dominant frequency by
/// `media_dsp::measure::dominant_frequency`, RMS); after `secs` seconds, TRIGGER stop, CLOSE.
pub struct Recorder<M: SharedMem + Clone> {
    link: Link<M>,
    rate: u32,
    state: State,
    /// The backend's capture position (bytes since OPEN, from `CUR_POS` events).
    position: u64,
    /// Bytes asked for (READs sent), bytes received (READs answered).
    asked: u64,
    got: u64,
    /// READs in flight, in order: (offset, length).
    reads: alloc::collections::VecDeque<(u32, u32)>,
    target: u64,
    second: Vec<f32>,
    seconds: Vec<Second>,
    last: Option<Second>,
    index: u32,
    bytes: Vec<u8>,
    q31: Vec<i32>,
}

impl<M: SharedMem + Clone> Recorder<M> {
    /// Sets the capture stream up on a ready channel with the granted shape and sends OPEN.
    pub fn start(fe: &Frontend<M>, cfg: &Config, grant: &MediaGrant) -> Result<Self, String> {
        let link = Link::open(fe, grant)?;
        let target = u64::from(cfg.secs) * u64::from(grant.rate_hz) * u64::from(link.frame);
        Ok(Self {
            link,
            rate: grant.rate_hz,
            state: State::Opening,
            position: 0,
            asked: 0,
            got: 0,
            reads: alloc::collections::VecDeque::new(),
            target,
            second: Vec::new(),
            seconds: Vec::new(),
            last: None,
            index: 0,
            bytes: Vec::new(),
            q31: Vec::new(),
        })
    }

    /// Whether the backend must be rung (requests published); clears it.
    pub fn take_notify(&mut self) -> bool {
        core::mem::take(&mut self.link.notify)
    }

    /// Frames received so far.
    pub fn frames(&self) -> u64 {
        self.link.report.frames
    }

    /// Seconds measured since the last call.
    pub fn take_seconds(&mut self) -> Vec<Second> {
        core::mem::take(&mut self.seconds)
    }

    /// Takes the answered READ's bytes out of the pages and measures full seconds.
    fn received(&mut self, offset: u32, length: u32) -> Result<(), String> {
        let len = length as usize;
        self.bytes.resize(len, 0);
        for (page, in_page, from, n) in pieces(offset as usize, len) {
            self.link.data.copy_from_page(page, in_page, &mut self.bytes[from..from + n]).map_err(|e| format!("buffer: {e}"))?;
        }
        let ch = self.link.channels;
        self.q31.resize(len / self.link.fmt.bytes(), 0);
        media_dsp::format::decode_q31(self.link.fmt, &self.bytes, &mut self.q31).map_err(|e| format!("decode: {e:?}"))?;
        self.link.report.frames += u64::from(length / self.link.frame);
        self.got += u64::from(length);
        for frame in self.q31.chunks_exact(ch) {
            self.second.push(media_dsp::format::q31_to_f32(frame[0]));
            if self.second.len() == self.rate as usize {
                let peak_hz = media_dsp::measure::dominant_frequency(&self.second, self.rate).unwrap_or(0.0);
                let rms = media_dsp::measure::rms(&self.second);
                let sec = Second { index: self.index, peak_hz, rms_dbfs: media_dsp::measure::dbfs(rms) as f32 };
                self.seconds.push(sec);
                self.last = Some(sec);
                self.index += 1;
                self.second.clear();
            }
        }
        Ok(())
    }

    /// READs what the backend captured up to the last position (at most the target), one per
    /// contiguous piece of the buffer, with at most a buffer unanswered (a READ overwrites the
    /// pages of the one a buffer before it, which must have been taken out first; the backend
    /// queues two buffers, so a guest late by more than one catches up from its queue).
    fn request(&mut self) -> Result<(), String> {
        let (frame, buffer_sz) = (self.link.frame, self.link.buffer_sz);
        let limit = self.position.min(self.target).min(self.got + u64::from(buffer_sz));
        while self.asked < limit {
            let at = (self.asked % u64::from(buffer_sz)) as u32;
            let len = ((limit - self.asked) as u32).min(buffer_sz - at);
            let len = len - len % frame;
            if len == 0 {
                break;
            }
            self.link.send(Request::Buffer { id: 0, op: BufferOp::Read, offset: at, length: len })?;
            self.reads.push_back((at, len));
            self.asked += u64::from(len);
        }
        Ok(())
    }

    /// Reads responses and events, sends what follows. `Ok(Some(report))` once `secs` were
    /// captured and the stream is closed.
    pub fn poll(&mut self) -> Result<Option<CaptureReport>, String> {
        while let Some(rsp) = self.link.response()? {
            match (self.state, rsp.operation) {
                (State::Opening, op::OPEN) => {
                    self.state = State::Running;
                    self.link.send(Request::Trigger { id: 0, kind: Trigger::Start })?;
                }
                (State::Running | State::Closing, op::READ) => {
                    let (at, len) = self.reads.pop_front().ok_or("a READ response without a READ")?;
                    self.received(at, len)?;
                }
                (State::Closing, op::CLOSE) => self.state = State::Done,
                _ => {}
            }
        }
        if let Some(p) = self.link.position_events()? {
            self.position = self.position.max(p);
        }
        if self.state == State::Running {
            self.request()?;
        }
        if self.state == State::Running && self.asked >= self.target && self.reads.is_empty() {
            self.link.close()?;
            self.state = State::Closing;
        }
        Ok((self.state == State::Done).then(|| CaptureReport { stream: self.link.report.clone(), last: self.last }))
    }
}
