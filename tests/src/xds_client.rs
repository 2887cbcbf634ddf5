//! A raw ADS client, for what Envoy cannot be made to do on purpose: present no token, a
//! stale one, or node metadata that names another pod. It speaks TLS (verifying the
//! operator against the mesh root, as Envoy does) and sends what it is told.

use anyhow::{Context, Result};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use tonic::transport::{Channel, Endpoint, Uri};

/// A delta request for type `t`, subscribing to `subscribe` (none: the type's default) and
/// answering the response of `nonce` (empty: none).
pub fn delta_request(
    t: weir_core::ResourceType,
    subscribe: Vec<String>,
    nonce: String,
) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: t.type_url().to_string(),
        resource_names_subscribe: subscribe,
        response_nonce: nonce,
        ..Default::default()
    }
}

/// A TLS channel to an xDS server at `addr`, verifying its certificate for `name` against
/// `root_pem`.
pub async fn tls_channel(addr: SocketAddr, name: &str, root_pem: &str) -> Result<Channel> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(cert.map_err(|e| anyhow::anyhow!("root PEM: {e:?}"))?)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let server_name = rustls::pki_types::ServerName::try_from(name.to_string())?;
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_with_connector(tower_service(move |_: Uri| {
            let (connector, server_name) = (connector.clone(), server_name.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let tls = connector.connect(server_name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .with_context(|| format!("TLS connection to the xDS server at {addr}"))?;
    Ok(channel)
}

fn tower_service<F, Fut, T>(f: F) -> tower_fn::ServiceFn<F>
where
    F: FnMut(Uri) -> Fut,
    Fut: std::future::Future<Output = Result<T, std::io::Error>>,
{
    tower_fn::ServiceFn(f)
}

/// A minimal `tower::Service` from a closure (tower's `service_fn`, without the crate).
mod tower_fn {
    use std::task::{Context, Poll};
    use tonic::transport::Uri;

    #[derive(Clone)]
    pub struct ServiceFn<F>(pub F);

    impl<F, Fut, T> tonic::codegen::Service<Uri> for ServiceFn<F>
    where
        F: FnMut(Uri) -> Fut,
        Fut: std::future::Future<Output = Result<T, std::io::Error>>,
    {
        type Response = T;
        type Error = std::io::Error;
        type Future = Fut;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, uri: Uri) -> Fut {
            (self.0)(uri)
        }
    }
}

/// Node metadata as the bootstrap writes it, for a transparent-capture pod
/// `namespace/pod`.
pub fn node(namespace: &str, pod: &str) -> Node {
    node_with(namespace, pod, &[("CAPTURE_MODE", "transparent")])
}

/// As [`node`], for an explicit-capture proxy listening on `outbound_port`.
pub fn explicit_node(namespace: &str, pod: &str, outbound_port: u16) -> Node {
    node_with(
        namespace,
        pod,
        &[
            ("CAPTURE_MODE", "explicit"),
            ("OUTBOUND_PORT", &outbound_port.to_string()),
        ],
    )
}

fn node_with(namespace: &str, pod: &str, capture: &[(&str, &str)]) -> Node {
    let text = |s: &str| Value {
        kind: Some(Kind::StringValue(s.to_string())),
    };
    Node {
        id: format!("{pod}.{namespace}"),
        cluster: namespace.to_string(),
        metadata: Some(Struct {
            fields: [("NAMESPACE", namespace), ("POD_NAME", pod)]
                .iter()
                .chain(capture)
                .map(|(k, v)| (k.to_string(), text(v)))
                .collect(),
        }),
        ..Default::default()
    }
}

/// A delta ADS stream opened with `first` and `token` (if any) as bearer token: the sender
/// of further requests (the stream ends when it is dropped) and the responses.
pub type DeltaStream = (
    tokio::sync::mpsc::Sender<DeltaDiscoveryRequest>,
    tonic::Streaming<DeltaDiscoveryResponse>,
);

/// Opens a delta ADS stream: `first` is sent at once, `token` (if any) as bearer token.
pub async fn delta_stream(
    channel: Channel,
    token: Option<&str>,
    first: DeltaDiscoveryRequest,
) -> std::result::Result<DeltaStream, tonic::Status> {
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(first).await.expect("the channel is open");
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| tonic::Status::invalid_argument("token is not a header value"))?;
        request.metadata_mut().insert("authorization", value);
    }
    let responses = client
        .delta_aggregated_resources(request)
        .await?
        .into_inner();
    Ok((tx, responses))
}

/// Opens a delta ADS stream with `token` (if any) as bearer token, subscribes to clusters
/// as `node`, and returns the first response, or the status the server refused with.
pub async fn first_response(
    channel: Channel,
    token: Option<&str>,
    node: Node,
) -> std::result::Result<DeltaDiscoveryResponse, tonic::Status> {
    let first = DeltaDiscoveryRequest {
        node: Some(node),
        type_url: weir_core::ResourceType::Cluster.type_url().to_string(),
        ..Default::default()
    };
    let (tx, mut responses) = delta_stream(channel, token, first).await?;
    let response = responses
        .message()
        .await?
        .ok_or_else(|| tonic::Status::unavailable("the stream ended without a response"))?;
    drop(tx);
    Ok(response)
}
