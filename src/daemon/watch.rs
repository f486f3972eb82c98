//! The peer watch: mirrors the other hosts' leases in etcd into the route table.

use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use tracing::{debug, info, warn};

use crate::control::backoff::Backoff;
use crate::control::store::{Store, StoredLease};
use crate::control::watch_cursor::{WatchCursor, WatchStart};
use crate::routes::Peer;

use super::Shared;

/// Mirrors `<prefix>/subnets/` into the route table: snapshot, then watch from its revision; resume after
/// disconnects from the last revision seen; re-list after compaction.
pub(super) async fn watch_peers(
    store: Store,
    shared: Arc<Shared>,
    own_subnet: Ipv4Net,
    own_ip: Ipv4Addr,
) {
    let mut cursor = WatchCursor::new();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let is_peer = |l: &StoredLease| l.subnet != own_subnet && !Store::is_ours(&l.attrs, own_ip);
    loop {
        let from = match cursor.start() {
            WatchStart::From(rev) => rev,
            WatchStart::List => match store.list_leases().await {
                Ok((leases, r)) => {
                    let peers: Vec<Peer> = leases
                        .iter()
                        .filter(|l| is_peer(l))
                        .filter_map(|l| {
                            l.attrs.as_ref().ok().map(|a| Peer::from_lease(l.subnet, a))
                        })
                        .collect();
                    let (changed, removed) = shared.routes.replace_all(peers);
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
                        match &l.attrs {
                            Ok(_) if !is_peer(&l) => {}
                            Ok(a) => {
                                let p = Peer::from_lease(subnet, a);
                                if shared.routes.upsert(p) {
                                    info!(subnet = %subnet, public_ip = %a.public_ip, backend = %a.backend_type, "peer added or changed");
                                }
                            }
                            Err(e) => {
                                warn!(subnet = %subnet, "ignoring malformed lease: {e}");
                                shared.routes.remove(&subnet);
                            }
                        }
                    }
                    etcd_client::EventType::Delete => {
                        if let Some(p) = shared.routes.remove(&subnet) {
                            info!(subnet = %subnet, public_ip = %p.public_ip, "peer removed");
                        }
                    }
                }
            }
            if let Some(h) = resp.header() {
                cursor.saw(h.revision());
            }
        }
    }
}
