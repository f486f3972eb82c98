//! A host running "flanneld's wireguard backend", emulated with wireguard-go and `wg` (this kernel has no
//! WireGuard module), and an underlay capture that tells whether a byte pattern crossed in clear.
//!
//! What flanneld's wireguard backend does on a host, and what `Bed::make_wggo_host` does by hand: a device
//! (`flannel-wg` there; a name unique per test here, as wireguard-go's UAPI socket
//! `/var/run/wireguard/<dev>.sock` is shared by all network namespaces) with the key, listen port 51820
//! (`ListenPort`), MTU = underlay MTU - 80, address `<subnet's first address>/32`, up, the whole Network
//! routed to it; its lease `{"PublicIP":..,"BackendType":"wireguard","BackendData":{"PublicKey":..,"Port":..}}`
//! in etcd with a TTL; and per peer lease `wg set <dev> peer <key> endpoint <ip>:<port> allowed-ips <subnet>`
//! (`Bed::wggo_sync_peers`).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::netns::{exec, in_netns, ip, unique_id, Bed};
use super::{command_in, wait_for, Etcd};

/// flannel's default `ListenPort`.
pub const WG_PORT: u16 = 51820;
/// What flannel's wireguard backend takes off the underlay MTU for the device's.
pub const WG_OVERHEAD: u32 = 80;
/// TTL of the leases written for wireguard-go hosts (flannel's default subnet lease: 24 h).
pub const LEASE_TTL_SECS: u64 = 24 * 3600;

/// Runs `wg` with `args` inside namespace `ns`, panicking with its stderr on failure; returns stdout.
fn wg(ns: &str, args: &[&str], input: Option<&str>) -> String {
    let mut child = command_in(Some(ns), "wg")
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run wg (install wireguard-tools: netns-fixtures/deps.sh does)");
    if let Some(text) = input {
        let mut stdin = child.stdin.take().expect("wg stdin");
        stdin.write_all(text.as_bytes()).expect("write wg input");
    }
    let out = child.wait_with_output().expect("run wg");
    assert!(
        out.status.success(),
        "wg {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("wg output is text")
}

/// A fresh WireGuard key pair as `wg genkey` / `wg pubkey` make it: (private, public), base64.
pub fn wg_keypair(ns: &str) -> (String, String) {
    let private = wg(ns, &["genkey"], None).trim().to_string();
    let public = wg(ns, &["pubkey"], Some(&format!("{private}\n")))
        .trim()
        .to_string();
    (private, public)
}

/// One peer of a device, from `wg show <dev> dump`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WgPeer {
    pub public_key: String,
    /// `ip:port`, None until configured or learnt.
    pub endpoint: Option<String>,
    pub allowed_ips: Vec<String>,
    /// Unix seconds of the latest handshake; 0: none yet.
    pub latest_handshake: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Seconds; None: off.
    pub persistent_keepalive: Option<u16>,
}

/// A wireguard lease as flannel publishes it in etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WgLease {
    /// e.g. `10.5.52.0/24`.
    pub subnet: String,
    pub public_ip: Ipv4Addr,
    pub public_key: String,
    pub port: u16,
}

impl WgLease {
    /// The lease's etcd value, as flannel writes it.
    pub fn to_json(&self) -> String {
        format!(
            r#"{{"PublicIP":"{}","BackendType":"wireguard","BackendData":{{"PublicKey":"{}","Port":{}}}}}"#,
            self.public_ip, self.public_key, self.port
        )
    }

    /// The etcd key: `/coreos.com/network/subnets/10.5.52.0-24`.
    pub fn key(&self) -> String {
        format!(
            "/coreos.com/network/subnets/{}",
            self.subnet.replace('/', "-")
        )
    }

    /// Parses an etcd key and value; None unless it is a wireguard lease.
    pub fn parse(key: &str, value: &str) -> Option<WgLease> {
        let subnet = key
            .strip_prefix("/coreos.com/network/subnets/")?
            .replacen('-', "/", 1);
        let v: Value = serde_json::from_str(value).ok()?;
        if v["BackendType"] != "wireguard" {
            return None;
        }
        Some(WgLease {
            subnet,
            public_ip: v["PublicIP"].as_str()?.parse().ok()?,
            public_key: v["BackendData"]["PublicKey"].as_str()?.to_string(),
            port: u16::try_from(v["BackendData"]["Port"].as_u64()?).ok()?,
        })
    }
}

/// Every wireguard lease in etcd (other backends' leases are skipped).
pub fn wireguard_leases(etcd: &Etcd) -> Vec<WgLease> {
    let out = etcd.etcdctl(&["get", "--prefix", "/coreos.com/network/subnets/"]);
    assert!(
        out.status.success(),
        "etcdctl get: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    lines
        .chunks(2)
        .filter_map(|kv| WgLease::parse(kv.first()?, kv.get(1)?))
        .collect()
}

/// Writes `lease` to etcd under a fresh TTL lease of `ttl_secs`, as flanneld's subnet manager does.
pub fn put_lease(etcd: &Etcd, lease: &WgLease, ttl_secs: u64) {
    let out = etcd.etcdctl(&["lease", "grant", &ttl_secs.to_string()]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "etcdctl lease grant: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "lease 694d7e2b0f2c1a05 granted with TTL(86400s)"
    let id = text
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("etcd lease id in {text:?}"));
    let out = etcd.etcdctl(&[
        "put",
        &format!("--lease={id}"),
        &lease.key(),
        &lease.to_json(),
    ]);
    assert!(
        out.status.success(),
        "etcdctl put: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// wireguard-go serving one device inside a host namespace, set up as flannel's wireguard backend sets up
/// `flannel-wg`. Drop stops wireguard-go (and waits), deletes the device and removes its UAPI socket.
pub struct WgGo {
    child: Option<Child>,
    /// Holds the private key file and wireguard-go's log.
    dir: tempfile::TempDir,
    /// The host's namespace.
    pub ns: String,
    /// The device's name (unique per test, at most 15 characters).
    pub dev: String,
    pub public_key: String,
    pub private_key: String,
    pub port: u16,
    pub mtu: u32,
    /// The lease this host holds (subnet, public IP, key, port).
    pub lease: WgLease,
}

impl WgGo {
    /// Starts wireguard-go in `ns` for a host with underlay address `public_ip` holding `subnet` (e.g.
    /// `10.5.52.0/24`) of `network` (e.g. `10.5.0.0/16`): a fresh key, listen `port`, MTU `mtu`, address
    /// `<subnet's first address>/32`, up, `network` routed to the device. Writes no lease (see `put_lease`).
    pub fn start(
        ns: &str,
        public_ip: Ipv4Addr,
        subnet: &str,
        network: &str,
        port: u16,
        mtu: u32,
    ) -> WgGo {
        let dir = tempfile::Builder::new()
            .prefix("weft-wggo-")
            .tempdir()
            .expect("tempdir");
        // "wg<pid>-<n>": unique in this process, and across processes by the pid; at most 15 characters
        // (IFNAMSIZ - 1) while pids stay below 10^7 and a process makes under 10^5 names.
        let dev = unique_id().replacen("wt", "wg", 1);
        assert!(dev.len() <= 15, "device name {dev} too long");
        // Before the process starts, so that nothing can panic between its start and `w` owning it.
        let (private_key, public_key) = wg_keypair(ns);
        let base = subnet.split('/').next().expect("subnet").to_string();
        // flannel-wg gets `<subnet>.0/32`, flannel-wg-v6 `<IPv6 subnet>::/128`.
        let host_len = if base.contains(':') { 128 } else { 32 };
        let log = std::fs::File::create(dir.path().join("wireguard-go.log")).expect("log file");
        let child = command_in(Some(ns), "wireguard-go")
            .arg(&dev)
            // Without it wireguard-go re-executes itself in the background and the first process exits.
            .env("WG_PROCESS_FOREGROUND", "1")
            .env("LOG_LEVEL", "verbose")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start wireguard-go (install wireguard-go: netns-fixtures/deps.sh does)");
        let mut w = WgGo {
            child: Some(child),
            dir,
            ns: ns.to_string(),
            dev,
            public_key: public_key.clone(),
            private_key,
            port,
            mtu,
            lease: WgLease {
                subnet: subnet.to_string(),
                public_ip,
                public_key,
                port,
            },
        };
        // From here on, a panic drops `w`, which stops wireguard-go and removes what it made.
        let sock = w.socket();
        wait_for(
            "wireguard-go's UAPI socket",
            Duration::from_secs(10),
            || {
                if let Some(status) = w.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    panic!("wireguard-go exited ({status}): {}", w.log());
                }
                sock.exists().then_some(())
            },
        );
        let key_file = w.dir.path().join("private.key");
        std::fs::write(&key_file, format!("{}\n", w.private_key)).expect("key file");
        let key_path = key_file.to_str().expect("utf-8 path").to_string();
        wg(
            ns,
            &[
                "set",
                &w.dev,
                "private-key",
                &key_path,
                "listen-port",
                &port.to_string(),
            ],
            None,
        );
        ip(&["-n", ns, "link", "set", &w.dev, "mtu", &mtu.to_string()]);
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{base}/{host_len}"),
            "dev",
            &w.dev,
        ]);
        ip(&["-n", ns, "link", "set", &w.dev, "up"]);
        ip(&["-n", ns, "route", "add", network, "dev", &w.dev]);
        w
    }

    /// `/var/run/wireguard/<dev>.sock`: wireguard-go's UAPI socket, the same path from every namespace.
    pub fn socket(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/wireguard/{}.sock", self.dev))
    }

    /// wireguard-go's output so far (LOG_LEVEL=verbose: handshakes, keepalives, errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("wireguard-go.log")).unwrap_or_default()
    }

    /// wireguard-go's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `wg set <dev> peer <public_key> endpoint <endpoint> allowed-ips <allowed_ips>
    /// [persistent-keepalive <s>]`, as flanneld does per peer lease (`allowed_ips`: comma-separated).
    pub fn add_peer(
        &self,
        public_key: &str,
        endpoint: impl Into<std::net::SocketAddr>,
        allowed_ips: &str,
        keepalive: Option<u16>,
    ) {
        let endpoint: std::net::SocketAddr = endpoint.into();
        let ep = endpoint.to_string();
        let ka = keepalive.map(|k| k.to_string());
        let mut args = vec![
            "set",
            &self.dev,
            "peer",
            public_key,
            "endpoint",
            &ep,
            "allowed-ips",
            allowed_ips,
        ];
        if let Some(k) = &ka {
            args.extend(["persistent-keepalive", k.as_str()]);
        }
        wg(&self.ns, &args, None);
    }

    /// `wg set <dev> peer <public_key> preshared-key <psk>` (flannel's `Backend.PSK`, for every peer).
    pub fn set_psk(&self, public_key: &str, psk: &str) {
        wg(
            &self.ns,
            &[
                "set",
                &self.dev,
                "peer",
                public_key,
                "preshared-key",
                "/dev/stdin",
            ],
            Some(&format!("{psk}\n")),
        );
    }

    /// `wg set <dev> peer <public_key> remove`.
    pub fn remove_peer(&self, public_key: &str) {
        wg(
            &self.ns,
            &["set", &self.dev, "peer", public_key, "remove"],
            None,
        );
    }

    /// The device's peers from `wg show <dev> dump`.
    pub fn peers(&self) -> Vec<WgPeer> {
        let text = wg(&self.ns, &["show", &self.dev, "dump"], None);
        // The first line is the interface: private-key public-key listen-port fwmark.
        text.lines().skip(1).filter_map(parse_dump_peer).collect()
    }

    /// One peer by public key.
    pub fn peer(&self, public_key: &str) -> Option<WgPeer> {
        self.peers()
            .into_iter()
            .find(|p| p.public_key == public_key)
    }

    /// Waits until the peer `public_key` has completed a handshake; returns it.
    pub fn wait_handshake(&self, public_key: &str, timeout: Duration) -> WgPeer {
        wait_for(
            &format!("a handshake of {} with {public_key}", self.dev),
            timeout,
            || self.peer(public_key).filter(|p| p.latest_handshake > 0),
        )
    }

    /// The listen port wireguard-go reports (`wg show <dev> listen-port`).
    pub fn listen_port(&self) -> u16 {
        wg(&self.ns, &["show", &self.dev, "listen-port"], None)
            .trim()
            .parse()
            .expect("listen port")
    }

    /// Stops wireguard-go (SIGTERM, which removes the device and socket itself; SIGKILL after 5 s) and
    /// removes whatever it left.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                if Instant::now() >= deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = Command::new("ip")
            .args(["-n", &self.ns, "link", "del", &self.dev])
            .output();
        let _ = std::fs::remove_file(self.socket());
    }
}

impl Drop for WgGo {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A peer line of `wg show <dev> dump`: public-key preshared-key endpoint allowed-ips latest-handshake
/// transfer-rx transfer-tx persistent-keepalive, tab-separated.
fn parse_dump_peer(line: &str) -> Option<WgPeer> {
    let f: Vec<&str> = line.split('\t').collect();
    if f.len() < 8 {
        return None;
    }
    let none = |s: &str| s == "(none)" || s == "off";
    Some(WgPeer {
        public_key: f[0].to_string(),
        endpoint: (!none(f[2])).then(|| f[2].to_string()),
        allowed_ips: if none(f[3]) {
            Vec::new()
        } else {
            f[3].split(',').map(str::to_string).collect()
        },
        latest_handshake: f[4].parse().ok()?,
        rx_bytes: f[5].parse().ok()?,
        tx_bytes: f[6].parse().ok()?,
        persistent_keepalive: if none(f[7]) { None } else { f[7].parse().ok() },
    })
}

impl Bed {
    /// Makes host `i` a plain Linux host running flanneld's wireguard backend (wireguard-go standing in for
    /// the kernel module): reads Network, `Backend.ListenPort` from etcd's config, starts the device for
    /// `subnet_base/24` with MTU = eth0's - 80, writes the host's lease with a TTL, turns on forwarding and
    /// builds the container side as dockerd --bip would. Returns the container's address. Call
    /// `wggo_sync_peers` (or `WgGo::add_peer`) for the peers.
    pub fn make_wggo_host(&mut self, i: usize, subnet_base: Ipv4Addr) -> Ipv4Addr {
        let h = self.hosts[i].ns.name.clone();
        let hip = self.hosts[i].ip;
        let cfg = self.network_config();
        let network = cfg["Network"].as_str().expect("Network in the config");
        let port = cfg["Backend"]["ListenPort"]
            .as_u64()
            .map_or(WG_PORT, |p| u16::try_from(p).expect("ListenPort"));
        let mtu = link_mtu(&h, "eth0") - WG_OVERHEAD;
        let w = WgGo::start(&h, hip, &format!("{subnet_base}/24"), network, port, mtu);
        put_lease(&self.etcd, &w.lease, LEASE_TTL_SECS);
        self.hosts[i].wggo = Some(w);
        let out = exec(&h, "sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
        assert!(out.status.success());
        self.add_container(i, subnet_base, 24)
    }

    /// Host `i`'s wireguard-go.
    pub fn wggo(&self, i: usize) -> &WgGo {
        self.hosts[i]
            .wggo
            .as_ref()
            .expect("wireguard-go host (make_wggo_host)")
    }

    /// etcd's `/coreos.com/network/config`, parsed.
    pub fn network_config(&self) -> Value {
        let text = self
            .etcd
            .get("/coreos.com/network/config")
            .expect("network config in etcd");
        serde_json::from_str(&text).expect("config is JSON")
    }

    /// What flanneld's wireguard backend does on host `i` for the leases in etcd: every wireguard lease
    /// but its own becomes a peer (endpoint PublicIP:Port, allowed-ips its subnet, the config's
    /// `PersistentKeepaliveInterval` and `PSK` if set). Returns the leases it added.
    pub fn wggo_sync_peers(&self, i: usize) -> Vec<WgLease> {
        let w = self.wggo(i);
        let keepalive = self.network_config()["Backend"]["PersistentKeepaliveInterval"]
            .as_u64()
            .filter(|&k| k > 0)
            .map(|k| u16::try_from(k).expect("keepalive"));
        let peers: Vec<WgLease> = wireguard_leases(&self.etcd)
            .into_iter()
            .filter(|l| l.public_ip != w.lease.public_ip)
            .collect();
        let psk = self.network_config()["Backend"]["PSK"]
            .as_str()
            .map(str::to_string);
        for l in &peers {
            w.add_peer(
                &l.public_key,
                SocketAddrV4::new(l.public_ip, l.port),
                &l.subnet,
                keepalive,
            );
            if let Some(psk) = &psk {
                w.set_psk(&l.public_key, psk);
            }
        }
        peers
    }
}

/// The MTU of `dev` in namespace `ns`.
pub fn link_mtu(ns: &str, dev: &str) -> u32 {
    let out = exec(ns, "ip", &["-j", "link", "show", "dev", dev]);
    assert!(out.status.success(), "ip link show {dev} in {ns}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
    v[0]["mtu"].as_u64().expect("mtu") as u32
}

/// What a capture saw: every packet's captured bytes, and tcpdump's own count of kernel drops.
pub struct Captured {
    pub packets: Vec<Vec<u8>>,
    /// "packets dropped by kernel" (None if tcpdump did not say).
    pub dropped: Option<u64>,
    /// tcpdump's standard error (its counts at the end).
    pub stderr: String,
}

impl Captured {
    /// How many packets contain `needle`.
    pub fn count_containing(&self, needle: &[u8]) -> usize {
        assert!(!needle.is_empty(), "an empty needle is in everything");
        self.packets
            .iter()
            .filter(|p| p.windows(needle.len()).any(|w| w == needle))
            .count()
    }

    /// Total captured bytes.
    pub fn bytes(&self) -> usize {
        self.packets.iter().map(Vec::len).sum()
    }
}

/// tcpdump on one interface of a namespace, writing pcap to a pipe read by a thread; stopped on drop.
pub struct Capture {
    child: Option<Child>,
    pcap: Option<std::thread::JoinHandle<Vec<u8>>>,
    /// Bytes of pcap read so far.
    progress: Arc<AtomicUsize>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Capture {
    /// Starts tcpdump on `iface` in `ns` with the capture `filter` (tcpdump syntax; "" for everything), and
    /// returns once it captures.
    pub fn start(ns: &str, iface: &str, filter: &str) -> Capture {
        let mut cmd = command_in(Some(ns), "tcpdump");
        // --immediate-mode: each packet handed over as it comes (otherwise packets wait in a ring block
        // for up to 1 s, and a stop in that time loses them: "received by filter" but not "captured");
        // -U: written as they come; -w -: pcap on stdout (no file for the dropped-privilege user to open);
        // -s 0: whole packets; -B: 16 MiB of kernel buffer; -Z root: keep privileges.
        cmd.args([
            "-i",
            iface,
            "-n",
            "--immediate-mode",
            "-U",
            "-s",
            "0",
            "-B",
            "16384",
            "-Z",
            "root",
            "-w",
            "-",
        ]);
        if !filter.is_empty() {
            cmd.arg(filter);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tcpdump (netns-fixtures/deps.sh installs it)");
        let mut out = child.stdout.take().expect("tcpdump stdout");
        let mut err = child.stderr.take().expect("tcpdump stderr");
        let progress = Arc::new(AtomicUsize::new(0));
        let seen = progress.clone();
        let pcap = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut chunk = vec![0u8; 1 << 16];
            while let Ok(n) = out.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                seen.store(buf.len(), Ordering::Relaxed);
            }
            buf
        });
        let (tx, rx) = mpsc::channel();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let mut chunk = [0u8; 4096];
            let mut told = false;
            loop {
                match err.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        text.push_str(&String::from_utf8_lossy(&chunk[..n]));
                        if !told && text.contains("listening on") {
                            told = true;
                            let _ = tx.send(());
                        }
                    }
                }
            }
            text
        });
        let mut c = Capture {
            child: Some(child),
            pcap: Some(pcap),
            progress,
            stderr: Some(stderr),
        };
        if rx.recv_timeout(Duration::from_secs(10)).is_err() {
            let text = c.stop_text();
            panic!("tcpdump on {iface} in {ns} did not start: {text}");
        }
        c
    }

    /// Stops tcpdump and returns its stderr.
    fn stop_text(&mut self) -> String {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            // SIGINT: tcpdump flushes what it holds and prints its counts.
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
            let deadline = Instant::now() + Duration::from_secs(5);
            while !matches!(c.try_wait(), Ok(Some(_))) {
                if Instant::now() >= deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default()
    }

    /// Stops tcpdump once the capture has been quiet for 300 ms (tcpdump loses what it has not yet
    /// written when stopped; at most 5 s of waiting) and returns what it captured.
    pub fn finish(mut self) -> Captured {
        let deadline = Instant::now() + Duration::from_secs(5);
        let (mut last, mut since) = (usize::MAX, Instant::now());
        while Instant::now() < deadline {
            let n = self.progress.load(Ordering::Relaxed);
            if n != last {
                (last, since) = (n, Instant::now());
            } else if since.elapsed() >= Duration::from_millis(300) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let text = self.stop_text();
        let pcap = self
            .pcap
            .take()
            .expect("pcap reader")
            .join()
            .expect("pcap reader thread");
        let dropped = text.lines().find_map(|l| {
            l.strip_suffix(" packets dropped by kernel")
                .and_then(|n| n.trim().parse().ok())
        });
        Captured {
            packets: parse_pcap(&pcap),
            dropped,
            stderr: text,
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop_text();
        if let Some(h) = self.pcap.take() {
            let _ = h.join();
        }
    }
}

/// The packets of a pcap stream (the classic format, written by tcpdump on this machine: its byte order).
fn parse_pcap(b: &[u8]) -> Vec<Vec<u8>> {
    const GLOBAL: usize = 24;
    const RECORD: usize = 16;
    if b.len() < GLOBAL {
        return Vec::new();
    }
    let magic = u32::from_ne_bytes(b[0..4].try_into().unwrap());
    assert!(
        magic == 0xa1b2_c3d4 || magic == 0xa1b2_3c4d,
        "not a native-order pcap stream (magic {magic:#x})"
    );
    let mut out = Vec::new();
    let mut at = GLOBAL;
    while at + RECORD <= b.len() {
        let incl = u32::from_ne_bytes(b[at + 8..at + 12].try_into().unwrap()) as usize;
        let start = at + RECORD;
        if start + incl > b.len() {
            break; // cut short by the stop
        }
        out.push(b[start..start + incl].to_vec());
        at = start + incl;
    }
    out
}

/// Captures on `iface` in namespace `ns` while `during` runs; returns whether any captured packet contains
/// `needle`, and `during`'s result. Panics if nothing at all was captured (a capture of the wrong place
/// proves nothing).
pub fn capture_contains<T>(
    ns: &str,
    iface: &str,
    needle: &[u8],
    during: impl FnOnce() -> T,
) -> (bool, T) {
    let cap = Capture::start(ns, iface, "");
    let r = during();
    let seen = cap.finish();
    assert!(
        !seen.packets.is_empty(),
        "the capture on {iface} in {ns} saw no packets at all; tcpdump: {}",
        seen.stderr
    );
    (seen.count_containing(needle) > 0, r)
}

/// Sends `bytes` bytes of `pattern` repeated over TCP from namespace `tx_ns` to a listener on
/// `to_ip:port` in `rx_ns`; asserts that the receiver got exactly that stream; returns the byte count.
pub fn transfer_pattern(
    tx_ns: &str,
    rx_ns: &str,
    to_ip: impl Into<std::net::IpAddr>,
    port: u16,
    pattern: &[u8],
    bytes: usize,
) -> usize {
    assert!(!pattern.is_empty());
    let to_ip: std::net::IpAddr = to_ip.into();
    let (ready_tx, ready_rx) = mpsc::channel();
    let rx_ns = rx_ns.to_string();
    let expect = pattern.to_vec();
    let receiver = std::thread::spawn(move || {
        in_netns(&rx_ns, move || {
            let l = TcpListener::bind((to_ip, port)).expect("listen");
            ready_tx.send(()).expect("signal ready");
            let (mut s, _) = l.accept().expect("accept");
            s.set_read_timeout(Some(Duration::from_secs(30)))
                .expect("timeout");
            let mut buf = vec![0u8; 1 << 16];
            let mut total = 0usize;
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        for (k, b) in buf[..n].iter().enumerate() {
                            let at = total + k;
                            assert_eq!(*b, expect[at % expect.len()], "byte {at} of the pattern");
                        }
                        total += n;
                    }
                    Err(e) => panic!("receive failed after {total} bytes: {e}"),
                }
            }
            total
        })
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("receiver ready");
    let pattern = pattern.to_vec();
    in_netns(tx_ns, move || {
        let mut s = TcpStream::connect_timeout(&(to_ip, port).into(), Duration::from_secs(10))
            .expect("connect");
        s.set_write_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let chunk: Vec<u8> = pattern
            .iter()
            .copied()
            .cycle()
            .take(pattern.len() * 1024)
            .collect();
        let mut left = bytes;
        while left > 0 {
            // Whole repeats, so the stream stays in phase with the pattern.
            let n = left.min(chunk.len());
            s.write_all(&chunk[..n]).expect("send");
            left -= n;
        }
        s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    });
    let got = receiver.join().expect("receiver thread");
    assert_eq!(got, bytes, "all bytes of the pattern arrived");
    got
}

/// Asserts that nothing named after this device is left: no link in `ns`, no UAPI socket.
pub fn assert_wggo_gone(ns: &str, dev: &str) {
    let sock = PathBuf::from(format!("/var/run/wireguard/{dev}.sock"));
    assert!(!sock.exists(), "{} left behind", sock.display());
    let out: Output = Command::new("ip")
        .args(["-n", ns, "link", "show", dev])
        .output()
        .expect("run ip");
    assert!(!out.status.success(), "device {dev} left in {ns}");
}
