//! The tun offload formats: the virtio-net header in front of each packet, turning a tun read (maybe a
//! TSO/USO super-packet) into a train of datagrams, and coalescing received TCP segments (GRO) into one
//! super-packet for a single tun write.

use super::csum::{complete_l4, sum_words};
use super::ipv4::{self, checksum, checksum_add, checksum_finish};
use super::segment::{split_into_train, SegmentError, Train};

/// Length of the virtio-net header the tun device prepends (IFF_VNET_HDR).
pub const VNET_HDR_LEN: usize = 10;
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
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
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    pub fn write(&self, b: &mut [u8]) {
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
    }
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
        GSO_TCPV4 => split_into_train(packet, usize::from(hdr.gso_size), false, prefix, out),
        GSO_UDP_L4 => split_into_train(packet, usize::from(hdr.gso_size), true, prefix, out),
        _ => Err(SegmentError::NotTcp),
    }
}

const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;
/// Largest IPv4 packet a coalesced frame may become.
const MAX_COALESCED: usize = 65_535;

/// The flow and header state a segment must match to be appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FlowState {
    /// src, dst addresses and ports.
    key: [u8; 12],
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

    /// Offers one inner IPv4 packet; finished frames (virtio-net header + packet) go to `emit`.
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
        let seq = u32::from_be_bytes([
            packet[hl + 4],
            packet[hl + 5],
            packet[hl + 6],
            packet[hl + 7],
        ]);
        let mut key = [0u8; 12];
        key[..8].copy_from_slice(&packet[12..20]);
        key[8..].copy_from_slice(&packet[hl..hl + 4]);
        self.flow = Some(FlowState {
            key,
            hl,
            thl,
            next_seq: seq.wrapping_add(payload as u32),
            seg_size: payload,
            closed: packet[hl + 13] & TCP_PSH != 0 || packet.len() > self.mtu,
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
        let first = &self.buf[VNET_HDR_LEN..VNET_HDR_LEN + f.hl + f.thl];
        let payload = p.len() - hl - thl;
        let seq = u32::from_be_bytes([p[hl + 4], p[hl + 5], p[hl + 6], p[hl + 7]]);
        let same = hl == f.hl
            && thl == f.thl
            && p[12..20] == f.key[..8]
            && p[hl..hl + 4] == f.key[8..]
            && seq == f.next_seq
            && payload <= f.seg_size
            && p[1] == first[1] // TOS
            && p[8] == first[8] // TTL
            && p[hl + 8..hl + 12] == first[hl + 8..hl + 12] // ACK number
            && p[hl + 14..hl + 16] == first[hl + 14..hl + 16] // window
            && p[hl + 20..hl + thl] == first[hl + 20..hl + thl]; // options (timestamps)
        if !same {
            return false;
        }
        let at = VNET_HDR_LEN + self.len;
        self.buf[at..at + payload].copy_from_slice(&p[hl + thl..]);
        self.len += payload;
        self.segments += 1;
        let psh = p[hl + 13] & TCP_PSH;
        self.buf[VNET_HDR_LEN + hl + 13] |= psh;
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
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[10..12].copy_from_slice(&[0, 0]);
        let c = checksum(&p[..f.hl]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        let mut pseudo = checksum_add(0, &p[12..20]) + 6 + (total - f.hl) as u32;
        while pseudo >> 16 != 0 {
            pseudo = (pseudo & 0xffff) + (pseudo >> 16);
        }
        p[f.hl + 16..f.hl + 18].copy_from_slice(&(pseudo as u16).to_be_bytes());
        let single = self.segments == 1 && total <= self.mtu;
        let seg = if self.segments == 1 {
            self.mtu - f.hl - f.thl
        } else {
            f.seg_size
        };
        VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: if single { GSO_NONE } else { GSO_TCPV4 },
            hdr_len: (f.hl + f.thl) as u16,
            gso_size: if single { 0 } else { seg as u16 },
            csum_start: f.hl as u16,
            csum_offset: 16,
        }
        .write(hdr);
        emit(frame);
        self.len = 0;
        self.segments = 0;
    }
}

/// (IP header length, TCP header length) if `p` is a TCP segment that may be coalesced: IPv4 without
/// options or fragmentation, only ACK (and PSH) set, some payload.
fn coalescable(p: &[u8]) -> Option<(usize, usize)> {
    let ip = ipv4::parse(p)?;
    if ip.protocol != 6
        || ip.header_len != 20
        || ip.later_fragment
        || p[6] & 0x20 != 0
        || ip.total_len != p.len()
    {
        return None;
    }
    let hl = ip.header_len;
    let t = p.get(hl..)?;
    if t.len() < 20 {
        return None;
    }
    let thl = usize::from(t[12] >> 4) * 4;
    if thl < 20 || thl >= t.len() || t[13] & !(TCP_ACK | TCP_PSH) != 0 || t[13] & TCP_ACK == 0 {
        return None;
    }
    Some((hl, thl))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::csum::L4Checksum;
    use crate::wire::segment::{split_tcp, tests::tcp_packet};

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
}
