//! `mk_*` builders for tests and benchmarks: Kubernetes objects as a user would write them,
//! with only the fields that matter set.

use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::BTreeMap;
use weir_api::{Destination, HttpRule, Subset, TargetRef, TrafficPolicy, TrafficPolicySpec};

fn meta(ns: &str, name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(ns.into()),
        name: Some(name.into()),
        labels: (!labels.is_empty()).then(|| {
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        }),
        ..Default::default()
    }
}

/// Applies every document of `yaml` to `index` (the documents must decode).
pub fn apply_yaml(index: &mut crate::Index, yaml: &str) {
    for doc in crate::yaml::documents(yaml) {
        let object = crate::index::decode_document(doc.expect("a YAML document"))
            .expect("a document of a kind the index reads")
            .expect("a document of a kind the index keeps");
        index.apply(crate::Event::apply(object));
    }
}

/// A consumer route: namespace `consumer`'s HTTPRoute for Service `default/reviews`
/// (port 9080) that sets the response header `x-consumer: yes`.
pub const CONSUMER_ROUTE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: add-header, namespace: consumer, generation: 1}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, namespace: default}]
  rules:
  - filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier: {set: [{name: x-consumer, value: "yes"}]}
    backendRefs: [{name: reviews, namespace: default, port: 9080}]
"#;

/// A ClusterIP Service with named ports (`http` for the first, `p<port>` for the others).
pub fn mk_service(ns: &str, name: &str, cluster_ip: &str, ports: &[u16]) -> Service {
    Service {
        metadata: meta(ns, name, &[]),
        spec: Some(ServiceSpec {
            cluster_ip: Some(cluster_ip.into()),
            ports: Some(
                ports
                    .iter()
                    .enumerate()
                    .map(|(i, p)| ServicePort {
                        name: Some(port_name(i, *p)),
                        port: i32::from(*p),
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The name `mk_service` gives its i-th port.
pub fn port_name(i: usize, port: u16) -> String {
    if i == 0 {
        "http".into()
    } else {
        format!("p{port}")
    }
}

/// A Pod with labels.
pub fn mk_pod(ns: &str, name: &str, labels: &[(&str, &str)]) -> Pod {
    Pod {
        metadata: meta(ns, name, labels),
        ..Default::default()
    }
}

/// A meshed Pod: injected (annotation `weir.dev/injected`), running as service account
/// `sa`, with labels.
pub fn mk_meshed_pod(ns: &str, name: &str, sa: &str, labels: &[(&str, &str)]) -> Pod {
    let mut pod = mk_pod(ns, name, labels);
    pod.spec = Some(k8s_openapi::api::core::v1::PodSpec {
        service_account_name: Some(sa.into()),
        ..Default::default()
    });
    pod.metadata.annotations = Some(
        [(
            crate::index::INJECTED_ANNOTATION.to_string(),
            "0.1.0".to_string(),
        )]
        .into_iter()
        .collect(),
    );
    pod
}

/// An EndpointSlice of `service` with one port named `port_name` and ready endpoints
/// (address, pod name).
pub fn mk_slice(
    ns: &str,
    name: &str,
    service: &str,
    port_name: &str,
    port: u16,
    endpoints: &[(&str, &str)],
) -> EndpointSlice {
    EndpointSlice {
        metadata: meta(ns, name, &[("kubernetes.io/service-name", service)]),
        address_type: "IPv4".into(),
        ports: Some(vec![EndpointPort {
            name: Some(port_name.into()),
            port: Some(i32::from(port)),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        endpoints: endpoints
            .iter()
            .map(|(ip, pod)| Endpoint {
                addresses: vec![ip.to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    ..Default::default()
                }),
                target_ref: Some(ObjectReference {
                    kind: Some("Pod".into()),
                    name: Some(pod.to_string()),
                    namespace: Some(ns.into()),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
    }
}

/// A rule sending everything to the given destinations.
pub fn mk_rule(destinations: Vec<Destination>) -> HttpRule {
    HttpRule {
        destinations,
        ..Default::default()
    }
}

/// A spec targeting `service` that splits all traffic over subsets `(name, weight)`, each
/// subset selecting `version: <name>`.
pub fn mk_policy_spec(service: &str, split: &[(&str, u32)]) -> TrafficPolicySpec {
    TrafficPolicySpec {
        target_ref: TargetRef {
            service: service.into(),
            port: None,
        },
        subsets: split
            .iter()
            .map(|(name, _)| Subset {
                name: name.to_string(),
                labels: BTreeMap::from([("version".to_string(), name.to_string())]),
            })
            .collect(),
        http: vec![mk_rule(
            split
                .iter()
                .map(|(name, w)| Destination {
                    subset: Some(name.to_string()),
                    weight: Some(*w),
                    ..Default::default()
                })
                .collect(),
        )],
        ..Default::default()
    }
}

/// A TrafficPolicy object.
pub fn mk_policy(ns: &str, name: &str, spec: TrafficPolicySpec) -> TrafficPolicy {
    let mut tp = TrafficPolicy::new(name, spec);
    tp.metadata.namespace = Some(ns.into());
    tp
}

/// Resources served to every proxy as given, over the translated snapshots: what valid
/// input never produces (a resource Envoy rejects, to see a NACK handled). Applied where
/// snapshots are published, outside the snapshot builder, so production code carries none
/// of it.
#[derive(Debug, Default)]
pub struct Overlay {
    resources:
        std::collections::BTreeMap<(crate::ResourceType, std::sync::Arc<str>), crate::Resource>,
    /// Bumped on every change of the overlay; shifts the generations it serves.
    epoch: u64,
}

impl Overlay {
    /// Serves `resource` over every snapshot.
    pub fn insert(&mut self, t: crate::ResourceType, resource: crate::Resource) {
        self.resources.insert((t, resource.name.clone()), resource);
        self.epoch += 1;
    }

    /// Stops serving a resource; whether it was served.
    pub fn remove(&mut self, t: crate::ResourceType, name: &str) -> bool {
        let removed = self.resources.remove(&(t, name.into())).is_some();
        self.epoch += u64::from(removed);
        removed
    }

    /// `snapshot` with the overlay over it. Once the overlay was used, every generation is
    /// shifted by its epoch, so that a stream sees any change of the overlay as a jump and
    /// compares the whole type (an overlay resource gone is then a removal).
    pub fn apply(
        &self,
        snapshot: &std::sync::Arc<crate::Snapshot>,
    ) -> std::sync::Arc<crate::Snapshot> {
        if self.epoch == 0 {
            return snapshot.clone();
        }
        let shift = self.epoch << 32;
        let types = crate::PerType::from_fn(|t| {
            let over = self
                .resources
                .iter()
                .filter(|((rt, _), _)| *rt == t)
                .map(|(_, r)| r.clone());
            let mut typed = snapshot.types[t].with(over);
            typed.generation += shift;
            std::sync::Arc::new(typed)
        });
        std::sync::Arc::new(crate::Snapshot {
            generation: snapshot.generation + shift,
            types,
        })
    }
}
