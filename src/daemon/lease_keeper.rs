//! Runs the lease lifecycle (`control::lifecycle`) against etcd: performs its requests, feeds back their results and
//! the time, logs what it reports and keeps the lease metrics.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;
use tracing::{debug, info, warn};

use crate::control::alloc::Choice;
use crate::control::config::NetworkConfig;
use crate::control::lease::SubnetKey;
use crate::control::lifecycle::{
    Action, Doing, Event, Fatal, LeaseLifecycle, LeaseParams, Outcome,
};
use crate::control::store::Store;
use crate::host::iface::Underlay;
use crate::wire::ethernet::MacAddr;

use super::{DaemonError, OwnLease, RunOptions, Shared};

/// What this host used before: the subnet of the previous subnet.env, and the VTEP MAC a data plane already
/// forwards with (when it came up from the saved state).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Previous {
    pub(super) subnet: Option<SubnetKey>,
    pub(super) mac: Option<MacAddr>,
    pub(super) mac6: Option<MacAddr>,
}

/// This host's lease, from acquiring it to the daemon's end.
pub(super) struct LeaseKeeper<'a> {
    store: &'a Store,
    shared: &'a Shared,
    cfg: &'a NetworkConfig,
    underlay: &'a Underlay,
    subnet_file: &'a Path,
    lifecycle: LeaseLifecycle<StdRng>,
}

impl<'a> LeaseKeeper<'a> {
    /// `previous` is the subnet of the previous subnet.env; `renew_every` the TTL minus the renew margin.
    pub(super) fn new(
        store: &'a Store,
        shared: &'a Shared,
        cfg: &'a NetworkConfig,
        underlay: &'a Underlay,
        opts: &'a RunOptions,
        previous: Previous,
        renew_every: Duration,
    ) -> Self {
        let params = LeaseParams {
            config: cfg.clone(),
            public_ip: underlay.public_ip,
            public_ipv6: underlay.public_ipv6,
            previous: previous.subnet,
            previous_mac: previous.mac,
            previous_mac6: previous.mac6,
            wg_public_key: shared.wireguard.get().map(|n| n.public_key()),
            ttl: opts.lease_ttl,
            renew_every,
        };
        LeaseKeeper {
            store,
            shared,
            cfg,
            underlay,
            subnet_file: &opts.subnet_file,
            lifecycle: LeaseLifecycle::new(params, StdRng::from_entropy()),
        }
    }

    /// Acquires a subnet with flannel's rules; a lost race is retried, an exhausted network is fatal.
    pub(super) async fn acquire(&mut self) -> Result<OwnLease, DaemonError> {
        loop {
            self.perform().await?;
            if let Some(held) = self.lifecycle.held() {
                return Ok(OwnLease {
                    subnet: held.subnet.v4,
                    network: self.cfg.ipv4.map(|c| c.network),
                    subnet6: held.subnet.v6,
                    network6: self.cfg.ipv6.map(|c| c.network),
                    public_ip: self.underlay.public_ip,
                    public_ipv6: held.attrs.public_ipv6,
                    iface: self.underlay.iface.clone(),
                    backend: self.cfg.backend.type_name().to_string(),
                    mtu: self.cfg.overlay_mtu(self.underlay.mtu),
                    attrs: held.attrs.clone(),
                    etcd_lease: held.etcd_lease,
                });
            }
            self.wait(false).await;
        }
    }

    /// Keeps our key alive and ours: renews before expiry, re-creates it with the same subnet if it vanished.
    /// Returns only when the subnet is lost to another host.
    pub(super) async fn keep(&mut self) -> Result<(), DaemonError> {
        loop {
            // A fatal error is printed once, by main, as the process's last line.
            self.perform().await?;
            self.wait(true).await;
        }
    }

    /// Performs the lifecycle's requests until it has none left.
    async fn perform(&mut self) -> Result<(), DaemonError> {
        while let Some(action) = self.lifecycle.poll_action() {
            let store = self.store;
            let outcome = match action {
                Action::ListLeases => Outcome::Listed(store.list_leases().await.map(|(l, _)| l)),
                Action::Grant { ttl } => Outcome::Granted(store.grant(ttl).await),
                Action::PutIf {
                    subnet,
                    attrs,
                    lease_id,
                    expect_rev,
                    exclusive,
                } => Outcome::Written(
                    store
                        .put_lease_if(&subnet, &attrs, lease_id, expect_rev, exclusive)
                        .await,
                ),
                Action::ReadOwnKey { subnet } => Outcome::OwnKey(store.get_lease(&subnet).await),
                Action::KeepAlive { lease_id } => {
                    Outcome::KeptAlive(store.keep_alive(lease_id).await)
                }
                Action::Revoke { lease_id } => Outcome::Revoked(store.revoke(lease_id).await),
                Action::Fail(fatal) => return Err(self.fatal(fatal)),
            };
            self.lifecycle.handle(Instant::now(), outcome);
            self.report();
        }
        Ok(())
    }

    /// Sleeps until the lifecycle's next deadline or, when holding, until the watch sees our key change.
    async fn wait(&mut self, own_key_events: bool) {
        let Some(deadline) = self.lifecycle.poll_timeout() else {
            return;
        };
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.into()) => {},
            _ = self.shared.own_key_changed.notified(), if own_key_events => {
                self.lifecycle.handle_own_key_event(Instant::now());
            },
        }
        self.lifecycle.handle_timeout(Instant::now());
    }

    /// Logs the lifecycle's events and keeps the etcd and lease metrics.
    fn report(&mut self) {
        let shared = self.shared;
        while let Some(event) = self.lifecycle.poll_event() {
            match event {
                Event::EtcdUp => shared.set_etcd(true, None),
                Event::EtcdFailed {
                    during: Doing::Listing,
                    error,
                } => {
                    shared.set_etcd(false, None);
                    warn!("cannot list leases to pick a subnet: {error}; retrying");
                }
                Event::EtcdFailed {
                    during: Doing::Claiming,
                    error,
                } => {
                    shared.set_etcd(false, Some(&error));
                    warn!("cannot write our lease: {error}; retrying");
                }
                Event::EtcdFailed {
                    during: Doing::Keeping,
                    error,
                } => shared.set_etcd(false, Some(&error)),
                Event::Acquired { choice, key } => {
                    let how = match choice {
                        Choice::Reuse(_) => "reusing the lease that carries our public IP",
                        Choice::Previous(_) => "reclaiming the subnet from the previous subnet.env",
                        Choice::Fresh(_) => "leased a new subnet",
                    };
                    match (key.v4, key.v6, self.underlay.public_ipv6) {
                        (Some(subnet), Some(subnet6), Some(ip6)) => {
                            info!(%subnet, %subnet6, public_ip = %self.underlay.public_ip, public_ipv6 = %ip6, "{how}")
                        }
                        (None, Some(subnet6), Some(ip6)) => {
                            info!(%subnet6, public_ipv6 = %ip6, "{how} (IPv6-only network)")
                        }
                        _ => info!(subnet = %key, public_ip = %self.underlay.public_ip, "{how}"),
                    }
                }
                Event::AlsoOurs { subnet, others } => {
                    let others: Vec<String> = others.iter().map(|n| n.to_string()).collect();
                    warn!(subnet = %subnet, public_ip = %self.lifecycle.me(),
                        "other leases carry our public IP too: {}; keeping {subnet} (the subnet dockerd uses) and leaving them alone. If they are stale, delete them (weft leases shows them)",
                        others.join(", "));
                }
                Event::RaceLost { subnet, races } => {
                    debug!(subnet = %subnet, races, "another host took the subnet first; trying again");
                }
                Event::Renewed { subnet, ttl } => {
                    shared.lease_ttl.store(ttl, Ordering::Relaxed);
                    shared.lease_renewals.fetch_add(1, Ordering::Relaxed);
                    debug!(subnet = %subnet, ttl, "renewed lease");
                }
                Event::Reserved { subnet } => {
                    info!(subnet = %subnet, public_ip = %self.underlay.public_ip,
                        "{subnet} is reserved for this host in etcd (a lease key without a TTL); taking it, and it stays a reservation");
                }
                Event::Recreated { subnet, ttl } => {
                    shared
                        .lease_ttl
                        .store(ttl.as_secs() as i64, Ordering::Relaxed);
                    warn!(subnet = %subnet, "our lease had disappeared from etcd (expired or deleted); re-created it with the same subnet");
                }
            }
        }
    }

    fn fatal(&self, fatal: Fatal) -> DaemonError {
        match fatal {
            Fatal::Exhausted(e) => DaemonError::Exhausted(e),
            Fatal::Exhausted6(e) => DaemonError::Exhausted6(e),
            Fatal::Stolen { subnet, holder } => DaemonError::SubnetStolen {
                subnet,
                other: match holder {
                    Some(ip) => ip.to_string(),
                    None => "with an unreadable lease".into(),
                },
                file: self.subnet_file.display().to_string(),
            },
        }
    }
}
