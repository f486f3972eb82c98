//! Checked views of inner IPv4 packets, the Internet checksum and ICMP destination-unreachable replies.

use std::net::Ipv4Addr;

/// Minimum IPv4 header length.
pub const IPV4_MIN_HEADER: usize = 20;

/// The parts of an IPv4 packet the data plane reads, taken from a buffer whose header was validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Info {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    pub header_len: usize,
    /// Total length from the header (never more than the buffer).
    pub total_len: usize,
    /// True for a non-first fragment (no transport header in it).
    pub later_fragment: bool,
}

/// Parses an IPv4 header; None if `b` is not a complete IPv4 packet (version, header length, total length).
#[inline]
pub fn parse(b: &[u8]) -> Option<Ipv4Info> {
    if b.len() < IPV4_MIN_HEADER || b[0] >> 4 != 4 {
        return None;
    }
    let header_len = usize::from(b[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([b[2], b[3]]));
    if header_len < IPV4_MIN_HEADER || total_len < header_len || total_len > b.len() {
        return None;
    }
    let frag = u16::from_be_bytes([b[6], b[7]]);
    Some(Ipv4Info {
        src: Ipv4Addr::new(b[12], b[13], b[14], b[15]),
        dst: Ipv4Addr::new(b[16], b[17], b[18], b[19]),
        protocol: b[9],
        header_len,
        total_len,
        later_fragment: frag & 0x1fff != 0,
    })
}

/// Adds `data` to a running one's-complement sum (RFC 1071).
#[inline]
pub fn checksum_add(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

/// Folds a running sum into the final 16-bit checksum.
#[inline]
pub fn checksum_finish(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    checksum_finish(checksum_add(0, data))
}

/// ICMP destination-unreachable codes weft sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    Net = 0,
    Host = 1,
}

/// Writes into `out` an ICMP destination-unreachable from `router` about `original` (an IPv4 packet
/// that could not be delivered), quoting its header and first 8 payload bytes as RFC 792 asks.
/// Returns the reply's length, or None if `original` is not a packet one may answer (not IPv4, an
/// ICMP error itself, a later fragment, or from an unspecified/multicast/broadcast source).
pub fn icmp_unreachable(
    original: &[u8],
    router: Ipv4Addr,
    code: Unreachable,
    out: &mut [u8],
) -> Option<usize> {
    let info = parse(original)?;
    if info.src.is_unspecified()
        || info.src.is_multicast()
        || info.src.is_broadcast()
        || info.later_fragment
    {
        return None;
    }
    if info.protocol == 1 {
        // Never answer an ICMP error with an ICMP error (types 3, 4, 5, 11, 12).
        let t = *original.get(info.header_len)?;
        if matches!(t, 3 | 4 | 5 | 11 | 12) {
            return None;
        }
    }
    let quote = (info.header_len + 8).min(info.total_len);
    let len = IPV4_MIN_HEADER + 8 + quote;
    if out.len() < len {
        return None;
    }
    let (ip, rest) = out[..len].split_at_mut(IPV4_MIN_HEADER);
    ip.copy_from_slice(&[
        0x45, 0xc0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    ip[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    ip[12..16].copy_from_slice(&router.octets());
    ip[16..20].copy_from_slice(&info.src.octets());
    let c = checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    rest[..8].copy_from_slice(&[3, code as u8, 0, 0, 0, 0, 0, 0]);
    rest[8..].copy_from_slice(&original[..quote]);
    let c = checksum(rest);
    rest[2..4].copy_from_slice(&c.to_be_bytes());
    Some(len)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid IPv4/UDP packet from `src` to `dst` with `payload`.
    pub fn udp_packet(
        src: [u8; 4],
        dst: [u8; 4],
        sport: u16,
        dport: u16,
        payload: &[u8],
    ) -> Vec<u8> {
        let total = 28 + payload.len();
        let mut p = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 17, 0, 0];
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        let c = checksum(&p);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn parses_and_rejects() {
        let p = udp_packet([10, 5, 1, 2], [10, 5, 2, 3], 1000, 2000, b"hello");
        let i = parse(&p).unwrap();
        assert_eq!(i.src, Ipv4Addr::new(10, 5, 1, 2));
        assert_eq!(i.dst, Ipv4Addr::new(10, 5, 2, 3));
        assert_eq!((i.protocol, i.header_len, i.total_len), (17, 20, 33));
        assert!(parse(&p[..32]).is_none(), "total length beyond the buffer");
        assert!(parse(&p[..19]).is_none());
        let mut v6 = p.clone();
        v6[0] = 0x60;
        assert!(parse(&v6).is_none());
        let mut bad_ihl = p.clone();
        bad_ihl[0] = 0x44;
        assert!(parse(&bad_ihl).is_none());
        assert_eq!(checksum(&p[..20]), 0, "header checksum verifies");
    }

    #[test]
    fn icmp_unreachable_quotes_and_checksums() {
        let p = udp_packet([10, 5, 1, 2], [10, 5, 99, 3], 1000, 2000, b"0123456789");
        let mut out = [0u8; 128];
        let n =
            icmp_unreachable(&p, Ipv4Addr::new(10, 5, 1, 0), Unreachable::Net, &mut out).unwrap();
        assert_eq!(n, 20 + 8 + 28);
        let r = parse(&out[..n]).unwrap();
        assert_eq!(
            (r.src, r.dst, r.protocol),
            (Ipv4Addr::new(10, 5, 1, 0), Ipv4Addr::new(10, 5, 1, 2), 1)
        );
        assert_eq!(checksum(&out[..20]), 0);
        assert_eq!(checksum(&out[20..n]), 0);
        assert_eq!(&out[20..22], &[3, 0]);
        assert_eq!(&out[28..n], &p[..28]);
        // No ICMP error about an ICMP error.
        let mut e = out[..n].to_vec();
        e[12..16].copy_from_slice(&[10, 5, 1, 9]);
        assert!(icmp_unreachable(
            &e,
            Ipv4Addr::new(10, 5, 1, 0),
            Unreachable::Net,
            &mut [0u8; 128]
        )
        .is_none());
    }
}
