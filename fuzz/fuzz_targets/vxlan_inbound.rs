//! Fuzzes the VXLAN inbound path: decap, sender and inner checks, checksum completion, segmentation.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use weft::wire::ethernet::MacAddr;
use weft::wire::inbound::Encap;
use weft::wire::vxlan::{VxlanTemplate, VXLAN_ENCAP};

const OURS: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);

fuzz_target!(|data: &[u8]| {
    let encap = Encap::Vxlan { vni: 1, mac: OURS };
    match data.split_first() {
        // Odd first byte: the rest is the inner frame behind a valid header, to reach the inner checks.
        Some((b, rest)) if b & 1 == 1 => {
            let mut p = vec![0u8; VXLAN_ENCAP];
            VxlanTemplate::new(1, OURS, MacAddr([2, 0, 0, 0, 0, 2])).write(&mut p, 0);
            p.extend_from_slice(rest);
            common::run(&p, encap);
        }
        _ => common::run(data, encap),
    }
});
