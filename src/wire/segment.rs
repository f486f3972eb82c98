//! TCP and UDP segmentation in userspace: splits an IPv4 or IPv6 super-packet into segments with correct
//! IP ids (IPv4), lengths and checksums and TCP sequence numbers and flags (or per-segment UDP headers).
//! IPv6 packets are segmented only where TCP or UDP directly follows the fixed header.
//!
//! Used outbound to turn a TSO/USO read from the tun device into a train of equal datagrams for one UDP
//! GSO send, and inbound (without tun offloads) to split a TCP super-packet that a kernel VXLAN peer on a
//! virtual link sent whole.

use super::csum::sum_words;
use super::ipv4::{self, checksum_finish, PROTO_TCP, PROTO_UDP};
use super::ipv6::{self, Upper};
use super::tcp::flags::{CWR as TCP_CWR, FIN as TCP_FIN, PSH as TCP_PSH};
use super::{tcp, udp};

/// Why a packet could not be segmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentError {
    /// Not a complete, unfragmented IPv4 (or extension-header-free IPv6) TCP (or UDP, where asked) packet
    /// with valid headers.
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
    v6: bool,
}

fn layout(packet: &[u8], allow_udp: bool) -> Result<Layout, SegmentError> {
    if packet.first().is_some_and(|b| b >> 4 == 6) {
        return layout6(packet, allow_udp);
    }
    let ip = ipv4::Packet::new_checked(packet).map_err(|_| SegmentError::NotTcp)?;
    if ip.is_fragment() {
        return Err(SegmentError::NotTcp);
    }
    let l4 = ip.payload();
    let (udp, l4_len) = match ip.protocol() {
        PROTO_TCP => {
            let tcp = tcp::Packet::new_checked(l4).map_err(|_| SegmentError::NotTcp)?;
            (false, tcp.header_len())
        }
        // Only the header need be there: each segment gets its own length field.
        PROTO_UDP if allow_udp && l4.len() >= udp::HEADER_LEN => (true, udp::HEADER_LEN),
        _ => return Err(SegmentError::NotTcp),
    };
    Ok(Layout {
        ip_len: ip.header_len(),
        l4_len,
        total: ip.total_len(),
        udp,
        v6: false,
    })
}

fn layout6(packet: &[u8], allow_udp: bool) -> Result<Layout, SegmentError> {
    let ip = ipv6::Packet::new_checked(packet).map_err(|_| SegmentError::NotTcp)?;
    let l4 = ip.payload();
    let (udp, l4_len) = match ip.upper() {
        Upper::Tcp => {
            let tcp = tcp::Packet::new_checked(l4).map_err(|_| SegmentError::NotTcp)?;
            (false, tcp.header_len())
        }
        Upper::Udp if allow_udp && l4.len() >= udp::HEADER_LEN => (true, udp::HEADER_LEN),
        _ => return Err(SegmentError::NotTcp),
    };
    Ok(Layout {
        ip_len: ipv6::HEADER_LEN,
        l4_len,
        total: ip.total_len(),
        udp,
        v6: true,
    })
}

/// Writes segment `i` of `count` (payload `chunk` at byte `start` of the original payload) into `seg`.
/// `packet` passed `layout`, so its headers are all there.
fn build_segment(
    packet: &[u8],
    lay: Layout,
    i: usize,
    count: usize,
    start: usize,
    chunk: &[u8],
    seg: &mut [u8],
) {
    let headers = lay.ip_len + lay.l4_len;
    seg[headers..headers + chunk.len()].copy_from_slice(chunk);
    segment_header(packet, lay, i, count, start, chunk, &mut seg[..headers]);
}

/// Writes the IP and TCP/UDP headers of segment `i` of `count` (payload `chunk`, at byte `start` of the
/// original payload) into `hdr` (exactly the headers' length), checksums complete; the payload is only
/// read (for the checksum), so it may stay where it is.
fn segment_header(
    packet: &[u8],
    lay: Layout,
    i: usize,
    count: usize,
    start: usize,
    chunk: &[u8],
    hdr: &mut [u8],
) {
    let (hl, l4l) = (lay.ip_len, lay.l4_len);
    let headers = hl + l4l;
    hdr.copy_from_slice(&packet[..headers]);
    let pseudo = if lay.v6 {
        let protocol = if lay.udp { PROTO_UDP } else { PROTO_TCP };
        ipv6::Packet::new_unchecked(&mut *hdr).set_payload_len(l4l + chunk.len());
        ipv6::Packet::new_unchecked(packet).pseudo_header_sum(protocol, l4l + chunk.len())
    } else {
        let orig = ipv4::Packet::new_unchecked(packet);
        let mut ip = ipv4::Packet::new_unchecked(&mut *hdr);
        ip.set_total_len(headers + chunk.len());
        ip.set_ident(orig.ident().wrapping_add(i as u16));
        ip.fill_checksum();
        orig.pseudo_header_sum(l4l + chunk.len())
    };
    // TCP and UDP header lengths are even, so the payload's words line up after them.
    let pseudo = pseudo + sum_words(chunk);
    let l4 = &mut hdr[hl..];
    if lay.udp {
        let mut u = udp::Packet::new_unchecked(&mut *l4);
        u.set_len(l4l + chunk.len());
        u.set_checksum(0);
        let c = match checksum_finish(pseudo + sum_words(l4)) {
            0 => 0xffff,
            c => c,
        };
        udp::Packet::new_unchecked(l4).set_checksum(c);
    } else {
        let first = tcp::Packet::new_unchecked(&packet[hl..headers]);
        let mut t = tcp::Packet::new_unchecked(&mut *l4);
        t.set_seq_number(first.seq_number().wrapping_add(start as u32));
        let mut f = first.flags();
        if i + 1 < count {
            f &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            f &= !TCP_CWR;
        }
        t.set_flags(f);
        t.set_checksum(0);
        let c = checksum_finish(pseudo + sum_words(l4));
        tcp::Packet::new_unchecked(l4).set_checksum(c);
    }
}

/// Splits the IPv4 or IPv6 TCP packet `packet` into segments of at most `mtu` bytes, building each in `scratch`
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

/// A super-packet split without moving its payload: per segment, `prefix` bytes left for an encapsulation
/// header and the segment's own IP and TCP/UDP headers, back to back in a header buffer (`hstride` bytes
/// each); the payload chunks stay in the packet. Datagram `i` is `head(i)` followed by `body(i)`, so a
/// sender can gather each from two places (an iovec pair) instead of copying the payload into a train.
#[derive(Debug, Clone, Copy)]
pub struct Split<'a> {
    heads: &'a [u8],
    payload: &'a [u8],
    pub hstride: usize,
    pub seg_payload: usize,
    pub count: usize,
}

impl<'a> Split<'a> {
    /// The encapsulation prefix and headers of datagram `i`.
    #[inline]
    pub fn head(&self, i: usize) -> &'a [u8] {
        &self.heads[i * self.hstride..(i + 1) * self.hstride]
    }

    /// The payload of datagram `i` (the last may be shorter).
    #[inline]
    pub fn body(&self, i: usize) -> &'a [u8] {
        let start = i * self.seg_payload;
        &self.payload[start..(start + self.seg_payload).min(self.payload.len())]
    }

    /// The size of every datagram but a shorter last one (of the only one, if there is one).
    #[inline]
    pub fn stride(&self) -> usize {
        self.hstride + self.seg_payload.min(self.payload.len().max(1))
    }

    /// Bytes of all datagrams together.
    #[inline]
    pub fn len(&self) -> usize {
        self.count * self.hstride + self.payload.len()
    }

    /// Whether there are no datagrams (never, for a split that was built).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Lays the datagrams out back to back in `out` as a [`Train`] (for senders that cannot gather).
    pub fn assemble(&self, out: &mut [u8]) -> Option<Train> {
        let len = self.len();
        if out.len() < len {
            return None;
        }
        let mut at = 0;
        for i in 0..self.count {
            let (h, b) = (self.head(i), self.body(i));
            out[at..at + h.len()].copy_from_slice(h);
            out[at + h.len()..at + h.len() + b.len()].copy_from_slice(b);
            at += h.len() + b.len();
        }
        Some(Train {
            count: self.count,
            stride: self.stride(),
            len,
        })
    }
}

/// Splits a TCP (or, with `udp`, UDP) super-packet into segments of `seg_payload` bytes as a [`Split`]:
/// their headers, each behind a copy of `prefix` (the encapsulation header), are written into `heads`;
/// the payload is not copied.
pub fn split_headers<'a>(
    packet: &'a [u8],
    seg_payload: usize,
    udp: bool,
    prefix: &[u8],
    heads: &'a mut [u8],
) -> Result<Split<'a>, SegmentError> {
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
    let hstride = prefix.len() + headers;
    if heads.len() < count * hstride {
        return Err(SegmentError::MtuTooSmall);
    }
    for i in 0..count {
        let start = i * seg_payload;
        let chunk = &payload[start..(start + seg_payload).min(payload.len())];
        heads[i * hstride..i * hstride + prefix.len()].copy_from_slice(prefix);
        let at = i * hstride + prefix.len();
        segment_header(
            packet,
            lay,
            i,
            count,
            start,
            chunk,
            &mut heads[at..at + headers],
        );
    }
    Ok(Split {
        heads,
        payload,
        hstride,
        seg_payload,
        count,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::wire::csum::{complete_l4, L4Checksum};
    use crate::wire::ipv4::checksum;

    /// An IPv4 TCP packet with timestamps and a partial checksum, as a GSO sender leaves it.
    pub fn tcp_packet(payload_len: usize, flags: u8) -> Vec<u8> {
        let t = tcp::Repr {
            src_port: 40000,
            dst_port: 80,
            seq_number: 0x1000,
            ack_number: 1,
            flags,
            window_len: 0x01f5,
            options: &[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2], // NOP, NOP, timestamps
        };
        let ip = ipv4::Repr {
            src_addr: [10, 5, 2, 9].into(),
            dst_addr: [10, 5, 1, 7].into(),
            protocol: PROTO_TCP,
            payload_len: t.header_len() + payload_len,
            ttl: 64,
            ident: 0x1000,
            dont_frag: true,
            dscp_ecn: 0,
        };
        let mut p = vec![0u8; ip.total_len()];
        ip.emit(&mut ipv4::Packet::new_unchecked(&mut p[..]));
        let hl = ipv4::HEADER_LEN + t.header_len();
        for (i, b) in p[hl..].iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        let pseudo = ipv4::Packet::new_unchecked(&p[..]).pseudo_header_sum(ip.payload_len);
        let mut seg = tcp::Packet::new_unchecked(&mut p[ipv4::HEADER_LEN..]);
        t.emit(&mut seg);
        seg.set_checksum(!checksum_finish(pseudo)); // the folded pseudo-header sum
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
    fn a_split_is_the_train_without_the_payload_copy() {
        for (p, udp) in [
            (tcp_packet(64_000, TCP_PSH | 0x10), false),
            (tcp_packet(1000, 0x10), false),
            (
                crate::wire::ipv4::tests::udp_packet(
                    [10, 5, 2, 9],
                    [10, 5, 1, 7],
                    5000,
                    53,
                    &[9u8; 3001],
                ),
                true,
            ),
        ] {
            let mut train = vec![0u8; 80_000];
            let t = split_into_train(&p, 1398, udp, 22, &mut train).unwrap();
            let prefix: Vec<u8> = (100..122).collect();
            for i in 0..t.count {
                train[i * t.stride..i * t.stride + 22].copy_from_slice(&prefix);
            }
            let mut heads = vec![0u8; 4096];
            let s = split_headers(&p, 1398, udp, &prefix, &mut heads).unwrap();
            assert_eq!((s.count, s.stride(), s.len()), (t.count, t.stride, t.len));
            let mut gathered = Vec::new();
            for i in 0..s.count {
                gathered.extend_from_slice(s.head(i));
                gathered.extend_from_slice(s.body(i));
            }
            assert_eq!(gathered, train[..t.len], "same bytes, datagram by datagram");
            let mut out = vec![0u8; t.len];
            assert_eq!(s.assemble(&mut out), Some(t));
            assert_eq!(out, train[..t.len]);
            assert_eq!(s.assemble(&mut out[..t.len - 1]), None);
        }
        let p = tcp_packet(64_000, 0x10);
        let mut small = [0u8; 100];
        assert_eq!(
            split_headers(&p, 1398, false, &[0; 22], &mut small).unwrap_err(),
            SegmentError::MtuTooSmall
        );
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

    /// An IPv6 TCP packet (fc00:0:0:2::9 -> fc00:0:0:1::7) with timestamps and a partial checksum, as a
    /// GSO sender leaves it.
    pub fn tcp6_packet(payload_len: usize, flags: u8) -> Vec<u8> {
        let t = tcp::Repr {
            src_port: 40000,
            dst_port: 80,
            seq_number: 0x1000,
            ack_number: 1,
            flags,
            window_len: 0x01f5,
            options: &[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2],
        };
        let ip = ipv6::Repr {
            src_addr: "fc00:0:0:2::9".parse().unwrap(),
            dst_addr: "fc00:0:0:1::7".parse().unwrap(),
            next_header: PROTO_TCP,
            payload_len: t.header_len() + payload_len,
            hop_limit: 64,
            traffic_class: 0,
            flow_label: 0xabcde,
        };
        let mut p = vec![0u8; ip.total_len()];
        ip.emit(&mut ipv6::Packet::new_unchecked(&mut p[..]));
        let hl = ipv6::HEADER_LEN + t.header_len();
        for (i, b) in p[hl..].iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        let pseudo =
            ipv6::Packet::new_unchecked(&p[..]).pseudo_header_sum(PROTO_TCP, ip.payload_len);
        let mut seg = tcp::Packet::new_unchecked(&mut p[ipv6::HEADER_LEN..]);
        t.emit(&mut seg);
        seg.set_checksum(!checksum_finish(pseudo));
        p
    }

    #[test]
    fn ipv6_tcp_splits_into_valid_segments() {
        let p = tcp6_packet(7000, TCP_PSH | 0x10 | TCP_FIN);
        let mut scratch = [0u8; 1450];
        let mut segs: Vec<Vec<u8>> = Vec::new();
        let n = split_tcp(&p, 1450, &mut scratch, |s| segs.push(s.to_vec())).unwrap();
        let mss = 1450 - 72;
        assert_eq!(n, 7000usize.div_ceil(mss));
        let mut rebuilt = Vec::new();
        for (i, s) in segs.iter_mut().enumerate() {
            assert!(s.len() <= 1450);
            assert_eq!(&s[..4], &p[..4], "version, class and flow label kept");
            assert_eq!(usize::from(u16::from_be_bytes([s[4], s[5]])), s.len() - 40);
            assert_eq!(
                complete_l4(s),
                L4Checksum::Fine,
                "TCP checksum of segment {i}"
            );
            let seq = u32::from_be_bytes([s[44], s[45], s[46], s[47]]);
            assert_eq!(seq, 0x1000 + (i * mss) as u32);
            assert_eq!(s[53] & (TCP_FIN | TCP_PSH) != 0, i + 1 == n);
            rebuilt.extend_from_slice(&s[72..]);
        }
        assert_eq!(rebuilt, p[72..].to_vec());
        // A train and a split agree for IPv6 too, TCP and UDP.
        let u = crate::wire::ipv6::tests::udp6_packet(
            "fc00::1".parse().unwrap(),
            "fc00::2".parse().unwrap(),
            5000,
            53,
            &[9u8; 3001],
        );
        for (p, udp) in [(tcp6_packet(20_000, 0x10), false), (u, true)] {
            let mut train = vec![0u8; 40_000];
            let t = split_into_train(&p, 1398, udp, 0, &mut train).unwrap();
            let mut heads = vec![0u8; 4096];
            let s = split_headers(&p, 1398, udp, &[], &mut heads).unwrap();
            let mut out = vec![0u8; t.len];
            assert_eq!(s.assemble(&mut out), Some(t));
            assert_eq!(out, train[..t.len]);
            for i in 0..t.count {
                let seg = &mut train[i * t.stride..((i + 1) * t.stride).min(t.len)].to_vec();
                assert_eq!(complete_l4(seg), L4Checksum::Fine, "segment {i}");
            }
        }
    }

    #[test]
    fn ipv6_with_extension_headers_is_not_segmented() {
        let mut p = tcp6_packet(3000, 0x10);
        p[6] = crate::wire::ipv6::EXT_HOP_BY_HOP;
        let mut scratch = [0u8; 1450];
        assert_eq!(
            split_tcp(&p, 1450, &mut scratch, |_| {}),
            Err(SegmentError::NotTcp)
        );
    }
}
