//! Authorization: who may call a workload, decided by the server's sidecar from the peer
//! certificate it verified (the caller's sidecar is not trusted).
//!
//! ```text
//! TrafficPolicy spec.authorization --sources::traffic_policy--> Authorization (in RouteSet)
//! Index::workload(pod) --inbound()--> InboundAuthorization: per pod port, the policies of
//!     the Services the pod backs that cover it (rules resolved to that port, HTTP
//!     conditions dropped or widened on a port that is not HTTP), and the workload default
//!   --translate::authorization--> Envoy: HTTP RBAC (deny action, shadow rules for Audit),
//!     per-port TLS peer sets for TCP (checked in the handshake), plaintext verdicts
//! InboundAuthorization::decide: the same semantics in Rust (unit tests, attribution)
//! ```
//!
//! Per policy covering a port: a matching deny rule denies; else a matching allow rule
//! allows; else `defaultDeny` denies; else the workload default decides. A request is
//! allowed when every Enforce policy covering its port allows it (several Services of one
//! pod may share a port); an Audit policy only reports. A port no policy covers follows the
//! workload default.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use weir_api::DefaultAuthorization;

use crate::index::{Index, ServicePort};
use crate::object_key::ObjectKey;
use crate::routing::{Method, NamedMatch, ValueMatch};

/// Whether a policy denies or only reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Mode {
    /// Denies.
    #[default]
    Enforce,
    /// Reports what it would deny.
    Audit,
}

impl Mode {
    /// As written in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "Enforce",
            Mode::Audit => "Audit",
        }
    }
}

/// One policy's authorization, as its source says it (ports as the Service names them).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Authorization {
    /// Enforce or Audit.
    pub mode: Mode,
    /// Requests no rule allows are denied.
    pub default_deny: bool,
    /// Allow rules.
    pub allow: Vec<Rule>,
    /// Deny rules (evaluated first).
    pub deny: Vec<Rule>,
}

/// One rule: every given condition must hold.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rule {
    /// `allow[0]`, `deny[1]`, or the name the user gave.
    pub name: String,
    /// Who the rule is about.
    pub callers: Callers,
    /// Ports of the target Service; every port when empty.
    pub ports: Vec<PortRef>,
    /// Conditions on HTTP requests.
    pub http: HttpConditions,
}

/// A port of a Service, as a rule names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortRef {
    /// The Service port number.
    Number(u16),
    /// The Service port name.
    Name(String),
}

impl PortRef {
    /// From a manifest's int-or-string.
    pub fn from_int_or_string(value: &IntOrString) -> Option<PortRef> {
        match value {
            IntOrString::Int(n) => u16::try_from(*n)
                .ok()
                .filter(|n| *n > 0)
                .map(PortRef::Number),
            IntOrString::String(s) => match s.parse::<u16>() {
                Ok(n) if n > 0 => Some(PortRef::Number(n)),
                _ if !s.is_empty() => Some(PortRef::Name(s.clone())),
                _ => None,
            },
        }
    }

    fn selects(&self, port: &ServicePort) -> bool {
        match self {
            PortRef::Number(n) => port.port == *n,
            PortRef::Name(name) => port.name == *name,
        }
    }
}

impl std::fmt::Display for PortRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Name(name) => write!(f, "{name}"),
        }
    }
}

/// Who a rule is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Callers {
    /// Every caller, with or without a mesh identity.
    Any,
    /// Callers without a mesh identity, only them.
    Unauthenticated,
    /// Callers with a mesh identity satisfying every non-empty list.
    Mesh(MeshCallers),
}

/// Conditions on a caller's mesh identity: each non-empty list must hold.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MeshCallers {
    /// Full SPIFFE IDs.
    pub identities: Vec<String>,
    /// `(namespace, service account)`.
    pub service_accounts: Vec<(String, String)>,
    /// Namespaces.
    pub namespaces: Vec<String>,
}

/// Conditions on an HTTP request; all given ones must hold.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct HttpConditions {
    /// Path prefixes, by segment.
    pub paths: Vec<String>,
    /// Methods.
    pub methods: Vec<Method>,
    /// A gRPC service and method (either may be any).
    pub grpc: Option<GrpcCondition>,
    /// Header conditions (names lower-cased).
    pub headers: Vec<NamedMatch>,
}

impl HttpConditions {
    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
            && self.methods.is_empty()
            && self.grpc.is_none()
            && self.headers.is_empty()
    }
}

/// A gRPC service and method by exact name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GrpcCondition {
    /// The fully qualified service; any when `None`.
    pub service: Option<String>,
    /// The method; any when `None`.
    pub method: Option<String>,
}

/// Where a workload's default comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DefaultSource {
    /// MeshIdentity `spec.authorization.default`.
    Mesh,
    /// The namespace's label.
    Namespace,
    /// The pod's annotation.
    Pod,
}

/// What a workload's sidecar enforces inbound: the input of its inbound listener.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InboundAuthorization {
    /// What the workload allows where no policy decides.
    pub default: DefaultAuthorization,
    /// Where that default was set.
    pub default_from: DefaultSource,
    /// Per pod port the pod serves for a Service (and any other a policy covers), in port
    /// order; `policies` is empty where none covers it.
    pub ports: Vec<PortAuthorization>,
}

/// The policies covering one pod port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortAuthorization {
    /// The pod (target) port.
    pub port: u16,
    /// Whether the port is HTTP for every Service mapping to it: HTTP conditions apply;
    /// otherwise rules were resolved as for connections.
    pub http: bool,
    /// The policies, in key order.
    pub policies: Vec<PortPolicy>,
}

/// One policy's rules that apply to one pod port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortPolicy {
    /// The policy.
    pub policy: ObjectKey,
    /// Enforce or Audit.
    pub mode: Mode,
    /// Requests no rule allows are denied.
    pub default_deny: bool,
    /// Deny rules for this port.
    pub deny: Vec<PortRule>,
    /// Allow rules for this port.
    pub allow: Vec<PortRule>,
}

/// A rule resolved to one port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRule {
    /// The rule's name.
    pub name: String,
    /// Who it is about.
    pub callers: Callers,
    /// Its HTTP conditions; `None` on a port that is not HTTP (or when it has none).
    pub http: Option<HttpConditions>,
}

/// The caller of a request or connection, as the server's sidecar knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller<'a> {
    /// A peer certificate with this URI SAN (verified against the mesh's trust bundle).
    Mesh(&'a str),
    /// No mesh identity (plaintext).
    Unauthenticated,
}

/// What an HTTP request looks like to the rules.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The method.
    pub method: &'a str,
    /// The path, without the query.
    pub path: &'a str,
    /// Headers (names lower-case).
    pub headers: &'a [(&'a str, &'a str)],
}

/// Which rule decided a denial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The policy; `None` for the workload default on a port no policy covers.
    pub policy: Option<ObjectKey>,
    /// The rule: a deny rule's name, `defaultDeny`, or `default`.
    pub rule: String,
}

/// The verdict on one request or connection.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    /// Why it is denied; `None`: allowed.
    pub denied: Option<Denial>,
    /// What Audit policies would have denied.
    pub audit: Vec<Denial>,
}

/// The rule name of a denial by a policy's `defaultDeny`.
pub const DEFAULT_DENY_RULE: &str = "defaultDeny";
/// The rule name of a denial by the workload default.
pub const DEFAULT_RULE: &str = "default";

impl InboundAuthorization {
    /// The policies covering `port`, if any.
    pub fn port(&self, port: u16) -> Option<&PortAuthorization> {
        self.ports
            .binary_search_by_key(&port, |p| p.port)
            .ok()
            .map(|i| &self.ports[i])
    }

    /// Whether the default allows `caller`.
    pub fn default_allows(&self, caller: Caller) -> bool {
        default_allows(self.default, caller)
    }

    /// The verdict on a request (`Some`) or a connection (`None`) from `caller` to `port`.
    pub fn decide(&self, port: u16, caller: Caller, request: Option<&Request>) -> Decision {
        let Some(covered) = self.port(port) else {
            return Decision {
                denied: (!self.default_allows(caller)).then(|| Denial {
                    policy: None,
                    rule: DEFAULT_RULE.into(),
                }),
                audit: Vec::new(),
            };
        };
        let request = request.filter(|_| covered.http);
        let mut decision = Decision::default();
        let mut enforced = false;
        for policy in &covered.policies {
            let verdict = policy.verdict(self.default, caller, request);
            match policy.mode {
                Mode::Enforce => {
                    enforced = true;
                    if decision.denied.is_none() {
                        decision.denied = verdict;
                    }
                }
                Mode::Audit => decision.audit.extend(verdict),
            }
        }
        if !enforced && !self.default_allows(caller) {
            decision.denied = Some(Denial {
                policy: None,
                rule: DEFAULT_RULE.into(),
            });
        }
        decision
    }
}

/// Whether `default` allows `caller`.
pub fn default_allows(default: DefaultAuthorization, caller: Caller) -> bool {
    match default {
        DefaultAuthorization::AllowAll => true,
        DefaultAuthorization::AllowAuthenticated => matches!(caller, Caller::Mesh(_)),
        DefaultAuthorization::Deny => false,
    }
}

impl PortPolicy {
    /// This policy's verdict as if enforced: the denial, or `None` when it allows.
    pub fn verdict(
        &self,
        default: DefaultAuthorization,
        caller: Caller,
        request: Option<&Request>,
    ) -> Option<Denial> {
        let denial = |rule: &str| {
            Some(Denial {
                policy: Some(self.policy.clone()),
                rule: rule.to_string(),
            })
        };
        if let Some(rule) = self.deny.iter().find(|r| r.matches(caller, request, true)) {
            return denial(&rule.name);
        }
        if self.allow.iter().any(|r| r.matches(caller, request, false)) {
            return None;
        }
        if self.default_deny {
            return denial(DEFAULT_DENY_RULE);
        }
        if default_allows(default, caller) {
            None
        } else {
            denial(DEFAULT_RULE)
        }
    }
}

impl PortRule {
    /// Whether the rule matches. What cannot be known counts against the caller: a deny
    /// rule matches a caller without identity, and a connection (no request) when it has
    /// HTTP conditions; an allow rule matches neither.
    pub fn matches(&self, caller: Caller, request: Option<&Request>, deny: bool) -> bool {
        let callers = match (&self.callers, caller) {
            (Callers::Any, _) => true,
            (Callers::Unauthenticated, c) => c == Caller::Unauthenticated,
            (Callers::Mesh(_), Caller::Unauthenticated) => deny,
            (Callers::Mesh(m), Caller::Mesh(id)) => m.matches(id),
        };
        let http = match (&self.http, request) {
            (None, _) => true,
            (Some(_), None) => deny,
            (Some(h), Some(r)) => h.matches(r, deny),
        };
        callers && http
    }
}

impl MeshCallers {
    /// Whether the identity satisfies every non-empty list.
    pub fn matches(&self, id: &str) -> bool {
        let parsed = crate::identity::SpiffeId::parse(id).ok();
        let (ns, sa) = parsed
            .as_ref()
            .map(|p| (p.namespace.as_str(), p.service_account.as_str()))
            .unwrap_or_default();
        (self.identities.is_empty() || self.identities.iter().any(|i| i == id))
            && (self.service_accounts.is_empty()
                || (parsed.is_some()
                    && self
                        .service_accounts
                        .iter()
                        .any(|(n, s)| n == ns && s == sa)))
            && (self.namespaces.is_empty()
                || (parsed.is_some() && self.namespaces.iter().any(|n| n == ns)))
    }
}

impl HttpConditions {
    /// Whether the request satisfies every condition (`deny`: a gRPC condition holds on
    /// the path alone, whatever the content type).
    pub fn matches(&self, request: &Request, deny: bool) -> bool {
        let header = |name: &str| {
            request
                .headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v)
        };
        (self.paths.is_empty() || self.paths.iter().any(|p| path_has_prefix(request.path, p)))
            && (self.methods.is_empty()
                || self.methods.iter().any(|m| m.as_str() == request.method))
            && self.grpc.as_ref().is_none_or(|g| {
                (deny || header("content-type").is_some_and(|c| c.starts_with("application/grpc")))
                    && grpc_path_matches(g, request.path)
            })
            && self
                .headers
                .iter()
                .all(|h| match (header(&h.name), &h.value) {
                    (None, _) => false,
                    (Some(_), ValueMatch::Present) => true,
                    (Some(v), ValueMatch::Exact(e)) => v == e,
                    (Some(v), ValueMatch::Prefix(p)) => v.starts_with(p.as_str()),
                    (Some(v), ValueMatch::RegularExpression(re)) => {
                        regex::Regex::new(&format!("^(?:{re})$")).is_ok_and(|re| re.is_match(v))
                    }
                })
    }
}

/// `/api` covers `/api` and `/api/...`; `/api/` covers what starts with it.
pub fn path_has_prefix(path: &str, prefix: &str) -> bool {
    if prefix.ends_with('/') {
        return path.starts_with(prefix);
    }
    path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn grpc_path_matches(g: &GrpcCondition, path: &str) -> bool {
    let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
        return false;
    };
    !method.contains('/')
        && g.service.as_deref().is_none_or(|s| s == service)
        && g.method.as_deref().is_none_or(|m| m == method)
}

/// A rule's form on a port: as written where HTTP conditions apply; on a port that is not
/// HTTP, an allow rule with HTTP conditions allows nothing (`None`) and a deny rule with
/// them denies the whole connection.
fn resolve_rule(rule: &Rule, http_port: bool, deny: bool) -> Option<PortRule> {
    let http = (!rule.http.is_empty()).then(|| rule.http.clone());
    let http = match (http, http_port) {
        (Some(h), true) => Some(h),
        (Some(_), false) if !deny => return None,
        _ => None,
    };
    Some(PortRule {
        name: rule.name.clone(),
        callers: rule.callers.clone(),
        http,
    })
}

/// The pod port a Service port reaches on `pod`: its number, or a named target port as the
/// pod's EndpointSlice resolved it.
pub fn target_port(
    index: &Index,
    service: &ObjectKey,
    port: &ServicePort,
    pod: &ObjectKey,
) -> Option<u16> {
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
        Some(IntOrString::String(_)) => index
            .slices_for(service)
            .filter(|s| s.endpoints.iter().any(|e| e.pod.as_ref() == Some(pod)))
            .flat_map(|s| &s.ports)
            .find(|(name, _)| *name == port.name)
            .map(|(_, n)| *n),
    }
}

/// What `pod`, backing `services`, enforces inbound; `None` when nothing is restricted
/// (default AllowAll and no policy with authorization on its Services).
pub fn inbound(
    index: &Index,
    pod: &ObjectKey,
    services: &[ObjectKey],
) -> Option<InboundAuthorization> {
    let (default, default_from) = index.default_authorization(pod);
    // The Service ports the pod serves, with the pod port each reaches.
    let served: Vec<(&ObjectKey, &ServicePort, u16)> = services
        .iter()
        .filter_map(|service| Some((service, index.service(service)?)))
        .flat_map(|(service, model)| {
            model
                .ports
                .iter()
                .filter_map(move |sp| Some((service, sp, target_port(index, service, sp, pod)?)))
        })
        .collect();
    // Every pod port, covered by a policy or not (so the default is applied per request on
    // HTTP ports too): HTTP only when every Service port reaching it is; otherwise rules
    // are resolved as for connections.
    let mut http_ports: BTreeMap<u16, bool> = BTreeMap::new();
    for (_, sp, t) in &served {
        *http_ports.entry(*t).or_insert(true) &= crate::protocol::decide(sp).0.is_mesh_http();
    }
    let mut policies: BTreeMap<u16, BTreeMap<ObjectKey, PortPolicy>> = BTreeMap::new();
    for (service, sp, t) in &served {
        let http = http_ports[t];
        for (key, entry) in index.policies_for(service) {
            let Some(routes) = entry.effective() else {
                continue;
            };
            let Some(authz) = &routes.authorization else {
                continue;
            };
            if routes.target.port.is_some_and(|p| p != sp.port) {
                continue;
            }
            let applies = |r: &Rule| r.ports.is_empty() || r.ports.iter().any(|p| p.selects(sp));
            let entry = policies
                .entry(*t)
                .or_default()
                .entry(key.clone())
                .or_insert_with(|| PortPolicy {
                    policy: key.clone(),
                    mode: authz.mode,
                    default_deny: authz.default_deny,
                    deny: Vec::new(),
                    allow: Vec::new(),
                });
            for rule in authz.deny.iter().filter(|r| applies(r)) {
                if !entry.deny.iter().any(|r| r.name == rule.name) {
                    entry.deny.extend(resolve_rule(rule, http, true));
                }
            }
            for rule in authz.allow.iter().filter(|r| applies(r)) {
                if !entry.allow.iter().any(|r| r.name == rule.name) {
                    entry.allow.extend(resolve_rule(rule, http, false));
                }
            }
        }
    }
    if policies.is_empty() && default == DefaultAuthorization::AllowAll {
        return None;
    }
    let ports = http_ports
        .into_iter()
        .map(|(port, http)| PortAuthorization {
            port,
            http,
            policies: policies
                .remove(&port)
                .map(|p| p.into_values().collect())
                .unwrap_or_default(),
        })
        .collect();
    Some(InboundAuthorization {
        default,
        default_from,
        ports,
    })
}

/// Problems with an authorization that do not make the policy invalid but that its
/// status names: ports no Service port matches, identities of another trust domain, HTTP
/// conditions on ports that are not HTTP.
pub fn warnings(
    authz: &Authorization,
    service_ports: &[ServicePort],
    trust_domain: &str,
) -> Vec<String> {
    let mut out = Vec::new();
    let td_prefix = crate::identity::SpiffeId::trust_domain_prefix(trust_domain);
    for (kind, rules) in [("deny", &authz.deny), ("allow", &authz.allow)] {
        for rule in rules.iter() {
            for port in &rule.ports {
                if !service_ports.iter().any(|sp| port.selects(sp)) {
                    out.push(format!(
                        "{kind} rule {} names port {port}, which the target Service does not have (ports: {}): the rule applies to no port",
                        rule.name,
                        service_ports.iter().map(|p| if p.name.is_empty() { p.port.to_string() } else { format!("{} ({})", p.port, p.name) }).collect::<Vec<_>>().join(", ")
                    ));
                }
            }
            if let Callers::Mesh(m) = &rule.callers {
                for id in &m.identities {
                    if !id.starts_with(&td_prefix) {
                        out.push(format!(
                            "{kind} rule {} names identity {id}, which is not of the mesh's trust domain {trust_domain}: no caller can present it",
                            rule.name
                        ));
                    }
                }
            }
            if !rule.http.is_empty() {
                let tcp: Vec<String> = service_ports
                    .iter()
                    .filter(|sp| rule.ports.is_empty() || rule.ports.iter().any(|p| p.selects(sp)))
                    .filter(|sp| !crate::protocol::decide(sp).0.is_mesh_http())
                    .map(|sp| sp.port.to_string())
                    .collect();
                if !tcp.is_empty() {
                    let effect = if kind == "allow" {
                        "it allows nothing there"
                    } else {
                        "it denies whole connections there"
                    };
                    out.push(format!(
                        "{kind} rule {} has HTTP conditions (paths, methods, grpc, headers) but port {} is not HTTP: {effect}",
                        rule.name,
                        tcp.join(", ")
                    ));
                }
            }
        }
    }
    out
}

/// Every pod backing one of `services` (for placement changes).
pub fn pods_of(index: &Index, services: &BTreeSet<ObjectKey>) -> BTreeSet<ObjectKey> {
    services
        .iter()
        .flat_map(|s| index.slices_for(s))
        .flat_map(|s| &s.endpoints)
        .filter_map(|e| e.pod.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mesh(namespaces: &[&str], sas: &[(&str, &str)]) -> Callers {
        Callers::Mesh(MeshCallers {
            identities: vec![],
            service_accounts: sas
                .iter()
                .map(|(n, s)| (n.to_string(), s.to_string()))
                .collect(),
            namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
        })
    }

    fn rule(name: &str, callers: Callers, paths: &[&str]) -> PortRule {
        let http = HttpConditions {
            paths: paths.iter().map(|p| p.to_string()).collect(),
            ..Default::default()
        };
        PortRule {
            name: name.into(),
            callers,
            http: (!http.is_empty()).then_some(http),
        }
    }

    fn one_policy(
        mode: Mode,
        default_deny: bool,
        deny: Vec<PortRule>,
        allow: Vec<PortRule>,
        default: DefaultAuthorization,
    ) -> InboundAuthorization {
        InboundAuthorization {
            default,
            default_from: DefaultSource::Mesh,
            ports: vec![PortAuthorization {
                port: 8080,
                http: true,
                policies: vec![PortPolicy {
                    policy: ObjectKey::new("backend", "api"),
                    mode,
                    default_deny,
                    deny,
                    allow,
                }],
            }],
        }
    }

    const WEB: Caller = Caller::Mesh("spiffe://cluster.local/ns/shop/sa/web");
    const ROBOT: Caller = Caller::Mesh("spiffe://cluster.local/ns/other/sa/robot");

    fn get(path: &str) -> Request<'_> {
        Request {
            method: "GET",
            path,
            headers: &[],
        }
    }

    #[test]
    fn deny_wins_then_allow_then_default_deny_then_the_workload_default() {
        let authz = one_policy(
            Mode::Enforce,
            true,
            vec![rule("no-admin", mesh(&[], &[]), &["/admin"])],
            vec![rule("allow[0]", mesh(&["shop"], &[]), &[])],
            DefaultAuthorization::AllowAll,
        );
        let denied = |c, p| authz.decide(8080, c, Some(&get(p))).denied.map(|d| d.rule);
        assert_eq!(denied(WEB, "/"), None);
        assert_eq!(denied(WEB, "/admin/x").as_deref(), Some("no-admin"));
        assert_eq!(denied(ROBOT, "/").as_deref(), Some(DEFAULT_DENY_RULE));
        // Another port follows the default (AllowAll).
        assert_eq!(authz.decide(9090, ROBOT, None).denied, None);
        // A connection to the HTTP port: the deny rule with a path counts against it.
        assert_eq!(
            authz
                .decide(8080, WEB, None)
                .denied
                .map(|d| d.rule)
                .as_deref(),
            Some("no-admin")
        );
    }

    #[test]
    fn callers_without_identity_never_pass_an_identity_deny_nor_match_an_identity_allow() {
        let authz = one_policy(
            Mode::Enforce,
            false,
            vec![rule("deny[0]", mesh(&["other"], &[]), &[])],
            vec![],
            DefaultAuthorization::AllowAll,
        );
        assert!(authz
            .decide(8080, Caller::Unauthenticated, None)
            .denied
            .is_some());
        assert!(authz.decide(8080, WEB, None).denied.is_none());
        let allow_shop = one_policy(
            Mode::Enforce,
            true,
            vec![],
            vec![rule("allow[0]", mesh(&["shop"], &[]), &[])],
            DefaultAuthorization::AllowAll,
        );
        assert!(allow_shop
            .decide(8080, Caller::Unauthenticated, None)
            .denied
            .is_some());
        let allow_plain = one_policy(
            Mode::Enforce,
            true,
            vec![],
            vec![rule("allow[0]", Callers::Unauthenticated, &[])],
            DefaultAuthorization::AllowAll,
        );
        assert!(allow_plain
            .decide(8080, Caller::Unauthenticated, None)
            .denied
            .is_none());
        assert!(allow_plain.decide(8080, WEB, None).denied.is_some());
    }

    #[test]
    fn audit_denies_nothing_and_reports_what_it_would() {
        let authz = one_policy(
            Mode::Audit,
            true,
            vec![],
            vec![rule("allow[0]", mesh(&["shop"], &[]), &[])],
            DefaultAuthorization::AllowAll,
        );
        let d = authz.decide(8080, ROBOT, Some(&get("/")));
        assert_eq!(d.denied, None);
        assert_eq!(d.audit.len(), 1);
        assert_eq!(d.audit[0].rule, DEFAULT_DENY_RULE);
    }

    #[test]
    fn defaults_decide_where_policies_do_not() {
        let authz = one_policy(
            Mode::Enforce,
            false,
            vec![],
            vec![rule("allow[0]", mesh(&["shop"], &[]), &[])],
            DefaultAuthorization::AllowAuthenticated,
        );
        assert!(authz.decide(8080, ROBOT, None).denied.is_none());
        assert!(authz
            .decide(8080, Caller::Unauthenticated, None)
            .denied
            .is_some());
        assert!(authz
            .decide(9, Caller::Unauthenticated, None)
            .denied
            .is_some());
        let deny = one_policy(
            Mode::Enforce,
            false,
            vec![],
            vec![rule("allow[0]", mesh(&["shop"], &[]), &[])],
            DefaultAuthorization::Deny,
        );
        assert!(deny.decide(8080, WEB, None).denied.is_none());
        assert!(deny.decide(8080, ROBOT, None).denied.is_some());
        assert!(deny.decide(9, WEB, None).denied.is_some());
    }

    #[test]
    fn path_prefixes_are_by_segment() {
        assert!(path_has_prefix("/api", "/api"));
        assert!(path_has_prefix("/api/v1", "/api"));
        assert!(!path_has_prefix("/apix", "/api"));
        assert!(path_has_prefix("/api/x", "/api/"));
        assert!(path_has_prefix("/anything", "/"));
    }

    #[test]
    fn a_tcp_port_drops_allow_rules_with_http_conditions_and_widens_deny_rules() {
        let r = Rule {
            name: "r".into(),
            callers: Callers::Any,
            ports: vec![],
            http: HttpConditions {
                paths: vec!["/x".into()],
                ..Default::default()
            },
        };
        assert_eq!(resolve_rule(&r, false, false), None);
        assert_eq!(resolve_rule(&r, false, true).unwrap().http, None);
        assert!(resolve_rule(&r, true, false).unwrap().http.is_some());
    }
}
