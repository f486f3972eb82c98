//! The UDP ping-pong of `netns-fixtures/bench.sh` for its IPv6 rows: Debian 12's sockperf (3.7) takes only
//! IPv4 addresses (`-i ::1` is "Invalid address"), so this measures the same thing as its
//! `sockperf ping-pong --full-rtt` (14-byte messages, one in flight, full round trip) over IPv4 or IPv6, and
//! prints the percentiles in sockperf's words ("percentile 99.000 = 21.345", microseconds) for bench.py.
//!
//! usage: pingpong server ADDR PORT                  echoes every datagram to its sender, until killed
//!        pingpong client ADDR PORT SECONDS [SIZE]   SIZE-byte messages (default 14), one at a time
//!   The client waits up to 1 s for each reply (a lost message is counted, not measured), leaves the first
//!   100 round trips out (warm-up) and prints the percentiles of the others; exit 1 if none came back.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

const WARMUP: usize = 100;

fn usage() -> ! {
    eprintln!("usage: pingpong server ADDR PORT | pingpong client ADDR PORT SECONDS [SIZE]");
    std::process::exit(2)
}

fn parse<T: std::str::FromStr>(s: Option<&String>) -> T {
    s.and_then(|s| s.parse().ok()).unwrap_or_else(|| usage())
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let ip: IpAddr = parse(args.get(1));
    let addr = SocketAddr::new(ip, parse(args.get(2)));
    match args.first().map(String::as_str) {
        Some("server") => {
            let sock = UdpSocket::bind(addr)?;
            let mut buf = [0u8; 65536];
            loop {
                let (n, from) = sock.recv_from(&mut buf)?;
                let _ = sock.send_to(&buf[..n], from);
            }
        }
        Some("client") => client(
            addr,
            parse(args.get(3)),
            args.get(4).map_or(14, |_| parse(args.get(4))),
        ),
        _ => usage(),
    }
}

fn client(dst: SocketAddr, secs: f64, size: usize) -> std::io::Result<()> {
    let any: IpAddr = if dst.is_ipv6() {
        Ipv6Addr::UNSPECIFIED.into()
    } else {
        Ipv4Addr::UNSPECIFIED.into()
    };
    let sock = UdpSocket::bind(SocketAddr::new(any, 0))?;
    sock.connect(dst)?;
    sock.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut msg = vec![0x5au8; size.max(8)];
    let mut buf = vec![0u8; msg.len() + 64];
    let (mut rtts, mut lost, mut seq) = (Vec::<f64>::new(), 0u64, 0u64);
    let end = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        seq += 1;
        msg[..8].copy_from_slice(&seq.to_be_bytes());
        let t0 = Instant::now();
        if sock.send(&msg).is_err() {
            lost += 1;
            std::thread::sleep(Duration::from_millis(10)); // e.g. ECONNREFUSED or no route: don't spin
            continue;
        }
        loop {
            match sock.recv(&mut buf) {
                // a late reply to an earlier message is skipped
                Ok(n) if n >= 8 && buf[..8] == seq.to_be_bytes() => {
                    rtts.push(t0.elapsed().as_secs_f64() * 1e6);
                    break;
                }
                Ok(_) => continue,
                Err(_) => {
                    lost += 1;
                    break;
                }
            }
        }
    }
    let mut v: Vec<f64> = rtts.into_iter().skip(WARMUP).collect();
    println!("pingpong: {} round trips measured ({} warm-up), {lost} lost, {size}-byte messages to {dst}", v.len(), WARMUP);
    if v.is_empty() {
        std::process::exit(1);
    }
    v.sort_by(f64::total_cmp);
    let avg = v.iter().sum::<f64>() / v.len() as f64;
    println!("pingpong: ====> avg-rtt={avg:.3} (usec)");
    for p in [25.0, 50.0, 75.0, 90.0, 99.0, 99.9, 99.999] {
        // nearest rank
        let k = ((p / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        println!("pingpong: ---> percentile {p:.3} = {:>9.3}", v[k]);
    }
    println!("pingpong: ---> <MIN> observation = {:>9.3}", v[0]);
    println!("pingpong: ---> <MAX> observation = {:>9.3}", v[v.len() - 1]);
    Ok(())
}
