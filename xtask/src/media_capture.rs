//! Capture through the multimedia driver domain, against a real signal: a private PulseAudio
//! server started by the test (`module-pipe-source` fed by the test with a sine it generates,
//! `module-null-sink` for the playback side), QEMU's `pa` audiodev on media-dd's
//! `virtio-sound-pci`, and two `snd-guest`s capturing at two different shapes (16 kHz mono
//! s16, 44.1 kHz stereo float; the device captures 48 kHz stereo s16).
//!
//! [`capture_two_rates`] (QEMU tier): the host feeds 1000 Hz at -6 dBFS (48 kHz s16 stereo,
//! paced by the wall clock), waits until both guests reported whole seconds at 1000 Hz (±2%,
//! measured in the guests), switches to 1500 Hz and waits for both to follow; checks the
//! levels (not silence, near -9 dBFS RMS), the frame counts, and that media-dd started its
//! device capture stream once for both guests and stopped it after them.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, mpsc};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::markers;
use crate::media::{self, Media};
use crate::qemu::Accel;
use crate::util::{self, fmt_dur};

/// Rate of the pipe source and of media-dd's device.
const RATE: u32 = 48000;
/// Peak amplitude of the fed tone (-6 dBFS): a guest should measure -9 dBFS RMS.
const AMPLITUDE: f64 = 0.5012;
const F1: f64 = 1000.0;
const F2: f64 = 1500.0;
/// Relative tolerance of a detected frequency.
const TOLERANCE: f64 = 0.02;

/// A private PulseAudio server (no default script, anonymous native socket, a pipe source
/// and a null sink); killed by PID when dropped.
pub struct Pulse {
    child: Child,
    dir: PathBuf,
    pub socket: PathBuf,
    pub fifo: PathBuf,
}

impl Pulse {
    /// Starts `pulseaudio` with its runtime, state and home in a fresh directory and waits
    /// for its socket and the source's FIFO.
    pub fn start(name: &str) -> Result<Pulse> {
        crate::prereq::ensure_pulseaudio()?;
        // Short: a UNIX socket path has at most 107 bytes.
        let dir = std::env::temp_dir().join(format!("iconnect-pa-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let socket = dir.join("native");
        let fifo = dir.join("tone.fifo");
        let log = std::fs::File::create(dir.join("pulse.log"))?;
        let mut cmd = Command::new("pulseaudio");
        cmd.env("HOME", &dir)
            .env("XDG_RUNTIME_DIR", &dir)
            .env("PULSE_RUNTIME_PATH", dir.join("run"))
            .env("PULSE_STATE_PATH", dir.join("state"))
            .args(["--daemonize=no", "--exit-idle-time=-1", "-n", "--use-pid-file=no", "--disallow-exit", "--log-target=stderr"])
            .arg(format!("--load=module-native-protocol-unix socket={} auth-anonymous=1", socket.display()))
            .arg("--load=module-null-sink sink_name=out rate=48000 channels=2")
            .arg(format!("--load=module-pipe-source source_name=tone file={} format=s16le rate={RATE} channels=2", fifo.display()));
        println!("$ {}", util::show(&cmd));
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        util::die_with_parent(&mut cmd);
        let child = cmd.spawn().context("starting pulseaudio")?;
        let mut p = Pulse { child, dir, socket, fifo };
        let t0 = Instant::now();
        while !(p.socket.exists() && p.fifo.exists()) {
            if let Ok(Some(st)) = p.child.try_wait() {
                bail!("pulseaudio exited ({st}):\n{}", p.log());
            }
            if t0.elapsed() > Duration::from_secs(20) {
                bail!("pulseaudio: no socket/FIFO after 20 s:\n{}", p.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(p)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pulse.log")).unwrap_or_default()
    }

    /// QEMU's `-audiodev` for media-dd: capture from the pipe source, play into the null
    /// sink, both at the device's shape (no resampling in QEMU).
    pub fn audiodev(&self) -> String {
        format!(
            "pa,id=snd0,server=unix:{},in.name=tone,out.name=out,in.frequency={RATE},in.channels=2,in.format=s16,\
             out.frequency={RATE},out.channels=2,out.format=s16",
            self.socket.display()
        )
    }
}

impl Drop for Pulse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes a sine (48 kHz s16 stereo, [`AMPLITUDE`]) into the pipe source in real time, 10 ms
/// at a time, 50 ms ahead of the wall clock; its frequency can change while it runs (the
/// phase stays continuous).
pub struct Tone {
    hz: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    done: mpsc::Receiver<Result<u64>>,
}

impl Tone {
    pub fn start(fifo: &Path, hz: f64) -> Result<Tone> {
        let mut f = OpenOptions::new().write(true).open(fifo).with_context(|| format!("opening {}", fifo.display()))?;
        let freq = Arc::new(AtomicU32::new((hz * 100.0) as u32));
        let stop = Arc::new(AtomicBool::new(false));
        let (freq1, stop1) = (Arc::clone(&freq), Arc::clone(&stop));
        let (tx, done) = mpsc::channel();
        let mut writer = move || -> Result<u64> {
            let t0 = Instant::now();
            let (mut written, mut phase) = (0u64, 0.0f64);
            let mut buf = Vec::with_capacity(480 * 4);
            while !stop1.load(Ordering::Relaxed) {
                let due = ((t0.elapsed() + Duration::from_millis(50)).as_secs_f64() * RATE as f64) as u64;
                while written < due {
                    let step = 2.0 * std::f64::consts::PI * freq1.load(Ordering::Relaxed) as f64 / 100.0 / RATE as f64;
                    buf.clear();
                    for _ in 0..480 {
                        let v = ((AMPLITUDE * phase.sin()) * 32767.0).round() as i16;
                        buf.extend_from_slice(&v.to_le_bytes());
                        buf.extend_from_slice(&v.to_le_bytes());
                        phase = (phase + step) % (2.0 * std::f64::consts::PI);
                    }
                    f.write_all(&buf).context("writing the pipe source")?;
                    written += 480;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(written)
        };
        std::thread::spawn(move || {
            let _ = tx.send(writer());
        });
        Ok(Tone { hz: freq, stop, done })
    }

    /// Changes the frequency.
    pub fn set(&self, hz: f64) {
        self.hz.store((hz * 100.0) as u32, Ordering::Relaxed);
    }

    /// Stops the writer; returns the frames it wrote. A writer blocked on a pipe nobody
    /// reads any more is left behind (it ends with the server: broken pipe).
    pub fn stop(self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        match self.done.recv_timeout(Duration::from_secs(3)) {
            Ok(r) => r,
            Err(_) => bail!("the tone writer did not stop within 3 s (pipe source not read?)"),
        }
    }
}

impl Drop for Tone {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One `ICONNECT-CAPTURE` line of a guest.
#[derive(Debug, Clone, Copy)]
struct Second {
    hz: f64,
    dbfs: f64,
}

fn seconds(serial: &[String]) -> Vec<Second> {
    serial
        .iter()
        .filter_map(|l| {
            let f = markers::parse_fields(l, "ICONNECT-CAPTURE")?;
            f.num("sec")?;
            Some(Second { hz: f.get("peak_hz")?.parse().ok()?, dbfs: f.get("rms_dbfs")?.parse().ok()? })
        })
        .collect()
}

fn near(hz: f64, want: f64) -> bool {
    (hz - want).abs() <= want * TOLERANCE
}

/// Waits until guest `g` reports `n` whole seconds at `want` Hz after line `from` of its
/// capture reports; returns them.
fn wait_seconds(m: &mut Media, g: &str, from: usize, want: f64, n: usize, within: Duration) -> Result<Vec<Second>> {
    let t0 = Instant::now();
    loop {
        let s = seconds(&m.serial(g));
        let hits: Vec<Second> = s.iter().skip(from).filter(|s| near(s.hz, want)).copied().collect();
        if hits.len() >= n {
            return Ok(hits);
        }
        if t0.elapsed() > within {
            return Err(m.fail(g, format!("no {n} seconds at {want} Hz ±{}% within {} (capture lines: {s:?})", TOLERANCE * 100.0, fmt_dur(within))));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The capture guests: 16 kHz mono s16 (voice) and 44.1 kHz stereo float (media), 14 s each.
const SECS: u64 = 14;
const GUESTS: [(&str, &str, u64, &str); 2] = [
    ("g1", "capture=16000:s16:1 class=voice secs=14", 16000, "s16_le"),
    ("g2", "capture=44100:f32:2 class=media secs=14", 44100, "float_le"),
];

/// A guest booted after the others finished (its channel exists from the start).
const LATE_SECS: u64 = 3;
const LATE_GUEST: (&str, &str, u64) = ("g3", "capture=8000:s16:1 class=voice secs=3", 8000);

/// QEMU test: see the [module documentation](self).
pub fn capture_two_rates(accel: Accel) -> Result<String> {
    scenario(accel, "media-capture", false)
}

/// The demo's capture part: the test's scenario, printing what each guest measured second by
/// second; returns the summary as a fact.
pub fn demo(accel: Accel) -> Result<Vec<String>> {
    let summary = scenario(accel, "demo-media-capture", true)?;
    Ok(vec![format!("media-dd captured a PulseAudio source once for 3 guests at 3 shapes: {summary}")])
}

fn scenario(accel: Accel, run: &str, show: bool) -> Result<String> {
    let t0 = Instant::now();
    let art = media::build()?;
    let pulse = Pulse::start("capture")?;
    let tone = Tone::start(&pulse.fifo, F1)?;
    let mut guests: Vec<(&str, &str)> = GUESTS.iter().map(|(n, c, _, _)| (*n, *c)).collect();
    guests.push((LATE_GUEST.0, media::LATE));
    let mut m = match media::start_on(run, accel, &art, "", &guests, false, Some(pulse.audiodev())) {
        Ok(m) => m,
        Err(e) => bail!("{e:#}\n--- pulseaudio log ---\n{}", pulse.log()),
    };
    for (g, _, rate, format) in GUESTS {
        let l = m.wait("media-dd", &format!("stream=capture format={format} rate={rate}"), Duration::from_secs(30))?;
        ensure!(l.contains(&format!("granted_format={format} granted_rate={rate}")), "{g}: {l}");
    }
    // Tone 1: two whole seconds each (the first second may hold the start-up).
    let mut first = Vec::new();
    for (g, _, _, _) in GUESTS {
        first.push(wait_seconds(&mut m, g, 1, F1, 2, Duration::from_secs(40))?);
    }
    let marks: Vec<usize> = GUESTS.iter().map(|(g, _, _, _)| seconds(&m.serial(g)).len()).collect();
    tone.set(F2);
    let switched = Instant::now();
    // Tone 2: the next seconds after the switch (one may straddle it).
    let mut second = Vec::new();
    for ((g, _, _, _), from) in GUESTS.iter().zip(marks) {
        second.push(wait_seconds(&mut m, g, from, F2, 2, Duration::from_secs(30))?);
    }
    let follow = switched.elapsed();
    let mut results = Vec::new();
    for (g, _, rate, _) in GUESTS {
        let r = m.result(g, Duration::from_secs(60))?;
        ensure!(r.num("frames") == Some(SECS * rate), "{g}: frames={:?}, want {}", r.get("frames"), SECS * rate);
        results.push(r);
    }
    // media-dd: the device capture stream started once for both guests, stopped after them.
    m.wait("media-dd", "capture_starts=1 capture=Stopped", Duration::from_secs(10))?;
    let starts = |m: &Media| -> Option<u64> {
        m.serial("media-dd").iter().filter_map(|l| markers::parse_fields(l, "ICONNECT-DDSTAT")?.num("capture_starts")).next_back()
    };
    ensure!(starts(&m) == Some(1), "media-dd started its capture stream {:?} times (DDSTAT lines), want once", starts(&m));
    ensure!(
        m.serial("media-dd").iter().any(|l| l.contains("ICONNECT-DDSTAT") && l.contains("capture=Running") && l.contains("capture_guests=2")),
        "media-dd never captured for 2 guests at once"
    );
    // A third guest after the others: the device capture restarts and carries the tone.
    let (g3, args3, rate3) = LATE_GUEST;
    m.boot(g3, args3)?;
    let r3 = m.result(g3, Duration::from_secs(60))?;
    ensure!(r3.num("frames") == Some(LATE_SECS * rate3), "{g3}: frames={:?}, want {}", r3.get("frames"), LATE_SECS * rate3);
    let late = wait_seconds(&mut m, g3, 1, F2, 1, Duration::from_secs(5))?;
    m.wait("media-dd", "capture_starts=2 capture=Stopped", Duration::from_secs(10))?;
    // media-dd's per-port capture counters (the last line of each port while it captured).
    let dd = m.serial("media-dd");
    let mut port_stats = Vec::new();
    for p in 1..=3 {
        let last = dd
            .iter()
            .filter_map(|l| markers::parse_fields(l, "ICONNECT-CAPTURE-PORT"))
            .rfind(|f| f.word(0) == Some(&p.to_string()))
            .with_context(|| format!("media-dd printed no ICONNECT-CAPTURE-PORT {p} line"))?;
        let n = |k: &str| last.num(k).unwrap_or(0);
        port_stats.push(format!("port {p}: read {} overrun {} underrun {}", n("read"), n("overrun"), n("underrun")));
    }
    let fed = tone.stop()?;
    if show {
        println!("  the host fed {F1} Hz, then {F2} Hz once both guests had heard it; what each guest measured per second:");
        for (g, what) in [("g1", "16 kHz mono"), ("g2", "44.1 kHz stereo float"), ("g3", "8 kHz mono, booted after the others")] {
            let line = seconds(&m.serial(g)).iter().map(|s| format!("{:.0}", s.hz)).collect::<Vec<_>>().join(" ");
            println!("    {g} ({what}): {line} Hz");
        }
    }
    m.stop()?;
    drop(pulse);
    let all: Vec<&Second> = first.iter().chain(&second).chain([&late]).flatten().collect();
    let worst_db = all.iter().map(|s| s.dbfs).fold(f64::INFINITY, f64::min);
    let best_db = all.iter().map(|s| s.dbfs).fold(f64::NEG_INFINITY, f64::max);
    ensure!(all.iter().all(|s| s.dbfs > -30.0), "a captured second is near silence: {all:?}");
    ensure!((worst_db + 9.0).abs() <= 1.0 && (best_db + 9.0).abs() <= 1.0, "levels {worst_db:.1}..{best_db:.1} dBFS RMS, want -9 ±1");
    let fmt = |v: &[Second]| v.iter().map(|s| format!("{:.1} Hz/{:.1} dBFS", s.hz, s.dbfs)).collect::<Vec<_>>().join(", ");
    Ok(format!(
        "pulse pipe source {F1} Hz then {F2} Hz at -6 dBFS peak; g1 (16 kHz mono): {} | {}; g2 (44.1 kHz stereo float): {} | {}; \
         both followed the switch within {}; {} frames fed; device capture started once for both; \
         g3 (8 kHz mono) after them restarted it: {}; results {} / {} / {}; media-dd frames {}; run {}",
        fmt(&first[0]),
        fmt(&second[0]),
        fmt(&first[1]),
        fmt(&second[1]),
        fmt_dur(follow),
        fed,
        fmt(&late),
        results[0].get("peak_hz").unwrap_or("?"),
        results[1].get("peak_hz").unwrap_or("?"),
        r3.get("peak_hz").unwrap_or("?"),
        port_stats.join(", "),
        fmt_dur(t0.elapsed())
    ))
}

/// `cargo xtask bench media`, capture part: media-dd's CPU share while its device captures
/// the pipe source for 4 guests (16 kHz mono, 44.1 kHz stereo, 48 kHz stereo, 8 kHz mono),
/// host-measured (QEMU process CPU time) and as media-dd measures itself (`busy_permille`).
pub fn bench(accel: Accel, art: &media::Artifacts) -> Result<()> {
    let pulse = Pulse::start("bench")?;
    let tone = Tone::start(&pulse.fifo, F1)?;
    let shapes = ["16000:s16:1", "44100:s16:2", "48000:s16:2", "8000:s16:1"];
    let cmds: Vec<String> = shapes.iter().map(|s| format!("capture={s} secs=16")).collect();
    let names = ["g1", "g2", "g3", "g4"];
    let guests: Vec<(&str, &str)> = names.iter().copied().zip(cmds.iter().map(String::as_str)).collect();
    let mut m = media::start_on("bench-media-capture", accel, art, "", &guests, false, Some(pulse.audiodev()))?;
    m.wait("media-dd", "capture_guests=4", Duration::from_secs(60))?;
    let pid = m.pid("media-dd")?;
    let from = m.serial("media-dd").len();
    let share = media::cpu_share(pid, Duration::from_secs(6))?;
    let permille: Vec<f64> = m.serial("media-dd")[from..]
        .iter()
        .filter(|l| l.contains("capture_guests=4"))
        .filter_map(|l| markers::parse_fields(l, "ICONNECT-DDSTAT")?.num("busy_permille"))
        .map(|v| v as f64)
        .collect();
    let mut peaks = Vec::new();
    for g in names {
        let r = m.result(g, Duration::from_secs(60))?;
        peaks.push(format!("{g} {}", r.get("peak_hz").unwrap_or("?")));
    }
    tone.stop()?;
    m.stop()?;
    println!(
        "bench media capture ({accel}): media-dd capturing 48 kHz stereo once for 4 guests ({}): QEMU process {:.1}% of a core \
         (incl. QEMU's pa audio backend), media-dd's own busy time {:.1}% (median of {} one-second lines); guests measured {}",
        shapes.join(", "),
        share * 100.0,
        media::median(permille.clone()) / 10.0,
        permille.len(),
        peaks.join(", ")
    );
    Ok(())
}

/// `cargo xtask media`: media-dd + one snd-guest per `--guest`, consoles live.
#[derive(clap::Args, Debug)]
pub struct MediaArgs {
    /// One guest per occurrence: its command line (e.g. "play=sine:440:44100:s16:2 secs=5" or
    /// "capture=16000:s16:1 secs=5"); `name=g<i>` is added.
    #[arg(long = "guest")]
    guests: Vec<String>,
    /// media-dd's command line (e.g. "caps=2:-6 duck_db=20").
    #[arg(long, default_value = "")]
    dd_args: String,
    /// Audio behind the device: a private PulseAudio server whose pipe source carries a sine of
    /// this frequency (Hz) for capture; without it, QEMU's wav audiodev (no capture signal).
    #[arg(long)]
    tone: Option<f64>,
    /// Wait this long (s) for the guests' results, then stop all.
    #[arg(long, default_value_t = 60)]
    hold: u64,
    #[arg(long, value_enum)]
    accel: Option<Accel>,
}

pub fn media_cmd(args: &MediaArgs) -> Result<()> {
    crate::prereq::ensure_qemu()?;
    let accel = Accel::choose(args.accel)?;
    let art = media::build()?;
    let pulse = args.tone.map(|_| Pulse::start("manual")).transpose()?;
    let tone = match (&pulse, args.tone) {
        (Some(p), Some(hz)) => Some(Tone::start(&p.fifo, hz)?),
        _ => None,
    };
    let names: Vec<String> = (1..=args.guests.len()).map(|i| format!("g{i}")).collect();
    let guests: Vec<(&str, &str)> = names.iter().map(String::as_str).zip(args.guests.iter().map(String::as_str)).collect();
    let mut m = media::start_on("manual", accel, &art, &args.dd_args, &guests, true, pulse.as_ref().map(Pulse::audiodev))?;
    let until = Instant::now() + Duration::from_secs(args.hold);
    for n in &names {
        match m.result(n, until.saturating_duration_since(Instant::now())) {
            Ok(f) => println!("media: {n}: ok {}", f.kv.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")),
            Err(e) => println!("media: {n}: {}", e.to_string().lines().next().unwrap_or("")),
        }
    }
    if names.is_empty() {
        std::thread::sleep(until.saturating_duration_since(Instant::now()));
    }
    if let Some(t) = tone {
        t.stop()?;
    }
    m.stop()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_capture_lines() {
        let lines = vec![
            "[   1.0] INFO  snd_guest::image: ICONNECT-CAPTURE name=g1 sec=0 peak_hz=999.5 rms_dbfs=-9.1".to_string(),
            "noise".to_string(),
            "ICONNECT-CAPTURE name=g1 sec=1 peak_hz=1500.0 rms_dbfs=-150.0".to_string(),
        ];
        let s = seconds(&lines);
        assert_eq!(s.len(), 2);
        assert!(near(s[0].hz, F1) && !near(s[1].hz, F1) && near(s[1].hz, F2));
        assert!(s[1].dbfs < -100.0);
    }
}
