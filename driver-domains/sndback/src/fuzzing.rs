//! Fuzz entry point: a hostile frontend scripted by arbitrary bytes.
//!
//! Input: byte 0 configures the stream (bit 0: capture instead of playback; bits 1-2: the
//! device format s16/s32/f32/u8), then a program of operations (`op % 6`):
//! * 0: a raw 64-byte request slot (the next 64 input bytes, zero-padded), published;
//! * 1: `req_prod` set to the next 4 bytes (anything, also impossible values);
//! * 2: scribble 16 bytes into a granted page: selector byte (`% 6`: 0 = the directory page,
//!   ref 8, which starts as a valid directory of refs 9..=12; 1..=4 = buffer pages 9..=12;
//!   5 = read-only page 13), offset byte (x16), data;
//! * 3: the event page's `in_cons` set to the next 4 bytes;
//! * 4: the device renders and captures `1 + 8 * byte` frames;
//! * 5: poll the engine.
//!
//! Invariants (a panic is a finding): no panic; no grant copy outside a page; never more
//! responses than requests; device output always in range; after the program, a final poll
//! answers every consumed request unless the engine was broken (then it stays broken and its
//! streams are gone from the hub). `tests/corpus.rs` replays the committed corpus
//! (`tests/corpus/engine/*`) and seeded mutations of it.

use alloc::vec;
use core::sync::atomic::Ordering;

use iconnect::media::Direction;
use media_dsp::{DuckConfig, SampleFormat};
use netback::grant::FakeGrants;
use xen_abi::ring::{REQ_PROD_OFF, RING_HEADER_SIZE, RSP_PROD_OFF};
use xen_abi::shmem::{HostMem, SharedMem};
use xen_abi::sndif::{EVENT_IN_CONS_OFF, MSG_SIZE, RING_SIZE};

use crate::{Caps, DeviceConfig, Error, Hub, Sndback};

/// A fuzz entry point.
pub type Target = fn(&[u8]);

/// `(name, entry point)` of every target.
pub const TARGETS: &[(&str, Target)] = &[("engine", engine)];

fn take<const N: usize>(prog: &mut &[u8]) -> [u8; N] {
    let mut b = [0u8; N];
    let n = prog.len().min(N);
    b[..n].copy_from_slice(&prog[..n]);
    *prog = &prog[n..];
    b
}

/// What one program did (lets the corpus test check its inputs reach the deep paths).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The engine's counters at the end.
    pub stats: crate::Stats,
    /// Whether a fatal protocol violation broke the engine.
    pub fatal: bool,
}

/// Runs the hostile-frontend program in `data` (see the [module documentation](self)).
pub fn engine(data: &[u8]) {
    let _ = run(data);
}

/// [`engine`], returning what happened.
pub fn run(data: &[u8]) -> Outcome {
    let Some((&cfg, mut prog)) = data.split_first() else {
        return Outcome::default();
    };
    let format = [
        SampleFormat::S16Le,
        SampleFormat::S32Le,
        SampleFormat::F32Le,
        SampleFormat::U8,
    ][usize::from(cfg >> 1) & 3];
    let dev = DeviceConfig {
        format,
        rate: 48000,
        channels: 2,
    };
    let Ok(mut hub) = Hub::new(dev, DuckConfig::default(), 4) else {
        return Outcome::default();
    };
    let dir = if cfg & 1 == 0 {
        Direction::Playback
    } else {
        Direction::Capture
    };
    let ring = HostMem::pages(1);
    let evt = HostMem::pages(1);
    let mut be = Sndback::new(Caps::default(), 1);
    if be.add_stream(dir, ring.clone(), evt.clone()).is_err() {
        return Outcome::default();
    }
    let mut g = FakeGrants::new();
    g.grant(8, true);
    for r in 9..=12u32 {
        g.grant(r, false);
        if let Some(p) = g.page_mut(8) {
            let i = (r - 9) as usize;
            p[4 + 4 * i..8 + 4 * i].copy_from_slice(&r.to_le_bytes());
        }
    }
    g.grant(13, true);
    let mut prod = 0u32;
    let mut out = vec![0u8; 0];
    let mut fatal = false;
    while let Some((&op, rest)) = prog.split_first() {
        prog = rest;
        match op % 6 {
            0 => {
                let slot: [u8; MSG_SIZE] = take(&mut prog);
                let off = RING_HEADER_SIZE + (prod % RING_SIZE) as usize * MSG_SIZE;
                ring.write_bytes(off, &slot);
                prod = prod.wrapping_add(1);
                ring.store_u32(REQ_PROD_OFF, prod, Ordering::Release);
            }
            1 => {
                prod = u32::from_le_bytes(take(&mut prog));
                ring.store_u32(REQ_PROD_OFF, prod, Ordering::Release);
            }
            2 => {
                let [sel, at] = take(&mut prog);
                let bytes: [u8; 16] = take(&mut prog);
                let page = [8, 9, 10, 11, 12, 13][usize::from(sel % 6)];
                let at = usize::from(at) * 16;
                if let Some(p) = g.page_mut(page) {
                    p[at..at + 16].copy_from_slice(&bytes);
                }
            }
            3 => {
                let v = u32::from_le_bytes(take(&mut prog));
                evt.store_u32(EVENT_IN_CONS_OFF, v, Ordering::Release);
            }
            4 => {
                let [n] = take(&mut prog);
                let frames = 1 + 8 * usize::from(n);
                out.resize(frames * dev.frame_bytes(), 0);
                let _ = hub.render(&mut out);
                let mut x = vec![0f32; frames * 2];
                let _ = media_dsp::format::decode_f32(format, &out, &mut x);
                assert!(
                    x.iter().all(|v| (-1.0..=1.0).contains(v)),
                    "device output in range"
                );
                let _ = hub.capture(&out);
            }
            _ => match be.poll(&mut g, &mut hub) {
                Ok(_) => {}
                Err(Error::Broken) => assert!(fatal, "broken only after a fatal error"),
                Err(_) => fatal = true,
            },
        }
    }
    let last = be.poll(&mut g, &mut hub);
    assert_eq!(g.range_violations(), 0, "grant access outside a page");
    let st = be.stats();
    let rsp_prod = u64::from(ring.load_u32(RSP_PROD_OFF, Ordering::Acquire));
    assert!(rsp_prod <= st.requests, "more responses than requests");
    match last {
        Ok(_) => {
            assert!(!fatal);
            assert_eq!(rsp_prod, st.requests, "every consumed request answered");
        }
        Err(_) => {
            assert!(be.is_broken());
            assert_eq!(
                be.stream_info(0, &hub),
                None,
                "a broken engine releases its streams"
            );
        }
    }
    Outcome {
        stats: st,
        fatal: last.is_err(),
    }
}
