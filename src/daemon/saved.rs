//! What weft last knew, saved next to subnet.env so that a restart during an etcd outage comes up forwarding:
//! the network config, our lease and the peers of the route table.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::control::config::NetworkConfig;
use crate::control::lease::LeaseAttrs;
use crate::routes::Peer;

use super::files::write_atomically;

/// The saved state (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedState {
    /// The network config's JSON text as etcd held it.
    pub config: String,
    /// Our IPv4 subnet (None on an IPv6-only network).
    #[serde(default)]
    pub subnet: Option<Ipv4Net>,
    /// Our IPv6 subnet, on a dual-stack network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<ipnet::Ipv6Net>,
    /// Our lease's value (public IP, backend data with our VTEP MAC).
    pub lease: LeaseAttrs,
    pub peers: Vec<Peer>,
}

impl SavedState {
    /// The state file of a subnet file: `subnet.env` -> `subnet.weft-state.json` beside it.
    pub fn path_for(subnet_file: &Path) -> PathBuf {
        subnet_file.with_extension("weft-state.json")
    }

    /// Our lease key.
    pub fn key(&self) -> crate::control::lease::SubnetKey {
        crate::control::lease::SubnetKey {
            v4: self.subnet,
            v6: self.subnet6,
        }
    }

    /// Reads the saved state if it is there, readable, and ours (its lease names `public_ip`, or on an
    /// IPv6-only network `public_ipv6`); says why when it is not used.
    pub fn load(
        path: &Path,
        public_ip: Ipv4Addr,
        public_ipv6: Option<Ipv6Addr>,
    ) -> Option<(SavedState, NetworkConfig)> {
        let text = std::fs::read_to_string(path).ok()?;
        let parsed = serde_json::from_str::<SavedState>(&text)
            .map_err(|e| e.to_string())
            .and_then(|s| {
                let cfg = NetworkConfig::parse(&s.config).map_err(|e| e.to_string())?;
                Ok((s, cfg))
            });
        match parsed {
            Ok((s, _))
                if s.lease.owner() != IpAddr::V4(public_ip)
                    && public_ipv6.map(IpAddr::V6) != Some(s.lease.owner()) =>
            {
                warn!(file = %path.display(), "ignoring the saved state: it belongs to public IP {}", s.lease.owner());
                None
            }
            Ok(x) => Some(x),
            Err(e) => {
                warn!(file = %path.display(), "ignoring the saved state: {e}");
                None
            }
        }
    }

    /// Writes the state atomically; a failure is logged (the state is a convenience, not a requirement).
    pub fn save(&self, path: &Path) {
        let text = serde_json::to_string(self).expect("the saved state always serialises");
        if let Err(e) = write_atomically(path, &text) {
            warn!(file = %path.display(), "cannot save the state for restarts during etcd outages: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::PeerBackend;

    #[test]
    fn round_trips_and_belongs_to_one_host() {
        let dir = tempfile::tempdir().unwrap();
        let path = SavedState::path_for(&dir.path().join("subnet.env"));
        assert_eq!(path, dir.path().join("subnet.weft-state.json"));
        let me = Ipv4Addr::new(192, 0, 2, 1);
        let s = SavedState {
            config: r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#.into(),
            subnet: Some("10.5.7.0/24".parse().unwrap()),
            subnet6: None,
            lease: LeaseAttrs::vxlan(me, 1, "02:00:00:00:00:07".parse().unwrap()),
            peers: vec![Peer {
                v6: None,
                subnet: Some("10.5.8.0/24".parse().unwrap()),
                public_ip: Ipv4Addr::new(192, 0, 2, 2),
                backend: PeerBackend::Vxlan {
                    vni: 1,
                    vtep_mac: "02:00:00:00:00:08".parse().unwrap(),
                },
            }],
        };
        s.save(&path);
        let (back, cfg) = SavedState::load(&path, me, None).unwrap();
        assert_eq!(back, s);
        assert_eq!(
            cfg.ipv4.unwrap().network,
            "10.5.0.0/16".parse::<Ipv4Net>().unwrap()
        );
        assert!(SavedState::load(&path, Ipv4Addr::new(192, 0, 2, 9), None).is_none());
        std::fs::write(&path, "{").unwrap();
        assert!(SavedState::load(&path, me, None).is_none());
    }
}
