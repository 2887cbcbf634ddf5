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
//!
//! A scope also shrinks:
//!
//! ```text
//! the proxy's load reports (LRS: requests and TCP connections per cluster, in progress
//!   or issued since the last report)  --used_services--> Services used  --Scope::touch-->
//!   last use per Service
//! every report period  --Scope::shrink(now, idle)-->  learned Services unused for `idle`
//!   (directly, or through the clusters of other Services their routes send to) go
//!   dormant: the next cut removes their clusters (what costs a sidecar memory) and keeps
//!   their virtual hosts, whose routes now name wake names (`wake|<token>|<cluster>`)
//! the next call to one  --route: a wake name, no such cluster: Envoy asks for it (ODCDS)-->
//!   Scope::learn wakes the Service: its clusters come back, and the wake name is served
//!   as a copy of the cluster it names, so the waiting request goes on with the Service's
//!   routes, mTLS and policy; later requests take the restored virtual host
//! ```
//!
//! Why wake names: Envoy 1.40 never asks again for a name it once asked for on demand
//! (its ODCDS keeps one subscription per cluster name, "already subscribed, skipping";
//! a VHDS name likewise). A removed virtual host would leave its Host at 404, a removed
//! cluster that was asked for by name would leave its route waiting. So virtual hosts stay,
//! and each sleep gives the dormant Service's clusters names never asked for. Clusters the
//! proxy did ask for by their own name (a TCP connection's, or a first call that beat its
//! clusters' warming) pin their Service: it never sleeps (`Scope::pin`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterStats;
use envoy_types::pb::envoy::config::route::v3::{route, route_action, VirtualHost};
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

use crate::names;
use crate::object_key::ObjectKey;
use crate::resources::{Resource, ResourceType};
use crate::snapshot::{ResourceMap, TypeSnapshot};

/// At most this many Hosts that name no Service are passed through per proxy (each is a
/// virtual host in its Envoy, and Envoy never lets go of a name it asked for): a workload
/// that sends ever new Hosts to mesh addresses gets 404 from its sidecar for the ones
/// beyond, while the first keep working.
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
    /// Learned Services the proxy stopped using, with the token of their wake names: their
    /// virtual hosts are served (naming wake names), their clusters are not.
    dormant: BTreeMap<ObjectKey, Arc<str>>,
    /// The token of each Service's last sleep (its wake names are served while awake).
    tokens: BTreeMap<ObjectKey, Arc<str>>,
    /// Services with a cluster the proxy asked for by its own name: they never sleep.
    pinned: BTreeSet<ObjectKey>,
    /// Wake names the proxy asked for, served as copies of the clusters they name while
    /// their Service is awake.
    wake_names: BTreeMap<Arc<str>, ObjectKey>,
    /// Makes this scope's wake tokens differ from another stream's (a reconnecting proxy
    /// asks again for the wake names of its last stream: they must not wake anything).
    salt: u64,
    /// Sleeps so far: the next token.
    sleeps: u64,
    /// Dormant virtual hosts as served: (the profile resource's version, the scope
    /// version, the virtual host with wake names).
    rewritten: BTreeMap<Arc<str>, (u64, u64, Resource)>,
    aliases: BTreeMap<Arc<str>, Alias>,
    /// How many aliases were passthrough when learned (at most
    /// [`MAX_PASSTHROUGH_ALIASES`]).
    passthrough: usize,
    /// When each Service in scope was last seen used (or, for one not yet seen, first
    /// looked at by [`Scope::shrink`]).
    last_used: BTreeMap<ObjectKey, Instant>,
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
    if let Some((_, cluster)) = wake_name_parts(name) {
        return service_of(cluster);
    }
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

/// What a wake name starts with (see the module docs).
const WAKE_PREFIX: &str = "wake|";

/// A wake name's token and the cluster it names.
fn wake_name_parts(name: &str) -> Option<(&str, &str)> {
    name.strip_prefix(WAKE_PREFIX)?.split_once('|')
}

impl Scope {
    /// An empty scope for a proxy in `namespace`.
    pub fn new(namespace: &str) -> Scope {
        let salt = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Scope {
            namespace: namespace.to_string(),
            salt,
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
                    if let Some((token, _)) = wake_name_parts(name) {
                        // A wake name of this stream's: its Service wakes. Another's (a
                        // reconnect): nothing, it is answered as absent.
                        let Some(key) = service_of(name) else {
                            continue;
                        };
                        // Its last sleep's token: it wakes (or woke already, by another of
                        // its wake names: requests in flight may name several).
                        if self.tokens.get(&key).is_some_and(|t| **t == *token) {
                            self.add_with_routed(key.clone(), vhosts);
                            changed |= self.wake_names.insert(name.into(), key).is_none();
                        }
                    } else if let Some(key) = service_of(name) {
                        changed |= self.add_with_routed(key, vhosts);
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
                            self.add(key.clone());
                            self.add_routed(std::iter::once(vhds.as_ref()), &key, vhosts);
                        }
                    }
                    let name: Arc<str> = name.into();
                    if resolved == Alias::Passthrough {
                        if self.passthrough >= MAX_PASSTHROUGH_ALIASES {
                            // Answered as absent (see MAX_PASSTHROUGH_ALIASES).
                            continue;
                        }
                        self.passthrough += 1;
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

    /// Notes the cluster names the proxy asked for by name (not the ones it reports
    /// holding): their Services never sleep, as Envoy would not ask for them again.
    pub fn pin<'a>(&mut self, asked: impl IntoIterator<Item = &'a str>) {
        for name in asked {
            if wake_name_parts(name).is_none() {
                if let Some(key) = service_of(name).filter(|k| self.services.contains_key(k)) {
                    self.pinned.insert(key);
                }
            }
        }
    }

    /// Drops a Service deleted from the mesh and the names that led to it.
    pub fn forget(&mut self, key: &ObjectKey) -> bool {
        let dormant = self.dormant.remove(key).is_some();
        if self.services.remove(key).is_none() && !dormant {
            return false;
        }
        self.pinned.remove(key);
        self.tokens.remove(key);
        self.wake_names.retain(|_, k| k != key);
        self.last_used.remove(key);
        // Its on-demand names stay (Envoy would not ask for them again): passed through
        // while the Service is gone, its virtual host again if it comes back.
        self.version += 1;
        true
    }

    /// Forgets when Services were last used: with no usage signal nothing is known unused,
    /// and the next [`Scope::shrink`] starts every clock again.
    pub fn restart_clock(&mut self) {
        self.last_used.clear();
    }

    /// Records that the proxy used these Services (its load report) at `now`.
    pub fn touch(&mut self, used: impl IntoIterator<Item = ObjectKey>, now: Instant) {
        for key in used {
            if self.services.contains_key(&key) {
                self.last_used.insert(key, now);
            }
        }
    }

    /// Bumped whenever the Services in scope or the names asked for change.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// What the scope holds, for the admin views, but `services`, which the views take
    /// from the clusters served (so a stream does not keep a copy).
    pub fn view(&self) -> crate::views::proxies::ScopeView {
        let name = |k: &ObjectKey| format!("{}/{}", k.namespace, k.name);
        crate::views::proxies::ScopeView {
            services: Vec::new(),
            dormant: self.dormant.keys().map(name).collect(),
            pinned: self.pinned.iter().map(name).collect(),
        }
    }

    /// Whether the proxy stopped using a Service it learned (its clusters are not served).
    pub fn is_dormant(&self, key: &ObjectKey) -> bool {
        self.dormant.contains_key(key)
    }

    /// Whether a Service never sleeps (the proxy asked for one of its clusters by name).
    pub fn is_pinned(&self, key: &ObjectKey) -> bool {
        self.pinned.contains(key)
    }

    /// Puts the learned Services the proxy has not used for `idle` to sleep (their
    /// clusters leave the proxy, see the module docs) and returns them.
    /// A Service is used when its own clusters are, or the clusters its virtual hosts send
    /// to (a split or a mirror to another Service's clusters: requests addressed to it
    /// land there). One not seen before counts as used now, so it gets a whole period.
    /// Declared and pinned Services never sleep.
    pub fn shrink(&mut self, now: Instant, idle: Duration) -> Vec<ObjectKey> {
        let services = &self.services;
        self.last_used.retain(|key, _| services.contains_key(key));
        // Only the Services that may sleep are clocked (a declared one is noted when used,
        // for the Services routed through it).
        for (key, reason) in services {
            if *reason == Reason::Learned && !self.pinned.contains(key) {
                self.last_used.entry(key.clone()).or_insert(now);
            }
        }
        let fresh = |at: &Instant| now.saturating_duration_since(*at) < idle;
        let stale: BTreeSet<ObjectKey> = self
            .last_used
            .iter()
            .filter(|(key, at)| {
                !fresh(at)
                    && services.get(*key) == Some(&Reason::Learned)
                    && !self.pinned.contains(*key)
            })
            .map(|(key, _)| key.clone())
            .collect();
        if stale.is_empty() {
            return Vec::new();
        }
        let routed = self.routed_services(&stale);
        let mut gone = Vec::new();
        for key in stale {
            let through = routed
                .get(&key)
                .into_iter()
                .flatten()
                .filter_map(|other| self.last_used.get(other).copied())
                .filter(fresh)
                .max();
            match through {
                Some(at) => {
                    self.last_used.insert(key, at);
                }
                None => {
                    self.services.remove(&key);
                    self.last_used.remove(&key);
                    self.wake_names.retain(|_, k| *k != key);
                    gone.push(key);
                }
            }
        }
        if !gone.is_empty() {
            self.sleeps += 1;
            let token: Arc<str> = format!("{:x}", self.salt.wrapping_add(self.sleeps)).into();
            for key in &gone {
                self.dormant.insert(key.clone(), token.clone());
                self.tokens.insert(key.clone(), token.clone());
            }
            self.version += 1;
        }
        gone
    }

    /// For each of `keys`, the other Services whose clusters its virtual hosts (as last
    /// cut for this stream) send to.
    fn routed_services(
        &self,
        keys: &BTreeSet<ObjectKey>,
    ) -> BTreeMap<ObjectKey, BTreeSet<ObjectKey>> {
        let mut routed: BTreeMap<ObjectKey, BTreeSet<ObjectKey>> = BTreeMap::new();
        let Some((_, cut, _)) = &self.cuts[1] else {
            return routed;
        };
        for (name, resource) in &cut.resources {
            let Some(key) = service_of(name).filter(|k| keys.contains(k)) else {
                continue;
            };
            let others = services_routed_to(resource, &key);
            routed.entry(key).or_default().extend(others);
        }
        routed
    }

    /// Adds a Service and the Services its virtual hosts (as this stream was last served
    /// them) send to.
    fn add_with_routed(&mut self, key: ObjectKey, vhosts: &ResourceMap) -> bool {
        if !self.add(key.clone()) {
            return false;
        }
        let names: Vec<Arc<str>> = self.cuts[1]
            .as_ref()
            .map(|(_, cut, _)| {
                cut.resources
                    .keys()
                    .filter(|n| service_of(n).as_ref() == Some(&key))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        self.add_routed(names.iter().map(|n| n.as_ref()), &key, vhosts);
        true
    }

    /// Adds the Services the virtual hosts `names` (of the profile's `vhosts`) send to
    /// besides `key` (a split, a mirror): their clusters are pushed with `key`'s rather
    /// than asked for one by one (which would pin them).
    fn add_routed<'a>(
        &mut self,
        names: impl Iterator<Item = &'a str>,
        key: &ObjectKey,
        vhosts: &ResourceMap,
    ) {
        let routed: Vec<ObjectKey> = names
            .filter_map(|n| vhosts.get(n))
            .flat_map(|r| services_routed_to(r, key))
            .collect();
        for other in routed {
            self.add(other);
        }
    }

    fn add(&mut self, key: ObjectKey) -> bool {
        if self.services.contains_key(&key) {
            return false;
        }
        self.dormant.remove(&key);
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
        let wanted = |services: &BTreeMap<ObjectKey, Reason>,
                      dormant: &BTreeMap<ObjectKey, Arc<str>>,
                      name: &str| match service_of(name) {
            Some(key) => {
                services.contains_key(&key)
                    || (t == ResourceType::VirtualHost && dormant.contains_key(&key))
            }
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
                    if wanted(&self.services, &self.dormant, name) {
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
                    .filter(|(_, r)| **r == Reason::Learned)
                    .map(|(k, _)| k)
                    .chain(self.dormant.keys())
                    .filter(|k| !present.contains(*k))
                    .cloned()
                    .collect();
                for key in &gone {
                    self.forget(key);
                }
            }
            base.resources
                .iter()
                .filter(|(name, _)| wanted(&self.services, &self.dormant, name))
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
            self.rewrite_dormant(&mut resources);
            let body_of = |resources: &ResourceMap, vhds: &str| {
                resources.get(vhds).cloned().or_else(|| {
                    theirs
                        .get(vhds)
                        .copied()
                        .or_else(|| base.resources.get(vhds))
                        .cloned()
                })
            };
            // A Host passed through because it named no Service may name one now: it
            // gets the Service's virtual host, never a plaintext path around its policy.
            // Only a virtual host the profile did not have before can change that (a cut
            // runs at every push: the Hosts are not resolved again for nothing).
            let new_vhosts = match &self.cuts[1] {
                Some((from, _, _)) if base.generation == from.generation + 1 => {
                    base.changed.iter().any(|n| !from.resources.contains_key(n))
                }
                _ => true,
            };
            let now_services: Vec<(Arc<str>, Alias)> = self
                .aliases
                .iter()
                .filter(|_| new_vhosts)
                .filter(|(_, target)| **target == Alias::Passthrough)
                .filter_map(|(alias, _)| {
                    let resolved = self.resolve(alias, &base.resources, &|_| None);
                    (resolved != Alias::Passthrough).then(|| (alias.clone(), resolved))
                })
                .collect();
            for (alias, resolved) in now_services {
                if let Alias::VirtualHost(vhds) | Alias::Short(vhds) = &resolved {
                    if let Some(key) = service_of(vhds) {
                        self.add(key);
                        self.version += 1;
                    }
                }
                self.aliases.insert(alias, resolved);
            }
            for (alias, target) in &self.aliases {
                let target = match target {
                    // The Service is gone: passed through meanwhile.
                    Alias::VirtualHost(vhds) | Alias::Short(vhds)
                        if !base.resources.contains_key(vhds.as_ref()) =>
                    {
                        &Alias::Passthrough
                    }
                    target => target,
                };
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
                    Alias::Short(vhds) => match body_of(&resources, vhds) {
                        Some(r) => renamed(&r.body, alias),
                        None => continue,
                    },
                    Alias::Passthrough => passthrough(alias),
                };
                // A virtual host of its own, under the name asked for.
                resources.insert(alias.clone(), Resource::from_any(alias.clone(), body));
            }
        }
        if t == ResourceType::Cluster {
            // The wake names asked for, as copies of the clusters they name (stats under
            // the cluster's own name).
            for (wake, key) in &self.wake_names {
                if !self.services.contains_key(key) {
                    continue;
                }
                let Some((_, cluster)) = wake_name_parts(wake) else {
                    continue;
                };
                let Some(real) = base.resources.get(cluster) else {
                    continue;
                };
                let Ok(mut copy) = Cluster::decode(real.body.value.as_slice()) else {
                    continue;
                };
                copy.name = wake.to_string();
                copy.alt_stat_name = cluster.to_string();
                let any = Any {
                    type_url: Cluster::type_url(),
                    value: copy.encode_to_vec(),
                };
                resources.insert(wake.clone(), Resource::from_any(wake.clone(), any));
            }
        }
        let previous = self.cuts[slot].as_ref().map(|(_, cut, _)| cut.clone());
        let cut = Arc::new(next_generation(previous.as_deref(), resources));
        self.cuts[slot] = Some((base.clone(), cut.clone(), self.version));
        cut
    }
}

/// The Services whose clusters a load report shows in use: a request or a TCP connection
/// (Envoy counts both as requests) issued, finished or in progress since the last report,
/// or one dropped.
pub fn used_services(stats: &[ClusterStats]) -> BTreeSet<ObjectKey> {
    stats
        .iter()
        .filter(|cluster| {
            cluster.total_dropped_requests > 0
                || cluster.upstream_locality_stats.iter().any(|l| {
                    l.total_successful_requests
                        + l.total_error_requests
                        + l.total_requests_in_progress
                        + l.total_issued_requests
                        > 0
                })
        })
        .filter_map(|cluster| service_of(&cluster.cluster_name))
        .collect()
}

/// The Services other than `key` whose clusters the virtual host `vhost` sends to.
fn services_routed_to(vhost: &Resource, key: &ObjectKey) -> Vec<ObjectKey> {
    VirtualHost::decode(vhost.body.value.as_slice())
        .map(|v| {
            routed_clusters(&v)
                .filter_map(service_of)
                .filter(|other| other != key)
                .collect()
        })
        .unwrap_or_default()
}

/// The clusters a virtual host's routes send to (mirrors included).
fn routed_clusters(vhost: &VirtualHost) -> impl Iterator<Item = &str> {
    vhost.routes.iter().flat_map(|r| {
        let mut clusters: Vec<&str> = Vec::new();
        if let Some(route::Action::Route(action)) = &r.action {
            match &action.cluster_specifier {
                Some(route_action::ClusterSpecifier::Cluster(c)) => clusters.push(c),
                Some(route_action::ClusterSpecifier::WeightedClusters(w)) => {
                    clusters.extend(w.clusters.iter().map(|c| c.name.as_str()))
                }
                _ => {}
            }
            clusters.extend(
                action
                    .request_mirror_policies
                    .iter()
                    .map(|m| m.cluster.as_str()),
            );
        }
        clusters
    })
}

impl Scope {
    /// Serves the virtual hosts of dormant Services with their clusters (and those of any
    /// other dormant Service) under wake names; kept until the profile's resource or the
    /// scope changes.
    fn rewrite_dormant(&mut self, resources: &mut ResourceMap) {
        if self.dormant.is_empty() {
            self.rewritten.clear();
            return;
        }
        let version = self.version;
        let mut kept = BTreeMap::new();
        let dormant: Vec<(Arc<str>, Resource)> = resources
            .iter()
            .filter(|(name, _)| service_of(name).is_some_and(|k| self.dormant.contains_key(&k)))
            .map(|(name, r)| (name.clone(), r.clone()))
            .collect();
        for (name, r) in dormant {
            let name = &name;
            let served = match self.rewritten.remove(name) {
                Some((from, at, served)) if from == r.version && at == version => served,
                _ => {
                    let Ok(mut vhost) = VirtualHost::decode(r.body.value.as_slice()) else {
                        continue;
                    };
                    for route in &mut vhost.routes {
                        let Some(route::Action::Route(action)) = &mut route.action else {
                            continue;
                        };
                        let wake = |cluster: &mut String| {
                            let token = service_of(cluster).and_then(|k| self.dormant.get(&k));
                            if let Some(token) = token {
                                *cluster = format!("{WAKE_PREFIX}{token}|{cluster}");
                            }
                        };
                        match &mut action.cluster_specifier {
                            Some(route_action::ClusterSpecifier::Cluster(c)) => wake(c),
                            Some(route_action::ClusterSpecifier::WeightedClusters(w)) => {
                                w.clusters.iter_mut().for_each(|c| wake(&mut c.name))
                            }
                            _ => {}
                        }
                        for mirror in &mut action.request_mirror_policies {
                            wake(&mut mirror.cluster);
                        }
                    }
                    let any = Any {
                        type_url: VirtualHost::type_url(),
                        value: vhost.encode_to_vec(),
                    };
                    Resource::from_any(name.clone(), any)
                }
            };
            kept.insert(name.clone(), (r.version, version, served.clone()));
            resources.insert(name.clone(), served);
        }
        self.rewritten = kept;
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
        // Learning the same again changes nothing.
        assert!(!scope.learn(
            ResourceType::VirtualHost,
            ["outbound|8080/reviews"],
            &vbase.resources,
            |_| None
        ));
    }

    #[test]
    fn a_name_once_asked_for_is_always_answered() {
        // Envoy never asks for an on-demand name twice: whatever becomes of the Service,
        // the name keeps an answer that is right for it.
        let real = |names: &[(&str, &str)]| -> ResourceMap {
            names
                .iter()
                .map(|(name, domain)| {
                    let vhost = VirtualHost {
                        name: name.to_string(),
                        domains: vec![domain.to_string()],
                        ..Default::default()
                    };
                    let any = Any {
                        type_url: VirtualHost::type_url(),
                        value: vhost.encode_to_vec(),
                    };
                    (Arc::from(*name), Resource::from_any(*name, any))
                })
                .collect()
        };
        let with = Arc::new(TypeSnapshot::first(real(&[(REVIEWS, "reviews.shop")])));
        let without = Arc::new(TypeSnapshot::first(real(&[(RATINGS, "ratings.shop")])));
        let mut scope = Scope::new("shop");
        scope.learn(
            ResourceType::VirtualHost,
            ["outbound|8080/reviews.shop", "outbound|8080/ratings.shop"],
            &with.resources,
            |_| None,
        );
        let served = |scope: &mut Scope, base: &Arc<TypeSnapshot>, name: &str| {
            let cut = scope.cut(ResourceType::VirtualHost, base);
            let r = cut.resources.get(name).cloned().expect(name);
            VirtualHost::decode(r.body.value.as_slice()).unwrap()
        };
        // reviews is deleted: its name is passed through, not dropped.
        assert!(scope.forget(&ObjectKey::new("shop", "reviews")));
        let gone = served(&mut scope, &without, "outbound|8080/reviews.shop");
        assert_eq!(gone.name, "outbound|8080/reviews.shop");
        // ratings named no Service when asked for; now it does: its virtual host, and the
        // Service joins the scope.
        let now = served(&mut scope, &without, "outbound|8080/ratings.shop");
        assert!(
            now.domains.iter().any(|d| d == "ratings.shop"),
            "{:?}",
            now.domains
        );
        assert!(scope
            .services()
            .contains_key(&ObjectKey::new("shop", "ratings")));
        // reviews comes back: its virtual host again.
        let back = served(&mut scope, &with, "outbound|8080/reviews.shop");
        assert!(
            back.domains.iter().any(|d| d == "reviews.shop"),
            "{:?}",
            back.domains
        );
    }

    fn clusters_of(services: &[&str]) -> Vec<String> {
        services
            .iter()
            .map(|s| format!("outbound|8080||{s}.shop.svc.cluster.local"))
            .collect()
    }

    #[test]
    fn a_learned_service_unused_for_the_idle_time_leaves_and_a_used_one_stays() {
        let mut scope = Scope::new("shop");
        scope.declare([ObjectKey::new("shop", "details")]);
        let learned = clusters_of(&["reviews", "ratings"]);
        scope.learn(
            ResourceType::Cluster,
            learned.iter().map(String::as_str),
            &ResourceMap::new(),
            |_| None,
        );
        let (t0, idle) = (Instant::now(), Duration::from_secs(10));
        assert!(
            scope.shrink(t0, idle).is_empty(),
            "first seen: a whole period"
        );
        // Reports stopped for a while, then came back: every clock starts again.
        scope.restart_clock();
        assert!(scope.shrink(t0 + Duration::from_secs(11), idle).is_empty());
        scope.restart_clock();
        assert!(scope.shrink(t0, idle).is_empty());
        scope.touch(
            [ObjectKey::new("shop", "reviews")],
            t0 + Duration::from_secs(8),
        );
        assert_eq!(
            scope.shrink(t0 + Duration::from_secs(12), idle),
            [ObjectKey::new("shop", "ratings")]
        );
        assert_eq!(
            scope.shrink(t0 + Duration::from_secs(19), idle),
            [ObjectKey::new("shop", "reviews")]
        );
        assert!(
            scope.shrink(t0 + Duration::from_secs(600), idle).is_empty(),
            "a declared Service never leaves"
        );
        assert_eq!(
            scope.services().keys().cloned().collect::<Vec<_>>(),
            [ObjectKey::new("shop", "details")]
        );
    }

    #[test]
    fn a_service_whose_routes_send_to_another_services_clusters_stays_while_they_are_used() {
        use envoy_types::pb::envoy::config::route::v3::{
            weighted_cluster::ClusterWeight, Route, RouteAction, WeightedCluster,
        };
        let split = VirtualHost {
            name: REVIEWS.into(),
            routes: vec![Route {
                action: Some(route::Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::WeightedClusters(
                        WeightedCluster {
                            clusters: clusters_of(&["reviews", "reviews-v2"])
                                .into_iter()
                                .map(|name| ClusterWeight {
                                    name,
                                    ..Default::default()
                                })
                                .collect(),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        };
        let vhds: ResourceMap = [(
            Arc::from(REVIEWS),
            Resource::from_any(
                REVIEWS,
                Any {
                    type_url: VirtualHost::type_url(),
                    value: split.encode_to_vec(),
                },
            ),
        )]
        .into_iter()
        .collect();
        let base = Arc::new(TypeSnapshot::first(vhds));
        let mut scope = Scope::new("shop");
        scope.learn(
            ResourceType::VirtualHost,
            ["outbound|8080/reviews"],
            &base.resources,
            |_| None,
        );
        let v2 = clusters_of(&["reviews-v2"]);
        scope.learn(
            ResourceType::Cluster,
            [v2[0].as_str()],
            &base.resources,
            |_| None,
        );
        scope.cut(ResourceType::VirtualHost, &base);
        let (t0, idle) = (Instant::now(), Duration::from_secs(10));
        scope.shrink(t0, idle);
        // Only the other Service's cluster is used (all traffic went to the v2 share).
        scope.touch(
            [ObjectKey::new("shop", "reviews-v2")],
            t0 + Duration::from_secs(8),
        );
        assert!(scope.shrink(t0 + Duration::from_secs(12), idle).is_empty());
        assert_eq!(
            scope.shrink(t0 + Duration::from_secs(19), idle),
            [
                ObjectKey::new("shop", "reviews"),
                ObjectKey::new("shop", "reviews-v2")
            ]
        );
        // Dormant: the virtual host and its on-demand name stay (Envoy would not ask again),
        // naming wake names; the clusters go.
        let served = scope.cut(ResourceType::VirtualHost, &base);
        let names: Vec<&str> = served.resources.keys().map(|k| k.as_ref()).collect();
        assert_eq!(names, ["outbound|8080/reviews", REVIEWS]);
        let wake_names: Vec<String> = routed_clusters(
            &VirtualHost::decode(served.resources[REVIEWS].body.value.as_slice()).unwrap(),
        )
        .map(str::to_string)
        .collect();
        assert!(
            wake_names.iter().all(|n| n.starts_with(WAKE_PREFIX)),
            "{wake_names:?}"
        );
        let clusters: ResourceMap = clusters_of(&["reviews", "reviews-v2"])
            .iter()
            .map(|n| {
                let cluster = Cluster {
                    name: n.clone(),
                    ..Default::default()
                };
                let any = Any {
                    type_url: Cluster::type_url(),
                    value: cluster.encode_to_vec(),
                };
                (Arc::from(n.as_str()), Resource::from_any(n.as_str(), any))
            })
            .collect();
        let cbase = Arc::new(TypeSnapshot::first(clusters));
        assert!(scope
            .cut(ResourceType::Cluster, &cbase)
            .resources
            .is_empty());
        // Another stream's wake name wakes nothing; this one's wakes its Service, and is
        // served as a copy of the cluster it names.
        let (_, first) = wake_name_parts(&wake_names[0]).unwrap();
        let stale = format!("{WAKE_PREFIX}0|{first}");
        assert!(!scope.learn(
            ResourceType::Cluster,
            [stale.as_str()],
            &base.resources,
            |_| None
        ));
        assert!(scope.learn(
            ResourceType::Cluster,
            [wake_names[0].as_str()],
            &base.resources,
            |_| None
        ));
        // The Service its routes split to wakes with it.
        assert!(!scope.is_dormant(&ObjectKey::new("shop", "reviews")));
        assert!(!scope.is_dormant(&ObjectKey::new("shop", "reviews-v2")));
        // A request in flight that named the other share's wake name is answered too.
        assert!(scope.learn(
            ResourceType::Cluster,
            [wake_names[1].as_str()],
            &base.resources,
            |_| None
        ));
        let cut = scope.cut(ResourceType::Cluster, &cbase);
        assert!(cut.resources.contains_key(wake_names[1].as_str()));
        let copy =
            Cluster::decode(cut.resources[wake_names[0].as_str()].body.value.as_slice()).unwrap();
        assert_eq!(
            (copy.name.as_str(), copy.alt_stat_name.as_str()),
            (wake_names[0].as_str(), first)
        );
        assert!(
            cut.resources.contains_key(first),
            "the Service's own clusters are back"
        );
        // Awake, its virtual host names its clusters again.
        let served = scope.cut(ResourceType::VirtualHost, &base);
        let routed: Vec<String> = routed_clusters(
            &VirtualHost::decode(served.resources[REVIEWS].body.value.as_slice()).unwrap(),
        )
        .map(str::to_string)
        .collect();
        assert_eq!(routed, clusters_of(&["reviews", "reviews-v2"]));
    }

    #[test]
    fn a_service_whose_cluster_the_proxy_asked_for_by_name_never_sleeps() {
        let mut scope = Scope::new("shop");
        let learned = clusters_of(&["reviews", "ratings"]);
        scope.learn(
            ResourceType::Cluster,
            learned.iter().map(String::as_str),
            &ResourceMap::new(),
            |_| None,
        );
        // A TCP connection's cluster: Envoy asked for it by name.
        scope.pin([learned[0].as_str()]);
        let (t0, idle) = (Instant::now(), Duration::from_secs(10));
        scope.shrink(t0, idle);
        assert_eq!(
            scope.shrink(t0 + Duration::from_secs(60), idle),
            [ObjectKey::new("shop", "ratings")]
        );
        assert!(scope.is_pinned(&ObjectKey::new("shop", "reviews")));
        assert!(!scope.is_dormant(&ObjectKey::new("shop", "reviews")));
    }

    #[test]
    fn a_load_report_names_the_services_with_traffic() {
        use envoy_types::pb::envoy::config::endpoint::v3::UpstreamLocalityStats;
        let report = |cluster: &str, issued: u64, in_progress: u64| ClusterStats {
            cluster_name: cluster.into(),
            upstream_locality_stats: vec![UpstreamLocalityStats {
                total_issued_requests: issued,
                total_requests_in_progress: in_progress,
                ..Default::default()
            }],
            ..Default::default()
        };
        let names = clusters_of(&["reviews", "ratings", "details"]);
        let stats = [
            report(&names[0], 3, 0),
            // A TCP connection open across the report: in progress, none issued.
            report(&names[1], 0, 1),
            report(&names[2], 0, 0),
            report("PassthroughCluster", 9, 0),
        ];
        assert_eq!(
            used_services(&stats).into_iter().collect::<Vec<_>>(),
            [
                ObjectKey::new("shop", "ratings"),
                ObjectKey::new("shop", "reviews")
            ]
        );
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
    fn a_flood_of_unknown_hosts_keeps_the_first_only() {
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
        assert!(scope
            .aliases
            .contains_key("outbound|8080/host-0.example.com"));
        assert!(!scope.aliases.contains_key(names.last().unwrap().as_str()));
        assert!(
            scope.aliases.contains_key("outbound|8080/reviews"),
            "Services stay"
        );
    }
}
