//! The `weft` command line: the daemon (`run`), network config, leases, status and dockerd options.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use weft::control::config::NetworkConfig;
use weft::control::store::StoreError;
use weft::control::store::{EtcdOptions, Store, DEFAULT_PREFIX};
use weft::control::subnet_env::{
    direct_routing_note, docker_opts, DockerOptsStyle, DockerVersion, SubnetEnv,
};
use weft::daemon::{self, DaemonError, DataPlaneMode, RunOptions};
use weft::dataplane::xdp::XdpModeChoice;
use weft::ops::http::HttpError;
use weft::ops::status::StatusReport;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "weft",
    version,
    about = "A flannel-compatible overlay network for container hosts"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the per-host daemon: lease a subnet, write subnet.env, track peers.
    Run(Box<RunArgs>),
    /// Read or write the network config in etcd.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// List every subnet lease in etcd.
    Leases(EtcdArgs),
    /// Show this host's lease and peers, from the running daemon.
    Status(HealthzArgs),
    /// Turn subnet.env into dockerd options, as flannel's mk-docker-opts.sh does.
    DockerOpts(DockerOptsArgs),
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate a network config (flannel's JSON) and write it to <prefix>/config.
    Set {
        /// The JSON config; read from --file or standard input when absent.
        json: Option<String>,
        /// Read the JSON from this file ("-" for standard input).
        #[arg(long, short)]
        file: Option<PathBuf>,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// Print the network config stored in etcd.
    Get(EtcdArgs),
}

#[derive(Args, Clone)]
struct EtcdArgs {
    /// Comma-separated etcd endpoints.
    #[arg(
        long,
        env = "WEFT_ETCD_ENDPOINTS",
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ','
    )]
    etcd_endpoints: Vec<String>,
    /// etcd key prefix of the network (flannel's default, so flannel hosts can share it).
    #[arg(long, env = "WEFT_ETCD_PREFIX", default_value = DEFAULT_PREFIX)]
    etcd_prefix: String,
    /// CA certificate that signed etcd's server certificate (PEM).
    #[arg(long, env = "WEFT_ETCD_CAFILE")]
    etcd_cafile: Option<String>,
    /// Client certificate for etcd (PEM).
    #[arg(long, env = "WEFT_ETCD_CERTFILE")]
    etcd_certfile: Option<String>,
    /// Client key for etcd (PEM).
    #[arg(long, env = "WEFT_ETCD_KEYFILE")]
    etcd_keyfile: Option<String>,
    /// etcd user name.
    #[arg(long, env = "WEFT_ETCD_USERNAME")]
    etcd_username: Option<String>,
    /// etcd password.
    #[arg(long, env = "WEFT_ETCD_PASSWORD", hide_env_values = true)]
    etcd_password: Option<String>,
}

impl EtcdArgs {
    /// Checks the endpoints and TLS files before anything connects; a bad one is a usage error.
    fn options(&self) -> Result<EtcdOptions, CliError> {
        for e in &self.etcd_endpoints {
            check_endpoint(e).map_err(CliError::Usage)?;
        }
        let pem = |flag: &str, path: &Option<String>, what: &str| match path {
            Some(p) => check_pem(flag, p, what).map_err(CliError::Usage),
            None => Ok(()),
        };
        pem("--etcd-cafile", &self.etcd_cafile, "CERTIFICATE")?;
        pem("--etcd-certfile", &self.etcd_certfile, "CERTIFICATE")?;
        pem("--etcd-keyfile", &self.etcd_keyfile, "PRIVATE KEY")?;
        Ok(self.unchecked_options())
    }

    fn unchecked_options(&self) -> EtcdOptions {
        EtcdOptions {
            endpoints: self.etcd_endpoints.clone(),
            prefix: self.etcd_prefix.clone(),
            cafile: self.etcd_cafile.clone(),
            certfile: self.etcd_certfile.clone(),
            keyfile: self.etcd_keyfile.clone(),
            username: self.etcd_username.clone(),
            password: self.etcd_password.clone(),
        }
    }
}

#[derive(Args, Clone)]
struct HealthzArgs {
    /// Address of the daemon's /healthz, /readyz, /metrics and /status endpoints.
    #[arg(long, env = "WEFT_HEALTHZ_IP", default_value = "127.0.0.1")]
    healthz_ip: IpAddr,
    /// Port of those endpoints (0 turns them off).
    #[arg(long, env = "WEFT_HEALTHZ_PORT", default_value_t = 8471)]
    healthz_port: u16,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    etcd: EtcdArgs,
    #[command(flatten)]
    healthz: HealthzArgs,
    /// Underlay interface: a name, an IPv4 address or a regex over names; repeatable, first match wins.
    /// Default: the interface of the default route.
    #[arg(long, env = "WEFT_IFACE", value_delimiter = ',')]
    iface: Vec<String>,
    /// A regex over interface addresses, then names, to pick the underlay by; repeatable, tried in order
    /// after --iface (flanneld's flag).
    #[arg(long, env = "WEFT_IFACE_REGEX")]
    iface_regex: Vec<String>,
    /// Use the interface (and source address) the kernel would use to reach this address, as
    /// `ip route get ADDR` says; tried after --iface and --iface-regex.
    #[arg(long, env = "WEFT_IFACE_CAN_REACH")]
    iface_can_reach: Option<Ipv4Addr>,
    /// The IPv6 address other hosts reach this one at, on a dual-stack network (default: the underlay
    /// interface's first global IPv6 address).
    #[arg(long, env = "WEFT_PUBLIC_IPV6")]
    public_ipv6: Option<std::net::Ipv6Addr>,
    /// The IP other hosts send overlay traffic to (default: the underlay interface's address).
    #[arg(long, env = "WEFT_PUBLIC_IP")]
    public_ip: Option<Ipv4Addr>,
    /// Where to write flannel's subnet.env for dockerd.
    #[arg(
        long,
        env = "WEFT_SUBNET_FILE",
        default_value = "/run/flannel/subnet.env"
    )]
    subnet_file: PathBuf,
    /// Renew the lease this long before it expires (minutes, or with a unit: 90s, 5m, 1h).
    #[arg(long, env = "WEFT_SUBNET_LEASE_RENEW_MARGIN", default_value = "60", value_parser = parse_minutes)]
    subnet_lease_renew_margin: Duration,
    /// Lifetime of the subnet lease in etcd (seconds, or with a unit: 90s, 5m, 24h).
    #[arg(long, env = "WEFT_SUBNET_LEASE_TTL", default_value = "24h", value_parser = parse_seconds)]
    subnet_lease_ttl: Duration,
    /// Set FLANNEL_IPMASQ=true: weft masquerades traffic leaving the overlay (dockerd then must not).
    #[arg(long, env = "WEFT_IP_MASQ", num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
    ip_masq: bool,
    /// MASQUERADE without --random-fully.
    #[arg(long, env = "WEFT_IP_MASQ_FULLY_RANDOM_DISABLE", num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
    ip_masq_fully_random_disable: bool,
    /// Add ACCEPT rules for the Network to the FORWARD chain (flanneld's default: on; =false turns it off).
    #[arg(long, env = "WEFT_IPTABLES_FORWARD_RULES", num_args = 0..=1, default_missing_value = "true", default_value = "true", value_parser = go_bool)]
    iptables_forward_rules: bool,
    /// Seconds between checks that weft's iptables rules are in place (put back if not).
    #[arg(long, env = "WEFT_IPTABLES_RESYNC", default_value_t = 5)]
    iptables_resync: u64,
    /// Add a blackhole route for this host's subnet (at the lowest priority: it catches traffic to the
    /// subnet only while no other route, such as the container bridge's, does).
    #[arg(long, env = "WEFT_IP_BLACKHOLE_ROUTE", num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
    ip_blackhole_route: bool,
    /// flanneld's Kubernetes flags: refused (weft serves etcd-backed Docker hosts).
    #[arg(long, env = "WEFT_KUBE_SUBNET_MGR", hide = true, num_args = 0..=1, default_missing_value = "true")]
    kube_subnet_mgr: Option<String>,
    #[arg(long, env = "WEFT_KUBE_API_URL", hide = true)]
    kube_api_url: Option<String>,
    #[arg(long, env = "WEFT_KUBE_ANNOTATION_PREFIX", hide = true)]
    kube_annotation_prefix: Option<String>,
    #[arg(long, env = "WEFT_KUBECONFIG_FILE", hide = true)]
    kubeconfig_file: Option<String>,
    #[arg(long, env = "WEFT_NET_CONFIG_PATH", hide = true)]
    net_config_path: Option<String>,
    #[arg(long, env = "WEFT_SET_NODE_NETWORK_UNAVAILABLE", hide = true, num_args = 0..=1, default_missing_value = "true")]
    set_node_network_unavailable: Option<String>,
    /// flanneld's log verbosity (klog's -v): 1 or more logs at debug level, unless WEFT_LOG says otherwise.
    #[arg(long = "v", env = "WEFT_V", hide = true)]
    verbosity: Option<u8>,
    /// klog's -vmodule and -log_backtrace_at: accepted for flanneld's command lines, not used.
    #[arg(long = "vmodule", env = "WEFT_VMODULE", hide = true)]
    _vmodule: Option<String>,
    #[arg(long = "log_backtrace_at", env = "WEFT_LOG_BACKTRACE_AT", hide = true)]
    _log_backtrace_at: Option<String>,
    /// Which data plane forwards the overlay's packets.
    #[arg(long, env = "WEFT_DATAPLANE", value_enum, default_value = "auto")]
    dataplane: DataPlaneArg,
    /// Packet worker threads of the userspace data plane (default: one per core).
    #[arg(long, env = "WEFT_WORKERS")]
    workers: Option<usize>,
    /// The WireGuard private key file (wireguard backend): created with a new key on first start, reused
    /// after so the public key in the lease stays. flannel's variable name is honoured.
    #[arg(
        long,
        env = "WIREGUARD_KEY_FILE",
        default_value = weft::wireguard::keyfile::DEFAULT_KEY_FILE
    )]
    wireguard_key_file: PathBuf,
    /// Name of the userspace data plane's tun device.
    #[arg(long, env = "WEFT_TUN_NAME", default_value = "weft0")]
    tun_name: String,
    /// Turn off every offload (tun TSO/checksum, UDP GSO, UDP GRO), for comparison.
    #[arg(long, env = "WEFT_NO_OFFLOAD")]
    no_offload: bool,
    /// Turn off the tun device's TSO/USO and checksum offload.
    #[arg(long, env = "WEFT_NO_TUN_OFFLOAD")]
    no_tun_offload: bool,
    /// Turn off UDP GSO (one send per datagram).
    #[arg(long, env = "WEFT_NO_UDP_GSO")]
    no_udp_gso: bool,
    /// Turn off UDP GRO (one datagram per received buffer).
    #[arg(long, env = "WEFT_NO_UDP_GRO")]
    no_udp_gro: bool,
    /// Turn off batching: one packet per system call, for comparison.
    #[arg(long, env = "WEFT_NO_BATCH")]
    no_batch: bool,
    /// Microseconds a worker keeps polling without sleeping after traffic, to save wakeups on
    /// request/response traffic (0 turns it off); at most a quarter of each 100 ms per worker.
    #[arg(long, env = "WEFT_BUSY_POLL_US", default_value_t = 0)]
    busy_poll_us: u64,
    /// How the userspace data plane reaches the underlay: kernel UDP sockets, or AF_XDP sockets on the
    /// underlay interface (an XDP program steers the overlay's UDP to them; other traffic is untouched).
    #[arg(long, env = "WEFT_UNDERLAY", value_enum, default_value = "udp")]
    underlay: UnderlayArg,
    /// Where the AF_XDP steering program runs: in the driver where supported, else generic (auto).
    #[arg(long, env = "WEFT_XDP_MODE", value_enum, default_value = "auto")]
    xdp_mode: XdpModeArg,
    /// Pin each worker to a CPU and steer packets to the worker of the CPU that handles them, so that
    /// handing a packet to weft never wakes another CPU (lower latency; a flow uses one CPU end to end).
    #[arg(long, env = "WEFT_CPU_LOCAL")]
    cpu_local: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum UnderlayArg {
    Udp,
    AfXdp,
}

/// `--dataplane`'s values (the library's `DataPlaneMode` knows nothing of the command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DataPlaneArg {
    /// The userspace data plane, falling back to the kernel VXLAN backend where it cannot run.
    Auto,
    /// weft's own packet loop on a tun device.
    Userspace,
    /// The kernel's VXLAN device, programmed over netlink as flanneld's vxlan backend does.
    Kernel,
    /// No forwarding: lease and publish only (flannel's "alloc" backend), e.g. when another tool forwards.
    None,
}

impl From<DataPlaneArg> for DataPlaneMode {
    fn from(a: DataPlaneArg) -> Self {
        match a {
            DataPlaneArg::Auto => DataPlaneMode::Auto,
            DataPlaneArg::Userspace => DataPlaneMode::Userspace,
            DataPlaneArg::Kernel => DataPlaneMode::Kernel,
            DataPlaneArg::None => DataPlaneMode::None,
        }
    }
}

/// `--xdp-mode`'s values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum XdpModeArg {
    /// Driver mode where the device supports it, generic mode otherwise.
    Auto,
    Driver,
    Generic,
}

impl From<XdpModeArg> for XdpModeChoice {
    fn from(a: XdpModeArg) -> Self {
        match a {
            XdpModeArg::Auto => XdpModeChoice::Auto,
            XdpModeArg::Driver => XdpModeChoice::Driver,
            XdpModeArg::Generic => XdpModeChoice::Generic,
        }
    }
}

/// Writes one line to standard output. A closed pipe (`weft leases | head -1`) ends the command quietly
/// instead of panicking as `println!` does.
fn out(line: std::fmt::Arguments) -> Result<(), CliError> {
    use std::io::Write;
    match writeln!(std::io::stdout().lock(), "{line}") {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(CliError::StdoutClosed),
        Err(e) => Err(CliError::Stdout(e)),
    }
}

macro_rules! outln {
    ($($t:tt)*) => { out(format_args!($($t)*)) };
}

/// Everything a command can fail with; `main` prints it as one line.
#[derive(Debug, thiserror::Error)]
enum CliError {
    /// A flag or setting that cannot work (exit status 2).
    #[error("{0}")]
    Usage(String),
    /// Whoever read our output stopped reading: not an error.
    #[error("standard output closed")]
    StdoutClosed,
    #[error("cannot write to standard output: {0}")]
    Stdout(#[source] std::io::Error),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("cannot {what} {path}: {source}")]
    File {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}; is weft running and is -f right?")]
    NoSubnetFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("refusing the network config: {0}")]
    BadConfig(String),
    #[error("no network config at {0}; set one with `weft config set`")]
    NoConfig(String),
    #[error("give the JSON either as an argument or with --file, not both")]
    TwoConfigs,
    #[error("the daemon at {addr} answered {code}: {body}")]
    Status {
        addr: SocketAddr,
        code: u16,
        body: String,
    },
    #[error("the daemon sent unreadable status: {0}")]
    BadStatus(#[source] serde_json::Error),
    #[error("{path} is not a valid subnet.env: {source}")]
    BadSubnetEnv {
        path: String,
        #[source]
        source: weft::control::subnet_env::SubnetEnvError,
    },
}

impl CliError {
    fn file(what: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.display().to_string();
        move |source| CliError::File { what, path, source }
    }
}

#[derive(Args)]
struct DockerOptsArgs {
    /// The subnet.env to read (mk-docker-opts.sh -f).
    #[arg(
        short = 'f',
        long = "subnet-file",
        default_value = "/run/flannel/subnet.env"
    )]
    subnet_file: PathBuf,
    /// The file to write ("-" for standard output) (mk-docker-opts.sh -d).
    #[arg(short = 'd', long = "dest", default_value = "/run/docker_opts.env")]
    dest: PathBuf,
    /// Name of the combined variable (mk-docker-opts.sh -k).
    #[arg(short = 'k', long = "key", default_value = "DOCKER_OPTS")]
    key: String,
    /// Write the combined variable only, unless -i is also given (mk-docker-opts.sh -c).
    #[arg(short = 'c', long)]
    combined: bool,
    /// Write one variable per option (mk-docker-opts.sh -i).
    #[arg(short = 'i', long)]
    individual: bool,
    /// Leave --ip-masq out (mk-docker-opts.sh -m).
    #[arg(short = 'm', long)]
    no_ipmasq: bool,
    /// The dockerd release the options are for (default: what `dockerd --version` says); from 28.2 on
    /// --allow-direct-routing is added, so dockerd lets the overlay's packets reach its containers.
    #[arg(long = "docker-version", value_name = "X.Y.Z")]
    docker_version: Option<String>,
}

/// The installed dockerd's release, from `dockerd --version`; `None`, with one note on standard error, when
/// dockerd cannot be run or does not answer with a version.
fn installed_dockerd() -> Option<DockerVersion> {
    let fix = "options for dockerd 28.2 and later are left out; give --docker-version X.Y.Z to choose them";
    match std::process::Command::new("dockerd")
        .arg("--version")
        .output()
    {
        Err(e) => {
            eprintln!("weft: note: cannot run `dockerd --version` ({e}); {fix}");
            None
        }
        Ok(out) => {
            let text = String::from_utf8_lossy(if out.stdout.is_empty() {
                &out.stderr
            } else {
                &out.stdout
            });
            let v = DockerVersion::parse(&text).filter(|_| out.status.success());
            if v.is_none() {
                let said = text.trim();
                eprintln!("weft: note: `dockerd --version` said {said:?}, not a version; {fix}");
            }
            v
        }
    }
}

/// An etcd endpoint must be an http(s) URL with a host (`http://10.0.0.1:2379`).
fn check_endpoint(e: &str) -> Result<(), String> {
    let fix = "give --etcd-endpoints as comma-separated URLs such as http://10.0.0.1:2379";
    let uri: hyper::Uri = e
        .parse()
        .map_err(|_| format!("--etcd-endpoints: {e:?} is not a URL; {fix}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(format!(
            "--etcd-endpoints: {e:?} is not an http:// or https:// URL; {fix}"
        ));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("--etcd-endpoints: {e:?} names no host; {fix}"));
    }
    Ok(())
}

/// A TLS file must be readable PEM holding a block of the expected kind.
fn check_pem(flag: &str, path: &str, kind: &str) -> Result<(), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{flag} {path}: cannot read it ({e}); give the path of a PEM file"))?;
    let found = text
        .lines()
        .any(|l| l.starts_with("-----BEGIN ") && l.ends_with(&format!("{kind}-----")));
    if !found {
        return Err(format!(
            "{flag} {path}: no PEM \"{kind}\" block in it; give the PEM file itself (-----BEGIN ...{kind}-----)"
        ));
    }
    Ok(())
}

/// Linux tun queues per device (the kernel's MAX_TAP_QUEUES).
const MAX_WORKERS: usize = 256;

/// `--workers`: 1 to 256.
fn check_workers(n: usize) -> Result<usize, String> {
    if n == 0 || n > MAX_WORKERS {
        return Err(format!(
            "--workers {n}: give between 1 and {MAX_WORKERS} (a tun device has at most {MAX_WORKERS} queues); leave it out for one per core"
        ));
    }
    Ok(n)
}

/// `--tun-name`: a Linux interface name (1 to 15 bytes, no '/', ':' or white space, not "." or "..").
/// A boolean flag's value as flanneld (Go's flag package) takes it: `--flag`, `--flag=true|false|1|0|t|f`.
fn go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!("{s:?} is not true or false")),
    }
}

/// flanneld's Kubernetes-only flags are refused, naming the one given.
fn check_not_kubernetes(a: &RunArgs) -> Result<(), String> {
    let given = [
        (
            "--kube-subnet-mgr",
            a.kube_subnet_mgr.is_some() && a.kube_subnet_mgr.as_deref() != Some("false"),
        ),
        ("--kube-api-url", a.kube_api_url.is_some()),
        (
            "--kube-annotation-prefix",
            a.kube_annotation_prefix.is_some(),
        ),
        ("--kubeconfig-file", a.kubeconfig_file.is_some()),
        ("--net-config-path", a.net_config_path.is_some()),
        (
            "--set-node-network-unavailable",
            a.set_node_network_unavailable.is_some(),
        ),
    ];
    match given.iter().find(|(_, on)| *on) {
        Some((flag, _)) => Err(format!("{flag} is one of flanneld's Kubernetes flags; weft serves etcd-backed Docker hosts (flannel's etcd mode): remove it and give --etcd-endpoints")),
        None => Ok(()),
    }
}

/// flanneld reads each flag from `FLANNELD_<FLAG>` too; weft reads `WEFT_<FLAG>`. Copies each `FLANNELD_`
/// variable to its `WEFT_` name, unless that is set to something else (one line, exit 2).
fn flanneld_env() -> Result<(), String> {
    for (k, v) in std::env::vars_os() {
        let (Some(k), Some(v)) = (k.to_str(), v.to_str()) else {
            continue;
        };
        let Some(name) = k.strip_prefix("FLANNELD_") else {
            continue;
        };
        let ours = format!("WEFT_{name}");
        match std::env::var(&ours) {
            Ok(w) if w != v => {
                return Err(format!(
                    "{k}={v:?} and {ours}={w:?} disagree; set only one of them"
                ))
            }
            Ok(_) => {}
            // Before any other thread exists (called first thing in main).
            Err(_) => std::env::set_var(&ours, v),
        }
    }
    Ok(())
}

/// The command line as flanneld takes it, turned into weft's: `flanneld -etcd-endpoints=X -iface eth0`
/// (Go's single-dash long flags, no subcommand; also when weft is installed under the name flanneld)
/// becomes `weft run --etcd-endpoints=X --iface eth0`. weft's own command lines pass unchanged.
fn flanneld_args(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let as_flanneld = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .is_some_and(|n| n == "flanneld");
    let first = args.get(1).and_then(|a| a.to_str());
    let top_level = matches!(
        first,
        Some("-h" | "--help" | "-V" | "--version" | "-help" | "-version")
    );
    let starts_with_flag = first.is_some_and(|a| a.starts_with('-'));
    let go_style = matches!(first, Some("-version" | "-help"));
    if !(as_flanneld || go_style || (starts_with_flag && !top_level)) {
        return args;
    }
    let mut out = vec![args[0].clone()];
    let rest = &args[1..];
    let go_long = |a: &std::ffi::OsString| -> std::ffi::OsString {
        match a.to_str() {
            // Go's flags are all long: `-v=2` and `-v 2` too (but `-h` stays help).
            Some(s) if s.len() >= 2 && s.starts_with('-') && !s.starts_with("--") && s != "-h" => {
                format!("-{s}").into()
            }
            _ => a.clone(),
        }
    };
    if rest.iter().any(|a| a == "-version" || a == "--version") {
        out.push("--version".into());
        return out;
    }
    if rest
        .iter()
        .any(|a| a == "-help" || a == "--help" || a == "-h")
    {
        out.extend(["run".into(), "--help".into()]);
        return out;
    }
    out.push("run".into());
    out.extend(rest.iter().map(go_long));
    out
}

fn check_tun_name(name: &str) -> Result<(), String> {
    let bad = name.is_empty()
        || name.len() >= 16
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if bad {
        return Err(format!(
            "--tun-name {name:?} is not a valid interface name: use 1 to 15 characters without '/', ':' or spaces"
        ));
    }
    Ok(())
}

fn parse_duration(s: &str, bare: u64) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        _ => (s, bare),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 90s, 5m or 24h"))?;
    Ok(Duration::from_secs(n * mult))
}

fn parse_minutes(s: &str) -> Result<Duration, String> {
    parse_duration(s, 60)
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    parse_duration(s, 1)
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("WEFT_LOG")
        // boringtun's own lines name protocol timers ("HANDSHAKE(REKEY_TIMEOUT)"); weft says what they
        // mean for the operator instead (see dataplane::wg_timers).
        .unwrap_or_else(|_| EnvFilter::new("info,boringtun=off"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    if let Err(e) = flanneld_env() {
        eprintln!("weft: error: {e}");
        return ExitCode::from(2);
    }
    let cli = Cli::parse_from(flanneld_args(std::env::args_os().collect()));
    if let Cmd::Run(a) = &cli.cmd {
        // flanneld's --v=N: more detail, as WEFT_LOG=debug gives (WEFT_LOG itself wins).
        if a.verbosity.unwrap_or(0) > 0 && std::env::var_os("WEFT_LOG").is_none() {
            // Before any other thread exists.
            std::env::set_var("WEFT_LOG", "debug,boringtun=off");
        }
    }
    init_logging();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli.cmd)) {
        Ok(()) | Err(CliError::StdoutClosed) => ExitCode::SUCCESS,
        Err(
            e @ (CliError::Usage(_)
            | CliError::Daemon(
                DaemonError::WgKey(_)
                | DaemonError::KernelNoWireGuard { .. }
                | DaemonError::KernelWireGuardUnsupported
                | DaemonError::AfXdpNoWireGuard
                | DaemonError::NoIpv6Underlay { .. }
                | DaemonError::NoIpv4Underlay { .. },
            )),
        ) => {
            eprintln!("weft: error: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("weft: error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cmd: Cmd) -> Result<(), CliError> {
    match cmd {
        Cmd::Run(a) => {
            check_tun_name(&a.tun_name).map_err(CliError::Usage)?;
            check_not_kubernetes(&a).map_err(CliError::Usage)?;
            if a.iptables_resync == 0 {
                return Err(CliError::Usage(
                    "--iptables-resync 0: the rules are checked every N seconds; pass 1 or more"
                        .into(),
                ));
            }
            let healthz = (a.healthz.healthz_port != 0)
                .then(|| SocketAddr::new(a.healthz.healthz_ip, a.healthz.healthz_port));
            let opts = RunOptions {
                etcd: a.etcd.options()?,
                iface: weft::host::iface::IfaceWanted {
                    iface: a.iface,
                    regex: a.iface_regex,
                    can_reach: a.iface_can_reach,
                },
                public_ipv6: a.public_ipv6,
                forward_rules: a.iptables_forward_rules,
                masq_random_fully: !a.ip_masq_fully_random_disable,
                iptables_resync: Duration::from_secs(a.iptables_resync),
                blackhole_route: a.ip_blackhole_route,
                public_ip: a.public_ip,
                subnet_file: a.subnet_file,
                lease_ttl: a.subnet_lease_ttl,
                renew_margin: a.subnet_lease_renew_margin,
                healthz,
                ip_masq: a.ip_masq,
                dataplane: a.dataplane.into(),
                workers: match a.workers {
                    Some(n) => check_workers(n).map_err(CliError::Usage)?,
                    None => std::thread::available_parallelism()
                        .map(|n| n.get().min(MAX_WORKERS))
                        .unwrap_or(1),
                },
                tun_name: a.tun_name,
                offload: weft::dataplane::Offloads {
                    tun: !(a.no_offload || a.no_tun_offload),
                    udp_gso: !(a.no_offload || a.no_udp_gso),
                    udp_gro: !(a.no_offload || a.no_udp_gro),
                },
                batch: !a.no_batch,
                busy_poll: Duration::from_micros(a.busy_poll_us),
                cpu_local: a.cpu_local,
                wg_key_file: a.wireguard_key_file,
                underlay: match a.underlay {
                    UnderlayArg::Udp => weft::dataplane::UnderlayIo::Udp,
                    UnderlayArg::AfXdp => weft::dataplane::UnderlayIo::AfXdp(a.xdp_mode.into()),
                },
            };
            Ok(daemon::run(opts).await?)
        }
        Cmd::Config(ConfigCmd::Set { json, file, etcd }) => {
            let text = match (json, file) {
                (Some(j), None) => j,
                (None, Some(f)) if f.as_os_str() != "-" => {
                    std::fs::read_to_string(&f).map_err(CliError::file("read", &f))?
                }
                (None, _) => std::io::read_to_string(std::io::stdin()).map_err(CliError::file(
                    "read the config from",
                    std::path::Path::new("standard input"),
                ))?,
                (Some(_), Some(_)) => return Err(CliError::TwoConfigs),
            };
            let cfg =
                NetworkConfig::parse(&text).map_err(|e| CliError::BadConfig(e.to_string()))?;
            let store = Store::connect(&etcd.options()?).await?;
            store.put_config(text.trim()).await?;
            let v4 = cfg.ipv4.map(|c| {
                format!(
                    "Network {} split into /{} subnets ({} to {}, {} in all)",
                    c.network,
                    c.subnet_len,
                    c.subnet_min,
                    c.subnet_max,
                    c.subnet_count()
                )
            });
            let v6 = cfg.ipv6.map(|c| {
                format!(
                    "IPv6Network {} split into /{} subnets ({} to {})",
                    c.network, c.subnet_len, c.subnet_min, c.subnet_max
                )
            });
            let nets: Vec<String> = v4.into_iter().chain(v6).collect();
            outln!(
                "wrote {}: {}, backend {} on UDP port {}",
                store.config_key(),
                nets.join("; "),
                cfg.backend.type_name(),
                cfg.backend.port()
            )
        }
        Cmd::Config(ConfigCmd::Get(etcd)) => {
            let store = Store::connect(&etcd.options()?).await?;
            match store.get_config().await? {
                Some(text) => outln!("{text}"),
                None => Err(CliError::NoConfig(store.config_key())),
            }
        }
        Cmd::Leases(etcd) => list_leases(&etcd).await,
        Cmd::Status(h) => {
            let addr = SocketAddr::new(h.healthz_ip, h.healthz_port);
            let (code, body) = weft::ops::http::get(addr, "/status").await?;
            if code != 200 {
                return Err(CliError::Status { addr, code, body });
            }
            let report: StatusReport = serde_json::from_str(&body).map_err(CliError::BadStatus)?;
            print_status(&report)
        }
        Cmd::DockerOpts(a) => {
            let text = std::fs::read_to_string(&a.subnet_file).map_err(|source| {
                CliError::NoSubnetFile {
                    path: a.subnet_file.display().to_string(),
                    source,
                }
            })?;
            let env = SubnetEnv::parse(&text).map_err(|source| CliError::BadSubnetEnv {
                path: a.subnet_file.display().to_string(),
                source,
            })?;
            let dockerd = match &a.docker_version {
                Some(v) => Some(DockerVersion::parse(v).ok_or_else(|| {
                    CliError::Usage(format!(
                        "--docker-version {v:?} is not a Docker release; give it as X.Y.Z, e.g. --docker-version 28.2.2"
                    ))
                })?),
                None => installed_dockerd(),
            };
            if let Some(note) = dockerd.and_then(direct_routing_note) {
                eprintln!("weft: note: {note}");
            }
            let text = docker_opts(
                &env,
                &DockerOptsStyle {
                    key: a.key,
                    combined: a.combined,
                    individual: a.individual,
                    no_ipmasq: a.no_ipmasq,
                },
                dockerd,
            );
            if a.dest.as_os_str() == "-" {
                outln!("{}", text.trim_end_matches('\n'))
            } else {
                daemon::write_atomically(&a.dest, &text).map_err(CliError::file("write", &a.dest))
            }
        }
    }
}

async fn list_leases(etcd: &EtcdArgs) -> Result<(), CliError> {
    let store = Store::connect(&etcd.options()?).await?;
    let (leases, _) = store.list_leases().await?;
    outln!(
        "{:<20} {:<16} {:<8} {:<18} TIME LEFT",
        "SUBNET",
        "PUBLIC IP",
        "BACKEND",
        "VTEP MAC"
    )?;
    for l in leases {
        let left = if l.etcd_lease == 0 {
            "reserved".to_string()
        } else {
            match store.time_to_live(l.etcd_lease).await {
                Ok(t) if t > 0 => format!("{}h{:02}m{:02}s", t / 3600, t / 60 % 60, t % 60),
                Ok(_) => "expired".into(),
                Err(e) => return Err(e.into()),
            }
        };
        match l.attrs {
            Ok(a) => {
                let mut mac = a
                    .vxlan_data()
                    .map(|d| d.vtep_mac.to_string())
                    .unwrap_or_else(|| "-".into());
                if let Some(d6) = a.vxlan_v6_data() {
                    mac = format!("{mac} {}", d6.vtep_mac);
                }
                let public = match a.public_ipv6 {
                    Some(ip6) if a.public_ip.is_unspecified() => ip6.to_string(),
                    Some(ip6) => format!("{} {ip6}", a.public_ip),
                    None => a.public_ip.to_string(),
                };
                let backend = if a.backend_type.is_empty() {
                    "udp"
                } else {
                    a.backend_type.as_str()
                };
                outln!(
                    "{:<20} {:<16} {:<8} {:<18} {left}",
                    l.subnet.to_string(),
                    public,
                    backend,
                    mac
                )?;
            }
            Err(e) => outln!("{:<20} (unreadable: {e}) {left}", l.subnet.to_string())?,
        }
    }
    Ok(())
}

fn print_status(v: &StatusReport) -> Result<(), CliError> {
    match &v.lease {
        None => outln!("no lease yet (waiting for etcd or the network config)")?,
        Some(l) => match (l.subnet, l.network) {
            (Some(subnet), Some(network)) => outln!(
                "this host: subnet {subnet} of network {network} via {} ({}), backend {}, MTU {}",
                l.public_ip,
                l.iface,
                l.backend,
                l.mtu
            )?,
            _ => outln!(
                "this host: IPv6-only network, underlay {}, backend {}, MTU {}",
                l.iface,
                l.backend,
                l.mtu
            )?,
        },
    }
    if let Some(l) = &v.lease {
        if let (Some(s6), Some(n6)) = (l.subnet6, l.network6) {
            outln!(
                "this host: IPv6 subnet {s6} of network {n6} via {}",
                l.public_ipv6
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "-".into())
            )?;
        }
    }
    let underlay = Some(v.underlay.as_str())
        .filter(|s| !s.is_empty())
        .map(|u| format!(", underlay: {u}"))
        .unwrap_or_default();
    outln!(
        "ready: {}, etcd connected: {}, data plane: {}{underlay}",
        v.ready,
        v.etcd_connected,
        Some(v.dataplane.as_str())
            .filter(|s| !s.is_empty())
            .unwrap_or("not started")
    )?;
    outln!("peers: {}", v.peers.len())?;
    for p in &v.peers {
        let (kind, mac) = match p.backend {
            weft::routes::PeerBackend::Vxlan { vtep_mac, .. } => ("vxlan", vtep_mac.to_string()),
            weft::routes::PeerBackend::Udp => ("udp", "-".to_string()),
            weft::routes::PeerBackend::WireGuard { public_key, port } => {
                ("wireguard", format!("{public_key} :{port}"))
            }
            weft::routes::PeerBackend::HostGw => ("host-gw", "-".to_string()),
            weft::routes::PeerBackend::Other => ("other", "-".to_string()),
        };
        if let Some(subnet) = p.subnet {
            outln!(
                "  {:<20} via {:<16} {:<6} {mac}",
                subnet.to_string(),
                p.public_ip.to_string(),
                kind
            )?;
        }
        if let Some(v6) = p.v6 {
            outln!(
                "  {:<20} via {:<16} {:<6} {}",
                v6.subnet.to_string(),
                v6.public_ip
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "(no PublicIPv6)".into()),
                kind,
                v6.vtep_mac
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| "-".into())
            )?;
        }
    }
    if let Some(wg) = &v.wireguard {
        outln!(
            "wireguard: public key {}, port {}, {} handshakes",
            wg.public_key,
            wg.listen_port,
            wg.handshakes
        )?;
        for p in &wg.peers {
            let hs = match p.last_handshake_secs {
                Some(s) => format!("last handshake {s:.0}s ago"),
                None => "no session (no handshake yet)".to_string(),
            };
            outln!(
                "  {:<20} {} at {}: {hs}, sent {} B, received {} B",
                p.subnet.to_string(),
                p.public_key,
                p.endpoint,
                p.tx_bytes,
                p.rx_bytes
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flanneld_command_lines_become_weft_run() {
        let v = |a: &[&str]| a.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        let conv = |a: &[&str]| flanneld_args(v(a));
        assert_eq!(
            conv(&[
                "weft",
                "-etcd-endpoints=http://e:2379",
                "-iface",
                "eth0",
                "--ip-masq"
            ]),
            v(&[
                "weft",
                "run",
                "--etcd-endpoints=http://e:2379",
                "--iface",
                "eth0",
                "--ip-masq"
            ])
        );
        assert_eq!(
            conv(&["/usr/bin/flanneld"]),
            v(&["/usr/bin/flanneld", "run"])
        );
        assert_eq!(
            conv(&["flanneld", "-version"]),
            v(&["flanneld", "--version"])
        );
        assert_eq!(conv(&["weft", "-version"]), v(&["weft", "--version"]));
        // weft's own command lines are left alone (a value like "-1" after a flag too).
        for own in [
            &["weft", "run", "--iface", "eth0"][..],
            &["weft", "--help"],
            &["weft", "--version"],
            &["weft", "leases"],
        ] {
            assert_eq!(conv(own), v(own));
        }
        assert!(
            Cli::try_parse_from(conv(&["weft", "-iface-regex=eth.*", "-ip-masq=false"])).is_ok()
        );
    }

    #[test]
    fn booleans_as_go_writes_them() {
        for t in ["1", "t", "T", "true", "TRUE", "True"] {
            assert_eq!(go_bool(t), Ok(true));
        }
        for f in ["0", "f", "F", "false", "FALSE", "False"] {
            assert_eq!(go_bool(f), Ok(false));
        }
        assert!(go_bool("yes").unwrap_err().contains("not true or false"));
        let parse = |a: &[&str]| match Cli::try_parse_from(a).unwrap().cmd {
            Cmd::Run(r) => (r.ip_masq, r.iptables_forward_rules),
            _ => unreachable!(),
        };
        assert_eq!(parse(&["weft", "run"]), (false, true));
        assert_eq!(
            parse(&["weft", "run", "--ip-masq", "--iptables-forward-rules=false"]),
            (true, false)
        );
        assert_eq!(parse(&["weft", "run", "--ip-masq=0"]), (false, true));
    }

    #[test]
    fn endpoints_must_be_http_urls_with_a_host() {
        assert!(check_endpoint("http://127.0.0.1:2379").is_ok());
        assert!(check_endpoint("https://etcd.example:2379").is_ok());
        assert!(check_endpoint("http://[::1]:2379").is_ok());
        for bad in [
            "not-a-url",
            "ftp://10.0.0.1:2379",
            "10.0.0.1:2379",
            "http://",
            "",
        ] {
            let e = check_endpoint(bad).unwrap_err();
            assert!(e.contains("--etcd-endpoints"), "{bad}: {e}");
        }
    }

    #[test]
    fn workers_and_tun_names() {
        assert_eq!(check_workers(1), Ok(1));
        assert_eq!(check_workers(256), Ok(256));
        assert!(check_workers(0).is_err());
        assert!(check_workers(100_000)
            .unwrap_err()
            .contains("between 1 and 256"));
        assert!(check_tun_name("weft0").is_ok());
        assert!(check_tun_name("fifteen-chars-x").is_ok());
        for bad in ["", "sixteen-chars-xx", "a/b", "a b", ".", "..", "a:1"] {
            assert!(check_tun_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tls_files_must_hold_pem_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let junk = dir.path().join("junk");
        std::fs::write(&junk, "hello\n").unwrap();
        let p = |f: &std::path::Path| f.to_str().unwrap().to_string();
        assert!(check_pem("--etcd-cafile", &p(&ca), "CERTIFICATE").is_ok());
        assert!(check_pem("--etcd-cafile", &p(&junk), "CERTIFICATE")
            .unwrap_err()
            .contains("no PEM"));
        assert!(check_pem("--etcd-keyfile", &p(&ca), "PRIVATE KEY").is_err());
        assert!(check_pem("--etcd-cafile", "/nonexistent", "CERTIFICATE")
            .unwrap_err()
            .contains("cannot read"));
    }
}
