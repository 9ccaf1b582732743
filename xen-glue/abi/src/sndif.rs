//! Sound interface wire formats (`public/io/sndif.h`, protocol version 2).
//!
//! Per stream: one request/response ring (64-byte requests and responses) and one event page
//! (`in_cons` u32 @0, `in_prod` u32 @4, 56 reserved bytes, then 63 events of 64 bytes indexed
//! modulo 63).
//!
//! Request layout: id u16 @0, operation u8 @2, 5 reserved bytes, operation body @8:
//! * OPEN: pcm_rate u32 @8, pcm_format u8 @12, pcm_channels u8 @13, reserved u16 @14,
//!   buffer_sz u32 @16, gref_directory u32 @20, period_sz u32 @24.
//! * READ/WRITE/SET_VOLUME/GET_VOLUME/MUTE/UNMUTE: offset u32 @8, length u32 @12 (a range of the
//!   buffer shared at OPEN).
//! * TRIGGER: type u8 @8 (start, pause, stop, resume).
//! * HW_PARAM_QUERY: formats u64 @8, then min/max u32 pairs for rates @16, channels @24,
//!   buffer @32, period @40.
//! * CLOSE: no body.
//!
//! Response: id u16 @0, operation u8 @2, status i32 @4 (0 or a negative errno), and for
//! HW_PARAM_QUERY the same hw-param body @8. Event: id u16 @0, type u8 @2, body @8 (CUR_POS:
//! position u64).

use crate::field;
use crate::ring::{RingProtocol, ring_entries};
use crate::{Error, GrantRef, PAGE_SIZE};

/// `XENSND_PROTOCOL_VERSION`.
pub const PROTOCOL_VERSION: u32 = 2;
/// Size of requests, responses and events.
pub const MSG_SIZE: usize = 64;
/// Offset of the first event in the event page (`sizeof(struct xensnd_event_page)`).
pub const EVENT_RING_OFFSET: usize = 64;
/// Events in the event page (`XENSND_IN_RING_LEN`; not a power of two: indexed modulo).
pub const EVENT_RING_LEN: u32 = ((PAGE_SIZE - EVENT_RING_OFFSET) / MSG_SIZE) as u32;
const _: () = assert!(EVENT_RING_LEN == 63);
/// Request ring entries on one page.
pub const RING_SIZE: u32 = ring_entries(PAGE_SIZE, MSG_SIZE);
const _: () = assert!(RING_SIZE == 32);
/// Largest `XENSND_PCM_FORMAT_*` code.
pub const MAX_PCM_FORMAT: u8 = 24;

/// Names of the `XENSND_PCM_FORMAT_*` codes as used in xenstore (`sample-formats`), indexed by
/// code.
pub const PCM_FORMAT_NAMES: [&str; MAX_PCM_FORMAT as usize + 1] = [
    "s8",
    "u8",
    "s16_le",
    "s16_be",
    "u16_le",
    "u16_be",
    "s24_le",
    "s24_be",
    "u24_le",
    "u24_be",
    "s32_le",
    "s32_be",
    "u32_le",
    "u32_be",
    "float_le",
    "float_be",
    "float64_le",
    "float64_be",
    "iec958_subframe_le",
    "iec958_subframe_be",
    "mu_law",
    "a_law",
    "ima_adpcm",
    "mpeg",
    "gsm",
];

/// The `XENSND_PCM_FORMAT_*` code of a format name (exact match).
pub fn pcm_format_from_name(name: &str) -> Option<u8> {
    PCM_FORMAT_NAMES
        .iter()
        .position(|n| *n == name)
        .map(|i| i as u8)
}

/// Ring protocol marker (`xen_sndif_sring`).
#[derive(Debug, Clone, Copy)]
pub struct SndRing;
impl RingProtocol for SndRing {
    type Req = [u8; MSG_SIZE];
    type Rsp = [u8; MSG_SIZE];
    const SLOT: usize = MSG_SIZE;
}

/// `XENSND_OP_*`.
pub mod op {
    /// Open a stream.
    pub const OPEN: u8 = 0;
    /// Close a stream.
    pub const CLOSE: u8 = 1;
    /// Capture data into the buffer.
    pub const READ: u8 = 2;
    /// Play data from the buffer.
    pub const WRITE: u8 = 3;
    /// Set per-channel volume.
    pub const SET_VOLUME: u8 = 4;
    /// Get per-channel volume.
    pub const GET_VOLUME: u8 = 5;
    /// Mute channels.
    pub const MUTE: u8 = 6;
    /// Unmute channels.
    pub const UNMUTE: u8 = 7;
    /// Change running state.
    pub const TRIGGER: u8 = 8;
    /// Query hardware parameter ranges.
    pub const HW_PARAM_QUERY: u8 = 9;
}

/// `XENSND_OP_TRIGGER_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Trigger {
    /// Start.
    Start = 0,
    /// Pause.
    Pause = 1,
    /// Stop.
    Stop = 2,
    /// Resume.
    Resume = 3,
}

/// Which buffer operation a [`Request::Buffer`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BufferOp {
    /// `XENSND_OP_READ`.
    Read,
    /// `XENSND_OP_WRITE`.
    Write,
    /// `XENSND_OP_SET_VOLUME`.
    SetVolume,
    /// `XENSND_OP_GET_VOLUME`.
    GetVolume,
    /// `XENSND_OP_MUTE`.
    Mute,
    /// `XENSND_OP_UNMUTE`.
    Unmute,
}

impl BufferOp {
    fn code(self) -> u8 {
        match self {
            BufferOp::Read => op::READ,
            BufferOp::Write => op::WRITE,
            BufferOp::SetVolume => op::SET_VOLUME,
            BufferOp::GetVolume => op::GET_VOLUME,
            BufferOp::Mute => op::MUTE,
            BufferOp::Unmute => op::UNMUTE,
        }
    }
}

/// An inclusive `[min, max]` range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Range {
    /// Minimum.
    pub min: u32,
    /// Maximum.
    pub max: u32,
}

/// `struct xensnd_query_hw_param` (40 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct HwParam {
    /// Bit mask of `XENSND_PCM_FORMAT_*` (bit n = format n).
    pub formats: u64,
    /// Sample rates, Hz.
    pub rates: Range,
    /// Channels.
    pub channels: Range,
    /// Buffer size, frames (a frame = channels x bytes per sample; unlike `OPEN`'s `buffer_sz`,
    /// which is in octets).
    pub buffer: Range,
    /// Period size, frames (unlike `OPEN`'s `period_sz`, in octets).
    pub period: Range,
}

impl HwParam {
    fn parse(b: &[u8]) -> Result<Self, Error> {
        let r = |o| Range {
            min: field::u32(b, o),
            max: field::u32(b, o + 4),
        };
        let h = Self {
            formats: field::u64(b, 8),
            rates: r(16),
            channels: r(24),
            buffer: r(32),
            period: r(40),
        };
        if h.formats >> (MAX_PCM_FORMAT + 1) != 0 {
            return Err(Error::BadFlags);
        }
        for x in [h.rates, h.channels, h.buffer, h.period] {
            if x.min > x.max {
                return Err(Error::BadValue);
            }
        }
        Ok(h)
    }
    fn emit(&self, b: &mut [u8]) {
        field::set_u64(b, 8, self.formats);
        for (o, x) in [
            (16, self.rates),
            (24, self.channels),
            (32, self.buffer),
            (40, self.period),
        ] {
            field::set_u32(b, o, x.min);
            field::set_u32(b, o + 4, x.max);
        }
    }
}

/// Parameters of `XENSND_OP_OPEN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Open {
    /// Sample rate, Hz (> 0).
    pub pcm_rate: u32,
    /// `XENSND_PCM_FORMAT_*` (0..=24).
    pub pcm_format: u8,
    /// Channels (>= 1).
    pub pcm_channels: u8,
    /// Shared buffer size, octets (> 0).
    pub buffer_sz: u32,
    /// First page of the buffer's grant directory.
    pub gref_directory: GrantRef,
    /// Position-event period, octets (0 = no events; otherwise <= buffer_sz).
    pub period_sz: u32,
}

/// A validated sound request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Request {
    /// `XENSND_OP_OPEN`.
    Open {
        /// Request id.
        id: u16,
        /// Parameters.
        open: Open,
    },
    /// `XENSND_OP_CLOSE`.
    Close {
        /// Request id.
        id: u16,
    },
    /// An operation on a range of the shared buffer.
    Buffer {
        /// Request id.
        id: u16,
        /// Which operation.
        op: BufferOp,
        /// Offset in the buffer.
        offset: u32,
        /// Length (offset + length does not overflow; check against the buffer with
        /// [`Request::check_buffer_range`]).
        length: u32,
    },
    /// `XENSND_OP_TRIGGER`.
    Trigger {
        /// Request id.
        id: u16,
        /// New state.
        kind: Trigger,
    },
    /// `XENSND_OP_HW_PARAM_QUERY`.
    HwParamQuery {
        /// Request id.
        id: u16,
        /// Requested configuration space.
        param: HwParam,
    },
}

fn check_len(b: &[u8]) -> Result<(), Error> {
    if b.len() < MSG_SIZE {
        Err(Error::Truncated)
    } else {
        Ok(())
    }
}

impl Request {
    /// Parses and validates a 64-byte request.
    pub fn from_bytes(b: &[u8]) -> Result<Self, Error> {
        check_len(b)?;
        let id = field::u16(b, 0);
        Ok(match b[2] {
            op::OPEN => {
                let open = Open {
                    pcm_rate: field::u32(b, 8),
                    pcm_format: b[12],
                    pcm_channels: b[13],
                    buffer_sz: field::u32(b, 16),
                    gref_directory: field::u32(b, 20),
                    period_sz: field::u32(b, 24),
                };
                if open.pcm_format > MAX_PCM_FORMAT {
                    return Err(Error::BadValue);
                }
                if open.pcm_rate == 0 || open.pcm_channels == 0 || open.buffer_sz == 0 {
                    return Err(Error::BadValue);
                }
                if open.period_sz > open.buffer_sz {
                    return Err(Error::BadValue);
                }
                Request::Open { id, open }
            }
            op::CLOSE => Request::Close { id },
            code @ op::READ..=op::UNMUTE => {
                let op = match code {
                    op::READ => BufferOp::Read,
                    op::WRITE => BufferOp::Write,
                    op::SET_VOLUME => BufferOp::SetVolume,
                    op::GET_VOLUME => BufferOp::GetVolume,
                    op::MUTE => BufferOp::Mute,
                    _ => BufferOp::Unmute,
                };
                let offset = field::u32(b, 8);
                let length = field::u32(b, 12);
                if offset.checked_add(length).is_none() {
                    return Err(Error::BadOffset);
                }
                Request::Buffer {
                    id,
                    op,
                    offset,
                    length,
                }
            }
            op::TRIGGER => {
                let kind = match b[8] {
                    0 => Trigger::Start,
                    1 => Trigger::Pause,
                    2 => Trigger::Stop,
                    3 => Trigger::Resume,
                    _ => return Err(Error::BadValue),
                };
                Request::Trigger { id, kind }
            }
            op::HW_PARAM_QUERY => Request::HwParamQuery {
                id,
                param: HwParam::parse(b)?,
            },
            _ => return Err(Error::UnknownOperation),
        })
    }

    /// Request id.
    pub fn id(&self) -> u16 {
        match *self {
            Request::Open { id, .. }
            | Request::Close { id }
            | Request::Buffer { id, .. }
            | Request::Trigger { id, .. }
            | Request::HwParamQuery { id, .. } => id,
        }
    }

    /// Operation code.
    pub fn operation(&self) -> u8 {
        match *self {
            Request::Open { .. } => op::OPEN,
            Request::Close { .. } => op::CLOSE,
            Request::Buffer { op, .. } => op.code(),
            Request::Trigger { .. } => op::TRIGGER,
            Request::HwParamQuery { .. } => op::HW_PARAM_QUERY,
        }
    }

    /// For buffer operations: `offset + length <= buffer_sz` (the size given at OPEN).
    pub fn check_buffer_range(&self, buffer_sz: u32) -> Result<(), Error> {
        match *self {
            Request::Buffer { offset, length, .. }
                if offset as u64 + length as u64 > buffer_sz as u64 =>
            {
                Err(Error::BadOffset)
            }
            _ => Ok(()),
        }
    }

    /// The 64 wire bytes.
    pub fn to_bytes(&self) -> [u8; MSG_SIZE] {
        let mut b = [0u8; MSG_SIZE];
        field::set_u16(&mut b, 0, self.id());
        b[2] = self.operation();
        match *self {
            Request::Open { open, .. } => {
                field::set_u32(&mut b, 8, open.pcm_rate);
                b[12] = open.pcm_format;
                b[13] = open.pcm_channels;
                field::set_u32(&mut b, 16, open.buffer_sz);
                field::set_u32(&mut b, 20, open.gref_directory);
                field::set_u32(&mut b, 24, open.period_sz);
            }
            Request::Close { .. } => {}
            Request::Buffer { offset, length, .. } => {
                field::set_u32(&mut b, 8, offset);
                field::set_u32(&mut b, 12, length);
            }
            Request::Trigger { kind, .. } => b[8] = kind as u8,
            Request::HwParamQuery { param, .. } => param.emit(&mut b),
        }
        b
    }
}

/// A sound response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Response {
    /// Id of the request.
    pub id: u16,
    /// Operation of the request.
    pub operation: u8,
    /// 0 or a negative errno.
    pub status: i32,
    /// Resulting configuration space (HW_PARAM_QUERY only).
    pub hw_param: Option<HwParam>,
}

impl Response {
    /// Parses and validates 64 bytes.
    pub fn from_bytes(b: &[u8]) -> Result<Self, Error> {
        check_len(b)?;
        let operation = b[2];
        if operation > op::HW_PARAM_QUERY {
            return Err(Error::UnknownOperation);
        }
        let status = field::i32(b, 4);
        if status > 0 {
            return Err(Error::BadValue);
        }
        let hw_param = if operation == op::HW_PARAM_QUERY && status == 0 {
            Some(HwParam::parse(b)?)
        } else {
            None
        };
        Ok(Self {
            id: field::u16(b, 0),
            operation,
            status,
            hw_param,
        })
    }
    /// The 64 wire bytes.
    pub fn to_bytes(&self) -> [u8; MSG_SIZE] {
        let mut b = [0u8; MSG_SIZE];
        field::set_u16(&mut b, 0, self.id);
        b[2] = self.operation;
        field::set_u32(&mut b, 4, self.status as u32);
        if let Some(h) = self.hw_param {
            h.emit(&mut b);
        }
        b
    }
}

/// `XENSND_EVT_CUR_POS`.
pub const EVT_CUR_POS: u8 = 0;

/// A back-to-front event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// Current stream position, octets.
    CurPos {
        /// Event id.
        id: u16,
        /// Position.
        position: u64,
    },
}

impl Event {
    /// Parses and validates 64 bytes.
    pub fn from_bytes(b: &[u8]) -> Result<Self, Error> {
        check_len(b)?;
        match b[2] {
            EVT_CUR_POS => Ok(Event::CurPos {
                id: field::u16(b, 0),
                position: field::u64(b, 8),
            }),
            _ => Err(Error::UnknownOperation),
        }
    }
    /// The 64 wire bytes.
    pub fn to_bytes(&self) -> [u8; MSG_SIZE] {
        let mut b = [0u8; MSG_SIZE];
        match *self {
            Event::CurPos { id, position } => {
                field::set_u16(&mut b, 0, id);
                b[2] = EVT_CUR_POS;
                field::set_u64(&mut b, 8, position);
            }
        }
        b
    }
}

/// Byte offset in the event page of event index `idx`.
pub const fn event_offset(idx: u32) -> usize {
    EVENT_RING_OFFSET + (idx % EVENT_RING_LEN) as usize * MSG_SIZE
}

/// Free event slots given the backend's private `in_prod` and the frontend-written `in_cons`;
/// [`Error::RingOverflow`] if `in_cons` claims to have consumed events not yet produced or lags
/// more than the ring.
pub fn event_space(in_prod: u32, in_cons: u32) -> Result<u32, Error> {
    let used = in_prod.wrapping_sub(in_cons);
    if used > EVENT_RING_LEN {
        return Err(Error::RingOverflow);
    }
    Ok(EVENT_RING_LEN - used)
}

/// Offset of `in_cons` in the event page.
pub const EVENT_IN_CONS_OFF: usize = 0;
/// Offset of `in_prod` in the event page.
pub const EVENT_IN_PROD_OFF: usize = 4;

/// Backend side of the event page: produces [`Event`]s for the frontend. The frontend writes
/// `in_cons`; a value claiming more events consumed than produced, or lagging more than the
/// ring, breaks the channel ([`Error::RingOverflow`], then [`Error::RingBroken`]).
#[derive(Debug)]
pub struct EventProducer<M: crate::shmem::SharedMem> {
    mem: M,
    in_prod: u32,
    broken: bool,
}

impl<M: crate::shmem::SharedMem> EventProducer<M> {
    /// Attaches to an event page (one 4 KiB page the frontend granted; it initialised it).
    pub fn attach(mem: M) -> Result<Self, Error> {
        if mem.len() < PAGE_SIZE {
            return Err(Error::RegionTooSmall);
        }
        let in_prod = mem.load_u32(EVENT_IN_PROD_OFF, core::sync::atomic::Ordering::Relaxed);
        Ok(Self {
            mem,
            in_prod,
            broken: false,
        })
    }

    /// Free event slots, after validating the frontend's `in_cons`.
    pub fn space(&mut self) -> Result<u32, Error> {
        if self.broken {
            return Err(Error::RingBroken);
        }
        let cons = self
            .mem
            .load_u32(EVENT_IN_CONS_OFF, core::sync::atomic::Ordering::Acquire);
        event_space(self.in_prod, cons).inspect_err(|_| self.broken = true)
    }

    /// Writes one event and publishes it (the caller then notifies the event channel).
    /// [`Error::RingFull`] if the frontend has not consumed enough.
    pub fn push(&mut self, ev: &Event) -> Result<(), Error> {
        if self.space()? == 0 {
            return Err(Error::RingFull);
        }
        self.mem
            .write_bytes(event_offset(self.in_prod), &ev.to_bytes());
        self.in_prod = self.in_prod.wrapping_add(1);
        self.mem.store_u32(
            EVENT_IN_PROD_OFF,
            self.in_prod,
            core::sync::atomic::Ordering::Release,
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_layout() {
        let open = Open {
            pcm_rate: 48000,
            pcm_format: 2,
            pcm_channels: 2,
            buffer_sz: 16384,
            gref_directory: 0x20,
            period_sz: 4096,
        };
        let r = Request::Open { id: 1, open };
        let b = r.to_bytes();
        assert_eq!(&b[..4], &[1, 0, 0, 0]);
        assert_eq!(&b[8..12], &48000u32.to_le_bytes());
        assert_eq!(&b[12..14], &[2, 2]);
        assert_eq!(&b[16..28], &[0, 0x40, 0, 0, 0x20, 0, 0, 0, 0, 0x10, 0, 0]);
        assert_eq!(Request::from_bytes(&b), Ok(r));
        let bad = Request::Open {
            id: 1,
            open: Open {
                pcm_format: 25,
                ..open
            },
        };
        assert_eq!(Request::from_bytes(&bad.to_bytes()), Err(Error::BadValue));
        let bad = Request::Open {
            id: 1,
            open: Open {
                period_sz: 20000,
                ..open
            },
        };
        assert_eq!(Request::from_bytes(&bad.to_bytes()), Err(Error::BadValue));
    }

    #[test]
    fn buffer_ops_and_trigger() {
        let w = Request::Buffer {
            id: 7,
            op: BufferOp::Write,
            offset: 4096,
            length: 4096,
        };
        let b = w.to_bytes();
        assert_eq!(b[2], op::WRITE);
        assert_eq!(Request::from_bytes(&b), Ok(w));
        assert_eq!(w.check_buffer_range(8192), Ok(()));
        assert_eq!(w.check_buffer_range(8191), Err(Error::BadOffset));
        let mut o = b;
        o[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Request::from_bytes(&o), Err(Error::BadOffset));
        let t = Request::Trigger {
            id: 2,
            kind: Trigger::Resume,
        };
        assert_eq!(Request::from_bytes(&t.to_bytes()), Ok(t));
        let mut bt = t.to_bytes();
        bt[8] = 4;
        assert_eq!(Request::from_bytes(&bt), Err(Error::BadValue));
        let mut u = [0u8; 64];
        u[2] = 10;
        assert_eq!(Request::from_bytes(&u), Err(Error::UnknownOperation));
        for code in [
            op::SET_VOLUME,
            op::GET_VOLUME,
            op::MUTE,
            op::UNMUTE,
            op::READ,
            op::CLOSE,
        ] {
            u[2] = code;
            let r = Request::from_bytes(&u).unwrap();
            assert_eq!(r.operation(), code);
        }
    }

    #[test]
    fn hw_param_and_response() {
        let param = HwParam {
            formats: 1 << 2,
            rates: Range {
                min: 8000,
                max: 48000,
            },
            channels: Range { min: 1, max: 2 },
            buffer: Range {
                min: 4096,
                max: 65536,
            },
            period: Range {
                min: 1024,
                max: 8192,
            },
        };
        let q = Request::HwParamQuery { id: 3, param };
        let b = q.to_bytes();
        assert_eq!(&b[8..16], &4u64.to_le_bytes());
        assert_eq!(&b[40..48], &[0, 4, 0, 0, 0, 0x20, 0, 0]);
        assert_eq!(Request::from_bytes(&b), Ok(q));
        let rsp = Response {
            id: 3,
            operation: op::HW_PARAM_QUERY,
            status: 0,
            hw_param: Some(param),
        };
        assert_eq!(Response::from_bytes(&rsp.to_bytes()), Ok(rsp));
        let err = Response {
            id: 4,
            operation: op::OPEN,
            status: -22,
            hw_param: None,
        };
        assert_eq!(&err.to_bytes()[4..8], &(-22i32).to_le_bytes());
        assert_eq!(Response::from_bytes(&err.to_bytes()), Ok(err));
        let bad = HwParam {
            rates: Range { min: 2, max: 1 },
            ..param
        };
        assert_eq!(
            Request::from_bytes(&Request::HwParamQuery { id: 1, param: bad }.to_bytes()),
            Err(Error::BadValue)
        );
        let bad = HwParam {
            formats: 1 << 25,
            ..param
        };
        assert_eq!(
            Request::from_bytes(&Request::HwParamQuery { id: 1, param: bad }.to_bytes()),
            Err(Error::BadFlags)
        );
    }

    #[cfg(feature = "alloc")]
    #[test]
    fn event_producer() {
        use crate::shmem::{HostMem, SharedMem};
        use core::sync::atomic::Ordering;
        let m = HostMem::pages(1);
        let mut p = EventProducer::attach(m.clone()).unwrap();
        for i in 0..63u64 {
            p.push(&Event::CurPos {
                id: i as u16,
                position: i * 10,
            })
            .unwrap();
        }
        assert_eq!(
            p.push(&Event::CurPos { id: 0, position: 0 }),
            Err(Error::RingFull)
        );
        let mut b = [0u8; 64];
        m.read_bytes(event_offset(5), &mut b);
        assert_eq!(
            Event::from_bytes(&b),
            Ok(Event::CurPos {
                id: 5,
                position: 50
            })
        );
        assert_eq!(m.load_u32(EVENT_IN_PROD_OFF, Ordering::Acquire), 63);
        m.store_u32(EVENT_IN_CONS_OFF, 10, Ordering::Release);
        p.push(&Event::CurPos {
            id: 63,
            position: 630,
        })
        .unwrap();
        m.read_bytes(event_offset(63), &mut b);
        assert_eq!(event_offset(63), event_offset(0));
        assert_eq!(
            Event::from_bytes(&b),
            Ok(Event::CurPos {
                id: 63,
                position: 630
            })
        );
        // A hostile in_cons beyond in_prod breaks only this channel.
        m.store_u32(EVENT_IN_CONS_OFF, 100, Ordering::Release);
        assert_eq!(p.space(), Err(Error::RingOverflow));
        assert_eq!(
            p.push(&Event::CurPos { id: 0, position: 0 }),
            Err(Error::RingBroken)
        );
    }

    #[test]
    fn events() {
        let e = Event::CurPos {
            id: 9,
            position: 123_456,
        };
        assert_eq!(Event::from_bytes(&e.to_bytes()), Ok(e));
        assert_eq!(event_offset(0), 64);
        assert_eq!(event_offset(63), 64);
        assert_eq!(event_offset(62), 64 + 62 * 64);
        assert_eq!(event_space(10, 10), Ok(63));
        assert_eq!(event_space(73, 10), Ok(0));
        assert_eq!(event_space(10, 11), Err(Error::RingOverflow));
    }
}
