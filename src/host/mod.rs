//! This host's OS state outside the data planes: which interface carries the underlay, the `--ip-masq`
//! iptables rules, the single-instance locks, and the blocking route-netlink helper.

pub mod iface;
pub mod instance;
pub mod masq;
pub mod netlink;
