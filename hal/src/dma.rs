//! The `virtio_drivers::Hal` implementation on top of `rt::mem`.
//!
//! `rt` identity-maps all RAM below 4 GiB and x86 DMA is cache-coherent, so sharing a buffer
//! with a device is just handing over its physical address (= its virtual address); nothing
//! is bounced or copied back. DMA pages come zeroed from `rt::mem::alloc_dma`.

use core::ptr::NonNull;
use virtio_drivers::{BufferDirection, Hal, PhysAddr};

/// `virtio_drivers::Hal` for iConnect images.
#[derive(Debug)]
pub struct VirtioHal;

// SAFETY: `dma_alloc` returns zeroed, page-aligned, physically contiguous memory owned by the
// caller until `dma_dealloc` (or paddr 0, which `virtio_drivers::Dma` treats as failure);
// `mmio_phys_to_virt` returns a mapping of exactly the requested physical range; `share`
// returns an address at which the device sees the buffer's bytes (identity mapping, coherent
// DMA), valid until `unshare`.
unsafe impl Hal for VirtioHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        match rt::mem::alloc_dma(pages) {
            Some((paddr, vaddr)) => (paddr, vaddr),
            None => {
                log::error!("dma_alloc: out of memory for {pages} pages");
                (0, NonNull::dangling())
            }
        }
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) -> i32 {
        // SAFETY: virtio-drivers passes back exactly what `dma_alloc` returned, once, after the
        // device stopped using it (the trait's contract).
        unsafe { rt::mem::free_dma(paddr, pages) };
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        match rt::mem::map_mmio(paddr, size) {
            Some(p) => p,
            // The trait offers no error path; a BAR that cannot be mapped is a platform bug.
            None => panic!("cannot map MMIO {paddr:#x}+{size:#x}"),
        }
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        // Identity-mapped, coherent: the device reads and writes the buffer in place.
        rt::mem::virt_to_phys(buffer.as_ptr().cast::<u8>())
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {
        // Nothing to copy back or unmap: the device wrote the buffer in place.
    }
}
