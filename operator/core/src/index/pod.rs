//! Pods: their labels (which decide subset membership), their service account (their
//! identity), whether they carry a sidecar, and their mTLS override. A change dirties the
//! endpoints of the Services the pod backs.

use k8s_openapi::api::core::v1::Pod;
use std::collections::BTreeMap;
use std::sync::Arc;
use weir_api::MtlsMode;

use super::{Index, IndexKind, Kind, ObjectKey};

pub use crate::mesh::{INJECTED_ANNOTATION, MTLS_MODE_KEY};

/// What the index keeps of a Pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodModel {
    /// Labels, shared between the pods of one workload.
    pub labels: Arc<BTreeMap<String, String>>,
    /// `spec.serviceAccountName` (`default` when unset), shared between pods.
    pub service_account: Arc<str>,
    /// The workload it belongs to as users name it (see [`crate::owner`]), shared.
    pub workload: Arc<str>,
    /// The pod carries a Weir sidecar: peers talk mTLS to it.
    pub meshed: bool,
    /// Its `weir.dev/mtls-mode` annotation, when valid.
    pub mtls_mode: Option<MtlsMode>,
    /// Its `weir.dev/default-authorization` annotation, when valid.
    pub default_authorization: Option<weir_api::DefaultAuthorization>,
    /// The Services its `weir.dev/dependencies` annotation names.
    pub dependencies: Arc<[ObjectKey]>,
}

/// `name` (in `namespace`) or `name.namespace`, comma-separated; malformed entries are
/// skipped (the hint only pre-warms).
fn dependencies(namespace: &str, annotation: &str) -> Arc<[ObjectKey]> {
    let mut out: Vec<ObjectKey> = annotation
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .filter_map(|d| match d.split_once('.') {
            None => Some(ObjectKey::new(namespace, d)),
            Some((name, ns)) if !ns.contains('.') && !name.is_empty() => {
                Some(ObjectKey::new(ns, name))
            }
            _ => None,
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out.into()
}

impl IndexKind for Pod {
    fn apply(index: &mut Index, pod: Pod) {
        let key = Kind::Pod.key(&pod.metadata);
        let workload = crate::owner::workload_name(&pod.metadata);
        let annotations = pod.metadata.annotations.unwrap_or_default();
        let labels = index.shared_labels(pod.metadata.labels.unwrap_or_default());
        let service_account = pod
            .spec
            .and_then(|s| s.service_account_name)
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into());
        let model = PodModel {
            labels,
            service_account: index.shared_name(&service_account),
            workload: index.shared_name(&workload),
            meshed: annotations.contains_key(INJECTED_ANNOTATION),
            mtls_mode: annotations
                .get(MTLS_MODE_KEY)
                .and_then(|m| MtlsMode::parse(m)),
            default_authorization: annotations
                .get(crate::mesh::DEFAULT_AUTHORIZATION_KEY)
                .and_then(|d| weir_api::DefaultAuthorization::parse(d)),
            dependencies: annotations
                .get(crate::mesh::DEPENDENCIES_KEY)
                .map(|d| dependencies(&key.namespace, d))
                .unwrap_or_default(),
        };
        if index.pods.get(&key) == Some(&model) {
            index.release_labels(model.labels);
            return;
        }
        let mode_changed = index
            .pods
            .get(&key)
            .map(|p| (p.mtls_mode, p.default_authorization, p.dependencies.clone()))
            != Some((
                model.mtls_mode,
                model.default_authorization,
                model.dependencies.clone(),
            ));
        if let Some(old) = index.pods.insert(key.clone(), model) {
            index.release_labels(old.labels);
        }
        if mode_changed {
            index.placement_changes.pods.insert(key.clone());
        }
        index.dirty_pod_services(&key);
    }

    fn delete(index: &mut Index, key: &ObjectKey) {
        if let Some(old) = index.pods.remove(key) {
            index.release_labels(old.labels);
            index.dirty_pod_services(key);
        }
    }

    fn keys(index: &Index) -> Vec<ObjectKey> {
        index.pods.keys().cloned().collect()
    }
}

impl Index {
    /// A Pod's labels.
    pub fn pod_labels(&self, key: &ObjectKey) -> Option<&BTreeMap<String, String>> {
        self.pods.get(key).map(|p| p.labels.as_ref())
    }

    /// A Pod.
    pub fn pod(&self, key: &ObjectKey) -> Option<&PodModel> {
        self.pods.get(key)
    }

    /// What a pod's inbound listener depends on beyond its profile: the Services whose
    /// endpoints include it, and what its sidecar enforces inbound.
    pub fn workload(&self, key: &ObjectKey) -> Workload {
        let mut workload =
            Workload::new(self.services_by_pod.get(key).cloned().unwrap_or_default());
        workload.authorization =
            crate::authorization::inbound(self, key, &workload.services).map(Arc::new);
        workload.served = self.served_ports(key, &workload.services).into();
        workload.namespace = key.namespace.as_str().into();
        if let Some(pod) = self.pods.get(key) {
            workload.dependencies = pod.dependencies.clone();
        }
        workload
    }

    /// The pod ports Services reach on `pod`, each with the first Service (by
    /// namespace/name) that reaches it: what the pod's sidecar names as the destination
    /// Service of what arrives there.
    fn served_ports(&self, pod: &ObjectKey, services: &[ObjectKey]) -> Vec<(u16, ObjectKey)> {
        let mut served: Vec<(u16, ObjectKey)> = services
            .iter()
            .filter_map(|service| Some((service, self.service(service)?)))
            .flat_map(|(service, model)| {
                model.ports.iter().filter_map(move |sp| {
                    let port = crate::authorization::target_port(self, service, sp, pod)?;
                    Some((port, service.clone()))
                })
            })
            .collect();
        served.sort_unstable();
        served.dedup_by_key(|(port, _)| *port);
        served
    }

    fn dirty_pod_services(&mut self, pod: &ObjectKey) {
        if let Some(services) = self.services_by_pod.get(pod) {
            self.dirty.endpoints.extend(services.iter().cloned());
        }
    }

    /// The shared copy of a label set (a new one when no pod has it yet).
    fn shared_labels(&mut self, labels: BTreeMap<String, String>) -> Arc<BTreeMap<String, String>> {
        match self.label_sets.get(&labels) {
            Some(shared) => shared.clone(),
            None => {
                let labels = Arc::new(labels);
                self.label_sets.insert(labels.clone());
                labels
            }
        }
    }

    /// The shared copy of a name (service accounts repeat across pods).
    fn shared_name(&mut self, name: &str) -> Arc<str> {
        match self.names.get(name) {
            Some(shared) => shared.clone(),
            None => {
                let name: Arc<str> = name.into();
                self.names.insert(name.clone());
                name
            }
        }
    }

    /// Drops a label set from the shared ones when no pod has it any more.
    fn release_labels(&mut self, labels: Arc<BTreeMap<String, String>>) {
        // One reference here, one in `label_sets`: the last pod with them is gone.
        if Arc::strong_count(&labels) == 2 {
            self.label_sets.remove(&labels);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Event;
    use crate::testing::mk_pod;
    use crate::Object;

    #[test]
    fn pods_with_the_same_labels_share_one_map_and_the_last_one_frees_it() {
        let mut index = Index::new();
        let v1 = [("app", "reviews"), ("version", "v1")];
        for name in ["a", "b", "c"] {
            index.apply(Event::apply(Object::Pod(mk_pod("default", name, &v1))));
        }
        assert_eq!(index.label_sets.len(), 1);
        let a = &index
            .pods
            .get(&ObjectKey::new("default", "a"))
            .unwrap()
            .labels;
        let c = &index
            .pods
            .get(&ObjectKey::new("default", "c"))
            .unwrap()
            .labels;
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
    fn a_pod_keeps_its_identity_sidecar_and_mtls_override() {
        let mut index = Index::new();
        let mut pod = mk_pod("shop", "cart-1", &[("app", "cart")]);
        pod.spec = Some(k8s_openapi::api::core::v1::PodSpec {
            service_account_name: Some("cart".into()),
            ..Default::default()
        });
        pod.metadata.annotations = Some(BTreeMap::from([
            (INJECTED_ANNOTATION.to_string(), "0.1.0".to_string()),
            (MTLS_MODE_KEY.to_string(), "permissive".to_string()),
        ]));
        index.apply(Event::apply(Object::Pod(pod)));
        let model = index.pod(&ObjectKey::new("shop", "cart-1")).unwrap();
        assert_eq!(model.service_account.as_ref(), "cart");
        assert!(model.meshed);
        assert_eq!(model.mtls_mode, Some(MtlsMode::Permissive));
        let plain = mk_pod("shop", "legacy", &[]);
        index.apply(Event::apply(Object::Pod(plain)));
        let model = index.pod(&ObjectKey::new("shop", "legacy")).unwrap();
        assert_eq!(
            (model.service_account.as_ref(), model.meshed),
            ("default", false)
        );
    }
}

/// What a pod's inbound listener depends on beyond its profile: the Services it backs and
/// what its sidecar enforces inbound.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Workload {
    /// The Services whose endpoints include the pod, sorted, distinct.
    pub services: Arc<[ObjectKey]>,
    /// Authorization, when anything is restricted.
    pub authorization: Option<Arc<crate::authorization::InboundAuthorization>>,
    /// The pod ports Services reach, with the Service each is labelled with (telemetry).
    pub served: Arc<[(u16, ObjectKey)]>,
    /// Whether the proxy reports denials to the operator (its bootstrap has the cluster;
    /// set per stream from the proxy's node metadata, not by the index).
    pub reports: bool,
    /// The pod's namespace: the routes of its namespace (consumer routes) apply to its
    /// outbound requests.
    pub namespace: Arc<str>,
    /// The Services its `weir.dev/dependencies` annotation names (a scoped proxy holds
    /// them from the start).
    pub dependencies: Arc<[ObjectKey]>,
}

impl Workload {
    /// A workload backing `services` (any order, repeats allowed).
    pub fn new(mut services: Vec<ObjectKey>) -> Workload {
        services.sort_unstable();
        services.dedup();
        Workload {
            services: services.into(),
            authorization: None,
            served: Arc::new([]),
            reports: false,
            namespace: Arc::from(""),
            dependencies: Arc::new([]),
        }
    }

    /// Whether it backs no Service and restricts nothing: its listener is the profile's
    /// own.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.authorization.is_none()
    }
}
