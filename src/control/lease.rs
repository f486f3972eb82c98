//! flannel's lease keys (`<prefix>/subnets/10.1.15.0-24`, dual-stack `10.1.15.0-24&fc00:0:0:f::-64`) and lease
//! values (JSON), with no I/O.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;

/// Re-exported: leases carry the VTEP MAC; the type lives with the Ethernet header in `wire`.
use crate::wire::ethernet::MacAddr;

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The value stored under a lease key, field for field as flannel writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseAttrs {
    #[serde(rename = "PublicIP")]
    pub public_ip: Ipv4Addr,
    #[serde(rename = "PublicIPv6", default)]
    pub public_ipv6: Option<Ipv6Addr>,
    #[serde(
        rename = "BackendType",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub backend_type: String,
    #[serde(
        rename = "BackendData",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub backend_data: Option<Value>,
    /// The IPv6 twin of `backend_data` (dual-stack vxlan: the VNI and the MAC of the IPv6 VTEP).
    #[serde(
        rename = "BackendV6Data",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub backend_v6_data: Option<Value>,
}

/// A lease value that is not flannel's JSON (the parser's error, shared so stored leases stay `Clone`).
#[derive(Debug, Clone, thiserror::Error)]
#[error("lease value is not flannel's JSON: {0}")]
pub struct LeaseValueError(#[source] pub Arc<serde_json::Error>);

/// The `BackendData` of a vxlan lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VxlanLeaseData {
    #[serde(rename = "VNI")]
    pub vni: u32,
    #[serde(rename = "VtepMAC")]
    pub vtep_mac: MacAddr,
}

/// The `BackendData` of a wireguard lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireGuardLeaseData {
    #[serde(rename = "PublicKey")]
    pub public_key: crate::control::key::WgKey,
    #[serde(rename = "Port")]
    pub port: u16,
}

impl LeaseAttrs {
    /// Attributes of a wireguard lease.
    pub fn wireguard(
        public_ip: Ipv4Addr,
        public_key: crate::control::key::WgKey,
        port: u16,
    ) -> Self {
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: "wireguard".into(),
            backend_data: Some(
                serde_json::to_value(WireGuardLeaseData { public_key, port })
                    .expect("two plain fields always serialise"),
            ),
            backend_v6_data: None,
        }
    }

    /// The wireguard backend data, if this is a well-formed wireguard lease.
    pub fn wireguard_data(&self) -> Option<WireGuardLeaseData> {
        if self.backend_type != "wireguard" {
            return None;
        }
        serde_json::from_value(self.backend_data.clone()?).ok()
    }

    /// The IPv6 device's wireguard data (`BackendV6Data`), if this is a well-formed dual-stack or
    /// IPv6-only wireguard lease.
    pub fn wireguard_v6_data(&self) -> Option<WireGuardLeaseData> {
        if self.backend_type != "wireguard" {
            return None;
        }
        serde_json::from_value(self.backend_v6_data.clone()?).ok()
    }

    /// Attributes of a vxlan lease.
    pub fn vxlan(public_ip: Ipv4Addr, vni: u32, vtep_mac: MacAddr) -> Self {
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: "vxlan".into(),
            backend_data: Some(
                serde_json::to_value(VxlanLeaseData { vni, vtep_mac })
                    .expect("two plain fields always serialise"),
            ),
            backend_v6_data: None,
        }
    }

    /// Attributes of a host-gw lease (flannel writes no BackendData for it).
    pub fn host_gw(public_ip: Ipv4Addr) -> Self {
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: "host-gw".into(),
            backend_data: None,
            backend_v6_data: None,
        }
    }

    /// Attributes of a udp lease.
    pub fn udp(public_ip: Ipv4Addr) -> Self {
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: "udp".into(),
            backend_data: None,
            backend_v6_data: None,
        }
    }

    /// Parses a lease value.
    pub fn from_json(bytes: &[u8]) -> Result<Self, LeaseValueError> {
        serde_json::from_slice(bytes).map_err(|e| LeaseValueError(Arc::new(e)))
    }

    /// The lease value as flannel's JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("lease attributes always serialise")
    }

    /// The vxlan backend data, if this is a well-formed vxlan lease.
    pub fn vxlan_data(&self) -> Option<VxlanLeaseData> {
        if self.backend_type != "vxlan" {
            return None;
        }
        serde_json::from_value(self.backend_data.clone()?).ok()
    }

    /// The IPv6 VTEP of a dual-stack vxlan lease (`BackendV6Data`), if well-formed.
    pub fn vxlan_v6_data(&self) -> Option<VxlanLeaseData> {
        if self.backend_type != "vxlan" {
            return None;
        }
        serde_json::from_value(self.backend_v6_data.clone()?).ok()
    }

    /// Adds this host's IPv6 half (dual stack): its IPv6 underlay address and, for vxlan, the IPv6 VTEP's
    /// MAC in `BackendV6Data` (flannel's `flannel-v6.<VNI>` device has its own MAC).
    pub fn with_ipv6(mut self, public_ipv6: Ipv6Addr, vtep_mac6: Option<MacAddr>) -> Self {
        self.public_ipv6 = Some(public_ipv6);
        if let (Some(vni), Some(vtep_mac)) = (self.vxlan_data().map(|d| d.vni), vtep_mac6) {
            self.backend_v6_data = Some(
                serde_json::to_value(VxlanLeaseData { vni, vtep_mac })
                    .expect("two plain fields always serialise"),
            );
        } else if self.backend_type == "wireguard" {
            // flannel's wireguard backend publishes the same key for its IPv6 device, with that device's
            // port (`ListenPortV6`), set by `with_wireguard_port6`.
            self.backend_v6_data = self.backend_data.clone();
        }
        self
    }

    /// Sets the port of the IPv6 WireGuard device in `BackendV6Data` (flannel's `ListenPortV6`).
    pub fn with_wireguard_port6(mut self, port6: u16) -> Self {
        if let Some(d) = self.wireguard_v6_data() {
            self.backend_v6_data = Some(
                serde_json::to_value(WireGuardLeaseData { port: port6, ..d })
                    .expect("two plain fields always serialise"),
            );
        }
        self
    }
}

impl LeaseAttrs {
    /// The address that identifies the host holding this lease: its PublicIP, or on an IPv6-only network
    /// (where flannel writes PublicIP 0.0.0.0) its PublicIPv6.
    pub fn owner(&self) -> IpAddr {
        match self.public_ipv6 {
            Some(v6) if self.public_ip.is_unspecified() => IpAddr::V6(v6),
            _ => IpAddr::V4(self.public_ip),
        }
    }

    /// The lease of an IPv6-only network: no IPv4 half (PublicIP 0.0.0.0 and no BackendData, as flanneld
    /// writes it there).
    pub fn without_ipv4(mut self) -> Self {
        self.public_ip = Ipv4Addr::UNSPECIFIED;
        self.backend_data = None;
        self
    }
}

/// An IPv6 address another host can send to: not unspecified, loopback, multicast or link-local.
pub fn is_usable_ipv6(a: &Ipv6Addr) -> bool {
    !(a.is_unspecified()
        || a.is_loopback()
        || a.is_multicast()
        || (a.segments()[0] & 0xffc0) == 0xfe80)
}

/// The subnets a lease key names: the IPv4 subnet and, on a dual-stack network, the IPv6 subnet. This pair
/// is a lease's identity (flannel's key `10.1.15.0-24&fc00:0:0:f::-64`). An IPv6-only network's keys have
/// no IPv4 subnet (flannel writes its empty `0.0.0.0-0` there). At least one half is always present.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SubnetKey {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v4: Option<Ipv4Net>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v6: Option<Ipv6Net>,
}

impl SubnetKey {
    /// An IPv4-only key.
    pub fn v4(v4: Ipv4Net) -> Self {
        SubnetKey {
            v4: Some(v4),
            v6: None,
        }
    }

    /// An IPv6-only network's key.
    pub fn v6(v6: Ipv6Net) -> Self {
        SubnetKey {
            v4: None,
            v6: Some(v6),
        }
    }

    /// True if both keys name the same subnet of some family (the subnets a host is known by).
    pub fn shares_a_subnet(&self, other: &SubnetKey) -> bool {
        (self.v4.is_some() && self.v4 == other.v4) || (self.v6.is_some() && self.v6 == other.v6)
    }
}

impl From<Ipv4Net> for SubnetKey {
    fn from(v4: Ipv4Net) -> Self {
        SubnetKey::v4(v4)
    }
}

impl std::str::FromStr for SubnetKey {
    type Err = String;

    /// Reads the displayed form (`10.1.15.0/24`, `10.1.15.0/24 + fc00:0:0:f::/64`) or a key suffix.
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(k) = parse_subnet_key(s) {
            return Ok(k);
        }
        let bad =
            || format!("{s:?} is not a subnet (10.1.15.0/24, fc00:0:0:f::/64) or subnet pair");
        let (a, b) = match s.split_once('+') {
            Some((a, b)) => (a.trim(), Some(b.trim())),
            None => (s.trim(), None),
        };
        let key = match (a.parse::<Ipv4Net>(), b) {
            (Ok(v4), b) => SubnetKey {
                v4: Some(v4),
                v6: b.map(|v| v.parse()).transpose().map_err(|_| bad())?,
            },
            (Err(_), None) => SubnetKey::v6(a.parse().map_err(|_| bad())?),
            (Err(_), Some(_)) => return Err(bad()),
        };
        Ok(key)
    }
}

impl fmt::Display for SubnetKey {
    /// The form people read (`10.1.15.0/24`, `10.1.15.0/24 + fc00:0:0:f::/64`, `fc00:0:0:f::/64`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.v4, self.v6) {
            (Some(v4), None) => write!(f, "{v4}"),
            (Some(v4), Some(v6)) => write!(f, "{v4} + {v6}"),
            (None, Some(v6)) => write!(f, "{v6}"),
            (None, None) => f.write_str("(no subnet)"),
        }
    }
}

/// Formats the key suffix of a lease: `10.1.15.0-24`, or `10.1.15.0-24&fc00:0:0:f::-64` (flannel's
/// `MakeSubnetKey`: the IPv6 address in its canonical compressed form); an IPv6-only network's key has
/// flannel's empty IPv4 subnet, `0.0.0.0-0&fc00:0:0:f::-64`.
pub fn subnet_key(key: &SubnetKey) -> String {
    let v4 = key
        .v4
        .map(|n| format!("{}-{}", n.addr(), n.prefix_len()))
        .unwrap_or_else(|| "0.0.0.0-0".into());
    match key.v6 {
        None => v4,
        Some(v6) => format!("{v4}&{}-{}", v6.addr(), v6.prefix_len()),
    }
}

/// Parses the last path element of a lease key (`10.1.15.0-24`, or the dual-stack
/// `10.1.15.0-24&fc00::-64`). Addresses must be their subnet's first address.
pub fn parse_subnet_key(name: &str) -> Option<SubnetKey> {
    let (v4, v6) = match name.split_once('&') {
        Some((a, b)) => (a, Some(b)),
        None => (name, None),
    };
    let (addr, len) = v4.rsplit_once('-')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    let net = Ipv4Net::new(addr, len).ok()?;
    if net.network() != addr {
        return None;
    }
    // flannel's empty IPv4 subnet: the key of an IPv6-only network, which must have its IPv6 half.
    let net = (len != 0).then_some(net);
    if net.is_none() && v6.is_none() {
        return None;
    }
    let v6 = match v6 {
        None => None,
        Some(v6) => {
            let (addr, len) = v6.rsplit_once('-')?;
            let addr: Ipv6Addr = addr.parse().ok()?;
            let len: u8 = len.parse().ok()?;
            let net6 = Ipv6Net::new(addr, len).ok()?;
            if net6.network() != addr {
                return None;
            }
            Some(net6)
        }
    };
    Some(SubnetKey { v4: net, v6 })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLANNEL_VXLAN: &str = r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;

    #[test]
    fn vxlan_lease_round_trips_flannels_bytes() {
        let a = LeaseAttrs::from_json(FLANNEL_VXLAN.as_bytes()).unwrap();
        assert_eq!(a.public_ip, Ipv4Addr::new(192, 168, 64, 3));
        let d = a.vxlan_data().unwrap();
        assert_eq!(d.vni, 1);
        assert_eq!(d.vtep_mac.to_string(), "c6:d2:32:6f:8f:44");
        assert_eq!(a.to_json(), FLANNEL_VXLAN);
        let built = LeaseAttrs::vxlan(a.public_ip, 1, "c6:d2:32:6f:8f:44".parse().unwrap());
        assert_eq!(built.to_json(), FLANNEL_VXLAN);
    }

    #[test]
    fn dual_stack_vxlan_lease_round_trips_flannels_bytes() {
        let text = r#"{"PublicIP":"192.168.64.3","PublicIPv6":"fd00::3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},"BackendV6Data":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:45"}}"#;
        let a = LeaseAttrs::from_json(text.as_bytes()).unwrap();
        assert_eq!(a.public_ipv6, Some("fd00::3".parse().unwrap()));
        assert_eq!(
            a.vxlan_v6_data().unwrap().vtep_mac.to_string(),
            "c6:d2:32:6f:8f:45"
        );
        assert_eq!(a.to_json(), text);
        let built = LeaseAttrs::vxlan(a.public_ip, 1, "c6:d2:32:6f:8f:44".parse().unwrap())
            .with_ipv6(
                "fd00::3".parse().unwrap(),
                Some("c6:d2:32:6f:8f:45".parse().unwrap()),
            );
        assert_eq!(built.to_json(), text);
    }

    #[test]
    fn dual_stack_wireguard_lease_is_flannels_separate_mode_form() {
        let key = crate::control::key::WgKey([7; 32]);
        let a = LeaseAttrs::wireguard(Ipv4Addr::new(192, 0, 2, 1), key, 51820)
            .with_ipv6("fd00::1".parse().unwrap(), None)
            .with_wireguard_port6(51821);
        let k = key.to_string();
        let v: Value = serde_json::from_str(&a.to_json()).unwrap();
        let want: Value = serde_json::from_str(&format!(
            r#"{{"PublicIP":"192.0.2.1","PublicIPv6":"fd00::1","BackendType":"wireguard","BackendData":{{"PublicKey":"{k}","Port":51820}},"BackendV6Data":{{"PublicKey":"{k}","Port":51821}}}}"#
        ))
        .unwrap();
        assert_eq!(v, want);
        assert_eq!(a.wireguard_v6_data().map(|d| d.port), Some(51821));
        // IPv6-only: only the IPv6 device's data, PublicIP 0.0.0.0.
        let only6 = a.without_ipv4();
        assert!(only6.wireguard_data().is_none());
        assert_eq!(only6.owner(), "fd00::1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn udp_lease_form() {
        let a = LeaseAttrs::udp(Ipv4Addr::new(10, 0, 0, 7));
        assert_eq!(
            a.to_json(),
            r#"{"PublicIP":"10.0.0.7","PublicIPv6":null,"BackendType":"udp"}"#
        );
        // flannel's own udp backend writes only PublicIP.
        let f = LeaseAttrs::from_json(br#"{"PublicIP":"10.0.0.7"}"#).unwrap();
        assert_eq!(f.backend_type, "");
        assert!(f.vxlan_data().is_none());
    }

    #[test]
    fn bad_values_are_errors_not_panics() {
        assert!(LeaseAttrs::from_json(b"").is_err());
        assert!(LeaseAttrs::from_json(b"{\"PublicIP\":\"nope\"}").is_err());
        let bad_mac = br#"{"PublicIP":"1.2.3.4","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"zz"}}"#;
        assert!(LeaseAttrs::from_json(bad_mac)
            .unwrap()
            .vxlan_data()
            .is_none());
    }

    #[test]
    fn keys() {
        let n: Ipv4Net = "10.1.15.0/24".parse().unwrap();
        let k = SubnetKey::v4(n);
        assert_eq!(subnet_key(&k), "10.1.15.0-24");
        assert_eq!(parse_subnet_key("10.1.15.0-24"), Some(k));
        let dual = SubnetKey {
            v4: Some(n),
            v6: Some("fc00:0:0:f::/64".parse().unwrap()),
        };
        assert_eq!(parse_subnet_key("10.1.15.0-24&fc00:0:0:f::-64"), Some(dual));
        assert_eq!(subnet_key(&dual), "10.1.15.0-24&fc00:0:0:f::-64");
        // flannel's IPv6-only form: no IPv4 subnet.
        let v6only = parse_subnet_key("0.0.0.0-0&fd10::-64").unwrap();
        assert_eq!(v6only, SubnetKey::v6("fd10::/64".parse().unwrap()));
        assert_eq!(subnet_key(&v6only), "0.0.0.0-0&fd10::-64");
        assert_eq!(v6only.to_string(), "fd10::/64");
        assert_eq!("fd10::/64".parse::<SubnetKey>(), Ok(v6only));
        assert_eq!(parse_subnet_key("0.0.0.0-0"), None, "no subnet at all");
        assert_eq!(parse_subnet_key("10.1.15.0-24&fc00::1-64"), None);
        assert_eq!(parse_subnet_key("10.1.15.0-24&fc00::-129"), None);
        assert_eq!(parse_subnet_key("10.1.15.0-24&"), None);
        assert_eq!(parse_subnet_key("10.1.15.1-24"), None);
        assert_eq!(parse_subnet_key("10.1.15.0-33"), None);
        assert_eq!(parse_subnet_key("garbage"), None);
    }

    #[test]
    fn usable_ipv6_underlay_addresses() {
        let a = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        assert!(is_usable_ipv6(&a("2001:db8::1")));
        assert!(is_usable_ipv6(&a("fd00::7")));
        for bad in ["::", "::1", "fe80::1", "febf::1", "ff02::1"] {
            assert!(!is_usable_ipv6(&a(bad)), "{bad}");
        }
    }

    #[test]
    fn mac_parsing_and_random() {
        assert!("c6:d2:32:6f:8f".parse::<MacAddr>().is_err());
        assert!("c6:d2:32:6f:8f:44:11".parse::<MacAddr>().is_err());
        let m = MacAddr::random_local(&mut rand::thread_rng());
        assert_eq!(m.0[0] & 0x03, 0x02, "locally administered unicast");
    }
}
