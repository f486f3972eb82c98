//! flannel's network config (`<prefix>/config`): parsing, defaults and validation, with no I/O.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::Deserialize;

use crate::control::lease::SubnetKey;
use serde_json::Value;

/// Default UDP port of the kernel's VXLAN devices as flannel configures them.
pub const DEFAULT_VXLAN_PORT: u16 = 8472;
/// Default UDP port of flannel's udp backend.
pub const DEFAULT_UDP_PORT: u16 = 8285;
/// Bytes a VXLAN encapsulation adds: outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14).
pub const VXLAN_OVERHEAD: u32 = 50;
/// Bytes flannel's udp encapsulation adds: outer IPv4 (20) + UDP (8).
pub const UDP_OVERHEAD: u32 = 28;
/// Default UDP port of flannel's wireguard backend (IPv4), and of its IPv6 device.
pub const DEFAULT_WIREGUARD_PORT: u16 = 51820;
pub const DEFAULT_WIREGUARD_PORT_V6: u16 = 51821;
/// What flannel's wireguard backend subtracts from the MTU: room for an IPv6 outer header (40) + UDP (8)
/// + WireGuard's data header (16) and tag (16), as wg-quick does.
pub const WIREGUARD_OVERHEAD: u32 = 80;

/// How much longer an IPv6 outer header is than an IPv4 one.
pub const IPV6_EXTRA: u32 = 20;

/// A validated network config with flannel's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// `Network` and its subnets; None on an IPv6-only network (`"EnableIPv4": false`).
    pub ipv4: Option<Ipv4Config>,
    /// The IPv6 half of a dual-stack or IPv6-only network (`EnableIPv6`), None on an IPv4-only network.
    pub ipv6: Option<Ipv6Config>,
    pub backend: Backend,
}

/// `Network` and its subnets, with flannel's defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Config {
    pub network: Ipv4Net,
    pub subnet_len: u8,
    pub subnet_min: Ipv4Addr,
    pub subnet_max: Ipv4Addr,
}

impl Ipv4Config {
    /// True if `subnet` is a subnet this config would lease (inside SubnetMin..=SubnetMax, right length).
    pub fn fits(&self, subnet: &Ipv4Net) -> bool {
        subnet.prefix_len() == self.subnet_len
            && subnet.network() == subnet.addr()
            && subnet.addr() >= self.subnet_min
            && subnet.addr() <= self.subnet_max
    }

    /// The number of subnets between SubnetMin and SubnetMax.
    pub fn subnet_count(&self) -> u64 {
        let size = 1u64 << (32 - self.subnet_len);
        (u64::from(u32::from(self.subnet_max)) - u64::from(u32::from(self.subnet_min))) / size + 1
    }
}

/// `IPv6Network` and its subnets, with flannel's defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Config {
    pub network: Ipv6Net,
    pub subnet_len: u8,
    pub subnet_min: Ipv6Addr,
    pub subnet_max: Ipv6Addr,
}

impl Ipv6Config {
    /// True if `subnet` is one this config would lease (inside IPv6SubnetMin..=IPv6SubnetMax, right length).
    pub fn fits(&self, subnet: &Ipv6Net) -> bool {
        subnet.prefix_len() == self.subnet_len
            && subnet.network() == subnet.addr()
            && subnet.addr() >= self.subnet_min
            && subnet.addr() <= self.subnet_max
    }

    /// The number of subnets between IPv6SubnetMin and IPv6SubnetMax (saturating).
    pub fn subnet_count(&self) -> u64 {
        let span = u128::from(self.subnet_max) - u128::from(self.subnet_min);
        let n = (span >> (128 - u32::from(self.subnet_len))).saturating_add(1);
        u64::try_from(n).unwrap_or(u64::MAX)
    }
}

/// The encapsulation a network uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Vxlan(VxlanOptions),
    Udp(UdpOptions),
    WireGuard(WireGuardOptions),
    /// flannel's host-gw: no encapsulation, each peer's subnet routed via its public IP (one L2 segment).
    HostGw,
}

/// Options of the `vxlan` backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanOptions {
    pub vni: u32,
    /// UDP port; 0 in the JSON means the kernel default 8472.
    pub port: u16,
    /// Overrides the underlay MTU used to derive the overlay MTU.
    pub mtu: Option<u32>,
    pub gbp: bool,
    pub learning: bool,
    pub direct_routing: bool,
}

/// Options of the `udp` backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpOptions {
    pub port: u16,
}

/// Options of the `wireguard` backend, as flannel reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireGuardOptions {
    /// UDP port of the IPv4 device (flannel's `ListenPort`).
    pub listen_port: u16,
    /// UDP port of the IPv6 device (`ListenPortV6`; accepted, used by the IPv6 work).
    pub listen_port_v6: u16,
    /// Overrides the underlay MTU used to derive the overlay MTU.
    pub mtu: Option<u32>,
    /// A preshared key mixed into every handshake (`PSK`, base64 of 32 bytes).
    pub psk: Option<[u8; 32]>,
    /// Seconds between keepalives to each peer (`PersistentKeepaliveInterval`; 0: none).
    pub keepalive: u16,
    pub mode: WireGuardMode,
}

/// flannel's `Mode`: one device per address family, or one for both. With IPv4 only, all behave alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireGuardMode {
    Separate,
    Auto,
    Ipv4,
    Ipv6,
}

/// Why a network config was refused; each message names the field and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("network config is not valid JSON: {0}")]
    Json(String),
    #[error("field {field}: {problem}")]
    Field {
        field: &'static str,
        problem: String,
    },
}

fn field(field: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field,
        problem: problem.into(),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawConfig {
    network: Option<String>,
    #[serde(rename = "EnableIPv4")]
    enable_ipv4: Option<bool>,
    #[serde(rename = "EnableIPv6")]
    enable_ipv6: Option<bool>,
    #[serde(rename = "IPv6Network")]
    ipv6_network: Option<String>,
    #[serde(rename = "IPv6SubnetLen")]
    ipv6_subnet_len: Option<u32>,
    #[serde(rename = "IPv6SubnetMin")]
    ipv6_subnet_min: Option<String>,
    #[serde(rename = "IPv6SubnetMax")]
    ipv6_subnet_max: Option<String>,
    subnet_len: Option<u32>,
    subnet_min: Option<String>,
    subnet_max: Option<String>,
    backend: Option<Value>,
}

impl Backend {
    /// The `BackendType` string written in leases.
    /// Options the config turns on that weft parses but does not act on yet (said once at start).
    pub fn unsupported_options(&self) -> Vec<&'static str> {
        match self {
            Backend::Vxlan(v) => [(v.gbp, "Backend.GBP"), (v.learning, "Backend.Learning")]
                .into_iter()
                .filter_map(|(on, name)| on.then_some(name))
                .collect(),
            Backend::Udp(_) | Backend::WireGuard(_) | Backend::HostGw => Vec::new(),
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Backend::Vxlan(_) => "vxlan",
            Backend::Udp(_) => "udp",
            Backend::WireGuard(_) => "wireguard",
            Backend::HostGw => "host-gw",
        }
    }

    /// The UDP port the backend listens on and sends to.
    pub fn port(&self) -> u16 {
        match self {
            Backend::Vxlan(v) if v.port == 0 => DEFAULT_VXLAN_PORT,
            Backend::Vxlan(v) => v.port,
            Backend::Udp(u) => u.port,
            Backend::WireGuard(w) => w.listen_port,
            // No UDP at all.
            Backend::HostGw => 0,
        }
    }

    /// The overlay MTU for an underlay of `underlay_mtu` bytes (flannel's FLANNEL_MTU).
    pub fn overlay_mtu(&self, underlay_mtu: u32) -> u32 {
        match self {
            Backend::Vxlan(v) => v.mtu.unwrap_or(underlay_mtu).saturating_sub(VXLAN_OVERHEAD),
            Backend::Udp(_) => underlay_mtu.saturating_sub(UDP_OVERHEAD),
            Backend::WireGuard(w) => w
                .mtu
                .unwrap_or(underlay_mtu)
                .saturating_sub(WIREGUARD_OVERHEAD),
            // Packets cross the underlay as they are.
            Backend::HostGw => underlay_mtu,
        }
    }
}

impl NetworkConfig {
    /// Parses and validates flannel's JSON network config, filling in flannel's defaults.
    pub fn parse(json: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig =
            serde_json::from_str(json).map_err(|e| ConfigError::Json(e.to_string()))?;
        let ipv6 = if raw.enable_ipv6 == Some(true) {
            Some(parse_ipv6(&raw)?)
        } else {
            None
        };
        let backend = parse_backend(raw.backend.as_ref())?;
        if raw.enable_ipv4 == Some(false) {
            // flannel ignores Network and its twins on an IPv6-only network.
            if ipv6.is_none() {
                return Err(field(
                    "EnableIPv4",
                    "false leaves the network without any address family: set EnableIPv6 to true with an IPv6Network, or remove EnableIPv4",
                ));
            }
            check_wireguard_mode(&backend)?;
            return Ok(NetworkConfig {
                ipv4: None,
                ipv6,
                backend,
            });
        }
        let ipv4 = parse_ipv4(&raw)?;
        if ipv6.is_some() {
            check_wireguard_mode(&backend)?;
        }
        Ok(NetworkConfig {
            ipv4: Some(ipv4),
            ipv6,
            backend,
        })
    }

    /// The overlay MTU (subnet.env, the tun, dockerd's `--mtu`): the backend's, and on a dual-stack network
    /// 20 bytes less for vxlan and udp, whose IPv6 traffic crosses the IPv6 underlay under a 40-byte header
    /// (flannel keeps the IPv4 figure and lets the kernel fragment; weft does not fragment).
    pub fn overlay_mtu(&self, underlay_mtu: u32) -> u32 {
        let mtu = self.backend.overlay_mtu(underlay_mtu);
        match (&self.ipv6, &self.backend) {
            (Some(_), Backend::Vxlan(_) | Backend::Udp(_)) => mtu.saturating_sub(IPV6_EXTRA),
            _ => mtu,
        }
    }

    /// A lease key as this network routes it: the half of a family the network does not have is ignored,
    /// as flannel ignores it (a dual-stack key's IPv6 half on an IPv4-only network, its IPv4 half on an
    /// IPv6-only one). None if nothing is left to route.
    pub fn routed_key(&self, key: SubnetKey) -> Option<SubnetKey> {
        let v4 = key.v4.filter(|_| self.ipv4.is_some());
        let v6 = key.v6.filter(|_| self.ipv6.is_some());
        (v4.is_some() || v6.is_some()).then_some(SubnetKey { v4, v6 })
    }

    /// True on an IPv6-only network (`"EnableIPv4": false`).
    pub fn ipv6_only(&self) -> bool {
        self.ipv4.is_none()
    }
}

/// With IPv6 on, weft's wireguard backend runs flannel's default `Mode` `separate` (a device per family:
/// IPv6 on `ListenPortV6`); one device carrying both (`auto`, `ipv4`, `ipv6`) is not implemented.
fn check_wireguard_mode(backend: &Backend) -> Result<(), ConfigError> {
    match backend {
        Backend::WireGuard(w) if w.mode != WireGuardMode::Separate => Err(field(
            "Backend.Mode",
            "weft carries IPv6 over WireGuard in flannel's default mode \"separate\" (one device per family) only; remove Mode or set it to \"separate\"",
        )),
        _ => Ok(()),
    }
}

/// flannel's rules for `Network` and its subnets, with its defaults.
fn parse_ipv4(raw: &RawConfig) -> Result<Ipv4Config, ConfigError> {
    let network = parse_network(raw.network.as_deref())?;
    let ones = network.prefix_len();
    let subnet_len = match raw.subnet_len {
        Some(0) | None => {
            if ones > 28 {
                return Err(field(
                    "Network",
                    format!("{network} is too small: the smallest useful Network is a /28"),
                ));
            } else if ones <= 22 {
                24
            } else {
                ones + 2
            }
        }
        Some(len) => {
            if len > 30 {
                return Err(field(
                    "SubnetLen",
                    format!("{len} is too long: it must be at most 30 so each host has room for a bridge and containers"),
                ));
            }
            if len < u32::from(ones) + 2 {
                return Err(field(
                    "SubnetLen",
                    format!(
                        "{len} is too short for Network {network}: it must be at least {} so the Network holds four or more subnets",
                        ones + 2
                    ),
                ));
            }
            len as u8
        }
    };
    let size = 1u32 << (32 - subnet_len);
    let net_start = u32::from(network.network());
    let net_end = u32::from(network.broadcast());
    let subnet_min = match raw.subnet_min.as_deref() {
        None | Some("") => Ipv4Addr::from(net_start + size),
        Some(s) => parse_bound("SubnetMin", s, &network, subnet_len)?,
    };
    let subnet_max = match raw.subnet_max.as_deref() {
        None | Some("") => Ipv4Addr::from(net_end - size + 1),
        Some(s) => parse_bound("SubnetMax", s, &network, subnet_len)?,
    };
    if subnet_min > subnet_max {
        return Err(field(
            "SubnetMin",
            format!("{subnet_min} is above SubnetMax {subnet_max}: no subnet could be leased"),
        ));
    }
    Ok(Ipv4Config {
        network,
        subnet_len,
        subnet_min,
        subnet_max,
    })
}

fn parse_network(s: Option<&str>) -> Result<Ipv4Net, ConfigError> {
    let s = s.ok_or_else(|| {
        field(
            "Network",
            "missing: give the overlay's address range, e.g. \"Network\": \"10.5.0.0/16\"",
        )
    })?;
    let net: Ipv4Net = s.parse().map_err(|_| {
        field(
            "Network",
            format!("{s:?} is not an IPv4 network in CIDR form such as 10.5.0.0/16"),
        )
    })?;
    if net.network() != net.addr() {
        return Err(field(
            "Network",
            format!("{s} has host bits set; did you mean {}?", net.trunc()),
        ));
    }
    Ok(net)
}

/// flannel's rules for the IPv6 half (`CheckNetworkConfig`), with its defaults: IPv6SubnetLen 64 for an
/// IPv6Network of /62 or shorter, else its prefix + 2; the first and last subnets skipped by default.
fn parse_ipv6(raw: &RawConfig) -> Result<Ipv6Config, ConfigError> {
    let s = raw.ipv6_network.as_deref().ok_or_else(|| {
        field(
            "IPv6Network",
            "missing: EnableIPv6 needs the overlay's IPv6 range, e.g. \"IPv6Network\": \"fc00:5::/48\"",
        )
    })?;
    let network: Ipv6Net = s.parse().map_err(|_| {
        field(
            "IPv6Network",
            format!("{s:?} is not an IPv6 network in CIDR form such as fc00:5::/48"),
        )
    })?;
    if network.network() != network.addr() {
        return Err(field(
            "IPv6Network",
            format!("{s} has host bits set; did you mean {}?", network.trunc()),
        ));
    }
    let ones = u32::from(network.prefix_len());
    let subnet_len = match raw.ipv6_subnet_len {
        Some(0) | None => {
            if ones > 124 {
                return Err(field(
                    "IPv6Network",
                    format!("{network} is too small: the smallest useful IPv6Network is a /124"),
                ));
            } else if ones <= 62 {
                64
            } else {
                ones + 2
            }
        }
        Some(len) if len > 126 => {
            return Err(field(
                "IPv6SubnetLen",
                format!("{len} is too long: it must be at most 126"),
            ))
        }
        Some(len) if len < ones + 2 => {
            return Err(field(
                "IPv6SubnetLen",
                format!(
                    "{len} is too short for IPv6Network {network}: it must be at least {} so the network holds four or more subnets",
                    ones + 2
                ),
            ))
        }
        Some(len) => len,
    } as u8;
    let size = 1u128 << (128 - u32::from(subnet_len));
    let start = u128::from(network.network());
    let end = u128::from(network.broadcast());
    let bound =
        |name: &'static str, v: Option<&str>, default: u128| -> Result<Ipv6Addr, ConfigError> {
            let Some(s) = v.filter(|s| !s.is_empty()) else {
                return Ok(Ipv6Addr::from(default));
            };
            let addr: Ipv6Addr = s
                .parse()
                .map_err(|_| field(name, format!("{s:?} is not an IPv6 address")))?;
            if !network.contains(&addr) {
                return Err(field(
                    name,
                    format!("{addr} is not inside IPv6Network {network}"),
                ));
            }
            let aligned = u128::from(addr) & !(size - 1);
            if aligned != u128::from(addr) {
                return Err(field(
                    name,
                    format!(
                    "{addr} is not on a /{subnet_len} (IPv6SubnetLen) boundary; did you mean {}?",
                    Ipv6Addr::from(aligned)
                ),
                ));
            }
            Ok(addr)
        };
    let subnet_min = bound(
        "IPv6SubnetMin",
        raw.ipv6_subnet_min.as_deref(),
        start + size,
    )?;
    let subnet_max = bound(
        "IPv6SubnetMax",
        raw.ipv6_subnet_max.as_deref(),
        end - size + 1,
    )?;
    if subnet_min > subnet_max {
        return Err(field(
            "IPv6SubnetMin",
            format!("{subnet_min} is above IPv6SubnetMax {subnet_max}: no subnet could be leased"),
        ));
    }
    Ok(Ipv6Config {
        network,
        subnet_len,
        subnet_min,
        subnet_max,
    })
}

fn parse_bound(
    name: &'static str,
    s: &str,
    network: &Ipv4Net,
    subnet_len: u8,
) -> Result<Ipv4Addr, ConfigError> {
    let addr: Ipv4Addr = s
        .parse()
        .map_err(|_| field(name, format!("{s:?} is not an IPv4 address")))?;
    if !network.contains(&addr) {
        return Err(field(
            name,
            format!("{addr} is not inside Network {network}"),
        ));
    }
    let mask = u32::MAX << (32 - subnet_len);
    if u32::from(addr) & mask != u32::from(addr) {
        return Err(field(
            name,
            format!(
                "{addr} is not on a /{subnet_len} (SubnetLen) boundary; did you mean {}?",
                Ipv4Addr::from(u32::from(addr) & mask)
            ),
        ));
    }
    Ok(addr)
}

fn opt_u64(
    obj: &serde_json::Map<String, Value>,
    key: &'static str,
) -> Result<Option<u64>, ConfigError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| field(key_field(key), format!("{v} is not a non-negative integer"))),
    }
}

fn opt_bool(obj: &serde_json::Map<String, Value>, key: &'static str) -> Result<bool, ConfigError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(field(key_field(key), format!("{v} is not true or false"))),
    }
}

fn key_field(key: &'static str) -> &'static str {
    match key {
        "VNI" => "Backend.VNI",
        "Port" => "Backend.Port",
        "MTU" => "Backend.MTU",
        "GBP" => "Backend.GBP",
        "Learning" => "Backend.Learning",
        "DirectRouting" => "Backend.DirectRouting",
        "ListenPort" => "Backend.ListenPort",
        "ListenPortV6" => "Backend.ListenPortV6",
        "PersistentKeepaliveInterval" => "Backend.PersistentKeepaliveInterval",
        _ => "Backend",
    }
}

fn port(obj: &serde_json::Map<String, Value>) -> Result<Option<u16>, ConfigError> {
    match opt_u64(obj, "Port")? {
        None => Ok(None),
        Some(p) => u16::try_from(p)
            .map(Some)
            .map_err(|_| field("Backend.Port", format!("{p} is not a UDP port (0-65535)"))),
    }
}

/// A port under `key` (a weft-facing name in errors), or `default` when absent or 0.
fn port_or(
    obj: &serde_json::Map<String, Value>,
    key: &'static str,
    default: u16,
) -> Result<u16, ConfigError> {
    match opt_u64(obj, key)? {
        None | Some(0) => Ok(default),
        Some(p) => u16::try_from(p)
            .map_err(|_| field(key_field(key), format!("{p} is not a UDP port (1-65535)"))),
    }
}

/// The underlay MTU override of a backend (`MTU`; 0 or absent: the interface's).
fn mtu_override(obj: &serde_json::Map<String, Value>) -> Result<Option<u32>, ConfigError> {
    match opt_u64(obj, "MTU")? {
        None | Some(0) => Ok(None),
        Some(m) if (576..=65535).contains(&m) => Ok(Some(m as u32)),
        Some(m) => Err(field(
            "Backend.MTU",
            format!("{m} is outside 576..=65535 (the underlay MTU in bytes)"),
        )),
    }
}

fn parse_wireguard(obj: &serde_json::Map<String, Value>) -> Result<Backend, ConfigError> {
    let psk = match obj.get("PSK") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(crate::control::key::decode_key(s).map_err(|why| {
            field(
                "Backend.PSK",
                format!("{why}; generate one with `wg genpsk` (base64 of 32 bytes)"),
            )
        })?),
        Some(other) => {
            return Err(field(
                "Backend.PSK",
                format!("{other} is not a string (base64 of 32 bytes, as `wg genpsk` prints)"),
            ))
        }
    };
    let keepalive = match opt_u64(obj, "PersistentKeepaliveInterval")? {
        None => 0,
        Some(k) if k <= u64::from(u16::MAX) => k as u16,
        Some(k) => {
            return Err(field(
                "Backend.PersistentKeepaliveInterval",
                format!("{k} is more than 65535 seconds"),
            ))
        }
    };
    let mode = match obj.get("Mode") {
        None | Some(Value::Null) => WireGuardMode::Separate,
        Some(Value::String(s)) => match s.as_str() {
            "separate" | "" => WireGuardMode::Separate,
            "auto" => WireGuardMode::Auto,
            "ipv4" => WireGuardMode::Ipv4,
            "ipv6" => WireGuardMode::Ipv6,
            other => {
                return Err(field(
                    "Backend.Mode",
                    format!("{other:?} is not a valid Mode; use \"separate\", \"auto\", \"ipv4\" or \"ipv6\""),
                ))
            }
        },
        Some(other) => return Err(field("Backend.Mode", format!("{other} is not a string"))),
    };
    Ok(Backend::WireGuard(WireGuardOptions {
        listen_port: port_or(obj, "ListenPort", DEFAULT_WIREGUARD_PORT)?,
        listen_port_v6: port_or(obj, "ListenPortV6", DEFAULT_WIREGUARD_PORT_V6)?,
        mtu: mtu_override(obj)?,
        psk,
        keepalive,
        mode,
    }))
}

fn parse_backend(v: Option<&Value>) -> Result<Backend, ConfigError> {
    let empty = serde_json::Map::new();
    let obj = match v {
        // flannel's code treats a missing Backend as udp.
        None | Some(Value::Null) => &empty,
        Some(Value::Object(o)) => o,
        Some(other) => {
            return Err(field(
                "Backend",
                format!("{other} is not an object such as {{\"Type\": \"vxlan\"}}"),
            ))
        }
    };
    let ty = match obj.get("Type") {
        None | Some(Value::Null) => "udp",
        Some(Value::String(s)) => s.as_str(),
        Some(other) => {
            return Err(field(
                "Backend.Type",
                format!(
                    "{other} is not a string; use \"vxlan\", \"udp\", \"wireguard\" or \"host-gw\""
                ),
            ))
        }
    };
    match ty {
        "vxlan" => {
            let vni = opt_u64(obj, "VNI")?.unwrap_or(1);
            if !(1..=0xFF_FFFF).contains(&vni) {
                return Err(field(
                    "Backend.VNI",
                    format!("{vni} is outside 1..=16777215 (VXLAN's 24-bit network identifier)"),
                ));
            }
            let mtu = mtu_override(obj)?;
            Ok(Backend::Vxlan(VxlanOptions {
                vni: vni as u32,
                port: port(obj)?.unwrap_or(0),
                mtu,
                gbp: opt_bool(obj, "GBP")?,
                learning: opt_bool(obj, "Learning")?,
                direct_routing: opt_bool(obj, "DirectRouting")?,
            }))
        }
        "udp" => Ok(Backend::Udp(UdpOptions {
            port: match port(obj)? {
                None | Some(0) => DEFAULT_UDP_PORT,
                Some(p) => p,
            },
        })),
        "wireguard" => parse_wireguard(obj),
        "host-gw" => Ok(Backend::HostGw),
        other => Err(field(
            "Backend.Type",
            format!("{other:?} is not supported by weft; use \"vxlan\", \"udp\", \"wireguard\" or \"host-gw\""),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(json: &str) -> NetworkConfig {
        NetworkConfig::parse(json).unwrap_or_else(|e| panic!("{json}: {e}"))
    }

    fn err(json: &str) -> String {
        NetworkConfig::parse(json).unwrap_err().to_string()
    }

    #[test]
    fn defaults_for_a_slash_16() {
        let c = ok(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#);
        assert_eq!(c.ipv4.unwrap().subnet_len, 24);
        assert_eq!(c.ipv4.unwrap().subnet_min, Ipv4Addr::new(10, 5, 1, 0));
        assert_eq!(c.ipv4.unwrap().subnet_max, Ipv4Addr::new(10, 5, 255, 0));
        assert_eq!(c.ipv4.unwrap().subnet_count(), 255);
        assert_eq!(
            c.backend,
            Backend::Vxlan(VxlanOptions {
                vni: 1,
                port: 0,
                mtu: None,
                gbp: false,
                learning: false,
                direct_routing: false
            })
        );
        assert_eq!(c.backend.port(), 8472);
        assert_eq!(c.backend.overlay_mtu(1500), 1450);
    }

    #[test]
    fn small_networks_split_in_four() {
        let c = ok(r#"{"Network":"10.5.0.0/24"}"#);
        assert_eq!(c.ipv4.unwrap().subnet_len, 26);
        assert_eq!(c.ipv4.unwrap().subnet_min, Ipv4Addr::new(10, 5, 0, 64));
        assert_eq!(c.ipv4.unwrap().subnet_max, Ipv4Addr::new(10, 5, 0, 192));
        let c = ok(r#"{"Network":"10.5.0.0/22"}"#);
        assert_eq!(c.ipv4.unwrap().subnet_len, 24);
    }

    #[test]
    fn wireguard_with_flannels_keys_and_defaults() {
        let c = ok(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard"}}"#);
        let Backend::WireGuard(w) = &c.backend else {
            panic!("{c:?}")
        };
        assert_eq!((w.listen_port, w.listen_port_v6), (51820, 51821));
        assert_eq!(
            (w.psk, w.keepalive, w.mode),
            (None, 0, WireGuardMode::Separate)
        );
        assert_eq!(c.backend.port(), 51820);
        assert_eq!(c.backend.overlay_mtu(1500), 1420);
        assert_eq!(c.backend.type_name(), "wireguard");
        let psk = crate::control::key::encode_key(&[1; 32]);
        let c = ok(&format!(
            r#"{{"Network":"10.5.0.0/16","Backend":{{"Type":"wireguard","ListenPort":51999,
                "ListenPortV6":52000,"PSK":"{psk}","MTU":9000,"PersistentKeepaliveInterval":25,"Mode":"auto"}}}}"#
        ));
        let Backend::WireGuard(w) = &c.backend else {
            panic!("{c:?}")
        };
        assert_eq!(w.listen_port, 51999);
        assert_eq!(w.psk, Some([1; 32]));
        assert_eq!((w.keepalive, w.mode), (25, WireGuardMode::Auto));
        assert_eq!(c.backend.overlay_mtu(1500), 8920);
        let wg = |b: &str| {
            err(&format!(
                r#"{{"Network":"10.5.0.0/16","Backend":{{"Type":"wireguard",{b}}}}}"#
            ))
        };
        assert!(wg(r#""PSK":"short""#).contains("field Backend.PSK"));
        assert!(wg(r#""PSK":"short""#).contains("wg genpsk"));
        assert!(wg(r#""Mode":"both""#).contains("field Backend.Mode"));
        assert!(wg(r#""ListenPort":70000"#).contains("field Backend.ListenPort"));
        assert!(wg(r#""PersistentKeepaliveInterval":-1"#)
            .contains("field Backend.PersistentKeepaliveInterval"));
        assert!(wg(r#""MTU":100"#).contains("field Backend.MTU"));
    }

    #[test]
    fn missing_backend_is_udp_like_flannel() {
        let c = ok(r#"{"Network":"10.5.0.0/16"}"#);
        assert_eq!(c.backend, Backend::Udp(UdpOptions { port: 8285 }));
        assert_eq!(c.backend.overlay_mtu(1500), 1472);
        assert_eq!(c.backend.type_name(), "udp");
    }

    #[test]
    fn explicit_options_are_kept() {
        let c = ok(
            r#"{"Network":"10.6.0.0/16","SubnetLen":26,"SubnetMin":"10.6.4.0","SubnetMax":"10.6.8.0",
                "Backend":{"Type":"vxlan","VNI":42,"Port":4789,"MTU":9000}}"#,
        );
        assert_eq!(c.ipv4.unwrap().subnet_len, 26);
        assert_eq!(c.ipv4.unwrap().subnet_min, Ipv4Addr::new(10, 6, 4, 0));
        assert_eq!(c.backend.port(), 4789);
        assert_eq!(c.backend.overlay_mtu(1500), 8950);
        assert!(c.ipv4.unwrap().fits(&"10.6.4.64/26".parse().unwrap()));
        assert!(!c.ipv4.unwrap().fits(&"10.6.8.64/26".parse().unwrap()));
        assert!(!c.ipv4.unwrap().fits(&"10.6.4.0/24".parse().unwrap()));
        let u = ok(r#"{"Network":"10.6.0.0/16","Backend":{"Type":"udp","Port":9999}}"#);
        assert_eq!(u.backend.port(), 9999);
    }

    #[test]
    fn invalid_configs_name_field_and_rule() {
        assert!(err("{").contains("not valid JSON"));
        assert!(err("{}").contains("field Network: missing"));
        assert!(err(r#"{"Network":"banana"}"#).contains("field Network"));
        assert!(err(r#"{"Network":"10.5.1.0/16"}"#).contains("did you mean 10.5.0.0/16"));
        assert!(err(r#"{"Network":"10.5.0.0/29"}"#).contains("smallest useful Network is a /28"));
        assert!(err(r#"{"Network":"10.5.0.0/16","SubnetLen":31}"#).contains("field SubnetLen"));
        assert!(err(r#"{"Network":"10.5.0.0/16","SubnetLen":17}"#).contains("at least 18"));
        assert!(err(r#"{"Network":"10.5.0.0/16","SubnetMin":"10.6.0.0"}"#)
            .contains("field SubnetMin: 10.6.0.0 is not inside Network"));
        assert!(err(r#"{"Network":"10.5.0.0/16","SubnetMax":"10.5.3.7"}"#)
            .contains("field SubnetMax: 10.5.3.7 is not on a /24"));
        assert!(
            err(r#"{"Network":"10.5.0.0/16","SubnetMin":"10.5.9.0","SubnetMax":"10.5.3.0"}"#)
                .contains("above SubnetMax")
        );
        assert!(
            err(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"ipip"}}"#)
                .contains("field Backend.Type: \"ipip\" is not supported")
        );
        assert!(
            err(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":16777216}}"#)
                .contains("field Backend.VNI")
        );
        assert!(
            err(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","Port":70000}}"#)
                .contains("field Backend.Port")
        );
        assert!(
            err(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","GBP":"yes"}}"#)
                .contains("field Backend.GBP")
        );
        assert!(err(r#"{"Network":"10.5.0.0/16","EnableIPv6":true}"#).contains("field IPv6Network"));
    }

    #[test]
    fn dual_stack_defaults_are_flannels() {
        let c = ok(r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00:5::/48"}"#);
        assert_eq!(c.overlay_mtu(1500), 1472 - 20, "udp over an IPv6 underlay");
        let v6 = c.ipv6.unwrap();
        assert_eq!(v6.subnet_len, 64);
        assert_eq!(v6.subnet_min, "fc00:5:0:1::".parse::<Ipv6Addr>().unwrap());
        assert_eq!(
            v6.subnet_max,
            "fc00:5:0:ffff::".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(v6.subnet_count(), 0xffff);
        assert!(v6.fits(&"fc00:5:0:34::/64".parse().unwrap()));
        assert!(!v6.fits(&"fc00:5::/64".parse().unwrap()));
        assert!(!v6.fits(&"fc00:6:0:34::/64".parse().unwrap()));
        // A long prefix: subnets two bits longer.
        let c = ok(r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/120"}"#);
        assert_eq!(c.ipv6.unwrap().subnet_len, 122);
        // EnableIPv6 false: the IPv6 fields are ignored, as by flannel.
        let c = ok(r#"{"Network":"10.5.0.0/16","EnableIPv6":false,"IPv6Network":"junk"}"#);
        assert!(c.ipv6.is_none());
        let c = ok(
            r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00:5::/48","IPv6SubnetLen":56,"IPv6SubnetMin":"fc00:5:0:100::","IPv6SubnetMax":"fc00:5:0:200::"}"#,
        );
        let v6 = c.ipv6.unwrap();
        assert_eq!((v6.subnet_len, v6.subnet_count()), (56, 2));
    }

    #[test]
    fn bad_ipv6_fields_are_named_with_their_rule() {
        let dual = |extra: &str| {
            err(&format!(
                r#"{{"Network":"10.5.0.0/16","EnableIPv6":true{extra}}}"#
            ))
        };
        assert!(dual(r#","IPv6Network":"10.6.0.0/16""#).contains("field IPv6Network"));
        assert!(dual(r#","IPv6Network":"fc00::1/48""#).contains("host bits"));
        assert!(dual(r#","IPv6Network":"fc00::/126""#).contains("smallest useful"));
        assert!(dual(r#","IPv6Network":"fc00::/48","IPv6SubnetLen":127"#)
            .contains("field IPv6SubnetLen: 127 is too long"));
        assert!(dual(r#","IPv6Network":"fc00::/48","IPv6SubnetLen":49"#)
            .contains("field IPv6SubnetLen: 49 is too short"));
        assert!(
            dual(r#","IPv6Network":"fc00::/48","IPv6SubnetMin":"fc01::""#)
                .contains("field IPv6SubnetMin: fc01:: is not inside")
        );
        assert!(
            dual(r#","IPv6Network":"fc00::/48","IPv6SubnetMax":"fc00:0:0:1::1""#)
                .contains("field IPv6SubnetMax: fc00:0:0:1::1 is not on a /64")
        );
        assert!(dual(
            r#","IPv6Network":"fc00::/48","IPv6SubnetMin":"fc00:0:0:9::","IPv6SubnetMax":"fc00:0:0:2::""#
        )
        .contains("field IPv6SubnetMin"));
        assert!(err(r#"{"EnableIPv4":false,"Network":"10.5.0.0/16"}"#)
            .contains("field EnableIPv4: false leaves the network without any address family"));
        assert!(err(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"wireguard","Mode":"auto"}}"#
        )
        .contains("field Backend.Mode: weft carries IPv6 over WireGuard in flannel's default mode \"separate\""));
        assert!(err(
            r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"wireguard","Mode":"ipv6"}}"#
        )
        .contains("field Backend.Mode"));
        // IPv4 only: every Mode is accepted, as flannel does (they all behave alike there).
        ok(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard","Mode":"auto"}}"#);
        ok(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"wireguard"}}"#,
        );
    }

    #[test]
    fn ipv6_only_networks_ignore_network_as_flannel_does() {
        let c = ok(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00:5::/48","Network":"junk","Backend":{"Type":"vxlan"}}"#,
        );
        assert!(c.ipv6_only() && c.ipv4.is_none());
        assert_eq!(c.ipv6.unwrap().subnet_len, 64);
        assert_eq!(
            c.overlay_mtu(1500),
            1450 - 20,
            "vxlan over an IPv6 underlay"
        );
        let dual: SubnetKey = "10.5.9.0/24 + fc00:5:0:9::/64".parse().unwrap();
        assert_eq!(
            c.routed_key(dual),
            Some(SubnetKey::v6("fc00:5:0:9::/64".parse().unwrap()))
        );
        assert_eq!(
            c.routed_key(SubnetKey::v4("10.5.9.0/24".parse().unwrap())),
            None
        );
        let c4 = ok(r#"{"Network":"10.5.0.0/16"}"#);
        assert_eq!(
            c4.routed_key(dual),
            Some(SubnetKey::v4("10.5.9.0/24".parse().unwrap()))
        );
        assert!(
            ok(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00:5::/48"}"#).ipv6_only()
        );
    }
}
