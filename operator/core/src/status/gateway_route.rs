//! What became of each HTTPRoute and GRPCRoute on each of its Service parents, as Gateway
//! API's route status says it: per parentRef, `Accepted` and `ResolvedRefs` with the
//! spec's reasons, from the source's verdict and the binding the translator computed.
//!
//! ```text
//! Index::routes (per parent: RouteSet | RouteRejection, refused refs)
//!   + Translator::binding(parent Service) (target found? backends resolved? protocol)
//!   --route_statuses--> RouteStatus { per parent: Accepted, ResolvedRefs }
//! ```

use serde::Serialize;
use weir_api::gateway_api::ParentReference;

use crate::binding::{BackendAt, Outcome, Resolution, RuleKind, SourceRef, TargetProblem};
use crate::index::gateway_route::{RouteId, RouteKind};
use crate::index::Index;
use crate::translate::Translator;

/// One condition of a route parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteCondition {
    /// `Accepted` or `ResolvedRefs`.
    #[serde(rename = "type")]
    pub type_: &'static str,
    /// True or False.
    pub status: bool,
    /// The spec's reason, e.g. `NoMatchingParent`, `BackendNotFound`.
    pub reason: &'static str,
    /// What happened and how to fix it.
    pub message: String,
}

/// The status of a route on one parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteParentStatus {
    /// The parentRef as written.
    pub parent: ParentReference,
    /// Accepted, ResolvedRefs.
    pub conditions: Vec<RouteCondition>,
}

/// The status of one route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteStatus {
    /// HTTPRoute or GRPCRoute.
    pub kind: &'static str,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `metadata.generation` the conditions describe.
    pub observed_generation: Option<i64>,
    /// Per Service parentRef.
    pub parents: Vec<RouteParentStatus>,
}

impl RouteStatus {
    /// Whether every parent accepted the route.
    pub fn accepted(&self) -> bool {
        self.parents
            .iter()
            .all(|p| p.conditions.first().is_some_and(|c| c.status))
    }
}

/// Status of every route with a Service parent, in kind and key order (run the translator
/// on the index first).
pub fn route_statuses(index: &Index, translator: &Translator) -> Vec<RouteStatus> {
    index
        .routes()
        .filter(|(_, entry)| !entry.parents.is_empty())
        .map(|(id, entry)| RouteStatus {
            kind: id.0.kind().name(),
            namespace: id.1.namespace.clone(),
            name: id.1.name.clone(),
            observed_generation: entry.generation,
            parents: entry
                .parents
                .iter()
                .map(|p| RouteParentStatus {
                    parent: p.parent.clone(),
                    conditions: parent_conditions(index, translator, id, p),
                })
                .collect(),
        })
        .collect()
}

fn parent_conditions(
    index: &Index,
    translator: &Translator,
    id: &RouteId,
    p: &crate::sources::gateway_route::ParentRoutes,
) -> Vec<RouteCondition> {
    let cond = |type_, status, reason, message: String| RouteCondition {
        type_,
        status,
        reason,
        message,
    };
    let source = match id.0 {
        RouteKind::Http => SourceRef::HttpRoute(id.1.clone()),
        RouteKind::Grpc => SourceRef::GrpcRoute(id.1.clone()),
    };
    let binding = translator
        .binding_for(&p.service, &id.1.namespace)
        .and_then(|b| {
            b.attachments
                .iter()
                .find(|a| a.source == source && Some(&a.routes) == p.verdict.as_ref().ok())
        });
    let accepted = match (&p.verdict, index.service(&p.service)) {
        (Err(rejection), _) => cond(
            "Accepted",
            false,
            rejection.reason,
            format!("{}: {}", rejection.field, rejection.message),
        ),
        (Ok(_), None) => cond(
            "Accepted",
            false,
            "NoMatchingParent",
            format!(
                "Service {} does not exist: create it or fix parentRefs",
                p.service
            ),
        ),
        (Ok(_), Some(svc)) => match binding.map(|b| &b.outcome) {
            Some(Outcome::TargetNotFound(TargetProblem::NoPort { port, .. })) => cond(
                "Accepted",
                false,
                "NoMatchingParent",
                format!(
                    "Service {} has no port {port} (it has {}): fix parentRefs port",
                    p.service,
                    svc.ports
                        .iter()
                        .map(|sp| sp.port.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
            _ => {
                let notes: Vec<String> = binding
                    .into_iter()
                    .flat_map(|b| &b.mismatches)
                    .filter(|m| m.rules == RuleKind::Http)
                    .map(|m| {
                        format!(
                            "port {} is {} (decided by {}): the route's rules do not apply there",
                            m.port,
                            m.protocol.as_str(),
                            m.decided_by.as_str()
                        )
                    })
                    .collect();
                let mut message = format!("routes requests to Service {}", p.service);
                for n in notes {
                    message.push_str(&format!("; note: {n}"));
                }
                cond("Accepted", true, "Accepted", message)
            }
        },
    };
    let resolved = if let Some(refused) = p.refused.first() {
        cond(
            "ResolvedRefs",
            false,
            refused.reason,
            format!("{}: {}", refused.field, refused.message),
        )
    } else if let Some(u) = binding.and_then(|b| b.unresolved.as_ref()) {
        let at = match u.at {
            BackendAt::Http { rule, backend } => {
                format!("spec.rules[{rule}].backendRefs[{backend}]")
            }
            BackendAt::Tcp { rule, backend } => {
                format!("spec.rules[{rule}].backendRefs[{backend}]")
            }
            BackendAt::Mirror { rule } => format!("spec.rules[{rule}].filters (RequestMirror)"),
        };
        let what = match u.resolution {
            Resolution::NoPort(port) => format!("Service {} has no port {port}", u.service),
            _ => format!("Service {} does not exist", u.service),
        };
        cond(
            "ResolvedRefs",
            false,
            "BackendNotFound",
            format!("{at}: {what}, so its share of requests is answered 500: create it or fix the reference"),
        )
    } else {
        cond(
            "ResolvedRefs",
            true,
            "ResolvedRefs",
            "every backend reference resolves".into(),
        )
    };
    vec![accepted, resolved]
}
