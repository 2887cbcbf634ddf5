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

/// How a cluster reaches endpoints whose pods carry a sidecar: mTLS with the workload's
/// certificate, verifying the peer's SPIFFE ID against the Service's identities.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpstreamMtls {
    /// SPIFFE IDs the peer may present (the service accounts of the Service's pods).
    pub peer_ids: Vec<String>,
    /// ALPN offered: the mesh's (what the tunnel carries) and the standard name of the
    /// protocol inside, which the receiving sidecar selects to pick its codec.
    pub alpn: &'static [&'static str],
}

/// The endpoint metadata key Envoy matches transport sockets on.
pub const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";
/// The metadata field that marks an endpoint with a sidecar.
pub const TLS_MODE: &str = "tlsMode";
/// Its value.
pub const TLS_MODE_MESH: &str = "weir";
/// ALPN of mesh mTLS carrying HTTP (the receiving sidecar terminates it into HTTP and
/// passes the caller's identity on); distinct from any application's own ALPN.
pub const ALPN_HTTP: &str = "weir-http";
/// ALPN of mesh mTLS carrying anything else (proxied as bytes).
pub const ALPN_TCP: &str = "weir-tcp";

/// The ALPN a client sidecar offers for a port's protocol: the mesh's, then (for HTTP)
/// the standard name of the HTTP version it speaks, which the server selects.
pub fn mesh_alpn(protocol: Protocol) -> &'static [&'static str] {
    match protocol {
        Protocol::Http => &[ALPN_HTTP, "http/1.1"],
        Protocol::Http2 | Protocol::Grpc => &[ALPN_HTTP, "h2"],
        Protocol::Tcp | Protocol::Tls | Protocol::Detect => &[ALPN_TCP],
    }
}

/// The ALPN a server sidecar selects from on mesh HTTP: the standard names, so that the
/// negotiated protocol tells its HTTP codec which version follows.
pub const INBOUND_HTTP_ALPN: &[&str] = &["h2", "http/1.1"];

/// An SDS secret served over the same ADS stream.
pub fn sds(
    name: &str,
) -> envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::SdsSecretConfig {
    envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::SdsSecretConfig {
        name: name.to_string(),
        sds_config: Some(ads()),
    }
}

/// The TLS settings of mesh mTLS on either side: the workload's certificate and the trust
/// bundle over SDS, the peer checked against `peers`, `alpn` offered or accepted.
pub fn mesh_tls(
    peers: Vec<
        envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::SubjectAltNameMatcher,
    >,
    alpn: &[&str],
) -> envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::CommonTlsContext {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        common_tls_context::{CombinedCertificateValidationContext, ValidationContextType},
        CertificateValidationContext, CommonTlsContext,
    };
    CommonTlsContext {
        tls_certificate_sds_secret_configs: vec![sds(crate::identity::secrets::WORKLOAD)],
        validation_context_type: Some(ValidationContextType::CombinedValidationContext(
            CombinedCertificateValidationContext {
                default_validation_context: Some(CertificateValidationContext {
                    match_typed_subject_alt_names: peers,
                    ..Default::default()
                }),
                validation_context_sds_secret_config: Some(sds(
                    crate::identity::secrets::TRUST_BUNDLE,
                )),
                ..Default::default()
            },
        )),
        alpn_protocols: alpn.iter().map(|a| a.to_string()).collect(),
        // Both ends are Envoys of the mesh: TLS 1.3 only, which also keeps the
        // certificates (and so the workloads' identities) off the wire.
        tls_params: Some(
            envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::TlsParameters {
                tls_minimum_protocol_version: TLS_1_3,
                tls_maximum_protocol_version: TLS_1_3,
                ..Default::default()
            },
        ),
        ..Default::default()
    }
}

const TLS_1_3: i32 =
    envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::tls_parameters::TlsProtocol::TlSv13
        as i32;

/// A URI SAN matcher: exactly `id`, or every ID under `id` as a prefix.
pub fn uri_san(
    id: &str,
    prefix: bool,
) -> envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::SubjectAltNameMatcher {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        subject_alt_name_matcher::SanType, SubjectAltNameMatcher,
    };
    use envoy_types::pb::envoy::r#type::matcher::v3::{
        string_matcher::MatchPattern, StringMatcher,
    };
    SubjectAltNameMatcher {
        san_type: SanType::Uri as i32,
        matcher: Some(StringMatcher {
            match_pattern: Some(if prefix {
                MatchPattern::Prefix(id.to_string())
            } else {
                MatchPattern::Exact(id.to_string())
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Adds the mTLS transport socket for endpoints marked with a sidecar; others stay
/// plaintext (the cluster's default transport socket).
pub fn with_mtls(mut cluster: Cluster, mtls: &UpstreamMtls) -> Cluster {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::TransportSocketMatch;
    use envoy_types::pb::envoy::config::core::v3::{transport_socket, TransportSocket};
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
    use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
    let peers = mtls.peer_ids.iter().map(|id| uri_san(id, false)).collect();
    let tls = UpstreamTlsContext {
        common_tls_context: Some(mesh_tls(peers, mtls.alpn)),
        ..Default::default()
    };
    let meshed = Struct {
        fields: [(
            TLS_MODE.to_string(),
            Value {
                kind: Some(Kind::StringValue(TLS_MODE_MESH.into())),
            },
        )]
        .into_iter()
        .collect(),
    };
    cluster.transport_socket_matches = vec![TransportSocketMatch {
        name: "mesh-mtls".into(),
        r#match: Some(meshed),
        transport_socket: Some(TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(tls))),
        }),
    }];
    cluster
}

/// An original-destination cluster for HTTP that speaks to the application in the
/// protocol the caller used (inbound, after mTLS termination).
pub fn original_dst_http_cluster(name: &str) -> Cluster {
    use envoy_types::pb::envoy::config::core::v3::Http1ProtocolOptions;
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::UseDownstreamHttpConfig;
    let mut cluster = original_dst_cluster(name);
    let options = HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(
            UseDownstreamHttpConfig {
                http_protocol_options: Some(Http1ProtocolOptions::default()),
                http2_protocol_options: Some(Http2ProtocolOptions::default()),
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    cluster.typed_extension_protocol_options.insert(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
        pack_any(options),
    );
    cluster
}
