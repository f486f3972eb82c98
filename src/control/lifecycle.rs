//! The subnet lease's lifecycle as a pure state machine: fed etcd results and time, it says which etcd request comes next.
//!
//! Shaped like quinn-proto's `Connection`: the caller performs the [`Action`] from [`LeaseLifecycle::poll_action`],
//! hands its result back with [`LeaseLifecycle::handle`], sleeps until [`LeaseLifecycle::poll_timeout`] and then
//! calls [`LeaseLifecycle::handle_timeout`]. What happened, for logs and metrics, comes out of
//! [`LeaseLifecycle::poll_event`]. No clock is read here and no I/O is done, so the tests run on virtual time.
//!
//! Acquiring follows flannel: reuse the lease carrying our public IP, else the subnet of the previous subnet.env,
//! else a random free one; the key is written with a create-if transaction and a lost race is retried after a
//! short jitter. Holding: the key is read every [`CHECK_INTERVAL`] (or at once when the watch reports a change
//! to it), its etcd lease renewed at expiry minus the margin, and re-created with the same subnet if it vanished
//! or its etcd lease is gone. A key now naming another host is fatal.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use std::ops::Range;
use std::time::{Duration, Instant};

use crate::control::alloc::{
    also_ours, choose_subnet, choose_subnet6, paired_subnet6, Choice, Exhausted, Exhausted6,
    ExistingLease,
};
use crate::control::backoff::Backoff;
use crate::control::config::{Backend, NetworkConfig};
use crate::control::lease::{LeaseAttrs, SubnetKey};
use crate::control::store::{Store, StoreError, StoredLease};
use crate::wire::ethernet::MacAddr;

/// How often our key is checked when nothing else asks for it.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(10);
/// Backoff between failed attempts to acquire a lease.
const ACQUIRE_BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(5));
/// Backoff between failed checks of a lease we hold.
const KEEP_BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));
/// Milliseconds to wait, picked at random, before trying again after another host won a subnet.
const RACE_JITTER_MS: Range<u64> = 10..100;

/// What the lifecycle needs to know, fixed for the daemon's life.
#[derive(Debug, Clone)]
pub struct LeaseParams {
    pub config: NetworkConfig,
    /// This host's public IP, written into the lease and used to recognise our own lease.
    pub public_ip: Ipv4Addr,
    /// This host's IPv6 underlay address (`PublicIPv6`), on a dual-stack network.
    pub public_ipv6: Option<Ipv6Addr>,
    /// The subnets of the previous subnet.env, if there is one.
    pub previous: Option<SubnetKey>,
    /// The VTEP MAC in use for `previous` (a data plane already forwarding with it), kept if the key is gone.
    pub previous_mac: Option<MacAddr>,
    /// The same for the IPv6 VTEP of a dual-stack vxlan network.
    pub previous_mac6: Option<MacAddr>,
    /// This host's WireGuard public key (wireguard backend), published in the lease.
    pub wg_public_key: Option<crate::control::key::WgKey>,
    /// TTL of the etcd leases we grant.
    pub ttl: Duration,
    /// How long after a grant or renewal to renew again (TTL minus the renew margin).
    pub renew_every: Duration,
}

impl LeaseParams {
    /// The address that names this host in its lease (`LeaseAttrs::owner`): the public IP, or on an
    /// IPv6-only network the IPv6 one.
    pub fn me(&self) -> IpAddr {
        match (self.config.ipv6_only(), self.public_ipv6) {
            (true, Some(v6)) => IpAddr::V6(v6),
            _ => IpAddr::V4(self.public_ip),
        }
    }
}

/// The lease this host holds.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldLease {
    pub subnet: SubnetKey,
    pub attrs: LeaseAttrs,
    /// The etcd lease our key is attached to (0: none, a reservation).
    pub etcd_lease: i64,
}

/// An etcd request to make (or the fatal end); its result goes back through [`LeaseLifecycle::handle`].
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// List every lease: answer with [`Outcome::Listed`].
    ListLeases,
    /// Grant an etcd lease: [`Outcome::Granted`].
    Grant { ttl: Duration },
    /// Write `attrs` to the key of `subnet`, attached to `lease_id`, only if the key does not exist
    /// (`expect_rev == 0`) or was last modified at `expect_rev`: [`Outcome::Written`].
    PutIf {
        subnet: SubnetKey,
        attrs: LeaseAttrs,
        lease_id: i64,
        expect_rev: i64,
        /// A new claim: also only if no key names the subnet that names us (the IPv4 half, or the IPv6
        /// one on an IPv6-only network) under another key, so two hosts never lease one subnet with
        /// different other halves.
        exclusive: bool,
    },
    /// Read the key of our subnet: [`Outcome::OwnKey`].
    ReadOwnKey { subnet: SubnetKey },
    /// Renew an etcd lease once: [`Outcome::KeptAlive`].
    KeepAlive { lease_id: i64 },
    /// Revoke an etcd lease: [`Outcome::Revoked`] (its error changes nothing).
    Revoke { lease_id: i64 },
    /// Stop: the lease cannot be had or kept. Nothing follows.
    Fail(Fatal),
}

/// Why the lifecycle gave up.
#[derive(Debug, Clone, PartialEq)]
pub enum Fatal {
    /// No subnet is free.
    Exhausted(Exhausted),
    /// No IPv6 subnet is free (dual stack).
    Exhausted6(Exhausted6),
    /// Our key now carries another host's lease (`holder`; None if its value cannot be read).
    Stolen {
        subnet: SubnetKey,
        holder: Option<IpAddr>,
    },
}

/// The result of an [`Action`].
#[derive(Debug)]
pub enum Outcome {
    Listed(Result<Vec<StoredLease>, StoreError>),
    Granted(Result<i64, StoreError>),
    /// Whether the transaction wrote the key (false: another writer was first).
    Written(Result<bool, StoreError>),
    OwnKey(Result<Option<StoredLease>, StoreError>),
    /// The TTL left after renewing (0 or less: the etcd lease is gone).
    KeptAlive(Result<i64, StoreError>),
    Revoked(Result<(), StoreError>),
}

/// What an etcd request that failed was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Doing {
    /// Listing leases to pick a subnet.
    Listing,
    /// Granting and writing the lease we picked.
    Claiming,
    /// Checking, renewing or re-creating the lease we hold.
    Keeping,
}

/// Something that happened, for logs and metrics.
#[derive(Debug)]
pub enum Event {
    /// etcd answered.
    EtcdUp,
    /// An etcd request failed; it is retried with backoff.
    EtcdFailed { during: Doing, error: StoreError },
    /// We hold `key` now (`choice` says how the subnet that names us was picked).
    Acquired {
        choice: Choice<IpNet>,
        key: SubnetKey,
    },
    /// Leases `others` carry our public IP too; we took `subnet` and leave them alone.
    AlsoOurs {
        subnet: SubnetKey,
        others: Vec<SubnetKey>,
    },
    /// Another host wrote `subnet` first; `races` counts the lost races so far.
    RaceLost { subnet: SubnetKey, races: u32 },
    /// Our etcd lease was renewed with `ttl` seconds left.
    Renewed { subnet: SubnetKey, ttl: i64 },
    /// Our key had vanished (or its etcd lease had) and was written again with the same subnet and a new
    /// etcd lease of `ttl`.
    Recreated { subnet: SubnetKey, ttl: Duration },
    /// `subnet` is reserved for our public IP (a key without an etcd lease): we take it and keep it a
    /// reservation.
    Reserved { subnet: SubnetKey },
}

/// The subnet picked and the transaction that claims it.
#[derive(Debug, Clone)]
struct Claim {
    choice: Choice<IpNet>,
    /// The key written: the chosen IPv4 subnet and, on a dual-stack network, its IPv6 twin.
    key: SubnetKey,
    attrs: LeaseAttrs,
    expect_rev: i64,
    /// The etcd lease of the key we take over (0: none), revoked once ours is written.
    old_lease: i64,
    /// The key is a reservation for us: written as it is, without an etcd lease, so it stays one.
    reserved: bool,
    /// A new claim of a subnet no key of ours holds (see `Action::PutIf`).
    exclusive: bool,
}

#[derive(Debug)]
enum AcquireStep {
    /// List the leases at `at`.
    Waiting {
        at: Instant,
    },
    Listing,
    Granting(Claim),
    Writing(Claim, i64),
    /// Revoking the etcd lease granted for a race we lost.
    RevokingLoser {
        subnet: SubnetKey,
    },
    /// Revoking the etcd lease of the key we took over, before holding it.
    RevokingOld(HeldLease, Choice<IpNet>),
}

#[derive(Debug)]
struct Acquiring {
    backoff: Backoff,
    races: u32,
    step: AcquireStep,
}

#[derive(Debug)]
enum HoldStep {
    /// Nothing in flight; check the key at `next_check`.
    Idle,
    Reading,
    /// Renewing; the key was last modified at `current_rev`.
    Renewing {
        current_rev: i64,
    },
    /// Re-creating the key, expected at `expect_rev` (0: absent).
    Granting {
        expect_rev: i64,
    },
    Writing {
        lease_id: i64,
    },
    /// Revoking the etcd lease granted for a re-create someone else beat.
    RevokingLoser,
}

#[derive(Debug)]
struct Holding {
    lease: HeldLease,
    next_renew: Instant,
    next_check: Instant,
    backoff: Backoff,
    /// The key changed while a request was in flight: check it again right after.
    recheck: bool,
    step: HoldStep,
}

#[derive(Debug)]
enum State {
    Acquiring(Acquiring),
    Holding(Holding),
    Failed,
}

/// The lease lifecycle of one host; see the module documentation.
#[derive(Debug)]
pub struct LeaseLifecycle<R> {
    params: LeaseParams,
    rng: R,
    state: State,
    action: Option<Action>,
    events: VecDeque<Event>,
}

impl<R: rand::Rng> LeaseLifecycle<R> {
    /// Starts acquiring: the first action is [`Action::ListLeases`].
    pub fn new(params: LeaseParams, rng: R) -> Self {
        LeaseLifecycle {
            params,
            rng,
            state: State::Acquiring(Acquiring {
                backoff: Backoff::new(ACQUIRE_BACKOFF.0, ACQUIRE_BACKOFF.1),
                races: 0,
                step: AcquireStep::Listing,
            }),
            action: Some(Action::ListLeases),
            events: VecDeque::new(),
        }
    }

    /// The next request to make, if one is due.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.action.take()
    }

    /// The next thing that happened, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Self::handle_timeout`] must next be called; None while a request is in flight or after failing.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Acquiring(Acquiring {
                step: AcquireStep::Waiting { at },
                ..
            }) => Some(*at),
            State::Holding(h) if matches!(h.step, HoldStep::Idle) => Some(h.next_check),
            _ => None,
        }
    }

    /// The address that names this host in its lease (see [`LeaseParams::me`]).
    pub fn me(&self) -> IpAddr {
        self.params.me()
    }

    /// The lease we hold, once acquired.
    pub fn held(&self) -> Option<&HeldLease> {
        match &self.state {
            State::Holding(h) => Some(&h.lease),
            _ => None,
        }
    }

    /// Time has passed: starts the request that is due at `now`, if any.
    pub fn handle_timeout(&mut self, now: Instant) {
        match &mut self.state {
            State::Acquiring(a) => {
                if let AcquireStep::Waiting { at } = a.step {
                    if now >= at {
                        a.step = AcquireStep::Listing;
                        self.action = Some(Action::ListLeases);
                    }
                }
            }
            State::Holding(h) => {
                if matches!(h.step, HoldStep::Idle) && now >= h.next_check {
                    h.step = HoldStep::Reading;
                    self.action = Some(Action::ReadOwnKey {
                        subnet: h.lease.subnet,
                    });
                }
            }
            State::Failed => {}
        }
    }

    /// The watch saw our key change: check it now (or right after the request in flight).
    pub fn handle_own_key_event(&mut self, now: Instant) {
        if let State::Holding(h) = &mut self.state {
            if matches!(h.step, HoldStep::Idle) {
                h.next_check = h.next_check.min(now);
            } else {
                h.recheck = true;
            }
        }
    }

    /// The result of the last [`Action`], arriving at `now`. An outcome nobody asked for is ignored.
    pub fn handle(&mut self, now: Instant, outcome: Outcome) {
        self.state = match std::mem::replace(&mut self.state, State::Failed) {
            State::Acquiring(a) => self.acquiring(now, a, outcome),
            State::Holding(h) => self.holding(now, h, outcome),
            State::Failed => State::Failed,
        };
    }

    fn acquiring(&mut self, now: Instant, mut a: Acquiring, outcome: Outcome) -> State {
        let step = std::mem::replace(&mut a.step, AcquireStep::Listing);
        a.step = match (step, outcome) {
            (AcquireStep::Listing, Outcome::Listed(Ok(leases))) => {
                self.events.push_back(Event::EtcdUp);
                match self.claim(&leases) {
                    Ok(claim) if claim.reserved => {
                        self.action = Some(Action::PutIf {
                            subnet: claim.key,
                            attrs: claim.attrs.clone(),
                            lease_id: 0,
                            expect_rev: claim.expect_rev,
                            exclusive: false,
                        });
                        AcquireStep::Writing(claim, 0)
                    }
                    Ok(claim) => {
                        self.action = Some(Action::Grant {
                            ttl: self.params.ttl,
                        });
                        AcquireStep::Granting(claim)
                    }
                    Err(e) => return self.fail(e),
                }
            }
            (AcquireStep::Listing, Outcome::Listed(Err(error))) => {
                self.retry_acquire(now, &mut a, Doing::Listing, error)
            }
            (AcquireStep::Granting(claim), Outcome::Granted(Ok(id))) => {
                self.action = Some(Action::PutIf {
                    subnet: claim.key,
                    attrs: claim.attrs.clone(),
                    lease_id: id,
                    expect_rev: claim.expect_rev,
                    exclusive: claim.exclusive,
                });
                AcquireStep::Writing(claim, id)
            }
            (AcquireStep::Writing(claim, id), Outcome::Written(Ok(true))) => {
                let held = HeldLease {
                    subnet: claim.key,
                    attrs: claim.attrs,
                    etcd_lease: id,
                };
                if claim.old_lease == 0 || claim.old_lease == id {
                    return self.hold(now, held, claim.choice);
                }
                self.action = Some(Action::Revoke {
                    lease_id: claim.old_lease,
                });
                AcquireStep::RevokingOld(held, claim.choice)
            }
            (AcquireStep::Writing(claim, id), Outcome::Written(Ok(false))) => {
                self.action = Some(Action::Revoke { lease_id: id });
                AcquireStep::RevokingLoser { subnet: claim.key }
            }
            (AcquireStep::Granting(_), Outcome::Granted(Err(error)))
            | (AcquireStep::Writing(..), Outcome::Written(Err(error))) => {
                self.retry_acquire(now, &mut a, Doing::Claiming, error)
            }
            (AcquireStep::RevokingLoser { subnet }, Outcome::Revoked(_)) => {
                a.races += 1;
                self.events.push_back(Event::RaceLost {
                    subnet,
                    races: a.races,
                });
                let jitter = self.rng.gen_range(RACE_JITTER_MS);
                AcquireStep::Waiting {
                    at: now + Duration::from_millis(jitter),
                }
            }
            (AcquireStep::RevokingOld(held, choice), Outcome::Revoked(_)) => {
                return self.hold(now, held, choice)
            }
            (step, _) => step,
        };
        State::Acquiring(a)
    }

    /// Picks a subnet with flannel's rules and prepares the transaction that claims it.
    fn claim(&mut self, leases: &[StoredLease]) -> Result<Claim, Fatal> {
        let existing: Vec<ExistingLease> = leases
            .iter()
            .map(|l| ExistingLease {
                reserved: l.etcd_lease == 0,
                subnet: l.subnet.v4,
                subnet6: l.subnet.v6,
                // Unparsable values still occupy their subnet.
                owner: l
                    .attrs
                    .as_ref()
                    .map(|a| a.owner())
                    .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            })
            .collect();
        let me = self.params.me();
        let p = &self.params;
        let (choice, key) = match (&p.config.ipv4, &p.config.ipv6) {
            (Some(c4), c6) => {
                let choice = choose_subnet(
                    c4,
                    &existing,
                    me,
                    p.previous.and_then(|k| k.v4),
                    &mut self.rng,
                )
                .map_err(Fatal::Exhausted)?;
                let v6 = match c6 {
                    None => None,
                    Some(c6) => Some(
                        choose_subnet6(
                            c6,
                            &existing,
                            me,
                            choice.subnet(),
                            p.previous.and_then(|k| k.v6),
                            paired_subnet6(c4, c6, choice.subnet()),
                            &mut self.rng,
                        )
                        .map_err(Fatal::Exhausted6)?,
                    ),
                };
                let key = SubnetKey {
                    v4: Some(choice.subnet()),
                    v6,
                };
                (choice.map(IpNet::V4), key)
            }
            // An IPv6-only network: the IPv6 subnet and PublicIPv6 name the host.
            (None, Some(c6)) => {
                let choice = choose_subnet(
                    c6,
                    &existing,
                    me,
                    p.previous.and_then(|k| k.v6),
                    &mut self.rng,
                )
                .map_err(Fatal::Exhausted6)?;
                (choice.map(IpNet::V6), SubnetKey::v6(choice.subnet()))
            }
            (None, None) => unreachable!("a network config has at least one family"),
        };
        let others = also_ours(&existing, me, key);
        if !others.is_empty() {
            self.events.push_back(Event::AlsoOurs {
                subnet: key,
                others,
            });
        }
        // The lease now holding the subnet that names us: the same key, or (the network just became
        // dual-stack, or the IPv6 half no longer fits) our lease under its old key, whose etcd lease is
        // revoked once the new key is written, so the old key goes with it.
        let primary = |k: &SubnetKey| match key.v4 {
            Some(v4) => k.v4 == Some(v4),
            None => k.v4.is_none() && k.v6 == key.v6,
        };
        let old = leases
            .iter()
            .find(|l| l.subnet == key)
            .or_else(|| leases.iter().find(|l| primary(&l.subnet)));
        let same_key = old.is_some_and(|l| l.subnet == key);
        // Keep our VTEP MACs across restarts so peers' neighbour entries stay right.
        let old_attrs = old.and_then(|l| l.attrs.as_ref().ok());
        let previous_here = p.previous.as_ref().is_some_and(primary);
        let mac = old_attrs
            .and_then(|a| a.vxlan_data())
            .map(|d| d.vtep_mac)
            .or(p.previous_mac.filter(|_| previous_here))
            .unwrap_or_else(|| MacAddr::random_local(&mut self.rng));
        let mac6 = old_attrs
            .and_then(|a| a.vxlan_v6_data())
            .map(|d| d.vtep_mac)
            .or(p.previous_mac6.filter(|_| previous_here))
            .unwrap_or_else(|| MacAddr::random_local(&mut self.rng));
        let expect_rev = match choice {
            Choice::Reuse(_) if same_key => old.map(|l| l.mod_revision).unwrap_or(0),
            _ => 0,
        };
        let reserved = matches!(choice, Choice::Reuse(_))
            && same_key
            && old.is_some_and(|l| l.etcd_lease == 0);
        if reserved {
            self.events.push_back(Event::Reserved { subnet: key });
        }
        let p = &self.params;
        let mut attrs = lease_attrs(&p.config, p.public_ip, mac, p.wg_public_key);
        if let (Some(_), Some(ip6)) = (&p.config.ipv6, p.public_ipv6) {
            attrs = attrs.with_ipv6(ip6, Some(mac6));
            if let Backend::WireGuard(w) = &p.config.backend {
                attrs = attrs.with_wireguard_port6(w.listen_port_v6);
            }
        }
        if p.config.ipv6_only() {
            attrs = attrs.without_ipv4();
        }
        Ok(Claim {
            exclusive: expect_rev == 0 && old.is_none(),
            reserved,
            choice,
            key,
            attrs,
            expect_rev,
            old_lease: old.map(|l| l.etcd_lease).unwrap_or(0),
        })
    }

    fn retry_acquire(
        &mut self,
        now: Instant,
        a: &mut Acquiring,
        during: Doing,
        error: StoreError,
    ) -> AcquireStep {
        self.events.push_back(Event::EtcdFailed { during, error });
        AcquireStep::Waiting {
            at: now + a.backoff.next_delay(),
        }
    }

    /// Starts holding `lease`, acquired at `now`.
    fn hold(&mut self, now: Instant, lease: HeldLease, choice: Choice<IpNet>) -> State {
        self.events.push_back(Event::Acquired {
            choice,
            key: lease.subnet,
        });
        let renew_every = self.params.renew_every;
        State::Holding(Holding {
            lease,
            next_renew: now + renew_every,
            next_check: now + CHECK_INTERVAL.min(renew_every),
            backoff: Backoff::new(KEEP_BACKOFF.0, KEEP_BACKOFF.1),
            recheck: false,
            step: HoldStep::Idle,
        })
    }

    fn holding(&mut self, now: Instant, mut h: Holding, outcome: Outcome) -> State {
        let step = std::mem::replace(&mut h.step, HoldStep::Idle);
        match (step, outcome) {
            (HoldStep::Reading, Outcome::OwnKey(Ok(Some(current)))) => {
                if !Store::is_ours(&current.attrs, self.params.me()) {
                    return self.fail(Fatal::Stolen {
                        subnet: h.lease.subnet,
                        holder: current.attrs.as_ref().ok().map(|a| a.owner()),
                    });
                }
                h.lease.etcd_lease = current.etcd_lease;
                if h.lease.etcd_lease != 0 && now >= h.next_renew {
                    self.action = Some(Action::KeepAlive {
                        lease_id: h.lease.etcd_lease,
                    });
                    h.step = HoldStep::Renewing {
                        current_rev: current.mod_revision,
                    };
                } else {
                    self.checked(now, &mut h);
                }
            }
            // The key is gone (expired during an outage, or deleted): claim it again.
            (HoldStep::Reading, Outcome::OwnKey(Ok(None))) => self.recreate(&mut h, 0),
            (HoldStep::Renewing { .. }, Outcome::KeptAlive(Ok(ttl))) if ttl > 0 => {
                h.next_renew = now + self.params.renew_every;
                self.events.push_back(Event::Renewed {
                    subnet: h.lease.subnet,
                    ttl,
                });
                self.checked(now, &mut h);
            }
            // The key is there but its etcd lease is gone: attach it to a new one.
            (HoldStep::Renewing { current_rev }, Outcome::KeptAlive(Ok(_))) => {
                self.recreate(&mut h, current_rev)
            }
            (HoldStep::Granting { expect_rev }, Outcome::Granted(Ok(id))) => {
                self.action = Some(Action::PutIf {
                    subnet: h.lease.subnet,
                    attrs: h.lease.attrs.clone(),
                    lease_id: id,
                    expect_rev,
                    exclusive: false,
                });
                h.step = HoldStep::Writing { lease_id: id };
            }
            (HoldStep::Writing { lease_id }, Outcome::Written(Ok(true))) => {
                h.lease.etcd_lease = lease_id;
                h.next_renew = now + self.params.renew_every;
                self.events.push_back(Event::Recreated {
                    subnet: h.lease.subnet,
                    ttl: self.params.ttl,
                });
                self.checked(now, &mut h);
            }
            // Someone wrote the key between our read and our write: look again at once.
            (HoldStep::Writing { lease_id }, Outcome::Written(Ok(false))) => {
                self.action = Some(Action::Revoke { lease_id });
                h.step = HoldStep::RevokingLoser;
            }
            (HoldStep::RevokingLoser, Outcome::Revoked(_)) => {
                h.recheck = true;
                self.checked(now, &mut h);
            }
            (HoldStep::Reading, Outcome::OwnKey(Err(error)))
            | (HoldStep::Renewing { .. }, Outcome::KeptAlive(Err(error)))
            | (HoldStep::Granting { .. }, Outcome::Granted(Err(error)))
            | (HoldStep::Writing { .. }, Outcome::Written(Err(error))) => {
                self.events.push_back(Event::EtcdFailed {
                    during: Doing::Keeping,
                    error,
                });
                h.next_check = now + h.backoff.next_delay();
                self.settle(now, &mut h);
            }
            (step, _) => h.step = step,
        }
        State::Holding(h)
    }

    fn recreate(&mut self, h: &mut Holding, expect_rev: i64) {
        self.action = Some(Action::Grant {
            ttl: self.params.ttl,
        });
        h.step = HoldStep::Granting { expect_rev };
    }

    /// A check went through: etcd is up, the backoff starts over, the next check is due in
    /// [`CHECK_INTERVAL`] or at the renewal, whichever is first.
    fn checked(&mut self, now: Instant, h: &mut Holding) {
        self.events.push_back(Event::EtcdUp);
        h.backoff.reset();
        let until_renewal = if h.lease.etcd_lease == 0 {
            // A reservation (a key without an etcd lease) has nothing to renew.
            CHECK_INTERVAL
        } else {
            h.next_renew.saturating_duration_since(now)
        };
        h.next_check = now + CHECK_INTERVAL.min(until_renewal);
        self.settle(now, h);
    }

    /// Back to idle; a change of our key seen meanwhile makes the next check immediate.
    fn settle(&mut self, now: Instant, h: &mut Holding) {
        h.step = HoldStep::Idle;
        if std::mem::take(&mut h.recheck) {
            h.next_check = now;
        }
    }

    fn fail(&mut self, fatal: Fatal) -> State {
        self.action = Some(Action::Fail(fatal));
        State::Failed
    }
}

/// The value of this host's lease for the network's backend (`wg_key`: this host's WireGuard public key,
/// which the wireguard backend needs; without it the lease carries an all-zero key no peer can use).
pub fn lease_attrs(
    cfg: &NetworkConfig,
    public_ip: Ipv4Addr,
    mac: MacAddr,
    wg_key: Option<crate::control::key::WgKey>,
) -> LeaseAttrs {
    match &cfg.backend {
        Backend::Vxlan(v) => LeaseAttrs::vxlan(public_ip, v.vni, mac),
        Backend::Udp(_) => LeaseAttrs::udp(public_ip),
        Backend::HostGw => LeaseAttrs::host_gw(public_ip),
        Backend::WireGuard(w) => LeaseAttrs::wireguard(
            public_ip,
            wg_key.unwrap_or(crate::control::key::WgKey([0; 32])),
            w.listen_port,
        ),
    }
}

#[cfg(test)]
mod tests;
