//! What became of each TrafficPolicy, as conditions with stable reasons and messages that
//! name the field and the fix. Every condition type and reason is listed here, once.
//!
//! ```text
//! Index (verdicts, served versions) + ServiceBinding::bind per target (outcomes, refs)
//!   + AckSummary (what the connected proxies ACKed)
//!   --policy_statuses--> PolicyStatus { Accepted, ResolvedRefs, Programmed }
//! ```
//!
//! The Kubernetes status writer and `/status` both render these; neither decides anything.

use serde::{Serialize, Serializer};
use std::collections::{BTreeSet, HashMap};

use crate::binding::{port_list, Outcome, PolicyBinding, ServiceBinding};
use crate::index::{Index, ObjectKey, PolicyEntry};

/// The condition types of a TrafficPolicy, in the order they are reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConditionType {
    /// The latest spec is valid and governs its target.
    Accepted,
    /// The target and every destination exist.
    ResolvedRefs,
    /// The connected proxies ACKed the route tables that carry the policy.
    Programmed,
    /// MeshStatus: the mesh CA issues, and is not about to expire.
    CaReady,
}

impl ConditionType {
    /// The type as written in status.
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionType::Accepted => "Accepted",
            ConditionType::ResolvedRefs => "ResolvedRefs",
            ConditionType::Programmed => "Programmed",
            ConditionType::CaReady => "CAReady",
        }
    }
}

/// Every reason a condition can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Accepted: the spec is valid and fully supported.
    Accepted,
    /// Accepted: the spec is valid; some fields are not translated yet and are ignored.
    UnsupportedField,
    /// Accepted=False: a regular expression does not compile.
    InvalidRegex,
    /// Accepted=False: destination weights do not add up to 100.
    InvalidWeights,
    /// Accepted=False: a destination names a subset the policy does not define.
    UnknownSubset,
    /// Accepted=False: a duration is malformed.
    InvalidDuration,
    /// Accepted=False: any other invalid value.
    InvalidField,
    /// Accepted=False: another policy on the same Service port takes precedence.
    Conflicted,
    /// ResolvedRefs: every reference resolved.
    ResolvedRefs,
    /// ResolvedRefs=False: the target Service (or its port) does not exist.
    TargetNotFound,
    /// ResolvedRefs=False: a destination Service (or its port) does not exist.
    BackendNotFound,
    /// Programmed: every connected proxy ACKed.
    Programmed,
    /// Programmed=False: the policy is in no route table.
    NotProgrammed,
    /// Programmed=False: the previous valid version is programmed, the latest is rejected.
    Invalid,
    /// Programmed=False: no proxy is connected.
    NoProxies,
    /// Programmed=False: some proxies have not ACKed yet.
    Pending,
    /// CAReady: the CA issues and expires in more than [`CA_EXPIRY_WARNING`].
    Issuing,
    /// CAReady=False: the CA's Secret does not exist (yet).
    CaNotFound,
    /// CAReady=False: the CA's Secret does not hold a usable CA.
    InvalidCa,
    /// CAReady=False: the CA expires within [`CA_EXPIRY_WARNING`].
    CaExpiringSoon,
    /// CAReady=False: the CA has expired.
    CaExpired,
}

impl Reason {
    /// The reason as written in status (CamelCase, stable).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Accepted => "Accepted",
            Reason::UnsupportedField => "UnsupportedField",
            Reason::InvalidRegex => "InvalidRegex",
            Reason::InvalidWeights => "InvalidWeights",
            Reason::UnknownSubset => "UnknownSubset",
            Reason::InvalidDuration => "InvalidDuration",
            Reason::InvalidField => "InvalidField",
            Reason::Conflicted => "Conflicted",
            Reason::ResolvedRefs => "ResolvedRefs",
            Reason::TargetNotFound => "TargetNotFound",
            Reason::BackendNotFound => "BackendNotFound",
            Reason::Programmed => "Programmed",
            Reason::NotProgrammed => "NotProgrammed",
            Reason::Invalid => "Invalid",
            Reason::NoProxies => "NoProxies",
            Reason::Pending => "Pending",
            Reason::Issuing => "Issuing",
            Reason::CaNotFound => "CANotFound",
            Reason::InvalidCa => "InvalidCA",
            Reason::CaExpiringSoon => "CAExpiringSoon",
            Reason::CaExpired => "CAExpired",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl Serialize for ConditionType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A status condition, independent of the Kubernetes type (the controller converts it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConditionView {
    /// The condition type.
    #[serde(rename = "type")]
    pub type_: ConditionType,
    /// True or False.
    pub status: bool,
    /// Why.
    pub reason: Reason,
    /// What happened and, when it is a problem, how to fix it.
    pub message: String,
}

impl ConditionView {
    fn new(type_: ConditionType, status: bool, reason: Reason, message: impl Into<String>) -> Self {
        ConditionView {
            type_,
            status,
            reason,
            message: message.into(),
        }
    }
}

/// A CA that expires within this long is reported (CAReady=False, a Warning Event).
pub const CA_EXPIRY_WARNING: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// Why the CA source gives no usable CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaProblem {
    /// [`Reason::CaNotFound`] or [`Reason::InvalidCa`].
    pub reason: Reason,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// MeshStatus's CAReady condition: from the source's problem if any, else from the expiry
/// of the CA in force (`expiry` is `None` until there is one).
pub fn ca_condition(
    problem: Option<&CaProblem>,
    expiry: Option<std::time::SystemTime>,
    now: std::time::SystemTime,
) -> ConditionView {
    let ready = |status, reason, message: String| {
        ConditionView::new(ConditionType::CaReady, status, reason, message)
    };
    if let Some(problem) = problem {
        return ready(false, problem.reason, problem.message.clone());
    }
    let Some(expiry) = expiry else {
        return ready(
            false,
            Reason::CaNotFound,
            "no mesh CA yet: the leader creates the Secret weir-system/weir-ca (type Generated), or give the Secret named in MeshIdentity mesh spec.ca.secretRef (type Provided)".into(),
        );
    };
    let at = crate::identity::rfc3339(expiry);
    match expiry.duration_since(now) {
        Err(_) => ready(
            false,
            Reason::CaExpired,
            format!("the mesh CA expired at {at}: no peer accepts its certificates; replace the CA (see the README, Identity and mTLS)"),
        ),
        Ok(left) if left < CA_EXPIRY_WARNING => ready(
            false,
            Reason::CaExpiringSoon,
            format!(
                "the mesh CA expires at {at} (in {} days): rotate it before then (see the README, Identity and mTLS)",
                left.as_secs() / 86_400
            ),
        ),
        Ok(_) => ready(
            true,
            Reason::Issuing,
            format!("workload certificates are issued; the CA is valid until {at}"),
        ),
    }
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

/// Status of every policy, in key order.
pub fn policy_statuses(index: &Index, acks: AckSummary) -> Vec<PolicyStatus> {
    let targets: BTreeSet<ObjectKey> = index
        .policies()
        .filter_map(|(_, p)| p.effective().map(|v| v.target.service.clone()))
        .collect();
    let mut bound: HashMap<ObjectKey, PolicyBinding> = HashMap::new();
    for target in &targets {
        let binding = ServiceBinding::bind(index, target);
        bound.extend(binding.policies.into_iter().map(|p| (p.key.clone(), p)));
    }
    index
        .policies()
        .map(|(key, entry)| {
            let binding = bound.get(key);
            let accepted = accepted(entry, binding);
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

fn accepted(entry: &PolicyEntry, binding: Option<&PolicyBinding>) -> ConditionView {
    let condition = |status, reason, message: String| {
        ConditionView::new(ConditionType::Accepted, status, reason, message)
    };
    let valid = match &entry.verdict {
        Err(rejection) => {
            let keeps_serving = if entry.last_valid.is_some() {
                ". The previous valid version of this policy keeps serving"
            } else {
                ""
            };
            return condition(
                false,
                rejection.reason,
                format!("{}: {}{keeps_serving}", rejection.field, rejection.message),
            );
        }
        Ok(valid) => valid,
    };
    if let Some(Outcome::Conflicted { winner, ports }) = binding.map(|b| &b.outcome) {
        return condition(
            false,
            Reason::Conflicted,
            format!(
                "TrafficPolicy {winner} already governs port {} of this Service and takes precedence (older, or the same age and its name sorts first): merge the two policies or target another port",
                port_list(ports)
            ),
        );
    }
    let notes: String = binding
        .map(|b| b.notes.iter().map(|n| format!("; note: {n}")).collect())
        .unwrap_or_default();
    match valid.unsupported.as_slice() {
        [] => condition(true, Reason::Accepted, format!("The policy is valid{notes}")),
        unsupported => condition(
            true,
            Reason::UnsupportedField,
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

fn resolved_refs(binding: Option<&PolicyBinding>) -> ConditionView {
    let condition = |status, reason, message: String| {
        ConditionView::new(ConditionType::ResolvedRefs, status, reason, message)
    };
    let Some(binding) = binding else {
        return condition(
            false,
            Reason::TargetNotFound,
            "no valid version of the policy to resolve".into(),
        );
    };
    if let Outcome::TargetNotFound { message } = &binding.outcome {
        return condition(false, Reason::TargetNotFound, message.clone());
    }
    match &binding.unresolved {
        Some(unresolved) => condition(false, Reason::BackendNotFound, unresolved.message.clone()),
        None => condition(
            true,
            Reason::ResolvedRefs,
            "The target Service and every destination exist".into(),
        ),
    }
}

fn programmed(active: bool, accepted: bool, acks: AckSummary) -> ConditionView {
    let (status, reason, message) = match (active, accepted, acks.proxies == 0, acks.routes_acked) {
        (false, _, _, _) => (
            false,
            Reason::NotProgrammed,
            "The policy is not in any route table; see Accepted and ResolvedRefs",
        ),
        (true, false, _, _) => (
            false,
            Reason::Invalid,
            "The previous valid version is programmed; the latest is rejected, see Accepted",
        ),
        (true, true, true, _) => (
            false,
            Reason::NoProxies,
            "No proxy is connected to carry the policy yet",
        ),
        (true, true, false, false) => (
            false,
            Reason::Pending,
            "Some proxies have not ACKed the route tables that carry the policy yet",
        ),
        // No proxy count in the text: it would rewrite every policy's status whenever a
        // proxy comes or goes.
        (true, true, false, true) => (true, Reason::Programmed, "ACKed by every connected proxy"),
    };
    ConditionView::new(ConditionType::Programmed, status, reason, message)
}
