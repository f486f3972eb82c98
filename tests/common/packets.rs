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
