//! The NIC that reaches remote volumes: smoltcp's device over `hal::virtio_net`. Traffic is
//! NBD over TCP at block-device rates, so a received frame is copied out of its virtio buffer
//! (the buffer goes straight back to the receive queue) and the tokens hold no borrow of the
//! driver besides the transmit side's.

use alloc::vec::Vec;

use hal::virtio_net::pci::PciNet;
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::time::Instant;

/// Virtqueue entries (receive and transmit buffers each).
pub const QUEUE_SIZE: usize = 64;
/// Largest Ethernet frame (no VLAN tag, no FCS).
const MTU: usize = 1514;

/// smoltcp's device over the driver.
pub struct Nic {
    net: PciNet<QUEUE_SIZE>,
    /// Frames sent, frames received.
    pub frames: (u64, u64),
}

impl Nic {
    /// Wraps an opened driver.
    pub fn new(net: PciNet<QUEUE_SIZE>) -> Self {
        Self { net, frames: (0, 0) }
    }
}

/// A received frame (a copy).
pub struct Rx(Vec<u8>);

/// Permission to send one frame.
pub struct Tx<'a>(&'a mut PciNet<QUEUE_SIZE>);

impl Device for Nic {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _t: Instant) -> Option<(Rx, Tx<'_>)> {
        let frame = self.net.receive()?;
        let copy = frame.packet().to_vec();
        self.net.recycle(frame);
        self.frames.1 += 1;
        Some((Rx(copy), Tx(&mut self.net)))
    }

    fn transmit(&mut self, _t: Instant) -> Option<Tx<'_>> {
        if !self.net.can_send() {
            return None;
        }
        self.frames.0 += 1;
        Some(Tx(&mut self.net))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MTU;
        caps.max_burst_size = Some(QUEUE_SIZE / 2);
        caps
    }
}

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        match self.0.tx_buffer(len) {
            Some(mut frame) => {
                let r = f(frame.packet_mut());
                // A refused send is counted by the driver (`tx_dropped`); TCP retransmits.
                let _ = self.0.send(frame);
                r
            }
            None => f(&mut alloc::vec![0u8; len]),
        }
    }
}
