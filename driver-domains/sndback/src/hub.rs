//! The device side shared by every guest: one [`Mixer`] for playback and one [`FanOut`] for
//! capture, both at the device's native format. The media domain's loop calls
//! [`Hub::render`] when the device wants playback frames and [`Hub::capture`] with what the
//! device recorded; each guest's [`Sndback`](crate::Sndback) feeds and drains the hub when
//! polled.

use media_dsp::{DuckConfig, FanOut, Mixer, MixerConfig, SampleFormat};

use crate::Error;

/// The device's native stream shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Sample format the device takes and gives.
    pub format: SampleFormat,
    /// Rate, Hz.
    pub rate: u32,
    /// Channels.
    pub channels: u8,
}

impl DeviceConfig {
    /// Octets per frame.
    pub fn frame_bytes(&self) -> usize {
        self.format.bytes() * self.channels as usize
    }
}

/// Mixer and fan-out of one device.
#[derive(Debug, Clone)]
pub struct Hub {
    dev: DeviceConfig,
    mixer: Mixer,
    fanout: FanOut,
}

impl Hub {
    /// A hub for `dev` with the given ducking, for at most `max_streams` streams each way.
    pub fn new(dev: DeviceConfig, duck: DuckConfig, max_streams: usize) -> Result<Self, Error> {
        let cfg = MixerConfig {
            duck,
            max_streams,
            ..MixerConfig::new(dev.rate, dev.channels as usize)
        };
        Ok(Self {
            dev,
            mixer: Mixer::new(cfg).map_err(Error::Dsp)?,
            fanout: FanOut::new(dev.rate, dev.channels as usize, max_streams)
                .map_err(Error::Dsp)?,
        })
    }

    /// The device shape.
    pub fn device(&self) -> &DeviceConfig {
        &self.dev
    }

    /// Fills `out` (whole device frames in the device format) with the mix of every running
    /// playback stream; returns the frames.
    pub fn render(&mut self, out: &mut [u8]) -> Result<usize, Error> {
        self.mixer
            .mix_bytes(self.dev.format, out)
            .map_err(Error::Dsp)
    }

    /// Delivers captured device frames (device format) to every running capture stream.
    pub fn capture(&mut self, input: &[u8]) -> Result<(), Error> {
        self.fanout
            .push_bytes(self.dev.format, input)
            .map_err(Error::Dsp)
    }

    /// The playback mixer (levels, counters, platform controls).
    pub fn mixer(&self) -> &Mixer {
        &self.mixer
    }

    /// The playback mixer, mutably.
    pub fn mixer_mut(&mut self) -> &mut Mixer {
        &mut self.mixer
    }

    /// The capture fan-out.
    pub fn fanout(&self) -> &FanOut {
        &self.fanout
    }

    /// The capture fan-out, mutably.
    pub fn fanout_mut(&mut self) -> &mut FanOut {
        &mut self.fanout
    }
}
