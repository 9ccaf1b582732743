//! blk-dd's platform configuration: the volume file under `images/blk/` (e.g.
//! `images/blk/demo.conf`) that says where each guest volume lives, parsed and checked here
//! and turned into blk-dd's `vol=` command-line tokens (`blkback::volumes` syntax, which blk-dd
//! checks again at start: it trusts no command line either).
//!
//! ```text
//! # comment (also after a line's fields)
//! disk 32M                                  size of blk-dd's local disk (xtask creates it)
//! volume alpha local 0 16M                  a slice: offset, length
//! volume beta  local 16M 8M ss=4096 ro      options: sector size seen by the guest, read-only
//! volume gamma nbd://${host}:${nbd_port}/demo    a remote NBD export (IPv4:port/export)
//! ```
//!
//! * Names: what guests ask for (`iconnect-storage-volume`): 1..=64 of `a-z 0-9 . _ -`,
//!   starting with a letter or digit; unique.
//! * Sizes: bytes, `0x` hex, or a number with `K`/`M`/`G`/`T` (powers of 1024). Local slices:
//!   offset and length multiples of 4 KiB, length > 0, inside the `disk`, pairwise disjoint.
//! * NBD: `nbd://A.B.C.D:PORT/EXPORT` (blk-dd has no DNS: an IPv4 address as seen from blk-dd;
//!   under QEMU user networking the host is 10.0.2.2), port 1..=65535, export 1..=256 of
//!   `A-Z a-z 0-9 _ . -`.
//! * Options: `ss=512` (default) or `ss=4096`, `ro`; each at most once.
//! * `${var}` is replaced before parsing by what the caller provides (xtask's runs give
//!   `host` = 10.0.2.2 and `nbd_port` = the port of the `qemu-nbd` they start); an unknown
//!   variable is an error.
//!
//! Every error names the file and line and says what is wrong; all errors of a file are
//! reported at once.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Local slices are aligned to this (blkback's `SLICE_ALIGN`).
pub const SLICE_ALIGN: u64 = 4096;
/// Longest volume name (iconnect's `MAX_VOLUME_LEN`).
pub const MAX_NAME: usize = 64;
/// Longest NBD export name (blkback's `MAX_EXPORT`).
pub const MAX_EXPORT: usize = 256;

/// Where a volume lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backing {
    /// A slice of blk-dd's disk.
    Local { offset: u64, len: u64 },
    /// An NBD export.
    Nbd { host: Ipv4Addr, port: u16, export: String },
}

/// One `volume` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub name: String,
    pub backing: Backing,
    /// 512 or 4096.
    pub sector_size: u32,
    pub read_only: bool,
    /// 1-based line in the file.
    pub line: usize,
}

impl Volume {
    /// blk-dd's `vol=` token.
    pub fn token(&self) -> String {
        let mut t = format!("vol={}:", self.name);
        match &self.backing {
            Backing::Local { offset, len } => {
                let _ = write!(t, "local:{}:{}", fmt_size(*offset), fmt_size(*len));
            }
            Backing::Nbd { host, port, export } => {
                let _ = write!(t, "nbd://{host}:{port}/{export}");
            }
        }
        if self.sector_size != 512 {
            let _ = write!(t, ":ss={}", self.sector_size);
        }
        if self.read_only {
            t.push_str(":ro");
        }
        t
    }

    /// Where it lives, for people.
    pub fn place(&self) -> String {
        match &self.backing {
            Backing::Local { offset, len } => format!("local {}..{}", fmt_size(*offset), fmt_size(offset + len)),
            Backing::Nbd { host, port, export } => format!("nbd://{host}:{port}/{export}"),
        }
    }
}

/// A parsed volume file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeFile {
    /// Where it came from (for messages).
    pub source: String,
    /// The `disk` size (bytes), if given.
    pub disk: Option<u64>,
    /// (line of the `disk` line)
    disk_line: usize,
    pub volumes: Vec<Volume>,
}

/// Size suffixes (powers of 1024), largest first.
const UNITS: [(char, u32); 4] = [('T', 40), ('G', 30), ('M', 20), ('K', 10)];

/// `n` with the largest binary suffix that divides it (`16M`), else in bytes.
pub fn fmt_size(n: u64) -> String {
    match UNITS.iter().find(|&&(_, shift)| n != 0 && n.is_multiple_of(1 << shift)) {
        Some(&(u, shift)) => format!("{}{u}", n >> shift),
        None => n.to_string(),
    }
}

/// A size: bytes, `0x` hex, or decimal with K/M/G/T (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("`{s}` is not a size (bytes, 0x hex, or a number with K/M/G/T)");
    if let Some(h) = s.strip_prefix("0x") {
        if h.is_empty() || h.len() > 16 {
            return Err(bad());
        }
        return u64::from_str_radix(h, 16).map_err(|_| bad());
    }
    let (digits, shift) = UNITS
        .iter()
        .find_map(|&(u, shift)| s.strip_suffix(u).map(|d| (d, shift)))
        .unwrap_or((s, 0));
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let v: u64 = digits.parse().map_err(|_| format!("`{s}` is too large"))?;
    v.checked_mul(1u64 << shift).ok_or_else(|| format!("`{s}` is too large"))
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-');
    let b = name.as_bytes();
    if b.is_empty() || b.len() > MAX_NAME {
        return Err(format!("volume name `{name}` must be 1..={MAX_NAME} characters"));
    }
    if let Some(c) = name.chars().find(|c| !c.is_ascii() || !ok(*c as u8)) {
        return Err(format!("volume name `{name}` has `{c}`: only a-z 0-9 . _ - are allowed"));
    }
    if !(b[0].is_ascii_lowercase() || b[0].is_ascii_digit()) {
        return Err(format!("volume name `{name}` must start with a letter or digit"));
    }
    Ok(())
}

/// `nbd://A.B.C.D:PORT/EXPORT`.
fn parse_nbd(url: &str) -> Result<Backing, String> {
    let rest = url.strip_prefix("nbd://").ok_or_else(|| format!("`{url}`: expected `local` or `nbd://HOST:PORT/EXPORT`"))?;
    let (authority, export) = rest.split_once('/').ok_or_else(|| format!("`{url}`: no `/EXPORT` after the port"))?;
    let (host, port) = authority.split_once(':').ok_or_else(|| format!("`{url}`: no `:PORT` after the host"))?;
    // Only dotted quads (Ipv4Addr's parser accepts exactly those).
    let host: Ipv4Addr = host
        .parse()
        .map_err(|_| format!("`{url}`: host `{host}` is not an IPv4 address (a.b.c.d; blk-dd resolves no names)"))?;
    let port: u16 = match port.parse() {
        Ok(p) if p > 0 && !port.starts_with('+') => p,
        _ => return Err(format!("`{url}`: port `{port}` is not in 1..=65535")),
    };
    if export.is_empty() || export.len() > MAX_EXPORT {
        return Err(format!("`{url}`: export name must be 1..={MAX_EXPORT} characters"));
    }
    if let Some(c) = export.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))) {
        return Err(format!("`{url}`: export name has `{c}`: only A-Z a-z 0-9 _ . - are allowed"));
    }
    Ok(Backing::Nbd { host, port, export: export.into() })
}

/// Replaces `${var}` by `vars`' values.
fn substitute(line: &str, vars: &[(&str, &str)]) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = line;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let end = after.find('}').ok_or_else(|| format!("`${{` without `}}` in `{line}`"))?;
        let name = &after[..end];
        match vars.iter().find(|(k, _)| *k == name) {
            Some((_, v)) => out.push_str(v),
            None => {
                let known: Vec<String> = vars.iter().map(|(k, _)| format!("${{{k}}}")).collect();
                let known = if known.is_empty() { "none here".to_string() } else { known.join(", ") };
                return Err(format!("unknown variable `${{{name}}}` (known: {known})"));
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// One `volume` line's fields after the keyword.
fn parse_volume(fields: &[&str], line: usize) -> Result<Volume, String> {
    let Some((&name, rest)) = fields.split_first() else {
        return Err("`volume` needs a name and a place: `volume NAME local OFFSET LENGTH` or `volume NAME nbd://HOST:PORT/EXPORT`".into());
    };
    check_name(name)?;
    let (backing, opts) = match rest.first() {
        Some(&"local") => {
            let (Some(off), Some(len)) = (rest.get(1), rest.get(2)) else {
                return Err(format!("volume `{name}`: `local` needs an offset and a length"));
            };
            let (offset, len) = (parse_size(off)?, parse_size(len)?);
            if len == 0 {
                return Err(format!("volume `{name}`: length is 0"));
            }
            if !offset.is_multiple_of(SLICE_ALIGN) {
                return Err(format!("volume `{name}`: offset {off} is not a multiple of 4K ({SLICE_ALIGN} bytes)"));
            }
            if !len.is_multiple_of(SLICE_ALIGN) {
                return Err(format!("volume `{name}`: length {len} is not a multiple of 4K ({SLICE_ALIGN} bytes)"));
            }
            if offset.checked_add(len).is_none() {
                return Err(format!("volume `{name}`: offset + length overflows"));
            }
            (Backing::Local { offset, len }, &rest[3..])
        }
        Some(url) if url.contains("://") => (parse_nbd(url).map_err(|e| format!("volume `{name}`: {e}"))?, &rest[1..]),
        Some(other) => return Err(format!("volume `{name}`: `{other}` is neither `local` nor `nbd://HOST:PORT/EXPORT`")),
        None => return Err(format!("volume `{name}`: where does it live? (`local OFFSET LENGTH` or `nbd://HOST:PORT/EXPORT`)")),
    };
    let mut v = Volume { name: name.into(), backing, sector_size: 512, read_only: false, line };
    // Each option (by its key: `ss`, `ro`) at most once.
    let key = |o: &str| o.split('=').next().unwrap_or_default().to_string();
    for (k, &o) in opts.iter().enumerate() {
        match o {
            "ro" => v.read_only = true,
            "ss=512" => v.sector_size = 512,
            "ss=4096" => v.sector_size = 4096,
            _ if key(o) == "ss" => return Err(format!("volume `{name}`: sector size `{o}`: only ss=512 or ss=4096")),
            _ => return Err(format!("volume `{name}`: unknown option `{o}` (options: ss=512, ss=4096, ro)")),
        }
        if opts[..k].iter().any(|p| key(p) == key(o)) {
            return Err(format!("volume `{name}`: option `{}` given twice", key(o)));
        }
    }
    Ok(v)
}

impl VolumeFile {
    /// Parses `text` (from `source`, for messages) with `vars`, checking every line but not the
    /// map as a whole (see [`VolumeFile::check`]).
    pub fn parse_lines(source: &str, text: &str, vars: &[(&str, &str)]) -> Result<VolumeFile> {
        let mut f = VolumeFile { source: source.into(), disk: None, disk_line: 0, volumes: Vec::new() };
        let mut errors = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let content = raw.split('#').next().unwrap_or("");
            let r = substitute(content, vars).and_then(|content| {
                let fields: Vec<&str> = content.split_whitespace().collect();
                match fields.split_first() {
                    None => Ok(()),
                    Some((&"disk", rest)) => {
                        if f.disk.is_some() {
                            return Err(format!("a second `disk` line (the first is line {})", f.disk_line));
                        }
                        let [size] = rest else {
                            return Err("`disk` takes one size, e.g. `disk 64M`".into());
                        };
                        let n = parse_size(size)?;
                        if n == 0 || !n.is_multiple_of(512) {
                            return Err(format!("disk size {size} must be a non-zero multiple of 512 bytes"));
                        }
                        f.disk = Some(n);
                        f.disk_line = line;
                        Ok(())
                    }
                    Some((&"volume", rest)) => {
                        f.volumes.push(parse_volume(rest, line)?);
                        Ok(())
                    }
                    Some((other, _)) => Err(format!("unknown line `{other} ...` (expected `disk SIZE` or `volume NAME ...`)")),
                }
            });
            if let Err(e) = r {
                errors.push(format!("{source}:{line}: {e}"));
            }
        }
        if !errors.is_empty() {
            bail!("{}", errors.join("\n"));
        }
        Ok(f)
    }

    /// [`parse_lines`](Self::parse_lines) and [`check`](Self::check).
    pub fn parse(source: &str, text: &str, vars: &[(&str, &str)]) -> Result<VolumeFile> {
        let f = Self::parse_lines(source, text, vars)?;
        f.check()?;
        Ok(f)
    }

    /// Reads and checks a file (relative paths from the repository root).
    pub fn load(path: &Path, vars: &[(&str, &str)]) -> Result<VolumeFile> {
        let full: PathBuf = if path.is_absolute() { path.into() } else { crate::util::project_root().join(path) };
        let text = std::fs::read_to_string(&full).with_context(|| format!("reading the volume file {}", full.display()))?;
        Self::parse(&path.display().to_string(), &text, vars)
    }

    /// The map as a whole: unique names, at least one volume, local slices inside the disk and
    /// pairwise disjoint (all problems at once).
    pub fn check(&self) -> Result<()> {
        let src = &self.source;
        let mut errors = Vec::new();
        if self.volumes.is_empty() {
            errors.push(format!("{src}: no `volume` lines"));
        }
        for (i, v) in self.volumes.iter().enumerate() {
            if let Some(o) = self.volumes[..i].iter().find(|o| o.name == v.name) {
                errors.push(format!("{src}:{}: volume `{}` is already defined on line {}", v.line, v.name, o.line));
            }
            let Backing::Local { offset, len } = v.backing else { continue };
            let end = offset + len;
            match self.disk {
                None => errors.push(format!(
                    "{src}:{}: volume `{}` is a local slice but the file has no `disk SIZE` line",
                    v.line, v.name
                )),
                Some(d) if end > d => errors.push(format!(
                    "{src}:{}: volume `{}` ({}) ends past the end of the {} disk (line {})",
                    v.line,
                    v.name,
                    v.place(),
                    fmt_size(d),
                    self.disk_line
                )),
                Some(_) => {}
            }
            for o in &self.volumes[..i] {
                if let Backing::Local { offset: oo, len: ol } = o.backing
                    && offset < oo + ol
                    && oo < end
                {
                    errors.push(format!(
                        "{src}:{}: volume `{}` ({}) overlaps volume `{}` ({}, line {})",
                        v.line,
                        v.name,
                        v.place(),
                        o.name,
                        o.place(),
                        o.line
                    ));
                }
            }
        }
        if !errors.is_empty() {
            bail!("{}", errors.join("\n"));
        }
        Ok(())
    }

    /// The volume called `name`.
    pub fn get(&self, name: &str) -> Option<&Volume> {
        self.volumes.iter().find(|v| v.name == name)
    }

    /// The same file restricted to `names` (in the file's order); each must exist.
    pub fn select(&self, names: &[&str]) -> Result<VolumeFile> {
        for n in names {
            if self.get(n).is_none() {
                bail!("{}: no volume `{n}`", self.source);
            }
        }
        let mut f = self.clone();
        f.volumes.retain(|v| names.contains(&v.name.as_str()));
        Ok(f)
    }

    /// Whether any volume is a local slice (blk-dd needs its disk) / remote (its NIC).
    pub fn has_local(&self) -> bool {
        self.volumes.iter().any(|v| matches!(v.backing, Backing::Local { .. }))
    }

    pub fn has_remote(&self) -> bool {
        self.volumes.iter().any(|v| matches!(v.backing, Backing::Nbd { .. }))
    }

    /// blk-dd's `vol=` tokens.
    pub fn tokens(&self) -> Vec<String> {
        self.volumes.iter().map(Volume::token).collect()
    }

    /// blk-dd's command line (the `vol=` tokens joined).
    pub fn cmdline(&self) -> String {
        self.tokens().join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VARS: &[(&str, &str)] = &[("host", "10.0.2.2"), ("nbd_port", "10809")];

    fn err(text: &str) -> String {
        format!("{:#}", VolumeFile::parse("t.conf", text, VARS).unwrap_err())
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("0x1000"), Ok(4096));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        for bad in ["", "M", "-1", "1.5M", "0x", "1k", "4 K", "0x10000000000000000"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert!(parse_size("16777216T").unwrap_err().contains("too large"));
        assert!(parse_size("18446744073709551616").unwrap_err().contains("too large"));
        assert_eq!(fmt_size(0), "0");
        assert_eq!(fmt_size(16 << 20), "16M");
        assert_eq!(fmt_size(3 << 30), "3G");
        assert_eq!(fmt_size(12288), "12K");
        assert_eq!(fmt_size(512), "512");
    }

    #[test]
    fn generates_blk_dd_tokens() {
        let f = VolumeFile::parse(
            "t.conf",
            "# demo\n\
             disk 64M   # the local disk\n\
             \n\
             volume alpha local 0 16M\n\
             volume beta local 16M 0x1000 ss=4096 ro\n\
             volume gamma nbd://${host}:${nbd_port}/demo-1 ss=4096\n\
             volume d.e_f-9 local 32M 32M\n",
            VARS,
        )
        .unwrap();
        assert_eq!(f.disk, Some(64 << 20));
        assert_eq!(
            f.tokens(),
            [
                "vol=alpha:local:0:16M",
                "vol=beta:local:16M:4K:ss=4096:ro",
                "vol=gamma:nbd://10.0.2.2:10809/demo-1:ss=4096",
                "vol=d.e_f-9:local:32M:32M",
            ]
        );
        assert_eq!(f.get("beta").unwrap().line, 5);
        assert!(f.has_local() && f.has_remote());
        let s = f.select(&["gamma"]).unwrap();
        assert_eq!(s.cmdline(), "vol=gamma:nbd://10.0.2.2:10809/demo-1:ss=4096");
        assert!(!s.has_local());
        assert!(f.select(&["nope"]).is_err());
    }

    #[test]
    fn map_errors_name_both_lines() {
        let e = err("disk 16M\nvolume a local 0 8M\nvolume b local 4M 8M\n");
        assert_eq!(e, "t.conf:3: volume `b` (local 4M..12M) overlaps volume `a` (local 0..8M, line 2)");
        let e = err("disk 16M\nvolume a local 0 8M\nvolume b local 8M 16M\n");
        assert_eq!(e, "t.conf:3: volume `b` (local 8M..24M) ends past the end of the 16M disk (line 1)");
        let e = err("volume a local 0 8M\n");
        assert!(e.contains("t.conf:1: volume `a` is a local slice but the file has no `disk SIZE` line"), "{e}");
        let e = err("disk 16M\nvolume a local 0 8M\nvolume a nbd://1.2.3.4:1/x\n");
        assert_eq!(e, "t.conf:3: volume `a` is already defined on line 2");
        assert!(err("disk 16M\n# nothing\n").contains("no `volume` lines"));
        // Adjacent slices and a disk exactly filled are fine; remote volumes need no disk.
        VolumeFile::parse("t", "disk 16M\nvolume a local 0 8M\nvolume b local 8M 8M\n", VARS).unwrap();
        VolumeFile::parse("t", "volume r nbd://127.0.0.1:65535/e\n", VARS).unwrap();
        // Several problems are reported together.
        let e = err("disk 8M\nvolume a local 0 8M\nvolume b local 0 16M\n");
        assert!(e.contains("overlaps") && e.contains("past the end"), "{e}");
    }

    #[test]
    fn line_errors() {
        for (text, want) in [
            ("disk\n", "t.conf:1: `disk` takes one size"),
            ("disk 1000\n", "t.conf:1: disk size 1000 must be a non-zero multiple of 512"),
            ("disk 8M\ndisk 8M\n", "t.conf:2: a second `disk` line (the first is line 1)"),
            ("vol a local 0 4K\n", "t.conf:1: unknown line `vol ...`"),
            ("volume\n", "t.conf:1: `volume` needs a name"),
            ("volume A local 0 4K\n", "volume name `A` has `A`"),
            ("volume -a local 0 4K\n", "must start with a letter or digit"),
            ("volume a/b local 0 4K\n", "has `/`"),
            ("volume a\n", "volume `a`: where does it live?"),
            ("volume a remote 0 4K\n", "`remote` is neither `local` nor"),
            ("volume a local 0\n", "`local` needs an offset and a length"),
            ("volume a local 0 1.5M\n", "`1.5M` is not a size"),
            ("volume a local 0 0\n", "length is 0"),
            ("volume a local 512 4K\n", "offset 512 is not a multiple of 4K"),
            ("volume a local 0 1000\n", "length 1000 is not a multiple of 4K"),
            ("volume a local 0xfffffffffffff000 8K\n", "offset + length overflows"),
            ("volume a local 0 4K ss=1024\n", "sector size `ss=1024`: only ss=512 or ss=4096"),
            ("volume a local 0 4K ss=512 ss=4096\n", "option `ss` given twice"),
            ("volume a local 0 4K ro ro\n", "option `ro` given twice"),
            ("volume a local 0 4K rw\n", "unknown option `rw`"),
            ("volume a nbd://10.0.2.2/x\n", "no `:PORT` after the host"),
            ("volume a nbd://10.0.2.2:10809\n", "no `/EXPORT` after the port"),
            ("volume a nbd://host.example:10809/x\n", "host `host.example` is not an IPv4 address"),
            ("volume a nbd://10.0.2.256:10809/x\n", "host `10.0.2.256` is not an IPv4"),
            ("volume a nbd://10.0.2:10809/x\n", "host `10.0.2` is not an IPv4"),
            ("volume a nbd://10.0.2.2:0/x\n", "port `0` is not in 1..=65535"),
            ("volume a nbd://10.0.2.2:65536/x\n", "port `65536` is not in 1..=65535"),
            ("volume a nbd://10.0.2.2:+80/x\n", "port `+80`"),
            ("volume a nbd://10.0.2.2:80/\n", "export name must be 1..=256"),
            ("volume a nbd://10.0.2.2:80/a:b\n", "export name has `:`"),
            ("volume a http://10.0.2.2:80/x\n", "expected `local` or `nbd://HOST:PORT/EXPORT`"),
            ("volume a nbd://${nope}:80/x\n", "t.conf:1: unknown variable `${nope}` (known: ${host}, ${nbd_port})"),
            ("volume a nbd://${host:80/x\n", "`${` without `}`"),
        ] {
            let e = err(text);
            assert!(e.contains(want), "{text:?}: got `{e}`, want `{want}`");
        }
        let long = format!("volume {} local 0 4K\n", "a".repeat(65));
        assert!(err(&long).contains("1..=64 characters"));
        VolumeFile::parse("t", &format!("disk 4K\nvolume {} local 0 4K\n", "a".repeat(64)), VARS).unwrap();
        let long = format!("volume a nbd://1.2.3.4:1/{}\n", "e".repeat(257));
        assert!(err(&long).contains("1..=256"));
        // Every bad line is reported, each with its number.
        let e = err("volume a local 0\nvolume b local 0 1000\n");
        assert!(e.contains("t.conf:1:") && e.contains("t.conf:2:"), "{e}");
    }

    #[test]
    fn the_files_under_images_parse() {
        let dir = crate::util::project_root().join("images/blk");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "conf") {
                let f = VolumeFile::load(&p, VARS).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
                assert!(!f.volumes.is_empty());
                n += 1;
            }
        }
        assert!(n >= 2, "demo.conf and bench.conf under {}", dir.display());
    }
}
