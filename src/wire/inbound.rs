//! The whole inbound pipeline for one UDP payload, pure: sender check, decapsulation, inner checks (IPv4
//! or IPv6), checksum completion and segmentation, ending in zero or more packets to deliver.

use std::net::IpAddr;

use ipnet::{Ipv4Net, Ipv6Net};

use super::csum::complete_l4;
use super::ethernet::MacAddr;
use super::filter::{check_inner6, check_inner_from, PeerTable};
use super::segment::split_tcp;
use super::vxlan::{decap_dual, InnerFamily, VXLAN_ENCAP};
use super::DropReason;
use super::{be16, ipv4, ipv6};

/// How inner packets are wrapped on the underlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encap {
    /// VXLAN with our VNI and VTEP MAC, as Linux's flannel.1; `mac6` is the MAC of our IPv6 VTEP (as
    /// flannel's `flannel-v6.<VNI>`), None where IPv6 is not enabled (inner IPv6 is then dropped).
    Vxlan {
        vni: u32,
        mac: MacAddr,
        mac6: Option<MacAddr>,
    },
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
    /// Our IPv4 subnet (None on an IPv6-only network: inner IPv4 is then not for us).
    pub own: Option<Ipv4Net>,
    /// Our leased IPv6 subnet: inner IPv6 destinations must lie in it. None where IPv6 is not enabled
    /// (inner IPv6 is then dropped as `NotIpv4`).
    pub own6: Option<Ipv6Net>,
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
    // The inner packet's length (IPv4 total length, or IPv6 payload length and fixed header), read
    // without any other check: a hint, not a validation.
    let Some(ip) = payload.get(prefix..) else {
        return stride;
    };
    let inner_len = if ip.first().is_some_and(|b| b >> 4 == 6) {
        ip.get(ipv6::field::PAYLOAD_LEN)
            .map(|l| ipv6::HEADER_LEN + usize::from(be16(l)))
    } else {
        ip.get(ipv4::field::LENGTH).map(|l| usize::from(be16(l)))
    };
    match inner_len {
        Some(l) if l == ip.len() => whole,
        _ => stride,
    }
}

impl Inbound {
    /// Checks one datagram `payload` from underlay address `src` and hands each packet to deliver (at
    /// most `mtu` bytes each) to `deliver`. `scratch` holds segments of oversized TCP packets.
    ///
    /// The sender must be the public address of a current peer (its IPv4 lease found by an IPv4 address,
    /// or its IPv6 lease by either); inner IPv4 and IPv6 are told apart by the VXLAN Ethernet type, or
    /// for flannel's udp backend by the version nibble.
    #[inline]
    pub fn receive<R: PeerTable + ?Sized>(
        &self,
        routes: &R,
        src: IpAddr,
        payload: &mut [u8],
        scratch: &mut [u8],
        mut deliver: impl FnMut(&[u8]),
    ) -> Result<(), DropReason> {
        let peer_subnet = match src {
            IpAddr::V4(a) => routes.sender_subnet(a),
            IpAddr::V6(_) => None,
        };
        // Looked up here only when the IPv4 lookup found no peer; below when inner IPv6 needs it.
        let mut peer_subnet6 = None;
        if peer_subnet.is_none() {
            peer_subnet6 = routes.sender_subnet6(src);
            if peer_subnet6.is_none() {
                return Err(DropReason::UnknownSender);
            }
        }
        let (start, family) = match self.encap {
            Encap::Vxlan { vni, mac, mac6 } => decap_dual(payload, vni, mac, mac6)?,
            Encap::Udp if payload.first().is_some_and(|b| b >> 4 == 6) => (0, InnerFamily::V6),
            Encap::Udp => (0, InnerFamily::V4),
            // Opened and checked by the WireGuard node before it reaches here.
            Encap::WireGuard => return Err(DropReason::UnsupportedPeer),
        };
        let inner = &payload[start..];
        let len = match family {
            InnerFamily::V4 => {
                let own = self.own.ok_or(DropReason::NotForUs)?;
                check_inner_from(routes, own, src, peer_subnet, inner)?
            }
            InnerFamily::V6 => {
                let own6 = self.own6.ok_or(DropReason::NotIpv4)?;
                if peer_subnet.is_some() {
                    peer_subnet6 = routes.sender_subnet6(src);
                }
                check_inner6(routes, own6, src, peer_subnet6, inner)?
            }
        };
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
    use crate::wire::filter::tests::{routes6, TestPeers};
    use crate::wire::ipv4::tests::udp_packet;
    use crate::wire::ipv6::tests::udp6_packet;
    use crate::wire::vxlan::{VxlanTemplate, VXLAN_ENCAP};
    use rand::{Rng, SeedableRng};
    use std::net::Ipv4Addr;

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
            own: Some("10.5.1.0/24".parse().unwrap()),
            own6: None,
            encap: Encap::Vxlan {
                vni: 1,
                mac: OURS,
                mac6: None,
            },
            mtu: 1450,
            tun_offload: false,
        };
        rx.receive(
            &routes(),
            Ipv4Addr::new(192, 0, 2, 2).into(),
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
        let mut six = vec![0u8; 22];
        let big = [0u8; 5000];
        let (a, b) = ("fc00::1".parse().unwrap(), "fc00::2".parse().unwrap());
        six.extend_from_slice(&udp6_packet(a, b, 1, 2, &big));
        assert_eq!(datagram_units(&six, 1400, 22), six.len());
        assert_eq!(datagram_units(&six[..4000], 1400, 22), 1400);
    }

    /// Random and mutated input never panics and never delivers more than the MTU.
    #[test]
    fn random_input_never_panics() {
        let r = routes();
        let own = Some("10.5.1.0/24".parse().unwrap());
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
            let vxlan = Encap::Vxlan {
                vni: 1,
                mac: OURS,
                mac6: None,
            };
            for encap in [vxlan, Encap::Udp] {
                let rx = Inbound {
                    own,
                    own6: None,
                    encap,
                    mtu: 1450,
                    tun_offload: false,
                };
                let src = Ipv4Addr::new(192, 0, 2, 2).into();
                let _ = rx.receive(&r, src, &mut p, &mut scratch, |d| assert!(d.len() <= 1450));
            }
        }
    }

    const OURS6: MacAddr = MacAddr([2, 0, 0, 0, 6, 1]);

    fn dual(encap: Encap) -> Inbound {
        Inbound {
            own: Some("10.5.1.0/24".parse().unwrap()),
            own6: Some("fc00:0:0:1::/64".parse().unwrap()),
            encap,
            mtu: 1450,
            tun_offload: false,
        }
    }

    fn vxlan6() -> Encap {
        Encap::Vxlan {
            vni: 1,
            mac: OURS,
            mac6: Some(OURS6),
        }
    }

    /// `inner` behind a VXLAN header to `dst_mac` with Ethernet type `family`.
    fn framed(inner: &[u8], dst_mac: MacAddr, family: InnerFamily) -> Vec<u8> {
        let mut p = vec![0u8; VXLAN_ENCAP];
        let peer = MacAddr([2, 0, 0, 0, 6, 2]);
        VxlanTemplate::for_inner(1, dst_mac, peer, family).write(&mut p, 0);
        p.extend_from_slice(inner);
        p
    }

    fn run(rx: &Inbound, src: IpAddr, p: &[u8]) -> Result<Vec<Vec<u8>>, DropReason> {
        let mut got = Vec::new();
        let mut scratch = [0u8; 1450];
        let mut p = p.to_vec();
        rx.receive(&routes6(), src, &mut p, &mut scratch, |d| {
            got.push(d.to_vec())
        })?;
        Ok(got)
    }

    #[test]
    fn ipv6_is_delivered_from_either_underlay_and_checked() {
        let v4_peer = IpAddr::from([192, 0, 2, 2]);
        let v6_peer: IpAddr = "2001:db8::3".parse().unwrap();
        let six = |src: &str| {
            udp6_packet(
                src.parse().unwrap(),
                "fc00:0:0:1::7".parse().unwrap(),
                1,
                2,
                b"hi",
            )
        };
        let from2 = six("fc00:0:0:2::9");
        let from3 = six("fc00:0:0:3::9");
        let vx = dual(vxlan6());
        let udp = dual(Encap::Udp);
        // VXLAN to our IPv6 VTEP MAC, over an IPv4 and an IPv6 underlay; flannel udp likewise.
        let p = framed(&from2, OURS6, InnerFamily::V6);
        assert_eq!(run(&vx, v4_peer, &p), Ok(vec![from2.clone()]));
        let p3 = framed(&from3, OURS6, InnerFamily::V6);
        assert_eq!(run(&vx, v6_peer, &p3), Ok(vec![from3.clone()]));
        assert_eq!(run(&udp, v4_peer, &from2), Ok(vec![from2.clone()]));
        assert_eq!(run(&udp, v6_peer, &from3), Ok(vec![from3.clone()]));
        // IPv4 still flows, from the IPv4 peer; an IPv6-only sender may not send IPv4.
        let v4 = udp_packet([10, 5, 2, 9], [10, 5, 1, 7], 1, 2, b"hello");
        assert_eq!(run(&udp, v4_peer, &v4), Ok(vec![v4.clone()]));
        assert_eq!(run(&udp, v6_peer, &v4), Err(DropReason::SpoofedSource));
        // Wrong MAC or Ethernet type, spoofed, unknown sender, scoped, IPv6 not enabled.
        let to_v4_mac = framed(&from2, OURS, InnerFamily::V6);
        assert_eq!(run(&vx, v4_peer, &to_v4_mac), Err(DropReason::NotForUs));
        let v6_in_v4_frame = framed(&from2, OURS, InnerFamily::V4);
        assert_eq!(
            run(&vx, v4_peer, &v6_in_v4_frame),
            Err(DropReason::Truncated)
        );
        assert_eq!(run(&vx, v6_peer, &p), Err(DropReason::SpoofedSource));
        assert_eq!(run(&udp, v4_peer, &from3), Err(DropReason::SpoofedSource));
        let stranger: IpAddr = "2001:db8::99".parse().unwrap();
        assert_eq!(run(&udp, stranger, &from3), Err(DropReason::UnknownSender));
        assert_eq!(
            run(&udp, v4_peer, &six("fe80::9")),
            Err(DropReason::Ipv6Scope)
        );
        let v4_only = Inbound { own6: None, ..udp };
        assert_eq!(run(&v4_only, v4_peer, &from2), Err(DropReason::NotIpv4));
        let no_mac6 = Encap::Vxlan {
            vni: 1,
            mac: OURS,
            mac6: None,
        };
        assert_eq!(run(&dual(no_mac6), v4_peer, &p), Err(DropReason::NotForUs));
    }
}
