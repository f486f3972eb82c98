//! The whole inbound pipeline for one UDP payload, pure: sender check, decapsulation, inner checks,
//! checksum completion and segmentation, ending in zero or more packets to deliver.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::csum::complete_l4;
use super::ethernet::MacAddr;
use super::filter::{check_inner, check_sender, PeerTable};
use super::segment::split_tcp;
use super::vxlan::{decap, VXLAN_ENCAP};
use super::DropReason;
use super::{be16, ipv4};

/// How inner packets are wrapped on the underlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encap {
    /// VXLAN with our VNI and VTEP MAC, as Linux's flannel.1.
    Vxlan { vni: u32, mac: MacAddr },
    /// flannel's udp backend: the raw IP packet is the UDP payload.
    Udp,
    /// flannel's wireguard backend: the IP packet sealed in a WireGuard data message (the session
    /// state lives in `crate::wireguard`; packets are plain IP until sealed, as for `Udp`).
    WireGuard,
}

impl Encap {
    /// Bytes of encapsulation in front of each inner packet in a datagram.
    #[inline]
    pub fn prefix(self) -> usize {
        match self {
            Encap::Vxlan { .. } => VXLAN_ENCAP,
            Encap::Udp | Encap::WireGuard => 0,
        }
    }
}

/// What the inbound checks need to know about this host.
#[derive(Debug, Clone, Copy)]
pub struct Inbound {
    /// Our leased subnet: inner destinations must lie in it.
    pub own: Ipv4Net,
    pub encap: Encap,
    /// The tun MTU: without tun offloads, larger TCP packets are segmented to it.
    pub mtu: usize,
    /// The tun takes virtio-net headers: deliver packets whole and leave checksums to the GRO
    /// coalescer (which hands TCP checksums to the kernel). Without it, segment oversized TCP packets
    /// and complete partial checksums here.
    pub tun_offload: bool,
}

/// The length of each datagram in a received buffer of `payload.len()` bytes that the kernel reported
/// with GRO `stride`: normally `stride`, but a UDP-tunnel GSO super-packet (a kernel VXLAN peer over a
/// virtual link) arrives as one datagram whose inner IP length spans the whole buffer while the
/// reported stride is the inner segment size.
pub fn datagram_units(payload: &[u8], stride: usize, prefix: usize) -> usize {
    let whole = payload.len().max(1);
    if stride == 0 || stride >= whole {
        return whole;
    }
    // The inner IPv4 total length, read without any other check: a hint, not a validation.
    match payload
        .get(prefix..)
        .and_then(|ip| ip.get(ipv4::field::LENGTH))
    {
        Some(l) if usize::from(be16(l)) == payload.len() - prefix => whole,
        _ => stride,
    }
}

impl Inbound {
    /// Checks one datagram `payload` from underlay address `src` and hands each packet to deliver (at
    /// most `mtu` bytes each) to `deliver`. `scratch` holds segments of oversized TCP packets.
    #[inline]
    pub fn receive<R: PeerTable + ?Sized>(
        &self,
        routes: &R,
        src: Ipv4Addr,
        payload: &mut [u8],
        scratch: &mut [u8],
        mut deliver: impl FnMut(&[u8]),
    ) -> Result<(), DropReason> {
        let peer_subnet = check_sender(routes, src)?;
        let start = match self.encap {
            Encap::Vxlan { vni, mac } => decap(payload, vni, mac)?,
            Encap::Udp => 0,
            // Opened and checked by the WireGuard node before it reaches here.
            Encap::WireGuard => return Err(DropReason::UnsupportedPeer),
        };
        let len = check_inner(routes, self.own, src, peer_subnet, &payload[start..])?;
        let packet = &mut payload[start..start + len];
        if self.tun_offload {
            deliver(packet);
        } else if len > self.mtu {
            // A TCP super-packet from a kernel peer over a virtual link: segment it.
            split_tcp(packet, self.mtu, scratch, deliver).map_err(|_| DropReason::TooBig)?;
        } else {
            complete_l4(packet);
            deliver(packet);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::filter::tests::TestPeers;
    use crate::wire::ipv4::tests::udp_packet;
    use crate::wire::vxlan::{VxlanTemplate, VXLAN_ENCAP};
    use rand::{Rng, SeedableRng};

    const OURS: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);

    fn routes() -> TestPeers {
        TestPeers(vec![(
            "10.5.2.0/24".parse().unwrap(),
            Ipv4Addr::new(192, 0, 2, 2),
        )])
    }

    #[test]
    fn a_good_vxlan_packet_is_delivered_once() {
        let inner = udp_packet([10, 5, 2, 9], [10, 5, 1, 7], 1, 2, b"hello");
        let mut p = vec![0u8; VXLAN_ENCAP];
        VxlanTemplate::new(1, OURS, MacAddr([2, 0, 0, 0, 0, 2])).write(&mut p, 0);
        p.extend_from_slice(&inner);
        let mut got = Vec::new();
        let mut scratch = [0u8; 1450];
        let rx = Inbound {
            own: "10.5.1.0/24".parse().unwrap(),
            encap: Encap::Vxlan { vni: 1, mac: OURS },
            mtu: 1450,
            tun_offload: false,
        };
        rx.receive(
            &routes(),
            Ipv4Addr::new(192, 0, 2, 2),
            &mut p,
            &mut scratch,
            |d| got.push(d.to_vec()),
        )
        .unwrap();
        assert_eq!(got, vec![inner]);
    }

    #[test]
    fn tunnel_super_packets_are_one_unit_and_gro_trains_split_by_stride() {
        let mut one = vec![0u8; 22];
        one.extend_from_slice(&udp_packet(
            [10, 5, 2, 9],
            [10, 5, 1, 7],
            1,
            2,
            &[0u8; 5000],
        ));
        assert_eq!(datagram_units(&one, 1400, 22), one.len());
        let seg = {
            let mut s = vec![0u8; 22];
            s.extend_from_slice(&udp_packet(
                [10, 5, 2, 9],
                [10, 5, 1, 7],
                1,
                2,
                &[0u8; 1000],
            ));
            s
        };
        let train: Vec<u8> = [seg.clone(), seg.clone(), seg.clone()].concat();
        assert_eq!(datagram_units(&train, seg.len(), 22), seg.len());
        assert_eq!(datagram_units(&seg, 0, 22), seg.len());
        assert_eq!(datagram_units(&[], 0, 22), 1);
    }

    /// Random and mutated input never panics and never delivers more than the MTU.
    #[test]
    fn random_input_never_panics() {
        let r = routes();
        let own = "10.5.1.0/24".parse().unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        let seed = {
            let mut p = vec![0u8; VXLAN_ENCAP];
            VxlanTemplate::new(1, OURS, MacAddr([2, 0, 0, 0, 0, 2])).write(&mut p, 0);
            p.extend_from_slice(&udp_packet(
                [10, 5, 2, 9],
                [10, 5, 1, 7],
                1,
                2,
                &[7u8; 3000],
            ));
            p[VXLAN_ENCAP + 9] = 6; // make it TCP so the segmentation path runs too
            p
        };
        let mut scratch = [0u8; 1450];
        for round in 0..20_000 {
            let mut p: Vec<u8> = if round % 2 == 0 {
                let n = rng.gen_range(0..200);
                (0..n).map(|_| rng.gen()).collect()
            } else {
                let mut p = seed.clone();
                for _ in 0..rng.gen_range(1..6) {
                    let i = rng.gen_range(0..p.len());
                    p[i] = rng.gen();
                }
                p.truncate(rng.gen_range(0..=p.len()));
                p
            };
            for encap in [Encap::Vxlan { vni: 1, mac: OURS }, Encap::Udp] {
                let rx = Inbound {
                    own,
                    encap,
                    mtu: 1450,
                    tun_offload: false,
                };
                let _ = rx.receive(&r, Ipv4Addr::new(192, 0, 2, 2), &mut p, &mut scratch, |d| {
                    assert!(d.len() <= 1450)
                });
            }
        }
    }
}
