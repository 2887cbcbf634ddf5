//! The ADS server: state-of-the-world and delta, over tonic.
//!
//! Each stream reads the node's metadata from its first request, picks the proxy's profile,
//! and subscribes to that profile's snapshots. From then on it answers requests (ACK, NACK,
//! subscription changes) and pushes what changed in new snapshots, limited to the resources
//! the proxy watches. A NACK is recorded with Envoy's message and never answered with a
//! resend: the proxy keeps its last good config until the snapshot changes again.

pub mod delta;
pub mod proxies;
pub mod sotw;

use proxies::ProxyHandle;
use std::future::Future;
use weir_core::Snapshot;

use envoy_types::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_server::{
        AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
    },
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures::Stream;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use weir_core::bootstrap::ProxyMeta;
use weir_core::ResourceType;

use crate::engine::Engine;

/// Responses buffered per stream before the stream waits for the proxy to read.
const RESPONSE_BUFFER: usize = 8;

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The ADS service.
#[derive(Debug, Clone)]
pub struct AdsService {
    engine: Arc<Engine>,
}

impl AdsService {
    /// A service over the engine.
    pub fn new(engine: Arc<Engine>) -> Self {
        AdsService { engine }
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsService {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
        tokio::spawn(drive::<sotw::SotwStream>(
            self.engine.clone(),
            request.into_inner(),
            tx,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
        tokio::spawn(drive::<delta::DeltaStream>(
            self.engine.clone(),
            request.into_inner(),
            tx,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Serves ADS on `listener` until `shutdown` resolves.
pub async fn serve(
    engine: Arc<Engine>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .add_service(
            AggregatedDiscoveryServiceServer::new(AdsService::new(engine))
                .max_decoding_message_size(16 << 20)
                .max_encoding_message_size(64 << 20),
        )
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// Reads a stream's identity from the node of its first request.
pub(crate) fn identify(
    node: Option<&envoy_types::pb::envoy::config::core::v3::Node>,
) -> Result<(String, ProxyMeta), Status> {
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

/// Metrics and bookkeeping for one response.
pub(crate) fn count_push(engine: &Engine, t: ResourceType, resources: usize) {
    let labels = crate::metrics::TypeLabels { r#type: t.short() };
    engine.metrics.pushes.get_or_create(&labels).inc();
    engine
        .metrics
        .pushed_resources
        .get_or_create(&labels)
        .inc_by(resources as u64);
    engine.note_push();
}

/// Metrics and logging for a NACK.
pub(crate) fn count_nack(engine: &Engine, node: &str, t: ResourceType, message: &str) {
    let labels = crate::metrics::TypeLabels { r#type: t.short() };
    engine.metrics.nacks.get_or_create(&labels).inc();
    tracing::warn!(
        node,
        r#type = t.short(),
        message,
        "proxy rejected config (NACK); it keeps its last good config"
    );
}

/// What differs between the SotW and delta variants of a stream; [`drive`] does the rest.
pub(crate) trait AdsProtocol: Sized + Send + 'static {
    /// DiscoveryRequest or DeltaDiscoveryRequest.
    type Request: Send + 'static;
    /// DiscoveryResponse or DeltaDiscoveryResponse.
    type Response: Send + 'static;
    /// `sotw` or `delta`.
    const NAME: &'static str;
    /// The node of a request (set on the first one).
    fn node(req: &Self::Request) -> Option<&envoy_types::pb::envoy::config::core::v3::Node>;
    /// A stream over its shared state.
    fn new(core: StreamCore<Self::Response>) -> Self;
    /// The shared state.
    fn core(&self) -> &StreamCore<Self::Response>;
    /// Handles one request from the proxy.
    fn on_request(
        &mut self,
        snapshot: &Snapshot,
        req: Self::Request,
    ) -> impl Future<Output = Result<(), Gone>> + Send;
    /// Pushes what a new snapshot changed; `contiguous` when it directly follows the last one.
    fn on_snapshot(
        &mut self,
        snapshot: &Snapshot,
        contiguous: bool,
    ) -> impl Future<Output = Result<(), Gone>> + Send;
}

/// The proxy went away (its response channel closed).
#[derive(Debug)]
pub(crate) struct Gone;

/// State every stream has, whatever its variant.
pub(crate) struct StreamCore<R> {
    pub engine: Arc<Engine>,
    pub node: String,
    pub proxy: ProxyHandle,
    nonce: u64,
    tx: mpsc::Sender<Result<R, Status>>,
}

impl<R> StreamCore<R> {
    /// Records the proxy's answer to our last response of type `t`: an ACK of `version`,
    /// or a NACK with Envoy's message.
    pub fn record_answer(&self, t: ResourceType, nack: Option<&str>, version: Option<String>) {
        if let Some(message) = nack {
            count_nack(&self.engine, &self.node, t, message);
        }
        self.proxy.update(|p| {
            let s = p.state(t);
            s.pending_nonce = None;
            s.nack = nack.map(str::to_string);
            if nack.is_none() {
                s.acked_version = version.or_else(|| s.sent_version.clone());
            }
        });
    }

    /// Books a response of type `t` carrying `count` resources at `version`; returns its nonce.
    pub fn book_response(&mut self, t: ResourceType, version: &str, count: usize) -> String {
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        self.proxy.update(|p| {
            let s = p.state(t);
            s.sent_version = Some(version.to_string());
            s.pending_nonce = Some(nonce.clone());
            s.pushes += 1;
            s.resources_sent += count as u64;
        });
        count_push(&self.engine, t, count);
        nonce
    }

    /// Sends a response; fails when the proxy is gone.
    pub async fn send(&self, response: R) -> Result<(), Gone> {
        self.tx.send(Ok(response)).await.map_err(|_| Gone)
    }
}

/// Runs one ADS stream until the proxy goes away or the engine closes streams: identifies
/// the proxy from its first request, subscribes to its profile's snapshots, then feeds the
/// protocol requests and snapshot changes in arrival order.
pub(crate) async fn drive<P: AdsProtocol>(
    engine: Arc<Engine>,
    mut inbound: Streaming<P::Request>,
    tx: mpsc::Sender<Result<P::Response, Status>>,
) {
    let first = match inbound.message().await {
        Ok(Some(req)) => req,
        _ => return,
    };
    let (node, meta) = match identify(P::node(&first)) {
        Ok(id) => id,
        Err(status) => {
            tracing::warn!(%status, "refusing xDS stream");
            let _ = tx.send(Err(status)).await;
            return;
        }
    };
    let mut snapshots = engine.subscribe(meta.profile());
    let mut snapshot = snapshots.borrow_and_update().clone();
    let proxy = engine.proxies.register(node.clone(), P::NAME, &meta);
    engine.metrics.connected_proxies.inc();
    tracing::info!(
        node,
        namespace = meta.namespace,
        pod = meta.pod,
        protocol = P::NAME,
        "proxy connected"
    );
    let core = StreamCore {
        engine: engine.clone(),
        node: node.clone(),
        proxy,
        nonce: 0,
        tx,
    };
    let mut stream = P::new(core);

    let closed = engine.closed();
    tokio::pin!(closed);
    let mut next = Some(first);
    loop {
        if let Some(req) = next.take() {
            if stream.on_request(&snapshot, req).await.is_err() {
                break;
            }
        }
        tokio::select! {
            _ = &mut closed => break,
            msg = inbound.message() => match msg {
                Ok(Some(req)) => next = Some(req),
                Ok(None) => break,
                Err(status) => {
                    tracing::debug!(node, %status, "stream ended");
                    break;
                }
            },
            changed = snapshots.changed() => {
                if changed.is_err() {
                    break;
                }
                let fresh = snapshots.borrow_and_update().clone();
                let contiguous = fresh.generation == snapshot.generation + 1;
                snapshot = fresh;
                stream.core().proxy.update(|p| p.generation = snapshot.generation);
                if stream.on_snapshot(&snapshot, contiguous).await.is_err() {
                    break;
                }
            }
        }
    }
    engine.metrics.connected_proxies.dec();
    tracing::info!(node, protocol = P::NAME, "proxy disconnected");
}
