//! Every transition of the lease lifecycle, driven by hand on virtual time.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;

use super::*;

const ME: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);
const OTHER: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 20);
const TTL: Duration = Duration::from_secs(24 * 3600);
const RENEW: Duration = Duration::from_secs(23 * 3600);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn net(s: &str) -> SubnetKey {
    SubnetKey::v4(s.parse().unwrap())
}

fn params(network: &str, previous: Option<&str>, renew_every: Duration) -> LeaseParams {
    LeaseParams {
        config: NetworkConfig::parse(network).unwrap(),
        public_ip: ME,
        public_ipv6: None,
        previous: previous.map(net),
        previous_mac: None,
        previous_mac6: None,
        wg_public_key: None,
        ttl: TTL,
        renew_every,
    }
}

const VXLAN: &str = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#;

fn machine(p: LeaseParams) -> LeaseLifecycle<StdRng> {
    LeaseLifecycle::new(p, StdRng::seed_from_u64(1))
}

fn down() -> StoreError {
    StoreError::Timeout {
        endpoints: "http://127.0.0.1:2379".into(),
        doing: "testing".into(),
    }
}

fn stored(subnet: &str, ip: Ipv4Addr, mac: [u8; 6], etcd_lease: i64, rev: i64) -> StoredLease {
    StoredLease {
        subnet: net(subnet),
        attrs: Ok(LeaseAttrs::vxlan(ip, 1, MacAddr(mac))),
        etcd_lease,
        mod_revision: rev,
    }
}

fn events(m: &mut LeaseLifecycle<StdRng>) -> Vec<Event> {
    std::iter::from_fn(|| m.poll_event()).collect()
}

fn action(m: &mut LeaseLifecycle<StdRng>) -> Action {
    m.poll_action().expect("an action")
}

/// Takes the PutIf the machine asks for.
fn put_if(m: &mut LeaseLifecycle<StdRng>) -> (SubnetKey, LeaseAttrs, i64, i64) {
    match action(m) {
        Action::PutIf {
            subnet,
            attrs,
            lease_id,
            expect_rev,
            ..
        } => (subnet, attrs, lease_id, expect_rev),
        other => panic!("expected PutIf, got {other:?}"),
    }
}

/// Lists `leases`, grants etcd lease `id` and wins the transaction; returns the subnet taken.
fn acquire_with(
    m: &mut LeaseLifecycle<StdRng>,
    t: Instant,
    leases: Vec<StoredLease>,
    id: i64,
) -> SubnetKey {
    assert_eq!(action(m), Action::ListLeases);
    m.handle(t, Outcome::Listed(Ok(leases)));
    assert_eq!(action(m), Action::Grant { ttl: TTL });
    m.handle(t, Outcome::Granted(Ok(id)));
    let (subnet, _, lease_id, _) = put_if(m);
    assert_eq!(lease_id, id);
    m.handle(t, Outcome::Written(Ok(true)));
    subnet
}

/// A machine holding a fresh lease with etcd lease 100, acquired at `t`.
fn holding(renew_every: Duration, t: Instant) -> (LeaseLifecycle<StdRng>, SubnetKey) {
    let mut m = machine(params(VXLAN, None, renew_every));
    let s = acquire_with(&mut m, t, vec![], 100);
    events(&mut m);
    (m, s)
}

/// The key as this host wrote it.
fn ours(m: &LeaseLifecycle<StdRng>, etcd_lease: i64, rev: i64) -> StoredLease {
    let h = m.held().unwrap();
    StoredLease {
        subnet: h.subnet,
        attrs: Ok(h.attrs.clone()),
        etcd_lease,
        mod_revision: rev,
    }
}

/// Advances to the next deadline, which must be `at`, and takes the action it starts.
fn tick(m: &mut LeaseLifecycle<StdRng>, at: Instant) -> Action {
    assert_eq!(m.poll_timeout(), Some(at));
    m.handle_timeout(at);
    action(m)
}

// ---- acquiring ----

#[test]
fn fresh_subnet_is_created_only_if_absent() {
    let t = Instant::now();
    let mut m = machine(params(VXLAN, None, RENEW));
    assert_eq!(m.poll_timeout(), None, "a request is in flight");
    assert_eq!(action(&mut m), Action::ListLeases);
    m.handle(t, Outcome::Listed(Ok(vec![])));
    assert_eq!(action(&mut m), Action::Grant { ttl: TTL });
    m.handle(t, Outcome::Granted(Ok(7)));
    let (subnet, attrs, id, expect) = put_if(&mut m);
    assert_eq!((id, expect), (7, 0));
    assert_eq!(subnet.v4.unwrap().prefix_len(), 24);
    assert_ne!(subnet, net("10.5.0.0/24"), "the first subnet is skipped");
    assert_eq!(attrs.public_ip, ME);
    assert!(attrs.vxlan_data().is_some());
    m.handle(t, Outcome::Written(Ok(true)));
    assert_eq!(m.poll_action(), None);
    let ev = events(&mut m);
    assert!(matches!(ev[0], Event::EtcdUp));
    assert!(
        matches!(ev[1], Event::Acquired { choice: Choice::Fresh(s), .. } if s == ipnet::IpNet::V4(subnet.v4.unwrap()))
    );
    assert_eq!(
        m.held(),
        Some(&HeldLease {
            subnet,
            attrs,
            etcd_lease: 7
        })
    );
    assert_eq!(m.poll_timeout(), Some(t + CHECK_INTERVAL));
}

#[test]
fn the_lease_carrying_our_ip_is_reused_with_its_mac_and_its_old_etcd_lease_revoked() {
    let t = Instant::now();
    let mut m = machine(params(VXLAN, Some("10.5.3.0/24"), RENEW));
    let mac = [2, 0, 0, 0, 0, 9];
    let leases = vec![
        stored("10.5.3.0/24", OTHER, [2, 0, 0, 0, 0, 3], 5, 10),
        stored("10.5.9.0/24", ME, mac, 6, 42),
    ];
    assert_eq!(action(&mut m), Action::ListLeases);
    m.handle(t, Outcome::Listed(Ok(leases)));
    assert_eq!(action(&mut m), Action::Grant { ttl: TTL });
    m.handle(t, Outcome::Granted(Ok(8)));
    let (subnet, attrs, _, expect) = put_if(&mut m);
    assert_eq!(
        subnet,
        net("10.5.9.0/24"),
        "reuse beats a previous subnet another host holds"
    );
    assert_eq!(expect, 42, "replaced only if unchanged since the listing");
    assert_eq!(attrs.vxlan_data().unwrap().vtep_mac, MacAddr(mac));
    m.handle(t, Outcome::Written(Ok(true)));
    assert_eq!(action(&mut m), Action::Revoke { lease_id: 6 });
    assert!(m.held().is_none(), "held once the old lease is revoked");
    m.handle(t + ms(5), Outcome::Revoked(Err(down())));
    assert_eq!(m.held().unwrap().etcd_lease, 8);
    assert!(matches!(
        events(&mut m).last(),
        Some(Event::Acquired {
            choice: Choice::Reuse(_),
            ..
        })
    ));
    assert_eq!(m.poll_timeout(), Some(t + ms(5) + CHECK_INTERVAL));
}

#[test]
fn reusing_a_reservation_revokes_nothing() {
    let t = Instant::now();
    let mut m = machine(params(VXLAN, None, RENEW));
    assert_eq!(action(&mut m), Action::ListLeases);
    m.handle(
        t,
        Outcome::Listed(Ok(vec![stored(
            "10.5.9.0/24",
            ME,
            [2, 0, 0, 0, 0, 9],
            0,
            42,
        )])),
    );
    // No etcd lease is granted: the key is written without one, so it stays a reservation.
    let (subnet, _, lease_id, expect_rev) = put_if(&mut m);
    assert_eq!((subnet, lease_id, expect_rev), (net("10.5.9.0/24"), 0, 42));
    m.handle(t, Outcome::Written(Ok(true)));
    assert_eq!(m.poll_action(), None);
    assert_eq!(m.held().unwrap().etcd_lease, 0, "it stays a reservation");
    assert!(events(&mut m)
        .iter()
        .any(|e| matches!(e, Event::Reserved { subnet } if *subnet == net("10.5.9.0/24"))));
}

#[test]
fn a_reservation_for_our_ip_wins_over_the_previous_subnet_and_others_never_take_one() {
    let t = Instant::now();
    // Our previous subnet.env said 10.5.3.0/24 (free), but the operator reserved 10.5.9.0/24 for us.
    let mut m = machine(params(VXLAN, Some("10.5.3.0/24"), RENEW));
    assert_eq!(action(&mut m), Action::ListLeases);
    m.handle(
        t,
        Outcome::Listed(Ok(vec![stored(
            "10.5.9.0/24",
            ME,
            [2, 0, 0, 0, 0, 9],
            0,
            42,
        )])),
    );
    assert_eq!(put_if(&mut m).0, net("10.5.9.0/24"));
    // Another host whose previous subnet is reserved for someone else gets a fresh one.
    let mut m = machine(params(VXLAN, Some("10.5.9.0/24"), RENEW));
    assert_eq!(action(&mut m), Action::ListLeases);
    m.handle(
        t,
        Outcome::Listed(Ok(vec![stored(
            "10.5.9.0/24",
            Ipv4Addr::new(192, 0, 2, 99),
            [2, 0, 0, 0, 0, 9],
            0,
            42,
        )])),
    );
    assert_eq!(action(&mut m), Action::Grant { ttl: TTL });
    m.handle(t, Outcome::Granted(Ok(5)));
    assert_ne!(put_if(&mut m).0, net("10.5.9.0/24"));
}

#[test]
fn restart_reclaims_the_subnet_of_the_previous_subnet_env() {
    let t = Instant::now();
    let mut m = machine(params(VXLAN, Some("10.5.77.0/24"), RENEW));
    assert_eq!(action(&mut m), Action::ListLeases);
    m.handle(
        t,
        Outcome::Listed(Ok(vec![stored(
            "10.5.3.0/24",
            OTHER,
            [2, 0, 0, 0, 0, 3],
            5,
            10,
        )])),
    );
    assert_eq!(action(&mut m), Action::Grant { ttl: TTL });
    m.handle(t, Outcome::Granted(Ok(8)));
    let (subnet, _, _, expect) = put_if(&mut m);
    assert_eq!((subnet, expect), (net("10.5.77.0/24"), 0));
    m.handle(t, Outcome::Written(Ok(true)));
    assert!(matches!(
        events(&mut m).last(),
        Some(Event::Acquired {
            choice: Choice::Previous(_),
            ..
        })
    ));
}

#[test]
fn previous_subnet_taken_by_another_host_gives_a_fresh_one() {
    let t = Instant::now();
    let mut m = machine(params(VXLAN, Some("10.5.77.0/24"), RENEW));
    let s = acquire_with(
        &mut m,
        t,
        vec![stored("10.5.77.0/24", OTHER, [2, 0, 0, 0, 0, 3], 5, 10)],
        8,
    );
    assert_ne!(s, net("10.5.77.0/24"));
    assert_eq!(m.poll_action(), None, "another host's lease is not revoked");
    assert!(matches!(
        events(&mut m).last(),
        Some(Event::Acquired {
            choice: Choice::Fresh(_),
            ..
        })
    ));
}

#[test]
fn lost_races_revoke_the_grant_and_retry_after_a_jitter() {
    let t = Instant::now();
    let mut m = machine(params(VXLAN, Some("10.5.77.0/24"), RENEW));
    let mut now = t;
    for race in 1..=3u32 {
        assert_eq!(action(&mut m), Action::ListLeases);
        m.handle(now, Outcome::Listed(Ok(vec![])));
        assert_eq!(action(&mut m), Action::Grant { ttl: TTL });
        m.handle(now, Outcome::Granted(Ok(i64::from(race))));
        let (subnet, _, _, _) = put_if(&mut m);
        m.handle(now, Outcome::Written(Ok(false)));
        assert_eq!(
            action(&mut m),
            Action::Revoke {
                lease_id: i64::from(race)
            }
        );
        assert_eq!(m.poll_timeout(), None, "waits for the revoke");
        m.handle(now, Outcome::Revoked(Ok(())));
        let ev = events(&mut m);
        assert!(
            matches!(ev.last(), Some(Event::RaceLost { subnet: s, races }) if *s == subnet && *races == race),
            "{ev:?}"
        );
        let at = m.poll_timeout().unwrap();
        let jitter = at - now;
        assert!(jitter >= ms(10) && jitter < ms(100), "{jitter:?}");
        m.handle_timeout(at - ms(1));
        assert_eq!(m.poll_action(), None, "not before the jitter");
        m.handle_timeout(at);
        now = at;
    }
    // The fourth round wins; the winner of the previous subnet now shows in the listing.
    let s = acquire_with(
        &mut m,
        now,
        vec![stored("10.5.77.0/24", OTHER, [2, 0, 0, 0, 0, 3], 5, 10)],
        9,
    );
    assert_ne!(s, net("10.5.77.0/24"));
    assert_eq!(m.held().unwrap().etcd_lease, 9);
}

#[test]
fn listing_failures_back_off_from_200ms_to_5s_then_recover() {
    let t = Instant::now();
    let mut m = machine(params(VXLAN, None, RENEW));
    let mut now = t;
    assert_eq!(action(&mut m), Action::ListLeases);
    for want in [200, 400, 800, 1600, 3200, 5000, 5000] {
        m.handle(now, Outcome::Listed(Err(down())));
        let ev = events(&mut m);
        assert!(matches!(
            ev[..],
            [Event::EtcdFailed {
                during: Doing::Listing,
                ..
            }]
        ));
        now += ms(want);
        assert_eq!(tick(&mut m, now), Action::ListLeases);
    }
    m.handle(now, Outcome::Listed(Ok(vec![])));
    assert!(matches!(events(&mut m)[..], [Event::EtcdUp]));
    assert_eq!(action(&mut m), Action::Grant { ttl: TTL });
}

#[test]
fn claim_failures_retry_from_the_listing_with_the_same_backoff() {
    let t = Instant::now();
    let mut m = machine(params(VXLAN, None, RENEW));
    assert_eq!(action(&mut m), Action::ListLeases);
    m.handle(t, Outcome::Listed(Ok(vec![])));
    action(&mut m);
    m.handle(t, Outcome::Granted(Err(down())));
    assert!(matches!(
        events(&mut m).last(),
        Some(Event::EtcdFailed {
            during: Doing::Claiming,
            ..
        })
    ));
    assert_eq!(tick(&mut m, t + ms(200)), Action::ListLeases);
    let t2 = t + ms(200);
    m.handle(t2, Outcome::Listed(Ok(vec![])));
    action(&mut m);
    m.handle(t2, Outcome::Granted(Ok(3)));
    put_if(&mut m);
    m.handle(t2, Outcome::Written(Err(down())));
    assert!(matches!(
        events(&mut m).last(),
        Some(Event::EtcdFailed {
            during: Doing::Claiming,
            ..
        })
    ));
    assert_eq!(tick(&mut m, t2 + ms(400)), Action::ListLeases);
    assert!(m.held().is_none());
}

#[test]
fn exhausted_network_is_fatal() {
    let t = Instant::now();
    let mut m = machine(params(
        r#"{"Network":"10.9.0.0/28","Backend":{"Type":"udp"}}"#,
        None,
        RENEW,
    ));
    let full = ["10.9.0.4/30", "10.9.0.8/30", "10.9.0.12/30"]
        .iter()
        .map(|s| StoredLease {
            subnet: net(s),
            attrs: LeaseAttrs::from_json(b"not JSON"),
            etcd_lease: 1,
            mod_revision: 1,
        })
        .collect();
    assert_eq!(action(&mut m), Action::ListLeases);
    m.handle(t, Outcome::Listed(Ok(full)));
    match action(&mut m) {
        Action::Fail(Fatal::Exhausted(e)) => assert_eq!(e.count, 3),
        other => panic!("{other:?}"),
    }
    assert_eq!(m.poll_action(), None);
    assert_eq!(m.poll_timeout(), None);
    m.handle_timeout(t + secs(3600));
    assert_eq!(m.poll_action(), None, "nothing after failing");
}

#[test]
fn udp_lease_carries_only_the_public_ip() {
    let t = Instant::now();
    let mut m = machine(params(
        r#"{"Network":"10.8.0.0/16","Backend":{"Type":"udp"}}"#,
        None,
        RENEW,
    ));
    acquire_with(&mut m, t, vec![], 1);
    let attrs = &m.held().unwrap().attrs;
    assert_eq!(attrs, &LeaseAttrs::udp(ME));
}

#[test]
fn outcomes_not_asked_for_are_ignored() {
    let t = Instant::now();
    let mut m = machine(params(VXLAN, None, RENEW));
    assert_eq!(action(&mut m), Action::ListLeases);
    m.handle(t, Outcome::Granted(Ok(1)));
    m.handle(t, Outcome::KeptAlive(Ok(5)));
    assert_eq!(m.poll_action(), None);
    m.handle(t, Outcome::Listed(Ok(vec![])));
    assert_eq!(action(&mut m), Action::Grant { ttl: TTL });
}

// ---- holding ----

#[test]
fn the_key_is_checked_every_10s_while_it_is_ours() {
    let t = Instant::now();
    let (mut m, subnet) = holding(RENEW, t);
    m.handle_timeout(t + secs(9));
    assert_eq!(m.poll_action(), None);
    let mut now = t;
    for _ in 0..3 {
        now += CHECK_INTERVAL;
        assert_eq!(tick(&mut m, now), Action::ReadOwnKey { subnet });
        assert_eq!(m.poll_timeout(), None);
        let key = ours(&m, 100, 5);
        m.handle(now, Outcome::OwnKey(Ok(Some(key))));
        assert_eq!(m.poll_action(), None, "not due for renewal");
        assert!(matches!(events(&mut m)[..], [Event::EtcdUp]));
    }
}

#[test]
fn renewal_at_expiry_minus_margin() {
    // TTL 6 s, margin 4 s: renew every 2 s, checking no later than that.
    let t = Instant::now();
    let (mut m, subnet) = holding(secs(2), t);
    let mut now = t;
    for _ in 0..3 {
        now += secs(2);
        assert_eq!(tick(&mut m, now), Action::ReadOwnKey { subnet });
        let key = ours(&m, 100, 5);
        m.handle(now, Outcome::OwnKey(Ok(Some(key))));
        assert_eq!(action(&mut m), Action::KeepAlive { lease_id: 100 });
        m.handle(now, Outcome::KeptAlive(Ok(6)));
        let ev = events(&mut m);
        assert!(
            matches!(ev[..], [Event::Renewed { ttl: 6, subnet: s }, Event::EtcdUp] if s == subnet),
            "{ev:?}"
        );
    }
}

#[test]
fn a_check_just_before_the_renewal_waits_only_until_it() {
    let t = Instant::now();
    let (mut m, subnet) = holding(secs(25), t);
    assert_eq!(tick(&mut m, t + secs(10)), Action::ReadOwnKey { subnet });
    m.handle(t + secs(10), Outcome::OwnKey(Ok(Some(ours(&m, 100, 5)))));
    assert_eq!(tick(&mut m, t + secs(20)), Action::ReadOwnKey { subnet });
    m.handle(t + secs(20), Outcome::OwnKey(Ok(Some(ours(&m, 100, 5)))));
    assert_eq!(m.poll_action(), None);
    assert_eq!(tick(&mut m, t + secs(25)), Action::ReadOwnKey { subnet });
    m.handle(t + secs(25), Outcome::OwnKey(Ok(Some(ours(&m, 100, 5)))));
    assert_eq!(action(&mut m), Action::KeepAlive { lease_id: 100 });
}

#[test]
fn renewal_uses_the_etcd_lease_our_key_is_attached_to() {
    let t = Instant::now();
    let (mut m, subnet) = holding(secs(2), t);
    assert_eq!(tick(&mut m, t + secs(2)), Action::ReadOwnKey { subnet });
    m.handle(t + secs(2), Outcome::OwnKey(Ok(Some(ours(&m, 555, 5)))));
    assert_eq!(action(&mut m), Action::KeepAlive { lease_id: 555 });
    assert_eq!(m.held().unwrap().etcd_lease, 555);
}

#[test]
fn a_vanished_key_is_re_created_with_the_same_subnet_and_value() {
    let t = Instant::now();
    let (mut m, subnet) = holding(RENEW, t);
    let attrs = m.held().unwrap().attrs.clone();
    let now = t + CHECK_INTERVAL;
    assert_eq!(tick(&mut m, now), Action::ReadOwnKey { subnet });
    m.handle(now, Outcome::OwnKey(Ok(None)));
    assert_eq!(action(&mut m), Action::Grant { ttl: TTL });
    m.handle(now, Outcome::Granted(Ok(200)));
    assert_eq!(
        action(&mut m),
        Action::PutIf {
            subnet,
            attrs: attrs.clone(),
            lease_id: 200,
            expect_rev: 0,
            exclusive: false
        }
    );
    m.handle(now, Outcome::Written(Ok(true)));
    let ev = events(&mut m);
    assert!(
        matches!(ev[..], [Event::Recreated { subnet: s, ttl: TTL }, Event::EtcdUp] if s == subnet),
        "{ev:?}"
    );
    assert_eq!(
        m.held(),
        Some(&HeldLease {
            subnet,
            attrs,
            etcd_lease: 200
        })
    );
    assert_eq!(m.poll_timeout(), Some(now + CHECK_INTERVAL));
}

#[test]
fn a_gone_etcd_lease_is_granted_again_at_the_keys_revision() {
    let t = Instant::now();
    let (mut m, subnet) = holding(secs(2), t);
    let now = t + secs(2);
    assert_eq!(tick(&mut m, now), Action::ReadOwnKey { subnet });
    m.handle(now, Outcome::OwnKey(Ok(Some(ours(&m, 100, 77)))));
    assert_eq!(action(&mut m), Action::KeepAlive { lease_id: 100 });
    m.handle(now, Outcome::KeptAlive(Ok(0)));
    assert_eq!(action(&mut m), Action::Grant { ttl: TTL });
    m.handle(now, Outcome::Granted(Ok(300)));
    let (_, _, id, expect) = put_if(&mut m);
    assert_eq!((id, expect), (300, 77));
    m.handle(now + ms(10), Outcome::Written(Ok(true)));
    assert_eq!(m.held().unwrap().etcd_lease, 300);
    // The renewal clock starts again from the re-creation.
    assert_eq!(m.poll_timeout(), Some(now + ms(10) + secs(2)));
    assert_eq!(
        tick(&mut m, now + ms(10) + secs(2)),
        Action::ReadOwnKey { subnet }
    );
    m.handle(
        now + ms(10) + secs(2),
        Outcome::OwnKey(Ok(Some(ours(&m, 300, 78)))),
    );
    assert_eq!(action(&mut m), Action::KeepAlive { lease_id: 300 });
}

#[test]
fn a_re_create_beaten_by_another_writer_revokes_and_looks_again_at_once() {
    let t = Instant::now();
    let (mut m, subnet) = holding(RENEW, t);
    let now = t + CHECK_INTERVAL;
    assert_eq!(tick(&mut m, now), Action::ReadOwnKey { subnet });
    m.handle(now, Outcome::OwnKey(Ok(None)));
    action(&mut m);
    m.handle(now, Outcome::Granted(Ok(200)));
    put_if(&mut m);
    m.handle(now, Outcome::Written(Ok(false)));
    assert_eq!(action(&mut m), Action::Revoke { lease_id: 200 });
    m.handle(now + ms(3), Outcome::Revoked(Ok(())));
    assert_eq!(m.held().unwrap().etcd_lease, 100);
    assert_eq!(
        tick(&mut m, now + ms(3)),
        Action::ReadOwnKey { subnet },
        "immediately"
    );
    // The other writer was another host: fatal.
    let mut theirs = stored("10.5.1.0/24", OTHER, [2, 0, 0, 0, 0, 3], 9, 90);
    theirs.subnet = subnet;
    m.handle(now + ms(4), Outcome::OwnKey(Ok(Some(theirs))));
    assert_eq!(
        action(&mut m),
        Action::Fail(Fatal::Stolen {
            subnet,
            holder: Some(OTHER.into())
        })
    );
}

#[test]
fn a_key_naming_another_host_is_fatal() {
    let t = Instant::now();
    let (mut m, subnet) = holding(RENEW, t);
    assert_eq!(
        tick(&mut m, t + CHECK_INTERVAL),
        Action::ReadOwnKey { subnet }
    );
    let mut theirs = stored("10.5.1.0/24", OTHER, [2, 0, 0, 0, 0, 3], 9, 90);
    theirs.subnet = subnet;
    m.handle(t + CHECK_INTERVAL, Outcome::OwnKey(Ok(Some(theirs))));
    assert_eq!(
        action(&mut m),
        Action::Fail(Fatal::Stolen {
            subnet,
            holder: Some(OTHER.into())
        })
    );
    assert!(m.held().is_none());
    assert_eq!(m.poll_timeout(), None);
}

#[test]
fn an_unreadable_value_in_our_key_is_fatal_too() {
    let t = Instant::now();
    let (mut m, subnet) = holding(RENEW, t);
    tick(&mut m, t + CHECK_INTERVAL);
    let garbage = StoredLease {
        subnet,
        attrs: LeaseAttrs::from_json(b"not JSON"),
        etcd_lease: 0,
        mod_revision: 9,
    };
    m.handle(t + CHECK_INTERVAL, Outcome::OwnKey(Ok(Some(garbage))));
    assert_eq!(
        action(&mut m),
        Action::Fail(Fatal::Stolen {
            subnet,
            holder: None
        })
    );
}

#[test]
fn etcd_outage_backs_off_from_1s_to_30s_keeps_the_lease_and_recovers() {
    let t = Instant::now();
    let (mut m, subnet) = holding(RENEW, t);
    let mut now = t + CHECK_INTERVAL;
    assert_eq!(tick(&mut m, now), Action::ReadOwnKey { subnet });
    for want in [1, 2, 4, 8, 16, 30, 30] {
        m.handle(now, Outcome::OwnKey(Err(down())));
        assert!(matches!(
            events(&mut m)[..],
            [Event::EtcdFailed {
                during: Doing::Keeping,
                ..
            }]
        ));
        assert!(m.held().is_some(), "the lease is kept through the outage");
        now += secs(want);
        assert_eq!(tick(&mut m, now), Action::ReadOwnKey { subnet });
    }
    // etcd is back but the key expired meanwhile: re-created with the same subnet.
    m.handle(now, Outcome::OwnKey(Ok(None)));
    assert_eq!(action(&mut m), Action::Grant { ttl: TTL });
    m.handle(now, Outcome::Granted(Ok(400)));
    let (s, _, _, expect) = put_if(&mut m);
    assert_eq!((s, expect), (subnet, 0));
    m.handle(now, Outcome::Written(Ok(true)));
    assert!(matches!(
        events(&mut m)[..],
        [Event::Recreated { .. }, Event::EtcdUp]
    ));
    // The backoff starts over after the recovery.
    now += CHECK_INTERVAL;
    assert_eq!(tick(&mut m, now), Action::ReadOwnKey { subnet });
    m.handle(now, Outcome::OwnKey(Err(down())));
    assert_eq!(m.poll_timeout(), Some(now + secs(1)));
}

#[test]
fn failures_while_renewing_or_re_creating_back_off_too() {
    let t = Instant::now();
    let (mut m, subnet) = holding(secs(2), t);
    let mut now = t + secs(2);
    assert_eq!(tick(&mut m, now), Action::ReadOwnKey { subnet });
    m.handle(now, Outcome::OwnKey(Ok(Some(ours(&m, 100, 5)))));
    assert_eq!(action(&mut m), Action::KeepAlive { lease_id: 100 });
    m.handle(now, Outcome::KeptAlive(Err(down())));
    now += secs(1);
    assert_eq!(tick(&mut m, now), Action::ReadOwnKey { subnet });
    m.handle(now, Outcome::OwnKey(Ok(None)));
    action(&mut m);
    m.handle(now, Outcome::Granted(Err(down())));
    now += secs(2);
    assert_eq!(tick(&mut m, now), Action::ReadOwnKey { subnet });
    m.handle(now, Outcome::OwnKey(Ok(None)));
    action(&mut m);
    m.handle(now, Outcome::Granted(Ok(9)));
    put_if(&mut m);
    m.handle(now, Outcome::Written(Err(down())));
    let failures = events(&mut m)
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::EtcdFailed {
                    during: Doing::Keeping,
                    ..
                }
            )
        })
        .count();
    assert_eq!(failures, 3);
    assert_eq!(m.poll_timeout(), Some(now + secs(4)));
    assert_eq!(m.held().unwrap().etcd_lease, 100);
}

#[test]
fn a_watch_event_on_our_key_makes_the_check_immediate() {
    let t = Instant::now();
    let (mut m, subnet) = holding(RENEW, t);
    m.handle_own_key_event(t + secs(3));
    assert_eq!(tick(&mut m, t + secs(3)), Action::ReadOwnKey { subnet });
    // An event while the read is in flight: checked again right after it.
    m.handle_own_key_event(t + secs(3));
    m.handle(t + secs(3), Outcome::OwnKey(Ok(Some(ours(&m, 100, 5)))));
    assert_eq!(tick(&mut m, t + secs(3)), Action::ReadOwnKey { subnet });
    m.handle(t + secs(3), Outcome::OwnKey(Ok(Some(ours(&m, 100, 5)))));
    assert_eq!(
        m.poll_timeout(),
        Some(t + secs(13)),
        "then the usual interval"
    );
}

#[test]
fn watch_events_before_the_lease_is_held_are_ignored() {
    let t = Instant::now();
    let mut m = machine(params(VXLAN, None, RENEW));
    m.handle_own_key_event(t);
    assert_eq!(action(&mut m), Action::ListLeases);
    assert_eq!(m.poll_action(), None);
}

#[test]
fn a_reservation_is_checked_every_10s_and_never_renewed() {
    let t = Instant::now();
    let (mut m, subnet) = holding(secs(2), t);
    let mut now = t + secs(2);
    assert_eq!(tick(&mut m, now), Action::ReadOwnKey { subnet });
    for _ in 0..3 {
        m.handle(now, Outcome::OwnKey(Ok(Some(ours(&m, 0, 5)))));
        assert_eq!(m.poll_action(), None, "nothing to renew");
        now += CHECK_INTERVAL;
        assert_eq!(tick(&mut m, now), Action::ReadOwnKey { subnet });
    }
}

// ---- dual stack ----

const DUAL: &str = r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00:5::/48","Backend":{"Type":"vxlan"}}"#;
const ME6: &str = "fd00::10";

fn dual_params(previous: Option<&str>) -> LeaseParams {
    let mut p = params(DUAL, None, RENEW);
    p.public_ipv6 = Some(ME6.parse().unwrap());
    p.previous = previous.map(|s| s.parse().unwrap());
    p
}

#[test]
fn dual_stack_leases_both_halves_in_one_key() {
    let t = Instant::now();
    let mut m = machine(dual_params(None));
    let key = acquire_with(&mut m, t, vec![], 9);
    let v6 = key.v6.expect("an IPv6 half");
    assert_eq!(v6.prefix_len(), 64);
    assert!("fc00:5::/48"
        .parse::<ipnet::Ipv6Net>()
        .unwrap()
        .contains(&v6));
    let held = m.held().unwrap();
    assert_eq!(held.subnet, key);
    assert_eq!(held.attrs.public_ipv6, Some(ME6.parse().unwrap()));
    let (v4mac, v6mac) = (
        held.attrs.vxlan_data().unwrap().vtep_mac,
        held.attrs.vxlan_v6_data().unwrap().vtep_mac,
    );
    assert_ne!(
        v4mac, v6mac,
        "each VTEP has its own MAC, as flannel's two devices"
    );
    // The lease carrying our IP is reused with both halves and both MACs.
    let mut m2 = machine(dual_params(None));
    let mine = StoredLease {
        subnet: key,
        attrs: Ok(held.attrs.clone()),
        etcd_lease: 9,
        mod_revision: 30,
    };
    assert_eq!(action(&mut m2), Action::ListLeases);
    m2.handle(t, Outcome::Listed(Ok(vec![mine])));
    assert_eq!(action(&mut m2), Action::Grant { ttl: TTL });
    m2.handle(t, Outcome::Granted(Ok(10)));
    let (k2, attrs2, _, expect) = put_if(&mut m2);
    assert_eq!((k2, expect), (key, 30));
    assert_eq!(attrs2, held.attrs);
}

#[test]
fn an_ipv4_lease_gains_an_ipv6_half_under_a_new_key_and_keeps_its_subnet() {
    let t = Instant::now();
    let mut m = machine(dual_params(Some("10.5.9.0/24")));
    let old = stored("10.5.9.0/24", ME, [2, 0, 0, 0, 0, 9], 6, 42);
    assert_eq!(action(&mut m), Action::ListLeases);
    m.handle(t, Outcome::Listed(Ok(vec![old])));
    assert_eq!(action(&mut m), Action::Grant { ttl: TTL });
    m.handle(t, Outcome::Granted(Ok(8)));
    let (key, attrs, _, expect) = put_if(&mut m);
    assert_eq!(
        key.v4,
        net("10.5.9.0/24").v4,
        "the IPv4 subnet dockerd uses stays"
    );
    assert!(key.v6.is_some());
    assert_eq!(expect, 0, "a new key: created only if absent");
    assert_eq!(
        attrs.vxlan_data().unwrap().vtep_mac,
        MacAddr([2, 0, 0, 0, 0, 9])
    );
    m.handle(t, Outcome::Written(Ok(true)));
    // The old key goes with its etcd lease.
    assert_eq!(action(&mut m), Action::Revoke { lease_id: 6 });
    m.handle(t, Outcome::Revoked(Ok(())));
    assert_eq!(m.held().unwrap().subnet, key);
}
