//! Fuzzes the outbound decision: any packet read from the tun (IPv4 or IPv6) is sent to its peer, answered
//! with ICMP or ICMPv6 unreachable, or dropped with a reason, without panicking.
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
use weft::wire::icmpv6::{icmpv6_unreachable, Unreachable6};
use weft::wire::inbound::Encap;
use weft::wire::ipv4::{icmp_unreachable, parse, Unreachable};
use weft::wire::ipv6;
use weft::wire::outbound::{Action, Outbound};
use weft::wire::peers::PeerTable;
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
            // Eighth bit: a host without IPv6.
            mac6: (b & 0x80 == 0).then_some(common::OURS6),
        }
    } else {
        Encap::Udp
    };
    match rest.split_first() {
        // Third bit set: the rest behind a valid IPv6 header from fc00:0:0:1::7 to fc00:0:0:<x & 7>::<b>
        // with next header `x >> 3` (TCP, UDP, ICMPv6 or anything).
        Some((&x, rest)) if b & 4 == 4 => {
            let len = rest.len().min(usize::from(u16::MAX));
            let mut p = vec![0x60, 0, 0, 0, 0, 0, x >> 3, 64];
            p[4..6].copy_from_slice(&(len as u16).to_be_bytes());
            p.extend_from_slice(&[0xfc, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 7]);
            p.extend_from_slice(&[0xfc, 0, 0, 0, 0, 0, 0, x & 7, 0, 0, 0, 0, 0, 0, 0, b]);
            p.extend_from_slice(&rest[..len]);
            route(&p, encap);
        }
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
/// shared VXLAN peer (10.5.2.0/24) plus one speaking flannel's udp backend (10.5.3.0/24), and the shared
/// IPv6 subnets (fc00:0:0:2::/64 VXLAN, fc00:0:0:3::/64 udp).
fn route(packet: &[u8], encap: Encap) {
    let udp_peer = Peer {
        v6: None,
        subnet: Some("10.5.3.0/24".parse().expect("subnet")),
        public_ip: Ipv4Addr::new(192, 0, 2, 3),
        backend: PeerBackend::Udp,
    };
    let v4 = RouteSnapshot::new(common::routes().peers().iter().copied().chain([udp_peer]));
    let routes = common::dual_routes(v4);
    let ip = parse(packet);
    let ip6 = ipv6::parse(packet);
    let out = Outbound { encap };
    match out.route(packet, &routes) {
        Action::Send(e) if ip6.is_some() => {
            let ip6 = ip6.expect("checked");
            let peer = routes
                .peer_for6(ip6.dst)
                .expect("only routed packets are sent");
            assert_eq!(e.dst, peer.public_ip, "sent to the destination's peer");
            assert!(ipv6::is_overlay_unicast(ip6.src) && ipv6::is_overlay_unicast(ip6.dst));
            assert_eq!(e.flow, flow_hash(packet));
            assert_eq!(e.vxlan.is_some(), matches!(encap, Encap::Vxlan { .. }));
        }
        Action::Send(e) => {
            let ip = ip.expect("only valid IPv4 is sent");
            let peer = routes
                .v4
                .lookup(ip.dst)
                .expect("only routed packets are sent");
            assert_eq!(e.dst, peer.public_ip, "sent to the destination's peer");
            assert_eq!(e.flow, flow_hash(packet));
            assert_eq!(e.vxlan.is_some(), matches!(encap, Encap::Vxlan { .. }));
        }
        Action::Unreachable6 { from, reason } => {
            let ip6 = ip6.expect("only valid IPv6 is answered with ICMPv6");
            assert!(
                routes.peer_for6(ip6.dst).is_none(),
                "answered a routed packet"
            );
            assert_eq!((from, reason), (ip6.dst, DropReason::NoRoute6));
            let mut reply = [0u8; 1500];
            if let Some(n) = icmpv6_unreachable(packet, from, Unreachable6::NoRoute, &mut reply) {
                assert!(n <= ipv6::MIN_MTU, "reply within the IPv6 minimum MTU");
                let r = ipv6::parse(&reply[..n]).expect("the reply is valid IPv6");
                assert_eq!((r.src, r.dst, r.total_len), (from, ip6.src, n));
            }
        }
        Action::Unreachable { from, code, .. } => {
            let ip = ip.expect("only valid IPv4 is answered");
            assert!(
                routes.v4.lookup(ip.dst).is_none(),
                "answered a routed packet"
            );
            assert_eq!((from, code), (ip.dst, Unreachable::Net));
            let mut reply = [0u8; 1024];
            if let Some(n) = icmp_unreachable(packet, from, code, &mut reply) {
                let r = parse(&reply[..n]).expect("the reply is valid IPv4");
                assert_eq!((r.src, r.dst), (from, ip.src));
            }
        }
        Action::Drop(DropReason::NotIpv4) => {
            assert!(ip6.is_some() || ip.is_none(), "dropped valid IPv4 as IPv6")
        }
        Action::Drop(DropReason::NotIp | DropReason::Truncated) => {
            assert!(
                ip.is_none() && ip6.is_none(),
                "dropped a valid packet as unparseable"
            )
        }
        Action::Drop(DropReason::Ipv6Scope) => {
            let ip6 = ip6.expect("valid IPv6");
            assert!(!ipv6::is_overlay_unicast(ip6.src) || !ipv6::is_overlay_unicast(ip6.dst));
        }
        Action::Drop(DropReason::UnsupportedPeer) => match ip6 {
            Some(ip6) => assert!(routes.peer_for6(ip6.dst).is_some()),
            None => assert!(routes.v4.lookup(ip.expect("valid IP").dst).is_some()),
        },
        Action::Drop(reason) => panic!("unexpected drop reason {reason:?}"),
    }
}
