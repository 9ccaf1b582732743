//! Just enough ELF64 reading for building a dom0 initramfs: the `DT_NEEDED` shared libraries of a
//! dynamically linked program (instead of running `ldd`), and a kernel module's `.modinfo`
//! `depends=` list (instead of `depmod`'s modules.dep, which Debian's package does not ship).

use anyhow::{Context, Result, bail};

struct Section {
    name: u32,
    kind: u32,
    offset: usize,
    size: usize,
    link: u32,
}

fn rd<const N: usize>(b: &[u8], o: usize) -> Result<[u8; N]> {
    let end = o.checked_add(N).context("offset overflow")?;
    Ok(b.get(o..end).context("truncated ELF")?.try_into()?)
}
fn u16_at(b: &[u8], o: usize) -> Result<usize> {
    Ok(u16::from_le_bytes(rd(b, o)?) as usize)
}
fn u32_at(b: &[u8], o: usize) -> Result<u32> {
    Ok(u32::from_le_bytes(rd(b, o)?))
}
fn u64_at(b: &[u8], o: usize) -> Result<u64> {
    Ok(u64::from_le_bytes(rd(b, o)?))
}

fn sections(b: &[u8]) -> Result<Vec<Section>> {
    if b.get(..4) != Some(b"\x7fELF") || b.get(4) != Some(&2) || b.get(5) != Some(&1) {
        bail!("not an ELF64 little-endian file");
    }
    let shoff = usize::try_from(u64_at(b, 0x28)?)?;
    let shentsize = u16_at(b, 0x3a)?;
    let shnum = u16_at(b, 0x3c)?;
    if shentsize < 64 {
        bail!("bad section header size {shentsize}");
    }
    (0..shnum)
        .map(|i| {
            let h = shoff.checked_add(i * shentsize).context("bad section table")?;
            Ok(Section {
                name: u32_at(b, h)?,
                kind: u32_at(b, h + 4)?,
                offset: usize::try_from(u64_at(b, h + 24)?)?,
                size: usize::try_from(u64_at(b, h + 32)?)?,
                link: u32_at(b, h + 40)?,
            })
        })
        .collect()
}

fn bytes_of<'a>(b: &'a [u8], s: &Section) -> Result<&'a [u8]> {
    let end = s.offset.checked_add(s.size).context("section overflow")?;
    b.get(s.offset..end).context("section outside the file")
}

fn cstr_at(tab: &[u8], off: usize) -> Result<String> {
    let rest = tab.get(off..).context("string offset outside its table")?;
    let end = rest.iter().position(|&c| c == 0).context("unterminated string")?;
    Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
}

const SHT_DYNAMIC: u32 = 6;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;

/// The `DT_NEEDED` entries (sonames) of a dynamically linked ELF; empty for a static one.
pub fn needed_libs(b: &[u8]) -> Result<Vec<String>> {
    let secs = sections(b)?;
    let Some(dynamic) = secs.iter().find(|s| s.kind == SHT_DYNAMIC) else { return Ok(Vec::new()) };
    let strtab = secs.get(dynamic.link as usize).context("dynamic section links to no string table")?;
    let strtab = bytes_of(b, strtab)?;
    let d = bytes_of(b, dynamic)?;
    let mut out = Vec::new();
    for e in d.chunks_exact(16) {
        let tag = u64_at(e, 0)?;
        let val = u64_at(e, 8)?;
        match tag {
            DT_NULL => break,
            DT_NEEDED => out.push(cstr_at(strtab, usize::try_from(val)?)?),
            _ => {}
        }
    }
    Ok(out)
}

/// A kernel module's `depends=` list from its `.modinfo` section (module names, `-` or `_`).
pub fn module_depends(b: &[u8]) -> Result<Vec<String>> {
    let secs = sections(b)?;
    let shstrndx = u16_at(b, 0x3e)?;
    let names = bytes_of(b, secs.get(shstrndx).context("no section name table")?)?;
    for s in &secs {
        if cstr_at(names, s.name as usize)? == ".modinfo" {
            for kv in bytes_of(b, s)?.split(|&c| c == 0) {
                if let Some(v) = kv.strip_prefix(b"depends=") {
                    let v = String::from_utf8_lossy(v);
                    return Ok(v.split(',').filter(|m| !m.is_empty()).map(str::to_string).collect());
                }
            }
            return Ok(Vec::new());
        }
    }
    bail!("no .modinfo section (not a kernel module?)")
}

/// Module name as the kernel sees it: file stem with `-` replaced by `_`.
pub fn module_name(file_name: &str) -> String {
    file_name.trim_end_matches(".ko").replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny ELF64 with a section name table, a string table, a dynamic section and a .modinfo.
    fn tiny(dynamic: &[(u64, u64)], modinfo: Option<&[u8]>) -> Vec<u8> {
        let shstr = b"\0.dynstr\0.dynamic\0.modinfo\0".to_vec(); // names at 1, 9, 18
        let dynstr = b"\0libfoo.so.1\0libc.so.6\0".to_vec(); // 1, 13
        let mut dynb = Vec::new();
        for (t, v) in dynamic {
            dynb.extend(t.to_le_bytes());
            dynb.extend(v.to_le_bytes());
        }
        let mi = modinfo.unwrap_or(b"").to_vec();
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        let place = |data: &[u8], b: &mut Vec<u8>| {
            let off = b.len();
            b.extend_from_slice(data);
            off
        };
        let o_shstr = place(&shstr, &mut b);
        let o_dynstr = place(&dynstr, &mut b);
        let o_dyn = place(&dynb, &mut b);
        let o_mi = place(&mi, &mut b);
        let shoff = b.len();
        let sh = |name: u32, kind: u32, off: usize, size: usize, link: u32, b: &mut Vec<u8>| {
            let mut h = vec![0u8; 64];
            h[0..4].copy_from_slice(&name.to_le_bytes());
            h[4..8].copy_from_slice(&kind.to_le_bytes());
            h[24..32].copy_from_slice(&(off as u64).to_le_bytes());
            h[32..40].copy_from_slice(&(size as u64).to_le_bytes());
            h[40..44].copy_from_slice(&link.to_le_bytes());
            b.extend(h);
        };
        sh(0, 0, 0, 0, 0, &mut b);
        sh(0, 3, o_shstr, shstr.len(), 0, &mut b); // 1: .shstrtab
        sh(1, 3, o_dynstr, dynstr.len(), 0, &mut b); // 2: .dynstr
        let mut n = 3;
        if !dynamic.is_empty() {
            sh(9, SHT_DYNAMIC, o_dyn, dynb.len(), 2, &mut b);
            n += 1;
        }
        if modinfo.is_some() {
            sh(18, 1, o_mi, mi.len(), 0, &mut b);
            n += 1;
        }
        b[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        b[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        b[0x3c..0x3e].copy_from_slice(&(n as u16).to_le_bytes());
        b[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        b
    }

    #[test]
    fn needed_libraries() {
        let b = tiny(&[(DT_NEEDED, 1), (5, 0), (DT_NEEDED, 13), (DT_NULL, 0), (DT_NEEDED, 1)], None);
        assert_eq!(needed_libs(&b).unwrap(), ["libfoo.so.1", "libc.so.6"]);
        assert!(needed_libs(&tiny(&[], None)).unwrap().is_empty(), "static binary");
        let bad = tiny(&[(DT_NEEDED, 999)], None);
        assert!(needed_libs(&bad).is_err());
    }

    #[test]
    fn modinfo_depends() {
        let b = tiny(&[], Some(b"license=GPL\0depends=llc,stp\0vermagic=6.1\0"));
        assert_eq!(module_depends(&b).unwrap(), ["llc", "stp"]);
        let none = tiny(&[], Some(b"license=GPL\0depends=\0"));
        assert!(module_depends(&none).unwrap().is_empty());
        assert!(module_depends(&tiny(&[], None)).is_err());
        assert_eq!(module_name("xen-privcmd.ko"), "xen_privcmd");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(needed_libs(b"\x7fELF\x02\x01").is_err());
        assert!(module_depends(b"nope").is_err());
        let mut b = tiny(&[(DT_NEEDED, 1)], None);
        b[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(needed_libs(&b).is_err());
    }
}
