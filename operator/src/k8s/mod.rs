//! Kubernetes mode: the API server as the source, status written back, one leader.
//!
//! ```text
//! watch::run (a watcher per kind) --Vec<Event>--> pipeline (as in local mode)
//!            \--> ObservedPolicies (a second consumer) --+
//! leader::run (Lease) --leading--> status::StatusWriter --SSA--> TrafficPolicy/status,
//!                                                                MeshStatus/mesh, Events
//! ```
//!
//! Every replica watches and serves xDS; only the one holding the Lease writes.

pub mod leader;
pub mod status;
pub mod watch;

use std::sync::Arc;
use tokio::sync::{mpsc, watch as channel};
use weir_core::Event;

use crate::MeshState;

/// How the operator talks to the cluster.
#[derive(Clone)]
pub struct KubeOptions {
    /// The API client.
    pub client: kube::Client,
    /// Leader election.
    pub lease: leader::LeaseSettings,
}

impl std::fmt::Debug for KubeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeOptions")
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

/// Spawns the watchers, the elector and the status writer. Each stops when `stop()`
/// resolves; the elector then releases the Lease. Returns the leadership receiver.
pub(crate) fn spawn<S, F>(
    options: KubeOptions,
    state: Arc<MeshState>,
    tx: mpsc::Sender<Vec<Event>>,
    stop: S,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> channel::Receiver<bool>
where
    S: Fn() -> F,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let observed = Arc::new(watch::ObservedPolicies::default());
    let KubeOptions { client, lease } = options;
    let (leading_tx, leading) = channel::channel(false);
    let metrics = state.metrics.clone();
    let mut gauge = leading.clone();
    tasks.push(tokio::spawn(async move {
        while gauge.changed().await.is_ok() {
            metrics.leader.set(i64::from(*gauge.borrow_and_update()));
        }
    }));
    let watch_stop = stop();
    let watch_client = client.clone();
    let watch_state = state.clone();
    let watch_observed: Arc<dyn watch::Observer> = observed.clone();
    tasks.push(tokio::spawn(async move {
        tokio::select! {
            _ = watch::run(watch_client, watch_state, tx, vec![watch_observed]) => {}
            _ = watch_stop => {}
        }
    }));
    let writer = status::StatusWriter::new(client.clone(), state, observed, &lease.identity);
    tasks.push(tokio::spawn(writer.run(leading.clone(), stop())));
    tasks.push(tokio::spawn(leader::run(client, lease, leading_tx, stop())));
    leading
}
