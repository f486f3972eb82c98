//! Inner-flow hashing: keeps one flow on one outer UDP source port (and so one receive queue), spreads flows.

use super::be32;
use super::ipv4::{parse, Ipv4Info, PROTO_SCTP, PROTO_TCP, PROTO_UDP};
use super::tcp::field::PORTS;

/// A hash of the inner packet's flow: addresses, protocol and, for TCP/UDP/SCTP first fragments, ports.
/// Returns 0 for packets that are not IPv4.
#[inline]
pub fn flow_hash(packet: &[u8]) -> u32 {
    match parse(packet) {
        Some(ip) => flow_hash_parsed(&ip, packet),
        None => 0,
    }
}

/// [`flow_hash`] of a packet whose IPv4 header `ip` was already parsed from `packet` (no second check).
#[inline]
pub fn flow_hash_parsed(ip: &Ipv4Info, packet: &[u8]) -> u32 {
    let mut h = u64::from(u32::from(ip.src)) << 32 | u64::from(u32::from(ip.dst));
    h ^= u64::from(ip.protocol) << 56;
    if matches!(ip.protocol, PROTO_TCP | PROTO_UDP | PROTO_SCTP) && !ip.later_fragment {
        // The ports lead all three headers. (Read from the buffer: a header cut short by the total length
        // hashes what follows, as before the views.)
        let l4 = &packet[ip.header_len..];
        if let Some(p) = l4.get(PORTS) {
            h ^= u64::from(be32(p));
        }
    }
    h = (h ^ (h >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    h = (h ^ (h >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    (h ^ (h >> 33)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipv4::tests::udp_packet;

    #[test]
    fn same_flow_same_hash_and_ports_matter() {
        let a = udp_packet([10, 5, 1, 2], [10, 5, 2, 3], 1000, 80, b"x");
        let a2 = udp_packet([10, 5, 1, 2], [10, 5, 2, 3], 1000, 80, b"other payload");
        let b = udp_packet([10, 5, 1, 2], [10, 5, 2, 3], 1001, 80, b"x");
        assert_eq!(flow_hash(&a), flow_hash(&a2));
        assert_ne!(flow_hash(&a), flow_hash(&b));
        assert_eq!(flow_hash(&[0x60, 0, 0]), 0);
        let spread: std::collections::HashSet<u32> = (0..64u16)
            .map(|p| {
                flow_hash(&udp_packet(
                    [10, 5, 1, 2],
                    [10, 5, 2, 3],
                    1000 + p,
                    80,
                    b"x",
                )) % 8
            })
            .collect();
        assert_eq!(spread.len(), 8, "64 flows cover all 8 buckets");
    }
}
