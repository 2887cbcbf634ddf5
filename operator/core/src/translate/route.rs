//! Routes: one virtual host per Service port, answering to every name a client may use, with
//! the policy's rules in order and a final route to the Service as a whole.

use envoy_types::pb::envoy::config::core::v3::{
    header_value_option::HeaderAppendAction, HeaderValue, HeaderValueOption,
};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, query_parameter_matcher::QueryParameterMatchSpecifier,
    route::Action, route_action::ClusterSpecifier, route_match::PathSpecifier,
    weighted_cluster::ClusterWeight, HeaderMatcher, QueryParameterMatcher, RetryPolicy, Route,
    RouteAction, RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    string_matcher::MatchPattern, RegexMatcher, StringMatcher,
};
use envoy_types::pb::google::protobuf::{Duration, UInt32Value};
use weir_api::{
    HeaderModifier, HttpMatch, HttpRule, PathMatchType, StringMatchType, TrafficPolicySpec,
};

use super::names;
use crate::index::{Index, ObjectKey};

/// Retry conditions when a policy asks for retries without saying on what.
const DEFAULT_RETRY_ON: &str = "5xx,connect-failure,refused-stream,reset";

/// The virtual host of one Service port. `policy` is the policy that won this port, if any.
pub fn virtual_host(
    index: &Index,
    svc: &ObjectKey,
    port: u16,
    cluster_ip: Option<&str>,
    bare_names: bool,
    policy: Option<&TrafficPolicySpec>,
) -> VirtualHost {
    let mut routes = Vec::new();
    if let Some(policy) = policy {
        for (i, rule) in policy.http.iter().enumerate() {
            let action = rule_action(index, svc, port, rule);
            let name = rule.name.clone().unwrap_or_else(|| format!("rule-{i}"));
            let matches: Vec<Option<&HttpMatch>> = if rule.matches.is_empty() {
                vec![None]
            } else {
                rule.matches.iter().map(Some).collect()
            };
            for m in matches {
                routes.push(Route {
                    name: name.clone(),
                    r#match: Some(route_match(m)),
                    action: Some(Action::Route(action.clone())),
                    request_headers_to_add: headers_to_add(rule.request_headers.as_ref()),
                    request_headers_to_remove: rule
                        .request_headers
                        .as_ref()
                        .map(|h| h.remove.clone())
                        .unwrap_or_default(),
                    ..Default::default()
                });
            }
        }
    }
    routes.push(Route {
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
            ..Default::default()
        })),
        ..Default::default()
    });
    VirtualHost {
        name: names::vhost_name(svc, port),
        domains: names::domains(svc, port, cluster_ip, bare_names),
        routes,
        ..Default::default()
    }
}

/// A route configuration from virtual hosts already in a stable order.
pub fn route_configuration(name: &str, virtual_hosts: Vec<VirtualHost>) -> RouteConfiguration {
    RouteConfiguration {
        name: name.to_string(),
        virtual_hosts,
        // Clusters arrive over the same stream; never reject routes for a missing one.
        validate_clusters: Some(envoy_types::pb::google::protobuf::BoolValue { value: false }),
        ..Default::default()
    }
}

/// Envoy's default route timeout is 15s; a mesh should not cut long requests it was not asked
/// to cut, so routes without a policy timeout have none.
const NO_TIMEOUT: Duration = Duration {
    seconds: 0,
    nanos: 0,
};

fn pb_duration(d: std::time::Duration) -> Duration {
    Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn rule_action(index: &Index, svc: &ObjectKey, port: u16, rule: &HttpRule) -> RouteAction {
    let mut weighted: Vec<(String, u32)> = rule
        .destinations
        .iter()
        .map(|d| {
            let cluster = match (&d.subset, &d.service) {
                (Some(subset), _) => names::cluster_name(svc, port, Some(subset)),
                (None, Some(other)) => {
                    let other = ObjectKey::new(
                        d.namespace.clone().unwrap_or_else(|| svc.namespace.clone()),
                        other.clone(),
                    );
                    let other_port = destination_port(index, &other, d.port, port);
                    names::cluster_name(&other, other_port, None)
                }
                (None, None) => names::cluster_name(svc, port, None),
            };
            (cluster, d.weight.unwrap_or(100))
        })
        .filter(|(_, w)| *w > 0)
        .collect();
    let cluster_specifier = if weighted.len() == 1 {
        ClusterSpecifier::Cluster(weighted.remove(0).0)
    } else {
        ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: weighted
                .into_iter()
                .map(|(name, weight)| ClusterWeight {
                    name,
                    weight: Some(UInt32Value { value: weight }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    };
    let timeout = rule
        .timeout
        .as_ref()
        .and_then(|t| t.to_std().ok())
        .map(pb_duration)
        .unwrap_or(NO_TIMEOUT);
    let retry_policy = rule
        .retries
        .as_ref()
        .filter(|r| r.attempts > 0)
        .map(|r| RetryPolicy {
            retry_on: if r.retry_on.is_empty() {
                DEFAULT_RETRY_ON.to_string()
            } else {
                r.retry_on
                    .iter()
                    .map(|c| c.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            },
            num_retries: Some(UInt32Value { value: r.attempts }),
            per_try_timeout: r
                .per_try_timeout
                .as_ref()
                .and_then(|t| t.to_std().ok())
                .map(pb_duration),
            ..Default::default()
        });
    RouteAction {
        cluster_specifier: Some(cluster_specifier),
        timeout: Some(timeout),
        retry_policy,
        ..Default::default()
    }
}

/// The port of another Service a destination means: the one given, the only one it has, or
/// the same number as the port being routed. Unresolvable ports yield a cluster that does not
/// exist, so Envoy answers 503 for that share (and status says BackendNotFound).
pub fn destination_port(index: &Index, other: &ObjectKey, given: Option<u16>, routed: u16) -> u16 {
    if let Some(port) = given {
        return port;
    }
    match index.service(other).map(|s| s.ports.as_slice()) {
        Some([only]) => only.port,
        _ => routed,
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
        Some(p) => match p.match_type {
            PathMatchType::Exact => PathSpecifier::Path(p.value.clone()),
            PathMatchType::Prefix => {
                let trimmed = p.value.trim_end_matches('/');
                if trimmed.is_empty() {
                    PathSpecifier::Prefix("/".into())
                } else {
                    // `/api` matches `/api` and `/api/x`, not `/apix`.
                    PathSpecifier::PathSeparatedPrefix(trimmed.to_string())
                }
            }
            PathMatchType::RegularExpression => PathSpecifier::SafeRegex(regex(&p.value)),
        },
    };
    let mut headers: Vec<HeaderMatcher> = m
        .headers
        .iter()
        .map(|h| HeaderMatcher {
            name: h.name.to_ascii_lowercase(),
            header_match_specifier: Some(match string_matcher(h.match_type, h.value.as_deref()) {
                Some(sm) => HeaderMatchSpecifier::StringMatch(sm),
                None => HeaderMatchSpecifier::PresentMatch(true),
            }),
            ..Default::default()
        })
        .collect();
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
            query_parameter_match_specifier: Some(
                match string_matcher(q.match_type, q.value.as_deref()) {
                    Some(sm) => QueryParameterMatchSpecifier::StringMatch(sm),
                    None => QueryParameterMatchSpecifier::PresentMatch(true),
                },
            ),
        })
        .collect();
    RouteMatch {
        path_specifier: Some(path_specifier),
        headers,
        query_parameters,
        ..Default::default()
    }
}

/// `None` for Present.
fn string_matcher(match_type: StringMatchType, value: Option<&str>) -> Option<StringMatcher> {
    let value = value.unwrap_or_default().to_string();
    let pattern = match match_type {
        StringMatchType::Exact => MatchPattern::Exact(value),
        StringMatchType::Prefix => MatchPattern::Prefix(value),
        StringMatchType::RegularExpression => MatchPattern::SafeRegex(regex(&value)),
        StringMatchType::Present => return None,
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

fn headers_to_add(modifier: Option<&HeaderModifier>) -> Vec<HeaderValueOption> {
    let Some(m) = modifier else { return Vec::new() };
    let option = |h: &weir_api::HeaderValue, action: HeaderAppendAction| HeaderValueOption {
        header: Some(HeaderValue {
            key: h.name.to_ascii_lowercase(),
            value: h.value.clone(),
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    };
    m.set
        .iter()
        .map(|h| option(h, HeaderAppendAction::OverwriteIfExistsOrAdd))
        .chain(
            m.add
                .iter()
                .map(|h| option(h, HeaderAppendAction::AppendIfExistsOrAdd)),
        )
        .collect()
}
