//! `kubectl weir` against a real kube-apiserver (`weir_tests::kube`), as a user runs it: the
//! `kubectl-weir` binary with the admin's kubeconfig, the operator in this process (leading,
//! signed in as the `weir-operator` ServiceAccount of config/) with its admin API on a pod
//! IP, reached through the API server's pod proxy; the injector (`weir-webhook serve`)
//! called by the API server; a pod created through the API (injected) whose sidecar is a
//! real Envoy proving its pod with a TokenRequest token; and a second proxy that NACKs.
//!
//! One test, in steps, because some steps break the cluster on purpose (a CRD deleted, the
//! webhook's caBundle replaced, the CA expired) and each is repaired before the next.

use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use weir_core::mesh::{INJECT_KEY, MESH_NAMESPACE, WEBHOOK_CONFIGURATION};
use weir_tests::kube::{
    can_run, client_from, installed, local_pod_ips, operator_slot, start_operator_on,
    start_pod_envoy, wait_leading, Cluster,
};
use weir_tests::{free_port, scratch_dir, workspace_binary, xds_client};

/// The operator pod's address (added to lo: the pod proxy refuses loopback addresses).
const OPERATOR_IP: &str = "10.244.250.1";
const NS: &str = "clitest";

/// Runs `kubectl-weir ARGS` as the cluster admin: exit code and standard output.
fn weir(cluster: &Cluster, args: &[&str]) -> (i32, String) {
    weir_as(&cluster.admin, args)
}

/// Runs `kubectl-weir ARGS` with `kubeconfig`.
fn weir_as(kubeconfig: &std::path::Path, args: &[&str]) -> (i32, String) {
    tokio::task::block_in_place(|| {
        let out = std::process::Command::new(workspace_binary("kubectl-weir").expect("built"))
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .env("NO_COLOR", "1")
            .output()
            .expect("run kubectl-weir");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("$ kubectl weir {}\n{stdout}{stderr}", args.join(" "));
        (out.status.code().unwrap_or(-1), stdout)
    })
}

fn kubectl(cluster: &Cluster, args: &[&str]) -> Result<String> {
    tokio::task::block_in_place(|| cluster.kubectl(args))
}

fn apply(cluster: &Cluster, object: &Value) -> Result<()> {
    tokio::task::block_in_place(|| cluster.apply(object))
}

/// Polls `check` (bounded) until it holds.
async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> Result<T> {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        anyhow::ensure!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The `check -o json` row whose name contains `name`.
fn check_row(json: &str, name: &str) -> Option<Value> {
    let rows: Vec<Value> = serde_json::from_str(json).ok()?;
    rows.into_iter()
        .find(|r| r["name"].as_str().is_some_and(|n| n.contains(name)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_weir_reports_and_checks_a_live_mesh() -> Result<()> {
    let test = "kubectl_weir_reports_and_checks_a_live_mesh";
    if !can_run(test) || !local_pod_ips(test, &[OPERATOR_IP]) {
        return Ok(());
    }
    let cluster = installed();
    let _slot = operator_slot().await;
    // No kubelet runs the shipped Deployments' pods: the operator below is the only one.
    kubectl(
        cluster,
        &[
            "scale",
            "deploy",
            "--all",
            "-n",
            MESH_NAMESPACE,
            "--replicas=0",
        ],
    )?;
    // The shipped webhook configuration (the operator fills its caBundle).
    let webhook =
        weir_tests::workspace_root().join("config/webhook/mutatingwebhookconfiguration.yaml");
    kubectl(cluster, &["apply", "-f", &webhook.to_string_lossy()])?;
    let token =
        tokio::task::block_in_place(|| cluster.token(MESH_NAMESPACE, "weir-operator", None))?;
    let kubeconfig =
        tokio::task::block_in_place(|| cluster.token_kubeconfig("cli-operator", &token, None))?;
    let admin_port = free_port();
    // As deployed: proxies authenticated over TLS, the webhook's certificate managed.
    let options = weir_operator::Options {
        xds_names: vec!["127.0.0.1".into()],
        authenticate: true,
        manage_webhook_cert: true,
        ..weir_operator::Options::new(
            "127.0.0.1:0".parse()?,
            format!("{OPERATOR_IP}:{admin_port}").parse()?,
        )
    };
    let plane = start_operator_on(
        client_from(&kubeconfig).await?,
        "weir-operator-cli-0",
        options,
    )
    .await?;
    wait_leading(&plane, Duration::from_secs(30)).await?;

    // Before an install: the admin may install, the operator's ServiceAccount may not.
    let (code, out) = weir(cluster, &["check", "--pre", "-o", "json"]);
    assert_eq!(code, 0, "{out}");
    let rows: Vec<Value> = serde_json::from_str(&out)?;
    assert!(rows.iter().all(|r| r["status"] == "ok"), "{out}");
    let version = check_row(&out, "Kubernetes version").context("the version check")?;
    assert!(
        version["detail"]
            .as_str()
            .unwrap()
            .contains("native sidecars available"),
        "{version}"
    );
    let (code, out) = weir_as(&kubeconfig, &["check", "--pre", "-o", "json"]);
    assert_eq!(code, 1, "{out}");
    let crds = check_row(&out, "create customresourcedefinitions").context("the CRD permission")?;
    assert_eq!(crds["status"], "FAIL", "{crds}");
    assert!(
        crds["detail"].as_str().unwrap().contains("cluster admin"),
        "{crds}"
    );
    apply(
        cluster,
        &json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "weir-operator-cli-0", "namespace": MESH_NAMESPACE,
                "labels": {"app.kubernetes.io/name": "weir", "app.kubernetes.io/component": "operator"}},
            // weir-system enforces the restricted Pod Security Standard.
            "spec": {"serviceAccountName": "weir-operator",
                "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{"name": "operator", "image": "weir-operator",
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
                "ports": [{"name": "http-admin", "containerPort": admin_port}]}]}}),
    )?;
    tokio::task::block_in_place(|| {
        cluster.set_pod_ready(MESH_NAMESPACE, "weir-operator-cli-0", OPERATOR_IP)
    })?;

    let result = steps(cluster, &plane).await;
    plane.stop().await;
    result
}

async fn steps(cluster: &'static Cluster, plane: &weir_operator::ControlPlane) -> Result<()> {
    // The injector, with a serving certificate for 127.0.0.1 from the mesh CA (the caBundle
    // the operator publishes), called by URL.
    let root = eventually("the mesh roots", || {
        let roots = plane.state.identity.roots().borrow().clone();
        (!roots.is_empty()).then_some(roots)
    })
    .await?;
    let issued = plane
        .state
        .identity
        .issue_server(&["127.0.0.1".to_string()], Duration::from_secs(3600))
        .context("a serving certificate")?;
    let dir = scratch_dir("cli-webhook");
    std::fs::write(dir.join("tls.crt"), &issued.chain_pem)?;
    std::fs::write(dir.join("tls.key"), issued.key.pem())?;
    let webhook_port = free_port();
    let _webhook = Killed(
        std::process::Command::new(workspace_binary("weir-webhook")?)
            .args(["serve", "--addr", &format!("127.0.0.1:{webhook_port}")])
            .arg("--tls-cert")
            .arg(dir.join("tls.crt"))
            .arg("--tls-key")
            .arg(dir.join("tls.key"))
            .stdout(std::process::Stdio::null())
            .spawn()?,
    );
    let bundle = eventually("the caBundle", || {
        let config = cluster
            .kubectl_json(&["get", "mutatingwebhookconfiguration", WEBHOOK_CONFIGURATION])
            .ok()?;
        let b = config["webhooks"][0]["clientConfig"]["caBundle"]
            .as_str()?
            .to_string();
        (!b.is_empty()).then_some(b)
    })
    .await?;
    // Both webhooks of the configuration call the injector by URL, trusting `bundle`.
    let point_webhook = |bundle: &str| -> Result<String> {
        let patch = json!((0..2)
            .map(|i| json!({"op": "replace", "path": format!("/webhooks/{i}/clientConfig"),
                "value": {"url": format!("https://127.0.0.1:{webhook_port}/inject"), "caBundle": bundle}}))
            .collect::<Vec<_>>());
        kubectl(
            cluster,
            &[
                "patch",
                "mutatingwebhookconfiguration",
                WEBHOOK_CONFIGURATION,
                "--type=json",
                "-p",
                &patch.to_string(),
            ],
        )
    };
    point_webhook(&bundle)?;

    // A meshed namespace, a Service with an endpoint, and two pods created through the API.
    let _ = kubectl(cluster, &["create", "namespace", NS]);
    kubectl(
        cluster,
        &[
            "label",
            "namespace",
            NS,
            &format!("{INJECT_KEY}=enabled"),
            "--overwrite",
        ],
    )?;
    for sa in ["web", "api"] {
        let _ = kubectl(cluster, &["create", "serviceaccount", sa, "-n", NS]);
    }
    apply(
        cluster,
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "api", "namespace": NS},
            "spec": {"ports": [{"name": "http", "port": 8080}]}}),
    )?;
    // The Service's pod (meshed: callers talk mTLS to it) stays Pending: check only warns
    // about a pod that is not running.
    for (pod, sa) in [("api-1", "api"), ("web-1", "web"), ("web-2", "web")] {
        let _ = kubectl(cluster, &["delete", "pod", pod, "-n", NS, "--wait=false"]);
        eventually("the old pod to go", || {
            cluster
                .kubectl(&["get", "pod", pod, "-n", NS])
                .is_err()
                .then_some(())
        })
        .await?;
        eventually("the webhook to inject", || {
            let manifest = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod, "namespace": NS},
                "spec": {"serviceAccountName": sa, "containers": [{"name": "app", "image": "shop/app:1"}]}});
            cluster.kubectl_stdin(&["create", "-f", "-"], &manifest.to_string()).ok()
        })
        .await?;
        if sa == "web" {
            tokio::task::block_in_place(|| cluster.set_pod_ready(NS, pod, "10.244.250.11"))?;
        }
    }
    apply(
        cluster,
        &json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "api-1", "namespace": NS, "labels": {"kubernetes.io/service-name": "api"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": ["10.244.250.20"], "conditions": {"ready": true}, "zone": "zone-a",
                "targetRef": {"kind": "Pod", "name": "api-1", "namespace": NS}}]}),
    )?;

    let injected = cluster.kubectl_json(&["get", "pod", "web-1", "-n", NS])?;
    anyhow::ensure!(
        injected["spec"]["initContainers"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["name"] == "weir-proxy")),
        "web-1 was injected: {injected}"
    );

    // web-1's sidecar: a real Envoy proving its pod.
    let envoy = start_pod_envoy(cluster, plane.xds_addr, &root, (NS, "web", "web-1")).await?;

    // proxy-status: every type of web-1 SYNCED, in the table and in JSON.
    let status = eventually("web-1 in sync", || {
        let (code, out) = weir(cluster, &["proxy-status", "-n", NS, "-o", "json"]);
        let proxies: Vec<Value> = serde_json::from_str(&out).ok()?;
        let web = proxies.into_iter().find(|p| p["pod"] == "web-1")?;
        let sync = web["sync"].as_object()?.clone();
        (code == 0
            && ["cds", "eds", "lds", "rds", "sds"]
                .iter()
                .all(|t| sync.get(*t) == Some(&json!("SYNCED"))))
        .then_some(web)
    })
    .await?;
    assert_eq!(status["operator"], "weir-operator-cli-0", "{status}");
    assert!(
        status["certificate_expires_at"].as_u64().is_some(),
        "{status}"
    );
    let (code, table) = weir(cluster, &["proxy-status", "-n", NS]);
    assert_eq!(code, 0);
    let header = table.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("NAME") && header.contains("CDS") && header.contains("OPERATOR"),
        "{table}"
    );
    let row = table
        .lines()
        .find(|l| l.starts_with("web-1.clitest"))
        .context("web-1's row")?;
    assert!(
        row.contains("SYNCED") && row.contains("weir-operator-cli-0"),
        "{row}"
    );
    let (code, one) = weir(cluster, &["proxy-status", "web-1", "-n", NS]);
    assert_eq!(code, 0);
    assert!(
        one.lines()
            .any(|l| l.starts_with("LDS") && l.contains("SYNCED")),
        "{one}"
    );

    // proxy-config: tables and full resources.
    let (code, clusters) = weir(cluster, &["proxy-config", "clusters", "web-1", "-n", NS]);
    assert_eq!(code, 0);
    assert!(
        clusters.lines().any(
            |l| l.starts_with("outbound|8080||api.clitest.svc.cluster.local") && l.contains("EDS")
        ),
        "{clusters}"
    );
    let (_, endpoints) = weir(cluster, &["proxy-config", "endpoints", "web-1", "-n", NS]);
    assert!(
        endpoints.lines().any(|l| l.contains("10.244.250.20:8080")
            && l.contains("zone-a")
            && l.contains("ready")),
        "{endpoints}"
    );
    let (_, routes) = weir(cluster, &["proxy-config", "routes", "web-1", "-n", NS]);
    assert!(
        routes
            .lines()
            .any(|l| l.contains("api.clitest.svc.cluster.local:8080")
                && l.contains("outbound|8080||api")),
        "{routes}"
    );
    let (_, listeners) = weir(cluster, &["proxy-config", "listeners", "web-1", "-n", NS]);
    assert!(listeners.contains("HTTP, routes"), "{listeners}");
    let (code, json_out) = weir(
        cluster,
        &["proxy-config", "listeners", "web-1", "-n", NS, "-o", "json"],
    );
    assert_eq!(code, 0);
    let full: Value = serde_json::from_str(&json_out)?;
    assert!(
        json_out.contains("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"),
        "filter configs expanded: {full}"
    );
    let (_, secrets) = weir(cluster, &["proxy-config", "secrets", "web-1", "-n", NS]);
    assert!(
        secrets.contains(&format!("spiffe://cluster.local/ns/{NS}/sa/web")),
        "{secrets}"
    );
    let (_, secrets_json) = weir(
        cluster,
        &["proxy-config", "secrets", "web-1", "-n", NS, "-o", "yaml"],
    );
    assert!(secrets_json.contains("certificateChain"), "{secrets_json}");
    assert!(
        !secrets_json.contains("privateKey") && !secrets_json.contains("PRIVATE KEY"),
        "no private key leaves the operator: {secrets_json}"
    );

    // explain over the cluster's objects.
    let (code, text) = weir(
        cluster,
        &["explain", "web-1", "api:8080", "-n", NS, "--path", "/x"],
    );
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("Service clitest/api port 8080") && text.contains("forwarded"),
        "{text}"
    );

    // check: all well (web-2 has no proxy yet: it is the only pod without, so leave it out
    // by giving it one below first).
    let nack = NackingProxy::start(cluster, plane, &root).await?;
    let (code, out) = weir(cluster, &["check", "-o", "json"]);
    let web1 = check_row(&out, "clitest/web-1").context("web-1's check")?;
    assert_eq!(web1["status"], "ok", "{web1}");
    let web2 = check_row(&out, "clitest/web-2").context("web-2's check")?;
    assert_eq!(web2["status"], "FAIL", "the NACKing proxy fails: {web2}");
    assert!(
        web2["detail"]
            .as_str()
            .unwrap()
            .contains("test: rejected cluster"),
        "{web2}"
    );
    assert_eq!(code, 1, "a failed check exits 1");
    for name in [
        "trafficpolicies.weir.dev",
        "/readyz",
        "leader",
        "caBundle",
        "reachable",
        "mesh CA",
    ] {
        let row = check_row(&out, name).with_context(|| format!("a {name} check in {out}"))?;
        assert_eq!(row["status"], "ok", "{row}");
    }
    let (code, out) = weir(cluster, &["proxy-status", "-n", NS]);
    assert_eq!(code, 1, "a NACK makes proxy-status exit 1");
    assert!(
        out.contains("NACKED web-2.clitest CDS: test: rejected cluster"),
        "{out}"
    );
    drop(nack);
    let (code, table) = eventually("check to pass once the NACKing proxy left", || {
        let (code, out) = weir(cluster, &["check", "-n", NS]);
        (code == 0 || !out.contains("rejected config")).then_some((code, out))
    })
    .await?;
    // web-2 has no proxy now: that fails too, naming what to do.
    assert!(
        table.contains("clitest/web-2") && table.contains("not connected"),
        "{table}"
    );
    assert_eq!(code, 1);
    kubectl(
        cluster,
        &["delete", "pod", "web-2", "-n", NS, "--wait=false"],
    )?;
    let (code, table) = eventually("check to pass", || {
        let (code, out) = weir(cluster, &["check"]);
        (code == 0).then_some((code, out))
    })
    .await?;
    assert_eq!(code, 0);
    assert!(table.contains("All checks passed"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.contains("clitest/web-1") && l.contains("in sync")),
        "{table}"
    );

    // Someone with only the shipped weir-cli roles (config/rbac/cli_roles.yaml) reads
    // everything; someone without them is told they may not.
    let _ = kubectl(cluster, &["create", "serviceaccount", "reader", "-n", NS]);
    let _ = kubectl(cluster, &["create", "serviceaccount", "stranger", "-n", NS]);
    let _ = kubectl(
        cluster,
        &[
            "create",
            "clusterrolebinding",
            "weir-cli-reader",
            "--clusterrole=weir-cli",
            &format!("--serviceaccount={NS}:reader"),
        ],
    );
    let _ = kubectl(
        cluster,
        &[
            "create",
            "rolebinding",
            "weir-cli-reader",
            "-n",
            MESH_NAMESPACE,
            "--role=weir-cli",
            &format!("--serviceaccount={NS}:reader"),
        ],
    );
    let reader = tokio::task::block_in_place(|| {
        let token = cluster.token(NS, "reader", None)?;
        cluster.token_kubeconfig("cli-reader", &token, None)
    })?;
    let (code, out) = weir_as(&reader, &["proxy-status", "-A"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("web-1.clitest"), "{out}");
    let (code, out) = weir_as(&reader, &["check", "-o", "json"]);
    assert_eq!(code, 0, "the read-only roles suffice: {out}");
    let reachable = check_row(&out, "reachable").context("the webhook check")?;
    assert_eq!(reachable["status"], "warn", "{reachable}");
    let stranger = tokio::task::block_in_place(|| {
        let token = cluster.token(NS, "stranger", None)?;
        cluster.token_kubeconfig("cli-stranger", &token, None)
    })?;
    let denied = tokio::task::block_in_place(|| {
        std::process::Command::new(workspace_binary("kubectl-weir").unwrap())
            .arg("--kubeconfig")
            .arg(&stranger)
            .args(["proxy-status", "-A"])
            .output()
    })?;
    assert_eq!(denied.status.code(), Some(2));
    let err = String::from_utf8_lossy(&denied.stderr);
    assert!(
        err.contains("forbidden") && err.contains("weir-system"),
        "{err}"
    );

    // A caBundle that does not verify the webhook's certificate.
    let other_ca = base64_of(&cluster.ca.pem);
    point_webhook(&other_ca)?;
    let (code, out) = weir(cluster, &["check", "-o", "json"]);
    assert_eq!(code, 1);
    let row =
        check_row(&out, "inject-namespace.weir.dev caBundle").context("the caBundle check")?;
    assert_eq!(row["status"], "FAIL", "{row}");
    assert!(
        row["detail"].as_str().unwrap().contains("does not verify"),
        "{row}"
    );
    point_webhook(&bundle)?;

    // A missing CRD.
    kubectl(cluster, &["delete", "crd", "meshstatuses.weir.dev"])?;
    let (code, out) = weir(cluster, &["check", "-o", "json"]);
    assert_eq!(code, 1);
    let row = check_row(&out, "meshstatuses.weir.dev").context("the CRD check")?;
    assert_eq!(row["status"], "FAIL", "{row}");
    assert!(
        row["detail"]
            .as_str()
            .unwrap()
            .contains("kubectl apply -f crds/"),
        "{row}"
    );
    let crd = weir_tests::workspace_root().join("crds/meshstatuses.yaml");
    kubectl(cluster, &["apply", "-f", &crd.to_string_lossy()])?;

    // analyze over the cluster: clean, then a policy naming a missing backend.
    let (code, out) = weir(cluster, &["analyze"]);
    assert_eq!(code, 0, "{out}");
    apply(
        cluster,
        &json!({"apiVersion": "weir.dev/v1alpha1", "kind": "TrafficPolicy",
            "metadata": {"name": "to-nowhere", "namespace": NS},
            "spec": {"targetRef": {"service": "api"}, "http": [{"name": "gone", "destinations": [{"service": "ghost"}]}]}}),
    )?;
    let (code, out) = weir(cluster, &["analyze"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines().any(|l| l.contains("cluster")
            && l.contains("TrafficPolicy clitest/to-nowhere")
            && l.contains("ghost")),
        "{out}"
    );
    kubectl(
        cluster,
        &["delete", "trafficpolicy", "to-nowhere", "-n", NS],
    )?;

    // An expired CA.
    let (cert, key) = expired_ca()?;
    apply(
        cluster,
        &json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": weir_core::mesh::CA_SECRET, "namespace": MESH_NAMESPACE},
            "data": {"tls.crt": base64_of(&cert), "tls.key": base64_of(&key), "ca.crt": base64_of(&cert)}}),
    )?;
    let row = eventually("check to see the expired CA", || {
        let (_, out) = weir(cluster, &["check", "-o", "json"]);
        check_row(&out, "mesh CA").filter(|r| r["status"] == "FAIL")
    })
    .await?;
    assert!(row["detail"].as_str().unwrap().contains("expired"), "{row}");
    envoy.stop().await;
    Ok(())
}

fn base64_of(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// A CA certificate (and key) valid only in 2020.
fn expired_ca() -> Result<(String, String)> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "expired mesh root");
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2020, 12, 31);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Kills a child process on drop.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A proxy for pod web-2 that rejects the clusters it is sent, until dropped.
struct NackingProxy(tokio::task::JoinHandle<()>);

impl NackingProxy {
    async fn start(
        cluster: &Cluster,
        plane: &weir_operator::ControlPlane,
        root: &str,
    ) -> Result<NackingProxy> {
        use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
        let token = cluster.pod_token(NS, "web", "web-2", "weir")?;
        let channel = xds_client::tls_channel(plane.xds_addr, "127.0.0.1", root).await?;
        let cds = weir_core::ResourceType::Cluster.type_url().to_string();
        let first = DeltaDiscoveryRequest {
            node: Some(xds_client::node(NS, "web-2")),
            type_url: cds.clone(),
            ..Default::default()
        };
        let (tx, mut stream) = xds_client::delta_stream(channel, Some(&token), first).await?;
        let first = stream.message().await?.context("a first response")?;
        tx.send(DeltaDiscoveryRequest {
            type_url: cds,
            response_nonce: first.nonce,
            error_detail: Some(envoy_types::pb::google::rpc::Status {
                code: 3,
                message: "test: rejected cluster".into(),
                details: Vec::new(),
            }),
            ..Default::default()
        })
        .await?;
        let task = tokio::spawn(async move {
            let _tx = tx;
            while let Ok(Some(_)) = stream.message().await {}
        });
        // The operator has recorded the NACK once proxy-status shows it.
        eventually("the NACK recorded", || {
            let nacked = plane
                .state
                .proxies
                .list()
                .iter()
                .any(|p| p.pod == "web-2" && p.types.iter().any(|(_, s)| s.nack.is_some()));
            nacked.then_some(())
        })
        .await?;
        Ok(NackingProxy(task))
    }
}

impl Drop for NackingProxy {
    fn drop(&mut self) {
        self.0.abort();
    }
}
