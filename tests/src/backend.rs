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
        let (counter, body_name) = (hits.clone(), name.to_string());
        let handler = move |headers: HeaderMap| {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let behavior = behavior.clone();
            let name = body_name.clone();
            async move {
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
            task,
        })
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}
