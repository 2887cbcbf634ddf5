//! Gateway API routes as a routing source (the mesh profile, GAMMA): an HTTPRoute or
//! GRPCRoute whose `parentRefs` name a Service becomes, per such parent, a [`RouteSet`] on
//! that Service (and port), or the reason it is not accepted there.
//!
//! ```text
//! HTTPRoute / GRPCRoute --parse_http / parse_grpc--> per Service parentRef:
//!     ParentRoutes { parent as written, the Service, RouteSet | RouteRejection,
//!                    backend refs refused for their kind or namespace }
//! ```
//!
//! Parents that are not Services (Gateways) belong to another controller and are skipped.
//! What Gateway API fixes and TrafficPolicy does not: weights are relative (1 by default,
//! 0 sends nothing), a backend that does not resolve answers 500 for its share, a rule
//! without backends answers 500, hostnames do not apply in the mesh. A route in another
//! namespace than its Service is a consumer route: it applies to callers in its own namespace
//! only (the binding and the translator keep it apart from the producer routes). A
//! backendRef into another namespace is permitted when it names one of the route's own
//! Service parents (the route only steers traffic already bound for that Service); any
//! other needs a ReferenceGrant, which Weir does not read, and is refused.

use std::sync::Arc;
use std::time::Duration;

use weir_api::gateway_api::{
    BackendRef, GRPCRoute, HTTPBackendRef, HTTPPathModifier, HTTPRoute, HTTPRouteFilter,
    HTTPRouteMatch, HTTPValueMatch, HeaderModifier, ParentReference,
};

use crate::object_key::ObjectKey;
use crate::routing::{
    Backend, HeaderEdits, HttpMatch, HttpRule, Method, Mirror, NamedMatch, PathMatch, PathRewrite,
    Redirect, Rewrite, RouteSet, Target, Upstream, ValueMatch, WeightedBackend,
};

/// What a Gateway API route answers for a backend that does not resolve.
pub const UNRESOLVED_STATUS: u16 = 500;

/// Why a route is not accepted on a parent: a Gateway API reason for the `Accepted`
/// condition, the field at fault and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRejection {
    /// `UnsupportedValue`, `NoMatchingParent`...
    pub reason: &'static str,
    /// JSON path, e.g. `spec.rules[0].filters[1].type`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// A backend reference refused for what it is, not for whether it exists (the binding
/// finds those): `InvalidKind` or `RefNotPermitted`, for `ResolvedRefs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedRef {
    /// `InvalidKind` or `RefNotPermitted`.
    pub reason: &'static str,
    /// JSON path of the reference.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// A route on one Service parent.
#[derive(Debug, Clone, PartialEq)]
pub struct ParentRoutes {
    /// The parentRef as written (status is reported per parentRef).
    pub parent: ParentReference,
    /// The Service it names.
    pub service: ObjectKey,
    /// The route's rules on that Service, or why they are not accepted.
    pub verdict: Result<Arc<RouteSet>, RouteRejection>,
    /// Backend references refused for their kind or namespace (their share answers 500).
    pub refused: Vec<RefusedRef>,
}

/// Whether a parentRef names a Service (group `""`, kind `Service`).
pub fn is_service_parent(parent: &ParentReference) -> bool {
    parent.group.as_deref() == Some("") && parent.kind.as_deref() == Some("Service")
}

/// An HTTPRoute's routes, per Service parent.
pub fn parse_http(route: &HTTPRoute) -> Vec<ParentRoutes> {
    let origin = Origin::of(&route.metadata, &route.spec.parent_refs);
    parents(&origin, &route.spec.parent_refs, |problems, refused| {
        route
            .spec
            .rules
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                let at = format!("spec.rules[{i}]");
                let matches = rule
                    .matches
                    .iter()
                    .enumerate()
                    .map(|(k, m)| http_match(&format!("{at}.matches[{k}]"), m, problems))
                    .collect();
                // Timeouts before filters and backends: the first problem is the one named.
                let timeouts = rule.timeouts.as_ref();
                let timeout = timeouts
                    .and_then(|t| t.request.as_deref())
                    .and_then(|d| duration(&format!("{at}.timeouts.request"), d, problems));
                let backend_timeout = timeouts
                    .and_then(|t| t.backend_request.as_deref())
                    .and_then(|d| duration(&format!("{at}.timeouts.backendRequest"), d, problems));
                let mut parsed = route_rule(
                    &origin,
                    (i, &at),
                    rule.name.as_deref(),
                    matches,
                    (&rule.filters, &rule.backend_refs),
                    problems,
                    refused,
                );
                parsed.timeout = timeout;
                parsed.backend_timeout = backend_timeout;
                parsed
            })
            .collect()
    })
}

/// A GRPCRoute's routes, per Service parent.
pub fn parse_grpc(route: &GRPCRoute) -> Vec<ParentRoutes> {
    let origin = Origin::of(&route.metadata, &route.spec.parent_refs);
    parents(&origin, &route.spec.parent_refs, |problems, refused| {
        route
            .spec
            .rules
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                let at = format!("spec.rules[{i}]");
                let matches = rule
                    .matches
                    .iter()
                    .enumerate()
                    .map(|(k, m)| {
                        let at = format!("{at}.matches[{k}]");
                        let path = m.method.as_ref().map(|method| {
                            let regex = method.type_.as_deref() == Some("RegularExpression");
                            for (part, value) in
                                [("service", &method.service), ("method", &method.method)]
                            {
                                if let (true, Some(v)) = (regex, value) {
                                    check_regex(&format!("{at}.method.{part}"), v, problems);
                                }
                            }
                            PathMatch::Grpc {
                                service: method.service.clone(),
                                method: method.method.clone(),
                                regex,
                            }
                        });
                        HttpMatch {
                            path,
                            headers: value_matches(
                                &format!("{at}.headers"),
                                &m.headers,
                                true,
                                problems,
                            ),
                            ..Default::default()
                        }
                    })
                    .collect();
                route_rule(
                    &origin,
                    (i, &at),
                    rule.name.as_deref(),
                    matches,
                    (&rule.filters, &rule.backend_refs),
                    problems,
                    refused,
                )
            })
            .collect()
    })
}

/// What HTTPRoute and GRPCRoute rules share: the name, the filters and the backends,
/// around the matches each kind parsed its own way.
fn route_rule(
    origin: &Origin,
    (i, at): (usize, &str),
    name: Option<&str>,
    matches: Vec<HttpMatch>,
    (rule_filters, backend_refs): (&[HTTPRouteFilter], &[HTTPBackendRef]),
    problems: &mut Vec<RouteRejection>,
    refused: &mut Vec<RefusedRef>,
) -> HttpRule {
    let mut rule = base_rule(name, i, matches);
    filters(origin, at, rule_filters, &mut rule, problems, refused);
    rule.backends = backends(origin, at, backend_refs, problems, refused);
    rule
}

/// Where a route's references are resolved from: its namespace and the Services it
/// attaches to.
struct Origin {
    namespace: String,
    parents: Vec<ObjectKey>,
}

impl Origin {
    fn of(
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        parent_refs: &[ParentReference],
    ) -> Origin {
        let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
        let mut origin = Origin {
            namespace,
            parents: Vec::new(),
        };
        origin.parents = parent_refs
            .iter()
            .filter(|p| is_service_parent(p))
            .map(|p| origin.parent(p))
            .collect();
        origin
    }

    /// The Service a parentRef names (its namespace defaults to the route's).
    fn parent(&self, parent: &ParentReference) -> ObjectKey {
        ObjectKey::new(
            parent.namespace.as_deref().unwrap_or(&self.namespace),
            &parent.name,
        )
    }
}

/// Per Service parent: the rules (parsed once for all parents), or why not.
fn parents(
    origin: &Origin,
    parent_refs: &[ParentReference],
    rules: impl FnOnce(&mut Vec<RouteRejection>, &mut Vec<RefusedRef>) -> Vec<HttpRule>,
) -> Vec<ParentRoutes> {
    let mut problems = Vec::new();
    let mut refused = Vec::new();
    let rules = rules(&mut problems, &mut refused);
    let first_problem = problems.first().cloned().map(|first| RouteRejection {
        message: problems[1..].iter().fold(first.message.clone(), |m, more| {
            format!("{m}; also {}: {}", more.field, more.message)
        }),
        ..first
    });
    parent_refs
        .iter()
        .filter(|p| is_service_parent(p))
        .map(|parent| {
            let service = origin.parent(parent);
            let port = parent.port.and_then(|p| u16::try_from(p).ok());
            let verdict = if let Some(problem) = &first_problem {
                Err(problem.clone())
            } else {
                Ok(Arc::new(RouteSet {
                    target: Target {
                        service: service.clone(),
                        port,
                    },
                    subsets: Vec::new(),
                    http: rules.clone(),
                    tcp: Vec::new(),
                    upstream: Upstream::default(),
                    rate_limit: None,
                    authorization: None,
                    unsupported: Vec::new(),
                }))
            };
            ParentRoutes {
                parent: parent.clone(),
                service,
                verdict,
                refused: refused.clone(),
            }
        })
        .collect()
}

fn base_rule(name: Option<&str>, i: usize, matches: Vec<HttpMatch>) -> HttpRule {
    HttpRule {
        name: name.map_or_else(|| format!("rule-{i}"), str::to_string),
        matches,
        backends: Vec::new(),
        timeout: None,
        retry: None,
        request_headers: HeaderEdits::default(),
        fault: None,
        mirror: None,
        response_headers: HeaderEdits::default(),
        redirect: None,
        rewrite: None,
        backend_timeout: None,
        unresolved_status: UNRESOLVED_STATUS,
    }
}

fn unsupported(problems: &mut Vec<RouteRejection>, field: String, message: String) {
    problems.push(RouteRejection {
        reason: "UnsupportedValue",
        field,
        message,
    });
}

fn http_match(at: &str, m: &HTTPRouteMatch, problems: &mut Vec<RouteRejection>) -> HttpMatch {
    let path = m.path.as_ref().and_then(|p| {
        let value = p.value.clone().unwrap_or_else(|| "/".into());
        match p.type_.as_deref().unwrap_or("PathPrefix") {
            "Exact" => Some(PathMatch::Exact(value)),
            "PathPrefix" if value.trim_end_matches('/').is_empty() => None,
            "PathPrefix" => Some(PathMatch::Prefix(value)),
            "RegularExpression" => {
                check_regex(&format!("{at}.path.value"), &value, problems);
                Some(PathMatch::RegularExpression(value))
            }
            other => {
                unsupported(problems, format!("{at}.path.type"), format!("{other:?} is not a path match type: use Exact, PathPrefix or RegularExpression"));
                None
            }
        }
    });
    let method = m.method.as_deref().and_then(|name| match method(name) {
        Some(m) => Some(m),
        None => {
            unsupported(
                problems,
                format!("{at}.method"),
                format!("{name:?} is not an HTTP method"),
            );
            None
        }
    });
    HttpMatch {
        path,
        headers: value_matches(&format!("{at}.headers"), &m.headers, true, problems),
        query_params: value_matches(
            &format!("{at}.queryParams"),
            &m.query_params,
            false,
            problems,
        ),
        method,
    }
}

fn method(name: &str) -> Option<Method> {
    Some(match name {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "CONNECT" => Method::Connect,
        "OPTIONS" => Method::Options,
        "TRACE" => Method::Trace,
        "PATCH" => Method::Patch,
        _ => return None,
    })
}

fn value_matches(
    at: &str,
    values: &[HTTPValueMatch],
    headers: bool,
    problems: &mut Vec<RouteRejection>,
) -> Vec<NamedMatch> {
    values
        .iter()
        .enumerate()
        .map(|(k, v)| {
            let value = match v.type_.as_deref().unwrap_or("Exact") {
                "RegularExpression" => {
                    check_regex(&format!("{at}[{k}].value"), &v.value, problems);
                    ValueMatch::RegularExpression(v.value.clone())
                }
                "Exact" => ValueMatch::Exact(v.value.clone()),
                other => {
                    unsupported(
                        problems,
                        format!("{at}[{k}].type"),
                        format!("{other:?} is not a match type: use Exact or RegularExpression"),
                    );
                    ValueMatch::Exact(v.value.clone())
                }
            };
            NamedMatch {
                // Header names are case-insensitive (Envoy compares them lower-cased);
                // query parameter names are not.
                name: if headers {
                    v.name.to_ascii_lowercase()
                } else {
                    v.name.clone()
                },
                value,
            }
        })
        .collect()
}

fn check_regex(field: &str, pattern: &str, problems: &mut Vec<RouteRejection>) {
    if let Some(message) = super::regex_problem(pattern) {
        unsupported(problems, field.to_string(), message);
    }
}

/// A Gateway API duration (GEP-2257: the format TrafficPolicy uses); zero means none.
fn duration(field: &str, text: &str, problems: &mut Vec<RouteRejection>) -> Option<Duration> {
    match weir_api::Duration(text.to_string()).to_std() {
        Ok(d) if d.is_zero() => None,
        Ok(d) => Some(d),
        Err(e) => {
            unsupported(problems, field.to_string(), e.to_string());
            None
        }
    }
}

fn header_edits(m: &HeaderModifier) -> HeaderEdits {
    HeaderEdits {
        set: m
            .set
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value.clone()))
            .collect(),
        add: m
            .add
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value.clone()))
            .collect(),
        remove: m.remove.iter().map(|h| h.to_ascii_lowercase()).collect(),
    }
}

/// A rule's filters into the rule.
fn filters(
    origin: &Origin,
    at: &str,
    filters: &[HTTPRouteFilter],
    rule: &mut HttpRule,
    problems: &mut Vec<RouteRejection>,
    refused: &mut Vec<RefusedRef>,
) {
    for (k, f) in filters.iter().enumerate() {
        let at = format!("{at}.filters[{k}]");
        let missing = |problems: &mut Vec<RouteRejection>, field: &str| {
            unsupported(
                problems,
                format!("{at}.{field}"),
                format!("is required for a {} filter", f.type_),
            );
        };
        match f.type_.as_str() {
            "RequestHeaderModifier" => match &f.request_header_modifier {
                Some(m) => rule.request_headers = header_edits(m),
                None => missing(problems, "requestHeaderModifier"),
            },
            "ResponseHeaderModifier" => match &f.response_header_modifier {
                Some(m) => rule.response_headers = header_edits(m),
                None => missing(problems, "responseHeaderModifier"),
            },
            "RequestRedirect" => match &f.request_redirect {
                Some(r) => {
                    rule.redirect = Some(Redirect {
                        scheme: r.scheme.clone(),
                        host: r.hostname.clone(),
                        port: r.port.and_then(|p| u16::try_from(p).ok()),
                        path: r.path.as_ref().and_then(|p| path_modifier(&format!("{at}.requestRedirect.path"), p, rule, problems)),
                        status: r.status_code.and_then(|s| u16::try_from(s).ok()).unwrap_or(302),
                    })
                }
                None => missing(problems, "requestRedirect"),
            },
            "URLRewrite" => match &f.url_rewrite {
                Some(r) => {
                    rule.rewrite = Some(Rewrite {
                        host: r.hostname.clone(),
                        path: r.path.as_ref().and_then(|p| path_modifier(&format!("{at}.urlRewrite.path"), p, rule, problems)),
                    })
                }
                None => missing(problems, "urlRewrite"),
            },
            "RequestMirror" => match &f.request_mirror {
                Some(m) => {
                    let percent = match (&m.fraction, m.percent) {
                        (Some(f), _) => {
                            let denominator = f.denominator.unwrap_or(100).max(1);
                            (f.numerator.max(0) * 100 / denominator).clamp(0, 100)
                        }
                        (None, Some(p)) => p.clamp(0, 100),
                        (None, None) => 100,
                    };
                    rule.mirror = Some(Mirror {
                        backend: backend(origin, &format!("{at}.requestMirror.backendRef"), &m.backend_ref, problems, refused),
                        percent: percent as u32,
                    });
                }
                None => missing(problems, "requestMirror"),
            },
            other => unsupported(
                problems,
                format!("{at}.type"),
                format!("the {other} filter is not supported by the mesh: remove it (RequestHeaderModifier, ResponseHeaderModifier, RequestRedirect, URLRewrite and RequestMirror are)"),
            ),
        }
    }
    if rule.redirect.is_some() && rule.rewrite.is_some() {
        unsupported(
            problems,
            at.to_string(),
            "has both a RequestRedirect and a URLRewrite filter: a rule redirects or rewrites"
                .into(),
        );
    }
}

/// A path modifier; `ReplacePrefixMatch` needs every match of the rule to be a prefix.
fn path_modifier(
    at: &str,
    p: &HTTPPathModifier,
    rule: &HttpRule,
    problems: &mut Vec<RouteRejection>,
) -> Option<PathRewrite> {
    match p.type_.as_str() {
        "ReplaceFullPath" => Some(PathRewrite::Full(
            p.replace_full_path.clone().unwrap_or_else(|| "/".into()),
        )),
        "ReplacePrefixMatch" => {
            let prefixes = rule
                .matches
                .iter()
                .all(|m| matches!(m.path, None | Some(PathMatch::Prefix(_))));
            if !prefixes {
                unsupported(
                    problems,
                    format!("{at}.type"),
                    "ReplacePrefixMatch needs every match of the rule to be a PathPrefix".into(),
                );
            }
            Some(PathRewrite::Prefix(
                p.replace_prefix_match.clone().unwrap_or_else(|| "/".into()),
            ))
        }
        other => {
            unsupported(
                problems,
                format!("{at}.type"),
                format!(
                    "{other:?} is not a path modifier: use ReplaceFullPath or ReplacePrefixMatch"
                ),
            );
            None
        }
    }
}

/// A backend reference as the model's backend. References that cannot name a Service of
/// this namespace (another kind, another namespace) are refused and name a Service that
/// cannot exist (an empty namespace), so that their share fails with the rule's status.
fn backend(
    origin: &Origin,
    at: &str,
    r: &BackendRef,
    problems: &mut Vec<RouteRejection>,
    refused: &mut Vec<RefusedRef>,
) -> Backend {
    let group = r.group.as_deref().unwrap_or("");
    let kind = r.kind.as_deref().unwrap_or("Service");
    let nowhere = Backend {
        service: ObjectKey::new("", format!("{kind}.{group}/{}", r.name)),
        port: None,
        subset: None,
    };
    if !group.is_empty() || kind != "Service" {
        refused.push(RefusedRef {
            reason: "InvalidKind",
            field: at.to_string(),
            message: format!("{kind} {} (group {group:?}) is not a Service: the mesh routes to Services (group \"\", kind Service)", r.name),
        });
        return nowhere;
    }
    let namespace = r.namespace.as_deref().unwrap_or(&origin.namespace);
    let service = ObjectKey::new(namespace, &r.name);
    if namespace != origin.namespace && !origin.parents.contains(&service) {
        refused.push(RefusedRef {
            reason: "RefNotPermitted",
            field: format!("{at}.namespace"),
            message: format!("Service {service} is in another namespace and is not a parent of this route: Weir does not read ReferenceGrants yet; route to a Service of namespace {} or to the parent Service", origin.namespace),
        });
        return nowhere;
    }
    let port = r.port.and_then(|p| u16::try_from(p).ok());
    if port.is_none() {
        unsupported(
            problems,
            format!("{at}.port"),
            "is required for a Service backend: name the Service port".into(),
        );
    }
    Backend {
        service,
        port,
        subset: None,
    }
}

fn backends(
    origin: &Origin,
    at: &str,
    refs: &[HTTPBackendRef],
    problems: &mut Vec<RouteRejection>,
    refused: &mut Vec<RefusedRef>,
) -> Vec<WeightedBackend> {
    refs.iter()
        .enumerate()
        .map(|(k, r)| {
            let at = format!("{at}.backendRefs[{k}]");
            let mut scratch = base_rule(None, 0, Vec::new());
            filters(origin, &at, &r.filters, &mut scratch, problems, refused);
            if scratch.redirect.is_some() || scratch.rewrite.is_some() || scratch.mirror.is_some() {
                unsupported(
                    problems,
                    format!("{at}.filters"),
                    "a backend's filters may modify request and response headers only".into(),
                );
            }
            WeightedBackend {
                backend: backend(origin, &at, &r.backend, problems, refused),
                weight: r.weight.unwrap_or(1).max(0) as u32,
                request_headers: scratch.request_headers,
                response_headers: scratch.response_headers,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(yaml: &str) -> HTTPRoute {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn a_producer_route_becomes_rules_on_its_service() {
        let parsed = parse_http(&route(
            r#"
metadata: {name: split, namespace: mesh}
spec:
  parentRefs:
  - {group: "", kind: Service, name: echo, port: 80}
  - {name: some-gateway}
  rules:
  - matches: [{path: {type: Exact, value: /v1}, headers: [{name: X-Version, value: one}]}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: X-A, value: b}], remove: [x-c]}
    backendRefs: [{name: echo-v1, port: 80}]
  - name: weighted
    backendRefs:
    - {name: echo-v1, port: 80, weight: 70}
    - {name: echo-v2, port: 80, weight: 0}
    timeouts: {request: 2s}
"#,
        ));
        assert_eq!(
            parsed.len(),
            1,
            "the Gateway parent is another controller's"
        );
        let p = &parsed[0];
        assert_eq!(p.service, ObjectKey::new("mesh", "echo"));
        let set = p.verdict.as_ref().unwrap();
        assert_eq!(set.target.port, Some(80));
        let r0 = &set.http[0];
        assert_eq!(r0.name, "rule-0");
        assert_eq!(r0.matches[0].path, Some(PathMatch::Exact("/v1".into())));
        assert_eq!(r0.matches[0].headers[0].name, "x-version");
        assert_eq!(
            r0.request_headers.set,
            [("x-a".to_string(), "b".to_string())]
        );
        assert_eq!(
            r0.backends[0].backend.service,
            ObjectKey::new("mesh", "echo-v1")
        );
        assert_eq!(r0.unresolved_status, 500);
        let r1 = &set.http[1];
        assert_eq!(r1.name, "weighted");
        assert!(r1.matches.is_empty(), "no match: every request");
        assert_eq!(
            r1.backends.iter().map(|b| b.weight).collect::<Vec<_>>(),
            [70, 0]
        );
        assert_eq!(r1.timeout, Some(Duration::from_secs(2)));
    }

    #[test]
    fn what_the_mesh_cannot_do_is_refused_with_the_field() {
        let parsed = parse_http(&route(
            r#"
metadata: {name: r, namespace: consumer}
spec:
  parentRefs:
  - {group: "", kind: Service, name: echo, namespace: producer}
  - {group: "", kind: Service, name: local}
  rules:
  - filters: [{type: ExtensionRef}]
    backendRefs:
    - {name: echo, port: 80, namespace: producer}
    - {group: example.com, kind: Bucket, name: b}
"#,
        ));
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].service, ObjectKey::new("producer", "echo"));
        let local = parsed[1].verdict.as_ref().unwrap_err();
        assert_eq!(local.reason, "UnsupportedValue");
        assert_eq!(local.field, "spec.rules[0].filters[0].type");
        // The parent in another namespace may be a backend; a Bucket may not.
        let reasons: Vec<&str> = parsed[1].refused.iter().map(|r| r.reason).collect();
        assert_eq!(reasons, ["InvalidKind"]);
    }

    #[test]
    fn a_consumer_route_may_send_to_its_parent_but_not_to_other_namespaces() {
        let parsed = parse_http(&route(
            r#"
metadata: {name: r, namespace: consumer}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, namespace: producer}]
  rules:
  - backendRefs:
    - {name: echo, port: 80, namespace: producer}
    - {name: other, port: 80, namespace: producer}
    - {name: local, port: 80}
"#,
        ));
        let set = parsed[0].verdict.as_ref().unwrap();
        let services: Vec<String> = set.http[0]
            .backends
            .iter()
            .map(|b| b.backend.service.to_string())
            .collect();
        assert_eq!(services[0], "producer/echo");
        assert_eq!(services[2], "consumer/local");
        assert_eq!(parsed[0].refused.len(), 1);
        assert_eq!(parsed[0].refused[0].reason, "RefNotPermitted");
        assert_eq!(
            parsed[0].refused[0].field,
            "spec.rules[0].backendRefs[1].namespace"
        );
    }
}
