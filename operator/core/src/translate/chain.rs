//! Filter chains, one builder per kind: every HTTP connection manager and every TCP proxy
//! of every listener is made here, so what applies to all of them (authorization, access
//! logs, stats, tracing) attaches in one place.
//!
//! ```text
//! HttpChain::new(stat prefix, routes: RDS name | inline table)
//!   .filter(..)* (before the router)  .normalize_path()  .forward_client_identity()
//!   .telemetry(metrics + JSON log, tracing)  (see translate::telemetry)
//!   --build(name, match, TLS)--> FilterChain [http_connection_manager]
//! TcpChain::new(stat prefix, weighted clusters)
//!   .filters(..)* (before the proxy)  .connect_after_handshake()  .telemetry(logs)
//!   --build(name, match, TLS)--> FilterChain [.., tcp_proxy]
//! closing_chain(name, match) --> FilterChain [direct_response]: closes at once
//! references(listener) <-- what the built chains name (clusters, route tables)
//! ```

use envoy_types::pb::envoy::config::accesslog::v3::AccessLog;
use envoy_types::pb::envoy::config::core::v3::TransportSocket;
use envoy_types::pb::envoy::config::listener::v3::{
    filter::ConfigType as FilterConfig, Filter, FilterChain, FilterChainMatch, Listener,
};
use envoy_types::pb::envoy::config::route::v3::{
    route::Action, route_action::ClusterSpecifier as RouteCluster, route_match::PathSpecifier,
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::direct_response::v3::Config as DirectResponse;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::{
        CodecType, ForwardClientCertDetails, PathWithEscapedSlashesAction, RouteSpecifier,
        SetCurrentClientCertDetails, Tracing, UpgradeConfig,
    },
    http_filter::ConfigType as HttpFilterConfig,
    HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    tcp_proxy::{
        weighted_cluster::ClusterWeight, ClusterSpecifier, TcpAccessLogOptions, WeightedCluster,
    },
    TcpProxy, UpstreamConnectMode,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;

use super::pb;
use super::port::WeightedClusters;

use crate::mesh::{DIRECT_RESPONSE_FILTER, HTTP_CONNECTION_MANAGER, ROUTER_FILTER, TCP_PROXY};

/// Where a connection manager's routes come from.
#[derive(Debug, Clone)]
pub enum Routes {
    /// The route table of this name, over ADS.
    Rds(String),
    /// A table given whole.
    Inline(Box<RouteConfiguration>),
}

/// A virtual host `name` that sends every request, whatever its Host, to `cluster`,
/// without a timeout.
pub fn catch_all_virtual_host(name: &str, cluster: &str) -> VirtualHost {
    VirtualHost {
        name: name.into(),
        domains: vec!["*".into()],
        routes: vec![Route {
            name: name.into(),
            r#match: Some(RouteMatch {
                path_specifier: Some(PathSpecifier::Prefix("/".into())),
                ..Default::default()
            }),
            action: Some(Action::Route(RouteAction {
                cluster_specifier: Some(RouteCluster::Cluster(cluster.into())),
                timeout: Some(pb::NO_TIMEOUT),
                ..Default::default()
            })),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// An HTTP filter with a typed config.
pub fn http_filter(name: &str, config: Any) -> HttpFilter {
    HttpFilter {
        name: name.into(),
        config_type: Some(HttpFilterConfig::TypedConfig(config)),
        ..Default::default()
    }
}

/// Builds the filter chain of one HTTP connection manager.
#[derive(Debug, Clone)]
pub struct HttpChain {
    hcm: HttpConnectionManager,
}

impl HttpChain {
    /// A connection manager that accepts HTTP/1.1 and HTTP/2 (and WebSocket upgrades) and
    /// routes by `routes`.
    pub fn new(stat_prefix: &str, routes: Routes) -> HttpChain {
        let route_specifier = match routes {
            Routes::Rds(name) => RouteSpecifier::Rds(Rds {
                config_source: Some(pb::ads()),
                route_config_name: name,
            }),
            Routes::Inline(table) => RouteSpecifier::RouteConfig(*table),
        };
        HttpChain {
            hcm: HttpConnectionManager {
                codec_type: CodecType::Auto as i32,
                stat_prefix: stat_prefix.into(),
                route_specifier: Some(route_specifier),
                upgrade_configs: vec![UpgradeConfig {
                    upgrade_type: "websocket".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
        }
    }

    /// Scoped proxies: the on-demand filter first (every later filter reads the route, so
    /// the virtual host must be there before them), fetching missing virtual hosts over
    /// VHDS and missing clusters over ODCDS, both on the ADS stream.
    pub fn on_demand(mut self) -> HttpChain {
        use envoy_types::pb::envoy::extensions::filters::http::on_demand::v3::{
            OnDemand, OnDemandCds,
        };
        let config = OnDemand {
            odcds: Some(OnDemandCds {
                source: Some(pb::ads()),
                timeout: Some(pb::duration(crate::mesh::ON_DEMAND_TIMEOUT)),
                ..Default::default()
            }),
        };
        self.hcm.http_filters.insert(
            0,
            http_filter(crate::mesh::ON_DEMAND_FILTER, pack_any(config)),
        );
        self
    }

    /// Adds HTTP filters, in order, before the router.
    pub fn filters(mut self, filters: impl IntoIterator<Item = HttpFilter>) -> HttpChain {
        self.hcm.http_filters.extend(filters);
        self
    }

    /// Normalizes paths (RFC 3986) before routing, so matches see one spelling.
    pub fn normalize_path(mut self) -> HttpChain {
        self.hcm.normalize_path = Some(pb::boolv(true));
        self
    }

    /// Adds access logs.
    pub fn access_logs(mut self, logs: impl IntoIterator<Item = AccessLog>) -> HttpChain {
        self.hcm.access_log.extend(logs);
        self
    }

    /// Attaches telemetry: access logs (metrics, the JSON log) and tracing, request ids
    /// kept from the caller when present (they join a request's log lines across
    /// sidecars).
    pub fn telemetry(mut self, logs: Vec<AccessLog>, tracing: Option<Tracing>) -> HttpChain {
        self.hcm.access_log.extend(logs);
        self.hcm.tracing = tracing;
        self
    }

    /// Merges adjacent slashes (`//admin` is `/admin`) and unescapes escaped ones
    /// (`/admin%2Fusers` is `/admin/users`) before routing and authorization, so rules see
    /// the path the application acts on.
    pub fn merge_slashes(mut self) -> HttpChain {
        self.hcm.merge_slashes = true;
        self.hcm.path_with_escaped_slashes_action =
            PathWithEscapedSlashesAction::UnescapeAndForward as i32;
        self
    }

    /// Passes the verified caller's identity (URI SAN) to the application in
    /// `x-forwarded-client-cert`, replacing whatever the caller sent.
    pub fn forward_client_identity(mut self) -> HttpChain {
        self.hcm.forward_client_cert_details = ForwardClientCertDetails::SanitizeSet as i32;
        self.hcm.set_current_client_cert_details = Some(SetCurrentClientCertDetails {
            uri: true,
            ..Default::default()
        });
        self
    }

    /// The filter chain, with the router last.
    pub fn build(
        mut self,
        name: &str,
        matched: Option<FilterChainMatch>,
        tls: Option<TransportSocket>,
    ) -> FilterChain {
        self.hcm
            .http_filters
            .push(http_filter(ROUTER_FILTER, pack_any(Router::default())));
        chain(
            name,
            matched,
            tls,
            HTTP_CONNECTION_MANAGER,
            pack_any(self.hcm),
        )
    }
}

/// Builds the filter chain of one TCP proxy.
#[derive(Debug, Clone)]
pub struct TcpChain {
    filters: Vec<Filter>,
    proxy: TcpProxy,
}

impl TcpChain {
    /// A proxy that splits connections over `split` (one cluster: all of them).
    pub fn new(stat_prefix: &str, split: &WeightedClusters) -> TcpChain {
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
        TcpChain {
            filters: Vec::new(),
            proxy: TcpProxy {
                stat_prefix: stat_prefix.into(),
                cluster_specifier: Some(cluster_specifier),
                ..Default::default()
            },
        }
    }

    /// Adds network filters, in order, before the proxy.
    pub fn filters(mut self, filters: impl IntoIterator<Item = Filter>) -> TcpChain {
        self.filters.extend(filters);
        self
    }

    /// Adds access logs.
    pub fn access_logs(mut self, logs: impl IntoIterator<Item = AccessLog>) -> TcpChain {
        self.proxy.access_log.extend(logs);
        self
    }

    /// Attaches telemetry: access logs (metrics, the JSON log), one entry flushed when the
    /// upstream connection opens (the opened counter) and one when it closes.
    pub fn telemetry(mut self, logs: Vec<AccessLog>) -> TcpChain {
        self.proxy.access_log.extend(logs);
        self.proxy.access_log_options = Some(TcpAccessLogOptions {
            flush_access_log_on_connected: true,
            ..Default::default()
        });
        self
    }

    /// Opens the upstream connection only once the downstream TLS handshake completed, so a
    /// caller the handshake refuses never causes one (no byte reaches the application, and
    /// none of a server-first application's reaches the caller).
    pub fn connect_after_handshake(mut self) -> TcpChain {
        self.proxy.upstream_connect_mode = UpstreamConnectMode::OnDownstreamTlsHandshake as i32;
        self.proxy.max_early_data_bytes = Some(pb::u32v(0));
        self
    }

    /// Scoped proxies: a cluster the proxy does not hold is fetched on demand (ODCDS over
    /// the ADS stream) before the connection goes on.
    pub fn on_demand(mut self) -> TcpChain {
        use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::OnDemand;
        self.proxy.on_demand = Some(OnDemand {
            odcds_config: Some(pb::ads()),
            timeout: Some(pb::duration(crate::mesh::ON_DEMAND_TIMEOUT)),
            ..Default::default()
        });
        self
    }

    /// A proxy to one cluster.
    pub fn to(stat_prefix: &str, cluster: &str) -> TcpChain {
        TcpChain::new(stat_prefix, &vec![(cluster.to_string(), 100)])
    }

    /// The filter chain.
    pub fn build(
        self,
        name: &str,
        matched: Option<FilterChainMatch>,
        tls: Option<TransportSocket>,
    ) -> FilterChain {
        let mut filters = self.filters;
        filters.push(network_filter(TCP_PROXY, pack_any(self.proxy)));
        FilterChain {
            name: name.into(),
            filter_chain_match: matched,
            filters,
            transport_socket: tls,
            ..Default::default()
        }
    }
}

/// A chain that closes every connection it gets, before reading or sending a byte (what
/// authorization makes of a port no caller of that kind may reach).
pub fn closing_chain(name: &str, matched: Option<FilterChainMatch>) -> FilterChain {
    chain(
        name,
        matched,
        None,
        DIRECT_RESPONSE_FILTER,
        pack_any(DirectResponse::default()),
    )
}

/// A network filter with a typed config.
pub fn network_filter(name: &str, config: Any) -> Filter {
    Filter {
        name: name.into(),
        config_type: Some(FilterConfig::TypedConfig(config)),
    }
}

fn chain(
    name: &str,
    matched: Option<FilterChainMatch>,
    tls: Option<TransportSocket>,
    filter: &str,
    config: Any,
) -> FilterChain {
    FilterChain {
        name: name.into(),
        filter_chain_match: matched,
        filters: vec![network_filter(filter, config)],
        transport_socket: tls,
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
