//! This host's OS state outside the data planes: which interface carries the underlay, the `--ip-masq`
//! iptables rules, and the blocking route-netlink helper.

pub mod iface;
pub mod masq;
pub mod netlink;
