//! Shared setup of the inbound fuzz targets: a route table with one peer and this host's settings.

use std::net::Ipv4Addr;

use weft::routes::{Peer, PeerBackend, RouteSnapshot};
use weft::wire::ethernet::MacAddr;
use weft::wire::inbound::{Encap, Inbound};

pub const PEER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

pub fn routes() -> RouteSnapshot {
    RouteSnapshot::new([Peer {
        v6: None,
        subnet: "10.5.2.0/24".parse().expect("subnet"),
        public_ip: PEER,
        backend: PeerBackend::Vxlan {
            vni: 1,
            vtep_mac: MacAddr([2, 0, 0, 0, 0, 2]),
        },
    }])
}

/// Runs the whole inbound pipeline on `data` and checks what it delivers.
#[allow(dead_code)] // xdp_frame shares this file's setup but has its own entry
pub fn run(data: &[u8], encap: Encap) {
    run_from(PEER, data, encap)
}

/// As `run`, for a datagram from underlay address `src`.
pub fn run_from(src: Ipv4Addr, data: &[u8], encap: Encap) {
    let rx = Inbound {
        own: "10.5.1.0/24".parse().expect("subnet"),
        encap,
        mtu: 1450,
        tun_offload: false,
    };
    let mut payload = data.to_vec();
    let mut scratch = vec![0u8; 1450];
    let _ = rx.receive(&routes(), src, &mut payload, &mut scratch, |packet| {
        assert!(packet.len() <= 1450, "delivered more than the MTU");
        let ip = weft::wire::ipv4::parse(packet).expect("delivered packets are valid IPv4");
        assert!(rx.own.contains(&ip.dst), "delivered a packet not for us");
    });
}
