//! NBD wire formats: constants, checked views over received bytes and parsed representations.
//!
//! Everything is big-endian (network byte order). Layouts (from the NBD protocol document,
//! `doc/proto.md` of the reference implementation):
//!
//! | message | layout | size |
//! |---------|--------|-----:|
//! | greeting (S) | `NBDMAGIC` u64, `IHAVEOPT` u64, handshake flags u16 | 18 |
//! | client flags (C) | u32 | 4 |
//! | option (C) | `IHAVEOPT` u64, option u32, length u32, data | 16 + len |
//! | option reply (S) | `0x3e889045565a9` u64, option u32, reply type u32, length u32, data | 20 + len |
//! | request (C) | `0x25609513` u32, flags u16, type u16, cookie u64, offset u64, length u32 (+ data for WRITE) | 28 (+ len) |
//! | simple reply (S) | `0x67446698` u32, error u32, cookie u64 (+ data for a successful READ) | 16 (+ len) |
//!
//! Parsing validates every field a server controls; [`Error`] says what was wrong.

use alloc::vec::Vec;

use crate::Error;

/// `NBDMAGIC` (`INIT_PASSWD`), first 8 bytes of the greeting.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: second magic of the greeting and the magic of every option request.
pub const OPTS_MAGIC: u64 = 0x4948_4156_454f_5054;
/// Magic of every option reply.
pub const REP_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of a transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of a structured reply chunk (never negotiated by this client: always an error).
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Size of the server greeting (newstyle).
pub const GREETING_SIZE: usize = 18;
/// Size of an option request header.
pub const OPTION_HEADER_SIZE: usize = 16;
/// Size of an option reply header.
pub const OPTION_REPLY_HEADER_SIZE: usize = 20;
/// Size of a request header.
pub const REQUEST_SIZE: usize = 28;
/// Size of a simple reply header.
pub const SIMPLE_REPLY_SIZE: usize = 16;
/// Longest string the protocol allows (export names, error messages).
pub const MAX_STRING: usize = 4096;
/// Longest option reply payload this client accepts (a string plus a little framing; the
/// replies to `NBD_OPT_GO` are at most a description string).
pub const MAX_OPTION_REPLY: usize = MAX_STRING + 64;

/// Handshake flags (server, 16 bits).
pub mod handshake {
    /// `NBD_FLAG_FIXED_NEWSTYLE`.
    pub const FIXED_NEWSTYLE: u16 = 1 << 0;
    /// `NBD_FLAG_NO_ZEROES`.
    pub const NO_ZEROES: u16 = 1 << 1;
}

/// Client flags (32 bits, sent after the greeting).
pub mod client {
    /// `NBD_FLAG_C_FIXED_NEWSTYLE`.
    pub const FIXED_NEWSTYLE: u32 = 1 << 0;
    /// `NBD_FLAG_C_NO_ZEROES`.
    pub const NO_ZEROES: u32 = 1 << 1;
}

/// Option codes (`NBD_OPT_*`).
pub mod opt {
    /// `NBD_OPT_EXPORT_NAME`.
    pub const EXPORT_NAME: u32 = 1;
    /// `NBD_OPT_ABORT`.
    pub const ABORT: u32 = 2;
    /// `NBD_OPT_LIST`.
    pub const LIST: u32 = 3;
    /// `NBD_OPT_INFO`.
    pub const INFO: u32 = 6;
    /// `NBD_OPT_GO`.
    pub const GO: u32 = 7;
    /// `NBD_OPT_STRUCTURED_REPLY`.
    pub const STRUCTURED_REPLY: u32 = 8;
}

/// Option reply types (`NBD_REP_*`); errors have bit 31 set.
pub mod rep {
    /// `NBD_REP_ACK`.
    pub const ACK: u32 = 1;
    /// `NBD_REP_SERVER`.
    pub const SERVER: u32 = 2;
    /// `NBD_REP_INFO`.
    pub const INFO: u32 = 3;
    /// `NBD_REP_META_CONTEXT`.
    pub const META_CONTEXT: u32 = 4;
    /// Bit set in every error reply type.
    pub const ERROR_BIT: u32 = 1 << 31;
    /// `NBD_REP_ERR_UNSUP`.
    pub const ERR_UNSUP: u32 = ERROR_BIT | 1;
    /// `NBD_REP_ERR_POLICY`.
    pub const ERR_POLICY: u32 = ERROR_BIT | 2;
    /// `NBD_REP_ERR_INVALID`.
    pub const ERR_INVALID: u32 = ERROR_BIT | 3;
    /// `NBD_REP_ERR_PLATFORM`.
    pub const ERR_PLATFORM: u32 = ERROR_BIT | 4;
    /// `NBD_REP_ERR_TLS_REQD`.
    pub const ERR_TLS_REQD: u32 = ERROR_BIT | 5;
    /// `NBD_REP_ERR_UNKNOWN` (no such export).
    pub const ERR_UNKNOWN: u32 = ERROR_BIT | 6;
    /// `NBD_REP_ERR_SHUTDOWN`.
    pub const ERR_SHUTDOWN: u32 = ERROR_BIT | 7;
    /// `NBD_REP_ERR_BLOCK_SIZE_REQD`.
    pub const ERR_BLOCK_SIZE_REQD: u32 = ERROR_BIT | 8;
    /// `NBD_REP_ERR_TOO_BIG`.
    pub const ERR_TOO_BIG: u32 = ERROR_BIT | 9;
}

/// Information types of `NBD_REP_INFO` (`NBD_INFO_*`).
pub mod info {
    /// `NBD_INFO_EXPORT`: size u64, transmission flags u16.
    pub const EXPORT: u16 = 0;
    /// `NBD_INFO_NAME`.
    pub const NAME: u16 = 1;
    /// `NBD_INFO_DESCRIPTION`.
    pub const DESCRIPTION: u16 = 2;
    /// `NBD_INFO_BLOCK_SIZE`: minimum, preferred, maximum u32.
    pub const BLOCK_SIZE: u16 = 3;
}

/// Transmission flags (16 bits, in `NBD_INFO_EXPORT`).
pub mod tflags {
    /// `NBD_FLAG_HAS_FLAGS` (must be set).
    pub const HAS_FLAGS: u16 = 1 << 0;
    /// `NBD_FLAG_READ_ONLY`.
    pub const READ_ONLY: u16 = 1 << 1;
    /// `NBD_FLAG_SEND_FLUSH`.
    pub const SEND_FLUSH: u16 = 1 << 2;
    /// `NBD_FLAG_SEND_FUA`.
    pub const SEND_FUA: u16 = 1 << 3;
    /// `NBD_FLAG_ROTATIONAL`.
    pub const ROTATIONAL: u16 = 1 << 4;
    /// `NBD_FLAG_SEND_TRIM`.
    pub const SEND_TRIM: u16 = 1 << 5;
    /// `NBD_FLAG_SEND_WRITE_ZEROES`.
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    /// `NBD_FLAG_CAN_MULTI_CONN`.
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
}

/// Command flags (16 bits, in a request).
pub mod cflags {
    /// `NBD_CMD_FLAG_FUA`: durable before the reply.
    pub const FUA: u16 = 1 << 0;
}

/// Command types (`NBD_CMD_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// `NBD_CMD_READ` (0).
    Read,
    /// `NBD_CMD_WRITE` (1).
    Write,
    /// `NBD_CMD_DISC` (2).
    Disc,
    /// `NBD_CMD_FLUSH` (3).
    Flush,
    /// `NBD_CMD_TRIM` (4).
    Trim,
}

impl Command {
    /// The wire code.
    pub fn code(self) -> u16 {
        match self {
            Command::Read => 0,
            Command::Write => 1,
            Command::Disc => 2,
            Command::Flush => 3,
            Command::Trim => 4,
        }
    }

    /// Parses a wire code (only the commands this crate knows).
    pub fn from_code(c: u16) -> Option<Self> {
        Some(match c {
            0 => Command::Read,
            1 => Command::Write,
            2 => Command::Disc,
            3 => Command::Flush,
            4 => Command::Trim,
            _ => return None,
        })
    }
}

/// Errno values of simple replies (`NBD_E*`).
pub mod errno {
    /// `NBD_EPERM`.
    pub const EPERM: u32 = 1;
    /// `NBD_EIO`.
    pub const EIO: u32 = 5;
    /// `NBD_ENOMEM`.
    pub const ENOMEM: u32 = 12;
    /// `NBD_EINVAL`.
    pub const EINVAL: u32 = 22;
    /// `NBD_ENOSPC`.
    pub const ENOSPC: u32 = 28;
    /// `NBD_EOVERFLOW`.
    pub const EOVERFLOW: u32 = 75;
    /// `NBD_ENOTSUP`.
    pub const ENOTSUP: u32 = 95;
    /// `NBD_ESHUTDOWN`: the server is shutting down; the client must disconnect softly.
    pub const ESHUTDOWN: u32 = 108;
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

// ---------------------------------------------------------------------------------------------
// Greeting

/// The server's newstyle greeting, parsed: its handshake flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Greeting {
    /// Handshake flags ([`handshake`]).
    pub flags: u16,
}

impl Greeting {
    /// Parses 18 bytes: both magics must match ([`Error::BadMagic`]); an oldstyle server
    /// (second magic `0x00420281861253`) is refused the same way.
    pub fn parse(b: &[u8]) -> Result<Self, Error> {
        if b.len() < GREETING_SIZE {
            return Err(Error::Truncated);
        }
        if be64(b, 0) != NBD_MAGIC || be64(b, 8) != OPTS_MAGIC {
            return Err(Error::BadMagic);
        }
        Ok(Self { flags: be16(b, 16) })
    }

    /// The 18 wire bytes (for test servers).
    pub fn to_bytes(&self) -> [u8; GREETING_SIZE] {
        let mut b = [0u8; GREETING_SIZE];
        b[0..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
        b[8..16].copy_from_slice(&OPTS_MAGIC.to_be_bytes());
        b[16..18].copy_from_slice(&self.flags.to_be_bytes());
        b
    }
}

// ---------------------------------------------------------------------------------------------
// Options

/// Appends an option request (`IHAVEOPT`, option, length, data) to `out`.
pub fn emit_option(out: &mut Vec<u8>, option: u32, data: &[u8]) {
    out.extend_from_slice(&OPTS_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

/// Data of an `NBD_OPT_GO` (or `NBD_OPT_INFO`): name length u32, name, number of information
/// requests u16, each a u16.
pub fn go_data(export: &[u8], infos: &[u16]) -> Vec<u8> {
    let mut d = Vec::with_capacity(4 + export.len() + 2 + 2 * infos.len());
    d.extend_from_slice(&(export.len() as u32).to_be_bytes());
    d.extend_from_slice(export);
    d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        d.extend_from_slice(&i.to_be_bytes());
    }
    d
}

/// Checked view of an option reply header (20 bytes).
#[derive(Debug, Clone)]
pub struct OptionReplyPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> OptionReplyPacket<T> {
    /// Wraps after checking the length.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        if buffer.as_ref().len() < OPTION_REPLY_HEADER_SIZE {
            return Err(Error::Truncated);
        }
        Ok(Self { buffer })
    }
    /// Magic (must be [`REP_MAGIC`]).
    pub fn magic(&self) -> u64 {
        be64(self.buffer.as_ref(), 0)
    }
    /// The option this replies to.
    pub fn option(&self) -> u32 {
        be32(self.buffer.as_ref(), 8)
    }
    /// Reply type ([`rep`]).
    pub fn reply_type(&self) -> u32 {
        be32(self.buffer.as_ref(), 12)
    }
    /// Length of the data that follows.
    pub fn length(&self) -> u32 {
        be32(self.buffer.as_ref(), 16)
    }
}

/// A parsed option reply header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReply {
    /// The option this replies to.
    pub option: u32,
    /// Reply type ([`rep`]).
    pub reply_type: u32,
    /// Length of the data that follows (at most [`MAX_OPTION_REPLY`]).
    pub length: u32,
}

impl OptionReply {
    /// Validates the magic and bounds the length.
    pub fn parse<T: AsRef<[u8]>>(p: &OptionReplyPacket<T>) -> Result<Self, Error> {
        if p.magic() != REP_MAGIC {
            return Err(Error::BadMagic);
        }
        if p.length() as usize > MAX_OPTION_REPLY {
            return Err(Error::TooLong);
        }
        Ok(Self {
            option: p.option(),
            reply_type: p.reply_type(),
            length: p.length(),
        })
    }

    /// Parses raw bytes.
    pub fn from_bytes(b: &[u8]) -> Result<Self, Error> {
        Self::parse(&OptionReplyPacket::new_checked(b)?)
    }

    /// The 20 header bytes (for test servers; the data follows separately).
    pub fn to_bytes(&self) -> [u8; OPTION_REPLY_HEADER_SIZE] {
        let mut b = [0u8; OPTION_REPLY_HEADER_SIZE];
        b[0..8].copy_from_slice(&REP_MAGIC.to_be_bytes());
        b[8..12].copy_from_slice(&self.option.to_be_bytes());
        b[12..16].copy_from_slice(&self.reply_type.to_be_bytes());
        b[16..20].copy_from_slice(&self.length.to_be_bytes());
        b
    }
}

/// Block size constraints (`NBD_INFO_BLOCK_SIZE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSize {
    /// Minimum block size: offsets and lengths are multiples of it.
    pub min: u32,
    /// Preferred block size.
    pub preferred: u32,
    /// Maximum payload of a READ/WRITE (`u32::MAX`: no limit besides the 32-bit length).
    pub max: u32,
}

impl BlockSize {
    /// What a client assumes when the server sent none: byte granularity, 4 KiB preferred,
    /// 32 MiB maximum payload.
    pub const DEFAULT: Self = Self {
        min: 1,
        preferred: 4096,
        max: 32 << 20,
    };

    /// Checks the protocol's rules: `min` a power of two up to 64 KiB, `preferred` a power of
    /// two at least `min`, `max` at least `min` and a multiple of it (or `u32::MAX`).
    pub fn validate(&self) -> Result<(), Error> {
        let ok = self.min.is_power_of_two()
            && self.min <= 65536
            && self.preferred.is_power_of_two()
            && self.preferred >= self.min
            && self.max >= self.min
            && (self.max == u32::MAX || self.max.is_multiple_of(self.min));
        if ok { Ok(()) } else { Err(Error::BadInfo) }
    }
}

/// One `NBD_REP_INFO` payload, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Info {
    /// `NBD_INFO_EXPORT`.
    Export {
        /// Export size in bytes.
        size: u64,
        /// Transmission flags ([`tflags`]).
        flags: u16,
    },
    /// `NBD_INFO_BLOCK_SIZE` (validated).
    BlockSize(BlockSize),
    /// Name, description or a type this client does not know (ignored, as the protocol says).
    Other(u16),
}

impl Info {
    /// Parses the data of an `NBD_REP_INFO` reply: exact lengths for the known types.
    pub fn parse(d: &[u8]) -> Result<Self, Error> {
        if d.len() < 2 {
            return Err(Error::BadInfo);
        }
        match be16(d, 0) {
            info::EXPORT => {
                if d.len() != 12 {
                    return Err(Error::BadInfo);
                }
                let flags = be16(d, 10);
                if flags & tflags::HAS_FLAGS == 0 {
                    return Err(Error::BadInfo);
                }
                Ok(Info::Export {
                    size: be64(d, 2),
                    flags,
                })
            }
            info::BLOCK_SIZE => {
                if d.len() != 14 {
                    return Err(Error::BadInfo);
                }
                let bs = BlockSize {
                    min: be32(d, 2),
                    preferred: be32(d, 6),
                    max: be32(d, 10),
                };
                bs.validate()?;
                Ok(Info::BlockSize(bs))
            }
            t @ (info::NAME | info::DESCRIPTION) => {
                if d.len() - 2 > MAX_STRING {
                    return Err(Error::BadInfo);
                }
                Ok(Info::Other(t))
            }
            t => Ok(Info::Other(t)),
        }
    }

    /// The wire payload (for test servers).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut d = Vec::new();
        match *self {
            Info::Export { size, flags } => {
                d.extend_from_slice(&info::EXPORT.to_be_bytes());
                d.extend_from_slice(&size.to_be_bytes());
                d.extend_from_slice(&flags.to_be_bytes());
            }
            Info::BlockSize(bs) => {
                d.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
                d.extend_from_slice(&bs.min.to_be_bytes());
                d.extend_from_slice(&bs.preferred.to_be_bytes());
                d.extend_from_slice(&bs.max.to_be_bytes());
            }
            Info::Other(t) => d.extend_from_slice(&t.to_be_bytes()),
        }
        d
    }
}

// ---------------------------------------------------------------------------------------------
// Transmission

/// Checked view of a request header (28 bytes).
#[derive(Debug, Clone)]
pub struct RequestPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> RequestPacket<T> {
    /// Wraps after checking the length.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        if buffer.as_ref().len() < REQUEST_SIZE {
            return Err(Error::Truncated);
        }
        Ok(Self { buffer })
    }
    /// Magic (must be [`REQUEST_MAGIC`]).
    pub fn magic(&self) -> u32 {
        be32(self.buffer.as_ref(), 0)
    }
    /// Command flags.
    pub fn flags(&self) -> u16 {
        be16(self.buffer.as_ref(), 4)
    }
    /// Command type.
    pub fn command(&self) -> u16 {
        be16(self.buffer.as_ref(), 6)
    }
    /// Cookie (handle), echoed in the reply.
    pub fn cookie(&self) -> u64 {
        be64(self.buffer.as_ref(), 8)
    }
    /// Offset in the export.
    pub fn offset(&self) -> u64 {
        be64(self.buffer.as_ref(), 16)
    }
    /// Length.
    pub fn length(&self) -> u32 {
        be32(self.buffer.as_ref(), 24)
    }
}

/// A transmission request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Command flags ([`cflags`]).
    pub flags: u16,
    /// Command.
    pub command: Command,
    /// Cookie.
    pub cookie: u64,
    /// Offset.
    pub offset: u64,
    /// Length (for WRITE: the payload that follows).
    pub length: u32,
}

impl Request {
    /// Parses a header (for test servers): magic and command must be known.
    pub fn parse<T: AsRef<[u8]>>(p: &RequestPacket<T>) -> Result<Self, Error> {
        if p.magic() != REQUEST_MAGIC {
            return Err(Error::BadMagic);
        }
        let command = Command::from_code(p.command()).ok_or(Error::Unsupported)?;
        Ok(Self {
            flags: p.flags(),
            command,
            cookie: p.cookie(),
            offset: p.offset(),
            length: p.length(),
        })
    }

    /// Parses raw bytes.
    pub fn from_bytes(b: &[u8]) -> Result<Self, Error> {
        Self::parse(&RequestPacket::new_checked(b)?)
    }

    /// Appends the 28 header bytes to `out`.
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        out.extend_from_slice(&self.flags.to_be_bytes());
        out.extend_from_slice(&self.command.code().to_be_bytes());
        out.extend_from_slice(&self.cookie.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
        out.extend_from_slice(&self.length.to_be_bytes());
    }
}

/// Checked view of a simple reply header (16 bytes).
#[derive(Debug, Clone)]
pub struct SimpleReplyPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> SimpleReplyPacket<T> {
    /// Wraps after checking the length.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        if buffer.as_ref().len() < SIMPLE_REPLY_SIZE {
            return Err(Error::Truncated);
        }
        Ok(Self { buffer })
    }
    /// Magic.
    pub fn magic(&self) -> u32 {
        be32(self.buffer.as_ref(), 0)
    }
    /// Error (0: success).
    pub fn error(&self) -> u32 {
        be32(self.buffer.as_ref(), 4)
    }
    /// Cookie of the request.
    pub fn cookie(&self) -> u64 {
        be64(self.buffer.as_ref(), 8)
    }
}

/// A parsed simple reply header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimpleReply {
    /// Errno (0 on success, see [`errno`]).
    pub error: u32,
    /// Cookie of the request.
    pub cookie: u64,
}

impl SimpleReply {
    /// Validates the magic; a structured reply chunk (never negotiated) is
    /// [`Error::StructuredReply`].
    pub fn parse<T: AsRef<[u8]>>(p: &SimpleReplyPacket<T>) -> Result<Self, Error> {
        match p.magic() {
            SIMPLE_REPLY_MAGIC => Ok(Self {
                error: p.error(),
                cookie: p.cookie(),
            }),
            STRUCTURED_REPLY_MAGIC => Err(Error::StructuredReply),
            _ => Err(Error::BadMagic),
        }
    }

    /// Parses raw bytes.
    pub fn from_bytes(b: &[u8]) -> Result<Self, Error> {
        Self::parse(&SimpleReplyPacket::new_checked(b)?)
    }

    /// The 16 wire bytes.
    pub fn to_bytes(&self) -> [u8; SIMPLE_REPLY_SIZE] {
        let mut b = [0u8; SIMPLE_REPLY_SIZE];
        b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        b[4..8].copy_from_slice(&self.error.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting() {
        let g = Greeting {
            flags: handshake::FIXED_NEWSTYLE | handshake::NO_ZEROES,
        };
        let b = g.to_bytes();
        assert_eq!(&b[..8], b"NBDMAGIC");
        assert_eq!(&b[8..16], b"IHAVEOPT");
        assert_eq!(&b[16..], &[0, 3]);
        assert_eq!(Greeting::parse(&b), Ok(g));
        let mut old = b;
        old[8..16].copy_from_slice(&0x0000_4202_8186_1253_u64.to_be_bytes());
        assert_eq!(Greeting::parse(&old), Err(Error::BadMagic), "oldstyle");
        assert_eq!(Greeting::parse(&b[..17]), Err(Error::Truncated));
    }

    #[test]
    fn option_and_go_layout() {
        let mut out = Vec::new();
        emit_option(&mut out, opt::GO, &go_data(b"exp", &[info::BLOCK_SIZE]));
        assert_eq!(&out[..8], b"IHAVEOPT");
        assert_eq!(&out[8..16], &[0, 0, 0, 7, 0, 0, 0, 11]);
        assert_eq!(&out[16..], &[0, 0, 0, 3, b'e', b'x', b'p', 0, 1, 0, 3]);
    }

    #[test]
    fn option_reply() {
        let r = OptionReply {
            option: opt::GO,
            reply_type: rep::INFO,
            length: 12,
        };
        let b = r.to_bytes();
        assert_eq!(&b[..8], &[0, 3, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9]);
        assert_eq!(OptionReply::from_bytes(&b), Ok(r));
        let mut bad = b;
        bad[0] = 1;
        assert_eq!(OptionReply::from_bytes(&bad), Err(Error::BadMagic));
        let big = OptionReply {
            length: MAX_OPTION_REPLY as u32 + 1,
            ..r
        };
        assert_eq!(OptionReply::from_bytes(&big.to_bytes()), Err(Error::TooLong));
    }

    #[test]
    fn infos() {
        let e = Info::Export {
            size: 1 << 30,
            flags: tflags::HAS_FLAGS | tflags::SEND_FLUSH,
        };
        let b = e.to_bytes();
        assert_eq!(b.len(), 12);
        assert_eq!(Info::parse(&b), Ok(e));
        assert_eq!(Info::parse(&b[..11]), Err(Error::BadInfo));
        let mut no_has_flags = b.clone();
        no_has_flags[11] &= !1;
        assert_eq!(Info::parse(&no_has_flags), Err(Error::BadInfo));
        let bs = Info::BlockSize(BlockSize {
            min: 512,
            preferred: 4096,
            max: 1 << 25,
        });
        assert_eq!(Info::parse(&bs.to_bytes()), Ok(bs));
        for (min, pref, max) in [
            (3, 4096, 4096),
            (1 << 17, 1 << 17, 1 << 17),
            (512, 256, 4096),
            (512, 4096, 256),
            (512, 4096, 1000),
            (0, 4096, 4096),
        ] {
            let b = Info::BlockSize(BlockSize {
                min,
                preferred: pref,
                max,
            })
            .to_bytes();
            assert_eq!(Info::parse(&b), Err(Error::BadInfo), "{min} {pref} {max}");
        }
        assert!(
            BlockSize {
                min: 1,
                preferred: 1,
                max: u32::MAX
            }
            .validate()
            .is_ok()
        );
        assert_eq!(Info::parse(&[0, 9, 1, 2, 3]), Ok(Info::Other(9)));
        assert_eq!(Info::parse(&[0]), Err(Error::BadInfo));
    }

    #[test]
    fn request_layout() {
        let r = Request {
            flags: cflags::FUA,
            command: Command::Write,
            cookie: 0x0102_0304_0506_0708,
            offset: 4096,
            length: 512,
        };
        let mut b = Vec::new();
        r.emit(&mut b);
        assert_eq!(b.len(), REQUEST_SIZE);
        assert_eq!(&b[..8], &[0x25, 0x60, 0x95, 0x13, 0, 1, 0, 1]);
        assert_eq!(&b[8..16], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&b[24..], &[0, 0, 2, 0]);
        assert_eq!(Request::from_bytes(&b), Ok(r));
    }

    #[test]
    fn simple_reply() {
        let r = SimpleReply {
            error: errno::EIO,
            cookie: 77,
        };
        let b = r.to_bytes();
        assert_eq!(&b[..8], &[0x67, 0x44, 0x66, 0x98, 0, 0, 0, 5]);
        assert_eq!(SimpleReply::from_bytes(&b), Ok(r));
        let mut s = b;
        s[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
        assert_eq!(SimpleReply::from_bytes(&s), Err(Error::StructuredReply));
        s[0] = 0;
        assert_eq!(SimpleReply::from_bytes(&s), Err(Error::BadMagic));
        assert_eq!(SimpleReply::from_bytes(&b[..15]), Err(Error::Truncated));
    }
}
