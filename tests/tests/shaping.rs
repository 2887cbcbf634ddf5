//! Resilience and traffic shaping through real Envoy: circuit breaking, retry budgets,
//! outlier detection, ring hash and least-request balancing, local rate limits, fault
//! injection and mirroring. Every figure is counted (at the backends or in Envoy's stats),
//! never timed, except where a fault's own delay is the behaviour (as a lower bound).

use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use weir_core::bootstrap::XdsProtocol;
use weir_core::mesh::RATE_LIMITED_HEADER;
use weir_tests::*;

/// A TrafficPolicy named after its target; `spec` is YAML under `spec:` (indented by 2).
fn policy(target: &str, spec: &str) -> String {
    format!(
        "apiVersion: weir.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: {target}, namespace: default}}\nspec:\n  targetRef: {{service: {target}}}\n{spec}"
    )
}

/// A mesh with Service `svc` at `ip`:8080, a backend per (version, behavior), the policy,
/// and an explicit-capture Envoy that has it programmed.
async fn setup(
    svc: &str,
    ip: &str,
    backends: &[(&str, Behavior)],
    spec: &str,
) -> Result<(Mesh, Vec<Backend>, Envoy)> {
    let mesh = Mesh::start().await?;
    mesh.add_service(svc, ip, 8080)?;
    let mut started = Vec::new();
    for (version, behavior) in backends {
        started.push(mesh.add_backend(svc, version, behavior.clone()).await?);
    }
    mesh.write("policy.yaml", &policy(svc, spec))?;
    let envoy = Envoy::start(svc, mesh.plane.xds_addr, XdsProtocol::Delta).await?;
    programmed(&mesh, svc).await?;
    Ok((mesh, started, envoy))
}

async fn programmed(mesh: &Mesh, name: &str) -> Result<()> {
    eventually(&format!("policy {name} programmed"), DEADLINE, || async {
        let conditions = mesh.policy_conditions(name).await.ok()?;
        let accepted = conditions
            .iter()
            .any(|c| c["type"] == "Accepted" && c["status"] == true);
        let programmed = conditions
            .iter()
            .any(|c| c["type"] == "Programmed" && c["status"] == true);
        (accepted && programmed).then_some(())
    })
    .await
}

/// One answer: status, whether Envoy marked it overloaded, a header of interest, the body's
/// first line.
struct Answer {
    status: u16,
    overloaded: bool,
    header: Option<String>,
    body: String,
}

async fn get(
    envoy: &Envoy,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    want: &str,
) -> Result<Answer> {
    get_on(envoy.outbound_port, host, path, headers, want).await
}

/// One GET through the outbound listener on `port`, read as an [`Answer`].
async fn get_on(
    port: u16,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    want: &str,
) -> Result<Answer> {
    let client = reqwest::Client::new();
    let mut req = client
        .get(format!("http://127.0.0.1:{port}{path}"))
        .header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.context("request through Envoy")?;
    let status = resp.status().as_u16();
    let overloaded = resp.headers().contains_key("x-envoy-overloaded");
    let header = resp
        .headers()
        .get(want)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp
        .text()
        .await?
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    Ok(Answer {
        status,
        overloaded,
        header,
        body,
    })
}

/// `n` requests at once, each on its own connection.
async fn concurrently(envoy: &Envoy, n: usize, host: &str, path: &str) -> Result<Vec<Answer>> {
    let port = envoy.outbound_port;
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (host, path) = (host.to_string(), path.to_string());
            tokio::spawn(async move { get_on(port, &host, &path, &[], "").await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await??);
    }
    Ok(out)
}

/// A backend that answers every request 503.
fn failing() -> Behavior {
    Behavior {
        fail_first: usize::MAX,
        ..Default::default()
    }
}

/// Waits until Envoy counts `n` healthy endpoints in the Service's cluster.
async fn healthy_endpoints(envoy: &Envoy, svc: &str, n: u64) -> Result<()> {
    let stat = format!("{}.membership_healthy", CLUSTER(svc));
    eventually(
        &format!("{n} healthy endpoints of {svc}"),
        DEADLINE,
        || async { (envoy.stat(&stat).await.ok()? == n).then_some(()) },
    )
    .await
}

const CLUSTER: fn(&str) -> String =
    |svc| format!("cluster.outbound|8080||{svc}.default.svc.cluster.local");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_circuit_breaker_sheds_what_is_over_its_limits() -> Result<()> {
    // Slow enough that all 20 requests arrive while the first is still being answered.
    let slow = Behavior {
        delay: Some(Duration::from_secs(2)),
        ..Default::default()
    };
    let (_mesh, backends, envoy) = setup(
        "breaker",
        "10.96.0.20",
        &[("v1", slow)],
        "  connectionPool: {maxConnections: 1, maxPendingRequests: 1}\n",
    )
    .await?;
    let answers = concurrently(&envoy, 20, "breaker:8080", "/").await?;
    let overloaded = answers
        .iter()
        .filter(|a| a.status == 503 && a.overloaded)
        .count();
    let served = answers.iter().filter(|a| a.status == 200).count();
    assert_eq!(overloaded + served, 20, "only served or shed");
    assert!(
        overloaded >= 15,
        "{overloaded} of 20 shed with x-envoy-overloaded"
    );
    assert_eq!(
        backends[0].peak.load(Ordering::SeqCst),
        1,
        "the backend saw more than one request at once"
    );
    assert!(
        envoy
            .stat(&format!(
                "{}.upstream_rq_pending_overflow",
                CLUSTER("breaker")
            ))
            .await?
            >= 15
    );
    envoy.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_budget_keeps_retries_from_multiplying_load() -> Result<()> {
    let failing = failing();
    let retries = "  subsets: [{name: v1, labels: {version: v1}}]\n  http:\n  - destinations: [{subset: v1}]\n    retries: {attempts: 3}\n";
    let (mesh, backends, envoy) = setup(
        "budgeted",
        "10.96.0.21",
        &[("v1", failing.clone())],
        &format!(
            "{retries}  connectionPool:\n    retryBudget: {{percent: 0, minRetryConcurrency: 0}}\n"
        ),
    )
    .await?;
    // The same Service and retries without a budget, for comparison.
    mesh.add_service("unbudgeted", "10.96.0.22", 8080)?;
    let unbounded = mesh.add_backend("unbudgeted", "v1", failing).await?;
    mesh.write("policy-2.yaml", &policy("unbudgeted", retries))?;
    programmed(&mesh, "unbudgeted").await?;

    for host in ["budgeted:8080", "unbudgeted:8080"] {
        for _ in 0..10 {
            assert_eq!(get(&envoy, host, "/", &[], "").await?.status, 503);
        }
    }
    assert_eq!(
        backends[0].hits.load(Ordering::SeqCst),
        10,
        "the budget (0%, no minimum) allows no retry"
    );
    assert_eq!(
        unbounded.hits.load(Ordering::SeqCst),
        40,
        "1 + 3 retries each"
    );
    let overflow = envoy
        .stat("cluster.outbound|8080|v1|budgeted.default.svc.cluster.local.upstream_rq_retry_overflow")
        .await?;
    assert_eq!(overflow, 10);
    envoy.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_ejects_a_failing_endpoint_and_lets_it_back() -> Result<()> {
    let failing = failing();
    let (_mesh, backends, envoy) = setup(
        "ejecting",
        "10.96.0.23",
        &[("a", Behavior::default()), ("b", Behavior::default()), ("bad", failing)],
        "  outlierDetection: {consecutiveErrors: 2, interval: 1s, baseEjectionTime: 2s, maxEjectionPercent: 50}\n",
    )
    .await?;
    let bad = &backends[2];
    let ejections = format!("{}.outlier_detection.ejections_active", CLUSTER("ejecting"));
    eventually("the failing endpoint to be ejected", DEADLINE, || async {
        get(&envoy, "ejecting:8080", "/", &[], "").await.ok()?;
        (envoy.stat(&ejections).await.ok()? == 1).then_some(())
    })
    .await?;
    let before = bad.hits.load(Ordering::SeqCst);
    let mut ok = 0;
    for _ in 0..30 {
        ok += usize::from(get(&envoy, "ejecting:8080", "/", &[], "").await?.status == 200);
    }
    assert_eq!(
        (ok, bad.hits.load(Ordering::SeqCst)),
        (30, before),
        "while ejected, the failing endpoint gets nothing and every request succeeds"
    );
    // After the ejection time it is let back (and, still failing, ejected again).
    eventually("the endpoint to get traffic again", DEADLINE, || async {
        get(&envoy, "ejecting:8080", "/", &[], "").await.ok()?;
        (bad.hits.load(Ordering::SeqCst) > before).then_some(())
    })
    .await?;
    envoy.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_hash_keeps_keys_on_their_endpoint_and_moves_few_when_one_goes() -> Result<()> {
    let versions = ["k0", "k1", "k2", "k3"];
    let backends: Vec<(&str, Behavior)> =
        versions.iter().map(|v| (*v, Behavior::default())).collect();
    let (mesh, _backends, envoy) = setup(
        "sticky",
        "10.96.0.24",
        &backends,
        "  loadBalancer: {algorithm: RingHash, consistentHash: {header: x-user}}\n",
    )
    .await?;
    // Every endpoint known to Envoy before keys are placed.
    healthy_endpoints(&envoy, "sticky", 4).await?;
    let place = |envoy: &Envoy| {
        let envoy_port = envoy.outbound_port;
        async move {
            let mut placed = BTreeMap::new();
            let client = reqwest::Client::new();
            for k in 0..100 {
                let user = format!("user{k}");
                let mut seen = std::collections::BTreeSet::new();
                for _ in 0..3 {
                    let body = client
                        .get(format!("http://127.0.0.1:{envoy_port}/"))
                        .header("host", "sticky:8080")
                        .header("x-user", &user)
                        .send()
                        .await?
                        .text()
                        .await?;
                    seen.insert(body.lines().next().unwrap_or_default().to_string());
                }
                anyhow::ensure!(seen.len() == 1, "{user} landed on {seen:?}");
                placed.insert(user, seen.into_iter().next().unwrap_or_default());
            }
            anyhow::Ok(placed)
        }
    };
    let before = place(&envoy).await?;
    let on_k3 = before.values().filter(|b| *b == "sticky-k3").count();
    assert!(on_k3 > 0 && on_k3 < 100, "keys spread: {before:?}");

    std::fs::remove_file(mesh.dir.join("ep-sticky-k3.yaml"))?;
    healthy_endpoints(&envoy, "sticky", 3).await?;
    let after = place(&envoy).await?;
    let moved = before.iter().filter(|(k, b)| after[*k] != **b).count();
    assert!(after.values().all(|b| b != "sticky-k3"));
    // The removed endpoint's keys must move; Envoy rebuilds its ring at a fixed size, so a
    // few others move too, but far from all (a modulo hash would move about 3/4).
    assert!(
        moved >= on_k3 && moved <= 50,
        "{moved} of 100 keys moved, {on_k3} were on the removed endpoint (about 1/4 should move)"
    );
    envoy.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_sends_less_to_a_slow_endpoint() -> Result<()> {
    // Far slower than the others even on a loaded machine.
    let slow = Behavior {
        delay: Some(Duration::from_secs(1)),
        ..Default::default()
    };
    // Envoy's least request compares two endpoints picked at random, so with n endpoints a
    // busy one is still picked 1/n² of the time (both picks on it): four fast endpoints
    // keep that floor at 4%, against 20% under round robin.
    let mut endpoints: Vec<(&str, Behavior)> = ["f1", "f2", "f3", "f4"]
        .iter()
        .map(|v| (*v, Behavior::default()))
        .collect();
    endpoints.push(("slow", slow));
    let (_mesh, backends, envoy) = setup(
        "busy",
        "10.96.0.25",
        &endpoints,
        "  loadBalancer: {algorithm: LeastRequest}\n",
    )
    .await?;
    healthy_endpoints(&envoy, "busy", 5).await?;
    // Eight callers at once, fifteen requests each.
    let port = envoy.outbound_port;
    let workers: Vec<_> = (0..8)
        .map(|_| {
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                for _ in 0..15 {
                    client
                        .get(format!("http://127.0.0.1:{port}/"))
                        .header("host", "busy:8080")
                        .send()
                        .await?
                        .text()
                        .await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for w in workers {
        w.await??;
    }
    let hits: Vec<usize> = backends
        .iter()
        .map(|b| b.hits.load(Ordering::SeqCst))
        .collect();
    assert_eq!(hits.iter().sum::<usize>(), 120);
    let fast_average = hits[..4].iter().sum::<usize>() as f64 / 4.0;
    assert!(
        (hits[4] as f64) * 2.0 < fast_average,
        "the slow endpoint got {} requests, the fast ones {:?} (round robin would give each 24)",
        hits[4],
        &hits[..4]
    );
    envoy.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_rate_limit_allows_its_bucket_then_answers_429() -> Result<()> {
    let (_mesh, backends, envoy) = setup(
        "limited",
        "10.96.0.26",
        &[("v1", Behavior::default())],
        // A bucket that does not refill during the test: exactly 5 pass.
        "  localRateLimit: {requests: 5, fillInterval: 1h}\n",
    )
    .await?;
    let mut answers = Vec::new();
    for _ in 0..12 {
        answers.push(get(&envoy, "limited:8080", "/", &[], RATE_LIMITED_HEADER).await?);
    }
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses[..5], [200; 5], "{statuses:?}");
    assert_eq!(statuses[5..], [429; 7], "{statuses:?}");
    assert!(answers[5..]
        .iter()
        .all(|a| a.header.as_deref() == Some("true")));
    assert_eq!(backends[0].hits.load(Ordering::SeqCst), 5);
    envoy.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_abort_and_delay_their_share_and_only_tagged_requests_when_scoped() -> Result<()> {
    let spec = "  subsets: [{name: v1, labels: {version: v1}}]
  http:
  - name: abort
    matches: [{path: {type: Prefix, value: /abort}}]
    destinations: [{subset: v1}]
    fault: {abort: {httpStatus: 503, percent: 30}}
  - name: delay
    matches: [{path: {type: Prefix, value: /delay}}]
    destinations: [{subset: v1}]
    fault: {delay: {fixedDelay: 200ms, percent: 50}}
  - name: tagged
    matches: [{path: {type: Prefix, value: /tagged}}]
    destinations: [{subset: v1}]
    fault:
      abort: {httpStatus: 418, percent: 100}
      headers: [{name: x-test-traffic, type: Exact, value: \"yes\"}]
  - name: grpc
    matches: [{path: {type: Prefix, value: /grpc}}]
    destinations: [{subset: v1}]
    fault: {abort: {grpcStatus: 14, percent: 100}}
";
    let (_mesh, _backends, envoy) =
        setup("faulty", "10.96.0.27", &[("v1", Behavior::default())], spec).await?;

    let client = reqwest::Client::new();
    let url = |path: &str| format!("http://127.0.0.1:{}{path}", envoy.outbound_port);
    let mut aborted = 0;
    for _ in 0..1000 {
        let status = client
            .get(url("/abort"))
            .header("host", "faulty:8080")
            .send()
            .await?
            .status();
        aborted += usize::from(status == 503);
    }
    assert!(
        (250..=350).contains(&aborted),
        "{aborted} of 1000 aborted (30 ± 5 points)"
    );

    let injected_before = envoy.stat("http.outbound.fault.delays_injected").await?;
    let mut slow = 0;
    for _ in 0..40 {
        let started = Instant::now();
        client
            .get(url("/delay"))
            .header("host", "faulty:8080")
            .send()
            .await?
            .text()
            .await?;
        // Envoy's timers have millisecond resolution: a 200 ms delay may end a hair early.
        slow += usize::from(started.elapsed() >= Duration::from_millis(190));
    }
    let injected =
        (envoy.stat("http.outbound.fault.delays_injected").await? - injected_before) as usize;
    assert!(
        (8..=32).contains(&injected),
        "{injected} of 40 delayed (50%)"
    );
    assert!(
        slow >= injected,
        "{injected} delays injected but only {slow} requests took 200ms"
    );

    for (tag, want) in [(None, 200), (Some("yes"), 418), (Some("no"), 200)] {
        for _ in 0..20 {
            let mut req = client.get(url("/tagged")).header("host", "faulty:8080");
            if let Some(tag) = tag {
                req = req.header("x-test-traffic", tag);
            }
            assert_eq!(
                req.send().await?.status().as_u16(),
                want,
                "x-test-traffic: {tag:?}"
            );
        }
    }

    let resp = client
        .post(url("/grpc/greeter.Greeter/Say"))
        .header("host", "faulty:8080")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .send()
        .await?;
    assert_eq!(
        resp.status().as_u16(),
        200,
        "gRPC errors travel with HTTP 200"
    );
    assert_eq!(
        resp.headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok()),
        Some("14"),
        "{:?}",
        resp.headers()
    );
    envoy.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_gets_copies_the_client_never_waits_for() -> Result<()> {
    let mesh = Mesh::start().await?;
    mesh.add_service("primary", "10.96.0.28", 8080)?;
    let primary = mesh
        .add_backend("primary", "v1", Behavior::default())
        .await?;
    // A mirror that is slow and fails.
    mesh.add_service("shadow", "10.96.0.29", 8080)?;
    let shadow = mesh
        .add_backend(
            "shadow",
            "v1",
            Behavior {
                delay: Some(Duration::from_secs(3)),
                fail_first: usize::MAX,
            },
        )
        .await?;
    mesh.write(
        "policy.yaml",
        &policy(
            "primary",
            "  subsets: [{name: v1, labels: {version: v1}}]\n  http:\n  - destinations: [{subset: v1}]\n    mirror: {service: shadow, percent: 100}\n",
        ),
    )?;
    let envoy = Envoy::start("primary", mesh.plane.xds_addr, XdsProtocol::Delta).await?;
    programmed(&mesh, "primary").await?;
    let backends = [primary];
    eventually("the mirror to receive copies", DEADLINE, || async {
        get(&envoy, "primary:8080", "/", &[], "").await.ok()?;
        (shadow.hits.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await?;
    let copies_before = shadow.hits.load(Ordering::SeqCst);
    let primary_before = backends[0].hits.load(Ordering::SeqCst);
    for _ in 0..50 {
        let answer = get(&envoy, "primary:8080", "/", &[], "").await?;
        assert_eq!((answer.status, answer.body.as_str()), (200, "primary-v1"));
    }
    // The client had every answer while copies were still being answered (3 s each).
    assert!(
        shadow.in_flight.load(Ordering::SeqCst) > 0,
        "no copy in flight after the client's 50 answers: the client waited for the mirror"
    );
    assert_eq!(backends[0].hits.load(Ordering::SeqCst) - primary_before, 50);
    eventually("nearly every request copied", DEADLINE, || async {
        (shadow.hits.load(Ordering::SeqCst) - copies_before >= 48).then_some(())
    })
    .await?;
    let host = shadow.last_host.lock().expect("host lock").clone();
    assert!(host.contains("-shadow"), "the copy's Host is {host:?}");
    envoy.stop().await;
    Ok(())
}

/// An EndpointSlice of `service` with one endpoint of pod `pod` in `zone`.
fn zoned_slice(service: &str, pod: &str, zone: &str, addr: std::net::SocketAddr) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {pod}
  namespace: default
  labels: {{kubernetes.io/service-name: {service}}}
addressType: IPv4
ports: [{{name: http, port: {port}, protocol: TCP}}]
endpoints:
- addresses: [\"{ip}\"]
  zone: {zone}
  conditions: {{ready: true}}
  targetRef: {{kind: Pod, name: {pod}, namespace: default}}
",
        ip = addr.ip(),
        port = addr.port()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_uses_its_own_zone_and_fails_over_when_it_empties() -> Result<()> {
    let mesh = Mesh::start().await?;
    mesh.add_service("zonal", "10.96.0.30", 8080)?;
    let in_a = Backend::start("zonal-a", Behavior::default()).await?;
    let in_b = Backend::start("zonal-b", Behavior::default()).await?;
    mesh.write(
        "slice-a.yaml",
        &zoned_slice("zonal", "zonal-a", "zone-a", in_a.addr),
    )?;
    mesh.write(
        "slice-b.yaml",
        &zoned_slice("zonal", "zonal-b", "zone-b", in_b.addr),
    )?;
    // The caller's pod backs a Service of its own, so its EndpointSlice says its zone (as
    // the EndpointSlice controller copies it from the pod's node).
    mesh.add_service("caller", "10.96.0.31", 8080)?;
    mesh.write(
        "slice-caller.yaml",
        &zoned_slice("caller", "caller", "zone-a", "10.9.9.9:8080".parse()?),
    )?;
    let caller = Envoy::start("caller", mesh.plane.xds_addr, XdsProtocol::Delta).await?;
    // A proxy whose zone is unknown spreads over both zones.
    let elsewhere = Envoy::start("elsewhere", mesh.plane.xds_addr, XdsProtocol::Delta).await?;

    caller.wait_all_on("zonal:8080", "zonal-a").await?;
    let spread = elsewhere.send(40, "zonal:8080", "/", &[]).await?;
    assert!(
        spread.contains_key("zonal-a") && spread.contains_key("zonal-b"),
        "a proxy without a zone uses both: {spread:?}"
    );
    let proxies = admin_json(mesh.plane.admin_addr, "/debug/proxies").await?;
    let profile = proxies
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["node"] == "caller"))
        .map(|p| p["profile"].clone());
    assert!(
        profile
            .as_ref()
            .and_then(|p| p.as_str())
            .is_some_and(|p| p.ends_with("zone zone-a")),
        "{profile:?}"
    );

    // Zone a empties: the caller fails over to zone b.
    std::fs::remove_file(mesh.dir.join("slice-a.yaml"))?;
    caller.wait_all_on("zonal:8080", "zonal-b").await?;
    // And comes back when zone a has an endpoint again.
    mesh.write(
        "slice-a.yaml",
        &zoned_slice("zonal", "zonal-a", "zone-a", in_a.addr),
    )?;
    caller.wait_all_on("zonal:8080", "zonal-a").await?;

    // Zone a's endpoint starts failing and is ejected: the caller fails over again.
    mesh.write(
        "policy.yaml",
        &policy(
            "zonal",
            "  outlierDetection: {consecutiveErrors: 1, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 50}\n",
        ),
    )?;
    programmed(&mesh, "zonal").await?;
    let failing = Backend::start("zonal-a-failing", failing()).await?;
    mesh.write(
        "slice-a.yaml",
        &zoned_slice("zonal", "zonal-a", "zone-a", failing.addr),
    )?;
    let ejections =
        "cluster.outbound|8080||zonal.default.svc.cluster.local.outlier_detection.ejections_active";
    eventually(
        "zone a's failing endpoint to be ejected",
        DEADLINE,
        || async {
            caller.send(1, "zonal:8080", "/", &[]).await.ok()?;
            (caller.stat(ejections).await.ok()? == 1).then_some(())
        },
    )
    .await?;
    let after = caller.send(20, "zonal:8080", "/", &[]).await?;
    assert_eq!(after.get("zonal-b"), Some(&20), "{after:?}");
    caller.stop().await;
    elsewhere.stop().await;
    Ok(())
}
