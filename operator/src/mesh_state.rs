//! The mesh state: the one place where the index, the snapshot builder and the published
//! snapshots live, shared by the sources (which feed events), the xDS streams (which
//! subscribe to a profile's snapshot) and the admin server (which reads status). It holds
//! state and publishes; policy status is computed in the core.
//!
//! ```text
//! source --Vec<Event>--> run_pipeline (debounce) --> MeshState::apply --> index -> translate
//!                                                     --> watch::Sender per profile --> ADS streams
//! ```
//!
//! Changes that arrive close together are coalesced: the pipeline waits for a short quiet
//! period, and never more than [`MAX_DELAY`] after the first change of a batch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, watch};
use weir_core::identity::rfc3339;
use weir_core::index::Workload;
use weir_core::snapshot::Built;
use weir_core::status::{ca_condition, policy_statuses, ConditionView, PolicyStatus};
use weir_core::views::status::{MeshStatusView, ObjectCounts, PolicyStatusView};
use weir_core::{
    Event, Index, ProxyProfile, Snapshot, SnapshotBuilder, TypeSnapshot, WorkloadListeners,
};

use crate::identity::{Authority, ROTATION_GRACE};
use crate::metrics::Metrics;
use crate::xds::proxies::{ack_summary, ProxyRegistry};
use weir_core::index::IdentityConfig;

/// Longest a change waits for others to join its batch.
pub const MAX_DELAY: Duration = Duration::from_millis(100);
/// A batch closes after this long without a new change.
pub const QUIET: Duration = Duration::from_millis(10);

/// A document a source could not load, as reported in status.
pub use weir_core::views::status::SourceError;

/// What places a pod's proxy (see [`MeshState::placement`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The mTLS mode its sidecar accepts inbound.
    pub mode: weir_api::MtlsMode,
    /// Its zone, when its EndpointSlices say.
    pub zone: Option<Arc<str>>,
    /// The Services it backs.
    pub workload: Workload,
}

/// The pods whose placement a batch may have changed, numbered by batch: a receiver that
/// skipped a batch (it saw `batch - 2` or older) cannot know whose changed.
#[derive(Debug, Clone, Default)]
pub struct Placements {
    /// The batch's number (counting batches that changed some placement).
    pub batch: u64,
    /// Whose placement it may have changed.
    pub changes: Arc<weir_core::index::PlacementChanges>,
}

impl Placements {
    /// Whether `pod`'s placement may have changed since the receiver saw batch `seen`.
    pub fn moved(&self, seen: u64, pod: &weir_core::ObjectKey) -> bool {
        self.batch > seen + 1 || (self.batch > seen && self.changes.affects(pod))
    }
}

/// The mesh model and what is built from it, behind one lock.
struct Model {
    index: Index,
    snapshots: SnapshotBuilder,
}

/// Shared state of a running control plane. See the module docs.
pub struct MeshState {
    model: Mutex<Model>,
    senders: Mutex<HashMap<ProxyProfile, watch::Sender<Arc<Snapshot>>>>,
    source_errors: Mutex<Vec<SourceError>>,
    last_push: Mutex<Option<SystemTime>>,
    listed: std::sync::atomic::AtomicBool,
    synced: std::sync::atomic::AtomicBool,
    closing: watch::Sender<bool>,
    /// Bumped after every applied batch, for whoever reports on the index (status writer).
    applied: watch::Sender<u64>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Connected proxies.
    pub proxies: Arc<ProxyRegistry>,
    /// Whether proxies that can be scoped are (the operator's `--proxy-scope`).
    scoped_proxies: std::sync::atomic::AtomicBool,
    /// The mesh CA: workload certificates and the trust bundle.
    pub identity: Arc<Authority>,
    /// Authorization denials the sidecars report, per policy.
    pub denials: Arc<crate::denials::Denials>,
    /// What scoped sidecars report using, for their scopes to shrink.
    pub usage: Arc<crate::usage::Usage>,
    /// The pods whose placement (see [`Placement`]) the last batch may have changed.
    placements: watch::Sender<Placements>,
    /// The listeners each workload is served (derived per stream, without the model lock).
    workload_listeners: Mutex<WorkloadListeners>,
    /// The mesh's identity settings as last applied.
    identity_config: watch::Sender<IdentityConfig>,
    /// Resources served over the translated snapshots (tests only).
    #[cfg(feature = "testing")]
    overlay: Mutex<weir_core::testing::Overlay>,
}

impl std::fmt::Debug for MeshState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MeshState")
    }
}

impl Default for MeshState {
    fn default() -> Self {
        Self::new()
    }
}

impl MeshState {
    /// A state with an empty index.
    pub fn new() -> MeshState {
        Self::with_rotation_grace(ROTATION_GRACE)
    }

    /// A state whose CA rotations keep old roots trusted for `grace` (tests shorten it).
    pub fn with_rotation_grace(grace: std::time::Duration) -> MeshState {
        let metrics = Arc::new(Metrics::new());
        MeshState {
            model: Mutex::new(Model {
                index: Index::new(),
                snapshots: SnapshotBuilder::new(),
            }),
            senders: Mutex::new(HashMap::new()),
            source_errors: Mutex::new(Vec::new()),
            last_push: Mutex::new(None),
            listed: false.into(),
            synced: false.into(),
            closing: watch::channel(false).0,
            applied: watch::channel(0).0,
            identity: Arc::new(Authority::new(metrics.clone(), grace)),
            metrics,
            proxies: Arc::new(ProxyRegistry::default()),
            denials: Arc::default(),
            usage: Arc::default(),
            scoped_proxies: Default::default(),
            placements: watch::channel(Placements::default()).0,
            workload_listeners: Mutex::new(WorkloadListeners::new(
                weir_core::mesh::DEFAULT_TRUST_DOMAIN,
            )),
            identity_config: watch::channel(IdentityConfig::default()).0,
            #[cfg(feature = "testing")]
            overlay: Mutex::default(),
        }
    }

    /// Sets what every sidecar reports; before any proxy connects (the operator's flags).
    pub fn set_telemetry(&self, telemetry: weir_core::translate::telemetry::Telemetry) {
        let mut model = self.model();
        model.snapshots.set_telemetry(telemetry);
        let telemetry = model.snapshots.translator().telemetry().clone();
        crate::sync::lock(&self.workload_listeners).set_telemetry(&telemetry);
    }

    /// Scopes the proxies that can be (transparent capture, delta xDS) from now on;
    /// before any proxy connects (the operator's flags).
    pub fn set_scoped_proxies(&self, scoped: bool) {
        self.scoped_proxies
            .store(scoped, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether proxies that can be scoped are.
    pub fn scoped_proxies(&self) -> bool {
        self.scoped_proxies
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The Service whose ClusterIP is `address`, for a scoped proxy's first request to it.
    pub fn service_by_address(&self, address: &str) -> Option<weir_core::ObjectKey> {
        self.model().index.service_at(address)
    }

    fn model(&self) -> std::sync::MutexGuard<'_, Model> {
        crate::sync::lock(&self.model)
    }

    /// Applies a batch of events, translates, and publishes the snapshots that changed.
    pub fn apply(&self, events: Vec<Event>) {
        let started = Instant::now();
        let (published, placements, config) = {
            let mut model = self.model();
            let Model { index, snapshots } = &mut *model;
            for event in events {
                index.apply(event);
            }
            let published = snapshots.update(index).1;
            (
                published,
                index.take_placement_changes(),
                index.mesh_identity().clone(),
            )
        };
        crate::sync::lock(&self.workload_listeners).set_trust_domain(&config.trust_domain);
        if !placements.is_empty() {
            self.placements.send_modify(|current| {
                current.batch += 1;
                current.changes = Arc::new(placements);
            });
        }
        self.identity
            .set_config(&config.trust_domain, config.workload_ttl);
        self.identity_config.send_if_modified(|current| {
            let changed = *current != config;
            *current = config;
            changed
        });
        self.metrics
            .translation_seconds
            .observe(started.elapsed().as_secs_f64());
        self.publish(published);
        self.applied.send_modify(|n| *n += 1);
    }

    /// Changes when a pod's placement (mTLS mode, zone, Services backed) may have changed.
    pub fn placements(&self) -> watch::Receiver<Placements> {
        self.placements.subscribe()
    }

    /// What places a pod's proxy: the mTLS mode its sidecar accepts inbound and its zone
    /// (as its EndpointSlices say), which decide its profile, and the Services it backs,
    /// which decide its inbound listener; read under one lock.
    pub fn placement(&self, pod: &weir_core::ObjectKey) -> Placement {
        let model = self.model();
        Placement {
            mode: model.index.mtls_mode(pod),
            zone: model.index.pod_zone(pod),
            workload: model.index.workload(pod),
        }
    }

    /// The listeners a proxy of `profile` whose pod is `workload` serves over `base`, its
    /// profile's listener snapshot (shared with the other streams of the same workload).
    pub fn workload_listeners(
        &self,
        profile: ProxyProfile,
        workload: &Workload,
        base: &Arc<TypeSnapshot>,
    ) -> Arc<TypeSnapshot> {
        crate::sync::lock(&self.workload_listeners).get(profile, workload, base)
    }

    /// The route tables a proxy of `profile` whose pod is `workload` serves over `base`,
    /// its profile's route snapshot (its own inbound table when it authorizes).
    pub fn workload_routes(
        &self,
        profile: ProxyProfile,
        workload: &Workload,
        base: &Arc<TypeSnapshot>,
    ) -> Arc<TypeSnapshot> {
        crate::sync::lock(&self.workload_listeners).routes(profile, workload, base)
    }

    /// The addresses a pod's EndpointSlices give it.
    pub fn pod_addresses(&self, pod: &weir_core::ObjectKey) -> Vec<String> {
        self.model().index.pod_addresses(pod)
    }

    /// Whether `ip` (a report's source) is one of `pod`'s addresses.
    pub fn is_pod_address(&self, pod: &weir_core::ObjectKey, ip: Option<&str>) -> bool {
        ip.is_some_and(|ip| self.pod_addresses(pod).iter().any(|a| a == ip))
    }

    /// The mode of every policy that authorizes (its served version).
    pub fn authorization_modes(
        &self,
    ) -> std::collections::HashMap<weir_core::ObjectKey, weir_core::authorization::Mode> {
        self.model()
            .index
            .policies()
            .filter_map(|(k, p)| Some((k.clone(), p.effective()?.authorization.as_ref()?.mode)))
            .collect()
    }

    /// A pod's service account, when the pod is known.
    pub fn pod_service_account(&self, pod: &weir_core::ObjectKey) -> Option<String> {
        self.model()
            .index
            .pod(pod)
            .map(|p| p.service_account.to_string())
    }

    /// Namespaces that should have the mesh's root CA (labelled, or with meshed pods).
    pub fn meshed_namespaces(&self) -> std::collections::BTreeSet<String> {
        self.model().index.meshed_namespaces()
    }

    /// The mesh's identity settings as last applied.
    pub fn identity_config(&self) -> IdentityConfig {
        self.identity_config.borrow().clone()
    }

    /// The mesh's identity settings, as they change (for the CA source).
    pub fn identity_configs(&self) -> watch::Receiver<IdentityConfig> {
        self.identity_config.subscribe()
    }

    /// A receiver that sees a change after every applied batch.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Keys of every object of `kind` in the index.
    pub fn keys(&self, kind: weir_core::Kind) -> Vec<weir_core::ObjectKey> {
        self.model().index.keys(kind)
    }

    /// Serves a resource as given to every proxy, over the translated ones. Tests only:
    /// it bypasses translation and validation to provoke what valid input never does.
    #[cfg(feature = "testing")]
    pub fn insert_overlay(&self, t: weir_core::ResourceType, resource: weir_core::Resource) {
        crate::sync::lock(&self.overlay).insert(t, resource);
        self.republish();
    }

    /// Stops serving a resource added by [`MeshState::insert_overlay`].
    #[cfg(feature = "testing")]
    pub fn remove_overlay(&self, t: weir_core::ResourceType, name: &str) {
        let removed = crate::sync::lock(&self.overlay).remove(t, name);
        if removed {
            self.republish();
        }
    }

    /// Publishes every subscribed profile's current snapshot again (the overlay changed).
    #[cfg(feature = "testing")]
    fn republish(&self) {
        let published = {
            let mut model = self.model();
            let profiles: Vec<ProxyProfile> =
                crate::sync::lock(&self.senders).keys().copied().collect();
            profiles
                .into_iter()
                .map(|p| (p, Ok(model.snapshots.snapshot(p))))
                .collect()
        };
        self.publish(published);
    }

    /// A snapshot as served: with the test overlay over it, when there is one.
    fn served(&self, snapshot: Arc<Snapshot>) -> Arc<Snapshot> {
        #[cfg(feature = "testing")]
        let snapshot = crate::sync::lock(&self.overlay).apply(&snapshot);
        snapshot
    }

    fn publish(&self, published: Vec<Built>) {
        if published.is_empty() {
            return;
        }
        let senders = crate::sync::lock(&self.senders);
        for (profile, built) in published {
            let snapshot = match built {
                Ok(snapshot) => self.served(snapshot),
                Err(err) => {
                    // Never publish a snapshot that would leave Envoy waiting for a resource.
                    tracing::error!(%err, "snapshot held back");
                    self.metrics.snapshots_inconsistent.inc();
                    continue;
                }
            };
            if let Some(tx) = senders.get(&profile) {
                // Never replace a newer snapshot with an older one published late.
                let newer = tx.send_if_modified(|current| {
                    let newer = snapshot.generation > current.generation;
                    if newer {
                        *current = snapshot;
                    }
                    newer
                });
                if newer {
                    self.metrics.snapshots_published.inc();
                }
            }
        }
    }

    /// Subscribes to a profile's snapshots; the receiver holds the current one.
    pub fn subscribe(&self, profile: ProxyProfile) -> watch::Receiver<Arc<Snapshot>> {
        // Hold the index lock until the sender exists: a translation finishing in between
        // would otherwise publish to no one and leave this profile's channel stale.
        let mut model = self.model();
        let snapshot = self.served(model.snapshots.snapshot(profile));
        let mut senders = crate::sync::lock(&self.senders);
        let receiver = senders
            .entry(profile)
            .or_insert_with(|| watch::channel(snapshot).0)
            .subscribe();
        drop(model);
        receiver
    }

    /// Every Service port's protocol and the rule that decided it.
    pub fn port_protocols(&self) -> Vec<weir_core::translate::PortProtocol> {
        self.model().snapshots.translator().port_protocols()
    }

    /// The snapshot a profile's proxies are served.
    pub fn current(&self, profile: ProxyProfile) -> Arc<Snapshot> {
        self.model().snapshots.snapshot(profile)
    }

    /// Asks every xDS stream to end, so that proxies reconnect (to another replica, or to
    /// this one once it is back).
    pub fn close_streams(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves once [`MeshState::close_streams`] was called.
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.closing.subscribe();
        async move {
            let _ = rx.wait_for(|closing| *closing).await;
        }
    }

    /// Records that something was sent to a proxy.
    pub fn note_push(&self) {
        *crate::sync::lock(&self.last_push) = Some(SystemTime::now());
    }

    /// Replaces the source's load errors.
    pub fn set_source_errors(&self, errors: Vec<SourceError>) {
        self.metrics.source_errors.set(errors.len() as i64);
        *crate::sync::lock(&self.source_errors) = errors;
    }

    /// The source has sent its initial state to `tx`: the state counts as synced (ready)
    /// once the pipeline has applied everything sent before this call. The empty batch
    /// sent here wakes the pipeline to check, in case it applied the rest already.
    pub async fn mark_listed(&self, tx: &mpsc::Sender<Vec<Event>>) {
        self.listed.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = tx.send(Vec::new()).await;
    }

    /// Whether the source's initial state is translated and served (readiness).
    pub fn is_synced(&self) -> bool {
        self.synced.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The MeshStatus with typed conditions, for the status writer; [`MeshReport::view`] is
    /// what `/status` serves.
    pub fn mesh_status(&self) -> MeshReport {
        // One look at the proxies, so that the counts and Programmed agree.
        let proxies = self.proxies.list();
        let (policies, routes, counts) = {
            let model = self.model();
            let policies = policy_statuses(
                &model.index,
                model.snapshots.translator(),
                ack_summary(&proxies),
            );
            let routes = weir_core::status::gateway_route::route_statuses(
                &model.index,
                model.snapshots.translator(),
            );
            (policies, routes, model.index.counts())
        };
        let routes_rejected = routes.iter().filter(|r| !r.accepted()).count() as u32;
        let rejected: Vec<_> = policies.iter().filter(|p| !p.accepted().status).collect();
        let last_push = *crate::sync::lock(&self.last_push);
        MeshReport {
            status: weir_api::MeshStatusStatus {
                proxies_connected: proxies.len() as u32,
                proxies_in_sync: proxies.iter().filter(|p| p.in_sync()).count() as u32,
                policies_accepted: (policies.len() - rejected.len()) as u32,
                policies_rejected: rejected.len() as u32,
                routes_accepted: routes.len() as u32 - routes_rejected,
                routes_rejected,
                certificates_issued: self.identity.issued(),
                ca_expiry: self.identity.ca_expiry().map(rfc3339),
                last_push: last_push.map(rfc3339),
                rejected_policies: rejected
                    .iter()
                    .take(50)
                    .map(|p| weir_api::PolicyProblem {
                        namespace: p.namespace.clone(),
                        name: p.name.clone(),
                        reason: p.accepted().reason.as_str().to_string(),
                        message: p.accepted().message.clone(),
                    })
                    .collect(),
                rejected_config: proxies
                    .iter()
                    .flat_map(|p| {
                        p.types.iter().filter_map(|(t, s)| {
                            s.nack.as_ref().map(|m| weir_api::ProxyProblem {
                                node: p.node.clone(),
                                type_url: t.type_url().to_string(),
                                message: m.clone(),
                            })
                        })
                    })
                    .take(50)
                    .collect(),
                conditions: Vec::new(),
            },
            ca: ca_condition(
                self.identity.problem().as_ref(),
                self.identity.ca_expiry(),
                SystemTime::now(),
            ),
            policies,
            routes,
            source_errors: crate::sync::lock(&self.source_errors).clone(),
            objects: counts,
        }
    }
}

/// The MeshStatus status plus per-policy conditions and source errors, with the core's typed
/// conditions.
#[derive(Debug, Clone)]
pub struct MeshReport {
    /// What `kubectl get meshstatus` shows.
    pub status: weir_api::MeshStatusStatus,
    /// The mesh CA's condition (the status writer adds it to `status.conditions`).
    pub ca: ConditionView,
    /// Conditions of every policy.
    pub policies: Vec<PolicyStatus>,
    /// Conditions of every Gateway API route, per Service parent.
    pub routes: Vec<weir_core::status::gateway_route::RouteStatus>,
    /// Documents the source could not load.
    pub source_errors: Vec<SourceError>,
    /// What the index holds.
    pub objects: weir_core::index::IndexCounts,
}

impl MeshReport {
    /// The report as `/status` serves it.
    pub fn view(self) -> MeshStatusView {
        let objects = self.objects;
        MeshStatusView {
            status: self.status,
            ca: condition_view(&self.ca),
            policies: self
                .policies
                .iter()
                .map(|p| PolicyStatusView {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    observed_generation: p.observed_generation,
                    conditions: p.conditions.iter().map(condition_view).collect(),
                })
                .collect(),
            source_errors: self.source_errors,
            objects: ObjectCounts {
                services: objects.services,
                endpoint_slices: objects.endpoint_slices,
                endpoints: objects.endpoints,
                pods: objects.pods,
                policies: objects.policies,
            },
        }
    }
}

/// A condition as `/status` writes it.
fn condition_view(c: &ConditionView) -> weir_core::views::status::ConditionView {
    weir_core::views::status::ConditionView {
        type_: c.type_.as_str().to_string(),
        status: c.status,
        reason: c.reason.as_str().to_string(),
        message: c.message.clone(),
    }
}

/// Feeds batches from a source into the mesh state, coalescing bursts. Marks the state synced
/// when a batch applied leaves the channel empty after the source said it had listed
/// everything ([`MeshState::mark_listed`]).
pub async fn run_pipeline(state: Arc<MeshState>, mut rx: mpsc::Receiver<Vec<Event>>) {
    while let Some(mut events) = rx.recv().await {
        let deadline = tokio::time::Instant::now() + MAX_DELAY;
        loop {
            let quiet_end = (tokio::time::Instant::now() + QUIET).min(deadline);
            match tokio::time::timeout_at(quiet_end, rx.recv()).await {
                Ok(Some(more)) => events.extend(more),
                Ok(None) | Err(_) => break,
            }
        }
        let worker = state.clone();
        // Translation is CPU work; keep it off the async workers that serve streams.
        if tokio::task::spawn_blocking(move || worker.apply(events))
            .await
            .is_err()
        {
            tracing::error!("translation panicked; the previous snapshots keep serving");
        }
        // Listed, and nothing sent before that is left in the channel: it is all applied.
        let listed = state.listed.load(std::sync::atomic::Ordering::SeqCst);
        if listed && rx.is_empty() && !state.is_synced() {
            state
                .synced
                .store(true, std::sync::atomic::Ordering::SeqCst);
            tracing::info!("initial state translated; ready");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_re_reads_its_placement_when_its_pod_moved_or_it_missed_a_batch() {
        let pod = weir_core::ObjectKey::new("default", "api-0");
        let other = weir_core::ObjectKey::new("default", "web-0");
        let batch = |n, pods: &[&weir_core::ObjectKey], all| Placements {
            batch: n,
            changes: Arc::new(weir_core::index::PlacementChanges {
                all,
                pods: pods.iter().map(|p| (*p).clone()).collect(),
            }),
        };
        assert!(batch(4, &[&pod], false).moved(3, &pod));
        assert!(!batch(4, &[&other], false).moved(3, &pod));
        assert!(batch(4, &[], true).moved(3, &pod));
        // Batch 4 was skipped: whose placement it changed is unknown.
        assert!(batch(5, &[&other], false).moved(3, &pod));
        // Already seen.
        assert!(!batch(4, &[&pod], false).moved(4, &pod));
    }
}
