//! Listeners for the two capture modes.
//!
//! - explicit: one listener on 127.0.0.1:<port> that takes plain HTTP and routes by Host to
//!   any Service in the mesh (local mode, no iptables).
//! - transparent: iptables sends outbound TCP to 15001 and inbound to 15006. The outbound
//!   listener picks a filter chain by original destination port (one route table per port);
//!   unknown ports pass through untouched. The inbound listener hands connections to the
//!   local application at their original destination.

use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::{
    filter::ConfigType as FilterConfig, listener_filter::ConfigType as ListenerFilterConfig,
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::{CodecType, RouteSpecifier},
    http_filter::ConfigType as HttpFilterConfig,
    HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    tcp_proxy::ClusterSpecifier, TcpProxy,
};
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};
use envoy_types::util::pack_any;

use super::{cluster::ads, endpoint::socket_address, names};

/// Port iptables sends outbound traffic to.
pub const OUTBOUND_CAPTURE_PORT: u16 = 15001;
/// Port iptables sends inbound traffic to.
pub const INBOUND_CAPTURE_PORT: u16 = 15006;

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

/// The transparent-mode outbound listener, with one HTTP chain per Service port in the mesh.
pub fn transparent_outbound(ports: &[u16]) -> Listener {
    Listener {
        name: names::OUTBOUND_LISTENER.into(),
        address: Some(socket_address("0.0.0.0", OUTBOUND_CAPTURE_PORT)),
        traffic_direction: TrafficDirection::Outbound as i32,
        listener_filters: vec![original_dst()],
        filter_chains: ports
            .iter()
            .map(|p| {
                http_chain(
                    &format!("outbound_{p}"),
                    &names::port_route_config(*p),
                    Some(*p),
                )
            })
            .collect(),
        default_filter_chain: Some(tcp_chain("passthrough", names::PASSTHROUGH_CLUSTER)),
        ..Default::default()
    }
}

/// The transparent-mode inbound listener: to the application at the original destination.
pub fn transparent_inbound() -> Listener {
    Listener {
        name: names::INBOUND_LISTENER.into(),
        address: Some(socket_address("0.0.0.0", INBOUND_CAPTURE_PORT)),
        traffic_direction: TrafficDirection::Inbound as i32,
        listener_filters: vec![original_dst()],
        filter_chains: vec![tcp_chain("inbound", names::INBOUND_PASSTHROUGH_CLUSTER)],
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

fn http_chain(stat_prefix: &str, route_config: &str, port: Option<u16>) -> FilterChain {
    let hcm = HttpConnectionManager {
        codec_type: CodecType::Auto as i32,
        stat_prefix: stat_prefix.into(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: route_config.into(),
        })),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(HttpFilterConfig::TypedConfig(pack_any(Router::default()))),
            ..Default::default()
        }],
        normalize_path: Some(BoolValue { value: true }),
        ..Default::default()
    };
    FilterChain {
        name: stat_prefix.into(),
        filter_chain_match: port.map(|p| FilterChainMatch {
            destination_port: Some(UInt32Value {
                value: u32::from(p),
            }),
            ..Default::default()
        }),
        filters: vec![Filter {
            name: "envoy.filters.network.http_connection_manager".into(),
            config_type: Some(FilterConfig::TypedConfig(pack_any(hcm))),
        }],
        ..Default::default()
    }
}

fn tcp_chain(stat_prefix: &str, cluster: &str) -> FilterChain {
    let tcp = TcpProxy {
        stat_prefix: stat_prefix.into(),
        cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.into())),
        ..Default::default()
    };
    FilterChain {
        name: stat_prefix.into(),
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
