//! The trust boundary for lease data from etcd: which peer leases may be routed (pure). A lease that breaks
//! flannel's rules is ignored — never routed — and reported by reason.

use crate::control::config::{Backend, NetworkConfig};
use crate::control::lease::{LeaseAttrs, LeaseValueError, SubnetKey};

/// Why a peer lease is not routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InvalidLease {
    /// The value is not flannel's JSON.
    Malformed,
    /// The subnet is not inside the Network.
    OutsideNetwork,
    /// The subnet's length is not the network's SubnetLen (so it may cover other hosts' subnets).
    WrongLength,
    /// The subnet overlaps this host's own.
    OverlapsOwn,
    /// No usable PublicIP.
    NoPublicIp,
    /// BackendType is not the network's backend.
    WrongBackend,
    /// BackendData is missing or does not match the network (vxlan: VNI and VtepMAC).
    BadBackendData,
}

impl InvalidLease {
    pub const ALL: [InvalidLease; 7] = [
        InvalidLease::Malformed,
        InvalidLease::OutsideNetwork,
        InvalidLease::WrongLength,
        InvalidLease::OverlapsOwn,
        InvalidLease::NoPublicIp,
        InvalidLease::WrongBackend,
        InvalidLease::BadBackendData,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            InvalidLease::Malformed => "malformed",
            InvalidLease::OutsideNetwork => "outside_network",
            InvalidLease::WrongLength => "wrong_length",
            InvalidLease::OverlapsOwn => "overlaps_own",
            InvalidLease::NoPublicIp => "no_public_ip",
            InvalidLease::WrongBackend => "wrong_backend",
            InvalidLease::BadBackendData => "bad_backend_data",
        }
    }

    /// What is wrong, in words for the log.
    pub fn describe(self, cfg: &NetworkConfig) -> String {
        match self {
            InvalidLease::Malformed => "its value is not flannel's lease JSON".into(),
            InvalidLease::OutsideNetwork => match (cfg.ipv4, cfg.ipv6) {
                (Some(c4), None) => format!("it lies outside the Network {}", c4.network),
                (Some(c4), Some(c6)) => format!(
                    "it lies outside the Network {} or the IPv6Network {}",
                    c4.network, c6.network
                ),
                (None, Some(c6)) => format!(
                    "it has no IPv6 subnet inside the IPv6Network {} (this network is IPv6-only)",
                    c6.network
                ),
                (None, None) => "this network has no address family".into(),
            },
            InvalidLease::WrongLength => match (cfg.ipv4, cfg.ipv6) {
                (Some(c4), None) => {
                    format!("it is not a /{} (the network's SubnetLen)", c4.subnet_len)
                }
                (Some(c4), Some(c6)) => format!(
                    "it is not a /{} (SubnetLen) or its IPv6 half not a /{} (IPv6SubnetLen)",
                    c4.subnet_len, c6.subnet_len
                ),
                (None, Some(c6)) => {
                    format!("it is not a /{} (the network's IPv6SubnetLen)", c6.subnet_len)
                }
                (None, None) => "this network has no address family".into(),
            },
            InvalidLease::OverlapsOwn => "it overlaps this host's own subnet".into(),
            InvalidLease::NoPublicIp => {
                "it carries no usable PublicIP (or, with an IPv6 subnet, no usable PublicIPv6)".into()
            }
            InvalidLease::WrongBackend => format!(
                "its BackendType is not the network's {:?}",
                cfg.backend.type_name()
            ),
            InvalidLease::BadBackendData => {
                "its BackendData (or BackendV6Data) does not match the network's backend (vxlan: VNI and VtepMAC)"
                    .into()
            }
        }
    }
}

/// Checks a peer's lease `key` against the network config and this host's own lease key `own`. On a
/// dual-stack network the IPv6 half, when the lease has one, must fit IPv6Network and carry a usable
/// PublicIPv6 (and, for vxlan, BackendV6Data); a lease without one is routed over IPv4 only. On an
/// IPv6-only network only the IPv6 half is checked and required. A half of a family the network does not
/// have is not routed (`NetworkConfig::routed_key`), as flannel ignores it.
pub fn check_peer_lease(
    cfg: &NetworkConfig,
    own: SubnetKey,
    key: SubnetKey,
    attrs: &Result<LeaseAttrs, LeaseValueError>,
) -> Result<(), InvalidLease> {
    let Ok(a) = attrs else {
        return Err(InvalidLease::Malformed);
    };
    if let Some(c4) = &cfg.ipv4 {
        // The IPv4 half names the host on an IPv4 or dual-stack network: a key without one is not ours to
        // route (flannel's empty 0.0.0.0-0 is outside any Network).
        let Some(subnet) = key.v4 else {
            return Err(InvalidLease::OutsideNetwork);
        };
        if !c4.network.contains(&subnet) {
            return Err(InvalidLease::OutsideNetwork);
        }
        if subnet.prefix_len() != c4.subnet_len {
            return Err(InvalidLease::WrongLength);
        }
        if own
            .v4
            .is_some_and(|o| subnet.contains(&o) || o.contains(&subnet))
        {
            return Err(InvalidLease::OverlapsOwn);
        }
        if a.public_ip.is_unspecified() || a.public_ip.is_broadcast() || a.public_ip.is_multicast()
        {
            return Err(InvalidLease::NoPublicIp);
        }
    } else if key.v6.is_none() {
        // An IPv6-only network routes IPv6 halves only.
        return Err(InvalidLease::OutsideNetwork);
    }
    if let (Some(c6), Some(v6)) = (cfg.ipv6, key.v6) {
        if !c6.network.contains(&v6) {
            return Err(InvalidLease::OutsideNetwork);
        }
        if v6.prefix_len() != c6.subnet_len {
            return Err(InvalidLease::WrongLength);
        }
        if let Some(own6) = own.v6 {
            if v6.contains(&own6) || own6.contains(&v6) {
                return Err(InvalidLease::OverlapsOwn);
            }
        }
        match a.public_ipv6 {
            Some(ip6) if crate::control::lease::is_usable_ipv6(&ip6) => {}
            _ => return Err(InvalidLease::NoPublicIp),
        }
        match &cfg.backend {
            Backend::Vxlan(v) => match a.vxlan_v6_data() {
                Some(d) if d.vni == v.vni => {}
                _ => return Err(InvalidLease::BadBackendData),
            },
            Backend::WireGuard(_) => match a.wireguard_v6_data() {
                Some(d) if d.public_key.0 != [0; 32] && d.port != 0 => {}
                _ => return Err(InvalidLease::BadBackendData),
            },
            _ => {}
        }
    }
    match &cfg.backend {
        Backend::Vxlan(v) => {
            if a.backend_type != "vxlan" {
                return Err(InvalidLease::WrongBackend);
            }
            match a.vxlan_data() {
                Some(d) if d.vni == v.vni => Ok(()),
                // An IPv6-only network's lease has only BackendV6Data (checked above).
                _ if cfg.ipv6_only() => Ok(()),
                _ => Err(InvalidLease::BadBackendData),
            }
        }
        // flannel's udp backend writes no BackendType at all.
        Backend::Udp(_) => match a.backend_type.as_str() {
            "udp" | "" => Ok(()),
            _ => Err(InvalidLease::WrongBackend),
        },
        Backend::HostGw => match a.backend_type.as_str() {
            "host-gw" => Ok(()),
            _ => Err(InvalidLease::WrongBackend),
        },
        Backend::WireGuard(_) => {
            if a.backend_type != "wireguard" {
                return Err(InvalidLease::WrongBackend);
            }
            match a.wireguard_data() {
                Some(d) if d.public_key.0 != [0; 32] && d.port != 0 => Ok(()),
                // An IPv6-only network's lease has only BackendV6Data (checked above).
                _ if cfg.ipv6_only() => Ok(()),
                _ => Err(InvalidLease::BadBackendData),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn cfg(json: &str) -> NetworkConfig {
        NetworkConfig::parse(json).unwrap()
    }

    fn vx(ip: [u8; 4], vni: u32) -> Result<LeaseAttrs, LeaseValueError> {
        Ok(LeaseAttrs::vxlan(
            Ipv4Addr::from(ip),
            vni,
            "02:00:00:00:00:01".parse().unwrap(),
        ))
    }

    fn net(s: &str) -> SubnetKey {
        s.parse().unwrap()
    }

    #[test]
    fn wireguard_leases_need_a_key_and_a_port() {
        let c = cfg(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard"}}"#);
        let own = net("10.5.7.0/24");
        let key = crate::control::key::WgKey([5; 32]);
        let good = Ok(LeaseAttrs::wireguard(
            Ipv4Addr::new(192, 0, 2, 1),
            key,
            51820,
        ));
        assert_eq!(check_peer_lease(&c, own, net("10.5.8.0/24"), &good), Ok(()));
        let zero = Ok(LeaseAttrs::wireguard(
            Ipv4Addr::new(192, 0, 2, 1),
            crate::control::key::WgKey([0; 32]),
            51820,
        ));
        assert_eq!(
            check_peer_lease(&c, own, net("10.5.8.0/24"), &zero),
            Err(InvalidLease::BadBackendData)
        );
        let mut bad = LeaseAttrs::wireguard(Ipv4Addr::new(192, 0, 2, 1), key, 51820);
        bad.backend_data = Some(serde_json::json!({"PublicKey": "nope", "Port": 51820}));
        assert_eq!(
            check_peer_lease(&c, own, net("10.5.8.0/24"), &Ok(bad)),
            Err(InvalidLease::BadBackendData)
        );
        assert_eq!(
            check_peer_lease(&c, own, net("10.5.8.0/24"), &vx([192, 0, 2, 1], 1)),
            Err(InvalidLease::WrongBackend)
        );
    }

    #[test]
    fn flannels_rules() {
        let c = cfg(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#);
        let own = net("10.5.7.0/24");
        let ok = vx([192, 0, 2, 1], 1);
        assert_eq!(check_peer_lease(&c, own, net("10.5.8.0/24"), &ok), Ok(()));
        let cases = [
            ("10.6.0.0/24", ok.clone(), InvalidLease::OutsideNetwork),
            ("192.0.2.1/32", ok.clone(), InvalidLease::OutsideNetwork),
            ("10.5.0.0/16", ok.clone(), InvalidLease::WrongLength),
            ("10.5.8.0/25", ok.clone(), InvalidLease::WrongLength),
            ("10.5.7.128/25", ok.clone(), InvalidLease::WrongLength),
            ("10.5.7.0/24", ok.clone(), InvalidLease::OverlapsOwn),
            ("10.5.8.0/24", vx([0, 0, 0, 0], 1), InvalidLease::NoPublicIp),
            (
                "10.5.8.0/24",
                vx([192, 0, 2, 1], 2),
                InvalidLease::BadBackendData,
            ),
            (
                "10.5.8.0/24",
                Ok(LeaseAttrs::udp(Ipv4Addr::new(192, 0, 2, 1))),
                InvalidLease::WrongBackend,
            ),
            (
                "10.5.8.0/24",
                LeaseAttrs::from_json(b"{}"),
                InvalidLease::Malformed,
            ),
        ];
        for (s, a, want) in cases {
            assert_eq!(check_peer_lease(&c, own, net(s), &a), Err(want), "{s}");
        }
        // A vxlan lease without its data.
        let mut bare = LeaseAttrs::udp(Ipv4Addr::new(192, 0, 2, 1));
        bare.backend_type = "vxlan".into();
        assert_eq!(
            check_peer_lease(&c, own, net("10.5.8.0/24"), &Ok(bare)),
            Err(InvalidLease::BadBackendData)
        );
    }

    #[test]
    fn udp_network_takes_flannels_udp_leases() {
        let c = cfg(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"udp"}}"#);
        let own = net("10.5.7.0/24");
        let flannel = LeaseAttrs::from_json(br#"{"PublicIP":"192.0.2.1"}"#);
        assert_eq!(
            check_peer_lease(&c, own, net("10.5.8.0/24"), &flannel),
            Ok(())
        );
        assert_eq!(
            check_peer_lease(&c, own, net("10.5.8.0/24"), &vx([192, 0, 2, 1], 1)),
            Err(InvalidLease::WrongBackend)
        );
        for r in InvalidLease::ALL {
            assert!(!r.describe(&c).is_empty() && !r.label().is_empty());
        }
    }
}
