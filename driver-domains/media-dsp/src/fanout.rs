//! Capture fan-out: one device capture stream delivered to every consumer in the rate and
//! channel count it asked for. The device is decoded once per block whatever the number of
//! consumers; each consumer has its own channel map, [`Resampler`] and bounded FIFO. A consumer
//! that does not read in time loses the newest samples (counted in
//! [`ConsumerStats::overrun`]); what it already has stays contiguous in time.

use alloc::vec::Vec;

use crate::Error;
use crate::channels::map_channels;
use crate::fifo::Fifo;
use crate::format::{SampleFormat, decode_q31, encode_q31, f32_to_q31, q31_to_f32};
use crate::resample::Resampler;
use crate::slots::Slots;

/// Handle of a consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConsumerId(pub u32);

/// Counters of one consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConsumerStats {
    /// Frames produced into the FIFO (the capture position, at the consumer's rate).
    pub produced: u64,
    /// Frames read out.
    pub read: u64,
    /// Frames dropped because the FIFO was full.
    pub overrun: u64,
}

#[derive(Debug, Clone)]
struct Consumer {
    channels: usize,
    rs: Resampler,
    fifo: Fifo<i32>,
    running: bool,
    stats: ConsumerStats,
}

/// The capture fan-out.
#[derive(Debug, Clone)]
pub struct FanOut {
    rate: u32,
    channels: usize,
    consumers: Slots<Consumer>,
    dev: Vec<i32>,
    mapped: Vec<i32>,
    out: Vec<i32>,
    /// Device frames pushed.
    frames: u64,
}

impl FanOut {
    /// A fan-out of a device capturing `channels` at `rate`, for at most `max` consumers.
    pub fn new(rate: u32, channels: usize, max: usize) -> Result<Self, Error> {
        if !(crate::resample::RATE_RANGE.0..=crate::resample::RATE_RANGE.1).contains(&rate) {
            return Err(Error::UnsupportedRate);
        }
        if channels == 0 || channels > 64 {
            return Err(Error::UnsupportedChannels);
        }
        Ok(Self {
            rate,
            channels,
            consumers: Slots::new(max),
            dev: Vec::new(),
            mapped: Vec::new(),
            out: Vec::new(),
            frames: 0,
        })
    }

    /// Device frames pushed so far.
    pub fn device_frames(&self) -> u64 {
        self.frames
    }

    /// Consumers running now (the device must capture while this is not zero).
    pub fn running(&self) -> usize {
        self.consumers.iter().filter(|c| c.running).count()
    }

    /// Adds a consumer (stopped: it receives nothing until [`set_running`](Self::set_running)).
    pub fn add_consumer(
        &mut self,
        rate: u32,
        channels: usize,
        capacity_frames: usize,
    ) -> Result<ConsumerId, Error> {
        let rs = Resampler::new(self.rate, rate, channels)?;
        if capacity_frames == 0 || capacity_frames > 1 << 22 {
            return Err(Error::BadParameter);
        }
        let c = Consumer {
            channels,
            rs,
            fifo: Fifo::new(capacity_frames * channels),
            running: false,
            stats: ConsumerStats::default(),
        };
        self.consumers.insert(c).map(ConsumerId)
    }

    /// Removes a consumer.
    pub fn remove_consumer(&mut self, id: ConsumerId) -> Result<(), Error> {
        self.consumers.remove(id.0).map(drop)
    }

    fn consumer(&mut self, id: ConsumerId) -> Result<&mut Consumer, Error> {
        self.consumers.get_mut(id.0)
    }

    /// Starts or stops delivering to the consumer (stopping drops what it has not read).
    pub fn set_running(&mut self, id: ConsumerId, running: bool) -> Result<(), Error> {
        let c = self.consumer(id)?;
        if !running {
            c.fifo.clear();
            c.rs.reset();
        }
        c.running = running;
        Ok(())
    }

    /// The consumer's counters.
    pub fn stats(&self, id: ConsumerId) -> Result<ConsumerStats, Error> {
        self.consumers.get(id.0).map(|c| c.stats)
    }

    /// Frames ready to read.
    pub fn available(&self, id: ConsumerId) -> Result<usize, Error> {
        self.consumers.get(id.0).map(|c| c.fifo.len() / c.channels)
    }

    /// [`push_q31`](Self::push_q31) for `f32` frames.
    pub fn push(&mut self, device: &[f32]) -> Result<(), Error> {
        let mut dev = core::mem::take(&mut self.dev);
        dev.clear();
        dev.extend(device.iter().map(|&x| f32_to_q31(x)));
        let r = self.push_q31(&dev);
        self.dev = dev;
        r
    }

    /// Delivers device frames (interleaved Q31, device channels) to every running consumer.
    pub fn push_q31(&mut self, device: &[i32]) -> Result<(), Error> {
        let dch = self.channels;
        if !device.len().is_multiple_of(dch) {
            return Err(Error::Length);
        }
        let frames = device.len() / dch;
        self.frames += frames as u64;
        for c in self.consumers.iter_mut() {
            if !c.running {
                continue;
            }
            let ch = c.channels;
            let src: &[i32] = if ch == dch {
                device
            } else {
                self.mapped.clear();
                self.mapped.resize(frames * ch, 0);
                map_channels(device, dch, &mut self.mapped, ch)?;
                &self.mapped
            };
            let n_out = c.rs.output_for(frames);
            self.out.clear();
            self.out.resize(n_out * ch, 0);
            let (_, co) = c.rs.process(src, &mut self.out);
            let took = c.fifo.push(&self.out[..co * ch]) / ch;
            c.stats.produced += took as u64;
            c.stats.overrun += (co - took) as u64;
        }
        Ok(())
    }

    /// Decodes device bytes of `fmt` and delivers them.
    pub fn push_bytes(&mut self, fmt: SampleFormat, bytes: &[u8]) -> Result<(), Error> {
        if !bytes.len().is_multiple_of(fmt.bytes() * self.channels) {
            return Err(Error::Length);
        }
        let mut dev = core::mem::take(&mut self.dev);
        dev.clear();
        dev.resize(bytes.len() / fmt.bytes(), 0);
        decode_q31(fmt, bytes, &mut dev)?;
        let r = self.push_q31(&dev);
        self.dev = dev;
        r
    }

    /// [`read_q31`](Self::read_q31) into `f32`.
    pub fn read(&mut self, id: ConsumerId, out: &mut [f32]) -> Result<usize, Error> {
        let mut buf = core::mem::take(&mut self.out);
        buf.clear();
        buf.resize(out.len(), 0);
        let n = self.read_q31(id, &mut buf);
        for (o, q) in out.iter_mut().zip(&buf) {
            *o = q31_to_f32(*q);
        }
        self.out = buf;
        n
    }

    /// Reads up to `out.len() / channels` frames (interleaved Q31); returns the frames.
    pub fn read_q31(&mut self, id: ConsumerId, out: &mut [i32]) -> Result<usize, Error> {
        let c = self.consumer(id)?;
        let n = (out.len() / c.channels).min(c.fifo.len() / c.channels);
        out[..n * c.channels].copy_from_slice(&c.fifo.data()[..n * c.channels]);
        c.fifo.consume(n * c.channels);
        c.stats.read += n as u64;
        Ok(n)
    }

    /// Reads up to `out.len()` bytes of whole frames encoded in `fmt`; returns the frames.
    pub fn read_bytes(
        &mut self,
        id: ConsumerId,
        fmt: SampleFormat,
        out: &mut [u8],
    ) -> Result<usize, Error> {
        let ch = self.consumer(id)?.channels;
        let frame = fmt.bytes() * ch;
        let want = out.len() / frame;
        let mut buf = core::mem::take(&mut self.out);
        buf.clear();
        buf.resize(want * ch, 0);
        let n = self.read_q31(id, &mut buf);
        let r = n.and_then(|n| encode_q31(fmt, &buf[..n * ch], &mut out[..n * frame]).map(|_| n));
        self.out = buf;
        r
    }
}
