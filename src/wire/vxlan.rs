//! VXLAN (RFC 7348) as Linux's flannel.1 speaks it: 8-byte header, inner Ethernet, inner IPv4; encap and checked decap.

use super::ethernet::MacAddr;
use super::DropReason;

/// VXLAN header length.
pub const VXLAN_HEADER: usize = 8;
/// Inner Ethernet header length.
pub const ETHERNET_HEADER: usize = 14;
/// What VXLAN puts in front of an IP packet inside the UDP payload.
pub const VXLAN_ENCAP: usize = VXLAN_HEADER + ETHERNET_HEADER;
/// The "I" flag: the VNI field is valid.
const FLAG_VNI: u8 = 0x08;
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];

/// The 22 bytes that go in front of each IP packet sent to one peer; built once per peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanTemplate(pub [u8; VXLAN_ENCAP]);

impl VxlanTemplate {
    pub fn new(vni: u32, dst_mac: MacAddr, src_mac: MacAddr) -> Self {
        let mut h = [0u8; VXLAN_ENCAP];
        h[0] = FLAG_VNI;
        h[4..7].copy_from_slice(&vni.to_be_bytes()[1..4]);
        h[8..14].copy_from_slice(&dst_mac.0);
        h[14..20].copy_from_slice(&src_mac.0);
        h[20..22].copy_from_slice(&ETHERTYPE_IPV4);
        VxlanTemplate(h)
    }

    /// Writes the header into the `VXLAN_ENCAP` bytes in front of the packet: `buf[start..start + 22]`.
    #[inline]
    pub fn write(&self, buf: &mut [u8], start: usize) {
        buf[start..start + VXLAN_ENCAP].copy_from_slice(&self.0);
    }
}

/// Checks a VXLAN UDP payload and returns the offset of the inner frame's IP packet. Drops (with the
/// reason) anything short, without the VNI flag, for another VNI, not addressed to `our_mac`, or not IPv4.
#[inline]
pub fn decap(payload: &[u8], vni: u32, our_mac: MacAddr) -> Result<usize, DropReason> {
    if payload.len() < VXLAN_ENCAP {
        return Err(DropReason::Truncated);
    }
    if payload[0] & FLAG_VNI == 0 {
        return Err(DropReason::BadVni);
    }
    let got = u32::from_be_bytes([0, payload[4], payload[5], payload[6]]);
    if got != vni {
        return Err(DropReason::BadVni);
    }
    if payload[8..14] != our_mac.0 || payload[20..22] != ETHERTYPE_IPV4 {
        return Err(DropReason::NotForUs);
    }
    Ok(VXLAN_ENCAP)
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
}
