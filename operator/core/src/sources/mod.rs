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
