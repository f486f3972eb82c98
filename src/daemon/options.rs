//! What `weft run` is told by its flags: [`RunOptions`] and the [`DataPlaneMode`] to use.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::control::store::EtcdOptions;

/// Everything `weft run` is told by its flags.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub etcd: EtcdOptions,
    pub iface: crate::host::iface::IfaceWanted,
    pub public_ip: Option<Ipv4Addr>,
    pub subnet_file: PathBuf,
    pub lease_ttl: Duration,
    pub renew_margin: Duration,
    pub healthz: Option<SocketAddr>,
    pub ip_masq: bool,
    /// FORWARD accepts the Network (flannel's --iptables-forward-rules, default on).
    pub forward_rules: bool,
    /// MASQUERADE with --random-fully (off: --ip-masq-fully-random-disable).
    pub masq_random_fully: bool,
    /// How often weft's iptables rules are checked and put back (--iptables-resync).
    pub iptables_resync: Duration,
    /// A blackhole route for our own subnet (--ip-blackhole-route).
    pub blackhole_route: bool,
    /// The IPv6 address other hosts reach this one at (--public-ipv6; default: the interface's global IPv6).
    pub public_ipv6: Option<std::net::Ipv6Addr>,
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
