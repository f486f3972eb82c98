//! One data-plane worker: its own tun queue and sockets, buffers allocated once, packets moved in batches;
//! with offloads, TSO reads leave as one UDP GSO send and GRO receives enter as one tun write.

use std::io::{ErrorKind, IoSliceMut};
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use quinn_udp::RecvMeta;
use tracing::{info, warn};
use tun_rs::SyncDevice;

use super::afxdp::{XdpIo, XdpSend};
use super::sock::WorkerSockets;
use super::{DataPlaneConfig, Encap};
use crate::ops::metrics::{DropReason, WorkerCounters};
use crate::routes::RouteTable;
use crate::routes::{PeerBackend, RouteSnapshot};
use crate::wire::flow::flow_hash;
use crate::wire::gso::{train_from_tun, Coalescer, VnetHdr, VNET_HDR_LEN};
use crate::wire::inbound::{datagram_units, Inbound};
use crate::wire::ipv4::{self, icmp_unreachable, Unreachable};
use crate::wire::outer::parse_udp_frame;
use crate::wire::segment::Train;
use crate::wire::vxlan::{VxlanTemplate, VXLAN_ENCAP};

/// Room in front of a packet read from the tun for the encapsulation headers (plain path).
const HEADROOM: usize = 64;
/// Largest packet a tun read or a (GRO-coalesced) UDP receive can return.
const MAX_PACKET: usize = 65_536;
/// A segmented super-packet: up to 64 KiB of payload plus per-segment headers and encapsulation.
const TRAIN_BYTES: usize = 2 * MAX_PACKET;
/// UDP payload bytes one GSO send may carry (the IPv4 length field's limit, less the headers).
const MAX_GSO_BYTES: usize = 65_507 - 8;
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
    /// The AF_XDP socket this worker sends and receives whole frames on, if the underlay uses AF_XDP.
    xdp: Option<XdpIo>,
    routes: Arc<RouteTable>,
    counters: Arc<WorkerCounters>,
    stop: Arc<AtomicBool>,
    /// The tun device carries virtio-net headers (TSO reads, GSO writes).
    vnet: bool,
    /// UDP GSO sends are in use (turned off at run time if the kernel refuses one).
    gso: bool,
    rx_batch: usize,
    tx_buf: Vec<u8>,
    train: Vec<u8>,
    rx_bufs: Vec<Vec<u8>>,
    rx_meta: Vec<RecvMeta>,
    icmp_buf: Vec<u8>,
    seg_buf: Vec<u8>,
    coalescer: Coalescer,
    icmp_window: (Instant, u32),
    last_error_log: Option<Instant>,
}

impl Worker {
    pub fn new(
        cfg: DataPlaneConfig,
        tun: SyncDevice,
        io: WorkerSockets,
        xdp: Option<XdpIo>,
        routes: Arc<RouteTable>,
        counters: Arc<WorkerCounters>,
        stop: Arc<AtomicBool>,
    ) -> Self {
        let vnet = tun.tcp_gso();
        let gso = cfg.offload.udp_gso && io.max_gso_segments() > 1;
        if cfg.offload.udp_gso && !gso {
            info!("UDP GSO not available from the kernel; sending datagrams one by one");
        }
        let rx_batch = if cfg.batch { RX_BATCH } else { 1 };
        Worker {
            coalescer: Coalescer::new(cfg.mtu as usize),
            cfg,
            tun,
            io,
            xdp,
            routes,
            counters,
            stop,
            vnet,
            gso,
            rx_batch,
            tx_buf: vec![0; HEADROOM + MAX_PACKET + VNET_HDR_LEN],
            train: vec![0; TRAIN_BYTES],
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
                let xsk = match &self.xdp {
                    Some(x) => x.xsk.as_fd(),
                    None => self.io.rx_socket().as_fd(),
                };
                let mut fds = [
                    PollFd::new(self.tun.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.io.rx_socket().as_fd(), PollFlags::POLLIN),
                    PollFd::new(xsk, PollFlags::POLLIN),
                ];
                match nix::poll::poll(&mut fds, PollTimeout::from(100u16)) {
                    Ok(0) => continue,
                    Ok(_) => [
                        fds[0].revents().is_some_and(|r| !r.is_empty()),
                        fds[1].revents().is_some_and(|r| !r.is_empty()),
                        self.xdp.is_some() && fds[2].revents().is_some_and(|r| !r.is_empty()),
                    ],
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        self.log_error(|| format!("poll failed: {e}"));
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
                if ready[2] {
                    busy |= self.xdp_inbound_batch();
                }
            }
            self.busy_poll();
        }
    }

    /// After traffic, keeps polling both sides without sleeping for a short while: the answer to what
    /// was just forwarded usually comes back within tens of microseconds, and catching it here saves
    /// a thread wakeup (most of a userspace tunnel's added latency).
    fn busy_poll(&mut self) {
        if self.cfg.busy_poll.is_zero() {
            return;
        }
        let mut until = Instant::now() + self.cfg.busy_poll;
        while Instant::now() < until && !self.stop.load(Ordering::Relaxed) {
            let before = self.activity();
            self.outbound_batch();
            self.inbound_batch();
            if self.xdp.is_some() {
                self.xdp_inbound_batch();
            }
            if self.activity() != before {
                until = Instant::now() + self.cfg.busy_poll;
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// A number that changes whenever a packet moved or was dropped.
    fn activity(&self) -> u64 {
        let c = &self.counters;
        c.tx_packets.load(Ordering::Relaxed)
            + c.rx_packets.load(Ordering::Relaxed)
            + c.drops
                .iter()
                .map(|d| d.load(Ordering::Relaxed))
                .sum::<u64>()
    }

    /// Logs an I/O error at most once a minute; the message is only built when it is logged.
    fn log_error(&mut self, msg: impl FnOnce() -> String) {
        let now = Instant::now();
        if self
            .last_error_log
            .is_none_or(|t| now.duration_since(t) > Duration::from_secs(60))
        {
            self.last_error_log = Some(now);
            warn!(
                "data plane: {} (further such errors are counted in /metrics, logged once a minute)",
                msg()
            );
        }
    }

    /// Reads up to WORK_LIMIT packets from the tun and sends them to their peers. Returns true if the
    /// limit was reached (more may be waiting).
    fn outbound_batch(&mut self) -> bool {
        let more = self.outbound_packets();
        if let Some(x) = &mut self.xdp {
            x.xsk.flush();
        }
        more
    }

    fn outbound_packets(&mut self) -> bool {
        let routes = self.routes.snapshot();
        let limit = if self.cfg.batch { WORK_LIMIT } else { 1 };
        for _ in 0..limit {
            let start = if self.vnet {
                HEADROOM - VNET_HDR_LEN
            } else {
                HEADROOM
            };
            let n = match self.tun.recv(&mut self.tx_buf[start..]) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.log_error(|| format!("reading the tun device failed: {e}"));
                    return false;
                }
            };
            if n < start.abs_diff(HEADROOM) {
                self.counters.dropped(DropReason::Truncated);
                continue;
            }
            let len = n - (HEADROOM - start);
            self.forward(&routes, len);
        }
        true
    }

    /// Sends the packet at `tx_buf[HEADROOM..HEADROOM + len]` (virtio-net header before it when `vnet`).
    fn forward(&mut self, routes: &RouteSnapshot, len: usize) {
        let packet = &self.tx_buf[HEADROOM..HEADROOM + len];
        let Some(ip) = ipv4::parse(packet) else {
            let reason = if packet.first().is_some_and(|b| b >> 4 != 4) {
                DropReason::NotIpv4
            } else {
                DropReason::Truncated
            };
            self.counters.dropped(reason);
            return;
        };
        let Some(peer) = routes.lookup(ip.dst) else {
            self.counters.dropped(DropReason::NoRoute);
            self.reply_unreachable(len);
            return;
        };
        let template = match (self.cfg.encap, peer.backend) {
            (Encap::Vxlan { vni, mac }, PeerBackend::Vxlan { vtep_mac, .. }) => {
                Some(VxlanTemplate::new(vni, vtep_mac, mac))
            }
            (Encap::Udp, PeerBackend::Udp) => None,
            _ => {
                self.counters.dropped(DropReason::UnsupportedPeer);
                return;
            }
        };
        let flow = flow_hash(packet);
        let dst = SocketAddr::V4(SocketAddrV4::new(peer.public_ip, self.cfg.port));
        let prefix = if template.is_some() { VXLAN_ENCAP } else { 0 };
        if !self.vnet {
            let start = HEADROOM - prefix;
            if let Some(t) = template {
                t.write(&mut self.tx_buf, start);
            }
            if let Some(x) = &mut self.xdp {
                let d = &self.tx_buf[start..HEADROOM + len];
                if send_via_xdp(x, &self.counters, flow, peer.public_ip, d, d.len(), prefix) {
                    return;
                }
            }
            match self
                .io
                .send(flow, dst, &self.tx_buf[start..HEADROOM + len], None)
            {
                Ok(()) => self.counters.tx(len),
                Err(e) => self.send_failed(dst, &e),
            }
            return;
        }
        let hdr =
            VnetHdr::parse(&self.tx_buf[HEADROOM - VNET_HDR_LEN..HEADROOM]).unwrap_or_default();
        let train = match train_from_tun(
            &hdr,
            &self.tx_buf[HEADROOM..HEADROOM + len],
            prefix,
            &mut self.train,
        ) {
            Ok(t) => t,
            Err(_) => {
                self.counters.dropped(DropReason::TooBig);
                return;
            }
        };
        if let Some(t) = template {
            for i in 0..train.count {
                t.write(&mut self.train, i * train.stride);
            }
        }
        self.send_train(flow, dst, train, prefix);
    }

    /// Sends a train of datagrams: one UDP GSO send per `max_gso_segments`, or one by one.
    fn send_train(&mut self, flow: u32, dst: SocketAddr, t: Train, prefix: usize) {
        let inner = |bytes: usize, units: usize| bytes - units * prefix;
        if let (Some(x), IpAddr::V4(ip)) = (&mut self.xdp, dst.ip()) {
            if send_via_xdp(
                x,
                &self.counters,
                flow,
                ip,
                &self.train[..t.len],
                t.stride,
                prefix,
            ) {
                return;
            }
        }
        if self.gso && t.count > 1 {
            // One send carries at most 64 KiB of UDP payload (and the kernel's segment limit).
            let max = self
                .io
                .max_gso_segments()
                .min(MAX_GSO_BYTES / t.stride)
                .max(1);
            let mut i = 0;
            while i < t.count {
                let n = max.min(t.count - i);
                let end = ((i + n) * t.stride).min(t.len);
                let chunk = &self.train[i * t.stride..end];
                match self.io.send(flow, dst, chunk, Some(t.stride)) {
                    Ok(()) => {
                        for _ in 0..n - 1 {
                            self.counters.tx(t.stride - prefix);
                        }
                        self.counters.tx(inner(chunk.len() - (n - 1) * t.stride, 1));
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                        // The device cannot checksum GSO trains: send one by one from now on.
                        info!("UDP GSO refused by the kernel ({e}); sending datagrams one by one");
                        self.gso = false;
                        break;
                    }
                    Err(e) => self.send_failed(dst, &e),
                }
                i += n;
            }
            if self.gso {
                return;
            }
        }
        for i in 0..t.count {
            let end = ((i + 1) * t.stride).min(t.len);
            match self
                .io
                .send(flow, dst, &self.train[i * t.stride..end], None)
            {
                Ok(()) => self.counters.tx(end - i * t.stride - prefix),
                Err(e) => self.send_failed(dst, &e),
            }
        }
    }

    fn send_failed(&mut self, dst: SocketAddr, e: &std::io::Error) {
        self.counters.dropped(DropReason::IoError);
        self.log_error(|| format!("sending to {dst} failed: {e}"));
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
        let off = if self.vnet { VNET_HDR_LEN } else { 0 };
        self.icmp_buf[..off].fill(0);
        if let Some(len) = icmp_unreachable(
            original,
            router,
            Unreachable::Net,
            &mut self.icmp_buf[off..],
        ) {
            let _ = self.tun.send(&self.icmp_buf[..off + len]);
        }
    }

    /// Receives up to WORK_LIMIT frames from the AF_XDP socket, checks them and writes the good ones to
    /// the tun, as `inbound_batch` does for the UDP socket. Returns true if the limit was reached.
    fn xdp_inbound_batch(&mut self) -> bool {
        let routes = self.routes.snapshot();
        let rx = Inbound {
            own: self.cfg.own_subnet,
            encap: self.cfg.encap,
            mtu: self.cfg.mtu as usize,
            tun_offload: self.vnet,
        };
        let (local, port) = (self.cfg.local_ip, self.cfg.port);
        let Worker {
            tun,
            counters,
            seg_buf,
            coalescer,
            vnet,
            xdp,
            ..
        } = self;
        let Some(x) = xdp else { return false };
        let counters: &WorkerCounters = counters;
        let mut sink = TunSink {
            tun,
            counters,
            coalescer,
            vnet: *vnet,
        };
        let n = x.xsk.recv(WORK_LIMIT as u32, |frame| {
            counters.xdp_rx_frames.fetch_add(1, Ordering::Relaxed);
            // The XDP program only passes frames to our address and port; anything else is malformed.
            let Some(u) = parse_udp_frame(frame).filter(|u| u.dst == local && u.dst_port == port)
            else {
                counters.dropped(DropReason::Truncated);
                return;
            };
            sink.receive(&rx, &routes, u.src, &mut frame[u.start..u.end], seg_buf);
        });
        sink.flush();
        n as usize >= WORK_LIMIT
    }

    /// Receives up to WORK_LIMIT datagrams, checks them and writes the good ones to the tun (coalesced
    /// into GSO frames when the tun takes them). Returns true if the limit was reached.
    fn inbound_batch(&mut self) -> bool {
        let routes = self.routes.snapshot();
        let mtu = self.cfg.mtu as usize;
        let rx = Inbound {
            own: self.cfg.own_subnet,
            encap: self.cfg.encap,
            mtu,
            tun_offload: self.vnet,
        };
        let prefix = match self.cfg.encap {
            Encap::Vxlan { .. } => VXLAN_ENCAP,
            Encap::Udp => 0,
        };
        let mut handled = 0;
        while handled < WORK_LIMIT {
            let count = {
                let mut it = self.rx_bufs.iter_mut();
                let mut slices: [IoSliceMut<'_>; RX_BATCH] =
                    std::array::from_fn(|_| IoSliceMut::new(it.next().expect("RX_BATCH buffers")));
                match self.io.recv(
                    &mut slices[..self.rx_batch],
                    &mut self.rx_meta[..self.rx_batch],
                ) {
                    Ok(c) => c,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => {
                        self.log_error(|| format!("receiving from the underlay failed: {e}"));
                        return false;
                    }
                }
            };
            handled += count;
            let Worker {
                tun,
                counters,
                seg_buf,
                coalescer,
                rx_meta,
                rx_bufs,
                vnet,
                ..
            } = self;
            let mut sink = TunSink {
                tun,
                counters,
                coalescer,
                vnet: *vnet,
            };
            for (meta, buf) in rx_meta[..count].iter().zip(rx_bufs.iter_mut()) {
                let IpAddr::V4(src) = meta.addr.ip() else {
                    sink.counters.dropped(DropReason::UnknownSender);
                    continue;
                };
                let stride = datagram_units(&buf[..meta.len], meta.stride, prefix);
                for payload in buf[..meta.len].chunks_mut(stride) {
                    sink.receive(&rx, &routes, src, payload, seg_buf);
                }
            }
            sink.flush();
        }
        true
    }
}

/// Sends `buf` (datagrams of `stride` bytes, each with `prefix` bytes of encapsulation) to `dst` through
/// the worker's AF_XDP socket and counts it; false if it must go through the kernel's UDP socket instead.
fn send_via_xdp(
    x: &mut XdpIo,
    counters: &WorkerCounters,
    flow: u32,
    dst: std::net::Ipv4Addr,
    buf: &[u8],
    stride: usize,
    prefix: usize,
) -> bool {
    match x.send(flow, dst, buf, stride) {
        XdpSend::ViaKernel => {
            counters.xdp_via_kernel.fetch_add(1, Ordering::Relaxed);
            false
        }
        XdpSend::Queued { sent, dropped } => {
            counters
                .xdp_tx_frames
                .fetch_add(sent as u64, Ordering::Relaxed);
            for unit in buf.chunks(stride.max(1)).take(sent) {
                counters.tx(unit.len() - prefix);
            }
            for _ in 0..dropped {
                counters.dropped(DropReason::IoError);
            }
            true
        }
    }
}

/// Where inbound packets go: the tun, through the GRO coalescer when the tun takes GSO frames.
struct TunSink<'a> {
    tun: &'a SyncDevice,
    counters: &'a WorkerCounters,
    coalescer: &'a mut Coalescer,
    vnet: bool,
}

impl TunSink<'_> {
    /// Runs one datagram from underlay address `src` through the inbound checks and delivers what it
    /// yields; drops are counted by reason.
    fn receive(
        &mut self,
        rx: &Inbound,
        routes: &RouteSnapshot,
        src: std::net::Ipv4Addr,
        payload: &mut [u8],
        scratch: &mut [u8],
    ) {
        let r = rx.receive(routes, src, payload, scratch, |packet| {
            self.counters.rx(packet.len());
            self.deliver(packet);
        });
        if let Err(reason) = r {
            self.counters.dropped(reason);
        }
    }

    fn deliver(&mut self, packet: &[u8]) {
        let (tun, counters) = (self.tun, self.counters);
        if self.vnet {
            self.coalescer
                .push(packet, &mut |f: &[u8]| write_tun(tun, counters, f));
        } else {
            write_tun(tun, counters, packet);
        }
    }

    /// Writes what the coalescer still holds.
    fn flush(&mut self) {
        let (tun, counters) = (self.tun, self.counters);
        self.coalescer
            .flush(&mut |f: &[u8]| write_tun(tun, counters, f));
    }
}

fn write_tun(tun: &SyncDevice, counters: &WorkerCounters, frame: &[u8]) {
    if tun.send(frame).is_err() {
        counters.dropped(DropReason::IoError);
    }
}
