//! Binding of the pure PCI/ACPI logic to the machine through `rt`: reading firmware tables,
//! mapping ECAM and BAR regions, MSI-X setup and BAR assignment.

use crate::Error;
use crate::acpi::{self, McfgEntry, PhysRead};
use crate::ecam::Ecam;
use crate::mmio::{Mmio, RegisterBlock};
use crate::pci::{self, Bar, Bdf, ConfigSpace, MsixCap, MsixTable, command};

/// QEMU q35's ECAM base, used when ACPI gives no MCFG.
pub const Q35_ECAM_BASE: u64 = 0xb000_0000;

/// Physical memory below 4 GiB, read through `rt`'s identity mapping.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdentityMemory;

impl PhysRead for IdentityMemory {
    fn read(&self, paddr: u64, buf: &mut [u8]) -> Result<(), Error> {
        let end = paddr
            .checked_add(buf.len() as u64)
            .ok_or(Error::OutOfRange)?;
        if paddr == 0 || end > (4u64 << 30) {
            return Err(Error::OutOfRange);
        }
        let src = rt::mem::phys_to_virt(paddr);
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: `[paddr, end)` lies below 4 GiB, which `rt` identity-maps; firmware tables
            // and the BIOS area are plain memory, read byte-wise without forming references.
            *b = unsafe { src.add(i).read_volatile() };
        }
        Ok(())
    }
}

/// The ECAM window from ACPI MCFG (RSDP from the loader, else scanned), or QEMU q35's
/// `0xB000_0000` for buses 0..=255 with a log line when that fails.
pub fn find_ecam(boot: &rt::BootInfo) -> McfgEntry {
    match acpi::find_ecam(&IdentityMemory, boot.rsdp_paddr) {
        Ok(e) => {
            log::debug!(
                "ECAM from ACPI MCFG: {:#x} buses {}..={} (rsdp hint {:#x})",
                e.base,
                e.start_bus,
                e.end_bus,
                boot.rsdp_paddr
            );
            e
        }
        Err(err) => {
            log::warn!(
                "no usable ACPI MCFG ({err}); falling back to q35 ECAM at {Q35_ECAM_BASE:#x}"
            );
            McfgEntry {
                base: Q35_ECAM_BASE,
                segment: 0,
                start_bus: 0,
                end_bus: 255,
            }
        }
    }
}

/// Maps the ECAM window of `entry`.
pub fn map_ecam(entry: &McfgEntry) -> Result<Ecam, Error> {
    let len = usize::try_from(entry.window_len()).map_err(|_| Error::OutOfRange)?;
    let base = rt::mem::map_mmio(entry.start_address(), len).ok_or(Error::OutOfRange)?;
    // SAFETY: `map_mmio` mapped `[start, start + len)` uncached for the rest of the domain's
    // life; that range is the ECAM window for exactly `start_bus..=end_bus` (MCFG), and we
    // never create references into it.
    Ok(unsafe { Ecam::new(base, entry.start_bus, entry.end_bus) })
}

/// Maps `len` bytes at `offset` inside memory BAR `bar`.
pub fn map_bar(bar: &Bar, offset: u64, len: usize) -> Result<Mmio, Error> {
    map_bar_with(bar, offset, len, rt::mem::Caching::Uncached)
}

/// Like [`map_bar`] for a BAR that behaves like RAM (an ivshmem region): write-back where the
/// range covers whole 2 MiB pages.
pub fn map_bar_memory(bar: &Bar, offset: u64, len: usize) -> Result<Mmio, Error> {
    map_bar_with(bar, offset, len, rt::mem::Caching::WriteBack)
}

fn map_bar_with(bar: &Bar, offset: u64, len: usize, caching: rt::mem::Caching) -> Result<Mmio, Error> {
    if !bar.is_memory() {
        return Err(Error::Invalid);
    }
    if bar.address == 0 {
        return Err(Error::BarUnassigned);
    }
    if !bar.contains(offset, len as u64) {
        return Err(Error::OutOfRange);
    }
    let paddr = bar.address.checked_add(offset).ok_or(Error::OutOfRange)?;
    let base = rt::mem::map_physical(paddr, len, caching).ok_or(Error::OutOfRange)?;
    if !(base.as_ptr() as usize).is_multiple_of(4) {
        return Err(Error::Invalid);
    }
    // SAFETY: `map_physical` mapped the range (uncached, or write-back for RAM-like BARs); it
    // lies inside the device's BAR (checked above), is 4-byte aligned, and only volatile accesses
    // are made through `Mmio`.
    Ok(unsafe { Mmio::new(base, len) })
}

/// Gives every unassigned memory BAR of `bdf` an address from `[window_start, window_end)`
/// (see [`pci::assign_bars`]), logging each assignment.
pub fn assign_bars(
    cfg: &mut Ecam,
    bdf: Bdf,
    window_start: u64,
    window_end: u64,
) -> Result<[Option<Bar>; 6], Error> {
    let (first, last) = (cfg.start_bus(), cfg.end_bus());
    pci::assign_bars(
        cfg,
        bdf,
        first,
        last,
        window_start,
        window_end,
        |bar, addr| {
            log::info!(
                "{bdf}: assigned BAR{} ({:#x} bytes) at {addr:#x}",
                bar.index,
                bar.size
            );
        },
    )
}

/// Sets up MSI-X on `bdf`: maps its vector table, masks every entry, programs `entry` with
/// `msg`, then enables MSI-X (function unmasked) and disables INTx. Returns the table.
pub fn enable_msix<C: ConfigSpace + ?Sized>(
    cfg: &mut C,
    bdf: Bdf,
    bars: &[Option<Bar>; 6],
    entry: u16,
    msg: rt::irq::MsiMessage,
) -> Result<MsixTable<Mmio>, Error> {
    let mut cap = MsixCap::read(cfg, bdf)?;
    let bar = bars
        .get(usize::from(cap.table_bar))
        .copied()
        .flatten()
        .ok_or(Error::BarUnassigned)?;
    let regs = map_bar(&bar, u64::from(cap.table_offset), cap.table_len())?;
    let mut table = MsixTable::new(regs, cap.table_size)?;
    // Function-mask while reprogramming, as the spec recommends.
    cap.set_control(cfg, bdf, true, true);
    for e in 0..table.entries() {
        table.set_masked(e, true)?;
    }
    program_msi(&mut table, entry, msg)?;
    cap.set_control(cfg, bdf, true, false);
    pci::update_command(cfg, bdf, command::INTX_DISABLE | command::BUS_MASTER, 0);
    Ok(table)
}

/// Programs MSI-X table `entry` with an `rt` MSI message (and unmasks it).
pub fn program_msi<R: RegisterBlock>(
    table: &mut MsixTable<R>,
    entry: u16,
    msg: rt::irq::MsiMessage,
) -> Result<(), Error> {
    table.program(entry, msg.address, msg.data)
}

/// A virtio PCI function brought up to the point where a driver takes over: its BARs and the
/// `virtio-drivers` transport.
pub struct VirtioFunction {
    /// The memory BARs as assigned.
    pub bars: [Option<Bar>; 6],
    /// The modern virtio PCI transport.
    pub transport: virtio_drivers::transport::pci::PciTransport,
}

/// The bring-up every virtio PCI driver shares: decoding off while the BARs get addresses from
/// `window` (every decode toggle makes the platform remap the device's windows), the transport
/// read from the capabilities, then memory decoding and bus mastering on.
pub fn open_virtio(ecam: &mut Ecam, bdf: Bdf, window: (u64, u64)) -> Result<VirtioFunction, Error> {
    use virtio_drivers::transport::pci::{PciTransport, bus::PciRoot};
    pci::update_command(ecam, bdf, 0, command::MEMORY_SPACE | command::IO_SPACE);
    let bars = assign_bars(ecam, bdf, window.0, window.1)?;
    // SAFETY: the alias is used only by the transport set-up below, which runs to completion
    // before this function touches the configuration space again.
    let mut root = PciRoot::new(unsafe { ecam.alias() });
    let transport = PciTransport::new::<crate::dma::VirtioHal, Ecam>(&mut root, crate::ecam::device_function(bdf))
        .map_err(|e| {
            log::error!("{bdf}: virtio PCI transport: {e}");
            Error::Invalid
        })?;
    pci::update_command(ecam, bdf, command::MEMORY_SPACE | command::BUS_MASTER, 0);
    Ok(VirtioFunction { bars, transport })
}

/// MSI-X table `entry` of `bdf` on a fresh `rt` vector that calls `handler`; `None` (logged)
/// when no vector is free or the table cannot be set up: the driver then polls.
pub fn msix_vector(ecam: &mut Ecam, bdf: Bdf, bars: &[Option<Bar>; 6], entry: u16, handler: Option<fn()>) -> Option<u8> {
    let msg = handler.and_then(rt::irq::register_msi)?;
    match enable_msix(ecam, bdf, bars, entry, msg) {
        Ok(_table) => Some(msg.vector()),
        Err(e) => {
            log::warn!("{bdf}: MSI-X set-up failed ({e}); polling");
            None
        }
    }
}

/// Routes the virtio interrupt sources of `bdf`: configuration changes silenced, queue `q` to
/// MSI-X entry `e` for every `(q, e)` of `queues` (`NO_VECTOR` silences a queue).
/// `virtio-drivers` 0.13 does not expose `queue_msix_vector`, so the common configuration is
/// written through a second mapping of the registers its transport also uses: sound because
/// both are raw volatile accessors, this runs between driver calls on the only CPU, and the
/// transport re-selects the queue before each queue access. QEMU accepts vector changes after
/// `DRIVER_OK`. Fails if the device refuses a vector.
pub fn route_virtio_vectors(ecam: &Ecam, bdf: Bdf, bars: &[Option<Bar>; 6], queues: &[(u16, u16)]) -> Result<(), Error> {
    use crate::virtio::{self, CommonCfg, NO_VECTOR};
    let cap = virtio::find_cap(ecam, bdf, virtio::CAP_COMMON_CFG)?;
    let bar = bars[usize::from(cap.bar)].ok_or(Error::BarUnassigned)?;
    let regs = map_bar(&bar, u64::from(cap.offset), cap.length as usize)?;
    let mut common = CommonCfg::new(regs)?;
    let _ = common.set_config_vector(NO_VECTOR);
    for &(queue, entry) in queues {
        if common.set_queue_vector(queue, entry)? != entry {
            return Err(Error::Invalid);
        }
    }
    Ok(())
}
