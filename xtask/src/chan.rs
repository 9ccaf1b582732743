//! The QEMU channel test: our `ivshmem-server` (tools/ivshmem-server) serves one channel, two
//! `chan-test` VMs (`role=a`, `role=b`) join it with an `ivshmem-doorbell` device each, ping-pong
//! over doorbells and shared memory, move a bulk payload, and exit. Both must print
//! `CHAN-RESULT ok` and exit with status 33. While they run, a third VM tries to join the full
//! channel and must be refused (QEMU exits 1 with "server sent version -2"). The measured
//! round-trip latency and bandwidth are reported (never asserted: performance lives in
//! benchmarks).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

use crate::qemu::{Accel, GuestExit, Outcome, Qemu};
use crate::util;

/// Ping-pong rounds run by `role=a`.
pub const ROUNDS: u32 = 1000;
/// MiB moved from a to b through the region.
pub const BULK_MIB: u32 = 16;
/// Region size (a power of two; BAR2 of each VM).
pub const REGION: &str = "4M";
/// `cargo xtask bench chan`: round trips and MiB per run, and runs.
const BENCH_ROUNDS: u32 = 10_000;
const BENCH_MIB: u32 = 64;
const BENCH_RUNS: usize = 5;
/// Bounds a hang only (both VMs finish in well under a second under TCG).
const TIMEOUT: Duration = Duration::from_secs(120);
/// `timeout_s=` of the guests.
const GUEST_TIMEOUT_S: u64 = 60;

/// Builds the server (host binary) and returns its path.
pub fn build_server() -> Result<PathBuf> {
    let mut cmd = util::cargo();
    cmd.args(["build", "-p", "ivshmem-server", "--bin", "ivshmem-server"]);
    util::run(&mut cmd).context("building ivshmem-server")?;
    let bin = util::target_dir()?.join("debug").join("ivshmem-server");
    ensure!(bin.is_file(), "{} was not built", bin.display());
    Ok(bin)
}

/// A running `ivshmem-server`: killed (by PID) when dropped; its log is kept.
pub struct Server {
    child: Child,
    pub socket: PathBuf,
    log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts the server on `socket` and waits for its `listening on` line.
    pub fn start(bin: &Path, socket: &Path, size: &str, vectors: u16) -> Result<Server> {
        let mut cmd = Command::new(bin);
        cmd.arg("--socket")
            .arg(socket)
            .args(["--size", size, "--vectors", &vectors.to_string()]);
        println!("$ {}", util::show(&cmd));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        util::die_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let log1 = Arc::clone(&log);
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    let _ = tx.send(());
                }
                log1.lock()
                    .expect("log lock")
                    .push_str(&format!("{line}\n"));
            }
        });
        let mut stderr = child.stderr.take().context("no stderr pipe")?;
        let log2 = Arc::clone(&log);
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                log2.lock()
                    .expect("log lock")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let server = Server {
            child,
            socket: socket.to_path_buf(),
            log,
        };
        if rx.recv_timeout(Duration::from_secs(10)).is_err() {
            bail!(
                "ivshmem-server did not start listening within 10 s:\n{}",
                server.log()
            );
        }
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the server printed so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// A socket path under the target dir (or the temp dir if that path is too long for a UNIX
/// socket).
pub fn socket_path(name: &str) -> Result<PathBuf> {
    let dir = util::target_dir()?.join("chan");
    let p = dir.join(format!("{name}-{}.sock", std::process::id()));
    if p.as_os_str().len() < 100 {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        return Ok(p);
    }
    Ok(std::env::temp_dir().join(format!("iconnect-{name}-{}.sock", std::process::id())))
}

/// QEMU arguments joining a VM to the channel served on `socket`.
pub fn ivshmem_args(socket: &Path, vectors: u16, id: &str) -> Vec<String> {
    vec![
        "-chardev".into(),
        format!("socket,path={},id={id}", socket.display()),
        "-device".into(),
        format!("ivshmem-doorbell,chardev={id},vectors={vectors}"),
    ]
}

/// The `key=value` fields of a `CHAN-RESULT ok ...` line, or the reason of a
/// `CHAN-RESULT FAIL <why>` line as `Err`. `None` when the line has no marker.
pub fn parse_result(line: &str) -> Option<std::result::Result<BTreeMap<String, String>, String>> {
    let rest = &line[line.find("CHAN-RESULT ")? + "CHAN-RESULT ".len()..];
    if let Some(why) = rest.strip_prefix("FAIL") {
        return Some(Err(why.trim().to_string()));
    }
    let rest = rest.strip_prefix("ok")?;
    Some(Ok(rest
        .split_whitespace()
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()))
}

/// The TSC rate `rt` calibrated (its first log line says `TSC <N> kHz`).
pub fn tsc_khz(serial: &[String]) -> Option<u64> {
    serial.iter().find_map(|l| {
        let i = l.find("TSC ")?;
        l[i + 4..].split_whitespace().next()?.parse().ok()
    })
}

/// What one pair of VMs measured (times by `a`'s TSC).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Measured {
    pub rounds: u64,
    pub rtt_us_median: u64,
    pub rtt_us_min: u64,
    pub rtt_us_p99: u64,
    pub bulk_mib: u64,
    /// a writes a chunk, b copies it out and checksums it, a gets the answer: end to end.
    pub bw_mib_s: u64,
    /// a's copy into the region alone.
    pub write_mib_s: u64,
    pub resent: u64,
    /// The TSC rates the two VMs calibrated (kHz).
    pub tsc_khz: (Option<u64>, Option<u64>),
}

impl Measured {
    /// Whether both VMs agree on the TSC rate within 25% (TCG calibration can be far off).
    pub fn timings_reliable(&self) -> bool {
        match self.tsc_khz {
            (Some(a), Some(b)) => a.max(b) * 4 <= a.min(b) * 5,
            _ => false,
        }
    }

    /// One line for the test report.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} doorbell round trips: median {} us (min {}, p99 {}); {} MiB a->b at {} MiB/s (a's copy-in {} MiB/s); resent {}",
            self.rounds,
            self.rtt_us_median,
            self.rtt_us_min,
            self.rtt_us_p99,
            self.bulk_mib,
            self.bw_mib_s,
            self.write_mib_s,
            self.resent,
        );
        if !self.timings_reliable() {
            s.push_str(&format!(
                " [timings unreliable: the VMs calibrated their TSC at {:?} and {:?} kHz]",
                self.tsc_khz.0, self.tsc_khz.1
            ));
        }
        s
    }
}

/// Checks both VMs' results and returns what they measured.
pub fn check_pair(
    a_serial: &[String],
    a_exit: GuestExit,
    b_serial: &[String],
    b_exit: GuestExit,
    rounds: u32,
) -> Result<Measured> {
    let result = |serial: &[String], role: &str| -> Result<BTreeMap<String, String>> {
        match serial.iter().find_map(|l| parse_result(l)) {
            None => bail!("{role}: no CHAN-RESULT line"),
            Some(Err(why)) => bail!("{role}: CHAN-RESULT FAIL {why}"),
            Some(Ok(f)) => {
                ensure!(
                    f.get("role").map(String::as_str) == Some(role),
                    "{role}: CHAN-RESULT line is for role {:?}",
                    f.get("role")
                );
                Ok(f)
            }
        }
    };
    let a = result(a_serial, "a")?;
    let b = result(b_serial, "b")?;
    let num = |f: &BTreeMap<String, String>, k: &str| -> Result<u64> {
        f.get(k)
            .with_context(|| format!("CHAN-RESULT has no {k}="))?
            .parse()
            .with_context(|| format!("bad {k}="))
    };
    ensure!(
        num(&a, "rounds")? == u64::from(rounds),
        "a ran {} rounds, expected {rounds}",
        num(&a, "rounds")?
    );
    ensure!(
        num(&b, "rounds")? == u64::from(rounds),
        "b answered {} pings, expected {rounds}",
        num(&b, "rounds")?
    );
    ensure!(
        num(&a, "bulk_mib")? == num(&b, "bulk_mib")?,
        "a sent {} MiB, b received {} MiB",
        num(&a, "bulk_mib")?,
        num(&b, "bulk_mib")?
    );
    ensure_both_succeeded(a_exit, b_exit)?;
    Ok(Measured {
        rounds: u64::from(rounds),
        rtt_us_median: num(&a, "rtt_us_median")?,
        rtt_us_min: num(&a, "rtt_us_min")?,
        rtt_us_p99: num(&a, "rtt_us_p99")?,
        bulk_mib: num(&a, "bulk_mib")?,
        bw_mib_s: num(&a, "bw_mib_s")?,
        write_mib_s: num(&a, "write_mib_s")?,
        resent: num(&a, "resent")?,
        tsc_khz: (tsc_khz(a_serial), tsc_khz(b_serial)),
    })
}

/// Checks that a third VM was refused by the full channel: QEMU itself fails (status 1) on the
/// refusal version the server sends.
pub fn check_refused(exit: GuestExit, stderr: &str) -> Result<()> {
    ensure!(
        stderr.contains("server sent version -2"),
        "the third VM was not refused by the server (ended with {exit}; stderr: {:?})",
        stderr.trim()
    );
    ensure!(
        exit == GuestExit::Other(1),
        "refused QEMU ended with {exit}, expected status 1"
    );
    Ok(())
}

/// The test: server + two VMs on one channel (+ a third, refused).
pub fn qemu_chan(accel: Accel, image: &Path) -> Result<String> {
    let bin = build_server()?;
    Ok(
        run_pair(accel, image, &bin, ROUNDS, BULK_MIB, true)?.summary()
            + "; a ran on its 2nd channel; a third VM was refused",
    )
}

/// Runs one pair on a fresh server. With `checks` (the test), VM a also holds a second, idle
/// channel (its first ivshmem device; the test runs on `chan=1`), as a driver domain serving
/// several guests does, and a third VM must be refused by the full channel.
pub fn run_pair(
    accel: Accel,
    image: &Path,
    server_bin: &Path,
    rounds: u32,
    bulk_mib: u32,
    checks: bool,
) -> Result<Measured> {
    let a_args = format!("rounds={rounds} bulk_mib={bulk_mib}");
    let run = boot_pair(accel, image, server_bin, &a_args, "", checks)?;
    match check_pair(&run.a.serial, run.a.exit, &run.b.serial, run.b.exit, rounds)
        .and_then(|m| run.checks.map(|()| m))
    {
        Ok(m) => Ok(m),
        Err(e) => bail!("{e:#}\n{}", run.diagnostics),
    }
}

/// What a pair of VMs left behind.
pub struct PairRun {
    pub a: Outcome,
    pub b: Outcome,
    /// The result of the `checks` (idle second channel, third VM refused).
    pub checks: Result<()>,
    /// Both VMs' diagnostics and the server log, for failure reports.
    pub diagnostics: String,
}

/// Boots `role=a` (with `a_args`) and `role=b` (with `b_args`) on a fresh server and waits for
/// both. With `checks`, see [`run_pair`].
pub fn boot_pair(
    accel: Accel,
    image: &Path,
    server_bin: &Path,
    a_args: &str,
    b_args: &str,
    checks: bool,
) -> Result<PairRun> {
    let socket = socket_path("chan-test")?;
    let server = Server::start(server_bin, &socket, REGION, 2)?;
    let idle = if checks {
        let s = socket_path("chan-idle")?;
        Some(Server::start(server_bin, &s, "1M", 2)?)
    } else {
        None
    };
    let vm = |role: &str| {
        let mut q = Qemu::new(image, accel).timeout(TIMEOUT);
        // The guests give up (and say why) well before QEMU's timeout.
        let mut append = format!("role={role} timeout_s={GUEST_TIMEOUT_S}");
        let extra = if role == "a" { a_args } else { b_args };
        if !extra.is_empty() {
            append.push(' ');
            append.push_str(extra);
        }
        if let (true, Some(idle)) = (role == "a", &idle) {
            append.push_str(" chan=1");
            q = q.args_extra(ivshmem_args(&idle.socket, 2, "idle"));
        }
        q.append(&append)
            .args_extra(ivshmem_args(&socket, 2, "ivs"))
    };
    // Both join before either finishes: each waits (in the guest) for the other's id.
    let mut a = vm("a").spawn()?;
    let mut b = vm("b").spawn()?;
    // QEMU joins the channel before the guest runs: once both guests are up, the channel is
    // full and a third VM must be refused. (Its role is invalid, so if it were admitted it would
    // fail at once rather than disturb the pair.)
    let ready = |l: &str| l.contains("ICONNECT-READY");
    let third = match (a.wait_for(ready, TIMEOUT), b.wait_for(ready, TIMEOUT)) {
        (Ok(_), Ok(_)) if checks => {
            let c = Qemu::new(image, accel)
                .append("role=third")
                .args_extra(ivshmem_args(&socket, 2, "ivs"))
                .timeout(Duration::from_secs(30))
                .run()?;
            check_refused(c.exit, &c.stderr)
        }
        _ => Ok(()), // the pair's own failure is reported below
    };
    let (oa, ob): (Outcome, Outcome) = (a.wait(), b.wait());
    let log = server.log();
    drop(server);
    drop(idle);
    let third = third.and_then(|()| {
        ensure!(
            !checks || oa.serial.iter().any(|l| l.contains("ivshmem #1")),
            "VM a did not open both of its ivshmem devices"
        );
        Ok(())
    });
    let diagnostics = format!(
        "=== VM a ===\n{}\n=== VM b ===\n{}\n=== ivshmem-server ===\n{log}",
        oa.diagnostics(),
        ob.diagnostics()
    );
    Ok(PairRun {
        a: oa,
        b: ob,
        checks: third,
        diagnostics,
    })
}

/// What a `proto=channel` pair measured (times by b's TSC: b is the requesting frontend).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelMeasured {
    pub rounds: u64,
    pub rtt_us_median: u64,
    pub rtt_us_min: u64,
    pub rtt_us_p99: u64,
    pub bulk_mib: u64,
    pub chunk_kib: u64,
    pub depth: u64,
    /// b -> a (copy out, transform, copy in) -> b, verified: payload MiB/s.
    pub bw_mib_s: u64,
    /// The bulk phase, and the part of it b spent generating and checking patterns.
    pub bulk_ms: u64,
    pub check_ms: u64,
    pub guaranteed_bps: u64,
    pub class: String,
    pub resent: u64,
}

impl ChannelMeasured {
    /// One line for the test report.
    pub fn summary(&self) -> String {
        format!(
            "iconnect-channel: QoS granted {} bit/s class {}; {} request round trips: median {} us \
             (min {}, p99 {}); {BAD_REFS} hostile data references refused; {} MiB in {} KiB requests x{} in flight, transformed by a and \
             verified by b, at {} MiB/s ({} ms, of which b's pattern generation and checks {} ms); \
             resent {}",
            self.guaranteed_bps,
            self.class,
            self.rounds,
            self.rtt_us_median,
            self.rtt_us_min,
            self.rtt_us_p99,
            self.bulk_mib,
            self.chunk_kib,
            self.depth,
            self.bw_mib_s,
            self.bulk_ms,
            self.check_ms,
            self.resent
        )
    }
}

/// Checks a `proto=channel` pair: both `CHAN-RESULT ok proto=channel` with `qos=granted`, the
/// counts agree (rounds, bytes served by a = bytes verified by b), both exit 33.
pub fn check_channel_pair(
    a_serial: &[String],
    a_exit: GuestExit,
    b_serial: &[String],
    b_exit: GuestExit,
    rounds: u32,
    bulk_mib: u32,
) -> Result<ChannelMeasured> {
    let result = |serial: &[String], role: &str| -> Result<BTreeMap<String, String>> {
        match serial.iter().find_map(|l| parse_result(l)) {
            None => bail!("{role}: no CHAN-RESULT line"),
            Some(Err(why)) => bail!("{role}: CHAN-RESULT FAIL {why}"),
            Some(Ok(f)) => {
                ensure!(
                    f.get("proto").map(String::as_str) == Some("channel"),
                    "{role}: CHAN-RESULT line is not proto=channel"
                );
                ensure!(
                    f.get("role").map(String::as_str) == Some(role),
                    "{role}: CHAN-RESULT line is for role {:?}",
                    f.get("role")
                );
                ensure!(
                    f.get("qos").map(String::as_str) == Some("granted"),
                    "{role}: qos={:?}, expected granted",
                    f.get("qos")
                );
                Ok(f)
            }
        }
    };
    let a = result(a_serial, "a")?;
    let b = result(b_serial, "b")?;
    let num = |f: &BTreeMap<String, String>, k: &str| -> Result<u64> {
        f.get(k)
            .with_context(|| format!("CHAN-RESULT has no {k}="))?
            .parse()
            .with_context(|| format!("bad {k}="))
    };
    for (f, role) in [(&a, "a"), (&b, "b")] {
        ensure!(
            num(f, "rounds")? == u64::from(rounds),
            "{role}: {} small requests, expected {rounds}",
            num(f, "rounds")?
        );
        ensure!(
            num(f, "guaranteed_bps")? == 100_000_000
                && f.get("class").map(String::as_str) == Some("realtime"),
            "{role}: granted {:?} bit/s class {:?}, asked 100000000 realtime",
            f.get("guaranteed_bps"),
            f.get("class")
        );
    }
    ensure!(
        num(&b, "bad_refs")? == u64::from(BAD_REFS) && num(&a, "refused")? == u64::from(BAD_REFS),
        "b sent {} hostile references, a refused {}, expected {BAD_REFS} each",
        num(&b, "bad_refs")?,
        num(&a, "refused")?
    );
    let total = u64::from(bulk_mib) << 20;
    ensure!(
        num(&b, "bulk_mib")? == u64::from(bulk_mib),
        "b moved {} MiB, expected {bulk_mib}",
        num(&b, "bulk_mib")?
    );
    let verified = num(&b, "verified_bytes")?;
    ensure!(
        verified == total + u64::from(rounds) * 64,
        "b verified {verified} bytes, expected {}",
        total + u64::from(rounds) * 64
    );
    ensure!(
        num(&a, "bytes")? == verified,
        "a transformed {} bytes, b verified {verified}",
        num(&a, "bytes")?
    );
    ensure!(
        num(&a, "bulk_requests")? == num(&b, "bulk_requests")?,
        "a served {} bulk requests, b sent {}",
        num(&a, "bulk_requests")?,
        num(&b, "bulk_requests")?
    );
    ensure_both_succeeded(a_exit, b_exit)?;
    Ok(ChannelMeasured {
        rounds: u64::from(rounds),
        rtt_us_median: num(&b, "rtt_us_median")?,
        rtt_us_min: num(&b, "rtt_us_min")?,
        rtt_us_p99: num(&b, "rtt_us_p99")?,
        bulk_mib: u64::from(bulk_mib),
        chunk_kib: num(&b, "chunk_kib")?,
        depth: num(&b, "depth")?,
        bw_mib_s: num(&b, "bw_mib_s")?,
        bulk_ms: num(&b, "bulk_ms")?,
        check_ms: num(&b, "check_ms")?,
        guaranteed_bps: num(&b, "guaranteed_bps")?,
        class: b.get("class").cloned().unwrap_or_default(),
        resent: num(&a, "resent")? + num(&b, "resent")?,
    })
}

/// Requests with hostile data references b sends in the channel test (a must refuse each with
/// an error response and keep serving).
pub const BAD_REFS: u32 = 2;

/// The test: two VMs speak the real iConnect channel (`proto=channel`): b the frontend with a
/// QoS request, a the backend admitting it, then requests with data references, every byte
/// verified.
pub fn qemu_chan_channel(accel: Accel, image: &Path) -> Result<String> {
    let bin = build_server()?;
    let args = format!("proto=channel rounds={ROUNDS} bulk_mib={BULK_MIB} bad_refs={BAD_REFS}");
    let run = boot_pair(accel, image, &bin, &args, &args, false)?;
    match check_channel_pair(
        &run.a.serial,
        run.a.exit,
        &run.b.serial,
        run.b.exit,
        ROUNDS,
        BULK_MIB,
    ) {
        Ok(m) => Ok(m.summary()),
        Err(e) => bail!("{e:#}\n{}", run.diagnostics),
    }
}

/// `cargo xtask bench chan`: several pairs of VMs (more round trips and data than the test);
/// prints every run and the medians over the runs whose VMs agree on the TSC rate.
pub fn bench() -> Result<()> {
    crate::prereq::ensure_qemu()?;
    let accel = Accel::choose(None)?;
    let image = crate::images::build(&[crate::images::find("chan-test")?])?
        .remove(0)
        .path;
    let bin = build_server()?;
    let mut good = Vec::new();
    for i in 1..=BENCH_RUNS {
        let m = run_pair(accel, &image, &bin, BENCH_ROUNDS, BENCH_MIB, false)?;
        println!("run {i}/{BENCH_RUNS}: {}", m.summary());
        if m.timings_reliable() {
            good.push(m);
        }
    }
    ensure!(
        !good.is_empty(),
        "no run where both VMs calibrated the same TSC rate"
    );
    let median = |f: fn(&Measured) -> u64| {
        let mut v: Vec<u64> = good.iter().map(f).collect();
        v.sort_unstable();
        v[v.len() / 2]
    };
    println!(
        "chan ({accel}, medians of {} runs with agreeing TSCs; {BENCH_ROUNDS} round trips, {BENCH_MIB} MiB each): \
         doorbell round trip {} us (min {} us, p99 {} us); a->b through the region {} MiB/s end to end, \
         a's copy-in {} MiB/s",
        good.len(),
        median(|m| m.rtt_us_median),
        median(|m| m.rtt_us_min),
        median(|m| m.rtt_us_p99),
        median(|m| m.bw_mib_s),
        median(|m| m.write_mib_s),
    );
    Ok(())
}

/// Both VMs of a pair must end with status 33.
fn ensure_both_succeeded(a_exit: GuestExit, b_exit: GuestExit) -> Result<()> {
    ensure!(a_exit == GuestExit::Success, "a ended with {a_exit}, expected success (status 33)");
    ensure!(b_exit == GuestExit::Success, "b ended with {b_exit}, expected success (status 33)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(str::to_string).collect()
    }

    const A_OK: &str = "[ 0.01] INFO  rt: Tcg; TSC 2596236 kHz (pit)\n[ 0.3] INFO  chan_test: CHAN-RESULT ok role=a rounds=1000 rtt_us_median=50 rtt_us_min=33 rtt_us_p99=158 pings_ms=62 bulk_mib=16 chunk_kib=1024 bw_mib_s=166 write_mib_s=2001 irqs=1015+1 resent=0";
    const B_OK: &str = "[ 0.01] INFO  rt: Tcg; TSC 2596210 kHz (pit)\nCHAN-RESULT ok role=b rounds=1000 bulk_chunks=16 bulk_mib=16 irqs=1016+1 reanswered=0";

    #[test]
    fn result_lines_parse() {
        let f = parse_result("x CHAN-RESULT ok role=a rounds=3")
            .unwrap()
            .unwrap();
        assert_eq!(f["role"], "a");
        assert_eq!(f["rounds"], "3");
        assert_eq!(
            parse_result("[1] ERROR c: CHAN-RESULT FAIL timed out").unwrap(),
            Err("timed out".into())
        );
        assert!(parse_result("nothing here").is_none());
        assert_eq!(tsc_khz(&lines(A_OK)), Some(2596236));
    }

    #[test]
    fn pair_check_accepts_real_output() {
        let m = check_pair(
            &lines(A_OK),
            GuestExit::Success,
            &lines(B_OK),
            GuestExit::Success,
            1000,
        )
        .unwrap();
        assert_eq!(
            (m.rtt_us_median, m.rtt_us_p99, m.bw_mib_s, m.resent),
            (50, 158, 166, 0)
        );
        assert!(m.timings_reliable());
        let s = m.summary();
        assert!(s.contains("median 50 us") && s.contains("166 MiB/s"), "{s}");
        assert!(!s.contains("unreliable"));
    }

    #[test]
    fn pair_check_rejects_failures() {
        let (a, b) = (lines(A_OK), lines(B_OK));
        assert!(check_pair(&a, GuestExit::Failure, &b, GuestExit::Success, 1000).is_err());
        assert!(check_pair(&a, GuestExit::Success, &b, GuestExit::TimedOut, 1000).is_err());
        assert!(check_pair(&a, GuestExit::Success, &b, GuestExit::Success, 999).is_err());
        // Roles swapped, missing line, FAIL line.
        assert!(check_pair(&b, GuestExit::Success, &a, GuestExit::Success, 1000).is_err());
        assert!(
            check_pair(
                &a,
                GuestExit::Success,
                &lines("boot"),
                GuestExit::Success,
                1000
            )
            .is_err()
        );
        let fail = lines("CHAN-RESULT FAIL the peer never published its id");
        let e = check_pair(&a, GuestExit::Success, &fail, GuestExit::Failure, 1000).unwrap_err();
        assert!(e.to_string().contains("never published"), "{e}");
        // b answered fewer pings than a claims.
        let short_b = lines(&B_OK.replace("rounds=1000", "rounds=10"));
        assert!(check_pair(&a, GuestExit::Success, &short_b, GuestExit::Success, 1000).is_err());
        let short_bulk = lines(&B_OK.replace("bulk_mib=16", "bulk_mib=15"));
        assert!(
            check_pair(
                &a,
                GuestExit::Success,
                &short_bulk,
                GuestExit::Success,
                1000
            )
            .is_err()
        );
    }

    const CA_OK: &str = "[ 0.5] INFO  chan_test::proto: CHAN-RESULT ok proto=channel role=a rounds=1000 bulk_requests=256 bytes=16841216 refused=2 qos=granted guaranteed_bps=100000000 class=realtime state=Connected irqs=900 rung=950 resent=0";
    const CB_OK: &str = "[ 0.5] INFO  chan_test::proto: CHAN-RESULT ok proto=channel role=b rounds=1000 qos=granted guaranteed_bps=100000000 class=realtime handshake_ms=3 rtt_us_median=86 rtt_us_min=41 rtt_us_p99=155 small_ms=90 bad_refs=2 bulk_mib=16 chunk_kib=64 depth=8 bulk_requests=256 bw_mib_s=84 bulk_ms=190 check_ms=160 verified_bytes=16841216 irqs=950 rung=900 resent=1";

    #[test]
    fn channel_pair_check() {
        let ok = GuestExit::Success;
        let (a, b) = (lines(CA_OK), lines(CB_OK));
        let m = check_channel_pair(&a, ok, &b, ok, 1000, 16).unwrap();
        assert_eq!((m.rtt_us_median, m.bw_mib_s, m.resent), (86, 84, 1));
        assert_eq!(m.class, "realtime");
        // Exits, counts, roles, a raw-mode line, a refusal, a FAIL line.
        assert!(check_channel_pair(&a, GuestExit::Failure, &b, ok, 1000, 16).is_err());
        assert!(check_channel_pair(&a, ok, &b, GuestExit::TimedOut, 1000, 16).is_err());
        assert!(check_channel_pair(&a, ok, &b, ok, 999, 16).is_err());
        assert!(check_channel_pair(&a, ok, &b, ok, 1000, 15).is_err());
        assert!(check_channel_pair(&b, ok, &a, ok, 1000, 16).is_err());
        assert!(check_channel_pair(&lines(A_OK), ok, &b, ok, 1000, 16).is_err());
        let refused = lines(&CB_OK.replace("qos=granted", "qos=refused"));
        assert!(check_channel_pair(&a, ok, &refused, ok, 1000, 16).is_err());
        let short = lines(&CB_OK.replace("verified_bytes=16841216", "verified_bytes=16841215"));
        assert!(check_channel_pair(&a, ok, &short, ok, 1000, 16).is_err());
        let fewer = lines(&CA_OK.replace("bytes=16841216", "bytes=16777216"));
        assert!(check_channel_pair(&fewer, ok, &b, ok, 1000, 16).is_err());
        let unrefused = lines(&CA_OK.replace("refused=2", "refused=1"));
        assert!(check_channel_pair(&unrefused, ok, &b, ok, 1000, 16).is_err());
        let fail = lines("CHAN-RESULT FAIL request 3: byte 7 of 64 is 0x00, expected 0x41");
        let e = check_channel_pair(&a, ok, &fail, GuestExit::Failure, 1000, 16).unwrap_err();
        assert!(e.to_string().contains("byte 7"), "{e}");
    }

    #[test]
    fn refusal_check() {
        let msg = "qemu-system-x86_64: -device ivshmem-doorbell,chardev=ivs,vectors=2: server sent version -2, expecting 0\n";
        assert!(check_refused(GuestExit::Other(1), msg).is_ok());
        assert!(
            check_refused(GuestExit::Failure, "").is_err(),
            "admitted and ran"
        );
        assert!(check_refused(GuestExit::TimedOut, "").is_err());
        assert!(check_refused(GuestExit::Success, msg).is_err());
    }

    #[test]
    fn tsc_disagreement_is_flagged() {
        let a = lines(&A_OK.replace("2596236", "9163095"));
        let s = check_pair(
            &a,
            GuestExit::Success,
            &lines(B_OK),
            GuestExit::Success,
            1000,
        )
        .unwrap()
        .summary();
        assert!(s.contains("unreliable"), "{s}");
    }
}
