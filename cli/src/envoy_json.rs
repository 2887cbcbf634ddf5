//! Envoy resources as protobuf JSON (the form of Envoy's own config dump), `Any`s expanded,
//! from the descriptors that build.rs compiled out of the `envoy-types` protos.

use anyhow::Context;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};

static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy-descriptors.bin"));

fn pool() -> &'static DescriptorPool {
    static POOL: std::sync::OnceLock<DescriptorPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(DESCRIPTORS).expect("build.rs wrote a descriptor set")
    })
}

/// `bytes`, a message of type `type_url` (or its full name), as JSON.
pub fn to_json(type_url: &str, bytes: &[u8]) -> anyhow::Result<serde_json::Value> {
    let name = type_url.rsplit('/').next().unwrap_or(type_url);
    let descriptor = pool()
        .get_message_by_name(name)
        .with_context(|| format!("no descriptor for {name}"))?;
    let message =
        DynamicMessage::decode(descriptor, bytes).with_context(|| format!("decoding a {name}"))?;
    let options = SerializeOptions::new().skip_default_fields(true);
    let mut out = serde_json::Serializer::new(Vec::new());
    message
        .serialize_with_options(&mut out, &options)
        .with_context(|| format!("a {name} as JSON"))?;
    Ok(serde_json::from_slice(&out.into_inner())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
        tcp_proxy, TcpProxy,
    };
    use envoy_types::pb::google::protobuf::Any;
    use prost::{Message, Name};

    #[test]
    fn a_listener_prints_with_its_filter_config_expanded() {
        let proxy = TcpProxy {
            stat_prefix: "outbound".into(),
            cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster("db".into())),
            ..Default::default()
        };
        let listener = Listener {
            name: "outbound".into(),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: "envoy.filters.network.tcp_proxy".into(),
                    config_type: Some(filter::ConfigType::TypedConfig(Any {
                        type_url: TcpProxy::type_url(),
                        value: proxy.encode_to_vec(),
                    })),
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let json = to_json(&Listener::type_url(), &listener.encode_to_vec()).unwrap();
        let typed = &json["filterChains"][0]["filters"][0]["typedConfig"];
        assert_eq!(
            typed["@type"],
            "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
        );
        assert_eq!(typed["cluster"], "db");
        assert_eq!(json["name"], "outbound");
    }

    /// Every resource the translator serves, with telemetry, tracing, mTLS, authorization
    /// and every resilience field on, prints as JSON: the descriptor set holds every type
    /// the operator puts in an `Any`.
    #[test]
    fn everything_the_operator_serves_prints() {
        use weir_core::translate::telemetry::{Telemetry, TracingConfig};
        use weir_core::{
            Capture, Event, Index, ObjectKey, ProxyProfile, ResourceType, SnapshotBuilder,
            WorkloadListeners,
        };
        let mut index = Index::new();
        for doc in weir_core::yaml::documents(MESH) {
            let object = weir_core::index::decode_document(doc.unwrap())
                .unwrap()
                .unwrap();
            index.apply(Event::apply(object));
        }
        let mut builder = SnapshotBuilder::new();
        builder.set_telemetry(Telemetry {
            tracing: Some(TracingConfig {
                host: "jaeger.observability".into(),
                port: 4317,
                sampling_percent: 1.0,
            }),
            ..Default::default()
        });
        builder.update(&mut index);
        let mut printed = 0;
        for capture in [Capture::Transparent, Capture::Explicit { port: 15001 }] {
            let profile = ProxyProfile::new(capture, weir_api::MtlsMode::Strict);
            let snapshot = builder.snapshot(profile);
            let workload = index.workload(&ObjectKey::new("shop", "reviews-v1"));
            let mut workloads = WorkloadListeners::new(builder.translator().trust_domain());
            let listeners =
                workloads.get(profile, &workload, &snapshot.types[ResourceType::Listener]);
            let routes = workloads.routes(profile, &workload, &snapshot.types[ResourceType::Route]);
            let types = [
                (ResourceType::Listener, &listeners.resources),
                (ResourceType::Route, &routes.resources),
                (ResourceType::Cluster, snapshot.of(ResourceType::Cluster)),
                (ResourceType::Endpoint, snapshot.of(ResourceType::Endpoint)),
            ];
            for (t, resources) in types {
                for r in resources.values() {
                    to_json(t.type_url(), &r.body.value)
                        .unwrap_or_else(|e| panic!("{} {}: {e:#}", t.short(), r.name));
                    printed += 1;
                }
            }
        }
        assert!(printed > 20, "{printed}");
    }

    const MESH: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  ports:
  - {name: http, port: 9080}
  - {name: grpc, port: 50051, appProtocol: grpc}
  - {name: tcp-db, port: 5432}
  - {name: tls-x, port: 8443}
  - {name: other, port: 7000}
---
apiVersion: v1
kind: Pod
metadata:
  name: reviews-v1
  namespace: shop
  labels: {app: reviews, version: v1}
  annotations: {weir.dev/injected: "true"}
spec: {serviceAccountName: reviews, containers: [{name: app, image: app}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: reviews-1, namespace: shop, labels: {kubernetes.io/service-name: reviews}}
addressType: IPv4
ports:
- {name: http, port: 9080}
- {name: grpc, port: 50051}
- {name: tcp-db, port: 5432}
- {name: tls-x, port: 8443}
- {name: other, port: 7000}
endpoints:
- addresses: [10.0.0.1]
  conditions: {ready: true}
  zone: zone-a
  targetRef: {kind: Pod, name: reviews-v1, namespace: shop}
---
apiVersion: weir.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: reviews, namespace: shop}
spec:
  targetRef: {service: reviews}
  subsets:
  - {name: v1, labels: {version: v1}}
  connectionPool: {maxConnections: 10, retryBudget: {percent: 20}}
  outlierDetection: {consecutiveErrors: 3}
  loadBalancer: {algorithm: RingHash, consistentHash: {header: x-user}}
  localRateLimit: {requests: 10, fillInterval: 1s}
  http:
  - name: all
    matches: [{path: {type: Prefix, value: /a}, headers: [{name: x, type: RegularExpression, value: "a.*"}]}]
    fault: {delay: {fixedDelay: 1s, percent: 5}, abort: {httpStatus: 503, percent: 1}}
    retries: {attempts: 2}
    timeout: 3s
    mirror: {subset: v1, percent: 5}
    requestHeaders: {set: [{name: x-a, value: b}]}
    destinations: [{subset: v1}]
  tcp:
  - sniHosts: [x.example.com]
    destinations: [{subset: v1}]
  authorization:
    mode: Enforce
    allow:
    - {name: web, serviceAccounts: [shop/web], paths: [/a], methods: [GET]}
    deny:
    - {name: robots, namespaces: [robots]}
"#;
}
