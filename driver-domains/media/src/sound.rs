//! The sound device: hal's virtio-sound driver ([`hal::virtio_sound`]) over the PCI transport.
//!
//! * Playback: the first output stream is opened once at [`media_dd::DEVICE`]'s shape and fed
//!   whole periods; QEMU returns a period's buffer once its audio backend took it, which paces
//!   the mix (up to [`IN_FLIGHT`] periods queued).
//! * Capture: the first input stream offering the same shape is set up and prepared once at
//!   bring-up, and started only while at least one guest's capture stream runs (the hub's
//!   fan-out has a running consumer), stopped when the last one stops: the device is captured
//!   once whatever the number of guests. While started, [`IN_FLIGHT`] period buffers stay
//!   queued on the RX queue; each filled one goes to the hub's fan-out and is queued again.
//!   Buffers still queued when the stream stops stay with the device and are filled after the
//!   next start; the first one to complete after a restart (begun before the stop) is dropped.
//!
//! Nothing here waits once the loop runs: control requests (start/stop) complete as events.

use hal::ecam::Ecam;
use hal::pci::Function;
use hal::virtio_sound::pci::{self as snd_pci, PciSound};
use hal::virtio_sound::{self as vs, Command, Direction, Event, Params};
use sndback::Hub;

/// Frames per period (10 ms at 48 kHz).
pub const PERIOD_FRAMES: usize = 480;
/// Periods queued at the device at most, each way (80 ms).
pub const IN_FLIGHT: usize = 8;
/// Polls of a bring-up control request (QEMU answers while handling the notification).
const SPINS: u32 = 20_000_000;

/// The first virtio-sound function on the ECAM's buses.
pub fn find(ecam: &Ecam) -> Option<Function> {
    snd_pci::find(ecam)
}

/// Where the capture stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureState {
    /// The device has no usable input stream.
    Absent,
    /// Prepared, not running.
    Stopped,
    /// START sent.
    Starting,
    /// Capturing.
    Running,
    /// STOP sent.
    Stopping,
}

/// Counters of the device.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    /// Playback periods handed to the device.
    pub sent: u64,
    /// Playback periods completed.
    pub done: u64,
    /// Transfer or control errors.
    pub errors: u64,
    /// Capture periods received (non-empty).
    pub captured: u64,
    /// Capture starts.
    pub capture_starts: u64,
    /// Capture periods dropped at a restart (begun before the stop).
    pub stale: u64,
    /// Underruns/overruns the device reported (event queue).
    pub xruns: u64,
}

/// The device's output (and input) stream.
pub struct Sound {
    snd: PciSound,
    out: u32,
    input: Option<u32>,
    period_bytes: usize,
    capture: CaptureState,
    /// The next capture completion after a restart is the buffer the device was filling when
    /// it stopped (part of it captured before the stop): dropped.
    stale: bool,
    /// Counters.
    pub n: Counters,
}

fn params(period_bytes: usize) -> Params {
    Params {
        buffer_bytes: (period_bytes * IN_FLIGHT) as u32,
        period_bytes: period_bytes as u32,
        channels: media_dd::DEVICE.channels,
        format: vs::FMT_S16,
        rate: vs::rate_code(media_dd::DEVICE.rate).unwrap_or(7),
    }
}

impl Sound {
    /// Brings `func` up, opens its first output stream (48 kHz s16 stereo, 10 ms periods,
    /// started) and prepares its first input stream of that shape, if any.
    pub fn open(ecam: &mut Ecam, func: Function, window: (u64, u64)) -> Result<Self, &'static str> {
        let level = log::max_level();
        log::set_max_level(log::LevelFilter::Warn);
        let snd = snd_pci::open(ecam, func, window).map_err(|_| "virtio-sound bring-up");
        log::set_max_level(level);
        Self::start(snd?)
    }

    fn start(mut snd: PciSound) -> Result<Self, &'static str> {
        let infos = snd.pcm_info(SPINS).map_err(|_| "virtio-sound: stream query")?;
        let dev = media_dd::DEVICE;
        let (fmt, rate) = (vs::FMT_S16, vs::rate_code(dev.rate).unwrap_or(7));
        let shaped = |d: Direction| infos.iter().find(|i| i.direction == d && i.offers(fmt, rate, dev.channels)).map(|i| i.id);
        let out = shaped(Direction::Output).ok_or("virtio-sound: no 48 kHz s16 stereo output stream")?;
        let period_bytes = PERIOD_FRAMES * dev.frame_bytes();
        for cmd in [Command::SetParams(out, params(period_bytes)), Command::Prepare(out), Command::Start(out)] {
            snd.control_wait(cmd, SPINS).map_err(|_| "virtio-sound: output set-up (48 kHz s16 stereo)")?;
        }
        let mut input = shaped(Direction::Input);
        if let Some(id) = input {
            for cmd in [Command::SetParams(id, params(period_bytes)), Command::Prepare(id)] {
                if let Err(e) = snd.control_wait(cmd, SPINS) {
                    log::warn!("virtio-sound: input stream {id}: {cmd:?}: {e}; no capture");
                    input = None;
                    break;
                }
            }
        }
        let capture = if input.is_some() { CaptureState::Stopped } else { CaptureState::Absent };
        Ok(Self { snd, out, input, period_bytes, capture, stale: false, n: Counters::default() })
    }

    /// Whether guests can capture.
    pub fn can_capture(&self) -> bool {
        self.input.is_some()
    }

    /// The input stream id, if any.
    pub fn input(&self) -> Option<u32> {
        self.input
    }

    /// Where the capture stream is.
    pub fn capture_state(&self) -> CaptureState {
        self.capture
    }

    /// Collects completions (captured periods go to `hub`'s fan-out), starts or stops the
    /// capture stream as `hub`'s running capture consumers want, keeps the RX queue full while
    /// capturing. Returns (playback periods the device takes now, capture periods delivered).
    pub fn poll(&mut self, hub: &mut Hub) -> (usize, usize) {
        let frame = hub.device().frame_bytes();
        let mut delivered = 0;
        while let Some(ev) = self.snd.poll() {
            match ev {
                Event::Played { result, .. } => {
                    self.n.done += 1;
                    self.n.errors += u64::from(result.is_err());
                }
                Event::Captured { result, data, .. } => {
                    let whole = data.len() - data.len() % frame;
                    if result.is_ok() && whole > 0 && self.capture == CaptureState::Running {
                        if core::mem::take(&mut self.stale) {
                            self.n.stale += 1;
                        } else if hub.capture(&data[..whole]).is_ok() {
                            delivered += 1;
                            self.n.captured += 1;
                        } else {
                            self.n.errors += 1;
                        }
                    }
                    self.n.errors += u64::from(result.is_err());
                    self.snd.recycle(data);
                }
                Event::Device { code, .. } => self.n.xruns += u64::from(code == vs::code::EVT_PCM_XRUN),
                Event::Control { cmd, result, .. } => {
                    if let Err(e) = result {
                        log::warn!("virtio-sound: {cmd:?}: {e}");
                        self.n.errors += 1;
                    }
                    self.capture = match (self.capture, cmd) {
                        (CaptureState::Starting, Command::Start(_)) if result.is_ok() => CaptureState::Running,
                        (CaptureState::Starting, Command::Start(_)) => CaptureState::Stopped,
                        (CaptureState::Stopping, Command::Stop(_)) => {
                            self.stale = self.snd.rx_in_flight() > 0;
                            CaptureState::Stopped
                        }
                        (s, _) => s,
                    };
                }
            }
        }
        let want = hub.fanout().running() > 0;
        if let Some(id) = self.input {
            match (self.capture, want) {
                (CaptureState::Stopped, true) => {
                    self.top_up(id);
                    if self.snd.submit_control(Command::Start(id)).is_ok() {
                        self.capture = CaptureState::Starting;
                        self.n.capture_starts += 1;
                    }
                }
                (CaptureState::Running, false) if self.snd.submit_control(Command::Stop(id)).is_ok() => {
                    self.capture = CaptureState::Stopping;
                }
                (CaptureState::Running | CaptureState::Starting, true) => self.top_up(id),
                _ => {}
            }
        }
        self.snd.kick();
        (IN_FLIGHT.saturating_sub(self.snd.tx_in_flight()), delivered)
    }

    fn top_up(&mut self, id: u32) {
        while self.snd.rx_in_flight() < IN_FLIGHT {
            if self.snd.submit_rx(id, self.period_bytes).is_err() {
                self.n.errors += 1;
                break;
            }
        }
    }

    /// Hands one period (exactly `PERIOD_FRAMES` device frames) to the device (notified at
    /// the next [`poll`](Self::poll) or [`kick`](Self::kick)).
    pub fn send(&mut self, period: &[u8]) {
        match self.snd.submit_tx(self.out, period) {
            Ok(()) => self.n.sent += 1,
            Err(_) => self.n.errors += 1,
        }
    }

    /// Notifies the device of what was submitted.
    pub fn kick(&mut self) {
        self.snd.kick();
    }
}
