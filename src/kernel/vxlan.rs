//! The kernel VXLAN backend: programs `flannel.<VNI>` over netlink as flanneld's vxlan backend does, and
//! keeps it so — a reconciler that re-applies the desired state whenever the route table or the kernel drifts.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, LinkVxlan, RouteMessageBuilder};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::kernel::state::{
    desired, device_action, diff, Change, DeviceAction, DeviceSeen, DeviceSpec, VxlanEntries,
};
use crate::routes::RouteTable;
use crate::wire::ethernet::MacAddr;

/// What the kernel backend needs, fixed for its lifetime.
#[derive(Debug, Clone)]
pub struct KernelVxlanConfig {
    pub vni: u32,
    pub port: u16,
    pub local_ip: Ipv4Addr,
    pub underlay_iface: String,
    pub mac: MacAddr,
    pub mtu: u32,
    pub own_subnet: Ipv4Net,
    /// DirectRouting: peers on our layer-2 segment are left to the direct routes (`kernel::direct`).
    pub direct_routing: bool,
}

impl KernelVxlanConfig {
    /// flannel's device name: `flannel.<VNI>`.
    pub fn device_name(&self) -> String {
        format!("flannel.{}", self.vni)
    }
}

/// Why the kernel backend could not start.
#[derive(Debug, thiserror::Error)]
pub enum KernelVxlanError {
    #[error("cannot program the kernel VXLAN device {name}: {source}; does the kernel have VXLAN (modprobe vxlan) and does weft run as root?")]
    Netlink {
        name: String,
        #[source]
        source: ReconcileError,
    },
    #[error("underlay interface {0} not found")]
    NoUnderlay(String),
}

/// One reconciling step that failed: the netlink request, and the kernel's answer.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("{op}: {source}")]
    Netlink {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("the device vanished right after it was created")]
    Vanished,
}

/// Names the netlink request that failed.
pub(crate) fn nl(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> ReconcileError {
    let op = op.into();
    move |source| ReconcileError::Netlink { op, source }
}

/// The running reconciler; dropping it stops reconciling (the device stays, so forwarding survives a
/// restart of weft, as with flanneld).
pub struct KernelVxlan {
    task: JoinHandle<()>,
}

impl Drop for KernelVxlan {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Reconciler {
    handle: Handle,
    cfg: KernelVxlanConfig,
    spec: DeviceSpec,
    name: String,
}

impl super::Reconcile for Reconciler {
    fn what(&self) -> String {
        format!("the kernel VXLAN device {}", self.name)
    }
    async fn reconcile(&mut self, routes: &RouteTable) -> Result<(), ReconcileError> {
        Reconciler::reconcile(self, routes).await
    }
}

impl KernelVxlan {
    /// Creates (or reuses) the device, applies the current peers, and keeps reconciling.
    pub async fn start(
        cfg: KernelVxlanConfig,
        routes: Arc<RouteTable>,
    ) -> Result<KernelVxlan, KernelVxlanError> {
        let name = cfg.device_name();
        let err = |source: ReconcileError| KernelVxlanError::Netlink {
            name: name.clone(),
            source,
        };
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| err(ReconcileError::Socket(e)))?;
        let conn_task = tokio::spawn(conn);
        let underlay_index = link_index(&handle, &cfg.underlay_iface)
            .await
            .map_err(err)?
            .ok_or_else(|| KernelVxlanError::NoUnderlay(cfg.underlay_iface.clone()))?;
        let spec = DeviceSpec {
            vni: cfg.vni,
            local: cfg.local_ip,
            port: cfg.port,
            underlay_index,
            mac: cfg.mac,
            mtu: cfg.mtu,
        };
        let mut r = Reconciler {
            handle,
            cfg,
            spec,
            name: name.clone(),
        };
        r.reconcile(&routes).await.map_err(err)?;
        info!(device = %name, vni = r.cfg.vni, port = r.cfg.port, mtu = r.cfg.mtu, "kernel VXLAN backend up");
        let task = super::keep_reconciling(r, routes, conn_task);
        Ok(KernelVxlan { task })
    }
}

async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>, ReconcileError> {
    Ok(get_link(handle, name).await?.map(|l| l.header.index))
}

async fn get_link(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, ReconcileError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(l) => Ok(l),
        // ENODEV: no such device.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(nl(format!("reading link {name}"))(e)),
    }
}

fn seen(link: &LinkMessage) -> DeviceSeen {
    let mut s = DeviceSeen::default();
    for a in &link.attributes {
        match a {
            LinkAttribute::Address(m) if m.len() == 6 => {
                s.mac = Some(MacAddr([m[0], m[1], m[2], m[3], m[4], m[5]]));
            }
            LinkAttribute::Mtu(m) => s.mtu = Some(*m),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(InfoKind::Vxlan) => s.is_vxlan = true,
                        LinkInfo::Data(InfoData::Vxlan(v)) => {
                            for x in v {
                                match x {
                                    InfoVxlan::Id(id) => s.vni = Some(*id),
                                    InfoVxlan::Local(ip) => s.local = Some(*ip),
                                    InfoVxlan::Port(p) => s.port = Some(*p),
                                    InfoVxlan::Learning(l) => s.learning = Some(*l),
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    s
}

impl Reconciler {
    async fn reconcile(&mut self, routes: &RouteTable) -> Result<(), ReconcileError> {
        let index = self.ensure_device().await?;
        self.ensure_address(index).await?;
        let mut peers = routes.load().peers().to_vec();
        if self.cfg.direct_routing {
            let (vni, index, all) = (self.cfg.vni, self.spec.underlay_index, peers.clone());
            let direct = tokio::task::spawn_blocking(move || {
                let plan = crate::kernel::direct_state::plan(
                    &all,
                    crate::kernel::direct_state::DirectMode::VxlanDirect { vni },
                    |ip| crate::kernel::direct::reach(ip, index),
                );
                crate::kernel::direct_state::direct_subnets(&plan)
            })
            .await
            .map_err(|e| ReconcileError::Socket(std::io::Error::other(e)))?;
            peers.retain(|p| !direct.contains(&p.subnet));
        }
        let want = desired(&peers, self.cfg.vni);
        let (actual, msgs) = self.read_entries(index).await?;
        for change in diff(&want, &actual) {
            self.apply(index, change, &msgs).await?;
        }
        Ok(())
    }

    /// Makes sure the device exists with our settings; returns its index.
    async fn ensure_device(&self) -> Result<u32, ReconcileError> {
        let existing = get_link(&self.handle, &self.name).await?;
        let action = device_action(existing.as_ref().map(seen).as_ref(), &self.spec);
        match (action, existing) {
            (DeviceAction::Keep, Some(l)) => return Ok(l.header.index),
            (DeviceAction::Adjust, Some(l)) => {
                let msg = LinkUnspec::new_with_index(l.header.index)
                    .address(self.spec.mac.0.to_vec())
                    .mtu(self.spec.mtu)
                    .up()
                    .build();
                self.handle
                    .link()
                    .set(msg)
                    .execute()
                    .await
                    .map_err(nl("adjusting the device"))?;
                return Ok(l.header.index);
            }
            (DeviceAction::Recreate, Some(l)) => {
                warn!(device = %self.name, "existing device has other VXLAN settings; re-creating it");
                self.handle
                    .link()
                    .del(l.header.index)
                    .execute()
                    .await
                    .map_err(nl("deleting the mismatched device"))?;
            }
            _ => {}
        }
        let msg = LinkVxlan::new(&self.name, self.spec.vni)
            .dev(self.spec.underlay_index)
            .local(self.spec.local)
            .port(self.spec.port)
            .learning(false)
            .mtu(self.spec.mtu)
            .address(self.spec.mac.0.to_vec())
            .up()
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(nl("creating the device"))?;
        info!(device = %self.name, "created kernel VXLAN device");
        link_index(&self.handle, &self.name)
            .await?
            .ok_or(ReconcileError::Vanished)
    }

    /// `<subnet>.0/32` on the device, as flannel sets it.
    async fn ensure_address(&self, index: u32) -> Result<(), ReconcileError> {
        let ip = self.cfg.own_subnet.network();
        let mut addrs = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(a) = addrs
            .try_next()
            .await
            .map_err(nl("reading the device's addresses"))?
        {
            let has = a
                .attributes
                .iter()
                .any(|x| matches!(x, AddressAttribute::Address(IpAddr::V4(v)) if *v == ip));
            if has && a.header.prefix_len == 32 {
                return Ok(());
            }
        }
        self.handle
            .address()
            .add(index, IpAddr::V4(ip), 32)
            .execute()
            .await
            .map_err(nl(format!("adding address {ip}/32")))
    }

    /// The device's permanent neighbours, FDB entries and gateway routes, with the messages to delete them.
    async fn read_entries(&self, index: u32) -> Result<(VxlanEntries, Dumped), ReconcileError> {
        let mut e = VxlanEntries::default();
        let mut d = Dumped::default();
        for family in [AddressFamily::Inet, AddressFamily::Bridge] {
            let mut neigh = self
                .handle
                .neighbours()
                .get()
                .set_address_family(family)
                .execute();
            while let Some(n) = neigh.try_next().await.map_err(nl("reading neighbours"))? {
                if n.header.ifindex != index || n.header.state != NeighbourState::Permanent {
                    continue;
                }
                let mut dst = None;
                let mut mac = None;
                for a in &n.attributes {
                    match a {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => {
                            dst = Some(ip.to_owned())
                        }
                        // FDB (AF_BRIDGE) entries carry their IPv4 destination as raw bytes.
                        NeighbourAttribute::Destination(NeighbourAddress::Other(b))
                            if b.len() == 4 =>
                        {
                            dst = Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
                        }
                        NeighbourAttribute::LinkLayerAddress(m) if m.len() == 6 => {
                            mac = Some(MacAddr([m[0], m[1], m[2], m[3], m[4], m[5]]))
                        }
                        _ => {}
                    }
                }
                if let (Some(ip), Some(m)) = (dst, mac) {
                    if family == AddressFamily::Inet {
                        e.neighbours.insert((ip, m));
                        d.neighbours.push(((ip, m), n));
                    } else {
                        e.fdb.insert((m, ip));
                        d.fdb.push(((m, ip), n));
                    }
                }
            }
        }
        let mut routes = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Some(r) = routes.try_next().await.map_err(nl("reading routes"))? {
            let mut oif = None;
            let mut gw = None;
            let mut dst = None;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(*g),
                    RouteAttribute::Destination(RouteAddress::Inet(x)) => dst = Some(*x),
                    _ => {}
                }
            }
            if oif != Some(index) {
                continue;
            }
            if let (Some(g), Some(x)) = (gw, dst) {
                if let Ok(net) = Ipv4Net::new(x, r.header.destination_prefix_length) {
                    e.routes.insert((net, g));
                    d.routes.push(((net, g), r));
                }
            }
        }
        Ok((e, d))
    }

    async fn apply(
        &self,
        index: u32,
        change: Change,
        dumped: &Dumped,
    ) -> Result<(), ReconcileError> {
        let h = &self.handle;
        let r = match change {
            Change::AddNeighbour(ip, mac) => {
                h.neighbours()
                    .add(index, IpAddr::V4(ip))
                    .link_layer_address(&mac.0)
                    .state(NeighbourState::Permanent)
                    .replace()
                    .execute()
                    .await
            }
            Change::AddFdb(mac, dst) => {
                h.neighbours()
                    .add_bridge(index, &mac.0)
                    .destination(IpAddr::V4(dst))
                    .flags(NeighbourFlags::Own)
                    .state(NeighbourState::Permanent)
                    .replace()
                    .execute()
                    .await
            }
            Change::AddRoute(net, gw) => {
                let msg = RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(net.network(), net.prefix_len())
                    .gateway(gw)
                    .output_interface(index)
                    .onlink()
                    .build();
                h.route().add(msg).replace().execute().await
            }
            Change::DelRoute(net, gw) => {
                match dumped.routes.iter().find(|(k, _)| *k == (net, gw)) {
                    Some((_, m)) => h.route().del(m.clone()).execute().await,
                    None => Ok(()),
                }
            }
            Change::DelFdb(mac, ip) => match dumped.fdb.iter().find(|(k, _)| *k == (mac, ip)) {
                Some((_, m)) => h.neighbours().del(m.clone()).execute().await,
                None => Ok(()),
            },
            Change::DelNeighbour(ip, mac) => {
                match dumped.neighbours.iter().find(|(k, _)| *k == (ip, mac)) {
                    Some((_, m)) => h.neighbours().del(m.clone()).execute().await,
                    None => Ok(()),
                }
            }
        };
        r.map_err(nl(format!("{change:?}")))
    }
}

/// Kernel messages of the entries read, to delete them exactly as the kernel knows them.
#[derive(Default)]
struct Dumped {
    neighbours: Vec<((Ipv4Addr, MacAddr), NeighbourMessage)>,
    fdb: Vec<((MacAddr, Ipv4Addr), NeighbourMessage)>,
    routes: Vec<((Ipv4Net, Ipv4Addr), RouteMessage)>,
}
