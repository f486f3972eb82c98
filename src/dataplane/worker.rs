//! One data-plane worker: its own tun queue and sockets, buffers allocated once, packets moved in batches.

use std::io::{ErrorKind, IoSliceMut};
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use quinn_udp::RecvMeta;
use tracing::warn;
use tun_rs::SyncDevice;

use super::sock::WorkerSockets;
use super::{DataPlaneConfig, Encap};
use crate::daemon::Shared;
use crate::metrics::{DropReason, WorkerCounters};
use crate::routes::PeerBackend;
use crate::wire::flow::flow_hash;
use crate::wire::inbound::Inbound;
use crate::wire::ipv4::{self, icmp_unreachable, Unreachable};
use crate::wire::vxlan::{VxlanTemplate, VXLAN_ENCAP};

/// Room in front of a packet read from the tun for the encapsulation headers.
const HEADROOM: usize = 64;
/// Largest packet a tun read or a (GRO-coalesced) UDP receive can return.
const MAX_PACKET: usize = 65_536;
/// Datagram buffers per receive batch.
const RX_BATCH: usize = 32;
/// Packets handled from one side before looking at the other, so neither direction starves.
const WORK_LIMIT: usize = 64;
/// ICMP destination-unreachable replies per worker per second.
const ICMP_PER_SECOND: u32 = 100;

pub struct Worker {
    cfg: DataPlaneConfig,
    tun: SyncDevice,
    io: WorkerSockets,
    shared: Arc<Shared>,
    counters: Arc<WorkerCounters>,
    stop: Arc<AtomicBool>,
    tx_buf: Vec<u8>,
    rx_bufs: Vec<Vec<u8>>,
    rx_meta: Vec<RecvMeta>,
    icmp_buf: Vec<u8>,
    seg_buf: Vec<u8>,
    icmp_window: (Instant, u32),
    last_error_log: Option<Instant>,
}

impl Worker {
    pub fn new(
        cfg: DataPlaneConfig,
        tun: SyncDevice,
        io: WorkerSockets,
        shared: Arc<Shared>,
        counters: Arc<WorkerCounters>,
        stop: Arc<AtomicBool>,
    ) -> Self {
        Worker {
            cfg,
            tun,
            io,
            shared,
            counters,
            stop,
            tx_buf: vec![0; HEADROOM + MAX_PACKET],
            rx_bufs: (0..RX_BATCH).map(|_| vec![0; MAX_PACKET]).collect(),
            rx_meta: vec![RecvMeta::default(); RX_BATCH],
            icmp_buf: vec![0; 1024],
            seg_buf: vec![0; MAX_PACKET],
            icmp_window: (Instant::now(), 0),
            last_error_log: None,
        }
    }

    /// Runs until the stop flag is set.
    pub fn run(mut self) {
        while !self.stop.load(Ordering::Relaxed) {
            let ready = {
                let mut fds = [
                    PollFd::new(self.tun.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.io.rx_socket().as_fd(), PollFlags::POLLIN),
                ];
                match nix::poll::poll(&mut fds, PollTimeout::from(100u16)) {
                    Ok(0) => continue,
                    Ok(_) => [
                        fds[0].revents().is_some_and(|r| !r.is_empty()),
                        fds[1].revents().is_some_and(|r| !r.is_empty()),
                    ],
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        self.log_error(&format!("poll failed: {e}"));
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                }
            };
            let mut busy = true;
            while busy && !self.stop.load(Ordering::Relaxed) {
                busy = false;
                if ready[0] {
                    busy |= self.outbound_batch();
                }
                if ready[1] {
                    busy |= self.inbound_batch();
                }
            }
        }
    }

    fn log_error(&mut self, msg: &str) {
        let now = Instant::now();
        if self
            .last_error_log
            .is_none_or(|t| now.duration_since(t) > Duration::from_secs(60))
        {
            self.last_error_log = Some(now);
            warn!("data plane: {msg} (further such errors are counted in /metrics, logged once a minute)");
        }
    }

    /// Reads up to WORK_LIMIT packets from the tun and sends them to their peers. Returns true if the
    /// limit was reached (more may be waiting).
    fn outbound_batch(&mut self) -> bool {
        let routes = self.shared.routes.snapshot();
        for _ in 0..WORK_LIMIT {
            let n = match self.tun.recv(&mut self.tx_buf[HEADROOM..]) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.log_error(&format!("reading the tun device failed: {e}"));
                    return false;
                }
            };
            let packet = &self.tx_buf[HEADROOM..HEADROOM + n];
            let Some(ip) = ipv4::parse(packet) else {
                let reason = if packet.first().is_some_and(|b| b >> 4 != 4) {
                    DropReason::NotIpv4
                } else {
                    DropReason::Truncated
                };
                self.counters.dropped(reason);
                continue;
            };
            let Some(peer) = routes.lookup(ip.dst) else {
                self.counters.dropped(DropReason::NoRoute);
                self.reply_unreachable(n);
                continue;
            };
            let flow = flow_hash(packet);
            let dst = SocketAddr::V4(SocketAddrV4::new(peer.public_ip, self.cfg.port));
            let start = match (self.cfg.encap, peer.backend) {
                (Encap::Vxlan { vni, mac }, PeerBackend::Vxlan { vtep_mac, .. }) => {
                    VxlanTemplate::new(vni, vtep_mac, mac)
                        .write(&mut self.tx_buf, HEADROOM - VXLAN_ENCAP);
                    HEADROOM - VXLAN_ENCAP
                }
                (Encap::Udp, PeerBackend::Udp) => HEADROOM,
                _ => {
                    self.counters.dropped(DropReason::UnsupportedPeer);
                    continue;
                }
            };
            match self.io.send(flow, dst, &self.tx_buf[start..HEADROOM + n]) {
                Ok(()) => self.counters.tx(n),
                Err(e) => {
                    self.counters.dropped(DropReason::IoError);
                    self.log_error(&format!("sending to {dst} failed: {e}"));
                }
            }
        }
        true
    }

    /// Writes an ICMP net-unreachable about the packet in tx_buf back into the tun (rate-limited).
    fn reply_unreachable(&mut self, n: usize) {
        let now = Instant::now();
        if now.duration_since(self.icmp_window.0) >= Duration::from_secs(1) {
            self.icmp_window = (now, 0);
        }
        if self.icmp_window.1 >= ICMP_PER_SECOND {
            return;
        }
        self.icmp_window.1 += 1;
        let original = &self.tx_buf[HEADROOM..HEADROOM + n];
        // Answer from the unreachable address itself: it is routed to the tun (so reverse-path filters
        // accept the reply) and, unlike our own <subnet>.0, not local (which the kernel would drop as martian).
        let Some(router) = ipv4::parse(original).map(|i| i.dst) else {
            return;
        };
        if let Some(len) = icmp_unreachable(original, router, Unreachable::Net, &mut self.icmp_buf)
        {
            let _ = self.tun.send(&self.icmp_buf[..len]);
        }
    }

    /// Receives up to WORK_LIMIT datagrams, checks them and writes the good ones to the tun. Returns
    /// true if the limit was reached.
    fn inbound_batch(&mut self) -> bool {
        let routes = self.shared.routes.snapshot();
        let own = self.cfg.own_subnet;
        let mtu = self.cfg.mtu as usize;
        let mut handled = 0;
        while handled < WORK_LIMIT {
            let count = {
                let mut slices: [IoSliceMut<'_>; RX_BATCH] = {
                    let mut it = self.rx_bufs.iter_mut();
                    std::array::from_fn(|_| IoSliceMut::new(it.next().expect("RX_BATCH buffers")))
                };
                match self.io.recv(&mut slices, &mut self.rx_meta) {
                    Ok(c) => c,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => {
                        self.log_error(&format!("receiving from the underlay failed: {e}"));
                        return false;
                    }
                }
            };
            handled += count;
            let rx = Inbound {
                own,
                encap: self.cfg.encap,
                mtu,
            };
            let (tun, counters) = (&self.tun, &self.counters);
            for (meta, buf) in self.rx_meta[..count].iter().zip(self.rx_bufs.iter_mut()) {
                let IpAddr::V4(src) = meta.addr.ip() else {
                    counters.dropped(DropReason::UnknownSender);
                    continue;
                };
                let stride = meta.stride.max(1);
                for payload in buf[..meta.len].chunks_mut(stride) {
                    let r =
                        rx.receive(&routes, src, payload, &mut self.seg_buf, |packet| match tun
                            .send(packet)
                        {
                            Ok(_) => counters.rx(packet.len()),
                            Err(_) => counters.dropped(DropReason::IoError),
                        });
                    if let Err(reason) = r {
                        counters.dropped(reason);
                    }
                }
            }
        }
        true
    }
}
