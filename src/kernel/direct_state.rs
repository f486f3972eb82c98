//! Direct routes (flannel's host-gw backend, and vxlan's DirectRouting): which peer subnets are routed
//! straight to the peer's public IP over the underlay, computed from the route table; pure. IPv6
//! (`plan6`): vxlan's DirectRouting for the IPv6 halves of dual-stack peers.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

use crate::routes::{Peer, PeerBackend};

/// One direct route: a peer's subnet via its public IP.
pub type Route = (Ipv4Net, Ipv4Addr);

/// One direct IPv6 route: a peer's IPv6 subnet via its IPv6 underlay address (`PublicIPv6`).
pub type Route6 = (Ipv6Net, Ipv6Addr);

/// Which peers get direct routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectMode {
    /// host-gw: every host-gw peer (one not on our layer-2 segment cannot be routed and is reported).
    HostGw,
    /// vxlan with DirectRouting: vxlan peers of our VNI on our segment; the others keep VXLAN.
    VxlanDirect { vni: u32 },
}

/// How the underlay reaches an address, as the kernel's route says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// On a connected network of the underlay interface: no gateway between us (same L2 segment).
    OnLink,
    /// Through a gateway (another segment), or through another interface.
    Via(Option<Ipv4Addr>),
    /// No route at all.
    Unreachable,
}

/// What the direct routes should be: `<peer subnet> via <peer public IP>`; and the host-gw peers that
/// cannot have one (not on our segment), for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DirectPlan {
    pub routes: BTreeSet<Route>,
    pub unroutable: Vec<(Ipv4Net, Ipv4Addr, Reach)>,
}

/// The plan for `peers` in `mode`; `reach` says how the underlay reaches a public IP.
pub fn plan(
    peers: &[Peer],
    mode: DirectMode,
    mut reach: impl FnMut(Ipv4Addr) -> Reach,
) -> DirectPlan {
    let mut p = DirectPlan::default();
    for peer in peers {
        let wanted = match (mode, peer.backend) {
            (DirectMode::HostGw, PeerBackend::HostGw) => true,
            (DirectMode::VxlanDirect { vni }, PeerBackend::Vxlan { vni: v, .. }) => v == vni,
            _ => false,
        };
        let Some(subnet) = peer.subnet.filter(|_| wanted) else {
            continue;
        };
        match reach(peer.public_ip) {
            Reach::OnLink => {
                p.routes.insert((subnet, peer.public_ip));
            }
            r if mode == DirectMode::HostGw => p.unroutable.push((subnet, peer.public_ip, r)),
            _ => {}
        }
    }
    p
}

/// vxlan's DirectRouting for IPv6, as flannel: the dual-stack vxlan peers of our VNI whose `PublicIPv6`
/// is on our segment (`on_link` says so) get `<IPv6 subnet> via <PublicIPv6>`; the others keep VXLAN.
pub fn plan6(
    peers: &[Peer],
    mode: DirectMode,
    mut on_link: impl FnMut(Ipv6Addr) -> bool,
) -> BTreeSet<Route6> {
    let mut routes = BTreeSet::new();
    for p in peers {
        let wanted = match (mode, p.backend) {
            (DirectMode::HostGw, PeerBackend::HostGw) => true,
            (DirectMode::VxlanDirect { vni }, PeerBackend::Vxlan { vni: v, .. }) => v == vni,
            _ => false,
        };
        let Some((v6, ip)) = p.v6.and_then(|v6| Some((v6, v6.public_ip?))) else {
            continue;
        };
        if wanted && on_link(ip) {
            routes.insert((v6.subnet, ip));
        }
    }
    routes
}

/// The subnets with direct routes in `plan` (the kernel VXLAN backend leaves them to the direct routes).
pub fn direct_subnets(plan: &DirectPlan) -> BTreeSet<Ipv4Net> {
    plan.routes.iter().map(|(n, _)| *n).collect()
}

/// Routes to add (`want` but not `have`) and to delete (`have` but not `want`).
pub fn route_diff<R: Ord + Copy>(want: &BTreeSet<R>, have: &BTreeSet<R>) -> (Vec<R>, Vec<R>) {
    (
        want.difference(have).copied().collect(),
        have.difference(want).copied().collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(subnet: &str, ip: [u8; 4], backend: PeerBackend) -> Peer {
        Peer {
            v6: None,
            subnet: Some(subnet.parse().unwrap()),
            public_ip: Ipv4Addr::from(ip),
            backend,
        }
    }

    #[test]
    fn host_gw_routes_its_segment_and_reports_the_rest() {
        let peers = [
            peer("10.5.1.0/24", [192, 0, 2, 1], PeerBackend::HostGw),
            peer("10.5.2.0/24", [198, 51, 100, 2], PeerBackend::HostGw),
            peer("10.5.3.0/24", [192, 0, 2, 3], PeerBackend::Udp),
        ];
        let reach = |ip: Ipv4Addr| {
            if ip.octets()[0] == 192 {
                Reach::OnLink
            } else {
                Reach::Via(Some(Ipv4Addr::new(192, 0, 2, 254)))
            }
        };
        let p = plan(&peers, DirectMode::HostGw, reach);
        assert_eq!(
            p.routes.iter().copied().collect::<Vec<_>>(),
            vec![("10.5.1.0/24".parse().unwrap(), Ipv4Addr::new(192, 0, 2, 1))]
        );
        assert_eq!(p.unroutable.len(), 1);
        assert_eq!(p.unroutable[0].0, "10.5.2.0/24".parse::<Ipv4Net>().unwrap());
    }

    #[test]
    fn direct_routing_takes_same_segment_vxlan_peers_of_our_vni_only() {
        let mac = "02:00:00:00:00:01".parse().unwrap();
        let peers = [
            peer(
                "10.5.1.0/24",
                [192, 0, 2, 1],
                PeerBackend::Vxlan {
                    vni: 1,
                    vtep_mac: mac,
                },
            ),
            peer(
                "10.5.2.0/24",
                [198, 51, 100, 2],
                PeerBackend::Vxlan {
                    vni: 1,
                    vtep_mac: mac,
                },
            ),
            peer(
                "10.5.3.0/24",
                [192, 0, 2, 3],
                PeerBackend::Vxlan {
                    vni: 2,
                    vtep_mac: mac,
                },
            ),
        ];
        let reach = |ip: Ipv4Addr| {
            if ip.octets()[0] == 192 {
                Reach::OnLink
            } else {
                Reach::Via(None)
            }
        };
        let p = plan(&peers, DirectMode::VxlanDirect { vni: 1 }, reach);
        assert_eq!(
            direct_subnets(&p).into_iter().collect::<Vec<_>>(),
            vec!["10.5.1.0/24".parse::<Ipv4Net>().unwrap()]
        );
        assert!(p.unroutable.is_empty(), "the others simply keep VXLAN");
    }

    #[test]
    fn ipv6_direct_routing_takes_same_segment_dual_stack_peers_of_our_vni() {
        let mac = "02:00:00:00:00:01".parse().unwrap();
        let dual = |s4: &str, s6: &str, ip6: Option<&str>, vni: u32| Peer {
            v6: Some(crate::routes::PeerV6 {
                subnet: s6.parse().unwrap(),
                public_ip: ip6.map(|a| a.parse().unwrap()),
                vtep_mac: Some(mac),
                wireguard: None,
            }),
            ..peer(
                s4,
                [192, 0, 2, 1],
                PeerBackend::Vxlan { vni, vtep_mac: mac },
            )
        };
        let peers = [
            dual("10.5.1.0/24", "fc00::1:0/112", Some("fd00::1"), 1),
            dual("10.5.2.0/24", "fc00::2:0/112", Some("2001:db8::2"), 1),
            dual("10.5.3.0/24", "fc00::3:0/112", Some("fd00::3"), 2),
            dual("10.5.4.0/24", "fc00::4:0/112", None, 1),
            peer(
                "10.5.5.0/24",
                [192, 0, 2, 5],
                PeerBackend::Vxlan {
                    vni: 1,
                    vtep_mac: mac,
                },
            ),
        ];
        let on_link = |ip: Ipv6Addr| ip.segments()[0] == 0xfd00;
        assert_eq!(
            plan6(&peers, DirectMode::VxlanDirect { vni: 1 }, on_link)
                .into_iter()
                .collect::<Vec<_>>(),
            vec![("fc00::1:0/112".parse().unwrap(), "fd00::1".parse().unwrap())]
        );
        // host-gw takes host-gw peers only, IPv6-only ones (no IPv4 subnet) too.
        let hg = |s6: &str, ip6: &str| Peer {
            subnet: None,
            v6: Some(crate::routes::PeerV6 {
                subnet: s6.parse().unwrap(),
                public_ip: Some(ip6.parse().unwrap()),
                vtep_mac: None,
                wireguard: None,
            }),
            ..peer("10.5.9.0/24", [0, 0, 0, 0], PeerBackend::HostGw)
        };
        let peers = [
            hg("fc00::7:0/112", "fd00::7"),
            hg("fc00::8:0/112", "2001:db8::8"),
            peers[0],
        ];
        assert_eq!(
            plan6(&peers, DirectMode::HostGw, on_link)
                .into_iter()
                .collect::<Vec<_>>(),
            vec![("fc00::7:0/112".parse().unwrap(), "fd00::7".parse().unwrap())]
        );
        assert!(plan(&peers, DirectMode::HostGw, |_| Reach::OnLink)
            .routes
            .is_empty());
    }

    #[test]
    fn the_diff_adds_what_is_missing_and_removes_what_is_stale() {
        let r = |s: &str, ip: u8| (s.parse::<Ipv4Net>().unwrap(), Ipv4Addr::new(192, 0, 2, ip));
        let want: BTreeSet<_> = [r("10.5.1.0/24", 1), r("10.5.2.0/24", 2)].into();
        let have: BTreeSet<_> = [r("10.5.2.0/24", 2), r("10.5.9.0/24", 9)].into();
        assert_eq!(
            route_diff(&want, &have),
            (vec![r("10.5.1.0/24", 1)], vec![r("10.5.9.0/24", 9)])
        );
    }
}
