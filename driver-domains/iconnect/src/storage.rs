//! Storage: which volume a VM wants behind a block device, and whether flushes must be durable.
//! The VM names a volume, never a location; the platform maps names to local or remote storage.

use crate::keys::{self, KeySink, KeySource};
use crate::{AnswerKeys, Decision, Error};

/// Volume name.
pub const VOLUME: &str = "iconnect-storage-volume";
/// Durability of flushes (`0`/`1`).
pub const DURABLE_FLUSH: &str = "iconnect-storage-durable-flush";
/// Answer keys.
pub const ANSWER: AnswerKeys = AnswerKeys {
    status: "iconnect-storage-status",
    reason: "iconnect-storage-reason",
    error_key: "iconnect-storage-error-key",
};
/// Granted durability.
pub const GRANTED_DURABLE_FLUSH: &str = "iconnect-storage-granted-durable-flush";
/// Longest volume name.
pub const MAX_VOLUME_LEN: usize = 64;

/// A validated volume name: 1–64 bytes of `[a-z0-9._-]`, first one alphanumeric (so no `..`
/// path component, no `/`, no scheme or host).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VolumeName {
    buf: [u8; MAX_VOLUME_LEN],
    len: u8,
}

impl VolumeName {
    /// Validates a name.
    pub fn parse(key: &'static str, v: &str) -> Result<Self, Error> {
        let b = v.as_bytes();
        let ok_char = |c: &u8| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        };
        if b.is_empty()
            || b.len() > MAX_VOLUME_LEN
            || !b.iter().all(ok_char)
            || !(b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        {
            return Err(Error::BadName { key });
        }
        let mut buf = [0u8; MAX_VOLUME_LEN];
        buf[..b.len()].copy_from_slice(b);
        Ok(Self {
            buf,
            len: b.len() as u8,
        })
    }
    /// The name.
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len as usize]).unwrap_or("")
    }
}

/// A VM's storage request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StorageRequest {
    /// The volume.
    pub volume: VolumeName,
    /// Flushes must reach stable storage before they complete (default `false`).
    pub durable_flush: bool,
}

impl StorageRequest {
    /// Reads the request; `Ok(None)` if no `iconnect-storage-*` key is present; the volume is
    /// required once any storage key is.
    pub fn from_keys<S: KeySource + ?Sized>(src: &S) -> Result<Option<Self>, Error> {
        let (v, d) = (src.get(VOLUME), src.get(DURABLE_FLUSH));
        if v.is_none() && d.is_none() {
            return Ok(None);
        }
        let volume = VolumeName::parse(VOLUME, v.ok_or(Error::Missing { key: VOLUME })?)?;
        let durable_flush = d
            .map(|x| keys::parse_bool(DURABLE_FLUSH, x))
            .transpose()?
            .unwrap_or(false);
        Ok(Some(Self {
            volume,
            durable_flush,
        }))
    }

    /// Writes the request (frontend side).
    pub fn write<S: KeySink + ?Sized>(&self, sink: &mut S) -> Result<(), Error> {
        sink.set(VOLUME, self.volume.as_str())?;
        sink.set(DURABLE_FLUSH, if self.durable_flush { "1" } else { "0" })
    }
}

/// What the backend granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StorageGrant {
    /// Flushes are durable.
    pub durable_flush: bool,
}

/// Writes a storage decision.
pub fn write_decision<S: KeySink + ?Sized>(
    d: &Decision<StorageGrant>,
    sink: &mut S,
) -> Result<(), Error> {
    crate::write_decision_head(d, &ANSWER, sink)?;
    if let Decision::Granted(g) = d {
        sink.set(
            GRANTED_DURABLE_FLUSH,
            if g.durable_flush { "1" } else { "0" },
        )?;
    }
    Ok(())
}

/// Reads a storage decision (`Ok(None)`: not answered yet).
pub fn read_decision<S: KeySource + ?Sized>(
    src: &S,
) -> Result<Option<Decision<StorageGrant>>, Error> {
    let Some(head) = crate::read_decision_head(&ANSWER, src)? else {
        return Ok(None);
    };
    if let Some((reason, error_key)) = head {
        return Ok(Some(Decision::Refused { reason, error_key }));
    }
    let d = src.get(GRANTED_DURABLE_FLUSH).ok_or(Error::Missing {
        key: GRANTED_DURABLE_FLUSH,
    })?;
    Ok(Some(Decision::Granted(StorageGrant {
        durable_flush: keys::parse_bool(GRANTED_DURABLE_FLUSH, d)?,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RefuseReason;
    use crate::keys::{ArraySink, PairSource};

    #[test]
    fn names() {
        for ok in ["data", "vm-42.root", "0", "a_b", &"x".repeat(64)] {
            assert_eq!(VolumeName::parse(VOLUME, ok).unwrap().as_str(), ok);
        }
        for bad in [
            "",
            "Data",
            "../etc",
            ".hidden",
            "-x",
            "a/b",
            "nfs://host/vol",
            "a b",
            "é",
            &"x".repeat(65),
        ] {
            assert_eq!(
                VolumeName::parse(VOLUME, bad),
                Err(Error::BadName { key: VOLUME }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn request_and_decision() {
        assert_eq!(StorageRequest::from_keys(&PairSource(&[])), Ok(None));
        assert_eq!(
            StorageRequest::from_keys(&PairSource(&[(DURABLE_FLUSH, "1")])),
            Err(Error::Missing { key: VOLUME })
        );
        assert_eq!(
            StorageRequest::from_keys(&PairSource(&[(VOLUME, "db"), (DURABLE_FLUSH, "yes")])),
            Err(Error::BadToken { key: DURABLE_FLUSH })
        );
        let r = StorageRequest::from_keys(&PairSource(&[(VOLUME, "db"), (DURABLE_FLUSH, "1")]))
            .unwrap()
            .unwrap();
        assert!(r.durable_flush);
        let mut s = ArraySink::<4, 48>::default();
        r.write(&mut s).unwrap();
        assert_eq!(StorageRequest::from_keys(&s), Ok(Some(r)));
        for d in [
            Decision::Granted(StorageGrant {
                durable_flush: true,
            }),
            Decision::Refused {
                reason: RefuseReason::UnknownVolume,
                error_key: None,
            },
        ] {
            let mut s = ArraySink::<4, 48>::default();
            write_decision(&d, &mut s).unwrap();
            assert_eq!(read_decision(&s), Ok(Some(d)));
        }
    }
}
