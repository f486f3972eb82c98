//! Shared setup of the inbound fuzz targets: a route table with one peer (and IPv6 subnets beside it) and
//! this host's settings.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use weft::routes::{Peer, PeerBackend, RouteSnapshot};
use weft::wire::ethernet::MacAddr;
use weft::wire::inbound::{Encap, Inbound};
use weft::wire::peers::{PeerEncap, PeerRoute, PeerRoute6, PeerTable};

pub const PEER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// A peer reached over an IPv6 underlay (fc00:0:0:3::/64).
pub const PEER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 3);
/// Our IPv6 VTEP MAC.
#[allow(dead_code)] // the VXLAN targets use it, udp_inbound does not
pub const OURS6: MacAddr = MacAddr([2, 0, 0, 0, 6, 1]);

pub fn routes() -> RouteSnapshot {
    RouteSnapshot::new([Peer {
        v6: None,
        subnet: Some("10.5.2.0/24".parse().expect("subnet")),
        public_ip: PEER,
        backend: PeerBackend::Vxlan {
            vni: 1,
            vtep_mac: MacAddr([2, 0, 0, 0, 0, 2]),
        },
    }])
}

/// `routes()` with IPv6 subnets beside it: the VXLAN peer's fc00:0:0:2::/64 (over its IPv4 address) and
/// fc00:0:0:3::/64 of a flannel-udp peer over the IPv6 underlay at `PEER6`. (Kept apart from the route
/// table until it has IPv6 lookups of its own.)
pub struct DualRoutes {
    pub v4: RouteSnapshot,
    pub v6: Vec<(Ipv6Net, PeerRoute6)>,
}

impl PeerTable for DualRoutes {
    fn peer_for(&self, dst: Ipv4Addr) -> Option<PeerRoute> {
        self.v4.peer_for(dst)
    }
    fn sender_subnet(&self, public_ip: Ipv4Addr) -> Option<Ipv4Net> {
        self.v4.sender_subnet(public_ip)
    }
    fn peer_for6(&self, dst: Ipv6Addr) -> Option<PeerRoute6> {
        let hit = self.v6.iter().filter(|(net, _)| net.contains(&dst));
        hit.max_by_key(|(net, _)| net.prefix_len()).map(|&(_, p)| p)
    }
    fn sender_subnet6(&self, public_ip: IpAddr) -> Option<Ipv6Net> {
        let hit = self.v6.iter().find(|(_, p)| p.public_ip == public_ip);
        hit.map(|&(net, _)| net)
    }
}

pub fn dual_routes(v4: RouteSnapshot) -> DualRoutes {
    let peer6 = |net: &str, public_ip: IpAddr, encap| {
        let net = net.parse().expect("subnet");
        (net, PeerRoute6 { public_ip, encap })
    };
    DualRoutes {
        v4,
        v6: vec![
            peer6(
                "fc00:0:0:2::/64",
                PEER.into(),
                PeerEncap::Vxlan {
                    vtep_mac: MacAddr([2, 0, 0, 0, 6, 2]),
                },
            ),
            peer6("fc00:0:0:3::/64", PEER6.into(), PeerEncap::Udp),
        ],
    }
}

/// An IPv6 packet around `data` with a valid fixed header: from fc00:0:0:2::<sel> (bit 0 of `sel` set:
/// from fc00:0:0:3::, the IPv6-underlay peer's subnet) to fc00:0:0:1::7 (bit 1 set: to fc00:0:0:2::7,
/// not ours), next header `data[0]`, payload the rest; so the inbound targets reach the IPv6 checks.
#[allow(dead_code)] // outbound and segment build their own
pub fn ipv6_packet(sel: u8, data: &[u8]) -> Vec<u8> {
    let (&next, rest) = data.split_first().unwrap_or((&17, &[]));
    let len = rest.len().min(usize::from(u16::MAX));
    let mut p = vec![0x60, 0, 0, 0, 0, 0, next, 64];
    p[4..6].copy_from_slice(&(len as u16).to_be_bytes());
    let from = if sel & 1 == 1 { 3 } else { 2 };
    let to = if sel & 2 == 2 { 2 } else { 1 };
    p.extend_from_slice(&[0xfc, 0, 0, 0, 0, 0, 0, from, 0, 0, 0, 0, 0, 0, 0, sel]);
    p.extend_from_slice(&[0xfc, 0, 0, 0, 0, 0, 0, to, 0, 0, 0, 0, 0, 0, 0, 7]);
    p.extend_from_slice(&rest[..len]);
    p
}

/// Runs the whole inbound pipeline on `data` and checks what it delivers.
#[allow(dead_code)] // xdp_frame shares this file's setup but has its own entry
pub fn run(data: &[u8], encap: Encap) {
    run_from(PEER.into(), data, encap)
}

/// As `run`, for a datagram from underlay address `src`.
pub fn run_from(src: IpAddr, data: &[u8], encap: Encap) {
    let rx = Inbound {
        own: Some("10.5.1.0/24".parse().expect("subnet")),
        own6: Some("fc00:0:0:1::/64".parse().expect("subnet")),
        encap,
        mtu: 1450,
        tun_offload: false,
    };
    let routes = dual_routes(routes());
    let mut payload = data.to_vec();
    let mut scratch = vec![0u8; 1450];
    let _ = rx.receive(&routes, src, &mut payload, &mut scratch, |packet| {
        assert!(packet.len() <= 1450, "delivered more than the MTU");
        if packet[0] >> 4 == 6 {
            let ip = weft::wire::ipv6::parse(packet).expect("delivered IPv6 is valid");
            let own6 = rx.own6.expect("IPv6 enabled");
            assert!(own6.contains(&ip.dst), "delivered a packet not for us");
            let sender = routes.sender_subnet6(src);
            assert!(
                sender.is_some_and(|n| n.contains(&ip.src)) || routes.owner6(ip.src) == Some(src),
                "delivered a packet from outside the sender's subnets"
            );
        } else {
            let ip = weft::wire::ipv4::parse(packet).expect("delivered packets are valid IPv4");
            assert!(rx.own.is_some_and(|o| o.contains(&ip.dst)), "delivered a packet not for us");
        }
    });
}
