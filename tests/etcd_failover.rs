//! etcd with several endpoints: a dead one in the list costs nothing, and losing the member weft talks to
//! (in a real three-member cluster) neither breaks the lease nor the peer watch.

mod common;

use std::time::{Duration, Instant};

use common::{free_port, Etcd, EtcdCluster, Weft};

const CONFIG: &str = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#;
/// Renewals every 2 s, so etcd is asked often.
const SHORT_LEASE: [&str; 2] = ["--subnet-lease-ttl=6s", "--subnet-lease-renew-margin=4s"];

/// Watches `w` for `how_long`: etcd must stay connected and renewals must go on.
fn stays_connected(w: &Weft, how_long: Duration) {
    let renewals_before = w.metric("weft_lease_renewals_total").unwrap_or(0);
    let end = Instant::now() + how_long;
    while Instant::now() < end {
        assert_eq!(
            w.metric("weft_etcd_connected"),
            Some(1),
            "etcd reported lost:\n{}",
            w.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let renewals = w.metric("weft_lease_renewals_total").unwrap_or(0);
    assert!(
        renewals >= renewals_before + 3,
        "renewals stalled ({renewals_before} -> {renewals}):\n{}",
        w.log()
    );
    assert!(!w.log().contains("lost etcd"), "{}", w.log());
}

#[test]
fn a_dead_endpoint_first_in_the_list_costs_nothing() {
    let etcd = Etcd::start();
    etcd.set_config(CONFIG);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let started = Instant::now();
    let w = Weft::start_with_endpoints(
        &format!("{dead},{}", etcd.endpoint()),
        "127.25.0.1",
        &SHORT_LEASE,
    );
    w.wait_subnet();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "start-up took {took:?}");
    eprintln!("subnet leased {took:?} after start with a dead endpoint first");
    stays_connected(&w, Duration::from_secs(10));
}

#[test]
fn losing_the_member_weft_talks_to_changes_nothing() {
    let mut cluster = EtcdCluster::start();
    cluster.members[1].set_config(CONFIG);
    let eps = cluster.endpoints();
    let a = Weft::start_with_endpoints(&eps, "127.25.1.1", &SHORT_LEASE);
    let sa = a.wait_subnet();
    // weft asks the first member while it answers; kill it.
    cluster.members[0].stop();
    stays_connected(&a, Duration::from_secs(8));
    eprintln!("member 0 killed: etcd connected and renewing throughout 8 s");
    // The peer watch moved too: a host that joins through the other members is seen.
    let rest: Vec<String> = cluster.members[1..].iter().map(Etcd::endpoint).collect();
    let b = Weft::start_with_endpoints(&rest.join(","), "127.25.1.2", &[]);
    let sb = b.wait_subnet();
    a.wait_peers(std::slice::from_ref(&sb), Duration::from_secs(20));
    b.wait_peers(&[sa], Duration::from_secs(20));
}
