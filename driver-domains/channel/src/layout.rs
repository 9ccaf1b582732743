//! Control page offsets, ring descriptors and the channel layout (see the crate documentation
//! for the table).
//!
//! The frontend computes a [`Layout`] from its [`RingSpec`]s ([`Layout::plan`]) and writes it
//! ([`Layout::write`]); the backend copies the header out once and validates it against its
//! own view of the region ([`Layout::read`]). After that, nothing the frontend writes into the
//! header changes what the backend does.

use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use xen_abi::PAGE_SIZE;
use xen_abi::ring::{MAX_RING_PAGE_ORDER, RING_HEADER_SIZE, ring_entries};
use xen_abi::shmem::SharedMem;

use crate::Error;

/// `"ICCH"` in little-endian.
pub const MAGIC: u32 = u32::from_le_bytes(*b"ICCH");
/// Layout version of this crate.
pub const VERSION: u32 = 1;
/// Most rings in one channel.
pub const MAX_RINGS: usize = 4;
/// Doorbell vectors a descriptor may name (`0..MAX_VECTORS`).
pub const MAX_VECTORS: u32 = 64;

/// Header offsets.
pub mod off {
    /// Magic.
    pub const MAGIC: usize = 0x000;
    /// Layout version.
    pub const VERSION: usize = 0x004;
    /// Region size (u64).
    pub const REGION_BYTES: usize = 0x008;
    /// Number of rings.
    pub const RING_COUNT: usize = 0x010;
    /// First page of the data area.
    pub const DATA_FIRST: usize = 0x014;
    /// Pages of the data area.
    pub const DATA_PAGES: usize = 0x018;
    /// Reserved bytes after the header fields.
    pub const HEADER_RESERVED: usize = 0x01c;
    /// Frontend end block.
    pub const FRONT_END: usize = 0x040;
    /// Backend end block.
    pub const BACK_END: usize = 0x080;
    /// Ring descriptors.
    pub const RINGS: usize = 0x100;
    /// Size of one ring descriptor.
    pub const RING_DESC: usize = 16;
    /// Frontend key area.
    pub const FRONT_KEYS: usize = 0x200;
    /// Backend key area.
    pub const BACK_KEYS: usize = 0x900;
    /// Size of each key area.
    pub const KEY_AREA: usize = 0x700;

    /// Offsets inside an end block.
    pub mod end {
        /// Xenbus state.
        pub const STATE: usize = 0x00;
        /// This end's generation.
        pub const GENERATION: usize = 0x04;
        /// The peer generation this end answers.
        pub const PEER_GENERATION: usize = 0x08;
        /// Heartbeat counter.
        pub const HEARTBEAT: usize = 0x0c;
        /// Key seqlock.
        pub const KEYS_SEQ: usize = 0x10;
        /// Key area length.
        pub const KEYS_LEN: usize = 0x14;
    }
}

const _: () = assert!(off::FRONT_KEYS + off::KEY_AREA == off::BACK_KEYS);
const _: () = assert!(off::BACK_KEYS + off::KEY_AREA == PAGE_SIZE);
const _: () = assert!(off::RINGS + MAX_RINGS * off::RING_DESC <= off::FRONT_KEYS);

/// Which end of the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The guest side (initialises the layout).
    Frontend,
    /// The driver domain.
    Backend,
}

impl Side {
    /// The other end.
    pub fn peer(self) -> Side {
        match self {
            Side::Frontend => Side::Backend,
            Side::Backend => Side::Frontend,
        }
    }
    /// Offset of this end's block.
    pub fn block(self) -> usize {
        match self {
            Side::Frontend => off::FRONT_END,
            Side::Backend => off::BACK_END,
        }
    }
    /// Offset of this end's key area.
    pub fn key_area(self) -> usize {
        match self {
            Side::Frontend => off::FRONT_KEYS,
            Side::Backend => off::BACK_KEYS,
        }
    }
}

/// What a frontend asks for in one ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RingSpec {
    /// `ring-page-order`: the ring has `2^page_order` pages (≤ [`MAX_RING_PAGE_ORDER`]).
    pub page_order: u32,
    /// Slot size of the ring protocol (`RingProtocol::SLOT`).
    pub slot_bytes: u32,
    /// Doorbell vector for this ring (< [`MAX_VECTORS`]).
    pub vector: u32,
}

/// A ring descriptor as found in the control page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RingDesc {
    /// First region page of the ring.
    pub first_page: u32,
    /// `ring-page-order`.
    pub page_order: u32,
    /// Slot size.
    pub slot_bytes: u32,
    /// Doorbell vector.
    pub vector: u32,
}

impl RingDesc {
    /// Number of pages.
    pub fn pages(&self) -> u32 {
        1 << self.page_order
    }
    /// Region offset of the ring.
    pub fn offset(&self) -> usize {
        self.first_page as usize * PAGE_SIZE
    }
    /// Ring size in bytes.
    pub fn bytes(&self) -> usize {
        PAGE_SIZE << self.page_order
    }
    /// Entries of the ring.
    pub fn entries(&self) -> u32 {
        ring_entries(self.bytes(), self.slot_bytes as usize)
    }
    /// Checks the fields that do not depend on the region: order, slot size (multiple of 4,
    /// at least one entry fits), vector.
    fn check_shape(&self) -> Result<(), Error> {
        if self.page_order > MAX_RING_PAGE_ORDER
            || self.slot_bytes == 0
            || !self.slot_bytes.is_multiple_of(4)
            || self.slot_bytes as usize > PAGE_SIZE - RING_HEADER_SIZE
            || self.vector >= MAX_VECTORS
        {
            return Err(Error::BadRing);
        }
        Ok(())
    }
}

/// A validated channel layout.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Layout {
    /// Region size in bytes.
    pub region_bytes: u64,
    /// Ring descriptors, ascending and disjoint, between the control page and the data area.
    pub rings: Vec<RingDesc>,
    /// First region page of the data area.
    pub data_first_page: u32,
    /// Pages of the data area.
    pub data_pages: u32,
}

impl Layout {
    /// Places `specs` one after the other from page 1 and gives the data area `data_pages`
    /// pages (`None`: every page left). [`Error::RegionTooSmall`] if it does not fit.
    pub fn plan(
        region_bytes: usize,
        specs: &[RingSpec],
        data_pages: Option<u32>,
    ) -> Result<Self, Error> {
        if specs.is_empty() || specs.len() > MAX_RINGS {
            return Err(Error::BadRing);
        }
        let region_pages =
            u32::try_from(region_bytes / PAGE_SIZE).map_err(|_| Error::RegionTooSmall)?;
        let mut next: u32 = 1;
        let mut rings = Vec::with_capacity(specs.len());
        for s in specs {
            let d = RingDesc {
                first_page: next,
                page_order: s.page_order,
                slot_bytes: s.slot_bytes,
                vector: s.vector,
            };
            d.check_shape()?;
            next = next.checked_add(d.pages()).ok_or(Error::RegionTooSmall)?;
            rings.push(d);
        }
        if next > region_pages {
            return Err(Error::RegionTooSmall);
        }
        let left = region_pages - next;
        let data_pages = match data_pages {
            None => left,
            Some(n) if n <= left => n,
            Some(_) => return Err(Error::RegionTooSmall),
        };
        let l = Self {
            region_bytes: region_bytes as u64,
            rings,
            data_first_page: next,
            data_pages,
        };
        l.validate(region_bytes)?;
        Ok(l)
    }

    /// Checks the layout against a region of `region_bytes` bytes.
    pub fn validate(&self, region_bytes: usize) -> Result<(), Error> {
        if self.region_bytes != region_bytes as u64 {
            return Err(Error::BadRegionSize);
        }
        let region_pages = (region_bytes / PAGE_SIZE) as u64;
        if self.rings.is_empty() || self.rings.len() > MAX_RINGS {
            return Err(Error::BadRing);
        }
        let mut next: u64 = 1; // page 0 is the control page
        for r in &self.rings {
            r.check_shape()?;
            if (r.first_page as u64) < next {
                return Err(Error::BadRing);
            }
            next = r.first_page as u64 + r.pages() as u64;
        }
        if next > region_pages {
            return Err(Error::BadRing);
        }
        let data_end = self.data_first_page as u64 + self.data_pages as u64;
        if (self.data_first_page as u64) < next || data_end > region_pages {
            return Err(Error::BadDataArea);
        }
        Ok(())
    }

    /// Region offset of the data area.
    pub fn data_offset(&self) -> usize {
        self.data_first_page as usize * PAGE_SIZE
    }

    /// Writes the header and ring descriptors (frontend). The magic is stored last, with
    /// release ordering.
    pub fn write<M: SharedMem>(&self, mem: &M) {
        mem.write_bytes(
            off::HEADER_RESERVED,
            &[0u8; off::FRONT_END - off::HEADER_RESERVED],
        );
        mem.write_bytes(off::RINGS, &[0u8; MAX_RINGS * off::RING_DESC]);
        mem.store_u32(off::VERSION, VERSION, Ordering::Relaxed);
        mem.store_u64(off::REGION_BYTES, self.region_bytes);
        mem.store_u32(off::RING_COUNT, self.rings.len() as u32, Ordering::Relaxed);
        mem.store_u32(off::DATA_FIRST, self.data_first_page, Ordering::Relaxed);
        mem.store_u32(off::DATA_PAGES, self.data_pages, Ordering::Relaxed);
        for (i, r) in self.rings.iter().enumerate() {
            let mut b = [0u8; off::RING_DESC];
            b[0..4].copy_from_slice(&r.first_page.to_le_bytes());
            b[4..8].copy_from_slice(&r.page_order.to_le_bytes());
            b[8..12].copy_from_slice(&r.slot_bytes.to_le_bytes());
            b[12..16].copy_from_slice(&r.vector.to_le_bytes());
            mem.write_bytes(off::RINGS + i * off::RING_DESC, &b);
        }
        mem.store_u32(off::MAGIC, MAGIC, Ordering::Release);
    }

    /// Copies the header out of the control page once and validates it (backend).
    pub fn read<M: SharedMem>(mem: &M) -> Result<Self, Error> {
        if mem.len() < PAGE_SIZE {
            return Err(Error::RegionTooSmall);
        }
        let mut h = [0u8; off::FRONT_END];
        if mem.load_u32(off::MAGIC, Ordering::Acquire) != MAGIC {
            return Err(Error::BadMagic);
        }
        mem.read_bytes(0, &mut h);
        let mut d = [0u8; MAX_RINGS * off::RING_DESC];
        mem.read_bytes(off::RINGS, &mut d);
        Self::parse(&h, &d, mem.len())
    }

    /// Parses private copies of the header and the descriptor table.
    pub fn parse(header: &[u8], descs: &[u8], region_bytes: usize) -> Result<Self, Error> {
        if header.len() < off::FRONT_END || descs.len() < MAX_RINGS * off::RING_DESC {
            return Err(Error::Truncated);
        }
        let u32_at = |b: &[u8], o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        if u32_at(header, off::MAGIC) != MAGIC {
            return Err(Error::BadMagic);
        }
        if u32_at(header, off::VERSION) != VERSION {
            return Err(Error::BadVersion);
        }
        let region = u32_at(header, off::REGION_BYTES) as u64
            | (u32_at(header, off::REGION_BYTES + 4) as u64) << 32;
        if region != region_bytes as u64 {
            return Err(Error::BadRegionSize);
        }
        let n = u32_at(header, off::RING_COUNT) as usize;
        if n == 0 || n > MAX_RINGS {
            return Err(Error::BadRing);
        }
        let rings = (0..n)
            .map(|i| {
                let b = &descs[i * off::RING_DESC..];
                RingDesc {
                    first_page: u32_at(b, 0),
                    page_order: u32_at(b, 4),
                    slot_bytes: u32_at(b, 8),
                    vector: u32_at(b, 12),
                }
            })
            .collect();
        let l = Self {
            region_bytes: region,
            rings,
            data_first_page: u32_at(header, off::DATA_FIRST),
            data_pages: u32_at(header, off::DATA_PAGES),
        };
        l.validate(region_bytes)?;
        Ok(l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xen_abi::shmem::HostMem;

    fn spec(order: u32, slot: u32, vector: u32) -> RingSpec {
        RingSpec {
            page_order: order,
            slot_bytes: slot,
            vector,
        }
    }

    #[test]
    fn plan_write_read_round_trip() {
        let m = HostMem::pages(64);
        let l = Layout::plan(
            m.len(),
            &[spec(0, 12, 0), spec(0, 8, 0), spec(2, 112, 1)],
            None,
        )
        .unwrap();
        assert_eq!(
            l.rings.iter().map(|r| r.first_page).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!((l.data_first_page, l.data_pages), (7, 57));
        assert_eq!(l.rings[0].entries(), 256);
        assert_eq!(l.rings[2].entries(), 128);
        l.write(&m);
        assert_eq!(Layout::read(&m), Ok(l.clone()));
        let mut magic = [0u8; 4];
        m.read_bytes(0, &mut magic);
        assert_eq!(&magic, b"ICCH");
        // The backend's view of the region size must match.
        let mut h = [0u8; off::FRONT_END];
        m.read_bytes(0, &mut h);
        let mut d = [0u8; MAX_RINGS * off::RING_DESC];
        m.read_bytes(off::RINGS, &mut d);
        assert_eq!(
            Layout::parse(&h, &d, m.len() * 2),
            Err(Error::BadRegionSize)
        );
    }

    #[test]
    fn plan_refuses_what_does_not_fit() {
        assert_eq!(
            Layout::plan(4096, &[spec(0, 12, 0)], None),
            Err(Error::RegionTooSmall)
        );
        assert_eq!(
            Layout::plan(2 * 4096, &[spec(0, 12, 0)], Some(1)),
            Err(Error::RegionTooSmall)
        );
        assert_eq!(
            Layout::plan(8 * 4096, &[spec(5, 12, 0)], None),
            Err(Error::BadRing)
        );
        assert_eq!(
            Layout::plan(8 * 4096, &[spec(0, 13, 0)], None),
            Err(Error::BadRing)
        );
        assert_eq!(
            Layout::plan(8 * 4096, &[spec(0, 4096, 0)], None),
            Err(Error::BadRing)
        );
        assert_eq!(
            Layout::plan(8 * 4096, &[spec(0, 12, 64)], None),
            Err(Error::BadRing)
        );
        assert_eq!(Layout::plan(8 * 4096, &[], None), Err(Error::BadRing));
        assert_eq!(
            Layout::plan(8 * 4096, &[spec(0, 8, 0); 5], None),
            Err(Error::BadRing)
        );
        let l = Layout::plan(2 * 4096, &[spec(0, 12, 0)], None).unwrap();
        assert_eq!(l.data_pages, 0);
    }

    fn tampered(f: impl Fn(&HostMem)) -> Result<Layout, Error> {
        let m = HostMem::pages(16);
        Layout::plan(m.len(), &[spec(0, 12, 0), spec(1, 8, 1)], None)
            .unwrap()
            .write(&m);
        f(&m);
        Layout::read(&m)
    }

    #[test]
    fn backend_refuses_hostile_headers() {
        let st = |o: usize, v: u32| move |m: &HostMem| m.store_u32(o, v, Ordering::Relaxed);
        assert_eq!(tampered(st(off::MAGIC, 0)), Err(Error::BadMagic));
        assert_eq!(tampered(st(off::VERSION, 2)), Err(Error::BadVersion));
        assert_eq!(
            tampered(st(off::REGION_BYTES + 4, 1)),
            Err(Error::BadRegionSize)
        );
        assert_eq!(tampered(st(off::RING_COUNT, 0)), Err(Error::BadRing));
        assert_eq!(tampered(st(off::RING_COUNT, 5)), Err(Error::BadRing));
        assert_eq!(
            tampered(st(off::RINGS, 0)),
            Err(Error::BadRing),
            "ring over the control page"
        );
        assert_eq!(
            tampered(st(off::RINGS + 16, 1)),
            Err(Error::BadRing),
            "rings overlap"
        );
        assert_eq!(
            tampered(st(off::RINGS + 16, 15)),
            Err(Error::BadRing),
            "ring leaves the region"
        );
        assert_eq!(tampered(st(off::RINGS + 16, u32::MAX)), Err(Error::BadRing));
        assert_eq!(tampered(st(off::RINGS + 4, 9)), Err(Error::BadRing));
        assert_eq!(tampered(st(off::RINGS + 8, 2)), Err(Error::BadRing));
        assert_eq!(tampered(st(off::RINGS + 12, 1000)), Err(Error::BadRing));
        assert_eq!(
            tampered(st(off::DATA_FIRST, 2)),
            Err(Error::BadDataArea),
            "data over a ring"
        );
        assert_eq!(tampered(st(off::DATA_PAGES, 13)), Err(Error::BadDataArea));
        assert_eq!(
            tampered(st(off::DATA_PAGES, u32::MAX)),
            Err(Error::BadDataArea)
        );
        assert_eq!(
            tampered(st(off::DATA_FIRST, u32::MAX)),
            Err(Error::BadDataArea)
        );
        assert!(
            tampered(st(off::DATA_PAGES, 3)).is_ok(),
            "a smaller data area is fine"
        );
    }
}
