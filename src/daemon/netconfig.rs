//! Waiting for the network config (`<prefix>/config`) to exist in etcd and be valid.

use std::time::Duration;

use tracing::warn;

use crate::control::backoff::Backoff;
use crate::control::config::NetworkConfig;
use crate::control::store::Store;

use super::Shared;

/// Reads `<prefix>/config` until it exists and is valid, saying so once per state; returns it with its text.
pub(super) async fn wait_for_config(store: &Store, shared: &Shared) -> (NetworkConfig, String) {
    let mut last_problem = String::new();
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
    loop {
        let problem = match store.get_config().await {
            Ok(Some(text)) => {
                shared.set_etcd(true, None);
                match NetworkConfig::parse(&text) {
                    Ok(cfg) => return (cfg, text),
                    Err(e) => format!(
                        "the network config at {} is invalid: {e}; fix it with `weft config set`",
                        store.config_key()
                    ),
                }
            }
            Ok(None) => {
                shared.set_etcd(true, None);
                format!(
                    "waiting for the network config at {} in etcd {}; set it with `weft config set '{{\"Network\":\"10.5.0.0/16\",\"Backend\":{{\"Type\":\"vxlan\"}}}}'`",
                    store.config_key(),
                    store.endpoints()
                )
            }
            Err(e) => {
                shared.set_etcd(false, None);
                format!("cannot read the network config: {e}; retrying")
            }
        };
        if problem != last_problem {
            warn!("{problem}");
            last_problem = problem;
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}
