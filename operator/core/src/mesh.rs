//! The mesh's fixed names and numbers, defined once: the sidecar's ports, the keys of the
//! labels and annotations users write, the names of the objects the operator keeps, the
//! identity defaults, and the Envoy extension names the translator and the bootstrap write.
//!
//! Everything that has to agree between the operator, the injector, `weir-init`, the tests
//! and Envoy reads it from here. The one exception is the API crate (crds/), which does not
//! depend on core: the defaults it writes into the CRD schema are checked against these by a
//! test in this module.

use std::ops::RangeInclusive;
use std::time::Duration;

// Sidecar ports and paths.

/// Where iptables redirects a pod's outbound TCP traffic (Envoy's outbound listener).
pub const OUTBOUND_CAPTURE_PORT: u16 = 15001;
/// Where iptables redirects a pod's inbound TCP traffic (Envoy's inbound listener).
pub const INBOUND_CAPTURE_PORT: u16 = 15006;
/// The source address of the sidecar's connections to its application (inbound): the
/// capture rules let loopback traffic from it through, so that a call that comes back to
/// the pod's own address reaches the application after the inbound listener.
pub const INBOUND_SOURCE_ADDRESS: &str = "127.0.0.6";
/// Envoy's admin port, on 127.0.0.1 only.
pub const ENVOY_ADMIN_PORT: u16 = 15000;
/// Plaintext port on which the sidecar serves its readiness and the application's rewritten
/// HTTP probes; never captured.
pub const PROBE_PORT: u16 = 15021;
/// Ports on which the sidecar serves rewritten gRPC probes, one per application port probed
/// (the kubelet's gRPC health check carries no path to tell two of them apart); never
/// captured.
pub const GRPC_PROBE_PORTS: RangeInclusive<u16> = 15030..=15039;
/// The sidecar's Prometheus port; never captured.
pub const PROMETHEUS_PORT: u16 = 15090;
/// The path of the sidecar's Prometheus metrics (Envoy's own admin path, served on
/// [`PROMETHEUS_PORT`]).
pub const PROMETHEUS_PATH: &str = "/stats/prometheus";
/// The sidecar's readiness path on [`PROBE_PORT`].
pub const PROXY_READY_PATH: &str = "/healthz/ready";
/// Envoy's uid and gid in the sidecar: its own traffic is never captured (it would loop).
pub const PROXY_UID: u32 = 1337;

// The control plane's ports.

/// The operator's xDS (ADS over gRPC) port.
pub const XDS_PORT: u16 = 15010;
/// The operator's admin HTTP port (probes, metrics, status). The same number as the
/// sidecar's [`PROMETHEUS_PORT`], on another process.
pub const OPERATOR_ADMIN_PORT: u16 = 15090;

// Labels and annotations.

/// Prefix of every Weir label and annotation key.
pub const KEY_PREFIX: &str = "weir.dev/";
/// Namespace label (`enabled`) and pod annotation (`true`/`false`) that opt into or out of
/// sidecar injection.
pub const INJECT_KEY: &str = "weir.dev/inject";
/// Annotation the injector puts on every pod it injected: the version that injected it.
pub const INJECTED_ANNOTATION: &str = "weir.dev/injected";
/// Pod annotation (or namespace label) that overrides the mesh's mTLS mode.
pub const MTLS_MODE_KEY: &str = "weir.dev/mtls-mode";
/// Namespace label and pod annotation overriding the mesh's default authorization
/// (`AllowAll`, `AllowAuthenticated`, `Deny`).
pub const DEFAULT_AUTHORIZATION_KEY: &str = "weir.dev/default-authorization";
/// Pod annotation naming Services a scoped proxy holds from the start (`name` in the pod's
/// namespace or `name.namespace`, comma-separated): a hint that pre-warms, never needed for
/// a call to work.
pub const DEPENDENCIES_KEY: &str = "weir.dev/dependencies";
/// Pod annotation: the proxy's CPU request.
pub const PROXY_CPU_ANNOTATION: &str = "weir.dev/proxy-cpu";
/// Pod annotation: the proxy's memory request.
pub const PROXY_MEMORY_ANNOTATION: &str = "weir.dev/proxy-memory";
/// Pod annotation: the proxy's CPU limit.
pub const PROXY_CPU_LIMIT_ANNOTATION: &str = "weir.dev/proxy-cpu-limit";
/// Pod annotation: the proxy's memory limit.
pub const PROXY_MEMORY_LIMIT_ANNOTATION: &str = "weir.dev/proxy-memory-limit";
/// Pod annotation: Envoy's log level.
pub const LOG_LEVEL_ANNOTATION: &str = "weir.dev/log-level";
/// Pod annotation: Envoy's worker threads (0: one per core).
pub const CONCURRENCY_ANNOTATION: &str = "weir.dev/concurrency";
/// Pod annotation: inbound ports not captured.
pub const EXCLUDE_INBOUND_PORTS_ANNOTATION: &str = "weir.dev/exclude-inbound-ports";
/// Pod annotation: outbound destination ports not captured.
pub const EXCLUDE_OUTBOUND_PORTS_ANNOTATION: &str = "weir.dev/exclude-outbound-ports";
/// Pod annotation: outbound destination CIDRs not captured.
pub const EXCLUDE_OUTBOUND_CIDRS_ANNOTATION: &str = "weir.dev/exclude-outbound-cidrs";
/// Pod annotation: which requests the sidecar logs, `all`, `errors` or `off`.
pub const ACCESS_LOG_ANNOTATION: &str = "weir.dev/access-log";
/// Pod annotation: the percentage of requests the sidecar starts traces for.
pub const TRACING_SAMPLING_ANNOTATION: &str = "weir.dev/tracing-sampling";
/// The pod annotations the injector reads or writes.
pub const INJECTOR_ANNOTATIONS: [&str; 13] = [
    INJECT_KEY,
    INJECTED_ANNOTATION,
    PROXY_CPU_ANNOTATION,
    PROXY_MEMORY_ANNOTATION,
    PROXY_CPU_LIMIT_ANNOTATION,
    PROXY_MEMORY_LIMIT_ANNOTATION,
    LOG_LEVEL_ANNOTATION,
    CONCURRENCY_ANNOTATION,
    EXCLUDE_INBOUND_PORTS_ANNOTATION,
    EXCLUDE_OUTBOUND_PORTS_ANNOTATION,
    EXCLUDE_OUTBOUND_CIDRS_ANNOTATION,
    ACCESS_LOG_ANNOTATION,
    TRACING_SAMPLING_ANNOTATION,
];

/// Pod annotations the operator reads (the injector accepts them without a warning).
pub const OPERATOR_ANNOTATIONS: [&str; 3] =
    [MTLS_MODE_KEY, DEFAULT_AUTHORIZATION_KEY, DEPENDENCIES_KEY];

// Telemetry: what the injector gives the proxy and the translator's config reads.

/// Sidecar environment: the workload (the pod's owner as users name it).
pub const WORKLOAD_ENV: &str = "WEIR_WORKLOAD";
/// Sidecar environment: the pod's namespace.
pub const WORKLOAD_NAMESPACE_ENV: &str = "WEIR_NAMESPACE";
/// Sidecar environment read by Envoy's OpenTelemetry resource detector (`service.name`).
pub const OTEL_RESOURCE_ATTRIBUTES_ENV: &str = "OTEL_RESOURCE_ATTRIBUTES";
/// Runtime key (percent, 0 or 100) a pod's bootstrap sets to log every request.
pub const ACCESS_LOG_ALL_RUNTIME: &str = "weir.access_log.all";
/// Runtime key (percent, 0 or 100) a pod's bootstrap sets to log failed requests.
pub const ACCESS_LOG_ERRORS_RUNTIME: &str = "weir.access_log.errors";
/// Envoy's runtime key for the share of requests traced, in hundredths of a percent.
pub const TRACING_SAMPLING_RUNTIME: &str = "tracing.random_sampling";
/// The scope of the request and connection metrics (Envoy prefixes `envoy_` in its
/// Prometheus output; the shipped scrape configuration renames `envoy_weir_*` to `weir_*`).
pub const METRICS_SCOPE: &str = "weir";
/// Request header with the calling workload, set by the caller's sidecar (trusted only
/// over mesh mTLS).
pub const SOURCE_WORKLOAD_HEADER: &str = "x-weir-source-workload";
/// Request header with the calling workload's namespace (as above).
pub const SOURCE_NAMESPACE_HEADER: &str = "x-weir-source-namespace";
/// Metadata namespace of what Weir tells Envoy about clusters and endpoints (telemetry
/// reads it with `%CLUSTER_METADATA%` and `%UPSTREAM_METADATA%`).
pub const METADATA_NAMESPACE: &str = "weir";
/// The cluster that reaches the OpenTelemetry collector.
pub const TRACING_CLUSTER: &str = "weir-tracing";
/// Scrape annotations the injector sets when the pod has none of its own.
pub const PROMETHEUS_SCRAPE_ANNOTATIONS: [&str; 3] = [
    "prometheus.io/scrape",
    "prometheus.io/port",
    "prometheus.io/path",
];
/// The label value for a peer, service or workload the sidecar cannot name.
pub const UNKNOWN: &str = "unknown";
/// The container port name of the sidecar's Prometheus endpoint (PodMonitor selects it).
pub const METRICS_PORT_NAME: &str = "weir-metrics";
/// Envoy's OpenTelemetry tracer.
pub const OPENTELEMETRY_TRACER: &str = "envoy.tracers.opentelemetry";
/// Envoy's resource detector that reads `OTEL_RESOURCE_ATTRIBUTES`.
pub const OTEL_ENVIRONMENT_DETECTOR: &str =
    "envoy.tracers.opentelemetry.resource_detectors.environment";
/// The access logger that turns log entries into stats.
pub const STATS_ACCESS_LOG: &str = "envoy.access_loggers.stats";

// Install: namespaces and the objects the operator keeps.

/// The namespace Weir is installed in (the operator's default namespace); never injected.
pub const MESH_NAMESPACE: &str = "weir-system";
/// The Secret that keeps a generated CA, in the operator's namespace.
pub const CA_SECRET: &str = "weir-ca";
/// The ConfigMap (operator namespace) that keeps the links a CA rotation makes.
pub const CA_LINKS_CONFIGMAP: &str = "weir-ca-links";
/// The ConfigMap with the mesh's roots, in every meshed namespace (the injector mounts it).
pub const ROOT_CA_CONFIGMAP: &str = "weir-root-ca";
/// The key of the roots in [`ROOT_CA_CONFIGMAP`], and so the file name where it is mounted.
pub const ROOT_CERT_KEY: &str = "root-cert.pem";
/// The webhook's serving certificate, in the operator's namespace.
pub const WEBHOOK_TLS_SECRET: &str = "weir-webhook-tls";
/// The MutatingWebhookConfiguration whose caBundle the operator keeps current.
pub const WEBHOOK_CONFIGURATION: &str = "weir-sidecar-injector";

// Identity.

/// Audience of the projected service account token a proxy presents to the operator's xDS
/// server.
pub const TOKEN_AUDIENCE: &str = "weir";
/// The trust domain of SPIFFE IDs when the MeshIdentity does not name one.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// The MeshIdentity's default workload certificate lifetime, as the CRD writes it.
pub const DEFAULT_WORKLOAD_CERT_TTL_TEXT: &str = "24h";
/// Lifetime of workload certificates when the MeshIdentity does not set one
/// ([`DEFAULT_WORKLOAD_CERT_TTL_TEXT`]).
pub const DEFAULT_WORKLOAD_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// The scheme and separator that start every SPIFFE ID.
pub const SPIFFE_PREFIX: &str = "spiffe://";

// Names on the wire between the translator and the sidecars.

/// Endpoint metadata key (under [`TRANSPORT_SOCKET_MATCH`]) that marks a meshed endpoint.
pub const TLS_MODE: &str = "tlsMode";
/// The value of [`TLS_MODE`] for endpoints with a Weir sidecar.
pub const TLS_MODE_MESH: &str = "weir";
/// ALPN a client sidecar offers to a server sidecar for HTTP.
pub const ALPN_HTTP: &str = "weir-http";
/// ALPN a client sidecar offers to a server sidecar for plain TCP.
pub const ALPN_TCP: &str = "weir-tcp";
/// Response header set on requests the local rate limit refused.
pub const RATE_LIMITED_HEADER: &str = "x-weir-rate-limited";

// Envoy extension names.

/// The HTTP connection manager network filter.
pub const HTTP_CONNECTION_MANAGER: &str = "envoy.filters.network.http_connection_manager";
/// The TCP proxy network filter.
pub const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";
/// The on-demand HTTP filter of scoped proxies (always first): fetches the virtual host of
/// a Host the proxy does not hold (VHDS) and the clusters its routes name (ODCDS).
pub const ON_DEMAND_FILTER: &str = "envoy.filters.http.on_demand";
/// How long a request waits for a cluster fetched on demand before Envoy answers 503.
pub const ON_DEMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// The router HTTP filter (always last).
pub const ROUTER_FILTER: &str = "envoy.filters.http.router";
/// Envoy's HTTP RBAC filter (inbound authorization).
pub const HTTP_RBAC_FILTER: &str = "envoy.filters.http.rbac";
/// Envoy's network RBAC filter (inbound authorization of connections, Audit).
pub const NETWORK_RBAC_FILTER: &str = "envoy.filters.network.rbac";
/// Envoy's file access logger (a sidecar's denial lines go to its stdout).
pub const FILE_ACCESS_LOG: &str = "envoy.access_loggers.file";
/// Envoy's gRPC access logger for HTTP (denials reported to the operator).
pub const HTTP_GRPC_ACCESS_LOG: &str = "envoy.access_loggers.http_grpc";
/// Envoy's gRPC access logger for TCP (denials reported to the operator).
pub const TCP_GRPC_ACCESS_LOG: &str = "envoy.access_loggers.tcp_grpc";
/// Envoy's CEL access log filter.
pub const CEL_ACCESS_LOG_FILTER: &str = "envoy.access_loggers.extension_filters.cel";
/// The log name sidecars report authorization denials under.
pub const DENIAL_LOG_NAME: &str = "weir-denials";
/// The bootstrap's cluster to the operator for reports (denials), beside xDS.
pub const REPORTS_CLUSTER: &str = "weir-reports";
/// Node metadata key a bootstrap sets when it has [`REPORTS_CLUSTER`].
pub const REPORTS_META: &str = "REPORTS";
/// The gRPC service sidecars report denials to.
pub const ACCESS_LOG_SERVICE: &str = "envoy.service.accesslog.v3.AccessLogService";
/// Envoy's load reporting gRPC service: scoped sidecars report their use of each cluster
/// to it (on the reports cluster), so that their scopes shrink.
pub const LOAD_REPORTING_SERVICE: &str = "envoy.service.load_stats.v3.LoadReportingService";
/// How long a Service a sidecar learned may go unused before it leaves the sidecar's scope
/// (the operator's `--scope-idle`): its next call is then a first call again.
pub const DEFAULT_SCOPE_IDLE: Duration = Duration::from_secs(10 * 60);

/// How often a scoped sidecar reports its use when Services leave its scope after `idle`:
/// a quarter of it (a Service leaves between `idle` and `idle` plus one report late),
/// between 1 s and 60 s.
pub fn usage_report_interval(idle: Duration) -> Duration {
    (idle / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// Envoy's network filter that answers and closes (a connection authorization denies).
pub const DIRECT_RESPONSE_FILTER: &str = "envoy.filters.network.direct_response";
/// The fault injection HTTP filter.
pub const FAULT_FILTER: &str = "envoy.filters.http.fault";
/// The local rate limit HTTP filter.
pub const RATE_LIMIT_FILTER: &str = "envoy.filters.http.local_ratelimit";
/// The original destination listener filter (transparent capture).
pub const ORIGINAL_DST_FILTER: &str = "envoy.filters.listener.original_dst";
/// The TLS inspector listener filter.
pub const TLS_INSPECTOR_FILTER: &str = "envoy.filters.listener.tls_inspector";
/// The HTTP inspector listener filter.
pub const HTTP_INSPECTOR_FILTER: &str = "envoy.filters.listener.http_inspector";
/// The TLS transport socket.
pub const TLS_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";
/// The metadata namespace of transport socket matches.
pub const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";
/// The key of upstream HTTP protocol options in a cluster's
/// `typed_extension_protocol_options`.
pub const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
/// The gRPC credentials plugin that reads the proxy's token from a file.
pub const FILE_BASED_METADATA: &str = "envoy.grpc_credentials.file_based_metadata";
/// The gRPC service Envoy calls for ADS.
pub const ADS_SERVICE: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";

#[cfg(test)]
mod tests {
    use super::*;

    /// crds/ does not depend on core, so it writes its schema defaults itself: they must be
    /// the ones the operator applies.
    #[test]
    fn crd_defaults_agree() {
        let spec: weir_api::MeshIdentitySpec =
            serde_json::from_value(serde_json::json!({})).unwrap();
        assert_eq!(spec.trust_domain, DEFAULT_TRUST_DOMAIN);
        assert_eq!(spec.workload_cert_ttl.0, DEFAULT_WORKLOAD_CERT_TTL_TEXT);
        assert_eq!(
            spec.workload_cert_ttl.to_std().ok(),
            Some(DEFAULT_WORKLOAD_CERT_TTL)
        );
        let config = crate::index::IdentityConfig::from_spec(&spec);
        assert_eq!(config.trust_domain, DEFAULT_TRUST_DOMAIN);
        assert_eq!(config.workload_ttl, DEFAULT_WORKLOAD_CERT_TTL);
        let defaults = crate::index::IdentityConfig::default();
        assert_eq!(defaults.trust_domain, DEFAULT_TRUST_DOMAIN);
        assert_eq!(defaults.workload_ttl, DEFAULT_WORKLOAD_CERT_TTL);
    }

    #[test]
    fn keys_have_the_prefix() {
        for key in INJECTOR_ANNOTATIONS
            .into_iter()
            .chain([MTLS_MODE_KEY, DEFAULT_AUTHORIZATION_KEY])
        {
            assert!(key.starts_with(KEY_PREFIX), "{key}");
        }
    }
}
