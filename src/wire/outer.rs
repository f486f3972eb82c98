//! Outer Ethernet/IPv4/UDP and Ethernet/IPv6/UDP headers of underlay frames, for the AF_XDP path where weft
//! builds and parses whole frames itself instead of handing UDP payloads to the kernel.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::csum::sum_words;
use super::ethernet::{self, Frame, MacAddr};
use super::ipv4::checksum_finish;
use super::ipv6::{self, Upper};
use super::{ipv4, udp, DropReason};

pub const ETH_HEADER: usize = ethernet::HEADER_LEN;
pub const IP_HEADER: usize = ipv4::HEADER_LEN;
pub const IP6_HEADER: usize = ipv6::HEADER_LEN;
pub const UDP_HEADER: usize = udp::HEADER_LEN;
/// Bytes in front of the UDP payload of a frame weft builds.
pub const OUTER_LEN: usize = ETH_HEADER + IP_HEADER + UDP_HEADER;
/// Bytes in front of the UDP payload of a frame weft builds over an IPv6 underlay.
pub const OUTER_LEN6: usize = ETH_HEADER + IP6_HEADER + UDP_HEADER;
/// TTL of outer packets (the kernel's default).
const TTL: u8 = 64;

/// Addresses of one underlay path: our interface and the next hop towards a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OuterPath {
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    pub dst_port: u16,
}

/// The outer UDP source port for an inner flow: spread over 49152..65535 as kernel VXLAN spreads them,
/// the same for every packet of one flow.
#[inline]
pub fn source_port(flow: u32) -> u16 {
    49152 | (flow as u16 & 0x3fff)
}

impl OuterPath {
    /// Writes the outer headers into `hdr` (exactly OUTER_LEN bytes) for a UDP payload of `payload_len`
    /// bytes. The UDP checksum is left zero, as Linux's VXLAN sends it by default (RFC 7348 allows it for
    /// IPv4); the inner packet carries its own checksums.
    #[inline]
    pub fn write(&self, hdr: &mut [u8], payload_len: usize, src_port: u16, ip_id: u16) {
        let mut frame = Frame::new_unchecked(&mut hdr[..OUTER_LEN]);
        ethernet::Repr {
            src_addr: self.src_mac,
            dst_addr: self.dst_mac,
            ethertype: ethernet::ETHERTYPE_IPV4,
        }
        .emit(&mut frame);
        let (ip, udp_hdr) = frame.payload_mut().split_at_mut(IP_HEADER);
        ipv4::Repr {
            src_addr: self.src_ip,
            dst_addr: self.dst_ip,
            protocol: ipv4::PROTO_UDP,
            payload_len: UDP_HEADER + payload_len,
            ttl: TTL,
            ident: ip_id,
            dont_frag: true, // as the kernel's VXLAN
            dscp_ecn: 0,
        }
        .emit(&mut ipv4::Packet::new_unchecked(ip));
        udp::Repr {
            src_port,
            dst_port: self.dst_port,
        }
        .emit(&mut udp::Packet::new_unchecked(udp_hdr), payload_len);
    }
}

/// Addresses of one IPv6 underlay path: our interface and the next hop towards a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OuterPath6 {
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
    pub src_ip: Ipv6Addr,
    pub dst_ip: Ipv6Addr,
    pub dst_port: u16,
}

impl OuterPath6 {
    /// Writes the outer headers into `hdr` (exactly OUTER_LEN6 bytes) for the UDP payload `payload`, which
    /// the frame carries after them. Over IPv6 the UDP checksum is mandatory (RFC 8200 section 8.1), so
    /// it is computed here over `payload`. `flow_label` is the IPv6 flow label (the kernel derives it
    /// from the flow hash, as `source_port` the port).
    #[inline]
    pub fn write(&self, hdr: &mut [u8], payload: &[u8], src_port: u16, flow_label: u32) {
        let mut frame = Frame::new_unchecked(&mut hdr[..OUTER_LEN6]);
        ethernet::Repr {
            src_addr: self.src_mac,
            dst_addr: self.dst_mac,
            ethertype: ethernet::ETHERTYPE_IPV6,
        }
        .emit(&mut frame);
        let (ip, udp_hdr) = frame.payload_mut().split_at_mut(IP6_HEADER);
        let udp_len = UDP_HEADER + payload.len();
        ipv6::Repr {
            src_addr: self.src_ip,
            dst_addr: self.dst_ip,
            next_header: ipv4::PROTO_UDP,
            payload_len: udp_len,
            hop_limit: TTL,
            traffic_class: 0,
            flow_label,
        }
        .emit(&mut ipv6::Packet::new_unchecked(ip));
        let mut u = udp::Packet::new_unchecked(udp_hdr);
        udp::Repr {
            src_port,
            dst_port: self.dst_port,
        }
        .emit(&mut u, payload.len());
        // The header's 8 bytes are even, so the payload's words line up after them.
        let sum = ipv6::pseudo_header_sum(self.src_ip, self.dst_ip, ipv4::PROTO_UDP, udp_len)
            + sum_words(&hdr[ETH_HEADER + IP6_HEADER..OUTER_LEN6])
            + sum_words(payload);
        let c = match checksum_finish(sum) {
            0 => 0xffff,
            c => c,
        };
        udp::Packet::new_unchecked(&mut hdr[ETH_HEADER + IP6_HEADER..OUTER_LEN6]).set_checksum(c);
    }
}

/// A received underlay frame's UDP datagram: the sender's address and where the payload lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpFrame {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub dst_port: u16,
    /// Payload bounds within the frame.
    pub start: usize,
    pub end: usize,
}

/// Parses an Ethernet frame carrying an unfragmented IPv4 UDP datagram; None for anything else or when
/// the lengths do not add up. Ethernet padding after the IP packet is ignored. The outer checksums are
/// not verified: the link's CRC covers the frame, and over virtual links the kernel leaves them partial.
pub fn parse_udp_frame(f: &[u8]) -> Option<UdpFrame> {
    if f.len() < OUTER_LEN {
        return None;
    }
    let eth = Frame::new_checked(f).ok()?;
    if eth.ethertype() != ethernet::ETHERTYPE_IPV4 {
        return None;
    }
    let ip = ipv4::Packet::new_checked(eth.payload()).ok()?;
    if ip.protocol() != ipv4::PROTO_UDP || ip.is_fragment() {
        return None;
    }
    let udp = udp::Packet::new_checked(ip.payload()).ok()?;
    let start = ETH_HEADER + ip.header_len() + UDP_HEADER;
    Some(UdpFrame {
        src: ip.src_addr(),
        dst: ip.dst_addr(),
        dst_port: udp.dst_port(),
        start,
        end: start + udp.payload().len(),
    })
}

/// A received underlay frame's UDP datagram, over either family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnderlayFrame {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub dst_port: u16,
    /// Payload bounds within the frame.
    pub start: usize,
    pub end: usize,
}

/// Parses an Ethernet frame carrying a UDP datagram over IPv4 (as `parse_udp_frame`) or IPv6. Over IPv6
/// the UDP header must directly follow the fixed header, its length must be the IPv6 payload length, and
/// its checksum must verify: a zero or wrong checksum is `BadChecksum` (a checksum the sender left
/// partial, the folded pseudo-header sum as over virtual links, is taken as the IPv4 path takes any).
/// Anything else that is not such a datagram is `Truncated`.
pub fn parse_underlay_frame(f: &[u8]) -> Result<UnderlayFrame, DropReason> {
    let eth = Frame::new_checked(f).map_err(|_| DropReason::Truncated)?;
    if eth.ethertype() != ethernet::ETHERTYPE_IPV6 {
        let u = parse_udp_frame(f).ok_or(DropReason::Truncated)?;
        return Ok(UnderlayFrame {
            src: u.src.into(),
            dst: u.dst.into(),
            dst_port: u.dst_port,
            start: u.start,
            end: u.end,
        });
    }
    let ip = ipv6::Packet::new_checked(eth.payload()).map_err(|_| DropReason::Truncated)?;
    if ip.upper() != Upper::Udp {
        return Err(DropReason::Truncated);
    }
    let dgram = ip.payload();
    let udp = udp::Packet::new_checked(dgram).map_err(|_| DropReason::Truncated)?;
    if udp.len() != dgram.len() {
        return Err(DropReason::Truncated);
    }
    let pseudo = ip.pseudo_header_sum(ipv4::PROTO_UDP, dgram.len());
    let field = udp.checksum();
    if field == 0
        || (checksum_finish(pseudo + sum_words(dgram)) != 0 && field != !checksum_finish(pseudo))
    {
        return Err(DropReason::BadChecksum);
    }
    let start = ETH_HEADER + IP6_HEADER + UDP_HEADER;
    Ok(UnderlayFrame {
        src: ip.src_addr().into(),
        dst: ip.dst_addr().into(),
        dst_port: udp.dst_port(),
        start,
        end: start + udp.payload().len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    fn path6() -> OuterPath6 {
        OuterPath6 {
            src_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            dst_mac: MacAddr([2, 0, 0, 0, 0, 2]),
            src_ip: "2001:db8::1".parse().unwrap(),
            dst_ip: "2001:db8::2".parse().unwrap(),
            dst_port: 8472,
        }
    }

    fn frame6(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; OUTER_LEN6];
        path6().write(&mut f, payload, 50000, 0x12345);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn ipv6_headers_parse_with_etherparse_and_the_checksum_is_theirs() {
        for payload in [&b"vxlan header and inner frame"[..], b"odd", b""] {
            let f = frame6(payload);
            let p = SlicedPacket::from_ethernet(&f).unwrap();
            let Some(NetSlice::Ipv6(ip)) = &p.net else {
                panic!("not IPv6")
            };
            let ip6 = ip.header().to_header();
            assert_eq!(ip6.source_addr(), path6().src_ip);
            assert_eq!(ip6.destination_addr(), path6().dst_ip);
            assert_eq!((ip6.flow_label.value(), ip6.hop_limit), (0x12345, 64));
            let Some(TransportSlice::Udp(udp)) = p.transport else {
                panic!("not UDP")
            };
            assert_eq!((udp.source_port(), udp.destination_port()), (50000, 8472));
            assert_eq!(udp.payload(), payload);
            let want = udp.to_header().calc_checksum_ipv6(&ip6, payload).unwrap();
            assert_eq!(udp.checksum(), want, "payload {payload:?}");
            let u = parse_underlay_frame(&f).unwrap();
            assert_eq!(
                (u.src, u.dst, u.dst_port),
                (path6().src_ip.into(), path6().dst_ip.into(), 8472)
            );
            assert_eq!(&f[u.start..u.end], payload);
        }
    }

    #[test]
    fn ipv6_frames_with_bad_checksums_or_lengths_are_rejected_by_reason() {
        let f = frame6(b"abcd");
        let mut padded = f.clone();
        padded.resize(80, 0);
        assert_eq!(
            &padded[parse_underlay_frame(&padded).unwrap().start..][..4],
            b"abcd"
        );
        let mut bad = f.clone();
        bad[OUTER_LEN6] ^= 1;
        assert_eq!(parse_underlay_frame(&bad), Err(DropReason::BadChecksum));
        let mut zero = f.clone();
        zero[ETH_HEADER + IP6_HEADER + 6..][..2].copy_from_slice(&[0, 0]);
        assert_eq!(parse_underlay_frame(&zero), Err(DropReason::BadChecksum));
        // What a sender leaves on a virtual link: the pseudo-header sum, taken.
        let mut partial = f.clone();
        let ip = ipv6::Packet::new_checked(&f[ETH_HEADER..]).unwrap();
        let folded = !checksum_finish(ip.pseudo_header_sum(17, 12));
        partial[ETH_HEADER + IP6_HEADER + 6..][..2].copy_from_slice(&folded.to_be_bytes());
        assert!(parse_underlay_frame(&partial).is_ok());
        let truncated = Err(DropReason::Truncated);
        assert_eq!(parse_underlay_frame(&f[..f.len() - 1]), truncated);
        let mut short_udp = f.clone();
        short_udp[ETH_HEADER + IP6_HEADER + 5] -= 1;
        assert_eq!(parse_underlay_frame(&short_udp), truncated);
        let mut ext = f.clone();
        ext[ETH_HEADER + 6] = ipv6::EXT_DEST_OPTS;
        assert_eq!(parse_underlay_frame(&ext), truncated);
        for n in 0..f.len() {
            assert!(parse_underlay_frame(&f[..n]).is_err());
        }
        // IPv4 frames parse as before.
        let mut v4 = vec![0u8; OUTER_LEN];
        path().write(&mut v4, 4, 50000, 1);
        v4.extend_from_slice(b"abcd");
        let u = parse_underlay_frame(&v4).unwrap();
        assert_eq!(
            (u.src, &v4[u.start..u.end]),
            (path().src_ip.into(), &b"abcd"[..])
        );
        assert_eq!(parse_underlay_frame(&v4[..20]), truncated);
    }

    fn path() -> OuterPath {
        OuterPath {
            src_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            dst_mac: MacAddr([2, 0, 0, 0, 0, 2]),
            src_ip: Ipv4Addr::new(10, 250, 0, 1),
            dst_ip: Ipv4Addr::new(10, 250, 0, 2),
            dst_port: 8472,
        }
    }

    #[test]
    fn built_headers_parse_with_etherparse_and_back() {
        let payload = b"vxlan header and inner frame";
        let mut f = vec![0u8; OUTER_LEN];
        path().write(&mut f, payload.len(), 50000, 7);
        f.extend_from_slice(payload);
        let p = SlicedPacket::from_ethernet(&f).unwrap();
        let Some(NetSlice::Ipv4(ip)) = p.net else {
            panic!("not IPv4")
        };
        assert_eq!(ip.header().source_addr(), path().src_ip);
        assert_eq!(ip.header().destination_addr(), path().dst_ip);
        assert!(ip.header().dont_fragment());
        assert_eq!(
            ip.header().header_checksum(),
            ip.header().to_header().calc_header_checksum()
        );
        let Some(TransportSlice::Udp(udp)) = p.transport else {
            panic!("not UDP")
        };
        assert_eq!((udp.source_port(), udp.destination_port()), (50000, 8472));
        assert_eq!(udp.payload(), payload);
        let u = parse_udp_frame(&f).unwrap();
        assert_eq!(
            (u.src, u.dst, u.dst_port),
            (path().src_ip, path().dst_ip, 8472)
        );
        assert_eq!(&f[u.start..u.end], payload);
    }

    #[test]
    fn padding_is_ignored_and_bad_lengths_rejected() {
        let mut f = vec![0u8; OUTER_LEN];
        path().write(&mut f, 4, 50000, 1);
        f.extend_from_slice(b"abcd");
        let mut padded = f.clone();
        padded.resize(60, 0);
        let u = parse_udp_frame(&padded).unwrap();
        assert_eq!(&padded[u.start..u.end], b"abcd");
        assert!(
            parse_udp_frame(&f[..f.len() - 1]).is_none(),
            "IP length beyond the frame"
        );
        let mut frag = f.clone();
        frag[ETH_HEADER + 6] = 0x20;
        assert!(parse_udp_frame(&frag).is_none(), "fragment");
        let mut long_udp = f.clone();
        long_udp[ETH_HEADER + IP_HEADER + 5] = 200;
        assert!(
            parse_udp_frame(&long_udp).is_none(),
            "UDP length beyond the IP packet"
        );
        for n in 0..f.len() {
            let _ = parse_udp_frame(&f[..n]);
        }
    }

    #[test]
    fn source_ports_stay_in_the_dynamic_range() {
        for flow in [0, 1, 0x3fff, 0x4000, u32::MAX] {
            assert!(source_port(flow) >= 49152);
        }
        assert_eq!(source_port(5), source_port(5));
    }
}
