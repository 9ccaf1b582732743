//! A virtio-net driver with buffers owned here and asynchronous transmit, on top of
//! `virtio-drivers`' `VirtIONetRaw`.
//!
//! `virtio-drivers`' safe `VirtIONet` allocates a vector per sent frame and spins until the
//! device has consumed it. Here every buffer is allocated once: receive buffers sit in the
//! receive queue and are lent out as [`RxFrame`]s, transmit buffers cycle through a free list,
//! and a sent frame is reclaimed later, when the device reports it used. No call waits for the
//! device.
//!
//! The unsafe part is the `VirtIONetRaw` contract: a buffer handed to the device is neither
//! touched nor freed until the device returned it. Buffers are boxed slices whose heap storage
//! never moves while the box is parked in `rx_posted`/`tx_posted` under the device's token.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::transport::Transport;
use virtio_drivers::{Error as VirtioError, Hal};

/// Size of each receive and transmit buffer: virtio-net header plus a 1514-byte frame, rounded.
pub const BUF_LEN: usize = 2048;

/// A received frame, lent out until [`VirtioNet::recycle`].
pub struct RxFrame {
    buf: Box<[u8]>,
    start: usize,
    len: usize,
}

impl RxFrame {
    /// The Ethernet frame.
    pub fn packet(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
}

/// A transmit buffer being filled; hand it to [`VirtioNet::send`].
pub struct TxFrame {
    buf: Box<[u8]>,
    header: usize,
    len: usize,
}

impl TxFrame {
    /// The frame bytes to fill (`len` as requested).
    pub fn packet_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.header..self.header + self.len]
    }
}

/// Counters.
#[derive(Copy, Clone, Debug, Default, Eq, PartialEq)]
pub struct NetStats {
    /// Frames received.
    pub rx_frames: u64,
    /// Frames handed to the device for sending.
    pub tx_frames: u64,
    /// Receive completions the device reported wrongly (bad token, short length).
    pub rx_errors: u64,
    /// Transmit requests refused (frame too large, no buffer, queue full).
    pub tx_dropped: u64,
}

/// The driver. `QS` is the virtqueue size (power of two).
pub struct VirtioNet<H: Hal, T: Transport, const QS: usize> {
    raw: VirtIONetRaw<H, T, QS>,
    /// Receive buffers held by the device, by token.
    rx_posted: Vec<Option<Box<[u8]>>>,
    /// Transmit buffers held by the device, by token, with the length handed over.
    tx_posted: Vec<Option<(Box<[u8]>, usize)>>,
    tx_free: Vec<Box<[u8]>>,
    stats: NetStats,
}

impl<H: Hal, T: Transport, const QS: usize> VirtioNet<H, T, QS> {
    /// Initialises the device and fills the receive queue.
    pub fn new(transport: T) -> Result<Self, VirtioError> {
        let raw = VirtIONetRaw::<H, T, QS>::new(transport)?;
        let mut net = Self {
            raw,
            rx_posted: (0..QS).map(|_| None).collect(),
            tx_posted: (0..QS).map(|_| None).collect(),
            tx_free: (0..QS)
                .map(|_| vec![0u8; BUF_LEN].into_boxed_slice())
                .collect(),
            stats: NetStats::default(),
        };
        for _ in 0..QS {
            net.post_rx(vec![0u8; BUF_LEN].into_boxed_slice())?;
        }
        Ok(net)
    }

    /// The device's MAC address.
    pub fn mac_address(&self) -> [u8; 6] {
        self.raw.mac_address()
    }

    /// Counters so far.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    fn post_rx(&mut self, mut buf: Box<[u8]>) -> Result<(), VirtioError> {
        // SAFETY: the buffer is parked in `rx_posted` under its token right below and not
        // touched (nor dropped) until `receive` pops that token from the used ring.
        let token = unsafe { self.raw.receive_begin(&mut buf)? };
        match self.rx_posted.get_mut(usize::from(token)) {
            Some(slot @ None) => {
                *slot = Some(buf);
                Ok(())
            }
            // A token outside the queue or already in use: the driver state is inconsistent.
            // Leak the buffer rather than free memory the device may write.
            _ => {
                core::mem::forget(buf);
                Err(VirtioError::WrongToken)
            }
        }
    }

    /// The next received frame, if any. Give it back with [`recycle`](Self::recycle).
    pub fn receive(&mut self) -> Option<RxFrame> {
        loop {
            let token = self.raw.poll_receive()?;
            let Some(mut buf) = self
                .rx_posted
                .get_mut(usize::from(token))
                .and_then(Option::take)
            else {
                // The device named a token we did not post: nothing sane to pop.
                self.stats.rx_errors += 1;
                return None;
            };
            // SAFETY: `buf` is the buffer posted under `token` (taken from `rx_posted`), with
            // the same pointer and length as given to `receive_begin`.
            match unsafe { self.raw.receive_complete(token, &mut buf) } {
                Ok((start, len)) if start.checked_add(len).is_some_and(|e| e <= buf.len()) => {
                    self.stats.rx_frames += 1;
                    return Some(RxFrame { buf, start, len });
                }
                // `IoError`: popped, but shorter than the virtio-net header.
                Ok(_) | Err(VirtioError::IoError) => {
                    // Bad length from the device: drop the frame, keep the buffer.
                    self.stats.rx_errors += 1;
                    if self.post_rx(buf).is_err() {
                        return None;
                    }
                }
                Err(_) => {
                    // Not popped: the device still owns the buffer. Park it again.
                    self.stats.rx_errors += 1;
                    self.rx_posted[usize::from(token)] = Some(buf);
                    return None;
                }
            }
        }
    }

    /// Puts a received frame's buffer back into the receive queue.
    pub fn recycle(&mut self, frame: RxFrame) {
        if self.post_rx(frame.buf).is_err() {
            self.stats.rx_errors += 1;
        }
    }

    /// Takes back transmit buffers the device has finished with.
    pub fn reclaim_tx(&mut self) {
        while let Some(token) = self.raw.poll_transmit() {
            let Some((buf, len)) = self
                .tx_posted
                .get_mut(usize::from(token))
                .and_then(Option::take)
            else {
                return;
            };
            // SAFETY: `buf[..len]` is exactly the slice given to `transmit_begin` for `token`.
            match unsafe { self.raw.transmit_complete(token, &buf[..len]) } {
                Ok(_) => self.tx_free.push(buf),
                Err(_) => {
                    // Not popped: the device still owns it. Park it again.
                    self.tx_posted[usize::from(token)] = Some((buf, len));
                    return;
                }
            }
        }
    }

    /// Whether a frame can be sent now.
    pub fn can_send(&mut self) -> bool {
        self.reclaim_tx();
        !self.tx_free.is_empty() && self.raw.can_send()
    }

    /// Whether sent frames are still waiting for the device.
    pub fn tx_in_flight(&self) -> bool {
        self.tx_free.len() < QS
    }

    /// A buffer for a frame of `len` bytes, or `None` if the frame is too large or no buffer
    /// is free.
    pub fn tx_buffer(&mut self, len: usize) -> Option<TxFrame> {
        self.reclaim_tx();
        let mut buf = self.tx_free.pop()?;
        let header = match self.raw.fill_buffer_header(&mut buf) {
            Ok(h) if h.checked_add(len).is_some_and(|e| e <= buf.len()) => h,
            _ => {
                self.tx_free.push(buf);
                self.stats.tx_dropped += 1;
                return None;
            }
        };
        Some(TxFrame { buf, header, len })
    }

    /// Hands a filled frame to the device; returns without waiting for it.
    pub fn send(&mut self, frame: TxFrame) -> Result<(), VirtioError> {
        let total = frame.header + frame.len;
        let buf = frame.buf;
        // SAFETY: `buf` is parked in `tx_posted` under the returned token until `reclaim_tx`
        // pops that token; the slice passed is the one `transmit_complete` will get back.
        let token = match unsafe { self.raw.transmit_begin(&buf[..total]) } {
            Ok(t) => t,
            Err(e) => {
                self.tx_free.push(buf);
                self.stats.tx_dropped += 1;
                return Err(e);
            }
        };
        match self.tx_posted.get_mut(usize::from(token)) {
            Some(slot @ None) => {
                *slot = Some((buf, total));
                self.stats.tx_frames += 1;
                Ok(())
            }
            _ => {
                // Inconsistent token: leak rather than free memory the device may read.
                core::mem::forget(buf);
                Err(VirtioError::WrongToken)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::virtio::{FakeNetTransport, HostHal, NET_HDR_LEN};

    type Net = VirtioNet<HostHal, FakeNetTransport, 8>;
    const MAC: [u8; 6] = [0x52, 0x54, 0, 1, 2, 3];

    fn frame(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| seed.wrapping_add(i as u8)).collect()
    }

    #[test]
    fn init_negotiates_and_posts_all_rx_buffers() {
        let (t, dev) = FakeNetTransport::new(MAC, 256);
        let net = Net::new(t).unwrap();
        assert_eq!(net.mac_address(), MAC);
        let st = dev.borrow();
        assert_eq!(st.driver_features, crate::fake::virtio::FEATURES);
        assert_eq!(st.status & 0x4, 0x4, "DRIVER_OK");
        drop(st);
        // All 8 receive buffers are with the device: 8 frames fit, a ninth does not.
        for i in 0..8 {
            assert!(dev.borrow_mut().deliver(&frame(60, i)));
        }
        assert!(!dev.borrow_mut().deliver(&frame(60, 9)));
        drop(net);
    }

    #[test]
    fn receive_lends_frames_and_recycle_reposts() {
        let (t, dev) = FakeNetTransport::new(MAC, 8);
        let mut net = Net::new(t).unwrap();
        assert!(net.receive().is_none());
        for i in 0..8 {
            assert!(dev.borrow_mut().deliver(&frame(100 + i as usize, i)));
        }
        let mut lent = Vec::new();
        for i in 0..8u8 {
            let f = net.receive().expect("frame");
            assert_eq!(f.packet(), &frame(100 + usize::from(i), i)[..]);
            lent.push(f);
        }
        assert!(net.receive().is_none());
        // Nothing posted while all frames are lent out.
        assert!(!dev.borrow_mut().deliver(&frame(1514, 0)));
        for f in lent {
            net.recycle(f);
        }
        // Full-size frames fit the recycled buffers.
        assert!(dev.borrow_mut().deliver(&frame(1514, 7)));
        assert_eq!(net.receive().unwrap().packet(), &frame(1514, 7)[..]);
        assert_eq!(net.stats().rx_frames, 9);
        assert_eq!(net.stats().rx_errors, 0);
    }

    #[test]
    fn short_completion_is_dropped_and_buffer_reused() {
        let (t, dev) = FakeNetTransport::new(MAC, 8);
        let mut net = Net::new(t).unwrap();
        // The device claims fewer bytes than a virtio-net header.
        let p = dev.borrow_mut().pop(0).unwrap();
        dev.borrow_mut()
            .push_used(0, u32::from(p.head), (NET_HDR_LEN - 2) as u32);
        assert!(net.receive().is_none());
        assert_eq!(net.stats().rx_errors, 1);
        // The buffer went back: 8 buffers are available again.
        for i in 0..8 {
            assert!(dev.borrow_mut().deliver(&frame(64, i)), "buffer {i}");
        }
    }

    #[test]
    fn unknown_token_from_device_is_refused() {
        let (t, dev) = FakeNetTransport::new(MAC, 8);
        let mut net = Net::new(t).unwrap();
        // Complete a descriptor index outside the queue.
        dev.borrow_mut().push_used(0, 200, 64);
        assert!(net.receive().is_none());
        assert_eq!(net.stats().rx_errors, 1);
    }

    #[test]
    fn transmit_is_asynchronous_and_buffers_come_back() {
        let (t, dev) = FakeNetTransport::new(MAC, 8);
        let mut net = Net::new(t).unwrap();
        // Seven frames go out without the device completing any (virtio-drivers keeps one
        // descriptor spare: `can_send` wants two free).
        for i in 0..7u8 {
            assert!(net.can_send());
            let mut f = net.tx_buffer(200).unwrap();
            f.packet_mut().copy_from_slice(&frame(200, i));
            net.send(f).unwrap();
        }
        assert!(
            !net.can_send(),
            "one descriptor left: can_send is conservative"
        );
        // The last descriptor still takes a single-buffer frame; then nothing is free.
        let mut f = net.tx_buffer(200).unwrap();
        f.packet_mut().copy_from_slice(&frame(200, 7));
        net.send(f).unwrap();
        assert!(net.tx_buffer(60).is_none());
        assert!(net.tx_in_flight());
        assert!(dev.borrow().notifications[1] >= 1);
        // The device reads them (in order) but has not completed yet: still no buffer.
        let sent = dev.borrow_mut().take_sent(3, false);
        assert_eq!(sent, vec![frame(200, 0), frame(200, 1), frame(200, 2)]);
        assert!(!net.can_send());
        let sent = dev.borrow_mut().take_sent(8, true);
        assert_eq!(sent.len(), 5);
        assert_eq!(sent[4], frame(200, 7));
        // Only the completed ones are reclaimed... the first three are still device-owned.
        assert!(net.can_send());
        // Oversized frames are refused, not truncated.
        assert!(net.tx_buffer(BUF_LEN).is_none());
        assert_eq!(net.stats().tx_frames, 8);
        assert_eq!(net.stats().tx_dropped, 1);
        // Once the first three complete too, all buffers are back.
        for head in 0..3 {
            dev.borrow_mut().push_used(1, head, 0);
        }
        net.reclaim_tx();
        assert!(!net.tx_in_flight());
    }
}

/// Bringing a virtio-net PCI function up on the target (shared by the images that own a NIC).
#[cfg(target_os = "none")]
pub mod pci {
    use super::VirtioNet;
    use crate::Error;
    use crate::dma::VirtioHal;
    use crate::ecam::Ecam;
    use crate::pci::{self, Function};
    use crate::platform;
    use crate::virtio::{self, NO_VECTOR};
    use virtio_drivers::transport::pci::PciTransport;

    /// virtio-net's receive queue.
    pub const RX_QUEUE: u16 = 0;
    /// virtio-net's transmit queue.
    pub const TX_QUEUE: u16 = 1;
    /// The MSI-X table entry receive interrupts use.
    pub const RX_MSIX_ENTRY: u16 = 0;

    /// The driver on a PCI transport.
    pub type PciNet<const QS: usize> = VirtioNet<VirtioHal, PciTransport, QS>;

    /// An opened NIC.
    pub struct Opened<const QS: usize> {
        /// The driver (receive queue filled).
        pub net: PciNet<QS>,
        /// The function.
        pub func: Function,
        /// The CPU vector receive interrupts arrive on, or `None` (poll).
        pub rx_vector: Option<u8>,
    }

    /// The first virtio-net function (modern 1af4:1041 or transitional 1af4:1000) on the
    /// ECAM's buses.
    pub fn find(ecam: &Ecam) -> Option<Function> {
        let mut found = None;
        pci::for_each_function(ecam, ecam.start_bus(), ecam.end_bus(), true, |f| {
            if virtio::is_net(f.header.vendor_id, f.header.device_id) {
                found = Some(f);
                return false;
            }
            true
        });
        found
    }

    /// Brings `func` up: BARs from `window` (decoding off until they are sized), the virtio
    /// PCI transport, bus mastering, the driver; then, with `on_rx`, MSI-X entry
    /// [`RX_MSIX_ENTRY`] on a fresh `rt` vector calling it, with the receive queue routed to it
    /// and the other sources silenced. Interrupt trouble is logged and leaves polling
    /// (`rx_vector: None`); anything else is an error.
    pub fn open<const QS: usize>(
        ecam: &mut Ecam,
        func: Function,
        window: (u64, u64),
        on_rx: Option<fn()>,
    ) -> Result<Opened<QS>, Error> {
        let bdf = func.bdf;
        let platform::VirtioFunction { bars, transport } = platform::open_virtio(ecam, bdf, window)?;
        let mut rx_vector = platform::msix_vector(ecam, bdf, &bars, RX_MSIX_ENTRY, on_rx);
        // virtio-drivers logs its feature negotiation at info level: keep boots quiet.
        let level = log::max_level();
        if level <= log::LevelFilter::Info {
            log::set_max_level(log::LevelFilter::Warn);
        }
        let net = PciNet::<QS>::new(transport);
        log::set_max_level(level);
        let net = net.map_err(|e| {
            log::error!("{bdf}: virtio-net init: {e}");
            Error::Invalid
        })?;
        if rx_vector.is_some()
            && let Err(e) = platform::route_virtio_vectors(ecam, bdf, &bars, &[(TX_QUEUE, NO_VECTOR), (RX_QUEUE, RX_MSIX_ENTRY)])
        {
            log::warn!("{bdf}: virtio MSI-X vector routing failed ({e}); polling");
            rx_vector = None;
        }
        Ok(Opened { net, func, rx_vector })
    }
}
