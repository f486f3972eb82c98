//! flannel's host-gw backend and vxlan's DirectRouting, with a real etcd in network namespaces: weft hosts
//! and plain "flannel" hosts (routes set by hand as flanneld's backends set them) reach each other both ways,
//! byte-identical; the routes are weft's own (protocol 87), follow the leases and come back when deleted;
//! a host-gw peer off this segment is reported once and not routed.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::netns::{exec, ip, Bed};
use common::wait_for;

const T: Duration = Duration::from_secs(20);
const HOST_GW: &str = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}"#;
const DIRECT: &str = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#;

/// weft's direct routes on host namespace `ns`, as `ip route` prints them.
fn weft_routes(ns: &str) -> String {
    String::from_utf8_lossy(&exec(ns, "ip", &["route", "show", "proto", "87"]).stdout).into_owned()
}

/// Makes host `i` a flannel host-gw host by hand: its lease in etcd, forwarding on, a container bridge
/// for `base`/24, and a route to each of `peers` (subnet, public IP) as flanneld's host-gw adds them.
fn make_host_gw_host(
    bed: &mut Bed,
    i: usize,
    base: Ipv4Addr,
    peers: &[(String, Ipv4Addr)],
) -> Ipv4Addr {
    let h = bed.hosts[i].ns.name.clone();
    let lease = format!(
        r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"host-gw"}}"#,
        bed.hosts[i].ip
    );
    let out = bed.etcd.etcdctl(&[
        "put",
        &format!("/coreos.com/network/subnets/{base}-24"),
        &lease,
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(exec(&h, "sysctl", &["-qw", "net.ipv4.ip_forward=1"])
        .status
        .success());
    let c = bed.add_container(i, base, 24);
    for (subnet, via) in peers {
        ip(&[
            "-n",
            &h,
            "route",
            "replace",
            subnet,
            "via",
            &via.to_string(),
            "dev",
            "eth0",
        ]);
    }
    c
}

#[test]
fn host_gw_routes_between_weft_and_flannel_hosts_and_keeps_its_routes() {
    let mut bed = Bed::new(3, HOST_GW);
    bed.start_weft(0, &[]);
    bed.start_weft(1, &["--dataplane=kernel"]);
    let c0 = bed.attach_container(0);
    let c1 = bed.attach_container(1);
    let s0 = bed.weft(0).wait_subnet();
    let s1 = bed.weft(1).wait_subnet();
    let peers = vec![(s0.clone(), bed.hosts[0].ip), (s1.clone(), bed.hosts[1].ip)];
    let c2 = make_host_gw_host(&mut bed, 2, Ipv4Addr::new(10, 5, 250, 0), &peers);
    for (from, to) in [(0, c1), (1, c0), (0, c2), (2, c0), (1, c2), (2, c1)] {
        bed.wait_ping(from, to, T);
    }
    for (a, b) in [(0, 1), (2, 0), (1, 2)] {
        let (sent, got) = bed.transfer(a, b, 20 << 20);
        assert_eq!(sent, got, "byte-identical {a} -> {b}");
    }
    let st = bed.weft(0).status().unwrap();
    assert_eq!(st["dataplane"], "host-gw");
    assert_eq!(
        st["lease"]["mtu"], 1500,
        "no encapsulation: the underlay's MTU"
    );
    let lease = bed
        .etcd
        .get(&format!(
            "/coreos.com/network/subnets/{}",
            s0.replace('/', "-")
        ))
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&lease).unwrap();
    assert_eq!(v["BackendType"], "host-gw");
    assert!(v.get("BackendData").is_none_or(|d| d.is_null()), "{v}");
    let h0 = bed.hosts[0].ns.name.clone();
    let want = format!("10.5.250.0/24 via {} dev eth0", bed.hosts[2].ip);
    assert!(weft_routes(&h0).contains(&want), "{}", weft_routes(&h0));
    // Deleted by hand: back within the resync (2 s).
    ip(&["-n", &h0, "route", "del", "10.5.250.0/24"]);
    wait_for("the route put back", Duration::from_secs(6), || {
        weft_routes(&h0).contains(&want).then_some(())
    });
    // A peer off this segment: reported once, not routed.
    let off = r#"{"PublicIP":"10.251.0.9","PublicIPv6":null,"BackendType":"host-gw"}"#;
    assert!(bed
        .etcd
        .etcdctl(&["put", "/coreos.com/network/subnets/10.5.251.0-24", off])
        .status
        .success());
    let said = |w: &common::Weft| {
        w.log()
            .matches(
                "host-gw peer 10.5.251.0/24 at 10.251.0.9 is not on this host's layer-2 segment",
            )
            .count()
    };
    wait_for("the off-segment peer reported", T, || {
        (said(bed.weft(0)) == 1).then_some(())
    });
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(said(bed.weft(0)), 1, "said once");
    assert!(!weft_routes(&h0).contains("10.5.251.0"), "not routed");
    // The flannel host's lease goes: its route goes with it.
    assert!(bed
        .etcd
        .etcdctl(&["del", "/coreos.com/network/subnets/10.5.250.0-24"])
        .status
        .success());
    wait_for("the route removed", T, || {
        (!weft_routes(&h0).contains("10.5.250.0")).then_some(())
    });
    assert!(
        weft_routes(&h0).contains(&format!("{s1} via")),
        "{}",
        weft_routes(&h0)
    );
}

#[test]
fn direct_routing_sends_same_segment_peers_around_the_tunnel_on_both_data_planes() {
    let mut bed = Bed::new(3, DIRECT);
    bed.start_weft(0, &[]);
    bed.start_weft(1, &["--dataplane=kernel"]);
    let c0 = bed.attach_container(0);
    let c1 = bed.attach_container(1);
    let s0 = bed.weft(0).wait_subnet();
    let s1 = bed.weft(1).wait_subnet();
    // A kernel flannel vxlan host with DirectRouting: the same segment, so direct routes to both.
    bed.make_kernel_vxlan_host(2, Ipv4Addr::new(10, 5, 250, 0), "0e:00:00:00:02:03");
    let c2 = bed.container_ip(2);
    let h2 = bed.hosts[2].ns.name.clone();
    for (s, via) in [(&s0, bed.hosts[0].ip), (&s1, bed.hosts[1].ip)] {
        ip(&[
            "-n",
            &h2,
            "route",
            "replace",
            s,
            "via",
            &via.to_string(),
            "dev",
            "eth0",
        ]);
    }
    for (from, to) in [(0, c1), (1, c0), (0, c2), (2, c0), (1, c2), (2, c1)] {
        bed.wait_ping(from, to, T);
    }
    let tx0 = || {
        bed.weft(0)
            .metric("weft_packets_total{direction=\"tx\"}")
            .unwrap_or(0)
    };
    let before = tx0();
    for (a, b) in [(0, 1), (1, 0), (0, 2), (2, 1)] {
        let (sent, got) = bed.transfer(a, b, 20 << 20);
        assert_eq!(sent, got, "byte-identical {a} -> {b}");
    }
    // Around the tunnel: weft's userspace data plane carried (almost) none of it.
    assert!(
        tx0() - before < 100,
        "userspace tx grew by {}",
        tx0() - before
    );
    let (h0, h1) = (bed.hosts[0].ns.name.clone(), bed.hosts[1].ns.name.clone());
    assert!(weft_routes(&h0).contains(&format!("{s1} via {} dev eth0", bed.hosts[1].ip)));
    assert!(weft_routes(&h0).contains(&format!("10.5.250.0/24 via {} dev eth0", bed.hosts[2].ip)));
    // The kernel backend left the direct peers to the direct routes: nothing for them on flannel.1.
    let on_vxlan =
        String::from_utf8_lossy(&exec(&h1, "ip", &["route", "show", "dev", "flannel.1"]).stdout)
            .into_owned();
    assert!(
        !on_vxlan.contains(&s0) && !on_vxlan.contains("10.5.250.0"),
        "{on_vxlan}"
    );
    assert!(
        weft_routes(&h1).contains(&format!("{s0} via")),
        "{}",
        weft_routes(&h1)
    );
}
