//! The dom0 side of the harness: Xen (gunzipped for QEMU's multiboot loader), the dom0 kernel, and
//! the dom0 initramfs — busybox, the Xen tools with their shared libraries and the dynamic loader,
//! the Xen kernel modules (in dependency order), `/init` (`images/xen/dom0-init.sh`) and the
//! scenario helpers (`images/xen/xentest-lib.sh`).
//!
//! The base archive is cached under `<target-dir>/xen/` and rebuilt only when its recipe (package
//! files, init scripts) changes; each run appends a small overlay archive (scenario script, xl
//! configs, images) — Linux unpacks concatenated newc archives in order.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};

use super::cpio::Tree;
use super::debs::Sysroot;
use super::elf;
use crate::util::{fmt_bytes, fmt_dur};

/// Bump when the layout below changes in a way the recipe text does not capture.
const RECIPE_VERSION: u32 = 1;

pub const XEN_BIN: &str = "/usr/lib/xen-4.17/bin";
const XEN_GZ: &str = "/boot/xen-4.17-amd64.gz";
const LIB_DIRS: &[&str] = &["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu"];
const LOADER: &str = "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2";

/// Programs from `XEN_BIN` that go into dom0.
pub const XEN_PROGRAMS: &[&str] =
    &["xl", "xenstored", "xenconsoled", "xen-init-dom0", "xenconsole", "xen-hvmctx", "xenctx", "xenstore-control"];

/// Other programs for dom0 and the guests (absolute paths inside the packages).
pub const TOOLS: &[&str] = &["/usr/bin/iperf3"];

/// Libraries loaded at run time without being in any DT_NEEDED list.
const EXTRA_LIBS: &[&str] = &["libgcc_s.so.1"];

/// Kernel modules for dom0 (dependencies are added from `.modinfo`).
pub const MODULES: &[&str] = &[
    "xen-evtchn",
    "xen-privcmd",
    "xenfs",
    "xen-gntdev",
    "xen-gntalloc",
    "xen-netback",
    "xen-blkback",
    "bridge",
];

/// Kernel modules for Linux PV guests.
pub const GUEST_MODULES: &[&str] = &["xen-netfront", "xen-blkfront"];

pub const DOM0_INIT: &str = include_str!("../../../images/xen/dom0-init.sh");
pub const GUEST_INIT: &str = include_str!("../../../images/xen/guest-init.sh");
pub const VIF_HOTPLUG: &str = include_str!("../../../images/xen/vif-hotplug.sh");
pub const XENTEST_LIB: &str = include_str!("../../../images/xen/xentest-lib.sh");

/// What a run boots.
#[derive(Clone, Debug)]
pub struct Dom0 {
    pub xen: PathBuf,
    pub kernel: PathBuf,
    /// Kernel of Linux PV guests (the same Linux, uncompressed when possible).
    pub guest_kernel: PathBuf,
    pub base_initrd: PathBuf,
    /// Base initramfs of Linux PV guests (a scenario appends its `/job.sh`).
    pub guest_initrd: PathBuf,
}

/// Gunzip Xen once, locate the dom0 kernel, build (or reuse) the base initramfs.
pub fn prepare(cache: &Path, sys: &Sysroot) -> Result<Dom0> {
    let boot = cache.join("boot");
    std::fs::create_dir_all(&boot)?;
    let gz = sys.require(XEN_GZ)?;
    let xen_deb = sys.pkgs.iter().find(|p| gz.starts_with(&p.dir)).map(|p| p.deb.clone()).unwrap_or_default();
    let xen = boot.join("xen-4.17-amd64");
    let xen_stamp = boot.join("xen.stamp");
    if !xen.is_file() || std::fs::read_to_string(&xen_stamp).ok().as_deref() != Some(xen_deb.as_str()) {
        let mut c = std::process::Command::new("gzip");
        c.arg("-dc").arg(&gz);
        let out = c.output().context("running gzip -dc (gzip is needed to unpack Xen)")?;
        ensure!(out.status.success(), "gzip -dc {} failed", gz.display());
        std::fs::write(&xen, &out.stdout)?;
        std::fs::write(&xen_stamp, &xen_deb)?;
        println!("xen: gunzipped {} -> {} ({})", gz.display(), xen.display(), fmt_bytes(out.stdout.len() as u64));
    }
    let kernel = sys.require(&format!("/boot/vmlinuz-{}", sys.kernel_release()))?;
    let guest_kernel = match guest_vmlinux(&boot, &kernel) {
        Ok(k) => k,
        Err(e) => {
            println!("xen: Linux guests get the compressed kernel ({e:#})");
            kernel.clone()
        }
    };

    let base_initrd = cached_archive(cache, "dom0-base", &recipe(sys, "dom0"), || base_tree(sys))?;
    let guest_initrd = cached_archive(cache, "guest-base", &recipe(sys, "guest"), || guest_tree(sys))?;
    Ok(Dom0 { xen, kernel, guest_kernel, base_initrd, guest_initrd })
}

/// The kernel for Linux PV guests, uncompressed: the ELF inside the bzImage's XZ payload
/// (cached as `boot/vmlinux-guest`). `xl` then loads it as is: decompressing the 8 MB bzImage in
/// dom0 under nested TCG took ~10 s of every `xl create` and now and then failed ("unable to XZ
/// decompress kernel: Invalid kernel").
fn guest_vmlinux(boot: &Path, bzimage: &Path) -> Result<PathBuf> {
    let out = boot.join("vmlinux-guest");
    let stamp = boot.join("vmlinux-guest.stamp");
    let id = format!("{} {}", bzimage.display(), std::fs::metadata(bzimage)?.len());
    if out.is_file() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(id.as_str()) {
        return Ok(out);
    }
    let data = std::fs::read(bzimage)?;
    let at = data.windows(6).position(|w| w == b"\xfd7zXZ\x00").context("no XZ stream in the bzImage")?;
    let mut child = std::process::Command::new("xz")
        .args(["-dc", "-q"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("running xz (needed to unpack the guest kernel)")?;
    let mut stdin = child.stdin.take().context("xz stdin")?;
    let payload = data[at..].to_vec();
    let feeder = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &payload));
    let elf = child.wait_with_output()?.stdout;
    // xz exits non-zero on the bytes after the stream (the bzImage's trailer): judge the output.
    let _ = feeder.join();
    ensure!(elf.len() > 1 << 20 && elf.starts_with(b"\x7fELF"), "the XZ payload is not an ELF kernel ({} bytes)", elf.len());
    let tmp = boot.join("vmlinux-guest.tmp");
    std::fs::write(&tmp, &elf)?;
    std::fs::rename(&tmp, &out)?;
    std::fs::write(&stamp, id)?;
    println!("xen: unpacked the guest kernel {} ({})", out.display(), fmt_bytes(elf.len() as u64));
    Ok(out)
}

/// `<cache>/<name>.cpio`, rebuilt by `build` only when `recipe` differs from the stored stamp.
fn cached_archive(cache: &Path, name: &str, recipe: &str, build: impl FnOnce() -> Result<Tree>) -> Result<PathBuf> {
    let out = cache.join(format!("{name}.cpio"));
    let stamp = cache.join(format!("{name}.stamp"));
    if out.is_file() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(recipe) {
        println!("xen: {name} initramfs cached: {} ({})", out.display(), fmt_bytes(std::fs::metadata(&out)?.len()));
        return Ok(out);
    }
    let t = Instant::now();
    let tree = build()?;
    let tmp = cache.join(format!("{name}.cpio.tmp"));
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    let n = tree.write(&mut f)?;
    std::io::Write::flush(&mut f)?;
    drop(f);
    std::fs::rename(&tmp, &out)?;
    std::fs::write(&stamp, recipe)?;
    println!("xen: built {name} initramfs {} ({} entries, {}) in {}", out.display(), tree.len(), fmt_bytes(n), fmt_dur(t.elapsed()));
    Ok(out)
}

fn recipe(sys: &Sysroot, which: &str) -> String {
    let mut s = format!("recipe {RECIPE_VERSION} {which}\n");
    for p in &sys.pkgs {
        s.push_str(&p.deb);
        s.push('\n');
    }
    s.push_str(&format!("programs {XEN_PROGRAMS:?} {TOOLS:?}\nmodules {MODULES:?} {GUEST_MODULES:?}\nlibs {EXTRA_LIBS:?}\n"));
    for part in [DOM0_INIT, GUEST_INIT, VIF_HOTPLUG, XENTEST_LIB] {
        s.push_str(part);
    }
    s
}

/// Follow symlinks inside the sysroot until a regular file: (final absolute path, host path).
fn resolve_in(sys: &Sysroot, path: &str) -> Result<(String, PathBuf)> {
    let mut p = path.to_string();
    for _ in 0..16 {
        let host = sys.require(&p)?;
        let md = host.symlink_metadata()?;
        if !md.file_type().is_symlink() {
            return Ok((p, host));
        }
        let target = std::fs::read_link(&host)?.to_string_lossy().into_owned();
        p = if target.starts_with('/') {
            target
        } else {
            let parent = Path::new(&p).parent().context("symlink at /")?;
            normalise(&format!("{}/{target}", parent.display()))
        };
    }
    bail!("too many symlinks resolving {path}")
}

fn normalise(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    format!("/{}", out.join("/"))
}

fn find_lib(sys: &Sysroot, soname: &str) -> Result<PathBuf> {
    for d in LIB_DIRS {
        let p = format!("{d}/{soname}");
        if sys.find(&p).is_some() {
            return Ok(resolve_in(sys, &p)?.1);
        }
    }
    bail!("shared library {soname} is in none of the unpacked packages (looked in {LIB_DIRS:?})")
}

/// Add programs and the closure of their DT_NEEDED libraries (all under /lib/x86_64-linux-gnu).
fn add_programs(tree: &mut Tree, sys: &Sysroot, programs: &[(String, PathBuf)]) -> Result<usize> {
    let mut libs: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut todo: Vec<String> = EXTRA_LIBS.iter().map(|s| s.to_string()).collect();
    for (dst, src) in programs {
        tree.host_file(dst, 0o755, src)?;
        let b = std::fs::read(src)?;
        todo.extend(elf::needed_libs(&b).with_context(|| format!("reading {}", src.display()))?);
    }
    while let Some(so) = todo.pop() {
        if libs.contains_key(&so) {
            continue;
        }
        let host = find_lib(sys, &so)?;
        let b = std::fs::read(&host)?;
        todo.extend(elf::needed_libs(&b).with_context(|| format!("reading {}", host.display()))?);
        libs.insert(so, host);
    }
    for (so, host) in &libs {
        tree.host_file(&format!("/lib/x86_64-linux-gnu/{so}"), 0o755, host)?;
    }
    let (_, loader) = resolve_in(sys, LOADER)?;
    tree.host_file(LOADER, 0o755, loader)?;
    tree.symlink("/lib64/ld-linux-x86-64.so.2", LOADER)?;
    Ok(libs.len())
}

/// Kernel modules in load order (dependencies first): (module file name, host path).
pub fn modules_in_order(sys: &Sysroot, wanted: &[&str]) -> Result<Vec<(String, PathBuf)>> {
    let root = sys.require(&format!("/lib/modules/{}/kernel", sys.kernel_release()))?;
    let mut by_name: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut stack = vec![root];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let p = e.path();
            if e.file_type()?.is_dir() {
                stack.push(p);
            } else if let Some(n) = p.file_name().and_then(|n| n.to_str())
                && n.ends_with(".ko")
            {
                by_name.insert(elf::module_name(n), p);
            }
        }
    }
    let mut order = Vec::new();
    let mut done = BTreeSet::new();
    fn visit(
        m: &str,
        by_name: &BTreeMap<String, PathBuf>,
        done: &mut BTreeSet<String>,
        order: &mut Vec<(String, PathBuf)>,
        depth: u32,
    ) -> Result<()> {
        let key = elf::module_name(m);
        if done.contains(&key) {
            return Ok(());
        }
        ensure!(depth < 32, "module dependency loop at {m}");
        let path = by_name.get(&key).with_context(|| format!("kernel module {m} not found in the kernel package"))?;
        let deps = elf::module_depends(&std::fs::read(path)?).with_context(|| format!("reading {}", path.display()))?;
        for d in deps {
            visit(&d, by_name, done, order, depth + 1)?;
        }
        done.insert(key);
        let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        order.push((file, path.clone()));
        Ok(())
    }
    for m in wanted {
        visit(m, &by_name, &mut done, &mut order, 0)?;
    }
    Ok(order)
}

/// busybox, /init, the scenario helpers and the basic /etc files.
fn common_tree(sys: &Sysroot, init: &str, hostname: &str) -> Result<Tree> {
    let mut t = Tree::new();
    for d in ["/bin", "/sbin", "/usr/bin", "/usr/sbin", "/proc", "/sys", "/dev", "/run", "/tmp", "/var", "/root", "/mnt"] {
        t.dir(d)?;
    }
    t.host_file("/bin/busybox", 0o755, resolve_in(sys, "/bin/busybox")?.1)?;
    t.file("/init", 0o755, init.as_bytes().to_vec())?;
    t.file("/etc/xentest/lib.sh", 0o644, XENTEST_LIB.as_bytes().to_vec())?;
    t.file("/etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n".to_vec())?;
    t.file("/etc/group", 0o644, b"root:x:0:\n".to_vec())?;
    t.file("/etc/hostname", 0o644, format!("{hostname}\n").into_bytes())?;
    Ok(t)
}

/// Kernel modules (with dependencies) under /lib/modules and their load order in
/// /etc/xentest/modules. Returns their names.
fn add_modules(t: &mut Tree, sys: &Sysroot, wanted: &[&str]) -> Result<Vec<String>> {
    let mods = modules_in_order(sys, wanted)?;
    let mut list = String::new();
    for (file, host) in &mods {
        t.host_file(&format!("/lib/modules/{file}"), 0o644, host)?;
        list.push_str(file);
        list.push('\n');
    }
    t.file("/etc/xentest/modules", 0o644, list.into_bytes())?;
    Ok(mods.iter().map(|m| m.0.trim_end_matches(".ko").to_string()).collect())
}

/// The Linux PV guest's initramfs: busybox, the Xen frontends, xenstore-utils.
fn guest_tree(sys: &Sysroot) -> Result<Tree> {
    let mut t = common_tree(sys, GUEST_INIT, "guest")?;
    let mut programs = xenstore_utils(sys)?;
    programs.extend(tools(sys)?);
    let nlibs = add_programs(&mut t, sys, &programs)?;
    let mods = add_modules(&mut t, sys, GUEST_MODULES)?;
    println!(
        "xen: guest initramfs: busybox, {} programs, {nlibs} libraries + loader, {} modules ({})",
        programs.len(),
        mods.len(),
        mods.join(" ")
    );
    Ok(t)
}

fn tools(sys: &Sysroot) -> Result<Vec<(String, PathBuf)>> {
    TOOLS.iter().map(|p| Ok((p.to_string(), resolve_in(sys, p)?.1))).collect()
}

/// xenstore-read/-write/-ls/... from xenstore-utils (ELF programs only).
fn xenstore_utils(sys: &Sysroot) -> Result<Vec<(String, PathBuf)>> {
    let mut programs = Vec::new();
    let xs_dir = sys.package_dir("xenstore-utils")?.join("usr/bin");
    let mut xs: Vec<_> = std::fs::read_dir(&xs_dir)
        .with_context(|| format!("reading {}", xs_dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    xs.sort();
    for name in xs {
        let path = format!("/usr/bin/{name}");
        let host = resolve_in(sys, &path)?.1;
        // Some names are symlinks to Debian's version-dispatch shell wrapper: skip those.
        if std::fs::read(&host)?.starts_with(b"\x7fELF") {
            programs.push((path, host));
        }
    }
    Ok(programs)
}

fn base_tree(sys: &Sysroot) -> Result<Tree> {
    let mut t = common_tree(sys, DOM0_INIT, "dom0")?;
    t.file("/etc/xentest/vif-hotplug.sh", 0o755, VIF_HOTPLUG.as_bytes().to_vec())?;
    if let Some(xl_conf) = sys.find("/etc/xen/xl.conf") {
        t.host_file("/etc/xen/xl.conf", 0o644, xl_conf)?;
    }
    let mut programs = Vec::new();
    for p in XEN_PROGRAMS {
        let path = format!("{XEN_BIN}/{p}");
        programs.push((path.clone(), resolve_in(sys, &path)?.1));
    }
    programs.extend(xenstore_utils(sys)?);
    programs.extend(tools(sys)?);
    let nlibs = add_programs(&mut t, sys, &programs)?;
    let mods = add_modules(&mut t, sys, MODULES)?;
    println!(
        "xen: dom0 initramfs: busybox, {} programs, {nlibs} libraries + loader, {} modules ({})",
        programs.len(),
        mods.len(),
        mods.join(" ")
    );
    Ok(t)
}

/// Write `out` = base archive + overlay archive. Returns its size.
pub fn write_initrd(base: &Path, overlay: &Tree, out: &Path) -> Result<u64> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?);
    let mut b = std::fs::File::open(base).with_context(|| format!("opening {}", base.display()))?;
    let mut n = std::io::copy(&mut b, &mut f)?;
    n += overlay.write(&mut f)?;
    std::io::Write::flush(&mut f)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_normalisation() {
        assert_eq!(normalise("/lib64/../lib/x86_64-linux-gnu/./ld.so"), "/lib/x86_64-linux-gnu/ld.so");
        assert_eq!(normalise("/a/b/../../.."), "/");
    }

    #[test]
    fn init_script_shape() {
        // The init must be a script the kernel can exec, end with a forced power-off, and run the
        // scenario; a scenario that never returns is cut by the host timeout.
        assert!(DOM0_INIT.starts_with("#!/bin/busybox sh\n"));
        for needle in ["mount -t xenfs", "xenstored", "xen-init-dom0", "xenconsoled", "/scenario.sh", "poweroff -f"] {
            assert!(DOM0_INIT.contains(needle), "dom0 init lacks `{needle}`");
        }
        assert!(XENTEST_LIB.contains("XENTEST-RESULT"));
        for needle in ["/job.sh", "poweroff -f", "/etc/xentest/modules"] {
            assert!(GUEST_INIT.contains(needle), "guest init lacks `{needle}`");
        }
        assert!(VIF_HOTPLUG.contains("hotplug-status") && VIF_HOTPLUG.contains("connected"));
    }
}
