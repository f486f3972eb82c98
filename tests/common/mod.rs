//! Test fixtures: a real etcd server and real weft daemons, each stopped and removed on drop.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod docker;
pub mod netns;
pub mod packets;
pub mod wggo;

/// A command for `program`, run inside network namespace `ns` when given.
pub fn command_in(ns: Option<&str>, program: &str) -> Command {
    match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, program]);
            c
        }
        None => Command::new(program),
    }
}

/// A port that is free on 127.0.0.1 and stays so until a fixture binds it: below the kernel's ephemeral
/// range (32768-60999 by default), so no outgoing connection takes it in the meantime, and never the same
/// one twice in this process (tests start daemons and etcds in parallel; a daemon whose port another took
/// cannot serve, and its status would be read from the other one).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Processes (concurrent test binaries) start at different places of the range.
    let offset = std::process::id().wrapping_mul(2_654_435_761) % COUNT;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < COUNT, "no free port left in {FIRST}..{}", FIRST + COUNT);
        let port = (FIRST + (offset + n) % COUNT) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Polls `f` until it returns Some, or panics after `timeout` naming `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A plain HTTP/1.0 GET against 127.0.0.1; returns (status, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// Paths of client TLS material for an etcd started with TLS.
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A real etcd server on a free loopback port with a temporary data dir.
pub struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub client_port: u16,
    peer_port: u16,
    tls: Option<TlsFiles>,
    /// Network namespace and address it serves on (None: the test's own namespace, 127.0.0.1).
    ns: Option<String>,
    host: String,
    /// Member name and `--initial-cluster` (a one-member cluster of its own unless part of `EtcdCluster`).
    name: String,
    initial_cluster: Option<String>,
}

impl Etcd {
    pub fn start() -> Etcd {
        Self::start_with(false)
    }

    /// etcd that requires client certificates signed by a CA made for this test.
    pub fn start_tls() -> Etcd {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Etcd {
        let dir = tempfile::Builder::new()
            .prefix("weft-etcd-")
            .tempdir()
            .expect("tempdir");
        let tls = tls.then(|| make_certs(dir.path()));
        let mut e = Etcd {
            child: None,
            dir,
            client_port: free_port(),
            peer_port: free_port(),
            tls,
            ns: None,
            host: "127.0.0.1".into(),
            name: "t".into(),
            initial_cluster: None,
        };
        e.spawn();
        e
    }

    /// etcd inside network namespace `ns`, serving on `ip:2379`.
    pub fn start_in(ns: &str, ip: &str) -> Etcd {
        let dir = tempfile::Builder::new()
            .prefix("weft-etcd-")
            .tempdir()
            .expect("tempdir");
        let mut e = Etcd {
            child: None,
            dir,
            client_port: 2379,
            peer_port: 2380,
            tls: None,
            ns: Some(ns.to_string()),
            host: ip.to_string(),
            name: "t".into(),
            initial_cluster: None,
        };
        e.spawn();
        e
    }

    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.host, self.client_port)
    }

    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    fn spawn(&mut self) {
        let data = self.dir.path().join("data");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("etcd log");
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let cluster = self
            .initial_cluster
            .clone()
            .unwrap_or_else(|| format!("{}={peer}", self.name));
        let mut cmd = command_in(self.ns.as_deref(), "etcd");
        cmd.arg(format!("--name={}", self.name))
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls={}", self.endpoint()))
            .arg(format!("--advertise-client-urls={}", self.endpoint()))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={cluster}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        if let Some(t) = &self.tls {
            let d = self.dir.path();
            cmd.arg(format!("--cert-file={}", d.join("server.pem").display()))
                .arg(format!("--key-file={}", d.join("server-key.pem").display()))
                .arg(format!("--trusted-ca-file={}", t.ca.display()))
                .arg("--client-cert-auth");
        }
        let child = cmd
            .spawn()
            .expect("start etcd (install Debian's etcd-server: the README's test command does)");
        self.child = Some(child);
        if self.initial_cluster.is_some() {
            // A member answers only once a quorum is up: the cluster waits for all of them.
            return;
        }
        wait_for("etcd to answer", Duration::from_secs(20), || {
            self.etcdctl(&["endpoint", "health"])
                .status
                .success()
                .then_some(())
        });
    }

    /// Runs etcdctl against this server.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        self.etcdctl_with_input(args, "")
    }

    /// Runs etcdctl against this server with `input` on its standard input (e.g. `txn`).
    pub fn etcdctl_with_input(&self, args: &[&str], input: &str) -> Output {
        let mut cmd = command_in(self.ns.as_deref(), "etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint()))
            .arg("--dial-timeout=2s")
            .arg("--command-timeout=3s");
        if let Some(t) = &self.tls {
            cmd.arg(format!("--cacert={}", t.ca.display()))
                .arg(format!("--cert={}", t.cert.display()))
                .arg(format!("--key={}", t.key.display()));
        }
        let mut child = cmd
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run etcdctl");
        let mut stdin = child.stdin.take().expect("etcdctl stdin");
        stdin
            .write_all(input.as_bytes())
            .expect("write etcdctl input");
        drop(stdin);
        child.wait_with_output().expect("run etcdctl")
    }

    /// The value of a key, if present.
    pub fn get(&self, key: &str) -> Option<String> {
        let out = self.etcdctl(&["get", key, "--print-value-only"]);
        assert!(
            out.status.success(),
            "etcdctl get failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (!v.is_empty()).then_some(v)
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Flags that point weft at this server.
    pub fn weft_args(&self) -> Vec<String> {
        let mut v = vec![format!("--etcd-endpoints={}", self.endpoint())];
        if let Some(t) = &self.tls {
            v.push(format!("--etcd-cafile={}", t.ca.display()));
            v.push(format!("--etcd-certfile={}", t.cert.display()));
            v.push(format!("--etcd-keyfile={}", t.key.display()));
        }
        v
    }

    /// Runs a weft command against this etcd, from etcd's namespace.
    pub fn weft(&self, args: &[&str]) -> Output {
        weft_in(self.ns.as_deref(), &self.weft_args(), args)
    }

    /// Writes a network config through `weft config set`.
    pub fn set_config(&self, json: &str) {
        let out = self.weft(&["config", "set", json]);
        assert!(
            out.status.success(),
            "weft config set failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A real three-member etcd cluster on loopback ports, each member with its own data dir.
pub struct EtcdCluster {
    pub members: Vec<Etcd>,
}

impl EtcdCluster {
    pub fn start() -> EtcdCluster {
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let members: Vec<Etcd> = ports
            .iter()
            .enumerate()
            .map(|(i, &(client_port, peer_port))| {
                let mut e = Etcd {
                    child: None,
                    dir: tempfile::Builder::new()
                        .prefix("weft-etcd-")
                        .tempdir()
                        .expect("tempdir"),
                    client_port,
                    peer_port,
                    tls: None,
                    ns: None,
                    host: "127.0.0.1".into(),
                    name: format!("m{i}"),
                    initial_cluster: Some(cluster.clone()),
                };
                e.spawn();
                e
            })
            .collect();
        for m in &members {
            wait_for(
                "the etcd cluster to answer",
                Duration::from_secs(30),
                || {
                    m.etcdctl(&["endpoint", "health"])
                        .status
                        .success()
                        .then_some(())
                },
            );
        }
        EtcdCluster { members }
    }

    /// The members' endpoints, comma-separated, in member order.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(Etcd::endpoint)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn make_certs(dir: &Path) -> TlsFiles {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=weft-test-ca",
        "-keyout",
        "ca-key.pem",
        "-out",
        "ca.pem",
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, cn) in [("server", "127.0.0.1"), ("client", "weft-client")] {
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            &format!("{name}-key.pem"),
            "-out",
            &format!("{name}.csr"),
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ]);
    }
    TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("client.pem"),
        key: dir.join("client-key.pem"),
    }
}

/// Runs the weft binary to completion with `common` flags after the subcommand words in `args`.
pub fn weft(common: &[String], args: &[&str]) -> Output {
    weft_in(None, common, args)
}

/// Runs `weft docker-opts -c` on a subnet.env and returns the text of the options file it wrote.
pub fn docker_opts_file(subnet_file: &Path) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("docker_opts.env");
    let (f, d) = (
        subnet_file.to_str().expect("utf-8"),
        dest.to_str().expect("utf-8"),
    );
    let out = weft(&[], &["docker-opts", "-f", f, "-d", d, "-c"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(dest).expect("options file")
}

/// Runs the weft binary to completion inside namespace `ns` (or here).
pub fn weft_in(ns: Option<&str>, common: &[String], args: &[&str]) -> Output {
    // Subcommand words first, then the shared flags (`config set JSON --etcd-endpoints ...`).
    command_in(ns, env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .args(common)
        .env_remove("WEFT_LOG")
        .output()
        .expect("run weft")
}

/// A running `weft run` daemon with its own subnet file and health port.
pub struct Weft {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub public_ip: String,
    pub healthz_port: u16,
    args: Vec<String>,
    /// The host's network namespace (None: the test's own, with the data plane off).
    ns: Option<String>,
    /// A shell snippet run before weft inside a private mount namespace (e.g. to hide /dev/net/tun).
    pre: Option<String>,
}

impl Weft {
    /// Starts a control-plane-only daemon in the test's namespace for host `public_ip` (any
    /// loopback-range string; no traffic is sent to it).
    pub fn start(etcd: &Etcd, public_ip: &str, extra: &[&str]) -> Weft {
        let mut args = vec![
            "--iface=lo".to_string(),
            format!("--public-ip={public_ip}"),
            "--dataplane=none".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::launch(etcd, None, public_ip, args, None)
    }

    /// Starts a daemon inside host namespace `ns` whose underlay address is `public_ip`.
    pub fn start_in(etcd: &Etcd, ns: &str, public_ip: &str, extra: &[&str]) -> Weft {
        let args = extra.iter().map(|s| s.to_string()).collect();
        Self::launch(etcd, Some(ns.to_string()), public_ip, args, None)
    }

    /// A control-plane-only daemon (as `start`) given its etcd endpoints as they are (any list, dead ones
    /// included).
    pub fn start_with_endpoints(endpoints: &str, public_ip: &str, extra: &[&str]) -> Weft {
        let mut args = vec![
            format!("--etcd-endpoints={endpoints}"),
            "--iface=lo".to_string(),
            format!("--public-ip={public_ip}"),
            "--dataplane=none".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::launch_with(None, public_ip, args, None)
    }

    fn launch(
        etcd: &Etcd,
        ns: Option<String>,
        public_ip: &str,
        extra: Vec<String>,
        pre: Option<String>,
    ) -> Weft {
        let mut args = etcd.weft_args();
        args.extend(extra);
        Self::launch_with(ns, public_ip, args, pre)
    }

    fn launch_with(
        ns: Option<String>,
        public_ip: &str,
        args: Vec<String>,
        pre: Option<String>,
    ) -> Weft {
        let dir = tempfile::Builder::new()
            .prefix("weft-host-")
            .tempdir()
            .expect("tempdir");
        let mut w = Weft {
            child: None,
            dir,
            public_ip: public_ip.to_string(),
            healthz_port: free_port(),
            args,
            ns,
            pre,
        };
        w.spawn();
        w
    }

    /// Like `start_in`, but runs `pre` (shell) first in a private mount namespace.
    pub fn start_in_with(
        etcd: &Etcd,
        ns: &str,
        public_ip: &str,
        extra: &[&str],
        pre: &str,
    ) -> Weft {
        let args = extra.iter().map(|s| s.to_string()).collect();
        Self::launch(
            etcd,
            Some(ns.to_string()),
            public_ip,
            args,
            Some(pre.to_string()),
        )
    }

    /// GET on the daemon's HTTP endpoint (inside its namespace).
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let port = self.healthz_port;
        match &self.ns {
            None => http_get(port, path),
            Some(ns) => {
                let path = path.to_string();
                netns::in_netns(ns, move || http_get(port, &path))
            }
        }
    }

    /// The value of a Prometheus line such as `weft_drops_total{reason="bad_vni"}`.
    pub fn metric(&self, line_start: &str) -> Option<u64> {
        let (_, text) = self.get("/metrics")?;
        text.lines()
            .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
    }

    pub fn subnet_file(&self) -> PathBuf {
        self.dir.path().join("subnet.env")
    }

    /// The daemon's WireGuard key file (created by the daemon on the wireguard backend).
    pub fn wg_key_file(&self) -> PathBuf {
        self.dir.path().join("wgkey")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("weft.log")).unwrap_or_default()
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("weft.log"))
            .expect("weft log");
        let mut cmd = match &self.pre {
            None => command_in(self.ns.as_deref(), env!("CARGO_BIN_EXE_weft")),
            Some(pre) => {
                let mut c = Command::new("unshare");
                c.args(["--mount", "--propagation", "private", "sh", "-c"])
                    .arg(format!("{pre} && exec ip netns exec \"$0\" \"$@\""))
                    .arg(self.ns.as_deref().expect("a namespace"))
                    .arg(env!("CARGO_BIN_EXE_weft"));
                c
            }
        };
        let child = cmd
            .arg("run")
            .args(&self.args)
            .arg(format!("--subnet-file={}", self.subnet_file().display()))
            .arg(format!("--healthz-port={}", self.healthz_port))
            .env("WEFT_LOG", "debug")
            // Each daemon its own WireGuard key (the wireguard backend), kept across its restarts.
            .env("WIREGUARD_KEY_FILE", self.wg_key_file())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start weft run");
        self.child = Some(child);
    }

    /// What `weft status` prints for this daemon (run in its namespace).
    pub fn status_text(&self) -> String {
        let out = command_in(self.ns.as_deref(), env!("CARGO_BIN_EXE_weft"))
            .args(["status", &format!("--healthz-port={}", self.healthz_port)])
            .output()
            .expect("run weft status");
        assert!(out.status.success(), "weft status: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The daemon's /status JSON, if it answers.
    pub fn status(&self) -> Option<Value> {
        let (code, body) = self.get("/status")?;
        (code == 200).then(|| serde_json::from_str(&body).ok())?
    }

    /// Our leased subnet as the daemon reports it.
    pub fn subnet(&self) -> Option<String> {
        let st = self.status()?;
        // Only our own daemon's answer counts (not another one's that holds the port).
        if st["lease"]["public_ip"].as_str() != Some(self.public_ip.as_str()) {
            return None;
        }
        st["lease"]["subnet"].as_str().map(str::to_string)
    }

    /// The IPv6 subnet the daemon holds on a dual-stack network, if any yet.
    pub fn subnet6(&self) -> Option<String> {
        let st = self.status()?;
        if st["lease"]["public_ip"].as_str() != Some(self.public_ip.as_str()) {
            return None;
        }
        st["lease"]["subnet6"].as_str().map(str::to_string)
    }

    /// Waits until the daemon holds a dual-stack lease and returns its IPv6 subnet.
    pub fn wait_subnet6(&self) -> String {
        wait_for(
            &format!(
                "daemon {} to lease an IPv6 subnet\n{}",
                self.public_ip,
                self.log()
            ),
            Duration::from_secs(30),
            || self.subnet6(),
        )
    }

    /// Waits until the daemon holds a lease and returns its subnet.
    pub fn wait_subnet(&self) -> String {
        wait_for(
            &format!(
                "daemon {} to lease a subnet\n{}",
                self.public_ip,
                self.log()
            ),
            Duration::from_secs(30),
            || self.subnet(),
        )
    }

    /// The peers' subnets in the daemon's route table, sorted.
    pub fn peer_subnets(&self) -> Option<Vec<String>> {
        let st = self.status()?;
        let mut v: Vec<String> = st["peers"]
            .as_array()?
            .iter()
            .filter_map(|p| p["subnet"].as_str().map(str::to_string))
            .collect();
        v.sort();
        Some(v)
    }

    /// Waits until the route table holds exactly `want` (sorted subnets).
    pub fn wait_peers(&self, want: &[String], timeout: Duration) {
        let mut want = want.to_vec();
        want.sort();
        wait_for(
            &format!("daemon {} to see peers {want:?}", self.public_ip),
            timeout,
            || (self.peer_subnets()? == want).then_some(()),
        );
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    /// True while the process has not exited.
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Waits for the process to exit by itself and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut().expect("daemon was started");
        let status = wait_for("the daemon to exit", timeout, || {
            child.try_wait().ok().flatten()
        });
        self.child = None;
        status.code()
    }

    /// SIGTERM, then wait (SIGKILL after 10 s).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the process the hard way, as a crashed host would stop.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the daemon again after `kill` (a crash), with the same flags and subnet file.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the daemon is not running");
        self.healthz_port = free_port();
        self.spawn();
    }

    /// Starts the daemon again with the same flags and subnet file.
    pub fn restart(&mut self) {
        self.stop();
        self.healthz_port = free_port();
        self.spawn();
    }
}

impl Drop for Weft {
    fn drop(&mut self) {
        self.kill();
    }
}
