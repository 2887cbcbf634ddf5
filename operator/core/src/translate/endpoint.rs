//! Load assignments: the ready endpoints of a Service port, optionally narrowed to the pods
//! of one subset.

use envoy_types::pb::envoy::config::core::v3::{
    address, socket_address::PortSpecifier, Address, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint::HostIdentifier, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};

/// A TCP socket address.
pub fn socket_address(ip: &str, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

/// The assignment for `cluster` with the given (ip, port) endpoints, in the order given.
pub fn load_assignment<'a>(
    cluster: &str,
    endpoints: impl IntoIterator<Item = (&'a str, u16)>,
) -> ClusterLoadAssignment {
    mesh_load_assignment(
        cluster,
        endpoints.into_iter().map(|(ip, port)| (ip, port, false)),
    )
}

/// As [`load_assignment`], marking the endpoints whose pods carry a sidecar (the
/// cluster's mTLS transport socket applies to them).
pub fn mesh_load_assignment<'a>(
    cluster: &str,
    endpoints: impl IntoIterator<Item = (&'a str, u16, bool)>,
) -> ClusterLoadAssignment {
    use envoy_types::pb::envoy::config::core::v3::Metadata;
    use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
    let meshed = || Metadata {
        filter_metadata: [(
            super::cluster::TRANSPORT_SOCKET_MATCH.to_string(),
            Struct {
                fields: [(
                    super::cluster::TLS_MODE.to_string(),
                    Value {
                        kind: Some(Kind::StringValue(super::cluster::TLS_MODE_MESH.into())),
                    },
                )]
                .into_iter()
                .collect(),
            },
        )]
        .into_iter()
        .collect(),
        ..Default::default()
    };
    let lb_endpoints: Vec<LbEndpoint> = endpoints
        .into_iter()
        .map(|(ip, port, with_sidecar)| LbEndpoint {
            host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                address: Some(socket_address(ip, port)),
                ..Default::default()
            })),
            metadata: with_sidecar.then(meshed),
            ..Default::default()
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: cluster.to_string(),
        endpoints: if lb_endpoints.is_empty() {
            Vec::new()
        } else {
            vec![LocalityLbEndpoints {
                lb_endpoints,
                ..Default::default()
            }]
        },
        ..Default::default()
    }
}
