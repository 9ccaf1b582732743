//! Hostile frontends: every request-level fault gets its errno (and costs only itself), every
//! ring/event-page violation breaks only this frontend, nothing ever touches memory outside a
//! granted page, and a property test throws random requests at the engine.

use iconnect::media::Direction;
use media_dsp::{DuckConfig, SampleFormat};
use netback::grant::FakeGrants;
use proptest::prelude::*;
use sndback::sim::SimFront as Front;
use sndback::{Caps, DeviceConfig, Error, Hub, RunState, Sndback};
use std::sync::atomic::Ordering;
use xen_abi::ring::REQ_PROD_OFF;
use xen_abi::shmem::{HostMem, SharedMem};
use xen_abi::sndif::{
    BufferOp, EVENT_IN_CONS_OFF, HwParam, MSG_SIZE, Open, Range, Request, Response, Trigger, op,
};

const EINVAL: i32 = -22;
const EIO: i32 = -5;
const EBUSY: i32 = -16;
const ENOSPC: i32 = -28;
const EOPNOTSUPP: i32 = -95;

struct Rig {
    hub: Hub,
    be: Sndback<HostMem>,
    front: Front,
    g: FakeGrants,
}

impl Rig {
    fn new(dir: Direction) -> Self {
        let hub = Hub::new(
            DeviceConfig {
                format: SampleFormat::S16Le,
                rate: 48000,
                channels: 2,
            },
            DuckConfig::default(),
            4,
        )
        .unwrap();
        let mut front = Front::new();
        let mut g = FakeGrants::new();
        front.grant_buffer(&mut g, 50, 16384);
        let mut be = Sndback::new(Caps::default(), 1);
        be.add_stream(dir, front.ring_mem.clone(), front.evt.clone())
            .unwrap();
        Self { hub, be, front, g }
    }

    /// Sends one request, polls, returns its response.
    fn ask(&mut self, req: Request) -> Response {
        let id = self.front.send(req);
        self.be.poll(&mut self.g, &mut self.hub).unwrap();
        let r = self.front.responses();
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].id, r[0].operation),
            (id, req.operation()),
            "echoes id and operation"
        );
        r[0]
    }

    fn status(&mut self, req: Request) -> i32 {
        self.ask(req).status
    }

    fn open_req(&self, rate: u32, fmt: u8, ch: u8) -> Request {
        Request::Open {
            id: 0,
            open: Open {
                pcm_rate: rate,
                pcm_format: fmt,
                pcm_channels: ch,
                buffer_sz: 16384,
                gref_directory: self.front.dir,
                period_sz: 1024,
            },
        }
    }

    fn buf(&self, op: BufferOp, offset: u32, length: u32) -> Request {
        Request::Buffer {
            id: 0,
            op,
            offset,
            length,
        }
    }
}

fn trig(kind: Trigger) -> Request {
    Request::Trigger { id: 0, kind }
}

#[test]
fn request_faults_get_their_errno() {
    let mut r = Rig::new(Direction::Playback);
    // Before OPEN, everything but a query is a state error.
    for req in [
        r.buf(BufferOp::Write, 0, 4),
        trig(Trigger::Start),
        Request::Close { id: 0 },
        r.buf(BufferOp::SetVolume, 0, 8),
    ] {
        assert_eq!(r.status(req), EINVAL, "{req:?}");
    }
    // Unknown operation and malformed slots.
    let mut raw = [0u8; MSG_SIZE];
    raw[0] = 7;
    raw[2] = 42;
    r.front.send_raw(raw);
    raw[2] = op::TRIGGER;
    raw[8] = 9;
    r.front.send_raw(raw);
    r.be.poll(&mut r.g, &mut r.hub).unwrap();
    let rs = r.front.responses();
    assert_eq!(
        (rs[0].id, rs[0].operation, rs[0].status),
        (7, 42, EOPNOTSUPP)
    );
    assert_eq!((rs[1].operation, rs[1].status), (op::TRIGGER, EINVAL));
    // OPEN with what the platform does not offer.
    for (rate, fmt, ch) in [
        (44101, 2, 2),
        (48000, 3, 2),
        (48000, 22, 2),
        (48000, 2, 6),
        (48000, 2, 0),
    ] {
        let req = r.open_req(rate, fmt, ch);
        assert_eq!(r.status(req), EINVAL, "{rate} {fmt} {ch}");
    }
    // A directory the guest did not grant.
    let mut bad = r.open_req(48000, 2, 2);
    if let Request::Open { open, .. } = &mut bad {
        open.gref_directory = 999;
    }
    assert_eq!(r.status(bad), EIO);
    // OPEN, then the same again.
    let ok = r.open_req(48000, 2, 2);
    assert_eq!(r.status(ok), 0);
    assert_eq!(r.status(ok), EBUSY);
    // Ranges and sizes.
    for (op, off, len) in [
        (BufferOp::Write, 16000, 1000), // past the end
        (BufferOp::Write, 0, 0),        // empty
        (BufferOp::Write, 0, 6),        // not whole frames
        (BufferOp::Read, 0, 4),         // read on playback
        (BufferOp::SetVolume, 0, 4),    // 2 channels need 8
        (BufferOp::Mute, 0, 1),         // 2 channels need 2
    ] {
        let req = r.buf(op, off, len);
        assert_eq!(r.status(req), EINVAL, "{op:?} {off} {len}");
    }
    // Trigger state machine.
    for (t, want) in [
        (Trigger::Pause, EINVAL),
        (Trigger::Resume, EINVAL),
        (Trigger::Start, 0),
        (Trigger::Start, EINVAL),
        (Trigger::Resume, EINVAL),
        (Trigger::Pause, 0),
        (Trigger::Pause, EINVAL),
        (Trigger::Resume, 0),
        (Trigger::Stop, 0),
        (Trigger::Stop, EINVAL),
    ] {
        assert_eq!(r.status(trig(t)), want, "{t:?}");
    }
    assert_eq!(
        r.be.stream_info(0, &r.hub).unwrap().state,
        RunState::Prepared
    );
    // One device period: the stop's fade-out ends.
    let mut out = vec![0u8; 480 * 4];
    r.hub.render(&mut out).unwrap();
    // The queue holds two buffers: a third is refused whole.
    for _ in 0..2 {
        let w = r.buf(BufferOp::Write, 0, 16384);
        assert_eq!(r.status(w), 0);
    }
    let w = r.buf(BufferOp::Write, 0, 16384);
    assert_eq!(r.status(w), ENOSPC);
    // A page of the buffer revoked: the copy fails, the stream lives on.
    r.g.revoke(r.front.buffer[1]);
    r.hub
        .mixer_mut()
        .flush(r.be.mixer_stream(0).unwrap())
        .unwrap();
    let w = r.buf(BufferOp::Write, 4000, 200);
    assert_eq!(r.status(w), EIO);
    let w = r.buf(BufferOp::Write, 0, 4000);
    assert_eq!(r.status(w), 0);
    // HW query with nothing in common; CLOSE; CLOSE again.
    let q = Request::HwParamQuery {
        id: 0,
        param: HwParam {
            formats: 1 << 20,
            rates: Range {
                min: 0,
                max: u32::MAX,
            },
            channels: Range { min: 1, max: 2 },
            buffer: Range {
                min: 0,
                max: u32::MAX,
            },
            period: Range {
                min: 0,
                max: u32::MAX,
            },
        },
    };
    assert_eq!(r.status(q), EINVAL);
    assert_eq!(r.status(Request::Close { id: 0 }), 0);
    assert_eq!(r.status(Request::Close { id: 0 }), EINVAL);
    assert_eq!(r.g.range_violations(), 0);
    let st = r.be.stats();
    assert_eq!(st.requests, r.front.log.len() as u64);
    assert!(!r.be.is_broken());
}

#[test]
fn hw_query_answers_the_intersection() {
    let mut r = Rig::new(Direction::Capture);
    let q = Request::HwParamQuery {
        id: 0,
        param: HwParam {
            formats: (1 << 2) | (1 << 14) | (1 << 3),
            rates: Range {
                min: 12000,
                max: 45000,
            },
            channels: Range { min: 2, max: 8 },
            buffer: Range {
                min: 64,
                max: 1 << 20,
            },
            period: Range { min: 0, max: 100 },
        },
    };
    let rsp = r.ask(q);
    assert_eq!(rsp.status, 0);
    let h = rsp.hw_param.unwrap();
    assert_eq!(h.formats, (1 << 2) | (1 << 14));
    assert_eq!(
        h.rates,
        Range {
            min: 16000,
            max: 44100
        }
    );
    assert_eq!(h.channels, Range { min: 2, max: 2 });
    assert_eq!(
        h.buffer,
        Range {
            min: 64,
            max: 16384
        }
    );
    assert_eq!(h.period, Range { min: 16, max: 100 });
}

#[test]
fn hostile_floats_and_bad_directory_entries() {
    let mut r = Rig::new(Direction::Playback);
    let open = r.open_req(48000, SampleFormat::F32Le.sndif_code(), 2);
    assert_eq!(r.status(open), 0);
    let junk: Vec<u8> = [f32::NAN, f32::INFINITY, -1e30, 0.5]
        .iter()
        .cycle()
        .take(2048)
        .flat_map(|v| v.to_le_bytes())
        .collect();
    r.front.write_buf(&mut r.g, 0, &junk);
    let w = r.buf(BufferOp::Write, 0, junk.len() as u32);
    assert_eq!(r.status(w), 0);
    assert_eq!(r.status(trig(Trigger::Start)), 0);
    let mut out = vec![0u8; 1024 * 4];
    r.hub.render(&mut out).unwrap();
    let s: Vec<i16> = out
        .chunks(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect();
    // NaN and inf play as silence, -1e30 as full scale, 0.5 as it is.
    // After the 5 ms (240 frames) fade-in.
    for (i, f) in s.chunks(4).enumerate().skip(120) {
        assert_eq!(
            f,
            [0, 0, -32768, 16384],
            "frames {} and {}",
            2 * i,
            2 * i + 1
        );
    }
    // A directory naming an ungranted page: OPEN works (Xen cannot check a ref without using
    // it), the copy touching that page fails with EIO.
    let mut r = Rig::new(Direction::Playback);
    let dir = r.front.dir;
    r.g.page_mut(dir).unwrap()[8..12].copy_from_slice(&777u32.to_le_bytes());
    let open = r.open_req(48000, 2, 2);
    assert_eq!(r.status(open), 0);
    let w = r.buf(BufferOp::Write, 0, 4096);
    assert_eq!(r.status(w), 0);
    let w = r.buf(BufferOp::Write, 4092, 8);
    assert_eq!(r.status(w), EIO);
    assert_eq!(r.g.range_violations(), 0);
}

#[test]
fn ring_and_event_page_violations_break_only_this_frontend() {
    // An impossible request producer index.
    let mut r = Rig::new(Direction::Playback);
    let open = r.open_req(48000, 2, 2);
    assert_eq!(r.status(open), 0);
    let id = r.be.mixer_stream(0).unwrap();
    r.front
        .ring_mem
        .store_u32(REQ_PROD_OFF, 1000, Ordering::Release);
    assert_eq!(
        r.be.poll(&mut r.g, &mut r.hub),
        Err(Error::Ring(xen_abi::Error::RingOverflow))
    );
    assert_eq!(r.be.poll(&mut r.g, &mut r.hub), Err(Error::Broken));
    assert!(
        r.hub.mixer().stream_stats(id).is_err(),
        "its mixer stream is gone"
    );
    // An event consumer index ahead of the producer.
    let mut r = Rig::new(Direction::Playback);
    let open = r.open_req(48000, 2, 2);
    assert_eq!(r.status(open), 0);
    let w = r.buf(BufferOp::Write, 0, 16384);
    assert_eq!(r.status(w), 0);
    assert_eq!(r.status(trig(Trigger::Start)), 0);
    let mut out = vec![0u8; 480 * 4];
    r.hub.render(&mut out).unwrap();
    r.be.poll(&mut r.g, &mut r.hub).unwrap();
    assert_eq!(r.front.events().len(), 1);
    r.front
        .evt
        .store_u32(EVENT_IN_CONS_OFF, 50, Ordering::Release);
    r.hub.render(&mut out).unwrap();
    assert_eq!(
        r.be.poll(&mut r.g, &mut r.hub),
        Err(Error::Ring(xen_abi::Error::RingOverflow))
    );
}

#[test]
fn a_slow_event_consumer_delays_events_without_losing_the_position() {
    let mut r = Rig::new(Direction::Playback);
    let mut open = r.open_req(48000, 2, 2);
    if let Request::Open { open, .. } = &mut open {
        open.period_sz = 64; // 16 frames: an event every render below
    }
    assert_eq!(r.status(open), 0);
    for _ in 0..2 {
        let w = r.buf(BufferOp::Write, 0, 16384);
        assert_eq!(r.status(w), 0);
    }
    assert_eq!(r.status(trig(Trigger::Start)), 0);
    let mut out = vec![0u8; 32 * 4];
    for _ in 0..100 {
        r.hub.render(&mut out).unwrap();
        r.be.poll(&mut r.g, &mut r.hub).unwrap();
    }
    let st = r.be.stats();
    assert_eq!(st.events, 63, "the event ring holds 63");
    assert!(st.events_delayed > 0);
    let evs = r.front.events();
    assert_eq!(evs.len(), 63);
    r.hub.render(&mut out).unwrap();
    r.be.poll(&mut r.g, &mut r.hub).unwrap();
    let xen_abi::sndif::Event::CurPos { position, .. } = r.front.events()[0];
    assert_eq!(position, r.be.stream_info(0, &r.hub).unwrap().position);
    assert_eq!(
        position,
        101 * 32 * 4,
        "the newest position, not a stale one"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random requests (valid and not) on a capture or playback stream, with device periods in
    /// between: every request answered in order with its id, nothing outside the grants.
    #[test]
    fn random_requests(capture in any::<bool>(), reqs in proptest::collection::vec(
        (0u8..11, any::<u32>(), any::<u32>(), 0u8..6), 1..80)) {
        let mut r = Rig::new(if capture { Direction::Capture } else { Direction::Playback });
        let mut out = vec![0u8; 480 * 4];
        for (code, a, b, sel) in reqs {
            let mut raw = [0u8; MSG_SIZE];
            raw[2] = code;
            let offsets = [0, 1024, 4096, 16380, a % 20000, a];
            let lens = [4, 1024, 16384, b % 5000, 8, b];
            match code {
                op::OPEN => {
                    let rates = [48000, 44100, 16000, 8000, a];
                    raw[8..12].copy_from_slice(&rates[usize::from(sel) % 5].to_le_bytes());
                    raw[12] = [2, 10, 14, 1, 3, (b >> 8) as u8][usize::from(sel)];
                    raw[13] = (b % 4) as u8;
                    raw[16..20].copy_from_slice(&[16384u32, 4096, 8192, b % 70000][usize::from(sel) % 4].to_le_bytes());
                    raw[20..24].copy_from_slice(&(if sel < 5 { r.front.dir } else { a }).to_le_bytes());
                    raw[24..28].copy_from_slice(&[1024u32, 0, 64, b % 9000][usize::from(sel) % 4].to_le_bytes());
                }
                op::TRIGGER => raw[8] = (a % 5) as u8,
                _ => {
                    raw[8..12].copy_from_slice(&offsets[usize::from(sel)].to_le_bytes());
                    raw[12..16].copy_from_slice(&lens[usize::from(sel)].to_le_bytes());
                }
            }
            r.front.send_raw(raw);
            if a % 3 == 0 {
                r.hub.render(&mut out).unwrap();
                r.hub.capture(&out).unwrap();
            }
            r.be.poll(&mut r.g, &mut r.hub).unwrap();
            r.front.events();
            prop_assert_eq!(r.front.responses().len(), 1, "one response per request");
        }
        prop_assert_eq!(r.front.log.len() as u64, r.be.stats().requests);
        prop_assert_eq!(r.g.range_violations(), 0);
        prop_assert!(!r.be.is_broken());
    }
}
