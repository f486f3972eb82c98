//! Selecting and starting the data plane: userspace (tun), the kernel VXLAN backend, or none.

use std::sync::Arc;

use tracing::{info, warn};

use crate::control::config::{Backend, NetworkConfig};
use crate::dataplane::{DataPlane, DataPlaneConfig, DataPlaneError, Encap};
use crate::host::iface::Underlay;
use crate::kernel::direct::DirectRoutes;
use crate::kernel::direct_state::DirectMode;
use crate::kernel::vxlan::{KernelVxlan, KernelVxlan6Config, KernelVxlanConfig};

use super::{DaemonError, DataPlaneMode, OwnLease, RunOptions, Shared};

/// The data plane that is running; dropping it stops it.
pub enum ActiveDataPlane {
    Userspace(Box<DataPlane>),
    Kernel(KernelVxlan),
    /// host-gw: no encapsulation, only direct routes.
    Routes(DirectRoutes),
}

pub(super) async fn start_dataplane(
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
        if cfg.ipv6.is_some() {
            if let Err(e) = crate::dataplane::enable_ipv6_forwarding() {
                warn!("cannot enable net.ipv6.conf.all.forwarding ({e}); containers' IPv6 traffic will not be forwarded until it is on");
            }
        }
    }
    if opts.dataplane != DataPlaneMode::None {
        if let Backend::HostGw = cfg.backend {
            // host-gw is routes only, whichever data plane was asked for.
            let mut d = start_direct(DirectMode::HostGw, underlay, &shared).await?;
            if cfg.ipv6.is_some() {
                // The IPv6 halves via each peer's PublicIPv6, as flannel's host-gw does.
                d.start_v6(
                    DirectMode::HostGw,
                    underlay_index(underlay)?,
                    shared.routes.clone(),
                )
                .await
                .map_err(|e| DaemonError::Direct(e.to_string()))?;
            }
            return Ok(Some(ActiveDataPlane::Routes(d)));
        }
        if let Backend::Vxlan(v) = &cfg.backend {
            if v.direct_routing {
                let mut d =
                    start_direct(DirectMode::VxlanDirect { vni: v.vni }, underlay, &shared).await?;
                if cfg.ipv6.is_some() {
                    // The IPv6 halves of same-segment peers too, via their PublicIPv6, as flannel.
                    let mode = DirectMode::VxlanDirect { vni: v.vni };
                    d.start_v6(mode, underlay_index(underlay)?, shared.routes.clone())
                        .await
                        .map_err(|e| DaemonError::Direct(e.to_string()))?;
                }
                *shared.direct.lock().expect("direct lock") = Some(d);
            }
        }
    }
    match opts.dataplane {
        DataPlaneMode::None => {
            info!("data plane disabled (--dataplane none): leasing and publishing only");
            Ok(None)
        }
        DataPlaneMode::Userspace => Ok(Some(ActiveDataPlane::Userspace(Box::new(
            start_userspace(opts, cfg, own, underlay, shared).await?,
        )))),
        DataPlaneMode::Kernel => Ok(Some(ActiveDataPlane::Kernel(
            start_kernel(cfg, own, underlay, shared).await?,
        ))),
        DataPlaneMode::Auto => {
            match start_userspace(opts, cfg, own, underlay, shared.clone()).await {
                Ok(dp) => Ok(Some(ActiveDataPlane::Userspace(Box::new(dp)))),
                Err(DaemonError::DataPlane(e))
                    if matches!(cfg.backend, Backend::Vxlan(_)) && tun_unavailable(&e) =>
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

/// The underlay interface's index.
fn underlay_index(underlay: &Underlay) -> Result<u32, DaemonError> {
    nix::net::if_::if_nametoindex(underlay.iface.as_str())
        .map_err(|e| DaemonError::Direct(format!("the underlay interface {}: {e}", underlay.iface)))
}

/// Starts the direct-route reconciler on the underlay interface.
async fn start_direct(
    mode: DirectMode,
    underlay: &Underlay,
    shared: &Shared,
) -> Result<DirectRoutes, DaemonError> {
    let index = underlay_index(underlay)?;
    DirectRoutes::start(mode, index, shared.routes.clone())
        .await
        .map_err(|e| DaemonError::Direct(e.to_string()))
}

/// Whether a tun error means this host has no usable tun device (so the kernel backend should carry the
/// overlay), rather than a problem with this device or these settings (which the operator must fix).
fn tun_unavailable(e: &DataPlaneError) -> bool {
    let DataPlaneError::Tun { source, .. } = e else {
        return false;
    };
    matches!(
        source.raw_os_error(),
        Some(libc::ENOENT | libc::ENODEV | libc::ENXIO | libc::ENOTTY | libc::EPERM | libc::EACCES)
    )
}

pub(super) async fn start_kernel(
    cfg: &NetworkConfig,
    own: &OwnLease,
    underlay: &Underlay,
    shared: Arc<Shared>,
) -> Result<KernelVxlan, DaemonError> {
    // An IPv6-only network's lease has only the IPv6 VTEP (there is no flannel.<VNI> then).
    let vtep = own.attrs.vxlan_data().or(own.attrs.vxlan_v6_data());
    let (Backend::Vxlan(v), Some(d)) = (&cfg.backend, vtep) else {
        return Err(DaemonError::KernelNeedsVxlan {
            backend: cfg.backend.type_name(),
        });
    };
    // A dual-stack network: flannel-v6.<VNI> from our lease's IPv6 half.
    let ipv6 = match (
        &cfg.ipv6,
        own.subnet6,
        own.public_ipv6,
        own.attrs.vxlan_v6_data(),
    ) {
        (Some(_), Some(own_subnet), Some(local_ip), Some(d6)) => Some(KernelVxlan6Config {
            local_ip,
            mac: d6.vtep_mac,
            own_subnet,
        }),
        (Some(_), ..) => {
            warn!("the network is dual-stack but this host's lease has no complete IPv6 half (IPv6 subnet, PublicIPv6 and BackendV6Data); flannel-v6.{} is not set up and IPv6 is not carried", v.vni);
            None
        }
        (None, ..) => None,
    };
    let kc = KernelVxlanConfig {
        vni: v.vni,
        port: cfg.backend.port(),
        local_ip: underlay.local_ip,
        underlay_iface: underlay.iface.clone(),
        mac: d.vtep_mac,
        mtu: own.mtu,
        own_subnet: own.subnet,
        direct_routing: v.direct_routing,
        ipv6,
    };
    Ok(KernelVxlan::start(kc, shared.routes.clone()).await?)
}

pub(super) async fn start_userspace(
    opts: &RunOptions,
    cfg: &NetworkConfig,
    own: &OwnLease,
    underlay: &Underlay,
    shared: Arc<Shared>,
) -> Result<DataPlane, DaemonError> {
    let vtep = own.attrs.vxlan_data().or(own.attrs.vxlan_v6_data());
    let encap = match (&cfg.backend, vtep) {
        (Backend::Vxlan(v), Some(d)) => Encap::Vxlan {
            vni: v.vni,
            mac: d.vtep_mac,
            mac6: own.attrs.vxlan_v6_data().map(|d| d.vtep_mac),
        },
        (Backend::WireGuard(_), _) => Encap::WireGuard,
        _ => Encap::Udp,
    };
    let dp = DataPlaneConfig {
        encap,
        port: cfg.backend.port(),
        port6: match &cfg.backend {
            Backend::WireGuard(w) => w.listen_port_v6,
            _ => cfg.backend.port(),
        },
        local_ip: underlay.local_ip,
        own_subnet: own.subnet,
        network: cfg.ipv4.map(|c| c.network),
        local_ip6: own.subnet6.map(|_| underlay.local_ip6),
        own_subnet6: own.subnet6,
        network6: own.network6,
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
        // Each family's node only where the network has that family.
        wireguard: shared
            .wireguard
            .get()
            .cloned()
            .filter(|_| cfg.ipv4.is_some()),
        wireguard6: shared.wireguard6.get().cloned(),
    };
    let dp = DataPlane::start(dp, shared.routes.clone()).await?;
    shared
        .workers
        .lock()
        .expect("workers lock")
        .extend(dp.counters().iter().cloned());
    Ok(dp)
}
