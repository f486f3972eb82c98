//! IPv4 headers: the checked `Packet` view and its `Repr`, the summary the data plane reads, and the
//! Internet checksum.

use std::net::Ipv4Addr;

use super::{be16, Error};

pub use super::icmp::{icmp_unreachable, Unreachable};

/// Byte ranges of the IPv4 header (RFC 791) without options.
pub mod field {
    use crate::wire::Field;

    /// Version (high nibble) and header length in 32-bit words (low nibble).
    pub const VER_IHL: usize = 0;
    /// DSCP and ECN (the old TOS byte).
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: Field = 2..4;
    pub const IDENT: Field = 4..6;
    /// Flags (high three bits) and fragment offset.
    pub const FLG_OFF: Field = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Field = 10..12;
    pub const SRC_ADDR: Field = 12..16;
    pub const DST_ADDR: Field = 16..20;
    /// Source and destination address: the part of the header in the TCP/UDP pseudo-header.
    pub const ADDRESSES: Field = 12..20;
}

/// Minimum (and, without options, the only) IPv4 header length.
pub const HEADER_LEN: usize = 20;
/// Minimum IPv4 header length (the name callers used before the view).
pub const IPV4_MIN_HEADER: usize = HEADER_LEN;
/// Protocol numbers weft handles.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_SCTP: u8 = 132;
const DONT_FRAG: u16 = 0x4000;
const MORE_FRAGS: u16 = 0x2000;
const FRAG_OFFSET: u16 = 0x1fff;

/// A view of an IPv4 packet (see the contract in `wire`).
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A view without checks: for a buffer already checked, or about to be filled by `Repr::emit`.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// A view of untrusted bytes: fails unless they are a complete IPv4 packet (see `check_len`).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Packet<T>, Error> {
        let p = Packet::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Ok if the buffer holds a version 4 header of at least 20 bytes and the whole packet its total
    /// length claims, which covers the header. Bytes after the total length (link padding) are allowed.
    #[inline]
    pub fn check_len(&self) -> Result<(), Error> {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN || self.version() != 4 {
            return Err(Error);
        }
        let (hl, total) = (self.header_len(), self.total_len());
        if hl < HEADER_LEN || total < hl || total > b.len() {
            return Err(Error);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// The header length in bytes.
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    #[inline]
    pub fn dscp_ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN]
    }

    /// The total length field: header and payload.
    #[inline]
    pub fn total_len(&self) -> usize {
        usize::from(be16(&self.buffer.as_ref()[field::LENGTH]))
    }

    #[inline]
    pub fn ident(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::IDENT])
    }

    #[inline]
    pub fn dont_frag(&self) -> bool {
        be16(&self.buffer.as_ref()[field::FLG_OFF]) & DONT_FRAG != 0
    }

    #[inline]
    pub fn more_frags(&self) -> bool {
        be16(&self.buffer.as_ref()[field::FLG_OFF]) & MORE_FRAGS != 0
    }

    /// The fragment offset in 8-byte units; non-zero for every fragment but the first.
    #[inline]
    pub fn frag_offset(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::FLG_OFF]) & FRAG_OFFSET
    }

    /// True for any fragment (first or later) of a fragmented packet.
    #[inline]
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }

    #[inline]
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    #[inline]
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::CHECKSUM])
    }

    #[inline]
    pub fn src_addr(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::SRC_ADDR];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    #[inline]
    pub fn dst_addr(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::DST_ADDR];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    /// The running one's-complement sum of the TCP/UDP pseudo-header for this packet's protocol and
    /// an L4 length of `l4_len` bytes (fold it in with `checksum_finish`).
    #[inline]
    pub fn pseudo_header_sum(&self, l4_len: usize) -> u32 {
        checksum_add(0, &self.buffer.as_ref()[field::ADDRESSES])
            + u32::from(self.protocol())
            + l4_len as u32
    }

    /// True if the header checksum verifies.
    pub fn verify_checksum(&self) -> bool {
        checksum(&self.buffer.as_ref()[..self.header_len()]) == 0
    }

    /// The header, options included.
    #[inline]
    pub fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.header_len()]
    }

    /// The payload: from the end of the header to the total length.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..self.total_len()]
    }

    /// The summary the data plane reads.
    #[inline]
    pub fn info(&self) -> Ipv4Info {
        Ipv4Info {
            src: self.src_addr(),
            dst: self.dst_addr(),
            protocol: self.protocol(),
            header_len: self.header_len(),
            total_len: self.total_len(),
            later_fragment: self.frag_offset() != 0,
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets version 4 and a header length of `len` bytes (a multiple of 4).
    #[inline]
    pub fn set_version_and_header_len(&mut self, len: usize) {
        self.buffer.as_mut()[field::VER_IHL] = 0x40 | (len / 4) as u8;
    }

    #[inline]
    pub fn set_dscp_ecn(&mut self, v: u8) {
        self.buffer.as_mut()[field::DSCP_ECN] = v;
    }

    #[inline]
    pub fn set_total_len(&mut self, len: usize) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&(len as u16).to_be_bytes());
    }

    #[inline]
    pub fn set_ident(&mut self, id: u16) {
        self.buffer.as_mut()[field::IDENT].copy_from_slice(&id.to_be_bytes());
    }

    /// Sets the flags and fragment offset of an unfragmented packet, with or without DF.
    #[inline]
    pub fn set_unfragmented(&mut self, dont_frag: bool) {
        let v = if dont_frag { DONT_FRAG } else { 0 };
        self.buffer.as_mut()[field::FLG_OFF].copy_from_slice(&v.to_be_bytes());
    }

    #[inline]
    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[field::TTL] = ttl;
    }

    #[inline]
    pub fn set_protocol(&mut self, p: u8) {
        self.buffer.as_mut()[field::PROTOCOL] = p;
    }

    #[inline]
    pub fn set_checksum(&mut self, c: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    }

    #[inline]
    pub fn set_src_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&a.octets());
    }

    #[inline]
    pub fn set_dst_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&a.octets());
    }

    /// Computes the header checksum (over `header_len` bytes) and writes it.
    #[inline]
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let c = checksum(&self.buffer.as_ref()[..self.header_len()]);
        self.set_checksum(c);
    }

    /// The payload, mutable: from the end of the header to the total length.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (hl, total) = (self.header_len(), self.total_len());
        &mut self.buffer.as_mut()[hl..total]
    }
}

/// The fields of an IPv4 header without options, as weft writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub src_addr: Ipv4Addr,
    pub dst_addr: Ipv4Addr,
    pub protocol: u8,
    /// Bytes after the header.
    pub payload_len: usize,
    pub ttl: u8,
    pub ident: u16,
    pub dont_frag: bool,
    pub dscp_ecn: u8,
}

impl Repr {
    /// Header plus payload.
    pub fn total_len(&self) -> usize {
        HEADER_LEN + self.payload_len
    }

    /// Writes the 20-byte header, checksum included, into the front of `packet`.
    #[inline]
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_version_and_header_len(HEADER_LEN);
        packet.set_dscp_ecn(self.dscp_ecn);
        packet.set_total_len(self.total_len());
        packet.set_ident(self.ident);
        packet.set_unfragmented(self.dont_frag);
        packet.set_ttl(self.ttl);
        packet.set_protocol(self.protocol);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
        packet.fill_checksum();
    }
}

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
    Packet::new_checked(b).ok().map(|p| p.info())
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::wire::udp;

    /// A valid IPv4/UDP packet from `src` to `dst` with `payload` (UDP checksum 0), built with the views.
    pub fn udp_packet(
        src: [u8; 4],
        dst: [u8; 4],
        sport: u16,
        dport: u16,
        payload: &[u8],
    ) -> Vec<u8> {
        let ip = Repr {
            src_addr: src.into(),
            dst_addr: dst.into(),
            protocol: PROTO_UDP,
            payload_len: udp::HEADER_LEN + payload.len(),
            ttl: 64,
            ident: 0x1234,
            dont_frag: true,
            dscp_ecn: 0,
        };
        let mut p = vec![0u8; ip.total_len()];
        ip.emit(&mut Packet::new_unchecked(&mut p[..]));
        let mut u = udp::Packet::new_unchecked(&mut p[HEADER_LEN..]);
        udp::Repr {
            src_port: sport,
            dst_port: dport,
        }
        .emit(&mut u, payload.len());
        u.payload_mut().copy_from_slice(payload);
        p
    }

    /// The header of `udp_packet([10, 5, 1, 2], [10, 5, 2, 3], ..)` with 13 bytes after it.
    const HEADER: [u8; 20] = [
        0x45, 0x00, 0x00, 0x21, // version 4, 20-byte header, TOS 0, total 33
        0x12, 0x34, 0x40, 0x00, // ident, DF
        0x40, 0x11, 0x00, 0x00, // TTL 64, UDP, checksum (filled below)
        10, 5, 1, 2, 10, 5, 2, 3,
    ];

    #[test]
    fn view_reads_the_fields_of_a_byte_array() {
        let mut b = [0u8; 33];
        b[..20].copy_from_slice(&HEADER);
        let mut w = Packet::new_unchecked(&mut b[..]);
        w.fill_checksum();
        let p = Packet::new_checked(&b[..]).unwrap();
        assert!(p.verify_checksum());
        assert_eq!((p.version(), p.header_len(), p.total_len()), (4, 20, 33));
        assert_eq!(
            (p.ident(), p.dont_frag(), p.more_frags(), p.frag_offset()),
            (0x1234, true, false, 0)
        );
        assert_eq!((p.ttl(), p.protocol(), p.dscp_ecn()), (64, 17, 0));
        assert_eq!(
            (p.src_addr(), p.dst_addr()),
            (Ipv4Addr::new(10, 5, 1, 2), Ipv4Addr::new(10, 5, 2, 3))
        );
        assert_eq!(p.payload().len(), 13);
        assert_eq!(
            &udp_packet([10, 5, 1, 2], [10, 5, 2, 3], 1000, 2000, b"hello")[..20],
            &b[..20]
        );
    }

    #[test]
    fn truncated_or_inconsistent_input_is_an_error_never_a_panic() {
        let p = udp_packet([10, 5, 1, 2], [10, 5, 2, 3], 1000, 2000, b"hello");
        for n in 0..p.len() {
            assert_eq!(Packet::new_checked(&p[..n]).err(), Some(Error), "{n}");
        }
        for (at, v) in [(0, 0x44), (0, 0x65), (0, 0x4f), (2, 1), (3, 19)] {
            let mut bad = p.clone();
            bad[at] = v;
            assert_eq!(
                Packet::new_checked(&bad[..]).err(),
                Some(Error),
                "byte {at} = {v:#x}"
            );
        }
        // Every accessor on any checked view of random bytes stays in bounds.
        let mut x = 0x9e37_79b9u32;
        for _ in 0..2000 {
            let mut b = [0u8; 40];
            for v in b.iter_mut() {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *v = x as u8;
            }
            b[0] = 0x45 + b[0] % 6;
            b[2] = 0;
            b[3] = 20 + b[3] % 21;
            if let Ok(v) = Packet::new_checked(&b[..]) {
                let _ = (
                    v.info(),
                    v.header(),
                    v.payload(),
                    v.pseudo_header_sum(v.payload().len()),
                );
            }
        }
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
}
