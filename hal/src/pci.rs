//! PCI configuration space: addressing, header decoding, enumeration, BARs, capabilities, MSI-X.
//!
//! Everything here is written against the [`ConfigSpace`] trait, so it runs unchanged on the
//! memory-mapped ECAM ([`crate::ecam::Ecam`]) and on the host-test fake
//! (`fake::FakeConfigSpace`). Values read from configuration space come from devices
//! (and, under passthrough, from whoever emulates them): loops are bounded, offsets checked.

use crate::Error;
use crate::mmio::RegisterBlock;
use core::fmt;

/// Size of one function's configuration space under ECAM.
pub const CONFIG_SPACE_SIZE: u16 = 4096;

/// Register offsets of the common header.
pub mod reg {
    /// Vendor ID (low 16 bits) and device ID (high 16 bits).
    pub const ID: u16 = 0x00;
    /// Command (low 16 bits) and status (high 16 bits).
    pub const COMMAND_STATUS: u16 = 0x04;
    /// Revision, programming interface, subclass, class.
    pub const CLASS: u16 = 0x08;
    /// Cache line size, latency timer, header type, BIST.
    pub const HEADER_TYPE: u16 = 0x0c;
    /// First base address register.
    pub const BAR0: u16 = 0x10;
    /// Type 1 (bridge): primary, secondary, subordinate bus numbers.
    pub const BRIDGE_BUSES: u16 = 0x18;
    /// Capabilities pointer (type 0 and 1).
    pub const CAP_PTR: u16 = 0x34;
    /// Interrupt line and pin.
    pub const INTERRUPT: u16 = 0x3c;
}

/// Command register bits.
pub mod command {
    /// Respond to I/O space accesses.
    pub const IO_SPACE: u16 = 1 << 0;
    /// Respond to memory space accesses.
    pub const MEMORY_SPACE: u16 = 1 << 1;
    /// May act as bus master (DMA, MSI writes).
    pub const BUS_MASTER: u16 = 1 << 2;
    /// INTx# assertion disabled.
    pub const INTX_DISABLE: u16 = 1 << 10;
}

/// Status register bit: the function has a capability list.
pub const STATUS_CAP_LIST: u16 = 1 << 4;

/// Capability IDs.
pub mod cap_id {
    /// Message signalled interrupts.
    pub const MSI: u8 = 0x05;
    /// Vendor specific (virtio uses these).
    pub const VENDOR: u8 = 0x09;
    /// PCI Express.
    pub const PCIE: u8 = 0x10;
    /// MSI-X.
    pub const MSIX: u8 = 0x11;
}

/// A bus/device/function address.
#[derive(Copy, Clone, Debug, Eq, PartialEq, Ord, PartialOrd, Hash)]
pub struct Bdf {
    /// Bus number.
    pub bus: u8,
    /// Device number, `0..32`.
    pub device: u8,
    /// Function number, `0..8`.
    pub function: u8,
}

impl Bdf {
    /// A BDF, or `None` when the device or function number is out of range.
    pub const fn new(bus: u8, device: u8, function: u8) -> Option<Self> {
        if device < 32 && function < 8 {
            Some(Self {
                bus,
                device,
                function,
            })
        } else {
            None
        }
    }

    /// Byte offset of this function's 4 KiB configuration space inside an ECAM region that
    /// starts at bus `start_bus`; `None` if the bus is below `start_bus`.
    pub fn ecam_offset(self, start_bus: u8) -> Option<usize> {
        let bus = self.bus.checked_sub(start_bus)?;
        Some(
            (usize::from(bus) << 20)
                | (usize::from(self.device & 31) << 15)
                | (usize::from(self.function & 7) << 12),
        )
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}

/// Access to PCI configuration space, one aligned dword at a time.
///
/// Implementations return all-ones for functions that do not exist or for offsets outside
/// `0..4096`, and ignore such writes.
pub trait ConfigSpace {
    /// Reads the dword at `offset & !3`.
    fn read32(&self, bdf: Bdf, offset: u16) -> u32;
    /// Writes the dword at `offset & !3`.
    fn write32(&mut self, bdf: Bdf, offset: u16, value: u32);

    /// Reads 16 bits at `offset` (2-aligned) out of the containing dword.
    fn read16(&self, bdf: Bdf, offset: u16) -> u16 {
        (self.read32(bdf, offset & !3) >> ((offset & 2) * 8)) as u16
    }
    /// Reads 8 bits at `offset` out of the containing dword.
    fn read8(&self, bdf: Bdf, offset: u16) -> u8 {
        (self.read32(bdf, offset & !3) >> ((offset & 3) * 8)) as u8
    }
}

/// The decoded common part of a function's configuration header.
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
pub struct Header {
    /// Vendor ID.
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Command register.
    pub command: u16,
    /// Status register.
    pub status: u16,
    /// Revision ID.
    pub revision: u8,
    /// Programming interface.
    pub prog_if: u8,
    /// Subclass code.
    pub subclass: u8,
    /// Base class code.
    pub class: u8,
    /// Header layout: 0 = endpoint, 1 = PCI-to-PCI bridge, 2 = CardBus bridge.
    pub header_type: u8,
    /// The device implements functions other than 0.
    pub multifunction: bool,
}

impl Header {
    /// Decodes the first four dwords of configuration space; `None` if no function answers
    /// (vendor ID all-ones or zero).
    pub fn decode(dw: [u32; 4]) -> Option<Self> {
        let vendor_id = dw[0] as u16;
        if vendor_id == 0xffff || vendor_id == 0 {
            return None;
        }
        let ht = (dw[3] >> 16) as u8;
        Some(Self {
            vendor_id,
            device_id: (dw[0] >> 16) as u16,
            command: dw[1] as u16,
            status: (dw[1] >> 16) as u16,
            revision: dw[2] as u8,
            prog_if: (dw[2] >> 8) as u8,
            subclass: (dw[2] >> 16) as u8,
            class: (dw[2] >> 24) as u8,
            header_type: ht & 0x7f,
            multifunction: ht & 0x80 != 0,
        })
    }

    /// Reads and decodes the header of `bdf`.
    pub fn read<C: ConfigSpace + ?Sized>(cfg: &C, bdf: Bdf) -> Option<Self> {
        let id = cfg.read32(bdf, reg::ID);
        if id as u16 == 0xffff || id as u16 == 0 {
            return None;
        }
        Self::decode([
            id,
            cfg.read32(bdf, reg::COMMAND_STATUS),
            cfg.read32(bdf, reg::CLASS),
            cfg.read32(bdf, reg::HEADER_TYPE),
        ])
    }

    /// Whether this is a PCI-to-PCI bridge (type 1 header).
    pub fn is_bridge(&self) -> bool {
        self.header_type == 1
    }

    /// Number of BARs the header layout has (6 for endpoints, 2 for bridges, 0 otherwise).
    pub fn bar_count(&self) -> u8 {
        match self.header_type {
            0 => 6,
            1 => 2,
            _ => 0,
        }
    }
}

/// One function found during enumeration.
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
pub struct Function {
    /// Where it is.
    pub bdf: Bdf,
    /// Its header.
    pub header: Header,
}

/// Visits every function reachable from bus `first_bus`, following PCI-to-PCI bridges to
/// their secondary buses when `follow_bridges` is set, but never leaving `first_bus..=last_bus`
/// and never scanning a bus twice (so a bad bridge setup cannot loop). Functions 1..7 are only
/// probed on multi-function devices. `visit` returns `false` to stop early.
pub fn for_each_function<C, F>(
    cfg: &C,
    first_bus: u8,
    last_bus: u8,
    follow_bridges: bool,
    mut visit: F,
) where
    C: ConfigSpace + ?Sized,
    F: FnMut(Function) -> bool,
{
    let mut scanned = [0u64; 4];
    let mut pending = [0u8; 256];
    let mut npending = 1usize;
    pending[0] = first_bus;
    while npending > 0 {
        npending -= 1;
        let bus = pending[npending];
        let (word, bit) = (usize::from(bus / 64), bus % 64);
        if bus < first_bus || bus > last_bus || scanned[word] & (1 << bit) != 0 {
            continue;
        }
        scanned[word] |= 1 << bit;
        for device in 0..32 {
            for function in 0..8 {
                let Some(bdf) = Bdf::new(bus, device, function) else {
                    continue;
                };
                let Some(header) = Header::read(cfg, bdf) else {
                    if function == 0 {
                        break;
                    }
                    continue;
                };
                if follow_bridges && header.is_bridge() {
                    let secondary = cfg.read8(bdf, reg::BRIDGE_BUSES + 1);
                    if secondary > bus && npending < pending.len() {
                        pending[npending] = secondary;
                        npending += 1;
                    }
                }
                if !visit(Function { bdf, header }) {
                    return;
                }
                if function == 0 && !header.multifunction {
                    break;
                }
            }
        }
    }
}

/// The first function for which `pred` holds (see [`for_each_function`] for the scan).
pub fn find_function<C, P>(cfg: &C, first_bus: u8, last_bus: u8, mut pred: P) -> Option<Function>
where
    C: ConfigSpace + ?Sized,
    P: FnMut(&Function) -> bool,
{
    let mut found = None;
    for_each_function(cfg, first_bus, last_bus, true, |f| {
        if pred(&f) {
            found = Some(f);
            false
        } else {
            true
        }
    });
    found
}

/// Reads the command register.
pub fn command<C: ConfigSpace + ?Sized>(cfg: &C, bdf: Bdf) -> u16 {
    cfg.read16(bdf, reg::COMMAND_STATUS)
}

/// Writes the command register. The status half of the dword is written as zero, which leaves
/// its write-one-to-clear bits untouched.
pub fn set_command<C: ConfigSpace + ?Sized>(cfg: &mut C, bdf: Bdf, value: u16) {
    cfg.write32(bdf, reg::COMMAND_STATUS, u32::from(value));
}

/// Sets and clears command bits; returns the new command value.
pub fn update_command<C: ConfigSpace + ?Sized>(cfg: &mut C, bdf: Bdf, set: u16, clear: u16) -> u16 {
    let value = (command(cfg, bdf) & !clear) | set;
    set_command(cfg, bdf, value);
    value
}

/// What kind of address a BAR decodes.
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
pub enum BarKind {
    /// 32-bit memory space.
    Memory32,
    /// 64-bit memory space (uses two BAR slots).
    Memory64,
    /// I/O port space.
    Io,
}

/// A decoded and sized base address register.
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
pub struct Bar {
    /// BAR slot index (0..6); a 64-bit BAR also occupies `index + 1`.
    pub index: u8,
    /// Address space and width.
    pub kind: BarKind,
    /// Prefetchable memory.
    pub prefetchable: bool,
    /// Assigned base address (0 = unassigned).
    pub address: u64,
    /// Size in bytes (a power of two).
    pub size: u64,
}

impl Bar {
    /// Whether this is a memory BAR.
    pub fn is_memory(&self) -> bool {
        self.kind != BarKind::Io
    }

    /// Number of BAR slots this BAR uses.
    pub fn slots(&self) -> u8 {
        if self.kind == BarKind::Memory64 { 2 } else { 1 }
    }

    /// Whether `[offset, offset + len)` lies inside the BAR.
    pub fn contains(&self, offset: u64, len: u64) -> bool {
        offset.checked_add(len).is_some_and(|end| end <= self.size)
    }
}

/// Decodes a BAR from its original value(s) and the value(s) read back after writing all-ones
/// (the sizing protocol). `orig_hi`/`mask_hi` are the next slot for 64-bit BARs (ignored
/// otherwise). Returns `Ok(None)` for an unimplemented BAR.
pub fn decode_bar(
    index: u8,
    orig_lo: u32,
    orig_hi: u32,
    mask_lo: u32,
    mask_hi: u32,
) -> Result<Option<Bar>, Error> {
    if orig_lo & 1 == 1 {
        // I/O: bits 1:0 are flags; decoders may implement only 16 address bits.
        let mask = mask_lo & !0x3;
        if mask == 0 {
            return Ok(None);
        }
        let mask = mask | 0xffff_0000;
        let size = u64::from((!mask).wrapping_add(1));
        return Ok(Some(Bar {
            index,
            kind: BarKind::Io,
            prefetchable: false,
            address: u64::from(orig_lo & !0x3),
            size,
        }));
    }
    let prefetchable = orig_lo & 0x8 != 0;
    let (kind, address, mask) = match (orig_lo >> 1) & 0x3 {
        0 => (
            BarKind::Memory32,
            u64::from(orig_lo & !0xf),
            u64::from(mask_lo & !0xf) | 0xffff_ffff_0000_0000,
        ),
        2 => (
            BarKind::Memory64,
            u64::from(orig_lo & !0xf) | (u64::from(orig_hi) << 32),
            u64::from(mask_lo & !0xf) | (u64::from(mask_hi) << 32),
        ),
        _ => return Err(Error::Invalid),
    };
    if mask & 0xffff_fff0 == 0 && (kind == BarKind::Memory32 || mask_hi == 0) {
        return Ok(None);
    }
    let size = (!mask).wrapping_add(1);
    if size == 0 || !size.is_power_of_two() {
        return Err(Error::Invalid);
    }
    Ok(Some(Bar {
        index,
        kind,
        prefetchable,
        address,
        size,
    }))
}

/// Reads, sizes and decodes BAR `index` of `bdf` (header type 0 layout). Address decoding is
/// switched off while the BAR holds all-ones and the original values are restored.
pub fn probe_bar<C: ConfigSpace + ?Sized>(
    cfg: &mut C,
    bdf: Bdf,
    index: u8,
) -> Result<Option<Bar>, Error> {
    with_decode_off(cfg, bdf, |cfg| probe_bar_decode_off(cfg, bdf, index))
}

/// Runs `f` with memory and I/O decoding of `bdf` switched off (if they were on), then
/// restores the command register. Every decode toggle makes the platform remap the device's
/// windows (costly under emulation), so multi-BAR work should happen inside one call.
fn with_decode_off<C: ConfigSpace + ?Sized, R>(
    cfg: &mut C,
    bdf: Bdf,
    f: impl FnOnce(&mut C) -> R,
) -> R {
    let cmd = command(cfg, bdf);
    let decode = command::IO_SPACE | command::MEMORY_SPACE;
    if cmd & decode != 0 {
        set_command(cfg, bdf, cmd & !decode);
    }
    let r = f(cfg);
    if cmd & decode != 0 {
        set_command(cfg, bdf, cmd);
    }
    r
}

fn probe_bar_decode_off<C: ConfigSpace + ?Sized>(
    cfg: &mut C,
    bdf: Bdf,
    index: u8,
) -> Result<Option<Bar>, Error> {
    if index >= 6 {
        return Err(Error::OutOfRange);
    }
    let off = reg::BAR0 + 4 * u16::from(index);
    let orig_lo = cfg.read32(bdf, off);
    cfg.write32(bdf, off, u32::MAX);
    let mask_lo = cfg.read32(bdf, off);
    cfg.write32(bdf, off, orig_lo);
    let is_mem64 = orig_lo & 0x7 == 0x4;
    if is_mem64 && index >= 5 {
        return Err(Error::Invalid);
    }
    let (orig_hi, mask_hi) = if is_mem64 {
        let hi_off = off + 4;
        let orig_hi = cfg.read32(bdf, hi_off);
        cfg.write32(bdf, hi_off, u32::MAX);
        let mask_hi = cfg.read32(bdf, hi_off);
        cfg.write32(bdf, hi_off, orig_hi);
        (orig_hi, mask_hi)
    } else {
        (0, 0)
    };
    decode_bar(index, orig_lo, orig_hi, mask_lo, mask_hi)
}

/// All BARs of an endpoint (`header_type` 0), indexed by slot; the upper slot of a 64-bit BAR
/// is `None`. BARs that fail to decode are `None` too. Decoding is off once for the whole probe.
pub fn probe_bars<C: ConfigSpace + ?Sized>(cfg: &mut C, bdf: Bdf) -> [Option<Bar>; 6] {
    with_decode_off(cfg, bdf, |cfg| {
        let mut bars = [None; 6];
        let mut i = 0u8;
        while i < 6 {
            let bar = probe_bar_decode_off(cfg, bdf, i).ok().flatten();
            bars[usize::from(i)] = bar;
            i += bar.map_or(1, |b| b.slots());
        }
        bars
    })
}

/// Programs a new base address into a BAR (decoding should be off while doing so).
pub fn set_bar_address<C: ConfigSpace + ?Sized>(cfg: &mut C, bdf: Bdf, bar: &Bar, address: u64) {
    let off = reg::BAR0 + 4 * u16::from(bar.index);
    let flags = cfg.read32(bdf, off) & if bar.kind == BarKind::Io { 0x3 } else { 0xf };
    cfg.write32(bdf, off, (address as u32 & !0xf) | flags);
    if bar.kind == BarKind::Memory64 {
        cfg.write32(bdf, off + 4, (address >> 32) as u32);
    }
}

/// Hands out naturally aligned ranges from an address window, skipping ranges that are
/// already in use (reserved by firmware-assigned BARs).
#[derive(Clone, Debug)]
pub struct BarAllocator {
    start: u64,
    end: u64,
    used: [(u64, u64); 32],
    nused: usize,
}

impl BarAllocator {
    /// A window `[start, end)`.
    pub fn new(start: u64, end: u64) -> Self {
        Self {
            start,
            end,
            used: [(0, 0); 32],
            nused: 0,
        }
    }

    /// Marks `[base, base + size)` as taken. Fails when the table of taken ranges is full.
    pub fn reserve(&mut self, base: u64, size: u64) -> Result<(), Error> {
        let end = base.checked_add(size).ok_or(Error::OutOfRange)?;
        if size == 0 || end <= self.start || base >= self.end {
            return Ok(());
        }
        let slot = self.used.get_mut(self.nused).ok_or(Error::NoSpace)?;
        *slot = (base, end);
        self.nused += 1;
        Ok(())
    }

    /// A `size`-aligned, free range of `size` bytes (`size` a power of two), now reserved.
    pub fn alloc(&mut self, size: u64) -> Result<u64, Error> {
        if size == 0 || !size.is_power_of_two() {
            return Err(Error::Invalid);
        }
        let mut candidate = self
            .start
            .checked_next_multiple_of(size)
            .ok_or(Error::NoSpace)?;
        // Each retry moves past one used range, so `nused + 1` rounds suffice.
        for _ in 0..=self.nused {
            let end = candidate.checked_add(size).ok_or(Error::NoSpace)?;
            if end > self.end {
                return Err(Error::NoSpace);
            }
            match self.used[..self.nused]
                .iter()
                .filter(|&&(b, e)| b < end && candidate < e)
                .map(|&(_, e)| e)
                .max()
            {
                None => {
                    self.reserve(candidate, size)?;
                    return Ok(candidate);
                }
                Some(e) => {
                    candidate = e.checked_next_multiple_of(size).ok_or(Error::NoSpace)?;
                }
            }
        }
        Err(Error::NoSpace)
    }
}

/// Gives every unassigned (address 0) memory BAR of endpoint `bdf` a naturally aligned
/// address from `[window_start, window_end)`, avoiding the memory BARs already assigned to any
/// endpoint reachable on buses `first_bus..=last_bus`; `assigned` is told about each new
/// address. Memory decoding of `bdf` is off while addresses change. Returns the re-probed
/// BARs (unchanged when nothing was unassigned, without scanning the bus).
pub fn assign_bars<C, F>(
    cfg: &mut C,
    bdf: Bdf,
    first_bus: u8,
    last_bus: u8,
    window_start: u64,
    window_end: u64,
    mut assigned: F,
) -> Result<[Option<Bar>; 6], Error>
where
    C: ConfigSpace + ?Sized,
    F: FnMut(&Bar, u64),
{
    let bars = probe_bars(cfg, bdf);
    if !bars
        .iter()
        .flatten()
        .any(|b| b.is_memory() && b.address == 0)
    {
        return Ok(bars);
    }
    let mut alloc = BarAllocator::new(window_start, window_end);
    let mut others = [bdf; 64];
    let mut n = 0;
    let mut overflow = false;
    for_each_function(cfg, first_bus, last_bus, true, |f| {
        if f.header.header_type == 0 && f.bdf != bdf {
            match others.get_mut(n) {
                Some(slot) => {
                    *slot = f.bdf;
                    n += 1;
                }
                None => overflow = true,
            }
        }
        true
    });
    if overflow {
        // Cannot know every window in use: refuse rather than risk an overlap.
        return Err(Error::NoSpace);
    }
    for other in &others[..n] {
        for bar in probe_bars(cfg, *other).iter().flatten() {
            if bar.is_memory() && bar.address != 0 {
                alloc.reserve(bar.address, bar.size)?;
            }
        }
    }
    for bar in bars.iter().flatten() {
        if bar.is_memory() && bar.address != 0 {
            alloc.reserve(bar.address, bar.size)?;
        }
    }
    let cmd = command(cfg, bdf);
    set_command(cfg, bdf, cmd & !command::MEMORY_SPACE);
    let mut result = Ok(());
    for bar in bars.iter().flatten() {
        if bar.is_memory() && bar.address == 0 {
            match alloc.alloc(bar.size.max(0x1000)) {
                Ok(addr) => {
                    set_bar_address(cfg, bdf, bar, addr);
                    assigned(bar, addr);
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
    }
    set_command(cfg, bdf, cmd);
    result?;
    Ok(probe_bars(cfg, bdf))
}

/// A capability in a function's capability list.
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
pub struct Capability {
    /// Capability ID.
    pub id: u8,
    /// Offset of the capability header in configuration space.
    pub offset: u16,
}

/// Iterator over the standard capability list (offsets `0x40..0x100`). Stops at a null or
/// out-of-range pointer and at the first offset seen twice, so a looping list ends.
pub struct Capabilities<'a, C: ConfigSpace + ?Sized> {
    cfg: &'a C,
    bdf: Bdf,
    next: u8,
    seen: u64,
}

impl<C: ConfigSpace + ?Sized> Iterator for Capabilities<'_, C> {
    type Item = Capability;
    fn next(&mut self) -> Option<Capability> {
        let ptr = self.next & 0xfc;
        if ptr < 0x40 {
            return None;
        }
        let bit = 1u64 << (ptr / 4);
        if self.seen & bit != 0 {
            self.next = 0;
            return None;
        }
        self.seen |= bit;
        let hdr = self.cfg.read16(self.bdf, u16::from(ptr));
        self.next = (hdr >> 8) as u8;
        Some(Capability {
            id: hdr as u8,
            offset: u16::from(ptr),
        })
    }
}

/// The capability list of `bdf` (empty if the status register says there is none).
pub fn capabilities<C: ConfigSpace + ?Sized>(cfg: &C, bdf: Bdf) -> Capabilities<'_, C> {
    let status = cfg.read16(bdf, reg::COMMAND_STATUS + 2);
    let next = if status != 0xffff && status & STATUS_CAP_LIST != 0 {
        cfg.read8(bdf, reg::CAP_PTR)
    } else {
        0
    };
    Capabilities {
        cfg,
        bdf,
        next,
        seen: 0,
    }
}

/// The first capability of `bdf` with ID `id`.
pub fn find_capability<C: ConfigSpace + ?Sized>(cfg: &C, bdf: Bdf, id: u8) -> Option<Capability> {
    capabilities(cfg, bdf).find(|c| c.id == id)
}

/// A decoded MSI-X capability.
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
pub struct MsixCap {
    /// Offset of the capability in configuration space.
    pub cap_offset: u16,
    /// Number of table entries (1..=2048).
    pub table_size: u16,
    /// BAR holding the vector table.
    pub table_bar: u8,
    /// Offset of the table in that BAR (8-aligned).
    pub table_offset: u32,
    /// BAR holding the pending bit array.
    pub pba_bar: u8,
    /// Offset of the PBA in that BAR (8-aligned).
    pub pba_offset: u32,
    /// MSI-X enable bit.
    pub enabled: bool,
    /// Function mask bit.
    pub function_mask: bool,
}

/// Message control: MSI-X enable.
const MSIX_CTRL_ENABLE: u16 = 1 << 15;
/// Message control: function mask.
const MSIX_CTRL_MASK: u16 = 1 << 14;
/// Bytes per MSI-X table entry.
pub const MSIX_ENTRY_SIZE: usize = 16;

impl MsixCap {
    /// Decodes the three dwords of an MSI-X capability found at `cap_offset`.
    pub fn decode(cap_offset: u16, dw0: u32, table: u32, pba: u32) -> Result<Self, Error> {
        if dw0 as u8 != cap_id::MSIX {
            return Err(Error::Invalid);
        }
        let control = (dw0 >> 16) as u16;
        let table_bar = (table & 0x7) as u8;
        let pba_bar = (pba & 0x7) as u8;
        if table_bar > 5 || pba_bar > 5 {
            return Err(Error::Invalid);
        }
        Ok(Self {
            cap_offset,
            table_size: (control & 0x7ff) + 1,
            table_bar,
            table_offset: table & !0x7,
            pba_bar,
            pba_offset: pba & !0x7,
            enabled: control & MSIX_CTRL_ENABLE != 0,
            function_mask: control & MSIX_CTRL_MASK != 0,
        })
    }

    /// Finds and decodes the MSI-X capability of `bdf`.
    pub fn read<C: ConfigSpace + ?Sized>(cfg: &C, bdf: Bdf) -> Result<Self, Error> {
        let cap = find_capability(cfg, bdf, cap_id::MSIX).ok_or(Error::NotFound)?;
        Self::decode(
            cap.offset,
            cfg.read32(bdf, cap.offset),
            cfg.read32(bdf, cap.offset + 4),
            cfg.read32(bdf, cap.offset + 8),
        )
    }

    /// Length in bytes of the vector table.
    pub fn table_len(&self) -> usize {
        usize::from(self.table_size) * MSIX_ENTRY_SIZE
    }

    /// Sets the enable and function-mask bits in message control.
    pub fn set_control<C: ConfigSpace + ?Sized>(
        &mut self,
        cfg: &mut C,
        bdf: Bdf,
        enable: bool,
        function_mask: bool,
    ) {
        let dw = cfg.read32(bdf, self.cap_offset);
        let mut control = (dw >> 16) as u16 & !(MSIX_CTRL_ENABLE | MSIX_CTRL_MASK);
        if enable {
            control |= MSIX_CTRL_ENABLE;
        }
        if function_mask {
            control |= MSIX_CTRL_MASK;
        }
        cfg.write32(
            bdf,
            self.cap_offset,
            (dw & 0xffff) | (u32::from(control) << 16),
        );
        self.enabled = enable;
        self.function_mask = function_mask;
    }
}

/// Vector control bit: entry masked.
const MSIX_VECTOR_MASKED: u32 = 1;

/// The MSI-X vector table of a function, over a mapped [`RegisterBlock`].
pub struct MsixTable<R: RegisterBlock> {
    regs: R,
    entries: u16,
}

impl<R: RegisterBlock> MsixTable<R> {
    /// Wraps the table registers; fails if `regs` is shorter than `entries` entries.
    pub fn new(regs: R, entries: u16) -> Result<Self, Error> {
        if regs.len() < usize::from(entries) * MSIX_ENTRY_SIZE {
            return Err(Error::Truncated);
        }
        Ok(Self { regs, entries })
    }

    /// Number of entries.
    pub fn entries(&self) -> u16 {
        self.entries
    }

    fn base(&self, entry: u16) -> Result<usize, Error> {
        if entry < self.entries {
            Ok(usize::from(entry) * MSIX_ENTRY_SIZE)
        } else {
            Err(Error::OutOfRange)
        }
    }

    /// Masks `entry`, writes the message address and data, then unmasks it.
    pub fn program(&mut self, entry: u16, address: u64, data: u32) -> Result<(), Error> {
        let base = self.base(entry)?;
        let ctrl = self.regs.read32(base + 12);
        self.regs.write32(base + 12, ctrl | MSIX_VECTOR_MASKED);
        self.regs.write32(base, address as u32);
        self.regs.write32(base + 4, (address >> 32) as u32);
        self.regs.write32(base + 8, data);
        self.regs.write32(base + 12, ctrl & !MSIX_VECTOR_MASKED);
        Ok(())
    }

    /// Masks or unmasks `entry`.
    pub fn set_masked(&mut self, entry: u16, masked: bool) -> Result<(), Error> {
        let base = self.base(entry)?;
        let ctrl = self.regs.read32(base + 12) & !MSIX_VECTOR_MASKED;
        self.regs.write32(
            base + 12,
            ctrl | if masked { MSIX_VECTOR_MASKED } else { 0 },
        );
        Ok(())
    }

    /// Reads back `(address, data, masked)` of `entry`.
    pub fn entry(&self, entry: u16) -> Result<(u64, u32, bool), Error> {
        let base = self.base(entry)?;
        let address =
            u64::from(self.regs.read32(base)) | (u64::from(self.regs.read32(base + 4)) << 32);
        Ok((
            address,
            self.regs.read32(base + 8),
            self.regs.read32(base + 12) & MSIX_VECTOR_MASKED != 0,
        ))
    }
}
