//! The peer watch: mirrors the other hosts' leases in etcd into the route table.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, warn};

use std::collections::HashMap;

use crate::control::backoff::Backoff;
use crate::control::config::NetworkConfig;
use crate::control::lease::SubnetKey;
use crate::control::store::{Store, StoredLease};
use crate::control::validate::{check_peer_lease, InvalidLease};
use crate::control::watch_cursor::{WatchCursor, WatchStart};
use crate::routes::Peer;

use super::Shared;

/// Mirrors `<prefix>/subnets/` into the route table: snapshot, then watch from its revision; resume after
/// disconnects from the last revision seen; re-list after compaction.
pub(super) async fn watch_peers(
    store: Store,
    shared: Arc<Shared>,
    cfg: NetworkConfig,
    own_subnet: SubnetKey,
    own_ip: IpAddr,
    saver: StateSaver,
) {
    let mut cursor = WatchCursor::new();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let is_peer = |l: &StoredLease| l.subnet != own_subnet && !Store::is_ours(&l.attrs, own_ip);
    let mut invalid = Invalid::default();
    loop {
        let from = match cursor.start() {
            WatchStart::From(rev) => rev,
            WatchStart::List => match store.list_leases().await {
                Ok((leases, r)) => {
                    invalid.relisting();
                    let peers: Vec<(SubnetKey, Peer)> = leases
                        .iter()
                        .filter(|l| is_peer(l))
                        .filter_map(|l| Some((l.subnet, invalid.admit(&cfg, own_subnet, l)?)))
                        .collect();
                    invalid.previous.clear();
                    invalid.publish(&shared);
                    let (changed, removed) = shared.routes.replace_all_from(peers);
                    saver.save(&shared);
                    info!(
                        peers = shared.routes.load().len(),
                        changed,
                        removed,
                        revision = r,
                        "loaded peer leases"
                    );
                    cursor.listed(r)
                }
                Err(e) => {
                    debug!("cannot list leases for the watch: {e}");
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            },
        };
        let mut stream = match store.watch_leases(from).await {
            Ok(s) => s,
            Err(e) => {
                debug!("cannot start the lease watch: {e}");
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        shared.watch_restarts.fetch_add(1, Ordering::Relaxed);
        loop {
            let resp = match stream.message().await {
                Ok(Some(r)) => r,
                Ok(None) | Err(_) => {
                    debug!(
                        revision = cursor.revision(),
                        "lease watch interrupted; resuming"
                    );
                    tokio::time::sleep(backoff.next_delay()).await;
                    break;
                }
            };
            backoff.reset();
            let mut batch = Batch::default();
            if let Some(rev) = cursor.relist_if_behind(resp.compact_revision(), resp.canceled()) {
                warn!(
                    revision = rev,
                    compacted = resp.compact_revision(),
                    "lease watch fell behind etcd's compaction; re-listing all leases"
                );
                break;
            }
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                cursor.saw(kv.mod_revision());
                let Some(subnet) = store.subnet_of_key(kv.key()) else {
                    continue;
                };
                shared.watch_events.fetch_add(1, Ordering::Relaxed);
                if subnet == own_subnet {
                    shared.own_key_changed.notify_one();
                    continue;
                }
                match ev.event_type() {
                    etcd_client::EventType::Put => {
                        let Some(l) =
                            store.stored_lease(kv.key(), kv.value(), kv.lease(), kv.mod_revision())
                        else {
                            continue;
                        };
                        if !is_peer(&l) {
                            continue;
                        }
                        match invalid.admit(&cfg, own_subnet, &l) {
                            Some(p) => {
                                if shared.routes.upsert_from(l.subnet, p) {
                                    batch.upserted += 1;
                                    debug!(subnet = %subnet, public_ip = %p.public_ip, "peer added or changed");
                                }
                            }
                            // Never routed: a route it had before goes.
                            None => {
                                if shared.routes.remove(&subnet).is_some() {
                                    batch.removed += 1;
                                }
                            }
                        }
                    }
                    etcd_client::EventType::Delete => {
                        invalid.keys.remove(&subnet);
                        if let Some(p) = shared.routes.remove(&subnet) {
                            batch.removed += 1;
                            debug!(subnet = %subnet, public_ip = %p.public_ip, "peer removed");
                        }
                    }
                }
            }
            invalid.publish(&shared);
            if batch.upserted + batch.removed > 0 {
                saver.save(&shared);
                info!(
                    added_or_changed = batch.upserted,
                    removed = batch.removed,
                    peers = shared.routes.load().len(),
                    "peers changed"
                );
            }
            if let Some(h) = resp.header() {
                cursor.saw(h.revision());
            }
        }
    }
}

/// Saves what weft knows (config, our lease, the peers) whenever the peers change, for restarts during an
/// etcd outage.
pub(super) struct StateSaver {
    pub(super) path: std::path::PathBuf,
    pub(super) config: String,
    pub(super) subnet: SubnetKey,
    pub(super) lease: crate::control::lease::LeaseAttrs,
}

impl StateSaver {
    pub(super) fn save(&self, shared: &Shared) {
        super::saved::SavedState {
            config: self.config.clone(),
            subnet: self.subnet.v4,
            subnet6: self.subnet.v6,
            lease: self.lease.clone(),
            peers: shared.routes.load().peers().to_vec(),
        }
        .save(&self.path);
    }
}

/// Route changes of one watch response, logged as one line (details at debug level).
#[derive(Default)]
struct Batch {
    upserted: usize,
    removed: usize,
}

/// The peer leases currently ignored, each logged once when it becomes (or changes why it is) invalid.
#[derive(Default)]
struct Invalid {
    keys: HashMap<SubnetKey, InvalidLease>,
    /// During a re-list: what was invalid before it (not logged again).
    previous: HashMap<SubnetKey, InvalidLease>,
}

impl Invalid {
    fn relisting(&mut self) {
        self.previous = std::mem::take(&mut self.keys);
    }

    /// The peer to route for lease `l`, or None when the lease breaks flannel's rules.
    fn admit(&mut self, cfg: &NetworkConfig, own: SubnetKey, l: &StoredLease) -> Option<Peer> {
        match check_peer_lease(cfg, own, l.subnet, &l.attrs) {
            Ok(()) => {
                self.keys.remove(&l.subnet);
                // A half of a family the network does not have is not routed (as flannel ignores it).
                let key = cfg.routed_key(l.subnet)?;
                l.attrs.as_ref().ok().map(|a| Peer::from_lease(key, a))
            }
            Err(why) => {
                let known = self.previous.get(&l.subnet) == Some(&why);
                if self.keys.insert(l.subnet, why) != Some(why) && !known {
                    warn!(subnet = %l.subnet, reason = why.label(),
                        "ignoring the lease of {}: {}; it is not routed", l.subnet, why.describe(cfg));
                }
                None
            }
        }
    }

    fn publish(&self, shared: &Shared) {
        let counts = InvalidLease::ALL
            .iter()
            .map(|r| (*r, self.keys.values().filter(|v| *v == r).count()))
            .collect();
        *shared.invalid_leases.lock().expect("invalid leases lock") = counts;
    }
}
