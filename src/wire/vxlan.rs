//! VXLAN (RFC 7348) as Linux's flannel.1 (and flannel-v6.1) speak it: 8-byte header, inner Ethernet, inner IPv4
//! (or IPv6); encap and checked decap.

use super::ethernet::{self, Frame, MacAddr};
use super::{DropReason, Error};

/// VXLAN header length.
pub const VXLAN_HEADER: usize = field::PAYLOAD;
/// Inner Ethernet header length.
pub const ETHERNET_HEADER: usize = ethernet::HEADER_LEN;
/// What VXLAN puts in front of an IP packet inside the UDP payload.
pub const VXLAN_ENCAP: usize = VXLAN_HEADER + ETHERNET_HEADER;
/// The "I" flag: the VNI field is valid.
pub const FLAG_VNI: u8 = 0x08;

/// Byte ranges of the VXLAN header (RFC 7348).
pub mod field {
    use crate::wire::Field;

    pub const FLAGS: usize = 0;
    /// Reserved after the flags: zero.
    pub const RESERVED1: Field = 1..4;
    pub const VNI: Field = 4..7;
    /// Reserved after the VNI: zero.
    pub const RESERVED2: usize = 7;
    /// The inner Ethernet frame starts here.
    pub const PAYLOAD: usize = 8;
}

/// A view of a VXLAN header and the inner frame behind it (see the contract in `wire`).
#[derive(Debug, Clone)]
pub struct Header<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Header<T> {
    /// A view without checks: for a buffer known to hold `VXLAN_HEADER` bytes.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Header<T> {
        Header { buffer }
    }

    /// A view of untrusted bytes: fails unless they hold the 8-byte header.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Header<T>, Error> {
        let h = Header::new_unchecked(buffer);
        h.check_len()?;
        Ok(h)
    }

    #[inline]
    pub fn check_len(&self) -> Result<(), Error> {
        if self.buffer.as_ref().len() < VXLAN_HEADER {
            Err(Error)
        } else {
            Ok(())
        }
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// The 24-bit VNI.
    #[inline]
    pub fn vni(&self) -> u32 {
        let v = &self.buffer.as_ref()[field::VNI];
        u32::from_be_bytes([0, v[0], v[1], v[2]])
    }

    /// The inner Ethernet frame.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Header<T> {
    /// Sets the flags byte and zeroes the reserved bytes after it.
    #[inline]
    pub fn set_flags(&mut self, flags: u8) {
        let b = self.buffer.as_mut();
        b[field::FLAGS] = flags;
        b[field::RESERVED1].fill(0);
    }

    /// Sets the VNI (its low 24 bits) and zeroes the reserved byte after it.
    #[inline]
    pub fn set_vni(&mut self, vni: u32) {
        let b = self.buffer.as_mut();
        b[field::VNI].copy_from_slice(&vni.to_be_bytes()[1..4]);
        b[field::RESERVED2] = 0;
    }

    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD..]
    }
}

/// A VXLAN header with a valid VNI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub vni: u32,
}

impl Repr {
    /// Writes the 8-byte header (I flag, VNI, reserved bytes zero) into the front of `header`.
    #[inline]
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, header: &mut Header<T>) {
        header.set_flags(FLAG_VNI);
        header.set_vni(self.vni);
    }
}

/// The 22 bytes that go in front of each IP packet sent to one peer; built once per peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanTemplate(pub [u8; VXLAN_ENCAP]);

impl VxlanTemplate {
    /// The header for inner IPv4 from VTEP `src_mac` to VTEP `dst_mac`.
    pub fn new(vni: u32, dst_mac: MacAddr, src_mac: MacAddr) -> Self {
        Self::for_inner(vni, dst_mac, src_mac, InnerFamily::V4)
    }

    /// The header for an inner packet of `family` (Ethernet type 0x0800 or 0x86DD); for IPv6 the MACs are
    /// those of the IPv6 VTEPs (flannel's `flannel-v6.<VNI>` devices).
    pub fn for_inner(vni: u32, dst_mac: MacAddr, src_mac: MacAddr, family: InnerFamily) -> Self {
        let mut h = [0u8; VXLAN_ENCAP];
        let mut vx = Header::new_unchecked(&mut h[..]);
        Repr { vni }.emit(&mut vx);
        ethernet::Repr {
            src_addr: src_mac,
            dst_addr: dst_mac,
            ethertype: family.ethertype(),
        }
        .emit(&mut Frame::new_unchecked(vx.payload_mut()));
        VxlanTemplate(h)
    }

    /// The header's bytes.
    #[inline]
    pub fn bytes(&self) -> &[u8; VXLAN_ENCAP] {
        &self.0
    }

    /// Writes the header into the `VXLAN_ENCAP` bytes in front of the packet: `buf[start..start + 22]`.
    #[inline]
    pub fn write(&self, buf: &mut [u8], start: usize) {
        buf[start..start + VXLAN_ENCAP].copy_from_slice(&self.0);
    }
}

/// The IP family of an inner packet, as its Ethernet type says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InnerFamily {
    V4,
    V6,
}

impl InnerFamily {
    /// The Ethernet type of the family.
    #[inline]
    pub fn ethertype(self) -> u16 {
        match self {
            InnerFamily::V4 => ethernet::ETHERTYPE_IPV4,
            InnerFamily::V6 => ethernet::ETHERTYPE_IPV6,
        }
    }
}

/// Checks a VXLAN UDP payload and returns the offset of the inner frame's IP packet. Drops (with the
/// reason) anything short, without the VNI flag, for another VNI, not addressed to `our_mac`, or not IPv4.
#[inline]
pub fn decap(payload: &[u8], vni: u32, our_mac: MacAddr) -> Result<usize, DropReason> {
    decap_dual(payload, vni, our_mac, None).map(|(at, _)| at)
}

/// As [`decap`] on a dual-stack host: also takes inner IPv6 (Ethernet type 0x86DD) addressed to our
/// IPv6 VTEP MAC `our_mac6` (None: IPv6 is not enabled, and such frames are not for us). Returns the
/// inner packet's offset and the family its Ethernet type names.
#[inline]
pub fn decap_dual(
    payload: &[u8],
    vni: u32,
    our_mac: MacAddr,
    our_mac6: Option<MacAddr>,
) -> Result<(usize, InnerFamily), DropReason> {
    if payload.len() < VXLAN_ENCAP {
        return Err(DropReason::Truncated);
    }
    // Both headers are in the buffer: the views below cannot fail.
    let vx = Header::new_unchecked(payload);
    if vx.flags() & FLAG_VNI == 0 || vx.vni() != vni {
        return Err(DropReason::BadVni);
    }
    let eth = Frame::new_unchecked(vx.payload());
    let dst = eth.dst_addr();
    match eth.ethertype() {
        ethernet::ETHERTYPE_IPV4 if dst == our_mac => Ok((VXLAN_ENCAP, InnerFamily::V4)),
        ethernet::ETHERTYPE_IPV6 if Some(dst) == our_mac6 => Ok((VXLAN_ENCAP, InnerFamily::V6)),
        _ => Err(DropReason::NotForUs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: MacAddr = MacAddr([0x02, 1, 2, 3, 4, 5]);
    const B: MacAddr = MacAddr([0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44]);

    #[test]
    fn template_matches_the_wire_format() {
        let t = VxlanTemplate::new(0x0a0b0c, B, A);
        assert_eq!(
            t.0,
            [
                0x08, 0, 0, 0, 0x0a, 0x0b, 0x0c, 0, // VXLAN: flags, reserved, VNI, reserved
                0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44, // dst MAC (peer VTEP)
                0x02, 1, 2, 3, 4, 5, // src MAC (ours)
                0x08, 0x00 // IPv4
            ]
        );
    }

    #[test]
    fn encap_then_decap_returns_the_packet() {
        let ip = [
            0x45u8, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 10, 5, 1, 2, 10, 5, 2, 3,
        ];
        let mut buf = [0u8; 64];
        buf[VXLAN_ENCAP..VXLAN_ENCAP + 20].copy_from_slice(&ip);
        VxlanTemplate::new(1, B, A).write(&mut buf, 0);
        assert_eq!(decap(&buf[..VXLAN_ENCAP + 20], 1, B).unwrap(), VXLAN_ENCAP);
        assert_eq!(&buf[VXLAN_ENCAP..VXLAN_ENCAP + 20], &ip);
    }

    #[test]
    fn decap_drops_by_reason() {
        let mut buf = [0u8; 42];
        VxlanTemplate::new(7, B, A).write(&mut buf, 0);
        assert_eq!(decap(&buf[..21], 7, B), Err(DropReason::Truncated));
        assert_eq!(decap(&buf, 8, B), Err(DropReason::BadVni));
        assert_eq!(decap(&buf, 7, A), Err(DropReason::NotForUs));
        let mut no_flag = buf;
        no_flag[0] = 0;
        assert_eq!(decap(&no_flag, 7, B), Err(DropReason::BadVni));
        let mut v6 = buf;
        v6[20..22].copy_from_slice(&[0x86, 0xdd]);
        assert_eq!(decap(&v6, 7, B), Err(DropReason::NotForUs));
    }

    #[test]
    fn ipv6_frames_go_to_the_ipv6_vtep_mac() {
        const B6: MacAddr = MacAddr([0x02, 6, 6, 6, 6, 6]);
        let t = VxlanTemplate::for_inner(7, B6, A, InnerFamily::V6);
        assert_eq!(&t.0[8..14], &B6.0);
        assert_eq!(&t.0[20..22], &[0x86, 0xdd]);
        let mut buf = [0u8; 62];
        t.write(&mut buf, 0);
        assert_eq!(
            decap_dual(&buf, 7, B, Some(B6)),
            Ok((VXLAN_ENCAP, InnerFamily::V6))
        );
        assert_eq!(decap_dual(&buf, 7, B, None), Err(DropReason::NotForUs));
        assert_eq!(decap_dual(&buf, 7, B6, Some(B)), Err(DropReason::NotForUs));
        assert_eq!(
            decap(&buf, 7, B6),
            Err(DropReason::NotForUs),
            "v4-only decap"
        );
        // IPv4 frames still go to the IPv4 MAC only.
        VxlanTemplate::new(7, B, A).write(&mut buf, 0);
        assert_eq!(
            decap_dual(&buf, 7, B, Some(B6)),
            Ok((VXLAN_ENCAP, InnerFamily::V4))
        );
        VxlanTemplate::new(7, B6, A).write(&mut buf, 0);
        assert_eq!(decap_dual(&buf, 7, B, Some(B6)), Err(DropReason::NotForUs));
    }

    #[test]
    fn header_view_reads_writes_and_checks_length() {
        let bytes = [0x08, 0, 0, 0, 0x0a, 0x0b, 0x0c, 0, 0xee];
        let h = Header::new_checked(&bytes[..]).unwrap();
        assert_eq!(
            (h.flags(), h.vni(), h.payload()),
            (FLAG_VNI, 0x0a0b0c, &[0xee][..])
        );
        let mut out = [0xffu8; 9];
        out[8] = 0xee;
        Repr { vni: 0x0a0b0c }.emit(&mut Header::new_unchecked(&mut out[..]));
        assert_eq!(out, bytes);
        for n in 0..VXLAN_HEADER {
            assert_eq!(Header::new_checked(&bytes[..n]).err(), Some(Error));
        }
    }
}
