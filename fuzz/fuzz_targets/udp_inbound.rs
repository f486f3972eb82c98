//! Fuzzes flannel's udp inbound path: raw IP packets as UDP payloads through every inbound check.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use weft::wire::inbound::Encap;

fuzz_target!(|data: &[u8]| {
    common::run(data, Encap::Udp);
});
