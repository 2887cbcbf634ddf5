//! Clusters: one per Service port and one per subset of it, fed by EDS over ADS (or by DNS
//! for ExternalName Services), with the HTTP protocol options of the port's protocol and
//! its upstream settings; and the original-destination clusters of transparent mode.
//!
//! ```text
//! (name, protocol, Pool) --eds_cluster / dns_cluster--> Cluster + HttpProtocolOptions
//!                          (http_protocol_options: the one place they are built)
//! ```

use envoy_types::pb::envoy::config::cluster::v3::{
    cluster::{ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy},
    Cluster,
};
use envoy_types::pb::envoy::config::core::v3::{
    Http1ProtocolOptions, Http2ProtocolOptions, HttpProtocolOptions as CommonHttpProtocolOptions,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    http_protocol_options::{
        explicit_http_config::ProtocolConfig, ExplicitHttpConfig, UpstreamProtocolOptions,
        UseDownstreamHttpConfig,
    },
    HttpProtocolOptions,
};
use envoy_types::pb::google::protobuf::Duration;
use envoy_types::util::pack_any;

use super::{endpoint, pb};
use crate::protocol::Protocol;
use crate::routing::Pool;

use crate::mesh::HTTP_PROTOCOL_OPTIONS;

/// Connect timeout for mesh clusters when no policy sets one.
const CONNECT_TIMEOUT: Duration = pb::seconds(1);

/// An EDS cluster whose endpoints are the load assignment of the same name.
pub fn eds_cluster(name: &str, protocol: Protocol, pool: Option<&Pool>) -> Cluster {
    with_protocol(
        Cluster {
            name: name.to_string(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            eds_cluster_config: Some(EdsClusterConfig {
                eds_config: Some(pb::ads()),
                service_name: name.to_string(),
            }),
            connect_timeout: Some(CONNECT_TIMEOUT),
            lb_policy: LbPolicy::RoundRobin as i32,
            ..Default::default()
        },
        protocol,
        pool,
    )
}

/// A cluster for an ExternalName Service: the external host, resolved by DNS.
pub fn dns_cluster(
    name: &str,
    host: &str,
    port: u16,
    protocol: Protocol,
    pool: Option<&Pool>,
) -> Cluster {
    with_protocol(
        Cluster {
            name: name.to_string(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(
                DiscoveryType::StrictDns as i32,
            )),
            load_assignment: Some(endpoint::load_assignment(name, [(host, port)])),
            connect_timeout: Some(CONNECT_TIMEOUT),
            lb_policy: LbPolicy::RoundRobin as i32,
            ..Default::default()
        },
        protocol,
        pool,
    )
}

fn with_protocol(cluster: Cluster, protocol: Protocol, pool: Option<&Pool>) -> Cluster {
    with_http_options(cluster, UpstreamHttp::Port(protocol), pool)
}

fn with_http_options(mut cluster: Cluster, upstream: UpstreamHttp, pool: Option<&Pool>) -> Cluster {
    if let Some(options) = http_protocol_options(upstream, pool) {
        cluster
            .typed_extension_protocol_options
            .insert(HTTP_PROTOCOL_OPTIONS.into(), pack_any(options));
    }
    cluster
}

/// What a cluster speaks to its backends over HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamHttp {
    /// What the Service port's protocol says: HTTP/2 (h2c) for http2 and gRPC, else
    /// HTTP/1.1.
    Port(Protocol),
    /// The version the caller spoke (inbound, to the application).
    LikeDownstream,
}

/// A cluster's HTTP protocol options, the one place they are built: the upstream HTTP
/// version, with the pool's idle timeout and requests per connection (HTTP ports only).
/// `None` where Envoy's defaults are it (HTTP/1.1 without pool settings, or not HTTP).
pub fn http_protocol_options(
    upstream: UpstreamHttp,
    pool: Option<&Pool>,
) -> Option<HttpProtocolOptions> {
    let protocol = match upstream {
        UpstreamHttp::Port(protocol) => protocol,
        UpstreamHttp::LikeDownstream => {
            return Some(HttpProtocolOptions {
                upstream_protocol_options: Some(
                    UpstreamProtocolOptions::UseDownstreamProtocolConfig(UseDownstreamHttpConfig {
                        http_protocol_options: Some(Http1ProtocolOptions::default()),
                        http2_protocol_options: Some(Http2ProtocolOptions::default()),
                        ..Default::default()
                    }),
                ),
                ..Default::default()
            })
        }
    };
    let common = pool
        .filter(|p| p.idle_timeout.is_some() || p.max_requests_per_connection.is_some())
        .filter(|_| protocol.is_http())
        .map(|p| CommonHttpProtocolOptions {
            idle_timeout: p.idle_timeout.map(pb::duration),
            max_requests_per_connection: p.max_requests_per_connection.map(pb::u32v),
            ..Default::default()
        });
    if common.is_none() && !protocol.is_http2_upstream() {
        return None;
    }
    let protocol_config = if protocol.is_http2_upstream() {
        ProtocolConfig::Http2ProtocolOptions(Http2ProtocolOptions::default())
    } else {
        ProtocolConfig::HttpProtocolOptions(Http1ProtocolOptions::default())
    };
    Some(HttpProtocolOptions {
        common_http_protocol_options: common,
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(protocol_config),
            },
        )),
        ..Default::default()
    })
}

/// A cluster that forwards to the connection's original destination (transparent mode).
pub fn original_dst_cluster(name: &str) -> Cluster {
    Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(
            DiscoveryType::OriginalDst as i32,
        )),
        connect_timeout: Some(CONNECT_TIMEOUT),
        lb_policy: LbPolicy::ClusterProvided as i32,
        ..Default::default()
    }
}

/// An original-destination cluster to the application (inbound): its connections leave
/// from [`crate::mesh::INBOUND_SOURCE_ADDRESS`], which the capture rules let through to
/// the application even when the original destination is the pod's own address (a call
/// the pod's own sidecar sent through a Service that chose this pod).
pub fn inbound_original_dst_cluster(name: &str) -> Cluster {
    use envoy_types::pb::envoy::config::core::v3::BindConfig;
    Cluster {
        upstream_bind_config: Some(BindConfig {
            source_address: Some(super::endpoint::socket_address_value(
                crate::mesh::INBOUND_SOURCE_ADDRESS,
                0,
            )),
            ..Default::default()
        }),
        ..original_dst_cluster(name)
    }
}

/// An inbound original-destination cluster for HTTP that speaks to the application in
/// the protocol the caller used (after mTLS termination).
pub fn original_dst_http_cluster(name: &str) -> Cluster {
    with_http_options(
        inbound_original_dst_cluster(name),
        UpstreamHttp::LikeDownstream,
        None,
    )
}
