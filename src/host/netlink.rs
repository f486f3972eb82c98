//! Synchronous route-netlink requests over one socket (netlink-sys + netlink-packet-route messages).
//!
//! weft reaches the kernel's routing netlink two ways, each where it fits: async `rtnetlink` where a tokio task
//! reconciles (the tun device's route, the kernel VXLAN backend), and this blocking helper where there is no
//! runtime or no await — detaching XDP in `Drop`, the next-hop thread of the AF_XDP underlay, and reading the
//! underlay interface at start-up.

use std::io;

use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// A route-netlink socket for synchronous requests, reusable for many.
pub struct Rtnl {
    sock: Socket,
    seq: u32,
}

impl Rtnl {
    pub fn open() -> io::Result<Rtnl> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(Rtnl { sock, seq: 0 })
    }

    /// Sends one request and collects its replies (up to the ACK with NLM_F_ACK, up to the end of the
    /// dump with NLM_F_DUMP, else the first reply); replies to earlier requests are skipped by sequence number.
    pub fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut nl = NetlinkMessage::from(msg);
        nl.header.flags = flags;
        nl.header.sequence_number = self.seq;
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        self.sock.send(&buf, 0)?;
        let mut replies = Vec::new();
        loop {
            let (data, _) = self.sock.recv_from_full()?;
            let mut off = 0;
            while off < data.len() {
                let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[off..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = m.header.length as usize;
                if m.header.sequence_number == self.seq {
                    match m.payload {
                        NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                        NetlinkPayload::Error(_) | NetlinkPayload::Done(_) => return Ok(replies),
                        NetlinkPayload::InnerMessage(inner) => {
                            replies.push(inner);
                            if flags & (NLM_F_ACK | NLM_F_DUMP) == 0 {
                                return Ok(replies);
                            }
                        }
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                off += (len + 3) & !3;
            }
        }
    }
}

/// What the kernel's route to an address says (`ip route get`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteTo {
    /// The output interface.
    pub oif: Option<u32>,
    /// The gateway, if the address is not on a connected network.
    pub gateway: Option<std::net::Ipv4Addr>,
    /// The source address the kernel would use.
    pub prefsrc: Option<std::net::Ipv4Addr>,
}

impl Rtnl {
    /// The kernel's answer to `ip route get <dst>` (either family), or None when it has no route.
    fn route_get(
        &mut self,
        dst: std::net::IpAddr,
    ) -> io::Result<Option<netlink_packet_route::route::RouteMessage>> {
        use netlink_packet_core::NLM_F_REQUEST;
        use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
        use netlink_packet_route::AddressFamily;
        let mut msg = RouteMessage::default();
        let (family, len, addr) = match dst {
            std::net::IpAddr::V4(a) => (AddressFamily::Inet, 32, RouteAddress::Inet(a)),
            std::net::IpAddr::V6(a) => (AddressFamily::Inet6, 128, RouteAddress::Inet6(a)),
        };
        msg.header.address_family = family;
        msg.header.destination_prefix_length = len;
        msg.attributes.push(RouteAttribute::Destination(addr));
        let replies = match self.request(RouteNetlinkMessage::GetRoute(msg), NLM_F_REQUEST) {
            Ok(r) => r,
            Err(e) if e.raw_os_error() == Some(libc::ENETUNREACH) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(replies.into_iter().find_map(|r| match r {
            RouteNetlinkMessage::NewRoute(r) => Some(r),
            _ => None,
        }))
    }

    /// The kernel's route to `dst`, or None when it has none.
    pub fn route_to(&mut self, dst: std::net::Ipv4Addr) -> io::Result<Option<RouteTo>> {
        use netlink_packet_route::route::{RouteAddress, RouteAttribute};
        Ok(self.route_get(dst.into())?.map(|r| {
            let mut to = RouteTo::default();
            for a in &r.attributes {
                match a {
                    RouteAttribute::Oif(i) => to.oif = Some(*i),
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => to.gateway = Some(*g),
                    RouteAttribute::PrefSource(RouteAddress::Inet(s)) => to.prefsrc = Some(*s),
                    _ => {}
                }
            }
            to
        }))
    }

    /// The kernel's route to IPv6 address `dst` (`ip -6 route get`) as (output interface, gateway), or None
    /// when it has none.
    pub fn route6_to(
        &mut self,
        dst: std::net::Ipv6Addr,
    ) -> io::Result<Option<(Option<u32>, Option<std::net::Ipv6Addr>)>> {
        use netlink_packet_route::route::{RouteAddress, RouteAttribute};
        Ok(self.route_get(dst.into())?.map(|r| {
            let (mut oif, mut gw) = (None, None);
            for a in &r.attributes {
                match a {
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Gateway(RouteAddress::Inet6(g)) => gw = Some(*g),
                    _ => {}
                }
            }
            (oif, gw)
        }))
    }
}

/// One request on a socket of its own.
pub fn request(msg: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<RouteNetlinkMessage>> {
    Rtnl::open()?.request(msg, flags)
}

/// Whether this kernel can create WireGuard devices (the module built in or loadable): creates a device
/// named `name` and deletes it again; the error says why not.
pub fn probe_wireguard(name: &str) -> io::Result<()> {
    use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST};
    use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
    let mut add = LinkMessage::default();
    add.attributes.push(LinkAttribute::IfName(name.into()));
    add.attributes
        .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
            InfoKind::Wireguard,
        )]));
    request(
        RouteNetlinkMessage::NewLink(add),
        NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK,
    )?;
    let mut del = LinkMessage::default();
    del.attributes.push(LinkAttribute::IfName(name.into()));
    request(RouteNetlinkMessage::DelLink(del), NLM_F_REQUEST | NLM_F_ACK)?;
    Ok(())
}

/// Adds a blackhole route for `subnet` in the main table (flanneld's --ip-blackhole-route), at the lowest
/// priority so it never shadows the container bridge's route for the same subnet: it only catches traffic
/// to the subnet while no other route does. An existing identical route is fine.
pub fn add_blackhole(subnet: ipnet::Ipv4Net) -> io::Result<()> {
    use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST};
    use netlink_packet_route::route::{
        RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
        RouteType,
    };
    use netlink_packet_route::AddressFamily;
    let mut msg = RouteMessage::default();
    msg.header.address_family = AddressFamily::Inet;
    msg.header.destination_prefix_length = subnet.prefix_len();
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::Static;
    msg.header.scope = RouteScope::Universe;
    msg.header.kind = RouteType::BlackHole;
    msg.attributes
        .push(RouteAttribute::Destination(RouteAddress::Inet(
            subnet.network(),
        )));
    msg.attributes.push(RouteAttribute::Priority(u32::MAX));
    match request(
        RouteNetlinkMessage::NewRoute(msg),
        NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK,
    ) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r.map(|_| ()),
    }
}
