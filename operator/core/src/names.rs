//! Stable names: the contract between clusters, endpoints and routes, and what operators see
//! in Envoy stats and the debug endpoints.

use crate::object_key::ObjectKey;

/// The cluster DNS suffix.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// `name.ns.svc.cluster.local`.
pub fn fqdn(svc: &ObjectKey) -> String {
    format!("{}.{}.svc.{CLUSTER_DOMAIN}", svc.name, svc.namespace)
}

/// `outbound|<port>|<subset>|<fqdn>`; the subset part is empty for the Service as a whole.
pub fn cluster_name(svc: &ObjectKey, port: u16, subset: Option<&str>) -> String {
    format!("outbound|{port}|{}|{}", subset.unwrap_or(""), fqdn(svc))
}

/// Virtual host name: `<fqdn>:<port>`.
pub fn vhost_name(svc: &ObjectKey, port: u16) -> String {
    format!("{}:{port}", fqdn(svc))
}

/// Every DNS name of a Service: `name`, `name.ns`, `name.ns.svc` and the FQDN.
pub fn hostnames(svc: &ObjectKey) -> Vec<String> {
    vec![
        svc.name.clone(),
        format!("{}.{}", svc.name, svc.namespace),
        format!("{}.{}.svc", svc.name, svc.namespace),
        fqdn(svc),
    ]
}

/// The Service a DNS name means to a client in `caller_namespace`, as its search path
/// resolves it: `name` (the caller's namespace), `name.ns`, `name.ns.svc` or the FQDN
/// (lower case, no port, no trailing dot); None for any other name. Whether the Service
/// exists is the caller's question.
pub fn service_named(host: &str, caller_namespace: &str) -> Option<ObjectKey> {
    let parts: Vec<&str> = host.split('.').collect();
    let (name, namespace) = match parts.as_slice() {
        [name] => (*name, caller_namespace),
        [name, ns] | [name, ns, "svc"] => (*name, *ns),
        [name, ns, "svc", rest @ ..] if rest.join(".") == CLUSTER_DOMAIN => (*name, *ns),
        _ => return None,
    };
    (!name.is_empty() && !namespace.is_empty()).then(|| ObjectKey::new(namespace, name))
}

/// Every name a client in any namespace may use for a Service port: each DNS form with and
/// (when `bare` is set) without the port, plus the ClusterIP with and without the port.
/// The short `name` form is only resolvable from the Service's own namespace, but it is
/// harmless elsewhere and saves a per-namespace route table.
pub fn domains(svc: &ObjectKey, port: u16, cluster_ip: Option<&str>, bare: bool) -> Vec<String> {
    let hosts = hostnames(svc);
    let mut out = Vec::with_capacity(10);
    for host in hosts.iter().map(String::as_str).chain(cluster_ip) {
        out.push(format!("{host}:{port}"));
        if bare {
            out.push(host.to_string());
        }
    }
    out
}

/// The domains a Service port's virtual host has over VHDS: [`domains`] without the short
/// `name` forms, which mean a different Service in each caller's namespace (a scoped proxy
/// gets those per caller, on demand: [`crate::scope`]).
pub fn vhds_domains(svc: &ObjectKey, port: u16, cluster_ip: Option<&str>) -> Vec<String> {
    domains(svc, port, cluster_ip, true)
        .into_iter()
        .filter(|d| d.split(':').next() != Some(svc.name.as_str()))
        .collect()
}

/// Listener names.
pub const OUTBOUND_LISTENER: &str = "outbound";
/// The inbound listener in transparent mode.
pub const INBOUND_LISTENER: &str = "inbound";
/// The route table of a sidecar's inbound HTTP (per workload: it carries authorization).
pub const INBOUND_ROUTE_CONFIG: &str = "inbound";
/// Route configuration of the explicit outbound listener.
pub const EXPLICIT_ROUTE_CONFIG: &str = "outbound";
/// Route configuration for one port in transparent mode.
pub fn port_route_config(port: u16) -> String {
    format!("outbound|{port}")
}
/// The VHDS name of a virtual host of the route table of `port`: `outbound|<port>/<vhost>`
/// (Envoy files a VHDS resource under the route table named before the last slash).
pub fn vhds_name(port: u16, vhost: &str) -> String {
    format!("{}/{vhost}", port_route_config(port))
}
/// The one virtual host every scoped route table gets over VHDS whatever the scope: Envoy
/// waits (its initial fetch timeout, 15 s) for a first virtual host of each table before
/// the listener is ready, and an empty scope would give it none.
pub const VHDS_PLACEHOLDER: &str = "weir-placeholder";
/// Where a profile snapshot keeps the route table `table` as callers in `namespace` get it
/// (their consumer routes in it): never subscribed to under this key, served under
/// `table` to the proxies of that namespace.
pub fn consumer_route_key(namespace: &str, table: &str) -> String {
    format!("{}{table}", consumer_route_prefix(namespace))
}
/// The common start of every [`consumer_route_key`].
pub const CONSUMER_PREFIX: &str = "consumer/";
/// The common start of [`consumer_route_key`]s of one namespace.
pub fn consumer_route_prefix(namespace: &str) -> String {
    format!("{CONSUMER_PREFIX}{namespace}/")
}
/// Cluster for traffic to destinations outside the mesh (transparent mode).
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
/// Cluster for inbound traffic to the local application (transparent mode).
pub const INBOUND_PASSTHROUGH_CLUSTER: &str = "InboundPassthroughCluster";
/// Cluster for inbound HTTP, after mTLS termination, in the caller's HTTP version.
pub const INBOUND_PASSTHROUGH_HTTP_CLUSTER: &str = "InboundPassthroughClusterHttp";
