//! subnet.env (flannel's variables for dockerd) and the dockerd options derived from it, with no I/O.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

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
    pub network: Ipv4Net,
    /// The leased subnet (network address form, e.g. 10.5.72.0/24).
    pub subnet: Ipv4Net,
    pub mtu: u32,
    pub ipmasq: bool,
}

impl SubnetEnv {
    /// The file's text, in flannel's order and form (`FLANNEL_SUBNET` is the subnet's .1 address).
    pub fn render(&self) -> String {
        format!(
            "FLANNEL_NETWORK={}\nFLANNEL_SUBNET={}\nFLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n",
            self.network,
            bridge_address(&self.subnet),
            self.mtu,
            self.ipmasq
        )
    }

    /// Parses subnet.env text; errors name the variable that is missing or malformed.
    pub fn parse(text: &str) -> Result<Self, SubnetEnvError> {
        let vars = parse_vars(text);
        let get = |k: &'static str| {
            vars.get(k)
                .map(String::as_str)
                .ok_or(SubnetEnvError::Missing(k))
        };
        let network: Ipv4Net = get("FLANNEL_NETWORK")?
            .parse()
            .map_err(bad("FLANNEL_NETWORK", "an IPv4 network"))?;
        let subnet: Ipv4Net = get("FLANNEL_SUBNET")?
            .parse()
            .map_err(bad("FLANNEL_SUBNET", "an IPv4 address/length"))?;
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
            network,
            subnet: subnet.trunc(),
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

/// Turns subnet.env into dockerd options the way flannel's mk-docker-opts.sh does.
/// When weft masquerades (FLANNEL_IPMASQ=true) dockerd must not: `--ip-masq=false`.
pub fn docker_opts(env: &SubnetEnv, style: &DockerOptsStyle) -> String {
    let mut opts = vec![(
        "DOCKER_OPT_BIP",
        format!("--bip={}", bridge_address(&env.subnet)),
    )];
    if !style.no_ipmasq {
        opts.push(("DOCKER_OPT_IPMASQ", format!("--ip-masq={}", !env.ipmasq)));
    }
    opts.push(("DOCKER_OPT_MTU", format!("--mtu={}", env.mtu)));
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
            network: "10.5.0.0/16".parse().unwrap(),
            subnet: "10.5.72.0/24".parse().unwrap(),
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
            docker_opts(&e, &style),
            "DOCKER_OPTS=\"--bip=10.5.72.1/24 --ip-masq=false --mtu=1450\"\n"
        );
        let both = DockerOptsStyle {
            key: "OPTS".into(),
            combined: false,
            individual: false,
            no_ipmasq: true,
        };
        assert_eq!(
            docker_opts(&env(), &both),
            "DOCKER_OPT_BIP=\"--bip=10.5.72.1/24\"\nDOCKER_OPT_MTU=\"--mtu=1450\"\nOPTS=\"--bip=10.5.72.1/24 --mtu=1450\"\n"
        );
    }
}
