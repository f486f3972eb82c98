//! weft: a flannel-compatible overlay network for container hosts.
//!
//! The layers, from the bottom: `wire` (packet formats, pure, imports nothing else of weft), `routes` (the
//! route table the control plane writes and the data planes read), `control` (network config, leases, etcd),
//! `dataplane` (the userspace packet loop on a tun device, with its AF_XDP underlay), `kernel` (the kernel
//! VXLAN backend), `host` (this host's interfaces and iptables), `ops` (HTTP endpoints, metrics, status) and
//! `daemon` (`weft run`: wires the others together).

pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod host;
pub mod kernel;
pub mod ops;
pub mod routes;
pub mod wire;
pub mod wireguard;
