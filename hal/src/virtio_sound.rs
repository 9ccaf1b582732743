//! A virtio-sound driver (virtio 1.2 section 5.14) with owned buffers, playback *and* capture,
//! non-blocking, on top of `virtio-drivers`' split [`VirtQueue`].
//!
//! `virtio-drivers`' `VirtIOSound` only transfers on the TX queue; capture needs the RX queue.
//! Here every request, on every queue, is two owned heap buffers: one the device reads and one
//! it writes, parked under the device's token until the token comes back in the used ring:
//!
//! | queue | device-readable | device-writable |
//! |---|---|---|
//! | control (0) | the request (`virtio_snd_hdr` + body) | the response (`virtio_snd_hdr` + info) |
//! | TX (2) | `virtio_snd_pcm_xfer` followed by the PCM bytes | `virtio_snd_pcm_status` |
//! | RX (3) | `virtio_snd_pcm_xfer` | room for the PCM bytes followed by `virtio_snd_pcm_status` |
//!
//! The caller submits ([`VirtioSound::submit_control`], [`VirtioSound::submit_tx`],
//! [`VirtioSound::submit_rx`]), notifies once with [`VirtioSound::kick`], and collects
//! [`Event`]s with [`VirtioSound::poll`]; nothing waits, except the bring-up helper
//! [`VirtioSound::control_wait`] (bounded) used before the event loop starts. Buffers are
//! recycled internally (PCM bytes are copied in and out), so no buffer is ever shared with the
//! device and the caller at once.
//!
//! An RX completion holds `used_len - 8` captured bytes followed by the status: a device may
//! return a buffer only partly filled (QEMU does when the stream stops), the status then sits
//! right after the captured bytes.
//!
//! The event queue holds [`EVENT_BUFFERS`] device-writable `virtio_snd_event`s (8 bytes:
//! code, data), each given back to the device as soon as its event was read; events (jack
//! changes, period elapsed, xruns) come out of [`VirtioSound::poll`] as [`Event::Device`]
//! (the used rings pace the streams; this driver needs no notification).
//!
//! The unsafe part is `VirtQueue::add`/`pop_used`'s contract, as in [`crate::virtio_blk`]:
//! buffers handed to the device are neither touched, moved nor freed until popped (their heap
//! storage does not move when the owning vectors move into the slot table); a driver dropped
//! with requests in flight resets the device first and leaks what was still in flight.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::marker::PhantomData;
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::{DeviceStatus, Transport};
use virtio_drivers::{Error as VirtioError, Hal};

/// Feature: virtio 1.0.
pub const F_VERSION_1: u64 = 1 << 32;
/// Queue indices.
pub const CONTROL_QUEUE: u16 = 0;
/// The event queue (set up, no buffers).
pub const EVENT_QUEUE: u16 = 1;
/// Playback transfers.
pub const TX_QUEUE: u16 = 2;
/// Capture transfers.
pub const RX_QUEUE: u16 = 3;
/// Entries of each virtqueue.
pub const QUEUE_SIZE: usize = 32;
/// Descriptors per request (one readable, one writable buffer).
const DESC_PER_REQ: usize = 2;
/// Buffers kept on the event queue.
pub const EVENT_BUFFERS: usize = 8;
/// Bytes of a `virtio_snd_event`.
pub const EVENT_SIZE: usize = 8;

/// Request codes (`VIRTIO_SND_R_*`).
pub mod code {
    /// Query PCM stream information.
    pub const PCM_INFO: u32 = 0x0100;
    /// Set a stream's parameters.
    pub const PCM_SET_PARAMS: u32 = 0x0101;
    /// Prepare a stream.
    pub const PCM_PREPARE: u32 = 0x0102;
    /// Release a stream.
    pub const PCM_RELEASE: u32 = 0x0103;
    /// Start a stream.
    pub const PCM_START: u32 = 0x0104;
    /// Stop a stream.
    pub const PCM_STOP: u32 = 0x0105;
    /// Status: success.
    pub const S_OK: u32 = 0x8000;
    /// Status: malformed request.
    pub const S_BAD_MSG: u32 = 0x8001;
    /// Status: not supported.
    pub const S_NOT_SUPP: u32 = 0x8002;
    /// Status: I/O error.
    pub const S_IO_ERR: u32 = 0x8003;
    /// Event: a jack was connected (data: jack id).
    pub const EVT_JACK_CONNECTED: u32 = 0x1000;
    /// Event: a jack was disconnected (data: jack id).
    pub const EVT_JACK_DISCONNECTED: u32 = 0x1001;
    /// Event: a period elapsed (data: stream id).
    pub const EVT_PCM_PERIOD_ELAPSED: u32 = 0x1100;
    /// Event: an underrun or overrun (data: stream id).
    pub const EVT_PCM_XRUN: u32 = 0x1101;
}

/// Bytes of a `virtio_snd_pcm_info`.
pub const PCM_INFO_SIZE: usize = 32;
/// Bytes of a `virtio_snd_pcm_status`.
pub const PCM_STATUS_SIZE: usize = 8;
/// Bytes of a `virtio_snd_pcm_xfer`.
pub const PCM_XFER_SIZE: usize = 4;
/// `VIRTIO_SND_PCM_FMT_S16`.
pub const FMT_S16: u8 = 5;

/// The `VIRTIO_SND_PCM_RATE_*` code of a rate in Hz.
pub fn rate_code(hz: u32) -> Option<u8> {
    const RATES: [u32; 14] = [
        5512, 8000, 11025, 16000, 22050, 32000, 44100, 48000, 64000, 88200, 96000, 176400, 192000,
        384000,
    ];
    RATES.iter().position(|&r| r == hz).map(|i| i as u8)
}

/// Data flow of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Playback (`VIRTIO_SND_D_OUTPUT`).
    Output,
    /// Capture (`VIRTIO_SND_D_INPUT`).
    Input,
}

/// What the device says about one PCM stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PcmInfo {
    /// Stream id.
    pub id: u32,
    /// `1 << VIRTIO_SND_PCM_F_*` bits.
    pub features: u32,
    /// `1 << VIRTIO_SND_PCM_FMT_*` bits.
    pub formats: u64,
    /// `1 << VIRTIO_SND_PCM_RATE_*` bits.
    pub rates: u64,
    /// Direction.
    pub direction: Direction,
    /// Fewest channels.
    pub channels_min: u8,
    /// Most channels.
    pub channels_max: u8,
}

impl PcmInfo {
    /// Parses one `virtio_snd_pcm_info` (32 bytes) of stream `id`; `None` if short or of an
    /// unknown direction.
    pub fn parse(id: u32, b: &[u8]) -> Option<Self> {
        let b = b.get(..PCM_INFO_SIZE)?;
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| u64::from(u32_at(i)) | (u64::from(u32_at(i + 4)) << 32);
        let direction = match b[24] {
            0 => Direction::Output,
            1 => Direction::Input,
            _ => return None,
        };
        Some(Self {
            id,
            features: u32_at(4),
            formats: u64_at(8),
            rates: u64_at(16),
            direction,
            channels_min: b[25],
            channels_max: b[26],
        })
    }

    /// Whether the stream offers `format` (a `VIRTIO_SND_PCM_FMT_*`), `rate` (a
    /// `VIRTIO_SND_PCM_RATE_*`) and `channels`.
    pub fn offers(&self, format: u8, rate: u8, channels: u8) -> bool {
        format < 64
            && rate < 64
            && self.formats & (1 << format) != 0
            && self.rates & (1 << rate) != 0
            && (self.channels_min..=self.channels_max).contains(&channels)
    }
}

/// A stream's parameters (`virtio_snd_pcm_set_params`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// Size of the device's buffer, bytes.
    pub buffer_bytes: u32,
    /// Size of a period, bytes (an RX buffer is filled up to this).
    pub period_bytes: u32,
    /// Channels.
    pub channels: u8,
    /// `VIRTIO_SND_PCM_FMT_*`.
    pub format: u8,
    /// `VIRTIO_SND_PCM_RATE_*`.
    pub rate: u8,
}

/// A control request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `PCM_INFO` for `count` streams from `start`.
    PcmInfo {
        /// First stream id.
        start: u32,
        /// Streams.
        count: u32,
    },
    /// `PCM_SET_PARAMS`.
    SetParams(u32, Params),
    /// `PCM_PREPARE`.
    Prepare(u32),
    /// `PCM_RELEASE`.
    Release(u32),
    /// `PCM_START`.
    Start(u32),
    /// `PCM_STOP`.
    Stop(u32),
}

impl Command {
    /// The request bytes and the response length.
    pub fn encode(&self) -> (Vec<u8>, usize) {
        let mut r = Vec::with_capacity(24);
        let le = |r: &mut Vec<u8>, v: u32| r.extend_from_slice(&v.to_le_bytes());
        match *self {
            Command::PcmInfo { start, count } => {
                le(&mut r, code::PCM_INFO);
                le(&mut r, start);
                le(&mut r, count);
                le(&mut r, PCM_INFO_SIZE as u32);
                return (r, 4 + PCM_INFO_SIZE * count as usize);
            }
            Command::SetParams(id, p) => {
                le(&mut r, code::PCM_SET_PARAMS);
                le(&mut r, id);
                le(&mut r, p.buffer_bytes);
                le(&mut r, p.period_bytes);
                le(&mut r, 0); // features
                r.extend_from_slice(&[p.channels, p.format, p.rate, 0]);
            }
            Command::Prepare(id) => {
                le(&mut r, code::PCM_PREPARE);
                le(&mut r, id);
            }
            Command::Release(id) => {
                le(&mut r, code::PCM_RELEASE);
                le(&mut r, id);
            }
            Command::Start(id) => {
                le(&mut r, code::PCM_START);
                le(&mut r, id);
            }
            Command::Stop(id) => {
                le(&mut r, code::PCM_STOP);
                le(&mut r, id);
            }
        }
        (r, 4)
    }
}

/// Errors of the driver and statuses of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SndError {
    /// No room in the queue now (retry after completions).
    QueueFull,
    /// A zero-length transfer.
    Empty,
    /// The device answered `VIRTIO_SND_S_BAD_MSG`.
    BadMessage,
    /// The device answered `VIRTIO_SND_S_NOT_SUPP`.
    NotSupported,
    /// The device answered `VIRTIO_SND_S_IO_ERR`, an unknown status, or wrote too little.
    Io,
    /// A control request did not complete in time ([`VirtioSound::control_wait`]).
    Timeout,
    /// The transport or queue set-up failed.
    Transport,
}

impl core::fmt::Display for SndError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            SndError::QueueFull => "queue full",
            SndError::Empty => "empty transfer",
            SndError::BadMessage => "device: bad message",
            SndError::NotSupported => "device: not supported",
            SndError::Io => "device: I/O error",
            SndError::Timeout => "control request timed out",
            SndError::Transport => "virtio transport",
        })
    }
}

fn status(word: u32) -> Result<(), SndError> {
    match word {
        code::S_OK => Ok(()),
        code::S_BAD_MSG => Err(SndError::BadMessage),
        code::S_NOT_SUPP => Err(SndError::NotSupported),
        _ => Err(SndError::Io),
    }
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4).map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
}

/// Splits a completed RX buffer: the captured bytes (before the status) and the status.
/// `used` counts the bytes the device wrote (PCM + status).
pub fn split_rx(buf: &[u8], used: usize) -> (usize, Result<(), SndError>) {
    if used < PCM_STATUS_SIZE || used > buf.len() {
        return (0, Err(SndError::Io));
    }
    let n = used - PCM_STATUS_SIZE;
    (n, le32(buf, n).map_or(Err(SndError::Io), status))
}

/// Index into [`SndStats`]' arrays of queue `q` (control, tx, rx; not the event queue).
fn stat_index(q: usize) -> usize {
    match q {
        0 => 0,
        2 => 1,
        _ => 2,
    }
}

/// A finished request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A control request completed; `info` holds the response body (after the header) of a
    /// `PcmInfo` request.
    Control {
        /// The request.
        cmd: Command,
        /// The device's status.
        result: Result<(), SndError>,
        /// Response body (PCM_INFO).
        info: Vec<u8>,
    },
    /// A playback period was consumed.
    Played {
        /// Stream id.
        stream: u32,
        /// The device's status.
        result: Result<(), SndError>,
    },
    /// A notification on the event queue (`code::EVT_*`; data: a jack or stream id).
    Device {
        /// Event code.
        code: u32,
        /// Jack or stream id.
        data: u32,
    },
    /// A capture buffer came back: `data` holds the captured bytes (give it back with
    /// [`VirtioSound::recycle`] to spare an allocation).
    Captured {
        /// Stream id.
        stream: u32,
        /// The device's status.
        result: Result<(), SndError>,
        /// The captured PCM bytes.
        data: Vec<u8>,
    },
}

/// Counters.
#[derive(Copy, Clone, Debug, Default, Eq, PartialEq)]
pub struct SndStats {
    /// Requests handed to the device, per queue (control, tx, rx).
    pub submitted: [u64; 3],
    /// Requests the device completed, per queue.
    pub completed: [u64; 3],
    /// Events the device sent on the event queue.
    pub events: u64,
    /// Device notifications sent.
    pub kicks: u64,
    /// Used-ring entries naming a token with no request in flight (device bugs).
    pub bad_tokens: u64,
}

#[derive(Debug)]
enum Kind {
    Event,
    Control(Command),
    Tx(u32),
    Rx(u32),
}

/// A request the device holds, parked under its token.
struct InFlight {
    kind: Kind,
    readable: Vec<u8>,
    writable: Vec<u8>,
}

struct Q<H: Hal> {
    idx: u16,
    vq: VirtQueue<H, QUEUE_SIZE>,
    slots: Vec<Option<InFlight>>,
    unkicked: bool,
}

impl<H: Hal> Q<H> {
    fn new<T: Transport>(t: &mut T, idx: u16) -> Result<Self, VirtioError> {
        Ok(Self {
            idx,
            vq: VirtQueue::new(t, idx, false, false)?,
            slots: (0..QUEUE_SIZE).map(|_| None).collect(),
            unkicked: false,
        })
    }

    fn in_flight(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }
}

/// The driver.
pub struct VirtioSound<H: Hal, T: Transport> {
    transport: T,
    /// control, event, tx, rx.
    queues: [Q<H>; 4],
    streams: u32,
    spare: Vec<Vec<u8>>,
    done: VecDeque<Event>,
    stats: SndStats,
    _hal: PhantomData<H>,
}

impl<H: Hal, T: Transport> VirtioSound<H, T> {
    /// Initialises the device (features, four queues, `DRIVER_OK`).
    pub fn new(mut transport: T) -> Result<Self, SndError> {
        transport.set_status(DeviceStatus::empty());
        transport.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
        let features = transport.read_device_features() & F_VERSION_1;
        transport.write_driver_features(features);
        transport.set_status(
            DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK,
        );
        transport.set_guest_page_size(4096);
        // Config: jacks, streams, chmaps (le32 each).
        let streams: u32 = transport
            .read_config_space(4)
            .map_err(|_| SndError::Transport)?;
        let mk = |t: &mut T, i| Q::<H>::new(t, i).map_err(|_| SndError::Transport);
        let queues = [
            mk(&mut transport, CONTROL_QUEUE)?,
            mk(&mut transport, EVENT_QUEUE)?,
            mk(&mut transport, TX_QUEUE)?,
            mk(&mut transport, RX_QUEUE)?,
        ];
        transport.set_status(
            DeviceStatus::ACKNOWLEDGE
                | DeviceStatus::DRIVER
                | DeviceStatus::FEATURES_OK
                | DeviceStatus::DRIVER_OK,
        );
        let mut snd = Self {
            transport,
            queues,
            streams,
            spare: Vec::new(),
            done: VecDeque::new(),
            stats: SndStats::default(),
            _hal: PhantomData,
        };
        for _ in 0..EVENT_BUFFERS {
            snd.submit_event()?;
        }
        snd.kick();
        Ok(snd)
    }

    /// Gives the device one event buffer.
    fn submit_event(&mut self) -> Result<(), SndError> {
        let writable = self.buffer(EVENT_SIZE);
        self.submit(1, Kind::Event, Vec::new(), writable)
    }

    /// Streams the device has (its configuration).
    pub fn stream_count(&self) -> u32 {
        self.streams
    }

    /// Counters so far.
    pub fn stats(&self) -> SndStats {
        self.stats
    }

    /// Requests in flight on the TX queue.
    pub fn tx_in_flight(&self) -> usize {
        self.queues[2].in_flight()
    }

    /// Requests in flight on the RX queue.
    pub fn rx_in_flight(&self) -> usize {
        self.queues[3].in_flight()
    }

    /// Gives a buffer back for reuse (e.g. an [`Event::Captured`]'s data).
    pub fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.spare.len() < 2 * QUEUE_SIZE && buf.capacity() > 0 {
            buf.clear();
            self.spare.push(buf);
        }
    }

    fn buffer(&mut self, len: usize) -> Vec<u8> {
        let mut b = self.spare.pop().unwrap_or_default();
        b.clear();
        b.resize(len, 0);
        b
    }

    /// Publishes one request on queue `q` (notified by the next [`kick`](Self::kick)).
    fn submit(
        &mut self,
        q: usize,
        kind: Kind,
        readable: Vec<u8>,
        mut writable: Vec<u8>,
    ) -> Result<(), SndError> {
        let queue = &mut self.queues[q];
        if queue.vq.available_desc() < DESC_PER_REQ {
            self.recycle(readable);
            self.recycle(writable);
            return Err(SndError::QueueFull);
        }
        // Both buffers are heap storage owned by the `InFlight` parked under the returned token
        // below (the writable one never empty: a status, a response or an event; the readable
        // one empty only for events, and then not given to the device); nothing reads, writes,
        // moves the storage of or frees them until `poll` pops that token with the same
        // buffers (or `Drop` leaks them after resetting the device).
        let added = if readable.is_empty() {
            // SAFETY: see above.
            unsafe { queue.vq.add(&[], &mut [&mut writable[..]]) }
        } else {
            // SAFETY: see above.
            unsafe { queue.vq.add(&[&readable[..]], &mut [&mut writable[..]]) }
        };
        let token = match added {
            Ok(t) => t,
            Err(_) => {
                self.recycle(readable);
                self.recycle(writable);
                return Err(SndError::QueueFull);
            }
        };
        let entry = InFlight {
            kind,
            readable,
            writable,
        };
        match queue.slots.get_mut(usize::from(token)) {
            Some(slot @ None) => *slot = Some(entry),
            _ => {
                // Inconsistent queue state: leak rather than free memory the device may use.
                core::mem::forget(entry);
                self.stats.bad_tokens += 1;
                return Ok(());
            }
        }
        queue.unkicked = true;
        if q != 1 {
            self.stats.submitted[stat_index(q)] += 1;
        }
        Ok(())
    }

    /// Queues a control request (completes as [`Event::Control`]).
    pub fn submit_control(&mut self, cmd: Command) -> Result<(), SndError> {
        let (req, resp_len) = cmd.encode();
        let mut readable = self.buffer(req.len());
        readable.copy_from_slice(&req);
        let writable = self.buffer(resp_len);
        self.submit(0, Kind::Control(cmd), readable, writable)
    }

    /// Queues one playback period (the bytes are copied; completes as [`Event::Played`]).
    pub fn submit_tx(&mut self, stream: u32, pcm: &[u8]) -> Result<(), SndError> {
        if pcm.is_empty() {
            return Err(SndError::Empty);
        }
        let mut readable = self.buffer(PCM_XFER_SIZE + pcm.len());
        readable[..PCM_XFER_SIZE].copy_from_slice(&stream.to_le_bytes());
        readable[PCM_XFER_SIZE..].copy_from_slice(pcm);
        let writable = self.buffer(PCM_STATUS_SIZE);
        self.submit(2, Kind::Tx(stream), readable, writable)
    }

    /// Queues a capture buffer of `bytes` PCM bytes (the stream's period size: the device
    /// returns it once filled; completes as [`Event::Captured`]).
    pub fn submit_rx(&mut self, stream: u32, bytes: usize) -> Result<(), SndError> {
        if bytes == 0 {
            return Err(SndError::Empty);
        }
        let mut readable = self.buffer(PCM_XFER_SIZE);
        readable.copy_from_slice(&stream.to_le_bytes());
        let writable = self.buffer(bytes + PCM_STATUS_SIZE);
        self.submit(3, Kind::Rx(stream), readable, writable)
    }

    /// Notifies the device of every queue published to since the last kick (if it wants).
    pub fn kick(&mut self) {
        for q in self.queues.iter_mut() {
            if core::mem::take(&mut q.unkicked) && q.vq.should_notify() {
                self.transport.notify(q.idx);
                self.stats.kicks += 1;
            }
        }
    }

    /// Pops one completion of queue `q` into `self.done`; false if none.
    fn pop(&mut self, q: usize) -> bool {
        let queue = &mut self.queues[q];
        let Some(token) = queue.vq.peek_used() else {
            return false;
        };
        let Some(mut f) = queue.slots.get_mut(usize::from(token)).and_then(Option::take) else {
            self.stats.bad_tokens += 1;
            return false;
        };
        // `f` holds exactly the buffers given to `add` for `token`, in the same roles (no
        // readable one for an event buffer, as in `submit`).
        let popped = if f.readable.is_empty() {
            // SAFETY: see above.
            unsafe { queue.vq.pop_used(token, &[], &mut [&mut f.writable[..]]) }
        } else {
            // SAFETY: see above.
            unsafe {
                queue
                    .vq
                    .pop_used(token, &[&f.readable[..]], &mut [&mut f.writable[..]])
            }
        };
        let used = match popped {
            Ok(n) => n as usize,
            Err(_) => {
                queue.slots[usize::from(token)] = Some(f);
                return false;
            }
        };
        if q != 1 {
            self.stats.completed[stat_index(q)] += 1;
        }
        let InFlight {
            kind,
            readable,
            mut writable,
        } = f;
        let ev = match kind {
            Kind::Event => {
                self.stats.events += 1;
                let code = le32(&writable, 0).unwrap_or(0);
                let data = le32(&writable, 4).unwrap_or(0);
                self.recycle(writable);
                // Back to the device at once (room: this buffer's descriptor was just freed).
                let _ = self.submit_event();
                if used < EVENT_SIZE {
                    return true;
                }
                Event::Device { code, data }
            }
            Kind::Control(cmd) => {
                let result = if used < 4 {
                    Err(SndError::Io)
                } else {
                    le32(&writable, 0).map_or(Err(SndError::Io), status)
                };
                let info = writable.get(4..used.min(writable.len())).unwrap_or(&[]).to_vec();
                self.recycle(writable);
                Event::Control { cmd, result, info }
            }
            Kind::Tx(stream) => {
                let result = if used < PCM_STATUS_SIZE {
                    Err(SndError::Io)
                } else {
                    le32(&writable, 0).map_or(Err(SndError::Io), status)
                };
                self.recycle(writable);
                Event::Played { stream, result }
            }
            Kind::Rx(stream) => {
                let (n, result) = split_rx(&writable, used);
                writable.truncate(n);
                Event::Captured {
                    stream,
                    result,
                    data: writable,
                }
            }
        };
        self.recycle(readable);
        self.done.push_back(ev);
        true
    }

    /// The next finished request or event (control first, then events, playback, capture).
    pub fn poll(&mut self) -> Option<Event> {
        if let Some(e) = self.done.pop_front() {
            return Some(e);
        }
        for q in [0, 1, 2, 3] {
            while self.pop(q) {
                if let Some(e) = self.done.pop_front() {
                    return Some(e);
                }
            }
        }
        None
    }

    /// Submits `cmd` and waits for its completion, polling at most `spins` times (bring-up
    /// only: QEMU answers control requests while handling the notification). Other
    /// completions met meanwhile are kept for [`poll`](Self::poll).
    pub fn control_wait(&mut self, cmd: Command, spins: u32) -> Result<Vec<u8>, SndError> {
        self.submit_control(cmd)?;
        self.kick();
        for _ in 0..spins {
            if self.pop(0) {
                // The control completion is the last one pushed.
                if let Some(Event::Control { cmd: c, result, info }) = self.done.pop_back() {
                    if c == cmd {
                        return result.map(|_| info);
                    }
                    self.done.push_back(Event::Control { cmd: c, result, info });
                }
            }
            core::hint::spin_loop();
        }
        Err(SndError::Timeout)
    }

    /// Every stream's information (bring-up, [`control_wait`](Self::control_wait)).
    pub fn pcm_info(&mut self, spins: u32) -> Result<Vec<PcmInfo>, SndError> {
        if self.streams == 0 {
            return Ok(Vec::new());
        }
        let count = self.streams.min(16);
        let info = self.control_wait(Command::PcmInfo { start: 0, count }, spins)?;
        Ok((0..count)
            .filter_map(|i| {
                let at = i as usize * PCM_INFO_SIZE;
                PcmInfo::parse(i, info.get(at..)?)
            })
            .collect())
    }
}

impl<H: Hal, T: Transport> Drop for VirtioSound<H, T> {
    fn drop(&mut self) {
        // Reset the device: it stops using the queues, so their memory can go. Buffers still
        // in flight are leaked regardless.
        self.transport.set_status(DeviceStatus::empty());
        for q in self.queues.iter_mut() {
            self.transport.queue_unset(q.idx);
            for s in q.slots.iter_mut() {
                if let Some(f) = s.take() {
                    core::mem::forget(f);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;

/// Bringing a virtio-sound PCI function up on the target (media-dd's device).
#[cfg(target_os = "none")]
pub mod pci {
    use super::{SndError, VirtioSound};
    use crate::Error;
    use crate::dma::VirtioHal;
    use crate::ecam::Ecam;
    use crate::pci::{self, Function};
    use crate::platform;
    use virtio_drivers::transport::pci::PciTransport;

    /// virtio-sound's PCI device ID (modern only: 0x1040 + 25).
    pub const DEVICE_SOUND: u16 = 0x1059;

    /// The driver on a PCI transport.
    pub type PciSound = VirtioSound<VirtioHal, PciTransport>;

    /// The first virtio-sound function on the ECAM's buses.
    pub fn find(ecam: &Ecam) -> Option<Function> {
        let mut found = None;
        pci::for_each_function(ecam, ecam.start_bus(), ecam.end_bus(), true, |f| {
            let h = f.header;
            if h.vendor_id == crate::virtio::VENDOR_ID && h.device_id == DEVICE_SOUND {
                found = Some(f);
                return false;
            }
            true
        });
        found
    }

    /// Brings `func` up: BARs from `window`, the transport, bus mastering, the driver
    /// (completions are polled).
    pub fn open(ecam: &mut Ecam, func: Function, window: (u64, u64)) -> Result<PciSound, Error> {
        let bdf = func.bdf;
        let transport = platform::open_virtio(ecam, bdf, window)?.transport;
        PciSound::new(transport).map_err(|e: SndError| {
            log::error!("{bdf}: virtio-sound init: {e}");
            Error::Invalid
        })
    }
}
