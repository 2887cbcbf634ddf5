//! A workload's authorization as Envoy enforces it on the inbound side, from the
//! [`InboundAuthorization`] the index derived for its pod.
//!
//! ```text
//! InboundAuthorization
//!   --http_rbac_per_route--> RBACPerRoute in the workload's inbound route table (the
//!                  chain's envoy.filters.http.rbac allows all by itself): DENY action, one
//!                  policy per deny rule and per "nothing allowed it" fallback, keyed
//!                  `<ns>/<policy>/<rule>@<port>` (Audit policies: the same as shadow rules)
//!   --mesh_peers--> per pod port, the URI SANs the TLS handshake of the mesh TCP chain
//!                  accepts: a denied peer never completes it, so no byte flows either way
//!                  (Envoy's network RBAC decides on the first byte from the caller, after
//!                  a server-first application would have spoken)
//!   --plaintext_denied--> per pod port, whether callers without identity are refused
//!   --network_shadow--> envoy.filters.network.rbac shadow rules for Audit on TCP
//! ```
//!
//! Policy maps are encoded from `BTreeMap`s (see [`SortedRbac`]): the same input gives the
//! same bytes, so an unchanged listener keeps its version.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::listener::v3::Filter;
use envoy_types::pb::envoy::config::rbac::v3::{
    permission, principal, rbac::Action, Permission, Policy, Principal,
};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, HeaderMatcher,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    subject_alt_name_matcher::SanType, SubjectAltNameMatcher,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    path_matcher, string_matcher::MatchPattern, PathMatcher, RegexMatcher, StringMatcher,
};
use envoy_types::pb::google::protobuf::Any;
use weir_api::DefaultAuthorization;

use super::chain::{http_filter, network_filter};
use super::outbound::route::header_matcher;
use super::pb;
use crate::authorization::{
    Caller, Callers, HttpConditions, InboundAuthorization, Mode, PortAuthorization, PortPolicy,
    PortRule, DEFAULT_DENY_RULE, DEFAULT_RULE,
};
use crate::identity::SpiffeId;
use crate::mesh::{
    CEL_ACCESS_LOG_FILTER, DENIAL_LOG_NAME, HTTP_GRPC_ACCESS_LOG, HTTP_RBAC_FILTER,
    NETWORK_RBAC_FILTER, REPORTS_CLUSTER, TCP_GRPC_ACCESS_LOG,
};
use envoy_types::pb::envoy::config::accesslog::v3::{
    access_log, access_log_filter::FilterSpecifier, comparison_filter, extension_filter, AccessLog,
    AccessLogFilter, AndFilter, ComparisonFilter, ExtensionFilter, MetadataFilter, OrFilter,
    StatusCodeFilter,
};
use envoy_types::pb::envoy::config::core::v3::{
    grpc_service, ApiVersion, GrpcService, RuntimeUInt32,
};
use envoy_types::pb::envoy::extensions::access_loggers::filters::cel::v3::ExpressionFilter;
use envoy_types::pb::envoy::extensions::access_loggers::grpc::v3::{
    CommonGrpcAccessLogConfig, HttpGrpcAccessLogConfig, TcpGrpcAccessLogConfig,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    metadata_matcher::{path_segment, PathSegment},
    value_matcher, MetadataMatcher, ValueMatcher,
};
use envoy_types::util::pack_any;

/// The policy id of a denial, as Envoy reports it (`rbac_access_denied_matched_policy[..]`
/// and `shadow_effective_policy_id`): `<ns>/<policy>/<rule>@<port>`, or `default@<port>` /
/// `default` for the workload default.
pub fn policy_id(policy: Option<&crate::ObjectKey>, rule: &str, port: Option<u16>) -> String {
    let mut id = match policy {
        Some(p) => format!("{}/{}/{rule}", p.namespace, p.name),
        None => rule.to_string(),
    };
    if let Some(port) = port {
        id.push_str(&format!("@{port}"));
    }
    id
}

/// Reads a policy id back: the policy (`None` for the default), the rule, the port.
pub fn parse_policy_id(id: &str) -> Option<(Option<crate::ObjectKey>, String, Option<u16>)> {
    let (rest, port) = match id.rsplit_once('@') {
        Some((rest, port)) => (rest, Some(port.parse().ok()?)),
        None => (id, None),
    };
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        [rule] => Some((None, rule.to_string(), port)),
        [ns, name, rule] => Some((
            Some(crate::ObjectKey::new(*ns, *name)),
            rule.to_string(),
            port,
        )),
        _ => None,
    }
}

/// The RBAC messages with their policies in a sorted map (Envoy's generated type has a
/// `HashMap`, whose encoding order changes from one build to the next).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SortedRbac {
    /// `envoy.config.rbac.v3.RBAC.action`.
    #[prost(enumeration = "Action", tag = "1")]
    pub action: i32,
    /// `envoy.config.rbac.v3.RBAC.policies`.
    #[prost(btree_map = "string, message", tag = "2")]
    pub policies: BTreeMap<String, Policy>,
}

/// `envoy.extensions.filters.http.rbac.v3.RBAC`, the fields Weir sets.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HttpRbacConfig {
    /// Enforced rules.
    #[prost(message, optional, tag = "1")]
    pub rules: Option<SortedRbac>,
    /// Shadow rules (Audit).
    #[prost(message, optional, tag = "2")]
    pub shadow_rules: Option<SortedRbac>,
    /// Stat prefix of the shadow rules.
    #[prost(string, tag = "3")]
    pub shadow_rules_stat_prefix: String,
}

/// `envoy.extensions.filters.network.rbac.v3.RBAC`, the fields Weir sets.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NetworkRbacConfig {
    /// Enforced rules.
    #[prost(message, optional, tag = "1")]
    pub rules: Option<SortedRbac>,
    /// Shadow rules (Audit).
    #[prost(message, optional, tag = "2")]
    pub shadow_rules: Option<SortedRbac>,
    /// Stat prefix.
    #[prost(string, tag = "3")]
    pub stat_prefix: String,
}

const HTTP_RBAC_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
const NETWORK_RBAC_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";

fn any(type_url: &str, message: &impl prost::Message) -> Any {
    Any {
        type_url: type_url.into(),
        value: message.encode_to_vec(),
    }
}

/// The HTTP RBAC filter of every inbound mesh HTTP chain: it allows everything by itself;
/// a workload's rules come with its inbound route table ([`http_rbac_per_route`]), which
/// Envoy applies to the next request of open connections.
pub fn http_rbac_filter() -> HttpFilter {
    http_filter(
        HTTP_RBAC_FILTER,
        any(HTTP_RBAC_TYPE, &HttpRbacConfig::default()),
    )
}

/// `RBACPerRoute` for a workload's inbound route table; `None` when it would deny nothing.
pub fn http_rbac_per_route(authz: &InboundAuthorization, trust_domain: &str) -> Option<Any> {
    let config = http_rbac_config(authz, trust_domain)?;
    Some(any(
        HTTP_RBAC_PER_ROUTE_TYPE,
        &HttpRbacPerRoute { rbac: Some(config) },
    ))
}

/// `envoy.extensions.filters.http.rbac.v3.RBACPerRoute`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HttpRbacPerRoute {
    /// The filter's config for the route.
    #[prost(message, optional, tag = "2")]
    pub rbac: Option<HttpRbacConfig>,
}

const HTTP_RBAC_PER_ROUTE_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute";

/// The HTTP RBAC config of a workload, `None` when it would deny nothing.
fn http_rbac_config(authz: &InboundAuthorization, trust_domain: &str) -> Option<HttpRbacConfig> {
    let mut enforced = BTreeMap::new();
    let mut shadow = BTreeMap::new();
    for port in &authz.ports {
        let mut any_enforced = false;
        for policy in &port.policies {
            let out = match policy.mode {
                Mode::Enforce => {
                    any_enforced = true;
                    &mut enforced
                }
                Mode::Audit => &mut shadow,
            };
            out.extend(policy_rules(
                authz.default,
                port,
                policy,
                trust_domain,
                View::Http,
            ));
        }
        if let Some(denied) = default_denies(authz.default).filter(|_| !any_enforced) {
            enforced.insert(
                policy_id(None, DEFAULT_RULE, Some(port.port)),
                rbac_policy(vec![port_is(port.port)], vec![denied]),
            );
        }
    }
    if let Some(denied) = default_denies(authz.default) {
        // Ports no policy covers.
        let covered: Vec<Permission> = authz.ports.iter().map(|p| port_is(p.port)).collect();
        let elsewhere = if covered.is_empty() {
            any_permission()
        } else {
            Permission {
                rule: Some(permission::Rule::NotRule(Box::new(Permission {
                    rule: Some(permission::Rule::OrRules(permission::Set {
                        rules: covered,
                    })),
                }))),
            }
        };
        enforced.insert(
            DEFAULT_RULE.to_string(),
            rbac_policy(vec![elsewhere], vec![denied]),
        );
    }
    if enforced.is_empty() && shadow.is_empty() {
        return None;
    }
    Some(HttpRbacConfig {
        rules: Some(deny(enforced)),
        shadow_rules: (!shadow.is_empty()).then(|| deny(shadow)),
        shadow_rules_stat_prefix: String::new(),
    })
}

/// The network RBAC filter reporting what Audit policies would deny on connections to
/// `port` from mesh peers (`plaintext`: from callers without identity); `None` when there
/// is nothing to audit. Envoy evaluates it on the caller's first byte.
pub fn network_shadow(
    authz: &InboundAuthorization,
    port: &PortAuthorization,
    trust_domain: &str,
    plaintext: bool,
) -> Option<Filter> {
    let mut shadow = BTreeMap::new();
    for policy in port.policies.iter().filter(|p| p.mode == Mode::Audit) {
        if plaintext {
            if let Some(denial) = policy.verdict(authz.default, Caller::Unauthenticated, None) {
                shadow.insert(
                    policy_id(denial.policy.as_ref(), &denial.rule, Some(port.port)),
                    rbac_policy(vec![any_permission()], vec![any_principal()]),
                );
            }
        } else {
            shadow.extend(policy_rules(
                authz.default,
                port,
                policy,
                trust_domain,
                View::Connection,
            ));
        }
    }
    if shadow.is_empty() {
        return None;
    }
    let config = NetworkRbacConfig {
        rules: None,
        shadow_rules: Some(deny(shadow)),
        stat_prefix: format!("inbound_{}", port.port),
    };
    Some(network_filter(
        NETWORK_RBAC_FILTER,
        any(NETWORK_RBAC_TYPE, &config),
    ))
}

/// Whether connections without identity to `port` (`None`: a port no policy covers) are
/// refused.
pub fn plaintext_denied(authz: &InboundAuthorization, port: Option<u16>) -> bool {
    match port {
        Some(port) => authz
            .decide(port, Caller::Unauthenticated, None)
            .denied
            .is_some(),
        None => !authz.default_allows(Caller::Unauthenticated),
    }
}

/// The URI SANs a mesh peer may present on a connection (mesh TCP) to `port` (`None`: a
/// port no policy covers); empty: none may.
///
/// `regex`: the proxy's bootstrap raises RE2's program size limit (bootstraps of this
/// release, which also say `REPORTS`); an older one would reject the listener over a large
/// expression and keep its previous one, so there a prefix with exceptions inside it is
/// left out entirely (stricter: its peers are refused) instead.
pub fn mesh_peers(
    authz: &InboundAuthorization,
    port: Option<&PortAuthorization>,
    trust_domain: &str,
    regex: bool,
) -> Vec<SubjectAltNameMatcher> {
    let everyone = || SanSet {
        include: vec![Atom::Prefix(SpiffeId::trust_domain_prefix(trust_domain))],
        exclude: vec![],
    };
    let default = if authz.default_allows(Caller::Mesh("")) {
        everyone()
    } else {
        SanSet::default()
    };
    let Some(port) = port else {
        return default.matchers(regex);
    };
    let mut set: Option<SanSet> = None;
    for policy in port.policies.iter().filter(|p| p.mode == Mode::Enforce) {
        let mut allowed = SanSet::default();
        for rule in policy.allow.iter().filter(|r| r.http.is_none()) {
            allowed.include.extend(atoms(&rule.callers, trust_domain));
        }
        if !policy.default_deny && authz.default_allows(Caller::Mesh("")) {
            allowed.include.extend(everyone().include);
        }
        for rule in &policy.deny {
            allowed.exclude.extend(atoms(&rule.callers, trust_domain));
        }
        set = Some(match set {
            None => allowed,
            Some(set) => set.intersect(&allowed),
        });
    }
    set.unwrap_or(default).matchers(regex)
}

/// Which form of the rules applies: requests on the HTTP chain, or connections (a rule
/// with HTTP conditions: an allow allows nothing, a deny denies the connection).
#[derive(Clone, Copy, PartialEq, Eq)]
enum View {
    Http,
    Connection,
}

/// One policy's deny-action RBAC policies on one port: its deny rules, then "nothing
/// allowed it" when its `defaultDeny` or the workload default denies.
fn policy_rules(
    default: DefaultAuthorization,
    port: &PortAuthorization,
    policy: &PortPolicy,
    trust_domain: &str,
    view: View,
) -> Vec<(String, Policy)> {
    let mut out = Vec::new();
    let id = |rule: &str| policy_id(Some(&policy.policy), rule, Some(port.port));
    fn http_of(r: &PortRule, view: View) -> Option<&HttpConditions> {
        match view {
            View::Http => r.http.as_ref(),
            View::Connection => None,
        }
    }
    for rule in &policy.deny {
        let mut all = vec![callers_principal(&rule.callers, trust_domain, true)];
        all.extend(http_of(rule, view).map(|h| http_principal(h, true)));
        out.push((
            id(&rule.name),
            rbac_policy(vec![port_is(port.port)], vec![and(all)]),
        ));
    }
    let fallback = if policy.default_deny {
        Some((DEFAULT_DENY_RULE, any_principal()))
    } else {
        default_denies(default).map(|denied| (DEFAULT_RULE, denied))
    };
    if let Some((fallback, denied)) = fallback {
        let allowed: Vec<Principal> = policy
            .allow
            .iter()
            .filter(|r| view == View::Http || r.http.is_none())
            .map(|r| {
                let mut all = vec![callers_principal(&r.callers, trust_domain, false)];
                all.extend(http_of(r, view).map(|h| http_principal(h, false)));
                and(all)
            })
            .collect();
        let not_allowed = if allowed.is_empty() {
            any_principal()
        } else {
            Principal {
                identifier: Some(principal::Identifier::NotId(Box::new(Principal {
                    identifier: Some(principal::Identifier::OrIds(principal::Set {
                        ids: allowed,
                    })),
                }))),
            }
        };
        out.push((
            id(fallback),
            rbac_policy(
                vec![port_is(port.port)],
                vec![and(vec![denied, not_allowed])],
            ),
        ));
    }
    out
}

/// Whom the workload default denies: everyone (`Deny`), callers without identity
/// (`AllowAuthenticated`), nobody (`AllowAll`).
fn default_denies(default: DefaultAuthorization) -> Option<Principal> {
    match default {
        DefaultAuthorization::AllowAll => None,
        DefaultAuthorization::AllowAuthenticated => Some(unauthenticated()),
        DefaultAuthorization::Deny => Some(any_principal()),
    }
}

/// A caller without a verified peer certificate (plaintext).
fn unauthenticated() -> Principal {
    Principal {
        identifier: Some(principal::Identifier::NotId(Box::new(Principal {
            identifier: Some(principal::Identifier::Authenticated(
                principal::Authenticated {
                    principal_name: None,
                },
            )),
        }))),
    }
}

fn deny(policies: BTreeMap<String, Policy>) -> SortedRbac {
    SortedRbac {
        action: Action::Deny as i32,
        policies,
    }
}

fn rbac_policy(permissions: Vec<Permission>, principals: Vec<Principal>) -> Policy {
    Policy {
        permissions,
        principals,
        ..Default::default()
    }
}

fn port_is(port: u16) -> Permission {
    Permission {
        rule: Some(permission::Rule::DestinationPort(port.into())),
    }
}

fn any_permission() -> Permission {
    Permission {
        rule: Some(permission::Rule::Any(true)),
    }
}

fn any_principal() -> Principal {
    Principal {
        identifier: Some(principal::Identifier::Any(true)),
    }
}

fn and(mut ids: Vec<Principal>) -> Principal {
    if ids.len() == 1 {
        return ids.remove(0);
    }
    Principal {
        identifier: Some(principal::Identifier::AndIds(principal::Set { ids })),
    }
}

fn or(mut ids: Vec<Principal>) -> Principal {
    if ids.len() == 1 {
        return ids.remove(0);
    }
    Principal {
        identifier: Some(principal::Identifier::OrIds(principal::Set { ids })),
    }
}

fn string(pattern: MatchPattern) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(pattern),
        ..Default::default()
    }
}

fn peer(pattern: MatchPattern) -> Principal {
    Principal {
        identifier: Some(principal::Identifier::Authenticated(
            principal::Authenticated {
                principal_name: Some(string(pattern)),
            },
        )),
    }
}

/// The principal of a rule's callers. A caller without identity never satisfies an
/// identity condition of an allow rule, and always one of a deny rule (`deny`).
fn callers_principal(callers: &Callers, trust_domain: &str, deny: bool) -> Principal {
    match callers {
        Callers::Any => any_principal(),
        Callers::Unauthenticated => unauthenticated(),
        Callers::Mesh(m) => {
            let mut all = Vec::new();
            if !m.identities.is_empty() {
                all.push(or(m
                    .identities
                    .iter()
                    .map(|id| peer(MatchPattern::Exact(id.clone())))
                    .collect()));
            }
            if !m.service_accounts.is_empty() {
                all.push(or(m
                    .service_accounts
                    .iter()
                    .map(|(ns, sa)| {
                        peer(MatchPattern::Exact(
                            SpiffeId::new(trust_domain, ns, sa).to_string(),
                        ))
                    })
                    .collect()));
            }
            if !m.namespaces.is_empty() {
                all.push(or(m
                    .namespaces
                    .iter()
                    .map(|ns| peer(MatchPattern::Prefix(namespace_prefix(trust_domain, ns))))
                    .collect()));
            }
            let mesh = and(all);
            if deny {
                or(vec![mesh, unauthenticated()])
            } else {
                mesh
            }
        }
    }
}

fn namespace_prefix(trust_domain: &str, namespace: &str) -> String {
    format!(
        "{}ns/{namespace}/sa/",
        SpiffeId::trust_domain_prefix(trust_domain)
    )
}

fn header(name: &str, pattern: MatchPattern) -> Principal {
    Principal {
        identifier: Some(principal::Identifier::Header(HeaderMatcher {
            name: name.into(),
            header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(string(pattern))),
            ..Default::default()
        })),
    }
}

fn url_path(pattern: MatchPattern) -> Principal {
    Principal {
        identifier: Some(principal::Identifier::UrlPath(PathMatcher {
            rule: Some(path_matcher::Rule::Path(string(pattern))),
        })),
    }
}

/// A rule's HTTP conditions, as principal conditions (Envoy's principals see the request
/// too, which lets one policy say "none of these rules").
fn http_principal(h: &HttpConditions, deny: bool) -> Principal {
    let mut all = Vec::new();
    if !h.paths.is_empty() {
        all.push(or(h
            .paths
            .iter()
            .flat_map(|p| {
                if p.ends_with('/') {
                    vec![url_path(MatchPattern::Prefix(p.clone()))]
                } else {
                    vec![
                        url_path(MatchPattern::Exact(p.clone())),
                        url_path(MatchPattern::Prefix(format!("{p}/"))),
                    ]
                }
            })
            .collect()));
    }
    if !h.methods.is_empty() {
        all.push(or(h
            .methods
            .iter()
            .map(|m| header(":method", MatchPattern::Exact(m.as_str().into())))
            .collect()));
    }
    if let Some(g) = &h.grpc {
        if !deny {
            // An allow rule allows gRPC calls; a deny rule denies the method however the
            // call is encoded (gRPC-Web, Connect, JSON transcoding use the same path).
            all.push(header(
                "content-type",
                MatchPattern::Prefix("application/grpc".into()),
            ));
        }
        all.push(url_path(match (&g.service, &g.method) {
            (Some(s), Some(m)) => MatchPattern::Exact(format!("/{s}/{m}")),
            (Some(s), None) => MatchPattern::Prefix(format!("/{s}/")),
            (None, Some(m)) => MatchPattern::SafeRegex(RegexMatcher {
                regex: format!("/[^/]+/{}", regex::escape(m)),
                ..Default::default()
            }),
            (None, None) => MatchPattern::Prefix("/".into()),
        }));
    }
    for h in &h.headers {
        all.push(Principal {
            identifier: Some(principal::Identifier::Header(header_matcher(h))),
        });
    }
    and(all)
}

/// Where denials are reported: the sidecar's access log (see [`super::telemetry`], which
/// logs every denial unless the pod turned its log off) and, when the proxy's bootstrap
/// has the reports cluster, the operator (Envoy's gRPC access log service), which turns
/// them into policy status and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenialLog {
    /// Requests (HTTP RBAC).
    Http,
    /// Connections (network RBAC shadow rules; refused handshakes on restricted ports).
    Connection,
}

/// What a denial on a chain of kind `kind` looks like to an access log filter: an
/// enforced denial (HTTP: the RBAC filter's response details; connections: a handshake the
/// restricted peer set refused) or one an Audit policy would make.
pub fn denial_filter(kind: DenialLog) -> AccessLogFilter {
    let filter_name = match kind {
        DenialLog::Http => HTTP_RBAC_FILTER,
        DenialLog::Connection => NETWORK_RBAC_FILTER,
    };
    let denied = |key: &str| AccessLogFilter {
        filter_specifier: Some(FilterSpecifier::MetadataFilter(MetadataFilter {
            matcher: Some(MetadataMatcher {
                filter: filter_name.into(),
                path: vec![PathSegment {
                    segment: Some(path_segment::Segment::Key(key.into())),
                }],
                value: Some(ValueMatcher {
                    match_pattern: Some(value_matcher::MatchPattern::StringMatch(string(
                        MatchPattern::Exact("denied".into()),
                    ))),
                }),
                invert: false,
            }),
            match_if_key_not_found: Some(pb::boolv(false)),
        })),
    };
    let cel = |expression: &str| AccessLogFilter {
        filter_specifier: Some(FilterSpecifier::ExtensionFilter(ExtensionFilter {
            name: CEL_ACCESS_LOG_FILTER.into(),
            config_type: Some(extension_filter::ConfigType::TypedConfig(pack_any(
                ExpressionFilter {
                    expression: expression.into(),
                    ..Default::default()
                },
            ))),
        })),
    };
    let mut any_of = vec![denied("shadow_engine_result")];
    match kind {
        // The expression only for a 403: it is evaluated for every request that ends.
        DenialLog::Http => any_of.push(AccessLogFilter {
            filter_specifier: Some(FilterSpecifier::AndFilter(AndFilter {
                filters: vec![
                    AccessLogFilter {
                        filter_specifier: Some(FilterSpecifier::StatusCodeFilter(
                            StatusCodeFilter {
                                comparison: Some(ComparisonFilter {
                                    op: comparison_filter::Op::Eq as i32,
                                    value: Some(RuntimeUInt32 {
                                        default_value: 403,
                                        runtime_key: "weir.access_log.denied_status".into(),
                                    }),
                                }),
                            },
                        )),
                    },
                    cel("response.code_details.startsWith('rbac_access_denied')"),
                ],
            })),
        }),
        // A peer the restricted handshake refused.
        DenialLog::Connection => any_of.push(cel("connection.transport_failure_reason != ''")),
    }
    AccessLogFilter {
        filter_specifier: Some(FilterSpecifier::OrFilter(OrFilter { filters: any_of })),
    }
}

/// The access log that reports denials on a chain of kind `kind` to the operator, when
/// the proxy's bootstrap has the reports cluster (`reports`).
pub fn denial_logs(kind: DenialLog, reports: bool) -> Vec<AccessLog> {
    let filter = denial_filter(kind);
    let mut logs = Vec::new();
    if reports {
        let common = CommonGrpcAccessLogConfig {
            log_name: DENIAL_LOG_NAME.into(),
            grpc_service: Some(GrpcService {
                target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                    grpc_service::EnvoyGrpc {
                        cluster_name: REPORTS_CLUSTER.into(),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            }),
            transport_api_version: ApiVersion::V3 as i32,
            // Batched: a flood of denials is a few messages a second per proxy.
            buffer_flush_interval: Some(pb::duration(std::time::Duration::from_secs(1))),
            buffer_size_bytes: Some(pb::u32v(64 * 1024)),
            ..Default::default()
        };
        logs.push(match kind {
            DenialLog::Http => AccessLog {
                name: HTTP_GRPC_ACCESS_LOG.into(),
                filter: Some(filter),
                config_type: Some(access_log::ConfigType::TypedConfig(pack_any(
                    HttpGrpcAccessLogConfig {
                        common_config: Some(common),
                        ..Default::default()
                    },
                ))),
            },
            DenialLog::Connection => AccessLog {
                name: TCP_GRPC_ACCESS_LOG.into(),
                filter: Some(filter),
                config_type: Some(access_log::ConfigType::TypedConfig(pack_any(
                    TcpGrpcAccessLogConfig {
                        common_config: Some(common),
                    },
                ))),
            },
        });
    }
    logs
}

/// A set of URI SANs: what `include` matches and `exclude` does not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct SanSet {
    include: Vec<Atom>,
    exclude: Vec<Atom>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Atom {
    Exact(String),
    Prefix(String),
}

impl Atom {
    fn covers(&self, other: &Atom) -> bool {
        match (self, other) {
            (Atom::Exact(a), Atom::Exact(b)) => a == b,
            (Atom::Exact(_), Atom::Prefix(_)) => false,
            (Atom::Prefix(p), Atom::Exact(b) | Atom::Prefix(b)) => b.starts_with(p.as_str()),
        }
    }

    fn intersect(&self, other: &Atom) -> Option<Atom> {
        if self.covers(other) {
            Some(other.clone())
        } else if other.covers(self) {
            Some(self.clone())
        } else {
            None
        }
    }
}

fn intersect_all(a: &[Atom], b: &[Atom]) -> Vec<Atom> {
    let mut out: Vec<Atom> = a
        .iter()
        .flat_map(|x| b.iter().filter_map(move |y| x.intersect(y)))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The SAN atoms of a rule's callers among mesh peers.
fn atoms(callers: &Callers, trust_domain: &str) -> Vec<Atom> {
    let everyone = vec![Atom::Prefix(SpiffeId::trust_domain_prefix(trust_domain))];
    match callers {
        Callers::Any => everyone,
        Callers::Unauthenticated => Vec::new(),
        Callers::Mesh(m) => {
            let mut set = everyone;
            if !m.identities.is_empty() {
                let ids: Vec<Atom> = m
                    .identities
                    .iter()
                    .map(|i| Atom::Exact(i.clone()))
                    .collect();
                set = intersect_all(&set, &ids);
            }
            if !m.service_accounts.is_empty() {
                let sas: Vec<Atom> = m
                    .service_accounts
                    .iter()
                    .map(|(ns, sa)| Atom::Exact(SpiffeId::new(trust_domain, ns, sa).to_string()))
                    .collect();
                set = intersect_all(&set, &sas);
            }
            if !m.namespaces.is_empty() {
                let nss: Vec<Atom> = m
                    .namespaces
                    .iter()
                    .map(|ns| Atom::Prefix(namespace_prefix(trust_domain, ns)))
                    .collect();
                set = intersect_all(&set, &nss);
            }
            set
        }
    }
}

impl SanSet {
    fn intersect(&self, other: &SanSet) -> SanSet {
        let mut exclude = self.exclude.clone();
        exclude.extend(other.exclude.iter().cloned());
        SanSet {
            include: intersect_all(&self.include, &other.include),
            exclude,
        }
    }

    /// Envoy SAN matchers for the set: exact and prefix matchers, and for a prefix with
    /// exceptions inside it, a regular expression of the prefix followed by anything but
    /// the exceptions.
    fn matchers(&self, regex: bool) -> Vec<SubjectAltNameMatcher> {
        let mut out = Vec::new();
        let mut include = self.include.clone();
        include.sort();
        include.dedup();
        for atom in &include {
            if self.exclude.iter().any(|e| e.covers(atom)) {
                continue;
            }
            let pattern = match atom {
                Atom::Exact(id) => MatchPattern::Exact(id.clone()),
                Atom::Prefix(p) => {
                    let inside: Vec<&Atom> =
                        self.exclude.iter().filter(|e| atom.covers(e)).collect();
                    if inside.is_empty() {
                        MatchPattern::Prefix(p.clone())
                    } else if !regex {
                        continue;
                    } else {
                        let mut trie = Trie::default();
                        for e in inside {
                            match e {
                                Atom::Exact(x) => trie.insert(&x[p.len()..], false),
                                Atom::Prefix(q) => trie.insert(&q[p.len()..], true),
                            }
                        }
                        let Some(rest) = trie.complement() else {
                            continue;
                        };
                        MatchPattern::SafeRegex(RegexMatcher {
                            regex: format!("{}{rest}", regex::escape(p)),
                            ..Default::default()
                        })
                    }
                }
            };
            out.push(SubjectAltNameMatcher {
                san_type: SanType::Uri as i32,
                matcher: Some(string(pattern)),
                ..Default::default()
            });
        }
        out
    }
}

/// Excluded remainders: whole strings (`exact`) and prefixes.
#[derive(Default)]
struct Trie {
    exact: bool,
    prefix: bool,
    children: BTreeMap<char, Trie>,
}

impl Trie {
    fn insert(&mut self, rest: &str, prefix: bool) {
        let mut node = self;
        for c in rest.chars() {
            node = node.children.entry(c).or_default();
        }
        if prefix {
            node.prefix = true;
        } else {
            node.exact = true;
        }
    }

    /// An RE2 expression for every string that is not excluded; `None` when none is left.
    fn complement(&self) -> Option<String> {
        if self.prefix {
            return None;
        }
        let mut alternatives = Vec::new();
        if !self.exact {
            alternatives.push(String::new());
        }
        if self.children.is_empty() {
            alternatives.push(".+".to_string());
        } else {
            let class: String = self
                .children
                .keys()
                .map(|c| regex::escape(&c.to_string()))
                .collect();
            alternatives.push(format!("[^{class}].*"));
            for (c, child) in &self.children {
                if let Some(rest) = child.complement() {
                    alternatives.push(format!("{}{rest}", regex::escape(&c.to_string())));
                }
            }
        }
        Some(format!("(?:{})", alternatives.join("|")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepts(set: &SanSet, id: &str) -> bool {
        set.matchers(true).iter().any(|m| {
            match m.matcher.as_ref().unwrap().match_pattern.as_ref().unwrap() {
                MatchPattern::Exact(x) => x == id,
                MatchPattern::Prefix(p) => id.starts_with(p.as_str()),
                MatchPattern::SafeRegex(r) => regex::Regex::new(&format!("^(?:{})$", r.regex))
                    .unwrap()
                    .is_match(id),
                _ => false,
            }
        })
    }

    const TD: &str = "spiffe://cluster.local/";

    #[test]
    fn san_sets_exclude_what_deny_rules_name_even_inside_an_allowed_prefix() {
        let set = SanSet {
            include: vec![Atom::Prefix(TD.into())],
            exclude: vec![
                Atom::Exact(format!("{TD}ns/shop/sa/bad")),
                Atom::Prefix(format!("{TD}ns/robots/sa/")),
            ],
        };
        assert!(accepts(&set, &format!("{TD}ns/shop/sa/web")));
        assert!(accepts(&set, &format!("{TD}ns/shop/sa/badge")));
        assert!(accepts(&set, &format!("{TD}ns/shop/sa/ba")));
        assert!(!accepts(&set, &format!("{TD}ns/shop/sa/bad")));
        assert!(!accepts(&set, &format!("{TD}ns/robots/sa/r2")));
        assert!(accepts(&set, &format!("{TD}ns/robotsx/sa/r2")));
        assert!(!accepts(&set, "spiffe://other.domain/ns/shop/sa/web"));
    }

    #[test]
    fn an_exclusion_covering_an_inclusion_removes_it() {
        let set = SanSet {
            include: vec![Atom::Prefix(format!("{TD}ns/shop/sa/"))],
            exclude: vec![Atom::Prefix(TD.into())],
        };
        assert!(set.matchers(true).is_empty());
        let both = SanSet {
            include: vec![Atom::Prefix(format!("{TD}ns/shop/sa/"))],
            exclude: vec![],
        }
        .intersect(&SanSet {
            include: vec![Atom::Exact(format!("{TD}ns/shop/sa/web"))],
            exclude: vec![],
        });
        assert!(accepts(&both, &format!("{TD}ns/shop/sa/web")));
        assert!(!accepts(&both, &format!("{TD}ns/shop/sa/api")));
    }

    #[test]
    fn policy_ids_round_trip() {
        let key = crate::ObjectKey::new("backend", "api");
        let id = policy_id(Some(&key), "deny[0]", Some(8080));
        assert_eq!(id, "backend/api/deny[0]@8080");
        assert_eq!(
            parse_policy_id(&id),
            Some((Some(key), "deny[0]".into(), Some(8080)))
        );
        assert_eq!(
            parse_policy_id("default"),
            Some((None, "default".into(), None))
        );
    }
}
