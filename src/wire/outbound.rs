//! The outbound decision for one packet read from the tun, pure: parse it once (IPv4 or IPv6), find its
//! peer, and say what to do (encapsulate and send to the peer, answer with ICMP or ICMPv6 unreachable, or
//! drop with a reason).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::flow::{flow_hash_parsed, flow_hash_parsed6};
use super::inbound::Encap;
use super::ipv4::{self, Unreachable};
use super::ipv6;
use super::peers::{PeerEncap, PeerTable};
use super::vxlan::{InnerFamily, VxlanTemplate, VXLAN_ENCAP};
use super::DropReason;

/// What the outbound path needs to know about this host.
#[derive(Debug, Clone, Copy)]
pub struct Outbound {
    /// How this host encapsulates (a peer must use the same).
    pub encap: Encap,
}

/// What to do with one outbound packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Encapsulate the packet and send it to a peer.
    Send(Encapsulation),
    /// Drop the packet (counted under `reason`) and answer its sender with an ICMP destination-unreachable
    /// `code` from `from`, rate-limited by the caller.
    Unreachable {
        reason: DropReason,
        code: Unreachable,
        from: Ipv4Addr,
    },
    /// Drop the IPv6 packet (counted under `reason`) and answer its sender with an ICMPv6
    /// destination-unreachable, code 0 (no route), from `from` (see `icmpv6::icmpv6_unreachable`),
    /// rate-limited by the caller.
    Unreachable6 { reason: DropReason, from: Ipv6Addr },
    /// Drop the packet, counted under this reason.
    Drop(DropReason),
}

/// How to wrap and where to send one outbound packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encapsulation {
    /// The peer's public address (the datagram goes to the network's port there): for inner IPv4 the
    /// peer's IPv4 address, for inner IPv6 the address its IPv6 route names (`PeerRoute6::public_ip`).
    pub dst: IpAddr,
    /// The VXLAN header (with Ethernet) to write in front of the packet; None for flannel's udp backend.
    pub vxlan: Option<VxlanTemplate>,
    /// The inner flow's hash, which keeps a flow on one outer source port.
    pub flow: u32,
}

impl Encapsulation {
    /// Bytes of encapsulation in front of the inner packet.
    #[inline]
    pub fn prefix(&self) -> usize {
        if self.vxlan.is_some() {
            VXLAN_ENCAP
        } else {
            0
        }
    }
}

impl Outbound {
    /// Decides what to do with `packet`, an IP packet read from the tun (without any virtio-net header).
    #[inline]
    pub fn route<R: PeerTable + ?Sized>(&self, packet: &[u8], routes: &R) -> Action {
        match packet.first().map(|b| b >> 4) {
            Some(4) => {}
            Some(6) => return self.route6(packet, routes),
            Some(_) => return Action::Drop(DropReason::NotIp),
            None => return Action::Drop(DropReason::Truncated),
        }
        let Some(ip) = ipv4::parse(packet) else {
            return Action::Drop(DropReason::Truncated);
        };
        let Some(peer) = routes.peer_for(ip.dst) else {
            // Answer from the unreachable address itself: it is routed to the tun (so reverse-path filters
            // accept the reply) and, unlike our own <subnet>.0, not local (which the kernel would drop as
            // martian).
            return Action::Unreachable {
                reason: DropReason::NoRoute,
                code: Unreachable::Net,
                from: ip.dst,
            };
        };
        let vxlan = match (self.encap, peer.encap) {
            (Encap::Vxlan { vni, mac, .. }, PeerEncap::Vxlan { vtep_mac }) => {
                Some(VxlanTemplate::new(vni, vtep_mac, mac))
            }
            (Encap::Udp, PeerEncap::Udp) | (Encap::WireGuard, PeerEncap::WireGuard) => None,
            _ => return Action::Drop(DropReason::UnsupportedPeer),
        };
        Action::Send(Encapsulation {
            dst: IpAddr::V4(peer.public_ip),
            vxlan,
            flow: flow_hash_parsed(&ip, packet),
        })
    }

    /// The IPv6 half of `route`: VXLAN frames it with Ethernet type 0x86DD between the IPv6 VTEP MACs,
    /// flannel's udp backend sends it bare, WireGuard seals it for the peer's IPv6 device. A host without
    /// IPv6 (VXLAN without an IPv6 VTEP MAC) drops it as `NotIpv4`.
    fn route6<R: PeerTable + ?Sized>(&self, packet: &[u8], routes: &R) -> Action {
        let our_mac6 = match self.encap {
            Encap::Vxlan { mac6: Some(m), .. } => Some(m),
            Encap::Udp | Encap::WireGuard => None,
            Encap::Vxlan { mac6: None, .. } => return Action::Drop(DropReason::NotIpv4),
        };
        let Some(ip) = ipv6::parse(packet) else {
            return Action::Drop(DropReason::Truncated);
        };
        // Link-local, multicast and the like stay on the tun's link (neighbour and router discovery, MLD):
        // never routed, never answered.
        if !ipv6::is_overlay_unicast(ip.src) || !ipv6::is_overlay_unicast(ip.dst) {
            return Action::Drop(DropReason::Ipv6Scope);
        }
        let Some(peer) = routes.peer_for6(ip.dst) else {
            // As for IPv4: answered from the unreachable address, which the tun route covers.
            return Action::Unreachable6 {
                reason: DropReason::NoRoute6,
                from: ip.dst,
            };
        };
        let vxlan = match (self.encap, peer.encap, our_mac6) {
            (Encap::Vxlan { vni, .. }, PeerEncap::Vxlan { vtep_mac }, Some(mac6)) => Some(
                VxlanTemplate::for_inner(vni, vtep_mac, mac6, InnerFamily::V6),
            ),
            (Encap::Udp, PeerEncap::Udp, _) | (Encap::WireGuard, PeerEncap::WireGuard, _) => None,
            _ => return Action::Drop(DropReason::UnsupportedPeer),
        };
        Action::Send(Encapsulation {
            dst: peer.public_ip,
            vxlan,
            flow: flow_hash_parsed6(&ip, packet),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ethernet::MacAddr;
    use crate::wire::flow::flow_hash;
    use crate::wire::ipv4::tests::udp_packet;
    use crate::wire::ipv6::tests::udp6_packet;
    use crate::wire::peers::{PeerRoute, PeerRoute6};
    use ipnet::{Ipv4Net, Ipv6Net};

    const OURS: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
    const VTEP: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);
    const OURS6: MacAddr = MacAddr([2, 0, 0, 0, 6, 1]);
    const VTEP6: MacAddr = MacAddr([2, 0, 0, 0, 6, 2]);
    const VXLAN: Outbound = Outbound {
        encap: Encap::Vxlan {
            vni: 1,
            mac: OURS,
            mac6: None,
        },
    };
    const VXLAN6: Outbound = Outbound {
        encap: Encap::Vxlan {
            vni: 1,
            mac: OURS,
            mac6: Some(OURS6),
        },
    };
    const UDP: Outbound = Outbound { encap: Encap::Udp };
    const WG: Outbound = Outbound {
        encap: Encap::WireGuard,
    };

    /// A route table for tests: (subnet, peer) pairs, searched for the longest prefix.
    struct TestRoutes(Vec<(Ipv4Net, PeerRoute)>, Vec<(Ipv6Net, PeerRoute6)>);

    impl PeerTable for TestRoutes {
        fn peer_for(&self, dst: Ipv4Addr) -> Option<PeerRoute> {
            self.0
                .iter()
                .filter(|(net, _)| net.contains(&dst))
                .max_by_key(|(net, _)| net.prefix_len())
                .map(|&(_, p)| p)
        }
        fn sender_subnet(&self, public_ip: Ipv4Addr) -> Option<Ipv4Net> {
            self.0
                .iter()
                .find(|(_, p)| p.public_ip == public_ip)
                .map(|&(net, _)| net)
        }
        fn peer_for6(&self, dst: Ipv6Addr) -> Option<PeerRoute6> {
            self.1
                .iter()
                .filter(|(net, _)| net.contains(&dst))
                .max_by_key(|(net, _)| net.prefix_len())
                .map(|&(_, p)| p)
        }
    }

    /// 10.5.2.0/24 speaks VXLAN at 192.0.2.2, 10.5.3.0/24 flannel's udp at 192.0.2.3, 10.5.4.0/24
    /// something weft cannot speak at 192.0.2.4; their IPv6 subnets fc00:0:0:2::/64 (VXLAN, at
    /// 2001:db8::2), fc00:0:0:3::/64 (udp, at 192.0.2.3: an IPv4 underlay) and fc00:0:0:4::/64.
    fn routes() -> TestRoutes {
        let peer = |subnet: &str, last: u8, encap| {
            let public_ip = Ipv4Addr::new(192, 0, 2, last);
            (subnet.parse().unwrap(), PeerRoute { public_ip, encap })
        };
        let peer6 = |subnet: &str, public_ip: &str, encap| {
            let public_ip = public_ip.parse().unwrap();
            (subnet.parse().unwrap(), PeerRoute6 { public_ip, encap })
        };
        TestRoutes(
            vec![
                peer("10.5.2.0/24", 2, PeerEncap::Vxlan { vtep_mac: VTEP }),
                peer("10.5.3.0/24", 3, PeerEncap::Udp),
                peer("10.5.4.0/24", 4, PeerEncap::Other),
            ],
            vec![
                peer6(
                    "fc00:0:0:2::/64",
                    "2001:db8::2",
                    PeerEncap::Vxlan { vtep_mac: VTEP6 },
                ),
                peer6("fc00:0:0:3::/64", "192.0.2.3", PeerEncap::Udp),
                peer6("fc00:0:0:4::/64", "2001:db8::4", PeerEncap::Other),
            ],
        )
    }

    fn packet6_to(dst: &str) -> Vec<u8> {
        let src = "fc00:0:0:1::7".parse().unwrap();
        udp6_packet(src, dst.parse().unwrap(), 1000, 2000, b"hello")
    }

    fn packet_to(dst: [u8; 4]) -> Vec<u8> {
        udp_packet([10, 5, 1, 7], dst, 1000, 2000, b"hello")
    }

    #[test]
    fn a_packet_for_a_vxlan_peer_is_sent_there_with_its_vtep_mac() {
        let p = packet_to([10, 5, 2, 9]);
        assert_eq!(
            VXLAN.route(&p, &routes()),
            Action::Send(Encapsulation {
                dst: Ipv4Addr::new(192, 0, 2, 2).into(),
                vxlan: Some(VxlanTemplate::new(1, VTEP, OURS)),
                flow: flow_hash(&p),
            })
        );
        let Action::Send(e) = VXLAN.route(&p, &routes()) else {
            unreachable!()
        };
        assert_eq!(e.prefix(), VXLAN_ENCAP);
    }

    #[test]
    fn a_packet_for_a_udp_peer_is_sent_bare() {
        let p = packet_to([10, 5, 3, 9]);
        let action = UDP.route(&p, &routes());
        assert_eq!(
            action,
            Action::Send(Encapsulation {
                dst: Ipv4Addr::new(192, 0, 2, 3).into(),
                vxlan: None,
                flow: flow_hash(&p),
            })
        );
        let Action::Send(e) = action else {
            unreachable!()
        };
        assert_eq!(e.prefix(), 0);
    }

    #[test]
    fn no_route_is_answered_from_the_unreachable_address() {
        for out in [VXLAN, UDP] {
            assert_eq!(
                out.route(&packet_to([10, 5, 99, 3]), &routes()),
                Action::Unreachable {
                    reason: DropReason::NoRoute,
                    code: Unreachable::Net,
                    from: Ipv4Addr::new(10, 5, 99, 3),
                }
            );
        }
    }

    #[test]
    fn a_peer_with_another_backend_is_unsupported() {
        let r = routes();
        let drop = Action::Drop(DropReason::UnsupportedPeer);
        assert_eq!(VXLAN.route(&packet_to([10, 5, 3, 9]), &r), drop);
        assert_eq!(VXLAN.route(&packet_to([10, 5, 4, 9]), &r), drop);
        assert_eq!(UDP.route(&packet_to([10, 5, 2, 9]), &r), drop);
        assert_eq!(UDP.route(&packet_to([10, 5, 4, 9]), &r), drop);
    }

    #[test]
    fn non_ipv4_and_truncated_packets_are_dropped_by_reason() {
        let r = routes();
        let mut v6 = vec![0u8; 60];
        v6[0] = 0x60;
        assert_eq!(VXLAN.route(&v6, &r), Action::Drop(DropReason::NotIpv4));
        // WireGuard carries IPv6 (its own device per family): an unspecified source is not routed.
        assert_eq!(WG.route(&v6, &r), Action::Drop(DropReason::Ipv6Scope));
        let mut v5 = v6.clone();
        v5[0] = 0x50;
        assert_eq!(VXLAN6.route(&v5, &r), Action::Drop(DropReason::NotIp));
        assert_eq!(UDP.route(&v5, &r), Action::Drop(DropReason::NotIp));
        let p = packet_to([10, 5, 2, 9]);
        for cut in [0, 1, 19, p.len() - 1] {
            assert_eq!(
                VXLAN.route(&p[..cut], &r),
                Action::Drop(DropReason::Truncated),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn the_flow_follows_the_inner_ports() {
        let r = routes();
        let a = udp_packet([10, 5, 1, 7], [10, 5, 2, 9], 1000, 80, b"x");
        let b = udp_packet([10, 5, 1, 7], [10, 5, 2, 9], 1001, 80, b"x");
        let flow = |p: &[u8]| match VXLAN.route(p, &r) {
            Action::Send(e) => e.flow,
            other => panic!("not sent: {other:?}"),
        };
        assert_eq!(flow(&a), flow_hash(&a));
        assert_ne!(flow(&a), flow(&b));
    }

    #[test]
    fn an_ipv6_packet_for_a_vxlan_peer_goes_to_its_ipv6_vtep() {
        let p = packet6_to("fc00:0:0:2::9");
        let action = VXLAN6.route(&p, &routes());
        let want = VxlanTemplate::for_inner(1, VTEP6, OURS6, InnerFamily::V6);
        assert_eq!(
            action,
            Action::Send(Encapsulation {
                dst: "2001:db8::2".parse().unwrap(),
                vxlan: Some(want),
                flow: flow_hash(&p),
            })
        );
        assert_eq!(
            &want.bytes()[8..22],
            &[2, 0, 0, 0, 6, 2, 2, 0, 0, 0, 6, 1, 0x86, 0xdd]
        );
    }

    #[test]
    fn an_ipv6_packet_for_a_udp_peer_is_sent_bare_over_its_underlay() {
        let p = packet6_to("fc00:0:0:3::9");
        assert_eq!(
            UDP.route(&p, &routes()),
            Action::Send(Encapsulation {
                dst: Ipv4Addr::new(192, 0, 2, 3).into(),
                vxlan: None,
                flow: flow_hash(&p),
            })
        );
    }

    #[test]
    fn ipv6_without_a_route_is_answered_and_other_cases_dropped_by_reason() {
        let r = routes();
        for out in [VXLAN6, UDP] {
            assert_eq!(
                out.route(&packet6_to("fc00:0:0:99::3"), &r),
                Action::Unreachable6 {
                    reason: DropReason::NoRoute6,
                    from: "fc00:0:0:99::3".parse().unwrap(),
                }
            );
            for scoped in ["ff02::2", "fe80::1", "::1"] {
                assert_eq!(
                    out.route(&packet6_to(scoped), &r),
                    Action::Drop(DropReason::Ipv6Scope),
                    "{scoped}"
                );
            }
            let p = packet6_to("fc00:0:0:2::9");
            for cut in [1, 39, p.len() - 1] {
                assert_eq!(
                    out.route(&p[..cut], &r),
                    Action::Drop(DropReason::Truncated),
                    "cut at {cut}"
                );
            }
            assert_eq!(
                out.route(&packet6_to("fc00:0:0:4::9"), &r),
                Action::Drop(DropReason::UnsupportedPeer)
            );
        }
        let link_local_src = udp6_packet(
            "fe80::1".parse().unwrap(),
            "fc00:0:0:2::9".parse().unwrap(),
            1,
            2,
            b"x",
        );
        assert_eq!(
            VXLAN6.route(&link_local_src, &r),
            Action::Drop(DropReason::Ipv6Scope)
        );
        let drop = Action::Drop(DropReason::UnsupportedPeer);
        assert_eq!(VXLAN6.route(&packet6_to("fc00:0:0:3::9"), &r), drop);
        assert_eq!(UDP.route(&packet6_to("fc00:0:0:2::9"), &r), drop);
        // Without an IPv6 VTEP (IPv6 not enabled): not carried. WireGuard to a peer without an IPv6
        // WireGuard device (the table's peers here are udp and vxlan ones): not a peer it can reach.
        let not = Action::Drop(DropReason::NotIpv4);
        assert_eq!(VXLAN.route(&packet6_to("fc00:0:0:2::9"), &r), not);
        assert_eq!(WG.route(&packet6_to("fc00:0:0:2::9"), &r), drop);
    }
}
