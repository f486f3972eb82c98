//! What a running daemon reports about itself: the `/status` document and the source the HTTP endpoints read.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::ops::metrics::MetricsView;
use crate::routes::Peer;

/// Where the HTTP endpoints read readiness, metrics and status from (the daemon implements it).
pub trait StatusSource: Send + Sync + 'static {
    /// subnet.env is written and the data plane is up.
    fn ready(&self) -> bool;
    fn metrics(&self) -> MetricsView;
    fn status(&self) -> StatusReport;
}

/// This host's lease as `/status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseStatus {
    /// The IPv4 subnet and Network (absent on an IPv6-only network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<Ipv4Net>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Ipv4Net>,
    pub public_ip: Ipv4Addr,
    /// The IPv6 half of a dual-stack network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<ipnet::Ipv6Net>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network6: Option<ipnet::Ipv6Net>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ipv6: Option<std::net::Ipv6Addr>,
    pub iface: String,
    pub backend: String,
    pub mtu: u32,
}

/// The JSON `/status` returns and `weft status` prints.
#[derive(Debug, Serialize, Deserialize)]
pub struct StatusReport {
    pub ready: bool,
    pub etcd_connected: bool,
    /// The data plane in use: "userspace", "kernel" or "none" (empty before it started).
    pub dataplane: String,
    /// For the userspace data plane: "udp", or "af_xdp (<mode> mode, copy|zero-copy, <n> of <m> workers)".
    pub underlay: String,
    pub lease: Option<LeaseStatus>,
    pub peers: Vec<Peer>,
    /// This host's WireGuard key and its sessions with each peer (wireguard backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<crate::ops::metrics::WireGuardView>,
}
