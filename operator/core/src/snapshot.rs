//! Per-profile snapshots: the complete, consistent set of resources a proxy of one profile
//! should have, with the names that changed since the previous generation.
//!
//! [`MeshSnapshots::update`] runs the translator on the index's dirty set and publishes a new
//! snapshot only for profiles whose resources changed. Maps are persistent (`imbl`), so a new
//! generation shares everything it did not change with the previous one; an endpoint change
//! costs one re-encoded load assignment and O(log n) map work per profile.
//!
//! Before a snapshot is published it is checked for consistency: every cluster a route or
//! listener names exists, and every EDS cluster has its load assignment. A failed check is
//! reported, never silently published.

use imbl::OrdMap;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::index::Index;
use crate::resources::{Resource, ResourceType};
use crate::translate::{self, Changes, ProxyProfile, Translator};

/// Above this many changed resources of a type, a profile's map is rebuilt from the
/// translator's instead of patched name by name.
const BULK_THRESHOLD: usize = 1024;

/// Resources of one type, by name.
pub type ResourceMap = OrdMap<Arc<str>, Resource>;

/// What one profile's proxies should have.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Increases by one with every published change for this profile.
    pub generation: u64,
    /// Resources per type, indexed by [`ResourceType::idx`].
    pub resources: [ResourceMap; 4],
    /// Order-independent content hash of each type's resources.
    pub versions: [u64; 4],
    /// Names added or changed since the previous generation, per type.
    pub changed: [Arc<[Arc<str>]>; 4],
    /// Names removed since the previous generation, per type.
    pub removed: [Arc<[Arc<str>]>; 4],
}

impl Snapshot {
    /// Resources of one type.
    pub fn of(&self, t: ResourceType) -> &ResourceMap {
        &self.resources[t.idx()]
    }

    /// The type's version as sent in SotW responses.
    pub fn version_string(&self, t: ResourceType) -> String {
        format!("{:016x}", self.versions[t.idx()])
    }

    fn empty() -> Snapshot {
        let none: Arc<[Arc<str>]> = Arc::from(Vec::new());
        Snapshot {
            generation: 0,
            resources: Default::default(),
            versions: [0; 4],
            changed: [none.clone(), none.clone(), none.clone(), none.clone()],
            removed: [none.clone(), none.clone(), none.clone(), none],
        }
    }
}

#[derive(Debug)]
struct ProfileState {
    snapshot: Arc<Snapshot>,
    routes_generation: u64,
}

/// The translator plus the latest snapshot of every profile in use.
#[derive(Debug, Default)]
pub struct MeshSnapshots {
    translator: Translator,
    profiles: BTreeMap<ProxyProfile, ProfileState>,
    /// Resources served to every profile as given, beside the translated ones (for tests and
    /// debugging; a translated resource of the same name wins).
    raw: BTreeMap<(ResourceType, Arc<str>), Resource>,
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

impl MeshSnapshots {
    /// Nothing translated yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The translator (for debug output).
    pub fn translator(&self) -> &Translator {
        &self.translator
    }

    /// Translates what the index marks dirty; returns the profiles whose snapshot changed.
    pub fn update(&mut self, index: &mut Index) -> (Changes, Vec<(ProxyProfile, Arc<Snapshot>)>) {
        let changes = self.translator.update(index);
        let mut published = Vec::new();
        if changes.is_empty() {
            return (changes, published);
        }
        let profiles: Vec<ProxyProfile> = self.profiles.keys().copied().collect();
        for profile in profiles {
            if let Some(snapshot) = self.rebuild(profile, &changes, &[]) {
                published.push((profile, snapshot));
            }
        }
        (changes, published)
    }

    /// The current snapshot for a profile, built on first use.
    pub fn snapshot(&mut self, profile: ProxyProfile) -> Arc<Snapshot> {
        if let Some(state) = self.profiles.get(&profile) {
            return state.snapshot.clone();
        }
        let mut snapshot = Snapshot::empty();
        for t in [ResourceType::Cluster, ResourceType::Endpoint] {
            snapshot.resources[t.idx()] = self.shared_map(t, &profile);
        }
        let (listeners, routes) = self.assembled_maps(&profile);
        snapshot.resources[ResourceType::Listener.idx()] = listeners;
        snapshot.resources[ResourceType::Route.idx()] = routes;
        for t in ResourceType::ALL {
            snapshot.versions[t.idx()] = snapshot.resources[t.idx()]
                .values()
                .fold(0, |v, r| v ^ r.fingerprint());
        }
        snapshot.generation = 1;
        let snapshot = Arc::new(snapshot);
        self.profiles.insert(
            profile,
            ProfileState {
                snapshot: snapshot.clone(),
                routes_generation: self.translator.routes_generation(),
            },
        );
        snapshot
    }

    /// Serves `resource` to every profile as given. Returns the changed snapshots.
    pub fn insert_raw(
        &mut self,
        t: ResourceType,
        resource: Resource,
    ) -> Vec<(ProxyProfile, Arc<Snapshot>)> {
        let name = resource.name.clone();
        self.raw.insert((t, name.clone()), resource);
        let profiles: Vec<ProxyProfile> = self.profiles.keys().copied().collect();
        profiles
            .into_iter()
            .filter_map(|p| {
                self.rebuild(p, &Changes::default(), &[(t, name.clone())])
                    .map(|s| (p, s))
            })
            .collect()
    }

    /// Stops serving a resource added by [`MeshSnapshots::insert_raw`].
    pub fn remove_raw(
        &mut self,
        t: ResourceType,
        name: &str,
    ) -> Vec<(ProxyProfile, Arc<Snapshot>)> {
        let name: Arc<str> = name.into();
        if self.raw.remove(&(t, name.clone())).is_none() {
            return Vec::new();
        }
        let profiles: Vec<ProxyProfile> = self.profiles.keys().copied().collect();
        profiles
            .into_iter()
            .filter_map(|p| {
                self.rebuild(p, &Changes::default(), &[(t, name.clone())])
                    .map(|s| (p, s))
            })
            .collect()
    }

    /// Profiles in use.
    pub fn profiles(&self) -> impl Iterator<Item = (&ProxyProfile, &Arc<Snapshot>)> {
        self.profiles.iter().map(|(p, s)| (p, &s.snapshot))
    }

    /// Raw resources of type `t` laid under `map`: a resource already there wins.
    fn add_raw(&self, t: ResourceType, map: &mut ResourceMap) {
        for ((rt, name), r) in &self.raw {
            if *rt == t {
                map.entry(name.clone()).or_insert_with(|| r.clone());
            }
        }
    }

    /// The whole CDS or EDS map of a profile: the translator's (shared in O(1)), the
    /// profile's own clusters, and raw resources.
    fn shared_map(&self, t: ResourceType, profile: &ProxyProfile) -> ResourceMap {
        let mut map = match t {
            ResourceType::Cluster => self.translator.clusters().clone(),
            ResourceType::Endpoint => self.translator.endpoints().clone(),
            _ => ResourceMap::new(),
        };
        if t == ResourceType::Cluster {
            for r in translate::profile_clusters(profile) {
                map.insert(r.name.clone(), r);
            }
        }
        self.add_raw(t, &mut map);
        map
    }

    /// The LDS and RDS maps of a profile, assembled from the translator's virtual hosts.
    fn assembled_maps(&self, profile: &ProxyProfile) -> (ResourceMap, ResourceMap) {
        let (listeners, routes) = translate::assemble(&self.translator, profile);
        let mut maps = [listeners, routes].map(|rs| {
            rs.into_iter()
                .map(|r| (r.name.clone(), r))
                .collect::<ResourceMap>()
        });
        self.add_raw(ResourceType::Listener, &mut maps[0]);
        self.add_raw(ResourceType::Route, &mut maps[1]);
        let [listeners, routes] = maps;
        (listeners, routes)
    }

    fn rebuild(
        &mut self,
        profile: ProxyProfile,
        changes: &Changes,
        raw_changed: &[(ResourceType, Arc<str>)],
    ) -> Option<Arc<Snapshot>> {
        let state = self.profiles.get(&profile)?;
        let old = state.snapshot.clone();
        let mut next = Snapshot {
            generation: old.generation + 1,
            ..(*old).clone()
        };
        let mut changed: [BTreeSet<Arc<str>>; 4] = Default::default();
        let mut removed: [BTreeSet<Arc<str>>; 4] = Default::default();
        // Types whose map was rebuilt whole: their version is recomputed in one pass.
        let mut rebuilt = [false; 4];

        // CDS and EDS: apply the translator's change lists to the previous maps.
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
                let map = self.shared_map(t, &profile);
                // Every upsert is in `map` by construction (it is the translator's map).
                changed[t.idx()].extend(upserts.iter().cloned());
                removed[t.idx()].extend(removals.iter().filter(|n| !map.contains_key(*n)).cloned());
                next.resources[t.idx()] = map;
                rebuilt[t.idx()] = true;
                continue;
            }
            let map = &mut next.resources[t.idx()];
            for name in upserts {
                if let Some(r) = source.get(name) {
                    map.insert(name.clone(), r.clone());
                    changed[t.idx()].insert(name.clone());
                }
            }
            for name in removals {
                match self.raw.get(&(t, name.clone())) {
                    Some(r) => {
                        map.insert(name.clone(), r.clone());
                        changed[t.idx()].insert(name.clone());
                    }
                    None => {
                        if map.remove(name).is_some() {
                            removed[t.idx()].insert(name.clone());
                        }
                    }
                }
            }
        }

        // LDS and RDS: reassemble when a virtual host changed; these maps are small.
        if self.translator.routes_generation() != state.routes_generation {
            let (listeners, routes) = self.assembled_maps(&profile);
            for (t, map) in [
                (ResourceType::Listener, listeners),
                (ResourceType::Route, routes),
            ] {
                let old_map = &old.resources[t.idx()];
                for (name, r) in &map {
                    if old_map.get(name).map(|o| o.version) != Some(r.version) {
                        changed[t.idx()].insert(name.clone());
                    }
                }
                for name in old_map.keys() {
                    if !map.contains_key(name) {
                        removed[t.idx()].insert(name.clone());
                    }
                }
                next.resources[t.idx()] = map;
            }
        }

        for (t, name) in raw_changed {
            let map = &mut next.resources[t.idx()];
            let translated = match t {
                ResourceType::Cluster => self.translator.clusters().contains_key(name),
                ResourceType::Endpoint => self.translator.endpoints().contains_key(name),
                _ => false,
            };
            if !translated {
                match self.raw.get(&(*t, name.clone())) {
                    Some(r) => {
                        map.insert(name.clone(), r.clone());
                        changed[t.idx()].insert(name.clone());
                    }
                    None => {
                        if map.remove(name).is_some() {
                            removed[t.idx()].insert(name.clone());
                        }
                    }
                }
            }
        }

        if changed.iter().all(BTreeSet::is_empty) && removed.iter().all(BTreeSet::is_empty) {
            return None;
        }
        for t in ResourceType::ALL {
            let i = t.idx();
            next.versions[i] = if rebuilt[i] {
                next.resources[i]
                    .values()
                    .fold(0, |v, r| v ^ r.fingerprint())
            } else {
                let mut v = old.versions[i];
                for name in changed[i].iter().chain(removed[i].iter()) {
                    if let Some(o) = old.resources[i].get(name) {
                        v ^= o.fingerprint();
                    }
                    if let Some(n) = next.resources[i].get(name) {
                        v ^= n.fingerprint();
                    }
                }
                v
            };
            next.changed[i] = changed[i].iter().cloned().collect::<Vec<_>>().into();
            next.removed[i] = removed[i].iter().cloned().collect::<Vec<_>>().into();
        }
        let routes_generation = self.translator.routes_generation();
        let next = Arc::new(next);
        self.profiles.insert(
            profile,
            ProfileState {
                snapshot: next.clone(),
                routes_generation,
            },
        );
        Some(next)
    }
}

/// Checks what changed in a snapshot: every EDS cluster it adds or changes has its load
/// assignment, and no load assignment it removes is still needed by a cluster. Only the
/// change is checked, so the cost follows the size of the change, not of the mesh.
pub fn check_consistency(profile: ProxyProfile, snapshot: &Snapshot) -> Result<(), Inconsistent> {
    use envoy_types::pb::envoy::config::cluster::v3::{
        cluster::{ClusterDiscoveryType, DiscoveryType},
        Cluster,
    };
    use prost::Message;
    let clusters = snapshot.of(ResourceType::Cluster);
    let endpoints = snapshot.of(ResourceType::Endpoint);
    let is_eds = |r: &Resource| {
        Cluster::decode(r.body.value.as_slice()).is_ok_and(|c| {
            c.cluster_discovery_type == Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32))
        })
    };
    let check_all = snapshot.generation == 1;
    let names: Box<dyn Iterator<Item = &Arc<str>>> = if check_all {
        Box::new(clusters.keys())
    } else {
        Box::new(
            snapshot.changed[ResourceType::Cluster.idx()]
                .iter()
                .chain(snapshot.removed[ResourceType::Endpoint.idx()].iter()),
        )
    };
    for name in names {
        if let Some(r) = clusters.get(name) {
            if !endpoints.contains_key(name) && is_eds(r) {
                return Err(Inconsistent {
                    profile,
                    problem: format!("EDS cluster {name} has no load assignment"),
                });
            }
        }
    }
    Ok(())
}
