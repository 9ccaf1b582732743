//! smoltcp's `Device` on top of `virtio-drivers`' `VirtIONet`.
//!
//! Receive buffers stay owned by the virtio driver's pool: a received buffer travels in the
//! `RxToken` and goes back to the device queue right after smoltcp consumed it. smoltcp may
//! transmit from inside the receive closure, so the driver sits in a `RefCell` and neither
//! token holds a borrow while calling smoltcp's closure.

use core::cell::RefCell;
use hal::dma::VirtioHal;
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::time::Instant;
use virtio_drivers::device::net::{RxBuffer, VirtIONet};
use virtio_drivers::transport::pci::PciTransport;

/// Virtqueue size (entries); also the number of receive buffers.
pub const QUEUE_SIZE: usize = 64;
/// Receive buffer size: a full Ethernet frame plus the virtio-net header.
pub const RX_BUF_LEN: usize = 2048;
/// Largest Ethernet frame we send or accept (MTU 1500 + 14 bytes of header).
pub const MAX_FRAME: usize = 1514;

/// The virtio-net driver type used by the image.
pub type Net = VirtIONet<VirtioHal, PciTransport, QUEUE_SIZE>;

/// The smoltcp device.
pub struct VirtioNetDevice {
    net: RefCell<Net>,
}

impl VirtioNetDevice {
    /// Wraps an initialised driver.
    pub fn new(net: Net) -> Self {
        Self {
            net: RefCell::new(net),
        }
    }

    /// Direct access to the driver (outside smoltcp polling).
    pub fn net(&mut self) -> &mut Net {
        self.net.get_mut()
    }
}

/// A received frame.
pub struct Rx<'a> {
    net: &'a RefCell<Net>,
    buf: RxBuffer,
}

/// Permission to send one frame.
pub struct Tx<'a> {
    net: &'a RefCell<Net>,
}

impl Device for VirtioNetDevice {
    type RxToken<'a> = Rx<'a>;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Rx<'_>, Tx<'_>)> {
        let buf = match self.net.get_mut().receive() {
            Ok(buf) => buf,
            Err(virtio_drivers::Error::NotReady) => return None,
            Err(e) => {
                log::warn!("virtio-net receive: {e}");
                return None;
            }
        };
        Some((
            Rx {
                net: &self.net,
                buf,
            },
            Tx { net: &self.net },
        ))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Tx<'_>> {
        if self.net.get_mut().can_send() {
            Some(Tx { net: &self.net })
        } else {
            None
        }
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MAX_FRAME;
        caps.max_burst_size = Some(QUEUE_SIZE / 2);
        caps
    }
}

impl RxToken for Rx<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        let result = f(self.buf.packet());
        if let Err(e) = self.net.borrow_mut().recycle_rx_buffer(self.buf) {
            log::warn!("virtio-net: could not recycle a receive buffer: {e}");
        }
        result
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut net = self.net.borrow_mut();
        let mut tx = net.new_tx_buffer(len);
        let result = f(tx.packet_mut());
        if let Err(e) = net.send(tx) {
            log::warn!("virtio-net send of {len} bytes: {e}");
        }
        result
    }
}
