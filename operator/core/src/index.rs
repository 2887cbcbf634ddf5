//! The in-memory model of the mesh, fed by apply/delete events from a source (the Kubernetes
//! watchers or the local directory). Pure: no I/O.
//!
//! Objects are trimmed on the way in to what translation needs (a Pod keeps its labels only).
//! Every event marks what it touches as dirty, at the finest grain that matters: an
//! EndpointSlice or Pod change dirties the endpoints of one Service, a Service or policy change
//! dirties that Service whole. The translator takes the dirty set and redoes only that.

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::{BTreeMap, BTreeSet};

use crate::HashMap;
use std::sync::Arc;
use weir_api::{MeshIdentity, TrafficPolicy};

use crate::policy::{self, Rejection, ValidPolicy};

/// Namespace and name of an object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// Namespace (empty for cluster-scoped objects).
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// A key from its parts.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    fn of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Self {
        ObjectKey::new(
            meta.namespace
                .clone()
                .unwrap_or_else(|| "default".to_string()),
            meta.name.clone().unwrap_or_default(),
        )
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A Kubernetes object the index understands.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum Object {
    /// core/v1 Service.
    Service(Service),
    /// discovery.k8s.io/v1 EndpointSlice.
    EndpointSlice(EndpointSlice),
    /// core/v1 Pod.
    Pod(Pod),
    /// weir.dev/v1alpha1 TrafficPolicy.
    TrafficPolicy(TrafficPolicy),
    /// weir.dev/v1alpha1 MeshIdentity.
    MeshIdentity(MeshIdentity),
}

/// The kinds of [`Object`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Service.
    Service,
    /// EndpointSlice.
    EndpointSlice,
    /// Pod.
    Pod,
    /// TrafficPolicy.
    TrafficPolicy,
    /// MeshIdentity.
    MeshIdentity,
}

impl Object {
    /// Kind and key of the object.
    pub fn id(&self) -> (Kind, ObjectKey) {
        match self {
            Object::Service(o) => (Kind::Service, ObjectKey::of(&o.metadata)),
            Object::EndpointSlice(o) => (Kind::EndpointSlice, ObjectKey::of(&o.metadata)),
            Object::Pod(o) => (Kind::Pod, ObjectKey::of(&o.metadata)),
            Object::TrafficPolicy(o) => (Kind::TrafficPolicy, ObjectKey::of(&o.metadata)),
            Object::MeshIdentity(o) => (
                Kind::MeshIdentity,
                ObjectKey::new("", o.metadata.name.clone().unwrap_or_default()),
            ),
        }
    }
}

/// A change to the mesh's inputs.
#[derive(Debug, Clone)]
pub enum Event {
    /// The object was created or updated (boxed: objects are large, deletes are small).
    Apply(Box<Object>),
    /// The object is gone.
    Delete(Kind, ObjectKey),
}

impl Event {
    /// An apply event.
    pub fn apply(object: Object) -> Event {
        Event::Apply(Box::new(object))
    }
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// Port name (may be empty for a single-port Service).
    pub name: String,
    /// The Service port clients use.
    pub port: u16,
    /// The pod port, by number or by name.
    pub target_port: Option<IntOrString>,
}

/// What translation needs of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceModel {
    /// ClusterIP, when allocated (not for headless Services).
    pub cluster_ip: Option<String>,
    /// TCP ports.
    pub ports: Vec<ServicePort>,
}

/// One endpoint of a slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointModel {
    /// The first address of the endpoint.
    pub address: String,
    /// Ready per the slice (absent means ready).
    pub ready: bool,
    /// The Pod behind the endpoint, when the slice says.
    pub pod: Option<ObjectKey>,
}

/// What translation needs of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceModel {
    /// The Service the slice belongs to (label `kubernetes.io/service-name`).
    pub service: ObjectKey,
    /// Port name to port number.
    pub ports: Vec<(String, u16)>,
    /// Endpoints.
    pub endpoints: Vec<EndpointModel>,
}

/// A TrafficPolicy as the index keeps it: the latest spec's verdict and the last valid spec.
#[derive(Debug, Clone)]
pub struct PolicyEntry {
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `metadata.creationTimestamp`, for precedence between conflicting policies.
    pub created: Option<Time>,
    /// The verdict on the latest spec.
    pub verdict: Result<Arc<ValidPolicy>, Rejection>,
    /// The last spec that passed validation: what is served while the latest is invalid.
    pub last_valid: Option<Arc<ValidPolicy>>,
    /// Services the latest and the served spec target (index links, for O(1) removal).
    targets: BTreeSet<ObjectKey>,
    /// Other Services they route to.
    backends: BTreeSet<ObjectKey>,
}

impl PolicyEntry {
    /// The spec translation uses, if any.
    pub fn effective(&self) -> Option<&Arc<ValidPolicy>> {
        self.verdict.as_ref().ok().or(self.last_valid.as_ref())
    }
}

/// What changed since the translator last looked.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dirty {
    /// Services whose clusters, endpoints and routes must be redone.
    pub services: BTreeSet<ObjectKey>,
    /// Services whose endpoints only must be redone.
    pub endpoints: BTreeSet<ObjectKey>,
}

impl Dirty {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.endpoints.is_empty()
    }
}

/// The mesh model.
#[derive(Debug, Default)]
pub struct Index {
    services: BTreeMap<ObjectKey, ServiceModel>,
    slices: HashMap<ObjectKey, SliceModel>,
    slices_by_service: HashMap<ObjectKey, BTreeSet<ObjectKey>>,
    pods: HashMap<ObjectKey, Arc<BTreeMap<String, String>>>,
    /// Every distinct label set of `pods`, shared: the pods of one workload carry the same
    /// labels, and at 50,000 pods one map each was a quarter of the operator's memory.
    label_sets: std::collections::HashSet<Arc<BTreeMap<String, String>>, ahash::RandomState>,
    /// A pod backs one Service or a few: a Vec, not a set (a set's node costs ~0.5 KB).
    services_by_pod: HashMap<ObjectKey, Vec<ObjectKey>>,
    policies: BTreeMap<ObjectKey, PolicyEntry>,
    policies_by_target: HashMap<ObjectKey, BTreeSet<ObjectKey>>,
    policies_by_backend: HashMap<ObjectKey, BTreeSet<ObjectKey>>,
    identities: BTreeMap<String, MeshIdentity>,
    dirty: Dirty,
}

const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

impl Index {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one event and records what it dirtied.
    pub fn apply(&mut self, event: Event) {
        let event = match event {
            Event::Apply(object) => Ok(*object),
            Event::Delete(kind, key) => Err((kind, key)),
        };
        match event {
            Ok(Object::Service(svc)) => self.apply_service(svc),
            Ok(Object::EndpointSlice(slice)) => self.apply_slice(slice),
            Ok(Object::Pod(pod)) => self.apply_pod(pod),
            Ok(Object::TrafficPolicy(tp)) => self.apply_policy(tp),
            Ok(Object::MeshIdentity(mi)) => {
                self.identities
                    .insert(mi.metadata.name.clone().unwrap_or_default(), mi);
            }
            Err((Kind::Service, key)) => {
                if self.services.remove(&key).is_some() {
                    self.dirty_service(&key);
                }
            }
            Err((Kind::EndpointSlice, key)) => self.remove_slice(&key),
            Err((Kind::Pod, key)) => {
                if let Some(old) = self.pods.remove(&key) {
                    self.release_labels(old);
                    self.dirty_pod_services(&key);
                }
            }
            Err((Kind::TrafficPolicy, key)) => self.remove_policy(&key),
            Err((Kind::MeshIdentity, key)) => {
                self.identities.remove(&key.name);
            }
        }
    }

    /// Takes the dirty set, leaving it empty.
    pub fn take_dirty(&mut self) -> Dirty {
        std::mem::take(&mut self.dirty)
    }

    /// Marks every Service dirty (for a full retranslation).
    pub fn mark_all_dirty(&mut self) {
        self.dirty.services = self.services.keys().cloned().collect();
    }

    fn dirty_service(&mut self, key: &ObjectKey) {
        self.dirty.services.insert(key.clone());
        // Policies elsewhere that route to this Service see it appear or vanish.
        let referrers = self.policies_by_backend.get(key).into_iter().flatten();
        let targets = referrers
            .filter_map(|p| self.policies.get(p))
            .flat_map(|e| e.targets.iter().cloned());
        self.dirty.services.extend(targets.collect::<Vec<_>>());
    }

    fn dirty_pod_services(&mut self, pod: &ObjectKey) {
        if let Some(services) = self.services_by_pod.get(pod) {
            self.dirty.endpoints.extend(services.iter().cloned());
        }
    }

    fn apply_service(&mut self, svc: Service) {
        let key = ObjectKey::of(&svc.metadata);
        let spec = svc.spec.unwrap_or_default();
        let cluster_ip = spec.cluster_ip.filter(|ip| !ip.is_empty() && ip != "None");
        let ports = spec
            .ports
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|p| {
                Some(ServicePort {
                    name: p.name.unwrap_or_default(),
                    port: u16::try_from(p.port).ok()?,
                    target_port: p.target_port,
                })
            })
            .collect();
        let model = ServiceModel { cluster_ip, ports };
        if self.services.get(&key) != Some(&model) {
            self.services.insert(key.clone(), model);
            self.dirty_service(&key);
        }
    }

    fn apply_slice(&mut self, slice: EndpointSlice) {
        let key = ObjectKey::of(&slice.metadata);
        let labels = slice.metadata.labels.as_ref();
        let Some(service_name) = labels.and_then(|l| l.get(SERVICE_NAME_LABEL)) else {
            // A slice without the label belongs to no Service: nothing routes to it.
            self.remove_slice(&key);
            return;
        };
        let service = ObjectKey::new(key.namespace.clone(), service_name.clone());
        let ports = slice
            .ports
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|p| Some((p.name.unwrap_or_default(), u16::try_from(p.port?).ok()?)))
            .collect();
        let endpoints = slice
            .endpoints
            .into_iter()
            .filter_map(|ep| {
                let address = ep.addresses.into_iter().next()?;
                let ready = ep.conditions.and_then(|c| c.ready).unwrap_or(true);
                let pod = ep
                    .target_ref
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| {
                        Some(ObjectKey::new(
                            r.namespace.unwrap_or_else(|| key.namespace.clone()),
                            r.name?,
                        ))
                    });
                Some(EndpointModel {
                    address,
                    ready,
                    pod,
                })
            })
            .collect();
        let model = SliceModel {
            service: service.clone(),
            ports,
            endpoints,
        };
        if self.slices.get(&key) == Some(&model) {
            return;
        }
        self.remove_slice(&key);
        for pod in model.endpoints.iter().filter_map(|e| e.pod.clone()) {
            let services = self.services_by_pod.entry(pod).or_default();
            if !services.contains(&service) {
                services.push(service.clone());
            }
        }
        self.slices_by_service
            .entry(service.clone())
            .or_default()
            .insert(key.clone());
        self.slices.insert(key, model);
        self.dirty.endpoints.insert(service);
    }

    fn remove_slice(&mut self, key: &ObjectKey) {
        let Some(old) = self.slices.remove(key) else {
            return;
        };
        if let Some(set) = self.slices_by_service.get_mut(&old.service) {
            set.remove(key);
            if set.is_empty() {
                self.slices_by_service.remove(&old.service);
            }
        }
        // Forget pod -> service links no remaining slice of the service backs (one pass
        // over the remaining slices, not one per pod: Services can have thousands).
        let remaining: std::collections::HashSet<&ObjectKey> = self
            .slices_for(&old.service)
            .flat_map(|s| s.endpoints.iter().filter_map(|e| e.pod.as_ref()))
            .collect();
        let unlinked: Vec<&ObjectKey> = old
            .endpoints
            .iter()
            .filter_map(|e| e.pod.as_ref())
            .filter(|pod| !remaining.contains(pod))
            .collect();
        for pod in unlinked {
            if let Some(set) = self.services_by_pod.get_mut(pod) {
                set.retain(|s| *s != old.service);
                if set.is_empty() {
                    self.services_by_pod.remove(pod);
                }
            }
        }
        self.dirty.endpoints.insert(old.service);
    }

    fn apply_pod(&mut self, pod: Pod) {
        let key = ObjectKey::of(&pod.metadata);
        let labels = pod.metadata.labels.unwrap_or_default();
        if self.pods.get(&key).map(|l| l.as_ref()) == Some(&labels) {
            return;
        }
        let labels = match self.label_sets.get(&labels) {
            Some(shared) => shared.clone(),
            None => {
                let labels = Arc::new(labels);
                self.label_sets.insert(labels.clone());
                labels
            }
        };
        if let Some(old) = self.pods.insert(key.clone(), labels) {
            self.release_labels(old);
        }
        self.dirty_pod_services(&key);
    }

    /// Drops a label set from the shared ones when no pod has it any more.
    fn release_labels(&mut self, labels: Arc<BTreeMap<String, String>>) {
        // One reference here, one in `label_sets`: the last pod with them is gone.
        if Arc::strong_count(&labels) == 2 {
            self.label_sets.remove(&labels);
        }
    }

    fn apply_policy(&mut self, tp: TrafficPolicy) {
        let key = ObjectKey::of(&tp.metadata);
        // The API server bumps the generation on every spec change and never on status
        // writes, so the operator's own status updates coming back cost nothing.
        if let Some(old) = self.policies.get(&key) {
            if old.generation.is_some()
                && old.generation == tp.metadata.generation
                && old.created == tp.metadata.creation_timestamp
            {
                return;
            }
        }
        let verdict = policy::validate(&tp.spec).map(Arc::new);
        let last_valid = match &verdict {
            Ok(valid) => Some(valid.clone()),
            Err(_) => self.policies.get(&key).and_then(|p| p.effective().cloned()),
        };
        // Link the latest spec (for its status) and the served one (for translation).
        let specs = std::iter::once(&tp.spec).chain(last_valid.as_ref().map(|v| &v.spec));
        let mut targets = BTreeSet::new();
        let mut backends = BTreeSet::new();
        for spec in specs {
            targets.insert(ObjectKey::new(
                key.namespace.clone(),
                spec.target_ref.service.clone(),
            ));
            backends.extend(backend_services(&key.namespace, spec));
        }
        self.remove_policy(&key);
        for target in &targets {
            self.policies_by_target
                .entry(target.clone())
                .or_default()
                .insert(key.clone());
            self.dirty.services.insert(target.clone());
        }
        for backend in &backends {
            self.policies_by_backend
                .entry(backend.clone())
                .or_default()
                .insert(key.clone());
        }
        let entry = PolicyEntry {
            generation: tp.metadata.generation,
            created: tp.metadata.creation_timestamp.clone(),
            verdict,
            last_valid,
            targets,
            backends,
        };
        self.policies.insert(key, entry);
    }

    fn remove_policy(&mut self, key: &ObjectKey) {
        let Some(old) = self.policies.remove(key) else {
            return;
        };
        for target in &old.targets {
            self.dirty.services.insert(target.clone());
            unlink(&mut self.policies_by_target, target, key);
        }
        for backend in &old.backends {
            unlink(&mut self.policies_by_backend, backend, key);
        }
    }

    /// All Services, in key order.
    pub fn services(&self) -> impl Iterator<Item = (&ObjectKey, &ServiceModel)> {
        self.services.iter()
    }

    /// One Service.
    pub fn service(&self, key: &ObjectKey) -> Option<&ServiceModel> {
        self.services.get(key)
    }

    /// The slices of a Service, in key order.
    pub fn slices_for<'a>(
        &'a self,
        service: &ObjectKey,
    ) -> impl Iterator<Item = &'a SliceModel> + 'a {
        self.slices_by_service
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(move |k| self.slices.get(k))
    }

    /// A Pod's labels.
    pub fn pod_labels(&self, key: &ObjectKey) -> Option<&BTreeMap<String, String>> {
        self.pods.get(key).map(|l| l.as_ref())
    }

    /// Every policy, in key order.
    pub fn policies(&self) -> impl Iterator<Item = (&ObjectKey, &PolicyEntry)> {
        self.policies.iter()
    }

    /// Policies whose served spec targets the Service, highest precedence first:
    /// oldest creation time, then name.
    pub fn policies_for(&self, service: &ObjectKey) -> Vec<(&ObjectKey, &PolicyEntry)> {
        let mut out: Vec<_> = self
            .policies_by_target
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(|k| self.policies.get_key_value(k))
            .filter(|(_, p)| {
                p.effective()
                    .is_some_and(|v| v.spec.target_ref.service == service.name)
            })
            .collect();
        out.sort_by(|a, b| precedence(a.1, a.0).cmp(&precedence(b.1, b.0)));
        out
    }

    /// The MeshIdentity objects.
    pub fn identities(&self) -> impl Iterator<Item = &MeshIdentity> {
        self.identities.values()
    }

    /// Keys of every object of `kind` the index holds (a relisting source deletes the
    /// ones the new list lacks).
    pub fn keys(&self, kind: Kind) -> Vec<ObjectKey> {
        match kind {
            Kind::Service => self.services.keys().cloned().collect(),
            Kind::EndpointSlice => self.slices.keys().cloned().collect(),
            Kind::Pod => self.pods.keys().cloned().collect(),
            Kind::TrafficPolicy => self.policies.keys().cloned().collect(),
            Kind::MeshIdentity => self
                .identities
                .keys()
                .map(|name| ObjectKey::new("", name.clone()))
                .collect(),
        }
    }

    /// Counts for memory accounting and status.
    pub fn counts(&self) -> IndexCounts {
        IndexCounts {
            services: self.services.len(),
            endpoint_slices: self.slices.len(),
            endpoints: self.slices.values().map(|s| s.endpoints.len()).sum(),
            pods: self.pods.len(),
            policies: self.policies.len(),
        }
    }
}

/// How many objects the index holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct IndexCounts {
    /// Services.
    pub services: usize,
    /// EndpointSlices.
    pub endpoint_slices: usize,
    /// Endpoints across slices.
    pub endpoints: usize,
    /// Pods.
    pub pods: usize,
    /// TrafficPolicies.
    pub policies: usize,
}

fn precedence<'a>(p: &'a PolicyEntry, key: &'a ObjectKey) -> (Option<&'a Time>, &'a str) {
    // None (no timestamp, as in local mode) sorts first, so local mode falls back to names.
    (p.created.as_ref(), key.name.as_str())
}

fn unlink(map: &mut HashMap<ObjectKey, BTreeSet<ObjectKey>>, at: &ObjectKey, key: &ObjectKey) {
    if let Some(set) = map.get_mut(at) {
        set.remove(key);
        if set.is_empty() {
            map.remove(at);
        }
    }
}

/// Other Services a policy routes to.
fn backend_services(namespace: &str, spec: &weir_api::TrafficPolicySpec) -> BTreeSet<ObjectKey> {
    spec.http
        .iter()
        .flat_map(|r| &r.destinations)
        .filter_map(|d| {
            let name = d.service.as_ref()?;
            Some(ObjectKey::new(
                d.namespace.clone().unwrap_or_else(|| namespace.to_string()),
                name.clone(),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{mk_pod, mk_slice};

    #[test]
    fn pods_with_the_same_labels_share_one_map_and_the_last_one_frees_it() {
        let mut index = Index::new();
        let v1 = [("app", "reviews"), ("version", "v1")];
        for name in ["a", "b", "c"] {
            index.apply(Event::apply(Object::Pod(mk_pod("default", name, &v1))));
        }
        assert_eq!(index.label_sets.len(), 1);
        let a = index.pods.get(&ObjectKey::new("default", "a")).unwrap();
        let c = index.pods.get(&ObjectKey::new("default", "c")).unwrap();
        assert!(Arc::ptr_eq(a, c));

        // Relabel one: a second set; delete the rest: only the relabelled one's set stays.
        let v2 = [("app", "reviews"), ("version", "v2")];
        index.apply(Event::apply(Object::Pod(mk_pod("default", "a", &v2))));
        assert_eq!(index.label_sets.len(), 2);
        for name in ["b", "c"] {
            index.apply(Event::Delete(Kind::Pod, ObjectKey::new("default", name)));
        }
        assert_eq!(index.label_sets.len(), 1);
        assert_eq!(
            index.pod_labels(&ObjectKey::new("default", "a")).unwrap()["version"],
            "v2"
        );
    }

    #[test]
    fn a_pod_in_two_slices_of_one_service_is_linked_once_and_unlinked_with_the_last() {
        let mut index = Index::new();
        for slice in ["s1", "s2"] {
            index.apply(Event::apply(Object::EndpointSlice(mk_slice(
                "default",
                slice,
                "reviews",
                "http",
                9080,
                &[("10.0.0.1", "p")],
            ))));
        }
        let pod = ObjectKey::new("default", "p");
        assert_eq!(
            index.services_by_pod[&pod],
            [ObjectKey::new("default", "reviews")]
        );
        index.apply(Event::Delete(
            Kind::EndpointSlice,
            ObjectKey::new("default", "s1"),
        ));
        assert_eq!(index.services_by_pod[&pod].len(), 1);
        index.apply(Event::Delete(
            Kind::EndpointSlice,
            ObjectKey::new("default", "s2"),
        ));
        assert!(!index.services_by_pod.contains_key(&pod));
    }
}
