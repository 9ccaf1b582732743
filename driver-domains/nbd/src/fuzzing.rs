//! Fuzz entry points: arbitrary server bytes fed to a [`Client`].
//!
//! Each entry point panics only if the client breaks one of its promises (it must never panic
//! itself; every submitted request completes exactly once; nothing completes twice; after
//! [`Event::Down`] nothing is in flight). `tests/corpus.rs` replays the committed corpus
//! (`tests/corpus/<target>/*`) and seeded random inputs through [`TARGETS`].

use alloc::collections::BTreeSet;
use alloc::vec::Vec;

use crate::client::{Client, Config, Event, Handle};
use crate::wire::{self, BlockSize, Greeting, Info, OptionReply, handshake, opt, rep, tflags};

/// A fuzz entry point.
pub type Target = fn(&[u8]);

/// `(name, entry point)` of every target.
pub const TARGETS: &[(&str, Target)] = &[("handshake", handshake), ("transmission", transmission)];

/// The bytes an honest server sends for a successful `NBD_OPT_GO`: greeting, `NBD_INFO_EXPORT`,
/// optionally `NBD_INFO_BLOCK_SIZE`, `NBD_REP_ACK`.
pub fn server_handshake(size: u64, flags: u16, block: Option<BlockSize>) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(
        &Greeting {
            flags: handshake::FIXED_NEWSTYLE | handshake::NO_ZEROES,
        }
        .to_bytes(),
    );
    let mut info = |i: Info| {
        let d = i.to_bytes();
        out.extend_from_slice(
            &OptionReply {
                option: opt::GO,
                reply_type: rep::INFO,
                length: d.len() as u32,
            }
            .to_bytes(),
        );
        out.extend_from_slice(&d);
    };
    info(Info::Export { size, flags });
    if let Some(bs) = block {
        info(Info::BlockSize(bs));
    }
    out.extend_from_slice(
        &OptionReply {
            option: opt::GO,
            reply_type: rep::ACK,
            length: 0,
        }
        .to_bytes(),
    );
    out
}

/// Splits `data` into chunk sizes driven by its own bytes (so the fuzzer explores splits).
fn chunks(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = data;
    core::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let n = (usize::from(rest[0]) % 37 + 1).min(rest.len());
        let (a, b) = rest.split_at(n);
        rest = b;
        Some(a)
    })
}

/// Drains events, checking exactly-once completion.
fn drain(c: &mut Client, submitted: &BTreeSet<Handle>, done: &mut BTreeSet<Handle>) {
    while let Some(ev) = c.next_event() {
        match ev {
            Event::Done(d) => {
                assert!(submitted.contains(&d.handle), "completion of a handle never submitted");
                assert!(done.insert(d.handle), "handle completed twice");
                if d.result.is_ok() && d.command == wire::Command::Read {
                    assert_eq!(d.data.len(), d.len as usize, "read data length");
                }
            }
            Event::Down(_) => assert_eq!(c.in_flight(), 0, "in flight after Down"),
            Event::Ready(info) => assert!(info.max_payload > 0),
        }
    }
}

/// Arbitrary bytes as the server's side of the handshake.
pub fn handshake(data: &[u8]) {
    let mut c = Client::new(Config::new("export"));
    c.connect(0);
    let (submitted, mut done) = (BTreeSet::new(), BTreeSet::new());
    for (t, ch) in chunks(data).enumerate() {
        let _ = c.receive(t as u64, ch);
        let n = c.transmit().len();
        c.sent(n);
        drain(&mut c, &submitted, &mut done);
    }
    c.poll(u64::MAX);
    drain(&mut c, &submitted, &mut done);
}

/// A valid handshake, then requests in flight, then arbitrary bytes as the replies (with a few
/// valid reply headers for the real cookies mixed in by the input itself).
pub fn transmission(data: &[u8]) {
    let mut c = Client::new(Config::new("export"));
    c.connect(0);
    let flags = tflags::HAS_FLAGS | tflags::SEND_FLUSH | tflags::SEND_FUA | tflags::SEND_TRIM;
    let hs = server_handshake(1 << 20, flags, Some(BlockSize { min: 512, preferred: 4096, max: 65536 }));
    c.receive(0, &hs).expect("valid handshake");
    let mut submitted = BTreeSet::new();
    let mut done = BTreeSet::new();
    // Requests 1..=6: reads of 512/1024 bytes, writes, a flush, a trim.
    let ops: [(u8, u64, u32); 6] = [(0, 0, 512), (0, 4096, 1024), (1, 512, 512), (2, 0, 0), (3, 8192, 4096), (0, 1024, 512)];
    for (k, off, len) in ops {
        let h = match k {
            0 => c.read(0, off, len),
            1 => c.write(0, off, &[0xa5; 512], true),
            2 => c.flush(0),
            _ => c.trim(0, off, len, false),
        }
        .expect("valid request");
        submitted.insert(h);
    }
    let n = c.transmit().len();
    c.sent(n);
    drain(&mut c, &submitted, &mut done);
    // Interpret input bytes: 0xF0..=0xF5 + error byte -> a well-formed reply header for
    // request (b - 0xF0 + 1); anything else is raw bytes.
    let mut stream = Vec::new();
    let mut i = 0;
    while i < data.len() {
        let b = data[i];
        if (0xf0..=0xf5).contains(&b) && i + 1 < data.len() {
            let r = wire::SimpleReply {
                error: u32::from(data[i + 1] & 1) * wire::errno::EIO,
                cookie: u64::from(b - 0xf0) + 1,
            };
            stream.extend_from_slice(&r.to_bytes());
            i += 2;
        } else {
            stream.push(b);
            i += 1;
        }
    }
    for (t, ch) in chunks(&stream).enumerate() {
        let _ = c.receive(t as u64, ch);
        drain(&mut c, &submitted, &mut done);
    }
    c.connection_lost();
    drain(&mut c, &submitted, &mut done);
    assert_eq!(done, submitted, "every request completes exactly once");
}
