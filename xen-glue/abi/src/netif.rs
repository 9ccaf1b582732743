//! Network interface wire formats (`public/io/netif.h`).
//!
//! Two rings per queue: TX (frontend sends packets: [`TxRequest`] / [`TxResponse`]) and RX
//! (frontend posts buffers: [`RxRequest`] / [`RxResponse`]). A packet spans one or more slots;
//! `NETTXF_more_data` chains them and `NETTXF_extra_info` means the next slot holds an
//! [`ExtraInfo`] (GSO, multicast add/del, hash), which may chain further with
//! `XEN_NETIF_EXTRA_FLAG_MORE`.
//!
//! Each format has a checked view (`*Packet<T: AsRef<[u8]>>`, length checked once, then field
//! accessors) and a parsed representation with `parse` (validates everything) and `emit`.
//!
//! Slot-size rules enforced here: a TX slot that does not chain further (`more_data` clear) must
//! satisfy `offset + size <= 4096`; the first slot of a multi-slot packet carries the *total* size
//! instead, so use [`validate_tx_packet`] for a whole chain, which checks every fragment and
//! computes the first slot's own length.

use crate::field;
use crate::ring::{RingProtocol, ring_entries};
use crate::{Error, GrantRef, PAGE_SIZE};

/// `sizeof(struct netif_tx_request)`.
pub const TX_REQUEST_SIZE: usize = 12;
/// `sizeof(struct netif_tx_response)`.
pub const TX_RESPONSE_SIZE: usize = 4;
/// `sizeof(struct netif_rx_request)`.
pub const RX_REQUEST_SIZE: usize = 8;
/// `sizeof(struct netif_rx_response)`.
pub const RX_RESPONSE_SIZE: usize = 8;
/// `sizeof(struct netif_extra_info)`.
pub const EXTRA_INFO_SIZE: usize = 8;
/// `XEN_NETIF_NR_SLOTS_MIN`: slots per packet every backend must accept.
pub const NR_SLOTS_MIN: usize = 18;
/// `XEN_NETIF_MAX_TX_SIZE`.
pub const MAX_TX_SIZE: usize = 0xFFFF;

/// TX ring protocol marker (`netif_tx_sring`): 12-byte slots.
#[derive(Debug, Clone, Copy)]
pub struct TxRing;
impl RingProtocol for TxRing {
    type Req = [u8; TX_REQUEST_SIZE];
    type Rsp = [u8; TX_RESPONSE_SIZE];
    const SLOT: usize = TX_REQUEST_SIZE;
}

/// RX ring protocol marker (`netif_rx_sring`): 8-byte slots.
#[derive(Debug, Clone, Copy)]
pub struct RxRing;
impl RingProtocol for RxRing {
    type Req = [u8; RX_REQUEST_SIZE];
    type Rsp = [u8; RX_RESPONSE_SIZE];
    const SLOT: usize = RX_RESPONSE_SIZE;
}

/// `NET_TX_RING_SIZE` on one page.
pub const TX_RING_SIZE: u32 = ring_entries(PAGE_SIZE, TX_REQUEST_SIZE);
/// `NET_RX_RING_SIZE` on one page.
pub const RX_RING_SIZE: u32 = ring_entries(PAGE_SIZE, RX_RESPONSE_SIZE);
const _: () = assert!(TX_RING_SIZE == 256 && RX_RING_SIZE == 256);
const _: () = assert!(EXTRA_INFO_SIZE <= TX_REQUEST_SIZE && EXTRA_INFO_SIZE <= RX_RESPONSE_SIZE);

/// TX request flags (`NETTXF_*`).
pub mod txf {
    /// Protocol checksum field is blank (offload).
    pub const CSUM_BLANK: u16 = 1 << 0;
    /// Packet data has been validated against the protocol checksum.
    pub const DATA_VALIDATED: u16 = 1 << 1;
    /// Packet continues in the next request slot.
    pub const MORE_DATA: u16 = 1 << 2;
    /// An extra-info slot follows.
    pub const EXTRA_INFO: u16 = 1 << 3;
    /// All defined bits.
    pub const ALL: u16 = CSUM_BLANK | DATA_VALIDATED | MORE_DATA | EXTRA_INFO;
}

/// RX response flags (`NETRXF_*`).
pub mod rxf {
    /// Packet data has been validated against the protocol checksum.
    pub const DATA_VALIDATED: u16 = 1 << 0;
    /// Protocol checksum field is blank.
    pub const CSUM_BLANK: u16 = 1 << 1;
    /// Packet continues in the next response slot.
    pub const MORE_DATA: u16 = 1 << 2;
    /// An extra-info slot follows.
    pub const EXTRA_INFO: u16 = 1 << 3;
    /// GSO prefix descriptor (legacy).
    pub const GSO_PREFIX: u16 = 1 << 4;
    /// All defined bits.
    pub const ALL: u16 = DATA_VALIDATED | CSUM_BLANK | MORE_DATA | EXTRA_INFO | GSO_PREFIX;
}

/// Response status (`NETIF_RSP_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i16)]
pub enum Status {
    /// `NETIF_RSP_DROPPED`.
    Dropped = -2,
    /// `NETIF_RSP_ERROR`.
    Error = -1,
    /// `NETIF_RSP_OKAY`.
    Okay = 0,
    /// `NETIF_RSP_NULL`: no response (padding slot of an extra-info).
    Null = 1,
}

impl Status {
    /// Parses a TX response status.
    pub fn from_i16(v: i16) -> Result<Self, Error> {
        Ok(match v {
            -2 => Status::Dropped,
            -1 => Status::Error,
            0 => Status::Okay,
            1 => Status::Null,
            _ => return Err(Error::BadValue),
        })
    }
}

fn check_len(b: &[u8], n: usize) -> Result<(), Error> {
    if b.len() < n {
        Err(Error::Truncated)
    } else {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// TX request

/// Checked view of a `netif_tx_request` (gref u32 @0, offset u16 @4, flags u16 @6, id u16 @8,
/// size u16 @10).
#[derive(Debug, Clone)]
pub struct TxRequestPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TxRequestPacket<T> {
    /// Wraps `buffer` after checking it holds at least 12 bytes.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        check_len(buffer.as_ref(), TX_REQUEST_SIZE)?;
        Ok(Self { buffer })
    }
    /// Grant of the page holding the data.
    pub fn gref(&self) -> u32 {
        field::u32(self.buffer.as_ref(), 0)
    }
    /// Offset of the data in the page.
    pub fn offset(&self) -> u16 {
        field::u16(self.buffer.as_ref(), 4)
    }
    /// `NETTXF_*` flags.
    pub fn flags(&self) -> u16 {
        field::u16(self.buffer.as_ref(), 6)
    }
    /// Request id, echoed in the response.
    pub fn id(&self) -> u16 {
        field::u16(self.buffer.as_ref(), 8)
    }
    /// Size: whole packet for the first slot, fragment for later slots.
    pub fn size(&self) -> u16 {
        field::u16(self.buffer.as_ref(), 10)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TxRequestPacket<T> {
    fn b(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }
    /// Sets the grant.
    pub fn set_gref(&mut self, v: u32) {
        field::set_u32(self.b(), 0, v)
    }
    /// Sets the offset.
    pub fn set_offset(&mut self, v: u16) {
        field::set_u16(self.b(), 4, v)
    }
    /// Sets the flags.
    pub fn set_flags(&mut self, v: u16) {
        field::set_u16(self.b(), 6, v)
    }
    /// Sets the id.
    pub fn set_id(&mut self, v: u16) {
        field::set_u16(self.b(), 8, v)
    }
    /// Sets the size.
    pub fn set_size(&mut self, v: u16) {
        field::set_u16(self.b(), 10, v)
    }
}

/// A validated TX request slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TxRequest {
    /// Grant of the data page.
    pub gref: GrantRef,
    /// Offset in the page (< 4096).
    pub offset: u16,
    /// `NETTXF_*` flags (only defined bits).
    pub flags: u16,
    /// Request id.
    pub id: u16,
    /// Size (see [`TxRequestPacket::size`]).
    pub size: u16,
}

impl TxRequest {
    /// Validates a slot: only defined flags, offset inside the page, and (when the slot does not
    /// chain further) `offset + size <= 4096`.
    pub fn parse<T: AsRef<[u8]>>(p: &TxRequestPacket<T>) -> Result<Self, Error> {
        let r = Self {
            gref: p.gref(),
            offset: p.offset(),
            flags: p.flags(),
            id: p.id(),
            size: p.size(),
        };
        if r.flags & !txf::ALL != 0 {
            return Err(Error::BadFlags);
        }
        if r.offset as usize >= PAGE_SIZE {
            return Err(Error::BadOffset);
        }
        if !r.more_data() {
            r.check_in_page()?;
        }
        Ok(r)
    }

    /// Parses from raw bytes.
    pub fn from_bytes(b: &[u8]) -> Result<Self, Error> {
        Self::parse(&TxRequestPacket::new_checked(b)?)
    }

    /// `offset + size <= 4096` (required for every slot but the first of a chain).
    pub fn check_in_page(&self) -> Result<(), Error> {
        if self.offset as usize + self.size as usize > PAGE_SIZE {
            Err(Error::BadOffset)
        } else {
            Ok(())
        }
    }

    /// `NETTXF_more_data` set.
    pub fn more_data(&self) -> bool {
        self.flags & txf::MORE_DATA != 0
    }

    /// `NETTXF_extra_info` set.
    pub fn extra_info(&self) -> bool {
        self.flags & txf::EXTRA_INFO != 0
    }

    /// Writes the slot.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut TxRequestPacket<T>) {
        p.set_gref(self.gref);
        p.set_offset(self.offset);
        p.set_flags(self.flags);
        p.set_id(self.id);
        p.set_size(self.size);
    }

    /// The 12 wire bytes.
    pub fn to_bytes(&self) -> [u8; TX_REQUEST_SIZE] {
        let mut b = [0u8; TX_REQUEST_SIZE];
        self.emit(&mut TxRequestPacket { buffer: &mut b[..] });
        b
    }
}

/// Validates the data slots of one TX packet (extra-info slots removed): all but the last have
/// `more_data`, the last has not, there are at most `max_slots`, every fragment lies in its
/// page and is non-empty, and the fragments fit in the total size the first slot announces.
/// Returns the number of bytes held by the first slot itself.
pub fn validate_tx_packet(slots: &[TxRequest], max_slots: usize) -> Result<u16, Error> {
    let (first, rest) = slots.split_first().ok_or(Error::BadSegmentCount)?;
    if slots.len() > max_slots {
        return Err(Error::BadSegmentCount);
    }
    for (i, s) in slots.iter().enumerate() {
        let last = i + 1 == slots.len();
        if s.more_data() == last {
            return Err(Error::BadFlags);
        }
        if i > 0 && s.extra_info() {
            return Err(Error::BadFlags);
        }
    }
    let mut frag_total: u32 = 0;
    for s in rest {
        if s.size == 0 {
            return Err(Error::BadValue);
        }
        s.check_in_page()?;
        frag_total += s.size as u32;
    }
    if frag_total > first.size as u32 {
        return Err(Error::BadValue);
    }
    let first_len = (first.size as u32 - frag_total) as u16;
    if first.offset as usize + first_len as usize > PAGE_SIZE {
        return Err(Error::BadOffset);
    }
    Ok(first_len)
}

/// Smallest packet a backend accepts (an Ethernet header, as Linux netback requires).
pub const MIN_PACKET_SIZE: u16 = 14;

/// What one TX slot turned out to be, as returned by [`TxPacketReader::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TxSlot {
    /// The first slot: gref/offset of the first data, and the whole packet size.
    First(TxRequest),
    /// An extra-info slot (answer it with a `NETIF_RSP_NULL` response).
    Extra(ExtraInfo),
    /// A following data fragment (lies within its page, non-empty).
    Fragment(TxRequest),
}

/// Summary of a complete, validated TX packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TxPacketInfo {
    /// The first slot.
    pub first: TxRequest,
    /// Bytes held by the first slot itself (`first.size` minus the fragments).
    pub first_len: u16,
    /// Number of data slots (first + fragments).
    pub data_slots: usize,
    /// Number of extra-info slots.
    pub extra_slots: usize,
    /// GSO request, if any.
    pub gso: Option<(u16, GsoType)>,
    /// Multicast address to add, if any.
    pub mcast_add: Option<[u8; 6]>,
    /// Multicast address to remove, if any.
    pub mcast_del: Option<[u8; 6]>,
    /// Hash from the frontend, if any.
    pub hash: Option<Extra>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TxState {
    Start,
    Extras,
    Fragments,
    Done,
}

/// Streaming validator for one TX packet, fed the slots in ring order (Linux netback's
/// `xenvif_get_extras` + `xenvif_count_requests` rules): first slot; then, if it has
/// `extra_info`, extra-info slots chained by `XEN_NETIF_EXTRA_FLAG_MORE` (each type at most once);
/// then, while `more_data`, fragments. Checks every slot, at most `max_slots` data slots, packet
/// size at least [`MIN_PACKET_SIZE`], fragments fitting in the announced size, and the first
/// slot's own bytes inside its page. After an error the reader stays failed; the caller answers
/// every slot it consumed for this packet with an error (`NETIF_RSP_ERROR`, `NETIF_RSP_NULL`
/// for extra slots) and may treat the frontend as hostile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxPacketReader {
    state: TxState,
    failed: bool,
    max_slots: usize,
    info: TxPacketInfo,
    frag_total: u32,
    more_extras: bool,
}

impl TxPacketReader {
    /// A reader accepting up to `max_slots` data slots per packet (at least
    /// [`NR_SLOTS_MIN`] to interoperate).
    pub fn new(max_slots: usize) -> Self {
        let empty = TxRequest {
            gref: 0,
            offset: 0,
            flags: 0,
            id: 0,
            size: 0,
        };
        Self {
            state: TxState::Start,
            failed: false,
            max_slots,
            info: TxPacketInfo {
                first: empty,
                first_len: 0,
                data_slots: 0,
                extra_slots: 0,
                gso: None,
                mcast_add: None,
                mcast_del: None,
                hash: None,
            },
            frag_total: 0,
            more_extras: false,
        }
    }

    /// Whether the packet is complete ([`finish`](Self::finish) will succeed).
    pub fn is_complete(&self) -> bool {
        self.state == TxState::Done && !self.failed
    }

    /// Number of slots consumed so far (to answer them all on error).
    pub fn slots_consumed(&self) -> usize {
        self.info.data_slots + self.info.extra_slots
    }

    fn fail(&mut self, e: Error) -> Result<TxSlot, Error> {
        self.failed = true;
        Err(e)
    }

    fn after_first_part(&mut self) {
        self.state = if self.info.first.more_data() {
            TxState::Fragments
        } else {
            TxState::Done
        };
    }

    /// Feeds the next slot of the packet.
    pub fn push(&mut self, slot: &[u8]) -> Result<TxSlot, Error> {
        if self.failed {
            return Err(Error::BadValue);
        }
        match self.state {
            TxState::Start => {
                let r = match TxRequest::from_bytes(slot) {
                    Ok(r) => r,
                    Err(e) => return self.fail(e),
                };
                if r.size < MIN_PACKET_SIZE {
                    return self.fail(Error::BadValue);
                }
                self.info.first = r;
                self.info.data_slots = 1;
                if r.extra_info() {
                    self.state = TxState::Extras;
                } else {
                    self.after_first_part();
                }
                self.finish_if_done()?;
                Ok(TxSlot::First(r))
            }
            TxState::Extras => {
                let e = match ExtraInfo::from_bytes(slot) {
                    Ok(e) => e,
                    Err(e) => return self.fail(e),
                };
                let dup = match e.extra {
                    Extra::Gso { size, kind } => self.info.gso.replace((size, kind)).is_some(),
                    Extra::McastAdd(m) => self.info.mcast_add.replace(m).is_some(),
                    Extra::McastDel(m) => self.info.mcast_del.replace(m).is_some(),
                    Extra::Hash { .. } => self.info.hash.replace(e.extra).is_some(),
                };
                if dup {
                    return self.fail(Error::BadValue);
                }
                self.info.extra_slots += 1;
                self.more_extras = e.more;
                if !e.more {
                    self.after_first_part();
                    self.finish_if_done()?;
                }
                Ok(TxSlot::Extra(e))
            }
            TxState::Fragments => {
                let r = match TxRequest::from_bytes(slot) {
                    Ok(r) => r,
                    Err(e) => return self.fail(e),
                };
                if r.extra_info() || r.size == 0 || r.check_in_page().is_err() {
                    return self.fail(Error::BadValue);
                }
                self.info.data_slots += 1;
                self.frag_total += r.size as u32;
                if self.info.data_slots > self.max_slots {
                    return self.fail(Error::BadSegmentCount);
                }
                if self.frag_total > self.info.first.size as u32 {
                    return self.fail(Error::BadValue);
                }
                if !r.more_data() {
                    self.state = TxState::Done;
                    self.finish_if_done()?;
                }
                Ok(TxSlot::Fragment(r))
            }
            TxState::Done => self.fail(Error::BadValue),
        }
    }

    fn finish_if_done(&mut self) -> Result<(), Error> {
        if self.state != TxState::Done {
            return Ok(());
        }
        let first_len = self.info.first.size as u32 - self.frag_total;
        if self.info.first.offset as usize + first_len as usize > PAGE_SIZE {
            self.failed = true;
            return Err(Error::BadOffset);
        }
        self.info.first_len = first_len as u16;
        Ok(())
    }

    /// The packet summary once complete.
    pub fn finish(&self) -> Result<TxPacketInfo, Error> {
        if self.is_complete() {
            Ok(self.info)
        } else {
            Err(Error::Truncated)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// TX response

/// A TX response (id u16 @0, status i16 @2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TxResponse {
    /// Id of the request.
    pub id: u16,
    /// Outcome.
    pub status: Status,
}

impl TxResponse {
    /// Parses 4 bytes.
    pub fn from_bytes(b: &[u8]) -> Result<Self, Error> {
        check_len(b, TX_RESPONSE_SIZE)?;
        Ok(Self {
            id: field::u16(b, 0),
            status: Status::from_i16(field::i16(b, 2))?,
        })
    }
    /// The 4 wire bytes.
    pub fn to_bytes(&self) -> [u8; TX_RESPONSE_SIZE] {
        let mut b = [0u8; TX_RESPONSE_SIZE];
        field::set_u16(&mut b, 0, self.id);
        field::set_u16(&mut b, 2, self.status as i16 as u16);
        b
    }
}

// ---------------------------------------------------------------------------------------------
// RX request / response

/// An RX request (id u16 @0, pad u16 @2, gref u32 @4): a buffer page for the backend to fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RxRequest {
    /// Id, echoed in the response.
    pub id: u16,
    /// Grant of the buffer page.
    pub gref: GrantRef,
}

impl RxRequest {
    /// Parses 8 bytes (the pad is ignored, as Linux does).
    pub fn from_bytes(b: &[u8]) -> Result<Self, Error> {
        check_len(b, RX_REQUEST_SIZE)?;
        Ok(Self {
            id: field::u16(b, 0),
            gref: field::u32(b, 4),
        })
    }
    /// The 8 wire bytes.
    pub fn to_bytes(&self) -> [u8; RX_REQUEST_SIZE] {
        let mut b = [0u8; RX_REQUEST_SIZE];
        field::set_u16(&mut b, 0, self.id);
        field::set_u32(&mut b, 4, self.gref);
        b
    }
}

/// An RX response (id u16 @0, offset u16 @2, flags u16 @4, status i16 @6). `status` is the
/// received size when positive, a `NETIF_RSP_*` error when negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RxResponse {
    /// Id of the request.
    pub id: u16,
    /// Offset of the data in the page.
    pub offset: u16,
    /// `NETRXF_*` flags.
    pub flags: u16,
    /// Size (>= 0) or error (< 0).
    pub status: i16,
}

impl RxResponse {
    /// Parses and validates 8 bytes: defined flags, offset in page, data inside the page,
    /// negative status one of the defined errors.
    pub fn from_bytes(b: &[u8]) -> Result<Self, Error> {
        check_len(b, RX_RESPONSE_SIZE)?;
        let r = Self {
            id: field::u16(b, 0),
            offset: field::u16(b, 2),
            flags: field::u16(b, 4),
            status: field::i16(b, 6),
        };
        if r.flags & !rxf::ALL != 0 {
            return Err(Error::BadFlags);
        }
        if r.offset as usize >= PAGE_SIZE {
            return Err(Error::BadOffset);
        }
        if r.status < 0 {
            Status::from_i16(r.status)?;
        } else if r.offset as usize + r.status as usize > PAGE_SIZE {
            return Err(Error::BadOffset);
        }
        Ok(r)
    }
    /// The 8 wire bytes.
    pub fn to_bytes(&self) -> [u8; RX_RESPONSE_SIZE] {
        let mut b = [0u8; RX_RESPONSE_SIZE];
        field::set_u16(&mut b, 0, self.id);
        field::set_u16(&mut b, 2, self.offset);
        field::set_u16(&mut b, 4, self.flags);
        field::set_u16(&mut b, 6, self.status as u16);
        b
    }
}

// ---------------------------------------------------------------------------------------------
// Extra info

/// `XEN_NETIF_EXTRA_TYPE_*`.
pub mod extra_type {
    /// GSO.
    pub const GSO: u8 = 1;
    /// Multicast address add.
    pub const MCAST_ADD: u8 = 2;
    /// Multicast address delete.
    pub const MCAST_DEL: u8 = 3;
    /// Toeplitz hash value.
    pub const HASH: u8 = 4;
}
/// `XEN_NETIF_EXTRA_FLAG_MORE`: another extra-info slot follows.
pub const EXTRA_FLAG_MORE: u8 = 1;

/// `XEN_NETIF_GSO_TYPE_*` (NONE is not valid inside an extra-info).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum GsoType {
    /// TCP over IPv4.
    TcpV4 = 1,
    /// TCP over IPv6.
    TcpV6 = 2,
}

/// Contents of an extra-info slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Extra {
    /// Segmentation offload: `size` is the MSS (non-zero).
    Gso {
        /// Maximum segment payload.
        size: u16,
        /// Protocol.
        kind: GsoType,
    },
    /// Add a multicast MAC to the filter.
    McastAdd([u8; 6]),
    /// Remove a multicast MAC from the filter.
    McastDel([u8; 6]),
    /// Hash value computed by the peer.
    Hash {
        /// `_XEN_NETIF_CTRL_HASH_TYPE_*` bit number.
        htype: u8,
        /// Algorithm.
        algorithm: u8,
        /// Hash value.
        value: u32,
    },
}

/// A validated extra-info slot (8 bytes: type u8 @0, flags u8 @1, data @2..8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ExtraInfo {
    /// `XEN_NETIF_EXTRA_FLAG_MORE`.
    pub more: bool,
    /// The payload.
    pub extra: Extra,
}

impl ExtraInfo {
    /// Parses and validates: known type, only defined flags, GSO with a real type, non-zero size
    /// and no (undefined) feature bits, multicast addresses with the group bit set, hash type
    /// and algorithm in range.
    pub fn from_bytes(b: &[u8]) -> Result<Self, Error> {
        check_len(b, EXTRA_INFO_SIZE)?;
        let flags = b[1];
        if flags & !EXTRA_FLAG_MORE != 0 {
            return Err(Error::BadFlags);
        }
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&b[2..8]);
        let extra = match b[0] {
            extra_type::GSO => {
                let size = field::u16(b, 2);
                let kind = match b[4] {
                    1 => GsoType::TcpV4,
                    2 => GsoType::TcpV6,
                    _ => return Err(Error::BadValue),
                };
                if size == 0 || b[5] != 0 {
                    return Err(Error::BadValue);
                }
                if field::u16(b, 6) != 0 {
                    return Err(Error::BadFlags);
                }
                Extra::Gso { size, kind }
            }
            extra_type::MCAST_ADD | extra_type::MCAST_DEL => {
                if mac[0] & 1 == 0 {
                    return Err(Error::BadValue);
                }
                if b[0] == extra_type::MCAST_ADD {
                    Extra::McastAdd(mac)
                } else {
                    Extra::McastDel(mac)
                }
            }
            extra_type::HASH => {
                // Hash types are bit numbers 0..=3 (ipv4, ipv4+tcp, ipv6, ipv6+tcp); algorithm
                // 0 = none, 1 = toeplitz.
                if b[2] > 3 || b[3] > 1 {
                    return Err(Error::BadValue);
                }
                Extra::Hash {
                    htype: b[2],
                    algorithm: b[3],
                    value: field::u32(b, 4),
                }
            }
            _ => return Err(Error::UnknownOperation),
        };
        Ok(Self {
            more: flags & EXTRA_FLAG_MORE != 0,
            extra,
        })
    }

    /// The 8 wire bytes (pad them to 12 for a TX slot).
    pub fn to_bytes(&self) -> [u8; EXTRA_INFO_SIZE] {
        let mut b = [0u8; EXTRA_INFO_SIZE];
        b[1] = if self.more { EXTRA_FLAG_MORE } else { 0 };
        match self.extra {
            Extra::Gso { size, kind } => {
                b[0] = extra_type::GSO;
                field::set_u16(&mut b, 2, size);
                b[4] = kind as u8;
            }
            Extra::McastAdd(m) => {
                b[0] = extra_type::MCAST_ADD;
                b[2..8].copy_from_slice(&m);
            }
            Extra::McastDel(m) => {
                b[0] = extra_type::MCAST_DEL;
                b[2..8].copy_from_slice(&m);
            }
            Extra::Hash {
                htype,
                algorithm,
                value,
            } => {
                b[0] = extra_type::HASH;
                b[2] = htype;
                b[3] = algorithm;
                field::set_u32(&mut b, 4, value);
            }
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tx_request_layout() {
        let r = TxRequest {
            gref: 0x11223344,
            offset: 0x100,
            flags: txf::CSUM_BLANK,
            id: 7,
            size: 60,
        };
        let b = r.to_bytes();
        assert_eq!(
            b,
            [0x44, 0x33, 0x22, 0x11, 0x00, 0x01, 0x01, 0x00, 7, 0, 60, 0]
        );
        assert_eq!(TxRequest::from_bytes(&b), Ok(r));
        assert_eq!(TxRequest::from_bytes(&b[..11]), Err(Error::Truncated));
    }

    #[test]
    fn tx_request_rejects_page_crossing_and_unknown_flags() {
        let mut r = TxRequest {
            gref: 1,
            offset: 4000,
            flags: 0,
            id: 1,
            size: 97,
        };
        assert_eq!(TxRequest::from_bytes(&r.to_bytes()), Err(Error::BadOffset));
        r.size = 96;
        assert!(TxRequest::from_bytes(&r.to_bytes()).is_ok());
        r.flags = 0x10;
        assert_eq!(TxRequest::from_bytes(&r.to_bytes()), Err(Error::BadFlags));
        // A first slot of a chain may announce more than a page in total.
        let first = TxRequest {
            gref: 1,
            offset: 0,
            flags: txf::MORE_DATA,
            id: 1,
            size: 6000,
        };
        assert!(TxRequest::from_bytes(&first.to_bytes()).is_ok());
        r = TxRequest {
            gref: 1,
            offset: 4096,
            flags: txf::MORE_DATA,
            id: 1,
            size: 0,
        };
        assert_eq!(TxRequest::from_bytes(&r.to_bytes()), Err(Error::BadOffset));
    }

    #[test]
    fn tx_chain_validation() {
        let first = TxRequest {
            gref: 1,
            offset: 0,
            flags: txf::MORE_DATA,
            id: 1,
            size: 6000,
        };
        let second = TxRequest {
            gref: 2,
            offset: 0,
            flags: 0,
            id: 2,
            size: 2000,
        };
        assert_eq!(validate_tx_packet(&[first, second], NR_SLOTS_MIN), Ok(4000));
        let big = TxRequest {
            size: 7000,
            ..first
        };
        assert_eq!(
            validate_tx_packet(&[big, second], NR_SLOTS_MIN),
            Err(Error::BadOffset)
        );
        let over = TxRequest {
            size: 1000,
            ..first
        };
        assert_eq!(
            validate_tx_packet(&[over, second], NR_SLOTS_MIN),
            Err(Error::BadValue)
        );
        assert_eq!(
            validate_tx_packet(&[first], NR_SLOTS_MIN),
            Err(Error::BadFlags)
        );
        assert_eq!(
            validate_tx_packet(&[], NR_SLOTS_MIN),
            Err(Error::BadSegmentCount)
        );
        assert_eq!(
            validate_tx_packet(&[first, second], 1),
            Err(Error::BadSegmentCount)
        );
    }

    #[test]
    fn tx_reader_with_extras_and_fragments() {
        let first = TxRequest {
            gref: 1,
            offset: 100,
            flags: txf::MORE_DATA | txf::EXTRA_INFO | txf::CSUM_BLANK,
            id: 1,
            size: 9000,
        };
        let gso = ExtraInfo {
            more: true,
            extra: Extra::Gso {
                size: 1448,
                kind: GsoType::TcpV4,
            },
        };
        let mc = ExtraInfo {
            more: false,
            extra: Extra::McastAdd([1, 0, 0x5e, 0, 0, 9]),
        };
        let f1 = TxRequest {
            gref: 2,
            offset: 0,
            flags: txf::MORE_DATA,
            id: 2,
            size: 4096,
        };
        let f2 = TxRequest {
            gref: 3,
            offset: 0,
            flags: 0,
            id: 3,
            size: 1000,
        };
        let mut rd = TxPacketReader::new(NR_SLOTS_MIN);
        assert_eq!(rd.push(&first.to_bytes()), Ok(TxSlot::First(first)));
        let mut e = [0u8; 12];
        e[..8].copy_from_slice(&gso.to_bytes());
        assert_eq!(rd.push(&e), Ok(TxSlot::Extra(gso)));
        e[..8].copy_from_slice(&mc.to_bytes());
        assert_eq!(rd.push(&e), Ok(TxSlot::Extra(mc)));
        assert!(!rd.is_complete());
        assert_eq!(rd.push(&f1.to_bytes()), Ok(TxSlot::Fragment(f1)));
        assert_eq!(rd.push(&f2.to_bytes()), Ok(TxSlot::Fragment(f2)));
        let info = rd.finish().unwrap();
        assert_eq!(info.first_len, 9000 - 5096);
        assert_eq!((info.data_slots, info.extra_slots), (3, 2));
        assert_eq!(info.gso, Some((1448, GsoType::TcpV4)));
        assert_eq!(info.mcast_add, Some([1, 0, 0x5e, 0, 0, 9]));
        assert_eq!(
            rd.push(&f2.to_bytes()),
            Err(Error::BadValue),
            "packet already complete"
        );
    }

    #[test]
    fn tx_reader_rejects() {
        let single = TxRequest {
            gref: 1,
            offset: 0,
            flags: 0,
            id: 1,
            size: 60,
        };
        let mut rd = TxPacketReader::new(NR_SLOTS_MIN);
        rd.push(&single.to_bytes()).unwrap();
        assert!(rd.is_complete());
        // Runt packet.
        let mut rd = TxPacketReader::new(NR_SLOTS_MIN);
        assert!(
            rd.push(&TxRequest { size: 13, ..single }.to_bytes())
                .is_err()
        );
        assert!(rd.finish().is_err());
        // First slot's own part crosses its page.
        let first = TxRequest {
            gref: 1,
            offset: 4000,
            flags: txf::MORE_DATA,
            id: 1,
            size: 300,
        };
        let frag = TxRequest {
            gref: 2,
            offset: 0,
            flags: 0,
            id: 2,
            size: 100,
        };
        let mut rd = TxPacketReader::new(NR_SLOTS_MIN);
        rd.push(&first.to_bytes()).unwrap();
        assert_eq!(rd.push(&frag.to_bytes()), Err(Error::BadOffset));
        assert_eq!(rd.slots_consumed(), 2);
        // Fragments larger than announced.
        let first = TxRequest {
            gref: 1,
            offset: 0,
            flags: txf::MORE_DATA,
            id: 1,
            size: 50,
        };
        let mut rd = TxPacketReader::new(NR_SLOTS_MIN);
        rd.push(&first.to_bytes()).unwrap();
        assert_eq!(rd.push(&frag.to_bytes()), Err(Error::BadValue));
        // Too many slots.
        let first = TxRequest {
            gref: 1,
            offset: 0,
            flags: txf::MORE_DATA,
            id: 1,
            size: 60000,
        };
        let more = TxRequest {
            gref: 2,
            offset: 0,
            flags: txf::MORE_DATA,
            id: 2,
            size: 10,
        };
        let mut rd = TxPacketReader::new(3);
        rd.push(&first.to_bytes()).unwrap();
        rd.push(&more.to_bytes()).unwrap();
        rd.push(&more.to_bytes()).unwrap();
        assert_eq!(rd.push(&more.to_bytes()), Err(Error::BadSegmentCount));
        // Duplicate extra type.
        let first = TxRequest {
            gref: 1,
            offset: 0,
            flags: txf::EXTRA_INFO,
            id: 1,
            size: 60,
        };
        let gso = ExtraInfo {
            more: true,
            extra: Extra::Gso {
                size: 1448,
                kind: GsoType::TcpV6,
            },
        };
        let mut rd = TxPacketReader::new(NR_SLOTS_MIN);
        rd.push(&first.to_bytes()).unwrap();
        rd.push(&gso.to_bytes()).unwrap();
        assert_eq!(rd.push(&gso.to_bytes()), Err(Error::BadValue));
    }

    #[test]
    fn responses_round_trip() {
        let t = TxResponse {
            id: 9,
            status: Status::Dropped,
        };
        assert_eq!(t.to_bytes(), [9, 0, 0xfe, 0xff]);
        assert_eq!(TxResponse::from_bytes(&t.to_bytes()), Ok(t));
        assert_eq!(TxResponse::from_bytes(&[0, 0, 5, 0]), Err(Error::BadValue));
        let r = RxResponse {
            id: 3,
            offset: 2,
            flags: rxf::DATA_VALIDATED,
            status: 1500,
        };
        assert_eq!(RxResponse::from_bytes(&r.to_bytes()), Ok(r));
        let bad = RxResponse { offset: 4000, ..r };
        assert_eq!(
            RxResponse::from_bytes(&bad.to_bytes()),
            Err(Error::BadOffset)
        );
        let q = RxRequest { id: 5, gref: 77 };
        assert_eq!(q.to_bytes(), [5, 0, 0, 0, 77, 0, 0, 0]);
        assert_eq!(RxRequest::from_bytes(&q.to_bytes()), Ok(q));
    }

    #[test]
    fn extra_info() {
        let g = ExtraInfo {
            more: true,
            extra: Extra::Gso {
                size: 1448,
                kind: GsoType::TcpV4,
            },
        };
        let b = g.to_bytes();
        assert_eq!(b, [1, 1, 0xa8, 0x05, 1, 0, 0, 0]);
        assert_eq!(ExtraInfo::from_bytes(&b), Ok(g));
        assert_eq!(
            ExtraInfo::from_bytes(&[1, 0, 0, 0, 1, 0, 0, 0]),
            Err(Error::BadValue)
        );
        assert_eq!(
            ExtraInfo::from_bytes(&[1, 0, 1, 0, 3, 0, 0, 0]),
            Err(Error::BadValue)
        );
        assert_eq!(
            ExtraInfo::from_bytes(&[0, 0, 0, 0, 0, 0, 0, 0]),
            Err(Error::UnknownOperation)
        );
        assert_eq!(
            ExtraInfo::from_bytes(&[5, 0, 0, 0, 0, 0, 0, 0]),
            Err(Error::UnknownOperation)
        );
        let m = ExtraInfo {
            more: false,
            extra: Extra::McastAdd([0x01, 0, 0x5e, 0, 0, 1]),
        };
        assert_eq!(ExtraInfo::from_bytes(&m.to_bytes()), Ok(m));
        assert_eq!(
            ExtraInfo::from_bytes(&[2, 0, 0x02, 0, 0, 0, 0, 1]),
            Err(Error::BadValue)
        );
        assert_eq!(
            ExtraInfo::from_bytes(&[2, 2, 0x01, 0, 0, 0, 0, 1]),
            Err(Error::BadFlags)
        );
        let h = ExtraInfo {
            more: false,
            extra: Extra::Hash {
                htype: 1,
                algorithm: 1,
                value: 0xdead,
            },
        };
        assert_eq!(ExtraInfo::from_bytes(&h.to_bytes()), Ok(h));
    }
}
