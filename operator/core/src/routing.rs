//! The route model: what any routing source (TrafficPolicy today, Gateway API's HTTPRoute
//! and GRPCRoute next) says about traffic to one Service, in one shape that owes nothing to
//! the source's CRD.
//!
//! ```text
//! TrafficPolicySpec --sources::traffic_policy::parse--> RouteSet ┐
//! HTTPRoute / GRPCRoute (next) --sources::...----------> RouteSet ┴-> binding (merge per port)
//!                                                                     -> translate -> Envoy
//! ```
//!
//! A [`RouteSet`] holds ordered HTTP and TCP rules (matches, backends with weights,
//! timeouts, retries, header edits, faults, mirrors), the pod groups (subsets) its backends
//! may name, and the upstream settings (connection pool, outlier detection, balancing, rate
//! limit) for the target's backends. Values are parsed and checked: durations are
//! `Duration`s, names are normalised, every backend names its Service. Enums are the
//! model's own, so a source's CRD can change without touching translation.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::object_key::ObjectKey;

/// What one source attaches to one Service, parsed and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteSet {
    /// The Service and optionally one port of it.
    pub target: Target,
    /// Named groups of the target's pods that backends may name.
    pub subsets: Vec<Subset>,
    /// Ordered HTTP rules; the first whose matches apply routes the request.
    pub http: Vec<HttpRule>,
    /// Ordered TCP rules; the first that applies splits the connection.
    pub tcp: Vec<TcpRule>,
    /// How calling proxies treat the target's backends (every cluster of the target).
    pub upstream: Upstream,
    /// A token bucket in each calling proxy, per Service port.
    pub rate_limit: Option<RateLimit>,
    /// Who may call the target (enforced by the target's sidecars).
    pub authorization: Option<crate::authorization::Authorization>,
    /// Field paths the source accepted but that are not translated (and so ignored).
    pub unsupported: Vec<String>,
}

impl RouteSet {
    /// Whether it says anything about traffic to the target (rules, subsets, upstream
    /// settings, rate limit), not only who may call it: a source with authorization alone
    /// claims no port and combines with the others.
    pub fn shapes_traffic(&self) -> bool {
        !self.http.is_empty()
            || !self.tcp.is_empty()
            || !self.subsets.is_empty()
            || self.upstream != Upstream::default()
            || self.rate_limit.is_some()
    }

    /// Services other than the target that the rules send traffic (or copies) to.
    pub fn backend_services(&self) -> BTreeSet<ObjectKey> {
        let mirrors = self.http.iter().filter_map(|r| r.mirror.as_ref());
        self.http
            .iter()
            .flat_map(|r| r.backends.iter().map(|b| &b.backend))
            .chain(
                self.tcp
                    .iter()
                    .flat_map(|r| r.backends.iter().map(|b| &b.backend)),
            )
            .chain(mirrors.map(|m| &m.backend))
            .filter(|b| b.service != self.target.service)
            .map(|b| b.service.clone())
            .collect()
    }
}

/// What a route set is attached to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The Service.
    pub service: ObjectKey,
    /// One port of it; every port when `None`.
    pub port: Option<u16>,
}

/// A named group of the target Service's pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subset {
    /// The name backends use.
    pub name: String,
    /// Pod labels that select the subset.
    pub labels: BTreeMap<String, String>,
}

/// One HTTP routing rule.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpRule {
    /// The rule's name (the source's, or one it derives such as `rule-<i>`).
    pub name: String,
    /// Any of these applies the rule; empty means every request.
    pub matches: Vec<HttpMatch>,
    /// Where matching requests go, by weight (in the order written, zero weights included).
    pub backends: Vec<WeightedBackend>,
    /// Whole-request timeout, retries included.
    pub timeout: Option<Duration>,
    /// Retries of failed attempts.
    pub retry: Option<Retry>,
    /// Request header changes.
    pub request_headers: HeaderEdits,
    /// Faults injected.
    pub fault: Option<Fault>,
    /// Where copies of the requests go.
    pub mirror: Option<Mirror>,
    /// Response header changes.
    pub response_headers: HeaderEdits,
    /// Answer with a redirect instead of routing (the rule has no backends then).
    pub redirect: Option<Redirect>,
    /// How the request is rewritten before it goes upstream.
    pub rewrite: Option<Rewrite>,
    /// Timeout of each request to a backend (each retry has its own).
    pub backend_timeout: Option<Duration>,
    /// What the caller gets for the share of a backend that does not resolve (and for a
    /// rule with no backend at all): TrafficPolicy 503, Gateway API 500.
    pub unresolved_status: u16,
}

/// A redirect answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// `http` or `https`; the request's when `None`.
    pub scheme: Option<String>,
    /// The host; the request's when `None`.
    pub host: Option<String>,
    /// The port; the scheme's default (or the request's) when `None`.
    pub port: Option<u16>,
    /// The path; the request's when `None`.
    pub path: Option<PathRewrite>,
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
}

/// A request rewritten before it goes upstream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rewrite {
    /// The Host (`:authority`) sent upstream.
    pub host: Option<String>,
    /// The path sent upstream.
    pub path: Option<PathRewrite>,
}

/// How a path is replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathRewrite {
    /// The whole path.
    Full(String),
    /// The part the rule's path prefix matched (the rule matches a prefix).
    Prefix(String),
}

/// What a TrafficPolicy's unresolved backend answers (Envoy's default for a missing
/// cluster).
pub const UNRESOLVED_STATUS: u16 = 503;

/// One TCP routing rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpRule {
    /// The rule's name.
    pub name: String,
    /// TLS server names it applies to (lower-cased); every connection when empty.
    pub sni_hosts: Vec<String>,
    /// Where the connections go, by weight.
    pub backends: Vec<WeightedBackend>,
}

/// Conditions on one request; all must hold.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HttpMatch {
    /// Condition on the path.
    pub path: Option<PathMatch>,
    /// Conditions on headers (names lower-cased).
    pub headers: Vec<NamedMatch>,
    /// Conditions on query parameters (names as written: they are case-sensitive).
    pub query_params: Vec<NamedMatch>,
    /// The method.
    pub method: Option<Method>,
}

/// An HTTP method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    /// GET.
    Get,
    /// HEAD.
    Head,
    /// POST.
    Post,
    /// PUT.
    Put,
    /// DELETE.
    Delete,
    /// CONNECT.
    Connect,
    /// OPTIONS.
    Options,
    /// TRACE.
    Trace,
    /// PATCH.
    Patch,
}

impl Method {
    /// The method as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Connect => "CONNECT",
            Method::Options => "OPTIONS",
            Method::Trace => "TRACE",
            Method::Patch => "PATCH",
        }
    }
}

/// A condition on the request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// The whole path.
    Exact(String),
    /// A prefix, on a segment boundary.
    Prefix(String),
    /// An RE2 regular expression over the whole path.
    RegularExpression(String),
    /// A gRPC method: the path `/<service>/<method>`, either part any when `None`.
    Grpc {
        /// The fully qualified service (or a regular expression for it).
        service: Option<String>,
        /// The method (or a regular expression for it).
        method: Option<String>,
        /// Whether the names are RE2 regular expressions.
        regex: bool,
    },
}

/// A condition on one named value (a header or a query parameter).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamedMatch {
    /// The header or parameter name.
    pub name: String,
    /// How its value is compared.
    pub value: ValueMatch,
}

/// How a value is compared.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ValueMatch {
    /// Equals.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Matches the RE2 regular expression as a whole.
    RegularExpression(String),
    /// Is present, whatever its value.
    Present,
}

/// A backend with its share of a rule's traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightedBackend {
    /// Where the traffic goes.
    pub backend: Backend,
    /// Its share: relative to the rule's other backends (TrafficPolicy writes percents,
    /// 100 for a single backend; Gateway API relative weights, 1 by default).
    pub weight: u32,
    /// Request header changes for this backend's share only.
    pub request_headers: HeaderEdits,
    /// Response header changes for this backend's share only.
    pub response_headers: HeaderEdits,
}

/// Where traffic goes, before it is resolved against the index: a Service (the target or
/// another), optionally one port and one subset of its pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// The Service.
    pub service: ObjectKey,
    /// Its port; when omitted, the Service's only port, else the port being routed.
    pub port: Option<u16>,
    /// A subset of the target's pods (see [`RouteSet::subsets`]).
    pub subset: Option<String>,
}

/// Retries of failed attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    /// Retries after the first attempt.
    pub attempts: u32,
    /// Time allowed for each attempt.
    pub per_try_timeout: Option<Duration>,
    /// What makes an attempt retriable; empty means the default set.
    pub retry_on: Vec<RetryOn>,
}

/// A condition that makes a failed attempt retriable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryOn {
    /// Any 5xx answer (and connection failures).
    FiveXx,
    /// 502, 503, 504.
    GatewayError,
    /// The upstream reset the stream.
    Reset,
    /// The connection could not be made.
    ConnectFailure,
    /// HTTP/2 REFUSED_STREAM.
    RefusedStream,
    /// 409.
    Retriable4xx,
    /// A rate limit of Envoy's own.
    EnvoyRateLimited,
    /// gRPC CANCELLED.
    Cancelled,
    /// gRPC DEADLINE_EXCEEDED.
    DeadlineExceeded,
    /// gRPC RESOURCE_EXHAUSTED.
    ResourceExhausted,
    /// gRPC UNAVAILABLE.
    Unavailable,
    /// gRPC INTERNAL.
    Internal,
}

impl RetryOn {
    /// Envoy's name for the condition.
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

/// Header changes; `set` and `add` names are lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderEdits {
    /// Replace or add.
    pub set: Vec<(String, String)>,
    /// Append or add.
    pub add: Vec<(String, String)>,
    /// Remove (names as written).
    pub remove: Vec<String>,
}

/// Faults of one rule.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fault {
    /// (delay, percent).
    pub delay: Option<(Duration, u32)>,
    /// (status, percent).
    pub abort: Option<(AbortStatus, u32)>,
    /// Only requests with all these headers (names lower-cased).
    pub headers: Vec<NamedMatch>,
}

/// What an abort fault answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortStatus {
    /// An HTTP status.
    Http(u16),
    /// A gRPC status code.
    Grpc(u32),
}

/// A rule's mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// Where the copies go.
    pub backend: Backend,
    /// Share of requests copied, in percent.
    pub percent: u32,
}

/// Connection limits, ejection and load balancing toward the target's backends.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Upstream {
    /// Circuit breaking and connection settings.
    pub pool: Option<Pool>,
    /// Ejection of failing backends.
    pub outlier: Option<Outlier>,
    /// Load balancing.
    pub balancer: Option<Balancer>,
}

/// Connection pool limits and timeouts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pool {
    /// Most connections.
    pub max_connections: Option<u32>,
    /// Most pending requests.
    pub max_pending_requests: Option<u32>,
    /// Most requests in flight.
    pub max_requests: Option<u32>,
    /// Most retries in flight.
    pub max_retries: Option<u32>,
    /// Requests per upstream connection.
    pub max_requests_per_connection: Option<u32>,
    /// Connection timeout.
    pub connect_timeout: Option<Duration>,
    /// Idle upstream connections are closed after this.
    pub idle_timeout: Option<Duration>,
    /// Retries as a share of requests in flight: (percent, minimum concurrency).
    pub retry_budget: Option<(u32, Option<u32>)>,
}

/// Ejection of failing backends.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outlier {
    /// Consecutive 5xx that eject.
    pub consecutive_errors: Option<u32>,
    /// Consecutive 502/503/504 that eject.
    pub consecutive_gateway_errors: Option<u32>,
    /// Review interval.
    pub interval: Option<Duration>,
    /// First ejection's length.
    pub base_ejection_time: Option<Duration>,
    /// Most ejected, in percent.
    pub max_ejection_percent: Option<u32>,
}

/// How requests are spread over the backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Balancer {
    /// The algorithm.
    pub algorithm: Algorithm,
    /// For RingHash and Maglev: the key.
    pub hash: Option<HashKey>,
}

/// A load balancing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Round robin (Envoy's default).
    RoundRobin,
    /// The backend with the fewest requests of two picked at random.
    LeastRequest,
    /// Random.
    Random,
    /// Consistent hashing on a ring.
    RingHash,
    /// Consistent hashing with Maglev's table.
    Maglev,
}

/// What consistent hashing hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// A header (name lower-cased).
    Header(String),
    /// A cookie, generated with this lifetime and path when absent (if a ttl is given).
    Cookie {
        /// Cookie name.
        name: String,
        /// Lifetime of a generated cookie.
        ttl: Option<Duration>,
        /// Path of a generated cookie.
        path: Option<String>,
    },
    /// The caller's address.
    SourceIp,
    /// A query parameter.
    QueryParameter(String),
}

/// A token bucket per calling proxy and Service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    /// Bucket size.
    pub requests: u32,
    /// Refill interval.
    pub fill_interval: Duration,
}

/// What route matching looks at in one HTTP request (what `kubectl weir explain` is asked
/// about). The semantics are Envoy's as the translator configures it: the path is compared
/// without its query; a prefix ends on a segment boundary; regular expressions match the
/// whole value; a header's values are joined with `,`; a query parameter's first value
/// counts.
#[derive(Debug, Clone, Default)]
pub struct RequestFacts {
    /// The method, e.g. `GET`.
    pub method: String,
    /// The path, with its query if any.
    pub path: String,
    /// Headers, names lower-cased, in the order given.
    pub headers: Vec<(String, String)>,
}

impl RequestFacts {
    /// The path without its query.
    pub fn path_only(&self) -> &str {
        self.path.split('?').next().unwrap_or("")
    }

    /// The value of a header (several joined with `,`), if present.
    pub fn header(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    }

    /// The first value of a query parameter, if present.
    pub fn query_param(&self, name: &str) -> Option<String> {
        let query = self.path.split_once('?')?.1;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then(|| v.to_string())
        })
    }
}

impl HttpMatch {
    /// Whether `request` meets every condition: `Err` names the first that fails.
    pub fn check(&self, request: &RequestFacts) -> Result<(), String> {
        if let Some(path) = &self.path {
            path.check(request.path_only())?;
        }
        if let Some(method) = self.method {
            if request.method != method.as_str() {
                return Err(format!(
                    "method is {}, the rule wants {}",
                    request.method,
                    method.as_str()
                ));
            }
        }
        for h in &self.headers {
            let value = request.header(&h.name);
            if !h.value.check(value.as_deref()) {
                return Err(match value {
                    None => format!("header {} is absent, the rule wants it {}", h.name, h.value),
                    Some(v) => format!("header {} is {v:?}, the rule wants it {}", h.name, h.value),
                });
            }
        }
        for q in &self.query_params {
            let value = request.query_param(&q.name);
            if !q.value.check(value.as_deref()) {
                return Err(match value {
                    None => format!(
                        "query parameter {} is absent, the rule wants it {}",
                        q.name, q.value
                    ),
                    Some(v) => format!(
                        "query parameter {} is {v:?}, the rule wants it {}",
                        q.name, q.value
                    ),
                });
            }
        }
        Ok(())
    }
}

impl PathMatch {
    /// Whether `path` (without its query) meets the condition.
    pub fn check(&self, path: &str) -> Result<(), String> {
        let ok = match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => {
                let p = p.trim_end_matches('/');
                p.is_empty()
                    || path == p
                    || path
                        .strip_prefix(p)
                        .is_some_and(|rest| rest.starts_with('/'))
            }
            PathMatch::RegularExpression(re) => whole_match(re, path),
            PathMatch::Grpc {
                service,
                method,
                regex,
            } => {
                let mut parts = path.strip_prefix('/').unwrap_or("\u{0}").splitn(2, '/');
                let (s, m) = (parts.next().unwrap_or(""), parts.next());
                let part = |want: &Option<String>, got: Option<&str>| match (want, got) {
                    (_, None) => false,
                    (None, Some(got)) => !got.is_empty() && !got.contains('/'),
                    (Some(w), Some(got)) if *regex => whole_match(w, got),
                    (Some(w), Some(got)) => w == got,
                };
                match (service, method) {
                    // A service alone is a path prefix: `/<service>` and below.
                    (Some(_), None) if !*regex => part(service, Some(s)),
                    _ => part(service, Some(s)) && part(method, m),
                }
            }
        };
        if ok {
            Ok(())
        } else {
            Err(format!("path {path} does not match {self}"))
        }
    }
}

impl ValueMatch {
    /// Whether a value (`None`: absent) meets the condition.
    pub fn check(&self, value: Option<&str>) -> bool {
        match (self, value) {
            (_, None) => false,
            (ValueMatch::Present, Some(_)) => true,
            (ValueMatch::Exact(want), Some(v)) => v == want,
            (ValueMatch::Prefix(want), Some(v)) => v.starts_with(want.as_str()),
            (ValueMatch::RegularExpression(re), Some(v)) => whole_match(re, v),
        }
    }
}

/// Whether the RE2 expression matches all of `value` (an invalid one matches nothing; the
/// source refuses those before they get here).
fn whole_match(expression: &str, value: &str) -> bool {
    regex::Regex::new(&format!("^(?:{expression})$")).is_ok_and(|re| re.is_match(value))
}

impl std::fmt::Display for PathMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathMatch::Exact(p) => write!(f, "exactly {p}"),
            PathMatch::Prefix(p) => write!(f, "prefix {p}"),
            PathMatch::RegularExpression(p) => write!(f, "regex {p}"),
            PathMatch::Grpc {
                service,
                method,
                regex,
            } => write!(
                f,
                "gRPC {}{}/{}",
                if *regex { "regex " } else { "" },
                service.as_deref().unwrap_or("*"),
                method.as_deref().unwrap_or("*")
            ),
        }
    }
}

impl std::fmt::Display for ValueMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ValueMatch::Exact(v) => write!(f, "= {v:?}"),
            ValueMatch::Prefix(v) => write!(f, "to start with {v:?}"),
            ValueMatch::RegularExpression(v) => write!(f, "to match {v:?}"),
            ValueMatch::Present => write!(f, "present"),
        }
    }
}

impl std::fmt::Display for HttpMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(p) = &self.path {
            parts.push(format!("path {p}"));
        }
        if let Some(m) = self.method {
            parts.push(format!("method {}", m.as_str()));
        }
        for h in &self.headers {
            parts.push(format!("header {} {}", h.name, h.value));
        }
        for q in &self.query_params {
            parts.push(format!("query {} {}", q.name, q.value));
        }
        if parts.is_empty() {
            parts.push("every request".into());
        }
        f.write_str(&parts.join(", "))
    }
}
