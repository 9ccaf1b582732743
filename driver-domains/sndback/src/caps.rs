//! What the platform offers guests: formats, rates, channels, buffer and period sizes, and the
//! two negotiations built on it: `XENSND_OP_HW_PARAM_QUERY` (intersect the guest's
//! configuration space with ours) and the validation of `XENSND_OP_OPEN`.

use alloc::vec::Vec;

use media_dsp::SampleFormat;
use xen_abi::sndif::{HwParam, Open, Range};

use crate::Status;

/// Platform capabilities of one guest's streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caps {
    /// Bit n = `XENSND_PCM_FORMAT` n (only formats media-dsp converts are ever offered).
    pub formats: u64,
    /// Sample rates offered, Hz.
    pub rates: Vec<u32>,
    /// Channels.
    pub channels: Range,
    /// Buffer size in frames (as in the hw-param query).
    pub buffer_frames: Range,
    /// Period size in frames.
    pub period_frames: Range,
    /// Largest shared buffer in octets (bounds the pages read per stream).
    pub max_buffer_bytes: u32,
}

impl Default for Caps {
    /// s8/u8/s16/s24/s32/f32 (LE), 8 kHz..96 kHz standard rates, 1-2 channels, buffers up to
    /// 64 KiB (16..16384 frames), periods 16..8192 frames.
    fn default() -> Self {
        let f = |x: SampleFormat| 1u64 << x.sndif_code();
        Self {
            formats: f(SampleFormat::S8)
                | f(SampleFormat::U8)
                | f(SampleFormat::S16Le)
                | f(SampleFormat::S24Le)
                | f(SampleFormat::S32Le)
                | f(SampleFormat::F32Le),
            rates: alloc::vec![8000, 11025, 16000, 22050, 32000, 44100, 48000, 88200, 96000],
            channels: Range { min: 1, max: 2 },
            buffer_frames: Range {
                min: 16,
                max: 16384,
            },
            period_frames: Range { min: 16, max: 8192 },
            max_buffer_bytes: 64 * 1024,
        }
    }
}

fn intersect(a: Range, b: Range) -> Option<Range> {
    let r = Range {
        min: a.min.max(b.min),
        max: a.max.min(b.max),
    };
    (r.min <= r.max).then_some(r)
}

impl Caps {
    /// Answers a hw-param query: the part of `req` the platform supports, or `EINVAL` when
    /// some parameter has nothing in common with it.
    pub fn query(&self, req: &HwParam) -> Result<HwParam, Status> {
        let formats = req.formats & self.formats & media_dsp::format::SUPPORTED_MASK;
        let mut in_range = self
            .rates
            .iter()
            .copied()
            .filter(|r| (req.rates.min..=req.rates.max).contains(r));
        let first = in_range.next().ok_or(Status::Inval)?;
        let (lo, hi) = in_range.fold((first, first), |(l, h), r| (l.min(r), h.max(r)));
        let rates = Range { min: lo, max: hi };
        let channels = intersect(req.channels, self.channels).ok_or(Status::Inval)?;
        let buffer = intersect(req.buffer, self.buffer_frames).ok_or(Status::Inval)?;
        let period = intersect(req.period, self.period_frames).ok_or(Status::Inval)?;
        if formats == 0 {
            return Err(Status::Inval);
        }
        Ok(HwParam {
            formats,
            rates,
            channels,
            buffer,
            period,
        })
    }

    /// Validates an OPEN: format offered and convertible, rate offered, channels in range,
    /// buffer and period whole frames inside their ranges and the buffer under the byte limit.
    /// Returns the format.
    pub fn check_open(&self, o: &Open) -> Result<SampleFormat, Status> {
        if self.formats & (1u64 << o.pcm_format.min(63)) == 0 {
            return Err(Status::Inval);
        }
        let fmt = SampleFormat::from_sndif(o.pcm_format).map_err(|_| Status::Inval)?;
        if !self.rates.contains(&o.pcm_rate) {
            return Err(Status::Inval);
        }
        let ch = u32::from(o.pcm_channels);
        if !(self.channels.min..=self.channels.max).contains(&ch) {
            return Err(Status::Inval);
        }
        let frame = fmt.bytes() as u32 * ch;
        if o.buffer_sz > self.max_buffer_bytes || !o.buffer_sz.is_multiple_of(frame) {
            return Err(Status::Inval);
        }
        let frames = o.buffer_sz / frame;
        if !(self.buffer_frames.min..=self.buffer_frames.max).contains(&frames) {
            return Err(Status::Inval);
        }
        if o.period_sz != 0 {
            let p = o.period_sz / frame;
            if !o.period_sz.is_multiple_of(frame)
                || !(self.period_frames.min..=self.period_frames.max).contains(&p)
            {
                return Err(Status::Inval);
            }
        }
        Ok(fmt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(rate: u32, fmt: u8, ch: u8, buffer_sz: u32, period_sz: u32) -> Open {
        Open {
            pcm_rate: rate,
            pcm_format: fmt,
            pcm_channels: ch,
            buffer_sz,
            gref_directory: 8,
            period_sz,
        }
    }

    #[test]
    fn query_intersects() {
        let c = Caps::default();
        let all = HwParam {
            formats: u64::MAX >> 39,
            rates: Range {
                min: 0,
                max: u32::MAX,
            },
            channels: Range { min: 0, max: 255 },
            buffer: Range {
                min: 0,
                max: u32::MAX,
            },
            period: Range {
                min: 0,
                max: u32::MAX,
            },
        };
        let a = c.query(&all).unwrap();
        assert_eq!(a.formats, c.formats);
        assert_eq!(
            a.rates,
            Range {
                min: 8000,
                max: 96000
            }
        );
        assert_eq!(a.channels, Range { min: 1, max: 2 });
        let narrow = HwParam {
            rates: Range {
                min: 40000,
                max: 46000,
            },
            formats: 1 << 2 | 1 << 20,
            ..all
        };
        let a = c.query(&narrow).unwrap();
        assert_eq!(
            a.rates,
            Range {
                min: 44100,
                max: 44100
            }
        );
        assert_eq!(a.formats, 1 << 2);
        for bad in [
            HwParam {
                rates: Range {
                    min: 44101,
                    max: 47999,
                },
                ..all
            },
            HwParam {
                formats: 1 << 20,
                ..all
            },
            HwParam {
                channels: Range { min: 3, max: 8 },
                ..all
            },
            HwParam {
                period: Range {
                    min: 9000,
                    max: 9001,
                },
                ..all
            },
        ] {
            assert_eq!(c.query(&bad), Err(Status::Inval), "{bad:?}");
        }
    }

    #[test]
    fn open_checks() {
        let c = Caps::default();
        assert_eq!(
            c.check_open(&open(48000, 2, 2, 16384, 1920)),
            Ok(SampleFormat::S16Le)
        );
        for bad in [
            open(47999, 2, 2, 16384, 1920),  // rate
            open(48000, 3, 2, 16384, 1920),  // s16_be not offered
            open(48000, 20, 2, 16384, 1920), // mu-law
            open(48000, 2, 3, 16386, 0),     // channels
            open(48000, 2, 2, 16386, 0),     // not whole frames
            open(48000, 2, 2, 1 << 20, 0),   // too big
            open(48000, 2, 2, 16, 0),        // under 16 frames
            open(48000, 2, 2, 16384, 1922),  // period not whole frames
            open(48000, 2, 2, 16384, 4),     // period under 16 frames
        ] {
            assert_eq!(c.check_open(&bad), Err(Status::Inval), "{bad:?}");
        }
    }
}
