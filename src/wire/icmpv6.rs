//! ICMPv6 (RFC 4443) as far as weft builds it: the destination-unreachable reply to an IPv6 packet it cannot
//! route. The message has ICMP's layout (type, code, checksum, a 4-byte word, data; see `icmp::Packet`)
//! but its checksum covers the IPv6 pseudo-header.

use std::net::Ipv6Addr;

use super::csum::sum_words;
use super::icmp;
use super::ipv4::checksum_finish;
use super::ipv6::{self, PROTO_ICMPV6};

/// ICMPv6 header length (type, code, checksum and the unused word of an error message).
pub const HEADER_LEN: usize = icmp::HEADER_LEN;
/// The destination-unreachable type.
pub const TYPE_DEST_UNREACHABLE: u8 = 1;
/// Hop limit of the replies (the kernel's default for unicast).
const HOP_LIMIT: u8 = 64;
/// Traffic class of the replies: CS6 (network control), as the IPv4 replies' TOS.
const TRAFFIC_CLASS: u8 = 0xc0;

/// ICMPv6 destination-unreachable codes weft sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable6 {
    /// No route to the destination.
    NoRoute = 0,
    /// The address is unreachable.
    Address = 3,
}

/// True for the ICMPv6 error types (below 128, RFC 4443 section 2.1), which are never answered with an
/// ICMPv6 error.
pub fn is_error(msg_type: u8) -> bool {
    msg_type < 128
}

/// Writes into `out` an ICMPv6 destination-unreachable `code` from `from` to the source of `original`
/// (an IPv6 packet that could not be delivered), quoting as much of it as keeps the reply within the
/// IPv6 minimum MTU of 1280 bytes (and within `out`). Returns the reply's length, or None if `original`
/// is not a packet one may answer (RFC 4443 section 2.4 (e)): not IPv6, an ICMPv6 error itself (or a
/// packet whose upper layer cannot be found: a non-first fragment, a cut extension-header chain), from
/// an unspecified, loopback or multicast source, or to a multicast destination.
pub fn icmpv6_unreachable(
    original: &[u8],
    from: Ipv6Addr,
    code: Unreachable6,
    out: &mut [u8],
) -> Option<usize> {
    let ip = ipv6::Packet::new_checked(original).ok()?;
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    if src.is_unspecified() || src.is_loopback() || src.is_multicast() || dst.is_multicast() {
        return None;
    }
    let (upper, at) = ipv6::upper_layer(&ip)?;
    if upper == PROTO_ICMPV6 && is_error(*original.get(at + icmp::field::TYPE)?) {
        return None;
    }
    let room = out.len().min(ipv6::MIN_MTU);
    let quote = ip
        .total_len()
        .min(room.checked_sub(ipv6::HEADER_LEN + HEADER_LEN)?);
    let icmp_len = HEADER_LEN + quote;
    let len = ipv6::HEADER_LEN + icmp_len;
    let (hdr, rest) = out[..len].split_at_mut(ipv6::HEADER_LEN);
    ipv6::Repr {
        src_addr: from,
        dst_addr: src,
        next_header: PROTO_ICMPV6,
        payload_len: icmp_len,
        hop_limit: HOP_LIMIT,
        traffic_class: TRAFFIC_CLASS,
        flow_label: 0,
    }
    .emit(&mut ipv6::Packet::new_unchecked(&mut *hdr));
    let mut msg = icmp::Packet::new_unchecked(&mut *rest);
    msg.set_msg_type(TYPE_DEST_UNREACHABLE);
    msg.set_msg_code(code as u8);
    msg.clear_rest();
    msg.set_checksum(0);
    msg.data_mut().copy_from_slice(&original[..quote]);
    let pseudo = ipv6::pseudo_header_sum(from, src, PROTO_ICMPV6, icmp_len);
    let c = checksum_finish(pseudo + sum_words(rest));
    icmp::Packet::new_unchecked(rest).set_checksum(c);
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipv6::tests::{udp6_packet, A};
    use crate::wire::ipv6::{parse, EXT_FRAGMENT};

    const ROUTER: Ipv6Addr = Ipv6Addr::new(0xfc00, 0, 0, 99, 0, 0, 0, 3);

    /// RFC 1071 done the slow way, byte pair by byte pair, over a pseudo-header built by hand (RFC 8200
    /// section 8.1: source, destination, 32-bit length, three zero bytes, next header): independent of the
    /// helpers the reply is built with.
    fn verifies(reply: &[u8]) -> bool {
        let mut data = Vec::new();
        data.extend_from_slice(&reply[8..40]);
        data.extend_from_slice(&((reply.len() - 40) as u32).to_be_bytes());
        data.extend_from_slice(&[0, 0, 0, 58]);
        data.extend_from_slice(&reply[40..]);
        if data.len() % 2 == 1 {
            data.push(0);
        }
        let mut sum: u64 = 0;
        for w in data.chunks(2) {
            sum += u64::from(w[0]) << 8 | u64::from(w[1]);
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum == 0xffff
    }

    #[test]
    fn the_reply_quotes_the_packet_and_its_checksum_verifies() {
        let p = udp6_packet(A, ROUTER, 1000, 2000, b"0123456789");
        let mut out = [0u8; 1500];
        let n = icmpv6_unreachable(&p, ROUTER, Unreachable6::NoRoute, &mut out).unwrap();
        assert_eq!(n, 40 + 8 + p.len());
        let r = parse(&out[..n]).unwrap();
        assert_eq!((r.src, r.dst, r.next_header), (ROUTER, A, 58));
        assert_eq!(&out[..2], &[0x6c, 0x00], "version 6, traffic class 0xc0");
        assert_eq!(out[7], 64, "hop limit");
        assert_eq!(&out[40..42], &[1, 0], "destination unreachable, no route");
        assert_eq!(&out[44..48], &[0; 4], "unused word");
        assert_eq!(&out[48..n], &p[..]);
        assert!(verifies(&out[..n]));
        let mut flipped = out[..n].to_vec();
        flipped[60] ^= 1;
        assert!(!verifies(&flipped), "the check itself catches a change");
        // Odd lengths too.
        let p = udp6_packet(A, ROUTER, 1000, 2000, b"012345678");
        let n = icmpv6_unreachable(&p, ROUTER, Unreachable6::Address, &mut out).unwrap();
        assert_eq!(out[41], 3);
        assert!(verifies(&out[..n]));
    }

    #[test]
    fn a_large_packet_is_cut_to_keep_the_reply_within_1280_bytes() {
        let p = udp6_packet(A, ROUTER, 1000, 2000, &[7u8; 3000]);
        let mut out = [0u8; 4000];
        let n = icmpv6_unreachable(&p, ROUTER, Unreachable6::NoRoute, &mut out).unwrap();
        assert_eq!(n, 1280);
        assert_eq!(usize::from(u16::from_be_bytes([out[4], out[5]])), 1240);
        assert_eq!(&out[48..n], &p[..1232]);
        assert!(verifies(&out[..n]));
        // A smaller buffer cuts the quote further; one without room for the headers gets nothing.
        let n = icmpv6_unreachable(&p, ROUTER, Unreachable6::NoRoute, &mut out[..100]).unwrap();
        assert_eq!(n, 100);
        assert!(verifies(&out[..n]));
        assert!(icmpv6_unreachable(&p, ROUTER, Unreachable6::NoRoute, &mut out[..47]).is_none());
    }

    #[test]
    fn errors_multicast_and_unspecified_are_never_answered() {
        let mut out = [0u8; 1500];
        let mut reply = |p: &[u8]| icmpv6_unreachable(p, ROUTER, Unreachable6::NoRoute, &mut out);
        let good = udp6_packet(A, ROUTER, 1, 2, b"x");
        assert!(reply(&good).is_some());
        for src in ["::", "::1", "ff02::1"] {
            let p = udp6_packet(src.parse().unwrap(), ROUTER, 1, 2, b"x");
            assert!(reply(&p).is_none(), "from {src}");
        }
        let to_group = udp6_packet(A, "ff05::2".parse().unwrap(), 1, 2, b"x");
        assert!(reply(&to_group).is_none());
        // An ICMPv6 error (type 1) is not answered; an echo request (128) is.
        let mut icmp6 = udp6_packet(A, ROUTER, 0, 0, b"abcd");
        icmp6[6] = PROTO_ICMPV6;
        icmp6[40] = 1;
        assert!(reply(&icmp6).is_none());
        icmp6[40] = 128;
        assert!(reply(&icmp6).is_some());
        // Nor behind a fragment header, nor a later fragment whose type cannot be seen.
        let mut frag = udp6_packet(A, ROUTER, 0, 0, b"abcdefghijkl");
        frag[6] = EXT_FRAGMENT;
        frag[40] = PROTO_ICMPV6;
        frag[48] = 3; // time exceeded
        assert!(reply(&frag).is_none());
        frag[48] = 128;
        assert!(reply(&frag).is_some());
        frag[42..44].copy_from_slice(&[0, 8]);
        assert!(reply(&frag).is_none(), "a later fragment");
        assert!(reply(&good[..good.len() - 1]).is_none(), "truncated");
        assert!(reply(&[0x45, 0, 0]).is_none(), "not IPv6");
    }
}
