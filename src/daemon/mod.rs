//! `weft run`: waits for the network config, acquires and keeps the subnet lease, writes subnet.env, watches peers.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::Ipv4Net;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::control::alloc::{choose_subnet, Choice, Exhausted, ExistingLease};
use crate::control::backoff::{renew_after, Backoff};
use crate::control::config::{Backend, NetworkConfig};
use crate::control::lease::LeaseAttrs;
use crate::control::store::{EtcdOptions, Store, StoreError, StoredLease};
use crate::control::subnet_env::SubnetEnv;
use crate::dataplane::{DataPlane, DataPlaneConfig, DataPlaneError, Encap};
use crate::host::iface::{self, IfaceError, Underlay};
use crate::kernel::vxlan::{KernelVxlan, KernelVxlanConfig, KernelVxlanError};
use crate::ops::metrics::{CounterTotals, MetricsView, WorkerCounters};
use crate::ops::status::{LeaseStatus, StatusReport, StatusSource};
use crate::routes::{Peer, RouteTable};
use crate::wire::ethernet::MacAddr;

/// How often the lease keeper checks that our key is still ours when nothing else wakes it.
const CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// Everything `weft run` is told by its flags.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub etcd: EtcdOptions,
    pub iface: Vec<String>,
    pub public_ip: Option<Ipv4Addr>,
    pub subnet_file: PathBuf,
    pub lease_ttl: Duration,
    pub renew_margin: Duration,
    pub healthz: Option<SocketAddr>,
    pub ip_masq: bool,
    pub dataplane: DataPlaneMode,
    pub workers: usize,
    pub tun_name: String,
    /// Which offloads to use where the kernel allows them.
    pub offload: crate::dataplane::Offloads,
    /// Move packets in batches (recvmmsg, several packets per wakeup).
    pub batch: bool,
    /// How long a worker keeps polling without sleeping after traffic.
    pub busy_poll: Duration,
    /// How the userspace data plane reaches the underlay (UDP sockets or AF_XDP).
    pub underlay: crate::dataplane::UnderlayIo,
    /// Pin workers to CPUs and steer packets to the worker of the CPU handling them.
    pub cpu_local: bool,
}

/// Which data plane carries the overlay's packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DataPlaneMode {
    /// The userspace data plane, falling back to the kernel VXLAN backend where it cannot run.
    Auto,
    /// weft's own packet loop on a tun device.
    Userspace,
    /// The kernel's VXLAN device, programmed over netlink as flanneld's vxlan backend does.
    Kernel,
    /// No forwarding: lease and publish only (flannel's "alloc" backend), e.g. when another tool forwards.
    None,
}

/// The data plane that is running; dropping it stops it.
pub enum ActiveDataPlane {
    Userspace(DataPlane),
    Kernel(KernelVxlan),
}

/// Errors that stop the daemon; each is one plain line naming the problem and the fix.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Iface(#[from] IfaceError),
    #[error(transparent)]
    Exhausted(#[from] Exhausted),
    #[error("{0}")]
    Settings(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    DataPlane(#[from] DataPlaneError),
    #[error(transparent)]
    Kernel(#[from] KernelVxlanError),
    #[error("cannot serve /healthz on {addr}: {source}; pick another --healthz-ip/--healthz-port")]
    Healthz {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "cannot write {path}: {source}; check --subnet-file and that its directory is writable"
    )]
    SubnetFile {
        path: String,
        source: std::io::Error,
    },
    #[error("subnet {subnet} was taken by host {other} while our lease was gone; dockerd's --bip no longer matches a lease of this host. Stop dockerd, delete {file}, restart weft for a new subnet, then restart dockerd")]
    SubnetStolen {
        subnet: Ipv4Net,
        other: String,
        file: String,
    },
}

/// This host's lease as held by the running daemon.
#[derive(Debug, Clone)]
pub struct OwnLease {
    pub subnet: Ipv4Net,
    pub network: Ipv4Net,
    pub public_ip: Ipv4Addr,
    pub iface: String,
    pub backend: String,
    pub mtu: u32,
    pub attrs: LeaseAttrs,
    pub etcd_lease: i64,
}

/// State shared by the control plane, the data plane and the HTTP endpoints.
#[derive(Default)]
pub struct Shared {
    pub routes: Arc<RouteTable>,
    pub ready: AtomicBool,
    pub etcd_connected: AtomicBool,
    etcd_seen: AtomicBool,
    pub own: Mutex<Option<OwnLease>>,
    pub lease_ttl: AtomicI64,
    pub lease_renewals: AtomicU64,
    pub watch_events: AtomicU64,
    pub watch_restarts: AtomicU64,
    pub workers: Mutex<Vec<Arc<WorkerCounters>>>,
    /// The data plane in use ("userspace", "kernel", "none"; "" before it started).
    pub dataplane: Mutex<&'static str>,
    /// How the userspace data plane reaches the underlay ("udp" or "af_xdp (...)"; "" otherwise).
    pub underlay: Mutex<String>,
    /// The --ip-masq rule keeper, taken and stopped (rules removed) on a clean exit.
    pub masq: Mutex<Option<crate::host::masq::Masquerade>>,
    own_key_changed: Notify,
}

impl StatusSource for Shared {
    fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    fn metrics(&self) -> MetricsView {
        let snap = self.routes.load();
        let ttl = self.lease_ttl.load(Ordering::Relaxed);
        let workers = self.workers.lock().expect("workers lock");
        MetricsView {
            lease_held: self.own.lock().expect("own lock").is_some(),
            dataplane: *self.dataplane.lock().expect("dataplane lock"),
            underlay: self.underlay.lock().expect("underlay lock").clone(),
            lease_ttl_seconds: (ttl > 0).then_some(ttl),
            etcd_connected: self.etcd_connected.load(Ordering::Relaxed),
            ready: self.ready.load(Ordering::Relaxed),
            peers: snap.len(),
            routes: snap.len(),
            lease_renewals: self.lease_renewals.load(Ordering::Relaxed),
            watch_events: self.watch_events.load(Ordering::Relaxed),
            watch_restarts: self.watch_restarts.load(Ordering::Relaxed),
            counters: CounterTotals::sum(workers.iter().map(|w| w.as_ref())),
        }
    }

    fn status(&self) -> StatusReport {
        StatusReport {
            ready: self.ready.load(Ordering::Relaxed),
            etcd_connected: self.etcd_connected.load(Ordering::Relaxed),
            dataplane: *self.dataplane.lock().expect("dataplane lock"),
            underlay: self.underlay.lock().expect("underlay lock").clone(),
            lease: self
                .own
                .lock()
                .expect("own lock")
                .as_ref()
                .map(|o| LeaseStatus {
                    subnet: o.subnet,
                    network: o.network,
                    public_ip: o.public_ip,
                    iface: o.iface.clone(),
                    backend: o.backend.clone(),
                    mtu: o.mtu,
                }),
            peers: self.routes.load().peers().to_vec(),
        }
    }
}

impl Shared {
    fn set_etcd(&self, up: bool, err: Option<&StoreError>) {
        let was = self.etcd_connected.swap(up, Ordering::Relaxed);
        if up && !self.etcd_seen.swap(true, Ordering::Relaxed) {
            info!("connected to etcd");
            return;
        }
        match (was, up, err) {
            (true, false, Some(e)) => warn!(
                "lost etcd: {e}. Keeping our subnet and forwarding as before; retrying with backoff"
            ),
            (false, true, _) => info!("etcd reachable again"),
            _ => {}
        }
    }
}

/// Runs the daemon until SIGTERM/SIGINT or a fatal error.
pub async fn run(opts: RunOptions) -> Result<(), DaemonError> {
    let renew_every =
        renew_after(opts.lease_ttl, opts.renew_margin).map_err(DaemonError::Settings)?;
    if matches!(opts.underlay, crate::dataplane::UnderlayIo::AfXdp(_))
        && matches!(opts.dataplane, DataPlaneMode::Kernel | DataPlaneMode::None)
    {
        return Err(DaemonError::Settings(
            "--underlay af-xdp is part of the userspace data plane; use it with --dataplane userspace (or auto)".into(),
        ));
    }
    let underlay = iface::detect(&opts.iface, opts.public_ip)?;
    info!(
        iface = %underlay.iface, public_ip = %underlay.public_ip, mtu = underlay.mtu,
        "using underlay interface"
    );
    let shared = Arc::new(Shared::default());
    if let Some(addr) = opts.healthz {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| DaemonError::Healthz { addr, source })?;
        info!(%addr, "serving /healthz, /readyz, /metrics and /status");
        tokio::spawn(crate::ops::http::serve(listener, shared.clone()));
    }
    let store = Store::connect(&opts.etcd).await?;
    let main = control_plane(&opts, &underlay, store, shared.clone(), renew_every);
    let result = tokio::select! {
        r = main => r,
        _ = shutdown_signal() => {
            let subnet = shared.own.lock().expect("own lock").as_ref().map(|o| o.subnet);
            match subnet {
                Some(s) => info!(subnet = %s, "stopping; keeping the lease so a restart gets the same subnet"),
                None => info!("stopping"),
            }
            Ok(())
        }
    };
    // On every way out, weft's own iptables rules go with it.
    let masq = shared.masq.lock().expect("masq lock").take();
    if let Some(m) = masq {
        m.stop().await;
    }
    result
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

async fn control_plane(
    opts: &RunOptions,
    underlay: &Underlay,
    store: Store,
    shared: Arc<Shared>,
    renew_every: Duration,
) -> Result<(), DaemonError> {
    let cfg = wait_for_config(&store, &shared).await;
    info!(network = %cfg.network, backend = cfg.backend.type_name(), "network config read");
    let previous = read_previous_subnet(&opts.subnet_file);
    let mut own = acquire(&store, &shared, &cfg, underlay, previous, opts.lease_ttl).await?;
    let _dataplane = start_dataplane(opts, &cfg, &own, underlay, shared.clone()).await?;
    *shared.dataplane.lock().expect("dataplane lock") = match &_dataplane {
        Some(ActiveDataPlane::Userspace(d)) => {
            *shared.underlay.lock().expect("underlay lock") = d.underlay.clone();
            "userspace"
        }
        Some(ActiveDataPlane::Kernel(_)) => "kernel",
        None => "none",
    };
    if opts.ip_masq {
        let m = crate::host::masq::Masquerade::start(cfg.network, own.subnet)
            .await
            .map_err(|e| DaemonError::Settings(format!("--ip-masq: {e}")))?;
        *shared.masq.lock().expect("masq lock") = Some(m);
    }
    let env = SubnetEnv {
        network: cfg.network,
        subnet: own.subnet,
        mtu: own.mtu,
        ipmasq: opts.ip_masq,
    };
    write_atomically(&opts.subnet_file, &env.render()).map_err(|source| {
        DaemonError::SubnetFile {
            path: opts.subnet_file.display().to_string(),
            source,
        }
    })?;
    info!(file = %opts.subnet_file.display(), subnet = %own.subnet, mtu = own.mtu, "wrote subnet.env");
    *shared.own.lock().expect("own lock") = Some(own.clone());
    tokio::spawn(watch_peers(
        store.clone(),
        shared.clone(),
        own.subnet,
        own.public_ip,
    ));
    shared.ready.store(true, Ordering::Relaxed);
    notify_systemd_ready();
    keep_lease(&store, &shared, &mut own, opts, renew_every).await
}

async fn start_dataplane(
    opts: &RunOptions,
    cfg: &NetworkConfig,
    own: &OwnLease,
    underlay: &Underlay,
    shared: Arc<Shared>,
) -> Result<Option<ActiveDataPlane>, DaemonError> {
    if opts.dataplane != DataPlaneMode::None {
        if let Err(e) = crate::dataplane::enable_ip_forwarding() {
            warn!("cannot enable net.ipv4.ip_forward ({e}); containers' traffic will not be forwarded until it is on");
        }
    }
    match opts.dataplane {
        DataPlaneMode::None => {
            info!("data plane disabled (--dataplane none): leasing and publishing only");
            Ok(None)
        }
        DataPlaneMode::Userspace => Ok(Some(ActiveDataPlane::Userspace(
            start_userspace(opts, cfg, own, underlay, shared).await?,
        ))),
        DataPlaneMode::Kernel => Ok(Some(ActiveDataPlane::Kernel(
            start_kernel(cfg, own, underlay, shared).await?,
        ))),
        DataPlaneMode::Auto => {
            match start_userspace(opts, cfg, own, underlay, shared.clone()).await {
                Ok(dp) => Ok(Some(ActiveDataPlane::Userspace(dp))),
                Err(DaemonError::DataPlane(e @ DataPlaneError::Tun { .. }))
                    if matches!(cfg.backend, Backend::Vxlan(_)) =>
                {
                    warn!("userspace data plane unavailable ({e}); falling back to the kernel VXLAN backend");
                    Ok(Some(ActiveDataPlane::Kernel(
                        start_kernel(cfg, own, underlay, shared).await?,
                    )))
                }
                Err(e) => Err(e),
            }
        }
    }
}

async fn start_kernel(
    cfg: &NetworkConfig,
    own: &OwnLease,
    underlay: &Underlay,
    shared: Arc<Shared>,
) -> Result<KernelVxlan, DaemonError> {
    let (Backend::Vxlan(v), Some(d)) = (&cfg.backend, own.attrs.vxlan_data()) else {
        return Err(DaemonError::Settings(format!(
            "the kernel data plane needs a vxlan network, but the network config says Backend.Type {:?}; use --dataplane userspace for udp",
            cfg.backend.type_name()
        )));
    };
    let kc = KernelVxlanConfig {
        vni: v.vni,
        port: cfg.backend.port(),
        local_ip: underlay.local_ip,
        underlay_iface: underlay.iface.clone(),
        mac: d.vtep_mac,
        mtu: own.mtu,
        own_subnet: own.subnet,
    };
    Ok(KernelVxlan::start(kc, shared.routes.clone()).await?)
}

async fn start_userspace(
    opts: &RunOptions,
    cfg: &NetworkConfig,
    own: &OwnLease,
    underlay: &Underlay,
    shared: Arc<Shared>,
) -> Result<DataPlane, DaemonError> {
    let encap = match (&cfg.backend, own.attrs.vxlan_data()) {
        (Backend::Vxlan(v), Some(d)) => Encap::Vxlan {
            vni: v.vni,
            mac: d.vtep_mac,
        },
        _ => Encap::Udp,
    };
    let dp = DataPlaneConfig {
        encap,
        port: cfg.backend.port(),
        local_ip: underlay.local_ip,
        own_subnet: own.subnet,
        network: cfg.network,
        mtu: own.mtu,
        tun_name: opts.tun_name.clone(),
        workers: opts.workers,
        offload: opts.offload,
        batch: opts.batch,
        busy_poll: opts.busy_poll,
        underlay: opts.underlay,
        iface: underlay.iface.clone(),
        iface_mtu: underlay.mtu,
        cpu_local: opts.cpu_local,
    };
    let dp = DataPlane::start(dp, shared.routes.clone()).await?;
    shared
        .workers
        .lock()
        .expect("workers lock")
        .extend(dp.counters().iter().cloned());
    Ok(dp)
}

/// Reads `<prefix>/config` until it exists and is valid, saying so once per state.
async fn wait_for_config(store: &Store, shared: &Shared) -> NetworkConfig {
    let mut last_problem = String::new();
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
    loop {
        let problem = match store.get_config().await {
            Ok(Some(text)) => {
                shared.set_etcd(true, None);
                match NetworkConfig::parse(&text) {
                    Ok(cfg) => return cfg,
                    Err(e) => format!(
                        "the network config at {} is invalid: {e}; fix it with `weft config set`",
                        store.config_key()
                    ),
                }
            }
            Ok(None) => {
                shared.set_etcd(true, None);
                format!(
                    "waiting for the network config at {} in etcd {}; set it with `weft config set '{{\"Network\":\"10.5.0.0/16\",\"Backend\":{{\"Type\":\"vxlan\"}}}}'`",
                    store.config_key(),
                    store.endpoints()
                )
            }
            Err(e) => {
                shared.set_etcd(false, None);
                format!("cannot read the network config: {e}; retrying")
            }
        };
        if problem != last_problem {
            warn!("{problem}");
            last_problem = problem;
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

fn read_previous_subnet(path: &Path) -> Option<Ipv4Net> {
    let text = std::fs::read_to_string(path).ok()?;
    match SubnetEnv::parse(&text) {
        Ok(env) => Some(env.subnet),
        Err(e) => {
            warn!(file = %path.display(), "ignoring previous subnet file: {e}");
            None
        }
    }
}

fn lease_attrs(cfg: &NetworkConfig, public_ip: Ipv4Addr, mac: MacAddr) -> LeaseAttrs {
    match &cfg.backend {
        Backend::Vxlan(v) => LeaseAttrs::vxlan(public_ip, v.vni, mac),
        Backend::Udp(_) => LeaseAttrs::udp(public_ip),
    }
}

/// Acquires a subnet with flannel's rules; a lost race is retried, an exhausted network is fatal.
async fn acquire(
    store: &Store,
    shared: &Shared,
    cfg: &NetworkConfig,
    underlay: &Underlay,
    previous: Option<Ipv4Net>,
    ttl: Duration,
) -> Result<OwnLease, DaemonError> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut races = 0u32;
    loop {
        let (leases, _) = match store.list_leases().await {
            Ok(l) => {
                shared.set_etcd(true, None);
                l
            }
            Err(e) => {
                shared.set_etcd(false, None);
                warn!("cannot list leases to pick a subnet: {e}; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        let existing: Vec<ExistingLease> = leases
            .iter()
            .map(|l| ExistingLease {
                subnet: l.subnet,
                // Unparsable values still occupy their subnet.
                public_ip: l
                    .attrs
                    .as_ref()
                    .map(|a| a.public_ip)
                    .unwrap_or(Ipv4Addr::UNSPECIFIED),
            })
            .collect();
        let choice = choose_subnet(
            cfg,
            &existing,
            underlay.public_ip,
            previous,
            &mut rand::thread_rng(),
        )?;
        let subnet = choice.subnet();
        let old: Option<&StoredLease> = leases.iter().find(|l| l.subnet == subnet);
        // Keep our VTEP MAC across restarts so peers' neighbour entries stay right.
        let mac = old
            .and_then(|l| l.attrs.as_ref().ok())
            .and_then(|a| a.vxlan_data())
            .map(|d| d.vtep_mac)
            .unwrap_or_else(|| MacAddr::random_local(&mut rand::thread_rng()));
        let attrs = lease_attrs(cfg, underlay.public_ip, mac);
        let expect_rev = match choice {
            Choice::Reuse(_) => old.map(|l| l.mod_revision).unwrap_or(0),
            _ => 0,
        };
        let attempt = async {
            let id = store.grant(ttl).await?;
            let won = store.put_lease_if(&subnet, &attrs, id, expect_rev).await?;
            if !won {
                let _ = store.revoke(id).await;
            }
            Ok::<_, StoreError>((won, id))
        };
        match attempt.await {
            Ok((true, id)) => {
                if let Some(old_id) = old.map(|l| l.etcd_lease).filter(|&o| o != 0 && o != id) {
                    let _ = store.revoke(old_id).await;
                }
                let how = match choice {
                    Choice::Reuse(_) => "reusing the lease that carries our public IP",
                    Choice::Previous(_) => "reclaiming the subnet from the previous subnet.env",
                    Choice::Fresh(_) => "leased a new subnet",
                };
                info!(subnet = %subnet, public_ip = %underlay.public_ip, "{how}");
                return Ok(OwnLease {
                    subnet,
                    network: cfg.network,
                    public_ip: underlay.public_ip,
                    iface: underlay.iface.clone(),
                    backend: cfg.backend.type_name().to_string(),
                    mtu: cfg.backend.overlay_mtu(underlay.mtu),
                    attrs,
                    etcd_lease: id,
                });
            }
            Ok((false, _)) => {
                races += 1;
                debug!(subnet = %subnet, races, "another host took the subnet first; trying again");
                let jitter = rand::Rng::gen_range(&mut rand::thread_rng(), 10..100u64);
                tokio::time::sleep(Duration::from_millis(jitter)).await;
            }
            Err(e) => {
                shared.set_etcd(false, Some(&e));
                warn!("cannot write our lease: {e}; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// Keeps our key alive and ours: renews before expiry, re-creates it with the same subnet if it vanished.
async fn keep_lease(
    store: &Store,
    shared: &Shared,
    own: &mut OwnLease,
    opts: &RunOptions,
    renew_every: Duration,
) -> Result<(), DaemonError> {
    let mut next_renew = Instant::now() + renew_every;
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    let mut wait = CHECK_INTERVAL.min(renew_every);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {},
            _ = shared.own_key_changed.notified() => {},
        }
        match check_lease(store, shared, own, opts, &mut next_renew, renew_every).await {
            Ok(()) => {
                shared.set_etcd(true, None);
                backoff.reset();
                wait = CHECK_INTERVAL.min(next_renew.saturating_duration_since(Instant::now()));
            }
            Err(DaemonError::Store(e)) => {
                shared.set_etcd(false, Some(&e));
                wait = backoff.next_delay();
            }
            Err(fatal) => {
                error!("{fatal}");
                return Err(fatal);
            }
        }
    }
}

async fn check_lease(
    store: &Store,
    shared: &Shared,
    own: &mut OwnLease,
    opts: &RunOptions,
    next_renew: &mut Instant,
    renew_every: Duration,
) -> Result<(), DaemonError> {
    let current = store.get_lease(&own.subnet).await?;
    let ours = match &current {
        Some(l) if Store::is_ours(&l.attrs, own.public_ip) => {
            own.etcd_lease = l.etcd_lease;
            true
        }
        Some(l) => {
            return Err(DaemonError::SubnetStolen {
                subnet: own.subnet,
                other: match &l.attrs {
                    Ok(a) => a.public_ip.to_string(),
                    Err(_) => "with an unreadable lease".into(),
                },
                file: opts.subnet_file.display().to_string(),
            })
        }
        None => false,
    };
    if ours && own.etcd_lease != 0 && Instant::now() >= *next_renew {
        let ttl = store.keep_alive(own.etcd_lease).await?;
        if ttl > 0 {
            shared.lease_ttl.store(ttl, Ordering::Relaxed);
            shared.lease_renewals.fetch_add(1, Ordering::Relaxed);
            *next_renew = Instant::now() + renew_every;
            debug!(subnet = %own.subnet, ttl, "renewed lease");
            return Ok(());
        }
    } else if ours {
        return Ok(());
    }
    // The key is gone (expired during an outage, or deleted) or its etcd lease is: claim it again.
    let id = store.grant(opts.lease_ttl).await?;
    let expect = current.as_ref().map(|l| l.mod_revision).unwrap_or(0);
    if store
        .put_lease_if(&own.subnet, &own.attrs, id, expect)
        .await?
    {
        own.etcd_lease = id;
        shared
            .lease_ttl
            .store(opts.lease_ttl.as_secs() as i64, Ordering::Relaxed);
        *next_renew = Instant::now() + renew_every;
        warn!(subnet = %own.subnet, "our lease had disappeared from etcd (expired or deleted); re-created it with the same subnet");
        Ok(())
    } else {
        let _ = store.revoke(id).await;
        // Someone wrote the key between our read and our write: look again next round.
        shared.own_key_changed.notify_one();
        Ok(())
    }
}

/// Mirrors `<prefix>/subnets/` into the route table: snapshot, then watch from its revision; resume after
/// disconnects from the last revision seen; re-list after compaction.
async fn watch_peers(store: Store, shared: Arc<Shared>, own_subnet: Ipv4Net, own_ip: Ipv4Addr) {
    let mut rev: i64 = 0;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let is_peer = |l: &StoredLease| l.subnet != own_subnet && !Store::is_ours(&l.attrs, own_ip);
    loop {
        if rev == 0 {
            match store.list_leases().await {
                Ok((leases, r)) => {
                    let peers: Vec<Peer> = leases
                        .iter()
                        .filter(|l| is_peer(l))
                        .filter_map(|l| {
                            l.attrs.as_ref().ok().map(|a| Peer::from_lease(l.subnet, a))
                        })
                        .collect();
                    let (changed, removed) = shared.routes.replace_all(peers);
                    info!(
                        peers = shared.routes.load().len(),
                        changed,
                        removed,
                        revision = r,
                        "loaded peer leases"
                    );
                    rev = r;
                }
                Err(e) => {
                    debug!("cannot list leases for the watch: {e}");
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            }
        }
        let mut stream = match store.watch_leases(rev + 1).await {
            Ok(s) => s,
            Err(e) => {
                debug!("cannot start the lease watch: {e}");
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        shared.watch_restarts.fetch_add(1, Ordering::Relaxed);
        loop {
            let resp = match stream.message().await {
                Ok(Some(r)) => r,
                Ok(None) | Err(_) => {
                    debug!(revision = rev, "lease watch interrupted; resuming");
                    tokio::time::sleep(backoff.next_delay()).await;
                    break;
                }
            };
            backoff.reset();
            if resp.compact_revision() > 0 || resp.canceled() {
                warn!(
                    revision = rev,
                    compacted = resp.compact_revision(),
                    "lease watch fell behind etcd's compaction; re-listing all leases"
                );
                rev = 0;
                break;
            }
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                rev = rev.max(kv.mod_revision());
                let Some(subnet) = store.subnet_of_key(kv.key()) else {
                    continue;
                };
                shared.watch_events.fetch_add(1, Ordering::Relaxed);
                if subnet == own_subnet {
                    shared.own_key_changed.notify_one();
                    continue;
                }
                match ev.event_type() {
                    etcd_client::EventType::Put => {
                        let Some(l) =
                            store.stored_lease(kv.key(), kv.value(), kv.lease(), kv.mod_revision())
                        else {
                            continue;
                        };
                        match &l.attrs {
                            Ok(_) if !is_peer(&l) => {}
                            Ok(a) => {
                                let p = Peer::from_lease(subnet, a);
                                if shared.routes.upsert(p) {
                                    info!(subnet = %subnet, public_ip = %a.public_ip, backend = %a.backend_type, "peer added or changed");
                                }
                            }
                            Err(e) => {
                                warn!(subnet = %subnet, "ignoring malformed lease: {e}");
                                shared.routes.remove(&subnet);
                            }
                        }
                    }
                    etcd_client::EventType::Delete => {
                        if let Some(p) = shared.routes.remove(&subnet) {
                            info!(subnet = %subnet, public_ip = %p.public_ip, "peer removed");
                        }
                    }
                }
            }
            if let Some(h) = resp.header() {
                rev = rev.max(h.revision());
            }
        }
    }
}

/// Writes `text` to `path` through a temporary file and a rename, so readers never see half a file.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
    std::fs::rename(&tmp, path)
}

/// Tells systemd (Type=notify) that subnet.env is written, as flanneld does.
fn notify_systemd_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(_) => return,
    };
    if let Err(e) = sock.send_to(b"READY=1", &path) {
        warn!("cannot notify systemd: {e}");
    }
}
