//! Real dockerd on weft: two netns hosts, real etcd, a weft daemon and a dockerd (options from
//! `weft docker-opts`) per host, busybox containers reaching each other and the outside through --ip-masq.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::docker::Dockerd;
use common::netns::{self, accept_one, connect_from, Bed, ETCD_IP};
use common::wait_for;

const T: Duration = Duration::from_secs(30);

/// The dockerd options `weft docker-opts` wrote for a host's subnet.env.
fn docker_opts(subnet_file: &std::path::Path) -> Vec<String> {
    let text = common::docker_opts_file(subnet_file);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("DOCKER_OPTS="))
        .expect("DOCKER_OPTS");
    line.trim_matches('"')
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[test]
fn containers_on_real_dockerd_across_hosts_with_ip_masq() {
    let mut bed = Bed::new(2, r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#);
    let mut dockerds = Vec::new();
    let mut names = Vec::new();
    for i in 0..2 {
        bed.start_weft(i, &["--ip-masq"]);
        let subnet = bed.weft(i).wait_subnet();
        wait_for("subnet.env", T, || {
            bed.weft(i).subnet_file().exists().then_some(())
        });
        let opts = docker_opts(&bed.weft(i).subnet_file());
        assert!(
            opts.contains(&format!("--bip={}", subnet.replace(".0/", ".1/"))),
            "{opts:?}"
        );
        assert!(
            opts.contains(&"--ip-masq=false".to_string()),
            "weft masquerades, dockerd must not: {opts:?}"
        );
        assert!(opts.contains(&"--mtu=1450".to_string()), "{opts:?}");
        let d = Dockerd::start(&bed.hosts[i].ns.name, &opts);
        names.push(d.run(&format!("c{i}")));
        dockerds.push(d);
    }
    let ips: Vec<Ipv4Addr> = (0..2).map(|i| dockerds[i].ip_of(&names[i])).collect();
    for (i, ip) in ips.iter().enumerate() {
        let subnet = bed.weft(i).wait_subnet();
        let prefix = subnet.trim_end_matches(".0/24").to_string();
        assert!(ip.to_string().starts_with(&prefix), "{ip} in {subnet}");
    }
    // Containers on different hosts ping each other by IP.
    for (from, to) in [(0, 1), (1, 0)] {
        wait_for(&format!("container {from} pings {}", ips[to]), T, || {
            dockerds[from].ping(&names[from], ips[to]).then_some(())
        });
    }
    let ns: Vec<String> = (0..2).map(|i| dockerds[i].netns_of(&names[i])).collect();
    // Byte-identical transfer both ways.
    for (from, to) in [(0, 1), (1, 0)] {
        let (sent, got) = netns::transfer(&ns[from], &ns[to], ips[to], 20 << 20);
        assert_eq!(
            sent, got,
            "byte-identical from container {from} to container {to}"
        );
    }
    // Overlay traffic keeps the sending container's own address.
    let (ready, peer) = accept_one(&ns[0], ips[0], 7000);
    ready.recv_timeout(T).unwrap();
    assert!(connect_from(&ns[1], ips[0], 7000));
    assert_eq!(
        peer.join().unwrap().ip(),
        std::net::IpAddr::V4(ips[1]),
        "receiver sees the sender's container IP"
    );
    // The outside world (the underlay switch, not part of the overlay) is reached through masquerade:
    // it sees the host's address, and its replies find their way back.
    let etcd_ip: Ipv4Addr = ETCD_IP.parse().unwrap();
    let (ready, peer) = accept_one(&bed.underlay.name, etcd_ip, 7001);
    ready.recv_timeout(T).unwrap();
    assert!(
        connect_from(&ns[0], etcd_ip, 7001),
        "container reaches the outside"
    );
    assert_eq!(
        peer.join().unwrap().ip(),
        std::net::IpAddr::V4(bed.hosts[0].ip),
        "masqueraded to the host's IP"
    );
    // The rules are weft's, and go away when weft stops cleanly.
    let h0 = bed.hosts[0].ns.name.clone();
    let nat = |ns: &str| {
        String::from_utf8_lossy(&netns::exec(ns, "iptables", &["-t", "nat", "-S"]).stdout)
            .into_owned()
    };
    assert!(
        nat(&h0).contains(
            "-A WEFT-POSTRTG -s 10.5.0.0/16 ! -d 224.0.0.0/4 -j MASQUERADE --random-fully"
        ),
        "{}",
        nat(&h0)
    );
    // Removed by hand, the rules come back within the resync period.
    netns::ip_netns_exec_ok(&h0, "iptables", &["-t", "nat", "-F", "WEFT-POSTRTG"]);
    wait_for("masquerade rules restored", Duration::from_secs(15), || {
        nat(&h0)
            .contains("-A WEFT-POSTRTG -s 10.5.0.0/16 ! -d 224.0.0.0/4 -j MASQUERADE")
            .then_some(())
    });
    // dockerd made DOCKER-USER after weft started: weft's forward chain is jumped to from its top
    // (Docker 28+ drops the overlay's traffic to unpublished ports in its own chains otherwise).
    let filter = |ns: &str| {
        String::from_utf8_lossy(&netns::exec(ns, "iptables", &["-S", "DOCKER-USER"]).stdout)
            .into_owned()
    };
    wait_for("the jump from DOCKER-USER", Duration::from_secs(15), || {
        let f = filter(&h0);
        let first = f
            .lines()
            .find(|l| l.starts_with("-A DOCKER-USER"))?
            .to_string();
        first.contains("-j WEFT-FWD").then_some(())
    });
    bed.hosts[0].weft.as_mut().unwrap().stop();
    assert!(
        !nat(&h0).contains("WEFT-POSTRTG"),
        "rules removed on clean shutdown: {}",
        nat(&h0)
    );
    assert!(!filter(&h0).contains("WEFT-FWD"), "{}", filter(&h0));
    drop(dockerds);
}

#[test]
fn dual_stack_containers_on_real_dockerd_reach_each_other_over_ipv6() {
    let mut bed = Bed::new(
        2,
        r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00:5::/48","Backend":{"Type":"vxlan"}}"#,
    );
    let mut dockerds = Vec::new();
    let mut names = Vec::new();
    for i in 0..2 {
        bed.start_weft(i, &["--ip-masq"]);
        let subnet6 = bed.weft(i).wait_subnet6();
        wait_for("subnet.env", T, || {
            bed.weft(i).subnet_file().exists().then_some(())
        });
        let opts = docker_opts(&bed.weft(i).subnet_file());
        assert!(
            opts.contains(&"--ipv6".to_string())
                && opts.contains(&format!("--fixed-cidr-v6={subnet6}")),
            "{opts:?}"
        );
        let d = Dockerd::start(&bed.hosts[i].ns.name, &opts);
        names.push(d.run(&format!("c{i}")));
        dockerds.push(d);
    }
    let ips: Vec<std::net::Ipv6Addr> = (0..2).map(|i| dockerds[i].ip6_of(&names[i])).collect();
    for (i, ip) in ips.iter().enumerate() {
        let subnet6: ipnet::Ipv6Net = bed.weft(i).wait_subnet6().parse().unwrap();
        assert!(subnet6.contains(ip), "{ip} in {subnet6}");
    }
    for (from, to) in [(0, 1), (1, 0)] {
        wait_for(&format!("container {from} pings {}", ips[to]), T, || {
            dockerds[from].ping6(&names[from], ips[to]).then_some(())
        });
    }
    let ns: Vec<String> = (0..2).map(|i| dockerds[i].netns_of(&names[i])).collect();
    for (from, to) in [(0, 1), (1, 0)] {
        let (sent, got) = netns::transfer(&ns[from], &ns[to], ips[to], 10 << 20);
        assert_eq!(
            sent, got,
            "byte-identical over IPv6 from container {from} to {to}"
        );
    }
    // IPv4 still works beside it.
    let ip4: Vec<Ipv4Addr> = (0..2).map(|i| dockerds[i].ip_of(&names[i])).collect();
    wait_for("container 0 pings container 1 over IPv4", T, || {
        dockerds[0].ping(&names[0], ip4[1]).then_some(())
    });
}
