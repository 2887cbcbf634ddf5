//! The admin HTTP server: health, readiness, Prometheus metrics, mesh status and debug views.

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::Arc;
use weir_core::views::config::{ConfigView, PortView, ServedResource, ServedType};
use weir_core::views::proxies::ProxyView;
use weir_core::ResourceType;

use crate::mesh_state::MeshState;

/// The admin routes.
pub fn router(state: Arc<MeshState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/debug/proxies", get(proxies))
        .route("/debug/config", get(config))
        .with_state(state)
}

/// Serves the admin routes on `listener` until `shutdown` resolves.
pub async fn serve(
    state: Arc<MeshState>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn readyz(State(state): State<Arc<MeshState>>) -> Response {
    if state.is_synced() {
        "ready\n".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the source has not delivered its initial state yet\n",
        )
            .into_response()
    }
}

async fn metrics(State(state): State<Arc<MeshState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

async fn status(State(state): State<Arc<MeshState>>) -> Response {
    Json(state.mesh_status().view()).into_response()
}

async fn proxies(State(state): State<Arc<MeshState>>) -> Response {
    let proxies: Vec<ProxyView> = state.proxies.list().iter().map(|p| p.view()).collect();
    Json(proxies).into_response()
}

#[derive(Deserialize)]
struct ConfigQuery {
    node: String,
}

/// What the node is served now: per type, every resource with its version and size, and
/// the protocol of every Service port (with the rule that decided it).
async fn config(State(state): State<Arc<MeshState>>, Query(q): Query<ConfigQuery>) -> Response {
    let Some(proxy) = state.proxies.list().into_iter().find(|p| p.node == q.node) else {
        return (
            StatusCode::NOT_FOUND,
            format!(
                "no connected proxy has node id {:?}; see /debug/proxies\n",
                q.node
            ),
        )
            .into_response();
    };
    let snapshot = state.current(proxy.profile);
    let served = ResourceType::ALL
        .into_iter()
        .map(|t| {
            let resources = snapshot
                .of(t)
                .values()
                .map(|r| ServedResource {
                    name: r.name.to_string(),
                    version: r.version_string(),
                    bytes: r.body.value.len(),
                })
                .collect();
            let version = snapshot.version_string(t);
            (t.short().to_string(), ServedType { version, resources })
        })
        .collect();
    let ports = state
        .port_protocols()
        .into_iter()
        .map(|p| PortView {
            service: p.service,
            port: p.port,
            protocol: p.protocol.as_str().to_string(),
            decided_by: p.decided_by.as_str().to_string(),
        })
        .collect();
    Json(ConfigView {
        node: proxy.node.clone(),
        generation: snapshot.generation,
        proxy: proxy.view(),
        served,
        ports,
    })
    .into_response()
}
