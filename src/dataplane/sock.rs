//! A worker's UDP sockets: one SO_REUSEPORT receive socket on the network's port and a few send sockets
//! whose distinct source ports carry the inner-flow hash, so receivers spread flows across their queues.

use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};

use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use socket2::{Domain, Protocol, Socket, Type};

use super::DataPlaneError;

/// Send sockets per worker: outer source ports that the inner-flow hash picks from.
pub const SEND_PORTS: usize = 8;
const BUFFER_BYTES: usize = 4 << 20;

pub struct WorkerSockets {
    rx: UdpSocket,
    rx_state: UdpSocketState,
    tx: Vec<(UdpSocket, UdpSocketState)>,
}

fn open(addr: SocketAddrV4, reuse_port: bool, nonblocking: bool) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = s.set_recv_buffer_size(BUFFER_BYTES);
    let _ = s.set_send_buffer_size(BUFFER_BYTES);
    s.bind(&SocketAddr::V4(addr).into())?;
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
    /// and `SEND_PORTS` blocking send sockets on ephemeral ports.
    pub fn open(local: Ipv4Addr, port: u16, gro: bool) -> Result<Self, DataPlaneError> {
        let addr = SocketAddrV4::new(local, port);
        let err = |source| DataPlaneError::Socket {
            addr: SocketAddr::V4(addr),
            source,
        };
        let rx = open(addr, true, true).map_err(err)?;
        let rx_state = UdpSocketState::new(UdpSockRef::from(&rx)).map_err(err)?;
        // quinn-udp turns UDP GRO on where the kernel has it; the receive path understands coalesced
        // trains (and UDP-tunnel super-packets). Off for comparison runs without offloads.
        if !gro {
            set_udp_gro(&rx, false).map_err(err)?;
        }
        let mut tx = Vec::with_capacity(SEND_PORTS);
        for _ in 0..SEND_PORTS {
            let s = open(SocketAddrV4::new(local, 0), false, false).map_err(err)?;
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
        st.try_send(
            UdpSockRef::from(s),
            &Transmit {
                destination: dst,
                ecn: None,
                contents: payload,
                segment_size,
                src_ip: None,
            },
        )
    }

    /// How many datagrams one GSO send may carry (1: no GSO).
    pub fn max_gso_segments(&self) -> usize {
        self.tx.first().map_or(1, |(_, st)| st.max_gso_segments())
    }
}
