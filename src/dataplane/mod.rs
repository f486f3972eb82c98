//! The userspace data plane: a tun device and worker threads that move packets between it and the underlay.
//!
//! It owns the tun device (`tun`), the workers (`worker`) and their underlay (`underlay`: the UDP sockets
//! of `sock`, or AF_XDP through `afxdp` and `xdp`), and CPU steering (`steer`). It reads the route table
//! and counts into its own counters; it knows nothing of etcd or the daemon.

mod afxdp;
mod gather;
mod sock;
mod spin;
mod steer;
mod tun;
mod underlay;
mod worker;
pub mod xdp;

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use ipnet::Ipv4Net;
use tracing::info;

use crate::ops::metrics::WorkerCounters;
use crate::routes::RouteTable;

pub use crate::wire::inbound::Encap;
pub use tun::{enable_ip_forwarding, enable_ipv6_forwarding};

/// What the data plane needs to know, fixed for its lifetime.
#[derive(Debug, Clone)]
pub struct DataPlaneConfig {
    pub encap: Encap,
    /// The network's UDP port (8472 for vxlan, 8285 for udp by default).
    pub port: u16,
    /// The IPv6 underlay's port: `port`, except for WireGuard (`ListenPortV6`, flannel's `flannel-wg-v6`).
    pub port6: u16,
    /// The underlay address to bind (the interface's address, which may differ from a NAT public IP).
    pub local_ip: Ipv4Addr,
    /// This host's leased subnet (None on an IPv6-only network).
    pub own_subnet: Option<Ipv4Net>,
    /// The whole overlay network, routed to the tun device (None on an IPv6-only network).
    pub network: Option<Ipv4Net>,
    /// On a dual-stack network: the IPv6 underlay address to bind, our IPv6 subnet and the IPv6Network
    /// (routed to the tun device too).
    pub local_ip6: Option<std::net::Ipv6Addr>,
    pub own_subnet6: Option<ipnet::Ipv6Net>,
    pub network6: Option<ipnet::Ipv6Net>,
    /// The tun device's MTU (underlay MTU minus the encapsulation).
    pub mtu: u32,
    pub tun_name: String,
    pub workers: usize,
    /// Which offloads to use where the kernel allows them.
    pub offload: Offloads,
    /// Move packets in batches.
    pub batch: bool,
    /// How long a worker keeps polling without sleeping after traffic (0: never).
    pub busy_poll: std::time::Duration,
    /// How packets reach the underlay.
    pub underlay: UnderlayIo,
    /// The underlay interface and its MTU (AF_XDP attaches there).
    pub iface: String,
    pub iface_mtu: u32,
    /// Pin each worker to a CPU and steer packets to the worker of the CPU handling them.
    pub cpu_local: bool,
    /// The WireGuard node when the network's backend is wireguard (`encap` is then `Encap::WireGuard`).
    pub wireguard: Option<Arc<crate::wireguard::Node>>,
    /// The IPv6 twin of `wireguard` on a dual-stack or IPv6-only network (flannel's `flannel-wg-v6`: the same
    /// key, its own sessions and port).
    pub wireguard6: Option<Arc<crate::wireguard::Node>>,
}

/// The underlay side of the userspace data plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnderlayIo {
    /// Kernel UDP sockets (with GSO/GRO).
    Udp,
    /// AF_XDP sockets on the underlay interface, with an XDP program steering the overlay's UDP to them.
    AfXdp(crate::dataplane::xdp::XdpModeChoice),
}

/// The fast paths, each of which can be turned off for comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offloads {
    /// tun TSO/USO and checksum offload (virtio-net headers).
    pub tun: bool,
    /// UDP GSO: a train of datagrams in one send.
    pub udp_gso: bool,
    /// UDP GRO: coalesced datagrams in one receive.
    pub udp_gro: bool,
}

impl Offloads {
    pub const ALL: Offloads = Offloads {
        tun: true,
        udp_gso: true,
        udp_gro: true,
    };
}

/// Why the data plane could not start; each names the fix.
#[derive(Debug, thiserror::Error)]
pub enum DataPlaneError {
    #[error("cannot create tun device {name}: {source}; is /dev/net/tun present (modprobe tun) and is weft running as root (CAP_NET_ADMIN)? --dataplane kernel (or auto) does without it")]
    Tun {
        name: String,
        source: std::io::Error,
    },
    #[error("cannot route {network} to {name}: {reason}")]
    Route {
        network: ipnet::IpNet,
        name: String,
        reason: String,
    },
    #[error("cannot repair the tun device {name}: {reason}")]
    Repair { name: String, reason: String },
    #[error(transparent)]
    Xdp(#[from] crate::dataplane::xdp::XdpError),
    #[error("cannot open UDP port {addr}: {source}; is another overlay (flanneld, a kernel VXLAN device) already using it?")]
    Socket {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// The running data plane; dropping it stops the workers and removes the tun device.
pub struct DataPlane {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// The AF_XDP attachment, detached when the data plane is dropped (after the workers stopped).
    xdp: Option<crate::dataplane::xdp::Attachment>,
    /// How the underlay is reached, in words (for status and the log).
    pub underlay: String,
    /// Each worker's counters, in worker order (kept when the data plane is built again).
    counters: Vec<Arc<WorkerCounters>>,
    /// What it was started with, to build it again.
    cfg: DataPlaneConfig,
    routes: Arc<RouteTable>,
    /// The tun device's index.
    tun_index: u32,
}

/// What [`DataPlane::check`] found, and did about it.
#[derive(Debug, PartialEq, Eq)]
pub enum Health {
    Healthy,
    /// These parts of the tun device's kernel state were wrong and have been put back.
    Repaired(Vec<&'static str>),
    /// The data plane was built again (tun device, queues, sockets, workers), for this reason.
    Rebuilt(String),
}

impl DataPlane {
    /// Creates the tun device and its route, opens the sockets, and starts the workers.
    pub async fn start(
        cfg: DataPlaneConfig,
        routes: Arc<RouteTable>,
    ) -> Result<DataPlane, DataPlaneError> {
        Self::start_with(cfg, routes, Vec::new()).await
    }

    /// As `start`, counting into `counters` (one per worker) when given, so a rebuild keeps the totals.
    async fn start_with(
        cfg: DataPlaneConfig,
        routes: Arc<RouteTable>,
        counters: Vec<Arc<WorkerCounters>>,
    ) -> Result<DataPlane, DataPlaneError> {
        let workers = cfg.workers.max(1);
        // Peers known before the first packet is read.
        if let Some(node) = &cfg.wireguard {
            wg_sync(node, &routes.load(), false);
        }
        if let Some(node) = &cfg.wireguard6 {
            wg_sync(node, &routes.load(), true);
        }
        let queues = tun::create(&cfg, workers)?;
        let tun_index = tun::route_network(&cfg).await?;
        let mut counters = counters.into_iter();
        // Built first so that an error below stops whatever already started (Drop).
        let mut dp = DataPlane {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::with_capacity(workers + 1),
            xdp: None,
            underlay: "udp".to_string(),
            counters: Vec::with_capacity(workers),
            cfg: cfg.clone(),
            routes: routes.clone(),
            tun_index,
        };
        let mut xsks = Vec::new();
        if let UnderlayIo::AfXdp(choice) = cfg.underlay {
            // The UDP sockets stay open beside AF_XDP: frames on queues without a socket, and datagrams
            // to peers whose next hop is not known yet, take the kernel's path.
            let s = crate::dataplane::xdp::setup(
                &cfg.iface,
                cfg.iface_mtu,
                cfg.local_ip,
                cfg.local_ip6,
                cfg.port,
                workers,
                choice,
            )?;
            let a = &s.attachment;
            let zero_copy = s.sockets.iter().any(|x| x.zero_copy);
            dp.underlay = format!(
                "af_xdp ({} mode, {}, {} of {} workers)",
                a.mode.as_str(),
                if zero_copy { "zero-copy" } else { "copy" },
                s.sockets.len(),
                workers
            );
            info!(iface = %a.iface, mode = a.mode.as_str(), zero_copy, sockets = s.sockets.len(), "AF_XDP underlay up");
            let hops = Arc::new(crate::dataplane::xdp::NextHops::default());
            let (ifindex, src_mac) = (a.ifindex, a.src_mac);
            {
                let (hops, routes, stop) = (hops.clone(), routes.clone(), dp.stop.clone());
                // Each peer's IPv4 address, and on a dual-stack network its IPv6 one too.
                let v6 = cfg.local_ip6.is_some();
                let peers = move || {
                    let snap = routes.load();
                    let addrs = snap.peers().iter().flat_map(|p| {
                        let ip6 = p.v6.and_then(|v| v.public_ip).filter(|_| v6);
                        std::iter::once(p.public_ip.into()).chain(ip6.map(Into::into))
                    });
                    addrs.collect()
                };
                dp.threads.push(
                    std::thread::Builder::new()
                        .name("weft-nexthops".into())
                        .spawn(move || hops.run(ifindex, peers, &stop))
                        .expect("spawn the next-hop thread"),
                );
            }
            for x in s.sockets {
                let local = afxdp::XdpLocal {
                    mac: src_mac,
                    ip: cfg.local_ip,
                    ip6: cfg.local_ip6,
                    port: cfg.port,
                };
                xsks.push(Some(afxdp::XdpIo::new(x, hops.clone(), local)));
            }
            dp.xdp = Some(s.attachment);
        }
        xsks.resize_with(workers, || None);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cpu_local = cfg.cpu_local && workers > 1;
        if cpu_local {
            use std::os::fd::AsRawFd;
            if let Err(e) = steer::steer_tun_by_cpu(queues[0].as_raw_fd()) {
                tracing::warn!(
                    "cannot steer tun queues by CPU ({e}); the kernel picks them by flow"
                );
            }
        }
        for (i, (queue, xsk)) in queues.into_iter().zip(xsks).enumerate() {
            // WireGuard sends leave from the listening port (peers answer to the port a message came from).
            let wg = matches!(cfg.encap, Encap::WireGuard);
            let io =
                sock::WorkerSockets::open(cfg.local_ip.into(), cfg.port, cfg.offload.udp_gro, wg)?;
            let io6 = match cfg.local_ip6 {
                Some(ip6) => Some(sock::WorkerSockets::open(
                    ip6.into(),
                    cfg.port6,
                    cfg.offload.udp_gro,
                    wg,
                )?),
                None => None,
            };
            if let (Some(node), Some(io6), 0) = (&cfg.wireguard6, &io6, i) {
                let sock =
                    io6.rx_socket()
                        .try_clone()
                        .map_err(|source| DataPlaneError::Socket {
                            addr: std::net::SocketAddr::from((
                                cfg.local_ip6.unwrap_or(std::net::Ipv6Addr::UNSPECIFIED),
                                cfg.port6,
                            )),
                            source,
                        })?;
                dp.threads.push(wg_timers(
                    node.clone(),
                    true,
                    routes.clone(),
                    sock,
                    dp.stop.clone(),
                ));
            }
            if let (Some(node), 0) = (&cfg.wireguard, i) {
                let sock = io
                    .rx_socket()
                    .try_clone()
                    .map_err(|source| DataPlaneError::Socket {
                        addr: std::net::SocketAddr::from((cfg.local_ip, cfg.port)),
                        source,
                    })?;
                dp.threads.push(wg_timers(
                    node.clone(),
                    false,
                    routes.clone(),
                    sock,
                    dp.stop.clone(),
                ));
            }
            if cpu_local && i == 0 {
                use std::os::fd::AsRawFd;
                if let Err(e) = steer::steer_reuseport_by_cpu(io.rx_socket().as_raw_fd()) {
                    tracing::warn!(
                        "cannot steer UDP receives by CPU ({e}); the kernel picks sockets by flow"
                    );
                }
            }
            let counters = counters.next().unwrap_or_default();
            dp.counters.push(counters.clone());
            let udp = sock::UdpUnderlay::new(io, io6, &cfg);
            let (cfg, routes, stop) = (cfg.clone(), routes.clone(), dp.stop.clone());
            let pin = cpu_local.then_some(i % cpus);
            let handle = match xsk {
                Some(x) => {
                    let xdp = afxdp::XdpUnderlay::new(x, udp, counters.clone());
                    spawn_worker(
                        i,
                        pin,
                        worker::Worker::new(cfg, queue, xdp, routes, counters, stop),
                    )
                }
                None => spawn_worker(
                    i,
                    pin,
                    worker::Worker::new(cfg, queue, udp, routes, counters, stop),
                ),
            };
            dp.threads.push(handle);
        }
        info!(
            tun = %cfg.tun_name, workers, port = cfg.port, mtu = cfg.mtu,
            encap = match cfg.encap { Encap::Vxlan { .. } => "vxlan", Encap::Udp => "udp", Encap::WireGuard => "wireguard" },
            underlay = %dp.underlay,
            "userspace data plane up"
        );
        Ok(dp)
    }
}

/// The WireGuard peers of a route snapshot for the node of one family (`v6`: the IPv6 halves, reached at
/// their PublicIPv6 and `BackendV6Data`'s port).
fn wg_leases(
    snap: &crate::routes::RouteSnapshot,
    v6: bool,
) -> impl Iterator<Item = crate::wireguard::node::PeerLease> + '_ {
    use crate::routes::PeerBackend;
    snap.peers()
        .iter()
        .filter_map(move |p| match (p.backend, v6) {
            (PeerBackend::WireGuard { public_key, port }, false) => {
                Some(crate::wireguard::node::PeerLease {
                    subnet: p.subnet?.into(),
                    public_ip: p.public_ip.into(),
                    key: public_key,
                    port,
                })
            }
            (PeerBackend::WireGuard { .. }, true) => {
                let h = p.v6?;
                let wg = h.wireguard?;
                Some(crate::wireguard::node::PeerLease {
                    subnet: h.subnet.into(),
                    public_ip: h.public_ip?.into(),
                    key: wg.public_key,
                    port: wg.port,
                })
            }
            _ => None,
        })
}

/// Makes the WireGuard node's peers (of the IPv6 halves with `v6`) those of the route table, and says
/// what changed.
fn wg_sync(node: &crate::wireguard::Node, snap: &Arc<crate::routes::RouteSnapshot>, v6: bool) {
    let r = node.sync_tagged(Arc::as_ptr(snap) as usize, wg_leases(snap, v6));
    for k in &r.added {
        info!(peer = %k, "WireGuard peer added");
    }
    for k in &r.removed {
        info!(peer = %k, "WireGuard peer removed");
    }
    for (subnet, k) in &r.duplicate_keys {
        tracing::warn!(%subnet, peer = %k, "the lease of {subnet} has the WireGuard key of another lease (a copied key file?); ignored until its key is its own");
    }
}

/// Syncs the WireGuard node's peers with `snap` if they were made from another route snapshot (a
/// worker that found no session for a peer calls this before giving up: a lease may have just come).
pub(crate) fn wg_sync_if_stale(
    node: &crate::wireguard::Node,
    snap: &Arc<crate::routes::RouteSnapshot>,
    v6: bool,
) -> bool {
    let stale = node.stale(Arc::as_ptr(snap) as usize);
    if stale {
        wg_sync(node, snap, v6);
    }
    stale
}

/// The WireGuard housekeeping thread: follows the route table's peers, runs the sessions' timers
/// (handshake retries, rekeying, keepalives) and sends what they ask for from the listening port.
fn wg_timers(
    node: Arc<crate::wireguard::Node>,
    v6: bool,
    routes: Arc<RouteTable>,
    sock: std::net::UdpSocket,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(if v6 { "weft-wg6-timers" } else { "weft-wg-timers" }.into())
        .spawn(move || {
            let mut snap = routes.load();
            wg_sync(&node, &snap, v6);
            let mut buf = vec![0u8; 2048];
            let mut last_reset = std::time::Instant::now();
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(100));
                let now = routes.load();
                if !Arc::ptr_eq(&now, &snap) {
                    snap = now;
                    wg_sync_if_stale(&node, &snap, v6);
                }
                let reset = last_reset.elapsed() >= std::time::Duration::from_secs(1);
                if reset {
                    last_reset = std::time::Instant::now();
                }
                let events = node.tick(reset, &mut buf, |to, m| {
                    let _ = sock.send_to(m, to);
                });
                for e in events {
                    use crate::wireguard::node::PeerEvent;
                    match e {
                        PeerEvent::Unanswered { subnet, endpoint } => tracing::warn!(
                            "WireGuard peer {subnet} at {endpoint} has not answered handshakes for {} s; is weft (or flanneld) running there with this network, and is UDP port {} open between the hosts? Still trying",
                            crate::wireguard::node::UNANSWERED_AFTER.as_secs(),
                            endpoint.port()
                        ),
                        PeerEvent::Answering { subnet, endpoint } => {
                            info!("WireGuard peer {subnet} at {endpoint} answers again")
                        }
                    }
                }
            }
        })
        .expect("spawn the WireGuard timer thread")
}

/// Fault injection for the tests, in debug builds only: with `WEFT_FAULT_PANIC_WORKER` set, worker 0 panics
/// once, as a bug would. (Worker 0, not whichever thread starts first: the test names the thread it expects.)
#[cfg(debug_assertions)]
fn injected_panic(worker: usize) {
    static DONE: AtomicBool = AtomicBool::new(false);
    if worker == 0
        && std::env::var_os("WEFT_FAULT_PANIC_WORKER").is_some()
        && !DONE.swap(true, Ordering::Relaxed)
    {
        panic!("injected fault (WEFT_FAULT_PANIC_WORKER)");
    }
}

/// Starts worker `i` on its own thread, pinned to CPU `pin` if given.
fn spawn_worker<U: underlay::Underlay + Send + 'static>(
    i: usize,
    pin: Option<usize>,
    w: worker::Worker<U>,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(format!("weft-worker-{i}"))
        .spawn(move || {
            #[cfg(debug_assertions)]
            injected_panic(i);
            if let Some(cpu) = pin {
                if let Err(e) = steer::pin_to(cpu) {
                    tracing::warn!("cannot pin worker {i} to CPU {cpu} ({e})");
                }
            }
            w.run()
        })
        .expect("spawn a worker thread")
}

impl DataPlane {
    /// The workers' counters (one set per worker), for metrics.
    pub fn counters(&self) -> &[Arc<WorkerCounters>] {
        &self.counters
    }
}

impl DataPlane {
    /// Checks the data plane and repairs it: a stopped worker or a deleted tun device means building it
    /// again; a tun device that is down, or lost its MTU, address or route, is put back in place.
    pub async fn check(&mut self) -> Result<Health, DataPlaneError> {
        if let Some(why) = self.stopped_thread() {
            self.rebuild().await?;
            return Ok(Health::Rebuilt(why));
        }
        let state = tun::reconcile(&self.cfg, self.tun_index)
            .await
            .map_err(|reason| DataPlaneError::Repair {
                name: self.cfg.tun_name.clone(),
                reason,
            })?;
        if state.gone {
            self.rebuild().await?;
            return Ok(Health::Rebuilt(format!(
                "the tun device {} was gone",
                self.cfg.tun_name
            )));
        }
        Ok(match state.repaired.is_empty() {
            true => Health::Healthy,
            false => Health::Repaired(state.repaired),
        })
    }

    /// A data-plane thread that ended while it should run (a panic), with what it said.
    fn stopped_thread(&mut self) -> Option<String> {
        if self.stop.load(Ordering::Relaxed) {
            return None;
        }
        let i = self.threads.iter().position(|t| t.is_finished())?;
        let t = self.threads.remove(i);
        let name = t
            .thread()
            .name()
            .unwrap_or("a data-plane thread")
            .to_string();
        Some(match t.join() {
            Ok(()) => format!("{name} stopped"),
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                format!("{name} panicked: {msg}")
            }
        })
    }

    /// Stops everything and starts it again with the same settings and counters.
    async fn rebuild(&mut self) -> Result<(), DataPlaneError> {
        self.shutdown();
        let new =
            Self::start_with(self.cfg.clone(), self.routes.clone(), self.counters.clone()).await?;
        *self = new;
        Ok(())
    }

    /// Stops the workers, then detaches XDP; the tun device goes with its last queue.
    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // Detach the XDP program only now that no worker uses its sockets.
        self.xdp.take();
    }
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        self.shutdown();
    }
}
