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
