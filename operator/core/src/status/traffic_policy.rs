//! What became of each TrafficPolicy: Accepted, ResolvedRefs and Programmed, worded in the
//! policy's own fields from the binding the translator computed.
//!
//! ```text
//! Index::policies (verdicts) + Translator::binding(target) (outcome, unresolved, mismatches)
//!   + AckSummary --policy_statuses--> PolicyStatus per policy, in key order
//! ```

use serde::Serialize;

use crate::binding::{
    port_list, AttachmentBinding, BackendAt, Outcome, ProtocolMismatch, Resolution, RuleKind,
    SourceRef, TargetProblem, Unresolved,
};
use crate::conditions::{
    AcceptedReason, ConditionType, ConditionView, ProgrammedReason, ResolvedRefsReason,
};
use crate::index::{Index, ObjectKey, PolicyEntry};
use crate::protocol::DecidedBy;
use crate::translate::Translator;

/// Status of one policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyStatus {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `metadata.generation` the conditions describe.
    pub observed_generation: Option<i64>,
    /// Accepted, ResolvedRefs, Programmed.
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

    /// The condition of a type.
    pub fn condition(&self, type_: ConditionType) -> Option<&ConditionView> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}

/// What the connected proxies did with the route tables, for `Programmed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AckSummary {
    /// Proxies connected.
    pub proxies: usize,
    /// Every one of them ACKed its latest route tables (none pending, none NACKed).
    pub routes_acked: bool,
}

/// Status of every policy, in key order, from the bindings of the translator's last pass
/// (run it on the index first).
pub fn policy_statuses(
    index: &Index,
    translator: &Translator,
    acks: AckSummary,
) -> Vec<PolicyStatus> {
    index
        .policies()
        .map(|(key, entry)| {
            let binding = entry.effective().and_then(|served| {
                translator
                    .binding(&served.target.service)?
                    .attachment(&SourceRef::TrafficPolicy(key.clone()))
            });
            let mut accepted = accepted(entry, binding);
            if let (true, Some(served)) = (accepted.status, entry.effective()) {
                accepted
                    .message
                    .push_str(&authorization_notes(index, translator, served));
                accepted
                    .message
                    .push_str(&consumer_notes(translator, key, served));
            }
            let resolved = resolved_refs(binding);
            let active = matches!(binding.map(|b| &b.outcome), Some(Outcome::Active { .. }));
            let programmed = programmed(active, accepted.status, acks);
            PolicyStatus {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                observed_generation: entry.generation,
                conditions: vec![accepted, resolved, programmed],
                active,
            }
        })
        .collect()
}

/// `; note: ...` for each namespace whose own routes (consumer routes) take the routing of
/// ports this policy's rules govern for every other caller.
fn consumer_notes(
    translator: &Translator,
    key: &ObjectKey,
    served: &crate::routing::RouteSet,
) -> String {
    let source = SourceRef::TrafficPolicy(key.clone());
    translator
        .consumer_bindings(&served.target.service)
        .flat_map(|(ns, binding)| {
            binding
                .attachments
                .iter()
                .filter(|a| a.source == source)
                .map(move |a| (ns, &a.outcome))
        })
        .filter_map(|(ns, outcome)| match outcome {
            Outcome::Conflicted { winner, ports } => Some(format!(
                "; note: for callers in namespace {ns}, {winner} (a consumer route) decides the routing of port(s) {} instead of this policy's rules",
                crate::binding::port_list(ports)
            )),
            _ => None,
        })
        .collect()
}

/// `; note: ...` for each way the policy's authorization does less than it seems to
/// (ports the Service does not have, identities of another trust domain, HTTP conditions
/// on ports that are not HTTP).
fn authorization_notes(
    index: &Index,
    translator: &Translator,
    served: &crate::routing::RouteSet,
) -> String {
    let (Some(authz), Some(service)) = (
        served.authorization.as_ref(),
        index.service(&served.target.service),
    ) else {
        return String::new();
    };
    let mut notes =
        crate::authorization::warnings(authz, &service.ports, translator.trust_domain());
    // Only a sidecar enforces: pods of the Service without one are open to every caller.
    let pods = crate::authorization::pods_of(
        index,
        &std::collections::BTreeSet::from([served.target.service.clone()]),
    );
    let bare: Vec<&ObjectKey> = pods
        .iter()
        .filter(|p| index.pod(p).is_some_and(|m| !m.meshed))
        .collect();
    if let Some(first) = bare.first() {
        notes.push(format!(
            "{} of the {} pods of Service {} carry no sidecar (e.g. {}): nothing enforces this authorization on them; enable injection for their namespace (weir.dev/inject=enabled) and restart them",
            bare.len(),
            pods.len(),
            served.target.service,
            first.name
        ));
    }
    notes.into_iter().map(|w| format!("; note: {w}")).collect()
}

fn accepted(entry: &PolicyEntry, binding: Option<&AttachmentBinding>) -> ConditionView {
    let valid = match &entry.verdict {
        Err(rejection) => {
            let keeps_serving = if entry.last_valid.is_some() {
                ". The previous valid version of this policy keeps serving"
            } else {
                ""
            };
            return ConditionView::new(
                false,
                rejection.reason,
                format!("{}: {}{keeps_serving}", rejection.field, rejection.message),
            );
        }
        Ok(valid) => valid,
    };
    if let Some(Outcome::Conflicted { winner, ports }) = binding.map(|b| &b.outcome) {
        let message = match winner {
            SourceRef::TrafficPolicy(_) => format!(
                "{winner} already governs port {} of this Service and takes precedence (older, or the same age and its name sorts first): merge the two policies or target another port",
                port_list(ports)
            ),
            SourceRef::HttpRoute(_) | SourceRef::GrpcRoute(_) => format!(
                "{winner} routes port {} of this Service, and Gateway API routes decide the routing of the ports they attach to: remove this policy's http and tcp rules (without them its subsets, connection pool, outlier detection, load balancing and rate limit apply there), or target another port",
                port_list(ports)
            ),
        };
        return ConditionView::new(false, AcceptedReason::Conflicted, message);
    }
    let notes: String = binding
        .map(|b| {
            b.mismatches
                .iter()
                .map(|m| format!("; note: {}", mismatch_note(m)))
                .collect()
        })
        .unwrap_or_default();
    match valid.unsupported.as_slice() {
        [] => ConditionView::new(
            true,
            AcceptedReason::Accepted,
            format!("The policy is valid{notes}"),
        ),
        unsupported => ConditionView::new(
            true,
            AcceptedReason::UnsupportedField,
            format!(
                "{} not yet supported by this version of Weir and ignored; the rest of the policy applies{notes}",
                if let [one] = unsupported {
                    format!("{one} is")
                } else {
                    format!("{} are", unsupported.join(", "))
                }
            ),
        ),
    }
}

/// Why rules of a policy do not apply to a port, in the policy's fields.
fn mismatch_note(m: &ProtocolMismatch) -> String {
    let why = match m.decided_by {
        DecidedBy::AppProtocol => "by its appProtocol",
        DecidedBy::PortName => "by its name",
        DecidedBy::ServerFirstPort => "as a server-first port",
        DecidedBy::Detection => "by detection",
    };
    let (port, protocol) = (m.port, m.protocol.as_str());
    match m.rules {
        RuleKind::Http => format!(
            "spec.http does not apply to port {port} ({protocol}, {why}): its connections follow spec.tcp, or go to the Service as a whole; set appProtocol: http on the port if it speaks HTTP"
        ),
        RuleKind::Tcp => format!(
            "spec.tcp does not apply to port {port} ({protocol}, {why}): its requests follow spec.http"
        ),
    }
}

fn resolved_refs(binding: Option<&AttachmentBinding>) -> ConditionView {
    let Some(binding) = binding else {
        return ConditionView::new(
            false,
            ResolvedRefsReason::TargetNotFound,
            "no valid version of the policy to resolve",
        );
    };
    if let Outcome::TargetNotFound(problem) = &binding.outcome {
        let service = &binding.routes.target.service;
        return ConditionView::new(
            false,
            ResolvedRefsReason::TargetNotFound,
            target_message(service, problem),
        );
    }
    match &binding.unresolved {
        Some(unresolved) => ConditionView::new(
            false,
            ResolvedRefsReason::BackendNotFound,
            unresolved_message(unresolved),
        ),
        None => ConditionView::new(
            true,
            ResolvedRefsReason::ResolvedRefs,
            "The target Service and every destination exist",
        ),
    }
}

fn target_message(service: &ObjectKey, problem: &TargetProblem) -> String {
    match problem {
        TargetProblem::NoService => format!(
            "spec.targetRef.service: Service {service} does not exist: create it or fix the name"
        ),
        TargetProblem::NoPort { port, ports } => format!(
            "spec.targetRef.port: Service {service} has no port {port} (it has {}): fix the port or omit it to cover all ports",
            port_list(ports)
        ),
    }
}

fn unresolved_message(u: &Unresolved) -> String {
    let (field, consequence) = match u.at {
        BackendAt::Http { rule, backend } => (
            format!("spec.http[{rule}].destinations[{backend}]"),
            "its share of traffic fails with 503",
        ),
        BackendAt::Tcp { rule, backend } => (
            format!("spec.tcp[{rule}].destinations[{backend}]"),
            "its share of traffic fails with 503",
        ),
        BackendAt::Mirror { rule } => (format!("spec.http[{rule}].mirror"), "no copies are sent"),
    };
    let service = &u.service;
    match u.resolution {
        Resolution::NoPort(p) => format!(
            "{field}.port: Service {service} has no port {p}: set port to one of its ports"
        ),
        Resolution::NoService | Resolution::Resolved => format!(
            "{field}.service: Service {service} does not exist, so {consequence}: create it or fix the name"
        ),
    }
}

fn programmed(active: bool, accepted: bool, acks: AckSummary) -> ConditionView {
    use ProgrammedReason as R;
    let (status, reason, message) = match (active, accepted, acks.proxies == 0, acks.routes_acked) {
        (false, _, _, _) => (
            false,
            R::NotProgrammed,
            "The policy is not in any route table; see Accepted and ResolvedRefs",
        ),
        (true, false, _, _) => (
            false,
            R::Invalid,
            "The previous valid version is programmed; the latest is rejected, see Accepted",
        ),
        (true, true, true, _) => (
            false,
            R::NoProxies,
            "No proxy is connected to carry the policy yet",
        ),
        (true, true, false, false) => (
            false,
            R::Pending,
            "Some proxies have not ACKed the route tables that carry the policy yet",
        ),
        // No proxy count in the text: it would rewrite every policy's status whenever a
        // proxy comes or goes.
        (true, true, false, true) => (true, R::Programmed, "ACKed by every connected proxy"),
    };
    ConditionView::new(status, reason, message)
}
