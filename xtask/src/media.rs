//! The multimedia driver domain on QEMU: `media-dd` owning a `virtio-sound-pci` device on
//! QEMU's `wav` audiodev (48 kHz s16 stereo, so QEMU does not resample), guests (`snd-guest`)
//! each on one iConnect channel (an `ivshmem-server` per channel) playing tones.
//!
//! [`playback_mix_duck`] (QEMU tier) reads the WAV file QEMU wrote and checks it with Goertzel
//! filters over 100 ms blocks: both guests' tones at their frequencies and levels while they
//! play together, and both ducked by media-dd's configured depth (12 dB) while an alert-class
//! guest plays. Every process dies by PID when the [`Media`] is dropped; consoles and the WAV
//! are kept in `<target>/topo/<run>/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};

use crate::chan::{self, Server};
use crate::markers::{self, Fields};
use crate::qemu::{Accel, Qemu, Running};
use crate::util::{self, fmt_dur};

const REGION: &str = "4M";
const VECTORS: u16 = 2;
const READY_WITHIN: Duration = Duration::from_secs(60);
const TAIL: usize = 30;
/// media-dd's device rate (media_dd::DEVICE).
pub const RATE: u32 = 48000;
/// Analysis block: 100 ms.
const BLOCK: usize = (RATE / 10) as usize;

/// The images (media-dd, snd-guest) and the channel server, built.
#[derive(Clone, Debug)]
pub struct Artifacts {
    pub dd: PathBuf,
    pub guest: PathBuf,
    pub server: PathBuf,
}

/// Builds the images and the server.
pub fn build() -> Result<Artifacts> {
    let built = crate::images::build(&[crate::images::find("media-dd")?, crate::images::find("snd-guest")?])?;
    let [dd, guest] = [&built[0], &built[1]].map(|b| b.path.clone());
    Ok(Artifacts { dd, guest, server: chan::build_server()? })
}

/// A running media topology: media-dd and its guests.
pub struct Media {
    vms: Vec<(String, Running)>,
    servers: Vec<Server>,
    dir: PathBuf,
    pub wav: PathBuf,
    /// Channel socket per guest name; the guest image, accelerator and console echo (for
    /// [`Media::boot`]).
    socks: BTreeMap<String, PathBuf>,
    guest: PathBuf,
    accel: Accel,
    echo: bool,
}

/// A guest command line of [`start`]/[`start_on`] that only creates the guest's channel (port):
/// the guest boots later, with [`Media::boot`].
pub const LATE: &str = "(late)";

/// Boots media-dd (command line `dd_args`, `guests.len()` channels, the WAV output) and then
/// each guest (`(name, command line)`), READY before the next.
pub fn start(run: &str, accel: Accel, art: &Artifacts, dd_args: &str, guests: &[(&str, &str)], echo: bool) -> Result<Media> {
    start_on(run, accel, art, dd_args, guests, echo, None)
}

/// [`start`] with another QEMU `-audiodev` (its `id` must be `snd0`) than the WAV file.
pub fn start_on(
    run: &str,
    accel: Accel,
    art: &Artifacts,
    dd_args: &str,
    guests: &[(&str, &str)],
    echo: bool,
    audiodev: Option<String>,
) -> Result<Media> {
    let t0 = Instant::now();
    let dir = util::target_dir()?.join("topo").join(run);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let wav = dir.join("media-dd.wav");
    let _ = std::fs::remove_file(&wav);
    let mut m = Media {
        vms: Vec::new(),
        servers: Vec::new(),
        dir,
        wav: wav.clone(),
        socks: BTreeMap::new(),
        guest: art.guest.clone(),
        accel,
        echo,
    };
    let mut socks = BTreeMap::new();
    for (name, _) in guests {
        let sock = chan::socket_path(&format!("media-{run}-{name}"))?;
        m.servers.push(Server::start(&art.server, &sock, REGION, VECTORS)?);
        socks.insert(name.to_string(), sock);
    }
    m.socks = socks.clone();
    let mut q = Qemu::new(&art.dd, accel)
        .memory_mib(16)
        .timeout(Duration::from_secs(300))
        .echo(echo)
        .label("media-dd")
        .append(dd_args)
        .args_extra([
            "-audiodev".to_string(),
            audiodev.unwrap_or_else(|| format!("wav,id=snd0,path={},out.frequency={RATE},out.channels=2,out.format=s16", wav.display())),
        ])
        .device("virtio-sound-pci,audiodev=snd0");
    for (i, (name, _)) in guests.iter().enumerate() {
        q = q.args_extra(chan::ivshmem_args(&socks[*name], VECTORS, &format!("ch{}", i + 1)));
    }
    m.vms.push(("media-dd".into(), q.spawn()?));
    m.wait("media-dd", "ICONNECT-READY media-dd", READY_WITHIN)?;
    for (name, args) in guests.iter().filter(|g| g.1 != LATE) {
        m.boot(name, args)?;
    }
    println!("media topo {run}: media-dd + {} guest(s) ready after {}", m.vms.len() - 1, fmt_dur(t0.elapsed()));
    Ok(m)
}

impl Media {
    /// Boots guest `name` (a channel of [`start`]) with command line `args`; waits for READY.
    pub fn boot(&mut self, name: &str, args: &str) -> Result<()> {
        let sock = self.socks.get(name).ok_or_else(|| anyhow!("no channel for {name}"))?;
        let q = Qemu::new(&self.guest, self.accel)
            .memory_mib(16)
            .timeout(Duration::from_secs(300))
            .echo(self.echo)
            .label(name)
            .append(&format!("name={name} {args}"))
            .args_extra(chan::ivshmem_args(sock, VECTORS, "ch"));
        self.vms.push((name.to_string(), q.spawn()?));
        self.wait(name, "ICONNECT-READY snd-guest", READY_WITHIN)?;
        Ok(())
    }

    fn running(&self, name: &str) -> Option<&Running> {
        self.vms.iter().find_map(|(n, r)| (n == name).then_some(r))
    }

    /// A VM's QEMU process id.
    pub fn pid(&self, name: &str) -> Result<u32> {
        self.running(name).map(Running::pid).ok_or_else(|| anyhow!("no VM {name}"))
    }

    /// A VM's console so far.
    pub fn serial(&self, name: &str) -> Vec<String> {
        self.running(name).map(Running::serial).unwrap_or_default()
    }

    /// `e` about VM `name`, with the last console lines of it and of media-dd.
    pub fn fail(&self, name: &str, e: impl std::fmt::Display) -> anyhow::Error {
        self.write_logs();
        let mut msg = format!("{name}: {e}");
        for vm in std::iter::once(name).chain((name != "media-dd").then_some("media-dd")) {
            let lines = if vm == name { TAIL } else { 12 };
            let tail = self.running(vm).map(|r| r.tail(lines)).unwrap_or_default();
            msg.push_str(&format!("\n--- {vm} console (last {lines} lines) ---\n{tail}"));
        }
        anyhow!("{msg}\n(logs in {})", self.dir.display())
    }

    /// Waits for a console line containing `needle` on VM `name`.
    pub fn wait(&mut self, name: &str, needle: &str, within: Duration) -> Result<String> {
        let Some((_, vm)) = self.vms.iter_mut().find(|(n, _)| n == name) else {
            bail!("no VM {name}");
        };
        match vm.wait_for(|l| l.contains(needle), within) {
            Ok((l, _)) => Ok(l),
            Err(e) => Err(self.fail(name, format!("waiting for `{needle}`: {e}"))),
        }
    }

    /// SIGKILLs one VM now (its console is kept).
    pub fn kill(&mut self, name: &str) -> Result<()> {
        let i = self.vms.iter().position(|(n, _)| n == name).ok_or_else(|| anyhow!("no VM {name}"))?;
        let (n, r) = self.vms.remove(i);
        let _ = std::fs::write(self.dir.join(format!("{n}.log")), r.stop().serial.join("\n"));
        Ok(())
    }

    /// Waits for the guest's `ICONNECT-RESULT`; `Err` if it is a FAIL.
    pub fn result(&mut self, name: &str, within: Duration) -> Result<Fields> {
        let line = self.wait(name, "ICONNECT-RESULT", within)?;
        let f = markers::parse_fields(&line, "ICONNECT-RESULT").context("unparsable result line")?;
        if f.word(0) != Some("ok") {
            return Err(self.fail(name, format!("guest failed: {line}")));
        }
        Ok(f)
    }

    fn write_logs(&self) {
        for (n, r) in &self.vms {
            let _ = std::fs::write(self.dir.join(format!("{n}.log")), r.serial().join("\n"));
        }
    }

    /// Ends media-dd's QEMU with SIGTERM (so the wav audiodev completes its file), stops
    /// everything; fails if any console shows a fault or panic.
    pub fn stop(mut self) -> Result<()> {
        let outcomes: Vec<(String, crate::qemu::Outcome)> = std::mem::take(&mut self.vms)
            .into_iter()
            .map(|(n, r)| {
                let out = if n == "media-dd" {
                    let _ = Command::new("kill").args(["-TERM", &r.pid().to_string()]).status();
                    r.wait_within(Duration::from_secs(10))
                } else {
                    r.stop()
                };
                (n, out)
            })
            .collect();
        self.servers.clear();
        let faults: Vec<String> = outcomes
            .iter()
            .inspect(|(n, o)| {
                let _ = std::fs::write(self.dir.join(format!("{n}.log")), o.serial.join("\n"));
            })
            .flat_map(|(n, o)| {
                o.serial.iter().filter(|l| l.contains("ICONNECT-FAULT") || l.contains("ICONNECT-PANIC")).map(move |l| format!("{n}: {l}"))
            })
            .collect();
        ensure!(faults.is_empty(), "fault or panic: {}", faults.join("; "));
        Ok(())
    }
}

impl Drop for Media {
    fn drop(&mut self) {
        self.write_logs();
    }
}

/// The left channel of a 16-bit stereo WAV at [`RATE`] (full scale = 1.0). QEMU's `wav`
/// audiodev completes the sizes in the header at exit; a file whose header still says 0
/// is read to its end.
pub fn read_wav_left(path: &Path) -> Result<Vec<f64>> {
    let d = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(d.len() >= 44 && &d[0..4] == b"RIFF" && &d[8..12] == b"WAVE", "{}: not a WAV file", path.display());
    let u16_at = |i: usize| u16::from_le_bytes([d[i], d[i + 1]]);
    let u32_at = |i: usize| u32::from_le_bytes([d[i], d[i + 1], d[i + 2], d[i + 3]]);
    let mut i = 12;
    let mut fmt = None;
    while i + 8 <= d.len() {
        let (id, len) = (&d[i..i + 4], u32_at(i + 4) as usize);
        if id == b"fmt " {
            fmt = Some((u16_at(i + 8), u16_at(i + 10), u32_at(i + 12), u16_at(i + 22)));
        } else if id == b"data" {
            let (tag, ch, rate, bits) = fmt.context("WAV: data before fmt")?;
            ensure!(
                (tag, ch, rate, bits) == (1, 2, RATE, 16),
                "WAV is format {tag}, {ch} channels, {rate} Hz, {bits} bits; want PCM stereo {RATE} Hz 16 bits"
            );
            let end = if len == 0 { d.len() } else { (i + 8 + len).min(d.len()) };
            return Ok(d[i + 8..end].chunks_exact(4).map(|f| i16::from_le_bytes([f[0], f[1]]) as f64 / 32768.0).collect());
        }
        i += 8 + len + (len & 1);
    }
    bail!("{}: no data chunk", path.display())
}

/// Amplitude of the `f` Hz component of `x` (Goertzel, Hann window, amplitude-corrected).
pub fn goertzel(x: &[f64], f: f64) -> f64 {
    let n = x.len() as f64;
    let w = 2.0 * std::f64::consts::PI * f / RATE as f64;
    let c = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for (i, v) in x.iter().enumerate() {
        let win = 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n).cos();
        let s0 = v * win + c * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let p = s1 * s1 + s2 * s2 - c * s1 * s2;
    // A Hann window halves a sinusoid's coherent gain.
    2.0 * p.max(0.0).sqrt() / (n * 0.5)
}

/// The frequency near `f` with the largest Goertzel amplitude in `x` (±`span` Hz, 0.05 Hz
/// steps).
pub fn peak_near(x: &[f64], f: f64, span: f64) -> f64 {
    let steps = (2.0 * span / 0.05) as i32;
    (0..=steps).map(|k| f - span + k as f64 * 0.05).fold((f, -1.0), |best, g| {
        let a = goertzel(x, g);
        if a > best.1 { (g, a) } else { best }
    }).0
}

fn db(a: f64, b: f64) -> f64 {
    20.0 * (a / b).log10()
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Per-100 ms block amplitudes of the tones.
pub fn blocks(x: &[f64], tones: &[f64]) -> Vec<Vec<f64>> {
    x.chunks_exact(BLOCK).map(|b| tones.iter().map(|&f| goertzel(b, f)).collect()).collect()
}

/// The guests of the test and the demo: two media guests (440 Hz at 44.1 kHz stereo -6 dBFS,
/// 660 Hz at 48 kHz mono -12 dBFS, 7 s) and, 3 s after its link, an alert guest (880 Hz at
/// 16 kHz mono -6 dBFS, 2 s); g4 breaks its ring (a wild request producer index): media-dd
/// must close its channel alone. The platform caps port 2 (g2) at -6 dB ([`DD_ARGS`]).
const DD_ARGS: &str = "caps=2:-6";
const GUESTS: [(&str, &str); 4] = [
    ("g1", "play=sine:440:44100:s16:2 class=media secs=7 amp_db=-6"),
    ("g2", "play=sine:660:48000:s16:1 class=media secs=7 amp_db=-12"),
    ("g3", "play=sine:880:16000:s16:1 class=alert secs=2 amp_db=-6 delay_ms=3000"),
    ("g4", "hostile=ring"),
];

/// Plays [`GUESTS`] through media-dd; checks the guests' results and media-dd's port and level
/// markers; returns media-dd's console and the WAV file.
fn play(accel: Accel, run: &str) -> Result<(Vec<String>, PathBuf)> {
    let art = build()?;
    let mut m = start(run, accel, &art, DD_ARGS, &GUESTS, false)?;
    let mut results = Vec::new();
    for (g, _) in GUESTS {
        results.push(m.result(g, Duration::from_secs(90))?);
    }
    for p in 1..=3 {
        m.wait("media-dd", &format!("ICONNECT-PORT {p} down reason=disconnected"), Duration::from_secs(10))?;
    }
    let dd = m.serial("media-dd");
    for (p, want) in [(1, "rate=44100 channels=2 role=Media"), (2, "rate=48000 channels=1 role=Media priority=1 granted_format=s16_le granted_rate=48000 granted_channels=1 cap_db=-6"), (3, "rate=16000 channels=1 role=Alert")] {
        ensure!(
            dd.iter().any(|l| l.contains(&format!("ICONNECT-PORT {p} up stream=playback")) && l.contains(want)),
            "media-dd: no `ICONNECT-PORT {p} up ... {want}`"
        );
    }
    let levels = dd.iter().filter(|l| l.contains("ICONNECT-LEVEL")).count();
    ensure!(levels >= 5, "media-dd printed {levels} ICONNECT-LEVEL lines");
    ensure!(
        dd.iter().any(|l| l.contains("ICONNECT-PORT 4 down reason=sndback:ring")),
        "media-dd did not take port 4 (g4, wild ring index) down with reason=sndback:ring..."
    );
    ensure!(results[3].get("outcome") == Some("channel-closed"), "g4: {:?}", results[3].kv);
    for (r, (g, _)) in results.iter().zip(GUESTS).take(3) {
        let want = match g {
            "g1" => 7 * 44100,
            "g2" => 7 * 48000,
            _ => 2 * 16000,
        };
        ensure!(r.num("frames") == Some(want), "{g}: frames={:?}, want {want}", r.get("frames"));
    }
    let wav = m.wav.clone();
    m.stop()?;
    Ok((dd, wav))
}

/// QEMU test: [`GUESTS`] through media-dd; the WAV QEMU wrote must hold both media tones at
/// their frequencies (±0.2 Hz) and levels (±1 dB: g1 -6 dBFS, g2 -12 dBFS capped by 6 dB to
/// -18; 12 dB apart ±0.5), and both ducked by 12 dB (±1.5) while the alert plays at its level.
pub fn playback_mix_duck(accel: Accel) -> Result<String> {
    let (_, wav) = play(accel, "media-mix")?;
    let x = read_wav_left(&wav)?;
    let (summary, failed) = analyze(&x, &wav)?;
    ensure!(failed.is_empty(), "{}: {summary}", failed.join(", "));
    Ok(summary)
}

/// QEMU test: a guest VM SIGKILLed while playing (it promised a 500 ms heartbeat) is taken
/// down by media-dd (`heartbeat-timeout`, after 5 silent periods) and leaves the mix, while a
/// second guest plays on to its end.
pub fn killed_guest(accel: Accel) -> Result<String> {
    let art = build()?;
    let guests = [("g1", "play=sine:440:48000:s16:2 secs=30"), ("g2", "play=sine:660:48000:s16:2 secs=6")];
    let mut m = start("media-killed", accel, &art, "", &guests, false)?;
    m.wait("media-dd", "ICONNECT-LEVEL 1 ", Duration::from_secs(30))?;
    let killed = Instant::now();
    m.kill("g1")?;
    let line = m.wait("media-dd", "ICONNECT-PORT 1 down", Duration::from_secs(20))?;
    let after = killed.elapsed();
    ensure!(line.contains("reason=heartbeat-timeout"), "port 1 went down for another reason: {line}");
    let r = m.result("g2", Duration::from_secs(60))?;
    ensure!(r.num("frames") == Some(6 * 48000), "g2: {:?}", r.kv);
    m.stop()?;
    Ok(format!("killed g1 taken down {} later (heartbeat-timeout); g2 played its 6 s", fmt_dur(after)))
}

/// Measures the WAV of [`GUESTS`]: returns a summary and the checks that failed.
fn analyze(x: &[f64], wav: &Path) -> Result<(String, Vec<&'static str>)> {
    let b = blocks(x, &[440.0, 660.0, 880.0]);
    let (a1, a2, a3) = (0.5012, 0.1259, 0.5012); // -6, -12 - 6 (cap), -6 dBFS peaks
    // Together, no alert: blocks with both tones clearly present and no 880 Hz.
    let together: Vec<usize> = (0..b.len()).filter(|&i| b[i][0] > a1 / 2.0 && b[i][1] > a2 / 2.0 && b[i][2] < 0.01).collect();
    // The alert at full level (its first and last 100 ms are ramps), the blocks after its attack.
    let alert: Vec<usize> = (1..b.len().saturating_sub(1))
        .filter(|&i| b[i][2] > a3 / 2.0 && b[i - 1][2] > a3 / 2.0 && b[i + 1][2] > a3 / 2.0)
        .collect();
    ensure!(together.len() >= 20, "only {} blocks of 100 ms with both tones (and no alert) in {}", together.len(), wav.display());
    ensure!(alert.len() >= 8, "only {} blocks of 100 ms with the alert tone in {}", alert.len(), wav.display());
    let l440 = median(together.iter().map(|&i| b[i][0]).collect());
    let l660 = median(together.iter().map(|&i| b[i][1]).collect());
    let d440 = median(alert.iter().map(|&i| b[i][0]).collect());
    let d660 = median(alert.iter().map(|&i| b[i][1]).collect());
    let l880 = median(alert.iter().map(|&i| b[i][2]).collect());
    // Frequencies over the longest run of `together` blocks (1 s).
    let start = together.windows(10).find(|w| w[9] == w[0] + 9).map(|w| w[0]).context("no 1 s of both tones")?;
    let seg = &x[start * BLOCK..(start + 10) * BLOCK];
    let (f1, f2) = (peak_near(seg, 440.0, 3.0), peak_near(seg, 660.0, 3.0));
    let alert_seg: Vec<f64> = alert.iter().take(8).flat_map(|&i| x[i * BLOCK..(i + 1) * BLOCK].iter().copied()).collect();
    let f3 = peak_near(&alert_seg, 880.0, 3.0);
    let summary = format!(
        "WAV {:.1} s: 440 Hz guest at {:.2} dBFS (f={f1:.2}), 660 Hz guest (capped -6 dB) at {:.2} dBFS (f={f2:.2}), \
         alert 880 Hz at {:.2} dBFS (f={f3:.2}); during the alert 440 Hz {:+.2} dB, 660 Hz {:+.2} dB \
         ({} + {} blocks of 100 ms)",
        x.len() as f64 / RATE as f64,
        db(l440, 1.0),
        db(l660, 1.0),
        db(l880, 1.0),
        db(d440, l440),
        db(d660, l660),
        together.len(),
        alert.len()
    );
    let checks = [
        ((f1 - 440.0).abs() <= 0.2, "440 Hz tone frequency"),
        ((f2 - 660.0).abs() <= 0.2, "660 Hz tone frequency"),
        ((f3 - 880.0).abs() <= 0.5, "880 Hz alert frequency"),
        (db(l440, a1).abs() <= 1.0, "440 Hz level -6 dBFS"),
        (db(l660, a2).abs() <= 1.0, "660 Hz level -18 dBFS (-12 capped by 6 dB)"),
        ((db(l440, l660) - 12.0).abs() <= 0.5, "440/660 level ratio 12 dB"),
        (db(l880, a3).abs() <= 1.0, "alert level -6 dBFS"),
        ((db(d440, l440) + 12.0).abs() <= 1.5, "440 Hz ducked by 12 dB"),
        ((db(d660, l660) + 12.0).abs() <= 1.5, "660 Hz ducked by 12 dB"),
    ];
    Ok((summary, checks.iter().filter(|(ok, _)| !ok).map(|(_, w)| *w).collect()))
}

/// The demo's multimedia step: [`GUESTS`] through media-dd; prints media-dd's port and level
/// lines and, from the WAV QEMU wrote, each tone's level second by second.
pub fn demo(accel: Accel) -> Result<Vec<String>> {
    let (dd, wav) = play(accel, "demo-media")?;
    for l in &dd {
        if let Some(i) = l.find("ICONNECT-PORT").or_else(|| l.find("ICONNECT-LEVEL")) {
            println!("  media-dd | {}", &l[i..]);
        }
    }
    let x = read_wav_left(&wav)?;
    let tones = [440.0, 660.0, 880.0];
    println!("  {} (device output), peak level of each tone per second, dBFS:", wav.display());
    println!("    second   440 Hz (g1)  660 Hz (g2)  880 Hz (g3 alert)");
    for (s, sec) in x.chunks_exact(RATE as usize).enumerate() {
        let lv: Vec<String> = tones
            .iter()
            .map(|&f| {
                let a = median(sec.chunks_exact(BLOCK).map(|b| goertzel(b, f)).collect());
                if a < 0.001 { "      -".to_string() } else { format!("{:7.1}", db(a, 1.0)) }
            })
            .collect();
        println!("    {s:6}   {:>11}  {:>11}  {:>11}", lv[0], lv[1], lv[2]);
    }
    let (summary, off) = analyze(&x, &wav)?;
    let mut fact = format!("media-dd mixed 3 guests into one virtio-sound device at 48 kHz: {summary}");
    if !off.is_empty() {
        fact.push_str(&format!(" (OFF: {})", off.join(", ")));
    }
    println!("  capture: a PulseAudio pipe source behind the same device, fanned out to guests at 16 kHz, 44.1 kHz and 8 kHz");
    let mut facts = vec![fact];
    facts.extend(crate::media_capture::demo(accel)?);
    Ok(facts)
}

/// CPU time (user + system) of process `pid` so far.
fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces): state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').context("malformed stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).context("utime")?;
    let sticks: u64 = f.get(12).and_then(|v| v.parse().ok()).context("stime")?;
    let hz = Command::new("getconf").arg("CLK_TCK").output().ok().and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok()).unwrap_or(100u64);
    Ok(Duration::from_millis((ticks + sticks) * 1000 / hz))
}

/// Share of one host core the process used over `over` (1.0 = a whole core).
pub(crate) fn cpu_share(pid: u32, over: Duration) -> Result<f64> {
    let (c0, t0) = (cpu_time(pid)?, Instant::now());
    std::thread::sleep(over);
    Ok((cpu_time(pid)? - c0).as_secs_f64() / t0.elapsed().as_secs_f64())
}

/// `cargo xtask bench media`: media-dd's CPU share, idle (4 guests connected, no stream) and
/// mixing 4 guests' 48 kHz stereo streams (then capturing for 4 guests:
/// [`crate::media_capture::bench`]); host-measured (QEMU process CPU time) and as
/// media-dd measures itself (`ICONNECT-DDSTAT busy_permille`, its own clock).
pub fn bench(accel: Option<Accel>) -> Result<()> {
    let accel = Accel::choose(accel)?;
    let art = build()?;
    let names = ["g1", "g2", "g3", "g4"];
    let cmds: Vec<String> =
        (1..=4).map(|i| format!("play=sine:{}:48000:s16:2 class=media secs=14 amp_db=-14 delay_ms=5000", 300 + 110 * i)).collect();
    let guests: Vec<(&str, &str)> = names.iter().copied().zip(cmds.iter().map(String::as_str)).collect();
    let mut m = start("bench-media", accel, &art, "", &guests, false)?;
    let pid = m.pid("media-dd")?;
    for g in names {
        m.wait(g, "ICONNECT-LINK up", Duration::from_secs(30))?;
    }
    let idle = cpu_share(pid, Duration::from_secs(3))?;
    m.wait("media-dd", "ICONNECT-DDSTAT streams=4", Duration::from_secs(30))?;
    let from = m.serial("media-dd").len();
    let mixing = cpu_share(pid, Duration::from_secs(6))?;
    let permille: Vec<f64> = m.serial("media-dd")[from..]
        .iter()
        .filter(|l| l.contains("ICONNECT-DDSTAT streams=4"))
        .filter_map(|l| markers::parse_fields(l, "ICONNECT-DDSTAT")?.num("busy_permille"))
        .map(|v| v as f64)
        .collect();
    let idle_permille: Vec<f64> = m
        .serial("media-dd")
        .iter()
        .filter(|l| l.contains("ICONNECT-DDSTAT streams=0"))
        .filter_map(|l| markers::parse_fields(l, "ICONNECT-DDSTAT")?.num("busy_permille"))
        .map(|v| v as f64)
        .collect();
    for g in names {
        m.result(g, Duration::from_secs(60))?;
    }
    // Underrun frames per port while its stream played (the last level line of each port).
    let mut underruns = BTreeMap::new();
    for l in m.serial("media-dd") {
        if let Some(f) = markers::parse_fields(&l, "ICONNECT-LEVEL")
            && let (Some(p), Some(u)) = (f.word(0), f.num("underrun_frames"))
        {
            underruns.insert(p.to_string(), u);
        }
    }
    m.stop()?;
    println!(
        "bench media ({accel}): media-dd QEMU process (host CPU time): idle with 4 guests connected {:.1}% of a core, \
         mixing 4 guests (48 kHz stereo s16 each, into 48 kHz) {:.1}%; media-dd's own busy time: idle {:.1}%, mixing {:.1}% \
         (median of {} one-second lines); underrun device frames per port: {:?}",
        idle * 100.0,
        mixing * 100.0,
        median(idle_permille) / 10.0,
        median(permille.clone()) / 10.0,
        permille.len(),
        underruns
    );
    crate::media_capture::bench(accel, &art)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(f: f64, a: f64, n: usize) -> Vec<f64> {
        (0..n).map(|i| a * (2.0 * std::f64::consts::PI * f * i as f64 / RATE as f64).sin()).collect()
    }

    #[test]
    fn goertzel_measures_level_and_frequency() {
        let mut x = tone(440.0, 0.5, 48000);
        for (v, w) in x.iter_mut().zip(tone(660.0, 0.25, 48000)) {
            *v += w;
        }
        let b = &x[..BLOCK];
        assert!((goertzel(b, 440.0) - 0.5).abs() < 0.005, "{}", goertzel(b, 440.0));
        assert!((goertzel(b, 660.0) - 0.25).abs() < 0.005);
        assert!(goertzel(b, 880.0) < 0.002);
        assert!((peak_near(&x, 440.0, 3.0) - 440.0).abs() < 0.06);
        assert!((peak_near(&tone(441.3, 0.5, 48000), 440.0, 3.0) - 441.3).abs() < 0.06);
    }

    #[test]
    fn reads_a_wav_with_an_unfinished_header() {
        let dir = std::env::temp_dir().join(format!("media-wav-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("t.wav");
        let mut d = Vec::new();
        d.extend(b"RIFF\0\0\0\0WAVEfmt ");
        d.extend(16u32.to_le_bytes());
        d.extend(1u16.to_le_bytes());
        d.extend(2u16.to_le_bytes());
        d.extend(RATE.to_le_bytes());
        d.extend((RATE * 4).to_le_bytes());
        d.extend(4u16.to_le_bytes());
        d.extend(16u16.to_le_bytes());
        d.extend(b"data\0\0\0\0");
        for v in [16384i16, -5, -16384, 7] {
            d.extend(v.to_le_bytes());
        }
        std::fs::write(&p, &d).unwrap();
        assert_eq!(read_wav_left(&p).unwrap(), vec![0.5, -0.5]);
        d[22] = 1; // mono: refused
        std::fs::write(&p, &d).unwrap();
        assert!(read_wav_left(&p).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
