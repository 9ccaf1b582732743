//! Network probes: ICMP echo over a raw socket and a TCP echo exchange.
//!
//! They run *inside* the test's network namespace: the parent re-executes this binary as
//! `ip netns exec <ns> <xtask> probe ping|tcp ...` ([`run_in`]). A probe prints one
//! `PROBE <kind> key=value ...` line per observation on stdout and exits non-zero on any failure
//! (the reason on stderr).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream};
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Subcommand;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::netns::Netns;
use crate::util::{self, XorShift};

#[derive(Subcommand, Debug)]
pub enum ProbeCmd {
    /// ICMP echo: send `count` requests, verify id, seq and payload of every reply.
    Ping {
        addr: Ipv4Addr,
        #[arg(long, default_value_t = 3)]
        count: u16,
        /// ICMP payload bytes.
        #[arg(long, default_value_t = 56)]
        size: usize,
        /// Per-reply timeout.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
        #[arg(long, default_value_t = 200)]
        interval_ms: u64,
    },
    /// TCP echo: send `bytes` random bytes in pieces, verify the echo is identical.
    Tcp {
        addr: Ipv4Addr,
        #[arg(long, default_value_t = 7)]
        port: u16,
        #[arg(long, default_value_t = 65536)]
        bytes: usize,
        /// PRNG seed for the payload and the piece sizes (default: time based).
        #[arg(long)]
        seed: Option<u64>,
        /// Timeout for the whole exchange.
        #[arg(long, default_value_t = 60_000)]
        timeout_ms: u64,
    },
    /// Bulk TCP for `secs` seconds: `send` writes to `addr:port` (a sink), `recv` reads from it
    /// (a source). Prints `PROBE bulk dir=send|recv bytes= us= bps=`.
    Bulk {
        addr: Ipv4Addr,
        #[arg(long)]
        port: u16,
        #[arg(long, value_enum)]
        dir: BulkDir,
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
    },
    /// Host-side peer for guests: TCP echo, sink (discard) and source (chargen) services on
    /// 0.0.0.0 until killed. Prints `PROBE serving ...` once listening, `PROBE sink-tick` every
    /// `tick_ms` per active sink connection, and `PROBE conn ...` when a connection ends.
    Serve {
        #[arg(long, default_value_t = PEER_ECHO_PORT)]
        echo_port: u16,
        #[arg(long, default_value_t = PEER_SINK_PORT)]
        sink_port: u16,
        #[arg(long, default_value_t = PEER_SOURCE_PORT)]
        source_port: u16,
        #[arg(long, default_value_t = 1000)]
        tick_ms: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BulkDir {
    Send,
    Recv,
}

/// Ports of the host-side peer ([`ProbeCmd::Serve`]) at 10.0.2.2 in the topology namespace.
pub const PEER_ECHO_PORT: u16 = 7;
pub const PEER_SINK_PORT: u16 = 9;
pub const PEER_SOURCE_PORT: u16 = 19;

pub fn run(cmd: &ProbeCmd) -> Result<()> {
    match *cmd {
        ProbeCmd::Ping { addr, count, size, timeout_ms, interval_ms } => ping(
            addr,
            count,
            size,
            Duration::from_millis(timeout_ms),
            Duration::from_millis(interval_ms),
        ),
        ProbeCmd::Tcp { addr, port, bytes, seed, timeout_ms } => {
            tcp_echo(addr, port, bytes, seed.unwrap_or_else(util::time_seed), Duration::from_millis(timeout_ms))
        }
        ProbeCmd::Bulk { addr, port, dir, secs } => bulk(addr, port, dir, Duration::from_secs_f64(secs.max(0.1))),
        ProbeCmd::Serve { echo_port, sink_port, source_port, tick_ms } => {
            serve(echo_port, sink_port, source_port, Duration::from_millis(tick_ms.max(10)))
        }
    }
}

/// One finished connection to the host-side peer, from a `PROBE conn ...` line.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerConn {
    /// `echo`, `sink` or `source`.
    pub kind: String,
    pub from: Ipv4Addr,
    /// Bytes received (echo, sink) or sent (source).
    pub bytes: u64,
    /// From accept to close.
    pub us: u64,
    /// Bytes per second between the first and the last byte (0 if fewer than two reads).
    pub bps: u64,
}

impl PeerConn {
    pub fn parse(line: &str) -> Option<PeerConn> {
        let rest = line.strip_prefix("PROBE conn ")?;
        let num = |k: &str| field(rest, k)?.parse().ok();
        Some(PeerConn {
            kind: field(rest, "kind")?.to_string(),
            from: from_ip(rest)?,
            bytes: num("bytes")?,
            us: num("us")?,
            bps: num("bps")?,
        })
    }
}

/// The address of a `from=<ip>:<port>` field.
fn from_ip(fields: &str) -> Option<Ipv4Addr> {
    let from = field(fields, "from")?;
    from.split_once(':').map_or(from, |(ip, _)| ip).parse().ok()
}

/// One `PROBE sink-tick from=<ip:port> bytes=<in this tick> ms=<tick length> at_ms=<tick end>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SinkTick {
    pub from: Ipv4Addr,
    pub bytes: u64,
    pub ms: u64,
    /// End of the tick, ms since the peer started.
    pub at_ms: u64,
}

impl SinkTick {
    pub fn parse(line: &str) -> Option<SinkTick> {
        let rest = line.strip_prefix("PROBE sink-tick ")?;
        let num = |k: &str| field(rest, k)?.parse().ok();
        Some(SinkTick { from: from_ip(rest)?, bytes: num("bytes")?, ms: num("ms")?, at_ms: num("at_ms")? })
    }
}

/// Bits per second `from` delivered to the sink in a typical second of the window
/// `[start_ms, end_ms]`: the median of its ticks wholly inside it (a flood or a shaper acts on
/// every second; a host too loaded to run the VMs for a moment spoils only some), or None if no
/// tick falls inside.
pub fn window_bps(ticks: &[SinkTick], from: Ipv4Addr, start_ms: u64, end_ms: u64) -> Option<u64> {
    let mut rates: Vec<u64> = ticks
        .iter()
        .filter(|t| t.from == from && t.at_ms <= end_ms && t.at_ms.saturating_sub(t.ms) >= start_ms)
        .map(|t| t.bytes * 8 * 1000 / t.ms.max(1))
        .collect();
    rates.sort_unstable();
    rates.get(rates.len() / 2).copied()
}

fn bulk(addr: Ipv4Addr, port: u16, dir: BulkDir, secs: Duration) -> Result<()> {
    let sa = SocketAddr::V4(SocketAddrV4::new(addr, port));
    let mut s = TcpStream::connect_timeout(&sa, Duration::from_secs(10)).with_context(|| format!("connecting to {sa}"))?;
    let start = Instant::now();
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    XorShift::new(util::time_seed()).fill(&mut buf);
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    s.set_write_timeout(Some(Duration::from_millis(200)))?;
    while start.elapsed() < secs {
        let r = match dir {
            BulkDir::Send => s.write(&buf),
            BulkDir::Recv => s.read(&mut buf),
        };
        match r {
            Ok(0) => bail!("{sa} closed the connection after {bytes} bytes"),
            Ok(n) => bytes += n as u64,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted) => {}
            Err(e) => return Err(e).with_context(|| format!("{dir:?} after {bytes} bytes")),
        }
    }
    if dir == BulkDir::Send {
        // Written is not delivered: take off what still sits in our send queue (unacked).
        use std::os::fd::AsRawFd;
        let mut queued: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int through the pointer, which is valid.
        if unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut queued) } == 0 {
            bytes = bytes.saturating_sub(u64::try_from(queued).unwrap_or(0));
        }
    }
    let us = start.elapsed().as_micros() as u64;
    let _ = s.shutdown(Shutdown::Both);
    ensure!(bytes > 0, "no byte moved in {}", util::fmt_dur(secs));
    println!(
        "PROBE bulk dir={} bytes={bytes} us={us} bps={}",
        if dir == BulkDir::Send { "send" } else { "recv" },
        bytes * 8 * 1_000_000 / us.max(1)
    );
    Ok(())
}

fn serve(echo_port: u16, sink_port: u16, source_port: u16, tick: Duration) -> Result<()> {
    use std::net::TcpListener;
    let bind = |port: u16| {
        TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
            .with_context(|| format!("listening on TCP port {port}"))
    };
    let listeners = [("echo", bind(echo_port)?), ("sink", bind(sink_port)?), ("source", bind(source_port)?)];
    println!("PROBE serving echo={echo_port} sink={sink_port} source={source_port}");
    std::io::stdout().flush()?;
    let epoch = Instant::now();
    let mut handles = Vec::new();
    for (kind, l) in listeners {
        handles.push(thread::spawn(move || {
            for s in l.incoming().flatten() {
                thread::spawn(move || serve_conn(kind, s, tick, epoch));
            }
        }));
    }
    for h in handles {
        let _ = h.join();
    }
    bail!("listeners ended")
}

/// Serves one connection and prints its `PROBE conn` line.
/// Ticks carry `at_ms=` (milliseconds since `epoch`, the peer's start) so rates of different
/// connections can be compared over a common window.
fn serve_conn(kind: &'static str, mut s: TcpStream, tick: Duration, epoch: Instant) {
    let from = s.peer_addr().map_or_else(|_| "0.0.0.0:0".to_string(), |a| a.to_string());
    let start = Instant::now();
    let mut bytes = 0u64;
    let (mut first, mut last) = (None::<Instant>, start);
    let mut buf = vec![0u8; 64 * 1024];
    match kind {
        "source" => {
            XorShift::new(util::time_seed()).fill(&mut buf);
            while let Ok(n) = s.write(&buf) {
                if n == 0 {
                    break;
                }
                bytes += n as u64;
                first.get_or_insert_with(Instant::now);
                last = Instant::now();
            }
        }
        _ => {
            let _ = s.set_read_timeout(Some(tick));
            let (mut tick_start, mut tick_bytes) = (Instant::now(), 0u64);
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        bytes += n as u64;
                        tick_bytes += n as u64;
                        first.get_or_insert_with(Instant::now);
                        last = Instant::now();
                        if kind == "echo" && s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
                if kind == "sink" && tick_start.elapsed() >= tick {
                    println!(
                        "PROBE sink-tick from={from} bytes={tick_bytes} ms={} at_ms={}",
                        tick_start.elapsed().as_millis(),
                        epoch.elapsed().as_millis()
                    );
                    let _ = std::io::stdout().flush();
                    (tick_start, tick_bytes) = (Instant::now(), 0);
                }
            }
        }
    }
    let span = first.map_or(0.0, |f| (last - f).as_secs_f64());
    let bps = if span > 0.0 { (bytes as f64 * 8.0 / span) as u64 } else { 0 };
    println!("PROBE conn kind={kind} from={from} bytes={bytes} us={} bps={bps}", start.elapsed().as_micros());
    let _ = std::io::stdout().flush();
}

/// RFC 1071 internet checksum.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        let w = if c.len() == 2 { u16::from_be_bytes([c[0], c[1]]) } else { u16::from_be_bytes([c[0], 0]) };
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// ICMP echo request (type 8) with checksum.
pub fn echo_request(id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![8, 0, 0, 0];
    p.extend(id.to_be_bytes());
    p.extend(seq.to_be_bytes());
    p.extend_from_slice(payload);
    let c = checksum(&p);
    p[2..4].copy_from_slice(&c.to_be_bytes());
    p
}

#[derive(Debug, PartialEq, Eq)]
pub struct EchoReply<'a> {
    pub src: Ipv4Addr,
    pub id: u16,
    pub seq: u16,
    pub payload: &'a [u8],
}

/// Parse an IPv4 packet as received on a raw ICMP socket; `Some` only for a well-formed echo reply
/// (type 0, code 0) with a valid ICMP checksum.
pub fn parse_echo_reply(pkt: &[u8]) -> Option<EchoReply<'_>> {
    let first = *pkt.first()?;
    if first >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(first & 0x0f) * 4;
    if ihl < 20 || pkt.len() < ihl + 8 || pkt[9] != 1 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
    let end = if total >= ihl + 8 && total <= pkt.len() { total } else { pkt.len() };
    let icmp = &pkt[ihl..end];
    if icmp[0] != 0 || icmp[1] != 0 || checksum(icmp) != 0 {
        return None;
    }
    Some(EchoReply {
        src: Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]),
        id: u16::from_be_bytes([icmp[4], icmp[5]]),
        seq: u16::from_be_bytes([icmp[6], icmp[7]]),
        payload: &icmp[8..],
    })
}

fn ping(addr: Ipv4Addr, count: u16, size: usize, timeout: Duration, interval: Duration) -> Result<()> {
    ensure!(count > 0, "count must be > 0");
    let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))
        .context("opening a raw ICMP socket (needs root / CAP_NET_RAW)")?;
    let dest = SockAddr::from(SocketAddrV4::new(addr, 0));
    let id = (std::process::id() & 0xffff) as u16;
    let mut rng = XorShift::new(util::time_seed());
    let mut rtts = Vec::new();
    let mut buf = vec![0u8; 65536];
    for seq in 1..=count {
        let mut payload = vec![0u8; size];
        rng.fill(&mut payload);
        let pkt = echo_request(id, seq, &payload);
        let sent = Instant::now();
        sock.send_to(&pkt, &dest).with_context(|| format!("sending echo request {seq} to {addr}"))?;
        let deadline = sent + timeout;
        let rtt = loop {
            let now = Instant::now();
            if now >= deadline {
                bail!("no echo reply from {addr} for seq={seq} within {}", util::fmt_dur(timeout));
            }
            sock.set_read_timeout(Some(deadline - now))?;
            let n = match (&sock).read(&mut buf) {
                Ok(n) => n,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    continue;
                }
                Err(e) => return Err(e).context("receiving on the raw socket"),
            };
            let Some(r) = parse_echo_reply(&buf[..n]) else { continue };
            if r.src != addr || r.id != id {
                continue;
            }
            ensure!(r.seq == seq, "echo reply with seq={} while waiting for seq={seq}", r.seq);
            ensure!(
                r.payload == payload.as_slice(),
                "echo reply seq={seq} payload differs ({} bytes back, {} sent)",
                r.payload.len(),
                payload.len()
            );
            break sent.elapsed();
        };
        println!("PROBE ping seq={seq} id={id} bytes={size} rtt_us={}", rtt.as_micros());
        rtts.push(rtt);
        if seq < count {
            thread::sleep(interval);
        }
    }
    let min = rtts.iter().min().copied().unwrap_or_default();
    let max = rtts.iter().max().copied().unwrap_or_default();
    let avg = rtts.iter().sum::<Duration>() / rtts.len() as u32;
    println!(
        "PROBE ping-done sent={count} received={} min_us={} avg_us={} max_us={}",
        rtts.len(),
        min.as_micros(),
        avg.as_micros(),
        max.as_micros()
    );
    Ok(())
}

fn tcp_echo(addr: Ipv4Addr, port: u16, bytes: usize, seed: u64, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut rng = XorShift::new(seed);
    let mut payload = vec![0u8; bytes];
    rng.fill(&mut payload);
    // Piece sizes between 1 and 4096 bytes, so segment boundaries vary.
    let mut pieces = Vec::new();
    let mut left = bytes;
    while left > 0 {
        let n = ((rng.next_u64() % 4096) as usize + 1).min(left);
        pieces.push(n);
        left -= n;
    }
    let sa = SocketAddr::V4(SocketAddrV4::new(addr, port));
    let stream = TcpStream::connect_timeout(&sa, Duration::from_secs(10).min(timeout))
        .with_context(|| format!("connecting to {sa}"))?;
    let connect = start.elapsed();
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let to_send = payload.clone();
    let npieces = pieces.len();
    let w = thread::spawn(move || -> std::io::Result<()> {
        let mut off = 0;
        for n in pieces {
            writer.write_all(&to_send[off..off + n])?;
            off += n;
        }
        writer.flush()
    });
    let mut got = Vec::with_capacity(bytes);
    let mut buf = vec![0u8; 16384];
    let mut reader = &stream;
    while got.len() < bytes {
        let now = Instant::now();
        if now >= deadline {
            let _ = stream.shutdown(Shutdown::Both);
            bail!("timeout: {} of {bytes} bytes echoed within {}", got.len(), util::fmt_dur(timeout));
        }
        reader.set_read_timeout(Some(deadline - now))?;
        match reader.read(&mut buf) {
            Ok(0) => bail!("connection closed after {} of {bytes} bytes echoed", got.len()),
            Ok(n) => {
                let off = got.len();
                got.extend_from_slice(&buf[..n]);
                if got.len() > bytes {
                    bail!("echo returned more bytes ({}) than sent ({bytes})", got.len());
                }
                if let Some(i) = (0..n).find(|&i| got[off + i] != payload[off + i]) {
                    bail!(
                        "echoed byte {} differs: got {:#04x}, sent {:#04x} (seed {seed})",
                        off + i,
                        got[off + i],
                        payload[off + i]
                    );
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context(format!("reading the echo after {} bytes", got.len())),
        }
    }
    let elapsed = start.elapsed();
    w.join().map_err(|_| anyhow::anyhow!("writer thread panicked"))?.context("sending")?;
    ensure!(got == payload, "echo differs from what was sent (seed {seed})");
    let _ = stream.shutdown(Shutdown::Both);
    let xfer = (elapsed - connect).as_secs_f64().max(1e-9);
    println!(
        "PROBE tcp bytes={bytes} pieces={npieces} seed={seed} connect_us={} total_us={} kib_s={:.0}",
        connect.as_micros(),
        elapsed.as_micros(),
        bytes as f64 / 1024.0 / xfer
    );
    Ok(())
}

/// Value of `key=` in a `PROBE ...` line.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|t| t.strip_prefix(key)?.strip_prefix('='))
}

/// ICMP echo from inside `ns` to `ip`, `count` times `interval_ms` apart: the RTTs (µs), one per
/// request (an error unless every reply came back intact).
pub fn ping_in(ns: &Netns, ip: &str, count: u16, interval_ms: u64) -> Result<Vec<u64>> {
    let args: Vec<String> =
        ["ping", ip, "--count", &count.to_string(), "--timeout-ms", "5000", "--interval-ms", &interval_ms.to_string()]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let limit = Duration::from_millis(10_000 + (5000 + interval_ms) * u64::from(count));
    let lines = run_in(ns, &args, limit)?;
    let rtts: Vec<u64> = lines
        .iter()
        .filter(|l| l.starts_with("PROBE ping "))
        .filter_map(|l| field(l, "rtt_us")?.parse().ok())
        .collect();
    ensure!(rtts.len() == usize::from(count), "expected {count} echo replies from {ip}, the probe reported {}", rtts.len());
    Ok(rtts)
}

/// Run `xtask probe <args>` inside `ns` (re-exec of this binary), killed by PID after `limit`.
/// Returns the `PROBE` lines; an error carries the probe's stderr.
pub fn run_in(ns: &Netns, args: &[String], limit: Duration) -> Result<Vec<String>> {
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    let mut cmd = ns.command(&exe);
    cmd.arg("probe").args(args);
    println!("$ {}", util::show(&cmd));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the probe")?;
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if Instant::now() >= deadline || util::interrupted() {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(10));
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let lines: Vec<String> = out.lines().filter(|l| l.starts_with("PROBE ")).map(str::to_string).collect();
    match status {
        None => bail!("probe killed after {}; output so far:\n{}", util::fmt_dur(limit), lines.join("\n")),
        Some(s) if !s.success() => bail!(
            "probe failed ({s}): {}{}",
            err.trim().trim_start_matches("xtask: error: "),
            if lines.is_empty() { String::new() } else { format!("\n{}", lines.join("\n")) }
        ),
        Some(_) => Ok(lines),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_known_vector() {
        // RFC 1071 example words: 0x0001 0xf203 0xf4f5 0xf6f7 -> sum 0xddf2, checksum 0x220d.
        assert_eq!(checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), 0x220d);
        // A packet with its checksum filled in sums to zero.
        let p = echo_request(0x1234, 7, b"hello!!");
        assert_eq!(checksum(&p), 0);
    }

    fn ipv4_wrap(src: [u8; 4], icmp: &[u8]) -> Vec<u8> {
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0];
        let total = (20 + icmp.len()) as u16;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip.extend(src);
        ip.extend([10, 0, 2, 2]);
        ip.extend_from_slice(icmp);
        ip
    }

    fn as_reply(mut req: Vec<u8>) -> Vec<u8> {
        req[0] = 0;
        req[2] = 0;
        req[3] = 0;
        let c = checksum(&req);
        req[2..4].copy_from_slice(&c.to_be_bytes());
        req
    }

    #[test]
    fn parses_a_real_shaped_reply() {
        let pkt = ipv4_wrap([10, 0, 2, 15], &as_reply(echo_request(42, 3, b"payload")));
        let r = parse_echo_reply(&pkt).unwrap();
        assert_eq!(r, EchoReply { src: Ipv4Addr::new(10, 0, 2, 15), id: 42, seq: 3, payload: b"payload" });
    }

    #[test]
    fn rejects_requests_bad_checksums_and_junk() {
        // Our own request (type 8) is not a reply.
        assert!(parse_echo_reply(&ipv4_wrap([10, 0, 2, 15], &echo_request(1, 1, b"x"))).is_none());
        let mut pkt = ipv4_wrap([10, 0, 2, 15], &as_reply(echo_request(1, 1, b"abcd")));
        let last = pkt.len() - 1;
        pkt[last] ^= 0xff;
        assert!(parse_echo_reply(&pkt).is_none(), "corrupted payload must fail the checksum");
        assert!(parse_echo_reply(&[]).is_none());
        assert!(parse_echo_reply(&[0x45; 10]).is_none());
        assert!(parse_echo_reply(&[0x4f; 30]).is_none());
    }

    #[test]
    fn peer_lines() {
        let c = PeerConn::parse("PROBE conn kind=sink from=10.0.2.21:49152 bytes=1000 us=2000000 bps=4000").unwrap();
        assert_eq!(c, PeerConn { kind: "sink".into(), from: Ipv4Addr::new(10, 0, 2, 21), bytes: 1000, us: 2_000_000, bps: 4000 });
        assert!(PeerConn::parse("PROBE conn kind=sink from=nope bytes=1 us=1 bps=1").is_none());
        let t = SinkTick::parse("PROBE sink-tick from=10.0.2.22:5 bytes=125000 ms=1000 at_ms=3000").unwrap();
        assert_eq!((t.from, t.bytes, t.ms, t.at_ms), (Ipv4Addr::new(10, 0, 2, 22), 125_000, 1000, 3000));
        let a = Ipv4Addr::new(10, 0, 2, 21);
        let tick = |bytes, at_ms| SinkTick { from: a, bytes, ms: 1000, at_ms };
        let ticks = [tick(1000, 1000), tick(250, 2000), tick(250, 3000), tick(9000, 4000), t];
        // Only the ticks covering [1000, 3000] count; other sources never do.
        assert_eq!(window_bps(&ticks, a, 1000, 3000), Some(2000));
        assert_eq!(window_bps(&ticks, a, 1500, 2500), None);
        // A stalled second does not move the typical one.
        let stalled = [tick(250, 2000), tick(10, 3000), tick(250, 4000), tick(260, 5000), tick(250, 6000)];
        assert_eq!(window_bps(&stalled, a, 1000, 6000), Some(2000));
    }

    /// The sink side of the host peer over loopback: it counts what a client sent.
    #[test]
    fn peer_sink_counts_bytes() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let srv = thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            serve_conn("sink", s, Duration::from_millis(50), Instant::now());
        });
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(&[7u8; 100_000]).unwrap();
        drop(c);
        srv.join().unwrap();
    }

    #[test]
    fn probe_fields() {
        let l = "PROBE ping seq=2 id=7 bytes=56 rtt_us=321";
        assert_eq!(field(l, "rtt_us"), Some("321"));
        assert_eq!(field(l, "seq"), Some("2"));
        assert_eq!(field(l, "nope"), None);
    }

    /// A real TCP echo exchange over loopback against a tiny echo server thread, exercising the
    /// probe's piecewise send/verify path (the guest is the real peer in the QEMU tier).
    #[test]
    fn tcp_echo_against_loopback_server() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let srv = thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut b = [0u8; 3000];
            loop {
                match s.read(&mut b) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => s.write_all(&b[..n]).unwrap(),
                }
            }
        });
        tcp_echo(Ipv4Addr::LOCALHOST, port, 100_000, 5, Duration::from_secs(20)).unwrap();
        srv.join().unwrap();
    }

    /// A corrupting echo server must make the probe fail.
    #[test]
    fn tcp_echo_detects_corruption() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let srv = thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut b = [0u8; 1000];
            let mut total = 0usize;
            loop {
                match s.read(&mut b) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if total <= 5000 && total + n > 5000 {
                            b[5000 - total] ^= 1;
                        }
                        total += n;
                        if s.write_all(&b[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let e = tcp_echo(Ipv4Addr::LOCALHOST, port, 20_000, 9, Duration::from_secs(20)).unwrap_err();
        assert!(e.to_string().contains("byte 5000"), "{e}");
        srv.join().unwrap();
    }
}
