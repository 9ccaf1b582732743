//! Channel mapping of interleaved `f32` frames.
//!
//! Rules (`from` channels to `to` channels):
//! * equal: copy;
//! * mono to N: the mono signal on every output channel;
//! * N to mono: the mean of all channels (a full-scale signal stays full scale, never clips);
//! * 5.1 (FL FR FC LFE RL RR) to stereo: ITU-style downmix `L = FL + 0.707 FC + 0.707 RL`,
//!   `R = FR + 0.707 FC + 0.707 RR` (LFE dropped), normalised by `1 + 2 * 0.707` so it cannot
//!   clip;
//! * otherwise: channel `i` goes to output `i % to` and every output is divided by the number
//!   of inputs folded into it (downmix), or the extra outputs stay silent (upmix beyond mono).

use crate::Error;

const M3DB: f32 = core::f32::consts::FRAC_1_SQRT_2;

/// Maps `input` (frames of `from` channels) into `out` (the same number of frames of `to`
/// channels).
pub fn map_channels(input: &[f32], from: usize, out: &mut [f32], to: usize) -> Result<(), Error> {
    if from == 0
        || to == 0
        || !input.len().is_multiple_of(from)
        || out.len() != input.len() / from * to
    {
        return Err(Error::Length);
    }
    if from == to {
        out.copy_from_slice(input);
        return Ok(());
    }
    let frames = input.chunks_exact(from).zip(out.chunks_exact_mut(to));
    match (from, to) {
        (1, _) => {
            for (i, o) in frames {
                o.fill(i[0]);
            }
        }
        (_, 1) => {
            let k = 1.0 / from as f32;
            for (i, o) in frames {
                o[0] = i.iter().sum::<f32>() * k;
            }
        }
        (6, 2) => {
            let k = 1.0 / (1.0 + 2.0 * M3DB);
            for (i, o) in frames {
                o[0] = (i[0] + M3DB * (i[2] + i[4])) * k;
                o[1] = (i[1] + M3DB * (i[2] + i[5])) * k;
            }
        }
        _ if from < to => {
            for (i, o) in frames {
                o[..from].copy_from_slice(i);
                o[from..].fill(0.0);
            }
        }
        _ => {
            for (i, o) in frames {
                o.fill(0.0);
                for (c, x) in i.iter().enumerate() {
                    o[c % to] += x;
                }
                for (c, y) in o.iter_mut().enumerate() {
                    let n = (from - c).div_ceil(to);
                    *y /= n as f32;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps() {
        let mut o = [0.0; 4];
        map_channels(&[0.5, -0.25], 1, &mut o, 2).unwrap();
        assert_eq!(o, [0.5, 0.5, -0.25, -0.25]);
        let mut m = [0.0; 2];
        map_channels(&[1.0, 0.0, 1.0, 1.0], 2, &mut m, 1).unwrap();
        assert_eq!(m, [0.5, 1.0]);
        let mut s = [0.0; 2];
        map_channels(&[1.0, 1.0, 1.0, 1.0, 1.0, 1.0], 6, &mut s, 2).unwrap();
        assert!(
            (s[0] - 1.0).abs() < 1e-6 && (s[1] - 1.0).abs() < 1e-6,
            "{s:?}"
        );
        let mut q = [9.0; 4];
        map_channels(&[0.1, 0.2], 2, &mut q, 4).unwrap();
        assert_eq!(q, [0.1, 0.2, 0.0, 0.0]);
        let mut t = [0.0; 2];
        map_channels(&[1.0, 0.5, 1.0], 3, &mut t, 2).unwrap();
        assert_eq!(t, [1.0, 0.5]);
        assert_eq!(map_channels(&[0.0; 3], 2, &mut t, 2), Err(Error::Length));
        assert_eq!(map_channels(&[0.0; 2], 0, &mut t, 2), Err(Error::Length));
    }
}
