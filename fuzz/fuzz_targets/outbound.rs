//! Fuzzes the outbound decision: any packet read from the tun is sent to its peer, answered with ICMP
//! unreachable, or dropped with a reason, without panicking.
#![no_main]

// Only the route table is shared with the inbound targets.
#[allow(dead_code)]
#[path = "common.rs"]
mod common;

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use weft::routes::{Peer, PeerBackend, RouteSnapshot};
use weft::wire::ethernet::MacAddr;
use weft::wire::flow::flow_hash;
use weft::wire::inbound::Encap;
use weft::wire::ipv4::{icmp_unreachable, parse, Unreachable};
use weft::wire::outbound::{Action, Outbound};
use weft::wire::DropReason;

fuzz_target!(|data: &[u8]| {
    let Some((&b, rest)) = data.split_first() else {
        route(data, Encap::Udp);
        return;
    };
    let encap = if b & 1 == 1 {
        Encap::Vxlan {
            vni: 1,
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
        }
    } else {
        Encap::Udp
    };
    match rest.split_first() {
        // Second bit set: the rest behind a valid IPv4 header to 10.5.<x & 7>.<b>, to reach the route
        // lookup and the peer checks.
        Some((&x, rest)) if b & 2 == 2 => {
            let total = (20 + rest.len()).min(usize::from(u16::MAX));
            let mut p = vec![
                0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 5, 1, 7, 10, 5,
            ];
            p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            p.extend_from_slice(&[x & 7, b]);
            p.extend_from_slice(&rest[..total - 20]);
            route(&p, encap);
        }
        _ => route(rest, encap),
    }
});

/// Runs the outbound decision on `packet` (as read from the tun) and checks what it decides, with the
/// shared VXLAN peer (10.5.2.0/24) plus one speaking flannel's udp backend (10.5.3.0/24).
fn route(packet: &[u8], encap: Encap) {
    let udp_peer = Peer {
        v6: None,
        subnet: "10.5.3.0/24".parse().expect("subnet"),
        public_ip: Ipv4Addr::new(192, 0, 2, 3),
        backend: PeerBackend::Udp,
    };
    let routes = RouteSnapshot::new(common::routes().peers().iter().copied().chain([udp_peer]));
    let ip = parse(packet);
    let out = Outbound { encap };
    match out.route(packet, &routes) {
        Action::Send(e) => {
            let ip = ip.expect("only valid IPv4 is sent");
            let peer = routes.lookup(ip.dst).expect("only routed packets are sent");
            assert_eq!(e.dst, peer.public_ip, "sent to the destination's peer");
            assert_eq!(e.flow, flow_hash(packet));
            assert_eq!(e.vxlan.is_some(), matches!(encap, Encap::Vxlan { .. }));
        }
        Action::Unreachable { from, code, .. } => {
            let ip = ip.expect("only valid IPv4 is answered");
            assert!(routes.lookup(ip.dst).is_none(), "answered a routed packet");
            assert_eq!((from, code), (ip.dst, Unreachable::Net));
            let mut reply = [0u8; 1024];
            if let Some(n) = icmp_unreachable(packet, from, code, &mut reply) {
                let r = parse(&reply[..n]).expect("the reply is valid IPv4");
                assert_eq!((r.src, r.dst), (from, ip.src));
            }
        }
        Action::Drop(DropReason::NotIpv4 | DropReason::Truncated) => {
            assert!(ip.is_none(), "dropped valid IPv4 as unparseable")
        }
        Action::Drop(DropReason::UnsupportedPeer) => {
            assert!(routes.lookup(ip.expect("valid IPv4").dst).is_some())
        }
        Action::Drop(reason) => panic!("unexpected drop reason {reason:?}"),
    }
}
