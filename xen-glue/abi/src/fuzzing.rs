//! Fuzzing entry points.
//!
//! Each function takes arbitrary bytes, drives one parser (or the backend ring consumer) with
//! them and checks invariants with assertions: a panic is a finding. The cargo-fuzz targets in
//! `xen-glue/abi/fuzz/` call exactly these functions, and the `corpus_replay` integration test
//! replays the committed corpus through them, so `cargo test` re-runs every saved input.
//!
//! Running a target (stable toolchain; cargo-fuzz needs the nightly-only sanitizer flags, which
//! `RUSTC_BOOTSTRAP=1` unlocks):
//!
//! ```text
//! cargo install cargo-fuzz
//! cd xen-glue/abi/fuzz
//! RUSTC_BOOTSTRAP=1 cargo fuzz run ring_backend -O -- -max_total_time=60 -max_len=2048
//! # keep the committed corpus small: set-cover merge into a fresh directory, then replace
//! ./target/x86_64-unknown-linux-gnu/release/ring_backend -set_cover_merge=1 NEW corpus/ring_backend
//! ```

use crate::{blkif, netif, sndif, xenbus};

/// A fuzz entry point.
pub type Entry = fn(&[u8]);

/// Every entry point, by fuzz-target name (used by the corpus replay test).
pub const TARGETS: &[(&str, Entry)] = &[
    ("netif_tx", netif_tx),
    ("netif_rx", netif_rx),
    ("netif_extra", netif_extra),
    ("blkif_request", blkif_request),
    ("blkif_response", blkif_response),
    ("sndif_request", sndif_request),
    ("sndif_response", sndif_response),
    ("xenbus", xenbus_fsm),
    #[cfg(feature = "alloc")]
    ("ring_backend", ring_backend),
];

/// TX request slots: each 12-byte chunk is parsed; the parsed slots of the input form one packet
/// chain for [`netif::validate_tx_packet`].
pub fn netif_tx(data: &[u8]) {
    let mut slots = [netif::TxRequest {
        gref: 0,
        offset: 0,
        flags: 0,
        id: 0,
        size: 0,
    }; 32];
    let mut n = 0;
    for chunk in data.chunks(netif::TX_REQUEST_SIZE) {
        match netif::TxRequest::from_bytes(chunk) {
            Ok(r) => {
                assert!((r.offset as usize) < crate::PAGE_SIZE);
                assert!(r.more_data() || r.offset as usize + r.size as usize <= crate::PAGE_SIZE);
                assert_eq!(netif::TxRequest::from_bytes(&r.to_bytes()), Ok(r));
                if n < slots.len() {
                    slots[n] = r;
                    n += 1;
                }
            }
            Err(e) => {
                assert!(chunk.len() == netif::TX_REQUEST_SIZE || e == crate::Error::Truncated)
            }
        }
    }
    // The streaming reader over the same chunks.
    let mut rd = netif::TxPacketReader::new(netif::NR_SLOTS_MIN);
    for chunk in data.chunks(netif::TX_REQUEST_SIZE) {
        let before = rd.slots_consumed();
        match rd.push(chunk) {
            Ok(_) => assert_eq!(rd.slots_consumed(), before + 1),
            Err(_) => {
                assert!(rd.finish().is_err());
                break;
            }
        }
        if let Ok(info) = rd.finish() {
            assert!(info.data_slots <= netif::NR_SLOTS_MIN && info.data_slots >= 1);
            assert!(info.first.offset as usize + info.first_len as usize <= crate::PAGE_SIZE);
            assert!(info.first.size >= netif::MIN_PACKET_SIZE);
            break;
        }
    }
    if let Ok(first_len) = netif::validate_tx_packet(&slots[..n], netif::NR_SLOTS_MIN) {
        assert!(slots[0].offset as usize + first_len as usize <= crate::PAGE_SIZE);
        let frags: u32 = slots[1..n].iter().map(|s| s.size as u32).sum();
        assert_eq!(first_len as u32 + frags, slots[0].size as u32);
    }
}

/// RX requests, RX responses and TX responses from each 8-byte chunk.
pub fn netif_rx(data: &[u8]) {
    for chunk in data.chunks(8) {
        if let Ok(r) = netif::RxRequest::from_bytes(chunk) {
            assert_eq!(netif::RxRequest::from_bytes(&r.to_bytes()), Ok(r));
        }
        if let Ok(r) = netif::RxResponse::from_bytes(chunk) {
            assert!((r.offset as usize) < crate::PAGE_SIZE);
            assert!(r.status < 0 || r.offset as usize + r.status as usize <= crate::PAGE_SIZE);
            assert_eq!(netif::RxResponse::from_bytes(&r.to_bytes()), Ok(r));
        }
        if let Ok(r) = netif::TxResponse::from_bytes(chunk) {
            assert_eq!(netif::TxResponse::from_bytes(&r.to_bytes()), Ok(r));
        }
    }
}

/// Extra-info slots from each 8-byte chunk.
pub fn netif_extra(data: &[u8]) {
    for chunk in data.chunks(netif::EXTRA_INFO_SIZE) {
        if let Ok(e) = netif::ExtraInfo::from_bytes(chunk) {
            assert_eq!(netif::ExtraInfo::from_bytes(&e.to_bytes()), Ok(e));
        }
    }
}

/// Block requests (112-byte chunks) and indirect-page segment lists.
pub fn blkif_request(data: &[u8]) {
    for chunk in data.chunks(blkif::REQUEST_SIZE) {
        if let Ok(p) = blkif::RequestPacket::new_checked(chunk) {
            let id = p.id();
            if let Ok(r) = blkif::Request::parse(&p) {
                assert_eq!(r.id(), id);
                assert_eq!(blkif::Request::from_bytes(&r.to_bytes()), Ok(r));
                if let blkif::Request::Rw {
                    nr_segments,
                    segments,
                    ..
                } = r
                {
                    assert!(nr_segments as usize <= blkif::MAX_SEGMENTS_PER_REQUEST);
                    for s in &segments[..nr_segments as usize] {
                        assert!(s.byte_offset() + s.byte_len() <= crate::PAGE_SIZE);
                    }
                }
                assert!(r.indirect_pages() <= blkif::MAX_INDIRECT_PAGES_PER_REQUEST);
            }
        }
    }
    for chunk in data.chunks(blkif::SEGMENT_SIZE) {
        if let Ok(s) = blkif::Segment::from_bytes(chunk) {
            assert!(s.byte_offset() + s.byte_len() <= crate::PAGE_SIZE);
        }
    }
    let mut segs = [blkif::Segment::default(); 64];
    let n = (data.len() / blkif::SEGMENT_SIZE).min(segs.len());
    if blkif::parse_indirect_segments(data, &mut segs[..n]).is_ok() {
        assert!(
            segs[..n]
                .iter()
                .all(|s| s.sectors() >= 1 && s.last_sect <= blkif::MAX_SECT_IN_PAGE)
        );
    }
}

/// Block responses (16-byte chunks).
pub fn blkif_response(data: &[u8]) {
    for chunk in data.chunks(blkif::RESPONSE_SIZE) {
        if let Ok(r) = blkif::Response::from_bytes(chunk) {
            assert_eq!(blkif::Response::from_bytes(&r.to_bytes()), Ok(r));
        }
    }
}

/// Sound requests (64-byte chunks); the first 4 bytes of the input give a buffer size for the
/// range check.
pub fn sndif_request(data: &[u8]) {
    let buffer_sz = data
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(0);
    for chunk in data.chunks(sndif::MSG_SIZE) {
        if let Ok(r) = sndif::Request::from_bytes(chunk) {
            assert_eq!(sndif::Request::from_bytes(&r.to_bytes()), Ok(r));
            if let (Ok(()), sndif::Request::Buffer { offset, length, .. }) =
                (r.check_buffer_range(buffer_sz), r)
            {
                assert!(offset as u64 + length as u64 <= buffer_sz as u64);
            }
        }
    }
}

/// Sound responses and events (64-byte chunks), and event-ring index checks.
pub fn sndif_response(data: &[u8]) {
    for chunk in data.chunks(sndif::MSG_SIZE) {
        if let Ok(r) = sndif::Response::from_bytes(chunk) {
            assert_eq!(sndif::Response::from_bytes(&r.to_bytes()), Ok(r));
        }
        if let Ok(e) = sndif::Event::from_bytes(chunk) {
            assert_eq!(sndif::Event::from_bytes(&e.to_bytes()), Ok(e));
        }
    }
    for c in data.chunks_exact(8) {
        let prod = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        let cons = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
        if let Ok(space) = sndif::event_space(prod, cons) {
            assert!(space <= sndif::EVENT_RING_LEN);
        }
        assert!(sndif::event_offset(prod) + sndif::MSG_SIZE <= crate::PAGE_SIZE);
    }
    // The backend's event producer against a frontend writing arbitrary `in_cons` values.
    #[cfg(feature = "alloc")]
    {
        use crate::shmem::{HostMem, SharedMem};
        let mem = HostMem::pages(1);
        let limit = crate::PAGE_SIZE;
        let checked = BoundsChecked {
            inner: mem.clone(),
            limit,
        };
        if let Ok(mut p) = sndif::EventProducer::attach(checked) {
            let mut was_broken = false;
            for (i, c) in data.chunks(5).enumerate() {
                if c[0] & 1 == 1 && c.len() == 5 {
                    let v = u32::from_le_bytes([c[1], c[2], c[3], c[4]]);
                    mem.store_u32(
                        sndif::EVENT_IN_CONS_OFF,
                        v,
                        core::sync::atomic::Ordering::Release,
                    );
                }
                let r = p.push(&sndif::Event::CurPos {
                    id: i as u16,
                    position: i as u64,
                });
                if was_broken {
                    assert_eq!(r, Err(crate::Error::RingBroken));
                }
                was_broken = matches!(
                    r,
                    Err(crate::Error::RingOverflow | crate::Error::RingBroken)
                );
            }
        }
    }
}

/// Xenbus: state-node parsing, and both handshake machines driven by arbitrary inputs (they must
/// never panic and only ever write valid states).
pub fn xenbus_fsm(data: &[u8]) {
    if let Ok(s) = core::str::from_utf8(data)
        && let Ok(st) = xenbus::XenbusState::parse(s)
    {
        assert_eq!(st.as_str(), s);
    }
    let mut be = xenbus::BackendFsm::new();
    let mut fe = xenbus::FrontendFsm::new(if data.first().is_some_and(|b| b & 1 == 1) {
        xenbus::FrontendStyle::Block
    } else {
        xenbus::FrontendStyle::Net
    });
    for &b in data {
        let st = xenbus::XenbusState::from_u32((b & 0x0f) as u32 % 9)
            .unwrap_or(xenbus::XenbusState::Unknown);
        match b >> 4 {
            0..=4 => {
                let _ = be.on_input(xenbus::BackendInput::FrontendState(st));
            }
            5 => {
                let _ = be.on_input(xenbus::BackendInput::Probed);
            }
            6 => {
                let _ = be.on_input(xenbus::BackendInput::ConnectDone { ok: b & 1 == 0 });
            }
            7 => {
                let _ = be.on_input(xenbus::BackendInput::Online(b & 1 == 0));
            }
            8..=12 => {
                let _ = fe.on_input(xenbus::FrontendInput::BackendState(st));
            }
            13 | 14 => {
                let _ = fe.on_input(xenbus::FrontendInput::SetupDone { ok: b & 1 == 0 });
            }
            _ => {
                let _ = fe.on_input(xenbus::FrontendInput::Close);
            }
        }
        assert!(be.state() != xenbus::XenbusState::Unknown);
        assert!(fe.state() != xenbus::XenbusState::Unknown);
    }
}

#[cfg(feature = "alloc")]
pub use ring_fuzz::{BoundsChecked, ring_backend};

#[cfg(feature = "alloc")]
mod ring_fuzz {
    use crate::netif::{self, TxRing};
    use crate::ring::{BackRing, FrontRing, RING_HEADER_SIZE, RingProtocol, ring_entries};
    use crate::shmem::{HostMem, SharedMem};
    use core::sync::atomic::Ordering;

    /// A [`SharedMem`] wrapper that panics on any access outside `0..limit` — used to prove
    /// that the ring code never reaches beyond the header and slots it owns, whatever the peer
    /// writes.
    #[derive(Debug, Clone)]
    pub struct BoundsChecked<M> {
        /// Wrapped region.
        pub inner: M,
        /// Exclusive upper bound of allowed byte offsets.
        pub limit: usize,
    }

    impl<M: SharedMem> BoundsChecked<M> {
        #[inline]
        fn check(&self, off: usize, len: usize) {
            assert!(
                off.checked_add(len).is_some_and(|e| e <= self.limit),
                "access {off}+{len} beyond {}",
                self.limit
            );
        }
    }

    impl<M: SharedMem> SharedMem for BoundsChecked<M> {
        fn len(&self) -> usize {
            self.inner.len()
        }
        fn load_u32(&self, off: usize, order: Ordering) -> u32 {
            self.check(off, 4);
            self.inner.load_u32(off, order)
        }
        fn store_u32(&self, off: usize, val: u32, order: Ordering) {
            self.check(off, 4);
            self.inner.store_u32(off, val, order)
        }
        fn load_u16(&self, off: usize) -> u16 {
            self.check(off, 2);
            self.inner.load_u16(off)
        }
        fn store_u16(&self, off: usize, val: u16) {
            self.check(off, 2);
            self.inner.store_u16(off, val)
        }
        fn load_u64(&self, off: usize) -> u64 {
            self.check(off, 8);
            self.inner.load_u64(off)
        }
        fn store_u64(&self, off: usize, val: u64) {
            self.check(off, 8);
            self.inner.store_u64(off, val)
        }
        fn read_bytes(&self, off: usize, dst: &mut [u8]) {
            self.check(off, dst.len());
            self.inner.read_bytes(off, dst)
        }
        fn write_bytes(&self, off: usize, src: &[u8]) {
            self.check(off, src.len());
            self.inner.write_bytes(off, src)
        }
    }

    /// A hostile frontend scripted by `data` against a real [`BackRing`] (netif TX protocol).
    ///
    /// Script bytes: `0` = write a random `u32` anywhere in the page (next 6 bytes: offset,
    /// value), `1` = a well-behaved frontend pushes and publishes up to N requests, `2` = the
    /// backend consumes up to N requests and parses them, `3` = the backend answers pending
    /// requests, `4`/`5` = publish with notify check / final check, `6` = the frontend consumes
    /// responses, `7` = overwrite a whole slot with script bytes, `8` = the backend answers with
    /// body-less responses, `9` = the frontend skips responses, `10` = the backend copies out a batch (opcodes are taken
    /// modulo 11). Invariants: the backend never
    /// touches memory outside its ring, never panics, never has more than `nr_ents` requests
    /// outstanding, and once it reports a violation it stays broken.
    pub fn ring_backend(data: &[u8]) {
        let mem = HostMem::pages(1);
        let limit =
            RING_HEADER_SIZE + ring_entries(crate::PAGE_SIZE, TxRing::SLOT) as usize * TxRing::SLOT;
        let mut front = match FrontRing::<_, TxRing>::init(mem.clone()) {
            Ok(f) => f,
            Err(_) => return,
        };
        let mut back = match BackRing::<_, TxRing>::attach(BoundsChecked {
            inner: mem.clone(),
            limit,
        }) {
            Ok(b) => b,
            Err(_) => return,
        };
        let nr = back.size();
        let mut it = data.iter().copied();
        let mut next = || it.next();
        let mut was_broken = false;
        let mut id: u16 = 0;
        while let Some(op) = next() {
            let arg = next().unwrap_or(0);
            match op % 11 {
                0 => {
                    let off = ((arg as usize) << 2) % crate::PAGE_SIZE;
                    let mut v = [0u8; 4];
                    for b in &mut v {
                        *b = next().unwrap_or(0);
                    }
                    mem.store_u32(off, u32::from_le_bytes(v), Ordering::Release);
                }
                1 => {
                    for _ in 0..(arg % 64) {
                        let r = netif::TxRequest {
                            gref: 8,
                            offset: 0,
                            flags: 0,
                            id,
                            size: 60,
                        };
                        id = id.wrapping_add(1);
                        if front.push_request(&r.to_bytes()).is_err() {
                            break;
                        }
                    }
                    let _ = front.publish_requests_and_check_notify();
                }
                2 => {
                    for _ in 0..(arg % 64) {
                        match back.pop_request() {
                            Ok(Some(bytes)) => {
                                let _ = netif::TxRequest::from_bytes(&bytes);
                            }
                            Ok(None) | Err(_) => break,
                        }
                    }
                }
                3 => {
                    for _ in 0..(arg % 64) {
                        let rsp = netif::TxResponse {
                            id: arg as u16,
                            status: netif::Status::Okay,
                        };
                        if back.push_response(&rsp.to_bytes()).is_err() {
                            break;
                        }
                    }
                }
                4 => {
                    let _ = back.publish_responses_and_check_notify();
                }
                5 => {
                    let _ = back.final_check_for_requests();
                }
                6 => {
                    for _ in 0..(arg % 64) {
                        match front.pop_response() {
                            Ok(Some(_)) => {}
                            _ => break,
                        }
                    }
                }
                8 => {
                    let _ = back.push_null_responses(arg as u32 % 64);
                }
                9 => {
                    let _ = front.skip_responses();
                }
                10 => {
                    let mut buf = [[0u8; netif::TX_REQUEST_SIZE]; 48];
                    let want = arg as usize % buf.len();
                    if let Ok(n) = back.pop_requests(&mut buf[..want]) {
                        assert!(n <= want);
                        for b in &buf[..n] {
                            let _ = netif::TxRequest::from_bytes(b);
                        }
                    }
                }
                _ => {
                    let slot = (arg as u32 % nr) as usize;
                    let mut b = [0u8; 12];
                    for x in &mut b {
                        *x = next().unwrap_or(0);
                    }
                    mem.write_bytes(RING_HEADER_SIZE + slot * TxRing::SLOT, &b);
                }
            }
            assert!(back.pending_responses() <= nr);
            if was_broken {
                assert!(back.is_broken());
            }
            was_broken = back.is_broken();
        }
    }
}
