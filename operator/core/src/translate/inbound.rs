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

use super::chain::{catch_all_virtual_host, HttpChain, Routes, TcpChain};
use super::endpoint::socket_address;
use super::listener_filters::{
    original_dst, tls_inspector, DETECTION_TIMEOUT, INBOUND_CAPTURE_PORT,
};
use super::mtls::{downstream_mtls, ALPN_HTTP, ALPN_TCP, INBOUND_HTTP_ALPN};
use crate::identity::SpiffeId;
pub use crate::index::Workload;
use crate::names;

/// The metadata namespace of what Weir tells about a listener.
pub const METADATA_NAMESPACE: &str = "weir";

/// The inbound listener of a workload with inbound mTLS `mode` in `trust_domain`.
pub fn listener(mode: MtlsMode, trust_domain: &str, workload: &Workload) -> Listener {
    let passthrough = |name: &str, matched, tls| {
        TcpChain::to(name, names::INBOUND_PASSTHROUGH_CLUSTER).build(name, matched, tls)
    };
    let metadata = metadata(workload);
    if mode == MtlsMode::Disable {
        return Listener {
            name: names::INBOUND_LISTENER.into(),
            address: Some(socket_address("0.0.0.0", INBOUND_CAPTURE_PORT)),
            traffic_direction: TrafficDirection::Inbound as i32,
            listener_filters: vec![original_dst()],
            filter_chains: vec![passthrough("inbound", None, None)],
            metadata,
            ..Default::default()
        };
    }
    let mesh = |alpn: &str| FilterChainMatch {
        transport_protocol: "tls".into(),
        application_protocols: vec![alpn.to_string()],
        ..Default::default()
    };
    let peers = SpiffeId::trust_domain_prefix(trust_domain);
    let http = http_chain(
        Some(mesh(ALPN_HTTP)),
        Some(downstream_mtls(&peers, INBOUND_HTTP_ALPN)),
    );
    let tcp = passthrough(
        "inbound_mtls",
        Some(mesh(ALPN_TCP)),
        Some(downstream_mtls(&peers, &[ALPN_TCP])),
    );
    let mut chains = vec![http, tcp];
    if mode == MtlsMode::Permissive {
        chains.push(passthrough("inbound", None, None));
    }
    Listener {
        name: names::INBOUND_LISTENER.into(),
        address: Some(socket_address("0.0.0.0", INBOUND_CAPTURE_PORT)),
        traffic_direction: TrafficDirection::Inbound as i32,
        listener_filters: vec![original_dst(), tls_inspector()],
        // A plaintext client of a server-first protocol sends nothing: after this long its
        // connection is taken as plaintext (PERMISSIVE) or closed (STRICT).
        listener_filters_timeout: Some(DETECTION_TIMEOUT),
        continue_on_listener_filters_timeout: true,
        filter_chains: chains,
        metadata,
        ..Default::default()
    }
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

/// Inbound HTTP after mTLS: the caller's SPIFFE ID goes to the application in
/// `x-forwarded-client-cert` (a header the caller sent is replaced, never trusted).
fn http_chain(
    matched: Option<FilterChainMatch>,
    tls: Option<envoy_types::pb::envoy::config::core::v3::TransportSocket>,
) -> FilterChain {
    let route = RouteConfiguration {
        name: "inbound".into(),
        virtual_hosts: vec![catch_all_virtual_host(
            "inbound",
            names::INBOUND_PASSTHROUGH_HTTP_CLUSTER,
        )],
        ..Default::default()
    };
    HttpChain::new("inbound_http", Routes::Inline(Box::new(route)))
        .forward_client_identity()
        .build("inbound_mtls_http", matched, tls)
}
