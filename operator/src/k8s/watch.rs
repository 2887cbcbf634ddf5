//! The Kubernetes source: one kube-runtime watcher per kind of the core's kind table
//! (`weir_core::Kind::ALL`), feeding the same pipeline as local mode.
//!
//! ```text
//! per Kind: watcher(DynamicObject, or metadata only, with the kind's label selector)
//!   --> JSON --> Kind::decode (the decoder local mode uses) --> Object
//!   --> Vec<Event> --> pipeline
//!   --> observers (ObservedPolicies: what the server says each policy's status is)
//! ```
//!
//! Nothing is cached here: the index is the store (a reflector's store would hold every
//! object a second time, untrimmed). A relist (`Init` .. `InitDone`) deletes what the index
//! holds but the new list lacks. Objects are decoded one by one, so an object that does not
//! decode is logged, shown in `/status` and skipped, and its last good version keeps
//! serving; it never stops the watch. Watch errors back off and the watch resumes or
//! relists.

use futures::{Stream, StreamExt};
use kube::api::{ApiResource, DynamicObject, PartialObjectMeta};
use kube::core::GroupVersionKind;
use kube::runtime::utils::{Backoff, ResetTimerBackoff};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use weir_api::TrafficPolicyStatus;
use weir_core::index::WatchMode;
use weir_core::{Event, Kind, Object, ObjectKey};

use crate::mesh_state::{MeshState, SourceError};

/// How often the API is asked whether it serves an optional kind (Gateway API routes)
/// that it did not serve: CRDs installed after the operator started are picked up within
/// this long, without a restart.
pub const OPTIONAL_KIND_RECHECK: std::time::Duration = std::time::Duration::from_secs(10);

/// How many listed objects go to the pipeline in one batch.
const INIT_BATCH: usize = 500;

/// Watch retries: from 200 ms, doubling, at most 5 s apart. kube-runtime's default goes
/// to 30 s, and a 410 Gone after an outage costs one more step before the relist: an
/// API server restart then went unnoticed for close to a minute.
const BACKOFF_MIN: std::time::Duration = std::time::Duration::from_millis(200);
const BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(5);
/// A watch healthy this long starts its next backoff from the minimum again.
const BACKOFF_RESET: std::time::Duration = std::time::Duration::from_secs(60);

/// Exponential backoff with up to 25% jitter, so replicas do not retry in step.
pub(crate) struct WatchBackoff {
    next: std::time::Duration,
}

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff { next: BACKOFF_MIN }
    }
}

impl Iterator for WatchBackoff {
    type Item = std::time::Duration;

    fn next(&mut self) -> Option<std::time::Duration> {
        let delay = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let jitter = delay.mul_f64(f64::from(nanos % 1000) / 4000.0);
        Some(delay + jitter)
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

/// The backoff every watch of the operator uses.
pub(crate) fn backoff() -> ResetTimerBackoff<WatchBackoff> {
    ResetTimerBackoff::new(WatchBackoff::default(), BACKOFF_RESET)
}

/// A second consumer of the watch: sees every object applied or deleted.
pub trait Observer: Send + Sync {
    /// An object was applied.
    fn applied(&self, object: &Object);
    /// An object is gone.
    fn deleted(&self, kind: Kind, key: &ObjectKey);
}

/// What the API server says each TrafficPolicy's status is now, for the status writer.
#[derive(Debug, Default)]
pub struct ObservedPolicies {
    policies: Mutex<HashMap<ObjectKey, ObservedPolicy>>,
}

/// One TrafficPolicy as last seen by the watcher.
#[derive(Debug, Clone, Default)]
pub struct ObservedPolicy {
    /// `metadata.uid`, for Events.
    pub uid: Option<String>,
    /// The status on the server.
    pub status: Option<TrafficPolicyStatus>,
}

impl ObservedPolicies {
    /// The policy as last seen.
    pub fn get(&self, key: &ObjectKey) -> Option<ObservedPolicy> {
        self.lock().get(key).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectKey, ObservedPolicy>> {
        crate::sync::lock(&self.policies)
    }
}

impl Observer for ObservedPolicies {
    fn applied(&self, object: &Object) {
        if let Object::TrafficPolicy(policy) = object {
            let (_, key) = object.id();
            self.lock().insert(
                key,
                ObservedPolicy {
                    uid: policy.metadata.uid.clone(),
                    status: policy.status.clone(),
                },
            );
        }
    }

    fn deleted(&self, kind: Kind, key: &ObjectKey) {
        if kind == Kind::TrafficPolicy {
            self.lock().remove(key);
        }
    }
}

/// Objects the source could not decode, by kind and key; shown in `/status`.
#[derive(Default)]
struct DecodeErrors(Mutex<BTreeMap<(Kind, ObjectKey), SourceError>>);

impl DecodeErrors {
    fn set(&self, state: &MeshState, id: (Kind, ObjectKey), error: Option<SourceError>) {
        let mut errors = crate::sync::lock(&self.0);
        let changed = match error {
            Some(e) => errors.insert(id, e.clone()).as_ref() != Some(&e),
            None => errors.remove(&id).is_some(),
        };
        if changed {
            state.set_source_errors(errors.values().cloned().collect());
        }
    }
}

/// The API resource of a kind, from the core's kind table.
pub fn api_resource(kind: Kind) -> ApiResource {
    let (group, version) = kind
        .api_version()
        .rsplit_once('/')
        .unwrap_or(("", kind.api_version()));
    let gvk = GroupVersionKind::gvk(group, version, kind.name());
    ApiResource::from_gvk_with_plural(&gvk, kind.plural())
}

/// Runs one watcher per kind until the pipeline closes. Tells the state once every kind
/// has been listed (it is ready when the pipeline has applied that).
pub async fn run(
    client: Client,
    state: Arc<MeshState>,
    tx: mpsc::Sender<Vec<Event>>,
    observers: Vec<Arc<dyn Observer>>,
) {
    let shared = Arc::new(Shared {
        state,
        tx,
        errors: DecodeErrors::default(),
        listed: Mutex::new(HashSet::new()),
        observers,
    });
    let watches = Kind::ALL.map(|kind| {
        let shared = shared.clone();
        let client = client.clone();
        async move {
            let resource = api_resource(kind);
            // All namespaces for namespaced kinds; cluster-scoped ones have none.
            let mut config = watcher::Config::default();
            if let Some(selector) = kind.label_selector() {
                config = config.labels(selector);
            }
            let context = WatchContext { kind, shared };
            if kind.optional() {
                context.until_served(&client, &resource).await;
            }
            match kind.watch_mode() {
                WatchMode::Full => {
                    let api = Api::<DynamicObject>::all_with(client, &resource);
                    context
                        .drive(watcher(api, config), |o| dynamic_json(kind, o))
                        .await
                }
                WatchMode::Metadata => {
                    // Metadata-only requests: the API server sends no spec or status.
                    let api = Api::<PartialObjectMeta<DynamicObject>>::all_with(client, &resource);
                    context
                        .drive(watcher(api, config), |o| metadata_json(kind, o))
                        .await
                }
            }
        }
    });
    futures::future::join_all(watches).await;
}

/// What every watcher shares.
struct Shared {
    state: Arc<MeshState>,
    tx: mpsc::Sender<Vec<Event>>,
    errors: DecodeErrors,
    listed: Mutex<HashSet<Kind>>,
    observers: Vec<Arc<dyn Observer>>,
}

struct WatchContext {
    kind: Kind,
    shared: Arc<Shared>,
}

impl WatchContext {
    /// Feeds one watcher's events to the pipeline; returns when the pipeline closes.
    async fn drive<K: kube::Resource + Clone + Send + std::fmt::Debug>(
        self,
        stream: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
        to_json: impl Fn(K) -> serde_json::Value,
    ) {
        let mut stream = std::pin::pin!(stream.backoff(backoff()));
        // Keys listed since the last `Init`, while a (re)list is under way.
        let mut relist: Option<HashSet<ObjectKey>> = None;
        let mut batch = Vec::new();
        while let Some(item) = stream.next().await {
            let event = match item {
                Ok(event) => event,
                Err(err) => {
                    // The watcher resumes (or relists) on the next poll, after a backoff.
                    tracing::warn!(kind = %self.kind, %err, "watch failed; retrying with backoff");
                    self.shared.state.metrics.watch_errors.inc();
                    continue;
                }
            };
            match event {
                watcher::Event::Init => relist = Some(HashSet::new()),
                watcher::Event::InitApply(object) => {
                    if let Some(seen) = relist.as_mut() {
                        seen.insert(self.kind.key(object.meta()));
                    }
                    batch.extend(self.convert(to_json(object)));
                    if batch.len() >= INIT_BATCH && !self.send(std::mem::take(&mut batch)).await {
                        return;
                    }
                }
                watcher::Event::InitDone => {
                    let seen = relist.take().unwrap_or_default();
                    let gone = self.shared.state.keys(self.kind).into_iter();
                    batch.extend(gone.filter(|k| !seen.contains(k)).map(|k| self.delete(k)));
                    if !self.send(std::mem::take(&mut batch)).await {
                        return;
                    }
                    if self.completes_listing() {
                        self.shared.state.mark_listed(&self.shared.tx).await;
                    }
                }
                watcher::Event::Apply(object) => {
                    let events: Vec<Event> = self.convert(to_json(object)).into_iter().collect();
                    if !self.send(events).await {
                        return;
                    }
                }
                watcher::Event::Delete(object) => {
                    let key = self.kind.key(object.meta());
                    if !self.send(vec![self.delete(key)]).await {
                        return;
                    }
                }
            }
        }
    }

    fn delete(&self, key: ObjectKey) -> Event {
        let shared = &self.shared;
        shared
            .errors
            .set(&shared.state, (self.kind, key.clone()), None);
        for observer in &shared.observers {
            observer.deleted(self.kind, &key);
        }
        Event::Delete(self.kind, key)
    }

    fn convert(&self, json: serde_json::Value) -> Option<Event> {
        let shared = &self.shared;
        let name = json.pointer("/metadata/name").and_then(|n| n.as_str());
        let namespace = json.pointer("/metadata/namespace").and_then(|n| n.as_str());
        let key = ObjectKey::new(namespace.unwrap_or_default(), name.unwrap_or_default());
        match self.kind.decode(json) {
            Ok(object) => {
                shared.errors.set(&shared.state, object.id(), None);
                for observer in &shared.observers {
                    observer.applied(&object);
                }
                Some(Event::apply(object))
            }
            Err(message) => {
                tracing::warn!(kind = %self.kind, object = %key, %message, "object skipped; its last good version keeps serving");
                let error = SourceError {
                    source: format!("{} {key}", self.kind),
                    document: None,
                    message,
                };
                shared
                    .errors
                    .set(&shared.state, (self.kind, key), Some(error));
                None
            }
        }
    }

    async fn send(&self, events: Vec<Event>) -> bool {
        events.is_empty() || self.shared.tx.send(events).await.is_ok()
    }

    /// For a kind whose CRD may be absent (Gateway API's): counts it as listed (empty) for
    /// readiness, and returns once the API serves it, checking every
    /// [`OPTIONAL_KIND_RECHECK`]; says once that it is not installed.
    async fn until_served(&self, client: &Client, resource: &ApiResource) {
        let mut told = None;
        loop {
            let why_not = match client.list_api_group_resources(&resource.api_version).await {
                Ok(list) if list.resources.iter().any(|r| r.name == resource.plural) => {
                    // Served: watch it, unless our RBAC does not let us list it (an
                    // operator upgraded without its ClusterRole), which would keep the
                    // operator from ever being ready.
                    let api = Api::<DynamicObject>::all_with(client.clone(), resource);
                    match api.list(&kube::api::ListParams::default().limit(1)).await {
                        Err(kube::Error::Api(e)) if e.code == 403 => Some(format!(
                            "the API serves it but the operator may not list it ({}): re-apply config/rbac/cluster_role.yaml; its routes are not read",
                            e.message
                        )),
                        _ => {
                            if told.is_some() {
                                tracing::info!(kind = %self.kind, "readable now: watching");
                            }
                            return;
                        }
                    }
                }
                Ok(_) | Err(kube::Error::Api(_)) => Some(
                    "not served (Gateway API's CRDs are not installed): its routes are not read"
                        .to_string(),
                ),
                Err(err) => {
                    tracing::warn!(kind = %self.kind, %err, "cannot ask the API whether it serves this kind; retrying");
                    None
                }
            };
            if let Some(why) = why_not {
                if told.as_ref() != Some(&why) {
                    tracing::info!(
                        kind = %self.kind,
                        api_version = %resource.api_version,
                        "{why}; checking again every {}s",
                        OPTIONAL_KIND_RECHECK.as_secs()
                    );
                    if told.is_none() && self.completes_listing() {
                        self.shared.state.mark_listed(&self.shared.tx).await;
                    }
                    told = Some(why);
                }
            }
            tokio::time::sleep(OPTIONAL_KIND_RECHECK).await;
        }
    }

    /// Records that this kind was listed; whether that completes the initial state.
    fn completes_listing(&self) -> bool {
        let mut listed = crate::sync::lock(&self.shared.listed);
        let completes = listed.insert(self.kind) && listed.len() == Kind::ALL.len();
        if completes {
            tracing::info!("every kind listed");
        }
        completes
    }
}

/// A watched object as the JSON document local mode would read.
fn dynamic_json(kind: Kind, object: DynamicObject) -> serde_json::Value {
    let DynamicObject { metadata, data, .. } = object;
    let mut map = match data {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    map.insert("apiVersion".into(), kind.api_version().into());
    map.insert("kind".into(), kind.name().into());
    map.insert(
        "metadata".into(),
        serde_json::to_value(metadata).unwrap_or_default(),
    );
    serde_json::Value::Object(map)
}

/// An object watched for its metadata only, as a document of its kind.
fn metadata_json(kind: Kind, object: PartialObjectMeta<DynamicObject>) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": kind.api_version(),
        "kind": kind.name(),
        "metadata": object.metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watched_policy_that_does_not_decode_names_the_field() {
        let object: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "weir.dev/v1alpha1",
            "kind": "TrafficPolicy",
            "metadata": {"name": "bad", "namespace": "default"},
            "spec": {"targetRef": {"service": "reviews"}, "http": [{"timeout": 5}]}
        }))
        .unwrap();
        let json = dynamic_json(Kind::TrafficPolicy, object);
        let err = Kind::TrafficPolicy.decode(json).unwrap_err();
        assert!(err.contains("TrafficPolicy bad"), "{err}");
        assert!(err.contains("spec.http[0].timeout"), "{err}");
    }

    #[test]
    fn api_resources_come_from_the_kind_table() {
        let slices = api_resource(Kind::EndpointSlice);
        assert_eq!(
            (
                slices.group.as_str(),
                slices.version.as_str(),
                slices.plural.as_str()
            ),
            ("discovery.k8s.io", "v1", "endpointslices")
        );
        let services = api_resource(Kind::Service);
        assert_eq!(
            (services.group.as_str(), services.api_version.as_str()),
            ("", "v1")
        );
    }
}
