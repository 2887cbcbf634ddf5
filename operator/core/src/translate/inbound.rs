//! The inbound side of a sidecar (transparent mode): what reaches the workload from the
//! mesh, per workload.
//!
//! ```text
//! mesh mTLS, ALPN weir-http -> terminate (peer in the trust domain) -> HTTP, the caller's
//!                              SPIFFE ID in x-forwarded-client-cert -> the application
//! mesh mTLS, ALPN weir-tcp  -> terminate -> bytes to the application
//! anything else             -> PERMISSIVE, DISABLE: bytes to the application untouched
//!                              STRICT: refused (no chain matches)
//! ```
//!
//! The listener depends on the profile (mTLS mode), the trust domain and the [`Workload`]:
//! the Services the pod backs, named in the listener's metadata. A profile's snapshot holds
//! the listener of a workload that backs nothing; each stream serves its own workload's
//! listener over it (see `snapshot::WorkloadListeners`), shared by every pod of the
//! same profile and workload. Inbound authorization and telemetry attach here, per workload.

use envoy_types::pb::envoy::config::core::v3::{Metadata, TrafficDirection};
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, FilterChainMatch, Listener};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::google::protobuf::{value::Kind, ListValue, Struct, Value};
use weir_api::MtlsMode;

use super::authorization;
use super::chain::{catch_all_virtual_host, closing_chain, HttpChain, Routes, TcpChain};
use super::endpoint::socket_address;
use super::listener_filters::{
    original_dst, tls_inspector, DETECTION_TIMEOUT, INBOUND_CAPTURE_PORT,
};
use super::mtls::{downstream_mtls, uri_san, ALPN_HTTP, ALPN_TCP, INBOUND_HTTP_ALPN};
use super::pb;
use super::telemetry::{self, ServedPorts, Side, Telemetry};
use crate::authorization::{InboundAuthorization, PortAuthorization};
use crate::identity::SpiffeId;
pub use crate::index::Workload;
use crate::names;

/// The metadata namespace of what Weir tells about a listener (and clusters, endpoints).
pub use crate::mesh::METADATA_NAMESPACE;

/// The inbound listener of a workload with inbound mTLS `mode` in `trust_domain`.
pub fn listener(
    mode: MtlsMode,
    trust_domain: &str,
    telemetry: &Telemetry,
    workload: &Workload,
) -> Listener {
    let metadata = metadata(workload);
    let mesh = InboundMesh {
        trust_domain,
        telemetry,
        served: &workload.served,
        reports: workload.reports,
    };
    let authz = workload.authorization.as_deref();
    let mut chains = Vec::new();
    // Ports some policy covers get chains of their own (Envoy picks chains by destination
    // port first), then the chains for every other port.
    for port in authz.map(|a| a.ports.as_slice()).unwrap_or_default() {
        chains.extend(chains_for(mode, &mesh, authz, Some(port)));
    }
    chains.extend(chains_for(mode, &mesh, authz, None));
    let tls_detection = mode != MtlsMode::Disable;
    Listener {
        name: names::INBOUND_LISTENER.into(),
        address: Some(socket_address("0.0.0.0", INBOUND_CAPTURE_PORT)),
        traffic_direction: TrafficDirection::Inbound as i32,
        listener_filters: if tls_detection {
            vec![original_dst(), tls_inspector()]
        } else {
            vec![original_dst()]
        },
        // A plaintext client of a server-first protocol sends nothing: after this long its
        // connection is taken as plaintext (PERMISSIVE) or closed (STRICT).
        listener_filters_timeout: tls_detection.then_some(DETECTION_TIMEOUT),
        continue_on_listener_filters_timeout: tls_detection,
        filter_chains: chains,
        metadata,
        ..Default::default()
    }
}

/// What every inbound chain of a workload depends on beyond its port.
struct InboundMesh<'a> {
    trust_domain: &'a str,
    telemetry: &'a Telemetry,
    served: &'a ServedPorts,
    /// The proxy reports denials to the operator.
    reports: bool,
}

/// The chains for connections to `port` (`None`: to a port no policy covers): mesh HTTP,
/// mesh TCP, and plaintext where the mode accepts it.
fn chains_for(
    mode: MtlsMode,
    mesh: &InboundMesh,
    authz: Option<&InboundAuthorization>,
    port: Option<&PortAuthorization>,
) -> Vec<FilterChain> {
    use authorization::{denial_filter, denial_logs, DenialLog};
    let (trust_domain, reports) = (mesh.trust_domain, mesh.reports);
    let number = port.map(|p| p.port);
    let suffix = number.map(|p| format!("_{p}")).unwrap_or_default();
    let on_port = |m: FilterChainMatch| FilterChainMatch {
        destination_port: number.map(|p| pb::u32v(p.into())),
        ..m
    };
    let mut chains = Vec::new();
    if mode != MtlsMode::Disable {
        let mesh_match = |alpn: &str| {
            on_port(FilterChainMatch {
                transport_protocol: "tls".into(),
                application_protocols: vec![alpn.to_string()],
                ..Default::default()
            })
        };
        let everyone = vec![uri_san(&SpiffeId::trust_domain_prefix(trust_domain), true)];
        chains.push(inbound_http(mesh, Side::InboundMesh).build(
            &format!("inbound_mtls_http{suffix}"),
            Some(mesh_match(ALPN_HTTP)),
            Some(downstream_mtls(everyone.clone(), INBOUND_HTTP_ALPN)),
        ));
        let name = format!("inbound_mtls{suffix}");
        let peers = match authz {
            Some(a) => authorization::mesh_peers(a, port, trust_domain, reports),
            None => everyone.clone(),
        };
        chains.push(if peers.is_empty() {
            closing_chain(&name, Some(mesh_match(ALPN_TCP)))
        } else {
            let restricted = peers != everyone;
            let shadow = authz
                .zip(port)
                .and_then(|(a, p)| authorization::network_shadow(a, p, trust_domain, false));
            let logged = restricted || shadow.is_some();
            let mut tcp = TcpChain::to(&name, names::INBOUND_PASSTHROUGH_CLUSTER).filters(shadow);
            if restricted {
                tcp = tcp.connect_after_handshake();
            }
            if logged {
                tcp = tcp.access_logs(denial_logs(DenialLog::Connection, reports));
            }
            let denials = logged.then(|| denial_filter(DenialLog::Connection));
            tcp.telemetry(telemetry::tcp_logs(
                Side::InboundMesh,
                mesh.telemetry,
                mesh.served,
                denials,
            ))
            .build(
                &name,
                Some(mesh_match(ALPN_TCP)),
                Some(downstream_mtls(peers, &[ALPN_TCP])),
            )
        });
    }
    let http_port = port.is_some_and(|p| p.http);
    if mode != MtlsMode::Strict && http_port {
        // Plaintext to an HTTP port rules cover: requests are decided one by one, as over
        // mTLS (a caller without identity matches no identity condition of an allow rule,
        // and every one of a deny rule). The port is HTTP: the connection manager takes
        // whatever is not mesh mTLS.
        let matched = on_port(FilterChainMatch::default());
        chains.push(inbound_http(mesh, Side::InboundPlaintext).build(
            &format!("inbound_http{suffix}"),
            Some(matched),
            None,
        ));
    }
    if mode != MtlsMode::Strict && !http_port {
        let name = format!("inbound{suffix}");
        let matched = (number.is_some()).then(|| on_port(FilterChainMatch::default()));
        let denied = authz.is_some_and(|a| authorization::plaintext_denied(a, number));
        chains.push(if denied {
            closing_chain(&name, matched)
        } else {
            let shadow = authz
                .zip(port)
                .and_then(|(a, p)| authorization::network_shadow(a, p, trust_domain, true));
            let (logs, denials) = match shadow {
                Some(_) => (
                    denial_logs(DenialLog::Connection, reports),
                    Some(denial_filter(DenialLog::Connection)),
                ),
                None => (Vec::new(), None),
            };
            TcpChain::to(&name, names::INBOUND_PASSTHROUGH_CLUSTER)
                .filters(shadow)
                .access_logs(logs)
                .telemetry(telemetry::tcp_logs(
                    Side::InboundPlaintext,
                    mesh.telemetry,
                    mesh.served,
                    denials,
                ))
                .build(&name, matched, None)
        });
    }
    chains
}

/// `weir: {services: [ns/name, ...]}` for a workload that backs Services; none otherwise.
fn metadata(workload: &Workload) -> Option<Metadata> {
    if workload.is_empty() {
        return None;
    }
    let string = |s: String| Value {
        kind: Some(Kind::StringValue(s)),
    };
    let services = Value {
        kind: Some(Kind::ListValue(ListValue {
            values: workload
                .services
                .iter()
                .map(|s| string(s.to_string()))
                .collect(),
        })),
    };
    Some(Metadata {
        filter_metadata: [(
            METADATA_NAMESPACE.to_string(),
            Struct {
                fields: [("services".to_string(), services)].into_iter().collect(),
            },
        )]
        .into_iter()
        .collect(),
        ..Default::default()
    })
}

/// The inbound connection manager: paths normalized (dot segments, repeated slashes, so
/// rules see the spelling the application acts on), authorization (the rules come with the
/// route table: see [`route_table`]), then the caller's SPIFFE ID goes to the application
/// in `x-forwarded-client-cert` (a header the caller sent is replaced, never trusted).
/// Telemetry reports as the destination (`side`: whether the caller proved an identity).
/// The same for every workload's port, so an authorization edit never drains a connection.
fn inbound_http(mesh: &InboundMesh, side: Side) -> HttpChain {
    use authorization::DenialLog;
    HttpChain::new(
        "inbound_http",
        Routes::Rds(names::INBOUND_ROUTE_CONFIG.to_string()),
    )
    .normalize_path()
    .merge_slashes()
    .filters([authorization::http_rbac_filter()])
    .access_logs(authorization::denial_logs(DenialLog::Http, mesh.reports))
    .telemetry(
        telemetry::http_logs(
            side,
            mesh.telemetry,
            mesh.served,
            Some(authorization::denial_filter(DenialLog::Http)),
        ),
        telemetry::tracing(side, mesh.telemetry),
    )
    .forward_client_identity()
}

/// The inbound route table of a workload: every request to the application, with the
/// workload's HTTP authorization on the virtual host.
pub fn route_table(trust_domain: &str, workload: &Workload) -> RouteConfiguration {
    let mut host = catch_all_virtual_host("inbound", names::INBOUND_PASSTHROUGH_HTTP_CLUSTER);
    if let Some(rbac) = workload
        .authorization
        .as_deref()
        .and_then(|a| authorization::http_rbac_per_route(a, trust_domain))
    {
        host.typed_per_filter_config
            .insert(crate::mesh::HTTP_RBAC_FILTER.to_string(), rbac);
    }
    RouteConfiguration {
        name: names::INBOUND_ROUTE_CONFIG.into(),
        virtual_hosts: vec![host],
        ..Default::default()
    }
}
