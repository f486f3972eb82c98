//! Userspace data plane tests in network namespaces with a real etcd: ping and byte-identical transfers
//! between containers on different hosts, for vxlan and udp.

mod common;

use std::time::Duration;

use common::netns::Bed;

const T: Duration = Duration::from_secs(20);

fn config(backend: &str) -> String {
    format!(r#"{{"Network":"10.5.0.0/16","Backend":{{"Type":"{backend}"}}}}"#)
}

fn three_hosts_all_pairs_and_a_50mb_transfer(backend: &str, flags: &[&str]) {
    let mut bed = Bed::new(3, &config(backend));
    for i in 0..3 {
        let mut f = vec!["--workers=2"];
        f.extend_from_slice(flags);
        bed.start_weft(i, &f);
    }
    let ips: Vec<_> = (0..3).map(|i| bed.attach_container(i)).collect();
    for from in 0..3 {
        for (to, ip) in ips.iter().enumerate() {
            if from != to {
                bed.wait_ping(from, *ip, T);
            }
        }
    }
    let (sent, got) = bed.transfer(0, 2, 50 << 20);
    assert_eq!(got.1, 50 << 20, "all bytes arrived");
    assert_eq!(sent, got, "byte-identical");
    let tx = bed
        .weft(0)
        .metric("weft_packets_total{direction=\"tx\"}")
        .unwrap();
    let rx = bed
        .weft(2)
        .metric("weft_packets_total{direction=\"rx\"}")
        .unwrap();
    assert!(
        tx > 1000 && rx > 1000,
        "the data went through weft: tx {tx}, rx {rx}"
    );
    for i in 0..3 {
        let log = bed.weft(i).log();
        assert!(
            !log.contains("cannot steer") && !log.contains("cannot pin"),
            "steering and pinning set up on host {i}: {log}"
        );
    }
}

// The transfers write 1 byte, 4, 13, ... up to 64 KiB at a time, so segments of every size cross.
#[test]
fn vxlan_three_hosts() {
    three_hosts_all_pairs_and_a_50mb_transfer("vxlan", &[]);
}

#[test]
fn vxlan_three_hosts_cpu_local() {
    three_hosts_all_pairs_and_a_50mb_transfer("vxlan", &["--cpu-local"]);
}

#[test]
fn udp_three_hosts() {
    three_hosts_all_pairs_and_a_50mb_transfer("udp", &[]);
}

#[test]
fn vxlan_three_hosts_without_offloads_or_batching() {
    three_hosts_all_pairs_and_a_50mb_transfer("vxlan", &["--no-offload", "--no-batch"]);
}

#[test]
fn udp_three_hosts_without_offloads() {
    three_hosts_all_pairs_and_a_50mb_transfer("udp", &["--no-offload"]);
}

fn join_while_traffic_flows_and_removal(backend: &str) {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let mut bed = Bed::new(3, &config(backend));
    bed.start_weft(0, &[]);
    bed.start_weft(1, &[]);
    let c0 = bed.attach_container(0);
    let c1 = bed.attach_container(1);
    bed.wait_ping(0, c1, T);
    bed.wait_ping(1, c0, T);
    let bed = Arc::new(std::sync::Mutex::new(bed));
    // Steady traffic between the first two while the third joins.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, lost) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let ns0 = bed.lock().unwrap().container_ns(0);
    let pinger = {
        let (stop, ok, lost) = (stop.clone(), ok.clone(), lost.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let out = common::netns::exec(&ns0, "ping", &["-c1", "-W2", "-q", &c1.to_string()]);
                if out.status.success() {
                    ok.fetch_add(1, Ordering::Relaxed)
                } else {
                    lost.fetch_add(1, Ordering::Relaxed)
                };
            }
        })
    };
    let c2 = {
        let mut b = bed.lock().unwrap();
        b.start_weft(2, &[]);
        b.attach_container(2)
    };
    let joined = std::time::Instant::now();
    {
        let b = bed.lock().unwrap();
        b.wait_ping(0, c2, Duration::from_secs(10));
        b.wait_ping(1, c2, Duration::from_secs(10));
        b.wait_ping(2, c0, Duration::from_secs(10));
    }
    eprintln!(
        "new host reachable from everyone {:?} after its container came up",
        joined.elapsed()
    );
    // Host 2 goes away and its lease is removed: its subnet is no longer routed, the rest keeps working.
    let s2 = {
        let mut b = bed.lock().unwrap();
        let s2 = b.weft(2).wait_subnet();
        b.hosts[2].weft.as_mut().unwrap().kill();
        let out = b.etcd.etcdctl(&[
            "del",
            &format!("/coreos.com/network/subnets/{}", s2.replace('/', "-")),
        ]);
        assert!(out.status.success());
        b.weft(0).wait_peers(&[b.weft(1).wait_subnet()], T);
        s2
    };
    {
        let b = bed.lock().unwrap();
        let out = common::netns::exec(&b.container_ns(0), "ping", &["-c1", "-W2", &c2.to_string()]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{s2} is still routed: {text}");
        assert!(
            text.contains("Unreachable"),
            "weft answers with ICMP unreachable: {text}"
        );
        let no_route = b
            .weft(0)
            .metric("weft_drops_total{reason=\"no_route\"}")
            .unwrap();
        assert!(no_route >= 1);
    }
    stop.store(true, Ordering::Relaxed);
    pinger.join().unwrap();
    let b = bed.lock().unwrap();
    b.wait_ping(0, c1, T);
    let (ok, lost) = (ok.load(Ordering::Relaxed), lost.load(Ordering::Relaxed));
    assert!(ok >= 3, "steady traffic flowed: {ok} ok");
    assert_eq!(
        lost, 0,
        "no ping between the first two hosts was lost while the third came and went"
    );
}

#[test]
fn vxlan_join_and_removal() {
    join_while_traffic_flows_and_removal("vxlan");
}

#[test]
fn udp_join_and_removal() {
    join_while_traffic_flows_and_removal("udp");
}

#[test]
fn mixed_cluster_with_a_kernel_flannel_vxlan_host() {
    common::netns::mixed_cluster(&config("vxlan"), &[]);
}

#[test]
fn mixed_cluster_with_a_kernel_flannel_vxlan_host_without_offloads() {
    common::netns::mixed_cluster(&config("vxlan"), &["--no-offload"]);
}

/// Malformed, foreign-VNI, spoofed and misaddressed packets sent to host 0 (started with `flags`) are
/// dropped and counted by reason; only the well-formed control packet arrives.
fn hostile_input_is_dropped_and_counted(backend: &str, flags: &[&str]) {
    use common::packets::{ipv4_udp, mac, vxlan};
    use std::net::{Ipv4Addr, SocketAddrV4};
    let vx = backend == "vxlan";
    let port = if vx { 8472 } else { 8285 };
    let mut bed = Bed::new(2, &config(backend));
    bed.start_weft(0, flags);
    bed.start_weft(1, &[]);
    let c0 = bed.attach_container(0);
    let c1 = bed.attach_container(1);
    bed.wait_ping(1, c0, T);
    let (s1, _) = bed.peer_view(0, 1);
    let (_, mac0) = bed.peer_view(1, 0);
    let mac0 = mac0.map(|m| mac(&m)).unwrap_or_default();
    let base1: Ipv4Addr = s1.split('/').next().unwrap().parse().unwrap();
    let good_src = Ipv4Addr::from(u32::from(base1) + 77);
    let wrap = |vni: u32, inner: &[u8]| {
        if vx {
            vxlan(vni, mac0, inner)
        } else {
            inner.to_vec()
        }
    };
    // A container on host 0 listens; only the control packet may arrive.
    let listener = common::netns::collect_udp(&bed.container_ns(0), c0, 7777);
    let h1 = bed.hosts[1].ns.name.clone();
    let ip1 = bed.hosts[1].ip;
    let dst = SocketAddrV4::new(bed.hosts[0].ip, port);
    let send = |p: Vec<u8>| Bed::send_udp(&h1, ip1, dst, p);
    let read = |r: &str| {
        bed.weft(0)
            .metric(&format!("weft_drops_total{{reason=\"{r}\"}}"))
            .unwrap()
    };
    let drops = || -> Vec<u64> {
        [
            "truncated",
            "bad_vni",
            "unknown_sender",
            "spoofed_source",
            "not_for_us",
        ]
        .iter()
        .map(|r| read(r))
        .collect()
    };
    let before = drops();
    // 1. truncated
    send(if vx {
        vec![0x08, 0, 0, 0, 0, 0, 1]
    } else {
        vec![0x45, 0, 0]
    });
    send(wrap(1, &ipv4_udp(good_src, c0, 7777, b"spoof")[..20]));
    // 2. wrong VNI
    if vx {
        send(vxlan(2, mac0, &ipv4_udp(good_src, c0, 7777, b"bad-vni")));
    }
    // 3. spoofed inner source (outside host 1's subnet)
    send(wrap(
        1,
        &ipv4_udp(Ipv4Addr::new(10, 5, 250, 9), c0, 7777, b"spoofed"),
    ));
    // 4. not for us (inner destination outside host 0's subnet)
    send(wrap(1, &ipv4_udp(good_src, c1, 7777, b"elsewhere")));
    // 5. unknown sender: the underlay switch's address is not a peer.
    Bed::send_udp(
        &bed.underlay.name,
        common::netns::ETCD_IP.parse().unwrap(),
        dst,
        wrap(1, &ipv4_udp(good_src, c0, 7777, b"stranger")),
    );
    // Control: a well-formed packet from the peer is delivered (so the test can tell).
    send(wrap(1, &ipv4_udp(good_src, c0, 7777, b"control")));
    let got = listener.join().unwrap();
    assert_eq!(
        got,
        vec![b"control".to_vec()],
        "only the control packet was delivered"
    );
    let after = drops();
    assert!(
        after[0] >= before[0] + 2,
        "truncated {before:?} -> {after:?}"
    );
    if vx {
        assert!(after[1] > before[1], "bad_vni {before:?} -> {after:?}");
    }
    assert!(
        after[2] > before[2],
        "unknown_sender {before:?} -> {after:?}"
    );
    assert!(
        after[3] > before[3],
        "spoofed_source {before:?} -> {after:?}"
    );
    assert!(after[4] > before[4], "not_for_us {before:?} -> {after:?}");
    if flags.contains(&"--underlay=af-xdp") {
        let rx = bed
            .weft(0)
            .metric("weft_xdp_frames_total{direction=\"rx\"}");
        assert!(
            rx >= Some(6),
            "the hostile packets came through AF_XDP: {rx:?}"
        );
    }
    let w = bed.hosts[0].weft.as_mut().unwrap();
    assert!(w.running(), "daemon survived");
    bed.wait_ping(1, c0, T);
    bed.wait_ping(0, c1, T);
}

#[test]
fn vxlan_hostile_input() {
    hostile_input_is_dropped_and_counted("vxlan", &[]);
}

#[test]
fn vxlan_hostile_input_over_af_xdp() {
    hostile_input_is_dropped_and_counted("vxlan", &["--underlay=af-xdp"]);
}

#[test]
fn udp_hostile_input() {
    hostile_input_is_dropped_and_counted("udp", &[]);
}

#[test]
fn vxlan_three_hosts_with_tun_offload_but_no_udp_gso_or_gro() {
    three_hosts_all_pairs_and_a_50mb_transfer("vxlan", &["--no-udp-gso", "--no-udp-gro"]);
}

#[test]
fn wireguard_three_hosts() {
    three_hosts_all_pairs_and_a_50mb_transfer("wireguard", &[]);
}

#[test]
fn wireguard_three_hosts_without_offloads_or_batching() {
    three_hosts_all_pairs_and_a_50mb_transfer("wireguard", &["--no-offload", "--no-batch"]);
}
