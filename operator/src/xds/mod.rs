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

use envoy_types::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_server::{
        AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
    },
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures::Stream;
use std::net::SocketAddr;
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
        tokio::spawn(sotw::run(self.engine.clone(), request.into_inner(), tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
        tokio::spawn(delta::run(self.engine.clone(), request.into_inner(), tx));
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

/// Binds the xDS address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
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
