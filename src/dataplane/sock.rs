//! A worker's UDP sockets: one SO_REUSEPORT receive socket on the network's port and a few send sockets
//! whose distinct source ports carry the inner-flow hash, so receivers spread flows across their queues;
//! and the UDP-socket underlay over them (batched receives with GRO, GSO sends).

use std::io::{self, ErrorKind, IoSliceMut};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};

use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use socket2::{Domain, Protocol, Socket, Type};
use tracing::info;

use super::gather;
use super::underlay::{DatagramSink, Sent, Underlay, MAX_PACKET};
use super::{DataPlaneConfig, DataPlaneError};
use crate::wire::inbound::datagram_units;
use crate::wire::segment::Split;

/// Send sockets per worker: outer source ports that the inner-flow hash picks from.
pub const SEND_PORTS: usize = 8;
const BUFFER_BYTES: usize = 4 << 20;
/// Datagram buffers per receive batch.
const RX_BATCH: usize = 32;
/// UDP payload bytes one GSO send may carry (the IPv4 length field's limit, less the headers).
const MAX_GSO_BYTES: usize = 65_507 - 8;

pub struct WorkerSockets {
    rx: UdpSocket,
    rx_state: UdpSocketState,
    tx: Vec<(UdpSocket, UdpSocketState)>,
}

fn open(addr: SocketAddr, reuse_port: bool, nonblocking: bool) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // IPv4 has its own sockets.
        s.set_only_v6(true)?;
    }
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = s.set_recv_buffer_size(BUFFER_BYTES);
    let _ = s.set_send_buffer_size(BUFFER_BYTES);
    s.bind(&addr.into())?;
    s.set_nonblocking(nonblocking)?;
    Ok(s.into())
}

/// Turns UDP generic receive offload on or off for `sock`.
fn set_udp_gro(sock: &UdpSocket, on: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let v: libc::c_int = on.into();
    // SAFETY: the fd is a valid UDP socket for the call; the option value is a c_int we own, and its
    // size is passed alongside.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_GRO,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl WorkerSockets {
    /// Opens the receive socket on `local:port` (shared with the other workers through SO_REUSEPORT)
    /// and `SEND_PORTS` blocking send sockets on ephemeral ports; with `from_port`, sends leave from the
    /// receive socket instead (WireGuard peers answer to the port a message came from).
    pub fn open(
        local: IpAddr,
        port: u16,
        gro: bool,
        from_port: bool,
    ) -> Result<Self, DataPlaneError> {
        let addr = SocketAddr::new(local, port);
        let err = |source| DataPlaneError::Socket { addr, source };
        let rx = open(addr, true, true).map_err(err)?;
        let rx_state = UdpSocketState::new(UdpSockRef::from(&rx)).map_err(err)?;
        // quinn-udp turns UDP GRO on where the kernel has it; the receive path understands coalesced
        // trains (and UDP-tunnel super-packets). Off for comparison runs without offloads.
        if !gro {
            set_udp_gro(&rx, false).map_err(err)?;
        }
        let mut tx = Vec::with_capacity(SEND_PORTS);
        if from_port {
            // The same socket (a second descriptor): non-blocking, so a full send buffer is waited
            // out in `send`.
            let s = rx.try_clone().map_err(err)?;
            let st = UdpSocketState::new(UdpSockRef::from(&s)).map_err(err)?;
            tx.push((s, st));
        }
        while tx.len() < if from_port { 1 } else { SEND_PORTS } {
            let s = open(SocketAddr::new(local, 0), false, false).map_err(err)?;
            let st = UdpSocketState::new(UdpSockRef::from(&s)).map_err(err)?;
            tx.push((s, st));
        }
        Ok(WorkerSockets { rx, rx_state, tx })
    }

    pub fn rx_socket(&self) -> &UdpSocket {
        &self.rx
    }

    /// Receives a batch (recvmmsg, with UDP GRO when the kernel offers it); WouldBlock when empty.
    #[inline]
    pub fn recv(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> io::Result<usize> {
        self.rx_state.recv(UdpSockRef::from(&self.rx), bufs, meta)
    }

    /// Sends `payload` to `dst` from the send socket the flow hash selects: one datagram, or with
    /// `segment_size` a train of datagrams of that size (the last may be shorter) in one UDP GSO send.
    #[inline]
    pub fn send(
        &self,
        flow: u32,
        dst: SocketAddr,
        payload: &[u8],
        segment_size: Option<usize>,
    ) -> io::Result<()> {
        let (s, st) = &self.tx[flow as usize % self.tx.len()];
        let t = Transmit {
            destination: dst,
            ecn: None,
            contents: payload,
            segment_size,
            src_ip: None,
        };
        match st.try_send(UdpSockRef::from(s), &t) {
            // Only the non-blocking receive socket says this (sends from the listening port): wait
            // for room, as the blocking send sockets do, rather than drop.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut fds = [nix::poll::PollFd::new(
                    s.as_fd(),
                    nix::poll::PollFlags::POLLOUT,
                )];
                let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u8));
                st.try_send(UdpSockRef::from(s), &t)
            }
            r => r,
        }
    }

    /// The send socket the flow hash selects (its source port carries the flow).
    #[inline]
    pub fn tx_fd(&self, flow: u32) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.tx[flow as usize % self.tx.len()].0.as_raw_fd()
    }

    /// How many datagrams one GSO send may carry (1: no GSO).
    pub fn max_gso_segments(&self) -> usize {
        self.tx.first().map_or(1, |(_, st)| st.max_gso_segments())
    }
}

/// The UDP-socket underlay: a worker's sockets, its receive buffers and whether GSO sends are in use.
pub struct UdpUnderlay {
    socks: WorkerSockets,
    /// The IPv6 underlay's sockets, on a dual-stack network.
    socks6: Option<WorkerSockets>,
    /// The network's port, which peers receive on (IPv4, and IPv6's: they differ for WireGuard, whose
    /// IPv6 device listens on `ListenPortV6`).
    port: u16,
    port6: u16,
    /// UDP GSO sends are in use (turned off at run time if the kernel refuses one).
    gso: bool,
    /// Encapsulation bytes in front of each inner packet (to tell tunnel super-packets from GRO trains).
    prefix: usize,
    rx_batch: usize,
    rx_bufs: Vec<Vec<u8>>,
    rx_meta: Vec<RecvMeta>,
}

impl UdpUnderlay {
    pub fn new(socks: WorkerSockets, socks6: Option<WorkerSockets>, cfg: &DataPlaneConfig) -> Self {
        let gso = cfg.offload.udp_gso && socks.max_gso_segments() > 1;
        if cfg.offload.udp_gso && !gso {
            info!("UDP GSO not available from the kernel; sending datagrams one by one");
        }
        UdpUnderlay {
            socks,
            socks6,
            port: cfg.port,
            port6: cfg.port6,
            gso,
            prefix: cfg.encap.prefix(),
            rx_batch: if cfg.batch { RX_BATCH } else { 1 },
            rx_bufs: (0..RX_BATCH).map(|_| vec![0; MAX_PACKET]).collect(),
            rx_meta: vec![RecvMeta::default(); RX_BATCH],
        }
    }

    /// `dst` at the network's port of its family.
    #[inline]
    fn to(&self, dst: IpAddr) -> SocketAddr {
        match dst {
            IpAddr::V4(_) => SocketAddr::new(dst, self.port),
            IpAddr::V6(_) => SocketAddr::new(dst, self.port6),
        }
    }

    /// The sockets that reach `dst`: IPv4's, or IPv6's on a dual-stack network.
    #[inline]
    fn socks_for(&self, dst: &SocketAddr) -> io::Result<&WorkerSockets> {
        match dst {
            SocketAddr::V4(_) => Ok(&self.socks),
            SocketAddr::V6(_) => self.socks6.as_ref().ok_or_else(|| {
                io::Error::new(
                    ErrorKind::Unsupported,
                    "no IPv6 underlay socket (the network is not dual-stack)",
                )
            }),
        }
    }

    #[inline]
    fn send_one(&self, flow: u32, dst: SocketAddr, datagram: &[u8], sent: &mut Sent) {
        match self
            .socks_for(&dst)
            .and_then(|s| s.send(flow, dst, datagram, None))
        {
            Ok(()) => {
                sent.datagrams += 1;
                sent.bytes += datagram.len();
            }
            Err(e) => fail(sent, e),
        }
    }
}

/// Sends `train` (datagrams of `stride` bytes, the last maybe shorter) through `send`: as GSO sends of at most
/// `max` datagrams while `gso` holds, else one by one. An EIO on a GSO send means the device cannot do GSO:
/// from that datagram on, and for good, they go one by one — the ones already sent are not sent again.
/// Returns what was sent and whether GSO is still usable.
fn send_train_with(
    train: &[u8],
    stride: usize,
    gso: bool,
    max: usize,
    mut send: impl FnMut(&[u8], Option<usize>) -> io::Result<()>,
) -> (Sent, bool) {
    let mut sent = Sent::default();
    let stride = stride.max(1);
    let mut refused = false;
    let mut done = 0;
    if gso && train.len() > stride {
        for chunk in train.chunks(max * stride) {
            match send(chunk, Some(stride)) {
                Ok(()) => {
                    sent.datagrams += chunk.len().div_ceil(stride);
                    sent.bytes += chunk.len();
                }
                Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                    refused = true;
                    break;
                }
                Err(e) => fail(&mut sent, e),
            }
            done += chunk.len();
        }
        if !refused {
            return (sent, true);
        }
    }
    for datagram in train[done..].chunks(stride) {
        match send(datagram, None) {
            Ok(()) => {
                sent.datagrams += 1;
                sent.bytes += datagram.len();
            }
            Err(e) => fail(&mut sent, e),
        }
    }
    (sent, gso && !refused)
}

/// What a send that could not start did: one failure, with its error.
fn failed(e: io::Error) -> Sent {
    let mut sent = Sent::default();
    fail(&mut sent, e);
    sent
}

/// Records a failed send in `sent`, keeping the first error.
fn fail(sent: &mut Sent, e: io::Error) {
    sent.failed += 1;
    if sent.error.is_none() {
        sent.error = Some(e);
    }
}

impl Underlay for UdpUnderlay {
    /// IPv4's receive socket, and on a dual-stack network IPv6's.
    const SOURCES: usize = 2;

    fn sources(&self) -> usize {
        1 + usize::from(self.socks6.is_some())
    }

    fn poll_fd(&self, source: usize) -> BorrowedFd<'_> {
        match (source, &self.socks6) {
            (1, Some(s6)) => s6.rx_socket().as_fd(),
            _ => self.socks.rx_socket().as_fd(),
        }
    }

    fn recv(
        &mut self,
        source: usize,
        limit: usize,
        sink: &mut impl DatagramSink,
    ) -> io::Result<bool> {
        let socks = match (source, &self.socks6) {
            (1, Some(s6)) => s6,
            _ => &self.socks,
        };
        let mut handled = 0;
        while handled < limit {
            let count = {
                let mut it = self.rx_bufs.iter_mut();
                let mut slices: [IoSliceMut<'_>; RX_BATCH] =
                    std::array::from_fn(|_| IoSliceMut::new(it.next().expect("RX_BATCH buffers")));
                match socks.recv(
                    &mut slices[..self.rx_batch],
                    &mut self.rx_meta[..self.rx_batch],
                ) {
                    Ok(c) => c,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            handled += count;
            for (meta, buf) in self.rx_meta[..count].iter().zip(self.rx_bufs.iter_mut()) {
                let src = meta.addr.ip().to_canonical();
                let stride = datagram_units(&buf[..meta.len], meta.stride, self.prefix);
                for payload in buf[..meta.len].chunks_mut(stride) {
                    sink.datagram(src, payload);
                }
            }
            sink.flush();
        }
        Ok(true)
    }

    #[inline]
    fn send(&mut self, flow: u32, dst: IpAddr, datagram: &[u8]) -> Sent {
        let mut sent = Sent::default();
        let dst = self.to(dst);
        self.send_one(flow, dst, datagram, &mut sent);
        sent
    }

    /// One UDP GSO send per `max_gso_segments` datagrams, or one send per datagram.
    fn send_train(&mut self, flow: u32, dst: IpAddr, train: &[u8], stride: usize) -> Sent {
        let dst = self.to(dst);
        let socks = match self.socks_for(&dst) {
            Ok(s) => s,
            Err(e) => return failed(e),
        };
        let max = socks
            .max_gso_segments()
            .min(MAX_GSO_BYTES / stride.max(1))
            .max(1);
        let (sent, gso) = send_train_with(train, stride, self.gso, max, |chunk, segment| {
            socks.send(flow, dst, chunk, segment)
        });
        if self.gso && !gso {
            info!("UDP GSO refused by the kernel (EIO); sending datagrams one by one");
        }
        self.gso = gso;
        sent
    }

    /// Gathered: the payload goes from the caller's buffer straight to the kernel, all GSO messages of
    /// the split in one `sendmmsg`.
    fn send_split(&mut self, flow: u32, dst: IpAddr, split: &Split<'_>, _: &mut [u8]) -> Sent {
        let dst = self.to(dst);
        let socks = match self.socks_for(&dst) {
            Ok(s) => s,
            Err(e) => return failed(e),
        };
        let max = socks
            .max_gso_segments()
            .min(MAX_GSO_BYTES / split.stride().max(1))
            .max(1);
        let (sent, gso) = gather::send_split(socks.tx_fd(flow), dst, split, self.gso, max);
        if self.gso && !gso {
            info!("UDP GSO refused by the kernel (EIO); sending datagrams one by one");
        }
        self.gso = gso;
        sent
    }

    fn flush(&mut self) {}
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::dataplane::{Encap, Offloads, UnderlayIo};
    use crate::wire::DropReason;

    const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

    fn config(port: u16, offload: Offloads) -> DataPlaneConfig {
        DataPlaneConfig {
            encap: Encap::Udp,
            port,
            port6: port,
            local_ip: LOOPBACK,
            own_subnet: Some("10.5.1.0/24".parse().unwrap()),
            network: Some("10.5.0.0/16".parse().unwrap()),
            local_ip6: None,
            own_subnet6: None,
            network6: None,
            mtu: 1450,
            tun_name: "unused".into(),
            workers: 1,
            offload,
            batch: true,
            busy_poll: Duration::ZERO,
            underlay: UnderlayIo::Udp,
            iface: "lo".into(),
            iface_mtu: 65_536,
            cpu_local: false,
            wireguard: None,
            wireguard6: None,
        }
    }

    /// A peer on the loopback: a plain socket, and the underlay with `offload` sending to it.
    fn pair(offload: Offloads) -> (UdpSocket, UdpUnderlay) {
        let peer = UdpSocket::bind((LOOPBACK, 0)).unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let port = peer.local_addr().unwrap().port();
        let socks = WorkerSockets::open(LOOPBACK.into(), 0, offload.udp_gro, false).unwrap();
        (peer, UdpUnderlay::new(socks, None, &config(port, offload)))
    }

    #[derive(Default)]
    struct Collect {
        got: Vec<(IpAddr, Vec<u8>)>,
        drops: Vec<DropReason>,
        flushes: usize,
    }

    impl DatagramSink for Collect {
        fn datagram(&mut self, src: IpAddr, payload: &mut [u8]) {
            self.got.push((src, payload.to_vec()));
        }
        fn dropped(&mut self, reason: DropReason) {
            self.drops.push(reason);
        }
        fn flush(&mut self) {
            self.flushes += 1;
        }
    }

    #[test]
    fn a_train_arrives_as_its_datagrams_with_or_without_gso() {
        let train: Vec<u8> = (0..250u32).map(|i| (i / 100) as u8).collect();
        for udp_gso in [true, false] {
            let (peer, mut udp) = pair(Offloads {
                udp_gso,
                ..Offloads::ALL
            });
            let sent = udp.send_train(7, LOOPBACK.into(), &train, 100);
            assert_eq!(
                (sent.datagrams, sent.bytes, sent.failed),
                (3, 250, 0),
                "gso {udp_gso}"
            );
            let mut buf = [0u8; 512];
            for (i, want) in [100, 100, 50].into_iter().enumerate() {
                let n = peer.recv(&mut buf).unwrap();
                assert_eq!(&buf[..n], &train[i * 100..i * 100 + want], "gso {udp_gso}");
            }
            let sent = udp.send(7, LOOPBACK.into(), b"one");
            assert_eq!((sent.datagrams, sent.bytes, sent.failed), (1, 3, 0));
            assert_eq!(peer.recv(&mut buf).unwrap(), 3);
        }
    }

    #[test]
    fn received_datagrams_reach_the_sink_one_by_one_with_their_sender() {
        for udp_gro in [true, false] {
            let (peer, mut udp) = pair(Offloads {
                udp_gro,
                ..Offloads::ALL
            });
            let to = udp.socks.rx_socket().local_addr().unwrap();
            for i in 0..3u8 {
                peer.send_to(&[i; 100], to).unwrap();
            }
            let mut sink = Collect::default();
            let deadline = Instant::now() + Duration::from_secs(5);
            while sink.got.len() < 3 && Instant::now() < deadline {
                assert!(!udp.recv(0, 64, &mut sink).unwrap(), "below the limit");
            }
            let want: Vec<_> = (0..3u8).map(|i| (LOOPBACK.into(), vec![i; 100])).collect();
            assert_eq!(sink.got, want, "gro {udp_gro}");
            assert!(sink.drops.is_empty());
            assert!(sink.flushes >= 1, "each batch ends in a flush");
        }
    }

    #[test]
    fn a_dual_stack_underlay_sends_and_receives_over_ipv6_on_its_second_source() {
        let peer6 = UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)).unwrap();
        peer6
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let port = peer6.local_addr().unwrap().port();
        let socks = WorkerSockets::open(LOOPBACK.into(), port, true, false).unwrap();
        let socks6 = WorkerSockets::open(Ipv6Addr::LOCALHOST.into(), 0, true, false).unwrap();
        let mut udp = UdpUnderlay::new(socks, Some(socks6), &config(port, Offloads::ALL));
        assert_eq!(udp.sources(), 2);
        // A train to an IPv6 peer leaves from the IPv6 sockets.
        let train = vec![6u8; 250];
        let sent = udp.send_train(3, Ipv6Addr::LOCALHOST.into(), &train, 100);
        assert_eq!((sent.datagrams, sent.failed), (3, 0));
        let mut buf = [0u8; 512];
        for want in [100, 100, 50] {
            assert_eq!(peer6.recv(&mut buf).unwrap(), want);
        }
        // What an IPv6 peer sends arrives on source 1, from its IPv6 address.
        let to = udp
            .socks6
            .as_ref()
            .unwrap()
            .rx_socket()
            .local_addr()
            .unwrap();
        peer6.send_to(b"six", to).unwrap();
        let mut sink = Collect::default();
        let deadline = Instant::now() + Duration::from_secs(5);
        while sink.got.is_empty() && Instant::now() < deadline {
            let _ = udp.recv(1, 64, &mut sink).unwrap();
        }
        assert_eq!(
            sink.got,
            vec![(Ipv6Addr::LOCALHOST.into(), b"six".to_vec())]
        );
        // Without IPv6 sockets, an IPv6 destination is a counted failure, not a panic.
        let (_, mut v4only) = pair(Offloads::ALL);
        assert_eq!(v4only.sources(), 1);
        let sent = v4only.send(1, Ipv6Addr::LOCALHOST.into(), b"x");
        assert_eq!((sent.datagrams, sent.failed), (0, 1));
    }

    #[test]
    fn an_eio_on_a_later_gso_send_resends_nothing_already_sent() {
        // 10 datagrams of 100 bytes (the last 50), GSO sends of 4: the second GSO send gets EIO.
        let train: Vec<u8> = (0..950u32).map(|i| (i / 100) as u8).collect();
        let mut wire: Vec<(Vec<u8>, Option<usize>)> = Vec::new();
        let mut gso_sends = 0;
        let (sent, gso) = send_train_with(&train, 100, true, 4, |chunk, segment| {
            if segment.is_some() {
                gso_sends += 1;
                if gso_sends == 2 {
                    return Err(io::Error::from_raw_os_error(libc::EIO));
                }
            }
            wire.push((chunk.to_vec(), segment));
            Ok(())
        });
        assert!(!gso, "GSO is off for good after EIO");
        // Every byte left exactly once, in order: the first GSO send, then one by one.
        let delivered: Vec<u8> = wire.iter().flat_map(|(c, _)| c.clone()).collect();
        assert_eq!(delivered, train);
        assert_eq!(wire[0].1, Some(100));
        assert!(wire[1..]
            .iter()
            .all(|(c, seg)| seg.is_none() && c.len() <= 100));
        assert_eq!(sent.datagrams, 10);
        assert_eq!(sent.bytes, 950);
        assert_eq!(sent.failed, 0);
        // With GSO off, a train goes one by one and GSO stays off.
        let (_, gso) = send_train_with(&train[..100], 100, false, 4, |_, _| Ok(()));
        assert!(!gso);
    }
}
