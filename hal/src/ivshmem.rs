//! The `ivshmem-doorbell` PCI device (QEMU, vendor 0x1af4, device 0x1110): one iConnect
//! channel between two VMs.
//!
//! The device has three BARs: BAR0 holds 256 bytes of registers (`IVPosition` = this VM's peer
//! id, `Doorbell` = write `(peer << 16) | vector` to interrupt a peer), BAR1 the MSI-X table,
//! BAR2 the shared region (often a 64-bit prefetchable BAR, possibly above 4 GiB). When a peer
//! rings vector `v`, the device raises MSI-X entry `v`.
//!
//! Pure parts (host-tested with the fake configuration space): device matching
//! ([`is_ivshmem`], [`find_all`]), the BAR layout check ([`Layout`]), the register encodings
//! ([`Registers`], [`doorbell_value`]), the per-device doorbell counters fed by interrupt
//! handlers ([`Doorbells`]) and the pointer-backed [`SharedRegion`] implementing
//! `xen_abi::shmem::SharedMem`. The target-only [`Ivshmem`] puts them together on real
//! hardware through `rt` (BAR mapping, MSI vectors).

use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use alloc::vec::Vec;
use xen_abi::shmem::SharedMem;

use crate::Error;
use crate::mmio::RegisterBlock;
use crate::pci::{self, Bar, ConfigSpace, Function, Header, MsixCap};

/// PCI vendor ID (Red Hat / Qumranet, shared with virtio).
pub const VENDOR_ID: u16 = 0x1af4;
/// PCI device ID of ivshmem (plain and doorbell variants).
pub const DEVICE_ID: u16 = 0x1110;

/// BAR holding the registers.
pub const REGS_BAR: u8 = 0;
/// BAR holding the MSI-X table and PBA (doorbell variant only).
pub const MSIX_BAR: u8 = 1;
/// BAR mapping the shared region.
pub const SHMEM_BAR: u8 = 2;

/// Register offsets in BAR0.
pub mod reg {
    /// Interrupt mask (revision 0 INTx only; reserved in revision 1).
    pub const INTR_MASK: usize = 0x00;
    /// Interrupt status (revision 0 INTx only; reserved in revision 1).
    pub const INTR_STATUS: usize = 0x04;
    /// This VM's peer id (0..=65535), read-only.
    pub const IV_POSITION: usize = 0x08;
    /// Write-only: `(peer << 16) | vector` interrupts `peer` on `vector`.
    pub const DOORBELL: usize = 0x0c;
    /// Size of the register block.
    pub const LEN: usize = 0x100;
}

/// Whether a function is an ivshmem device.
pub fn is_ivshmem(header: &Header) -> bool {
    header.vendor_id == VENDOR_ID && header.device_id == DEVICE_ID && header.header_type == 0
}

/// Every ivshmem function reachable on buses `first_bus..=last_bus`, in enumeration order
/// (one per channel).
pub fn find_all<C: ConfigSpace + ?Sized>(cfg: &C, first_bus: u8, last_bus: u8) -> Vec<Function> {
    let mut v = Vec::new();
    pci::for_each_function(cfg, first_bus, last_bus, true, |f| {
        if is_ivshmem(&f.header) {
            v.push(f);
        }
        true
    });
    v
}

/// The value written to the doorbell register to interrupt `peer` on `vector`.
pub const fn doorbell_value(peer: u16, vector: u16) -> u32 {
    ((peer as u32) << 16) | vector as u32
}

/// The checked BAR layout of an ivshmem device.
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
pub struct Layout {
    /// BAR0: registers (memory, at least 256 bytes).
    pub regs: Bar,
    /// BAR2: the shared region (memory, power-of-two size).
    pub shmem: Bar,
    /// MSI-X, when the device has it (doorbell variant with vectors).
    pub msix: Option<MsixCap>,
}

impl Layout {
    /// Checks decoded BARs (and the MSI-X capability, if any) against what the device must
    /// look like. Unassigned BARs are [`Error::BarUnassigned`].
    pub fn new(bars: &[Option<Bar>; 6], msix: Option<MsixCap>) -> Result<Layout, Error> {
        let regs = bars[usize::from(REGS_BAR)].ok_or(Error::NotFound)?;
        let shmem = bars[usize::from(SHMEM_BAR)].ok_or(Error::NotFound)?;
        if !regs.is_memory() || !shmem.is_memory() {
            return Err(Error::Invalid);
        }
        if regs.size < reg::LEN as u64 || !shmem.size.is_power_of_two() {
            return Err(Error::Invalid);
        }
        if regs.address == 0 || shmem.address == 0 {
            return Err(Error::BarUnassigned);
        }
        if let Some(m) = msix {
            let table = bars[usize::from(m.table_bar)].ok_or(Error::BarUnassigned)?;
            if !table.is_memory()
                || !table.contains(u64::from(m.table_offset), m.table_len() as u64)
            {
                return Err(Error::Invalid);
            }
        }
        Ok(Layout { regs, shmem, msix })
    }

    /// Shared region size in bytes.
    pub fn shmem_len(&self) -> u64 {
        self.shmem.size
    }
}

/// The BAR0 registers.
pub struct Registers<R: RegisterBlock> {
    regs: R,
}

impl<R: RegisterBlock> Registers<R> {
    /// Wraps the register block (at least the 16 bytes of defined registers).
    pub fn new(regs: R) -> Result<Self, Error> {
        if regs.len() < reg::DOORBELL + 4 {
            return Err(Error::Truncated);
        }
        Ok(Self { regs })
    }

    /// This VM's peer id. A value above 65535 (a revision-0 device before the server answered
    /// reads -1) is [`Error::Invalid`].
    pub fn position(&self) -> Result<u16, Error> {
        u16::try_from(self.regs.read32(reg::IV_POSITION)).map_err(|_| Error::Invalid)
    }

    /// Interrupts `peer` on `vector`. The device ignores the write if the peer or vector is
    /// not connected; there is no way to tell.
    pub fn ring(&mut self, peer: u16, vector: u16) {
        self.regs
            .write32(reg::DOORBELL, doorbell_value(peer, vector));
    }
}

/// Devices whose interrupts can be counted at once.
pub const MAX_DEVICES: usize = 16;
/// Vectors per device whose interrupts are counted.
pub const MAX_VECTORS: usize = 4;

static RUNG: [[AtomicU32; MAX_VECTORS]; MAX_DEVICES] =
    [const { [const { AtomicU32::new(0) }; MAX_VECTORS] }; MAX_DEVICES];
static CLAIMED: [AtomicBool; MAX_DEVICES] = [const { AtomicBool::new(false) }; MAX_DEVICES];

/// Interrupt handler of device slot `D`, vector `V`: counts, nothing else (runs in IRQ context).
fn on_doorbell<const D: usize, const V: usize>() {
    RUNG[D][V].fetch_add(1, Ordering::Release);
}

macro_rules! handler_row {
    ($d:literal) => {
        [
            on_doorbell::<$d, 0>,
            on_doorbell::<$d, 1>,
            on_doorbell::<$d, 2>,
            on_doorbell::<$d, 3>,
        ]
    };
}

/// One plain `fn()` per (slot, vector): `rt::irq::register_msi` takes handlers without context.
static HANDLERS: [[fn(); MAX_VECTORS]; MAX_DEVICES] = [
    handler_row!(0),
    handler_row!(1),
    handler_row!(2),
    handler_row!(3),
    handler_row!(4),
    handler_row!(5),
    handler_row!(6),
    handler_row!(7),
    handler_row!(8),
    handler_row!(9),
    handler_row!(10),
    handler_row!(11),
    handler_row!(12),
    handler_row!(13),
    handler_row!(14),
    handler_row!(15),
];

/// A device's slot in the doorbell counters: interrupt handlers count into it, the event loop
/// takes the counts. Released on drop.
#[derive(Debug)]
pub struct Doorbells {
    slot: usize,
}

impl Doorbells {
    /// Claims a free slot (counters zeroed); `None` when [`MAX_DEVICES`] are in use.
    pub fn claim() -> Option<Doorbells> {
        let slot = (0..MAX_DEVICES).find(|&s| {
            CLAIMED[s]
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        })?;
        for c in &RUNG[slot] {
            c.store(0, Ordering::Release);
        }
        Some(Doorbells { slot })
    }

    /// The slot index.
    pub fn slot(&self) -> usize {
        self.slot
    }

    /// The interrupt handler counting `vector` of this slot.
    pub fn handler(&self, vector: u16) -> Option<fn()> {
        HANDLERS[self.slot].get(usize::from(vector)).copied()
    }

    /// Interrupts on `vector` since the last call (0 for vectors beyond [`MAX_VECTORS`]).
    pub fn take(&self, vector: u16) -> u32 {
        RUNG[self.slot]
            .get(usize::from(vector))
            .map_or(0, |c| c.swap(0, Ordering::Acquire))
    }
}

impl Drop for Doorbells {
    fn drop(&mut self) {
        CLAIMED[self.slot].store(false, Ordering::Release);
    }
}

/// A shared region reached through a raw pointer: the `SharedMem` seam for ivshmem BAR2 (and
/// any other mapping another VM writes concurrently). Every access is bounds- and
/// alignment-checked (a violation panics, per the seam's contract) and volatile or atomic;
/// bulk copies move aligned 8-byte words. No reference into the region is ever created.
#[derive(Debug)]
pub struct SharedRegion {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the region is shared memory by nature; all accesses are volatile/atomic through a
// raw pointer (no references), so moving or sharing the handle between contexts is sound.
unsafe impl Send for SharedRegion {}
// SAFETY: as above.
unsafe impl Sync for SharedRegion {}

impl SharedRegion {
    /// Wraps `[base, base + len)`.
    ///
    /// # Safety
    /// The range must be mapped readable and writable for as long as this value lives, `base`
    /// 8-byte aligned, and nobody may hold Rust references into it.
    pub unsafe fn new(base: NonNull<u8>, len: usize) -> Self {
        Self { base, len }
    }

    /// The first byte of the region.
    pub fn base(&self) -> NonNull<u8> {
        self.base
    }

    #[inline]
    fn at(&self, off: usize, size: usize, align: usize) -> *mut u8 {
        assert!(
            off.checked_add(size).is_some_and(|end| end <= self.len),
            "shared access outside the region"
        );
        assert!(off.is_multiple_of(align), "misaligned shared access");
        // In bounds (checked above).
        self.base.as_ptr().wrapping_add(off)
    }
}

/// Splits `[off, off + len)` into an unaligned head, whole 8-byte words, and a tail (bytes).
#[inline]
fn split_words(off: usize, len: usize) -> (usize, usize, usize) {
    let head = ((8 - off % 8) % 8).min(len);
    let words = (len - head) / 8;
    (head, words, len - head - words * 8)
}

impl SharedMem for SharedRegion {
    fn len(&self) -> usize {
        self.len
    }

    fn load_u32(&self, off: usize, order: Ordering) -> u32 {
        let p = self.at(off, 4, 4);
        // SAFETY: in bounds and 4-aligned (checked; `base` is 8-aligned), mapped (constructor
        // contract); atomics through a pointer create no reference.
        unsafe { AtomicU32::from_ptr(p.cast()) }.load(order)
    }

    fn store_u32(&self, off: usize, val: u32, order: Ordering) {
        let p = self.at(off, 4, 4);
        // SAFETY: as for `load_u32`.
        unsafe { AtomicU32::from_ptr(p.cast()) }.store(val, order)
    }

    fn load_u16(&self, off: usize) -> u16 {
        let p = self.at(off, 2, 2);
        // SAFETY: in bounds, aligned, mapped; volatile because the peer writes concurrently.
        unsafe { p.cast::<u16>().read_volatile() }
    }

    fn store_u16(&self, off: usize, val: u16) {
        let p = self.at(off, 2, 2);
        // SAFETY: as for `load_u16`.
        unsafe { p.cast::<u16>().write_volatile(val) }
    }

    fn load_u64(&self, off: usize) -> u64 {
        let p = self.at(off, 8, 8);
        // SAFETY: as for `load_u16`.
        unsafe { p.cast::<u64>().read_volatile() }
    }

    fn store_u64(&self, off: usize, val: u64) {
        let p = self.at(off, 8, 8);
        // SAFETY: as for `load_u16`.
        unsafe { p.cast::<u64>().write_volatile(val) }
    }

    fn read_bytes(&self, off: usize, dst: &mut [u8]) {
        let p = self.at(off, dst.len(), 1);
        let (head, words, _) = split_words(off, dst.len());
        let (h, rest) = dst.split_at_mut(head);
        let (w, t) = rest.split_at_mut(words * 8);
        for (i, b) in h.iter_mut().enumerate() {
            // SAFETY: inside the checked range `[off, off + dst.len())`.
            *b = unsafe { p.add(i).read_volatile() };
        }
        let wp = p.wrapping_add(head).cast::<u64>();
        for (i, chunk) in w.chunks_exact_mut(8).enumerate() {
            // SAFETY: inside the checked range; 8-aligned (`base` is, and `off + head` is).
            let v = unsafe { wp.add(i).read_volatile() };
            chunk.copy_from_slice(&v.to_ne_bytes());
        }
        let tp = p.wrapping_add(head + words * 8);
        for (i, b) in t.iter_mut().enumerate() {
            // SAFETY: inside the checked range.
            *b = unsafe { tp.add(i).read_volatile() };
        }
    }

    fn write_bytes(&self, off: usize, src: &[u8]) {
        let p = self.at(off, src.len(), 1);
        let (head, words, _) = split_words(off, src.len());
        let (h, rest) = src.split_at(head);
        let (w, t) = rest.split_at(words * 8);
        for (i, &b) in h.iter().enumerate() {
            // SAFETY: inside the checked range `[off, off + src.len())`.
            unsafe { p.add(i).write_volatile(b) };
        }
        let wp = p.wrapping_add(head).cast::<u64>();
        for (i, chunk) in w.chunks_exact(8).enumerate() {
            let v = u64::from_ne_bytes(chunk.try_into().expect("8-byte chunk"));
            // SAFETY: inside the checked range; 8-aligned.
            unsafe { wp.add(i).write_volatile(v) };
        }
        let tp = p.wrapping_add(head + words * 8);
        for (i, &b) in t.iter().enumerate() {
            // SAFETY: inside the checked range.
            unsafe { tp.add(i).write_volatile(b) };
        }
    }
}

#[cfg(target_os = "none")]
pub use device::{Channel, Ivshmem, Parts, open_all};

#[cfg(target_os = "none")]
mod device {
    use super::*;
    use crate::ecam::Ecam;
    use crate::mmio::Mmio;
    use crate::pci::{Bdf, MsixTable, command};
    use crate::platform;

    /// An opened ivshmem-doorbell device: registers mapped, region mapped, MSI-X vectors
    /// counting into [`Doorbells`]. Dropping it masks its MSI-X entries before the counter slot
    /// is released (the `rt` vectors stay allocated: rt has no way to free them).
    pub struct Ivshmem {
        bdf: Bdf,
        id: u16,
        regs: Registers<Mmio>,
        region: SharedRegion,
        msix: Option<MsixTable<Mmio>>,
        doorbells: Doorbells,
        vectors: u16,
        layout: Layout,
    }

    impl Drop for Ivshmem {
        fn drop(&mut self) {
            if let Some(t) = self.msix.as_mut() {
                for e in 0..t.entries() {
                    let _ = t.set_masked(e, true);
                }
            }
        }
    }

    impl Ivshmem {
        /// Opens `func`: assigns missing BARs from `[window.0, window.1)`, enables memory
        /// decoding and bus mastering, maps BAR0 and BAR2, reads the peer id, and programs up
        /// to `want_vectors` MSI-X entries (at most [`MAX_VECTORS`]; 0 = no interrupts, poll).
        pub fn open(
            ecam: &mut Ecam,
            func: &Function,
            want_vectors: u16,
            window: (u64, u64),
        ) -> Result<Ivshmem, Error> {
            let bdf = func.bdf;
            if !is_ivshmem(&func.header) {
                return Err(Error::NotFound);
            }
            pci::update_command(ecam, bdf, 0, command::MEMORY_SPACE | command::IO_SPACE);
            let bars = platform::assign_bars(ecam, bdf, window.0, window.1)?;
            let msix = MsixCap::read(ecam, bdf).ok();
            let layout = Layout::new(&bars, msix)?;
            pci::update_command(ecam, bdf, command::MEMORY_SPACE | command::BUS_MASTER, 0);
            let regs = Registers::new(platform::map_bar(&layout.regs, 0, reg::LEN)?)?;
            let len = usize::try_from(layout.shmem.size).map_err(|_| Error::OutOfRange)?;
            let shm = platform::map_bar_memory(&layout.shmem, 0, len).inspect_err(|e| {
                log::error!(
                    "{bdf}: cannot map BAR2 ({:#x} bytes at {:#x}): {e}",
                    layout.shmem.size,
                    layout.shmem.address
                );
            })?;
            if !(shm.base().as_ptr() as usize).is_multiple_of(8) {
                return Err(Error::Invalid);
            }
            // SAFETY: `map_bar_memory` mapped BAR2 (len bytes, 8-aligned, checked) for the rest of the
            // domain's life (rt never unmaps); it is device memory nobody references.
            let region = unsafe { SharedRegion::new(shm.base(), len) };
            let id = regs.position()?;
            let doorbells = Doorbells::claim().ok_or(Error::NoSpace)?;
            let mut dev = Ivshmem {
                bdf,
                id,
                regs,
                region,
                msix: None,
                doorbells,
                vectors: 0,
                layout,
            };
            if let Some(cap) = msix {
                let n = want_vectors.min(cap.table_size).min(MAX_VECTORS as u16);
                dev.vectors = dev.setup_msix(ecam, &bars, n);
            }
            Ok(dev)
        }

        /// Programs MSI-X entries `0..n`; returns how many work (stops at the first failure).
        fn setup_msix(&mut self, ecam: &mut Ecam, bars: &[Option<Bar>; 6], n: u16) -> u16 {
            let mut table: Option<MsixTable<Mmio>> = None;
            let n = self.program_vectors(ecam, bars, n, &mut table);
            self.msix = table;
            n
        }

        fn program_vectors(
            &mut self,
            ecam: &mut Ecam,
            bars: &[Option<Bar>; 6],
            n: u16,
            table: &mut Option<MsixTable<Mmio>>,
        ) -> u16 {
            for v in 0..n {
                let Some(handler) = self.doorbells.handler(v) else {
                    return v;
                };
                let Some(msg) = rt::irq::register_msi(handler) else {
                    log::warn!("{}: no free interrupt vector for doorbell {v}", self.bdf);
                    return v;
                };
                let r = match table.as_mut() {
                    None => platform::enable_msix(ecam, self.bdf, bars, v, msg).map(|t| {
                        *table = Some(t);
                    }),
                    Some(t) => platform::program_msi(t, v, msg),
                };
                if let Err(e) = r {
                    log::warn!("{}: MSI-X entry {v}: {e}", self.bdf);
                    return v;
                }
            }
            n
        }

        /// Where the device is.
        pub fn bdf(&self) -> Bdf {
            self.bdf
        }

        /// This VM's peer id on the channel.
        pub fn id(&self) -> u16 {
            self.id
        }

        /// Interrupt vectors set up (each counts into [`Ivshmem::take`]).
        pub fn vectors(&self) -> u16 {
            self.vectors
        }

        /// The BAR layout.
        pub fn layout(&self) -> &Layout {
            &self.layout
        }

        /// The shared region.
        pub fn region(&self) -> &SharedRegion {
            &self.region
        }

        /// Interrupts `peer` on `vector`.
        pub fn ring(&mut self, peer: u16, vector: u16) {
            self.regs.ring(peer, vector);
        }

        /// Doorbells received on `vector` since the last call.
        pub fn take(&self, vector: u16) -> u32 {
            self.doorbells.take(vector)
        }

        /// The device split into its region (shared, e.g. by an iConnect channel endpoint as
        /// `&SharedRegion`), its registers (to ring the peer) and its doorbell counters, so
        /// all three can be used while the region is borrowed.
        pub fn parts(&mut self) -> Parts<'_> {
            Parts {
                region: &self.region,
                regs: &mut self.regs,
                doorbells: &self.doorbells,
            }
        }
    }

    /// An ivshmem-doorbell device opened by [`open_all`] for the life of the domain.
    pub struct Channel {
        /// Its guest port: the device's 1-based position among the ivshmem devices in PCI order.
        pub port: usize,
        /// Where it sits on PCI.
        pub bdf: Bdf,
        /// Our peer id in its region.
        pub own_id: u16,
        /// Doorbell vectors it has.
        pub vectors: u16,
        /// Shared memory, bytes.
        pub shmem_len: u64,
        /// Region, registers and doorbells.
        pub parts: Parts<'static>,
    }

    /// Opens the first `max` ivshmem-doorbell devices (PCI order = guest ports 1..=N), each with
    /// `want_vectors` doorbell vectors and its BARs placed in `window`: the channels of a driver
    /// domain. A device that cannot be opened is skipped with
    /// `ICONNECT-PORT <n> down reason=open-failed:<why>` (its port number stays reserved); devices
    /// beyond `max` are left alone with a warning. The devices live as long as the domain (rt
    /// never unmaps BARs), so they are leaked.
    pub fn open_all(ecam: &mut Ecam, want_vectors: u16, window: (u64, u64), max: usize) -> Vec<Channel> {
        let funcs = find_all(ecam, ecam.start_bus(), ecam.end_bus());
        let mut chans = Vec::new();
        for (i, func) in funcs.iter().enumerate() {
            let port = i + 1;
            if i >= max {
                log::warn!("{}: more channels than guest ports; ignored", func.bdf);
                continue;
            }
            let dev = match Ivshmem::open(ecam, func, want_vectors, window) {
                Ok(d) => d,
                Err(e) => {
                    log::error!("ICONNECT-PORT {port} down reason=open-failed:{e}");
                    continue;
                }
            };
            let (own_id, vectors, shmem_len) = (dev.id(), dev.vectors(), dev.layout().shmem_len());
            let dev: &'static mut Ivshmem = alloc::boxed::Box::leak(alloc::boxed::Box::new(dev));
            chans.push(Channel { port, bdf: func.bdf, own_id, vectors, shmem_len, parts: dev.parts() });
        }
        chans
    }

    /// Borrowed parts of an [`Ivshmem`] ([`Ivshmem::parts`]).
    pub struct Parts<'a> {
        /// The shared region.
        pub region: &'a SharedRegion,
        /// The registers: [`Registers::ring`] interrupts a peer.
        pub regs: &'a mut Registers<Mmio>,
        /// Doorbells received ([`Doorbells::take`]).
        pub doorbells: &'a Doorbells,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{FakeConfigSpace, FakeRegs};
    use crate::pci::{BarKind, Bdf, cap_id};
    use alloc::vec;

    fn bdf(b: u8, d: u8, f: u8) -> Bdf {
        Bdf::new(b, d, f).unwrap()
    }

    /// A q35-like bus with a virtio-net and two ivshmem-doorbell devices laid out like QEMU's
    /// (BAR0 256 B, BAR1 4 KiB MSI-X with 2 entries, BAR2 64-bit prefetchable), plus an
    /// ivshmem-plain (no MSI-X) and a non-ivshmem device with the same vendor.
    fn bus() -> FakeConfigSpace {
        let mut cfg = FakeConfigSpace::new();
        cfg.add(bdf(0, 0, 0), 0x8086, 0x29c0, 0x06, 0x00, 0x00);
        cfg.add(bdf(0, 2, 0), 0x1af4, 0x1041, 0x02, 0x00, 0x00);
        for (dev, shm_addr) in [(3, 0x8_0000_0000u64), (4, 0)] {
            let f = cfg.add(bdf(0, dev, 0), VENDOR_ID, DEVICE_ID, 0x05, 0x00, 0x00);
            f.add_mem32_bar(0, 256, 0xc000_0000 + u32::from(dev) * 0x1000, false);
            f.add_mem32_bar(1, 4096, 0xc010_0000 + u32::from(dev) * 0x1000, false);
            f.add_mem64_bar(2, 4 << 20, shm_addr, true);
            let mut body = 0x0001u16.to_le_bytes().to_vec();
            body.extend_from_slice(&1u32.to_le_bytes());
            body.extend_from_slice(&0x801u32.to_le_bytes());
            f.add_capability(cap_id::MSIX, &body);
        }
        let plain = cfg.add(bdf(0, 5, 0), VENDOR_ID, DEVICE_ID, 0x05, 0x00, 0x00);
        plain.add_mem32_bar(0, 256, 0xc020_0000, false);
        plain.add_mem64_bar(2, 1 << 20, 0x9_0000_0000, true);
        cfg
    }

    #[test]
    fn matching_and_enumeration() {
        let cfg = bus();
        let found: Vec<Bdf> = find_all(&cfg, 0, 255).iter().map(|f| f.bdf).collect();
        assert_eq!(found, vec![bdf(0, 3, 0), bdf(0, 4, 0), bdf(0, 5, 0)]);
        let virtio = Header::read(&cfg, bdf(0, 2, 0)).unwrap();
        assert!(!is_ivshmem(&virtio), "same vendor, other device");
    }

    #[test]
    fn layout_of_a_qemu_like_device() {
        let mut cfg = bus();
        let d = bdf(0, 3, 0);
        let bars = pci::probe_bars(&mut cfg, d);
        let msix = MsixCap::read(&cfg, d).ok();
        let l = Layout::new(&bars, msix).unwrap();
        assert_eq!(l.regs.address, 0xc000_3000);
        assert_eq!(l.shmem.kind, BarKind::Memory64);
        assert_eq!(l.shmem.address, 0x8_0000_0000, "BAR2 above 4 GiB");
        assert_eq!(l.shmem_len(), 4 << 20);
        let m = l.msix.unwrap();
        assert_eq!((m.table_bar, m.table_size), (MSIX_BAR, 2));
        // Unassigned BAR2 (firmware left it): reported, so the caller assigns it.
        let d4 = bdf(0, 4, 0);
        let bars4 = pci::probe_bars(&mut cfg, d4);
        assert_eq!(
            Layout::new(&bars4, MsixCap::read(&cfg, d4).ok()),
            Err(Error::BarUnassigned)
        );
        // ivshmem-plain: no MSI-X, still a valid layout (poll-only).
        let d5 = bdf(0, 5, 0);
        let bars5 = pci::probe_bars(&mut cfg, d5);
        assert_eq!(MsixCap::read(&cfg, d5).ok(), None);
        assert!(Layout::new(&bars5, None).unwrap().msix.is_none());
    }

    #[test]
    fn layout_rejects_wrong_bars() {
        let mut cfg = bus();
        let d = bdf(0, 3, 0);
        let good = pci::probe_bars(&mut cfg, d);
        let msix = MsixCap::read(&cfg, d).ok();
        let mut no_shm = good;
        no_shm[2] = None;
        assert_eq!(Layout::new(&no_shm, msix), Err(Error::NotFound));
        let mut small_regs = good;
        small_regs[0] = Some(Bar {
            size: 16,
            ..good[0].unwrap()
        });
        assert_eq!(Layout::new(&small_regs, msix), Err(Error::Invalid));
        let mut io_shm = good;
        io_shm[2] = Some(Bar {
            kind: BarKind::Io,
            ..good[2].unwrap()
        });
        assert_eq!(Layout::new(&io_shm, msix), Err(Error::Invalid));
        let mut no_table = good;
        no_table[1] = None;
        assert_eq!(Layout::new(&no_table, msix), Err(Error::BarUnassigned));
        let big_table = msix.map(|m| MsixCap {
            table_offset: 4096 - 16,
            ..m
        });
        assert_eq!(Layout::new(&good, big_table), Err(Error::Invalid));
    }

    #[test]
    fn register_encodings() {
        assert_eq!(doorbell_value(0, 0), 0);
        assert_eq!(doorbell_value(1, 0), 0x0001_0000);
        assert_eq!(doorbell_value(0xffff, 0xffff), 0xffff_ffff);
        assert_eq!(doorbell_value(3, 1), 0x0003_0001);
        let mut fake = FakeRegs::new(reg::LEN);
        fake.write32(reg::IV_POSITION, 7);
        let mut r = Registers::new(fake).unwrap();
        assert_eq!(r.position(), Ok(7));
        r.ring(1, 1);
        assert_eq!(r.regs.read32(reg::DOORBELL), 0x0001_0001);
        // Revision 0 before the server answered: -1.
        r.regs.write32(reg::IV_POSITION, u32::MAX);
        assert_eq!(r.position(), Err(Error::Invalid));
        assert!(Registers::new(FakeRegs::new(12)).is_err());
    }

    /// The slot table is global: tests that claim slots run one at a time.
    static SLOTS_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn doorbell_counters_per_slot_and_vector() {
        let _g = SLOTS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let a = Doorbells::claim().unwrap();
        let b = Doorbells::claim().unwrap();
        assert_ne!(a.slot(), b.slot());
        a.handler(0).unwrap()();
        a.handler(0).unwrap()();
        a.handler(3).unwrap()();
        b.handler(1).unwrap()();
        assert!(a.handler(MAX_VECTORS as u16).is_none());
        assert_eq!((a.take(0), a.take(1), a.take(3)), (2, 0, 1));
        assert_eq!(a.take(0), 0, "taking clears");
        assert_eq!((b.take(0), b.take(1)), (0, 1));
        assert_eq!(a.take(99), 0);
        // A released slot is handed out again with zeroed counters.
        let slot = b.slot();
        b.handler(2).unwrap()();
        drop(b);
        let mut again = Vec::new();
        let c = loop {
            let c = Doorbells::claim().unwrap();
            if c.slot() == slot {
                break c;
            }
            again.push(c);
        };
        assert_eq!(c.take(2), 0);
    }

    #[test]
    fn slots_run_out_cleanly() {
        let _g = SLOTS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let mut held = Vec::new();
        while let Some(d) = Doorbells::claim() {
            held.push(d);
            assert!(held.len() <= MAX_DEVICES);
        }
        assert_eq!(held.len(), MAX_DEVICES);
        assert!(Doorbells::claim().is_none());
        held.pop();
        assert!(Doorbells::claim().is_some());
    }

    fn region(words: &mut [u64]) -> SharedRegion {
        let base = NonNull::new(words.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: `words` outlives the region in each test, is 8-aligned, and is only accessed
        // through the region while it is used.
        unsafe { SharedRegion::new(base, words.len() * 8) }
    }

    #[test]
    fn shared_region_scalars_and_copies() {
        let mut backing = vec![0u64; 64];
        let r = region(&mut backing);
        assert_eq!(r.len(), 512);
        r.store_u32(4, 0xdead_beef, Ordering::Release);
        assert_eq!(r.load_u32(4, Ordering::Acquire), 0xdead_beef);
        r.store_u16(10, 0x1234);
        assert_eq!(r.load_u16(10), 0x1234);
        r.store_u64(16, u64::MAX - 1);
        assert_eq!(r.load_u64(16), u64::MAX - 1);
        // Copies at every head/tail misalignment and length.
        for off in 100..109 {
            for len in [0usize, 1, 7, 8, 9, 15, 16, 17, 64, 100] {
                let src: Vec<u8> = (0..len).map(|i| (i * 13 + off) as u8).collect();
                r.write_bytes(off, &src);
                let mut dst = vec![0u8; len];
                r.read_bytes(off, &mut dst);
                assert_eq!(dst, src, "off {off} len {len}");
                // The bytes around the copy are untouched.
                r.write_bytes(off + len, &[0xaa]);
                let mut probe = [0u8; 1];
                r.read_bytes(off + len, &mut probe);
                assert_eq!(probe, [0xaa]);
            }
        }
        r.write_bytes(504, &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(backing[63].to_le_bytes(), [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(backing[0], 0xdead_beef_0000_0000);
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn shared_region_refuses_out_of_bounds_copy() {
        let mut backing = vec![0u64; 4];
        let r = region(&mut backing);
        r.write_bytes(30, &[0; 3]);
    }

    #[test]
    #[should_panic(expected = "misaligned")]
    fn shared_region_refuses_misaligned_u32() {
        let mut backing = vec![0u64; 4];
        let r = region(&mut backing);
        r.load_u32(2, Ordering::Relaxed);
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn shared_region_refuses_u64_past_the_end() {
        let mut backing = vec![0u64; 4];
        let r = region(&mut backing);
        r.load_u64(32);
    }
}
