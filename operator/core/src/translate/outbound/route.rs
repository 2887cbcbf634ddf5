//! Routes: one virtual host per Service port, answering to every name a client may use, with
//! the policy's rules in order and a final route to the Service as a whole.

use envoy_types::pb::envoy::config::core::v3::{
    header_value_option::HeaderAppendAction, HeaderValue, HeaderValueOption,
};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, query_parameter_matcher::QueryParameterMatchSpecifier,
    route::Action, route_action::ClusterSpecifier, route_action::HostRewriteSpecifier,
    route_match::PathSpecifier, weighted_cluster::ClusterWeight, DirectResponseAction,
    HeaderMatcher, QueryParameterMatcher, RedirectAction, RetryPolicy, Route, RouteAction,
    RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    string_matcher::MatchPattern, RegexMatchAndSubstitute, RegexMatcher, StringMatcher,
};
use envoy_types::pb::google::protobuf::{Any, UInt32Value};

use super::shaping;
use crate::binding::{BoundBackend, PortRoutes, Resolution};
use crate::index::ObjectKey;
use crate::mesh::{SOURCE_NAMESPACE_HEADER, SOURCE_WORKLOAD_HEADER};
use crate::names;
use crate::protocol::Protocol;
use crate::routing::{
    HeaderEdits, HttpMatch, HttpRule, NamedMatch, PathMatch, PathRewrite, Redirect, Rewrite,
    ValueMatch,
};
use crate::translate::chain::catch_all_virtual_host;
use crate::translate::pb::{self, duration as pb_duration, NO_TIMEOUT};
use crate::translate::telemetry;

/// Retry conditions when a policy asks for retries without saying on what.
const DEFAULT_RETRY_ON: &str = "5xx,connect-failure,refused-stream,reset";
/// The same on gRPC ports, where failures arrive as a gRPC status in trailers: an
/// UNAVAILABLE server is retried too.
const DEFAULT_GRPC_RETRY_ON: &str = "5xx,connect-failure,refused-stream,reset,unavailable";

/// The virtual host of one Service port, with the rules bound to it (if any) and a final
/// route to the Service as a whole.
pub fn virtual_host(
    svc: &ObjectKey,
    port: u16,
    cluster_ip: Option<&str>,
    bare_names: bool,
    bound: Option<&PortRoutes>,
    protocol: Protocol,
) -> VirtualHost {
    let mut routes = Vec::new();
    let hash_policy =
        shaping::hash_policies(bound.and_then(|p| p.governing.upstream.balancer.as_ref()));
    for bound_rule in bound.into_iter().flat_map(|b| &b.http) {
        let (rule, mirror) = (bound_rule.rule(), &bound_rule.mirror);
        let mut action = rule_action(rule, &bound_rule.backends, protocol);
        action.hash_policy = hash_policy.clone();
        // A mirror whose Service is missing is left out (status says so), so that no
        // route names a cluster that is not served.
        action.request_mirror_policies = mirror
            .iter()
            .filter(|m| m.resolution == Resolution::Resolved && m.weight > 0)
            .map(|m| shaping::mirror_policy(m.cluster.clone(), m.weight))
            .collect();
        let faults: std::collections::HashMap<String, Any> = rule
            .fault
            .iter()
            .map(|f| {
                let headers = f.headers.iter().map(header_matcher).collect();
                (
                    shaping::FAULT_FILTER.to_string(),
                    shaping::fault_filter_config(f, headers),
                )
            })
            .collect();
        for m in bound_rule.matches() {
            // The matched prefix, for rewrites and redirects that replace it.
            let prefix = m.and_then(|m| match &m.path {
                Some(PathMatch::Prefix(p)) => Some(p.trim_end_matches('/').to_string()),
                _ => None,
            });
            let route_action = match &rule.redirect {
                Some(redirect) => Action::Redirect(redirect_action(redirect, prefix.as_deref())),
                None if action.cluster_specifier.is_none() => {
                    Action::DirectResponse(DirectResponseAction {
                        status: u32::from(rule.unresolved_status),
                        ..Default::default()
                    })
                }
                None => {
                    let mut action = action.clone();
                    if let Some(rewrite) = &rule.rewrite {
                        rewrite_action(&mut action, rewrite, prefix.as_deref());
                    }
                    Action::Route(action)
                }
            };
            routes.push(Route {
                name: rule.name.clone(),
                r#match: Some(route_match(m)),
                action: Some(route_action),
                request_headers_to_add: headers_to_add(&rule.request_headers),
                request_headers_to_remove: rule.request_headers.remove.clone(),
                response_headers_to_add: headers_to_add(&rule.response_headers),
                response_headers_to_remove: rule.response_headers.remove.clone(),
                typed_per_filter_config: faults.clone(),
                ..Default::default()
            });
        }
    }
    // Gateway API: a request that no route's rule matches gets 404, not the Service.
    let routes_decide = bound.is_some_and(|b| b.routes_decide);
    routes.extend((!routes_decide).then(|| Route {
        name: "default".into(),
        r#match: Some(RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(names::cluster_name(
                svc, port, None,
            ))),
            timeout: Some(NO_TIMEOUT),
            hash_policy,
            ..Default::default()
        })),
        ..Default::default()
    }));
    let rate_limit = bound.and_then(|p| p.governing.rate_limit.as_ref());
    VirtualHost {
        name: names::vhost_name(svc, port),
        domains: names::domains(svc, port, cluster_ip, bare_names),
        routes,
        typed_per_filter_config: rate_limit
            .map(|limit| {
                (
                    shaping::RATE_LIMIT_FILTER.to_string(),
                    shaping::rate_limit_filter_config(limit),
                )
            })
            .into_iter()
            .collect(),
        ..Default::default()
    }
}

/// A route configuration from virtual hosts already in a stable order.
pub fn route_configuration(name: &str, virtual_hosts: Vec<VirtualHost>) -> RouteConfiguration {
    RouteConfiguration {
        name: name.to_string(),
        virtual_hosts,
        // Clusters arrive over the same stream; never reject routes for a missing one.
        validate_clusters: Some(pb::boolv(false)),
        // The caller's workload for the server's sidecar (see translate::telemetry)...
        request_headers_to_add: telemetry::source_headers(),
        // ...which the passthrough virtual host removes again: the more specific edits
        // apply last.
        most_specific_header_mutations_wins: true,
        ..Default::default()
    }
}

// Envoy's default route timeout is 15s; a mesh should not cut long requests it was not
// asked to cut, so routes without a rule timeout have none (NO_TIMEOUT).

/// The route action of a rule; without a cluster specifier when no backend has weight
/// (the caller answers the rule's `unresolved_status` then).
fn rule_action(rule: &HttpRule, backends: &[BoundBackend], protocol: Protocol) -> RouteAction {
    // Unresolved backends keep their (missing) cluster: Envoy answers the rule's status
    // for that share (`cluster_not_found_response_code`), and status says BackendNotFound.
    let weighted: Vec<(&BoundBackend, &crate::routing::WeightedBackend)> = backends
        .iter()
        .zip(&rule.backends)
        .filter(|(b, _)| b.weight > 0)
        .collect();
    let edits = |w: &crate::routing::WeightedBackend| {
        w.request_headers != HeaderEdits::default() || w.response_headers != HeaderEdits::default()
    };
    let cluster_specifier = match weighted.as_slice() {
        [] => None,
        [(only, w)] if !edits(w) => Some(ClusterSpecifier::Cluster(only.cluster.clone())),
        _ => Some(ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: weighted
                .iter()
                .map(|(b, w)| ClusterWeight {
                    name: b.cluster.clone(),
                    weight: Some(UInt32Value { value: b.weight }),
                    request_headers_to_add: headers_to_add(&w.request_headers),
                    request_headers_to_remove: w.request_headers.remove.clone(),
                    response_headers_to_add: headers_to_add(&w.response_headers),
                    response_headers_to_remove: w.response_headers.remove.clone(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })),
    };
    let retry_policy = rule
        .retry
        .as_ref()
        .filter(|r| r.attempts > 0)
        .map(|r| RetryPolicy {
            retry_on: if r.retry_on.is_empty() {
                if protocol == Protocol::Grpc {
                    DEFAULT_GRPC_RETRY_ON.to_string()
                } else {
                    DEFAULT_RETRY_ON.to_string()
                }
            } else {
                r.retry_on
                    .iter()
                    .map(|c| c.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            },
            num_retries: Some(UInt32Value { value: r.attempts }),
            per_try_timeout: r.per_try_timeout.or(rule.backend_timeout).map(pb_duration),
            ..Default::default()
        })
        // A backend timeout without retries: one try, with its own timeout.
        .or_else(|| {
            rule.backend_timeout.map(|t| RetryPolicy {
                num_retries: Some(UInt32Value { value: 0 }),
                per_try_timeout: Some(pb_duration(t)),
                ..Default::default()
            })
        });
    RouteAction {
        cluster_specifier,
        timeout: Some(rule.timeout.map(pb_duration).unwrap_or(NO_TIMEOUT)),
        retry_policy,
        cluster_not_found_response_code: not_found_code(rule.unresolved_status),
        ..Default::default()
    }
}

/// Envoy's code for a missing cluster: 503 (its default), 500 or 404.
fn not_found_code(status: u16) -> i32 {
    use envoy_types::pb::envoy::config::route::v3::route_action::ClusterNotFoundResponseCode as C;
    match status {
        500 => C::InternalServerError as i32,
        404 => C::NotFound as i32,
        _ => C::ServiceUnavailable as i32,
    }
}

/// A path rewrite as Envoy's regex rewrite of the path (query kept): the whole path, or
/// the matched prefix (segment-wise: `/prefix` -> `/new` turns `/prefix/x` into `/new/x`
/// and `/prefix` into `/new`; replacing with `/` turns `/prefix/x` into `/x`).
fn path_regex_rewrite(path: &PathRewrite, prefix: Option<&str>) -> RegexMatchAndSubstitute {
    let (pattern, substitution) = match (path, prefix) {
        (PathRewrite::Full(p), _) => ("^/[^?]*".to_string(), p.clone()),
        (PathRewrite::Prefix(p), Some(prefix)) if !prefix.is_empty() => {
            let replacement = p.trim_end_matches('/');
            if replacement.is_empty() {
                // What follows the prefix, as an absolute path (`/` when nothing does).
                (
                    format!("^{}/*([^?]*)", regex::escape(prefix)),
                    "/\\1".to_string(),
                )
            } else {
                (
                    format!("^{}(/[^?]*)?", regex::escape(prefix)),
                    format!("{replacement}\\1"),
                )
            }
        }
        // No prefix matched (the rule matches every path): the prefix is `/`.
        (PathRewrite::Prefix(p), _) => (
            "^/([^?]*)".to_string(),
            format!("{}/\\1", p.trim_end_matches('/')),
        ),
    };
    RegexMatchAndSubstitute {
        pattern: Some(regex(&pattern)),
        substitution,
    }
}

fn rewrite_action(action: &mut RouteAction, rewrite: &Rewrite, prefix: Option<&str>) {
    if let Some(host) = &rewrite.host {
        action.host_rewrite_specifier =
            Some(HostRewriteSpecifier::HostRewriteLiteral(host.clone()));
    }
    if let Some(path) = &rewrite.path {
        action.regex_rewrite = Some(path_regex_rewrite(path, prefix));
    }
}

fn redirect_action(redirect: &Redirect, prefix: Option<&str>) -> RedirectAction {
    use envoy_types::pb::envoy::config::route::v3::redirect_action::{
        PathRewriteSpecifier, RedirectResponseCode as Code, SchemeRewriteSpecifier,
    };
    let response_code = match redirect.status {
        302 => Code::Found,
        303 => Code::SeeOther,
        307 => Code::TemporaryRedirect,
        308 => Code::PermanentRedirect,
        _ => Code::MovedPermanently,
    } as i32;
    RedirectAction {
        host_redirect: redirect.host.clone().unwrap_or_default(),
        port_redirect: redirect.port.map(u32::from).unwrap_or_default(),
        response_code,
        scheme_rewrite_specifier: redirect
            .scheme
            .clone()
            .map(SchemeRewriteSpecifier::SchemeRedirect),
        path_rewrite_specifier: redirect.path.as_ref().map(|path| match path {
            PathRewrite::Full(p) => PathRewriteSpecifier::PathRedirect(p.clone()),
            PathRewrite::Prefix(_) => {
                PathRewriteSpecifier::RegexRewrite(path_regex_rewrite(path, prefix))
            }
        }),
        ..Default::default()
    }
}

fn route_match(m: Option<&HttpMatch>) -> RouteMatch {
    let Some(m) = m else {
        return RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix("/".into())),
            ..Default::default()
        };
    };
    let path_specifier = match &m.path {
        None => PathSpecifier::Prefix("/".into()),
        Some(PathMatch::Exact(p)) => PathSpecifier::Path(p.clone()),
        Some(PathMatch::Prefix(p)) => {
            let trimmed = p.trim_end_matches('/');
            if trimmed.is_empty() {
                PathSpecifier::Prefix("/".into())
            } else {
                // `/api` matches `/api` and `/api/x`, not `/apix`.
                PathSpecifier::PathSeparatedPrefix(trimmed.to_string())
            }
        }
        Some(PathMatch::RegularExpression(p)) => PathSpecifier::SafeRegex(regex(p)),
        Some(PathMatch::Grpc {
            service,
            method,
            regex: is_regex,
        }) => grpc_path(service.as_deref(), method.as_deref(), *is_regex),
    };
    let mut headers: Vec<HeaderMatcher> = m.headers.iter().map(header_matcher).collect();
    if let Some(method) = m.method {
        headers.push(HeaderMatcher {
            name: ":method".into(),
            header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
                match_pattern: Some(MatchPattern::Exact(method.as_str().into())),
                ..Default::default()
            })),
            ..Default::default()
        });
    }
    let query_parameters = m
        .query_params
        .iter()
        .map(|q| QueryParameterMatcher {
            name: q.name.clone(),
            query_parameter_match_specifier: Some(match string_matcher(&q.value) {
                Some(sm) => QueryParameterMatchSpecifier::StringMatch(sm),
                None => QueryParameterMatchSpecifier::PresentMatch(true),
            }),
        })
        .collect();
    RouteMatch {
        path_specifier: Some(path_specifier),
        headers,
        query_parameters,
        ..Default::default()
    }
}

/// The path of gRPC calls to a service and method (`/<service>/<method>`).
fn grpc_path(service: Option<&str>, method: Option<&str>, is_regex: bool) -> PathSpecifier {
    const ANY: &str = "[^/]+";
    match (service, method, is_regex) {
        (Some(s), Some(m), false) => PathSpecifier::Path(format!("/{s}/{m}")),
        (Some(s), None, false) => PathSpecifier::PathSeparatedPrefix(format!("/{s}")),
        // Exact identifiers carry no regex syntax but '.', which must be literal.
        (None, Some(m), false) => PathSpecifier::SafeRegex(regex(&format!("/{ANY}/{m}"))),
        (s, m, _) => {
            let part = |p: Option<&str>, literal: bool| match p {
                Some(p) if literal => regex::escape(p),
                Some(p) => format!("(?:{p})"),
                None => ANY.to_string(),
            };
            PathSpecifier::SafeRegex(regex(&format!(
                "/{}/{}",
                part(s, !is_regex),
                part(m, !is_regex)
            )))
        }
    }
}

/// A virtual host no request reaches (its one domain is in the reserved `.invalid` top
/// level domain), answering 404 if one did: see [`names::VHDS_PLACEHOLDER`].
pub fn placeholder_virtual_host(name: &str) -> VirtualHost {
    use envoy_types::pb::envoy::config::route::v3::{
        route::Action, route_match::PathSpecifier, DirectResponseAction, Route, RouteMatch,
    };
    VirtualHost {
        name: name.to_string(),
        domains: vec![format!("{}.invalid", names::VHDS_PLACEHOLDER)],
        routes: vec![Route {
            r#match: Some(RouteMatch {
                path_specifier: Some(PathSpecifier::Prefix("/".into())),
                ..Default::default()
            }),
            action: Some(Action::DirectResponse(DirectResponseAction {
                status: 404,
                ..Default::default()
            })),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The last virtual host of a transparent-mode route table: requests to a mesh address
/// whose Host names no Service go on to their original destination, untouched.
pub fn passthrough_virtual_host() -> VirtualHost {
    let mut host = catch_all_virtual_host("passthrough", names::PASSTHROUGH_CLUSTER);
    // Outside the mesh nobody reads them: the caller's workload stays inside.
    host.request_headers_to_remove = vec![
        SOURCE_WORKLOAD_HEADER.into(),
        SOURCE_NAMESPACE_HEADER.into(),
    ];
    host
}

/// A condition on one header.
pub(crate) fn header_matcher(h: &NamedMatch) -> HeaderMatcher {
    HeaderMatcher {
        name: h.name.clone(),
        header_match_specifier: Some(match string_matcher(&h.value) {
            Some(sm) => HeaderMatchSpecifier::StringMatch(sm),
            None => HeaderMatchSpecifier::PresentMatch(true),
        }),
        ..Default::default()
    }
}

/// `None` for Present.
fn string_matcher(value: &ValueMatch) -> Option<StringMatcher> {
    let pattern = match value {
        ValueMatch::Exact(v) => MatchPattern::Exact(v.clone()),
        ValueMatch::Prefix(v) => MatchPattern::Prefix(v.clone()),
        ValueMatch::RegularExpression(v) => MatchPattern::SafeRegex(regex(v)),
        ValueMatch::Present => return None,
    };
    Some(StringMatcher {
        match_pattern: Some(pattern),
        ..Default::default()
    })
}

fn regex(pattern: &str) -> RegexMatcher {
    RegexMatcher {
        regex: pattern.to_string(),
        ..Default::default()
    }
}

fn headers_to_add(edits: &HeaderEdits) -> Vec<HeaderValueOption> {
    let option = |(key, value): &(String, String), action: HeaderAppendAction| HeaderValueOption {
        header: Some(HeaderValue {
            key: key.clone(),
            value: value.clone(),
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    };
    edits
        .set
        .iter()
        .map(|h| option(h, HeaderAppendAction::OverwriteIfExistsOrAdd))
        .chain(
            edits
                .add
                .iter()
                .map(|h| option(h, HeaderAppendAction::AppendIfExistsOrAdd)),
        )
        .collect()
}
