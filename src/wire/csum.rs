//! Inner TCP/UDP checksums: verification and completion of checksums a sender left partial.
//!
//! A Linux sender whose VXLAN packets cross only virtual links (veth) never has its inner checksum
//! computed: the skb stays CHECKSUM_PARTIAL, with the pseudo-header sum in the checksum field, and the
//! kernel at the far end trusts that metadata. A userspace receiver sees only bytes, so it completes such
//! checksums itself before handing the packet on.

use super::ipv4::{self, checksum_add, checksum_finish, PROTO_TCP, PROTO_UDP};
use super::ipv6::{self, Upper};
use super::{be16, tcp, udp};

/// Fast one's-complement sum of `data` (big-endian 16-bit words). Adds 32-bit big-endian words into four
/// 64-bit accumulators (no carries to track; the compiler vectorises it), then folds: the sum of 32-bit
/// words folded to 16 bits equals the sum of the 16-bit words, since 2^16 = 1 modulo 2^16 - 1.
#[inline]
pub fn sum_words(data: &[u8]) -> u32 {
    let mut acc = [0u64; 4];
    let mut chunks = data.chunks_exact(16);
    for c in &mut chunks {
        for (k, a) in acc.iter_mut().enumerate() {
            let w = &c[k * 4..k * 4 + 4];
            *a += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
        }
    }
    let mut sum: u64 = acc.iter().sum();
    let mut words = chunks.remainder().chunks_exact(4);
    for w in &mut words {
        sum += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    sum = (sum >> 32) + (sum & 0xffff_ffff);
    sum = (sum >> 32) + (sum & 0xffff_ffff);
    let mut s = (sum >> 16) + (sum & 0xffff);
    s = (s >> 16) + (s & 0xffff);
    checksum_add(s as u32, words.remainder())
}

fn fold(mut s: u32) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// What `complete_l4` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4Checksum {
    /// Valid, absent (UDP 0), or not checkable (not TCP/UDP, a fragment).
    Fine,
    /// Was left partial by the sender and has been completed.
    Completed,
    /// Wrong and not a partial checksum: the packet was corrupted; the receiver's stack will drop it.
    Bad,
}

/// Verifies the TCP/UDP checksum of a complete IPv4 or IPv6 packet and completes it if the sender left
/// it partial (the field holds the folded pseudo-header sum). IPv6 packets are checked where TCP or UDP
/// directly follows the fixed header (others are `Fine`: weft does not look behind extension headers);
/// over IPv6 a UDP checksum of 0 is not "none" but wrong (RFC 8200 section 8.1).
pub fn complete_l4(packet: &mut [u8]) -> L4Checksum {
    let v6 = packet.first().is_some_and(|b| b >> 4 == 6);
    let (protocol, hl, total, pseudo) = if v6 {
        let Ok(ip) = ipv6::Packet::new_checked(&*packet) else {
            return L4Checksum::Fine;
        };
        let protocol = match ip.upper() {
            Upper::Tcp => PROTO_TCP,
            Upper::Udp => PROTO_UDP,
            _ => return L4Checksum::Fine,
        };
        let total = ip.total_len();
        let l4_len = total - ipv6::HEADER_LEN;
        (
            protocol,
            ipv6::HEADER_LEN,
            total,
            ip.pseudo_header_sum(protocol, l4_len),
        )
    } else {
        let Ok(ip) = ipv4::Packet::new_checked(&*packet) else {
            return L4Checksum::Fine;
        };
        if ip.is_fragment() {
            return L4Checksum::Fine;
        }
        let (hl, total) = (ip.header_len(), ip.total_len());
        (ip.protocol(), hl, total, ip.pseudo_header_sum(total - hl))
    };
    let off = match protocol {
        PROTO_TCP => tcp::field::CHECKSUM.start,
        PROTO_UDP => udp::field::CHECKSUM.start,
        _ => return L4Checksum::Fine,
    };
    let l4_len = total - hl;
    if l4_len < off + 2 {
        return L4Checksum::Fine;
    }
    let l4 = &mut packet[hl..total];
    let field = be16(&l4[off..off + 2]);
    if protocol == PROTO_UDP && field == 0 {
        return if v6 {
            L4Checksum::Bad
        } else {
            L4Checksum::Fine
        };
    }
    if checksum_finish(pseudo + sum_words(l4)) == 0 {
        return L4Checksum::Fine;
    }
    if field != fold(pseudo) {
        return L4Checksum::Bad;
    }
    l4[off..off + 2].copy_from_slice(&[0, 0]);
    let mut c = checksum_finish(pseudo + sum_words(l4));
    if protocol == PROTO_UDP && c == 0 {
        c = 0xffff;
    }
    l4[off..off + 2].copy_from_slice(&c.to_be_bytes());
    L4Checksum::Completed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipv4::tests::udp_packet;

    fn with_full_udp_checksum(mut p: Vec<u8>) -> Vec<u8> {
        let ip = ipv4::Packet::new_checked(&p[..]).unwrap();
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        udp::Packet::new_unchecked(&mut p[ipv4::HEADER_LEN..]).fill_checksum(src, dst);
        p
    }

    #[test]
    fn fast_sum_matches_the_plain_one() {
        let data: Vec<u8> = (0..1001u32).map(|i| (i * 7 + 3) as u8).collect();
        for n in [0, 1, 7, 8, 9, 64, 1000, 1001] {
            assert_eq!(
                checksum_finish(sum_words(&data[..n])),
                ipv4::checksum(&data[..n]),
                "len {n}"
            );
        }
    }

    #[test]
    fn valid_absent_partial_and_bad() {
        let good = with_full_udp_checksum(udp_packet(
            [10, 5, 2, 9],
            [10, 5, 1, 7],
            1234,
            80,
            b"payload!!",
        ));
        let mut p = good.clone();
        assert_eq!(complete_l4(&mut p), L4Checksum::Fine);
        let mut none = udp_packet([10, 5, 2, 9], [10, 5, 1, 7], 1234, 80, b"payload!!");
        assert_eq!(
            complete_l4(&mut none),
            L4Checksum::Fine,
            "UDP checksum 0 means none"
        );
        // What a CHECKSUM_PARTIAL sender leaves: the folded pseudo-header sum.
        let mut partial = good.clone();
        let pseudo = fold(checksum_add(0, &partial[12..20]) + 17 + (partial.len() - 20) as u32);
        partial[26..28].copy_from_slice(&pseudo.to_be_bytes());
        assert_eq!(complete_l4(&mut partial), L4Checksum::Completed);
        assert_eq!(partial, good);
        let mut bad = good.clone();
        bad[30] ^= 0xff;
        assert_eq!(complete_l4(&mut bad), L4Checksum::Bad);
    }

    #[test]
    fn ipv6_valid_partial_bad_and_zero_udp() {
        use crate::wire::ipv6::tests::{udp6_packet, A, B};
        let good = udp6_packet(A, B, 1234, 80, b"payload!!");
        assert_eq!(complete_l4(&mut good.clone()), L4Checksum::Fine);
        let mut partial = good.clone();
        let ip = ipv6::Packet::new_checked(&good[..]).unwrap();
        let pseudo = fold(ip.pseudo_header_sum(PROTO_UDP, good.len() - 40));
        partial[46..48].copy_from_slice(&pseudo.to_be_bytes());
        assert_eq!(complete_l4(&mut partial), L4Checksum::Completed);
        assert_eq!(partial, good);
        let mut bad = good.clone();
        bad[50] ^= 0xff;
        assert_eq!(complete_l4(&mut bad), L4Checksum::Bad);
        let mut zero = good.clone();
        zero[46..48].copy_from_slice(&[0, 0]);
        assert_eq!(
            complete_l4(&mut zero),
            L4Checksum::Bad,
            "mandatory over IPv6"
        );
        let mut opaque = bad.clone();
        opaque[6] = ipv6::EXT_DEST_OPTS;
        assert_eq!(
            complete_l4(&mut opaque),
            L4Checksum::Fine,
            "not looked behind"
        );
    }
}
