//! MeshIdentity: the mesh's trust domain, certificate authority and mTLS mode.
//! Typed now; the identity issue implements it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Duration;

/// How the mesh proves and checks workload identities. One per cluster, named `mesh`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "weir.dev",
    version = "v1alpha1",
    kind = "MeshIdentity",
    status = "MeshIdentityStatus",
    category = "weir",
    doc = "The mesh's trust domain, certificate authority and mTLS mode",
    printcolumn(
        name = "TrustDomain",
        type_ = "string",
        json_path = ".spec.trustDomain"
    ),
    printcolumn(name = "mTLS", type_ = "string", json_path = ".spec.mtls.mode"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct MeshIdentitySpec {
    /// The trust domain of SPIFFE IDs: `spiffe://<trustDomain>/ns/<ns>/sa/<sa>`.
    #[serde(default = "default_trust_domain")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9._-]+$"))]
    pub trust_domain: String,
    /// Where the root certificate comes from.
    #[serde(default)]
    pub ca: CaSource,
    /// Lifetime of workload certificates, e.g. `24h`.
    // `TTL`, as users write acronyms in Kubernetes APIs (serde's camelCase would say `Ttl`,
    // which a real API server's strict decoding refuses when a manifest says `TTL`).
    #[serde(rename = "workloadCertTTL", default = "default_workload_cert_ttl")]
    pub workload_cert_ttl: Duration,
    /// mTLS between sidecars.
    #[serde(default)]
    pub mtls: Mtls,
}

fn default_trust_domain() -> String {
    "cluster.local".to_string()
}

fn default_workload_cert_ttl() -> Duration {
    Duration("24h".to_string())
}

/// Where the mesh CA's root comes from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type == 'Secret' ? has(self.secretRef) : !has(self.secretRef)").message("secretRef is required with type Secret and not allowed with type Generated"))]
pub struct CaSource {
    /// Generated (by the operator) or Secret (given by the user).
    #[serde(rename = "type", default)]
    pub source_type: CaSourceType,
    /// The Secret holding `tls.crt` and `tls.key` of the root, with type Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
}

/// Generated or Secret.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CaSourceType {
    /// The operator generates and keeps the root.
    #[default]
    Generated,
    /// The user supplies the root in a Secret.
    Secret,
}

/// A Secret by namespace and name.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct SecretRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Secret namespace.
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
}

/// mTLS settings.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Mtls {
    /// STRICT (only mTLS accepted) or PERMISSIVE (plaintext also accepted, for migration).
    #[serde(default)]
    pub mode: MtlsMode,
}

/// STRICT or PERMISSIVE.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum MtlsMode {
    /// Sidecars accept only mTLS.
    #[default]
    Strict,
    /// Sidecars accept mTLS and plaintext.
    Permissive,
}

/// What the operator made of a MeshIdentity.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MeshIdentityStatus {
    /// `Ready` once the CA issues certificates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Expiry of the current root, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_expiry: Option<String>,
}
