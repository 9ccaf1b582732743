//! Debian packages for the nested Xen harness, fetched with `apt-get download` and unpacked with
//! `dpkg -x` into `<target-dir>/xen/` — nothing is installed on the host.
//!
//! The package set is the roots in [`ROOTS`] (plus the versioned kernel image package that
//! `linux-image-amd64` depends on) and the closure of their library dependencies (`lib*`, `zlib*`)
//! from `apt-cache depends`. Downloads are cached by `.deb` file name and unpacked trees by the same
//! name, so a second run needs no network: resolution only reads the local apt lists.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, ensure};

use crate::util::{self, fmt_bytes, fmt_dur};

/// Packages the harness needs directly (their `lib*` dependencies are added automatically).
pub const ROOTS: &[&str] = &[
    "xen-hypervisor-4.17-amd64",
    "xen-utils-4.17",
    "xen-utils-common",
    "xenstore-utils",
    "busybox-static",
    // Traffic tool for guests and dom0 (throughput figures; the transfers are the assertion).
    "iperf3",
    // xl needs libgcc_s.so.1 at run time (pthread_cancel) although it is not in its DT_NEEDED.
    "libgcc-s1",
];

/// The meta package whose dependency names the versioned kernel image package.
pub const KERNEL_META: &str = "linux-image-amd64";

/// One unpacked package.
#[derive(Clone, Debug)]
pub struct Unpacked {
    pub package: String,
    pub deb: String,
    pub dir: PathBuf,
}

/// The union of the unpacked packages, searched in order.
#[derive(Clone, Debug)]
pub struct Sysroot {
    pub pkgs: Vec<Unpacked>,
    /// The versioned kernel image package, e.g. `linux-image-6.1.0-56-amd64`.
    pub kernel_package: String,
}

impl Sysroot {
    /// The first unpacked package holding `path` (absolute inside the package, e.g.
    /// `/usr/lib/xen-4.17/bin/xl`), as a host path. Symlinks count (they may be dangling here).
    pub fn find(&self, path: &str) -> Option<PathBuf> {
        let rel = path.trim_start_matches('/');
        self.pkgs.iter().map(|p| p.dir.join(rel)).find(|p| p.symlink_metadata().is_ok())
    }

    pub fn require(&self, path: &str) -> Result<PathBuf> {
        self.find(path).with_context(|| format!("no unpacked package contains {path}"))
    }

    pub fn package_dir(&self, package: &str) -> Result<&Path> {
        self.pkgs
            .iter()
            .find(|p| p.package == package)
            .map(|p| p.dir.as_path())
            .with_context(|| format!("package {package} was not unpacked"))
    }

    /// The kernel release (`6.1.0-56-amd64`) from the kernel package name.
    pub fn kernel_release(&self) -> &str {
        self.kernel_package.trim_start_matches("linux-image-")
    }
}

fn apt(program: &str) -> Command {
    let mut c = Command::new(program);
    // Downloads land in a root-owned cache dir: do not drop to the _apt user for them.
    c.args(["-o", "APT::Sandbox::User=root"]);
    c
}

/// `apt-cache depends` (hard dependencies only) of several packages at once:
/// package -> its `Depends:` (real package names; the first of each `|` group).
fn depends(pkgs: &[String]) -> Result<BTreeMap<String, Vec<String>>> {
    let mut c = Command::new("apt-cache");
    c.args(["depends", "--no-recommends", "--no-suggests", "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances"]);
    c.args(pkgs);
    let out = util::output(&mut c)?;
    Ok(parse_depends(&out))
}

/// Parse `apt-cache depends` output.
pub fn parse_depends(out: &str) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut cur: Option<String> = None;
    let mut in_group = false;
    for line in out.lines() {
        if !line.starts_with(' ') {
            let name = line.trim().to_string();
            map.entry(name.clone()).or_default();
            cur = Some(name);
            in_group = false;
            continue;
        }
        let Some(cur) = &cur else { continue };
        let t = line.trim_start();
        let (alt, rest) = match t.strip_prefix('|') {
            Some(r) => (true, r),
            None => (false, t),
        };
        let Some(dep) = rest.strip_prefix("Depends: ").or_else(|| rest.strip_prefix("PreDepends: ")) else {
            continue;
        };
        let dep = dep.trim();
        // ` |Depends: A` is OR'ed with the next line: take the first member of each group.
        let first = !in_group;
        in_group = alt;
        if !first || dep.starts_with('<') {
            continue;
        }
        let dep = dep.split(':').next().unwrap_or(dep).to_string();
        map.get_mut(cur).expect("current package").push(dep);
    }
    map
}

fn is_library(pkg: &str) -> bool {
    pkg.starts_with("lib") || pkg.starts_with("zlib")
}

/// Roots + versioned kernel + library closure. Runs `apt-get update` once if the lists lack a root.
fn resolve() -> Result<(Vec<String>, String)> {
    let meta = match depends(&[KERNEL_META.to_string()]) {
        Ok(m) => m,
        Err(e) => {
            println!("xen: apt-cache does not know {KERNEL_META} ({e:#}); running apt-get update");
            util::run(apt("apt-get").arg("update"))?;
            depends(&[KERNEL_META.to_string()])?
        }
    };
    let kernel = meta
        .get(KERNEL_META)
        .and_then(|d| d.iter().find(|p| p.starts_with("linux-image-") && p.ends_with("-amd64")))
        .cloned()
        .with_context(|| format!("{KERNEL_META} depends on no versioned linux-image-*-amd64 package"))?;
    let mut all: BTreeSet<String> = ROOTS.iter().map(|s| s.to_string()).collect();
    all.insert(kernel.clone());
    let mut frontier: Vec<String> = all.iter().cloned().collect();
    while !frontier.is_empty() {
        let deps = depends(&frontier)?;
        for r in &frontier {
            ensure!(deps.contains_key(r), "apt-cache does not know package {r}");
        }
        frontier = deps
            .values()
            .flatten()
            .filter(|d| is_library(d) && !all.contains(*d))
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        all.extend(frontier.iter().cloned());
    }
    Ok((all.into_iter().collect(), kernel))
}

/// (file name, size) per package from `apt-get --print-uris download` (reads local lists only).
fn deb_files(pkgs: &[String]) -> Result<BTreeMap<String, (String, u64)>> {
    let mut c = apt("apt-get");
    c.args(["--print-uris", "download"]).args(pkgs);
    let out = util::output(&mut c)?;
    let mut map = BTreeMap::new();
    for line in out.lines().filter(|l| l.starts_with('\'')) {
        let mut t = line.split_whitespace().skip(1);
        let (Some(file), Some(size)) = (t.next(), t.next()) else { continue };
        let pkg = file.split('_').next().unwrap_or(file).to_string();
        map.insert(pkg, (file.to_string(), size.parse().unwrap_or(0)));
    }
    for p in pkgs {
        ensure!(map.contains_key(p), "apt-get --print-uris gave no .deb for {p}");
    }
    Ok(map)
}

/// What identifies the apt state a resolution was made from: the roots and every list file's
/// name, size and mtime (`apt-get update` changes them).
fn apt_state_key() -> String {
    let mut key = format!("roots {ROOTS:?} {KERNEL_META}\n");
    let mut entries: Vec<String> = std::fs::read_dir("/var/lib/apt/lists")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let md = e.metadata().ok()?;
                    let mtime = md.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
                    Some(format!("{} {} {mtime}", e.file_name().to_string_lossy(), md.len()))
                })
                .collect()
        })
        .unwrap_or_default();
    entries.sort();
    key.push_str(&entries.join("\n"));
    key.push_str("\n--\n");
    key
}

type Resolved = (Vec<String>, String, BTreeMap<String, (String, u64)>);

/// [`resolve`] + [`deb_files`], remembered in `<cache>/resolved.txt` while the apt lists do not
/// change (asking apt-cache takes seconds).
fn resolve_cached(cache: &Path) -> Result<Resolved> {
    let key = apt_state_key();
    let file = cache.join("resolved.txt");
    if let Some(rest) = std::fs::read_to_string(&file).ok().as_deref().and_then(|t| t.strip_prefix(key.as_str())) {
        let mut kernel = None;
        let mut files = BTreeMap::new();
        for l in rest.lines() {
            let t: Vec<&str> = l.split_whitespace().collect();
            match t.as_slice() {
                ["kernel", k] => kernel = Some(k.to_string()),
                ["deb", p, f, n] => {
                    files.insert(p.to_string(), (f.to_string(), n.parse().unwrap_or(0)));
                }
                _ => {}
            }
        }
        if let Some(kernel) = kernel
            && !files.is_empty()
        {
            return Ok((files.keys().cloned().collect(), kernel, files));
        }
    }
    let (pkgs, kernel) = resolve()?;
    let files = deb_files(&pkgs)?;
    // apt-get update may have run inside resolve(): key the result by the lists it used.
    let mut text = apt_state_key();
    text.push_str(&format!("kernel {kernel}\n"));
    for (p, (f, n)) in &files {
        text.push_str(&format!("deb {p} {f} {n}\n"));
    }
    std::fs::write(&file, text)?;
    Ok((pkgs, kernel, files))
}

/// Resolve, download what is missing, unpack what is not unpacked yet.
pub fn prepare(cache: &Path) -> Result<Sysroot> {
    for tool in ["apt-get", "apt-cache", "dpkg"] {
        ensure!(util::have_program(tool), "`{tool}` not found: the Xen harness needs a Debian host (apt, dpkg)");
    }
    let t = Instant::now();
    let (pkgs, kernel, files) = resolve_cached(cache)?;
    let debs = cache.join("debs");
    std::fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
    // A .deb counts as cached only with the size apt expects (an interrupted download is redone).
    let have = |p: &String| std::fs::metadata(debs.join(&files[p].0)).is_ok_and(|m| m.len() == files[p].1);
    let missing: Vec<&String> = pkgs.iter().filter(|p| !have(p)).collect();
    let total: u64 = files.values().map(|f| f.1).sum();
    println!(
        "xen: {} packages ({} of .debs), {} cached, {} to fetch; resolved in {}",
        pkgs.len(),
        fmt_bytes(total),
        pkgs.len() - missing.len(),
        missing.len(),
        fmt_dur(t.elapsed())
    );
    if !missing.is_empty() {
        let t = Instant::now();
        for p in &missing {
            println!("xen: fetching {:<34} {:>10}  {}", p, fmt_bytes(files[*p].1), files[*p].0);
        }
        let mut c = apt("apt-get");
        c.current_dir(&debs).arg("download").args(missing.iter().map(|s| s.as_str()));
        util::run(&mut c).context("apt-get download")?;
        let bytes: u64 = missing.iter().map(|p| files[*p].1).sum();
        for p in &missing {
            ensure!(have(p), "apt-get download did not produce {} ({} bytes)", files[*p].0, files[*p].1);
        }
        println!("xen: fetched {} packages, {} in {}", missing.len(), fmt_bytes(bytes), fmt_dur(t.elapsed()));
    }
    let root = cache.join("pkgs");
    let t = Instant::now();
    let mut unpacked = Vec::new();
    let mut n_new = 0;
    for p in &pkgs {
        let file = &files[p].0;
        let dir = root.join(file.trim_end_matches(".deb"));
        if !dir.join(".unpacked").is_file() {
            let tmp = root.join(format!(".tmp-{}", file.trim_end_matches(".deb")));
            let _ = std::fs::remove_dir_all(&tmp);
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&tmp)?;
            let mut c = Command::new("dpkg");
            c.arg("-x").arg(debs.join(file)).arg(&tmp);
            util::output(&mut c).with_context(|| format!("unpacking {file}"))?;
            std::fs::write(tmp.join(".unpacked"), file)?;
            std::fs::rename(&tmp, &dir)?;
            n_new += 1;
        }
        unpacked.push(Unpacked { package: p.clone(), deb: file.clone(), dir });
    }
    if n_new > 0 {
        println!("xen: unpacked {n_new} packages with dpkg -x in {}", fmt_dur(t.elapsed()));
    }
    Ok(Sysroot { pkgs: unpacked, kernel_package: kernel })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_parsing_takes_first_alternative_and_skips_virtuals() {
        let out = "xen-utils-common\n |Depends: sysvinit-utils\n  Depends: lsb-base\n    sysvinit-utils\n  Depends: udev\n  Depends: libxenstore4\n  Depends: <python3:any>\n    python3\n  Depends: python3\nlibc6\n  Depends: libgcc-s1\n";
        let m = parse_depends(out);
        assert_eq!(m["xen-utils-common"], ["sysvinit-utils", "udev", "libxenstore4", "python3"]);
        assert_eq!(m["libc6"], ["libgcc-s1"]);
    }

    #[test]
    fn library_filter() {
        assert!(is_library("libxenmisc4.17") && is_library("zlib1g"));
        assert!(!is_library("python3") && !is_library("udev"));
    }

    #[test]
    fn sysroot_lookup_order_and_release() {
        let dir = std::env::temp_dir().join(format!("xtask-sysroot-{}", std::process::id()));
        for (p, f) in [("a", "usr/bin/x"), ("b", "usr/bin/x"), ("b", "usr/bin/y")] {
            std::fs::create_dir_all(dir.join(p).join("usr/bin")).unwrap();
            std::fs::write(dir.join(p).join(f), p).unwrap();
        }
        let pk = |n: &str| Unpacked { package: n.into(), deb: format!("{n}.deb"), dir: dir.join(n) };
        let s = Sysroot { pkgs: vec![pk("a"), pk("b")], kernel_package: "linux-image-6.1.0-56-amd64".into() };
        assert_eq!(s.find("/usr/bin/x").unwrap(), dir.join("a/usr/bin/x"));
        assert_eq!(s.find("usr/bin/y").unwrap(), dir.join("b/usr/bin/y"));
        assert!(s.require("/usr/bin/z").is_err());
        assert_eq!(s.kernel_release(), "6.1.0-56-amd64");
        std::fs::remove_dir_all(&dir).ok();
    }
}
