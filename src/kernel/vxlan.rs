//! The kernel VXLAN backend: programs `flannel.<VNI>` (and `flannel-v6.<VNI>` on a dual-stack network) over
//! netlink as flanneld's vxlan backend does, and keeps them so — one reconciler per device that re-applies
//! the desired state whenever the route table or the kernel drifts.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use futures::TryStreamExt;
use ipnet::{Ipv4Net, Ipv6Net};
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
    device_action, diff, Change, DeviceAction, DeviceSeen, DeviceSpec, Entries, Family,
};
use crate::kernel::{direct, direct_state};
use crate::routes::{Peer, RouteTable};
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
    /// Our IPv4 subnet; None on an IPv6-only network, which has no `flannel.<VNI>`.
    pub own_subnet: Option<Ipv4Net>,
    /// DirectRouting: peers on our layer-2 segment are left to the direct routes (`kernel::direct`).
    pub direct_routing: bool,
    /// A dual-stack network: the IPv6 device too.
    pub ipv6: Option<KernelVxlan6Config>,
}

/// The IPv6 half of the kernel backend on a dual-stack network: `flannel-v6.<VNI>` with the same VNI, port,
/// underlay interface and MTU as `flannel.<VNI>`.
#[derive(Debug, Clone, Copy)]
pub struct KernelVxlan6Config {
    /// This host's IPv6 underlay address (`PublicIPv6`): the device's `local`.
    pub local_ip: Ipv6Addr,
    /// The IPv6 VTEP's MAC, as published in our lease's `BackendV6Data`.
    pub mac: MacAddr,
    pub own_subnet: Ipv6Net,
}

impl KernelVxlanConfig {
    /// flannel's device name: `flannel.<VNI>`.
    pub fn device_name(&self) -> String {
        format!("flannel.{}", self.vni)
    }

    /// flannel's IPv6 device name: `flannel-v6.<VNI>`.
    pub fn device_name6(&self) -> String {
        format!("flannel-v6.{}", self.vni)
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

/// The running reconcilers (one per device); dropping it stops reconciling (the devices stay, so
/// forwarding survives a restart of weft, as with flanneld).
pub struct KernelVxlan {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for KernelVxlan {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Keeps one VXLAN device of family `A` as the route table wants it.
struct Reconciler<A: NetlinkFamily> {
    handle: Handle,
    spec: DeviceSpec,
    name: String,
    /// Our subnet's network address, set on the device as `/32` or `/128`.
    own: A,
    /// DirectRouting: peers whose subnet of this family has a direct route are left out.
    direct_routing: bool,
}

impl<A: NetlinkFamily> super::Reconcile for Reconciler<A> {
    fn what(&self) -> String {
        format!("the kernel VXLAN device {}", self.name)
    }
    async fn reconcile(&mut self, routes: &RouteTable) -> Result<(), ReconcileError> {
        Reconciler::reconcile(self, routes).await
    }
}

impl KernelVxlan {
    /// Creates (or reuses) the device (and on a dual-stack network the IPv6 device), applies the current
    /// peers, and keeps reconciling.
    pub async fn start(
        cfg: KernelVxlanConfig,
        routes: Arc<RouteTable>,
    ) -> Result<KernelVxlan, KernelVxlanError> {
        let mut k = KernelVxlan { tasks: Vec::new() };
        if let Some(own) = cfg.own_subnet {
            let v4 = Device {
                name: cfg.device_name(),
                local: cfg.local_ip.into(),
                mac: cfg.mac,
                own: own.network(),
                direct_routing: cfg.direct_routing,
            };
            k.tasks.push(start_device(v4, &cfg, &routes).await?);
        }
        if let Some(c6) = cfg.ipv6 {
            let v6 = Device {
                name: cfg.device_name6(),
                local: c6.local_ip.into(),
                mac: c6.mac,
                own: c6.own_subnet.network(),
                direct_routing: cfg.direct_routing,
            };
            k.tasks.push(start_device(v6, &cfg, &routes).await?);
        }
        Ok(k)
    }
}

/// What differs between the two devices.
struct Device<A> {
    name: String,
    /// The underlay address the device sends from.
    local: IpAddr,
    mac: MacAddr,
    /// Our subnet's network address.
    own: A,
    direct_routing: bool,
}

/// Starts the reconciler of one device: brings it up now, then keeps it so.
async fn start_device<A: NetlinkFamily>(
    dev: Device<A>,
    cfg: &KernelVxlanConfig,
    routes: &Arc<RouteTable>,
) -> Result<JoinHandle<()>, KernelVxlanError> {
    let name = dev.name;
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
        local: dev.local,
        port: cfg.port,
        underlay_index,
        mac: dev.mac,
        mtu: cfg.mtu,
    };
    let mut r = Reconciler {
        handle,
        spec,
        name: name.clone(),
        own: dev.own,
        direct_routing: dev.direct_routing,
    };
    r.reconcile(routes).await.map_err(err)?;
    info!(device = %name, vni = spec.vni, port = spec.port, mtu = spec.mtu, local = %spec.local, "kernel VXLAN backend up");
    Ok(super::keep_reconciling(r, routes.clone(), conn_task))
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
                                    InfoVxlan::Local(ip) => s.local = Some((*ip).into()),
                                    InfoVxlan::Local6(ip) => s.local = Some((*ip).into()),
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

impl<A: NetlinkFamily> Reconciler<A> {
    async fn reconcile(&mut self, routes: &RouteTable) -> Result<(), ReconcileError> {
        let index = self.ensure_device().await?;
        self.ensure_address(index).await?;
        let mut peers = routes.load().peers().to_vec();
        if self.direct_routing {
            let (vni, index, all) = (self.spec.vni, self.spec.underlay_index, peers.clone());
            let direct = tokio::task::spawn_blocking(move || A::direct_subnets(&all, vni, index))
                .await
                .map_err(|e| ReconcileError::Socket(std::io::Error::other(e)))?;
            peers.retain(|p| A::subnet_of(p).is_none_or(|s| !direct.contains(&s)));
        }
        let want = A::desired(&peers, self.spec.vni);
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
        let vxlan = LinkVxlan::new(&self.name, self.spec.vni).dev(self.spec.underlay_index);
        let vxlan = match self.spec.local {
            IpAddr::V4(ip) => vxlan.local(ip),
            IpAddr::V6(ip) => vxlan.local6(ip),
        };
        let msg = vxlan
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

    /// `<subnet network address>/32` (IPv6: `/128`) on the device, as flannel sets it.
    async fn ensure_address(&self, index: u32) -> Result<(), ReconcileError> {
        let ip: IpAddr = self.own.into();
        let len = A::HOST_PREFIX;
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
                .any(|x| matches!(x, AddressAttribute::Address(v) if *v == ip));
            if has && a.header.prefix_len == len {
                return Ok(());
            }
        }
        self.handle
            .address()
            .add(index, ip, len)
            .execute()
            .await
            .map_err(nl(format!("adding address {ip}/{len}")))
    }

    /// The device's permanent neighbours, FDB entries and gateway routes of family `A`, with the messages
    /// to delete them.
    async fn read_entries(&self, index: u32) -> Result<(Entries<A>, Dumped<A>), ReconcileError> {
        let mut e = Entries::default();
        let mut d = Dumped::default();
        for family in [A::NEIGHBOURS, AddressFamily::Bridge] {
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
                            dst = A::of((*ip).into())
                        }
                        NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => {
                            dst = A::of((*ip).into())
                        }
                        // FDB (AF_BRIDGE) entries carry their destination as raw bytes.
                        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                            dst = A::from_raw(b)
                        }
                        NeighbourAttribute::LinkLayerAddress(m) if m.len() == 6 => {
                            mac = Some(MacAddr([m[0], m[1], m[2], m[3], m[4], m[5]]))
                        }
                        _ => {}
                    }
                }
                if let (Some(ip), Some(m)) = (dst, mac) {
                    if family == AddressFamily::Bridge {
                        e.fdb.insert((m, ip));
                        d.fdb.push(((m, ip), n));
                    } else {
                        e.neighbours.insert((ip, m));
                        d.neighbours.push(((ip, m), n));
                    }
                }
            }
        }
        let mut routes = self.handle.route().get(A::route_dump()).execute();
        while let Some(r) = routes.try_next().await.map_err(nl("reading routes"))? {
            let mut oif = None;
            let mut gw = None;
            let mut dst = None;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Gateway(g) => gw = route_ip(g).and_then(A::of),
                    RouteAttribute::Destination(x) => dst = route_ip(x).and_then(A::of),
                    _ => {}
                }
            }
            if oif != Some(index) {
                continue;
            }
            if let (Some(g), Some(x)) = (gw, dst) {
                if let Some(net) = A::net(x, r.header.destination_prefix_length) {
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
        change: Change<A>,
        dumped: &Dumped<A>,
    ) -> Result<(), ReconcileError> {
        let h = &self.handle;
        let r = match change {
            Change::AddNeighbour(ip, mac) => {
                h.neighbours()
                    .add(index, ip.into())
                    .link_layer_address(&mac.0)
                    .state(NeighbourState::Permanent)
                    .replace()
                    .execute()
                    .await
            }
            Change::AddFdb(mac, dst) => {
                h.neighbours()
                    .add_bridge(index, &mac.0)
                    .destination(dst.into())
                    .flags(NeighbourFlags::Own)
                    .state(NeighbourState::Permanent)
                    .replace()
                    .execute()
                    .await
            }
            Change::AddRoute(net, gw) => {
                let msg = A::onlink_route(net, gw, index);
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

/// An address from a route attribute.
fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(ip) => Some((*ip).into()),
        RouteAddress::Inet6(ip) => Some((*ip).into()),
        _ => None,
    }
}

/// A [`Family`]'s netlink particulars.
trait NetlinkFamily: Family {
    /// The neighbour table of the family (ARP or NDP).
    const NEIGHBOURS: AddressFamily;
    /// A request that dumps the family's routes.
    fn route_dump() -> RouteMessage;
    /// `<net> via <gw> dev <index> onlink`.
    fn onlink_route(net: Self::Net, gw: Self, index: u32) -> RouteMessage;
    /// The subnets of `peers` that vxlan's DirectRouting routes straight to the peer (same segment as
    /// `underlay_index`); asks the kernel, so it blocks.
    fn direct_subnets(peers: &[Peer], vni: u32, underlay_index: u32) -> BTreeSet<Self::Net>;
}

impl NetlinkFamily for Ipv4Addr {
    const NEIGHBOURS: AddressFamily = AddressFamily::Inet;
    fn route_dump() -> RouteMessage {
        RouteMessageBuilder::<Ipv4Addr>::new().build()
    }
    fn onlink_route(net: Ipv4Net, gw: Self, index: u32) -> RouteMessage {
        RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(net.network(), net.prefix_len())
            .gateway(gw)
            .output_interface(index)
            .onlink()
            .build()
    }
    fn direct_subnets(peers: &[Peer], vni: u32, underlay_index: u32) -> BTreeSet<Ipv4Net> {
        let plan = direct_state::plan(peers, direct_state::DirectMode::VxlanDirect { vni }, |ip| {
            direct::reach(ip, underlay_index)
        });
        direct_state::direct_subnets(&plan)
    }
}

impl NetlinkFamily for Ipv6Addr {
    const NEIGHBOURS: AddressFamily = AddressFamily::Inet6;
    fn route_dump() -> RouteMessage {
        RouteMessageBuilder::<Ipv6Addr>::new().build()
    }
    fn onlink_route(net: Ipv6Net, gw: Self, index: u32) -> RouteMessage {
        RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(net.network(), net.prefix_len())
            .gateway(gw)
            .output_interface(index)
            .onlink()
            .build()
    }
    fn direct_subnets(peers: &[Peer], vni: u32, underlay_index: u32) -> BTreeSet<Ipv6Net> {
        let mode = direct_state::DirectMode::VxlanDirect { vni };
        direct_state::plan6(peers, mode, |ip| direct::reach6(ip, underlay_index))
            .into_iter()
            .map(|(net, _)| net)
            .collect()
    }
}

/// Kernel messages of the entries read, to delete them exactly as the kernel knows them.
struct Dumped<A: Family> {
    neighbours: Vec<((A, MacAddr), NeighbourMessage)>,
    fdb: Vec<((MacAddr, A), NeighbourMessage)>,
    routes: Vec<((A::Net, A), RouteMessage)>,
}

impl<A: Family> Default for Dumped<A> {
    fn default() -> Self {
        Dumped {
            neighbours: Vec::new(),
            fdb: Vec::new(),
            routes: Vec::new(),
        }
    }
}
