//! Translation from the index to Envoy resources. Pure and deterministic.
//!
//! ```text
//! dirty Service --ServiceBinding::bind--> per port: protocol::decide, the merged routes
//!   (the binding is kept: status reads it)
//!   --> clusters (EDS, or DNS for ExternalName; HTTP/2 upstream for http2/grpc)
//!   --> load assignments (ready endpoints, per subset)
//!   --> PortOutput: the HTTP virtual host (HTTP-family ports) and the TCP routes
//!       (TCP-family ports), encoded once
//! assemble(profile): PortOutputs --outbound--> listeners (filter chains by destination IP,
//!                                    port, SNI, detected protocol) + route tables (per port)
//!                                --inbound--> the listener of a workload backing nothing
//!                                    (per-workload ones: inbound::listener)
//! ```
//!
//! Modules by direction: [`outbound`] (the caller's side: listeners, routes, shaping) and
//! [`inbound`] (the server's side, per workload); shared by both: [`cluster`],
//! [`endpoint`], [`chain`] (one builder per filter chain kind), [`mtls`],
//! [`listener_filters`] and [`pb`].
//!
//! The [`Translator`] keeps, per Service, what it produced, and redoes only the Services the
//! index marks dirty: an EndpointSlice change re-encodes that Service's load assignments and
//! nothing else. Clusters and load assignments are shared by every proxy; listeners and route
//! tables depend on the proxy's capture mode and are assembled from the per-port outputs.

pub mod authorization;
pub mod chain;
pub mod cluster;
pub mod endpoint;
pub mod inbound;
pub mod listener_filters;
pub mod mtls;
pub mod outbound;
pub mod pb;
pub mod port;
pub mod telemetry;

use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, Vhds};
use envoy_types::pb::google::protobuf::Any;
use imbl::OrdMap;
use prost::{Message, Name};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

use crate::hash_map::HashMap;
use std::sync::Arc;

use crate::binding::{BoundBackend, PortRoutes, Resolution, ServiceBinding};
use crate::identity::SpiffeId;
use crate::index::{Addressing, Index, ObjectKey, ServiceModel};
use crate::names;
use crate::protocol::{self, DecidedBy, Protocol};
use crate::resources::Resource;
use crate::routing::Upstream;
use outbound::{listener, route, shaping};
pub use port::{PortOutput, PortTcp, PortVirtualHost, WeightedClusters};
use weir_api::MtlsMode;

/// How a proxy receives the application's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Capture {
    /// iptables redirects outbound traffic to 15001 and inbound to 15006.
    Transparent,
    /// The application sends plain HTTP to 127.0.0.1:<port> (local mode, no iptables).
    Explicit {
        /// The outbound listener's port.
        port: u16,
    },
}

/// What the resources served to a proxy depend on. Proxies with the same profile share one
/// snapshot (per-identity content, the certificates, comes from beside it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProxyProfile {
    /// Capture mode.
    pub capture: Capture,
    /// What the proxy accepts inbound (transparent mode; explicit mode has no inbound).
    pub inbound: MtlsMode,
    /// The proxy's zone, when known: its load assignments put the endpoints of that zone
    /// first and the others behind them (failover).
    pub zone: Option<Zone>,
    /// Scoped (transparent capture, delta ADS): the proxy holds the clusters and virtual
    /// hosts of its scope only and fetches the others on first use (VHDS and ODCDS); its
    /// route tables are shells whose virtual hosts come over VHDS.
    pub scoped: bool,
}

impl ProxyProfile {
    /// The profile of a proxy with this capture mode and inbound mTLS mode.
    pub fn new(capture: Capture, inbound: MtlsMode) -> ProxyProfile {
        let inbound = match capture {
            // No inbound listener: one profile whatever the mode.
            Capture::Explicit { .. } => MtlsMode::Disable,
            Capture::Transparent => inbound,
        };
        ProxyProfile {
            capture,
            inbound,
            zone: None,
            scoped: false,
        }
    }

    /// The same profile, scoped or not (explicit capture is never scoped: one route table
    /// answers every Host).
    pub fn scoped(self, scoped: bool) -> ProxyProfile {
        ProxyProfile {
            scoped: scoped && self.capture == Capture::Transparent,
            ..self
        }
    }

    /// The same profile for a proxy in `zone`.
    pub fn in_zone(self, zone: Option<Zone>) -> ProxyProfile {
        ProxyProfile { zone, ..self }
    }
}

/// A zone name (`topology.kubernetes.io/zone`, at most 63 bytes as a label value), kept
/// inline so that profiles stay `Copy`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Zone {
    len: u8,
    bytes: [u8; 63],
}

impl Zone {
    /// The zone, or None for an empty or over-long name.
    pub fn new(name: &str) -> Option<Zone> {
        if name.is_empty() || name.len() > 63 {
            return None;
        }
        let mut bytes = [0; 63];
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        Some(Zone {
            len: name.len() as u8,
            bytes,
        })
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl std::fmt::Debug for Zone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl std::fmt::Display for Zone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Names of resources that changed in one translation pass.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Clusters added or changed.
    pub clusters: Vec<Arc<str>>,
    /// Clusters removed.
    pub clusters_removed: Vec<Arc<str>>,
    /// Load assignments added or changed.
    pub endpoints: Vec<Arc<str>>,
    /// Load assignments removed.
    pub endpoints_removed: Vec<Arc<str>>,
    /// Some port's output changed, so listeners and route tables must be reassembled.
    pub ports_changed: bool,
}

impl Changes {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.clusters.is_empty()
            && self.clusters_removed.is_empty()
            && self.endpoints.is_empty()
            && self.endpoints_removed.is_empty()
            && !self.ports_changed
    }
}

/// One cluster a Service produces.
#[derive(Debug, Clone)]
struct ClusterSlot {
    name: Arc<str>,
    port: u16,
    /// For a subset, its name and the pod labels that select its endpoints.
    subset: Option<(String, BTreeMap<String, String>)>,
    /// The governing routes' connection pool, outlier detection and load balancing.
    upstream: Upstream,
}

#[derive(Debug, Default, Clone)]
struct ServiceOutput {
    clusters: Vec<ClusterSlot>,
    ports: Vec<u16>,
}

/// Incremental translator. See the module docs.
#[derive(Debug, Default)]
pub struct Translator {
    services: HashMap<ObjectKey, ServiceOutput>,
    clusters: OrdMap<Arc<str>, Resource>,
    endpoints: OrdMap<Arc<str>, Resource>,
    ports: BTreeMap<(ObjectKey, u16), Arc<PortOutput>>,
    /// How many port outputs send traffic to each cluster (for the consistency check).
    referenced: HashMap<Arc<str>, u32>,
    ports_generation: u64,
    /// The trust domain of the last update (inbound listeners check peers against it).
    trust_domain: String,
    /// Per Service with attachments, the binding of the last translation (status reads it).
    bindings: HashMap<ObjectKey, Arc<ServiceBinding>>,
    /// Per Service and namespace with consumer routes on it, the binding for that
    /// namespace's callers.
    consumer_bindings: BTreeMap<(ObjectKey, String), Arc<ServiceBinding>>,
    /// What every chain reports (the operator's flags).
    telemetry: Arc<telemetry::Telemetry>,
}

/// A port's protocol as `/debug/config` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortProtocol {
    /// `namespace/name` of the Service.
    pub service: String,
    /// The Service port.
    pub port: u16,
    /// The protocol.
    pub protocol: Protocol,
    /// The rule that decided it.
    pub decided_by: DecidedBy,
}

impl Translator {
    /// An empty translator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Redoes what the index marks dirty and reports what changed.
    pub fn update(&mut self, index: &mut Index) -> Changes {
        let dirty = index.take_dirty();
        let mut changes = Changes::default();
        let trust_domain = &index.mesh_identity().trust_domain;
        if *trust_domain != self.trust_domain {
            self.trust_domain = trust_domain.clone();
            // Inbound listeners name it: reassemble them.
            changes.ports_changed = true;
        }
        for key in &dirty.services {
            self.translate_service(index, key, &mut changes);
        }
        for key in dirty.endpoints.difference(&dirty.services) {
            self.translate_endpoints(index, key, &mut changes);
        }
        if changes.ports_changed {
            self.ports_generation += 1;
        }
        changes
    }

    /// All clusters shared by every proxy.
    pub fn clusters(&self) -> &OrdMap<Arc<str>, Resource> {
        &self.clusters
    }

    /// All load assignments.
    pub fn endpoints(&self) -> &OrdMap<Arc<str>, Resource> {
        &self.endpoints
    }

    /// Bumps whenever a port's output changes.
    pub fn ports_generation(&self) -> u64 {
        self.ports_generation
    }

    /// The binding of a Service's attachments as of the last update (None: nothing attaches).
    pub fn binding(&self, service: &ObjectKey) -> Option<&ServiceBinding> {
        self.bindings.get(service).map(|b| b.as_ref())
    }

    /// The bindings of the namespaces with consumer routes on `service`, by namespace.
    pub fn consumer_bindings<'a>(
        &'a self,
        service: &'a ObjectKey,
    ) -> impl Iterator<Item = (&'a str, &'a ServiceBinding)> + 'a {
        self.consumer_bindings
            .range((service.clone(), String::new())..)
            .take_while(move |((k, _), _)| k == service)
            .map(|((_, ns), b)| (ns.as_str(), b.as_ref()))
    }

    /// The binding for callers in `namespace`: the one of its consumer routes when it has
    /// some on the Service, else the producer binding.
    pub fn binding_for(&self, service: &ObjectKey, namespace: &str) -> Option<&ServiceBinding> {
        self.consumer_bindings
            .get(&(service.clone(), namespace.to_string()))
            .map(|b| b.as_ref())
            .or_else(|| self.binding(service))
    }

    /// The trust domain of the last update.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The mesh's telemetry settings.
    pub fn telemetry(&self) -> &Arc<telemetry::Telemetry> {
        &self.telemetry
    }

    /// Sets the telemetry settings; listeners are reassembled.
    pub fn set_telemetry(&mut self, telemetry: telemetry::Telemetry) {
        if *self.telemetry != telemetry {
            self.telemetry = Arc::new(telemetry);
            self.ports_generation += 1;
        }
    }

    /// Whether some port's routes send traffic to the cluster.
    pub fn is_referenced(&self, cluster: &str) -> bool {
        self.referenced.contains_key(cluster)
    }

    /// Every Service port's output, in (Service, port) order.
    pub fn ports(&self) -> impl Iterator<Item = (&(ObjectKey, u16), &Arc<PortOutput>)> {
        self.ports.iter()
    }

    /// The protocol of every Service port, for `/debug/config`.
    pub fn port_protocols(&self) -> Vec<PortProtocol> {
        self.ports
            .iter()
            .map(|((svc, port), out)| PortProtocol {
                service: svc.to_string(),
                port: *port,
                protocol: out.protocol,
                decided_by: out.decided_by,
            })
            .collect()
    }

    fn count_references(&mut self, out: &PortOutput, delta: i32) {
        for cluster in &out.clusters {
            let count = self.referenced.entry(cluster.clone()).or_default();
            *count = count.saturating_add_signed(delta);
            if *count == 0 {
                self.referenced.remove(cluster);
            }
        }
    }

    fn translate_service(&mut self, index: &Index, key: &ObjectKey, changes: &mut Changes) {
        let old = self.services.remove(key).unwrap_or_default();
        let mut new = ServiceOutput::default();
        let binding = ServiceBinding::bind(index, key);
        let consumers: BTreeMap<String, ServiceBinding> =
            crate::binding::consumer_namespaces(index, key)
                .into_iter()
                .map(|ns| {
                    let b = ServiceBinding::bind_for(index, key, &ns);
                    (ns, b)
                })
                .collect();
        if let Some(svc) = index.service(key) {
            let bare_port = svc
                .ports
                .iter()
                .map(|p| p.port)
                .find(|p| *p == 80)
                .or_else(|| svc.ports.iter().map(|p| p.port).min());
            for port in &svc.ports {
                let routes = binding.port(port.port);
                let (protocol, decided_by) = protocol::decide(port);
                new.ports.push(port.port);
                let upstream = routes
                    .map(|r| r.governing.upstream.clone())
                    .unwrap_or_default();
                new.clusters.push(ClusterSlot {
                    name: names::cluster_name(key, port.port, None).into(),
                    port: port.port,
                    subset: None,
                    upstream: upstream.clone(),
                });
                for subset in routes
                    .map(|r| r.governing.subsets.as_slice())
                    .unwrap_or_default()
                {
                    new.clusters.push(ClusterSlot {
                        name: names::cluster_name(key, port.port, Some(&subset.name)).into(),
                        port: port.port,
                        subset: Some((subset.name.clone(), subset.labels.clone())),
                        upstream: upstream.clone(),
                    });
                }
                let builder = PortOutputBuilder {
                    key,
                    svc,
                    port: port.port,
                    routes,
                    protocol,
                    decided_by,
                };
                let owns_bare_names = Some(port.port) == bare_port;
                let mut output = builder.build(owns_bare_names);
                if protocol.is_http() {
                    for (ns, consumer) in &consumers {
                        let routes = consumer.port(port.port);
                        let theirs = PortOutputBuilder { routes, ..builder }.build(owns_bare_names);
                        if theirs.virtual_host != output.virtual_host {
                            output.clusters.extend(theirs.clusters);
                            output.consumers.insert(ns.clone(), theirs.virtual_host);
                        }
                    }
                    output.clusters.sort_unstable();
                    output.clusters.dedup();
                }
                self.set_port_output((key.clone(), port.port), output, changes);
            }
        }
        if binding.attachments.is_empty() {
            self.bindings.remove(key);
        } else {
            self.bindings.insert(key.clone(), Arc::new(binding));
        }
        let stale: Vec<(ObjectKey, String)> = self
            .consumer_bindings
            .range((key.clone(), String::new())..)
            .take_while(|((k, _), _)| k == key)
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            self.consumer_bindings.remove(&id);
        }
        for (ns, consumer) in consumers {
            self.consumer_bindings
                .insert((key.clone(), ns), Arc::new(consumer));
        }
        // Drop what the Service no longer produces.
        let kept: BTreeSet<&Arc<str>> = new.clusters.iter().map(|c| &c.name).collect();
        for ClusterSlot { name, .. } in &old.clusters {
            if !kept.contains(name) {
                if self.clusters.remove(name).is_some() {
                    changes.clusters_removed.push(name.clone());
                }
                if self.endpoints.remove(name).is_some() {
                    changes.endpoints_removed.push(name.clone());
                }
            }
        }
        for port in old.ports.iter().filter(|p| !new.ports.contains(p)) {
            if let Some(old) = self.ports.remove(&(key.clone(), *port)) {
                self.count_references(&old, -1);
                changes.ports_changed = true;
            }
        }
        if let Some(svc) = index.service(key) {
            self.write_endpoints(index, key, svc, &new, changes);
        }
        if !new.clusters.is_empty() {
            self.services.insert(key.clone(), new);
        }
    }

    /// Stores a port's output when it differs from the one held.
    fn set_port_output(&mut self, slot: (ObjectKey, u16), out: PortOutput, changes: &mut Changes) {
        if self.ports.get(&slot).map(|v| v.as_ref()) != Some(&out) {
            self.count_references(&out, 1);
            if let Some(old) = self.ports.insert(slot, Arc::new(out)) {
                self.count_references(&old, -1);
            }
            changes.ports_changed = true;
        }
    }

    fn translate_endpoints(&mut self, index: &Index, key: &ObjectKey, changes: &mut Changes) {
        let (Some(svc), Some(out)) = (index.service(key), self.services.get(key)) else {
            return;
        };
        let out = out.clone();
        self.write_endpoints(index, key, svc, &out, changes);
    }

    /// Writes each cluster's load assignment and the cluster itself: the pods behind the
    /// endpoints decide whether the cluster speaks mTLS and which identities it accepts.
    fn write_endpoints(
        &mut self,
        index: &Index,
        key: &ObjectKey,
        svc: &ServiceModel,
        out: &ServiceOutput,
        changes: &mut Changes,
    ) {
        let trust_domain = &index.mesh_identity().trust_domain;
        for slot in &out.clusters {
            let Some(service_port) = svc.ports.iter().find(|p| p.port == slot.port) else {
                continue;
            };
            let (protocol, _) = protocol::decide(service_port);
            let (eps, peers) = if let Addressing::ExternalName(_) = svc.addressing {
                (Vec::new(), BTreeSet::new()) // resolved by DNS, no load assignment
            } else {
                endpoints_of(
                    index,
                    key,
                    &service_port.name,
                    slot.subset.as_ref().map(|(_, labels)| labels),
                )
            };
            let pool = slot.upstream.pool.as_ref();
            let mut cluster = match &svc.addressing {
                Addressing::ExternalName(host) => {
                    cluster::dns_cluster(&slot.name, host, slot.port, protocol, pool)
                }
                _ => cluster::eds_cluster(&slot.name, protocol, pool),
            };
            shaping::shape_cluster(&mut cluster, &slot.upstream);

            if !peers.is_empty() {
                let upstream_mtls = mtls::UpstreamMtls {
                    peer_ids: peers
                        .iter()
                        .map(|(ns, sa)| SpiffeId::new(trust_domain, ns, sa).to_string())
                        .collect(),
                    alpn: mtls::mesh_alpn(protocol),
                };
                cluster = mtls::with_upstream_mtls(cluster, &upstream_mtls);
            }
            let subset = slot.subset.as_ref().map(|(name, _)| name.as_str());
            let resource = telemetry::cluster_resource(&cluster, key, subset);
            upsert(&mut self.clusters, resource, &mut changes.clusters);
            if !matches!(svc.addressing, Addressing::ExternalName(_)) {
                let assignment = endpoint::mesh_load_assignment(
                    &slot.name,
                    eps.iter().map(
                        |(ip, port, meshed, zone, workload)| endpoint::MeshEndpoint {
                            ip,
                            port: *port,
                            meshed: *meshed,
                            zone: zone.as_deref(),
                            workload: workload.as_deref(),
                        },
                    ),
                );
                let resource = Resource::new(slot.name.clone(), &assignment);
                upsert(&mut self.endpoints, resource, &mut changes.endpoints);
            }
        }
    }
}

/// One ready endpoint: address, pod port, whether its pod has a sidecar that takes mTLS,
/// its zone, its pod's workload.
type MeshEndpoint = (String, u16, bool, Option<Arc<str>>, Option<Arc<str>>);
/// A workload identity: namespace, service account.
type Identity = (String, String);

/// One endpoint of a Service port as its EndpointSlices give it, ready or not.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortEndpoint {
    /// Address.
    pub address: String,
    /// The pod port the Service port maps to there.
    pub port: u16,
    /// Ready per the slice: only ready endpoints are served.
    pub ready: bool,
    /// Its pod carries a sidecar that takes mTLS (the caller's sidecar talks mTLS to it).
    pub meshed: bool,
    /// Its zone.
    pub zone: Option<Arc<str>>,
    /// Its pod, when the slice names one the index knows.
    pub pod: Option<ObjectKey>,
    /// Its pod's workload.
    pub workload: Option<Arc<str>>,
    /// Its pod's service account.
    pub service_account: Option<Arc<str>>,
}

/// Every endpoint of a Service port (narrowed to the pods a subset's labels select), ready
/// or not, sorted: what the translator serves (the ready ones) and what `explain` shows.
pub fn port_endpoints(
    index: &Index,
    key: &ObjectKey,
    port_name: &str,
    subset: Option<&BTreeMap<String, String>>,
) -> Vec<PortEndpoint> {
    let mut eps = Vec::new();
    for slice in index.slices_for(key) {
        // The slice says which pod port the Service port maps to (a named targetPort can
        // differ per pod, and so per slice).
        let Some((_, target)) = slice.ports.iter().find(|(n, _)| n == port_name) else {
            continue;
        };
        for ep in &slice.endpoints {
            let pod = ep.pod.as_ref().and_then(|p| Some((p, index.pod(p)?)));
            if let Some(labels) = subset {
                let selected = pod.is_some_and(|(_, model)| {
                    labels.iter().all(|(k, v)| model.labels.get(k) == Some(v))
                });
                if !selected {
                    continue;
                }
            }
            let meshed = pod.is_some_and(|(_, model)| model.meshed)
                && pod.is_some_and(|(p, _)| index.mtls_mode(p) != weir_api::MtlsMode::Disable);
            eps.push(PortEndpoint {
                address: ep.address.clone(),
                port: *target,
                ready: ep.ready,
                meshed,
                zone: ep.zone.clone(),
                pod: pod.map(|(p, _)| p.clone()),
                workload: pod.map(|(_, model)| model.workload.clone()),
                service_account: pod.map(|(_, model)| model.service_account.clone()),
            });
        }
    }
    eps.sort_unstable();
    eps.dedup();
    eps
}

/// The ready endpoints of a Service port (narrowed to a subset's pods), sorted; and the
/// identities of the pods with a sidecar among them.
fn endpoints_of(
    index: &Index,
    key: &ObjectKey,
    port_name: &str,
    subset: Option<&BTreeMap<String, String>>,
) -> (Vec<MeshEndpoint>, BTreeSet<Identity>) {
    let mut eps: Vec<MeshEndpoint> = Vec::new();
    let mut peers = BTreeSet::new();
    for ep in port_endpoints(index, key, port_name, subset)
        .into_iter()
        .filter(|e| e.ready)
    {
        if let (true, Some(pod), Some(sa)) = (ep.meshed, &ep.pod, &ep.service_account) {
            peers.insert((pod.namespace.clone(), sa.to_string()));
        }
        eps.push((ep.address, ep.port, ep.meshed, ep.zone, ep.workload));
    }
    eps.sort_unstable();
    eps.dedup();
    (eps, peers)
}

/// Everything one port's output is made of.
#[derive(Clone, Copy)]
struct PortOutputBuilder<'a> {
    key: &'a ObjectKey,
    svc: &'a ServiceModel,
    port: u16,
    routes: Option<&'a PortRoutes>,
    protocol: Protocol,
    decided_by: DecidedBy,
}

impl PortOutputBuilder<'_> {
    fn build(self, owns_bare_names: bool) -> PortOutput {
        let whole = names::cluster_name(self.key, self.port, None);
        let mut clusters: Vec<Arc<str>> = vec![whole.as_str().into()];
        let virtual_host = self.protocol.is_http().then(|| {
            let rules = self.routes.into_iter().flat_map(|r| &r.http);
            clusters.extend(resolved(rules.clone().map(|r| &r.backends)));
            let mirrors = rules.filter_map(|r| r.mirror.as_ref());
            clusters.extend(
                mirrors
                    .filter(|m| m.resolution == Resolution::Resolved)
                    .map(|m| Arc::from(m.cluster.as_str())),
            );
            self.virtual_host(owns_bare_names)
        });
        let tcp = self.protocol.is_tcp().then(|| {
            let rules = self.routes.into_iter().flat_map(|r| &r.tcp);
            clusters.extend(resolved(rules.map(|r| &r.backends)));
            self.tcp(whole)
        });
        clusters.sort_unstable();
        clusters.dedup();
        PortOutput {
            protocol: self.protocol,
            decided_by: self.decided_by,
            cluster_ip: match &self.svc.addressing {
                Addressing::ClusterIp(ip) => Some(ip.clone()),
                _ => None,
            },
            virtual_host,
            tcp,
            clusters,
            consumers: BTreeMap::new(),
        }
    }

    fn virtual_host(&self, owns_bare_names: bool) -> PortVirtualHost {
        let cluster_ip = self.svc.cluster_ip.as_deref();
        let mut vhost = route::virtual_host(
            self.key,
            self.port,
            cluster_ip,
            false,
            self.routes,
            self.protocol,
        );
        let qualified = vhost.encode_to_vec();
        vhost.domains = names::domains(self.key, self.port, cluster_ip, true);
        let with_bare_names = vhost.encode_to_vec();
        vhost.domains = names::vhds_domains(self.key, self.port, cluster_ip);
        let unambiguous = vhost.encode_to_vec();
        vhost.name = names::vhds_name(self.port, &vhost.name);
        PortVirtualHost {
            qualified,
            with_bare_names,
            unambiguous,
            vhds: vhost.encode_to_vec(),
            owns_bare_names,
        }
    }

    fn tcp(&self, whole: String) -> PortTcp {
        let mut by_sni = Vec::new();
        let mut default = vec![(whole, 100)];
        if let Some(routes) = self.routes {
            for bound in &routes.tcp {
                let (rule, split) = (bound.rule(), weighted(&bound.backends));
                if rule.sni_hosts.is_empty() {
                    // The first rule without hosts takes every other connection.
                    default = split;
                    break;
                }
                by_sni.push((rule.sni_hosts.clone(), split));
            }
        }
        let hostnames = names::hostnames(self.key);
        PortTcp {
            by_sni,
            default,
            hostnames,
        }
    }
}

/// Clusters of backends that resolve and take traffic.
fn resolved<'a>(backends: impl Iterator<Item = &'a Vec<BoundBackend>>) -> Vec<Arc<str>> {
    backends
        .flatten()
        .filter(|b| b.resolution == Resolution::Resolved && b.weight > 0)
        .map(|b| Arc::from(b.cluster.as_str()))
        .collect()
}

/// The backends that take traffic, as weighted clusters.
fn weighted(backends: &[BoundBackend]) -> WeightedClusters {
    backends
        .iter()
        .filter(|b| b.weight > 0)
        .map(|b| (b.cluster.clone(), b.weight))
        .collect()
}

fn upsert(map: &mut OrdMap<Arc<str>, Resource>, resource: Resource, changed: &mut Vec<Arc<str>>) {
    if map.get(&resource.name).map(|r| r.version) != Some(resource.version) {
        changed.push(resource.name.clone());
        map.insert(resource.name.clone(), resource);
    }
}

/// Listeners and route tables for one profile.
pub fn assemble(translator: &Translator, profile: &ProxyProfile) -> (Vec<Resource>, Vec<Resource>) {
    match profile.capture {
        Capture::Explicit { port } => {
            let vhosts = translator
                .ports()
                .filter_map(|(_, out)| out.virtual_host.as_ref())
                .map(|v| {
                    if v.owns_bare_names {
                        v.with_bare_names.as_slice()
                    } else {
                        v.qualified.as_slice()
                    }
                });
            (
                vec![Resource::new(
                    names::OUTBOUND_LISTENER,
                    &listener::explicit_outbound(port, &translator.telemetry),
                )],
                vec![route_table(names::EXPLICIT_ROUTE_CONFIG, vhosts, None)],
            )
        }
        Capture::Transparent => {
            let mut by_port: BTreeMap<u16, Vec<&PortOutput>> = BTreeMap::new();
            for ((_, port), out) in translator.ports() {
                by_port.entry(*port).or_default().push(out);
            }
            let passthrough = route::passthrough_virtual_host().encode_to_vec();
            let mut tables: BTreeMap<u16, Vec<&[u8]>> = BTreeMap::new();
            if !profile.scoped {
                let shared = shared_short_names(translator);
                for ((svc, port), out) in translator.ports() {
                    if let Some(v) = &out.virtual_host {
                        tables
                            .entry(*port)
                            .or_default()
                            .push(v.in_port_table(shared.contains(&(*port, svc.name.as_str()))));
                    }
                }
            }
            let mut routes: Vec<Resource> = by_port
                .iter()
                .filter(|(_, outs)| outs.iter().any(|o| o.virtual_host.is_some()))
                .map(|(port, _)| {
                    let name = names::port_route_config(*port);
                    if profile.scoped {
                        // Virtual hosts come over VHDS: the scope's, then on demand.
                        let mut table = route::route_configuration(&name, Vec::new());
                        table.vhds = Some(Vhds {
                            config_source: Some(pb::ads()),
                        });
                        return Resource::new(name, &table);
                    }
                    let vhosts = tables.get(port).into_iter().flatten().copied();
                    route_table(&name, vhosts, Some(&passthrough))
                })
                .collect();
            // The inbound table of a workload that authorizes nothing (the others get
            // theirs per workload).
            routes.push(Resource::new(
                names::INBOUND_ROUTE_CONFIG,
                &inbound::route_table(&translator.trust_domain, &inbound::Workload::default()),
            ));
            let listeners = vec![
                Resource::new(
                    names::OUTBOUND_LISTENER,
                    &listener::transparent_outbound(
                        &by_port,
                        &translator.telemetry,
                        profile.scoped,
                    ),
                ),
                Resource::new(
                    names::INBOUND_LISTENER,
                    &inbound::listener(
                        profile.inbound,
                        &translator.trust_domain,
                        &translator.telemetry,
                        &inbound::Workload::default(),
                    ),
                ),
            ];
            (listeners, routes)
        }
    }
}

/// The (port, Service name) pairs that HTTP Services of several namespaces share: their
/// short names (`name`, `name:port`) mean a different Service in each caller's namespace,
/// so a port table shared by every caller leaves them out (Envoy refuses a domain twice).
fn shared_short_names(translator: &Translator) -> BTreeSet<(u16, &str)> {
    let mut seen: BTreeMap<(u16, &str), usize> = BTreeMap::new();
    for ((svc, port), out) in translator.ports() {
        if out.virtual_host.is_some() {
            *seen.entry((*port, svc.name.as_str())).or_default() += 1;
        }
    }
    seen.into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(k, _)| k)
        .collect()
}

/// The route tables whose routing differs for callers of one namespace (their consumer
/// routes), each under [`names::consumer_route_key`] (transparent mode: explicit mode has
/// one table for every caller and no namespace to tell them apart; scoped profiles get a
/// namespace's variants as virtual hosts, see [`vhds_resources`]).
pub fn consumer_route_tables(
    translator: &Translator,
    profile: &ProxyProfile,
) -> Vec<(Arc<str>, Resource)> {
    if profile.capture != Capture::Transparent || profile.scoped {
        return Vec::new();
    }
    let namespaces: BTreeSet<&String> = translator
        .ports()
        .flat_map(|(_, out)| out.consumers.keys())
        .collect();
    if namespaces.is_empty() {
        return Vec::new();
    }
    let mut by_port: BTreeMap<u16, Vec<(&ObjectKey, &PortOutput)>> = BTreeMap::new();
    for ((svc, port), out) in translator.ports() {
        by_port.entry(*port).or_default().push((svc, out));
    }
    let shared = shared_short_names(translator);
    let passthrough = route::passthrough_virtual_host().encode_to_vec();
    let mut tables = Vec::new();
    for ns in namespaces {
        for (port, outs) in &by_port {
            if !outs.iter().any(|(_, o)| o.consumers.contains_key(ns)) {
                continue;
            }
            let vhosts = outs.iter().filter_map(|(svc, o)| {
                let v = o.consumers.get(ns).unwrap_or(&o.virtual_host).as_ref()?;
                Some(v.in_port_table(shared.contains(&(*port, svc.name.as_str()))))
            });
            let name = names::port_route_config(*port);
            let table = route_table(&name, vhosts, Some(&passthrough));
            tables.push((names::consumer_route_key(ns, &name).into(), table));
        }
    }
    tables
}

/// Every virtual host as scoped proxies get it over VHDS, named
/// `outbound|<port>/<fqdn>:<port>` (the route table's name, a slash, the virtual host's
/// usual name; the resource name and the `VirtualHost.name` are the same, as Envoy keys
/// its table by the latter). Each stream serves the ones of its scope.
/// A namespace whose own routes (consumer routes) change a virtual host has its variant
/// beside it, under [`names::consumer_route_key`] of the VHDS name: the scope of a proxy of
/// that namespace serves it under the usual name.
pub fn vhds_resources(translator: &Translator) -> Vec<Resource> {
    use envoy_types::pb::envoy::config::route::v3::VirtualHost;
    let resource = |name: String, vhost: &PortVirtualHost| {
        Resource::from_any(
            name,
            Any {
                type_url: VirtualHost::type_url(),
                value: vhost.vhds.clone(),
            },
        )
    };
    let mut out = Vec::new();
    let mut tables = BTreeSet::new();
    for ((svc, port), output) in translator.ports() {
        let Some(vhost) = output.virtual_host.as_ref() else {
            continue;
        };
        if tables.insert(*port) {
            out.push(Resource::new(
                names::vhds_name(*port, names::VHDS_PLACEHOLDER),
                &route::placeholder_virtual_host(&names::vhds_name(*port, names::VHDS_PLACEHOLDER)),
            ));
        }
        let name = names::vhds_name(*port, &names::vhost_name(svc, *port));
        for (ns, theirs) in &output.consumers {
            if let Some(theirs) = theirs {
                out.push(resource(names::consumer_route_key(ns, &name), theirs));
            }
        }
        out.push(resource(name, vhost));
    }
    out
}

/// A route table from pre-encoded virtual hosts (and a last one, if given): the table's own
/// fields, then each virtual host as repeated field 2 (`virtual_hosts`), which is what
/// encoding the full message would produce, without decoding or cloning 10,000 virtual
/// hosts.
fn route_table<'a>(
    name: &str,
    vhosts: impl Iterator<Item = &'a [u8]>,
    last: Option<&'a [u8]>,
) -> Resource {
    use prost::encoding::{encode_key, encode_varint, WireType};
    const VIRTUAL_HOSTS_TAG: u32 = 2;
    let mut buf = route::route_configuration(name, Vec::new()).encode_to_vec();
    for vhost in vhosts.chain(last) {
        encode_key(VIRTUAL_HOSTS_TAG, WireType::LengthDelimited, &mut buf);
        encode_varint(vhost.len() as u64, &mut buf);
        buf.extend_from_slice(vhost);
    }
    Resource::from_any(
        name,
        Any {
            type_url: RouteConfiguration::type_url(),
            value: buf,
        },
    )
}

/// Clusters a profile needs beyond the shared ones.
pub fn profile_clusters(profile: &ProxyProfile, telemetry: &telemetry::Telemetry) -> Vec<Resource> {
    let tracing = telemetry::tracing_cluster(telemetry)
        .map(|c| Resource::new(crate::mesh::TRACING_CLUSTER, &c));
    let mut clusters = match profile.capture {
        Capture::Explicit { .. } => Vec::new(),
        Capture::Transparent => vec![
            Resource::new(
                names::PASSTHROUGH_CLUSTER,
                &cluster::original_dst_cluster(names::PASSTHROUGH_CLUSTER),
            ),
            Resource::new(
                names::INBOUND_PASSTHROUGH_CLUSTER,
                &cluster::inbound_original_dst_cluster(names::INBOUND_PASSTHROUGH_CLUSTER),
            ),
            Resource::new(
                names::INBOUND_PASSTHROUGH_HTTP_CLUSTER,
                &cluster::original_dst_http_cluster(names::INBOUND_PASSTHROUGH_HTTP_CLUSTER),
            ),
        ],
    };
    clusters.extend(tracing);
    clusters
}
