//! The admin HTTP server: health, readiness, Prometheus metrics, mesh status and debug views.

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
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
    Json(state.mesh_status()).into_response()
}

async fn proxies(State(state): State<Arc<MeshState>>) -> Response {
    Json(state.proxies.list()).into_response()
}

#[derive(Deserialize)]
struct ConfigQuery {
    node: String,
}

#[derive(Serialize)]
struct ServedResource {
    name: String,
    version: String,
    bytes: usize,
}

#[derive(Serialize)]
struct ServedType {
    version: String,
    resources: Vec<ServedResource>,
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
    let types: std::collections::BTreeMap<&str, ServedType> = ResourceType::ALL
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
            (
                t.short(),
                ServedType {
                    version: snapshot.version_string(t),
                    resources,
                },
            )
        })
        .collect();
    Json(serde_json::json!({
        "node": proxy.node,
        "generation": snapshot.generation,
        "proxy": proxy,
        "served": types,
        "ports": state.port_protocols(),
    }))
    .into_response()
}
