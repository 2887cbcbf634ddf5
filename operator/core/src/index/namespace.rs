//! Namespaces: what the mesh reads of them is their labels: `weir.dev/inject=enabled` (the
//! namespace is meshed: it gets the mesh's root CA), `weir.dev/mtls-mode` and
//! `weir.dev/default-authorization`.

use k8s_openapi::api::core::v1::Namespace;
use weir_api::{DefaultAuthorization, MtlsMode};

use super::{pod::MTLS_MODE_KEY, Index, IndexKind, Kind, ObjectKey};
use crate::authorization::DefaultSource;
use crate::mesh::DEFAULT_AUTHORIZATION_KEY;

pub use crate::mesh::INJECT_KEY as INJECT_LABEL;

/// What the index keeps of a Namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceModel {
    /// Labelled `weir.dev/inject=enabled`.
    pub injected: bool,
    /// Its `weir.dev/mtls-mode` label, when valid.
    pub mtls_mode: Option<MtlsMode>,
    /// Its `weir.dev/default-authorization` label, when valid.
    pub default_authorization: Option<DefaultAuthorization>,
}

impl IndexKind for Namespace {
    fn apply(index: &mut Index, ns: Namespace) {
        let key = Kind::Namespace.key(&ns.metadata);
        let labels = ns.metadata.labels.unwrap_or_default();
        let model = NamespaceModel {
            injected: labels.get(INJECT_LABEL).map(String::as_str) == Some("enabled"),
            mtls_mode: labels.get(MTLS_MODE_KEY).and_then(|m| MtlsMode::parse(m)),
            default_authorization: labels
                .get(DEFAULT_AUTHORIZATION_KEY)
                .and_then(|d| DefaultAuthorization::parse(d)),
        };
        let old = index.namespaces.insert(key.name.clone(), model.clone());
        if old.as_ref() != Some(&model) {
            index.placement_changes.all = true;
        }
        if old.map(|o| o.mtls_mode) != Some(model.mtls_mode) {
            // DISABLE changes whether peers speak mTLS to the namespace's pods.
            index.dirty_namespace_endpoints(&key.name);
        }
    }

    fn delete(index: &mut Index, key: &ObjectKey) {
        if index.namespaces.remove(&key.name).is_some() {
            index.placement_changes.all = true;
            index.dirty_namespace_endpoints(&key.name);
        }
    }

    fn keys(index: &Index) -> Vec<ObjectKey> {
        index
            .namespaces
            .keys()
            .map(|name| ObjectKey::new("", name.clone()))
            .collect()
    }
}

impl Index {
    /// A namespace's settings, when the namespace is known.
    pub fn namespace(&self, name: &str) -> Option<&NamespaceModel> {
        self.namespaces.get(name)
    }

    /// Namespaces that are meshed: labelled for injection, or with a meshed pod.
    pub fn meshed_namespaces(&self) -> std::collections::BTreeSet<String> {
        let labelled = self
            .namespaces
            .iter()
            .filter(|(_, n)| n.injected)
            .map(|(name, _)| name.clone());
        let with_pods = self
            .pods
            .iter()
            .filter(|(_, p)| p.meshed)
            .map(|(k, _)| k.namespace.clone());
        labelled.chain(with_pods).collect()
    }

    /// The mTLS mode a pod's sidecar accepts inbound: its annotation, else its namespace's
    /// label, else the mesh's default.
    pub fn mtls_mode(&self, pod: &ObjectKey) -> MtlsMode {
        self.pods
            .get(pod)
            .and_then(|p| p.mtls_mode)
            .or_else(|| {
                self.namespaces
                    .get(&pod.namespace)
                    .and_then(|n| n.mtls_mode)
            })
            .unwrap_or_else(|| self.mesh_identity().mtls_mode)
    }

    /// What a pod allows where no policy decides, and where that was set: its annotation,
    /// else its namespace's label, else the mesh's default (the precedence of mTLS modes).
    pub fn default_authorization(&self, pod: &ObjectKey) -> (DefaultAuthorization, DefaultSource) {
        if let Some(d) = self.pods.get(pod).and_then(|p| p.default_authorization) {
            return (d, DefaultSource::Pod);
        }
        if let Some(d) = self
            .namespaces
            .get(&pod.namespace)
            .and_then(|n| n.default_authorization)
        {
            return (d, DefaultSource::Namespace);
        }
        (
            self.mesh_identity().default_authorization,
            DefaultSource::Mesh,
        )
    }

    fn dirty_namespace_endpoints(&mut self, namespace: &str) {
        let services = self
            .services
            .keys()
            .filter(|k| k.namespace == namespace)
            .cloned()
            .collect::<Vec<_>>();
        self.dirty.endpoints.extend(services);
    }

    /// The pods whose placement (mTLS mode, zone, Services backed) may have changed since
    /// the last call.
    pub fn take_placement_changes(&mut self) -> super::PlacementChanges {
        std::mem::take(&mut self.placement_changes)
    }
}
