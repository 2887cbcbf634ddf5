//! Translation from the index to Envoy resources. Pure and deterministic.
//!
//! The [`Translator`] keeps, per Service, the clusters, load assignments and virtual hosts it
//! produced, and redoes only the Services the index marks dirty: an EndpointSlice change
//! re-encodes that Service's load assignments and nothing else. Clusters and load
//! assignments are shared by every proxy; listeners and route tables depend on the proxy's
//! capture mode and are assembled from the per-Service virtual hosts by [`assemble`].

pub mod cluster;
pub mod endpoint;
pub mod listener;
pub mod names;
pub mod route;

use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::google::protobuf::Any;
use imbl::OrdMap;
use prost::{Message, Name};
use std::collections::{BTreeMap, BTreeSet};

use crate::HashMap;
use std::sync::Arc;

use crate::binding::{PortRoutes, Resolution, ServiceBinding};
use crate::index::{Index, ObjectKey, ServiceModel};
use crate::resources::Resource;

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
/// snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProxyProfile {
    /// Capture mode.
    pub capture: Capture,
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
    /// Some virtual host changed, so route tables (and maybe listeners) must be reassembled.
    pub virtual_hosts_changed: bool,
}

impl Changes {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.clusters.is_empty()
            && self.clusters_removed.is_empty()
            && self.endpoints.is_empty()
            && self.endpoints_removed.is_empty()
            && !self.virtual_hosts_changed
    }
}

/// One Service port's virtual host, encoded once when the Service changes, in the two forms
/// route tables need: with port-qualified names only, and with the bare names too (explicit
/// mode gives bare names to one port per Service; transparent mode to every port, since each
/// port has its own table). Route tables are assembled by concatenating these bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortVirtualHost {
    /// Encoded `VirtualHost` with port-qualified domains.
    pub qualified: Vec<u8>,
    /// Encoded `VirtualHost` with the bare names as well.
    pub with_bare_names: Vec<u8>,
    /// Whether explicit mode gives the bare names to this port (port 80, else the lowest).
    pub owns_bare_names: bool,
    /// Clusters its routes send traffic to that must exist (destinations that do not
    /// resolve are left out: their 503 is deliberate and reported in status).
    pub clusters: Vec<Arc<str>>,
}

/// One cluster a Service produces (its load assignment has the same name).
#[derive(Debug, Clone)]
struct ClusterSlot {
    name: Arc<str>,
    port: u16,
    /// For a subset, the pod labels that select its endpoints.
    subset_labels: Option<BTreeMap<String, String>>,
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
    vhosts: BTreeMap<(ObjectKey, u16), Arc<PortVirtualHost>>,
    /// How many virtual hosts send traffic to each cluster (for the consistency check).
    referenced: HashMap<Arc<str>, u32>,
    virtual_hosts_generation: u64,
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
        for key in &dirty.services {
            self.translate_service(index, key, &mut changes);
        }
        for key in dirty.endpoints.difference(&dirty.services) {
            self.translate_endpoints(index, key, &mut changes);
        }
        if changes.virtual_hosts_changed {
            self.virtual_hosts_generation += 1;
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

    /// Bumps whenever a virtual host changes.
    pub fn virtual_hosts_generation(&self) -> u64 {
        self.virtual_hosts_generation
    }

    /// Whether some virtual host sends traffic to the cluster.
    pub fn is_referenced(&self, cluster: &str) -> bool {
        self.referenced.contains_key(cluster)
    }

    fn count_references(&mut self, vhost: &PortVirtualHost, delta: i32) {
        for cluster in &vhost.clusters {
            let count = self.referenced.entry(cluster.clone()).or_default();
            *count = count.saturating_add_signed(delta);
            if *count == 0 {
                self.referenced.remove(cluster);
            }
        }
    }

    /// Virtual hosts in (Service, port) order.
    pub fn virtual_hosts(
        &self,
    ) -> impl Iterator<Item = (&(ObjectKey, u16), &Arc<PortVirtualHost>)> {
        self.vhosts.iter()
    }

    fn translate_service(&mut self, index: &Index, key: &ObjectKey, changes: &mut Changes) {
        let old = self.services.remove(key).unwrap_or_default();
        let mut new = ServiceOutput::default();
        if let Some(svc) = index.service(key) {
            let binding = ServiceBinding::bind(index, key);
            let bare_port = svc
                .ports
                .iter()
                .map(|p| p.port)
                .find(|p| *p == 80)
                .or_else(|| svc.ports.iter().map(|p| p.port).min());
            for port in &svc.ports {
                let routes = binding.port(port.port);
                new.ports.push(port.port);
                new.clusters.push(ClusterSlot {
                    name: names::cluster_name(key, port.port, None).into(),
                    port: port.port,
                    subset_labels: None,
                });
                for subset in routes
                    .map(|r| r.policy.subsets.as_slice())
                    .unwrap_or_default()
                {
                    new.clusters.push(ClusterSlot {
                        name: names::cluster_name(key, port.port, Some(&subset.name)).into(),
                        port: port.port,
                        subset_labels: Some(subset.labels.clone()),
                    });
                }
                let entry = port_virtual_host(key, svc, port.port, routes, bare_port);
                self.set_virtual_host((key.clone(), port.port), entry, changes);
            }
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
            if let Some(old) = self.vhosts.remove(&(key.clone(), *port)) {
                self.count_references(&old, -1);
                changes.virtual_hosts_changed = true;
            }
        }
        for ClusterSlot { name, .. } in &new.clusters {
            let resource = Resource::new(name.clone(), &cluster::eds_cluster(name));
            upsert(&mut self.clusters, resource, &mut changes.clusters);
        }
        if let Some(svc) = index.service(key) {
            self.write_endpoints(index, key, svc, &new, changes);
        }
        if !new.clusters.is_empty() {
            self.services.insert(key.clone(), new);
        }
    }

    /// Stores a port's virtual host when it differs from the one held.
    fn set_virtual_host(
        &mut self,
        slot: (ObjectKey, u16),
        entry: PortVirtualHost,
        changes: &mut Changes,
    ) {
        if self.vhosts.get(&slot).map(|v| v.as_ref()) != Some(&entry) {
            self.count_references(&entry, 1);
            if let Some(old) = self.vhosts.insert(slot, Arc::new(entry)) {
                self.count_references(&old, -1);
            }
            changes.virtual_hosts_changed = true;
        }
    }

    fn translate_endpoints(&mut self, index: &Index, key: &ObjectKey, changes: &mut Changes) {
        let (Some(svc), Some(out)) = (index.service(key), self.services.get(key)) else {
            return;
        };
        let out = out.clone();
        self.write_endpoints(index, key, svc, &out, changes);
    }

    fn write_endpoints(
        &mut self,
        index: &Index,
        key: &ObjectKey,
        svc: &ServiceModel,
        out: &ServiceOutput,
        changes: &mut Changes,
    ) {
        for ClusterSlot {
            name,
            port,
            subset_labels: subset,
        } in &out.clusters
        {
            let Some(service_port) = svc.ports.iter().find(|p| p.port == *port) else {
                continue;
            };
            let mut eps: Vec<(&str, u16)> = Vec::new();
            for slice in index.slices_for(key) {
                let Some((_, target)) = slice.ports.iter().find(|(n, _)| *n == service_port.name)
                else {
                    continue;
                };
                for ep in slice.endpoints.iter().filter(|e| e.ready) {
                    if let Some(labels) = subset {
                        let pod_labels = ep.pod.as_ref().and_then(|p| index.pod_labels(p));
                        let selected = pod_labels
                            .is_some_and(|pl| labels.iter().all(|(k, v)| pl.get(k) == Some(v)));
                        if !selected {
                            continue;
                        }
                    }
                    eps.push((ep.address.as_str(), *target));
                }
            }
            eps.sort_unstable();
            eps.dedup();
            let resource = Resource::new(name.clone(), &endpoint::load_assignment(name, eps));
            upsert(&mut self.endpoints, resource, &mut changes.endpoints);
        }
    }
}

/// One Service port's virtual host, encoded, with the clusters its routes need.
fn port_virtual_host(
    key: &ObjectKey,
    svc: &ServiceModel,
    port: u16,
    routes: Option<&PortRoutes>,
    bare_port: Option<u16>,
) -> PortVirtualHost {
    let cluster_ip = svc.cluster_ip.as_deref();
    let mut vhost = route::virtual_host(key, port, cluster_ip, false, routes);
    let qualified = vhost.encode_to_vec();
    vhost.domains = names::domains(key, port, cluster_ip, true);
    let whole: Arc<str> = names::cluster_name(key, port, None).into();
    let mut clusters: Vec<Arc<str>> = routes
        .into_iter()
        .flat_map(|r| r.http.iter().flatten())
        .filter(|b| b.resolution == Resolution::Resolved && b.weight > 0)
        .map(|b| Arc::from(b.cluster.as_str()))
        .chain([whole])
        .collect();
    clusters.sort_unstable();
    clusters.dedup();
    PortVirtualHost {
        qualified,
        with_bare_names: vhost.encode_to_vec(),
        owns_bare_names: Some(port) == bare_port,
        clusters,
    }
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
            let vhosts = translator.virtual_hosts().map(|(_, v)| {
                if v.owns_bare_names {
                    v.with_bare_names.as_slice()
                } else {
                    v.qualified.as_slice()
                }
            });
            (
                vec![Resource::new(
                    names::OUTBOUND_LISTENER,
                    &listener::explicit_outbound(port),
                )],
                vec![route_table(names::EXPLICIT_ROUTE_CONFIG, vhosts)],
            )
        }
        Capture::Transparent => {
            let mut by_port: BTreeMap<u16, Vec<&[u8]>> = BTreeMap::new();
            for ((_, port), v) in translator.virtual_hosts() {
                by_port
                    .entry(*port)
                    .or_default()
                    .push(v.with_bare_names.as_slice());
            }
            let ports: Vec<u16> = by_port.keys().copied().collect();
            let routes = by_port
                .into_iter()
                .map(|(port, vhosts)| {
                    route_table(&names::port_route_config(port), vhosts.into_iter())
                })
                .collect();
            let listeners = vec![
                Resource::new(
                    names::OUTBOUND_LISTENER,
                    &listener::transparent_outbound(&ports),
                ),
                Resource::new(names::INBOUND_LISTENER, &listener::transparent_inbound()),
            ];
            (listeners, routes)
        }
    }
}

/// A route table from pre-encoded virtual hosts: the table's own fields, then each virtual
/// host as repeated field 2 (`virtual_hosts`), which is what encoding the full message would
/// produce, without decoding or cloning 10,000 virtual hosts.
fn route_table<'a>(name: &str, vhosts: impl Iterator<Item = &'a [u8]>) -> Resource {
    use prost::encoding::{encode_key, encode_varint, WireType};
    const VIRTUAL_HOSTS_TAG: u32 = 2;
    let mut buf = route::route_configuration(name, Vec::new()).encode_to_vec();
    for vhost in vhosts {
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
pub fn profile_clusters(profile: &ProxyProfile) -> Vec<Resource> {
    match profile.capture {
        Capture::Explicit { .. } => Vec::new(),
        Capture::Transparent => vec![
            Resource::new(
                names::PASSTHROUGH_CLUSTER,
                &cluster::original_dst_cluster(names::PASSTHROUGH_CLUSTER),
            ),
            Resource::new(
                names::INBOUND_PASSTHROUGH_CLUSTER,
                &cluster::original_dst_cluster(names::INBOUND_PASSTHROUGH_CLUSTER),
            ),
        ],
    }
}
