//! Picks the underlay interface and public IP (--public-ip, --iface, or the default route's interface).

use std::net::Ipv4Addr;

use regex::Regex;

/// The chosen underlay: interface name, its MTU, and the public IP published in the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    pub iface: String,
    pub local_ip: Ipv4Addr,
    pub public_ip: Ipv4Addr,
    pub mtu: u32,
}

/// An interface with its IPv4 addresses, as seen in this network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfaceInfo {
    pub name: String,
    pub addrs: Vec<Ipv4Addr>,
}

/// Why no underlay could be picked; each says what to pass instead.
#[derive(Debug, thiserror::Error)]
pub enum IfaceError {
    #[error("none of --iface {0} names an interface with an IPv4 address here (interfaces: {1}); pass an interface name, an address or a regex that matches one")]
    NoMatch(String, String),
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

/// Picks among `ifaces` (pure): each `--iface` value in order is an exact name, an address held by an
/// interface, or a regex over names; with none given, the interface holding `public_ip`, else
/// `default_iface`.
pub fn pick(
    ifaces: &[IfaceInfo],
    wanted: &[String],
    public_ip: Option<Ipv4Addr>,
    default_iface: Option<&str>,
) -> Result<(String, Ipv4Addr), IfaceError> {
    let first = |i: &IfaceInfo| i.addrs.first().map(|a| (i.name.clone(), *a));
    if !wanted.is_empty() {
        for w in wanted {
            if let Some(i) = ifaces.iter().find(|i| &i.name == w) {
                if let Some(found) = first(i) {
                    return Ok(found);
                }
                continue;
            }
            if let Ok(addr) = w.parse::<Ipv4Addr>() {
                if let Some(i) = ifaces.iter().find(|i| i.addrs.contains(&addr)) {
                    return Ok((i.name.clone(), addr));
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
                return Ok(found);
            }
        }
        let names: Vec<&str> = ifaces.iter().map(|i| i.name.as_str()).collect();
        return Err(IfaceError::NoMatch(wanted.join(","), names.join(", ")));
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

/// The interface of the IPv4 default route, from `/proc/net/route` text (pure).
pub fn default_route_iface(proc_net_route: &str) -> Option<String> {
    proc_net_route.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() >= 8 && f[1] == "00000000" && f[7] == "00000000").then(|| f[0].to_string())
    })
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
        let entry = match out.iter_mut().position(|i| i.name == ifa.interface_name) {
            Some(p) => &mut out[p],
            None => {
                out.push(IfaceInfo {
                    name: ifa.interface_name.clone(),
                    addrs: Vec::new(),
                });
                out.last_mut().expect("just pushed")
            }
        };
        if let Some(a) = addr {
            entry.addrs.push(a);
        }
    }
    Ok(out)
}

/// Reads an interface's MTU with SIOCGIFMTU (valid in this network namespace, unlike a stale /sys).
pub fn mtu_of(name: &str) -> Result<u32, IfaceError> {
    let err = |e: String| IfaceError::Mtu(name.to_string(), e);
    if name.len() >= libc::IFNAMSIZ {
        return Err(err("interface name too long".into()));
    }
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| err(e.to_string()))?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *d = *s as libc::c_char;
    }
    use std::os::fd::AsRawFd;
    // SAFETY: SIOCGIFMTU reads ifr_name (NUL-terminated above, as the name is shorter than IFNAMSIZ)
    // and writes ifr_mtu within the ifreq we own; the socket fd is valid for the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut req) };
    if rc < 0 {
        return Err(err(std::io::Error::last_os_error().to_string()));
    }
    // SAFETY: after a successful SIOCGIFMTU the kernel filled the ifru_mtu member of the union.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    Ok(mtu as u32)
}

/// Picks the underlay on this host from the flags.
pub fn detect(wanted: &[String], public_ip: Option<Ipv4Addr>) -> Result<Underlay, IfaceError> {
    let ifaces = list_interfaces()?;
    let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let def = default_route_iface(&routes);
    let (iface, local_ip) = pick(&ifaces, wanted, public_ip, def.as_deref())?;
    let mtu = mtu_of(&iface)?;
    Ok(Underlay {
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
            },
            IfaceInfo {
                name: "eth0".into(),
                addrs: vec![Ipv4Addr::new(192, 0, 2, 10)],
            },
            IfaceInfo {
                name: "ens5".into(),
                addrs: vec![Ipv4Addr::new(198, 51, 100, 7)],
            },
            IfaceInfo {
                name: "dummy0".into(),
                addrs: vec![],
            },
        ]
    }

    #[test]
    fn picks_by_name_address_and_regex() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
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
        assert!(matches!(
            pick(&ifs(), &s(&["(("]), None, None),
            Err(IfaceError::BadRegex(..))
        ));
    }

    #[test]
    fn default_route_and_public_ip() {
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
    fn parses_proc_net_route() {
        let t =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                 eth0\t0002000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                 eth0\t00000000\t0102000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(default_route_iface(t).as_deref(), Some("eth0"));
        assert_eq!(default_route_iface("Iface\n"), None);
    }
}
