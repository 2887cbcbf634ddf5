//! An in-process stand-in for the Kubernetes API server, over real HTTP, kept for what a
//! real kube-apiserver cannot be made to do on demand (requests failing with 500, watch
//! streams cut mid-flight, stored objects our types cannot decode) and for the memory
//! benchmark's 120,000 objects. Every other behaviour is tested against a real
//! kube-apiserver (`weir_tests::kube`).
//!
//! ```text
//! kube::Client --HTTP--> axum fallback --> route (group/version/resource, namespace, name,
//!   subresource) --> Store (objects, resourceVersion counter, event history)
//!   GET list | GET ?watch=true (history after the rv, then live; chunked JSON lines)
//!   POST create | PUT replace (409 on a stale resourceVersion) | PATCH apply/merge | DELETE
//! ```
//!
//! It serves what the operator uses, with the API server's semantics where the operator
//! depends on them: resource versions and optimistic concurrency, `generation` bumped by
//! spec changes only, the status subresource, server-side apply's field manager
//! (recorded in `managedFields`), metadata-only lists and watches, and label selectors
//! (`key` and `key=value`). Faults for tests: failing requests, broken watch streams.

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::{broadcast, mpsc, watch};

/// One change, as a watch delivers it.
#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    collection: String,
    namespace: String,
    type_: &'static str,
    object: Value,
}

#[derive(Default)]
struct Store {
    rv: u64,
    /// (collection, namespace, name) -> object.
    objects: BTreeMap<(String, String, String), Value>,
    history: Vec<Change>,
    /// Requests still to fail with 500, by path prefix ("" for any).
    failures: Vec<(String, usize)>,
}

struct State {
    store: Mutex<Store>,
    changes: broadcast::Sender<Change>,
    /// Bumped to end every open watch.
    watch_epoch: watch::Sender<u64>,
}

/// A running fake API server.
pub struct FakeApi {
    /// Where it listens (plain HTTP).
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Collections the operator uses.
pub mod collections {
    /// core/v1 Services.
    pub const SERVICES: &str = "api/v1/services";
    /// core/v1 Pods.
    pub const PODS: &str = "api/v1/pods";
    /// EndpointSlices.
    pub const SLICES: &str = "apis/discovery.k8s.io/v1/endpointslices";
    /// TrafficPolicies.
    pub const POLICIES: &str = "apis/weir.dev/v1alpha1/trafficpolicies";
    /// MeshStatuses.
    pub const MESH_STATUSES: &str = "apis/weir.dev/v1alpha1/meshstatuses";
    /// MeshIdentities.
    pub const IDENTITIES: &str = "apis/weir.dev/v1alpha1/meshidentities";
    /// Leases.
    pub const LEASES: &str = "apis/coordination.k8s.io/v1/leases";
    /// events.k8s.io Events.
    pub const EVENTS: &str = "apis/events.k8s.io/v1/events";
}

impl FakeApi {
    /// Starts an empty API server on a free loopback port.
    pub async fn start() -> anyhow::Result<FakeApi> {
        let state = Arc::new(State {
            store: Mutex::new(Store::default()),
            changes: broadcast::channel(1 << 16).0,
            watch_epoch: watch::channel(0).0,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app_state = state.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let state = app_state.clone();
                async move { handle(&state, method, uri, headers, body).await }
            },
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeApi { addr, state, task })
    }

    /// A kube client for this server.
    pub fn client(&self) -> anyhow::Result<kube::Client> {
        let config = kube::Config::new(format!("http://{}", self.addr).parse()?);
        Ok(kube::Client::try_from(config)?)
    }

    /// A kubeconfig file pointing at this server, for a separate operator process.
    pub fn kubeconfig(&self, path: &std::path::Path) -> anyhow::Result<()> {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"http://{}\"}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: fake}}\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
            self.addr
        );
        std::fs::write(path, text)?;
        Ok(())
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.state
            .store
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Creates or replaces an object as a user would (`kubectl apply`); returns it as stored.
    pub fn apply(&self, object: Value) -> Value {
        let collection = collection_of(&object);
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| {
                if cluster_scoped(&collection) {
                    String::new()
                } else {
                    "default".into()
                }
            });
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut store = self.store();
        let key = (collection, namespace, name);
        match store.objects.get(&key).cloned() {
            Some(mut current) => {
                for field in ["spec", "data", "endpoints", "ports", "addressType"] {
                    if let Some(v) = object.get(field) {
                        current[field] = v.clone();
                    }
                }
                if let Some(labels) = object["metadata"].get("labels") {
                    current["metadata"]["labels"] = labels.clone();
                }
                store.update(&self.state, &key, current, false)
            }
            None => store.create(&self.state, &key, object),
        }
    }

    /// Applies every document of a YAML manifest (as `kubectl apply -f`).
    pub fn apply_yaml(&self, text: &str) -> anyhow::Result<()> {
        for doc in weir_core::yaml::documents(text) {
            self.apply(doc?);
        }
        Ok(())
    }

    /// Deletes an object; whether it existed.
    pub fn delete(&self, collection: &str, namespace: &str, name: &str) -> bool {
        let key = (
            collection.to_string(),
            namespace.to_string(),
            name.to_string(),
        );
        self.store().delete(&self.state, &key).is_some()
    }

    /// The object as stored.
    pub fn get(&self, collection: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = (
            collection.to_string(),
            namespace.to_string(),
            name.to_string(),
        );
        self.store().objects.get(&key).cloned()
    }

    /// Every object of a collection.
    pub fn list(&self, collection: &str) -> Vec<Value> {
        self.store()
            .objects
            .iter()
            .filter(|((c, _, _), _)| c == collection)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The next `n` requests whose path starts with `/prefix` fail with 500.
    pub fn fail_next(&self, prefix: &str, n: usize) {
        self.store().failures.push((format!("/{prefix}"), n));
    }

    /// Ends every open watch, as an API server restart does.
    pub fn break_watches(&self) {
        self.state.watch_epoch.send_modify(|e| *e += 1);
    }
}

fn cluster_scoped(collection: &str) -> bool {
    collection.ends_with("/meshstatuses") || collection.ends_with("/meshidentities")
}

fn collection_of(object: &Value) -> String {
    let api_version = object["apiVersion"].as_str().unwrap_or("v1");
    let kind = object["kind"].as_str().unwrap_or_default().to_lowercase();
    let plural = match kind.as_str() {
        k if k.ends_with("policy") => format!("{}ies", &k[..k.len() - 1]),
        k if k.ends_with("status") => format!("{k}es"),
        k => format!("{k}s"),
    };
    if api_version.contains('/') {
        format!("apis/{api_version}/{plural}")
    } else {
        format!("api/{api_version}/{plural}")
    }
}

/// Whole seconds, as the API server writes timestamps.
fn now() -> String {
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    k8s_openapi::jiff::Timestamp::from_second(now)
        .unwrap_or_default()
        .to_string()
}

impl Store {
    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn emit(
        &mut self,
        state: &State,
        key: &(String, String, String),
        type_: &'static str,
        object: Value,
    ) {
        let change = Change {
            rv: self.rv,
            collection: key.0.clone(),
            namespace: key.1.clone(),
            type_,
            object,
        };
        self.history.push(change.clone());
        let _ = state.changes.send(change);
    }

    fn create(
        &mut self,
        state: &State,
        key: &(String, String, String),
        mut object: Value,
    ) -> Value {
        let rv = self.next_rv();
        let meta = &mut object["metadata"];
        meta["name"] = json!(key.2);
        if !key.1.is_empty() {
            meta["namespace"] = json!(key.1);
        }
        meta["resourceVersion"] = json!(rv.to_string());
        meta["uid"] = json!(format!("uid-{rv}"));
        meta["generation"] = json!(1);
        meta["creationTimestamp"] = json!(now());
        self.objects.insert(key.clone(), object.clone());
        self.emit(state, key, "ADDED", object.clone());
        object
    }

    /// Stores `object` for `key`; bumps `generation` when the spec changed (not for status).
    fn update(
        &mut self,
        state: &State,
        key: &(String, String, String),
        mut object: Value,
        status_only: bool,
    ) -> Value {
        let Some(current) = self.objects.get(key).cloned() else {
            return self.create(state, key, object);
        };
        if status_only {
            let status = object.get("status").cloned();
            let managed = object["metadata"].get("managedFields").cloned();
            object = current.clone();
            if let Some(managed) = managed {
                object["metadata"]["managedFields"] = managed;
            }
            match status {
                Some(s) => object["status"] = s,
                None => {
                    if let Some(map) = object.as_object_mut() {
                        map.remove("status");
                    }
                }
            }
        } else {
            // The main resource never changes status, as with a status subresource.
            match current.get("status") {
                Some(s) => object["status"] = s.clone(),
                None => {
                    if let Some(map) = object.as_object_mut() {
                        map.remove("status");
                    }
                }
            }
        }
        let mut generation = current["metadata"]["generation"].as_i64().unwrap_or(1);
        if !status_only && object.get("spec") != current.get("spec") {
            generation += 1;
        }
        let rv = self.next_rv();
        let meta = &mut object["metadata"];
        for field in ["uid", "creationTimestamp", "namespace", "name"] {
            meta[field] = current["metadata"][field].clone();
        }
        meta["generation"] = json!(generation);
        meta["resourceVersion"] = json!(rv.to_string());
        if object["metadata"]["managedFields"].is_null() {
            object["metadata"]["managedFields"] = current["metadata"]["managedFields"].clone();
        }
        if object["metadata"]["managedFields"].is_null() {
            if let Some(meta) = object["metadata"].as_object_mut() {
                meta.remove("managedFields");
            }
        }
        self.objects.insert(key.clone(), object.clone());
        self.emit(state, key, "MODIFIED", object.clone());
        object
    }

    fn delete(&mut self, state: &State, key: &(String, String, String)) -> Option<Value> {
        let object = self.objects.remove(key)?;
        self.next_rv();
        self.emit(state, key, "DELETED", object.clone());
        Some(object)
    }
}

/// What a URL names.
struct Route {
    collection: String,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn route(path: &str) -> Option<Route> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group_version, rest) = match *segments.first()? {
        "api" => (format!("api/{}", segments.get(1)?), &segments[2..]),
        "apis" => (
            format!("apis/{}/{}", segments.get(1)?, segments.get(2)?),
            &segments[3..],
        ),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        rest => (None, rest),
    };
    Some(Route {
        collection: format!("{group_version}/{}", rest.first()?),
        namespace,
        name: rest.get(1).map(|s| s.to_string()),
        status: rest.get(2) == Some(&"status"),
    })
}

fn status_error(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    });
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn ok(value: &Value, code: StatusCode) -> Response {
    (
        code,
        [("content-type", "application/json")],
        value.to_string(),
    )
        .into_response()
}

fn query_map(uri: &Uri) -> HashMap<String, String> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            (
                k.to_string(),
                v.replace("%2F", "/")
                    .replace("%3D", "=")
                    .replace("%2C", ",")
                    .replace("%3A", ":"),
            )
        })
        .collect()
}

fn matches_labels(object: &Value, selector: Option<&String>) -> bool {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    let labels = &object["metadata"]["labels"];
    selector.split(',').all(|term| match term.split_once('=') {
        Some((k, v)) => labels[k].as_str() == Some(v),
        None => !labels[term].is_null(),
    })
}

/// The metadata-only form of an object or list, when the client asked for it.
fn metadata_only(object: &Value) -> Value {
    json!({
        "apiVersion": "meta.k8s.io/v1",
        "kind": "PartialObjectMetadata",
        "metadata": object["metadata"],
    })
}

async fn handle(
    state: &Arc<State>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let Some(route) = route(&path) else {
        return status_error(404, "NotFound", &format!("no route {path}"));
    };
    let query = query_map(&uri);
    let meta_only = headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=PartialObjectMetadata"));
    let mut store = state.store.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(failure) = store
        .failures
        .iter_mut()
        .find(|(prefix, n)| *n > 0 && path.starts_with(prefix.as_str()))
    {
        failure.1 -= 1;
        return status_error(500, "InternalError", "injected failure");
    }
    let body_json: Option<Value> = serde_json::from_slice(&body).ok();
    let namespace = route.namespace.clone().unwrap_or_default();
    match (method, &route.name) {
        (Method::GET, None) if query.get("watch").is_some_and(|w| w == "true" || w == "1") => {
            let from: u64 = query
                .get("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(1024);
            let line = move |change: &Change| {
                let object = if meta_only {
                    metadata_only(&change.object)
                } else {
                    change.object.clone()
                };
                Bytes::from(format!(
                    "{}\n",
                    json!({"type": change.type_, "object": object})
                ))
            };
            let wanted = {
                let collection = route.collection.clone();
                let ns = route.namespace.clone();
                let selector = query.get("labelSelector").cloned();
                move |change: &Change| {
                    change.collection == collection
                        && ns.as_ref().is_none_or(|n| *n == change.namespace)
                        && change.rv > from
                        && matches_labels(&change.object, selector.as_ref())
                }
            };
            let backlog: Vec<Bytes> = store
                .history
                .iter()
                .filter(|c| wanted(c))
                .map(line)
                .collect();
            let mut live = state.changes.subscribe();
            let mut epoch = state.watch_epoch.subscribe();
            let timeout = query
                .get("timeoutSeconds")
                .and_then(|t| t.parse().ok())
                .unwrap_or(290u64);
            let last = store.rv;
            drop(store);
            tokio::spawn(async move {
                for bytes in backlog {
                    if tx.send(Ok(bytes)).await.is_err() {
                        return;
                    }
                }
                let end = tokio::time::sleep(std::time::Duration::from_secs(timeout));
                tokio::pin!(end);
                epoch.borrow_and_update();
                loop {
                    tokio::select! {
                        _ = &mut end => return,
                        _ = epoch.changed() => return,
                        change = live.recv() => match change {
                            Ok(change) if change.rv > last && wanted(&change) => {
                                if tx.send(Ok(line(&change))).await.is_err() {
                                    return;
                                }
                            }
                            Ok(_) => {}
                            Err(broadcast::error::RecvError::Lagged(_)) => return,
                            Err(broadcast::error::RecvError::Closed) => return,
                        },
                    }
                }
            });
            Response::new(Body::from_stream(
                tokio_stream::wrappers::ReceiverStream::new(rx),
            ))
        }
        (Method::GET, None) => {
            let selector = query.get("labelSelector");
            let matching: Vec<&Value> = store
                .objects
                .iter()
                .filter(|((c, ns, _), _)| {
                    *c == route.collection && route.namespace.as_ref().is_none_or(|n| n == ns)
                })
                .map(|(_, v)| v)
                .filter(|v| matches_labels(v, selector))
                .collect();
            // Pages as the API server does (`limit`, `continue`); the token carries the
            // offset and the version of the first page, which every page reports.
            let (offset, rv) = query
                .get("continue")
                .and_then(|c| c.split_once(':'))
                .and_then(|(o, rv)| Some((o.parse().ok()?, rv.parse().ok()?)))
                .unwrap_or((0usize, store.rv));
            let limit: usize = query
                .get("limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(usize::MAX);
            let end = offset.saturating_add(limit).min(matching.len());
            let mut metadata = json!({"resourceVersion": rv.to_string()});
            if end < matching.len() {
                metadata["continue"] = json!(format!("{end}:{rv}"));
            }
            let items: Vec<Value> = matching[offset.min(end)..end]
                .iter()
                .map(|v| {
                    if meta_only {
                        metadata_only(v)
                    } else {
                        (*v).clone()
                    }
                })
                .collect();
            let list = json!({
                "apiVersion": if meta_only { "meta.k8s.io/v1" } else { "v1" },
                "kind": if meta_only { "PartialObjectMetadataList" } else { "List" },
                "metadata": metadata,
                "items": items,
            });
            ok(&list, StatusCode::OK)
        }
        (Method::GET, Some(name)) => {
            let key = (route.collection.clone(), namespace, name.clone());
            match store.objects.get(&key) {
                Some(v) => ok(v, StatusCode::OK),
                None => status_error(
                    404,
                    "NotFound",
                    &format!("{} {name} not found", route.collection),
                ),
            }
        }
        (Method::POST, None) => {
            let Some(object) = body_json else {
                return status_error(400, "BadRequest", "body is not JSON");
            };
            let name = object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let key = (route.collection.clone(), namespace, name.clone());
            if store.objects.contains_key(&key) {
                return status_error(409, "AlreadyExists", &format!("{name} already exists"));
            }
            let created = store.create(state, &key, object);
            ok(&created, StatusCode::CREATED)
        }
        (Method::PUT, Some(name)) => {
            let Some(object) = body_json else {
                return status_error(400, "BadRequest", "body is not JSON");
            };
            let key = (route.collection.clone(), namespace, name.clone());
            let Some(current) = store.objects.get(&key) else {
                return status_error(404, "NotFound", &format!("{name} not found"));
            };
            let given = object["metadata"]["resourceVersion"].as_str();
            if given.is_some_and(|rv| Some(rv) != current["metadata"]["resourceVersion"].as_str()) {
                return status_error(409, "Conflict", "the object has been modified; please apply your changes to the latest version and try again");
            }
            let updated = store.update(state, &key, object, route.status);
            ok(&updated, StatusCode::OK)
        }
        (Method::PATCH, Some(name)) => {
            let Some(patch) = body_json else {
                return status_error(400, "BadRequest", "body is not JSON");
            };
            let content_type = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let key = (route.collection.clone(), namespace, name.clone());
            let current = store.objects.get(&key).cloned();
            let mut object = if content_type.starts_with("application/apply-patch") {
                let Some(manager) = query.get("fieldManager").cloned() else {
                    return status_error(
                        422,
                        "Invalid",
                        "fieldManager is required for apply patch",
                    );
                };
                let mut object = match (&current, route.status) {
                    (None, true) => {
                        return status_error(404, "NotFound", &format!("{name} not found"))
                    }
                    (None, false) => patch.clone(),
                    (Some(c), _) => {
                        let mut merged = c.clone();
                        json_patch::merge(&mut merged, &patch);
                        if route.status {
                            // The applier owns the whole status: fields it left out go.
                            merged["status"] = patch["status"].clone();
                        }
                        merged
                    }
                };
                let subresource = if route.status { "status" } else { "" };
                let mut managed: Vec<Value> = object["metadata"]["managedFields"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                managed.retain(|m| {
                    !(m["manager"] == manager.as_str()
                        && m["subresource"].as_str().unwrap_or("") == subresource)
                });
                managed.push(json!({"manager": manager, "operation": "Apply", "subresource": subresource, "time": now()}));
                object["metadata"]["managedFields"] = json!(managed);
                object
            } else if content_type.starts_with("application/merge-patch") {
                let Some(c) = &current else {
                    return status_error(404, "NotFound", &format!("{name} not found"));
                };
                let mut merged = c.clone();
                json_patch::merge(&mut merged, &patch);
                merged
            } else {
                return status_error(415, "UnsupportedMediaType", &content_type);
            };
            if current.is_none() {
                object["metadata"]["name"] = json!(name);
                let created = store.create(state, &key, object);
                return ok(&created, StatusCode::CREATED);
            }
            let updated = store.update(state, &key, object, route.status);
            ok(&updated, StatusCode::OK)
        }
        (Method::DELETE, Some(name)) => {
            let key = (route.collection.clone(), namespace, name.clone());
            match store.delete(state, &key) {
                Some(v) => ok(&v, StatusCode::OK),
                None => status_error(404, "NotFound", &format!("{name} not found")),
            }
        }
        (method, _) => status_error(405, "MethodNotAllowed", &format!("{method} {path}")),
    }
}

impl FakeApi {
    /// Starts `weir-operator run` as `identity` against this server, with a 2 s Lease.
    pub fn spawn_operator(
        &self,
        identity: &str,
        scratch: &std::path::Path,
    ) -> anyhow::Result<crate::kube::OperatorProcess> {
        let kubeconfig = scratch.join(format!("kubeconfig-{identity}"));
        self.kubeconfig(&kubeconfig)?;
        crate::kube::spawn_operator(&kubeconfig, identity, scratch)
    }
}
