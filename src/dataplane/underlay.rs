//! The interface a worker moves datagrams through on the underlay, implemented by the UDP sockets (`sock`)
//! and AF_XDP (`afxdp`); the worker is generic over it, so each call is dispatched statically.

use std::io;
use std::net::IpAddr;
use std::os::fd::BorrowedFd;

use crate::wire::segment::Split;
use crate::wire::DropReason;

/// Largest packet a tun read or a (GRO-coalesced) UDP receive can return.
pub const MAX_PACKET: usize = 65_536;
/// Most receive sources an underlay has (an AF_XDP socket, and beside it the UDP sockets for IPv4 and IPv6).
pub const MAX_SOURCES: usize = 3;

/// What became of the datagrams handed to one send call.
#[derive(Debug, Default)]
#[must_use = "the worker counts what was sent and failed"]
pub struct Sent {
    /// Datagrams handed to the kernel or queued on a ring.
    pub datagrams: usize,
    /// Their bytes, encapsulation included.
    pub bytes: usize,
    /// Sends that failed, each counted as one I/O-error drop (a datagram, or a GSO send of several).
    pub failed: usize,
    /// The first error a failed send reported, for the log (none when a full ring dropped datagrams).
    pub error: Option<io::Error>,
}

/// Where an underlay hands the datagrams it receives.
pub trait DatagramSink {
    /// One datagram (the UDP payload) from underlay address `src` (IPv4, or IPv6 on a dual-stack network).
    fn datagram(&mut self, src: IpAddr, payload: &mut [u8]);
    /// A received datagram that could not be taken apart.
    fn dropped(&mut self, reason: DropReason);
    /// The end of a receive batch: deliver whatever was held back to be coalesced.
    fn flush(&mut self);
}

/// One worker's underlay: receive sources to poll and read in batches, and sends to a peer's public IP
/// on the network's port.
pub trait Underlay {
    /// How many receive sources there can be (at most `MAX_SOURCES`), numbered from 0.
    const SOURCES: usize;

    /// How many receive sources this one has (sources 0..n; the IPv6 socket only on a dual-stack network).
    fn sources(&self) -> usize {
        Self::SOURCES
    }

    /// The file descriptor to poll for input on receive source `source`.
    fn poll_fd(&self, source: usize) -> BorrowedFd<'_>;

    /// Hands up to about `limit` datagrams from receive source `source` to `sink`, calling its `flush`
    /// after each batch. Ok(true) if the limit was reached (more may be waiting).
    fn recv(
        &mut self,
        source: usize,
        limit: usize,
        sink: &mut impl DatagramSink,
    ) -> io::Result<bool>;

    /// Sends one datagram to `dst`; `flow` (the inner flow's hash) keeps a flow on one outer source port.
    fn send(&mut self, flow: u32, dst: IpAddr, datagram: &[u8]) -> Sent;

    /// Sends a train of datagrams of `stride` bytes each (the last may be shorter) to `dst`, in as few
    /// sends as the underlay allows (UDP GSO).
    fn send_train(&mut self, flow: u32, dst: IpAddr, train: &[u8], stride: usize) -> Sent;

    /// Sends the datagrams of `split`, each its head then its body, to `dst` in as few sends as the
    /// underlay allows. This default lays them out in `scratch` and sends that train; an underlay that
    /// can gather (the UDP sockets) sends them from where they are.
    fn send_split(
        &mut self,
        flow: u32,
        dst: IpAddr,
        split: &Split<'_>,
        scratch: &mut [u8],
    ) -> Sent {
        match split.assemble(scratch) {
            Some(t) => self.send_train(flow, dst, &scratch[..t.len], t.stride),
            None => Sent {
                failed: 1,
                ..Sent::default()
            },
        }
    }

    /// Makes the device send what was queued (after each batch of sends).
    fn flush(&mut self);
}
