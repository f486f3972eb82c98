//! Attaching, detaching and inspecting an interface's XDP program over rtnetlink (IFLA_XDP), synchronously,
//! so that detaching also works from `Drop` on every exit path.

use std::io;
use std::os::fd::RawFd;

use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};
use netlink_packet_route::link::{LinkAttribute, LinkMessage, LinkXdp, XdpAttached};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// Fail instead of replacing a program that is already attached.
const XDP_FLAGS_UPDATE_IF_NOEXIST: u32 = 1;
const XDP_FLAGS_SKB_MODE: u32 = 2;
const XDP_FLAGS_DRV_MODE: u32 = 4;

/// Where an XDP program runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    /// In the driver, before an skb exists (native XDP; veth and most physical NICs).
    Driver,
    /// In the generic receive path, after the skb is built: works on any device, slower.
    Generic,
}

impl XdpMode {
    fn flag(self) -> u32 {
        match self {
            XdpMode::Driver => XDP_FLAGS_DRV_MODE,
            XdpMode::Generic => XDP_FLAGS_SKB_MODE,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            XdpMode::Driver => "driver",
            XdpMode::Generic => "generic",
        }
    }
}

/// The XDP program attached to an interface, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attached {
    pub prog_id: u32,
    pub mode: XdpMode,
}

/// A route-netlink socket for synchronous requests, reusable for many.
pub(crate) struct Rtnl {
    sock: Socket,
    seq: u32,
}

impl Rtnl {
    pub(crate) fn open() -> io::Result<Rtnl> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(Rtnl { sock, seq: 0 })
    }

    /// Sends one request and collects its replies (up to the ACK with NLM_F_ACK, else the first reply);
    /// replies to earlier requests are skipped by sequence number.
    pub(crate) fn request(
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
                            if flags & NLM_F_ACK == 0 {
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

/// One request on a socket of its own.
pub(crate) fn request(
    msg: RouteNetlinkMessage,
    flags: u16,
) -> io::Result<Vec<RouteNetlinkMessage>> {
    Rtnl::open()?.request(msg, flags)
}

fn set_xdp(ifindex: u32, attrs: Vec<LinkXdp>) -> io::Result<()> {
    let mut msg = LinkMessage::default();
    msg.header.index = ifindex;
    msg.attributes.push(LinkAttribute::Xdp(attrs));
    request(RouteNetlinkMessage::SetLink(msg), NLM_F_REQUEST | NLM_F_ACK).map(|_| ())
}

/// Attaches program `prog_fd` to the interface in `mode`, failing if one is already attached.
pub fn attach(ifindex: u32, prog_fd: RawFd, mode: XdpMode) -> io::Result<()> {
    set_xdp(
        ifindex,
        vec![
            LinkXdp::Fd(prog_fd),
            LinkXdp::Flags(mode.flag() | XDP_FLAGS_UPDATE_IF_NOEXIST),
        ],
    )
}

/// Detaches whatever program runs on the interface in `mode`.
pub fn detach(ifindex: u32, mode: XdpMode) -> io::Result<()> {
    set_xdp(ifindex, vec![LinkXdp::Fd(-1), LinkXdp::Flags(mode.flag())])
}

/// The program attached to the interface (driver or generic mode), if any.
pub fn query(ifindex: u32) -> io::Result<Option<Attached>> {
    let mut msg = LinkMessage::default();
    msg.header.index = ifindex;
    let replies = request(RouteNetlinkMessage::GetLink(msg), NLM_F_REQUEST)?;
    for r in replies {
        let RouteNetlinkMessage::NewLink(link) = r else {
            continue;
        };
        for a in link.attributes {
            let LinkAttribute::Xdp(xdp) = a else { continue };
            let mut mode = None;
            let mut id = 0;
            for x in xdp {
                match x {
                    LinkXdp::Attached(XdpAttached::Driver) => mode = Some(XdpMode::Driver),
                    LinkXdp::Attached(XdpAttached::SocketBuffer) => mode = Some(XdpMode::Generic),
                    LinkXdp::ProgId(p) => id = p,
                    _ => {}
                }
            }
            return Ok(mode.map(|mode| Attached { prog_id: id, mode }));
        }
    }
    Ok(None)
}
