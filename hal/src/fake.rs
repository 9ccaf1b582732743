//! Fakes of the hardware traits, for host unit tests (here and in other crates, with the
//! `fake` feature). They model just enough behaviour to exercise the real logic: writable
//! bit masks (so BAR sizing works), capability chains, byte-addressed registers and physical
//! memory.

use crate::Error;
use crate::acpi::PhysRead;
use crate::mmio::{RegisterBlock, access_ok};
use crate::pci::{Bdf, ConfigSpace, STATUS_CAP_LIST, reg};
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;

/// One fake function: 4 KiB of configuration space plus a per-dword writable-bit mask.
#[derive(Clone)]
pub struct FakeFunction {
    data: Box<[u32; 1024]>,
    writable: Box<[u32; 1024]>,
    next_cap: u16,
    last_cap: u16,
}

impl FakeFunction {
    fn new(vendor: u16, device: u16, class: u8, subclass: u8, header_type: u8) -> Self {
        let mut f = Self {
            data: Box::new([0; 1024]),
            writable: Box::new([0; 1024]),
            next_cap: 0x40,
            last_cap: 0,
        };
        f.set32(reg::ID, u32::from(vendor) | (u32::from(device) << 16));
        f.set32(
            reg::CLASS,
            (u32::from(class) << 24) | (u32::from(subclass) << 16),
        );
        f.set32(reg::HEADER_TYPE, u32::from(header_type) << 16);
        // Command register bits 0..10 are writable, status is read-only here.
        f.set_writable(reg::COMMAND_STATUS, 0x0000_07ff);
        f
    }

    /// Sets the dword at `offset` (no write mask applied).
    pub fn set32(&mut self, offset: u16, value: u32) -> &mut Self {
        self.data[usize::from(offset / 4) % 1024] = value;
        self
    }

    /// Reads the raw dword at `offset`.
    pub fn get32(&self, offset: u16) -> u32 {
        self.data[usize::from(offset / 4) % 1024]
    }

    /// Sets which bits of the dword at `offset` configuration writes may change.
    pub fn set_writable(&mut self, offset: u16, mask: u32) -> &mut Self {
        self.writable[usize::from(offset / 4) % 1024] = mask;
        self
    }

    /// Adds a 32-bit memory BAR of `size` bytes (power of two) at `address`.
    pub fn add_mem32_bar(
        &mut self,
        index: u8,
        size: u32,
        address: u32,
        prefetch: bool,
    ) -> &mut Self {
        let off = reg::BAR0 + 4 * u16::from(index);
        let flags = if prefetch { 0x8 } else { 0 };
        self.set32(off, (address & !(size - 1)) | flags);
        self.set_writable(off, !(size - 1) & !0xf)
    }

    /// Adds a 64-bit memory BAR of `size` bytes (power of two) at `address`.
    pub fn add_mem64_bar(
        &mut self,
        index: u8,
        size: u64,
        address: u64,
        prefetch: bool,
    ) -> &mut Self {
        let off = reg::BAR0 + 4 * u16::from(index);
        let flags = 0x4 | if prefetch { 0x8 } else { 0 };
        let mask = !(size - 1);
        self.set32(off, (address as u32 & mask as u32 & !0xf) | flags);
        self.set32(off + 4, (address >> 32) as u32);
        self.set_writable(off, mask as u32 & !0xf);
        self.set_writable(off + 4, (mask >> 32) as u32)
    }

    /// Adds an I/O BAR of `size` bytes at `port`, with a 16-bit decoder (upper bits read 0).
    pub fn add_io_bar(&mut self, index: u8, size: u32, port: u16) -> &mut Self {
        let off = reg::BAR0 + 4 * u16::from(index);
        self.set32(off, (u32::from(port) & !(size - 1)) | 1);
        self.set_writable(off, !(size - 1) & 0xfffc)
    }

    /// Appends a capability with ID `id` whose bytes after the two header bytes are `body`;
    /// returns its offset. Sets the status bit and the capabilities pointer.
    pub fn add_capability(&mut self, id: u8, body: &[u8]) -> u16 {
        let off = self.next_cap;
        let mut bytes = vec![id, 0];
        bytes.extend_from_slice(body);
        for (i, b) in bytes.iter().enumerate() {
            self.set8(off + i as u16, *b);
        }
        if self.last_cap == 0 {
            self.set8(reg::CAP_PTR, off as u8);
            let cs = self.get32(reg::COMMAND_STATUS);
            self.set32(reg::COMMAND_STATUS, cs | (u32::from(STATUS_CAP_LIST) << 16));
        } else {
            self.set8(self.last_cap + 1, off as u8);
        }
        self.last_cap = off;
        self.next_cap = (off + bytes.len() as u16).next_multiple_of(4);
        off
    }

    /// Sets one byte of configuration space.
    pub fn set8(&mut self, offset: u16, value: u8) -> &mut Self {
        let dw = self.get32(offset & !3);
        let shift = (offset & 3) * 8;
        self.set32(
            offset & !3,
            (dw & !(0xff << shift)) | (u32::from(value) << shift),
        )
    }
}

/// A fake configuration space: a map from BDF to [`FakeFunction`].
#[derive(Clone, Default)]
pub struct FakeConfigSpace {
    functions: BTreeMap<Bdf, FakeFunction>,
    /// Number of `read32` calls so far (to check scan costs).
    pub reads: core::cell::Cell<usize>,
    /// Number of writes to command registers (each decode toggle remaps windows).
    pub command_writes: usize,
    /// Set when a BAR was written with all-ones while the function decoded addresses (the
    /// device would have claimed a bogus window meanwhile).
    pub sized_while_decoding: bool,
}

impl FakeConfigSpace {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a function; `header_type` includes the multi-function bit 0x80.
    pub fn add(
        &mut self,
        bdf: Bdf,
        vendor: u16,
        device: u16,
        class: u8,
        subclass: u8,
        header_type: u8,
    ) -> &mut FakeFunction {
        self.functions.insert(
            bdf,
            FakeFunction::new(vendor, device, class, subclass, header_type),
        );
        self.functions.get_mut(&bdf).expect("just inserted")
    }

    /// Adds a PCI-to-PCI bridge forwarding to `secondary..=subordinate`.
    pub fn add_bridge(&mut self, bdf: Bdf, secondary: u8, subordinate: u8) -> &mut FakeFunction {
        let f = self.add(bdf, 0x1b36, 0x000c, 0x06, 0x04, 0x01);
        f.set32(
            reg::BRIDGE_BUSES,
            u32::from(bdf.bus) | (u32::from(secondary) << 8) | (u32::from(subordinate) << 16),
        );
        f
    }

    /// The function at `bdf`.
    pub fn function(&mut self, bdf: Bdf) -> Option<&mut FakeFunction> {
        self.functions.get_mut(&bdf)
    }
}

impl ConfigSpace for FakeConfigSpace {
    fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
        self.reads.set(self.reads.get() + 1);
        match self.functions.get(&bdf) {
            Some(f) if offset < 4096 => f.get32(offset & !3),
            _ => u32::MAX,
        }
    }

    fn write32(&mut self, bdf: Bdf, offset: u16, value: u32) {
        if let Some(f) = self.functions.get_mut(&bdf)
            && offset < 4096
        {
            let i = usize::from(offset / 4);
            if offset & !3 == reg::COMMAND_STATUS {
                self.command_writes += 1;
            }
            let decoding = f.data[1] & 0x3 != 0;
            if (0x10..0x28).contains(&(offset & !3)) && value == u32::MAX && decoding {
                self.sized_while_decoding = true;
            }
            f.data[i] = (f.data[i] & !f.writable[i]) | (value & f.writable[i]);
        }
    }
}

/// A register block over plain memory.
#[derive(Clone, Debug)]
pub struct FakeRegs {
    /// The register bytes (little endian).
    pub bytes: Vec<u8>,
}

impl FakeRegs {
    /// `len` zeroed bytes.
    pub fn new(len: usize) -> Self {
        Self {
            bytes: vec![0; len],
        }
    }

    fn get<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        if access_ok(offset, N, self.bytes.len()) {
            self.bytes[offset..offset + N].try_into().ok()
        } else {
            None
        }
    }

    fn put(&mut self, offset: usize, value: &[u8]) {
        if access_ok(offset, value.len(), self.bytes.len()) {
            self.bytes[offset..offset + value.len()].copy_from_slice(value);
        }
    }
}

impl RegisterBlock for FakeRegs {
    fn len(&self) -> usize {
        self.bytes.len()
    }
    fn read8(&self, offset: usize) -> u8 {
        self.get::<1>(offset).map_or(u8::MAX, u8::from_le_bytes)
    }
    fn read16(&self, offset: usize) -> u16 {
        self.get::<2>(offset).map_or(u16::MAX, u16::from_le_bytes)
    }
    fn read32(&self, offset: usize) -> u32 {
        self.get::<4>(offset).map_or(u32::MAX, u32::from_le_bytes)
    }
    fn write8(&mut self, offset: usize, value: u8) {
        self.put(offset, &value.to_le_bytes());
    }
    fn write16(&mut self, offset: usize, value: u16) {
        self.put(offset, &value.to_le_bytes());
    }
    fn write32(&mut self, offset: usize, value: u32) {
        self.put(offset, &value.to_le_bytes());
    }
}

/// Fake physical memory: a few regions of bytes at physical addresses.
#[derive(Clone, Debug, Default)]
pub struct FakeMemory {
    regions: Vec<(u64, Vec<u8>)>,
}

impl FakeMemory {
    /// No memory at all.
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `bytes` at physical address `base`.
    pub fn add(&mut self, base: u64, bytes: Vec<u8>) -> &mut Self {
        self.regions.push((base, bytes));
        self
    }
}

impl PhysRead for FakeMemory {
    fn read(&self, paddr: u64, buf: &mut [u8]) -> Result<(), Error> {
        let len = buf.len() as u64;
        for (base, bytes) in &self.regions {
            if paddr >= *base
                && paddr
                    .checked_add(len)
                    .is_some_and(|end| end <= base + bytes.len() as u64)
            {
                let start = (paddr - base) as usize;
                buf.copy_from_slice(&bytes[start..start + buf.len()]);
                return Ok(());
            }
        }
        Err(Error::OutOfRange)
    }
}

/// Fakes for the virtio layer: a host `virtio_drivers::Hal` and a virtio-net device that
/// serves split virtqueues laid out in host memory.
pub mod virtio {
    use alloc::rc::Rc;
    use alloc::vec::Vec;
    use core::cell::RefCell;
    use core::ptr::NonNull;
    use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
    use virtio_drivers::{BufferDirection, Hal, PhysAddr};
    use zerocopy::{FromBytes, Immutable, IntoBytes};

    /// Feature bits the fake device offers: MAC and VERSION_1 (no event index, no indirect
    /// descriptors: plain split rings).
    pub const FEATURES: u64 = (1 << 5) | (1 << 32);
    /// Size of the modern virtio-net header.
    pub const NET_HDR_LEN: usize = 12;
    const PAGE: usize = 4096;

    /// DMA on the host heap; physical address = pointer value.
    #[derive(Debug)]
    pub struct HostHal;

    // SAFETY: allocations are zeroed, page-aligned and owned by the caller until `dma_dealloc`;
    // "physical" addresses are the host pointers themselves, which the fake device uses.
    unsafe impl Hal for HostHal {
        fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
            let Ok(layout) = core::alloc::Layout::from_size_align(pages * PAGE, PAGE) else {
                return (0, NonNull::dangling());
            };
            // SAFETY: the layout has a non-zero size (virtio-drivers never asks for 0 pages).
            let p = unsafe { alloc::alloc::alloc_zeroed(layout) };
            match NonNull::new(p) {
                Some(p) => (p.as_ptr() as PhysAddr, p),
                None => (0, NonNull::dangling()),
            }
        }

        unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
            let Ok(layout) = core::alloc::Layout::from_size_align(pages * PAGE, PAGE) else {
                return -1;
            };
            // SAFETY: `vaddr` came from `dma_alloc` with this very layout (trait contract).
            unsafe { alloc::alloc::dealloc(vaddr.as_ptr(), layout) };
            0
        }

        unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
            NonNull::new(paddr as *mut u8).unwrap_or(NonNull::dangling())
        }

        unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
            buffer.as_ptr().cast::<u8>() as PhysAddr
        }

        unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
    }

    /// A fake device's `read_config_space`: the `T` at `offset` of its configuration `bytes`.
    pub fn config_read<T: FromBytes>(bytes: &[u8], offset: usize) -> Result<T, virtio_drivers::Error> {
        let b = bytes
            .get(offset..offset + size_of::<T>())
            .ok_or(virtio_drivers::Error::ConfigSpaceTooSmall)?;
        T::read_from_bytes(b).map_err(|_| virtio_drivers::Error::IoError)
    }

    /// A descriptor chain: (address, length, device-writable) per descriptor.
    pub type Chain = Vec<(u64, u32, bool)>;

    /// The device's side of one split virtqueue laid out in host memory (HostHal): where the
    /// driver put its three rings, and how far the device got.
    #[derive(Default, Debug, Clone, Copy)]
    pub struct SplitQueue {
        /// Entries.
        pub size: u16,
        /// Descriptor table address.
        pub desc: u64,
        /// Available ring address.
        pub avail: u64,
        /// Used ring address.
        pub used: u64,
        /// The next available entry the device takes.
        pub last_avail: u16,
        /// Set up by the driver (and not reset since).
        pub enabled: bool,
    }

    impl SplitQueue {
        /// A queue the driver just set up.
        pub fn new(size: u16, desc: u64, avail: u64, used: u64) -> Self {
            SplitQueue { size, desc, avail, used, last_avail: 0, enabled: true }
        }

        /// Pops the next available chain: its head (the driver's token) and descriptors.
        pub fn pop_chain(&mut self) -> Option<(u16, Chain)> {
            if !self.enabled || self.size == 0 || r16(self.avail + 2) == self.last_avail {
                return None;
            }
            let head = r16(self.avail + 4 + 2 * u64::from(self.last_avail % self.size));
            self.last_avail = self.last_avail.wrapping_add(1);
            let mut chain = Vec::new();
            let mut i = head;
            // A chain is at most `size` long: a looping one ends there.
            for _ in 0..self.size {
                let d = read(self.desc + 16 * u64::from(i % self.size), 16);
                let addr = u64::from_le_bytes(d[0..8].try_into().unwrap_or([0; 8]));
                let len = u32::from_le_bytes(d[8..12].try_into().unwrap_or([0; 4]));
                let flags = u16::from_le_bytes([d[12], d[13]]);
                chain.push((addr, len, flags & 2 != 0));
                if flags & 1 == 0 {
                    break;
                }
                i = u16::from_le_bytes([d[14], d[15]]);
            }
            Some((head, chain))
        }

        /// Returns chain `id` to the driver in the used ring with `len` bytes written.
        pub fn push_used(&self, id: u32, len: u32) {
            let idx = r16(self.used + 2);
            let slot = self.used + 4 + 8 * u64::from(idx % self.size);
            w32(slot, id);
            w32(slot + 4, len);
            w16(self.used + 2, idx.wrapping_add(1));
        }
    }

    /// What the fake device saw and holds.
    #[derive(Debug, Default)]
    pub struct NetState {
        /// Device status register.
        pub status: u32,
        /// Features the driver accepted.
        pub driver_features: u64,
        queues: [SplitQueue; 2],
        /// Notifications per queue (0 = receive, 1 = transmit).
        pub notifications: [u32; 2],
        /// MAC in config space.
        pub mac: [u8; 6],
    }

    /// Reads `len` bytes of driver memory the device owns (a ring, a shared buffer).
    pub fn read(addr: u64, len: usize) -> Vec<u8> {
        let mut v = alloc::vec![0u8; len];
        // SAFETY: test-only device model: `addr` comes from a ring the driver set up in host
        // memory (HostHal) or from a buffer it shared, valid for `len` bytes while the device
        // owns it; the driver does not touch it meanwhile.
        unsafe { core::ptr::copy_nonoverlapping(addr as *const u8, v.as_mut_ptr(), len) };
        v
    }

    /// Writes driver memory the device owns.
    pub fn write(addr: u64, bytes: &[u8]) {
        // SAFETY: as for `read`: device-owned driver memory of at least `bytes.len()` bytes.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), addr as *mut u8, bytes.len()) };
    }

    /// A little-endian u16 of driver memory the device owns.
    pub fn r16(addr: u64) -> u16 {
        u16::from_le_bytes(read(addr, 2).try_into().unwrap_or([0; 2]))
    }

    fn w16(addr: u64, v: u16) {
        write(addr, &v.to_le_bytes());
    }

    fn w32(addr: u64, v: u32) {
        write(addr, &v.to_le_bytes());
    }

    /// A request popped from a queue: head descriptor index, buffer address and length.
    #[derive(Debug, Clone, Copy)]
    pub struct Popped {
        /// Head descriptor (the driver's token).
        pub head: u16,
        /// Buffer address.
        pub addr: u64,
        /// Buffer length.
        pub len: u32,
    }

    impl NetState {
        /// Pops the next available request of `queue` (its first descriptor).
        pub fn pop(&mut self, queue: usize) -> Option<Popped> {
            let (head, chain) = self.queues[queue].pop_chain()?;
            let &(addr, len, _) = chain.first()?;
            Some(Popped { head, addr, len })
        }

        /// Returns `id` to the driver in `queue`'s used ring with `len` bytes written.
        pub fn push_used(&mut self, queue: usize, id: u32, len: u32) {
            self.queues[queue].push_used(id, len);
        }

        /// Delivers `frame` into the next receive buffer; false if none is posted or it is
        /// too small.
        pub fn deliver(&mut self, frame: &[u8]) -> bool {
            let Some(p) = self.pop(0) else { return false };
            let total = NET_HDR_LEN + frame.len();
            if (p.len as usize) < total {
                return false;
            }
            write(p.addr, &[0u8; NET_HDR_LEN]);
            write(p.addr + NET_HDR_LEN as u64, frame);
            self.push_used(0, u32::from(p.head), total as u32);
            true
        }

        /// Takes up to `max` frames from the transmit queue (header stripped), completing them
        /// unless `complete` is false (then the device keeps the buffers).
        pub fn take_sent(&mut self, max: usize, complete: bool) -> Vec<Vec<u8>> {
            let mut out = Vec::new();
            while out.len() < max {
                let Some(p) = self.pop(1) else { break };
                let bytes = read(p.addr, p.len as usize);
                out.push(bytes.get(NET_HDR_LEN..).unwrap_or(&[]).to_vec());
                if complete {
                    self.push_used(1, u32::from(p.head), 0);
                }
            }
            out
        }
    }

    /// The transport half of the fake device, owned by the driver; tests keep the shared state.
    #[derive(Debug)]
    pub struct FakeNetTransport {
        /// Shared device state.
        pub state: Rc<RefCell<NetState>>,
        /// Largest queue size offered.
        pub max_queue: u32,
    }

    impl FakeNetTransport {
        /// A device with `mac`; returns the transport and a handle on its state.
        pub fn new(mac: [u8; 6], max_queue: u32) -> (Self, Rc<RefCell<NetState>>) {
            let state = Rc::new(RefCell::new(NetState {
                mac,
                ..NetState::default()
            }));
            (
                Self {
                    state: state.clone(),
                    max_queue,
                },
                state,
            )
        }
    }

    impl Transport for FakeNetTransport {
        fn device_type(&self) -> DeviceType {
            DeviceType::Network
        }
        fn read_device_features(&mut self) -> u64 {
            FEATURES
        }
        fn write_driver_features(&mut self, driver_features: u64) {
            self.state.borrow_mut().driver_features = driver_features;
        }
        fn max_queue_size(&mut self, _queue: u16) -> u32 {
            self.max_queue
        }
        fn notify(&mut self, queue: u16) {
            if let Some(n) = self
                .state
                .borrow_mut()
                .notifications
                .get_mut(usize::from(queue))
            {
                *n += 1;
            }
        }
        fn get_status(&self) -> DeviceStatus {
            DeviceStatus::from_bits_truncate(self.state.borrow().status)
        }
        fn set_status(&mut self, status: DeviceStatus) {
            self.state.borrow_mut().status = status.bits();
        }
        fn set_guest_page_size(&mut self, _guest_page_size: u32) {}
        fn requires_legacy_layout(&self) -> bool {
            false
        }
        fn queue_set(
            &mut self,
            queue: u16,
            size: u32,
            desc: PhysAddr,
            avail: PhysAddr,
            used: PhysAddr,
        ) {
            if let Some(q) = self.state.borrow_mut().queues.get_mut(usize::from(queue)) {
                *q = SplitQueue::new(size as u16, desc, avail, used);
            }
        }
        fn queue_unset(&mut self, queue: u16) {
            if let Some(q) = self.state.borrow_mut().queues.get_mut(usize::from(queue)) {
                *q = SplitQueue::default();
            }
        }
        fn queue_used(&mut self, queue: u16) -> bool {
            self.state
                .borrow()
                .queues
                .get(usize::from(queue))
                .is_some_and(|q| q.enabled)
        }
        fn ack_interrupt(&mut self) -> InterruptStatus {
            InterruptStatus::empty()
        }
        fn read_config_generation(&self) -> u32 {
            0
        }
        fn read_config_space<T: FromBytes + IntoBytes>(
            &self,
            offset: usize,
        ) -> Result<T, virtio_drivers::Error> {
            // Config: mac[6], status u16 (link up), max_virtqueue_pairs u16, mtu u16.
            let mut cfg = [0u8; 12];
            cfg[..6].copy_from_slice(&self.state.borrow().mac);
            cfg[6] = 1;
            let end = offset + size_of::<T>();
            let bytes = cfg
                .get(offset..end)
                .ok_or(virtio_drivers::Error::ConfigSpaceTooSmall)?;
            T::read_from_bytes(bytes).map_err(|_| virtio_drivers::Error::IoError)
        }
        fn write_config_space<T: IntoBytes + Immutable>(
            &mut self,
            _offset: usize,
            _value: T,
        ) -> Result<(), virtio_drivers::Error> {
            Err(virtio_drivers::Error::Unsupported)
        }
    }
}
