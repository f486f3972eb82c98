//! Criterion benchmarks of the WireGuard backend's hot path: sealing and opening a 1400-byte packet and a
//! 64 KB train (45 segments, as a TSO read becomes), through weft's node (session lookup, lock, boringtun's
//! ChaCha20-Poly1305 via ring) with a session already up.

use std::net::Ipv4Addr;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use weft::wireguard::node::{connected_pair, DATA_OVERHEAD, HANDSHAKE_INIT_LEN};

const A_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const B_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

/// An IPv4/UDP packet of `total` bytes from 10.5.1.9 to 10.5.2.7 (the checksum is not checked here).
fn packet(total: usize) -> Vec<u8> {
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[10, 5, 1, 9]);
    p[16..20].copy_from_slice(&[10, 5, 2, 7]);
    p
}

fn seal_open(c: &mut Criterion) {
    let (a, b) = connected_pair();
    for (name, total, count) in [
        ("1400-byte packet", 1400usize, 1usize),
        ("64 KB train (45 x 1448)", 1448, 45),
    ] {
        let plain: Vec<u8> = (0..count).flat_map(|_| packet(total)).collect();
        let mut out = vec![0u8; plain.len() + count * DATA_OVERHEAD + HANDSHAKE_INIT_LEN];
        let mut g = c.benchmark_group(format!("WireGuard {name}"));
        g.throughput(Throughput::Bytes(plain.len() as u64));
        g.bench_function("seal (encrypt)", |bench| {
            bench.iter(|| {
                a.seal(B_IP.into(), &plain, total, &mut out, |_, _| {})
                    .unwrap()
            })
        });
        let mut opened = vec![0u8; 65536];
        g.bench_function(
            "open (decrypt, replay window, cryptokey routing)",
            |bench| {
                bench.iter_batched(
                    || {
                        let mut o =
                            vec![0u8; plain.len() + count * DATA_OVERHEAD + HANDSHAKE_INIT_LEN];
                        let n = a
                            .seal(B_IP.into(), &plain, total, &mut o, |_, _| {})
                            .unwrap();
                        o.truncate(n);
                        o
                    },
                    |sealed| {
                        for m in sealed.chunks(total + DATA_OVERHEAD) {
                            b.open(A_IP.into(), m, &mut opened, |_, _| {}, |_| Ok(()))
                                .unwrap();
                        }
                    },
                    BatchSize::SmallInput,
                )
            },
        );
        g.finish();
    }
}

criterion_group!(benches, seal_open);
criterion_main!(benches);
