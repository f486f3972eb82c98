//! UDP headers: the checked `Packet` view and its `Repr` (the outer header of both encapsulations, and
//! inner UDP where weft segments or checksums it).

use std::net::Ipv4Addr;

use super::csum::sum_words;
use super::ipv4::{checksum_add, checksum_finish, PROTO_UDP};
use super::{be16, Error};

/// Byte ranges of the UDP header (RFC 768).
pub mod field {
    use crate::wire::Field;

    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    /// Header and payload length.
    pub const LENGTH: Field = 4..6;
    pub const CHECKSUM: Field = 6..8;
    /// The payload starts here.
    pub const PAYLOAD: usize = 8;
}

/// UDP header length.
pub const HEADER_LEN: usize = field::PAYLOAD;

/// A view of a UDP datagram (see the contract in `wire`).
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A view without checks: for a buffer known to hold `HEADER_LEN` bytes (header accessors and
    /// setters), or one whose length field was checked too (`payload`).
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// A view of untrusted bytes: fails unless they hold the header and the datagram its length claims.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Packet<T>, Error> {
        let p = Packet::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Ok if the buffer holds the header and the length field lies between the header length and the
    /// buffer length (bytes after it are allowed).
    #[inline]
    pub fn check_len(&self) -> Result<(), Error> {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(Error);
        }
        let len = self.len();
        if len < HEADER_LEN || len > b.len() {
            return Err(Error);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    pub fn src_port(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::SRC_PORT])
    }

    #[inline]
    pub fn dst_port(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::DST_PORT])
    }

    /// The length field: header and payload.
    #[inline]
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        usize::from(be16(&self.buffer.as_ref()[field::LENGTH]))
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::CHECKSUM])
    }

    /// The payload: from the header to the length field.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..self.len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    #[inline]
    pub fn set_src_port(&mut self, port: u16) {
        self.buffer.as_mut()[field::SRC_PORT].copy_from_slice(&port.to_be_bytes());
    }

    #[inline]
    pub fn set_dst_port(&mut self, port: u16) {
        self.buffer.as_mut()[field::DST_PORT].copy_from_slice(&port.to_be_bytes());
    }

    #[inline]
    pub fn set_len(&mut self, len: usize) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&(len as u16).to_be_bytes());
    }

    #[inline]
    pub fn set_checksum(&mut self, c: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    }

    /// Computes the checksum over the pseudo-header of `src` -> `dst` and the datagram (to its length
    /// field) and writes it; a computed 0 is sent as 0xffff (0 means "none").
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let len = self.len();
        let mut pseudo = checksum_add(0, &src.octets());
        pseudo = checksum_add(pseudo, &dst.octets()) + u32::from(PROTO_UDP) + len as u32;
        let c = match checksum_finish(pseudo + sum_words(&self.buffer.as_ref()[..len])) {
            0 => 0xffff,
            c => c,
        };
        self.set_checksum(c);
    }

    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let len = self.len();
        &mut self.buffer.as_mut()[field::PAYLOAD..len]
    }
}

/// The fields of a UDP header weft chooses; the length follows from the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub src_port: u16,
    pub dst_port: u16,
}

impl Repr {
    /// Writes the header for a payload of `payload_len` bytes into the front of `packet`, with the
    /// checksum zero (none, as allowed over IPv4; `fill_checksum` computes one).
    #[inline]
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>, payload_len: usize) {
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_len(HEADER_LEN + payload_len);
        packet.set_checksum(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
    const DST: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
    // Ports 50000 -> 8472, length 12, checksum as computed by hand for "abcd" between SRC and DST.
    const DATAGRAM: [u8; 12] = [
        0xc3, 0x50, 0x21, 0x18, 0x00, 0x0c, 0xd3, 0x52, b'a', b'b', b'c', b'd',
    ];

    #[test]
    fn reads_the_fields() {
        let p = Packet::new_checked(&DATAGRAM[..]).unwrap();
        assert_eq!((p.src_port(), p.dst_port(), p.len()), (50000, 8472, 12));
        assert_eq!(p.payload(), b"abcd");
        let mut padded = DATAGRAM.to_vec();
        padded.extend_from_slice(&[0; 6]);
        assert_eq!(Packet::new_checked(&padded[..]).unwrap().payload(), b"abcd");
    }

    #[test]
    fn emit_and_checksum_rebuild_the_datagram() {
        let mut out = [0u8; 12];
        out[8..].copy_from_slice(b"abcd");
        let mut p = Packet::new_unchecked(&mut out[..]);
        Repr {
            src_port: 50000,
            dst_port: 8472,
        }
        .emit(&mut p, 4);
        assert_eq!(p.checksum(), 0);
        p.fill_checksum(SRC, DST);
        let pseudo = checksum_add(checksum_add(0, &SRC.octets()), &DST.octets()) + 17 + 12;
        assert_eq!(checksum_finish(pseudo + sum_words(&out)), 0, "verifies");
        assert_eq!(out, DATAGRAM);
    }

    #[test]
    fn truncated_or_overlong_input_is_an_error() {
        for n in 0..DATAGRAM.len() {
            assert_eq!(
                Packet::new_checked(&DATAGRAM[..n]).err(),
                Some(Error),
                "{n}"
            );
        }
        let mut short = DATAGRAM;
        short[5] = 7;
        assert_eq!(Packet::new_checked(&short[..]).err(), Some(Error));
    }
}
