//! Control-plane tests against a real etcd: leases, the peer route table, restarts, outages, config and TLS.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{wait_for, weft, Etcd, Weft};

const VXLAN: &str = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#;
const T: Duration = Duration::from_secs(20);

fn others(all: &[String], me: usize) -> Vec<String> {
    all.iter()
        .enumerate()
        .filter(|(i, _)| *i != me)
        .map(|(_, s)| s.clone())
        .collect()
}

#[test]
fn three_daemons_get_distinct_subnets_and_see_each_other() {
    let etcd = Etcd::start();
    etcd.set_config(VXLAN);
    let hosts: Vec<Weft> = (1..=3)
        .map(|i| Weft::start(&etcd, &format!("127.10.0.{i}"), &[]))
        .collect();
    let subnets: Vec<String> = hosts.iter().map(|h| h.wait_subnet()).collect();
    assert_eq!(
        subnets.iter().collect::<HashSet<_>>().len(),
        3,
        "{subnets:?}"
    );
    for (i, h) in hosts.iter().enumerate() {
        h.wait_peers(&others(&subnets, i), T);
    }
    // subnet.env in flannel's form, for dockerd.
    let env = std::fs::read_to_string(hosts[0].subnet_file()).unwrap();
    let dot1 = subnets[0].replace(".0/24", ".1/24");
    assert_eq!(env, format!("FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET={dot1}\nFLANNEL_MTU=65486\nFLANNEL_IPMASQ=false\n"));
    // The lease value is flannel's JSON.
    let key = format!(
        "/coreos.com/network/subnets/{}",
        subnets[0].replace('/', "-")
    );
    let v: serde_json::Value = serde_json::from_str(&etcd.get(&key).unwrap()).unwrap();
    assert_eq!(v["PublicIP"], "127.10.0.1");
    assert!(v["PublicIPv6"].is_null());
    assert_eq!(v["BackendType"], "vxlan");
    assert_eq!(v["BackendData"]["VNI"], 1);
    assert_eq!(v["BackendData"]["VtepMAC"].as_str().unwrap().len(), 17);
    // Peers carry the VTEP MAC from the lease.
    let st = hosts[1].status().unwrap();
    let p = st["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["subnet"] == subnets[0].as_str())
        .unwrap()
        .clone();
    assert_eq!(p["public_ip"], "127.10.0.1");
    assert_eq!(p["backend"]["vtep_mac"], v["BackendData"]["VtepMAC"]);
    // weft leases lists all three.
    let out = weft(&etcd.weft_args(), &["leases"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for s in &subnets {
        assert!(text.contains(s.as_str()), "{text}");
    }
    assert!(text.contains("23h59m"), "{text}");
    // /metrics reports peers and the lease; /readyz is 200.
    let (code, m) = hosts[2].get("/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(
        m.contains("weft_peers 2\n") && m.contains("weft_lease_held 1\n"),
        "{m}"
    );
    assert_eq!(hosts[2].get("/readyz").unwrap().0, 200);
}

#[test]
fn twenty_daemons_started_at_once_get_twenty_distinct_subnets() {
    let etcd = Etcd::start();
    // A small network makes collisions likely: 30 subnets for 20 hosts.
    etcd.set_config(r#"{"Network":"10.7.0.0/16","SubnetLen":24,"SubnetMin":"10.7.1.0","SubnetMax":"10.7.30.0","Backend":{"Type":"udp"}}"#);
    let hosts: Vec<Weft> = (1..=20)
        .map(|i| Weft::start(&etcd, &format!("127.11.0.{i}"), &[]))
        .collect();
    let subnets: Vec<String> = hosts.iter().map(|h| h.wait_subnet()).collect();
    let distinct: HashSet<&String> = subnets.iter().collect();
    assert_eq!(distinct.len(), 20, "{subnets:?}");
    let out = etcd.etcdctl(&[
        "get",
        "/coreos.com/network/subnets/",
        "--prefix",
        "--keys-only",
    ]);
    let keys = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .count();
    assert_eq!(keys, 20);
    for (i, h) in hosts.iter().enumerate() {
        h.wait_peers(&others(&subnets, i), T);
    }
}

#[test]
fn restarted_daemon_gets_the_same_subnet() {
    let etcd = Etcd::start();
    etcd.set_config(VXLAN);
    let mut a = Weft::start(&etcd, "127.12.0.1", &[]);
    let b = Weft::start(&etcd, "127.12.0.2", &[]);
    let sa = a.wait_subnet();
    let sb = b.wait_subnet();
    let key = format!("/coreos.com/network/subnets/{}", sa.replace('/', "-"));
    let mac = |v: String| {
        serde_json::from_str::<serde_json::Value>(&v).unwrap()["BackendData"]["VtepMAC"].clone()
    };
    let mac_before = mac(etcd.get(&key).unwrap());
    a.restart();
    assert_eq!(a.wait_subnet(), sa);
    assert_eq!(
        mac(etcd.get(&key).unwrap()),
        mac_before,
        "VTEP MAC kept across restarts"
    );
    // Even without the old subnet.env, the lease carrying our public IP is reused.
    a.stop();
    std::fs::remove_file(a.subnet_file()).unwrap();
    a.restart();
    assert_eq!(a.wait_subnet(), sa);
    a.wait_peers(std::slice::from_ref(&sb), T);
    b.wait_peers(&[sa], T);
}

#[test]
fn deleted_lease_leaves_peers_tables_and_a_live_host_reclaims_its_own() {
    let etcd = Etcd::start();
    etcd.set_config(VXLAN);
    let a = Weft::start(&etcd, "127.13.0.1", &[]);
    let b = Weft::start(&etcd, "127.13.0.2", &[]);
    let mut c = Weft::start(&etcd, "127.13.0.3", &[]);
    let (sa, sb, sc) = (a.wait_subnet(), b.wait_subnet(), c.wait_subnet());
    a.wait_peers(&[sb.clone(), sc.clone()], T);
    // Host C dies; the operator removes its lease: A and B drop its subnet.
    c.kill();
    let out = etcd.etcdctl(&[
        "del",
        &format!("/coreos.com/network/subnets/{}", sc.replace('/', "-")),
    ]);
    assert!(out.status.success());
    a.wait_peers(std::slice::from_ref(&sb), T);
    b.wait_peers(std::slice::from_ref(&sa), T);
    // A live host whose key is deleted puts it back with the same subnet.
    let key_b = format!("/coreos.com/network/subnets/{}", sb.replace('/', "-"));
    assert!(etcd.etcdctl(&["del", &key_b]).status.success());
    wait_for("B to re-create its lease", T, || etcd.get(&key_b));
    assert_eq!(b.subnet().unwrap(), sb);
    a.wait_peers(&[sb], T);
}

#[test]
fn etcd_outage_keeps_daemons_and_subnets_and_watch_resumes() {
    let mut etcd = Etcd::start();
    etcd.set_config(VXLAN);
    let mut hosts: Vec<Weft> = (1..=3)
        .map(|i| Weft::start(&etcd, &format!("127.14.0.{i}"), &[]))
        .collect();
    let subnets: Vec<String> = hosts.iter().map(|h| h.wait_subnet()).collect();
    for (i, h) in hosts.iter().enumerate() {
        h.wait_peers(&others(&subnets, i), T);
    }
    etcd.stop();
    let down_since = std::time::Instant::now();
    wait_for("a daemon to notice etcd is gone", T, || {
        (hosts[0].status()?["etcd_connected"] == false).then_some(())
    });
    while down_since.elapsed() < Duration::from_secs(12) {
        for h in hosts.iter_mut() {
            assert!(h.running(), "daemon exited during the outage:\n{}", h.log());
            assert_eq!(
                h.status().unwrap()["ready"],
                true,
                "still serving during the outage"
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    etcd.restart();
    hosts.push(Weft::start(&etcd, "127.14.0.4", &[]));
    let mut all = subnets.clone();
    all.push(hosts[3].wait_subnet());
    for (i, h) in hosts.iter_mut().enumerate() {
        assert!(h.running());
        h.wait_peers(&others(&all, i), Duration::from_secs(30));
        assert_eq!(h.subnet().unwrap(), all[i]);
        wait_for("etcd_connected again", T, || {
            (h.status()?["etcd_connected"] == true).then_some(())
        });
    }
    for (i, s) in subnets.iter().enumerate() {
        let v = etcd
            .get(&format!(
                "/coreos.com/network/subnets/{}",
                s.replace('/', "-")
            ))
            .unwrap();
        assert!(v.contains(&format!("\"127.14.0.{}\"", i + 1)), "{v}");
    }
}

#[test]
fn subnet_taken_by_another_host_is_a_loud_exit() {
    let etcd = Etcd::start();
    etcd.set_config(VXLAN);
    let mut a = Weft::start(&etcd, "127.15.0.1", &[]);
    let sa = a.wait_subnet();
    let key = format!("/coreos.com/network/subnets/{}", sa.replace('/', "-"));
    let out = etcd.etcdctl(&["put", &key, r#"{"PublicIP":"127.15.0.99","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}}"#]);
    assert!(out.status.success());
    let code = a.wait_exit(T);
    assert_ne!(code, Some(0));
    let log = a.log();
    assert!(
        log.contains(&format!("subnet {sa} was taken by host 127.15.0.99")),
        "{log}"
    );
    // Said once, as the last line, not once by the daemon and again by main.
    let n = log.matches("was taken by host").count();
    assert_eq!(n, 1, "the fatal error printed {n} times:\n{log}");
}

#[test]
fn daemon_waits_for_config_and_is_not_ready_before() {
    let etcd = Etcd::start();
    let a = Weft::start(&etcd, "127.16.0.1", &[]);
    wait_for("the waiting message", T, || {
        a.log()
            .contains("waiting for the network config")
            .then_some(())
    });
    assert_eq!(a.get("/healthz").unwrap().0, 200);
    assert_eq!(a.get("/readyz").unwrap().0, 503);
    assert!(!a.subnet_file().exists());
    // Logged once, not every second.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        a.log().matches("waiting for the network config").count(),
        1,
        "{}",
        a.log()
    );
    etcd.set_config(r#"{"Network":"10.8.0.0/16","Backend":{"Type":"udp"}}"#);
    let s = a.wait_subnet();
    assert!(s.starts_with("10.8."));
    wait_for("/readyz 200", T, || {
        (a.get("/readyz")?.0 == 200).then_some(())
    });
    let env = std::fs::read_to_string(a.subnet_file()).unwrap();
    assert!(
        env.contains("FLANNEL_MTU=65508\n"),
        "udp: lo's MTU - 28: {env}"
    );
}

#[test]
fn exhausted_network_is_a_clear_error() {
    let etcd = Etcd::start();
    // A /28 splits into four /30s; the first is skipped: room for three hosts.
    etcd.set_config(r#"{"Network":"10.9.0.0/28","Backend":{"Type":"udp"}}"#);
    let hosts: Vec<Weft> = (1..=3)
        .map(|i| Weft::start(&etcd, &format!("127.17.0.{i}"), &[]))
        .collect();
    for h in &hosts {
        h.wait_subnet();
    }
    let mut d = Weft::start(&etcd, "127.17.0.4", &[]);
    assert_eq!(d.wait_exit(T), Some(1));
    assert!(
        d.log()
            .contains("network 10.9.0.0/28 is exhausted: all 3 /30 subnets"),
        "{}",
        d.log()
    );
}

#[test]
fn config_cli_validates_and_round_trips() {
    let etcd = Etcd::start();
    let args = etcd.weft_args();
    let bad = weft(
        &args,
        &[
            "config",
            "set",
            r#"{"Network":"10.5.0.0/16","SubnetLen":31}"#,
        ],
    );
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("field SubnetLen") && err.lines().count() == 1,
        "{err}"
    );
    let missing = weft(&args, &["config", "get"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no network config"));
    etcd.set_config(VXLAN);
    let got = weft(&args, &["config", "get"]);
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), VXLAN);
    assert_eq!(etcd.get("/coreos.com/network/config").unwrap(), VXLAN);
    // An unreachable etcd is one clear line and a non-zero exit.
    let down = weft(
        &["--etcd-endpoints=http://127.0.0.1:1".to_string()],
        &["config", "get"],
    );
    assert!(!down.status.success());
    assert!(String::from_utf8_lossy(&down.stderr).contains("etcd at http://127.0.0.1:1"));
}

#[test]
fn etcd_over_tls_with_client_certificates() {
    let etcd = Etcd::start_tls();
    etcd.set_config(VXLAN);
    let a = Weft::start(&etcd, "127.18.0.1", &[]);
    let b = Weft::start(&etcd, "127.18.0.2", &[]);
    let (sa, sb) = (a.wait_subnet(), b.wait_subnet());
    a.wait_peers(&[sb], T);
    b.wait_peers(&[sa], T);
}

#[test]
fn docker_opts_from_subnet_env() {
    let dir = tempfile::tempdir().unwrap();
    let env = dir.path().join("subnet.env");
    std::fs::write(&env, "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n").unwrap();
    assert_eq!(
        common::docker_opts_file(&env),
        "DOCKER_OPTS=\"--bip=10.5.72.1/24 --ip-masq=false --mtu=1450\"\n"
    );
    let missing = weft(
        &[],
        &["docker-opts", "-f", "/nonexistent/subnet.env", "-d", "-"],
    );
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("cannot read /nonexistent/subnet.env")
    );
}

#[test]
fn docker_opts_for_a_given_docker_release() {
    let dir = tempfile::tempdir().unwrap();
    let env = dir.path().join("subnet.env");
    std::fs::write(&env, "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n").unwrap();
    let f = env.to_str().unwrap();
    let at = |release: &str| {
        weft(
            &[],
            &[
                "docker-opts",
                "-f",
                f,
                "-d",
                "-",
                "-c",
                "--docker-version",
                release,
            ],
        )
    };
    let new = at("28.2.2");
    assert!(
        new.status.success(),
        "{}",
        String::from_utf8_lossy(&new.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&new.stdout),
        "DOCKER_OPTS=\"--bip=10.5.72.1/24 --ip-masq=false --mtu=1450 --allow-direct-routing\"\n"
    );
    assert!(
        new.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&new.stderr)
    );
    let old = at("20.10.24+dfsg1");
    assert_eq!(
        String::from_utf8_lossy(&old.stdout),
        "DOCKER_OPTS=\"--bip=10.5.72.1/24 --ip-masq=false --mtu=1450\"\n"
    );
    assert!(
        old.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&old.stderr)
    );
    // 28.0 and 28.1 have no option to add: the same options, and one line saying what to do.
    let stuck = at("28.1.1");
    assert!(stuck.status.success());
    assert_eq!(stuck.stdout, old.stdout);
    let note = String::from_utf8_lossy(&stuck.stderr);
    assert_eq!(note.lines().count(), 1, "{note}");
    assert!(note.contains("upgrade dockerd to 28.2"), "{note}");
    let bad = at("latest");
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("--docker-version \"latest\"") && err.contains("X.Y.Z"),
        "{err}"
    );
}

#[test]
fn short_lease_is_renewed_before_it_expires() {
    let etcd = Etcd::start();
    etcd.set_config(VXLAN);
    let a = Weft::start(
        &etcd,
        "127.19.0.1",
        &["--subnet-lease-ttl=6s", "--subnet-lease-renew-margin=4s"],
    );
    let s = a.wait_subnet();
    let key = format!("/coreos.com/network/subnets/{}", s.replace('/', "-"));
    // Three TTLs later the key is still there, kept by renewals, never re-created.
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(18) {
        assert!(
            etcd.get(&key).is_some(),
            "lease expired at {:?}",
            start.elapsed()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let renewals = a.metric("weft_lease_renewals_total").unwrap();
    assert!(renewals >= 3, "renewals: {renewals}");
    assert!(!a.log().contains("re-created it"), "{}", a.log());
}

#[test]
fn watch_relists_after_compaction_while_disconnected() {
    use nix::sys::signal::{kill, Signal};
    let mut etcd = Etcd::start();
    etcd.set_config(VXLAN);
    let a = Weft::start(&etcd, "127.20.0.1", &[]);
    let mut b = Weft::start(&etcd, "127.20.0.2", &[]);
    let sa = a.wait_subnet();
    let sb = b.wait_subnet();
    a.wait_peers(std::slice::from_ref(&sb), T);
    // Freeze A, break its watch by restarting etcd, change the leases and compact the history away.
    let pid = nix::unistd::Pid::from_raw(a.pid() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    b.kill();
    etcd.restart();
    let key_b = format!("/coreos.com/network/subnets/{}", sb.replace('/', "-"));
    assert!(etcd.etcdctl(&["del", &key_b]).status.success());
    let lease = r#"{"PublicIP":"127.20.0.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:03"}}"#;
    assert!(etcd
        .etcdctl(&["put", "/coreos.com/network/subnets/10.5.250.0-24", lease])
        .status
        .success());
    let status =
        String::from_utf8_lossy(&etcd.etcdctl(&["endpoint", "status", "-w", "json"]).stdout)
            .into_owned();
    let rev = serde_json::from_str::<serde_json::Value>(&status).unwrap()[0]["Status"]["header"]
        ["revision"]
        .as_i64()
        .unwrap();
    assert!(etcd
        .etcdctl(&["compact", &rev.to_string()])
        .status
        .success());
    kill(pid, Signal::SIGCONT).unwrap();
    a.wait_peers(&["10.5.250.0/24".to_string()], Duration::from_secs(30));
    assert!(a.log().contains("re-listing all leases"), "{}", a.log());
    assert_eq!(a.subnet().unwrap(), sa);
}

#[test]
fn restart_keeps_the_subnet_of_subnet_env_over_a_stray_lease_with_our_ip() {
    let etcd = Etcd::start();
    // Two subnets: an occupier takes the first, so this host gets the second.
    etcd.set_config(r#"{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.0","SubnetMax":"10.5.2.0","Backend":{"Type":"vxlan"}}"#);
    let first = "/coreos.com/network/subnets/10.5.1.0-24";
    let value = |ip: &str| {
        format!(
            r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}}}}"#
        )
    };
    assert!(etcd
        .etcdctl(&["put", first, &value("127.21.0.9")])
        .status
        .success());
    let mut a = Weft::start(&etcd, "127.21.0.1", &[]);
    let sa = a.wait_subnet();
    assert_eq!(sa, "10.5.2.0/24");
    a.stop();
    // Left over, or written by someone else: a lease of the other subnet now carries our public IP too, and
    // it is listed first. (A lease with a TTL: a key without one is a reservation, which flannel's rule
    // gives to the host it names — tests/flanneld_compat.rs.)
    let grant = etcd.etcdctl(&["lease", "grant", "600"]);
    let id = String::from_utf8_lossy(&grant.stdout)
        .split_whitespace()
        .nth(1)
        .expect("lease <id> granted")
        .to_string();
    assert!(etcd
        .etcdctl(&["put", "--lease", &id, first, &value("127.21.0.1")])
        .status
        .success());
    a.start_again();
    assert_eq!(
        a.wait_subnet(),
        sa,
        "the subnet dockerd uses (subnet.env) is kept"
    );
    wait_for("the stray lease reported", T, || {
        a.log()
            .contains("other leases carry our public IP too: 10.5.1.0/24")
            .then_some(())
    });
    let stray = etcd.get(first).expect("the stray lease is left alone");
    assert!(stray.contains("127.21.0.1"), "{stray}");
}

#[test]
fn leases_that_break_flannels_rules_are_ignored_counted_and_logged_once() {
    let etcd = Etcd::start();
    etcd.set_config(VXLAN);
    let a = Weft::start(&etcd, "127.23.0.1", &[]);
    let b = Weft::start(&etcd, "127.23.0.2", &[]);
    let (sa, sb) = (a.wait_subnet(), b.wait_subnet());
    a.wait_peers(std::slice::from_ref(&sb), T);
    let key = |s: &str| format!("/coreos.com/network/subnets/{}", s.replace('/', "-"));
    let vxlan = |ip: &str| {
        format!(
            r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"02:00:00:00:00:09"}}}}"#
        )
    };
    // A /25 inside B's subnet, one covering the whole Network, one outside it (etcd's own address), a value
    // without a backend, one of another backend, and one that is not JSON.
    let half_of_b = sb.replace(".0/24", ".128/25");
    let bad: Vec<(String, String)> = vec![
        (key(&half_of_b), vxlan("127.23.0.9")),
        (key("10.5.0.0/16"), vxlan("127.23.0.9")),
        (key("127.0.0.1/32"), vxlan("127.23.0.9")),
        (key("10.5.250.0/24"), r#"{"PublicIP":"127.23.0.9"}"#.into()),
        (
            key("10.5.251.0/24"),
            r#"{"PublicIP":"127.23.0.9","BackendType":"udp"}"#.into(),
        ),
        (key("10.5.252.0/24"), "not json".into()),
    ];
    for (k, v) in &bad {
        assert!(etcd.etcdctl(&["put", k, v]).status.success(), "put {k}");
    }
    let gauge = |reason: &str| a.metric(&format!("weft_invalid_leases{{reason=\"{reason}\"}}"));
    wait_for("the invalid leases counted", T, || {
        (gauge("wrong_length") == Some(2)
            && gauge("outside_network") == Some(1)
            && gauge("wrong_backend") == Some(2)
            && gauge("malformed") == Some(1))
        .then_some(())
    });
    // None of them is routed: A's peers are B alone, and its own subnet is never a peer's.
    assert_eq!(a.peer_subnets(), Some(vec![sb.clone()]));
    assert_eq!(b.peer_subnets(), Some(vec![sa.clone()]));
    // Written again with the same value: still one log line per key.
    let seen = a.metric("weft_watch_events_total").unwrap();
    for (k, v) in &bad {
        assert!(etcd.etcdctl(&["put", k, v]).status.success(), "put {k}");
    }
    wait_for("the re-written leases seen", T, || {
        (a.metric("weft_watch_events_total").unwrap_or(0) >= seen + 6).then_some(())
    });
    let log = a.log();
    for s in [&half_of_b, "10.5.0.0/16", "127.0.0.1/32", "10.5.250.0/24"] {
        let n = log.matches(&format!("ignoring the lease of {s}:")).count();
        assert_eq!(n, 1, "{s} logged {n} times:\n{log}");
    }
    // Deleted, they are no longer counted.
    for (k, _) in &bad {
        assert!(etcd.etcdctl(&["del", k]).status.success(), "del {k}");
    }
    wait_for("the invalid leases gone", T, || {
        (gauge("wrong_length") == Some(0) && gauge("malformed") == Some(0)).then_some(())
    });
    assert_eq!(a.peer_subnets(), Some(vec![sb]));
}

#[test]
fn a_batch_of_peer_changes_is_one_log_line() {
    let etcd = Etcd::start();
    etcd.set_config(VXLAN);
    let a = Weft::start(&etcd, "127.24.0.1", &[]);
    a.wait_subnet();
    // 100 hosts appear in one etcd transaction, so in one watch response.
    let mut txn = String::from("\n");
    for i in 100..200 {
        txn.push_str(&format!(
            "put /coreos.com/network/subnets/10.5.{i}.0-24 {{\"PublicIP\":\"127.24.1.{}\",\"PublicIPv6\":null,\"BackendType\":\"vxlan\",\"BackendData\":{{\"VNI\":1,\"VtepMAC\":\"02:00:00:00:01:{:02x}\"}}}}\n",
            i - 99,
            i - 99
        ));
    }
    txn.push_str("\n\n");
    let out = etcd.etcdctl_with_input(&["txn"], &txn);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("100 peers", T, || {
        (a.peer_subnets().map(|p| p.len()) == Some(100)).then_some(())
    });
    let log = a.log();
    // The fixture logs at debug level; an operator's default is info.
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| !l.contains(" DEBUG ") && !l.contains(" TRACE ") && l.contains("peer"))
        .collect();
    assert!(
        lines.len() <= 3,
        "peer changes should be summarised, got {} lines:\n{}",
        lines.len(),
        lines.join("\n")
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("peers changed") && l.contains("added_or_changed=100")),
        "{log}"
    );
}

#[test]
fn vxlan_options_weft_does_not_support_are_named_once() {
    let etcd = Etcd::start();
    etcd.set_config(
        r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true,"GBP":true}}"#,
    );
    let a = Weft::start(&etcd, "127.26.0.1", &[]);
    a.wait_subnet();
    let log = a.log();
    assert!(
        !log.contains("Backend.DirectRouting"),
        "supported now: {log}"
    );
    let n = log
        .matches("sets Backend.GBP, which weft does not support yet")
        .count();
    assert_eq!(n, 1, "Backend.GBP named {n} times:\n{log}");
    assert!(!log.contains("Backend.Learning"), "{log}");
}
