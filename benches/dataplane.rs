//! Criterion benches for the data plane's pure hot path: VXLAN encap/decap, TSO splitting (into a train, or
//! into headers only), small-datagram batching, GRO coalescing, and an in-memory encap -> decap pipeline.

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use weft::routes::{Peer, PeerBackend, RouteSnapshot};
use weft::wire::batch::SmallBatch;
use weft::wire::ethernet::MacAddr;
use weft::wire::flow::flow_hash;
use weft::wire::gso::{Coalescer, VnetHdr, F_NEEDS_CSUM, GSO_TCPV4};
use weft::wire::inbound::{Encap, Inbound};
use weft::wire::outbound::{Action, Outbound};
use weft::wire::segment::{split_headers, split_into_train};
use weft::wire::vxlan::{decap, VxlanTemplate, VXLAN_ENCAP};
use weft::wire::{ipv4, tcp};

const OURS: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
const PEER_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);
const PEER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

/// An IPv4 TCP packet of `total` bytes from a peer's subnet to ours, checksums valid, built with the
/// wire views.
fn tcp_packet(total: usize, seq: u32) -> Vec<u8> {
    let ip = ipv4::Repr {
        src_addr: Ipv4Addr::new(10, 5, 2, 9),
        dst_addr: Ipv4Addr::new(10, 5, 1, 7),
        protocol: ipv4::PROTO_TCP,
        payload_len: total - ipv4::HEADER_LEN,
        ttl: 64,
        ident: 1,
        dont_frag: true,
        dscp_ecn: 0,
    };
    let mut p = vec![0xab; total];
    ip.emit(&mut ipv4::Packet::new_unchecked(&mut p[..]));
    let mut t = tcp::Packet::new_unchecked(&mut p[ipv4::HEADER_LEN..]);
    tcp::Repr {
        src_port: 40000,
        dst_port: 80,
        seq_number: seq,
        ack_number: 1,
        flags: tcp::flags::ACK,
        window_len: 0x01f5,
        options: &[],
    }
    .emit(&mut t);
    t.fill_checksum(ip.src_addr, ip.dst_addr);
    p
}

/// Sets the TCP flags of `tcp_packet`'s packet and recomputes its checksum.
fn set_tcp_flags(p: &mut [u8], flags: u8) {
    let ip = ipv4::Packet::new_checked(&*p).expect("IPv4");
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    let mut t = tcp::Packet::new_unchecked(&mut p[ipv4::HEADER_LEN..]);
    t.set_flags(flags);
    t.fill_checksum(src, dst);
}

fn routes() -> RouteSnapshot {
    RouteSnapshot::new([Peer {
        v6: None,
        subnet: Some("10.5.2.0/24".parse().expect("subnet")),
        public_ip: PEER,
        backend: PeerBackend::Vxlan {
            vni: 1,
            vtep_mac: OURS,
        },
    }])
}

fn inbound(tun_offload: bool) -> Inbound {
    Inbound {
        own: Some("10.5.1.0/24".parse().expect("subnet")),
        own6: None,
        encap: Encap::Vxlan {
            vni: 1,
            mac: OURS,
            mac6: None,
        },
        mtu: 1450,
        tun_offload,
    }
}

fn encap_decap(c: &mut Criterion) {
    let r = routes();
    let (rx, rx_offload) = (inbound(false), inbound(true));
    for size in [64usize, 1400] {
        let p = tcp_packet(size, 1);
        let mut buf = vec![0u8; VXLAN_ENCAP + size];
        buf[VXLAN_ENCAP..].copy_from_slice(&p);
        let mut g = c.benchmark_group(format!("{size}-byte packet"));
        g.throughput(Throughput::Elements(1));
        g.bench_function("encap (route lookup, flow hash, VXLAN header)", |b| {
            b.iter(|| {
                let peer = r
                    .lookup(black_box(Ipv4Addr::new(10, 5, 2, 9)))
                    .expect("route");
                let PeerBackend::Vxlan { vtep_mac, .. } = peer.backend else {
                    unreachable!()
                };
                VxlanTemplate::new(1, vtep_mac, PEER_MAC).write(&mut buf, 0);
                black_box(flow_hash(&buf[VXLAN_ENCAP..]))
            })
        });
        // The same packet the other way round, to the peer's subnet (checksums unchanged).
        let mut to_peer = buf.clone();
        to_peer[VXLAN_ENCAP + 12..VXLAN_ENCAP + 20].rotate_left(4);
        let out = Outbound {
            encap: Encap::Vxlan {
                vni: 1,
                mac: PEER_MAC,
                mac6: None,
            },
        };
        g.bench_function(
            "encap via Outbound::route (parse, route, flow hash, VXLAN header)",
            |b| {
                b.iter(|| {
                    let Action::Send(e) = out.route(black_box(&to_peer[VXLAN_ENCAP..]), &r) else {
                        unreachable!()
                    };
                    e.vxlan.expect("vxlan").write(&mut to_peer, 0);
                    black_box(e.flow)
                })
            },
        );
        VxlanTemplate::new(1, OURS, PEER_MAC).write(&mut buf, 0);
        g.bench_function("decap (VXLAN header only)", |b| {
            b.iter(|| black_box(decap(black_box(&buf), 1, OURS)))
        });
        let mut scratch = vec![0u8; 1450];
        g.bench_function("decap + every inbound check (tun offload path)", |b| {
            b.iter(|| {
                let mut n = 0;
                rx_offload
                    .receive(&r, PEER.into(), black_box(&mut buf), &mut scratch, |d| {
                        n += d.len()
                    })
                    .expect("valid");
                black_box(n)
            })
        });
        g.bench_function("decap + every inbound check + checksum verification", |b| {
            b.iter(|| {
                let mut n = 0;
                rx.receive(&r, PEER.into(), black_box(&mut buf), &mut scratch, |d| {
                    n += d.len()
                })
                .expect("valid");
                black_box(n)
            })
        });
        g.finish();
    }
}

fn tso_split(c: &mut Criterion) {
    let mut p = tcp_packet(20 + 20 + 64_000, 1);
    set_tcp_flags(&mut p, tcp::flags::PSH | tcp::flags::ACK);
    let mut out = vec![0u8; 128 * 1024];
    let mut g = c.benchmark_group("64 KB TSO packet");
    g.throughput(Throughput::Bytes(64_000));
    g.bench_function("split into VXLAN-ready segments (MSS 1410)", |b| {
        b.iter(|| {
            black_box(
                split_into_train(black_box(&p), 1410, false, VXLAN_ENCAP, &mut out).expect("tcp"),
            )
        })
    });
    let tpl = *VxlanTemplate::new(1, OURS, PEER_MAC).bytes();
    let mut heads = vec![0u8; 16 * 1024];
    g.bench_function(
        "split into per-segment headers, payload left in place (MSS 1410)",
        |b| {
            b.iter(|| {
                black_box(
                    split_headers(black_box(&p), 1410, false, &tpl, &mut heads)
                        .expect("tcp")
                        .count,
                )
            })
        },
    );
    g.finish();
}

fn small_batch(c: &mut Criterion) {
    let mut g = c.benchmark_group("small datagrams");
    g.throughput(Throughput::Elements(64));
    g.bench_function(
        "gather 64 datagrams of one flow into one train (bookkeeping)",
        |b| {
            b.iter(|| {
                let mut batch = SmallBatch::default();
                for _ in 0..64 {
                    let at = batch
                        .slot(black_box(PEER.into()), 7, black_box(128), 128 * 1024)
                        .expect("fits");
                    black_box(at);
                    batch.commit(PEER.into(), 7, 128);
                }
                black_box(batch.take())
            })
        },
    );
    g.finish();
}

fn gro(c: &mut Criterion) {
    let segs: Vec<Vec<u8>> = (0..45u32).map(|i| tcp_packet(1450, 1 + i * 1410)).collect();
    let mut co = Coalescer::new(1450);
    let mut g = c.benchmark_group("GRO");
    g.throughput(Throughput::Elements(45));
    g.bench_function("coalesce 45 segments into one GSO frame", |b| {
        b.iter(|| {
            let mut frames = 0;
            let mut emit = |f: &[u8]| {
                let h = VnetHdr::parse(f).expect("header");
                debug_assert!(h.gso_type == GSO_TCPV4 && h.flags == F_NEEDS_CSUM);
                frames += 1;
            };
            for s in &segs {
                co.push(black_box(s), &mut emit);
            }
            co.flush(&mut emit);
            black_box(frames)
        })
    });
    g.finish();
}

fn pipeline(c: &mut Criterion) {
    let r = routes();
    let rx = inbound(true);
    let p = tcp_packet(1400, 1);
    let mut buf = vec![0u8; VXLAN_ENCAP + 1400];
    let mut scratch = vec![0u8; 1450];
    let mut g = c.benchmark_group("in-memory pipeline");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encap -> decap of a 1400-byte packet", |b| {
        b.iter(|| {
            buf[VXLAN_ENCAP..].copy_from_slice(black_box(&p));
            VxlanTemplate::new(1, OURS, PEER_MAC).write(&mut buf, 0);
            let mut n = 0;
            rx.receive(&r, PEER.into(), &mut buf, &mut scratch, |d| n += d.len())
                .expect("valid");
            black_box(n)
        })
    });
    g.finish();
}

criterion_group!(benches, encap_decap, tso_split, small_batch, gro, pipeline);
criterion_main!(benches);
