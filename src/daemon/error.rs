//! [`DaemonError`]: the errors that stop `weft run`, each one plain line naming the problem and the fix.

use std::net::SocketAddr;

use crate::control::alloc::{Exhausted, Exhausted6};
use crate::control::store::StoreError;
use crate::dataplane::DataPlaneError;
use crate::host::iface::IfaceError;
use crate::kernel::vxlan::KernelVxlanError;

/// Errors that stop the daemon; each is one plain line naming the problem and the fix.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Iface(#[from] IfaceError),
    #[error(transparent)]
    Exhausted(#[from] Exhausted),
    #[error(transparent)]
    Exhausted6(#[from] Exhausted6),
    #[error("the network config enables IPv6 (EnableIPv6) but {iface} has no global IPv6 address for the IPv6 underlay; give it one, pick another interface (--iface), or pass --public-ipv6")]
    NoIpv6Underlay { iface: String },
    #[error("the network config has IPv4 (Network {network}) but the underlay interface {iface} has no IPv4 address; give it one, pick another interface (--iface or --public-ip), or make the network IPv6-only (\"EnableIPv4\": false)")]
    NoIpv4Underlay {
        network: ipnet::Ipv4Net,
        iface: String,
    },
    #[error(transparent)]
    Instance(#[from] crate::host::instance::InstanceError),
    #[error("the network config in etcd changed while etcd was unreachable and weft ran from its saved state; restart weft (and then dockerd) to follow the new config")]
    ConfigChanged,
    #[error(transparent)]
    RenewMargin(#[from] crate::control::backoff::MarginTooLong),
    #[error("--underlay af-xdp is part of the userspace data plane; use it with --dataplane userspace (or auto)")]
    AfXdpNeedsUserspace,
    #[error("the kernel data plane needs a vxlan network, but the network config says Backend.Type {backend:?}; use --dataplane userspace for udp")]
    KernelNeedsVxlan { backend: &'static str },
    #[error(transparent)]
    WgKey(#[from] crate::wireguard::keyfile::KeyFileError),
    #[error("--dataplane kernel with the wireguard backend needs the kernel's WireGuard module, and this kernel cannot create a WireGuard device ({reason}); use --dataplane userspace (or auto), where weft itself carries WireGuard")]
    KernelNoWireGuard { reason: String },
    #[error("--dataplane kernel with the wireguard backend: this kernel has WireGuard, but weft does not program kernel WireGuard devices yet; use --dataplane userspace (or auto), where weft itself carries WireGuard")]
    KernelWireGuardUnsupported,
    #[error("--underlay af-xdp does not carry the wireguard backend yet; use --underlay udp (the default)")]
    AfXdpNoWireGuard,
    #[error("cannot program direct routes (host-gw / DirectRouting): {0}; does weft run as root?")]
    Direct(String),
    #[error("--ip-masq: {0}")]
    Masq(#[from] crate::host::masq::MasqError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    DataPlane(#[from] DataPlaneError),
    #[error(transparent)]
    Kernel(#[from] KernelVxlanError),
    #[error("cannot serve /healthz on {addr}: {source}; pick another --healthz-ip/--healthz-port")]
    Healthz {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot write {path}: {source}; check --subnet-file and that its directory is writable"
    )]
    SubnetFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("subnet {subnet} was taken by host {other} while our lease was gone; dockerd's --bip no longer matches a lease of this host. Stop dockerd, delete {file}, restart weft for a new subnet, then restart dockerd")]
    SubnetStolen {
        subnet: crate::control::lease::SubnetKey,
        other: String,
        file: String,
    },
}
