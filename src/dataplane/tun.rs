//! The tun device (one queue per worker), its address and the route of the whole network to it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::{IpNet, Ipv4Net};
use netlink_packet_route::address::{AddressAttribute, AddressFlags};
use netlink_packet_route::link::{LinkAttribute, LinkFlags};
use netlink_packet_route::route::{RouteAddress, RouteAttribute};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
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
        let b = DeviceBuilder::new().name(&cfg.tun_name);
        // An IPv6-only network's tun has only its IPv6 address (given after creation).
        let b = match cfg.own_subnet {
            Some(own) => b.ipv4(own.network(), 32u8, None),
            None => b,
        };
        b.mtu(mtu)
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
    let conf = |key: &str, value: &str| {
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{}/{key}", cfg.tun_name),
            value,
        );
    };
    if cfg.network6.is_some() {
        // Dual stack: IPv6 on, but no router advertisements or autoconfiguration on the overlay.
        conf("accept_ra", "0");
        conf("autoconf", "0");
        conf("disable_ipv6", "0");
    } else {
        // An IPv4 overlay: keep the kernel from sending IPv6 (router solicitations, MLD) into it.
        conf("disable_ipv6", "1");
    }
    Ok(all)
}

/// Routes the whole overlay network to the tun device (the host's own subnet stays on the container
/// bridge, whose /len route is more specific); returns the device's index.
pub async fn route_network(cfg: &DataPlaneConfig) -> Result<u32, DataPlaneError> {
    let err = |network: IpNet| {
        let name = cfg.tun_name.clone();
        move |reason: String| DataPlaneError::Route {
            network,
            name,
            reason,
        }
    };
    // The first family's network names a failure to reach the device at all.
    let first: IpNet = match (cfg.network, cfg.network6) {
        (Some(n), _) => n.into(),
        (None, Some(n6)) => n6.into(),
        (None, None) => {
            return Err(err(IpNet::V4(Ipv4Net::default()))(
                "no network to route".into(),
            ))
        }
    };
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| err(first)(e.to_string()))?;
    let task = tokio::spawn(conn);
    let result = async {
        let link = handle
            .link()
            .get()
            .match_name(cfg.tun_name.clone())
            .execute()
            .try_next()
            .await
            .map_err(|e| err(first)(e.to_string()))?
            .ok_or_else(|| err(first)("the device vanished".into()))?;
        let index = link.header.index;
        if let (Some(net), Some(own)) = (cfg.network, cfg.own_subnet) {
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(net.network(), net.prefix_len())
                .pref_source(own.network());
            replace_route(&handle, route.output_interface(index).build())
                .await
                .map_err(err(net.into()))?;
        }
        if let (Some(net6), Some(own6)) = (cfg.network6, cfg.own_subnet6) {
            add_ipv6(&handle, index, own6.network())
                .await
                .map_err(err(net6.into()))?;
            let route = RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(net6.network(), net6.prefix_len())
                .pref_source(own6.network());
            replace_route(&handle, route.output_interface(index).build())
                .await
                .map_err(err(net6.into()))?;
        }
        Ok(link.header.index)
    }
    .await;
    task.abort();
    result
}

/// Adds `route`, replacing one to the same destination.
async fn replace_route(
    handle: &Handle,
    route: netlink_packet_route::route::RouteMessage,
) -> Result<(), String> {
    let add = handle.route().add(route).replace();
    add.execute().await.map_err(|e| e.to_string())
}

/// Gives the tun device `<IPv6 subnet>::/128` (the IPv6 twin of `<subnet>.0/32`, as flannel-v6.<VNI> has),
/// unless it has it already.
async fn add_ipv6(handle: &Handle, index: u32, ip6: Ipv6Addr) -> Result<bool, String> {
    let mut addrs = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    while let Some(a) = addrs
        .try_next()
        .await
        .map_err(|e| format!("reading the tun device's addresses: {e}"))?
    {
        if a.attributes
            .iter()
            .any(|x| matches!(x, AddressAttribute::Address(IpAddr::V6(v)) if *v == ip6))
        {
            return Ok(false);
        }
    }
    let mut add = handle.address().add(index, IpAddr::V6(ip6), 128);
    // No duplicate address detection: the address is usable (as the routes' preferred source) at once.
    add.message_mut()
        .attributes
        .push(AddressAttribute::Flags(AddressFlags::Nodad));
    add.execute()
        .await
        .map_err(|e| format!("adding {ip6}/128 to the tun device: {e}"))?;
    Ok(true)
}

/// What [`reconcile`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TunState {
    /// The device is gone (deleted, or another device has its index): its queues are dead, and the data
    /// plane must be built again.
    pub gone: bool,
    /// What was wrong and has been put back.
    pub repaired: Vec<&'static str>,
}

/// Puts the tun device (index `index`) back as `create` and `route_network` made it: up, the overlay MTU,
/// `<subnet>.0/32`, and the network's route. Says whether the device itself is gone.
pub async fn reconcile(cfg: &DataPlaneConfig, index: u32) -> Result<TunState, String> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| e.to_string())?;
    let task = tokio::spawn(conn);
    let result = reconcile_on(&handle, cfg, index).await;
    task.abort();
    result
}

async fn reconcile_on(
    handle: &Handle,
    cfg: &DataPlaneConfig,
    index: u32,
) -> Result<TunState, String> {
    let mut state = TunState::default();
    let link = match handle
        .link()
        .get()
        .match_index(index)
        .execute()
        .try_next()
        .await
    {
        Ok(l) => l,
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => None,
        Err(e) => return Err(format!("reading the tun device: {e}")),
    };
    let named_ours = link.as_ref().is_some_and(|l| {
        l.attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::IfName(n) if *n == cfg.tun_name))
    });
    let Some(link) = link.filter(|_| named_ours) else {
        state.gone = true;
        return Ok(state);
    };
    let mtu = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    });
    let up = link.header.flags.contains(LinkFlags::Up);
    if !up || mtu != Some(cfg.mtu) {
        let msg = LinkUnspec::new_with_index(index).mtu(cfg.mtu).up().build();
        handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| format!("setting the tun device up with MTU {}: {e}", cfg.mtu))?;
        if !up {
            state.repaired.push("link state (set up)");
        }
        if mtu != Some(cfg.mtu) {
            state.repaired.push("MTU");
        }
    }
    if let (Some(net), Some(own)) = (cfg.network, cfg.own_subnet) {
        repair_ipv4(handle, index, cfg, net, own.network(), &mut state).await?;
    }
    if let (Some(net6), Some(own6)) = (cfg.network6, cfg.own_subnet6) {
        if add_ipv6(handle, index, own6.network()).await? {
            state.repaired.push("IPv6 address");
        }
        let has_route6 = routed_to(handle, index, net6.into()).await?;
        if !has_route6 {
            route_network(cfg).await.map_err(|e| e.to_string())?;
            state.repaired.push("IPv6 route");
        }
    }
    Ok(state)
}

/// Puts back the tun device's `<subnet>.0/32` and the Network's route, if gone.
async fn repair_ipv4(
    handle: &Handle,
    index: u32,
    cfg: &DataPlaneConfig,
    net: Ipv4Net,
    ip: Ipv4Addr,
    state: &mut TunState,
) -> Result<(), String> {
    let mut addrs = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    let mut has_addr = false;
    while let Some(a) = addrs
        .try_next()
        .await
        .map_err(|e| format!("reading the tun device's addresses: {e}"))?
    {
        has_addr |= a.header.prefix_len == 32
            && a.attributes
                .iter()
                .any(|x| matches!(x, AddressAttribute::Address(IpAddr::V4(v)) if *v == ip));
    }
    if !has_addr {
        handle
            .address()
            .add(index, IpAddr::V4(ip), 32)
            .execute()
            .await
            .map_err(|e| format!("adding {ip}/32 to the tun device: {e}"))?;
        state.repaired.push("address");
    }
    let has_route = routed_to(handle, index, net.into()).await?;
    if !has_route {
        route_network(cfg).await.map_err(|e| e.to_string())?;
        state.repaired.push("route");
    }
    Ok(())
}

/// Whether the main table routes `net` (either family) to device `index`.
async fn routed_to(handle: &Handle, index: u32, net: IpNet) -> Result<bool, String> {
    let query = match net {
        IpNet::V4(_) => RouteMessageBuilder::<Ipv4Addr>::new().build(),
        IpNet::V6(_) => RouteMessageBuilder::<Ipv6Addr>::new().build(),
    };
    let mut routes = handle.route().get(query).execute();
    // The whole dump is read (dropping it half-read makes the netlink connection warn about every
    // message left).
    let mut found = false;
    while let Some(r) = routes
        .try_next()
        .await
        .map_err(|e| format!("reading routes: {e}"))?
    {
        let oif = r
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Oif(i) if *i == index));
        let dst = r.attributes.iter().any(|a| match (a, net) {
            (RouteAttribute::Destination(RouteAddress::Inet(d)), IpNet::V4(n)) => *d == n.network(),
            (RouteAttribute::Destination(RouteAddress::Inet6(d)), IpNet::V6(n)) => {
                *d == n.network()
            }
            _ => false,
        });
        found |= oif && dst && r.header.destination_prefix_length == net.prefix_len();
    }
    Ok(found)
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

/// Turns on IPv6 forwarding in this network namespace (a dual-stack network's containers need it, as dockerd
/// --ipv6 does). This also makes the kernel ignore router advertisements on interfaces with the default
/// accept_ra=1, as on any router.
pub fn enable_ipv6_forwarding() -> std::io::Result<()> {
    const PATH: &str = "/proc/sys/net/ipv6/conf/all/forwarding";
    if std::fs::read_to_string(PATH)?.trim() != "1" {
        std::fs::write(PATH, "1")?;
        info!("enabled net.ipv6.conf.all.forwarding so containers' IPv6 traffic is forwarded");
    }
    Ok(())
}
