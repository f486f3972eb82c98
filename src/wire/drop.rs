//! Why the data plane dropped a packet: the small `Copy` error of the wire checks, counted per worker.

/// Why an inbound or outbound packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum DropReason {
    /// Shorter than its headers claim, or not parseable.
    Truncated = 0,
    /// VXLAN packet for a VNI that is not ours.
    BadVni,
    /// Underlay source is not the public IP of a current peer.
    UnknownSender,
    /// Inner source address outside the sending peer's subnet.
    SpoofedSource,
    /// Inner destination outside our subnet.
    NotForUs,
    /// No lease covers the destination.
    NoRoute,
    /// The peer uses a backend this host cannot speak.
    UnsupportedPeer,
    /// The kernel refused to send or deliver the packet.
    IoError,
    /// Larger than the tun MTU and not a TCP packet weft can segment.
    TooBig,
    /// IPv6 where this data plane carries only IPv4: IPv6 not enabled for the network (the kernel may still
    /// emit IPv6 on the tun), or a backend that does not carry it (WireGuard).
    NotIpv4,
    /// WireGuard: the authentication tag did not match (tampered, or not sealed with the session's key).
    WgDecryptFailed,
    /// WireGuard: a counter already received or too old for the replay window.
    WgReplay,
    /// WireGuard: for a session index this host does not have (expired, or never made).
    WgNoSession,
    /// WireGuard: a handshake from a public key that no peer lease has.
    WgUnknownKey,
    /// WireGuard: a handshake or cookie message that failed its MACs, timestamp or state checks.
    WgBadHandshake,
    /// Neither IPv4 nor IPv6.
    NotIp,
    /// No lease covers the IPv6 destination.
    NoRoute6,
    /// An IPv6 source or destination that must not cross the overlay: unspecified, loopback, multicast,
    /// link-local or IPv4-mapped.
    Ipv6Scope,
    /// The peer's public address is of an IP family this host's underlay cannot send to.
    UnderlayFamily,
    /// An underlay frame whose UDP checksum is wrong (checked where it is mandatory, over IPv6).
    BadChecksum,
}

impl DropReason {
    pub const ALL: [DropReason; 20] = [
        DropReason::Truncated,
        DropReason::BadVni,
        DropReason::UnknownSender,
        DropReason::SpoofedSource,
        DropReason::NotForUs,
        DropReason::NoRoute,
        DropReason::UnsupportedPeer,
        DropReason::IoError,
        DropReason::TooBig,
        DropReason::NotIpv4,
        DropReason::WgDecryptFailed,
        DropReason::WgReplay,
        DropReason::WgNoSession,
        DropReason::WgUnknownKey,
        DropReason::WgBadHandshake,
        DropReason::NotIp,
        DropReason::NoRoute6,
        DropReason::Ipv6Scope,
        DropReason::UnderlayFamily,
        DropReason::BadChecksum,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::BadVni => "bad_vni",
            DropReason::UnknownSender => "unknown_sender",
            DropReason::SpoofedSource => "spoofed_source",
            DropReason::NotForUs => "not_for_us",
            DropReason::NoRoute => "no_route",
            DropReason::UnsupportedPeer => "unsupported_peer",
            DropReason::IoError => "io_error",
            DropReason::TooBig => "too_big",
            DropReason::NotIpv4 => "not_ipv4",
            DropReason::WgDecryptFailed => "decrypt_failed",
            DropReason::WgReplay => "replayed",
            DropReason::WgNoSession => "no_session",
            DropReason::WgUnknownKey => "unknown_key",
            DropReason::WgBadHandshake => "bad_handshake",
            DropReason::NotIp => "not_ip",
            DropReason::NoRoute6 => "no_route6",
            DropReason::Ipv6Scope => "ipv6_scope",
            DropReason::UnderlayFamily => "underlay_family",
            DropReason::BadChecksum => "bad_checksum",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_listed_at_its_index_with_its_own_label() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?}");
        }
        let labels: std::collections::HashSet<_> = DropReason::ALL.map(|r| r.label()).into();
        assert_eq!(labels.len(), DropReason::ALL.len());
    }
}
