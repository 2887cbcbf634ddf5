//! HTTP backends that answer with their own name, standing in for a Service's pods.

use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How a backend behaves.
#[derive(Debug, Clone, Default)]
pub struct Behavior {
    /// Wait this long before answering.
    pub delay: Option<Duration>,
    /// Answer 503 to this many requests first.
    pub fail_first: usize,
}

/// An HTTP backend that answers every request with its name (and the request's
/// `x-weir-test` header, if any, on a second line).
#[derive(Debug)]
pub struct Backend {
    /// Its name (the response body).
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Requests received.
    pub hits: Arc<AtomicUsize>,
    /// The most requests it was answering at once.
    pub peak: Arc<AtomicUsize>,
    /// Requests it is answering now.
    pub in_flight: Arc<AtomicUsize>,
    /// The Host (`:authority`) of the last request.
    pub last_host: Arc<std::sync::Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    /// Starts a backend on 127.0.0.1 with an OS-chosen port.
    pub async fn start(name: &str, behavior: Behavior) -> Result<Backend> {
        Self::start_on(name, "127.0.0.1:0".parse()?, behavior).await
    }

    /// Starts a backend on a given address (any 127.0.0.0/8 address works on Linux, so
    /// several backends can share a port, as pods of one EndpointSlice do).
    pub async fn start_on(name: &str, addr: SocketAddr, behavior: Behavior) -> Result<Backend> {
        use axum::http::{HeaderMap, StatusCode};
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let addr = listener.local_addr()?;
        let hits = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let last_host = Arc::new(std::sync::Mutex::new(String::new()));
        let (counter, body_name) = (hits.clone(), name.to_string());
        let (peak_seen, host_seen) = (peak.clone(), last_host.clone());
        let answering = in_flight.clone();
        let handler = move |headers: HeaderMap, uri: axum::http::Uri| {
            let in_flight = answering.clone();
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            peak_seen.fetch_max(now, Ordering::SeqCst);
            let host = headers
                .get("host")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .or_else(|| uri.authority().map(|a| a.to_string()))
                .unwrap_or_default();
            *host_seen.lock().expect("host lock") = host;
            let behavior = behavior.clone();
            let name = body_name.clone();
            let in_flight = in_flight.clone();
            async move {
                // Counted out when the answer is made (or the request is dropped).
                struct Leaving(Arc<AtomicUsize>);
                impl Drop for Leaving {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                let _leaving = Leaving(in_flight);
                if let Some(d) = behavior.delay {
                    tokio::time::sleep(d).await;
                }
                if n < behavior.fail_first {
                    return (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("{name} failing on purpose"),
                    );
                }
                let echo = headers
                    .get("x-weir-test")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                (StatusCode::OK, format!("{name}\n{echo}"))
            }
        };
        let app = axum::Router::new().fallback(handler);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Backend {
            name: name.to_string(),
            addr,
            hits,
            peak,
            in_flight,
            last_host,
            task,
        })
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}
