//! The PVH memory map (`hvm_memmap_table_entry`, Xen's `arch-x86/hvm/start_info.h`) and the
//! computation of the RAM the frame allocator may hand out.

/// Size of one `hvm_memmap_table_entry`: addr u64, size u64, type u32, reserved u32.
pub const ENTRY_SIZE: usize = 24;
/// `XEN_HVM_MEMMAP_TYPE_RAM`.
pub const TYPE_RAM: u32 = 1;
/// Frame size.
pub const PAGE: u64 = 4096;

/// One memory map entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// First byte.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// E820-style type; 1 is RAM.
    pub kind: u32,
}

impl Region {
    /// Parses one entry from its 24 little-endian bytes.
    pub fn parse(bytes: &[u8; ENTRY_SIZE]) -> Region {
        let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap_or([0; 8]));
        let kind = u32::from_le_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
        Region { addr: u64_at(0), size: u64_at(8), kind }
    }

    /// One past the last byte, saturating.
    pub fn end(&self) -> u64 {
        self.addr.saturating_add(self.size)
    }
}

/// Calls `emit(start, end)` for every page-aligned range of RAM in `map` that lies inside
/// `[floor, ceiling)` and outside every range of `reserved`. Overlapping or unsorted entries are
/// tolerated: a byte counts as RAM only if no non-RAM entry covers it.
pub fn usable_ranges(
    map: &[Region],
    floor: u64,
    ceiling: u64,
    reserved: &[(u64, u64)],
    mut emit: impl FnMut(u64, u64),
) {
    for ram in map.iter().filter(|r| r.kind == TYPE_RAM) {
        let start = align_up(ram.addr.max(floor));
        let end = align_down(ram.end().min(ceiling));
        if start >= end {
            continue;
        }
        // Cut out every non-RAM region and every reserved range: walk the range in pieces.
        let mut cursor = start;
        while cursor < end {
            // The nearest hole starting at or covering `cursor`.
            let holes = map
                .iter()
                .filter(|r| r.kind != TYPE_RAM)
                .map(|r| (align_down(r.addr), align_up(r.end())))
                .chain(reserved.iter().map(|&(s, e)| (align_down(s), align_up(e))));
            let mut piece_end = end;
            let mut skip_to = None;
            for (hs, he) in holes {
                if hs <= cursor && he > cursor {
                    skip_to = Some(skip_to.map_or(he, |s: u64| s.max(he)));
                } else if hs > cursor && hs < piece_end {
                    piece_end = hs;
                }
            }
            match skip_to {
                Some(next) => cursor = next,
                None => {
                    emit(cursor, piece_end);
                    cursor = piece_end;
                }
            }
        }
    }
}

fn align_up(x: u64) -> u64 {
    x.saturating_add(PAGE - 1) & !(PAGE - 1)
}

fn align_down(x: u64) -> u64 {
    x & !(PAGE - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::vec::Vec;

    fn ranges(map: &[Region], floor: u64, ceil: u64, reserved: &[(u64, u64)]) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        usable_ranges(map, floor, ceil, reserved, |s, e| out.push((s, e)));
        out
    }

    const fn ram(addr: u64, size: u64) -> Region {
        Region { addr, size, kind: TYPE_RAM }
    }

    #[test]
    fn parses_little_endian_entry() {
        let mut b = [0u8; ENTRY_SIZE];
        b[0..8].copy_from_slice(&0x10_0000u64.to_le_bytes());
        b[8..16].copy_from_slice(&0x3f0_0000u64.to_le_bytes());
        b[16..20].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(Region::parse(&b), ram(0x10_0000, 0x3f0_0000));
    }

    #[test]
    fn qemu_like_map_minus_kernel() {
        // What QEMU's PVH option ROM reports for -m 64M on q35.
        let map = [
            ram(0, 0x9fc00),
            Region { addr: 0x9fc00, size: 0x400, kind: 2 },
            Region { addr: 0xf0000, size: 0x10000, kind: 2 },
            ram(0x10_0000, 0x3f0_0000 - 0x2_0000),
            Region { addr: 0x3fe_0000, size: 0x2_0000, kind: 2 },
            Region { addr: 0xb000_0000, size: 0x1000_0000, kind: 2 },
        ];
        let got = ranges(&map, 0x10_0000, 1 << 32, &[(0x10_0000, 0x18_0123)]);
        assert_eq!(got, [(0x18_1000, 0x3fe_0000)]);
    }

    #[test]
    fn holes_inside_ram_and_unaligned_edges() {
        let map = [ram(0x1234, 0x10_0000), Region { addr: 0x5_0010, size: 0x10, kind: 2 }];
        let got = ranges(&map, 0, u64::MAX, &[(0x8_0000, 0x9_0000)]);
        assert_eq!(got, [(0x2000, 0x5_0000), (0x5_1000, 0x8_0000), (0x9_0000, 0x10_1000)]);
    }

    #[test]
    fn hostile_entries_do_not_overflow() {
        let map = [ram(u64::MAX - 10, 100), ram(0, 0), ram(0x1000, u64::MAX)];
        let got = ranges(&map, 0x1000, 1 << 32, &[]);
        assert_eq!(got, [(0x1000, 1 << 32)]);
    }
}
