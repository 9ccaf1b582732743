//! Channel mapping of interleaved Q31 frames (integer arithmetic).
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

/// 1/sqrt(2) in Q30.
const M3DB: i64 = 759_250_125;
/// 1 / (1 + 2/sqrt(2)) in Q30.
const NORM51: i64 = 444_758_426;

/// Maps `input` (frames of `from` channels) into `out` (the same number of frames of `to`
/// channels).
pub fn map_channels(input: &[i32], from: usize, out: &mut [i32], to: usize) -> Result<(), Error> {
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
            for (i, o) in frames {
                o[0] = (i.iter().map(|&x| i64::from(x)).sum::<i64>() / from as i64) as i32;
            }
        }
        (6, 2) => {
            let mix = |a: i32, b: i32, c: i32| -> i32 {
                let side = (M3DB * (i64::from(b) + i64::from(c))) >> 30;
                (((i64::from(a) + side) * NORM51) >> 30) as i32
            };
            for (i, o) in frames {
                o[0] = mix(i[0], i[2], i[4]);
                o[1] = mix(i[1], i[2], i[5]);
            }
        }
        _ if from < to => {
            for (i, o) in frames {
                o[..from].copy_from_slice(i);
                o[from..].fill(0);
            }
        }
        _ => {
            let mut acc = [0i64; 64];
            for (i, o) in frames {
                acc[..to].fill(0);
                for (c, x) in i.iter().enumerate() {
                    acc[c % to] += i64::from(*x);
                }
                for (c, y) in o.iter_mut().enumerate() {
                    let n = (from - c).div_ceil(to);
                    *y = (acc[c] / n as i64) as i32;
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
        const H: i32 = 1 << 30; // 0.5
        const Q: i32 = 1 << 29; // 0.25
        let mut o = [0; 4];
        map_channels(&[H, -Q], 1, &mut o, 2).unwrap();
        assert_eq!(o, [H, H, -Q, -Q]);
        let mut m = [0; 2];
        map_channels(&[i32::MAX, 0, i32::MAX, i32::MAX], 2, &mut m, 1).unwrap();
        assert_eq!(m, [i32::MAX / 2, i32::MAX]);
        let mut s = [0; 2];
        map_channels(&[i32::MAX; 6], 6, &mut s, 2).unwrap();
        assert!(
            s.iter().all(|&v| v > i32::MAX - 8),
            "{s:?}: full scale, no overflow"
        );
        let mut q = [9; 4];
        map_channels(&[1, 2], 2, &mut q, 4).unwrap();
        assert_eq!(q, [1, 2, 0, 0]);
        let mut t = [0; 2];
        map_channels(&[H, Q, H], 3, &mut t, 2).unwrap();
        assert_eq!(t, [H, Q]);
        assert_eq!(map_channels(&[0; 3], 2, &mut t, 2), Err(Error::Length));
        assert_eq!(map_channels(&[0; 2], 0, &mut t, 2), Err(Error::Length));
        let mut n = [0; 1];
        map_channels(&[i32::MIN; 8], 8, &mut n, 1).unwrap();
        assert_eq!(n, [i32::MIN]);
    }
}
