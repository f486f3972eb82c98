//! A worker's AF_XDP underlay: datagrams leave as whole frames built here (outer Ethernet with the next
//! hop's MAC, IPv4, UDP) through the socket's TX ring, and arrive as frames from its RX ring; the UDP
//! sockets stay beside it for peers without a known next hop and for what the kernel still receives.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::sock::UdpUnderlay;
use super::underlay::{DatagramSink, Sent, Underlay};
use crate::dataplane::xdp::xsk::MAX_FRAME;
use crate::dataplane::xdp::{NextHops, Xsk};
use crate::ops::metrics::WorkerCounters;
use crate::wire::ethernet::MacAddr;
use crate::wire::outer::{parse_udp_frame, source_port, OuterPath, OUTER_LEN};
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

/// Builds and queues whole frames on one AF_XDP socket.
pub struct XdpIo {
    xsk: Xsk,
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

/// The AF_XDP underlay: frames through the worker's AF_XDP socket, with its UDP sockets beside it
/// (receive source 0; source 1 is the AF_XDP socket). Counts its own `xdp_*` counters.
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
        dst: Ipv4Addr,
        buf: &[u8],
        stride: usize,
        via_kernel: impl FnOnce(&mut UdpUnderlay) -> Sent,
    ) -> Sent {
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
    /// The IPv4 UDP socket, the AF_XDP socket, and on a dual-stack network the IPv6 UDP socket (the IPv6
    /// underlay goes through the kernel: the XDP program steers IPv4 only).
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
        let (local, port, counters) = (self.xdp.src_ip, self.xdp.port, &self.counters);
        let n = self.xdp.xsk.recv(limit as u32, |frame| {
            counters.xdp_rx_frames.fetch_add(1, Ordering::Relaxed);
            // The XDP program only passes frames to our address and port; anything else is malformed.
            let Some(u) = parse_udp_frame(frame).filter(|u| u.dst == local && u.dst_port == port)
            else {
                sink.dropped(DropReason::Truncated);
                return;
            };
            sink.datagram(u.src.into(), &mut frame[u.start..u.end]);
        });
        sink.flush();
        Ok(n as usize >= limit)
    }

    #[inline]
    fn send(&mut self, flow: u32, dst: IpAddr, datagram: &[u8]) -> Sent {
        let IpAddr::V4(dst4) = dst else {
            return self.udp.send(flow, dst, datagram);
        };
        self.send_frames(flow, dst4, datagram, datagram.len(), |udp| {
            udp.send(flow, dst, datagram)
        })
    }

    #[inline]
    fn send_train(&mut self, flow: u32, dst: IpAddr, train: &[u8], stride: usize) -> Sent {
        let IpAddr::V4(dst4) = dst else {
            return self.udp.send_train(flow, dst, train, stride);
        };
        self.send_frames(flow, dst4, train, stride, |udp| {
            udp.send_train(flow, dst, train, stride)
        })
    }

    fn flush(&mut self) {
        self.xdp.xsk.flush();
    }
}
