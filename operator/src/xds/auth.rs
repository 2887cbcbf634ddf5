//! Who is on the other end of an ADS stream. A proxy presents its pod's projected service
//! account token (audience `weir`) as a bearer token; the operator reviews it with the API
//! server and binds the stream to the pod and service account it names.
//!
//! ```text
//! authorization: Bearer <token> --cache (until the token expires)--> TokenReview
//!   (audiences [weir]) --> user system:serviceaccount:<ns>:<sa>, extra pod-name
//!   --> the pod exists (index, else a GET) --> VerifiedProxy
//! first request's node metadata (NAMESPACE, POD_NAME) must name the same pod
//! ```
//!
//! Every refusal is a gRPC status that says what to fix, counted by reason. The token is
//! never logged.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::Status;
use weir_core::mesh::TOKEN_AUDIENCE;

use crate::mesh_state::MeshState;

/// Reviews are cached at most this long (a token that expires earlier, until it does).
const CACHE_FOR: Duration = Duration::from_secs(300);

/// The pod and service account a stream belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedProxy {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod.
    pub pod: String,
    /// Its service account.
    pub service_account: String,
}

/// Why a proxy is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No bearer token.
    NoToken,
    /// The API server does not accept the token.
    InvalidToken(String),
    /// The token expired.
    Expired,
    /// The token is for another audience.
    WrongAudience,
    /// Not a pod's token (e.g. a long-lived Secret token).
    NotBoundToPod,
    /// The pod it names is gone.
    PodGone(String),
    /// The node metadata names another pod.
    MetadataMismatch(String),
    /// The review could not be made.
    ReviewFailed(String),
}

impl Refusal {
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NoToken => "no_token",
            Refusal::InvalidToken(_) => "invalid_token",
            Refusal::Expired => "expired",
            Refusal::WrongAudience => "wrong_audience",
            Refusal::NotBoundToPod => "not_bound_to_pod",
            Refusal::PodGone(_) => "pod_gone",
            Refusal::MetadataMismatch(_) => "metadata_mismatch",
            Refusal::ReviewFailed(_) => "review_failed",
        }
    }

    /// The gRPC status the proxy gets.
    pub fn status(&self) -> Status {
        match self {
            Refusal::NoToken => Status::unauthenticated(
                "no bearer token: the proxy must send its pod's projected service account token (audience weir) as `authorization: Bearer <token>`; use the injector's bootstrap",
            ),
            Refusal::InvalidToken(why) => Status::unauthenticated(format!(
                "the token is not valid ({why}): send the pod's projected service account token"
            )),
            Refusal::Expired => Status::unauthenticated(
                "the token has expired: the kubelet refreshes the projected token; the proxy reads it again when it reconnects",
            ),
            Refusal::WrongAudience => Status::unauthenticated(
                "the token is for another audience: project it with audience weir",
            ),
            Refusal::NotBoundToPod => Status::permission_denied(
                "the token is not bound to a pod: use the pod's projected service account token, not a Secret's",
            ),
            Refusal::PodGone(pod) => Status::permission_denied(format!(
                "the token's pod {pod} does not exist"
            )),
            Refusal::MetadataMismatch(why) => Status::permission_denied(format!(
                "the node metadata does not match the token: {why}"
            )),
            Refusal::ReviewFailed(why) => Status::unavailable(format!(
                "cannot review the token now ({why}); retry"
            )),
        }
    }
}

/// What a review said of a token.
type Verdict = Result<VerifiedProxy, Refusal>;

/// Reviews tokens with the API server, caching the verdicts.
pub struct TokenReviewer {
    client: kube::Client,
    /// Verdicts by token hash, each until it expires.
    cache: Mutex<HashMap<u64, (Verdict, Instant)>>,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenReviewer")
    }
}

impl TokenReviewer {
    /// A reviewer using `client` (which needs `create` on tokenreviews).
    pub fn new(client: kube::Client) -> TokenReviewer {
        TokenReviewer {
            client,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Who a request's bearer token says the proxy is.
    pub async fn verify(
        &self,
        state: &MeshState,
        authorization: Option<&str>,
    ) -> Result<VerifiedProxy, Refusal> {
        let token = authorization
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(Refusal::NoToken)?;
        let key = {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            token.hash(&mut h);
            h.finish()
        };
        let cached = {
            let mut cache = crate::sync::lock(&self.cache);
            let now = Instant::now();
            cache.retain(|_, (_, until)| *until > now);
            cache.get(&key).map(|(v, _)| v.clone())
        };
        let verdict = match cached {
            Some(v) => v,
            None => {
                let verdict = self.review(token).await;
                // A review that failed for a passing reason is not remembered.
                if !matches!(verdict, Err(Refusal::ReviewFailed(_))) {
                    let until = Instant::now() + token_lifetime(token).min(CACHE_FOR);
                    crate::sync::lock(&self.cache).insert(key, (verdict.clone(), until));
                }
                verdict
            }
        };
        let proxy = verdict?;
        self.pod_exists(state, &proxy).await?;
        Ok(proxy)
    }

    async fn review(&self, token: &str) -> Result<VerifiedProxy, Refusal> {
        let api: kube::Api<TokenReview> = kube::Api::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![TOKEN_AUDIENCE.to_string()]),
            },
            ..Default::default()
        };
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Refusal::ReviewFailed(e.to_string()))?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let error = status.error.unwrap_or_default();
            return Err(if error.contains("expired") {
                Refusal::Expired
            } else if error.contains("audience") {
                Refusal::WrongAudience
            } else if error.contains("invalidated")
                || error.contains("has been deleted")
                || error.contains("not found")
            {
                Refusal::PodGone(String::from("(deleted)"))
            } else {
                Refusal::InvalidToken(error)
            });
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let Some((namespace, service_account)) = username
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
        else {
            return Err(Refusal::InvalidToken(format!(
                "{username} is not a service account"
            )));
        };
        let pod = user
            .extra
            .as_ref()
            .and_then(|e| e.get("authentication.kubernetes.io/pod-name"))
            .and_then(|v| v.first())
            .cloned()
            .ok_or(Refusal::NotBoundToPod)?;
        Ok(VerifiedProxy {
            namespace: namespace.to_string(),
            pod,
            service_account: service_account.to_string(),
        })
    }

    /// The token's pod must still exist: the index knows it, or the API server does.
    async fn pod_exists(&self, state: &MeshState, proxy: &VerifiedProxy) -> Result<(), Refusal> {
        let key = weir_core::ObjectKey::new(proxy.namespace.clone(), proxy.pod.clone());
        if state.pod_service_account(&key).is_some() {
            return Ok(());
        }
        let api: kube::Api<Pod> = kube::Api::namespaced(self.client.clone(), &proxy.namespace);
        match api.get_opt(&proxy.pod).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(Refusal::PodGone(key.to_string())),
            Err(e) => Err(Refusal::ReviewFailed(e.to_string())),
        }
    }
}

/// How long until a JWT's `exp` (read without verifying it: the review did that).
fn token_lifetime(token: &str) -> Duration {
    use base64::Engine;
    let exp = token
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|claims| claims["exp"].as_u64());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Duration::from_secs(exp.map(|e| e.saturating_sub(now)).unwrap_or(0))
}

/// Who a stream is, once known: verified by a token, or (unauthenticated) as it says.
#[derive(Debug, Clone)]
pub enum StreamIdentity {
    /// Verified by the API server.
    Verified(VerifiedProxy),
    /// Authentication is off (local mode, or turned off): the proxy's own word.
    Unverified,
}

/// Counts a refused proxy by reason.
pub fn count_failure(metrics: &crate::metrics::Metrics, reason: &'static str) {
    metrics
        .xds_auth_failures
        .get_or_create(&crate::metrics::ReasonLabels { reason })
        .inc();
}

/// The authenticator of a running control plane, if any.
pub type Authenticator = Option<Arc<TokenReviewer>>;
