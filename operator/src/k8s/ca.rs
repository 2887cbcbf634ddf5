//! The mesh CA in a cluster: where it comes from, and where its roots go.
//!
//! ```text
//! MeshIdentity mesh spec.ca --> which Secret: Generated -> <operator ns>/weir-ca,
//!                                             Provided  -> spec.ca.secretRef
//!   watch that Secret (every replica) --parse--> Authority::set_ca (a change rotates)
//!                                    \--missing, Generated, leading--> generate, create once
//!                                    \--missing or unusable--> Authority::set_problem
//! Authority::roots + meshed namespaces --leader, SSA--> ConfigMap weir-root-ca (root-cert.pem)
//! Authority (issuing CA)               --leader--> Secret weir-webhook-tls + caBundle of
//!                                                  MutatingWebhookConfiguration weir-sidecar-injector
//! ```
//!
//! Creation is race-safe: `create` fails with 409 for all but one replica, and every replica
//! takes the CA from the watch, never from what it generated itself. Roots that leave the
//! bundle linger in the published copies for [`ROOT_LINGER`], so that files the kubelet
//! refreshes late still verify the certificates peers present.

use futures::StreamExt;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::ByteString;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;
use weir_api::CaSourceType;
use weir_core::identity::{pem_blocks, CertInfo, CertificateAuthority};
use weir_core::mesh::{
    CA_LINKS_CONFIGMAP, CA_SECRET, ROOT_CA_CONFIGMAP, ROOT_CERT_KEY, WEBHOOK_CONFIGURATION,
    WEBHOOK_TLS_SECRET,
};
use weir_core::status::{CaProblem, CaReadyReason};

use super::status::FIELD_MANAGER;
use crate::mesh_state::MeshState;

/// The names the webhook is called by (its Service).
pub const WEBHOOK_NAMES: [&str; 3] = [
    "weir-webhook.weir-system.svc",
    "weir-webhook.weir-system.svc.cluster.local",
    "weir-webhook.weir-system",
];
/// Lifetime of the webhook's certificate; it is renewed at half of it.
pub const WEBHOOK_CERT_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// A root that left the bundle stays in published copies this long.
pub const ROOT_LINGER: Duration = Duration::from_secs(600);
/// Published copies are rewritten this often even when unchanged (someone may have
/// deleted or edited one).
const RESYNC: Duration = Duration::from_secs(300);

/// Feeds the Authority from the CA Secret the MeshIdentity names, creating the generated
/// one when it is missing and this replica leads. Runs until the state closes.
pub async fn run_source(
    client: Client,
    state: Arc<MeshState>,
    namespace: String,
    mut leading: watch::Receiver<bool>,
) {
    let links: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    if let Ok(Some(stored)) = links.get_opt(CA_LINKS_CONFIGMAP).await {
        if let Some(pem) = stored.data.as_ref().and_then(|d| d.get(LINKS_KEY)) {
            state.identity.add_links(pem);
        }
    }
    let mut configs = state.identity_configs();
    loop {
        let config = configs.borrow_and_update().clone();
        let source = match (config.ca.source_type, &config.ca.secret_ref) {
            (CaSourceType::Generated, _) => SecretSource {
                namespace: namespace.clone(),
                name: CA_SECRET.into(),
                generate: Some(config.trust_domain.clone()),
            },
            (CaSourceType::Provided, Some(r)) => SecretSource {
                namespace: r.namespace.clone(),
                name: r.name.clone(),
                generate: None,
            },
            (CaSourceType::Provided, None) => {
                state.identity.set_problem(CaProblem {
                    reason: CaReadyReason::InvalidCa,
                    message: "MeshIdentity mesh: spec.ca.type is Provided but spec.ca.secretRef is missing: name the Secret (tls.crt, tls.key, ca.crt) that holds the CA".into(),
                });
                if configs.changed().await.is_err() {
                    return;
                }
                continue;
            }
        };
        tracing::info!(
            namespace = source.namespace,
            name = source.name,
            "mesh CA from Secret"
        );
        tokio::select! {
            _ = source.follow(&client, &state, &links, &mut leading) => return,
            changed = ca_source_changed(&mut configs, &config) => if changed.is_err() { return },
        }
    }
}

/// Resolves when the CA source (not the other identity settings) changes.
async fn ca_source_changed(
    configs: &mut watch::Receiver<weir_core::index::IdentityConfig>,
    current: &weir_core::index::IdentityConfig,
) -> Result<(), watch::error::RecvError> {
    loop {
        configs.changed().await?;
        if configs.borrow().ca != current.ca {
            return Ok(());
        }
    }
}

struct SecretSource {
    namespace: String,
    name: String,
    /// Generate the CA for this trust domain when the Secret is missing.
    generate: Option<String>,
}

impl SecretSource {
    fn display(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Watches the Secret, installing each version's CA, until the watch ends.
    async fn follow(
        &self,
        client: &Client,
        state: &MeshState,
        links: &Api<ConfigMap>,
        leading: &mut watch::Receiver<bool>,
    ) {
        let api: Api<Secret> = Api::namespaced(client.clone(), &self.namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.name));
        let mut events =
            std::pin::pin!(watcher(api.clone(), config).backoff(super::watch::backoff()));
        let mut current: Option<Secret> = None;
        let mut listing: Option<Option<Secret>> = None;
        let mut listed = false;
        // What the links ConfigMap holds, as far as this replica knows.
        let mut stored = String::new();
        loop {
            tokio::select! {
                event = events.next() => match event {
                    None => return,
                    Some(Err(err)) => {
                        tracing::warn!(secret = self.display(), %err, "CA Secret watch failed; retrying");
                        if is_forbidden(&err) {
                            state.identity.set_problem(CaProblem {
                                reason: CaReadyReason::CaNotFound,
                                message: format!(
                                    "the operator may not read the Secret {}: grant ServiceAccount weir-system/weir-operator get, list and watch on it (a Role and RoleBinding in {})",
                                    self.display(), self.namespace
                                ),
                            });
                        }
                        continue;
                    }
                    Some(Ok(event)) => match event {
                        watcher::Event::Init => listing = Some(None),
                        watcher::Event::InitApply(s) => listing = Some(Some(s)),
                        watcher::Event::InitDone => {
                            current = listing.take().flatten();
                            listed = true;
                        }
                        watcher::Event::Apply(s) => current = Some(s),
                        watcher::Event::Delete(_) => current = None,
                    },
                },
                changed = leading.changed() => if changed.is_err() { return },
            }
            if listed {
                let leads = *leading.borrow_and_update();
                self.settle(&api, state, current.as_ref(), leads).await;
                if leads {
                    store_links(links, &state.identity.links().concat(), &mut stored).await;
                }
            }
        }
    }

    /// Acts on what the Secret is now.
    async fn settle(
        &self,
        api: &Api<Secret>,
        state: &MeshState,
        secret: Option<&Secret>,
        leading: bool,
    ) {
        match secret {
            Some(secret) => match ca_from_secret(secret) {
                Ok(ca) => state.identity.set_ca(ca),
                Err(message) => state.identity.set_problem(CaProblem {
                    reason: CaReadyReason::InvalidCa,
                    message: format!("Secret {}: {message}", self.display()),
                }),
            },
            None => match &self.generate {
                Some(trust_domain) if leading => self.create(api, state, trust_domain).await,
                Some(_) => state.identity.set_problem(CaProblem {
                    reason: CaReadyReason::CaNotFound,
                    message: format!("waiting for the leader to create the mesh CA in Secret {}", self.display()),
                }),
                None => state.identity.set_problem(CaProblem {
                    reason: CaReadyReason::CaNotFound,
                    message: format!(
                        "the Secret {} named by MeshIdentity mesh spec.ca.secretRef does not exist: create it (tls.crt, tls.key, ca.crt; e.g. a cert-manager Certificate with isCA: true)",
                        self.display()
                    ),
                }),
            },
        }
    }

    /// Generates a root and creates the Secret; a replica that loses the race (409) takes
    /// the winner's from the watch.
    async fn create(&self, api: &Api<Secret>, state: &MeshState, trust_domain: &str) {
        let ca = match CertificateAuthority::generate(trust_domain, SystemTime::now()) {
            Ok(ca) => ca,
            Err(err) => {
                state.identity.set_problem(CaProblem {
                    reason: CaReadyReason::InvalidCa,
                    message: format!("cannot generate the mesh CA: {err}"),
                });
                return;
            }
        };
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(weir_labels("ca")),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(tls_data(&ca.cert_pem, ca.key().pem(), &ca.roots_pem)),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => tracing::info!(secret = self.display(), "mesh CA generated and stored"),
            Err(kube::Error::Api(e)) if e.code == 409 => {
                tracing::info!(
                    secret = self.display(),
                    "mesh CA created by another replica"
                );
            }
            Err(err) => {
                tracing::warn!(secret = self.display(), %err, "cannot store the mesh CA; retrying");
                state.identity.set_problem(CaProblem {
                    reason: CaReadyReason::CaNotFound,
                    message: format!("cannot create the Secret {}: {err}", self.display()),
                });
            }
        }
    }
}

/// The key of the links in [`CA_LINKS_CONFIGMAP`].
const LINKS_KEY: &str = "links.pem";

/// Keeps the links where a restarted replica finds them (leader only).
async fn store_links(api: &Api<ConfigMap>, links: &str, stored: &mut String) {
    if links.is_empty() || links == stored {
        return;
    }
    let object = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": CA_LINKS_CONFIGMAP, "labels": weir_labels("ca")},
        "data": {LINKS_KEY: links},
    });
    match api
        .patch(
            CA_LINKS_CONFIGMAP,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&object),
        )
        .await
    {
        Ok(_) => *stored = links.to_string(),
        Err(err) => tracing::warn!(%err, "cannot keep the CA links; retrying on the next change"),
    }
}

fn is_forbidden(err: &watcher::Error) -> bool {
    matches!(err, watcher::Error::InitialListFailed(kube::Error::Api(e))
        | watcher::Error::WatchStartFailed(kube::Error::Api(e))
        | watcher::Error::WatchFailed(kube::Error::Api(e)) if e.code == 403)
}

fn weir_labels(component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "weir".into()),
        ("app.kubernetes.io/component".into(), component.into()),
    ])
}

fn tls_data(cert: &str, key: &str, ca: &str) -> BTreeMap<String, ByteString> {
    BTreeMap::from([
        ("tls.crt".into(), ByteString(cert.as_bytes().to_vec())),
        ("tls.key".into(), ByteString(key.as_bytes().to_vec())),
        ("ca.crt".into(), ByteString(ca.as_bytes().to_vec())),
    ])
}

/// The CA in a Secret of cert-manager's shape; the error says which key is wrong.
pub fn ca_from_secret(secret: &Secret) -> Result<CertificateAuthority, String> {
    let data = secret.data.as_ref();
    let text = |key: &str| -> Result<Option<String>, String> {
        match data.and_then(|d| d.get(key)) {
            None => Ok(None),
            Some(bytes) => String::from_utf8(bytes.0.clone())
                .map(Some)
                .map_err(|_| format!("{key} is not PEM text")),
        }
    };
    let cert = text("tls.crt")?.ok_or("it has no tls.crt: give the CA certificate (PEM)")?;
    let key = text("tls.key")?.ok_or("it has no tls.key: give the CA's private key (PEM)")?;
    let root = text("ca.crt")?;
    CertificateAuthority::from_pem(&cert, &key, root.as_deref()).map_err(|e| e.to_string())
}

/// Roots as published: the bundle in force plus roots that left it less than
/// [`ROOT_LINGER`] ago.
#[derive(Default)]
struct LingeringRoots {
    seen: Vec<(String, Instant)>,
}

impl LingeringRoots {
    fn update(&mut self, bundle: &str) -> String {
        self.update_at(bundle, Instant::now())
    }

    fn update_at(&mut self, bundle: &str, now: Instant) -> String {
        for root in pem_blocks(bundle, "CERTIFICATE") {
            match self.seen.iter_mut().find(|(r, _)| *r == root) {
                Some(entry) => entry.1 = now,
                None => self.seen.push((root, now)),
            }
        }
        let current: Vec<String> = pem_blocks(bundle, "CERTIFICATE");
        self.seen
            .retain(|(r, at)| current.contains(r) || now.duration_since(*at) < ROOT_LINGER);
        self.seen.iter().map(|(r, _)| r.as_str()).collect()
    }
}

/// While leading: the roots in every meshed namespace's ConfigMap, the webhook's serving
/// certificate and its caBundle. Runs until the state closes.
pub async fn run_publisher(
    client: Client,
    state: Arc<MeshState>,
    namespace: String,
    manage_webhook: bool,
    mut leading: watch::Receiver<bool>,
) {
    let mut roots = state.identity.roots();
    let mut applied = state.applied();
    let mut lingering = LingeringRoots::default();
    let mut published: HashMap<String, String> = HashMap::new();
    let mut webhook = WebhookCert::default();
    let mut last_resync = Instant::now();
    loop {
        tokio::select! {
            changed = leading.changed() => {
                if changed.is_err() { return }
                published.clear();
                webhook = WebhookCert::default();
            }
            changed = roots.changed() => if changed.is_err() { return },
            changed = applied.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
        let bundle = lingering.update(&roots.borrow_and_update().clone());
        let leads = *leading.borrow_and_update();
        if !leads || bundle.is_empty() {
            continue;
        }
        if last_resync.elapsed() >= RESYNC {
            published.clear();
            webhook = WebhookCert::default();
            last_resync = Instant::now();
        }
        for ns in state.meshed_namespaces() {
            if published.get(&ns) == Some(&bundle) {
                continue;
            }
            match publish_roots(&client, &ns, &bundle).await {
                Ok(()) => {
                    published.insert(ns, bundle.clone());
                }
                Err(err) => {
                    tracing::warn!(namespace = ns, %err, "cannot publish the mesh roots; retrying")
                }
            }
        }
        if manage_webhook {
            webhook
                .reconcile(&client, &state, &namespace, &bundle)
                .await;
        }
    }
}

async fn publish_roots(client: &Client, namespace: &str, bundle: &str) -> Result<(), kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let object = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": ROOT_CA_CONFIGMAP, "labels": weir_labels("root-ca")},
        "data": {ROOT_CERT_KEY: bundle},
    });
    api.patch(
        ROOT_CA_CONFIGMAP,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&object),
    )
    .await?;
    tracing::debug!(namespace, "mesh roots published");
    Ok(())
}

/// What the leader last wrote for the webhook.
#[derive(Default)]
struct WebhookCert {
    /// The certificate in the Secret and when to renew it.
    renew_at: Option<SystemTime>,
    /// The roots it was issued under.
    issued_under: String,
    /// The caBundle last written.
    ca_bundle: String,
}

impl WebhookCert {
    async fn reconcile(
        &mut self,
        client: &Client,
        state: &MeshState,
        namespace: &str,
        bundle: &str,
    ) {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let issuer_roots = state
            .identity
            .issuing_ca()
            .map(|ca| ca.roots_pem.clone())
            .unwrap_or_default();
        if self.renew_at.is_none() {
            // A new term: trust what the Secret holds if it is still good.
            if let Ok(Some(secret)) = secrets.get_opt(WEBHOOK_TLS_SECRET).await {
                self.adopt(&secret, &issuer_roots);
            }
        }
        let due = self.renew_at.is_none_or(|at| at <= SystemTime::now())
            || self.issued_under != issuer_roots;
        if due {
            let names: Vec<String> = WEBHOOK_NAMES.iter().map(|n| n.to_string()).collect();
            let Some(cert) = state.identity.issue_server(&names, WEBHOOK_CERT_TTL) else {
                return;
            };
            let object = serde_json::json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "kubernetes.io/tls",
                "metadata": {"name": WEBHOOK_TLS_SECRET, "labels": weir_labels("webhook")},
                "data": tls_data(&cert.chain_pem, cert.key.pem(), &issuer_roots),
            });
            match secrets
                .patch(
                    WEBHOOK_TLS_SECRET,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&object),
                )
                .await
            {
                Ok(_) => {
                    tracing::info!(
                        secret = WEBHOOK_TLS_SECRET,
                        "webhook serving certificate issued"
                    );
                    let life = cert
                        .not_after
                        .duration_since(SystemTime::now())
                        .unwrap_or_default();
                    self.renew_at = Some(SystemTime::now() + life / 2);
                    self.issued_under = issuer_roots;
                }
                Err(err) => {
                    tracing::warn!(%err, "cannot write the webhook's serving certificate; retrying");
                    return;
                }
            }
        }
        if self.ca_bundle != bundle {
            match patch_ca_bundle(client, bundle).await {
                Ok(()) => self.ca_bundle = bundle.to_string(),
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    tracing::debug!("no MutatingWebhookConfiguration {WEBHOOK_CONFIGURATION} yet");
                }
                Err(err) => tracing::warn!(%err, "cannot update the webhook's caBundle; retrying"),
            }
        }
    }

    /// Takes over a certificate a previous leader wrote, if it is current.
    fn adopt(&mut self, secret: &Secret, issuer_roots: &str) {
        let data = secret.data.as_ref();
        let get = |k: &str| {
            data.and_then(|d| d.get(k))
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        };
        let (Some(cert), Some(ca)) = (get("tls.crt"), get("ca.crt")) else {
            return;
        };
        let Some(info) = CertInfo::parse(&cert) else {
            return;
        };
        if ca != issuer_roots {
            return;
        }
        let left = info
            .not_after
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        if left > WEBHOOK_CERT_TTL / 2 {
            self.renew_at = Some(info.not_after - WEBHOOK_CERT_TTL / 2);
            self.issued_under = ca;
        }
    }
}

/// Sets the caBundle of every webhook of the injector's configuration.
async fn patch_ca_bundle(client: &Client, bundle: &str) -> Result<(), kube::Error> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let config = api.get(WEBHOOK_CONFIGURATION).await?;
    let webhooks: Vec<serde_json::Value> = config
        .webhooks
        .unwrap_or_default()
        .iter()
        .map(|w| {
            serde_json::json!({
                "name": w.name,
                "clientConfig": {"caBundle": ByteString(bundle.as_bytes().to_vec())},
            })
        })
        .collect();
    let patch = serde_json::json!({"webhooks": webhooks});
    api.patch(
        WEBHOOK_CONFIGURATION,
        &PatchParams::default(),
        &Patch::Strategic(&patch),
    )
    .await?;
    tracing::info!("webhook caBundle updated");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(name: &str) -> String {
        format!("-----BEGIN CERTIFICATE-----\n{name}\n-----END CERTIFICATE-----\n")
    }

    #[test]
    fn a_root_that_leaves_the_bundle_lingers_then_goes() {
        let mut published = LingeringRoots::default();
        let start = Instant::now();
        assert_eq!(published.update_at(&root("old"), start), root("old"));
        let both = format!("{}{}", root("old"), root("new"));
        assert_eq!(published.update_at(&both, start), both);
        // Rotation done: only the new root is in force, the old one lingers...
        let later = start + ROOT_LINGER / 2;
        assert_eq!(published.update_at(&root("new"), later), both);
        // ...until ROOT_LINGER after it was last in force.
        assert_eq!(
            published.update_at(&root("new"), start + ROOT_LINGER),
            root("new")
        );
    }

    fn secret(keys: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                keys.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn a_ca_secret_is_read_in_cert_managers_shape_and_errors_name_the_key() {
        let ca = CertificateAuthority::generate("cluster.local", SystemTime::now()).unwrap();
        let good = secret(&[
            ("tls.crt", &ca.cert_pem),
            ("tls.key", ca.key().pem()),
            ("ca.crt", &ca.roots_pem),
        ]);
        assert_eq!(ca_from_secret(&good).unwrap().cert_pem, ca.cert_pem);
        let no_key = secret(&[("tls.crt", &ca.cert_pem)]);
        assert!(ca_from_secret(&no_key).unwrap_err().contains("tls.key"));
        let other = CertificateAuthority::generate("cluster.local", SystemTime::now()).unwrap();
        let mismatched = secret(&[("tls.crt", &ca.cert_pem), ("tls.key", other.key().pem())]);
        let err = ca_from_secret(&mismatched).unwrap_err();
        assert!(err.contains("does not belong"), "{err}");
    }
}
