//! The outbound decision for one packet read from the tun, pure: parse it once, find its peer, and say
//! what to do (encapsulate and send to the peer, answer with ICMP unreachable, or drop with a reason).

use std::net::Ipv4Addr;

use super::flow::flow_hash_parsed;
use super::inbound::Encap;
use super::ipv4::{self, Unreachable};
use super::peers::{PeerEncap, PeerTable};
use super::vxlan::{VxlanTemplate, VXLAN_ENCAP};
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
    /// Drop the packet, counted under this reason.
    Drop(DropReason),
}

/// How to wrap and where to send one outbound packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encapsulation {
    /// The peer's public IP (the datagram goes to the network's port there).
    pub dst: Ipv4Addr,
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
        let Some(ip) = ipv4::parse(packet) else {
            return Action::Drop(if packet.first().is_some_and(|b| b >> 4 != 4) {
                DropReason::NotIpv4
            } else {
                DropReason::Truncated
            });
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
            (Encap::Vxlan { vni, mac }, PeerEncap::Vxlan { vtep_mac }) => {
                Some(VxlanTemplate::new(vni, vtep_mac, mac))
            }
            (Encap::Udp, PeerEncap::Udp) | (Encap::WireGuard, PeerEncap::WireGuard) => None,
            _ => return Action::Drop(DropReason::UnsupportedPeer),
        };
        Action::Send(Encapsulation {
            dst: peer.public_ip,
            vxlan,
            flow: flow_hash_parsed(&ip, packet),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ethernet::MacAddr;
    use crate::wire::flow::flow_hash;
    use crate::wire::ipv4::tests::udp_packet;
    use crate::wire::peers::PeerRoute;
    use ipnet::Ipv4Net;

    const OURS: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
    const VTEP: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);
    const VXLAN: Outbound = Outbound {
        encap: Encap::Vxlan { vni: 1, mac: OURS },
    };
    const UDP: Outbound = Outbound { encap: Encap::Udp };

    /// A route table for tests: (subnet, peer) pairs, searched for the longest prefix.
    struct TestRoutes(Vec<(Ipv4Net, PeerRoute)>);

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
    }

    /// 10.5.2.0/24 speaks VXLAN at 192.0.2.2, 10.5.3.0/24 flannel's udp at 192.0.2.3, 10.5.4.0/24
    /// something weft cannot speak at 192.0.2.4.
    fn routes() -> TestRoutes {
        let peer = |subnet: &str, last: u8, encap| {
            let public_ip = Ipv4Addr::new(192, 0, 2, last);
            (subnet.parse().unwrap(), PeerRoute { public_ip, encap })
        };
        TestRoutes(vec![
            peer("10.5.2.0/24", 2, PeerEncap::Vxlan { vtep_mac: VTEP }),
            peer("10.5.3.0/24", 3, PeerEncap::Udp),
            peer("10.5.4.0/24", 4, PeerEncap::Other),
        ])
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
                dst: Ipv4Addr::new(192, 0, 2, 2),
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
                dst: Ipv4Addr::new(192, 0, 2, 3),
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
}
