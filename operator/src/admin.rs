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
use crate::xds::proxies::ProxyRecord;
use base64::Engine;

/// A Secret's encoding with the private key of its certificate removed (what the debug
/// views may show: private keys go to the proxy that owns them and nowhere else). What
/// does not decode is not shown at all.
fn without_private_key(encoded: &[u8]) -> Vec<u8> {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{secret, Secret};
    use prost::Message;
    let Ok(mut secret) = Secret::decode(encoded) else {
        return Vec::new();
    };
    if let Some(secret::Type::TlsCertificate(cert)) = &mut secret.r#type {
        cert.private_key = None;
        cert.private_key_provider = None;
        cert.pkcs12 = None;
        cert.password = None;
    }
    secret.encode_to_vec()
}

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
    let proxies: Vec<ProxyView> = state
        .proxies
        .list()
        .iter()
        .map(|p| proxy_view(&state, p))
        .collect();
    Json(proxies).into_response()
}

/// A proxy's record with what only the mesh state knows: the versions its profile is
/// served now (a proxy that ACKed an older one is stale) and its certificate's expiry.
fn proxy_view(state: &MeshState, record: &ProxyRecord) -> ProxyView {
    let mut view = record.view();
    let snapshot = state.current(record.profile);
    let secrets = state
        .identity
        .served_secrets(&record.namespace, &record.service_account);
    for (short, type_state) in &mut view.types {
        let Some(t) = ResourceType::ALL.into_iter().find(|t| t.short() == short) else {
            continue;
        };
        let serving = record.serving.as_ref().map(|types| &types[t]);
        type_state.latest_version = match (t, &secrets, serving) {
            (ResourceType::Secret, Some((s, _)), _) => Some(format!("{:016x}", s.version)),
            (ResourceType::Secret, None, _) => None,
            // What the stream serves (its workload's listeners, its scope's clusters).
            (_, _, Some(served)) => Some(served.version_string()),
            _ => Some(snapshot.version_string(t)),
        };
    }
    view.certificate_expires_at = secrets.and_then(|(_, expiry)| {
        expiry?
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs())
    });
    view
}

#[derive(Deserialize)]
struct ConfigQuery {
    node: String,
    /// Include each resource's encoded body.
    #[serde(default)]
    bodies: bool,
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
    let secrets = state
        .identity
        .served_secrets(&proxy.namespace, &proxy.service_account)
        .map(|(s, _)| s);
    let served = ResourceType::ALL
        .into_iter()
        .map(|t| {
            // Secrets are per workload identity, not in the profile's snapshot.
            // What the stream serves: its workload's listeners and route tables, its
            // scope's clusters and virtual hosts.
            let serving = proxy.serving.as_ref().map(|types| &types[t]);
            let (version, map) = match (t, &secrets, serving) {
                (ResourceType::Secret, Some(s), _) => (format!("{:016x}", s.version), &s.resources),
                (_, _, Some(served)) => (served.version_string(), &served.resources),
                _ => (snapshot.version_string(t), snapshot.of(t)),
            };
            let resources = map
                .values()
                .map(|r| ServedResource {
                    name: r.name.to_string(),
                    version: r.version_string(),
                    bytes: r.body.value.len(),
                    body: q.bodies.then(|| {
                        let bytes = if t == ResourceType::Secret {
                            without_private_key(&r.body.value)
                        } else {
                            r.body.value.clone()
                        };
                        base64::engine::general_purpose::STANDARD.encode(bytes)
                    }),
                })
                .collect();
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
        proxy: proxy_view(&state, &proxy),
        served,
        ports,
    })
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{data_source::Specifier, DataSource};
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        secret, Secret, TlsCertificate,
    };
    use prost::Message;

    #[test]
    fn secrets_leave_the_operator_without_their_key() {
        let inline = |text: &str| DataSource {
            specifier: Some(Specifier::InlineString(text.into())),
            ..Default::default()
        };
        let served = Secret {
            name: "workload".into(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: Some(inline("CERTIFICATE")),
                private_key: Some(inline("PRIVATE KEY")),
                ..Default::default()
            })),
        };
        let shown =
            Secret::decode(without_private_key(&served.encode_to_vec()).as_slice()).unwrap();
        let Some(secret::Type::TlsCertificate(cert)) = shown.r#type else {
            panic!("{shown:?}");
        };
        assert_eq!(cert.certificate_chain, Some(inline("CERTIFICATE")));
        assert_eq!(cert.private_key, None);
        assert!(without_private_key(b"not a secret").is_empty());
    }
}
