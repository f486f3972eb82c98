//! TCP and UDP segmentation in userspace: splits an IPv4 super-packet into segments with correct IP ids,
//! lengths and checksums and TCP sequence numbers and flags (or per-segment UDP headers).
//!
//! Used outbound to turn a TSO/USO read from the tun device into a train of equal datagrams for one UDP
//! GSO send, and inbound (without tun offloads) to split a TCP super-packet that a kernel VXLAN peer on a
//! virtual link sent whole.

use super::csum::sum_words;
use super::ipv4::{checksum, checksum_add, checksum_finish};

const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// Why a packet could not be segmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentError {
    /// Not a complete, unfragmented IPv4 TCP (or UDP, where asked) packet with valid headers.
    NotTcp,
    /// The MTU or segment size leaves no room for payload, or the output buffer is too small.
    MtuTooSmall,
}

/// The headers of a segmentable packet.
#[derive(Debug, Clone, Copy)]
struct Layout {
    ip_len: usize,
    l4_len: usize,
    total: usize,
    udp: bool,
}

fn layout(packet: &[u8], allow_udp: bool) -> Result<Layout, SegmentError> {
    let ip = super::ipv4::parse(packet).ok_or(SegmentError::NotTcp)?;
    let more_fragments = packet[6] & 0x20 != 0;
    if ip.later_fragment || more_fragments {
        return Err(SegmentError::NotTcp);
    }
    let l4 = &packet[ip.header_len..ip.total_len];
    let (udp, l4_len) = match ip.protocol {
        6 if l4.len() >= 20 => (false, usize::from(l4[12] >> 4) * 4),
        17 if allow_udp && l4.len() >= 8 => (true, 8),
        _ => return Err(SegmentError::NotTcp),
    };
    if l4_len < 8 || l4_len > l4.len() || (!udp && l4_len < 20) {
        return Err(SegmentError::NotTcp);
    }
    Ok(Layout {
        ip_len: ip.header_len,
        l4_len,
        total: ip.total_len,
        udp,
    })
}

/// Writes segment `i` of `count` (payload `chunk` at byte `start` of the original payload) into `seg`.
fn build_segment(
    packet: &[u8],
    lay: Layout,
    i: usize,
    count: usize,
    start: usize,
    chunk: &[u8],
    seg: &mut [u8],
) {
    let (hl, l4l) = (lay.ip_len, lay.l4_len);
    let headers = hl + l4l;
    let seg_len = headers + chunk.len();
    seg[..headers].copy_from_slice(&packet[..headers]);
    seg[headers..seg_len].copy_from_slice(chunk);
    // IPv4: length, id, checksum.
    let id = u16::from_be_bytes([packet[4], packet[5]]);
    seg[2..4].copy_from_slice(&(seg_len as u16).to_be_bytes());
    seg[4..6].copy_from_slice(&id.wrapping_add(i as u16).to_be_bytes());
    seg[10..12].copy_from_slice(&[0, 0]);
    let c = checksum(&seg[..hl]);
    seg[10..12].copy_from_slice(&c.to_be_bytes());
    let addr_sum = checksum_add(0, &packet[12..20]);
    let l4 = &mut seg[hl..seg_len];
    let csum_at = if lay.udp {
        l4[4..6].copy_from_slice(&((l4l + chunk.len()) as u16).to_be_bytes());
        6
    } else {
        let seq = u32::from_be_bytes([
            packet[hl + 4],
            packet[hl + 5],
            packet[hl + 6],
            packet[hl + 7],
        ]);
        l4[4..8].copy_from_slice(&seq.wrapping_add(start as u32).to_be_bytes());
        let mut f = packet[hl + 13];
        if i + 1 < count {
            f &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            f &= !TCP_CWR;
        }
        l4[13] = f;
        16
    };
    l4[csum_at..csum_at + 2].copy_from_slice(&[0, 0]);
    let proto = if lay.udp { 17 } else { 6 };
    let mut c = checksum_finish(addr_sum + proto + (l4l + chunk.len()) as u32 + sum_words(l4));
    if lay.udp && c == 0 {
        c = 0xffff;
    }
    l4[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
}

/// Splits the IPv4 TCP packet `packet` into segments of at most `mtu` bytes, building each in `scratch`
/// (which must hold `mtu` bytes) and handing it to `emit`. Returns the number of segments.
pub fn split_tcp(
    packet: &[u8],
    mtu: usize,
    scratch: &mut [u8],
    mut emit: impl FnMut(&[u8]),
) -> Result<usize, SegmentError> {
    let lay = layout(packet, false)?;
    let headers = lay.ip_len + lay.l4_len;
    if mtu <= headers || scratch.len() < mtu {
        return Err(SegmentError::MtuTooSmall);
    }
    let mss = mtu - headers;
    let payload = &packet[headers..lay.total];
    let count = payload.len().div_ceil(mss).max(1);
    for i in 0..count {
        let start = i * mss;
        let chunk = &payload[start..(start + mss).min(payload.len())];
        build_segment(packet, lay, i, count, start, chunk, scratch);
        emit(&scratch[..headers + chunk.len()]);
    }
    Ok(count)
}

/// A train of segments laid out back to back, each behind `prefix` bytes left for an encapsulation
/// header: unit `i` starts at `i * stride`; all units are `stride` long except possibly the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Train {
    pub count: usize,
    pub stride: usize,
    pub len: usize,
}

/// Splits a TCP (or, with `udp`, UDP) super-packet into segments carrying `seg_payload` bytes each and
/// lays them out in `out` as a [`Train`], ready for one UDP GSO send.
pub fn split_into_train(
    packet: &[u8],
    seg_payload: usize,
    udp: bool,
    prefix: usize,
    out: &mut [u8],
) -> Result<Train, SegmentError> {
    let lay = layout(packet, udp)?;
    if lay.udp != udp {
        return Err(SegmentError::NotTcp);
    }
    if seg_payload == 0 {
        return Err(SegmentError::MtuTooSmall);
    }
    let headers = lay.ip_len + lay.l4_len;
    let payload = &packet[headers..lay.total];
    let count = payload.len().div_ceil(seg_payload).max(1);
    let stride = prefix + headers + seg_payload.min(payload.len().max(1));
    let last = payload.len() - (count - 1) * seg_payload;
    let len = (count - 1) * stride + prefix + headers + last;
    if out.len() < len {
        return Err(SegmentError::MtuTooSmall);
    }
    for i in 0..count {
        let start = i * seg_payload;
        let chunk = &payload[start..(start + seg_payload).min(payload.len())];
        let at = i * stride + prefix;
        build_segment(
            packet,
            lay,
            i,
            count,
            start,
            chunk,
            &mut out[at..at + headers + chunk.len()],
        );
    }
    Ok(Train { count, stride, len })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::wire::csum::{complete_l4, L4Checksum};

    /// An IPv4 TCP packet with timestamps and a partial checksum, as a GSO sender leaves it.
    pub fn tcp_packet(payload_len: usize, flags: u8) -> Vec<u8> {
        let total = 20 + 32 + payload_len;
        let mut p = vec![
            0x45, 0, 0, 0, 0x10, 0x00, 0x40, 0, 64, 6, 0, 0, 10, 5, 2, 9, 10, 5, 1, 7,
        ];
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        let mut t = vec![
            0x9c, 0x40, 0x00, 0x50, 0, 0, 0x10, 0, 0, 0, 0, 1, 0x80, flags, 0x01, 0xf5, 0, 0, 0, 0,
        ];
        t.extend_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        p.extend_from_slice(&t);
        p.extend((0..payload_len).map(|i| (i % 251) as u8));
        let c = checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        let pseudo = checksum_add(0, &p[12..20]) + 6 + (total - 20) as u32;
        let mut s = pseudo;
        while s >> 16 != 0 {
            s = (s & 0xffff) + (s >> 16);
        }
        p[36..38].copy_from_slice(&(s as u16).to_be_bytes());
        p
    }

    fn check_segments(segs: &mut [Vec<u8>], original: &[u8], mss: usize) {
        let mut rebuilt = Vec::new();
        let count = segs.len();
        for (i, s) in segs.iter_mut().enumerate() {
            assert_eq!(checksum(&s[..20]), 0, "IP checksum of segment {i}");
            assert_eq!(
                complete_l4(s),
                L4Checksum::Fine,
                "TCP checksum of segment {i}"
            );
            let seq = u32::from_be_bytes([s[24], s[25], s[26], s[27]]);
            assert_eq!(seq, 0x1000 + (i * mss) as u32);
            assert_eq!(u16::from_be_bytes([s[4], s[5]]), 0x1000 + i as u16);
            assert_eq!(
                s[33] & (TCP_FIN | TCP_PSH) != 0,
                i + 1 == count,
                "FIN/PSH only on the last"
            );
            rebuilt.extend_from_slice(&s[52..]);
        }
        assert_eq!(rebuilt, original[52..].to_vec());
    }

    #[test]
    fn splits_into_valid_segments_covering_the_payload() {
        let p = tcp_packet(7000, TCP_PSH | 0x10 | TCP_FIN);
        let mut scratch = [0u8; 1450];
        let mut segs: Vec<Vec<u8>> = Vec::new();
        let n = split_tcp(&p, 1450, &mut scratch, |s| segs.push(s.to_vec())).unwrap();
        let mss = 1450 - 52;
        assert_eq!(n, 7000usize.div_ceil(mss));
        assert!(segs.iter().all(|s| s.len() <= 1450));
        check_segments(&mut segs, &p, mss);
    }

    #[test]
    fn train_layout_leaves_room_for_headers() {
        let p = tcp_packet(64_000, TCP_PSH | 0x10);
        let mut out = vec![0u8; 80_000];
        let mss = 1398;
        let t = split_into_train(&p, mss, false, 22, &mut out).unwrap();
        assert_eq!(t.count, 64_000usize.div_ceil(mss));
        assert_eq!(t.stride, 22 + 52 + mss);
        let mut segs: Vec<Vec<u8>> = (0..t.count)
            .map(|i| out[i * t.stride + 22..((i + 1) * t.stride).min(t.len)].to_vec())
            .collect();
        assert_eq!(
            t.len,
            (t.count - 1) * t.stride + 22 + 52 + (64_000 - (t.count - 1) * mss)
        );
        check_segments(&mut segs, &p, mss);
    }

    #[test]
    fn udp_train_gets_a_header_per_segment() {
        let mut p = crate::wire::ipv4::tests::udp_packet(
            [10, 5, 2, 9],
            [10, 5, 1, 7],
            5000,
            53,
            &[9u8; 3000],
        );
        p[24..26].copy_from_slice(&3008u16.to_be_bytes());
        let mut out = vec![0u8; 8000];
        let t = split_into_train(&p, 1000, true, 0, &mut out).unwrap();
        assert_eq!((t.count, t.stride), (3, 1028));
        for i in 0..3 {
            let s = &mut out[i * 1028..(i + 1) * 1028].to_vec();
            assert_eq!(u16::from_be_bytes([s[24], s[25]]), 1008);
            assert_eq!(complete_l4(s), L4Checksum::Fine);
        }
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
