//! The engine on a remote volume: simulated blkfront -> Blkback -> NbdVolume -> nbd::Client ->
//! a server, with connections dropped mid-run.
//!
//! * `lossy_server_*`: an in-process NBD server that, like a crashing machine, loses every
//!   write it acknowledged but was not asked to flush. The replay log must make every write the
//!   guest saw acknowledged durable by the next flush, and no guest request may fail.
//! * `qemu_nbd_*`: the same chain over TCP against the real `qemu-nbd`, killed and restarted
//!   mid-run; the image file must hold exactly what the guest wrote (skipped when qemu-nbd is
//!   not installed).

mod common;

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use blkback::remote::{NbdVolume, RemoteConfig};
use blkback::volume::Volume;
use blkback::{Blkback, Config};
use common::{Rng, SimFront, sectors_bytes};
use nbd::wire::{self, Request, SimpleReply, tflags};
use xen_abi::blkif::{RwOp, Status};
use xen_abi::shmem::HostMem;

/// Moves the client's bytes to and from some server.
trait Transport {
    /// One round of I/O; may drop the connection (calling `connection_lost`).
    fn pump(&mut self, vol: &mut NbdVolume, now: u64);
    /// Opens a new connection if the volume needs one.
    fn reconnect(&mut self, vol: &mut NbdVolume, now: u64);
}

// ---------------------------------------------------------------------------------------------
// A server that forgets unflushed writes when it "crashes".

struct Lossy {
    volatile: Vec<u8>,
    durable: Vec<u8>,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    skip: usize,
    connected: bool,
    rng: Rng,
    crash_every: u64,
    crashes: u64,
    lost_writes: u64,
}

impl Lossy {
    fn new(size: usize, crash_every: u64) -> Self {
        Self {
            volatile: vec![0; size],
            durable: vec![0; size],
            inbuf: Vec::new(),
            out: Vec::new(),
            skip: 0,
            connected: false,
            rng: Rng(77),
            crash_every,
            crashes: 0,
            lost_writes: 0,
        }
    }

    fn serve(&mut self) {
        let n = self.skip.min(self.inbuf.len());
        self.inbuf.drain(..n);
        self.skip -= n;
        loop {
            if self.inbuf.len() < wire::REQUEST_SIZE {
                return;
            }
            let r = Request::from_bytes(&self.inbuf).unwrap();
            let plen = if r.command == wire::Command::Write { r.length as usize } else { 0 };
            if self.inbuf.len() < wire::REQUEST_SIZE + plen {
                return;
            }
            let payload: Vec<u8> = self.inbuf[wire::REQUEST_SIZE..wire::REQUEST_SIZE + plen].to_vec();
            self.inbuf.drain(..wire::REQUEST_SIZE + plen);
            let (o, l) = (r.offset as usize, r.length as usize);
            let mut data = Vec::new();
            match r.command {
                wire::Command::Read => data = self.volatile[o..o + l].to_vec(),
                wire::Command::Write => {
                    self.volatile[o..o + l].copy_from_slice(&payload);
                    if r.flags & wire::cflags::FUA != 0 {
                        self.durable[o..o + l].copy_from_slice(&payload);
                    }
                }
                wire::Command::Trim => self.volatile[o..o + l].fill(0),
                wire::Command::Flush => self.durable.copy_from_slice(&self.volatile),
                wire::Command::Disc => return,
            }
            self.out.extend_from_slice(&SimpleReply { error: 0, cookie: r.cookie }.to_bytes());
            self.out.extend_from_slice(&data);
        }
    }
}

impl Transport for Lossy {
    fn pump(&mut self, vol: &mut NbdVolume, now: u64) {
        if !self.connected {
            return;
        }
        let c = vol.client_mut();
        let bytes = c.transmit().to_vec();
        c.sent(bytes.len());
        if self.crash_every > 0 && self.rng.below(self.crash_every) == 0 {
            // Crash: unflushed writes are gone, and so are the requests just received.
            if self.volatile != self.durable {
                self.lost_writes += 1;
            }
            self.volatile.copy_from_slice(&self.durable);
            self.connected = false;
            self.crashes += 1;
            vol.client_mut().connection_lost();
            return;
        }
        self.inbuf.extend_from_slice(&bytes);
        self.serve();
        let out = std::mem::take(&mut self.out);
        let _ = vol.client_mut().receive(now, &out);
    }

    fn reconnect(&mut self, vol: &mut NbdVolume, now: u64) {
        if !vol.needs_connect() {
            return;
        }
        let flags = tflags::HAS_FLAGS | tflags::SEND_FLUSH | tflags::SEND_FUA | tflags::SEND_TRIM;
        self.out = nbd::fuzzing::server_handshake(self.volatile.len() as u64, flags, None);
        self.inbuf.clear();
        // The client's flags and its NBD_OPT_GO (export "vol", one information request).
        self.skip = 4 + 16 + 4 + 3 + 2 + 2;
        self.connected = true;
        vol.client_mut().connect(now);
    }
}

// ---------------------------------------------------------------------------------------------
// qemu-nbd over TCP.

const QEMU_NBD: &str = "/usr/bin/qemu-nbd";

struct Qemu {
    child: Option<Child>,
    image: std::path::PathBuf,
    port: u16,
    sock: Option<TcpStream>,
    buf: Vec<u8>,
    kill_at: Vec<u64>,
    kills: u64,
    pumps: u64,
}

impl Qemu {
    fn start(&mut self) {
        let child = Command::new(QEMU_NBD)
            .args(["-f", "raw", "-x", "vol", "-b", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["--persistent", "--discard=unmap", "--cache=writeback"])
            .arg(&self.image)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn qemu-nbd");
        self.child = Some(child);
    }
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Transport for Qemu {
    fn pump(&mut self, vol: &mut NbdVolume, now: u64) {
        self.pumps += 1;
        if self.kill_at.first() == Some(&self.pumps) {
            self.kill_at.remove(0);
            self.kill();
            self.kills += 1;
        }
        let Some(s) = self.sock.as_mut() else { return };
        let mut lost = false;
        let c = vol.client_mut();
        while !c.transmit().is_empty() {
            match s.write(c.transmit()) {
                Ok(0) | Err(_) => {
                    lost = true;
                    break;
                }
                Ok(n) => c.sent(n),
            }
        }
        if !lost {
            match s.read(&mut self.buf) {
                Ok(0) => lost = true,
                Ok(n) => {
                    let _ = c.receive(now, &self.buf[..n]);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
                Err(_) => lost = true,
            }
        }
        if lost {
            c.connection_lost();
            self.sock = None;
        }
    }

    fn reconnect(&mut self, vol: &mut NbdVolume, now: u64) {
        if !vol.needs_connect() {
            return;
        }
        self.sock = None;
        if self.child.is_none() {
            self.start();
        }
        let t0 = Instant::now();
        let s = loop {
            match TcpStream::connect(("127.0.0.1", self.port)) {
                Ok(s) => break s,
                Err(_) if t0.elapsed() < Duration::from_secs(10) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => panic!("connect: {e}"),
            }
        };
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
        self.sock = Some(s);
        vol.client_mut().connect(now);
    }
}

// ---------------------------------------------------------------------------------------------
// The guest workload.

/// A guest request in flight: kind, sector, sectors, written data, model snapshot (flushes).
type InFlight = (u8, u64, u64, Vec<u8>, Option<Vec<u8>>);

/// Writes, reads, discards and flushes from a simulated blkfront through the engine to the
/// remote volume. Every request must succeed; reads see the acknowledged state; after each
/// flush response, `durable()` must hold every write acknowledged before the flush was sent.
/// Returns the model (what the disk must hold) and the number of flushes.
fn workload<T: Transport>(
    t: &mut T,
    vol: &mut NbdVolume,
    size: u64,
    n_ops: usize,
    seed: u64,
    durable: &dyn Fn(&T) -> Vec<u8>,
) -> (Vec<u8>, u64) {
    let mut rng = Rng(seed | 1);
    let t0 = Instant::now();
    let now = || t0.elapsed().as_micros() as u64;
    // First handshake: the geometry comes from the export.
    while !vol.is_ready() {
        t.reconnect(vol, now());
        t.pump(vol, now());
        vol.poll(now());
    }
    let g = vol.geometry();
    assert_eq!(g.size, size);
    assert!(g.flush && g.discard && !g.read_only);
    let mut front = SimFront::new(1);
    let mut be: Blkback<HostMem> = front.backend(g, Config::default());
    let mut model = vec![0u8; size as usize];
    let mut inflight: BTreeMap<u64, InFlight> = BTreeMap::new();
    let (mut issued, mut flushes) = (0, 0u64);
    let total = size / 512;
    let deadline = Instant::now() + Duration::from_secs(120);
    while issued < n_ops || !inflight.is_empty() {
        assert!(Instant::now() < deadline, "workload stuck: {} in flight", inflight.len());
        for _ in 0..rng.below(6) {
            if issued == n_ops || front.ring.free_requests() == 0 {
                break;
            }
            let kind = rng.below(10) as u8; // 0-3 write, 4-6 read, 7 discard, 8-9 flush
            let n = 8 * rng.range(1, 16);
            let sector = rng.below(total / 8 - 16) * 8;
            let busy = inflight.values().any(|(k, s, m, _, _)| *k < 8 && kind < 8 && *s < sector + n && sector < s + m);
            if busy {
                continue;
            }
            let (id, data, snap) = match kind {
                0..=3 => {
                    let segs = front.segments(&mut rng, n, true, false);
                    let data = rng.bytes(sectors_bytes(n));
                    front.fill(&segs, &data);
                    let ind = rng.below(3) == 0;
                    (front.rw(RwOp::Write, sector, segs, ind), data, None)
                }
                4..=6 => {
                    let segs = front.segments(&mut rng, n, false, false);
                    (front.rw(RwOp::Read, sector, segs, false), Vec::new(), None)
                }
                7 => (front.discard(sector, n), Vec::new(), None),
                _ => (front.flush(), Vec::new(), Some(model.clone())),
            };
            inflight.insert(id, (kind, sector, n, data, snap));
            issued += 1;
        }
        front.publish();
        t.reconnect(vol, now());
        t.pump(vol, now());
        be.poll(now(), &mut front.grants, vol, 32).unwrap();
        for d in front.responses() {
            let (kind, sector, n, data, snap) = inflight.remove(&d.id).unwrap();
            assert_eq!(d.rsp.status, Status::Okay, "kind {kind} at {sector}+{n}");
            let r = sectors_bytes(sector)..sectors_bytes(sector + n);
            match kind {
                0..=3 => model[r].copy_from_slice(&data),
                4..=6 => assert!(d.data == model[r], "read at {sector} differs"),
                7 => model[r].fill(0),
                _ => {
                    flushes += 1;
                    // Everything acknowledged before the flush was sent, and not touched since
                    // (no write/discard in flight over it), is durable now.
                    let snap = snap.unwrap();
                    let dur = durable(t);
                    let busy: Vec<(u64, u64)> =
                        inflight.values().filter(|v| v.0 < 8 && !(4..=6).contains(&v.0)).map(|v| (v.1, v.2)).collect();
                    for s in 0..total {
                        if busy.iter().any(|(b, m)| *b <= s && s < b + m) {
                            continue;
                        }
                        let b = sectors_bytes(s)..sectors_bytes(s + 1);
                        if snap[b.clone()] == model[b.clone()] {
                            assert!(dur[b.clone()] == model[b], "sector {s} not durable after a flush");
                        }
                    }
                }
            }
        }
    }
    // A final flush: everything the guest wrote is durable.
    let id = front.flush();
    front.publish();
    loop {
        assert!(Instant::now() < deadline, "final flush stuck");
        t.reconnect(vol, now());
        t.pump(vol, now());
        be.poll(now(), &mut front.grants, vol, 32).unwrap();
        let r = front.responses();
        if let Some(d) = r.iter().find(|d| d.id == id) {
            assert_eq!(d.rsp.status, Status::Okay);
            break;
        }
    }
    assert_eq!(be.stats().io_errors + be.stats().bad_requests + be.stats().copy_errors, 0);
    (model, flushes + 1)
}

fn client() -> nbd::Client {
    let mut c = nbd::Config::new("vol");
    c.max_payload = 64 * 1024; // several parts per large request
    nbd::Client::new(c)
}

#[test]
fn lossy_server_crashes_lose_no_acknowledged_write() {
    let size = 4u64 << 20;
    let mut srv = Lossy::new(size as usize, 60);
    let mut vol = NbdVolume::new(client(), RemoteConfig::default());
    let (model, flushes) = workload(&mut srv, &mut vol, size, 3000, 1, &|s: &Lossy| s.durable.clone());
    println!(
        "crashes={} (with unflushed data: {}) flushes={flushes} volume stats {:?} client {:?}",
        srv.crashes,
        srv.lost_writes,
        vol.stats(),
        vol.client().stats()
    );
    assert!(srv.crashes >= 10 && srv.lost_writes >= 5, "the test must crash with unflushed data");
    assert!(vol.stats().replayed > 0 && vol.stats().retried > 0);
    assert!(srv.durable == model, "durable image differs from what the guest wrote");
    assert_eq!(vol.log_bytes(), 0, "the final flush trims the whole log");
}

#[test]
fn lossy_server_small_log_flushes_on_its_own() {
    let size = 1u64 << 20;
    let mut srv = Lossy::new(size as usize, 40);
    let cfg = RemoteConfig {
        max_log_bytes: 16 * 1024,
        ..RemoteConfig::default()
    };
    let mut vol = NbdVolume::new(client(), cfg);
    let (model, _) = workload(&mut srv, &mut vol, size, 800, 2, &|s: &Lossy| s.durable.clone());
    assert!(vol.stats().log_flushes > 0);
    assert!(vol.log_bytes() == 0);
    assert!(srv.durable == model);
}

#[test]
fn unreachable_server_fails_operations_at_their_deadline() {
    use blkback::volume::{IoKind, IoRequest};
    let mut srv = Lossy::new(1 << 20, 0);
    let cfg = RemoteConfig {
        op_timeout_us: Some(5_000_000),
        ..RemoteConfig::default()
    };
    let mut vol = NbdVolume::new(client(), cfg);
    srv.reconnect(&mut vol, 0);
    while !vol.is_ready() {
        srv.pump(&mut vol, 0);
        vol.poll(0);
    }
    // The server goes away for good; a read and a flush wait, then fail at the deadline.
    srv.connected = false;
    vol.client_mut().connection_lost();
    let req = |tag, kind, len| IoRequest { tag, kind, offset: 0, len, data: Vec::new() };
    vol.submit(req(1, IoKind::Read, 4096));
    vol.submit(req(2, IoKind::Flush, 0));
    assert!(vol.poll(1_000_000).is_none(), "armed at the first poll");
    assert!(vol.poll(5_999_999).is_none());
    let mut got: Vec<(u64, Result<(), blkback::Error>)> = std::iter::from_fn(|| vol.poll(6_000_000)).map(|c| (c.tag, c.result)).collect();
    got.sort_by_key(|g| g.0);
    assert_eq!(got, vec![(1, Err(blkback::Error::Io)), (2, Err(blkback::Error::Io))]);
    assert!(vol.can_submit());
}

#[test]
fn qemu_nbd_killed_twice_guest_sees_no_error_and_file_is_exact() {
    if !Path::new(QEMU_NBD).exists() {
        eprintln!("SKIP: {QEMU_NBD} not installed (Debian package qemu-utils)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("blkback-nbd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let image = dir.join("vol.raw");
    let size = 8u64 << 20;
    std::fs::File::create(&image).unwrap().set_len(size).unwrap();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut q = Qemu {
        child: None,
        image: image.clone(),
        port,
        sock: None,
        buf: vec![0; 256 * 1024],
        kill_at: vec![200, 500],
        kills: 0,
        pumps: 0,
    };
    q.start();
    let mut vol = NbdVolume::new(client(), RemoteConfig::default());
    let t = Instant::now();
    let img = image.clone();
    let (model, flushes) = workload(&mut q, &mut vol, size, 2500, 3, &move |_q: &Qemu| std::fs::read(&img).unwrap());
    let el = t.elapsed();
    q.kill();
    println!(
        "2500 guest requests + {flushes} flushes through blkback -> NbdVolume -> qemu-nbd in {el:?}; kills={} sessions={} retried={} replayed={}",
        q.kills,
        vol.stats().sessions,
        vol.stats().retried,
        vol.stats().replayed
    );
    assert_eq!(q.kills, 2);
    assert!(vol.stats().sessions >= 3);
    let file = std::fs::read(&image).unwrap();
    assert!(file == model, "image file differs from what the guest wrote");
    let _ = std::fs::remove_dir_all(&dir);
}
