//! The userspace data plane repairs itself: a deleted Network route, a removed address, a tun device set down
//! or given another MTU is put back, and a deleted tun device is created again with its queues — each within
//! seconds, with one log line per fault.

mod common;

use std::time::{Duration, Instant};

use common::netns::{exec, ip, Bed};
use common::wait_for;

const VXLAN: &str = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#;
/// The repair must be done within this long (the daemon checks every second).
const REPAIR: Duration = Duration::from_secs(3);

#[test]
fn the_userspace_data_plane_repairs_itself() {
    let (bed, c0, c1) = Bed::pinging_pair(VXLAN);
    let ns = bed.hosts[0].ns.name.clone();
    let subnet = bed.weft(0).wait_subnet();
    let tun_addr = format!("{}/32", subnet.split('/').next().unwrap());
    let faults: [(&str, Vec<&str>, &str); 5] = [
        (
            "route",
            vec!["route", "del", "10.5.0.0/16", "dev", "weft0"],
            "tun device's route had been changed",
        ),
        (
            "down",
            vec!["link", "set", "weft0", "down"],
            "tun device's link state",
        ),
        (
            "mtu",
            vec!["link", "set", "weft0", "mtu", "1300"],
            "tun device's MTU",
        ),
        (
            "address",
            vec!["addr", "del", &tun_addr, "dev", "weft0"],
            "tun device's address",
        ),
        (
            "device",
            vec!["link", "del", "weft0"],
            "was gone; built the userspace data plane again",
        ),
    ];
    for (what, cmd, said) in faults {
        let lines_before = bed.weft(0).log().matches(said).count();
        let mut args = vec!["-n", ns.as_str()];
        args.extend(&cmd);
        ip(&args);
        let broken = Instant::now();
        // Put back exactly as before (up, the overlay MTU, the route), and forwarding both ways.
        let restored = || {
            let link = exec(&ns, "ip", &["-o", "link", "show", "weft0"]);
            let link = String::from_utf8_lossy(&link.stdout).into_owned();
            let route = exec(&ns, "ip", &["route", "show", "10.5.0.0/16"]);
            let route = String::from_utf8_lossy(&route.stdout).into_owned();
            (link.contains(",UP") && link.contains("mtu 1450") && route.contains("weft0"))
                .then_some(())
        };
        wait_for(&format!("{what} put back"), REPAIR, restored);
        bed.wait_ping(0, c1, REPAIR);
        bed.wait_ping(1, c0, REPAIR);
        let took = broken.elapsed();
        assert!(took < REPAIR, "{what}: back after {took:?}");
        eprintln!("{what}: put back and pinging both ways {took:?} after the fault");
        // One log line for the fault.
        wait_for(&format!("{what} logged"), Duration::from_secs(5), || {
            (bed.weft(0).log().matches(said).count() == lines_before + 1).then_some(())
        });
        assert_eq!(bed.weft(0).get("/readyz").map(|r| r.0), Some(200), "{what}");
    }
}

#[test]
fn a_worker_that_panics_is_noticed_and_the_data_plane_rebuilt() {
    let mut bed = Bed::new(2, VXLAN);
    // Debug builds only: the first worker thread panics once, as a bug would.
    bed.start_weft_with_pre(0, &[], "export WEFT_FAULT_PANIC_WORKER=1");
    bed.start_weft(1, &[]);
    let c0 = bed.attach_container(0);
    let c1 = bed.attach_container(1);
    wait_for(
        "the panic noticed and the data plane rebuilt",
        Duration::from_secs(10),
        || {
            let log = bed.weft(0).log();
            (log.contains("weft-worker-0 panicked: injected fault")
                && log.contains("built the userspace data plane again"))
            .then_some(())
        },
    );
    bed.wait_ping(0, c1, REPAIR);
    bed.wait_ping(1, c0, REPAIR);
    assert_eq!(bed.weft(0).get("/readyz").map(|r| r.0), Some(200));
}

#[test]
fn readyz_says_503_while_a_repair_fails() {
    let (bed, _, c1) = Bed::pinging_pair(VXLAN);
    let ns = bed.hosts[0].ns.name.clone();
    // The tun device goes, and something else takes its name: weft cannot build it again.
    ip(&["-n", &ns, "link", "del", "weft0"]);
    ip(&["-n", &ns, "link", "add", "weft0", "type", "bridge"]);
    wait_for("/readyz 503", REPAIR, || {
        (bed.weft(0).get("/readyz").map(|r| r.0) == Some(503)).then_some(())
    });
    let log = bed.weft(0).log();
    assert_eq!(
        log.matches("the userspace data plane is broken").count(),
        1,
        "{log}"
    );
    // The name is free again: weft builds its data plane and is ready.
    ip(&["-n", &ns, "link", "del", "weft0"]);
    wait_for("/readyz 200", REPAIR, || {
        (bed.weft(0).get("/readyz").map(|r| r.0) == Some(200)).then_some(())
    });
    bed.wait_ping(0, c1, REPAIR);
    assert!(bed
        .weft(0)
        .log()
        .contains("the userspace data plane works again"));
}
