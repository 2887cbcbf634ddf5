//! MeshStatus: the state of the mesh as the operator sees it. Written by the operator only.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Empty: MeshStatus carries only status. The operator keeps one named `mesh`.
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "weir.dev",
    version = "v1alpha1",
    kind = "MeshStatus",
    plural = "meshstatuses",
    status = "MeshStatusStatus",
    category = "weir",
    doc = "The state of the mesh: proxies, policies, certificates. Written by the operator",
    printcolumn(
        name = "Proxies",
        type_ = "integer",
        json_path = ".status.proxiesConnected"
    ),
    printcolumn(
        name = "InSync",
        type_ = "integer",
        json_path = ".status.proxiesInSync"
    ),
    printcolumn(
        name = "Accepted",
        type_ = "integer",
        json_path = ".status.policiesAccepted"
    ),
    printcolumn(
        name = "Rejected",
        type_ = "integer",
        json_path = ".status.policiesRejected"
    ),
    printcolumn(
        name = "Routes",
        type_ = "integer",
        json_path = ".status.routesAccepted"
    ),
    printcolumn(
        name = "RoutesRejected",
        type_ = "integer",
        json_path = ".status.routesRejected"
    ),
    printcolumn(
        name = "Certs",
        type_ = "integer",
        json_path = ".status.certificatesIssued"
    ),
    printcolumn(name = "CAExpiry", type_ = "date", json_path = ".status.caExpiry"),
    printcolumn(name = "LastPush", type_ = "date", json_path = ".status.lastPush"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct MeshStatusSpec {}

/// Counts and problems across the mesh.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MeshStatusStatus {
    /// Proxies with an open xDS stream.
    pub proxies_connected: u32,
    /// Connected proxies that have ACKed the latest config of every type they watch.
    pub proxies_in_sync: u32,
    /// TrafficPolicies accepted.
    pub policies_accepted: u32,
    /// TrafficPolicies rejected.
    pub policies_rejected: u32,
    /// Gateway API routes (HTTPRoute, GRPCRoute) accepted on every Service parent.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub routes_accepted: u32,
    /// Gateway API routes not accepted on some Service parent (their status says why).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub routes_rejected: u32,
    /// Workload certificates issued since the operator started.
    pub certificates_issued: u64,
    /// When the CA issuing certificates expires, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_expiry: Option<String>,
    /// When config was last pushed to a proxy, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_push: Option<String>,
    /// Rejected policies and why (the first 50).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected_policies: Vec<PolicyProblem>,
    /// Config a proxy refused (NACKed), with Envoy's message (the first 50).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected_config: Vec<ProxyProblem>,
    /// Overall conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A policy the operator rejected.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyProblem {
    /// Policy namespace.
    pub namespace: String,
    /// Policy name.
    pub name: String,
    /// Stable reason, e.g. `InvalidRegex`.
    pub reason: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// Config a proxy NACKed.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProxyProblem {
    /// The proxy's node id.
    pub node: String,
    /// The xDS type URL.
    pub type_url: String,
    /// Envoy's error message.
    pub message: String,
}
