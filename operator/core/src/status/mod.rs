//! Status: one builder per thing that has a status, each wording the conditions of the
//! [`crate::conditions`] vocabulary in its own fields.
//!
//! ```text
//! Index (verdicts) + Translator::binding per target (outcome, unresolved, mismatches)
//!   + AckSummary (what the connected proxies ACKed)
//!   --traffic_policy::policy_statuses--> PolicyStatus { Accepted, ResolvedRefs, Programmed }
//! Index::routes + the same bindings --gateway_route::route_statuses--> per route and
//!   Service parent { Accepted, ResolvedRefs } (Gateway API's reasons)
//! CA source problem + CA expiry --ca::ca_condition--> MeshStatus CAReady
//! ```
//!
//! The status pass binds nothing itself: it reads the bindings the translator computed. The
//! Kubernetes status writer and `/status` both render these; neither decides anything.

pub mod ca;
pub mod gateway_route;
pub mod traffic_policy;

pub use crate::conditions::{
    AcceptedReason, CaReadyReason, ConditionReason, ConditionType, ConditionView, ProgrammedReason,
    Reason, ResolvedRefsReason,
};
pub use ca::{ca_condition, CaProblem, CA_EXPIRY_WARNING};
pub use traffic_policy::{policy_statuses, AckSummary, PolicyStatus};
