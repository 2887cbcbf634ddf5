//! Real applications of every protocol the mesh carries, as servers that say who they are
//! and clients that report what they got: gRPC (tonic), HTTP/1.1 and h2c (hyper), a
//! line-protocol TCP server, and TLS (rustls). Used in-process by explicit-mode tests and,
//! through the `weir-testapp` binary, inside network namespaces.

use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tonic::codegen::{http, Body, BoxFuture, Context as TaskContext, Poll, Service, StdError};

/// The gRPC service the test servers implement.
pub const ECHO_SERVICE: &str = "weir.test.Echo";

/// `weir.test.EchoRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    /// Any text.
    #[prost(string, tag = "1")]
    pub message: String,
}

/// `weir.test.EchoReply`: who answered, and which method.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    /// The server's name.
    #[prost(string, tag = "1")]
    pub server: String,
    /// The method called.
    #[prost(string, tag = "2")]
    pub method: String,
}

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckRequest {
    /// The service asked about ("" for the server).
    #[prost(string, tag = "1")]
    pub service: String,
}

/// `grpc.health.v1.HealthCheckResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckResponse {
    /// 1 is SERVING.
    #[prost(int32, tag = "1")]
    pub status: i32,
}

/// The status the standard health service answers when the server is up.
pub const SERVING: i32 = 1;

/// A gRPC server of `weir.test.Echo` (methods `Say` and `Other`) that answers with its
/// name, and UNAVAILABLE to its first `fail_first` calls; it also serves the standard
/// `grpc.health.v1.Health/Check` (what the kubelet's gRPC probe calls).
#[derive(Clone)]
pub struct EchoServer {
    name: Arc<str>,
    fail_first: usize,
    /// Calls received.
    pub calls: Arc<AtomicUsize>,
}

impl EchoServer {
    /// A server named `name`.
    pub fn new(name: &str, fail_first: usize) -> EchoServer {
        EchoServer {
            name: name.into(),
            fail_first,
            calls: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl tonic::server::NamedService for EchoServer {
    const NAME: &'static str = ECHO_SERVICE;
}

struct EchoMethod {
    server: EchoServer,
    method: &'static str,
}

impl tonic::server::UnaryService<EchoRequest> for EchoMethod {
    type Response = EchoReply;
    type Future = BoxFuture<tonic::Response<EchoReply>, tonic::Status>;

    fn call(&mut self, _request: tonic::Request<EchoRequest>) -> Self::Future {
        let n = self.server.calls.fetch_add(1, Ordering::SeqCst);
        let reply = if n < self.server.fail_first {
            Err(tonic::Status::unavailable(format!(
                "{} failing on purpose",
                self.server.name
            )))
        } else {
            Ok(tonic::Response::new(EchoReply {
                server: self.server.name.to_string(),
                method: self.method.to_string(),
            }))
        };
        Box::pin(async move { reply })
    }
}

impl<B> Service<http::Request<B>> for EchoServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = match req.uri().path() {
            "/weir.test.Echo/Say" => "Say",
            "/weir.test.Echo/Other" => "Other",
            _ => {
                return Box::pin(async {
                    Ok(tonic::Status::unimplemented("no such method").into_http())
                })
            }
        };
        let service = EchoMethod {
            server: self.clone(),
            method,
        };
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(service, req).await)
        })
    }
}

/// The standard health service: SERVING, always.
#[derive(Clone)]
struct HealthServer;

impl tonic::server::NamedService for HealthServer {
    const NAME: &'static str = "grpc.health.v1.Health";
}

impl<B> Service<http::Request<B>> for HealthServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != "/grpc.health.v1.Health/Check" {
            return Box::pin(async {
                Ok(tonic::Status::unimplemented("no such method").into_http())
            });
        }
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(HealthMethod, req).await)
        })
    }
}

struct HealthMethod;

impl tonic::server::UnaryService<HealthCheckRequest> for HealthMethod {
    type Response = HealthCheckResponse;
    type Future = BoxFuture<tonic::Response<HealthCheckResponse>, tonic::Status>;

    fn call(&mut self, _request: tonic::Request<HealthCheckRequest>) -> Self::Future {
        Box::pin(async {
            Ok(tonic::Response::new(HealthCheckResponse {
                status: SERVING,
            }))
        })
    }
}

/// Calls `grpc.health.v1.Health/Check` as the kubelet's gRPC probe does: the status.
pub async fn check_health(addr: SocketAddr, service: &str) -> Result<i32> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await?;
    let request = tonic::Request::new(HealthCheckRequest {
        service: service.into(),
    });
    let path = http::uri::PathAndQuery::from_static("/grpc.health.v1.Health/Check");
    let reply: tonic::Response<HealthCheckResponse> = grpc
        .unary(request, path, tonic_prost::ProstCodec::default())
        .await?;
    Ok(reply.into_inner().status)
}

/// Serves `server` on `listener` until the task is dropped.
pub async fn serve_grpc(server: EchoServer, listener: TcpListener) -> Result<()> {
    tonic::transport::Server::builder()
        .add_service(server)
        .add_service(HealthServer)
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await?;
    Ok(())
}

/// One unary call of `weir.test.Echo/<method>` to `addr`, with `:authority` set to
/// `authority` (the Service name Envoy routes by): the reply, or the gRPC status.
pub async fn call_grpc(
    addr: SocketAddr,
    authority: &str,
    method: &str,
) -> Result<std::result::Result<EchoReply, tonic::Status>> {
    let channel = grpc_channel(addr, authority).await?;
    Ok(call_grpc_on(channel, method).await)
}

/// A channel to `addr` whose requests carry `authority`.
pub async fn grpc_channel(addr: SocketAddr, authority: &str) -> Result<tonic::transport::Channel> {
    let origin: http::Uri = format!("http://{authority}").parse()?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .origin(origin)
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    Ok(channel)
}

/// One unary call on an open channel.
pub async fn call_grpc_on(
    channel: tonic::transport::Channel,
    method: &str,
) -> std::result::Result<EchoReply, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path: http::uri::PathAndQuery = format!("/{ECHO_SERVICE}/{method}")
        .parse()
        .map_err(|_| tonic::Status::invalid_argument("bad method"))?;
    let request = tonic::Request::new(EchoRequest {
        message: "hello".into(),
    });
    grpc.unary(request, path, tonic_prost::ProstCodec::default())
        .await
        .map(|r| r.into_inner())
}

/// An HTTP server that speaks HTTP/1.1 and h2c (prior knowledge) and answers every
/// request with `<name> <HTTP version>`, followed by ` xfcc=<value>` when the request
/// carries `x-forwarded-client-cert` (the caller's identity, as its sidecar passes it on).
pub async fn serve_http(name: &str, listener: TcpListener) -> Result<()> {
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let name: Arc<str> = name.into();
    loop {
        let (stream, _) = listener.accept().await?;
        let name = name.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let xfcc = req
                    .headers()
                    .get("x-forwarded-client-cert")
                    .and_then(|v| v.to_str().ok())
                    .map(|v| format!(" xfcc={v}"))
                    .unwrap_or_default();
                let body = format!("{name} {:?}{xfcc}\n", req.version());
                async move {
                    Ok::<_, std::convert::Infallible>(http::Response::new(
                        http_body_util::Full::new(hyper::body::Bytes::from(body)),
                    ))
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Serves HTTP/1.1 and h2c, answering every request with what it received, as JSON (as
/// Gateway API's conformance echo server does): `{"pod", "namespace", "method", "path",
/// "host", "headers": {lower-case name: [values]}}`.
pub async fn serve_echo(pod: &str, namespace: &str, listener: TcpListener) -> Result<()> {
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let who: Arc<(String, String)> = Arc::new((pod.to_string(), namespace.to_string()));
    loop {
        let (stream, _) = listener.accept().await?;
        let who = who.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let mut headers: std::collections::BTreeMap<String, Vec<String>> =
                    Default::default();
                for (name, value) in req.headers() {
                    headers
                        .entry(name.as_str().to_string())
                        .or_default()
                        .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
                }
                let host = req
                    .uri()
                    .authority()
                    .map(|a| a.to_string())
                    .or_else(|| headers.get("host").and_then(|h| h.first().cloned()))
                    .unwrap_or_default();
                let body = serde_json::json!({
                    "pod": who.0,
                    "namespace": who.1,
                    "method": req.method().as_str(),
                    "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
                    "host": host,
                    "headers": headers,
                })
                .to_string();
                async move {
                    let mut response = http::Response::new(http_body_util::Full::new(
                        hyper::body::Bytes::from(body),
                    ));
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// GET over h2c (HTTP/2 prior knowledge) to `addr` with `:authority`: the body's first line.
pub async fn get_h2c(addr: SocketAddr, authority: &str) -> Result<String> {
    use http_body_util::BodyExt;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(format!("http://{authority}/"))
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    let text = String::from_utf8_lossy(&body);
    Ok(format!(
        "{} {}",
        status.as_u16(),
        text.lines().next().unwrap_or_default()
    ))
}

/// A line-protocol TCP server: greets nobody, answers each line with `<name>: <line>`.
pub async fn serve_tcp_echo(name: &str, listener: TcpListener) -> Result<()> {
    let name: Arc<str> = name.into();
    loop {
        let (stream, _) = listener.accept().await?;
        let name = name.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if write
                    .write_all(format!("{name}: {line}\n").as_bytes())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
    }
}

/// Sends `line` over a new TCP connection and returns the answer's first line.
pub async fn call_tcp(addr: SocketAddr, line: &str) -> Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(format!("{line}\n").as_bytes()).await?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).await?;
    if answer.is_empty() {
        bail!("the connection closed without an answer");
    }
    Ok(answer.trim_end().to_string())
}

/// A TLS server (certificate for `names`, self-signed, written to `dir/ca.pem`) that
/// answers each handshake with `<name> <SNI the client sent>`.
pub async fn serve_tls(
    name: &str,
    names: &[&str],
    dir: &std::path::Path,
    listener: TcpListener,
) -> Result<()> {
    let cert = rcgen::generate_simple_self_signed(
        names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
    )?;
    std::fs::write(dir.join("ca.pem"), cert.cert.pem())?;
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let name: Arc<str> = name.into();
    loop {
        let (stream, _) = listener.accept().await?;
        let (acceptor, name) = (acceptor.clone(), name.clone());
        tokio::spawn(async move {
            if let Ok(mut tls) = acceptor.accept(stream).await {
                let sni = tls.get_ref().1.server_name().unwrap_or("-").to_string();
                let _ = tls.write_all(format!("{name} {sni}\n").as_bytes()).await;
                let _ = tls.shutdown().await;
            }
        });
    }
}

/// Connects over TLS to `addr` naming `sni`, verifying the server against `ca_pem`: the
/// server's greeting.
pub async fn call_tls(addr: SocketAddr, sni: &str, ca_pem: &std::path::Path) -> Result<String> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca_pem).with_context(|| format!("reading {}", ca_pem.display()))?;
    for cert in rustls_pemfile_certs(&pem)? {
        roots.add(cert)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let stream = TcpStream::connect(addr).await?;
    let server_name = rustls::pki_types::ServerName::try_from(sni.to_string())?;
    let mut tls = connector
        .connect(server_name, stream)
        .await
        .context("TLS handshake")?;
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.ok();
    Ok(answer.trim_end().to_string())
}

/// One HTTP/1.1 GET over mutual TLS, as a sidecar would send it: the client presents
/// `cert_pem` (chain) and `key_pem`, offers the ALPN names `alpn`, and checks the server's chain
/// against `ca_pem` (not its name: mesh certificates carry SPIFFE IDs, not DNS names).
/// Returns `<status> <body's first line>`.
pub async fn call_mtls_http(
    addr: SocketAddr,
    cert_pem: &str,
    key_pem: &str,
    ca_pem: &str,
    alpn: &[&str],
) -> Result<String> {
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile_certs(ca_pem.as_bytes())? {
        roots.add(cert)?;
    }
    let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("bad key PEM: {e:?}"))?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ChainOnly(webpki)))
        .with_client_auth_cert(rustls_pemfile_certs(cert_pem.as_bytes())?, key)?;
    config.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let stream = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("mesh.invalid")?;
    let mut tls = connector
        .connect(name, stream)
        .await
        .context("TLS handshake")?;
    tls.write_all(b"GET / HTTP/1.1\r\nhost: mesh\r\nconnection: close\r\n\r\n")
        .await?;
    let mut answer = String::new();
    tls.read_to_string(&mut answer)
        .await
        .context("reading the answer (refused after the handshake?)")?;
    let status = answer.split(' ').nth(1).unwrap_or("-").to_string();
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    if answer.is_empty() {
        bail!("the connection closed without an answer");
    }
    Ok(format!(
        "{status} {}",
        body.lines().next().unwrap_or_default()
    ))
}

/// Verifies a server's chain and signature, not its name.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use rustls::{CertificateError, Error};
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Certificates of a PEM text.
fn rustls_pemfile_certs(pem: &[u8]) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("bad PEM: {e:?}"))
}
