//! This host's OS state outside the data planes: which interface carries the underlay, and the `--ip-masq`
//! iptables rules.

pub mod iface;
pub mod masq;
