//! The kernel VXLAN backend's desired state (neighbours, FDB entries, routes) computed from the route
//! table, and the difference to what the kernel has: pure, so the reconciler's logic is unit-tested.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::routes::{Peer, PeerBackend};
use crate::wire::ethernet::MacAddr;

/// What flanneld's vxlan backend programs on `flannel.<VNI>` for its peers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VxlanEntries {
    /// ARP entries: `<peer subnet>.0 lladdr <peer VTEP MAC> nud permanent`.
    pub neighbours: BTreeSet<(Ipv4Addr, MacAddr)>,
    /// FDB entries: `<peer VTEP MAC> dst <peer public IP> self permanent`.
    pub fdb: BTreeSet<(MacAddr, Ipv4Addr)>,
    /// Routes: `<peer subnet> via <peer subnet>.0 onlink`.
    pub routes: BTreeSet<(Ipv4Net, Ipv4Addr)>,
}

/// The entries the device should hold for `peers` (only vxlan peers of our VNI can be reached).
pub fn desired(peers: &[Peer], vni: u32) -> VxlanEntries {
    let mut d = VxlanEntries::default();
    for p in peers {
        if let PeerBackend::Vxlan { vni: v, vtep_mac } = p.backend {
            if v != vni {
                continue;
            }
            let gw = p.subnet.network();
            d.neighbours.insert((gw, vtep_mac));
            d.fdb.insert((vtep_mac, p.public_ip));
            d.routes.insert((p.subnet, gw));
        }
    }
    d
}

/// One change to bring the kernel to the desired state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    AddNeighbour(Ipv4Addr, MacAddr),
    AddFdb(MacAddr, Ipv4Addr),
    AddRoute(Ipv4Net, Ipv4Addr),
    DelRoute(Ipv4Net, Ipv4Addr),
    DelFdb(MacAddr, Ipv4Addr),
    DelNeighbour(Ipv4Addr, MacAddr),
}

/// The changes from `actual` to `want`, in flannel's order: removals route-first, additions route-last,
/// so a route never points at a missing neighbour.
pub fn diff(want: &VxlanEntries, actual: &VxlanEntries) -> Vec<Change> {
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
    pub local: Ipv4Addr,
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
    pub local: Option<Ipv4Addr>,
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
            subnet: s.parse().unwrap(),
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
                    subnet: "10.5.4.0/24".parse().unwrap(),
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

    #[test]
    fn device_reuse_rules() {
        let spec = DeviceSpec {
            vni: 1,
            local: Ipv4Addr::new(192, 0, 2, 1),
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
    }
}
