//! Ethernet II headers (the inner frame VXLAN carries, the outer frame AF_XDP sends) and MAC addresses.

use std::fmt;
use std::str::FromStr;

use super::{be16, Error};

/// A MAC address; displayed (and written in flannel's JSON) as `"c6:d2:32:6f:8f:44"`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The address in the first six bytes of `b` (which must hold them).
    #[inline]
    pub fn from_bytes(b: &[u8]) -> MacAddr {
        MacAddr([b[0], b[1], b[2], b[3], b[4], b[5]])
    }

    /// A random locally administered unicast MAC, as the kernel picks for a new VXLAN device.
    pub fn random_local(rng: &mut impl rand::Rng) -> Self {
        let mut b: [u8; 6] = rng.gen();
        b[0] = (b[0] & 0xfe) | 0x02;
        MacAddr(b)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in out.iter_mut() {
            let p = parts
                .next()
                .ok_or_else(|| format!("{s:?} is not a MAC address"))?;
            if p.len() != 2 {
                return Err(format!("{s:?} is not a MAC address"));
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| format!("{s:?} is not a MAC address"))?;
        }
        if parts.next().is_some() {
            return Err(format!("{s:?} is not a MAC address"));
        }
        Ok(MacAddr(out))
    }
}

/// Byte ranges of the Ethernet II header.
pub mod field {
    use crate::wire::Field;

    pub const DESTINATION: Field = 0..6;
    pub const SOURCE: Field = 6..12;
    pub const ETHERTYPE: Field = 12..14;
    /// The payload starts here.
    pub const PAYLOAD: usize = 14;
}

/// Ethernet II header length.
pub const HEADER_LEN: usize = field::PAYLOAD;
/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;

/// A view of an Ethernet II frame (see the contract in `wire`).
#[derive(Debug, Clone)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// A view without checks: for buffers known to hold `HEADER_LEN` bytes.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Frame<T> {
        Frame { buffer }
    }

    /// A view of untrusted bytes: fails unless the buffer holds the header.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Frame<T>, Error> {
        let f = Frame::new_unchecked(buffer);
        f.check_len()?;
        Ok(f)
    }

    /// Ok if the buffer holds the whole header.
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
    pub fn dst_addr(&self) -> MacAddr {
        MacAddr::from_bytes(&self.buffer.as_ref()[field::DESTINATION])
    }

    #[inline]
    pub fn src_addr(&self) -> MacAddr {
        MacAddr::from_bytes(&self.buffer.as_ref()[field::SOURCE])
    }

    #[inline]
    pub fn ethertype(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::ETHERTYPE])
    }

    /// The bytes after the header.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    #[inline]
    pub fn set_dst_addr(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&mac.0);
    }

    #[inline]
    pub fn set_src_addr(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&mac.0);
    }

    #[inline]
    pub fn set_ethertype(&mut self, ethertype: u16) {
        self.buffer.as_mut()[field::ETHERTYPE].copy_from_slice(&ethertype.to_be_bytes());
    }

    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD..]
    }
}

/// The fields of an Ethernet II header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub src_addr: MacAddr,
    pub dst_addr: MacAddr,
    pub ethertype: u16,
}

impl Repr {
    /// Reads the header of a checked frame.
    pub fn parse<T: AsRef<[u8]>>(frame: &Frame<T>) -> Repr {
        Repr {
            src_addr: frame.src_addr(),
            dst_addr: frame.dst_addr(),
            ethertype: frame.ethertype(),
        }
    }

    /// Writes the header into the first `HEADER_LEN` bytes of `frame`.
    #[inline]
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut Frame<T>) {
        frame.set_dst_addr(self.dst_addr);
        frame.set_src_addr(self.src_addr);
        frame.set_ethertype(self.ethertype);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: [u8; 16] = [
        0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44, // destination
        0x02, 1, 2, 3, 4, 5, // source
        0x08, 0x00, // IPv4
        0xaa, 0xbb, // payload
    ];

    #[test]
    fn reads_and_emits_the_header() {
        let f = Frame::new_checked(&FRAME[..]).unwrap();
        let r = Repr::parse(&f);
        assert_eq!(r.dst_addr, "c6:d2:32:6f:8f:44".parse().unwrap());
        assert_eq!(r.src_addr, MacAddr([2, 1, 2, 3, 4, 5]));
        assert_eq!(r.ethertype, ETHERTYPE_IPV4);
        assert_eq!(f.payload(), &[0xaa, 0xbb]);
        let mut out = [0u8; 16];
        out[14..].copy_from_slice(&[0xaa, 0xbb]);
        r.emit(&mut Frame::new_unchecked(&mut out[..]));
        assert_eq!(out, FRAME);
    }

    #[test]
    fn truncated_input_is_an_error() {
        for n in 0..HEADER_LEN {
            assert_eq!(Frame::new_checked(&FRAME[..n]).err(), Some(Error));
        }
        assert!(Frame::new_checked(&FRAME[..HEADER_LEN])
            .unwrap()
            .payload()
            .is_empty());
    }
}
