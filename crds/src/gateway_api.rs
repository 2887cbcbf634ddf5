//! Gateway API routes as Weir reads them (`gateway.networking.k8s.io/v1` HTTPRoute and
//! GRPCRoute, standard channel v1.6.3). The CRDs are Gateway API's own (installed from its
//! release, never generated here); these types hold the fields a mesh route uses and are
//! decoded leniently (unknown fields are the API server's to refuse). Everything is
//! `Option` or defaulted where the CRD defaults it, so that what is absent stays absent.
//!
//! (The `gateway-api` crate of kube-rs types the whole API, but for kube 4 and
//! k8s-openapi 0.28; the workspace pins kube 5 and k8s-openapi 0.29.)

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

/// `apiVersion` of the routes read.
pub const GATEWAY_API_VERSION: &str = "gateway.networking.k8s.io/v1";
/// Their API group.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
/// What Weir writes as `controllerName` in the routes' `status.parents`.
pub const MESH_CONTROLLER_NAME: &str = "weir.dev/mesh-controller";

/// An HTTPRoute.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HTTPRoute {
    /// Standard object metadata.
    pub metadata: ObjectMeta,
    /// The route.
    #[serde(default)]
    pub spec: HTTPRouteSpec,
}

/// A GRPCRoute.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GRPCRoute {
    /// Standard object metadata.
    pub metadata: ObjectMeta,
    /// The route.
    #[serde(default)]
    pub spec: GRPCRouteSpec,
}

/// HTTPRoute `spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HTTPRouteSpec {
    /// What the route attaches to (a Service, for the mesh).
    #[serde(default)]
    pub parent_refs: Vec<ParentReference>,
    /// Host names (they do not apply to mesh routes).
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// The rules.
    #[serde(default)]
    pub rules: Vec<HTTPRouteRule>,
}

/// GRPCRoute `spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GRPCRouteSpec {
    /// What the route attaches to.
    #[serde(default)]
    pub parent_refs: Vec<ParentReference>,
    /// Host names (they do not apply to mesh routes).
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// The rules.
    #[serde(default)]
    pub rules: Vec<GRPCRouteRule>,
}

/// A `parentRefs` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentReference {
    /// API group (`""` for a Service; Gateway API's default is its own group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Kind (`Service` for the mesh; the default is `Gateway`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Namespace (the route's when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// A section of the parent (not used for Services).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    /// A port of the parent Service; every port when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
}

/// An HTTPRoute rule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HTTPRouteRule {
    /// The rule's name.
    #[serde(default)]
    pub name: Option<String>,
    /// Any of these applies the rule (a prefix `/` when empty).
    #[serde(default)]
    pub matches: Vec<HTTPRouteMatch>,
    /// Filters on every request the rule routes.
    #[serde(default)]
    pub filters: Vec<HTTPRouteFilter>,
    /// Where requests go.
    #[serde(default)]
    pub backend_refs: Vec<HTTPBackendRef>,
    /// Timeouts.
    #[serde(default)]
    pub timeouts: Option<HTTPRouteTimeouts>,
}

/// One match of an HTTPRoute rule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HTTPRouteMatch {
    /// On the path (`PathPrefix /` when absent).
    #[serde(default)]
    pub path: Option<HTTPPathMatch>,
    /// On headers.
    #[serde(default)]
    pub headers: Vec<HTTPValueMatch>,
    /// On query parameters.
    #[serde(default)]
    pub query_params: Vec<HTTPValueMatch>,
    /// On the method.
    #[serde(default)]
    pub method: Option<String>,
}

/// A path match.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HTTPPathMatch {
    /// `Exact`, `PathPrefix` (default) or `RegularExpression`.
    #[serde(rename = "type", default)]
    pub type_: Option<String>,
    /// The value (`/` when absent).
    #[serde(default)]
    pub value: Option<String>,
}

/// A header or query parameter match.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HTTPValueMatch {
    /// `Exact` (default) or `RegularExpression`.
    #[serde(rename = "type", default)]
    pub type_: Option<String>,
    /// Header or parameter name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// A filter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HTTPRouteFilter {
    /// `RequestHeaderModifier`, `ResponseHeaderModifier`, `RequestRedirect`, `URLRewrite`,
    /// `RequestMirror`, `ExtensionRef`, `CORS`...
    #[serde(rename = "type")]
    pub type_: String,
    /// For `RequestHeaderModifier`.
    #[serde(default)]
    pub request_header_modifier: Option<HeaderModifier>,
    /// For `ResponseHeaderModifier`.
    #[serde(default)]
    pub response_header_modifier: Option<HeaderModifier>,
    /// For `RequestRedirect`.
    #[serde(default)]
    pub request_redirect: Option<RequestRedirect>,
    /// For `URLRewrite`.
    #[serde(default, rename = "urlRewrite")]
    pub url_rewrite: Option<UrlRewrite>,
    /// For `RequestMirror`.
    #[serde(default)]
    pub request_mirror: Option<RequestMirror>,
}

/// Header edits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HeaderModifier {
    /// Replace (or add).
    #[serde(default)]
    pub set: Vec<HTTPHeader>,
    /// Append.
    #[serde(default)]
    pub add: Vec<HTTPHeader>,
    /// Remove, by name.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A header.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HTTPHeader {
    /// Name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// `RequestRedirect`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestRedirect {
    /// `http` or `https`.
    #[serde(default)]
    pub scheme: Option<String>,
    /// The host.
    #[serde(default)]
    pub hostname: Option<String>,
    /// The path.
    #[serde(default)]
    pub path: Option<HTTPPathModifier>,
    /// The port.
    #[serde(default)]
    pub port: Option<i32>,
    /// 301 (default), 302, 303, 307 or 308.
    #[serde(default)]
    pub status_code: Option<i32>,
}

/// `URLRewrite`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UrlRewrite {
    /// The Host header sent upstream.
    #[serde(default)]
    pub hostname: Option<String>,
    /// The path sent upstream.
    #[serde(default)]
    pub path: Option<HTTPPathModifier>,
}

/// How a redirect or rewrite changes the path.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HTTPPathModifier {
    /// `ReplaceFullPath` or `ReplacePrefixMatch`.
    #[serde(rename = "type")]
    pub type_: String,
    /// For `ReplaceFullPath`.
    #[serde(default)]
    pub replace_full_path: Option<String>,
    /// For `ReplacePrefixMatch`.
    #[serde(default)]
    pub replace_prefix_match: Option<String>,
}

/// `RequestMirror`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestMirror {
    /// Where copies go.
    pub backend_ref: BackendRef,
    /// Percent of requests mirrored (100 when neither this nor `fraction` is set).
    #[serde(default)]
    pub percent: Option<i32>,
    /// The share as a fraction.
    #[serde(default)]
    pub fraction: Option<Fraction>,
}

/// `numerator / denominator` (denominator 100 by default).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Fraction {
    /// Numerator.
    pub numerator: i32,
    /// Denominator.
    #[serde(default)]
    pub denominator: Option<i32>,
}

/// A reference to a backend.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BackendRef {
    /// API group (`""`, the core group, by default).
    #[serde(default)]
    pub group: Option<String>,
    /// Kind (`Service` by default).
    #[serde(default)]
    pub kind: Option<String>,
    /// Name.
    pub name: String,
    /// Namespace (the route's when absent).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Port (required for a Service).
    #[serde(default)]
    pub port: Option<i32>,
}

/// A weighted backend of an HTTPRoute rule, with filters of its own.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HTTPBackendRef {
    /// The backend.
    #[serde(flatten)]
    pub backend: BackendRef,
    /// Relative weight (1 by default; 0 sends nothing).
    #[serde(default)]
    pub weight: Option<i32>,
    /// Filters on the requests sent to this backend.
    #[serde(default)]
    pub filters: Vec<HTTPRouteFilter>,
}

/// Timeouts of an HTTPRoute rule (Gateway API durations, e.g. `500ms`, `1h2m`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HTTPRouteTimeouts {
    /// The whole request, retries included.
    #[serde(default)]
    pub request: Option<String>,
    /// Each request to a backend.
    #[serde(default)]
    pub backend_request: Option<String>,
}

/// A GRPCRoute rule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GRPCRouteRule {
    /// The rule's name.
    #[serde(default)]
    pub name: Option<String>,
    /// Any of these applies the rule (every call when empty).
    #[serde(default)]
    pub matches: Vec<GRPCRouteMatch>,
    /// Filters.
    #[serde(default)]
    pub filters: Vec<HTTPRouteFilter>,
    /// Where calls go.
    #[serde(default)]
    pub backend_refs: Vec<HTTPBackendRef>,
}

/// One match of a GRPCRoute rule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GRPCRouteMatch {
    /// On the method.
    #[serde(default)]
    pub method: Option<GRPCMethodMatch>,
    /// On headers.
    #[serde(default)]
    pub headers: Vec<HTTPValueMatch>,
}

/// A gRPC method match.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GRPCMethodMatch {
    /// `Exact` (default) or `RegularExpression`.
    #[serde(rename = "type", default)]
    pub type_: Option<String>,
    /// The fully qualified service.
    #[serde(default)]
    pub service: Option<String>,
    /// The method.
    #[serde(default)]
    pub method: Option<String>,
}
