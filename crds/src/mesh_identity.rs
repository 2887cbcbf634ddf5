//! MeshIdentity: the mesh's trust domain, certificate authority, workload certificate
//! lifetime and default mTLS mode. One per cluster, named `mesh`.

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
    #[x_kube(validation = Rule::new("duration(self) >= duration('1m') && duration(self) <= duration('720h')").message("workloadCertTTL must be between 1m and 720h (30 days)"))]
    pub workload_cert_ttl: Duration,
    /// mTLS between sidecars.
    #[serde(default)]
    pub mtls: Mtls,
    /// Authorization defaults.
    #[serde(default)]
    pub authorization: MeshAuthorization,
}

/// The mesh's authorization defaults.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct MeshAuthorization {
    /// What a workload allows where no policy decides: `AllowAll` (the default),
    /// `AllowAuthenticated` (any mesh identity, no plaintext) or `Deny`. A namespace label
    /// or a pod annotation `weir.dev/default-authorization` overrides it.
    #[serde(default)]
    pub default: DefaultAuthorization,
}

/// What a workload allows where no policy decides.
#[derive(
    JsonSchema,
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
)]
pub enum DefaultAuthorization {
    /// Every caller, with or without a mesh identity.
    #[default]
    AllowAll,
    /// Any caller with a mesh identity; no plaintext.
    AllowAuthenticated,
    /// No caller a policy does not allow.
    Deny,
}

impl DefaultAuthorization {
    /// The value as written in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            DefaultAuthorization::AllowAll => "AllowAll",
            DefaultAuthorization::AllowAuthenticated => "AllowAuthenticated",
            DefaultAuthorization::Deny => "Deny",
        }
    }

    /// Parses the value of a label or annotation (case-insensitive).
    pub fn parse(text: &str) -> Option<DefaultAuthorization> {
        match text.trim().to_ascii_lowercase().as_str() {
            "allowall" => Some(DefaultAuthorization::AllowAll),
            "allowauthenticated" => Some(DefaultAuthorization::AllowAuthenticated),
            "deny" => Some(DefaultAuthorization::Deny),
            _ => None,
        }
    }
}

fn default_trust_domain() -> String {
    "cluster.local".to_string()
}

fn default_workload_cert_ttl() -> Duration {
    Duration("24h".to_string())
}

/// Where the mesh CA's root comes from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type == 'Provided' ? has(self.secretRef) : !has(self.secretRef)").message("secretRef is required with type Provided and not allowed with type Generated"))]
pub struct CaSource {
    /// Generated (by the operator, kept in the Secret weir-system/weir-ca) or Provided
    /// (a Secret of yours, e.g. from cert-manager).
    #[serde(rename = "type", default)]
    pub source_type: CaSourceType,
    /// With type Provided: the Secret holding `tls.crt` (the CA certificate, root or
    /// intermediate, with its chain), `tls.key` and `ca.crt` (the root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
}

/// Generated or Provided.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CaSourceType {
    /// The operator generates the root once and keeps it in a Secret.
    #[default]
    Generated,
    /// The user supplies the CA in a Secret of cert-manager's shape.
    Provided,
}

/// A Secret by namespace and name.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
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
    /// The mesh's default for what sidecars accept inbound: STRICT, PERMISSIVE or DISABLE.
    /// A namespace label or a pod annotation `weir.dev/mtls-mode` overrides it.
    #[serde(default)]
    pub mode: MtlsMode,
}

/// What a sidecar accepts inbound.
#[derive(
    JsonSchema,
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum MtlsMode {
    /// Only mesh mTLS.
    #[default]
    Strict,
    /// Mesh mTLS and plaintext on the same port (the migration path).
    Permissive,
    /// Plaintext only; clients send plaintext to it too.
    Disable,
}

impl MtlsMode {
    /// The value as written in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            MtlsMode::Strict => "STRICT",
            MtlsMode::Permissive => "PERMISSIVE",
            MtlsMode::Disable => "DISABLE",
        }
    }

    /// Parses the value of a label or annotation (case-insensitive).
    pub fn parse(text: &str) -> Option<MtlsMode> {
        match text.trim().to_ascii_uppercase().as_str() {
            "STRICT" => Some(MtlsMode::Strict),
            "PERMISSIVE" => Some(MtlsMode::Permissive),
            "DISABLE" => Some(MtlsMode::Disable),
            _ => None,
        }
    }
}

/// What the operator made of a MeshIdentity.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MeshIdentityStatus {
    /// `Ready` once the CA issues certificates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Expiry of the CA issuing certificates now, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_expiry: Option<String>,
}
