//! The wireguard backend with a real etcd in network namespaces. The reference "flannel wireguard host" is
//! wireguard-go set up as flanneld's wireguard backend does (tests/common/wggo.rs): the fixture is proven
//! first (two such hosts), then weft hosts and wireguard-go hosts reach each other both ways; hostile
//! WireGuard messages come from a peer the test plays itself (boringtun's protocol in the test); keys persist
//! across restarts, etcd outages change nothing, status and metrics report sessions, refusals are clear.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use common::netns::{exec, in_netns, Bed};
use common::packets::ipv4_udp;
use common::wait_for;
use common::wggo::{
    assert_wggo_gone, capture_contains, link_mtu, transfer_pattern, wireguard_leases, Capture,
    WG_PORT,
};

const T: Duration = Duration::from_secs(20);
const WG: &str = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard"}}"#;
/// Sent in clear by the containers; must never show on the underlay inside the tunnel.
const PATTERN: &[u8] = b"WEFT-CLEARTEXT-PATTERN-7f3a9c1e";

/// Two wireguard-go flannel hosts (10.5.1.0/24 and 10.5.2.0/24), peered from each other's leases, their
/// containers pinging each other both ways.
fn wggo_pair() -> Bed {
    let mut bed = Bed::new(2, WG);
    let c0 = bed.make_wggo_host(0, Ipv4Addr::new(10, 5, 1, 0));
    let c1 = bed.make_wggo_host(1, Ipv4Addr::new(10, 5, 2, 0));
    for i in 0..2 {
        let added = bed.wggo_sync_peers(i);
        assert_eq!(added.len(), 1, "host {i} peers with the other host only");
        assert_eq!(added[0].public_key, bed.wggo(1 - i).public_key);
    }
    bed.wait_ping(0, c1, T);
    bed.wait_ping(1, c0, T);
    bed
}

#[test]
fn wireguard_go_hosts_as_flannel_sets_them_up() {
    let bed = wggo_pair();
    // The leases are flannel's, held under an etcd lease (TTL).
    let leases = wireguard_leases(&bed.etcd);
    assert_eq!(leases.len(), 2, "{leases:?}");
    for i in 0..2 {
        let w = bed.wggo(i);
        assert!(leases.contains(&w.lease), "{:?} in {leases:?}", w.lease);
        let raw = bed.etcd.get(&w.lease.key()).expect("lease in etcd");
        let v: serde_json::Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(v["BackendType"], "wireguard");
        assert_eq!(v["BackendData"]["PublicKey"], w.public_key.as_str());
        assert_eq!(v["BackendData"]["Port"], WG_PORT);
        let out = bed.etcd.etcdctl(&["get", &w.lease.key(), "-w", "json"]);
        let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(
            meta["kvs"][0]["lease"].as_i64().unwrap_or(0) != 0,
            "the lease has a TTL: {meta}"
        );
        // The device: MTU underlay - 80, the subnet's first address /32, the Network routed to it.
        let h = &bed.hosts[i].ns.name;
        assert_eq!(link_mtu(h, &w.dev), link_mtu(h, "eth0") - 80);
        assert_eq!(w.listen_port(), WG_PORT);
        let addrs = String::from_utf8(exec(h, "ip", &["-4", "addr", "show", "dev", &w.dev]).stdout)
            .unwrap();
        let base = w.lease.subnet.split('/').next().unwrap();
        assert!(addrs.contains(&format!("inet {base}/32")), "{addrs}");
        let routes =
            String::from_utf8(exec(h, "ip", &["route", "show", "dev", &w.dev]).stdout).unwrap();
        assert!(routes.contains("10.5.0.0/16"), "{routes}");
        // The peer, as `wg show dump` has it, after the pings' handshake.
        let other = bed.wggo(1 - i);
        let p = w.wait_handshake(&other.public_key, T);
        assert_eq!(
            p.endpoint.as_deref(),
            Some(&*format!("{}:{WG_PORT}", other.lease.public_ip))
        );
        assert_eq!(p.allowed_ips, vec![other.lease.subnet.clone()]);
        assert_eq!(p.persistent_keepalive, None);
        assert!(p.rx_bytes > 0 && p.tx_bytes > 0, "{p:?}");
    }
}

#[test]
fn wireguard_go_hosts_transfer_byte_identical_both_ways() {
    let bed = wggo_pair();
    let before: Vec<_> = (0..2)
        .map(|i| bed.wggo(i).peer(&bed.wggo(1 - i).public_key).unwrap())
        .collect();
    for (from, to) in [(0, 1), (1, 0)] {
        let (sent, got) = bed.transfer(from, to, 20 << 20);
        assert_eq!(
            got.1,
            20 << 20,
            "all bytes arrived from host {from} to host {to}"
        );
        assert_eq!(sent, got, "byte-identical from host {from} to host {to}");
    }
    // The data went through wireguard-go: each side sent and received over 20 MB to its peer.
    for (i, b) in before.iter().enumerate() {
        let p = bed.wggo(i).peer(&bed.wggo(1 - i).public_key).unwrap();
        assert!(
            p.tx_bytes - b.tx_bytes > 20 << 20 && p.rx_bytes - b.rx_bytes > 20 << 20,
            "host {i}: {b:?} -> {p:?}"
        );
    }
}

#[test]
fn wireguard_go_underlay_carries_ciphertext_only() {
    let bed = wggo_pair();
    let ul = bed.underlay.name.clone();
    let (c0, c1) = (bed.container_ns(0), bed.container_ns(1));
    let c1ip = bed.container_ip(1);
    // The control: the capture finds the pattern when it crosses the underlay in clear.
    let (h0, h1) = (bed.hosts[0].ip, bed.hosts[1].ip);
    let (found, ()) = capture_contains(&ul, "br0", PATTERN, || {
        Bed::send_udp(
            &bed.hosts[0].ns.name,
            h0,
            SocketAddrV4::new(h1, 9),
            PATTERN.repeat(8),
        );
    });
    assert!(found, "the capture on br0 sees a clear UDP payload");
    // And the pattern does cross: inside the tunnel (on host 0's device) it is there in clear.
    let (found, _) = capture_contains(&bed.hosts[0].ns.name, &bed.wggo(0).dev, PATTERN, || {
        transfer_pattern(&c0, &c1, c1ip, 5202, PATTERN, 1 << 20)
    });
    assert!(
        found,
        "the pattern crosses host 0's wireguard device in clear"
    );
    // On the underlay, both directions: only WireGuard's UDP, none of it the pattern.
    let c0ip = bed.container_ip(0);
    for (from, to, to_ip) in [(&c0, &c1, c1ip), (&c1, &c0, c0ip)] {
        let cap = Capture::start(&ul, "br0", "");
        transfer_pattern(from, to, to_ip, 5203, PATTERN, 4 << 20);
        let seen = cap.finish();
        let big = seen.packets.iter().filter(|p| p.len() > 1000).count();
        assert!(
            big > 1000,
            "the capture saw the transfer ({} packets, {big} over 1000 bytes, {:?} dropped)",
            seen.packets.len(),
            seen.dropped
        );
        assert_eq!(
            seen.count_containing(PATTERN),
            0,
            "no clear pattern on the underlay ({} packets)",
            seen.packets.len()
        );
        // Everything of size is WireGuard on port 51820: Ethernet + IPv4 (20) + UDP with port 51820.
        let wg_port = WG_PORT.to_be_bytes();
        let not_wg = seen
            .packets
            .iter()
            .filter(|p| p.len() > 1000)
            .filter(|p| !(p[23] == 17 && (p[34..36] == wg_port || p[36..38] == wg_port)))
            .count();
        assert_eq!(
            not_wg, 0,
            "large underlay packets that are not WireGuard UDP"
        );
    }
}

#[test]
fn wireguard_go_peer_removed_and_added_again() {
    let bed = wggo_pair();
    let c1 = bed.container_ip(1);
    let key1 = bed.wggo(1).public_key.clone();
    bed.wggo(0).remove_peer(&key1);
    assert!(bed.wggo(0).peer(&key1).is_none(), "peer removed");
    assert!(!bed.ping_once(0, c1), "no peer, no path");
    let l = bed.wggo(1).lease.clone();
    bed.wggo(0).add_peer(
        &l.public_key,
        SocketAddrV4::new(l.public_ip, l.port),
        &l.subnet,
        Some(5),
    );
    assert_eq!(
        bed.wggo(0).peer(&key1).unwrap().persistent_keepalive,
        Some(5)
    );
    bed.wait_ping(0, c1, T);
}

#[test]
fn wireguard_go_host_leaves_nothing_behind() {
    let mut bed = Bed::new(2, WG);
    bed.make_wggo_host(0, Ipv4Addr::new(10, 5, 1, 0));
    bed.make_wggo_host(1, Ipv4Addr::new(10, 5, 2, 0));
    let gone = |bed: &mut Bed, i: usize, hard: bool| {
        let w = bed.hosts[i].wggo.take().expect("wireguard-go host");
        let (ns, dev, pid) = (w.ns.clone(), w.dev.clone(), w.pid().expect("running"));
        assert!(w.socket().exists());
        if hard {
            // As if wireguard-go had crashed: it removes neither its socket nor anything else.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        drop(w);
        assert_wggo_gone(&ns, &dev);
        wait_for("wireguard-go to be reaped", T, || {
            (!std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(())
        });
    };
    gone(&mut bed, 0, false);
    gone(&mut bed, 1, true);
}

fn b64(k: &[u8; 32]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(k)
}

fn decode(s: &str) -> [u8; 32] {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .unwrap()
        .try_into()
        .unwrap()
}

/// Host `i`'s WireGuard public key as its daemon reports it.
fn public_key(bed: &Bed, i: usize) -> String {
    let st = bed.weft(i).status().expect("status");
    st["wireguard"]["public_key"]
        .as_str()
        .expect("a wireguard section in /status")
        .to_string()
}

/// Writes a wireguard lease for `subnet` (a reservation) at host `i`'s address with a new key the test
/// holds, waits until host `weft`'s daemon sees it, and returns (private, public) key.
fn test_peer_lease(bed: &Bed, weft: usize, i: usize, subnet: &str) -> ([u8; 32], [u8; 32]) {
    let private = weft::wireguard::keyfile::generate();
    let public = PublicKey::from(&StaticSecret::from(private)).to_bytes();
    let lease = format!(
        r#"{{"PublicIP":"{}","BackendType":"wireguard","BackendData":{{"PublicKey":"{}","Port":51820}}}}"#,
        bed.hosts[i].ip,
        b64(&public)
    );
    let key = format!("/coreos.com/network/subnets/{}", subnet.replace('/', "-"));
    let out = bed.etcd.etcdctl(&["put", &key, &lease]);
    assert!(out.status.success(), "{out:?}");
    bed.weft(weft).wait_peers(&[subnet.to_string()], T);
    (private, public)
}

/// A WireGuard peer the test plays from host namespace `ns` at `ip`:51820, with boringtun's protocol.
struct TestPeer {
    sock: UdpSocket,
    tunn: Tunn,
    weft: SocketAddrV4,
}

impl TestPeer {
    /// Binds in the current thread's namespace (call inside `in_netns`).
    fn new(ip: Ipv4Addr, private: [u8; 32], weft_key: [u8; 32], weft: SocketAddrV4) -> TestPeer {
        let sock = UdpSocket::bind((ip, 51820)).expect("bind 51820");
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let tunn = Tunn::new(
            StaticSecret::from(private),
            PublicKey::from(weft_key),
            None,
            None,
            7,
            None,
        );
        TestPeer { sock, tunn, weft }
    }

    /// Runs the handshake; true if weft answered it.
    fn handshake(&mut self) -> bool {
        let mut buf = vec![0u8; 2048];
        let init = match self.tunn.format_handshake_initiation(&mut buf, false) {
            TunnResult::WriteToNetwork(p) => p.to_vec(),
            other => panic!("no handshake initiation: {other:?}"),
        };
        self.sock.send_to(&init, self.weft).unwrap();
        let mut resp = vec![0u8; 2048];
        let Ok((n, _)) = self.sock.recv_from(&mut resp) else {
            return false;
        };
        match self
            .tunn
            .decapsulate(Some((*self.weft.ip()).into()), &resp[..n], &mut buf)
        {
            TunnResult::WriteToNetwork(keepalive) => {
                self.sock.send_to(keepalive, self.weft).unwrap();
                true
            }
            _ => false,
        }
    }

    /// Seals `packet` and returns the data message (not sent).
    fn seal(&mut self, packet: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; packet.len() + 200];
        match self.tunn.encapsulate(packet, &mut buf) {
            TunnResult::WriteToNetwork(m) => m.to_vec(),
            other => panic!("not sealed: {other:?}"),
        }
    }

    fn send(&self, m: &[u8]) {
        self.sock.send_to(m, self.weft).unwrap();
    }
}

/// Counts UDP datagrams arriving on port 7777 in container namespace `ns` until `stop` is dropped.
fn count_arrivals(
    ns: String,
    ip: Ipv4Addr,
) -> (
    std::sync::mpsc::Sender<()>,
    std::thread::JoinHandle<Vec<Vec<u8>>>,
) {
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        in_netns(&ns, move || {
            let s = UdpSocket::bind((ip, 7777)).expect("bind 7777");
            s.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            ready_tx.send(()).unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 2048];
            loop {
                if let Ok(n) = s.recv(&mut buf) {
                    got.push(buf[..n].to_vec());
                }
                if !matches!(
                    stop_rx.try_recv(),
                    Err(std::sync::mpsc::TryRecvError::Empty)
                ) {
                    return got;
                }
            }
        })
    });
    ready_rx.recv().unwrap();
    (stop_tx, h)
}

#[test]
fn tampered_replayed_spoofed_and_unknown_key_messages_are_dropped_and_counted() {
    let mut bed = Bed::new(2, WG);
    bed.start_weft(0, &[]);
    let c0 = bed.attach_container(0);
    let weft_key = decode(&public_key(&bed, 0));
    // Host 1 is a peer the test plays: its lease (a reservation) with a key the test holds.
    let (private, public) = test_peer_lease(&bed, 0, 1, "10.5.200.0/24");
    let h1 = bed.hosts[1].ip;
    let lease = bed
        .etcd
        .get("/coreos.com/network/subnets/10.5.200.0-24")
        .expect("the test peer's lease");
    let (stop, arrivals) = count_arrivals(bed.container_ns(0), c0);
    let weft_addr = SocketAddrV4::new(bed.hosts[0].ip, 51820);
    let ns = bed.hosts[1].ns.name.clone();
    let good = ipv4_udp(
        Ipv4Addr::new(10, 5, 200, 5),
        c0,
        7777,
        b"the one good datagram",
    );
    let good2 = good.clone();
    in_netns(&ns, move || {
        let mut p = TestPeer::new(h1, private, weft_key, weft_addr);
        assert!(
            p.handshake(),
            "weft answers a handshake from a key in a lease"
        );
        let m = p.seal(&good2);
        p.send(&m);
        // The same message again: a replay.
        std::thread::sleep(Duration::from_millis(200));
        p.send(&m);
        // A flipped bit in the ciphertext.
        let mut t = p.seal(&good2);
        let i = t.len() - 20;
        t[i] ^= 0x40;
        p.send(&t);
        // A source outside the peer's subnet (10.5.200.0/24), sealed properly.
        let spoofed = ipv4_udp(Ipv4Addr::new(10, 5, 77, 7), c0, 7777, b"spoofed");
        let s = p.seal(&spoofed);
        p.send(&s);
        // A handshake from a key that no lease has.
        let mut stranger = TestPeer {
            sock: p.sock.try_clone().unwrap(),
            tunn: Tunn::new(
                StaticSecret::from(weft::wireguard::keyfile::generate()),
                PublicKey::from(weft_key),
                None,
                None,
                9,
                None,
            ),
            weft: weft_addr,
        };
        stranger
            .sock
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        assert!(!stranger.handshake(), "weft does not answer an unknown key");
        // Garbage of every message type.
        for t in 1u8..=4 {
            for n in [1usize, 4, 16, 32, 64, 148] {
                let mut junk = vec![0xa5u8; n];
                junk[0] = t;
                p.send(&junk);
            }
        }
    });
    let w = bed.weft(0);
    for reason in [
        "replayed",
        "decrypt_failed",
        "spoofed_source",
        "unknown_key",
    ] {
        wait_for(&format!("a {reason} drop counted\n{}", w.log()), T, || {
            let n = w.metric(&format!("weft_drops_total{{reason=\"{reason}\"}}"))?;
            (n >= 1).then_some(())
        });
    }
    let n = w
        .metric("weft_wireguard_decrypt_failures_total{reason=\"decrypt_failed\"}")
        .unwrap();
    assert!(n >= 1);
    std::thread::sleep(Duration::from_millis(300));
    drop(stop);
    let got = arrivals.join().unwrap();
    assert_eq!(
        got,
        vec![b"the one good datagram".to_vec()],
        "only the good datagram arrived, once"
    );
    let st = w.status().unwrap();
    let peer = &st["wireguard"]["peers"][0];
    assert_eq!(peer["public_key"], b64(&public));
    assert!(peer["last_handshake_secs"].as_f64().is_some(), "{st}");
    assert!(
        peer["rx_bytes"].as_u64().unwrap() >= good.len() as u64,
        "{st}"
    );
    // The peer's lease gets a new key (a reinstalled host): the old key is refused, the new one answered.
    let private2 = weft::wireguard::keyfile::generate();
    let public2 = PublicKey::from(&StaticSecret::from(private2)).to_bytes();
    let lease2 = lease.replace(&b64(&public), &b64(&public2));
    let out = bed
        .etcd
        .etcdctl(&["put", "/coreos.com/network/subnets/10.5.200.0-24", &lease2]);
    assert!(out.status.success(), "{out:?}");
    wait_for("the new key in weft's status", T, || {
        let st = bed.weft(0).status()?;
        (st["wireguard"]["peers"][0]["public_key"] == b64(&public2).as_str()).then_some(())
    });
    let ns = bed.hosts[1].ns.name.clone();
    in_netns(&ns, move || {
        let mut old = TestPeer::new(h1, private, weft_key, weft_addr);
        old.sock
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        assert!(!old.handshake(), "the replaced key is refused");
        drop(old);
        let mut new = TestPeer::new(h1, private2, weft_key, weft_addr);
        assert!(new.handshake(), "the new key gets a session");
    });
    assert!(
        bed.hosts[0].weft.as_mut().unwrap().running(),
        "weft survived all of it"
    );
}

/// The lease value's PublicKey for host `i`'s subnet.
fn lease_key(bed: &Bed, i: usize) -> String {
    let s = bed.weft(i).wait_subnet();
    let v = bed
        .etcd
        .get(&format!(
            "/coreos.com/network/subnets/{}",
            s.replace('/', "-")
        ))
        .expect("the lease");
    let v: serde_json::Value = serde_json::from_str(&v).unwrap();
    assert_eq!(v["BackendType"], "wireguard", "{v}");
    assert_eq!(v["BackendData"]["Port"], 51820, "{v}");
    v["BackendData"]["PublicKey"].as_str().unwrap().to_string()
}

/// Handshakes host `i` completed with its peers.
fn handshakes(bed: &Bed, i: usize) -> u64 {
    bed.weft(i)
        .metric("weft_wireguard_handshakes_total")
        .unwrap_or(0)
}

#[test]
fn a_restarted_host_keeps_its_key_its_peers_handshake_again_and_etcd_outages_change_nothing() {
    let (mut bed, c0, c1) = Bed::pinging_pair(WG);
    let st = bed.weft(0).status().unwrap();
    assert_eq!(
        st["dataplane"], "userspace",
        "auto carries WireGuard in weft here"
    );
    let key0 = public_key(&bed, 0);
    assert_eq!(lease_key(&bed, 0), key0);
    let mode = std::fs::metadata(bed.weft(0).wg_key_file()).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    let before = handshakes(&bed, 1);

    // A restart: same key, same lease, and traffic both ways within seconds (the restarted host lost
    // its sessions; the peer still has one).
    let t = std::time::Instant::now();
    bed.hosts[0].weft.as_mut().unwrap().restart();
    bed.wait_ping(1, c0, Duration::from_secs(10));
    bed.wait_ping(0, c1, Duration::from_secs(10));
    eprintln!("both ways again {:?} after the restart", t.elapsed());
    assert_eq!(public_key(&bed, 0), key0);
    assert_eq!(lease_key(&bed, 0), key0);
    assert!(handshakes(&bed, 1) > before, "a new handshake");
    let log = bed.weft(0).log();
    assert!(log.contains("WireGuard key loaded"), "{log}");

    // etcd down: nothing changes, transfers are byte-identical both ways, and a restart during the
    // outage comes back from the saved state with the same key.
    bed.etcd.stop();
    for (a, b) in [(0, 1), (1, 0)] {
        let (sent, got) = bed.transfer(a, b, 8 << 20);
        assert_eq!(got.1, 8 << 20);
        assert_eq!(sent, got, "byte-identical {a} -> {b}");
    }
    bed.hosts[0].weft.as_mut().unwrap().restart();
    bed.wait_ping(0, c1, Duration::from_secs(10));
    bed.wait_ping(1, c0, Duration::from_secs(10));
    assert_eq!(public_key(&bed, 0), key0);
    bed.etcd.restart();
    wait_for("weft to reconcile with etcd", T, || {
        bed.weft(0)
            .log()
            .contains("etcd answers again; holding the same subnet there")
            .then_some(())
    });
    assert_eq!(lease_key(&bed, 0), key0);
    assert!(bed.ping_once(0, c1) && bed.ping_once(1, c0));
}

/// The last line a daemon printed (its one-line error when it exits).
fn last_error(log: &str) -> String {
    log.lines()
        .rev()
        .find(|l| l.starts_with("weft: error:"))
        .unwrap_or_else(|| panic!("no error line in:\n{log}"))
        .to_string()
}

#[test]
fn kernel_dataplane_and_bad_key_files_are_refused_with_one_line_and_status_2() {
    let mut bed = Bed::new(1, WG);
    bed.start_weft(0, &["--dataplane=kernel"]);
    let w = bed.hosts[0].weft.as_mut().unwrap();
    assert_eq!(w.wait_exit(T), Some(2), "{}", w.log());
    let line = last_error(&w.log());
    assert!(
        line.contains("WireGuard module") && line.contains("--dataplane userspace"),
        "{line}"
    );
    let dir = tempfile::tempdir().unwrap();
    for (content, want) in [
        ("not a key\n", "does not hold a key"),
        ("AAAA", "3 bytes, not 32"),
    ] {
        let path = dir.path().join("wgkey");
        std::fs::write(&path, content).unwrap();
        let flag = format!("--wireguard-key-file={}", path.display());
        bed.start_weft(0, &[&flag]);
        let w = bed.hosts[0].weft.as_mut().unwrap();
        assert_eq!(w.wait_exit(T), Some(2), "{}", w.log());
        let line = last_error(&w.log());
        assert!(
            line.contains(want) && line.contains(&path.display().to_string()),
            "{line}"
        );
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            content,
            "the file is left alone"
        );
    }
    // Nothing was leased by the refused daemons.
    let out = bed.etcd.etcdctl(&[
        "get",
        "--prefix",
        "--keys-only",
        "/coreos.com/network/subnets",
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).trim().is_empty());
}

/// Three weft hosts and a flannel wireguard host (wireguard-go, set up as flanneld does) form one overlay:
/// all pairs ping, TCP is byte-identical both ways between weft and wireguard-go, both sides see the
/// sessions, and the underlay carries ciphertext only.
#[test]
fn weft_and_wireguard_go_flannel_hosts_form_one_overlay() {
    let mut bed = Bed::new(4, WG);
    for i in 0..3 {
        bed.start_weft(i, &["--workers=2"]);
    }
    let mut ips: Vec<Ipv4Addr> = (0..3).map(|i| bed.attach_container(i)).collect();
    ips.push(bed.make_wggo_host(3, Ipv4Addr::new(10, 5, 250, 0)));
    // The flannel host takes the weft hosts' leases as peers, as flanneld's backend does.
    let added = bed.wggo_sync_peers(3);
    assert_eq!(added.len(), 3, "{added:?}");
    let mut subnets: Vec<String> = (0..3).map(|i| bed.weft(i).wait_subnet()).collect();
    subnets.push("10.5.250.0/24".into());
    for i in 0..3 {
        let others: Vec<String> = subnets
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, s)| s.clone())
            .collect();
        bed.weft(i).wait_peers(&others, T);
    }
    for from in 0..4 {
        for (to, ip) in ips.iter().enumerate() {
            if from != to {
                bed.wait_ping(from, *ip, T);
            }
        }
    }
    for (a, b) in [(0, 3), (3, 1)] {
        let (sent, got) = bed.transfer(a, b, 20 << 20);
        assert_eq!(got.1, 20 << 20, "all bytes {a} -> {b}");
        assert_eq!(sent, got, "byte-identical {a} -> {b}");
    }
    // wireguard-go's view of the weft hosts, and weft's of wireguard-go.
    let wg_key = bed.wggo(3).public_key.clone();
    for i in 0..3 {
        let p = bed.wggo(3).wait_handshake(&public_key(&bed, i), T);
        assert!(p.rx_bytes > 0 && p.tx_bytes > 0, "{p:?}");
        let st = bed.weft(i).status().unwrap();
        let peer = st["wireguard"]["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["public_key"] == wg_key.as_str())
            .unwrap_or_else(|| panic!("host {i} has a session with wireguard-go: {st}"))
            .clone();
        assert!(peer["last_handshake_secs"].as_f64().is_some(), "{peer}");
        assert_eq!(peer["endpoint"], format!("{}:{WG_PORT}", bed.hosts[3].ip));
    }
    // On the underlay: the pattern crosses weft -> weft and weft -> wireguard-go, never in clear, and
    // every large packet is WireGuard UDP on port 51820.
    let ul = bed.underlay.name.clone();
    for (from, to, port) in [(0, 1, 5301), (0, 3, 5302), (3, 2, 5303)] {
        let cap = Capture::start(&ul, "br0", "");
        transfer_pattern(
            &bed.container_ns(from),
            &bed.container_ns(to),
            ips[to],
            port,
            PATTERN,
            4 << 20,
        );
        let seen = cap.finish();
        let big: Vec<&Vec<u8>> = seen.packets.iter().filter(|p| p.len() > 1000).collect();
        // weft's GSO trains cross the bridge as one super-packet each: count bytes, not packets. Most of the
        // 4 MiB must have been seen (a loaded machine makes tcpdump drop some; what it saw is checked below).
        let bytes: usize = big.iter().map(|p| p.len()).sum();
        assert!(
            bytes > 3 << 20,
            "the capture saw the transfer {from} -> {to} ({bytes} bytes in {} large packets, {:?} dropped)",
            big.len(),
            seen.dropped
        );
        assert_eq!(
            seen.count_containing(PATTERN),
            0,
            "clear pattern on the underlay {from} -> {to}"
        );
        let wg_port = WG_PORT.to_be_bytes();
        assert!(
            big.iter()
                .all(|p| p[23] == 17 && (p[34..36] == wg_port && p[36..38] == wg_port)),
            "large underlay packets are WireGuard from and to port 51820 ({from} -> {to})"
        );
    }
}

/// flannel's `PSK`: weft and a wireguard-go flannel host with the same preshared key reach each other both
/// ways; with a different one on the wireguard-go side, its handshakes fail and nothing crosses.
#[test]
fn a_preshared_key_is_mixed_into_every_handshake_with_wireguard_go() {
    let psk = "Yl2oHBDbsv2cz8pfiCSB6vr1pB9sJ6vDDc/MNdZlgJk=";
    let config = format!(
        r#"{{"Network":"10.5.0.0/16","Backend":{{"Type":"wireguard","PSK":"{psk}","PersistentKeepaliveInterval":5}}}}"#
    );
    let mut bed = Bed::new(2, &config);
    bed.start_weft(0, &[]);
    let c0 = bed.attach_container(0);
    let c1 = bed.make_wggo_host(1, Ipv4Addr::new(10, 5, 250, 0));
    assert_eq!(bed.wggo_sync_peers(1).len(), 1);
    bed.wait_ping(0, c1, T);
    bed.wait_ping(1, c0, T);
    for (a, b) in [(0, 1), (1, 0)] {
        let (sent, got) = bed.transfer(a, b, 8 << 20);
        assert_eq!(sent, got, "byte-identical {a} -> {b}");
    }
    let key0 = public_key(&bed, 0);
    let p = bed
        .wggo(1)
        .peer(&key0)
        .expect("weft is wireguard-go's peer");
    assert_eq!(p.persistent_keepalive, Some(5));
    // wireguard-go with another preshared key: a new handshake fails and nothing crosses.
    bed.wggo(1)
        .set_psk(&key0, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    bed.wggo(1).remove_peer(&key0);
    let w = bed.wggo(1);
    let l = wireguard_leases(&bed.etcd)
        .into_iter()
        .find(|l| l.public_key == key0)
        .unwrap();
    w.add_peer(
        &key0,
        SocketAddrV4::new(l.public_ip, l.port),
        &l.subnet,
        None,
    );
    w.set_psk(&key0, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    assert!(
        !bed.ping_once(1, c0),
        "no traffic with a different preshared key"
    );
    // The right key again, and traffic flows: the key was what mattered.
    w.set_psk(&key0, psk);
    bed.wait_ping(1, c0, T);
}

/// A peer that does not answer handshakes is reported once, in plain words, and again when it answers.
#[test]
fn a_peer_that_does_not_answer_is_reported_once_and_again_when_it_does() {
    let mut bed = Bed::new(2, WG);
    bed.start_weft(0, &[]);
    bed.attach_container(0);
    let weft_key = decode(&public_key(&bed, 0));
    let (private, _) = test_peer_lease(&bed, 0, 1, "10.5.201.0/24");
    let h1 = bed.hosts[1].ip;
    // Traffic for the silent peer makes weft offer handshakes (every 5 s) that nobody answers.
    assert!(!bed.ping_once(0, Ipv4Addr::new(10, 5, 201, 5)));
    let said = |what: &str| {
        bed.weft(0)
            .log()
            .lines()
            .filter(|l| l.contains(what))
            .count()
    };
    wait_for("the silent peer reported", Duration::from_secs(30), || {
        (said(
            "WireGuard peer 10.5.201.0/24 at 10.250.0.2:51820 has not answered handshakes for 15 s",
        ) == 1)
            .then_some(())
    });
    // The peer comes up: it answers weft's next offer.
    let ns = bed.hosts[1].ns.name.clone();
    let weft_addr = SocketAddrV4::new(bed.hosts[0].ip, 51820);
    in_netns(&ns, move || {
        let mut p = TestPeer::new(h1, private, weft_key, weft_addr);
        p.sock
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut m = vec![0u8; 2048];
        let (n, _) = p
            .sock
            .recv_from(&mut m)
            .expect("weft offers a handshake again");
        let mut out = vec![0u8; 2048];
        match p.tunn.decapsulate(Some(h1.into()), &m[..n], &mut out) {
            TunnResult::WriteToNetwork(resp) => p.send(resp),
            other => panic!("not a handshake initiation: {other:?}"),
        }
    });
    wait_for("the peer reported back", T, || {
        (said("WireGuard peer 10.5.201.0/24 at 10.250.0.2:51820 answers again") == 1).then_some(())
    });
    assert_eq!(said("has not answered handshakes"), 1, "said once");
}

/// Dual stack on the wireguard backend in flannel's default mode "separate": each host publishes its key in
/// BackendData (ListenPort) and BackendV6Data (ListenPortV6), IPv6 crosses the IPv6 underlay between the
/// IPv6 devices' ports, sealed (no clear pattern on the underlay), and both families reach every host.
#[test]
fn dual_stack_hosts_carry_ipv6_between_their_ipv6_wireguard_ports() {
    let dual = r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00:5::/48","Backend":{"Type":"wireguard"}}"#;
    let mut bed = Bed::new(3, dual);
    for i in 0..3 {
        bed.start_weft(i, &["--workers=2"]);
    }
    let ips: Vec<_> = (0..3).map(|i| bed.attach_container(i)).collect();
    let ips6: Vec<_> = (0..3).map(|i| bed.attach_container6(i)).collect();
    for from in 0..3 {
        for to in (0..3).filter(|t| *t != from) {
            bed.wait_ping(from, ips[to], T);
            bed.wait_ping6(from, ips6[to], T);
        }
    }
    for (from, to) in [(0, 2), (2, 0)] {
        let (sent, got) = bed.transfer6(from, to, 20 << 20);
        assert_eq!(got.1, 20 << 20, "all bytes over IPv6 {from} -> {to}");
        assert_eq!(sent, got, "byte-identical over IPv6 {from} -> {to}");
    }
    let (sent, got) = bed.transfer(1, 0, 10 << 20);
    assert_eq!(sent, got, "byte-identical over IPv4");
    // flannel's dual-stack wireguard lease: one key, each device's port.
    let key = format!(
        "/coreos.com/network/subnets/{}&{}",
        bed.weft(0).wait_subnet().replace('/', "-"),
        bed.weft(0).wait_subnet6().replace('/', "-")
    );
    let raw = bed.etcd.get(&key).expect("lease");
    let v: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(v["BackendData"]["Port"], 51820, "{v}");
    assert_eq!(v["BackendV6Data"]["Port"], 51821, "{v}");
    assert_eq!(
        v["BackendData"]["PublicKey"], v["BackendV6Data"]["PublicKey"],
        "{v}"
    );
    assert_eq!(v["PublicIPv6"], bed.hosts[0].ip6.to_string(), "{v}");
    // On the underlay: the IPv6 transfer is WireGuard between the IPv6 ports, none of it in clear.
    let ul = bed.underlay.name.clone();
    let (c0, c2) = (bed.container_ns(0), bed.container_ns(2));
    let cap = Capture::start(&ul, "br0", "ip6 and udp");
    transfer_pattern(&c0, &c2, ips6[2], 5204, PATTERN, 4 << 20);
    let seen = cap.finish();
    let big: Vec<&Vec<u8>> = seen.packets.iter().filter(|p| p.len() > 1000).collect();
    // weft sends trains with UDP GSO, so the bridge may see them whole: count bytes, not packets.
    let bytes: usize = big.iter().map(|p| p.len()).sum();
    assert!(
        bytes > 3 << 20,
        "the capture saw the transfer ({bytes} bytes in {} packets)",
        big.len()
    );
    assert_eq!(
        seen.count_containing(PATTERN),
        0,
        "no clear pattern on the underlay"
    );
    // Ethernet (14) + IPv6 (40): UDP ports at 54..58, both 51821.
    let port6 = 51821u16.to_be_bytes();
    assert!(
        big.iter().all(|p| p[54..56] == port6 && p[56..58] == port6),
        "IPv6 WireGuard between the IPv6 devices' ports only"
    );
    // Both families' sessions in weft status.
    let status = bed.weft(0).status_text();
    assert!(
        status.contains(&format!("{}]:51821", bed.hosts[2].ip6)),
        "{status}"
    );
}
