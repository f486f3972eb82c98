//! IPv6-only networks (`"EnableIPv4": false`), in network namespaces with a real etcd: flannel's lease form
//! (`0.0.0.0-0&<IPv6 subnet>`, PublicIP 0.0.0.0, only BackendV6Data), subnet.env and dockerd options without
//! IPv4, and containers reaching each other over IPv6 through weft's userspace data plane and the kernel
//! VXLAN backend, byte-identical; the subnet survives a restart.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::netns::Bed;
use common::wait_for;

const T: Duration = Duration::from_secs(20);

fn v6_only(backend: &str) -> String {
    format!(
        r#"{{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00:7::/48","Backend":{{"Type":"{backend}"}}}}"#
    )
}

/// Host `i`'s container: docker's default host-local IPv4 bridge (the same range on every host, never
/// routed between them) and the leased IPv6 subnet, as dockerd started with weft's options has it.
fn attach(bed: &mut Bed, i: usize) -> std::net::Ipv6Addr {
    bed.add_container(i, Ipv4Addr::new(172, 17, 0, 0), 16);
    bed.attach_container6(i)
}

/// Every container pings every other over IPv6, then `bytes` cross byte-identical for each (from, to) pair.
fn reach_each_other(
    bed: &Bed,
    ips6: &[std::net::Ipv6Addr],
    pairs: &[(usize, usize)],
    bytes: usize,
) {
    for from in 0..ips6.len() {
        for (to, ip6) in ips6.iter().enumerate() {
            if from != to {
                bed.wait_ping6(from, *ip6, T);
            }
        }
    }
    for &(from, to) in pairs {
        let (sent, got) = bed.transfer6(from, to, bytes);
        assert_eq!(got.1, bytes, "all bytes arrived {from} -> {to}");
        assert_eq!(sent, got, "byte-identical over IPv6 {from} -> {to}");
    }
}

/// The lease values in etcd, by key.
fn leases(bed: &Bed) -> Vec<(String, serde_json::Value)> {
    let out = bed
        .etcd
        .etcdctl(&["get", "--prefix", "/coreos.com/network/subnets/"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = text.lines().collect();
    lines
        .chunks(2)
        .map(|kv| {
            (
                kv[0].rsplit('/').next().unwrap().to_string(),
                serde_json::from_str(kv[1]).expect("lease JSON"),
            )
        })
        .collect()
}

fn three_hosts(backend: &str, kernel_host: bool) {
    let mut bed = Bed::new(3, &v6_only(backend));
    bed.start_weft(0, &["--workers=2"]);
    bed.start_weft(1, &[]);
    bed.start_weft(
        2,
        if kernel_host {
            &["--dataplane=kernel"]
        } else {
            &[]
        },
    );
    let ips6: Vec<_> = (0..3).map(|i| attach(&mut bed, i)).collect();
    reach_each_other(&bed, &ips6, &[(0, 2), (2, 0), (1, 0)], 20 << 20);
    // flannel's IPv6-only lease form, one per host, named by its IPv6 underlay address.
    let ls = leases(&bed);
    assert_eq!(ls.len(), 3, "{ls:?}");
    for (key, v) in &ls {
        assert!(key.starts_with("0.0.0.0-0&fc00:7:"), "{key}");
        assert!(key.ends_with("-64"), "{key}");
        assert_eq!(v["PublicIP"], "0.0.0.0", "{key}: {v}");
        assert!(v.get("BackendData").is_none(), "{key}: {v}");
        assert_eq!(v["BackendType"], backend, "{v}");
        let ip6 = v["PublicIPv6"].as_str().unwrap();
        assert!(bed.hosts.iter().any(|h| h.ip6.to_string() == ip6), "{v}");
        if backend == "vxlan" {
            assert_eq!(v["BackendV6Data"]["VNI"], 1, "{v}");
        }
        if backend == "wireguard" {
            // flannel-wg-v6's port and the host's key.
            assert_eq!(v["BackendV6Data"]["Port"], 51821, "{v}");
            assert_eq!(
                v["BackendV6Data"]["PublicKey"].as_str().map(str::len),
                Some(44),
                "{v}"
            );
        }
    }
    // subnet.env has only the IPv6 pair; dockerd gets --ipv6 and no --bip.
    let env = std::fs::read_to_string(bed.weft(0).subnet_file()).unwrap();
    assert!(
        !env.contains("FLANNEL_NETWORK=") && !env.contains("FLANNEL_SUBNET="),
        "{env}"
    );
    let subnet6 = bed.weft(0).wait_subnet6();
    assert!(env.contains("FLANNEL_IPV6_NETWORK=fc00:7::/48\n"), "{env}");
    let ip1 = subnet6.replace("::/64", "::1/64");
    assert!(
        env.contains(&format!("FLANNEL_IPV6_SUBNET={ip1}\n")),
        "{env}"
    );
    let opts = common::docker_opts_file(&bed.weft(0).subnet_file());
    assert!(
        opts.contains("--ipv6") && opts.contains(&format!("--fixed-cidr-v6={subnet6}")),
        "{opts}"
    );
    assert!(!opts.contains("--bip"), "{opts}");
    // Host 0's tun has no IPv4 address; a kernel host has flannel-v6.1 and no flannel.1; host-gw routes
    // each peer's IPv6 subnet via its IPv6 address and has no device.
    let h0 = &bed.hosts[0].ns.name;
    let run = |ns: &str, args: &[&str]| common::netns::exec(ns, "ip", args);
    if backend == "host-gw" {
        let out = run(h0, &["-6", "route", "show", "proto", "87"]);
        let routes = String::from_utf8_lossy(&out.stdout).to_string();
        for h in &bed.hosts[1..] {
            assert!(routes.contains(&format!("via {}", h.ip6)), "{routes}");
        }
    } else {
        let out = run(h0, &["-4", "addr", "show", "dev", "weft0"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success() && !text.contains("inet "), "{out:?}");
    }
    if kernel_host && backend == "vxlan" {
        let h2 = &bed.hosts[2].ns.name;
        assert!(run(h2, &["link", "show", "flannel-v6.1"]).status.success());
        assert!(!run(h2, &["link", "show", "flannel.1"]).status.success());
    }
    // A restart keeps the subnet, and traffic flows again.
    let before = bed.weft(1).wait_subnet6();
    bed.hosts[1].weft.as_mut().unwrap().restart();
    assert_eq!(
        bed.weft(1).wait_subnet6(),
        before,
        "same IPv6 subnet after a restart"
    );
    bed.wait_ping6(1, ips6[0], T);
    bed.wait_ping6(0, ips6[1], T);
    assert_eq!(leases(&bed).len(), 3, "no second lease after the restart");
}

#[test]
fn vxlan_ipv6_only_userspace_and_kernel_hosts() {
    three_hosts("vxlan", true);
}

#[test]
fn udp_ipv6_only_three_hosts() {
    three_hosts("udp", false);
}

/// wireguard in flannel's default mode "separate": only the IPv6 device's sessions, on ListenPortV6.
#[test]
fn wireguard_ipv6_only_three_hosts() {
    three_hosts("wireguard", false);
}

/// host-gw, one host with the kernel data plane (routes only either way).
#[test]
fn host_gw_ipv6_only_three_hosts() {
    three_hosts("host-gw", true);
}

/// An IPv4 lease (or a dual-stack lease's IPv4 half) has no place on an IPv6-only network: not routed,
/// counted; the IPv6 half of a dual-stack key is routed.
#[test]
fn foreign_leases_on_an_ipv6_only_network() {
    let mut bed = Bed::new(1, &v6_only("udp"));
    bed.start_weft(0, &[]);
    bed.weft(0).wait_subnet6();
    let put = |key: &str, value: &str| {
        let out = bed
            .etcd
            .etcdctl(&["put", &format!("/coreos.com/network/subnets/{key}"), value]);
        assert!(out.status.success());
    };
    put(
        "10.9.3.0-24",
        r#"{"PublicIP":"192.0.2.3","BackendType":"udp"}"#,
    );
    put(
        "10.9.4.0-24&fc00:7:0:44::-64",
        r#"{"PublicIP":"192.0.2.4","PublicIPv6":"fd00:250::44","BackendType":"udp"}"#,
    );
    wait_for("the IPv6 half routed, the IPv4 lease counted", T, || {
        let st = bed.weft(0).status()?;
        let peers = st["peers"].as_array()?;
        let routed = peers.len() == 1
            && peers[0]["v6"]["subnet"] == "fc00:7:0:44::/64"
            && peers[0]["subnet"].is_null();
        let counted = bed
            .weft(0)
            .metric("weft_invalid_leases{reason=\"outside_network\"}")
            == Some(1);
        (routed && counted).then_some(())
    });
    let status = bed.weft(0).status_text();
    assert!(status.contains("IPv6-only network"), "{status}");
}

/// A host whose underlay has no IPv4 address at all takes part in an IPv6-only network (named by its IPv6
/// address, picked from the IPv6 default route as flannel picks it there); a network with IPv4 on such a
/// host is one plain line and exit status 2.
#[test]
fn a_host_with_only_an_ipv6_underlay() {
    let ns = common::netns::Netns::new(format!("{}-v6", common::netns::unique_id()));
    let ip = |args: &[&str]| common::netns::ip(&[&["-n", ns.name.as_str()], args].concat());
    // No dummy module here: a veth pair inside the namespace, its far end the "network".
    ip(&["link", "add", "ul0", "type", "veth", "peer", "name", "ul0p"]);
    ip(&["addr", "add", "fd00:99::1/64", "dev", "ul0", "nodad"]);
    ip(&["link", "set", "ul0p", "up"]);
    ip(&["link", "set", "ul0", "up"]);
    ip(&["-6", "route", "add", "default", "dev", "ul0"]);
    let etcd = common::Etcd::start_in(&ns.name, "127.0.0.1");
    etcd.set_config(&v6_only("vxlan"));
    let mut w = common::Weft::start_in(&etcd, &ns.name, "0.0.0.0", &["--dataplane=none"]);
    let subnet6 = w.wait_subnet6();
    let key = format!(
        "/coreos.com/network/subnets/0.0.0.0-0&{}",
        subnet6.replace('/', "-")
    );
    let v: serde_json::Value = serde_json::from_str(&etcd.get(&key).expect("our lease")).unwrap();
    assert_eq!(v["PublicIP"], "0.0.0.0", "{v}");
    assert_eq!(v["PublicIPv6"], "fd00:99::1", "{v}");
    assert!(
        w.log().contains("IPv6 only: it has no IPv4 address"),
        "{}",
        w.log()
    );
    w.stop();
    etcd.set_config(
        r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00:7::/48","Backend":{"Type":"vxlan"}}"#,
    );
    let mut w = common::Weft::start_in(&etcd, &ns.name, "0.0.0.0", &["--dataplane=none"]);
    assert_eq!(w.wait_exit(T), Some(2));
    let log = w.log();
    assert!(
        log.contains(
            "has IPv4 (Network 10.5.0.0/16) but the underlay interface ul0 has no IPv4 address"
        ),
        "{log}"
    );
}

/// A flannel host on an IPv6-only vxlan network, as flanneld sets it up (only `flannel-v6.1`, its lease
/// `0.0.0.0-0&<subnet6>` with PublicIP 0.0.0.0 and only BackendV6Data, written by hand here), and weft on the
/// userspace data plane and on the kernel backend: containers reach each other both ways, byte-identical.
#[test]
fn weft_and_a_flannel_host_on_an_ipv6_only_network() {
    let mut bed = Bed::new(3, &v6_only("vxlan"));
    bed.start_weft(0, &[]);
    bed.start_weft(1, &["--dataplane=kernel"]);
    let c0 = attach(&mut bed, 0);
    let c1 = attach(&mut bed, 1);
    // The flannel host.
    let (subnet6, mac6) = (
        "fc00:7:0:c8::/64".parse::<ipnet::Ipv6Net>().unwrap(),
        "0e:00:00:00:06:03",
    );
    let lease = format!(
        r#"{{"PublicIP":"0.0.0.0","PublicIPv6":"{}","BackendType":"vxlan","BackendV6Data":{{"VNI":1,"VtepMAC":"{mac6}"}}}}"#,
        bed.hosts[2].ip6
    );
    let key = "/coreos.com/network/subnets/0.0.0.0-0&fc00:7:0:c8::-64";
    assert!(bed.etcd.etcdctl(&["put", key, &lease]).status.success());
    bed.make_flannel_v6_device(2, subnet6, mac6);
    bed.add_container(2, Ipv4Addr::new(172, 17, 0, 0), 16);
    let c2 = bed.add_container6(2, subnet6);
    // What flanneld does for each weft lease.
    for (key, v) in leases(&bed) {
        if v["PublicIPv6"] == bed.hosts[2].ip6.to_string() {
            continue;
        }
        let s6 = key.split('&').nth(1).unwrap().replace("-", "/");
        let ip6: std::net::Ipv6Addr = v["PublicIPv6"].as_str().unwrap().parse().unwrap();
        bed.kernel_add_peer6(2, &s6, ip6, v["BackendV6Data"]["VtepMAC"].as_str().unwrap());
    }
    reach_each_other(
        &bed,
        &[c0, c1, c2],
        &[(0, 2), (2, 0), (1, 2), (2, 1)],
        10 << 20,
    );
}

/// A flannel wireguard host on an IPv6-only network, set up as flanneld's wireguard backend does in its
/// default mode (only `flannel-wg-v6`: wireguard-go with its key, listen port 51821, `<subnet6>::/128`, the
/// IPv6Network routed to it, a peer per lease with endpoint `[PublicIPv6]:Port` of BackendV6Data and
/// allowed-ips its IPv6 subnet; lease `0.0.0.0-0&<subnet6>` with only BackendV6Data), and two weft hosts:
/// containers reach each other both ways, byte-identical, and the sessions are up on both sides.
#[test]
fn weft_and_a_flannel_wireguard_host_on_an_ipv6_only_network() {
    let mut bed = Bed::new(3, &v6_only("wireguard"));
    bed.start_weft(0, &[]);
    bed.start_weft(1, &[]);
    let c0 = attach(&mut bed, 0);
    let c1 = attach(&mut bed, 1);
    let subnet6: ipnet::Ipv6Net = "fc00:7:0:c8::/64".parse().unwrap();
    let h2 = bed.hosts[2].ns.name.clone();
    let mtu = common::wggo::link_mtu(&h2, "eth0") - common::wggo::WG_OVERHEAD;
    let w = common::wggo::WgGo::start(
        &h2,
        Ipv4Addr::UNSPECIFIED,
        &subnet6.to_string(),
        "fc00:7::/48",
        51821,
        mtu,
    );
    let lease = format!(
        r#"{{"PublicIP":"0.0.0.0","PublicIPv6":"{}","BackendType":"wireguard","BackendV6Data":{{"PublicKey":"{}","Port":51821}}}}"#,
        bed.hosts[2].ip6, w.public_key
    );
    let key = "/coreos.com/network/subnets/0.0.0.0-0&fc00:7:0:c8::-64";
    assert!(bed.etcd.etcdctl(&["put", key, &lease]).status.success());
    bed.add_container(2, Ipv4Addr::new(172, 17, 0, 0), 16);
    let c2 = bed.add_container6(2, subnet6);
    // What flanneld does for each weft lease.
    let mut weft_keys = Vec::new();
    for (key, v) in leases(&bed) {
        if v["PublicIPv6"] == bed.hosts[2].ip6.to_string() {
            continue;
        }
        assert_eq!(v["BackendV6Data"]["Port"], 51821, "{v}");
        let s6 = key.split('&').nth(1).unwrap().replace('-', "/");
        let ip6: std::net::Ipv6Addr = v["PublicIPv6"].as_str().unwrap().parse().unwrap();
        let pk = v["BackendV6Data"]["PublicKey"]
            .as_str()
            .unwrap()
            .to_string();
        w.add_peer(&pk, (ip6, 51821), &s6, None);
        weft_keys.push(pk);
    }
    assert_eq!(weft_keys.len(), 2);
    reach_each_other(
        &bed,
        &[c0, c1, c2],
        &[(0, 2), (2, 0), (1, 2), (2, 1)],
        10 << 20,
    );
    for pk in &weft_keys {
        w.wait_handshake(pk, T);
    }
    let status = bed.weft(0).status_text();
    assert!(
        status.contains(&format!("{}]:51821", bed.hosts[2].ip6)),
        "{status}"
    );
}
