//! `cargo xtask test`: the project's whole test suite, in tiers.
//!
//! 1. host: `cargo test` of the workspace default members (incl. corpus replays);
//! 2. clippy: host crates (all targets) and the images (`--target x86_64-unknown-none`), `-D warnings`;
//! 3. build: every image, size-checked;
//! 4. qemu: boot tests (ktest in-target tests, the page-fault report, net-dd ping + TCP echo over a
//!    tap device in a private network namespace).
//! 5. xen: nested Xen scenarios (Xen 4.17 + busybox dom0 in QEMU TCG; ktest as a PVH domU), counted
//!    into the final line; `ICONNECT_SKIP_XEN=1` skips them (and says so).
//!
//! Tiers 1–3 stop the run at the first failure; all QEMU (and Xen) tests run and are reported. The
//! very last line is `N passed, N failed` for the QEMU and Xen tiers together.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::{Args, ValueEnum};

use crate::images::{self, IMAGES};
use crate::markers::{self, KtestResult};
use crate::netdd;
use crate::prereq::{self, IMAGE_TARGET};
use crate::qemu::{Accel, GuestExit, Qemu};
use crate::util::{self, fmt_dur, header};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Tier {
    Host,
    Clippy,
    Build,
    Qemu,
    /// Nested Xen scenarios (xtask/src/xen); skipped with ICONNECT_SKIP_XEN=1.
    Xen,
}

#[derive(Args, Debug)]
pub struct TestArgs {
    /// Run only these tiers (comma separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Tier>,
    /// Accelerator for the QEMU tier (default: automatic; env ICONNECT_ACCEL).
    #[arg(long, value_enum)]
    accel: Option<Accel>,
    /// Also run the QEMU tests still pending (written, not yet in the default suite).
    #[arg(long)]
    pending: bool,
    /// Run only the QEMU tests whose name contains one of these words (comma separated).
    #[arg(long, value_delimiter = ',')]
    filter: Vec<String>,
}

type TierFn = fn() -> Result<String>;

struct TierResult {
    name: &'static str,
    ok: bool,
    took: Duration,
    note: String,
}

pub fn run(args: &TestArgs) -> Result<()> {
    let start = Instant::now();
    let want = |t: Tier| args.only.is_empty() || args.only.contains(&t);
    let mut results: Vec<TierResult> = Vec::new();

    header("prerequisites");
    prereq::ensure_rust_target()?;
    if want(Tier::Qemu) {
        prereq::ensure_qemu()?;
        prereq::ensure_qemu_utils()?;
        prereq::ensure_pulseaudio()?;
    }

    let tiers: [(Tier, &'static str, TierFn); 3] = [
        (Tier::Host, "1/5 host tests (cargo test)", tier_host),
        (Tier::Clippy, "2/5 clippy (-D warnings)", tier_clippy),
        (Tier::Build, "3/5 build images", tier_build),
    ];
    for (tier, title, f) in tiers {
        if !want(tier) {
            continue;
        }
        if util::interrupted() {
            bail!("interrupted");
        }
        header(title);
        let t = Instant::now();
        let r = f();
        let took = t.elapsed();
        let ok = r.is_ok();
        let note = match r {
            Ok(n) => n,
            Err(e) => {
                eprintln!("\n{title}: FAILED: {e:#}");
                format!("{e:#}").lines().next().unwrap_or("").to_string()
            }
        };
        println!("{title}: {} in {}", if ok { "ok" } else { "FAILED" }, fmt_dur(took));
        results.push(TierResult { name: title, ok, took, note });
        if !ok {
            summary(&results, start.elapsed());
            bail!("{title} failed; later tiers not run");
        }
    }

    let mut qemu_counts = None;
    if want(Tier::Qemu) {
        let title = "4/5 QEMU boot tests";
        header(title);
        let t = Instant::now();
        let (passed, failed) = tier_qemu(args)?;
        let took = t.elapsed();
        results.push(TierResult {
            name: title,
            ok: failed == 0,
            took,
            note: format!("{passed} passed, {failed} failed"),
        });
        qemu_counts = Some((passed, failed));
    }

    if want(Tier::Xen) {
        let title = "5/5 nested Xen tests";
        let t = Instant::now();
        let (ok, note) = match crate::xen::suite_tier()? {
            Some((passed, failed)) => {
                let (p0, f0) = qemu_counts.unwrap_or((0, 0));
                qemu_counts = Some((p0 + passed, f0 + failed));
                (failed == 0, format!("{passed} passed, {failed} failed"))
            }
            None => (true, "SKIPPED (ICONNECT_SKIP_XEN is set)".to_string()),
        };
        results.push(TierResult { name: title, ok, took: t.elapsed(), note });
    }

    summary(&results, start.elapsed());
    let failed_tiers = results.iter().filter(|r| !r.ok).count();
    if let Some((p, f)) = qemu_counts {
        println!("{p} passed, {f} failed");
    }
    if failed_tiers > 0 {
        bail!("{failed_tiers} tier(s) failed");
    }
    Ok(())
}

fn summary(results: &[TierResult], total: Duration) {
    header("summary");
    for r in results {
        println!("  {:<30} {:<6} {:>9}  {}", r.name, if r.ok { "ok" } else { "FAILED" }, fmt_dur(r.took), r.note);
    }
    println!("  total {}", fmt_dur(total));
}

/// Counts from libtest's `test result: ok. 12 passed; 0 failed; ...` lines.
pub fn libtest_counts(line: &str) -> Option<(u64, u64)> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let num_before = |word: &str| -> Option<u64> {
        let i = rest.find(word)?;
        rest[..i].split_whitespace().last()?.parse().ok()
    };
    Some((num_before(" passed")?, num_before(" failed")?))
}

fn tier_host() -> Result<String> {
    let mut cmd = util::cargo();
    // --no-fail-fast: report every failing test binary, not just the first.
    cmd.args(["test", "--no-fail-fast"]);
    eprintln!("$ {}", util::show(&cmd));
    let mut child = cmd.stdout(Stdio::piped()).spawn().context("starting cargo test")?;
    let (mut passed, mut failed, mut suites) = (0, 0, 0);
    for line in BufReader::new(child.stdout.take().context("no stdout")?).lines() {
        let line = line.unwrap_or_default();
        println!("{line}");
        if let Some((p, f)) = libtest_counts(&line) {
            passed += p;
            failed += f;
            suites += 1;
        }
    }
    let status = child.wait()?;
    if !status.success() {
        if failed > 0 {
            bail!("cargo test: {failed} test(s) failed");
        }
        bail!("cargo test failed to build or run (see the errors above)");
    }
    ensure!(suites > 0, "cargo test ran no test suite");
    Ok(format!("{passed} tests passed in {suites} suites"))
}

fn tier_clippy() -> Result<String> {
    let mut host = util::cargo();
    host.args(["clippy", "--all-targets", "--", "-D", "warnings"]);
    util::run(&mut host).context("clippy on the host crates")?;
    prereq::ensure_rust_target()?;
    let mut img = util::cargo();
    img.args(["clippy", "--target", IMAGE_TARGET]);
    for i in IMAGES {
        img.args(["-p", i.package]);
    }
    img.args(["--", "-D", "warnings"]);
    util::run(&mut img).context("clippy on the images")?;
    Ok(format!("host crates + {} images clean", IMAGES.len()))
}

fn tier_build() -> Result<String> {
    let built = images::build(&IMAGES.iter().collect::<Vec<_>>())?;
    Ok(built
        .iter()
        .map(|b| format!("{} {}", b.name, util::fmt_bytes(b.file_bytes)))
        .collect::<Vec<_>>()
        .join(", "))
}

fn image_path(name: &str) -> Result<PathBuf> {
    let p = util::target_dir()?.join("images").join(format!("{name}.elf"));
    if !p.is_file() {
        images::build(&[images::find(name)?])?;
    }
    Ok(p)
}

/// Timeouts are generous so TCG on a slow 2-core CI machine passes; they bound hangs only.
const KTEST_TIMEOUT: Duration = Duration::from_secs(180);
const NET_READY_WITHIN: Duration = Duration::from_secs(120);
const NET_TIMEOUT: Duration = Duration::from_secs(300);

type QemuTest = fn(Accel) -> Result<String>;

/// QEMU tests: (name, test, in the default suite). Tests not in the default suite run with
/// `--pending` (their images are still being written).
const QEMU_TESTS: &[(&str, QemuTest, bool)] = &[
    ("ktest", qemu_ktest, true),
    ("fault-page", qemu_fault_page, true),
    ("fault-stack (guard page)", qemu_fault_stack, true),
    ("fault-tables (watchdog over GDT/TSS/IDT/page tables)", qemu_fault_tables, true),
    ("net-dd ping+tcp (16 MiB RAM)", qemu_net_dd, true),
    ("chan-test: 2 VMs over ivshmem-server", qemu_chan, true),
    ("chan-test proto=channel: iconnect-channel frontend/backend, QoS, data refs", qemu_chan_channel, true),
    ("net: guest<->host through net-dd (ping, TCP echo)", crate::nettests::guest_host, true),
    ("net: guest<->guest through net-dd's bridge (ping, TCP echo)", crate::nettests::guest_guest, true),
    ("net: direct virtio-net guests (the bench net baseline)", crate::nettests::direct_virtio, true),
    ("net: QoS guarantees 2:1 under contention", crate::nettests::qos_ratio, true),
    ("net: QoS guarantee vs a best-effort flood (>= 95%)", crate::nettests::qos_guarantee, true),
    ("net: hostile guests (wild req_prod, oversize, bad refs) while others keep working", crate::nettests::hostile, true),
    ("blk: 5 guests (local slices 512/4096, NBD volume, hostile requests, wild ring), read back on the host", crate::blk::local_remote_hostile, true),
    ("blk: flush answered -> durable even if QEMU is killed at once", crate::blk::flush_then_kill, true),
    ("blk: qemu-nbd killed and restarted mid-run loses no acknowledged write", crate::blk::nbd_restart, true),
    ("blk: a guest VM killed without closing frees its volume (heartbeat)", crate::blk::killed_guest, true),
    ("blk: blk-dd refuses overlapping / out-of-disk volume maps at start", crate::blk::bad_volume_maps, true),
    ("media: 2 guests' tones mixed into virtio-sound's WAV (frequency, levels, a platform cap), ducked by an alert guest", crate::media::playback_mix_duck, true),
    ("media: a guest VM killed while playing is taken down (heartbeat) and leaves the mix", crate::media::killed_guest, true),
    ("media: capture of a PulseAudio pipe source (1000 then 1500 Hz) by 2 guests at 16 kHz mono / 44.1 kHz stereo, device captured once", crate::media_capture::capture_two_rates, true),
];

fn qemu_chan_channel(accel: Accel) -> Result<String> {
    crate::chan::qemu_chan_channel(accel, &image_path("chan-test")?)
}

fn tier_qemu(args: &TestArgs) -> Result<(u32, u32)> {
    let accel = Accel::choose(args.accel)?;
    let tests: Vec<(&str, QemuTest)> = QEMU_TESTS
        .iter()
        .filter(|(_, _, default)| *default || args.pending)
        .filter(|(name, _, _)| args.filter.is_empty() || args.filter.iter().any(|w| name.contains(w.as_str())))
        .map(|&(name, f, _)| (name, f))
        .collect();
    let skipped = QEMU_TESTS.iter().filter(|(_, _, d)| !d).count();
    if !args.pending && skipped > 0 {
        println!("qemu: {skipped} pending test(s) not run (their images are in progress; --pending runs them)");
    }
    let (mut passed, mut failed) = (0, 0);
    let mut lines = Vec::new();
    for (name, f) in tests {
        if util::interrupted() {
            bail!("interrupted");
        }
        println!("\n--- qemu test: {name} ---");
        let t = Instant::now();
        match f(accel) {
            Ok(detail) => {
                passed += 1;
                let l = format!("[PASS] {name} ({}) {detail}", fmt_dur(t.elapsed()));
                println!("{l}");
                lines.push(l);
            }
            Err(e) => {
                failed += 1;
                println!("[FAIL] {name} ({}): {e:#}", fmt_dur(t.elapsed()));
                lines.push(format!(
                    "[FAIL] {name} ({}): {}",
                    fmt_dur(t.elapsed()),
                    format!("{e:#}").lines().next().unwrap_or("")
                ));
            }
        }
    }
    println!("\nQEMU tests ({accel}):");
    for l in &lines {
        println!("  {l}");
    }
    Ok((passed, failed))
}

/// Check a ktest run's serial output and exit: every KTEST-RESULT consistent with KTEST-DONE,
/// failed=0, passed>0, exit status 33.
pub fn check_ktest(serial: &[String], exit: GuestExit) -> Result<u32> {
    let mut ok = 0u32;
    let mut fails = Vec::new();
    for l in serial {
        match markers::parse_ktest_result(l) {
            Some(KtestResult::Ok(_)) => ok += 1,
            Some(KtestResult::Fail { name, why }) => fails.push(format!("{name}: {why}")),
            None => {}
        }
    }
    let done = serial.iter().find_map(|l| markers::parse_ktest_done(l));
    let Some((passed, failed)) = done else {
        bail!("no `KTEST-DONE passed=N failed=M` line ({ok} ok, {} failed results seen)", fails.len());
    };
    ensure!(fails.is_empty(), "{} in-target test(s) failed: {}", fails.len(), fails.join("; "));
    ensure!(failed == 0, "KTEST-DONE reports failed={failed}");
    ensure!(passed > 0, "KTEST-DONE reports no passed test");
    ensure!(passed == ok, "KTEST-DONE says passed={passed} but {ok} `KTEST-RESULT ok` lines were printed");
    ensure!(exit == GuestExit::Success, "ktest ended with {exit}, expected success (status 33)");
    Ok(passed)
}

fn run_image(image: &Path, accel: Accel, append: &str, timeout: Duration) -> Result<crate::qemu::Outcome> {
    Qemu::new(image, accel).append(append).timeout(timeout).run()
}

fn qemu_ktest(accel: Accel) -> Result<String> {
    let append = images::find("ktest")?.default_append;
    let out = run_image(&image_path("ktest")?, accel, append, KTEST_TIMEOUT)?;
    match check_ktest(&out.serial, out.exit) {
        Ok(n) => Ok(format!("{n} in-target tests passed, exit 33, {}", fmt_dur(out.duration))),
        Err(e) => bail!("{e:#}\n{}", out.diagnostics()),
    }
}

pub const FAULT_ADDR: u64 = 0x0dea_dbee_f000;

/// Check the page-fault report: a line with ICONNECT-FAULT and addr=0xdeadbeef000, exit 39.
pub fn check_fault(serial: &[String], exit: GuestExit) -> Result<String> {
    let line = serial
        .iter()
        .find(|l| l.contains("ICONNECT-FAULT") && l.contains("addr=0xdeadbeef000"))
        .or_else(|| serial.iter().find(|l| l.contains("ICONNECT-FAULT")));
    let Some(line) = line else { bail!("no ICONNECT-FAULT line") };
    let f = markers::parse_fault(line).context("unparsable fault line")?;
    ensure!(f.addr == Some(FAULT_ADDR), "fault line does not report addr=0xdeadbeef000: {line}");
    ensure!(exit == GuestExit::Exception, "ended with {exit}, expected CPU exception (status 39)");
    Ok(line.trim().to_string())
}

fn qemu_fault_page(accel: Accel) -> Result<String> {
    let out = run_image(&image_path("ktest")?, accel, "fault=page", KTEST_TIMEOUT)?;
    match check_fault(&out.serial, out.exit) {
        Ok(line) => Ok(format!("exit 39, reported: {line}")),
        Err(e) => bail!("{e:#}\n{}", out.diagnostics()),
    }
}

/// Stack overflow: ktest with `fault=stack` recurses until it hits the unmapped guard page under
/// rt's boot stack; the report must be a double fault whose address lies in that page (the
/// symbol `rt_stack_guard` of the image), and the exit status 39.
fn qemu_fault_stack(accel: Accel) -> Result<String> {
    let path = image_path("ktest")?;
    let elf = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let guard = images::symbol(&elf, "rt_stack_guard").context("ktest has no rt_stack_guard symbol")?;
    let out = run_image(&path, accel, "fault=stack", KTEST_TIMEOUT)?;
    let check = || -> Result<String> {
        let line = out
            .serial
            .iter()
            .find(|l| l.contains("ICONNECT-FAULT double-fault"))
            .context("no ICONNECT-FAULT double-fault line")?;
        let f = markers::parse_fault(line).context("unparsable fault line")?;
        let addr = f.addr.context("double-fault line without addr=")?;
        ensure!((guard..guard + 4096).contains(&addr), "fault at {addr:#x}, guard page is {guard:#x}..+4096");
        ensure!(out.exit == GuestExit::Exception, "ended with {}, expected CPU exception (status 39)", out.exit);
        Ok(format!("exit 39, overflow caught at {addr:#x} in the guard page {guard:#x}"))
    };
    check().map_err(|e| anyhow::anyhow!("{e:#}\n{}", out.diagnostics()))
}

/// A changed IDT entry (ktest `fault=tables` clears part of an unused gate behind rt's back):
/// rt's table watchdog must report `ICONNECT-FAULT tables-corrupted region=idt` from the idle
/// path and end the image with the exception status, instead of a silent reset at the next use.
fn qemu_fault_tables(accel: Accel) -> Result<String> {
    let out = run_image(&image_path("ktest")?, accel, "fault=tables", KTEST_TIMEOUT)?;
    let check = || -> Result<String> {
        let line = out
            .serial
            .iter()
            .find(|l| l.contains("ICONNECT-FAULT"))
            .context("no ICONNECT-FAULT line")?;
        ensure!(line.contains("tables-corrupted region=idt"), "reported something else: {line}");
        ensure!(out.exit == GuestExit::Exception, "ended with {}, expected CPU exception (status 39)", out.exit);
        Ok(format!("exit 39, reported: {}", line.trim()))
    };
    check().map_err(|e| anyhow::anyhow!("{e:#}\n{}", out.diagnostics()))
}

/// Two `chan-test` VMs on one ivshmem-doorbell channel served by our ivshmem-server.
fn qemu_chan(accel: Accel) -> Result<String> {
    crate::chan::qemu_chan(accel, &image_path("chan-test")?)
}

fn qemu_net_dd(accel: Accel) -> Result<String> {
    prereq::ensure_net()?;
    // 16 MiB: the driver domains' memory budget (the default elsewhere is 64 MiB).
    let s = netdd::boot(&image_path("net-dd")?, accel, 16, NET_READY_WITHIN, NET_TIMEOUT)?;
    println!(
        "net-dd ready: boot_us={} (guest), {} after QEMU spawn (host)",
        s.boot_us,
        fmt_dur(s.ready_after)
    );
    let ping = s.ping(3)?;
    println!("ping: rtts {:?} us", ping.rtts_us);
    let tcp = s.tcp(64 * 1024)?;
    println!("tcp: {} bytes echoed identically in {} pieces, {:.0} KiB/s", tcp.bytes, tcp.pieces, tcp.kib_s);
    let (boot_us, ready_after) = (s.boot_us, s.ready_after);
    s.stop()?;
    Ok(format!(
        "ready: boot_us={boot_us} (host {}); ping x{} ok (max rtt {} us); TCP {} bytes echoed identically",
        fmt_dur(ready_after),
        ping.rtts_us.len(),
        ping.rtts_us.iter().max().copied().unwrap_or(0),
        tcp.bytes
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(str::to_string).collect()
    }

    #[test]
    fn libtest_summary_lines() {
        assert_eq!(
            libtest_counts("test result: ok. 12 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s"),
            Some((12, 0))
        );
        assert_eq!(libtest_counts("test result: FAILED. 3 passed; 2 failed; 0 ignored"), Some((3, 2)));
        assert_eq!(libtest_counts("running 3 tests"), None);
    }

    #[test]
    fn ktest_accepts_consistent_success() {
        let s = lines("boot\nKTEST-RESULT ok a\n[ 0.1] INFO ktest: KTEST-RESULT ok b\nKTEST-DONE passed=2 failed=0");
        assert_eq!(check_ktest(&s, GuestExit::Success).unwrap(), 2);
    }

    #[test]
    fn ktest_rejects_failures_and_inconsistencies() {
        let fail = lines("KTEST-RESULT ok a\nKTEST-RESULT FAIL b: boom\nKTEST-DONE passed=1 failed=1");
        assert!(check_ktest(&fail, GuestExit::Failure).unwrap_err().to_string().contains("b: boom"));
        let no_done = lines("KTEST-RESULT ok a");
        assert!(check_ktest(&no_done, GuestExit::Success).is_err());
        let zero = lines("KTEST-DONE passed=0 failed=0");
        assert!(check_ktest(&zero, GuestExit::Success).is_err());
        let mismatch = lines("KTEST-RESULT ok a\nKTEST-DONE passed=2 failed=0");
        assert!(check_ktest(&mismatch, GuestExit::Success).is_err());
        let bad_exit = lines("KTEST-RESULT ok a\nKTEST-DONE passed=1 failed=0");
        assert!(check_ktest(&bad_exit, GuestExit::Reset).is_err());
        assert!(check_ktest(&bad_exit, GuestExit::TimedOut).is_err());
    }

    #[test]
    fn fault_check() {
        let good = lines("x\n[ 0.2] ERROR rt: ICONNECT-FAULT PageFault rip=0x1234 addr=0xdeadbeef000 err=0x0");
        assert!(check_fault(&good, GuestExit::Exception).is_ok());
        assert!(check_fault(&good, GuestExit::Panic).is_err());
        let wrong_addr = lines("ICONNECT-FAULT PageFault addr=0x1000");
        assert!(check_fault(&wrong_addr, GuestExit::Exception).is_err());
        assert!(check_fault(&lines("nothing"), GuestExit::Exception).is_err());
    }
}
