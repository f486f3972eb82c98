//! weft as a drop-in for flanneld, with a real etcd in network namespaces: flanneld's command line
//! (single-dash flags, no subcommand) and `FLANNELD_*` environment, flanneld's interface flags
//! (`--iface-regex`, `--iface-can-reach`), its iptables and blackhole-route flags, and its Kubernetes
//! flags refused.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::netns::{exec, ip, Bed};
use common::{command_in, wait_for};

const T: Duration = Duration::from_secs(20);
const VXLAN: &str = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#;

/// A weft process started by hand (flanneld's way), killed and reaped on drop.
struct Proc(Child, tempfile::TempDir);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    fn log(&self) -> String {
        std::fs::read_to_string(self.1.path().join("log")).unwrap_or_default()
    }
}

/// Runs the weft binary in host namespace `ns` with `args` and `env`, no subcommand added.
fn spawn(ns: &str, args: &[&str], env: &[(&str, String)]) -> Proc {
    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let mut c: Command = command_in(Some(ns), env!("CARGO_BIN_EXE_weft"));
    c.args(args)
        .env("WIREGUARD_KEY_FILE", dir.path().join("wgkey"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    for (k, v) in env {
        c.env(k, v);
    }
    Proc(c.spawn().unwrap(), dir)
}

/// GET /status from a daemon in `ns` on `port`.
fn status(ns: &str, port: u16) -> Option<serde_json::Value> {
    let ns = ns.to_string();
    let (code, body) = common::netns::in_netns(&ns, move || common::http_get(port, "/status"))?;
    (code == 200).then(|| serde_json::from_str(&body).ok())?
}

#[test]
fn flanneld_command_line_and_environment_run_weft() {
    let bed = Bed::new(1, VXLAN);
    let ns = bed.hosts[0].ns.name.clone();
    let port = common::free_port();
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("subnet.env");
    // flanneld's own spelling: single-dash flags, Go's `-flag=value`, settings from FLANNELD_*.
    let p = spawn(
        &ns,
        &[
            &format!("-etcd-endpoints=http://{}:2379", common::netns::ETCD_IP),
            "-iface",
            "eth0",
            "-ip-masq=false",
            &format!("-subnet-file={}", env_file.display()),
        ],
        &[
            ("FLANNELD_HEALTHZ_PORT", port.to_string()),
            ("FLANNELD_ETCD_PREFIX", "/coreos.com/network".into()),
            ("FLANNELD_IPTABLES_FORWARD_RULES", "false".into()),
        ],
    );
    let st = wait_for(&format!("weft to lease\n{}", p.log()), T, || {
        status(&ns, port).filter(|s| s["lease"]["subnet"].is_string())
    });
    assert_eq!(st["lease"]["iface"], "eth0");
    let text = wait_for("subnet.env", T, || std::fs::read_to_string(&env_file).ok());
    assert!(text.contains("FLANNEL_IPMASQ=false"), "{text}");
    // FORWARD rules turned off through FLANNELD_IPTABLES_FORWARD_RULES: none of weft's chains.
    let rules = String::from_utf8_lossy(&exec(&ns, "iptables", &["-S"]).stdout).into_owned();
    assert!(!rules.contains("WEFT-FWD"), "{rules}");
    drop(p);

    // FLANNELD_* and WEFT_* for one setting, disagreeing: one line, exit 2.
    let out = command_in(Some(&ns), env!("CARGO_BIN_EXE_weft"))
        .args(["run", "--dataplane=none"])
        .env("FLANNELD_IFACE", "eth0")
        .env("WEFT_IFACE", "lo")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("FLANNELD_IFACE=\"eth0\" and WEFT_IFACE=\"lo\" disagree"),
        "{err}"
    );

    // flanneld's -version, and its Kubernetes flags refused by name.
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .arg("-version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("weft "));
    for (flag, env) in [
        ("-kube-subnet-mgr", None),
        ("--kubeconfig-file=/x", None),
        (
            "--dataplane=none",
            Some(("FLANNELD_KUBE_API_URL", "https://k8s")),
        ),
    ] {
        let mut c = command_in(Some(&ns), env!("CARGO_BIN_EXE_weft"));
        c.arg(flag);
        if let Some((k, v)) = env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag}: {err}");
        assert!(
            err.contains("Kubernetes flags") && err.contains("etcd-backed Docker hosts"),
            "{flag}: {err}"
        );
    }
}

#[test]
fn iface_regex_and_iface_can_reach_pick_the_underlay_as_flanneld_does() {
    let mut bed = Bed::new(1, VXLAN);
    let ns = bed.hosts[0].ns.name.clone();
    // A second interface on the host, with its own network behind it.
    // (This kernel has no dummy driver: a veth pair, both ends here.)
    ip(&[
        "-n", &ns, "link", "add", "data0", "type", "veth", "peer", "name", "data0p",
    ]);
    ip(&["-n", &ns, "addr", "add", "10.9.1.1/24", "dev", "data0"]);
    ip(&["-n", &ns, "link", "set", "data0p", "up"]);
    ip(&["-n", &ns, "link", "set", "data0", "up"]);
    for (flags, iface, public_ip) in [
        // --iface first; a name that is not there falls through to --iface-regex (over addresses).
        (
            vec!["--iface=nothere", "--iface-regex=10\\.9\\..*"],
            "data0",
            "10.9.1.1",
        ),
        // --iface-regex over names.
        (vec!["--iface-regex=eth.*"], "eth0", "10.250.0.1"),
        // --iface-can-reach: the interface the kernel routes that address out of.
        (vec!["--iface-can-reach=10.9.1.77"], "data0", "10.9.1.1"),
        (vec!["--iface-can-reach=10.250.0.254"], "eth0", "10.250.0.1"),
    ] {
        let mut f = vec!["--dataplane=none"];
        f.extend(flags.iter().copied());
        bed.start_weft(0, &f);
        let w = bed.weft(0);
        let st = wait_for(&format!("a lease with {flags:?}"), T, || {
            w.status().filter(|s| s["lease"]["iface"].is_string())
        });
        assert_eq!(st["lease"]["iface"], iface, "{flags:?}");
        assert_eq!(st["lease"]["public_ip"], public_ip, "{flags:?}");
        bed.hosts[0].weft.as_mut().unwrap().stop();
    }
    // Nothing matches: one line naming what was tried, exit 2 is not promised here but it stops.
    bed.start_weft(0, &["--dataplane=none", "--iface-regex=wlan.*"]);
    let w = bed.hosts[0].weft.as_mut().unwrap();
    assert!(w.wait_exit(T).is_some());
    assert!(
        w.log()
            .contains("none of --iface-regex wlan.* names an interface"),
        "{}",
        w.log()
    );
}

#[test]
fn iptables_forward_rules_by_default_masquerade_options_and_the_blackhole_route() {
    let mut bed = Bed::new(1, VXLAN);
    let ns = bed.hosts[0].ns.name.clone();
    // flanneld's default: FORWARD accepts the Network, even without --ip-masq.
    bed.start_weft(0, &["--dataplane=none", "--iptables-resync=1"]);
    let subnet = bed.weft(0).wait_subnet();
    let rules = || String::from_utf8_lossy(&exec(&ns, "iptables", &["-S"]).stdout).into_owned();
    let nat = || {
        String::from_utf8_lossy(&exec(&ns, "iptables", &["-t", "nat", "-S"]).stdout).into_owned()
    };
    wait_for("the FORWARD rules", T, || {
        rules()
            .contains("-A WEFT-FWD -s 10.5.0.0/16 -j ACCEPT")
            .then_some(())
    });
    assert!(
        !nat().contains("WEFT-POSTRTG"),
        "no masquerading unless asked"
    );
    // Removed by hand: back within --iptables-resync (1 s) plus a margin.
    let out = exec(&ns, "iptables", &["-F", "WEFT-FWD"]);
    assert!(out.status.success());
    let t = std::time::Instant::now();
    wait_for("the FORWARD rules put back", Duration::from_secs(5), || {
        rules()
            .contains("-A WEFT-FWD -d 10.5.0.0/16 -j ACCEPT")
            .then_some(())
    });
    eprintln!("put back after {:?}", t.elapsed());
    bed.hosts[0].weft.as_mut().unwrap().stop();
    assert!(!rules().contains("WEFT-FWD"), "removed on a clean stop");

    // --ip-masq with --ip-masq-fully-random-disable; --iptables-forward-rules=false; the blackhole route.
    bed.start_weft(
        0,
        &[
            "--dataplane=none",
            "--ip-masq",
            "--ip-masq-fully-random-disable",
            "--iptables-forward-rules=false",
            "--ip-blackhole-route",
        ],
    );
    assert_eq!(
        bed.weft(0).wait_subnet(),
        subnet,
        "same subnet after the restart"
    );
    wait_for("the masquerade rules", T, || {
        nat()
            .contains("-A WEFT-POSTRTG -s 10.5.0.0/16 ! -d 224.0.0.0/4 -j MASQUERADE")
            .then_some(())
    });
    assert!(!nat().contains("random-fully"), "{}", nat());
    assert!(!rules().contains("WEFT-FWD"), "{}", rules());
    let routes =
        String::from_utf8_lossy(&exec(&ns, "ip", &["route", "show", "type", "blackhole"]).stdout)
            .into_owned();
    assert!(routes.contains(&format!("blackhole {subnet}")), "{routes}");
}

/// A lease key without an etcd lease is a reservation, as in flannel: the host with its PublicIP gets
/// exactly that subnet (before its previous subnet.env's), keeps it without a TTL, and no other host takes
/// it, even one whose previous subnet.env names it.
#[test]
fn a_reservation_is_taken_by_its_host_only_and_stays_a_reservation() {
    let etcd = common::Etcd::start();
    etcd.set_config(VXLAN);
    let key = "/coreos.com/network/subnets/10.5.77.0-24";
    let value = r#"{"PublicIP":"127.0.0.7","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:aa:bb:cc:dd:07"}}"#;
    let out = etcd.etcdctl(&["put", key, value]);
    assert!(out.status.success(), "{out:?}");
    let lease_of = |etcd: &common::Etcd| {
        let out = etcd.etcdctl(&["get", key, "-w", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (
            v["kvs"][0]["lease"].as_i64().unwrap_or(0),
            v["kvs"][0]["value"].is_string(),
        )
    };
    // Another host first, whose previous subnet.env names the reserved subnet.
    let mut b = common::Weft::start(&etcd, "127.0.0.8", &[]);
    let b_subnet = b.wait_subnet();
    assert_ne!(b_subnet, "10.5.77.0/24");
    b.stop();
    let text = std::fs::read_to_string(b.subnet_file()).unwrap();
    let prefix = b_subnet.trim_end_matches(".0/24");
    std::fs::write(
        b.subnet_file(),
        text.replace(&format!("{prefix}.1/24"), "10.5.77.1/24"),
    )
    .unwrap();
    b.start_again();
    assert_eq!(
        b.wait_subnet(),
        b_subnet,
        "never the subnet reserved for another host"
    );
    // The host it is reserved for takes it, and it stays a reservation (no etcd lease).
    let mut a = common::Weft::start(
        &etcd,
        "127.0.0.7",
        &["--subnet-lease-ttl=3s", "--subnet-lease-renew-margin=1s"],
    );
    assert_eq!(a.wait_subnet(), "10.5.77.0/24");
    assert!(a.log().contains("is reserved for this host"), "{}", a.log());
    assert_eq!(
        lease_of(&etcd),
        (0, true),
        "still a key without an etcd lease"
    );
    let v: serde_json::Value = serde_json::from_str(&etcd.get(key).unwrap()).unwrap();
    assert_eq!(
        v["BackendData"]["VtepMAC"], "02:aa:bb:cc:dd:07",
        "the reservation's VTEP MAC kept"
    );
    // Stopped well past the TTL weft would give a lease: the reservation is still there, marked.
    a.stop();
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(lease_of(&etcd), (0, true));
    let out = etcd.weft(&["leases"]);
    let list = String::from_utf8_lossy(&out.stdout);
    let line = list
        .lines()
        .find(|l| l.starts_with("10.5.77.0/24"))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(line.contains("reserved"), "{list}");
    a.start_again();
    assert_eq!(a.wait_subnet(), "10.5.77.0/24");
}
