//! subnet.env (flannel's variables for dockerd) and the dockerd options derived from it (and from the installed
//! dockerd's version), with no I/O.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

/// Why a subnet.env text could not be read: the variable and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubnetEnvError {
    #[error("{0} is missing")]
    Missing(&'static str),
    #[error("{var} is not {expected}")]
    Malformed {
        var: &'static str,
        expected: &'static str,
    },
}

/// The contents of subnet.env.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    /// (Network, the leased subnet in network address form, e.g. 10.5.72.0/24); None on an IPv6-only
    /// network.
    pub ipv4: Option<(Ipv4Net, Ipv4Net)>,
    /// The IPv6 half of a dual-stack or IPv6-only network: (IPv6Network, leased IPv6 subnet in network form).
    pub ipv6: Option<(Ipv6Net, Ipv6Net)>,
    pub mtu: u32,
    pub ipmasq: bool,
}

impl SubnetEnv {
    /// The file's text, in flannel's order and form (`FLANNEL_SUBNET` is the subnet's .1 address).
    /// IPv6: `FLANNEL_IPV6_NETWORK` and `FLANNEL_IPV6_SUBNET` (the subnet's ::1) after the IPv4 pair, as flanneld
    /// writes them; an IPv6-only network has no IPv4 pair.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Some((network, subnet)) = self.ipv4 {
            out.push_str(&format!(
                "FLANNEL_NETWORK={network}\nFLANNEL_SUBNET={}\n",
                bridge_address(&subnet)
            ));
        }
        if let Some((network6, subnet6)) = self.ipv6 {
            out.push_str(&format!(
                "FLANNEL_IPV6_NETWORK={network6}\nFLANNEL_IPV6_SUBNET={}\n",
                bridge_address6(&subnet6)
            ));
        }
        out.push_str(&format!(
            "FLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n",
            self.mtu, self.ipmasq
        ));
        out
    }

    /// Parses subnet.env text; errors name the variable that is missing or malformed.
    pub fn parse(text: &str) -> Result<Self, SubnetEnvError> {
        let vars = parse_vars(text);
        let get = |k: &'static str| {
            vars.get(k)
                .map(String::as_str)
                .ok_or(SubnetEnvError::Missing(k))
        };
        let ipv4 = match (vars.get("FLANNEL_NETWORK"), vars.get("FLANNEL_SUBNET")) {
            // An IPv6-only network's file (checked below: it must have the IPv6 pair).
            (None, None) => None,
            _ => {
                let network: Ipv4Net = get("FLANNEL_NETWORK")?
                    .parse()
                    .map_err(bad("FLANNEL_NETWORK", "an IPv4 network"))?;
                let subnet: Ipv4Net = get("FLANNEL_SUBNET")?
                    .parse()
                    .map_err(bad("FLANNEL_SUBNET", "an IPv4 address/length"))?;
                Some((network, subnet.trunc()))
            }
        };
        let ipv6 = match (
            vars.get("FLANNEL_IPV6_NETWORK"),
            vars.get("FLANNEL_IPV6_SUBNET"),
        ) {
            (None, None) => None,
            (Some(n), Some(s)) => {
                let n: Ipv6Net = n
                    .parse()
                    .map_err(bad("FLANNEL_IPV6_NETWORK", "an IPv6 network"))?;
                let s: Ipv6Net = s
                    .parse()
                    .map_err(bad("FLANNEL_IPV6_SUBNET", "an IPv6 address/length"))?;
                Some((n, s.trunc()))
            }
            (Some(_), None) => return Err(SubnetEnvError::Missing("FLANNEL_IPV6_SUBNET")),
            (None, Some(_)) => return Err(SubnetEnvError::Missing("FLANNEL_IPV6_NETWORK")),
        };
        if ipv4.is_none() && ipv6.is_none() {
            return Err(SubnetEnvError::Missing("FLANNEL_SUBNET"));
        }
        let mtu: u32 = get("FLANNEL_MTU")?
            .parse()
            .map_err(bad("FLANNEL_MTU", "a number"))?;
        let ipmasq = match vars.get("FLANNEL_IPMASQ").map(String::as_str) {
            None | Some("false") => false,
            Some("true") => true,
            Some(_) => {
                return Err(SubnetEnvError::Malformed {
                    var: "FLANNEL_IPMASQ",
                    expected: "true or false",
                })
            }
        };
        Ok(SubnetEnv {
            ipv4,
            ipv6,
            mtu,
            ipmasq,
        })
    }
}

/// Maps any parse error to "`var` is not `expected`".
fn bad<E>(var: &'static str, expected: &'static str) -> impl FnOnce(E) -> SubnetEnvError {
    move |_| SubnetEnvError::Malformed { var, expected }
}

/// The subnet's first host address, which dockerd's bridge takes (`--bip`).
pub fn bridge_address(subnet: &Ipv4Net) -> Ipv4Net {
    let a = Ipv4Addr::from(u32::from(subnet.network()) + 1);
    Ipv4Net::new(a, subnet.prefix_len()).expect("same prefix length")
}

/// The IPv6 subnet's first host address (`::1`), which dockerd's bridge takes for `--fixed-cidr-v6`.
pub fn bridge_address6(subnet: &Ipv6Net) -> Ipv6Net {
    let a = Ipv6Addr::from(u128::from(subnet.network()) + 1);
    Ipv6Net::new(a, subnet.prefix_len()).expect("same prefix length")
}

/// Parses `KEY=value` lines (optionally quoted), skipping blanks and comments.
pub fn parse_vars(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            (k.trim().to_string(), v.to_string())
        })
        .collect()
}

/// Which forms of dockerd options to write, as mk-docker-opts.sh's `-c` and `-i`.
#[derive(Debug, Clone)]
pub struct DockerOptsStyle {
    /// Key of the combined variable (`-k`, default DOCKER_OPTS).
    pub key: String,
    /// Write the combined variable (`-c`).
    pub combined: bool,
    /// Write one variable per option (`-i`).
    pub individual: bool,
    /// Leave --ip-masq out (`-m`).
    pub no_ipmasq: bool,
}

/// A dockerd release, as `dockerd --version` reports it (distribution and pre-release suffixes dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DockerVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl std::fmt::Display for DockerVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl DockerVersion {
    /// Reads `dockerd --version` output ("Docker version 28.2.2, build e6534b4") or a bare version ("28.2.2",
    /// "v28.2.2", "20.10.24+dfsg1", "28.2.0-rc.1", "17.03.2-ce"); `None` when there is no X.Y or X.Y.Z.
    pub fn parse(text: &str) -> Option<Self> {
        let t = text.trim();
        let t = t.strip_prefix("Docker version ").unwrap_or(t);
        let t = t.strip_prefix('v').unwrap_or(t);
        let word = t.split([',', ' ', '\n']).next()?;
        let end = word
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(word.len());
        let (number, suffix) = word.split_at(end);
        if !(suffix.is_empty() || suffix.starts_with(['+', '-', '~'])) {
            return None;
        }
        let mut parts = number.split('.').map(|p| p.parse::<u32>().ok());
        let major = parts.next()??;
        let minor = parts.next()??;
        let patch = match parts.next() {
            None => 0,
            Some(p) => p?,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(DockerVersion {
            major,
            minor,
            patch,
        })
    }
}

/// What a dockerd does with packets other hosts send straight to its containers' addresses (the overlay's
/// traffic, arriving on weft0 / flannel.1 rather than on docker0), and what `weft docker-opts` can do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectRouting {
    /// Before 28.0: no filter of its own on them; nothing to add.
    Unfiltered,
    /// 28.0 and 28.1: a raw-table PREROUTING rule drops those to published ports (nothing later in the
    /// firewall can accept them again) and no dockerd option lifts it (moby/moby#49792).
    NoOption,
    /// 28.2 and later: the raw-table rule covers every port of the container, and the daemon option
    /// `--allow-direct-routing` lifts it for every bridge network, docker0 included.
    AllowFlag,
}

/// The `DirectRouting` case of a dockerd release.
pub fn direct_routing(v: DockerVersion) -> DirectRouting {
    let v = (v.major, v.minor);
    if v < (28, 0) {
        DirectRouting::Unfiltered
    } else if v < (28, 2) {
        DirectRouting::NoOption
    } else {
        DirectRouting::AllowFlag
    }
}

/// One plain line for the operator when the installed dockerd will drop the overlay's traffic whatever weft
/// writes; `None` otherwise.
pub fn direct_routing_note(v: DockerVersion) -> Option<String> {
    (direct_routing(v) == DirectRouting::NoOption).then(|| {
        format!(
            "dockerd {v} drops packets other hosts send to its containers and has no option to allow them \
             (moby/moby#49792); upgrade dockerd to 28.2 or later and run weft docker-opts again"
        )
    })
}

/// Turns subnet.env into dockerd options the way flannel's mk-docker-opts.sh does.
/// When weft masquerades (FLANNEL_IPMASQ=true) dockerd must not: `--ip-masq=false`.
/// For a dockerd of 28.2 or later (`dockerd`, when known) it adds `--allow-direct-routing`
/// (`DOCKER_OPT_DIRECT_ROUTING`), without which that dockerd drops the overlay's packets to its containers.
pub fn docker_opts(
    env: &SubnetEnv,
    style: &DockerOptsStyle,
    dockerd: Option<DockerVersion>,
) -> String {
    let mut opts = Vec::new();
    // An IPv6-only network leaves dockerd's IPv4 bridge at its default (host-local) range.
    if let Some((_, subnet)) = env.ipv4 {
        opts.push((
            "DOCKER_OPT_BIP",
            format!("--bip={}", bridge_address(&subnet)),
        ));
    }
    if !style.no_ipmasq {
        opts.push(("DOCKER_OPT_IPMASQ", format!("--ip-masq={}", !env.ipmasq)));
    }
    opts.push(("DOCKER_OPT_MTU", format!("--mtu={}", env.mtu)));
    if let Some((_, subnet6)) = env.ipv6 {
        // dockerd's bridge takes the subnet's first address, containers the rest; `--ipv6` turns it on.
        opts.push(("DOCKER_OPT_IPV6", "--ipv6".to_string()));
        opts.push((
            "DOCKER_OPT_FIXED_CIDR_V6",
            format!("--fixed-cidr-v6={subnet6}"),
        ));
    }
    if dockerd.map(direct_routing) == Some(DirectRouting::AllowFlag) {
        opts.push((
            "DOCKER_OPT_DIRECT_ROUTING",
            "--allow-direct-routing".to_string(),
        ));
    }
    // Neither -c nor -i means both, as in mk-docker-opts.sh.
    let (combined, individual) = if !style.combined && !style.individual {
        (true, true)
    } else {
        (style.combined, style.individual)
    };
    let mut out = String::new();
    if individual {
        for (k, v) in &opts {
            out.push_str(&format!("{k}=\"{v}\"\n"));
        }
    }
    if combined {
        let all: Vec<&str> = opts.iter().map(|(_, v)| v.as_str()).collect();
        out.push_str(&format!("{}=\"{}\"\n", style.key, all.join(" ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> SubnetEnv {
        SubnetEnv {
            ipv4: Some((
                "10.5.0.0/16".parse().unwrap(),
                "10.5.72.0/24".parse().unwrap(),
            )),
            ipv6: None,
            mtu: 1450,
            ipmasq: false,
        }
    }

    #[test]
    fn renders_flannels_file() {
        assert_eq!(
            env().render(),
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        );
    }

    #[test]
    fn dual_stack_file_and_docker_opts() {
        let mut e = env();
        e.ipv6 = Some((
            "fc00:5::/48".parse().unwrap(),
            "fc00:5:0:34::/64".parse().unwrap(),
        ));
        let text = e.render();
        assert_eq!(
            text,
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_IPV6_NETWORK=fc00:5::/48\nFLANNEL_IPV6_SUBNET=fc00:5:0:34::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        );
        assert_eq!(SubnetEnv::parse(&text).unwrap(), e);
        let style = DockerOptsStyle {
            key: "DOCKER_OPTS".into(),
            combined: true,
            individual: false,
            no_ipmasq: false,
        };
        assert_eq!(
            docker_opts(&e, &style, None),
            "DOCKER_OPTS=\"--bip=10.5.72.1/24 --ip-masq=true --mtu=1450 --ipv6 --fixed-cidr-v6=fc00:5:0:34::/64\"\n"
        );
        assert_eq!(
            SubnetEnv::parse(&text.replace("FLANNEL_IPV6_SUBNET=fc00:5:0:34::1/64\n", ""))
                .unwrap_err()
                .to_string(),
            "FLANNEL_IPV6_SUBNET is missing"
        );
    }

    #[test]
    fn parse_round_trips_and_names_problems() {
        assert_eq!(SubnetEnv::parse(&env().render()).unwrap(), env());
        assert_eq!(
            SubnetEnv::parse("FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_MTU=1450\n")
                .unwrap_err()
                .to_string(),
            "FLANNEL_SUBNET is missing"
        );
        assert!(SubnetEnv::parse("FLANNEL_NETWORK=x\n")
            .unwrap_err()
            .to_string()
            .contains("FLANNEL_NETWORK"));
    }

    #[test]
    fn docker_opts_like_mk_docker_opts() {
        let mut e = env();
        e.ipmasq = true;
        let style = DockerOptsStyle {
            key: "DOCKER_OPTS".into(),
            combined: true,
            individual: false,
            no_ipmasq: false,
        };
        assert_eq!(
            docker_opts(&e, &style, None),
            "DOCKER_OPTS=\"--bip=10.5.72.1/24 --ip-masq=false --mtu=1450\"\n"
        );
        let both = DockerOptsStyle {
            key: "OPTS".into(),
            combined: false,
            individual: false,
            no_ipmasq: true,
        };
        assert_eq!(
            docker_opts(&env(), &both, None),
            "DOCKER_OPT_BIP=\"--bip=10.5.72.1/24\"\nDOCKER_OPT_MTU=\"--mtu=1450\"\nOPTS=\"--bip=10.5.72.1/24 --mtu=1450\"\n"
        );
    }

    fn v(text: &str) -> Option<(u32, u32, u32)> {
        DockerVersion::parse(text).map(|v| (v.major, v.minor, v.patch))
    }

    #[test]
    fn reads_dockerd_versions() {
        assert_eq!(v("Docker version 28.2.2, build e6534b4"), Some((28, 2, 2)));
        assert_eq!(
            v("Docker version 28.2.2, build e6534b4\n"),
            Some((28, 2, 2))
        );
        assert_eq!(
            v("Docker version 20.10.24+dfsg1, build 297e128"),
            Some((20, 10, 24))
        );
        assert_eq!(
            v("Docker version 17.03.2-ce, build f5ec1e2"),
            Some((17, 3, 2))
        );
        assert_eq!(v("Docker version 1.13.1, build 092cba3"), Some((1, 13, 1)));
        assert_eq!(v("27.5.1"), Some((27, 5, 1)));
        assert_eq!(v("28.0.0"), Some((28, 0, 0)));
        assert_eq!(v("28.1.1"), Some((28, 1, 1)));
        assert_eq!(v("29.0.0"), Some((29, 0, 0)));
        assert_eq!(v(" v28.2.0-rc.1 "), Some((28, 2, 0)));
        assert_eq!(v("26.1.5+dfsg1"), Some((26, 1, 5)));
        assert_eq!(v("28.2"), Some((28, 2, 0)));
        for garbage in [
            "",
            "garbage",
            "Docker version dev, build abc",
            "28",
            "28.",
            "28.2.",
            "28..2",
            "1.2.3.4",
            "28.2.2x",
            "99999999999.0.0",
            "bash: dockerd: command not found",
        ] {
            assert_eq!(v(garbage), None, "{garbage:?}");
        }
        assert_eq!(
            DockerVersion::parse("Docker version 28.2.2, build e6534b4")
                .unwrap()
                .to_string(),
            "28.2.2"
        );
    }

    #[test]
    fn direct_routing_by_release() {
        use DirectRouting::*;
        for (text, want) in [
            ("1.13.1", Unfiltered),
            ("20.10.24+dfsg1", Unfiltered),
            ("27.5.1", Unfiltered),
            ("27.99.0", Unfiltered),
            ("28.0.0", NoOption),
            ("28.0.4", NoOption),
            ("28.1.1", NoOption),
            ("28.2.0", AllowFlag),
            ("Docker version 28.2.2, build e6534b4", AllowFlag),
            ("28.10.0", AllowFlag),
            ("29.0.0", AllowFlag),
            ("30.1.0", AllowFlag),
        ] {
            assert_eq!(
                direct_routing(DockerVersion::parse(text).unwrap()),
                want,
                "{text}"
            );
        }
    }

    #[test]
    fn only_28_0_and_28_1_get_a_note() {
        let note = |t: &str| direct_routing_note(DockerVersion::parse(t).unwrap());
        let n = note("28.1.1").expect("a note for 28.1");
        assert!(
            n.contains("dockerd 28.1.1") && n.contains("upgrade dockerd to 28.2"),
            "{n}"
        );
        assert!(note("28.0.0").is_some());
        for quiet in ["27.5.1", "20.10.24", "28.2.0", "29.0.0"] {
            assert_eq!(note(quiet), None, "{quiet}");
        }
    }

    #[test]
    fn docker_opts_allow_direct_routing_from_28_2() {
        let both = DockerOptsStyle {
            key: "DOCKER_OPTS".into(),
            combined: false,
            individual: false,
            no_ipmasq: false,
        };
        let at = |t: &str| docker_opts(&env(), &both, DockerVersion::parse(t));
        assert_eq!(
            at("Docker version 28.2.2, build e6534b4"),
            "DOCKER_OPT_BIP=\"--bip=10.5.72.1/24\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=true\"\n\
             DOCKER_OPT_MTU=\"--mtu=1450\"\nDOCKER_OPT_DIRECT_ROUTING=\"--allow-direct-routing\"\n\
             DOCKER_OPTS=\"--bip=10.5.72.1/24 --ip-masq=true --mtu=1450 --allow-direct-routing\"\n"
        );
        assert_eq!(at("29.0.0"), at("28.2.0"));
        // Older releases (and an unknown one) get exactly what mk-docker-opts.sh writes.
        let plain = docker_opts(&env(), &both, None);
        assert!(!plain.contains("direct"), "{plain}");
        for old in [
            "Docker version 20.10.24+dfsg1, build 297e128",
            "27.5.1",
            "28.0.0",
            "28.1.1",
        ] {
            assert_eq!(at(old), plain, "{old}");
        }
    }
}
