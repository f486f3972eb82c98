//! The kernel VXLAN backend's desired state (neighbours, FDB entries, routes) computed from the route
//! table, and the difference to what the kernel has: pure, so the reconciler's logic is unit-tested. One
//! shape for both devices: IPv4 on `flannel.<VNI>`, IPv6 on `flannel-v6.<VNI>` (a dual-stack network).

use std::collections::BTreeSet;
use std::fmt::{Debug, Display};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

use crate::routes::{Peer, PeerBackend};
use crate::wire::ethernet::MacAddr;

/// The address family a VXLAN device carries: IPv4 (`flannel.<VNI>`) or IPv6 (`flannel-v6.<VNI>`).
pub trait Family: Copy + Ord + Debug + Display + Into<IpAddr> + Send + Sync + 'static {
    /// The family's subnets.
    type Net: Copy + Ord + Debug + Display + Send + Sync + 'static;
    /// The prefix length of a single address: the device's own address is `<subnet network>/<this>`.
    const HOST_PREFIX: u8;
    /// `ip` if it is of this family.
    fn of(ip: IpAddr) -> Option<Self>;
    /// An address from its raw bytes (the kernel reports FDB destinations so).
    fn from_raw(b: &[u8]) -> Option<Self>;
    /// The subnet `addr/len`, if `len` is valid.
    fn net(addr: Self, len: u8) -> Option<Self::Net>;
    /// The entries the device should hold for `peers` ([`desired`] or [`desired6`]).
    fn desired(peers: &[Peer], vni: u32) -> Entries<Self>;
    /// The peer's subnet of this family, if it has one.
    fn subnet_of(p: &Peer) -> Option<Self::Net>;
}

impl Family for Ipv4Addr {
    type Net = Ipv4Net;
    const HOST_PREFIX: u8 = 32;
    fn of(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V4(v) => Some(v),
            IpAddr::V6(_) => None,
        }
    }
    fn from_raw(b: &[u8]) -> Option<Self> {
        <[u8; 4]>::try_from(b).ok().map(Ipv4Addr::from)
    }
    fn net(addr: Self, len: u8) -> Option<Ipv4Net> {
        Ipv4Net::new(addr, len).ok()
    }
    fn desired(peers: &[Peer], vni: u32) -> VxlanEntries {
        desired(peers, vni)
    }
    fn subnet_of(p: &Peer) -> Option<Ipv4Net> {
        p.subnet
    }
}

impl Family for Ipv6Addr {
    type Net = Ipv6Net;
    const HOST_PREFIX: u8 = 128;
    fn of(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V6(v) => Some(v),
            IpAddr::V4(_) => None,
        }
    }
    fn from_raw(b: &[u8]) -> Option<Self> {
        <[u8; 16]>::try_from(b).ok().map(Ipv6Addr::from)
    }
    fn net(addr: Self, len: u8) -> Option<Ipv6Net> {
        Ipv6Net::new(addr, len).ok()
    }
    fn desired(peers: &[Peer], vni: u32) -> VxlanEntries6 {
        desired6(peers, vni)
    }
    fn subnet_of(p: &Peer) -> Option<Ipv6Net> {
        p.v6.map(|v| v.subnet)
    }
}

/// What flanneld's vxlan backend programs on one VXLAN device for its peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entries<A: Family> {
    /// Neighbours (ARP or NDP): `<peer subnet network address> lladdr <peer VTEP MAC> nud permanent`.
    pub neighbours: BTreeSet<(A, MacAddr)>,
    /// FDB entries: `<peer VTEP MAC> dst <peer public IP> self permanent`.
    pub fdb: BTreeSet<(MacAddr, A)>,
    /// Routes: `<peer subnet> via <peer subnet network address> onlink`.
    pub routes: BTreeSet<(A::Net, A)>,
}

impl<A: Family> Default for Entries<A> {
    fn default() -> Self {
        Entries {
            neighbours: BTreeSet::new(),
            fdb: BTreeSet::new(),
            routes: BTreeSet::new(),
        }
    }
}

/// The entries of `flannel.<VNI>`.
pub type VxlanEntries = Entries<Ipv4Addr>;
/// The entries of `flannel-v6.<VNI>`.
pub type VxlanEntries6 = Entries<Ipv6Addr>;

/// The entries `flannel.<VNI>` should hold for `peers` (only vxlan peers of our VNI can be reached).
pub fn desired(peers: &[Peer], vni: u32) -> VxlanEntries {
    let mut d = VxlanEntries::default();
    for p in peers {
        if let PeerBackend::Vxlan { vni: v, vtep_mac } = p.backend {
            // IPv6-only peers have no IPv4 half.
            let Some(subnet) = p.subnet.filter(|_| v == vni) else {
                continue;
            };
            let gw = subnet.network();
            d.neighbours.insert((gw, vtep_mac));
            d.fdb.insert((vtep_mac, p.public_ip));
            d.routes.insert((subnet, gw));
        }
    }
    d
}

/// The entries `flannel-v6.<VNI>` should hold for `peers`: the IPv6 halves of the dual-stack vxlan peers
/// of our VNI, through their IPv6 VTEP MAC (`BackendV6Data`) and their IPv6 underlay address
/// (`PublicIPv6`); a peer lacking either cannot be reached over IPv6 and gets nothing.
pub fn desired6(peers: &[Peer], vni: u32) -> VxlanEntries6 {
    let mut d = VxlanEntries6::default();
    for p in peers {
        let (PeerBackend::Vxlan { vni: v, .. }, Some(v6)) = (p.backend, p.v6) else {
            continue;
        };
        let (Some(public_ip), Some(mac)) = (v6.public_ip, v6.vtep_mac) else {
            continue;
        };
        if v != vni {
            continue;
        }
        let gw = v6.subnet.network();
        d.neighbours.insert((gw, mac));
        d.fdb.insert((mac, public_ip));
        d.routes.insert((v6.subnet, gw));
    }
    d
}

/// One change to bring the kernel to the desired state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change<A: Family> {
    AddNeighbour(A, MacAddr),
    AddFdb(MacAddr, A),
    AddRoute(A::Net, A),
    DelRoute(A::Net, A),
    DelFdb(MacAddr, A),
    DelNeighbour(A, MacAddr),
}

/// The changes from `actual` to `want`, in flannel's order: removals route-first, additions route-last,
/// so a route never points at a missing neighbour.
pub fn diff<A: Family>(want: &Entries<A>, actual: &Entries<A>) -> Vec<Change<A>> {
    let mut out = Vec::new();
    out.extend(
        actual
            .routes
            .difference(&want.routes)
            .map(|&(n, g)| Change::DelRoute(n, g)),
    );
    out.extend(
        actual
            .fdb
            .difference(&want.fdb)
            .map(|&(m, ip)| Change::DelFdb(m, ip)),
    );
    out.extend(
        actual
            .neighbours
            .difference(&want.neighbours)
            .map(|&(ip, m)| Change::DelNeighbour(ip, m)),
    );
    out.extend(
        want.neighbours
            .difference(&actual.neighbours)
            .map(|&(ip, m)| Change::AddNeighbour(ip, m)),
    );
    out.extend(
        want.fdb
            .difference(&actual.fdb)
            .map(|&(m, ip)| Change::AddFdb(m, ip)),
    );
    out.extend(
        want.routes
            .difference(&actual.routes)
            .map(|&(n, g)| Change::AddRoute(n, g)),
    );
    out
}

/// The settings of the VXLAN device itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceSpec {
    pub vni: u32,
    /// The underlay address the device sends from: IPv4 for `flannel.<VNI>`, IPv6 for `flannel-v6.<VNI>`.
    pub local: IpAddr,
    pub port: u16,
    pub underlay_index: u32,
    pub mac: MacAddr,
    pub mtu: u32,
}

/// What the kernel reports of an existing device of that name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeviceSeen {
    pub is_vxlan: bool,
    pub vni: Option<u32>,
    pub local: Option<IpAddr>,
    pub port: Option<u16>,
    pub learning: Option<bool>,
    pub mac: Option<MacAddr>,
    pub mtu: Option<u32>,
}

/// What to do about the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceAction {
    /// Absent: create it.
    Create,
    /// Wrong kind or VXLAN settings that cannot be changed in place: delete and create.
    Recreate,
    /// Right device, but MAC or MTU differ: set them.
    Adjust,
    /// Already as wanted.
    Keep,
}

/// Compares an existing device (if any) with the spec, as flannel does: reuse when the settings match.
pub fn device_action(seen: Option<&DeviceSeen>, spec: &DeviceSpec) -> DeviceAction {
    let Some(s) = seen else {
        return DeviceAction::Create;
    };
    let same = s.is_vxlan
        && s.vni == Some(spec.vni)
        && s.local == Some(spec.local)
        && s.port.unwrap_or(spec.port) == spec.port
        && s.learning != Some(true);
    if !same {
        DeviceAction::Recreate
    } else if s.mac != Some(spec.mac) || s.mtu != Some(spec.mtu) {
        DeviceAction::Adjust
    } else {
        DeviceAction::Keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(s: &str, ip: [u8; 4], mac: u8, vni: u32) -> Peer {
        Peer {
            v6: None,
            subnet: Some(s.parse().unwrap()),
            public_ip: Ipv4Addr::from(ip),
            backend: PeerBackend::Vxlan {
                vni,
                vtep_mac: MacAddr([2, 0, 0, 0, 0, mac]),
            },
        }
    }

    #[test]
    fn desired_entries_follow_flannel() {
        let d = desired(
            &[
                peer("10.5.2.0/24", [192, 0, 2, 2], 2, 1),
                peer("10.5.3.0/24", [192, 0, 2, 3], 3, 7),
                Peer {
                    v6: None,
                    subnet: Some("10.5.4.0/24".parse().unwrap()),
                    public_ip: Ipv4Addr::new(192, 0, 2, 4),
                    backend: PeerBackend::Udp,
                },
            ],
            1,
        );
        let gw = Ipv4Addr::new(10, 5, 2, 0);
        let mac = MacAddr([2, 0, 0, 0, 0, 2]);
        assert_eq!(d.neighbours, [(gw, mac)].into());
        assert_eq!(d.fdb, [(mac, Ipv4Addr::new(192, 0, 2, 2))].into());
        assert_eq!(d.routes, [("10.5.2.0/24".parse().unwrap(), gw)].into());
    }

    #[test]
    fn diff_orders_removals_then_additions() {
        let old = desired(&[peer("10.5.2.0/24", [192, 0, 2, 2], 2, 1)], 1);
        let new = desired(&[peer("10.5.3.0/24", [192, 0, 2, 3], 3, 1)], 1);
        let c = diff(&new, &old);
        assert_eq!(c.len(), 6);
        assert!(matches!(c[0], Change::DelRoute(..)));
        assert!(matches!(c[1], Change::DelFdb(..)));
        assert!(matches!(c[2], Change::DelNeighbour(..)));
        assert!(matches!(c[3], Change::AddNeighbour(..)));
        assert!(matches!(c[4], Change::AddFdb(..)));
        assert!(matches!(c[5], Change::AddRoute(..)));
        assert!(diff(&new, &new).is_empty());
        // A peer that changed its VTEP MAC: old FDB/neighbour out, new in, route untouched.
        let moved = desired(&[peer("10.5.3.0/24", [192, 0, 2, 3], 9, 1)], 1);
        let c = diff(&moved, &new);
        assert_eq!(c.len(), 4);
        assert!(!c
            .iter()
            .any(|x| matches!(x, Change::AddRoute(..) | Change::DelRoute(..))));
    }

    fn dual(s4: &str, s6: &str, ip6: Option<&str>, mac6: Option<u8>, vni: u32) -> Peer {
        Peer {
            v6: Some(crate::routes::PeerV6 {
                subnet: s6.parse().unwrap(),
                public_ip: ip6.map(|a| a.parse().unwrap()),
                vtep_mac: mac6.map(|m| MacAddr([2, 0, 0, 0, 6, m])),
                wireguard: None,
            }),
            ..peer(s4, [192, 0, 2, 9], 9, vni)
        }
    }

    #[test]
    fn desired_v6_entries_follow_flannel() {
        let peers = [
            dual(
                "10.5.2.0/24",
                "fc00:5:0:2::/64",
                Some("fd00::2"),
                Some(2),
                1,
            ),
            // Another VNI, no PublicIPv6, no IPv6 VTEP MAC, IPv4-only: none reachable over IPv6.
            dual(
                "10.5.3.0/24",
                "fc00:5:0:3::/64",
                Some("fd00::3"),
                Some(3),
                7,
            ),
            dual("10.5.4.0/24", "fc00:5:0:4::/64", None, Some(4), 1),
            dual("10.5.5.0/24", "fc00:5:0:5::/64", Some("fd00::5"), None, 1),
            peer("10.5.6.0/24", [192, 0, 2, 6], 6, 1),
        ];
        let d = desired6(&peers, 1);
        let gw: Ipv6Addr = "fc00:5:0:2::".parse().unwrap();
        let mac = MacAddr([2, 0, 0, 0, 6, 2]);
        assert_eq!(d.neighbours, [(gw, mac)].into());
        assert_eq!(d.fdb, [(mac, "fd00::2".parse().unwrap())].into());
        assert_eq!(d.routes, [("fc00:5:0:2::/64".parse().unwrap(), gw)].into());
        // The IPv4 device is unchanged by the IPv6 halves: every vxlan peer of VNI 1.
        assert_eq!(desired(&peers, 1).routes.len(), 4);
        assert_eq!(<Ipv6Addr as Family>::desired(&peers, 1), d);
    }

    #[test]
    fn v6_diff_removes_a_gone_lease_in_reverse() {
        let a = dual(
            "10.5.2.0/24",
            "fc00:5:0:2::/64",
            Some("fd00::2"),
            Some(2),
            1,
        );
        let b = dual(
            "10.5.3.0/24",
            "fc00:5:0:3::/64",
            Some("fd00::3"),
            Some(3),
            1,
        );
        let both = desired6(&[a, b], 1);
        let c = diff(&desired6(&[a], 1), &both);
        let gw: Ipv6Addr = "fc00:5:0:3::".parse().unwrap();
        let mac = MacAddr([2, 0, 0, 0, 6, 3]);
        assert_eq!(
            c,
            vec![
                Change::DelRoute("fc00:5:0:3::/64".parse().unwrap(), gw),
                Change::DelFdb(mac, "fd00::3".parse().unwrap()),
                Change::DelNeighbour(gw, mac),
            ]
        );
        // A peer whose PublicIPv6 moved: only its FDB entry changes.
        let moved = dual(
            "10.5.3.0/24",
            "fc00:5:0:3::/64",
            Some("fd00::33"),
            Some(3),
            1,
        );
        let c = diff(&desired6(&[a, moved], 1), &both);
        assert_eq!(
            c,
            vec![
                Change::DelFdb(mac, "fd00::3".parse().unwrap()),
                Change::AddFdb(mac, "fd00::33".parse().unwrap()),
            ]
        );
    }

    #[test]
    fn family_conversions() {
        assert_eq!(
            Ipv4Addr::from_raw(&[10, 0, 0, 1]),
            Some(Ipv4Addr::new(10, 0, 0, 1))
        );
        assert_eq!(Ipv4Addr::from_raw(&[0; 16]), None);
        assert_eq!(Ipv6Addr::from_raw(&[0; 16]), Some(Ipv6Addr::UNSPECIFIED));
        assert_eq!(Ipv6Addr::from_raw(&[0; 4]), None);
        assert_eq!(Ipv6Addr::of(Ipv4Addr::LOCALHOST.into()), None);
        assert_eq!(Ipv4Addr::net(Ipv4Addr::UNSPECIFIED, 33), None);
        assert_eq!(
            Ipv6Addr::net("fc00:5:0:7::".parse().unwrap(), 64),
            "fc00:5:0:7::/64".parse().ok()
        );
    }

    #[test]
    fn device_reuse_rules() {
        let spec = DeviceSpec {
            vni: 1,
            local: Ipv4Addr::new(192, 0, 2, 1).into(),
            port: 8472,
            underlay_index: 2,
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            mtu: 1450,
        };
        assert_eq!(device_action(None, &spec), DeviceAction::Create);
        let good = DeviceSeen {
            is_vxlan: true,
            vni: Some(1),
            local: Some(spec.local),
            port: Some(8472),
            learning: Some(false),
            mac: Some(spec.mac),
            mtu: Some(1450),
        };
        assert_eq!(device_action(Some(&good), &spec), DeviceAction::Keep);
        assert_eq!(
            device_action(
                Some(&DeviceSeen {
                    mtu: Some(1400),
                    ..good
                }),
                &spec
            ),
            DeviceAction::Adjust
        );
        assert_eq!(
            device_action(
                Some(&DeviceSeen {
                    vni: Some(2),
                    ..good
                }),
                &spec
            ),
            DeviceAction::Recreate
        );
        assert_eq!(
            device_action(
                Some(&DeviceSeen {
                    is_vxlan: false,
                    ..good
                }),
                &spec
            ),
            DeviceAction::Recreate
        );
        assert_eq!(
            device_action(
                Some(&DeviceSeen {
                    learning: Some(true),
                    ..good
                }),
                &spec
            ),
            DeviceAction::Recreate
        );
        // flannel-v6.<VNI>: its local is the IPv6 underlay address; an IPv4 local is another device.
        let spec6 = DeviceSpec {
            local: "fd00:250::1".parse::<Ipv6Addr>().unwrap().into(),
            ..spec
        };
        let good6 = DeviceSeen {
            local: Some(spec6.local),
            ..good
        };
        assert_eq!(device_action(Some(&good6), &spec6), DeviceAction::Keep);
        assert_eq!(device_action(Some(&good), &spec6), DeviceAction::Recreate);
    }
}
