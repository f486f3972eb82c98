//! Outer Ethernet/IPv4/UDP headers of underlay frames, for the AF_XDP path where weft builds and parses
//! whole frames itself instead of handing UDP payloads to the kernel.

use std::net::Ipv4Addr;

use super::ethernet::MacAddr;
use super::ipv4::checksum;

pub const ETH_HEADER: usize = 14;
pub const IP_HEADER: usize = 20;
pub const UDP_HEADER: usize = 8;
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
        let hdr = &mut hdr[..OUTER_LEN];
        hdr[0..6].copy_from_slice(&self.dst_mac.0);
        hdr[6..12].copy_from_slice(&self.src_mac.0);
        hdr[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip = &mut hdr[ETH_HEADER..ETH_HEADER + IP_HEADER];
        let total = (IP_HEADER + UDP_HEADER + payload_len) as u16;
        ip[0] = 0x45;
        ip[1] = 0;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip[4..6].copy_from_slice(&ip_id.to_be_bytes());
        ip[6..8].copy_from_slice(&[0x40, 0]); // don't fragment, as the kernel's VXLAN
        ip[8] = TTL;
        ip[9] = 17;
        ip[10..12].fill(0);
        ip[12..16].copy_from_slice(&self.src_ip.octets());
        ip[16..20].copy_from_slice(&self.dst_ip.octets());
        let c = checksum(ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let udp = &mut hdr[ETH_HEADER + IP_HEADER..];
        udp[0..2].copy_from_slice(&src_port.to_be_bytes());
        udp[2..4].copy_from_slice(&self.dst_port.to_be_bytes());
        udp[4..6].copy_from_slice(&((UDP_HEADER + payload_len) as u16).to_be_bytes());
        udp[6..8].fill(0);
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
    if f.len() < OUTER_LEN || f[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &f[ETH_HEADER..];
    if ip[0] >> 4 != 4 || ip[9] != 17 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    if ihl < IP_HEADER || frag & 0x3fff != 0 || total < ihl + UDP_HEADER || total > ip.len() {
        return None;
    }
    let udp = &ip[ihl..];
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if udp_len < UDP_HEADER || udp_len > total - ihl {
        return None;
    }
    let start = ETH_HEADER + ihl + UDP_HEADER;
    Some(UdpFrame {
        src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        dst_port: u16::from_be_bytes([udp[2], udp[3]]),
        start,
        end: start + udp_len - UDP_HEADER,
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
