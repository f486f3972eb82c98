//! Dual-stack networks (EnableIPv6) against a real etcd: flannel's dual-stack lease keys and values, subnet.env,
//! docker-opts, restarts, the IPv6 half of peer leases validated, and the clear refusals.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{wait_for, weft, Etcd, Weft};

const DUAL: &str = r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00:5::/48","Backend":{"Type":"vxlan"}}"#;
const T: Duration = Duration::from_secs(20);

fn start(etcd: &Etcd, i: u8) -> Weft {
    Weft::start(
        etcd,
        &format!("127.40.0.{i}"),
        &[&format!("--public-ipv6=fd00:40::{i}")],
    )
}

/// The lease key flannel would write for a host's two subnets (`10.5.9.0-24&fc00:5:0:7::-64`).
fn key_of(v4: &str, v6: &str) -> String {
    format!(
        "/coreos.com/network/subnets/{}&{}",
        v4.replace('/', "-"),
        v6.replace('/', "-")
    )
}

#[test]
fn dual_stack_hosts_lease_both_families_in_flannels_form() {
    let etcd = Etcd::start();
    etcd.set_config(DUAL);
    let hosts: Vec<Weft> = (1..=3).map(|i| start(&etcd, i)).collect();
    let v4: Vec<String> = hosts.iter().map(|h| h.wait_subnet()).collect();
    let v6: Vec<String> = hosts.iter().map(|h| h.wait_subnet6()).collect();
    assert_eq!(v4.iter().collect::<HashSet<_>>().len(), 3, "{v4:?}");
    assert_eq!(v6.iter().collect::<HashSet<_>>().len(), 3, "{v6:?}");
    for s in &v6 {
        let n: ipnet::Ipv6Net = s.parse().unwrap();
        assert_eq!(n.prefix_len(), 64);
        assert!("fc00:5::/48"
            .parse::<ipnet::Ipv6Net>()
            .unwrap()
            .contains(&n));
    }
    // One key per host holding both halves, flannel's value with PublicIPv6 and BackendV6Data.
    let raw = etcd
        .get(&key_of(&v4[0], &v6[0]))
        .expect("the dual-stack key");
    let v: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(v["PublicIP"], "127.40.0.1");
    assert_eq!(v["PublicIPv6"], "fd00:40::1");
    assert_eq!(v["BackendType"], "vxlan");
    assert_eq!(v["BackendV6Data"]["VNI"], 1);
    let (mac4, mac6) = (
        v["BackendData"]["VtepMAC"].as_str().unwrap(),
        v["BackendV6Data"]["VtepMAC"].as_str().unwrap(),
    );
    assert_eq!(mac6.len(), 17);
    assert_ne!(mac4, mac6);
    assert!(
        etcd.get(&format!(
            "/coreos.com/network/subnets/{}",
            v4[0].replace('/', "-")
        ))
        .is_none(),
        "no IPv4-only key beside it"
    );
    // Every host routes the others' two halves.
    for (i, h) in hosts.iter().enumerate() {
        wait_for(
            &format!("host {i} to see both halves of its peers"),
            T,
            || {
                let st = h.status()?;
                let peers = st["peers"].as_array()?;
                let got: HashSet<(String, String)> = peers
                    .iter()
                    .filter_map(|p| {
                        Some((
                            p["subnet"].as_str()?.to_string(),
                            p["v6"]["subnet"].as_str()?.to_string(),
                        ))
                    })
                    .collect();
                let want: HashSet<(String, String)> = (0..3)
                    .filter(|j| *j != i)
                    .map(|j| (v4[j].clone(), v6[j].clone()))
                    .collect();
                (got == want).then_some(())
            },
        );
    }
    // subnet.env as flanneld writes it, and the dockerd options for IPv6.
    let env = std::fs::read_to_string(hosts[0].subnet_file()).unwrap();
    let dot1 = v4[0].replace(".0/24", ".1/24");
    let v6dot1 = v6[0].replace("::/64", "::1/64");
    assert_eq!(
        env,
        format!(
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET={dot1}\nFLANNEL_IPV6_NETWORK=fc00:5::/48\nFLANNEL_IPV6_SUBNET={v6dot1}\nFLANNEL_MTU=65466\nFLANNEL_IPMASQ=false\n"
        )
    );
    let text = common::docker_opts_file(&hosts[0].subnet_file());
    assert!(
        text.contains(&format!("--ipv6 --fixed-cidr-v6={}", v6[0])),
        "{text}"
    );
    // `weft leases` shows both halves and both public addresses.
    let out = weft(&etcd.weft_args(), &["leases"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&v6[1]) && text.contains("fd00:40::2"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_restart_keeps_both_subnets_and_an_ipv4_network_gains_an_ipv6_half_without_moving() {
    let etcd = Etcd::start();
    etcd.set_config(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#);
    let mut a = start(&etcd, 1);
    let b = start(&etcd, 2);
    let v4 = a.wait_subnet();
    b.wait_subnet();
    assert_eq!(a.subnet6(), None, "IPv4 network: no IPv6 half");
    // The operator turns IPv6 on; the host restarts.
    etcd.set_config(DUAL);
    a.restart();
    let v6 = a.wait_subnet6();
    assert_eq!(a.wait_subnet(), v4, "the IPv4 subnet dockerd uses stays");
    wait_for("the IPv4-only key to go", T, || {
        etcd.get(&format!(
            "/coreos.com/network/subnets/{}",
            v4.replace('/', "-")
        ))
        .is_none()
        .then_some(())
    });
    assert!(etcd.get(&key_of(&v4, &v6)).is_some());
    // b (IPv4 config in memory) still routes a by its IPv4 subnet through the key change.
    b.wait_peers(std::slice::from_ref(&v4), T);
    // Restarted again: the same two subnets.
    a.restart();
    wait_for("the same two subnets after a restart", T, || {
        (a.subnet().as_deref() == Some(v4.as_str()) && a.subnet6().as_deref() == Some(v6.as_str()))
            .then_some(())
    });
}

#[test]
fn bad_ipv6_halves_of_peer_leases_are_ignored_and_counted() {
    let etcd = Etcd::start();
    etcd.set_config(DUAL);
    let a = start(&etcd, 1);
    let sa = a.wait_subnet();
    let good = r#"{"PublicIP":"127.40.0.9","PublicIPv6":"fd00:40::9","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:09"},"BackendV6Data":{"VNI":1,"VtepMAC":"02:00:00:00:01:09"}}"#;
    let put = |k: &str, v: &str| {
        let key = format!("/coreos.com/network/subnets/{k}");
        assert!(etcd.etcdctl(&["put", &key, v]).status.success(), "put {k}");
    };
    // Outside IPv6Network, wrong IPv6 length, no PublicIPv6, no BackendV6Data.
    put("10.5.200.0-24&fd99::-64", good);
    put("10.5.201.0-24&fc00:5:0:c9::-80", good);
    put(
        "10.5.202.0-24&fc00:5:0:ca::-64",
        &good.replace(r#""fd00:40::9""#, "null"),
    );
    put(
        "10.5.203.0-24&fc00:5:0:cb::-64",
        r#"{"PublicIP":"127.40.0.9","PublicIPv6":"fd00:40::9","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:09"}}"#,
    );
    // A good one, and an IPv4-only lease (routed over IPv4 only).
    put("10.5.204.0-24&fc00:5:0:cc::-64", good);
    put(
        "10.5.205.0-24",
        r#"{"PublicIP":"127.40.0.8","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:08"}}"#,
    );
    let gauge = |reason: &str| a.metric(&format!("weft_invalid_leases{{reason=\"{reason}\"}}"));
    wait_for("the bad IPv6 halves counted", T, || {
        (gauge("outside_network") == Some(1)
            && gauge("wrong_length") == Some(1)
            && gauge("no_public_ip") == Some(1)
            && gauge("bad_backend_data") == Some(1))
        .then_some(())
    });
    a.wait_peers(&["10.5.204.0/24".into(), "10.5.205.0/24".into()], T);
    let st = a.status().unwrap();
    let peers = st["peers"].as_array().unwrap();
    let p204 = peers
        .iter()
        .find(|p| p["subnet"] == "10.5.204.0/24")
        .unwrap();
    assert_eq!(p204["v6"]["subnet"], "fc00:5:0:cc::/64");
    assert_eq!(p204["v6"]["public_ip"], "fd00:40::9");
    let p205 = peers
        .iter()
        .find(|p| p["subnet"] == "10.5.205.0/24")
        .unwrap();
    assert!(p205["v6"].is_null());
    assert_ne!(sa, "10.5.204.0/24");
}

#[test]
fn ipv6_without_an_ipv6_underlay_address_is_one_clear_line() {
    let etcd = Etcd::start();
    etcd.set_config(DUAL);
    // --iface=lo: only ::1, which no peer can reach.
    let out = weft(
        &etcd.weft_args(),
        &[
            "run",
            "--iface=lo",
            "--public-ip=127.40.0.1",
            "--dataplane=none",
            "--subnet-file=/nonexistent-weft-test/subnet.env",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains("enables IPv6") && last.contains("--public-ipv6"),
        "{err}"
    );
    let leases = etcd.etcdctl(&[
        "get",
        "--prefix",
        "--keys-only",
        "/coreos.com/network/subnets/",
    ]);
    assert!(
        leases.stdout.iter().all(u8::is_ascii_whitespace),
        "nothing leased"
    );
}

#[test]
fn bad_ipv6_configs_are_refused_by_weft_config_set() {
    let etcd = Etcd::start();
    for (config, words) in [
        (
            r#"{"Network":"10.5.0.0/16","EnableIPv6":true}"#,
            "field IPv6Network",
        ),
        (
            r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetLen":127}"#,
            "field IPv6SubnetLen",
        ),
    ] {
        let out = weft(&etcd.weft_args(), &["config", "set", config]);
        assert!(!out.status.success(), "{config}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(words), "{config}: {err}");
    }
}

/// Hosts that start together on a small dual-stack network never share a subnet of either family: a lease
/// key names both halves, so two hosts could otherwise each write their own key with one IPv4 subnet and
/// different IPv6 ones (or the reverse), and both create-if transactions would succeed.
#[test]
fn hosts_starting_together_never_share_a_subnet_of_either_family() {
    let etcd = Etcd::start();
    // 15 leasable subnets per family: twelve hosts picking at random collide almost surely.
    etcd.set_config(
        r#"{"Network":"10.5.0.0/22","SubnetLen":26,"EnableIPv6":true,"IPv6Network":"fc00:5::/60","Backend":{"Type":"udp"}}"#,
    );
    let hosts: Vec<Weft> = (1..=12).map(|i| start(&etcd, i)).collect();
    let v4: Vec<String> = hosts.iter().map(|h| h.wait_subnet()).collect();
    let v6: Vec<String> = hosts.iter().map(|h| h.wait_subnet6()).collect();
    assert_eq!(v4.iter().collect::<HashSet<_>>().len(), 12, "{v4:?}");
    assert_eq!(v6.iter().collect::<HashSet<_>>().len(), 12, "{v6:?}");
    let out = etcd.etcdctl(&[
        "get",
        "--prefix",
        "--keys-only",
        "/coreos.com/network/subnets/",
    ]);
    let keys: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    assert_eq!(keys.len(), 12, "one key per host: {keys:?}");
    for (a, b) in v4.iter().zip(&v6) {
        assert!(keys.contains(&key_of(a, b)), "{a} + {b} in {keys:?}");
    }
}
