//! Signal measurements for tests, benchmarks and level meters: synthetic sines, Goertzel
//! (power at one frequency), a least-squares sine fit with frequency search (amplitude,
//! frequency and SNR of a tone), RMS and dBFS.

use core::f64::consts::PI;

/// `n` samples of `amp * sin(2 pi f t + phase)` at `rate`, starting at sample `start`.
pub fn sine(rate: u32, f: f64, amp: f64, start: u64, out: &mut [f32]) {
    for (i, o) in out.iter_mut().enumerate() {
        let t = (start + i as u64) as f64 / rate as f64;
        *o = (amp * libm::sin(2.0 * PI * f * t)) as f32;
    }
}

/// Amplitude of the component at `f` (Hz) in `x` sampled at `rate` (Goertzel with a Hann
/// window; exact for a tone on a bin, within a fraction of a dB otherwise).
pub fn goertzel_amplitude(x: &[f32], rate: u32, f: f64) -> f64 {
    let n = x.len();
    if n < 2 {
        return 0.0;
    }
    let w = 2.0 * PI * f / rate as f64;
    let coeff = 2.0 * libm::cos(w);
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    let mut wsum = 0.0;
    for (i, &v) in x.iter().enumerate() {
        let win = 0.5 - 0.5 * libm::cos(2.0 * PI * i as f64 / (n - 1) as f64);
        wsum += win;
        let s = v as f64 * win + coeff * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    let re = s1 - s2 * libm::cos(w);
    let im = s2 * libm::sin(w);
    2.0 * libm::sqrt(re * re + im * im) / wsum
}

/// Result of [`fit_sine`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SineFit {
    /// Fitted frequency, Hz.
    pub freq: f64,
    /// Fitted amplitude.
    pub amplitude: f64,
    /// Power of the fitted sine over the power of the residual, dB.
    pub snr_db: f64,
}

/// Least-squares fit of `a sin + b cos + c` at frequency `f`; returns (amplitude, residual
/// power, fitted power).
fn fit_at(x: &[f32], rate: u32, f: f64) -> (f64, f64, f64) {
    let w = 2.0 * PI * f / rate as f64;
    // Normal equations for [sin, cos, 1].
    let mut m = [[0f64; 3]; 3];
    let mut v = [0f64; 3];
    for (i, &y) in x.iter().enumerate() {
        let (s, c) = (libm::sin(w * i as f64), libm::cos(w * i as f64));
        let basis = [s, c, 1.0];
        for r in 0..3 {
            for k in 0..3 {
                m[r][k] += basis[r] * basis[k];
            }
            v[r] += basis[r] * y as f64;
        }
    }
    let p = solve3(m, v);
    let mut res = 0.0;
    let mut fitp = 0.0;
    for (i, &y) in x.iter().enumerate() {
        let (s, c) = (libm::sin(w * i as f64), libm::cos(w * i as f64));
        let fit = p[0] * s + p[1] * c;
        let e = y as f64 - fit - p[2];
        res += e * e;
        fitp += fit * fit;
    }
    (libm::sqrt(p[0] * p[0] + p[1] * p[1]), res, fitp)
}

fn solve3(mut m: [[f64; 3]; 3], mut v: [f64; 3]) -> [f64; 3] {
    for col in 0..3 {
        let piv = (col..3)
            .max_by(|&a, &b| libm::fabs(m[a][col]).total_cmp(&libm::fabs(m[b][col])))
            .unwrap_or(col);
        m.swap(col, piv);
        v.swap(col, piv);
        let d = m[col][col];
        if d == 0.0 {
            return [0.0; 3];
        }
        let pivot_row = m[col];
        for r in 0..3 {
            if r != col {
                let k = m[r][col] / d;
                for (x, p) in m[r].iter_mut().zip(pivot_row) {
                    *x -= k * p;
                }
                v[r] -= k * v[col];
            }
        }
    }
    [v[0] / m[0][0], v[1] / m[1][1], v[2] / m[2][2]]
}

/// Fits a sine near `f_guess` (a grid over `f_guess +- span` Hz finer than the window's
/// resolution, then a golden-section search on the residual around the best point):
/// frequency, amplitude and SNR (fitted sine power over everything else).
pub fn fit_sine(x: &[f32], rate: u32, f_guess: f64, span: f64) -> SineFit {
    let g = (libm::sqrt(5.0) - 1.0) / 2.0;
    let step = (0.25 * rate as f64 / x.len().max(1) as f64)
        .min(span / 4.0)
        .max(1e-9);
    let steps = libm::ceil(span / step) as i64;
    let best = (-steps..=steps)
        .map(|k| f_guess + k as f64 * step)
        .map(|f| (f, fit_at(x, rate, f).1))
        .min_by(|p, q| p.1.total_cmp(&q.1))
        .map_or(f_guess, |p| p.0);
    let (mut a, mut b) = (best - step, best + step);
    let mut c = b - g * (b - a);
    let mut d = a + g * (b - a);
    let mut fc = fit_at(x, rate, c).1;
    let mut fd = fit_at(x, rate, d).1;
    for _ in 0..60 {
        if fc < fd {
            b = d;
            d = c;
            fd = fc;
            c = b - g * (b - a);
            fc = fit_at(x, rate, c).1;
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + g * (b - a);
            fd = fit_at(x, rate, d).1;
        }
        if b - a < 1e-6 {
            break;
        }
    }
    let freq = (a + b) / 2.0;
    let (amplitude, res, fitp) = fit_at(x, rate, freq);
    SineFit {
        freq,
        amplitude,
        snr_db: 10.0 * libm::log10(fitp / res.max(1e-300)),
    }
}

/// Root mean square.
pub fn rms(x: &[f32]) -> f64 {
    if x.is_empty() {
        return 0.0;
    }
    libm::sqrt(x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / x.len() as f64)
}

/// An amplitude in dB relative to full scale.
pub fn dbfs(amplitude: f64) -> f64 {
    20.0 * libm::log10(amplitude.max(1e-300))
}

/// Every `channels`-th sample starting at `c` (one channel of interleaved frames).
pub fn channel(x: &[f32], channels: usize, c: usize) -> alloc::vec::Vec<f32> {
    x.iter().skip(c).step_by(channels).copied().collect()
}

/// Largest analysis window of [`dominant_frequency`].
pub const DOMINANT_WINDOW: usize = 4096;

/// The dominant frequency (Hz) of `x` sampled at `rate`, `None` for fewer than 256 samples or
/// silence. `f32` throughout and O(N log N) (the images are soft-float): over the last
/// power-of-two window of up to [`DOMINANT_WINDOW`] samples with a Hann window, a radix-2 FFT
/// finds the strongest bin above DC, then a Goertzel scan over that bin +-1 in twentieths of
/// a bin refines it (a pure tone within a few hundredths of a bin).
pub fn dominant_frequency(x: &[f32], rate: u32) -> Option<f32> {
    let n = x.len().min(DOMINANT_WINDOW);
    if n < 256 {
        return None;
    }
    let n = 1usize << (usize::BITS - 1 - n.leading_zeros());
    let x = &x[x.len() - n..];
    let tau = core::f32::consts::TAU;
    let win: alloc::vec::Vec<f32> = x
        .iter()
        .enumerate()
        .map(|(i, &v)| v * (0.5 - 0.5 * libm::cosf(tau * i as f32 / n as f32)))
        .collect();
    let mut re = win.clone();
    let mut im = alloc::vec![0.0f32; n];
    fft(&mut re, &mut im);
    let (k, p) = (2..n / 2)
        .map(|k| (k, re[k] * re[k] + im[k] * im[k]))
        .fold((0, 0.0f32), |b, c| if c.1 > b.1 { c } else { b });
    if p <= 0.0 {
        return None;
    }
    let bin = rate as f32 / n as f32;
    let power = |f: f32| {
        let c = 2.0 * libm::cosf(tau * f / rate as f32);
        let (mut s1, mut s2) = (0.0f32, 0.0f32);
        for &v in &win {
            let s0 = v + c * s1 - s2;
            s2 = s1;
            s1 = s0;
        }
        s1 * s1 + s2 * s2 - c * s1 * s2
    };
    (-20..=20)
        .map(|j| (k as f32 + j as f32 / 20.0) * bin)
        .map(|f| (f, power(f)))
        .fold(None, |b: Option<(f32, f32)>, c| match b {
            Some(b) if b.1 >= c.1 => Some(b),
            _ => Some(c),
        })
        .map(|b| b.0)
}

/// In-place iterative radix-2 complex FFT (`re.len()` a power of two).
fn fft(re: &mut [f32], im: &mut [f32]) {
    let n = re.len();
    let mut j = 0;
    for i in 1..n {
        let mut bit = n >> 1;
        while j & bit != 0 {
            j ^= bit;
            bit >>= 1;
        }
        j |= bit;
        if i < j {
            re.swap(i, j);
            im.swap(i, j);
        }
    }
    let mut len = 2;
    while len <= n {
        let ang = -core::f32::consts::TAU / len as f32;
        let (wr, wi) = (libm::cosf(ang), libm::sinf(ang));
        for start in (0..n).step_by(len) {
            let (mut cr, mut ci) = (1.0f32, 0.0f32);
            for k in 0..len / 2 {
                let (a, b) = (start + k, start + k + len / 2);
                let tr = re[b] * cr - im[b] * ci;
                let ti = re[b] * ci + im[b] * cr;
                re[b] = re[a] - tr;
                im[b] = im[a] - ti;
                re[a] += tr;
                im[a] += ti;
                let t = cr * wr - ci * wi;
                ci = cr * wi + ci * wr;
                cr = t;
            }
        }
        len <<= 1;
    }
}

#[cfg(test)]
mod dominant_tests {
    use super::*;

    #[test]
    fn finds_tones_at_several_rates() {
        for (rate, f) in [(16000u32, 1000.0f64), (44100, 1000.0), (48000, 937.0), (16000, 3111.5), (44100, 150.0)] {
            let mut x = alloc::vec![0.0f32; rate as usize];
            sine(rate, f, 0.25, 17, &mut x);
            // Some deterministic noise, -40 dB.
            let mut s = 1u32;
            for v in x.iter_mut() {
                s = s.wrapping_mul(1_103_515_245).wrapping_add(12345);
                *v += ((s >> 16) as f32 / 65536.0 - 0.5) * 0.005;
            }
            let got = dominant_frequency(&x, rate).unwrap() as f64;
            assert!((got - f).abs() < 0.01 * f, "{rate} Hz, tone {f}: got {got}");
        }
        assert_eq!(dominant_frequency(&[0.0; 4096], 16000), None);
        assert_eq!(dominant_frequency(&[0.5; 100], 16000), None);
    }
}
