//! weft: a flannel-compatible overlay network for container hosts.

pub mod alloc;
pub mod backoff;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod http;
pub mod iface;
pub mod kernel_state;
pub mod kernelvxlan;
pub mod lease;
pub mod masq;
pub mod metrics;
pub mod routes;
pub mod store;
pub mod subnet_env;
pub mod wire;
pub mod xdp;
