//! The mesh identity against a real kube-apiserver (`weir_tests::kube`), with the operator
//! authenticated as the `weir-operator` ServiceAccount of config/ (the shipped RBAC is
//! enforced):
//!
//! - the generated CA: one Secret however many replicas start at once, the same CA after a
//!   restart, its root published in meshed namespaces and in the webhook's caBundle with
//!   a serving certificate for the webhook; a Provided CA taken over by rotation; a missing
//!   one reported (CAReady=False and a Warning Event) while the CA in force keeps issuing;
//! - proxies prove their pod with a TokenRequest token: a real Envoy over TLS is accepted
//!   and served its own service account's certificate; no token, another audience, an
//!   expired token, a token not bound to a pod, a deleted pod's token and node metadata
//!   naming another pod are each refused with their reason, and counted.
//!
//! One operator set at a time (they share the Lease).

use anyhow::{Context, Result};
use base64::Engine;
use serde_json::{json, Value};
use std::time::{Duration, SystemTime};
use weir_core::identity::{CertInfo, CertificateAuthority};
use weir_core::mesh::{
    CA_SECRET, DEFAULT_TRUST_DOMAIN, INJECT_KEY, MESH_NAMESPACE, ROOT_CA_CONFIGMAP, ROOT_CERT_KEY,
    WEBHOOK_CONFIGURATION, WEBHOOK_TLS_SECRET,
};
use weir_operator::{ControlPlane, Options};
use weir_tests::kube::{
    can_run, client_from, installed, loopback_options, operator_slot, start_operator_on,
    start_pod_envoy, Cluster,
};
use weir_tests::xds_client;

/// The operator in this process as ServiceAccount weir-system/weir-operator: proxies
/// authenticated, xDS over TLS for 127.0.0.1, the webhook's certificate managed, 1 s
/// rotation steps.
async fn start_operator(cluster: &Cluster, identity: &str) -> Result<ControlPlane> {
    let token = cluster.token(MESH_NAMESPACE, "weir-operator", None)?;
    let kubeconfig =
        cluster.token_kubeconfig(&format!("{identity}-{}", std::process::id()), &token, None)?;
    let plane_options = Options {
        xds_names: vec!["127.0.0.1".into()],
        authenticate: true,
        manage_webhook_cert: true,
        rotation_grace: Duration::from_secs(1),
        ..loopback_options()
    };
    start_operator_on(client_from(&kubeconfig).await?, identity, plane_options).await
}

/// A key of a Secret or ConfigMap, decoded.
fn data(cluster: &Cluster, kind: &str, ns: &str, name: &str, key: &str) -> Option<String> {
    let object = cluster.kubectl_json(&["get", kind, name, "-n", ns]).ok()?;
    let value = object["data"][key].as_str()?;
    if kind == "secret" {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(value)
            .ok()?;
        String::from_utf8(bytes).ok()
    } else {
        Some(value.to_string())
    }
}

/// The issuing CA's certificate of a running plane, once it has one.
fn issuing(plane: &ControlPlane) -> Option<String> {
    plane
        .state
        .identity
        .issuing_ca()
        .map(|ca| ca.cert_pem.clone())
}

async fn poll<T>(cluster: &Cluster, what: &str, mut check: impl FnMut() -> Option<T>) -> Result<T> {
    let end = std::time::Instant::now() + weir_tests::DEADLINE;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if std::time::Instant::now() > end {
            anyhow::bail!("timed out waiting for {what}\n{}", cluster.log_tails());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The MeshStatus condition CAReady.
fn ca_ready(cluster: &Cluster) -> Option<Value> {
    let status = cluster.kubectl_json(&["get", "meshstatus", "mesh"]).ok()?;
    status["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "CAReady")
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_ca_is_created_once_shared_published_and_replaced() -> Result<()> {
    if !can_run("the_mesh_ca_is_created_once_shared_published_and_replaced") {
        return Ok(());
    }
    let cluster = installed();
    let _slot = operator_slot().await;
    let _ = cluster.kubectl(&[
        "delete",
        "secret",
        CA_SECRET,
        "-n",
        MESH_NAMESPACE,
        "--ignore-not-found",
    ]);
    let _ = cluster.kubectl(&["delete", "meshidentity", "mesh", "--ignore-not-found"]);

    // Two replicas start at once: one Secret, and both issue from it.
    let (a, b) = tokio::join!(
        start_operator(cluster, "weir-ca-a"),
        start_operator(cluster, "weir-ca-b")
    );
    let (a, b) = (a?, b?);
    let secret_cert = poll(cluster, "the CA Secret", || {
        data(cluster, "secret", MESH_NAMESPACE, CA_SECRET, "tls.crt")
    })
    .await?;
    let secret = cluster.kubectl_json(&["get", "secret", CA_SECRET, "-n", MESH_NAMESPACE])?;
    assert_eq!(secret["type"], "kubernetes.io/tls");
    let root = data(cluster, "secret", MESH_NAMESPACE, CA_SECRET, "ca.crt").context("ca.crt")?;
    assert_eq!(root, secret_cert, "a generated CA is its own root");
    assert!(CertInfo::parse(&secret_cert).context("parses")?.is_ca);
    poll(
        cluster,
        "both replicas issuing from the Secret's CA",
        || {
            (issuing(&a).as_deref() == Some(&secret_cert)
                && issuing(&b).as_deref() == Some(&secret_cert))
            .then_some(())
        },
    )
    .await?;
    let uid = secret["metadata"]["uid"].clone();
    a.stop().await;
    b.stop().await;

    // A restart issues from the same CA; the Secret is the same object.
    let c = start_operator(cluster, "weir-ca-c").await?;
    let result = async {
        poll(cluster, "the restarted operator on the same CA", || {
            (issuing(&c).as_deref() == Some(&secret_cert)).then_some(())
        })
        .await?;
        let again = cluster.kubectl_json(&["get", "secret", CA_SECRET, "-n", MESH_NAMESPACE])?;
        assert_eq!(again["metadata"]["uid"], uid, "created once, never replaced");

        // Its root reaches meshed namespaces, the webhook's caBundle, and the webhook gets a
        // serving certificate from it.
        cluster.apply(&json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": "ca-meshed", "labels": {INJECT_KEY: "enabled"}}}),
        )?;
        poll(cluster, "weir-root-ca in the meshed namespace", || {
            (data(cluster, "configmap", "ca-meshed", ROOT_CA_CONFIGMAP, ROOT_CERT_KEY)? == root)
                .then_some(())
        })
        .await?;
        cluster.kubectl(&[
            "apply",
            "-f",
            &weir_tests::workspace_root()
                .join("config/webhook/mutatingwebhookconfiguration.yaml")
                .to_string_lossy(),
        ])?;
        poll(cluster, "the webhook's caBundle", || {
            let config =
                cluster.kubectl_json(&["get", "mutatingwebhookconfiguration", WEBHOOK_CONFIGURATION]).ok()?;
            let hooks = config["webhooks"].as_array()?;
            hooks
                .iter()
                .all(|h| {
                    h["clientConfig"]["caBundle"].as_str().and_then(|b| {
                        base64::engine::general_purpose::STANDARD.decode(b).ok()
                    }) == Some(root.clone().into_bytes())
                })
                .then_some(())
        })
        .await?;
        let webhook_cert = poll(cluster, "the webhook's serving certificate", || {
            data(cluster, "secret", MESH_NAMESPACE, WEBHOOK_TLS_SECRET, "tls.crt")
        })
        .await?;
        verify_server(&webhook_cert, &root, "weir-webhook.weir-system.svc")?;
        let ready = poll(cluster, "CAReady", || ca_ready(cluster)).await?;
        assert_eq!(ready["status"], "True", "{ready}");
        assert_eq!(ready["reason"], "Issuing", "{ready}");

        // A Provided CA (cert-manager's shape, in the Secret the Role names) takes over by
        // rotation: the new root reaches the namespaces, and the new CA issues.
        let provided = CertificateAuthority::generate(DEFAULT_TRUST_DOMAIN, SystemTime::now())?;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        cluster.apply(&json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                "metadata": {"name": "mesh-ca", "namespace": MESH_NAMESPACE},
                "data": {"tls.crt": b64(&provided.cert_pem), "tls.key": b64(provided.key().pem()),
                    "ca.crt": b64(&provided.roots_pem)}}),
        )?;
        let mesh_identity = |secret: &str| {
            json!({"apiVersion": "weir.dev/v1alpha1", "kind": "MeshIdentity", "metadata": {"name": "mesh"},
                "spec": {"ca": {"type": "Provided", "secretRef": {"name": secret, "namespace": MESH_NAMESPACE}}}})
        };
        cluster.apply(&mesh_identity("mesh-ca"))?;
        poll(cluster, "the Provided CA issuing", || {
            (issuing(&c).as_deref() == Some(&provided.cert_pem)).then_some(())
        })
        .await?;
        // (The old root stays beside it for a while: kubelets refresh mounted files late.)
        poll(cluster, "the Provided root in the meshed namespace", || {
            data(cluster, "configmap", "ca-meshed", ROOT_CA_CONFIGMAP, ROOT_CERT_KEY)?
                .contains(provided.roots_pem.trim())
                .then_some(())
        })
        .await?;

        // A Provided Secret that does not exist: reported, and the CA in force keeps issuing.
        cluster.apply(&mesh_identity("absent-ca"))?;
        let problem = poll(cluster, "CAReady=False", || {
            ca_ready(cluster).filter(|c| c["status"] == "False")
        })
        .await?;
        assert_eq!(problem["reason"], "CANotFound", "{problem}");
        let message = problem["message"].as_str().unwrap_or_default();
        assert!(message.contains("weir-system/absent-ca"), "{message}");
        poll(cluster, "a Warning Event on MeshStatus", || {
            let events = cluster
                .kubectl_json(&["get", "events.events.k8s.io", "-A", "--field-selector", "reason=CANotFound"])
                .ok()?;
            events["items"]
                .as_array()?
                .iter()
                .any(|e| e["type"] == "Warning" && e["regarding"]["kind"] == "MeshStatus")
                .then_some(())
        })
        .await?;
        assert_eq!(issuing(&c).as_deref(), Some(provided.cert_pem.as_str()));
        anyhow::Ok(())
    }
    .await;
    c.stop().await;
    let _ = cluster.kubectl(&["delete", "meshidentity", "mesh", "--ignore-not-found"]);
    let _ = cluster.kubectl(&["delete", "namespace", "ca-meshed", "--wait=false"]);
    result
}

/// Checks a serving chain against a root for a DNS name, as a TLS client would.
fn verify_server(chain_pem: &str, root_pem: &str, name: &str) -> Result<()> {
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(cert.map_err(|e| anyhow::anyhow!("{e:?}"))?)?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        provider,
    )
    .build()?;
    let chain: Vec<CertificateDer> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let name = rustls::pki_types::ServerName::try_from(name.to_string())?;
    verifier.verify_server_cert(
        &chain[0],
        &chain[1..],
        &name,
        &[],
        rustls::pki_types::UnixTime::now(),
    )?;
    Ok(())
}

fn auth_failures(plane: &ControlPlane, reason: &'static str) -> u64 {
    plane
        .state
        .metrics
        .xds_auth_failures
        .get_or_create(&weir_operator::metrics::ReasonLabels { reason })
        .get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_prove_their_pod_with_a_token_and_everything_else_is_refused() -> Result<()> {
    if !can_run("proxies_prove_their_pod_with_a_token_and_everything_else_is_refused") {
        return Ok(());
    }
    let cluster = installed();
    let _slot = operator_slot().await;
    let ns = "authn";
    let _ = cluster.kubectl(&["create", "namespace", ns]);
    let _ = cluster.kubectl(&["create", "serviceaccount", "web", "-n", ns]);
    for pod in ["web-1", "web-2", "web-3"] {
        cluster.apply(&json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod, "namespace": ns},
                "spec": {"serviceAccountName": "web", "containers": [{"name": "app", "image": "shop/web:1"}]}}),
        )?;
    }
    let plane = start_operator(cluster, "weir-authn").await?;
    let result = async {
        let root = poll(cluster, "the mesh roots", || {
            let roots = plane.state.identity.roots().borrow().clone();
            (!roots.is_empty()).then_some(roots)
        })
        .await?;
        let xds = plane.xds_addr;
        let channel = || xds_client::tls_channel(xds, "127.0.0.1", &root);
        let attempt = |token: Option<String>, pod: &'static str| async move {
            let channel = channel().await.expect("TLS to the operator");
            xds_client::first_response(channel, token.as_deref(), xds_client::node(ns, pod)).await
        };

        // A real Envoy with the injected kind of bootstrap: TLS verified against the mesh
        // root, the pod's TokenRequest token from a file.
        let envoy = start_pod_envoy(cluster, xds, &root, (ns, "web", "web-1")).await?;
        let record = plane
            .state
            .proxies
            .list()
            .into_iter()
            .find(|p| p.node == "web-1.authn")
            .context("the Envoy's stream")?;
        assert_eq!(
            record.service_account, "web",
            "bound to the token's service account"
        );
        envoy.stop().await;

        // The raw client, with the same kind of token: served its own identity's certificate.
        let token = cluster.pod_token(ns, "web", "web-1", "weir")?;
        let cert = workload_certificate(xds, &root, &token, "web-1").await?;
        assert_eq!(
            CertInfo::parse(&cert).context("cert")?.uris,
            ["spiffe://cluster.local/ns/authn/sa/web"]
        );

        // Every refusal, with its status code and its counted reason.
        let cases: Vec<(
            &str,
            Option<String>,
            &'static str,
            tonic::Code,
            &'static str,
        )> = vec![
            (
                "no token",
                None,
                "web-1",
                tonic::Code::Unauthenticated,
                "no_token",
            ),
            (
                "another audience",
                Some(cluster.pod_token(ns, "web", "web-1", "other")?),
                "web-1",
                tonic::Code::Unauthenticated,
                "wrong_audience",
            ),
            (
                "an expired token",
                Some(cluster.expired_pod_token(
                    ns,
                    "web",
                    "web-1",
                    "weir",
                    Duration::from_secs(600),
                )?),
                "web-1",
                tonic::Code::Unauthenticated,
                "expired",
            ),
            (
                "a token bound to no pod",
                Some(cluster.token(ns, "web", Some("weir"))?),
                "web-1",
                tonic::Code::PermissionDenied,
                "not_bound_to_pod",
            ),
            (
                "node metadata naming another pod",
                Some(token.clone()),
                "web-2",
                tonic::Code::PermissionDenied,
                "metadata_mismatch",
            ),
        ];
        for (what, token, pod, code, reason) in cases {
            let before = auth_failures(&plane, reason);
            let refused = attempt(token, pod)
                .await
                .err()
                .with_context(|| format!("{what} was accepted"))?;
            assert_eq!(refused.code(), code, "{what}: {refused:?}");
            assert!(!refused.message().is_empty(), "{what}: the status says why");
            assert_eq!(
                auth_failures(&plane, reason),
                before + 1,
                "{what} counted as {reason}"
            );
        }

        // A deleted pod's token: accepted while the pod lives, refused once it is gone.
        let doomed = cluster.pod_token(ns, "web", "web-3", "weir")?;
        attempt(Some(doomed.clone()), "web-3")
            .await
            .map_err(|s| anyhow::anyhow!("{s:?}"))?;
        cluster.kubectl(&["delete", "pod", "web-3", "-n", ns, "--wait=true"])?;
        let before = auth_failures(&plane, "pod_gone");
        let end = std::time::Instant::now() + weir_tests::DEADLINE;
        let refused = loop {
            if let Err(status) = attempt(Some(doomed.clone()), "web-3").await {
                break status;
            }
            anyhow::ensure!(
                std::time::Instant::now() < end,
                "the deleted pod's token is still accepted"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        assert!(auth_failures(&plane, "pod_gone") > before);
        anyhow::Ok(())
    }
    .await;
    plane.stop().await;
    let _ = cluster.kubectl(&["delete", "namespace", ns, "--wait=false"]);
    result
}

/// The `workload` secret served to a stream that proves pod `pod` with `token`.
async fn workload_certificate(
    xds: std::net::SocketAddr,
    root: &str,
    token: &str,
    pod: &str,
) -> Result<String> {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{secret::Type, Secret};
    use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
    use prost::Message;
    let channel = xds_client::tls_channel(xds, "127.0.0.1", root).await?;
    let first = DeltaDiscoveryRequest {
        node: Some(xds_client::node("authn", pod)),
        type_url: weir_core::ResourceType::Secret.type_url().into(),
        resource_names_subscribe: vec!["workload".into()],
        ..Default::default()
    };
    let (_tx, mut stream) = xds_client::delta_stream(channel, Some(token), first).await?;
    let response = stream.message().await?.context("no response")?;
    let resource = response.resources.first().context("no secret")?;
    let secret = Secret::decode(
        resource
            .resource
            .as_ref()
            .context("empty")?
            .value
            .as_slice(),
    )?;
    let Some(Type::TlsCertificate(tls)) = secret.r#type else {
        anyhow::bail!("not a certificate");
    };
    match tls.certificate_chain.and_then(|c| c.specifier) {
        Some(envoy_types::pb::envoy::config::core::v3::data_source::Specifier::InlineString(
            pem,
        )) => Ok(pem),
        other => anyhow::bail!("unexpected chain {other:?}"),
    }
}
