//! Sample formats and conversion between wire bytes and the two working representations:
//! `f32` in `[-1, 1]` (the float path, used for mixing and resampling) and `i32` Q31 (the integer
//! path: lossless between integer formats, e.g. s16 -> s32 -> s16 is the identity).
//!
//! Every byte a guest wrote is untrusted: a float sample that is NaN or infinite decodes to 0,
//! and finite floats are clamped to `[-1, 1]`, so nothing a guest sends can poison a filter's
//! state or the mix. Encoding saturates (never wraps) and rounds to nearest.

use crate::Error;

/// A linear PCM sample format (codes as `XENSND_PCM_FORMAT_*`, `public/io/sndif.h`).
///
/// The 24-bit formats are ALSA's: 24 significant bits in a 4-byte container (the low three
/// bytes in little-endian order; the container's top byte is ignored on input and written as
/// the sign extension on output).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SampleFormat {
    /// Signed 8 bit.
    S8 = 0,
    /// Unsigned 8 bit (offset 128).
    U8 = 1,
    /// Signed 16 bit little-endian.
    S16Le = 2,
    /// Signed 16 bit big-endian.
    S16Be = 3,
    /// Unsigned 16 bit little-endian.
    U16Le = 4,
    /// Unsigned 16 bit big-endian.
    U16Be = 5,
    /// Signed 24 bit in 4 bytes, little-endian.
    S24Le = 6,
    /// Signed 24 bit in 4 bytes, big-endian.
    S24Be = 7,
    /// Unsigned 24 bit in 4 bytes, little-endian.
    U24Le = 8,
    /// Unsigned 24 bit in 4 bytes, big-endian.
    U24Be = 9,
    /// Signed 32 bit little-endian.
    S32Le = 10,
    /// Signed 32 bit big-endian.
    S32Be = 11,
    /// Unsigned 32 bit little-endian.
    U32Le = 12,
    /// Unsigned 32 bit big-endian.
    U32Be = 13,
    /// IEEE-754 single, little-endian, `[-1, 1]`.
    F32Le = 14,
    /// IEEE-754 single, big-endian.
    F32Be = 15,
    /// IEEE-754 double, little-endian.
    F64Le = 16,
    /// IEEE-754 double, big-endian.
    F64Be = 17,
}

/// Every supported format, by code.
pub const ALL_FORMATS: [SampleFormat; 18] = {
    use SampleFormat::*;
    [
        S8, U8, S16Le, S16Be, U16Le, U16Be, S24Le, S24Be, U24Le, U24Be, S32Le, S32Be, U32Le, U32Be,
        F32Le, F32Be, F64Le, F64Be,
    ]
};

/// Bit mask (bit n = sndif format code n) of every format this crate converts.
pub const SUPPORTED_MASK: u64 = (1 << 18) - 1;

impl SampleFormat {
    /// The format of an `XENSND_PCM_FORMAT_*` code, if this crate converts it.
    pub fn from_sndif(code: u8) -> Result<Self, Error> {
        ALL_FORMATS
            .get(code as usize)
            .copied()
            .ok_or(Error::UnsupportedFormat)
    }

    /// The `XENSND_PCM_FORMAT_*` code.
    pub fn sndif_code(self) -> u8 {
        self as u8
    }

    /// Bytes per sample.
    pub fn bytes(self) -> usize {
        use SampleFormat::*;
        match self {
            S8 | U8 => 1,
            S16Le | S16Be | U16Le | U16Be => 2,
            F64Le | F64Be => 8,
            _ => 4,
        }
    }

    fn big_endian(self) -> bool {
        (self as u8) & 1 == 1 && self as u8 >= 3
    }

    fn is_float(self) -> bool {
        self as u8 >= 14
    }

    /// Reads one sample's container as an unsigned integer (host order).
    #[inline]
    fn load(self, b: &[u8]) -> u64 {
        let n = self.bytes();
        let mut v = 0u64;
        if self.big_endian() {
            for &x in &b[..n] {
                v = (v << 8) | x as u64;
            }
        } else {
            for &x in b[..n].iter().rev() {
                v = (v << 8) | x as u64;
            }
        }
        v
    }

    #[inline]
    fn store(self, v: u64, b: &mut [u8]) {
        let n = self.bytes();
        if self.big_endian() {
            for (i, x) in b[..n].iter_mut().enumerate() {
                *x = (v >> (8 * (n - 1 - i))) as u8;
            }
        } else {
            for (i, x) in b[..n].iter_mut().enumerate() {
                *x = (v >> (8 * i)) as u8;
            }
        }
    }

    /// One integer sample as Q31 (floats are clamped and scaled).
    #[inline]
    fn to_q31(self, raw: u64) -> i32 {
        use SampleFormat::*;
        match self {
            S8 => ((raw as u8 as i8) as i32) << 24,
            U8 => ((raw as u8 ^ 0x80) as i8 as i32) << 24,
            S16Le | S16Be => ((raw as u16 as i16) as i32) << 16,
            U16Le | U16Be => ((raw as u16 ^ 0x8000) as i16 as i32) << 16,
            S24Le | S24Be => ((raw as u32) << 8) as i32,
            U24Le | U24Be => (((raw as u32) ^ 0x80_0000) << 8) as i32,
            S32Le | S32Be => raw as u32 as i32,
            U32Le | U32Be => (raw as u32 ^ 0x8000_0000) as i32,
            F32Le | F32Be | F64Le | F64Be => f32_to_q31(self.float(raw)),
        }
    }

    #[inline]
    fn float(self, raw: u64) -> f32 {
        let x = match self {
            SampleFormat::F32Le | SampleFormat::F32Be => f32::from_bits(raw as u32),
            _ => f64::from_bits(raw) as f32,
        };
        sanitize(x)
    }

    #[inline]
    fn q31_to_raw(self, q: i32) -> u64 {
        use SampleFormat::*;
        let round = |shift: u32| -> i32 {
            // Round to nearest, saturating at the top.
            let half = 1i64 << (shift - 1);
            let r = ((q as i64 + half) >> shift).min((1i64 << (31 - shift)) - 1);
            r as i32
        };
        match self {
            S8 => round(24) as u8 as u64,
            U8 => (round(24) as u8 ^ 0x80) as u64,
            S16Le | S16Be => round(16) as u16 as u64,
            U16Le | U16Be => (round(16) as u16 ^ 0x8000) as u64,
            S24Le | S24Be => round(8) as u32 as u64,
            U24Le | U24Be => ((round(8) as u32 ^ 0x80_0000) & 0xFF_FFFF) as u64,
            S32Le | S32Be => q as u32 as u64,
            U32Le | U32Be => (q as u32 ^ 0x8000_0000) as u64,
            F32Le | F32Be => (q as f32 * Q31_TO_F).to_bits() as u64,
            F64Le | F64Be => (q as f64 / 2_147_483_648.0).to_bits(),
        }
    }

    #[inline]
    fn f32_to_raw(self, x: f32) -> u64 {
        use SampleFormat::*;
        let x = sanitize(x);
        let scaled = |s: f32, max: i32| -> i32 {
            let y = x * s;
            let r = if y >= 0.0 { y + 0.5 } else { y - 0.5 };
            (r as i32).clamp(-max - 1, max)
        };
        match self {
            S8 => scaled(128.0, 127) as u8 as u64,
            U8 => (scaled(128.0, 127) as u8 ^ 0x80) as u64,
            S16Le | S16Be => scaled(32768.0, 32767) as u16 as u64,
            U16Le | U16Be => (scaled(32768.0, 32767) as u16 ^ 0x8000) as u64,
            S24Le | S24Be => scaled(8_388_608.0, 8_388_607) as u32 as u64,
            U24Le | U24Be => {
                ((scaled(8_388_608.0, 8_388_607) as u32 ^ 0x80_0000) & 0xFF_FFFF) as u64
            }
            S32Le | S32Be => f32_to_q31(x) as u32 as u64,
            U32Le | U32Be => (f32_to_q31(x) as u32 ^ 0x8000_0000) as u64,
            F32Le | F32Be => x.to_bits() as u64,
            F64Le | F64Be => (x as f64).to_bits(),
        }
    }
}

const Q31_TO_F: f32 = 1.0 / 2_147_483_648.0;

/// NaN and infinities become 0; finite values are clamped to `[-1, 1]`.
#[inline]
pub fn sanitize(x: f32) -> f32 {
    if x.is_finite() {
        x.clamp(-1.0, 1.0)
    } else {
        0.0
    }
}

/// Q31 to `f32`.
#[inline]
pub fn q31_to_f32(q: i32) -> f32 {
    q as f32 * Q31_TO_F
}

/// `f32` (sanitised) to Q31, rounded, saturating.
#[inline]
pub fn f32_to_q31(x: f32) -> i32 {
    // `as` saturates: 1.0 * 2^31 becomes i32::MAX.
    let y = sanitize(x) as f64 * 2_147_483_648.0;
    let r = if y >= 0.0 { y + 0.5 } else { y - 0.5 };
    r as i32
}

fn check(bytes: usize, fmt: SampleFormat, samples: usize) -> Result<(), Error> {
    if bytes != samples * fmt.bytes() {
        return Err(Error::Length);
    }
    Ok(())
}

/// Decodes `bytes` (exactly `out.len()` samples of `fmt`) into `f32` (float path).
pub fn decode_f32(fmt: SampleFormat, bytes: &[u8], out: &mut [f32]) -> Result<(), Error> {
    check(bytes.len(), fmt, out.len())?;
    let n = fmt.bytes();
    match fmt {
        // The common formats get their own loops (no per-sample dispatch).
        SampleFormat::S16Le => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = i16::from_le_bytes([b[0], b[1]]) as f32 * (1.0 / 32768.0);
            }
        }
        SampleFormat::F32Le => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = sanitize(f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            }
        }
        _ if fmt.is_float() => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(n)) {
                *o = fmt.float(fmt.load(b));
            }
        }
        _ => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(n)) {
                *o = fmt.to_q31(fmt.load(b)) as f32 * Q31_TO_F;
            }
        }
    }
    Ok(())
}

/// Encodes `input` into `out` (exactly `input.len()` samples of `fmt`), saturating and
/// rounding to nearest (float path).
pub fn encode_f32(fmt: SampleFormat, input: &[f32], out: &mut [u8]) -> Result<(), Error> {
    check(out.len(), fmt, input.len())?;
    let n = fmt.bytes();
    match fmt {
        SampleFormat::S16Le => {
            for (x, b) in input.iter().zip(out.chunks_exact_mut(2)) {
                let y = sanitize(*x) * 32768.0;
                let r = if y >= 0.0 { y + 0.5 } else { y - 0.5 };
                b.copy_from_slice(&((r as i32).clamp(-32768, 32767) as i16).to_le_bytes());
            }
        }
        _ => {
            for (x, b) in input.iter().zip(out.chunks_exact_mut(n)) {
                fmt.store(fmt.f32_to_raw(*x), b);
            }
        }
    }
    Ok(())
}

/// Decodes into Q31 integers (integer path; floats are clamped and scaled).
pub fn decode_q31(fmt: SampleFormat, bytes: &[u8], out: &mut [i32]) -> Result<(), Error> {
    check(bytes.len(), fmt, out.len())?;
    for (o, b) in out.iter_mut().zip(bytes.chunks_exact(fmt.bytes())) {
        *o = fmt.to_q31(fmt.load(b));
    }
    Ok(())
}

/// Encodes Q31 integers (integer path: exact when the target is at least as wide as the
/// source; otherwise rounded to nearest, saturating).
pub fn encode_q31(fmt: SampleFormat, input: &[i32], out: &mut [u8]) -> Result<(), Error> {
    check(out.len(), fmt, input.len())?;
    for (q, b) in input.iter().zip(out.chunks_exact_mut(fmt.bytes())) {
        fmt.store(fmt.q31_to_raw(*q), b);
    }
    Ok(())
}

/// Converts between two formats directly (integer path when both are integer formats, float
/// path otherwise); `input` must hold whole samples. Returns the number of samples.
pub fn convert(
    from: SampleFormat,
    input: &[u8],
    to: SampleFormat,
    out: &mut [u8],
) -> Result<usize, Error> {
    if !input.len().is_multiple_of(from.bytes()) {
        return Err(Error::Length);
    }
    let samples = input.len() / from.bytes();
    check(out.len(), to, samples)?;
    let ib = input.chunks_exact(from.bytes());
    let ob = out.chunks_exact_mut(to.bytes());
    if from.is_float() || to.is_float() {
        for (i, o) in ib.zip(ob) {
            let x = if from.is_float() {
                from.float(from.load(i))
            } else {
                from.to_q31(from.load(i)) as f32 * Q31_TO_F
            };
            to.store(to.f32_to_raw(x), o);
        }
    } else {
        for (i, o) in ib.zip(ob) {
            to.store(to.q31_to_raw(from.to_q31(from.load(i))), o);
        }
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    #[test]
    fn codes_and_sizes() {
        for (i, f) in ALL_FORMATS.iter().enumerate() {
            assert_eq!(f.sndif_code() as usize, i);
            assert_eq!(SampleFormat::from_sndif(i as u8), Ok(*f));
        }
        assert_eq!(SampleFormat::from_sndif(20), Err(Error::UnsupportedFormat));
        assert!(SampleFormat::S16Be.big_endian());
        assert!(!SampleFormat::S16Le.big_endian());
        assert!(!SampleFormat::U8.big_endian());
        assert!(!SampleFormat::S8.big_endian());
        assert!(SampleFormat::F64Be.big_endian());
    }

    #[test]
    fn known_values() {
        let mut b = [0u8; 2];
        encode_f32(SampleFormat::S16Le, &[0.5], &mut b).unwrap();
        assert_eq!(i16::from_le_bytes(b), 16384);
        encode_f32(SampleFormat::S16Be, &[-1.0], &mut b).unwrap();
        assert_eq!(i16::from_be_bytes(b), -32768);
        encode_f32(SampleFormat::S16Le, &[2.0], &mut b).unwrap();
        assert_eq!(i16::from_le_bytes(b), 32767, "saturates");
        let mut u = [0u8; 1];
        encode_f32(SampleFormat::U8, &[0.0], &mut u).unwrap();
        assert_eq!(u[0], 128);
        encode_f32(SampleFormat::U8, &[-1.0], &mut u).unwrap();
        assert_eq!(u[0], 0);
        let mut f = [0.0f32; 1];
        decode_f32(SampleFormat::U8, &[255], &mut f).unwrap();
        assert_eq!(f[0], 127.0 / 128.0);
        let mut b4 = [0u8; 4];
        encode_f32(SampleFormat::S24Le, &[-0.5], &mut b4).unwrap();
        assert_eq!(b4, [0, 0, 0xC0, 0xFF]);
        decode_f32(SampleFormat::S24Le, &[0, 0, 0x40, 0x7F], &mut f).unwrap();
        assert_eq!(f[0], 0.5, "container top byte ignored");
        encode_f32(SampleFormat::S32Le, &[1.0], &mut b4).unwrap();
        assert_eq!(i32::from_le_bytes(b4), i32::MAX);
        // Hostile floats.
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            decode_f32(SampleFormat::F32Le, &bad.to_le_bytes(), &mut f).unwrap();
            assert_eq!(f[0], 0.0);
        }
        decode_f32(SampleFormat::F32Be, &7.0f32.to_be_bytes(), &mut f).unwrap();
        assert_eq!(f[0], 1.0);
        decode_f32(SampleFormat::F64Le, &(-0.25f64).to_le_bytes(), &mut f).unwrap();
        assert_eq!(f[0], -0.25);
        assert_eq!(
            decode_f32(SampleFormat::S16Le, &[0; 3], &mut [0.0; 1]),
            Err(Error::Length)
        );
    }

    #[test]
    fn integer_path_is_lossless_when_widening() {
        let s16: Vec<i16> = (-32768..=32767).step_by(7).collect();
        let bytes: Vec<u8> = s16.iter().flat_map(|v| v.to_le_bytes()).collect();
        for mid in [
            SampleFormat::S32Le,
            SampleFormat::S24Be,
            SampleFormat::U32Be,
            SampleFormat::U16Le,
            SampleFormat::F32Le,
        ] {
            let mut m = vec![0u8; s16.len() * mid.bytes()];
            convert(SampleFormat::S16Le, &bytes, mid, &mut m).unwrap();
            let mut back = vec![0u8; bytes.len()];
            convert(mid, &m, SampleFormat::S16Le, &mut back).unwrap();
            assert_eq!(back, bytes, "s16 -> {mid:?} -> s16");
        }
        // Narrowing rounds to nearest and saturates.
        let q = [
            0x7FFF_FFFF,
            0x0000_8000,
            0x0000_7FFF,
            -0x0000_8000,
            i32::MIN,
        ];
        let mut out = [0u8; 10];
        encode_q31(SampleFormat::S16Le, &q, &mut out).unwrap();
        let got: Vec<i16> = out
            .chunks(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(got, [32767, 1, 0, 0, -32768]);
    }

    #[test]
    fn float_round_trip_every_format() {
        let xs: Vec<f32> = (0..200).map(|i| (i as f32 / 100.0) - 1.0).collect();
        for f in ALL_FORMATS {
            let mut b = vec![0u8; xs.len() * f.bytes()];
            encode_f32(f, &xs, &mut b).unwrap();
            let mut y = vec![0.0f32; xs.len()];
            decode_f32(f, &b, &mut y).unwrap();
            let lsb = match f.bytes() {
                1 => 1.0 / 128.0,
                2 => 1.0 / 32768.0,
                _ => 1e-6,
            };
            for (a, b) in xs.iter().zip(&y) {
                assert!((a - b).abs() <= lsb, "{f:?}: {a} -> {b}");
            }
        }
    }
}
