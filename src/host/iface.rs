//! Picks the underlay interface and public IP, as flanneld does: --iface in order, then --iface-regex, then
//! --iface-can-reach (the interface the kernel routes that address out of), else the interface holding
//! --public-ip, else the default route's interface.

use std::net::{Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::route::{RouteAttribute, RouteHeader, RouteMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use regex::Regex;

use crate::host::netlink::Rtnl;

/// The chosen underlay: interface name, its MTU, and the public IP published in the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    pub iface: String,
    pub local_ip: Ipv4Addr,
    pub public_ip: Ipv4Addr,
    /// The IPv6 underlay address (`PublicIPv6`): `--public-ipv6`, else the interface's first global IPv6
    /// address; a dual-stack network needs one.
    pub public_ipv6: Option<Ipv6Addr>,
    /// The interface's own IPv6 address to bind the IPv6 underlay to (unspecified: any).
    pub local_ip6: Ipv6Addr,
    pub mtu: u32,
}

/// An interface with its IPv4 addresses (and its global IPv6 ones), as seen in this network namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IfaceInfo {
    pub name: String,
    pub addrs: Vec<Ipv4Addr>,
    /// Its IPv6 addresses a peer could reach (`is_usable_ipv6`), for hosts without IPv4 underlay.
    pub addrs6: Vec<Ipv6Addr>,
}

/// Why no underlay could be picked; each says what to pass instead.
#[derive(Debug, thiserror::Error)]
pub enum IfaceError {
    #[error("none of {0} names an interface with an IPv4 address here (interfaces: {1}); pass an interface name, an address or a regex that matches one")]
    NoMatch(String, String),
    #[error("--iface-regex {0:?} is not a valid regex: {1}")]
    BadIfaceRegex(String, String),
    #[error("there is no default route to pick the underlay interface from; pass --iface NAME or --public-ip ADDR")]
    NoDefaultRoute,
    #[error("the default route's interface {0} has no IPv4 address; pass --iface NAME or --public-ip ADDR")]
    NoAddress(String),
    #[error("--iface {0:?} is neither an interface name, an IPv4 address nor a valid regex: {1}")]
    BadRegex(String, String),
    #[error("cannot list network interfaces: {0}")]
    List(String),
    #[error("cannot read the MTU of {0}: {1}")]
    Mtu(String, String),
}

/// How the operator asked for the underlay interface (flanneld's flags).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IfaceWanted {
    /// `--iface`: names or addresses (weft also takes a regex over names here), tried in order.
    pub iface: Vec<String>,
    /// `--iface-regex`: regexes over addresses, then names, tried in order after `iface`.
    pub regex: Vec<String>,
    /// `--iface-can-reach`: the interface (and source address) the kernel would use to reach this address.
    pub can_reach: Option<Ipv4Addr>,
}

impl IfaceWanted {
    fn is_empty(&self) -> bool {
        self.iface.is_empty() && self.regex.is_empty() && self.can_reach.is_none()
    }

    fn describe(&self) -> String {
        let mut v: Vec<String> = Vec::new();
        if !self.iface.is_empty() {
            v.push(format!("--iface {}", self.iface.join(",")));
        }
        if !self.regex.is_empty() {
            v.push(format!("--iface-regex {}", self.regex.join(",")));
        }
        if let Some(ip) = self.can_reach {
            v.push(format!("--iface-can-reach {ip}"));
        }
        v.join(", ")
    }
}

/// Picks among `ifaces` (pure): each `--iface` value in order is an exact name, an address held by an
/// interface, or a regex over names; then each `--iface-regex` over addresses, then names; then what
/// `reach` (the kernel's route to `--iface-can-reach`) says; with none given, the interface holding
/// `public_ip`, else `default_iface`.
pub fn pick(
    ifaces: &[IfaceInfo],
    wanted: &IfaceWanted,
    reach: impl FnOnce(Ipv4Addr) -> Option<(String, Ipv4Addr)>,
    public_ip: Option<Ipv4Addr>,
    default_iface: Option<&str>,
) -> Result<(String, Ipv4Addr), IfaceError> {
    let first = |i: &IfaceInfo| i.addrs.first().map(|a| (i.name.clone(), *a));
    if !wanted.is_empty() {
        if let Some(found) = pick_by_iface(ifaces, &wanted.iface)? {
            return Ok(found);
        }
        for r in &wanted.regex {
            let re = Regex::new(&format!("^(?:{r})$"))
                .map_err(|e| IfaceError::BadIfaceRegex(r.clone(), e.to_string()))?;
            let by_addr = ifaces.iter().find_map(|i| {
                i.addrs
                    .iter()
                    .find(|a| re.is_match(&a.to_string()))
                    .map(|a| (i.name.clone(), *a))
            });
            if let Some(found) = by_addr.or_else(|| {
                ifaces
                    .iter()
                    .filter(|i| re.is_match(&i.name))
                    .find_map(first)
            }) {
                return Ok(found);
            }
        }
        if let Some(found) = wanted.can_reach.and_then(reach) {
            return Ok(found);
        }
        let names: Vec<&str> = ifaces.iter().map(|i| i.name.as_str()).collect();
        return Err(IfaceError::NoMatch(wanted.describe(), names.join(", ")));
    }
    if let Some(ip) = public_ip {
        if let Some(i) = ifaces.iter().find(|i| i.addrs.contains(&ip)) {
            return Ok((i.name.clone(), ip));
        }
    }
    let def = default_iface.ok_or(IfaceError::NoDefaultRoute)?;
    ifaces
        .iter()
        .find(|i| i.name == def)
        .and_then(first)
        .ok_or_else(|| IfaceError::NoAddress(def.to_string()))
}

/// The IPv6 twin of [`pick`], for a host whose underlay has no IPv4 address (IPv6-only networks, as flannel
/// picks by IPv6 there): each `--iface` value is a name or an IPv6 address, each `--iface-regex` matches an
/// address or a name; with none given, the interface holding `public_ipv6`, else `default_iface` (the IPv6
/// default route's). Only interfaces with a global IPv6 address count.
pub fn pick6(
    ifaces: &[IfaceInfo],
    wanted: &IfaceWanted,
    public_ipv6: Option<Ipv6Addr>,
    default_iface: Option<&str>,
) -> Option<(String, Ipv6Addr)> {
    let first = |i: &IfaceInfo| i.addrs6.first().map(|a| (i.name.clone(), *a));
    let holding = |a: Ipv6Addr| {
        ifaces
            .iter()
            .find(|i| i.addrs6.contains(&a))
            .map(|i| (i.name.clone(), a))
    };
    if !wanted.is_empty() {
        for w in &wanted.iface {
            let found = match w.parse::<Ipv6Addr>() {
                Ok(a) => holding(a),
                Err(_) => ifaces.iter().find(|i| &i.name == w).and_then(first),
            };
            if found.is_some() {
                return found;
            }
        }
        for r in &wanted.regex {
            let Ok(re) = Regex::new(&format!("^(?:{r})$")) else {
                continue;
            };
            let by_addr = ifaces.iter().find_map(|i| {
                let a = i.addrs6.iter().find(|a| re.is_match(&a.to_string()))?;
                Some((i.name.clone(), *a))
            });
            let found = by_addr.or_else(|| {
                ifaces
                    .iter()
                    .filter(|i| re.is_match(&i.name))
                    .find_map(first)
            });
            if found.is_some() {
                return found;
            }
        }
        return None;
    }
    if let Some(found) = public_ipv6.and_then(holding) {
        return Some(found);
    }
    ifaces
        .iter()
        .find(|i| Some(i.name.as_str()) == default_iface)
        .and_then(first)
}

/// The first `--iface` value that names an interface with an address, holds an address, or (weft's
/// extension) is a regex matching an interface's name.
fn pick_by_iface(
    ifaces: &[IfaceInfo],
    wanted: &[String],
) -> Result<Option<(String, Ipv4Addr)>, IfaceError> {
    let first = |i: &IfaceInfo| i.addrs.first().map(|a| (i.name.clone(), *a));
    {
        for w in wanted {
            if let Some(i) = ifaces.iter().find(|i| &i.name == w) {
                if let Some(found) = first(i) {
                    return Ok(Some(found));
                }
                continue;
            }
            if let Ok(addr) = w.parse::<Ipv4Addr>() {
                if let Some(i) = ifaces.iter().find(|i| i.addrs.contains(&addr)) {
                    return Ok(Some((i.name.clone(), addr)));
                }
                continue;
            }
            let re = Regex::new(&format!("^(?:{w})$"))
                .map_err(|e| IfaceError::BadRegex(w.clone(), e.to_string()))?;
            if let Some(found) = ifaces
                .iter()
                .filter(|i| re.is_match(&i.name))
                .find_map(first)
            {
                return Ok(Some(found));
            }
        }
    }
    Ok(None)
}

/// The output interface of the default route of `family` in the main table, among dumped routes (pure).
pub fn default_route_oif(routes: &[RouteMessage], family: AddressFamily) -> Option<u32> {
    routes.iter().find_map(|r| {
        let table = r
            .attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::Table(t) => Some(*t),
                _ => None,
            })
            .unwrap_or(u32::from(r.header.table));
        let is_default = r.header.address_family == family
            && r.header.destination_prefix_length == 0
            && table == u32::from(RouteHeader::RT_TABLE_MAIN);
        is_default
            .then(|| {
                r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                })
            })
            .flatten()
    })
}

/// The interface of the default route of `family` (main table), read over netlink.
fn default_route_iface(family: AddressFamily) -> Result<Option<String>, IfaceError> {
    let mut nl = Rtnl::open().map_err(|e| IfaceError::List(e.to_string()))?;
    let mut msg = RouteMessage::default();
    msg.header.address_family = family;
    let routes: Vec<RouteMessage> = nl
        .request(
            RouteNetlinkMessage::GetRoute(msg),
            NLM_F_REQUEST | NLM_F_DUMP,
        )
        .map_err(|e| IfaceError::List(format!("reading routes: {e}")))?
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewRoute(r) => Some(r),
            _ => None,
        })
        .collect();
    let Some(index) = default_route_oif(&routes, family) else {
        return Ok(None);
    };
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    Ok(link(&mut nl, msg)?.into_iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n),
        _ => None,
    }))
}

/// One link's attributes (by index in the header, or by an `IfName` attribute).
fn link(nl: &mut Rtnl, msg: LinkMessage) -> Result<Vec<LinkAttribute>, IfaceError> {
    let replies = nl
        .request(RouteNetlinkMessage::GetLink(msg), NLM_F_REQUEST)
        .map_err(|e| IfaceError::List(format!("reading a link: {e}")))?;
    Ok(replies
        .into_iter()
        .flat_map(|r| match r {
            RouteNetlinkMessage::NewLink(l) => l.attributes,
            _ => Vec::new(),
        })
        .collect())
}

/// Lists this namespace's interfaces that are up, with their IPv4 addresses.
pub fn list_interfaces() -> Result<Vec<IfaceInfo>, IfaceError> {
    use nix::net::if_::InterfaceFlags;
    let mut out: Vec<IfaceInfo> = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().map_err(|e| IfaceError::List(e.to_string()))? {
        if !ifa.flags.contains(InterfaceFlags::IFF_UP) {
            continue;
        }
        let addr = ifa
            .address
            .as_ref()
            .and_then(|a| a.as_sockaddr_in())
            .map(|s| s.ip());
        let addr6 = ifa
            .address
            .as_ref()
            .and_then(|a| a.as_sockaddr_in6())
            .map(|s| s.ip())
            .filter(crate::control::lease::is_usable_ipv6);
        let entry = match out.iter_mut().position(|i| i.name == ifa.interface_name) {
            Some(p) => &mut out[p],
            None => {
                out.push(IfaceInfo {
                    name: ifa.interface_name.clone(),
                    ..Default::default()
                });
                out.last_mut().expect("just pushed")
            }
        };
        if let Some(a) = addr {
            entry.addrs.push(a);
        }
        if let Some(a) = addr6 {
            entry.addrs6.push(a);
        }
    }
    Ok(out)
}

/// The first global IPv6 address of interface `name` (not link-local, loopback, multicast or
/// unique-local-less: any address a peer could reach), as flannel picks its IPv6 underlay address.
pub fn global_ipv6_of(name: &str) -> Option<Ipv6Addr> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    addrs
        .filter(|ifa| ifa.interface_name == name)
        .filter_map(|ifa| ifa.address.as_ref()?.as_sockaddr_in6().map(|s| s.ip()))
        .find(crate::control::lease::is_usable_ipv6)
}

/// Reads an interface's MTU over netlink (valid in this network namespace, unlike a stale /sys).
pub fn mtu_of(name: &str) -> Result<u32, IfaceError> {
    let err = |e: String| IfaceError::Mtu(name.to_string(), e);
    let mut nl = Rtnl::open().map_err(|e| err(e.to_string()))?;
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    let attrs = link(&mut nl, msg).map_err(|e| err(e.to_string()))?;
    attrs
        .into_iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(m),
            _ => None,
        })
        .ok_or_else(|| err("the kernel reported no MTU".into()))
}

/// The interface and source address the kernel would use to reach `dst` (`ip route get`), over netlink.
fn route_to(dst: Ipv4Addr) -> Option<(String, Ipv4Addr)> {
    let mut nl = Rtnl::open().ok()?;
    let to = nl.route_to(dst).ok()??;
    let mut msg = LinkMessage::default();
    msg.header.index = to.oif?;
    let name = link(&mut nl, msg).ok()?.into_iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n),
        _ => None,
    })?;
    let src = match to.prefsrc {
        Some(s) => s,
        None => list_interfaces()
            .ok()?
            .into_iter()
            .find(|i| i.name == name)?
            .addrs
            .first()
            .copied()?,
    };
    Some((name, src))
}

/// Picks the underlay on this host from the flags.
pub fn detect(
    wanted: &IfaceWanted,
    public_ip: Option<Ipv4Addr>,
    public_ipv6: Option<Ipv6Addr>,
) -> Result<Underlay, IfaceError> {
    let ifaces = list_interfaces()?;
    let def = default_route_iface(AddressFamily::Inet)?;
    let (iface, local_ip) = match pick(&ifaces, wanted, route_to, public_ip, def.as_deref()) {
        Ok(found) => found,
        // No IPv4 underlay: an IPv6-only host, fine for an IPv6-only network (checked once the network
        // config is known); with no IPv6 one either, the IPv4 reason is the one to give.
        Err(e) if public_ip.is_none() => {
            let def6 = default_route_iface(AddressFamily::Inet6)?;
            let Some((iface, ip6)) = pick6(&ifaces, wanted, public_ipv6, def6.as_deref()) else {
                return Err(e);
            };
            return Ok(Underlay {
                mtu: mtu_of(&iface)?,
                iface,
                local_ip: Ipv4Addr::UNSPECIFIED,
                public_ip: Ipv4Addr::UNSPECIFIED,
                public_ipv6: public_ipv6.or(Some(ip6)),
                local_ip6: ip6,
            });
        }
        Err(e) => return Err(e),
    };
    let mtu = mtu_of(&iface)?;
    let local_ip6 = global_ipv6_of(&iface);
    Ok(Underlay {
        public_ipv6: public_ipv6.or(local_ip6),
        local_ip6: local_ip6.unwrap_or(Ipv6Addr::UNSPECIFIED),
        public_ip: public_ip.unwrap_or(local_ip),
        iface,
        local_ip,
        mtu,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ifs() -> Vec<IfaceInfo> {
        vec![
            IfaceInfo {
                name: "lo".into(),
                addrs: vec![Ipv4Addr::LOCALHOST],
                addrs6: vec![],
            },
            IfaceInfo {
                name: "eth0".into(),
                addrs: vec![Ipv4Addr::new(192, 0, 2, 10)],
                addrs6: vec![],
            },
            IfaceInfo {
                name: "ens5".into(),
                addrs: vec![Ipv4Addr::new(198, 51, 100, 7)],
                addrs6: vec![],
            },
            IfaceInfo {
                name: "dummy0".into(),
                addrs: vec![],
                addrs6: vec![],
            },
        ]
    }

    #[test]
    fn an_ipv6_only_underlay_is_picked_by_name_address_regex_or_default_route() {
        let a6 = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        let ifs = vec![
            IfaceInfo {
                name: "lo".into(),
                ..Default::default()
            },
            IfaceInfo {
                name: "eth0".into(),
                addrs6: vec![a6("2001:db8::10")],
                ..Default::default()
            },
            IfaceInfo {
                name: "ens5".into(),
                addrs6: vec![a6("fd00::7"), a6("fd00::8")],
                ..Default::default()
            },
        ];
        let w = |iface: &[&str], regex: &[&str]| IfaceWanted {
            iface: iface.iter().map(|x| x.to_string()).collect(),
            regex: regex.iter().map(|x| x.to_string()).collect(),
            can_reach: None,
        };
        let got = |wanted: &IfaceWanted, p6: Option<Ipv6Addr>, def: Option<&str>| {
            pick6(&ifs, wanted, p6, def).map(|(n, a)| format!("{n} {a}"))
        };
        let none = IfaceWanted::default();
        assert_eq!(got(&w(&["ens5"], &[]), None, None).unwrap(), "ens5 fd00::7");
        assert_eq!(
            got(&w(&["fd00::8"], &[]), None, None).unwrap(),
            "ens5 fd00::8"
        );
        assert_eq!(
            got(&w(&["lo", "eth0"], &[]), None, None).unwrap(),
            "eth0 2001:db8::10"
        );
        assert_eq!(
            got(&w(&[], &["2001:.*"]), None, None).unwrap(),
            "eth0 2001:db8::10"
        );
        assert_eq!(got(&w(&[], &["en.*"]), None, None).unwrap(), "ens5 fd00::7");
        assert_eq!(
            got(&w(&["nope"], &[]), None, Some("eth0")),
            None,
            "asked for, not found"
        );
        assert_eq!(
            got(&none, Some(a6("fd00::8")), Some("eth0")).unwrap(),
            "ens5 fd00::8"
        );
        assert_eq!(got(&none, None, Some("eth0")).unwrap(), "eth0 2001:db8::10");
        assert_eq!(
            got(&none, None, Some("lo")),
            None,
            "no global IPv6 address there"
        );
        assert_eq!(got(&none, None, None), None);
    }

    #[test]
    fn picks_by_name_address_and_regex() {
        let s = |v: &[&str]| IfaceWanted {
            iface: v.iter().map(|x| x.to_string()).collect(),
            ..Default::default()
        };
        let pick = |ifs: &[IfaceInfo], w: &IfaceWanted, p, d| pick(ifs, w, |_| None, p, d);
        assert_eq!(pick(&ifs(), &s(&["ens5"]), None, None).unwrap().0, "ens5");
        assert_eq!(
            pick(&ifs(), &s(&["192.0.2.10"]), None, None).unwrap().0,
            "eth0"
        );
        assert_eq!(pick(&ifs(), &s(&["en.*"]), None, None).unwrap().0, "ens5");
        assert_eq!(
            pick(&ifs(), &s(&["dummy0", "eth.*"]), None, None)
                .unwrap()
                .0,
            "eth0"
        );
        let e = pick(&ifs(), &s(&["wlan0"]), None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--iface wlan0") && e.contains("eth0"), "{e}");
        // --iface-regex after --iface, over addresses first, then names; then --iface-can-reach.
        let w = |iface: &[&str], regex: &[&str], reach: Option<Ipv4Addr>| IfaceWanted {
            iface: iface.iter().map(|x| x.to_string()).collect(),
            regex: regex.iter().map(|x| x.to_string()).collect(),
            can_reach: reach,
        };
        let got = |wanted: &IfaceWanted| {
            super::pick(
                &ifs(),
                wanted,
                |_| Some(("ens5".to_string(), Ipv4Addr::new(198, 51, 100, 7))),
                None,
                None,
            )
        };
        assert_eq!(got(&w(&["eth0"], &["ens.*"], None)).unwrap().0, "eth0");
        assert_eq!(got(&w(&["wlan0"], &["ens.*"], None)).unwrap().0, "ens5");
        assert_eq!(got(&w(&[], &["192\\.0\\.2\\..*"], None)).unwrap().0, "eth0");
        assert_eq!(
            got(&w(&[], &["nomatch"], Some(Ipv4Addr::new(8, 8, 8, 8))))
                .unwrap()
                .0,
            "ens5"
        );
        let e = got(&w(&["wlan0"], &["wl.*"], None))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--iface wlan0, --iface-regex wl.*"), "{e}");
        assert!(matches!(
            got(&w(&[], &["(("], None)),
            Err(IfaceError::BadIfaceRegex(..))
        ));
        assert!(matches!(
            pick(&ifs(), &s(&["(("]), None, None),
            Err(IfaceError::BadRegex(..))
        ));
    }

    #[test]
    fn default_route_and_public_ip() {
        let pick = |ifs: &[IfaceInfo], w: &[String], p, d| {
            pick(
                ifs,
                &IfaceWanted {
                    iface: w.to_vec(),
                    ..Default::default()
                },
                |_| None,
                p,
                d,
            )
        };
        assert_eq!(
            pick(&ifs(), &[], None, Some("eth0")).unwrap(),
            ("eth0".into(), Ipv4Addr::new(192, 0, 2, 10))
        );
        let nat = Ipv4Addr::new(203, 0, 113, 1);
        assert_eq!(
            pick(&ifs(), &[], Some(nat), Some("eth0")).unwrap().0,
            "eth0"
        );
        let held = Ipv4Addr::new(198, 51, 100, 7);
        assert_eq!(
            pick(&ifs(), &[], Some(held), Some("eth0")).unwrap().0,
            "ens5"
        );
        assert!(matches!(
            pick(&ifs(), &[], None, None),
            Err(IfaceError::NoDefaultRoute)
        ));
        assert!(matches!(
            pick(&ifs(), &[], None, Some("dummy0")),
            Err(IfaceError::NoAddress(_))
        ));
    }

    #[test]
    fn finds_the_main_tables_default_route() {
        let route = |len: u8, table: u8, oif: u32| {
            let mut r = RouteMessage::default();
            r.header.address_family = AddressFamily::Inet;
            r.header.destination_prefix_length = len;
            r.header.table = table;
            r.attributes.push(RouteAttribute::Oif(oif));
            r
        };
        let main = RouteHeader::RT_TABLE_MAIN;
        let local = 255; // RT_TABLE_LOCAL
                         // A /24 on eth1, a default route in another table, then the main table's default on eth0.
        let routes = [route(24, main, 3), route(0, local, 4), route(0, main, 2)];
        assert_eq!(default_route_oif(&routes, AddressFamily::Inet), Some(2));
        assert_eq!(default_route_oif(&routes[..2], AddressFamily::Inet), None);
        assert_eq!(default_route_oif(&[], AddressFamily::Inet), None);
    }
}
