//! A worker's AF_XDP underlay: datagrams leave as whole frames built here (outer Ethernet with the next
//! hop's MAC, IPv4 or IPv6, UDP) through the socket's TX ring, and arrive as frames of either family from
//! its RX ring; the UDP sockets stay beside it for peers without a known next hop and for what the kernel
//! still receives.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::sock::UdpUnderlay;
use super::underlay::{DatagramSink, Sent, Underlay};
use crate::dataplane::xdp::xsk::MAX_FRAME;
use crate::dataplane::xdp::{NextHops, Xsk};
use crate::ops::metrics::WorkerCounters;
use crate::wire::ethernet::MacAddr;
use crate::wire::outer::{
    parse_underlay_frame, source_port, OuterPath, OuterPath6, OUTER_LEN, OUTER_LEN6,
};
use crate::wire::DropReason;

/// What became of datagrams handed to the AF_XDP path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpSend {
    /// Queued for sending: this many datagrams (the rest, if any, found no free frame).
    Queued { sent: usize, dropped: usize },
    /// No usable next hop (unknown, or due for revalidation): send through the kernel's UDP socket,
    /// which resolves and confirms the neighbour.
    ViaKernel,
}

/// Our underlay addresses and port: where frames leave from, and what arriving frames must be sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XdpLocal {
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    /// On a dual-stack network, the IPv6 underlay address.
    pub ip6: Option<Ipv6Addr>,
    pub port: u16,
}

impl XdpLocal {
    /// Whether a frame to `dst`:`port` is for us.
    fn is_ours(&self, dst: IpAddr, port: u16) -> bool {
        port == self.port
            && match dst {
                IpAddr::V4(d) => d == self.ip,
                IpAddr::V6(d) => Some(d) == self.ip6,
            }
    }
}

/// Builds and queues whole frames on one AF_XDP socket.
pub struct XdpIo {
    xsk: Xsk,
    hops: Arc<NextHops>,
    local: XdpLocal,
    ip_id: u16,
}

impl XdpIo {
    pub fn new(xsk: Xsk, hops: Arc<NextHops>, local: XdpLocal) -> Self {
        XdpIo {
            xsk,
            hops,
            local,
            ip_id: 0,
        }
    }

    /// The MAC of the next hop towards `dst`, or None when the datagram should go through the kernel.
    fn next_hop(&self, dst: IpAddr) -> Option<MacAddr> {
        let hops = self.hops.load();
        match hops.get(&dst) {
            Some(h) if !h.revalidate.load(Ordering::Relaxed) => Some(h.mac),
            Some(h) => {
                h.revalidate.store(false, Ordering::Relaxed);
                None
            }
            None => {
                self.hops.want();
                None
            }
        }
    }

    /// Queues the datagrams in `buf` (`stride` bytes each, the last may be shorter) to `dst`.
    pub fn send(&mut self, flow: u32, dst: IpAddr, buf: &[u8], stride: usize) -> XdpSend {
        let Some(dst_mac) = self.next_hop(dst) else {
            return XdpSend::ViaKernel;
        };
        let sport = source_port(flow);
        match dst {
            IpAddr::V4(dst_ip) => {
                let path = OuterPath {
                    src_mac: self.local.mac,
                    dst_mac,
                    src_ip: self.local.ip,
                    dst_ip,
                    dst_port: self.local.port,
                };
                let ip_id = &mut self.ip_id;
                queue_units(&mut self.xsk, buf, stride, OUTER_LEN, |hdr, unit| {
                    path.write(hdr, unit.len(), sport, *ip_id);
                    *ip_id = ip_id.wrapping_add(1);
                })
            }
            IpAddr::V6(dst_ip) => {
                // The next-hop thread looks up IPv6 peers only when we have an IPv6 address.
                let Some(src_ip) = self.local.ip6 else {
                    return XdpSend::ViaKernel;
                };
                let path = OuterPath6 {
                    src_mac: self.local.mac,
                    dst_mac,
                    src_ip,
                    dst_ip,
                    dst_port: self.local.port,
                };
                // The flow label from the flow hash, as the kernel derives it (20 bits).
                let label = flow & 0xf_ffff;
                queue_units(&mut self.xsk, buf, stride, OUTER_LEN6, |hdr, unit| {
                    path.write(hdr, unit, sport, label)
                })
            }
        }
    }
}

/// Queues each `stride`-byte unit of `buf` as one frame: the unit behind `outer` bytes of headers that
/// `write(headers, unit)` fills in. A unit too long for a frame, or without a free frame, is dropped.
fn queue_units(
    xsk: &mut Xsk,
    buf: &[u8],
    stride: usize,
    outer: usize,
    mut write: impl FnMut(&mut [u8], &[u8]),
) -> XdpSend {
    let (mut sent, mut dropped) = (0, 0);
    for unit in buf.chunks(stride.max(1)) {
        let len = outer + unit.len();
        if len > MAX_FRAME {
            dropped += 1;
            continue;
        }
        let ok = xsk.queue(|frame| {
            let (hdr, payload) = frame[..len].split_at_mut(outer);
            payload.copy_from_slice(unit);
            write(hdr, unit);
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

/// The AF_XDP underlay: frames of both families through the worker's AF_XDP socket, with its UDP sockets
/// beside it (receive sources 0 and 2; source 1 is the AF_XDP socket). Counts its own `xdp_*` counters.
pub struct XdpUnderlay {
    xdp: XdpIo,
    udp: UdpUnderlay,
    counters: Arc<WorkerCounters>,
}

impl XdpUnderlay {
    pub fn new(xdp: XdpIo, udp: UdpUnderlay, counters: Arc<WorkerCounters>) -> Self {
        XdpUnderlay { xdp, udp, counters }
    }

    /// Sends through the AF_XDP socket, or through the kernel's UDP socket when it says so.
    #[inline]
    fn send_frames(
        &mut self,
        flow: u32,
        dst: IpAddr,
        buf: &[u8],
        stride: usize,
        via_kernel: impl FnOnce(&mut UdpUnderlay) -> Sent,
    ) -> Sent {
        if dst.is_ipv6() && self.xdp.local.ip6.is_none() {
            // Not a dual-stack network: the UDP underlay says what becomes of it.
            return via_kernel(&mut self.udp);
        }
        match self.xdp.send(flow, dst, buf, stride) {
            XdpSend::ViaKernel => {
                self.counters.xdp_via_kernel.fetch_add(1, Ordering::Relaxed);
                via_kernel(&mut self.udp)
            }
            XdpSend::Queued { sent, dropped } => {
                self.counters
                    .xdp_tx_frames
                    .fetch_add(sent as u64, Ordering::Relaxed);
                Sent {
                    datagrams: sent,
                    bytes: buf.chunks(stride.max(1)).take(sent).map(<[u8]>::len).sum(),
                    failed: dropped,
                    error: None,
                }
            }
        }
    }
}

impl Underlay for XdpUnderlay {
    /// The IPv4 UDP socket, the AF_XDP socket, and on a dual-stack network the IPv6 UDP socket (which gets
    /// what the XDP program leaves to the kernel: frames on queues without an AF_XDP socket).
    const SOURCES: usize = 3;

    fn sources(&self) -> usize {
        1 + self.udp.sources()
    }

    fn poll_fd(&self, source: usize) -> BorrowedFd<'_> {
        match source {
            0 => self.udp.poll_fd(0),
            1 => self.xdp.xsk.as_fd(),
            _ => self.udp.poll_fd(1),
        }
    }

    fn recv(
        &mut self,
        source: usize,
        limit: usize,
        sink: &mut impl DatagramSink,
    ) -> io::Result<bool> {
        if source != 1 {
            return self.udp.recv(source.min(1), limit, sink);
        }
        let (local, counters) = (self.xdp.local, &self.counters);
        let n = self.xdp.xsk.recv(limit as u32, |frame| {
            counters.xdp_rx_frames.fetch_add(1, Ordering::Relaxed);
            // The XDP program only passes frames to our addresses and port; anything else is malformed.
            match parse_underlay_frame(frame) {
                Ok(u) if local.is_ours(u.dst, u.dst_port) => {
                    sink.datagram(u.src, &mut frame[u.start..u.end]);
                }
                Ok(_) => sink.dropped(DropReason::Truncated),
                Err(reason) => sink.dropped(reason),
            }
        });
        sink.flush();
        Ok(n as usize >= limit)
    }

    #[inline]
    fn send(&mut self, flow: u32, dst: IpAddr, datagram: &[u8]) -> Sent {
        self.send_frames(flow, dst, datagram, datagram.len(), |udp| {
            udp.send(flow, dst, datagram)
        })
    }

    #[inline]
    fn send_train(&mut self, flow: u32, dst: IpAddr, train: &[u8], stride: usize) -> Sent {
        self.send_frames(flow, dst, train, stride, |udp| {
            udp.send_train(flow, dst, train, stride)
        })
    }

    fn flush(&mut self) {
        self.xdp.xsk.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_ours_by_family_address_and_port() {
        let ip6: Ipv6Addr = "fd00:250::1".parse().unwrap();
        let local = XdpLocal {
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            ip: Ipv4Addr::new(10, 250, 0, 1),
            ip6: Some(ip6),
            port: 8472,
        };
        assert!(local.is_ours(local.ip.into(), 8472));
        assert!(local.is_ours(ip6.into(), 8472));
        assert!(!local.is_ours(ip6.into(), 8473));
        assert!(!local.is_ours("fd00:250::2".parse().unwrap(), 8472));
        assert!(!local.is_ours(Ipv4Addr::new(10, 250, 0, 2).into(), 8472));
        // The IPv4 address mapped into IPv6 is not ours, and without an IPv6 address no IPv6 frame is.
        assert!(!local.is_ours(local.ip.to_ipv6_mapped().into(), 8472));
        let v4_only = XdpLocal { ip6: None, ..local };
        assert!(!v4_only.is_ours(ip6.into(), 8472));
    }
}
