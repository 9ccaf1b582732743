//! The configured interface against hand-built frames from a peer: ARP and ICMP echo are
//! answered, frames for others are not.

use crate::build_interface;
use crate::config::NetConfig;
use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;
use smoltcp::iface::SocketSet;
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use smoltcp::wire::*;

/// A device whose received frames are queued by the test and whose sent frames are kept.
#[derive(Default)]
struct Pipe {
    rx: VecDeque<Vec<u8>>,
    tx: Vec<Vec<u8>>,
}

struct PipeRx(Vec<u8>);
struct PipeTx<'a>(&'a mut Vec<Vec<u8>>);

impl phy::RxToken for PipeRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for PipeTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut b = vec![0; len];
        let r = f(&mut b);
        self.0.push(b);
        r
    }
}

impl Device for Pipe {
    type RxToken<'a> = PipeRx;
    type TxToken<'a> = PipeTx<'a>;
    fn receive(&mut self, _: Instant) -> Option<(PipeRx, PipeTx<'_>)> {
        let f = self.rx.pop_front()?;
        Some((PipeRx(f), PipeTx(&mut self.tx)))
    }
    fn transmit(&mut self, _: Instant) -> Option<PipeTx<'_>> {
        Some(PipeTx(&mut self.tx))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        c
    }
}

const OUR_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
const PEER_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 2]);
const OUR_IP: Ipv4Address = Ipv4Address::new(10, 0, 2, 15);
const PEER_IP: Ipv4Address = Ipv4Address::new(10, 0, 2, 2);

fn eth(dst: EthernetAddress, ty: EthernetProtocol, payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0; 14 + payload.len()];
    let mut f = EthernetFrame::new_unchecked(&mut b);
    EthernetRepr {
        src_addr: PEER_MAC,
        dst_addr: dst,
        ethertype: ty,
    }
    .emit(&mut f);
    f.payload_mut().copy_from_slice(payload);
    b
}

fn arp_request(target: Ipv4Address) -> Vec<u8> {
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: PEER_MAC,
        source_protocol_addr: PEER_IP,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    };
    let mut p = vec![0; repr.buffer_len()];
    repr.emit(&mut ArpPacket::new_unchecked(&mut p));
    eth(EthernetAddress::BROADCAST, EthernetProtocol::Arp, &p)
}

fn ping(dst: Ipv4Address, seq_no: u16, data: &[u8]) -> Vec<u8> {
    let icmp = Icmpv4Repr::EchoRequest {
        ident: 0x77,
        seq_no,
        data,
    };
    let ip = Ipv4Repr {
        src_addr: PEER_IP,
        dst_addr: dst,
        next_header: IpProtocol::Icmp,
        payload_len: icmp.buffer_len(),
        hop_limit: 64,
    };
    let mut p = vec![0; ip.buffer_len() + icmp.buffer_len()];
    let caps = smoltcp::phy::ChecksumCapabilities::default();
    ip.emit(&mut Ipv4Packet::new_unchecked(&mut p), &caps);
    icmp.emit(
        &mut Icmpv4Packet::new_unchecked(&mut p[ip.buffer_len()..]),
        &caps,
    );
    eth(OUR_MAC, EthernetProtocol::Ipv4, &p)
}

fn run(frames: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let cfg = NetConfig::from_cmdline("ip=10.0.2.15/24 gw=10.0.2.2 echo_port=7").unwrap();
    let mut dev = Pipe::default();
    let now = Instant::from_millis(1);
    let mut iface = build_interface(&cfg, OUR_MAC, &mut dev, now, 1);
    let mut sockets = SocketSet::new(vec![]);
    dev.rx.extend(frames);
    iface.poll(now, &mut dev, &mut sockets);
    dev.tx
}

#[test]
fn answers_arp_for_its_address_only() {
    let out = run(vec![
        arp_request(Ipv4Address::new(10, 0, 2, 99)),
        arp_request(OUR_IP),
    ]);
    assert_eq!(out.len(), 1);
    let f = EthernetFrame::new_checked(&out[0][..]).unwrap();
    assert_eq!(f.dst_addr(), PEER_MAC);
    let arp = ArpRepr::parse(&ArpPacket::new_checked(f.payload()).unwrap()).unwrap();
    let ArpRepr::EthernetIpv4 {
        operation,
        source_hardware_addr,
        source_protocol_addr,
        target_protocol_addr,
        ..
    } = arp
    else {
        panic!("not an Ethernet/IPv4 ARP: {arp:?}")
    };
    assert_eq!(operation, ArpOperation::Reply);
    assert_eq!(source_hardware_addr, OUR_MAC);
    assert_eq!(source_protocol_addr, OUR_IP);
    assert_eq!(target_protocol_addr, PEER_IP);
}

#[test]
fn answers_icmp_echo_with_same_payload() {
    let payload = b"iconnect ping payload 0123456789";
    let out = run(vec![
        arp_request(OUR_IP),
        ping(OUR_IP, 5, payload),
        ping(Ipv4Address::new(10, 0, 2, 77), 6, payload),
    ]);
    // ARP reply, then exactly one echo reply (the ping to another address is ignored).
    assert_eq!(out.len(), 2, "{out:?}");
    let f = EthernetFrame::new_checked(&out[1][..]).unwrap();
    assert_eq!(f.ethertype(), EthernetProtocol::Ipv4);
    let ip = Ipv4Packet::new_checked(f.payload()).unwrap();
    assert!(ip.verify_checksum());
    assert_eq!((ip.src_addr(), ip.dst_addr()), (OUR_IP, PEER_IP));
    let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
    let repr = Icmpv4Repr::parse(&icmp, &Default::default()).unwrap();
    assert_eq!(
        repr,
        Icmpv4Repr::EchoReply {
            ident: 0x77,
            seq_no: 5,
            data: payload
        }
    );
}
