//! The admission server: AdmissionReview v1 in at `POST /inject`, the response with a JSON
//! patch out. Every request gets an answer: malformed bodies a 400 that says what is wrong;
//! objects that cannot be injected are allowed unchanged, with a warning that says why.
//! Injection is pure, so dry-run requests need nothing special (the webhook declares
//! `sideEffects: None`).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionReview};
use kube::core::DynamicObject;
use std::sync::Arc;

use crate::inject::{decide, inject, patch, MeshConfig};

/// Routes of the injector.
pub fn router(config: Arc<MeshConfig>) -> Router {
    Router::new()
        .route("/inject", post(review))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(config)
}

async fn review(State(config): State<Arc<MeshConfig>>, body: Bytes) -> Response {
    let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(err) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("the body is not an admission.k8s.io/v1 AdmissionReview: {err}\n"),
            )
                .into_response()
        }
    };
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(r) => r,
        Err(err) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("the AdmissionReview has no usable request: {err}\n"),
            )
                .into_response()
        }
    };
    Json(respond(&config, &request).to_review()).into_response()
}

/// The answer to one admission request: always allowed (injection never blocks a pod),
/// with a patch when the pod is injected and warnings for anything the user should know.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The request's uid.
    pub uid: String,
    /// The JSON patch, when the pod is injected.
    pub patch: Option<json_patch::Patch>,
    /// Shown to the user by kubectl.
    pub warnings: Vec<String>,
}

impl Answer {
    /// The AdmissionReview v1 response. Written here rather than with kube-core's
    /// `AdmissionResponse`, which (in kube 5) serializes the patch as an array of numbers
    /// where the API server expects base64.
    pub fn to_review(&self) -> serde_json::Value {
        use base64::Engine;
        let mut response = serde_json::json!({"uid": self.uid, "allowed": true});
        if let Some(patch) = &self.patch {
            let bytes = serde_json::to_vec(patch).expect("a JSON patch always serializes");
            response["patchType"] = "JSONPatch".into();
            response["patch"] = base64::engine::general_purpose::STANDARD
                .encode(bytes)
                .into();
        }
        if !self.warnings.is_empty() {
            response["warnings"] = self.warnings.clone().into();
        }
        serde_json::json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
    }
}

/// The answer to one admission request.
pub fn respond(config: &MeshConfig, request: &AdmissionRequest<DynamicObject>) -> Answer {
    let mut answer = Answer {
        uid: request.uid.clone(),
        patch: None,
        warnings: Vec::new(),
    };
    let mut allow_with = |warning: String| {
        tracing::warn!(uid = request.uid, "{warning}");
        answer.warnings.push(warning);
        answer.clone()
    };
    if request.kind.kind != "Pod" || !request.kind.group.is_empty() {
        return allow_with(format!(
            "weir injects Pods only; this {} passes unchanged",
            request.kind.kind
        ));
    }
    let Some(object) = &request.object else {
        return allow_with("the request carries no Pod; nothing to inject".into());
    };
    let pod: Pod = match serde_json::to_value(object).and_then(serde_json::from_value) {
        Ok(pod) => pod,
        Err(err) => {
            return allow_with(format!(
                "the object does not read as a Pod ({err}); it passes unchanged"
            ))
        }
    };
    let namespace = request
        .namespace
        .clone()
        .or_else(|| pod.metadata.namespace.clone())
        .unwrap_or_else(|| "default".into());
    // The API server calls this webhook only for candidate pods (namespaceSelector and
    // objectSelector), so namespace labels are not needed here; opt-outs still apply.
    if let Err(skip) = decide(&pod, &namespace, None) {
        tracing::debug!(uid = request.uid, %skip, "not injected");
        return answer;
    }
    let injection = inject(&pod, &namespace, config);
    Answer {
        uid: request.uid.clone(),
        patch: Some(patch(&pod, &injection.pod)),
        warnings: injection.warnings,
    }
}

/// Serves HTTPS on `listener` with the certificate and key in `cert` and `key` (PEM),
/// re-reading them when they change (the operator rotates them before they expire).
pub async fn serve(
    listener: std::net::TcpListener,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    config: Arc<MeshConfig>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(&cert, &key)
        .await
        .with_context(|| {
            format!(
                "loading the serving certificate {} and key {}",
                cert.display(),
                key.display()
            )
        })?;
    tokio::spawn(reload_on_change(tls.clone(), cert, key));
    listener.set_nonblocking(true)?;
    axum_server::from_tcp_rustls(listener, tls)?
        .serve(router(config).into_make_service())
        .await
        .context("serving HTTPS")
}

async fn reload_on_change(
    tls: axum_server::tls_rustls::RustlsConfig,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
) {
    let stamp = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut last = (stamp(&cert), stamp(&key));
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
        let now = (stamp(&cert), stamp(&key));
        if now != last {
            match tls.reload_from_pem_file(&cert, &key).await {
                Ok(()) => tracing::info!("reloaded the serving certificate"),
                Err(err) => {
                    tracing::error!(%err, "cannot reload the serving certificate; keeping the previous one")
                }
            }
            last = now;
        }
    }
}
