//! What the pure packet decisions ask of the route table: the peer for a destination (outbound), and the
//! sender and owner checks (inbound). `routes::RouteSnapshot` implements it; the decisions are generic over
//! it (monomorphised, no `dyn`), so the lookups inline as direct calls would.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

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
}

/// Where a peer is and how it takes packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerRoute {
    pub public_ip: Ipv4Addr,
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
