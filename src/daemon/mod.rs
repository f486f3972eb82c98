//! `weft run`: waits for the network config, acquires and keeps the subnet lease, writes subnet.env, watches peers.
//!
//! This file wires the parts together and handles signals; each part has its own file.

mod dataplanes;
mod error;
mod files;
mod lease_keeper;
mod netconfig;
mod options;
mod saved;
mod state;
mod watch;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::control::backoff::renew_after;
use crate::control::store::Store;
use crate::control::subnet_env::SubnetEnv;
use crate::host::iface::{self, Underlay};

pub use dataplanes::ActiveDataPlane;
pub use error::DaemonError;
pub use files::write_atomically;
pub use options::{DataPlaneMode, RunOptions};
pub use state::{OwnLease, Shared};

use crate::dataplane::Health;
use dataplanes::start_dataplane;
use files::{notify_systemd_ready, read_previous_subnet};
use lease_keeper::{LeaseKeeper, Previous};
use netconfig::wait_for_config;
use saved::SavedState;
use watch::watch_peers;
use watch::StateSaver;

/// Runs the daemon until SIGTERM/SIGINT or a fatal error.
pub async fn run(opts: RunOptions) -> Result<(), DaemonError> {
    let renew_every = renew_after(opts.lease_ttl, opts.renew_margin)?;
    if matches!(opts.underlay, crate::dataplane::UnderlayIo::AfXdp(_))
        && matches!(opts.dataplane, DataPlaneMode::Kernel | DataPlaneMode::None)
    {
        return Err(DaemonError::AfXdpNeedsUserspace);
    }
    let about = format!(
        "pid {}, subnet file {}{}",
        std::process::id(),
        opts.subnet_file.display(),
        opts.healthz
            .map(|a| format!(", /status on {a}"))
            .unwrap_or_default()
    );
    // Held until `run` returns: nothing below may touch this namespace while another weft owns it.
    let _instance = crate::host::instance::acquire(
        &opts.subnet_file,
        opts.dataplane != DataPlaneMode::None,
        &about,
    )?;
    let underlay = iface::detect(&opts.iface, opts.public_ip, opts.public_ipv6)?;
    match (underlay.public_ip.is_unspecified(), underlay.public_ipv6) {
        (true, Some(ip6)) => info!(
            iface = %underlay.iface, public_ipv6 = %ip6, mtu = underlay.mtu,
            "using underlay interface (IPv6 only: it has no IPv4 address)"
        ),
        _ => info!(
            iface = %underlay.iface, public_ip = %underlay.public_ip, mtu = underlay.mtu,
            "using underlay interface"
        ),
    }
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
            let subnet = shared.own.lock().expect("own lock").as_ref().map(|o| o.key());
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

/// The WireGuard identity for the wireguard backend: the key file's key (created on first start), after
/// checking that the chosen data plane can carry WireGuard.
fn wireguard_node(
    opts: &RunOptions,
    w: &crate::control::config::WireGuardOptions,
) -> Result<Arc<crate::wireguard::Node>, DaemonError> {
    if matches!(opts.underlay, crate::dataplane::UnderlayIo::AfXdp(_)) {
        return Err(DaemonError::AfXdpNoWireGuard);
    }
    if opts.dataplane == DataPlaneMode::Kernel {
        return Err(
            match crate::host::netlink::probe_wireguard("weft-wgprobe") {
                Err(e) => DaemonError::KernelNoWireGuard {
                    reason: e.to_string(),
                },
                Ok(()) => DaemonError::KernelWireGuardUnsupported,
            },
        );
    }
    let (key, created) = crate::wireguard::keyfile::load_or_create(&opts.wg_key_file)?;
    let node = crate::wireguard::Node::new(key, w.listen_port, w.psk, w.keepalive);
    info!(
        public_key = %node.public_key(),
        key_file = %opts.wg_key_file.display(),
        created,
        "WireGuard key {}", if created { "generated" } else { "loaded" }
    );
    Ok(Arc::new(node))
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
    let state_file = SavedState::path_for(&opts.subnet_file);
    let saved = SavedState::load(&state_file, underlay.public_ip, underlay.public_ipv6);
    // With a saved state, an unreachable etcd does not keep the host off the overlay: come up from what
    // we last knew, then reconcile with etcd when it answers.
    let offline = match &saved {
        Some((s, _)) => match store.get_config().await {
            Err(e) => {
                shared.set_etcd(false, None);
                warn!(
                    "etcd is unreachable ({e}); starting from the state saved at {}: subnet {}, {} peers. Reconciling with etcd when it answers",
                    state_file.display(),
                    s.key(),
                    s.peers.len()
                );
                true
            }
            Ok(_) => false,
        },
        None => false,
    };
    let (cfg, cfg_text, offline_own) = if offline {
        let (s, cfg) = saved.clone().expect("offline only with a saved state");
        let own = OwnLease {
            subnet: s.subnet,
            network: cfg.ipv4.map(|c| c.network),
            subnet6: s.subnet6,
            network6: cfg.ipv6.map(|c| c.network),
            public_ip: underlay.public_ip,
            public_ipv6: s.lease.public_ipv6,
            iface: underlay.iface.clone(),
            backend: cfg.backend.type_name().to_string(),
            mtu: cfg.overlay_mtu(underlay.mtu),
            attrs: s.lease.clone(),
            etcd_lease: 0,
        };
        shared.routes.replace_all(s.peers.iter().copied());
        (cfg, s.config, Some(own))
    } else {
        let (cfg, text) = wait_for_config(&store, &shared).await;
        (cfg, text, None)
    };
    if cfg.ipv6.is_some() && underlay.public_ipv6.is_none() {
        return Err(DaemonError::NoIpv6Underlay {
            iface: underlay.iface.clone(),
        });
    }
    if let (Some(c4), true) = (cfg.ipv4, underlay.public_ip.is_unspecified()) {
        return Err(DaemonError::NoIpv4Underlay {
            network: c4.network,
            iface: underlay.iface.clone(),
        });
    }
    if let crate::control::config::Backend::WireGuard(w) = &cfg.backend {
        let node = wireguard_node(opts, w)?;
        if cfg.ipv6.is_some() {
            // flannel's flannel-wg-v6: the same key, its own sessions, on ListenPortV6.
            let key = crate::wireguard::keyfile::load_or_create(&opts.wg_key_file)?.0;
            let node6 = crate::wireguard::Node::new(key, w.listen_port_v6, w.psk, w.keepalive);
            let _ = shared.wireguard6.set(Arc::new(node6));
        }
        let _ = shared.wireguard.set(node);
    }
    let mut keeper = None;
    let own = match offline_own {
        Some(own) => own,
        None => {
            let mut k = LeaseKeeper::new(
                &store,
                &shared,
                &cfg,
                underlay,
                opts,
                Previous {
                    subnet: read_previous_subnet(&opts.subnet_file),
                    mac: None,
                    mac6: None,
                },
                renew_every,
            );
            let own = k.acquire().await?;
            keeper = Some(k);
            own
        }
    };
    info!(network = %cfg.ipv4.map(|c| c.network.to_string()).unwrap_or_else(|| "none (IPv6-only)".into()), ipv6_network = %cfg.ipv6.map(|c| c.network.to_string()).unwrap_or_else(|| "none".into()), backend = cfg.backend.type_name(), "network config read");
    for option in cfg.backend.unsupported_options() {
        warn!("the network config sets {option}, which weft does not support yet; it is ignored");
    }
    let mut dataplane = start_dataplane(opts, &cfg, &own, underlay, shared.clone()).await?;
    *shared.dataplane.lock().expect("dataplane lock") = match &dataplane {
        Some(ActiveDataPlane::Userspace(d)) => {
            *shared.underlay.lock().expect("underlay lock") = d.underlay.clone();
            "userspace"
        }
        Some(ActiveDataPlane::Kernel(_)) => "kernel",
        Some(ActiveDataPlane::Routes(_)) => "host-gw",
        None => "none",
    };
    if let (true, Some(subnet)) = (opts.blackhole_route, own.subnet) {
        match crate::host::netlink::add_blackhole(subnet) {
            Ok(()) => info!(subnet = %subnet, "blackhole route for our subnet in place (--ip-blackhole-route)"),
            Err(e) => warn!("cannot add the blackhole route for {subnet} ({e}); traffic to unused addresses of our subnet follows the other routes"),
        }
    }
    if opts.ip_masq || opts.forward_rules {
        let set = crate::host::masq::RuleSet {
            masq: opts.ip_masq,
            forward: opts.forward_rules,
            random_fully: opts.masq_random_fully,
        };
        let mut nets = Vec::new();
        if let (Some(n4), Some(s4)) = (own.network, own.subnet) {
            nets.push((n4.into(), s4.into()));
        }
        if let (Some(n6), Some(s6)) = (own.network6, own.subnet6) {
            nets.push((n6.into(), s6.into()));
        }
        let m = crate::host::masq::Masquerade::start(&nets, set, opts.iptables_resync).await?;
        *shared.masq.lock().expect("masq lock") = Some(m);
    }
    let env = SubnetEnv {
        ipv4: own.network.zip(own.subnet),
        ipv6: own.network6.zip(own.subnet6),
        mtu: own.mtu,
        ipmasq: opts.ip_masq,
    };
    write_atomically(&opts.subnet_file, &env.render()).map_err(|source| {
        DaemonError::SubnetFile {
            path: opts.subnet_file.display().to_string(),
            source,
        }
    })?;
    info!(file = %opts.subnet_file.display(), subnet = %own.key(), mtu = own.mtu, "wrote subnet.env");
    *shared.own.lock().expect("own lock") = Some(own.clone());
    shared.ready.store(true, Ordering::Relaxed);
    notify_systemd_ready();
    let mut keeper = match keeper.take() {
        Some(k) => k,
        None => {
            // Forwarding from the saved state; now wait for etcd, and hold the same subnet there.
            let (now_cfg, _) = wait_for_config(&store, &shared).await;
            if now_cfg != cfg {
                return Err(DaemonError::ConfigChanged);
            }
            let mac = own.attrs.vxlan_data().map(|d| d.vtep_mac);
            let mac6 = own.attrs.vxlan_v6_data().map(|d| d.vtep_mac);
            let mut k = LeaseKeeper::new(
                &store,
                &shared,
                &cfg,
                underlay,
                opts,
                Previous {
                    subnet: Some(own.key()),
                    mac,
                    mac6,
                },
                renew_every,
            );
            let held = k.acquire().await?;
            if held.key() != own.key() {
                return Err(DaemonError::SubnetStolen {
                    subnet: own.key(),
                    other: "another host (while etcd was unreachable)".into(),
                    file: opts.subnet_file.display().to_string(),
                });
            }
            info!(subnet = %own.key(), "etcd answers again; holding the same subnet there");
            *shared.own.lock().expect("own lock") = Some(held);
            k
        }
    };
    let saver = StateSaver {
        path: state_file,
        config: cfg_text,
        subnet: own.key(),
        lease: own.attrs.clone(),
    };
    saver.save(&shared);
    tokio::spawn(watch_peers(
        store.clone(),
        shared.clone(),
        cfg.clone(),
        own.key(),
        own.attrs.owner(),
        saver,
    ));
    tokio::select! {
        r = keeper.keep() => r,
        never = supervise(dataplane.as_mut(), &shared) => match never {},
    }
}

/// How often the userspace data plane is checked (and repaired).
const DATAPLANE_CHECK: Duration = Duration::from_secs(1);

/// Keeps the userspace data plane working: every second it is checked and repaired (see
/// `DataPlane::check`); `/readyz` says 503 while a repair fails. Other data planes need nothing here (the
/// kernel backend reconciles itself).
async fn supervise(
    dataplane: Option<&mut ActiveDataPlane>,
    shared: &Shared,
) -> std::convert::Infallible {
    let Some(ActiveDataPlane::Userspace(dp)) = dataplane else {
        return std::future::pending().await;
    };
    let mut failing: Option<String> = None;
    loop {
        tokio::time::sleep(DATAPLANE_CHECK).await;
        match dp.check().await {
            Ok(Health::Healthy) => {}
            Ok(Health::Repaired(what)) => warn!(
                "the tun device's {} had been changed; put back",
                what.join(", ")
            ),
            Ok(Health::Rebuilt(why)) => {
                warn!("{why}; built the userspace data plane again (tun device, queues, sockets, workers)");
                *shared.underlay.lock().expect("underlay lock") = dp.underlay.clone();
            }
            Err(e) => {
                shared.ready.store(false, Ordering::Relaxed);
                let e = e.to_string();
                if failing.as_deref() != Some(e.as_str()) {
                    warn!("the userspace data plane is broken: {e}; /readyz says 503, retrying every second");
                    failing = Some(e);
                }
                continue;
            }
        }
        if failing.take().is_some() {
            info!("the userspace data plane works again");
        }
        shared.ready.store(true, Ordering::Relaxed);
    }
}
