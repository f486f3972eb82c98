//! What the pure packet decisions ask of the route table: the peer for a destination (outbound), and the
//! sender and owner checks (inbound), for IPv4 and IPv6 subnets. `routes::RouteSnapshot` implements it; the
//! decisions are generic over it (monomorphised, no `dyn`), so the lookups inline as direct calls would.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

use super::ethernet::MacAddr;

/// The route table as the packet decisions see it.
pub trait PeerTable {
    /// The peer whose subnet is the longest prefix containing `dst`.
    fn peer_for(&self, dst: Ipv4Addr) -> Option<PeerRoute>;
    /// The subnet of the first current peer whose public (underlay) IP is `public_ip`.
    fn sender_subnet(&self, public_ip: Ipv4Addr) -> Option<Ipv4Net>;
    /// The public IP of the peer whose subnet is the longest prefix containing `addr`.
    #[inline]
    fn owner(&self, addr: Ipv4Addr) -> Option<Ipv4Addr> {
        self.peer_for(addr).map(|p| p.public_ip)
    }
    /// The peer whose IPv6 subnet is the longest prefix containing `dst`.
    #[inline]
    fn peer_for6(&self, _dst: Ipv6Addr) -> Option<PeerRoute6> {
        None
    }
    /// The IPv6 subnet of the first current peer whose public (underlay) address is `public_ip`.
    #[inline]
    fn sender_subnet6(&self, _public_ip: IpAddr) -> Option<Ipv6Net> {
        None
    }
    /// The public address of the peer whose IPv6 subnet contains `addr`.
    #[inline]
    fn owner6(&self, addr: Ipv6Addr) -> Option<IpAddr> {
        self.peer_for6(addr).map(|p| p.public_ip)
    }
}

/// Where a peer is and how it takes packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerRoute {
    pub public_ip: Ipv4Addr,
    pub encap: PeerEncap,
}

/// Where a peer's IPv6 subnet is reached and how it takes its packets. For VXLAN, `PeerEncap::Vxlan`
/// carries the peer's IPv6 VTEP MAC (flannel's `flannel-v6.<VNI>` device, from the lease's
/// `BackendV6Data`), not the IPv4 one; `public_ip` is the underlay address the IPv6 overlay uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerRoute6 {
    pub public_ip: IpAddr,
    pub encap: PeerEncap,
}

/// How a peer wants packets wrapped, as its lease says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerEncap {
    /// VXLAN to the peer's VTEP MAC.
    Vxlan { vtep_mac: MacAddr },
    /// flannel's udp backend.
    Udp,
    /// flannel's wireguard backend (the session is looked up by the peer's public IP).
    WireGuard,
    /// A backend weft cannot speak.
    Other,
}
