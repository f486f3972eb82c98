//! Direct routes over netlink (flannel's host-gw backend, and vxlan's DirectRouting): a reconciler that
//! keeps `<peer subnet> via <peer public IP> dev <underlay>` for the peers on this host's layer-2 segment,
//! whenever the route table changes and every few seconds, and removes the ones no lease wants any more.

use std::collections::{BTreeSet, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, RouteMessageBuilder};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::kernel::direct_state::{plan, route_diff, DirectMode, Reach, Route};
use crate::kernel::vxlan::ReconcileError;
use crate::routes::RouteTable;

/// How often the kernel's routes are compared with the plan when nothing else triggers it.
const RESYNC: Duration = Duration::from_secs(2);
/// The routing protocol number weft's direct routes carry, so the reconciler knows its own (and never
/// touches the operator's): "W".
pub const PROTO: RouteProtocol = RouteProtocol::Other(0x57);

/// How the kernel reaches `dst` (`ip route get`): on-link when its route has no gateway and leaves through
/// `underlay_index`.
pub fn reach(dst: Ipv4Addr, underlay_index: u32) -> Reach {
    use netlink_packet_core::NLM_F_REQUEST;
    use netlink_packet_route::RouteNetlinkMessage;
    let Ok(mut nl) = crate::host::netlink::Rtnl::open() else {
        return Reach::Unreachable;
    };
    let mut msg = RouteMessage::default();
    msg.header.address_family = AddressFamily::Inet;
    msg.header.destination_prefix_length = 32;
    msg.attributes
        .push(RouteAttribute::Destination(RouteAddress::Inet(dst)));
    let Ok(replies) = nl.request(RouteNetlinkMessage::GetRoute(msg), NLM_F_REQUEST) else {
        return Reach::Unreachable;
    };
    for r in replies {
        let RouteNetlinkMessage::NewRoute(r) = r else {
            continue;
        };
        let mut oif = None;
        let mut gw = None;
        for a in &r.attributes {
            match a {
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(*g),
                _ => {}
            }
        }
        return match (oif, gw) {
            (Some(i), None) if i == underlay_index => Reach::OnLink,
            _ => Reach::Via(gw),
        };
    }
    Reach::Unreachable
}

/// The running reconciler; dropping it stops it (the routes stay, so forwarding survives a restart of
/// weft, as with flanneld).
pub struct DirectRoutes {
    task: JoinHandle<()>,
}

impl Drop for DirectRoutes {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Reconciler {
    handle: Handle,
    mode: DirectMode,
    underlay_index: u32,
    /// Host-gw peers reported as not on our segment (each said once, until it is routable again).
    reported: HashSet<(Ipv4Net, Ipv4Addr)>,
    last_error: Option<String>,
}

impl DirectRoutes {
    /// Applies the current peers' direct routes and keeps reconciling them.
    pub async fn start(
        mode: DirectMode,
        underlay_index: u32,
        routes: Arc<RouteTable>,
    ) -> Result<DirectRoutes, ReconcileError> {
        let mut changed = routes.subscribe();
        let (conn, handle, _) = rtnetlink::new_connection().map_err(ReconcileError::Socket)?;
        let conn_task = tokio::spawn(conn);
        let mut r = Reconciler {
            handle,
            mode,
            underlay_index,
            reported: HashSet::new(),
            last_error: None,
        };
        r.reconcile(&routes).await?;
        info!(mode = ?mode, "direct routes up");
        let task = tokio::spawn(async move {
            let _conn = AbortTask(conn_task);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(RESYNC) => {},
                    _ = changed.changed() => {},
                }
                match r.reconcile(&routes).await {
                    Ok(()) => {
                        if r.last_error.take().is_some() {
                            info!("direct routes repaired");
                        }
                    }
                    Err(e) => {
                        let e = e.to_string();
                        if r.last_error.as_deref() != Some(e.as_str()) {
                            warn!("cannot program the direct routes: {e}; retrying");
                            r.last_error = Some(e);
                        }
                    }
                }
            }
        });
        Ok(DirectRoutes { task })
    }
}

struct AbortTask(JoinHandle<()>);

impl Drop for AbortTask {
    fn drop(&mut self) {
        self.0.abort();
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
        let (have, msgs) = self.read().await?;
        let (add, del) = route_diff(&p.routes, &have);
        for (net, gw) in del {
            if let Some((_, m)) = msgs.iter().find(|(k, _)| *k == (net, gw)) {
                self.handle
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
            let msg = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(net.network(), net.prefix_len())
                .gateway(gw)
                .output_interface(index)
                .protocol(PROTO)
                .build();
            self.handle
                .route()
                .add(msg)
                .replace()
                .execute()
                .await
                .map_err(super::vxlan::nl(format!("adding the route {net} via {gw}")))?;
        }
        Ok(())
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

    /// weft's direct routes in the main table.
    async fn read(&self) -> Result<(BTreeSet<Route>, Vec<(Route, RouteMessage)>), ReconcileError> {
        let mut have = BTreeSet::new();
        let mut msgs = Vec::new();
        let mut dump = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Some(r) = dump
            .try_next()
            .await
            .map_err(super::vxlan::nl("reading routes"))?
        {
            if r.header.protocol != PROTO || r.header.table != RouteHeader::RT_TABLE_MAIN {
                continue;
            }
            let mut gw = None;
            let mut dst = None;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(*g),
                    RouteAttribute::Destination(RouteAddress::Inet(x)) => dst = Some(*x),
                    _ => {}
                }
            }
            if let (Some(g), Some(x)) = (gw, dst) {
                if let Ok(net) = Ipv4Net::new(x, r.header.destination_prefix_length) {
                    have.insert((net, g));
                    msgs.push(((net, g), r));
                }
            }
        }
        Ok((have, msgs))
    }
}
