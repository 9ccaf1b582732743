//! The driver against a fake virtio-sound device serving its four split rings in host memory
//! (one output and one input stream, like QEMU's default): stream information, control
//! requests, playback periods consumed, capture buffers filled (fully and partly), statuses.

use super::*;
use crate::fake::virtio::{config_read, Chain, HostHal, SplitQueue, read, write};
use alloc::rc::Rc;
use core::cell::RefCell;
use virtio_drivers::PhysAddr;
use virtio_drivers::transport::{DeviceType, InterruptStatus};
use zerocopy::{FromBytes, Immutable, IntoBytes};

#[derive(Default, Debug)]
struct Dev {
    status: u32,
    driver_features: u64,
    rings: [SplitQueue; 4],
    notifications: [u32; 4],
    /// Control requests seen (code, stream).
    commands: Vec<(u32, u32)>,
    /// PCM received on the TX queue.
    played: Vec<u8>,
    /// Capture buffers held: (head, writable address, writable length).
    rx_held: Vec<(u16, u64, u32)>,
}

impl Dev {
    /// Pops one chain of `q`: (head, [(addr, len, writable)]).
    fn take(&mut self, q: usize) -> Option<(u16, Chain)> {
        self.rings[q].pop_chain()
    }

    fn push_used(&mut self, q: usize, id: u16, len: u32) {
        self.rings[q].push_used(u32::from(id), len);
    }

    /// Serves the control queue: PCM_INFO answers stream 0 output, stream 1 input; stream 7
    /// is refused as a bad message.
    fn serve_control(&mut self) {
        while let Some((head, chain)) = self.take(0) {
            assert_eq!(chain.len(), 2);
            assert!(!chain[0].2 && chain[1].2, "request readable, response writable");
            let req = read(chain[0].0, chain[0].1 as usize);
            let code = u32::from_le_bytes(req[0..4].try_into().unwrap());
            let arg = u32::from_le_bytes(req[4..8].try_into().unwrap());
            self.commands.push((code, arg));
            let mut resp = code::S_OK.to_le_bytes().to_vec();
            if code == code::PCM_INFO {
                let count = u32::from_le_bytes(req[8..12].try_into().unwrap());
                for id in arg..arg + count {
                    let mut info = [0u8; PCM_INFO_SIZE];
                    info[8..16].copy_from_slice(&(1u64 << FMT_S16).to_le_bytes());
                    info[16..24].copy_from_slice(&(1u64 << 7 | 1u64 << 6).to_le_bytes());
                    info[24] = (id % 2) as u8;
                    info[25] = 1;
                    info[26] = 2;
                    resp.extend_from_slice(&info);
                }
            } else if arg == 7 {
                resp = code::S_BAD_MSG.to_le_bytes().to_vec();
            }
            assert!(resp.len() <= chain[1].1 as usize);
            write(chain[1].0, &resp);
            self.push_used(0, head, resp.len() as u32);
        }
    }

    /// Consumes every queued playback period.
    fn serve_tx(&mut self) {
        while let Some((head, chain)) = self.take(2) {
            let data: Vec<u8> = chain
                .iter()
                .filter(|c| !c.2)
                .flat_map(|c| read(c.0, c.1 as usize))
                .collect();
            assert_eq!(u32::from_le_bytes(data[0..4].try_into().unwrap()), 0);
            self.played.extend_from_slice(&data[4..]);
            let st = chain.iter().find(|c| c.2).unwrap();
            write(st.0, &code::S_OK.to_le_bytes());
            self.push_used(2, head, PCM_STATUS_SIZE as u32);
        }
    }

    /// Takes every queued capture buffer.
    fn take_rx(&mut self) {
        while let Some((head, chain)) = self.take(3) {
            assert_eq!(chain.len(), 2);
            assert_eq!(read(chain[0].0, 4), 1u32.to_le_bytes(), "xfer header names stream 1");
            assert!(chain[1].2);
            self.rx_held.push((head, chain[1].0, chain[1].1));
        }
    }

    /// Sends an event in the next event buffer; false if none is posted.
    fn event(&mut self, code: u32, data: u32) -> bool {
        let Some((head, chain)) = self.take(1) else { return false };
        assert_eq!(chain.len(), 1, "an event buffer is one device-writable descriptor");
        assert!(chain[0].2 && chain[0].1 as usize == EVENT_SIZE);
        write(chain[0].0, &code.to_le_bytes());
        write(chain[0].0 + 4, &data.to_le_bytes());
        self.push_used(1, head, EVENT_SIZE as u32);
        true
    }

    /// Fills the oldest held capture buffer with `pcm` (its start) and returns it.
    fn capture(&mut self, pcm: &[u8]) {
        let (head, addr, len) = self.rx_held.remove(0);
        assert!(pcm.len() + PCM_STATUS_SIZE <= len as usize);
        write(addr, pcm);
        write(addr + pcm.len() as u64, &code::S_OK.to_le_bytes());
        self.push_used(3, head, (pcm.len() + PCM_STATUS_SIZE) as u32);
    }
}

#[derive(Debug)]
struct FakeSnd(Rc<RefCell<Dev>>);

impl Transport for FakeSnd {
    fn device_type(&self) -> DeviceType {
        DeviceType::Sound
    }
    fn read_device_features(&mut self) -> u64 {
        F_VERSION_1 | (1 << 28)
    }
    fn write_driver_features(&mut self, f: u64) {
        self.0.borrow_mut().driver_features = f;
    }
    fn max_queue_size(&mut self, _queue: u16) -> u32 {
        64
    }
    fn notify(&mut self, queue: u16) {
        self.0.borrow_mut().notifications[usize::from(queue)] += 1;
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
    fn queue_set(&mut self, queue: u16, size: u32, desc: PhysAddr, avail: PhysAddr, used: PhysAddr) {
        self.0.borrow_mut().rings[usize::from(queue)] = SplitQueue::new(size as u16, desc, avail, used);
    }
    fn queue_unset(&mut self, queue: u16) {
        self.0.borrow_mut().rings[usize::from(queue)].enabled = false;
    }
    fn queue_used(&mut self, queue: u16) -> bool {
        self.0.borrow().rings[usize::from(queue)].enabled
    }
    fn ack_interrupt(&mut self) -> InterruptStatus {
        InterruptStatus::empty()
    }
    fn read_config_generation(&self) -> u32 {
        0
    }
    fn read_config_space<T: FromBytes + IntoBytes>(&self, offset: usize) -> Result<T, VirtioError> {
        // jacks 0, streams 2, chmaps 0.
        let cfg = [0u32, 2, 0];
        let bytes: Vec<u8> = cfg.iter().flat_map(|v| v.to_le_bytes()).collect();
        config_read(&bytes, offset)
    }
    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        _offset: usize,
        _value: T,
    ) -> Result<(), VirtioError> {
        Err(VirtioError::Unsupported)
    }
}

type Snd = VirtioSound<HostHal, FakeSnd>;

fn setup() -> (Snd, Rc<RefCell<Dev>>) {
    let dev = Rc::new(RefCell::new(Dev::default()));
    (Snd::new(FakeSnd(dev.clone())).unwrap(), dev)
}

/// Serves control requests as QEMU does: during the notification.
fn serve_on_notify(snd: &mut Snd, dev: &Rc<RefCell<Dev>>) {
    snd.kick();
    dev.borrow_mut().serve_control();
}

#[test]
fn init_and_stream_information() {
    let (mut snd, dev) = setup();
    assert_eq!(dev.borrow().driver_features, F_VERSION_1);
    assert_eq!(dev.borrow().status & 0x4, 0x4, "DRIVER_OK");
    assert!(dev.borrow().rings.iter().all(|r| r.enabled), "all four queues set up");
    assert_eq!(snd.stream_count(), 2);
    // The fake answers during `control_wait`'s first polls only if served: serve first.
    snd.submit_control(Command::PcmInfo { start: 0, count: 2 }).unwrap();
    serve_on_notify(&mut snd, &dev);
    let Some(Event::Control { cmd, result, info }) = snd.poll() else {
        panic!("no completion")
    };
    assert_eq!((cmd, result), (Command::PcmInfo { start: 0, count: 2 }, Ok(())));
    let infos: Vec<PcmInfo> = (0..2)
        .map(|i| PcmInfo::parse(i, &info[i as usize * PCM_INFO_SIZE..]).unwrap())
        .collect();
    assert_eq!(infos[0].direction, Direction::Output);
    assert_eq!(infos[1].direction, Direction::Input);
    assert!(infos[1].offers(FMT_S16, rate_code(48000).unwrap(), 2));
    assert!(!infos[1].offers(FMT_S16, rate_code(16000).unwrap(), 2));
    assert!(!infos[1].offers(FMT_S16, 7, 3));
    drop(snd);
    assert!(dev.borrow().rings.iter().all(|r| !r.enabled), "dropping resets the queues");
}

#[test]
fn control_statuses_and_timeout() {
    let (mut snd, dev) = setup();
    let p = Params {
        buffer_bytes: 7680,
        period_bytes: 1920,
        channels: 2,
        format: FMT_S16,
        rate: rate_code(48000).unwrap(),
    };
    snd.submit_control(Command::SetParams(1, p)).unwrap();
    snd.submit_control(Command::Prepare(7)).unwrap();
    serve_on_notify(&mut snd, &dev);
    assert!(matches!(snd.poll(), Some(Event::Control { cmd: Command::SetParams(1, _), result: Ok(()), .. })));
    assert!(matches!(
        snd.poll(),
        Some(Event::Control { cmd: Command::Prepare(7), result: Err(SndError::BadMessage), .. })
    ));
    assert_eq!(snd.poll(), None);
    assert_eq!(dev.borrow().commands, vec![(code::PCM_SET_PARAMS, 1), (code::PCM_PREPARE, 7)]);
    // Nobody serves: a bounded wait.
    assert_eq!(snd.control_wait(Command::Start(1), 100), Err(SndError::Timeout));
    dev.borrow_mut().serve_control();
    assert!(matches!(snd.poll(), Some(Event::Control { cmd: Command::Start(1), result: Ok(()), .. })));
    let (req, resp) = Command::SetParams(1, p).encode();
    assert_eq!((req.len(), resp), (24, 4));
    assert_eq!(&req[20..24], &[2, FMT_S16, 7, 0]);
}

#[test]
fn playback_periods_are_consumed_in_order() {
    let (mut snd, dev) = setup();
    for i in 0..10u8 {
        snd.submit_tx(0, &[i; 64]).unwrap();
    }
    assert_eq!(snd.tx_in_flight(), 10);
    snd.kick();
    assert_eq!(dev.borrow().notifications[2], 1);
    dev.borrow_mut().serve_tx();
    let mut played = 0;
    while let Some(ev) = snd.poll() {
        assert_eq!(ev, Event::Played { stream: 0, result: Ok(()) });
        played += 1;
    }
    assert_eq!(played, 10);
    let want: Vec<u8> = (0..10u8).flat_map(|i| [i; 64]).collect();
    assert_eq!(dev.borrow().played, want);
    assert_eq!(snd.submit_tx(0, &[]), Err(SndError::Empty));
    // 32 entries, 2 descriptors a request: 16 at once, then full.
    for _ in 0..16 {
        snd.submit_tx(0, &[1; 8]).unwrap();
    }
    assert_eq!(snd.submit_tx(0, &[1; 8]), Err(SndError::QueueFull));
    let s = snd.stats();
    assert_eq!((s.submitted[1], s.completed[1], s.bad_tokens), (26, 10, 0));
}

#[test]
fn capture_buffers_full_and_partial() {
    let (mut snd, dev) = setup();
    for _ in 0..4 {
        snd.submit_rx(1, 16).unwrap();
    }
    snd.kick();
    dev.borrow_mut().take_rx();
    assert_eq!(dev.borrow().rx_held.len(), 4);
    assert_eq!(dev.borrow().rx_held[0].2, 16 + PCM_STATUS_SIZE as u32);
    assert_eq!(snd.poll(), None, "nothing captured yet");
    let pcm: Vec<u8> = (0..16).collect();
    dev.borrow_mut().capture(&pcm);
    dev.borrow_mut().capture(&pcm[..4]);
    match snd.poll() {
        Some(Event::Captured { stream: 1, result: Ok(()), data }) => {
            assert_eq!(data, pcm);
            snd.recycle(data);
        }
        e => panic!("{e:?}"),
    }
    match snd.poll() {
        Some(Event::Captured { stream: 1, result: Ok(()), data }) => assert_eq!(data, &pcm[..4]),
        e => panic!("{e:?}"),
    }
    assert_eq!(snd.rx_in_flight(), 2);
    assert_eq!(snd.submit_rx(1, 0), Err(SndError::Empty));
}

#[test]
fn rx_split_rejects_short_and_bad_status() {
    let mut b = vec![0u8; 24];
    b[16..20].copy_from_slice(&code::S_OK.to_le_bytes());
    assert_eq!(split_rx(&b, 24), (16, Ok(())));
    assert_eq!(split_rx(&b, 7).1, Err(SndError::Io));
    assert_eq!(split_rx(&b, 25).1, Err(SndError::Io));
    b[16..20].copy_from_slice(&code::S_IO_ERR.to_le_bytes());
    assert_eq!(split_rx(&b, 24), (16, Err(SndError::Io)));
    b[0..4].copy_from_slice(&code::S_NOT_SUPP.to_le_bytes());
    assert_eq!(split_rx(&b, 8), (0, Err(SndError::NotSupported)));
    assert_eq!(rate_code(44100), Some(6));
    assert_eq!(rate_code(44000), None);
}

#[test]
fn events_come_out_and_their_buffers_go_back() {
    let (mut snd, dev) = setup();
    assert_eq!(dev.borrow().notifications[1], 1, "event buffers posted at init");
    assert!(dev.borrow_mut().event(code::EVT_PCM_XRUN, 1));
    assert!(dev.borrow_mut().event(code::EVT_PCM_PERIOD_ELAPSED, 0));
    assert_eq!(snd.poll(), Some(Event::Device { code: code::EVT_PCM_XRUN, data: 1 }));
    assert_eq!(snd.poll(), Some(Event::Device { code: code::EVT_PCM_PERIOD_ELAPSED, data: 0 }));
    assert_eq!(snd.poll(), None);
    snd.kick();
    // Every buffer is back: the device can send EVENT_BUFFERS more in a row, not one more.
    for i in 0..EVENT_BUFFERS as u32 {
        assert!(dev.borrow_mut().event(code::EVT_JACK_CONNECTED, i), "buffer {i}");
    }
    assert!(!dev.borrow_mut().event(code::EVT_JACK_CONNECTED, 99));
    assert_eq!(snd.stats().events, 2);
    assert_eq!(snd.stats().submitted, [0, 0, 0], "event buffers are not requests");
}
