//! The engine of one netif interface (one queue): TX and RX rings, packet assembly and
//! validation, copies through [`GrantAccess`], responses and notifications.
//!
//! The owner (net-dd's vif task) calls [`Netback::poll_tx`] when the TX event channel fired (or
//! when `more` was reported), [`Netback::queue_rx`] for each frame switched to this guest, and
//! [`Netback::poll_rx`] after queueing or when the RX event channel fired; it kicks the frontend
//! when a poll says `notify`. All three are non-blocking and bounded.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use xen_abi::netif::{
    self, ExtraInfo, NR_SLOTS_MIN, RxRequest, RxResponse, RxRing, Status, TxPacketReader,
    TxRequest, TxResponse, TxRing, TxSlot, rxf, txf,
};
use xen_abi::ring::{BackRing, REQ_EVENT_OFF};
use xen_abi::shmem::SharedMem;
use xen_abi::PAGE_SIZE;

use iconnect::qos::XenRate;

use crate::grant::{CopyIn, CopyOut, GrantAccess};
use crate::negotiate::FrontendFeatures;
use crate::{Error, csum};

/// Largest frame delivered to a frontend that negotiated `feature-sg` (`XEN_NETIF_MAX_TX_SIZE`;
/// 16 slots, within netfront's 18).
pub const MAX_SG_FRAME: usize = netif::MAX_TX_SIZE;

/// Limits of the RX queue (frames waiting for the frontend to post buffers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxQueueLimits {
    /// Frames at most.
    pub frames: usize,
    /// Bytes at most (sum of frame lengths).
    pub bytes: usize,
}

impl Default for RxQueueLimits {
    fn default() -> Self {
        Self {
            frames: 128,
            bytes: 512 * 1024,
        }
    }
}

/// Counters of one interface.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames received from the frontend and handed to the owner.
    pub tx_packets: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// TX packets answered with `ERROR` because they were malformed in a non-fatal way (runt,
    /// fragments larger than announced, empty fragment).
    pub tx_malformed: u64,
    /// TX packets answered with `ERROR` because they asked for something not negotiated
    /// (GSO, multicast control).
    pub tx_unsupported: u64,
    /// TX packets answered with `ERROR` because a grant copy failed.
    pub tx_copy_errors: u64,
    /// Frames delivered into the frontend's buffers.
    pub rx_packets: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Frames dropped because the RX queue was full.
    pub rx_queue_full: u64,
    /// Frames dropped because of their size (empty, or larger than the frontend can take).
    pub rx_bad_size: u64,
    /// Frames dropped because their blank checksum could not be completed.
    pub rx_csum_errors: u64,
    /// RX slots answered with `ERROR` because the copy into the buffer failed.
    pub rx_copy_errors: u64,
}

/// A frame the frontend sent, lent to the owner during [`Netback::poll_tx`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxFrame<'a> {
    /// The Ethernet frame (without FCS), a private copy.
    pub data: &'a [u8],
    /// `NETTXF_csum_blank`: the L4 checksum is not filled in (see [`csum::fill_l4_checksum`]).
    pub csum_blank: bool,
    /// `NETTXF_data_validated`: the data was checked (or generated) by the frontend.
    pub data_validated: bool,
}

/// What a [`Netback::poll_tx`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TxPoll {
    /// Packets consumed (delivered or answered with an error).
    pub packets: usize,
    /// The frontend must be notified on the TX event channel.
    pub notify: bool,
    /// Requests remain (the budget ran out, or some arrived during the final check): poll again
    /// without waiting for an event.
    pub more: bool,
    /// The rate limit stopped the poll: requests may remain; poll again at this time
    /// (microseconds, the clock of `now_us`).
    pub throttled_until: Option<u64>,
}

/// Linux netback's TX credit scheduler for Xen's vif `rate = "<bytes>,<usecs>"`: each window of
/// `usecs` adds `bytes` of credit, capped at a burst of `max(128 KiB, bytes)` (so a 64 KiB packet
/// always fits); a packet is started while credit remains and charged its full size (the
/// credit may go negative, repaid by later windows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Credit {
    bytes: u64,
    usecs: u64,
    max_burst: i64,
    remaining: i64,
    window_start: u64,
}

impl Credit {
    fn new(rate: XenRate, now_us: u64) -> Self {
        let bytes = rate.bytes.min(i64::MAX as u64 / 2);
        Self {
            bytes,
            usecs: u64::from(rate.usecs).max(1),
            max_burst: (bytes as i64).max(131_072),
            remaining: bytes as i64,
            window_start: now_us,
        }
    }

    /// Adds the credit of every window completed by `now_us`.
    fn refill(&mut self, now_us: u64) {
        if now_us < self.window_start {
            return;
        }
        let windows = (now_us - self.window_start) / self.usecs;
        if windows > 0 {
            let add = (windows.min(i64::MAX as u64) as i64).saturating_mul(self.bytes as i64);
            self.remaining = self.remaining.saturating_add(add).min(self.max_burst);
            self.window_start += windows * self.usecs;
        }
    }

    /// `None` if a packet may start now, else when the next window opens.
    fn blocked_until(&self) -> Option<u64> {
        (self.remaining <= 0).then(|| self.window_start.saturating_add(self.usecs))
    }
}

/// Checksum state of a frame handed to [`Netback::queue_rx`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RxMeta {
    /// The L4 checksum is blank (partial: pseudo-header sum only), as sent by a frontend with
    /// `NETTXF_csum_blank`.
    pub csum_blank: bool,
    /// The data is known good (`NETRXF_data_validated`).
    pub data_validated: bool,
}

impl RxMeta {
    /// The metadata a frame from [`TxFrame`] carries to another interface.
    pub fn from_tx(f: &TxFrame<'_>) -> Self {
        Self {
            csum_blank: f.csum_blank,
            data_validated: f.data_validated,
        }
    }
}

/// What a [`Netback::poll_rx`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RxPoll {
    /// Frames copied into the frontend's buffers.
    pub delivered: usize,
    /// The frontend must be notified on the RX event channel.
    pub notify: bool,
    /// Frames still queued.
    pub queued: usize,
    /// The head frame waits for buffers; `req_event` is armed, so the frontend's next posted
    /// buffer raises the RX event.
    pub waiting_for_buffers: bool,
}

/// What [`Netback::push_rx`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxPush {
    /// Copied straight into the frontend's posted buffers; the response is pushed and becomes
    /// visible at the next [`Netback::poll_rx`] (which publishes and says whether to notify).
    Delivered,
    /// Queued (frames were queued ahead of it, or its buffers are not posted yet).
    Queued,
}

/// Largest number of RX slots one frame takes.
const RX_MAX_SLOTS: usize = MAX_SG_FRAME.div_ceil(PAGE_SIZE);
/// Spare RX frame buffers kept for reuse at most.
const RX_SPARE: usize = 16;
/// Spare buffers above this capacity are freed rather than kept (an occasional 64 KiB frame
/// should not pin 64 KiB per spare slot).
const RX_SPARE_MAX_CAPACITY: usize = 2 * PAGE_SIZE;

/// One queued RX frame.
#[derive(Debug)]
struct RxFrame {
    data: Vec<u8>,
    meta: RxMeta,
}

/// The backend engine of one netif interface over its two rings.
#[derive(Debug)]
pub struct Netback<M: SharedMem> {
    tx: BackRing<M, TxRing>,
    rx: BackRing<M, RxRing>,
    features: FrontendFeatures,
    limits: RxQueueLimits,
    /// Private TX frame buffer, reused.
    frame: Vec<u8>,
    /// Fragments of the TX packet being assembled.
    frags: Vec<TxRequest>,
    /// Response plan of the TX packet being assembled: (id, is extra-info slot).
    rsp: Vec<(u16, bool)>,
    rxq: VecDeque<RxFrame>,
    rxq_bytes: usize,
    /// Buffers of delivered queued frames, reused by [`queue_rx`](Self::queue_rx) (no
    /// allocation per frame in steady state).
    rx_spare: Vec<Vec<u8>>,
    credit: Option<Credit>,
    stats: Stats,
    broken: Option<Error>,
}

fn bad(e: xen_abi::Error) -> Error {
    Error::BadTxPacket(e)
}

impl<M: SharedMem> Netback<M> {
    /// Attaches to the frontend's TX and RX rings (already mapped/reachable as `tx_mem` and
    /// `rx_mem`; the engine writes nothing until it answers a request) with the features the
    /// frontend negotiated.
    pub fn new(
        tx_mem: M,
        rx_mem: M,
        features: FrontendFeatures,
        limits: RxQueueLimits,
    ) -> Result<Self, Error> {
        Ok(Self {
            tx: BackRing::attach(tx_mem).map_err(Error::Ring)?,
            rx: BackRing::attach(rx_mem).map_err(Error::Ring)?,
            features,
            limits,
            frame: Vec::new(),
            frags: Vec::with_capacity(NR_SLOTS_MIN),
            rsp: Vec::with_capacity(NR_SLOTS_MIN + 4),
            rxq: VecDeque::new(),
            rxq_bytes: 0,
            rx_spare: Vec::new(),
            credit: None,
            stats: Stats::default(),
            broken: None,
        })
    }

    /// Limits the TX direction (guest -> backend) to Xen's vif `rate` (see
    /// [`negotiate::xen_rate`](crate::negotiate::xen_rate)), or lifts the limit. The first window
    /// starts at `now_us` with one window's credit.
    pub fn set_tx_rate(&mut self, rate: Option<XenRate>, now_us: u64) {
        self.credit = rate.map(|r| Credit::new(r, now_us));
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The fatal error that broke this interface, if any.
    pub fn broken(&self) -> Option<Error> {
        self.broken
    }

    /// Largest frame [`queue_rx`](Self::queue_rx) accepts for this frontend.
    pub fn max_rx_frame(&self) -> usize {
        if self.features.sg { MAX_SG_FRAME } else { PAGE_SIZE }
    }

    fn check_alive(&self) -> Result<(), Error> {
        match self.broken {
            Some(_) => Err(Error::Broken),
            None => Ok(()),
        }
    }

    fn fail(&mut self, e: Error) -> Error {
        if e.is_fatal() && self.broken.is_none() {
            self.broken = Some(e);
        }
        e
    }

    // -----------------------------------------------------------------------------------------
    // TX: guest -> backend

    /// Consumes up to `budget` TX packets, handing each good frame to `deliver`, answers every
    /// slot, publishes the responses and runs the final check for requests. `now_us` is the
    /// current time in microseconds (any monotonic origin), used by the rate limit only.
    ///
    /// A fatal protocol violation returns the error (see [`Error::is_fatal`]); the interface is
    /// then broken and every later call returns [`Error::Broken`].
    pub fn poll_tx<G, F>(&mut self, now_us: u64, grants: &mut G, budget: usize, mut deliver: F) -> Result<TxPoll, Error>
    where
        G: GrantAccess + ?Sized,
        F: FnMut(TxFrame<'_>),
    {
        self.check_alive()?;
        let mut poll = TxPoll::default();
        if let Some(c) = &mut self.credit {
            c.refill(now_us);
        }
        loop {
            if let Some(t) = self.credit.and_then(|c| c.blocked_until()) {
                poll.throttled_until = Some(t);
                break;
            }
            if poll.packets >= budget {
                // Out of budget: report remaining work; if there is none, still arm req_event
                // (the final check), or the frontend would never kick us again.
                poll.more = match self.tx.unconsumed_requests() {
                    Ok(0) => self.tx.final_check_for_requests(),
                    Ok(_) => Ok(true),
                    Err(e) => Err(e),
                }
                .map_err(|e| self.fail(Error::Ring(e)))?;
                break;
            }
            let first = match self.tx.pop_request() {
                Ok(Some(r)) => r,
                Ok(None) => {
                    // RING_FINAL_CHECK_FOR_REQUESTS: arm req_event, then look once more.
                    match self.tx.final_check_for_requests() {
                        Ok(true) => continue,
                        Ok(false) => break,
                        Err(e) => return Err(self.fail(Error::Ring(e))),
                    }
                }
                Err(e) => return Err(self.fail(Error::Ring(e))),
            };
            if let Err(e) = self.tx_packet(&first, grants, &mut deliver) {
                // Give back the slots of the packets completed before the violation.
                self.tx.publish_responses();
                return Err(self.fail(e));
            }
            poll.packets += 1;
        }
        poll.notify = self.tx.publish_responses_and_check_notify();
        Ok(poll)
    }

    fn pop_tx(&mut self) -> Result<[u8; netif::TX_REQUEST_SIZE], Error> {
        match self.tx.pop_request() {
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err(Error::IncompletePacket),
            Err(e) => Err(Error::Ring(e)),
        }
    }

    /// One packet starting with slot `first_raw` (already consumed).
    fn tx_packet<G, F>(&mut self, first_raw: &[u8; netif::TX_REQUEST_SIZE], grants: &mut G, deliver: &mut F) -> Result<(), Error>
    where
        G: GrantAccess + ?Sized,
        F: FnMut(TxFrame<'_>),
    {
        self.rsp.clear();
        self.frags.clear();
        let first = TxRequest::from_bytes(first_raw).map_err(bad)?;
        self.rsp.push((first.id, false));
        if let Some(c) = &mut self.credit {
            // Charged like Linux: the announced size, before validation.
            c.remaining = c.remaining.saturating_sub(i64::from(first.size));
        }
        // Non-fatal faults (Linux netback answers them with errors and goes on): a runt
        // packet, fragments beyond the announced size, empty fragments. The rest of such a
        // packet is still consumed and checked for the fatal faults.
        let mut dropped = first.size < netif::MIN_PACKET_SIZE;
        let mut reader = TxPacketReader::new(NR_SLOTS_MIN);
        if !dropped {
            reader.push(first_raw).map_err(bad)?;
        }
        let mut in_extras = first.extra_info();
        let mut more_data = first.more_data();
        let mut frag_total: u32 = 0;
        let mut data_slots = 1usize;
        while in_extras || more_data {
            let raw = self.pop_tx()?;
            if in_extras {
                self.rsp.push((first.id, true));
                let e = if dropped {
                    ExtraInfo::from_bytes(&raw).map_err(bad)?
                } else {
                    match reader.push(&raw).map_err(bad)? {
                        TxSlot::Extra(e) => e,
                        _ => return Err(bad(xen_abi::Error::BadValue)),
                    }
                };
                in_extras = e.more;
            } else {
                let r = TxRequest::from_bytes(&raw).map_err(bad)?;
                self.rsp.push((r.id, false));
                data_slots += 1;
                if data_slots > NR_SLOTS_MIN {
                    return Err(Error::TooManySlots);
                }
                if !dropped && (r.size == 0 || frag_total + r.size as u32 > first.size as u32) {
                    dropped = true;
                }
                if dropped {
                    r.check_in_page().map_err(bad)?;
                    if r.extra_info() {
                        return Err(bad(xen_abi::Error::BadFlags));
                    }
                } else {
                    reader.push(&raw).map_err(bad)?;
                    self.frags.push(r);
                }
                frag_total += r.size as u32;
                more_data = r.more_data();
            }
        }

        let status = if dropped {
            self.stats.tx_malformed += 1;
            Status::Error
        } else {
            let info = reader.finish().map_err(bad)?;
            if info.gso.is_some() || info.mcast_add.is_some() || info.mcast_del.is_some() {
                self.stats.tx_unsupported += 1;
                Status::Error
            } else if self.copy_tx(grants, &first, info.first_len as usize).is_err() {
                self.stats.tx_copy_errors += 1;
                Status::Error
            } else {
                Status::Okay
            }
        };
        for &(id, extra) in &self.rsp {
            let status = if extra { Status::Null } else { status };
            self.tx
                .push_response(&TxResponse { id, status }.to_bytes())
                .map_err(Error::Ring)?;
        }
        if status == Status::Okay {
            self.stats.tx_packets += 1;
            self.stats.tx_bytes += self.frame.len() as u64;
            deliver(TxFrame {
                data: &self.frame,
                csum_blank: first.flags & txf::CSUM_BLANK != 0,
                data_validated: first.flags & txf::DATA_VALIDATED != 0,
            });
        }
        Ok(())
    }

    /// Copies a validated packet into `self.frame`, all slots in one batch.
    fn copy_tx<G: GrantAccess + ?Sized>(&mut self, grants: &mut G, first: &TxRequest, first_len: usize) -> Result<(), Error> {
        let total = first.size as usize;
        if self.frags.len() >= NR_SLOTS_MIN {
            // tx_packet refuses more data slots; never index past the array below.
            return Err(Error::TooManySlots);
        }
        // Not cleared first: only growth is zero-filled; the copies below cover every byte
        // (checked), and a frame whose copy fails is never handed out.
        self.frame.resize(total, 0);
        let mut ops: [CopyIn<'_>; NR_SLOTS_MIN] = core::array::from_fn(|_| CopyIn {
            gref: 0,
            offset: 0,
            dst: &mut [],
            ok: false,
        });
        let mut n_ops = 0;
        let (head, mut rest) = self.frame.split_at_mut(first_len.min(total));
        if !head.is_empty() {
            ops[0] = CopyIn {
                gref: first.gref,
                offset: first.offset,
                dst: head,
                ok: false,
            };
            n_ops = 1;
        }
        for f in &self.frags {
            let n = f.size as usize;
            if n > rest.len() {
                return Err(Error::GrantCopy);
            }
            let (dst, tail) = rest.split_at_mut(n);
            rest = tail;
            ops[n_ops] = CopyIn {
                gref: f.gref,
                offset: f.offset,
                dst,
                ok: false,
            };
            n_ops += 1;
        }
        if !rest.is_empty() {
            return Err(Error::GrantCopy);
        }
        let ops = &mut ops[..n_ops];
        grants.copy_from_batch(ops);
        if ops.iter().all(|op| op.ok) { Ok(()) } else { Err(Error::GrantCopy) }
    }

    /// Exchanges the engine's TX frame buffer with `buf`, without copying: right after a
    /// [`poll_tx`](Self::poll_tx) whose last consumed packet was handed to `deliver`, `buf`
    /// then holds exactly that frame, and the engine assembles the next frames in `buf`'s old
    /// allocation. (With a budget of one, the frame of that poll.)
    pub fn swap_tx_buffer(&mut self, buf: &mut Vec<u8>) {
        core::mem::swap(&mut self.frame, buf);
    }

    // -----------------------------------------------------------------------------------------
    // RX: backend -> guest

    /// Queues a frame for the frontend (copied; never blocks). Frames that cannot be delivered
    /// are dropped and counted: [`Error::FrameSize`] (empty or above
    /// [`max_rx_frame`](Self::max_rx_frame)), [`Error::QueueFull`], [`Error::Checksum`] (a blank
    /// checksum the frontend cannot take and that could not be completed). A blank checksum is
    /// completed here when the frontend did not negotiate checksum offload for the frame's IP
    /// version.
    pub fn queue_rx(&mut self, frame: &[u8], meta: RxMeta) -> Result<(), Error> {
        self.check_alive()?;
        if frame.is_empty() || frame.len() > self.max_rx_frame() {
            self.stats.rx_bad_size += 1;
            return Err(Error::FrameSize);
        }
        if self.rxq.len() >= self.limits.frames || self.rxq_bytes + frame.len() > self.limits.bytes {
            self.stats.rx_queue_full += 1;
            return Err(Error::QueueFull);
        }
        let mut data = self.rx_spare.pop().unwrap_or_default();
        data.clear();
        data.extend_from_slice(frame);
        let mut meta = meta;
        if meta.csum_blank && !self.takes_blank_csum(&data) {
            if csum::fill_l4_checksum(&mut data).is_err() {
                self.stats.rx_csum_errors += 1;
                self.recycle_rx(data);
                return Err(Error::Checksum);
            }
            meta = RxMeta {
                csum_blank: false,
                data_validated: true,
            };
        }
        self.rxq_bytes += data.len();
        self.rxq.push_back(RxFrame { data, meta });
        Ok(())
    }

    /// Hands a frame to the frontend with one copy when possible: if no frame is queued ahead
    /// of it and the buffers it needs are posted, it is copied straight from `frame` into them
    /// ([`RxPush::Delivered`]; the response is pushed, and published by the next
    /// [`poll_rx`](Self::poll_rx), so a burst costs one publish and at most one notification).
    /// Otherwise it is queued exactly like [`queue_rx`](Self::queue_rx) (same drops and
    /// counters). A blank checksum the frontend cannot take is completed on the queued copy.
    /// The caller must call [`poll_rx`](Self::poll_rx) before it sleeps.
    pub fn push_rx<G: GrantAccess + ?Sized>(
        &mut self,
        grants: &mut G,
        frame: &[u8],
        meta: RxMeta,
    ) -> Result<RxPush, Error> {
        self.check_alive()?;
        let direct = self.rxq.is_empty()
            && !frame.is_empty()
            && frame.len() <= self.max_rx_frame()
            && (!meta.csum_blank || self.takes_blank_csum(frame));
        if direct {
            let needed = frame.len().div_ceil(PAGE_SIZE) as u32;
            match self.rx_slots_available(needed) {
                Ok(true) => {
                    self.rx_frame(grants, frame, meta)
                        .map_err(|e| self.fail(e))?;
                    return Ok(RxPush::Delivered);
                }
                Ok(false) => {}
                Err(e) => return Err(self.fail(e)),
            }
        }
        self.queue_rx(frame, meta).map(|()| RxPush::Queued)
    }

    /// Whether the frontend negotiated checksum offload for this frame's IP version.
    fn takes_blank_csum(&self, frame: &[u8]) -> bool {
        match csum::ip_version(frame) {
            Some(4) => self.features.ip_csum_offload,
            Some(6) => self.features.ipv6_csum_offload,
            _ => false,
        }
    }

    fn recycle_rx(&mut self, data: Vec<u8>) {
        if self.rx_spare.len() < RX_SPARE && data.capacity() <= RX_SPARE_MAX_CAPACITY {
            self.rx_spare.push(data);
        }
    }

    /// Frames waiting in the RX queue.
    pub fn rx_queued(&self) -> usize {
        self.rxq.len()
    }

    /// Delivers up to `budget` queued frames into buffers the frontend posted, publishes the
    /// responses and tells whether to notify. A frame is only started when all the buffers it
    /// needs are posted; otherwise `req_event` is armed and the frame stays queued.
    pub fn poll_rx<G: GrantAccess + ?Sized>(&mut self, grants: &mut G, budget: usize) -> Result<RxPoll, Error> {
        self.check_alive()?;
        let mut poll = RxPoll::default();
        while poll.delivered < budget {
            let Some(head) = self.rxq.front() else { break };
            let needed = head.data.len().div_ceil(PAGE_SIZE) as u32;
            match self.rx_slots_available(needed) {
                Ok(true) => {}
                Ok(false) => {
                    poll.waiting_for_buffers = true;
                    break;
                }
                Err(e) => return Err(self.fail(e)),
            }
            let Some(frame) = self.rxq.pop_front() else { break };
            self.rxq_bytes -= frame.data.len();
            if let Err(e) = self.rx_frame(grants, &frame.data, frame.meta) {
                return Err(self.fail(e));
            }
            self.recycle_rx(frame.data);
            poll.delivered += 1;
        }
        poll.notify = self.rx.publish_responses_and_check_notify();
        poll.queued = self.rxq.len();
        Ok(poll)
    }

    /// Whether `needed` rx requests are posted; if not, arms `req_event` at the next request and
    /// re-checks (Linux's `xenvif_rx_ring_slots_available`). Bounded: `req_prod` can only move
    /// forward, by at most a ring, before the ring rejects it.
    fn rx_slots_available(&mut self, needed: u32) -> Result<bool, Error> {
        loop {
            let avail = self.rx.unconsumed_requests().map_err(Error::Ring)?;
            if avail >= needed {
                return Ok(true);
            }
            let prod = self.rx.req_cons().wrapping_add(avail);
            self.rx
                .mem()
                .store_u32(REQ_EVENT_OFF, prod.wrapping_add(1), Ordering::Relaxed);
            self.rx.mem().full_fence();
            if self.rx.unconsumed_requests().map_err(Error::Ring)? == avail {
                return Ok(false);
            }
        }
    }

    /// Copies one frame into consecutive posted buffers (the caller checked they are posted),
    /// all slots in one batch, without allocating.
    fn rx_frame<G: GrantAccess + ?Sized>(&mut self, grants: &mut G, data: &[u8], meta: RxMeta) -> Result<(), Error> {
        let mut first_flags = 0;
        if meta.csum_blank {
            first_flags |= rxf::CSUM_BLANK | rxf::DATA_VALIDATED;
        } else if meta.data_validated {
            first_flags |= rxf::DATA_VALIDATED;
        }
        let n = data.len().div_ceil(PAGE_SIZE);
        if n == 0 || n > RX_MAX_SLOTS {
            // Callers check the size first; never index past the arrays below.
            return Err(Error::FrameSize);
        }
        let mut ops: [CopyOut<'_>; RX_MAX_SLOTS] = core::array::from_fn(|_| CopyOut {
            gref: 0,
            offset: 0,
            src: &[],
            ok: false,
        });
        let mut ids = [0u16; RX_MAX_SLOTS];
        for (i, chunk) in data.chunks(PAGE_SIZE).enumerate() {
            let raw = match self.rx.pop_request() {
                Ok(Some(r)) => r,
                // Counted as available a moment ago: the ring only grows.
                Ok(None) => return Err(Error::Ring(xen_abi::Error::RingOverflow)),
                Err(e) => return Err(Error::Ring(e)),
            };
            let req = RxRequest::from_bytes(&raw).map_err(bad)?;
            ids[i] = req.id;
            ops[i] = CopyOut {
                gref: req.gref,
                offset: 0,
                src: chunk,
                ok: false,
            };
        }
        let ops = &mut ops[..n];
        grants.copy_to_batch(ops);
        let mut ok = true;
        for (i, (op, &id)) in ops.iter().zip(&ids[..n]).enumerate() {
            let mut flags = if i == 0 { first_flags } else { 0 };
            if i + 1 < n {
                flags |= rxf::MORE_DATA;
            }
            let status = if op.ok {
                op.src.len() as i16
            } else {
                ok = false;
                self.stats.rx_copy_errors += 1;
                Status::Error as i16
            };
            let rsp = RxResponse {
                id,
                offset: 0,
                flags,
                status,
            };
            self.rx.push_response(&rsp.to_bytes()).map_err(Error::Ring)?;
        }
        if ok {
            self.stats.rx_packets += 1;
            self.stats.rx_bytes += data.len() as u64;
        }
        Ok(())
    }
}
