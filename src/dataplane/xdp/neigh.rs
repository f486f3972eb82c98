//! Next-hop MAC addresses for AF_XDP frames: for each peer underlay address (IPv4, and IPv6 on dual-stack
//! networks), the kernel's route (`ip route get`) and its neighbour entry (ARP or neighbour discovery),
//! refreshed every second and on demand, read by the workers without locks.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use netlink_packet_core::NLM_F_REQUEST;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::host::netlink::{request, Rtnl};
use crate::wire::ethernet::MacAddr;

/// How often every peer's next hop is looked up again.
const REFRESH: Duration = Duration::from_secs(1);

/// Where a frame to one peer goes on the wire.
#[derive(Debug)]
pub struct Hop {
    pub mac: MacAddr,
    /// The kernel's entry is stale: the next packet to this peer should go through the kernel (which then
    /// re-confirms the neighbour); cleared by the worker that does so.
    pub revalidate: AtomicBool,
}

/// Next hops of all peer addresses reachable through the AF_XDP interface; an address missing here is sent
/// to through the kernel's UDP socket of its family (which resolves its neighbour), and asked for.
#[derive(Default)]
pub struct NextHops {
    map: ArcSwap<HashMap<IpAddr, Hop>>,
    wanted: AtomicBool,
}

impl NextHops {
    pub fn load(&self) -> arc_swap::Guard<Arc<HashMap<IpAddr, Hop>>> {
        self.map.load()
    }

    /// A worker met a peer without a next hop: refresh soon.
    pub fn want(&self) {
        self.wanted.store(true, Ordering::Relaxed);
    }

    /// Looks up every address in `peers` through interface `ifindex` and publishes the result.
    pub fn refresh(&self, ifindex: u32, peers: impl IntoIterator<Item = IpAddr>) {
        let mut map = HashMap::new();
        // One netlink socket for the whole round; without one, keep the last answers.
        let Ok(mut nl) = Rtnl::open() else { return };
        for ip in peers {
            let Some(via) = route_via(&mut nl, ip, ifindex) else {
                continue;
            };
            if let Some((mac, state)) = neighbour(&mut nl, ifindex, via) {
                map.insert(
                    ip,
                    Hop {
                        mac,
                        revalidate: AtomicBool::new(state == NeighbourState::Stale),
                    },
                );
            }
        }
        self.map.store(Arc::new(map));
    }

    /// Refreshes every second, or within 50 ms of a worker asking, until `stop` is set.
    pub fn run(&self, ifindex: u32, peers: impl Fn() -> Vec<IpAddr>, stop: &AtomicBool) {
        let mut last = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
            if self.wanted.swap(false, Ordering::Relaxed) || last.elapsed() >= REFRESH {
                self.refresh(ifindex, peers());
                last = Instant::now();
            }
        }
    }
}

/// The address whose MAC a frame to `dst` carries (the gateway, or `dst` itself when on-link), if the
/// kernel routes `dst` out of `ifindex`. An IPv6 gateway is usually link-local: its neighbour entry is
/// on `ifindex` all the same.
fn route_via(nl: &mut Rtnl, dst: IpAddr, ifindex: u32) -> Option<IpAddr> {
    match dst {
        IpAddr::V4(d) => {
            let to = nl.route_to(d).ok()??;
            (to.oif == Some(ifindex)).then(|| to.gateway.unwrap_or(d).into())
        }
        IpAddr::V6(d) => {
            let (oif, gateway) = nl.route6_to(d).ok()??;
            (oif == Some(ifindex)).then(|| gateway.unwrap_or(d).into())
        }
    }
}

/// The kernel's neighbour entry for `ip` on `ifindex`, when it has a usable MAC.
fn neighbour(nl: &mut Rtnl, ifindex: u32, ip: IpAddr) -> Option<(MacAddr, NeighbourState)> {
    let mut msg = NeighbourMessage::default();
    let (family, address) = match ip {
        IpAddr::V4(a) => (AddressFamily::Inet, NeighbourAddress::Inet(a)),
        IpAddr::V6(a) => (AddressFamily::Inet6, NeighbourAddress::Inet6(a)),
    };
    msg.header.family = family;
    msg.header.ifindex = ifindex;
    msg.attributes
        .push(NeighbourAttribute::Destination(address));
    let replies = nl
        .request(RouteNetlinkMessage::GetNeighbour(msg), NLM_F_REQUEST)
        .ok()?;
    for r in replies {
        let RouteNetlinkMessage::NewNeighbour(n) = r else {
            continue;
        };
        if matches!(
            n.header.state,
            NeighbourState::Incomplete | NeighbourState::Failed | NeighbourState::None
        ) {
            return None;
        }
        for a in &n.attributes {
            if let NeighbourAttribute::LinkLayerAddress(b) = a {
                if let Ok(mac) = <[u8; 6]>::try_from(b.as_slice()) {
                    return Some((MacAddr(mac), n.header.state));
                }
            }
        }
    }
    None
}

fn link_attributes(ifindex: u32) -> Vec<LinkAttribute> {
    let mut msg = LinkMessage::default();
    msg.header.index = ifindex;
    let replies = request(RouteNetlinkMessage::GetLink(msg), NLM_F_REQUEST).unwrap_or_default();
    replies
        .into_iter()
        .flat_map(|r| match r {
            RouteNetlinkMessage::NewLink(l) => l.attributes,
            _ => Vec::new(),
        })
        .collect()
}

/// The MAC address of interface `ifindex`.
pub fn link_mac(ifindex: u32) -> Option<MacAddr> {
    link_attributes(ifindex).into_iter().find_map(|a| match a {
        LinkAttribute::Address(b) => <[u8; 6]>::try_from(b.as_slice()).ok().map(MacAddr),
        _ => None,
    })
}

/// How many receive queues interface `ifindex` has (from netlink, so it is right in any namespace).
pub fn rx_queues(ifindex: u32) -> Option<u32> {
    link_attributes(ifindex).into_iter().find_map(|a| match a {
        LinkAttribute::NumRxQueues(n) => Some(n),
        _ => None,
    })
}
