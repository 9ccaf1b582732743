//! The one error type of the `hal` crate.

use core::fmt;

/// What went wrong while reaching hardware or parsing firmware tables.
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
pub enum Error {
    /// The thing looked for (table, capability, device) is not there.
    NotFound,
    /// A firmware table's checksum does not add up to zero.
    BadChecksum,
    /// A structure is shorter than its own header says, or shorter than the minimum size.
    Truncated,
    /// A field holds a value that is not allowed (bad signature, bad BAR type, bad length...).
    Invalid,
    /// An address or offset lies outside the region it must be in.
    OutOfRange,
    /// A resource window has no room left for the request.
    NoSpace,
    /// A BAR needed by a device has no address assigned.
    BarUnassigned,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Error::NotFound => "not found",
            Error::BadChecksum => "bad checksum",
            Error::Truncated => "truncated",
            Error::Invalid => "invalid value",
            Error::OutOfRange => "out of range",
            Error::NoSpace => "no space left in window",
            Error::BarUnassigned => "BAR not assigned",
        };
        f.write_str(s)
    }
}

impl core::error::Error for Error {}
