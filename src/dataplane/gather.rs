//! Gathered UDP sends: the datagrams of a [`Split`] leave in one `sendmmsg`, each datagram gathered from its
//! header block and its payload slice (an iovec pair), grouped into UDP GSO messages. The payload is copied
//! once, by the kernel, straight from the buffer the tun read filled.
//!
//! Written by hand because quinn-udp sends one contiguous buffer per call (no iovecs, no sendmmsg of GSO
//! messages), which would cost a userspace copy of every segment and a system call per GSO send.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use super::underlay::Sent;
use crate::wire::segment::Split;

/// Datagrams gathered into one `sendmmsg` call (longer splits take several).
const GATHER: usize = 128;

/// The control message that makes one message a UDP GSO send: `cmsghdr` then the segment size, padded as
/// CMSG_SPACE(2) is.
#[repr(C)]
#[derive(Clone, Copy)]
struct GsoCmsg {
    hdr: libc::cmsghdr,
    size: u16,
    _pad: [u8; 6],
}

/// Sends the datagrams of `split` to `dst` on the UDP socket `fd`: as GSO messages of at most `max`
/// datagrams while `gso` holds, else one message per datagram, in as few `sendmmsg` calls as fit. An EIO
/// on a GSO message means the device cannot do GSO: from that message's first datagram on, and for good,
/// they go one by one (none is sent twice). Another failed message is counted as one failed send and
/// skipped. Returns what was sent and whether GSO is still usable.
pub fn send_split(
    fd: RawFd,
    dst: SocketAddr,
    split: &Split<'_>,
    gso: bool,
    max: usize,
) -> (Sent, bool) {
    let addr = socket2::SockAddr::from(dst);
    let mut sent = Sent::default();
    let mut gso = gso;
    let max = max.clamp(1, GATHER);
    let mut next = 0;
    while next < split.count {
        let n = (split.count - next).min(GATHER);
        match send_group(fd, &addr, split, next, n, gso, max, &mut sent) {
            Ok(()) => next += n,
            // GSO refused at datagram `at`: the rest one by one.
            Err(at) => {
                gso = false;
                next = at;
            }
        }
    }
    (sent, gso)
}

/// Sends datagrams `first..first + n` (n <= GATHER) of `split`; Err(datagram) if a GSO message starting
/// at that datagram was refused with EIO (the ones before it were sent).
#[allow(clippy::too_many_arguments)]
fn send_group(
    fd: RawFd,
    addr: &socket2::SockAddr,
    split: &Split<'_>,
    first: usize,
    n: usize,
    gso: bool,
    max: usize,
    sent: &mut Sent,
) -> Result<(), usize> {
    let empty = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    };
    let mut iov = [empty; 2 * GATHER];
    for k in 0..n {
        let (h, b) = (split.head(first + k), split.body(first + k));
        // The kernel only reads through these pointers (sendmmsg); *mut is what iovec's type demands.
        iov[2 * k] = libc::iovec {
            iov_base: h.as_ptr() as *mut libc::c_void,
            iov_len: h.len(),
        };
        iov[2 * k + 1] = libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        };
    }
    let per_msg = if gso { max } else { 1 };
    let msgs_n = n.div_ceil(per_msg);
    // SAFETY: an all-zero cmsghdr is valid; the fields the kernel reads are set here.
    let mut cmsgs: [GsoCmsg; GATHER] = unsafe { std::mem::zeroed() };
    for c in &mut cmsgs[..msgs_n] {
        c.hdr.cmsg_len = (std::mem::size_of::<libc::cmsghdr>() + 2) as _;
        c.hdr.cmsg_level = libc::SOL_UDP;
        c.hdr.cmsg_type = libc::UDP_SEGMENT;
        c.size = split.stride() as u16;
    }
    // Raw pointers taken once, after the arrays are filled, for the message headers to hold.
    let iov_base = iov.as_mut_ptr();
    let cmsg_base = cmsgs.as_mut_ptr();
    // SAFETY: an all-zero mmsghdr is valid (null pointers, zero lengths); the fields the kernel reads
    // are set below.
    let mut msgs: [libc::mmsghdr; GATHER] = unsafe { std::mem::zeroed() };
    let mut first_of = [0usize; GATHER];
    let mut count_of = [0usize; GATHER];
    let mut bytes_of = [0usize; GATHER];
    for m in 0..msgs_n {
        let d0 = m * per_msg;
        let cnt = per_msg.min(n - d0);
        first_of[m] = d0;
        count_of[m] = cnt;
        bytes_of[m] = (first + d0..first + d0 + cnt)
            .map(|i| split.head(i).len() + split.body(i).len())
            .sum();
        let h = &mut msgs[m].msg_hdr;
        h.msg_name = addr.as_ptr() as *mut libc::c_void;
        h.msg_namelen = addr.len();
        h.msg_iov = iov_base.wrapping_add(2 * d0);
        h.msg_iovlen = 2 * cnt;
        if cnt > 1 {
            h.msg_control = cmsg_base.wrapping_add(m).cast();
            h.msg_controllen = std::mem::size_of::<GsoCmsg>() as _;
        }
    }
    let mut m = 0;
    while m < msgs_n {
        // SAFETY: msgs[m..msgs_n] are initialised message headers; their name, iovec and control pointers
        // point into `addr`, `iov`, `cmsgs` and the split's buffers, all alive until this call returns,
        // and the kernel writes only each header's msg_len.
        let r =
            unsafe { libc::sendmmsg(fd, msgs[m..].as_mut_ptr(), (msgs_n - m) as libc::c_uint, 0) };
        if r > 0 {
            for k in m..m + r as usize {
                sent.datagrams += count_of[k];
                sent.bytes += bytes_of[k];
            }
            m += r as usize;
            continue;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EIO) if count_of[m] > 1 => return Err(first + first_of[m]),
            _ => {
                sent.failed += 1;
                if sent.error.is_none() {
                    sent.error = Some(e);
                }
                m += 1;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, UdpSocket};
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    use super::*;
    use crate::wire::segment::split_headers;

    /// A UDP super-packet of `n` payload bytes (the headers are what the split repeats).
    fn packet(n: usize) -> Vec<u8> {
        let payload: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
        let mut p =
            crate::wire::ipv4::tests::udp_packet([10, 5, 2, 9], [10, 5, 1, 7], 5000, 53, &payload);
        let l = (8 + n) as u16;
        p[24..26].copy_from_slice(&l.to_be_bytes());
        p
    }

    #[test]
    fn every_datagram_arrives_whole_with_gso_in_groups_and_without() {
        let peer = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let dst = peer.local_addr().unwrap();
        let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        // And over IPv6 (the IPv6 underlay of a dual-stack network).
        let peer6 = UdpSocket::bind((std::net::Ipv6Addr::LOCALHOST, 0)).unwrap();
        peer6
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let tx6 = UdpSocket::bind((std::net::Ipv6Addr::LOCALHOST, 0)).unwrap();
        let p = packet(10_000);
        let mut heads = vec![0u8; 4096];
        let split = split_headers(&p, 1000, true, &[1, 2, 3, 4], &mut heads).unwrap();
        assert_eq!(split.count, 10);
        for (gso, max, v6) in [
            (true, 4, false),
            (true, 64, false),
            (false, 64, false),
            (true, 4, true),
            (false, 64, true),
        ] {
            let (tx, peer, dst) = if v6 {
                (&tx6, &peer6, peer6.local_addr().unwrap())
            } else {
                (&tx, &peer, dst)
            };
            let (sent, still) = send_split(tx.as_raw_fd(), dst, &split, gso, max);
            assert_eq!(still, gso);
            assert_eq!(
                (sent.datagrams, sent.failed),
                (10, 0),
                "gso {gso} max {max}"
            );
            assert_eq!(sent.bytes, split.len());
            let mut buf = [0u8; 2048];
            for i in 0..10 {
                let n = peer.recv(&mut buf).unwrap();
                let mut want = split.head(i).to_vec();
                want.extend_from_slice(split.body(i));
                assert_eq!(&buf[..n], &want[..], "datagram {i}, gso {gso} max {max}");
            }
        }
    }

    #[test]
    fn a_failed_message_is_counted_and_the_rest_still_go() {
        // A destination port of 0 is refused by the kernel for every message (EINVAL).
        let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let p = packet(3000);
        let mut heads = vec![0u8; 4096];
        let split = split_headers(&p, 1000, true, &[], &mut heads).unwrap();
        let (sent, _) = send_split(
            tx.as_raw_fd(),
            (Ipv4Addr::LOCALHOST, 0).into(),
            &split,
            false,
            64,
        );
        assert_eq!((sent.datagrams, sent.failed), (0, 3));
        assert!(sent.error.is_some());
    }
}
