//! Envoy bootstrap generation, shared by `weir-operator bootstrap` and the injector.
//!
//! The bootstrap carries the proxy's identity in node metadata ([`ProxyMeta`]); the xDS
//! server reads it back with [`ProxyMeta::from_node_metadata`] to choose the proxy's profile.
//! The xDS connection is plaintext gRPC for now; the identity issue swaps
//! [`xds_cluster`] for one with TLS and file-based call credentials.

use envoy_types::pb::google::protobuf::{value::Kind, Struct};
use serde_json::{json, Value};

use crate::mesh;
use crate::translate::{Capture, ProxyProfile};

/// Name of the static cluster that reaches the operator.
pub const XDS_CLUSTER: &str = "weir-xds";

/// Which ADS variant the proxy speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdsProtocol {
    /// Incremental xDS (the default).
    Delta,
    /// State of the world.
    Sotw,
}

/// Who a proxy is, as carried in its node metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyMeta {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// The pod's service account, when the bootstrap says (an authenticated stream takes
    /// it from the token instead).
    pub service_account: Option<String>,
    /// Capture mode.
    pub capture: Capture,
    /// The proxy's zone, for proxies outside Kubernetes (or to override); in a cluster the
    /// operator takes it from the pod's EndpointSlices.
    pub zone: Option<String>,
    /// Its bootstrap has the reports cluster (denials go to the operator).
    pub reports: bool,
}

const META_NAMESPACE: &str = "NAMESPACE";
const META_POD: &str = "POD_NAME";
const META_SERVICE_ACCOUNT: &str = "SERVICE_ACCOUNT";
const META_CAPTURE: &str = "CAPTURE_MODE";
const META_OUTBOUND_PORT: &str = "OUTBOUND_PORT";
const META_ZONE: &str = "ZONE";

impl ProxyMeta {
    /// The profile of the proxy, given what it accepts inbound.
    pub fn profile(&self, inbound: weir_api::MtlsMode) -> ProxyProfile {
        ProxyProfile::new(self.capture, inbound)
    }

    /// Reads the metadata written by [`bootstrap`]; says which key is missing or malformed.
    pub fn from_node_metadata(meta: Option<&Struct>) -> Result<ProxyMeta, String> {
        let get = |key: &str| -> Option<String> {
            match meta?.fields.get(key)?.kind.as_ref()? {
                Kind::StringValue(s) => Some(s.clone()),
                Kind::NumberValue(n) => Some(n.to_string()),
                _ => None,
            }
        };
        let required = |key: &str| {
            get(key).ok_or_else(|| {
                format!("node metadata has no {key}: generate the bootstrap with `weir-operator bootstrap` or the injector")
            })
        };
        let capture = match required(META_CAPTURE)?.as_str() {
            "transparent" => Capture::Transparent,
            "explicit" => {
                let port = required(META_OUTBOUND_PORT)?;
                let port = port.parse::<u16>().map_err(|_| {
                    format!("node metadata {META_OUTBOUND_PORT}={port:?} is not a port number")
                })?;
                Capture::Explicit { port }
            }
            other => {
                return Err(format!(
                    "node metadata {META_CAPTURE}={other:?}: expected explicit or transparent"
                ))
            }
        };
        Ok(ProxyMeta {
            namespace: required(META_NAMESPACE)?,
            pod: required(META_POD)?,
            service_account: get(META_SERVICE_ACCOUNT).filter(|s| !s.is_empty()),
            capture,
            zone: get(META_ZONE).filter(|z| !z.is_empty()),
            reports: get(mesh::REPORTS_META).as_deref() == Some("1"),
        })
    }
}

/// Everything a bootstrap depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapParams {
    /// Envoy node id, unique per proxy.
    pub node_id: String,
    /// The proxy's identity and capture mode.
    pub meta: ProxyMeta,
    /// The operator's xDS address, `host:port`.
    pub xds_address: String,
    /// ADS variant.
    pub protocol: XdsProtocol,
    /// Envoy admin port, bound to 127.0.0.1.
    pub admin_port: u16,
    /// Plaintext listeners of a sidecar (probes, Prometheus); none in local mode.
    pub sidecar: Option<SidecarListeners>,
    /// TLS to the operator and the token that proves who the proxy is; plaintext when
    /// `None` (local mode).
    pub xds_tls: Option<XdsTlsFiles>,
    /// What the pod chose for its telemetry (the mesh defaults otherwise).
    pub telemetry: ProxyTelemetry,
}

/// A pod's own telemetry choices, written into its bootstrap's runtime: the listeners
/// (from the operator) read these keys and fall back to the mesh defaults without them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyTelemetry {
    /// `weir.dev/access-log`.
    pub access_log: Option<crate::translate::telemetry::AccessLogMode>,
    /// `weir.dev/tracing-sampling`, in hundredths of a percent (Envoy's unit).
    pub tracing_sampling: Option<u32>,
}

impl ProxyTelemetry {
    /// The runtime keys and values.
    fn runtime(&self) -> serde_json::Map<String, Value> {
        let mut out = serde_json::Map::new();
        if let Some(mode) = self.access_log {
            let (all, errors) = mode.runtime_percents();
            out.insert(mesh::ACCESS_LOG_ALL_RUNTIME.into(), json!(all));
            out.insert(mesh::ACCESS_LOG_ERRORS_RUNTIME.into(), json!(errors));
        }
        if let Some(units) = self.tracing_sampling {
            out.insert(
                mesh::TRACING_SAMPLING_RUNTIME.into(),
                json!(units.min(10_000)),
            );
        }
        out
    }
}

/// Envoy's own statistics a sidecar keeps (everything else is never created, which is
/// most of the per-cluster statistics of a large mesh): the mesh's request and
/// connection metrics, server and xDS health, listener and connection-manager totals,
/// authorization (the RBAC filters' counters), and per cluster only what explains a failure (ejections, overflows, retries,
/// timeouts, connect failures, membership) and the upstream protocol in use.
fn stats_matcher() -> Value {
    let prefixes = [
        "weir.",
        "server.",
        "cluster_manager.",
        "listener_manager.",
        "control_plane.",
        "runtime.",
        "http.inbound_http.",
        "http.outbound",
        "tcp.",
        "listener.",
        "cluster.weir-",
        "sds.",
    ];
    let per_cluster = [
        "outlier_detection\\.ejections_active",
        "outlier_detection\\.ejections_enforced_total",
        "upstream_rq_retry",
        "upstream_rq_retry_overflow",
        "upstream_rq_retry_limit_exceeded",
        "upstream_rq_pending_overflow",
        "upstream_cx_overflow",
        "upstream_rq_timeout",
        "upstream_cx_connect_fail",
        "upstream_cx_active",
        "upstream_cx_http1_total",
        "upstream_cx_http2_total",
        "upstream_rq_active",
        "membership_healthy",
        "membership_total",
    ];
    let mut patterns: Vec<Value> = prefixes.iter().map(|p| json!({"prefix": p})).collect();
    // Connection authorization: the network RBAC filters of inbound ports.
    patterns.push(json!({"safe_regex": {"regex": "^inbound_[0-9]+\\.rbac\\..*"}}));
    patterns.push(
        json!({"safe_regex": {"regex": format!("^cluster\\..*\\.({})$", per_cluster.join("|"))}}),
    );
    json!({"inclusion_list": {"patterns": patterns}})
}

/// Where a proxy finds what it needs for an authenticated, encrypted xDS connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdsTlsFiles {
    /// The mesh root certificate(s) the operator's certificate is verified against.
    pub root_cert: String,
    /// The projected service account token (audience `weir`) sent as a bearer token; read
    /// again on every reconnect, so the kubelet's rotation is picked up.
    pub token: String,
}

/// The plaintext listeners a sidecar serves beside xDS-configured ones: kubelet probes
/// (which must keep working when inbound traffic requires mTLS) and Prometheus scraping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarListeners {
    /// Port of the probe listener (excluded from inbound capture).
    pub probe_port: u16,
    /// Port of the Prometheus listener (excluded from inbound capture).
    pub prometheus_port: u16,
    /// Application probes rewritten to the probe listener.
    pub probes: Vec<ProbeRoute>,
    /// Application gRPC probes, each on a port of its own.
    pub grpc_probes: Vec<GrpcProbeRoute>,
}

/// One application port probed over gRPC: the kubelet's health check (HTTP/2) on
/// `listen_port` is forwarded to `127.0.0.1:<app_port>` over HTTP/2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcProbeRoute {
    /// The sidecar port the rewritten probe targets (excluded from inbound capture).
    pub listen_port: u16,
    /// The application's gRPC port.
    pub app_port: u16,
}

/// One application HTTP probe served through the probe listener: `GET <path>` on the probe
/// port is forwarded to `127.0.0.1:<app_port><app_path>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeRoute {
    /// Path on the probe port, e.g. `/app-health/web/livez`.
    pub path: String,
    /// The application container's port.
    pub app_port: u16,
    /// The application's probe path, e.g. `/healthz`.
    pub app_path: String,
}

pub use crate::mesh::PROXY_READY_PATH;

/// Why parameters cannot make a bootstrap.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BootstrapError {
    /// The xDS address is not `host:port`.
    #[error(
        "xDS address {0:?} is not host:port (e.g. 127.0.0.1:15010 or weir.weir-system.svc:15010)"
    )]
    BadXdsAddress(String),
}

/// The bootstrap as JSON (Envoy accepts JSON and YAML alike).
pub fn bootstrap(params: &BootstrapParams) -> Result<Value, BootstrapError> {
    let (capture, outbound_port) = match params.meta.capture {
        Capture::Transparent => ("transparent", None),
        Capture::Explicit { port } => ("explicit", Some(port.to_string())),
    };
    let mut metadata = json!({
        META_NAMESPACE: params.meta.namespace,
        META_POD: params.meta.pod,
        META_CAPTURE: capture,
        // The bootstrap has the reports cluster: the operator may point access logs at it.
        (mesh::REPORTS_META): "1",
    });
    if let Some(sa) = &params.meta.service_account {
        metadata[META_SERVICE_ACCOUNT] = json!(sa);
    }
    if let Some(zone) = &params.meta.zone {
        metadata[META_ZONE] = json!(zone);
    }
    if let Some(port) = outbound_port {
        metadata[META_OUTBOUND_PORT] = json!(port);
    }
    let api_type = match params.protocol {
        XdsProtocol::Delta => "DELTA_GRPC",
        XdsProtocol::Sotw => "GRPC",
    };
    Ok(json!({
        "node": {
            "id": params.node_id,
            "cluster": params.meta.namespace,
            "metadata": metadata,
        },
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": params.admin_port}},
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": api_type,
                "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [xds_service(params)?],
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": static_resources(params)?,
        // Envoy's load reports (requests and connections per cluster) reach the operator,
        // which answers only a scoped proxy's stream, to learn what it no longer uses.
        "cluster_manager": {"load_stats_config": {
            "api_type": "GRPC",
            "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": mesh::REPORTS_CLUSTER}}],
        }},
        "stats_config": {
            "stats_matcher": stats_matcher(),
            // Request and response sizes: decades from 1 byte to 10 MB.
            "histogram_bucket_settings": [{
                // The whole name, labels included (`weir.request_bytes.reporter.source...`).
                "match": {"safe_regex": {"regex": "^weir\\.(request|response)_bytes(\\..*)?$"}},
                "buckets": [1, 10, 100, 1000, 10_000, 100_000, 1_000_000, 10_000_000],
            }],
        },
        // Authorization's peer checks may use regular expressions larger than RE2's default
        // program size limit (100) when deny rules carve identities out of an allowed
        // namespace; the operator writes them, bounded by the CRD's rule limits.
        "layered_runtime": {"layers": [
            {"name": "static", "static_layer": static_runtime(params)},
            {"name": "admin", "admin_layer": {}},
        ]},
    }))
}

fn static_runtime(params: &BootstrapParams) -> Value {
    let mut layer = params.telemetry.runtime();
    layer.insert("re2.max_program_size.error_level".into(), json!(100_000));
    Value::Object(layer)
}

/// How Envoy reaches the operator: plaintext through the static cluster, or with TLS
/// (verified against the mesh root) and the service account token as call credentials.
fn xds_service(params: &BootstrapParams) -> Result<Value, BootstrapError> {
    let Some(tls) = &params.xds_tls else {
        return Ok(json!({
            "envoy_grpc": {
                "cluster_name": XDS_CLUSTER,
                // Reconnect quickly when the operator restarts or rolls.
                "retry_policy": {"retry_back_off": {"base_interval": "0.2s", "max_interval": "2s"}},
            },
        }));
    };
    // Checked like the plaintext address, so a bad one fails the same way.
    xds_cluster(&params.xds_address)?;
    Ok(json!({
        "google_grpc": {
            "target_uri": params.xds_address,
            "stat_prefix": XDS_CLUSTER,
            "channel_credentials": {"ssl_credentials": {"root_certs": {"filename": tls.root_cert}}},
            "call_credentials": [{"from_plugin": {
                "name": mesh::FILE_BASED_METADATA,
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.config.grpc_credential.v3.FileBasedMetadataConfig",
                    "secret_data": {"filename": tls.token},
                    "header_key": "authorization",
                    "header_prefix": "Bearer ",
                },
            }}],
            "credentials_factory_name": mesh::FILE_BASED_METADATA,
        },
        "retry_policy": {"retry_back_off": {"base_interval": "0.2s", "max_interval": "2s"}},
    }))
}

fn static_resources(params: &BootstrapParams) -> Result<Value, BootstrapError> {
    let mut clusters = Vec::new();
    if params.xds_tls.is_none() {
        clusters.push(xds_cluster(&params.xds_address)?);
    }
    clusters.push(reports_cluster(params)?);
    let mut listeners = Vec::new();
    if let Some(sidecar) = &params.sidecar {
        clusters.push(static_cluster(ADMIN_CLUSTER, params.admin_port));
        let mut routes = vec![route(PROXY_READY_PATH, ADMIN_CLUSTER, "/ready")];
        let mut ports: Vec<u16> = sidecar.probes.iter().map(|p| p.app_port).collect();
        ports.sort_unstable();
        ports.dedup();
        clusters.extend(
            ports
                .iter()
                .map(|port| static_cluster(&format!("probe-{port}"), *port)),
        );
        routes.extend(
            sidecar
                .probes
                .iter()
                .map(|p| route(&p.path, &format!("probe-{}", p.app_port), &p.app_path)),
        );
        listeners.push(http_listener("probes", sidecar.probe_port, routes));
        for grpc in &sidecar.grpc_probes {
            let cluster = format!("probe-grpc-{}", grpc.app_port);
            let mut upstream = static_cluster(&cluster, grpc.app_port);
            upstream["typed_extension_protocol_options"] = json!({
                (mesh::HTTP_PROTOCOL_OPTIONS): {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}},
                },
            });
            clusters.push(upstream);
            let route =
                json!({"match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "0s"}});
            listeners.push(http_listener(
                &format!("probes-grpc-{}", grpc.app_port),
                grpc.listen_port,
                vec![route],
            ));
        }
        // Only the statistics something updated: a sidecar that never called most of the
        // mesh's Services exports none of their clusters' counters.
        let used_only = format!("{}?usedonly", mesh::PROMETHEUS_PATH);
        listeners.push(http_listener(
            "prometheus",
            sidecar.prometheus_port,
            vec![route(mesh::PROMETHEUS_PATH, ADMIN_CLUSTER, &used_only)],
        ));
    }
    Ok(json!({"clusters": clusters, "listeners": listeners}))
}

/// Reaches Envoy's own admin interface (for readiness and metrics).
const ADMIN_CLUSTER: &str = "weir-admin";

fn static_cluster(name: &str, port: u16) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": "127.0.0.1", "port_value": port,
            }}}}]}],
        },
    })
}

fn route(path: &str, cluster: &str, rewrite: &str) -> Value {
    json!({"match": {"path": path}, "route": {"cluster": cluster, "prefix_rewrite": rewrite}})
}

fn http_listener(name: &str, port: u16, routes: Vec<Value>) -> Value {
    json!({
        "name": name,
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": mesh::HTTP_CONNECTION_MANAGER,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "route_config": {"virtual_hosts": [{"name": name, "domains": ["*"], "routes": routes}]},
                "http_filters": [{
                    "name": mesh::ROUTER_FILTER,
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                }],
            },
        }]}],
    })
}

/// The bootstrap as YAML text.
pub fn bootstrap_yaml(params: &BootstrapParams) -> Result<String, BootstrapError> {
    let value = bootstrap(params)?;
    Ok(crate::yaml::to_string(&value))
}

/// The static cluster that reaches the operator over HTTP/2.
pub fn xds_cluster(address: &str) -> Result<Value, BootstrapError> {
    operator_cluster(XDS_CLUSTER, address)
}

/// The static cluster sidecars report to the operator over (denials, Envoy's access log
/// service): plaintext like xDS in local mode, else TLS verified against the mesh root.
/// The operator's gRPC port serves both.
fn reports_cluster(params: &BootstrapParams) -> Result<Value, BootstrapError> {
    let mut cluster = operator_cluster(mesh::REPORTS_CLUSTER, &params.xds_address)?;
    if let Some(tls) = &params.xds_tls {
        let host = params
            .xds_address
            .rsplit_once(':')
            .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
            .unwrap_or_default();
        cluster["transport_socket"] = json!({
            "name": mesh::TLS_TRANSPORT_SOCKET,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": host,
                "common_tls_context": {
                    "alpn_protocols": ["h2"],
                    "validation_context": {"trusted_ca": {"filename": tls.root_cert}},
                },
            },
        });
    }
    Ok(cluster)
}

fn operator_cluster(name: &str, address: &str) -> Result<Value, BootstrapError> {
    let bad = || BootstrapError::BadXdsAddress(address.to_string());
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() {
        return Err(bad());
    }
    let discovery = if host.parse::<std::net::IpAddr>().is_ok() {
        "STATIC"
    } else {
        "STRICT_DNS"
    };
    Ok(json!({
        "name": name,
        "type": discovery,
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            (mesh::HTTP_PROTOCOL_OPTIONS): {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {
                    "http2_protocol_options": {
                        "connection_keepalive": {"interval": "30s", "timeout": "5s"},
                    },
                },
            },
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": host, "port_value": port,
            }}}}]}],
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::Value as PbValue;

    fn params(capture: Capture) -> BootstrapParams {
        BootstrapParams {
            node_id: "reviews-v1-abc.default".into(),
            meta: ProxyMeta {
                namespace: "default".into(),
                pod: "reviews-v1-abc".into(),
                service_account: Some("reviews".into()),
                capture,
                zone: None,
                reports: true,
            },
            xds_address: "127.0.0.1:15010".into(),
            protocol: XdsProtocol::Delta,
            admin_port: 15000,
            sidecar: None,
            xds_tls: None,
            telemetry: Default::default(),
        }
    }

    #[test]
    fn metadata_round_trips_through_the_node_struct() {
        for capture in [Capture::Transparent, Capture::Explicit { port: 15001 }] {
            let json = bootstrap(&params(capture)).unwrap();
            let fields = json["node"]["metadata"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        PbValue {
                            kind: Some(Kind::StringValue(v.as_str().unwrap().to_string())),
                        },
                    )
                })
                .collect();
            let meta = ProxyMeta::from_node_metadata(Some(&Struct { fields })).unwrap();
            assert_eq!(meta, params(capture).meta);
        }
    }

    #[test]
    fn missing_metadata_names_the_key() {
        let err = ProxyMeta::from_node_metadata(None).unwrap_err();
        assert!(err.contains("CAPTURE_MODE"), "{err}");
    }

    #[test]
    fn dns_names_use_strict_dns_and_ips_static() {
        assert_eq!(xds_cluster("10.0.0.1:15010").unwrap()["type"], "STATIC");
        assert_eq!(
            xds_cluster("weir.weir-system.svc:15010").unwrap()["type"],
            "STRICT_DNS"
        );
        assert_eq!(xds_cluster("[::1]:15010").unwrap()["type"], "STATIC");
        assert!(xds_cluster("no-port").is_err());
        assert!(xds_cluster(":15010").is_err());
    }

    #[test]
    fn sotw_uses_grpc_api_type() {
        let mut p = params(Capture::Transparent);
        p.protocol = XdsProtocol::Sotw;
        assert_eq!(
            bootstrap(&p).unwrap()["dynamic_resources"]["ads_config"]["api_type"],
            "GRPC"
        );
    }
}
