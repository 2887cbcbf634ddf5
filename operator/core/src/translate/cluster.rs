//! Clusters: one per Service port and one per subset of it, fed by EDS over ADS (or by DNS
//! for ExternalName Services), speaking HTTP/2 to backends of http2 and gRPC ports.

use envoy_types::pb::envoy::config::cluster::v3::{
    cluster::{ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy},
    Cluster,
};
use envoy_types::pb::envoy::config::core::v3::{
    config_source::ConfigSourceSpecifier, AggregatedConfigSource, ApiVersion, ConfigSource,
    Http2ProtocolOptions,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    http_protocol_options::{
        explicit_http_config::ProtocolConfig, ExplicitHttpConfig, UpstreamProtocolOptions,
    },
    HttpProtocolOptions,
};
use envoy_types::pb::google::protobuf::Duration;
use envoy_types::util::pack_any;

use super::endpoint;
use crate::protocol::Protocol;

/// Connect timeout for mesh clusters; a later policy field may override it.
const CONNECT_TIMEOUT: Duration = Duration {
    seconds: 1,
    nanos: 0,
};

/// Config source that means "over the same ADS stream".
pub fn ads() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        resource_api_version: ApiVersion::V3 as i32,
        ..Default::default()
    }
}

/// An EDS cluster whose endpoints are the load assignment of the same name.
pub fn eds_cluster(name: &str, protocol: Protocol) -> Cluster {
    with_protocol(
        Cluster {
            name: name.to_string(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            eds_cluster_config: Some(EdsClusterConfig {
                eds_config: Some(ads()),
                service_name: name.to_string(),
            }),
            connect_timeout: Some(CONNECT_TIMEOUT),
            lb_policy: LbPolicy::RoundRobin as i32,
            ..Default::default()
        },
        protocol,
    )
}

/// A cluster for an ExternalName Service: the external host, resolved by DNS.
pub fn dns_cluster(name: &str, host: &str, port: u16, protocol: Protocol) -> Cluster {
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
    )
}

/// HTTP/2 (h2c) to the backends of http2 and gRPC ports; HTTP/1.1 (Envoy's default)
/// otherwise.
fn with_protocol(mut cluster: Cluster, protocol: Protocol) -> Cluster {
    if protocol.is_http2_upstream() {
        let options = HttpProtocolOptions {
            upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                        Http2ProtocolOptions::default(),
                    )),
                },
            )),
            ..Default::default()
        };
        cluster.typed_extension_protocol_options.insert(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
            pack_any(options),
        );
    }
    cluster
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
