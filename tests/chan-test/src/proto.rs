//! `proto=channel`: the two VMs speak the real iConnect channel (`iconnect-channel`) over the
//! ivshmem region instead of hand-made offsets.
//!
//! - `role=b` is the frontend (the guest): `Frontend<&SharedRegion>` lays out the control page
//!   and one ring, and publishes a QoS request through the iConnect keys (guaranteed 100 Mbit/s,
//!   class realtime) plus its ivshmem peer id (key `ivshmem-peer`, so the backend knows whom to
//!   ring).
//! - `role=a` is the backend (the driver domain): `Backend<&SharedRegion>` publishes its peer id,
//!   reads the request at connect, decides with `iconnect::qos::LinkAdmission` (1 Gbit/s link),
//!   writes the decision into its keys and accepts (or refuses, which fails the test).
//! - Then `b` sends `rounds` small requests one at a time (round-trip time), then `bulk_mib` MiB
//!   in chunks of `chunk_kib` KiB with up to `depth` requests in flight (throughput). Every
//!   request carries two data references (source, destination) into the data area pages `b`
//!   allocated; `a` validates them, copies the source out through the data area, transforms it
//!   (position- and seed-dependent), writes the destination and answers; `b` checks every byte.
//!   A final `DONE` request ends both.
//!
//! The endpoints run on the device's `SharedRegion` through [`Region`], a copyable handle to the
//! device in a `RefCell` (the doorbell register needs `&mut Ivshmem` while the endpoints keep
//! their region handle).
//!
//! Doorbells follow the endpoints' and rings' notify flags (`take_notify`,
//! `publish_*_and_check_notify`); each side sleeps in `rt::event::wait_until` after the rings'
//! final checks. Until the handshake is over (before that the peer may not know our id and
//! cannot ring us), the loops poll every millisecond.
//! A doorbell rung before the peer's QEMU learnt our eventfds is lost: after `RESEND` without
//! any interrupt, a side rings again (counted; the test fails if that happens often).

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;

use core::cell::RefCell;
use core::sync::atomic::Ordering;

use hal::ivshmem::Ivshmem;
use iconnect::Class;
use iconnect::Decision;
use iconnect::qos::{self, LinkAdmission, NetQosRequest};
use iconnect_channel::{
    Backend, BackendEvent, DataArea, DataRef, Frontend, FrontendConfig, FrontendEvent, KeyMap,
    PageAllocator, RingSpec, Window,
};
use rt::time::{self, Instant};
use xen_abi::PAGE_SIZE;
use xen_abi::ring::{FrontRing, RawProtocol};
use xen_abi::shmem::SharedMem;
use xen_abi::xenbus::{FrontendStyle, XenbusState};

use crate::Result;

/// Request and response slots: 32 bytes each.
type Proto = RawProtocol<32, 32>;
/// Key carrying each end's ivshmem peer id (the doorbell address).
const PEER_KEY: &str = "ivshmem-peer";
/// The QoS the frontend asks for.
const ASK_BPS: u64 = 100_000_000;
/// The backend's link capacity.
const LINK_BPS: u64 = 1_000_000_000;
/// Ring 0's doorbell vector.
const VECTOR: u16 = 0;
const RESEND: Duration = Duration::from_millis(200);
/// While the peer id is unknown, poll this often.
const HANDSHAKE_TICK: Duration = Duration::from_millis(1);
/// Largest transfer the backend accepts in one request.
const MAX_XFER: u32 = 1 << 20;
const PING_LEN: u32 = 64;

const OP_XFORM: u32 = 1;
const OP_DONE: u32 = 2;
const ST_OK: u32 = 0;
const ST_BAD_OP: u32 = 1;
const ST_BAD_LEN: u32 = 2;
const ST_BAD_REF: u32 = 3;

/// A request: `id`, `op`, source and destination references, transform seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Req {
    id: u32,
    op: u32,
    src: DataRef,
    dst: DataRef,
    seed: u32,
}

impl Req {
    fn to_bytes(self) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[0..4].copy_from_slice(&self.id.to_le_bytes());
        b[4..8].copy_from_slice(&self.op.to_le_bytes());
        b[8..16].copy_from_slice(&self.src.to_bytes());
        b[16..24].copy_from_slice(&self.dst.to_bytes());
        b[24..28].copy_from_slice(&self.seed.to_le_bytes());
        b
    }

    fn parse(b: &[u8; 32]) -> Self {
        let u = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let r = |i: usize| DataRef {
            offset: u(i),
            len: u(i + 4),
        };
        Self {
            id: u(0),
            op: u(4),
            src: r(8),
            dst: r(16),
            seed: u(24),
        }
    }
}

/// A response: `id`, status, bytes written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rsp {
    id: u32,
    status: u32,
    len: u32,
}

impl Rsp {
    fn to_bytes(self) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[0..4].copy_from_slice(&self.id.to_le_bytes());
        b[4..8].copy_from_slice(&self.status.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    fn parse(b: &[u8; 32]) -> Self {
        let u = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Self {
            id: u(0),
            status: u(4),
            len: u(8),
        }
    }
}

/// The backend's transform of a whole buffer with `seed`: every byte depends on its value, its
/// position and the seed (8-byte words at a time; a ragged tail byte by byte).
fn xform(buf: &mut [u8], seed: u32) {
    let key = u64::from(seed) | 0x5bd1_e995_0000_0000;
    let mut words = buf.chunks_exact_mut(8);
    for (i, w) in (&mut words).enumerate() {
        let v = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        let k = key.wrapping_mul(i as u64 + 1);
        w.copy_from_slice(&(v.wrapping_add(0x0101_0101_0101_0101) ^ k).to_le_bytes());
    }
    let tail = words.into_remainder();
    for (i, b) in tail.iter_mut().enumerate() {
        *b = b.wrapping_add(1) ^ (seed.wrapping_add(i as u32) as u8);
    }
}

/// The device's shared region as a copyable `SharedMem` handle: each access borrows the device
/// only for that access, so doorbells (`&mut Ivshmem`) can be rung between them.
#[derive(Clone, Copy)]
pub struct Region<'a>(&'a RefCell<Ivshmem>);

impl SharedMem for Region<'_> {
    fn len(&self) -> usize {
        self.0.borrow().region().len()
    }
    fn load_u32(&self, off: usize, order: Ordering) -> u32 {
        self.0.borrow().region().load_u32(off, order)
    }
    fn store_u32(&self, off: usize, val: u32, order: Ordering) {
        self.0.borrow().region().store_u32(off, val, order)
    }
    fn load_u16(&self, off: usize) -> u16 {
        self.0.borrow().region().load_u16(off)
    }
    fn store_u16(&self, off: usize, val: u16) {
        self.0.borrow().region().store_u16(off, val)
    }
    fn load_u64(&self, off: usize) -> u64 {
        self.0.borrow().region().load_u64(off)
    }
    fn store_u64(&self, off: usize, val: u64) {
        self.0.borrow().region().store_u64(off, val)
    }
    fn read_bytes(&self, off: usize, dst: &mut [u8]) {
        self.0.borrow().region().read_bytes(off, dst)
    }
    fn write_bytes(&self, off: usize, src: &[u8]) {
        self.0.borrow().region().write_bytes(off, src)
    }
    fn full_fence(&self) {
        self.0.borrow().region().full_fence()
    }
}

/// Doorbells and sleeping, shared by both roles.
struct Bell<'a> {
    dev: &'a RefCell<Ivshmem>,
    own: u16,
    peer: Option<u16>,
    /// A notify asked for before the peer id was known.
    pending: bool,
    /// Both ends know each other's id (the handshake is over): sleep until a doorbell. Before,
    /// the peer may be unable to ring us, so the loops poll every `HANDSHAKE_TICK`.
    linked: bool,
    irqs: u32,
    rung: u32,
    resent: u32,
    quiet_since: Instant,
    deadline: Instant,
}

impl Bell<'_> {
    fn kick(&mut self) {
        match self.peer {
            Some(p) => {
                self.dev.borrow_mut().ring(p, VECTOR);
                self.rung += 1;
                self.pending = false;
            }
            None => self.pending = true,
        }
    }

    /// Learns the peer's id from its `ivshmem-peer` key (once).
    fn learn_peer(&mut self, v: Option<&str>) -> Result<()> {
        if self.peer.is_some() {
            return Ok(());
        }
        let Some(v) = v else { return Ok(()) };
        let p: u16 = v
            .parse()
            .map_err(|_| format!("peer published a bad {PEER_KEY} {v:?}"))?;
        if p == self.own {
            return Err(format!("peer published our own id {p}"));
        }
        log::info!("peer id {p} learnt from its {PEER_KEY} key");
        self.peer = Some(p);
        self.quiet_since = time::now();
        if self.pending {
            self.kick();
        }
        Ok(())
    }

    /// Sleeps until a doorbell (or the handshake tick / resend timer); rings again after
    /// `RESEND` without any interrupt (a lost doorbell); fails past the deadline.
    fn nap(&mut self, what: &str) -> Result<()> {
        let now = time::now();
        if now >= self.deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        let wake = if self.linked {
            self.quiet_since + RESEND
        } else {
            now + HANDSHAKE_TICK
        };
        rt::event::wait_until(Some(wake.min(self.deadline)));
        self.collect();
        let now = time::now();
        if self.linked && now >= self.quiet_since + RESEND {
            self.resent += 1;
            self.quiet_since = now;
            self.kick();
        }
        Ok(())
    }

    fn collect(&mut self) {
        let n = self.dev.borrow().take(VECTOR);
        if n > 0 {
            self.irqs += n;
            self.quiet_since = time::now();
        }
    }
}

/// Parameters of a channel run.
pub struct Params {
    /// `a` or `b`.
    pub role: &'static str,
    /// Small requests, one at a time.
    pub rounds: u32,
    /// Bulk MiB (b -> a -> b).
    pub bulk_mib: usize,
    /// Bulk chunk size.
    pub chunk_kib: usize,
    /// Bulk requests in flight.
    pub depth: usize,
    /// Requests with hostile data references b sends (each must get an error response).
    pub bad_refs: u32,
    /// Give up after this.
    pub deadline: Instant,
}

/// Runs the channel protocol on `dev`.
pub fn run(dev: Ivshmem, p: &Params) -> Result<()> {
    let own = dev.id();
    let cell = RefCell::new(dev);
    let region = Region(&cell);
    let mut bell = Bell {
        dev: &cell,
        own,
        peer: None,
        pending: false,
        linked: false,
        irqs: 0,
        rung: 0,
        resent: 0,
        quiet_since: time::now(),
        deadline: p.deadline,
    };
    if p.role == "a" {
        run_backend(region, &mut bell)
    } else {
        run_frontend(region, &mut bell, p)
    }
}

fn proto_err(what: &str, e: impl core::fmt::Display) -> String {
    format!("{what}: {e}")
}

/// `a`: the backend (driver domain side).
fn run_backend(region: Region<'_>, bell: &mut Bell<'_>) -> Result<()> {
    let mut keys = KeyMap::new();
    keys.insert(PEER_KEY, &bell.own.to_string())
        .map_err(|e| proto_err("own keys", e))?;
    let mut be = Backend::new(region, keys).map_err(|e| proto_err("Backend::new", e))?;
    let r = serve(&mut be, bell);
    if r.is_err() {
        // Tell the frontend at once (it would otherwise wait for its own timeout).
        be.fail();
        if be.take_notify() {
            bell.kick();
        }
    }
    r
}

/// The backend's loop: handshake, admission, serving ring 0.
fn serve(be: &mut Backend<Region<'_>>, bell: &mut Bell<'_>) -> Result<()> {
    let mut link = LinkAdmission::new(LINK_BPS);
    let mut ring = None;
    let mut data = None;
    let mut granted = None;
    let mut buf: Vec<u8> = Vec::new();
    let (mut small, mut bulk, mut bytes, mut errors) = (0u32, 0u32, 0u64, 0u32);
    let mut done = false;
    loop {
        while let Some(ev) = be.poll() {
            match ev {
                BackendEvent::Connect => {
                    let fk = be.frontend_keys();
                    bell.learn_peer(fk.get(PEER_KEY))?;
                    if bell.peer.is_none() {
                        return Err(format!("frontend connected without a {PEER_KEY} key"));
                    }
                    let req = NetQosRequest::from_keys(fk)
                        .map_err(|e| proto_err("frontend's QoS request", e))?
                        .ok_or("frontend connected without a QoS request")?;
                    let d = link.admit(&req);
                    qos::write_decision(&d, be.keys_mut())
                        .map_err(|e| proto_err("writing the QoS decision", e))?;
                    be.publish_keys();
                    match d {
                        Decision::Granted(g) => {
                            log::info!(
                                "QoS request {} bit/s class {} granted: guaranteed {} bit/s, ceiling {} bit/s",
                                req.guaranteed_bps,
                                req.class.as_str(),
                                g.guaranteed_bps,
                                g.ceiling_bps
                            );
                            ring = Some(
                                be.back_ring::<Proto>(0)
                                    .map_err(|e| proto_err("ring 0", e))?,
                            );
                            data = Some(be.data_area().map_err(|e| proto_err("data area", e))?);
                            be.accept();
                            bell.linked = true;
                            bell.quiet_since = time::now();
                            granted = Some(g);
                        }
                        Decision::Refused { reason, .. } => {
                            be.refuse();
                            return Err(format!(
                                "QoS request {} bit/s refused: {}",
                                req.guaranteed_bps,
                                reason.as_str()
                            ));
                        }
                    }
                }
                BackendEvent::Failed(e) => return Err(proto_err("channel failed", e)),
                BackendEvent::Disconnect | BackendEvent::Removed => {
                    return Err(format!("frontend went away (state {:?})", be.state()));
                }
            }
        }
        if be.take_notify() {
            bell.kick();
        }
        if let (Some(ring), Some(data)) = (ring.as_mut(), data.as_ref()) {
            loop {
                while let Some(raw) = ring.pop_request().map_err(|e| proto_err("ring 0", e))? {
                    let req = Req::parse(&raw);
                    let mut rsp = Rsp {
                        id: req.id,
                        status: ST_OK,
                        len: 0,
                    };
                    match req.op {
                        OP_DONE => done = true,
                        OP_XFORM => {
                            if req.src.len != req.dst.len || req.src.len > MAX_XFER {
                                rsp.status = ST_BAD_LEN;
                            } else {
                                let n = req.src.len as usize;
                                buf.resize(n, 0);
                                match data.read_ref(req.src, 0, &mut buf) {
                                    Ok(()) => {
                                        xform(&mut buf, req.seed);
                                        match data.write_ref(req.dst, 0, &buf) {
                                            Ok(()) => {
                                                rsp.len = req.dst.len;
                                                bytes += n as u64;
                                                if n <= PING_LEN as usize {
                                                    small += 1;
                                                } else {
                                                    bulk += 1;
                                                }
                                            }
                                            Err(_) => rsp.status = ST_BAD_REF,
                                        }
                                    }
                                    Err(_) => rsp.status = ST_BAD_REF,
                                }
                            }
                        }
                        _ => rsp.status = ST_BAD_OP,
                    }
                    if rsp.status != ST_OK {
                        errors += 1;
                    }
                    ring.push_response(&rsp.to_bytes())
                        .map_err(|e| proto_err("ring 0 response", e))?;
                }
                if ring.publish_responses_and_check_notify() {
                    bell.kick();
                }
                if done
                    || !ring
                        .final_check_for_requests()
                        .map_err(|e| proto_err("ring 0", e))?
                {
                    break;
                }
            }
        }
        if done {
            break;
        }
        bell.nap("the frontend")?;
    }
    let g = granted.ok_or("done before the QoS decision")?;
    log::info!(
        "CHAN-RESULT ok proto=channel role=a rounds={small} bulk_requests={bulk} bytes={bytes} refused={errors} \
         qos=granted guaranteed_bps={} class={} state={:?} irqs={} rung={} resent={}",
        g.guaranteed_bps,
        g.class.as_str(),
        be.state(),
        bell.irqs,
        bell.rung,
        bell.resent
    );
    Ok(())
}

/// An in-flight request of the frontend: its pages and what the answer must be.
struct Flight {
    id: u32,
    first_page: u32,
    pages: u32,
    src: DataRef,
    dst: DataRef,
    seed: u32,
    sent: Instant,
}

/// Fills `buf` with a pattern seeded by `seed`.
fn fill(buf: &mut [u8], seed: u64) {
    let mut x = seed | 1;
    for w in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let bytes = x.to_le_bytes();
        w.copy_from_slice(&bytes[..w.len()]);
    }
}

/// `b`: the frontend (guest side).
fn run_frontend(region: Region<'_>, bell: &mut Bell<'_>, p: &Params) -> Result<()> {
    let mut ask = KeyMap::new();
    let request = NetQosRequest {
        guaranteed_bps: ASK_BPS,
        class: Class::Realtime,
        ..Default::default()
    };
    request
        .write(&mut ask)
        .map_err(|e| proto_err("QoS request keys", e))?;
    ask.insert(PEER_KEY, &bell.own.to_string())
        .map_err(|e| proto_err("own keys", e))?;
    let config = FrontendConfig {
        style: FrontendStyle::Net,
        rings: vec![RingSpec {
            page_order: 0,
            slot_bytes: 32,
            vector: u32::from(VECTOR),
        }],
        data_pages: None,
    };
    let mut fe = Frontend::new(region, config, ask).map_err(|e| proto_err("Frontend::new", e))?;
    let r = drive(&mut fe, bell, p);
    if r.is_err() {
        // Tell the backend at once (it would otherwise wait for its own timeout).
        fe.close();
        if fe.take_notify() {
            bell.kick();
        }
    }
    r
}

/// The frontend's loop: handshake, QoS decision, round trips, hostile references, bulk.
fn drive(fe: &mut Frontend<Region<'_>>, bell: &mut Bell<'_>, p: &Params) -> Result<()> {
    let mut ring = None;
    // Handshake: until the backend says Connected.
    let mut busy_keys = 0u32;
    let t0 = time::now();
    loop {
        let mut ready = false;
        while let Some(ev) = fe.poll() {
            match ev {
                FrontendEvent::SetUp => {
                    ring = Some(
                        fe.front_ring::<Proto>(0)
                            .map_err(|e| proto_err("ring 0", e))?,
                    )
                }
                FrontendEvent::Ready => {
                    ready = true;
                    bell.linked = true;
                    bell.quiet_since = time::now();
                }
                FrontendEvent::Failed(e) => return Err(proto_err("channel failed", e)),
                FrontendEvent::Disconnect | FrontendEvent::Closed => {
                    let why = fe
                        .read_backend_keys()
                        .ok()
                        .and_then(|k| k.get("iconnect-qos-reason").map(String::from))
                        .unwrap_or_default();
                    return Err(format!(
                        "backend closed the channel during the handshake (state {:?}) {why}",
                        fe.state()
                    ));
                }
            }
        }
        if bell.peer.is_none() {
            // The backend may be publishing its keys right now (it starts concurrently, and
            // its vCPU may be descheduled mid-write): a busy key area is read again next tick.
            match fe.read_backend_keys() {
                Ok(k) => {
                    let v = k.get(PEER_KEY).map(String::from);
                    bell.learn_peer(v.as_deref())?;
                }
                Err(iconnect_channel::Error::KeysBusy) => busy_keys += 1,
                Err(e) => return Err(format!("reading the backend keys: {e} ({e:?})")),
            }
        }
        if fe.take_notify() {
            bell.kick();
        }
        if ready {
            break;
        }
        bell.nap("the backend's handshake")?;
    }
    let handshake_ms = (time::now() - t0).as_millis();
    if busy_keys > 0 {
        log::info!("backend's key area was busy {busy_keys} times during the handshake");
    }
    let grant = match qos::read_decision(fe.backend_keys())
        .map_err(|e| proto_err("backend's QoS decision", e))?
    {
        Some(Decision::Granted(g)) => g,
        Some(Decision::Refused { reason, .. }) => {
            return Err(format!("QoS refused: {}", reason.as_str()));
        }
        None => return Err("backend connected without a QoS decision".into()),
    };
    if grant.guaranteed_bps < ASK_BPS || grant.class != Class::Realtime {
        return Err(format!(
            "granted {} bit/s class {}, asked {ASK_BPS} class realtime",
            grant.guaranteed_bps,
            grant.class.as_str()
        ));
    }
    log::info!(
        "channel connected in {handshake_ms} ms: QoS granted {} bit/s (ceiling {}), class {}",
        grant.guaranteed_bps,
        grant.ceiling_bps,
        grant.class.as_str()
    );
    let mut ring = ring.ok_or("Ready without SetUp")?;
    let data = fe.data_area().map_err(|e| proto_err("data area", e))?;
    let mut pages = fe.page_allocator();
    let mut eng = Engine {
        ring: &mut ring,
        data,
        pages: &mut pages,
        next_id: 0,
        inflight: Vec::new(),
        buf: Vec::new(),
        expect: Vec::new(),
        verified: 0,
        check_ns: 0,
    };

    // Round trips: one small request at a time.
    let mut rtts: Vec<u64> = Vec::with_capacity(p.rounds as usize);
    let t_small = time::now();
    for _ in 0..p.rounds {
        eng.submit(PING_LEN)?
            .then_some(())
            .ok_or("no room for a small request")?;
        eng.flush(bell);
        while !eng.inflight.is_empty() {
            let got = eng.reap()?;
            rtts.extend(got.iter().map(|d| d.as_nanos() as u64));
            if got.is_empty() {
                eng.wait(fe, bell)?;
            }
        }
    }
    let small_ms = (time::now() - t_small).as_millis();

    // Hostile references (`bad_refs=N`): outside the data area, and an offset whose end
    // overflows u32. The backend must answer each with an error and keep serving.
    let area = eng.data.len() as u32;
    for k in 0..p.bad_refs {
        let good = DataRef {
            offset: 0,
            len: PING_LEN,
        };
        let (src, dst) = if k % 2 == 0 {
            (
                DataRef {
                    offset: area,
                    len: PING_LEN,
                },
                good,
            )
        } else {
            (
                good,
                DataRef {
                    offset: u32::MAX - 8,
                    len: PING_LEN,
                },
            )
        };
        let rsp = eng.call(OP_XFORM, src, dst, fe, bell)?;
        if rsp.status != ST_BAD_REF {
            return Err(format!(
                "bad reference {k} ({src:?} -> {dst:?}) answered with {rsp:?}, expected status {ST_BAD_REF}"
            ));
        }
    }

    // Bulk: `depth` requests of `chunk` bytes in flight.
    let chunk = (p.chunk_kib << 10).clamp(PAGE_SIZE, MAX_XFER as usize) as u32;
    let total = (p.bulk_mib as u64) << 20;
    let (mut submitted, mut bulk_reqs) = (0u64, 0u32);
    let verified_before = eng.verified;
    let check_before = eng.check_ns;
    let t_bulk = time::now();
    while submitted < total || !eng.inflight.is_empty() {
        let mut pushed = false;
        while submitted < total && eng.inflight.len() < p.depth.max(1) {
            let n = chunk.min((total - submitted) as u32);
            if !eng.submit(n)? {
                break;
            }
            submitted += u64::from(n);
            bulk_reqs += 1;
            pushed = true;
        }
        if pushed {
            eng.flush(bell);
        }
        if eng.reap()?.is_empty() && !eng.inflight.is_empty() {
            eng.wait(fe, bell)?;
        }
    }
    let bulk_ns = (time::now() - t_bulk).as_nanos() as u64;
    let bulk_check_ns = eng.check_ns - check_before;
    let bulk_verified = eng.verified - verified_before;
    if bulk_verified != total {
        return Err(format!("verified {bulk_verified} bulk bytes, sent {total}"));
    }

    // Done.
    let rsp = eng.call(
        OP_DONE,
        DataRef { offset: 0, len: 0 },
        DataRef { offset: 0, len: 0 },
        fe,
        bell,
    )?;
    if rsp.status != ST_OK {
        return Err(format!("DONE answered with {rsp:?}"));
    }
    if eng.pages.free_pages() != eng.pages.pages() {
        return Err("data pages leaked".into());
    }
    let requests = p.rounds + bulk_reqs;
    if bell.resent > requests / 20 + 2 {
        return Err(format!(
            "{} doorbells had to be resent for {requests} requests: interrupts unreliable",
            bell.resent
        ));
    }
    rtts.sort_unstable();
    let pct = |q: usize| rtts.get((rtts.len() * q / 100).min(rtts.len().saturating_sub(1)));
    let us = |ns: Option<&u64>| ns.map_or(0, |n| n.div_ceil(1000));
    let mib_s = (total * 1_000_000_000 / bulk_ns.max(1)) >> 20;
    log::info!(
        "CHAN-RESULT ok proto=channel role=b rounds={} qos=granted guaranteed_bps={} class={} \
         handshake_ms={handshake_ms} rtt_us_median={} rtt_us_min={} rtt_us_p99={} small_ms={small_ms} \
         bad_refs={} bulk_mib={} chunk_kib={} depth={} bulk_requests={bulk_reqs} bw_mib_s={mib_s} \
         bulk_ms={} check_ms={} \
         verified_bytes={} irqs={} rung={} resent={}",
        rtts.len(),
        grant.guaranteed_bps,
        grant.class.as_str(),
        us(pct(50)),
        us(rtts.first()),
        us(pct(99)),
        p.bad_refs,
        p.bulk_mib,
        chunk >> 10,
        p.depth.max(1),
        bulk_ns / 1_000_000,
        bulk_check_ns / 1_000_000,
        eng.verified,
        bell.irqs,
        bell.rung,
        bell.resent
    );
    Ok(())
}

type Ring<'a> = FrontRing<Window<Region<'a>>, Proto>;

/// The frontend's request engine: data pages per request, verification of every answer.
struct Engine<'r, 'a> {
    ring: &'r mut Ring<'a>,
    data: DataArea<Region<'a>>,
    pages: &'r mut PageAllocator,
    next_id: u32,
    inflight: Vec<Flight>,
    buf: Vec<u8>,
    expect: Vec<u8>,
    /// Bytes verified so far.
    verified: u64,
    /// Time spent generating source patterns and checking answers (the test's own work, not
    /// the channel's).
    check_ns: u64,
}

impl Engine<'_, '_> {
    /// Allocates source and destination pages for `len` bytes, writes the source, pushes the
    /// request (not yet published). `false` when the ring or the data area is full.
    fn submit(&mut self, len: u32) -> Result<bool> {
        if self.ring.is_full() {
            return Ok(false);
        }
        let half = (len as usize).div_ceil(PAGE_SIZE) as u32;
        let Some(first) = self.pages.alloc_range(2 * half) else {
            return Ok(false);
        };
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let seed = id.wrapping_mul(0x9e37_79b9);
        let page_bytes = PAGE_SIZE as u32;
        let src = DataRef {
            offset: first * page_bytes,
            len,
        };
        let dst = DataRef {
            offset: (first + half) * page_bytes,
            len,
        };
        let t = time::now();
        self.buf.resize(len as usize, 0);
        fill(&mut self.buf, u64::from(seed) << 32 | u64::from(len));
        self.check_ns += (time::now() - t).as_nanos() as u64;
        self.data
            .write_ref(src, 0, &self.buf)
            .map_err(|e| proto_err("writing a source", e))?;
        let req = Req {
            id,
            op: OP_XFORM,
            src,
            dst,
            seed,
        };
        self.ring
            .push_request(&req.to_bytes())
            .map_err(|e| proto_err("ring 0", e))?;
        self.inflight.push(Flight {
            id,
            first_page: first,
            pages: 2 * half,
            src,
            dst,
            seed,
            sent: time::now(),
        });
        Ok(true)
    }

    /// Sends one request with no pages of its own (nothing else in flight) and waits for its
    /// response.
    fn call(
        &mut self,
        op: u32,
        src: DataRef,
        dst: DataRef,
        fe: &mut Frontend<Region<'_>>,
        bell: &mut Bell<'_>,
    ) -> Result<Rsp> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let req = Req {
            id,
            op,
            src,
            dst,
            seed: id,
        };
        self.ring
            .push_request(&req.to_bytes())
            .map_err(|e| proto_err("ring 0", e))?;
        self.flush(bell);
        loop {
            if let Some(raw) = self
                .ring
                .pop_response()
                .map_err(|e| proto_err("ring 0", e))?
            {
                let rsp = Rsp::parse(&raw);
                if rsp.id != id {
                    return Err(format!("response {rsp:?} to request {id}"));
                }
                return Ok(rsp);
            }
            self.wait(fe, bell)?;
        }
    }

    /// Publishes pushed requests; rings the backend if the ring says so.
    fn flush(&mut self, bell: &mut Bell<'_>) {
        if self.ring.publish_requests_and_check_notify() {
            bell.kick();
        }
    }

    /// Takes every available response, verifies it byte by byte, frees its pages; returns the
    /// round-trip times of the answered requests.
    fn reap(&mut self) -> Result<Vec<Duration>> {
        let mut done = Vec::new();
        while let Some(raw) = self
            .ring
            .pop_response()
            .map_err(|e| proto_err("ring 0", e))?
        {
            let now = time::now();
            let rsp = Rsp::parse(&raw);
            let at = self
                .inflight
                .iter()
                .position(|f| f.id == rsp.id)
                .ok_or_else(|| format!("response for unknown request id {}", rsp.id))?;
            let f = self.inflight.swap_remove(at);
            if rsp.status != ST_OK {
                return Err(format!(
                    "request {} refused by the backend: status {}",
                    f.id, rsp.status
                ));
            }
            if rsp.len != f.dst.len {
                return Err(format!(
                    "request {}: backend wrote {} bytes, expected {}",
                    f.id, rsp.len, f.dst.len
                ));
            }
            let t = time::now();
            let n = f.src.len as usize;
            self.expect.resize(n, 0);
            fill(
                &mut self.expect,
                u64::from(f.seed) << 32 | u64::from(f.src.len),
            );
            xform(&mut self.expect, f.seed);
            self.buf.resize(n, 0);
            self.data
                .read_ref(f.dst, 0, &mut self.buf)
                .map_err(|e| proto_err("reading a destination", e))?;
            if let Some(i) = self.buf.iter().zip(&self.expect).position(|(a, b)| a != b) {
                return Err(format!(
                    "request {}: byte {i} of {n} is {:#04x}, expected {:#04x}",
                    f.id, self.buf[i], self.expect[i]
                ));
            }
            self.verified += n as u64;
            self.check_ns += (time::now() - t).as_nanos() as u64;
            self.pages
                .free_range(f.first_page, f.pages)
                .map_err(|e| proto_err("freeing data pages", e))?;
            done.push(now - f.sent);
        }
        Ok(done)
    }

    /// Nothing to reap: final check, then sleep until a doorbell; watches the channel state.
    fn wait(&mut self, fe: &mut Frontend<Region<'_>>, bell: &mut Bell<'_>) -> Result<()> {
        // Any event while connected ends the run (one poll round reads the backend once).
        if let Some(ev) = fe.poll() {
            return Err(match ev {
                FrontendEvent::Failed(e) => proto_err("channel failed", e),
                FrontendEvent::Disconnect | FrontendEvent::Closed => {
                    format!("backend closed the channel (state {:?})", fe.state())
                }
                FrontendEvent::SetUp | FrontendEvent::Ready => {
                    format!("unexpected {ev:?} while connected")
                }
            });
        }
        if fe.take_notify() {
            bell.kick();
        }
        if fe.state() != XenbusState::Connected {
            return Err(format!("frontend left Connected: {:?}", fe.state()));
        }
        if self
            .ring
            .final_check_for_responses()
            .map_err(|e| proto_err("ring 0", e))?
        {
            return Ok(());
        }
        bell.nap("the backend's answers")
    }
}
