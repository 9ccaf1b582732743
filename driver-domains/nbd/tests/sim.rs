//! The client against an in-memory NBD server written from the protocol text: random byte
//! splits both ways, replies in random order, hostile bytes, and connections dropped at random
//! points (requests lost before the server saw them, and acknowledgements lost after it applied
//! them). Invariants: every request completes exactly once; reads return what was
//! acknowledged; no acknowledged write is lost; hostile input never panics.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use nbd::wire::{
    self, BlockSize, Command, Greeting, Info, OptionReply, Request, SimpleReply, cflags, errno,
    handshake, opt, rep, tflags,
};
use nbd::{Client, Config, Error, Event, Phase};
use proptest::prelude::*;

/// Small deterministic PRNG (xorshift64*).
#[derive(Clone)]
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SPhase {
    ClientFlags,
    Options,
    Transmission,
    Closed,
}

/// An NBD server over an in-memory disk. The disk survives connections.
struct SimServer {
    disk: Vec<u8>,
    flags: u16,
    block: Option<BlockSize>,
    export: &'static str,
    phase: SPhase,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    /// Requests received but not answered yet (answered in random order).
    pending: Vec<(Request, Vec<u8>)>,
    applied_writes: u64,
}

impl SimServer {
    fn new(size: usize, flags: u16, block: Option<BlockSize>) -> Self {
        Self {
            disk: vec![0; size],
            flags,
            block,
            export: "vol",
            phase: SPhase::Closed,
            inbuf: Vec::new(),
            out: Vec::new(),
            pending: Vec::new(),
            applied_writes: 0,
        }
    }

    /// A new connection: greeting queued; everything of the old one is gone.
    fn accept(&mut self) {
        self.phase = SPhase::ClientFlags;
        self.inbuf.clear();
        self.pending.clear();
        self.out = Greeting {
            flags: handshake::FIXED_NEWSTYLE | handshake::NO_ZEROES,
        }
        .to_bytes()
        .to_vec();
    }

    fn reply_opt(&mut self, option: u32, reply_type: u32, data: &[u8]) {
        self.out.extend_from_slice(
            &OptionReply {
                option,
                reply_type,
                length: data.len() as u32,
            }
            .to_bytes(),
        );
        self.out.extend_from_slice(data);
    }

    fn feed(&mut self, bytes: &[u8]) {
        self.inbuf.extend_from_slice(bytes);
        loop {
            match self.phase {
                SPhase::Closed => return,
                SPhase::ClientFlags => {
                    if self.inbuf.len() < 4 {
                        return;
                    }
                    let f = u32::from_be_bytes(self.inbuf[..4].try_into().unwrap());
                    assert_eq!(f & !3, 0, "unknown client flags");
                    assert!(f & 1 != 0, "client must ask for fixed newstyle");
                    self.inbuf.drain(..4);
                    self.phase = SPhase::Options;
                }
                SPhase::Options => {
                    if self.inbuf.len() < 16 {
                        return;
                    }
                    assert_eq!(&self.inbuf[..8], b"IHAVEOPT");
                    let o = u32::from_be_bytes(self.inbuf[8..12].try_into().unwrap());
                    let len = u32::from_be_bytes(self.inbuf[12..16].try_into().unwrap()) as usize;
                    if self.inbuf.len() < 16 + len {
                        return;
                    }
                    let data: Vec<u8> = self.inbuf[16..16 + len].to_vec();
                    self.inbuf.drain(..16 + len);
                    match o {
                        opt::GO => {
                            let nl = u32::from_be_bytes(data[..4].try_into().unwrap()) as usize;
                            let name = &data[4..4 + nl];
                            let ninfo = u16::from_be_bytes(data[4 + nl..6 + nl].try_into().unwrap());
                            assert_eq!(data.len(), 6 + nl + 2 * ninfo as usize);
                            if name != self.export.as_bytes() {
                                self.reply_opt(o, rep::ERR_UNKNOWN, b"no such export");
                                continue;
                            }
                            let e = Info::Export {
                                size: self.disk.len() as u64,
                                flags: self.flags,
                            }
                            .to_bytes();
                            self.reply_opt(o, rep::INFO, &e);
                            // An info type the client must ignore.
                            self.reply_opt(o, rep::INFO, &[0, 2, b'h', b'i']);
                            if let Some(bs) = self.block {
                                self.reply_opt(o, rep::INFO, &Info::BlockSize(bs).to_bytes());
                            }
                            self.reply_opt(o, rep::ACK, &[]);
                            self.phase = SPhase::Transmission;
                        }
                        opt::ABORT => {
                            self.reply_opt(o, rep::ACK, &[]);
                            self.phase = SPhase::Closed;
                        }
                        _ => self.reply_opt(o, rep::ERR_UNSUP, &[]),
                    }
                }
                SPhase::Transmission => {
                    if self.inbuf.len() < wire::REQUEST_SIZE {
                        return;
                    }
                    let r = Request::from_bytes(&self.inbuf).expect("client request valid");
                    let plen = if r.command == Command::Write { r.length as usize } else { 0 };
                    if self.inbuf.len() < wire::REQUEST_SIZE + plen {
                        return;
                    }
                    let payload = self.inbuf[wire::REQUEST_SIZE..wire::REQUEST_SIZE + plen].to_vec();
                    self.inbuf.drain(..wire::REQUEST_SIZE + plen);
                    if r.command == Command::Disc {
                        self.phase = SPhase::Closed;
                        return;
                    }
                    assert!(
                        self.pending.iter().all(|(p, _)| p.cookie != r.cookie),
                        "cookie reused while in flight"
                    );
                    self.pending.push((r, payload));
                }
            }
        }
    }

    /// Answers up to `n` pending requests, picked at random: applies them, queues replies.
    fn answer(&mut self, rng: &mut Rng, n: usize) {
        for _ in 0..n {
            if self.pending.is_empty() {
                return;
            }
            let i = rng.below(self.pending.len() as u64) as usize;
            let (r, payload) = self.pending.swap_remove(i);
            let (o, l) = (r.offset as usize, r.length as usize);
            let in_range = o.checked_add(l).is_some_and(|e| e <= self.disk.len());
            let mut data = Vec::new();
            let error = match r.command {
                Command::Read if in_range => {
                    data = self.disk[o..o + l].to_vec();
                    0
                }
                Command::Write if in_range => {
                    self.disk[o..o + l].copy_from_slice(&payload);
                    self.applied_writes += 1;
                    0
                }
                Command::Trim if in_range => {
                    self.disk[o..o + l].fill(0);
                    0
                }
                Command::Flush => 0,
                _ => errno::EINVAL,
            };
            if r.flags & cflags::FUA != 0 {
                assert!(self.flags & tflags::SEND_FUA != 0, "FUA not advertised");
            }
            self.out.extend_from_slice(
                &SimpleReply {
                    error,
                    cookie: r.cookie,
                }
                .to_bytes(),
            );
            self.out.extend_from_slice(&data);
        }
    }
}

const FLAGS: u16 = tflags::HAS_FLAGS | tflags::SEND_FLUSH | tflags::SEND_FUA | tflags::SEND_TRIM;

/// Moves up to `max` bytes each way.
fn shuttle(c: &mut Client, s: &mut SimServer, rng: &mut Rng, now: u64, max: usize) {
    let n = (rng.below(max as u64) as usize + 1).min(c.transmit().len());
    let bytes = c.transmit()[..n].to_vec();
    c.sent(n);
    s.feed(&bytes);
    let m = (rng.below(max as u64) as usize + 1).min(s.out.len());
    let bytes: Vec<u8> = s.out.drain(..m).collect();
    let _ = c.receive(now, &bytes);
}

fn handshake_client(c: &mut Client, s: &mut SimServer, rng: &mut Rng) -> nbd::ExportInfo {
    s.accept();
    c.connect(0);
    for _ in 0..10_000 {
        shuttle(c, s, rng, 0, 64);
        while let Some(ev) = c.next_event() {
            match ev {
                Event::Ready(i) => return i,
                Event::Down(e) => panic!("handshake: {e}"),
                Event::Done(_) => {}
            }
        }
    }
    panic!("handshake did not finish");
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut r = Rng(seed | 1);
    (0..len).map(|_| r.next() as u8).collect()
}

#[derive(Debug, Clone, Copy)]
struct Op {
    cmd: Command,
    off: u64,
    len: u32,
}

/// Random ops with no two in-flight ops overlapping, replies reordered, random splits: reads
/// always see the acknowledged state; the disk equals the model.
fn run_random(seed: u64, n_ops: usize, split: usize) {
    let mut rng = Rng(seed | 1);
    let size = 256 * 1024;
    let mut s = SimServer::new(size, FLAGS, Some(BlockSize { min: 512, preferred: 4096, max: 32768 }));
    let mut c = Client::new(Config::new("vol"));
    let info = handshake_client(&mut c, &mut s, &mut rng);
    assert_eq!(info.max_payload, 32768);
    let mut model = vec![0u8; size];
    let mut inflight: BTreeMap<u64, (Op, Vec<u8>)> = BTreeMap::new();
    let mut done = BTreeSet::new();
    let mut issued = 0;
    let mut now = 0;
    while issued < n_ops || !inflight.is_empty() {
        for _ in 0..rng.below(6) {
            if issued == n_ops || !c.can_submit() {
                break;
            }
            let len = 512 * (1 + rng.below(64)) as u32;
            let off = 512 * rng.below((size as u64 - u64::from(len)) / 512 + 1);
            let cmd = [Command::Read, Command::Write, Command::Write, Command::Trim, Command::Flush][rng.below(5) as usize];
            let (o2, l2) = if cmd == Command::Flush { (0, 0) } else { (off, len) };
            let overlaps = inflight
                .values()
                .any(|(op, _)| op.cmd != Command::Flush && l2 > 0 && op.off < o2 + u64::from(l2) && o2 < op.off + u64::from(op.len));
            if overlaps {
                continue;
            }
            let data = if cmd == Command::Write { pattern(rng.next(), len as usize) } else { Vec::new() };
            let h = match cmd {
                Command::Read => c.read(now, off, len),
                Command::Write => c.write(now, off, &data, rng.below(2) == 0),
                Command::Trim => c.trim(now, off, len, false),
                _ => c.flush(now),
            }
            .unwrap();
            inflight.insert(h, (Op { cmd, off: o2, len: l2 }, data));
            issued += 1;
        }
        shuttle(&mut c, &mut s, &mut rng, now, split);
        let k = rng.below(4) as usize;
        s.answer(&mut rng, k);
        now += 10;
        while let Some(ev) = c.next_event() {
            let Event::Done(d) = ev else { panic!("unexpected {ev:?}") };
            assert!(done.insert(d.handle), "completed twice");
            let (op, data) = inflight.remove(&d.handle).expect("known handle");
            assert_eq!(d.result, Ok(()));
            let r = op.off as usize..(op.off + u64::from(op.len)) as usize;
            match op.cmd {
                Command::Read => assert!(d.data == model[r], "read differs"),
                Command::Write => model[r].copy_from_slice(&data),
                Command::Trim => model[r].fill(0),
                _ => {}
            }
        }
    }
    assert!(s.disk == model, "disk differs from the acknowledged model");
    assert_eq!(c.stats().ok, n_ops as u64);
}

/// Connections dropped at random moments (the server loses what it has not answered, the
/// client loses replies in transit); failed writes are retried after reconnecting. Every slot
/// ends on the disk exactly as written; an acknowledgement is never followed by a loss.
fn run_drops(seed: u64, slots: usize) {
    let mut rng = Rng(seed | 1);
    let slot = 4096usize;
    let mut s = SimServer::new(slots * slot, FLAGS, None);
    let mut c = Client::new(Config::new("vol"));
    handshake_client(&mut c, &mut s, &mut rng);
    let mut todo: VecDeque<usize> = (0..slots).collect();
    let mut inflight = BTreeMap::new();
    let mut acked = vec![false; slots];
    let (mut n_acked, mut drops, mut failed) = (0, 0, 0);
    let mut now = 0;
    while n_acked < slots {
        while let Some(&k) = todo.front() {
            if !c.can_submit() || rng.below(3) == 0 {
                break;
            }
            let h = c.write(now, (k * slot) as u64, &pattern(k as u64 + 7, slot), false).unwrap();
            inflight.insert(h, k);
            todo.pop_front();
        }
        shuttle(&mut c, &mut s, &mut rng, now, 3000);
        let k = rng.below(5) as usize;
        s.answer(&mut rng, k);
        now += 10;
        if rng.below(40) == 0 && c.in_flight() > 0 {
            // Drop: both sides lose everything in transit.
            drops += 1;
            c.connection_lost();
            s.out.clear();
        }
        while let Some(ev) = c.next_event() {
            match ev {
                Event::Done(d) => {
                    let k = inflight.remove(&d.handle).expect("known handle");
                    match d.result {
                        Ok(()) => {
                            assert!(!acked[k]);
                            acked[k] = true;
                            n_acked += 1;
                            // Acknowledged: it is on the disk now (and stays, checked below).
                            assert!(s.disk[k * slot..(k + 1) * slot] == pattern(k as u64 + 7, slot)[..]);
                        }
                        Err(Error::Disconnected) => {
                            failed += 1;
                            todo.push_back(k);
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
                Event::Down(e) => assert_eq!(e, Error::Disconnected),
                Event::Ready(_) => {}
            }
        }
        if c.phase() == Phase::Down {
            handshake_client(&mut c, &mut s, &mut rng);
        }
    }
    assert!(inflight.is_empty());
    for k in 0..slots {
        assert!(s.disk[k * slot..(k + 1) * slot] == pattern(k as u64 + 7, slot)[..], "slot {k} lost");
    }
    if slots >= 200 {
        assert!(drops > 0 && failed > 0, "drops={drops} failed={failed}");
    }
}

#[test]
fn random_ops_reordered_replies_byte_exact() {
    run_random(1, 2000, 7);
    run_random(2, 2000, 100_000);
}

#[test]
fn dropped_connections_lose_no_acknowledged_write() {
    run_drops(3, 400);
}

/// The corrupted-stream scenario's client: once ready, a read or write every 5th step.
fn maybe_submit(c: &mut Client, rng: &mut Rng, ready: bool, step: usize) -> Option<u64> {
    if !(ready && step.is_multiple_of(5) && c.can_submit()) {
        return None;
    }
    Some(if rng.below(2) == 0 {
        c.read(0, 512 * rng.below(100), 512 * (1 + rng.below(8) as u32)).unwrap()
    } else {
        c.write(0, 512 * rng.below(100), &[7; 1024], false).unwrap()
    })
}

/// Moves the client's pending bytes to the server, lets it answer up to two requests, and
/// returns what it sent back.
fn server_turn(c: &mut Client, s: &mut SimServer, rng: &mut Rng) -> Vec<u8> {
    let b = c.transmit().to_vec();
    c.sent(b.len());
    s.feed(&b);
    s.answer(rng, 2);
    s.out.drain(..).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn prop_random_ops(seed in any::<u64>(), split in 1usize..5000) {
        run_random(seed, 150, split);
    }

    #[test]
    fn prop_drops(seed in any::<u64>()) {
        run_drops(seed, 60);
    }

    /// One byte of the server's stream flipped (or one inserted): the client completes every
    /// request exactly once and never panics.
    #[test]
    fn prop_corrupted_stream(seed in any::<u64>(), pos in 0usize..4000, val in any::<u8>(), insert in any::<bool>()) {
        let mut rng = Rng(seed | 1);
        let mut s = SimServer::new(65536, FLAGS, Some(BlockSize { min: 512, preferred: 4096, max: 65536 }));
        s.accept();
        let mut c = Client::new(Config::new("vol"));
        c.connect(0);
        // Run a whole exchange, recording the server's stream, then replay it corrupted.
        let mut stream = Vec::new();
        let mut handles = BTreeSet::new();
        let mut ready = false;
        for step in 0..400 {
            handles.extend(maybe_submit(&mut c, &mut rng, ready, step));
            let out = server_turn(&mut c, &mut s, &mut rng);
            stream.extend_from_slice(&out);
            c.receive(0, &out).unwrap();
            while let Some(ev) = c.next_event() {
                if matches!(ev, Event::Ready(_)) { ready = true; }
            }
        }
        // Replay against a fresh client that submits the same requests at the same points.
        let mut bad = stream.clone();
        let pos = pos % bad.len();
        if insert { bad.insert(pos, val) } else { bad[pos] ^= val.max(1) }
        let mut rng = Rng(seed | 1);
        let mut s2 = SimServer::new(65536, FLAGS, Some(BlockSize { min: 512, preferred: 4096, max: 65536 }));
        s2.accept();
        let mut c = Client::new(Config::new("vol"));
        c.connect(0);
        let mut submitted = BTreeSet::new();
        let mut done = BTreeSet::new();
        let mut fed = 0;
        let mut ready = false;
        for step in 0..400 {
            submitted.extend(maybe_submit(&mut c, &mut rng, ready, step));
            let produced = server_turn(&mut c, &mut s2, &mut rng).len();
            let end = (fed + produced).min(bad.len());
            let _ = c.receive(0, &bad[fed..end]);
            fed = end;
            while let Some(ev) = c.next_event() {
                match ev {
                    Event::Ready(_) => ready = true,
                    Event::Done(d) => prop_assert!(done.insert(d.handle)),
                    Event::Down(_) => prop_assert_eq!(c.in_flight(), 0),
                }
            }
            if c.phase() == Phase::Down { break; }
        }
        c.connection_lost();
        while let Some(ev) = c.next_event() {
            if let Event::Done(d) = ev { prop_assert!(done.insert(d.handle)); }
        }
        prop_assert_eq!(done, submitted);
    }
}

// ---------------------------------------------------------------------------------------------
// Handshake and transmission faults, one by one

fn client_after(bytes: &[u8]) -> (Client, Vec<Event>) {
    let mut c = Client::new(Config::new("vol"));
    c.connect(0);
    let _ = c.receive(0, bytes);
    let mut evs = Vec::new();
    while let Some(e) = c.next_event() {
        evs.push(e);
    }
    (c, evs)
}

fn opt_reply(option: u32, t: u32, data: &[u8]) -> Vec<u8> {
    let mut v = OptionReply { option, reply_type: t, length: data.len() as u32 }.to_bytes().to_vec();
    v.extend_from_slice(data);
    v
}

fn greeting(flags: u16) -> Vec<u8> {
    Greeting { flags }.to_bytes().to_vec()
}

#[test]
fn handshake_faults() {
    let g = greeting(handshake::FIXED_NEWSTYLE);
    let export = Info::Export { size: 1 << 20, flags: FLAGS }.to_bytes();
    let cases: Vec<(Vec<u8>, Error)> = vec![
        (greeting(0), Error::NotFixedNewstyle),
        (b"NBDMAGIC\x00\x00\x42\x02\x81\x86\x12\x53\x00\x00".to_vec(), Error::BadMagic),
        ([g.clone(), opt_reply(opt::GO, rep::ACK, &[])].concat(), Error::NoExportInfo),
        ([g.clone(), opt_reply(opt::LIST, rep::ACK, &[])].concat(), Error::UnexpectedReply),
        ([g.clone(), opt_reply(opt::GO, rep::SERVER, &[0; 4])].concat(), Error::UnexpectedReply),
        ([g.clone(), opt_reply(opt::GO, rep::INFO, &export[..11])].concat(), Error::BadInfo),
        ([g.clone(), opt_reply(opt::GO, rep::INFO, &export), opt_reply(opt::GO, rep::ACK, &[1])].concat(), Error::BadInfo),
        (
            [g.clone(), OptionReply { option: opt::GO, reply_type: rep::INFO, length: 1 << 20 }.to_bytes().to_vec()].concat(),
            Error::TooLong,
        ),
        (
            [g.clone(), opt_reply(opt::GO, rep::INFO, &Info::BlockSize(BlockSize { min: 3, preferred: 4096, max: 4096 }).to_bytes())]
                .concat(),
            Error::BadInfo,
        ),
        ([g.clone(), opt_reply(opt::GO, rep::ERR_TLS_REQD, b"tls")].concat(), Error::Refused(rep::ERR_TLS_REQD)),
    ];
    for (bytes, want) in cases {
        let (c, evs) = client_after(&bytes);
        assert_eq!(evs, vec![Event::Down(want)], "for {want:?}");
        assert_eq!(c.phase(), Phase::Down);
        if let Error::Refused(_) = want {
            // The client politely aborts: its last words are NBD_OPT_ABORT.
            let mut abort = Vec::new();
            wire::emit_option(&mut abort, opt::ABORT, &[]);
            assert_eq!(c.transmit(), &abort[..]);
        } else {
            assert!(c.transmit().is_empty(), "nothing more is sent after a violation");
        }
    }
    // Unknown info types and NAME/DESCRIPTION are ignored; bytes after Down are ignored.
    let ok = [
        g.clone(),
        opt_reply(opt::GO, rep::INFO, &[0, 1, b'v']),
        opt_reply(opt::GO, rep::INFO, &[0x12, 0x34, 9, 9, 9]),
        opt_reply(opt::GO, rep::INFO, &export),
        opt_reply(opt::GO, rep::ACK, &[]),
    ]
    .concat();
    let (c, evs) = client_after(&ok);
    assert!(matches!(evs[..], [Event::Ready(i)] if i.size == 1 << 20 && i.block == BlockSize::DEFAULT));
    assert_eq!(c.phase(), Phase::Ready);
    // What the client sent: flags (fixed newstyle only: no NO_ZEROES offered), then GO.
    let mut c = Client::new(Config::new("vol"));
    c.connect(0);
    c.receive(0, &g).unwrap();
    let mut want = 1u32.to_be_bytes().to_vec();
    wire::emit_option(&mut want, opt::GO, &wire::go_data(b"vol", &[wire::info::BLOCK_SIZE]));
    assert_eq!(c.transmit(), &want[..]);
}

fn ready_client(flags: u16, block: Option<BlockSize>, config: Config) -> Client {
    let mut c = Client::new(config);
    c.connect(0);
    c.receive(0, &nbd::fuzzing::server_handshake(1 << 20, flags, block)).unwrap();
    assert!(matches!(c.next_event(), Some(Event::Ready(_))));
    c
}

fn reply(cookie: u64, error: u32) -> Vec<u8> {
    SimpleReply { error, cookie }.to_bytes().to_vec()
}

#[test]
fn transmission_faults_fail_everything_in_flight() {
    let bs = Some(BlockSize { min: 512, preferred: 4096, max: 65536 });
    let structured = {
        let mut r = reply(1, 0);
        r[..4].copy_from_slice(&wire::STRUCTURED_REPLY_MAGIC.to_be_bytes());
        r
    };
    let mut bad_magic = reply(1, 0);
    bad_magic[3] ^= 1;
    for (bytes, want, sent) in [
        (reply(99, 0), Error::UnknownCookie, true),
        (reply(1, 0), Error::UnknownCookie, false), // reply before the request was sent
        (structured, Error::StructuredReply, true),
        (bad_magic, Error::BadMagic, true),
    ] {
        let mut c = ready_client(FLAGS, bs, Config::new("vol"));
        let h1 = c.read(0, 0, 512).unwrap();
        let h2 = c.write(0, 512, &[1; 512], true).unwrap();
        if sent {
            let n = c.transmit().len();
            c.sent(n);
        }
        assert_eq!(c.receive(1, &bytes), Err(want));
        let evs: Vec<Event> = std::iter::from_fn(|| c.next_event()).collect();
        assert_eq!(evs.len(), 3, "{evs:?}");
        for (e, h) in evs.iter().zip([h1, h2]) {
            assert!(matches!(e, Event::Done(d) if d.handle == h && d.result == Err(Error::Disconnected)));
        }
        assert_eq!(evs[2], Event::Down(want));
        assert_eq!(c.read(2, 0, 512), Err(Error::NotReady));
        // Reconnecting works and new handles are never reused.
        c.connect(3);
        c.receive(3, &nbd::fuzzing::server_handshake(1 << 20, FLAGS, bs)).unwrap();
        assert!(matches!(c.next_event(), Some(Event::Ready(_))));
        assert!(c.read(4, 0, 512).unwrap() > h2);
    }
}

#[test]
fn local_checks() {
    let bs = Some(BlockSize { min: 512, preferred: 4096, max: 8192 });
    let mut cfg = Config::new("vol");
    cfg.max_in_flight = 2;
    let mut c = ready_client(tflags::HAS_FLAGS, bs, cfg);
    assert_eq!(c.read(0, 100, 512), Err(Error::Misaligned));
    assert_eq!(c.read(0, 0, 500), Err(Error::Misaligned));
    assert_eq!(c.read(0, 0, 8704), Err(Error::TooLarge));
    assert_eq!(c.read(0, (1 << 20) - 512, 1024), Err(Error::OutOfRange));
    assert_eq!(c.read(0, u64::MAX - 511, 512), Err(Error::OutOfRange));
    assert_eq!(c.flush(0), Err(Error::Unsupported));
    assert_eq!(c.trim(0, 0, 512, false), Err(Error::Unsupported));
    assert_eq!(c.write(0, 0, &[0; 512], true), Err(Error::Unsupported), "FUA not offered");
    c.read(0, 0, 512).unwrap();
    c.write(0, 512, &[0; 512], false).unwrap();
    assert_eq!(c.read(0, 0, 512), Err(Error::Busy));
    let mut ro = ready_client(tflags::HAS_FLAGS | tflags::READ_ONLY | tflags::SEND_TRIM, None, Config::new("vol"));
    assert_eq!(ro.write(0, 0, &[0; 1], false), Err(Error::ReadOnly));
    assert_eq!(ro.trim(0, 0, 1, false), Err(Error::ReadOnly));
    assert_eq!(ro.export().unwrap().max_payload, 4 << 20, "config limit below the default 32 MiB");
}

#[test]
fn server_error_and_eshutdown_soft_disconnect() {
    let mut c = ready_client(FLAGS, None, Config::new("vol"));
    let h1 = c.read(0, 0, 512).unwrap();
    let h2 = c.read(0, 512, 512).unwrap();
    let n = c.transmit().len();
    c.sent(n);
    // EIO: no payload follows; the next reply is parsed normally.
    c.receive(1, &reply(h1, errno::EIO)).unwrap();
    let Some(Event::Done(d)) = c.next_event() else { panic!() };
    assert_eq!((d.handle, d.result, d.data.len()), (h1, Err(Error::Server(errno::EIO)), 0));
    let h3 = c.write(1, 0, &[1; 512], false).unwrap();
    let n = c.transmit().len();
    c.sent(n);
    // ESHUTDOWN: no new requests; DISC once the rest is answered.
    c.receive(2, &reply(h3, errno::ESHUTDOWN)).unwrap();
    assert!(matches!(c.next_event(), Some(Event::Done(d)) if d.result == Err(Error::Server(errno::ESHUTDOWN))));
    assert_eq!(c.read(2, 0, 512), Err(Error::NotReady));
    assert!(c.transmit().is_empty());
    c.receive(3, &[reply(h2, 0), vec![9; 512]].concat()).unwrap();
    assert!(matches!(c.next_event(), Some(Event::Done(d)) if d.handle == h2 && d.data == vec![9; 512]));
    assert_eq!(c.next_event(), Some(Event::Down(Error::Closed)));
    let disc = Request::from_bytes(c.transmit()).unwrap();
    assert_eq!(disc.command, Command::Disc);
}

#[test]
fn timeouts_and_export_change() {
    let mut cfg = Config::new("vol");
    cfg.handshake_timeout_us = 1000;
    cfg.request_timeout_us = 5000;
    let mut c = Client::new(cfg);
    c.connect(100);
    assert_eq!(c.poll_at(), Some(1100));
    c.poll(1099);
    assert_eq!(c.phase(), Phase::Handshake);
    c.poll(1100);
    assert_eq!(c.next_event(), Some(Event::Down(Error::Timeout)));
    c.connect(2000);
    c.receive(2000, &nbd::fuzzing::server_handshake(1 << 20, FLAGS, None)).unwrap();
    assert!(matches!(c.next_event(), Some(Event::Ready(_))));
    assert_eq!(c.poll_at(), None, "nothing in flight: no deadline");
    let h = c.read(3000, 0, 4096).unwrap();
    c.read(4000, 4096, 4096).unwrap();
    assert_eq!(c.poll_at(), Some(8000), "oldest request");
    c.poll(8000);
    assert!(matches!(c.next_event(), Some(Event::Done(d)) if d.handle == h && d.result == Err(Error::Disconnected)));
    // The export shrank while we were away: refused.
    c.connect(9000);
    assert_eq!(c.receive(9000, &nbd::fuzzing::server_handshake(1 << 19, FLAGS, None)), Err(Error::ExportChanged));
    assert_eq!(c.stats().timeouts, 2);
}

#[test]
fn close_during_handshake_and_unknown_export_against_sim_server() {
    let mut rng = Rng(5);
    let mut s = SimServer::new(4096, FLAGS, None);
    s.export = "other";
    s.accept();
    let mut c = Client::new(Config::new("vol"));
    c.connect(0);
    for _ in 0..100 {
        shuttle(&mut c, &mut s, &mut rng, 0, 16);
    }
    assert_eq!(c.next_event(), Some(Event::Down(Error::Refused(rep::ERR_UNKNOWN))));
    // The ABORT reaches the server, which acknowledges and closes.
    let b = c.transmit().to_vec();
    s.feed(&b);
    assert_eq!(s.phase, SPhase::Closed);
    // close() after the GO was sent: the connection closes once GO is answered (with DISC).
    let mut s = SimServer::new(4096, FLAGS, None);
    s.accept();
    let mut c = Client::new(Config::new("vol"));
    c.connect(0);
    let g: Vec<u8> = s.out.drain(..).collect();
    c.receive(0, &g).unwrap();
    c.close();
    let b = c.transmit().to_vec();
    c.sent(b.len());
    s.feed(&b);
    let r: Vec<u8> = s.out.drain(..).collect();
    c.receive(0, &r).unwrap();
    assert!(matches!(c.next_event(), Some(Event::Ready(_))));
    assert_eq!(c.next_event(), Some(Event::Down(Error::Closed)));
    let b = c.transmit().to_vec();
    s.feed(&b);
    assert_eq!(s.phase, SPhase::Closed, "DISC received");
    assert_eq!(s.applied_writes, 0);
}
