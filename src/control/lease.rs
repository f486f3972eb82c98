//! flannel's lease keys (`<prefix>/subnets/10.1.15.0-24`) and lease values (JSON), with no I/O.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::Ipv4Net;
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
        }
    }

    /// The wireguard backend data, if this is a well-formed wireguard lease.
    pub fn wireguard_data(&self) -> Option<WireGuardLeaseData> {
        if self.backend_type != "wireguard" {
            return None;
        }
        serde_json::from_value(self.backend_data.clone()?).ok()
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
        }
    }

    /// Attributes of a host-gw lease (flannel writes no BackendData for it).
    pub fn host_gw(public_ip: Ipv4Addr) -> Self {
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: "host-gw".into(),
            backend_data: None,
        }
    }

    /// Attributes of a udp lease.
    pub fn udp(public_ip: Ipv4Addr) -> Self {
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: "udp".into(),
            backend_data: None,
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
}

/// Formats the key suffix of a lease: `10.1.15.0-24`.
pub fn subnet_key(subnet: &Ipv4Net) -> String {
    format!("{}-{}", subnet.addr(), subnet.prefix_len())
}

/// Parses the last path element of a lease key (`10.1.15.0-24`, or the dual-stack
/// `10.1.15.0-24&fc00::-64`, whose IPv6 half weft ignores).
pub fn parse_subnet_key(name: &str) -> Option<Ipv4Net> {
    let v4 = name.split('&').next()?;
    let (addr, len) = v4.rsplit_once('-')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    let net = Ipv4Net::new(addr, len).ok()?;
    (net.network() == addr).then_some(net)
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
        assert_eq!(subnet_key(&n), "10.1.15.0-24");
        assert_eq!(parse_subnet_key("10.1.15.0-24"), Some(n));
        assert_eq!(parse_subnet_key("10.1.15.0-24&fc00::-64"), Some(n));
        assert_eq!(parse_subnet_key("10.1.15.1-24"), None);
        assert_eq!(parse_subnet_key("10.1.15.0-33"), None);
        assert_eq!(parse_subnet_key("garbage"), None);
    }

    #[test]
    fn mac_parsing_and_random() {
        assert!("c6:d2:32:6f:8f".parse::<MacAddr>().is_err());
        assert!("c6:d2:32:6f:8f:44:11".parse::<MacAddr>().is_err());
        let m = MacAddr::random_local(&mut rand::thread_rng());
        assert_eq!(m.0[0] & 0x03, 0x02, "locally administered unicast");
    }
}
