//! Manifests for tests, built from the typed builders of `weir_core::testing` (the same
//! ones the core's unit tests use) and serialized to YAML or JSON: one way to write an
//! object, whatever the source (local mode's directory or an API server).

use anyhow::{Context, Result};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use weir_core::testing::{mk_pod, mk_policy, mk_policy_spec, mk_service, mk_slice};

/// YAML of several objects, one document each.
pub fn to_yaml<T: Serialize>(objects: &[T]) -> String {
    objects
        .iter()
        .map(|o| serde_saphyr::to_string(o).expect("objects always serialize"))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// JSON of an object, for an API server.
pub fn to_json<T: Serialize>(object: &T) -> serde_json::Value {
    serde_json::to_value(object).expect("objects always serialize")
}

/// A Service with one port named `http` whose target port is the pods' port named `http`.
pub fn http_service(
    ns: &str,
    name: &str,
    cluster_ip: &str,
    port: u16,
) -> k8s_openapi::api::core::v1::Service {
    let mut svc = mk_service(ns, name, cluster_ip, &[port]);
    if let Some(ports) = svc.spec.as_mut().and_then(|s| s.ports.as_mut()) {
        ports[0].target_port = Some(IntOrString::String("http".into()));
    }
    svc
}

/// A Service with ports (name, number, appProtocol); its target ports are the pods' ports
/// of the same names. `cluster_ip` "None" makes it headless.
pub fn service_with_ports(
    ns: &str,
    name: &str,
    cluster_ip: &str,
    ports: &[(&str, u16, Option<&str>)],
) -> k8s_openapi::api::core::v1::Service {
    let numbers: Vec<u16> = ports.iter().map(|p| p.1).collect();
    let mut svc = mk_service(ns, name, cluster_ip, &numbers);
    if let Some(specs) = svc.spec.as_mut().and_then(|s| s.ports.as_mut()) {
        for (spec, (port_name, _, app)) in specs.iter_mut().zip(ports) {
            spec.name = Some(port_name.to_string());
            spec.target_port = Some(IntOrString::String(port_name.to_string()));
            spec.app_protocol = app.map(str::to_string);
        }
    }
    svc
}

/// YAML for [`http_service`].
pub fn service_yaml(ns: &str, name: &str, cluster_ip: &str, port: u16) -> String {
    to_yaml(&[http_service(ns, name, cluster_ip, port)])
}

/// YAML for a Pod with labels and an EndpointSlice of `service` with the pod's one endpoint
/// at `addr` on the port named `http`: how a backend joins a Service in local mode.
pub fn endpoint_yaml(
    ns: &str,
    service: &str,
    pod: &str,
    labels: &[(&str, &str)],
    addr: SocketAddr,
    ready: bool,
) -> String {
    pod_endpoint_yaml(ns, service, "http", pod, labels, addr, ready)
}

/// As [`endpoint_yaml`], for the Service port named `port_name`.
pub fn pod_endpoint_yaml(
    ns: &str,
    service: &str,
    port_name: &str,
    pod: &str,
    labels: &[(&str, &str)],
    addr: SocketAddr,
    ready: bool,
) -> String {
    pod_slice_yaml(
        &mut mk_pod(ns, pod, labels),
        service,
        port_name,
        addr,
        ready,
    )
}

/// YAML for `pod` (its IP set to `addr`'s) and an EndpointSlice of `service` with the pod's
/// endpoint at `addr` on the Service port named `port_name`.
pub fn pod_slice_yaml(
    pod: &mut k8s_openapi::api::core::v1::Pod,
    service: &str,
    port_name: &str,
    addr: SocketAddr,
    ready: bool,
) -> String {
    let ip = addr.ip().to_string();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    pod.status = Some(k8s_openapi::api::core::v1::PodStatus {
        pod_ip: Some(ip.clone()),
        ..Default::default()
    });
    let mut slice = mk_slice(
        &ns,
        &format!("{service}-{name}"),
        service,
        port_name,
        addr.port(),
        &[(ip.as_str(), name.as_str())],
    );
    if let Some(conditions) = slice.endpoints[0].conditions.as_mut() {
        conditions.ready = Some(ready);
    }
    format!("{}---\n{}", to_yaml(&[&*pod]), to_yaml(&[slice]))
}

/// One EndpointSlice per named port (`<service>-<port name>`) with the one endpoint
/// `pod` at `ip`: how a Service whose target ports are named reaches one pod.
pub fn named_port_slices(
    ns: &str,
    service: &str,
    pod: &str,
    ip: &str,
    ports: &[(&str, u16)],
) -> Vec<k8s_openapi::api::discovery::v1::EndpointSlice> {
    ports
        .iter()
        .map(|(name, port)| {
            mk_slice(
                ns,
                &format!("{service}-{name}"),
                service,
                name,
                *port,
                &[(ip, pod)],
            )
        })
        .collect()
}

/// YAML for one EndpointSlice of `service` with one port and several ready endpoints
/// (pod name, IP).
pub fn slice_yaml(
    ns: &str,
    service: &str,
    slice: &str,
    port: u16,
    endpoints: &[(&str, IpAddr)],
) -> String {
    let ips: Vec<(String, &str)> = endpoints
        .iter()
        .map(|(pod, ip)| (ip.to_string(), *pod))
        .collect();
    let eps: Vec<(&str, &str)> = ips.iter().map(|(ip, pod)| (ip.as_str(), *pod)).collect();
    to_yaml(&[mk_slice(ns, slice, service, "http", port, &eps)])
}

/// A TrafficPolicy `name` in namespace default splitting `service` over version subsets
/// (each selecting `version: <subset>`) by weight.
pub fn split_policy_yaml(name: &str, service: &str, split: &[(&str, u32)]) -> String {
    to_yaml(&[mk_policy("default", name, mk_policy_spec(service, split))])
}

/// A [`http_service`] as JSON, for an API server.
pub fn service_json(ns: &str, name: &str, cluster_ip: &str, port: u16) -> serde_json::Value {
    to_json(&http_service(ns, name, cluster_ip, port))
}

/// A TrafficPolicy as JSON; `spec` is JSON so that tests can also write what the typed spec
/// cannot hold.
pub fn policy_json(ns: &str, name: &str, spec: serde_json::Value) -> serde_json::Value {
    let mut policy = to_json(&mk_policy(ns, name, Default::default()));
    policy["spec"] = spec;
    policy
}

/// A 90/10 split of `target` between subsets v1 and v2, as JSON.
pub fn split_spec_json(target: &str) -> serde_json::Value {
    to_json(&mk_policy_spec(target, &[("v1", 90), ("v2", 10)]))
}

/// Writes `text` to `dir/name` atomically (write then rename), as editors and
/// `kubectl`-style tools do, so the watcher never reads half a file.
pub fn write_file(dir: &Path, name: &str, text: &str) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(name)).with_context(|| format!("renaming into {name}"))?;
    Ok(())
}

/// A benchmark mesh: Services `svc0..` in namespace default (ClusterIPs 10.96.x.y, port
/// 8080), each with one EndpointSlice of `endpoints` pods `svc<i>-<e>` at 10.a.b.c.
pub fn bench_mesh_yaml(services: usize, endpoints: usize) -> Result<String> {
    let mut mesh = String::new();
    for s in 0..services {
        let name = format!("svc{s}");
        mesh.push_str(&service_yaml(
            "default",
            &name,
            // 10.96.0.0/12 and beyond for meshes above 62,500 Services.
            &format!("10.{}.{}.{}", 96 + s / 62_500, (s / 250) % 250, s % 250),
            8080,
        ));
        mesh.push_str("---\n");
        let pods: Vec<(String, IpAddr)> = (0..endpoints)
            .map(|e| {
                let n = s * endpoints + e;
                let ip = format!("10.{}.{}.{}", 1 + n / 62500, (n / 250) % 250, n % 250);
                Ok((format!("{name}-{e}"), ip.parse()?))
            })
            .collect::<Result<_>>()?;
        let pods: Vec<(&str, IpAddr)> = pods.iter().map(|(n, ip)| (n.as_str(), *ip)).collect();
        mesh.push_str(&slice_yaml(
            "default",
            &name,
            &format!("{name}-x"),
            8080,
            &pods,
        ));
        mesh.push_str("---\n");
    }
    Ok(mesh)
}
