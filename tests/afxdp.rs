//! AF_XDP underlay tests in network namespaces on veth with a real etcd: pings and byte-identical
//! transfers through XDP sockets (over IPv4, and over IPv6 on dual-stack networks), a mixed cluster with a
//! kernel flannel.1 host, driver-mode refusal, the host's other traffic untouched, a peer's MAC change
//! followed, somebody else's XDP program left alone, and no XDP program left behind.

mod common;

use std::time::Duration;

use common::netns::Bed;

const T: Duration = Duration::from_secs(20);

fn config(backend: &str) -> String {
    format!(r#"{{"Network":"10.5.0.0/16","Backend":{{"Type":"{backend}"}}}}"#)
}

/// The XDP program attached to host `i`'s eth0, as `ip link` shows it ("" when none).
fn xdp_on(bed: &Bed, i: usize) -> String {
    let out = common::netns::exec(&bed.hosts[i].ns.name, "ip", &["-d", "link", "show", "eth0"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines()
        .filter(|l| l.contains("xdp") || l.contains("prog/xdp"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Three hosts whose underlay links have two queues, so each of the two workers has its own socket.
fn af_xdp_cluster(backend: &str, flags: &[&str]) {
    let mut bed = Bed::with_queues(3, &config(backend), 2);
    for i in 0..3 {
        let mut f = vec!["--workers=2", "--underlay=af-xdp"];
        f.extend_from_slice(flags);
        bed.start_weft(i, &f);
    }
    let ips: Vec<_> = (0..3).map(|i| bed.attach_container(i)).collect();
    for i in 0..3 {
        let st = bed.weft(i).status().expect("status");
        assert!(
            st["underlay"]
                .as_str()
                .unwrap_or("")
                .contains("2 of 2 workers"),
            "host {i} runs an AF_XDP underlay: {st}"
        );
        assert!(
            xdp_on(&bed, i).contains("prog/xdp"),
            "program attached on host {i}"
        );
    }
    for from in 0..3 {
        for (to, ip) in ips.iter().enumerate() {
            if from != to {
                bed.wait_ping(from, *ip, T);
            }
        }
    }
    let (sent, got) = bed.transfer(0, 2, 30 << 20);
    assert_eq!(got.1, 30 << 20, "all bytes arrived");
    assert_eq!(sent, got, "byte-identical");
    let (sent, got) = bed.transfer(2, 1, 30 << 20);
    assert_eq!(sent, got, "byte-identical the other way");
    let tx = bed
        .weft(0)
        .metric("weft_xdp_frames_total{direction=\"tx\"}")
        .unwrap();
    let rx = bed
        .weft(2)
        .metric("weft_xdp_frames_total{direction=\"rx\"}")
        .unwrap();
    assert!(
        tx > 1000 && rx > 1000,
        "the data went through the XDP sockets: tx {tx}, rx {rx}"
    );
    for i in 0..3 {
        bed.hosts[i].weft.as_mut().unwrap().stop();
        assert_eq!(
            xdp_on(&bed, i),
            "",
            "no XDP program left on host {i} after weft stopped"
        );
    }
}

#[test]
fn vxlan_cluster_over_af_xdp() {
    af_xdp_cluster("vxlan", &[]);
}

#[test]
fn udp_backend_over_af_xdp_in_generic_mode() {
    af_xdp_cluster("udp", &["--xdp-mode=generic"]);
}

/// Three dual-stack hosts with AF_XDP underlays (two queues, two workers): every container reaches every
/// other over IPv4 and IPv6, and 20 MB cross byte-identical over IPv6 both ways through the XDP sockets of
/// both ends: the receiver's `rx` and the sender's `tx` frame counters grow by at least half the transfer's
/// frames during it (only IPv6 flows then), which they do not when IPv6 takes the kernel's sockets.
fn af_xdp_dual_stack_cluster(backend: &str, flags: &[&str]) {
    let config = format!(
        r#"{{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00:5::/48","Backend":{{"Type":"{backend}"}}}}"#
    );
    let mut bed = Bed::with_queues(3, &config, 2);
    for i in 0..3 {
        let mut f = vec!["--workers=2", "--underlay=af-xdp"];
        f.extend_from_slice(flags);
        bed.start_weft(i, &f);
    }
    let ips: Vec<_> = (0..3).map(|i| bed.attach_container(i)).collect();
    let ips6: Vec<_> = (0..3).map(|i| bed.attach_container6(i)).collect();
    for i in 0..3 {
        let st = bed.weft(i).status().expect("status");
        assert!(
            st["underlay"]
                .as_str()
                .unwrap_or("")
                .contains("2 of 2 workers"),
            "host {i} runs an AF_XDP underlay: {st}"
        );
    }
    for from in 0..3 {
        for to in 0..3 {
            if from != to {
                bed.wait_ping6(from, ips6[to], T);
                bed.wait_ping(from, ips[to], T);
            }
        }
    }
    let frames = |i: usize, dir: &str| {
        bed.weft(i)
            .metric(&format!("weft_xdp_frames_total{{direction=\"{dir}\"}}"))
            .expect("the AF_XDP frame counter")
    };
    const BYTES: usize = 20 << 20;
    // At least half the data's frames (each carries at most an MTU of it).
    const FRAMES: u64 = (BYTES / 1500 / 2) as u64;
    for (from, to) in [(0, 2), (2, 0)] {
        let (rx0, tx0) = (frames(to, "rx"), frames(from, "tx"));
        let (sent, got) = bed.transfer6(from, to, BYTES);
        assert_eq!(got.1, BYTES, "all bytes arrived over IPv6 {from} -> {to}");
        assert_eq!(sent, got, "byte-identical over IPv6 {from} -> {to}");
        let (rx, tx) = (frames(to, "rx") - rx0, frames(from, "tx") - tx0);
        assert!(
            rx >= FRAMES,
            "IPv6 frames reached host {to} through its AF_XDP sockets: {rx} frames, want {FRAMES}"
        );
        assert!(
            tx >= FRAMES,
            "IPv6 frames left host {from} through its AF_XDP sockets: {tx} frames, want {FRAMES}"
        );
    }
    for i in 0..3 {
        bed.hosts[i].weft.as_mut().unwrap().stop();
        assert_eq!(xdp_on(&bed, i), "", "no XDP program left on host {i}");
    }
}

#[test]
fn vxlan_dual_stack_cluster_over_af_xdp() {
    af_xdp_dual_stack_cluster("vxlan", &[]);
}

#[test]
fn udp_backend_dual_stack_over_af_xdp_in_generic_mode() {
    af_xdp_dual_stack_cluster("udp", &["--xdp-mode=generic"]);
}

#[test]
fn driver_mode_refused_falls_back_to_generic_mode_or_is_reported() {
    let mut bed = Bed::new(2, &config("vxlan"));
    // veth refuses driver-mode XDP for programs without multi-buffer support when the peer's MTU is
    // larger than a page: the underlay side of host 0's link gets a jumbo MTU.
    common::netns::ip(&["-n", &bed.underlay.name, "link", "set", "p1", "mtu", "9000"]);
    bed.start_weft(0, &["--underlay=af-xdp"]);
    bed.start_weft(1, &["--underlay=af-xdp"]);
    let c0 = bed.attach_container(0);
    let c1 = bed.attach_container(1);
    bed.wait_ping(0, c1, T);
    bed.wait_ping(1, c0, T);
    let st = bed.weft(0).status().unwrap();
    assert!(
        st["underlay"].as_str().unwrap().contains("generic mode"),
        "host 0 fell back: {st}"
    );
    assert!(
        xdp_on(&bed, 0).contains("xdpgeneric"),
        "{}",
        xdp_on(&bed, 0)
    );
    let log = bed.weft(0).log();
    assert_eq!(
        log.matches("using generic mode").count(),
        1,
        "one log line says so: {log}"
    );
    let st = bed.weft(1).status().unwrap();
    assert!(
        st["underlay"].as_str().unwrap().contains("driver mode"),
        "{st}"
    );
    let (sent, got) = bed.transfer(0, 1, 10 << 20);
    assert_eq!(sent, got, "byte-identical");
    // Asked for driver mode outright, weft refuses to start and says what to pass instead.
    bed.hosts[0].weft.as_mut().unwrap().stop();
    bed.start_weft(0, &["--underlay=af-xdp", "--xdp-mode=driver"]);
    let code = bed.hosts[0].weft.as_mut().unwrap().wait_exit(T);
    assert_ne!(code, Some(0));
    let log = bed.weft(0).log();
    assert!(
        log.contains("refused driver-mode XDP") && log.contains("--xdp-mode auto"),
        "{log}"
    );
    assert_eq!(xdp_on(&bed, 0), "", "nothing left attached");
}

#[test]
fn mixed_cluster_af_xdp_host_with_a_kernel_flannel_host() {
    let bed = common::netns::mixed_cluster(&config("vxlan"), &["--underlay=af-xdp"]);
    let rx = bed
        .weft(0)
        .metric("weft_xdp_frames_total{direction=\"rx\"}")
        .unwrap();
    let tx = bed
        .weft(0)
        .metric("weft_xdp_frames_total{direction=\"tx\"}")
        .unwrap();
    assert!(
        rx > 1000 && tx > 1000,
        "the kernel host's traffic went through AF_XDP: rx {rx}, tx {tx}"
    );
}

#[test]
fn host_traffic_untouched_and_a_stale_program_removed_at_the_next_start() {
    let mut bed = Bed::new(2, &config("vxlan"));
    bed.start_weft(0, &["--underlay=af-xdp"]);
    bed.start_weft(1, &[]);
    let c0 = bed.attach_container(0);
    let c1 = bed.attach_container(1);
    bed.wait_ping(1, c0, T);
    // A TCP service on the AF_XDP host's own address (not the overlay) is reachable while weft runs.
    let h0 = bed.hosts[0].ip;
    let (ready, accepted) = common::netns::accept_one(&bed.hosts[0].ns.name, h0, 9400);
    ready.recv().unwrap();
    assert!(
        common::netns::connect_from(&bed.hosts[1].ns.name, h0, 9400),
        "TCP to a non-overlay port"
    );
    assert_eq!(accepted.join().unwrap().ip(), bed.hosts[1].ip);
    // A crash leaves the program attached; the next start removes it and attaches its own.
    bed.hosts[0].weft.as_mut().unwrap().kill();
    assert!(
        xdp_on(&bed, 0).contains("prog/xdp"),
        "the crashed run's program is still there"
    );
    bed.hosts[0].weft.as_mut().unwrap().start_again();
    common::wait_for("weft ready again", T, || {
        bed.weft(0).status()?["ready"].as_bool()?.then_some(())
    });
    assert!(
        bed.weft(0)
            .log()
            .contains("removed a stale weft XDP program"),
        "{}",
        bed.weft(0).log()
    );
    bed.wait_ping(0, c1, T);
    bed.wait_ping(1, c0, T);
    bed.hosts[0].weft.as_mut().unwrap().stop();
    assert_eq!(
        xdp_on(&bed, 0),
        "",
        "no XDP program left after a clean stop"
    );
}

#[test]
fn somebody_elses_xdp_program_is_left_alone_and_reported() {
    use std::os::fd::AsRawFd;
    let mut bed = Bed::new(1, &config("vxlan"));
    let ns = bed.hosts[0].ns.name.clone();
    // Another tool's XDP program on the underlay (a pass-everything program under another name).
    let prog = weft::wire::xdp_filter::redirect_program(
        std::net::Ipv4Addr::new(0, 0, 0, 0),
        None,
        1,
        -1,
        3840,
    );
    let pass_all = &prog[prog.len() - 2..];
    let other =
        weft::dataplane::xdp::bpf::load_xdp_named("other_tool", pass_all).expect("load a program");
    let fd = other.as_raw_fd();
    common::netns::in_netns(&ns, move || {
        let idx = nix::net::if_::if_nametoindex("eth0").unwrap();
        weft::dataplane::xdp::link::attach(idx, fd, weft::dataplane::xdp::XdpMode::Generic)
            .expect("attach it");
    });
    bed.start_weft(0, &["--underlay=af-xdp"]);
    let code = bed.hosts[0].weft.as_mut().unwrap().wait_exit(T);
    assert_ne!(code, Some(0), "weft refused to start");
    let log = bed.weft(0).log();
    assert!(
        log.contains("which is not weft's") && log.contains("other_tool"),
        "one plain line names the program and the fix: {log}"
    );
    assert!(
        xdp_on(&bed, 0).contains("prog/xdp"),
        "the other program is still attached"
    );
}

#[test]
fn next_hop_mac_follows_a_peer_whose_mac_changed() {
    let mut bed = Bed::new(2, &config("vxlan"));
    let h0 = bed.hosts[0].ns.name.clone();
    // Neighbour entries of host 0 go stale within a second and are probed a second after use, so the test
    // does not wait for the kernel's default 30 s.
    let out = common::netns::exec(
        &h0,
        "sysctl",
        &[
            "-qw",
            "net.ipv4.neigh.eth0.base_reachable_time_ms=500",
            "net.ipv4.neigh.eth0.delay_first_probe_time=1",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    // One worker, so every datagram of host 0 takes the AF_XDP path (no UDP socket keeps the kernel's
    // neighbour entry fresh behind weft's back).
    bed.start_weft(0, &["--underlay=af-xdp", "--workers=1"]);
    bed.start_weft(1, &[]);
    let c0 = bed.attach_container(0);
    let c1 = bed.attach_container(1);
    bed.wait_ping(0, c1, T);
    bed.wait_ping(1, c0, T);
    // Host 1 (a UDP-underlay host: its kernel drops frames to any other MAC) gets a new MAC address. A MAC
    // change flushes its neighbour table, and any ARP request it then sent would teach host 0's kernel the
    // new MAC without weft's help; so in the same breath it learns host 0's and the switch's (etcd's) MACs
    // for good and never ARPs: host 0 learns it only by probing, which weft must notice and follow.
    let mac_of = |ns: &str, dev: &str| {
        let out = common::netns::exec(ns, "cat", &[&format!("/sys/class/net/{dev}/address")]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let script = format!(
        "ip link set eth0 address 02:aa:bb:cc:dd:01 && \
         ip neigh replace {} lladdr {} dev eth0 nud permanent && \
         ip neigh replace {} lladdr {} dev eth0 nud permanent",
        bed.hosts[0].ip,
        mac_of(&h0, "eth0"),
        common::netns::ETCD_IP,
        mac_of(&bed.underlay.name, "br0"),
    );
    let out = common::netns::exec(&bed.hosts[1].ns.name, "sh", &["-c", &script]);
    assert!(out.status.success(), "{out:?}");
    bed.wait_ping(0, c1, T);
    // Every transfer arrives whole; and once weft has followed the new MAC (its next-hop refresh runs
    // every second, and a neighbour entry being re-probed sends through the kernel meanwhile), a whole
    // transfer leaves through AF_XDP again.
    let deadline = std::time::Instant::now() + T;
    loop {
        let before = bed
            .weft(0)
            .metric("weft_xdp_frames_total{direction=\"tx\"}")
            .unwrap();
        let (sent, got) = bed.transfer(0, 1, 2 << 20);
        assert_eq!(sent, got, "byte-identical after the change");
        let after = bed
            .weft(0)
            .metric("weft_xdp_frames_total{direction=\"tx\"}")
            .unwrap();
        if after > before + 1000 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "traffic after the change never left through AF_XDP again (last transfer: {before} -> {after})"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// A host on the plain UDP underlay sends bulk traffic as UDP GSO trains, which cross a veth whole; a
/// generic-mode AF_XDP host sees each train as one frame, larger than an XDP socket's frame. Those go to
/// the kernel's UDP socket instead of being dropped, so the transfer completes (it stalled before).
#[test]
fn bulk_from_a_udp_socket_host_reaches_a_generic_mode_af_xdp_host() {
    for backend in ["vxlan", "udp"] {
        let mut bed = Bed::with_queues(2, &config(backend), 2);
        bed.start_weft(0, &["--workers=2"]);
        bed.start_weft(
            1,
            &["--workers=2", "--underlay=af-xdp", "--xdp-mode=generic"],
        );
        let ips: Vec<_> = (0..2).map(|i| bed.attach_container(i)).collect();
        bed.wait_ping(0, ips[1], T);
        bed.wait_ping(1, ips[0], T);
        for (from, to) in [(0, 1), (1, 0)] {
            let (sent, got) = bed.transfer(from, to, 20 << 20);
            assert_eq!(
                got.1,
                20 << 20,
                "{backend}: all bytes arrived {from} -> {to}"
            );
            assert_eq!(sent, got, "{backend}: byte-identical {from} -> {to}");
        }
        let rx = bed
            .weft(1)
            .metric("weft_xdp_frames_total{direction=\"rx\"}")
            .unwrap();
        assert!(
            rx > 0,
            "{backend}: small frames still come through the XDP sockets"
        );
    }
}
