//! The engine of one netif interface (one queue) from the frontend side.
//!
//! The owner calls [`Netfront::send`] for each outgoing frame, [`Netfront::recv`] until it
//! returns `None`, [`Netfront::poll`] when a doorbell rang (or before sending when
//! [`Error::Full`] came back), rings the backend when [`Netfront::take_notify`] says so, and
//! sleeps only when [`Netfront::idle`] says nothing is pending.

use alloc::vec;
use alloc::vec::Vec;

use xen_abi::netif::{
    self, RX_RESPONSE_SIZE, RxRequest, RxResponse, RxRing, Status, TX_RESPONSE_SIZE, TxRequest,
    TxRing, rxf, txf,
};
use core::sync::atomic::Ordering;

use xen_abi::ring::{FrontRing, RSP_EVENT_OFF};
use xen_abi::shmem::SharedMem;
use xen_abi::{GrantRef, PAGE_SIZE};

use crate::{Buffers, Error};

/// How the engine runs. `tx_buffers + rx_buffers` pages should fit in the [`Buffers`] pool:
/// RX takes its pages first (at start), so a smaller pool leaves TX refusing every frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// The backend offers `feature-sg` (frames spanning several pages both ways). Without it
    /// a frame is at most one page.
    pub sg: bool,
    /// Buffer pages used for TX at most (each in-flight slot holds one).
    pub tx_buffers: u32,
    /// RX buffers kept posted (at most the RX ring size).
    pub rx_buffers: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            sg: false,
            tx_buffers: 128,
            rx_buffers: 256,
        }
    }
}

/// Counters of one interface.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames posted for transmission.
    pub tx_packets: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// [`Netfront::send`] calls refused for lack of ring slots or buffers.
    pub tx_full: u64,
    /// Frames the backend answered with `ERROR` or `DROPPED`.
    pub tx_errors: u64,
    /// Frames received and handed to the owner.
    pub rx_packets: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Received frames dropped: an error slot, a malformed response, empty.
    pub rx_errors: u64,
    /// Received frames dropped because they grew beyond the maximum frame size.
    pub rx_oversize: u64,
    /// Responses with a status, flag, offset or length outside the protocol (non-fatal;
    /// their frame is dropped).
    pub bad_responses: u64,
}

/// Which doorbells the owner must ring (the backend's TX and RX event channels; on an iConnect
/// channel the rings' vectors).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Notify {
    /// New TX requests the backend asked to hear about.
    pub tx: bool,
    /// New RX buffers the backend asked to hear about.
    pub rx: bool,
}

impl Notify {
    /// Either.
    pub fn any(&self) -> bool {
        self.tx || self.rx
    }
}

/// What a [`Netfront::poll`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Poll {
    /// TX slots the backend answered (their buffers are free again).
    pub tx_completed: usize,
    /// RX responses wait: call [`Netfront::recv`].
    pub rx_ready: bool,
}

/// A received frame (a private copy; give the `Vec` back with [`Netfront::recycle`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RxFrame {
    /// The Ethernet frame.
    pub data: Vec<u8>,
    /// `NETRXF_csum_blank`: the L4 checksum is not filled in.
    pub csum_blank: bool,
    /// `NETRXF_data_validated`: the backend checked the data.
    pub data_validated: bool,
}

/// One in-flight TX slot.
#[derive(Debug, Clone, Copy)]
struct TxSlot {
    page: GrantRef,
    /// First slot of its frame (counts the frame's outcome).
    first: bool,
}

/// Spare frame `Vec`s kept for reuse.
const SPARE_VECS: usize = 16;

/// The frontend engine of one netif interface over its two rings.
#[derive(Debug)]
pub struct Netfront<M: SharedMem, B: Buffers> {
    tx: FrontRing<M, TxRing>,
    rx: FrontRing<M, RxRing>,
    bufs: B,
    config: Config,
    /// In-flight TX slots by request id.
    tx_slots: Vec<Option<TxSlot>>,
    tx_free_ids: Vec<u16>,
    /// TX pages taken from `bufs` and not in flight.
    tx_pages: Vec<GrantRef>,
    tx_pages_total: u32,
    /// Posted RX buffers by request id.
    rx_slots: Vec<Option<GrantRef>>,
    rx_free_ids: Vec<u16>,
    rx_pages: Vec<GrantRef>,
    rx_pages_total: u32,
    rx_posted: u32,
    /// Frame being reassembled: its first `partial_len` bytes (the `Vec` may be longer: a
    /// reused one keeps its old length, so steady-state frames cost no zero-filling).
    partial: Vec<u8>,
    partial_len: usize,
    partial_started: bool,
    partial_bad: bool,
    partial_oversize: bool,
    partial_flags: u16,
    spare: Vec<Vec<u8>>,
    notify: Notify,
    stats: Stats,
    broken: Option<Error>,
}

impl<M: SharedMem, B: Buffers> Netfront<M, B> {
    /// The engine over initialised rings (the frontend initialises them: `FrontRing::init`, or
    /// an iConnect channel's setup) with buffer pages from `bufs`. Posts the first RX buffers
    /// (see [`take_notify`](Self::take_notify)).
    pub fn new(
        tx: FrontRing<M, TxRing>,
        rx: FrontRing<M, RxRing>,
        bufs: B,
        config: Config,
    ) -> Self {
        let tx_size = tx.size().min(u32::from(u16::MAX) + 1) as usize;
        let rx_size = rx.size().min(u32::from(u16::MAX) + 1) as usize;
        let config = Config {
            rx_buffers: config.rx_buffers.min(rx_size as u32),
            ..config
        };
        let mut nf = Self {
            tx,
            rx,
            bufs,
            config,
            tx_slots: vec![None; tx_size],
            tx_free_ids: (0..tx_size as u32).rev().map(|i| i as u16).collect(),
            tx_pages: Vec::new(),
            tx_pages_total: 0,
            rx_slots: vec![None; rx_size],
            rx_free_ids: (0..rx_size as u32).rev().map(|i| i as u16).collect(),
            rx_pages: Vec::new(),
            rx_pages_total: 0,
            rx_posted: 0,
            partial: Vec::new(),
            partial_len: 0,
            partial_started: false,
            partial_bad: false,
            partial_oversize: false,
            partial_flags: 0,
            spare: Vec::new(),
            notify: Notify::default(),
            stats: Stats::default(),
            broken: None,
        };
        nf.refill();
        nf
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The fatal error that broke the interface, if any.
    pub fn broken(&self) -> Option<Error> {
        self.broken
    }

    /// Largest frame sent or accepted: 64 KiB - 1 with `feature-sg`, else a page.
    pub fn max_frame(&self) -> usize {
        if self.config.sg {
            netif::MAX_TX_SIZE
        } else {
            PAGE_SIZE
        }
    }

    /// TX slots in flight (posted, not answered).
    pub fn tx_in_flight(&self) -> usize {
        self.tx_slots.len() - self.tx_free_ids.len()
    }

    /// RX buffers posted.
    pub fn rx_posted(&self) -> u32 {
        self.rx_posted
    }

    /// The buffer pages (e.g. to inspect them in tests).
    pub fn buffers(&self) -> &B {
        &self.bufs
    }

    /// Which doorbells to ring since the last call; clears them.
    pub fn take_notify(&mut self) -> Notify {
        core::mem::take(&mut self.notify)
    }

    /// The raw TX ring, for hostile-guest tests of a backend only (whatever is written through
    /// it bypasses this engine's bookkeeping).
    pub fn raw_tx_ring(&mut self) -> &mut FrontRing<M, TxRing> {
        &mut self.tx
    }

    fn check_alive(&self) -> Result<(), Error> {
        match self.broken {
            Some(_) => Err(Error::Broken),
            None => Ok(()),
        }
    }

    fn fail(&mut self, e: Error) -> Error {
        self.broken.get_or_insert(e);
        e
    }

    /// Slots a frame of `len` bytes takes (one per page, each starting at offset 0).
    fn slots_for(len: usize) -> usize {
        len.div_ceil(PAGE_SIZE)
    }

    /// Whether a frame of `len` bytes could be sent now (ring slots and buffers; no poll).
    pub fn can_send(&self, len: usize) -> bool {
        let n = Self::slots_for(len.max(1));
        self.broken.is_none()
            && len <= self.max_frame()
            && self.tx.free_requests() as usize >= n
            && self.tx_free_ids.len() >= n
            && self.tx_pages.len() + (self.config.tx_buffers - self.tx_pages_total) as usize >= n
    }

    /// Copies `frame` into buffer pages, posts its slots and publishes them. [`Error::Full`]
    /// (counted) if the ring or the buffers cannot take it now; [`Error::FrameSize`] if it is
    /// empty or above [`max_frame`](Self::max_frame).
    pub fn send(&mut self, frame: &[u8]) -> Result<(), Error> {
        self.check_alive()?;
        if frame.is_empty() || frame.len() > self.max_frame() {
            return Err(Error::FrameSize);
        }
        let n = Self::slots_for(frame.len());
        if (self.tx.free_requests() as usize) < n || self.tx_free_ids.len() < n {
            self.stats.tx_full += 1;
            return Err(Error::Full);
        }
        while self.tx_pages.len() < n && self.tx_pages_total < self.config.tx_buffers {
            match self.bufs.alloc() {
                Some(p) => {
                    self.tx_pages.push(p);
                    self.tx_pages_total += 1;
                }
                None => break,
            }
        }
        if self.tx_pages.len() < n {
            self.stats.tx_full += 1;
            return Err(Error::Full);
        }
        // Fill every page first: a failed copy leaves nothing posted.
        let base = self.tx_pages.len() - n;
        for (i, chunk) in frame.chunks(PAGE_SIZE).enumerate() {
            self.bufs.write(self.tx_pages[base + i], 0, chunk)?;
        }
        for (i, chunk) in frame.chunks(PAGE_SIZE).enumerate() {
            let page = self.tx_pages[base + i];
            let Some(id) = self.tx_free_ids.pop() else {
                // Counted above; unreachable, but never panic.
                return Err(Error::Full);
            };
            let more = i + 1 < n;
            let size = if i == 0 { frame.len() } else { chunk.len() };
            let req = TxRequest {
                gref: page,
                offset: 0,
                flags: if more { txf::MORE_DATA } else { 0 },
                id,
                // The first slot carries the frame's total size.
                size: size as u16,
            };
            if let Err(e) = self.tx.push_request(&req.to_bytes()) {
                self.tx_free_ids.push(id);
                return Err(Error::Ring(e));
            }
            self.tx_slots[usize::from(id)] = Some(TxSlot {
                page,
                first: i == 0,
            });
        }
        self.tx_pages.truncate(base);
        self.notify.tx |= self.tx.publish_requests_and_check_notify();
        self.stats.tx_packets += 1;
        self.stats.tx_bytes += frame.len() as u64;
        Ok(())
    }

    /// Consumes TX responses (recycling their buffers), tops up the RX ring, and tells whether
    /// RX responses wait.
    pub fn poll(&mut self) -> Result<Poll, Error> {
        self.check_alive()?;
        let mut poll = Poll::default();
        loop {
            let raw = match self.tx.pop_response() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => return Err(self.fail(Error::Ring(e))),
            };
            self.tx_response(&raw)?;
            poll.tx_completed += 1;
        }
        self.refill();
        poll.rx_ready = match self.rx.unconsumed_responses() {
            Ok(n) => n > 0,
            Err(e) => return Err(self.fail(Error::Ring(e))),
        };
        Ok(poll)
    }

    fn tx_response(&mut self, raw: &[u8; TX_RESPONSE_SIZE]) -> Result<(), Error> {
        let id = u16::from_le_bytes([raw[0], raw[1]]);
        let status = i16::from_le_bytes([raw[2], raw[3]]);
        let Some(slot) = self.tx_slots.get_mut(usize::from(id)).and_then(Option::take) else {
            return Err(self.fail(Error::BadResponseId));
        };
        self.tx_free_ids.push(id);
        self.tx_pages.push(slot.page);
        match Status::from_i16(status) {
            Ok(Status::Okay) => {}
            Ok(Status::Error | Status::Dropped) => {
                if slot.first {
                    self.stats.tx_errors += 1;
                }
            }
            // We never send extra-info slots, so NULL is as wrong as an unknown value.
            Ok(Status::Null) | Err(_) => self.stats.bad_responses += 1,
        }
        Ok(())
    }

    /// Posts free RX buffers until [`Config::rx_buffers`] are posted (or the ring is full),
    /// and publishes them.
    fn refill(&mut self) {
        let mut pushed = false;
        while self.rx_posted < self.config.rx_buffers && !self.rx.is_full() {
            let page = match self.rx_pages.pop() {
                Some(p) => p,
                None if self.rx_pages_total < self.config.rx_buffers => match self.bufs.alloc() {
                    Some(p) => {
                        self.rx_pages_total += 1;
                        p
                    }
                    None => break,
                },
                None => break,
            };
            let Some(id) = self.rx_free_ids.pop() else {
                self.rx_pages.push(page);
                break;
            };
            if self
                .rx
                .push_request(&RxRequest { id, gref: page }.to_bytes())
                .is_err()
            {
                self.rx_free_ids.push(id);
                self.rx_pages.push(page);
                break;
            }
            self.rx_slots[usize::from(id)] = Some(page);
            self.rx_posted += 1;
            pushed = true;
        }
        if pushed {
            self.notify.rx |= self.rx.publish_requests_and_check_notify();
        }
    }

    /// The next complete received frame, if its responses are all there. Reposts the buffers
    /// it consumed. Frames with an error slot, a malformed response or beyond
    /// [`max_frame`](Self::max_frame) are dropped and counted.
    pub fn recv(&mut self) -> Result<Option<RxFrame>, Error> {
        self.check_alive()?;
        let r = self.recv_inner();
        self.refill();
        r
    }

    fn recv_inner(&mut self) -> Result<Option<RxFrame>, Error> {
        loop {
            let raw = match self.rx.pop_response() {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(None),
                Err(e) => return Err(self.fail(Error::Ring(e))),
            };
            let more = self.rx_slot(&raw)?;
            if more {
                continue;
            }
            // The frame is complete.
            let bad = self.partial_bad || self.partial_oversize || self.partial_len == 0;
            if self.partial_oversize {
                self.stats.rx_oversize += 1;
            } else if bad {
                self.stats.rx_errors += 1;
            }
            let flags = self.partial_flags;
            self.partial_started = false;
            self.partial_bad = false;
            self.partial_oversize = false;
            let len = core::mem::take(&mut self.partial_len);
            if bad {
                continue;
            }
            let next = self.spare.pop().unwrap_or_default();
            let mut data = core::mem::replace(&mut self.partial, next);
            data.truncate(len);
            self.stats.rx_packets += 1;
            self.stats.rx_bytes += data.len() as u64;
            return Ok(Some(RxFrame {
                data,
                csum_blank: flags & rxf::CSUM_BLANK != 0,
                data_validated: flags & rxf::DATA_VALIDATED != 0,
            }));
        }
    }

    /// Handles one rx response: frees its buffer after copying its data into the partial frame.
    /// Returns whether the frame continues (`NETRXF_more_data`).
    fn rx_slot(&mut self, raw: &[u8; RX_RESPONSE_SIZE]) -> Result<bool, Error> {
        let id = u16::from_le_bytes([raw[0], raw[1]]);
        let Some(page) = self.rx_slots.get_mut(usize::from(id)).and_then(Option::take) else {
            return Err(self.fail(Error::BadResponseId));
        };
        self.rx_free_ids.push(id);
        self.rx_posted -= 1;
        let raw_flags = u16::from_le_bytes([raw[4], raw[5]]);
        let more = raw_flags & rxf::MORE_DATA != 0;
        if !self.partial_started {
            self.partial_started = true;
            self.partial_flags = raw_flags;
        }
        match RxResponse::from_bytes(raw) {
            Err(_) => {
                self.stats.bad_responses += 1;
                self.partial_bad = true;
            }
            Ok(r) if r.flags & (rxf::EXTRA_INFO | rxf::GSO_PREFIX) != 0 => {
                // Never negotiated (no GSO): the frame cannot be parsed.
                self.stats.bad_responses += 1;
                self.partial_bad = true;
            }
            Ok(r) if r.status < 0 => self.partial_bad = true,
            Ok(r) => {
                let len = r.status as usize;
                let at = self.partial_len;
                if self.partial_bad || self.partial_oversize {
                    // Dropped already: do not copy.
                } else if at + len > self.max_frame() {
                    self.partial_oversize = true;
                } else if len > 0 {
                    if self.partial.len() < at + len {
                        self.partial.resize(at + len, 0);
                    }
                    if self
                        .bufs
                        .read(page, usize::from(r.offset), &mut self.partial[at..at + len])
                        .is_err()
                    {
                        self.partial_bad = true;
                    }
                    self.partial_len = at + len;
                }
            }
        }
        self.rx_pages.push(page);
        Ok(more)
    }

    /// Gives a received frame's `Vec` back for reuse.
    pub fn recycle(&mut self, frame: Vec<u8>) {
        if self.spare.len() < SPARE_VECS && frame.capacity() > 0 {
            self.spare.push(frame);
        }
    }

    /// `RING_FINAL_CHECK_FOR_RESPONSES`, with TX completions batched: `Ok(true)` when nothing
    /// is pending and the backend will notify what the owner must wake for; `Ok(false)` when
    /// responses wait (poll/recv again first).
    ///
    /// RX: the next response is notified (a frame must wake the owner at once). TX: a
    /// completion only frees a buffer, which matters only when buffers run short, so the event
    /// is armed only while at least a quarter of the TX buffers are in flight, and then at half
    /// of them (Linux netfront's rule): an idle or lightly sending guest is not woken for each
    /// completion (they are reaped at its next wake-up), a sender short of buffers is woken
    /// well before it runs out.
    pub fn idle(&mut self) -> Result<bool, Error> {
        self.check_alive()?;
        let tx = self.tx_final_check();
        let rx = self.rx.final_check_for_responses();
        match (tx, rx) {
            (Ok(t), Ok(r)) => Ok(!t && !r),
            (Err(e), _) | (_, Err(e)) => Err(self.fail(Error::Ring(e))),
        }
    }

    /// The TX half of [`idle`](Self::idle): whether TX responses wait, arming `rsp_event` at
    /// half of the in-flight slots when enough are in flight.
    fn tx_final_check(&mut self) -> Result<bool, xen_abi::Error> {
        if self.tx.unconsumed_responses()? > 0 {
            return Ok(true);
        }
        let in_flight = self.tx_in_flight() as u32;
        if in_flight == 0 || in_flight < (self.config.tx_buffers / 4).max(1) {
            return Ok(false);
        }
        let event = self.tx.rsp_cons().wrapping_add(in_flight / 2 + 1);
        self.tx.mem().store_u32(RSP_EVENT_OFF, event, Ordering::Relaxed);
        self.tx.mem().full_fence();
        Ok(self.tx.unconsumed_responses()? > 0)
    }

    /// Stops the engine and gives back every buffer page that is not in flight (pages the
    /// backend still holds are not reusable until the channel is torn down).
    pub fn into_buffers(mut self) -> B {
        for p in self.tx_pages.drain(..).chain(self.rx_pages.drain(..)) {
            self.bufs.free(p);
        }
        self.bufs
    }
}
