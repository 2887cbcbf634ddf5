//! The in-memory model of the mesh, fed by apply/delete events from a source (the Kubernetes
//! watchers or the local directory). Pure: no I/O.
//!
//! ```text
//! Event::Apply(Object) / Event::Delete(Kind, key)
//!   --> the kind's module (service, endpoint_slice, pod, traffic_policy, mesh_identity):
//!       trim to what translation needs, link, mark dirty
//!   --> Dirty { services, endpoints } --> the translator takes it
//! ```
//!
//! Objects are trimmed on the way in (a Pod keeps its labels only). Every event marks what it
//! touches as dirty, at the finest grain that matters: an EndpointSlice or Pod change dirties
//! the endpoints of one Service, a Service or policy change dirties that Service whole. The
//! translator takes the dirty set and redoes only that. Each kind keeps its apply, delete
//! and keys in its own module; [`kind`] describes the kinds for the sources.

mod endpoint_slice;
pub mod gateway_route;
pub mod kind;
mod mesh_identity;
mod namespace;
mod pod;
mod service;
mod traffic_policy;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use weir_api::gateway_api::{GRPCRoute, HTTPRoute};
use weir_api::{MeshIdentity, TrafficPolicy};

use crate::hash_map::HashMap;

pub use endpoint_slice::{EndpointModel, SliceModel};
pub use kind::{decode_document, Kind, Object, Scope, WatchMode};
pub use mesh_identity::{IdentityConfig, MESH_IDENTITY_NAME};
pub use namespace::{NamespaceModel, INJECT_LABEL};
pub use pod::{PodModel, Workload, INJECTED_ANNOTATION, MTLS_MODE_KEY};
pub use service::{Addressing, ServiceModel, ServicePort};
pub use traffic_policy::PolicyEntry;

pub use crate::object_key::ObjectKey;

/// Which pods' placement (mTLS mode, zone, the Services they back) may have changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlacementChanges {
    /// Every pod's (a namespace or the mesh defaults changed).
    pub all: bool,
    /// These pods'.
    pub pods: BTreeSet<ObjectKey>,
}

impl PlacementChanges {
    /// Whether the pod's placement may have changed.
    pub fn affects(&self, pod: &ObjectKey) -> bool {
        self.all || self.pods.contains(pod)
    }

    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        !self.all && self.pods.is_empty()
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

/// One kind's part of the index: how its objects are trimmed in, removed, and listed.
trait IndexKind: Sized {
    /// Applies one object.
    fn apply(index: &mut Index, object: Self);
    /// Removes one object.
    fn delete(index: &mut Index, key: &ObjectKey);
    /// Keys of every object of the kind held.
    fn keys(index: &Index) -> Vec<ObjectKey>;
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
    pods: HashMap<ObjectKey, PodModel>,
    /// Every distinct label set of `pods`, shared: the pods of one workload carry the same
    /// labels, and at 50,000 pods one map each was a quarter of the operator's memory.
    label_sets: std::collections::HashSet<Arc<BTreeMap<String, String>>, ahash::RandomState>,
    /// Names shared between pods (service accounts).
    names: std::collections::HashSet<Arc<str>, ahash::RandomState>,
    /// A pod backs one Service or a few: a Vec, not a set (a set's node costs ~0.5 KB).
    services_by_pod: HashMap<ObjectKey, Vec<ObjectKey>>,
    policies: BTreeMap<ObjectKey, PolicyEntry>,
    policies_by_target: HashMap<ObjectKey, BTreeSet<ObjectKey>>,
    policies_by_backend: HashMap<ObjectKey, BTreeSet<ObjectKey>>,
    routes: BTreeMap<gateway_route::RouteId, gateway_route::RouteEntry>,
    routes_by_target: HashMap<ObjectKey, BTreeSet<gateway_route::RouteId>>,
    routes_by_backend: HashMap<ObjectKey, BTreeSet<gateway_route::RouteId>>,
    identities: BTreeMap<String, MeshIdentity>,
    identity: IdentityConfig,
    namespaces: BTreeMap<String, NamespaceModel>,
    /// Pods whose placement may have changed since the last take: their mTLS mode
    /// (annotations, namespace labels, the mesh default), their zone, or the Services they
    /// back.
    placement_changes: PlacementChanges,
    dirty: Dirty,
}

impl Index {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one event and records what it dirtied.
    pub fn apply(&mut self, event: Event) {
        match event {
            Event::Apply(object) => match *object {
                Object::Service(o) => IndexKind::apply(self, o),
                Object::EndpointSlice(o) => IndexKind::apply(self, o),
                Object::Pod(o) => IndexKind::apply(self, o),
                Object::TrafficPolicy(o) => IndexKind::apply(self, o),
                Object::MeshIdentity(o) => IndexKind::apply(self, o),
                Object::Namespace(o) => IndexKind::apply(self, o),
                Object::HttpRoute(o) => IndexKind::apply(self, o),
                Object::GrpcRoute(o) => IndexKind::apply(self, o),
            },
            Event::Delete(kind, key) => match kind {
                Kind::Service => <Service as IndexKind>::delete(self, &key),
                Kind::EndpointSlice => <EndpointSlice as IndexKind>::delete(self, &key),
                Kind::Pod => <Pod as IndexKind>::delete(self, &key),
                Kind::TrafficPolicy => <TrafficPolicy as IndexKind>::delete(self, &key),
                Kind::MeshIdentity => <MeshIdentity as IndexKind>::delete(self, &key),
                Kind::Namespace => <Namespace as IndexKind>::delete(self, &key),
                Kind::HttpRoute => <HTTPRoute as IndexKind>::delete(self, &key),
                Kind::GrpcRoute => <GRPCRoute as IndexKind>::delete(self, &key),
            },
        }
    }

    /// Keys of every object of `kind` the index holds (a relisting source deletes the
    /// ones the new list lacks).
    pub fn keys(&self, kind: Kind) -> Vec<ObjectKey> {
        match kind {
            Kind::Service => <Service as IndexKind>::keys(self),
            Kind::EndpointSlice => <EndpointSlice as IndexKind>::keys(self),
            Kind::Pod => <Pod as IndexKind>::keys(self),
            Kind::TrafficPolicy => <TrafficPolicy as IndexKind>::keys(self),
            Kind::MeshIdentity => <MeshIdentity as IndexKind>::keys(self),
            Kind::Namespace => <Namespace as IndexKind>::keys(self),
            Kind::HttpRoute => <HTTPRoute as IndexKind>::keys(self),
            Kind::GrpcRoute => <GRPCRoute as IndexKind>::keys(self),
        }
    }

    /// Takes the dirty set, leaving it empty.
    pub fn take_dirty(&mut self) -> Dirty {
        std::mem::take(&mut self.dirty)
    }

    /// Marks every Service dirty (for a full retranslation).
    pub fn mark_all_dirty(&mut self) {
        self.dirty.services = self.services.keys().cloned().collect();
        // A policy's target that does not exist still has a binding (TargetNotFound).
        self.dirty
            .services
            .extend(self.policies_by_target.keys().cloned());
        self.dirty
            .services
            .extend(self.routes_by_target.keys().cloned());
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

/// Removes `key` from the set at `at`, and the set when it empties.
fn unlink(map: &mut HashMap<ObjectKey, BTreeSet<ObjectKey>>, at: &ObjectKey, key: &ObjectKey) {
    if let Some(set) = map.get_mut(at) {
        set.remove(key);
        if set.is_empty() {
            map.remove(at);
        }
    }
}
