//! ICMPv4 as far as weft builds it: the checked `Packet` view and the destination-unreachable replies
//! weft sends for packets it cannot route.

use std::net::Ipv4Addr;

use super::ipv4::{self, checksum, PROTO_ICMP};
use super::{be16, Error};

/// Byte ranges of the ICMP header (RFC 792).
pub mod field {
    use crate::wire::Field;

    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Field = 2..4;
    /// Unused in destination-unreachable (next-hop MTU for code 4): zero here.
    pub const REST: Field = 4..8;
    /// The quoted packet (or echo data) starts here.
    pub const DATA: usize = 8;
}

/// ICMP header length.
pub const HEADER_LEN: usize = field::DATA;
/// The destination-unreachable type.
pub const TYPE_DEST_UNREACHABLE: u8 = 3;

/// True for the ICMP error types (destination unreachable, source quench, redirect, time exceeded,
/// parameter problem), which must never be answered with an ICMP error.
pub fn is_error(msg_type: u8) -> bool {
    matches!(msg_type, 3 | 4 | 5 | 11 | 12)
}

/// A view of an ICMP message (see the contract in `wire`).
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A view without checks: for a buffer known to hold `HEADER_LEN` bytes.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// A view of untrusted bytes: fails unless they hold the 8-byte header.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Packet<T>, Error> {
        let p = Packet::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    #[inline]
    pub fn check_len(&self) -> Result<(), Error> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(Error)
        } else {
            Ok(())
        }
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    #[inline]
    pub fn msg_code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::CHECKSUM])
    }

    /// True if the checksum over the whole message verifies.
    pub fn verify_checksum(&self) -> bool {
        checksum(self.buffer.as_ref()) == 0
    }

    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[field::DATA..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    #[inline]
    pub fn set_msg_type(&mut self, t: u8) {
        self.buffer.as_mut()[field::TYPE] = t;
    }

    #[inline]
    pub fn set_msg_code(&mut self, c: u8) {
        self.buffer.as_mut()[field::CODE] = c;
    }

    #[inline]
    pub fn set_checksum(&mut self, c: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    }

    /// Zeroes the type-specific word after the checksum.
    #[inline]
    pub fn clear_rest(&mut self) {
        self.buffer.as_mut()[field::REST].fill(0);
    }

    /// Computes the checksum over the whole buffer and writes it.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let c = checksum(self.buffer.as_ref());
        self.set_checksum(c);
    }

    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::DATA..]
    }
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
    let info = ipv4::parse(original)?;
    if info.src.is_unspecified()
        || info.src.is_multicast()
        || info.src.is_broadcast()
        || info.later_fragment
    {
        return None;
    }
    if info.protocol == PROTO_ICMP {
        // Never answer an ICMP error with an ICMP error. (The type is read from the buffer, as before
        // the views: a header-only ICMP packet followed by link padding is judged by that padding.)
        let t = *original.get(info.header_len + field::TYPE)?;
        if is_error(t) {
            return None;
        }
    }
    let quote = (info.header_len + 8).min(info.total_len);
    let icmp_len = HEADER_LEN + quote;
    let len = ipv4::HEADER_LEN + icmp_len;
    if out.len() < len {
        return None;
    }
    let (ip, rest) = out[..len].split_at_mut(ipv4::HEADER_LEN);
    ipv4::Repr {
        src_addr: router,
        dst_addr: info.src,
        protocol: PROTO_ICMP,
        payload_len: icmp_len,
        ttl: 64,
        ident: 0,
        dont_frag: false,
        dscp_ecn: 0xc0,
    }
    .emit(&mut ipv4::Packet::new_unchecked(ip));
    let mut icmp = Packet::new_unchecked(rest);
    icmp.set_msg_type(TYPE_DEST_UNREACHABLE);
    icmp.set_msg_code(code as u8);
    icmp.clear_rest();
    icmp.data_mut().copy_from_slice(&original[..quote]);
    icmp.fill_checksum();
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipv4::{parse, tests::udp_packet};

    #[test]
    fn view_reads_writes_and_checks_length() {
        let mut m = [3u8, 1, 0, 0, 0, 0, 0, 0, 0x45, 0];
        let mut p = Packet::new_checked(&mut m[..]).unwrap();
        p.fill_checksum();
        assert!(p.verify_checksum());
        assert_eq!(
            (p.msg_type(), p.msg_code(), p.data()),
            (3, 1, &[0x45u8, 0][..])
        );
        for n in 0..HEADER_LEN {
            assert_eq!(Packet::new_checked(&m[..n]).err(), Some(Error));
        }
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
        // Byte for byte what weft sent before the views: TOS 0xc0, no DF, TTL 64.
        assert_eq!(&out[..10], &[0x45, 0xc0, 0, 56, 0, 0, 0, 0, 64, 1]);
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
