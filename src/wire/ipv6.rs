//! IPv6 headers (RFC 8200): the checked `Packet` view and its `Repr`, the summary the data plane reads, the
//! upper-layer header after the fixed one, and the TCP/UDP/ICMPv6 pseudo-header sum.

use std::net::Ipv6Addr;

use super::ipv4::{checksum_add, PROTO_TCP, PROTO_UDP};
use super::{be16, be32, Error};

/// Byte ranges of the fixed IPv6 header.
pub mod field {
    use crate::wire::Field;

    /// Version (4 bits), traffic class (8 bits) and flow label (20 bits).
    pub const VER_TC_FLOW: Field = 0..4;
    /// Bytes after the fixed header, extension headers included.
    pub const PAYLOAD_LEN: Field = 4..6;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC_ADDR: Field = 8..24;
    pub const DST_ADDR: Field = 24..40;
    /// Source and destination address: the part of the header in the upper-layer pseudo-header.
    pub const ADDRESSES: Field = 8..40;
    /// The payload (an extension header or the upper-layer header) starts here.
    pub const PAYLOAD: usize = 40;
}

/// The fixed IPv6 header length.
pub const HEADER_LEN: usize = field::PAYLOAD;
/// The next-header value of ICMPv6.
pub const PROTO_ICMPV6: u8 = 58;
/// The smallest link MTU IPv6 allows (RFC 8200 section 5): ICMPv6 errors never exceed it.
pub const MIN_MTU: usize = 1280;
/// Next-header values of the extension headers weft walks past (RFC 8200 section 4).
pub const EXT_HOP_BY_HOP: u8 = 0;
pub const EXT_ROUTING: u8 = 43;
pub const EXT_FRAGMENT: u8 = 44;
pub const EXT_AUTH: u8 = 51;
pub const EXT_DEST_OPTS: u8 = 60;
/// Extension headers walked at most before giving up on finding the upper layer.
const MAX_EXT_HEADERS: usize = 8;

/// A view of an IPv6 packet (see the contract in `wire`).
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A view without checks: for a buffer already checked, or about to be filled by `Repr::emit`.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// A view of untrusted bytes: fails unless they are a complete IPv6 packet (see `check_len`).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Packet<T>, Error> {
        let p = Packet::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Ok if the buffer holds a version 6 header and the whole payload its payload length claims. Bytes
    /// after it (link padding) are allowed. A jumbogram (payload length 0 and a hop-by-hop option) is
    /// taken as its 40 bytes: weft never carries one.
    #[inline]
    pub fn check_len(&self) -> Result<(), Error> {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN || self.version() != 6 || self.total_len() > b.len() {
            return Err(Error);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[0] >> 4
    }

    /// The traffic class (DSCP and ECN).
    #[inline]
    pub fn traffic_class(&self) -> u8 {
        (be32(&self.buffer.as_ref()[field::VER_TC_FLOW]) >> 20) as u8
    }

    /// The 20-bit flow label.
    #[inline]
    pub fn flow_label(&self) -> u32 {
        be32(&self.buffer.as_ref()[field::VER_TC_FLOW]) & 0x000f_ffff
    }

    /// The payload length field: bytes after the fixed header.
    #[inline]
    pub fn payload_len(&self) -> usize {
        usize::from(be16(&self.buffer.as_ref()[field::PAYLOAD_LEN]))
    }

    /// The fixed header and the payload.
    #[inline]
    pub fn total_len(&self) -> usize {
        HEADER_LEN + self.payload_len()
    }

    #[inline]
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NEXT_HEADER]
    }

    #[inline]
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    #[inline]
    pub fn src_addr(&self) -> Ipv6Addr {
        addr(&self.buffer.as_ref()[field::SRC_ADDR])
    }

    #[inline]
    pub fn dst_addr(&self) -> Ipv6Addr {
        addr(&self.buffer.as_ref()[field::DST_ADDR])
    }

    /// The fixed header.
    #[inline]
    pub fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[..HEADER_LEN]
    }

    /// The payload: from the end of the fixed header to the payload length.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.total_len()]
    }

    /// The running one's-complement sum of the upper-layer pseudo-header (RFC 8200 section 8.1) for this
    /// packet's addresses, upper-layer protocol `protocol` and an upper-layer length of `l4_len` bytes
    /// (fold it in with `checksum_finish`).
    #[inline]
    pub fn pseudo_header_sum(&self, protocol: u8, l4_len: usize) -> u32 {
        addresses_pseudo_sum(&self.buffer.as_ref()[field::ADDRESSES], protocol, l4_len)
    }

    /// The upper-layer header directly after the fixed header (see [`Upper`]).
    #[inline]
    pub fn upper(&self) -> Upper {
        Upper::of(self.next_header())
    }

    /// The summary the data plane reads.
    #[inline]
    pub fn info(&self) -> Ipv6Info {
        Ipv6Info {
            src: self.src_addr(),
            dst: self.dst_addr(),
            next_header: self.next_header(),
            total_len: self.total_len(),
            flow_label: self.flow_label(),
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets version 6, the traffic class and the flow label (its low 20 bits).
    #[inline]
    pub fn set_version_tc_flow(&mut self, traffic_class: u8, flow_label: u32) {
        let w = 6 << 28 | u32::from(traffic_class) << 20 | (flow_label & 0x000f_ffff);
        self.buffer.as_mut()[field::VER_TC_FLOW].copy_from_slice(&w.to_be_bytes());
    }

    #[inline]
    pub fn set_payload_len(&mut self, len: usize) {
        self.buffer.as_mut()[field::PAYLOAD_LEN].copy_from_slice(&(len as u16).to_be_bytes());
    }

    #[inline]
    pub fn set_next_header(&mut self, n: u8) {
        self.buffer.as_mut()[field::NEXT_HEADER] = n;
    }

    #[inline]
    pub fn set_hop_limit(&mut self, h: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = h;
    }

    #[inline]
    pub fn set_src_addr(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&a.octets());
    }

    #[inline]
    pub fn set_dst_addr(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&a.octets());
    }

    /// The payload, mutable: from the end of the fixed header to the payload length.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let total = self.total_len();
        &mut self.buffer.as_mut()[HEADER_LEN..total]
    }
}

/// The fields of a fixed IPv6 header, as weft writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub src_addr: Ipv6Addr,
    pub dst_addr: Ipv6Addr,
    pub next_header: u8,
    /// Bytes after the fixed header.
    pub payload_len: usize,
    pub hop_limit: u8,
    pub traffic_class: u8,
    pub flow_label: u32,
}

impl Repr {
    /// Header plus payload.
    pub fn total_len(&self) -> usize {
        HEADER_LEN + self.payload_len
    }

    /// Writes the 40-byte header into the front of `packet` (IPv6 has no header checksum).
    #[inline]
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_version_tc_flow(self.traffic_class, self.flow_label);
        packet.set_payload_len(self.payload_len);
        packet.set_next_header(self.next_header);
        packet.set_hop_limit(self.hop_limit);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
    }
}

/// What follows the fixed header, as far as the data plane treats packets differently by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upper {
    /// A TCP header, at `HEADER_LEN`.
    Tcp,
    /// A UDP header, at `HEADER_LEN`.
    Udp,
    /// An ICMPv6 message, at `HEADER_LEN`.
    Icmpv6,
    /// Extension headers or another protocol (the next-header value): routed by destination and forwarded
    /// as they are, never segmented, coalesced or checksummed by weft.
    Opaque(u8),
}

impl Upper {
    /// The upper layer that next-header value `n` of the fixed header names.
    #[inline]
    pub fn of(n: u8) -> Upper {
        match n {
            PROTO_TCP => Upper::Tcp,
            PROTO_UDP => Upper::Udp,
            PROTO_ICMPV6 => Upper::Icmpv6,
            other => Upper::Opaque(other),
        }
    }
}

/// The parts of an IPv6 packet the data plane reads, taken from a buffer whose header was validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Info {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    /// The fixed header's next header (the upper-layer protocol unless extension headers follow).
    pub next_header: u8,
    /// The fixed header and payload (never more than the buffer).
    pub total_len: usize,
    pub flow_label: u32,
}

impl Ipv6Info {
    /// The upper-layer header directly after the fixed header.
    #[inline]
    pub fn upper(&self) -> Upper {
        Upper::of(self.next_header)
    }
}

/// Parses an IPv6 header; None if `b` is not a complete IPv6 packet (version, payload length).
#[inline]
pub fn parse(b: &[u8]) -> Option<Ipv6Info> {
    Packet::new_checked(b).ok().map(|p| p.info())
}

/// The upper-layer protocol of a checked packet and the offset of its header, walking past the hop-by-hop,
/// routing, destination-options, fragment and authentication headers (at most 8). None when the chain
/// is cut short, too long, or the packet is a non-first fragment (which carries no upper-layer header).
pub fn upper_layer(packet: &Packet<&[u8]>) -> Option<(u8, usize)> {
    let b = &packet.buffer[..packet.total_len()];
    let mut next = packet.next_header();
    let mut at = HEADER_LEN;
    for _ in 0..MAX_EXT_HEADERS {
        let len = match next {
            EXT_HOP_BY_HOP | EXT_ROUTING | EXT_DEST_OPTS => (usize::from(*b.get(at + 1)?) + 1) * 8,
            EXT_FRAGMENT => {
                let off = be16(b.get(at + 2..at + 4)?) >> 3;
                if off != 0 {
                    return None;
                }
                8
            }
            EXT_AUTH => (usize::from(*b.get(at + 1)?) + 2) * 4,
            upper => return Some((upper, at)),
        };
        next = *b.get(at)?;
        at += len;
        if at > b.len() {
            return None;
        }
    }
    None
}

/// The running sum of an upper-layer pseudo-header over `addresses` (source then destination, 32 bytes),
/// `protocol` and `l4_len`.
#[inline]
fn addresses_pseudo_sum(addresses: &[u8], protocol: u8, l4_len: usize) -> u32 {
    let len = l4_len as u32;
    checksum_add(0, addresses) + (len >> 16) + (len & 0xffff) + u32::from(protocol)
}

/// The running sum of the pseudo-header of `src` -> `dst` for `protocol` and an upper-layer length of
/// `l4_len` bytes (fold it in with `checksum_finish`).
#[inline]
pub fn pseudo_header_sum(src: Ipv6Addr, dst: Ipv6Addr, protocol: u8, l4_len: usize) -> u32 {
    let mut a = [0u8; 32];
    a[..16].copy_from_slice(&src.octets());
    a[16..].copy_from_slice(&dst.octets());
    addresses_pseudo_sum(&a, protocol, l4_len)
}

/// True for an address that may be an inner source or destination across the overlay: not unspecified,
/// loopback, multicast, link-local (fe80::/10) or IPv4-mapped.
#[inline]
pub fn is_overlay_unicast(a: Ipv6Addr) -> bool {
    let s = a.segments();
    !(a.is_unspecified()
        || a.is_loopback()
        || a.is_multicast()
        || s[0] & 0xffc0 == 0xfe80
        || a.to_ipv4_mapped().is_some())
}

fn addr(b: &[u8]) -> Ipv6Addr {
    let mut o = [0u8; 16];
    o.copy_from_slice(b);
    Ipv6Addr::from(o)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::wire::ipv4::checksum_finish;
    use crate::wire::{csum::sum_words, udp};

    pub const A: Ipv6Addr = Ipv6Addr::new(0xfc00, 0, 0, 2, 0, 0, 0, 9);
    pub const B: Ipv6Addr = Ipv6Addr::new(0xfc00, 0, 0, 1, 0, 0, 0, 7);

    /// A valid IPv6/UDP packet from `src` to `dst` with `payload` and a full UDP checksum.
    pub fn udp6_packet(
        src: Ipv6Addr,
        dst: Ipv6Addr,
        sport: u16,
        dport: u16,
        payload: &[u8],
    ) -> Vec<u8> {
        let ip = Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: PROTO_UDP,
            payload_len: udp::HEADER_LEN + payload.len(),
            hop_limit: 64,
            traffic_class: 0,
            flow_label: 0x12345,
        };
        let mut p = vec![0u8; ip.total_len()];
        ip.emit(&mut Packet::new_unchecked(&mut p[..]));
        let mut u = udp::Packet::new_unchecked(&mut p[HEADER_LEN..]);
        udp::Repr {
            src_port: sport,
            dst_port: dport,
        }
        .emit(&mut u, payload.len());
        u.payload_mut().copy_from_slice(payload);
        let sum = pseudo_header_sum(src, dst, PROTO_UDP, ip.payload_len) + sum_words(&p[40..]);
        let c = match checksum_finish(sum) {
            0 => 0xffff,
            c => c,
        };
        p[46..48].copy_from_slice(&c.to_be_bytes());
        p
    }

    #[test]
    fn view_reads_the_fields_of_a_byte_array() {
        let p = udp6_packet(A, B, 1000, 2000, b"hello");
        assert_eq!(
            &p[..8],
            &[0x60, 0x01, 0x23, 0x45, 0, 13, 17, 64],
            "version 6, flow label 0x12345, payload 13 bytes, UDP, hop limit 64"
        );
        assert_eq!(&p[8..10], &[0xfc, 0x00]);
        let v = Packet::new_checked(&p[..]).unwrap();
        assert_eq!(
            (v.version(), v.traffic_class(), v.flow_label()),
            (6, 0, 0x12345)
        );
        assert_eq!((v.payload_len(), v.total_len()), (13, 53));
        assert_eq!(
            (v.next_header(), v.hop_limit(), v.upper()),
            (17, 64, Upper::Udp)
        );
        assert_eq!((v.src_addr(), v.dst_addr()), (A, B));
        assert_eq!(v.payload().len(), 13);
        let i = parse(&p).unwrap();
        assert_eq!((i.src, i.dst, i.next_header, i.total_len), (A, B, 17, 53));
        // The UDP checksum verifies over the pseudo-header (RFC 8200 section 8.1).
        assert_eq!(
            checksum_finish(v.pseudo_header_sum(PROTO_UDP, 13) + sum_words(v.payload())),
            0
        );
        let mut tc = p.clone();
        Packet::new_unchecked(&mut tc[..]).set_version_tc_flow(0xb8, 0xfffff);
        assert_eq!(&tc[..4], &[0x6b, 0x8f, 0xff, 0xff]);
    }

    #[test]
    fn truncated_or_inconsistent_input_is_an_error_never_a_panic() {
        let p = udp6_packet(A, B, 1000, 2000, b"hello");
        for n in 0..p.len() {
            assert_eq!(Packet::new_checked(&p[..n]).err(), Some(Error), "{n}");
        }
        let mut v4 = p.clone();
        v4[0] = 0x40;
        assert!(parse(&v4).is_none());
        let mut long = p.clone();
        long[5] = 14;
        assert!(parse(&long).is_none(), "payload length beyond the buffer");
        let mut padded = p.clone();
        padded.extend_from_slice(&[0; 7]);
        assert_eq!(parse(&padded).unwrap().total_len, p.len());
        let mut x = 0x9e37_79b9u32;
        for _ in 0..2000 {
            let mut b = [0u8; 80];
            for v in b.iter_mut() {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *v = x as u8;
            }
            b[0] = 0x60 | (b[0] & 0x0f);
            b[4] = 0;
            b[5] %= 41;
            if let Ok(v) = Packet::new_checked(&b[..]) {
                let _ = (v.info(), v.header(), v.payload(), upper_layer(&v));
            }
        }
    }

    #[test]
    fn the_upper_layer_is_found_behind_extension_headers() {
        let mut p = udp6_packet(A, B, 1, 2, b"0123456789abcdef");
        let v = Packet::new_checked(&p[..]).unwrap();
        assert_eq!(upper_layer(&v), Some((PROTO_UDP, 40)));
        // Turn the UDP header into a hop-by-hop header (8 bytes) followed by a fragment header.
        p[6] = EXT_HOP_BY_HOP;
        p[40] = EXT_FRAGMENT;
        p[41] = 0;
        p[48] = PROTO_ICMPV6;
        p[50..52].copy_from_slice(&[0, 1]); // offset 0, more fragments
        let v = Packet::new_checked(&p[..]).unwrap();
        assert_eq!(v.upper(), Upper::Opaque(EXT_HOP_BY_HOP));
        assert_eq!(upper_layer(&v), Some((PROTO_ICMPV6, 56)));
        p[50..52].copy_from_slice(&[0, 8]); // offset 1: a later fragment
        assert_eq!(upper_layer(&Packet::new_checked(&p[..]).unwrap()), None);
        p[41] = 9; // a hop-by-hop header of 80 bytes: beyond the packet
        assert_eq!(upper_layer(&Packet::new_checked(&p[..]).unwrap()), None);
    }

    #[test]
    fn overlay_unicast_excludes_the_scoped_addresses() {
        assert!(is_overlay_unicast(A));
        assert!(is_overlay_unicast("2001:db8::1".parse().unwrap()));
        for bad in [
            "::",
            "::1",
            "ff02::1",
            "fe80::1",
            "febf::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_overlay_unicast(bad.parse().unwrap()), "{bad}");
        }
        assert!(is_overlay_unicast("fec0::1".parse().unwrap()));
    }
}
