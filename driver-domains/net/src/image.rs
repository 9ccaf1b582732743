//! Bring-up and event loop of the image.

use crate::device::{Net, VirtioNetDevice};
use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;
use hal::dma::VirtioHal;
use hal::ecam::{self, Ecam};
use hal::pci::{self, Bar, Function, command};
use hal::platform;
use hal::virtio::{self, CommonCfg, NO_VECTOR};
use net_dd::Error;
use net_dd::config::NetConfig;
use net_dd::echo::EchoService;
use smoltcp::iface::SocketSet;
use smoltcp::wire::EthernetAddress;
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::pci::bus::PciRoot;

/// virtio-net receive queue index.
const RX_QUEUE: u16 = 0;
/// virtio-net transmit queue index.
const TX_QUEUE: u16 = 1;
/// MSI-X table entry used for receive interrupts.
const RX_MSIX_ENTRY: u16 = 0;
/// Echo sockets (connections that may be open or closing at once).
const ECHO_SOCKETS: usize = 8;
/// Send/receive buffer per echo socket.
const ECHO_BUF: usize = 8192;
/// Longest sleep with working interrupts (smoltcp timers are honoured anyway).
const IDLE_WITH_IRQ: Duration = Duration::from_secs(1);
/// Poll period without interrupts.
const IDLE_POLLING: Duration = Duration::from_micros(200);
/// Where unassigned BARs are placed (32-bit MMIO hole above q35's ECAM, below the IOAPIC).
const BAR_WINDOW: (u64, u64) = (0xc000_0000, 0xfe00_0000);

static RX_IRQS: AtomicU64 = AtomicU64::new(0);

fn on_rx_irq() {
    RX_IRQS.fetch_add(1, Ordering::Relaxed);
}

fn smol_now() -> smoltcp::time::Instant {
    smoltcp::time::Instant::from_micros(rt::time::now().as_micros() as i64)
}

/// The image's entry point.
pub fn main(boot: &'static rt::BootInfo) -> rt::ExitCode {
    if rt::xen().is_some() {
        // A Xen driver domain (PVH): vifs instead of PCI devices.
        return crate::xen::main(boot);
    }
    match run(boot) {
        Ok(never) => match never {},
        Err(e) => {
            log::error!("net-dd: {e}");
            rt::ExitCode::Failure
        }
    }
}

/// The device as found and configured on PCI.
struct PciNet {
    ecam: Ecam,
    func: Function,
    bars: [Option<Bar>; 6],
}

fn find_device(boot: &rt::BootInfo) -> Result<PciNet, Error> {
    let mcfg = platform::find_ecam(boot);
    let mut ecam = platform::map_ecam(&mcfg).map_err(|e| {
        log::error!("cannot map ECAM: {e}");
        Error::NoDevice
    })?;
    // Stop at the first virtio-net function (every config read is an MMIO exit).
    let mut n = 0;
    let mut found = None;
    pci::for_each_function(&ecam, mcfg.start_bus, mcfg.end_bus, true, |f| {
        let h = f.header;
        n += 1;
        log::debug!(
            "pci {} {:04x}:{:04x} class {:02x}.{:02x}",
            f.bdf,
            h.vendor_id,
            h.device_id,
            h.class,
            h.subclass
        );
        if virtio::is_net(h.vendor_id, h.device_id) {
            found = Some(f);
            return false;
        }
        true
    });
    let Some(func) = found else {
        log::error!("no virtio-net (1af4:1041/1000) among {n} PCI functions");
        return Err(Error::NoDevice);
    };
    // Decoding stays off until the BARs are sized and virtio-drivers has read its capabilities:
    // every decode toggle makes the platform remap the device's windows.
    pci::update_command(
        &mut ecam,
        func.bdf,
        0,
        command::MEMORY_SPACE | command::IO_SPACE,
    );
    let bars =
        platform::assign_bars(&mut ecam, func.bdf, BAR_WINDOW.0, BAR_WINDOW.1).map_err(|e| {
            log::error!("{}: BAR assignment failed: {e}", func.bdf);
            Error::DeviceInit
        })?;
    for bar in bars.iter().flatten() {
        log::debug!(
            "{} BAR{} {:?} {:#x} size {:#x}",
            func.bdf,
            bar.index,
            bar.kind,
            bar.address,
            bar.size
        );
    }
    Ok(PciNet { ecam, func, bars })
}

/// MSI-X for the receive queue: the CPU vector, or `None` (polling) if anything is missing.
fn setup_irq(dev: &mut PciNet) -> Option<u8> {
    let Some(msg) = rt::irq::register_msi(on_rx_irq) else {
        log::warn!("no free interrupt vector; polling");
        return None;
    };
    match platform::enable_msix(&mut dev.ecam, dev.func.bdf, &dev.bars, RX_MSIX_ENTRY, msg) {
        Ok(table) => {
            log::debug!(
                "MSI-X: {} entries, entry {RX_MSIX_ENTRY} -> vector {}",
                table.entries(),
                msg.vector()
            );
            // The table stays mapped (rt never unmaps); the handle is no longer needed.
            Some(msg.vector())
        }
        Err(e) => {
            log::warn!("MSI-X setup failed ({e}); polling");
            None
        }
    }
}

/// Routes receive-queue events to our MSI-X entry and silences the others. `virtio-drivers`
/// 0.13 does not expose `queue_msix_vector`, so the common configuration is written here,
/// through a second mapping of the registers its transport also uses. That is sound because
/// both are raw volatile accessors (no references), this runs between driver calls on the
/// only CPU, and the transport re-selects the queue (`queue_select`) before each queue access.
/// QEMU accepts vector changes after `DRIVER_OK`; the spec suggests setting them before
/// enabling the queue, which virtio-drivers gives no hook for.
fn route_vectors(dev: &PciNet) -> Result<(), hal::Error> {
    let cap = virtio::find_cap(&dev.ecam, dev.func.bdf, virtio::CAP_COMMON_CFG)?;
    let bar = dev.bars[usize::from(cap.bar)].ok_or(hal::Error::BarUnassigned)?;
    let regs = platform::map_bar(&bar, u64::from(cap.offset), cap.length as usize)?;
    let mut common = CommonCfg::new(regs)?;
    let _ = common.set_config_vector(NO_VECTOR);
    let _ = common.set_queue_vector(TX_QUEUE, NO_VECTOR)?;
    let got = common.set_queue_vector(RX_QUEUE, RX_MSIX_ENTRY)?;
    if got == RX_MSIX_ENTRY {
        Ok(())
    } else {
        Err(hal::Error::Invalid)
    }
}

fn run(boot: &'static rt::BootInfo) -> Result<core::convert::Infallible, Error> {
    let t0 = rt::time::now();
    let cfg = NetConfig::from_cmdline(boot.cmdline)?;
    let mut pdev = find_device(boot)?;

    // SAFETY: the alias is used only by virtio-drivers' transport set-up below, which runs to
    // completion before we touch this function's configuration space again.
    let mut root = PciRoot::new(unsafe { pdev.ecam.alias() });
    let transport =
        PciTransport::new::<VirtioHal, Ecam>(&mut root, ecam::device_function(pdev.func.bdf))
            .map_err(|e| {
                log::error!("virtio PCI transport: {e}");
                Error::DeviceInit
            })?;
    pci::update_command(
        &mut pdev.ecam,
        pdev.func.bdf,
        command::MEMORY_SPACE | command::BUS_MASTER,
        0,
    );
    let t_pci = rt::time::now();
    let mut irq = setup_irq(&mut pdev);
    // virtio-drivers logs its feature negotiation at info level; keep the boot path quiet
    // (every console byte is an I/O exit) unless debugging.
    let level = log::max_level();
    if level <= log::LevelFilter::Info {
        log::set_max_level(log::LevelFilter::Warn);
    }
    let net = Net::new(transport);
    log::set_max_level(level);
    let net = net.map_err(|e| {
        log::error!("virtio-net init: {e}");
        Error::DeviceInit
    })?;
    if irq.is_some()
        && let Err(e) = route_vectors(&pdev)
    {
        log::warn!("virtio MSI-X vector routing failed ({e}); polling");
        irq = None;
    }
    let mac = EthernetAddress(net.mac_address());
    let mut device = VirtioNetDevice::new(net);
    let t_dev = rt::time::now();

    let seed = rt::time::now().as_nanos() ^ boot.tsc_at_entry.rotate_left(17);
    let mut iface = net_dd::build_interface(&cfg, mac, &mut device, smol_now(), seed);
    let mut sockets = SocketSet::new(alloc::vec![]);
    let mut echo = EchoService::new(&mut sockets, cfg.echo_port, ECHO_SOCKETS, ECHO_BUF);
    rt::ready("net-dd");
    // Reported after the marker: console output is not part of the initialisation.
    let h = pdev.func.header;
    log::info!(
        "virtio-net {} ({:04x}:{:04x}) MAC {mac} IP {} gw {} echo port {}; {}; init: pci {} us, virtio {} us",
        pdev.func.bdf,
        h.vendor_id,
        h.device_id,
        cfg.cidr,
        cfg.gateway,
        cfg.echo_port,
        match irq {
            Some(v) => alloc::format!("rx interrupts on MSI-X vector {v}"),
            None => alloc::format!("polling every {} us", IDLE_POLLING.as_micros()),
        },
        (t_pci - t0).as_micros(),
        (t_dev - t_pci).as_micros(),
    );

    let idle = if irq.is_some() {
        IDLE_WITH_IRQ
    } else {
        IDLE_POLLING
    };
    let mut last_report = rt::time::now();
    let mut last_stats = (echo.stats(), 0, device.stats());
    loop {
        let now = smol_now();
        iface.poll(now, &mut device, &mut sockets);
        if echo.poll(&mut sockets) {
            // Echoed data waits in socket buffers: send it right away.
            continue;
        }
        let wait = iface
            .poll_delay(now, &sockets)
            .map_or(idle, |d| Duration::from_micros(d.total_micros()).min(idle));
        let t = rt::time::now();
        let stats = (
            echo.stats(),
            RX_IRQS.load(Ordering::Relaxed),
            device.stats(),
        );
        if t - last_report >= Duration::from_secs(10) && stats != last_stats {
            last_report = t;
            last_stats = stats;
            let n = stats.2;
            log::info!(
                "stats: {} echo connections, {} bytes echoed, {} rx interrupts; frames rx {} tx {}, rx errors {}, tx dropped {}",
                stats.0.connections,
                stats.0.bytes,
                stats.1,
                n.rx_frames,
                n.tx_frames,
                n.rx_errors,
                n.tx_dropped
            );
        }
        if !wait.is_zero() {
            rt::event::wait_until(Some(t + wait));
        }
    }
}
