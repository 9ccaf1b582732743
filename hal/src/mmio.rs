//! Memory-mapped register blocks.
//!
//! [`RegisterBlock`] is the access trait used by device logic (MSI-X tables, virtio common
//! configuration). [`Mmio`] implements it with volatile accesses to a mapped region;
//! `fake::FakeRegs` implements it over plain memory for host tests.
//!
//! Every access is bounds-checked against the block length: an out-of-range read returns
//! all-ones (what a PCI master abort returns) and an out-of-range write is dropped.

use core::ptr::NonNull;

/// Byte-addressed register access of 8, 16 and 32 bits, at naturally aligned offsets.
pub trait RegisterBlock {
    /// Length of the block in bytes.
    fn len(&self) -> usize;
    /// Whether the block is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Reads the 8-bit register at `offset`.
    fn read8(&self, offset: usize) -> u8;
    /// Reads the 16-bit register at `offset` (must be 2-aligned).
    fn read16(&self, offset: usize) -> u16;
    /// Reads the 32-bit register at `offset` (must be 4-aligned).
    fn read32(&self, offset: usize) -> u32;
    /// Writes the 8-bit register at `offset`.
    fn write8(&mut self, offset: usize, value: u8);
    /// Writes the 16-bit register at `offset` (must be 2-aligned).
    fn write16(&mut self, offset: usize, value: u16);
    /// Writes the 32-bit register at `offset` (must be 4-aligned).
    fn write32(&mut self, offset: usize, value: u32);
}

/// Whether an access of `size` bytes at `offset` is aligned and inside a block of `len` bytes.
pub(crate) fn access_ok(offset: usize, size: usize, len: usize) -> bool {
    offset.is_multiple_of(size) && offset.checked_add(size).is_some_and(|end| end <= len)
}

/// A mapped MMIO region accessed with volatile loads and stores.
#[derive(Debug)]
pub struct Mmio {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: an `Mmio` is a handle to device registers; moving it to another context does not
// create aliasing Rust references, every access is a volatile load/store.
unsafe impl Send for Mmio {}

impl Mmio {
    /// Wraps the region `[base, base + len)`.
    ///
    /// # Safety
    /// The region must be mapped (uncached for device memory), valid for volatile reads and
    /// writes of 1, 2 and 4 bytes for the lifetime of the returned value, `base` must be 4-byte
    /// aligned, and no Rust reference may point into the region meanwhile.
    pub unsafe fn new(base: NonNull<u8>, len: usize) -> Self {
        Self { base, len }
    }

    /// The start of the region.
    pub fn base(&self) -> NonNull<u8> {
        self.base
    }

    fn ptr<T>(&self, offset: usize) -> Option<*mut T> {
        if access_ok(offset, size_of::<T>(), self.len) {
            // `offset` is inside the region (checked above), so the pointer stays in bounds.
            Some(self.base.as_ptr().wrapping_add(offset).cast::<T>())
        } else {
            None
        }
    }
}

macro_rules! mmio_rw {
    ($read:ident, $write:ident, $t:ty) => {
        fn $read(&self, offset: usize) -> $t {
            match self.ptr::<$t>(offset) {
                // SAFETY: `ptr` checked that the access is aligned and inside the region, which
                // the creator of `Mmio` promised is mapped and valid for volatile access.
                Some(p) => unsafe { p.read_volatile() },
                None => <$t>::MAX,
            }
        }
        fn $write(&mut self, offset: usize, value: $t) {
            if let Some(p) = self.ptr::<$t>(offset) {
                // SAFETY: as for the read: aligned, in bounds, mapped and valid per `new`.
                unsafe { p.write_volatile(value) }
            }
        }
    };
}

impl RegisterBlock for Mmio {
    fn len(&self) -> usize {
        self.len
    }
    mmio_rw!(read8, write8, u8);
    mmio_rw!(read16, write16, u16);
    mmio_rw!(read32, write32, u32);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_ok_checks_alignment_and_bounds() {
        assert!(access_ok(0, 4, 4));
        assert!(!access_ok(2, 4, 8));
        assert!(!access_ok(8, 4, 8));
        assert!(access_ok(6, 2, 8));
        assert!(!access_ok(usize::MAX - 1, 2, usize::MAX));
    }

    #[test]
    fn mmio_over_memory_reads_writes_and_bounds() {
        let mut backing = [0u32; 4];
        let base = NonNull::new(backing.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: `backing` outlives `regs`, is 4-aligned, 16 bytes long, and is not accessed
        // through references while `regs` is used.
        let mut regs = unsafe { Mmio::new(base, 16) };
        regs.write32(4, 0x1234_5678);
        assert_eq!(regs.read32(4), 0x1234_5678);
        assert_eq!(regs.read16(4), 0x5678);
        assert_eq!(regs.read8(7), 0x12);
        regs.write16(10, 0xbeef);
        assert_eq!(regs.read32(8), 0xbeef_0000);
        // Out of bounds and misaligned accesses do nothing and read as all-ones.
        regs.write32(16, 1);
        regs.write32(3, 1);
        assert_eq!(regs.read32(16), u32::MAX);
        assert_eq!(regs.read16(1), u16::MAX);
        // `regs` is not used past this point.
        assert_eq!(backing, [0, 0x1234_5678, 0xbeef_0000, 0]);
    }
}
