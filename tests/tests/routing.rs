//! Routing by TrafficPolicy through real Envoy: weighted splits, matches, rule order,
//! timeouts and retries.

use std::time::Duration;
use weir_core::bootstrap::XdsProtocol;
use weir_core::mesh::{PROMETHEUS_PATH, PROXY_READY_PATH};
use weir_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_80_20_split_lands_within_4_points() -> anyhow::Result<()> {
    let (mesh, _v1, _v2) = Mesh::with_reviews(None).await?;
    mesh.write(
        "policy.yaml",
        &split_policy_yaml("reviews", "reviews", &[("v1", 80), ("v2", 20)]),
    )?;
    let envoy = Envoy::start("split", mesh.plane.xds_addr, XdsProtocol::Delta).await?;
    // The policy is in place once v2 answers at all and v1 still does.
    eventually("both subsets to answer", DEADLINE, || async {
        let c = envoy.send(40, "reviews:9080", "/", &[]).await.ok()?;
        (c.contains_key("reviews-v1") && c.contains_key("reviews-v2")).then_some(())
    })
    .await?;
    let counts = envoy.send(2000, "reviews:9080", "/", &[]).await?;
    let v1 = share(&counts, "reviews-v1");
    println!("80/20 split over 2000 requests: {counts:?} -> v1 {v1:.1}%");
    assert_eq!(counts.values().sum::<usize>(), 2000);
    assert!(
        (v1 - 80.0).abs() <= 4.0,
        "v1 got {v1:.1}%, want 80±4: {counts:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_name_for_a_service_routes_to_it() -> anyhow::Result<()> {
    let (mesh, _v1, _v2) = Mesh::with_reviews(None).await?;
    let envoy = Envoy::start("names", mesh.plane.xds_addr, XdsProtocol::Delta).await?;
    for host in [
        "reviews",
        "reviews:9080",
        "reviews.default:9080",
        "reviews.default.svc:9080",
        "reviews.default.svc.cluster.local:9080",
        "reviews.default.svc.cluster.local",
        "10.96.0.10:9080",
    ] {
        let counts = envoy.send(4, host, "/", &[]).await?;
        assert!(
            counts.keys().all(|k| k.starts_with("reviews-")),
            "{host}: {counts:?}"
        );
    }
    let unknown = envoy.send(1, "ratings:9080", "/", &[]).await?;
    assert_eq!(
        unknown.keys().next().map(String::as_str),
        Some("status 404"),
        "an unknown host is not routed"
    );
    Ok(())
}

const MATCH_POLICY: &str = r#"
apiVersion: weir.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: reviews, namespace: default}
spec:
  targetRef: {service: reviews, port: 9080}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
  http:
  - name: jason-goes-to-v2
    matches:
    - headers: [{name: end-user, type: Exact, value: jason}]
    destinations: [{subset: v2}]
  - name: exact-path
    matches:
    - path: {type: Exact, value: /exact}
    destinations: [{subset: v3}]
  - name: prefix-path
    matches:
    - path: {type: Prefix, value: /api}
    destinations: [{subset: v2}]
  - name: regex-path
    matches:
    - path: {type: RegularExpression, value: "/items/[0-9]+"}
    destinations: [{subset: v3}]
  - name: delete-method
    matches:
    - method: DELETE
    destinations: [{subset: v3}]
  - name: query-and-header-prefix
    matches:
    - queryParams: [{name: beta, type: Present}]
      headers: [{name: x-team, type: Prefix, value: plat}]
    destinations: [{subset: v2}]
  - name: shadowed-by-the-first-rule
    matches:
    - headers: [{name: end-user, type: Exact, value: jason}]
    destinations: [{subset: v3}]
  - name: everything-else
    destinations: [{subset: v1}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matches_route_as_declared_and_in_order() -> anyhow::Result<()> {
    let (mesh, _v1, _v2) = Mesh::with_reviews(None).await?;
    let _v3 = mesh
        .add_backend("reviews", "v3", Behavior::default())
        .await?;
    mesh.write("policy.yaml", MATCH_POLICY)?;
    let envoy = Envoy::start("matches", mesh.plane.xds_addr, XdsProtocol::Sotw).await?;
    let client = reqwest::Client::new();
    let only = |counts: std::collections::BTreeMap<String, usize>| {
        (counts.len() == 1).then(|| counts.into_keys().next().unwrap_or_default())
    };
    eventually("the match policy to be applied", DEADLINE, || async {
        let c = envoy.send(1, "reviews:9080", "/exact", &[]).await.ok()?;
        c.contains_key("reviews-v3").then_some(())
    })
    .await?;

    let h = "reviews:9080";
    // (method, path, headers, the backend that must answer)
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("GET", "/", &[("end-user", "jason")], "reviews-v2"),
        ("GET", "/", &[("end-user", "JASON")], "reviews-v1"),
        ("GET", "/exact", &[], "reviews-v3"),
        ("GET", "/exact/more", &[], "reviews-v1"),
        ("GET", "/api", &[], "reviews-v2"),
        ("GET", "/api/users", &[], "reviews-v2"),
        ("GET", "/apis", &[], "reviews-v1"),
        ("GET", "/items/42", &[], "reviews-v3"),
        ("GET", "/items/abc", &[], "reviews-v1"),
        ("DELETE", "/", &[], "reviews-v3"),
        ("GET", "/?beta", &[("x-team", "platform")], "reviews-v2"),
        ("GET", "/?beta", &[("x-team", "web")], "reviews-v1"),
        ("GET", "/", &[("x-team", "platform")], "reviews-v1"),
    ];
    for (method, path, headers, want) in cases {
        for _ in 0..20 {
            let got = envoy.request(&client, method, h, path, headers).await?;
            assert_eq!(&got, want, "{method} {path} {headers:?}");
        }
    }
    // Header matches apply to every request that carries the header, whatever else it asks.
    let jason = envoy
        .send(200, h, "/items/7", &[("end-user", "jason")])
        .await?;
    assert_eq!(
        only(jason).as_deref(),
        Some("reviews-v2"),
        "the first matching rule wins"
    );
    Ok(())
}

const RESILIENCE_POLICY: &str = r#"
apiVersion: weir.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: slow, namespace: default}
spec:
  targetRef: {service: slow}
  http:
  - name: short-timeout
    matches: [{path: {type: Prefix, value: /}}]
    timeout: 300ms
    destinations: [{}]
---
apiVersion: weir.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: flaky, namespace: default}
spec:
  targetRef: {service: flaky}
  http:
  - name: retry-5xx
    retries: {attempts: 2, perTryTimeout: 1s, retryOn: [5xx]}
    destinations: [{}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_backend_times_out_and_a_flaky_one_is_retried() -> anyhow::Result<()> {
    let mesh = Mesh::start().await?;
    mesh.add_service("slow", "10.96.0.20", 8080)?;
    mesh.add_service("flaky", "10.96.0.21", 8080)?;
    mesh.add_service("flaky-no-policy", "10.96.0.22", 8080)?;
    let slow = mesh
        .add_backend(
            "slow",
            "v1",
            Behavior {
                delay: Some(Duration::from_secs(3)),
                ..Default::default()
            },
        )
        .await?;
    let flaky = mesh
        .add_backend(
            "flaky",
            "v1",
            Behavior {
                fail_first: 1,
                ..Default::default()
            },
        )
        .await?;
    let _control = mesh
        .add_backend(
            "flaky-no-policy",
            "v1",
            Behavior {
                fail_first: 1,
                ..Default::default()
            },
        )
        .await?;
    mesh.write("policy.yaml", RESILIENCE_POLICY)?;
    let envoy = Envoy::start("resilience", mesh.plane.xds_addr, XdsProtocol::Delta).await?;
    eventually("both policies to be programmed", DEADLINE, || async {
        let conditions = [
            mesh.policy_conditions("slow").await.ok()?,
            mesh.policy_conditions("flaky").await.ok()?,
        ];
        conditions
            .iter()
            .all(|c| {
                c.iter()
                    .any(|c| c["type"] == "Programmed" && c["status"] == true)
            })
            .then_some(())
    })
    .await?;

    let client = reqwest::Client::new();
    let started = std::time::Instant::now();
    let got = envoy.request(&client, "GET", "slow:8080", "/", &[]).await?;
    let took = started.elapsed();
    assert_eq!(got, "status 504", "the route timeout answers 504");
    assert!(
        took < Duration::from_secs(3),
        "the timeout cut the request short ({took:?})"
    );
    assert_eq!(slow.hits.load(std::sync::atomic::Ordering::SeqCst), 1);

    let got = envoy
        .request(&client, "GET", "flaky:8080", "/", &[])
        .await?;
    assert_eq!(got, "flaky-v1", "the 503 of the first attempt was retried");
    assert_eq!(
        flaky.hits.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "one failure, one retry"
    );

    let got = envoy
        .request(&client, "GET", "flaky-no-policy:8080", "/", &[])
        .await?;
    assert_eq!(
        got, "status 503",
        "without a retry policy the failure reaches the client"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_probe_listener_forwards_app_probes_and_reports_readiness() -> anyhow::Result<()>
{
    use weir_core::bootstrap::{GrpcProbeRoute, ProbeRoute, SidecarListeners};
    use weir_tests::apps::{check_health, serve_grpc, EchoServer, SERVING};
    let mesh = Mesh::start().await?;
    let app = Backend::start("app", Behavior::default()).await?;
    let grpc_app = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let grpc_port = grpc_app.local_addr()?.port();
    let grpc_server = EchoServer::new("grpc-app", 0);
    tokio::spawn(serve_grpc(grpc_server, grpc_app));
    let (probe_port, prometheus_port, grpc_probe_port) = (free_port(), free_port(), free_port());
    let sidecar = SidecarListeners {
        probe_port,
        prometheus_port,
        probes: vec![ProbeRoute {
            path: "/app-health/web/livez".into(),
            app_port: app.addr.port(),
            app_path: "/healthz".into(),
        }],
        grpc_probes: vec![GrpcProbeRoute {
            listen_port: grpc_probe_port,
            app_port: grpc_port,
        }],
    };
    let envoy = Envoy::start_sidecar("probes", mesh.plane.xds_addr, sidecar).await?;
    let client = reqwest::Client::new();
    let ready = client
        .get(format!("http://127.0.0.1:{probe_port}{PROXY_READY_PATH}"))
        .send()
        .await?;
    assert_eq!(
        ready.status(),
        200,
        "Envoy is ready, so its readiness path says so"
    );
    let live = client
        .get(format!(
            "http://127.0.0.1:{probe_port}/app-health/web/livez"
        ))
        .send()
        .await?;
    assert_eq!(live.status(), 200);
    assert_eq!(
        live.text().await?.lines().next(),
        Some("app"),
        "the probe reached the application"
    );
    assert_eq!(app.hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    let unknown = client
        .get(format!(
            "http://127.0.0.1:{probe_port}/app-health/other/livez"
        ))
        .send()
        .await?;
    assert_eq!(unknown.status(), 404);
    // The kubelet's gRPC probe, rewritten to the sidecar's port, reaches the application
    // over HTTP/2 and gets its answer.
    let status = check_health(format!("127.0.0.1:{grpc_probe_port}").parse()?, "").await?;
    assert_eq!(
        status, SERVING,
        "the gRPC health check went through the sidecar"
    );
    let metrics = client
        .get(format!(
            "http://127.0.0.1:{prometheus_port}{PROMETHEUS_PATH}"
        ))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("envoy_server_live"),
        "Prometheus text from Envoy's admin"
    );
    envoy.stop().await;
    Ok(())
}
