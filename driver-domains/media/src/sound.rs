//! The sound device: `virtio-drivers`' `VirtIOSound` over the PCI transport (hal's ECAM, BARs
//! and `VirtioHal`). The first output stream is opened once at [`media_dd::DEVICE`]'s shape and
//! fed whole periods with the driver's non-blocking transfer; QEMU returns a period's buffer
//! once its audio backend took it, which paces the mix (up to [`IN_FLIGHT`] periods queued).

use alloc::collections::VecDeque;

use hal::dma::VirtioHal;
use hal::ecam::{self, Ecam};
use hal::pci::{self, Function, command};
use hal::platform;
use virtio_drivers::device::sound::{PcmFeatures, PcmFormat, PcmRate, VirtIOSound};
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::pci::bus::PciRoot;

/// virtio-sound's PCI device ID (modern only: 0x1040 + 25).
pub const DEVICE_SOUND: u16 = 0x1059;
/// Frames per period (10 ms at 48 kHz).
pub const PERIOD_FRAMES: usize = 480;
/// Periods queued at the device at most (80 ms).
pub const IN_FLIGHT: usize = 8;

/// The first virtio-sound function on the ECAM's buses.
pub fn find(ecam: &Ecam) -> Option<Function> {
    let mut found = None;
    pci::for_each_function(ecam, ecam.start_bus(), ecam.end_bus(), true, |f| {
        let h = f.header;
        if h.vendor_id == hal::virtio::VENDOR_ID && h.device_id == DEVICE_SOUND {
            found = Some(f);
            return false;
        }
        true
    });
    found
}

/// The device's output stream.
pub struct Sound {
    snd: VirtIOSound<VirtioHal, PciTransport>,
    stream: u32,
    tokens: VecDeque<u16>,
    /// Periods handed to the device, periods it returned.
    pub sent: u64,
    /// Periods completed.
    pub done: u64,
    /// Transfer errors.
    pub errors: u64,
}

impl Sound {
    /// Brings `func` up and opens its first output stream (48 kHz s16 stereo, 10 ms periods).
    pub fn open(ecam: &mut Ecam, transport_ecam: Ecam, func: Function, window: (u64, u64)) -> Result<Self, &'static str> {
        let bdf = func.bdf;
        pci::update_command(ecam, bdf, 0, command::MEMORY_SPACE | command::IO_SPACE);
        platform::assign_bars(ecam, bdf, window.0, window.1).map_err(|_| "BAR assignment")?;
        let mut root = PciRoot::new(transport_ecam);
        let transport =
            PciTransport::new::<VirtioHal, Ecam>(&mut root, ecam::device_function(bdf)).map_err(|_| "virtio PCI transport")?;
        pci::update_command(ecam, bdf, command::MEMORY_SPACE | command::BUS_MASTER, 0);
        let level = log::max_level();
        log::set_max_level(log::LevelFilter::Warn);
        let r = Self::start(transport);
        log::set_max_level(level);
        r
    }

    fn start(transport: PciTransport) -> Result<Self, &'static str> {
        let mut snd = VirtIOSound::<VirtioHal, PciTransport>::new(transport).map_err(|_| "virtio-sound init")?;
        let outs = snd.output_streams().map_err(|_| "virtio-sound: stream query")?;
        let stream = *outs.first().ok_or("virtio-sound: no output stream")?;
        let period = (PERIOD_FRAMES * media_dd::DEVICE.frame_bytes()) as u32;
        snd.pcm_set_params(stream, period * IN_FLIGHT as u32, period, PcmFeatures::empty(), 2, PcmFormat::S16, PcmRate::Rate48000)
            .map_err(|_| "virtio-sound: set params (48 kHz s16 stereo)")?;
        snd.pcm_prepare(stream).map_err(|_| "virtio-sound: prepare")?;
        snd.pcm_start(stream).map_err(|_| "virtio-sound: start")?;
        Ok(Self { snd, stream, tokens: VecDeque::new(), sent: 0, done: 0, errors: 0 })
    }

    /// Collects completed periods; returns how many more the device takes now.
    pub fn room(&mut self) -> usize {
        while let Some(&t) = self.tokens.front() {
            match self.snd.pcm_xfer_ok(t) {
                Ok(()) => {
                    self.tokens.pop_front();
                    self.done += 1;
                }
                Err(virtio_drivers::Error::NotReady) => break,
                Err(_) => {
                    // Not ours to recover: forget it (the queue slot is lost).
                    self.tokens.pop_front();
                    self.errors += 1;
                }
            }
        }
        IN_FLIGHT.saturating_sub(self.tokens.len())
    }

    /// Hands one period (exactly `PERIOD_FRAMES` device frames) to the device.
    pub fn send(&mut self, period: &[u8]) {
        match self.snd.pcm_xfer_nb(self.stream, period) {
            Ok(t) => {
                self.tokens.push_back(t);
                self.sent += 1;
            }
            Err(_) => self.errors += 1,
        }
    }
}
