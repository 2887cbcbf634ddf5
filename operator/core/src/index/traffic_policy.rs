//! TrafficPolicies: parsed once into a [`RouteSet`] (or rejected), with the last valid
//! version kept for serving, and linked to the Services they target and route to so that a
//! change on either side dirties the right Services.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::collections::BTreeSet;
use std::sync::Arc;
use weir_api::TrafficPolicy;

use super::{unlink, Index, IndexKind, Kind, ObjectKey};
use crate::routing::RouteSet;
use crate::sources::{traffic_policy, Rejection};

/// A TrafficPolicy as the index keeps it: the latest spec's verdict and the last valid one.
#[derive(Debug, Clone)]
pub struct PolicyEntry {
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `metadata.creationTimestamp`, for precedence between conflicting policies.
    pub created: Option<Time>,
    /// The verdict on the latest spec.
    pub verdict: Result<Arc<RouteSet>, Rejection>,
    /// The last spec that passed validation: what is served while the latest is invalid.
    pub last_valid: Option<Arc<RouteSet>>,
    /// Services the latest and the served spec target (index links, for O(1) removal).
    pub(super) targets: BTreeSet<ObjectKey>,
    /// Other Services the served spec routes to.
    backends: BTreeSet<ObjectKey>,
}

impl PolicyEntry {
    /// The policy translation uses, if any.
    pub fn effective(&self) -> Option<&Arc<RouteSet>> {
        self.verdict.as_ref().ok().or(self.last_valid.as_ref())
    }
}

impl IndexKind for TrafficPolicy {
    fn apply(index: &mut Index, tp: TrafficPolicy) {
        let key = Kind::TrafficPolicy.key(&tp.metadata);
        // The API server bumps the generation on every spec change and never on status
        // writes, so the operator's own status updates coming back cost nothing.
        if let Some(old) = index.policies.get(&key) {
            if old.generation.is_some()
                && old.generation == tp.metadata.generation
                && old.created == tp.metadata.creation_timestamp
            {
                return;
            }
        }
        let verdict = traffic_policy::parse(&key.namespace, &tp.spec).map(Arc::new);
        let last_valid = match &verdict {
            Ok(valid) => Some(valid.clone()),
            Err(_) => index
                .policies
                .get(&key)
                .and_then(|p| p.effective().cloned()),
        };
        // Link the latest spec's target (for its status) and the served one (for
        // translation); the served one's backends, whose changes reach its routes.
        let mut targets = BTreeSet::from([ObjectKey::new(
            key.namespace.clone(),
            tp.spec.target_ref.service.clone(),
        )]);
        let mut backends = BTreeSet::new();
        if let Some(served) = &last_valid {
            targets.insert(served.target.service.clone());
            backends = served.backend_services();
        }
        // Authorization is enforced by the target's pods: their inbound listeners move.
        let authorizes = |p: Option<&Arc<RouteSet>>| p.is_some_and(|r| r.authorization.is_some());
        let before = index.policies.get(&key);
        if authorizes(before.and_then(|p| p.effective())) || authorizes(last_valid.as_ref()) {
            let mut services = targets.clone();
            services.extend(before.map(|p| p.targets.clone()).unwrap_or_default());
            index.authorization_moved(&services);
        }
        Self::delete(index, &key);
        for target in &targets {
            index
                .policies_by_target
                .entry(target.clone())
                .or_default()
                .insert(key.clone());
            index.dirty.services.insert(target.clone());
        }
        for backend in &backends {
            index
                .policies_by_backend
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
        index.policies.insert(key, entry);
    }

    fn delete(index: &mut Index, key: &ObjectKey) {
        let Some(old) = index.policies.remove(key) else {
            return;
        };
        if old.effective().is_some_and(|r| r.authorization.is_some()) {
            index.authorization_moved(&old.targets);
        }
        for target in &old.targets {
            index.dirty.services.insert(target.clone());
            unlink(&mut index.policies_by_target, target, key);
        }
        for backend in &old.backends {
            unlink(&mut index.policies_by_backend, backend, key);
        }
    }

    fn keys(index: &Index) -> Vec<ObjectKey> {
        index.policies.keys().cloned().collect()
    }
}

impl Index {
    /// The pods backing `services` enforce something else inbound now.
    pub(super) fn authorization_moved(&mut self, services: &BTreeSet<ObjectKey>) {
        let pods = crate::authorization::pods_of(self, services);
        self.placement_changes.pods.extend(pods);
    }

    /// Every policy, in key order.
    pub fn policies(&self) -> impl Iterator<Item = (&ObjectKey, &PolicyEntry)> {
        self.policies.iter()
    }

    /// Policies whose served version targets the Service, in key order (the binding
    /// orders every source's attachments by precedence: `binding::attachments`).
    pub fn policies_for(&self, service: &ObjectKey) -> Vec<(&ObjectKey, &PolicyEntry)> {
        self.policies_by_target
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(|k| self.policies.get_key_value(k))
            .filter(|(_, p)| p.effective().is_some_and(|v| v.target.service == *service))
            .collect()
    }
}
