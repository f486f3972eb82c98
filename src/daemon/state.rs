//! [`Shared`]: the daemon's state read by the HTTP endpoints (its [`StatusSource`] impl), and this host's
//! [`OwnLease`].

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ipnet::{Ipv4Net, Ipv6Net};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::control::lease::LeaseAttrs;
use crate::control::store::StoreError;
use crate::control::validate::InvalidLease;
use crate::ops::metrics::{CounterTotals, MetricsView, WorkerCounters};
use crate::ops::status::{LeaseStatus, StatusReport, StatusSource};
use crate::routes::RouteTable;

/// This host's lease as held by the running daemon.
#[derive(Debug, Clone)]
pub struct OwnLease {
    /// The IPv4 subnet and Network; None on an IPv6-only network.
    pub subnet: Option<Ipv4Net>,
    pub network: Option<Ipv4Net>,
    /// The IPv6 subnet and IPv6Network of a dual-stack network.
    pub subnet6: Option<Ipv6Net>,
    pub network6: Option<Ipv6Net>,
    pub public_ip: Ipv4Addr,
    pub public_ipv6: Option<Ipv6Addr>,
    pub iface: String,
    pub backend: String,
    pub mtu: u32,
    pub attrs: LeaseAttrs,
    pub etcd_lease: i64,
}

impl OwnLease {
    /// Our lease key (both halves on a dual-stack network).
    pub fn key(&self) -> crate::control::lease::SubnetKey {
        crate::control::lease::SubnetKey {
            v4: self.subnet,
            v6: self.subnet6,
        }
    }
}

/// State shared by the control plane, the data plane and the HTTP endpoints.
#[derive(Default)]
pub struct Shared {
    pub routes: Arc<RouteTable>,
    pub ready: AtomicBool,
    pub etcd_connected: AtomicBool,
    pub(super) etcd_seen: AtomicBool,
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
    pub(super) own_key_changed: Notify,
    /// Peer leases in etcd that are ignored, by reason (see `control::validate`).
    pub invalid_leases: Mutex<Vec<(InvalidLease, usize)>>,
    /// This host's WireGuard identity and peer sessions (wireguard backend), set once at start.
    pub wireguard: std::sync::OnceLock<Arc<crate::wireguard::Node>>,
    /// The IPv6 device's sessions (same key) on a dual-stack or IPv6-only wireguard network.
    pub wireguard6: std::sync::OnceLock<Arc<crate::wireguard::Node>>,
    /// vxlan's DirectRouting: the direct-route reconciler running beside the data plane.
    pub direct: Mutex<Option<crate::kernel::direct::DirectRoutes>>,
}

impl StatusSource for Shared {
    fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    fn metrics(&self) -> MetricsView {
        let snap = self.routes.load();
        let ttl = self.lease_ttl.load(Ordering::Relaxed);
        // Before the literal below: its temporaries hold the `own` lock to its end.
        let wireguard = self.wireguard_view();
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
            per_worker: CounterTotals::per_worker(workers.iter().map(|w| w.as_ref())),
            invalid_leases: self
                .invalid_leases
                .lock()
                .expect("invalid leases lock")
                .iter()
                .map(|(r, n)| (r.label(), *n))
                .collect(),
            wireguard,
        }
    }

    fn status(&self) -> StatusReport {
        // Before the literal below: its temporaries hold the `own` lock to its end.
        let wireguard = self.wireguard_view();
        StatusReport {
            ready: self.ready.load(Ordering::Relaxed),
            etcd_connected: self.etcd_connected.load(Ordering::Relaxed),
            dataplane: self.dataplane.lock().expect("dataplane lock").to_string(),
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
                    subnet6: o.subnet6,
                    network6: o.network6,
                    public_ipv6: o.public_ipv6,
                    iface: o.iface.clone(),
                    backend: o.backend.clone(),
                    mtu: o.mtu,
                }),
            peers: self.routes.load().peers().to_vec(),
            wireguard,
        }
    }
}

impl Shared {
    /// The WireGuard sessions, for `/status` and `/metrics`.
    fn wireguard_view(&self) -> Option<crate::ops::metrics::WireGuardView> {
        let node = self.wireguard.get()?;
        let node6 = self.wireguard6.get();
        let listen_port = self
            .own
            .lock()
            .expect("own lock")
            .as_ref()
            .and_then(|o| o.attrs.wireguard_data().or(o.attrs.wireguard_v6_data()))
            .map_or(0, |d| d.port);
        let mut peers = node.status();
        peers.extend(node6.map(|n| n.status()).unwrap_or_default());
        Some(crate::ops::metrics::WireGuardView {
            public_key: node.public_key().to_string(),
            listen_port,
            handshakes: node.handshakes() + node6.map_or(0, |n| n.handshakes()),
            peers,
        })
    }
}

impl Shared {
    pub(super) fn set_etcd(&self, up: bool, err: Option<&StoreError>) {
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
