//! Listeners for the two capture modes.
//!
//! - explicit: one listener on 127.0.0.1:<port> that takes plain HTTP (HTTP/1.1 or h2c)
//!   and routes by Host to any HTTP Service port in the mesh (local mode, no iptables).
//! - transparent: iptables sends outbound TCP to 15001 and inbound to 15006. The outbound
//!   listener picks a filter chain by the connection's original destination:
//!
//! ```text
//! port p, ClusterIP of an http/http2/grpc Service  --> HTTP (route table outbound|p, by Host)
//! port p, ClusterIP of an undeclared port           --> HTTP if the first bytes are HTTP
//!                                                       (http_inspector), else TCP
//! port p, ClusterIP of a tcp/tls Service            --> TCP proxy (spec.tcp split, or the
//!                                                       Service); TLS by SNI first
//! port p, any other address, SNI naming a tls Service --> TCP proxy to that Service
//! anything else (outside the mesh, headless pods)   --> passthrough, untouched
//! ```
//!
//! Inspectors run only on the ports that need them (filter_disabled by port), with a
//! bounded wait, so declared TCP and server-first ports never wait for client bytes.
//! The inbound listener hands connections to the local application at their original
//! destination.

use envoy_types::pb::envoy::config::core::v3::{
    transport_socket, CidrRange, TrafficDirection, TransportSocket,
};
use envoy_types::pb::envoy::config::listener::v3::{
    filter::ConfigType as FilterConfig,
    listener_filter::ConfigType as ListenerFilterConfig,
    listener_filter_chain_match_predicate::{MatchSet, Rule},
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter,
    ListenerFilterChainMatchPredicate,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::http_inspector::v3::HttpInspector;
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::{CodecType, RouteSpecifier, UpgradeConfig},
    http_filter::ConfigType as HttpFilterConfig,
    HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    tcp_proxy::{weighted_cluster::ClusterWeight, ClusterSpecifier, WeightedCluster},
    TcpProxy,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;
use envoy_types::pb::envoy::r#type::v3::Int32Range;
use envoy_types::pb::google::protobuf::{BoolValue, Duration, UInt32Value};
use envoy_types::util::pack_any;
use std::collections::BTreeMap;
use weir_api::MtlsMode;

use super::{cluster::ads, endpoint::socket_address, names, PortOutput, WeightedClusters};
use crate::protocol::Protocol;

/// Port iptables sends outbound traffic to.
pub const OUTBOUND_CAPTURE_PORT: u16 = 15001;
/// Port iptables sends inbound traffic to.
pub const INBOUND_CAPTURE_PORT: u16 = 15006;

/// How long the inspectors wait for a client's first bytes before the connection is
/// treated as TCP (a server-first protocol on an undeclared port waits this long once).
pub const DETECTION_TIMEOUT: Duration = Duration {
    seconds: 1,
    nanos: 0,
};

/// The explicit-mode listener.
pub fn explicit_outbound(port: u16) -> Listener {
    Listener {
        name: names::OUTBOUND_LISTENER.into(),
        address: Some(socket_address("127.0.0.1", port)),
        traffic_direction: TrafficDirection::Outbound as i32,
        filter_chains: vec![http_chain("outbound", names::EXPLICIT_ROUTE_CONFIG, None)],
        ..Default::default()
    }
}

/// The transparent-mode outbound listener: filter chains for every Service port in the
/// mesh, by port, by ClusterIP and by protocol (see the module docs).
pub fn transparent_outbound(by_port: &BTreeMap<u16, Vec<&PortOutput>>) -> Listener {
    let mut chains = Vec::new();
    let (mut sniffed, mut with_sni) = (Vec::new(), Vec::new());
    for (port, outs) in by_port {
        let port = *port;
        let route_config = names::port_route_config(port);
        let http_ips: Vec<&str> = outs
            .iter()
            .filter(|o| {
                matches!(
                    o.protocol,
                    Protocol::Http | Protocol::Http2 | Protocol::Grpc
                )
            })
            .filter_map(|o| o.cluster_ip.as_deref())
            .collect();
        if !http_ips.is_empty() {
            let matched = chain_match(port, &http_ips);
            chains.push(http_chain(
                &format!("outbound_{port}"),
                &route_config,
                Some(matched),
            ));
        }
        for out in outs {
            let (Some(ip), Some(tcp)) = (out.cluster_ip.as_deref(), &out.tcp) else {
                continue;
            };
            let at = format!("{port}_{ip}");
            if out.protocol == Protocol::Detect {
                let mut matched = chain_match(port, &[ip]);
                matched.application_protocols = vec!["http/1.1".into(), "h2c".into()];
                chains.push(http_chain(
                    &format!("outbound_{at}_http"),
                    &route_config,
                    Some(matched),
                ));
                sniffed.push(port);
            }
            for (i, (hosts, split)) in tcp.by_sni.iter().enumerate() {
                let mut matched = chain_match(port, &[ip]);
                matched.server_names = hosts.clone();
                chains.push(tcp_chain(
                    &format!("outbound_{at}_sni{i}"),
                    split,
                    Some(matched),
                ));
            }
            chains.push(tcp_chain(
                &format!("outbound_{at}"),
                &tcp.default,
                Some(chain_match(port, &[ip])),
            ));
            if out.protocol == Protocol::Tls {
                // A TLS client that reached the Service by another address still names it.
                let matched = FilterChainMatch {
                    destination_port: Some(UInt32Value {
                        value: u32::from(port),
                    }),
                    server_names: tcp.hostnames.clone(),
                    ..Default::default()
                };
                chains.push(tcp_chain(
                    &format!("outbound_{at}_by_name"),
                    &tcp.default,
                    Some(matched),
                ));
                with_sni.push(port);
            }
            if !tcp.by_sni.is_empty() {
                with_sni.push(port);
            }
        }
    }
    let mut listener_filters = vec![original_dst()];
    with_sni.sort_unstable();
    with_sni.dedup();
    sniffed.sort_unstable();
    sniffed.dedup();
    if !with_sni.is_empty() {
        listener_filters.push(inspector(
            "envoy.filters.listener.tls_inspector",
            pack_any(TlsInspector::default()),
            &with_sni,
        ));
    }
    if !sniffed.is_empty() {
        listener_filters.push(inspector(
            "envoy.filters.listener.http_inspector",
            pack_any(HttpInspector::default()),
            &sniffed,
        ));
    }
    let inspecting = listener_filters.len() > 1;
    Listener {
        name: names::OUTBOUND_LISTENER.into(),
        address: Some(socket_address("0.0.0.0", OUTBOUND_CAPTURE_PORT)),
        traffic_direction: TrafficDirection::Outbound as i32,
        listener_filters,
        listener_filters_timeout: inspecting.then_some(DETECTION_TIMEOUT),
        continue_on_listener_filters_timeout: inspecting,
        filter_chains: chains,
        default_filter_chain: Some(tcp_chain(
            "passthrough",
            &vec![(names::PASSTHROUGH_CLUSTER.to_string(), 100)],
            None,
        )),
        ..Default::default()
    }
}

/// A chain match on a destination port and exact addresses.
fn chain_match(port: u16, ips: &[&str]) -> FilterChainMatch {
    FilterChainMatch {
        destination_port: Some(UInt32Value {
            value: u32::from(port),
        }),
        prefix_ranges: ips
            .iter()
            .map(|ip| CidrRange {
                address_prefix: ip.to_string(),
                prefix_len: Some(UInt32Value {
                    value: if ip.contains(':') { 128 } else { 32 },
                }),
            })
            .collect(),
        ..Default::default()
    }
}

/// A listener filter that runs only for connections to `ports` (sorted, distinct).
fn inspector(
    name: &str,
    config: envoy_types::pb::google::protobuf::Any,
    ports: &[u16],
) -> ListenerFilter {
    // Consecutive ports as one range; Envoy wants an or_match of two rules or more.
    let mut ranges: Vec<Int32Range> = Vec::new();
    for port in ports.iter().map(|p| i32::from(*p)) {
        match ranges.last_mut() {
            Some(last) if last.end == port => last.end = port + 1,
            _ => ranges.push(Int32Range {
                start: port,
                end: port + 1,
            }),
        }
    }
    let mut rules: Vec<ListenerFilterChainMatchPredicate> = ranges
        .into_iter()
        .map(|range| ListenerFilterChainMatchPredicate {
            rule: Some(Rule::DestinationPortRange(range)),
        })
        .collect();
    let inspected = if rules.len() == 1 {
        rules.remove(0)
    } else {
        ListenerFilterChainMatchPredicate {
            rule: Some(Rule::OrMatch(MatchSet { rules })),
        }
    };
    ListenerFilter {
        name: name.into(),
        config_type: Some(ListenerFilterConfig::TypedConfig(config)),
        filter_disabled: Some(ListenerFilterChainMatchPredicate {
            rule: Some(Rule::NotMatch(Box::new(inspected))),
        }),
    }
}

/// The transparent-mode inbound listener for a proxy's mTLS mode:
///
/// ```text
/// mesh mTLS, ALPN weir-http -> terminate (peer in the trust domain) -> HTTP, the caller's
///                              SPIFFE ID in x-forwarded-client-cert -> the application
/// mesh mTLS, ALPN weir-tcp  -> terminate -> bytes to the application
/// anything else             -> PERMISSIVE, DISABLE: bytes to the application untouched
///                              STRICT: refused (no chain matches)
/// ```
pub fn transparent_inbound(mode: MtlsMode, trust_domain: &str) -> Listener {
    let passthrough = || {
        tcp_chain(
            "inbound",
            &vec![(names::INBOUND_PASSTHROUGH_CLUSTER.to_string(), 100)],
            None,
        )
    };
    if mode == MtlsMode::Disable {
        return Listener {
            name: names::INBOUND_LISTENER.into(),
            address: Some(socket_address("0.0.0.0", INBOUND_CAPTURE_PORT)),
            traffic_direction: TrafficDirection::Inbound as i32,
            listener_filters: vec![original_dst()],
            filter_chains: vec![passthrough()],
            ..Default::default()
        };
    }
    let mesh = |alpn: &str| FilterChainMatch {
        transport_protocol: "tls".into(),
        application_protocols: vec![alpn.to_string()],
        ..Default::default()
    };
    let peers = || {
        vec![super::cluster::uri_san(
            &crate::identity::SpiffeId::trust_domain_prefix(trust_domain),
            true,
        )]
    };
    let terminate = |alpn: &[&str]| {
        let tls = DownstreamTlsContext {
            common_tls_context: Some(super::cluster::mesh_tls(peers(), alpn)),
            require_client_certificate: Some(BoolValue { value: true }),
            ..Default::default()
        };
        Some(TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(tls))),
        })
    };
    let mut http = inbound_http_chain();
    http.filter_chain_match = Some(mesh(super::cluster::ALPN_HTTP));
    http.transport_socket = terminate(super::cluster::INBOUND_HTTP_ALPN);
    let mut tcp = tcp_chain(
        "inbound_mtls",
        &vec![(names::INBOUND_PASSTHROUGH_CLUSTER.to_string(), 100)],
        Some(mesh(super::cluster::ALPN_TCP)),
    );
    tcp.transport_socket = terminate(&[super::cluster::ALPN_TCP]);
    let mut chains = vec![http, tcp];
    if mode == MtlsMode::Permissive {
        chains.push(passthrough());
    }
    Listener {
        name: names::INBOUND_LISTENER.into(),
        address: Some(socket_address("0.0.0.0", INBOUND_CAPTURE_PORT)),
        traffic_direction: TrafficDirection::Inbound as i32,
        listener_filters: vec![
            original_dst(),
            ListenerFilter {
                name: "envoy.filters.listener.tls_inspector".into(),
                config_type: Some(ListenerFilterConfig::TypedConfig(pack_any(
                    TlsInspector::default(),
                ))),
                ..Default::default()
            },
        ],
        // A plaintext client of a server-first protocol sends nothing: after this long its
        // connection is taken as plaintext (PERMISSIVE) or closed (STRICT).
        listener_filters_timeout: Some(DETECTION_TIMEOUT),
        continue_on_listener_filters_timeout: true,
        filter_chains: chains,
        ..Default::default()
    }
}

/// Inbound HTTP after mTLS: the caller's SPIFFE ID goes to the application in
/// `x-forwarded-client-cert` (a header the caller sent is replaced, never trusted).
fn inbound_http_chain() -> FilterChain {
    use envoy_types::pb::envoy::config::route::v3::{
        route::Action, route_action::ClusterSpecifier, route_match::PathSpecifier, Route,
        RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
    };
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
        ForwardClientCertDetails, SetCurrentClientCertDetails,
    };
    let route = RouteConfiguration {
        name: "inbound".into(),
        virtual_hosts: vec![VirtualHost {
            name: "inbound".into(),
            domains: vec!["*".into()],
            routes: vec![Route {
                name: "inbound".into(),
                r#match: Some(RouteMatch {
                    path_specifier: Some(PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(Action::Route(RouteAction {
                    cluster_specifier: Some(ClusterSpecifier::Cluster(
                        names::INBOUND_PASSTHROUGH_HTTP_CLUSTER.into(),
                    )),
                    timeout: Some(Duration::default()),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let hcm = HttpConnectionManager {
        codec_type: CodecType::Auto as i32,
        stat_prefix: "inbound_http".into(),
        route_specifier: Some(RouteSpecifier::RouteConfig(route)),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(HttpFilterConfig::TypedConfig(pack_any(Router::default()))),
            ..Default::default()
        }],
        forward_client_cert_details: ForwardClientCertDetails::SanitizeSet as i32,
        set_current_client_cert_details: Some(SetCurrentClientCertDetails {
            uri: true,
            ..Default::default()
        }),
        upgrade_configs: vec![UpgradeConfig {
            upgrade_type: "websocket".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    FilterChain {
        name: "inbound_mtls_http".into(),
        filters: vec![Filter {
            name: "envoy.filters.network.http_connection_manager".into(),
            config_type: Some(FilterConfig::TypedConfig(pack_any(hcm))),
        }],
        ..Default::default()
    }
}

fn original_dst() -> ListenerFilter {
    ListenerFilter {
        name: "envoy.filters.listener.original_dst".into(),
        config_type: Some(ListenerFilterConfig::TypedConfig(pack_any(OriginalDst {}))),
        ..Default::default()
    }
}

fn http_chain(
    stat_prefix: &str,
    route_config: &str,
    matched: Option<FilterChainMatch>,
) -> FilterChain {
    let hcm = HttpConnectionManager {
        codec_type: CodecType::Auto as i32,
        stat_prefix: stat_prefix.into(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: route_config.into(),
        })),
        http_filters: super::shaping::outbound_http_filters()
            .into_iter()
            .chain([HttpFilter {
                name: "envoy.filters.http.router".into(),
                config_type: Some(HttpFilterConfig::TypedConfig(pack_any(Router::default()))),
                ..Default::default()
            }])
            .collect(),
        normalize_path: Some(BoolValue { value: true }),
        upgrade_configs: vec![UpgradeConfig {
            upgrade_type: "websocket".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    FilterChain {
        name: stat_prefix.into(),
        filter_chain_match: matched,
        filters: vec![Filter {
            name: "envoy.filters.network.http_connection_manager".into(),
            config_type: Some(FilterConfig::TypedConfig(pack_any(hcm))),
        }],
        ..Default::default()
    }
}

fn tcp_chain(
    stat_prefix: &str,
    split: &WeightedClusters,
    matched: Option<FilterChainMatch>,
) -> FilterChain {
    let cluster_specifier = match split.as_slice() {
        [(cluster, _)] => ClusterSpecifier::Cluster(cluster.clone()),
        _ => ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: split
                .iter()
                .map(|(name, weight)| ClusterWeight {
                    name: name.clone(),
                    weight: *weight,
                    ..Default::default()
                })
                .collect(),
        }),
    };
    let tcp = TcpProxy {
        stat_prefix: stat_prefix.into(),
        cluster_specifier: Some(cluster_specifier),
        ..Default::default()
    };
    FilterChain {
        name: stat_prefix.into(),
        filter_chain_match: matched,
        filters: vec![Filter {
            name: "envoy.filters.network.tcp_proxy".into(),
            config_type: Some(FilterConfig::TypedConfig(pack_any(tcp))),
        }],
        ..Default::default()
    }
}

/// The clusters and route tables a listener names.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ListenerReferences {
    /// Clusters of TCP proxy filters.
    pub clusters: Vec<String>,
    /// Route tables of HTTP connection managers (RDS).
    pub route_tables: Vec<String>,
}

/// Reads what an encoded listener names, from the bytes that are served (so the check
/// sees what Envoy will see).
pub fn references(
    listener: &crate::resources::Resource,
) -> Result<ListenerReferences, prost::DecodeError> {
    use prost::{Message, Name};
    let listener = Listener::decode(listener.body.value.as_slice())?;
    let mut out = ListenerReferences::default();
    let chains = listener
        .filter_chains
        .iter()
        .chain(listener.default_filter_chain.as_ref());
    for filter in chains.flat_map(|c| &c.filters) {
        let Some(FilterConfig::TypedConfig(any)) = &filter.config_type else {
            continue;
        };
        if any.type_url == HttpConnectionManager::type_url() {
            let hcm = HttpConnectionManager::decode(any.value.as_slice())?;
            if let Some(RouteSpecifier::Rds(rds)) = hcm.route_specifier {
                out.route_tables.push(rds.route_config_name);
            }
        } else if any.type_url == TcpProxy::type_url() {
            let tcp = TcpProxy::decode(any.value.as_slice())?;
            match tcp.cluster_specifier {
                Some(ClusterSpecifier::Cluster(name)) => out.clusters.push(name),
                Some(ClusterSpecifier::WeightedClusters(w)) => {
                    out.clusters.extend(w.clusters.into_iter().map(|c| c.name))
                }
                None => {}
            }
        }
    }
    Ok(out)
}
