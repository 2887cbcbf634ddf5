//! Mesh mTLS as Envoy sees it, in one place: the endpoint marker that selects the mTLS
//! transport socket, the ALPN values that tell the receiving sidecar what the tunnel
//! carries, the SDS references to the workload certificate and trust bundle, and the TLS
//! contexts of both ends.
//!
//! ```text
//! client sidecar: cluster transport_socket_matches[tlsMode=weir] -> upstream_tls (SDS
//!                 workload cert, peer URI SAN = the Service's identities, ALPN weir-http|tcp)
//! server sidecar: inbound chain matched on ALPN -> downstream_tls (SDS workload cert, peer
//!                 URI SAN under the trust domain, client certificate required)
//! ```

use envoy_types::pb::envoy::config::cluster::v3::{cluster::TransportSocketMatch, Cluster};
use envoy_types::pb::envoy::config::core::v3::{transport_socket, Metadata, TransportSocket};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::{CombinedCertificateValidationContext, ValidationContextType},
    subject_alt_name_matcher::SanType,
    tls_parameters::TlsProtocol,
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    SubjectAltNameMatcher, TlsParameters, UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use envoy_types::util::pack_any;

use super::pb::{self, ads};
use crate::identity::secrets;
use crate::protocol::Protocol;

pub use crate::mesh::{ALPN_HTTP, ALPN_TCP, TLS_MODE, TLS_MODE_MESH, TRANSPORT_SOCKET_MATCH};
/// The ALPN a server sidecar selects from on mesh HTTP: the standard names, so that the
/// negotiated protocol tells its HTTP codec which version follows.
pub const INBOUND_HTTP_ALPN: &[&str] = &["h2", "http/1.1"];
use crate::mesh::TLS_TRANSPORT_SOCKET;

/// The ALPN a client sidecar offers for a port's protocol: the mesh's, then (for HTTP)
/// the standard name of the HTTP version it speaks, which the server selects.
pub fn mesh_alpn(protocol: Protocol) -> &'static [&'static str] {
    match protocol {
        Protocol::Http => &[ALPN_HTTP, "http/1.1"],
        Protocol::Http2 | Protocol::Grpc => &[ALPN_HTTP, "h2"],
        Protocol::Tcp | Protocol::Tls | Protocol::Detect => &[ALPN_TCP],
    }
}

/// `tlsMode: weir`, the marker's fields.
fn marker() -> Struct {
    Struct {
        fields: [(
            TLS_MODE.to_string(),
            Value {
                kind: Some(Kind::StringValue(TLS_MODE_MESH.into())),
            },
        )]
        .into_iter()
        .collect(),
    }
}

/// The metadata of an endpoint whose pod carries a sidecar.
pub fn meshed_endpoint_metadata() -> Metadata {
    Metadata {
        filter_metadata: [(TRANSPORT_SOCKET_MATCH.to_string(), marker())]
            .into_iter()
            .collect(),
        ..Default::default()
    }
}

/// An SDS secret served over the same ADS stream.
pub fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_string(),
        sds_config: Some(ads()),
    }
}

/// The TLS settings of mesh mTLS on either side: the workload's certificate and the trust
/// bundle over SDS, the peer checked against `peers`, `alpn` offered or accepted.
pub fn mesh_tls(peers: Vec<SubjectAltNameMatcher>, alpn: &[&str]) -> CommonTlsContext {
    CommonTlsContext {
        tls_certificate_sds_secret_configs: vec![sds(secrets::WORKLOAD)],
        validation_context_type: Some(ValidationContextType::CombinedValidationContext(
            CombinedCertificateValidationContext {
                default_validation_context: Some(CertificateValidationContext {
                    match_typed_subject_alt_names: peers,
                    ..Default::default()
                }),
                validation_context_sds_secret_config: Some(sds(secrets::TRUST_BUNDLE)),
                ..Default::default()
            },
        )),
        alpn_protocols: alpn.iter().map(|a| a.to_string()).collect(),
        // Both ends are Envoys of the mesh: TLS 1.3 only, which also keeps the
        // certificates (and so the workloads' identities) off the wire.
        tls_params: Some(TlsParameters {
            tls_minimum_protocol_version: TlsProtocol::TlSv13 as i32,
            tls_maximum_protocol_version: TlsProtocol::TlSv13 as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A URI SAN matcher: exactly `id`, or every ID under `id` as a prefix.
pub fn uri_san(id: &str, prefix: bool) -> SubjectAltNameMatcher {
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

/// Adds the mTLS transport socket for endpoints marked with a sidecar; others stay
/// plaintext (the cluster's default transport socket).
pub fn with_upstream_mtls(mut cluster: Cluster, mtls: &UpstreamMtls) -> Cluster {
    let peers = mtls.peer_ids.iter().map(|id| uri_san(id, false)).collect();
    let tls = UpstreamTlsContext {
        common_tls_context: Some(mesh_tls(peers, mtls.alpn)),
        ..Default::default()
    };
    cluster.transport_socket_matches = vec![TransportSocketMatch {
        name: "mesh-mtls".into(),
        r#match: Some(marker()),
        transport_socket: Some(tls_transport_socket(pack_any(tls))),
    }];
    cluster
}

/// The server side of mesh mTLS: a client certificate matching one of `peers` is required
/// (every ID of the trust domain, or the ones authorization leaves), `alpn` is what the
/// chain accepts.
pub fn downstream_mtls(peers: Vec<SubjectAltNameMatcher>, alpn: &[&str]) -> TransportSocket {
    let tls = DownstreamTlsContext {
        common_tls_context: Some(mesh_tls(peers, alpn)),
        require_client_certificate: Some(pb::boolv(true)),
        ..Default::default()
    };
    tls_transport_socket(pack_any(tls))
}

fn tls_transport_socket(config: envoy_types::pb::google::protobuf::Any) -> TransportSocket {
    TransportSocket {
        name: TLS_TRANSPORT_SOCKET.into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(config)),
    }
}
