//! Why a request gets the answer it gets: `kubectl weir explain` evaluates one request
//! against the mesh's typed model, the one the translator turns into Envoy config.
//!
//! ```text
//! Index + Query (from pod, to Service/host/IP, port, request)
//!   -> source pod (sidecar? identity)            -> destination Service port
//!   -> protocol and outbound listener (protocol::decide)
//!   -> rules in binding order (binding::ServiceBinding, routing::HttpMatch::check)
//!   -> backends with weights -> endpoints (translate::port_endpoints)
//!   -> settings (timeouts, retries, faults, rate limit, mirror, pool, outlier)
//!   -> mTLS and the server's authorization (authorization::inbound(..).decide)
//!   -> Explanation { steps, outcome: shares of requests and what each gets }
//! ```
//!
//! Pure: the CLI fills the index from files or the cluster and prints what comes out.

use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::authorization::{self, Caller};
use crate::binding::{PortRoutes, Resolution, ServiceBinding};
use crate::identity::SpiffeId;
use crate::index::{Addressing, Index, Kind, ObjectKey, ServicePort};
use crate::names;
use crate::protocol::{self, Protocol};
use crate::routing::{AbortStatus, Backend, RequestFacts, RouteSet};
use crate::translate::{port_endpoints, PortEndpoint};
use weir_api::MtlsMode;

/// What to explain.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// The calling pod, or a workload (a pod of it is taken), in `namespace`.
    pub from: String,
    /// The namespace of `from` when it names none.
    pub namespace: String,
    /// A Service name (`name` in the caller's namespace, `name.ns`,
    /// `name.ns.svc[.cluster.local]`), a ClusterIP, or either with `:port`.
    pub to: String,
    /// The Service port, when `to` has none.
    pub port: Option<u16>,
    /// The HTTP request (on an HTTP port, `GET /` when not given).
    pub request: Option<RequestFacts>,
}

/// A question that cannot be answered, with what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct QueryError(pub String);

/// The whole answer.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// The caller.
    pub source: Source,
    /// The destination Service port, when `to` is one.
    pub destination: Option<Destination>,
    /// The request as evaluated (HTTP ports).
    pub request: Option<RequestView>,
    /// The rules tried, in order, and why each did or did not apply.
    pub rules: Vec<RuleCheck>,
    /// Where the matching rule (or the default route) sends traffic.
    pub backends: Vec<BackendView>,
    /// Timeouts, retries, faults, rate limit, mirror, pool and outlier settings that apply.
    pub settings: Vec<String>,
    /// What is predicted, by share of requests.
    pub outcome: Vec<Share>,
    /// Other things worth knowing.
    pub notes: Vec<String>,
}

/// The caller.
#[derive(Debug, Clone, Serialize)]
pub struct Source {
    /// `namespace/pod`.
    pub pod: String,
    /// Its workload.
    pub workload: String,
    /// Whether it has a sidecar.
    pub sidecar: bool,
    /// Its SPIFFE identity (what its sidecar presents).
    pub identity: String,
}

/// The destination Service port.
#[derive(Debug, Clone, Serialize)]
pub struct Destination {
    /// `namespace/name`.
    pub service: String,
    /// The Service port.
    pub port: u16,
    /// Its protocol.
    pub protocol: String,
    /// Why: `appProtocol`, `portName`, `serverFirstPort` or `detection`.
    pub decided_by: String,
    /// The outbound filter chain that takes it.
    pub listener: String,
    /// The route table and virtual host (HTTP ports).
    pub route: Option<String>,
    /// The routing source governing the port (`TrafficPolicy ns/name`), if any.
    pub governed_by: Option<String>,
}

/// The request as evaluated.
#[derive(Debug, Clone, Serialize)]
pub struct RequestView {
    /// Method.
    pub method: String,
    /// Path with query.
    pub path: String,
    /// Headers as given.
    pub headers: Vec<(String, String)>,
}

/// One rule (one match of it) tried.
#[derive(Debug, Clone, Serialize)]
pub struct RuleCheck {
    /// `TrafficPolicy ns/name`.
    pub source: String,
    /// The rule's name.
    pub rule: String,
    /// The match, as text.
    #[serde(rename = "match")]
    pub match_: String,
    /// Whether it applies.
    pub matched: bool,
    /// Why not, when it does not.
    pub reason: Option<String>,
}

/// One backend of the chosen route.
#[derive(Debug, Clone, Serialize)]
pub struct BackendView {
    /// The Envoy cluster.
    pub cluster: String,
    /// `namespace/name`.
    pub service: String,
    /// The subset, if any.
    pub subset: Option<String>,
    /// Share in percent.
    pub weight: u32,
    /// `resolved`, `no such Service` or `no port N`.
    pub resolution: String,
    /// Its endpoints, ready or not.
    pub endpoints: Vec<EndpointView>,
    /// mTLS: the identities the caller's sidecar accepts from these endpoints.
    pub expected_identities: Vec<String>,
    /// The server sidecars' authorization verdict for this caller and request.
    pub authorization: Option<String>,
}

/// One endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointView {
    /// `ip:port`.
    pub address: String,
    /// `namespace/pod`, when known.
    pub pod: Option<String>,
    /// Ready (served to proxies) or not.
    pub ready: bool,
    /// Zone.
    pub zone: Option<String>,
    /// `mutual_tls`, `permissive` (mTLS from meshed callers) or `plaintext`.
    pub mtls: String,
}

/// What a share of the requests gets.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Share {
    /// Percent of requests.
    pub percent: f64,
    /// `forwarded`, `denied`, `fault`, `no_healthy_upstream`, `no_cluster`, `reset`,
    /// `passthrough` (not the mesh's: sent on untouched), `no_such_host` (a cluster name
    /// that does not resolve), `no_route` (404: no rule of the port's Gateway API routes
    /// matches).
    pub result: String,
    /// The HTTP status the client sees, when there is one.
    pub status: Option<u16>,
    /// The gRPC status, for gRPC requests answered by the mesh.
    pub grpc_status: Option<u32>,
    /// The Service that receives it (`namespace/name`).
    pub service: Option<String>,
    /// The subset that receives it.
    pub subset: Option<String>,
    /// In words.
    pub detail: String,
}

/// gRPC status Envoy sends for a 403 (PERMISSION_DENIED) and a 503 (UNAVAILABLE).
const GRPC_PERMISSION_DENIED: u32 = 7;
const GRPC_UNAVAILABLE: u32 = 14;

/// Explains `query` against `index`.
pub fn explain(index: &Index, query: &Query) -> Result<Explanation, QueryError> {
    let trust_domain = index.mesh_identity().trust_domain.clone();
    let (source_key, source_model) = find_source(index, query)?;
    let source = Source {
        pod: source_key.to_string(),
        workload: source_model.workload.to_string(),
        sidecar: source_model.meshed,
        identity: SpiffeId::new(
            &trust_domain,
            &source_key.namespace,
            &source_model.service_account,
        )
        .to_string(),
    };
    let mut out = Explanation {
        source,
        destination: None,
        request: None,
        rules: Vec::new(),
        backends: Vec::new(),
        settings: Vec::new(),
        outcome: Vec::new(),
        notes: Vec::new(),
    };
    let Some((service, sp)) =
        find_destination(index, query, &source_key.namespace, &mut out.notes)?
    else {
        if let Some(detail) = unresolvable(index, &query.to, &source_key.namespace) {
            out.outcome.push(Share {
                percent: 100.0,
                result: "no_such_host".into(),
                status: None,
                grpc_status: None,
                service: None,
                subset: None,
                detail,
            });
            return Ok(out);
        }
        out.outcome.push(Share {
            percent: 100.0,
            result: "passthrough".into(),
            status: None,
            grpc_status: None,
            service: None,
            subset: None,
            detail: format!(
                "{} is no Service of the mesh: the caller's sidecar passes the traffic to its \
                 original destination untouched (no rules, no mTLS)",
                query.to
            ),
        });
        return Ok(out);
    };
    let svc_model = index.service(&service).expect("found above");
    let (protocol, decided_by) = protocol::decide(&sp);
    let ip = match &svc_model.addressing {
        Addressing::ClusterIp(ip) => ip.clone(),
        Addressing::Headless => "(headless: pod IPs)".into(),
        Addressing::ExternalName(name) => format!("(ExternalName {name})"),
    };
    let binding = ServiceBinding::bind_for(index, &service, &source_key.namespace);
    let routes = binding.port(sp.port);
    let governed_by = routes.map(|r| source_name(&binding, &r.governing));
    let http = protocol.is_http() || (protocol == Protocol::Detect && query.request.is_some());
    let (listener, route) = if http {
        let chain = if protocol == Protocol::Detect {
            format!("outbound_{}_http (the HTTP inspector saw HTTP)", sp.port)
        } else {
            format!("outbound_{}", sp.port)
        };
        (
            chain,
            Some(format!(
                "{} / virtual host {}",
                names::port_route_config(sp.port),
                names::vhost_name(&service, sp.port)
            )),
        )
    } else {
        (format!("outbound_{}_{ip}", sp.port), None)
    };
    out.destination = Some(Destination {
        service: service.to_string(),
        port: sp.port,
        protocol: protocol.as_str().into(),
        decided_by: decided_by.as_str().into(),
        listener,
        route,
        governed_by,
    });
    let grpc = protocol == Protocol::Grpc
        || query.request.as_ref().is_some_and(|r| {
            r.header("content-type")
                .is_some_and(|c| c.starts_with("application/grpc"))
        });
    let request = query
        .request
        .clone()
        .filter(|_| http)
        .unwrap_or_else(|| RequestFacts {
            method: "GET".into(),
            path: "/".into(),
            headers: Vec::new(),
        });
    if http {
        out.request = Some(RequestView {
            method: request.method.clone(),
            path: request.path.clone(),
            headers: request.headers.clone(),
        });
    } else if query.request.is_some() {
        out.notes.push(format!(
            "port {} is {}: the sidecar proxies connections, so HTTP rules and conditions do \
             not apply",
            sp.port,
            protocol.as_str()
        ));
    }

    // The route: the first rule that applies, else the Service as a whole.
    let mut chosen: Option<Chosen> = None;
    if let Some(routes) = routes {
        if http {
            for bound in &routes.http {
                let source = source_name(&binding, bound.route_set());
                for m in bound.matches() {
                    let result = match (m, &chosen) {
                        (_, Some(_)) => None,
                        (None, None) => Some(Ok(())),
                        (Some(m), None) => Some(m.check(&request)),
                    };
                    let Some(result) = result else { continue };
                    out.rules.push(RuleCheck {
                        source: source.clone(),
                        rule: bound.rule().name.clone(),
                        match_: m.map_or("every request".into(), |m| m.to_string()),
                        matched: result.is_ok(),
                        reason: result.clone().err(),
                    });
                    if result.is_ok() {
                        let rule = bound.rule();
                        chosen = Some(Chosen::new(
                            &rule.name,
                            &rule.backends,
                            &bound.backends,
                            Some(rule.clone()),
                        ));
                    }
                }
            }
        } else {
            for bound in &routes.tcp {
                let rule = bound.rule();
                let source = source_name(&binding, bound.route_set());
                if !rule.sni_hosts.is_empty() {
                    out.rules.push(RuleCheck {
                        source,
                        rule: rule.name.clone(),
                        match_: format!("TLS server name {}", rule.sni_hosts.join(", ")),
                        matched: false,
                        reason: Some("applies to TLS connections naming those servers only".into()),
                    });
                    continue;
                }
                if chosen.is_some() {
                    continue;
                }
                out.rules.push(RuleCheck {
                    source,
                    rule: rule.name.clone(),
                    match_: "every connection".into(),
                    matched: true,
                    reason: None,
                });
                chosen = Some(Chosen::new(
                    &rule.name,
                    &rule.backends,
                    &bound.backends,
                    None,
                ));
            }
        }
    }
    if chosen.is_none() && http && routes.is_some_and(|r| r.routes_decide) {
        out.outcome.push(Share {
            percent: 100.0,
            result: "no_route".into(),
            status: Some(404),
            grpc_status: Some(12),
            service: None,
            subset: None,
            detail: "no rule of the Gateway API routes on this port matches: 404 (routes send nothing to the Service as a whole)".into(),
        });
        return Ok(out);
    }
    let chosen = chosen.unwrap_or_else(|| {
        out.rules.push(RuleCheck {
            source: "(none)".into(),
            rule: "default".into(),
            match_: if http {
                "every request"
            } else {
                "every connection"
            }
            .into(),
            matched: true,
            reason: None,
        });
        Chosen {
            name: "default".into(),
            backends: vec![(
                Backend {
                    service: service.clone(),
                    port: Some(sp.port),
                    subset: None,
                },
                (
                    names::cluster_name(&service, sp.port, None),
                    100,
                    Resolution::Resolved,
                ),
            )],
            http: None,
        }
    });

    settings(&chosen, routes, sp.port, &request, &mut out.settings);

    // The backends, their endpoints and what the servers' sidecars decide.
    let caller_meshed = out.source.sidecar;
    let mut shares: Vec<Share> = Vec::new();
    let mut remaining = 100.0;
    if let Some(abort) = chosen
        .http
        .as_ref()
        .and_then(|r| r.fault.as_ref())
        .and_then(|f| {
            let (status, percent) = f.abort?;
            f.headers
                .iter()
                .all(|h| h.value.check(request.header(&h.name).as_deref()))
                .then_some((status, percent))
        })
    {
        let (status, percent) = abort;
        let (http_status, grpc_status) = match status {
            AbortStatus::Http(s) => (Some(s), None),
            AbortStatus::Grpc(g) => (Some(200), Some(g)),
        };
        shares.push(Share {
            percent: f64::from(percent),
            result: "fault".into(),
            status: http_status,
            grpc_status,
            service: None,
            subset: None,
            detail: format!(
                "rule {} injects an abort for {percent}% of requests",
                chosen.name
            ),
        });
        remaining -= f64::from(percent);
    }
    let total_weight: u32 = chosen.backends.iter().map(|(_, (_, w, _))| *w).sum();
    if let Some(rule) = &chosen.http {
        let answered = match &rule.redirect {
            Some(r) => Some((
                "redirect",
                r.status,
                format!("rule {} answers a {} redirect", chosen.name, r.status),
            )),
            None if total_weight == 0 => Some((
                "no_backend",
                rule.unresolved_status,
                format!(
                    "rule {} has no backend with weight: {}",
                    chosen.name, rule.unresolved_status
                ),
            )),
            None => None,
        };
        if let Some((result, status, detail)) = answered {
            shares.push(Share {
                percent: remaining,
                result: result.into(),
                status: Some(status),
                grpc_status: None,
                service: None,
                subset: None,
                detail,
            });
            out.outcome = shares;
            return Ok(out);
        }
    }
    for (backend, (cluster, weight, resolution)) in &chosen.backends {
        let mut view = BackendView {
            cluster: cluster.clone(),
            service: backend.service.to_string(),
            subset: backend.subset.clone(),
            weight: *weight,
            resolution: match resolution {
                Resolution::Resolved => "resolved".into(),
                Resolution::NoService => "no such Service".into(),
                Resolution::NoPort(p) => format!("no port {p}"),
            },
            endpoints: Vec::new(),
            expected_identities: Vec::new(),
            authorization: None,
        };
        let percent = if total_weight == 0 {
            0.0
        } else {
            remaining * f64::from(*weight) / f64::from(total_weight)
        };
        let share =
            |result: &str, status: Option<u16>, grpc_status: Option<u32>, detail: String| Share {
                percent,
                result: result.into(),
                status,
                grpc_status: grpc_status.filter(|_| grpc),
                service: Some(backend.service.to_string()),
                subset: backend.subset.clone(),
                detail,
            };
        if *weight == 0 {
            out.backends.push(view);
            continue;
        }
        let resolved = (*resolution == Resolution::Resolved)
            .then(|| backend_port(index, backend, sp.port))
            .flatten();
        let Some((backend_sp, subset_labels)) = resolved else {
            shares.push(share(
                "no_cluster",
                Some(503),
                Some(GRPC_UNAVAILABLE),
                format!(
                    "{cluster} does not exist ({}): Envoy answers 503",
                    view.resolution
                ),
            ));
            out.backends.push(view);
            continue;
        };
        let subset_missing = backend.subset.is_some() && subset_labels.is_none();
        let endpoints = if subset_missing {
            Vec::new()
        } else {
            port_endpoints(
                index,
                &backend.service,
                &backend_sp.name,
                subset_labels.as_ref(),
            )
        };
        view.endpoints = endpoints.iter().map(|e| endpoint_view(index, e)).collect();
        let ready: Vec<&PortEndpoint> = endpoints.iter().filter(|e| e.ready).collect();
        let mut identities: Vec<String> = ready
            .iter()
            .filter(|e| e.meshed)
            .filter_map(|e| {
                Some(
                    SpiffeId::new(
                        &trust_domain,
                        &e.pod.as_ref()?.namespace,
                        e.service_account.as_deref()?,
                    )
                    .to_string(),
                )
            })
            .collect();
        identities.sort();
        identities.dedup();
        view.expected_identities = identities;
        if subset_missing {
            shares.push(share(
                "no_cluster",
                Some(503),
                Some(GRPC_UNAVAILABLE),
                format!(
                    "subset {} is not defined for {}: Envoy answers 503",
                    backend.subset.as_deref().unwrap_or_default(),
                    backend.service
                ),
            ));
        } else if ready.is_empty() {
            shares.push(share(
                "no_healthy_upstream",
                Some(503),
                Some(GRPC_UNAVAILABLE),
                format!(
                    "{cluster} has no ready endpoint ({} not ready): 503 no healthy upstream",
                    endpoints.len()
                ),
            ));
        } else {
            // The verdict of the first ready endpoint's sidecar; others are named when they
            // differ.
            let mut verdicts: BTreeMap<String, Vec<String>> = BTreeMap::new();
            // The first ready endpoint's denial, if it denies.
            let mut first: Option<Option<String>> = None;
            // Whether some endpoint's sidecar decides otherwise than the first's.
            let mut mixed = false;
            let mut reset = None;
            for ep in &ready {
                let (verdict, denied) = match &ep.pod {
                    Some(pod) if index.pod(pod).is_some_and(|p| p.meshed) => {
                        let mode = index.mtls_mode(pod);
                        if !caller_meshed && mode == MtlsMode::Strict {
                            reset = Some(format!(
                                "{pod} accepts mTLS only (STRICT) and the caller has no sidecar: \
                                 the connection is reset"
                            ));
                        }
                        let caller_id = out.source.identity.clone();
                        let caller = if caller_meshed && ep.meshed {
                            Caller::Mesh(&caller_id)
                        } else {
                            Caller::Unauthenticated
                        };
                        decide(
                            index,
                            pod,
                            ep.port,
                            caller,
                            http.then_some(&request),
                            chosen.http.as_ref(),
                        )
                    }
                    _ => (
                        "allowed: no sidecar on the server, nothing enforced".to_string(),
                        None,
                    ),
                };
                if first.is_none() {
                    first = Some(denied.clone());
                }
                verdicts.entry(verdict).or_default().push(
                    ep.pod
                        .as_ref()
                        .map_or(ep.address.clone(), |p| p.to_string()),
                );
                mixed |= first
                    .as_ref()
                    .is_some_and(|d| d.is_some() != denied.is_some());
            }
            if mixed {
                out.notes.push(format!(
                    "the pods of {cluster} decide differently: requests may be allowed or \
                     denied depending on the endpoint"
                ));
            }
            view.authorization = Some(
                verdicts
                    .iter()
                    .map(|(v, pods)| {
                        if verdicts.len() == 1 {
                            v.clone()
                        } else {
                            format!("{v} ({})", pods.join(", "))
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
            );
            let denied = first.flatten();
            if let Some(reason) = reset {
                shares.push(share("reset", None, None, reason));
            } else if let Some(denial) = denied {
                if http {
                    shares.push(share(
                        "denied",
                        Some(403),
                        Some(GRPC_PERMISSION_DENIED),
                        format!("the server's sidecar answers 403: {denial}"),
                    ));
                } else {
                    shares.push(share(
                        "denied",
                        None,
                        None,
                        format!("the server's sidecar closes the connection: {denial}"),
                    ));
                }
            } else {
                let to = match &backend.subset {
                    Some(s) => format!("subset {s} of {}", backend.service),
                    None => backend.service.to_string(),
                };
                shares.push(share(
                    "forwarded",
                    None,
                    None,
                    format!("forwarded to {to} ({} ready endpoints)", ready.len()),
                ));
            }
        }
        out.backends.push(view);
    }
    if !caller_meshed {
        out.notes.push(
            "the caller has no sidecar: its traffic does not go through the mesh's outbound \
             rules (kube-proxy picks an endpoint of the whole Service); the prediction above is \
             what a meshed caller would get"
                .into(),
        );
    }
    out.outcome = shares;
    Ok(out)
}

/// The rule that routes the request: its name, its backends with the cluster, weight and
/// resolution the binding gave each, and the HTTP rule itself (`None` for TCP).
struct Chosen {
    name: String,
    backends: Vec<(Backend, (String, u32, Resolution))>,
    http: Option<crate::routing::HttpRule>,
}

impl Chosen {
    fn new(
        name: &str,
        backends: &[crate::routing::WeightedBackend],
        bound: &[crate::binding::BoundBackend],
        http: Option<crate::routing::HttpRule>,
    ) -> Chosen {
        Chosen {
            name: name.to_string(),
            backends: backends
                .iter()
                .map(|b| b.backend.clone())
                .zip(
                    bound
                        .iter()
                        .map(|b| (b.cluster.clone(), b.weight, b.resolution)),
                )
                .collect(),
            http,
        }
    }
}

/// `TrafficPolicy ns/name` of the attachment holding `routes`.
fn source_name(binding: &ServiceBinding, routes: &Arc<RouteSet>) -> String {
    binding
        .attachments
        .iter()
        .find(|a| Arc::ptr_eq(&a.routes, routes))
        .map_or("(unknown)".into(), |a| a.source.to_string())
}

/// The calling pod: by name, else the first pod (by name) of the workload so named.
fn find_source<'a>(
    index: &'a Index,
    query: &Query,
) -> Result<(ObjectKey, &'a crate::index::PodModel), QueryError> {
    let (namespace, name) = match query.from.split_once('/') {
        Some((ns, name)) => (ns.to_string(), name.to_string()),
        None => (query.namespace.clone(), query.from.clone()),
    };
    let name = name
        .strip_prefix("pod/")
        .or_else(|| name.strip_prefix("deploy/"))
        .or_else(|| name.strip_prefix("deployment/"))
        .unwrap_or(&name)
        .to_string();
    let key = ObjectKey::new(&namespace, &name);
    if let Some(pod) = index.pod(&key) {
        return Ok((key, pod));
    }
    index
        .keys(Kind::Pod)
        .into_iter()
        .filter(|k| k.namespace == namespace)
        .find_map(|k| {
            let pod = index.pod(&k)?;
            (*pod.workload == *name).then_some((k, pod))
        })
        .ok_or_else(|| {
            QueryError(format!(
                "no pod or workload {name:?} in namespace {namespace}: give a pod name, a \
                 workload (Deployment, StatefulSet...) name, or -n NAMESPACE"
            ))
        })
}

/// The Service port `query.to` names, or `None` when it names nothing of the mesh.
fn find_destination(
    index: &Index,
    query: &Query,
    caller_namespace: &str,
    notes: &mut Vec<String>,
) -> Result<Option<(ObjectKey, ServicePort)>, QueryError> {
    let to = query.to.trim();
    let to = to
        .strip_prefix("http://")
        .or_else(|| to.strip_prefix("https://"))
        .unwrap_or(to)
        .trim_end_matches('/');
    let (host, port) =
        match to.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (
                h,
                Some(p.parse::<u16>().map_err(|_| {
                    QueryError(format!("{to}: the port after ':' must be a number"))
                })?),
            ),
            _ => (to, None),
        };
    let port = port.or(query.port);
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let by_name =
        names::service_named(&host, caller_namespace).filter(|key| index.service(key).is_some());
    let Some(service) = by_name.or_else(|| index.service_at(&host)) else {
        return Ok(None);
    };
    let model = index.service(&service).expect("found");
    let sp = match port {
        Some(p) => model
            .ports
            .iter()
            .find(|sp| sp.port == p)
            .cloned()
            .ok_or_else(|| {
                QueryError(format!(
                    "Service {service} has no port {p} (it has {}): the connection goes to the \
                 ClusterIP on a port nothing listens on",
                    model
                        .ports
                        .iter()
                        .map(|sp| sp.port.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?,
        None => match model.ports.as_slice() {
            [only] => only.clone(),
            [] => return Err(QueryError(format!("Service {service} has no ports"))),
            many => {
                return Err(QueryError(format!(
                    "Service {service} has several ports ({}): add --port N or HOST:PORT",
                    many.iter()
                        .map(|sp| sp.port.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
        },
    };
    if matches!(model.addressing, Addressing::ExternalName(_)) {
        notes.push(format!(
            "{service} is an ExternalName Service: Envoy resolves it by DNS"
        ));
    }
    Ok(Some((service, sp)))
}

/// Why `to`, which names no Service, does not resolve from `namespace` at all (a cluster
/// name: a bare name, `name.namespace` of a namespace the mesh knows, `*.svc.<domain>`);
/// `None` for other names and addresses (they pass through).
fn unresolvable(index: &Index, to: &str, namespace: &str) -> Option<String> {
    let host = to
        .rsplit_once(':')
        .map_or(to, |(h, _)| h)
        .trim_end_matches('.');
    if host.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    let parts: Vec<&str> = host.split('.').collect();
    let known_namespace = |ns: &str| {
        index.namespace(ns).is_some() || index.services().any(|(k, _)| k.namespace == ns)
    };
    let cluster_name = match parts.as_slice() {
        [_] => true,
        [_, ns] => known_namespace(ns),
        [_, _, "svc", ..] => true,
        _ => false,
    };
    if !cluster_name {
        return None;
    }
    let elsewhere: Vec<String> = index
        .services()
        .filter(|(k, _)| k.name == parts[0])
        .map(|(k, _)| format!("{}.{}", k.name, k.namespace))
        .collect();
    let hint = if elsewhere.is_empty() {
        "no Service has that name".to_string()
    } else {
        format!("did you mean {}?", elsewhere.join(" or "))
    };
    Some(format!(
        "{host} names no Service: it does not resolve from namespace {namespace} (DNS answers NXDOMAIN, nothing is sent); {hint}"
    ))
}

/// The Service port a resolved backend names, and the labels of its subset (`None` for the
/// whole Service, or a subset its Service's governing routes do not define).
#[allow(clippy::type_complexity)]
fn backend_port(
    index: &Index,
    backend: &Backend,
    routed: u16,
) -> Option<(ServicePort, Option<BTreeMap<String, String>>)> {
    let model = index.service(&backend.service)?;
    let port = match (backend.port, model.ports.as_slice()) {
        (Some(p), _) => p,
        (None, [only]) => only.port,
        (None, _) => routed,
    };
    let sp = model.ports.iter().find(|sp| sp.port == port)?.clone();
    let labels = backend.subset.as_ref().and_then(|name| {
        let binding = ServiceBinding::bind(index, &backend.service);
        binding
            .port(port)?
            .governing
            .subsets
            .iter()
            .find(|s| &s.name == name)
            .map(|s| s.labels.clone())
    });
    Some((sp, labels))
}

fn endpoint_view(index: &Index, e: &PortEndpoint) -> EndpointView {
    let mtls = match &e.pod {
        Some(pod) if e.meshed => match index.mtls_mode(pod) {
            MtlsMode::Permissive => "permissive",
            _ => "mutual_tls",
        },
        _ => "plaintext",
    };
    EndpointView {
        address: format!("{}:{}", e.address, e.port),
        pod: e.pod.as_ref().map(|p| p.to_string()),
        ready: e.ready,
        zone: e.zone.as_deref().map(str::to_string),
        mtls: mtls.into(),
    }
}

/// The server sidecar's verdict in words, and the denial (`Some`) when denied.
fn decide(
    index: &Index,
    pod: &ObjectKey,
    pod_port: u16,
    caller: Caller,
    request: Option<&RequestFacts>,
    rule: Option<&crate::routing::HttpRule>,
) -> (String, Option<String>) {
    let workload = index.workload(pod);
    let Some(inbound) = authorization::inbound(index, pod, &workload.services) else {
        return (
            "allowed: no authorization policy and default allowAll".into(),
            None,
        );
    };
    // The server sees the request after the caller's rule edited its headers.
    let mut headers: Vec<(String, String)> = request.map(|r| r.headers.clone()).unwrap_or_default();
    if let Some(edits) = rule.map(|r| &r.request_headers) {
        headers
            .retain(|(n, _)| !edits.remove.contains(n) && !edits.set.iter().any(|(s, _)| s == n));
        headers.extend(edits.set.iter().cloned());
        headers.extend(edits.add.iter().cloned());
    }
    let pairs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let facts = request.map(|r| authorization::Request {
        method: &r.method,
        path: r.path_only(),
        headers: &pairs,
    });
    let decision = inbound.decide(pod_port, caller, facts.as_ref());
    let who = match caller {
        Caller::Mesh(id) => id.to_string(),
        Caller::Unauthenticated => "an unauthenticated caller".into(),
    };
    let audit: Vec<String> = decision
        .audit
        .iter()
        .map(|d| {
            format!(
                "Audit policy {} rule {} would deny",
                d.policy.as_ref().map_or("-".into(), |p| p.to_string()),
                d.rule
            )
        })
        .collect();
    let audit = if audit.is_empty() {
        String::new()
    } else {
        format!(" ({})", audit.join("; "))
    };
    match decision.denied {
        Some(denial) => {
            let by = match &denial.policy {
                Some(policy) => format!("TrafficPolicy {policy} rule {}", denial.rule),
                None => format!(
                    "the workload default {} (set by {})",
                    inbound.default.as_str(),
                    match inbound.default_from {
                        authorization::DefaultSource::Mesh =>
                            "MeshIdentity spec.authorization.default",
                        authorization::DefaultSource::Namespace => "the namespace's label",
                        authorization::DefaultSource::Pod => "the pod's annotation",
                    }
                ),
            };
            let text = format!("denied for {who} by {by}");
            (format!("{text}{audit}"), Some(text))
        }
        None => (format!("allowed for {who}{audit}"), None),
    }
}

/// The settings of the chosen route and of the port's governing routes, in words.
fn settings(
    chosen: &Chosen,
    routes: Option<&PortRoutes>,
    port: u16,
    request: &RequestFacts,
    out: &mut Vec<String>,
) {
    let at = format!("rule {}", chosen.name);
    if let Some(rule) = &chosen.http {
        match rule.timeout {
            Some(t) => out.push(format!("timeout {t:?} for the whole request ({at})")),
            None => out.push("no request timeout".into()),
        }
        if let Some(r) = rule.retry.as_ref().filter(|r| r.attempts > 0) {
            let on: Vec<&str> = r.retry_on.iter().map(|c| c.as_str()).collect();
            out.push(format!(
                "up to {} retries{}{} ({at})",
                r.attempts,
                r.per_try_timeout
                    .map(|t| format!(", {t:?} per try"))
                    .unwrap_or_default(),
                if on.is_empty() {
                    ", on 5xx, connect failures and resets".to_string()
                } else {
                    format!(", on {}", on.join(","))
                }
            ));
        }
        if let Some(f) = &rule.fault {
            let applies = f
                .headers
                .iter()
                .all(|h| h.value.check(request.header(&h.name).as_deref()));
            let when = if f.headers.is_empty() {
                String::new()
            } else if applies {
                " (its header conditions hold for this request)".into()
            } else {
                " (its header conditions do not hold for this request: not injected)".into()
            };
            if let Some((d, p)) = f.delay {
                out.push(format!(
                    "fault: {d:?} delay for {p}% of requests{when} ({at})"
                ));
            }
            if let Some((s, p)) = f.abort {
                let s = match s {
                    AbortStatus::Http(s) => format!("HTTP {s}"),
                    AbortStatus::Grpc(g) => format!("gRPC status {g}"),
                };
                out.push(format!(
                    "fault: abort with {s} for {p}% of requests{when} ({at})"
                ));
            }
        }
        if let Some(m) = &rule.mirror {
            out.push(format!(
                "{}% of requests copied to {}{} (responses ignored) ({at})",
                m.percent,
                m.backend.service,
                m.backend
                    .subset
                    .as_ref()
                    .map(|s| format!(" subset {s}"))
                    .unwrap_or_default()
            ));
        }
        let e = &rule.request_headers;
        if !e.set.is_empty() || !e.add.is_empty() || !e.remove.is_empty() {
            out.push(format!(
                "request headers: set {:?}, add {:?}, remove {:?} ({at})",
                e.set, e.add, e.remove
            ));
        }
    }
    let Some(routes) = routes else { return };
    let governing = &routes.governing;
    if let Some(limit) = &governing.rate_limit {
        out.push(format!(
            "rate limit: {} requests per {:?} in each calling sidecar on port {port}; over it, \
             429",
            limit.requests, limit.fill_interval
        ));
    }
    if let Some(pool) = &governing.upstream.pool {
        let mut limits = Vec::new();
        let mut limit = |what: &str, v: Option<u32>| {
            if let Some(v) = v {
                limits.push(format!("{what} {v}"));
            }
        };
        limit("connections", pool.max_connections);
        limit("pending requests", pool.max_pending_requests);
        limit("requests", pool.max_requests);
        limit("retries", pool.max_retries);
        limit("requests per connection", pool.max_requests_per_connection);
        if let Some(t) = pool.connect_timeout {
            limits.push(format!("connect timeout {t:?}"));
        }
        if let Some(t) = pool.idle_timeout {
            limits.push(format!("idle timeout {t:?}"));
        }
        if let Some((percent, min)) = pool.retry_budget {
            limits.push(format!(
                "retry budget {percent}%{}",
                min.map(|m| format!(" (at least {m})")).unwrap_or_default()
            ));
        }
        out.push(format!(
            "connection pool: {}; over a limit, 503 (overflow)",
            limits.join(", ")
        ));
    }
    if let Some(o) = &governing.upstream.outlier {
        let mut when = Vec::new();
        if let Some(n) = o.consecutive_errors {
            when.push(format!("{n} consecutive 5xx"));
        }
        if let Some(n) = o.consecutive_gateway_errors {
            when.push(format!("{n} consecutive 502/503/504"));
        }
        out.push(format!(
            "outlier detection: an endpoint is ejected after {}{}{}; which ones are ejected now only the caller's sidecar knows",
            if when.is_empty() { "Envoy's default of 5 consecutive 5xx".into() } else { when.join(" or ") },
            o.base_ejection_time.map(|t| format!(", for {t:?} at first")).unwrap_or_default(),
            o.max_ejection_percent.map(|p| format!(", at most {p}% of them")).unwrap_or_default(),
        ));
    }
    if let Some(balancer) = &governing.upstream.balancer {
        let key = match &balancer.hash {
            None => String::new(),
            Some(crate::routing::HashKey::Header(h)) => format!(" by header {h}"),
            Some(crate::routing::HashKey::Cookie { name, .. }) => format!(" by cookie {name}"),
            Some(crate::routing::HashKey::SourceIp) => " by source IP".into(),
            Some(crate::routing::HashKey::QueryParameter(q)) => format!(" by query parameter {q}"),
        };
        out.push(format!("load balancing: {:?}{key}", balancer.algorithm));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::{HttpMatch, Method, NamedMatch, PathMatch, ValueMatch};
    use crate::testing::{mk_meshed_pod, mk_policy, mk_policy_spec, mk_service, mk_slice};
    use crate::{Event, Object};

    fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> RequestFacts {
        RequestFacts {
            method: method.into(),
            path: path.into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn path(p: PathMatch) -> HttpMatch {
        HttpMatch {
            path: Some(p),
            ..Default::default()
        }
    }

    #[test]
    fn matches_read_requests_as_envoy_does() {
        let get = |p: &str| request("GET", p, &[]);
        let prefix = path(PathMatch::Prefix("/api".into()));
        assert!(prefix.check(&get("/api")).is_ok());
        assert!(prefix.check(&get("/api/v1?x=1")).is_ok());
        assert!(prefix.check(&get("/apix")).is_err(), "a segment boundary");
        let exact = path(PathMatch::Exact("/login".into()));
        assert!(
            exact.check(&get("/login?next=/")).is_ok(),
            "the query is not the path"
        );
        let regex = path(PathMatch::RegularExpression("/items/[0-9]+".into()));
        assert!(regex.check(&get("/items/12")).is_ok());
        assert!(regex.check(&get("/items/12/x")).is_err(), "the whole path");
        let service = path(PathMatch::Grpc {
            service: Some("shop.Cart".into()),
            method: None,
            regex: false,
        });
        assert!(service
            .check(&request("POST", "/shop.Cart/Add", &[]))
            .is_ok());
        assert!(service
            .check(&request("POST", "/shop.Carts/Add", &[]))
            .is_err());
        let method = path(PathMatch::Grpc {
            service: None,
            method: Some("Add".into()),
            regex: false,
        });
        assert!(method.check(&request("POST", "/any.Svc/Add", &[])).is_ok());
        assert!(method
            .check(&request("POST", "/any.Svc/Addx", &[]))
            .is_err());

        let header = HttpMatch {
            headers: vec![NamedMatch {
                name: "x-user".into(),
                value: ValueMatch::Exact("a,b".into()),
            }],
            method: Some(Method::Post),
            ..Default::default()
        };
        let twice = request("POST", "/", &[("x-user", "a"), ("x-user", "b")]);
        assert!(header.check(&twice).is_ok(), "values joined with ','");
        let why = header.check(&request("GET", "/", &[])).unwrap_err();
        assert_eq!(why, "method is GET, the rule wants POST");
        let query = HttpMatch {
            query_params: vec![NamedMatch {
                name: "debug".into(),
                value: ValueMatch::Present,
            }],
            ..Default::default()
        };
        assert!(query.check(&get("/?debug")).is_ok());
        assert!(query.check(&get("/?debugging=1")).is_err());
    }

    /// `shop/web` calls; `shop/reviews` (ports 9080, 9090) has a v1 pod and a 100% split
    /// to it; `other/ratings` has one port.
    fn index() -> Index {
        let mut index = Index::new();
        let objects = vec![
            Object::Service(mk_service("shop", "reviews", "10.96.0.1", &[9080, 9090])),
            Object::Service(mk_service("other", "ratings", "10.96.0.2", &[8080])),
            Object::Pod(mk_meshed_pod("shop", "web", "web", &[("app", "web")])),
            Object::Pod(mk_meshed_pod(
                "shop",
                "reviews-1",
                "reviews",
                &[("app", "reviews"), ("version", "v1")],
            )),
            Object::EndpointSlice(mk_slice(
                "shop",
                "reviews-1",
                "reviews",
                "http",
                9080,
                &[("10.0.0.1", "reviews-1")],
            )),
            Object::TrafficPolicy(mk_policy(
                "shop",
                "reviews",
                mk_policy_spec("reviews", &[("v1", 100)]),
            )),
        ];
        for o in objects {
            index.apply(Event::apply(o));
        }
        index
    }

    fn query(to: &str, port: Option<u16>) -> Query {
        Query {
            from: "web".into(),
            namespace: "shop".into(),
            to: to.into(),
            port,
            request: None,
        }
    }

    #[test]
    fn a_request_is_followed_to_the_subset_that_serves_it() {
        let e = explain(&index(), &query("reviews:9080", None)).unwrap();
        let d = e.destination.as_ref().unwrap();
        assert_eq!((d.service.as_str(), d.port), ("shop/reviews", 9080));
        assert_eq!(d.governed_by.as_deref(), Some("TrafficPolicy shop/reviews"));
        assert_eq!(e.outcome.len(), 1, "{e:#?}");
        assert_eq!(e.outcome[0].result, "forwarded");
        assert_eq!(e.outcome[0].subset.as_deref(), Some("v1"));
        assert_eq!(
            e.backends[0].expected_identities,
            ["spiffe://cluster.local/ns/shop/sa/reviews"]
        );
    }

    #[test]
    fn names_resolve_as_the_caller_resolves_them() {
        let index = index();
        // The short name in the caller's namespace, the ClusterIP, the FQDN.
        for to in ["reviews", "10.96.0.1", "reviews.shop.svc.cluster.local"] {
            let e = explain(&index, &query(to, Some(9080))).unwrap();
            assert_eq!(e.destination.unwrap().service, "shop/reviews", "{to}");
        }
        // Another namespace's Service by its short name does not resolve.
        let e = explain(&index, &query("ratings", None)).unwrap();
        assert_eq!(e.outcome[0].result, "no_such_host");
        assert!(
            e.outcome[0].detail.contains("did you mean ratings.other?"),
            "{e:#?}"
        );
        let e = explain(&index, &query("example.com:443", None)).unwrap();
        assert_eq!(e.outcome[0].result, "passthrough");
        let e = explain(&index, &query("ratings.other", None)).unwrap();
        assert_eq!(e.destination.unwrap().port, 8080, "its only port");
    }

    #[test]
    fn questions_that_cannot_be_answered_say_what_to_give() {
        let index = index();
        let err = explain(&index, &query("reviews", None)).unwrap_err();
        assert!(
            err.0.contains("several ports (9080, 9090): add --port"),
            "{err}"
        );
        let err = explain(&index, &query("reviews:1234", None)).unwrap_err();
        assert!(
            err.0.contains("has no port 1234 (it has 9080, 9090)"),
            "{err}"
        );
        let mut q = query("reviews:9080", None);
        q.from = "nobody".into();
        let err = explain(&index, &q).unwrap_err();
        assert!(
            err.0
                .contains("no pod or workload \"nobody\" in namespace shop"),
            "{err}"
        );
    }
}
