//! The inbound checks every decapsulated packet must pass before it reaches the tun device.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::ipv4;
use super::DropReason;

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
    let ip = ipv4::parse(inner).ok_or(DropReason::Truncated)?;
    if !peer_subnet.contains(&ip.src) {
        // A host may hold more than one lease (e.g. a stale one); accept any of its subnets.
        let owner = routes.owner(ip.src);
        if owner != Some(src) {
            return Err(DropReason::SpoofedSource);
        }
    }
    if !own.contains(&ip.dst) {
        return Err(DropReason::NotForUs);
    }
    Ok(ip.total_len)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::wire::ipv4::tests::udp_packet;
    use crate::wire::peers::{PeerEncap, PeerRoute};

    /// A peer table for tests: (subnet, public IP) pairs, searched linearly with the route table's rules.
    pub(crate) struct TestPeers(pub Vec<(Ipv4Net, Ipv4Addr)>);

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
}
