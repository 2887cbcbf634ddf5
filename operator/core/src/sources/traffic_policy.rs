//! TrafficPolicy as a routing source: a spec in, a [`RouteSet`] of the route model or a
//! [`Rejection`] out, once per spec change.
//!
//! ```text
//! TrafficPolicySpec --parse--> RouteSet (durations parsed, names normalised, every
//!                                        destination a Backend naming its Service)
//!                          \-> Rejection (reason, field, fix)
//! ```
//!
//! Parsing checks what the API server cannot (regex syntax, subset references) plus the CEL
//! rules again, because local mode has no API server. Everything downstream (the binding to
//! Service ports, translation, status) reads the [`RouteSet`], never the raw spec; the
//! CRD's enums are mapped to the model's here and nowhere else. The
//! index keeps the last valid version of each policy so that an invalid edit never takes
//! down routing that worked.

use std::collections::BTreeSet;
use std::time::Duration;
use weir_api::{PathMatchType, StringMatchType, TrafficPolicySpec};

use crate::authorization::{
    Authorization, Callers, GrpcCondition, HttpConditions, MeshCallers, Mode, PortRef, Rule,
};
use crate::conditions::AcceptedReason as Reason;
use crate::object_key::ObjectKey;
use crate::routing::{
    AbortStatus, Algorithm, Backend, Balancer, Fault, HashKey, HeaderEdits, HttpMatch, HttpRule,
    Method, Mirror, NamedMatch, Outlier, PathMatch, Pool, RateLimit, Retry, RetryOn, RouteSet,
    Subset, Target, TcpRule, Upstream, ValueMatch, WeightedBackend,
};

/// Why a policy was rejected: a stable reason, the field at fault, and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Why, as reported in the `Accepted` condition.
    pub reason: Reason,
    /// JSON path of the offending field, e.g. `spec.http[0].destinations`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} ({})", self.field, self.message, self.reason)
    }
}

/// Checks a spec of a policy in `namespace` and types it. The first problem found is
/// reported, with every other one after it in the message.
pub fn parse(namespace: &str, spec: &TrafficPolicySpec) -> Result<RouteSet, Rejection> {
    let mut problems = Problems::default();
    if spec.target_ref.service.is_empty() {
        problems.invalid(
            "spec.targetRef.service",
            "is empty: name the Service this policy applies to",
        );
    }
    for (i, subset) in spec.subsets.iter().enumerate() {
        if spec.subsets[..i].iter().any(|s| s.name == subset.name) {
            problems.invalid(
                &format!("spec.subsets[{i}].name"),
                &format!(
                    "subset {:?} is defined twice: give each subset its own name",
                    subset.name
                ),
            );
        }
        if subset.labels.is_empty() {
            problems.invalid(
                &format!("spec.subsets[{i}].labels"),
                "is empty: a subset selects pods by at least one label, e.g. version: v2",
            );
        }
    }
    let http: Vec<HttpRule> = spec
        .http
        .iter()
        .enumerate()
        .map(|(i, rule)| parse_rule(namespace, spec, i, rule, &mut problems))
        .collect();
    let tcp: Vec<TcpRule> = spec
        .tcp
        .iter()
        .enumerate()
        .map(|(i, rule)| parse_tcp_rule(namespace, spec, i, rule, &mut problems))
        .collect();
    let upstream = parse_upstream(spec, &mut problems);
    let rate_limit = spec.local_rate_limit.as_ref().and_then(|r| {
            let field = "spec.localRateLimit.fillInterval";
            let fill_interval = parse_duration(field, &r.fill_interval, &mut problems)?;
            if fill_interval < Duration::from_millis(50) {
                problems.invalid(
                    field,
                    "is under 50ms: Envoy refills token buckets at most every 50ms; use a longer interval and more requests",
                );
            }
            Some(RateLimit {
                requests: r.requests.max(1),
                fill_interval,
            })
        });
    let authorization = spec
        .authorization
        .as_ref()
        .map(|a| parse_authorization(a, &mut problems));
    problems.into_result()?;
    Ok(RouteSet {
        target: Target {
            service: ObjectKey::new(namespace, spec.target_ref.service.clone()),
            port: spec.target_ref.port,
        },
        subsets: spec
            .subsets
            .iter()
            .map(|s| Subset {
                name: s.name.clone(),
                labels: s.labels.clone(),
            })
            .collect(),
        http,
        tcp,
        upstream,
        rate_limit,
        authorization,
        unsupported: unsupported_fields(spec),
    })
}

/// `spec.authorization`: rules checked (a condition at least, `namespace/name` service
/// accounts, SPIFFE identities, absolute paths, unique names), typed.
fn parse_authorization(a: &weir_api::Authorization, problems: &mut Problems) -> Authorization {
    let mut names = BTreeSet::new();
    let mut rules = |kind: &str, rules: &[weir_api::AuthorizationRule]| -> Vec<Rule> {
        rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let at = format!("spec.authorization.{kind}[{i}]");
                let name = r.name.clone().unwrap_or_else(|| format!("{kind}[{i}]"));
                if !names.insert(name.clone()) {
                    problems.invalid(
                        &format!("{at}.name"),
                        &format!("rule name {name:?} is used twice: give each rule its own name"),
                    );
                }
                parse_authorization_rule(&at, name, r, problems)
            })
            .collect()
    };
    let deny = rules("deny", &a.deny);
    let allow = rules("allow", &a.allow);
    Authorization {
        mode: match a.mode {
            weir_api::AuthorizationMode::Enforce => Mode::Enforce,
            weir_api::AuthorizationMode::Audit => Mode::Audit,
        },
        default_deny: a.default_deny,
        allow,
        deny,
    }
}

fn parse_authorization_rule(
    at: &str,
    name: String,
    r: &weir_api::AuthorizationRule,
    problems: &mut Problems,
) -> Rule {
    let unauthenticated = r.unauthenticated == Some(true);
    let has_identity =
        !r.identities.is_empty() || !r.service_accounts.is_empty() || !r.namespaces.is_empty();
    let http = HttpConditions {
        paths: r.paths.clone(),
        methods: r.methods.iter().map(|m| method(*m)).collect(),
        grpc: r.grpc.as_ref().map(|g| GrpcCondition {
            service: g.service.clone(),
            method: g.method.clone(),
        }),
        headers: parse_header_matches(at, &r.headers, problems),
    };
    if !has_identity && !unauthenticated && r.ports.is_empty() && http.is_empty() {
        problems.invalid(
            at,
            "has no condition: give at least one of identities, serviceAccounts, namespaces, unauthenticated, ports, paths, methods, grpc or headers (a rule for every caller is `namespaces` of all, or defaultDeny: false)",
        );
    }
    if unauthenticated && has_identity {
        problems.invalid(
            &format!("{at}.unauthenticated"),
            "cannot be combined with identities, serviceAccounts or namespaces: callers without a mesh identity have none; write two rules",
        );
    }
    for (j, id) in r.identities.iter().enumerate() {
        if crate::identity::SpiffeId::parse(id).is_err() {
            problems.invalid(
                &format!("{at}.identities[{j}]"),
                &format!("{id:?} is not a workload SPIFFE ID: write spiffe://<trust domain>/ns/<namespace>/sa/<service account>"),
            );
        }
    }
    let mut service_accounts = Vec::new();
    for (j, sa) in r.service_accounts.iter().enumerate() {
        match sa.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                service_accounts.push((ns.to_string(), name.to_string()))
            }
            _ => problems.invalid(
                &format!("{at}.serviceAccounts[{j}]"),
                &format!("{sa:?} is not namespace/name: write e.g. shop/web"),
            ),
        }
    }
    for (j, p) in r.paths.iter().enumerate() {
        if !p.starts_with('/') {
            problems.invalid(
                &format!("{at}.paths[{j}]"),
                &format!("{p:?} does not start with '/': write the path as the request has it, e.g. /api"),
            );
        }
    }
    let mut ports = Vec::new();
    for (j, p) in r.ports.iter().enumerate() {
        match PortRef::from_int_or_string(p) {
            Some(p) => ports.push(p),
            None => problems.invalid(
                &format!("{at}.ports[{j}]"),
                "is not a port: give a Service port number (1-65535) or name",
            ),
        }
    }
    let callers = if unauthenticated {
        Callers::Unauthenticated
    } else if has_identity {
        Callers::Mesh(MeshCallers {
            identities: r.identities.clone(),
            service_accounts,
            namespaces: r.namespaces.clone(),
        })
    } else {
        Callers::Any
    };
    Rule {
        name,
        callers,
        ports,
        http,
    }
}

/// The problems found in one spec, in the order found.
#[derive(Default)]
struct Problems(Vec<Rejection>);

impl Problems {
    fn report(&mut self, reason: Reason, field: &str, message: impl Into<String>) {
        self.0.push(Rejection {
            reason,
            field: field.to_string(),
            message: message.into(),
        });
    }

    fn invalid(&mut self, field: &str, message: &str) {
        self.report(Reason::InvalidField, field, message);
    }

    /// The first problem, with the others listed in its message.
    fn into_result(self) -> Result<(), Rejection> {
        let Some(first) = self.0.first().cloned() else {
            return Ok(());
        };
        let mut message = first.message.clone();
        for more in &self.0[1..] {
            message.push_str(&format!("; also {}: {}", more.field, more.message));
        }
        Err(Rejection { message, ..first })
    }
}

fn parse_rule(
    namespace: &str,
    spec: &TrafficPolicySpec,
    i: usize,
    rule: &weir_api::HttpRule,
    problems: &mut Problems,
) -> HttpRule {
    let at = format!("spec.http[{i}]");
    let backends = parse_backends(namespace, spec, &at, &rule.destinations, problems);
    let matches = rule
        .matches
        .iter()
        .enumerate()
        .map(|(k, m)| parse_match(&format!("{at}.matches[{k}]"), m, problems))
        .collect();
    let timeout = rule
        .timeout
        .as_ref()
        .and_then(|t| parse_duration(&format!("{at}.timeout"), t, problems));
    let retry = rule.retries.as_ref().map(|r| {
        if r.attempts > 10 {
            problems.invalid(
                &format!("{at}.retries.attempts"),
                "is over 10: retry at most 10 times",
            );
        }
        Retry {
            attempts: r.attempts,
            per_try_timeout: r
                .per_try_timeout
                .as_ref()
                .and_then(|t| parse_duration(&format!("{at}.retries.perTryTimeout"), t, problems)),
            retry_on: r.retry_on.iter().map(|c| retry_on(*c)).collect(),
        }
    });
    let request_headers = rule
        .request_headers
        .as_ref()
        .map(|h| {
            let lower = |v: &[weir_api::HeaderValue]| {
                v.iter()
                    .map(|h| (h.name.to_ascii_lowercase(), h.value.clone()))
                    .collect()
            };
            HeaderEdits {
                set: lower(&h.set),
                add: lower(&h.add),
                remove: h.remove.clone(),
            }
        })
        .unwrap_or_default();
    let fault = rule
        .fault
        .as_ref()
        .map(|f| parse_fault(&format!("{at}.fault"), f, problems));
    let mirror = rule.mirror.as_ref().map(|m| {
        let field = format!("{at}.mirror");
        let dest = weir_api::Destination {
            subset: m.subset.clone(),
            service: m.service.clone(),
            port: m.port,
            ..Default::default()
        };
        if m.subset.is_none() && m.service.is_none() {
            problems.invalid(
                &field,
                "names no destination: set subset (of the target Service) or service (another Service in the policy's namespace)",
            );
        }
        let parsed = parse_destination(namespace, spec, &field, &dest, problems);
        Mirror {
            backend: parsed.backend,
            percent: m.percent.unwrap_or(100).min(100),
        }
    });
    HttpRule {
        name: rule.name.clone().unwrap_or_else(|| format!("rule-{i}")),
        matches,
        backends,
        timeout,
        retry,
        request_headers,
        fault,
        mirror,
        response_headers: HeaderEdits::default(),
        redirect: None,
        rewrite: None,
        backend_timeout: None,
        unresolved_status: crate::routing::UNRESOLVED_STATUS,
    }
}

/// Conditions on headers at `<at>.headers` (names lower-cased).
fn parse_header_matches(
    at: &str,
    headers: &[weir_api::HeaderMatch],
    problems: &mut Problems,
) -> Vec<NamedMatch> {
    headers
        .iter()
        .enumerate()
        .map(|(h, header)| NamedMatch {
            name: header.name.to_ascii_lowercase(),
            value: parse_value_match(
                &format!("{at}.headers[{h}]"),
                header.match_type,
                header.value.as_deref(),
                problems,
            ),
        })
        .collect()
}

fn parse_fault(at: &str, f: &weir_api::FaultInjection, problems: &mut Problems) -> Fault {
    if f.delay.is_none() && f.abort.is_none() {
        problems.invalid(at, "injects nothing: set delay, abort, or both");
    }
    let delay = f.delay.as_ref().and_then(|d| {
        let delay = parse_duration(&format!("{at}.delay.fixedDelay"), &d.fixed_delay, problems)?;
        Some((delay, d.percent.min(100)))
    });
    let abort = f.abort.as_ref().and_then(|a| {
        let field = format!("{at}.abort");
        let status = match (a.http_status, a.grpc_status) {
            (Some(code), None) if (200..=599).contains(&code) => AbortStatus::Http(code),
            (Some(code), None) => {
                problems.invalid(
                    &format!("{field}.httpStatus"),
                    &format!("{code} is not an HTTP status: use 200 to 599, e.g. 503"),
                );
                return None;
            }
            (None, Some(code)) if code <= 16 => AbortStatus::Grpc(code),
            (None, Some(code)) => {
                problems.invalid(
                    &format!("{field}.grpcStatus"),
                    &format!(
                        "{code} is not a gRPC status code: use 0 to 16, e.g. 14 (UNAVAILABLE)"
                    ),
                );
                return None;
            }
            _ => {
                problems.invalid(&field, "set httpStatus or grpcStatus, exactly one");
                return None;
            }
        };
        Some((status, a.percent.min(100)))
    });
    let headers = parse_header_matches(at, &f.headers, problems);
    Fault {
        delay,
        abort,
        headers,
    }
}

fn parse_upstream(spec: &TrafficPolicySpec, problems: &mut Problems) -> Upstream {
    Upstream {
        pool: spec
            .connection_pool
            .as_ref()
            .map(|p| parse_pool(p, problems)),
        outlier: spec
            .outlier_detection
            .as_ref()
            .map(|o| parse_outlier(o, problems)),
        balancer: spec
            .load_balancer
            .as_ref()
            .map(|lb| parse_balancer(lb, problems)),
    }
}

/// An optional duration at `field`.
fn optional_duration(
    field: &str,
    d: &Option<weir_api::Duration>,
    problems: &mut Problems,
) -> Option<Duration> {
    d.as_ref().and_then(|d| parse_duration(field, d, problems))
}

fn parse_pool(p: &weir_api::ConnectionPool, problems: &mut Problems) -> Pool {
    let duration = optional_duration;
    Pool {
        max_connections: p.max_connections,
        max_pending_requests: p.max_pending_requests,
        max_requests: p.max_requests,
        max_retries: p.max_retries,
        max_requests_per_connection: p.max_requests_per_connection,
        connect_timeout: duration(
            "spec.connectionPool.connectTimeout",
            &p.connect_timeout,
            problems,
        ),
        idle_timeout: duration("spec.connectionPool.idleTimeout", &p.idle_timeout, problems),
        retry_budget: p.retry_budget.as_ref().map(|b| {
            if b.percent > 100 {
                problems.invalid(
                    "spec.connectionPool.retryBudget.percent",
                    "is over 100: it is a percentage of the requests in flight",
                );
            }
            (b.percent.min(100), b.min_retry_concurrency)
        }),
    }
}

fn parse_outlier(o: &weir_api::OutlierDetection, problems: &mut Problems) -> Outlier {
    let duration = optional_duration;
    if o.consecutive_errors.is_none() && o.consecutive_gateway_errors.is_none() {
        problems.invalid(
                "spec.outlierDetection",
                "ejects nothing: set consecutiveErrors (any 5xx), consecutiveGatewayErrors (502, 503, 504), or both",
            );
    }
    Outlier {
        consecutive_errors: o.consecutive_errors,
        consecutive_gateway_errors: o.consecutive_gateway_errors,
        interval: duration("spec.outlierDetection.interval", &o.interval, problems),
        base_ejection_time: duration(
            "spec.outlierDetection.baseEjectionTime",
            &o.base_ejection_time,
            problems,
        ),
        max_ejection_percent: o.max_ejection_percent.map(|p| p.min(100)),
    }
}

fn parse_balancer(lb: &weir_api::LoadBalancer, problems: &mut Problems) -> Balancer {
    let duration = optional_duration;
    use weir_api::LoadBalancerAlgorithm::{Maglev, RingHash};
    let hashing = matches!(lb.algorithm, RingHash | Maglev);
    let field = "spec.loadBalancer.consistentHash";
    let hash = match (&lb.consistent_hash, hashing) {
        (None, true) => {
            problems.invalid(field, "is missing: RingHash and Maglev hash each request by a header, cookie, sourceIp or queryParameter; set one");
            None
        }
        (Some(_), false) => {
            problems.invalid(field, "is set but the algorithm does not hash: use RingHash or Maglev, or remove consistentHash");
            None
        }
        (None, false) => None,
        (Some(h), true) => {
            let mut keys = Vec::new();
            let token = |s: &str| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
            };
            if let Some(header) = &h.header {
                if !token(header) {
                    problems.invalid(&format!("{field}.header"), &format!("{header:?} is not a header name: use letters, digits and !#$%&'*+-.^_`|~ only, e.g. x-user"));
                }
                keys.push(HashKey::Header(header.to_ascii_lowercase()));
            }
            if let Some(cookie) = &h.cookie {
                if !token(&cookie.name) {
                    problems.invalid(&format!("{field}.cookie.name"), &format!("{:?} is not a cookie name: use letters, digits and !#$%&'*+-.^_`|~ only", cookie.name));
                }
                if let Some(path) = cookie.path.as_deref().filter(|p| {
                    !p.starts_with('/') || p.bytes().any(|b| !(0x21..=0x7e).contains(&b))
                }) {
                    problems.invalid(&format!("{field}.cookie.path"), &format!("{path:?} is not a cookie path: start with / and use visible ASCII only"));
                }
            }
            if let Some(cookie) = &h.cookie {
                keys.push(HashKey::Cookie {
                    name: cookie.name.clone(),
                    ttl: duration(&format!("{field}.cookie.ttl"), &cookie.ttl, problems),
                    path: cookie.path.clone(),
                });
            }
            if h.source_ip == Some(true) {
                keys.push(HashKey::SourceIp);
            }
            if let Some(q) = &h.query_parameter {
                keys.push(HashKey::QueryParameter(q.clone()));
            }
            if keys.len() != 1 {
                problems.invalid(
                    field,
                    "hash by exactly one of header, cookie, sourceIp or queryParameter",
                );
            }
            keys.into_iter().next()
        }
    };
    Balancer {
        algorithm: algorithm(lb.algorithm),
        hash,
    }
}

fn parse_tcp_rule(
    namespace: &str,
    spec: &TrafficPolicySpec,
    i: usize,
    rule: &weir_api::TcpRule,
    problems: &mut Problems,
) -> TcpRule {
    let at = format!("spec.tcp[{i}]");
    let backends = parse_backends(namespace, spec, &at, &rule.destinations, problems);
    let sni_hosts = rule
        .sni_hosts
        .iter()
        .enumerate()
        .map(|(k, host)| {
            let host = host.to_ascii_lowercase();
            let name = host.strip_prefix("*.").unwrap_or(&host);
            let valid = !name.is_empty()
                && name.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                });
            if !valid {
                problems.invalid(
                    &format!("{at}.sniHosts[{k}]"),
                    &format!("{host:?} is not a host name: write a DNS name such as db.example.com, or *.example.com for every name under it"),
                );
            }
            host
        })
        .collect();
    TcpRule {
        name: rule.name.clone().unwrap_or_else(|| format!("tcp-{i}")),
        sni_hosts,
        backends,
    }
}

/// A rule's destinations (at `<at>.destinations`): weights checked, each one typed.
fn parse_backends(
    namespace: &str,
    spec: &TrafficPolicySpec,
    at: &str,
    destinations: &[weir_api::Destination],
    problems: &mut Problems,
) -> Vec<WeightedBackend> {
    check_weights(at, destinations, problems);
    destinations
        .iter()
        .enumerate()
        .map(|(j, dest)| {
            let field = format!("{at}.destinations[{j}]");
            parse_destination(namespace, spec, &field, dest, problems)
        })
        .collect()
}

fn check_weights(at: &str, dests: &[weir_api::Destination], problems: &mut Problems) {
    if dests.is_empty() {
        problems.invalid(
            &format!("{at}.destinations"),
            "is empty: a rule needs at least one destination",
        );
    } else if dests.len() == 1 {
        if let Some(w) = dests[0].weight.filter(|w| *w != 100) {
            problems.report(
                Reason::InvalidWeights,
                &format!("{at}.destinations[0].weight"),
                format!(
                    "is {w} but a single destination takes all traffic: set 100 or omit the weight"
                ),
            );
        }
    } else {
        let weights: Vec<Option<u32>> = dests.iter().map(|d| d.weight).collect();
        if let Some(j) = weights.iter().position(Option::is_none) {
            problems.report(
                Reason::InvalidWeights,
                &format!("{at}.destinations[{j}].weight"),
                "is missing: with several destinations every one needs a weight, and the weights sum to 100",
            );
        } else {
            let sum: u32 = weights.iter().flatten().sum();
            if sum != 100 {
                let listed: Vec<String> = weights.iter().flatten().map(u32::to_string).collect();
                problems.report(
                    Reason::InvalidWeights,
                    &format!("{at}.destinations"),
                    format!(
                        "weights {} sum to {sum}: make them sum to 100",
                        listed.join("/")
                    ),
                );
            }
        }
    }
}

fn parse_destination(
    namespace: &str,
    spec: &TrafficPolicySpec,
    field: &str,
    dest: &weir_api::Destination,
    problems: &mut Problems,
) -> WeightedBackend {
    if dest.subset.is_some() && dest.service.is_some() {
        problems.invalid(field, "sets both subset and service: set subset (of the target Service) or service (another Service)");
    }
    if let Some(subset) = &dest.subset {
        if !spec.subsets.iter().any(|s| &s.name == subset) {
            let defined: Vec<&str> = spec.subsets.iter().map(|s| s.name.as_str()).collect();
            problems.report(
                Reason::UnknownSubset,
                &format!("{field}.subset"),
                format!(
                    "names subset {subset:?}, which spec.subsets does not define (defined: {}): add it to spec.subsets or fix the name",
                    if defined.is_empty() { "none".to_string() } else { defined.join(", ") }
                ),
            );
        }
    }
    if dest.weight.is_some_and(|w| w > 100) {
        problems.report(
            Reason::InvalidWeights,
            &format!("{field}.weight"),
            "is over 100: weights are percentages",
        );
    }
    let target = || ObjectKey::new(namespace, spec.target_ref.service.clone());
    let backend = match (&dest.subset, &dest.service) {
        (Some(subset), _) => Backend {
            service: target(),
            port: None,
            subset: Some(subset.clone()),
        },
        (None, Some(service)) => Backend {
            service: ObjectKey::new(
                dest.namespace.as_deref().unwrap_or(namespace),
                service.clone(),
            ),
            port: dest.port,
            subset: None,
        },
        (None, None) => Backend {
            service: target(),
            port: None,
            subset: None,
        },
    };
    WeightedBackend {
        backend,
        weight: dest.weight.unwrap_or(100),
        request_headers: HeaderEdits::default(),
        response_headers: HeaderEdits::default(),
    }
}

fn parse_match(at: &str, m: &weir_api::HttpMatch, problems: &mut Problems) -> HttpMatch {
    let path = m.path.as_ref().map(|path| {
        let field = format!("{at}.path.value");
        match path.match_type {
            PathMatchType::RegularExpression => {
                check_regex(&field, &path.value, problems);
                PathMatch::RegularExpression(path.value.clone())
            }
            _ if !path.value.starts_with('/') => {
                problems.invalid(
                    &field,
                    &format!(
                        "{:?} does not start with '/': an Exact or Prefix path is absolute",
                        path.value
                    ),
                );
                PathMatch::Exact(path.value.clone())
            }
            PathMatchType::Exact => PathMatch::Exact(path.value.clone()),
            PathMatchType::Prefix => PathMatch::Prefix(path.value.clone()),
        }
    });
    let path = match (&m.grpc, path) {
        (Some(grpc), None) => Some(parse_grpc_match(&format!("{at}.grpc"), grpc, problems)),
        (Some(_), Some(path)) => {
            problems.invalid(
                &format!("{at}.grpc"),
                "is set with path, and both match the path: use one of them",
            );
            Some(path)
        }
        (None, path) => path,
    };
    let headers = parse_header_matches(at, &m.headers, problems);
    let query_params = m
        .query_params
        .iter()
        .enumerate()
        .map(|(q, param)| NamedMatch {
            name: param.name.clone(),
            value: parse_value_match(
                &format!("{at}.queryParams[{q}]"),
                param.match_type,
                param.value.as_deref(),
                problems,
            ),
        })
        .collect();
    HttpMatch {
        path,
        headers,
        query_params,
        method: m.method.map(method),
    }
}

/// A gRPC service and method as a path match, checked like Gateway API's GRPCRoute:
/// exact names are proto identifiers, regular expressions compile.
fn parse_grpc_match(at: &str, grpc: &weir_api::GrpcMatch, problems: &mut Problems) -> PathMatch {
    let regex = grpc.match_type == weir_api::GrpcMatchType::RegularExpression;
    let parts = [
        ("service", grpc.service.as_deref(), true),
        ("method", grpc.method.as_deref(), false),
    ];
    for (field, value, dotted) in parts {
        let Some(value) = value else { continue };
        let field = format!("{at}.{field}");
        if regex {
            check_regex(&field, value, problems);
        } else if !is_proto_name(value, dotted) {
            let example = if dotted { "shop.v1.Cart" } else { "AddItem" };
            problems.invalid(
                &field,
                &format!("{value:?} is not a gRPC {} name (letters, digits and _{}, e.g. {example}): fix the name, or set type: RegularExpression", if dotted { "service" } else { "method" }, if dotted { ", with . between parts" } else { "" }),
            );
        }
    }
    if grpc.service.is_none() && grpc.method.is_none() {
        problems.invalid(at, "names neither a service nor a method: name one or both");
    }
    PathMatch::Grpc {
        service: grpc.service.clone(),
        method: grpc.method.clone(),
        regex,
    }
}

/// A protobuf identifier, or a dotted full name when `dotted`.
fn is_proto_name(name: &str, dotted: bool) -> bool {
    let ident = |part: &str| {
        part.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    if dotted {
        name.split('.').all(ident)
    } else {
        ident(name)
    }
}

fn parse_value_match(
    field: &str,
    match_type: StringMatchType,
    value: Option<&str>,
    problems: &mut Problems,
) -> ValueMatch {
    let value_field = format!("{field}.value");
    match (match_type, value) {
        (StringMatchType::Present, Some(_)) => {
            problems.invalid(
                &value_field,
                "is set with type Present: remove the value or pick another type",
            );
            ValueMatch::Present
        }
        (StringMatchType::Present, None) => ValueMatch::Present,
        (_, None) => {
            problems.invalid(
                &value_field,
                "is missing: Exact, Prefix and RegularExpression need a value",
            );
            ValueMatch::Present
        }
        (StringMatchType::RegularExpression, Some(v)) => {
            check_regex(&value_field, v, problems);
            ValueMatch::RegularExpression(v.to_string())
        }
        (StringMatchType::Exact, Some(v)) => ValueMatch::Exact(v.to_string()),
        (StringMatchType::Prefix, Some(v)) => ValueMatch::Prefix(v.to_string()),
    }
}

fn check_regex(field: &str, pattern: &str, problems: &mut Problems) {
    if let Some(message) = super::regex_problem(pattern) {
        problems.report(Reason::InvalidRegex, field, message);
    }
}

fn parse_duration(
    field: &str,
    d: &weir_api::Duration,
    problems: &mut Problems,
) -> Option<Duration> {
    match d.to_std() {
        Err(err) => {
            problems.report(Reason::InvalidDuration, field, err.to_string());
            None
        }
        Ok(v) if v == Duration::ZERO => {
            problems.report(
                Reason::InvalidDuration,
                field,
                "is zero: give a positive duration, or omit the field for no limit",
            );
            None
        }
        Ok(v) => Some(v),
    }
}

/// The CRD's method as the model's.
fn method(m: weir_api::HttpMethod) -> Method {
    use weir_api::HttpMethod as M;
    match m {
        M::Get => Method::Get,
        M::Head => Method::Head,
        M::Post => Method::Post,
        M::Put => Method::Put,
        M::Delete => Method::Delete,
        M::Connect => Method::Connect,
        M::Options => Method::Options,
        M::Trace => Method::Trace,
        M::Patch => Method::Patch,
    }
}

/// The CRD's retry condition as the model's.
fn retry_on(c: weir_api::RetryOn) -> RetryOn {
    use weir_api::RetryOn as R;
    match c {
        R::FiveXx => RetryOn::FiveXx,
        R::GatewayError => RetryOn::GatewayError,
        R::Reset => RetryOn::Reset,
        R::ConnectFailure => RetryOn::ConnectFailure,
        R::RefusedStream => RetryOn::RefusedStream,
        R::Retriable4xx => RetryOn::Retriable4xx,
        R::EnvoyRateLimited => RetryOn::EnvoyRateLimited,
        R::Cancelled => RetryOn::Cancelled,
        R::DeadlineExceeded => RetryOn::DeadlineExceeded,
        R::ResourceExhausted => RetryOn::ResourceExhausted,
        R::Unavailable => RetryOn::Unavailable,
        R::Internal => RetryOn::Internal,
    }
}

/// The CRD's balancing algorithm as the model's.
fn algorithm(a: weir_api::LoadBalancerAlgorithm) -> Algorithm {
    use weir_api::LoadBalancerAlgorithm as A;
    match a {
        A::RoundRobin => Algorithm::RoundRobin,
        A::LeastRequest => Algorithm::LeastRequest,
        A::Random => Algorithm::Random,
        A::RingHash => Algorithm::RingHash,
        A::Maglev => Algorithm::Maglev,
    }
}

/// Fields the API accepts that translation does not apply yet.
/// Fields the spec may carry that are not translated yet: none today (every field of the
/// CRD is); kept so that a field added to the CRD before its translation is named, not
/// silently ignored.
fn unsupported_fields(_spec: &TrafficPolicySpec) -> Vec<String> {
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{mk_policy_spec, mk_rule};
    use weir_api::{Destination, HttpMatch};

    fn parse(spec: &TrafficPolicySpec) -> Result<RouteSet, Rejection> {
        super::parse("default", spec)
    }

    #[test]
    fn a_split_that_sums_to_100_is_accepted() {
        let subset = |name: &str| Backend {
            service: ObjectKey::new("default", "reviews"),
            port: None,
            subset: Some(name.into()),
        };
        let spec = mk_policy_spec("reviews", &[("v1", 80), ("v2", 20)]);
        let policy = parse(&spec).unwrap();
        assert!(policy.unsupported.is_empty());
        assert_eq!(
            policy.http[0].backends,
            vec![
                WeightedBackend {
                    backend: subset("v1"),
                    weight: 80,
                    request_headers: HeaderEdits::default(),
                    response_headers: HeaderEdits::default(),
                },
                WeightedBackend {
                    backend: subset("v2"),
                    weight: 20,
                    request_headers: HeaderEdits::default(),
                    response_headers: HeaderEdits::default(),
                },
            ]
        );
    }

    #[test]
    fn weights_70_20_name_the_field_and_the_sum() {
        let spec = mk_policy_spec("reviews", &[("v1", 70), ("v2", 20)]);
        let err = parse(&spec).unwrap_err();
        assert_eq!(err.reason, Reason::InvalidWeights);
        assert_eq!(err.field, "spec.http[0].destinations");
        assert!(err.message.contains("70/20 sum to 90"), "{}", err.message);
    }

    #[test]
    fn an_unknown_subset_names_the_defined_ones() {
        let mut spec = mk_policy_spec("reviews", &[("v1", 50), ("v2", 50)]);
        spec.http[0].destinations[1].subset = Some("v3".into());
        let err = parse(&spec).unwrap_err();
        assert_eq!(err.reason, Reason::UnknownSubset);
        assert_eq!(err.field, "spec.http[0].destinations[1].subset");
        assert!(err.message.contains("v1, v2"), "{}", err.message);
    }

    #[test]
    fn a_bad_regex_is_rejected_with_its_field() {
        let mut spec = mk_policy_spec("reviews", &[("v1", 100)]);
        spec.http[0].matches = vec![HttpMatch {
            path: Some(weir_api::PathMatch {
                match_type: PathMatchType::RegularExpression,
                value: "/api/(v1".into(),
            }),
            ..Default::default()
        }];
        let err = parse(&spec).unwrap_err();
        assert_eq!(err.reason, Reason::InvalidRegex);
        assert_eq!(err.field, "spec.http[0].matches[0].path.value");
    }

    #[test]
    fn every_problem_is_listed_in_the_message() {
        let mut spec = mk_policy_spec("reviews", &[("v1", 70), ("v2", 20)]);
        spec.http.push(mk_rule(vec![Destination {
            subset: Some("nope".into()),
            ..Default::default()
        }]));
        let err = parse(&spec).unwrap_err();
        assert!(
            err.message.contains("spec.http[1].destinations[0].subset"),
            "{}",
            err.message
        );
    }

    #[test]
    fn authorization_rules_are_typed_and_bad_ones_name_the_field() {
        use weir_api::{AuthorizationMode, AuthorizationRule};
        let mut spec = mk_policy_spec("reviews", &[("v1", 100)]);
        spec.authorization = Some(weir_api::Authorization {
            mode: AuthorizationMode::Audit,
            default_deny: true,
            allow: vec![AuthorizationRule {
                service_accounts: vec!["shop/web".into()],
                paths: vec!["/api".into()],
                ..Default::default()
            }],
            deny: vec![AuthorizationRule {
                name: Some("no-robots".into()),
                namespaces: vec!["robots".into()],
                ..Default::default()
            }],
        });
        let parsed = parse(&spec).unwrap();
        assert!(parsed.unsupported.is_empty());
        let authz = parsed.authorization.unwrap();
        assert_eq!(authz.mode, Mode::Audit);
        assert_eq!(authz.allow[0].name, "allow[0]");
        assert_eq!(authz.deny[0].name, "no-robots");
        assert_eq!(
            authz.allow[0].callers,
            Callers::Mesh(MeshCallers {
                service_accounts: vec![("shop".into(), "web".into())],
                ..Default::default()
            })
        );

        let bad = |rule: AuthorizationRule| {
            let mut spec = spec.clone();
            spec.authorization.as_mut().unwrap().allow = vec![rule];
            parse(&spec).unwrap_err()
        };
        let err = bad(AuthorizationRule::default());
        assert_eq!(err.field, "spec.authorization.allow[0]");
        let err = bad(AuthorizationRule {
            service_accounts: vec!["web".into()],
            ..Default::default()
        });
        assert_eq!(err.field, "spec.authorization.allow[0].serviceAccounts[0]");
        assert!(err.message.contains("shop/web"), "{}", err.message);
        let err = bad(AuthorizationRule {
            identities: vec!["shop/web".into()],
            ..Default::default()
        });
        assert_eq!(err.field, "spec.authorization.allow[0].identities[0]");
        let err = bad(AuthorizationRule {
            paths: vec!["api".into()],
            ..Default::default()
        });
        assert_eq!(err.field, "spec.authorization.allow[0].paths[0]");
        let err = bad(AuthorizationRule {
            unauthenticated: Some(true),
            namespaces: vec!["shop".into()],
            ..Default::default()
        });
        assert_eq!(err.field, "spec.authorization.allow[0].unauthenticated");
    }

    #[test]
    fn resilience_fields_are_checked_and_name_the_field() {
        use weir_api::{
            ConsistentHash, FaultAbort, FaultInjection, LoadBalancer, LoadBalancerAlgorithm,
            LocalRateLimit, Mirror as ApiMirror, OutlierDetection,
        };
        let reject = |spec: &TrafficPolicySpec| parse(spec).unwrap_err();
        let base = mk_policy_spec("reviews", &[("v1", 100)]);

        let mut spec = base.clone();
        spec.load_balancer = Some(LoadBalancer {
            algorithm: LoadBalancerAlgorithm::RingHash,
            consistent_hash: None,
        });
        let r = reject(&spec);
        assert_eq!(r.field, "spec.loadBalancer.consistentHash");
        assert!(r.message.contains("set one"), "{r}");

        let mut spec = base.clone();
        spec.load_balancer = Some(LoadBalancer {
            algorithm: LoadBalancerAlgorithm::Maglev,
            consistent_hash: Some(ConsistentHash {
                header: Some("x-user".into()),
                source_ip: Some(true),
                ..Default::default()
            }),
        });
        assert!(reject(&spec).message.contains("exactly one"));

        let mut spec = base.clone();
        spec.outlier_detection = Some(OutlierDetection::default());
        assert_eq!(reject(&spec).field, "spec.outlierDetection");

        let mut spec = base.clone();
        spec.local_rate_limit = Some(LocalRateLimit {
            requests: 10,
            fill_interval: weir_api::Duration("10ms".into()),
        });
        let r = reject(&spec);
        assert_eq!(r.field, "spec.localRateLimit.fillInterval");
        assert!(r.message.contains("50ms"), "{r}");

        let mut spec = base.clone();
        spec.http[0].fault = Some(FaultInjection {
            abort: Some(FaultAbort {
                http_status: Some(503),
                grpc_status: Some(14),
                percent: 10,
            }),
            ..Default::default()
        });
        assert_eq!(reject(&spec).field, "spec.http[0].fault.abort");

        let mut spec = base.clone();
        spec.http[0].fault = Some(FaultInjection::default());
        assert_eq!(reject(&spec).field, "spec.http[0].fault");

        let mut spec = base.clone();
        spec.http[0].mirror = Some(ApiMirror {
            subset: Some("shadow".into()),
            ..Default::default()
        });
        let r = reject(&spec);
        assert_eq!(r.field, "spec.http[0].mirror.subset");
        assert_eq!(r.reason, Reason::UnknownSubset);

        let mut spec = base;
        spec.http[0].mirror = Some(ApiMirror {
            service: Some("reviews-shadow".into()),
            percent: Some(25),
            ..Default::default()
        });
        let policy = parse(&spec).unwrap();
        let mirror = policy.http[0].mirror.as_ref().unwrap();
        assert_eq!(mirror.percent, 25);
        assert!(mirror.backend.service.name == "reviews-shadow" && mirror.backend.subset.is_none());
    }

    #[test]
    fn a_malformed_duration_is_rejected() {
        let mut spec = mk_policy_spec("reviews", &[("v1", 100)]);
        spec.http[0].timeout = Some(weir_api::Duration("2 seconds".into()));
        let err = parse(&spec).unwrap_err();
        assert_eq!(err.reason, Reason::InvalidDuration);
        assert_eq!(err.field, "spec.http[0].timeout");
    }

    #[test]
    fn grpc_matches_are_checked_as_names_or_regexes() {
        let mut spec = mk_policy_spec("greeter", &[("v1", 100)]);
        let grpc = |service: Option<&str>, method: Option<&str>, regex: bool| HttpMatch {
            grpc: Some(weir_api::GrpcMatch {
                match_type: if regex {
                    weir_api::GrpcMatchType::RegularExpression
                } else {
                    weir_api::GrpcMatchType::Exact
                },
                service: service.map(str::to_string),
                method: method.map(str::to_string),
            }),
            ..Default::default()
        };
        spec.http[0].matches = vec![grpc(Some("shop.v1.Cart"), Some("AddItem"), false)];
        let policy = parse(&spec).unwrap();
        assert_eq!(
            policy.http[0].matches[0].path,
            Some(PathMatch::Grpc {
                service: Some("shop.v1.Cart".into()),
                method: Some("AddItem".into()),
                regex: false
            })
        );
        spec.http[0].matches = vec![grpc(Some("shop/v1"), None, false)];
        let err = parse(&spec).unwrap_err();
        assert_eq!(err.field, "spec.http[0].matches[0].grpc.service");
        assert!(
            err.message.contains("type: RegularExpression"),
            "{}",
            err.message
        );
        spec.http[0].matches = vec![grpc(None, Some("Get(.*"), true)];
        let err = parse(&spec).unwrap_err();
        assert_eq!(err.reason, Reason::InvalidRegex);
        assert_eq!(err.field, "spec.http[0].matches[0].grpc.method");
    }

    #[test]
    fn tcp_rules_check_weights_and_sni_hosts() {
        let mut spec = mk_policy_spec("redis", &[("v1", 50), ("v2", 50)]);
        spec.tcp = vec![weir_api::TcpRule {
            name: None,
            sni_hosts: vec!["DB.example.com".into(), "*.example.com".into()],
            destinations: spec.http[0].destinations.clone(),
        }];
        spec.http.clear();
        let policy = parse(&spec).unwrap();
        assert_eq!(policy.tcp[0].name, "tcp-0");
        assert_eq!(policy.tcp[0].sni_hosts, ["db.example.com", "*.example.com"]);
        spec.tcp[0].sni_hosts = vec!["not a host".into()];
        spec.tcp[0].destinations[0].weight = Some(60);
        let err = parse(&spec).unwrap_err();
        assert_eq!(err.field, "spec.tcp[0].destinations");
        assert!(
            err.message.contains("spec.tcp[0].sniHosts[0]"),
            "{}",
            err.message
        );
    }

    #[test]
    fn durations_are_parsed_once_and_destinations_resolve_their_namespace() {
        let mut spec = mk_policy_spec("reviews", &[("v1", 100)]);
        spec.http[0].timeout = Some(weir_api::Duration("1m30s".into()));
        spec.http.push(mk_rule(vec![Destination {
            service: Some("ratings".into()),
            ..Default::default()
        }]));
        let policy = parse(&spec).unwrap();
        assert_eq!(policy.http[0].timeout, Some(Duration::from_secs(90)));
        assert_eq!(
            policy.backend_services(),
            std::collections::BTreeSet::from([ObjectKey::new("default", "ratings")])
        );
        assert_eq!(policy.http[1].name, "rule-1");
    }
}
