//! The image table and the image build (`cargo xtask build`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{Context, Result, bail};

use crate::prereq::{self, IMAGE_TARGET};
use crate::util::{self, fmt_bytes};

/// Which QEMU devices an image gets by default under `cargo xtask run`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Devices {
    /// Nothing but the console and the exit device.
    None,
    /// A modern virtio-net-pci NIC on a user-mode netdev with a host port forward to guest TCP 7.
    NetUser,
}

/// One bootable image.
pub struct Image {
    /// Name used on the command line and for `<target-dir>/images/<name>.elf`.
    pub name: &'static str,
    /// Cargo package (its single bin target is the image).
    pub package: &'static str,
    pub devices: Devices,
    /// Kernel command line used by `run` when none is given.
    pub default_append: &'static str,
}

/// Every image of the project: one line per image.
pub const IMAGES: &[Image] = &[
    Image {
        name: "net-dd",
        package: "net-dd",
        devices: Devices::NetUser,
        default_append: "ip=10.0.2.15/24 gw=10.0.2.2 echo_port=7",
    },
    // ktest's `cmdline_reaches_image` test expects `ktest-arg=42`.
    Image { name: "ktest", package: "ktest", devices: Devices::None, default_append: "ktest-arg=42" },
    // Needs an ivshmem-doorbell channel (tools/ivshmem-server): the QEMU tier boots it in pairs
    // (role=a, role=b), see `chan.rs`.
    Image { name: "chan-test", package: "chan-test", devices: Devices::None, default_append: "role=a" },
    // A guest VM: one ivshmem-doorbell channel to net-dd (or `nic=virtio`: a virtio-net NIC of
    // its own) and a workload (`work=`); see guests/net-guest.
    Image {
        name: "net-guest",
        package: "net-guest",
        devices: Devices::None,
        default_append: "ip=10.0.2.20/24 gw=10.0.2.2 mac=52:54:00:12:34:20 name=g0 work=serve",
    },
    // The storage driver domain: a virtio-blk disk, a virtio-net NIC for nbd:// volumes, one guest
    // per ivshmem-doorbell device; see driver-domains/blk and xtask/src/blk.rs (which gives it
    // its devices and `vol=` tokens). Alone (`cargo xtask run blk-dd`) it serves no volume.
    Image { name: "blk-dd", package: "blk-dd", devices: Devices::None, default_append: "" },
    // A storage guest: one channel to blk-dd (or `disk=virtio`) and a workload; see guests/blk-guest.
    Image { name: "blk-guest", package: "blk-guest", devices: Devices::None, default_append: "name=g1 vol=v1 work=verify" },
    // The multimedia driver domain: a virtio-sound device, one guest per ivshmem-doorbell device;
    // xtask/src/media.rs gives it its devices (QEMU's wav audiodev).
    Image { name: "media-dd", package: "media-dd", devices: Devices::None, default_append: "" },
    // A sound guest: one channel to media-dd, plays a tone; see guests/snd-guest.
    Image { name: "snd-guest", package: "snd-guest", devices: Devices::None, default_append: "name=g1 play=sine:440:48000:s16:2 secs=3" },
];

/// Images must stay within 1 MiB.
pub const MAX_IMAGE_BYTES: u64 = 1 << 20;

pub fn find(name: &str) -> Result<&'static Image> {
    IMAGES.iter().find(|i| i.name == name).with_context(|| {
        let names: Vec<_> = IMAGES.iter().map(|i| i.name).collect();
        format!("unknown image `{name}` (known: {})", names.join(", "))
    })
}

#[derive(Debug, Clone)]
pub struct Built {
    pub name: &'static str,
    pub path: PathBuf,
    pub file_bytes: u64,
    pub elf: ElfInfo,
}

/// `cargo xtask build [images...]`.
pub fn build_cmd(names: &[String]) -> Result<Vec<Built>> {
    let images: Vec<&Image> = if names.is_empty() {
        IMAGES.iter().collect()
    } else {
        names.iter().map(|n| find(n)).collect::<Result<_>>()?
    };
    build(&images)
}

/// Build the given images (one cargo invocation), copy them to `<target>/images/<name>.elf`,
/// print their sizes, fail if one is over [`MAX_IMAGE_BYTES`] or lacks the PVH entry note.
pub fn build(images: &[&Image]) -> Result<Vec<Built>> {
    prereq::ensure_rust_target()?;
    let mut cmd = util::cargo();
    cmd.args(["build", "--target", IMAGE_TARGET, "--profile", "image", "--message-format=json-render-diagnostics"]);
    for i in images {
        cmd.args(["-p", i.package]);
    }
    eprintln!("$ {}", util::show(&cmd));
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo build")?;
    let artifacts = parse_artifacts(&String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        bail!("building the images failed");
    }
    let dir = util::target_dir()?.join("images");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut built = Vec::new();
    let mut too_big = Vec::new();
    println!("{:<10} {:>11} {:>11}  path", "image", "file", "loaded");
    for i in images {
        let src = artifacts
            .get(i.package)
            .with_context(|| format!("cargo produced no executable for package `{}`", i.package))?;
        let dst = dir.join(format!("{}.elf", i.name));
        std::fs::copy(src, &dst).with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
        let bytes = std::fs::read(&dst)?;
        let elf = parse_elf(&bytes).with_context(|| format!("{} is not a usable ELF64 image", dst.display()))?;
        let file_bytes = bytes.len() as u64;
        println!(
            "{:<10} {:>11} {:>11}  {}",
            i.name,
            fmt_bytes(file_bytes),
            fmt_bytes(elf.load_bytes),
            dst.display()
        );
        if file_bytes > MAX_IMAGE_BYTES {
            too_big.push(format!("{} is {} (> 1 MiB)", i.name, fmt_bytes(file_bytes)));
        }
        if elf.pvh_entry.is_none() {
            bail!("{} has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); QEMU cannot boot it", i.name);
        }
        built.push(Built { name: i.name, path: dst, file_bytes, elf });
    }
    if !too_big.is_empty() {
        bail!("image size limit exceeded: {}", too_big.join("; "));
    }
    Ok(built)
}

/// Map package name -> executable from cargo's JSON messages.
fn parse_artifacts(json_lines: &str) -> BTreeMap<String, PathBuf> {
    let mut map = BTreeMap::new();
    for line in json_lines.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if v["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(exe) = v["executable"].as_str() else { continue };
        // package_id looks like "path+file:///work/main/driver-domains/net#net-dd@0.1.0"; the
        // target name is the bin name, the manifest's package is what we key on.
        let pkg = v["package_id"]
            .as_str()
            .and_then(package_name_from_id)
            .or_else(|| v["target"]["name"].as_str().map(str::to_string));
        if let Some(pkg) = pkg {
            map.insert(pkg, PathBuf::from(exe));
        }
    }
    map
}

/// Package name from a cargo package id (`path+file:///x/net#net-dd@0.1.0` or `.../ktest#0.1.0`).
fn package_name_from_id(id: &str) -> Option<String> {
    let frag = id.rsplit_once('#')?.1;
    match frag.split_once('@') {
        Some((name, _)) => Some(name.to_string()),
        // `.../ktest#0.1.0`: the name is the last path component.
        None => id.rsplit_once('#')?.0.rsplit('/').next().map(str::to_string),
    }
}

/// What xtask wants to know about an image ELF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfInfo {
    /// Sum of PT_LOAD memory sizes.
    pub load_bytes: u64,
    /// 32-bit PVH entry from the Xen ELF note type 18, if present.
    pub pvh_entry: Option<u64>,
}

/// The value of symbol `name` in an ELF64 little-endian file's `.symtab`, if present.
pub fn symbol(b: &[u8], name: &str) -> Option<u64> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(b.get(o..o.checked_add(2)?)?.try_into().ok()?) as usize);
    let u32_at = |o: usize| Some(u32::from_le_bytes(b.get(o..o.checked_add(4)?)?.try_into().ok()?) as usize);
    let u64_at = |o: usize| Some(u64::from_le_bytes(b.get(o..o.checked_add(8)?)?.try_into().ok()?));
    if b.get(..4) != Some(b"\x7fELF") {
        return None;
    }
    let shoff = u64_at(0x28)? as usize;
    let (shentsize, shnum) = (u16_at(0x3a)?, u16_at(0x3c)?);
    let section = |i: usize| shoff.checked_add(i.checked_mul(shentsize)?);
    for i in 0..shnum {
        let sh = section(i)?;
        if u32_at(sh + 4)? != 2 {
            continue; // not SHT_SYMTAB
        }
        let (off, size) = (u64_at(sh + 0x18)? as usize, u64_at(sh + 0x20)? as usize);
        let strtab = section(u32_at(sh + 0x28)?)?;
        let str_off = u64_at(strtab + 0x18)? as usize;
        for sym in (off..off.checked_add(size)?).step_by(24) {
            let name_at = str_off.checked_add(u32_at(sym)?)?;
            let tail = b.get(name_at..)?;
            let end = tail.iter().position(|&c| c == 0)?;
            if &tail[..end] == name.as_bytes() {
                return u64_at(sym + 8);
            }
        }
    }
    None
}

/// Minimal ELF64 little-endian parser: PT_LOAD sizes and the Xen PHYS32_ENTRY note.
pub fn parse_elf(b: &[u8]) -> Result<ElfInfo> {
    let u16_at = |o: usize| -> Result<u64> {
        Ok(u16::from_le_bytes(b.get(o..o.saturating_add(2)).context("truncated")?.try_into()?) as u64)
    };
    let u32_at = |o: usize| -> Result<u64> {
        Ok(u32::from_le_bytes(b.get(o..o.saturating_add(4)).context("truncated")?.try_into()?) as u64)
    };
    let u64_at = |o: usize| -> Result<u64> { Ok(u64::from_le_bytes(b.get(o..o.saturating_add(8)).context("truncated")?.try_into()?)) };
    if b.get(..4) != Some(b"\x7fELF") || b.get(4) != Some(&2) || b.get(5) != Some(&1) {
        bail!("not an ELF64 little-endian file");
    }
    let phoff = u64_at(0x20)? as usize;
    let phentsize = u16_at(0x36)? as usize;
    let phnum = u16_at(0x38)? as usize;
    let mut load_bytes = 0;
    let mut pvh_entry = None;
    for i in 0..phnum {
        let ph = phoff.saturating_add(i.saturating_mul(phentsize));
        let p_type = u32_at(ph)?;
        let p_offset = u64_at(ph.saturating_add(8))? as usize;
        let p_filesz = u64_at(ph.saturating_add(32))? as usize;
        let p_memsz = u64_at(ph.saturating_add(40))?;
        match p_type {
            1 => load_bytes += p_memsz,
            4 => {
                // Notes: namesz, descsz, type, name (4-aligned), desc (4-aligned).
                let mut o = p_offset;
                let end = p_offset.checked_add(p_filesz).context("bad note size")?;
                while o.saturating_add(12) <= end {
                    let namesz = u32_at(o)? as usize;
                    let descsz = u32_at(o.saturating_add(4))? as usize;
                    let ntype = u32_at(o.saturating_add(8))?;
                    let name_off = o.saturating_add(12);
                    let desc_off = name_off.saturating_add(namesz.saturating_add(3) & !3);
                    let name = b.get(name_off..name_off.saturating_add(namesz)).context("truncated note")?;
                    if name.strip_suffix(b"\0").unwrap_or(name) == b"Xen" && ntype == 18 {
                        pvh_entry = Some(match descsz {
                            8 => u64_at(desc_off)?,
                            _ => u32_at(desc_off)?,
                        });
                    }
                    o = desc_off.saturating_add(descsz.saturating_add(3) & !3);
                }
            }
            _ => {}
        }
    }
    Ok(ElfInfo { load_bytes, pvh_entry })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_table_is_consistent() {
        let mut names: Vec<_> = IMAGES.iter().map(|i| i.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), IMAGES.len(), "duplicate image names");
        assert!(find("net-dd").is_ok());
        assert!(find("nope").is_err());
    }

    #[test]
    fn package_ids() {
        assert_eq!(package_name_from_id("path+file:///work/main/driver-domains/net#net-dd@0.1.0").as_deref(), Some("net-dd"));
        assert_eq!(package_name_from_id("path+file:///work/main/tests/ktest#0.1.0").as_deref(), Some("ktest"));
    }

    #[test]
    fn artifacts_from_cargo_json() {
        let json = r#"{"reason":"compiler-artifact","package_id":"path+file:///w/tests/ktest#0.1.0","target":{"name":"ktest"},"executable":"/t/x86_64-unknown-none/image/ktest"}
{"reason":"compiler-artifact","package_id":"registry+https://github.com/rust-lang/crates.io-index#log@0.4.35","target":{"name":"log"},"executable":null}
{"reason":"build-finished","success":true}"#;
        let m = parse_artifacts(json);
        assert_eq!(m.len(), 1);
        assert_eq!(m["ktest"], PathBuf::from("/t/x86_64-unknown-none/image/ktest"));
    }

    /// Build a tiny ELF64 with one PT_LOAD and one PT_NOTE carrying a Xen type-18 note.
    fn tiny_elf(with_note: bool) -> Vec<u8> {
        let mut b = vec![0u8; 0x40];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes()); // phoff
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes());
        let note_off = 0x40 + 2 * 56;
        let mut ph = |t: u32, off: u64, filesz: u64, memsz: u64| {
            let mut p = vec![0u8; 56];
            p[0..4].copy_from_slice(&t.to_le_bytes());
            p[8..16].copy_from_slice(&off.to_le_bytes());
            p[32..40].copy_from_slice(&filesz.to_le_bytes());
            p[40..48].copy_from_slice(&memsz.to_le_bytes());
            b.extend(p);
        };
        ph(1, 0, 0x100, 0x3000);
        ph(4, note_off as u64, 20, 20);
        let mut note = Vec::new();
        note.extend(4u32.to_le_bytes());
        note.extend(4u32.to_le_bytes());
        note.extend((if with_note { 18u32 } else { 17 }).to_le_bytes());
        note.extend(b"Xen\0");
        note.extend(0x10_0000u32.to_le_bytes());
        b.extend(note);
        b
    }

    #[test]
    fn elf_pvh_note_and_load_size() {
        let info = parse_elf(&tiny_elf(true)).unwrap();
        assert_eq!(info, ElfInfo { load_bytes: 0x3000, pvh_entry: Some(0x10_0000) });
        assert_eq!(parse_elf(&tiny_elf(false)).unwrap().pvh_entry, None);
    }

    #[test]
    fn elf_rejects_garbage_without_panicking() {
        assert!(parse_elf(b"hello").is_err());
        let mut t = tiny_elf(true);
        t.truncate(0x50);
        assert!(parse_elf(&t).is_err());
        // hostile header: huge phnum
        let mut t = tiny_elf(true);
        t[0x38..0x3a].copy_from_slice(&0xffffu16.to_le_bytes());
        assert!(parse_elf(&t).is_err());
    }
}
