//! Property tests: no input makes the DSP panic, overflow or leave full scale.

use media_dsp::format::{ALL_FORMATS, convert, decode_f32, encode_f32};
use media_dsp::{FanOut, Mixer, MixerConfig, Resampler, SampleFormat, StreamParams};
use proptest::prelude::*;

const RATES: [u32; 8] = [8000, 11025, 16000, 22050, 32000, 44100, 48000, 96000];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any bytes decode (in any format) to finite samples in [-1, 1]; encoding them back and
    /// decoding again is stable.
    #[test]
    fn any_bytes_decode_in_range(bytes in proptest::collection::vec(any::<u8>(), 0..256), f in 0usize..18) {
        let fmt = ALL_FORMATS[f];
        let n = bytes.len() / fmt.bytes();
        let b = &bytes[..n * fmt.bytes()];
        let mut x = vec![0f32; n];
        decode_f32(fmt, b, &mut x).unwrap();
        prop_assert!(x.iter().all(|v| v.is_finite() && (-1.0..=1.0).contains(v)));
        let mut e = vec![0u8; b.len()];
        encode_f32(fmt, &x, &mut e).unwrap();
        let mut y = vec![0f32; n];
        decode_f32(fmt, &e, &mut y).unwrap();
        let mut e2 = vec![0u8; b.len()];
        encode_f32(fmt, &y, &mut e2).unwrap();
        prop_assert_eq!(e, e2);
        for to in ALL_FORMATS {
            let mut o = vec![0u8; n * to.bytes()];
            prop_assert_eq!(convert(fmt, b, to, &mut o).unwrap(), n);
        }
    }

    /// Random rates, channels and block sizes with extreme samples: the resampler consumes
    /// all input, predicts its output count exactly and stays bounded.
    #[test]
    fn resampler_bounded(a in 0usize..8, b in 0usize..8, ch in 1usize..4,
                         blocks in proptest::collection::vec(1usize..700, 1..8), seed in any::<u64>()) {
        let r = Resampler::new(RATES[a], RATES[b], ch);
        prop_assume!(r.is_ok(), "ratio not offered");
        let mut r = r.unwrap();
        let mut s = seed | 1;
        for n in blocks {
            let x: Vec<f32> = (0..n * ch).map(|_| {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                if s % 3 == 0 { 1.0 } else if s % 3 == 1 { -1.0 } else { 0.0 }
            }).collect();
            let want = r.output_for(n);
            let mut out = vec![0f32; want * ch];
            let (ci, co) = r.process_f32(&x, &mut out);
            prop_assert_eq!((ci, co), (n, want));
            // Worst case gain of the filter on +-1 input is its L1 norm (< 2.5 here).
            prop_assert!(out.iter().all(|v| v.is_finite() && v.abs() < 2.5));
        }
    }

    /// A random script of mixer and fan-out operations never panics, and the output stays in
    /// [-1, 1].
    #[test]
    fn mixer_script(ops in proptest::collection::vec((0u8..10, any::<u16>(), any::<u32>()), 1..60)) {
        let mut m = Mixer::new(MixerConfig::new(48000, 2)).unwrap();
        let mut f = FanOut::new(48000, 2, 4).unwrap();
        let mut ids = Vec::new();
        let mut cons = Vec::new();
        let mut out = vec![0f32; 2 * 700];
        for (op, a, b) in ops {
            fn pick<T: Copy>(v: &[T], a: u16) -> Option<T> {
                v.get(a as usize % v.len().max(1)).copied()
            }
            match op {
                0 => if let Ok(id) = m.add_stream(StreamParams {
                        rate: RATES[a as usize % 8], channels: 1 + (b as usize % 6),
                        priority: (b >> 8) as u8 % 4, capacity_frames: 1 + (b as usize % 5000) }) { ids.push(id) },
                1 => if let Some(id) = pick(&ids, a) {
                        let bytes: Vec<u8> = (0..(b % 3000)).map(|i| i.wrapping_mul(b) as u8).collect();
                        let _ = m.push_bytes(id, SampleFormat::from_sndif((a % 18) as u8).unwrap(), &bytes);
                     },
                2 => if let Some(id) = pick(&ids, a) { let _ = m.set_running(id, b % 2 == 0); },
                3 => if let Some(id) = pick(&ids, a) { let _ = m.set_volume_db(id, b as usize % 3, f32::from_bits(b)); },
                4 => if let Some(id) = pick(&ids, a) { let _ = m.set_mute(id, b as usize % 3, b % 2 == 0); },
                5 => if let Some(id) = pick(&ids, a) { let _ = m.remove_stream(id); },
                6 => {
                    let n = 2 * (b as usize % 700);
                    m.mix(&mut out[..n]).unwrap();
                    prop_assert!(out[..n].iter().all(|v| (-1.0..=1.0).contains(v)));
                    f.push(&out[..n]).unwrap();
                }
                7 => if let Ok(c) = f.add_consumer(RATES[a as usize % 8], 1 + b as usize % 3, 1 + b as usize % 4000) {
                        let _ = f.set_running(c, true);
                        cons.push(c);
                     },
                8 => if let Some(c) = pick(&cons, a) {
                        let mut buf = vec![0u8; b as usize % 2000];
                        let _ = f.read_bytes(c, SampleFormat::from_sndif((a % 18) as u8).unwrap(), &mut buf);
                     },
                _ => if let Some(id) = pick(&ids, a) { let _ = m.set_cap_db(id, Some(f32::from_bits(b))); },
            }
        }
    }
}
