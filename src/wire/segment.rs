//! TCP segmentation in userspace: splits an IPv4 TCP super-packet into MTU-sized segments with
//! correct IP ids, lengths, checksums and TCP sequence numbers and flags.
//!
//! A kernel VXLAN peer over virtual links can hand us one VXLAN packet carrying a whole TCP GSO
//! super-packet; the kernel would segment it on its own receive path, a userspace VTEP must do it.

use super::csum::sum_words;
use super::ipv4::{checksum, checksum_add, checksum_finish};

const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// Why a packet could not be segmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentError {
    /// Not a complete, unfragmented IPv4 TCP packet with a valid header.
    NotTcp,
    /// The MTU leaves no room for payload after the headers.
    MtuTooSmall,
}

/// Splits the IPv4 TCP packet `packet` into segments of at most `mtu` bytes, building each in `scratch`
/// (which must hold `mtu` bytes) and handing it to `emit`. Returns the number of segments.
pub fn split_tcp(
    packet: &[u8],
    mtu: usize,
    scratch: &mut [u8],
    mut emit: impl FnMut(&[u8]),
) -> Result<usize, SegmentError> {
    let ip = super::ipv4::parse(packet).ok_or(SegmentError::NotTcp)?;
    let more_fragments = packet[6] & 0x20 != 0;
    if ip.protocol != 6 || ip.later_fragment || more_fragments {
        return Err(SegmentError::NotTcp);
    }
    let hl = ip.header_len;
    let tcp = &packet[hl..ip.total_len];
    if tcp.len() < 20 {
        return Err(SegmentError::NotTcp);
    }
    let thl = usize::from(tcp[12] >> 4) * 4;
    if thl < 20 || thl > tcp.len() {
        return Err(SegmentError::NotTcp);
    }
    let headers = hl + thl;
    if mtu <= headers || scratch.len() < mtu {
        return Err(SegmentError::MtuTooSmall);
    }
    let mss = mtu - headers;
    let payload = &tcp[thl..];
    let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    let id = u16::from_be_bytes([packet[4], packet[5]]);
    let flags = tcp[13];
    let count = payload.len().div_ceil(mss).max(1);
    // The pseudo-header's address part is the same for every segment.
    let addr_sum = checksum_add(0, &packet[12..20]);
    for i in 0..count {
        let start = i * mss;
        let chunk = &payload[start..(start + mss).min(payload.len())];
        let seg_len = headers + chunk.len();
        let seg = &mut scratch[..seg_len];
        seg[..headers].copy_from_slice(&packet[..headers]);
        seg[headers..].copy_from_slice(chunk);
        // IPv4: length, id, checksum.
        seg[2..4].copy_from_slice(&(seg_len as u16).to_be_bytes());
        seg[4..6].copy_from_slice(&id.wrapping_add(i as u16).to_be_bytes());
        seg[10..12].copy_from_slice(&[0, 0]);
        let c = checksum(&seg[..hl]);
        seg[10..12].copy_from_slice(&c.to_be_bytes());
        // TCP: sequence number, flags, checksum.
        let t = &mut seg[hl..];
        t[4..8].copy_from_slice(&seq.wrapping_add(start as u32).to_be_bytes());
        let mut f = flags;
        if i + 1 < count {
            f &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            f &= !TCP_CWR;
        }
        t[13] = f;
        t[16..18].copy_from_slice(&[0, 0]);
        let sum = addr_sum + 6 + (thl + chunk.len()) as u32 + sum_words(t);
        let c = checksum_finish(sum);
        t[16..18].copy_from_slice(&c.to_be_bytes());
        emit(seg);
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::csum::{complete_l4, L4Checksum};

    fn tcp_packet(payload_len: usize, flags: u8) -> Vec<u8> {
        let total = 20 + 32 + payload_len;
        let mut p = vec![
            0x45, 0, 0, 0, 0x10, 0x00, 0x40, 0, 64, 6, 0, 0, 10, 5, 2, 9, 10, 5, 1, 7,
        ];
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        // TCP with 12 bytes of options (e.g. timestamps).
        let mut t = vec![
            0x9c, 0x40, 0x00, 0x50, 0, 0, 0x10, 0, 0, 0, 0, 1, 0x80, flags, 0x01, 0xf5, 0, 0, 0, 0,
        ];
        t.extend_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        p.extend_from_slice(&t);
        p.extend((0..payload_len).map(|i| (i % 251) as u8));
        let c = checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        // Leave the TCP checksum partial, as a GSO sender does.
        let pseudo = checksum_add(0, &p[12..20]) + 6 + (total - 20) as u32;
        let mut s = pseudo;
        while s >> 16 != 0 {
            s = (s & 0xffff) + (s >> 16);
        }
        p[36..38].copy_from_slice(&(s as u16).to_be_bytes());
        p
    }

    #[test]
    fn splits_into_valid_segments_covering_the_payload() {
        let p = tcp_packet(7000, TCP_PSH | 0x10 | TCP_FIN);
        let mut scratch = [0u8; 1450];
        let mut segs: Vec<Vec<u8>> = Vec::new();
        let n = split_tcp(&p, 1450, &mut scratch, |s| segs.push(s.to_vec())).unwrap();
        let mss = 1450 - 52;
        assert_eq!(n, 7000usize.div_ceil(mss));
        let mut rebuilt = Vec::new();
        let count = segs.len();
        for (i, s) in segs.iter_mut().enumerate() {
            assert!(s.len() <= 1450);
            assert_eq!(checksum(&s[..20]), 0, "IP checksum of segment {i}");
            assert_eq!(
                complete_l4(s),
                L4Checksum::Fine,
                "TCP checksum of segment {i}"
            );
            let seq = u32::from_be_bytes([s[24], s[25], s[26], s[27]]);
            assert_eq!(seq, 0x1000 + (i * mss) as u32);
            assert_eq!(u16::from_be_bytes([s[4], s[5]]), 0x1000 + i as u16);
            let last = i + 1 == count;
            assert_eq!(
                s[33] & (TCP_FIN | TCP_PSH) != 0,
                last,
                "FIN/PSH only on the last"
            );
            rebuilt.extend_from_slice(&s[52..]);
        }
        assert_eq!(rebuilt, p[52..].to_vec());
    }

    #[test]
    fn small_packet_is_one_segment_and_non_tcp_is_refused() {
        let p = tcp_packet(100, 0x10);
        let mut scratch = [0u8; 1500];
        let mut out = Vec::new();
        assert_eq!(
            split_tcp(&p, 1500, &mut scratch, |s| out = s.to_vec()),
            Ok(1)
        );
        assert_eq!(out.len(), p.len());
        let mut udp = p.clone();
        udp[9] = 17;
        assert_eq!(
            split_tcp(&udp, 1500, &mut scratch, |_| {}),
            Err(SegmentError::NotTcp)
        );
        assert_eq!(
            split_tcp(&p, 40, &mut scratch, |_| {}),
            Err(SegmentError::MtuTooSmall)
        );
    }
}
