//! Key/value plumbing: sources, sinks, strict value parsers and allocation-free formatting.

use crate::Error;

/// Where key values come from: a snapshot of a xenbus device directory (xenstore) or of the
/// QEMU channel's control page. Keys are relative names such as `iconnect-qos-class`.
pub trait KeySource {
    /// The value of `key`, if present.
    fn get(&self, key: &str) -> Option<&str>;
}

/// Where an answer goes: a backend device directory (xenstore) or the control page.
pub trait KeySink {
    /// Sets `key` to `value`; [`Error::Sink`] if it cannot be stored.
    fn set(&mut self, key: &str, value: &str) -> Result<(), Error>;
}

impl<S: KeySource + ?Sized> KeySource for &S {
    fn get(&self, key: &str) -> Option<&str> {
        (**self).get(key)
    }
}

/// A source over a slice of `(key, value)` pairs (tests, fuzzing, and simple callers); the first
/// match wins.
#[derive(Debug, Clone, Copy)]
pub struct PairSource<'a>(pub &'a [(&'a str, &'a str)]);

impl KeySource for PairSource<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }
}

/// A source parsed from text of `key=value` lines (the first `=` splits; lines without one are
/// ignored); holds up to `N` pairs, further lines are ignored.
#[derive(Debug, Clone, Copy)]
pub struct LineSource<'a, const N: usize> {
    pairs: [(&'a str, &'a str); N],
    len: usize,
}

impl<'a, const N: usize> LineSource<'a, N> {
    /// Splits `text` into pairs.
    pub fn new(text: &'a str) -> Self {
        let mut pairs = [("", ""); N];
        let mut len = 0;
        for line in text.split('\n') {
            if len == N {
                break;
            }
            if let Some((k, v)) = line.split_once('=') {
                pairs[len] = (k, v);
                len += 1;
            }
        }
        Self { pairs, len }
    }
}

impl<const N: usize> KeySource for LineSource<'_, N> {
    fn get(&self, key: &str) -> Option<&str> {
        self.pairs[..self.len]
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
    }
}

/// A fixed-capacity sink storing up to `N` pairs of at most `L` bytes each (tests, fuzzing,
/// round-trips); also a [`KeySource`] over what was written (the last write of a key wins).
#[derive(Debug, Clone)]
pub struct ArraySink<const N: usize, const L: usize> {
    keys: [([u8; L], usize); N],
    vals: [([u8; L], usize); N],
    len: usize,
}

impl<const N: usize, const L: usize> Default for ArraySink<N, L> {
    fn default() -> Self {
        Self {
            keys: [([0; L], 0); N],
            vals: [([0; L], 0); N],
            len: 0,
        }
    }
}

impl<const N: usize, const L: usize> ArraySink<N, L> {
    /// Number of stored pairs.
    pub fn len(&self) -> usize {
        self.len
    }
    /// No pairs stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    fn text(e: &([u8; L], usize)) -> &str {
        core::str::from_utf8(&e.0[..e.1]).unwrap_or("")
    }
    /// The stored pairs, in write order.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.keys[..self.len]
            .iter()
            .zip(&self.vals[..self.len])
            .map(|(k, v)| (Self::text(k), Self::text(v)))
    }
}

impl<const N: usize, const L: usize> KeySink for ArraySink<N, L> {
    fn set(&mut self, key: &str, value: &str) -> Result<(), Error> {
        if key.len() > L || value.len() > L {
            return Err(Error::Sink);
        }
        let idx = match self.keys[..self.len]
            .iter()
            .position(|k| Self::text(k) == key)
        {
            Some(i) => i,
            None if self.len < N => {
                self.len += 1;
                self.len - 1
            }
            None => return Err(Error::Sink),
        };
        self.keys[idx].0[..key.len()].copy_from_slice(key.as_bytes());
        self.keys[idx].1 = key.len();
        self.vals[idx].0[..value.len()].copy_from_slice(value.as_bytes());
        self.vals[idx].1 = value.len();
        Ok(())
    }
}

impl<const N: usize, const L: usize> KeySource for ArraySink<N, L> {
    fn get(&self, key: &str) -> Option<&str> {
        self.pairs().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
}

/// Strict unsigned decimal: ASCII digits only, no sign/space, no leading zero unless the value is
/// exactly `0`, no overflow.
pub fn parse_u64(key: &'static str, v: &str) -> Result<u64, Error> {
    let b = v.as_bytes();
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) || (b.len() > 1 && b[0] == b'0') {
        return Err(Error::NotANumber { key });
    }
    let mut n: u64 = 0;
    for &d in b {
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add((d - b'0') as u64))
            .ok_or(Error::OutOfRange { key })?;
    }
    Ok(n)
}

/// [`parse_u64`] restricted to `min..=max`.
pub fn parse_in_range(key: &'static str, v: &str, min: u64, max: u64) -> Result<u64, Error> {
    let n = parse_u64(key, v)?;
    if n < min || n > max {
        return Err(Error::OutOfRange { key });
    }
    Ok(n)
}

/// `0` or `1`.
pub fn parse_bool(key: &'static str, v: &str) -> Result<bool, Error> {
    match v {
        "0" => Ok(false),
        "1" => Ok(true),
        _ => Err(Error::BadToken { key }),
    }
}

/// Decimal formatting without allocation.
#[derive(Debug, Clone, Copy)]
pub struct Decimal {
    buf: [u8; 20],
    start: usize,
}

impl Decimal {
    /// Formats `n`.
    pub fn new(mut n: u64) -> Self {
        let mut buf = [0u8; 20];
        let mut i = buf.len();
        loop {
            i -= 1;
            buf[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        Self { buf, start: i }
    }
    /// The digits.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits were written.
        core::str::from_utf8(&self.buf[self.start..]).unwrap_or("0")
    }
}

/// Writes a number.
pub fn set_u64<S: KeySink + ?Sized>(sink: &mut S, key: &str, n: u64) -> Result<(), Error> {
    sink.set(key, Decimal::new(n).as_str())
}

/// Every key this crate defines (used to validate `iconnect-*-error-key` answers).
pub const ALL_KEYS: &[&str] = &[
    crate::qos::GUARANTEED,
    crate::qos::CEILING,
    crate::qos::BURST,
    crate::qos::CLASS,
    crate::qos::XEN_RATE,
    crate::storage::VOLUME,
    crate::storage::DURABLE_FLUSH,
    crate::media::DIRECTION,
    crate::media::FORMAT,
    crate::media::RATE,
    crate::media::CHANNELS,
    crate::media::CLASS,
];

/// The `'static` name of a known key.
pub fn known_key(k: &str) -> Option<&'static str> {
    ALL_KEYS.iter().copied().find(|x| *x == k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_numbers() {
        assert_eq!(parse_u64("k", "0"), Ok(0));
        assert_eq!(parse_u64("k", "18446744073709551615"), Ok(u64::MAX));
        assert_eq!(
            parse_u64("k", "18446744073709551616"),
            Err(Error::OutOfRange { key: "k" })
        );
        for bad in [
            "", "01", "+1", "-1", " 1", "1 ", "1e3", "0x10", "1_000", "١",
        ] {
            assert_eq!(
                parse_u64("k", bad),
                Err(Error::NotANumber { key: "k" }),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse_in_range("k", "5", 1, 4),
            Err(Error::OutOfRange { key: "k" })
        );
        assert_eq!(parse_bool("k", "1"), Ok(true));
        assert_eq!(parse_bool("k", "true"), Err(Error::BadToken { key: "k" }));
        for n in [0u64, 7, 10, 1_000_000_007, u64::MAX] {
            assert_eq!(parse_u64("k", Decimal::new(n).as_str()), Ok(n));
        }
    }

    #[test]
    fn sinks_and_sources() {
        let mut s = ArraySink::<2, 8>::default();
        s.set("a", "1").unwrap();
        s.set("a", "2").unwrap();
        s.set("b", "3").unwrap();
        assert_eq!(s.set("c", "4"), Err(Error::Sink));
        assert_eq!(s.set("a", "123456789"), Err(Error::Sink));
        assert_eq!(s.get("a"), Some("2"));
        let l = LineSource::<4>::new("x=1\nnoequals\ny=a=b\n");
        assert_eq!(l.get("x"), Some("1"));
        assert_eq!(l.get("y"), Some("a=b"));
        assert_eq!(l.get("noequals"), None);
    }
}
