//! The tun device (one queue per worker), its address and the route of the whole network to it.

use std::net::Ipv4Addr;

use futures::TryStreamExt;
use rtnetlink::RouteMessageBuilder;
use tracing::info;
use tun_rs::{DeviceBuilder, SyncDevice};

use super::{DataPlaneConfig, DataPlaneError};

/// Creates the tun device with `<subnet>.0/32` and the overlay MTU, and one queue per worker.
pub fn create(cfg: &DataPlaneConfig, queues: usize) -> Result<Vec<SyncDevice>, DataPlaneError> {
    let err = |source| DataPlaneError::Tun {
        name: cfg.tun_name.clone(),
        source,
    };
    let mtu = u16::try_from(cfg.mtu).unwrap_or(u16::MAX);
    let build = |offload: bool| {
        DeviceBuilder::new()
            .name(&cfg.tun_name)
            .ipv4(cfg.own_subnet.network(), 32u8, None)
            .mtu(mtu)
            .multi_queue(queues > 1)
            .offload(offload)
            .build_sync()
    };
    let first = match build(cfg.offload.tun) {
        Ok(d) => d,
        Err(e) if cfg.offload.tun => {
            info!(tun = %cfg.tun_name, "tun offloads (TSO/checksum) refused ({e}); running without them");
            build(false).map_err(err)?
        }
        Err(e) => return Err(err(e)),
    };
    if cfg.offload.tun {
        info!(
            tun = %cfg.tun_name,
            tso = first.tcp_gso(),
            uso = first.udp_gso(),
            "tun offloads"
        );
    }
    first.set_nonblocking(true).map_err(err)?;
    let mut all = Vec::with_capacity(queues);
    for _ in 1..queues {
        let q = first.try_clone().map_err(err)?;
        q.set_nonblocking(true).map_err(err)?;
        all.push(q);
    }
    all.insert(0, first);
    // The overlay is IPv4: keep the kernel from sending IPv6 (router solicitations, MLD) into it.
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", cfg.tun_name),
        "1",
    );
    Ok(all)
}

/// Routes the whole overlay network to the tun device (the host's own subnet stays on the container
/// bridge, whose /len route is more specific).
pub async fn route_network(cfg: &DataPlaneConfig) -> Result<(), DataPlaneError> {
    let err = |reason: String| DataPlaneError::Route {
        network: cfg.network,
        name: cfg.tun_name.clone(),
        reason,
    };
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| err(e.to_string()))?;
    let task = tokio::spawn(conn);
    let result = async {
        let link = handle
            .link()
            .get()
            .match_name(cfg.tun_name.clone())
            .execute()
            .try_next()
            .await
            .map_err(|e| err(e.to_string()))?
            .ok_or_else(|| err("the device vanished".into()))?;
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(cfg.network.network(), cfg.network.prefix_len())
            .output_interface(link.header.index)
            .pref_source(cfg.own_subnet.network())
            .build();
        handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(|e| err(e.to_string()))
    }
    .await;
    task.abort();
    result
}

/// Turns on IPv4 forwarding in this network namespace (dockerd does too); containers' traffic needs it.
pub fn enable_ip_forwarding() -> std::io::Result<()> {
    const PATH: &str = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(PATH)?.trim() != "1" {
        std::fs::write(PATH, "1")?;
        info!("enabled net.ipv4.ip_forward so containers' traffic is forwarded");
    }
    Ok(())
}
