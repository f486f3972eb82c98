//! Fuzzes flannel's udp inbound path: raw IPv4 or IPv6 packets as UDP payloads through every inbound check,
//! from the peer's IPv4 address or (odd first byte) from the IPv6-underlay peer.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use weft::wire::inbound::Encap;

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((b, rest)) if b & 1 == 1 => common::run_from(common::PEER6.into(), rest, Encap::Udp),
        _ => common::run(data, Encap::Udp),
    }
});
