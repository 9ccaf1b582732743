//! Property tests of the learning bridge: random frames from random ports (guests that spoof,
//! an uplink with many MACs), ports going down and up, time moving on.

use netswitch::bridge::{Bridge, DropReason, Forward, Mac};
use proptest::prelude::*;

const CAPACITY: usize = 8;
const AGE: u64 = 1_000;
/// Port 0: uplink (not pinned); ports 1..=4: guests pinned to `guest_mac(p)`.
const PORTS: u8 = 5;

fn guest_mac(p: u8) -> Mac {
    Mac([0x52, 0x54, 0, 0, 0, p])
}

#[derive(Debug, Clone)]
enum Op {
    Frame {
        port: u8,
        src: u8,
        dst: u8,
        bcast: bool,
    },
    Toggle(u8),
    Tick(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..PORTS, 0u8..40, 0u8..40, any::<bool>())
            .prop_map(|(port, src, dst, bcast)| Op::Frame { port, src, dst, bcast }),
        1 => (1..PORTS).prop_map(Op::Toggle),
        1 => (0u64..600).prop_map(Op::Tick),
    ]
}

/// MACs 1..=4 are the guests', the rest are hosts behind the uplink.
fn mac(n: u8) -> Mac {
    if (1..PORTS).contains(&n) {
        guest_mac(n)
    } else {
        Mac([0x02, 0, 0, 0, 1, n])
    }
}

fn frame(dst: Mac, src: Mac) -> Vec<u8> {
    let mut f = dst.0.to_vec();
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&[0x08, 0x06]);
    f.resize(60, 0);
    f
}

proptest! {
    #[test]
    fn bridge_rules_hold(ops in prop::collection::vec(op(), 1..300)) {
        let mut b = Bridge::new(CAPACITY, AGE);
        let mut up = [true; PORTS as usize];
        b.add_port(0, None).unwrap();
        for p in 1..PORTS {
            b.add_port(p, Some(guest_mac(p))).unwrap();
        }
        let mut now = 0u64;
        let mut spoofed = [0u64; PORTS as usize];
        for op in ops {
            match op {
                Op::Tick(d) => now += d,
                Op::Toggle(p) => {
                    if up[usize::from(p)] {
                        b.remove_port(p);
                    } else {
                        b.add_port(p, Some(guest_mac(p))).unwrap();
                    }
                    up[usize::from(p)] ^= true;
                }
                Op::Frame { port, src, dst, bcast } => {
                    let d = if bcast { Mac::BROADCAST } else { mac(dst) };
                    let s = mac(src);
                    let f = b.forward(port, &frame(d, s), now);
                    let pinned = port != 0;
                    let spoof = pinned && s != guest_mac(port);
                    if !up[usize::from(port)] {
                        prop_assert_eq!(f, Forward::Drop(DropReason::PortDown));
                        continue;
                    }
                    if spoof {
                        spoofed[usize::from(port)] += 1;
                        prop_assert_eq!(f, Forward::Drop(DropReason::Spoofed));
                    }
                    match f {
                        Forward::To(p) => {
                            prop_assert_ne!(p, port, "back to the ingress port");
                            prop_assert!(up[usize::from(p)], "to a port that is down");
                            prop_assert!(!bcast);
                            // A guest's MAC always leads to that guest while it is up.
                            if (1..PORTS).contains(&dst) && up[usize::from(dst)] {
                                prop_assert_eq!(p, dst);
                            }
                        }
                        Forward::Flood(set) => {
                            prop_assert!(!set.contains(port));
                            for q in 0..PORTS {
                                prop_assert_eq!(set.contains(q), q != port && up[usize::from(q)]);
                            }
                            // Never flood a frame for a guest that is up: it is pinned.
                            if !bcast && (1..PORTS).contains(&dst) {
                                prop_assert!(!up[usize::from(dst)] || dst == port);
                            }
                        }
                        Forward::Drop(_) => {}
                    }
                }
            }
            prop_assert!(b.learnt_len() <= CAPACITY);
            for p in 1..PORTS {
                prop_assert_eq!(b.spoofed(p), if up[usize::from(p)] { spoofed[usize::from(p)] } else { 0 });
                if !up[usize::from(p)] {
                    spoofed[usize::from(p)] = 0;
                }
            }
        }
    }
}
