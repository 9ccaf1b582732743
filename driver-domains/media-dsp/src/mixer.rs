//! The playback mixer: N streams, each in its own rate and channel count, mixed into the
//! device's native rate and channels.
//!
//! Per stream: a bounded FIFO of decoded samples at the stream's rate (filled by
//! [`Mixer::push_bytes`] / [`Mixer::push_q31`] when a guest writes), a [`Resampler`] to the
//! device rate run when the device asks for frames ([`Mixer::mix_bytes`],
//! [`Mixer::mix_q31`]), so the stream's position counts exactly the input frames the device
//! consumed ([`StreamStats::consumed`]).
//!
//! Gain of stream `s`, channel `c` = `volume[c]` (guest's, dB) limited by the platform cap
//! (dB), times 0 when the guest muted the channel or the platform muted the stream, times the
//! ducking gain. Every change ramps linearly (volume/mute: full scale in `gain_ramp_ms`;
//! ducking: `attack_ms` down, `release_ms` up; start, pause and stop fade in/out over
//! `gain_ramp_ms`), so no change makes a step in the output.
//!
//! Ducking: a stream is *active* while it is running, audible (not muted) and has data, and for
//! `hold_ms` after; every stream with a strictly lower priority than an active stream is
//! lowered by `depth_db`.
//!
//! Arithmetic is integer per sample (Q31 samples, Q28 gains; see the crate docs): a stream
//! boosted above full scale saturates on its own, streams are summed in 64 bits (no overflow
//! for any number of full-scale streams) and the sum is saturated to full scale (counted in
//! [`MixStats::clipped`]), then encoded.

use alloc::vec;
use alloc::vec::Vec;

use crate::channels::map_channels;
use crate::fifo::Fifo;
use crate::format::{SampleFormat, decode_q31, encode_q31, f32_to_q31, q31_to_f32};
use crate::resample::Resampler;
use crate::slots::Slots;
use crate::{Error, db_to_gain};

/// Ducking parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DuckConfig {
    /// How much lower-priority streams are lowered, dB (>= 0).
    pub depth_db: f32,
    /// Ramp time from 0 dB to `-depth_db`, ms.
    pub attack_ms: f32,
    /// Ramp time back up, ms.
    pub release_ms: f32,
    /// A stream stays active this long after its last audible data, ms (no pumping in gaps).
    pub hold_ms: f32,
}

impl Default for DuckConfig {
    /// 12 dB, 20 ms attack, 300 ms release, 150 ms hold.
    fn default() -> Self {
        Self {
            depth_db: 12.0,
            attack_ms: 20.0,
            release_ms: 300.0,
            hold_ms: 150.0,
        }
    }
}

/// Mixer configuration (the device's native shape).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MixerConfig {
    /// Device rate, Hz.
    pub rate: u32,
    /// Device channels.
    pub channels: usize,
    /// Ducking.
    pub duck: DuckConfig,
    /// Volume/mute ramp time for a full-scale change, ms.
    pub gain_ramp_ms: f32,
    /// Streams at most.
    pub max_streams: usize,
}

impl MixerConfig {
    /// 48 kHz stereo with default ducking, 5 ms gain ramps, 64 streams.
    pub fn new(rate: u32, channels: usize) -> Self {
        Self {
            rate,
            channels,
            duck: DuckConfig::default(),
            gain_ramp_ms: 5.0,
            max_streams: 64,
        }
    }
}

/// A stream's shape and role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamParams {
    /// Rate, Hz.
    pub rate: u32,
    /// Channels.
    pub channels: usize,
    /// Priority: higher ducks lower.
    pub priority: u8,
    /// FIFO capacity, frames at the stream's rate.
    pub capacity_frames: usize,
}

/// Handle of a mixer stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u32);

/// Counters of one stream.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StreamStats {
    /// Input frames the device consumed (the stream's play position).
    pub consumed: u64,
    /// Device frames this stream had no data for while running.
    pub underrun: u64,
    /// Current ducking gain (1 = not ducked).
    pub duck_gain: f32,
    /// RMS level of the stream's contribution in the last mixed block (after gains).
    pub level_rms: f32,
}

/// Mixer counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MixStats {
    /// Device frames mixed.
    pub frames: u64,
    /// Output samples clamped to full scale.
    pub clipped: u64,
}

#[derive(Debug, Clone)]
struct Stream {
    p: StreamParams,
    rs: Resampler,
    fifo: Fifo<i32>,
    running: bool,
    /// Paused or stopped, still fading out (mixed until the fade reaches 0).
    stopping: bool,
    /// Start/stop fade, Q28.
    fade: i64,
    /// Samples queued before a flush requested while fading out: dropped when the fade ends.
    stale: Option<usize>,
    volume_db: Vec<f32>,
    muted: Vec<bool>,
    cap_db: f32,
    platform_mute: bool,
    /// Current (ramping) per-channel gain without ducking, Q28.
    gain: Vec<i64>,
    /// Current ducking gain, Q28.
    duck: i64,
    last_active: Option<u64>,
    stats: StreamStats,
}

impl Stream {
    fn target(&self, c: usize) -> i64 {
        if self.platform_mute || self.muted[c] {
            0
        } else {
            q28(db_to_gain(self.volume_db[c].min(self.cap_db)))
        }
    }
    fn drop_stale(&mut self) {
        if let Some(n) = self.stale.take() {
            self.fifo.consume(n.min(self.fifo.len()));
            self.rs.reset();
        }
    }

    fn audible(&self) -> bool {
        self.running
            && !self.stopping
            && !self.platform_mute
            && self.muted.iter().any(|m| !m)
            && self.fifo.len() >= self.p.channels
    }
}

/// The playback mixer.
#[derive(Debug, Clone)]
pub struct Mixer {
    cfg: MixerConfig,
    streams: Slots<Stream>,
    clock: u64,
    stats: MixStats,
    scratch: Vec<i32>,
    mapped: Vec<i32>,
    acc: Vec<i64>,
    mixbuf: Vec<i32>,
    duck_floor: i64,
    duck_attack: i64,
    duck_release: i64,
    gain_step: i64,
    hold: u64,
}

/// Gains are Q28 integers (up to +12 dB = 3.98 fits, and a Q31 sample times two gains stays
/// below 2^63).
const ONE: i64 = 1 << 28;

fn q28(g: f32) -> i64 {
    (g as f64 * ONE as f64 + 0.5) as i64
}

/// Per-sample step of a ramp crossing `span` (Q28) in `ms`.
fn per_sample(ms: f32, rate: u32, span: i64) -> i64 {
    let n = ((ms * rate as f32 / 1000.0) as i64).max(1);
    ((span + n - 1) / n).max(1)
}

impl Mixer {
    /// A mixer for the device shape in `cfg`.
    pub fn new(cfg: MixerConfig) -> Result<Self, Error> {
        if !(crate::resample::RATE_RANGE.0..=crate::resample::RATE_RANGE.1).contains(&cfg.rate) {
            return Err(Error::UnsupportedRate);
        }
        if cfg.channels == 0 || cfg.channels > 64 {
            return Err(Error::UnsupportedChannels);
        }
        let d = cfg.duck;
        let ok = |x: f32| x.is_finite() && x >= 0.0;
        let all_ok = [
            d.depth_db,
            d.attack_ms,
            d.release_ms,
            d.hold_ms,
            cfg.gain_ramp_ms,
        ]
        .into_iter()
        .all(ok);
        if !all_ok {
            return Err(Error::BadParameter);
        }
        let floor = q28(db_to_gain(-d.depth_db));
        Ok(Self {
            cfg,
            streams: Slots::new(cfg.max_streams),
            clock: 0,
            stats: MixStats::default(),
            scratch: Vec::new(),
            mapped: Vec::new(),
            acc: Vec::new(),
            mixbuf: Vec::new(),
            duck_floor: floor,
            duck_attack: per_sample(d.attack_ms, cfg.rate, ONE - floor),
            duck_release: per_sample(d.release_ms, cfg.rate, ONE - floor),
            gain_step: per_sample(cfg.gain_ramp_ms, cfg.rate, ONE),
            hold: (d.hold_ms * cfg.rate as f32 / 1000.0) as u64,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &MixerConfig {
        &self.cfg
    }

    /// Adds a stream (stopped, 0 dB, unmuted).
    pub fn add_stream(&mut self, p: StreamParams) -> Result<StreamId, Error> {
        let rs = Resampler::new(p.rate, self.cfg.rate, p.channels)?;
        if p.capacity_frames == 0 || p.capacity_frames > 1 << 22 {
            return Err(Error::BadParameter);
        }
        let s = Stream {
            p,
            rs,
            fifo: Fifo::new(p.capacity_frames * p.channels),
            running: false,
            stopping: false,
            fade: 0,
            stale: None,
            volume_db: vec![0.0; p.channels],
            muted: vec![false; p.channels],
            cap_db: f32::INFINITY,
            platform_mute: false,
            gain: vec![ONE; p.channels],
            duck: ONE,
            last_active: None,
            stats: StreamStats {
                duck_gain: 1.0,
                ..StreamStats::default()
            },
        };
        self.streams.insert(s).map(StreamId)
    }

    /// Removes a stream.
    pub fn remove_stream(&mut self, id: StreamId) -> Result<(), Error> {
        self.streams.remove(id.0).map(drop)
    }

    fn stream(&mut self, id: StreamId) -> Result<&mut Stream, Error> {
        self.streams.get_mut(id.0)
    }

    fn stream_ref(&self, id: StreamId) -> Result<&Stream, Error> {
        self.streams.get(id.0)
    }

    /// Queues Q31 samples (interleaved, whole frames, at the stream's rate); returns the frames
    /// taken (fewer when the FIFO is full).
    pub fn push_q31(&mut self, id: StreamId, samples: &[i32]) -> Result<usize, Error> {
        let s = self.stream(id)?;
        let ch = s.p.channels;
        if !samples.len().is_multiple_of(ch) {
            return Err(Error::Length);
        }
        let frames = (s.fifo.free() / ch).min(samples.len() / ch);
        s.fifo.push(&samples[..frames * ch]);
        Ok(frames)
    }

    /// [`push_q31`](Self::push_q31) for `f32` samples.
    pub fn push(&mut self, id: StreamId, samples: &[f32]) -> Result<usize, Error> {
        let ch = self.stream_ref(id)?.p.channels;
        if !samples.len().is_multiple_of(ch) {
            return Err(Error::Length);
        }
        let mut buf = [0i32; 512];
        let mut taken = 0;
        for chunk in samples.chunks(buf.len() / ch * ch) {
            for (q, x) in buf.iter_mut().zip(chunk) {
                *q = f32_to_q31(*x);
            }
            let t = self.push_q31(id, &buf[..chunk.len()])?;
            taken += t;
            if t < chunk.len() / ch {
                break;
            }
        }
        Ok(taken)
    }

    /// Decodes and queues wire bytes of `fmt` (whole frames); returns the frames taken.
    pub fn push_bytes(
        &mut self,
        id: StreamId,
        fmt: SampleFormat,
        bytes: &[u8],
    ) -> Result<usize, Error> {
        let ch = self.stream_ref(id)?.p.channels;
        let frame = fmt.bytes() * ch;
        if !bytes.len().is_multiple_of(frame) {
            return Err(Error::Length);
        }
        let mut buf = [0i32; 512];
        let per = buf.len() / ch * frame;
        let mut taken = 0;
        for chunk in bytes.chunks(per) {
            let n = chunk.len() / fmt.bytes();
            decode_q31(fmt, chunk, &mut buf[..n])?;
            let t = self.push_q31(id, &buf[..n])?;
            taken += t;
            if t < n / ch {
                break;
            }
        }
        Ok(taken)
    }

    /// Frames the stream's FIFO can still take.
    pub fn free_frames(&self, id: StreamId) -> Result<usize, Error> {
        let s = self.stream_ref(id)?;
        Ok(s.fifo.free() / s.p.channels)
    }

    /// Frames queued in the stream's FIFO.
    pub fn queued_frames(&self, id: StreamId) -> Result<usize, Error> {
        let s = self.stream_ref(id)?;
        Ok(s.fifo.len() / s.p.channels)
    }

    /// Starts (true) or pauses (false) consuming the stream.
    ///
    /// Both fade (over `gain_ramp_ms`): a paused stream keeps being mixed, and consumed, until
    /// its fade-out ends, so pausing or stopping never cuts a waveform mid-way.
    pub fn set_running(&mut self, id: StreamId, running: bool) -> Result<(), Error> {
        let s = self.stream(id)?;
        if running {
            if s.stopping {
                // Resumed during the fade-out: a flush requested meanwhile happens now.
                s.drop_stale();
            } else if !s.running {
                s.fade = 0;
            }
            s.running = true;
            s.stopping = false;
        } else if s.running {
            s.stopping = true;
        }
        Ok(())
    }

    /// Drops queued data and the resampler's history (the position is kept).
    ///
    /// While the stream fades out, what is queued now is dropped when the fade ends (data
    /// pushed after this call is kept).
    pub fn flush(&mut self, id: StreamId) -> Result<(), Error> {
        let s = self.stream(id)?;
        if s.stopping {
            s.stale = Some(s.fifo.len());
        } else {
            s.fifo.clear();
            s.rs.reset();
        }
        Ok(())
    }

    /// Guest volume of channel `c`, dB (clamped to [-120, +12]).
    pub fn set_volume_db(&mut self, id: StreamId, c: usize, db: f32) -> Result<(), Error> {
        let s = self.stream(id)?;
        let v = s.volume_db.get_mut(c).ok_or(Error::BadParameter)?;
        *v = if db.is_finite() {
            db.clamp(-120.0, 12.0)
        } else {
            0.0
        };
        Ok(())
    }

    /// Guest volume of channel `c`, dB.
    pub fn volume_db(&self, id: StreamId, c: usize) -> Result<f32, Error> {
        let s = self.stream_ref(id)?;
        s.volume_db.get(c).copied().ok_or(Error::BadParameter)
    }

    /// Guest mute of channel `c`.
    pub fn set_mute(&mut self, id: StreamId, c: usize, mute: bool) -> Result<(), Error> {
        let s = self.stream(id)?;
        *s.muted.get_mut(c).ok_or(Error::BadParameter)? = mute;
        Ok(())
    }

    /// Platform cap on the stream's gain, dB (`None`: no cap).
    pub fn set_cap_db(&mut self, id: StreamId, cap: Option<f32>) -> Result<(), Error> {
        let s = self.stream(id)?;
        s.cap_db = match cap {
            Some(c) if c.is_finite() => c,
            Some(_) => return Err(Error::BadParameter),
            None => f32::INFINITY,
        };
        Ok(())
    }

    /// Platform mute of the whole stream.
    pub fn set_platform_mute(&mut self, id: StreamId, mute: bool) -> Result<(), Error> {
        self.stream(id)?.platform_mute = mute;
        Ok(())
    }

    /// Changes the stream's priority.
    pub fn set_priority(&mut self, id: StreamId, priority: u8) -> Result<(), Error> {
        self.stream(id)?.p.priority = priority;
        Ok(())
    }

    /// The stream's counters.
    pub fn stream_stats(&self, id: StreamId) -> Result<StreamStats, Error> {
        Ok(self.stream_ref(id)?.stats)
    }

    /// Mixer counters.
    pub fn stats(&self) -> MixStats {
        self.stats
    }

    /// Mixes the next `out.len() / channels` device frames into `out` (interleaved Q31,
    /// overwritten). Integer arithmetic only (the images have no FPU): Q31 samples, Q28 gains,
    /// 64-bit sums saturated to Q31 at the end.
    pub fn mix_q31(&mut self, out: &mut [i32]) -> Result<(), Error> {
        let dch = self.cfg.channels;
        if !out.len().is_multiple_of(dch) {
            return Err(Error::Length);
        }
        let frames = out.len() / dch;
        self.acc.clear();
        self.acc.resize(out.len(), 0);
        let now = self.clock;
        // Who is active (decided per block; the ramps below are per sample).
        let mut top: Option<u8> = None;
        for s in self.streams.iter_mut() {
            if s.audible() {
                s.last_active = Some(now);
            }
            let active =
                s.running && !s.stopping && s.last_active.is_some_and(|t| now <= t + self.hold);
            if active {
                top = top.max(Some(s.p.priority));
            }
        }
        for s in self.streams.iter_mut() {
            if !s.running {
                s.stats.level_rms = 0.0;
                continue;
            }
            let ch = s.p.channels;
            // A stream fading out is consumed only for the rest of its fade.
            let n = if s.stopping {
                frames.min(((s.fade + self.gain_step - 1) / self.gain_step) as usize)
            } else {
                frames
            };
            self.scratch.clear();
            self.scratch.resize(n * ch, 0);
            let (ci, co) = s.rs.process(s.fifo.data(), &mut self.scratch);
            s.fifo.consume(ci * ch);
            if let Some(n) = s.stale.as_mut() {
                *n = n.saturating_sub(ci * ch);
            }
            s.stats.consumed += ci as u64;
            s.stats.underrun += (n - co) as u64;
            // Gains, ramped per sample.
            let duck_target = if top.is_some_and(|t| t > s.p.priority) {
                self.duck_floor
            } else {
                ONE
            };
            let targets: [i64; 64] = core::array::from_fn(|c| if c < ch { s.target(c) } else { 0 });
            let fade_target = if s.stopping { 0 } else { ONE };
            let mut energy = 0i64;
            for f in self.scratch.chunks_exact_mut(ch) {
                s.duck = if s.duck > duck_target {
                    (s.duck - self.duck_attack).max(duck_target)
                } else {
                    (s.duck + self.duck_release).min(duck_target)
                };
                s.fade = if s.fade > fade_target {
                    (s.fade - self.gain_step).max(fade_target)
                } else {
                    (s.fade + self.gain_step).min(fade_target)
                };
                let duck = (s.duck * s.fade) >> 28;
                for (c, x) in f.iter_mut().enumerate() {
                    let g = &mut s.gain[c];
                    let t = targets[c];
                    *g = if *g > t {
                        (*g - self.gain_step).max(t)
                    } else {
                        (*g + self.gain_step).min(t)
                    };
                    let y = (((i64::from(*x) * *g) >> 28) * duck) >> 28;
                    *x = y.clamp(i32::MIN as i64, i32::MAX as i64) as i32;
                    let h = i64::from(*x >> 16);
                    energy += h * h;
                }
            }
            if s.stopping && s.fade == 0 {
                s.running = false;
                s.stopping = false;
                s.drop_stale();
            }
            s.stats.duck_gain = s.duck as f32 / ONE as f32;
            s.stats.level_rms = libm::sqrtf(energy as f32 / (frames * ch).max(1) as f32) / 32768.0;
            let src: &[i32] = if ch == dch {
                &self.scratch
            } else {
                self.mapped.clear();
                self.mapped.resize(n * dch, 0);
                map_channels(&self.scratch, ch, &mut self.mapped, dch)?;
                &self.mapped
            };
            for (a, x) in self.acc.iter_mut().zip(src) {
                *a += i64::from(*x);
            }
        }
        for (o, a) in out.iter_mut().zip(&self.acc) {
            if *a > i32::MAX as i64 || *a < i32::MIN as i64 {
                self.stats.clipped += 1;
            }
            *o = (*a).clamp(i32::MIN as i64, i32::MAX as i64) as i32;
        }
        self.clock += frames as u64;
        self.stats.frames += frames as u64;
        Ok(())
    }

    /// [`mix_q31`](Self::mix_q31) into `f32` (every sample in `[-1, 1]`).
    pub fn mix(&mut self, out: &mut [f32]) -> Result<(), Error> {
        let mut buf = core::mem::take(&mut self.mixbuf);
        buf.clear();
        buf.resize(out.len(), 0);
        let r = self.mix_q31(&mut buf);
        for (o, q) in out.iter_mut().zip(&buf) {
            *o = q31_to_f32(*q);
        }
        self.mixbuf = buf;
        r
    }

    /// Mixes `out.len() / (channels * fmt.bytes())` device frames into `out` in the device
    /// format `fmt` (integer path end to end for integer formats); returns the frames.
    pub fn mix_bytes(&mut self, fmt: SampleFormat, out: &mut [u8]) -> Result<usize, Error> {
        let frame = fmt.bytes() * self.cfg.channels;
        if !out.len().is_multiple_of(frame) {
            return Err(Error::Length);
        }
        let frames = out.len() / frame;
        let mut buf = core::mem::take(&mut self.mixbuf);
        buf.clear();
        buf.resize(frames * self.cfg.channels, 0);
        let r = self
            .mix_q31(&mut buf)
            .and_then(|_| encode_q31(fmt, &buf, out));
        self.mixbuf = buf;
        r.map(|_| frames)
    }
}
