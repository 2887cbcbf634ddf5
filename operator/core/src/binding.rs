//! Binding: which policy governs each port of a Service, with every destination resolved
//! against the index. The one place that decides precedence, port coverage and backend
//! existence; translation, status and the index's backend links all read its result.
//!
//! ```text
//! Index::policies_for(service) (precedence order) + ServiceModel
//!   --ServiceBinding::bind--> per policy: Active | Conflicted | TargetNotFound,
//!                                         the first destination that does not resolve
//!                             per port:   the governing policy's routes, backends resolved
//!                                         to cluster names
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::index::{Index, ObjectKey, ServiceModel};
use crate::policy::{BackendRef, Policy, WeightedBackend};
use crate::translate::names;

/// What the policies that target one Service do to it.
#[derive(Debug, Clone, Default)]
pub struct ServiceBinding {
    /// Every policy whose served version targets the Service, highest precedence first.
    pub policies: Vec<PolicyBinding>,
    /// Per port of the Service, the routes of the policy that governs it.
    pub ports: BTreeMap<u16, PortRoutes>,
}

/// One policy's outcome on its target.
#[derive(Debug, Clone)]
pub struct PolicyBinding {
    /// The policy.
    pub key: ObjectKey,
    /// Its served (last valid) version.
    pub policy: Arc<Policy>,
    /// Whether it governs ports.
    pub outcome: Outcome,
    /// The first destination that does not resolve, when the target exists.
    pub unresolved: Option<Unresolved>,
    /// Rules that cannot apply to the protocol of a port the policy governs.
    pub notes: Vec<String>,
}

/// Whether a policy governs ports of its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It governs these ports.
    Active {
        /// The ports.
        ports: BTreeSet<u16>,
    },
    /// An earlier policy governs an overlapping port.
    Conflicted {
        /// The policy that takes precedence.
        winner: ObjectKey,
        /// The ports both claim.
        ports: BTreeSet<u16>,
    },
    /// The target Service or port does not exist.
    TargetNotFound {
        /// What is missing and how to fix it.
        message: String,
    },
}

/// A destination that resolves to nothing: its share of traffic fails with 503.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved {
    /// What is missing, with the field, and how to fix it.
    pub message: String,
}

/// The routes of the policy governing one port.
#[derive(Debug, Clone)]
pub struct PortRoutes {
    /// The governing policy.
    pub policy: Arc<Policy>,
    /// Per HTTP route of the policy (same order), its backends resolved for this port.
    pub http: Vec<Vec<BoundBackend>>,
    /// Per TCP route of the policy (same order), its backends resolved for this port.
    pub tcp: Vec<Vec<BoundBackend>>,
    /// Per HTTP route of the policy (same order), its mirror resolved for this port (the
    /// weight is the mirrored percent).
    pub mirrors: Vec<Option<BoundBackend>>,
}

/// A destination resolved for one port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundBackend {
    /// The cluster traffic goes to.
    pub cluster: String,
    /// Share in percent.
    pub weight: u32,
    /// Whether the cluster exists (an unresolved one is answered 503 by Envoy).
    pub resolution: Resolution,
}

/// Whether a destination names something that exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// It does.
    Resolved,
    /// The other Service does not exist.
    NoService,
    /// The other Service exists but has no such port.
    NoPort(u16),
}

impl ServiceBinding {
    /// Binds every policy targeting `service`.
    pub fn bind(index: &Index, service: &ObjectKey) -> ServiceBinding {
        let svc = index.service(service);
        let mut claimed: Vec<(u16, ObjectKey)> = Vec::new();
        let mut binding = ServiceBinding::default();
        for (key, entry) in index.policies_for(service) {
            let Some(policy) = entry.effective() else {
                continue;
            };
            let outcome = match svc {
                None => Outcome::TargetNotFound {
                    message: format!(
                        "spec.targetRef.service: Service {service} does not exist: create it or fix the name"
                    ),
                },
                Some(svc) => claim(svc, service, policy, key, &mut claimed),
            };
            let unresolved = svc.and_then(|svc| {
                let routed: Vec<u16> = match policy.target.port {
                    Some(p) => vec![p],
                    None => svc.ports.iter().map(|p| p.port).collect(),
                };
                first_unresolved(index, policy, &routed)
            });
            let mut notes = Vec::new();
            if let (Outcome::Active { ports }, Some(svc)) = (&outcome, svc) {
                for port in ports {
                    binding
                        .ports
                        .insert(*port, port_routes(index, policy, *port));
                }
                notes = protocol_notes(svc, ports, policy);
            }
            binding.policies.push(PolicyBinding {
                key: key.clone(),
                policy: policy.clone(),
                outcome,
                unresolved,
                notes,
            });
        }
        binding
    }

    /// The routes governing `port`, if a policy governs it.
    pub fn port(&self, port: u16) -> Option<&PortRoutes> {
        self.ports.get(&port)
    }
}

/// Which ports a policy gets, given what earlier policies claimed.
fn claim(
    svc: &ServiceModel,
    service: &ObjectKey,
    policy: &Policy,
    key: &ObjectKey,
    claimed: &mut Vec<(u16, ObjectKey)>,
) -> Outcome {
    let all: BTreeSet<u16> = svc.ports.iter().map(|p| p.port).collect();
    if let Some(p) = policy.target.port.filter(|p| !all.contains(p)) {
        return Outcome::TargetNotFound {
            message: format!(
                "spec.targetRef.port: Service {service} has no port {p} (it has {}): fix the port or omit it to cover all ports",
                port_list(&all)
            ),
        };
    }
    let ports: BTreeSet<u16> = match policy.target.port {
        Some(p) => BTreeSet::from([p]),
        None => all,
    };
    let clash: Vec<&(u16, ObjectKey)> = claimed.iter().filter(|(p, _)| ports.contains(p)).collect();
    if let Some((_, winner)) = clash.first() {
        return Outcome::Conflicted {
            winner: winner.clone(),
            ports: clash.iter().map(|(p, _)| *p).collect(),
        };
    }
    claimed.extend(ports.iter().map(|p| (*p, key.clone())));
    Outcome::Active { ports }
}

/// Where a policy's HTTP rules meet a TCP port, or its TCP rules an HTTP port: they do not
/// apply there, and the user should know why.
fn protocol_notes(svc: &ServiceModel, ports: &BTreeSet<u16>, policy: &Policy) -> Vec<String> {
    let mut notes = Vec::new();
    for port in svc.ports.iter().filter(|p| ports.contains(&p.port)) {
        let (protocol, decided_by) = crate::protocol::decide(port);
        let why = match decided_by {
            crate::protocol::DecidedBy::AppProtocol => "by its appProtocol",
            crate::protocol::DecidedBy::PortName => "by its name",
            crate::protocol::DecidedBy::ServerFirstPort => "as a server-first port",
            crate::protocol::DecidedBy::Detection => "by detection",
        };
        if !policy.http.is_empty() && !protocol.is_http() {
            notes.push(format!(
                "spec.http does not apply to port {} ({}, {why}): its connections follow spec.tcp, or go to the Service as a whole; set appProtocol: http on the port if it speaks HTTP",
                port.port,
                protocol.as_str()
            ));
        }
        if !policy.tcp.is_empty() && !protocol.is_tcp() {
            notes.push(format!(
                "spec.tcp does not apply to port {} ({}, {why}): its requests follow spec.http",
                port.port,
                protocol.as_str()
            ));
        }
    }
    notes
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

fn port_routes(index: &Index, policy: &Arc<Policy>, port: u16) -> PortRoutes {
    let bind = |backends: &[WeightedBackend]| -> Vec<BoundBackend> {
        backends
            .iter()
            .map(|b| resolve(index, policy, port, &b.backend, b.weight))
            .collect()
    };
    PortRoutes {
        policy: policy.clone(),
        http: policy.http.iter().map(|r| bind(&r.backends)).collect(),
        tcp: policy.tcp.iter().map(|r| bind(&r.backends)).collect(),
        mirrors: policy
            .http
            .iter()
            .map(|r| {
                let m = r.mirror.as_ref()?;
                Some(resolve(index, policy, port, &m.backend, m.percent))
            })
            .collect(),
    }
}

/// Resolves one destination for traffic to `port` of the policy's target.
fn resolve(
    index: &Index,
    policy: &Policy,
    port: u16,
    backend: &BackendRef,
    weight: u32,
) -> BoundBackend {
    let target = &policy.target.service;
    let (cluster, resolution) = match backend {
        BackendRef::Target => (
            names::cluster_name(target, port, None),
            Resolution::Resolved,
        ),
        BackendRef::Subset(subset) => (
            names::cluster_name(target, port, Some(subset)),
            Resolution::Resolved,
        ),
        BackendRef::Service {
            service,
            port: given,
        } => {
            let other = index.service(service);
            let port = destination_port(other, *given, port);
            let resolution = match other {
                None => Resolution::NoService,
                Some(svc) if !svc.ports.iter().any(|p| p.port == port) => Resolution::NoPort(port),
                Some(_) => Resolution::Resolved,
            };
            (names::cluster_name(service, port, None), resolution)
        }
    };
    BoundBackend {
        cluster,
        weight,
        resolution,
    }
}

/// The port of another Service a destination means: the one given, the only one it has, or
/// the same number as the port being routed.
fn destination_port(other: Option<&ServiceModel>, given: Option<u16>, routed: u16) -> u16 {
    if let Some(port) = given {
        return port;
    }
    match other.map(|s| s.ports.as_slice()) {
        Some([only]) => only.port,
        _ => routed,
    }
}

/// The first destination, over rules, destinations and routed ports in order, that does
/// not resolve.
fn first_unresolved(index: &Index, policy: &Policy, routed: &[u16]) -> Option<Unresolved> {
    let rules = policy
        .http
        .iter()
        .enumerate()
        .map(|(i, r)| (format!("spec.http[{i}]"), &r.backends))
        .chain(
            policy
                .tcp
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("spec.tcp[{i}]"), &r.backends)),
        );
    let destinations = rules.flat_map(|(at, backends)| {
        backends.iter().enumerate().map(move |(j, b)| {
            (
                format!("{at}.destinations[{j}]"),
                &b.backend,
                "its share of traffic fails with 503",
            )
        })
    });
    let mirrors = policy.http.iter().enumerate().filter_map(|(i, rule)| {
        let mirror = rule.mirror.as_ref()?;
        Some((
            format!("spec.http[{i}].mirror"),
            &mirror.backend,
            "no copies are sent",
        ))
    });
    for (field, backend, consequence) in destinations.chain(mirrors) {
        let BackendRef::Service { service, .. } = backend else {
            continue;
        };
        if index.service(service).is_none() {
            return Some(Unresolved {
                message: format!(
                    "{field}.service: Service {service} does not exist, so {consequence}: create it or fix the name"
                ),
            });
        }
        for port in routed {
            if let Resolution::NoPort(p) = resolve(index, policy, *port, backend, 0).resolution {
                return Some(Unresolved {
                    message: format!(
                        "{field}.port: Service {service} has no port {p}: set port to one of its ports"
                    ),
                });
            }
        }
    }
    None
}
