//! What `weft run` is told by its flags: [`RunOptions`] and the [`DataPlaneMode`] to use.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::control::store::EtcdOptions;

/// Everything `weft run` is told by its flags.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub etcd: EtcdOptions,
    pub iface: Vec<String>,
    pub public_ip: Option<Ipv4Addr>,
    pub subnet_file: PathBuf,
    pub lease_ttl: Duration,
    pub renew_margin: Duration,
    pub healthz: Option<SocketAddr>,
    pub ip_masq: bool,
    pub dataplane: DataPlaneMode,
    pub workers: usize,
    pub tun_name: String,
    /// Which offloads to use where the kernel allows them.
    pub offload: crate::dataplane::Offloads,
    /// Move packets in batches (recvmmsg, several packets per wakeup).
    pub batch: bool,
    /// How long a worker keeps polling without sleeping after traffic.
    pub busy_poll: Duration,
    /// How the userspace data plane reaches the underlay (UDP sockets or AF_XDP).
    pub underlay: crate::dataplane::UnderlayIo,
    /// Pin workers to CPUs and steer packets to the worker of the CPU handling them.
    pub cpu_local: bool,
    /// The WireGuard private key file (wireguard backend; created on first start).
    pub wg_key_file: PathBuf,
}

/// Which data plane carries the overlay's packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPlaneMode {
    /// The userspace data plane, falling back to the kernel VXLAN backend where it cannot run.
    Auto,
    /// weft's own packet loop on a tun device.
    Userspace,
    /// The kernel's VXLAN device, programmed over netlink as flanneld's vxlan backend does.
    Kernel,
    /// No forwarding: lease and publish only (flannel's "alloc" backend), e.g. when another tool forwards.
    None,
}
