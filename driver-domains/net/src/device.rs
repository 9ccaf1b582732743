//! The uplink NIC as the switch sees it: whole frames in and out of
//! `hal::virtio_net::VirtioNet`. A received frame's buffer goes back to the receive queue right
//! after the switch forwarded it; sending never waits for the device (buffers are reclaimed
//! when the device reports them used).

use hal::dma::VirtioHal;
use hal::virtio_net::{NetStats, RxFrame, VirtioNet};
use virtio_drivers::transport::pci::PciTransport;

/// Virtqueue size (entries); also the number of receive and of transmit buffers.
pub const QUEUE_SIZE: usize = 64;
/// Largest Ethernet frame we send or accept (MTU 1500 + 14 bytes of header).
pub const MAX_FRAME: usize = 1514;

/// The virtio-net driver type used by the image.
pub type Net = VirtioNet<VirtioHal, PciTransport, QUEUE_SIZE>;

/// The uplink device.
pub struct VirtioNetDevice {
    net: Net,
}

impl VirtioNetDevice {
    /// Wraps an initialised driver.
    pub fn new(net: Net) -> Self {
        Self { net }
    }

    /// Driver counters.
    pub fn stats(&mut self) -> NetStats {
        self.net.stats()
    }

    /// The next received frame; give it back with [`recycle`](Self::recycle) (the device has
    /// one buffer fewer until then).
    pub fn receive(&mut self) -> Option<RxFrame> {
        self.net.receive()
    }

    /// Returns a received frame's buffer to the device.
    pub fn recycle(&mut self, frame: RxFrame) {
        self.net.recycle(frame);
    }

    /// Whether a frame can be sent now.
    pub fn can_send(&mut self) -> bool {
        self.net.can_send()
    }

    /// Sends a copy of `frame`; `false` (counted in the driver's `tx_dropped`) if no transmit
    /// buffer is free or the frame is too large.
    pub fn send(&mut self, frame: &[u8]) -> bool {
        if frame.len() > MAX_FRAME {
            return false;
        }
        let Some(mut buf) = self.net.tx_buffer(frame.len()) else {
            return false;
        };
        buf.packet_mut().copy_from_slice(frame);
        self.net.send(buf).is_ok()
    }
}
