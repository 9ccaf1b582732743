//! `nic=virtio`: smoltcp's device over `hal::virtio_net` (the NIC the guest owns directly, the
//! "no driver domain" baseline). A received frame travels in the `RxToken` and its buffer goes
//! back to the receive queue after smoltcp consumed it; smoltcp may send from inside the
//! receive closure, so the driver sits in a `RefCell` and no token holds a borrow while
//! smoltcp runs. Sending never waits: a frame with no free buffer is dropped and counted by
//! the driver (TCP retransmits).

use core::cell::RefCell;

use hal::virtio_net::RxFrame;
use hal::virtio_net::pci::PciNet;
use net_guest::device::MAX_FRAME;
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::time::Instant;

/// Virtqueue entries (receive and transmit buffers each).
pub const QUEUE_SIZE: usize = 64;

/// The driver type.
pub type Net = PciNet<QUEUE_SIZE>;

/// smoltcp's device over the driver.
pub struct VirtioDevice {
    net: RefCell<Net>,
}

impl VirtioDevice {
    /// Wraps an opened driver.
    pub fn new(net: Net) -> Self {
        Self {
            net: RefCell::new(net),
        }
    }

    /// Transmit requests the driver refused so far.
    pub fn tx_dropped(&mut self) -> u64 {
        self.net.get_mut().stats().tx_dropped
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

impl Device for VirtioDevice {
    type RxToken<'a> = Rx<'a>;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _t: Instant) -> Option<(Rx<'_>, Tx<'_>)> {
        let frame = self.net.get_mut().receive()?;
        let net = &self.net;
        Some((Rx { net, frame }, Tx { net }))
    }

    fn transmit(&mut self, _t: Instant) -> Option<Tx<'_>> {
        self.net.get_mut().can_send().then_some(Tx { net: &self.net })
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
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let r = f(self.frame.packet());
        self.net.borrow_mut().recycle(self.frame);
        r
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut net = self.net.borrow_mut();
        let Some(mut frame) = net.tx_buffer(len) else {
            // smoltcp needs its closure run; the frame goes nowhere (counted by the driver).
            drop(net);
            return f(&mut alloc::vec![0u8; len]);
        };
        let r = f(frame.packet_mut());
        // A refused send is counted in the driver's `tx_dropped`.
        let _ = net.send(frame);
        r
    }
}
