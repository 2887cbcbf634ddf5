//! Per-proxy scope: the Services a scoped proxy holds, learned from what it asks for, and
//! the clusters and virtual hosts it is served of them.
//!
//! ```text
//! the pod's own Services, its `weir.dev/dependencies` hint,
//! what the proxy asks for on demand (VHDS `outbound|<port>/<host>`, ODCDS cluster names)
//! and what it says it holds on reconnect  --Scope::declare / Scope::learn-->  Services
//!   in scope
//! profile snapshot (every cluster, every VHDS virtual host)  --Scope::cut-->
//!   the CDS and VHDS type snapshots the stream serves: the scope's, the profile's own
//!   clusters, and one resource per on-demand name (the Service's virtual host under the
//!   name asked for, or a passthrough virtual host for a Host that is no Service)
//! ```
//!
//! The profile snapshots stay shared by every proxy of a profile; a scope is a set of
//! Service keys per stream and its cut is recomputed from the change lists, so a scoped
//! stream costs O(scope), not O(mesh). A cut keeps generations of its own (one per change),
//! so the ADS state machines diff it like any snapshot.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::route::v3::VirtualHost;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

use crate::names;
use crate::object_key::ObjectKey;
use crate::resources::{Resource, ResourceType};
use crate::snapshot::{ResourceMap, TypeSnapshot};

/// At most this many Hosts that name no Service are remembered per proxy (each is a
/// virtual host in its Envoy); the oldest go first and are asked for again when used.
pub const MAX_PASSTHROUGH_ALIASES: usize = 256;

/// Why a Service is in a scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// The proxy's pod backs it, or its `weir.dev/dependencies` annotation names it.
    Declared,
    /// The proxy asked for it (on demand, or it held it when it reconnected).
    Learned,
}

/// What an on-demand VHDS name resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Alias {
    /// The VHDS name of a Service port's virtual host, whose domains include the Host.
    VirtualHost(Arc<str>),
    /// The same, for a Host in the short form (`name`, `name:port`), which the virtual
    /// host leaves out (it means another Service in another namespace): served as a copy
    /// of its own, named after the request, with that Host as its one domain.
    Short(Arc<str>),
    /// A Host that names no Service of the mesh: passed through, as unscoped proxies do.
    Passthrough,
}

/// The scope of one stream. See the module docs.
#[derive(Debug, Default)]
pub struct Scope {
    /// The caller's namespace: bare Service names resolve in it.
    namespace: String,
    services: BTreeMap<ObjectKey, Reason>,
    aliases: BTreeMap<Arc<str>, Alias>,
    /// Passthrough aliases in the order learned: a workload that sends ever new Hosts to
    /// mesh addresses keeps the newest [`MAX_PASSTHROUGH_ALIASES`] only.
    passthrough: std::collections::VecDeque<Arc<str>>,
    /// Bumped whenever the Services or aliases change.
    version: u64,
    /// The last cut of CDS and of VHDS.
    cuts: [Option<Cut>; 2],
}

/// A cut: the profile type snapshot it was cut from, the cut, the scope version.
type Cut = (Arc<TypeSnapshot>, Arc<TypeSnapshot>, u64);

/// The Service a cluster or VHDS name belongs to (`...|<name>.<ns>.svc.cluster.local`,
/// `outbound|<port>/<name>.<ns>.svc.cluster.local:<port>`); None for the profile's own
/// clusters (passthrough, tracing) and for names of no Service.
pub fn service_of(name: &str) -> Option<ObjectKey> {
    if name.starts_with(names::CONSUMER_PREFIX) {
        // A namespace's variant of a virtual host: served in its place, never as itself.
        return None;
    }
    let fqdn = if let Some((_, vhost)) = name.split_once('/') {
        vhost.rsplit_once(':').map_or(vhost, |(host, _)| host)
    } else if name.starts_with("outbound|") {
        name.rsplit('|').next()?
    } else {
        return None;
    };
    let stem = fqdn
        .strip_suffix(names::CLUSTER_DOMAIN)?
        .strip_suffix(".svc.")?;
    let (service, namespace) = stem.split_once('.')?;
    (!service.is_empty() && !namespace.is_empty() && !namespace.contains('.'))
        .then(|| ObjectKey::new(namespace, service))
}

impl Scope {
    /// An empty scope for a proxy in `namespace`.
    pub fn new(namespace: &str) -> Scope {
        Scope {
            namespace: namespace.to_string(),
            ..Default::default()
        }
    }

    /// The Services in scope, with why.
    pub fn services(&self) -> &BTreeMap<ObjectKey, Reason> {
        &self.services
    }

    /// Sets the declared Services (the pod's own and its hint); learned ones stay.
    /// Returns whether the scope changed.
    pub fn declare(&mut self, declared: impl IntoIterator<Item = ObjectKey>) -> bool {
        let mut next: BTreeMap<ObjectKey, Reason> = self
            .services
            .iter()
            .filter(|(_, reason)| **reason == Reason::Learned)
            .map(|(k, r)| (k.clone(), *r))
            .collect();
        next.extend(declared.into_iter().map(|k| (k, Reason::Declared)));
        if next == self.services {
            return false;
        }
        self.services = next;
        self.version += 1;
        true
    }

    /// Learns from names the proxy asked for (or holds) of type `t`: cluster names add their
    /// Service; VHDS names (`outbound|<port>/<host>`) are resolved against `vhosts` (the
    /// profile's VHDS map) with `by_address` for a Host that is an address. Returns whether
    /// the scope changed.
    pub fn learn<'a>(
        &mut self,
        t: ResourceType,
        names: impl IntoIterator<Item = &'a str>,
        vhosts: &ResourceMap,
        by_address: impl Fn(&str) -> Option<ObjectKey>,
    ) -> bool {
        let mut changed = false;
        for name in names {
            match t {
                ResourceType::Cluster => {
                    if let Some(key) = service_of(name) {
                        changed |= self.add(key);
                    }
                }
                ResourceType::VirtualHost => {
                    if vhosts.contains_key(name) {
                        // A name the proxy holds from its scope (a reconnect).
                        if let Some(key) = service_of(name) {
                            changed |= self.add(key);
                        }
                        continue;
                    }
                    if self.aliases.contains_key(name) {
                        continue;
                    }
                    let resolved = self.resolve(name, vhosts, &by_address);
                    if let Alias::VirtualHost(vhds) | Alias::Short(vhds) = &resolved {
                        if let Some(key) = service_of(vhds) {
                            self.add(key);
                        }
                    }
                    let name: Arc<str> = name.into();
                    if resolved == Alias::Passthrough {
                        self.passthrough.push_back(name.clone());
                        if self.passthrough.len() > MAX_PASSTHROUGH_ALIASES {
                            if let Some(oldest) = self.passthrough.pop_front() {
                                self.aliases.remove(&oldest);
                            }
                        }
                    }
                    self.aliases.insert(name, resolved);
                    changed = true;
                }
                _ => {}
            }
        }
        if changed {
            self.version += 1;
        }
        changed
    }

    /// Drops a Service (deleted from the mesh, or unused) and the names that led to it.
    pub fn forget(&mut self, key: &ObjectKey) -> bool {
        if self.services.remove(key).is_none() {
            return false;
        }
        self.aliases.retain(|_, alias| match alias {
            Alias::VirtualHost(vhds) | Alias::Short(vhds) => service_of(vhds).as_ref() != Some(key),
            Alias::Passthrough => true,
        });
        self.version += 1;
        true
    }

    fn add(&mut self, key: ObjectKey) -> bool {
        if self.services.contains_key(&key) {
            return false;
        }
        self.services.insert(key, Reason::Learned);
        true
    }

    /// What `outbound|<port>/<host>` names: the Service port whose virtual host has that
    /// Host among its domains (the DNS forms, bare names in the caller's namespace, the
    /// ClusterIP), with or without the table's port.
    fn resolve(
        &self,
        name: &str,
        vhosts: &ResourceMap,
        by_address: &impl Fn(&str) -> Option<ObjectKey>,
    ) -> Alias {
        let Some((table, host)) = name.split_once('/') else {
            return Alias::Passthrough;
        };
        let Some(port) = table
            .strip_prefix("outbound|")
            .and_then(|p| p.parse::<u16>().ok())
        else {
            return Alias::Passthrough;
        };
        let host = match host.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') || h.ends_with(']') => {
                if p.parse::<u16>().ok() != Some(port) {
                    return Alias::Passthrough;
                }
                h
            }
            _ => host,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let short = !host.contains('.') && !host.contains(':');
        let key = if host.parse::<std::net::IpAddr>().is_ok() {
            by_address(host)
        } else {
            names::service_named(host, &self.namespace)
        };
        match key
            .map(|k| names::vhds_name(port, &names::vhost_name(&k, port)))
            .filter(|vhds| vhosts.contains_key(vhds.as_str()))
        {
            None => Alias::Passthrough,
            Some(vhds) if short => Alias::Short(vhds.into()),
            Some(vhds) => Alias::VirtualHost(vhds.into()),
        }
    }

    /// What the stream serves of `base` (the profile's CDS or VHDS type snapshot): see
    /// the module docs. Other types are served as they are.
    pub fn cut(&mut self, t: ResourceType, base: &Arc<TypeSnapshot>) -> Arc<TypeSnapshot> {
        let slot = match t {
            ResourceType::Cluster => 0,
            ResourceType::VirtualHost => 1,
            _ => return base.clone(),
        };
        if let Some((from, cut, version)) = &self.cuts[slot] {
            if Arc::ptr_eq(from, base) && *version == self.version {
                return cut.clone();
            }
        }
        let wanted = |services: &BTreeMap<ObjectKey, Reason>, name: &str| match service_of(name) {
            Some(key) => services.contains_key(&key),
            // The profile's own clusters (passthrough, tracing), each table's placeholder.
            None => !name.starts_with(names::CONSUMER_PREFIX),
        };
        // The common case, a change of some resources of the profile and none removed:
        // patch the last cut with the change list, O(change) rather than O(mesh).
        let follows = self.cuts[slot].as_ref().filter(|(from, _, version)| {
            *version == self.version
                && base.generation == from.generation + 1
                && base.removed.is_empty()
        });
        let mut resources = if let Some((_, last, _)) = follows {
            let mut resources = last.resources.clone();
            for name in base.changed.iter() {
                if let Some(r) = base.resources.get(name) {
                    if wanted(&self.services, name) {
                        resources.insert(name.clone(), r.clone());
                    }
                }
            }
            resources
        } else {
            if t == ResourceType::Cluster {
                // Learned Services that have no cluster any more were deleted: they leave.
                let present: std::collections::BTreeSet<ObjectKey> = base
                    .resources
                    .keys()
                    .filter_map(|n| service_of(n))
                    .collect();
                let gone: Vec<ObjectKey> = self
                    .services
                    .iter()
                    .filter(|(k, r)| **r == Reason::Learned && !present.contains(*k))
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in &gone {
                    self.forget(key);
                }
            }
            base.resources
                .iter()
                .filter(|(name, _)| wanted(&self.services, name))
                .map(|(name, r)| (name.clone(), r.clone()))
                .collect()
        };
        if t == ResourceType::VirtualHost {
            // The caller's namespace's own routes (consumer routes) in place of the
            // producer's, under the usual names.
            let prefix = names::consumer_route_prefix(&self.namespace);
            let theirs: BTreeMap<&str, &Resource> =
                crate::snapshot::with_prefix(&base.resources, &prefix)
                    .map(|(k, r)| (&k[prefix.len()..], r))
                    .collect();
            for (name, r) in &theirs {
                if let Some((key, _)) = resources.get_key_value(*name) {
                    // The variant's body, shared (it is only ever sent under this name).
                    let mut r = (*r).clone();
                    r.name = key.clone();
                    resources.insert(r.name.clone(), r);
                }
            }
            let body_of = |vhds: &str| {
                theirs
                    .get(vhds)
                    .copied()
                    .or_else(|| base.resources.get(vhds))
            };
            for (alias, target) in &self.aliases {
                let body = match target {
                    Alias::VirtualHost(vhds) => {
                        // The Service's own virtual host (shared, not copied), with the name
                        // asked for as its alias: Envoy goes on with the waiting request
                        // once a resource of that name or alias arrives.
                        let own = resources.get(vhds.as_ref()).cloned();
                        if let Some(mut r) = own.or_else(|| base.resources.get(vhds).cloned()) {
                            r.aliases = vec![alias.clone()];
                            resources.insert(alias.clone(), r);
                        }
                        continue;
                    }
                    Alias::Short(vhds) => match body_of(vhds) {
                        Some(r) => renamed(&r.body, alias),
                        None => continue,
                    },
                    Alias::Passthrough => passthrough(alias),
                };
                // A virtual host of its own, under the name asked for.
                resources.insert(alias.clone(), Resource::from_any(alias.clone(), body));
            }
        }
        let previous = self.cuts[slot].as_ref().map(|(_, cut, _)| cut.clone());
        let cut = Arc::new(next_generation(previous.as_deref(), resources));
        self.cuts[slot] = Some((base.clone(), cut.clone(), self.version));
        cut
    }
}

/// A type snapshot of `resources` following `previous`: the next generation, with what
/// changed between them.
fn next_generation(previous: Option<&TypeSnapshot>, resources: ResourceMap) -> TypeSnapshot {
    let Some(previous) = previous else {
        return TypeSnapshot::first(resources);
    };
    let changed: Vec<Arc<str>> = resources
        .iter()
        .filter(|(n, r)| previous.resources.get(*n).map(|p| p.version) != Some(r.version))
        .map(|(n, _)| n.clone())
        .collect();
    let removed: Vec<Arc<str>> = previous
        .resources
        .keys()
        .filter(|n| !resources.contains_key(*n))
        .cloned()
        .collect();
    if changed.is_empty() && removed.is_empty() {
        return previous.clone();
    }
    let mut next = TypeSnapshot::first(resources);
    next.generation = previous.generation + 1;
    next.changed = changed.into();
    next.removed = removed.into();
    next
}

/// A copy of a virtual host named after the on-demand name `alias`
/// (`outbound|<port>/<host>`), with that Host as its one domain.
fn renamed(body: &Any, alias: &str) -> Any {
    let mut vhost = VirtualHost::decode(body.value.as_slice()).unwrap_or_default();
    let host = alias.split_once('/').map_or("", |(_, h)| h);
    vhost.name = alias.to_string();
    vhost.domains = vec![host.to_string()];
    Any {
        type_url: VirtualHost::type_url(),
        value: vhost.encode_to_vec(),
    }
}

/// The virtual host of a Host that is no Service: to its original destination, untouched,
/// as the route tables of unscoped proxies end.
fn passthrough(alias: &str) -> Any {
    let host = alias.split_once('/').map_or("", |(_, host)| host);
    let mut vhost: VirtualHost = crate::translate::outbound::route::passthrough_virtual_host();
    // Named after the request, so that dropping the name (see MAX_PASSTHROUGH_ALIASES)
    // removes the virtual host from the proxy.
    vhost.name = alias.to_string();
    vhost.domains = vec![host.to_string()];
    Any {
        type_url: VirtualHost::type_url(),
        value: vhost.encode_to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vhosts(names: &[&str]) -> ResourceMap {
        names
            .iter()
            .map(|n| {
                let r = Resource::from_any(
                    *n,
                    Any {
                        type_url: VirtualHost::type_url(),
                        value: n.as_bytes().to_vec(),
                    },
                );
                (Arc::from(*n), r)
            })
            .collect()
    }

    const REVIEWS: &str = "outbound|8080/reviews.shop.svc.cluster.local:8080";
    const RATINGS: &str = "outbound|8080/ratings.shop.svc.cluster.local:8080";

    #[test]
    fn names_resolve_to_their_service() {
        assert_eq!(
            service_of("outbound|8080|v1|reviews.shop.svc.cluster.local"),
            Some(ObjectKey::new("shop", "reviews"))
        );
        assert_eq!(service_of(REVIEWS), Some(ObjectKey::new("shop", "reviews")));
        assert_eq!(service_of("PassthroughCluster"), None);
    }

    #[test]
    fn every_form_of_a_host_resolves_to_the_same_virtual_host_and_others_pass_through() {
        let map = vhosts(&[REVIEWS, RATINGS]);
        let ip = |a: &str| (a == "10.96.0.7").then(|| ObjectKey::new("shop", "reviews"));
        for host in [
            "reviews",
            "reviews:8080",
            "reviews.shop",
            "reviews.shop.svc:8080",
            "reviews.shop.svc.cluster.local",
            "10.96.0.7:8080",
        ] {
            let scope = Scope::new("shop");
            let alias = format!("outbound|8080/{host}");
            let want = if host.starts_with("reviews.") || host.starts_with("10.") {
                Alias::VirtualHost(REVIEWS.into())
            } else {
                Alias::Short(REVIEWS.into())
            };
            assert_eq!(scope.resolve(&alias, &map, &ip), want, "{host}");
        }
        let elsewhere = Scope::new("other");
        for host in [
            "reviews",
            "reviews.shop:9090",
            "example.com",
            "10.1.2.3",
            // Not a name DNS resolves (no `svc`): passed through, as an unscoped table does.
            "reviews.shop.cluster.local",
        ] {
            assert_eq!(
                elsewhere.resolve(&format!("outbound|8080/{host}"), &map, &ip),
                Alias::Passthrough,
                "{host}"
            );
        }
    }

    #[test]
    fn the_cut_holds_the_scope_and_follows_it_by_generations() {
        let clusters: ResourceMap = [
            "outbound|8080||reviews.shop.svc.cluster.local",
            "outbound|8080|v1|reviews.shop.svc.cluster.local",
            "outbound|8080||ratings.shop.svc.cluster.local",
            "PassthroughCluster",
        ]
        .iter()
        .map(|n| (Arc::from(*n), crate::ads::tests::mk_resource(n, "1")))
        .collect();
        let base = Arc::new(TypeSnapshot::first(clusters));
        let mut scope = Scope::new("shop");
        let cut = scope.cut(ResourceType::Cluster, &base);
        // Before anything is learned: the profile's own clusters only.
        assert_eq!(
            cut.resources.keys().map(|k| k.as_ref()).collect::<Vec<_>>(),
            ["PassthroughCluster"]
        );
        let vhds = vhosts(&[REVIEWS, RATINGS]);
        assert!(scope.learn(
            ResourceType::VirtualHost,
            ["outbound|8080/reviews"],
            &vhds,
            |_| None
        ));
        let grown = scope.cut(ResourceType::Cluster, &base);
        assert_eq!(grown.generation, cut.generation + 1);
        assert_eq!(grown.changed.len(), 2, "the Service's two clusters");
        let vbase = Arc::new(TypeSnapshot::first(vhds));
        let served = scope.cut(ResourceType::VirtualHost, &vbase);
        let names: Vec<&str> = served.resources.keys().map(|k| k.as_ref()).collect();
        assert_eq!(names, ["outbound|8080/reviews", REVIEWS]);
        // Learning the same again changes nothing; forgetting drops the alias too.
        assert!(!scope.learn(
            ResourceType::VirtualHost,
            ["outbound|8080/reviews"],
            &vbase.resources,
            |_| None
        ));
        assert!(scope.forget(&ObjectKey::new("shop", "reviews")));
        assert!(scope
            .cut(ResourceType::VirtualHost, &vbase)
            .resources
            .is_empty());
    }

    /// Every domain of every virtual host Envoy would hold (it files them by name).
    fn domains_of(resources: &ResourceMap) -> Vec<String> {
        let by_name: BTreeMap<String, Vec<String>> = resources
            .values()
            .map(|r| VirtualHost::decode(r.body.value.as_slice()).unwrap())
            .map(|v| (v.name, v.domains))
            .collect();
        by_name.into_values().flatten().collect()
    }

    /// Service `api` (port 8080) in namespaces `shop` and `other`.
    fn two_apis() -> crate::Index {
        let mut index = crate::Index::new();
        for (ns, ip) in [("shop", "10.96.0.1"), ("other", "10.96.0.2")] {
            let svc = crate::testing::mk_service(ns, "api", ip, &[8080]);
            index.apply(crate::Event::apply(crate::Object::Service(svc)));
        }
        index
    }

    #[test]
    fn services_of_one_name_in_two_namespaces_never_share_a_domain() {
        use crate::SnapshotBuilder;
        let mut index = two_apis();
        let mut builder = SnapshotBuilder::new();
        builder.update(&mut index);
        let profile =
            crate::ProxyProfile::new(crate::Capture::Transparent, weir_api::MtlsMode::Strict)
                .scoped(true);
        let snapshot = builder.snapshot(profile);
        let base = snapshot.types[ResourceType::VirtualHost].clone();
        let mut scope = Scope::new("shop");
        scope.learn(
            ResourceType::VirtualHost,
            [
                "outbound|8080/api:8080",
                "outbound|8080/api.other:8080",
                "outbound|8080/api",
            ],
            &base.resources,
            |_| None,
        );
        let served = scope.cut(ResourceType::VirtualHost, &base);
        let mut all = domains_of(&served.resources);
        let count = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), count, "no domain twice: {all:?}");
        // The short name is the caller's namespace's Service.
        let short = VirtualHost::decode(
            served.resources["outbound|8080/api:8080"]
                .body
                .value
                .as_slice(),
        )
        .unwrap();
        assert_eq!(short.domains, ["api:8080"]);
        let route = format!("{:?}", short.routes);
        assert!(route.contains("api.shop.svc"), "{route}");
    }

    #[test]
    fn an_unscoped_port_table_leaves_out_short_names_two_namespaces_share() {
        use crate::testing::mk_service;
        use crate::{Event, Object, SnapshotBuilder};
        use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
        let mut index = two_apis();
        index.apply(Event::apply(Object::Service(mk_service(
            "shop",
            "web",
            "10.96.0.3",
            &[8080],
        ))));
        let mut builder = SnapshotBuilder::new();
        builder.update(&mut index);
        let profile =
            crate::ProxyProfile::new(crate::Capture::Transparent, weir_api::MtlsMode::Strict);
        let snapshot = builder.snapshot(profile);
        let table = RouteConfiguration::decode(
            snapshot.of(ResourceType::Route)["outbound|8080"]
                .body
                .value
                .as_slice(),
        )
        .unwrap();
        let mut all: Vec<String> = table
            .virtual_hosts
            .into_iter()
            .flat_map(|v| v.domains)
            .collect();
        let count = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), count, "no domain twice");
        assert!(
            !all.contains(&"api:8080".to_string()),
            "the shared short name is left out"
        );
        assert!(
            all.contains(&"web:8080".to_string()),
            "a name only one namespace has stays"
        );
        assert!(all.contains(&"api.other:8080".to_string()));
    }

    #[test]
    fn a_scoped_proxy_gets_its_namespaces_consumer_routes() {
        use crate::testing::mk_service;
        use crate::{Event, Index, Object, SnapshotBuilder};
        let mut index = Index::new();
        index.apply(Event::apply(Object::Service(mk_service(
            "default",
            "reviews",
            "10.0.0.1",
            &[9080],
        ))));
        crate::testing::apply_yaml(&mut index, crate::testing::CONSUMER_ROUTE);
        let mut builder = SnapshotBuilder::new();
        builder.update(&mut index);
        let profile =
            crate::ProxyProfile::new(crate::Capture::Transparent, weir_api::MtlsMode::Strict)
                .scoped(true);
        let snapshot = builder.snapshot(profile);
        // Its route tables stay shells: no full per-namespace table comes over them.
        assert!(
            !snapshot
                .of(ResourceType::Route)
                .keys()
                .any(|k| k.starts_with(names::CONSUMER_PREFIX)),
            "{:?}",
            snapshot.of(ResourceType::Route).keys().collect::<Vec<_>>()
        );
        let base = snapshot.types[ResourceType::VirtualHost].clone();
        let sets_header = |namespace: &str, alias: &str| {
            let mut scope = Scope::new(namespace);
            scope.learn(ResourceType::VirtualHost, [alias], &base.resources, |_| {
                None
            });
            let served = scope.cut(ResourceType::VirtualHost, &base);
            let vhosts: Vec<&Resource> = served
                .resources
                .values()
                .filter(|r| !r.name.ends_with(names::VHDS_PLACEHOLDER))
                .collect();
            !vhosts.is_empty()
                && vhosts.iter().all(|r| {
                    r.body
                        .value
                        .windows(b"x-consumer".len())
                        .any(|w| w == b"x-consumer")
                })
        };
        let alias = "outbound|9080/reviews.default:9080";
        assert!(
            sets_header("consumer", alias),
            "the consumer's callers get its route"
        );
        assert!(!sets_header("default", alias), "the others do not");
        assert!(sets_header(
            "consumer",
            "outbound|9080/reviews.default.svc.cluster.local:9080"
        ));
    }

    #[test]
    fn a_flood_of_unknown_hosts_keeps_the_newest_only() {
        let map = vhosts(&[REVIEWS]);
        let mut scope = Scope::new("shop");
        let names: Vec<String> = (0..MAX_PASSTHROUGH_ALIASES + 10)
            .map(|i| format!("outbound|8080/host-{i}.example.com"))
            .collect();
        scope.learn(
            ResourceType::VirtualHost,
            names.iter().map(String::as_str),
            &map,
            |_| None,
        );
        scope.learn(
            ResourceType::VirtualHost,
            ["outbound|8080/reviews"],
            &map,
            |_| None,
        );
        assert_eq!(scope.aliases.len(), MAX_PASSTHROUGH_ALIASES + 1);
        assert!(!scope
            .aliases
            .contains_key("outbound|8080/host-0.example.com"));
        assert!(scope.aliases.contains_key(names.last().unwrap().as_str()));
        assert!(
            scope.aliases.contains_key("outbound|8080/reviews"),
            "Services stay"
        );
    }
}
