//! The packet-rate generator of `netns-fixtures/bench.sh`: sends small UDP datagrams with `sendmmsg`, paced
//! evenly (a burst every few microseconds, not a second's worth at once), from one socket per flow.
//!
//! usage: blaster DST_IP DST_PORT PAYLOADS RATE_PPS SECONDS [BURST]
//!   PAYLOADS: a file with one line per flow, "SRC_PORT HEX_PAYLOAD"; each flow sends from its own socket
//!   bound to SRC_PORT (an ephemeral port if that one is taken). RATE_PPS 0: as fast as the kernel takes
//!   them. BURST (default 8): datagrams per `sendmmsg`, all of one flow; flows take turns.
//!   Prints "sent N in T s" (datagrams the kernel accepted) on stdout.
//!
//! Written for the benchmark because trafgen's `-b` rate sends a second's packets in a burst at the start
//! of each second and its `-t` gap sleeps per packet (~40 kpps at most here): neither paces high rates.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

fn usage() -> ! {
    eprintln!("usage: blaster DST_IP DST_PORT PAYLOADS RATE_PPS SECONDS [BURST]");
    std::process::exit(2)
}

fn parse<T: std::str::FromStr>(s: Option<&String>) -> T {
    s.and_then(|s| s.parse().ok()).unwrap_or_else(|| usage())
}

fn hex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Sends `payload` `count` times to `dst` from `sock` in one sendmmsg; returns how many the kernel took.
fn send_burst(sock: &UdpSocket, dst: &libc::sockaddr_in, payload: &[u8], count: usize) -> usize {
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    let iov: *mut libc::iovec = &mut iov;
    // SAFETY: an all-zero mmsghdr is valid (null pointers, zero lengths); the fields set below point at
    // `iov` and `dst`, which outlive the sendmmsg call; the kernel only reads them (the payload is not
    // written through the iovec's *mut pointer).
    let mut msgs: Vec<libc::mmsghdr> = (0..count)
        .map(|_| {
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_name = dst as *const libc::sockaddr_in as *mut libc::c_void;
            m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    // SAFETY: `msgs` holds `count` initialised headers whose pointers are valid for the call (see above).
    let n = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), count as u32, 0) };
    usize::try_from(n).unwrap_or(0)
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dst_ip: Ipv4Addr = parse(args.first());
    let dst_port: u16 = parse(args.get(1));
    let file = args.get(2).unwrap_or_else(|| usage());
    let rate: f64 = parse(args.get(3));
    let secs: f64 = parse(args.get(4));
    let burst: usize = args.get(5).map_or(8, |_| parse(args.get(5)));
    let mut flows = Vec::new();
    for line in std::fs::read_to_string(file)?.lines() {
        let mut it = line.split_whitespace();
        let (Some(port), Some(h)) = (it.next(), it.next()) else {
            continue;
        };
        let port: u16 = port.parse().unwrap_or_else(|_| usage());
        let payload = hex(h).unwrap_or_else(|| usage());
        let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
            .or_else(|_| UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)))?;
        flows.push((sock, payload));
    }
    if flows.is_empty() || burst == 0 {
        usage();
    }
    let dst = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: dst_port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(dst_ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let interval = (rate > 0.0).then(|| Duration::from_secs_f64(burst as f64 / rate));
    let mut next = start;
    let mut sent = 0usize;
    let mut flow = 0;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if let Some(iv) = interval {
            if now < next {
                // Sleep through long gaps; yield through short ones (the CPU goes to whoever needs it).
                if next - now > Duration::from_micros(200) {
                    std::thread::sleep(next - now - Duration::from_micros(100));
                } else {
                    std::thread::yield_now();
                }
                continue;
            }
            next += iv;
            // Behind by more than a few bursts (descheduled): skip ahead rather than send a catch-up burst.
            if now > next + iv * 4 {
                next = now;
            }
        }
        let (sock, payload) = &flows[flow];
        sent += send_burst(sock, &dst, payload, burst);
        flow = (flow + 1) % flows.len();
    }
    println!("sent {sent} in {:.6} s", start.elapsed().as_secs_f64());
    Ok(())
}
