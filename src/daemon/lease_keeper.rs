//! Acquiring and keeping this host's subnet lease in etcd.

use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ipnet::Ipv4Net;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::control::alloc::{choose_subnet, Choice, ExistingLease};
use crate::control::backoff::Backoff;
use crate::control::config::NetworkConfig;
use crate::control::lease::MacAddr;
use crate::control::lifecycle::lease_attrs;
use crate::control::store::{Store, StoreError, StoredLease};
use crate::host::iface::Underlay;

use super::{DaemonError, OwnLease, RunOptions, Shared};

/// How often the lease keeper checks that our key is still ours when nothing else wakes it.
const CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// Acquires a subnet with flannel's rules; a lost race is retried, an exhausted network is fatal.
pub(super) async fn acquire(
    store: &Store,
    shared: &Shared,
    cfg: &NetworkConfig,
    underlay: &Underlay,
    previous: Option<Ipv4Net>,
    ttl: Duration,
) -> Result<OwnLease, DaemonError> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut races = 0u32;
    loop {
        let (leases, _) = match store.list_leases().await {
            Ok(l) => {
                shared.set_etcd(true, None);
                l
            }
            Err(e) => {
                shared.set_etcd(false, None);
                warn!("cannot list leases to pick a subnet: {e}; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        let existing: Vec<ExistingLease> = leases
            .iter()
            .map(|l| ExistingLease {
                subnet: l.subnet,
                // Unparsable values still occupy their subnet.
                public_ip: l
                    .attrs
                    .as_ref()
                    .map(|a| a.public_ip)
                    .unwrap_or(Ipv4Addr::UNSPECIFIED),
            })
            .collect();
        let choice = choose_subnet(
            cfg,
            &existing,
            underlay.public_ip,
            previous,
            &mut rand::thread_rng(),
        )?;
        let subnet = choice.subnet();
        let old: Option<&StoredLease> = leases.iter().find(|l| l.subnet == subnet);
        // Keep our VTEP MAC across restarts so peers' neighbour entries stay right.
        let mac = old
            .and_then(|l| l.attrs.as_ref().ok())
            .and_then(|a| a.vxlan_data())
            .map(|d| d.vtep_mac)
            .unwrap_or_else(|| MacAddr::random_local(&mut rand::thread_rng()));
        let attrs = lease_attrs(cfg, underlay.public_ip, mac);
        let expect_rev = match choice {
            Choice::Reuse(_) => old.map(|l| l.mod_revision).unwrap_or(0),
            _ => 0,
        };
        let attempt = async {
            let id = store.grant(ttl).await?;
            let won = store.put_lease_if(&subnet, &attrs, id, expect_rev).await?;
            if !won {
                let _ = store.revoke(id).await;
            }
            Ok::<_, StoreError>((won, id))
        };
        match attempt.await {
            Ok((true, id)) => {
                if let Some(old_id) = old.map(|l| l.etcd_lease).filter(|&o| o != 0 && o != id) {
                    let _ = store.revoke(old_id).await;
                }
                let how = match choice {
                    Choice::Reuse(_) => "reusing the lease that carries our public IP",
                    Choice::Previous(_) => "reclaiming the subnet from the previous subnet.env",
                    Choice::Fresh(_) => "leased a new subnet",
                };
                info!(subnet = %subnet, public_ip = %underlay.public_ip, "{how}");
                return Ok(OwnLease {
                    subnet,
                    network: cfg.network,
                    public_ip: underlay.public_ip,
                    iface: underlay.iface.clone(),
                    backend: cfg.backend.type_name().to_string(),
                    mtu: cfg.backend.overlay_mtu(underlay.mtu),
                    attrs,
                    etcd_lease: id,
                });
            }
            Ok((false, _)) => {
                races += 1;
                debug!(subnet = %subnet, races, "another host took the subnet first; trying again");
                let jitter = rand::Rng::gen_range(&mut rand::thread_rng(), 10..100u64);
                tokio::time::sleep(Duration::from_millis(jitter)).await;
            }
            Err(e) => {
                shared.set_etcd(false, Some(&e));
                warn!("cannot write our lease: {e}; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// Keeps our key alive and ours: renews before expiry, re-creates it with the same subnet if it vanished.
pub(super) async fn keep_lease(
    store: &Store,
    shared: &Shared,
    own: &mut OwnLease,
    opts: &RunOptions,
    renew_every: Duration,
) -> Result<(), DaemonError> {
    let mut next_renew = Instant::now() + renew_every;
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    let mut wait = CHECK_INTERVAL.min(renew_every);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {},
            _ = shared.own_key_changed.notified() => {},
        }
        match check_lease(store, shared, own, opts, &mut next_renew, renew_every).await {
            Ok(()) => {
                shared.set_etcd(true, None);
                backoff.reset();
                wait = CHECK_INTERVAL.min(next_renew.saturating_duration_since(Instant::now()));
            }
            Err(DaemonError::Store(e)) => {
                shared.set_etcd(false, Some(&e));
                wait = backoff.next_delay();
            }
            Err(fatal) => {
                error!("{fatal}");
                return Err(fatal);
            }
        }
    }
}

pub(super) async fn check_lease(
    store: &Store,
    shared: &Shared,
    own: &mut OwnLease,
    opts: &RunOptions,
    next_renew: &mut Instant,
    renew_every: Duration,
) -> Result<(), DaemonError> {
    let current = store.get_lease(&own.subnet).await?;
    let ours = match &current {
        Some(l) if Store::is_ours(&l.attrs, own.public_ip) => {
            own.etcd_lease = l.etcd_lease;
            true
        }
        Some(l) => {
            return Err(DaemonError::SubnetStolen {
                subnet: own.subnet,
                other: match &l.attrs {
                    Ok(a) => a.public_ip.to_string(),
                    Err(_) => "with an unreadable lease".into(),
                },
                file: opts.subnet_file.display().to_string(),
            })
        }
        None => false,
    };
    if ours && own.etcd_lease != 0 && Instant::now() >= *next_renew {
        let ttl = store.keep_alive(own.etcd_lease).await?;
        if ttl > 0 {
            shared.lease_ttl.store(ttl, Ordering::Relaxed);
            shared.lease_renewals.fetch_add(1, Ordering::Relaxed);
            *next_renew = Instant::now() + renew_every;
            debug!(subnet = %own.subnet, ttl, "renewed lease");
            return Ok(());
        }
    } else if ours {
        return Ok(());
    }
    // The key is gone (expired during an outage, or deleted) or its etcd lease is: claim it again.
    let id = store.grant(opts.lease_ttl).await?;
    let expect = current.as_ref().map(|l| l.mod_revision).unwrap_or(0);
    if store
        .put_lease_if(&own.subnet, &own.attrs, id, expect)
        .await?
    {
        own.etcd_lease = id;
        shared
            .lease_ttl
            .store(opts.lease_ttl.as_secs() as i64, Ordering::Relaxed);
        *next_renew = Instant::now() + renew_every;
        warn!(subnet = %own.subnet, "our lease had disappeared from etcd (expired or deleted); re-created it with the same subnet");
        Ok(())
    } else {
        let _ = store.revoke(id).await;
        // Someone wrote the key between our read and our write: look again next round.
        shared.own_key_changed.notify_one();
        Ok(())
    }
}
