//! A simulated sndif frontend (test support, like `netback::grant::FakeGrants`): one stream's
//! side of `sndif.h` as `snd-xen-front` drives it. It owns a request ring and an event page
//! (hand clones of both to [`Sndback::add_stream`](crate::Sndback::add_stream)), grants a page
//! directory and buffer pages in a [`FakeGrants`] for OPEN, sends requests with fresh ids,
//! reads responses, checks that event ids run 0, 1, 2, ... (from each OPEN) and consumes
//! events. It trusts the
//! backend (it panics on a malformed event), as test code may.

use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use media_dsp::SampleFormat;
use netback::grant::FakeGrants;
use xen_abi::ring::FrontRing;
use xen_abi::shmem::{HostMem, SharedMem};
use xen_abi::sndif::{
    BufferOp, EVENT_IN_CONS_OFF, EVENT_IN_PROD_OFF, Event, MSG_SIZE, Open, Request, Response,
    SndRing, Trigger, event_offset,
};

/// One stream's frontend side (see the [module documentation](self)).
pub struct SimFront {
    /// The request ring (frontend end).
    pub ring: FrontRing<HostMem, SndRing>,
    /// The ring's page.
    pub ring_mem: HostMem,
    /// The event page.
    pub evt: HostMem,
    next_id: u16,
    /// Grant refs of the shared buffer's pages.
    pub buffer: Vec<u32>,
    /// Grant ref of the page directory.
    pub dir: u32,
    /// Buffer size, octets.
    pub buffer_sz: u32,
    next_event_id: u16,
    /// Responses seen, in order.
    pub log: Vec<Response>,
}

impl SimFront {
    /// A frontend with a fresh request ring and event page (hand clones of `ring_mem` and
    /// `evt` to the backend).
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        let ring_mem = HostMem::pages(1);
        let ring = FrontRing::init(ring_mem.clone()).unwrap();
        Self {
            ring,
            ring_mem,
            evt: HostMem::pages(1),
            next_id: 0,
            buffer: Vec::new(),
            dir: 0,
            buffer_sz: 0,
            next_event_id: 0,
            log: Vec::new(),
        }
    }

    /// Grants a directory page at `first` and the buffer pages after it.
    pub fn grant_buffer(&mut self, g: &mut FakeGrants, first: u32, buffer_sz: u32) {
        let n = buffer_sz.div_ceil(4096);
        g.grant(first, true);
        self.dir = first;
        self.buffer = (0..n).map(|i| first + 1 + i).collect();
        for (i, r) in self.buffer.iter().enumerate() {
            g.grant(*r, false);
            g.page_mut(first).unwrap()[4 + 4 * i..8 + 4 * i].copy_from_slice(&r.to_le_bytes());
        }
        self.buffer_sz = buffer_sz;
    }

    /// Publishes a raw request slot.
    pub fn send_raw(&mut self, raw: [u8; MSG_SIZE]) {
        self.ring
            .push_request(&raw)
            .expect("ring full: consume responses");
        self.ring.publish_requests();
    }

    /// Sends a request with a fresh id; returns the id.
    pub fn send(&mut self, mut req: Request) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        match &mut req {
            Request::Open { id: i, .. }
            | Request::Close { id: i }
            | Request::Buffer { id: i, .. }
            | Request::Trigger { id: i, .. }
            | Request::HwParamQuery { id: i, .. } => *i = id,
        }
        self.send_raw(req.to_bytes());
        id
    }

    /// Sends OPEN for the granted buffer.
    pub fn open(&mut self, rate: u32, fmt: SampleFormat, channels: u8, period_sz: u32) -> u16 {
        self.send(Request::Open {
            id: 0,
            open: Open {
                pcm_rate: rate,
                pcm_format: fmt.sndif_code(),
                pcm_channels: channels,
                buffer_sz: self.buffer_sz,
                gref_directory: self.dir,
                period_sz,
            },
        })
    }

    /// Sends a buffer operation.
    pub fn buffer_op(&mut self, op: BufferOp, offset: u32, length: u32) -> u16 {
        self.send(Request::Buffer {
            id: 0,
            op,
            offset,
            length,
        })
    }

    /// Sends TRIGGER.
    pub fn trigger(&mut self, kind: Trigger) -> u16 {
        self.send(Request::Trigger { id: 0, kind })
    }

    /// New responses (also appended to `log`).
    pub fn responses(&mut self) -> Vec<Response> {
        let mut v = Vec::new();
        while let Some(r) = self.ring.pop_response().unwrap() {
            // Lenient: a response to an unknown operation echoes a code xen-abi refuses.
            let rsp = Response::from_bytes(&r).unwrap_or(Response {
                id: u16::from_le_bytes([r[0], r[1]]),
                operation: r[2],
                status: i32::from_le_bytes([r[4], r[5], r[6], r[7]]),
                hw_param: None,
            });
            v.push(rsp);
        }
        self.log.extend(v.iter().copied());
        v
    }

    /// New events; checks their ids run 0, 1, 2, ... and consumes them.
    pub fn events(&mut self) -> Vec<Event> {
        let prod = self.evt.load_u32(EVENT_IN_PROD_OFF, Ordering::Acquire);
        let mut cons = self.evt.load_u32(EVENT_IN_CONS_OFF, Ordering::Relaxed);
        let mut v = Vec::new();
        while cons != prod {
            let mut b = [0u8; MSG_SIZE];
            self.evt.read_bytes(event_offset(cons), &mut b);
            let ev = Event::from_bytes(&b).unwrap();
            let Event::CurPos { id, .. } = ev;
            // Ids run 0, 1, 2, ... from each OPEN.
            assert!(
                id == self.next_event_id || id == 0,
                "event id {id}, expected {} (or 0 after a new OPEN)",
                self.next_event_id
            );
            self.next_event_id = id.wrapping_add(1);
            v.push(ev);
            cons = cons.wrapping_add(1);
        }
        self.evt
            .store_u32(EVENT_IN_CONS_OFF, cons, Ordering::Release);
        v
    }

    /// Writes into the shared buffer (the frontend's own pages), wrapping at its end.
    pub fn write_buf(&self, g: &mut FakeGrants, offset: u32, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            let at = (offset as usize + i) % self.buffer_sz as usize;
            g.page_mut(self.buffer[at / 4096]).unwrap()[at % 4096] = *b;
        }
    }

    /// Reads from the shared buffer (the frontend's own pages), wrapping at its end.
    pub fn read_buf(&self, g: &FakeGrants, offset: u32, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| {
                let at = (offset as usize + i) % self.buffer_sz as usize;
                g.page(self.buffer[at / 4096]).unwrap()[at % 4096]
            })
            .collect()
    }
}
