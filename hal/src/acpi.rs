//! Just enough ACPI to find the PCI Express ECAM window: RSDP -> RSDT/XSDT -> MCFG.
//!
//! Tables are read through [`PhysRead`], one small piece at a time into stack buffers, so this
//! module needs no allocator and is tested on the host against
//! `fake::FakeMemory`. Firmware tables are validated (signature, checksum, length
//! bounds) before use; a bad table is an error, never a panic.

use crate::Error;

/// Reads physical memory.
pub trait PhysRead {
    /// Fills `buf` from physical address `paddr`.
    fn read(&self, paddr: u64, buf: &mut [u8]) -> Result<(), Error>;
}

/// Where the legacy BIOS area scanned for the RSDP starts.
pub const BIOS_AREA_START: u64 = 0xE_0000;
/// Where that area ends (exclusive).
pub const BIOS_AREA_END: u64 = 0x10_0000;
/// Largest table length accepted (sanity bound against garbage lengths).
pub const MAX_TABLE_LEN: u32 = 1 << 20;
/// Size of the common system description table header.
pub const SDT_HEADER_LEN: usize = 36;

const RSDP_SIGNATURE: &[u8; 8] = b"RSD PTR ";
const RSDP_V1_LEN: usize = 20;
const RSDP_V2_LEN: usize = 36;

fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from(le32(b, at)) | (u64::from(le32(b, at + 4)) << 32)
}

/// A parsed Root System Description Pointer.
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
pub struct Rsdp {
    /// 0 for ACPI 1.0, 2 or more for ACPI 2.0+.
    pub revision: u8,
    /// Physical address of the RSDT.
    pub rsdt_address: u32,
    /// Physical address of the XSDT (ACPI 2.0+ with a non-zero field only).
    pub xsdt_address: Option<u64>,
}

impl Rsdp {
    /// Parses an RSDP from `bytes` (at least 20 bytes; 36 for revision 2+): signature and the
    /// checksums are verified.
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() < RSDP_V1_LEN {
            return Err(Error::Truncated);
        }
        if &bytes[..8] != RSDP_SIGNATURE {
            return Err(Error::Invalid);
        }
        if sum(&bytes[..RSDP_V1_LEN]) != 0 {
            return Err(Error::BadChecksum);
        }
        let revision = bytes[15];
        let rsdt_address = le32(bytes, 16);
        let mut xsdt_address = None;
        if revision >= 2 {
            if bytes.len() < RSDP_V2_LEN {
                return Err(Error::Truncated);
            }
            let length = le32(bytes, 20) as usize;
            if length < RSDP_V2_LEN || length > bytes.len() {
                return Err(Error::Truncated);
            }
            if sum(&bytes[..length]) != 0 {
                return Err(Error::BadChecksum);
            }
            let x = le64(bytes, 24);
            if x != 0 {
                xsdt_address = Some(x);
            }
        }
        Ok(Self {
            revision,
            rsdt_address,
            xsdt_address,
        })
    }

    /// Reads and parses the RSDP at `paddr`.
    pub fn read<M: PhysRead + ?Sized>(mem: &M, paddr: u64) -> Result<Self, Error> {
        let mut buf = [0u8; RSDP_V2_LEN];
        mem.read(paddr, &mut buf[..RSDP_V1_LEN])?;
        if buf[15] >= 2 {
            mem.read(paddr, &mut buf)?;
        }
        Self::parse(&buf)
    }
}

/// Scans `[start, end)` on 16-byte boundaries for a valid RSDP; returns its address and value.
pub fn scan_rsdp<M: PhysRead + ?Sized>(
    mem: &M,
    start: u64,
    end: u64,
) -> Result<(u64, Rsdp), Error> {
    let mut paddr = start.next_multiple_of(16);
    while paddr
        .checked_add(RSDP_V1_LEN as u64)
        .is_some_and(|e| e <= end)
    {
        let mut sig = [0u8; 8];
        if mem.read(paddr, &mut sig).is_ok()
            && &sig == RSDP_SIGNATURE
            && let Ok(rsdp) = Rsdp::read(mem, paddr)
        {
            return Ok((paddr, rsdp));
        }
        paddr += 16;
    }
    Err(Error::NotFound)
}

/// The RSDP at `hint` if non-zero, else the first one in the BIOS area.
pub fn find_rsdp<M: PhysRead + ?Sized>(mem: &M, hint: u64) -> Result<(u64, Rsdp), Error> {
    if hint != 0 {
        Rsdp::read(mem, hint).map(|r| (hint, r))
    } else {
        scan_rsdp(mem, BIOS_AREA_START, BIOS_AREA_END)
    }
}

/// A parsed system description table header.
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
pub struct SdtHeader {
    /// Four-letter signature (`b"MCFG"`...).
    pub signature: [u8; 4],
    /// Length of the whole table including this header.
    pub length: u32,
    /// Table revision.
    pub revision: u8,
}

impl SdtHeader {
    /// Parses the first 36 bytes of a table (no checksum check: that needs the whole table).
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() < SDT_HEADER_LEN {
            return Err(Error::Truncated);
        }
        let length = le32(bytes, 4);
        if (length as usize) < SDT_HEADER_LEN || length > MAX_TABLE_LEN {
            return Err(Error::Invalid);
        }
        Ok(Self {
            signature: [bytes[0], bytes[1], bytes[2], bytes[3]],
            length,
            revision: bytes[8],
        })
    }
}

/// Reads the header of the table at `paddr` and verifies the checksum over its whole length.
pub fn read_table_header<M: PhysRead + ?Sized>(mem: &M, paddr: u64) -> Result<SdtHeader, Error> {
    let mut buf = [0u8; 64];
    mem.read(paddr, &mut buf[..SDT_HEADER_LEN])?;
    let header = SdtHeader::parse(&buf[..SDT_HEADER_LEN])?;
    let mut total = 0u8;
    let mut at = 0u64;
    let len = u64::from(header.length);
    while at < len {
        let n = (len - at).min(buf.len() as u64) as usize;
        mem.read(paddr + at, &mut buf[..n])?;
        total = total.wrapping_add(sum(&buf[..n]));
        at += n as u64;
    }
    if total != 0 {
        return Err(Error::BadChecksum);
    }
    Ok(header)
}

/// Finds the table with `signature` listed in the XSDT (preferred) or RSDT; returns its
/// address and verified header.
pub fn find_table<M: PhysRead + ?Sized>(
    mem: &M,
    rsdp: &Rsdp,
    signature: &[u8; 4],
) -> Result<(u64, SdtHeader), Error> {
    let (root, entry_len, root_sig) = match rsdp.xsdt_address {
        Some(x) => (x, 8usize, b"XSDT"),
        None => (u64::from(rsdp.rsdt_address), 4usize, b"RSDT"),
    };
    let header = read_table_header(mem, root)?;
    if &header.signature != root_sig {
        return Err(Error::Invalid);
    }
    let entries = (header.length as usize - SDT_HEADER_LEN) / entry_len;
    for i in 0..entries {
        let mut e = [0u8; 8];
        mem.read(
            root + (SDT_HEADER_LEN + i * entry_len) as u64,
            &mut e[..entry_len],
        )?;
        let addr = le64(&e, 0);
        if addr == 0 {
            continue;
        }
        let mut sig = [0u8; 4];
        if mem.read(addr, &mut sig).is_err() || &sig != signature {
            continue;
        }
        return read_table_header(mem, addr).map(|h| (addr, h));
    }
    Err(Error::NotFound)
}

/// One MCFG allocation: an ECAM window for a PCI segment's bus range.
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
pub struct McfgEntry {
    /// Physical base address of the ECAM window (bus 0 of the segment would be here).
    pub base: u64,
    /// PCI segment group.
    pub segment: u16,
    /// First bus decoded.
    pub start_bus: u8,
    /// Last bus decoded.
    pub end_bus: u8,
}

impl McfgEntry {
    /// Physical address of the configuration space of `start_bus`.
    pub fn start_address(&self) -> u64 {
        self.base + (u64::from(self.start_bus) << 20)
    }

    /// Size in bytes of the window for `start_bus..=end_bus`.
    pub fn window_len(&self) -> u64 {
        (u64::from(self.end_bus) - u64::from(self.start_bus) + 1) << 20
    }
}

/// Offset of the first allocation in the MCFG table (header plus 8 reserved bytes).
const MCFG_ENTRIES_OFFSET: usize = 44;
const MCFG_ENTRY_LEN: usize = 16;

/// Parses one 16-byte MCFG allocation entry.
pub fn parse_mcfg_entry(b: &[u8]) -> Result<McfgEntry, Error> {
    if b.len() < MCFG_ENTRY_LEN {
        return Err(Error::Truncated);
    }
    let entry = McfgEntry {
        base: le64(b, 0),
        segment: u16::from_le_bytes([b[8], b[9]]),
        start_bus: b[10],
        end_bus: b[11],
    };
    if entry.end_bus < entry.start_bus || entry.base & 0xf_ffff != 0 {
        return Err(Error::Invalid);
    }
    Ok(entry)
}

/// Number of allocation entries an MCFG table of `length` bytes holds.
pub fn mcfg_entry_count(length: u32) -> usize {
    (length as usize).saturating_sub(MCFG_ENTRIES_OFFSET) / MCFG_ENTRY_LEN
}

/// The first valid MCFG entry for segment 0 that decodes bus 0... or failing that any valid
/// segment-0 entry. Follows RSDP (at `rsdp_hint`, or scanned) -> XSDT/RSDT -> MCFG.
pub fn find_ecam<M: PhysRead + ?Sized>(mem: &M, rsdp_hint: u64) -> Result<McfgEntry, Error> {
    let (_, rsdp) = find_rsdp(mem, rsdp_hint)?;
    let (mcfg, header) = find_table(mem, &rsdp, b"MCFG")?;
    let mut best: Option<McfgEntry> = None;
    for i in 0..mcfg_entry_count(header.length) {
        let mut b = [0u8; MCFG_ENTRY_LEN];
        mem.read(
            mcfg + (MCFG_ENTRIES_OFFSET + i * MCFG_ENTRY_LEN) as u64,
            &mut b,
        )?;
        let Ok(entry) = parse_mcfg_entry(&b) else {
            continue;
        };
        if entry.segment != 0 {
            continue;
        }
        if entry.start_bus == 0 {
            return Ok(entry);
        }
        best.get_or_insert(entry);
    }
    best.ok_or(Error::NotFound)
}
