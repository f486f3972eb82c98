//! AF_XDP underlay I/O: the redirect program attached to the underlay interface, one AF_XDP socket per
//! receive queue (and worker), and the next-hop MACs that outgoing frames need.

pub mod bpf;
pub mod link;
pub mod neigh;
pub mod xsk;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};

use tracing::{info, warn};

pub use link::XdpMode;
pub use neigh::NextHops;
pub use xsk::Xsk;

use crate::wire::ethernet::MacAddr;
use crate::wire::xdp_filter::redirect_program;

/// Which XDP attach mode to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpModeChoice {
    /// Driver mode where the device supports it, generic mode otherwise.
    Auto,
    Driver,
    Generic,
}

/// Why AF_XDP could not be set up; each names the fix.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error("interface {0} not found for AF_XDP")]
    NoInterface(String),
    #[error("interface {iface} has MTU {mtu}, more than an AF_XDP frame holds ({max}); lower its MTU or use --underlay udp")]
    Mtu { iface: String, mtu: u32, max: usize },
    #[error("interface {iface} already runs XDP program {id} ({name:?}), which is not weft's; remove it (ip link set dev {iface} xdp off) or use --underlay udp")]
    Foreign {
        iface: String,
        id: u32,
        name: String,
    },
    #[error("interface {iface} refused driver-mode XDP: {source}; use --xdp-mode auto (falls back to generic mode) or --xdp-mode generic")]
    DriverRefused {
        iface: String,
        source: std::io::Error,
    },
    #[error("cannot {what} for AF_XDP on {iface}: {source}; AF_XDP needs root (CAP_NET_ADMIN, CAP_BPF) and a kernel with XDP sockets (5.4 or later); --underlay udp does without")]
    Setup {
        what: &'static str,
        iface: String,
        source: std::io::Error,
    },
}

/// The attached program and its map; dropping it detaches the program (if it is still ours).
pub struct Attachment {
    pub iface: String,
    pub ifindex: u32,
    pub mode: XdpMode,
    pub prog_id: u32,
    pub src_mac: MacAddr,
    map: OwnedFd,
    _prog: OwnedFd,
}

/// Everything `setup` produced: the attachment and one socket per served queue.
pub struct Setup {
    pub attachment: Attachment,
    pub sockets: Vec<Xsk>,
}

/// Attaches the redirect program for `ip`:`port` (and `[ip6]:port` on a dual-stack network) to `iface`
/// and opens AF_XDP sockets for up to `workers` of its receive queues. A stale program of our own (from a
/// weft that did not exit cleanly) is removed first; anybody else's is left alone and reported.
pub fn setup(
    iface: &str,
    mtu: u32,
    ip: Ipv4Addr,
    ip6: Option<Ipv6Addr>,
    port: u16,
    workers: usize,
    choice: XdpModeChoice,
) -> Result<Setup, XdpError> {
    let err = |what: &'static str| {
        let iface = iface.to_string();
        move |source| XdpError::Setup {
            what,
            iface,
            source,
        }
    };
    let ifindex = nix::net::if_::if_nametoindex(iface)
        .map_err(|_| XdpError::NoInterface(iface.to_string()))?;
    if mtu as usize + crate::wire::outer::ETH_HEADER > xsk::MAX_FRAME {
        return Err(XdpError::Mtu {
            iface: iface.to_string(),
            mtu,
            max: xsk::MAX_FRAME - crate::wire::outer::ETH_HEADER,
        });
    }
    remove_stale(iface, ifindex)?;
    let queues = neigh::rx_queues(ifindex).unwrap_or(1).max(1);
    let map = bpf::create_xskmap(queues).map_err(err("create the socket map"))?;
    let prog = bpf::load_xdp(&redirect_program(
        ip,
        ip6,
        port,
        map.as_raw_fd(),
        xsk::MAX_FRAME,
    ))
    .map_err(err("load the XDP program"))?;
    let (prog_id, _) =
        bpf::prog_id_and_name(prog.as_raw_fd()).map_err(err("inspect the XDP program"))?;
    let mode = match choice {
        XdpModeChoice::Driver => {
            link::attach(ifindex, prog.as_raw_fd(), XdpMode::Driver).map_err(|source| {
                XdpError::DriverRefused {
                    iface: iface.to_string(),
                    source,
                }
            })?;
            XdpMode::Driver
        }
        XdpModeChoice::Generic => {
            link::attach(ifindex, prog.as_raw_fd(), XdpMode::Generic)
                .map_err(err("attach the XDP program in generic mode"))?;
            XdpMode::Generic
        }
        XdpModeChoice::Auto => match link::attach(ifindex, prog.as_raw_fd(), XdpMode::Driver) {
            Ok(()) => XdpMode::Driver,
            Err(e) => {
                info!(
                    iface,
                    "driver-mode XDP refused on {iface} ({e}); using generic mode"
                );
                link::attach(ifindex, prog.as_raw_fd(), XdpMode::Generic)
                    .map_err(err("attach the XDP program in generic mode"))?;
                XdpMode::Generic
            }
        },
    };
    let attachment = Attachment {
        iface: iface.to_string(),
        ifindex,
        mode,
        prog_id,
        src_mac: neigh::link_mac(ifindex).ok_or_else(|| XdpError::Setup {
            what: "read the interface's MAC address",
            iface: iface.to_string(),
            source: std::io::Error::other("no link-layer address reported"),
        })?,
        map,
        _prog: prog,
    };
    // From here on, dropping `attachment` detaches the program on every error path.
    let n = (workers.max(1) as u32).min(queues);
    let mut sockets = Vec::with_capacity(n as usize);
    for q in 0..n {
        // Netlink reports the queues allocated; fewer may be in use (veth: one unless configured), and a
        // socket cannot bind beyond those: the first refusal after queue 0 ends the list.
        let s = match Xsk::open(ifindex, q) {
            Ok(s) => s,
            Err(e) if q > 0 && e.raw_os_error() == Some(libc::EINVAL) => break,
            Err(e) => return Err(err("open an AF_XDP socket")(e)),
        };
        bpf::set_xsk(attachment.map.as_raw_fd(), q, s.raw_fd())
            .map_err(err("register the AF_XDP socket"))?;
        sockets.push(s);
    }
    Ok(Setup {
        attachment,
        sockets,
    })
}

fn remove_stale(iface: &str, ifindex: u32) -> Result<(), XdpError> {
    let Ok(Some(a)) = link::query(ifindex) else {
        return Ok(());
    };
    let name = bpf::prog_name_by_id(a.prog_id).unwrap_or_default();
    if name != bpf::PROGRAM_NAME {
        return Err(XdpError::Foreign {
            iface: iface.to_string(),
            id: a.prog_id,
            name,
        });
    }
    link::detach(ifindex, a.mode).map_err(|source| XdpError::Setup {
        what: "remove a stale weft XDP program",
        iface: iface.to_string(),
        source,
    })?;
    info!(
        iface,
        prog_id = a.prog_id,
        "removed a stale weft XDP program left by an earlier run"
    );
    Ok(())
}

impl Drop for Attachment {
    fn drop(&mut self) {
        match link::query(self.ifindex) {
            Ok(Some(a)) if a.prog_id == self.prog_id => {
                if let Err(e) = link::detach(self.ifindex, a.mode) {
                    warn!(iface = %self.iface, "cannot detach weft's XDP program: {e}; remove it with: ip link set dev {} xdp off", self.iface);
                } else {
                    info!(iface = %self.iface, "XDP program detached");
                }
            }
            _ => {}
        }
    }
}
