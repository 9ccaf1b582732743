//! The driver against a fake virtio-blk device serving its split ring in host memory: many
//! requests in flight, completion in any order, refusals, device errors, bad tokens.

use super::*;
use crate::fake::virtio::{config_read, HostHal, SplitQueue, read, write};
use alloc::rc::Rc;
use core::cell::RefCell;
use virtio_drivers::PhysAddr;
use virtio_drivers::transport::{DeviceType, InterruptStatus};
use zerocopy::{FromBytes, Immutable, IntoBytes};

const SECTORS: u64 = 64;

#[derive(Default, Debug)]
struct Dev {
    status: u32,
    features_offered: u64,
    driver_features: u64,
    queue: SplitQueue,
    notifications: u32,
    disk: Vec<u8>,
    /// Popped but not yet completed: (head, used length, status address).
    pending: Vec<(u16, u32, u64)>,
    /// Status the next requests get (device error injection).
    fail_with: Option<u8>,
    flushes: u32,
}

impl Dev {
    /// Pops one available chain, performs it, keeps its completion pending.
    fn take(&mut self) -> bool {
        let Some((head, chain)) = self.queue.pop_chain() else { return false };
        let hdr = read(chain[0].0, 16);
        let kind = u32::from_le_bytes(hdr[0..4].try_into().unwrap());
        let sector = u64::from_le_bytes(hdr[8..16].try_into().unwrap()) as usize;
        let (status_addr, _, _) = *chain.last().unwrap();
        let mut used = 1;
        let mut st = self.fail_with.unwrap_or(0);
        if st == 0 {
            match kind {
                0 => {
                    let (a, l, w) = chain[1];
                    assert!(w, "read data must be device-writable");
                    write(a, &self.disk[sector * 512..sector * 512 + l as usize]);
                    used += l;
                }
                1 => {
                    let (a, l, w) = chain[1];
                    assert!(!w, "write data must be device-readable");
                    let b = read(a, l as usize);
                    self.disk[sector * 512..sector * 512 + l as usize].copy_from_slice(&b);
                }
                4 => self.flushes += 1,
                _ => st = 2,
            }
        }
        write(status_addr, &[st]);
        self.pending.push((head, used, status_addr));
        true
    }

    /// Completes the pending request at `index` (in pop order).
    fn complete(&mut self, index: usize) {
        let (head, len, _) = self.pending.remove(index);
        self.push_used(u32::from(head), len);
    }

    fn push_used(&mut self, id: u32, len: u32) {
        self.queue.push_used(id, len);
    }

    fn serve_all(&mut self) {
        while self.take() {}
        while !self.pending.is_empty() {
            self.complete(0);
        }
    }
}

#[derive(Debug)]
struct FakeBlk(Rc<RefCell<Dev>>);

impl Transport for FakeBlk {
    fn device_type(&self) -> DeviceType {
        DeviceType::Block
    }
    fn read_device_features(&mut self) -> u64 {
        self.0.borrow().features_offered
    }
    fn write_driver_features(&mut self, f: u64) {
        self.0.borrow_mut().driver_features = f;
    }
    fn max_queue_size(&mut self, _queue: u16) -> u32 {
        256
    }
    fn notify(&mut self, _queue: u16) {
        self.0.borrow_mut().notifications += 1;
    }
    fn get_status(&self) -> DeviceStatus {
        DeviceStatus::from_bits_truncate(self.0.borrow().status)
    }
    fn set_status(&mut self, status: DeviceStatus) {
        self.0.borrow_mut().status = status.bits();
    }
    fn set_guest_page_size(&mut self, _guest_page_size: u32) {}
    fn requires_legacy_layout(&self) -> bool {
        false
    }
    fn queue_set(
        &mut self,
        _queue: u16,
        size: u32,
        desc: PhysAddr,
        avail: PhysAddr,
        used: PhysAddr,
    ) {
        self.0.borrow_mut().queue = SplitQueue::new(size as u16, desc, avail, used);
    }
    fn queue_unset(&mut self, _queue: u16) {
        self.0.borrow_mut().queue.enabled = false;
    }
    fn queue_used(&mut self, _queue: u16) -> bool {
        self.0.borrow().queue.enabled
    }
    fn ack_interrupt(&mut self) -> InterruptStatus {
        InterruptStatus::empty()
    }
    fn read_config_generation(&self) -> u32 {
        0
    }
    fn read_config_space<T: FromBytes + IntoBytes>(&self, offset: usize) -> Result<T, VirtioError> {
        let cap = self.0.borrow().disk.len() as u64 / 512;
        config_read(&cap.to_le_bytes(), offset)
    }
    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        _offset: usize,
        _value: T,
    ) -> Result<(), VirtioError> {
        Err(VirtioError::Unsupported)
    }
}

type Blk = VirtioBlk<HostHal, FakeBlk, 32>;

fn setup(features: u64) -> (Blk, Rc<RefCell<Dev>>) {
    let dev = Rc::new(RefCell::new(Dev {
        features_offered: features,
        disk: (0..SECTORS as usize * 512)
            .map(|i| (i / 512) as u8 ^ (i as u8))
            .collect(),
        ..Dev::default()
    }));
    (Blk::new(FakeBlk(dev.clone())).unwrap(), dev)
}

fn rd(tag: u64, sector: u64, len: usize) -> Request {
    Request {
        tag,
        op: Op::Read,
        sector,
        len,
        data: Vec::new(),
    }
}

fn wr(tag: u64, sector: u64, data: Vec<u8>) -> Request {
    Request {
        tag,
        op: Op::Write,
        sector,
        len: 0,
        data,
    }
}

#[test]
fn init_negotiates_and_reads_capacity() {
    let (blk, dev) = setup(F_RO | F_FLUSH | F_VERSION_1 | (1 << 28) | (1 << 29) | (1 << 13));
    assert_eq!(blk.capacity(), SECTORS);
    assert!(blk.read_only() && blk.has_flush());
    let d = dev.borrow();
    // Indirect descriptors, event index and discard are not taken.
    assert_eq!(d.driver_features, F_RO | F_FLUSH | F_VERSION_1);
    assert_eq!(d.status & 0x4, 0x4, "DRIVER_OK");
    drop(d);
    drop(blk);
    assert!(!dev.borrow().queue.enabled, "dropping resets the queue");
}

#[test]
fn many_in_flight_completed_out_of_order() {
    let (mut blk, dev) = setup(F_FLUSH | F_VERSION_1);
    let n = Blk::max_in_flight();
    assert_eq!(n, 10);
    let expected = dev.borrow().disk.clone();
    for i in 0..n as u64 {
        assert!(blk.can_submit());
        blk.submit(rd(100 + i, i * 2, 1024)).unwrap();
    }
    assert!(!blk.can_submit());
    // A full queue hands the request back untouched.
    assert_eq!(blk.submit(rd(7, 0, 512)), Err(Full(rd(7, 0, 512))));
    assert_eq!(blk.in_flight(), n);
    assert_eq!(
        dev.borrow().notifications,
        0,
        "nothing notified before kick"
    );
    blk.kick();
    blk.kick();
    assert_eq!(
        dev.borrow().notifications,
        1,
        "one notification for the batch"
    );
    // The device takes all, completes them in reverse order.
    while dev.borrow_mut().take() {}
    assert!(blk.poll().is_none(), "nothing completed yet");
    for k in (0..n).rev() {
        dev.borrow_mut().complete(k);
    }
    let mut seen = Vec::new();
    while let Some(c) = blk.poll() {
        let i = (c.tag - 100) as usize;
        assert_eq!(c.result, Ok(()));
        assert_eq!(c.data, expected[i * 1024..i * 1024 + 1024]);
        seen.push(c.tag);
    }
    assert_eq!(seen, (100..100 + n as u64).rev().collect::<Vec<_>>());
    assert_eq!(blk.in_flight(), 0);
    assert!(blk.can_submit());
    assert_eq!(blk.stats().completed, n as u64);
}

#[test]
fn writes_land_and_buffers_come_back_then_flush() {
    let (mut blk, dev) = setup(F_FLUSH | F_VERSION_1);
    let data: Vec<u8> = (0..4096).map(|i| (i * 7) as u8).collect();
    blk.submit(wr(1, 8, data.clone())).unwrap();
    blk.submit(Request {
        tag: 2,
        op: Op::Flush,
        sector: 0,
        len: 0,
        data: Vec::new(),
    })
    .unwrap();
    blk.kick();
    dev.borrow_mut().serve_all();
    let c = blk.poll().unwrap();
    assert_eq!((c.tag, c.op, c.result), (1, Op::Write, Ok(())));
    assert_eq!(c.data, data, "the write's buffer is returned for reuse");
    assert_eq!(blk.poll().unwrap().tag, 2);
    assert_eq!(&dev.borrow().disk[8 * 512..8 * 512 + 4096], &data[..]);
    assert_eq!(dev.borrow().flushes, 1);
    // Read it back through the driver.
    blk.submit(rd(3, 8, 4096)).unwrap();
    blk.kick();
    dev.borrow_mut().serve_all();
    assert_eq!(blk.poll().unwrap().data, data);
}

#[test]
fn invalid_requests_never_reach_the_device() {
    let (mut blk, dev) = setup(F_RO | F_VERSION_1);
    blk.submit(rd(1, SECTORS - 1, 1024)).unwrap();
    blk.submit(rd(2, 0, 0)).unwrap();
    blk.submit(rd(3, 0, 100)).unwrap();
    blk.submit(rd(4, u64::MAX, 512)).unwrap();
    blk.submit(wr(5, 0, vec![1; 512])).unwrap();
    // No flush feature: nothing to flush, completes at once.
    blk.submit(Request {
        tag: 6,
        op: Op::Flush,
        sector: 0,
        len: 0,
        data: Vec::new(),
    })
    .unwrap();
    blk.kick();
    assert_eq!(dev.borrow().notifications, 0);
    assert!(!dev.borrow_mut().take(), "nothing published");
    let got: Vec<_> = core::iter::from_fn(|| blk.poll())
        .map(|c| (c.tag, c.result))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, Err(BlkError::OutOfRange)),
            (2, Err(BlkError::Misaligned)),
            (3, Err(BlkError::Misaligned)),
            (4, Err(BlkError::OutOfRange)),
            (5, Err(BlkError::ReadOnly)),
            (6, Ok(())),
        ]
    );
}

#[test]
fn device_errors_and_short_reads_fail_the_request() {
    let (mut blk, dev) = setup(F_VERSION_1);
    dev.borrow_mut().fail_with = Some(1);
    blk.submit(rd(1, 0, 512)).unwrap();
    blk.kick();
    dev.borrow_mut().serve_all();
    let c = blk.poll().unwrap();
    assert_eq!((c.result, c.data.len()), (Err(BlkError::Io), 0));
    dev.borrow_mut().fail_with = Some(2);
    blk.submit(wr(2, 0, vec![0; 512])).unwrap();
    blk.kick();
    dev.borrow_mut().serve_all();
    assert_eq!(blk.poll().unwrap().result, Err(BlkError::Unsupported));
    // OK status but the device claims fewer bytes than the read asked for.
    dev.borrow_mut().fail_with = None;
    blk.submit(rd(3, 0, 1024)).unwrap();
    blk.kick();
    let mut d = dev.borrow_mut();
    assert!(d.take());
    let (head, _, _) = d.pending.remove(0);
    d.push_used(u32::from(head), 513);
    drop(d);
    assert_eq!(blk.poll().unwrap().result, Err(BlkError::Io));
}

#[test]
fn unknown_token_from_the_device_is_refused() {
    let (mut blk, dev) = setup(F_VERSION_1);
    blk.submit(rd(1, 0, 512)).unwrap();
    blk.kick();
    dev.borrow_mut().push_used(31, 512);
    assert!(blk.poll().is_none());
    assert_eq!(blk.stats().bad_tokens, 1);
    assert_eq!(blk.in_flight(), 1, "the real request is still the device's");
}
