//! Direct routes over netlink (flannel's host-gw backend, and vxlan's DirectRouting): a reconciler that
//! keeps `<peer subnet> via <peer public IP> dev <underlay>` for the peers on this host's layer-2 segment,
//! whenever the route table changes and every few seconds, and removes the ones no lease wants any more;
//! on a dual-stack vxlan network with DirectRouting a twin keeps `<peer IPv6 subnet> via <peer PublicIPv6>`.

use std::collections::{BTreeSet, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use futures::TryStreamExt;
use ipnet::{Ipv4Net, Ipv6Net};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol,
};
use rtnetlink::{Handle, RouteMessageBuilder};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::kernel::direct_state::{plan, plan6, route_diff, DirectMode, Reach};
use crate::kernel::vxlan::ReconcileError;
use crate::routes::RouteTable;

/// The routing protocol number weft's direct routes carry, so the reconciler knows its own (and never
/// touches the operator's): "W".
pub const PROTO: RouteProtocol = RouteProtocol::Other(0x57);

/// How the kernel reaches `dst` (`ip route get`): on-link when its route has no gateway and leaves through
/// `underlay_index`.
pub fn reach(dst: Ipv4Addr, underlay_index: u32) -> Reach {
    let to = crate::host::netlink::Rtnl::open().and_then(|mut nl| nl.route_to(dst));
    match to {
        Ok(Some(t)) if t.oif == Some(underlay_index) && t.gateway.is_none() => Reach::OnLink,
        Ok(Some(t)) => Reach::Via(t.gateway),
        _ => Reach::Unreachable,
    }
}

/// Whether the kernel reaches IPv6 address `dst` on-link through `underlay_index` (no gateway), as
/// flannel's `DirectRouting` check.
pub fn reach6(dst: Ipv6Addr, underlay_index: u32) -> bool {
    let to = crate::host::netlink::Rtnl::open().and_then(|mut nl| nl.route6_to(dst));
    matches!(to, Ok(Some((Some(oif), None))) if oif == underlay_index)
}

/// The running reconcilers (IPv4, and IPv6 with `start_v6`); dropping it stops them (the routes stay, so
/// forwarding survives a restart of weft, as with flanneld).
pub struct DirectRoutes {
    task: JoinHandle<()>,
    task6: Option<JoinHandle<()>>,
}

impl Drop for DirectRoutes {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(t) = &self.task6 {
            t.abort();
        }
    }
}

struct Reconciler {
    handle: Handle,
    mode: DirectMode,
    underlay_index: u32,
    /// Host-gw peers reported as not on our segment (each said once, until it is routable again).
    reported: HashSet<(Ipv4Net, Ipv4Addr)>,
}

impl super::Reconcile for Reconciler {
    fn what(&self) -> String {
        "the direct routes".into()
    }
    async fn reconcile(&mut self, routes: &RouteTable) -> Result<(), ReconcileError> {
        Reconciler::reconcile(self, routes).await
    }
}

impl DirectRoutes {
    /// Applies the current peers' direct routes and keeps reconciling them.
    pub async fn start(
        mode: DirectMode,
        underlay_index: u32,
        routes: Arc<RouteTable>,
    ) -> Result<DirectRoutes, ReconcileError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(ReconcileError::Socket)?;
        let conn_task = tokio::spawn(conn);
        let mut r = Reconciler {
            handle,
            mode,
            underlay_index,
            reported: HashSet::new(),
        };
        r.reconcile(&routes).await?;
        info!(mode = ?mode, "direct routes up");
        let task = super::keep_reconciling(r, routes, conn_task);
        Ok(DirectRoutes { task, task6: None })
    }

    /// Adds the IPv6 halves of dual-stack (or IPv6-only) peers in `mode` (host-gw, or vxlan DirectRouting):
    /// applies their direct routes now and keeps reconciling them.
    pub async fn start_v6(
        &mut self,
        mode: DirectMode,
        underlay_index: u32,
        routes: Arc<RouteTable>,
    ) -> Result<(), ReconcileError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(ReconcileError::Socket)?;
        let conn_task = tokio::spawn(conn);
        let mut r = Reconciler6 {
            handle,
            mode,
            underlay_index,
        };
        r.reconcile(&routes).await?;
        info!(?mode, "IPv6 direct routes up");
        self.task6 = Some(super::keep_reconciling(r, routes, conn_task));
        Ok(())
    }
}

impl Reconciler {
    async fn reconcile(&mut self, routes: &RouteTable) -> Result<(), ReconcileError> {
        let peers = routes.load();
        let index = self.underlay_index;
        let peers_v = peers.peers().to_vec();
        let mode = self.mode;
        let p = tokio::task::spawn_blocking(move || plan(&peers_v, mode, |ip| reach(ip, index)))
            .await
            .map_err(|e| ReconcileError::Socket(std::io::Error::other(e)))?;
        self.report(&p.unroutable);
        apply(&self.handle, index, &p.routes).await
    }

    /// Says once per peer that a host-gw peer is not on this host's segment, and when it is again.
    fn report(&mut self, unroutable: &[(Ipv4Net, Ipv4Addr, Reach)]) {
        let now: HashSet<(Ipv4Net, Ipv4Addr)> =
            unroutable.iter().map(|(n, ip, _)| (*n, *ip)).collect();
        for (net, ip, how) in unroutable {
            if self.reported.insert((*net, *ip)) {
                let why = match how {
                    Reach::Via(Some(gw)) => {
                        format!("this host reaches {ip} through the gateway {gw}")
                    }
                    Reach::Via(None) => format!("this host reaches {ip} through another interface"),
                    _ => format!("this host has no route to {ip}"),
                };
                warn!("host-gw peer {net} at {ip} is not on this host's layer-2 segment ({why}), so its subnet cannot be routed to it directly and is not routed; host-gw needs all hosts on one segment — use the vxlan backend (with DirectRouting) otherwise");
            }
        }
        self.reported.retain(|k| {
            let still = now.contains(k);
            if !still {
                info!("host-gw peer {} at {} is routed now", k.0, k.1);
            }
            still
        });
    }
}

/// The IPv6 twin of [`Reconciler`]. Peers whose IPv6 address is off our segment keep no IPv6 route (the
/// IPv4 reconciler reports a host-gw peer off the segment).
struct Reconciler6 {
    handle: Handle,
    mode: DirectMode,
    underlay_index: u32,
}

impl super::Reconcile for Reconciler6 {
    fn what(&self) -> String {
        "the IPv6 direct routes".into()
    }
    async fn reconcile(&mut self, routes: &RouteTable) -> Result<(), ReconcileError> {
        Reconciler6::reconcile(self, routes).await
    }
}

impl Reconciler6 {
    async fn reconcile(&mut self, routes: &RouteTable) -> Result<(), ReconcileError> {
        let peers = routes.load().peers().to_vec();
        let (mode, index) = (self.mode, self.underlay_index);
        let want = tokio::task::spawn_blocking(move || plan6(&peers, mode, |ip| reach6(ip, index)))
            .await
            .map_err(|e| ReconcileError::Socket(std::io::Error::other(e)))?;
        apply(&self.handle, index, &want).await
    }
}

/// The address family of weft's direct routes, as netlink writes and reads them.
trait DirectFamily: Copy + Ord + std::fmt::Display + Send + 'static {
    type Net: Copy + Ord + std::fmt::Display;
    /// A dump request for the family's routes.
    fn query() -> RouteMessage;
    /// A route of weft's (protocol, main table) as (destination, gateway).
    fn parse(r: &RouteMessage) -> Option<(Self::Net, Self)>;
    /// `net` via `gw` on device `index`, marked as weft's.
    fn build(net: Self::Net, gw: Self, index: u32) -> RouteMessage;
}

impl DirectFamily for Ipv4Addr {
    type Net = Ipv4Net;
    fn query() -> RouteMessage {
        RouteMessageBuilder::<Ipv4Addr>::new().build()
    }
    fn parse(r: &RouteMessage) -> Option<(Ipv4Net, Ipv4Addr)> {
        let (mut gw, mut dst) = (None, None);
        for a in &r.attributes {
            match a {
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(*g),
                RouteAttribute::Destination(RouteAddress::Inet(x)) => dst = Some(*x),
                _ => {}
            }
        }
        Some((
            Ipv4Net::new(dst?, r.header.destination_prefix_length).ok()?,
            gw?,
        ))
    }
    fn build(net: Ipv4Net, gw: Ipv4Addr, index: u32) -> RouteMessage {
        RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(net.network(), net.prefix_len())
            .gateway(gw)
            .output_interface(index)
            .protocol(PROTO)
            .build()
    }
}

impl DirectFamily for Ipv6Addr {
    type Net = Ipv6Net;
    fn query() -> RouteMessage {
        RouteMessageBuilder::<Ipv6Addr>::new().build()
    }
    fn parse(r: &RouteMessage) -> Option<(Ipv6Net, Ipv6Addr)> {
        let (mut gw, mut dst) = (None, None);
        for a in &r.attributes {
            match a {
                RouteAttribute::Gateway(RouteAddress::Inet6(g)) => gw = Some(*g),
                RouteAttribute::Destination(RouteAddress::Inet6(x)) => dst = Some(*x),
                _ => {}
            }
        }
        Some((
            Ipv6Net::new(dst?, r.header.destination_prefix_length).ok()?,
            gw?,
        ))
    }
    fn build(net: Ipv6Net, gw: Ipv6Addr, index: u32) -> RouteMessage {
        RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(net.network(), net.prefix_len())
            .gateway(gw)
            .output_interface(index)
            .protocol(PROTO)
            .build()
    }
}

/// Makes weft's direct routes of one family in the main table exactly `want`: reads them, deletes the ones
/// not wanted, adds (replacing) the missing ones.
async fn apply<F: DirectFamily>(
    handle: &Handle,
    index: u32,
    want: &BTreeSet<(F::Net, F)>,
) -> Result<(), ReconcileError> {
    let mut have = BTreeSet::new();
    let mut msgs = Vec::new();
    let mut dump = handle.route().get(F::query()).execute();
    while let Some(r) = dump
        .try_next()
        .await
        .map_err(super::vxlan::nl("reading routes"))?
    {
        if r.header.protocol != PROTO || r.header.table != RouteHeader::RT_TABLE_MAIN {
            continue;
        }
        if let Some(route) = F::parse(&r) {
            have.insert(route);
            msgs.push((route, r));
        }
    }
    let (add, del) = route_diff(want, &have);
    for (net, gw) in del {
        if let Some((_, m)) = msgs.iter().find(|(k, _)| *k == (net, gw)) {
            handle
                .route()
                .del(m.clone())
                .execute()
                .await
                .map_err(super::vxlan::nl(format!(
                    "deleting the route {net} via {gw}"
                )))?;
        }
    }
    for (net, gw) in add {
        handle
            .route()
            .add(F::build(net, gw, index))
            .replace()
            .execute()
            .await
            .map_err(super::vxlan::nl(format!("adding the route {net} via {gw}")))?;
    }
    Ok(())
}
