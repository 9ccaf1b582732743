//! Xenstore messages (`io/xs_wire.h`): a 16-byte header (type, request id, transaction id,
//! payload length, all little-endian `u32`) followed by at most 4096 payload bytes, usually
//! NUL-terminated strings.

use alloc::vec::Vec;

use crate::XsError;

/// Header size.
pub const HEADER_LEN: usize = 16;
/// `XENSTORE_PAYLOAD_MAX`.
pub const PAYLOAD_MAX: usize = 4096;
/// `XENSTORE_ABS_PATH_MAX`.
pub const ABS_PATH_MAX: usize = 3072;
/// `XENSTORE_REL_PATH_MAX`.
pub const REL_PATH_MAX: usize = 2048;

/// `enum xsd_sockmsg_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
#[allow(missing_docs)]
pub enum MsgType {
    Debug = 0,
    Directory = 1,
    Read = 2,
    GetPerms = 3,
    Watch = 4,
    Unwatch = 5,
    TransactionStart = 6,
    TransactionEnd = 7,
    Introduce = 8,
    Release = 9,
    GetDomainPath = 10,
    Write = 11,
    Mkdir = 12,
    Rm = 13,
    SetPerms = 14,
    WatchEvent = 15,
    Error = 16,
    IsDomainIntroduced = 17,
    Resume = 18,
    SetTarget = 19,
    Restrict = 20,
    ResetWatches = 21,
    DirectoryPart = 22,
}

impl MsgType {
    /// Decodes a wire type.
    pub fn from_u32(v: u32) -> Option<MsgType> {
        use MsgType::*;
        const ALL: [MsgType; 23] = [
            Debug, Directory, Read, GetPerms, Watch, Unwatch, TransactionStart, TransactionEnd,
            Introduce, Release, GetDomainPath, Write, Mkdir, Rm, SetPerms, WatchEvent, Error,
            IsDomainIntroduced, Resume, SetTarget, Restrict, ResetWatches, DirectoryPart,
        ];
        ALL.get(v as usize).copied()
    }
}

/// A decoded header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Message type.
    pub ty: MsgType,
    /// Request id, echoed in the reply.
    pub req_id: u32,
    /// Transaction id, 0 outside transactions.
    pub tx_id: u32,
    /// Payload length.
    pub len: u32,
}

impl Header {
    /// Parses and validates a header: known type, payload ≤ 4096 bytes.
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Result<Header, XsError> {
        let word = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let ty = MsgType::from_u32(word(0)).ok_or(XsError::Protocol)?;
        let len = word(12);
        if len as usize > PAYLOAD_MAX {
            return Err(XsError::Protocol);
        }
        Ok(Header { ty, req_id: word(4), tx_id: word(8), len })
    }

    /// The 16 wire bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&(self.ty as u32).to_le_bytes());
        b[4..8].copy_from_slice(&self.req_id.to_le_bytes());
        b[8..12].copy_from_slice(&self.tx_id.to_le_bytes());
        b[12..16].copy_from_slice(&self.len.to_le_bytes());
        b
    }
}

/// A whole message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Type.
    pub ty: MsgType,
    /// Request id.
    pub req_id: u32,
    /// Transaction id.
    pub tx_id: u32,
    /// Payload.
    pub payload: Vec<u8>,
}

impl Message {
    /// Header followed by payload; `Err` if the payload is too long.
    pub fn encode(&self) -> Result<Vec<u8>, XsError> {
        if self.payload.len() > PAYLOAD_MAX {
            return Err(XsError::TooBig);
        }
        let header = Header { ty: self.ty, req_id: self.req_id, tx_id: self.tx_id, len: self.payload.len() as u32 };
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        out.extend_from_slice(&header.to_bytes());
        out.extend_from_slice(&self.payload);
        Ok(out)
    }
}

/// Splits a payload of NUL-terminated strings (a trailing NUL is optional).
pub fn split_strings(payload: &[u8]) -> impl Iterator<Item = &[u8]> {
    let trimmed = payload.strip_suffix(b"\0").unwrap_or(payload);
    let empty = trimmed.is_empty();
    trimmed.split(|&b| b == 0).filter(move |_| !empty)
}

/// Checks a path as xenstored does: absolute (`/...`, ≤ 3072 bytes) or relative (≤ 2048 bytes),
/// made of `A-Z a-z 0-9 - / _ @`, no `//`, no trailing `/` except the root.
pub fn validate_path(path: &str) -> Result<(), XsError> {
    let max = if path.starts_with('/') { ABS_PATH_MAX } else { REL_PATH_MAX };
    let ok_chars = path.bytes().all(|b| b.is_ascii_alphanumeric() || b"-/_@".contains(&b));
    if path.is_empty()
        || path.len() > max
        || !ok_chars
        || path.contains("//")
        || (path.len() > 1 && path.ends_with('/'))
    {
        return Err(XsError::BadPath);
    }
    Ok(())
}

/// Maps an `XS_ERROR` payload (`"ENOENT\0"`) to an error.
pub fn parse_error(payload: &[u8]) -> XsError {
    let name = split_strings(payload).next().unwrap_or(b"");
    match name {
        b"ENOENT" => XsError::NoEntry,
        b"EACCES" => XsError::Denied,
        b"EEXIST" => XsError::Exists,
        b"EAGAIN" => XsError::Again,
        b"EINVAL" => XsError::Invalid,
        b"E2BIG" | b"ENOSPC" | b"ENOMEM" => XsError::TooBig,
        b"EBUSY" => XsError::Busy,
        _ => XsError::Other,
    }
}

/// The wire name of an error, for the in-memory server.
pub fn error_name(e: XsError) -> &'static str {
    match e {
        XsError::NoEntry => "ENOENT",
        XsError::Denied => "EACCES",
        XsError::Exists => "EEXIST",
        XsError::Again => "EAGAIN",
        XsError::TooBig => "E2BIG",
        XsError::Busy => "EBUSY",
        _ => "EINVAL",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn header_round_trip_and_validation() {
        let h = Header { ty: MsgType::Write, req_id: 7, tx_id: 3, len: 12 };
        let b = h.to_bytes();
        assert_eq!(&b[..4], &11u32.to_le_bytes());
        assert_eq!(Header::parse(&b), Ok(h));
        let mut bad = b;
        bad[0] = 23;
        assert_eq!(Header::parse(&bad), Err(XsError::Protocol));
        let mut long = b;
        long[12..16].copy_from_slice(&4097u32.to_le_bytes());
        assert_eq!(Header::parse(&long), Err(XsError::Protocol));
    }

    #[test]
    fn strings_split_like_the_daemon_writes_them() {
        assert_eq!(split_strings(b"a\0bc\0").collect::<Vec<_>>(), vec![&b"a"[..], b"bc"]);
        assert_eq!(split_strings(b"").count(), 0);
        assert_eq!(split_strings(b"\0").count(), 0);
        assert_eq!(split_strings(b"value").collect::<Vec<_>>(), vec![&b"value"[..]]);
    }

    #[test]
    fn paths_are_checked() {
        for ok in ["/", "/local/domain/3/device/vif/0", "device/vif/0/state", "a-b_c@d"] {
            assert_eq!(validate_path(ok), Ok(()), "{ok}");
        }
        for bad in ["", "/a//b", "/a/", "a b", "/a/\u{e9}", "a\0b"] {
            assert_eq!(validate_path(bad), Err(XsError::BadPath), "{bad:?}");
        }
        let long = alloc::format!("/{}", "a".repeat(ABS_PATH_MAX));
        assert_eq!(validate_path(&long), Err(XsError::BadPath));
    }

    #[test]
    fn errors_map_both_ways() {
        for e in [XsError::NoEntry, XsError::Denied, XsError::Exists, XsError::Again, XsError::TooBig, XsError::Busy] {
            assert_eq!(parse_error(error_name(e).as_bytes()), e);
        }
        assert_eq!(parse_error(b"ENOENT\0"), XsError::NoEntry);
        assert_eq!(parse_error(b"EWHATEVER\0"), XsError::Other);
    }
}
