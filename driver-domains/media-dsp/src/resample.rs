//! Band-limited sample-rate conversion: a rational polyphase windowed-sinc resampler.
//!
//! For `in_rate -> out_rate` with `g = gcd`, `L = out/g` (interpolation) and `M = in/g`
//! (decimation), the prototype low-pass runs at `in_rate * L`; output sample `j` sits at input
//! time `j * M / L`, is computed from the `T` newest input samples with phase
//! `p = j * M mod L` of the prototype (`y = sum_k h[p + k L] x[n - k]`), which is exactly
//! "insert L-1 zeros, low-pass, keep every M-th" without computing the discarded samples.
//!
//! Prototype: Kaiser-windowed sinc, beta 8.96 (about 90 dB stop-band), cut-off at 0.475 of the
//! lower of the two rates with a transition band of 0.1 of it (pass-band to 0.425, stop-band
//! from 0.525 of the lower rate: e.g. 20.4 kHz / 25.2 kHz for 44.1 <-> 48 kHz). Taps per phase
//! grow with the decimation factor (60 for up-sampling, 344 for 48 kHz -> 8 kHz).
//!
//! Streaming: the history of every channel and the phase are kept between calls, and the
//! output depends only on the input samples, never on how they were cut into blocks (the same
//! arithmetic in the same order for any chunking). Equal rates pass samples through unchanged.

use alloc::vec;
use alloc::vec::Vec;

use crate::Error;
use crate::format::{f32_to_q31, q31_to_f32};

/// Largest interpolation factor `L` accepted: covers every pair of standard rates (8000 ...
/// 192000, 11025 family).
pub const MAX_L: u64 = 2560;
/// Largest prototype (`L * T` coefficients, 4 bytes each): 1 MiB.
pub const MAX_COEFFS: usize = 1 << 18;
/// Lowest and highest rates accepted.
pub const RATE_RANGE: (u32, u32) = (1000, 768_000);

const KAISER_BETA: f64 = 8.96;
const ATTEN_DB: f64 = 90.0;
const TRANSITION: f64 = 0.1;
const CUTOFF: f64 = 0.475;

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Modified Bessel function of the first kind, order 0 (power series).
fn bessel_i0(x: f64) -> f64 {
    let mut sum = 1.0;
    let mut term = 1.0;
    let q = x * x / 4.0;
    for k in 1..200 {
        term *= q / (k as f64 * k as f64);
        sum += term;
        if term < sum * 1e-17 {
            break;
        }
    }
    sum
}

/// A streaming resampler for interleaved Q31 frames (integer arithmetic: Q30 coefficients,
/// 64-bit accumulation; the images run without an FPU, see the crate docs).
#[derive(Debug, Clone)]
pub struct Resampler {
    in_rate: u32,
    out_rate: u32,
    channels: usize,
    l: usize,
    m: usize,
    taps: usize,
    /// Phase-major, each phase's taps reversed (oldest input first).
    coeffs: Vec<i32>,
    /// Per channel `2 * taps` floats: every sample stored twice so the window is contiguous.
    hist: Vec<i32>,
    /// Index (0..taps) of the newest sample in each channel's history.
    w: usize,
    phase: usize,
    /// Input frames still needed before the next output.
    need: usize,
}

impl Resampler {
    /// A resampler from `in_rate` to `out_rate` for `channels` interleaved channels.
    pub fn new(in_rate: u32, out_rate: u32, channels: usize) -> Result<Self, Error> {
        for r in [in_rate, out_rate] {
            if !(RATE_RANGE.0..=RATE_RANGE.1).contains(&r) {
                return Err(Error::UnsupportedRate);
            }
        }
        if channels == 0 || channels > 64 {
            return Err(Error::UnsupportedChannels);
        }
        let g = gcd(in_rate as u64, out_rate as u64);
        let (l, m) = (out_rate as u64 / g, in_rate as u64 / g);
        if l > MAX_L {
            return Err(Error::UnsupportedRate);
        }
        let (l, m) = (l as usize, m as usize);
        if in_rate == out_rate {
            return Ok(Self {
                in_rate,
                out_rate,
                channels,
                l: 1,
                m: 1,
                taps: 0,
                coeffs: Vec::new(),
                hist: Vec::new(),
                w: 0,
                phase: 0,
                need: 0,
            });
        }
        let lo = in_rate.min(out_rate) as f64;
        let fs_proto = in_rate as f64 * l as f64;
        // Kaiser's estimate of the length for the attenuation and transition band.
        let dw = 2.0 * core::f64::consts::PI * TRANSITION * lo / fs_proto;
        let n_est = (ATTEN_DB - 7.95) / (2.285 * dw);
        let taps = (libm::ceil(n_est / l as f64) as usize)
            .next_multiple_of(4)
            .max(8);
        let n = taps * l;
        if n > MAX_COEFFS {
            return Err(Error::UnsupportedRate);
        }
        let fc = CUTOFF * lo / fs_proto; // cycles per prototype sample
        let centre = (n as f64 - 1.0) / 2.0;
        let i0b = bessel_i0(KAISER_BETA);
        let mut h = vec![0f64; n];
        for (i, c) in h.iter_mut().enumerate() {
            let t = i as f64 - centre;
            let sinc = if t == 0.0 {
                2.0 * fc
            } else {
                libm::sin(2.0 * core::f64::consts::PI * fc * t) / (core::f64::consts::PI * t)
            };
            let r = 2.0 * t / (n as f64 - 1.0);
            let win = bessel_i0(KAISER_BETA * libm::sqrt((1.0 - r * r).max(0.0))) / i0b;
            *c = sinc * win;
        }
        // Normalise: each phase sums to ~1 at DC (the whole prototype sums to L).
        let sum: f64 = h.iter().sum();
        let k = l as f64 / sum;
        let mut coeffs = vec![0i32; n];
        for p in 0..l {
            for j in 0..taps {
                let c = h[p + (taps - 1 - j) * l] * k * Q30;
                coeffs[p * taps + j] = libm::round(c) as i32;
            }
        }
        Ok(Self {
            in_rate,
            out_rate,
            channels,
            l,
            m,
            taps,
            coeffs,
            hist: vec![0; channels * 2 * taps],
            w: 0,
            phase: 0,
            need: 1,
        })
    }

    /// Input rate.
    pub fn in_rate(&self) -> u32 {
        self.in_rate
    }

    /// Output rate.
    pub fn out_rate(&self) -> u32 {
        self.out_rate
    }

    /// Channels.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Filter taps per output sample (0 when the rates are equal).
    pub fn taps(&self) -> usize {
        self.taps
    }

    /// Group delay, in input samples.
    pub fn delay(&self) -> f64 {
        if self.taps == 0 {
            0.0
        } else {
            (self.taps as f64 * self.l as f64 - 1.0) / 2.0 / self.l as f64
        }
    }

    /// Clears the history (silence) and the phase.
    pub fn reset(&mut self) {
        self.hist.fill(0);
        self.w = 0;
        self.phase = 0;
        self.need = usize::from(self.taps != 0);
    }

    /// Output frames produced from `in_frames` more input frames (exact, given the state).
    pub fn output_for(&self, in_frames: usize) -> usize {
        if self.taps == 0 {
            return in_frames;
        }
        if in_frames < self.need {
            return 0;
        }
        // Output j (from now) needs `need + floor((phase + j M) / L)` input frames in total.
        let e = (in_frames - self.need) as u64;
        ((e + 1) * self.l as u64 - self.phase as u64).div_ceil(self.m as u64) as usize
    }

    /// Converts as much as possible: reads frames from `input`, writes frames to `out` (both
    /// interleaved, whole frames), returns `(input frames consumed, output frames written)`.
    pub fn process(&mut self, input: &[i32], out: &mut [i32]) -> (usize, usize) {
        let ch = self.channels;
        let in_frames = input.len() / ch;
        let out_frames = out.len() / ch;
        if self.taps == 0 {
            let n = in_frames.min(out_frames);
            out[..n * ch].copy_from_slice(&input[..n * ch]);
            return (n, n);
        }
        let t = self.taps;
        let (mut ci, mut co) = (0, 0);
        loop {
            while self.need > 0 {
                if ci == in_frames {
                    return (ci, co);
                }
                self.w = if self.w + 1 == t { 0 } else { self.w + 1 };
                for c in 0..ch {
                    let x = input[ci * ch + c];
                    let base = c * 2 * t;
                    self.hist[base + self.w] = x;
                    self.hist[base + self.w + t] = x;
                }
                ci += 1;
                self.need -= 1;
            }
            if co == out_frames {
                return (ci, co);
            }
            let cf = &self.coeffs[self.phase * t..(self.phase + 1) * t];
            for c in 0..ch {
                let base = c * 2 * t + self.w + 1;
                out[co * ch + c] = dot(cf, &self.hist[base..base + t]);
            }
            co += 1;
            self.phase += self.m;
            self.need = self.phase / self.l;
            self.phase %= self.l;
        }
    }

    /// [`process`](Self::process) for `f32` frames (converted to and from Q31; allocates:
    /// for tests and tools, not the device path).
    pub fn process_f32(&mut self, input: &[f32], out: &mut [f32]) -> (usize, usize) {
        let q: Vec<i32> = input.iter().map(|&x| f32_to_q31(x)).collect();
        let mut o = vec![0i32; out.len()];
        let (ci, co) = self.process(&q, &mut o);
        for (y, x) in out.iter_mut().zip(&o[..co * self.channels]) {
            *y = q31_to_f32(*x);
        }
        (ci, co)
    }
}

const Q30: f64 = (1u64 << 30) as f64;

/// Q31 dot Q30, rounded back to Q31 with saturation. Four independent accumulators; the sum
/// of |products| is below 2^63 for any filter here (its L1 norm is below 4).
#[inline]
fn dot(a: &[i32], b: &[i32]) -> i32 {
    let mut acc = [0i64; 4];
    let (ac, ar) = a.split_at(a.len() / 4 * 4);
    let (bc, br) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(4).zip(bc.chunks_exact(4)) {
        for i in 0..4 {
            acc[i] += i64::from(x[i]) * i64::from(y[i]);
        }
    }
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for (x, y) in ar.iter().zip(br) {
        s += i64::from(*x) * i64::from(*y);
    }
    ((s + (1 << 29)) >> 30).clamp(i32::MIN as i64, i32::MAX as i64) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factors_and_taps() {
        let r = Resampler::new(44100, 48000, 2).unwrap();
        assert_eq!((r.l, r.m), (160, 147));
        assert_eq!(r.taps(), 60);
        let d = Resampler::new(48000, 8000, 1).unwrap();
        assert_eq!((d.l, d.m), (1, 6));
        assert!(d.taps() >= 340, "{}", d.taps());
        let standard = [
            8000, 11025, 16000, 22050, 32000, 44100, 48000, 64000, 88200, 96000, 176400, 192000,
        ];
        for a in standard {
            for b in [44100, 48000] {
                assert!(Resampler::new(a, b, 1).is_ok(), "{a} -> {b}");
                assert!(Resampler::new(b, a, 1).is_ok(), "{b} -> {a}");
            }
        }
        assert_eq!(
            Resampler::new(44101, 48000, 1).unwrap_err(),
            Error::UnsupportedRate
        );
        assert_eq!(
            Resampler::new(48000, 48000, 0).unwrap_err(),
            Error::UnsupportedChannels
        );
        assert_eq!(
            Resampler::new(0, 48000, 1).unwrap_err(),
            Error::UnsupportedRate
        );
    }

    #[test]
    fn output_count_prediction() {
        for (a, b) in [
            (44100, 48000),
            (48000, 44100),
            (8000, 48000),
            (48000, 16000),
        ] {
            let mut r = Resampler::new(a, b, 1).unwrap();
            let mut total_in = 0;
            for n in [1usize, 7, 100, 333, 4096] {
                let input = vec![1 << 28; n];
                let want = r.output_for(n);
                let mut out = vec![0i32; want + 10];
                let (ci, co) = r.process(&input, &mut out);
                assert_eq!((ci, co), (n, want), "{a}->{b} after {total_in}");
                total_in += n;
            }
        }
    }
}
