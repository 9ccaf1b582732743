//! Fuzz entry point: a hostile frontend scripted by arbitrary bytes.
//!
//! The input is a program for a frontend that owns the ring's shared page and its grants:
//! write a raw request slot, move `req_prod` anywhere, scribble into a granted page (indirect
//! descriptors), poll the engine. Invariants (a panic is a finding): the engine never panics,
//! never asks for a grant range outside a page, never submits a range outside the volume,
//! never answers more requests than it consumed, and once the input ends and the volume is
//! drained, every consumed request is answered (unless the ring was broken). `tests/corpus.rs`
//! replays the committed corpus (`tests/corpus/engine/*`) and mutations of it.

use core::sync::atomic::Ordering;

use netback::grant::FakeGrants;
use xen_abi::blkif::{self, REQUEST_SIZE};
use xen_abi::ring::{RING_HEADER_SIZE, REQ_PROD_OFF, RSP_PROD_OFF};
use xen_abi::shmem::{HostMem, SharedMem};

use crate::engine::{Blkback, Config};
use crate::volume::{Geometry, MemVolume, Order};

/// A fuzz entry point.
pub type Target = fn(&[u8]);

/// `(name, entry point)` of every target.
pub const TARGETS: &[(&str, Target)] = &[("engine", engine)];

/// Runs the hostile-frontend program in `data` (see the [module documentation](self)).
pub fn engine(data: &[u8]) {
    let Some((&cfg, mut prog)) = data.split_first() else { return };
    let g = Geometry {
        size: 64 * 1024,
        sector_size: if cfg & 1 == 0 { 512 } else { 4096 },
        read_only: cfg & 2 != 0,
        flush: cfg & 4 != 0,
        discard: cfg & 8 != 0,
    };
    let mem = HostMem::pages(1);
    let config = Config {
        max_indirect_segments: if cfg & 16 != 0 { 0 } else { 16 },
        max_in_flight: 1 + usize::from(cfg >> 5),
        max_in_flight_bytes: 32 * 1024,
    };
    let Ok(mut be) = Blkback::new(mem.clone(), g, config) else { return };
    let mut vol = MemVolume::new(g, 4);
    vol.set_order(Order::Shuffled(u64::from(cfg) | 1));
    let mut grants = FakeGrants::new();
    for r in 0..8u32 {
        grants.grant(r, r % 3 == 0);
    }
    let mut prod = 0u32;
    let mut consumed_ok = true;
    while let Some((&op, rest)) = prog.split_first() {
        prog = rest;
        match op % 4 {
            // A raw slot at req_prod, then publish it.
            0 => {
                let n = prog.len().min(REQUEST_SIZE);
                let mut slot = [0u8; REQUEST_SIZE];
                slot[..n].copy_from_slice(&prog[..n]);
                prog = &prog[n..];
                let off = RING_HEADER_SIZE + (prod % blkif::RING_SIZE) as usize * REQUEST_SIZE;
                mem.write_bytes(off, &slot);
                prod = prod.wrapping_add(1);
                mem.store_u32(REQ_PROD_OFF, prod, Ordering::Release);
            }
            // req_prod anywhere.
            1 => {
                let mut b = [0u8; 4];
                let n = prog.len().min(4);
                b[..n].copy_from_slice(&prog[..n]);
                prog = &prog[n..];
                prod = u32::from_le_bytes(b);
                mem.store_u32(REQ_PROD_OFF, prod, Ordering::Release);
            }
            // Scribble into a granted page: page, offset, 16 bytes.
            2 => {
                if prog.len() >= 3 {
                    let page = u32::from(prog[0] % 8);
                    let at = usize::from(prog[1]) * 16;
                    let n = prog.len().min(18) - 2;
                    if let Some(p) = grants.page_mut(page) {
                        p[at..at + n].copy_from_slice(&prog[2..2 + n]);
                    }
                    prog = &prog[2 + n..];
                }
            }
            // Poll with a small budget.
            _ => {
                let budget = usize::from(prog.first().copied().unwrap_or(1) % 8) + 1;
                if be.poll(0, &mut grants, &mut vol, budget).is_err() {
                    consumed_ok = false;
                }
            }
        }
    }
    // Drain: every consumed request gets its response.
    for _ in 0..64 {
        if be.poll(0, &mut grants, &mut vol, 0).is_err() {
            consumed_ok = false;
            break;
        }
        if be.in_flight() == 0 {
            break;
        }
    }
    assert_eq!(grants.range_violations(), 0, "grant access outside a page");
    assert_eq!(vol.range_violations(), 0, "volume access outside the volume");
    let st = *be.stats();
    let rsp_prod = u64::from(mem.load_u32(RSP_PROD_OFF, Ordering::Acquire));
    assert!(rsp_prod <= st.requests, "more responses than requests");
    if consumed_ok && be.broken().is_none() {
        assert_eq!(be.in_flight(), 0, "requests left unanswered");
        assert_eq!(rsp_prod, st.requests, "every consumed request answered");
    }
}
