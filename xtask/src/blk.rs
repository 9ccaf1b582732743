//! The storage driver domain on QEMU: `blk-dd` with a raw disk file (virtio-blk-pci, write-back
//! cache, so `VIRTIO_BLK_F_FLUSH` is offered) and a virtio-net NIC on QEMU user networking, which
//! reaches a real `qemu-nbd` this tool starts on the host's loopback (10.0.2.2 from inside);
//! guests (`blk-guest`) each on one iConnect channel (an `ivshmem-server` per channel).
//!
//! [`Topo`] describes a run and boots it ([`Topo::start`]): blk-dd first (READY), then each guest
//! (READY before the next: fewer spoiled TSC calibrations under TCG). Consoles go to
//! `<target>/topo/<run>/<vm>.log`; every process (QEMU, servers, qemu-nbd) dies by PID when the
//! [`Blk`] is dropped.
//!
//! The QEMU tests ([`local_remote_hostile`], [`flush_then_kill`], [`nbd_restart`]) check the
//! guest's data on the host by reading the disk file / the exported file directly against the
//! pattern the guest wrote ([`pattern_byte`], the same function as `blk_guest::pattern_byte`).
//! [`bench`] is `cargo xtask bench blk`; [`demo`] the demo's storage step.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};

use crate::chan::{self, Server};
pub use volumes::VolumeFile;

#[path = "blk_volumes.rs"]
pub mod volumes;
use crate::markers::{self, Fields};
use crate::qemu::{Accel, Qemu, Running};
use crate::util::{self, fmt_dur};

/// Channel region size and doorbell vectors (ring 0 uses vector 0).
const REGION: &str = "4M";
const VECTORS: u16 = 2;
/// The host as seen from QEMU user networking.
const HOST_FROM_GUEST: &str = "10.0.2.2";
const READY_WITHIN: Duration = Duration::from_secs(60);
const TAIL: usize = 30;

/// The byte at `offset` of the guest's pattern `seed`: an independent copy of
/// `blk_guest::pattern_byte` (the host's check runs no guest code); both pin the same known
/// answers in their tests.
pub fn pattern_byte(seed: u64, offset: u64) -> u8 {
    let word = offset / 8;
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ word.wrapping_add(0x632b_e59b_d9b4_e019);
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    (x >> ((offset % 8) * 8)) as u8
}

/// Checks that `len` bytes of `file` at `at` hold the pattern `seed` as written at volume
/// offset `vol_off` (the guest's offset).
pub fn check_pattern(file: &Path, at: u64, len: u64, seed: u64) -> Result<()> {
    let mut f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    f.seek(SeekFrom::Start(at))?;
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf).with_context(|| format!("reading {} bytes at {at} of {}", len, file.display()))?;
    if let Some(i) = (0..len).find(|&i| buf[i as usize] != pattern_byte(seed, i)) {
        bail!(
            "{}: byte {} (guest offset {i}) is {:#04x}, the guest wrote {:#04x} (seed {seed})",
            file.display(),
            at + i,
            buf[i as usize],
            pattern_byte(seed, i)
        );
    }
    Ok(())
}

/// Checks that `len` bytes of `file` at `at` are all zero (never written).
pub fn check_zero(file: &Path, at: u64, len: u64) -> Result<()> {
    let mut f = std::fs::File::open(file)?;
    f.seek(SeekFrom::Start(at))?;
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf)?;
    if let Some(i) = buf.iter().position(|&b| b != 0) {
        bail!("{}: byte {} is {:#04x}, expected untouched (0)", file.display(), at + i as u64, buf[i]);
    }
    Ok(())
}

/// A zero-filled raw file of `mib` MiB under the run's directory.
fn raw_file(dir: &Path, name: &str, mib: u64) -> Result<PathBuf> {
    raw_file_bytes(dir, name, mib << 20)
}

/// A zero-filled raw file of `bytes` under the run's directory.
fn raw_file_bytes(dir: &Path, name: &str, bytes: u64) -> Result<PathBuf> {
    let p = dir.join(name);
    let _ = std::fs::remove_file(&p);
    let f = std::fs::File::create(&p).with_context(|| format!("creating {}", p.display()))?;
    f.set_len(bytes)?;
    Ok(p)
}

/// A real `qemu-nbd` serving one raw file on 127.0.0.1 (killed by PID on drop).
pub struct Nbd {
    child: Option<Child>,
    pub port: u16,
    pub file: PathBuf,
    pub export: String,
}

impl Nbd {
    /// Serves `file` as `export` on loopback port `port`.
    pub fn start(file: &Path, export: &str, port: u16) -> Result<Nbd> {
        ensure_qemu_nbd()?;
        let mut n = Nbd { child: None, port, file: file.into(), export: export.into() };
        n.restart()?;
        Ok(n)
    }

    /// (Re)starts the server on the same port.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        let mut cmd = Command::new("qemu-nbd");
        cmd.args(["-f", "raw", "-x", &self.export, "-b", "127.0.0.1", "-p", &self.port.to_string(), "--persistent", "--shared=8"])
            .arg(&self.file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        println!("$ {}", util::show(&cmd));
        util::die_with_parent(&mut cmd);
        self.child = Some(cmd.spawn().context("starting qemu-nbd")?);
        let t = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            ensure!(t.elapsed() < Duration::from_secs(10), "qemu-nbd does not listen on port {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// SIGKILL (no chance to flush anything of its own).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

}

/// A free loopback TCP port (for a `qemu-nbd`).
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A volume file made real for one run: parsed with `${host}` (the host as blk-dd sees it) and
/// `${nbd_port}`, blk-dd's disk file created at the file's `disk` size, and a real `qemu-nbd`
/// serving the export named on the `${nbd_port}` volume (one export per run) from a raw file of
/// `export_mib` MiB.
pub struct Platform {
    pub volumes: VolumeFile,
    /// blk-dd's disk (`<dir>/disk.raw`), if the file has a `disk` line.
    pub disk: Option<PathBuf>,
    /// The qemu-nbd of the run, if a volume uses `${nbd_port}`.
    pub nbd: Option<Nbd>,
}

impl Platform {
    /// The file at `path` (relative to the repository root, e.g. `images/blk/demo.conf`),
    /// restricted to the volumes in `only` (all if empty).
    pub fn load(dir: &Path, path: &str, only: &[&str], export_mib: u64) -> Result<Platform> {
        let full = if Path::new(path).exists() { PathBuf::from(path) } else { util::project_root().join(path) };
        let text = std::fs::read_to_string(&full).with_context(|| format!("reading the volume file {}", full.display()))?;
        Platform::from_text_only(dir, path, &text, only, export_mib)
    }

    /// A volume file's text (`source` names it in messages).
    pub fn from_text(dir: &Path, source: &str, text: &str, export_mib: u64) -> Result<Platform> {
        Platform::from_text_only(dir, source, text, &[], export_mib)
    }

    fn from_text_only(dir: &Path, source: &str, text: &str, only: &[&str], export_mib: u64) -> Result<Platform> {
        let port = free_port()?;
        let port_s = port.to_string();
        let mut volumes = VolumeFile::parse(source, text, &[("host", HOST_FROM_GUEST), ("nbd_port", &port_s)])?;
        if !only.is_empty() {
            volumes = volumes.select(only)?;
        }
        let disk = match volumes.disk {
            Some(size) => Some(raw_file_bytes(dir, "disk.raw", size)?),
            None => None,
        };
        let served: Vec<&str> = volumes
            .volumes
            .iter()
            .filter_map(|v| match &v.backing {
                volumes::Backing::Nbd { port: p, export, .. } if *p == port => Some(export.as_str()),
                _ => None,
            })
            .collect();
        let nbd = match served.as_slice() {
            [] => None,
            [export, rest @ ..] => {
                ensure!(rest.iter().all(|e| e == export), "{source}: xtask serves one export on ${{nbd_port}}, the file names {served:?}");
                let file = raw_file(dir, "export.raw", export_mib)?;
                Some(Nbd::start(&file, export, port)?)
            }
        };
        Ok(Platform { volumes, disk, nbd })
    }

    /// The exported file (the `qemu-nbd`'s backing file).
    pub fn export_file(&self) -> Option<&Path> {
        self.nbd.as_ref().map(|n| n.file.as_path())
    }

    /// Prints where every volume lives.
    pub fn show(&self) {
        for v in &self.volumes.volumes {
            println!("  volume {:12} {}{}", v.name, v.place(), if v.sector_size != 512 { " (4 KiB sectors)" } else { "" });
        }
    }
}

impl Drop for Nbd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `qemu-nbd` (Debian's qemu-utils) is needed by the storage tests, demo and bench.
fn ensure_qemu_nbd() -> Result<()> {
    crate::prereq::ensure_qemu_utils()
}

/// The images and the server binary.
#[derive(Clone, Debug)]
pub struct Artifacts {
    pub dd: PathBuf,
    pub guest: PathBuf,
    pub server: PathBuf,
}

impl Artifacts {
    pub fn build() -> Result<Artifacts> {
        let imgs = [crate::images::find("blk-dd")?, crate::images::find("blk-guest")?];
        let built = crate::images::build(&imgs)?;
        Ok(Artifacts { dd: built[0].path.clone(), guest: built[1].path.clone(), server: chan::build_server()? })
    }
}

/// One guest of a run.
#[derive(Clone, Debug)]
pub struct Guest {
    pub name: String,
    /// The rest of its command line (`vol=`, `work=`, `seed=`).
    pub args: String,
    /// `disk=virtio` on its own raw file instead of a channel.
    pub virtio_disk: Option<PathBuf>,
}

impl Guest {
    pub fn new(name: &str, args: &str) -> Guest {
        Guest { name: name.into(), args: args.into(), virtio_disk: None }
    }
}

/// A run: blk-dd's disk and volumes, the guests.
pub struct Topo {
    pub run: String,
    pub accel: Accel,
    pub art: Artifacts,
    /// blk-dd's disk (None: no virtio-blk device).
    pub disk: Option<PathBuf>,
    /// blk-dd's command line: the `vol=` tokens (from a volume file) and any extra tokens.
    pub vols: Vec<String>,
    /// A NIC on user networking (remote volumes).
    pub nic: bool,
    pub guests: Vec<Guest>,
    pub timeout: Duration,
    pub echo: bool,
    /// Start blk-dd at all (false: virtio guests alone).
    pub dd: bool,
}

impl Topo {
    pub fn new(run: &str, accel: Accel, art: &Artifacts) -> Topo {
        Topo {
            run: run.into(),
            accel,
            art: art.clone(),
            disk: None,
            vols: Vec::new(),
            nic: false,
            guests: Vec::new(),
            timeout: Duration::from_secs(240),
            echo: std::env::var_os("ICONNECT_ECHO").is_some_and(|v| !v.is_empty() && v != "0"),
            dd: true,
        }
    }

    /// blk-dd's volumes, disk and NIC from `p` (its `vol=` tokens replace any set before).
    pub fn platform(&mut self, p: &Platform) {
        self.disk = if p.volumes.has_local() { p.disk.clone() } else { None };
        self.nic = p.volumes.has_remote();
        self.vols = p.volumes.tokens();
    }

    /// The run's directory (`<target>/topo/<run>`), created.
    pub fn dir(run: &str) -> Result<PathBuf> {
        let d = util::target_dir()?.join("topo").join(run);
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        Ok(d)
    }

    pub fn start(self) -> Result<Blk> {
        let t0 = Instant::now();
        let dir = Topo::dir(&self.run)?;
        let mut blk = Blk { vms: Vec::new(), servers: Vec::new(), dir, started: t0 };
        let chan_guests: Vec<&Guest> = self.guests.iter().filter(|g| g.virtio_disk.is_none()).collect();
        let mut socks = BTreeMap::new();
        for g in &chan_guests {
            let sock = chan::socket_path(&format!("blk-{}-{}", self.run, g.name))?;
            blk.servers.push(Server::start(&self.art.server, &sock, REGION, VECTORS)?);
            socks.insert(g.name.clone(), sock);
        }
        if self.dd {
            let mut q = Qemu::new(&self.art.dd, self.accel)
                .memory_mib(16)
                .append(&self.vols.join(" "))
                .timeout(self.timeout)
                .echo(self.echo)
                .label("blk-dd");
            if let Some(d) = &self.disk {
                q = q
                    .args_extra(["-drive".to_string(), format!("file={},format=raw,if=none,id=d0,cache=writeback", d.display())])
                    .device("virtio-blk-pci,drive=d0,disable-legacy=on");
            }
            if self.nic {
                q = q.netdev("user,id=n0").device("virtio-net-pci,netdev=n0,disable-legacy=on");
            }
            for (i, g) in chan_guests.iter().enumerate() {
                q = q.args_extra(chan::ivshmem_args(&socks[&g.name], VECTORS, &format!("ch{}", i + 1)));
            }
            blk.vms.push(("blk-dd".into(), q.spawn()?));
            blk.wait("blk-dd", "ICONNECT-READY blk-dd", READY_WITHIN)?;
        }
        for g in &self.guests {
            let mut q = Qemu::new(&self.art.guest, self.accel)
                .memory_mib(16)
                .timeout(self.timeout)
                .echo(self.echo)
                .label(&g.name);
            match &g.virtio_disk {
                Some(d) => {
                    q = q
                        .append(&format!("name={} disk=virtio {}", g.name, g.args))
                        .args_extra(["-drive".to_string(), format!("file={},format=raw,if=none,id=d0,cache=writeback", d.display())])
                        .device("virtio-blk-pci,drive=d0,disable-legacy=on");
                }
                None => {
                    q = q.append(&format!("name={} {}", g.name, g.args)).args_extra(chan::ivshmem_args(&socks[&g.name], VECTORS, "ch"));
                }
            }
            blk.vms.push((g.name.clone(), q.spawn()?));
            blk.wait(&g.name, "ICONNECT-READY blk-guest", READY_WITHIN)?;
        }
        println!("blk topo {}: blk-dd + {} guest(s) ready after {}", self.run, self.guests.len(), fmt_dur(t0.elapsed()));
        Ok(blk)
    }
}

/// A running storage topology.
pub struct Blk {
    vms: Vec<(String, Running)>,
    servers: Vec<Server>,
    dir: PathBuf,
    started: Instant,
}

impl Blk {
    fn vm(&mut self, name: &str) -> Result<&mut Running> {
        self.vms.iter_mut().find(|(n, _)| n == name).map(|(_, r)| r).ok_or_else(|| anyhow!("no VM {name}"))
    }

    /// A VM's console so far.
    pub fn serial(&self, name: &str) -> Vec<String> {
        self.vms.iter().find(|(n, _)| n == name).map(|(_, r)| r.serial()).unwrap_or_default()
    }

    fn fail(&self, name: &str, e: impl std::fmt::Display) -> anyhow::Error {
        self.write_logs();
        let tail = self.vms.iter().find(|(n, _)| n == name).map(|(_, r)| r.tail(TAIL)).unwrap_or_default();
        let dd = if name != "blk-dd" {
            let t = self.vms.iter().find(|(n, _)| n == "blk-dd").map(|(_, r)| r.tail(12)).unwrap_or_default();
            format!("\n--- blk-dd console (last lines) ---\n{t}")
        } else {
            String::new()
        };
        anyhow!("{name}: {e}\n--- {name} console (last {TAIL} lines) ---\n{tail}{dd}\n(logs in {})", self.dir.display())
    }

    /// Waits for a console line containing `needle`; returns it and the host time it arrived
    /// (since the topology started).
    pub fn wait(&mut self, name: &str, needle: &str, within: Duration) -> Result<(String, Duration)> {
        let started = self.started;
        let r = self.vm(name)?.wait_for(|l| l.contains(needle), within);
        match r {
            Ok((l, _)) => Ok((l, started.elapsed())),
            Err(e) => Err(self.fail(name, format!("waiting for `{needle}`: {e}"))),
        }
    }

    /// Waits for the guest's `ICONNECT-RESULT`; `Err` if it is a FAIL.
    pub fn result(&mut self, name: &str, within: Duration) -> Result<(Fields, Duration)> {
        let (line, at) = self.wait(name, "ICONNECT-RESULT", within)?;
        let f = markers::parse_fields(&line, "ICONNECT-RESULT").context("unparsable result line")?;
        if f.word(0) != Some("ok") {
            return Err(self.fail(name, format!("guest failed: {line}")));
        }
        Ok((f, at))
    }

    /// SIGKILLs one VM now.
    pub fn kill(&mut self, name: &str) -> Result<()> {
        let i = self.vms.iter().position(|(n, _)| n == name).ok_or_else(|| anyhow!("no VM {name}"))?;
        let (n, r) = self.vms.remove(i);
        let out = r.stop();
        let _ = std::fs::write(self.dir.join(format!("{n}.log")), out.serial.join("\n"));
        Ok(())
    }

    fn write_logs(&self) {
        for (n, r) in &self.vms {
            let _ = std::fs::write(self.dir.join(format!("{n}.log")), r.serial().join("\n"));
        }
    }

    /// Stops everything; fails if any console shows a fault or panic.
    pub fn stop(mut self) -> Result<()> {
        self.write_logs();
        let vms = std::mem::take(&mut self.vms);
        let mut bad = Vec::new();
        for (n, r) in vms {
            let out = r.stop();
            let _ = std::fs::write(self.dir.join(format!("{n}.log")), out.serial.join("\n"));
            if let Some(l) = out.serial.iter().find(|l| l.contains("ICONNECT-FAULT") || l.contains("ICONNECT-PANIC")) {
                bad.push(format!("{n}: {l}"));
            }
        }
        self.servers.clear();
        ensure!(bad.is_empty(), "fault or panic: {}", bad.join("; "));
        Ok(())
    }
}

impl Drop for Blk {
    fn drop(&mut self) {
        self.write_logs();
    }
}

const MIB: u64 = 1 << 20;

/// QEMU test: one blk-dd, five guests with the same image: g1 on a local slice (512-byte
/// sectors), g2 hostile on the next slice (4 KiB sectors), g3 on a remote NBD export, g4 on a
/// third slice (4 KiB sectors), g5 publishing a wild ring index (its port alone goes down,
/// `blkback:ring...`). The host
/// reads back the disk file and the exported file byte-exact; g2's requests outside its
/// slice, with bad references and oversized segment counts are refused, g1's slice beyond what
/// g1 wrote is untouched.
pub fn local_remote_hostile(accel: Accel) -> Result<String> {
    let art = Artifacts::build()?;
    let dir = Topo::dir("blk-basic")?;
    let p = Platform::from_text(
        &dir,
        "blk-basic volumes",
        "disk 52M
         volume v1 local 0 16M
         volume v2 local 16M 16M ss=4096
         volume v3 nbd://${host}:${nbd_port}/blk
         volume v4 local 32M 16M ss=4096
         volume v5 local 48M 4M",
        16,
    )?;
    let (disk, exp) = (p.disk.clone().context("no disk")?, p.export_file().context("no export")?.to_path_buf());
    let mut t = Topo::new("blk-basic", accel, &art);
    t.platform(&p);
    t.guests = vec![
        Guest::new("g1", "vol=v1 work=verify:2048 seed=11"),
        Guest::new("g2", "vol=v2 work=hostile seed=12"),
        Guest::new("g3", "vol=v3 work=verify:2048 seed=13"),
        Guest::new("g4", "vol=v4 work=verify:1024 seed=14"),
        Guest::new("g5", "vol=v5 work=hostile:ring"),
    ];
    let mut b = t.start()?;
    let (r1, _) = b.result("g1", Duration::from_secs(120))?;
    let (r2, _) = b.result("g2", Duration::from_secs(60))?;
    let (r3, _) = b.result("g3", Duration::from_secs(120))?;
    let (r4, _) = b.result("g4", Duration::from_secs(120))?;
    let (r5, _) = b.result("g5", Duration::from_secs(60))?;
    b.wait("blk-dd", "ICONNECT-PORT 5 down reason=blkback:ring", Duration::from_secs(10))?;
    ensure!(r2.get("refused") == Some("4/4") && r2.get("after") == Some("io-ok"), "g2 hostile: {:?}", r2.kv);
    // Discard: offered by the NBD volume (NBD_CMD_TRIM), not by the local disk (virtio-drivers
    // has no discard); the guest's discard past its verified region must be answered Okay.
    ensure!(r3.get("discard") == Some("ok"), "g3 (nbd): discard={:?}", r3.get("discard"));
    ensure!(r1.get("discard") == Some("unsupported"), "g1 (local): discard={:?}", r1.get("discard"));
    let dd = b.serial("blk-dd");
    for want in [
        "ICONNECT-PORT 1 up volume=v1 backing=local sectors=32768 sector_size=512",
        "ICONNECT-PORT 2 up volume=v2 backing=local sectors=4096 sector_size=4096",
        "ICONNECT-PORT 3 up volume=v3 backing=nbd",
        "ICONNECT-PORT 4 up volume=v4 backing=local sectors=4096 sector_size=4096",
        "ICONNECT-PORT 2 down reason=disconnected",
        "ICONNECT-PORT 5 down reason=blkback:ring",
    ] {
        ensure!(dd.iter().any(|l| l.contains(want)), "blk-dd never said `{want}`");
    }
    b.stop()?;
    check_pattern(&disk, 0, 2 * MIB, 11).context("g1's data in the disk file")?;
    check_zero(&disk, 2 * MIB, 14 * MIB).context("g1's slice beyond its data")?;
    check_pattern(&disk, 16 * MIB, 4096, 12).context("g2's one good write (after its hostile requests)")?;
    check_zero(&disk, 16 * MIB + 4096, 16 * MIB - 4096).context("g2's slice")?;
    check_pattern(&exp, 0, 2 * MIB, 13).context("g3's data in the NBD export's file")?;
    check_pattern(&disk, 32 * MIB, MIB, 14).context("g4's data in the disk file")?;
    check_zero(&disk, 33 * MIB, 15 * MIB).context("g4's slice beyond its data")?;
    Ok(format!(
        "g1 local {} B ok, g2 hostile refused {} (then io-ok), g3 nbd {} B ok, g4 local 4K-sector {} B ok, g5 wild req_prod: {} and only its port down; host read back both files byte-exact",
        r1.get("bytes").unwrap_or("?"),
        r2.get("refused").unwrap_or("?"),
        r3.get("bytes").unwrap_or("?"),
        r4.get("bytes").unwrap_or("?"),
        r5.get("outcome").unwrap_or("?")
    ))
}

/// QEMU test: the guest's flush response means durable: blk-dd and the guest are SIGKILLed the
/// moment the guest prints `ICONNECT-FLUSHED`; the disk file must hold everything.
pub fn flush_then_kill(accel: Accel) -> Result<String> {
    let art = Artifacts::build()?;
    let dir = Topo::dir("blk-flush-kill")?;
    let p = Platform::from_text(&dir, "blk-flush-kill volumes", "disk 16M\nvolume v1 local 4M 8M", 0)?;
    let disk = p.disk.clone().context("no disk")?;
    let mut t = Topo::new("blk-flush-kill", accel, &art);
    t.platform(&p);
    t.guests = vec![Guest::new("g1", "vol=v1 work=verify:8192 seed=21")];
    let mut b = t.start()?;
    b.wait("g1", "ICONNECT-FLUSHED", Duration::from_secs(120))?;
    b.kill("blk-dd")?;
    b.kill("g1")?;
    drop(b);
    check_pattern(&disk, 4 * MIB, 8 * MIB, 21).context("after the flush response, QEMU killed")?;
    check_zero(&disk, 0, 4 * MIB)?;
    Ok("8 MiB written, flush answered, blk-dd SIGKILLed at once: all 8 MiB in the file".into())
}

/// QEMU test: a guest VM killed in the middle of its writes (without closing its channel) is
/// taken down by its missing heartbeat, which frees its volume: blk-dd says
/// `ICONNECT-PORT 1 down reason=heartbeat-timeout`.
pub fn killed_guest(accel: Accel) -> Result<String> {
    let art = Artifacts::build()?;
    let dir = Topo::dir("blk-killed-guest")?;
    let p = Platform::from_text(&dir, "blk-killed-guest volumes", "disk 8M\nvolume v1 local 0 8M", 0)?;
    let mut t = Topo::new("blk-killed-guest", accel, &art);
    t.platform(&p);
    t.guests = vec![Guest::new("g1", "vol=v1 work=verify:4096:1000 seed=51")];
    let mut b = t.start()?;
    b.wait("g1", "ICONNECT-FLUSHED", Duration::from_secs(60))?;
    let killed = Instant::now();
    b.kill("g1")?;
    b.wait("blk-dd", "ICONNECT-PORT 1 down reason=heartbeat-timeout", Duration::from_secs(20))?;
    let took = killed.elapsed();
    let stat = b.serial("blk-dd").into_iter().find(|l| l.contains("ICONNECT-PORTSTAT 1")).unwrap_or_default();
    b.stop()?;
    let stat = stat.find("requests=").map(|i| stat[i..].to_string()).unwrap_or_default();
    Ok(format!("guest SIGKILLed mid-run; its port went down (heartbeat-timeout) {} later, volume freed; {stat}", fmt_dur(took)))
}

/// QEMU test: blk-dd checks the volume map against its disk at start and refuses to run with a
/// bad one (overlapping slices; a slice past the end of the disk), saying why. The maps come
/// from volume files whose lines parse but which xtask's own check refuses too (blk-dd must
/// not rely on it): the tokens are generated without that check.
pub fn bad_volume_maps(accel: Accel) -> Result<String> {
    let art = Artifacts::build()?;
    let dir = Topo::dir("blk-bad-maps")?;
    let disk = raw_file(&dir, "disk.raw", 16)?;
    let mut seen = Vec::new();
    for (text, xtask_says, why) in [
        ("disk 16M\nvolume a local 0 8M\nvolume b local 4M 8M", "overlaps volume `a`", "local slices overlap"),
        ("disk 16M\nvolume a local 0 8M\nvolume b local 8M 16M", "ends past the end of the 16M disk", "slice outside the disk"),
    ] {
        let file = VolumeFile::parse_lines("bad map", text, &[])?;
        let refused = file.check().err().map(|e| format!("{e:#}")).unwrap_or_default();
        ensure!(refused.contains(xtask_says), "xtask's check of {text:?}: `{refused}`, expected `{xtask_says}`");
        let vols = file.cmdline();
        let vols = vols.as_str();
        let out = Qemu::new(&art.dd, accel)
            .memory_mib(16)
            .append(vols)
            .timeout(Duration::from_secs(60))
            .args_extra(["-drive".to_string(), format!("file={},format=raw,if=none,id=d0,readonly=on", disk.display())])
            .device("virtio-blk-pci,drive=d0,disable-legacy=on")
            .label("blk-dd")
            .run()?;
        let said = out.serial.iter().find(|l| l.contains(why)).cloned();
        ensure!(
            out.exit == crate::qemu::GuestExit::Failure && said.is_some(),
            "blk-dd with `{vols}` on a 16 MiB disk: exit {:?}, expected a failure saying `{why}`; console:\n{}",
            out.exit,
            out.serial.join("\n")
        );
        seen.push(why);
    }
    Ok(format!("refused at start, exit 35: {}", seen.join("; ")))
}

/// QEMU test: qemu-nbd is SIGKILLed in the middle of a guest's writes (after its first pass's
/// flush) and restarted; the guest finishes without an error and the export's file holds
/// every byte of the last pass.
pub fn nbd_restart(accel: Accel) -> Result<String> {
    let art = Artifacts::build()?;
    let dir = Topo::dir("blk-nbd-restart")?;
    let mut p = Platform::from_text(&dir, "blk-nbd-restart volumes", "volume v1 nbd://${host}:${nbd_port}/blk", 16)?;
    let mut t = Topo::new("blk-nbd-restart", accel, &art);
    t.platform(&p);
    let mut nbd = p.nbd.take().context("no qemu-nbd")?;
    let exp = nbd.file.clone();
    t.guests = vec![Guest::new("g1", "vol=v1 work=verify:8192:3 seed=31")];
    let mut b = t.start()?;
    b.wait("g1", "ICONNECT-FLUSHED name=g1 pass=0", Duration::from_secs(120))?;
    nbd.kill();
    std::thread::sleep(Duration::from_millis(300));
    nbd.restart()?;
    let (r, _) = b.result("g1", Duration::from_secs(180))?;
    let dd = b.serial("blk-dd");
    let reconnected = dd.iter().any(|l| l.contains("connected (connection 2)"));
    b.stop()?;
    ensure!(reconnected, "blk-dd never reconnected to qemu-nbd (no `connection 2`)");
    check_pattern(&exp, 0, 8 * MIB, 33).context("the export after the restart")?;
    Ok(format!("qemu-nbd killed after pass 0's flush, restarted 0.3 s later; blk-dd reconnected; guest ok ({} ops), export byte-exact", r.get("ops").unwrap_or("?")))
}

/// The median of `v` (NaN if empty).
fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// The bench's paths: how the same guest image reaches its disk, and how it waits for
/// completions: polling (its default on both: the ring / the used ring while requests are in
/// flight) or sleeping until the interrupt (`-irq`: blk-dd's doorbell / the disk's interrupt).
const BENCH_PATHS: [&str; 5] = ["blk-dd", "virtio", "blk-dd-irq", "virtio-irq", "nbd"];

/// `cargo xtask bench blk`: 4 KiB random read/write IOPS at QD1 and QD32 of the same guest
/// image through blk-dd (a local slice, `images/blk/bench.conf`), on a virtio-blk disk of its
/// own (polling its used ring, as it does by default; and `virtio-irq`: sleeping until the
/// disk's interrupt, as the channel guest sleeps until blk-dd's doorbell), and through blk-dd to
/// a remote volume on qemu-nbd. IOPS are measured on the host: operations / (time of the result
/// line - time of the start line). Every case runs its paths back to back, `reps` times over
/// (the host is shared and noisy): the table shows medians, and the ratio is the median of each
/// repetition's blk-dd / direct (paired runs).
pub fn bench(accel: Option<Accel>) -> Result<()> {
    const BENCH_VOLUMES: &str = "images/blk/bench.conf";
    const BENCH_LOCAL: &str = "bench-local";
    const BENCH_REMOTE: &str = "bench-nbd";
    let accel = Accel::choose(accel)?;
    let art = Artifacts::build()?;
    let env_num = |k: &str, d: u32| std::env::var(k).ok().and_then(|s| s.parse().ok()).unwrap_or(d);
    let secs = env_num("ICONNECT_BENCH_SECS", 5);
    let reps = env_num("ICONNECT_BENCH_REPS", 3).max(1);
    // ICONNECT_BENCH_BLK=read:32,write:1 picks cases (default: all four).
    let pick = std::env::var("ICONNECT_BENCH_BLK").unwrap_or_default();
    let cases: Vec<(&str, usize)> = [("read", 1), ("read", 32), ("write", 1), ("write", 32)]
        .into_iter()
        .filter(|(rw, qd)| pick.is_empty() || pick.split(',').any(|c| c == format!("{rw}:{qd}")))
        .collect();
    // ICONNECT_BENCH_BLK_PATHS=blk-dd,virtio picks paths (default: all of BENCH_PATHS);
    // ICONNECT_BENCH_BLK_DD_ARGS / ICONNECT_BENCH_BLK_GUEST_ARGS add command-line tokens
    // (blk-dd: poll_us=, early=1, disk_poll=1; blk-guest: poll_us=, spin=1).
    let paths = std::env::var("ICONNECT_BENCH_BLK_PATHS").unwrap_or_default();
    let dd_args = std::env::var("ICONNECT_BENCH_BLK_DD_ARGS").unwrap_or_default();
    let guest_args = std::env::var("ICONNECT_BENCH_BLK_GUEST_ARGS").unwrap_or_default();
    let bench_file = VolumeFile::load(Path::new(BENCH_VOLUMES), &[("host", HOST_FROM_GUEST), ("nbd_port", "1")])?;
    println!("bench blk: volumes from {BENCH_VOLUMES}: {BENCH_LOCAL} (via blk-dd), {BENCH_REMOTE} (blk-dd->nbd); {reps} repetition(s) of {secs} s");
    // samples[case][path] = IOPS per repetition (NaN: path not run).
    let mut samples = vec![vec![Vec::new(); BENCH_PATHS.len()]; cases.len()];
    for rep in 0..reps {
        for (ci, &(rw, qd)) in cases.iter().enumerate() {
            for (pi, path) in BENCH_PATHS.into_iter().enumerate() {
                if !paths.is_empty() && !paths.split(',').any(|p| p == path) {
                    samples[ci][pi].push(f64::NAN);
                    continue;
                }
                let run = format!("bench-blk-{path}-{rw}{qd}");
                let dir = Topo::dir(&run)?;
                let mut t = Topo::new(&run, accel, &art);
                // No liveness promise: under kvm_pvm the domains' clocks jump (a silent-guest
                // verdict would be spurious); this measures throughput only.
                let work = format!("work=iops:{rw}:{qd}:{secs} heartbeat_ms=0 {guest_args}");
                let mut _platform = None;
                if path.starts_with("virtio") {
                    // The direct baseline: the same guest on its own disk of the local volume's size.
                    let size = match bench_file.get(BENCH_LOCAL).map(|v| &v.backing) {
                        Some(volumes::Backing::Local { len, .. }) => *len,
                        _ => bail!("{BENCH_VOLUMES}: `{BENCH_LOCAL}` must be a local volume"),
                    };
                    t.dd = false;
                    let irq = if path == "virtio-irq" { " disk_irq=1" } else { "" };
                    let mut g = Guest::new("g1", &format!("{work}{irq}"));
                    g.virtio_disk = Some(raw_file_bytes(&dir, "disk.raw", size)?);
                    t.guests = vec![g];
                } else {
                    let vol = if path == "nbd" { BENCH_REMOTE } else { BENCH_LOCAL };
                    let p = Platform::load(&dir, BENCH_VOLUMES, &[vol], 80)?;
                    t.platform(&p);
                    t.vols.push(dd_args.clone());
                    let irq = if path == "blk-dd-irq" { " poll_us=0" } else { "" };
                    t.guests = vec![Guest::new("g1", &format!("vol={vol} {work}{irq}"))];
                    _platform = Some(p);
                }
                let mut b = t.start()?;
                let (_, t0) = b.wait("g1", "ICONNECT-IOPS-START", Duration::from_secs(60))?;
                let (f, t1) = b.result("g1", Duration::from_secs(u64::from(secs) + 120))?;
                // blk-dd's own account of the run (the median second): busy share, wake-ups, doorbells.
                let mut stats: Vec<String> = b
                    .serial("blk-dd")
                    .iter()
                    .filter_map(|l| l.find("ICONNECT-DDSTAT ").map(|i| l[i + 15..].to_string()))
                    .collect();
                stats.sort_by_key(|l| markers::parse_fields(&format!("X {l}"), "X").and_then(|f| f.num("requests")).unwrap_or(0));
                let dd_stat = stats.get(stats.len() / 2).cloned();
                b.stop()?;
                let ops = f.num("ops").context("no ops=")?;
                let host_iops = ops as f64 / (t1 - t0).as_secs_f64();
                println!(
                    "bench blk: [{}/{reps}] {path:10} {rw:5} qd={qd:2}: {host_iops:8.0} IOPS (host clock; guest says iops={} p50={}us p99={}us, {ops} ops, guest busy {}‰{})",
                    rep + 1,
                    f.get("iops").unwrap_or("?"),
                    f.get("lat_us_p50").unwrap_or("?"),
                    f.get("lat_us_p99").unwrap_or("?"),
                    f.get("busy_permille").unwrap_or("?"),
                    dd_stat.map(|s| format!(", blk-dd: {}", s.trim())).unwrap_or_default()
                );
                samples[ci][pi].push(host_iops);
            }
        }
    }
    println!("\nbench blk ({accel}, {secs} s per run, {reps} repetition(s), 4 KiB random, host-clock IOPS, medians):");
    println!(
        "  {:13} | {:>10} {:>10} {:>6} | {:>10} {:>10} {:>6} | {:>11}",
        "case", "via blk-dd", "direct", "ratio", "blk-dd-irq", "direct-irq", "ratio", "blk-dd->nbd"
    );
    for (ci, &(rw, qd)) in cases.iter().enumerate() {
        let s = &samples[ci];
        let paired = |a: usize, b: usize| median(s[a].iter().zip(&s[b]).map(|(x, y)| x / y.max(1e-9)).collect());
        println!(
            "  {:13} | {:10.0} {:10.0} {:6.2} | {:10.0} {:10.0} {:6.2} | {:11.0}",
            format!("{rw} qd={qd}"),
            median(s[0].clone()),
            median(s[1].clone()),
            paired(0, 1),
            median(s[2].clone()),
            median(s[3].clone()),
            paired(2, 3),
            median(s[4].clone())
        );
    }
    println!(
        "  (goal >= 0.90 x direct. The same blk-guest image each time: via blk-dd = a local slice of blk-dd's virtio-blk \
         disk over an iConnect channel; direct = its own virtio-blk disk of the slice's size; both poll for completions \
         while requests are in flight (the guest's default: its ring, bounded by poll_us=, / the used ring); -irq = the \
         same two sleeping until blk-dd's doorbell (poll_us=0) / the disk's interrupt (disk_irq=1); blk-dd->nbd = a remote \
         volume on the host's qemu-nbd through blk-dd's smoltcp (polling guest). blk-dd itself sleeps until a doorbell or \
         the disk's interrupt. Ratios: median over the repetitions of each one's pair, run back to back.)"
    );
    Ok(())
}

/// The demo's volume file.
pub const DEMO_VOLUMES: &str = "images/blk/demo.conf";
/// Size of the export file behind the demo's `${nbd_port}` volume (MiB).
const DEMO_EXPORT_MIB: u64 = 16;
/// Guests the demo runs at most (one per volume of the file).
const DEMO_MAX_GUESTS: usize = 4;

/// The demo's storage step: one guest per volume of `images/blk/demo.conf` (a local slice of
/// blk-dd's disk and a remote NBD export as shipped), all running the same workload; prints
/// where each volume lives and the results, then checks each guest's data in the disk file /
/// the exported file on the host.
pub fn demo(accel: Accel) -> Result<Vec<String>> {
    let art = Artifacts::build()?;
    let dir = Topo::dir("demo-blk")?;
    let p = Platform::load(&dir, DEMO_VOLUMES, &[], DEMO_EXPORT_MIB)?;
    println!("  volumes from {DEMO_VOLUMES} (blk-dd's command line: {}):", p.volumes.cmdline());
    p.show();
    ensure!(p.volumes.volumes.len() <= DEMO_MAX_GUESTS, "{DEMO_VOLUMES}: the demo runs at most {DEMO_MAX_GUESTS} guests (one per volume)");
    let mut t = Topo::new("demo-blk", accel, &art);
    t.platform(&p);
    // Each guest writes up to 4 MiB of its volume (less on a smaller slice), then reads it back.
    let mut checks = Vec::new();
    for (i, v) in p.volumes.volumes.iter().enumerate() {
        let (at, file, len) = match &v.backing {
            volumes::Backing::Local { offset, len } => (*offset, p.disk.clone(), (*len).min(4 * MIB)),
            volumes::Backing::Nbd { port, .. } if p.nbd.as_ref().is_some_and(|n| n.port == *port) => {
                (0, p.export_file().map(Path::to_path_buf), 4 * MIB)
            }
            volumes::Backing::Nbd { .. } => (0, None, 4 * MIB),
        };
        let (g, seed) = (format!("g{}", i + 1), 41 + i as u64);
        t.guests.push(Guest::new(&g, &format!("vol={} work=verify:{} seed={seed}", v.name, len / 1024)));
        checks.push((g, v.name.clone(), v.place(), at, file, len, seed));
    }
    let mut b = t.start()?;
    let mut facts = Vec::new();
    for (g, name, place, ..) in &checks {
        let (f, _) = b.result(g, Duration::from_secs(120))?;
        facts.push(format!(
            "{g} on `{name}` ({place}): verify ok, {} bytes written, flushed, read back ({} ops)",
            f.get("bytes").unwrap_or("?"),
            f.get("ops").unwrap_or("?")
        ));
    }
    for l in b.serial("blk-dd") {
        if let Some(i) = l.find("ICONNECT-VOLUME").or_else(|| l.find("ICONNECT-PORT")) {
            println!("  blk-dd | {}", &l[i..]);
            if l.contains("ICONNECT-VOLUME") && l.contains(" size=") {
                facts.push(format!("blk-dd: {}", &l[i..]));
            }
        }
    }
    b.stop()?;
    let mut checked = Vec::new();
    for (g, name, _, at, file, len, seed) in &checks {
        if let Some(file) = file {
            check_pattern(file, *at, *len, *seed).with_context(|| format!("{g}'s data on `{name}`"))?;
            checked.push(format!("{g}'s {} at {} of {}", util::fmt_bytes(*len), at, file.display()));
        }
    }
    facts.push(format!("host check, byte-exact: {}", checked.join("; ")));
    for f in &facts {
        println!("  {f}");
    }
    Ok(facts)
}

/// `cargo xtask blk`: blk-dd with the volumes of a volume file and guests of your choice.
#[derive(clap::Args, Debug)]
pub struct BlkArgs {
    /// The volume file (see images/blk/demo.conf for the format).
    #[arg(long, default_value = DEMO_VOLUMES)]
    volumes: String,
    /// Only check the file and print blk-dd's command line.
    #[arg(long)]
    check: bool,
    /// Run the demo's storage step alone (images/blk/demo.conf; --volumes is ignored).
    #[arg(long)]
    demo: bool,
    /// One guest per occurrence: its command line, e.g. "vol=alpha work=verify:4096" or
    /// "vol=beta work=iops:read:32:5" (blk-guest: work=verify:<KiB>[:<passes>] | iops:<read|write>:<qd>:<secs> | hostile).
    #[arg(long = "guest")]
    guests: Vec<String>,
    /// Size of the file behind the `${nbd_port}` export (MiB).
    #[arg(long, default_value_t = 64)]
    export_mib: u64,
    /// Extra words for blk-dd's command line (e.g. "poll_us=0").
    #[arg(long, default_value = "")]
    dd_args: String,
    /// Wait this long for the guests' results (seconds).
    #[arg(long, default_value_t = 120)]
    hold: u64,
    #[arg(long, value_enum)]
    accel: Option<Accel>,
    /// Do not print the consoles live.
    #[arg(long)]
    quiet: bool,
}

pub fn blk_cmd(args: &BlkArgs) -> Result<()> {
    if args.check {
        let vars = [("host", HOST_FROM_GUEST), ("nbd_port", "10809")];
        let f = VolumeFile::load(Path::new(&args.volumes), &vars)?;
        println!("{}: ok ({} volume(s); ${{nbd_port}} shown as 10809)", args.volumes, f.volumes.len());
        if let Some(d) = f.disk {
            println!("  disk {}", volumes::fmt_size(d));
        }
        for v in &f.volumes {
            println!("  volume {:12} {}{}{}", v.name, v.place(), if v.sector_size != 512 { " ss=4096" } else { "" }, if v.read_only { " ro" } else { "" });
        }
        println!("blk-dd command line: {}", f.cmdline());
        return Ok(());
    }
    let accel = Accel::choose(args.accel)?;
    if args.demo {
        demo(accel)?;
        return Ok(());
    }
    let art = Artifacts::build()?;
    let dir = Topo::dir("manual-blk")?;
    let p = Platform::load(&dir, &args.volumes, &[], args.export_mib)?;
    println!("blk: volumes from {} (blk-dd's command line: {}):", args.volumes, p.volumes.cmdline());
    p.show();
    let mut t = Topo::new("manual-blk", accel, &art);
    t.platform(&p);
    t.vols.extend(args.dd_args.split_whitespace().map(str::to_string));
    t.echo = !args.quiet;
    t.timeout = Duration::from_secs(args.hold + 120);
    for (i, g) in args.guests.iter().enumerate() {
        t.guests.push(Guest::new(&format!("g{}", i + 1), g));
    }
    let names: Vec<String> = t.guests.iter().map(|g| g.name.clone()).collect();
    let mut b = t.start()?;
    let until = Instant::now() + Duration::from_secs(args.hold);
    for n in &names {
        match b.wait(n, "ICONNECT-RESULT", until.saturating_duration_since(Instant::now())) {
            Ok((l, _)) => println!("blk: {n}: {}", l.find("ICONNECT-RESULT").map_or(l.as_str(), |i| &l[i..])),
            Err(e) => println!("blk: {n}: no result: {}", format!("{e:#}").lines().next().unwrap_or("")),
        }
    }
    if names.is_empty() {
        std::thread::sleep(until.saturating_duration_since(Instant::now()));
    }
    for l in b.serial("blk-dd") {
        if let Some(i) = l.find("ICONNECT-PORT ") {
            println!("  blk-dd | {}", &l[i..]);
        }
    }
    b.stop()?;
    println!("blk: logs in {}", dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert!(median(vec![]).is_nan());
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![f64::NAN, 5.0]), 5.0);
    }

    #[test]
    fn pattern_matches_the_guest() {
        // The known answers pinned in blk-guest's tests too.
        let v: Vec<u8> = (0..12).map(|o| pattern_byte(11, o)).collect();
        assert_eq!(v, [6, 123, 211, 247, 129, 37, 172, 140, 164, 146, 81, 221]);
        let w: Vec<u8> = [4093, 4094, 4095, 4096].iter().map(|&o| pattern_byte(1 << 40, o)).collect();
        assert_eq!(w, [196, 205, 185, 71]);
        let dir = std::env::temp_dir().join(format!("blk-pattern-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("p.raw");
        let mut data = vec![0u8; 8192];
        for (i, b) in data[4096..].iter_mut().enumerate() {
            *b = pattern_byte(5, i as u64);
        }
        std::fs::write(&f, &data).unwrap();
        check_pattern(&f, 4096, 4096, 5).unwrap();
        check_zero(&f, 0, 4096).unwrap();
        assert!(check_pattern(&f, 0, 4096, 5).is_err());
        assert!(check_pattern(&f, 4096, 4096, 6).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
