//! The admission server over real HTTPS (rustls, a certificate made for the test), driven
//! with AdmissionReview v1 JSON by curl: a Pod gets a patch that applies; bad input gets a
//! clear answer and never a half-applied patch.

use base64::Engine;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use weir_core::mesh::INJECT_KEY;
use weir_webhook::inject::MeshConfig;

struct Server {
    port: u16,
    ca: PathBuf,
}

async fn start() -> Server {
    let dir = std::env::temp_dir().join(format!("weir-webhook-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "weir webhook test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    let (ca_path, cert_path, key_path) =
        (dir.join("ca.pem"), dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&ca_path, ca.pem()).unwrap();
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        if let Err(err) = weir_webhook::server::serve(
            listener,
            cert_path,
            key_path,
            Arc::new(MeshConfig::default()),
        )
        .await
        {
            panic!("the webhook server failed: {err:#}");
        }
    });
    let server = Server { port, ca: ca_path };
    let end = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (code, body) = server.curl(&["https://localhost:{port}/healthz"], None);
        if code == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "the webhook did not come up: {code} {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    server
}

impl Server {
    /// (status, body) of a request made by curl over HTTPS, verifying the test CA.
    fn curl(&self, url: &[&str], body: Option<&str>) -> (u16, String) {
        let url = url[0].replace("{port}", &self.port.to_string());
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--cacert"])
            .arg(&self.ca)
            .args(["-o", "-", "-w", "\n%{http_code}"]);
        if let Some(body) = body {
            cmd.args([
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                body,
            ]);
        }
        let out = cmd.arg(&url).output().expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        let body = if out.status.success() {
            body.to_string()
        } else {
            String::from_utf8_lossy(&out.stderr).to_string()
        };
        (code.trim().parse().unwrap_or(0), body)
    }

    fn review(&self, review: &Value) -> (u16, Value) {
        let (code, body) = self.curl(
            &["https://localhost:{port}/inject"],
            Some(&review.to_string()),
        );
        (
            code,
            serde_json::from_str(&body).unwrap_or(Value::String(body)),
        )
    }
}

fn pod_json(extra_env: usize) -> Value {
    let env: Vec<Value> = (0..extra_env)
        .map(|i| json!({"name": format!("VAR_{i}"), "value": "x".repeat(40)}))
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "web-", "namespace": "shop", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": "web:1", "env": env,
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}}}]}
    })
}

fn review_of(object: Value, kind: (&str, &str, &str), dry_run: bool) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": kind.0, "version": kind.1, "kind": kind.2},
            "resource": {"group": kind.0, "version": kind.1, "resource": format!("{}s", kind.2.to_lowercase())},
            "namespace": "shop", "operation": "CREATE",
            "userInfo": {"username": "admin"},
            "object": object, "oldObject": null, "dryRun": dry_run, "options": null
        }
    })
}

fn apply_patch(original: &Value, response: &Value) -> Pod {
    assert_eq!(response["response"]["patchType"], "JSONPatch", "{response}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(response["response"]["patch"].as_str().unwrap())
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    let mut doc = original.clone();
    json_patch::patch(&mut doc, &patch).expect("the patch applies to the original");
    serde_json::from_value(doc).expect("the patched object is a Pod")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_reviews_over_https() {
    let server = start().await;

    // A Pod: allowed, with a patch that applies and yields an injected Pod.
    for (size, dry_run) in [(0, false), (0, true), (1500, false)] {
        let pod = pod_json(size);
        let review = review_of(pod.clone(), ("", "v1", "Pod"), dry_run);
        if size > 0 {
            assert!(
                review.to_string().len() > 64 * 1024,
                "a pod spec of more than 64 KB"
            );
        }
        let (code, response) = server.review(&review);
        assert_eq!(code, 200);
        assert_eq!(response["kind"], "AdmissionReview");
        assert_eq!(
            response["response"]["uid"],
            "705ab4f5-6393-11e8-b7cc-42010a800002"
        );
        assert_eq!(response["response"]["allowed"], true);
        let injected = apply_patch(&pod, &response);
        let spec = injected.spec.unwrap();
        assert!(spec
            .init_containers
            .unwrap()
            .iter()
            .any(|c| c.name == "weir-proxy"));
        assert_eq!(
            spec.containers[0]
                .readiness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/app-health/web/readyz")
        );
    }

    // An opted-out Pod: allowed, untouched.
    let mut opted_out = pod_json(0);
    opted_out["metadata"]["annotations"] = json!({INJECT_KEY: "false"});
    let (code, response) = server.review(&review_of(opted_out, ("", "v1", "Pod"), false));
    assert_eq!(
        (code, &response["response"]["allowed"]),
        (200, &json!(true))
    );
    assert!(response["response"]["patch"].is_null(), "{response}");

    // Another kind: allowed, untouched, and the warning says why.
    let service = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}});
    let (code, response) = server.review(&review_of(service, ("", "v1", "Service"), false));
    assert_eq!(code, 200);
    assert!(response["response"]["patch"].is_null());
    assert!(
        response["response"]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("Pods only"),
        "{response}"
    );

    // A "Pod" that is not one: allowed, untouched, with the reason.
    let broken = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {"containers": "not a list"}});
    let (code, response) = server.review(&review_of(broken, ("", "v1", "Pod"), false));
    assert_eq!(code, 200);
    assert!(response["response"]["patch"].is_null());
    assert!(
        response["response"]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("does not read as a Pod"),
        "{response}"
    );

    // Malformed JSON and a review without a request: 400 with the reason.
    let (code, body) = server.curl(&["https://localhost:{port}/inject"], Some("{not json"));
    assert_eq!(code, 400);
    assert!(
        body.contains("not an admission.k8s.io/v1 AdmissionReview"),
        "{body}"
    );
    let (code, body) = server.curl(
        &["https://localhost:{port}/inject"],
        Some(r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#),
    );
    assert_eq!(code, 400, "{body}");
}
