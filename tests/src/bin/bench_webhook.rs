//! `make bench` (part 3): admission latency of the injector over HTTPS on loopback at a
//! steady 500 requests per second (DESIGN.md target: p99 under 2 ms).
//!
//! The server is the real one (`weir_webhook::server::serve`, rustls) with a certificate made
//! here; the client keeps a few TLS connections open, as the API server does, and paces
//! requests on a fixed schedule so that latency is not hidden by back-pressure.

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_webhook::inject::MeshConfig;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RATE: u64 = 500;
const SECONDS: u64 = 10;
const CONNECTIONS: usize = 4;

fn review() -> String {
    serde_json::json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop", "operation": "CREATE", "userInfo": {"username": "admin"},
            "object": {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"generateName": "web-", "namespace": "shop", "labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "web:1",
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}},
                    "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080}}}]}},
            "oldObject": null, "dryRun": false, "options": null
        }
    })
    .to_string()
}

#[tokio::main]
async fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = weir_tests::scratch_dir("bench-webhook");
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "weir bench CA");
    let ca = ca_params.self_signed(&ca_key)?;
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &rcgen::Issuer::from_params(&ca_params, &ca_key))?;
    std::fs::write(dir.join("tls.crt"), cert.pem())?;
    std::fs::write(dir.join("tls.key"), key.serialize_pem())?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    tokio::spawn(weir_webhook::server::serve(
        listener,
        dir.join("tls.crt"),
        dir.join("tls.key"),
        Arc::new(MeshConfig::default()),
    ));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone())?;
    let tls = Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let connector = tokio_rustls::TlsConnector::from(tls);
    let mut senders = Vec::new();
    for _ in 0..CONNECTIONS {
        let tcp =
            weir_tests::eventually("the webhook to listen", Duration::from_secs(10), || async {
                tokio::net::TcpStream::connect(addr).await.ok()
            })
            .await?;
        tcp.set_nodelay(true)?;
        let stream = connector
            .connect("localhost".try_into()?, tcp)
            .await
            .context("TLS handshake")?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        senders.push(Arc::new(tokio::sync::Mutex::new(sender)));
    }

    let body = Bytes::from(review());
    let total = RATE * SECONDS;
    let start = Instant::now() + Duration::from_millis(100);
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let sender = senders[i as usize % CONNECTIONS].clone();
        let body = body.clone();
        let at = start + Duration::from_micros(i * 1_000_000 / RATE);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let mut sender = sender.lock().await;
            let sent = Instant::now();
            let req = hyper::Request::post("/inject")
                .header("host", "localhost")
                .header("content-type", "application/json")
                .body(Full::new(body))?;
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            let bytes = resp.into_body().collect().await?.to_bytes();
            anyhow::ensure!(
                status == 200 && bytes.windows(9).any(|w| w == b"JSONPatch"),
                "bad answer {status}"
            );
            // From the moment the request goes out on its connection to the full answer. (tokio's
            // timer has 1 ms granularity, so the schedule itself jitters by up to 1 ms.)
            Ok::<_, anyhow::Error>(sent.elapsed())
        }));
    }
    let mut latencies = Vec::with_capacity(total as usize);
    for task in tasks {
        latencies.push(task.await??);
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!("Webhook benchmark: {total} AdmissionReviews over HTTPS on loopback at {RATE}/s, {CONNECTIONS} keep-alive connections");
    println!(
        "  latency p50 {:?}  p99 {:?}  max {:?}   (target: p99 < 2 ms)",
        pct(0.50),
        pct(0.99),
        latencies.last().copied().unwrap_or_default()
    );
    Ok(())
}
