//! Fuzzes flannel's udp inbound path: raw IPv4 or IPv6 packets as UDP payloads through every inbound check,
//! from the peer's IPv4 address or (odd first byte) from the IPv6-underlay peer; with the second bit, the
//! rest behind a valid IPv6 header from a peer's subnet.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use weft::wire::inbound::Encap;

fuzz_target!(|data: &[u8]| {
    let Some((&b, rest)) = data.split_first() else {
        return common::run(data, Encap::Udp);
    };
    let six;
    let payload = if b & 2 == 2 {
        six = common::ipv6_packet(b >> 2, rest);
        &six[..]
    } else {
        rest
    };
    if b & 1 == 1 {
        common::run_from(common::PEER6.into(), payload, Encap::Udp)
    } else if b & 2 == 2 {
        common::run(payload, Encap::Udp)
    } else {
        common::run(data, Encap::Udp)
    }
});
