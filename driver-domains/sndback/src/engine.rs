//! The engine of one sndif frontend (one guest's virtual sound card): its streams, each with a
//! request ring and an event page, served against the device [`Hub`].
//!
//! The owner (media-dd's per-guest task) calls [`Sndback::poll`] when a request channel fired,
//! after each device period (so positions advance and events go out), or when a poll reported
//! `more`; it notifies the frontend's request channel `i` when bit `i` of
//! [`PollResult::notify`] is set and its event channel when bit `i` of
//! [`PollResult::notify_events`] is.
//!
//! ## Requests (every field is hostile)
//! Each request gets exactly one response, in order, echoing its id and operation; status 0 or
//! a negative Xen errno:
//! * `EINVAL` (-22): a malformed request (xen-abi's parser: format code, zero rate/channels/
//!   buffer, period above buffer, offset+length overflow, trigger type, hw-param ranges), a
//!   parameter the platform does not offer ([`Caps`]), a range outside the buffer or not whole
//!   frames, an operation in the wrong state (write before open, read on a playback stream,
//!   start twice, resume without pause, ...), a volume/mute block of the wrong size;
//! * `EOPNOTSUPP` (-95): an unknown operation code;
//! * `EBUSY` (-16): OPEN on an open stream, or the hub has no room for another stream;
//! * `EIO` (-5): a grant copy failed (directory, buffer pages), or the directory was short;
//! * `ENOSPC` (-28): a WRITE larger than the room left in the stream's queue (twice its
//!   buffer): nothing of it is queued.
//!
//! Fatal (the frontend broke the ring protocol; the engine removes its streams from the hub,
//! returns [`Error::Ring`] and then [`Error::Broken`]): an impossible request producer index,
//! an event page whose consumer index is ahead of the producer or lags more than the ring.
//!
//! ## Streams
//! * Playback: OPEN adds a mixer stream (the guest's rate and channels, the engine's priority,
//!   queue = 2 buffers), WRITE copies the range out of the guest's pages at once, decodes it and
//!   queues it; TRIGGER start/pause/resume/stop run, pause, resume or stop-and-flush it. The
//!   position (octets) is what the device consumed since OPEN.
//! * Capture: OPEN adds a fan-out consumer; READ copies what was captured (the rest of the range
//!   is silence, counted) into the guest's pages; the position is what was captured since OPEN.
//! * Events: a `CUR_POS` event (ids 0, 1, ... from each OPEN) whenever the position advanced
//!   by at least a period (`period_sz`, 0 = no events). A full event ring delays the event (the
//!   next one carries the newer position; counted).
//! * Volume (`SET_VOLUME`/`GET_VOLUME`, i32 per channel in 0.001 dB) and mute
//!   (`MUTE`/`UNMUTE`, one byte per channel) of playback streams go to the mixer, under the
//!   platform's cap and mute ([`Sndback::set_cap_db`], [`Sndback::set_platform_mute`]); on
//!   capture streams they are remembered and reported, not applied.

use alloc::vec;
use alloc::vec::Vec;

use iconnect::media::Direction;
use media_dsp::{ConsumerId, SampleFormat, StreamId, StreamParams};
use netback::GrantAccess;
use xen_abi::ring::BackRing;
use xen_abi::shmem::SharedMem;
use xen_abi::sndif::{
    BufferOp, Event, EventProducer, MSG_SIZE, Open, Request, Response, SndRing, Trigger,
};

use crate::buffer::{BufferFault, SharedBuffer};
use crate::{Caps, Error, Hub, Status};

/// Requests served per stream per poll at most (one ring's worth).
pub const BUDGET: u32 = xen_abi::sndif::RING_SIZE;

/// Counters of one frontend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests consumed.
    pub requests: u64,
    /// Requests answered with an error status.
    pub errors: u64,
    /// Position events sent.
    pub events: u64,
    /// Times an event had to wait because the event ring was full.
    pub events_delayed: u64,
    /// Writes refused because the queue had no room (`ENOSPC`).
    pub write_overruns: u64,
    /// Capture frames read before they were captured (delivered as silence).
    pub read_underrun_frames: u64,
}

/// What a poll did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollResult {
    /// Bit i: notify stream i's request channel (responses published).
    pub notify: u64,
    /// Bit i: notify stream i's event channel.
    pub notify_events: u64,
    /// Work is left (budget exhausted or requests arrived during the final check).
    pub more: bool,
}

/// Running state of an open stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Opened (or stopped): not consuming/producing.
    Prepared,
    /// Started or resumed.
    Running,
    /// Paused.
    Paused,
}

#[derive(Debug, Clone, Copy)]
enum Sink {
    Play(StreamId),
    Capture(ConsumerId),
}

#[derive(Debug, Clone)]
struct OpenStream {
    fmt: SampleFormat,
    channels: usize,
    frame: u32,
    buf: SharedBuffer,
    period: u32,
    sink: Sink,
    state: RunState,
    reported: u64,
    next_event: u16,
    volume_mdb: Vec<i32>,
    muted: Vec<bool>,
}

/// What a test or the owner can see of an open stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamInfo {
    /// State.
    pub state: RunState,
    /// Position, octets since OPEN.
    pub position: u64,
    /// Format.
    pub format: SampleFormat,
    /// Bit c: the guest muted channel c.
    pub muted: u64,
    /// The guest's volume of channel 0, 0.001 dB.
    pub volume0_mdb: i32,
}

#[derive(Debug)]
struct Channel<M: SharedMem> {
    dir: Direction,
    ring: BackRing<M, SndRing>,
    events: EventProducer<M>,
    open: Option<OpenStream>,
}

/// Per-frontend settings the engine applies to every stream.
#[derive(Debug, Clone, Copy)]
struct Policy {
    priority: u8,
    cap_db: Option<f32>,
    platform_mute: bool,
}

/// The sndif backend engine of one frontend.
#[derive(Debug)]
pub struct Sndback<M: SharedMem> {
    streams: Vec<Channel<M>>,
    caps: Caps,
    policy: Policy,
    scratch: Vec<u8>,
    stats: Stats,
    broken: bool,
}

fn position(open: &OpenStream, hub: &Hub) -> u64 {
    let frames = match open.sink {
        Sink::Play(id) => hub.mixer().stream_stats(id).map(|s| s.consumed),
        Sink::Capture(id) => hub.fanout().stats(id).map(|s| s.produced),
    };
    frames.unwrap_or(0) * u64::from(open.frame)
}

fn release(open: &OpenStream, hub: &mut Hub) {
    // The handle was created by this engine and is removed once; an error cannot happen.
    let _ = match open.sink {
        Sink::Play(id) => hub.mixer_mut().remove_stream(id),
        Sink::Capture(id) => hub.fanout_mut().remove_consumer(id),
    };
}

impl<M: SharedMem> Sndback<M> {
    /// An engine offering `caps`, whose playback streams mix at `priority` (see
    /// `iconnect::media::Role::priority`).
    pub fn new(caps: Caps, priority: u8) -> Self {
        Self {
            streams: Vec::new(),
            caps,
            policy: Policy {
                priority,
                cap_db: None,
                platform_mute: false,
            },
            scratch: Vec::new(),
            stats: Stats::default(),
            broken: false,
        }
    }

    /// Attaches stream `index = number of streams so far`: its request ring (initialised by the
    /// frontend) and its event page (granted by the frontend). At most 64 streams.
    pub fn add_stream(&mut self, dir: Direction, ring: M, events: M) -> Result<usize, Error> {
        if self.streams.len() >= 64 {
            return Err(Error::TooManyStreams);
        }
        let ring = BackRing::attach(ring).map_err(Error::Ring)?;
        let events = EventProducer::attach(events).map_err(Error::Ring)?;
        self.streams.push(Channel {
            dir,
            ring,
            events,
            open: None,
        });
        Ok(self.streams.len() - 1)
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Whether a fatal protocol violation broke the engine.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// State of stream `i`, if it is open.
    pub fn stream_info(&self, i: usize, hub: &Hub) -> Option<StreamInfo> {
        let o = self.streams.get(i)?.open.as_ref()?;
        Some(StreamInfo {
            state: o.state,
            position: position(o, hub),
            format: o.fmt,
            muted: o
                .muted
                .iter()
                .enumerate()
                .fold(0, |m, (c, &x)| m | (u64::from(x) << c.min(63))),
            volume0_mdb: o.volume_mdb[0],
        })
    }

    /// The mixer handle of playback stream `i`, if open (for level meters).
    pub fn mixer_stream(&self, i: usize) -> Option<StreamId> {
        match self.streams.get(i)?.open.as_ref()?.sink {
            Sink::Play(id) => Some(id),
            Sink::Capture(_) => None,
        }
    }

    /// The fan-out handle of capture stream `i`, if open (for its counters).
    pub fn capture_consumer(&self, i: usize) -> Option<ConsumerId> {
        match self.streams.get(i)?.open.as_ref()?.sink {
            Sink::Capture(id) => Some(id),
            Sink::Play(_) => None,
        }
    }

    /// Platform cap on every playback stream's gain, dB (`None`: no cap).
    pub fn set_cap_db(&mut self, hub: &mut Hub, cap: Option<f32>) -> Result<(), Error> {
        if cap.is_some_and(|c| !c.is_finite()) {
            return Err(Error::Dsp(media_dsp::Error::BadParameter));
        }
        self.policy.cap_db = cap;
        self.apply_policy(hub);
        Ok(())
    }

    /// Platform mute of every playback stream.
    pub fn set_platform_mute(&mut self, hub: &mut Hub, mute: bool) {
        self.policy.platform_mute = mute;
        self.apply_policy(hub);
    }

    /// Mixing priority of this frontend's playback streams.
    pub fn set_priority(&mut self, hub: &mut Hub, priority: u8) {
        self.policy.priority = priority;
        self.apply_policy(hub);
    }

    fn apply_policy(&mut self, hub: &mut Hub) {
        for ch in &self.streams {
            if let Some(OpenStream {
                sink: Sink::Play(id),
                ..
            }) = ch.open
            {
                let m = hub.mixer_mut();
                let _ = m.set_cap_db(id, self.policy.cap_db);
                let _ = m.set_platform_mute(id, self.policy.platform_mute);
                let _ = m.set_priority(id, self.policy.priority);
            }
        }
    }

    /// Closes every stream (frontend gone or engine broken): removes them from the hub.
    pub fn shutdown(&mut self, hub: &mut Hub) {
        for ch in &mut self.streams {
            if let Some(o) = ch.open.take() {
                release(&o, hub);
            }
        }
    }

    /// Serves requests, then sends position events. See the [module documentation](self).
    pub fn poll<G: GrantAccess + ?Sized>(
        &mut self,
        grants: &mut G,
        hub: &mut Hub,
    ) -> Result<PollResult, Error> {
        if self.broken {
            return Err(Error::Broken);
        }
        let r = self.poll_inner(grants, hub);
        if r.is_err() {
            self.broken = true;
            self.shutdown(hub);
        }
        r
    }

    fn poll_inner<G: GrantAccess + ?Sized>(
        &mut self,
        grants: &mut G,
        hub: &mut Hub,
    ) -> Result<PollResult, Error> {
        let mut res = PollResult::default();
        for i in 0..self.streams.len() {
            let ch = &mut self.streams[i];
            let mut served = 0;
            while served < BUDGET {
                let Some(raw) = ch.ring.pop_request().map_err(Error::Ring)? else {
                    break;
                };
                served += 1;
                self.stats.requests += 1;
                let rsp = handle(
                    &self.caps,
                    self.policy,
                    &mut self.scratch,
                    &mut self.stats,
                    ch.dir,
                    &mut ch.open,
                    &raw,
                    grants,
                    hub,
                );
                if rsp.status != 0 {
                    self.stats.errors += 1;
                }
                ch.ring
                    .push_response(&rsp.to_bytes())
                    .map_err(Error::Ring)?;
            }
            if ch.ring.publish_responses_and_check_notify() {
                res.notify |= 1 << i;
            }
            if served == BUDGET || ch.ring.final_check_for_requests().map_err(Error::Ring)? {
                res.more = true;
            }
            // Position events.
            if let Some(o) = ch.open.as_mut()
                && o.period != 0
            {
                let pos = position(o, hub);
                if pos >= o.reported + u64::from(o.period) {
                    let ev = Event::CurPos {
                        id: o.next_event,
                        position: pos,
                    };
                    match ch.events.push(&ev) {
                        Ok(()) => {
                            o.next_event = o.next_event.wrapping_add(1);
                            o.reported = pos;
                            self.stats.events += 1;
                            res.notify_events |= 1 << i;
                        }
                        Err(xen_abi::Error::RingFull) => self.stats.events_delayed += 1,
                        Err(e) => return Err(Error::Ring(e)),
                    }
                }
            }
        }
        Ok(res)
    }
}

/// Serves one request; always returns its response.
#[allow(clippy::too_many_arguments)]
fn handle<G: GrantAccess + ?Sized>(
    caps: &Caps,
    policy: Policy,
    scratch: &mut Vec<u8>,
    stats: &mut Stats,
    dir: Direction,
    open: &mut Option<OpenStream>,
    raw: &[u8; MSG_SIZE],
    g: &mut G,
    hub: &mut Hub,
) -> Response {
    let id = u16::from_le_bytes([raw[0], raw[1]]);
    let operation = raw[2];
    let answer = |r: Result<Option<xen_abi::sndif::HwParam>, Status>| match r {
        Ok(hw_param) => Response {
            id,
            operation,
            status: 0,
            hw_param,
        },
        Err(s) => Response {
            id,
            operation,
            status: s.errno(),
            hw_param: None,
        },
    };
    let req = match Request::from_bytes(raw) {
        Ok(r) => r,
        Err(xen_abi::Error::UnknownOperation) => return answer(Err(Status::NotSupported)),
        Err(_) => return answer(Err(Status::Inval)),
    };
    answer(match req {
        Request::HwParamQuery { param, .. } => caps.query(&param).map(Some),
        Request::Open { open: o, .. } => do_open(caps, policy, dir, open, &o, g, hub).map(|_| None),
        Request::Close { .. } => match open.take() {
            Some(o) => {
                release(&o, hub);
                Ok(None)
            }
            None => Err(Status::Inval),
        },
        Request::Trigger { kind, .. } => match open.as_mut() {
            Some(o) => trigger(o, kind, hub).map(|_| None),
            None => Err(Status::Inval),
        },
        Request::Buffer {
            op, offset, length, ..
        } => match open.as_mut() {
            Some(o) if u64::from(offset) + u64::from(length) <= u64::from(o.buf.len()) => {
                buffer_op(o, op, offset, length, scratch, stats, g, hub).map(|_| None)
            }
            _ => Err(Status::Inval),
        },
    })
}

fn do_open<G: GrantAccess + ?Sized>(
    caps: &Caps,
    policy: Policy,
    dir: Direction,
    open: &mut Option<OpenStream>,
    o: &Open,
    g: &mut G,
    hub: &mut Hub,
) -> Result<(), Status> {
    if open.is_some() {
        return Err(Status::Busy);
    }
    let fmt = caps.check_open(o)?;
    let buf =
        SharedBuffer::from_directory(g, o.gref_directory, o.buffer_sz).map_err(|f| match f {
            BufferFault::Grant | BufferFault::ShortDirectory => Status::Io,
        })?;
    let channels = usize::from(o.pcm_channels);
    let frame = (fmt.bytes() * channels) as u32;
    let capacity = (o.buffer_sz / frame) as usize * 2;
    let sink = match dir {
        Direction::Playback => {
            let m = hub.mixer_mut();
            let id = m
                .add_stream(StreamParams {
                    rate: o.pcm_rate,
                    channels,
                    priority: policy.priority,
                    capacity_frames: capacity,
                })
                .map_err(|_| Status::Busy)?;
            let _ = m.set_cap_db(id, policy.cap_db);
            let _ = m.set_platform_mute(id, policy.platform_mute);
            Sink::Play(id)
        }
        Direction::Capture => Sink::Capture(
            hub.fanout_mut()
                .add_consumer(o.pcm_rate, channels, capacity)
                .map_err(|_| Status::Busy)?,
        ),
    };
    *open = Some(OpenStream {
        fmt,
        channels,
        frame,
        buf,
        period: o.period_sz,
        sink,
        state: RunState::Prepared,
        reported: 0,
        next_event: 0,
        volume_mdb: vec![0; channels],
        muted: vec![false; channels],
    });
    Ok(())
}

fn set_running(o: &OpenStream, hub: &mut Hub, run: bool) {
    let _ = match o.sink {
        Sink::Play(id) => hub.mixer_mut().set_running(id, run),
        Sink::Capture(id) => hub.fanout_mut().set_running(id, run),
    };
}

fn trigger(o: &mut OpenStream, kind: Trigger, hub: &mut Hub) -> Result<(), Status> {
    use RunState::*;
    o.state = match (o.state, kind) {
        (Prepared, Trigger::Start) | (Paused, Trigger::Resume) => {
            set_running(o, hub, true);
            Running
        }
        (Running, Trigger::Pause) => {
            set_running(o, hub, false);
            Paused
        }
        (Running | Paused, Trigger::Stop) => {
            set_running(o, hub, false);
            if let Sink::Play(id) = o.sink {
                let _ = hub.mixer_mut().flush(id);
            }
            Prepared
        }
        _ => return Err(Status::Inval),
    };
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn buffer_op<G: GrantAccess + ?Sized>(
    o: &mut OpenStream,
    op: BufferOp,
    offset: u32,
    length: u32,
    scratch: &mut Vec<u8>,
    stats: &mut Stats,
    g: &mut G,
    hub: &mut Hub,
) -> Result<(), Status> {
    let len = length as usize;
    let io = |_: BufferFault| Status::Io;
    match (op, o.sink) {
        (BufferOp::Write, Sink::Play(id)) => {
            if length == 0 || !length.is_multiple_of(o.frame) {
                return Err(Status::Inval);
            }
            let frames = len / o.frame as usize;
            if hub.mixer().free_frames(id).unwrap_or(0) < frames {
                stats.write_overruns += 1;
                return Err(Status::NoSpace);
            }
            scratch.resize(len, 0);
            o.buf.read(g, offset, &mut scratch[..len]).map_err(io)?;
            hub.mixer_mut()
                .push_bytes(id, o.fmt, &scratch[..len])
                .map_err(|_| Status::Inval)?;
            Ok(())
        }
        (BufferOp::Read, Sink::Capture(id)) => {
            if length == 0 || !length.is_multiple_of(o.frame) {
                return Err(Status::Inval);
            }
            scratch.resize(len, 0);
            let got = hub
                .fanout_mut()
                .read_bytes(id, o.fmt, &mut scratch[..len])
                .map_err(|_| Status::Inval)?;
            let frames = len / o.frame as usize;
            if got < frames {
                stats.read_underrun_frames += (frames - got) as u64;
                let silence = vec![0i32; (frames - got) * o.channels];
                let at = got * o.frame as usize;
                let _ = media_dsp::format::encode_q31(o.fmt, &silence, &mut scratch[at..len]);
            }
            o.buf.write(g, offset, &scratch[..len]).map_err(io)
        }
        (BufferOp::SetVolume | BufferOp::GetVolume, sink) => {
            if len != 4 * o.channels {
                return Err(Status::Inval);
            }
            scratch.resize(len, 0);
            if op == BufferOp::SetVolume {
                o.buf.read(g, offset, &mut scratch[..len]).map_err(io)?;
                for (c, b) in scratch[..len].chunks_exact(4).enumerate() {
                    let v = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    o.volume_mdb[c] = v;
                    if let Sink::Play(id) = sink {
                        let _ = hub.mixer_mut().set_volume_db(id, c, v as f32 / 1000.0);
                    }
                }
                Ok(())
            } else {
                for (c, b) in scratch[..len].chunks_exact_mut(4).enumerate() {
                    b.copy_from_slice(&o.volume_mdb[c].to_le_bytes());
                }
                o.buf.write(g, offset, &scratch[..len]).map_err(io)
            }
        }
        (BufferOp::Mute | BufferOp::Unmute, sink) => {
            if len != o.channels {
                return Err(Status::Inval);
            }
            scratch.resize(len, 0);
            o.buf.read(g, offset, &mut scratch[..len]).map_err(io)?;
            let mute = op == BufferOp::Mute;
            for (c, &b) in scratch[..len].iter().enumerate() {
                if b != 0 {
                    o.muted[c] = mute;
                    if let Sink::Play(id) = sink {
                        let _ = hub.mixer_mut().set_mute(id, c, mute);
                    }
                }
            }
            Ok(())
        }
        // Write on a capture stream, read on a playback stream.
        _ => Err(Status::Inval),
    }
}
