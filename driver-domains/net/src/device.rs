//! smoltcp's `Device` on top of `hal::virtio_net::VirtioNet`.
//!
//! A received frame travels in the `RxToken` and its buffer goes back to the receive queue
//! right after smoltcp consumed it. smoltcp may transmit from inside the receive closure, so
//! the driver sits in a `RefCell` and the receive token holds no borrow while smoltcp runs.
//! Sending never waits for the device: buffers are reclaimed when the device reports them
//! used.

use core::cell::RefCell;
use hal::dma::VirtioHal;
use hal::virtio_net::{NetStats, RxFrame, VirtioNet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::time::Instant;
use virtio_drivers::transport::pci::PciTransport;

/// Virtqueue size (entries); also the number of receive and of transmit buffers.
pub const QUEUE_SIZE: usize = 64;
/// Largest Ethernet frame we send or accept (MTU 1500 + 14 bytes of header).
pub const MAX_FRAME: usize = 1514;

/// The virtio-net driver type used by the image.
pub type Net = VirtioNet<VirtioHal, PciTransport, QUEUE_SIZE>;

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

    /// Driver counters.
    pub fn stats(&mut self) -> NetStats {
        self.net.get_mut().stats()
    }
}

/// A received frame.
pub struct Rx<'a> {
    net: &'a RefCell<Net>,
    frame: RxFrame,
}

/// Permission to send one frame.
pub struct Tx<'a> {
    net: &'a RefCell<Net>,
}

impl Device for VirtioNetDevice {
    type RxToken<'a> = Rx<'a>;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Rx<'_>, Tx<'_>)> {
        let frame = self.net.get_mut().receive()?;
        Some((
            Rx {
                net: &self.net,
                frame,
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
        let result = f(self.frame.packet());
        self.net.borrow_mut().recycle(self.frame);
        result
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut net = self.net.borrow_mut();
        match net.tx_buffer(len) {
            Some(mut frame) => {
                let result = f(frame.packet_mut());
                if let Err(e) = net.send(frame) {
                    log::warn!("virtio-net send of {len} bytes: {e}");
                }
                result
            }
            None => {
                // smoltcp needs the closure run to build its state; the frame is dropped
                // (counted in the driver's `tx_dropped`), as a full NIC would.
                drop(net);
                log::warn!("virtio-net: no transmit buffer for {len} bytes; frame dropped");
                f(&mut alloc::vec![0u8; len])
            }
        }
    }
}
