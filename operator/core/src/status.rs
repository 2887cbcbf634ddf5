//! What became of each TrafficPolicy: which one governs each Service port (precedence:
//! oldest first, then name), and the `Accepted` and `ResolvedRefs` conditions with stable
//! reasons and messages that name the field and the fix. `Programmed` depends on proxies'
//! ACKs and is added by the xDS layer.

use serde::Serialize;
use std::collections::BTreeSet;
use std::sync::Arc;

use crate::index::{Index, ObjectKey};
use crate::policy::{reason, ValidPolicy};
use crate::translate::route::destination_port;

/// What a policy does for its target Service.
#[derive(Debug, Clone, PartialEq)]
pub enum PolicyOutcome {
    /// The policy governs these ports of its target.
    Active {
        /// The served spec.
        policy: Arc<ValidPolicy>,
        /// Ports it governs.
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

/// The outcome of every policy whose served spec targets `service`, in precedence order.
pub fn resolve_policies(index: &Index, service: &ObjectKey) -> Vec<(ObjectKey, PolicyOutcome)> {
    let svc = index.service(service);
    let mut claimed: Vec<(u16, ObjectKey)> = Vec::new();
    let mut out = Vec::new();
    for (key, entry) in index.policies_for(service) {
        let Some(valid) = entry.effective() else {
            continue;
        };
        let outcome = match svc {
            None => PolicyOutcome::TargetNotFound {
                message: format!(
                    "spec.targetRef.service: Service {service} does not exist: create it or fix the name"
                ),
            },
            Some(svc) => {
                let all: BTreeSet<u16> = svc.ports.iter().map(|p| p.port).collect();
                match valid.spec.target_ref.port {
                    Some(p) if !all.contains(&p) => PolicyOutcome::TargetNotFound {
                        message: format!(
                            "spec.targetRef.port: Service {service} has no port {p} (it has {}): fix the port or omit it to cover all ports",
                            join(&all)
                        ),
                    },
                    wanted => {
                        let ports: BTreeSet<u16> = wanted.map(|p| BTreeSet::from([p])).unwrap_or(all);
                        let clash: Vec<&(u16, ObjectKey)> = claimed.iter().filter(|(p, _)| ports.contains(p)).collect();
                        if let Some((_, winner)) = clash.first() {
                            PolicyOutcome::Conflicted {
                                winner: winner.clone(),
                                ports: clash.iter().map(|(p, _)| *p).collect(),
                            }
                        } else {
                            claimed.extend(ports.iter().map(|p| (*p, key.clone())));
                            PolicyOutcome::Active { policy: valid.clone(), ports }
                        }
                    }
                }
            }
        };
        out.push((key.clone(), outcome));
    }
    out
}

fn join(ports: &BTreeSet<u16>) -> String {
    if ports.is_empty() {
        return "no TCP ports".into();
    }
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A status condition, independent of the Kubernetes type (the controller converts it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConditionView {
    /// `Accepted`, `ResolvedRefs` or `Programmed`.
    #[serde(rename = "type")]
    pub type_: &'static str,
    /// True or False.
    pub status: bool,
    /// Stable, CamelCase reason.
    pub reason: &'static str,
    /// What happened and, when it is a problem, how to fix it.
    pub message: String,
}

/// Status of one policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyStatus {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `metadata.generation` the conditions describe.
    pub observed_generation: Option<i64>,
    /// Accepted, then ResolvedRefs.
    pub conditions: Vec<ConditionView>,
    /// Whether its rules are in the route tables (possibly an earlier valid version).
    #[serde(skip)]
    pub active: bool,
}

impl PolicyStatus {
    /// The Accepted condition.
    pub fn accepted(&self) -> &ConditionView {
        &self.conditions[0]
    }
}

/// Status of every policy, in key order.
pub fn policy_statuses(index: &Index) -> Vec<PolicyStatus> {
    let mut outcomes = std::collections::HashMap::new();
    let targets: BTreeSet<ObjectKey> = index
        .policies()
        .filter_map(|(k, p)| {
            p.effective()
                .map(|v| ObjectKey::new(k.namespace.clone(), v.spec.target_ref.service.clone()))
        })
        .collect();
    for target in &targets {
        outcomes.extend(resolve_policies(index, target));
    }
    index
        .policies()
        .map(|(key, entry)| {
            let outcome = outcomes.get(key);
            let accepted = match (&entry.verdict, outcome) {
                (Err(rejection), _) => ConditionView {
                    type_: "Accepted",
                    status: false,
                    reason: rejection.reason,
                    message: format!(
                        "{}: {}{}",
                        rejection.field,
                        rejection.message,
                        if entry.last_valid.is_some() {
                            ". The previous valid version of this policy keeps serving"
                        } else {
                            ""
                        }
                    ),
                },
                (Ok(_), Some(PolicyOutcome::Conflicted { winner, ports })) => ConditionView {
                    type_: "Accepted",
                    status: false,
                    reason: reason::CONFLICTED,
                    message: format!(
                        "TrafficPolicy {winner} already governs port {} of this Service and takes precedence (older, or the same age and its name sorts first): merge the two policies or target another port",
                        join(ports)
                    ),
                },
                (Ok(valid), _) if !valid.unsupported.is_empty() => ConditionView {
                    type_: "Accepted",
                    status: true,
                    reason: reason::UNSUPPORTED_FIELD,
                    message: format!(
                        "{} not yet supported by this version of Weir and ignored; the rest of the policy applies",
                        if valid.unsupported.len() == 1 {
                            format!("{} is", valid.unsupported[0])
                        } else {
                            format!("{} are", valid.unsupported.join(", "))
                        }
                    ),
                },
                (Ok(_), _) => ConditionView {
                    type_: "Accepted",
                    status: true,
                    reason: reason::ACCEPTED,
                    message: "The policy is valid".into(),
                },
            };
            let resolved = resolved_refs(index, key, entry.effective(), outcome);
            PolicyStatus {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                observed_generation: entry.generation,
                conditions: vec![accepted, resolved],
                active: matches!(outcome, Some(PolicyOutcome::Active { .. })),
            }
        })
        .collect()
}

fn resolved_refs(
    index: &Index,
    key: &ObjectKey,
    served: Option<&Arc<ValidPolicy>>,
    outcome: Option<&PolicyOutcome>,
) -> ConditionView {
    let not_found = |reason, message| ConditionView {
        type_: "ResolvedRefs",
        status: false,
        reason,
        message,
    };
    if let Some(PolicyOutcome::TargetNotFound { message }) = outcome {
        return not_found(reason::TARGET_NOT_FOUND, message.clone());
    }
    let Some(valid) = served else {
        return not_found(
            reason::TARGET_NOT_FOUND,
            "no valid version of the policy to resolve".into(),
        );
    };
    for (i, rule) in valid.spec.http.iter().enumerate() {
        for (j, dest) in rule.destinations.iter().enumerate() {
            let Some(name) = &dest.service else { continue };
            let other = ObjectKey::new(
                dest.namespace
                    .clone()
                    .unwrap_or_else(|| key.namespace.clone()),
                name.clone(),
            );
            let field = format!("spec.http[{i}].destinations[{j}]");
            match index.service(&other) {
                None => {
                    return not_found(
                        reason::BACKEND_NOT_FOUND,
                        format!("{field}.service: Service {other} does not exist, so its share of traffic fails with 503: create it or fix the name"),
                    )
                }
                Some(svc) => {
                    let target = ObjectKey::new(key.namespace.clone(), valid.spec.target_ref.service.clone());
                    let routed: Vec<u16> = match valid.spec.target_ref.port {
                        Some(p) => vec![p],
                        None => index.service(&target).map(|t| t.ports.iter().map(|p| p.port).collect()).unwrap_or_default(),
                    };
                    for routed in routed {
                        let port = destination_port(index, &other, dest.port, routed);
                        if !svc.ports.iter().any(|p| p.port == port) {
                            return not_found(
                                reason::BACKEND_NOT_FOUND,
                                format!("{field}.port: Service {other} has no port {port}: set port to one of its ports"),
                            );
                        }
                    }
                }
            }
        }
    }
    ConditionView {
        type_: "ResolvedRefs",
        status: true,
        reason: reason::RESOLVED_REFS,
        message: "The target Service and every destination exist".into(),
    }
}
