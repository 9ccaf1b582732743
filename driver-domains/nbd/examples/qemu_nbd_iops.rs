//! Measures the sans-IO client against the real `qemu-nbd` over loopback TCP: 4 KiB random
//! reads and writes at queue depth 1 and 32 (IOPS, latency percentiles). A measurement, not a
//! test: `cargo run --release -p nbd --example qemu_nbd_iops [seconds-per-case]`.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nbd::{Client, Config, Event};

fn main() {
    let secs: f64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let dir = std::env::temp_dir().join(format!("nbd-iops-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let img = dir.join("disk.raw");
    let size: u64 = 256 << 20;
    // Preallocated (not sparse) so reads hit real data.
    std::fs::write(&img, vec![0x5au8; size as usize]).unwrap();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new("/usr/bin/qemu-nbd")
        .args(["-f", "raw", "-x", "e", "-b", "127.0.0.1", "-p", &port.to_string(), "--persistent"])
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
    let mut c = Client::new(Config::new("e"));
    let clock = Instant::now();
    let now = || clock.elapsed().as_micros() as u64;
    c.connect(now());
    let mut buf = vec![0u8; 1 << 20];
    let mut pump = |c: &mut Client, sock: &mut TcpStream| {
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
    loop {
        pump(&mut c, &mut sock);
        if let Some(Event::Ready(info)) = c.next_event() {
            println!("export: {} MiB, flags {:#x}", info.size >> 20, info.flags);
            break;
        }
    }
    let data = vec![0xa5u8; 4096];
    let mut x = 0x1234_5678u64;
    for (name, write) in [("read", false), ("write", true)] {
        for qd in [1usize, 32] {
            let mut lat: Vec<u64> = Vec::new();
            let mut start = std::collections::HashMap::new();
            let t = Instant::now();
            let mut done = 0u64;
            while t.elapsed().as_secs_f64() < secs || !start.is_empty() {
                while t.elapsed().as_secs_f64() < secs && c.in_flight() < qd {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let off = (x % (size / 4096)) * 4096;
                    let h = if write { c.write(now(), off, &data, false) } else { c.read(now(), off, 4096) }.unwrap();
                    start.insert(h, Instant::now());
                }
                pump(&mut c, &mut sock);
                while let Some(ev) = c.next_event() {
                    if let Event::Done(d) = ev {
                        assert_eq!(d.result, Ok(()));
                        lat.push(start.remove(&d.handle).unwrap().elapsed().as_micros() as u64);
                        done += 1;
                    }
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
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
