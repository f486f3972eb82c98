//! The tun offload formats: the virtio-net header in front of each packet, turning a tun read (maybe a
//! TSO/USO super-packet) into a train of datagrams, and coalescing received TCP segments (GRO) into one
//! super-packet for a single tun write; IPv4 and IPv6 (TCPv6 without extension headers) alike.

use super::csum::{complete_l4, sum_words};
use super::ipv4::{self, checksum_finish, PROTO_TCP};
use super::ipv6::{self, Upper};
use super::segment::{split_into_train, SegmentError, Train};
use super::tcp::{self, flags::ACK as TCP_ACK, flags::PSH as TCP_PSH};
use super::Field;

/// Length of the virtio-net header the tun device prepends (IFF_VNET_HDR).
pub const VNET_HDR_LEN: usize = 10;
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_UDP_L4: u8 = 5;
/// The checksum at `csum_start + csum_offset` must still be completed.
pub const F_NEEDS_CSUM: u8 = 1;

/// `struct virtio_net_hdr` (little-endian on the hosts weft runs on).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    pub fn parse(b: &[u8]) -> Option<VnetHdr> {
        let b = b.get(..VNET_HDR_LEN)?;
        let u = |f: Field| u16::from_le_bytes([b[f.start], b[f.start + 1]]);
        Some(VnetHdr {
            flags: b[vnet_field::FLAGS],
            gso_type: b[vnet_field::GSO_TYPE],
            hdr_len: u(vnet_field::HDR_LEN),
            gso_size: u(vnet_field::GSO_SIZE),
            csum_start: u(vnet_field::CSUM_START),
            csum_offset: u(vnet_field::CSUM_OFFSET),
        })
    }

    /// Writes the header into the first `VNET_HDR_LEN` bytes of `b`.
    pub fn write(&self, b: &mut [u8]) {
        b[vnet_field::FLAGS] = self.flags;
        b[vnet_field::GSO_TYPE] = self.gso_type;
        b[vnet_field::HDR_LEN].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[vnet_field::GSO_SIZE].copy_from_slice(&self.gso_size.to_le_bytes());
        b[vnet_field::CSUM_START].copy_from_slice(&self.csum_start.to_le_bytes());
        b[vnet_field::CSUM_OFFSET].copy_from_slice(&self.csum_offset.to_le_bytes());
    }
}

/// Byte ranges of `struct virtio_net_hdr` (without `num_buffers`).
pub mod vnet_field {
    use crate::wire::Field;

    pub const FLAGS: usize = 0;
    pub const GSO_TYPE: usize = 1;
    pub const HDR_LEN: Field = 2..4;
    pub const GSO_SIZE: Field = 4..6;
    pub const CSUM_START: Field = 6..8;
    pub const CSUM_OFFSET: Field = 8..10;
}

/// Turns one tun read (`hdr` and the packet behind it) into a train in `out`: segments behind `prefix`
/// bytes each, every checksum complete.
pub fn train_from_tun(
    hdr: &VnetHdr,
    packet: &[u8],
    prefix: usize,
    out: &mut [u8],
) -> Result<Train, SegmentError> {
    match hdr.gso_type & 0x7f {
        GSO_NONE => {
            let len = prefix + packet.len();
            if out.len() < len {
                return Err(SegmentError::MtuTooSmall);
            }
            let p = &mut out[prefix..len];
            p.copy_from_slice(packet);
            if hdr.flags & F_NEEDS_CSUM != 0 {
                let start = usize::from(hdr.csum_start);
                let at = start + usize::from(hdr.csum_offset);
                if at + 2 > p.len() {
                    return Err(SegmentError::NotTcp);
                }
                // The field holds the pseudo-header sum; fold in the rest and invert.
                let c = checksum_finish(sum_words(&p[start..]));
                p[at..at + 2].copy_from_slice(&c.to_be_bytes());
            }
            Ok(Train {
                count: 1,
                stride: len,
                len,
            })
        }
        GSO_TCPV4 | GSO_TCPV6 => {
            // The type names the family: TCPv4 segments only IPv4, TCPv6 only IPv6.
            let version = if hdr.gso_type & 0x7f == GSO_TCPV6 {
                6
            } else {
                4
            };
            if packet.first().map(|b| b >> 4) != Some(version) {
                return Err(SegmentError::NotTcp);
            }
            split_into_train(packet, usize::from(hdr.gso_size), false, prefix, out)
        }
        GSO_UDP_L4 => split_into_train(packet, usize::from(hdr.gso_size), true, prefix, out),
        _ => Err(SegmentError::NotTcp),
    }
}

/// Largest packet a coalesced frame may become.
const MAX_COALESCED: usize = 65_535;
/// Bytes of the flow key: both IPv6 addresses and the ports.
const KEY_LEN: usize = 36;

/// The flow and header state a segment must match to be appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FlowState {
    /// src, dst addresses and ports (the first 12 bytes for IPv4).
    key: [u8; KEY_LEN],
    /// The IP header length: 20 for IPv4, 40 for IPv6 (so equal lengths mean one family).
    hl: usize,
    thl: usize,
    next_seq: u32,
    seg_size: usize,
    /// The last appended segment was short or had PSH: nothing more may follow.
    closed: bool,
}

/// Coalesces consecutive TCP segments of one flow (GRO) into a super-packet with a virtio-net header, so
/// a whole received batch reaches the tun in a few writes. Other packets pass through one by one.
pub struct Coalescer {
    buf: Vec<u8>,
    len: usize,
    segments: usize,
    flow: Option<FlowState>,
    mtu: usize,
}

impl Coalescer {
    /// A coalescer for a tun device of `mtu` bytes.
    pub fn new(mtu: usize) -> Self {
        Coalescer {
            buf: vec![0; VNET_HDR_LEN + MAX_COALESCED],
            len: 0,
            segments: 0,
            flow: None,
            mtu,
        }
    }

    /// Offers one inner IPv4 or IPv6 packet; finished frames (virtio-net header + packet) go to `emit`.
    pub fn push(&mut self, packet: &[u8], emit: &mut impl FnMut(&[u8])) {
        if self.try_append(packet) {
            return;
        }
        self.flush(emit);
        if packet.len() > MAX_COALESCED {
            return;
        }
        match coalescable(packet) {
            Some((hl, thl)) => {
                self.start(packet, hl, thl);
                if packet.len() > self.mtu {
                    // A super-packet from a kernel peer: hand it to the kernel as GSO right away.
                    self.flush(emit);
                }
            }
            None => {
                let f = &mut self.buf[..VNET_HDR_LEN + packet.len()];
                VnetHdr::default().write(f);
                f[VNET_HDR_LEN..].copy_from_slice(packet);
                complete_l4(&mut f[VNET_HDR_LEN..]);
                emit(f);
            }
        }
    }

    fn start(&mut self, packet: &[u8], hl: usize, thl: usize) {
        self.buf[VNET_HDR_LEN..VNET_HDR_LEN + packet.len()].copy_from_slice(packet);
        self.len = packet.len();
        self.segments = 1;
        let payload = packet.len() - hl - thl;
        // `coalescable` checked both headers.
        let seg = tcp::Packet::new_unchecked(&packet[hl..]);
        let addrs = addresses(hl);
        let mut key = [0u8; KEY_LEN];
        key[..addrs.len()].copy_from_slice(&packet[addrs.clone()]);
        key[addrs.len()..addrs.len() + 4].copy_from_slice(seg.ports());
        self.flow = Some(FlowState {
            key,
            hl,
            thl,
            next_seq: seg.seq_number().wrapping_add(payload as u32),
            seg_size: payload,
            closed: seg.flags() & TCP_PSH != 0 || packet.len() > self.mtu,
        });
    }

    fn try_append(&mut self, p: &[u8]) -> bool {
        let Some(f) = self.flow else { return false };
        if f.closed || p.len() < f.hl + f.thl || self.len + p.len() - f.hl - f.thl > MAX_COALESCED {
            return false;
        }
        let Some((hl, thl)) = coalescable(p) else {
            return false;
        };
        if hl != f.hl || thl != f.thl {
            return false;
        }
        // `coalescable` checked `p`; the first segment's headers are in `buf`, of the same lengths (and
        // so of the same family).
        let seg = tcp::Packet::new_unchecked(&p[hl..]);
        let first_ip = &self.buf[VNET_HDR_LEN..VNET_HDR_LEN + hl];
        let first = tcp::Packet::new_unchecked(&self.buf[VNET_HDR_LEN + hl..]);
        let options = tcp::field::OPTIONS..thl;
        let payload = p.len() - hl - thl;
        let seq = seg.seq_number();
        let addrs = addresses(hl);
        let n = addrs.len();
        let same_ip = if hl == ipv6::HEADER_LEN {
            // Version, traffic class and flow label; hop limit.
            let (a, b) = (
                ipv6::Packet::new_unchecked(p),
                ipv6::Packet::new_unchecked(first_ip),
            );
            p[ipv6::field::VER_TC_FLOW] == first_ip[ipv6::field::VER_TC_FLOW]
                && a.hop_limit() == b.hop_limit()
        } else {
            let (a, b) = (
                ipv4::Packet::new_unchecked(p),
                ipv4::Packet::new_unchecked(first_ip),
            );
            a.dscp_ecn() == b.dscp_ecn() && a.ttl() == b.ttl()
        };
        let same = p[addrs] == f.key[..n]
            && seg.ports() == &f.key[n..n + 4]
            && seq == f.next_seq
            && payload <= f.seg_size
            && same_ip
            && seg.ack_bytes() == first.ack_bytes()
            && seg.window_bytes() == first.window_bytes()
            && p[hl..][options.clone()] == self.buf[VNET_HDR_LEN + hl..][options]; // timestamps
        if !same {
            return false;
        }
        let psh = seg.flags() & TCP_PSH;
        let at = VNET_HDR_LEN + self.len;
        self.buf[at..at + payload].copy_from_slice(&p[hl + thl..]);
        self.len += payload;
        self.segments += 1;
        let mut first = tcp::Packet::new_unchecked(&mut self.buf[VNET_HDR_LEN + hl..]);
        let flags = first.flags();
        first.set_flags(flags | psh);
        self.flow = Some(FlowState {
            next_seq: seq.wrapping_add(payload as u32),
            closed: payload < f.seg_size || psh != 0,
            ..f
        });
        true
    }

    /// Emits the frame being built, if any.
    pub fn flush(&mut self, emit: &mut impl FnMut(&[u8])) {
        let Some(f) = self.flow.take() else { return };
        let frame = &mut self.buf[..VNET_HDR_LEN + self.len];
        let (hdr, p) = frame.split_at_mut(VNET_HDR_LEN);
        // Fix the IP length and checksum, and leave the TCP checksum partial (the pseudo-header sum)
        // for the kernel to complete: no pass over the payload here, and a checksum a kernel peer left
        // partial on a virtual link needs no repair. The outer UDP checksum covered the bytes in transit.
        let total = p.len();
        let v6 = f.hl == ipv6::HEADER_LEN;
        let pseudo = if v6 {
            let mut ip = ipv6::Packet::new_unchecked(&mut *p);
            ip.set_payload_len(total - f.hl);
            ip.pseudo_header_sum(PROTO_TCP, total - f.hl)
        } else {
            let mut ip = ipv4::Packet::new_unchecked(&mut *p);
            ip.set_total_len(total);
            ip.fill_checksum();
            ip.pseudo_header_sum(total - f.hl)
        };
        tcp::Packet::new_unchecked(&mut p[f.hl..]).set_checksum(!checksum_finish(pseudo));
        let single = self.segments == 1 && total <= self.mtu;
        let seg = if self.segments == 1 {
            self.mtu - f.hl - f.thl
        } else {
            f.seg_size
        };
        VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: match (single, v6) {
                (true, _) => GSO_NONE,
                (false, false) => GSO_TCPV4,
                (false, true) => GSO_TCPV6,
            },
            hdr_len: (f.hl + f.thl) as u16,
            gso_size: if single { 0 } else { seg as u16 },
            csum_start: f.hl as u16,
            csum_offset: tcp::field::CHECKSUM.start as u16,
        }
        .write(hdr);
        emit(frame);
        self.len = 0;
        self.segments = 0;
    }
}

/// The flow's addresses in a packet whose IP header is `hl` bytes long (20: IPv4, 40: IPv6).
fn addresses(hl: usize) -> Field {
    if hl == ipv6::HEADER_LEN {
        ipv6::field::ADDRESSES
    } else {
        ipv4::field::ADDRESSES
    }
}

/// (IP header length, TCP header length) if `p` is a TCP segment that may be coalesced: IPv4 without
/// options or fragmentation, or IPv6 with TCP right after the fixed header; only ACK (and PSH) set, some
/// payload.
fn coalescable(p: &[u8]) -> Option<(usize, usize)> {
    let hl = if *p.first()? >> 4 == 6 {
        let ip = ipv6::Packet::new_checked(p).ok()?;
        if ip.upper() != Upper::Tcp || ip.total_len() != p.len() {
            return None;
        }
        ipv6::HEADER_LEN
    } else {
        let ip = ipv4::Packet::new_checked(p).ok()?;
        let hl = ip.header_len();
        if ip.protocol() != PROTO_TCP
            || hl != ipv4::HEADER_LEN
            || ip.is_fragment()
            || ip.total_len() != p.len()
        {
            return None;
        }
        hl
    };
    // The IP payload is the rest of `p` (the total length is the buffer's).
    let seg = tcp::Packet::new_checked(&p[hl..]).ok()?;
    let thl = seg.header_len();
    let flags = seg.flags();
    if thl >= p.len() - hl || flags & !(TCP_ACK | TCP_PSH) != 0 || flags & TCP_ACK == 0 {
        return None;
    }
    Some((hl, thl))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::csum::L4Checksum;
    use crate::wire::ipv4::checksum;
    use crate::wire::segment::split_tcp;
    use crate::wire::segment::tests::{tcp6_packet, tcp_packet};

    fn segments(payload: usize, mss: usize, flags: u8) -> Vec<Vec<u8>> {
        let p = tcp_packet(payload, flags);
        let mut scratch = vec![0u8; 1500];
        let mut segs = Vec::new();
        split_tcp(&p, mss + 52, &mut scratch, |s| segs.push(s.to_vec())).unwrap();
        segs
    }

    #[test]
    fn vnet_header_round_trip() {
        let h = VnetHdr {
            flags: 1,
            gso_type: 1,
            hdr_len: 52,
            gso_size: 1398,
            csum_start: 20,
            csum_offset: 16,
        };
        let mut b = [0u8; 10];
        h.write(&mut b);
        assert_eq!(VnetHdr::parse(&b), Some(h));
        assert_eq!(VnetHdr::parse(&b[..9]), None);
    }

    #[test]
    fn tso_read_becomes_a_train_and_needs_csum_is_completed() {
        let p = tcp_packet(10_000, TCP_ACK | TCP_PSH);
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 52,
            gso_size: 1398,
            csum_start: 20,
            csum_offset: 16,
        };
        let mut out = vec![0u8; 20_000];
        let t = train_from_tun(&h, &p, 22, &mut out).unwrap();
        assert_eq!(t.count, 8);
        let single = tcp_packet(100, TCP_ACK);
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 16,
            ..Default::default()
        };
        let t = train_from_tun(&h, &single, 22, &mut out).unwrap();
        assert_eq!((t.count, t.len), (1, 22 + single.len()));
        assert_eq!(complete_l4(&mut out[22..t.len]), L4Checksum::Fine);
    }

    #[test]
    fn coalesces_a_flow_into_one_gso_frame() {
        let segs = segments(20_000, 1398, TCP_ACK | TCP_PSH);
        let mut c = Coalescer::new(1450);
        let mut frames: Vec<Vec<u8>> = Vec::new();
        let mut emit = |f: &[u8]| frames.push(f.to_vec());
        for s in &segs {
            c.push(s, &mut emit);
        }
        c.flush(&mut emit);
        assert_eq!(frames.len(), 1, "one write for the whole train");
        let f = &frames[0];
        let h = VnetHdr::parse(f).unwrap();
        assert_eq!(
            (h.gso_type, h.gso_size, h.hdr_len, h.flags),
            (GSO_TCPV4, 1398, 52, F_NEEDS_CSUM)
        );
        let p = &f[VNET_HDR_LEN..];
        assert_eq!(p.len(), 52 + 20_000);
        assert_eq!(u16::from_be_bytes([p[2], p[3]]) as usize, p.len());
        assert_eq!(checksum(&p[..20]), 0);
        assert_eq!(&p[52..], &tcp_packet(20_000, 0)[52..], "payload in order");
        assert_ne!(p[33] & TCP_PSH, 0, "PSH of the last segment kept");
    }

    #[test]
    fn other_flows_gaps_and_non_tcp_break_the_frame() {
        let segs = segments(5_000, 1000, TCP_ACK);
        let mut c = Coalescer::new(1450);
        let mut frames: Vec<Vec<u8>> = Vec::new();
        let mut emit = |f: &[u8]| frames.push(f.to_vec());
        c.push(&segs[0], &mut emit);
        c.push(&segs[2], &mut emit); // gap: seq does not follow
        c.push(&segs[3], &mut emit);
        let udp = crate::wire::ipv4::tests::udp_packet([10, 5, 2, 9], [10, 5, 1, 7], 1, 2, b"x");
        c.push(&udp, &mut emit);
        c.flush(&mut emit);
        assert_eq!(frames.len(), 3);
        let lone = VnetHdr::parse(&frames[0]).unwrap();
        assert_eq!(
            (lone.gso_type, lone.flags),
            (GSO_NONE, F_NEEDS_CSUM),
            "a lone segment goes alone"
        );
        assert_eq!(VnetHdr::parse(&frames[1]).unwrap().gso_type, GSO_TCPV4);
        assert_eq!(frames[2][VNET_HDR_LEN + 9], 17);
        // What the kernel does with NEEDS_CSUM yields the right checksum.
        let mut p = frames[0][VNET_HDR_LEN..].to_vec();
        let c = checksum_finish(sum_words(&p[20..]));
        p[36..38].copy_from_slice(&c.to_be_bytes());
        assert_eq!(complete_l4(&mut p), L4Checksum::Fine);
    }

    #[test]
    fn an_oversized_packet_goes_out_as_gso_at_the_mtu() {
        let p = tcp_packet(7000, TCP_ACK);
        let mut c = Coalescer::new(1450);
        let mut frames: Vec<Vec<u8>> = Vec::new();
        c.push(&p, &mut |f: &[u8]| frames.push(f.to_vec()));
        assert_eq!(frames.len(), 1);
        let h = VnetHdr::parse(&frames[0]).unwrap();
        assert_eq!((h.gso_type, h.gso_size), (GSO_TCPV4, 1450 - 52));
    }

    fn segments6(payload: usize, mss: usize, flags: u8) -> Vec<Vec<u8>> {
        let p = tcp6_packet(payload, flags);
        let mut scratch = vec![0u8; 1500];
        let mut segs = Vec::new();
        split_tcp(&p, mss + 72, &mut scratch, |s| segs.push(s.to_vec())).unwrap();
        segs
    }

    #[test]
    fn tso6_read_becomes_a_train_of_valid_segments() {
        let p = tcp6_packet(10_000, TCP_ACK | TCP_PSH);
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV6,
            hdr_len: 72,
            gso_size: 1378,
            csum_start: 40,
            csum_offset: 16,
        };
        let mut out = vec![0u8; 20_000];
        let t = train_from_tun(&h, &p, 22, &mut out).unwrap();
        assert_eq!((t.count, t.stride), (8, 22 + 72 + 1378));
        for i in 0..t.count {
            let s = &mut out[i * t.stride + 22..((i + 1) * t.stride).min(t.len)].to_vec();
            assert_eq!(usize::from(u16::from_be_bytes([s[4], s[5]])), s.len() - 40);
            assert_eq!(complete_l4(s), L4Checksum::Fine, "segment {i}");
        }
        // The type names the family.
        let v4 = VnetHdr {
            gso_type: GSO_TCPV4,
            ..h
        };
        assert_eq!(
            train_from_tun(&v4, &p, 22, &mut out),
            Err(SegmentError::NotTcp)
        );
        assert_eq!(
            train_from_tun(&h, &tcp_packet(10_000, TCP_ACK), 22, &mut out),
            Err(SegmentError::NotTcp)
        );
    }

    #[test]
    fn coalesces_an_ipv6_flow_into_one_gso_tcpv6_frame() {
        let segs = segments6(20_000, 1378, TCP_ACK | TCP_PSH);
        let mut c = Coalescer::new(1450);
        let mut frames: Vec<Vec<u8>> = Vec::new();
        let mut emit = |f: &[u8]| frames.push(f.to_vec());
        for s in &segs {
            c.push(s, &mut emit);
        }
        c.flush(&mut emit);
        assert_eq!(frames.len(), 1, "one write for the whole train");
        let h = VnetHdr::parse(&frames[0]).unwrap();
        assert_eq!(
            (h.gso_type, h.gso_size, h.hdr_len, h.flags),
            (GSO_TCPV6, 1378, 72, F_NEEDS_CSUM)
        );
        assert_eq!((h.csum_start, h.csum_offset), (40, 16));
        let mut p = frames[0][VNET_HDR_LEN..].to_vec();
        assert_eq!(p.len(), 72 + 20_000);
        assert_eq!(usize::from(u16::from_be_bytes([p[4], p[5]])), p.len() - 40);
        assert_eq!(&p[72..], &tcp6_packet(20_000, 0)[72..], "payload in order");
        assert_ne!(p[53] & TCP_PSH, 0, "PSH of the last segment kept");
        // What the kernel does with NEEDS_CSUM yields the right checksum.
        let c = checksum_finish(sum_words(&p[40..]));
        p[56..58].copy_from_slice(&c.to_be_bytes());
        assert_eq!(complete_l4(&mut p), L4Checksum::Fine);
    }

    #[test]
    fn ipv4_and_ipv6_segments_do_not_mix_and_extension_headers_pass_alone() {
        let v4 = segments(3_000, 1000, TCP_ACK);
        let v6 = segments6(3_000, 1000, TCP_ACK);
        let mut c = Coalescer::new(1450);
        let mut frames: Vec<Vec<u8>> = Vec::new();
        let mut emit = |f: &[u8]| frames.push(f.to_vec());
        c.push(&v4[0], &mut emit);
        c.push(&v6[1], &mut emit);
        c.push(&v6[2], &mut emit);
        let mut ext = v6[0].clone();
        ext[6] = crate::wire::ipv6::EXT_DEST_OPTS;
        c.push(&ext, &mut emit);
        c.flush(&mut emit);
        assert_eq!(frames.len(), 3);
        assert_eq!(VnetHdr::parse(&frames[0]).unwrap().gso_type, GSO_NONE);
        assert_eq!(VnetHdr::parse(&frames[1]).unwrap().gso_type, GSO_TCPV6);
        let passed = VnetHdr::parse(&frames[2]).unwrap();
        assert_eq!((passed.gso_type, passed.flags), (GSO_NONE, 0));
        assert_eq!(&frames[2][VNET_HDR_LEN..], &ext[..]);
        // Another flow label is another flow.
        let mut c = Coalescer::new(1450);
        let mut frames: Vec<Vec<u8>> = Vec::new();
        let mut emit = |f: &[u8]| frames.push(f.to_vec());
        let mut relabelled = v6[1].clone();
        relabelled[3] ^= 1;
        c.push(&v6[0], &mut emit);
        c.push(&relabelled, &mut emit);
        c.flush(&mut emit);
        assert_eq!(frames.len(), 2);
    }
}
