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
    static mut rt_pd: [u64; 2048];
    static rt_pml4: u8;
    static rt_pdpt: u8;
    static rt_stack_guard: u8;
}

/// The boot page tables: PML4 (512 entries), PDPT (512) and the four PDs (2048) that
/// identity-map the low 4 GiB. For [`crate::integrity`], which only reads them.
pub(crate) fn boot_tables() -> (*const u64, *const u64, *const u64) {
    (
        core::ptr::addr_of!(rt_pml4).cast(),
        core::ptr::addr_of!(rt_pdpt).cast(),
        core::ptr::addr_of!(rt_pd).cast(),
    )
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

/// One past the highest RAM address of the memory map.
pub(crate) fn ram_end() -> u64 {
    let ram = RAM.lock();
    ram.0[..ram.1].iter().map(|&(_, e)| e).max().unwrap_or(0)
}

fn overlaps_ram(start: u64, end: u64) -> bool {
    let ram = RAM.lock();
    ram.0[..ram.1].iter().any(|&(s, e)| s < end && start < e)
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

/// How a mapping may be cached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caching {
    /// Device registers: uncached (PCD|PWT).
    Uncached,
    /// Memory behind a BAR that behaves like RAM (e.g. an ivshmem region): write-back, for the
    /// 2 MiB pages the range covers entirely; partial pages stay uncached, since they may hold
    /// other devices' registers.
    WriteBack,
}

/// Highest identity-mappable address + 1: the lower canonical half of 4-level paging.
const MAP_LIMIT: u64 = 1 << 47;

/// One past the highest physical address this CPU can address (CPUID 0x80000008 MAXPHYADDR,
/// 36 bits when the leaf is missing), capped at what 4-level identity paging reaches.
pub fn phys_limit() -> u64 {
    let bits = if crate::arch::cpuid(0x8000_0000, 0)[0] >= 0x8000_0008 {
        crate::arch::cpuid(0x8000_0008, 0)[0] & 0xff
    } else {
        36
    };
    (1u64 << bits.clamp(32, 52)).min(MAP_LIMIT)
}
const TWO_MIB: u64 = 2 << 20;
const PRESENT: u64 = 1;
const WRITABLE: u64 = 2;
const HUGE: u64 = 1 << 7;
const UNCACHED: u64 = 0x18; // PWT | PCD
const ACCESSED_DIRTY: u64 = 0x60;

/// The page-table entry for `index` of the table at `table`, creating the next-level table
/// (zeroed: nothing present) when absent.
///
/// # Safety
/// `table` must be one of our identity-mapped page tables, and MMIO_MAP_LOCK must be held.
unsafe fn next_table(table: *mut u64, index: usize) -> Option<*mut u64> {
    // SAFETY: in bounds (index < 512, the callers mask it) of a page table we own (contract).
    let entry = unsafe { table.add(index) };
    // SAFETY: as above.
    let value = unsafe { entry.read_volatile() };
    if value & PRESENT != 0 {
        if value & HUGE != 0 {
            return None; // a 1 GiB page: not something we create
        }
        return Some(phys_to_virt(value & 0x000f_ffff_ffff_f000) as *mut u64);
    }
    let frame = FRAMES.lock().alloc(1, 1).ok()?;
    let new = phys_to_virt(frame) as *mut u64;
    // SAFETY: a fresh frame we own; clearing it makes every entry not-present.
    unsafe { core::ptr::write_bytes(new, 0, 512) };
    // SAFETY: publishing a fully initialised (empty) table in our own table (contract).
    unsafe { entry.write_volatile(frame | PRESENT | WRITABLE) };
    Some(new)
}

/// Maps (or re-flags) the 2 MiB identity pages covering `[start, end)`.
fn map_identity(start: u64, end: u64, caching: Caching) -> Option<()> {
    let _guard = MMIO_MAP_LOCK.lock();
    let pml4 = core::ptr::addr_of!(rt_pml4) as *mut u64;
    let mut flush = false;
    for page in (start / TWO_MIB)..end.div_ceil(TWO_MIB) {
        let base = page * TWO_MIB;
        if overlaps_ram(base, base + TWO_MIB) {
            if caching == Caching::Uncached {
                log::warn!("map_mmio: {base:#x} shares a 2 MiB page with RAM; left write-back");
            }
            continue;
        }
        let whole = base >= start && base + TWO_MIB <= end;
        let flags = match caching {
            Caching::WriteBack if whole => PRESENT | WRITABLE | HUGE,
            _ => PRESENT | WRITABLE | HUGE | UNCACHED,
        };
        // SAFETY: the boot PML4 and every table below it are ours, identity-mapped; we hold
        // MMIO_MAP_LOCK (the only writer after boot).
        let pdpt = unsafe { next_table(pml4, ((base >> 39) & 511) as usize)? };
        // SAFETY: as above.
        let pd = unsafe { next_table(pdpt, ((base >> 30) & 511) as usize)? };
        // SAFETY: as above; index masked to the table.
        let entry = unsafe { pd.add(((base >> 21) & 511) as usize) };
        // SAFETY: as above.
        let old = unsafe { entry.read_volatile() };
        if old & PRESENT != 0 && old & HUGE == 0 {
            continue; // split into 4 KiB pages (the image's own region): never remapped
        }
        let new = base | flags;
        // The CPU sets Accessed and Dirty in entries it used: they are not a difference.
        if old & !ACCESSED_DIRTY != new {
            // SAFETY: as above.
            unsafe { entry.write_volatile(new) };
            flush |= old & PRESENT != 0;
        }
    }
    if flush {
        // A present translation changed: reload CR3 with the boot PML4 to flush the TLB. (Not
        // INVLPG: a CR3 write with a constant is what nested Xen under QEMU TCG handles reliably;
        // see notes/xen-in-qemu.md.)
        // SAFETY: the boot PML4 stays valid and maps everything it mapped before.
        unsafe { core::arch::asm!("mov cr3, {}", in(reg) pml4 as u64, options(nostack, preserves_flags)) };
    }
    crate::integrity::seal();
    Some(())
}

/// Makes `[paddr, paddr + len)` accessible, uncached, at the same virtual address: the 2 MiB
/// pages it covers are mapped (or re-flagged) uncached, except pages that hold RAM, which stay
/// write-back (with a warning). Any address below [`phys_limit`] can be mapped.
pub fn map_mmio(paddr: PhysAddr, len: usize) -> Option<NonNull<u8>> {
    map_physical(paddr, len, Caching::Uncached)
}

/// Like [`map_mmio`] with a choice of caching ([`Caching::WriteBack`] for RAM-like BARs).
pub fn map_physical(paddr: PhysAddr, len: usize, caching: Caching) -> Option<NonNull<u8>> {
    let end = paddr.checked_add(len as u64)?;
    if end > phys_limit() || len == 0 {
        return None;
    }
    map_identity(paddr, end, caching)?;
    NonNull::new(phys_to_virt(paddr))
}
