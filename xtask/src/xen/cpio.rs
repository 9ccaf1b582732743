//! A minimal `newc` cpio writer (the format Linux unpacks as an initramfs): directories, regular
//! files and symlinks, deterministic (inode numbers in path order, mtime 0, uid/gid 0).
//!
//! Linux accepts several archives concatenated back to back in one initrd; the harness uses that to
//! put a per-run overlay (scenario script, images) after a cached base archive.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

/// Where a file's bytes come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Data {
    Bytes(Vec<u8>),
    /// Read from the host file system when the archive is written.
    Host(PathBuf),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Dir { mode: u32 },
    File { mode: u32, data: Data },
    Symlink { target: String },
}

/// A file tree to be written as one archive. Paths are absolute-looking (`/bin/sh`) or relative;
/// they are stored without the leading `/`. Parents are created implicitly (mode 0755).
#[derive(Default, Debug)]
pub struct Tree {
    entries: BTreeMap<String, Entry>,
}

fn normalise(path: &str) -> Result<String> {
    let p = path.trim_start_matches('/').trim_end_matches('/');
    if p.is_empty() {
        bail!("empty path in archive");
    }
    if p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        bail!("bad archive path `{path}`");
    }
    Ok(p.to_string())
}

impl Tree {
    pub fn new() -> Self {
        Self::default()
    }

    fn parents(&mut self, p: &str) -> Result<()> {
        let mut cur = String::new();
        let comps: Vec<&str> = p.split('/').collect();
        for c in &comps[..comps.len() - 1] {
            if !cur.is_empty() {
                cur.push('/');
            }
            cur.push_str(c);
            match self.entries.get(&cur) {
                None => {
                    self.entries.insert(cur.clone(), Entry::Dir { mode: 0o755 });
                }
                Some(Entry::Dir { .. }) => {}
                Some(_) => bail!("`{cur}` is not a directory (needed for `{p}`)"),
            }
        }
        Ok(())
    }

    fn put(&mut self, path: &str, e: Entry) -> Result<()> {
        let p = normalise(path)?;
        self.parents(&p)?;
        if let Some(Entry::Dir { .. }) = self.entries.get(&p)
            && !matches!(e, Entry::Dir { .. })
        {
            bail!("`{p}` is already a directory");
        }
        self.entries.insert(p, e);
        Ok(())
    }

    pub fn dir(&mut self, path: &str) -> Result<()> {
        let p = normalise(path)?;
        if matches!(self.entries.get(&p), Some(Entry::Dir { .. })) {
            return Ok(());
        }
        self.put(path, Entry::Dir { mode: 0o755 })
    }

    pub fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) -> Result<()> {
        self.put(path, Entry::File { mode, data: Data::Bytes(data) })
    }

    /// A file whose content is read from `src` when the archive is written.
    pub fn host_file(&mut self, path: &str, mode: u32, src: impl Into<PathBuf>) -> Result<()> {
        self.put(path, Entry::File { mode, data: Data::Host(src.into()) })
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.put(path, Entry::Symlink { target: target.into() })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Write the archive (with its `TRAILER!!!`); returns the number of bytes written.
    pub fn write(&self, out: &mut impl Write) -> Result<u64> {
        let mut w = Counting { inner: out, n: 0 };
        // BTreeMap order puts every parent before its children (a parent is a prefix).
        for (ino, (path, e)) in self.entries.iter().enumerate() {
            let ino = ino as u32 + 1;
            match e {
                Entry::Dir { mode } => header(&mut w, ino, 0o040000 | mode, 2, path, &[])?,
                Entry::File { mode, data } => {
                    let owned;
                    let bytes: &[u8] = match data {
                        Data::Bytes(b) => b,
                        Data::Host(src) => {
                            owned = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
                            &owned
                        }
                    };
                    header(&mut w, ino, 0o100000 | mode, 1, path, bytes)?
                }
                Entry::Symlink { target } => header(&mut w, ino, 0o120777, 1, path, target.as_bytes())?,
            }
        }
        header(&mut w, 0, 0, 1, "TRAILER!!!", &[])?;
        Ok(w.n)
    }
}

struct Counting<'a, W: Write> {
    inner: &'a mut W,
    n: u64,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn pad4(w: &mut Counting<'_, impl Write>) -> io::Result<()> {
    let pad = (4 - (w.n % 4) as usize) % 4;
    w.write_all(&[0u8; 3][..pad])
}

/// One newc record: 110-byte ASCII header, name + NUL padded to 4, data padded to 4.
fn header(w: &mut Counting<'_, impl Write>, ino: u32, mode: u32, nlink: u32, name: &str, data: &[u8]) -> Result<()> {
    let size = u32::try_from(data.len()).context("file larger than 4 GiB in cpio")?;
    let namesize = name.len() + 1;
    let fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, namesize as u32, 0];
    let mut h = String::with_capacity(110);
    h.push_str("070701");
    for f in fields {
        h.push_str(&format!("{f:08X}"));
    }
    debug_assert_eq!(h.len(), 110);
    w.write_all(h.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    pad4(w)?;
    w.write_all(data)?;
    pad4(w)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parse a newc archive back: (name, mode, data) per record, trailer excluded.
    fn parse(mut b: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let total = b.len();
        loop {
            assert_eq!(&b[..6], b"070701");
            let field = |i: usize| u32::from_str_radix(std::str::from_utf8(&b[6 + i * 8..14 + i * 8]).unwrap(), 16).unwrap();
            let (mode, size, namesize) = (field(1), field(6) as usize, field(11) as usize);
            let name = std::str::from_utf8(&b[110..110 + namesize - 1]).unwrap().to_string();
            assert_eq!(b[110 + namesize - 1], 0);
            let off = total - b.len();
            let data_start = (off + 110 + namesize).div_ceil(4) * 4 - off;
            let data = b[data_start..data_start + size].to_vec();
            let next = (off + data_start + size).div_ceil(4) * 4 - off;
            if name == "TRAILER!!!" {
                assert_eq!(next, b.len());
                return out;
            }
            out.push((name, mode, data));
            b = &b[next..];
        }
    }

    #[test]
    fn round_trip_with_implicit_parents() {
        let mut t = Tree::new();
        t.file("/bin/busybox", 0o755, b"\x7fELFxyz".to_vec()).unwrap();
        t.symlink("/bin/sh", "busybox").unwrap();
        t.file("/init", 0o755, b"#!/bin/sh\n".to_vec()).unwrap();
        t.dir("/proc").unwrap();
        t.file("/etc/a/b/c.txt", 0o644, b"hello".to_vec()).unwrap();
        let mut buf = Vec::new();
        let n = t.write(&mut buf).unwrap();
        assert_eq!(n as usize, buf.len());
        assert_eq!(buf.len() % 4, 0);
        let recs = parse(&buf);
        let names: Vec<_> = recs.iter().map(|r| r.0.as_str()).collect();
        assert_eq!(names, ["bin", "bin/busybox", "bin/sh", "etc", "etc/a", "etc/a/b", "etc/a/b/c.txt", "init", "proc"]);
        let get = |n: &str| recs.iter().find(|r| r.0 == n).unwrap();
        assert_eq!(get("bin").1, 0o040755);
        assert_eq!(get("bin/busybox").1, 0o100755);
        assert_eq!(get("bin/busybox").2, b"\x7fELFxyz");
        assert_eq!(get("bin/sh").1, 0o120777);
        assert_eq!(get("bin/sh").2, b"busybox");
        assert_eq!(get("etc/a/b/c.txt").2, b"hello");
    }

    #[test]
    fn rejects_bad_paths_and_type_clashes() {
        let mut t = Tree::new();
        assert!(t.file("/a/../b", 0o644, vec![]).is_err());
        assert!(t.file("/", 0o644, vec![]).is_err());
        assert!(t.file("a//b", 0o644, vec![]).is_err());
        t.file("/x", 0o644, vec![1]).unwrap();
        assert!(t.file("/x/y", 0o644, vec![]).is_err(), "a file cannot be a parent");
        t.dir("/d").unwrap();
        assert!(t.file("/d", 0o644, vec![]).is_err(), "a directory cannot become a file");
        t.dir("/d").unwrap();
    }

    #[test]
    fn host_file_is_read_at_write_time() {
        let dir = std::env::temp_dir().join(format!("xtask-cpio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("f");
        std::fs::write(&f, b"abc").unwrap();
        let mut t = Tree::new();
        t.host_file("/f", 0o644, &f).unwrap();
        let mut buf = Vec::new();
        t.write(&mut buf).unwrap();
        assert_eq!(parse(&buf)[0].2, b"abc");
        t.host_file("/g", 0o644, dir.join("missing")).unwrap();
        assert!(t.write(&mut Vec::new()).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
