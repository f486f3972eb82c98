//! TCP headers, as far as segmentation and GRO coalescing read and rewrite them: the checked `Packet`
//! view and its `Repr`.

use std::net::Ipv4Addr;

use super::csum::sum_words;
use super::ipv4::{checksum_add, checksum_finish, PROTO_TCP};
use super::{be16, be32, Error};

/// Byte ranges of the TCP header (RFC 9293).
pub mod field {
    use crate::wire::Field;

    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    /// Both ports: the transport part of a flow key.
    pub const PORTS: Field = 0..4;
    pub const SEQ_NUM: Field = 4..8;
    pub const ACK_NUM: Field = 8..12;
    /// Data offset (header length in 32-bit words) in the high nibble.
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WIN_SIZE: Field = 14..16;
    pub const CHECKSUM: Field = 16..18;
    pub const URGENT: Field = 18..20;
    /// Options start here and run to the header length.
    pub const OPTIONS: usize = 20;
}

/// TCP header length without options.
pub const HEADER_LEN: usize = field::OPTIONS;

/// Flag bits of the flags byte.
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

/// A view of a TCP segment (see the contract in `wire`).
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

    /// A view of untrusted bytes: fails unless they hold the whole header, options included.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Packet<T>, Error> {
        let p = Packet::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Ok if the buffer holds 20 bytes and a header length (at least 20) that fits in it.
    #[inline]
    pub fn check_len(&self) -> Result<(), Error> {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(Error);
        }
        let hl = self.header_len();
        if hl < HEADER_LEN || hl > b.len() {
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

    /// Both ports as they are on the wire.
    #[inline]
    pub fn ports(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PORTS]
    }

    #[inline]
    pub fn seq_number(&self) -> u32 {
        be32(&self.buffer.as_ref()[field::SEQ_NUM])
    }

    /// The acknowledgement number as it is on the wire.
    #[inline]
    pub fn ack_bytes(&self) -> &[u8] {
        &self.buffer.as_ref()[field::ACK_NUM]
    }

    #[inline]
    pub fn ack_number(&self) -> u32 {
        be32(self.ack_bytes())
    }

    /// The header length in bytes, from the data offset.
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::DATA_OFF] >> 4) * 4
    }

    /// The flags byte (see `flags`).
    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// The window as it is on the wire.
    #[inline]
    pub fn window_bytes(&self) -> &[u8] {
        &self.buffer.as_ref()[field::WIN_SIZE]
    }

    #[inline]
    pub fn window_len(&self) -> u16 {
        be16(self.window_bytes())
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::CHECKSUM])
    }

    /// The options: from the fixed header to the header length.
    #[inline]
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[field::OPTIONS..self.header_len()]
    }

    /// The payload: everything after the header.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
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
    pub fn set_seq_number(&mut self, seq: u32) {
        self.buffer.as_mut()[field::SEQ_NUM].copy_from_slice(&seq.to_be_bytes());
    }

    #[inline]
    pub fn set_ack_number(&mut self, ack: u32) {
        self.buffer.as_mut()[field::ACK_NUM].copy_from_slice(&ack.to_be_bytes());
    }

    /// Sets the data offset for a header of `len` bytes (a multiple of 4), clearing the reserved bits.
    #[inline]
    pub fn set_header_len(&mut self, len: usize) {
        self.buffer.as_mut()[field::DATA_OFF] = ((len / 4) as u8) << 4;
    }

    #[inline]
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
    }

    #[inline]
    pub fn set_window_len(&mut self, window: u16) {
        self.buffer.as_mut()[field::WIN_SIZE].copy_from_slice(&window.to_be_bytes());
    }

    #[inline]
    pub fn set_checksum(&mut self, c: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    }

    #[inline]
    pub fn set_urgent(&mut self, u: u16) {
        self.buffer.as_mut()[field::URGENT].copy_from_slice(&u.to_be_bytes());
    }

    /// Computes the checksum over the pseudo-header of `src` -> `dst` and the whole buffer (header and
    /// payload) and writes it.
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let b = self.buffer.as_ref();
        let mut pseudo = checksum_add(0, &src.octets());
        pseudo = checksum_add(pseudo, &dst.octets()) + u32::from(PROTO_TCP) + b.len() as u32;
        let c = checksum_finish(pseudo + sum_words(b));
        self.set_checksum(c);
    }

    #[inline]
    pub fn options_mut(&mut self) -> &mut [u8] {
        let hl = self.header_len();
        &mut self.buffer.as_mut()[field::OPTIONS..hl]
    }
}

/// The fields of a TCP header weft writes (in tests and benches: weft never originates TCP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr<'a> {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq_number: u32,
    pub ack_number: u32,
    pub flags: u8,
    pub window_len: u16,
    /// Raw options, a multiple of 4 bytes long.
    pub options: &'a [u8],
}

impl Repr<'_> {
    /// Header length: the fixed part and the options.
    pub fn header_len(&self) -> usize {
        HEADER_LEN + self.options.len()
    }

    /// Writes the header into the front of `packet`, with the checksum and urgent pointer zero.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_seq_number(self.seq_number);
        packet.set_ack_number(self.ack_number);
        packet.set_header_len(self.header_len());
        packet.set_flags(self.flags);
        packet.set_window_len(self.window_len);
        packet.set_checksum(0);
        packet.set_urgent(0);
        packet.options_mut().copy_from_slice(self.options);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEGMENT: [u8; 26] = [
        0x9c, 0x40, 0x00, 0x50, // ports 40000 -> 80
        0x00, 0x00, 0x10, 0x00, // seq 0x1000
        0x00, 0x00, 0x00, 0x01, // ack 1
        0x60, 0x18, 0x01, 0xf5, // 24-byte header, PSH|ACK, window 501
        0x00, 0x00, 0x00, 0x00, // checksum, urgent
        0x01, 0x01, 0x01, 0x01, // options: four NOPs
        b'h', b'i',
    ];

    #[test]
    fn reads_the_fields_and_emit_rebuilds_them() {
        let p = Packet::new_checked(&SEGMENT[..]).unwrap();
        assert_eq!((p.src_port(), p.dst_port()), (40000, 80));
        assert_eq!((p.seq_number(), p.ack_number()), (0x1000, 1));
        assert_eq!((p.header_len(), p.flags()), (24, flags::PSH | flags::ACK));
        assert_eq!(p.window_len(), 501);
        assert_eq!(p.options(), &[1, 1, 1, 1]);
        assert_eq!(p.payload(), b"hi");
        let mut out = [0u8; 26];
        out[24..].copy_from_slice(b"hi");
        Repr {
            src_port: 40000,
            dst_port: 80,
            seq_number: 0x1000,
            ack_number: 1,
            flags: flags::PSH | flags::ACK,
            window_len: 501,
            options: &[1, 1, 1, 1],
        }
        .emit(&mut Packet::new_unchecked(&mut out[..]));
        assert_eq!(out, SEGMENT);
    }

    #[test]
    fn filled_checksum_verifies() {
        let (src, dst) = (Ipv4Addr::new(10, 5, 2, 9), Ipv4Addr::new(10, 5, 1, 7));
        let mut b = SEGMENT;
        Packet::new_unchecked(&mut b[..]).fill_checksum(src, dst);
        let pseudo = checksum_add(checksum_add(0, &src.octets()), &dst.octets()) + 6 + 26;
        assert_eq!(checksum_finish(pseudo + sum_words(&b)), 0);
        assert_ne!(Packet::new_checked(&b[..]).unwrap().checksum(), 0);
    }

    #[test]
    fn truncated_input_is_an_error() {
        for n in 0..24 {
            assert_eq!(Packet::new_checked(&SEGMENT[..n]).err(), Some(Error), "{n}");
        }
        let mut short_offset = SEGMENT;
        short_offset[12] = 0x40;
        assert_eq!(Packet::new_checked(&short_offset[..]).err(), Some(Error));
        assert!(Packet::new_checked(&SEGMENT[..24])
            .unwrap()
            .payload()
            .is_empty());
    }
}
