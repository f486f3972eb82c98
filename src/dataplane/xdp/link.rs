//! Attaching, detaching and inspecting an interface's XDP program over rtnetlink (IFLA_XDP), synchronously,
//! so that detaching also works from `Drop` on every exit path.

use std::io;
use std::os::fd::RawFd;

use netlink_packet_core::{NLM_F_ACK, NLM_F_REQUEST};
use netlink_packet_route::link::{LinkAttribute, LinkMessage, LinkXdp, XdpAttached};
use netlink_packet_route::RouteNetlinkMessage;

use crate::host::netlink::request;

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
