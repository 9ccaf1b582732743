//! Block interface wire formats (`public/io/blkif.h`, x86_64 layout).
//!
//! One ring (`ring-ref`, or `ring-refN` with `ring-page-order`) of 112-byte request slots;
//! responses are 16 bytes. Request kinds:
//!
//! | op | name | body |
//! |---:|------|------|
//! | 0 | READ | up to 11 direct segments |
//! | 1 | WRITE | up to 11 direct segments |
//! | 2 | WRITE_BARRIER | 0..=11 segments |
//! | 3 | FLUSH_DISKCACHE | 0..=11 segments |
//! | 5 | DISCARD | sector range, `BLKIF_DISCARD_SECURE` flag |
//! | 6 | INDIRECT | READ/WRITE with segments listed in up to 8 granted pages |
//!
//! Layouts: `blkif_request` = operation u8 @0, nr_segments u8 @1, handle u16 @2, id u64 @8,
//! sector_number u64 @16, `seg[11]` @24 (each: gref u32, first_sect u8, last_sect u8, 2 pad).
//! `blkif_request_discard` = operation @0, flag @1, handle @2, id @8, sector @16, nr_sectors @24.
//! `blkif_request_indirect` = operation @0, indirect_op @1, nr_segments u16 @2, id @8,
//! sector @16, handle u16 @24, `indirect_grefs[8]` @28 (64 bytes).
//! `blkif_response` = id u64 @0, operation u8 @8, status i16 @10 (16 bytes).
//! Sectors are always 512 bytes.
//!
//! Parsing checks the operation, segment counts, every segment's sector range
//! (`first_sect <= last_sect <= 7`), discard flags and ranges, and indirect sub-operations.
//! When a request does not parse, [`RequestPacket::id`] and [`RequestPacket::operation`] still
//! give what is needed to answer it with an error response.

use crate::field;
use crate::ring::{RingProtocol, ring_entries};
use crate::{Error, GrantRef, PAGE_SIZE};

/// `sizeof(struct blkif_request)`.
pub const REQUEST_SIZE: usize = 112;
/// `sizeof(struct blkif_request_indirect)` (x86_64).
pub const INDIRECT_REQUEST_SIZE: usize = 64;
/// `sizeof(struct blkif_request_discard)` (x86_64).
pub const DISCARD_REQUEST_SIZE: usize = 32;
/// `sizeof(struct blkif_response)` (x86_64).
pub const RESPONSE_SIZE: usize = 16;
/// `sizeof(struct blkif_request_segment)`.
pub const SEGMENT_SIZE: usize = 8;
/// `BLKIF_MAX_SEGMENTS_PER_REQUEST`.
pub const MAX_SEGMENTS_PER_REQUEST: usize = 11;
/// `BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST`.
pub const MAX_INDIRECT_PAGES_PER_REQUEST: usize = 8;
/// Segments described by one indirect page.
pub const SEGMENTS_PER_INDIRECT_PAGE: usize = PAGE_SIZE / SEGMENT_SIZE;
/// Upper bound of `nr_segments` in an indirect request.
pub const MAX_INDIRECT_SEGMENTS: usize =
    MAX_INDIRECT_PAGES_PER_REQUEST * SEGMENTS_PER_INDIRECT_PAGE;
/// Sector size of all sector numbers in the protocol.
pub const SECTOR_SIZE: usize = 512;
/// Last valid sector number inside a 4 KiB page.
pub const MAX_SECT_IN_PAGE: u8 = (PAGE_SIZE / SECTOR_SIZE - 1) as u8;
/// `BLKIF_DISCARD_SECURE`.
pub const DISCARD_SECURE: u8 = 1;

const _: () = assert!(24 + MAX_SEGMENTS_PER_REQUEST * SEGMENT_SIZE == REQUEST_SIZE);
const _: () = assert!(28 + MAX_INDIRECT_PAGES_PER_REQUEST * 4 <= INDIRECT_REQUEST_SIZE);
const _: () =
    assert!(INDIRECT_REQUEST_SIZE <= REQUEST_SIZE && DISCARD_REQUEST_SIZE <= REQUEST_SIZE);
/// `BLK_RING_SIZE` on one page.
pub const RING_SIZE: u32 = ring_entries(PAGE_SIZE, REQUEST_SIZE);
const _: () = assert!(RING_SIZE == 32);

/// Ring protocol marker (`blkif_sring`).
#[derive(Debug, Clone, Copy)]
pub struct BlkRing;
impl RingProtocol for BlkRing {
    type Req = [u8; REQUEST_SIZE];
    type Rsp = [u8; RESPONSE_SIZE];
    const SLOT: usize = REQUEST_SIZE;
}

/// `BLKIF_OP_*` codes.
pub mod op {
    /// Read.
    pub const READ: u8 = 0;
    /// Write.
    pub const WRITE: u8 = 1;
    /// Write with barrier semantics.
    pub const WRITE_BARRIER: u8 = 2;
    /// Flush the disk cache.
    pub const FLUSH_DISKCACHE: u8 = 3;
    /// Reserved (old blktap).
    pub const RESERVED_1: u8 = 4;
    /// Discard a sector range.
    pub const DISCARD: u8 = 5;
    /// Indirect read/write.
    pub const INDIRECT: u8 = 6;
}

/// `BLKIF_RSP_*` statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i16)]
pub enum Status {
    /// Operation not supported.
    EOpNotSupp = -2,
    /// I/O error.
    Error = -1,
    /// Success.
    Okay = 0,
}

/// Direction/semantics of a request with direct segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RwOp {
    /// `BLKIF_OP_READ`.
    Read,
    /// `BLKIF_OP_WRITE`.
    Write,
    /// `BLKIF_OP_WRITE_BARRIER`.
    WriteBarrier,
    /// `BLKIF_OP_FLUSH_DISKCACHE`.
    FlushDiskcache,
}

impl RwOp {
    /// The wire code.
    pub fn code(self) -> u8 {
        match self {
            RwOp::Read => op::READ,
            RwOp::Write => op::WRITE,
            RwOp::WriteBarrier => op::WRITE_BARRIER,
            RwOp::FlushDiskcache => op::FLUSH_DISKCACHE,
        }
    }
}

/// One segment: a granted page and an inclusive range of 512-byte sectors in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Segment {
    /// Grant of the data page.
    pub gref: GrantRef,
    /// First sector in the page (0..=7).
    pub first_sect: u8,
    /// Last sector in the page (first_sect..=7).
    pub last_sect: u8,
}

impl Segment {
    /// Parses and validates 8 bytes (also the format of indirect-page entries).
    pub fn from_bytes(b: &[u8]) -> Result<Self, Error> {
        if b.len() < SEGMENT_SIZE {
            return Err(Error::Truncated);
        }
        let s = Self {
            gref: field::u32(b, 0),
            first_sect: b[4],
            last_sect: b[5],
        };
        if s.first_sect > s.last_sect || s.last_sect > MAX_SECT_IN_PAGE {
            return Err(Error::BadSector);
        }
        Ok(s)
    }
    /// Writes 8 bytes.
    pub fn emit(&self, b: &mut [u8]) {
        field::set_u32(b, 0, self.gref);
        b[4] = self.first_sect;
        b[5] = self.last_sect;
        b[6] = 0;
        b[7] = 0;
    }
    /// Number of sectors covered (0 for a segment that would not validate).
    pub fn sectors(&self) -> u32 {
        if self.first_sect > self.last_sect {
            return 0;
        }
        (self.last_sect - self.first_sect) as u32 + 1
    }
    /// Byte offset of the first sector in the page.
    pub fn byte_offset(&self) -> usize {
        self.first_sect as usize * SECTOR_SIZE
    }
    /// Number of bytes covered.
    pub fn byte_len(&self) -> usize {
        self.sectors() as usize * SECTOR_SIZE
    }
}

/// Checked view of a request slot (at least 112 bytes).
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
    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }
    /// Operation code.
    pub fn operation(&self) -> u8 {
        self.b()[0]
    }
    /// Guest id, echoed in the response (same offset in every request kind).
    pub fn id(&self) -> u64 {
        field::u64(self.b(), 8)
    }
    /// Start sector (same offset in every request kind).
    pub fn sector_number(&self) -> u64 {
        field::u64(self.b(), 16)
    }
    /// `nr_segments` of a direct request / `flag` of a discard / `indirect_op` of an indirect one.
    pub fn byte1(&self) -> u8 {
        self.b()[1]
    }
    /// `handle` of direct and discard requests.
    pub fn handle(&self) -> u16 {
        field::u16(self.b(), 2)
    }
    /// Raw direct segment `i` (panics unless `i < 11`).
    pub fn segment_bytes(&self, i: usize) -> &[u8] {
        &self.b()[24 + i * SEGMENT_SIZE..24 + (i + 1) * SEGMENT_SIZE]
    }
    /// `nr_sectors` of a discard.
    pub fn discard_nr_sectors(&self) -> u64 {
        field::u64(self.b(), 24)
    }
    /// `nr_segments` of an indirect request.
    pub fn indirect_nr_segments(&self) -> u16 {
        field::u16(self.b(), 2)
    }
    /// `handle` of an indirect request.
    pub fn indirect_handle(&self) -> u16 {
        field::u16(self.b(), 24)
    }
    /// `indirect_grefs[i]` (panics unless `i < 8`).
    pub fn indirect_gref(&self, i: usize) -> u32 {
        field::u32(self.b(), 28 + 4 * i)
    }
}

/// A validated block request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Request {
    /// Read/write/barrier/flush with direct segments.
    Rw {
        /// Operation.
        op: RwOp,
        /// Virtual device handle.
        handle: u16,
        /// Guest id.
        id: u64,
        /// Start sector.
        sector: u64,
        /// Number of valid entries in `segments`.
        nr_segments: u8,
        /// Segments (only the first `nr_segments` are meaningful, the rest are zero).
        segments: [Segment; MAX_SEGMENTS_PER_REQUEST],
    },
    /// Discard.
    Discard {
        /// `BLKIF_DISCARD_SECURE` requested.
        secure: bool,
        /// Virtual device handle.
        handle: u16,
        /// Guest id.
        id: u64,
        /// Start sector.
        sector: u64,
        /// Number of sectors (>= 1, no overflow).
        nr_sectors: u64,
    },
    /// Indirect read/write: segment descriptors live in granted pages.
    Indirect {
        /// `Read` or `Write`.
        op: RwOp,
        /// Virtual device handle.
        handle: u16,
        /// Guest id.
        id: u64,
        /// Start sector.
        sector: u64,
        /// Number of segments (1..=4096).
        nr_segments: u16,
        /// Grants of the indirect pages (only the first [`Request::indirect_pages`] are meaningful).
        indirect_grefs: [GrantRef; MAX_INDIRECT_PAGES_PER_REQUEST],
    },
}

impl Request {
    /// Validates a request.
    pub fn parse<T: AsRef<[u8]>>(p: &RequestPacket<T>) -> Result<Self, Error> {
        match p.operation() {
            code @ (op::READ | op::WRITE | op::WRITE_BARRIER | op::FLUSH_DISKCACHE) => {
                let rw = match code {
                    op::READ => RwOp::Read,
                    op::WRITE => RwOp::Write,
                    op::WRITE_BARRIER => RwOp::WriteBarrier,
                    _ => RwOp::FlushDiskcache,
                };
                let n = p.byte1();
                let min = if matches!(rw, RwOp::Read | RwOp::Write) {
                    1
                } else {
                    0
                };
                if (n as usize) < min || n as usize > MAX_SEGMENTS_PER_REQUEST {
                    return Err(Error::BadSegmentCount);
                }
                let mut segments = [Segment::default(); MAX_SEGMENTS_PER_REQUEST];
                for (i, s) in segments.iter_mut().enumerate().take(n as usize) {
                    *s = Segment::from_bytes(p.segment_bytes(i))?;
                }
                Ok(Request::Rw {
                    op: rw,
                    handle: p.handle(),
                    id: p.id(),
                    sector: p.sector_number(),
                    nr_segments: n,
                    segments,
                })
            }
            op::DISCARD => {
                let flag = p.byte1();
                if flag & !DISCARD_SECURE != 0 {
                    return Err(Error::BadFlags);
                }
                let nr = p.discard_nr_sectors();
                if nr == 0 || p.sector_number().checked_add(nr).is_none() {
                    return Err(Error::BadValue);
                }
                Ok(Request::Discard {
                    secure: flag & DISCARD_SECURE != 0,
                    handle: p.handle(),
                    id: p.id(),
                    sector: p.sector_number(),
                    nr_sectors: nr,
                })
            }
            op::INDIRECT => {
                let rw = match p.byte1() {
                    op::READ => RwOp::Read,
                    op::WRITE => RwOp::Write,
                    _ => return Err(Error::UnknownOperation),
                };
                let n = p.indirect_nr_segments();
                if n == 0 || n as usize > MAX_INDIRECT_SEGMENTS {
                    return Err(Error::BadSegmentCount);
                }
                let mut indirect_grefs = [0; MAX_INDIRECT_PAGES_PER_REQUEST];
                for (i, g) in indirect_grefs
                    .iter_mut()
                    .enumerate()
                    .take(indirect_pages(n))
                {
                    *g = p.indirect_gref(i);
                }
                Ok(Request::Indirect {
                    op: rw,
                    handle: p.indirect_handle(),
                    id: p.id(),
                    sector: p.sector_number(),
                    nr_segments: n,
                    indirect_grefs,
                })
            }
            _ => Err(Error::UnknownOperation),
        }
    }

    /// Parses a raw slot.
    pub fn from_bytes(b: &[u8]) -> Result<Self, Error> {
        Self::parse(&RequestPacket::new_checked(b)?)
    }

    /// The guest id.
    pub fn id(&self) -> u64 {
        match *self {
            Request::Rw { id, .. } | Request::Discard { id, .. } | Request::Indirect { id, .. } => {
                id
            }
        }
    }

    /// The operation code to echo in the response.
    pub fn operation(&self) -> u8 {
        match *self {
            Request::Rw { op, .. } => op.code(),
            Request::Discard { .. } => op::DISCARD,
            Request::Indirect { .. } => op::INDIRECT,
        }
    }

    /// Number of indirect pages used (0 for other requests).
    pub fn indirect_pages(&self) -> usize {
        match *self {
            Request::Indirect { nr_segments, .. } => indirect_pages(nr_segments),
            _ => 0,
        }
    }

    /// Writes the request into a 112-byte slot (unused bytes zeroed).
    pub fn emit(&self, b: &mut [u8; REQUEST_SIZE]) {
        b.fill(0);
        match *self {
            Request::Rw {
                op,
                handle,
                id,
                sector,
                nr_segments,
                segments,
            } => {
                b[0] = op.code();
                b[1] = nr_segments;
                field::set_u16(b, 2, handle);
                field::set_u64(b, 8, id);
                field::set_u64(b, 16, sector);
                for (i, s) in segments.iter().enumerate().take(nr_segments as usize) {
                    s.emit(&mut b[24 + i * SEGMENT_SIZE..24 + (i + 1) * SEGMENT_SIZE]);
                }
            }
            Request::Discard {
                secure,
                handle,
                id,
                sector,
                nr_sectors,
            } => {
                b[0] = op::DISCARD;
                b[1] = if secure { DISCARD_SECURE } else { 0 };
                field::set_u16(b, 2, handle);
                field::set_u64(b, 8, id);
                field::set_u64(b, 16, sector);
                field::set_u64(b, 24, nr_sectors);
            }
            Request::Indirect {
                op,
                handle,
                id,
                sector,
                nr_segments,
                indirect_grefs,
            } => {
                b[0] = op::INDIRECT;
                b[1] = op.code();
                field::set_u16(b, 2, nr_segments);
                field::set_u64(b, 8, id);
                field::set_u64(b, 16, sector);
                field::set_u16(b, 24, handle);
                for (i, g) in indirect_grefs
                    .iter()
                    .enumerate()
                    .take(indirect_pages(nr_segments))
                {
                    field::set_u32(b, 28 + 4 * i, *g);
                }
            }
        }
    }

    /// The 112 wire bytes.
    pub fn to_bytes(&self) -> [u8; REQUEST_SIZE] {
        let mut b = [0u8; REQUEST_SIZE];
        self.emit(&mut b);
        b
    }
}

/// Parses the segment descriptors of an indirect request: `pages` holds the copied contents of
/// its indirect pages back to back (4 KiB each, in `indirect_grefs` order); the first
/// `out.len()` descriptors are validated into `out`. [`Error::Truncated`] if `pages` is too
/// short, [`Error::BadSegmentCount`] above [`MAX_INDIRECT_SEGMENTS`].
pub fn parse_indirect_segments(pages: &[u8], out: &mut [Segment]) -> Result<(), Error> {
    if out.len() > MAX_INDIRECT_SEGMENTS {
        return Err(Error::BadSegmentCount);
    }
    if pages.len() < out.len() * SEGMENT_SIZE {
        return Err(Error::Truncated);
    }
    for (s, chunk) in out.iter_mut().zip(pages.chunks_exact(SEGMENT_SIZE)) {
        *s = Segment::from_bytes(chunk)?;
    }
    Ok(())
}

/// Number of indirect pages needed for `nr_segments` segments.
pub const fn indirect_pages(nr_segments: u16) -> usize {
    (nr_segments as usize).div_ceil(SEGMENTS_PER_INDIRECT_PAGE)
}

/// A block response (id u64 @0, operation u8 @8, status i16 @10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Response {
    /// Id of the request.
    pub id: u64,
    /// Operation of the request.
    pub operation: u8,
    /// Outcome.
    pub status: Status,
}

impl Response {
    /// Parses and validates 16 bytes.
    pub fn from_bytes(b: &[u8]) -> Result<Self, Error> {
        if b.len() < RESPONSE_SIZE {
            return Err(Error::Truncated);
        }
        let status = match field::i16(b, 10) {
            0 => Status::Okay,
            -1 => Status::Error,
            -2 => Status::EOpNotSupp,
            _ => return Err(Error::BadValue),
        };
        let operation = b[8];
        if operation > op::INDIRECT || operation == op::RESERVED_1 {
            return Err(Error::UnknownOperation);
        }
        Ok(Self {
            id: field::u64(b, 0),
            operation,
            status,
        })
    }
    /// The 16 wire bytes.
    pub fn to_bytes(&self) -> [u8; RESPONSE_SIZE] {
        let mut b = [0u8; RESPONSE_SIZE];
        field::set_u64(&mut b, 0, self.id);
        b[8] = self.operation;
        field::set_u16(&mut b, 10, self.status as i16 as u16);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(g: u32, f: u8, l: u8) -> Segment {
        Segment {
            gref: g,
            first_sect: f,
            last_sect: l,
        }
    }

    #[test]
    fn rw_layout_and_round_trip() {
        let mut segments = [Segment::default(); 11];
        segments[0] = seg(0x10, 0, 7);
        segments[1] = seg(0x11, 2, 3);
        let r = Request::Rw {
            op: RwOp::Write,
            handle: 0x51,
            id: 0xdead_beef,
            sector: 2048,
            nr_segments: 2,
            segments,
        };
        let b = r.to_bytes();
        assert_eq!(&b[..4], &[1, 2, 0x51, 0]);
        assert_eq!(&b[8..16], &0xdead_beefu64.to_le_bytes());
        assert_eq!(&b[16..24], &2048u64.to_le_bytes());
        assert_eq!(&b[24..32], &[0x10, 0, 0, 0, 0, 7, 0, 0]);
        assert_eq!(&b[32..40], &[0x11, 0, 0, 0, 2, 3, 0, 0]);
        assert_eq!(Request::from_bytes(&b), Ok(r));
        assert_eq!(r.id(), 0xdead_beef);
    }

    #[test]
    fn rw_validation() {
        let mut b = [0u8; REQUEST_SIZE];
        b[0] = op::READ;
        assert_eq!(
            Request::from_bytes(&b),
            Err(Error::BadSegmentCount),
            "read with 0 segments"
        );
        b[1] = 12;
        assert_eq!(Request::from_bytes(&b), Err(Error::BadSegmentCount));
        b[1] = 1;
        b[28] = 3;
        b[29] = 2;
        assert_eq!(
            Request::from_bytes(&b),
            Err(Error::BadSector),
            "first > last"
        );
        b[28] = 0;
        b[29] = 8;
        assert_eq!(
            Request::from_bytes(&b),
            Err(Error::BadSector),
            "last beyond the page"
        );
        b[29] = 7;
        assert!(Request::from_bytes(&b).is_ok());
        b[0] = op::FLUSH_DISKCACHE;
        b[1] = 0;
        assert!(Request::from_bytes(&b).is_ok(), "flush without data");
        b[0] = op::RESERVED_1;
        assert_eq!(Request::from_bytes(&b), Err(Error::UnknownOperation));
        b[0] = 200;
        assert_eq!(Request::from_bytes(&b), Err(Error::UnknownOperation));
        assert_eq!(Request::from_bytes(&b[..111]), Err(Error::Truncated));
    }

    #[test]
    fn discard() {
        let r = Request::Discard {
            secure: true,
            handle: 1,
            id: 5,
            sector: 100,
            nr_sectors: 8,
        };
        let b = r.to_bytes();
        assert_eq!(&b[..2], &[5, 1]);
        assert_eq!(&b[24..32], &8u64.to_le_bytes());
        assert_eq!(Request::from_bytes(&b), Ok(r));
        let mut bad = b;
        bad[1] = 2;
        assert_eq!(Request::from_bytes(&bad), Err(Error::BadFlags));
        let overflow = Request::Discard {
            secure: false,
            handle: 1,
            id: 5,
            sector: u64::MAX,
            nr_sectors: 2,
        };
        assert_eq!(
            Request::from_bytes(&overflow.to_bytes()),
            Err(Error::BadValue)
        );
    }

    #[test]
    fn indirect() {
        let mut g = [0u32; 8];
        g[0] = 0x100;
        g[1] = 0x101;
        let r = Request::Indirect {
            op: RwOp::Read,
            handle: 3,
            id: 9,
            sector: 64,
            nr_segments: 600,
            indirect_grefs: g,
        };
        assert_eq!(r.indirect_pages(), 2);
        let b = r.to_bytes();
        assert_eq!(&b[..4], &[6, 0, 0x58, 0x02]);
        assert_eq!(&b[24..26], &[3, 0]);
        assert_eq!(&b[28..36], &[0, 1, 0, 0, 1, 1, 0, 0]);
        assert_eq!(Request::from_bytes(&b), Ok(r));
        let mut bad = b;
        bad[1] = op::FLUSH_DISKCACHE;
        assert_eq!(Request::from_bytes(&bad), Err(Error::UnknownOperation));
        let too_many = Request::Indirect {
            op: RwOp::Write,
            handle: 3,
            id: 9,
            sector: 0,
            nr_segments: 4097,
            indirect_grefs: g,
        };
        assert_eq!(
            Request::from_bytes(&too_many.to_bytes()),
            Err(Error::BadSegmentCount)
        );
        assert_eq!(indirect_pages(4096), 8);
    }

    #[test]
    fn indirect_segment_pages() {
        let mut page = [0u8; 4096 + 16];
        seg(7, 0, 7).emit(&mut page[0..8]);
        seg(8, 1, 1).emit(&mut page[4096..4104]);
        let mut out = [Segment::default(); 513];
        assert_eq!(
            parse_indirect_segments(&page[..4096], &mut out),
            Err(Error::Truncated)
        );
        let mut out = [Segment::default(); 512];
        assert_eq!(parse_indirect_segments(&page[..4096], &mut out), Ok(()));
        assert_eq!(out[0], seg(7, 0, 7));
        let mut out = [Segment::default(); 513];
        assert_eq!(parse_indirect_segments(&page, &mut out), Ok(()));
        assert_eq!(out[512], seg(8, 1, 1));
        page[4100] = 2; // first_sect 2 > last_sect 1
        assert_eq!(
            parse_indirect_segments(&page, &mut out),
            Err(Error::BadSector)
        );
    }

    #[test]
    fn response() {
        let r = Response {
            id: 42,
            operation: op::WRITE,
            status: Status::EOpNotSupp,
        };
        let b = r.to_bytes();
        assert_eq!(b, [42, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0xfe, 0xff, 0, 0, 0, 0]);
        assert_eq!(Response::from_bytes(&b), Ok(r));
        let mut bad = b;
        bad[10] = 7;
        bad[11] = 0;
        assert_eq!(Response::from_bytes(&bad), Err(Error::BadValue));
    }
}
