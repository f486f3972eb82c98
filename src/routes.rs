//! The route table subnet -> peer: longest-prefix-match snapshots read without locks, swapped in by the watch.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::control::lease::{LeaseAttrs, SubnetKey};
use crate::wire::ethernet::MacAddr;
use crate::wire::peers::{PeerEncap, PeerRoute, PeerRoute6, PeerTable};

/// How a peer is reached, from its lease's BackendType and BackendData.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum PeerBackend {
    Vxlan {
        vni: u32,
        vtep_mac: MacAddr,
    },
    Udp,
    /// flannel's wireguard backend: the peer's public key and UDP port.
    #[serde(rename = "wireguard")]
    WireGuard {
        public_key: crate::control::key::WgKey,
        port: u16,
    },
    /// flannel's host-gw: routed to its public IP, no encapsulation.
    #[serde(rename = "host-gw")]
    HostGw,
    /// A backend weft cannot talk to, or malformed backend data.
    Other,
}

/// One remote host: the subnet it leased and where to send that subnet's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// Its IPv4 subnet; None on an IPv6-only network (where `public_ip` is flannel's 0.0.0.0).
    pub subnet: Option<Ipv4Net>,
    pub public_ip: Ipv4Addr,
    pub backend: PeerBackend,
    /// The IPv6 half of a dual-stack lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v6: Option<PeerV6>,
}

/// A dual-stack peer's IPv6 subnet and where its IPv6 traffic goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerV6 {
    pub subnet: Ipv6Net,
    /// Its IPv6 underlay address (`PublicIPv6`); None: the lease has none, and IPv6 cannot reach it.
    pub public_ip: Option<Ipv6Addr>,
    /// The MAC of its IPv6 VTEP (vxlan, `BackendV6Data`).
    pub vtep_mac: Option<MacAddr>,
    /// Its IPv6 WireGuard device's key and port (wireguard, `BackendV6Data`; flannel's `flannel-wg-v6`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<crate::control::lease::WireGuardLeaseData>,
}

impl Peer {
    /// The lease key this peer was read from.
    pub fn key(&self) -> SubnetKey {
        SubnetKey {
            v4: self.subnet,
            v6: self.v6.map(|v| v.subnet),
        }
    }

    /// The subnet that names it: its IPv4 subnet, or on an IPv6-only network its IPv6 one.
    pub fn primary(&self) -> IpNet {
        primary(&self.key())
    }
}

/// The subnet that names a lease key's host: the IPv4 half, else the IPv6 half.
fn primary(key: &SubnetKey) -> IpNet {
    match (key.v4, key.v6) {
        (Some(v4), _) => IpNet::V4(v4),
        (None, Some(v6)) => IpNet::V6(v6),
        (None, None) => IpNet::V4(Ipv4Net::default()),
    }
}

impl Peer {
    /// The peer described by a lease.
    pub fn from_lease(key: SubnetKey, attrs: &LeaseAttrs) -> Self {
        let backend = match attrs.backend_type.as_str() {
            // An IPv6-only network's vxlan lease has only BackendV6Data (the same VNI).
            "vxlan" => match attrs.vxlan_data().or(attrs.vxlan_v6_data()) {
                Some(d) => PeerBackend::Vxlan {
                    vni: d.vni,
                    vtep_mac: d.vtep_mac,
                },
                None => PeerBackend::Other,
            },
            // flannel's own udp backend writes no BackendType.
            "udp" | "" => PeerBackend::Udp,
            "host-gw" => PeerBackend::HostGw,
            // An IPv6-only network's wireguard lease has only BackendV6Data (the same key).
            "wireguard" => match attrs.wireguard_data().or(attrs.wireguard_v6_data()) {
                Some(d) => PeerBackend::WireGuard {
                    public_key: d.public_key,
                    port: d.port,
                },
                None => PeerBackend::Other,
            },
            _ => PeerBackend::Other,
        };
        Peer {
            subnet: key.v4,
            public_ip: attrs.public_ip,
            backend,
            v6: key.v6.map(|subnet| PeerV6 {
                subnet,
                public_ip: attrs.public_ipv6,
                vtep_mac: attrs.vxlan_v6_data().map(|d| d.vtep_mac),
                wireguard: attrs.wireguard_v6_data(),
            }),
        }
    }
}

/// A multiplicative hasher for the u32 keys of the LPM maps (keys are masked addresses, not attacker-chosen
/// beyond the leases in etcd, which are trusted).
#[derive(Default, Clone, Copy)]
pub struct U32Hasher(u64);

impl Hasher for U32Hasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.0 = (u64::from(v) ^ 0x9e37_79b9_7f4a_7c15).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        self.0 ^= self.0 >> 29;
    }
}

type U32Map<V> = HashMap<u32, V, BuildHasherDefault<U32Hasher>>;

/// An immutable longest-prefix-match table. Lookup probes one hash map per distinct prefix length,
/// longest first; a flannel network has one length, so a lookup is one probe.
#[derive(Debug, Default)]
pub struct RouteSnapshot {
    peers: Vec<Peer>,
    /// (prefix length, netmask, masked address -> index into `peers`), longest prefix first.
    levels: Vec<(u8, u32, U32Map<u32>)>,
    /// public IP -> index of the first peer with it.
    by_ip: U32Map<u32>,
    /// The IPv6 halves of dual-stack peers: (prefix length, netmask, masked address -> index), longest
    /// prefix first.
    levels6: Vec<(u8, u128, HashMap<u128, u32>)>,
    /// IPv6 public address -> index of the first peer with it.
    by_ip6: HashMap<Ipv6Addr, u32>,
}

impl RouteSnapshot {
    /// Builds a snapshot from peers; a later peer for the same subnet replaces an earlier one.
    pub fn new(peers: impl IntoIterator<Item = Peer>) -> Self {
        let mut by_subnet: BTreeMap<IpNet, Peer> = BTreeMap::new();
        for p in peers {
            by_subnet.insert(p.primary().trunc(), p);
        }
        let peers: Vec<Peer> = by_subnet.into_values().collect();
        let mut levels: Vec<(u8, u32, U32Map<u32>)> = Vec::new();
        for (i, p) in peers.iter().enumerate() {
            // IPv6-only peers have no IPv4 subnet or address.
            let Some(subnet) = p.subnet else { continue };
            let len = subnet.prefix_len();
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            let level = match levels.iter_mut().position(|l| l.0 == len) {
                Some(pos) => &mut levels[pos],
                None => {
                    levels.push((len, mask, U32Map::default()));
                    levels.last_mut().expect("just pushed")
                }
            };
            level.2.insert(u32::from(subnet.network()), i as u32);
        }
        levels.sort_by_key(|l| std::cmp::Reverse(l.0));
        let mut by_ip = U32Map::default();
        for (i, p) in peers.iter().enumerate() {
            if p.subnet.is_some() {
                by_ip.entry(u32::from(p.public_ip)).or_insert(i as u32);
            }
        }
        let mut levels6: Vec<(u8, u128, HashMap<u128, u32>)> = Vec::new();
        let mut by_ip6 = HashMap::new();
        for (i, p) in peers.iter().enumerate() {
            let Some(v6) = p.v6 else { continue };
            let len = v6.subnet.prefix_len();
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            let level = match levels6.iter_mut().position(|l| l.0 == len) {
                Some(pos) => &mut levels6[pos],
                None => {
                    levels6.push((len, mask, HashMap::new()));
                    levels6.last_mut().expect("just pushed")
                }
            };
            level
                .2
                .entry(u128::from(v6.subnet.network()))
                .or_insert(i as u32);
            if let Some(ip6) = v6.public_ip {
                by_ip6.entry(ip6).or_insert(i as u32);
            }
        }
        levels6.sort_by_key(|l| std::cmp::Reverse(l.0));
        RouteSnapshot {
            peers,
            levels,
            by_ip,
            levels6,
            by_ip6,
        }
    }

    /// The peer whose IPv6 subnet is the longest prefix containing `dst`.
    #[inline]
    pub fn lookup6(&self, dst: Ipv6Addr) -> Option<&Peer> {
        let a = u128::from(dst);
        for (_, mask, map) in &self.levels6 {
            if let Some(&i) = map.get(&(a & mask)) {
                return Some(&self.peers[i as usize]);
            }
        }
        None
    }

    /// The peer with this IPv6 public address, if any.
    #[inline]
    pub fn by_public_ip6(&self, ip: Ipv6Addr) -> Option<&Peer> {
        self.by_ip6.get(&ip).map(|&i| &self.peers[i as usize])
    }

    /// The peer whose subnet is the longest prefix containing `dst`.
    #[inline]
    pub fn lookup(&self, dst: Ipv4Addr) -> Option<&Peer> {
        let a = u32::from(dst);
        for (_, mask, map) in &self.levels {
            if let Some(&i) = map.get(&(a & mask)) {
                return Some(&self.peers[i as usize]);
            }
        }
        None
    }

    /// The peer that holds exactly `subnet`.
    pub fn get(&self, subnet: &Ipv4Net) -> Option<&Peer> {
        self.lookup(subnet.network())
            .filter(|p| p.subnet == Some(*subnet))
    }

    /// The peer with this public IP, if any.
    #[inline]
    pub fn by_public_ip(&self, ip: Ipv4Addr) -> Option<&Peer> {
        self.by_ip
            .get(&u32::from(ip))
            .map(|&i| &self.peers[i as usize])
    }

    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}

/// The inbound checks' view of the table: senders by public IP, address owners by longest prefix.
/// The packet decisions' view of the table (see `wire::peers`).
impl PeerTable for RouteSnapshot {
    #[inline]
    fn peer_for(&self, dst: Ipv4Addr) -> Option<PeerRoute> {
        self.lookup(dst).map(|p| PeerRoute {
            public_ip: p.public_ip,
            encap: match p.backend {
                PeerBackend::Vxlan { vtep_mac, .. } => PeerEncap::Vxlan { vtep_mac },
                PeerBackend::Udp => PeerEncap::Udp,
                PeerBackend::WireGuard { .. } => PeerEncap::WireGuard,
                PeerBackend::HostGw | PeerBackend::Other => PeerEncap::Other,
            },
        })
    }

    #[inline]
    fn sender_subnet(&self, public_ip: Ipv4Addr) -> Option<Ipv4Net> {
        self.by_public_ip(public_ip).and_then(|p| p.subnet)
    }

    #[inline]
    fn owner(&self, addr: Ipv4Addr) -> Option<Ipv4Addr> {
        self.lookup(addr).map(|p| p.public_ip)
    }

    /// A dual-stack peer's IPv6 subnet is reached at its IPv6 public address (flannel's IPv6 VTEP is
    /// bound there), VXLAN to the MAC of its IPv6 VTEP; a lease without a PublicIPv6 has no IPv6 route.
    #[inline]
    fn peer_for6(&self, dst: Ipv6Addr) -> Option<PeerRoute6> {
        let p = self.lookup6(dst)?;
        let v6 = p.v6?;
        Some(PeerRoute6 {
            public_ip: IpAddr::V6(v6.public_ip?),
            encap: match (p.backend, v6.vtep_mac) {
                (PeerBackend::Vxlan { .. }, Some(vtep_mac)) => PeerEncap::Vxlan { vtep_mac },
                (PeerBackend::Udp, _) => PeerEncap::Udp,
                (PeerBackend::WireGuard { .. }, _) if v6.wireguard.is_some() => {
                    PeerEncap::WireGuard
                }
                _ => PeerEncap::Other,
            },
        })
    }

    /// IPv6 inner packets come from a peer's IPv6 public address, as they are sent to it.
    #[inline]
    fn sender_subnet6(&self, public_ip: IpAddr) -> Option<Ipv6Net> {
        match public_ip {
            IpAddr::V6(a) => self.by_public_ip6(a)?.v6.map(|v| v.subnet),
            IpAddr::V4(_) => None,
        }
    }

    #[inline]
    fn owner6(&self, addr: Ipv6Addr) -> Option<IpAddr> {
        Some(IpAddr::V6(self.lookup6(addr)?.v6?.public_ip?))
    }
}

/// The shared route table: readers `load()` a snapshot without locking; the control plane applies
/// changes under a mutex of its own and publishes a fresh snapshot, never pausing readers. Every published
/// change bumps a generation that [`RouteTable::subscribe`]rs wait on (the kernel backend reconciles on it).
pub struct RouteTable {
    current: ArcSwap<RouteSnapshot>,
    /// Peers by the subnet that names them (IPv4, or IPv6 on an IPv6-only network), each with the lease
    /// key it was read from.
    master: Mutex<BTreeMap<IpNet, (SubnetKey, Peer)>>,
    generation: tokio::sync::watch::Sender<u64>,
}

impl Default for RouteTable {
    fn default() -> Self {
        RouteTable {
            current: ArcSwap::default(),
            master: Mutex::default(),
            generation: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl RouteTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// A receiver that sees every change published after this call (`changed().await`).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The current snapshot (lock-free), owned.
    #[inline]
    pub fn load(&self) -> Arc<RouteSnapshot> {
        self.current.load_full()
    }

    /// The current snapshot for a short borrow on the hot path (lock-free, no reference-count traffic).
    #[inline]
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<RouteSnapshot>> {
        self.current.load()
    }

    /// Adds or replaces the peer for its subnet. Returns true if anything changed.
    pub fn upsert(&self, peer: Peer) -> bool {
        self.upsert_from(peer.key(), peer)
    }

    /// As `upsert`, for a peer read from lease key `key` (which may name an IPv6 half the peer does not
    /// carry: the IPv6 half of a key on an IPv4-only network).
    pub fn upsert_from(&self, key: SubnetKey, peer: Peer) -> bool {
        let mut m = self.master.lock().expect("route table lock poisoned");
        if m.get(&peer.primary()) == Some(&(key, peer)) {
            return false;
        }
        m.insert(peer.primary(), (key, peer));
        self.publish(&m);
        true
    }

    /// Removes the peer read from lease key `key`. Returns the removed peer. A peer holding the same IPv4
    /// subnet under another key (its lease just gained or changed its IPv6 half) stays.
    pub fn remove(&self, key: &SubnetKey) -> Option<Peer> {
        let mut m = self.master.lock().expect("route table lock poisoned");
        if m.get(&primary(key)).map(|e| e.0) != Some(*key) {
            return None;
        }
        let (_, old) = m.remove(&primary(key))?;
        self.publish(&m);
        Some(old)
    }

    /// Replaces the whole table (after a re-list); returns (added or changed, removed) counts.
    pub fn replace_all(&self, peers: impl IntoIterator<Item = Peer>) -> (usize, usize) {
        self.replace_all_from(peers.into_iter().map(|p| (p.key(), p)))
    }

    /// As `replace_all`, each peer with the lease key it was read from (see `upsert_from`).
    pub fn replace_all_from(
        &self,
        peers: impl IntoIterator<Item = (SubnetKey, Peer)>,
    ) -> (usize, usize) {
        let mut m = self.master.lock().expect("route table lock poisoned");
        let new: BTreeMap<IpNet, (SubnetKey, Peer)> = peers
            .into_iter()
            .map(|(k, p)| (p.primary(), (k, p)))
            .collect();
        let changed = new.iter().filter(|(k, v)| m.get(k) != Some(v)).count();
        let removed = m.keys().filter(|k| !new.contains_key(k)).count();
        *m = new;
        self.publish(&m);
        (changed, removed)
    }

    fn publish(&self, m: &BTreeMap<IpNet, (SubnetKey, Peer)>) {
        self.current
            .store(Arc::new(RouteSnapshot::new(m.values().map(|e| e.1))));
        self.generation.send_modify(|g| *g += 1);
    }
}

#[cfg(test)]
mod tests6 {
    use super::*;

    #[test]
    fn ipv6_halves_are_found_by_longest_prefix_and_public_address() {
        let peer = |v4: &str, ip: [u8; 4], v6: Option<(&str, &str)>| Peer {
            subnet: Some(v4.parse().unwrap()),
            public_ip: Ipv4Addr::from(ip),
            backend: PeerBackend::Udp,
            v6: v6.map(|(s, a)| PeerV6 {
                subnet: s.parse().unwrap(),
                public_ip: Some(a.parse().unwrap()),
                vtep_mac: None,
                wireguard: None,
            }),
        };
        let t = RouteSnapshot::new([
            peer(
                "10.5.1.0/24",
                [1, 1, 1, 1],
                Some(("fc00:5:0:1::/64", "fd00::1")),
            ),
            peer(
                "10.5.2.0/24",
                [2, 2, 2, 2],
                Some(("fc00:5:0:2::/64", "fd00::2")),
            ),
            peer("10.5.3.0/24", [3, 3, 3, 3], None),
        ]);
        let a = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        assert_eq!(
            t.lookup6(a("fc00:5:0:2::9")).unwrap().public_ip,
            Ipv4Addr::new(2, 2, 2, 2)
        );
        assert_eq!(
            t.lookup6(a("fc00:5:0:1:ffff::1"))
                .unwrap()
                .subnet
                .unwrap()
                .to_string(),
            "10.5.1.0/24"
        );
        assert!(t.lookup6(a("fc00:5:0:3::1")).is_none());
        assert!(t.lookup6(a("::1")).is_none());
        assert_eq!(
            t.by_public_ip6(a("fd00::2"))
                .unwrap()
                .subnet
                .unwrap()
                .to_string(),
            "10.5.2.0/24"
        );
        assert!(t.by_public_ip6(a("fd00::3")).is_none());
        // IPv4 lookups are unchanged.
        assert_eq!(
            t.lookup(Ipv4Addr::new(10, 5, 3, 7)).unwrap().public_ip,
            Ipv4Addr::new(3, 3, 3, 3)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(s: &str, ip: [u8; 4]) -> Peer {
        Peer {
            v6: None,
            subnet: Some(s.parse().unwrap()),
            public_ip: Ipv4Addr::from(ip),
            backend: PeerBackend::Udp,
        }
    }

    #[test]
    fn the_outbound_view_says_where_a_peer_is_and_how_it_takes_packets() {
        let mac = MacAddr([2, 0, 0, 0, 0, 2]);
        let r = RouteSnapshot::new([
            Peer {
                v6: None,
                backend: PeerBackend::Vxlan {
                    vni: 1,
                    vtep_mac: mac,
                },
                ..peer("10.5.2.0/24", [192, 0, 2, 2])
            },
            peer("10.5.3.0/24", [192, 0, 2, 3]),
            Peer {
                v6: None,
                backend: PeerBackend::Other,
                ..peer("10.5.4.0/24", [192, 0, 2, 4])
            },
        ]);
        let route = |a: [u8; 4]| r.peer_for(Ipv4Addr::from(a));
        let want = |last: u8, encap| {
            Some(PeerRoute {
                public_ip: Ipv4Addr::new(192, 0, 2, last),
                encap,
            })
        };
        assert_eq!(
            route([10, 5, 2, 9]),
            want(2, PeerEncap::Vxlan { vtep_mac: mac })
        );
        assert_eq!(route([10, 5, 3, 9]), want(3, PeerEncap::Udp));
        assert_eq!(route([10, 5, 4, 9]), want(4, PeerEncap::Other));
        assert_eq!(route([10, 5, 5, 9]), None);
    }

    #[test]
    fn longest_prefix_wins() {
        let t = RouteSnapshot::new([
            peer("10.0.0.0/8", [1, 0, 0, 1]),
            peer("10.5.0.0/16", [1, 0, 0, 2]),
            peer("10.5.7.0/24", [1, 0, 0, 3]),
            peer("0.0.0.0/0", [1, 0, 0, 4]),
        ]);
        let ip = |a: &str| t.lookup(a.parse().unwrap()).unwrap().public_ip.octets()[3];
        assert_eq!(ip("10.5.7.200"), 3);
        assert_eq!(ip("10.5.8.1"), 2);
        assert_eq!(ip("10.6.0.1"), 1);
        assert_eq!(ip("192.168.1.1"), 4);
    }

    #[test]
    fn answers_the_inbound_checks() {
        let t = RouteSnapshot::new([
            peer("10.5.2.0/24", [192, 0, 2, 2]),
            peer("10.5.3.0/24", [192, 0, 2, 3]),
            peer("10.5.4.0/24", [192, 0, 2, 2]),
        ]);
        let sender = t.sender_subnet(Ipv4Addr::new(192, 0, 2, 2));
        assert_eq!(
            sender,
            Some("10.5.2.0/24".parse().unwrap()),
            "the first lease"
        );
        assert_eq!(t.sender_subnet(Ipv4Addr::new(192, 0, 2, 99)), None);
        assert_eq!(
            t.owner(Ipv4Addr::new(10, 5, 4, 9)),
            Some(Ipv4Addr::new(192, 0, 2, 2))
        );
        assert_eq!(t.owner(Ipv4Addr::new(8, 8, 8, 8)), None);
    }

    #[test]
    fn miss_and_exact_get() {
        let t = RouteSnapshot::new([peer("10.5.7.0/24", [1, 0, 0, 3])]);
        assert!(t.lookup("10.5.8.1".parse().unwrap()).is_none());
        assert!(t.get(&"10.5.7.0/24".parse().unwrap()).is_some());
        assert!(t.get(&"10.5.7.0/25".parse().unwrap()).is_none());
        assert_eq!(
            t.by_public_ip(Ipv4Addr::new(1, 0, 0, 3))
                .unwrap()
                .subnet
                .unwrap()
                .prefix_len(),
            24
        );
    }

    #[test]
    fn many_routes() {
        let peers = (0..65536u32).map(|i| Peer {
            v6: None,
            subnet: Some(Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 | (i << 8)), 24).unwrap()),
            public_ip: Ipv4Addr::from(i),
            backend: PeerBackend::Udp,
        });
        let t = RouteSnapshot::new(peers);
        assert_eq!(t.len(), 65536);
        for i in [0u32, 1, 255, 4096, 65535] {
            let dst = Ipv4Addr::from(0x0a00_0000 | (i << 8) | 77);
            assert_eq!(t.lookup(dst).unwrap().public_ip, Ipv4Addr::from(i));
        }
    }

    #[test]
    fn table_updates_publish_new_snapshots_and_old_ones_stay_valid() {
        let t = RouteTable::new();
        let before = t.load();
        assert!(t.upsert(peer("10.5.1.0/24", [1, 1, 1, 1])));
        assert!(
            !t.upsert(peer("10.5.1.0/24", [1, 1, 1, 1])),
            "same peer is no change"
        );
        assert!(t.upsert(peer("10.5.2.0/24", [2, 2, 2, 2])));
        assert!(before.is_empty());
        assert_eq!(t.load().len(), 2);
        assert!(t.remove(&"10.5.1.0/24".parse().unwrap()).is_some());
        assert!(t.remove(&"10.5.1.0/24".parse().unwrap()).is_none());
        assert_eq!(t.load().len(), 1);
        let (changed, removed) = t.replace_all([peer("10.5.3.0/24", [3, 3, 3, 3])]);
        assert_eq!((changed, removed), (1, 1));
        assert!(t.load().lookup("10.5.3.9".parse().unwrap()).is_some());
    }

    #[test]
    fn peer_from_leases() {
        let v = LeaseAttrs::vxlan(
            Ipv4Addr::new(1, 2, 3, 4),
            1,
            "c6:d2:32:6f:8f:44".parse().unwrap(),
        );
        let p = Peer::from_lease("10.5.1.0/24".parse().unwrap(), &v);
        assert!(matches!(p.backend, PeerBackend::Vxlan { vni: 1, .. }));
        let f = LeaseAttrs::from_json(br#"{"PublicIP":"1.2.3.4"}"#).unwrap();
        assert_eq!(
            Peer::from_lease("10.5.1.0/24".parse().unwrap(), &f).backend,
            PeerBackend::Udp
        );
        let h =
            LeaseAttrs::from_json(br#"{"PublicIP":"1.2.3.4","BackendType":"host-gw"}"#).unwrap();
        assert_eq!(
            Peer::from_lease("10.5.1.0/24".parse().unwrap(), &h).backend,
            PeerBackend::HostGw
        );
        let o = LeaseAttrs::from_json(br#"{"PublicIP":"1.2.3.4","BackendType":"ipip"}"#).unwrap();
        assert_eq!(
            Peer::from_lease("10.5.1.0/24".parse().unwrap(), &o).backend,
            PeerBackend::Other
        );
    }
}
