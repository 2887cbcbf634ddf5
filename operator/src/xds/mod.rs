//! The ADS server: it moves messages, nothing more. Every protocol rule lives in the
//! core's state machines (`weir_core::ads`); gRPC framing is done by hand (`grpc.rs`) so
//! that a stream holds no buffer of its own beyond the frame in flight.
//!
//! ```text
//! connection (conn.rs: capped, idle-timed, TLS) --> AdsService: the method, the stream
//!   cap, the token (auth.rs) --> drive():
//! first request --identify (node metadata)--> profile --subscribe--> snapshot receiver
//! loop: request  --Connection::handle_request--> answer (ACK/NACK: record, count) + responses
//!       snapshot --Connection::handle_snapshot--> responses
//!       responses --book (proxy record, metrics)--> wire::Message (shared pieces) --> the proxy
//! ```

pub mod auth;
pub mod conn;
pub mod grpc;
mod hold;
pub mod proxies;
pub mod tls;

use envoy_types::pb::envoy::config::core::v3::Node;
use std::collections::BTreeSet;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::Status;
use weir_core::ads::{self, Answer, Connection, DeltaConnection, SotwConnection};
use weir_core::bootstrap::ProxyMeta;
use weir_core::index::Workload;
use weir_core::mesh::ADS_SERVICE;
use weir_core::{ObjectKey, ResourceType, TypeSnapshot};

use crate::mesh_state::{MeshState, Placements};
use conn::{ConnInfo, XdsLimits};
use grpc::{Outgoing, RequestStream, ResponseBody};
use hold::Held;
use proxies::ProxyHandle;

/// Responses buffered per stream before the stream waits for the proxy to read.
const RESPONSE_BUFFER: usize = 4;

/// The ADS service.
#[derive(Debug, Clone)]
pub struct AdsService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: Arc<MeshState>,
    authenticator: auth::Authenticator,
    limits: XdsLimits,
    streams: Arc<AtomicUsize>,
}

impl AdsService {
    /// A service over the mesh state; with an authenticator, every stream must prove
    /// which pod it serves.
    pub fn new(
        state: Arc<MeshState>,
        authenticator: auth::Authenticator,
        limits: XdsLimits,
    ) -> Self {
        AdsService {
            inner: Arc::new(Inner {
                state,
                authenticator,
                limits,
                streams: Arc::new(AtomicUsize::new(0)),
            }),
        }
    }
}

impl tonic::server::NamedService for AdsService {
    const NAME: &'static str = ADS_SERVICE;
}

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for AdsService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move {
            let method = request.uri().path().rsplit('/').next().unwrap_or_default();
            Ok(match method {
                "StreamAggregatedResources" => inner.open::<SotwConnection>(request).await,
                "DeltaAggregatedResources" => inner.open::<DeltaConnection>(request).await,
                other => Status::unimplemented(format!(
                    "{ADS_SERVICE} has no method {other:?}: Weir serves aggregated (ADS) streams only"
                ))
                .into_http(),
            })
        })
    }
}

/// A place among the open streams, given back on drop.
struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Inner {
    async fn open<C: Connection>(
        &self,
        request: http::Request<tonic::body::Body>,
    ) -> http::Response<tonic::body::Body>
    where
        C::Request: prost::Message + Default,
    {
        if let Some(info) = request.extensions().get::<ConnInfo>() {
            info.mark_stream();
        }
        if self.streams.fetch_add(1, Ordering::Relaxed) >= self.limits.max_streams {
            self.streams.fetch_sub(1, Ordering::Relaxed);
            conn::count(&self.state.metrics, "stream_limit");
            return Status::resource_exhausted(format!(
                "this operator serves at most {} ADS streams (--xds-max-streams): the proxy retries; add replicas or raise the limit",
                self.limits.max_streams
            ))
            .into_http();
        }
        let slot = StreamSlot(self.streams.clone());
        let identity = match &self.authenticator {
            None => auth::StreamIdentity::Unverified,
            Some(reviewer) => {
                let header = request
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok());
                match reviewer.verify(&self.state, header).await {
                    Ok(proxy) => auth::StreamIdentity::Verified(proxy),
                    Err(refusal) => return refuse(&self.state, &refusal).into_http(),
                }
            }
        };
        let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
        let requests = RequestStream::new(request.into_body(), self.limits.max_request_bytes);
        let state = self.state.clone();
        tokio::spawn(async move {
            drive::<C>(state, identity, requests, tx).await;
            drop(slot);
        });
        grpc::response(ResponseBody::new(rx))
    }
}

/// Counts and logs a refused stream; the status to answer with.
fn refuse(state: &MeshState, refusal: &auth::Refusal) -> Status {
    auth::count_failure(&state.metrics, refusal.reason());
    let status = refusal.status();
    tracing::warn!(
        reason = refusal.reason(),
        message = status.message(),
        "xDS stream refused"
    );
    status
}

/// Serves ADS on `listener` (over TLS when `tls` is given) until `shutdown` resolves.
pub async fn serve(
    state: Arc<MeshState>,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<tls::XdsTls>>,
    authenticator: auth::Authenticator,
    limits: XdsLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let metrics = state.metrics.clone();
    let reports = crate::denials::ReportService::new(state.clone(), authenticator.is_some());
    let loads = crate::usage::LoadReportService::new(state.clone(), authenticator.is_some());
    let service = AdsService::new(state, authenticator, limits);
    // Envoy opens one ADS stream per connection; a few more are allowed for clients that
    // reconnect a stream on the same connection.
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .max_concurrent_streams(Some(8))
        .http2_max_header_list_size(Some(16 * 1024))
        .add_service(service)
        .add_service(reports)
        .add_service(loads)
        .serve_with_incoming_shutdown(conn::incoming(listener, tls, limits, metrics), shutdown)
        .await
}

/// Reads a stream's identity from the node of its first request.
pub(crate) fn identify(node: Option<&Node>) -> Result<(String, ProxyMeta), Status> {
    let node =
        node.ok_or_else(|| Status::invalid_argument("the first xDS request carries no node"))?;
    if node.id.is_empty() {
        return Err(Status::invalid_argument(
            "node.id is empty: give every proxy a unique node id",
        ));
    }
    let meta = ProxyMeta::from_node_metadata(node.metadata.as_ref())
        .map_err(|e| Status::invalid_argument(format!("node {}: {e}", node.id)))?;
    Ok((node.id.clone(), meta))
}

/// One stream's I/O side: where responses go and what is recorded about them.
struct StreamIo {
    state: Arc<MeshState>,
    node: String,
    proxy: ProxyHandle,
    tx: mpsc::Sender<Outgoing>,
}

impl StreamIo {
    /// Records the proxy's answer to our last response of a type.
    fn record(&self, answer: Answer) {
        match &answer {
            Answer::Nack { type_, message } => {
                let labels = crate::metrics::TypeLabels {
                    r#type: type_.short(),
                };
                self.state.metrics.nacks.get_or_create(&labels).inc();
                tracing::warn!(
                    node = self.node,
                    r#type = type_.short(),
                    message,
                    "proxy rejected config (NACK); it keeps its last good config"
                );
            }
            Answer::Ack { .. } => {}
        }
        self.proxy.update(|p| p.record_answer(answer));
    }

    /// Handles a request and sends `before`, then its answer; the endpoints that went out,
    /// and whether the request acknowledged the last endpoints sent.
    async fn answer<C: Connection>(
        &self,
        connection: &mut C,
        view: &weir_core::Snapshot,
        req: &C::Request,
        before: Vec<ads::Response>,
    ) -> Result<(Vec<Arc<str>>, bool), Gone> {
        let mut step = connection.handle_request(view, req);
        let endpoints: Vec<Arc<str>> = step
            .responses
            .iter()
            .filter(|r| r.type_ == ResourceType::Endpoint)
            .flat_map(|r| r.resources.iter().map(|e| e.name.clone()))
            .collect();
        let acknowledged = matches!(
            step.answer,
            Some(Answer::Ack {
                type_: ResourceType::Endpoint,
                ..
            })
        );
        if !before.is_empty() {
            step.responses.splice(0..0, before);
        }
        if let Some(t) = step.subscribed {
            self.proxy.update(|p| p.types[t].subscribed = true);
        }
        if let Some(answer) = step.answer {
            self.record(answer);
        }
        self.send::<C>(step.responses)
            .await
            .map(|()| (endpoints, acknowledged))
    }

    /// Answers held requests in order.
    async fn answer_all<C: Connection>(
        &self,
        connection: &mut C,
        view: &weir_core::Snapshot,
        requests: Vec<C::Request>,
    ) -> Result<(), Gone> {
        for req in &requests {
            self.answer(connection, view, req, Vec::new()).await?;
        }
        Ok(())
    }

    /// Books and sends responses in order; fails when the proxy is gone.
    async fn send<C: Connection>(&self, responses: Vec<ads::Response>) -> Result<(), Gone> {
        for response in responses {
            let (t, count) = (response.type_, response.resources.len());
            self.proxy.update(|p| p.record_response(&response));
            let labels = crate::metrics::TypeLabels { r#type: t.short() };
            self.state.metrics.pushes.get_or_create(&labels).inc();
            self.state
                .metrics
                .pushed_resources
                .get_or_create(&labels)
                .inc_by(count as u64);
            self.state.note_push();
            self.tx
                .send(Outgoing::Message(C::message(&response)))
                .await
                .map_err(|_| Gone)?;
        }
        Ok(())
    }
}

/// The proxy went away (its response channel closed).
#[derive(Debug)]
struct Gone;

/// Runs one ADS stream until the proxy goes away or the state closes streams: identifies
/// the proxy from its first request (checked against its token when it was verified),
/// subscribes to its profile's snapshots and its identity's secrets, then feeds the
/// requests and changes to the connection's state machine in arrival order.
async fn drive<C: Connection>(
    state: Arc<MeshState>,
    identity: auth::StreamIdentity,
    mut inbound: RequestStream<C::Request>,
    tx: mpsc::Sender<Outgoing>,
) where
    C::Request: prost::Message + Default,
{
    let first = match inbound.message().await {
        Ok(Some(req)) => req,
        _ => return,
    };
    let (node, meta) = match identify(C::node(&first)) {
        Ok(id) => id,
        Err(status) => {
            tracing::warn!(%status, "refusing xDS stream");
            let _ = tx.send(Outgoing::End(status)).await;
            return;
        }
    };
    let service_account = match service_account(&state, &identity, &meta) {
        Ok(service_account) => service_account,
        Err(status) => {
            let _ = tx.send(Outgoing::End(status)).await;
            return;
        }
    };
    let mut placements = state.placements();
    let mut serving = Serving::new(
        &state,
        &meta,
        placements.borrow_and_update().batch,
        C::NAME == weir_core::ads::DeltaConnection::NAME,
    );
    let mut snapshots = state.subscribe(serving.profile);
    let mut secrets = state.identity.subscribe(&meta.namespace, &service_account);
    let mut view = serving.view(
        &state,
        &snapshots.borrow_and_update(),
        &secrets.borrow_and_update(),
    );
    let proxy = state.proxies.register(
        node.clone(),
        C::NAME,
        &meta,
        serving.profile,
        &service_account,
    );
    proxy.update(|p| {
        p.serve(&view);
        p.scope = serving.scope_view();
    });
    state.metrics.connected_proxies.inc();
    tracing::info!(
        node,
        namespace = meta.namespace,
        pod = meta.pod,
        service_account,
        protocol = C::NAME,
        "proxy connected"
    );
    let io = StreamIo {
        state: state.clone(),
        node: node.clone(),
        proxy,
        tx,
    };
    let mut connection = C::default();
    let closed = state.closed();
    tokio::pin!(closed);
    // A scoped proxy's load reports, looked at every report interval: what it stopped
    // using leaves its scope.
    let usage = serving
        .scope
        .is_some()
        .then(|| state.usage.register(&node, &serving.pod))
        .flatten();
    let mut sweep = tokio::time::interval(
        usage
            .as_ref()
            .map_or(Duration::from_secs(86_400), |u| u.interval),
    );
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next = Some(first);
    let mut held: Option<Held<C::Request>> = None;
    loop {
        if let Some(req) = next.take() {
            let asks_virtual_hosts = C::request_type(&req) == Some(ResourceType::VirtualHost)
                && !C::subscribed_names(&req).is_empty();
            let vhosts_before = match &held {
                Some(h) => h.vhosts.clone(),
                None => view.types[ResourceType::VirtualHost].clone(),
            };
            let grew = serving.learn::<C>(&state, &snapshots.borrow(), &req);
            if grew {
                view = serving.view(&state, &snapshots.borrow(), &secrets.borrow());
                io.proxy.update(|p| {
                    p.serve(&view);
                    p.scope = serving.scope_view();
                });
            }
            // What the scope's growth brings besides the answer (the Service's clusters
            // with its virtual host) goes first; for virtual hosts asked for, without them
            // (they follow once the clusters are warm, see `Held`).
            let before = match (grew, asks_virtual_hosts) {
                (false, _) => Vec::new(),
                (true, false) => connection.handle_snapshot(&view),
                (true, true) => {
                    let mut ahead = view.clone();
                    ahead.types[ResourceType::VirtualHost] = vhosts_before.clone();
                    connection.handle_snapshot(&ahead)
                }
            };
            let sends_clusters = before.iter().any(|r| r.type_ == ResourceType::Cluster);
            if asks_virtual_hosts && (sends_clusters || held.is_some()) {
                // Answered once the clusters sent ahead are warm (see `Held`), in order.
                match &mut held {
                    Some(waiting) => waiting.join(req, &before),
                    None => held = Some(Held::new(req, &before, vhosts_before)),
                }
                if io.send::<C>(before).await.is_err() {
                    break;
                }
            } else {
                let Ok((endpoints, acked)) = io.answer(&mut connection, &view, &req, before).await
                else {
                    break;
                };
                if held.as_mut().is_some_and(|h| h.note(endpoints, acked)) {
                    let requests = held.take().map(|h| h.requests).unwrap_or_default();
                    if io
                        .answer_all(&mut connection, &view, requests)
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let deadline = held.as_ref().map_or_else(
            || tokio::time::Instant::now() + Duration::from_secs(86_400),
            |h| h.deadline,
        );
        tokio::select! {
            _ = tokio::time::sleep_until(deadline), if held.is_some() => {
                tracing::debug!(node, "virtual hosts went out at the deadline, before their clusters were warm");
                let requests = held.take().map(|h| h.requests).unwrap_or_default();
                if io.answer_all(&mut connection, &view, requests).await.is_err() {
                    break;
                }
                continue;
            }
            _ = &mut closed => break,
            msg = inbound.message() => match msg {
                Ok(Some(req)) => next = Some(req),
                Ok(None) => break,
                Err(status) => {
                    tracing::debug!(node, %status, "stream ended");
                    if status.code() == tonic::Code::ResourceExhausted {
                        conn::count(&state.metrics, "request_too_large");
                    }
                    let _ = io.tx.send(Outgoing::End(status)).await;
                    break;
                }
            },
            changed = snapshots.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            changed = secrets.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            _ = sweep.tick(), if usage.is_some() => {
                let Some(usage) = &usage else { continue };
                if !serving.shrink(&state, usage.take(), usage.idle) {
                    continue;
                }
                io.proxy.update(|p| p.scope = serving.scope_view());
            }
            changed = placements.changed() => {
                if changed.is_err() {
                    break;
                }
                let now = placements.borrow_and_update().clone();
                match serving.replace(&state, &meta, &now) {
                    Moved::Nowhere => continue,
                    // What it is served now is not a continuation of what it had, so the
                    // next view is compared whole.
                    Moved::Workload => connection.resync(),
                    Moved::Profile => {
                        connection.resync();
                        let profile = serving.profile;
                        snapshots = state.subscribe(profile);
                        io.proxy.update(|p| p.profile = profile);
                    }
                }
            }
        }
        if next.is_none() {
            view = serving.view(
                &state,
                &snapshots.borrow_and_update(),
                &secrets.borrow_and_update(),
            );
            // A cut may have dropped Services deleted from the mesh.
            let scope = serving.scope_view_if_changed();
            io.proxy.update(|p| {
                p.serve(&view);
                if let Some(scope) = scope {
                    p.scope = Some(scope);
                }
            });
            // While a virtual host is held, the others wait with it.
            let pushed = match &held {
                Some(h) => {
                    let mut ahead = view.clone();
                    ahead.types[ResourceType::VirtualHost] = h.vhosts.clone();
                    connection.handle_snapshot(&ahead)
                }
                None => connection.handle_snapshot(&view),
            };
            if io.send::<C>(pushed).await.is_err() {
                break;
            }
        }
    }
    state.metrics.connected_proxies.dec();
    tracing::info!(node, protocol = C::NAME, "proxy disconnected");
}

/// The service account a stream serves certificates for: the verified token's (which must
/// be the pod's the node metadata names), else, without token authentication, the pod's
/// as the index knows it, the metadata's, or `default`.
fn service_account(
    state: &MeshState,
    identity: &auth::StreamIdentity,
    meta: &ProxyMeta,
) -> Result<String, Status> {
    match identity {
        auth::StreamIdentity::Verified(proxy) => {
            if proxy.namespace != meta.namespace || proxy.pod != meta.pod {
                let refusal = auth::Refusal::MetadataMismatch(format!(
                    "the token is pod {}/{}'s, the node metadata says {}/{}",
                    proxy.namespace, proxy.pod, meta.namespace, meta.pod
                ));
                return Err(refuse(state, &refusal));
            }
            Ok(proxy.service_account.clone())
        }
        auth::StreamIdentity::Unverified => {
            let pod = weir_core::ObjectKey::new(meta.namespace.clone(), meta.pod.clone());
            Ok(state
                .pod_service_account(&pod)
                .or_else(|| meta.service_account.clone())
                .unwrap_or_else(|| "default".into()))
        }
    }
}

/// What one stream serves beyond its identity: the profile its pod's mTLS mode and zone
/// decide, and the inbound listener of the Services it backs (all can change while it is
/// connected). The listeners derived for the workload are kept until the profile's
/// listeners or the workload change, so endpoint and route churn reuse them without the
/// model lock.
struct Serving {
    pod: weir_core::ObjectKey,
    /// The last placement batch seen.
    seen: u64,
    profile: weir_core::ProxyProfile,
    workload: Workload,
    /// (the profile's listener snapshot, the workload, what the stream serves for them).
    listeners: Option<(Arc<TypeSnapshot>, Workload, Arc<TypeSnapshot>)>,
    /// The same for route tables.
    routes: Option<(Arc<TypeSnapshot>, Workload, Arc<TypeSnapshot>)>,
    /// The stream speaks delta xDS (a scoped proxy must).
    delta: bool,
    /// A scoped proxy's scope (None: it holds the whole mesh).
    scope: Option<weir_core::scope::Scope>,
    /// The scope version the admin views last showed.
    scope_shown: u64,
}

/// What a stream serves of one type over `base` for `workload`: the last derivation when
/// it was made from the same snapshot for the same workload, else a new one (kept).
fn served(
    last: &mut Option<(Arc<TypeSnapshot>, Workload, Arc<TypeSnapshot>)>,
    base: &Arc<TypeSnapshot>,
    workload: &Workload,
    derive: impl FnOnce(&Arc<TypeSnapshot>) -> Arc<TypeSnapshot>,
) -> Arc<TypeSnapshot> {
    if let Some((from, of, served)) = last {
        if Arc::ptr_eq(from, base) && of == workload {
            return served.clone();
        }
    }
    let served = derive(base);
    *last = Some((base.clone(), workload.clone(), served.clone()));
    served
}

/// How a stream's placement moved.
enum Moved {
    /// It did not.
    Nowhere,
    /// The Services its pod backs changed.
    Workload,
    /// Its profile changed (and maybe the workload): subscribe to the new one.
    Profile,
}

impl Serving {
    /// The placement of `meta`'s pod, read after placement batch `seen`.
    fn new(state: &MeshState, meta: &ProxyMeta, seen: u64, delta: bool) -> Serving {
        let pod = weir_core::ObjectKey::new(meta.namespace.clone(), meta.pod.clone());
        let (profile, workload) = Self::placed(state, &pod, meta, delta);
        let mut serving = Serving {
            pod,
            seen,
            profile,
            workload,
            listeners: None,
            routes: None,
            delta,
            scope: None,
            scope_shown: 0,
        };
        serving.rescope();
        serving
    }

    fn placed(
        state: &MeshState,
        pod: &weir_core::ObjectKey,
        meta: &ProxyMeta,
        delta: bool,
    ) -> (weir_core::ProxyProfile, Workload) {
        let placement = state.placement(pod);
        let zone = match &meta.zone {
            Some(zone) => weir_core::Zone::new(zone),
            None => placement.zone.and_then(|z| weir_core::Zone::new(&z)),
        };
        let profile = meta
            .profile(placement.mode)
            .in_zone(zone)
            .scoped(delta && state.scoped_proxies());
        let mut workload = placement.workload;
        workload.reports = meta.reports;
        (profile, workload)
    }

    /// Keeps the scope in step with the profile (scoped or not) and the declared Services
    /// (the ones the pod backs, the ones its annotation names).
    fn rescope(&mut self) {
        if !self.profile.scoped {
            self.scope = None;
            return;
        }
        let scope = self
            .scope
            .get_or_insert_with(|| weir_core::scope::Scope::new(&self.pod.namespace));
        scope.declare(
            self.workload
                .services
                .iter()
                .chain(self.workload.dependencies.iter())
                .cloned(),
        );
    }

    /// Learns from a request what a scoped proxy uses; true when its scope grew (the view
    /// must be made again before the request is answered).
    fn learn<C: Connection>(
        &mut self,
        state: &MeshState,
        snapshot: &weir_core::Snapshot,
        req: &C::Request,
    ) -> bool {
        let Some(scope) = &mut self.scope else {
            return false;
        };
        let Some((t, names)) = C::requested_names(req) else {
            return false;
        };
        let learned = scope.learn(
            t,
            names,
            &snapshot.types[ResourceType::VirtualHost].resources,
            |address| state.service_by_address(address),
        );
        if t == ResourceType::Cluster {
            let asked = C::subscribed_names(req);
            if !asked.is_empty() {
                tracing::debug!(pod = %self.pod, ?asked, "clusters asked for by name: their Services never sleep");
            }
            scope.pin(asked);
        }
        if learned {
            tracing::debug!(pod = %self.pod, services = scope.services().len(), "a scoped proxy's scope grew");
        }
        learned
    }

    /// The scope as the admin views show it.
    fn scope_view(&mut self) -> Option<weir_core::views::proxies::ScopeView> {
        let scope = self.scope.as_ref()?;
        self.scope_shown = scope.version();
        Some(scope.view())
    }

    /// The same, when the scope changed since it was last shown.
    fn scope_view_if_changed(&mut self) -> Option<weir_core::views::proxies::ScopeView> {
        let version = self.scope.as_ref()?.version();
        (version != self.scope_shown)
            .then(|| self.scope_view())
            .flatten()
    }

    /// Forgets the learned Services the proxy has not used for `idle` (`used`: what it
    /// reported using since the last look); true when the scope shrank.
    fn shrink(
        &mut self,
        state: &MeshState,
        used: Option<BTreeSet<ObjectKey>>,
        idle: Duration,
    ) -> bool {
        let Some(scope) = &mut self.scope else {
            return false;
        };
        let now = std::time::Instant::now();
        let Some(used) = used else {
            // No reports: nothing is known unused; the clock starts again when they come.
            scope.restart_clock();
            return false;
        };
        scope.touch(used, now);
        let gone = scope.shrink(now, idle);
        if gone.is_empty() {
            return false;
        }
        state.metrics.scope_unused.inc_by(gone.len() as u64);
        tracing::info!(pod = %self.pod, unused = ?gone, services = scope.services().len(), "Services a scoped proxy stopped using left its scope");
        true
    }

    /// Reads the pod's placement again, when batch `now` may have moved it.
    fn replace(&mut self, state: &MeshState, meta: &ProxyMeta, now: &Placements) -> Moved {
        let moved = now.moved(self.seen, &self.pod);
        self.seen = now.batch;
        if !moved {
            return Moved::Nowhere;
        }
        let (profile, workload) = Self::placed(state, &self.pod, meta, self.delta);
        let moved = if profile != self.profile {
            tracing::info!(pod = %self.pod, inbound = profile.inbound.as_str(), zone = ?profile.zone, "proxy's mTLS mode or zone changed");
            Moved::Profile
        } else if workload != self.workload {
            Moved::Workload
        } else {
            return Moved::Nowhere;
        };
        if workload != self.workload {
            tracing::info!(pod = %self.pod, services = workload.services.len(), authorization = workload.authorization.is_some(), "the Services the proxy's pod backs or its authorization changed");
        }
        self.profile = profile;
        self.workload = workload;
        self.rescope();
        moved
    }

    /// What the stream serves: its profile's snapshot, with its workload's listeners and
    /// its own identity's secrets over it.
    fn view(
        &mut self,
        state: &MeshState,
        snapshot: &Arc<weir_core::Snapshot>,
        secrets: &Arc<TypeSnapshot>,
    ) -> weir_core::Snapshot {
        let (profile, workload) = (self.profile, &self.workload);
        let listeners = served(
            &mut self.listeners,
            &snapshot.types[ResourceType::Listener],
            workload,
            |base| state.workload_listeners(profile, workload, base),
        );
        let routes = served(
            &mut self.routes,
            &snapshot.types[ResourceType::Route],
            workload,
            |base| state.workload_routes(profile, workload, base),
        );
        let mut types = snapshot.types.clone();
        types[ResourceType::Listener] = listeners;
        types[ResourceType::Route] = routes;
        types[ResourceType::Secret] = secrets.clone();
        if let Some(scope) = &mut self.scope {
            for t in [ResourceType::Cluster, ResourceType::VirtualHost] {
                types[t] = scope.cut(t, &snapshot.types[t]);
            }
        }
        weir_core::Snapshot {
            generation: snapshot.generation,
            types,
        }
    }
}
