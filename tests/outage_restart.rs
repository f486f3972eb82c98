//! A weft restarted while etcd is down comes up forwarding from what it last knew (its saved state next to
//! subnet.env), keeps its subnet, and holds the same lease in etcd once etcd answers again.

mod common;

use std::time::Duration;

use common::netns::Bed;
use common::wait_for;

const VXLAN: &str = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#;
const T: Duration = Duration::from_secs(20);

#[test]
fn restart_during_an_etcd_outage_keeps_forwarding() {
    let (mut bed, c0, c1) = Bed::pinging_pair(VXLAN);
    let s0 = bed.weft(0).wait_subnet();
    let key = format!("/coreos.com/network/subnets/{}", s0.replace('/', "-"));
    let lease_before = bed.etcd.get(&key).expect("host 1's lease");

    bed.etcd.stop();
    let restarted = std::time::Instant::now();
    bed.hosts[0].weft.as_mut().unwrap().restart();
    // Forwarding again, both ways, with etcd still down; same subnet, ready.
    bed.wait_ping(0, c1, Duration::from_secs(10));
    bed.wait_ping(1, c0, Duration::from_secs(10));
    eprintln!(
        "forwarding again {:?} after the restart, etcd down",
        restarted.elapsed()
    );
    let w = bed.weft(0);
    assert_eq!(w.subnet().as_deref(), Some(s0.as_str()));
    assert_eq!(w.get("/readyz").map(|r| r.0), Some(200));
    assert!(
        w.log().contains("starting from the state saved at"),
        "{}",
        w.log()
    );

    // etcd returns: the same lease is held there (same subnet, same VTEP MAC), and traffic never stopped.
    bed.etcd.restart();
    wait_for("weft to reconcile with etcd", T, || {
        bed.weft(0)
            .log()
            .contains("etcd answers again; holding the same subnet there")
            .then_some(())
    });
    let lease_after = bed.etcd.get(&key).expect("the lease is in etcd again");
    let mac = |v: &str| {
        serde_json::from_str::<serde_json::Value>(v).unwrap()["BackendData"]["VtepMAC"].clone()
    };
    assert_eq!(mac(&lease_after), mac(&lease_before), "{lease_after}");
    assert!(bed.ping_once(0, c1) && bed.ping_once(1, c0));
}
