//! A worker's AF_XDP underlay: datagrams leave as whole frames built here (outer Ethernet with the next
//! hop's MAC, IPv4, UDP) through the socket's TX ring, and arrive as frames from its RX ring.

use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::dataplane::xdp::xsk::MAX_FRAME;
use crate::dataplane::xdp::{NextHops, Xsk};
use crate::wire::ethernet::MacAddr;
use crate::wire::outer::{source_port, OuterPath, OUTER_LEN};

/// What became of datagrams handed to the AF_XDP path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpSend {
    /// Queued for sending: this many datagrams (the rest, if any, found no free frame).
    Queued { sent: usize, dropped: usize },
    /// No usable next hop (unknown, or due for revalidation): send through the kernel's UDP socket,
    /// which resolves and confirms the neighbour.
    ViaKernel,
}

pub struct XdpIo {
    pub xsk: Xsk,
    hops: Arc<NextHops>,
    src_mac: MacAddr,
    src_ip: Ipv4Addr,
    port: u16,
    ip_id: u16,
}

impl XdpIo {
    pub fn new(
        xsk: Xsk,
        hops: Arc<NextHops>,
        src_mac: MacAddr,
        src_ip: Ipv4Addr,
        port: u16,
    ) -> Self {
        XdpIo {
            xsk,
            hops,
            src_mac,
            src_ip,
            port,
            ip_id: 0,
        }
    }

    /// Queues the datagrams in `buf` (`stride` bytes each, the last may be shorter) to `dst`.
    pub fn send(&mut self, flow: u32, dst: Ipv4Addr, buf: &[u8], stride: usize) -> XdpSend {
        let dst_mac = {
            let hops = self.hops.load();
            match hops.get(&dst) {
                Some(h) if !h.revalidate.load(Ordering::Relaxed) => h.mac,
                Some(h) => {
                    h.revalidate.store(false, Ordering::Relaxed);
                    return XdpSend::ViaKernel;
                }
                None => {
                    self.hops.want();
                    return XdpSend::ViaKernel;
                }
            }
        };
        let path = OuterPath {
            src_mac: self.src_mac,
            dst_mac,
            src_ip: self.src_ip,
            dst_ip: dst,
            dst_port: self.port,
        };
        let sport = source_port(flow);
        let (mut sent, mut dropped) = (0, 0);
        for unit in buf.chunks(stride.max(1)) {
            if OUTER_LEN + unit.len() > MAX_FRAME {
                dropped += 1;
                continue;
            }
            let id = self.ip_id;
            self.ip_id = self.ip_id.wrapping_add(1);
            let ok = self.xsk.queue(|frame| {
                let len = OUTER_LEN + unit.len();
                path.write(&mut frame[..OUTER_LEN], unit.len(), sport, id);
                frame[OUTER_LEN..len].copy_from_slice(unit);
                len
            });
            if ok {
                sent += 1;
            } else {
                dropped += 1;
            }
        }
        XdpSend::Queued { sent, dropped }
    }
}
