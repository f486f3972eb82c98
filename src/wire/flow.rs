//! Inner-flow hashing: keeps one flow on one outer UDP source port (and so one receive queue), spreads flows.

use super::be32;
use super::ipv4::{parse, Ipv4Info, PROTO_SCTP, PROTO_TCP, PROTO_UDP};
use super::ipv6::{self, Ipv6Info, Upper};
use super::tcp::field::PORTS;

/// A hash of the inner packet's flow: addresses, protocol and, for TCP/UDP/SCTP first fragments (IPv4)
/// or TCP/UDP directly after the fixed header (IPv6), ports. Returns 0 for packets that are neither.
#[inline]
pub fn flow_hash(packet: &[u8]) -> u32 {
    if packet.first().is_some_and(|b| b >> 4 == 6) {
        return match ipv6::parse(packet) {
            Some(ip) => flow_hash_parsed6(&ip, packet),
            None => 0,
        };
    }
    match parse(packet) {
        Some(ip) => flow_hash_parsed(&ip, packet),
        None => 0,
    }
}

/// [`flow_hash`] of an IPv6 packet whose header `ip` was already parsed from `packet`. TCP and UDP flows
/// hash their addresses and ports; any other packet (extension headers, other protocols) its addresses,
/// next header and flow label (RFC 6437: the label names the flow where the ports cannot be read). The
/// label is left out where the ports are there, so a sender that changes it (Linux does, after a
/// retransmission timeout) keeps its flow on one outer port.
#[inline]
pub fn flow_hash_parsed6(ip: &Ipv6Info, packet: &[u8]) -> u32 {
    let (s, d) = (u128::from(ip.src), u128::from(ip.dst));
    let mut h = (s as u64) ^ ((s >> 64) as u64).rotate_left(17);
    h ^= ((d as u64) ^ ((d >> 64) as u64).rotate_left(17)).rotate_left(32);
    h ^= u64::from(ip.next_header) << 56;
    match ip.upper() {
        Upper::Tcp | Upper::Udp => {
            if let Some(p) = packet[ipv6::HEADER_LEN..ip.total_len].get(PORTS) {
                h ^= u64::from(be32(p));
            }
        }
        _ => h ^= u64::from(ip.flow_label) << 8,
    }
    mix(h)
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
    mix(h)
}

/// The 64-bit finaliser of MurmurHash3, folded to 32 bits: every input bit moves every output bit.
#[inline]
fn mix(mut h: u64) -> u32 {
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

    #[test]
    fn ipv6_flows_hash_ports_and_ignore_the_label_when_ports_are_there() {
        use crate::wire::ipv6::tests::{udp6_packet, A, B};
        let a = udp6_packet(A, B, 1000, 80, b"x");
        let mut relabelled = udp6_packet(A, B, 1000, 80, b"other payload");
        relabelled[3] ^= 0x55;
        let b = udp6_packet(A, B, 1001, 80, b"x");
        assert_ne!(flow_hash(&a), 0);
        assert_eq!(flow_hash(&a), flow_hash(&relabelled));
        assert_ne!(flow_hash(&a), flow_hash(&b));
        assert_ne!(flow_hash(&a), flow_hash(&udp6_packet(B, A, 1000, 80, b"x")));
        // Behind an extension header the ports are not read, and the label tells flows apart.
        let mut opaque = a.clone();
        opaque[6] = crate::wire::ipv6::EXT_DEST_OPTS;
        let mut other_label = opaque.clone();
        other_label[3] ^= 1;
        assert_ne!(flow_hash(&opaque), flow_hash(&other_label));
        assert_eq!(flow_hash(&a[..a.len() - 1]), 0, "truncated");
        let spread: std::collections::HashSet<u32> = (0..64u16)
            .map(|p| flow_hash(&udp6_packet(A, B, 1000 + p, 80, b"x")) % 8)
            .collect();
        assert_eq!(spread.len(), 8, "64 flows cover all 8 buckets");
    }
}
