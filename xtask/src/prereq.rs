//! Prerequisite checks (and installs, when root on Debian): QEMU ≥ 8.2, iproute2, /dev/net/tun,
//! the `x86_64-unknown-none` Rust target.

use std::fmt;
use std::fs::OpenOptions;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};

use crate::util::{self, have_program, is_root, project_root};

pub const QEMU: &str = "qemu-system-x86_64";
pub const IMAGE_TARGET: &str = "x86_64-unknown-none";
/// Later issues need virtio-sound, which arrived in QEMU 8.2.
pub const QEMU_MIN: Version = Version { major: 8, minor: 2, patch: 0 };
const BACKPORTS_LINE: &str = "deb http://deb.debian.org/debian bookworm-backports main";
const BACKPORTS_FILE: &str = "/etc/apt/sources.list.d/bookworm-backports.list";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Parse the first line of `qemu-system-x86_64 --version`
/// (`QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2...)`).
pub fn parse_qemu_version(text: &str) -> Option<Version> {
    let line = text.lines().find(|l| l.contains("version"))?;
    let rest = &line[line.find("version")? + "version".len()..];
    let tok = rest.split_whitespace().next()?;
    let mut it = tok.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    let patch = it.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    Some(Version { major, minor, patch })
}

fn qemu_version() -> Option<Version> {
    let out = Command::new(QEMU).arg("--version").output().ok()?;
    if !out.status.success() {
        return None;
    }
    parse_qemu_version(&String::from_utf8_lossy(&out.stdout))
}

fn os_release() -> String {
    std::fs::read_to_string("/etc/os-release").unwrap_or_default()
}

fn os_field(text: &str, key: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_string())
}

fn is_debian() -> bool {
    Path::new("/etc/debian_version").exists() && have_program("apt-get")
}

fn codename() -> Option<String> {
    os_field(&os_release(), "VERSION_CODENAME")
}

/// Whether an apt source text enables `bookworm-backports` (one-line or deb822 format).
pub fn source_has_backports(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .any(|l| l.split_whitespace().any(|w| w == "bookworm-backports"))
}

fn apt_has_backports() -> bool {
    let mut files = vec![Path::new("/etc/apt/sources.list").to_path_buf()];
    if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
        files.extend(rd.flatten().map(|e| e.path()));
    }
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .any(|t| source_has_backports(&t))
}

static APT_UPDATED: AtomicBool = AtomicBool::new(false);

fn apt_get(args: &[&str]) -> Result<()> {
    let mut c = Command::new("apt-get");
    c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
    util::run(&mut c)
}

fn apt_update() -> Result<()> {
    if !APT_UPDATED.swap(true, Ordering::SeqCst) {
        apt_get(&["update"])?;
    }
    Ok(())
}

fn allow_install() -> bool {
    std::env::var_os("ICONNECT_NO_INSTALL").is_none()
}

fn qemu_manual_commands() -> String {
    let sudo = if is_root() { "" } else { "sudo " };
    if codename().as_deref() == Some("bookworm") {
        format!(
            "  echo '{BACKPORTS_LINE}' | {sudo}tee {BACKPORTS_FILE}\n  {sudo}apt-get update\n  \
             {sudo}apt-get install -y -t bookworm-backports qemu-system-x86"
        )
    } else if is_debian() {
        format!("  {sudo}apt-get update\n  {sudo}apt-get install -y qemu-system-x86")
    } else {
        format!("  install QEMU >= {QEMU_MIN} so that `{QEMU}` is on PATH")
    }
}

/// Make sure QEMU ≥ 8.2 is installed; install it from bookworm-backports when root on Debian.
pub fn ensure_qemu() -> Result<Version> {
    let problem = match qemu_version() {
        Some(v) if v >= QEMU_MIN => {
            println!("prereq: QEMU {v} (>= {QEMU_MIN}) ok");
            return Ok(v);
        }
        Some(v) => format!("QEMU {v} is too old (need >= {QEMU_MIN} for virtio-sound)"),
        None => format!("`{QEMU}` not found"),
    };
    println!("prereq: {problem}");
    if !(is_root() && is_debian() && allow_install()) {
        bail!("{problem}. Install it with:\n{}", qemu_manual_commands());
    }
    let code = codename();
    if code.as_deref() == Some("bookworm") {
        if !apt_has_backports() {
            println!("prereq: adding {BACKPORTS_FILE}");
            std::fs::write(BACKPORTS_FILE, format!("{BACKPORTS_LINE}\n"))
                .with_context(|| format!("writing {BACKPORTS_FILE}"))?;
            APT_UPDATED.store(false, Ordering::SeqCst);
        }
        apt_update()?;
        apt_get(&["install", "-y", "-t", "bookworm-backports", "qemu-system-x86"])?;
    } else {
        apt_update()?;
        apt_get(&["install", "-y", "qemu-system-x86"])?;
    }
    match qemu_version() {
        Some(v) if v >= QEMU_MIN => {
            println!("prereq: installed QEMU {v}");
            Ok(v)
        }
        Some(v) => bail!("installed QEMU is {v}, still older than {QEMU_MIN}"),
        None => bail!("installing qemu-system-x86 did not provide `{QEMU}`"),
    }
}

/// Requirements of the tap/netns tests: root, `ip`, /dev/net/tun.
pub fn ensure_net() -> Result<()> {
    if !is_root() {
        bail!(
            "the network tests create a network namespace and a tap device: run as root \
             (e.g. `sudo -E cargo xtask ...`)"
        );
    }
    if !have_program("ip") {
        println!("prereq: `ip` (iproute2) missing");
        if is_debian() && allow_install() {
            apt_update()?;
            apt_get(&["install", "-y", "iproute2"])?;
        }
        if !have_program("ip") {
            bail!("`ip` not found: install iproute2 (apt-get install -y iproute2)");
        }
    }
    let tun = Path::new("/dev/net/tun");
    if !tun.exists() {
        println!("prereq: /dev/net/tun missing, trying `modprobe tun` and mknod");
        let _ = Command::new("modprobe").arg("tun").status();
        if !tun.exists() {
            let _ = std::fs::create_dir_all("/dev/net");
            let _ = Command::new("mknod").args(["/dev/net/tun", "c", "10", "200"]).status();
        }
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(tun)
        .context("/dev/net/tun cannot be opened read-write (load the `tun` module / allow the device)")?;
    println!("prereq: root, iproute2, /dev/net/tun ok");
    Ok(())
}

/// `qemu-nbd` and `qemu-io` (Debian's qemu-utils) for the storage tests, demo and bench.
pub fn ensure_qemu_utils() -> Result<()> {
    if have_program("qemu-nbd") && have_program("qemu-io") {
        return Ok(());
    }
    println!("prereq: qemu-nbd/qemu-io (qemu-utils) missing");
    if is_debian() && allow_install() {
        apt_update()?;
        apt_get(&["install", "-y", "qemu-utils"])?;
    }
    if !have_program("qemu-nbd") {
        bail!("`qemu-nbd` not found: the storage tests need a real NBD server (apt-get install -y qemu-utils)");
    }
    Ok(())
}

/// Whether QEMU lists the `pa` (PulseAudio) audio driver (`-audiodev help`).
fn qemu_has_pa() -> bool {
    Command::new(QEMU)
        .args(["-audiodev", "help"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l.trim() == "pa"))
}

/// `pulseaudio` (Debian's pulseaudio) for the media capture test's private sound server, and
/// QEMU's `pa` audio driver (Debian ships it in qemu-system-gui, a recommendation of
/// qemu-system-x86 that a no-recommends install lacks: installed at QEMU's exact version).
pub fn ensure_pulseaudio() -> Result<()> {
    if have_program("pulseaudio") && qemu_has_pa() {
        return Ok(());
    }
    if !have_program("pulseaudio") {
        println!("prereq: pulseaudio missing");
        if is_debian() && allow_install() {
            apt_update()?;
            apt_get(&["install", "-y", "--no-install-recommends", "pulseaudio"])?;
        }
        if !have_program("pulseaudio") {
            bail!("`pulseaudio` not found: the media capture test needs it (apt-get install -y pulseaudio)");
        }
    }
    if !qemu_has_pa() {
        println!("prereq: QEMU has no `pa` audio driver (qemu-system-gui missing)");
        let version = util::output(Command::new("dpkg-query").args(["-W", "-f=${Version}", "qemu-system-x86"])).unwrap_or_default();
        if is_debian() && allow_install() && !version.trim().is_empty() {
            apt_update()?;
            apt_get(&["install", "-y", "--no-install-recommends", &format!("qemu-system-gui={}", version.trim())])?;
        }
        if !qemu_has_pa() {
            bail!("`{QEMU} -audiodev help` lists no `pa` driver: the media capture test needs it (Debian: apt-get install qemu-system-gui)");
        }
    }
    Ok(())
}

/// Make sure the Rust target for the images is installed.
pub fn ensure_rust_target() -> Result<()> {
    let root = project_root();
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(&root)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l.trim() == IMAGE_TARGET));
    let in_sysroot = || {
        Command::new("rustc")
            .args(["--print", "sysroot"])
            .current_dir(&root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| {
                Path::new(String::from_utf8_lossy(&o.stdout).trim())
                    .join("lib/rustlib")
                    .join(IMAGE_TARGET)
                    .is_dir()
            })
            .unwrap_or(false)
    };
    if installed == Some(true) || in_sysroot() {
        return Ok(());
    }
    println!("prereq: Rust target {IMAGE_TARGET} missing, installing");
    let mut c = Command::new("rustup");
    c.args(["target", "add", IMAGE_TARGET]).current_dir(&root);
    util::run(&mut c).with_context(|| format!("install it with: rustup target add {IMAGE_TARGET}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_debian_backports_version() {
        let v = parse_qemu_version(
            "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\nCopyright (c) 2003-2025",
        );
        assert_eq!(v, Some(Version { major: 10, minor: 0, patch: 2 }));
    }

    #[test]
    fn parses_bookworm_and_dev_versions() {
        let old = parse_qemu_version("QEMU emulator version 7.2.15 (Debian 1:7.2+dfsg-7+deb12u12)").unwrap();
        assert!(old < QEMU_MIN);
        let dev = parse_qemu_version("QEMU emulator version 8.2.50 (v8.2.0-1234-gabc)").unwrap();
        assert_eq!(dev, Version { major: 8, minor: 2, patch: 50 });
        assert!(dev >= QEMU_MIN);
        assert_eq!(parse_qemu_version("QEMU emulator version 9.1").unwrap().patch, 0);
        assert!(parse_qemu_version("no version here").is_none());
        assert!(parse_qemu_version("").is_none());
    }

    #[test]
    fn version_order() {
        let v = |a, b, c| Version { major: a, minor: b, patch: c };
        assert!(v(8, 1, 9) < QEMU_MIN);
        assert!(v(8, 2, 0) >= QEMU_MIN);
        assert!(v(10, 0, 0) > v(9, 99, 99));
    }

    #[test]
    fn backports_source_detection() {
        assert!(source_has_backports("deb http://deb.debian.org/debian bookworm-backports main\n"));
        assert!(source_has_backports(
            "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates bookworm-backports\n"
        ));
        assert!(!source_has_backports("# deb http://deb.debian.org/debian bookworm-backports main\n"));
        assert!(!source_has_backports("deb http://deb.debian.org/debian bookworm main\n"));
    }

    #[test]
    fn os_release_fields() {
        let t = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_CODENAME=bookworm\n";
        assert_eq!(os_field(t, "VERSION_CODENAME").as_deref(), Some("bookworm"));
        assert_eq!(os_field(t, "ID"), None);
    }
}
