//! Mutual TLS between two injected pods, each in a network namespace of its own: client
//! `shop/web` (service account `web`) and server `backend/api-0` (service account `api`),
//! real Envoys from the injected bootstraps (xDS over TLS, verified against the mesh
//! root), the real `weir-operator local` with its CA in a directory, and the bytes between
//! the namespaces captured from the link:
//!
//! (a) STRICT (the default): HTTP, gRPC and TCP from the client's application reach the
//!     server; nothing but TLS crosses the link; the server's application sees the
//!     client's SPIFFE ID; a client outside the mesh is refused;
//! (b) PERMISSIVE (pod annotation): the mesh client and a plain client both succeed;
//! (c) a client presenting a certificate from another CA is refused, while the same client
//!     with a mesh certificate is accepted;
//! (d) workload renewals (60 s certificates) and a CA rotation under continuous requests
//!     fail none, and a proxy that only trusts the old root still reaches the operator.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use weir_core::identity::{CertificateAuthority, SpiffeId};
use weir_core::mesh::{DEFAULT_TRUST_DOMAIN, INBOUND_CAPTURE_PORT, MTLS_MODE_KEY};
use weir_core::testing::mk_meshed_pod;
use weir_tests::netns::*;
use weir_tests::{named_port_slices, scratch_dir, service_with_ports, to_yaml, write_file};

const API_IP: &str = "10.96.1.10";
const API_HOSTS: (&str, &str) = (API_IP, "api.backend.svc.cluster.local api.backend.svc");
const HTTP_URL: &str = "http://api.backend.svc.cluster.local:8080/";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/shop/sa/web";

/// The mesh as local mode reads it: Service backend/api (HTTP, gRPC, TCP), its meshed pod
/// at `server_ip` (with `annotations`), and the meshed client pod.
fn write_mesh(dir: &Path, server_ip: &str, annotations: &[(&str, &str)]) {
    let svc = service_with_ports(
        "backend",
        "api",
        API_IP,
        &[
            ("http", 8080, None),
            ("grpc", 50051, Some("grpc")),
            ("tcp-echo", 7000, None),
        ],
    );
    let mut server = mk_meshed_pod("backend", "api-0", "api", &[("app", "api")]);
    let meta = server
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    for (k, v) in annotations {
        meta.insert(k.to_string(), v.to_string());
    }
    let slices = named_port_slices(
        "backend",
        "api",
        "api-0",
        server_ip,
        &[("http", 8080), ("grpc", 50051), ("tcp-echo", 7000)],
    );
    let client = mk_meshed_pod("shop", "web", "web", &[("app", "web")]);
    write_file(dir, "api.yaml", &to_yaml(&[svc])).unwrap();
    write_file(dir, "api-0.yaml", &to_yaml(&[server])).unwrap();
    write_file(dir, "api-slices.yaml", &to_yaml(&slices)).unwrap();
    write_file(dir, "web.yaml", &to_yaml(&[client])).unwrap();
}

/// The server's applications (HTTP, gRPC, TCP echo) in `side`.
fn serve_api(net: &mut Net, side: Side) {
    net.serve_app(side, &["http", "api", "0.0.0.0:8080"]);
    net.serve_app(side, &["grpc", "api", "0.0.0.0:50051"]);
    net.serve_app(side, &["tcp", "api", "0.0.0.0:7000"]);
}

fn pod(ns: &str, name: &str, sa: &str) -> k8s_openapi::api::core::v1::Pod {
    serde_saphyr::from_str(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  serviceAccountName: {sa}\n  containers: [{{name: app, image: app:1}}]\n"
    ))
    .unwrap()
}

/// The mesh: operator (CA in `ca_dir`), server pod in a host of its own, client pod.
fn start(net: &mut Net, dir: &Path, ca_dir: &Path, extra: &[&str]) -> Side {
    let server = net.add_host();
    write_mesh(dir, &net.ip(server), &[]);
    net.start_operator(dir, ca_dir, extra);
    serve_api(net, server);
    net.start_sidecar(server, &pod("backend", "api-0", "api"), ca_dir);
    net.start_sidecar(Side::Pod, &pod("shop", "web", "web"), ca_dir);
    net.hosts(Side::Pod, &[API_HOSTS]);
    server
}

/// Writes `DIR/{cert,key,ca}.pem` for weir-testapp's mTLS client: a certificate for the
/// client's SPIFFE ID from `issuer`, and the mesh root to check the server against.
fn client_files(name: &str, issuer: &CertificateAuthority, mesh_root: &str) -> String {
    let dir = scratch_dir(name);
    let id = SpiffeId::new(DEFAULT_TRUST_DOMAIN, "shop", "web");
    let cert = issuer
        .issue_workload(&id, Duration::from_secs(3600), SystemTime::now())
        .unwrap();
    std::fs::write(dir.join("cert.pem"), &cert.chain_pem).unwrap();
    std::fs::write(dir.join("key.pem"), cert.key.pem()).unwrap();
    std::fs::write(dir.join("ca.pem"), mesh_root).unwrap();
    dir.to_string_lossy().into_owned()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn sidecars_speak_mutual_tls_strict_refuses_plaintext_and_permissive_accepts_both() {
    if !can_run("sidecars_speak_mutual_tls_strict_refuses_plaintext_and_permissive_accepts_both") {
        return;
    }
    let mut net = Net::new("mtls");
    let (dir, ca_dir) = (scratch_dir("mtls-mesh"), scratch_dir("mtls-ca"));
    let server = start(&mut net, &dir, &ca_dir, &[]);
    let server_ip = net.ip(server);
    let wire = net.sniff(server);

    // (a) STRICT: every protocol through both sidecars, the caller's identity passed on.
    net.wait_for("the client's route to the server", || {
        net.get(Side::Pod, HTTP_URL).starts_with("200 ")
    });
    let answer = net.get(Side::Pod, HTTP_URL);
    assert!(
        answer.starts_with("200 api HTTP/1.1 xfcc=")
            && answer.contains(&format!("URI={CLIENT_ID}")),
        "the server sees the client's SPIFFE ID: {answer}"
    );
    assert!(
        answer.contains("By=spiffe://cluster.local/ns/backend/sa/api"),
        "and its own: {answer}"
    );
    let grpc = net.testapp(
        Side::Pod,
        &[
            "call",
            "grpc",
            &format!("{API_IP}:50051"),
            "api.backend.svc.cluster.local:50051",
            "Say",
        ],
    );
    assert_eq!(grpc, "api Say");
    let tcp = net.testapp(
        Side::Pod,
        &[
            "call",
            "tcp",
            &format!("{API_IP}:7000"),
            "tcp-payload-in-clear",
        ],
    );
    assert_eq!(tcp, "api: tcp-payload-in-clear");
    let captured = std::fs::read(&wire).unwrap();
    for clear in [
        &b"tcp-payload-in-clear"[..],
        b"HTTP/1.1",
        b"GET /",
        b"weir.test.Echo",
        b"spiffe://",
    ] {
        assert!(
            !contains(&captured, clear),
            "{:?} crossed the link in clear",
            String::from_utf8_lossy(clear)
        );
    }
    assert!(
        contains(&captured, &[0x17, 0x03, 0x03]),
        "TLS application data crossed the link ({} bytes captured)",
        captured.len()
    );
    assert_eq!(
        net.envoy_stat_in(
            server,
            &format!("listener.0.0.0.0_{INBOUND_CAPTURE_PORT}.ssl.connection_error")
        ),
        0
    );

    // A client outside the mesh is refused, HTTP and TCP alike.
    let plain = net.get(Side::Peer, &format!("http://{server_ip}:8080/"));
    assert!(
        plain.starts_with("ERR"),
        "plaintext refused under STRICT: {plain}"
    );
    let plain_tcp = net.testapp(
        Side::Peer,
        &["call", "tcp", &format!("{server_ip}:7000"), "x"],
    );
    assert!(
        plain_tcp.starts_with("ERR"),
        "plaintext TCP refused: {plain_tcp}"
    );

    // (c) A certificate from another CA is refused; one from the mesh CA is accepted.
    let mesh_root = std::fs::read_to_string(ca_dir.join("ca.crt")).unwrap();
    let mesh_ca = CertificateAuthority::from_pem(
        &mesh_root,
        &std::fs::read_to_string(ca_dir.join("tls.key")).unwrap(),
        None,
    )
    .unwrap();
    let other_ca = CertificateAuthority::generate(DEFAULT_TRUST_DOMAIN, SystemTime::now()).unwrap();
    let addr = format!("{server_ip}:8080");
    let rogue = client_files("mtls-rogue", &other_ca, &mesh_root);
    let refused = net.testapp(Side::Peer, &["call", "mtls", &addr, &rogue]);
    assert!(
        refused.starts_with("ERR"),
        "another CA's certificate: {refused}"
    );
    let member = client_files("mtls-member", &mesh_ca, &mesh_root);
    let accepted = net.testapp(Side::Peer, &["call", "mtls", &addr, &member]);
    assert!(
        accepted.starts_with("200 api HTTP/1.1") && accepted.contains(CLIENT_ID),
        "a mesh certificate: {accepted}"
    );

    // (b) PERMISSIVE for the server pod: the plain client gets through, the mesh client still
    // speaks mTLS.
    write_mesh(&dir, &server_ip, &[(MTLS_MODE_KEY, "PERMISSIVE")]);
    net.wait_for("PERMISSIVE to admit a plain client", || {
        net.get(Side::Peer, &format!("http://{server_ip}:8080/")) == "200 api HTTP/1.1"
    });
    let answer = net.get(Side::Pod, HTTP_URL);
    assert!(answer.contains(&format!("URI={CLIENT_ID}")), "{answer}");
    let plain_tcp = net.testapp(
        Side::Peer,
        &["call", "tcp", &format!("{server_ip}:7000"), "hello"],
    );
    assert_eq!(plain_tcp, "api: hello");
    // The capture sees plaintext when there is some: the plain client's request.
    let captured = std::fs::read(&wire).unwrap();
    assert!(contains(&captured, b"GET /"), "the capture sees plain HTTP");

    // Private keys go only to the proxy that owns them: not into the admin views.
    for path in ["/status", "/debug/proxies", "/debug/config?node=web.shop"] {
        let text = net.fetch(Side::Peer, &format!("http://127.0.0.1:15099{path}"));
        assert!(
            !text.starts_with("ERR") && !text.is_empty(),
            "{path}: {text}"
        );
        assert!(!text.contains("PRIVATE KEY"), "{path} shows a key");
    }
}

#[test]
fn renewals_and_a_ca_rotation_under_load_fail_no_request() {
    if !can_run("renewals_and_a_ca_rotation_under_load_fail_no_request") {
        return;
    }
    let mut net = Net::new("rot");
    let (dir, ca_dir) = (scratch_dir("rot-mesh"), scratch_dir("rot-ca"));
    write_file(
        &dir,
        "mesh.yaml",
        "apiVersion: weir.dev/v1alpha1\nkind: MeshIdentity\nmetadata: {name: mesh}\nspec:\n  workloadCertTTL: 1m\n",
    )
    .unwrap();
    let server = start(&mut net, &dir, &ca_dir, &["--ca-rotation-step", "5s"]);
    net.wait_for("the client's route to the server", || {
        net.get(Side::Pod, HTTP_URL).starts_with("200 ")
    });
    let issued = || net.operator_metric("weir_certificates_issued_total");
    // Two workloads; the client and server certificates count from here.
    let start_issued = issued();

    // Continuous requests: HTTP (pooled upstream connections) and TCP (a new mTLS handshake
    // for every call), until stopped.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let load = {
        let (stop, sent, failed, failures) =
            (stop.clone(), sent.clone(), failed.clone(), failures.clone());
        let (pod_ns, app) = (
            net.name(Side::Pod).to_string(),
            weir_tests::workspace_binary("weir-testapp").unwrap(),
        );
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let line = format!("call-{n}");
                let out = std::process::Command::new("ip")
                    .args(["netns", "exec", &pod_ns])
                    .arg(&app)
                    .args(["call", "tcp", &format!("{API_IP}:7000"), &line])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                    .unwrap_or_default();
                sent.fetch_add(1, Ordering::SeqCst);
                if out != format!("api: {line}") {
                    failed.fetch_add(1, Ordering::SeqCst);
                    failures.lock().unwrap().push(out);
                }
            }
        })
    };
    let http_ok = |net: &Net| net.get(Side::Pod, HTTP_URL).starts_with("200 api");
    let mut http_failed = 0;
    let mut http_sent = 0;
    let mut until = |net: &Net, what: &str, done: &dyn Fn() -> bool| {
        let end = std::time::Instant::now() + Duration::from_secs(120);
        while !done() {
            assert!(
                std::time::Instant::now() < end,
                "timed out waiting for {what}"
            );
            http_sent += 1;
            if !http_ok(net) {
                http_failed += 1;
            }
        }
    };

    // Renewal at about half of the 60 s life: both workloads re-issued.
    until(&net, "a round of renewals", &|| {
        issued() >= start_issued + 2
    });
    // A CA rotation: the files replaced as cert-manager would (key and root, then the
    // certificate that makes the set complete).
    let before_rotation = issued();
    let new_ca = CertificateAuthority::generate(DEFAULT_TRUST_DOMAIN, SystemTime::now()).unwrap();
    let old_root = std::fs::read_to_string(ca_dir.join("ca.crt")).unwrap();
    write_file(&ca_dir, "tls.key", new_ca.key().pem()).unwrap();
    write_file(&ca_dir, "ca.crt", &new_ca.roots_pem).unwrap();
    write_file(&ca_dir, "tls.crt", &new_ca.cert_pem).unwrap();
    until(&net, "every workload re-issued by the new CA", &|| {
        issued() >= before_rotation + 2
    });
    // And one more renewal after the rotation ended.
    let after_rotation = issued();
    until(&net, "a renewal after the rotation", &|| {
        issued() >= after_rotation + 2
    });
    stop.store(true, Ordering::SeqCst);
    load.join().unwrap();
    let (sent, failed) = (sent.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    eprintln!(
        "rotation under load: {sent} TCP calls ({failed} failed), {http_sent} HTTP calls ({http_failed} failed), {} certificates issued",
        issued() - start_issued
    );
    assert!(
        sent >= 50 && http_sent >= 50,
        "enough load: {sent} TCP, {http_sent} HTTP"
    );
    assert_eq!(
        failed,
        0,
        "failed TCP calls: {:?}",
        failures.lock().unwrap()
    );
    assert_eq!(http_failed, 0, "failed HTTP calls");

    // The server now presents the new CA's certificate: the old root alone does not verify
    // it, the new one does.
    let member_old = client_files("rot-old", &new_ca, &old_root);
    let out = net.testapp(
        Side::Peer,
        &[
            "call",
            "mtls",
            &format!("{}:8080", net.ip(server)),
            &member_old,
        ],
    );
    assert!(
        out.starts_with("ERR"),
        "verified against the old root only: {out}"
    );
    let member_new = client_files("rot-new", &new_ca, &new_ca.roots_pem);
    let out = net.testapp(
        Side::Peer,
        &[
            "call",
            "mtls",
            &format!("{}:8080", net.ip(server)),
            &member_new,
        ],
    );
    assert!(
        out.starts_with("200 api"),
        "verified against the new root: {out}"
    );

    // Both proxies started before the rotation and mount only the old root, yet reconnect
    // to a restarted operator, whose certificate comes from the new CA: it is served with
    // the link from the new CA to the old root, kept in the CA directory.
    net.restart_operator();
    net.wait_for("both proxies to reconnect", || {
        net.operator_metric("weir_xds_connected_proxies") == 2
    });
    net.wait_for("traffic after the restart", || {
        net.get(Side::Pod, HTTP_URL).starts_with("200 api")
    });
}
