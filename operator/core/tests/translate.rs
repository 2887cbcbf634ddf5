//! Translation: golden output for both capture modes, determinism, incremental updates and
//! policy precedence.

use envoy_types::pb::envoy::config::{
    cluster::v3::Cluster, endpoint::v3::ClusterLoadAssignment, listener::v3::Listener,
    route::v3::RouteConfiguration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use prost::Message;
use weir_api::MtlsMode;
use weir_api::{
    Destination, HeaderMatch, HttpMatch, PathMatch, PathMatchType, Retries, StringMatchType,
};
use weir_core::status::{policy_statuses, AckSummary, Reason};
use weir_core::testing::*;
use weir_core::{
    Capture, Event, Index, Object, ObjectKey, ProxyProfile, ResourceType, Snapshot, SnapshotBuilder,
};

fn apply(index: &mut Index, objects: Vec<Object>) {
    for o in objects {
        index.apply(Event::apply(o));
    }
}

/// Two services, one with a policy that uses every translated feature.
fn bookinfo() -> Vec<Object> {
    let mut spec = mk_policy_spec("reviews", &[("v1", 80), ("v2", 20)]);
    spec.http.insert(
        0,
        weir_api::HttpRule {
            name: Some("jason".into()),
            matches: vec![HttpMatch {
                path: Some(PathMatch {
                    match_type: PathMatchType::Prefix,
                    value: "/api/".into(),
                }),
                headers: vec![HeaderMatch {
                    name: "End-User".into(),
                    match_type: StringMatchType::Exact,
                    value: Some("jason".into()),
                }],
                method: Some(weir_api::HttpMethod::Get),
                ..Default::default()
            }],
            destinations: vec![Destination {
                subset: Some("v2".into()),
                ..Default::default()
            }],
            timeout: Some(weir_api::Duration("1500ms".into())),
            retries: Some(Retries {
                attempts: 3,
                per_try_timeout: Some(weir_api::Duration("500ms".into())),
                retry_on: vec![],
            }),
            request_headers: Some(weir_api::HeaderModifier {
                set: vec![weir_api::HeaderValue {
                    name: "x-canary".into(),
                    value: "true".into(),
                }],
                add: vec![],
                remove: vec!["x-debug".into()],
            }),
            ..Default::default()
        },
    );
    vec![
        Object::Service(mk_service("default", "reviews", "10.96.0.10", &[9080])),
        Object::Service(mk_service("default", "ratings", "10.96.0.11", &[9080, 80])),
        Object::Pod(mk_pod("default", "reviews-v1", &[("version", "v1")])),
        Object::Pod(mk_pod("default", "reviews-v2", &[("version", "v2")])),
        Object::EndpointSlice(mk_slice(
            "default",
            "reviews-abc",
            "reviews",
            "http",
            8080,
            &[("10.0.0.2", "reviews-v2"), ("10.0.0.1", "reviews-v1")],
        )),
        Object::EndpointSlice(mk_slice(
            "default",
            "ratings-abc",
            "ratings",
            "http",
            8080,
            &[("10.0.1.1", "ratings-1")],
        )),
        Object::TrafficPolicy(mk_policy("default", "reviews", spec)),
    ]
}

/// Debug text of a message, with every nested `Any` (typed configs of filters and
/// protocol options) decoded in place, so golden files show what Envoy will read.
fn expand_any(text: &str) -> String {
    use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
    use envoy_types::pb::envoy::extensions::filters::listener::{
        http_inspector::v3::HttpInspector, original_dst::v3::OriginalDst,
        tls_inspector::v3::TlsInspector,
    };
    use envoy_types::pb::envoy::extensions::filters::network::{
        http_connection_manager::v3::HttpConnectionManager, tcp_proxy::v3::TcpProxy,
    };
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
    fn decode<M: Message + Default + std::fmt::Debug>(bytes: &[u8]) -> String {
        format!("{:#?}", M::decode(bytes).unwrap())
    }
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let type_url = line
            .trim()
            .strip_prefix("type_url: \"type.googleapis.com/")
            .and_then(|t| t.strip_suffix("\","));
        match (type_url, lines.get(i + 1).map(|l| l.trim())) {
            (Some(t), Some("value: [")) => {
                let indent = &line[..line.len() - line.trim_start().len()];
                let mut bytes = Vec::new();
                let mut j = i + 2;
                while lines[j].trim() != "]," {
                    bytes.push(lines[j].trim().trim_end_matches(',').parse::<u8>().unwrap());
                    j += 1;
                }
                let decoded = match t {
                    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager" => decode::<HttpConnectionManager>(&bytes),
                    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy" => decode::<TcpProxy>(&bytes),
                    "envoy.extensions.filters.http.router.v3.Router" => decode::<Router>(&bytes),
                    "envoy.extensions.filters.http.fault.v3.HTTPFault" => decode::<envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault>(&bytes),
                    "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit" => decode::<envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit>(&bytes),
                    "envoy.extensions.filters.listener.original_dst.v3.OriginalDst" => decode::<OriginalDst>(&bytes),
                    "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector" => decode::<HttpInspector>(&bytes),
                    "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector" => decode::<TlsInspector>(&bytes),
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" => decode::<HttpProtocolOptions>(&bytes),
                    "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext" => decode::<envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext>(&bytes),
                    "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext" => decode::<envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext>(&bytes),
                    "envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter" => decode::<envoy_types::pb::envoy::extensions::access_loggers::filters::cel::v3::ExpressionFilter>(&bytes),
                    "envoy.extensions.access_loggers.file.v3.FileAccessLog" => decode::<envoy_types::pb::envoy::extensions::access_loggers::file::v3::FileAccessLog>(&bytes),
                    "envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig" => decode::<envoy_types::pb::envoy::extensions::access_loggers::grpc::v3::HttpGrpcAccessLogConfig>(&bytes),
                    "envoy.extensions.access_loggers.grpc.v3.TcpGrpcAccessLogConfig" => decode::<envoy_types::pb::envoy::extensions::access_loggers::grpc::v3::TcpGrpcAccessLogConfig>(&bytes),
                    "envoy.extensions.filters.http.rbac.v3.RBAC" => decode::<envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac>(&bytes),
                    "envoy.extensions.filters.http.rbac.v3.RBACPerRoute" => decode::<envoy_types::pb::envoy::extensions::filters::http::rbac::v3::RbacPerRoute>(&bytes),
                    "envoy.extensions.filters.network.rbac.v3.RBAC" => decode::<envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac>(&bytes),
                    "envoy.extensions.filters.network.direct_response.v3.Config" => decode::<envoy_types::pb::envoy::extensions::filters::network::direct_response::v3::Config>(&bytes),
                    "envoy.extensions.access_loggers.stats.v3.Config" => decode::<envoy_types::pb::envoy::extensions::access_loggers::stats::v3::Config>(&bytes),
                    "envoy.extensions.matching.actions.transform_stat.v3.TransformStat" => decode::<envoy_types::pb::envoy::extensions::matching::actions::transform_stat::v3::TransformStat>(&bytes),
                    "envoy.extensions.matching.common_inputs.stats.v3.StatTagValueInput" => decode::<envoy_types::pb::envoy::extensions::matching::common_inputs::stats::v3::StatTagValueInput>(&bytes),
                    "envoy.config.trace.v3.OpenTelemetryConfig" => decode::<envoy_types::pb::envoy::config::trace::v3::OpenTelemetryConfig>(&bytes),
                    "envoy.extensions.tracers.opentelemetry.resource_detectors.v3.EnvironmentResourceDetectorConfig" => decode::<envoy_types::pb::envoy::extensions::tracers::opentelemetry::resource_detectors::v3::EnvironmentResourceDetectorConfig>(&bytes),
                    other => panic!("the golden renderer cannot decode {other}: add it"),
                };
                out.push(format!("{indent}type_url: \"{t}\","));
                let decoded = sort_maps(&expand_any(&decoded));
                // Telemetry is the same on every chain of its kind: shown in full once per
                // golden file, then by the digest of its text.
                let decoded = if REPEATED_CONFIGS.contains(&t) {
                    let digest = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(decoded.as_bytes()));
                    let first = SHOWN.with(|shown| shown.borrow_mut().insert(digest.clone()));
                    if first {
                        format!("(digest {digest})\n{decoded}")
                    } else {
                        format!("(digest {digest}: as shown above)")
                    }
                } else {
                    decoded
                };
                for (k, l) in decoded.lines().enumerate() {
                    let prefix = if k == 0 { "decoded: " } else { "" };
                    out.push(format!("{indent}{prefix}{l}"));
                }
                i = j + 1;
            }
            _ => {
                out.push(line.to_string());
                i += 1;
            }
        }
    }
    out.join("\n")
}

/// Typed configs repeated on many chains (see `expand_any`).
const REPEATED_CONFIGS: [&str; 3] = [
    "envoy.extensions.access_loggers.stats.v3.Config",
    "envoy.extensions.access_loggers.file.v3.FileAccessLog",
    "envoy.config.trace.v3.OpenTelemetryConfig",
];

thread_local! {
    /// Digests of the repeated configs shown in full in the golden file being rendered.
    static SHOWN: std::cell::RefCell<std::collections::BTreeSet<String>> = Default::default();
}

fn render(snapshot: &Snapshot) -> String {
    SHOWN.with(|shown| shown.borrow_mut().clear());
    let mut out = String::new();
    for t in ResourceType::ALL {
        for (name, r) in snapshot.of(t) {
            let bytes = r.body.value.as_slice();
            let text = match t {
                ResourceType::Cluster => format!("{:#?}", Cluster::decode(bytes).unwrap()),
                ResourceType::Endpoint => {
                    format!("{:#?}", ClusterLoadAssignment::decode(bytes).unwrap())
                }
                ResourceType::Listener => format!("{:#?}", Listener::decode(bytes).unwrap()),
                ResourceType::Route => format!("{:#?}", RouteConfiguration::decode(bytes).unwrap()),
                ResourceType::VirtualHost => format!(
                    "{:#?}",
                    envoy_types::pb::envoy::config::route::v3::VirtualHost::decode(bytes).unwrap()
                ),
                ResourceType::Secret => unreachable!("profile snapshots carry no secrets"),
            };
            out.push_str(&format!(
                "=== {} {name} ({})\n{}\n",
                t.short(),
                r.version_string(),
                sort_maps(&expand_any(&text))
            ));
        }
    }
    out
}

/// Debug text with the entries of every map (Envoy's types keep protobuf maps in
/// `HashMap`s, printed in no fixed order) sorted, so golden files do not flap. A map opens
/// with a line ending `: {` (a struct names its type before the brace); its entries are
/// the lines one level deeper, each from a line starting with a quoted key.
fn sort_maps(text: &str) -> String {
    fn indent(line: &str) -> usize {
        line.len() - line.trim_start().len()
    }
    fn sorted(lines: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < lines.len() {
            let line = lines[i];
            out.push(line.to_string());
            i += 1;
            if !line.trim_end().ends_with(": {") {
                continue;
            }
            let depth = indent(line);
            let end = (i..lines.len())
                .find(|&j| indent(lines[j]) == depth && lines[j].trim_start().starts_with('}'))
                .expect("a map closes");
            let mut entries: Vec<Vec<String>> = Vec::new();
            let mut start = i;
            for j in i + 1..=end {
                if j == end
                    || (indent(lines[j]) == depth + 4 && lines[j].trim_start().starts_with('"'))
                {
                    entries.push(sorted(&lines[start..j]));
                    start = j;
                }
            }
            entries.sort();
            out.extend(entries.into_iter().flatten());
            i = end;
        }
        out
    }
    let lines: Vec<&str> = text.lines().collect();
    sorted(&lines).join("\n")
}

fn check_golden(file: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(file);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} is missing: run with UPDATE_GOLDEN=1", path.display()));
    assert!(expected == actual, "{file} differs from the translation; if the change is intended, rerun with UPDATE_GOLDEN=1 and review the diff");
}

/// Status of every policy from a translation of the whole index, as the operator's status
/// pass reads it (after the translator's update).
fn statuses(index: &mut Index) -> Vec<weir_core::status::PolicyStatus> {
    index.mark_all_dirty();
    let mut translator = weir_core::translate::Translator::new();
    translator.update(index);
    policy_statuses(index, &translator, AckSummary::default())
}

#[test]
fn golden_explicit_and_transparent() {
    for (file, capture) in [
        ("explicit.txt", Capture::Explicit { port: 15001 }),
        ("transparent.txt", Capture::Transparent),
    ] {
        let mut index = Index::new();
        apply(&mut index, bookinfo());
        let mut snapshots = SnapshotBuilder::new();
        snapshots.update(&mut index);
        let snapshot = snapshots.snapshot(ProxyProfile::new(capture, MtlsMode::Strict));
        check_golden(file, &render(&snapshot));
    }
}

/// Every resilience and traffic-shaping field of a policy, as a user writes it.
const RESILIENCE_POLICY: &str = r#"
targetRef: {service: reviews}
subsets:
- {name: v1, labels: {version: v1}}
- {name: v2, labels: {version: v2}}
connectionPool:
  maxConnections: 100
  maxPendingRequests: 10
  maxRequests: 200
  maxRequestsPerConnection: 50
  connectTimeout: 250ms
  idleTimeout: 1m
  retryBudget: {percent: 20, minRetryConcurrency: 2}
outlierDetection:
  consecutiveErrors: 3
  consecutiveGatewayErrors: 2
  interval: 5s
  baseEjectionTime: 30s
  maxEjectionPercent: 50
loadBalancer:
  algorithm: RingHash
  consistentHash: {cookie: {name: session, ttl: 1h, path: /}}
localRateLimit: {requests: 100, fillInterval: 1s}
http:
- name: chaos
  matches: [{path: {type: Prefix, value: /chaos}}]
  destinations: [{subset: v1}]
  fault:
    delay: {fixedDelay: 200ms, percent: 50}
    abort: {httpStatus: 503, percent: 30}
    headers: [{name: x-test-traffic, type: Exact, value: "yes"}]
- name: shadowed
  destinations: [{subset: v1, weight: 90}, {subset: v2, weight: 10}]
  mirror: {service: reviews-shadow, percent: 25}
"#;

#[test]
fn golden_resilience_fields() {
    let spec: weir_api::TrafficPolicySpec =
        serde_json::from_value(weir_core::yaml::document(RESILIENCE_POLICY).unwrap()).unwrap();
    let mut objects: Vec<Object> = bookinfo()
        .into_iter()
        .filter(|o| !matches!(o, Object::TrafficPolicy(_)))
        .collect();
    objects.push(Object::Service(mk_service(
        "default",
        "reviews-shadow",
        "10.96.0.12",
        &[9080],
    )));
    objects.push(Object::TrafficPolicy(mk_policy("default", "reviews", spec)));
    let mut index = Index::new();
    apply(&mut index, objects);
    let mut snapshots = SnapshotBuilder::new();
    snapshots.update(&mut index);
    let profile = ProxyProfile::new(Capture::Explicit { port: 15001 }, MtlsMode::Strict);
    let snapshot = snapshots.snapshot(profile);
    snapshots.check(profile, &snapshot).unwrap();
    check_golden("resilience.txt", &render(&snapshot));
}

/// A Service with ports (name, number, appProtocol); `ip` None is headless, and an
/// `external` name makes it an ExternalName Service.
fn svc(
    ns: &str,
    name: &str,
    ip: Option<&str>,
    external: Option<&str>,
    ports: &[(&str, u16, Option<&str>)],
) -> Object {
    use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
    Object::Service(Service {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: external.map(|_| "ExternalName".to_string()),
            external_name: external.map(str::to_string),
            cluster_ip: if external.is_some() {
                None
            } else {
                Some(ip.unwrap_or("None").into())
            },
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p, app)| ServicePort {
                        name: Some(n.to_string()),
                        port: i32::from(*p),
                        app_protocol: app.map(str::to_string),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// One Service per protocol choice and per rule of the detection order, with policies
/// that split TCP, route TLS by SNI and match gRPC methods.
fn protocols() -> Vec<Object> {
    let ns = "shop";
    let mut objects = vec![
        svc(
            ns,
            "web",
            Some("10.96.1.1"),
            None,
            &[("main", 80, Some("http"))],
        ),
        svc(
            ns,
            "api",
            Some("10.96.1.2"),
            None,
            &[("http2-api", 8080, None)],
        ),
        svc(
            ns,
            "greeter",
            Some("10.96.1.3"),
            None,
            &[("rpc", 50051, Some("grpc"))],
        ),
        svc(
            ns,
            "cache",
            Some("10.96.1.4"),
            None,
            &[("redis", 6379, None)],
        ),
        svc(
            ns,
            "ldap",
            Some("10.96.1.5"),
            None,
            &[("secure", 636, Some("tls"))],
        ),
        svc(
            ns,
            "custom",
            Some("10.96.1.6"),
            None,
            &[("data", 9000, Some("example.com/custom"))],
        ),
        svc(
            ns,
            "legacy",
            Some("10.96.1.7"),
            None,
            &[("web", 8081, None)],
        ),
        svc(ns, "db", Some("10.96.1.8"), None, &[("", 3306, None)]),
        svc(
            ns,
            "chat",
            Some("10.96.1.9"),
            None,
            &[("ws", 8082, Some("kubernetes.io/ws"))],
        ),
        svc(ns, "kafka", None, None, &[("tcp-broker", 9092, None)]),
        svc(
            ns,
            "payments",
            None,
            Some("api.example.com."),
            &[("https", 443, None)],
        ),
        Object::Pod(mk_pod(ns, "cache-1", &[("version", "v1")])),
        Object::Pod(mk_pod(ns, "cache-2", &[("version", "v2")])),
        Object::EndpointSlice(mk_slice(
            ns,
            "cache-x",
            "cache",
            "redis",
            6379,
            &[("10.0.4.1", "cache-1"), ("10.0.4.2", "cache-2")],
        )),
    ];
    let mut split = mk_policy_spec("cache", &[("v1", 70), ("v2", 30)]);
    split.tcp = vec![weir_api::TcpRule {
        name: Some("split".into()),
        sni_hosts: vec![],
        destinations: split.http.remove(0).destinations,
    }];
    objects.push(Object::TrafficPolicy(mk_policy(ns, "cache", split)));
    let mut by_sni = mk_policy_spec("ldap", &[]);
    by_sni.http.clear();
    by_sni.tcp = vec![weir_api::TcpRule {
        name: Some("internal".into()),
        sni_hosts: vec!["internal.example.com".into()],
        destinations: vec![Destination {
            service: Some("custom".into()),
            ..Default::default()
        }],
    }];
    objects.push(Object::TrafficPolicy(mk_policy(ns, "ldap", by_sni)));
    let mut methods = mk_policy_spec("greeter", &[("v1", 100)]);
    methods.http[0].matches = vec![HttpMatch {
        grpc: Some(weir_api::GrpcMatch {
            match_type: weir_api::GrpcMatchType::Exact,
            service: Some("weir.test.Echo".into()),
            method: Some("Other".into()),
        }),
        ..Default::default()
    }];
    methods.http[0].retries = Some(Retries {
        attempts: 2,
        per_try_timeout: None,
        retry_on: vec![],
    });
    objects.push(Object::TrafficPolicy(mk_policy(ns, "greeter", methods)));
    objects
}

#[test]
fn golden_protocols_in_both_modes_with_the_decisions() {
    for (file, capture) in [
        ("protocols-explicit.txt", Capture::Explicit { port: 15001 }),
        ("protocols-transparent.txt", Capture::Transparent),
    ] {
        let mut index = Index::new();
        apply(&mut index, protocols());
        let mut snapshots = SnapshotBuilder::new();
        snapshots.update(&mut index);
        let profile = ProxyProfile::new(capture, MtlsMode::Strict);
        let snapshot = snapshots.snapshot(profile);
        snapshots.check(profile, &snapshot).unwrap();
        let decisions: Vec<String> = snapshots
            .translator()
            .port_protocols()
            .iter()
            .map(|p| {
                format!(
                    "{}:{} {} ({:?})",
                    p.service,
                    p.port,
                    p.protocol.as_str(),
                    p.decided_by
                )
            })
            .collect();
        let text = format!("{}\n{}", decisions.join("\n"), render(&snapshot));
        check_golden(file, &text);
    }
    let statuses = statuses(&mut {
        let mut index = Index::new();
        apply(&mut index, protocols());
        index
    });
    for s in statuses {
        assert!(s.conditions[0].status && s.conditions[1].status, "{s:?}");
    }
}

#[test]
fn output_does_not_depend_on_the_order_of_events() {
    let profile = ProxyProfile::new(Capture::Transparent, MtlsMode::Strict);
    let build = |objects: Vec<Object>| {
        let mut index = Index::new();
        apply(&mut index, objects);
        let mut snapshots = SnapshotBuilder::new();
        snapshots.update(&mut index);
        snapshots.snapshot(profile)
    };
    let forward = build(bookinfo());
    let mut reversed = bookinfo();
    reversed.reverse();
    let backward = build(reversed);
    for t in ResourceType::ALL {
        assert_eq!(forward.types[t].version, backward.types[t].version);
    }
    assert_eq!(render(&forward), render(&backward));
}

#[test]
fn an_unchanged_input_changes_nothing() {
    let mut index = Index::new();
    apply(&mut index, bookinfo());
    let mut snapshots = SnapshotBuilder::new();
    snapshots.update(&mut index);
    snapshots.snapshot(ProxyProfile::new(Capture::Transparent, MtlsMode::Strict));
    apply(&mut index, bookinfo());
    let (changes, published) = snapshots.update(&mut index);
    assert!(changes.is_empty(), "{changes:?}");
    assert!(published.is_empty());
}

#[test]
fn an_endpoint_change_touches_only_that_services_load_assignments() {
    let mut index = Index::new();
    apply(&mut index, bookinfo());
    let mut snapshots = SnapshotBuilder::new();
    snapshots.update(&mut index);
    let profile = ProxyProfile::new(Capture::Explicit { port: 15001 }, MtlsMode::Strict);
    let before = snapshots.snapshot(profile);

    // reviews-v2's pod leaves the slice.
    let slice = mk_slice(
        "default",
        "reviews-abc",
        "reviews",
        "http",
        8080,
        &[("10.0.0.1", "reviews-v1")],
    );
    index.apply(Event::apply(Object::EndpointSlice(slice)));
    let (changes, published) = snapshots.update(&mut index);
    assert!(
        changes.clusters.is_empty() && !changes.ports_changed,
        "{changes:?}"
    );
    assert_eq!(
        changes
            .endpoints
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>(),
        vec![
            "outbound|9080||reviews.default.svc.cluster.local",
            "outbound|9080|v2|reviews.default.svc.cluster.local",
        ],
        "the whole-service and v2 assignments changed; v1's did not"
    );
    let (_, after) = &published[0];
    let after = after.as_ref().unwrap();
    assert_eq!(after.generation, before.generation + 1);
    for t in [
        ResourceType::Cluster,
        ResourceType::Listener,
        ResourceType::Route,
    ] {
        assert_eq!(
            after.types[t].version, before.types[t].version,
            "{t:?} version moved"
        );
        assert!(
            std::sync::Arc::ptr_eq(&after.types[t], &before.types[t]),
            "{t:?} was rebuilt"
        );
    }
    assert_eq!(after.types[ResourceType::Endpoint].changed.len(), 2);
    snapshots.check(profile, after).unwrap();
}

#[test]
fn a_pod_relabel_moves_it_between_subsets() {
    let mut index = Index::new();
    apply(&mut index, bookinfo());
    let mut snapshots = SnapshotBuilder::new();
    snapshots.update(&mut index);
    index.apply(Event::apply(Object::Pod(mk_pod(
        "default",
        "reviews-v2",
        &[("version", "v1")],
    ))));
    let (changes, _) = snapshots.update(&mut index);
    assert_eq!(
        changes.endpoints.len(),
        2,
        "v1 gains the pod, v2 loses it: {changes:?}"
    );
}

fn with_created(mut o: weir_api::TrafficPolicy, secs: i64) -> Object {
    o.metadata.creation_timestamp = Some(Time(
        k8s_openapi::jiff::Timestamp::from_second(secs).unwrap(),
    ));
    Object::TrafficPolicy(o)
}

#[test]
fn the_older_of_two_policies_on_a_port_wins_and_the_other_is_conflicted() {
    let mut index = Index::new();
    apply(&mut index, bookinfo());
    // "aaa" sorts first by name but is newer: age decides.
    let newer = mk_policy("default", "aaa", mk_policy_spec("reviews", &[("v1", 100)]));
    let older = mk_policy(
        "default",
        "reviews",
        mk_policy_spec("reviews", &[("v1", 50), ("v2", 50)]),
    );
    apply(
        &mut index,
        vec![
            with_created(newer, 2_000_000),
            with_created(older, 1_000_000),
        ],
    );
    let statuses = statuses(&mut index);
    let aaa = statuses.iter().find(|s| s.name == "aaa").unwrap();
    assert_eq!(aaa.accepted().reason, Reason::Conflicted);
    assert!(
        aaa.accepted().message.contains("default/reviews"),
        "{}",
        aaa.accepted().message
    );
    assert!(!aaa.active);
    let reviews = statuses.iter().find(|s| s.name == "reviews").unwrap();
    assert!(reviews.accepted().status && reviews.active);
}

#[test]
fn a_deleted_then_recreated_target_moves_resolved_refs_false_then_true() {
    let mut index = Index::new();
    apply(&mut index, bookinfo());
    let resolved = |index: &mut Index| {
        let s = statuses(index)
            .into_iter()
            .find(|s| s.name == "reviews")
            .unwrap();
        (s.conditions[1].status, s.conditions[1].reason)
    };
    assert_eq!(resolved(&mut index), (true, Reason::ResolvedRefs));
    index.apply(Event::Delete(
        weir_core::Kind::Service,
        ObjectKey::new("default", "reviews"),
    ));
    assert_eq!(resolved(&mut index), (false, Reason::TargetNotFound));
    index.apply(Event::apply(Object::Service(mk_service(
        "default",
        "reviews",
        "10.96.0.10",
        &[9080],
    ))));
    assert_eq!(resolved(&mut index), (true, Reason::ResolvedRefs));
}

#[test]
fn a_missing_backend_service_is_reported_with_its_field() {
    let mut index = Index::new();
    apply(&mut index, bookinfo());
    let mut spec = mk_policy_spec("ratings", &[]);
    spec.http = vec![mk_rule(vec![Destination {
        service: Some("ratings-v2".into()),
        ..Default::default()
    }])];
    apply(
        &mut index,
        vec![Object::TrafficPolicy(mk_policy("default", "ratings", spec))],
    );
    let s = statuses(&mut index)
        .into_iter()
        .find(|s| s.name == "ratings")
        .unwrap();
    assert_eq!(s.conditions[1].reason, Reason::BackendNotFound);
    assert!(
        s.conditions[1]
            .message
            .starts_with("spec.http[0].destinations[0].service"),
        "{}",
        s.conditions[1].message
    );
}

#[test]
fn an_invalid_edit_keeps_serving_the_last_valid_version() {
    let mut index = Index::new();
    apply(&mut index, bookinfo());
    let mut snapshots = SnapshotBuilder::new();
    snapshots.update(&mut index);
    let profile = ProxyProfile::new(Capture::Transparent, MtlsMode::Strict);
    let before = snapshots.snapshot(profile);
    let bad = mk_policy(
        "default",
        "reviews",
        mk_policy_spec("reviews", &[("v1", 70), ("v2", 20)]),
    );
    apply(&mut index, vec![Object::TrafficPolicy(bad)]);
    let (changes, published) = snapshots.update(&mut index);
    assert!(
        changes.is_empty() && published.is_empty(),
        "nothing is pushed for an invalid edit: {changes:?}"
    );
    let s = statuses(&mut index)
        .into_iter()
        .find(|s| s.name == "reviews")
        .unwrap();
    assert_eq!(s.accepted().reason, Reason::InvalidWeights);
    assert!(s.active, "the previous version stays programmed");
    let now = snapshots.snapshot(profile);
    for t in ResourceType::ALL {
        assert_eq!(now.types[t].version, before.types[t].version);
    }
}

#[test]
fn a_policy_echoed_back_with_the_same_generation_dirties_nothing() {
    let mut index = Index::new();
    apply(&mut index, bookinfo());
    let mut policy = mk_policy(
        "default",
        "canary",
        mk_policy_spec("reviews", &[("v1", 50), ("v2", 50)]),
    );
    policy.metadata.generation = Some(3);
    index.apply(Event::apply(Object::TrafficPolicy(policy.clone())));
    assert!(!index.take_dirty().is_empty());

    // What a status write looks like from the watch: same generation, new status.
    let mut echoed = policy.clone();
    echoed.status = Some(Default::default());
    index.apply(Event::apply(Object::TrafficPolicy(echoed)));
    assert!(
        index.take_dirty().is_empty(),
        "a status-only change retranslated"
    );

    let mut edited = policy;
    edited.metadata.generation = Some(4);
    edited.spec = mk_policy_spec("reviews", &[("v1", 10), ("v2", 90)]);
    index.apply(Event::apply(Object::TrafficPolicy(edited)));
    assert!(!index.take_dirty().is_empty(), "a spec change was ignored");
}

#[test]
fn http_rules_on_a_tcp_port_are_accepted_with_a_note_that_says_why_they_do_not_apply() {
    let mut index = Index::new();
    apply(&mut index, protocols());
    let spec = mk_policy_spec("db", &[("v1", 100)]);
    apply(
        &mut index,
        vec![Object::TrafficPolicy(mk_policy("shop", "db", spec))],
    );
    let status = statuses(&mut index)
        .into_iter()
        .find(|s| s.name == "db")
        .unwrap();
    let accepted = status.accepted();
    assert!(accepted.status, "{accepted:?}");
    assert!(
        accepted
            .message
            .contains("spec.http does not apply to port 3306 (tcp, as a server-first port)"),
        "{}",
        accepted.message
    );
}

/// A meshed pod (injected, with a service account) in `ns`.
fn meshed_pod(ns: &str, name: &str, sa: &str, labels: &[(&str, &str)]) -> Object {
    Object::Pod(weir_core::testing::mk_meshed_pod(ns, name, sa, labels))
}

/// reviews: two meshed pods (service accounts reviews and reviews-canary) and one without a
/// sidecar; ratings in a namespace labelled DISABLE.
fn mtls_mesh() -> Vec<Object> {
    let mut legacy_ns = k8s_openapi::api::core::v1::Namespace::default();
    legacy_ns.metadata.name = Some("legacy".into());
    legacy_ns.metadata.labels = Some(
        [("weir.dev/mtls-mode".to_string(), "DISABLE".to_string())]
            .into_iter()
            .collect(),
    );
    vec![
        Object::Service(mk_service("shop", "reviews", "10.96.2.1", &[9080])),
        meshed_pod("shop", "reviews-1", "reviews", &[("version", "v1")]),
        meshed_pod("shop", "reviews-2", "reviews-canary", &[("version", "v2")]),
        Object::Pod(mk_pod("shop", "reviews-3", &[("version", "v1")])),
        Object::EndpointSlice(mk_slice(
            "shop",
            "reviews-x",
            "reviews",
            "http",
            8080,
            &[
                ("10.0.2.1", "reviews-1"),
                ("10.0.2.2", "reviews-2"),
                ("10.0.2.3", "reviews-3"),
            ],
        )),
        Object::Namespace(legacy_ns),
        Object::Service(mk_service("legacy", "ratings", "10.96.2.2", &[9080])),
        meshed_pod("legacy", "ratings-1", "ratings", &[]),
        Object::EndpointSlice(mk_slice(
            "legacy",
            "ratings-x",
            "ratings",
            "http",
            8080,
            &[("10.0.3.1", "ratings-1")],
        )),
    ]
}

#[test]
fn golden_mtls_origination_and_inbound_per_mode() {
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    let mut index = Index::new();
    apply(&mut index, mtls_mesh());
    let mut snapshots = SnapshotBuilder::new();
    snapshots.update(&mut index);
    let strict = ProxyProfile::new(Capture::Transparent, MtlsMode::Strict);
    let snapshot = snapshots.snapshot(strict);
    snapshots.check(strict, &snapshot).unwrap();
    check_golden("mtls-strict.txt", &render(&snapshot));

    // Only the sidecar pods' endpoints are marked for mTLS, and the cluster accepts exactly
    // their identities; a DISABLE namespace's pods are spoken to in plaintext.
    let cluster = Cluster::decode(
        snapshot.of(ResourceType::Cluster)["outbound|9080||reviews.shop.svc.cluster.local"]
            .body
            .value
            .as_slice(),
    )
    .unwrap();
    let text = expand_any(&format!("{cluster:#?}"));
    assert!(
        text.contains("spiffe://cluster.local/ns/shop/sa/reviews\""),
        "{text}"
    );
    assert!(
        text.contains("spiffe://cluster.local/ns/shop/sa/reviews-canary\""),
        "{text}"
    );
    let ratings = Cluster::decode(
        snapshot.of(ResourceType::Cluster)["outbound|9080||ratings.legacy.svc.cluster.local"]
            .body
            .value
            .as_slice(),
    )
    .unwrap();
    assert!(
        ratings.transport_socket_matches.is_empty(),
        "DISABLE: plaintext"
    );

    // What each mode accepts inbound: mesh mTLS (HTTP and TCP); PERMISSIVE also anything
    // else; DISABLE only plaintext.
    let mut chains = |mode| {
        let profile = ProxyProfile::new(Capture::Transparent, mode);
        let snapshot = snapshots.snapshot(profile);
        let inbound = Listener::decode(
            snapshot.of(ResourceType::Listener)["inbound"]
                .body
                .value
                .as_slice(),
        )
        .unwrap();
        inbound
            .filter_chains
            .iter()
            .map(|c| c.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        chains(MtlsMode::Strict),
        ["inbound_mtls_http", "inbound_mtls"]
    );
    assert_eq!(
        chains(MtlsMode::Permissive),
        ["inbound_mtls_http", "inbound_mtls", "inbound"]
    );
    assert_eq!(chains(MtlsMode::Disable), ["inbound"]);
}

#[test]
fn a_zone_profile_prefers_its_zone_except_for_hashing_clusters() {
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    let mut slice = mk_slice(
        "default",
        "reviews-abc",
        "reviews",
        "http",
        8080,
        &[("10.0.0.1", "reviews-v1"), ("10.0.0.2", "reviews-v2")],
    );
    for (ep, zone) in slice.endpoints.iter_mut().zip(["zone-a", "zone-b"]) {
        ep.zone = Some(zone.into());
    }
    let mut index = Index::new();
    apply(
        &mut index,
        vec![
            Object::Service(mk_service("default", "reviews", "10.96.0.10", &[9080])),
            Object::EndpointSlice(slice),
        ],
    );
    let mut snapshots = SnapshotBuilder::new();
    snapshots.update(&mut index);
    let profile = ProxyProfile::new(Capture::Explicit { port: 15001 }, MtlsMode::Strict)
        .in_zone(weir_core::Zone::new("zone-a"));
    let priorities = |snapshot: &Snapshot| -> Vec<(String, u32)> {
        let r = &snapshot.of(ResourceType::Endpoint)
            ["outbound|9080||reviews.default.svc.cluster.local"];
        let cla = ClusterLoadAssignment::decode(r.body.value.as_slice()).unwrap();
        cla.endpoints
            .iter()
            .map(|g| (g.locality.clone().unwrap_or_default().zone, g.priority))
            .collect()
    };
    let snapshot = snapshots.snapshot(profile);
    assert_eq!(
        priorities(&snapshot),
        [("zone-a".to_string(), 0), ("zone-b".to_string(), 1)]
    );
    // A hashing balancer keeps one ring for every caller: no zone preference.
    let spec: weir_api::TrafficPolicySpec = serde_json::from_value(serde_json::json!({
        "targetRef": {"service": "reviews"},
        "loadBalancer": {"algorithm": "RingHash", "consistentHash": {"header": "x-user"}},
    }))
    .unwrap();
    index.apply(Event::apply(Object::TrafficPolicy(mk_policy(
        "default", "reviews", spec,
    ))));
    snapshots.update(&mut index);
    let snapshot = snapshots.snapshot(profile);
    assert_eq!(
        priorities(&snapshot),
        [("zone-a".to_string(), 0), ("zone-b".to_string(), 0)]
    );
    snapshots.check(profile, &snapshot).unwrap();
}

#[test]
fn authorization_notes_name_ports_the_service_lacks_tcp_ports_and_pods_without_a_sidecar() {
    let mut index = Index::new();
    let svc = mk_service("shop", "api", "10.96.0.50", &[8080, 7000]);
    let slice = mk_slice(
        "shop",
        "api-1",
        "api",
        "http",
        8080,
        &[("10.0.5.1", "api-0")],
    );
    // api-0 is known and carries no sidecar.
    let pod = mk_pod("shop", "api-0", &[("app", "api")]);
    let spec = weir_api::TrafficPolicySpec {
        target_ref: weir_api::TargetRef {
            service: "api".into(),
            port: None,
        },
        authorization: Some(weir_api::Authorization {
            allow: vec![weir_api::AuthorizationRule {
                paths: vec!["/api".into()],
                ports: vec![
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(7000),
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(9999),
                ],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    apply(
        &mut index,
        vec![
            Object::Service(svc),
            Object::EndpointSlice(slice),
            Object::Pod(pod),
            Object::TrafficPolicy(mk_policy("shop", "api-authz", spec)),
        ],
    );
    let s = statuses(&mut index)
        .into_iter()
        .find(|s| s.name == "api-authz")
        .unwrap();
    let accepted = &s.conditions[0];
    assert!(accepted.status, "{}", accepted.message);
    for expected in [
        "names port 9999, which the target Service does not have",
        "port 7000 is not HTTP: it allows nothing there",
        "1 of the 1 pods of Service shop/api carry no sidecar (e.g. api-0)",
    ] {
        assert!(
            accepted.message.contains(expected),
            "{expected:?} not in {:?}",
            accepted.message
        );
    }
}
