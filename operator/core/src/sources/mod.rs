//! Routing sources: one module per resource kind that attaches routes to a Service, each
//! parsing its spec into the route model ([`crate::routing::RouteSet`]) once per change and
//! naming its own fields in what it rejects.
//!
//! ```text
//! TrafficPolicy --traffic_policy::parse--> RouteSet | Rejection
//! HTTPRoute, GRPCRoute --gateway_route::parse_http / parse_grpc--> per Service parent:
//!                                              RouteSet | RouteRejection
//! ```

pub mod gateway_route;
pub mod traffic_policy;

pub use traffic_policy::Rejection;

/// Why `pattern` is not an RE2 expression Envoy would compile, if it is not. Rust's
/// `regex` accepts RE2's syntax, so a pattern refused here would be refused by Envoy too.
pub(crate) fn regex_problem(pattern: &str) -> Option<String> {
    let err = regex::Regex::new(pattern).err()?;
    let detail = err
        .to_string()
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string();
    Some(format!(
        "{pattern:?} is not a valid RE2 regular expression ({detail}): fix the pattern"
    ))
}
