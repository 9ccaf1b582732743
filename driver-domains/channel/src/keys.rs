//! Key areas: the xenbus-like keys of each end, length-prefixed records in the control page,
//! published under a seqlock and parsed strictly from a private copy.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use xen_abi::shmem::SharedMem;

use crate::Error;
use crate::layout::{Side, off};

/// Longest key.
pub const MAX_KEY_LEN: usize = 64;
/// Longest value.
pub const MAX_VALUE_LEN: usize = 255;
/// Most records in one key area.
pub const MAX_KEYS: usize = 64;
/// Bytes of one key area.
pub const AREA_BYTES: usize = off::KEY_AREA;
/// Read attempts before a key area that keeps changing is reported as [`Error::KeysBusy`].
pub const READ_ATTEMPTS: usize = 8;

fn key_ok(k: &str) -> bool {
    (1..=MAX_KEY_LEN).contains(&k.len())
        && k.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

fn value_ok(v: &str) -> bool {
    v.len() <= MAX_VALUE_LEN && v.bytes().all(|c| (0x20..=0x7e).contains(&c))
}

/// One end's keys: a private, validated map (sorted by key). Implements
/// [`iconnect::KeySource`] and [`iconnect::KeySink`], so the `iconnect` parsers and writers
/// work on it directly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyMap {
    map: BTreeMap<String, String>,
    encoded: usize,
}

impl KeyMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// No keys.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes the map takes in a key area.
    pub fn encoded_len(&self) -> usize {
        self.encoded
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.map.get(key).map(String::as_str)
    }

    /// Sets `key` (checked against the key rules and the area size); [`Error::KeyRejected`]
    /// leaves the map unchanged.
    pub fn insert(&mut self, key: &str, value: &str) -> Result<(), Error> {
        if !key_ok(key) || !value_ok(value) {
            return Err(Error::KeyRejected);
        }
        let old = self.map.get(key).map_or(0, |v| 2 + key.len() + v.len());
        let new = self.encoded - old + 2 + key.len() + value.len();
        if new > AREA_BYTES || (old == 0 && self.map.len() == MAX_KEYS) {
            return Err(Error::KeyRejected);
        }
        self.map.insert(key.into(), value.into());
        self.encoded = new;
        Ok(())
    }

    /// Removes `key`; whether it was present.
    pub fn remove(&mut self, key: &str) -> bool {
        match self.map.remove(key) {
            Some(v) => {
                self.encoded -= 2 + key.len() + v.len();
                true
            }
            None => false,
        }
    }

    /// Every pair, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.map.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The records, sorted by key.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(self.encoded);
        for (k, v) in &self.map {
            b.push(k.len() as u8);
            b.push(v.len() as u8);
            b.extend_from_slice(k.as_bytes());
            b.extend_from_slice(v.as_bytes());
        }
        b
    }

    /// Strictly parses a key area's used bytes: every record complete and valid, no duplicate,
    /// at most [`MAX_KEYS`] records, nothing left over. Any violation is [`Error::BadKeys`].
    pub fn parse(mut b: &[u8]) -> Result<Self, Error> {
        if b.len() > AREA_BYTES {
            return Err(Error::BadKeys);
        }
        let mut m = Self::new();
        while !b.is_empty() {
            let [kl, vl, rest @ ..] = b else {
                return Err(Error::BadKeys);
            };
            let (kl, vl) = (*kl as usize, *vl as usize);
            if rest.len() < kl + vl || m.map.len() == MAX_KEYS {
                return Err(Error::BadKeys);
            }
            let k = core::str::from_utf8(&rest[..kl]).map_err(|_| Error::BadKeys)?;
            let v = core::str::from_utf8(&rest[kl..kl + vl]).map_err(|_| Error::BadKeys)?;
            if !key_ok(k) || !value_ok(v) || m.map.contains_key(k) {
                return Err(Error::BadKeys);
            }
            m.map.insert(k.into(), v.into());
            m.encoded += 2 + kl + vl;
            b = &rest[kl + vl..];
        }
        Ok(m)
    }

    /// Publishes the map into `side`'s key area under its seqlock.
    pub fn publish<M: SharedMem>(&self, mem: &M, side: Side) {
        let blk = side.block();
        let seq_off = blk + off::end::KEYS_SEQ;
        let seq = mem.load_u32(seq_off, Ordering::Relaxed);
        // Our own field, but a hostile peer may have written it: make sure it goes odd.
        let odd = seq.wrapping_add(1) | 1;
        mem.store_u32(seq_off, odd, Ordering::SeqCst);
        mem.full_fence();
        let bytes = self.encode();
        mem.write_bytes(side.key_area(), &bytes);
        mem.store_u32(
            blk + off::end::KEYS_LEN,
            bytes.len() as u32,
            Ordering::Relaxed,
        );
        mem.store_u32(seq_off, odd.wrapping_add(1), Ordering::Release);
    }

    /// Reads `side`'s key area: a consistent snapshot (seqlock), then [`parse`](Self::parse).
    /// Returns the map and the sequence number it was read at.
    pub fn read<M: SharedMem>(mem: &M, side: Side) -> Result<(Self, u32), Error> {
        let blk = side.block();
        let mut buf = [0u8; AREA_BYTES];
        for _ in 0..READ_ATTEMPTS {
            let s1 = mem.load_u32(blk + off::end::KEYS_SEQ, Ordering::Acquire);
            if s1 & 1 == 1 {
                core::hint::spin_loop();
                continue;
            }
            let len = mem.load_u32(blk + off::end::KEYS_LEN, Ordering::Relaxed) as usize;
            if len > AREA_BYTES {
                // Checked before the copy: never read beyond the key area.
                return Err(Error::BadKeys);
            }
            mem.read_bytes(side.key_area(), &mut buf[..len]);
            mem.full_fence();
            let s2 = mem.load_u32(blk + off::end::KEYS_SEQ, Ordering::Relaxed);
            if s1 == s2 {
                return Ok((Self::parse(&buf[..len])?, s1));
            }
        }
        Err(Error::KeysBusy)
    }

    /// The current sequence number of `side`'s key area (to notice changes).
    pub fn seq<M: SharedMem>(mem: &M, side: Side) -> u32 {
        mem.load_u32(side.block() + off::end::KEYS_SEQ, Ordering::Acquire)
    }
}

impl iconnect::KeySource for KeyMap {
    fn get(&self, key: &str) -> Option<&str> {
        KeyMap::get(self, key)
    }
}

impl iconnect::KeySink for KeyMap {
    fn set(&mut self, key: &str, value: &str) -> Result<(), iconnect::Error> {
        self.insert(key, value).map_err(|_| iconnect::Error::Sink)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xen_abi::shmem::HostMem;

    #[test]
    fn encode_parse_round_trip() {
        let mut m = KeyMap::new();
        m.insert("mac", "00:16:3e:00:00:01").unwrap();
        m.insert("feature-rx-copy", "1").unwrap();
        m.insert("empty", "").unwrap();
        m.insert("mac", "00:16:3e:00:00:02").unwrap();
        assert_eq!(m.len(), 3);
        let b = m.encode();
        assert_eq!(b.len(), m.encoded_len());
        let p = KeyMap::parse(&b).unwrap();
        assert_eq!(p, m);
        assert_eq!(p.get("mac"), Some("00:16:3e:00:00:02"));
        assert!(m.remove("empty"));
        assert_eq!(m.encode().len(), m.encoded_len());
    }

    #[test]
    fn writer_rules() {
        let mut m = KeyMap::new();
        for (k, v) in [
            ("", "x"),
            ("a/b", "x"),
            ("a b", "x"),
            ("k", "\n"),
            ("k", "é"),
        ] {
            assert_eq!(m.insert(k, v), Err(Error::KeyRejected), "{k:?}={v:?}");
        }
        let long = "x".repeat(65);
        assert_eq!(m.insert(&long, "v"), Err(Error::KeyRejected));
        assert_eq!(m.insert("k", &"v".repeat(256)), Err(Error::KeyRejected));
        // Fill the area: 6 keys of 2 + 4 + 255 bytes = 1566; a seventh does not fit.
        for i in 0..6 {
            m.insert(&alloc::format!("k{i:03}"), &"v".repeat(255))
                .unwrap();
        }
        assert_eq!(m.insert("k006", &"v".repeat(255)), Err(Error::KeyRejected));
        assert_eq!(m.len(), 6);
        let mut m = KeyMap::new();
        for i in 0..MAX_KEYS {
            m.insert(&alloc::format!("{i}"), "").unwrap();
        }
        assert_eq!(m.insert("x", ""), Err(Error::KeyRejected));
        m.insert("0", "still fine: replaces").unwrap();
    }

    #[test]
    fn strict_parser() {
        let ok = [3u8, 1, b'a', b'b', b'c', b'1'];
        assert!(KeyMap::parse(&ok).is_ok());
        let bad: &[&[u8]] = &[
            &[3],                                  // truncated header
            &[3, 1, b'a', b'b'],                   // truncated record
            &[0, 1, b'1'],                         // empty key
            &[1, 1, b'/', b'1'],                   // bad key char
            &[1, 1, b'a', 0],                      // control char in value
            &[1, 1, b'a', 0xff],                   // not UTF-8
            &[1, 0, b'a', 1, 0, b'a'],             // duplicate
            &[3, 1, b'a', b'b', b'c', b'1', 0xaa], // trailing garbage
        ];
        for b in bad {
            assert_eq!(KeyMap::parse(b), Err(Error::BadKeys), "{b:?}");
        }
        assert_eq!(KeyMap::parse(&[0u8; AREA_BYTES + 1]), Err(Error::BadKeys));
    }

    #[test]
    fn publish_read_and_hostile_lengths() {
        let mem = HostMem::pages(1);
        let mut m = KeyMap::new();
        m.insert("iconnect-qos-class", "realtime").unwrap();
        m.publish(&mem, Side::Frontend);
        let (r, seq) = KeyMap::read(&mem, Side::Frontend).unwrap();
        assert_eq!(r, m);
        assert_eq!(seq % 2, 0);
        assert_eq!(KeyMap::read(&mem, Side::Backend).unwrap().0, KeyMap::new());
        m.publish(&mem, Side::Frontend);
        assert_eq!(KeyMap::seq(&mem, Side::Frontend), seq + 2);
        let blk = Side::Frontend.block();
        mem.store_u32(
            blk + off::end::KEYS_LEN,
            AREA_BYTES as u32 + 1,
            Ordering::Relaxed,
        );
        assert_eq!(KeyMap::read(&mem, Side::Frontend), Err(Error::BadKeys));
        mem.store_u32(blk + off::end::KEYS_LEN, u32::MAX, Ordering::Relaxed);
        assert_eq!(KeyMap::read(&mem, Side::Frontend), Err(Error::BadKeys));
        mem.store_u32(blk + off::end::KEYS_SEQ, 7, Ordering::Relaxed);
        assert_eq!(KeyMap::read(&mem, Side::Frontend), Err(Error::KeysBusy));
        // A publisher recovers from an odd sequence left by someone else.
        m.publish(&mem, Side::Frontend);
        assert_eq!(KeyMap::read(&mem, Side::Frontend).unwrap().0, m);
    }
}
