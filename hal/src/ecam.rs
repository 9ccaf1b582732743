//! PCI Express ECAM: configuration space as memory, 4 KiB per function, 1 MiB per bus.

use crate::pci::{Bdf, ConfigSpace};
use core::ptr::NonNull;
use virtio_drivers::transport::pci::bus::{ConfigurationAccess, DeviceFunction};

/// A mapped ECAM window covering buses `start_bus..=end_bus`.
#[derive(Debug)]
pub struct Ecam {
    base: NonNull<u8>,
    start_bus: u8,
    end_bus: u8,
}

// SAFETY: `Ecam` only performs volatile MMIO through a raw pointer; it holds no references.
unsafe impl Send for Ecam {}

impl Ecam {
    /// Wraps an ECAM window whose first byte (bus `start_bus`, device 0, function 0, offset 0)
    /// is at `base`.
    ///
    /// # Safety
    /// `base` must be 4-byte aligned and mapped (uncached) for `(end_bus - start_bus + 1)` MiB,
    /// valid for volatile 32-bit reads and writes while any `Ecam` made from it lives, and no
    /// Rust reference may point into that window.
    pub unsafe fn new(base: NonNull<u8>, start_bus: u8, end_bus: u8) -> Self {
        Self {
            base,
            start_bus,
            end_bus,
        }
    }

    /// First bus of the window.
    pub fn start_bus(&self) -> u8 {
        self.start_bus
    }

    /// Last bus of the window.
    pub fn end_bus(&self) -> u8 {
        self.end_bus
    }

    fn ptr(&self, bdf: Bdf, offset: u16) -> Option<*mut u32> {
        if bdf.bus > self.end_bus || offset >= crate::pci::CONFIG_SPACE_SIZE {
            return None;
        }
        let at = bdf.ecam_offset(self.start_bus)? + usize::from(offset & !3);
        // In bounds: bus is within the window and the offset within the 4 KiB function space.
        Some(self.base.as_ptr().wrapping_add(at).cast::<u32>())
    }

    /// A second handle to the same window.
    ///
    /// # Safety
    /// Both handles write the same registers; the caller must not let them interleave
    /// multi-step register sequences (e.g. BAR sizing) on the same function.
    pub unsafe fn alias(&self) -> Self {
        Self {
            base: self.base,
            start_bus: self.start_bus,
            end_bus: self.end_bus,
        }
    }
}

impl ConfigSpace for Ecam {
    fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
        match self.ptr(bdf, offset) {
            // SAFETY: `ptr` bounds-checked the access against the window that `new`'s caller
            // promised is mapped and valid for volatile access; it is 4-byte aligned.
            Some(p) => unsafe { p.read_volatile() },
            None => u32::MAX,
        }
    }

    fn write32(&mut self, bdf: Bdf, offset: u16, value: u32) {
        if let Some(p) = self.ptr(bdf, offset) {
            // SAFETY: as for `read32`.
            unsafe { p.write_volatile(value) }
        }
    }
}

fn to_bdf(df: DeviceFunction) -> Option<Bdf> {
    Bdf::new(df.bus, df.device, df.function)
}

/// Lets `virtio-drivers`' PCI transport use the ECAM window.
impl ConfigurationAccess for Ecam {
    fn read_word(&self, device_function: DeviceFunction, register_offset: u8) -> u32 {
        to_bdf(device_function).map_or(u32::MAX, |bdf| self.read32(bdf, u16::from(register_offset)))
    }

    fn write_word(&mut self, device_function: DeviceFunction, register_offset: u8, data: u32) {
        if let Some(bdf) = to_bdf(device_function) {
            self.write32(bdf, u16::from(register_offset), data);
        }
    }

    unsafe fn unsafe_clone(&self) -> Self {
        // SAFETY: the caller of `unsafe_clone` promises to use the clone for reads of
        // read-only fields only, which cannot interleave badly with our writes.
        unsafe { self.alias() }
    }
}

/// Converts a BDF to `virtio-drivers`' type.
pub fn device_function(bdf: Bdf) -> DeviceFunction {
    DeviceFunction {
        bus: bdf.bus,
        device: bdf.device,
        function: bdf.function,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecam_addresses_functions_and_bounds() {
        // Two buses (1 and 2) of backing memory.
        let mut mem = vec![0u32; (2 << 20) / 4];
        let base = NonNull::new(mem.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: `mem` is 2 MiB, 4-aligned, outlives `ecam` and is only touched through it
        // until `ecam` is dropped.
        let mut ecam = unsafe { Ecam::new(base, 1, 2) };
        let bdf = Bdf::new(2, 3, 1).unwrap();
        ecam.write32(bdf, 0x10, 0xfeed_f00d);
        assert_eq!(ecam.read32(bdf, 0x10), 0xfeed_f00d);
        assert_eq!(ecam.read16(bdf, 0x12), 0xfeed);
        // Outside the window: all-ones, writes dropped.
        assert_eq!(ecam.read32(Bdf::new(0, 0, 0).unwrap(), 0), u32::MAX);
        assert_eq!(ecam.read32(Bdf::new(3, 0, 0).unwrap(), 0), u32::MAX);
        assert_eq!(ecam.read32(bdf, 4096), u32::MAX);
        ecam.write32(Bdf::new(3, 0, 0).unwrap(), 0, 1);
        let df = device_function(bdf);
        assert_eq!(ecam.read_word(df, 0x10), 0xfeed_f00d);
        // `ecam` is not used past this point.
        let idx = ((1 << 20) | (3 << 15) | (1 << 12) | 0x10) / 4;
        assert_eq!(mem[idx], 0xfeed_f00d);
        assert_eq!(mem.iter().filter(|&&w| w != 0).count(), 1);
    }
}
