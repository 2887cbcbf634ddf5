//! The status writer: tells users, through the API, what became of each TrafficPolicy and
//! of the mesh. Only the leader writes.
//!
//! ```text
//! state (after every batch) or a 1 s tick --> MeshState::mesh_status()
//!   per policy: desired conditions vs. what the server has (ObservedPolicies) and what we
//!     last wrote --> server-side apply of /status (field manager weir-operator)
//!     --> a Warning Event when a policy becomes rejected or unresolved
//!   MeshStatus `mesh`: written when it changed, at most once per second
//! ```
//!
//! `lastTransitionTime` moves only when a condition's status flips. Before every write the
//! writer checks that it still leads; a replica that lost the Lease stops at once.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::{Api, Client};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use weir_api::{MeshStatus, MeshStatusStatus, TrafficPolicy, TrafficPolicyStatus};
use weir_core::status::gateway_route::RouteStatus;
use weir_core::status::{ConditionType, ConditionView, PolicyStatus};
use weir_core::ObjectKey;

use super::watch::ObservedPolicies;
use crate::mesh_state::MeshState;

/// The one field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = "weir-operator";
/// A policy's denial counts are rewritten at most this often.
pub const DENIALS_PERIOD: Duration = Duration::from_secs(5);
/// The cluster-scoped MeshStatus the leader keeps current.
pub const MESH_STATUS_NAME: &str = "mesh";
/// MeshStatus is written at most this often.
pub const MESH_STATUS_PERIOD: Duration = Duration::from_secs(1);
/// MeshStatus is rewritten this often even when unchanged, which also recreates it if
/// someone deleted it.
pub const MESH_STATUS_RESYNC: Duration = Duration::from_secs(60);

/// Writes policy and mesh status while this replica leads.
pub struct StatusWriter {
    client: Client,
    state: Arc<MeshState>,
    observed: Arc<ObservedPolicies>,
    recorder: Recorder,
    /// What we last wrote per policy (the watch may not have shown it yet).
    written: HashMap<ObjectKey, TrafficPolicyStatus>,
    mesh_written: Option<MeshStatusStatus>,
    mesh_exists: bool,
    mesh_last_write: Option<Instant>,
    /// When each policy's status was last written (denial counts are throttled).
    denials_written: HashMap<ObjectKey, Instant>,
    /// Our `status.parents` entries last written per route (kind, key), without times.
    routes_written: HashMap<(&'static str, ObjectKey), serde_json::Value>,
}

impl StatusWriter {
    /// A writer reporting as `identity`.
    pub fn new(
        client: Client,
        state: Arc<MeshState>,
        observed: Arc<ObservedPolicies>,
        identity: &str,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: Some(identity.into()),
        };
        StatusWriter {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            state,
            observed,
            written: HashMap::new(),
            mesh_written: None,
            mesh_exists: false,
            mesh_last_write: None,
            denials_written: HashMap::new(),
            routes_written: HashMap::new(),
        }
    }

    /// Writes until `shutdown` resolves.
    pub async fn run(
        mut self,
        mut leading: watch::Receiver<bool>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let mut applied = self.state.applied();
        let mut shutdown = std::pin::pin!(shutdown);
        // Whether the last pass left a MeshStatus change for the throttle to let through.
        let mut held_back = false;
        loop {
            let wait = match self.mesh_last_write {
                // A change held back by the throttle is written when the throttle ends.
                Some(at) if held_back => {
                    (at + MESH_STATUS_PERIOD).saturating_duration_since(Instant::now())
                }
                _ => MESH_STATUS_PERIOD,
            };
            tokio::select! {
                _ = &mut shutdown => return,
                changed = leading.changed() => {
                    if changed.is_err() {
                        return; // the elector is gone: so is the right to write
                    }
                }
                _ = applied.changed() => {}
                _ = tokio::time::sleep(wait) => {}
            }
            if !*leading.borrow_and_update() {
                // A new term starts from what the server has, not from our memory.
                self.written.clear();
                self.routes_written.clear();
                self.mesh_written = None;
                self.mesh_exists = false;
                held_back = false;
                continue;
            }
            held_back = self.write_once(&leading).await;
        }
    }

    /// One pass: every policy whose status differs, then MeshStatus if due. Returns whether
    /// a MeshStatus change waits for the throttle.
    pub async fn write_once(&mut self, leading: &watch::Receiver<bool>) -> bool {
        let view = self.state.mesh_status();
        let live: std::collections::HashSet<ObjectKey> = view
            .policies
            .iter()
            .map(|p| ObjectKey::new(p.namespace.clone(), p.name.clone()))
            .collect();
        self.written.retain(|k, _| live.contains(k));
        self.denials_written.retain(|k, _| live.contains(k));
        // Counts of a policy that is gone or changed mode go (a switch starts them again).
        let modes = self.state.authorization_modes();
        self.state
            .denials
            .retain(|k, mode| live.contains(k) && modes.get(k) == Some(&mode));
        for policy in &view.policies {
            if !*leading.borrow() {
                return false;
            }
            self.write_policy(policy).await;
        }
        let live_routes: std::collections::HashSet<(&'static str, ObjectKey)> = view
            .routes
            .iter()
            .map(|r| (r.kind, ObjectKey::new(r.namespace.clone(), r.name.clone())))
            .collect();
        self.routes_written.retain(|k, _| live_routes.contains(k));
        for route in &view.routes {
            if !*leading.borrow() {
                return false;
            }
            self.write_route(route).await;
        }
        let since = self.mesh_last_write.map(|at| at.elapsed());
        let due = since.is_none_or(|s| s >= MESH_STATUS_PERIOD);
        let before: &[Condition] = self
            .mesh_written
            .as_ref()
            .map_or(&[], |s| s.conditions.as_slice());
        let mut status = view.status;
        status.conditions = vec![to_condition(&view.ca, None, before)];
        let changed = self.mesh_written.as_ref() != Some(&status);
        let resync = since.is_some_and(|s| s >= MESH_STATUS_RESYNC);
        if due && (changed || resync) && *leading.borrow() {
            if resync {
                self.mesh_exists = false;
            }
            self.announce_ca(&view.ca).await;
            self.write_mesh(status).await;
            return false;
        }
        changed && !due
    }

    async fn write_policy(&mut self, policy: &PolicyStatus) {
        let key = ObjectKey::new(policy.namespace.clone(), policy.name.clone());
        let observed = self.observed.get(&key).unwrap_or_default();
        let current = observed.status.clone().unwrap_or_default();
        let desired = TrafficPolicyStatus {
            conditions: policy
                .conditions
                .iter()
                .map(|c| to_condition(c, policy.observed_generation, &current.conditions))
                .collect(),
            observed_generation: policy.observed_generation,
            denials: self.state.denials.report(&key),
        };
        let unchanged = |other: &TrafficPolicyStatus| {
            equal_but_transition_times(&desired, other) && other.denials == desired.denials
        };
        if unchanged(&current) || self.written.get(&key).is_some_and(unchanged) {
            return;
        }
        // Denial counts move with traffic: written at most every DENIALS_PERIOD unless
        // something else changed too.
        let same_but_denials = |other: &TrafficPolicyStatus| {
            let mut other = other.clone();
            other.denials = desired.denials.clone();
            equal_but_transition_times(&desired, &other)
        };
        let recent = self
            .denials_written
            .get(&key)
            .is_some_and(|at| at.elapsed() < DENIALS_PERIOD);
        if recent && desired.denials.is_some() && same_but_denials(&current) {
            return;
        }
        let api: Api<TrafficPolicy> = Api::namespaced(self.client.clone(), &key.namespace);
        let patch = serde_json::json!({
            "apiVersion": weir_api::API_VERSION,
            "kind": "TrafficPolicy",
            "status": desired,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match api
            .patch_status(&key.name, &params, &Patch::Apply(&patch))
            .await
        {
            Ok(_) => {
                self.state.metrics.status_writes.inc();
                self.announce(&key, observed.uid, policy, &current).await;
                self.denials_written.insert(key.clone(), Instant::now());
                self.written.insert(key, desired);
            }
            // Deleted meanwhile: the watch will tell the index.
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(err) => {
                self.state.metrics.status_write_errors.inc();
                tracing::warn!(policy = %key, %err, "status write failed; retrying on the next pass");
            }
        }
    }

    /// Our entries of a route's `status.parents` (one per Service parentRef, controller
    /// `weir.dev/mesh-controller`), beside other controllers' entries, which are kept as
    /// they are: the list is read, ours replaced, and written back with the version read
    /// (a concurrent writer makes us retry on the next pass, never overwrite it).
    async fn write_route(&mut self, route: &RouteStatus) {
        use weir_api::gateway_api::MESH_CONTROLLER_NAME;
        let key = ObjectKey::new(route.namespace.clone(), route.name.clone());
        let desired: Vec<serde_json::Value> = route
            .parents
            .iter()
            .map(|p| {
                serde_json::json!({
                    "parentRef": p.parent,
                    "controllerName": MESH_CONTROLLER_NAME,
                    "conditions": p.conditions.iter().map(|c| serde_json::json!({
                        "type": c.type_,
                        "status": if c.status { "True" } else { "False" },
                        "reason": c.reason,
                        "message": truncate(&c.message, 32_000),
                        "observedGeneration": route.observed_generation.unwrap_or(0),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let desired = serde_json::Value::Array(desired);
        let id = (route.kind, key.clone());
        if self.routes_written.get(&id) == Some(&desired) {
            return;
        }
        let kind = match route.kind {
            "GRPCRoute" => weir_core::Kind::GrpcRoute,
            _ => weir_core::Kind::HttpRoute,
        };
        let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            &key.namespace,
            &super::watch::api_resource(kind),
        );
        let current = match api.get_opt(&key.name).await {
            Ok(Some(object)) => object,
            Ok(None) => return,
            Err(err) => {
                self.state.metrics.status_write_errors.inc();
                tracing::warn!(route = %key, kind = route.kind, %err, "cannot read the route for its status; retrying on the next pass");
                return;
            }
        };
        let existing: Vec<serde_json::Value> = current.data["status"]["parents"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let now = Timestamp::now().to_string();
        let mut parents: Vec<serde_json::Value> = existing
            .iter()
            .filter(|p| p["controllerName"] != MESH_CONTROLLER_NAME)
            .cloned()
            .collect();
        for entry in desired.as_array().into_iter().flatten() {
            let mut entry = entry.clone();
            let before = existing.iter().find(|p| {
                p["controllerName"] == MESH_CONTROLLER_NAME && p["parentRef"] == entry["parentRef"]
            });
            for c in entry["conditions"].as_array_mut().into_iter().flatten() {
                // The transition time moves only when the status flips.
                let kept = before
                    .and_then(|b| b["conditions"].as_array())
                    .and_then(|cs| {
                        cs.iter()
                            .find(|o| o["type"] == c["type"] && o["status"] == c["status"])
                    })
                    .and_then(|o| o["lastTransitionTime"].as_str().map(str::to_string));
                c["lastTransitionTime"] = serde_json::json!(kept.unwrap_or_else(|| now.clone()));
            }
            parents.push(entry);
        }
        let unchanged =
            existing.len() == parents.len() && parents.iter().all(|p| existing.contains(p));
        if !unchanged {
            let patch = serde_json::json!({
                "metadata": {"resourceVersion": current.metadata.resource_version},
                "status": {"parents": parents},
            });
            match api
                .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    self.state.metrics.status_writes.inc();
                }
                Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => return,
                Err(err) => {
                    self.state.metrics.status_write_errors.inc();
                    tracing::warn!(route = %key, kind = route.kind, %err, "route status write failed; retrying on the next pass");
                    return;
                }
            }
        }
        self.routes_written.insert(id, desired);
    }

    /// A Warning Event for each condition that newly went False for a new reason.
    async fn announce(
        &self,
        key: &ObjectKey,
        uid: Option<String>,
        desired: &PolicyStatus,
        current: &TrafficPolicyStatus,
    ) {
        // Programmed is transient while proxies catch up: status says it, no Event.
        let problems = desired
            .conditions
            .iter()
            .filter(|c| !c.status && c.type_ != ConditionType::Programmed);
        for condition in problems {
            let before = current
                .conditions
                .iter()
                .find(|c| c.type_ == condition.type_.as_str());
            if before.is_some_and(|b| b.status == "False" && b.reason == condition.reason.as_str())
            {
                continue;
            }
            let reference = ObjectReference {
                api_version: Some(weir_api::API_VERSION.into()),
                kind: Some("TrafficPolicy".into()),
                namespace: Some(key.namespace.clone()),
                name: Some(key.name.clone()),
                uid: uid.clone(),
                ..ObjectReference::default()
            };
            let event = KubeEvent {
                type_: EventType::Warning,
                reason: condition.reason.as_str().into(),
                note: Some(truncate(&condition.message, 1000)),
                action: match condition.type_ {
                    ConditionType::Accepted => "Validate".into(),
                    _ => "Resolve".into(),
                },
                secondary: None,
            };
            if let Err(err) = self.recorder.publish(&event, &reference).await {
                tracing::warn!(policy = %key, %err, "could not record an Event");
            }
        }
    }

    /// A Warning Event on MeshStatus when the CA newly has a problem (or a new one).
    async fn announce_ca(&self, ca: &ConditionView) {
        if ca.status {
            return;
        }
        let before = self
            .mesh_written
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == ca.type_.as_str()));
        if before.is_some_and(|b| b.status == "False" && b.reason == ca.reason.as_str()) {
            return;
        }
        let reference = ObjectReference {
            api_version: Some(weir_api::API_VERSION.into()),
            kind: Some("MeshStatus".into()),
            name: Some(MESH_STATUS_NAME.into()),
            ..ObjectReference::default()
        };
        let event = KubeEvent {
            type_: EventType::Warning,
            reason: ca.reason.as_str().into(),
            note: Some(truncate(&ca.message, 1000)),
            action: "Issue".into(),
            secondary: None,
        };
        if let Err(err) = self.recorder.publish(&event, &reference).await {
            tracing::warn!(%err, "could not record the CA's Event");
        }
    }

    async fn write_mesh(&mut self, status: MeshStatusStatus) {
        let api: Api<MeshStatus> = Api::all(self.client.clone());
        let params = PatchParams::apply(FIELD_MANAGER).force();
        if !self.mesh_exists {
            // MeshStatus has a status subresource: create the object, then write its status.
            let object = serde_json::json!({
                "apiVersion": weir_api::API_VERSION,
                "kind": "MeshStatus",
                "metadata": {"name": MESH_STATUS_NAME},
                "spec": {},
            });
            if let Err(err) = api
                .patch(MESH_STATUS_NAME, &params, &Patch::Apply(&object))
                .await
            {
                self.state.metrics.status_write_errors.inc();
                tracing::warn!(%err, "cannot create MeshStatus {MESH_STATUS_NAME}");
                return;
            }
            self.mesh_exists = true;
        }
        let patch = serde_json::json!({
            "apiVersion": weir_api::API_VERSION,
            "kind": "MeshStatus",
            "status": status,
        });
        self.mesh_last_write = Some(Instant::now());
        match api
            .patch_status(MESH_STATUS_NAME, &params, &Patch::Apply(&patch))
            .await
        {
            Ok(_) => {
                self.state.metrics.status_writes.inc();
                self.state.metrics.mesh_status_writes.inc();
                self.mesh_written = Some(status);
            }
            Err(err) => {
                // Deleted by someone: recreate on the next pass.
                self.state.metrics.status_write_errors.inc();
                self.mesh_exists = false;
                tracing::warn!(%err, "MeshStatus write failed; retrying");
            }
        }
    }
}

/// Kubernetes condition from ours, keeping the transition time while the status holds.
fn to_condition(view: &ConditionView, generation: Option<i64>, current: &[Condition]) -> Condition {
    let status = if view.status { "True" } else { "False" };
    let since = current
        .iter()
        .find(|c| c.type_ == view.type_.as_str() && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(Timestamp::now()));
    Condition {
        type_: view.type_.as_str().into(),
        status: status.into(),
        reason: view.reason.as_str().into(),
        message: truncate(&view.message, 32 * 1024),
        observed_generation: generation,
        last_transition_time: since,
    }
}

/// Equal but for transition times.
fn equal_but_transition_times(a: &TrafficPolicyStatus, b: &TrafficPolicyStatus) -> bool {
    let key = |c: &Condition| {
        (
            c.type_.clone(),
            c.status.clone(),
            c.reason.clone(),
            c.message.clone(),
            c.observed_generation,
        )
    };
    a.observed_generation == b.observed_generation
        && a.conditions.len() == b.conditions.len()
        && a.conditions
            .iter()
            .map(key)
            .eq(b.conditions.iter().map(key))
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}
