//! Criterion benches for the route table: longest-prefix-match lookup among 256 and 65,536 routes.

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{criterion_group, criterion_main, Criterion};
use ipnet::Ipv4Net;
use weft::routes::{Peer, PeerBackend, RouteSnapshot};

fn table(n: u32) -> RouteSnapshot {
    RouteSnapshot::new((0..n).map(|i| Peer {
        v6: None,
        subnet: Some(Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 | (i << 8)), 24).expect("valid")),
        public_ip: Ipv4Addr::from(0xc000_0200 | i),
        backend: PeerBackend::Udp,
    }))
}

fn lookup(c: &mut Criterion) {
    for n in [256u32, 65_536] {
        let t = table(n);
        let mut i = 0u32;
        c.bench_function(&format!("route lookup among {n}"), |b| {
            b.iter(|| {
                i = (i + 40_503) % n;
                black_box(t.lookup(black_box(Ipv4Addr::from(0x0a00_0000 | (i << 8) | 9))))
            })
        });
    }
}

criterion_group!(benches, lookup);
criterion_main!(benches);
