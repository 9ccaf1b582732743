//! Measures the whole remote path on the host: a simulated blkfront's ring -> Blkback ->
//! NbdVolume -> nbd::Client -> loopback TCP -> the real `qemu-nbd`. 4 KiB random reads and
//! writes at queue depth 1 and 32 (IOPS, latency percentiles). A measurement, not a test:
//! `cargo run --release -p blkback --example nbd_chain_iops [seconds-per-case] [log-KiB]`.
//! Compare with `cargo run --release -p nbd --example qemu_nbd_iops` (the client alone).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use blkback::Config;
use blkback::remote::{NbdVolume, RemoteConfig};
use blkback::volume::Volume;
use common::{Rng, SimFront};
use xen_abi::blkif::{RwOp, Status};

fn main() {
    let secs: f64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(2.0);
    // Replay-log limit in KiB (the volume flushes on its own above it).
    let log_kib: usize = std::env::args().nth(2).and_then(|s| s.parse().ok()).unwrap_or(1024);
    let dir = std::env::temp_dir().join(format!("blk-chain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let img = dir.join("disk.raw");
    let size: u64 = 256 << 20;
    std::fs::write(&img, vec![0x5au8; size as usize]).unwrap();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new("/usr/bin/qemu-nbd")
        .args(["-f", "raw", "-x", "vol", "-b", "127.0.0.1", "-p", &port.to_string(), "--persistent"])
        .arg(&img)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("qemu-nbd");
    let t0 = Instant::now();
    let mut sock = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) if t0.elapsed() < Duration::from_secs(10) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("{e}"),
        }
    };
    sock.set_nodelay(true).unwrap();
    sock.set_nonblocking(true).unwrap();
    let clock = Instant::now();
    let now = || clock.elapsed().as_micros() as u64;
    let rc = RemoteConfig {
        max_log_bytes: log_kib << 10,
        ..RemoteConfig::default()
    };
    let mut vol = NbdVolume::new(nbd::Client::new(nbd::Config::new("vol")), rc);
    vol.client_mut().connect(now());
    let mut buf = vec![0u8; 1 << 20];
    let mut pump = |vol: &mut NbdVolume, sock: &mut TcpStream| {
        let c = vol.client_mut();
        while !c.transmit().is_empty() {
            match sock.write(c.transmit()) {
                Ok(n) => c.sent(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        match sock.read(&mut buf) {
            Ok(0) => panic!("server closed"),
            Ok(n) => c.receive(now(), &buf[..n]).unwrap(),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
    };
    while !vol.is_ready() {
        pump(&mut vol, &mut sock);
        vol.poll(now());
    }
    let g = vol.geometry();
    let mut front = SimFront::new(1);
    let mut be = front.backend(g, Config::default());
    let mut rng = Rng(42);
    for (name, write) in [("read", false), ("write", true)] {
        for qd in [1usize, 32] {
            let mut lat = Vec::new();
            let mut start: HashMap<u64, Instant> = HashMap::new();
            let t = Instant::now();
            let mut done = 0u64;
            while t.elapsed().as_secs_f64() < secs || !start.is_empty() {
                while t.elapsed().as_secs_f64() < secs && start.len() < qd {
                    let sector = rng.below(size / 4096) * 8;
                    let segs = front.segments(&mut rng, 8, write, true);
                    if write {
                        front.fill(&segs, &[0xa5; 4096]);
                    }
                    let op = if write { RwOp::Write } else { RwOp::Read };
                    let id = front.rw(op, sector, segs, false);
                    start.insert(id, Instant::now());
                }
                front.publish();
                be.poll(now(), &mut front.grants, &mut vol, 64).unwrap();
                pump(&mut vol, &mut sock);
                be.poll(now(), &mut front.grants, &mut vol, 64).unwrap();
                for d in front.responses() {
                    assert_eq!(d.rsp.status, Status::Okay);
                    lat.push(start.remove(&d.id).unwrap().elapsed().as_micros() as u64);
                    done += 1;
                }
            }
            let el = t.elapsed().as_secs_f64();
            lat.sort_unstable();
            let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
            println!(
                "4k random {name:5} qd={qd:2}: {:8.0} IOPS  p50={}us p99={}us ({done} ops in {el:.2}s)",
                done as f64 / el,
                p(0.5),
                p(0.99)
            );
        }
    }
    println!("volume: {:?}", vol.stats());
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
