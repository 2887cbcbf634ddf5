//! Binding: which routes govern each port of a Service, merged from every source that
//! attaches to it, with every backend resolved against the index. The one place that
//! decides precedence, port coverage and backend existence; translation, status and the
//! index's backend links all read its result, and it builds no message: each source's
//! status builder words the outcome in its own fields.
//!
//! ```text
//! attachments(index, service): every source's RouteSet on the Service, by precedence
//!   (older first, then kind, namespace, name; no timestamp, as in local mode, first)
//!   --ServiceBinding::bind--> per attachment: Active | Conflicted | TargetNotFound,
//!                                             the first backend that does not resolve,
//!                                             rules that cannot apply to a port's protocol
//!                             per port:       the merged rules, backends resolved to
//!                                             cluster names, the governing upstream
//! ```
//!
//! How attachments share a port is the source's [`Merge`]: an exclusive source
//! (TrafficPolicy) governs the ports it claims first and the later ones are Conflicted; the
//! rules of merging sources (Gateway API routes) are interleaved by match precedence
//! (exact path, longest prefix, method, most headers, most query parameters, then the
//! attachment's precedence, then the order written). A port claimed by one kind is not
//! shared with the other: the later attachment is Conflicted.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::index::{Index, ObjectKey, ServiceModel};
use crate::names;
use crate::protocol::{DecidedBy, Protocol};
use crate::routing::{Backend, HttpMatch, HttpRule, PathMatch, RouteSet, TcpRule};

/// Where an attachment comes from: one variant per routing source kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceRef {
    /// A TrafficPolicy.
    TrafficPolicy(ObjectKey),
    /// A Gateway API HTTPRoute.
    HttpRoute(ObjectKey),
    /// A Gateway API GRPCRoute.
    GrpcRoute(ObjectKey),
}

impl SourceRef {
    /// The resource kind, as users write it.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceRef::TrafficPolicy(_) => "TrafficPolicy",
            SourceRef::HttpRoute(_) => "HTTPRoute",
            SourceRef::GrpcRoute(_) => "GRPCRoute",
        }
    }

    /// The resource.
    pub fn key(&self) -> &ObjectKey {
        match self {
            SourceRef::TrafficPolicy(key)
            | SourceRef::HttpRoute(key)
            | SourceRef::GrpcRoute(key) => key,
        }
    }
}

impl std::fmt::Display for SourceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind(), self.key())
    }
}

/// How a source's rules share a port with other attachments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// The first attachment to claim a port governs it whole (rules, subsets, upstream);
    /// later ones are Conflicted.
    Exclusive,
    /// Rules of every merging attachment on the port are interleaved by match precedence.
    Rules,
}

/// One source's routes on a Service, as the binding sees them.
#[derive(Debug, Clone)]
pub struct Attachment {
    /// The source.
    pub source: SourceRef,
    /// Its served (last valid) routes.
    pub routes: Arc<RouteSet>,
    /// Creation time: the older attachment takes precedence.
    pub created: Option<Time>,
    /// How it shares ports.
    pub merge: Merge,
}

impl Attachment {
    /// Precedence order: routes (merging sources) before TrafficPolicies, so that routes
    /// decide the routing of the ports they attach to; then older first (no timestamp
    /// first), then the source.
    fn precedence(&self) -> (bool, Option<&Time>, &SourceRef) {
        (
            self.merge != Merge::Rules,
            self.created.as_ref(),
            &self.source,
        )
    }
}

/// Every attachment on `service` that applies to every caller (TrafficPolicies and
/// producer routes, in the Service's namespace), highest precedence first.
pub fn attachments(index: &Index, service: &ObjectKey) -> Vec<Attachment> {
    attachments_for(index, service, None)
}

/// Every attachment on `service` for callers in `caller` (None: every caller, the producer
/// view), highest precedence first. A consumer route (in a namespace other than the
/// Service's) applies to callers in its namespace only, and there it replaces the producer
/// routes on the ports it attaches to (GAMMA); TrafficPolicies apply to every caller.
pub fn attachments_for(
    index: &Index,
    service: &ObjectKey,
    caller: Option<&str>,
) -> Vec<Attachment> {
    let mut out: Vec<Attachment> = index
        .policies_for(service)
        .into_iter()
        .filter_map(|(key, entry)| {
            Some(Attachment {
                source: SourceRef::TrafficPolicy(key.clone()),
                routes: entry.effective()?.clone(),
                created: entry.created.clone(),
                merge: Merge::Exclusive,
            })
        })
        .collect();
    let consumer = caller.filter(|ns| *ns != service.namespace);
    let mut producer = Vec::new();
    let mut consumed = Vec::new();
    for (id, entry, sets) in index.routes_for(service) {
        let source = match id.0 {
            crate::index::gateway_route::RouteKind::Http => SourceRef::HttpRoute(id.1.clone()),
            crate::index::gateway_route::RouteKind::Grpc => SourceRef::GrpcRoute(id.1.clone()),
        };
        let into = if id.1.namespace == service.namespace {
            &mut producer
        } else if Some(id.1.namespace.as_str()) == consumer {
            &mut consumed
        } else {
            continue;
        };
        into.extend(sets.into_iter().map(|routes| Attachment {
            source: source.clone(),
            routes,
            created: entry.created.clone(),
            merge: Merge::Rules,
        }));
    }
    // The ports the caller's own routes take from the producer's.
    let all_ports: Vec<u16> = index
        .service(service)
        .map(|s| s.ports.iter().map(|p| p.port).collect())
        .unwrap_or_default();
    let taken: BTreeSet<u16> = consumed
        .iter()
        .flat_map(|a: &Attachment| match a.routes.target.port {
            Some(p) => vec![p],
            None => all_ports.clone(),
        })
        .collect();
    let per_port = |a: &Attachment, ports: &mut dyn Iterator<Item = &u16>| -> Vec<Attachment> {
        ports
            .map(|port| {
                let mut routes = (*a.routes).clone();
                routes.target.port = Some(*port);
                Attachment {
                    routes: Arc::new(routes),
                    ..a.clone()
                }
            })
            .collect()
    };
    for a in producer {
        match a.routes.target.port {
            Some(p) if taken.contains(&p) => {}
            Some(_) => out.push(a),
            None if taken.is_empty() => out.push(a),
            // Keep the producer's rules on the ports the caller's routes leave alone.
            None => out.extend(per_port(
                &a,
                &mut all_ports.iter().filter(|p| !taken.contains(p)),
            )),
        }
    }
    if !taken.is_empty() {
        // A policy for every port yields the taken ones only: one attachment per port.
        out = out
            .into_iter()
            .flat_map(|a| match (a.merge, a.routes.target.port) {
                (Merge::Exclusive, None) => per_port(&a, &mut all_ports.iter()),
                _ => vec![a],
            })
            .collect();
    }
    out.extend(consumed);
    out.sort_by(|a, b| a.precedence().cmp(&b.precedence()));
    out
}

/// The namespaces whose own routes (consumer routes) attach to `service`.
pub fn consumer_namespaces(index: &Index, service: &ObjectKey) -> BTreeSet<String> {
    index
        .routes_for(service)
        .into_iter()
        .map(|(id, _, _)| id.1.namespace.clone())
        .filter(|ns| *ns != service.namespace)
        .collect()
}

/// What the attachments on one Service do to it.
#[derive(Debug, Clone, Default)]
pub struct ServiceBinding {
    /// Every attachment's outcome, highest precedence first.
    pub attachments: Vec<AttachmentBinding>,
    /// Per port of the Service, the routes that govern it.
    pub ports: BTreeMap<u16, PortRoutes>,
}

/// One attachment's outcome on its target.
#[derive(Debug, Clone)]
pub struct AttachmentBinding {
    /// The source.
    pub source: SourceRef,
    /// Its served routes.
    pub routes: Arc<RouteSet>,
    /// Whether it governs ports.
    pub outcome: Outcome,
    /// The first backend that does not resolve, when the target exists.
    pub unresolved: Option<Unresolved>,
    /// Rules that cannot apply to the protocol of a port the attachment governs.
    pub mismatches: Vec<ProtocolMismatch>,
}

/// Whether an attachment governs ports of its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It governs these ports.
    Active {
        /// The ports.
        ports: BTreeSet<u16>,
    },
    /// An attachment of higher precedence governs an overlapping port.
    Conflicted {
        /// The attachment that takes precedence.
        winner: SourceRef,
        /// The ports both claim.
        ports: BTreeSet<u16>,
    },
    /// The target Service or port does not exist.
    TargetNotFound(TargetProblem),
}

/// What is missing of a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetProblem {
    /// The Service.
    NoService,
    /// The port (the Service has `ports`).
    NoPort {
        /// The port asked for.
        port: u16,
        /// The Service's ports.
        ports: BTreeSet<u16>,
    },
}

/// A backend that resolves to nothing: its share of traffic fails with 503 (or, for a
/// mirror, no copies are sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved {
    /// Which backend.
    pub at: BackendAt,
    /// The Service it names.
    pub service: ObjectKey,
    /// [`Resolution::NoService`] or [`Resolution::NoPort`].
    pub resolution: Resolution,
}

/// Where a backend is written in its route set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendAt {
    /// Backend `backend` of HTTP rule `rule`.
    Http {
        /// Rule index.
        rule: usize,
        /// Backend index.
        backend: usize,
    },
    /// Backend `backend` of TCP rule `rule`.
    Tcp {
        /// Rule index.
        rule: usize,
        /// Backend index.
        backend: usize,
    },
    /// The mirror of HTTP rule `rule`.
    Mirror {
        /// Rule index.
        rule: usize,
    },
}

/// Rules of one kind that do not apply to a port because of its protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolMismatch {
    /// The port.
    pub port: u16,
    /// Its protocol.
    pub protocol: Protocol,
    /// What decided it.
    pub decided_by: DecidedBy,
    /// Which rules do not apply there.
    pub rules: RuleKind,
}

/// HTTP or TCP rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    /// HTTP rules on a port that is not HTTP.
    Http,
    /// TCP rules on a port that is not TCP.
    Tcp,
}

/// The routes governing one port.
#[derive(Debug, Clone)]
pub struct PortRoutes {
    /// The attachment whose subsets and upstream settings apply (the first to claim the
    /// port).
    pub governing: Arc<RouteSet>,
    /// HTTP rules in the order they are tried, backends resolved for this port.
    pub http: Vec<BoundHttpRule>,
    /// TCP rules in the order they are tried, backends resolved for this port.
    pub tcp: Vec<BoundTcpRule>,
    /// Gateway API routes attach to the port: a request no rule matches is answered 404
    /// (there is no route to the Service as a whole).
    pub routes_decide: bool,
}

/// An HTTP rule (or one match of it) bound to a port.
#[derive(Debug, Clone)]
pub struct BoundHttpRule {
    routes: Arc<RouteSet>,
    index: usize,
    /// When rules of several attachments are interleaved, each match is placed on its own.
    only_match: Option<usize>,
    /// The rule's backends, resolved for this port (same order).
    pub backends: Vec<BoundBackend>,
    /// The rule's mirror, resolved for this port (the weight is the mirrored percent).
    pub mirror: Option<BoundBackend>,
}

impl BoundHttpRule {
    /// The rule.
    pub fn rule(&self) -> &HttpRule {
        &self.routes.http[self.index]
    }

    /// The route set the rule comes from (an attachment's `routes`).
    pub fn route_set(&self) -> &Arc<RouteSet> {
        &self.routes
    }

    /// The matches this binding applies: `None` stands for "every request".
    pub fn matches(&self) -> Vec<Option<&HttpMatch>> {
        let rule = self.rule();
        match self.only_match {
            Some(k) => vec![rule.matches.get(k)],
            None if rule.matches.is_empty() => vec![None],
            None => rule.matches.iter().map(Some).collect(),
        }
    }
}

/// A TCP rule bound to a port.
#[derive(Debug, Clone)]
pub struct BoundTcpRule {
    routes: Arc<RouteSet>,
    index: usize,
    /// The rule's backends, resolved for this port (same order).
    pub backends: Vec<BoundBackend>,
}

impl BoundTcpRule {
    /// The rule.
    pub fn rule(&self) -> &TcpRule {
        &self.routes.tcp[self.index]
    }

    /// The route set the rule comes from (an attachment's `routes`).
    pub fn route_set(&self) -> &Arc<RouteSet> {
        &self.routes
    }
}

/// A backend resolved for one port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundBackend {
    /// The cluster traffic goes to.
    pub cluster: String,
    /// Share in percent.
    pub weight: u32,
    /// Whether the cluster exists (an unresolved one is answered 503 by Envoy).
    pub resolution: Resolution,
}

/// Whether a backend names something that exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// It does.
    Resolved,
    /// The Service does not exist.
    NoService,
    /// The Service exists but has no such port.
    NoPort(u16),
}

impl ServiceBinding {
    /// Binds every attachment on `service`.
    pub fn bind(index: &Index, service: &ObjectKey) -> ServiceBinding {
        Self::bind_attachments(index, service, attachments(index, service))
    }

    /// Binds what applies to callers in namespace `caller`: the producer binding with the
    /// caller's own routes (consumer routes) over it.
    pub fn bind_for(index: &Index, service: &ObjectKey, caller: &str) -> ServiceBinding {
        Self::bind_attachments(
            index,
            service,
            attachments_for(index, service, Some(caller)),
        )
    }

    /// Binds the given attachments (highest precedence first) on `service`.
    pub fn bind_attachments(
        index: &Index,
        service: &ObjectKey,
        attachments: Vec<Attachment>,
    ) -> ServiceBinding {
        let svc = index.service(service);
        let mut claims: BTreeMap<u16, Claim> = BTreeMap::new();
        let mut binding = ServiceBinding::default();
        let mut merged: BTreeMap<u16, Vec<Attachment>> = BTreeMap::new();
        for (order, attachment) in attachments.into_iter().enumerate() {
            let outcome = match svc {
                None => Outcome::TargetNotFound(TargetProblem::NoService),
                Some(svc) => claim(svc, order, &attachment, &mut claims),
            };
            let unresolved = svc.and_then(|svc| {
                let routed: Vec<u16> = match attachment.routes.target.port {
                    Some(p) => vec![p],
                    None => svc.ports.iter().map(|p| p.port).collect(),
                };
                first_unresolved(index, &attachment.routes, &routed)
            });
            let mut mismatches = Vec::new();
            if let (Outcome::Active { ports }, Some(svc)) = (&outcome, svc) {
                for port in ports {
                    merged.entry(*port).or_default().push(attachment.clone());
                }
                mismatches = protocol_mismatches(svc, ports, &attachment.routes);
            }
            binding.attachments.push(AttachmentBinding {
                source: attachment.source,
                routes: attachment.routes,
                outcome,
                unresolved,
                mismatches,
            });
        }
        for (port, active) in merged {
            binding
                .ports
                .insert(port, port_routes(index, &active, port));
        }
        binding
    }

    /// The routes governing `port`, if any attachment governs it.
    pub fn port(&self, port: u16) -> Option<&PortRoutes> {
        self.ports.get(&port)
    }

    /// The outcome of one source's attachment.
    pub fn attachment(&self, source: &SourceRef) -> Option<&AttachmentBinding> {
        self.attachments.iter().find(|a| a.source == *source)
    }
}

/// The first attachment to claim a port: its position in precedence order, the source and
/// how it shares.
type Claim = (usize, SourceRef, Merge);

/// Which ports an attachment gets, given what attachments of higher precedence claimed.
fn claim(
    svc: &ServiceModel,
    order: usize,
    attachment: &Attachment,
    claims: &mut BTreeMap<u16, Claim>,
) -> Outcome {
    let all: BTreeSet<u16> = svc.ports.iter().map(|p| p.port).collect();
    if let Some(p) = attachment.routes.target.port.filter(|p| !all.contains(p)) {
        return Outcome::TargetNotFound(TargetProblem::NoPort {
            port: p,
            ports: all,
        });
    }
    let ports: BTreeSet<u16> = match attachment.routes.target.port {
        Some(p) => BTreeSet::from([p]),
        None => all,
    };
    if !attachment.routes.shapes_traffic() {
        // Authorization alone: enforced by the target's pods with every other policy's,
        // nothing to claim.
        return Outcome::Active { ports };
    }
    let shares = |merge: Merge| merge == Merge::Rules && attachment.merge == Merge::Rules;
    // A TrafficPolicy without rules on a port routes decide: its subsets and upstream
    // settings apply there (it governs the backends, not the routing).
    let beside_routes = attachment.merge == Merge::Exclusive
        && attachment.routes.http.is_empty()
        && attachment.routes.tcp.is_empty();
    let clash: Vec<(u16, &Claim)> = ports
        .iter()
        .filter_map(|p| claims.get(p).map(|claim| (*p, claim)))
        .filter(|(_, (_, _, merge))| !shares(*merge))
        .filter(|(_, (_, _, merge))| !(beside_routes && *merge == Merge::Rules))
        .collect();
    // The winner named is the attachment of highest precedence among those in the way.
    if let Some((_, (_, winner, _))) = clash.iter().min_by_key(|(_, (at, _, _))| *at) {
        return Outcome::Conflicted {
            winner: winner.clone(),
            ports: clash.iter().map(|(p, _)| *p).collect(),
        };
    }
    for port in &ports {
        claims
            .entry(*port)
            .or_insert_with(|| (order, attachment.source.clone(), attachment.merge));
    }
    Outcome::Active { ports }
}

/// Where HTTP rules meet a port that is not HTTP, or TCP rules one that is not TCP: they
/// do not apply there, and the user should know why.
fn protocol_mismatches(
    svc: &ServiceModel,
    ports: &BTreeSet<u16>,
    routes: &RouteSet,
) -> Vec<ProtocolMismatch> {
    let mut out = Vec::new();
    for port in svc.ports.iter().filter(|p| ports.contains(&p.port)) {
        let (protocol, decided_by) = crate::protocol::decide(port);
        let mismatch = |rules| ProtocolMismatch {
            port: port.port,
            protocol,
            decided_by,
            rules,
        };
        if !routes.http.is_empty() && !protocol.is_http() {
            out.push(mismatch(RuleKind::Http));
        }
        if !routes.tcp.is_empty() && !protocol.is_tcp() {
            out.push(mismatch(RuleKind::Tcp));
        }
    }
    out
}

/// The routes of one port from its active attachments (in precedence order).
fn port_routes(index: &Index, active: &[Attachment], port: u16) -> PortRoutes {
    // The upstream settings and subsets are an exclusive source's (a TrafficPolicy beside
    // routes), else the first attachment's.
    let governing = active
        .iter()
        .find(|a| a.merge == Merge::Exclusive)
        .unwrap_or(&active[0])
        .routes
        .clone();
    let mut http: Vec<(MatchRank, BoundHttpRule)> = Vec::new();
    let mut tcp = Vec::new();
    for attachment in active {
        let routes = &attachment.routes;
        let bind = |backends: &[crate::routing::WeightedBackend]| -> Vec<BoundBackend> {
            backends
                .iter()
                .map(|b| resolve(index, &b.backend, b.weight, port))
                .collect()
        };
        for (index_in_set, rule) in routes.http.iter().enumerate() {
            let bound = BoundHttpRule {
                routes: routes.clone(),
                index: index_in_set,
                only_match: None,
                backends: bind(&rule.backends),
                mirror: rule
                    .mirror
                    .as_ref()
                    .map(|m| resolve(index, &m.backend, m.percent, port)),
            };
            match attachment.merge {
                Merge::Exclusive => http.push((MatchRank::default(), bound)),
                Merge::Rules if rule.matches.is_empty() => http.push((MatchRank::of(None), bound)),
                Merge::Rules => {
                    for (k, m) in rule.matches.iter().enumerate() {
                        let one = BoundHttpRule {
                            only_match: Some(k),
                            ..bound.clone()
                        };
                        http.push((MatchRank::of(Some(m)), one));
                    }
                }
            }
        }
        tcp.extend(
            routes
                .tcp
                .iter()
                .enumerate()
                .map(|(index_in_set, rule)| BoundTcpRule {
                    routes: routes.clone(),
                    index: index_in_set,
                    backends: bind(&rule.backends),
                }),
        );
    }
    // Stable: equal ranks keep attachment precedence, then the order written.
    http.sort_by_key(|(rank, _)| std::cmp::Reverse(*rank));
    PortRoutes {
        governing,
        http: http.into_iter().map(|(_, rule)| rule).collect(),
        tcp,
        routes_decide: active.iter().any(|a| a.merge == Merge::Rules),
    }
}

/// How specific a match is, for interleaving the rules of merging attachments (greater
/// is tried first): Gateway API's order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct MatchRank {
    /// An exact path (or a full gRPC method) beats any prefix.
    exact_path: bool,
    /// Then the longer prefix.
    prefix_len: usize,
    /// Then a method condition.
    method: bool,
    /// Then more header conditions.
    headers: usize,
    /// Then more query parameter conditions.
    query_params: usize,
}

impl MatchRank {
    /// The rank of a match (`None`: every request, the prefix `/`).
    pub fn of(m: Option<&HttpMatch>) -> MatchRank {
        let Some(m) = m else {
            return MatchRank {
                prefix_len: 1,
                ..Default::default()
            };
        };
        let (exact_path, prefix_len) = match &m.path {
            None => (false, 1),
            Some(PathMatch::Exact(_)) => (true, 0),
            Some(PathMatch::Prefix(p)) => (false, p.len()),
            Some(PathMatch::RegularExpression(_)) => (false, 0),
            Some(PathMatch::Grpc {
                service: Some(_),
                method: Some(_),
                regex: false,
            }) => (true, 0),
            Some(PathMatch::Grpc {
                service: Some(s),
                method: None,
                regex: false,
            }) => (false, s.len() + 1),
            Some(PathMatch::Grpc { .. }) => (false, 0),
        };
        MatchRank {
            exact_path,
            prefix_len,
            method: m.method.is_some(),
            headers: m.headers.len(),
            query_params: m.query_params.len(),
        }
    }
}

/// Resolves one backend for traffic to `routed` (a port of the attachment's target).
fn resolve(index: &Index, backend: &Backend, weight: u32, routed: u16) -> BoundBackend {
    let (port, resolution) = resolution(index, backend, routed);
    BoundBackend {
        cluster: names::cluster_name(&backend.service, port, backend.subset.as_deref()),
        weight,
        resolution,
    }
}

/// The port a backend means for traffic to `routed`, and whether its Service has it.
fn resolution(index: &Index, backend: &Backend, routed: u16) -> (u16, Resolution) {
    let service = index.service(&backend.service);
    let port = destination_port(service, backend.port, routed);
    let resolution = match service {
        None => Resolution::NoService,
        Some(svc) if !svc.ports.iter().any(|p| p.port == port) => Resolution::NoPort(port),
        Some(_) => Resolution::Resolved,
    };
    (port, resolution)
}

/// The port of a Service a backend means: the one given, the only one it has, or the same
/// number as the port being routed.
fn destination_port(service: Option<&ServiceModel>, given: Option<u16>, routed: u16) -> u16 {
    if let Some(port) = given {
        return port;
    }
    match service.map(|s| s.ports.as_slice()) {
        Some([only]) => only.port,
        _ => routed,
    }
}

/// The first backend, over rules, backends and routed ports in order, that does not
/// resolve.
fn first_unresolved(index: &Index, routes: &RouteSet, routed: &[u16]) -> Option<Unresolved> {
    let http = routes.http.iter().enumerate().flat_map(|(rule, r)| {
        r.backends
            .iter()
            .enumerate()
            .map(move |(backend, b)| (BackendAt::Http { rule, backend }, &b.backend))
    });
    let tcp = routes.tcp.iter().enumerate().flat_map(|(rule, r)| {
        r.backends
            .iter()
            .enumerate()
            .map(move |(backend, b)| (BackendAt::Tcp { rule, backend }, &b.backend))
    });
    let mirrors = routes.http.iter().enumerate().filter_map(|(rule, r)| {
        let mirror = r.mirror.as_ref()?;
        Some((BackendAt::Mirror { rule }, &mirror.backend))
    });
    for (at, backend) in http.chain(tcp).chain(mirrors) {
        let unresolved = |resolution| Unresolved {
            at,
            service: backend.service.clone(),
            resolution,
        };
        if index.service(&backend.service).is_none() {
            return Some(unresolved(Resolution::NoService));
        }
        for port in routed {
            let (_, resolution) = resolution(index, backend, *port);
            if resolution != Resolution::Resolved {
                return Some(unresolved(resolution));
            }
        }
    }
    None
}

/// Ports for messages: `9080, 80`, or `no TCP ports`.
pub fn port_list(ports: &BTreeSet<u16>) -> String {
    if ports.is_empty() {
        return "no TCP ports".into();
    }
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Object;
    use crate::routing::{HttpMatch, PathMatch};
    use crate::sources::traffic_policy;
    use crate::testing::{mk_policy_spec, mk_service};
    use crate::Event;

    fn index_with_reviews() -> Index {
        let mut index = Index::new();
        index.apply(Event::apply(Object::Service(mk_service(
            "default",
            "reviews",
            "10.0.0.1",
            &[9080, 9090],
        ))));
        index
    }

    fn reviews() -> ObjectKey {
        ObjectKey::new("default", "reviews")
    }

    /// A route set from a TrafficPolicy spec on `reviews`, with HTTP rules matching `paths`
    /// (prefixes, or `=/x` for exact).
    fn routes(port: Option<u16>, paths: &[&str]) -> Arc<RouteSet> {
        let mut spec = mk_policy_spec("reviews", &[("v1", 100)]);
        spec.target_ref.port = port;
        let mut set = traffic_policy::parse("default", &spec).unwrap();
        let rule = set.http[0].clone();
        set.http = paths
            .iter()
            .map(|p| {
                let mut rule = rule.clone();
                rule.name = p.to_string();
                rule.matches = vec![HttpMatch {
                    path: Some(match p.strip_prefix('=') {
                        Some(exact) => PathMatch::Exact(exact.into()),
                        None => PathMatch::Prefix(p.to_string()),
                    }),
                    ..Default::default()
                }];
                rule
            })
            .collect();
        Arc::new(set)
    }

    fn attach(name: &str, created: Option<i64>, merge: Merge, routes: Arc<RouteSet>) -> Attachment {
        use k8s_openapi::jiff::Timestamp;
        Attachment {
            source: SourceRef::TrafficPolicy(ObjectKey::new("default", name)),
            routes,
            created: created.map(|s| Time(Timestamp::from_second(s).unwrap())),
            merge,
        }
    }

    fn bind(attachments: Vec<Attachment>) -> ServiceBinding {
        let mut attachments = attachments;
        attachments.sort_by(|a, b| a.precedence().cmp(&b.precedence()));
        ServiceBinding::bind_attachments(&index_with_reviews(), &reviews(), attachments)
    }

    fn rule_names(binding: &ServiceBinding, port: u16) -> Vec<String> {
        binding.ports[&port]
            .http
            .iter()
            .map(|r| r.rule().name.clone())
            .collect()
    }

    #[test]
    fn of_two_exclusive_sources_on_a_port_the_older_governs_and_the_other_is_conflicted() {
        let binding = bind(vec![
            attach(
                "newer",
                Some(2_000),
                Merge::Exclusive,
                routes(Some(9080), &["/a"]),
            ),
            attach(
                "older",
                Some(1_000),
                Merge::Exclusive,
                routes(None, &["/b"]),
            ),
        ]);
        let older = binding.attachment(&SourceRef::TrafficPolicy(ObjectKey::new(
            "default", "older",
        )));
        assert_eq!(
            older.unwrap().outcome,
            Outcome::Active {
                ports: BTreeSet::from([9080, 9090])
            }
        );
        let newer = binding.attachment(&SourceRef::TrafficPolicy(ObjectKey::new(
            "default", "newer",
        )));
        assert_eq!(
            newer.unwrap().outcome,
            Outcome::Conflicted {
                winner: SourceRef::TrafficPolicy(ObjectKey::new("default", "older")),
                ports: BTreeSet::from([9080])
            }
        );
        assert_eq!(rule_names(&binding, 9080), ["/b"]);
    }

    #[test]
    fn exclusive_sources_of_the_same_age_are_ordered_by_name() {
        for created in [None, Some(1_000)] {
            let binding = bind(vec![
                attach("bbb", created, Merge::Exclusive, routes(None, &["/b"])),
                attach("aaa", created, Merge::Exclusive, routes(None, &["/a"])),
            ]);
            assert_eq!(rule_names(&binding, 9080), ["/a"], "created {created:?}");
            assert!(matches!(
                binding.attachments[1].outcome,
                Outcome::Conflicted { ref winner, .. } if winner.key().name == "aaa"
            ));
        }
    }

    #[test]
    fn merging_sources_interleave_rules_by_match_precedence_then_age_then_name() {
        let binding = bind(vec![
            attach(
                "b-newer",
                Some(2_000),
                Merge::Rules,
                routes(None, &["/", "/api", "=/x"]),
            ),
            attach(
                "a-older",
                Some(1_000),
                Merge::Rules,
                routes(Some(9080), &["/api/v1", "/api"]),
            ),
            attach(
                "c-same-age",
                Some(2_000),
                Merge::Rules,
                routes(Some(9080), &["/api"]),
            ),
        ]);
        assert!(binding
            .attachments
            .iter()
            .all(|a| matches!(a.outcome, Outcome::Active { .. })));
        // Exact first, then the longest prefix; equal prefixes by age, then by name.
        assert_eq!(
            rule_names(&binding, 9080),
            ["=/x", "/api/v1", "/api", "/api", "/api", "/"]
        );
        let api_owners: Vec<String> = binding.ports[&9080]
            .http
            .iter()
            .filter(|r| r.rule().name == "/api")
            .map(|r| binding_owner(&binding, r))
            .collect();
        assert_eq!(api_owners, ["a-older", "b-newer", "c-same-age"]);
        // Port 9090 has only the route that covers every port.
        assert_eq!(rule_names(&binding, 9090), ["=/x", "/api", "/"]);
    }

    /// Which attachment a bound rule came from.
    fn binding_owner(binding: &ServiceBinding, rule: &BoundHttpRule) -> String {
        binding
            .attachments
            .iter()
            .find(|a| Arc::ptr_eq(&a.routes, &rule.routes))
            .map(|a| a.source.key().name.clone())
            .unwrap()
    }

    #[test]
    fn an_exclusive_and_a_merging_source_do_not_share_a_port() {
        let binding = bind(vec![
            attach(
                "routes",
                Some(1_000),
                Merge::Rules,
                routes(Some(9080), &["/r"]),
            ),
            attach(
                "policy",
                Some(2_000),
                Merge::Exclusive,
                routes(None, &["/p"]),
            ),
        ]);
        assert_eq!(rule_names(&binding, 9080), ["/r"]);
        assert!(!binding.ports.contains_key(&9090));
        assert_eq!(
            binding.attachments[1].outcome,
            Outcome::Conflicted {
                winner: SourceRef::TrafficPolicy(ObjectKey::new("default", "routes")),
                ports: BTreeSet::from([9080])
            }
        );
    }
}
