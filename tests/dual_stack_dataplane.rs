//! Dual-stack networks on weft's userspace data plane, in network namespaces with a real etcd: containers reach
//! each other over IPv4 and IPv6 (VXLAN and flannel's udp, IPv6 inner packets over the IPv6 underlay),
//! byte-identical transfers, and hostile IPv6 input dropped and counted.

mod common;

use std::net::{Ipv6Addr, SocketAddrV6};
use std::time::Duration;

use common::netns::{in_netns, Bed};

const T: Duration = Duration::from_secs(20);

fn dual(backend: &str) -> String {
    format!(
        r#"{{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00:5::/48","Backend":{{"Type":"{backend}"}}}}"#
    )
}

fn three_dual_stack_hosts(backend: &str, flags: &[&str]) {
    let mut bed = Bed::new(3, &dual(backend));
    for i in 0..3 {
        let mut f = vec!["--workers=2"];
        f.extend_from_slice(flags);
        bed.start_weft(i, &f);
    }
    let ips: Vec<_> = (0..3).map(|i| bed.attach_container(i)).collect();
    let ips6: Vec<_> = (0..3).map(|i| bed.attach_container6(i)).collect();
    for from in 0..3 {
        for to in 0..3 {
            if from != to {
                bed.wait_ping(from, ips[to], T);
                bed.wait_ping6(from, ips6[to], T);
            }
        }
    }
    // Byte-identical over IPv6 both ways, and over IPv4 beside it.
    for (from, to) in [(0, 2), (2, 0)] {
        let (sent, got) = bed.transfer6(from, to, 30 << 20);
        assert_eq!(
            got.1,
            30 << 20,
            "all bytes arrived over IPv6 {from} -> {to}"
        );
        assert_eq!(sent, got, "byte-identical over IPv6 {from} -> {to}");
    }
    let (sent, got) = bed.transfer(1, 0, 10 << 20);
    assert_eq!(sent, got, "byte-identical over IPv4");
    // IPv6 crossed the IPv6 underlay: the peers' IPv6 sockets carried it.
    let rx = bed
        .weft(2)
        .metric("weft_packets_total{direction=\"rx\"}")
        .unwrap();
    assert!(rx > 1000, "the data went through weft: rx {rx}");
}

#[test]
fn vxlan_dual_stack_three_hosts() {
    three_dual_stack_hosts("vxlan", &[]);
}

#[test]
fn vxlan_dual_stack_three_hosts_without_offloads_or_batching() {
    three_dual_stack_hosts("vxlan", &["--no-offload", "--no-batch"]);
}

#[test]
fn udp_dual_stack_three_hosts() {
    three_dual_stack_hosts("udp", &[]);
}

/// Sends `payload` over UDP from `src` (an address of namespace `ns`) to `dst`.
fn send_udp6(ns: &str, src: Ipv6Addr, dst: SocketAddrV6, payload: Vec<u8>) {
    in_netns(ns, move || {
        let s = std::net::UdpSocket::bind((src, 0)).expect("bind sender");
        s.send_to(&payload, dst).expect("send");
    });
}

fn hostile_ipv6_input_is_dropped_and_counted(backend: &str) {
    use common::packets::{ipv6_udp, mac, vxlan6};
    let vx = backend == "vxlan";
    let port = if vx { 8472 } else { 8285 };
    let mut bed = Bed::new(2, &dual(backend));
    bed.start_weft(0, &[]);
    bed.start_weft(1, &[]);
    bed.attach_container(0);
    bed.attach_container(1);
    let c0 = bed.attach_container6(0);
    let c1 = bed.attach_container6(1);
    bed.wait_ping6(1, c0, T);
    // Host 1's IPv6 subnet and host 0's IPv6 VTEP MAC, as the peers see them.
    let st = bed.weft(1).status().unwrap();
    let me0 = st["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["public_ip"] == bed.hosts[0].ip.to_string().as_str())
        .unwrap()
        .clone();
    let mac0 = me0["v6"]["vtep_mac"].as_str().map(mac).unwrap_or_default();
    let s1: ipnet::Ipv6Net = bed.weft(1).wait_subnet6().parse().unwrap();
    let good_src = Ipv6Addr::from(u128::from(s1.network()) + 77);
    let wrap = |inner: &[u8]| {
        if vx {
            vxlan6(1, mac0, inner)
        } else {
            inner.to_vec()
        }
    };
    let listener = common::netns::collect_udp(&bed.container_ns(0), c0, 7777);
    let h1 = bed.hosts[1].ns.name.clone();
    let ip1 = bed.hosts[1].ip6;
    let dst = SocketAddrV6::new(bed.hosts[0].ip6, port, 0, 0);
    let send = |p: Vec<u8>| send_udp6(&h1, ip1, dst, p);
    let read = |r: &str| {
        bed.weft(0)
            .metric(&format!("weft_drops_total{{reason=\"{r}\"}}"))
            .unwrap_or(0)
    };
    let reasons = [
        "truncated",
        "unknown_sender",
        "spoofed_source",
        "not_for_us",
    ];
    let before: Vec<u64> = reasons.iter().map(|r| read(r)).collect();
    // 1. truncated inner IPv6
    send(wrap(&ipv6_udp(good_src, c0, 7777, b"cut")[..30]));
    // 2. spoofed inner source: outside host 1's IPv6 subnet
    send(wrap(&ipv6_udp(
        "fc00:5:0:fafa::9".parse().unwrap(),
        c0,
        7777,
        b"spoofed",
    )));
    // 3. not for us: the inner destination is host 1's own container
    send(wrap(&ipv6_udp(good_src, c1, 7777, b"elsewhere")));
    // 4. an unknown IPv6 sender: the underlay switch, given an IPv6 address for this.
    let ul = bed.underlay.name.clone();
    common::netns::ip(&[
        "-n",
        &ul,
        "addr",
        "add",
        "fd00:250::fe/64",
        "dev",
        "br0",
        "nodad",
    ]);
    send_udp6(
        &ul,
        "fd00:250::fe".parse().unwrap(),
        dst,
        wrap(&ipv6_udp(good_src, c0, 7777, b"stranger")),
    );
    // Control: a well-formed packet from the peer is delivered.
    send(wrap(&ipv6_udp(good_src, c0, 7777, b"control")));
    let got = listener.join().unwrap();
    assert_eq!(
        got,
        vec![b"control".to_vec()],
        "only the control packet was delivered"
    );
    let after: Vec<u64> = reasons.iter().map(|r| read(r)).collect();
    for (i, r) in reasons.iter().enumerate() {
        assert!(after[i] > before[i], "{r}: {before:?} -> {after:?}");
    }
    let w = bed.hosts[0].weft.as_mut().unwrap();
    assert!(w.running(), "daemon survived");
    bed.wait_ping6(1, c0, T);
    bed.wait_ping6(0, c1, T);
}

#[test]
fn vxlan_hostile_ipv6_input() {
    hostile_ipv6_input_is_dropped_and_counted("vxlan");
}

#[test]
fn udp_hostile_ipv6_input() {
    hostile_ipv6_input_is_dropped_and_counted("udp");
}

#[test]
fn an_unroutable_ipv6_destination_is_answered_with_icmpv6_unreachable() {
    let mut bed = Bed::new(2, &dual("vxlan"));
    bed.start_weft(0, &[]);
    bed.start_weft(1, &[]);
    bed.attach_container(0);
    bed.attach_container6(0);
    // Inside the IPv6Network, but no host leased it.
    let out = common::netns::exec(
        &bed.container_ns(0),
        "ping",
        &["-6", "-c1", "-W2", "fc00:5:0:ffee::7"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && text.contains("Destination unreachable"),
        "{text}"
    );
    assert!(
        bed.weft(0)
            .metric("weft_drops_total{reason=\"no_route6\"}")
            .unwrap_or(0)
            >= 1
    );
}
