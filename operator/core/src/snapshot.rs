//! Per-profile snapshots: the complete, consistent set of resources a proxy of one profile
//! should have, with the names that changed since the previous generation of each type.
//!
//! ```text
//! Index (dirty set) --Translator--> shared clusters, load assignments, virtual hosts
//!   --SnapshotBuilder::update--> per profile: TypeSnapshot per resource type
//!                                (only the types that changed get a new one)
//!   --check--> published, or held back with the reason
//! a stream's (profile snapshot, workload) --WorkloadListeners::get--> its listeners: the
//!   profile's with the workload's inbound listener over them (TypeSnapshot::with), shared
//!   by the streams of one profile and workload
//! ```
//!
//! Maps are persistent (`imbl`), so a new generation shares everything it did not change
//! with the previous one; an endpoint change costs one re-encoded load assignment and
//! O(log n) map work per profile. Each type has its own generation, so a stream that saw
//! generation g of a type and now sees g+1 sends only that type's change list.
//!
//! Before a snapshot is published it is checked: every cluster a route or listener names
//! exists, every route table a listener names exists, and every EDS cluster has its load
//! assignment. A failed check is reported, never silently published.

use imbl::OrdMap;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::index::{Index, Workload};
use crate::names;
use crate::resources::{PerType, Resource, ResourceType};
use crate::translate::telemetry::Telemetry;
use crate::translate::{self, Capture, Changes, ProxyProfile, Translator};

/// Above this many changed resources of a type, a profile's map is rebuilt from the
/// translator's instead of patched name by name.
const BULK_THRESHOLD: usize = 1024;

/// Resources of one type, by name.
pub type ResourceMap = OrdMap<Arc<str>, Resource>;

/// One type's resources at one generation, with what changed since the previous one.
#[derive(Debug, Clone, Default)]
pub struct TypeSnapshot {
    /// Increases by one with every change of this type's resources.
    pub generation: u64,
    /// Order-independent content hash of the resources.
    pub version: u64,
    /// The resources, by name.
    pub resources: ResourceMap,
    /// Names added or changed since the previous generation.
    pub changed: Arc<[Arc<str>]>,
    /// Names removed since the previous generation.
    pub removed: Arc<[Arc<str>]>,
}

impl TypeSnapshot {
    /// A first generation holding `resources`.
    pub fn first(resources: ResourceMap) -> TypeSnapshot {
        TypeSnapshot {
            generation: 1,
            version: content_version(&resources),
            changed: resources.keys().cloned().collect::<Vec<_>>().into(),
            resources,
            removed: Arc::from(Vec::new()),
        }
    }

    /// The version as sent on the wire.
    pub fn version_string(&self) -> String {
        format!("{:016x}", self.version)
    }

    /// This snapshot with `resources` put over it, for one stream or a group of streams
    /// (a workload's inbound listener over its profile's): the same generation, so a
    /// stream that follows the profile's generations keeps following them (the names put
    /// over it count as changed in every generation); a stream that switches between two
    /// derivations of one generation must compare them whole (`Connection::resync`).
    pub fn with(&self, resources: impl IntoIterator<Item = Resource>) -> TypeSnapshot {
        let mut out = self.clone();
        let mut changed: Vec<Arc<str>> = self.changed.to_vec();
        for r in resources {
            if let Some(old) = out.resources.get(&r.name) {
                out.version ^= old.fingerprint();
            }
            out.version ^= r.fingerprint();
            if !changed.contains(&r.name) {
                changed.push(r.name.clone());
            }
            out.resources.insert(r.name.clone(), r);
        }
        out.removed = self
            .removed
            .iter()
            .filter(|n| !out.resources.contains_key(*n))
            .cloned()
            .collect();
        out.changed = changed.into();
        out
    }
}

/// The resources whose names start with `prefix`, in name order (a range of the map).
pub(crate) fn with_prefix<'a>(
    map: &'a ResourceMap,
    prefix: &'a str,
) -> impl Iterator<Item = (&'a Arc<str>, &'a Resource)> + 'a {
    map.range::<_, str>((
        std::ops::Bound::Included(prefix),
        std::ops::Bound::Unbounded,
    ))
    .take_while(move |(name, _)| name.starts_with(prefix))
}

/// Order-independent hash of a map's resources.
fn content_version(map: &ResourceMap) -> u64 {
    map.values().fold(0, |v, r| v ^ r.fingerprint())
}

/// What one profile's proxies should have.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Increases by one with every published change for this profile.
    pub generation: u64,
    /// Each type's resources.
    pub types: PerType<Arc<TypeSnapshot>>,
}

impl Snapshot {
    /// Resources of one type.
    pub fn of(&self, t: ResourceType) -> &ResourceMap {
        &self.types[t].resources
    }

    /// The type's version as sent in responses.
    pub fn version_string(&self, t: ResourceType) -> String {
        self.types[t].version_string()
    }
}

#[derive(Debug)]
struct ProfileState {
    snapshot: Arc<Snapshot>,
    ports_generation: u64,
}

/// Runs the translator on the index's dirty set and keeps the latest snapshot of every
/// profile in use.
#[derive(Debug, Default)]
pub struct SnapshotBuilder {
    translator: Translator,
    profiles: BTreeMap<ProxyProfile, ProfileState>,
}

/// A snapshot that failed its consistency check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("inconsistent snapshot for {profile:?}: {problem}")]
pub struct Inconsistent {
    /// The profile.
    pub profile: ProxyProfile,
    /// What is missing.
    pub problem: String,
}

/// A profile's new snapshot, or why it is held back.
pub type Built = (ProxyProfile, Result<Arc<Snapshot>, Inconsistent>);

impl SnapshotBuilder {
    /// Nothing translated yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The translator (for debug output).
    pub fn translator(&self) -> &Translator {
        &self.translator
    }

    /// Sets the mesh's telemetry; done once, before any proxy connects (the operator's
    /// flags), since profiles built earlier keep the clusters they were built with.
    pub fn set_telemetry(&mut self, telemetry: Telemetry) {
        self.translator.set_telemetry(telemetry);
    }

    /// Translates what the index marks dirty; returns the profiles whose snapshot changed.
    pub fn update(&mut self, index: &mut Index) -> (Changes, Vec<Built>) {
        let changes = self.translator.update(index);
        if changes.is_empty() {
            return (changes, Vec::new());
        }
        let built = self.rebuild_all(&changes);
        (changes, built)
    }

    /// The current snapshot for a profile, built on first use.
    pub fn snapshot(&mut self, profile: ProxyProfile) -> Arc<Snapshot> {
        if let Some(state) = self.profiles.get(&profile) {
            return state.snapshot.clone();
        }
        let (listeners, routes, vhosts) = self.assembled_maps(&profile);
        let mut maps = PerType::from_fn(|_| ResourceMap::new());
        maps[ResourceType::Cluster] = self.shared_map(ResourceType::Cluster, &profile);
        maps[ResourceType::Endpoint] = self.shared_map(ResourceType::Endpoint, &profile);
        maps[ResourceType::Listener] = listeners;
        maps[ResourceType::Route] = routes;
        maps[ResourceType::VirtualHost] = vhosts;
        let snapshot = Arc::new(Snapshot {
            generation: 1,
            types: PerType::from_fn(|t| Arc::new(TypeSnapshot::first(maps[t].clone()))),
        });
        self.profiles.insert(
            profile,
            ProfileState {
                snapshot: snapshot.clone(),
                ports_generation: self.translator.ports_generation(),
            },
        );
        snapshot
    }

    /// Profiles in use.
    pub fn profiles(&self) -> impl Iterator<Item = (&ProxyProfile, &Arc<Snapshot>)> {
        self.profiles.iter().map(|(p, s)| (p, &s.snapshot))
    }

    /// Checks a profile's snapshot whole.
    pub fn check(&self, profile: ProxyProfile, snapshot: &Snapshot) -> Result<(), Inconsistent> {
        self.check_change(profile, None, snapshot)
    }

    /// Checks what `snapshot` changed since `previous` (everything without one). A type
    /// whose snapshot is the previous one's (the same `Arc`) did not change: its change
    /// lists are from an earlier generation and are not looked at.
    fn check_change(
        &self,
        profile: ProxyProfile,
        previous: Option<&Snapshot>,
        snapshot: &Snapshot,
    ) -> Result<(), Inconsistent> {
        let problem = |problem: String| Inconsistent { profile, problem };
        let replaced = |t: ResourceType| {
            previous.is_none_or(|p| !Arc::ptr_eq(&p.types[t], &snapshot.types[t]))
        };
        let whole = previous.is_none() || snapshot.generation == 1;
        check_load_assignments(
            snapshot,
            whole,
            replaced(ResourceType::Cluster),
            replaced(ResourceType::Endpoint),
        )
        .map_err(problem)?;
        let clusters = snapshot.of(ResourceType::Cluster);
        let routes_changed =
            whole || replaced(ResourceType::Route) || replaced(ResourceType::Listener);
        if routes_changed {
            for (_, out) in self.translator.ports() {
                if let Some(missing) = out.clusters.iter().find(|c| !clusters.contains_key(*c)) {
                    return Err(problem(format!(
                        "a route names cluster {missing}, which is not served"
                    )));
                }
            }
            for listener in snapshot.of(ResourceType::Listener).values() {
                let named = translate::chain::references(listener)
                    .map_err(|e| problem(format!("listener {}: {e}", listener.name)))?;
                for (what, name, map) in named
                    .clusters
                    .iter()
                    .map(|n| ("cluster", n, clusters))
                    .chain(
                        named
                            .route_tables
                            .iter()
                            .map(|n| ("route table", n, snapshot.of(ResourceType::Route))),
                    )
                {
                    if !map.contains_key(name.as_str()) {
                        return Err(problem(format!(
                            "listener {} names {what} {name}, which is not served",
                            listener.name
                        )));
                    }
                }
            }
        } else if replaced(ResourceType::Cluster) {
            let removed = &snapshot.types[ResourceType::Cluster].removed;
            if let Some(name) = removed.iter().find(|n| self.translator.is_referenced(n)) {
                return Err(problem(format!(
                    "cluster {name} was removed while a route still names it"
                )));
            }
        }
        Ok(())
    }

    fn rebuild_all(&mut self, changes: &Changes) -> Vec<Built> {
        let profiles: Vec<ProxyProfile> = self.profiles.keys().copied().collect();
        profiles
            .into_iter()
            .filter_map(|profile| {
                let previous = self.profiles.get(&profile)?.snapshot.clone();
                let snapshot = self.rebuild(profile, changes)?;
                let checked = self.check_change(profile, Some(&previous), &snapshot);
                Some((profile, checked.map(|()| snapshot)))
            })
            .collect()
    }

    /// The whole CDS or EDS map of a profile: the translator's (shared in O(1)) and the
    /// profile's own clusters.
    fn shared_map(&self, t: ResourceType, profile: &ProxyProfile) -> ResourceMap {
        let mut map = match t {
            ResourceType::Cluster => self.translator.clusters().clone(),
            ResourceType::Endpoint if profile.zone.is_some() => self
                .translator
                .endpoints()
                .values()
                .map(|r| (r.name.clone(), self.zoned(profile, r)))
                .collect(),
            ResourceType::Endpoint => self.translator.endpoints().clone(),
            _ => ResourceMap::new(),
        };
        if t == ResourceType::Cluster {
            for r in translate::profile_clusters(profile, self.translator.telemetry()) {
                map.insert(r.name.clone(), r);
            }
        }
        map
    }

    /// The LDS, RDS and VHDS maps of a profile, assembled from the translator's virtual
    /// hosts (VHDS for scoped profiles only).
    fn assembled_maps(&self, profile: &ProxyProfile) -> (ResourceMap, ResourceMap, ResourceMap) {
        let (listeners, routes) = translate::assemble(&self.translator, profile);
        let vhosts = if profile.scoped {
            translate::vhds_resources(&self.translator)
        } else {
            Vec::new()
        };
        let [listeners, mut routes, vhosts] = [listeners, routes, vhosts].map(|rs| {
            rs.into_iter()
                .map(|r| (r.name.clone(), r))
                .collect::<ResourceMap>()
        });
        routes.extend(translate::consumer_route_tables(&self.translator, profile));
        (listeners, routes, vhosts)
    }

    fn rebuild(&mut self, profile: ProxyProfile, changes: &Changes) -> Option<Arc<Snapshot>> {
        let state = self.profiles.get(&profile)?;
        let old = state.snapshot.clone();
        let reassemble = self.translator.ports_generation() != state.ports_generation;
        let mut next = NextSnapshot::from(&old);
        self.patch_shared(&profile, changes, &mut next);
        if reassemble {
            let (listeners, routes, vhosts) = self.assembled_maps(&profile);
            next.replace(ResourceType::Listener, listeners, &old);
            next.replace(ResourceType::Route, routes, &old);
            next.replace(ResourceType::VirtualHost, vhosts, &old);
        }
        let next = Arc::new(next.finish(&old)?);
        self.profiles.insert(
            profile,
            ProfileState {
                snapshot: next.clone(),
                ports_generation: self.translator.ports_generation(),
            },
        );
        Some(next)
    }

    /// CDS and EDS: applies the translator's change lists to the previous maps.
    fn patch_shared(&self, profile: &ProxyProfile, changes: &Changes, next: &mut NextSnapshot) {
        let shared = [
            (
                ResourceType::Cluster,
                self.translator.clusters(),
                &changes.clusters,
                &changes.clusters_removed,
            ),
            (
                ResourceType::Endpoint,
                self.translator.endpoints(),
                &changes.endpoints,
                &changes.endpoints_removed,
            ),
        ];
        for (t, source, upserts, removals) in shared {
            if upserts.len() + removals.len() > BULK_THRESHOLD {
                // A large change (the first full translation): take the whole map, which
                // shares the translator's in O(1), instead of patching it name by name.
                let map = self.shared_map(t, profile);
                // Every upsert is in `map` by construction (it is the translator's map).
                next.changed[t].extend(upserts.iter().cloned());
                next.removed[t].extend(removals.iter().filter(|n| !map.contains_key(*n)).cloned());
                next.maps[t] = map;
                next.rebuilt[t] = true;
                continue;
            }
            for name in upserts {
                if let Some(r) = source.get(name) {
                    let r = match t {
                        ResourceType::Endpoint => self.zoned(profile, r),
                        _ => r.clone(),
                    };
                    next.upsert(t, r);
                }
            }
            for name in removals {
                next.remove(t, name);
            }
        }
        // A zone profile's load assignment depends on its cluster's balancer too.
        if profile.zone.is_some() && changes.clusters.len() <= BULK_THRESHOLD {
            for name in changes
                .clusters
                .iter()
                .filter(|n| !changes.endpoints.contains(*n))
            {
                if let Some(r) = self.translator.endpoints().get(name) {
                    let zoned = self.zoned(profile, r);
                    let current = next.maps[ResourceType::Endpoint].get(name);
                    if current.is_none_or(|c| c.version != zoned.version) {
                        next.upsert(ResourceType::Endpoint, zoned);
                    }
                }
            }
        }
    }

    /// A load assignment as the profile's proxies get it: with their zone's endpoints first
    /// when the profile has a zone (see `translate::endpoint::prefer_zone`), else shared as
    /// is. Clusters that hash (RingHash, Maglev) keep one ring for every caller: a zone
    /// preference would map the same key to different pods from different zones.
    fn zoned(&self, profile: &ProxyProfile, r: &Resource) -> Resource {
        use envoy_types::pb::envoy::config::cluster::v3::{cluster::LbPolicy, Cluster};
        use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
        use prost::Message;
        let Some(zone) = profile.zone else {
            return r.clone();
        };
        let hashing = self
            .translator
            .clusters()
            .get(&r.name)
            .and_then(|c| Cluster::decode(c.body.value.as_slice()).ok())
            .is_some_and(|c| {
                c.lb_policy == LbPolicy::RingHash as i32 || c.lb_policy == LbPolicy::Maglev as i32
            });
        if hashing {
            return r.clone();
        }
        ClusterLoadAssignment::decode(r.body.value.as_slice())
            .ok()
            .and_then(|cla| translate::endpoint::prefer_zone(&cla, zone.as_str()))
            .map(|cla| Resource::new(r.name.clone(), &cla))
            .unwrap_or_else(|| r.clone())
    }
}

/// The listeners and route tables each workload's proxies are served: their profile's
/// snapshot with the workload's own inbound listener (and, when it authorizes, its own
/// inbound route table, which carries the HTTP rules so that an edit reaches open
/// connections' next request without draining them) over it, shared by every stream of
/// the same profile and workload. Kept apart from the [`SnapshotBuilder`] (and its lock): a
/// stream derives its listeners from the snapshot it holds, whenever that snapshot's
/// listeners or its workload change, without waiting for a translation.
#[derive(Debug, Default)]
pub struct WorkloadListeners {
    /// The trust domain inbound listeners check peers against.
    trust_domain: String,
    /// What inbound chains report.
    telemetry: Arc<Telemetry>,
    listeners: Derivations,
    routes: Derivations,
}

/// One type's derivations: per profile and workload, the snapshot derived from and the
/// derivation.
#[derive(Debug, Default)]
struct Derivations {
    /// Per profile, the newest generation derivations were asked for.
    newest: BTreeMap<ProxyProfile, u64>,
    entries: BTreeMap<(ProxyProfile, Workload), (Arc<TypeSnapshot>, Arc<TypeSnapshot>)>,
    /// How many entries were left after the last pruning.
    kept: usize,
}

impl Derivations {
    fn get(
        &mut self,
        profile: ProxyProfile,
        workload: &Workload,
        base: &Arc<TypeSnapshot>,
        derive: impl FnOnce() -> Vec<Resource>,
    ) -> Arc<TypeSnapshot> {
        let newest = self.newest.entry(profile).or_default();
        if base.generation > *newest {
            *newest = base.generation;
            // Derivations of this profile's older snapshots that no stream serves go: they
            // would keep old resources alive.
            self.entries
                .retain(|(p, _), (_, derived)| *p != profile || Arc::strong_count(derived) > 1);
        }
        let key = (profile, workload.clone());
        if let Some((from, derived)) = self.entries.get(&key) {
            if Arc::ptr_eq(from, base) {
                return derived.clone();
            }
        }
        // Workloads that went away: checked whenever the map has doubled, so the work
        // stays linear.
        if self.entries.len() >= (2 * self.kept).max(64) {
            self.entries
                .retain(|_, (_, derived)| Arc::strong_count(derived) > 1);
            self.kept = self.entries.len();
        }
        let derived = Arc::new(base.with(derive()));
        self.entries.insert(key, (base.clone(), derived.clone()));
        derived
    }
}

impl WorkloadListeners {
    /// An empty cache for `trust_domain`.
    pub fn new(trust_domain: &str) -> WorkloadListeners {
        WorkloadListeners {
            trust_domain: trust_domain.to_string(),
            ..Default::default()
        }
    }

    /// The mesh's trust domain changed: every derivation goes.
    pub fn set_trust_domain(&mut self, trust_domain: &str) {
        if self.trust_domain != trust_domain {
            let telemetry = self.telemetry.clone();
            *self = WorkloadListeners::new(trust_domain);
            self.telemetry = telemetry;
        }
    }

    /// The mesh's telemetry settings changed: every derivation goes.
    pub fn set_telemetry(&mut self, telemetry: &Arc<Telemetry>) {
        if self.telemetry != *telemetry {
            *self = WorkloadListeners::new(&self.trust_domain);
            self.telemetry = telemetry.clone();
        }
    }

    /// The listeners a proxy of `profile` whose pod is `workload` gets over `base` (its
    /// profile's listener snapshot, as the stream holds it): `base` itself for a workload
    /// that backs nothing and authorizes nothing, or in explicit mode.
    pub fn get(
        &mut self,
        profile: ProxyProfile,
        workload: &Workload,
        base: &Arc<TypeSnapshot>,
    ) -> Arc<TypeSnapshot> {
        if workload.is_empty() || profile.capture != Capture::Transparent {
            return base.clone();
        }
        let (trust_domain, telemetry) = (&self.trust_domain, &self.telemetry);
        self.listeners.get(profile, workload, base, || {
            let inbound =
                translate::inbound::listener(profile.inbound, trust_domain, telemetry, workload);
            vec![Resource::new(names::INBOUND_LISTENER, &inbound)]
        })
    }

    /// The route tables a proxy of `profile` whose pod is `workload` gets over `base` (its
    /// profile's route snapshot): `base` itself unless the workload authorizes HTTP or its
    /// namespace has routes of its own (consumer routes: the outbound tables they change,
    /// served under their usual names).
    pub fn routes(
        &mut self,
        profile: ProxyProfile,
        workload: &Workload,
        base: &Arc<TypeSnapshot>,
    ) -> Arc<TypeSnapshot> {
        if profile.capture != Capture::Transparent {
            return base.clone();
        }
        let prefix = names::consumer_route_prefix(&workload.namespace);
        let has_consumer_tables = with_prefix(&base.resources, &prefix).next().is_some();
        if workload.authorization.is_none() && !has_consumer_tables {
            return base.clone();
        }
        let trust_domain = &self.trust_domain;
        self.routes.get(profile, workload, base, || {
            let mut tables: Vec<Resource> = with_prefix(&base.resources, &prefix)
                .map(|(_, table)| table.clone())
                .collect();
            if workload.authorization.is_some() {
                let table = translate::inbound::route_table(trust_domain, workload);
                tables.push(Resource::new(names::INBOUND_ROUTE_CONFIG, &table));
            }
            tables
        })
    }

    /// How many derivations are kept.
    pub fn len(&self) -> usize {
        self.listeners.entries.len() + self.routes.entries.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A snapshot being built from the previous one: its maps and what changed, per type.
struct NextSnapshot {
    maps: PerType<ResourceMap>,
    changed: PerType<BTreeSet<Arc<str>>>,
    removed: PerType<BTreeSet<Arc<str>>>,
    /// Types whose map was replaced whole: their version is recomputed in one pass.
    rebuilt: PerType<bool>,
}

impl NextSnapshot {
    fn from(old: &Snapshot) -> NextSnapshot {
        NextSnapshot {
            maps: PerType::from_fn(|t| old.types[t].resources.clone()),
            changed: PerType::default(),
            removed: PerType::default(),
            rebuilt: PerType::default(),
        }
    }

    fn upsert(&mut self, t: ResourceType, resource: Resource) {
        self.changed[t].insert(resource.name.clone());
        self.maps[t].insert(resource.name.clone(), resource);
    }

    fn remove(&mut self, t: ResourceType, name: &Arc<str>) {
        if self.maps[t].remove(name).is_some() {
            self.removed[t].insert(name.clone());
        }
    }

    /// Replaces a type's map (LDS and RDS are small and reassembled whole), recording the
    /// names whose content differs from `old`'s.
    fn replace(&mut self, t: ResourceType, map: ResourceMap, old: &Snapshot) {
        let old_map = &old.types[t].resources;
        for (name, r) in &map {
            if old_map.get(name).map(|o| o.version) != Some(r.version) {
                self.changed[t].insert(name.clone());
            }
        }
        for name in old_map.keys() {
            if !map.contains_key(name) {
                self.removed[t].insert(name.clone());
            }
        }
        self.maps[t] = map;
    }

    /// The next snapshot, with a new generation for each type that changed; None when
    /// nothing did.
    fn finish(self, old: &Snapshot) -> Option<Snapshot> {
        if self.changed.iter().all(|(_, c)| c.is_empty())
            && self.removed.iter().all(|(_, r)| r.is_empty())
        {
            return None;
        }
        let types = PerType::from_fn(|t| {
            let before = &old.types[t];
            let (changed, removed) = (&self.changed[t], &self.removed[t]);
            if changed.is_empty() && removed.is_empty() {
                return before.clone();
            }
            let map = &self.maps[t];
            let version = if self.rebuilt[t] {
                content_version(map)
            } else {
                // Unchanged resources cancel out of the xor: only the change is hashed.
                let mut v = before.version;
                for name in changed.iter().chain(removed.iter()) {
                    if let Some(o) = before.resources.get(name) {
                        v ^= o.fingerprint();
                    }
                    if let Some(n) = map.get(name) {
                        v ^= n.fingerprint();
                    }
                }
                v
            };
            Arc::new(TypeSnapshot {
                generation: before.generation + 1,
                version,
                resources: map.clone(),
                changed: changed.iter().cloned().collect::<Vec<_>>().into(),
                removed: removed.iter().cloned().collect::<Vec<_>>().into(),
            })
        });
        Some(Snapshot {
            generation: old.generation + 1,
            types,
        })
    }
}

/// Every EDS cluster the snapshot adds or changes has its load assignment, and no load
/// assignment it removes is still needed by a cluster. Only the change is checked (all of
/// it on a first generation), so the cost follows the size of the change.
fn check_load_assignments(
    snapshot: &Snapshot,
    whole: bool,
    clusters_replaced: bool,
    endpoints_replaced: bool,
) -> Result<(), String> {
    use envoy_types::pb::envoy::config::cluster::v3::{
        cluster::{ClusterDiscoveryType, DiscoveryType},
        Cluster,
    };
    use prost::Message;
    let cds = &snapshot.types[ResourceType::Cluster];
    let eds = &snapshot.types[ResourceType::Endpoint];
    let is_eds = |r: &Resource| {
        Cluster::decode(r.body.value.as_slice()).is_ok_and(|c| {
            c.cluster_discovery_type == Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32))
        })
    };
    let names: Box<dyn Iterator<Item = &Arc<str>>> = if whole {
        Box::new(cds.resources.keys())
    } else {
        let changed = clusters_replaced.then_some(cds.changed.iter());
        let removed = endpoints_replaced.then_some(eds.removed.iter());
        Box::new(
            changed
                .into_iter()
                .flatten()
                .chain(removed.into_iter().flatten()),
        )
    };
    for name in names {
        if let Some(r) = cds.resources.get(name) {
            if !eds.resources.contains_key(name) && is_eds(r) {
                return Err(format!("EDS cluster {name} has no load assignment"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{Object, ObjectKey};
    use crate::testing::{mk_meshed_pod, mk_service, mk_slice};
    use crate::Event;
    use weir_api::MtlsMode;

    /// reviews backed by pod r1, ratings by r2 and r3.
    fn index() -> Index {
        let mut index = Index::new();
        let objects = vec![
            Object::Service(mk_service("default", "reviews", "10.0.0.1", &[9080])),
            Object::Service(mk_service("default", "ratings", "10.0.0.2", &[9080])),
            Object::Pod(mk_meshed_pod("default", "r1", "reviews", &[])),
            Object::Pod(mk_meshed_pod("default", "r2", "ratings", &[])),
            Object::Pod(mk_meshed_pod("default", "r3", "ratings", &[])),
            Object::EndpointSlice(mk_slice(
                "default",
                "reviews-a",
                "reviews",
                "http",
                9080,
                &[("10.1.0.1", "r1")],
            )),
            Object::EndpointSlice(mk_slice(
                "default",
                "ratings-a",
                "ratings",
                "http",
                9080,
                &[("10.1.0.2", "r2"), ("10.1.0.3", "r3")],
            )),
        ];
        for object in objects {
            index.apply(Event::apply(object));
        }
        index
    }

    #[test]
    fn pods_of_one_profile_that_back_different_services_get_their_own_inbound_listener() {
        let mut index = index();
        let mut builder = SnapshotBuilder::new();
        builder.update(&mut index);
        let profile = ProxyProfile::new(Capture::Transparent, MtlsMode::Strict);
        let snapshot = builder.snapshot(profile);
        let base = snapshot.types[ResourceType::Listener].clone();
        let pod = |name: &str| index.workload(&ObjectKey::new("default", name));
        let mut workloads = WorkloadListeners::new(builder.translator().trust_domain());
        let r1 = workloads.get(profile, &pod("r1"), &base);
        let r2 = workloads.get(profile, &pod("r2"), &base);
        let r3 = workloads.get(profile, &pod("r3"), &base);
        let inbound = |t: &TypeSnapshot| t.resources[names::INBOUND_LISTENER].version;
        let outbound = |t: &TypeSnapshot| t.resources[names::OUTBOUND_LISTENER].clone();
        assert_ne!(
            inbound(&r1),
            inbound(&r2),
            "different Services, different listeners"
        );
        assert_ne!(inbound(&r1), inbound(&base));
        assert!(Arc::ptr_eq(&r2, &r3), "one workload, one shared derivation");
        // Everything else is the profile's own encoding, shared.
        for derived in [&r1, &r2] {
            assert!(Arc::ptr_eq(&outbound(derived).body, &outbound(&base).body));
            assert_eq!(derived.generation, base.generation);
            assert_ne!(derived.version, base.version);
        }
        // A pod that backs nothing is served the profile's listeners as they are.
        let lone = workloads.get(profile, &Workload::default(), &base);
        assert!(Arc::ptr_eq(&lone, &base));
        // The inbound listener names the Services the workload backs.
        use envoy_types::pb::envoy::config::listener::v3::Listener;
        use envoy_types::pb::google::protobuf::value::Kind;
        use prost::Message;
        let listener =
            Listener::decode(r1.resources[names::INBOUND_LISTENER].body.value.as_slice()).unwrap();
        let services = &listener.metadata.unwrap().filter_metadata["weir"].fields["services"];
        let Some(Kind::ListValue(list)) = &services.kind else {
            panic!("services is a list: {services:?}");
        };
        let named: Vec<_> = list.values.iter().map(|v| v.kind.clone()).collect();
        assert_eq!(named, [Some(Kind::StringValue("default/reviews".into()))]);
    }

    #[test]
    fn derivations_of_older_listeners_that_no_stream_serves_are_dropped() {
        let mut index = index();
        let mut builder = SnapshotBuilder::new();
        builder.update(&mut index);
        let profile = ProxyProfile::new(Capture::Transparent, MtlsMode::Strict);
        let base = builder.snapshot(profile).types[ResourceType::Listener].clone();
        let mut workloads = WorkloadListeners::new(builder.translator().trust_domain());
        let pod = |name: &str| index.workload(&ObjectKey::new("default", name));
        let held = workloads.get(profile, &pod("r1"), &base);
        drop(workloads.get(profile, &pod("r2"), &base));
        assert_eq!(workloads.len(), 2);
        // The profile's listeners change: r2's old derivation (no stream holds it) goes,
        // r1's (held) stays until its stream moves on.
        let mut newer = (*base).clone();
        newer.generation += 1;
        let newer = Arc::new(newer);
        let again = workloads.get(profile, &pod("r1"), &newer);
        assert_eq!(workloads.len(), 1);
        assert!(!Arc::ptr_eq(&again, &held));
        // A new trust domain drops everything.
        workloads.set_trust_domain("example.org");
        assert!(workloads.is_empty());
    }

    #[test]
    fn a_consumer_route_changes_the_outbound_table_of_its_namespace_only() {
        let mut index = index();
        index.apply(Event::apply(Object::Pod(mk_meshed_pod(
            "consumer",
            "c1",
            "app",
            &[],
        ))));
        crate::testing::apply_yaml(&mut index, crate::testing::CONSUMER_ROUTE);
        let mut builder = SnapshotBuilder::new();
        builder.update(&mut index);
        let profile = ProxyProfile::new(Capture::Transparent, MtlsMode::Strict);
        let snapshot = builder.snapshot(profile);
        builder.check(profile, &snapshot).unwrap();
        let base = snapshot.types[ResourceType::Route].clone();
        let table = names::port_route_config(9080);
        let mut workloads = WorkloadListeners::new(builder.translator().trust_domain());
        let consumer = workloads.routes(
            profile,
            &index.workload(&ObjectKey::new("consumer", "c1")),
            &base,
        );
        let producer = workloads.routes(
            profile,
            &index.workload(&ObjectKey::new("default", "r2")),
            &base,
        );
        let sets_header = |t: &TypeSnapshot| {
            let body = &t.resources[table.as_str()].body.value;
            body.windows(b"x-consumer".len())
                .any(|w| w == b"x-consumer")
        };
        assert!(
            sets_header(&consumer),
            "the consumer's callers get the route"
        );
        assert!(!sets_header(&producer), "other callers do not");
        assert!(Arc::ptr_eq(&producer, &base));
        assert_eq!(consumer.resources[table.as_str()].name.as_ref(), table);
        // The binding status reads: the consumer route is active for its namespace.
        let binding = builder
            .translator()
            .binding_for(&ObjectKey::new("default", "reviews"), "consumer")
            .unwrap();
        assert!(binding.port(9080).unwrap().routes_decide);
        assert!(builder
            .translator()
            .binding(&ObjectKey::new("default", "reviews"))
            .is_none_or(|b| b.port(9080).is_none_or(|p| !p.routes_decide)));
        // The route goes: so does the consumer table.
        index.apply(Event::Delete(
            crate::Kind::HttpRoute,
            ObjectKey::new("consumer", "add-header"),
        ));
        let (_, built) = builder.update(&mut index);
        let snapshot = built
            .into_iter()
            .find(|(p, _)| *p == profile)
            .map(|(_, s)| s.unwrap())
            .unwrap();
        let base = snapshot.types[ResourceType::Route].clone();
        let consumer = workloads.routes(
            profile,
            &index.workload(&ObjectKey::new("consumer", "c1")),
            &base,
        );
        assert!(Arc::ptr_eq(&consumer, &base));
    }

    #[test]
    fn joining_a_service_moves_a_pods_placement() {
        let mut index = index();
        index.take_placement_changes();
        index.apply(Event::apply(Object::EndpointSlice(mk_slice(
            "default",
            "reviews-b",
            "reviews",
            "http",
            9080,
            &[("10.1.0.2", "r2")],
        ))));
        let changes = index.take_placement_changes();
        let r2 = ObjectKey::new("default", "r2");
        assert!(changes.affects(&r2) && !changes.all, "{changes:?}");
        assert!(!changes.affects(&ObjectKey::new("default", "r1")));
        let services = index.workload(&r2).services;
        assert_eq!(
            services.as_ref(),
            [
                ObjectKey::new("default", "ratings"),
                ObjectKey::new("default", "reviews")
            ]
        );
    }
}
