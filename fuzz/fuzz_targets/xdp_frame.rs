//! Fuzzes the AF_XDP receive path: a whole underlay frame parsed (Ethernet, IPv4, UDP), then the inbound
//! pipeline on its payload.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use weft::wire::ethernet::MacAddr;
use weft::wire::inbound::Encap;
use weft::wire::outer::{parse_udp_frame, OuterPath, OUTER_LEN};

fuzz_target!(|data: &[u8]| {
    let encap = Encap::Vxlan {
        vni: 1,
        mac: MacAddr([2, 0, 0, 0, 0, 1]),
    };
    let frame = match data.split_first() {
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
    if let Some(u) = parse_udp_frame(&frame) {
        assert!(
            u.start <= u.end && u.end <= frame.len(),
            "payload bounds inside the frame"
        );
        common::run_from(u.src, &frame[u.start..u.end], encap);
    }
});
