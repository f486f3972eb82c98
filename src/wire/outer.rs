//! Outer Ethernet/IPv4/UDP headers of underlay frames, for the AF_XDP path where weft builds and parses
//! whole frames itself instead of handing UDP payloads to the kernel.

use std::net::Ipv4Addr;

use super::ethernet::{self, Frame, MacAddr};
use super::{ipv4, udp};

pub const ETH_HEADER: usize = ethernet::HEADER_LEN;
pub const IP_HEADER: usize = ipv4::HEADER_LEN;
pub const UDP_HEADER: usize = udp::HEADER_LEN;
/// Bytes in front of the UDP payload of a frame weft builds.
pub const OUTER_LEN: usize = ETH_HEADER + IP_HEADER + UDP_HEADER;
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

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

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
