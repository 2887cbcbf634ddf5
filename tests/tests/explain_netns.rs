//! `kubectl weir explain` against real Envoy, differentially: a mesh in network namespaces
//! (`weir-operator local` on a directory, injected sidecars from the injector's bootstraps,
//! real iptables), a few hundred generated requests (methods, paths, queries, headers, gRPC
//! methods) from two callers, and for each what `kubectl-weir explain -f DIR -o json`
//! predicts (forwarded to which subset, 403, 503, a fault's status) against what happened,
//! counted at the backends.
//!
//! Service `shop/reviews` (ClusterIP, `http` 8080 and `grpc` 50051, STRICT mTLS) has three
//! pods: `reviews-v1` and `reviews-v2` (ready, each in a host of its own answering with its
//! name), `reviews-v3` (not ready). Its TrafficPolicy has a gRPC method rule, a fault, a
//! header rule, a prefix rule to the unready subset, an exact path with a method, a
//! query-parameter rule, a regex, a 50/50 split and a catch-all, and authorization
//! (`defaultDeny`, shop allowed, `other/robot` only for GET, `/private` denied to all).

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};
use weir_core::testing::{mk_meshed_pod, mk_slice};
use weir_tests::netns::*;
use weir_tests::{scratch_dir, service_with_ports, to_yaml, workspace_binary, write_file};

const REVIEWS_IP: &str = "10.96.3.10";
const REVIEWS_HOST: &str = "reviews.shop.svc.cluster.local";
const REVIEWS_NAMES: &str = "reviews.shop.svc.cluster.local reviews.shop.svc reviews.shop";
/// The address of the pod that is not ready (no host: nothing may reach it).
const V3_IP: &str = "10.203.0.99";

/// Reads requests (JSON lines `[method, url, [header lines]]`) from standard input and
/// prints one line per request: `<status> <first line of the body>`, or `ERR <why>`.
const BATCH_CLIENT: &str = r#"
import http.client, json, sys, urllib.parse
for line in sys.stdin:
    method, url, headers = json.loads(line)
    u = urllib.parse.urlsplit(url)
    path = (u.path or "/") + ("?" + u.query if u.query else "")
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=5)
    try:
        hdrs = dict((h.split(":", 1)[0].strip(), h.split(":", 1)[1].strip()) for h in headers)
        body = b"" if method in ("POST", "PUT", "PATCH") else None
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        lines = resp.read().decode(errors="replace").splitlines()
        print(resp.status, lines[0] if lines else "", flush=True)
    except Exception as err:
        print(f"ERR {type(err).__name__}: {err}", flush=True)
    finally:
        conn.close()
"#;

const POLICY: &str = r#"apiVersion: weir.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: reviews-routes, namespace: shop}
spec:
  targetRef: {service: reviews}
  connectionPool: {maxRequestsPerConnection: 1}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
  http:
  - name: grpc-other
    matches: [{grpc: {service: weir.test.Echo, method: Other}}]
    destinations: [{subset: v2}]
  - name: teapot
    matches: [{headers: [{name: x-fault, type: Exact, value: abort}]}]
    fault: {abort: {httpStatus: 418, percent: 100}}
    destinations: [{subset: v1}]
  - name: canary
    matches: [{headers: [{name: x-canary, type: Exact, value: "yes"}]}]
    destinations: [{subset: v2}]
  - name: beta
    matches: [{path: {type: Prefix, value: /beta}}]
    destinations: [{subset: v3}]
  - name: admin-post
    matches: [{path: {type: Exact, value: /admin}, method: POST}]
    destinations: [{subset: v2}]
  - name: debug-query
    matches: [{queryParams: [{name: debug, type: Present}]}]
    destinations: [{subset: v2}]
  - name: items
    matches: [{path: {type: RegularExpression, value: "/items/[0-9]+"}}]
    destinations: [{subset: v2}]
  - name: split
    matches: [{path: {type: Prefix, value: /split}}]
    destinations:
    - {subset: v1, weight: 50}
    - {subset: v2, weight: 50}
  - name: rest
    destinations: [{subset: v1}]
  authorization:
    defaultDeny: true
    allow:
    - {name: shop, namespaces: [shop]}
    - {name: robot-reads, serviceAccounts: [other/robot], methods: [GET]}
    deny:
    - {name: no-private, paths: [/private]}
"#;

/// One generated request.
#[derive(Debug, Clone)]
enum Request {
    Http {
        method: &'static str,
        path: &'static str,
        headers: Vec<&'static str>,
    },
    Grpc(&'static str),
}

/// What a request got, in the terms explain predicts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Seen {
    /// Served by the pod of this subset.
    Forwarded(String),
    /// An HTTP status (or gRPC status name) from the mesh.
    Status(String),
}

fn every_request() -> Vec<Request> {
    let methods = ["GET", "POST", "DELETE"];
    let paths = [
        "/",
        "/beta",
        "/beta/x",
        "/betax",
        "/admin",
        "/admin/x",
        "/split",
        "/split/a",
        "/items/12",
        "/items/ab",
        "/private/x",
        "/x?debug=1",
        "/x?debugging=1",
        "/privatex",
    ];
    let headers: [&[&str]; 4] = [
        &[],
        &["x-canary: yes"],
        &["x-canary: no"],
        &["x-fault: abort"],
    ];
    let mut out = Vec::new();
    for method in methods {
        for path in paths {
            for h in headers {
                out.push(Request::Http {
                    method,
                    path,
                    headers: h.to_vec(),
                });
            }
        }
    }
    out.extend([Request::Grpc("Say"), Request::Grpc("Other")]);
    out
}

struct Caller {
    name: &'static str,
    pod: &'static str,
    side: Side,
}

#[test]
fn explain_predicts_what_envoy_does_for_generated_requests() {
    if !can_run("explain_predicts_what_envoy_does_for_generated_requests") {
        return;
    }
    let mut net = Net::new("explain");
    let (v1, v2, robot) = (net.add_host(), net.add_host(), net.add_host());
    let dir = scratch_dir("explain-mesh");
    let ca_dir = scratch_dir("explain-ca");
    let script = scratch_dir("explain-client").join("client.py");
    std::fs::write(&script, BATCH_CLIENT).unwrap();
    write_mesh(&dir, &net.ip(v1), &net.ip(v2));
    net.start_operator(&dir, &ca_dir, &[]);
    for (side, name) in [(v1, "reviews-v1"), (v2, "reviews-v2")] {
        net.serve_app(side, &["http", name, "0.0.0.0:8080"]);
        net.serve_app(side, &["grpc", name, "0.0.0.0:50051"]);
        net.start_sidecar(side, &pod("shop", name, "reviews"), &ca_dir);
    }
    let callers = [
        Caller {
            name: "shop/web",
            pod: "shop/web",
            side: Side::Pod,
        },
        Caller {
            name: "other/robot",
            pod: "other/robot",
            side: robot,
        },
    ];
    for c in &callers {
        let (ns, name) = c.pod.split_once('/').unwrap();
        net.start_sidecar(c.side, &pod(ns, name, name), &ca_dir);
        net.hosts(c.side, &[(REVIEWS_IP, REVIEWS_NAMES)]);
    }
    let cli = workspace_binary("kubectl-weir").expect("kubectl-weir is built");
    let testapp = workspace_binary("weir-testapp").unwrap();

    // The policy is in force everywhere once the canary header reaches v2 and the robot's
    // POST is denied.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let probe = |c: &Caller, method: &'static str, headers: Vec<&'static str>| {
            http_batch(
                &net,
                c.side,
                &script,
                &[Request::Http {
                    method,
                    path: "/",
                    headers,
                }],
            )
            .remove(0)
        };
        let canary = probe(&callers[0], "GET", vec!["x-canary: yes"]);
        let denied = probe(&callers[1], "POST", vec![]);
        if canary.starts_with("200 reviews-v2") && denied.starts_with("403") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the mesh never applied the policy: canary {canary:?}, robot POST {denied:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let requests = every_request();
    let mut total = 0;
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut wrong = Vec::new();
    for c in &callers {
        let http: Vec<Request> = requests
            .iter()
            .filter(|r| matches!(r, Request::Http { .. }))
            .cloned()
            .collect();
        let mut seen_lines = http_batch(&net, c.side, &script, &http);
        for r in requests.iter().filter(|r| matches!(r, Request::Grpc(_))) {
            let Request::Grpc(method) = r else {
                unreachable!()
            };
            let out = net
                .command(c.side, &["timeout", "20"])
                .arg(&testapp)
                .args([
                    "call",
                    "grpc",
                    &format!("{REVIEWS_IP}:50051"),
                    &format!("{REVIEWS_HOST}:50051"),
                    method,
                ])
                .output()
                .unwrap();
            seen_lines.push(String::from_utf8_lossy(&out.stdout).trim().to_string());
        }
        let ordered: Vec<&Request> = http
            .iter()
            .chain(requests.iter().filter(|r| matches!(r, Request::Grpc(_))))
            .collect();
        for (request, line) in ordered.into_iter().zip(seen_lines) {
            total += 1;
            let seen = classify(&line);
            let predicted = predict(&cli, &dir, c.pod, request);
            let kind = match &seen {
                Seen::Forwarded(s) => format!("forwarded to {s}"),
                Seen::Status(s) => format!("answered {s}"),
            };
            *outcomes.entry(kind).or_default() += 1;
            if !predicted.contains(&seen) {
                wrong.push(format!(
                    "{} {request:?}: Envoy gave {line:?} ({seen:?}), explain predicted {predicted:?}",
                    c.name
                ));
            }
        }
    }
    eprintln!(
        "explain differential: {total} requests, outcomes {outcomes:?}, {} wrong",
        wrong.len()
    );
    assert!(total >= 200, "a few hundred requests, not {total}");
    assert!(
        outcomes.len() >= 6,
        "the mesh exercises forwarding to each subset, 403, 503 and the fault: {outcomes:?}"
    );
    assert!(
        wrong.is_empty(),
        "{} of {total} predictions wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );

    // The human form names the rule that decided and why the earlier ones did not.
    let text = run_cli(
        &cli,
        &dir,
        &["explain", "shop/web", "reviews:8080", "--path", "/beta/x"],
    );
    assert!(
        text.contains("MATCH") && text.contains("rule beta"),
        "{text}"
    );
    assert!(text.contains("rule canary: header x-canary"), "{text}");
    assert!(text.contains("no_healthy_upstream"), "{text}");
    assert!(text.contains("NOT READY"), "{text}");
}

/// The mesh's objects: Services, pods (v3 not ready), slices, namespaces, the policy.
fn write_mesh(dir: &Path, v1_ip: &str, v2_ip: &str) {
    let svc = service_with_ports(
        "shop",
        "reviews",
        REVIEWS_IP,
        &[("http", 8080, None), ("grpc", 50051, Some("grpc"))],
    );
    let mut objects = vec![to_yaml(&[svc])];
    for (name, version, ip, ready) in [
        ("reviews-v1", "v1", v1_ip, true),
        ("reviews-v2", "v2", v2_ip, true),
        ("reviews-v3", "v3", V3_IP, false),
    ] {
        let pod = mk_meshed_pod(
            "shop",
            name,
            "reviews",
            &[("app", "reviews"), ("version", version)],
        );
        objects.push(to_yaml(&[pod]));
        for (port_name, port) in [("http", 8080), ("grpc", 50051)] {
            let mut slice = mk_slice(
                "shop",
                &format!("reviews-{name}-{port_name}"),
                "reviews",
                port_name,
                port,
                &[(ip, name)],
            );
            if let Some(c) = slice.endpoints[0].conditions.as_mut() {
                c.ready = Some(ready);
            }
            objects.push(to_yaml(&[slice]));
        }
    }
    for (ns, name) in [("shop", "web"), ("other", "robot")] {
        objects.push(to_yaml(&[mk_meshed_pod(ns, name, name, &[("app", name)])]));
    }
    for ns in ["shop", "other"] {
        objects.push(format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n"
        ));
    }
    write_file(dir, "mesh.yaml", &objects.join("---\n")).unwrap();
    write_file(dir, "policy.yaml", POLICY).unwrap();
}

fn pod(ns: &str, name: &str, sa: &str) -> k8s_openapi::api::core::v1::Pod {
    serde_saphyr::from_str(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  serviceAccountName: {sa}\n  containers: [{{name: app, image: app:1}}]\n"
    ))
    .unwrap()
}

/// Sends the HTTP requests one connection each from `side` (through its sidecar).
fn http_batch(net: &Net, side: Side, script: &Path, requests: &[Request]) -> Vec<String> {
    let input: String = requests
        .iter()
        .map(|r| match r {
            Request::Http {
                method,
                path,
                headers,
            } => format!(
                "{}\n",
                serde_json::json!([method, format!("http://{REVIEWS_HOST}:8080{path}"), headers])
            ),
            Request::Grpc(_) => unreachable!("HTTP only"),
        })
        .collect();
    let script = script.to_string_lossy();
    let lines: Vec<String> = net
        .run_with_input(side, &["timeout", "120", "python3", &script], &input)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        lines.len(),
        requests.len(),
        "one answer per request: {lines:?}"
    );
    lines
}

/// What a client's line says happened.
fn classify(line: &str) -> Seen {
    let mut words = line.split_whitespace();
    match (words.next(), words.next()) {
        (Some("200"), Some(body)) if body.starts_with("reviews-") => {
            Seen::Forwarded(body.trim_start_matches("reviews-").to_string())
        }
        (Some(server), Some(_)) if server.starts_with("reviews-") => {
            Seen::Forwarded(server.trim_start_matches("reviews-").to_string())
        }
        (Some("STATUS"), Some(code)) => Seen::Status(code.to_string()),
        (Some(status), _) => Seen::Status(status.to_string()),
        _ => Seen::Status(line.to_string()),
    }
}

/// What explain predicts, as the set of outcomes with a share above zero.
fn predict(cli: &Path, dir: &Path, from: &str, request: &Request) -> Vec<Seen> {
    let mut args: Vec<String> = vec!["explain".into(), from.into()];
    match request {
        Request::Http {
            method,
            path,
            headers,
        } => {
            args.extend([
                "reviews.shop:8080".into(),
                "-X".into(),
                method.to_string(),
                "--path".into(),
                path.to_string(),
            ]);
            for h in headers {
                args.extend(["-H".into(), h.to_string()]);
            }
        }
        Request::Grpc(method) => {
            args.extend([
                "reviews.shop:50051".into(),
                "--grpc".into(),
                format!("weir.test.Echo/{method}"),
            ]);
        }
    }
    args.extend(["-o".into(), "json".into()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let json: Value = serde_json::from_str(&run_cli(cli, dir, &refs)).expect("explain prints JSON");
    let grpc = matches!(request, Request::Grpc(_));
    json["outcome"]
        .as_array()
        .expect("an outcome")
        .iter()
        .filter(|s| s["percent"].as_f64().unwrap_or(0.0) > 0.0)
        .map(|s| match s["result"].as_str().unwrap() {
            "forwarded" => Seen::Forwarded(s["subset"].as_str().unwrap_or("").to_string()),
            _ if grpc => Seen::Status(grpc_name(s["grpc_status"].as_u64())),
            _ => Seen::Status(s["status"].as_u64().map_or("ERR".into(), |c| c.to_string())),
        })
        .collect()
}

/// tonic's name of a gRPC status code, as `weir-testapp call grpc` prints it.
fn grpc_name(code: Option<u64>) -> String {
    match code {
        Some(7) => "PermissionDenied",
        Some(14) => "Unavailable",
        Some(2) => "Unknown",
        _ => "?",
    }
    .into()
}

fn run_cli(cli: &Path, dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(cli)
        .args(args)
        .arg("-f")
        .arg(dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("run kubectl-weir");
    assert!(
        out.status.code().is_some_and(|c| c < 2),
        "kubectl-weir {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
