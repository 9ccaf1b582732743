//! A real frontend and a real backend on two threads over one `HostMem` region, the way two VMs
//! share one ivshmem region: the xenbus handshake over the control page, a QoS request granted
//! through the iConnect keys, then requests and responses through a ring and data through page
//! references (the backend copies with `netback::GrantAccess`, the seam its netif engine uses).
//!
//! Doorbells are simulated with one counter per direction: an end rings only when the channel
//! says so (`take_notify`, `publish_*_and_check_notify`) and sleeps only after the ring's final
//! check, until the counter moves. A lost notification would hang the test (caught by a
//! generous deadline, a hang guard and not a performance target).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use iconnect::qos::{self, LinkAdmission, NetQosRequest};
use iconnect::{Class, Decision};
use iconnect_channel::{
    Backend, BackendEvent, Frontend, FrontendConfig, FrontendEvent, KeyMap, RingSpec,
};
use netback::GrantAccess;
use xen_abi::ring::RawProtocol;
use xen_abi::shmem::HostMem;
use xen_abi::xenbus::{FrontendStyle, XenbusState};

/// Request: id, src page, offset, len, dst page. Response: id, status, checksum, len.
type P = RawProtocol<16, 16>;
const REQUESTS: u32 = 3000;
const BAD_EVERY: u32 = 97;
const HANG_GUARD: Duration = Duration::from_secs(20);

struct Bell {
    count: AtomicU64,
    rung: AtomicU64,
}

impl Bell {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            count: AtomicU64::new(0),
            rung: AtomicU64::new(0),
        })
    }
    fn ring(&self) {
        self.rung.fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::SeqCst);
    }
    fn seen(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }
    /// Sleeps until the bell rang after `seen` was read.
    fn wait(&self, seen: u64, start: Instant, who: impl Fn() -> String) {
        while self.count.load(Ordering::SeqCst) == seen {
            assert!(start.elapsed() < HANG_GUARD, "lost wake-up: {}", who());
            thread::yield_now();
        }
    }
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

fn checksum(b: &[u8]) -> u32 {
    b.iter().fold(0u32, |s, &x| s.rotate_left(5) ^ x as u32)
}

fn backend(m: HostMem, to_fe: Arc<Bell>, to_be: Arc<Bell>) -> (u32, u32, LinkAdmission) {
    let start = Instant::now();
    let mut features = KeyMap::new();
    features.insert("feature-transform", "1").unwrap();
    let mut be = Backend::new(m, features).unwrap();
    let mut link = LinkAdmission::new(1_000_000_000);
    let mut serving = None;
    let mut finished = false;
    let (mut ok, mut bad) = (0u32, 0u32);
    let mut buf = vec![0u8; 4096];
    loop {
        let seen = to_be.seen();
        let mut work = false;
        while let Some(ev) = be.poll() {
            work = true;
            match ev {
                BackendEvent::Connect => {
                    let d = match NetQosRequest::from_keys(be.frontend_keys()) {
                        Ok(Some(r)) => link.admit(&r),
                        Ok(None) => Decision::Refused {
                            reason: iconnect::RefuseReason::Policy,
                            error_key: None,
                        },
                        Err(e) => Decision::invalid(e),
                    };
                    qos::write_decision(&d, be.keys_mut()).unwrap();
                    be.publish_keys();
                    serving = Some((be.back_ring::<P>(0).unwrap(), be.data_area().unwrap()));
                    be.accept();
                }
                BackendEvent::Disconnect => {
                    if serving.take().is_some() {
                        finished = true;
                    }
                }
                BackendEvent::Removed | BackendEvent::Failed(_) => panic!("backend: {ev:?}"),
            }
        }
        if let Some((ring, data)) = serving.as_mut() {
            while let Some(req) = ring.pop_request().unwrap() {
                work = true;
                let (id, src, off, len, dst) = (
                    u32_at(&req, 0),
                    u32_at(&req, 4),
                    u32_at(&req, 8) as u16,
                    u32_at(&req, 8) >> 16,
                    u32_at(&req, 12),
                );
                let b = &mut buf[..len as usize];
                let mut rsp = [0u8; 16];
                rsp[..4].copy_from_slice(&id.to_le_bytes());
                rsp[12..].copy_from_slice(&len.to_le_bytes());
                match data.copy_from(src, off, b) {
                    Ok(()) => {
                        rsp[8..12].copy_from_slice(&checksum(b).to_le_bytes());
                        b.iter_mut().for_each(|x| *x = x.wrapping_add(1));
                        data.copy_to(dst, off, b).unwrap();
                        ok += 1;
                    }
                    Err(_) => {
                        rsp[4..8].copy_from_slice(&1u32.to_le_bytes());
                        bad += 1;
                    }
                }
                ring.push_response(&rsp).unwrap();
            }
            if ring.publish_responses_and_check_notify() {
                to_fe.ring();
            }
            if ring.final_check_for_requests().unwrap() {
                work = true;
            }
        }
        if be.take_notify() {
            to_fe.ring();
        }
        if finished && be.state() == XenbusState::Closed {
            return (ok, bad, link);
        }
        if !work {
            to_be.wait(seen, start, || {
                format!("backend {:?} ok={ok} bad={bad}", be.state())
            });
        }
    }
}

struct Pending {
    src: u32,
    dst: u32,
    off: usize,
    data: Vec<u8>,
    bad: bool,
}

fn frontend(m: HostMem, to_fe: Arc<Bell>, to_be: Arc<Bell>) -> (u32, u32) {
    let start = Instant::now();
    let mut keys = KeyMap::new();
    NetQosRequest {
        guaranteed_bps: 100_000_000,
        ceiling_bps: Some(500_000_000),
        burst_bytes: None,
        class: Class::Realtime,
    }
    .write(&mut keys)
    .unwrap();
    let config = FrontendConfig {
        style: FrontendStyle::Net,
        rings: vec![RingSpec {
            page_order: 0,
            slot_bytes: 16,
            vector: 0,
        }],
        data_pages: None,
    };
    let mut fe = Frontend::new(m, config, keys).unwrap();
    let mut io = None;
    let mut ready = false;
    let mut pending: Vec<Option<Pending>> = (0..REQUESTS).map(|_| None).collect();
    let (mut next, mut done, mut bad_seen) = (0u32, 0u32, 0u32);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut closing = false;
    let mut closed = false;
    loop {
        let seen = to_fe.seen();
        let mut work = false;
        while let Some(ev) = fe.poll() {
            work = true;
            match ev {
                FrontendEvent::SetUp => {
                    io = Some((
                        fe.front_ring::<P>(0).unwrap(),
                        fe.data_area().unwrap(),
                        fe.page_allocator(),
                    ));
                }
                FrontendEvent::Ready => {
                    let Ok(Some(Decision::Granted(g))) = qos::read_decision(fe.backend_keys())
                    else {
                        panic!("QoS not granted: {:?}", fe.backend_keys())
                    };
                    assert_eq!(
                        (g.guaranteed_bps, g.ceiling_bps, g.class),
                        (100_000_000, 500_000_000, Class::Realtime)
                    );
                    assert_eq!(fe.backend_keys().get("feature-transform"), Some("1"));
                    ready = true;
                }
                FrontendEvent::Disconnect => {
                    assert!(closing, "disconnected before the work was done ({done})");
                    io = None;
                }
                FrontendEvent::Closed => closed = true,
                FrontendEvent::Failed(e) => panic!("frontend: {e:?}"),
            }
        }
        if let (true, false, Some((ring, data, pages))) = (ready, closing, io.as_mut()) {
            // Responses first (they free pages).
            while let Some(rsp) = ring.pop_response().unwrap() {
                work = true;
                let id = u32_at(&rsp, 0);
                let p = pending[id as usize]
                    .take()
                    .expect("one response per request");
                let status = u32_at(&rsp, 4);
                if p.bad {
                    assert_eq!(status, 1, "request {id}: a bad reference must be refused");
                    bad_seen += 1;
                } else {
                    assert_eq!(status, 0, "request {id}");
                    assert_eq!(u32_at(&rsp, 8), checksum(&p.data), "request {id}: checksum");
                    let mut back = vec![0u8; p.data.len()];
                    data.copy_from_page(p.dst, p.off, &mut back).unwrap();
                    assert!(
                        back.iter()
                            .zip(&p.data)
                            .all(|(b, d)| *b == d.wrapping_add(1)),
                        "request {id}: data"
                    );
                    pages.free(p.src).unwrap();
                    pages.free(p.dst).unwrap();
                }
                done += 1;
            }
            // New requests while slots and pages last.
            while next < REQUESTS && !ring.is_full() && pages.free_pages() >= 2 {
                work = true;
                let bad = next % BAD_EVERY == BAD_EVERY - 1;
                let (src, dst) = if bad {
                    (pages.pages() + (rand() % 1000) as u32, 0)
                } else {
                    (pages.alloc().unwrap(), pages.alloc().unwrap())
                };
                let off = (rand() % 4096) as usize;
                let len = 1 + (rand() as usize % (4096 - off));
                let payload: Vec<u8> = (0..len).map(|_| rand() as u8).collect();
                if !bad {
                    data.copy_to_page(src, off, &payload).unwrap();
                }
                let mut req = [0u8; 16];
                req[..4].copy_from_slice(&next.to_le_bytes());
                req[4..8].copy_from_slice(&src.to_le_bytes());
                req[8..12].copy_from_slice(&((off as u32) | (len as u32) << 16).to_le_bytes());
                req[12..].copy_from_slice(&dst.to_le_bytes());
                ring.push_request(&req).unwrap();
                pending[next as usize] = Some(Pending {
                    src,
                    dst,
                    off,
                    data: payload,
                    bad,
                });
                next += 1;
            }
            if ring.publish_requests_and_check_notify() {
                to_be.ring();
            }
            if done == REQUESTS {
                closing = true;
                work = true;
                fe.close();
            } else if ring.final_check_for_responses().unwrap() {
                work = true;
            }
        }
        if fe.take_notify() {
            to_be.ring();
        }
        if closed {
            return (done, bad_seen);
        }
        if !work {
            to_fe.wait(seen, start, || {
                format!(
                    "frontend {:?} ready={ready} closing={closing} next={next} done={done}",
                    fe.state()
                )
            });
        }
    }
}

#[test]
fn frontend_and_backend_threads_negotiate_qos_and_move_data() {
    let m = HostMem::pages(64);
    let (to_fe, to_be) = (Bell::new(), Bell::new());
    let b = {
        let (m, f, be) = (m.clone(), to_fe.clone(), to_be.clone());
        thread::spawn(move || backend(m, f, be))
    };
    let f = {
        let (m, fe, be) = (m.clone(), to_fe.clone(), to_be.clone());
        thread::spawn(move || frontend(m, fe, be))
    };
    let (done, bad_seen) = f.join().expect("frontend thread");
    let (ok, bad, link) = b.join().expect("backend thread");
    assert_eq!(done, REQUESTS);
    assert_eq!(bad_seen, REQUESTS / BAD_EVERY);
    assert_eq!((ok, bad), (REQUESTS - bad_seen, bad_seen));
    assert_eq!(link.reserved_bps(), 100_000_000);
    // Doorbells were needed (and the event-index rule saved some).
    let (rung_fe, rung_be) = (
        to_fe.rung.load(Ordering::Relaxed),
        to_be.rung.load(Ordering::Relaxed),
    );
    assert!(rung_fe > 0 && rung_be > 0);
    println!("requests {REQUESTS}, doorbells to frontend {rung_fe}, to backend {rung_be}");
}
