//! TrafficPolicy: how traffic to one Service (optionally one port of it) is routed.
//!
//! Kubernetes validates what it can (enums, bounds, CEL rules); the operator validates the
//! rest (regex syntax, subset references) and reports it in status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::Duration;

/// The desired routing of traffic sent to one Service.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "weir.dev",
    version = "v1alpha1",
    kind = "TrafficPolicy",
    namespaced,
    status = "TrafficPolicyStatus",
    shortname = "tp",
    category = "weir",
    doc = "Routing, resilience and security policy for traffic sent to one Service",
    printcolumn(
        name = "Target",
        type_ = "string",
        json_path = ".spec.targetRef.service"
    ),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Programmed",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Programmed\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicySpec {
    /// The Service (in the policy's namespace) whose traffic this policy governs.
    pub target_ref: TargetRef,
    /// Named groups of the target Service's pods, selected by pod labels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.all(s, self.exists_one(t, t.name == s.name))").message("subset names must be unique"))]
    pub subsets: Vec<Subset>,
    /// Ordered HTTP rules for HTTP, HTTP/2 and gRPC ports: the first rule whose matches
    /// apply routes the request. Requests that match no rule go to the Service as a whole.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub http: Vec<HttpRule>,
    /// Ordered rules for TCP and TLS ports (and undeclared ports whose connections are not
    /// HTTP): the first rule that applies splits the connections. A rule with sniHosts
    /// applies only to TLS connections naming one of them. Connections no rule takes go to
    /// the Service as a whole.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub tcp: Vec<TcpRule>,

    /// Connection limits and circuit breaking toward the target's backends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPool>,
    /// Ejection of backends that keep failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// How a backend is picked among the healthy ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    /// A token bucket in each calling proxy (not a global limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_rate_limit: Option<LocalRateLimit>,
    /// Who may call the target Service (enforced by the sidecars of its pods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Authorization>,
}

/// The Service a policy is attached to.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    /// Name of a Service in the policy's namespace.
    #[schemars(length(min = 1, max = 63))]
    pub service: String,
    /// One port of the Service; all its ports when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
}

/// A named group of the target Service's pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Subset {
    /// Used by destinations, e.g. `v2`.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Pod labels that select the subset's pods, e.g. `version: v2`.
    #[x_kube(validation = Rule::new("self.size() > 0").message("a subset needs at least one label"))]
    pub labels: BTreeMap<String, String>,
}

/// One ordered routing rule.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.destinations.size() == 1 ? (!has(self.destinations[0].weight) || self.destinations[0].weight == 100) : (self.destinations.all(d, has(d.weight)) && self.destinations.map(d, d.weight).sum() == 100)").message("destination weights must sum to 100 (a single destination may omit its weight)")
)]
pub struct HttpRule {
    /// A name for the rule, used in status messages and stats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub name: Option<String>,
    /// The rule applies when any match applies; it applies to every request when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub matches: Vec<HttpMatch>,
    /// Where matching requests go, split by weight.
    #[schemars(length(min = 1, max = 16))]
    pub destinations: Vec<Destination>,
    /// Total time allowed for the request, retries included, e.g. `2s` or `500ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// How failed attempts are retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    /// Headers added to or removed from the request before it is forwarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeaderModifier>,
    /// Faults injected into matching requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultInjection>,
    /// A copy of matching requests is sent here and its answer dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Mirror>,
}

/// One ordered rule for TCP and TLS connections.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.destinations.size() == 1 ? (!has(self.destinations[0].weight) || self.destinations[0].weight == 100) : (self.destinations.all(d, has(d.weight)) && self.destinations.map(d, d.weight).sum() == 100)").message("destination weights must sum to 100 (a single destination may omit its weight)")
)]
pub struct TcpRule {
    /// A name for the rule, used in status messages and stats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub name: Option<String>,
    /// TLS server names (SNI) this rule applies to, e.g. `db.example.com` or
    /// `*.example.com`; every connection when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 253)))]
    pub sni_hosts: Vec<String>,
    /// Where the connections go, split by weight (per connection).
    #[schemars(length(min = 1, max = 16))]
    pub destinations: Vec<Destination>,
}

/// Conditions on one request; all the given conditions must hold.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.grpc) && has(self.path))").message("grpc and path both match the path: use one of them"))]
pub struct HttpMatch {
    /// Condition on the request path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// Condition on the gRPC service and method (the path `/<service>/<method>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcMatch>,
    /// Conditions on request headers; all must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<HeaderMatch>,
    /// Conditions on query parameters; all must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub query_params: Vec<QueryParamMatch>,
    /// The request method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<HttpMethod>,
}

/// How a path is compared.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathMatchType {
    /// The whole path equals the value.
    Exact,
    /// The path starts with the value, on a segment boundary.
    Prefix,
    /// The whole path matches the RE2 regular expression.
    RegularExpression,
}

/// A condition on the request path.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type == 'RegularExpression' || self.value.startsWith('/')").message("an Exact or Prefix path must start with '/'"))]
pub struct PathMatch {
    /// Exact, Prefix or RegularExpression.
    #[serde(rename = "type")]
    pub match_type: PathMatchType,
    /// The path, prefix or regular expression.
    #[schemars(length(min = 1, max = 1024))]
    pub value: String,
}

/// How a gRPC service and method are compared.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GrpcMatchType {
    /// Equal to the given names.
    #[default]
    Exact,
    /// The service and method each match an RE2 regular expression.
    RegularExpression,
}

/// A condition on the gRPC method called, in the spirit of Gateway API's GRPCRoute.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.service) || has(self.method)").message("name a service, a method, or both"))]
pub struct GrpcMatch {
    /// Exact (default) or RegularExpression.
    #[serde(rename = "type", default)]
    pub match_type: GrpcMatchType,
    /// The fully qualified service, e.g. `shop.v1.Cart`; any service when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub service: Option<String>,
    /// The method, e.g. `AddItem`; any method of the service when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub method: Option<String>,
}

/// How a header or query parameter is compared.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StringMatchType {
    /// Equals the value.
    Exact,
    /// Starts with the value.
    Prefix,
    /// Matches the RE2 regular expression as a whole.
    RegularExpression,
    /// Is present, whatever its value.
    Present,
}

/// A condition on one request header.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type == 'Present' ? !has(self.value) : has(self.value)").message("value is required, except with type Present where it must be omitted"))]
pub struct HeaderMatch {
    /// Header name, case-insensitive.
    #[schemars(
        length(min = 1, max = 256),
        regex(pattern = r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")
    )]
    pub name: String,
    /// Exact, Prefix, RegularExpression or Present.
    #[serde(rename = "type", default = "default_string_match")]
    pub match_type: StringMatchType,
    /// The value, prefix or regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub value: Option<String>,
}

/// A condition on one query parameter.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type == 'Present' ? !has(self.value) : has(self.value)").message("value is required, except with type Present where it must be omitted"))]
pub struct QueryParamMatch {
    /// Parameter name, case-sensitive.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// Exact, Prefix, RegularExpression or Present.
    #[serde(rename = "type", default = "default_string_match")]
    pub match_type: StringMatchType,
    /// The value, prefix or regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub value: Option<String>,
}

fn default_string_match() -> StringMatchType {
    StringMatchType::Exact
}

/// An HTTP method.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
#[allow(missing_docs)]
pub enum HttpMethod {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
}

impl HttpMethod {
    /// The method as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Head => "HEAD",
            HttpMethod::Post => "POST",
            HttpMethod::Put => "PUT",
            HttpMethod::Delete => "DELETE",
            HttpMethod::Connect => "CONNECT",
            HttpMethod::Options => "OPTIONS",
            HttpMethod::Trace => "TRACE",
            HttpMethod::Patch => "PATCH",
        }
    }
}

/// Where matching requests go: a subset of the target Service, the target Service as a whole
/// (neither `subset` nor `service`), or another Service in the mesh.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.subset) && has(self.service))").message("set subset (of the target Service) or service (another Service), not both"))]
pub struct Destination {
    /// A subset of the target Service, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub subset: Option<String>,
    /// Another Service in the mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub service: Option<String>,
    /// Namespace of `service`; the policy's namespace when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
    /// Port of `service`; required when that Service has more than one port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// Share of the rule's traffic, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub weight: Option<u32>,
}

/// Retries of failed attempts.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Retries {
    /// Retries after the first attempt.
    #[schemars(range(min = 0, max = 10))]
    pub attempts: u32,
    /// Time allowed for each attempt, e.g. `500ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// When to retry; `5xx`, `connect-failure`, `refused-stream` and `reset` when omitted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub retry_on: Vec<RetryOn>,
}

/// A condition that makes an attempt retriable: HTTP conditions, and gRPC statuses
/// (cancelled, deadline-exceeded, resource-exhausted, unavailable, internal).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum RetryOn {
    #[serde(rename = "5xx")]
    FiveXx,
    #[serde(rename = "gateway-error")]
    GatewayError,
    #[serde(rename = "reset")]
    Reset,
    #[serde(rename = "connect-failure")]
    ConnectFailure,
    #[serde(rename = "refused-stream")]
    RefusedStream,
    #[serde(rename = "retriable-4xx")]
    Retriable4xx,
    #[serde(rename = "envoy-ratelimited")]
    EnvoyRateLimited,
    /// gRPC status CANCELLED.
    #[serde(rename = "cancelled")]
    Cancelled,
    /// gRPC status DEADLINE_EXCEEDED.
    #[serde(rename = "deadline-exceeded")]
    DeadlineExceeded,
    /// gRPC status RESOURCE_EXHAUSTED.
    #[serde(rename = "resource-exhausted")]
    ResourceExhausted,
    /// gRPC status UNAVAILABLE.
    #[serde(rename = "unavailable")]
    Unavailable,
    /// gRPC status INTERNAL.
    #[serde(rename = "internal")]
    Internal,
}

impl RetryOn {
    /// The condition's name in Envoy's `retry_on`.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryOn::FiveXx => "5xx",
            RetryOn::GatewayError => "gateway-error",
            RetryOn::Reset => "reset",
            RetryOn::ConnectFailure => "connect-failure",
            RetryOn::RefusedStream => "refused-stream",
            RetryOn::Retriable4xx => "retriable-4xx",
            RetryOn::EnvoyRateLimited => "envoy-ratelimited",
            RetryOn::Cancelled => "cancelled",
            RetryOn::DeadlineExceeded => "deadline-exceeded",
            RetryOn::ResourceExhausted => "resource-exhausted",
            RetryOn::Unavailable => "unavailable",
            RetryOn::Internal => "internal",
        }
    }
}

/// Request header changes.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HeaderModifier {
    /// Headers set on the request, replacing any value it had.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub set: Vec<HeaderValue>,
    /// Headers appended to the request, keeping values it had.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub add: Vec<HeaderValue>,
    /// Names of headers removed from the request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub remove: Vec<String>,
}

/// A header name and value.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct HeaderValue {
    /// Header name.
    #[schemars(
        length(min = 1, max = 256),
        regex(pattern = r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")
    )]
    pub name: String,
    /// Header value.
    #[schemars(length(max = 4096))]
    pub value: String,
}

/// Connection limits and circuit breaking, per calling proxy, for each cluster of the
/// target Service (the Service as a whole and each subset).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionPool {
    /// Most connections to all backends at once; more wait as pending requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_connections: Option<u32>,
    /// Most requests waiting for a connection; more are answered 503 with
    /// `x-envoy-overloaded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_pending_requests: Option<u32>,
    /// Most requests in flight (HTTP/2 and gRPC: the limit that matters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_requests: Option<u32>,
    /// Most retries in flight at once (see also retryBudget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_retries: Option<u32>,
    /// Requests sent over one upstream connection before it is closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_requests_per_connection: Option<u32>,
    /// Time allowed to open a connection, e.g. `500ms` (default 1s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Duration>,
    /// An upstream connection without requests for this long is closed, e.g. `1m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    /// Retries allowed as a share of the requests in flight, so that retries cannot
    /// multiply the load on a failing Service. Replaces maxRetries when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
}

/// Retries bounded by the traffic in flight.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RetryBudget {
    /// Retries in flight at most, in percent of the requests in flight (e.g. 20).
    #[schemars(range(min = 0, max = 100))]
    pub percent: u32,
    /// Retries always allowed, however little traffic there is (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub min_retry_concurrency: Option<u32>,
}

/// Passive health checking: backends that keep failing are ejected for a while.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.consecutiveErrors) || has(self.consecutiveGatewayErrors)").message("set consecutiveErrors (any 5xx), consecutiveGatewayErrors (502, 503, 504), or both"))]
pub struct OutlierDetection {
    /// Consecutive 5xx answers (or connection failures) that eject a backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub consecutive_errors: Option<u32>,
    /// Consecutive 502, 503 or 504 answers (or connection failures) that eject a backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub consecutive_gateway_errors: Option<u32>,
    /// How often ejections are reviewed, e.g. `10s` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// How long a backend stays out the first time, e.g. `30s` (the default); each
    /// further ejection of the same backend lasts that much longer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<Duration>,
    /// Most backends ejected at once, in percent (default 10; at least one backend can
    /// always be ejected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub max_ejection_percent: Option<u32>,
}

/// Load balancing algorithm.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum LoadBalancerAlgorithm {
    RoundRobin,
    LeastRequest,
    Random,
    RingHash,
    Maglev,
}

/// How each calling proxy spreads requests over the target's backends.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.consistentHash) == (self.algorithm == 'RingHash' || self.algorithm == 'Maglev')").message("RingHash and Maglev need consistentHash (what to hash); other algorithms take none"))]
pub struct LoadBalancer {
    /// RoundRobin (the default), LeastRequest, Random, RingHash or Maglev.
    pub algorithm: LoadBalancerAlgorithm,
    /// With RingHash or Maglev: what a request is hashed by, so that equal keys reach the
    /// same backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<ConsistentHash>,
}

/// The key of consistent hashing; exactly one.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.header), has(self.cookie), has(self.sourceIp) && self.sourceIp, has(self.queryParameter)].filter(x, x).size() == 1").message("hash by exactly one of header, cookie, sourceIp or queryParameter"))]
pub struct ConsistentHash {
    /// A request header's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 256),
        regex(pattern = r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")
    )]
    pub header: Option<String>,
    /// A cookie's value; when the request has none and a ttl is given, the proxy sets one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<HashCookie>,
    /// The caller's IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<bool>,
    /// A query parameter's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub query_parameter: Option<String>,
}

/// A cookie to hash by.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HashCookie {
    /// The cookie's name.
    #[schemars(
        length(min = 1, max = 256),
        regex(pattern = r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")
    )]
    pub name: String,
    /// Lifetime of a cookie the proxy generates when the request has none, e.g. `1h`;
    /// without it no cookie is generated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,
    /// Path of a generated cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^/[\x21-\x7e]*$"))]
    pub path: Option<String>,
}

/// Faults injected into matching requests, to test how callers cope.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.delay) || has(self.abort)").message("set delay, abort, or both"))]
pub struct FaultInjection {
    /// Delay added before forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    /// Requests answered by the proxy with an error instead of being forwarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
    /// Only requests carrying all these headers get faults (e.g. a test-traffic header);
    /// every matching request when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<HeaderMatch>,
}

/// A delay fault.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FaultDelay {
    /// How long, e.g. `2s`.
    pub fixed_delay: Duration,
    /// Share of requests delayed, in percent.
    #[schemars(range(min = 0, max = 100))]
    pub percent: u32,
}

/// An abort fault: an HTTP status, or a gRPC status for gRPC callers.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.httpStatus) != has(self.grpcStatus)").message("set httpStatus or grpcStatus, not both"))]
pub struct FaultAbort {
    /// The HTTP status returned, e.g. 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 200, max = 599))]
    pub http_status: Option<u16>,
    /// The gRPC status code returned (in trailers, with HTTP 200), e.g. 14 (UNAVAILABLE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 16))]
    pub grpc_status: Option<u32>,
    /// Share of requests aborted, in percent.
    #[schemars(range(min = 0, max = 100))]
    pub percent: u32,
}

/// A copy of matching requests sent elsewhere; its answers are dropped, and its Host
/// header gets `-shadow` appended so the copy can be told apart.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.subset) != has(self.service)").message("set subset (of the target Service) or service (another Service in the policy's namespace), one of them"))]
pub struct Mirror {
    /// A subset of the target Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub subset: Option<String>,
    /// Another Service, in the policy's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub service: Option<String>,
    /// Its port; required when that Service has more than one port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// Share of requests mirrored, in percent (100 when omitted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub percent: Option<u32>,
}

/// A token bucket in each calling proxy for requests to the target (per Service port):
/// `requests` tokens, refilled every `fillInterval`. Requests without a token get 429 and
/// `x-weir-rate-limited: true`. It limits each proxy on its own, not the mesh as a whole.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LocalRateLimit {
    /// Requests allowed per fill interval (the bucket's size).
    #[schemars(range(min = 1))]
    pub requests: u32,
    /// The bucket's refill interval, e.g. `1s` (at least 50ms).
    pub fill_interval: Duration,
}

/// Who may call the target Service, enforced by the sidecars of its pods (the server's
/// side). A `deny` rule that matches denies; otherwise an `allow` rule that matches allows;
/// otherwise `defaultDeny` denies, or the workload's default (MeshIdentity
/// `spec.authorization.default`, namespace label or pod annotation
/// `weir.dev/default-authorization`) decides.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Authorization {
    /// `Enforce` (the default) denies; `Audit` denies nothing and reports what it would deny
    /// (counted, logged, and named in the status).
    #[serde(default)]
    pub mode: AuthorizationMode,
    /// Deny every request that no rule allows.
    #[serde(default)]
    pub default_deny: bool,
    /// Requests allowed (when no deny rule matches).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub allow: Vec<AuthorizationRule>,
    /// Requests denied, whatever the allow rules say.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub deny: Vec<AuthorizationRule>,
}

/// Whether an authorization denies or only reports.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AuthorizationMode {
    /// Denied requests get 403 (gRPC: PERMISSION_DENIED); denied connections are closed.
    #[default]
    Enforce,
    /// Nothing is denied; what would be is counted, logged and reported in the status.
    Audit,
}

/// One authorization rule: all given conditions must hold (a rule needs one at least).
/// Callers without a mesh identity (plaintext to a PERMISSIVE workload, pods outside the
/// mesh) never satisfy `identities`, `serviceAccounts` or `namespaces` in an allow rule
/// (`unauthenticated: true` is about them; a rule without caller conditions is about
/// everyone). A deny rule with those conditions denies them too (a caller cannot pass a
/// deny rule by showing no identity).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.identities) || has(self.serviceAccounts) || has(self.namespaces) || has(self.unauthenticated) || has(self.ports) || has(self.paths) || has(self.methods) || has(self.grpc) || has(self.headers)").message("a rule needs at least one condition (identities, serviceAccounts, namespaces, unauthenticated, ports, paths, methods, grpc or headers)"))]
#[x_kube(validation = Rule::new("!(has(self.unauthenticated) && self.unauthenticated && (has(self.identities) || has(self.serviceAccounts) || has(self.namespaces)))").message("unauthenticated callers have no identity: a rule with unauthenticated: true cannot also name identities, serviceAccounts or namespaces (write two rules)"))]
pub struct AuthorizationRule {
    /// A name for the rule, used in logs and status (default: `allow[i]` or `deny[i]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: Option<String>,
    /// Caller SPIFFE IDs, e.g. `spiffe://cluster.local/ns/shop/sa/web`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 512)))]
    #[x_kube(validation = Rule::new("self.all(i, i.startsWith('spiffe://'))").message("identities are SPIFFE IDs: spiffe://<trust domain>/ns/<namespace>/sa/<service account>"))]
    pub identities: Vec<String>,
    /// Caller service accounts as `namespace/name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 3, max = 317)))]
    #[x_kube(validation = Rule::new("self.all(s, s.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-a-z0-9.]*[a-z0-9])?$'))").message("serviceAccounts are written namespace/name, e.g. shop/web"))]
    pub service_accounts: Vec<String>,
    /// Caller namespaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 63)))]
    pub namespaces: Vec<String>,
    /// `true`: the rule is about callers without a mesh identity (and only them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unauthenticated: Option<bool>,
    /// Ports of the target Service, by number or name; all its ports when omitted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub ports: Vec<IntOrString>,
    /// Path prefixes, by segment: `/api` is `/api` and `/api/...`, not `/apix`. HTTP only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 1024)))]
    #[x_kube(validation = Rule::new("self.all(p, p.startsWith('/'))").message("paths start with '/'"))]
    pub paths: Vec<String>,
    /// Methods. HTTP only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub methods: Vec<HttpMethod>,
    /// A gRPC service and method (exact names). gRPC only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<AuthorizationGrpc>,
    /// Conditions on request headers, as in HTTP matches; all must hold. HTTP only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<HeaderMatch>,
}

/// A gRPC service and method, by exact name.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.service) || has(self.method)").message("name a service, a method, or both"))]
pub struct AuthorizationGrpc {
    /// The fully qualified service, e.g. `shop.v1.Cart`; any service when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^[A-Za-z0-9_.]+$"))]
    pub service: Option<String>,
    /// The method, e.g. `AddItem`; any method when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^[A-Za-z0-9_]+$"))]
    pub method: Option<String>,
}

/// What the operator made of a TrafficPolicy.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicyStatus {
    /// `Accepted`, `ResolvedRefs` and `Programmed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Callers the policy denied (Enforce) or would deny (Audit), as the sidecars report
    /// them: the most frequent few, kept current within seconds (empty after an operator
    /// restart until denials are seen again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denials: Option<Denials>,
}

/// The callers a policy denied or would deny.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Denials {
    /// `Enforce`: these were denied; `Audit`: these would have been.
    pub mode: AuthorizationMode,
    /// The most frequent callers, most frequent first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub callers: Vec<DeniedCaller>,
    /// Denials of callers not listed.
    #[serde(default)]
    pub others: u64,
    /// All denials counted since `since`.
    #[serde(default)]
    pub total: u64,
    /// When counting started (RFC 3339): the operator's start or the policy's last mode change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

/// One denied caller.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeniedCaller {
    /// The caller's SPIFFE ID, or `unauthenticated`.
    pub caller: String,
    /// The source address of an unauthenticated caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The rule that decided: `deny[0]`, a rule's name, `defaultDeny` or `default`.
    pub rule: String,
    /// `http` (requests) or `tcp` (connections).
    pub protocol: String,
    /// Requests or connections denied.
    pub count: u64,
    /// The last one (RFC 3339).
    pub last_seen: String,
}
