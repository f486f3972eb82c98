//! Fuzzes the AF_XDP receive path: a whole underlay frame parsed (Ethernet, IPv4 or IPv6, UDP), then the
//! inbound pipeline on its payload.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use weft::wire::ethernet::MacAddr;
use weft::wire::inbound::Encap;
use weft::wire::outer::{
    parse_udp_frame, parse_underlay_frame, OuterPath, OuterPath6, OUTER_LEN, OUTER_LEN6,
};
use weft::wire::vxlan::{InnerFamily, VxlanTemplate, VXLAN_ENCAP};

fuzz_target!(|data: &[u8]| {
    let encap = Encap::Vxlan {
        vni: 1,
        mac: MacAddr([2, 0, 0, 0, 0, 1]),
        mac6: Some(common::OURS6),
    };
    let frame = match data.split_first() {
        // First two bits: the rest behind valid IPv6 outer headers (checksum included) from the IPv6 peer;
        // with the third, behind a VXLAN header to our IPv6 VTEP and a valid inner IPv6 header too.
        Some((&b, rest)) if b & 3 == 3 => {
            let rest = &rest[..rest.len().min(1500)];
            let inner;
            let rest = if b & 4 == 4 {
                let mut p = vec![0u8; VXLAN_ENCAP];
                let peer = MacAddr([2, 0, 0, 0, 6, 3]);
                VxlanTemplate::for_inner(1, common::OURS6, peer, InnerFamily::V6).write(&mut p, 0);
                p.extend_from_slice(&common::ipv6_packet(b >> 3, rest));
                inner = p;
                &inner[..]
            } else {
                rest
            };
            let mut f = vec![0u8; OUTER_LEN6];
            OuterPath6 {
                src_mac: MacAddr([2, 0, 0, 0, 0, 2]),
                dst_mac: MacAddr([2, 0, 0, 0, 0, 1]),
                src_ip: common::PEER6,
                dst_ip: "2001:db8::1".parse().expect("address"),
                dst_port: 8472,
            }
            .write(&mut f, rest, 50000, 7);
            f.extend_from_slice(rest);
            f
        }
        // Odd first byte: the rest behind valid outer headers from the peer, to reach the inner checks.
        Some((b, rest)) if b & 1 == 1 => {
            let mut f = vec![0u8; OUTER_LEN];
            OuterPath {
                src_mac: MacAddr([2, 0, 0, 0, 0, 2]),
                dst_mac: MacAddr([2, 0, 0, 0, 0, 1]),
                src_ip: common::PEER,
                dst_ip: std::net::Ipv4Addr::new(192, 0, 2, 1),
                dst_port: 8472,
            }
            .write(&mut f, rest.len().min(1500), 50000, 1);
            f.extend_from_slice(rest);
            f
        }
        _ => data.to_vec(),
    };
    let v4 = parse_udp_frame(&frame);
    match parse_underlay_frame(&frame) {
        Ok(u) => {
            assert!(
                u.start <= u.end && u.end <= frame.len(),
                "payload bounds inside the frame"
            );
            if let Some(v4) = v4 {
                assert_eq!((u.src, u.start, u.end), (v4.src.into(), v4.start, v4.end));
            }
            common::run_from(u.src, &frame[u.start..u.end], encap);
        }
        Err(_) => assert!(v4.is_none(), "the IPv4 parser took what the other refused"),
    }
});
