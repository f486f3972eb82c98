//! Fuzzes the WireGuard backend's receive path: arbitrary datagrams, and real data and handshake messages
//! with arbitrary bytes flipped, through `Node::open` — never a panic, and nothing delivered unless it
//! comes from the sending peer's subnet.
#![no_main]

use std::net::Ipv4Addr;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use weft::wireguard::node::connected_pair;
use weft::wireguard::Node;

const A_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const B_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

fn packet() -> Vec<u8> {
    let mut p = vec![0u8; 60];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&60u16.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[10, 5, 1, 9]);
    p[16..20].copy_from_slice(&[10, 5, 2, 7]);
    p
}

/// Two nodes that know each other, with a session up from a to b.
fn nodes() -> &'static (Node, Node) {
    static NODES: OnceLock<(Node, Node)> = OnceLock::new();
    NODES.get_or_init(connected_pair)
}

fuzz_target!(|data: &[u8]| {
    let (a, b) = nodes();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut out = vec![0u8; 65536];
    let datagram = match mode % 3 {
        0 => rest.to_vec(),
        // A real data message (a fresh counter each run) with the input XORed over it.
        1 => {
            let p = packet();
            let mut sealed = vec![0u8; 1024];
            let n = a
                .seal(B_IP.into(), &p, p.len(), &mut sealed, |_, _| {})
                .unwrap_or(0);
            sealed.truncate(n);
            for (x, y) in sealed.iter_mut().zip(rest) {
                *x ^= y;
            }
            sealed
        }
        // Any input of a handshake initiation's length, typed as one.
        _ => {
            let mut m = rest.to_vec();
            m.resize(148, 0);
            m[0] = 1;
            m
        }
    };
    let _ = b.open(
        A_IP.into(),
        &datagram,
        &mut out,
        |_, _| {},
        |p| {
            assert!(
                p.len() >= 20 && p[12..15] == [10, 5, 1],
                "delivered only from a's subnet"
            );
            Ok(())
        },
    );
});
