//! This host's WireGuard identity and its peers' sessions: sealing trains of packets for a peer, opening
//! datagrams from peers (handshakes, cookies, data), cryptokey routing, timers and per-peer statistics.
//! No I/O: what must go on the wire is handed to the caller's closures.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::control::key::WgKey;
use crate::wire::DropReason;

/// Bytes WireGuard adds to each packet inside the UDP payload: type, receiver index, counter (16) and
/// the Poly1305 tag (16). weft does not pad (receivers accept any length; boringtun does the same).
pub const DATA_OVERHEAD: usize = 32;
/// The size of a handshake initiation, the largest message that is not data.
pub const HANDSHAKE_INIT_LEN: usize = 148;
/// Handshake messages accepted per second before the cookie mechanism is asked for (each is counted
/// twice: once by the node, once by the peer's session).
const HANDSHAKES_PER_SECOND: u64 = 2 * 20;
/// Largest number of peers the session index has room for (boringtun keeps 8 bits of the 32-bit
/// index for the session ring).
const MAX_INDEX: u32 = 1 << 24;

/// One peer lease as the WireGuard backend sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerLease {
    /// Its subnet of this node's family (flannel's `flannel-wg` carries IPv4, `flannel-wg-v6` IPv6).
    pub subnet: IpNet,
    pub public_ip: IpAddr,
    pub key: WgKey,
    pub port: u16,
}

/// A peer's state: its session (boringtun's `Tunn`) and what its lease says.
struct PeerState {
    tunn: Tunn,
    subnet: IpNet,
    endpoint: SocketAddr,
    /// When this host first offered a handshake that is still unanswered.
    waiting_since: Option<Instant>,
    /// The peer was reported as not answering (and is not known to answer again yet).
    reported_down: bool,
    /// `Peer::handshakes` when the timers last looked.
    seen_handshakes: u64,
}

/// How long handshakes may go unanswered before the peer is reported (three tries of WireGuard's 5 s).
pub const UNANSWERED_AFTER: Duration = Duration::from_secs(15);

/// A change in whether a peer answers handshakes, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    /// Handshakes offered to the peer have gone unanswered for `UNANSWERED_AFTER`.
    Unanswered { subnet: IpNet, endpoint: SocketAddr },
    /// A peer reported as unanswered completed a handshake.
    Answering { subnet: IpNet, endpoint: SocketAddr },
}

/// One peer, kept across lease updates for as long as its key stays.
pub struct Peer {
    pub key: WgKey,
    /// Our session index for it (the upper 24 bits of the receiver index in its messages to us).
    index: u32,
    state: Mutex<PeerState>,
    handshakes: AtomicU64,
}

impl Peer {
    fn lock(&self) -> MutexGuard<'_, PeerState> {
        // A panic while holding the lock leaves the session as consistent as boringtun left it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The current peers, by the three ways packets find them.
#[derive(Default)]
struct PeerSet {
    by_key: HashMap<WgKey, Arc<Peer>>,
    by_index: HashMap<u32, Arc<Peer>>,
    by_ip: HashMap<IpAddr, Arc<Peer>>,
}

/// What `/status` shows of one peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub public_key: WgKey,
    pub subnet: IpNet,
    pub endpoint: SocketAddr,
    /// Seconds since the current session's handshake (none: no session).
    pub last_handshake_secs: Option<f64>,
    /// Plaintext bytes sent to and received from the peer (over all its sessions here).
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    /// Handshakes completed with the peer.
    pub handshakes: u64,
}

/// What a change of the peer leases did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub added: Vec<WgKey>,
    pub removed: Vec<WgKey>,
    /// Leases ignored because another lease already has their key (a copied key file).
    pub duplicate_keys: Vec<(IpNet, WgKey)>,
}

/// This host's WireGuard identity and peers.
pub struct Node {
    /// The UDP port this host listens on (where cookie replies say to come back to).
    port: u16,
    secret: StaticSecret,
    public: PublicKey,
    psk: Option<[u8; 32]>,
    keepalive: Option<u16>,
    rate_limiter: Arc<RateLimiter>,
    peers: ArcSwap<PeerSet>,
    /// Serialises updates of the peer set.
    sync_lock: Mutex<()>,
    next_index: AtomicU32,
    handshakes: AtomicU64,
    /// Which version of the peer leases the peers were last made from (an opaque tag the caller
    /// gives `sync`), so a worker that finds a peer missing can tell whether a sync is due.
    synced: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("public_key", &self.public_key())
            .finish_non_exhaustive()
    }
}

/// How a failed protocol step is counted.
fn reason(e: &WireGuardError) -> DropReason {
    match e {
        WireGuardError::InvalidAeadTag => DropReason::WgDecryptFailed,
        WireGuardError::DuplicateCounter | WireGuardError::InvalidCounter => DropReason::WgReplay,
        WireGuardError::NoCurrentSession | WireGuardError::WrongIndex => DropReason::WgNoSession,
        WireGuardError::InvalidPacket
        | WireGuardError::IncorrectPacketLength
        | WireGuardError::WrongPacketType => DropReason::Truncated,
        _ => DropReason::WgBadHandshake,
    }
}

impl Node {
    /// A node with private key `private` listening on `port`; `psk` and `keepalive` (seconds) apply
    /// to every peer.
    pub fn new(private: [u8; 32], port: u16, psk: Option<[u8; 32]>, keepalive: u16) -> Node {
        let secret = StaticSecret::from(private);
        let public = PublicKey::from(&secret);
        Node {
            port,
            rate_limiter: Arc::new(RateLimiter::new(&public, HANDSHAKES_PER_SECOND)),
            secret,
            public,
            psk,
            keepalive: (keepalive > 0).then_some(keepalive),
            peers: ArcSwap::from_pointee(PeerSet::default()),
            sync_lock: Mutex::new(()),
            next_index: AtomicU32::new(rand::random::<u32>() % MAX_INDEX),
            handshakes: AtomicU64::new(0),
            synced: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Whether the peers were made from a version of the leases other than `tag`.
    pub fn stale(&self, tag: usize) -> bool {
        self.synced.load(Ordering::Acquire) != tag
    }

    /// As `sync`, recording `tag` as the version of the leases the peers now follow.
    pub fn sync_tagged(
        &self,
        tag: usize,
        leases: impl IntoIterator<Item = PeerLease>,
    ) -> SyncReport {
        let r = self.sync(leases);
        self.synced.store(tag, Ordering::Release);
        r
    }

    pub fn public_key(&self) -> WgKey {
        WgKey(self.public.to_bytes())
    }

    /// Handshakes completed with any peer.
    pub fn handshakes(&self) -> u64 {
        self.handshakes.load(Ordering::Relaxed)
    }

    /// Makes the peers those of `leases`: a peer whose key stays keeps its session (its subnet and
    /// endpoint follow the lease); a new key gets a new session; a key no lease has any more is dropped.
    pub fn sync(&self, leases: impl IntoIterator<Item = PeerLease>) -> SyncReport {
        let _guard = self.sync_lock.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.peers.load_full();
        let mut new = PeerSet::default();
        let mut report = SyncReport::default();
        let own = self.public_key();
        for l in leases {
            if l.key == own {
                continue;
            }
            if new.by_key.contains_key(&l.key) {
                report.duplicate_keys.push((l.subnet, l.key));
                continue;
            }
            let endpoint = SocketAddr::new(l.public_ip, l.port);
            let peer = match old.by_key.get(&l.key) {
                Some(p) => {
                    let mut s = p.lock();
                    s.subnet = l.subnet;
                    s.endpoint = endpoint;
                    drop(s);
                    p.clone()
                }
                None => {
                    report.added.push(l.key);
                    self.new_peer(l.key, l.subnet, endpoint)
                }
            };
            new.by_index.insert(peer.index, peer.clone());
            new.by_ip.entry(l.public_ip).or_insert_with(|| peer.clone());
            new.by_key.insert(l.key, peer);
        }
        report.removed = old
            .by_key
            .keys()
            .filter(|k| !new.by_key.contains_key(k))
            .copied()
            .collect();
        self.peers.store(Arc::new(new));
        report
    }

    fn new_peer(&self, key: WgKey, subnet: IpNet, endpoint: SocketAddr) -> Arc<Peer> {
        let index = self.next_index.fetch_add(1, Ordering::Relaxed) % MAX_INDEX;
        let tunn = Tunn::new(
            self.secret.clone(),
            PublicKey::from(key.0),
            self.psk,
            self.keepalive,
            index,
            Some(self.rate_limiter.clone()),
        );
        Arc::new(Peer {
            key,
            index,
            state: Mutex::new(PeerState {
                tunn,
                subnet,
                endpoint,
                waiting_since: None,
                reported_down: false,
                seen_handshakes: 0,
            }),
            handshakes: AtomicU64::new(0),
        })
    }

    /// Seals the packets of `plain` (a train: packets of `stride` bytes, the last may be shorter) for the
    /// peer at `public_ip` into `out`, each `stride + DATA_OVERHEAD` bytes apart. Returns the sealed train's
    /// length (0 while there is no session yet: the packets wait in the session's queue and a handshake
    /// initiation, if one is due, goes to `send`). `out` must hold the sealed train plus
    /// `HANDSHAKE_INIT_LEN` bytes.
    pub fn seal(
        &self,
        public_ip: IpAddr,
        plain: &[u8],
        stride: usize,
        out: &mut [u8],
        mut send: impl FnMut(SocketAddr, &[u8]),
    ) -> Result<usize, DropReason> {
        let peers = self.peers.load();
        let peer = peers
            .by_ip
            .get(&public_ip)
            .ok_or(DropReason::UnsupportedPeer)?;
        let mut s = peer.lock();
        let endpoint = s.endpoint;
        let mut len = 0;
        let mut other = [0u8; HANDSHAKE_INIT_LEN];
        let mut other_len = 0;
        for packet in plain.chunks(stride.max(1)) {
            let room = out.len() - len;
            if room < (packet.len() + DATA_OVERHEAD).max(HANDSHAKE_INIT_LEN) {
                // boringtun panics on a short buffer; the caller sized it, so this is a bug there.
                return Err(DropReason::TooBig);
            }
            match s.tunn.encapsulate(packet, &mut out[len..]) {
                TunnResult::WriteToNetwork(m) if m.first() == Some(&4) => len += m.len(),
                TunnResult::WriteToNetwork(m) => {
                    // A handshake initiation: the packet is queued until the session is up.
                    other_len = m.len().min(other.len());
                    other[..other_len].copy_from_slice(&m[..other_len]);
                }
                TunnResult::Done => {}
                TunnResult::Err(e) => return Err(reason(&e)),
                TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => {}
            }
        }
        if other_len > 0 && s.waiting_since.is_none() {
            s.waiting_since = Some(Instant::now());
        }
        drop(s);
        if other_len > 0 {
            send(endpoint, &other[..other_len]);
        }
        Ok(len)
    }

    /// Opens one datagram from underlay address `src`. Data for us goes to `deliver` with the sending
    /// peer's subnet (cryptokey routing: a packet whose source lies outside it is dropped here);
    /// handshake answers, cookies and packets that waited for a session go to `send`.
    pub fn open(
        &self,
        src: IpAddr,
        datagram: &[u8],
        out: &mut [u8],
        mut send: impl FnMut(SocketAddr, &[u8]),
        deliver: impl FnOnce(&mut [u8]) -> Result<(), DropReason>,
    ) -> Result<(), DropReason> {
        let packet = Tunn::parse_incoming_packet(datagram).map_err(|e| reason(&e))?;
        let peers = self.peers.load();
        let (peer, handshake) = match &packet {
            Packet::HandshakeInit(init) => {
                // The MACs first (cheap, and under load the cookie), then the Diffie-Hellman to learn
                // which key sent it.
                match self.rate_limiter.verify_packet(Some(src), datagram, out) {
                    Ok(_) => {}
                    Err(TunnResult::WriteToNetwork(cookie)) => {
                        send(SocketAddr::new(src, self.port), cookie);
                        return Ok(());
                    }
                    Err(TunnResult::Err(e)) => return Err(reason(&e)),
                    Err(_) => return Err(DropReason::WgBadHandshake),
                }
                let half = parse_handshake_anon(&self.secret, &self.public, init)
                    .map_err(|_| DropReason::WgBadHandshake)?;
                let peer = peers
                    .by_key
                    .get(&WgKey(half.peer_static_public))
                    .ok_or(DropReason::WgUnknownKey)?;
                (peer, true)
            }
            Packet::HandshakeResponse(r) => (by_index(&peers, r.receiver_idx)?, true),
            Packet::PacketCookieReply(c) => (by_index(&peers, c.receiver_idx)?, false),
            Packet::PacketData(d) => match by_index(&peers, d.receiver_idx) {
                Ok(p) => (p, false),
                Err(e) => {
                    // Data for a session we do not have, from a peer's address: the peer kept a session
                    // this host lost (it restarted). Offer a new one now rather than after the peer's
                    // own timeout (15 s); at most one handshake is in flight per peer.
                    if let Some(peer) = peers.by_ip.get(&src) {
                        let mut s = peer.lock();
                        let endpoint = s.endpoint;
                        if let TunnResult::WriteToNetwork(m) =
                            s.tunn.format_handshake_initiation(out, false)
                        {
                            send(endpoint, m);
                        }
                    }
                    return Err(e);
                }
            },
        };
        let mut s = peer.lock();
        let (subnet, endpoint) = (s.subnet, s.endpoint);
        let (p, from) = match s.tunn.decapsulate(Some(src), datagram, out) {
            TunnResult::WriteToTunnelV4(p, from) => (p, IpAddr::V4(from)),
            TunnResult::WriteToTunnelV6(p, from) => (p, IpAddr::V6(from)),
            TunnResult::Done => return Ok(()),
            TunnResult::Err(e) => return Err(reason(&e)),
            TunnResult::WriteToNetwork(m) => {
                // The answer to a handshake (or a keepalive confirming one) goes back where it came
                // from; then whatever waited for the session goes to the peer.
                send(SocketAddr::new(src, endpoint.port()), m);
                if handshake {
                    peer.handshakes.fetch_add(1, Ordering::Relaxed);
                    self.handshakes.fetch_add(1, Ordering::Relaxed);
                }
                while let TunnResult::WriteToNetwork(m) = s.tunn.decapsulate(None, &[], out) {
                    send(endpoint, m);
                }
                return Ok(());
            }
        };
        drop(s);
        // Cryptokey routing: the source must lie in the sending peer's subnet (of this node's family).
        if !subnet.contains(&from) {
            return Err(DropReason::SpoofedSource);
        }
        deliver(p)
    }

    /// Runs every peer's timers (handshake retries, rekeying, keepalives); what is due goes to `send`.
    /// Call about every 250 ms. `reset_rate` once a second resets the handshake rate limiter. Returns the
    /// peers that stopped or started answering handshakes since the last call.
    pub fn tick(
        &self,
        reset_rate: bool,
        buf: &mut [u8],
        mut send: impl FnMut(SocketAddr, &[u8]),
    ) -> Vec<PeerEvent> {
        if reset_rate {
            self.rate_limiter.reset_count();
        }
        let mut events = Vec::new();
        let peers = self.peers.load();
        for peer in peers.by_key.values() {
            let mut s = peer.lock();
            let endpoint = s.endpoint;
            if let TunnResult::WriteToNetwork(m) = s.tunn.update_timers(buf) {
                if m.first() == Some(&1) && s.waiting_since.is_none() {
                    s.waiting_since = Some(Instant::now());
                }
                send(endpoint, m);
            }
            let done = peer.handshakes.load(Ordering::Relaxed);
            if done != s.seen_handshakes {
                s.seen_handshakes = done;
                s.waiting_since = None;
                if std::mem::take(&mut s.reported_down) {
                    events.push(PeerEvent::Answering {
                        subnet: s.subnet,
                        endpoint,
                    });
                }
            }
            if !s.reported_down
                && s.waiting_since
                    .is_some_and(|t| t.elapsed() >= UNANSWERED_AFTER)
            {
                s.reported_down = true;
                events.push(PeerEvent::Unanswered {
                    subnet: s.subnet,
                    endpoint,
                });
            }
        }
        events
    }

    /// Every peer's session, for `/status`, sorted by subnet.
    pub fn status(&self) -> Vec<PeerStatus> {
        let peers = self.peers.load();
        let mut v: Vec<PeerStatus> = peers
            .by_key
            .values()
            .map(|p| {
                let s = p.lock();
                let (since, tx, rx, _, _) = s.tunn.stats();
                PeerStatus {
                    public_key: p.key,
                    subnet: s.subnet,
                    endpoint: s.endpoint,
                    last_handshake_secs: since.map(|d: Duration| d.as_secs_f64()),
                    tx_bytes: tx as u64,
                    rx_bytes: rx as u64,
                    handshakes: p.handshakes.load(Ordering::Relaxed),
                }
            })
            .collect();
        v.sort_by_key(|p| p.subnet);
        v
    }
}

/// Two nodes with a session up between them, in memory: `a` at 192.0.2.1 with 10.5.1.0/24 and `b` at
/// 192.0.2.2 with 10.5.2.0/24, for benchmarks and fuzz targets.
#[doc(hidden)]
pub fn connected_pair() -> (Node, Node) {
    let (a_ip, b_ip) = (Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2));
    let a = Node::new(crate::wireguard::keyfile::generate(), 51820, None, 0);
    let b = Node::new(crate::wireguard::keyfile::generate(), 51820, None, 0);
    let lease = |n: &Node, subnet: &str, ip: Ipv4Addr| PeerLease {
        subnet: subnet.parse().expect("a literal subnet"),
        public_ip: ip.into(),
        key: n.public_key(),
        port: 51820,
    };
    a.sync([lease(&b, "10.5.2.0/24", b_ip)]);
    b.sync([lease(&a, "10.5.1.0/24", a_ip)]);
    connect_in_memory(&a, a_ip, &b, b_ip);
    (a, b)
}

/// Runs a handshake between two nodes that know each other, in memory (`a` at `a_ip` initiates; `b` at
/// `b_ip`): benchmarks and fuzz targets need a session up without sockets.
#[doc(hidden)]
pub fn connect_in_memory(a: &Node, a_ip: Ipv4Addr, b: &Node, b_ip: Ipv4Addr) {
    // An empty IPv4 packet to seal: it waits for the session, then goes through (and is dropped here).
    let mut probe = [0u8; 20];
    probe[0] = 0x45;
    probe[3] = 20;
    let mut wire: std::collections::VecDeque<(IpAddr, Vec<u8>)> = Default::default();
    let mut out = vec![0u8; 4096];
    let _ = a.seal(b_ip.into(), &probe, probe.len(), &mut out, |ep, m| {
        wire.push_back((ep.ip(), m.to_vec()))
    });
    while let Some((to, m)) = wire.pop_front() {
        let (node, from) = if to == b_ip { (b, a_ip) } else { (a, b_ip) };
        let mut next = Vec::new();
        let _ = node.open(
            from.into(),
            &m,
            &mut out,
            |ep, m| next.push((ep.ip(), m.to_vec())),
            |_| Ok(()),
        );
        wire.extend(next);
    }
}

fn by_index(peers: &PeerSet, receiver_idx: u32) -> Result<&Arc<Peer>, DropReason> {
    peers
        .by_index
        .get(&(receiver_idx >> 8))
        .ok_or(DropReason::WgNoSession)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipv4::tests::udp_packet;

    /// Two nodes that know each other, and the datagrams between them (sent by the closures).
    struct Pair {
        a: Node,
        b: Node,
    }

    const A_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const B_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

    fn lease(n: &Node, subnet: &str, ip: Ipv4Addr) -> PeerLease {
        PeerLease {
            subnet: subnet.parse().unwrap(),
            public_ip: ip.into(),
            key: n.public_key(),
            port: 51820,
        }
    }

    fn pair(psk: Option<[u8; 32]>) -> Pair {
        let a = Node::new(crate::wireguard::keyfile::generate(), 51820, psk, 0);
        let b = Node::new(crate::wireguard::keyfile::generate(), 51820, psk, 0);
        a.sync([lease(&b, "10.5.2.0/24", B_IP)]);
        b.sync([lease(&a, "10.5.1.0/24", A_IP)]);
        Pair { a, b }
    }

    /// Runs datagrams between the two nodes until none are left; returns what each delivered.
    fn exchange(p: &Pair, wire: Vec<(IpAddr, Vec<u8>)>) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let mut wire = std::collections::VecDeque::from(wire);
        let (mut to_a, mut to_b) = (Vec::new(), Vec::new());
        let mut out = vec![0u8; 65536];
        let mut rounds = 0;
        while let Some((to, d)) = wire.pop_front() {
            rounds += 1;
            assert!(rounds < 100, "the nodes keep talking");
            let (node, from, delivered) = if to == A_IP {
                (&p.a, B_IP, &mut to_a)
            } else {
                (&p.b, A_IP, &mut to_b)
            };
            let mut sent = Vec::new();
            node.open(
                from.into(),
                &d,
                &mut out,
                |ep, m| sent.push((ep.ip(), m.to_vec())),
                |pkt| {
                    delivered.push(pkt.to_vec());
                    Ok(())
                },
            )
            .unwrap();
            wire.extend(sent);
        }
        (to_a, to_b)
    }

    fn seal(
        n: &Node,
        to: Ipv4Addr,
        plain: &[u8],
        stride: usize,
    ) -> (Vec<u8>, Vec<(IpAddr, Vec<u8>)>) {
        let mut out = vec![0u8; plain.len() * 2 + HANDSHAKE_INIT_LEN + 64 * DATA_OVERHEAD];
        let mut sent = Vec::new();
        let len = n
            .seal(to.into(), plain, stride, &mut out, |ep, m| {
                sent.push((ep.ip(), m.to_vec()))
            })
            .unwrap();
        out.truncate(len);
        (out, sent)
    }

    #[test]
    fn a_train_waits_for_the_handshake_then_arrives_whole_and_in_order() {
        for psk in [None, Some([3; 32])] {
            let p = pair(psk);
            let pkts: Vec<Vec<u8>> = (0..3)
                .map(|i| udp_packet([10, 5, 1, 9], [10, 5, 2, 7], 1, 2, &[i; 100]))
                .collect();
            let train = pkts.concat();
            let (sealed, hs) = seal(&p.a, B_IP, &train, pkts[0].len());
            assert!(sealed.is_empty(), "no session yet");
            assert_eq!(hs.len(), 1);
            assert_eq!(hs[0].1.len(), HANDSHAKE_INIT_LEN);
            // Handshake, response, then the queued packets flow to b.
            let (to_a, to_b) = exchange(&p, hs);
            assert!(to_a.is_empty());
            assert_eq!(to_b, pkts);
            assert_eq!((p.a.handshakes(), p.b.handshakes()), (1, 1));
            // With the session up, a train is sealed at once: one datagram per packet, stride + 32.
            let (sealed, hs) = seal(&p.a, B_IP, &train, pkts[0].len());
            assert!(hs.is_empty());
            let stride = pkts[0].len() + DATA_OVERHEAD;
            assert_eq!(sealed.len(), 3 * stride);
            let wire = sealed
                .chunks(stride)
                .map(|d| (B_IP.into(), d.to_vec()))
                .collect();
            assert_eq!(exchange(&p, wire).1, pkts);
            let st = p.b.status();
            assert_eq!(st.len(), 1);
            assert_eq!(st[0].public_key, p.a.public_key());
            assert!(st[0].last_handshake_secs.is_some());
            assert!(st[0].rx_bytes >= 6 * pkts[0].len() as u64);
        }
    }

    /// Brings a pair's session up; returns one sealed datagram from a to b with its plaintext.
    fn up(p: &Pair) -> (Vec<u8>, Vec<u8>) {
        let pkt = udp_packet([10, 5, 1, 9], [10, 5, 2, 7], 1, 2, b"secret payload");
        let (_, hs) = seal(&p.a, B_IP, &pkt, pkt.len());
        exchange(p, hs);
        let (sealed, _) = seal(&p.a, B_IP, &pkt, pkt.len());
        (sealed, pkt)
    }

    fn open_b(p: &Pair, d: &[u8]) -> Result<Vec<u8>, DropReason> {
        let mut out = vec![0u8; 65536];
        let mut got = Vec::new();
        p.b.open(
            A_IP.into(),
            d,
            &mut out,
            |_, _| {},
            |x| {
                got = x.to_vec();
                Ok(())
            },
        )?;
        Ok(got)
    }

    #[test]
    fn tampered_replayed_and_unknown_datagrams_are_dropped_by_reason() {
        let p = pair(None);
        let (sealed, pkt) = up(&p);
        let mut tampered = sealed.clone();
        let last = tampered.len() - 20;
        tampered[last] ^= 1;
        assert_eq!(open_b(&p, &tampered), Err(DropReason::WgDecryptFailed));
        assert_eq!(open_b(&p, &sealed).unwrap(), pkt);
        assert_eq!(open_b(&p, &sealed), Err(DropReason::WgReplay));
        // An index no session has.
        let mut stray = sealed.clone();
        stray[4..8].copy_from_slice(
            &0x00ab_cd00u32
                .wrapping_add(p.a.next_index.load(Ordering::Relaxed) << 8)
                .to_le_bytes(),
        );
        assert!(matches!(open_b(&p, &stray), Err(DropReason::WgNoSession)));
        // A handshake from a key no lease has.
        let stranger = Node::new(crate::wireguard::keyfile::generate(), 51820, None, 0);
        stranger.sync([lease(&p.b, "10.5.2.0/24", B_IP)]);
        let (_, hs) = seal(&stranger, B_IP, &pkt, pkt.len());
        assert_eq!(open_b(&p, &hs[0].1), Err(DropReason::WgUnknownKey));
        // Garbage never panics.
        for n in [0, 1, 3, 4, 16, 32, 148, 200] {
            let junk = vec![4u8; n];
            assert!(open_b(&p, &junk).is_err());
        }
    }

    #[test]
    fn a_peer_that_stops_answering_is_reported_once_and_again_when_it_answers() {
        let p = pair(None);
        let pkt = udp_packet([10, 5, 1, 9], [10, 5, 2, 7], 1, 2, b"x");
        let (_, hs) = seal(&p.a, B_IP, &pkt, pkt.len());
        assert_eq!(hs.len(), 1);
        let mut buf = vec![0u8; 2048];
        assert!(p.a.tick(false, &mut buf, |_, _| {}).is_empty());
        // Pretend the offer is 15 s old.
        let peer = p.a.peers.load().by_ip[&IpAddr::V4(B_IP)].clone();
        peer.lock().waiting_since = Some(Instant::now() - UNANSWERED_AFTER);
        let ev = p.a.tick(false, &mut buf, |_, _| {});
        assert!(
            matches!(ev.as_slice(), [PeerEvent::Unanswered { .. }]),
            "{ev:?}"
        );
        assert!(p.a.tick(false, &mut buf, |_, _| {}).is_empty(), "said once");
        // b answers this time.
        exchange(&p, hs);
        let ev = p.a.tick(false, &mut buf, |_, _| {});
        assert!(
            matches!(ev.as_slice(), [PeerEvent::Answering { .. }]),
            "{ev:?}"
        );
        assert!(p.a.tick(false, &mut buf, |_, _| {}).is_empty());
    }

    #[test]
    fn nodes_connected_in_memory_have_a_session() {
        let p = pair(None);
        connect_in_memory(&p.a, A_IP, &p.b, B_IP);
        let pkt = udp_packet([10, 5, 1, 9], [10, 5, 2, 7], 1, 2, b"x");
        let (sealed, hs) = seal(&p.a, B_IP, &pkt, pkt.len());
        assert!(hs.is_empty() && sealed.len() == pkt.len() + DATA_OVERHEAD);
        assert_eq!(open_b(&p, &sealed).unwrap(), pkt);
    }

    #[test]
    fn a_peer_may_only_send_from_its_own_subnet() {
        let p = pair(None);
        up(&p);
        // a claims a source in 10.5.9.0/24, which is not its lease.
        let spoofed = udp_packet([10, 5, 9, 9], [10, 5, 2, 7], 1, 2, b"x");
        let (sealed, _) = seal(&p.a, B_IP, &spoofed, spoofed.len());
        assert_eq!(open_b(&p, &sealed), Err(DropReason::SpoofedSource));
    }

    #[test]
    fn a_key_that_stays_keeps_its_session_and_a_new_key_starts_over() {
        let p = pair(None);
        up(&p);
        // The same key at a new address: same session.
        let r =
            p.a.sync([lease(&p.b, "10.5.2.0/24", Ipv4Addr::new(192, 0, 2, 22))]);
        assert!(r.added.is_empty() && r.removed.is_empty());
        let pkt = udp_packet([10, 5, 1, 9], [10, 5, 2, 7], 1, 2, b"x");
        let (sealed, hs) = seal(&p.a, Ipv4Addr::new(192, 0, 2, 22), &pkt, pkt.len());
        assert!(!sealed.is_empty() && hs.is_empty());
        // A new key for that subnet: a new peer, which needs a handshake first.
        let c = Node::new(crate::wireguard::keyfile::generate(), 51820, None, 0);
        let r = p.a.sync([lease(&c, "10.5.2.0/24", B_IP)]);
        assert_eq!((r.added.len(), r.removed.len()), (1, 1));
        let (sealed, hs) = seal(&p.a, B_IP, &pkt, pkt.len());
        assert!(sealed.is_empty());
        assert_eq!(hs.len(), 1);
        // Two leases with one key: the second is reported, not used.
        let r = p.a.sync([
            lease(&c, "10.5.2.0/24", B_IP),
            lease(&c, "10.5.3.0/24", A_IP),
        ]);
        assert_eq!(r.duplicate_keys.len(), 1);
    }
}
