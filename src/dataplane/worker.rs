//! One data-plane worker: its own tun queue and underlay, buffers allocated once, packets moved in batches;
//! with offloads, TSO reads leave as one UDP GSO send and GRO receives enter as one tun write.

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use tracing::warn;
use tun_rs::SyncDevice;

use super::spin::SpinBudget;
use super::underlay::{DatagramSink, Sent, Underlay, MAX_PACKET, MAX_SOURCES};
use super::DataPlaneConfig;
use crate::ops::metrics::WorkerCounters;
use crate::routes::{RouteSnapshot, RouteTable};
use crate::wire::batch::SmallBatch;
use crate::wire::gso::{
    train_from_tun, Coalescer, VnetHdr, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, VNET_HDR_LEN,
};
use crate::wire::icmpv6::{icmpv6_unreachable, Unreachable6};
use crate::wire::inbound::Inbound;
use crate::wire::ipv4::{icmp_unreachable, Unreachable};
use crate::wire::ipv6;
use crate::wire::outbound::{Action, Outbound};
use crate::wire::segment::split_headers;
use crate::wire::DropReason;
use crate::wireguard::node::{DATA_OVERHEAD, HANDSHAKE_INIT_LEN};
use crate::wireguard::Node;

/// Room in front of a packet read from the tun for the encapsulation headers (plain path).
const HEADROOM: usize = 64;
/// A segmented super-packet: up to 64 KiB of payload plus per-segment headers and encapsulation.
const TRAIN_BYTES: usize = 2 * MAX_PACKET;
/// Packets handled from one side before looking at the other, so neither direction starves.
const WORK_LIMIT: usize = 64;
/// ICMP destination-unreachable replies per worker per second.
const ICMP_PER_SECOND: u32 = 100;

pub struct Worker<U> {
    cfg: DataPlaneConfig,
    tun: SyncDevice,
    /// The UDP sockets, or AF_XDP beside them.
    underlay: U,
    routes: Arc<RouteTable>,
    counters: Arc<WorkerCounters>,
    stop: Arc<AtomicBool>,
    /// The tun device carries virtio-net headers (TSO reads, GSO writes).
    vnet: bool,
    /// Decides what becomes of each packet read from the tun.
    outbound: Outbound,
    tx_buf: Vec<u8>,
    /// The train being sent: a segmented super-packet, or the small datagrams `batch` gathers.
    train: Vec<u8>,
    batch: SmallBatch,
    /// The per-segment headers of a super-packet being sent (its payload stays in `tx_buf`).
    heads: Vec<u8>,
    icmp_buf: Vec<u8>,
    seg_buf: Vec<u8>,
    coalescer: Coalescer,
    icmp_window: (Instant, u32),
    spin: SpinBudget,
    last_error_log: Option<Instant>,
    /// The WireGuard nodes (wireguard backend), IPv4's and IPv6's: packets are sealed for, and opened
    /// from, their peers.
    wg: Option<Arc<Node>>,
    wg6: Option<Arc<Node>>,
    /// A sealed train (WireGuard).
    sealed: Vec<u8>,
    /// Handshake answers and cookies to send after a receive batch (WireGuard).
    replies: Vec<(SocketAddr, Vec<u8>)>,
}

impl<U: Underlay> Worker<U> {
    /// The network's backend is wireguard.
    #[inline]
    fn is_wg(&self) -> bool {
        matches!(self.cfg.encap, crate::wire::inbound::Encap::WireGuard)
    }

    pub fn new(
        cfg: DataPlaneConfig,
        tun: SyncDevice,
        underlay: U,
        routes: Arc<RouteTable>,
        counters: Arc<WorkerCounters>,
        stop: Arc<AtomicBool>,
    ) -> Self {
        const { assert!(U::SOURCES <= MAX_SOURCES) };
        let vnet = tun.tcp_gso();
        // A train of up to 64 KiB of packets, each with its 32 bytes of WireGuard, and room for a
        // handshake initiation.
        let sealed = match cfg.wireguard.is_some() || cfg.wireguard6.is_some() {
            true => vec![0; 2 * TRAIN_BYTES + HANDSHAKE_INIT_LEN],
            false => Vec::new(),
        };
        let (wg, wg6) = (cfg.wireguard.clone(), cfg.wireguard6.clone());
        Worker {
            coalescer: Coalescer::new(cfg.mtu as usize),
            outbound: Outbound { encap: cfg.encap },
            cfg,
            tun,
            underlay,
            routes,
            counters,
            stop,
            vnet,
            tx_buf: vec![0; HEADROOM + MAX_PACKET + VNET_HDR_LEN],
            train: vec![0; TRAIN_BYTES],
            batch: SmallBatch::default(),
            heads: vec![0; TRAIN_BYTES],
            // An ICMPv6 error may be as large as the IPv6 minimum MTU.
            icmp_buf: vec![0; VNET_HDR_LEN + ipv6::MIN_MTU],
            seg_buf: vec![0; MAX_PACKET],
            icmp_window: (Instant::now(), 0),
            spin: SpinBudget::new(Instant::now()),
            last_error_log: None,
            sealed,
            wg,
            wg6,
            replies: Vec::new(),
        }
    }

    /// Runs until the stop flag is set.
    pub fn run(mut self) {
        while !self.stop.load(Ordering::Relaxed) {
            // The tun, then each of the underlay's receive sources.
            let sources = self.underlay.sources();
            let ready = {
                let mut fds: [PollFd<'_>; 1 + MAX_SOURCES] = std::array::from_fn(|i| {
                    // Entries past the underlay's sources are placeholders, not polled.
                    let fd = if (1..=sources).contains(&i) {
                        self.underlay.poll_fd(i - 1)
                    } else {
                        self.tun.as_fd()
                    };
                    PollFd::new(fd, PollFlags::POLLIN)
                });
                let fds = &mut fds[..=sources];
                match nix::poll::poll(fds, PollTimeout::from(100u16)) {
                    Ok(0) => continue,
                    Ok(_) => {
                        let mut ready = [false; 1 + MAX_SOURCES];
                        for (r, fd) in ready.iter_mut().zip(fds.iter()) {
                            *r = fd.revents().is_some_and(|r| !r.is_empty());
                        }
                        ready
                    }
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
                for s in 0..sources {
                    if ready[1 + s] {
                        busy |= self.inbound_batch(s);
                    }
                }
            }
            self.busy_poll();
        }
    }

    /// After traffic, keeps polling both sides without sleeping for a short while: the answer to what
    /// was just forwarded usually comes back within tens of microseconds, and catching it here saves
    /// a thread wakeup (most of a userspace tunnel's added latency). Bounded in CPU by `SpinBudget`.
    fn busy_poll(&mut self) {
        if self.cfg.busy_poll.is_zero() {
            return;
        }
        let start = Instant::now();
        let allowed = start + self.spin.allowance(start);
        let mut until = (start + self.cfg.busy_poll).min(allowed);
        let mut now = start;
        while now < until && !self.stop.load(Ordering::Relaxed) {
            let before = self.activity();
            self.outbound_batch();
            for s in 0..self.underlay.sources() {
                self.inbound_batch(s);
            }
            now = Instant::now();
            if self.activity() != before {
                until = (now + self.cfg.busy_poll).min(allowed);
            } else {
                std::thread::yield_now();
            }
        }
        self.spin.spend(now.saturating_duration_since(start));
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
        self.send_batch();
        self.underlay.flush();
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
        let e = match self.outbound.route(packet, routes) {
            Action::Send(e) => e,
            Action::Unreachable { reason, code, from } => {
                self.counters.dropped(reason);
                self.reply_unreachable(len, code, from);
                return;
            }
            Action::Unreachable6 { reason, from } => {
                self.counters.dropped(reason);
                self.reply_unreachable6(len, from);
                return;
            }
            Action::Drop(reason) => {
                self.counters.dropped(reason);
                return;
            }
        };
        let dst = e.dst;
        let (flow, prefix) = (e.flow, e.prefix());
        if !self.vnet && self.is_wg() {
            let sent = self.seal_and_send(flow, dst, Plain::TxBuf, len, len);
            self.count_sent(sent, dst, DATA_OVERHEAD);
            return;
        }
        if !self.vnet {
            let start = HEADROOM - prefix;
            if let Some(t) = e.vxlan {
                t.write(&mut self.tx_buf, start);
            }
            let sent = self
                .underlay
                .send(flow, dst, &self.tx_buf[start..HEADROOM + len]);
            self.count_sent(sent, dst, prefix);
            return;
        }
        let hdr =
            VnetHdr::parse(&self.tx_buf[HEADROOM - VNET_HDR_LEN..HEADROOM]).unwrap_or_default();
        if hdr.gso_type & 0x7f == GSO_NONE {
            // A small packet: gathered with the ones before it to the same peer and flow, sent at the
            // end of the read batch (or when one that cannot join comes).
            let size = prefix + len;
            let at = match self.batch.slot(dst, flow, size, self.train.len()) {
                Some(at) => at,
                None => {
                    self.send_batch();
                    match self.batch.slot(dst, flow, size, self.train.len()) {
                        Some(at) => at,
                        None => {
                            self.counters.dropped(DropReason::TooBig);
                            return;
                        }
                    }
                }
            };
            let packet = &self.tx_buf[HEADROOM..HEADROOM + len];
            if train_from_tun(&hdr, packet, prefix, &mut self.train[at..at + size]).is_err() {
                self.counters.dropped(DropReason::TooBig);
                return;
            }
            if let Some(t) = e.vxlan {
                t.write(&mut self.train, at);
            }
            self.batch.commit(dst, flow, size);
            return;
        }
        // A super-packet: whatever is gathered leaves first (it may be of the same flow), then its
        // segments: headers built apart, payload sent from the read buffer (no copy here).
        self.send_batch();
        let packet = &self.tx_buf[HEADROOM..HEADROOM + len];
        let udp = match hdr.gso_type & 0x7f {
            GSO_TCPV4 | GSO_TCPV6 => false,
            GSO_UDP_L4 => true,
            _ => {
                self.counters.dropped(DropReason::TooBig);
                return;
            }
        };
        let vxlan = e.vxlan.map(|t| *t.bytes());
        let prefix_bytes: &[u8] = vxlan.as_ref().map_or(&[], |b| &b[..]);
        let gso_size = usize::from(hdr.gso_size);
        let split = match split_headers(packet, gso_size, udp, prefix_bytes, &mut self.heads) {
            Ok(s) => s,
            Err(_) => {
                self.counters.dropped(DropReason::TooBig);
                return;
            }
        };
        if matches!(self.cfg.encap, crate::wire::inbound::Encap::WireGuard) {
            let Some(t) = split.assemble(&mut self.train) else {
                self.counters.dropped(DropReason::TooBig);
                return;
            };
            let sent = self.seal_and_send(flow, dst, Plain::Train, t.len, t.stride);
            self.count_sent(sent, dst, DATA_OVERHEAD);
            return;
        }
        let sent = self.underlay.send_split(flow, dst, &split, &mut self.train);
        self.count_sent(sent, dst, prefix);
    }

    /// WireGuard: seals the plain packets (`len` bytes, `stride` apart, in `from`) for the peer at `dst`
    /// and sends the sealed train; a handshake initiation, when the session is not up yet, goes alone.
    fn seal_and_send(
        &mut self,
        flow: u32,
        dst: IpAddr,
        from: Plain,
        len: usize,
        stride: usize,
    ) -> Sent {
        let Worker {
            wg,
            wg6,
            underlay,
            sealed,
            tx_buf,
            train,
            counters,
            ..
        } = self;
        // Each family's peers belong to that family's node (flannel's flannel-wg and flannel-wg-v6).
        let v6 = dst.is_ipv6();
        let Some(node) = (if v6 { wg6 } else { wg }).as_deref() else {
            counters.dropped(DropReason::UnderlayFamily);
            return Sent::default();
        };
        let plain = match from {
            Plain::TxBuf => &tx_buf[HEADROOM..HEADROOM + len],
            Plain::Train => &train[..len],
        };
        // The handshake initiation goes to the peer's address on the network's port, as all sends do.
        let mut seal = |sealed: &mut [u8]| {
            node.seal(dst, plain, stride, sealed, |ep, m| {
                let _ = underlay.send(flow, ep.ip(), m);
            })
        };
        let mut r = seal(sealed);
        if r == Err(DropReason::UnsupportedPeer)
            && super::wg_sync_if_stale(node, &self.routes.load(), v6)
        {
            // The peer's lease came after the last sync.
            r = seal(sealed);
        }
        let sealed_len = match r {
            Ok(n) => n,
            Err(reason) => {
                counters.dropped(reason);
                return Sent::default();
            }
        };
        if sealed_len == 0 {
            return Sent::default();
        }
        underlay.send_train(flow, dst, &sealed[..sealed_len], stride + DATA_OVERHEAD)
    }

    /// Sends the small datagrams gathered so far, as one train.
    fn send_batch(&mut self) {
        let Some((dst, flow, train)) = self.batch.take() else {
            return;
        };
        if self.is_wg() {
            let sent = self.seal_and_send(flow, dst, Plain::Train, train.len, train.stride);
            self.count_sent(sent, dst, DATA_OVERHEAD);
            return;
        }
        let prefix = self.cfg.encap.prefix();
        let sent = self
            .underlay
            .send_train(flow, dst, &self.train[..train.len], train.stride);
        self.count_sent(sent, dst, prefix);
    }

    /// Counts what a send to `dst` did: datagrams out (their inner bytes, without the `prefix` bytes of
    /// encapsulation each), failures as I/O-error drops, and logs a failure's error.
    fn count_sent(&mut self, sent: Sent, dst: IpAddr, prefix: usize) {
        let c = &self.counters;
        if sent.datagrams > 0 {
            c.tx_packets
                .fetch_add(sent.datagrams as u64, Ordering::Relaxed);
            c.tx_bytes.fetch_add(
                (sent.bytes - sent.datagrams * prefix) as u64,
                Ordering::Relaxed,
            );
        }
        for _ in 0..sent.failed {
            c.dropped(DropReason::IoError);
        }
        if let Some(e) = sent.error {
            let dst = SocketAddr::new(dst, self.cfg.port);
            self.log_error(|| format!("sending to {dst} failed: {e}"));
        }
    }

    /// Writes an ICMP destination-unreachable `code` from `from` about the packet in tx_buf back into the
    /// tun (rate-limited).
    fn reply_unreachable(&mut self, n: usize, code: Unreachable, from: Ipv4Addr) {
        if !self.icmp_allowed() {
            return;
        }
        let original = &self.tx_buf[HEADROOM..HEADROOM + n];
        let off = if self.vnet { VNET_HDR_LEN } else { 0 };
        self.icmp_buf[..off].fill(0);
        if let Some(len) = icmp_unreachable(original, from, code, &mut self.icmp_buf[off..]) {
            let _ = self.tun.send(&self.icmp_buf[..off + len]);
        }
    }

    /// Writes an ICMPv6 destination-unreachable (no route) from `from` about the IPv6 packet in tx_buf
    /// back into the tun (rate-limited with the ICMP replies).
    fn reply_unreachable6(&mut self, n: usize, from: Ipv6Addr) {
        if !self.icmp_allowed() {
            return;
        }
        let original = &self.tx_buf[HEADROOM..HEADROOM + n];
        let off = if self.vnet { VNET_HDR_LEN } else { 0 };
        self.icmp_buf[..off].fill(0);
        let out = &mut self.icmp_buf[off..];
        if let Some(len) = icmpv6_unreachable(original, from, Unreachable6::NoRoute, out) {
            let _ = self.tun.send(&self.icmp_buf[..off + len]);
        }
    }

    /// Whether one more ICMP or ICMPv6 reply fits this second's budget (and counts it if so).
    fn icmp_allowed(&mut self) -> bool {
        let now = Instant::now();
        if now.duration_since(self.icmp_window.0) >= Duration::from_secs(1) {
            self.icmp_window = (now, 0);
        }
        if self.icmp_window.1 >= ICMP_PER_SECOND {
            return false;
        }
        self.icmp_window.1 += 1;
        true
    }

    /// Receives up to WORK_LIMIT datagrams from the underlay's receive source `source`, checks them and
    /// writes the good ones to the tun (coalesced into GSO frames when the tun takes them). Returns true
    /// if the limit was reached.
    fn inbound_batch(&mut self, source: usize) -> bool {
        let routes = self.routes.snapshot();
        let rx = Inbound {
            own: self.cfg.own_subnet,
            own6: self.cfg.own_subnet6,
            encap: self.cfg.encap,
            mtu: self.cfg.mtu as usize,
            tun_offload: self.vnet,
        };
        let Worker {
            tun,
            underlay,
            counters,
            seg_buf,
            coalescer,
            vnet,
            wg,
            wg6,
            replies,
            ..
        } = self;
        let mut sink = TunSink {
            rx: &rx,
            routes: &routes,
            tun,
            counters,
            coalescer,
            scratch: seg_buf,
            vnet: *vnet,
            wg: wg.as_deref(),
            wg6: wg6.as_deref(),
            replies,
            snap: &routes,
        };
        let r = underlay.recv(source, WORK_LIMIT, &mut sink);
        for (to, m) in self.replies.drain(..) {
            let _ = self.underlay.send(0, to.ip(), &m);
        }
        match r {
            Ok(more) => more,
            Err(e) => {
                self.log_error(|| format!("receiving from the underlay failed: {e}"));
                false
            }
        }
    }
}

/// Where the plain packets to seal are (WireGuard).
#[derive(Clone, Copy)]
enum Plain {
    /// The packet read from the tun, at `HEADROOM`.
    TxBuf,
    /// The train laid out in `train`.
    Train,
}

impl<U: Underlay> Worker<U> {}

/// Where inbound datagrams go: through the inbound checks to the tun, through the GRO coalescer when
/// the tun takes GSO frames.
struct TunSink<'a> {
    rx: &'a Inbound,
    routes: &'a RouteSnapshot,
    tun: &'a SyncDevice,
    counters: &'a WorkerCounters,
    coalescer: &'a mut Coalescer,
    /// Holds segments of oversized TCP packets (and, for WireGuard, the opened packet).
    scratch: &'a mut [u8],
    vnet: bool,
    wg: Option<&'a Node>,
    wg6: Option<&'a Node>,
    replies: &'a mut Vec<(SocketAddr, Vec<u8>)>,
    /// The route snapshot `routes` is, as the WireGuard node tags its peer syncs.
    snap: &'a Arc<crate::routes::RouteSnapshot>,
}

impl TunSink<'_> {
    fn deliver(
        tun: &SyncDevice,
        counters: &WorkerCounters,
        coalescer: &mut Coalescer,
        vnet: bool,
        packet: &[u8],
    ) {
        counters.rx(packet.len());
        if vnet {
            coalescer.push(packet, &mut |f: &[u8]| write_tun(tun, counters, f));
        } else {
            write_tun(tun, counters, packet);
        }
    }
}

impl DatagramSink for TunSink<'_> {
    /// Runs one datagram through the inbound checks and delivers what it yields; drops are counted by
    /// reason.
    #[inline]
    fn datagram(&mut self, src: IpAddr, payload: &mut [u8]) {
        let (tun, counters, vnet) = (self.tun, self.counters, self.vnet);
        let coalescer = &mut *self.coalescer;
        if matches!(self.rx.encap, crate::wire::inbound::Encap::WireGuard) {
            // Each family's datagrams belong to that family's node (flannel's flannel-wg, flannel-wg-v6).
            let v6 = src.is_ipv6();
            let Some(node) = (if v6 { self.wg6 } else { self.wg }) else {
                counters.dropped(DropReason::UnderlayFamily);
                return;
            };
            let (own, own6, mtu) = (self.rx.own, self.rx.own6, self.rx.mtu);
            let replies = &mut *self.replies;
            for attempt in 0..2 {
                let r = node.open(
                    src,
                    payload,
                    self.scratch,
                    |to, m| replies.push((to, m.to_vec())),
                    |packet| {
                        let len = opened_for_us(packet, own, own6)?;
                        let packet = &mut packet[..len];
                        if !vnet && packet.len() > mtu {
                            return Err(DropReason::TooBig);
                        }
                        Self::deliver(tun, counters, coalescer, vnet, packet);
                        Ok(())
                    },
                );
                match r {
                    // A handshake from a peer whose lease came after the last sync.
                    Err(DropReason::WgUnknownKey)
                        if attempt == 0 && super::wg_sync_if_stale(node, self.snap, v6) => {}
                    Err(reason) => {
                        counters.dropped(reason);
                        return;
                    }
                    Ok(()) => return,
                }
            }
            return;
        }
        let r = self
            .rx
            .receive(self.routes, src, payload, self.scratch, |packet| {
                Self::deliver(tun, counters, coalescer, vnet, packet)
            });
        if let Err(reason) = r {
            counters.dropped(reason);
        }
    }

    fn dropped(&mut self, reason: DropReason) {
        self.counters.dropped(reason);
    }

    /// Writes what the coalescer still holds.
    fn flush(&mut self) {
        let (tun, counters) = (self.tun, self.counters);
        self.coalescer
            .flush(&mut |f: &[u8]| write_tun(tun, counters, f));
    }
}

/// The length of an opened WireGuard packet addressed to this host (its IPv4 destination in `own`, its
/// IPv6 one in `own6`), without any padding after it.
fn opened_for_us(
    packet: &[u8],
    own: Option<ipnet::Ipv4Net>,
    own6: Option<ipnet::Ipv6Net>,
) -> Result<usize, DropReason> {
    if packet.first().is_some_and(|b| b >> 4 == 6) {
        let ip = ipv6::parse(packet).ok_or(DropReason::Truncated)?;
        if !own6.is_some_and(|o| o.contains(&ip.dst)) {
            return Err(DropReason::NotForUs);
        }
        return Ok(ip.total_len);
    }
    let ip = crate::wire::ipv4::parse(packet).ok_or(DropReason::Truncated)?;
    if !own.is_some_and(|o| o.contains(&ip.dst)) {
        return Err(DropReason::NotForUs);
    }
    Ok(ip.total_len)
}

fn write_tun(tun: &SyncDevice, counters: &WorkerCounters, frame: &[u8]) {
    if tun.send(frame).is_err() {
        counters.dropped(DropReason::IoError);
    }
}
