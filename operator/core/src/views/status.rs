//! `GET /status`: the MeshStatus status as `kubectl get meshstatus` shows it, the mesh CA's
//! condition, every policy's conditions, the documents the source could not load and what
//! the index holds.
//!
//! ```json
//! {
//!   "status": {
//!     "proxiesConnected": 1, "proxiesInSync": 0,
//!     "policiesAccepted": 1, "policiesRejected": 1,
//!     "certificatesIssued": 1,
//!     "caExpiry": "2036-12-02T08:15:06Z", "lastPush": "2026-12-05T08:15:06Z",
//!     "rejectedPolicies": [{"namespace": "default", "name": "bad",
//!       "reason": "InvalidWeights", "message": "spec.http[0].destinations: ..."}],
//!     "rejectedConfig": [{"node": "cap",
//!       "typeUrl": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
//!       "message": "Invalid duration: ..."}]
//!   },
//!   "ca": {"type": "CAReady", "status": true, "reason": "Issuing", "message": "..."},
//!   "policies": [{"namespace": "default", "name": "reviews", "observed_generation": null,
//!     "conditions": [{"type": "Accepted", "status": true, "reason": "Accepted",
//!       "message": "The policy is valid"}]}],
//!   "sourceErrors": [{"source": "/demo/broken.yaml", "document": 0, "message": "..."}],
//!   "objects": {"services": 1, "endpoint_slices": 2, "endpoints": 2, "pods": 2,
//!     "policies": 2}
//! }
//! ```
//!
//! `caExpiry`, `lastPush`, `rejectedPolicies`, `rejectedConfig` and `status.conditions` are
//! left out when empty (they are [`weir_api::MeshStatusStatus`]'s own rules).

use serde::{Deserialize, Serialize};

/// The whole `/status` document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshStatusView {
    /// What `kubectl get meshstatus` shows.
    pub status: weir_api::MeshStatusStatus,
    /// The mesh CA's condition (the status writer adds it to `status.conditions`).
    pub ca: ConditionView,
    /// Conditions of every policy, in key order.
    pub policies: Vec<PolicyStatusView>,
    /// Documents the source could not load.
    pub source_errors: Vec<SourceError>,
    /// What the index holds.
    pub objects: ObjectCounts,
}

/// A condition: its type (`Accepted`, `ResolvedRefs`, `Programmed`, `CAReady`), whether it
/// holds, a stable CamelCase reason and a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConditionView {
    /// The condition type.
    #[serde(rename = "type")]
    pub type_: String,
    /// True or False.
    pub status: bool,
    /// Why, e.g. `InvalidRegex`.
    pub reason: String,
    /// What happened and, when it is a problem, how to fix it.
    pub message: String,
}

/// The conditions of one TrafficPolicy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyStatusView {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `metadata.generation` the conditions describe (`null` in local mode).
    pub observed_generation: Option<i64>,
    /// Accepted, ResolvedRefs, Programmed.
    pub conditions: Vec<ConditionView>,
}

/// A document a source could not load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceError {
    /// Where it came from (local mode: the file path; Kubernetes: the object).
    pub source: String,
    /// Which YAML document in the file (0-based), when known.
    pub document: Option<usize>,
    /// What is wrong.
    pub message: String,
}

/// How many objects the index holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectCounts {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::tests::{parses_as, round_trip};

    fn condition(type_: &str, status: bool, reason: &str) -> ConditionView {
        ConditionView {
            type_: type_.into(),
            status,
            reason: reason.into(),
            message: format!("{type_} is {status}"),
        }
    }

    #[test]
    fn a_filled_status_round_trips() {
        round_trip(&MeshStatusView {
            status: weir_api::MeshStatusStatus {
                proxies_connected: 2,
                proxies_in_sync: 1,
                policies_accepted: 1,
                policies_rejected: 1,
                routes_accepted: 2,
                routes_rejected: 1,
                certificates_issued: 3,
                ca_expiry: Some("2036-12-02T08:15:06Z".into()),
                last_push: Some("2026-12-05T08:15:06Z".into()),
                rejected_policies: vec![weir_api::PolicyProblem {
                    namespace: "default".into(),
                    name: "bad".into(),
                    reason: "InvalidWeights".into(),
                    message: "weights sum to 90".into(),
                }],
                rejected_config: vec![weir_api::ProxyProblem {
                    node: "web.shop".into(),
                    type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
                    message: "Invalid duration".into(),
                }],
                conditions: Vec::new(),
            },
            ca: condition("CAReady", false, "CAExpiringSoon"),
            policies: vec![PolicyStatusView {
                namespace: "default".into(),
                name: "reviews".into(),
                observed_generation: Some(4),
                conditions: vec![
                    condition("Accepted", true, "Accepted"),
                    condition("Programmed", false, "Pending"),
                ],
            }],
            source_errors: vec![SourceError {
                source: "/demo/broken.yaml".into(),
                document: Some(1),
                message: "not valid YAML".into(),
            }],
            objects: ObjectCounts {
                services: 1,
                endpoint_slices: 2,
                endpoints: 3,
                pods: 4,
                policies: 5,
            },
        });
    }

    /// What `/status` returned before the view types (local mode: a rejected policy, a
    /// broken file and a NACKed cluster), trimmed to one policy.
    const TODAY: &str = r#"{
        "status": {
            "proxiesConnected": 1, "proxiesInSync": 0,
            "policiesAccepted": 1, "policiesRejected": 1,
            "certificatesIssued": 1,
            "caExpiry": "2036-12-02T08:15:06Z", "lastPush": "2026-12-05T08:15:06Z",
            "rejectedPolicies": [{"namespace": "default", "name": "bad",
                "reason": "InvalidWeights",
                "message": "spec.http[0].destinations: weights 70/20 sum to 90: make them sum to 100"}],
            "rejectedConfig": [{"node": "cap",
                "typeUrl": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
                "message": "Invalid duration: Expected positive duration: goo.gle/debugproto   \nseconds: -1\n"}]
        },
        "ca": {"type": "CAReady", "status": true, "reason": "Issuing",
            "message": "workload certificates are issued; the CA is valid until 2036-12-02T08:15:06Z"},
        "policies": [{"namespace": "default", "name": "bad", "observed_generation": null,
            "conditions": [
                {"type": "Accepted", "status": false, "reason": "InvalidWeights",
                    "message": "spec.http[0].destinations: weights 70/20 sum to 90: make them sum to 100"},
                {"type": "ResolvedRefs", "status": false, "reason": "TargetNotFound",
                    "message": "no valid version of the policy to resolve"},
                {"type": "Programmed", "status": false, "reason": "NotProgrammed",
                    "message": "The policy is not in any route table; see Accepted and ResolvedRefs"}]}],
        "sourceErrors": [{"source": "/tmp/weir-mesh-15129-0/broken.yaml", "document": 0,
            "message": "not valid YAML: mapping values are not allowed in this context at line 2, column 11"}],
        "objects": {"services": 1, "endpoint_slices": 2, "endpoints": 2, "pods": 2, "policies": 2}
    }"#;

    #[test]
    fn todays_document_parses() {
        let view: MeshStatusView = parses_as(TODAY);
        assert_eq!(view.status.rejected_config[0].node, "cap");
        assert_eq!(view.ca.type_, "CAReady");
        assert_eq!(view.policies[0].conditions[0].reason, "InvalidWeights");
        assert_eq!(view.source_errors[0].document, Some(0));
        assert_eq!(view.objects.endpoint_slices, 2);
    }

    #[test]
    fn empty_lists_and_unknown_times_are_left_out_of_status() {
        let view: MeshStatusView = parses_as(
            r#"{"status": {"proxiesConnected": 0, "proxiesInSync": 0, "policiesAccepted": 0,
                "policiesRejected": 0, "certificatesIssued": 0},
            "ca": {"type": "CAReady", "status": false, "reason": "CANotFound", "message": "no mesh CA yet"},
            "policies": [], "sourceErrors": [],
            "objects": {"services": 0, "endpoint_slices": 0, "endpoints": 0, "pods": 0, "policies": 0}}"#,
        );
        assert_eq!(view.status.ca_expiry, None);
        assert!(view.status.rejected_policies.is_empty());
    }
}
