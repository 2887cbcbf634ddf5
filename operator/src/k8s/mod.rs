//! Kubernetes mode: the API server as the source, status written back, one leader.
//!
//! ```text
//! watch::run (a watcher per kind) --Vec<Event>--> pipeline (as in local mode)
//!            \--> ObservedPolicies (a second consumer) --+
//! leader::run (Lease) --leading--> status::StatusWriter --SSA--> TrafficPolicy/status,
//!                                                                MeshStatus/mesh, Events
//!
//! ca::run_source (every replica) --CA Secret--> Authority
//! ca::run_publisher (leader) --> ConfigMaps weir-root-ca, Secret weir-webhook-tls, caBundle
//! ```
//!
//! Every replica watches and serves xDS; only the one holding the Lease writes.

pub mod ca;
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
    manage_webhook_cert: bool,
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
    let namespace = lease.namespace.clone();
    let (ca_client, ca_state, ca_leading, ca_stop) =
        (client.clone(), state.clone(), leading.clone(), stop());
    let ca_namespace = namespace.clone();
    tasks.push(tokio::spawn(async move {
        tokio::select! {
            _ = ca::run_source(ca_client, ca_state, ca_namespace, ca_leading) => {}
            _ = ca_stop => {}
        }
    }));
    let (pub_client, pub_state, pub_leading, pub_stop) =
        (client.clone(), state.clone(), leading.clone(), stop());
    tasks.push(tokio::spawn(async move {
        tokio::select! {
            _ = ca::run_publisher(pub_client, pub_state, namespace, manage_webhook_cert, pub_leading) => {}
            _ = pub_stop => {}
        }
    }));
    let writer = status::StatusWriter::new(client.clone(), state, observed, &lease.identity);
    tasks.push(tokio::spawn(writer.run(leading.clone(), stop())));
    tasks.push(tokio::spawn(leader::run(client, lease, leading_tx, stop())));
    leading
}
