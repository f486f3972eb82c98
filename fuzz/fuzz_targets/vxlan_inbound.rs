//! Fuzzes the VXLAN inbound path: decap, sender and inner checks, checksum completion, segmentation.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use weft::wire::ethernet::MacAddr;
use weft::wire::inbound::Encap;
use weft::wire::vxlan::{InnerFamily, VxlanTemplate, VXLAN_ENCAP};

const OURS: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);

fuzz_target!(|data: &[u8]| {
    let encap = Encap::Vxlan {
        vni: 1,
        mac: OURS,
        mac6: Some(common::OURS6),
    };
    match data.split_first() {
        // Odd first byte: the rest is the inner frame behind a valid header, to reach the inner checks;
        // with the second bit, an IPv6 frame to our IPv6 VTEP MAC; with the third too, the rest behind
        // a valid IPv6 header from a peer's subnet.
        Some((b, rest)) if b & 1 == 1 => {
            let (dst, family) = if b & 2 == 2 {
                (common::OURS6, InnerFamily::V6)
            } else {
                (OURS, InnerFamily::V4)
            };
            let mut p = vec![0u8; VXLAN_ENCAP];
            VxlanTemplate::for_inner(1, dst, MacAddr([2, 0, 0, 0, 0, 2]), family).write(&mut p, 0);
            if b & 6 == 6 {
                p.extend_from_slice(&common::ipv6_packet(b >> 3, rest));
            } else {
                p.extend_from_slice(rest);
            }
            common::run(&p, encap);
        }
        _ => common::run(data, encap),
    }
});
