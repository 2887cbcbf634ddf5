//! Telemetry every chain carries: request and connection metrics labelled with the mesh's
//! names, the JSON access log, and tracing. The chain builders of
//! [`crate::translate::chain`] attach what this module makes, so every connection manager
//! and TCP proxy reports the same way.
//!
//! ```text
//! Telemetry (operator flags: access log default, OTLP collector, sampling)
//!   + Side (outbound: reporter=source | inbound over mTLS | inbound plaintext)
//!   + ServedPorts (inbound: pod port -> the Service it serves there)
//!   --http_logs / tcp_logs--> [stats logger (weir.* counters, histograms), JSON log]
//!   --tracing-------------->  HCM tracing (OpenTelemetry, OTLP/gRPC to weir-tracing)
//! labels come from: the proxy's environment (its own workload, given at injection),
//!   cluster metadata (Service, subset), endpoint host names (the peer's workload),
//!   certificates (principals), the caller's x-weir-source-* headers (inbound over mTLS)
//! ```
//!
//! Pure Envoy: the `envoy.access_loggers.stats` extension turns each finished request or
//! connection into counter and histogram increments tagged from access-log command
//! operators; tag rules map empty values to `unknown` and content types to a protocol, so
//! no label takes a path, a pod name or a Host header (cardinality stays bounded by the
//! mesh's workloads and Services). Per-pod choices (access log mode, sampling) are runtime
//! keys the injector writes into the pod's bootstrap; the defaults here come over xDS.

use envoy_types::pb::envoy::config::accesslog::v3::{
    access_log, access_log_filter::FilterSpecifier, comparison_filter, AccessLog,
    AccessLogFilter, AndFilter, ComparisonFilter, LogTypeFilter, OrFilter, ResponseFlagFilter,
    RuntimeFilter, StatusCodeFilter,
};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{
    grpc_service, header_value_option::HeaderAppendAction, GrpcService, HeaderValue,
    HeaderValueOption, RuntimeUInt32, TypedExtensionConfig,
};
use envoy_types::pb::envoy::config::trace::v3::{
    tracing::{http as trace_http, Http as TraceProvider},
    OpenTelemetryConfig,
};
use envoy_types::pb::envoy::data::accesslog::v3::AccessLogType;
use envoy_types::pb::envoy::extensions::access_loggers::stats::v3::{
    config::{self as stats, histogram::Unit},
    Config as StatsConfig,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing;
use envoy_types::pb::envoy::extensions::matching::actions::transform_stat::v3::{
    transform_stat::UpdateTag, TransformStat,
};
use envoy_types::pb::envoy::extensions::matching::common_inputs::stats::v3::StatTagValueInput;
use envoy_types::pb::envoy::extensions::tracers::opentelemetry::resource_detectors::v3::EnvironmentResourceDetectorConfig;
use envoy_types::pb::envoy::r#type::metadata::v3::{
    metadata_key::{path_segment, PathSegment},
    metadata_kind, MetadataKey, MetadataKind,
};
use envoy_types::pb::envoy::r#type::tracing::v3::{custom_tag, CustomTag};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, Percent, Scope};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::xds::core::v3::TypedExtensionConfig as XdsExtension;
use envoy_types::pb::xds::r#type::matcher::v3::matcher::{
    matcher_list::{
        predicate::{single_predicate, MatchType, SinglePredicate},
        FieldMatcher, Predicate,
    },
    on_match, MatcherList, MatcherType, OnMatch,
};
use envoy_types::pb::xds::r#type::matcher::v3::{
    string_matcher::MatchPattern, Matcher, StringMatcher as XdsStringMatcher,
};
use envoy_types::util::pack_any;
use std::fmt;

use super::cluster;
use super::pb::{self, sorted};
use crate::index::ObjectKey;
use crate::mesh::{
    ACCESS_LOG_ALL_RUNTIME, ACCESS_LOG_ERRORS_RUNTIME, FILE_ACCESS_LOG, METADATA_NAMESPACE,
    METRICS_SCOPE, OPENTELEMETRY_TRACER, OTEL_ENVIRONMENT_DETECTOR, SOURCE_NAMESPACE_HEADER,
    SOURCE_WORKLOAD_HEADER, STATS_ACCESS_LOG, TRACING_CLUSTER, UNKNOWN, WORKLOAD_ENV,
    WORKLOAD_NAMESPACE_ENV,
};
use crate::names;
use crate::protocol::Protocol;
use crate::resources::Resource;

/// Which requests a sidecar writes to its access log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AccessLogMode {
    /// Every request and connection.
    All,
    /// Failed ones: a 5xx, a response flag (no upstream, timeout, reset, overflow...), a
    /// denial.
    #[default]
    Errors,
    /// None.
    Off,
}

impl AccessLogMode {
    /// Reads `all`, `errors` or `off`.
    pub fn parse(s: &str) -> Option<AccessLogMode> {
        match s {
            "all" => Some(AccessLogMode::All),
            "errors" => Some(AccessLogMode::Errors),
            "off" => Some(AccessLogMode::Off),
            _ => None,
        }
    }

    /// The runtime values (percent) of the `all` and `errors` keys this mode sets.
    pub fn runtime_percents(self) -> (u32, u32) {
        match self {
            AccessLogMode::All => (100, 100),
            AccessLogMode::Errors => (0, 100),
            AccessLogMode::Off => (0, 0),
        }
    }
}

impl fmt::Display for AccessLogMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AccessLogMode::All => "all",
            AccessLogMode::Errors => "errors",
            AccessLogMode::Off => "off",
        })
    }
}

/// Where traces go.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// The OTLP/gRPC collector's host.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// The percentage of requests a sidecar starts a trace for (a pod may override).
    pub sampling_percent: f64,
}

/// The default share of requests traced, percent.
pub const DEFAULT_SAMPLING_PERCENT: f64 = 1.0;

/// Mesh-wide telemetry settings (the operator's flags), the same for every proxy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Telemetry {
    /// The access log of pods that do not choose.
    pub access_log: AccessLogMode,
    /// Tracing, when a collector is configured.
    pub tracing: Option<TracingConfig>,
}

/// Which sidecar a chain belongs to and what it knows of the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The caller's sidecar (the outbound listener): `reporter="source"`.
    Outbound,
    /// The server's sidecar, the caller proved its identity over mesh mTLS.
    InboundMesh,
    /// The server's sidecar, a plaintext caller (no identity).
    InboundPlaintext,
}

/// Inbound: the Service a pod port serves (the first by namespace/name when several
/// Services reach the same pod port), for the `destination_service*` labels.
pub type ServedPorts = [(u16, ObjectKey)];

/// The resource of `cluster`, a cluster of Service `svc` (and `subset`), with the
/// metadata the caller's sidecar labels requests to it with (`weir: {service,
/// service_name, service_namespace, subset}`).
pub fn cluster_resource(cluster: &Cluster, svc: &ObjectKey, subset: Option<&str>) -> Resource {
    use prost::Name;
    let mut fields = vec![
        ("service", names::fqdn(svc)),
        ("service_name", svc.name.clone()),
        ("service_namespace", svc.namespace.clone()),
    ];
    fields.extend(subset.map(|s| ("subset", s.to_string())));
    let metadata = sorted::Metadata {
        filter_metadata: [(
            METADATA_NAMESPACE.to_string(),
            sorted::Struct::strings(fields),
        )]
        .into_iter()
        .collect(),
    };
    // Cluster.metadata is field 25.
    let body = sorted::with_metadata(cluster, 25, &metadata);
    Resource::from_any(
        cluster.name.clone(),
        Any {
            type_url: Cluster::type_url(),
            value: body,
        },
    )
}

/// The host name of an endpoint whose pod is of `workload` (`%UPSTREAM_HOST_NAME%`, the
/// caller's `destination_workload`): Envoy uses it for nothing else here.
pub fn endpoint_hostname(workload: Option<&str>) -> String {
    workload.unwrap_or(UNKNOWN).to_string()
}

/// The headers the caller's sidecar sets on every outbound request so that the server's
/// sidecar can name the caller (replacing whatever the application sent).
pub fn source_headers() -> Vec<HeaderValueOption> {
    [
        (SOURCE_WORKLOAD_HEADER, env(WORKLOAD_ENV)),
        (SOURCE_NAMESPACE_HEADER, env(WORKLOAD_NAMESPACE_ENV)),
    ]
    .into_iter()
    .map(|(key, value)| HeaderValueOption {
        header: Some(HeaderValue {
            key: key.into(),
            value,
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        // An unset environment gives an empty value: send none.
        keep_empty_value: false,
        ..Default::default()
    })
    .collect()
}

fn env(name: &str) -> String {
    format!("%ENVIRONMENT({name})%")
}

/// How one label gets its value.
struct Label {
    name: &'static str,
    format: String,
    rules: Option<Matcher>,
}

impl Label {
    /// The value of `format` as it is.
    fn plain(name: &'static str, format: impl Into<String>) -> Label {
        Label {
            name,
            format: format.into(),
            rules: None,
        }
    }

    /// A fixed value.
    fn fixed(name: &'static str, value: &str) -> Label {
        // A format string without operators is its text (a `%` would start one).
        Label::plain(name, value.replace('%', "%%"))
    }

    fn tag(&self) -> stats::Tag {
        stats::Tag {
            name: self.name.into(),
            value_format: self.format.clone(),
            rules: self.rules.clone(),
        }
    }
}

/// A value test of a tag rule and the value it replaces the tag's with.
type Rewrite = (MatchPattern, String);

fn exact(value: &str, to: &str) -> Rewrite {
    (MatchPattern::Exact(value.into()), to.into())
}

/// Tag rules: the first test the tag's value passes replaces it; with none, `otherwise`
/// does (or the value stays). A list, not a map: the encoding stays the same every time.
fn tag_rules(rewrites: &[Rewrite], otherwise: Option<&str>) -> Matcher {
    let update = |value: &str| OnMatch {
        keep_matching: false,
        on_match: Some(on_match::OnMatch::Action(XdsExtension {
            name: "weir.update_tag".into(),
            typed_config: Some(pack_any(TransformStat {
                update_tag: Some(UpdateTag {
                    new_tag_value: value.to_string(),
                }),
                ..Default::default()
            })),
        })),
    };
    let input = XdsExtension {
        name: "weir.stat_tag_value".into(),
        typed_config: Some(pack_any(StatTagValueInput::default())),
    };
    Matcher {
        on_no_match: otherwise.map(|v| Box::new(update(v))),
        matcher_type: Some(MatcherType::MatcherList(MatcherList {
            matchers: rewrites
                .iter()
                .map(|(test, to)| FieldMatcher {
                    predicate: Some(Predicate {
                        match_type: Some(MatchType::SinglePredicate(SinglePredicate {
                            input: Some(input.clone()),
                            matcher: Some(single_predicate::Matcher::ValueMatch(
                                XdsStringMatcher {
                                    match_pattern: Some(test.clone()),
                                    ignore_case: false,
                                },
                            )),
                        })),
                    }),
                    on_match: Some(update(to)),
                })
                .collect(),
        })),
    }
}

/// Requests or connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Traffic {
    Http,
    Tcp,
}

/// The labels of a request or connection seen from `side` (see the module docs and the
/// README's table). A value Envoy does not know is empty: the scrape configuration names
/// it `unknown` (one rule there rather than one in every chain of every sidecar); rules
/// here only keep out what would be unbounded (addresses, content types).
fn labels(side: Side, traffic: Traffic, served: &ServedPorts) -> Vec<Label> {
    let own_workload = env(WORKLOAD_ENV);
    let own_namespace = env(WORKLOAD_NAMESPACE_ENV);
    let mut out = Vec::with_capacity(16);
    match side {
        Side::Outbound => {
            out.push(Label::fixed("reporter", "source"));
            out.push(Label::plain("source_workload", own_workload));
            out.push(Label::plain("source_namespace", own_namespace));
            out.push(Label::plain("source_principal", "%UPSTREAM_LOCAL_URI_SAN%"));
            // The endpoint's host name is its pod's workload (see `endpoint_hostname`);
            // an address (ip:port, outside the mesh) is no workload.
            out.push(Label {
                rules: Some(tag_rules(
                    &[(MatchPattern::Contains(":".into()), UNKNOWN.into())],
                    None,
                )),
                ..Label::plain("destination_workload", "%UPSTREAM_HOST_NAME%")
            });
            let cluster = |key: &str| format!("%CLUSTER_METADATA({METADATA_NAMESPACE}:{key})%");
            // A Service's pods are in its namespace.
            out.push(Label::plain(
                "destination_namespace",
                cluster("service_namespace"),
            ));
            out.push(Label::plain(
                "destination_principal",
                "%UPSTREAM_PEER_URI_SAN%",
            ));
            out.push(Label::plain("destination_service", cluster("service")));
            out.push(Label::plain(
                "destination_service_name",
                cluster("service_name"),
            ));
            out.push(Label::plain(
                "destination_service_namespace",
                cluster("service_namespace"),
            ));
            out.push(Label::plain("destination_subset", cluster("subset")));
            // The TLS version (`TLSv1.3`) when the connection to the peer is mesh mTLS,
            // empty otherwise: the scrape configuration names them `mutual_tls` and `none`.
            out.push(Label::plain(
                "connection_security_policy",
                "%UPSTREAM_TLS_VERSION%",
            ));
        }
        Side::InboundMesh | Side::InboundPlaintext => {
            let mesh = side == Side::InboundMesh;
            out.push(Label::fixed("reporter", "destination"));
            // Over mTLS the caller's sidecar set these (replacing the application's);
            // a plaintext caller could write anything, so it is not asked.
            let header = |h: &str| format!("%REQ({h}):63%");
            if mesh && traffic == Traffic::Http {
                out.push(Label::plain(
                    "source_workload",
                    header(SOURCE_WORKLOAD_HEADER),
                ));
                out.push(Label::plain(
                    "source_namespace",
                    header(SOURCE_NAMESPACE_HEADER),
                ));
            } else {
                out.push(Label::fixed("source_workload", UNKNOWN));
                out.push(Label::fixed("source_namespace", UNKNOWN));
            }
            if mesh {
                out.push(Label::plain(
                    "source_principal",
                    "%DOWNSTREAM_PEER_URI_SAN%",
                ));
            } else {
                out.push(Label::fixed("source_principal", UNKNOWN));
            }
            out.push(Label::plain("destination_workload", own_workload));
            out.push(Label::plain("destination_namespace", own_namespace));
            if mesh {
                out.push(Label::plain(
                    "destination_principal",
                    "%DOWNSTREAM_LOCAL_URI_SAN%",
                ));
            } else {
                out.push(Label::fixed("destination_principal", UNKNOWN));
            }
            let by_port = |name: &'static str, value: fn(&ObjectKey) -> String| {
                let rewrites: Vec<Rewrite> = served
                    .iter()
                    .map(|(port, svc)| exact(&port.to_string(), &value(svc)))
                    .collect();
                if rewrites.is_empty() {
                    return Label::fixed(name, UNKNOWN);
                }
                Label {
                    name,
                    format: "%DOWNSTREAM_LOCAL_PORT%".into(),
                    rules: Some(tag_rules(&rewrites, Some(UNKNOWN))),
                }
            };
            out.push(by_port("destination_service", names::fqdn));
            out.push(by_port("destination_service_name", |s| s.name.clone()));
            out.push(by_port("destination_service_namespace", |s| {
                s.namespace.clone()
            }));
            // Subsets are the caller's routing: not known here.
            out.push(Label::fixed("destination_subset", UNKNOWN));
            out.push(Label::fixed(
                "connection_security_policy",
                if mesh { "mutual_tls" } else { "none" },
            ));
        }
    }
    match traffic {
        Traffic::Http => {
            out.push(Label {
                rules: Some(tag_rules(
                    &[(
                        MatchPattern::Prefix("application/grpc".into()),
                        "grpc".into(),
                    )],
                    Some("http"),
                )),
                ..Label::plain("request_protocol", "%REQ(content-type)%")
            });
            out.push(Label::plain("response_code", "%RESPONSE_CODE%"));
            out.push(Label::plain("grpc_response_status", "%GRPC_STATUS_NUMBER%"));
        }
        Traffic::Tcp => out.push(Label::fixed("request_protocol", "tcp")),
    }
    out.push(Label::plain("response_flags", "%RESPONSE_FLAGS%"));
    out
}

/// Series one logger may create per stat kind: a bound on memory whatever the traffic.
const MAX_COUNTERS: u32 = 20_000;
const MAX_HISTOGRAMS: u32 = 5_000;

fn scope() -> Scope {
    Scope {
        prefix: METRICS_SCOPE.into(),
        max_counters: Some(pb::u32v(MAX_COUNTERS)),
        max_histograms: Some(pb::u32v(MAX_HISTOGRAMS)),
        ..Default::default()
    }
}

fn stat(name: &str, tags: &[stats::Tag]) -> Option<stats::Stat> {
    Some(stats::Stat {
        name: name.into(),
        tags: tags.to_vec(),
    })
}

fn counter(name: &str, tags: &[stats::Tag], value: Option<&str>) -> stats::Counter {
    stats::Counter {
        stat: stat(name, tags),
        value_format: value.unwrap_or_default().into(),
        value_fixed: value.is_none().then(|| pb::u64v(1)),
    }
}

fn histogram(name: &str, tags: &[stats::Tag], unit: Unit, value: &str) -> stats::Histogram {
    stats::Histogram {
        stat: stat(name, tags),
        unit: unit as i32,
        value_format: value.into(),
    }
}

fn stats_log(config: StatsConfig, filter: Option<AccessLogFilter>) -> AccessLog {
    AccessLog {
        name: STATS_ACCESS_LOG.into(),
        filter,
        config_type: Some(access_log::ConfigType::TypedConfig(pack_any(config))),
    }
}

/// The tags of every stat of a chain.
fn tags(side: Side, traffic: Traffic, served: &ServedPorts) -> Vec<stats::Tag> {
    labels(side, traffic, served)
        .iter()
        .map(Label::tag)
        .collect()
}

/// The access logs of an HTTP connection manager on `side`: request metrics, then the JSON
/// log (with `denials`: what counts as a denial on this chain).
pub fn http_logs(
    side: Side,
    telemetry: &Telemetry,
    served: &ServedPorts,
    denials: Option<AccessLogFilter>,
) -> Vec<AccessLog> {
    let tags = tags(side, Traffic::Http, served);
    let metrics = StatsConfig {
        stats_scope: Some(scope()),
        counters: vec![counter("requests_total", &tags, None)],
        histograms: vec![
            histogram(
                "request_duration_milliseconds",
                &tags,
                Unit::Milliseconds,
                "%DURATION%",
            ),
            histogram("request_bytes", &tags, Unit::Bytes, "%BYTES_RECEIVED%"),
            histogram("response_bytes", &tags, Unit::Bytes, "%BYTES_SENT%"),
        ],
        ..Default::default()
    };
    let errors = any_of(
        [
            Some(status_at_least(500)),
            Some(any_response_flag()),
            denials,
        ]
        .into_iter()
        .flatten()
        .collect(),
    );
    vec![
        stats_log(metrics, None),
        json_log(
            json_fields(side, Traffic::Http),
            Some(logged(telemetry.access_log, errors)),
        ),
    ]
}

/// The access logs of a TCP proxy on `side`: connection metrics (opened when the upstream
/// connection is made, the rest when it closes), then the JSON log of closed connections.
/// The proxy must flush a log entry on connect (`TcpChain::telemetry` sets it).
pub fn tcp_logs(
    side: Side,
    telemetry: &Telemetry,
    served: &ServedPorts,
    denials: Option<AccessLogFilter>,
) -> Vec<AccessLog> {
    let tags = tags(side, Traffic::Tcp, served);
    let opened = StatsConfig {
        stats_scope: Some(scope()),
        counters: vec![counter("tcp_connections_opened_total", &tags, None)],
        ..Default::default()
    };
    let closed = StatsConfig {
        stats_scope: Some(scope()),
        counters: vec![
            counter("tcp_connections_closed_total", &tags, None),
            counter("tcp_sent_bytes_total", &tags, Some("%BYTES_SENT%")),
            counter("tcp_received_bytes_total", &tags, Some("%BYTES_RECEIVED%")),
        ],
        ..Default::default()
    };
    let errors = any_of(
        [Some(any_response_flag()), denials]
            .into_iter()
            .flatten()
            .collect(),
    );
    let at_end = log_type(AccessLogType::TcpConnectionEnd);
    vec![
        stats_log(opened, Some(log_type(AccessLogType::TcpUpstreamConnected))),
        stats_log(closed, Some(at_end.clone())),
        json_log(
            json_fields(side, Traffic::Tcp),
            Some(all_of(vec![at_end, logged(telemetry.access_log, errors)])),
        ),
    ]
}

/// Which entries the JSON log writes: every one where the pod's runtime (or the mesh
/// default) says `all`, failed ones where it says `errors`.
fn logged(default: AccessLogMode, errors: AccessLogFilter) -> AccessLogFilter {
    let (all, err) = default.runtime_percents();
    // Cheapest first for a healthy request: the status and flags fail, one runtime look-up.
    any_of(vec![
        all_of(vec![errors, runtime(ACCESS_LOG_ERRORS_RUNTIME, err)]),
        runtime(ACCESS_LOG_ALL_RUNTIME, all),
    ])
}

fn runtime(key: &str, percent: u32) -> AccessLogFilter {
    filter(FilterSpecifier::RuntimeFilter(RuntimeFilter {
        runtime_key: key.into(),
        percent_sampled: Some(FractionalPercent {
            numerator: percent,
            denominator: 0, // HUNDRED
        }),
        use_independent_randomness: false,
    }))
}

fn status_at_least(code: u32) -> AccessLogFilter {
    filter(FilterSpecifier::StatusCodeFilter(StatusCodeFilter {
        comparison: Some(ComparisonFilter {
            op: comparison_filter::Op::Ge as i32,
            value: Some(RuntimeUInt32 {
                default_value: code,
                runtime_key: "weir.access_log.error_status".into(),
            }),
        }),
    }))
}

fn any_response_flag() -> AccessLogFilter {
    filter(FilterSpecifier::ResponseFlagFilter(ResponseFlagFilter {
        flags: Vec::new(),
    }))
}

fn log_type(t: AccessLogType) -> AccessLogFilter {
    filter(FilterSpecifier::LogTypeFilter(LogTypeFilter {
        types: vec![t as i32],
        exclude: false,
    }))
}

/// Any of `filters` (Envoy wants two or more in an `or`).
fn any_of(mut filters: Vec<AccessLogFilter>) -> AccessLogFilter {
    if filters.len() == 1 {
        return filters.remove(0);
    }
    filter(FilterSpecifier::OrFilter(OrFilter { filters }))
}

/// All of `filters` (two or more in an `and`).
fn all_of(mut filters: Vec<AccessLogFilter>) -> AccessLogFilter {
    if filters.len() == 1 {
        return filters.remove(0);
    }
    filter(FilterSpecifier::AndFilter(AndFilter { filters }))
}

fn filter(spec: FilterSpecifier) -> AccessLogFilter {
    AccessLogFilter {
        filter_specifier: Some(spec),
    }
}

/// The JSON fields of one access log line.
fn json_fields(side: Side, traffic: Traffic) -> Vec<(&'static str, String)> {
    let mut fields: Vec<(&'static str, String)> = vec![
        ("start_time", "%START_TIME%".into()),
        ("duration_ms", "%DURATION%".into()),
    ];
    // The peers as the metrics name them, before `unknown` replaces what is missing.
    for label in labels(side, traffic, &[]) {
        match label.name {
            "reporter"
            | "source_workload"
            | "source_namespace"
            | "source_principal"
            | "destination_workload"
            | "destination_namespace"
            | "destination_principal"
            | "connection_security_policy" => fields.push((label.name, label.format)),
            _ => {}
        }
    }
    match traffic {
        Traffic::Http => fields.extend(
            [
                ("protocol", "%PROTOCOL%"),
                ("method", "%REQ(:METHOD)%"),
                ("authority", "%REQ(:AUTHORITY)%"),
                ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
                ("response_code", "%RESPONSE_CODE%"),
                ("grpc_status", "%GRPC_STATUS%"),
                ("request_id", "%REQ(X-REQUEST-ID)%"),
                ("trace_id", "%TRACE_ID%"),
                ("route", "%ROUTE_NAME%"),
                ("upstream_attempts", "%UPSTREAM_REQUEST_ATTEMPT_COUNT%"),
                (
                    "audit",
                    "%DYNAMIC_METADATA(envoy.filters.http.rbac:shadow_effective_policy_id)%",
                ),
            ]
            .map(|(k, v)| (k, v.to_string())),
        ),
        Traffic::Tcp => fields.extend(
            [
                ("protocol", "tcp"),
                (
                    "audit",
                    "%DYNAMIC_METADATA(envoy.filters.network.rbac:shadow_effective_policy_id)%",
                ),
                ("transport_failure", "%DOWNSTREAM_TRANSPORT_FAILURE_REASON%"),
            ]
            .map(|(k, v)| (k, v.to_string())),
        ),
    }
    fields.extend(
        [
            ("response_flags", "%RESPONSE_FLAGS%"),
            ("response_code_details", "%RESPONSE_CODE_DETAILS%"),
            (
                "connection_termination_details",
                "%CONNECTION_TERMINATION_DETAILS%",
            ),
            ("upstream_cluster", "%UPSTREAM_CLUSTER%"),
            ("upstream_host", "%UPSTREAM_HOST%"),
            ("upstream_failure", "%UPSTREAM_TRANSPORT_FAILURE_REASON%"),
            ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
            ("bytes_received", "%BYTES_RECEIVED%"),
            ("bytes_sent", "%BYTES_SENT%"),
        ]
        .map(|(k, v)| (k, v.to_string())),
    );
    if side == Side::Outbound {
        let cluster = |key: &str| format!("%CLUSTER_METADATA({METADATA_NAMESPACE}:{key})%");
        fields.push(("destination_service", cluster("service")));
        fields.push(("destination_subset", cluster("subset")));
    }
    fields
}

fn json_log(fields: Vec<(&'static str, String)>, filter: Option<AccessLogFilter>) -> AccessLog {
    AccessLog {
        name: FILE_ACCESS_LOG.into(),
        filter,
        config_type: Some(access_log::ConfigType::TypedConfig(
            sorted::json_file_access_log("/dev/stdout", sorted::Struct::strings(fields)),
        )),
    }
}

/// The tracing of an HTTP connection manager on `side`, when a collector is configured:
/// OpenTelemetry spans over OTLP/gRPC to the tracing cluster, W3C `traceparent`
/// propagated, the peer as span attributes (`weir.destination_service|subset` on client
/// spans, `weir.source_workload|namespace` on server spans). `service.name` is the
/// workload, from `OTEL_RESOURCE_ATTRIBUTES` that the injector sets.
pub fn tracing(side: Side, telemetry: &Telemetry) -> Option<Tracing> {
    let config = telemetry.tracing.as_ref()?;
    let provider = OpenTelemetryConfig {
        grpc_service: Some(GrpcService {
            target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                grpc_service::EnvoyGrpc {
                    cluster_name: TRACING_CLUSTER.into(),
                    ..Default::default()
                },
            )),
            timeout: Some(pb::seconds(1)),
            ..Default::default()
        }),
        service_name: "weir-proxy".into(),
        resource_detectors: vec![TypedExtensionConfig {
            name: OTEL_ENVIRONMENT_DETECTOR.into(),
            typed_config: Some(pack_any(EnvironmentResourceDetectorConfig::default())),
        }],
        ..Default::default()
    };
    // Span attributes are evaluated for every request, sampled or not (each costs about
    // 1 % of the sidecar's CPU at 1,000 requests/s): only the peer the span cannot name
    // otherwise, by direct lookups. The proxy's own workload and namespace are resource
    // attributes (`OTEL_RESOURCE_ATTRIBUTES`), principals are in the metrics and logs.
    let custom_tags = match side {
        Side::Outbound => ["service", "subset"]
            .into_iter()
            .map(|key| CustomTag {
                tag: format!("weir.destination_{key}"),
                r#type: Some(custom_tag::Type::Metadata(custom_tag::Metadata {
                    kind: Some(MetadataKind {
                        kind: Some(metadata_kind::Kind::Cluster(metadata_kind::Cluster {})),
                    }),
                    metadata_key: Some(MetadataKey {
                        key: METADATA_NAMESPACE.into(),
                        path: vec![PathSegment {
                            segment: Some(path_segment::Segment::Key(key.into())),
                        }],
                    }),
                    default_value: String::new(),
                })),
            })
            .collect(),
        Side::InboundMesh | Side::InboundPlaintext => [
            ("weir.source_workload", SOURCE_WORKLOAD_HEADER),
            ("weir.source_namespace", SOURCE_NAMESPACE_HEADER),
        ]
        .into_iter()
        .map(|(tag, header)| CustomTag {
            tag: tag.into(),
            r#type: Some(custom_tag::Type::RequestHeader(custom_tag::Header {
                name: header.into(),
                default_value: UNKNOWN.into(),
            })),
        })
        .collect(),
    };
    Some(Tracing {
        random_sampling: Some(Percent {
            value: config.sampling_percent,
        }),
        custom_tags,
        provider: Some(TraceProvider {
            name: OPENTELEMETRY_TRACER.into(),
            config_type: Some(trace_http::ConfigType::TypedConfig(pack_any(provider))),
        }),
        ..Default::default()
    })
}

/// The cluster that reaches the collector, when tracing is configured.
pub fn tracing_cluster(telemetry: &Telemetry) -> Option<Cluster> {
    let config = telemetry.tracing.as_ref()?;
    Some(cluster::dns_cluster(
        TRACING_CLUSTER,
        &config.host,
        config.port,
        Protocol::Grpc,
        None,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag_names(side: Side, traffic: Traffic) -> Vec<&'static str> {
        let mut names: Vec<_> = labels(side, traffic, &[]).iter().map(|l| l.name).collect();
        names.sort_unstable();
        names
    }

    #[test]
    fn every_reporter_has_the_same_labels() {
        let http = tag_names(Side::Outbound, Traffic::Http);
        assert_eq!(http.len(), 16, "{http:?}");
        for side in [Side::InboundMesh, Side::InboundPlaintext] {
            assert_eq!(tag_names(side, Traffic::Http), http);
        }
        let tcp = tag_names(Side::Outbound, Traffic::Tcp);
        assert_eq!(tcp.len(), 14, "{tcp:?}");
        assert_eq!(tag_names(Side::InboundMesh, Traffic::Tcp), tcp);
    }

    #[test]
    fn plaintext_callers_are_never_named_from_their_headers() {
        let labels = labels(Side::InboundPlaintext, Traffic::Http, &[]);
        assert!(labels.iter().all(|l| !l.format.contains("REQ(x-weir")));
        let mesh = labels_of(Side::InboundMesh);
        assert!(mesh
            .iter()
            .any(|l| l.format.contains(SOURCE_WORKLOAD_HEADER)));
    }

    fn labels_of(side: Side) -> Vec<Label> {
        labels(side, Traffic::Http, &[])
    }

    /// Telemetry is on every chain (one per TCP Service port in transparent mode): what
    /// it adds to a listener stays small.
    #[test]
    fn telemetry_of_a_chain_stays_small() {
        use prost::Message;
        let telemetry = Telemetry::default();
        let size = |logs: Vec<AccessLog>| logs.iter().map(|l| l.encoded_len()).sum::<usize>();
        let http = size(http_logs(Side::Outbound, &telemetry, &[], None));
        let tcp = size(tcp_logs(Side::Outbound, &telemetry, &[], None));
        assert!(http < 8 * 1024, "{http} bytes per HTTP chain");
        assert!(tcp < 6 * 1024, "{tcp} bytes per TCP chain");
    }

    #[test]
    fn access_log_modes_parse_and_map_to_runtime_percents() {
        for mode in [
            AccessLogMode::All,
            AccessLogMode::Errors,
            AccessLogMode::Off,
        ] {
            assert_eq!(AccessLogMode::parse(&mode.to_string()), Some(mode));
        }
        assert_eq!(AccessLogMode::parse("some"), None);
        assert_eq!(AccessLogMode::Errors.runtime_percents(), (0, 100));
    }
}
