//! The Kubernetes source: one kube-runtime watcher per kind, feeding the same pipeline as
//! local mode.
//!
//! ```text
//! watcher(Services)          typed        --+
//! watcher(EndpointSlices)    typed, with   |   Object --> Vec<Event> --> engine pipeline
//!                            the service-name label only
//! watcher(Pods)              metadata only |
//! watcher(TrafficPolicies)   dynamic       |   + observed status --> status writer
//! watcher(MeshIdentities)    dynamic     --+
//! ```
//!
//! Nothing is cached here: the index is the store (a reflector's store would hold every
//! object a second time, untrimmed). A relist (`Init` .. `InitDone`) deletes what the index
//! holds but the new list lacks. Our own CRDs are watched as dynamic objects and decoded one
//! by one, so an object that does not decode is logged, shown in `/status` and skipped, and
//! its last good version keeps serving; it never stops the watch. Watch errors back off and
//! the watch resumes or relists.

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ApiResource, DynamicObject, PartialObjectMeta};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::mpsc;
use weir_api::{MeshIdentity, TrafficPolicy, TrafficPolicyStatus};
use weir_core::{Event, Kind, Object, ObjectKey};

use crate::engine::{Engine, SourceError};
use crate::local::decode;

/// How many listed objects go to the pipeline in one batch.
const INIT_BATCH: usize = 500;

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
        self.policies.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Objects the source could not decode, by kind and key; shown in `/status`.
#[derive(Default)]
struct DecodeErrors(Mutex<BTreeMap<(Kind, ObjectKey), SourceError>>);

impl DecodeErrors {
    fn set(&self, engine: &Engine, id: (Kind, ObjectKey), error: Option<SourceError>) {
        let mut errors = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let changed = match error {
            Some(e) => errors.insert(id, e.clone()).as_ref() != Some(&e),
            None => errors.remove(&id).is_some(),
        };
        if changed {
            engine.set_source_errors(errors.values().cloned().collect());
        }
    }
}

/// Runs the five watchers until the pipeline closes. Tells the engine once every kind has
/// been listed (it is ready when the pipeline has applied that).
pub async fn run(
    client: Client,
    engine: Arc<Engine>,
    tx: mpsc::Sender<Vec<Event>>,
    observed: Arc<ObservedPolicies>,
) {
    let errors = Arc::new(DecodeErrors::default());
    let listed = Arc::new(Mutex::new(HashSet::new()));
    let ctx = |kind| WatchContext {
        kind,
        engine: engine.clone(),
        tx: tx.clone(),
        errors: errors.clone(),
        listed: listed.clone(),
        observed: observed.clone(),
    };
    let policy_resource = ApiResource::erase::<TrafficPolicy>(&());
    let identity_resource = ApiResource::erase::<MeshIdentity>(&());
    let services = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    );
    let slices = watcher(
        Api::<EndpointSlice>::all(client.clone()),
        // Slices without the label belong to no Service; the index ignores them anyway.
        watcher::Config::default().labels("kubernetes.io/service-name"),
    );
    // Labels are all the index keeps of a Pod: metadata-only requests.
    let pods = watcher(
        Api::<PartialObjectMeta<Pod>>::all(client.clone()),
        watcher::Config::default(),
    );
    let policies = watcher(
        Api::<DynamicObject>::all_with(client.clone(), &policy_resource),
        watcher::Config::default(),
    );
    let identities = watcher(
        Api::<DynamicObject>::all_with(client, &identity_resource),
        watcher::Config::default(),
    );
    let policy_observed = observed.clone();
    tokio::join!(
        ctx(Kind::Service).drive(services, |s| Ok(Object::Service(s))),
        ctx(Kind::EndpointSlice).drive(slices, |s| Ok(Object::EndpointSlice(s))),
        ctx(Kind::Pod).drive(pods, |p: PartialObjectMeta<Pod>| {
            Ok(Object::Pod(Pod {
                metadata: p.metadata,
                ..Pod::default()
            }))
        }),
        ctx(Kind::TrafficPolicy).drive(policies, move |o| {
            let policy: TrafficPolicy = from_dynamic(o, "TrafficPolicy")?;
            policy_observed.lock().insert(
                ObjectKey::new(policy.namespace().unwrap_or_default(), policy.name_any()),
                ObservedPolicy {
                    uid: policy.metadata.uid.clone(),
                    status: policy.status.clone(),
                },
            );
            Ok(Object::TrafficPolicy(policy))
        }),
        ctx(Kind::MeshIdentity).drive(identities, |o| {
            Ok(Object::MeshIdentity(from_dynamic(o, "MeshIdentity")?))
        }),
    );
}

struct WatchContext {
    kind: Kind,
    engine: Arc<Engine>,
    tx: mpsc::Sender<Vec<Event>>,
    errors: Arc<DecodeErrors>,
    listed: Arc<Mutex<HashSet<Kind>>>,
    observed: Arc<ObservedPolicies>,
}

impl WatchContext {
    /// Feeds one watcher's events to the pipeline; returns when the pipeline closes.
    async fn drive<K: kube::Resource + Clone + Send + std::fmt::Debug>(
        self,
        stream: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
        to_object: impl Fn(K) -> Result<Object, String>,
    ) {
        let mut stream = std::pin::pin!(stream.default_backoff());
        // Keys listed since the last `Init`, while a (re)list is under way.
        let mut relist: Option<HashSet<ObjectKey>> = None;
        let mut batch = Vec::new();
        while let Some(item) = stream.next().await {
            let event = match item {
                Ok(event) => event,
                Err(err) => {
                    // The watcher resumes (or relists) on the next poll, after a backoff.
                    tracing::warn!(kind = ?self.kind, %err, "watch failed; retrying with backoff");
                    self.engine.metrics.watch_errors.inc();
                    continue;
                }
            };
            match event {
                watcher::Event::Init => relist = Some(HashSet::new()),
                watcher::Event::InitApply(object) => {
                    if let Some(seen) = relist.as_mut() {
                        seen.insert(self.key(&object));
                    }
                    batch.extend(self.convert(object, &to_object));
                    if batch.len() >= INIT_BATCH && !self.send(std::mem::take(&mut batch)).await {
                        return;
                    }
                }
                watcher::Event::InitDone => {
                    let seen = relist.take().unwrap_or_default();
                    let gone = self.engine.keys(self.kind).into_iter();
                    batch.extend(gone.filter(|k| !seen.contains(k)).map(|k| self.delete(k)));
                    if !self.send(std::mem::take(&mut batch)).await {
                        return;
                    }
                    if self.completes_listing() {
                        self.engine.mark_listed(&self.tx).await;
                    }
                }
                watcher::Event::Apply(object) => {
                    let events: Vec<Event> = self.convert(object, &to_object).into_iter().collect();
                    if !self.send(events).await {
                        return;
                    }
                }
                watcher::Event::Delete(object) => {
                    let key = self.key(&object);
                    if !self.send(vec![self.delete(key)]).await {
                        return;
                    }
                }
            }
        }
    }

    fn key<K: kube::Resource>(&self, object: &K) -> ObjectKey {
        let namespace = match self.kind {
            Kind::MeshIdentity => String::new(),
            _ => object.meta().namespace.clone().unwrap_or_default(),
        };
        ObjectKey::new(namespace, object.meta().name.clone().unwrap_or_default())
    }

    fn delete(&self, key: ObjectKey) -> Event {
        self.errors
            .set(&self.engine, (self.kind, key.clone()), None);
        if self.kind == Kind::TrafficPolicy {
            self.observed.lock().remove(&key);
        }
        Event::Delete(self.kind, key)
    }

    fn convert<K: kube::Resource>(
        &self,
        object: K,
        to_object: &impl Fn(K) -> Result<Object, String>,
    ) -> Option<Event> {
        let key = self.key(&object);
        match to_object(object) {
            Ok(object) => {
                self.errors.set(&self.engine, (self.kind, key), None);
                Some(Event::apply(object))
            }
            Err(message) => {
                tracing::warn!(kind = ?self.kind, object = %key, %message, "object skipped; its last good version keeps serving");
                let error = SourceError {
                    source: format!("{:?} {key}", self.kind),
                    document: None,
                    message,
                };
                self.errors.set(&self.engine, (self.kind, key), Some(error));
                None
            }
        }
    }

    async fn send(&self, events: Vec<Event>) -> bool {
        events.is_empty() || self.tx.send(events).await.is_ok()
    }

    /// Records that this kind was listed; whether that completes the initial state.
    fn completes_listing(&self) -> bool {
        let mut listed = self.listed.lock().unwrap_or_else(PoisonError::into_inner);
        let completes = listed.insert(self.kind) && listed.len() == KINDS;
        if completes {
            tracing::info!("every kind listed");
        }
        completes
    }
}

/// How many kinds are watched.
const KINDS: usize = 5;

/// Decodes a dynamic object into one of our types, naming the field that fails.
fn from_dynamic<T: serde::de::DeserializeOwned>(
    object: DynamicObject,
    kind: &str,
) -> Result<T, String> {
    let name = object.name_any();
    let DynamicObject {
        types,
        metadata,
        data,
    } = object;
    let mut map = match data {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    let metadata = serde_json::to_value(metadata).map_err(|e| e.to_string())?;
    map.insert("metadata".into(), metadata);
    if let Some(types) = types {
        map.insert("apiVersion".into(), types.api_version.into());
        map.insert("kind".into(), types.kind.into());
    }
    decode(serde_json::Value::Object(map), kind, &name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_policy_that_does_not_decode_names_the_field() {
        let object: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "weir.dev/v1alpha1",
            "kind": "TrafficPolicy",
            "metadata": {"name": "bad", "namespace": "default"},
            "spec": {"targetRef": {"service": "reviews"}, "http": [{"timeout": 5}]}
        }))
        .unwrap();
        let err = from_dynamic::<TrafficPolicy>(object, "TrafficPolicy").unwrap_err();
        assert!(err.contains("TrafficPolicy bad"), "{err}");
        assert!(err.contains("spec.http[0].timeout"), "{err}");
    }
}
