//! Resilience and traffic shaping: what a policy's `connectionPool`, `outlierDetection`,
//! `loadBalancer`, `localRateLimit` and per-rule `fault` and `mirror` become in Envoy.
//!
//! ```text
//! Upstream          --shape_cluster-->  Cluster: circuit_breakers, outlier_detection,
//!                                       lb_policy, connect_timeout
//! Upstream          --hash_policies-->  RouteAction.hash_policy (every route of the port)
//! HttpRule.fault    --fault_filter_config--> Route.typed_per_filter_config[fault]
//! HttpRule.mirror   --mirror_policy-->  RouteAction.request_mirror_policies
//! RateLimit         --rate_limit_filter_config--> VirtualHost.typed_per_filter_config
//! ```
//!
//! The outbound HTTP connection managers always carry the fault and local rate limit
//! filters, configured to do nothing; the per-route and per-virtual-host configurations
//! above switch them on where a policy asks. So a policy edit changes routes and clusters
//! only, never the listeners.

use envoy_types::pb::envoy::config::cluster::v3::{
    circuit_breakers::{thresholds::RetryBudget, Thresholds},
    cluster::LbPolicy,
    CircuitBreakers, Cluster, OutlierDetection,
};
use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, RoutingPriority, RuntimeFractionalPercent,
};
use envoy_types::pb::envoy::config::route::v3::{
    route_action::{
        hash_policy::{self, PolicySpecifier},
        HashPolicy, RequestMirrorPolicy,
    },
    HeaderMatcher,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{
    fault_delay::FaultDelaySecifier, FaultDelay,
};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    fault_abort::ErrorType, FaultAbort, HttpFault,
};
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use envoy_types::pb::envoy::r#type::v3::{Percent, TokenBucket};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;

use crate::routing::{AbortStatus, Algorithm, Balancer, Fault, HashKey, RateLimit, Upstream};
use crate::translate::chain::http_filter;
use crate::translate::pb::{duration as pb_duration, percent, u32v};

pub use crate::mesh::{FAULT_FILTER, RATE_LIMITED_HEADER, RATE_LIMIT_FILTER};
/// Stat prefix of the local rate limit filter (`<prefix>.http_local_rate_limit.rate_limited`).
const RATE_LIMIT_STATS: &str = "weir_rate_limit";

/// The filters before the router in every outbound HTTP connection manager: fault
/// injection and local rate limiting, inactive until a route or virtual host configures
/// them.
pub fn outbound_http_filters() -> Vec<HttpFilter> {
    vec![
        http_filter(FAULT_FILTER, pack_any(HttpFault::default())),
        http_filter(
            RATE_LIMIT_FILTER,
            pack_any(LocalRateLimit {
                stat_prefix: RATE_LIMIT_STATS.into(),
                ..Default::default()
            }),
        ),
    ]
}

/// Applies the connection pool's limits, outlier detection and load balancer to one of the
/// target's clusters (its HTTP protocol options come with the cluster: see
/// [`crate::translate::cluster::http_protocol_options`]).
pub fn shape_cluster(cluster: &mut Cluster, upstream: &Upstream) {
    if let Some(pool) = &upstream.pool {
        let budget = pool.retry_budget.map(|(budget, min)| RetryBudget {
            budget_percent: Some(Percent {
                value: f64::from(budget),
            }),
            min_retry_concurrency: min.map(u32v),
            ..Default::default()
        });
        let limits = [
            pool.max_connections,
            pool.max_pending_requests,
            pool.max_requests,
            pool.max_retries,
        ];
        if limits.iter().any(Option::is_some) || budget.is_some() {
            cluster.circuit_breakers = Some(CircuitBreakers {
                thresholds: vec![Thresholds {
                    priority: RoutingPriority::Default as i32,
                    max_connections: pool.max_connections.map(u32v),
                    max_pending_requests: pool.max_pending_requests.map(u32v),
                    max_requests: pool.max_requests.map(u32v),
                    max_retries: pool.max_retries.map(u32v),
                    retry_budget: budget,
                    // Remaining capacity as stats, for dashboards of the limits.
                    track_remaining: true,
                    ..Default::default()
                }],
                ..Default::default()
            });
        }
        if let Some(timeout) = pool.connect_timeout {
            cluster.connect_timeout = Some(pb_duration(timeout));
        }
    }
    if let Some(outlier) = &upstream.outlier {
        // Only what the policy asks for ejects: Envoy's defaults would also eject on 5
        // consecutive 5xx and on success-rate outliers.
        let enforce = |on: bool| Some(u32v(if on { 100 } else { 0 }));
        cluster.outlier_detection = Some(OutlierDetection {
            consecutive_5xx: outlier.consecutive_errors.map(u32v),
            enforcing_consecutive_5xx: enforce(outlier.consecutive_errors.is_some()),
            consecutive_gateway_failure: outlier.consecutive_gateway_errors.map(u32v),
            enforcing_consecutive_gateway_failure: enforce(
                outlier.consecutive_gateway_errors.is_some(),
            ),
            enforcing_success_rate: enforce(false),
            interval: outlier.interval.map(pb_duration),
            base_ejection_time: outlier.base_ejection_time.map(pb_duration),
            max_ejection_percent: outlier.max_ejection_percent.map(u32v),
            ..Default::default()
        });
    }
    if let Some(balancer) = &upstream.balancer {
        use Algorithm as A;
        cluster.lb_policy = match balancer.algorithm {
            A::RoundRobin => LbPolicy::RoundRobin,
            A::LeastRequest => LbPolicy::LeastRequest,
            A::Random => LbPolicy::Random,
            A::RingHash => LbPolicy::RingHash,
            A::Maglev => LbPolicy::Maglev,
        } as i32;
    }
}

/// What every route of a port hashes requests by, for RingHash and Maglev.
pub fn hash_policies(balancer: Option<&Balancer>) -> Vec<HashPolicy> {
    let Some(key) = balancer.and_then(|b| b.hash.as_ref()) else {
        return Vec::new();
    };
    let specifier = match key {
        HashKey::Header(name) => PolicySpecifier::Header(hash_policy::Header {
            header_name: name.clone(),
            ..Default::default()
        }),
        HashKey::Cookie { name, ttl, path } => PolicySpecifier::Cookie(hash_policy::Cookie {
            name: name.clone(),
            ttl: ttl.map(pb_duration),
            path: path.clone().unwrap_or_default(),
            ..Default::default()
        }),
        HashKey::SourceIp => {
            PolicySpecifier::ConnectionProperties(hash_policy::ConnectionProperties {
                source_ip: true,
            })
        }
        HashKey::QueryParameter(name) => {
            PolicySpecifier::QueryParameter(hash_policy::QueryParameter { name: name.clone() })
        }
    };
    vec![HashPolicy {
        policy_specifier: Some(specifier),
        ..Default::default()
    }]
}

/// A rule's faults as the fault filter's per-route configuration.
pub fn fault_filter_config(fault: &Fault, headers: Vec<HeaderMatcher>) -> Any {
    pack_any(HttpFault {
        delay: fault.delay.map(|(delay, share)| FaultDelay {
            fault_delay_secifier: Some(FaultDelaySecifier::FixedDelay(pb_duration(delay))),
            percentage: Some(percent(share)),
        }),
        abort: fault.abort.map(|(status, share)| FaultAbort {
            error_type: Some(match status {
                AbortStatus::Http(code) => ErrorType::HttpStatus(u32::from(code)),
                AbortStatus::Grpc(code) => ErrorType::GrpcStatus(code),
            }),
            percentage: Some(percent(share)),
            ..Default::default()
        }),
        headers,
        ..Default::default()
    })
}

/// A copy of a share of the requests to `cluster` (Envoy appends `-shadow` to its Host).
pub fn mirror_policy(cluster: String, share: u32) -> RequestMirrorPolicy {
    RequestMirrorPolicy {
        cluster,
        runtime_fraction: Some(RuntimeFractionalPercent {
            default_value: Some(percent(share)),
            runtime_key: String::new(),
        }),
        ..Default::default()
    }
}

/// The port's token bucket as the local rate limit filter's per-virtual-host configuration.
pub fn rate_limit_filter_config(limit: &RateLimit) -> Any {
    let always = || RuntimeFractionalPercent {
        default_value: Some(percent(100)),
        runtime_key: "weir_rate_limit_enabled".into(),
    };
    pack_any(LocalRateLimit {
        stat_prefix: RATE_LIMIT_STATS.into(),
        token_bucket: Some(TokenBucket {
            max_tokens: limit.requests,
            tokens_per_fill: Some(u32v(limit.requests)),
            fill_interval: Some(pb_duration(limit.fill_interval)),
        }),
        filter_enabled: Some(always()),
        filter_enforced: Some(always()),
        response_headers_to_add: vec![HeaderValueOption {
            header: Some(HeaderValue {
                key: RATE_LIMITED_HEADER.into(),
                value: "true".into(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    })
}
