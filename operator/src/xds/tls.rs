//! TLS for the xDS port: the operator's serving certificate, issued by the mesh CA and
//! renewed in place, so proxies verify the operator against the mesh root they mount.
//!
//! ```text
//! Authority (issuing CA, roots) --issue_server(names)--> CertifiedKey --swap--> resolver
//!   renewed at half-life, and again whenever the roots change (a CA rotation)
//! TcpListener --accept--> TLS handshake (ALPN h2, bounded in time) --> TlsConn --> tonic
//! ```
//!
//! A handshake that fails (a client that does not trust the mesh root, a port scanner) is
//! counted and dropped; it never stops the listener.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::identity::Authority;
use crate::metrics::Metrics;

/// Lifetime of the operator's serving certificate.
pub const SERVING_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The xDS server's TLS side. See the module docs.
pub struct XdsTls {
    names: Vec<String>,
    resolver: Arc<Resolver>,
    config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for XdsTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsTls")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

/// Errors setting up TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// No name to put in the certificate.
    #[error("the xDS serving certificate needs at least one name (--xds-name)")]
    NoNames,
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Hands out the current certificate to every handshake.
#[derive(Debug, Default)]
struct Resolver {
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl XdsTls {
    /// TLS for a server known by `names` (DNS names or IP addresses, as proxies dial it).
    pub fn new(names: Vec<String>) -> Result<Arc<XdsTls>, TlsError> {
        if names.is_empty() {
            return Err(TlsError::NoNames);
        }
        let resolver = Arc::new(Resolver::default());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        // gRPC clients require HTTP/2 negotiated by ALPN.
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(XdsTls {
            names,
            resolver,
            config: Arc::new(config),
        }))
    }

    /// Whether a certificate is installed (handshakes fail until one is).
    pub fn ready(&self) -> bool {
        self.resolver
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some()
    }

    /// Issues the serving certificate and renews it at half-life and at every change of
    /// the roots in force, until the authority is dropped.
    pub async fn run(self: Arc<Self>, authority: Arc<Authority>) {
        let mut roots = authority.roots();
        loop {
            let renew_in = match authority.issue_server(&self.names, SERVING_CERT_TTL) {
                Some(cert) => match certified_key(&cert.chain_pem, cert.key.pem()) {
                    Ok(key) => {
                        *self
                            .resolver
                            .current
                            .write()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) =
                            Some(Arc::new(key));
                        tracing::info!(names = ?self.names, "xDS serving certificate issued");
                        let life = cert
                            .not_after
                            .duration_since(SystemTime::now())
                            .unwrap_or_default();
                        life / 2
                    }
                    Err(err) => {
                        tracing::error!(%err, "cannot load the xDS serving certificate; retrying");
                        Duration::from_secs(10)
                    }
                },
                // No CA yet (or it cannot issue): the roots watch says when there is one.
                None => Duration::from_secs(60),
            };
            tokio::select! {
                _ = tokio::time::sleep(renew_in) => {}
                changed = roots.changed() => if changed.is_err() { return },
            }
        }
    }

    /// The TLS connections accepted on `listener`, for tonic.
    pub fn incoming(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        metrics: Arc<Metrics>,
    ) -> ReceiverStream<Result<TlsConn, std::io::Error>> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.clone());
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Out of descriptors and the like: pause rather than spin.
                        tracing::warn!(%err, "xDS accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, conns, metrics) = (acceptor.clone(), tx.clone(), metrics.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = conns.send(Ok(TlsConn(tls))).await;
                        }
                        Ok(Err(err)) => {
                            tracing::debug!(%peer, %err, "xDS TLS handshake failed");
                            count_refusal(&metrics, "tls_handshake");
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "xDS TLS handshake timed out");
                            count_refusal(&metrics, "tls_handshake");
                        }
                    }
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        ReceiverStream::new(rx)
    }
}

fn count_refusal(metrics: &Metrics, reason: &'static str) {
    metrics
        .xds_auth_failures
        .get_or_create(&crate::metrics::ReasonLabels { reason })
        .inc();
}

/// A rustls key from a PEM chain and key.
pub fn certified_key(chain_pem: &str, key_pem: &str) -> Result<CertifiedKey, rustls::Error> {
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| rustls::Error::General(format!("certificate PEM: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| rustls::Error::General(format!("key PEM: {e}")))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)?;
    Ok(CertifiedKey::new(chain, signing))
}

/// One accepted TLS connection.
#[derive(Debug)]
pub struct TlsConn(tokio_rustls::server::TlsStream<TcpStream>);

impl Connected for TlsConn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().0.connect_info()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}
