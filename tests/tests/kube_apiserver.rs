//! Against a real kube-apiserver (built from Go modules, see `tests/k8s/`).

use anyhow::Result;
use weir_core::mesh::{INJECTED_ANNOTATION, INJECT_KEY, TOKEN_AUDIENCE, WEBHOOK_CONFIGURATION};
use weir_tests::kube::{can_run, Cluster};

#[test]
fn token_request_and_token_review_work_for_the_weir_audience() -> Result<()> {
    if !can_run("token_request_and_token_review_work_for_the_weir_audience") {
        return Ok(());
    }
    let cluster = Cluster::shared();
    cluster.kubectl(&["create", "namespace", "tokens"])?;
    cluster.kubectl(&["create", "serviceaccount", "app", "-n", "tokens"])?;
    let token = cluster.token("tokens", "app", Some(TOKEN_AUDIENCE))?;
    let review = |audience: &str| -> Result<serde_json::Value> {
        let body = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": token, "audiences": [audience]},
        });
        let out = cluster.kubectl_stdin(&["create", "-f", "-", "-o", "json"], &body.to_string())?;
        Ok(serde_json::from_str(&out)?)
    };
    let ok = review(TOKEN_AUDIENCE)?;
    assert_eq!(ok["status"]["authenticated"], true, "{ok}");
    assert_eq!(
        ok["status"]["user"]["username"],
        "system:serviceaccount:tokens:app"
    );
    let other = review("other")?;
    assert_ne!(other["status"]["authenticated"], true, "{other}");
    Ok(())
}

/// Runs `weir-webhook serve` with a certificate for 127.0.0.1 from the cluster's CA;
/// returns its port once it answers, and the process (killed on drop).
fn start_webhook(cluster: &Cluster) -> Result<(u16, std::process::Child)> {
    let issued = cluster.ca.serving(&["127.0.0.1"])?;
    let dir = weir_tests::scratch_dir("webhook-cert");
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert, &issued.cert)?;
    std::fs::write(&key, &issued.key)?;
    std::fs::write(dir.join("ca.crt"), &cluster.ca.pem)?;
    let port = weir_tests::free_port();
    let child = std::process::Command::new(weir_tests::workspace_binary("weir-webhook")?)
        .args(["serve", "--addr", &format!("127.0.0.1:{port}")])
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let ca = dir.join("ca.crt").to_string_lossy().into_owned();
    cluster.poll("the webhook to answer", || {
        let out = std::process::Command::new("curl")
            .args([
                "-sS",
                "--cacert",
                &ca,
                &format!("https://127.0.0.1:{port}/healthz"),
            ])
            .output()
            .ok()?;
        out.status.success().then_some(())
    })?;
    Ok((port, child))
}

fn pod(namespace: &str, name: &str, labels: serde_json::Value) -> String {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"containers": [{"name": "app", "image": "shop/app:1"}]},
    })
    .to_string()
}

fn injected(cluster: &Cluster, namespace: &str, name: &str) -> Result<bool> {
    let pod = cluster.kubectl_json(&["get", "pod", name, "-n", namespace])?;
    let has_proxy = |key: &str| {
        pod["spec"][key]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["name"] == "weir-proxy"))
    };
    Ok(has_proxy("initContainers") || has_proxy("containers"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_webhook_configuration_injects_through_the_api_server() -> Result<()> {
    if !can_run("the_shipped_webhook_configuration_injects_through_the_api_server") {
        return Ok(());
    }
    use base64::Engine;
    let cluster = Cluster::shared();
    let (port, mut webhook) = start_webhook(cluster)?;
    // config/webhook's configuration, pointed at the local server by URL.
    let file =
        weir_tests::workspace_root().join("config/webhook/mutatingwebhookconfiguration.yaml");
    let mut config: serde_json::Value = serde_saphyr::from_str(&std::fs::read_to_string(file)?)?;
    let ca_bundle = base64::engine::general_purpose::STANDARD.encode(&cluster.ca.pem);
    for hook in config["webhooks"].as_array_mut().into_iter().flatten() {
        hook["clientConfig"] = serde_json::json!({
            "url": format!("https://127.0.0.1:{port}/inject"),
            "caBundle": ca_bundle,
        });
    }
    cluster.kubectl_stdin(&["apply", "-f", "-"], &config.to_string())?;
    cluster.kubectl(&["create", "namespace", "meshed"])?;
    cluster.kubectl(&[
        "label",
        "namespace",
        "meshed",
        &format!("{INJECT_KEY}=enabled"),
    ])?;
    cluster.kubectl(&["create", "namespace", "plain"])?;
    for ns in ["meshed", "plain"] {
        cluster.poll(&format!("{ns}'s default ServiceAccount"), || {
            cluster
                .kubectl(&["get", "serviceaccount", "default", "-n", ns])
                .ok()
        })?;
    }

    // The API server calls the webhook for the labelled namespace's pods only, and for
    // pods that opt in elsewhere.
    cluster.kubectl_stdin(
        &["create", "-f", "-"],
        &pod("meshed", "web", serde_json::json!({"app": "web"})),
    )?;
    assert!(
        injected(cluster, "meshed", "web")?,
        "a pod in a meshed namespace is injected"
    );
    let annotations = cluster.kubectl_json(&["get", "pod", "web", "-n", "meshed"])?["metadata"]
        ["annotations"]
        .clone();
    assert!(
        annotations[INJECTED_ANNOTATION].is_string(),
        "{annotations}"
    );
    cluster.kubectl_stdin(
        &["create", "-f", "-"],
        &pod("plain", "web", serde_json::json!({"app": "web"})),
    )?;
    assert!(
        !injected(cluster, "plain", "web")?,
        "a pod elsewhere is untouched"
    );
    cluster.kubectl_stdin(
        &["create", "-f", "-"],
        &pod("plain", "opted-in", serde_json::json!({INJECT_KEY: "true"})),
    )?;
    assert!(
        injected(cluster, "plain", "opted-in")?,
        "a pod that opts in is injected"
    );

    // The webhook down: failurePolicy Fail refuses meshed pods; others never depend on it.
    webhook.kill()?;
    webhook.wait()?;
    let refused = cluster.kubectl_stdin(
        &["create", "-f", "-"],
        &pod("meshed", "web-2", serde_json::json!({"app": "web"})),
    );
    let err = refused.expect_err("a meshed pod was created without its sidecar");
    assert!(
        err.to_string().contains("failed calling webhook"),
        "{err:#}"
    );
    cluster.kubectl_stdin(
        &["create", "-f", "-"],
        &pod("plain", "web-2", serde_json::json!({"app": "web"})),
    )?;
    cluster.kubectl(&[
        "delete",
        "mutatingwebhookconfiguration",
        WEBHOOK_CONFIGURATION,
    ])?;
    Ok(())
}
