//! Backends programmed into the kernel over netlink: the kernel VXLAN backend (the desired `flannel.<VNI>`
//! device — and `flannel-v6.<VNI>` on a dual-stack network — neighbours, FDB entries and routes computed
//! from the route table, pure, `state`, and the reconcilers that apply them, `vxlan`), and direct routes for
//! host-gw and vxlan's DirectRouting, IPv6 too for the latter (pure plan `direct_state`, reconciler `direct`).

pub mod direct;
pub mod direct_state;
pub mod state;
pub mod vxlan;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::routes::RouteTable;

/// How often a reconciler compares the kernel with its desired state when nothing else triggers it.
const RESYNC: Duration = Duration::from_secs(2);

/// A netlink reconciler: brings the kernel to the state the route table asks for.
pub(crate) trait Reconcile: Send + 'static {
    /// What it programs, for the log ("the kernel VXLAN device flannel.1").
    fn what(&self) -> String;
    fn reconcile(
        &mut self,
        routes: &RouteTable,
    ) -> impl Future<Output = Result<(), vxlan::ReconcileError>> + Send;
}

/// Keeps running `r` on every route-table change and every `RESYNC`; a failure is logged once (until it
/// changes), and so is the repair. `conn` (the netlink connection's task) stops with it.
pub(crate) fn keep_reconciling<R: Reconcile>(
    mut r: R,
    routes: Arc<RouteTable>,
    conn: JoinHandle<()>,
) -> JoinHandle<()> {
    let mut changed = routes.subscribe();
    tokio::spawn(async move {
        let _conn = AbortOnDrop(conn);
        let mut last_error: Option<String> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(RESYNC) => {},
                _ = changed.changed() => {},
            }
            match r.reconcile(&routes).await {
                Ok(()) => {
                    if last_error.take().is_some() {
                        info!("{} repaired", r.what());
                    }
                }
                Err(e) => {
                    let e = e.to_string();
                    if last_error.as_deref() != Some(e.as_str()) {
                        warn!("cannot program {}: {e}; retrying", r.what());
                        last_error = Some(e);
                    }
                }
            }
        }
    })
}

/// Aborts a task when dropped.
pub(crate) struct AbortOnDrop(pub JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
