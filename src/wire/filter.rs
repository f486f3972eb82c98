//! The inbound checks every decapsulated packet must pass before it reaches the tun device.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::{Ipv4Net, Ipv6Net};

use super::DropReason;
use super::{ipv4, ipv6};

pub use super::peers::PeerTable;

/// The sender is the public IP of a current peer; returns the first such peer's subnet.
#[inline]
pub fn check_sender<R: PeerTable + ?Sized>(
    routes: &R,
    src: Ipv4Addr,
) -> Result<Ipv4Net, DropReason> {
    routes.sender_subnet(src).ok_or(DropReason::UnknownSender)
}

/// Checks an inner IPv4 packet from peer `src` (whose lease is `peer_subnet`): it parses completely, its
/// source lies in a subnet leased by that peer, its destination in `own`. Returns the packet's IP total
/// length (the packet without any Ethernet padding after it).
#[inline]
pub fn check_inner<R: PeerTable + ?Sized>(
    routes: &R,
    own: Ipv4Net,
    src: Ipv4Addr,
    peer_subnet: Ipv4Net,
    inner: &[u8],
) -> Result<usize, DropReason> {
    check_inner_from(routes, own, IpAddr::V4(src), Some(peer_subnet), inner)
}

/// [`check_inner`] for a sender of either family whose IPv4 lease, if it has one, is `peer_subnet`.
#[inline]
pub fn check_inner_from<R: PeerTable + ?Sized>(
    routes: &R,
    own: Ipv4Net,
    src: IpAddr,
    peer_subnet: Option<Ipv4Net>,
    inner: &[u8],
) -> Result<usize, DropReason> {
    let ip = ipv4::parse(inner).ok_or(DropReason::Truncated)?;
    if !peer_subnet.is_some_and(|n| n.contains(&ip.src)) {
        // A host may hold more than one lease (e.g. a stale one); accept any of its subnets.
        let owner = routes.owner(ip.src);
        if owner.map(IpAddr::V4) != Some(src) {
            return Err(DropReason::SpoofedSource);
        }
    }
    if !own.contains(&ip.dst) {
        return Err(DropReason::NotForUs);
    }
    Ok(ip.total_len)
}

/// Checks an inner IPv6 packet from the peer at underlay address `src` (whose IPv6 lease, if it has one,
/// is `peer_subnet`): it parses completely, neither address is link-local, multicast, unspecified or
/// otherwise scoped, its source lies in an IPv6 subnet leased by that peer, its destination in `own6`.
/// Returns the packet's length (without any Ethernet padding after it).
#[inline]
pub fn check_inner6<R: PeerTable + ?Sized>(
    routes: &R,
    own6: Ipv6Net,
    src: IpAddr,
    peer_subnet: Option<Ipv6Net>,
    inner: &[u8],
) -> Result<usize, DropReason> {
    let ip = ipv6::parse(inner).ok_or(DropReason::Truncated)?;
    if !ipv6::is_overlay_unicast(ip.src) || !ipv6::is_overlay_unicast(ip.dst) {
        return Err(DropReason::Ipv6Scope);
    }
    if !peer_subnet.is_some_and(|n| n.contains(&ip.src)) && routes.owner6(ip.src) != Some(src) {
        // Not in the sender's first lease, nor in another (stale) one it holds.
        return Err(DropReason::SpoofedSource);
    }
    if !own6.contains(&ip.dst) {
        return Err(DropReason::NotForUs);
    }
    Ok(ip.total_len)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::wire::ipv4::tests::udp_packet;
    use crate::wire::ipv6::tests::udp6_packet;
    use crate::wire::peers::{PeerEncap, PeerRoute, PeerRoute6};
    use std::net::Ipv6Addr;

    /// A peer table for tests: (subnet, public IP) pairs, searched linearly with the route table's rules.
    pub(crate) struct TestPeers(pub Vec<(Ipv4Net, Ipv4Addr)>);

    /// As `TestPeers`, with (IPv6 subnet, public address) pairs beside.
    pub(crate) struct TestPeers6(pub TestPeers, pub Vec<(Ipv6Net, IpAddr)>);

    impl PeerTable for TestPeers6 {
        fn sender_subnet(&self, public_ip: Ipv4Addr) -> Option<Ipv4Net> {
            self.0.sender_subnet(public_ip)
        }
        fn peer_for(&self, addr: Ipv4Addr) -> Option<PeerRoute> {
            self.0.peer_for(addr)
        }
        fn sender_subnet6(&self, public_ip: IpAddr) -> Option<Ipv6Net> {
            self.1.iter().find(|p| p.1 == public_ip).map(|p| p.0)
        }
        fn peer_for6(&self, addr: Ipv6Addr) -> Option<PeerRoute6> {
            let hit = self.1.iter().filter(|p| p.0.contains(&addr));
            hit.max_by_key(|p| p.0.prefix_len()).map(|p| PeerRoute6 {
                public_ip: p.1,
                encap: PeerEncap::Other,
            })
        }
    }

    /// Peers at 192.0.2.2 (10.5.2.0/24, fc00:0:0:2::/64 and a stale fc00:0:0:22::/64 listed second) and
    /// 2001:db8::3 (fc00:0:0:3::/64, an IPv6 underlay).
    pub(crate) fn routes6() -> TestPeers6 {
        let p2 = IpAddr::from([192, 0, 2, 2]);
        let p3: IpAddr = "2001:db8::3".parse().unwrap();
        TestPeers6(
            routes(),
            vec![
                ("fc00:0:0:2::/64".parse().unwrap(), p2),
                ("fc00:0:0:3::/64".parse().unwrap(), p3),
                ("fc00:0:0:22::/64".parse().unwrap(), p2),
            ],
        )
    }

    impl PeerTable for TestPeers {
        fn sender_subnet(&self, public_ip: Ipv4Addr) -> Option<Ipv4Net> {
            self.0.iter().find(|p| p.1 == public_ip).map(|p| p.0)
        }
        fn peer_for(&self, addr: Ipv4Addr) -> Option<PeerRoute> {
            let hit = self.0.iter().filter(|p| p.0.contains(&addr));
            hit.max_by_key(|p| p.0.prefix_len()).map(|p| PeerRoute {
                public_ip: p.1,
                encap: PeerEncap::Other,
            })
        }
    }

    fn routes() -> TestPeers {
        TestPeers(vec![
            ("10.5.2.0/24".parse().unwrap(), Ipv4Addr::new(192, 0, 2, 2)),
            ("10.5.3.0/24".parse().unwrap(), Ipv4Addr::new(192, 0, 2, 3)),
        ])
    }

    #[test]
    fn accepts_a_peer_packet_for_us() {
        let r = routes();
        let own: Ipv4Net = "10.5.1.0/24".parse().unwrap();
        let src = Ipv4Addr::new(192, 0, 2, 2);
        let peer = check_sender(&r, src).unwrap();
        let mut p = udp_packet([10, 5, 2, 9], [10, 5, 1, 7], 1, 2, b"data");
        let n = p.len();
        p.extend_from_slice(&[0xee; 6]); // Ethernet padding after the IP packet is trimmed.
        assert_eq!(check_inner(&r, own, src, peer, &p).unwrap(), n);
    }

    #[test]
    fn drops_each_bad_case_by_reason() {
        let r = routes();
        let own: Ipv4Net = "10.5.1.0/24".parse().unwrap();
        let src = Ipv4Addr::new(192, 0, 2, 2);
        let peer = check_sender(&r, src).unwrap();
        assert_eq!(
            check_sender(&r, Ipv4Addr::new(192, 0, 2, 99)),
            Err(DropReason::UnknownSender)
        );
        let good = udp_packet([10, 5, 2, 9], [10, 5, 1, 7], 1, 2, b"data");
        assert_eq!(
            check_inner(&r, own, src, peer, &good[..good.len() - 1]),
            Err(DropReason::Truncated)
        );
        let spoofed = udp_packet([10, 5, 3, 9], [10, 5, 1, 7], 1, 2, b"data");
        assert_eq!(
            check_inner(&r, own, src, peer, &spoofed),
            Err(DropReason::SpoofedSource)
        );
        let outside = udp_packet([8, 8, 8, 8], [10, 5, 1, 7], 1, 2, b"data");
        assert_eq!(
            check_inner(&r, own, src, peer, &outside),
            Err(DropReason::SpoofedSource)
        );
        let elsewhere = udp_packet([10, 5, 2, 9], [10, 5, 3, 7], 1, 2, b"data");
        assert_eq!(
            check_inner(&r, own, src, peer, &elsewhere),
            Err(DropReason::NotForUs)
        );
    }

    #[test]
    fn ipv6_checks_sender_subnet_destination_and_scope() {
        let r = routes6();
        let own6: Ipv6Net = "fc00:0:0:1::/64".parse().unwrap();
        let p2 = IpAddr::from([192, 0, 2, 2]);
        let p3: IpAddr = "2001:db8::3".parse().unwrap();
        let peer2 = r.sender_subnet6(p2);
        let peer3 = r.sender_subnet6(p3);
        let pkt = |src: &str, dst: &str| {
            udp6_packet(src.parse().unwrap(), dst.parse().unwrap(), 1, 2, b"data")
        };
        let good = pkt("fc00:0:0:2::9", "fc00:0:0:1::7");
        let mut padded = good.clone();
        padded.extend_from_slice(&[0xee; 6]);
        assert_eq!(check_inner6(&r, own6, p2, peer2, &padded), Ok(good.len()));
        let stale = pkt("fc00:0:0:22::9", "fc00:0:0:1::7");
        assert_eq!(check_inner6(&r, own6, p2, peer2, &stale), Ok(stale.len()));
        let over_v6 = pkt("fc00:0:0:3::9", "fc00:0:0:1::7");
        assert_eq!(
            check_inner6(&r, own6, p3, peer3, &over_v6),
            Ok(over_v6.len())
        );
        let spoof = Err(DropReason::SpoofedSource);
        assert_eq!(check_inner6(&r, own6, p2, peer2, &over_v6), spoof);
        assert_eq!(check_inner6(&r, own6, p3, peer3, &good), spoof);
        let outside = pkt("2001:db8:1::1", "fc00:0:0:1::7");
        assert_eq!(check_inner6(&r, own6, p2, peer2, &outside), spoof);
        assert_eq!(
            check_inner6(&r, own6, p2, None, &good),
            Ok(good.len()),
            "by owner"
        );
        assert_eq!(
            check_inner6(&r, own6, p2, peer2, &pkt("fc00:0:0:2::9", "fc00:0:0:3::7")),
            Err(DropReason::NotForUs)
        );
        for (src, dst) in [
            ("fe80::1", "fc00:0:0:1::7"),
            ("::", "fc00:0:0:1::7"),
            ("ff02::1", "fc00:0:0:1::7"),
            ("fc00:0:0:2::9", "ff02::1"),
            ("fc00:0:0:2::9", "fe80::7"),
            ("fc00:0:0:2::9", "::ffff:10.5.1.7"),
        ] {
            assert_eq!(
                check_inner6(&r, own6, p2, peer2, &pkt(src, dst)),
                Err(DropReason::Ipv6Scope),
                "{src} -> {dst}"
            );
        }
        assert_eq!(
            check_inner6(&r, own6, p2, peer2, &good[..good.len() - 1]),
            Err(DropReason::Truncated)
        );
        let v4 = udp_packet([10, 5, 2, 9], [10, 5, 1, 7], 1, 2, b"data");
        assert_eq!(
            check_inner6(&r, own6, p2, peer2, &v4),
            Err(DropReason::Truncated)
        );
    }

    #[test]
    fn ipv4_from_a_sender_without_an_ipv4_lease_is_judged_by_owner() {
        let r = routes6();
        let own: Ipv4Net = "10.5.1.0/24".parse().unwrap();
        let p = udp_packet([10, 5, 2, 9], [10, 5, 1, 7], 1, 2, b"data");
        let p2 = IpAddr::from([192, 0, 2, 2]);
        assert_eq!(check_inner_from(&r, own, p2, None, &p), Ok(p.len()));
        let v6_sender: IpAddr = "2001:db8::3".parse().unwrap();
        assert_eq!(
            check_inner_from(&r, own, v6_sender, None, &p),
            Err(DropReason::SpoofedSource)
        );
    }
}
