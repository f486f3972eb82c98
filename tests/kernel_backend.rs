//! Kernel VXLAN backend tests in network namespaces with a real etcd: a kernel-backend cluster, mixed
//! clusters with the userspace data plane and a plain flannel-style host, self-repair, exact removal, fallback.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::netns::Bed;
use common::wait_for;

const T: Duration = Duration::from_secs(20);
const VXLAN: &str = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#;

fn all_pairs(bed: &Bed, hosts: &[usize], bytes: usize) {
    for &a in hosts {
        for &b in hosts {
            if a != b {
                bed.wait_ping(a, bed.container_ip(b), T);
            }
        }
    }
    for &a in hosts {
        for &b in hosts {
            if a != b {
                let (sent, got) = bed.transfer(a, b, bytes);
                assert_eq!(sent, got, "byte-identical from host {a} to host {b}");
            }
        }
    }
}

#[test]
fn three_hosts_on_the_kernel_backend() {
    let mut bed = Bed::new(3, VXLAN);
    for i in 0..3 {
        bed.start_weft(i, &["--dataplane=kernel"]);
        bed.attach_container(i);
    }
    all_pairs(&bed, &[0, 1, 2], 20 << 20);
    // The device is set up as flanneld's: VNI 1, port 8472, nolearning, MTU 1450, <subnet>.0/32.
    let h = &bed.hosts[0].ns.name;
    let link = common::netns::exec(h, "ip", &["-d", "link", "show", "flannel.1"]);
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(
        link.contains("vxlan id 1") && link.contains("dstport 8472") && link.contains("nolearning"),
        "{link}"
    );
    assert!(link.contains("mtu 1450"), "{link}");
    let subnet = bed.weft(0).wait_subnet();
    let addr = common::netns::exec(h, "ip", &["-4", "addr", "show", "flannel.1"]);
    assert!(String::from_utf8_lossy(&addr.stdout).contains(&subnet.replace(".0/24", ".0/32")));
}

#[test]
fn mixed_userspace_kernel_backend_and_plain_flannel_host() {
    let mut bed = Bed::new(3, VXLAN);
    bed.start_weft(0, &["--dataplane=userspace"]);
    bed.attach_container(0);
    bed.start_weft(1, &["--dataplane=kernel"]);
    bed.attach_container(1);
    let plain_mac = "0e:00:00:00:03:03";
    bed.make_kernel_vxlan_host(2, "10.5.200.0".parse().unwrap(), plain_mac);
    // What flanneld on the plain host does for the two weft leases.
    for i in 0..2 {
        let (subnet, mac) = wait_for("host 0 and 1 seen by their peers", T, || {
            let j = 1 - i;
            let st = bed.weft(j).status()?;
            let ip = bed.hosts[i].ip.to_string();
            let p = st["peers"]
                .as_array()?
                .iter()
                .find(|p| p["public_ip"] == ip.as_str())?
                .clone();
            Some((
                p["subnet"].as_str()?.to_string(),
                p["backend"]["vtep_mac"].as_str()?.to_string(),
            ))
        });
        bed.kernel_add_peer(2, &subnet, bed.hosts[i].ip, &mac);
    }
    all_pairs(&bed, &[0, 1, 2], 10 << 20);
}

#[test]
fn deleted_device_is_repaired_and_traffic_resumes() {
    let mut bed = Bed::new(2, VXLAN);
    for i in 0..2 {
        bed.start_weft(i, &["--dataplane=kernel"]);
        bed.attach_container(i);
    }
    let c1 = bed.container_ip(1);
    bed.wait_ping(0, c1, T);
    common::netns::ip(&["-n", &bed.hosts[0].ns.name, "link", "del", "flannel.1"]);
    assert!(
        !bed.ping_once(0, c1),
        "traffic stops while the device is gone"
    );
    bed.wait_ping(0, c1, Duration::from_secs(10));
    // A removed route and neighbour come back too.
    let (neigh, _, routes) = bed.kernel_entries(0);
    let route = routes
        .lines()
        .next()
        .expect("a route")
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let gw = neigh
        .lines()
        .next()
        .expect("a neighbour")
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    common::netns::ip(&["-n", &bed.hosts[0].ns.name, "route", "del", &route]);
    common::netns::ip(&[
        "-n",
        &bed.hosts[0].ns.name,
        "neigh",
        "del",
        &gw,
        "dev",
        "flannel.1",
    ]);
    wait_for(
        "route and neighbour restored",
        Duration::from_secs(10),
        || {
            let (n, _, r) = bed.kernel_entries(0);
            (n.contains(&gw) && r.contains(&route)).then_some(())
        },
    );
    bed.wait_ping(0, c1, T);
    assert!(bed.weft(0).log().contains("created kernel VXLAN device"));
}

#[test]
fn removing_a_lease_removes_exactly_its_entries() {
    let mut bed = Bed::new(3, VXLAN);
    for i in 0..3 {
        bed.start_weft(i, &["--dataplane=kernel"]);
    }
    let subnets: Vec<String> = (0..3).map(|i| bed.weft(i).wait_subnet()).collect();
    let ok = |bed: &Bed, i: usize, s: &str, ip: Ipv4Addr| {
        let (n, f, r) = bed.kernel_entries(i);
        let gw = s.split('/').next().unwrap();
        n.contains(gw) && f.contains(&format!("dst {ip}")) && r.contains(s)
    };
    wait_for("host 0 programs both peers", T, || {
        (ok(&bed, 0, &subnets[1], bed.hosts[1].ip) && ok(&bed, 0, &subnets[2], bed.hosts[2].ip))
            .then_some(())
    });
    bed.hosts[2].weft.as_mut().unwrap().kill();
    let key = format!(
        "/coreos.com/network/subnets/{}",
        subnets[2].replace('/', "-")
    );
    assert!(bed.etcd.etcdctl(&["del", &key]).status.success());
    let gone = |bed: &Bed| {
        let (n, f, r) = bed.kernel_entries(0);
        let gw = format!("{} ", subnets[2].split('/').next().unwrap());
        !n.contains(&gw)
            && !f.contains(&format!("dst {} ", bed.hosts[2].ip))
            && !r.contains(&subnets[2])
    };
    let deadline = std::time::Instant::now() + T;
    while !gone(&bed) {
        assert!(
            std::time::Instant::now() < deadline,
            "host 2's entries not removed: {:?}\n{}",
            bed.kernel_entries(0),
            bed.weft(0).log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        ok(&bed, 0, &subnets[1], bed.hosts[1].ip),
        "host 1's entries stay: {:?}",
        bed.kernel_entries(0)
    );
    let (n, f, r) = bed.kernel_entries(0);
    assert_eq!(
        (n.lines().count(), f.lines().count(), r.lines().count()),
        (1, 1, 1),
        "{n}{f}{r}"
    );
}

#[test]
fn auto_falls_back_to_the_kernel_backend_without_tun() {
    let mut bed = Bed::new(2, VXLAN);
    bed.start_weft_without_tun(0, &[]);
    bed.start_weft(1, &[]);
    bed.attach_container(0);
    bed.attach_container(1);
    bed.wait_ping(0, bed.container_ip(1), T);
    bed.wait_ping(1, bed.container_ip(0), T);
    let log = bed.weft(0).log();
    assert_eq!(
        log.matches("falling back to the kernel VXLAN backend")
            .count(),
        1,
        "{log}"
    );
    assert!(bed.weft(1).log().contains("userspace data plane up"));
    let (sent, got) = bed.transfer(1, 0, 10 << 20);
    assert_eq!(sent, got);
}

#[test]
fn a_tun_problem_weft_can_name_is_an_error_not_a_fallback() {
    let mut bed = Bed::new(1, VXLAN);
    let ns = bed.hosts[0].ns.name.clone();
    // Something else already owns the name weft0: that is for the operator to fix, not a missing tun.
    common::netns::ip(&["-n", &ns, "link", "add", "weft0", "type", "bridge"]);
    bed.start_weft(0, &[]);
    let w = bed.hosts[0].weft.as_mut().unwrap();
    let code = w.wait_exit(T);
    assert!(
        matches!(code, Some(c) if c != 0),
        "exit {code:?}:\n{}",
        w.log()
    );
    let log = w.log();
    assert!(log.contains("cannot create tun device weft0"), "{log}");
    assert!(!log.contains("falling back"), "{log}");
    let links = common::netns::exec(&ns, "ip", &["-o", "link"]);
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(
        !links.contains("flannel.1"),
        "a kernel VXLAN device was left: {links}"
    );
}

#[test]
fn a_lease_turned_invalid_leaves_the_kernel_at_once() {
    let mut bed = Bed::new(1, VXLAN);
    bed.start_weft(0, &["--dataplane=kernel"]);
    bed.weft(0).wait_subnet();
    let route_of = |s: &str| bed.kernel_entries(0).2.contains(s);
    // Three rounds, so a removal that only the 2 s resync would make is caught: each must be gone within
    // 1 s of the lease turning invalid (the route table's change signal reconciles at once).
    for k in 0..3u8 {
        let subnet = format!("10.5.{}.0/24", 200 + k);
        let key = format!("/coreos.com/network/subnets/{}", subnet.replace('/', "-"));
        let valid = format!(
            r#"{{"PublicIP":"10.250.0.{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"02:00:00:00:00:{:02x}"}}}}"#,
            50 + k,
            50 + k
        );
        assert!(bed.etcd.etcdctl(&["put", &key, &valid]).status.success());
        wait_for(&format!("route to {subnet}"), T, || {
            route_of(&subnet).then_some(())
        });
        assert!(bed
            .etcd
            .etcdctl(&["put", &key, "not json"])
            .status
            .success());
        let changed = std::time::Instant::now();
        wait_for(&format!("route to {subnet} removed"), T, || {
            (!route_of(&subnet)).then_some(())
        });
        let took = changed.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "{subnet}: removed after {took:?}"
        );
    }
}

const DUAL: &str = r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00:5::/48","Backend":{"Type":"vxlan"}}"#;

/// A dual-stack bed of `n` weft hosts on the kernel backend, each with a container on both families.
fn dual_stack_bed(n: usize) -> Bed {
    let mut bed = Bed::new(n, DUAL);
    for i in 0..n {
        bed.start_weft(i, &["--dataplane=kernel"]);
        bed.weft(i).wait_subnet6();
        // weft turned IPv6 forwarding on (before the container fixture does it too).
        let fwd = common::netns::exec(
            &bed.hosts[i].ns.name,
            "cat",
            &["/proc/sys/net/ipv6/conf/all/forwarding"],
        );
        assert_eq!(String::from_utf8_lossy(&fwd.stdout).trim(), "1", "host {i}");
        bed.attach_container(i);
        bed.attach_container6(i);
    }
    bed
}

/// Host `i`'s dual-stack lease as etcd holds it: (key, value).
fn lease_of(bed: &Bed, i: usize) -> (String, serde_json::Value) {
    let w = bed.weft(i);
    let key = format!(
        "/coreos.com/network/subnets/{}&{}",
        w.wait_subnet().replace('/', "-"),
        w.wait_subnet6().replace('/', "-")
    );
    let value = bed
        .etcd
        .get(&key)
        .unwrap_or_else(|| panic!("no lease {key}"));
    (key, serde_json::from_str(&value).expect("lease JSON"))
}

/// What a peer's IPv6 entries name: its IPv6 subnet, IPv6 VTEP MAC and IPv6 underlay address.
struct V6Half {
    subnet6: String,
    mac6: String,
    ip6: std::net::Ipv6Addr,
}

/// Host `j`'s IPv6 half, from its lease.
fn v6_half(bed: &Bed, j: usize) -> V6Half {
    V6Half {
        subnet6: bed.weft(j).wait_subnet6(),
        mac6: lease_of(bed, j).1["BackendV6Data"]["VtepMAC"]
            .as_str()
            .expect("BackendV6Data.VtepMAC")
            .to_string(),
        ip6: bed.hosts[j].ip6,
    }
}

/// Whether host `i`'s `flannel-v6.1` holds flanneld's three entries for peer `p`.
fn has_v6_entries(bed: &Bed, i: usize, p: &V6Half) -> bool {
    let gw = p.subnet6.split('/').next().unwrap();
    let (n, f, r) = bed.kernel_entries6(i);
    n.lines()
        .any(|l| l.starts_with(&format!("{gw} ")) && l.contains(&format!("lladdr {} ", p.mac6)))
        && f.lines().any(|l| {
            l.starts_with(&format!("{} ", p.mac6)) && l.contains(&format!("dst {} ", p.ip6))
        })
        && r.lines()
            .any(|l| l.starts_with(&format!("{} via {gw} ", p.subnet6)) && l.contains("onlink"))
}

#[test]
fn dual_stack_three_hosts_on_the_kernel_backend() {
    let bed = dual_stack_bed(3);
    for a in 0..3 {
        for b in (0..3).filter(|&b| b != a) {
            bed.wait_ping(a, bed.container_ip(b), T);
            bed.wait_ping6(a, bed.container_ip6(b), T);
        }
    }
    for (from, to) in [(0, 1), (1, 0)] {
        let (sent, got) = bed.transfer6(from, to, 20 << 20);
        assert_eq!(
            sent, got,
            "byte-identical over IPv6 from host {from} to host {to}"
        );
    }
    // flannel-v6.1 as flanneld sets it: VNI 1, local = the IPv6 underlay address on eth0, port 8472,
    // nolearning, the MAC published in BackendV6Data, MTU as flannel.1, <IPv6 subnet network>/128.
    let h = &bed.hosts[0].ns.name;
    let show = |args: &[&str]| {
        String::from_utf8_lossy(&common::netns::exec(h, "ip", args).stdout).into_owned()
    };
    let link = show(&["-d", "link", "show", "flannel-v6.1"]);
    let mac6 = lease_of(&bed, 0).1["BackendV6Data"]["VtepMAC"]
        .as_str()
        .unwrap()
        .to_string();
    for want in [
        "vxlan id 1 ".to_string(),
        format!("local {} dev eth0 ", bed.hosts[0].ip6),
        "dstport 8472 ".into(),
        "nolearning".into(),
        format!("link/ether {mac6} "),
    ] {
        assert!(link.contains(&want), "{want:?} in {link}");
    }
    let mtu = |dev: &str| {
        let l = show(&["link", "show", dev]);
        l.split_whitespace()
            .skip_while(|w| *w != "mtu")
            .nth(1)
            .map(str::to_string)
    };
    assert_eq!(mtu("flannel-v6.1"), mtu("flannel.1"));
    let addr = show(&["-6", "addr", "show", "flannel-v6.1"]);
    let subnet6 = bed.weft(0).wait_subnet6();
    assert!(
        addr.contains(&format!(
            "inet6 {}/128 ",
            subnet6.split('/').next().unwrap()
        )),
        "{addr}"
    );
    // Exactly one neighbour, FDB entry and route per peer on each family; IPv4 as before.
    let (p1, p2) = (v6_half(&bed, 1), v6_half(&bed, 2));
    wait_for("host 0's IPv6 entries for hosts 1 and 2", T, || {
        (has_v6_entries(&bed, 0, &p1) && has_v6_entries(&bed, 0, &p2)).then_some(())
    });
    let (n, f, r) = bed.kernel_entries6(0);
    assert_eq!(
        (n.lines().count(), f.lines().count(), r.lines().count()),
        (2, 2, 2),
        "{n}{f}{r}"
    );
    let (n, f, r) = bed.kernel_entries(0);
    assert_eq!(
        (n.lines().count(), f.lines().count(), r.lines().count()),
        (2, 2, 2),
        "{n}{f}{r}"
    );
    assert!(!f.contains("fd00:"), "no IPv6 FDB entry on flannel.1: {f}");
    // No route for the whole IPv6Network: only the peers' subnets, as flannel does.
    assert!(!show(&["-6", "route"]).contains("fc00:5::/48"));
}

#[test]
fn dual_stack_lease_removal_and_v6_device_repair() {
    let mut bed = dual_stack_bed(3);
    let c1 = bed.container_ip6(1);
    bed.wait_ping6(0, c1, T);
    let (p1, p2) = (v6_half(&bed, 1), v6_half(&bed, 2));
    wait_for("host 0's IPv6 entries for hosts 1 and 2", T, || {
        (has_v6_entries(&bed, 0, &p1) && has_v6_entries(&bed, 0, &p2)).then_some(())
    });
    // The IPv6 device deleted by hand: traffic stops, the device comes back with its entries, traffic resumes.
    let h0 = bed.hosts[0].ns.name.clone();
    common::netns::ip(&["-n", &h0, "link", "del", "flannel-v6.1"]);
    assert!(
        !bed.ping6_once(0, c1),
        "IPv6 traffic stops while the device is gone"
    );
    bed.wait_ping6(0, c1, Duration::from_secs(10));
    bed.wait_ping(0, bed.container_ip(1), T);
    wait_for("host 0's IPv6 entries restored", T, || {
        (has_v6_entries(&bed, 0, &p1) && has_v6_entries(&bed, 0, &p2)).then_some(())
    });
    let log = bed.weft(0).log();
    assert!(
        log.lines()
            .any(|l| l.contains("created kernel VXLAN device") && l.contains("flannel-v6.1")),
        "{log}"
    );
    // Host 2's lease deleted: its IPv6 entries go (and its IPv4 ones), host 1's stay.
    let (key2, _) = lease_of(&bed, 2);
    let subnet2 = bed.weft(2).wait_subnet();
    bed.hosts[2].weft.as_mut().unwrap().kill();
    assert!(bed.etcd.etcdctl(&["del", &key2]).status.success());
    wait_for("host 2's entries removed from host 0", T, || {
        let (n6, f6, r6) = bed.kernel_entries6(0);
        let (_, _, r4) = bed.kernel_entries(0);
        (!has_v6_entries(&bed, 0, &p2)
            && (n6.lines().count(), f6.lines().count(), r6.lines().count()) == (1, 1, 1)
            && !r4.contains(&subnet2))
        .then_some(())
    });
    assert!(has_v6_entries(&bed, 0, &p1), "{:?}", bed.kernel_entries6(0));
    bed.wait_ping6(0, c1, T);
}

#[test]
fn dual_stack_weft_and_a_kernel_flannel_host() {
    weft_and_a_dual_stack_kernel_flannel_host(&["--dataplane=kernel"]);
}

/// weft's userspace data plane and a flannel host: VXLAN over the IPv6 underlay between weft's IPv6 VTEP
/// and the kernel's flannel-v6.1, both ways.
#[test]
fn dual_stack_userspace_weft_and_a_kernel_flannel_host() {
    weft_and_a_dual_stack_kernel_flannel_host(&["--dataplane=userspace"]);
}

#[test]
fn dual_stack_userspace_weft_without_offloads_and_a_kernel_flannel_host() {
    weft_and_a_dual_stack_kernel_flannel_host(&["--dataplane=userspace", "--no-offload"]);
}

fn weft_and_a_dual_stack_kernel_flannel_host(flags: &[&str]) {
    let mut bed = Bed::new(2, DUAL);
    bed.start_weft(0, flags);
    bed.attach_container(0);
    let c0 = bed.attach_container6(0);
    let (mac, mac6) = ("0e:00:00:00:04:01", "0e:00:00:00:06:01");
    let subnet6: ipnet::Ipv6Net = "fc00:5:0:c8::/64".parse().unwrap();
    let c1 = bed.make_kernel_vxlan_host6(1, "10.5.200.0".parse().unwrap(), subnet6, mac, mac6);
    // weft reads the flannel host's dual-stack lease.
    let peer = wait_for("weft to see the flannel host's IPv6 half", T, || {
        let st = bed.weft(0).status()?;
        let p = st["peers"].as_array()?.first()?.clone();
        (p["v6"]["vtep_mac"] == mac6).then_some(p)
    });
    assert_eq!(peer["v6"]["subnet"], "fc00:5:0:c8::/64", "{peer}");
    assert_eq!(
        peer["v6"]["public_ip"],
        bed.hosts[1].ip6.to_string(),
        "{peer}"
    );
    // What flanneld on the flannel host does for weft's lease.
    let (_, lease) = lease_of(&bed, 0);
    let w = bed.weft(0);
    bed.kernel_add_peer(
        1,
        &w.wait_subnet(),
        bed.hosts[0].ip,
        lease["BackendData"]["VtepMAC"].as_str().unwrap(),
    );
    bed.kernel_add_peer6(
        1,
        &w.wait_subnet6(),
        bed.hosts[0].ip6,
        lease["BackendV6Data"]["VtepMAC"].as_str().unwrap(),
    );
    assert_eq!(lease["PublicIPv6"], bed.hosts[0].ip6.to_string());
    bed.wait_ping6(0, c1, T);
    bed.wait_ping6(1, c0, T);
    bed.wait_ping(0, bed.container_ip(1), T);
    for (from, to) in [(0, 1), (1, 0)] {
        let (sent, got) = bed.transfer6(from, to, 20 << 20);
        assert_eq!(
            sent, got,
            "byte-identical over IPv6 from host {from} to host {to}"
        );
    }
}

#[test]
fn dual_stack_direct_routing_routes_same_segment_peers_over_ipv6_directly() {
    let config = r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00:5::/48","Backend":{"Type":"vxlan","DirectRouting":true}}"#;
    let mut bed = Bed::new(2, config);
    for i in 0..2 {
        bed.start_weft(i, &["--dataplane=kernel"]);
        bed.attach_container(i);
        bed.attach_container6(i);
    }
    // flannel's direct routes: <peer IPv6 subnet> via <peer PublicIPv6> on the underlay, and no VXLAN
    // entries for that peer on flannel-v6.1.
    for (i, j) in [(0, 1), (1, 0)] {
        let subnet6 = bed.weft(j).wait_subnet6();
        let want = format!("{subnet6} via {} dev eth0 ", bed.hosts[j].ip6);
        let h = bed.hosts[i].ns.name.clone();
        wait_for(&format!("host {i}'s IPv6 direct route {want:?}"), T, || {
            let out = common::netns::exec(&h, "ip", &["-6", "route", "show"]);
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l.starts_with(&want))
                .then_some(())
        });
        let (n, f, r) = bed.kernel_entries6(i);
        assert!(n.is_empty() && f.is_empty() && r.is_empty(), "{n}{f}{r}");
    }
    for (from, to) in [(0, 1), (1, 0)] {
        bed.wait_ping6(from, bed.container_ip6(to), T);
        bed.wait_ping(from, bed.container_ip(to), T);
        let (sent, got) = bed.transfer6(from, to, 5 << 20);
        assert_eq!(
            sent, got,
            "byte-identical over IPv6 from host {from} to host {to}"
        );
    }
}
