//! Hand-built packets for hostile-input tests: inner IPv4/UDP, VXLAN framing, written with weft's own
//! header views (`weft::wire`'s `emit`s), so tests and the data plane share one packet builder.

use std::net::Ipv4Addr;

use weft::wire::ethernet::MacAddr;
use weft::wire::vxlan::VxlanTemplate;
use weft::wire::{ipv4, udp};

/// An IPv4/UDP packet (UDP checksum 0, allowed over IPv4).
pub fn ipv4_udp(src: Ipv4Addr, dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let ip = ipv4::Repr {
        src_addr: src,
        dst_addr: dst,
        protocol: ipv4::PROTO_UDP,
        payload_len: udp::HEADER_LEN + payload.len(),
        ttl: 64,
        ident: 1,
        dont_frag: true,
        dscp_ecn: 0,
    };
    let mut p = vec![0u8; ip.total_len()];
    ip.emit(&mut ipv4::Packet::new_unchecked(&mut p[..]));
    let mut u = udp::Packet::new_unchecked(&mut p[ipv4::HEADER_LEN..]);
    udp::Repr {
        src_port: 40000,
        dst_port: dport,
    }
    .emit(&mut u, payload.len());
    u.payload_mut().copy_from_slice(payload);
    p
}

/// A VXLAN payload (header + inner Ethernet) around `inner`.
pub fn vxlan(vni: u32, dst_mac: [u8; 6], inner: &[u8]) -> Vec<u8> {
    let src_mac = MacAddr([0x02, 0, 0, 0, 0, 0x99]);
    let mut p = VxlanTemplate::new(vni, MacAddr(dst_mac), src_mac)
        .0
        .to_vec();
    p.extend_from_slice(inner);
    p
}

/// Parses "aa:bb:cc:dd:ee:ff".
pub fn mac(s: &str) -> [u8; 6] {
    s.parse::<MacAddr>().expect("hex").0
}

/// An IPv6/UDP packet with its (mandatory) UDP checksum, built by hand (RFC 8200 header, RFC 768 over the
/// IPv6 pseudo-header).
pub fn ipv6_udp(
    src: std::net::Ipv6Addr,
    dst: std::net::Ipv6Addr,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let mut p = vec![0u8; 40 + udp_len];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    p[6] = 17;
    p[7] = 64;
    p[8..24].copy_from_slice(&src.octets());
    p[24..40].copy_from_slice(&dst.octets());
    p[40..42].copy_from_slice(&40000u16.to_be_bytes());
    p[42..44].copy_from_slice(&dport.to_be_bytes());
    p[44..46].copy_from_slice(&(udp_len as u16).to_be_bytes());
    p[48..].copy_from_slice(payload);
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(udp_len as u32).to_be_bytes());
    add(&[0, 0, 0, 17]);
    add(&p[40..]);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let c = !(sum as u16);
    p[46..48].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
    p
}

/// A VXLAN payload around an inner IPv6 packet (inner Ethernet type 0x86DD).
pub fn vxlan6(vni: u32, dst_mac: [u8; 6], inner: &[u8]) -> Vec<u8> {
    let mut p = vxlan(vni, dst_mac, inner);
    p[8 + 12..8 + 14].copy_from_slice(&[0x86, 0xdd]);
    p
}
