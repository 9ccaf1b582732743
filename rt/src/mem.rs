//! Physical memory: the frame allocator, the kernel heap, DMA buffers and MMIO mappings.
//!
//! All RAM below 4 GiB and the 3..4 GiB MMIO hole are identity-mapped by the boot page tables,
//! so a physical address is also a virtual one. Higher MMIO is mapped on demand by [`map_mmio`].

use core::ptr::NonNull;

use linked_list_allocator::LockedHeap;

use crate::frames::FrameAllocator;
use crate::memmap::PAGE;

/// A physical address.
pub type PhysAddr = u64;

/// Frames below 4 GiB: 2^20 frames, one bit each (128 KiB of `.bss`).
static FRAMES: spin::Mutex<FrameAllocator<16384>> = spin::Mutex::new(FrameAllocator::new());

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

static MMIO_MAP_LOCK: spin::Mutex<()> = spin::Mutex::new(());

unsafe extern "C" {
    static mut rt_pdpt: [u64; 512];
    static mut rt_pd: [u64; 2048];
    static rt_pml4: u8;
    static rt_stack_guard: u8;
}

/// Splits the boot 2 MiB page that holds the stack's guard page into 4 KiB pages and unmaps the
/// guard, so that a stack overflow faults instead of running into the page tables.
pub(crate) fn protect_stack_guard() {
    let guard = core::ptr::addr_of!(rt_stack_guard) as u64;
    let index = (guard >> 21) as usize;
    let Ok(table) = FRAMES.lock().alloc(1, 1) else {
        log::warn!("no frame for the stack guard page table; stack overflow will not be caught");
        return;
    };
    let ptes = phys_to_virt(table) as *mut u64;
    // SAFETY: `rt_pd` holds the boot page directories (identity-mapped, in .bss); nothing else
    // changes them this early in boot (single CPU, before `main`).
    let pde = unsafe { core::ptr::addr_of_mut!(rt_pd[index]) };
    // SAFETY: as above.
    let flags = unsafe { pde.read_volatile() } & 0x1f; // keep P, W, PWT, PCD; drop PS
    for i in 0..512u64 {
        let page = ((index as u64) << 21) | (i << 12);
        let entry = if page == guard { 0 } else { page | flags };
        // SAFETY: `table` is a fresh frame we own: 512 entries fit in it.
        unsafe { ptes.add(i as usize).write_volatile(entry) };
    }
    // SAFETY: the new table maps the same frames with the same attributes, minus the guard page
    // (which nothing uses); reloading CR3 with the boot PML4 flushes the old 2 MiB translation.
    unsafe {
        pde.write_volatile(table | (flags & 0x1b));
        core::arch::asm!("mov cr3, {}", in(reg) core::ptr::addr_of!(rt_pml4) as u64, options(nostack, preserves_flags));
    }
}

const MAX_RAM_RANGES: usize = 128;

/// RAM ranges of the memory map (start, end), kept so that MMIO mappings never change the
/// caching of a page that holds RAM.
static RAM: spin::Mutex<([(u64, u64); MAX_RAM_RANGES], usize)> = spin::Mutex::new(([(0, 0); MAX_RAM_RANGES], 0));

/// Records a RAM range of the memory map (including RAM not handed to the allocator).
pub(crate) fn note_ram(start: u64, end: u64) {
    let mut ram = RAM.lock();
    let n = ram.1;
    if n < MAX_RAM_RANGES {
        ram.0[n] = (start, end);
        ram.1 = n + 1;
    }
}

fn overlaps_ram(start: u64, end: u64) -> bool {
    let ram = RAM.lock();
    ram.0[..ram.1].iter().any(|&(s, e)| s < end && start < e)
}

/// Makes the boot 2 MiB pages covering `[start, end)` (below 4 GiB) uncached, except those that
/// hold RAM.
fn uncache_low(start: u64, end: u64) {
    const TWO_MIB: u64 = 2 << 20;
    let _guard = MMIO_MAP_LOCK.lock();
    for page in (start / TWO_MIB)..end.div_ceil(TWO_MIB).min(2048) {
        let base = page * TWO_MIB;
        if overlaps_ram(base, base + TWO_MIB) {
            log::warn!("map_mmio: {base:#x} shares a 2 MiB page with RAM; left write-back");
            continue;
        }
        // SAFETY: `rt_pd` holds the boot page directories (identity-mapped, in .bss); entries are
        // changed only here and under MMIO_MAP_LOCK.
        let entry = unsafe { core::ptr::addr_of_mut!(rt_pd[page as usize]) };
        // SAFETY: as above.
        let old = unsafe { entry.read_volatile() };
        if old & 0x18 != 0x18 {
            // SAFETY: as above; then the stale translation is flushed for this page.
            unsafe {
                entry.write_volatile(old | 0x18);
                core::arch::asm!("invlpg [{}]", in(reg) base, options(nostack, preserves_flags));
            }
        }
    }
}

/// Hands `[start, end)` to the frame allocator.
pub(crate) fn add_ram(start: u64, end: u64) {
    FRAMES.lock().add_range(start, end);
}

/// Carves the heap out of the free frames: `requested` bytes, or by default 3/8 of free RAM
/// (between 1 MiB and 64 MiB). Returns the heap size.
pub(crate) fn init_heap(requested: Option<usize>) -> usize {
    let free = FRAMES.lock().free_frames() * PAGE as usize;
    let size = requested.unwrap_or((free / 8 * 3).clamp(1 << 20, 64 << 20)).min(free / 4 * 3);
    let pages = size / PAGE as usize;
    let Ok(base) = FRAMES.lock().alloc(pages, 1) else {
        panic!("no room for a {} KiB heap", size / 1024);
    };
    // SAFETY: the frames were just taken from the allocator, so nothing else uses them; they are
    // identity-mapped RAM.
    unsafe { HEAP.lock().init(base as *mut u8, pages * PAGE as usize) };
    pages * PAGE as usize
}

/// Free frames and heap use, for diagnostics: (free frame bytes, heap used, heap size).
pub fn stats() -> (usize, usize, usize) {
    let free = FRAMES.lock().free_frames() * PAGE as usize;
    let heap = HEAP.lock();
    (free, heap.used(), heap.size())
}

/// Allocates `pages` zeroed, physically contiguous 4 KiB pages for device DMA.
pub fn alloc_dma(pages: usize) -> Option<(PhysAddr, NonNull<u8>)> {
    let paddr = FRAMES.lock().alloc(pages, 1).ok()?;
    let ptr = phys_to_virt(paddr);
    // SAFETY: the frames were just allocated to us and are identity-mapped RAM of that length.
    unsafe { core::ptr::write_bytes(ptr, 0, pages * PAGE as usize) };
    NonNull::new(ptr).map(|p| (paddr, p))
}

/// Returns DMA pages to the allocator.
///
/// # Safety
/// `paddr`/`pages` must come from one [`alloc_dma`] call, and neither the CPU nor any device may
/// use the pages afterwards.
pub unsafe fn free_dma(paddr: PhysAddr, pages: usize) {
    if FRAMES.lock().free(paddr, pages).is_err() {
        log::error!("free_dma({paddr:#x}, {pages}): not an allocated range; ignored");
    }
}

/// The virtual address of physical `paddr` (identity).
pub fn phys_to_virt(paddr: PhysAddr) -> *mut u8 {
    paddr as *mut u8
}

/// The physical address of virtual `vaddr` (identity).
pub fn virt_to_phys(vaddr: *const u8) -> PhysAddr {
    vaddr as PhysAddr
}

/// Makes `[paddr, paddr + len)` accessible, uncached, at the same virtual address. Below 4 GiB
/// the boot mapping's 2 MiB pages are switched to uncached (unless one holds RAM: then it stays
/// write-back, with a warning); above it, 1 GiB windows of uncached 2 MiB pages are added, up to
/// 512 GiB.
pub fn map_mmio(paddr: PhysAddr, len: usize) -> Option<NonNull<u8>> {
    let end = paddr.checked_add(len as u64)?;
    if end > (512u64 << 30) {
        return None;
    }
    if paddr < (4u64 << 30) {
        uncache_low(paddr, end.min(4u64 << 30));
    }
    if end > (4u64 << 30) {
        let _guard = MMIO_MAP_LOCK.lock();
        for gib in (paddr >> 30).max(4)..=((end - 1) >> 30) {
            // SAFETY: `rt_pdpt` is the boot PDPT (identity-mapped, in .bss); entries 4..512 are
            // only written here, under MMIO_MAP_LOCK.
            let entry = unsafe { core::ptr::addr_of_mut!(rt_pdpt[gib as usize]) };
            // SAFETY: as above; a plain read of our own page-table entry.
            if unsafe { entry.read_volatile() } & 1 != 0 {
                continue;
            }
            let pd = FRAMES.lock().alloc(1, 1).ok()?;
            let table = phys_to_virt(pd) as *mut u64;
            for i in 0..512u64 {
                let frame = (gib << 30) | (i << 21);
                // SAFETY: `pd` is a fresh frame we own: 512 entries fit in it.
                unsafe { table.add(i as usize).write_volatile(frame | 0x9b) }; // P|W|PWT|PCD|PS
            }
            // SAFETY: as above; publishing a fully initialised page directory. Not-present entries
            // are never cached by the TLB, so no flush is needed.
            unsafe { entry.write_volatile(pd | 0x3) };
        }
    }
    NonNull::new(phys_to_virt(paddr))
}
