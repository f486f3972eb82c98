//! Network-namespace test beds: "hosts" on a bridged veth underlay, each with a "container" namespace on a
//! bridge holding the host's leased subnet (as dockerd with --bip would), etcd on the underlay.

use std::hash::Hasher;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::{command_in, wait_for, Etcd, Weft};

/// The underlay's address for etcd (on the underlay bridge).
pub const ETCD_IP: &str = "10.250.0.254";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A short id unique to this process and call, for namespace names.
pub fn unique_id() -> String {
    // The separator keeps (pid 1, call 23) and (pid 12, call 3) apart.
    format!(
        "wt{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs `ip` with `args`, panicking with its stderr on failure.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a program inside namespace `ns`.
pub fn exec(ns: &str, program: &str, args: &[&str]) -> Output {
    command_in(Some(ns), program)
        .args(args)
        .output()
        .expect("run in netns")
}

/// Runs a program inside namespace `ns`, panicking with its stderr on failure.
pub fn ip_netns_exec_ok(ns: &str, program: &str, args: &[&str]) {
    let out = exec(ns, program, args);
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `f` on a thread that has entered network namespace `ns` (a name, or a path such as
/// `/proc/PID/ns/net`).
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = if ns.starts_with('/') {
        ns.to_string()
    } else {
        format!("/var/run/netns/{ns}")
    };
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("netns thread panicked")
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: String) -> Netns {
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// One host of the bed: its namespace, underlay address, daemon and container.
pub struct Host {
    /// wireguard-go as a flannel wireguard host (`make_wggo_host`); dropped first.
    pub wggo: Option<super::wggo::WgGo>,
    pub weft: Option<Weft>,
    pub container: Option<Netns>,
    pub container_ip: Option<Ipv4Addr>,
    /// The container's IPv6 address (`attach_container6`).
    pub container_ip6: Option<Ipv6Addr>,
    pub ns: Netns,
    pub ip: Ipv4Addr,
    /// The host's IPv6 underlay address (fd00:250::<n>/64 on eth0).
    pub ip6: Ipv6Addr,
}

/// A bed of hosts joined by an underlay bridge, with etcd on the underlay. Fields drop in order:
/// daemons and containers first, then etcd, then the underlay.
pub struct Bed {
    pub hosts: Vec<Host>,
    pub etcd: Etcd,
    pub underlay: Netns,
    id: String,
    /// Receive/transmit queues of each host's underlay veth (the kernel's default unless `with_queues`:
    /// as many allocated as CPUs, one in use).
    queues: Option<usize>,
}

impl Bed {
    /// Two hosts running weft with their defaults, a container on each, pinging each other both ways;
    /// returns the bed and the containers' addresses.
    pub fn pinging_pair(config: &str) -> (Bed, Ipv4Addr, Ipv4Addr) {
        let mut bed = Bed::new(2, config);
        bed.start_weft(0, &[]);
        bed.start_weft(1, &[]);
        let c0 = bed.attach_container(0);
        let c1 = bed.attach_container(1);
        bed.wait_ping(0, c1, Duration::from_secs(20));
        bed.wait_ping(1, c0, Duration::from_secs(20));
        (bed, c0, c1)
    }

    /// A bed with `n` hosts (no daemons yet) and etcd running with `config` set.
    pub fn new(n: usize, config: &str) -> Bed {
        Bed::build(n, config, None)
    }

    /// As `new`, with `queues` receive and transmit queues on each host's underlay link (multi-queue, as
    /// a physical NIC has).
    pub fn with_queues(n: usize, config: &str, queues: usize) -> Bed {
        Bed::build(n, config, Some(queues))
    }

    fn build(n: usize, config: &str, queues: Option<usize>) -> Bed {
        let id = unique_id();
        let underlay = Netns::new(format!("{id}-ul"));
        let ul = underlay.name.as_str();
        ip(&["-n", ul, "link", "add", "br0", "type", "bridge"]);
        ip(&[
            "-n",
            ul,
            "addr",
            "add",
            &format!("{ETCD_IP}/24"),
            "dev",
            "br0",
        ]);
        ip(&["-n", ul, "link", "set", "br0", "up"]);
        let etcd = Etcd::start_in(ul, ETCD_IP);
        etcd.set_config(config);
        let mut bed = Bed {
            hosts: Vec::new(),
            etcd,
            underlay,
            id,
            queues,
        };
        for _ in 0..n {
            bed.add_host();
        }
        bed
    }

    /// Adds a host namespace on the underlay; returns its index.
    pub fn add_host(&mut self) -> usize {
        let i = self.hosts.len() + 1;
        let ns = Netns::new(format!("{}-h{i}", self.id));
        let ul = &self.underlay.name;
        let port = format!("p{i}");
        let mut args = vec!["link", "add", "eth0", "netns", &ns.name];
        let q = self.queues.map(|q| q.to_string());
        let queues = q
            .as_deref()
            .map(|q| vec!["numtxqueues", q, "numrxqueues", q])
            .unwrap_or_default();
        args.extend(&queues);
        args.extend(["type", "veth", "peer", "name", &port, "netns", ul]);
        args.extend(&queues);
        ip(&args);
        ip(&["-n", ul, "link", "set", &port, "master", "br0", "up"]);
        let addr = Ipv4Addr::new(10, 250, 0, i as u8);
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        // An IPv6 underlay address too (no duplicate address detection: usable at once), for dual-stack
        // networks; IPv4-only networks ignore it.
        let addr6 = Ipv6Addr::new(0xfd00, 0x250, 0, 0, 0, 0, 0, i as u16);
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{addr6}/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
        ip(&["-n", &ns.name, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns.name, "route", "add", "default", "via", ETCD_IP]);
        self.hosts.push(Host {
            ns,
            ip: addr,
            ip6: addr6,
            container_ip6: None,
            wggo: None,
            weft: None,
            container: None,
            container_ip: None,
        });
        i - 1
    }

    /// Starts weft on host `i` with its defaults (userspace data plane) plus `extra` flags.
    pub fn start_weft(&mut self, i: usize, extra: &[&str]) {
        let h = &mut self.hosts[i];
        let w = Weft::start_in(&self.etcd, &h.ns.name, &h.ip.to_string(), extra);
        h.weft = Some(w);
    }

    pub fn weft(&self, i: usize) -> &Weft {
        self.hosts[i]
            .weft
            .as_ref()
            .expect("weft started on this host")
    }

    /// Waits for host `i`'s lease, then builds what dockerd --bip would: a bridge with the subnet's .1
    /// and a container namespace with .2 behind it. Returns the container's address.
    pub fn attach_container(&mut self, i: usize) -> Ipv4Addr {
        let subnet = self.weft(i).wait_subnet();
        let (net, len) = subnet.split_once('/').expect("subnet with length");
        let base: Ipv4Addr = net.parse().expect("subnet address");
        self.add_container(i, base, len.parse().expect("prefix length"))
    }

    /// Builds a bridge `cbr0` with `<base>.1/len` on host `i` and a container namespace with `<base>.2`
    /// behind it, routed through the bridge. Returns the container's address.
    pub fn add_container(&mut self, i: usize, base: Ipv4Addr, len: u8) -> Ipv4Addr {
        let gw = Ipv4Addr::from(u32::from(base) + 1);
        let cip = Ipv4Addr::from(u32::from(base) + 2);
        let c = Netns::new(format!("{}-c{}", self.id, i + 1));
        let h = &self.hosts[i].ns.name;
        ip(&["-n", h, "link", "add", "cbr0", "type", "bridge"]);
        ip(&[
            "-n",
            h,
            "addr",
            "add",
            &format!("{gw}/{len}"),
            "dev",
            "cbr0",
        ]);
        ip(&["-n", h, "link", "set", "cbr0", "up"]);
        ip(&[
            "link", "add", "eth0", "netns", &c.name, "type", "veth", "peer", "name", "vc", "netns",
            h,
        ]);
        ip(&["-n", h, "link", "set", "vc", "master", "cbr0", "up"]);
        ip(&[
            "-n",
            &c.name,
            "addr",
            "add",
            &format!("{cip}/{len}"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &c.name, "link", "set", "eth0", "up"]);
        ip(&[
            "-n",
            &c.name,
            "route",
            "add",
            "default",
            "via",
            &gw.to_string(),
        ]);
        self.hosts[i].container = Some(c);
        self.hosts[i].container_ip = Some(cip);
        cip
    }

    /// On a dual-stack network: waits for host `i`'s IPv6 subnet, gives the bridge its ::1 and the container
    /// (attached before with `attach_container`) its ::2 with a default route, as dockerd --ipv6
    /// --fixed-cidr-v6 would. Returns the container's IPv6 address.
    pub fn attach_container6(&mut self, i: usize) -> Ipv6Addr {
        let subnet: ipnet::Ipv6Net = self.weft(i).wait_subnet6().parse().expect("IPv6 subnet");
        self.add_container6(i, subnet)
    }

    pub fn container_ip6(&self, i: usize) -> Ipv6Addr {
        self.hosts[i]
            .container_ip6
            .expect("container attached with IPv6")
    }

    /// Waits until container `from` reaches IPv6 address `to` by ping.
    pub fn wait_ping6(&self, from: usize, to: Ipv6Addr, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if self.ping6_once(from, to) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut why = String::new();
        for (i, h) in self.hosts.iter().enumerate() {
            let r = exec(&h.ns.name, "ip", &["-6", "route"]);
            let n = exec(&h.ns.name, "ip", &["-6", "neigh"]);
            why.push_str(&format!(
                "--- host {}: routes\n{}neigh\n{}",
                i + 1,
                String::from_utf8_lossy(&r.stdout),
                String::from_utf8_lossy(&n.stdout)
            ));
            if let Some(w) = &h.weft {
                why.push_str(&format!("status\n{}\nlog\n{}\n", w.status_text(), w.log()));
            }
        }
        wait_for(
            &format!("container {} to ping {to}\n{why}", from + 1),
            Duration::ZERO,
            || {
                exec(
                    &self.container_ns(from),
                    "ping",
                    &["-6", "-c1", "-W1", "-q", &to.to_string()],
                )
                .status
                .success()
                .then_some(())
            },
        );
    }

    /// As `transfer`, over IPv6 between the containers.
    pub fn transfer6(&self, from: usize, to: usize, bytes: usize) -> ((u64, usize), (u64, usize)) {
        transfer(
            &self.container_ns(from),
            &self.container_ns(to),
            self.container_ip6(to),
            bytes,
        )
    }

    pub fn container_ns(&self, i: usize) -> String {
        self.hosts[i]
            .container
            .as_ref()
            .expect("container attached")
            .name
            .clone()
    }

    pub fn container_ip(&self, i: usize) -> Ipv4Addr {
        self.hosts[i].container_ip.expect("container attached")
    }

    /// One ping from container `from` to `to`; true if answered.
    pub fn ping_once(&self, from: usize, to: Ipv4Addr) -> bool {
        exec(
            &self.container_ns(from),
            "ping",
            &["-c1", "-W1", "-q", &to.to_string()],
        )
        .status
        .success()
    }

    /// Waits until container `from` reaches `to` by ping.
    pub fn wait_ping(&self, from: usize, to: Ipv4Addr, timeout: Duration) {
        wait_for(
            &format!("container {} to ping {to}", from + 1),
            timeout,
            || self.ping_once(from, to).then_some(()),
        );
    }

    /// Sends `bytes` of pseudo-random data over TCP from container `from` to container `to`; returns the
    /// (sent, received) digests and lengths.
    pub fn transfer(&self, from: usize, to: usize, bytes: usize) -> ((u64, usize), (u64, usize)) {
        transfer(
            &self.container_ns(from),
            &self.container_ns(to),
            self.container_ip(to),
            bytes,
        )
    }
}

impl Bed {
    /// Sends UDP `payload` from `src` (an address of namespace `ns`) to `dst`.
    pub fn send_udp(ns: &str, src: Ipv4Addr, dst: std::net::SocketAddrV4, payload: Vec<u8>) {
        in_netns(ns, move || {
            let s = std::net::UdpSocket::bind((src, 0)).expect("bind sender");
            s.send_to(&payload, dst).expect("send");
        });
    }

    /// Host `i`'s lease as its peer `j` sees it: (subnet, VTEP MAC if vxlan).
    pub fn peer_view(&self, j: usize, i: usize) -> (String, Option<String>) {
        let st = self.weft(j).status().expect("status");
        let ip = self.hosts[i].ip.to_string();
        let p = st["peers"]
            .as_array()
            .expect("peers")
            .iter()
            .find(|p| p["public_ip"] == ip.as_str())
            .unwrap_or_else(|| panic!("host {j} does not see host {i}"))
            .clone();
        (
            p["subnet"].as_str().expect("subnet").to_string(),
            p["backend"]["vtep_mac"].as_str().map(str::to_string),
        )
    }

    /// Makes host `i` a plain Linux host with a kernel `flannel.1` as flanneld's vxlan backend sets it
    /// up: writes its lease for `subnet` to etcd, creates the device, and returns nothing; call
    /// `kernel_add_peer` for each other host.
    pub fn make_kernel_vxlan_host(&mut self, i: usize, subnet_base: Ipv4Addr, vtep_mac: &str) {
        let h = self.hosts[i].ns.name.clone();
        let hip = self.hosts[i].ip;
        let lease = format!(
            r#"{{"PublicIP":"{hip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{vtep_mac}"}}}}"#
        );
        let key = format!("/coreos.com/network/subnets/{subnet_base}-24");
        let out = self.etcd.etcdctl(&["put", &key, &lease]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        ip(&[
            "-n",
            &h,
            "link",
            "add",
            "flannel.1",
            "type",
            "vxlan",
            "id",
            "1",
            "local",
            &hip.to_string(),
            "dev",
            "eth0",
            "dstport",
            "8472",
            "nolearning",
        ]);
        ip(&[
            "-n",
            &h,
            "link",
            "set",
            "flannel.1",
            "address",
            vtep_mac,
            "mtu",
            "1450",
        ]);
        ip(&[
            "-n",
            &h,
            "addr",
            "add",
            &format!("{subnet_base}/32"),
            "dev",
            "flannel.1",
        ]);
        ip(&["-n", &h, "link", "set", "flannel.1", "up"]);
        let out = exec(&h, "sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
        assert!(out.status.success());
        // The container side, as dockerd --bip=<subnet>.1/24 would build it.
        self.add_container(i, subnet_base, 24);
    }

    /// On kernel host `i`, installs flanneld's neighbour, FDB and route entries for a peer lease.
    pub fn kernel_add_peer(&self, i: usize, peer_subnet: &str, peer_ip: Ipv4Addr, peer_mac: &str) {
        let h = &self.hosts[i].ns.name;
        let base = peer_subnet.split('/').next().expect("subnet");
        ip(&[
            "-n",
            h,
            "neigh",
            "replace",
            base,
            "lladdr",
            peer_mac,
            "dev",
            "flannel.1",
            "nud",
            "permanent",
        ]);
        ip_netns_exec_ok(
            h,
            "bridge",
            &[
                "fdb",
                "replace",
                peer_mac,
                "dst",
                &peer_ip.to_string(),
                "dev",
                "flannel.1",
                "self",
                "permanent",
            ],
        );
        ip(&[
            "-n",
            h,
            "route",
            "replace",
            peer_subnet,
            "via",
            base,
            "dev",
            "flannel.1",
            "onlink",
        ]);
    }
}

impl Bed {
    /// Starts weft on host `i` after the shell command `pre` (e.g. an `export` for fault injection).
    pub fn start_weft_with_pre(&mut self, i: usize, extra: &[&str], pre: &str) {
        let h = &mut self.hosts[i];
        let w = Weft::start_in_with(&self.etcd, &h.ns.name, &h.ip.to_string(), extra, pre);
        h.weft = Some(w);
    }

    /// Starts weft on host `i` with `/dev/net/tun` hidden, as on a host without tun support.
    pub fn start_weft_without_tun(&mut self, i: usize, extra: &[&str]) {
        let h = &mut self.hosts[i];
        let w = Weft::start_in_with(
            &self.etcd,
            &h.ns.name,
            &h.ip.to_string(),
            extra,
            "mount --bind /dev/null /dev/net/tun",
        );
        h.weft = Some(w);
    }

    /// Host `i`'s `flannel.1` entries as (neighbours, FDB, routes) text, one entry a line.
    pub fn kernel_entries(&self, i: usize) -> (String, String, String) {
        let h = &self.hosts[i].ns.name;
        let text = |o: Output| String::from_utf8_lossy(&o.stdout).into_owned();
        (
            text(exec(
                h,
                "ip",
                &["neigh", "show", "dev", "flannel.1", "nud", "permanent"],
            )),
            text(exec(h, "bridge", &["fdb", "show", "dev", "flannel.1"])),
            text(exec(h, "ip", &["route", "show", "dev", "flannel.1"])),
        )
    }
}

/// Sends `bytes` of pseudo-random data (in writes of 1 byte up to 64 KiB) over TCP from namespace `tx_ns`
/// to a listener on `to_ip` in `rx_ns`; returns the (sent, received) digests and lengths.
pub fn transfer(
    tx_ns: &str,
    rx_ns: &str,
    to_ip: impl Into<std::net::IpAddr>,
    bytes: usize,
) -> ((u64, usize), (u64, usize)) {
    let to_ip: std::net::IpAddr = to_ip.into();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let rx_ns = rx_ns.to_string();
    let receiver = std::thread::spawn(move || {
        in_netns(&rx_ns, move || {
            let l = TcpListener::bind((to_ip, 5201)).expect("listen in the container");
            ready_tx.send(()).expect("signal ready");
            let (mut s, _) = l.accept().expect("accept");
            s.set_read_timeout(Some(Duration::from_secs(30)))
                .expect("timeout");
            let mut h = std::collections::hash_map::DefaultHasher::new();
            let mut buf = vec![0u8; 1 << 16];
            let mut total = 0;
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        h.write(&buf[..n]);
                        total += n;
                    }
                    Err(e) => panic!("receive failed after {total} bytes: {e}"),
                }
            }
            (h.finish(), total)
        })
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("receiver ready");
    let sent = in_netns(tx_ns, move || {
        let mut s = TcpStream::connect_timeout(&(to_ip, 5201).into(), Duration::from_secs(10))
            .expect("connect");
        s.set_write_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut buf = vec![0u8; 1 << 16];
        let mut left = bytes;
        // Writes of varying sizes: 1 byte up to 64 KiB.
        let mut size = 1usize;
        while left > 0 {
            let n = size.min(left).min(buf.len());
            for b in buf[..n].iter_mut() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *b = state as u8;
            }
            s.write_all(&buf[..n]).expect("send");
            h.write(&buf[..n]);
            left -= n;
            size = if size >= 1 << 16 { 1 } else { size * 3 + 1 };
        }
        s.shutdown(std::net::Shutdown::Write).expect("shutdown");
        (h.finish(), bytes)
    });
    let got = receiver.join().expect("receiver thread");
    (sent, got)
}

/// Listens for UDP on `ip:port` inside namespace `ns` (bound before this returns) and collects what arrives
/// until nothing has for 3 s.
pub fn collect_udp(
    ns: &str,
    ip: impl Into<std::net::IpAddr>,
    port: u16,
) -> std::thread::JoinHandle<Vec<Vec<u8>>> {
    let (ip, ns) = (ip.into(), ns.to_string());
    let (bound_tx, bound) = std::sync::mpsc::channel();
    let listener = std::thread::spawn(move || {
        in_netns(&ns, move || {
            let s = std::net::UdpSocket::bind((ip, port)).expect("bind the listener");
            s.set_read_timeout(Some(Duration::from_secs(3)))
                .expect("timeout");
            bound_tx.send(()).expect("signal bound");
            let mut got = Vec::new();
            let mut buf = [0u8; 2048];
            while let Ok(n) = s.recv(&mut buf) {
                got.push(buf[..n].to_vec());
            }
            got
        })
    });
    bound
        .recv_timeout(Duration::from_secs(10))
        .expect("the listener bound its socket");
    listener
}

/// Accepts one TCP connection on `ip:port` inside namespace `ns` (after signalling `ready`) and returns
/// the peer's address as that namespace sees it.
pub fn accept_one(
    ns: &str,
    ip: Ipv4Addr,
    port: u16,
) -> (
    std::sync::mpsc::Receiver<()>,
    std::thread::JoinHandle<std::net::SocketAddr>,
) {
    let (tx, rx) = std::sync::mpsc::channel();
    let ns = ns.to_string();
    let h = std::thread::spawn(move || {
        in_netns(&ns, move || {
            let l = TcpListener::bind((ip, port)).expect("listen");
            tx.send(()).expect("ready");
            let (_, peer) = l.accept().expect("accept");
            peer
        })
    });
    (rx, h)
}

/// Connects from namespace `ns` to `ip:port` and closes; true if the connection was made.
pub fn connect_from(ns: &str, ip: Ipv4Addr, port: u16) -> bool {
    in_netns(ns, move || {
        TcpStream::connect_timeout(&(ip, port).into(), Duration::from_secs(5)).is_ok()
    })
}

/// A weft host (with `flags`) and a plain kernel flannel.1 host: pings and 20 MB byte-identical both ways.
pub fn mixed_cluster(config: &str, flags: &[&str]) -> Bed {
    let mut bed = Bed::new(2, config);
    bed.start_weft(0, flags);
    let c0 = bed.attach_container(0);
    let kernel_mac = "0e:00:00:00:01:02";
    bed.make_kernel_vxlan_host(1, "10.5.200.0".parse().unwrap(), kernel_mac);
    let c1 = bed.container_ip(1);
    // What flanneld on the kernel host would do for weft's lease.
    let st = super::wait_for(
        "weft to see the kernel host",
        Duration::from_secs(20),
        || {
            let st = bed.weft(0).status()?;
            (st["peers"].as_array()?.len() == 1).then_some(st)
        },
    );
    assert_eq!(st["peers"][0]["backend"]["vtep_mac"], kernel_mac);
    let lease = bed
        .etcd
        .get(&format!(
            "/coreos.com/network/subnets/{}",
            bed.weft(0).wait_subnet().replace('/', "-")
        ))
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&lease).unwrap();
    let weft_mac = v["BackendData"]["VtepMAC"].as_str().unwrap().to_string();
    bed.kernel_add_peer(1, &bed.weft(0).wait_subnet(), bed.hosts[0].ip, &weft_mac);
    bed.wait_ping(0, c1, Duration::from_secs(20));
    bed.wait_ping(1, c0, Duration::from_secs(20));
    for (from, to) in [(0, 1), (1, 0)] {
        let (sent, got) = bed.transfer(from, to, 20 << 20);
        assert_eq!(sent, got, "byte-identical from host {from} to host {to}");
    }
    bed
}

impl Bed {
    /// As `make_kernel_vxlan_host`, configured dual-stack as flanneld's vxlan backend sets a host up with
    /// EnableIPv6: also `flannel-v6.1` (`local` = the host's IPv6 underlay address, MAC `vtep_mac6`,
    /// `<subnet6 network>/128`), a dual-stack lease under flannel's key `<subnet>-24&<subnet6>-<len>` and
    /// value (`PublicIPv6`, `BackendV6Data`), and the container's IPv6 side. Call `kernel_add_peer` and
    /// `kernel_add_peer6` for each other host. Returns the container's IPv6 address.
    pub fn make_kernel_vxlan_host6(
        &mut self,
        i: usize,
        subnet_base: Ipv4Addr,
        subnet6: ipnet::Ipv6Net,
        vtep_mac: &str,
        vtep_mac6: &str,
    ) -> Ipv6Addr {
        self.make_kernel_vxlan_host(i, subnet_base, vtep_mac);
        let (hip, hip6) = (self.hosts[i].ip, self.hosts[i].ip6);
        // The lease in its dual-stack form: the new key first, then the IPv4-only one goes (as when a lease
        // gains its IPv6 half), so the IPv4 subnet is never without a lease.
        let lease = format!(
            r#"{{"PublicIP":"{hip}","PublicIPv6":"{hip6}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{vtep_mac}"}},"BackendV6Data":{{"VNI":1,"VtepMAC":"{vtep_mac6}"}}}}"#
        );
        let prefix = "/coreos.com/network/subnets";
        let key = format!(
            "{prefix}/{subnet_base}-24&{}-{}",
            subnet6.network(),
            subnet6.prefix_len()
        );
        for args in [
            vec!["put", key.as_str(), lease.as_str()],
            vec!["del", &format!("{prefix}/{subnet_base}-24")],
        ] {
            let out = self.etcd.etcdctl(&args);
            assert!(
                out.status.success(),
                "etcdctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.make_flannel_v6_device(i, subnet6, vtep_mac6);
        self.add_container6(i, subnet6)
    }

    /// `flannel-v6.1` on host `i` as flanneld's vxlan backend creates it: VNI 1, `local` = the host's IPv6
    /// underlay address, port 8472, MAC `vtep_mac6`, `<subnet6 network>/128`, up.
    pub fn make_flannel_v6_device(&self, i: usize, subnet6: ipnet::Ipv6Net, vtep_mac6: &str) {
        let h = self.hosts[i].ns.name.clone();
        let hip6 = self.hosts[i].ip6;
        // flanneld asks for the IPv4 device's MTU (underlay - 50); the kernel clamps an IPv6 VXLAN device to
        // underlay - 70 at creation (and would refuse 1450 later).
        ip(&[
            "-n",
            &h,
            "link",
            "add",
            "flannel-v6.1",
            "mtu",
            "1450",
            "type",
            "vxlan",
            "id",
            "1",
            "local",
            &hip6.to_string(),
            "dev",
            "eth0",
            "dstport",
            "8472",
            "nolearning",
        ]);
        ip(&[
            "-n",
            &h,
            "link",
            "set",
            "flannel-v6.1",
            "address",
            vtep_mac6,
        ]);
        ip(&[
            "-n",
            &h,
            "addr",
            "add",
            &format!("{}/128", subnet6.network()),
            "dev",
            "flannel-v6.1",
        ]);
        ip(&["-n", &h, "link", "set", "flannel-v6.1", "up"]);
    }

    /// Gives host `i`'s bridge `cbr0` the ::1 of `subnet6` and its container (from `add_container`) the ::2
    /// with a default route through it, and turns on IPv6 forwarding, as dockerd --ipv6 --fixed-cidr-v6
    /// would. Returns the container's IPv6 address.
    pub fn add_container6(&mut self, i: usize, subnet6: ipnet::Ipv6Net) -> Ipv6Addr {
        let base = u128::from(subnet6.network());
        let (gw, cip) = (Ipv6Addr::from(base + 1), Ipv6Addr::from(base + 2));
        let len = subnet6.prefix_len();
        let h = self.hosts[i].ns.name.clone();
        let c = self.container_ns(i);
        let (gw_cidr, cip_cidr) = (format!("{gw}/{len}"), format!("{cip}/{len}"));
        ip(&["-n", &h, "addr", "add", &gw_cidr, "dev", "cbr0", "nodad"]);
        ip(&["-n", &c, "addr", "add", &cip_cidr, "dev", "eth0", "nodad"]);
        ip(&[
            "-n",
            &c,
            "-6",
            "route",
            "add",
            "default",
            "via",
            &gw.to_string(),
        ]);
        ip_netns_exec_ok(&h, "sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"]);
        self.hosts[i].container_ip6 = Some(cip);
        cip
    }

    /// On kernel host `i`, installs flanneld's IPv6 neighbour, FDB and route entries on `flannel-v6.1` for
    /// a peer lease's IPv6 half.
    pub fn kernel_add_peer6(
        &self,
        i: usize,
        peer_subnet6: &str,
        peer_ip6: Ipv6Addr,
        peer_mac6: &str,
    ) {
        let h = &self.hosts[i].ns.name;
        let base = peer_subnet6.split('/').next().expect("IPv6 subnet");
        let dev = "flannel-v6.1";
        let neigh = [
            "neigh",
            "replace",
            base,
            "lladdr",
            peer_mac6,
            "dev",
            dev,
            "nud",
            "permanent",
        ];
        ip(&[&["-n", h, "-6"][..], &neigh[..]].concat());
        let dst = peer_ip6.to_string();
        let fdb = [
            "fdb",
            "replace",
            peer_mac6,
            "dst",
            &dst,
            "dev",
            dev,
            "self",
            "permanent",
        ];
        ip_netns_exec_ok(h, "bridge", &fdb);
        let route = [
            "route",
            "replace",
            peer_subnet6,
            "via",
            base,
            "dev",
            dev,
            "onlink",
        ];
        ip(&[&["-n", h, "-6"][..], &route[..]].concat());
    }

    /// Host `i`'s `flannel-v6.1` entries as (neighbours, FDB, routes) text, one entry a line; routes are
    /// the gateway routes only (not the device's own fe80::/64).
    pub fn kernel_entries6(&self, i: usize) -> (String, String, String) {
        let h = &self.hosts[i].ns.name;
        let text = |o: Output| String::from_utf8_lossy(&o.stdout).into_owned();
        let dev = "flannel-v6.1";
        let routes = text(exec(h, "ip", &["-6", "route", "show", "dev", dev]));
        (
            text(exec(
                h,
                "ip",
                &["-6", "neigh", "show", "dev", dev, "nud", "permanent"],
            )),
            text(exec(h, "bridge", &["fdb", "show", "dev", dev])),
            routes
                .lines()
                .filter(|l| l.contains(" via "))
                .map(|l| format!("{l}\n"))
                .collect(),
        )
    }

    /// One IPv6 ping from container `from` to `to`; true if answered.
    pub fn ping6_once(&self, from: usize, to: Ipv6Addr) -> bool {
        exec(
            &self.container_ns(from),
            "ping",
            &["-6", "-c1", "-W1", "-q", &to.to_string()],
        )
        .status
        .success()
    }
}
