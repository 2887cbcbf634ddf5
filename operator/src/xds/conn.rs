//! The xDS listener's connections, bounded: how many are open, how long one may stay
//! without an ADS stream, how long a TLS handshake may take.
//!
//! ```text
//! TcpListener --accept--> over the connection cap? close it (counted)
//!   --TLS handshake (when TLS is on), bounded in time--> XdsConn --> tonic / hyper
//! XdsConn: counts itself while open; fails its reads once the idle timeout passes
//!   without a stream (ConnInfo::mark_stream, from the ADS service), which closes it
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use super::tls::XdsTls;
use crate::metrics::Metrics;

/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Limits of the xDS server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XdsLimits {
    /// Open connections at most; more are closed as they arrive.
    pub max_connections: usize,
    /// Open ADS streams at most; more are refused with RESOURCE_EXHAUSTED.
    pub max_streams: usize,
    /// A connection that opens no stream within this long is closed.
    pub idle_timeout: Duration,
    /// Largest request message accepted.
    pub max_request_bytes: usize,
}

impl Default for XdsLimits {
    fn default() -> Self {
        XdsLimits {
            max_connections: 10_000,
            max_streams: 10_000,
            idle_timeout: Duration::from_secs(20),
            max_request_bytes: 4 << 20,
        }
    }
}

/// What the ADS service learns of the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub remote: Option<SocketAddr>,
    stream_seen: Arc<AtomicBool>,
}

impl ConnInfo {
    /// The connection carries a stream: it is no longer idle.
    pub fn mark_stream(&self) {
        self.stream_seen.store(true, Ordering::Relaxed);
    }
}

/// Marks the connection a request came on as carrying a stream (report services); the
/// peer's IP address.
pub fn stream_opened<B>(request: &http::Request<B>) -> Option<String> {
    let info = request.extensions().get::<ConnInfo>()?;
    info.mark_stream();
    info.remote.map(|a| a.ip().to_string())
}

/// The bytes under a connection: TCP, or TLS over TCP.
enum Transport {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// One accepted connection. See the module docs.
pub struct XdsConn {
    transport: Transport,
    info: ConnInfo,
    /// Until the first read: how long the connection may stay without a stream.
    idle_timeout: Option<Duration>,
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
    slot: Slot,
}

/// A place among the open connections, given back on drop.
struct Slot {
    open: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.metrics.xds_connections.dec();
    }
}

impl Connected for XdsConn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for XdsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if let Some(timeout) = this.idle_timeout.take() {
            // The clock starts when the server first reads, not at accept: in a reconnect
            // storm, connections wait their turn in the accept queue through no fault of
            // theirs.
            this.idle = Some(Box::pin(tokio::time::sleep(timeout)));
        }
        if let Some(idle) = this.idle.as_mut() {
            if this.info.stream_seen.load(Ordering::Relaxed) {
                this.idle = None;
            } else if idle.as_mut().poll(cx).is_ready() {
                this.idle = None;
                count(&this.slot.metrics, "idle_timeout");
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no ADS stream opened in time",
                )));
            }
        }
        match &mut this.transport {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for XdsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.transport {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, data),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.transport {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.transport {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.transport {
            Transport::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.transport {
            Transport::Plain(s) => s.is_write_vectored(),
            Transport::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// Counts a refused or closed connection or stream.
pub fn count(metrics: &Metrics, reason: &'static str) {
    metrics
        .xds_refused
        .get_or_create(&crate::metrics::ReasonLabels { reason })
        .inc();
}

/// The connections accepted on `listener` (TLS when `tls` is given), within `limits`.
pub fn incoming(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<XdsTls>>,
    limits: XdsLimits,
    metrics: Arc<Metrics>,
) -> ReceiverStream<Result<XdsConn, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = tls.map(|tls| tokio_rustls::TlsAcceptor::from(tls.config()));
    let open = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        let mut last_warning: Option<tokio::time::Instant> = None;
        loop {
            // The server dropped its end (shutdown): so is the listener, and its port freed.
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = tx.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of descriptors and the like: pause rather than spin.
                    tracing::warn!(%err, "xDS accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if open.load(Ordering::Relaxed) >= limits.max_connections {
                count(&metrics, "connection_limit");
                if last_warning.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                    last_warning = Some(tokio::time::Instant::now());
                    tracing::warn!(
                        max = limits.max_connections,
                        "xDS connection refused: the operator has as many open connections as --xds-max-connections allows; add replicas or raise it"
                    );
                }
                drop(tcp);
                continue;
            }
            open.fetch_add(1, Ordering::Relaxed);
            metrics.xds_connections.inc();
            let slot = Slot {
                open: open.clone(),
                metrics: metrics.clone(),
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, conns) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let transport = match acceptor {
                    None => Transport::Plain(tcp),
                    Some(acceptor) => {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(tls)) => Transport::Tls(Box::new(tls)),
                            Ok(Err(err)) => {
                                tracing::debug!(%peer, %err, "xDS TLS handshake failed");
                                super::auth::count_failure(&slot.metrics, "tls_handshake");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "xDS TLS handshake timed out");
                                super::auth::count_failure(&slot.metrics, "tls_handshake");
                                return;
                            }
                        }
                    }
                };
                let conn = XdsConn {
                    transport,
                    info: ConnInfo {
                        remote: Some(peer),
                        stream_seen: Arc::new(AtomicBool::new(false)),
                    },
                    idle_timeout: Some(limits.idle_timeout),
                    idle: None,
                    slot,
                };
                let _ = conns.send(Ok(conn)).await;
            });
        }
    });
    ReceiverStream::new(rx)
}
