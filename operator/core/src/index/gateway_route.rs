//! HTTPRoutes and GRPCRoutes: parsed once per change into per-parent route sets (or
//! rejections), with the last accepted rules of each parent Service kept while a later
//! edit is refused, and linked to the Services they attach to and route to so that a
//! change on either side dirties the right Services.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use weir_api::gateway_api::{GRPCRoute, HTTPRoute};

use super::{Index, IndexKind, Kind, ObjectKey};
use crate::routing::RouteSet;
use crate::sources::gateway_route::{self, ParentRoutes};

/// Which kind of route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouteKind {
    /// HTTPRoute.
    Http,
    /// GRPCRoute.
    Grpc,
}

impl RouteKind {
    /// The index kind.
    pub fn kind(self) -> Kind {
        match self {
            RouteKind::Http => Kind::HttpRoute,
            RouteKind::Grpc => Kind::GrpcRoute,
        }
    }
}

/// A route as the index keeps it.
#[derive(Debug, Clone)]
pub struct RouteEntry {
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `metadata.creationTimestamp`: the older route's rules win ties.
    pub created: Option<Time>,
    /// Per Service parentRef, the latest spec's verdict.
    pub parents: Vec<ParentRoutes>,
    /// Per parent Service, the rules served: the latest accepted ones (kept while a later
    /// edit is refused).
    pub served: BTreeMap<ObjectKey, Arc<RouteSet>>,
    targets: BTreeSet<ObjectKey>,
    backends: BTreeSet<ObjectKey>,
}

impl IndexKind for HTTPRoute {
    fn apply(index: &mut Index, route: HTTPRoute) {
        let parents = gateway_route::parse_http(&route);
        apply_route(index, RouteKind::Http, &route.metadata, parents);
    }

    fn delete(index: &mut Index, key: &ObjectKey) {
        delete_route(index, RouteKind::Http, key);
    }

    fn keys(index: &Index) -> Vec<ObjectKey> {
        route_keys(index, RouteKind::Http)
    }
}

impl IndexKind for GRPCRoute {
    fn apply(index: &mut Index, route: GRPCRoute) {
        let parents = gateway_route::parse_grpc(&route);
        apply_route(index, RouteKind::Grpc, &route.metadata, parents);
    }

    fn delete(index: &mut Index, key: &ObjectKey) {
        delete_route(index, RouteKind::Grpc, key);
    }

    fn keys(index: &Index) -> Vec<ObjectKey> {
        route_keys(index, RouteKind::Grpc)
    }
}

fn route_keys(index: &Index, kind: RouteKind) -> Vec<ObjectKey> {
    index
        .routes
        .keys()
        .filter(|(k, _)| *k == kind)
        .map(|(_, key)| key.clone())
        .collect()
}

fn apply_route(index: &mut Index, kind: RouteKind, meta: &ObjectMeta, parents: Vec<ParentRoutes>) {
    let key = kind.kind().key(meta);
    let id = (kind, key.clone());
    if let Some(old) = index.routes.get(&id) {
        // Status writes do not bump the generation: nothing to redo.
        if old.generation.is_some()
            && old.generation == meta.generation
            && old.created == meta.creation_timestamp
        {
            return;
        }
    }
    let old_served = index
        .routes
        .get(&id)
        .map(|e| e.served.clone())
        .unwrap_or_default();
    let mut served = BTreeMap::new();
    for p in &parents {
        match (&p.verdict, old_served.get(&p.service)) {
            (Ok(set), _) => {
                served.insert(p.service.clone(), set.clone());
            }
            (Err(_), Some(previous)) => {
                served.insert(p.service.clone(), previous.clone());
            }
            (Err(_), None) => {}
        }
    }
    let targets: BTreeSet<ObjectKey> = parents.iter().map(|p| p.service.clone()).collect();
    let backends: BTreeSet<ObjectKey> =
        served.values().flat_map(|s| s.backend_services()).collect();
    delete_route(index, kind, &key);
    for target in &targets {
        index
            .routes_by_target
            .entry(target.clone())
            .or_default()
            .insert(id.clone());
        index.dirty.services.insert(target.clone());
    }
    for backend in &backends {
        index
            .routes_by_backend
            .entry(backend.clone())
            .or_default()
            .insert(id.clone());
    }
    index.routes.insert(
        id,
        RouteEntry {
            generation: meta.generation,
            created: meta.creation_timestamp.clone(),
            parents,
            served,
            targets,
            backends,
        },
    );
}

fn delete_route(index: &mut Index, kind: RouteKind, key: &ObjectKey) {
    let id = (kind, key.clone());
    let Some(old) = index.routes.remove(&id) else {
        return;
    };
    for target in &old.targets {
        index.dirty.services.insert(target.clone());
        unlink_route(&mut index.routes_by_target, target, &id);
    }
    for backend in &old.backends {
        unlink_route(&mut index.routes_by_backend, backend, &id);
    }
}

/// A route's id: its kind and key.
pub type RouteId = (RouteKind, ObjectKey);

fn unlink_route(
    map: &mut crate::hash_map::HashMap<ObjectKey, BTreeSet<RouteId>>,
    at: &ObjectKey,
    id: &RouteId,
) {
    if let Some(set) = map.get_mut(at) {
        set.remove(id);
        if set.is_empty() {
            map.remove(at);
        }
    }
}

impl Index {
    /// Every route, in kind and key order.
    pub fn routes(&self) -> impl Iterator<Item = (&RouteId, &RouteEntry)> {
        self.routes.iter()
    }

    /// Routes whose served rules attach to the Service, with those rules (a route may name
    /// the Service in several parentRefs, with different ports: one set each).
    pub fn routes_for(
        &self,
        service: &ObjectKey,
    ) -> Vec<(&RouteId, &RouteEntry, Vec<Arc<RouteSet>>)> {
        self.routes_by_target
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(|id| self.routes.get_key_value(id))
            .map(|(id, entry)| {
                let mut sets: Vec<Arc<RouteSet>> = entry
                    .parents
                    .iter()
                    .filter(|p| p.service == *service)
                    .filter_map(|p| p.verdict.as_ref().ok().cloned())
                    .collect();
                if sets.is_empty() {
                    sets.extend(entry.served.get(service).cloned());
                }
                (id, entry, sets)
            })
            .filter(|(_, _, sets)| !sets.is_empty())
            .collect()
    }

    /// Services whose routes name `service` as a backend (their routes resolve it).
    pub(super) fn route_referrers(&self, service: &ObjectKey) -> Vec<ObjectKey> {
        self.routes_by_backend
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(|id| self.routes.get(id))
            .flat_map(|e| e.targets.iter().cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use crate::binding::{Outcome, ServiceBinding, SourceRef};
    use crate::routing::PathMatch;
    use crate::{Event, Index, ObjectKey};

    use crate::testing::apply_yaml as apply;

    const MESH: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec: {clusterIP: 10.96.0.1, ports: [{name: http, port: 9080}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: older, namespace: shop, creationTimestamp: "2026-12-01T00:00:00Z", generation: 1}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules:
  - name: older-prefix
    matches: [{path: {type: PathPrefix, value: /api}}]
    backendRefs: [{name: reviews, port: 9080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: newer, namespace: shop, creationTimestamp: "2026-12-02T00:00:00Z", generation: 1}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, port: 9080}]
  rules:
  - name: newer-prefix
    matches: [{path: {type: PathPrefix, value: /api}}]
    backendRefs: [{name: reviews, port: 9080}]
  - name: newer-exact
    matches: [{path: {type: Exact, value: /api/x}}]
    backendRefs: [{name: reviews, port: 9080}]
  - name: newer-longer
    matches: [{path: {type: PathPrefix, value: /api/v2}, method: GET}]
    backendRefs: [{name: reviews, port: 9080}]
---
apiVersion: weir.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: a-upstream, namespace: shop, creationTimestamp: "2026-11-01T00:00:00Z"}
spec:
  targetRef: {service: reviews}
  connectionPool: {maxConnections: 7}
---
apiVersion: weir.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: b-rules, namespace: shop, creationTimestamp: "2026-11-01T00:00:00Z"}
spec:
  targetRef: {service: reviews}
  http: [{name: all, timeout: 1s, destinations: [{}]}]
"#;

    #[test]
    fn routes_merge_by_precedence_and_policies_govern_beside_them() {
        let mut index = Index::new();
        apply(&mut index, MESH);
        let binding = ServiceBinding::bind(&index, &ObjectKey::new("shop", "reviews"));
        let port = binding.port(9080).expect("the port is routed");
        let order: Vec<&str> = port.http.iter().map(|r| r.rule().name.as_str()).collect();
        // Exact first, then the longer prefix, then equal prefixes by age (older first),
        // whatever the order written.
        assert_eq!(
            order,
            [
                "newer-exact",
                "newer-longer",
                "older-prefix",
                "newer-prefix"
            ]
        );
        assert!(matches!(
            port.http[0].matches()[0].and_then(|m| m.path.as_ref()),
            Some(PathMatch::Exact(_))
        ));
        assert!(port.routes_decide, "no match is a 404");
        // The older TrafficPolicy without rules governs the backends beside the routes...
        assert_eq!(
            port.governing
                .upstream
                .pool
                .as_ref()
                .and_then(|p| p.max_connections),
            Some(7)
        );
        // ...the one with rules yields to the route, whatever its age.
        let b = binding
            .attachment(&SourceRef::TrafficPolicy(ObjectKey::new("shop", "b-rules")))
            .unwrap();
        assert!(
            matches!(&b.outcome, Outcome::Conflicted { winner: SourceRef::HttpRoute(k), .. } if k.name == "older"),
            "{:?}",
            b.outcome
        );
        // Deleting the routes gives the port back to the policy with rules.
        for name in ["older", "newer"] {
            index.apply(Event::Delete(
                crate::Kind::HttpRoute,
                ObjectKey::new("shop", name),
            ));
        }
        let binding = ServiceBinding::bind(&index, &ObjectKey::new("shop", "reviews"));
        let port = binding.port(9080).unwrap();
        assert!(!port.routes_decide);
    }

    #[test]
    fn a_consumer_route_is_named_in_the_status_of_the_policy_it_overrides() {
        let mut index = Index::new();
        apply(
            &mut index,
            r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec: {clusterIP: 10.96.0.1, ports: [{name: http, port: 9080}, {name: admin, port: 9090}]}
---
apiVersion: weir.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: rules, namespace: shop}
spec:
  targetRef: {service: reviews}
  http: [{name: all, timeout: 1s, destinations: [{}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: mine, namespace: frontend, generation: 1}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, namespace: shop, port: 9080}]
  rules: [{backendRefs: [{name: reviews, namespace: shop, port: 9080}]}]
"#,
        );
        let mut translator = crate::translate::Translator::new();
        translator.update(&mut index);
        let reviews = ObjectKey::new("shop", "reviews");
        // Every other caller: the policy governs both ports.
        let producer = translator.binding(&reviews).unwrap();
        assert!(!producer.port(9080).unwrap().routes_decide);
        // Callers in frontend: the route takes 9080, the policy keeps 9090.
        let frontend = translator.binding_for(&reviews, "frontend").unwrap();
        assert!(frontend.port(9080).unwrap().routes_decide);
        assert!(!frontend.port(9090).unwrap().routes_decide);
        let statuses =
            crate::status::traffic_policy::policy_statuses(&index, &translator, Default::default());
        let message = &statuses[0].conditions[0].message;
        assert!(
            message.contains("for callers in namespace frontend, HTTPRoute frontend/mine (a consumer route) decides the routing of port(s) 9080"),
            "{message}"
        );
        let routes = crate::status::gateway_route::route_statuses(&index, &translator);
        assert!(routes[0].accepted(), "{routes:?}");
    }
}
