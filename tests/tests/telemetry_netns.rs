//! Observability through real sidecars: the request and connection metrics, the access
//! logs and the traces of a small mesh, read back from a real Prometheus (scraping with
//! the shipped scrape configuration) and a real Jaeger (receiving the sidecars' OTLP).
//!
//! Three injected pods in network namespaces of their own, with the real `weir-operator
//! local` (tracing to Jaeger at 100 %):
//!
//! | pod (workload)                      | serves                                          |
//! |-------------------------------------|-------------------------------------------------|
//! | `shop/web-7c9d8-x2k4p` (Deployment `web`) | the caller: HTTP and TCP clients              |
//! | `backend/api-5f6b7-q9z8m` (Deployment `api`) | Service `api`: `http` 8080, `tcp-echo` 7000 -> 7001 |
//! | `backend/db-0` (StatefulSet `db`, `weir.dev/access-log: all`) | Service `db`: `http` 8080 |
//!
//! Service `backend/broken` has no endpoints. The TrafficPolicy on `api` retries
//! `/status/` twice on 5xx and denies `/admin`. The application on `api` answers
//! `/status/<code>` with that code and `/call?to=<url>` by calling `<url>` with the
//! inbound `traceparent` (as an application must, for traces to join).

use std::time::{Duration, Instant};
use weir_core::testing::mk_meshed_pod;
use weir_tests::netns::*;
use weir_tests::telemetry::{self, SidecarTarget};
use weir_tests::{named_port_slices, scratch_dir, service_with_ports, to_yaml, write_file};

const API_IP: &str = "10.96.2.10";
const DB_IP: &str = "10.96.2.11";
const BROKEN_IP: &str = "10.96.2.12";
const API: &str = "api.backend.svc.cluster.local";
const DB: &str = "db.backend.svc.cluster.local";
const BROKEN: &str = "broken.backend.svc.cluster.local";
const WEB_ID: &str = "spiffe://cluster.local/ns/shop/sa/web";
const API_ID: &str = "spiffe://cluster.local/ns/backend/sa/api";
const TCP_LINE: &str = "telemetry-probe";
/// How long metrics may take to show: a flush (histograms: 5 s), a scrape.
const DEADLINE: Duration = Duration::from_secs(45);

/// The applications: `serve NAME PORT` (HTTP, see the module docs) and the client,
/// `get N URL [HOST]` (N requests, one connection each; prints each status) and
/// `tcp HOST PORT LINE` (prints the answer line).
const APP: &str = r#"
import http.client, http.server, socket, sys, urllib.parse

PROPAGATED = ("traceparent", "tracestate", "x-request-id")

def serve(name, port):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_GET(self):
            code, body = 200, f"{name} {self.path}"
            if self.path.startswith("/status/"):
                code = int(self.path.split("/")[2])
            elif self.path.startswith("/call?to="):
                url = urllib.parse.unquote(self.path[len("/call?to="):])
                headers = {h: self.headers[h] for h in PROPAGATED if self.headers.get(h)}
                status, text = get(url, headers)
                code, body = (200 if status == 200 else 502), f"{name} -> {status} {text}"
            data = (body + "\n").encode()
            self.send_response(code)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        def log_message(self, *args):
            pass
    http.server.ThreadingHTTPServer(("0.0.0.0", int(port)), Handler).serve_forever()

def get(url, headers):
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=10)
    try:
        conn.request("GET", (u.path or "/") + ("?" + u.query if u.query else ""), headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace").strip()
    except Exception as err:
        return 0, f"ERR {err}"
    finally:
        conn.close()

def tcp(host, port, line):
    try:
        sock = socket.create_connection((host, int(port)), timeout=5)
    except OSError as err:
        print(f"ERR {err}")
        return
    with sock:
        sock.sendall(line.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        print(data.decode().strip())

if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "get":
        headers = {"Host": sys.argv[4]} if len(sys.argv) > 4 else {}
        for _ in range(int(sys.argv[2])):
            print(get(sys.argv[3], headers)[0])
    else:
        tcp(sys.argv[2], sys.argv[3], sys.argv[4])
"#;

/// A pod of a Deployment's ReplicaSet (`<workload>-<hash>-<suffix>`) or of a StatefulSet.
fn owned_pod(
    ns: &str,
    name: &str,
    sa: &str,
    owner: (&str, &str),
    labels: &[(&str, &str)],
) -> k8s_openapi::api::core::v1::Pod {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    let mut pod = mk_meshed_pod(ns, name, sa, labels);
    pod.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "apps/v1".into(),
        kind: owner.0.into(),
        name: owner.1.into(),
        controller: Some(true),
        uid: format!("uid-{name}"),
        ..Default::default()
    }]);
    pod
}

struct Fixture {
    net: Net,
    web: Side,
    api: Side,
    db: Side,
    app: String,
}

impl Fixture {
    fn start() -> Fixture {
        let mut net = Net::new("telem");
        let (web, api, db) = (Side::Pod, net.add_host(), net.add_host());
        let (api_ip, db_ip) = (net.ip(api), net.ip(db));
        let dir = scratch_dir("telemetry-mesh");
        let ca_dir = scratch_dir("telemetry-ca");
        let app = scratch_dir("telemetry-app").join("app.py");
        std::fs::write(&app, APP).unwrap();
        let app = app.to_string_lossy().into_owned();

        // The mesh.
        let web_pod = owned_pod(
            "shop",
            "web-7c9d8-x2k4p",
            "web",
            ("ReplicaSet", "web-7c9d8"),
            &[("app", "web"), ("pod-template-hash", "7c9d8")],
        );
        let api_pod = owned_pod(
            "backend",
            "api-5f6b7-q9z8m",
            "api",
            ("ReplicaSet", "api-5f6b7"),
            &[("app", "api"), ("pod-template-hash", "5f6b7")],
        );
        let mut db_pod = owned_pod(
            "backend",
            "db-0",
            "db",
            ("StatefulSet", "db"),
            &[("app", "db")],
        );
        db_pod
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert("weir.dev/access-log".into(), "all".into());
        let services = [
            service_with_ports(
                "backend",
                "api",
                API_IP,
                &[
                    ("http", 8080, Some("http")),
                    ("tcp-echo", 7000, Some("tcp")),
                ],
            ),
            service_with_ports("backend", "db", DB_IP, &[("http", 8080, Some("http"))]),
            service_with_ports(
                "backend",
                "broken",
                BROKEN_IP,
                &[("http", 8080, Some("http"))],
            ),
        ];
        let mut slices = named_port_slices(
            "backend",
            "api",
            "api-5f6b7-q9z8m",
            &api_ip,
            &[("http", 8080), ("tcp-echo", 7001)],
        );
        slices.extend(named_port_slices(
            "backend",
            "db",
            "db-0",
            &db_ip,
            &[("http", 8080)],
        ));
        write_file(&dir, "services.yaml", &to_yaml(&services)).unwrap();
        write_file(&dir, "slices.yaml", &to_yaml(&slices)).unwrap();
        write_file(
            &dir,
            "pods.yaml",
            &to_yaml(&[web_pod.clone(), api_pod.clone(), db_pod.clone()]),
        )
        .unwrap();
        write_file(
            &dir,
            "policy.yaml",
            r#"apiVersion: weir.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: api-policy, namespace: backend}
spec:
  targetRef: {service: api, port: 8080}
  http:
  - name: retry-status
    matches: [{path: {type: Prefix, value: /status/}}]
    retries: {attempts: 2, retryOn: [5xx]}
    destinations: [{}]
  authorization:
    deny:
    - name: no-admin
      paths: [/admin]
"#,
        )
        .unwrap();

        // Jaeger first: sidecars export to it as soon as they trace.
        telemetry::start_jaeger(&mut net).unwrap();
        net.start_operator(
            &dir,
            &ca_dir,
            &[
                "--tracing-otlp-endpoint",
                telemetry::JAEGER_OTLP,
                "--tracing-sampling",
                "100",
            ],
        );
        // Names first: `ip netns exec` gives a process the namespace's hosts file only if
        // it exists when the process starts.
        let names = [
            (API_IP, "api.backend.svc.cluster.local api.backend.svc"),
            (DB_IP, "db.backend.svc.cluster.local db.backend.svc"),
            (
                BROKEN_IP,
                "broken.backend.svc.cluster.local broken.backend.svc",
            ),
        ];
        net.hosts(web, &names);
        net.hosts(api, &names);
        net.spawn(api, &[PYTHON, &app, "serve", "api", "8080"]);
        net.serve_app(api, &["tcp", "api", "0.0.0.0:7001"]);
        net.spawn(db, &[PYTHON, &app, "serve", "db", "8080"]);
        for (side, what) in [(api, "api"), (db, "db")] {
            net.wait_for(&format!("{what}'s application"), || {
                net.get(side, "http://127.0.0.1:8080/ready")
                    .starts_with("200")
            });
        }
        net.wait_for("api's echo", || {
            let out = net
                .command(api, &[PYTHON, &app, "tcp", "127.0.0.1", "7001", "ping"])
                .output()
                .expect("tcp client");
            String::from_utf8_lossy(&out.stdout).trim() == "api: ping"
        });
        for (side, pod) in [(web, &web_pod), (api, &api_pod), (db, &db_pod)] {
            net.start_sidecar(side, pod, &ca_dir);
        }

        // Prometheus, scraping every sidecar as the shipped job would in a cluster.
        let prom_dir = scratch_dir("telemetry-prometheus");
        let targets = [
            SidecarTarget {
                ip: POD_IP,
                namespace: "shop",
                pod: "web-7c9d8-x2k4p",
            },
            SidecarTarget {
                ip: &api_ip,
                namespace: "backend",
                pod: "api-5f6b7-q9z8m",
            },
            SidecarTarget {
                ip: &db_ip,
                namespace: "backend",
                pod: "db-0",
            },
        ];
        let config = telemetry::prometheus_config(&prom_dir, &targets, "1s").unwrap();
        telemetry::start_prometheus(&mut net, &config, &prom_dir).unwrap();
        Fixture {
            net,
            web,
            api,
            db,
            app,
        }
    }

    /// `n` GETs of `url` from `side` (one connection each); the statuses.
    fn get(&self, side: Side, n: usize, url: &str, host: Option<&str>) -> Vec<String> {
        let n = n.to_string();
        let mut args = vec![PYTHON, self.app.as_str(), "get", &n, url];
        args.extend(host);
        let out = self.net.command(side, &args).output().expect("client");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// One TCP connection from `side` to `host:port` sending [`TCP_LINE`]; the answer.
    fn tcp(&self, side: Side, host: &str, port: &str) -> String {
        let out = self
            .net
            .command(side, &[PYTHON, &self.app, "tcp", host, port, TCP_LINE])
            .output()
            .expect("tcp client");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Polls the instant query until `check` accepts its samples; panics with the last
    /// ones (or the error) otherwise.
    fn until(
        &self,
        promql: &str,
        check: impl Fn(&[telemetry::Sample]) -> bool,
    ) -> Vec<telemetry::Sample> {
        let end = Instant::now() + DEADLINE;
        loop {
            let seen = telemetry::query(&self.net, promql);
            if let Ok(samples) = &seen {
                if check(samples) {
                    return samples.clone();
                }
            }
            assert!(Instant::now() < end, "{promql}: {seen:?}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Polls until `promql` is one sample of value `want`.
    fn equals(&self, promql: &str, want: f64) -> telemetry::Sample {
        self.until(promql, |s| s.len() == 1 && s[0].value == want)
            .remove(0)
    }
}

#[test]
fn golden_metrics_access_logs_and_traces_from_real_sidecars() {
    const TEST: &str = "golden_metrics_access_logs_and_traces_from_real_sidecars";
    if !can_run(TEST) || !telemetry::can_run(TEST) {
        return;
    }
    let fx = Fixture::start();
    let (web, api) = (fx.web, fx.api);

    // Traffic from web: its application's requests, through its sidecar.
    let api_url = |path: &str| format!("http://{API}:8080{path}");
    let all = |statuses: Vec<String>, want: &str| {
        assert!(statuses.iter().all(|s| s == want), "{statuses:?} != {want}");
        statuses.len()
    };
    // Every Envoy has its listeners before the first request: the readiness probes passed.
    assert_eq!(all(fx.get(web, 20, &api_url("/hello"), None), "200"), 20);
    assert_eq!(all(fx.get(web, 5, &api_url("/admin"), None), "403"), 5);
    assert_eq!(
        all(
            fx.get(web, 3, &format!("http://{BROKEN}:8080/"), None),
            "503"
        ),
        3
    );
    assert_eq!(all(fx.get(web, 1, &api_url("/status/503"), None), "503"), 1);
    let call = api_url(&format!(
        "/call?to={}",
        telemetry::encode(&format!("http://{DB}:8080/leaf"))
    ));
    assert_eq!(all(fx.get(web, 1, &call, None), "200"), 1);
    // Unknown Host headers on a mesh port: no virtual host, passthrough (which fails here).
    for host in ["a.example", "b.example", "c.example"] {
        fx.get(web, 1, &format!("http://{API_IP}:8080/"), Some(host));
    }
    assert_eq!(fx.tcp(web, API, "7000"), format!("api: {TCP_LINE}"));

    // Requests as the server's sidecar saw them, by caller, exactly as sent: 20 + 1 served,
    // 5 denied, 3 attempts of the retried request.
    let to_api =
        format!(r#"reporter="destination",destination_service="{API}",source_workload="web""#);
    let served = fx.equals(
        &format!(r#"sum by (source_principal, destination_workload, destination_principal, connection_security_policy, request_protocol, destination_service_name, destination_service_namespace, source_namespace) (weir_requests_total{{{to_api},response_code="200"}})"#),
        21.0,
    );
    for (label, want) in [
        ("source_principal", WEB_ID),
        ("source_namespace", "shop"),
        ("destination_workload", "api"),
        ("destination_principal", API_ID),
        ("destination_service_name", "api"),
        ("destination_service_namespace", "backend"),
        ("connection_security_policy", "mutual_tls"),
        ("request_protocol", "http"),
    ] {
        assert_eq!(served.label(label), want, "{label} in {served:?}");
    }
    fx.equals(
        &format!(r#"sum(weir_requests_total{{{to_api},response_code="403"}})"#),
        5.0,
    );
    fx.equals(
        &format!(r#"sum(weir_requests_total{{{to_api},response_code="503"}})"#),
        3.0,
    );
    // The caller's side: the subset-free Service, its workload from the endpoint, mTLS.
    let from_web = fx.equals(
        &format!(r#"sum by (destination_workload, connection_security_policy, source_principal, destination_principal) (weir_requests_total{{reporter="source",source_workload="web",destination_service="{API}",response_code="200"}})"#),
        21.0,
    );
    assert_eq!(from_web.label("destination_workload"), "api");
    assert_eq!(from_web.label("connection_security_policy"), "mutual_tls");
    assert_eq!(from_web.label("source_principal"), WEB_ID);
    assert_eq!(from_web.label("destination_principal"), API_ID);
    // api calling db (reporter source on api's sidecar, destination on db's).
    fx.equals(
        &format!(r#"sum(weir_requests_total{{reporter="destination",source_workload="api",destination_workload="db",destination_service="{DB}"}})"#),
        1.0,
    );

    // Success rate by Service.
    let success = |svc: &str, want: f64| {
        fx.equals(
            &format!(r#"sum(weir_requests_total{{reporter="source",destination_service="{svc}",response_code!~"5.."}}) / sum(weir_requests_total{{reporter="source",destination_service="{svc}"}})"#),
            want,
        )
    };
    // From web: 20 + 1 + 5 (403) of 27 are not server errors; none to broken are.
    success(API, 26.0 / 27.0);
    fx.equals(
        &format!(r#"sum(weir_requests_total{{reporter="source",destination_service="{BROKEN}",response_code="503",response_flags="UH"}})"#),
        3.0,
    );
    fx.equals(
        &format!(r#"sum(weir_request_duration_milliseconds_count{{reporter="destination",destination_service="{API}",source_workload="web"}})"#),
        29.0,
    );

    // Unknown hosts collapse into one series: no Service, no workload.
    fx.equals(
        r#"count(weir_requests_total{reporter="source",source_workload="web",destination_service="unknown",destination_workload="unknown"})"#,
        1.0,
    );
    fx.equals(
        r#"sum(weir_requests_total{reporter="source",source_workload="web",destination_service="unknown"})"#,
        3.0,
    );

    // TCP: the bytes the client sent and got, one connection opened and closed.
    let tcp =
        format!(r#"reporter="destination",destination_service="{API}",request_protocol="tcp""#);
    fx.equals(
        &format!("sum(weir_tcp_received_bytes_total{{{tcp}}})"),
        (TCP_LINE.len() + 1) as f64,
    );
    fx.equals(
        &format!("sum(weir_tcp_sent_bytes_total{{{tcp}}})"),
        format!("api: {TCP_LINE}\n").len() as f64,
    );
    fx.equals(
        &format!("sum(weir_tcp_connections_opened_total{{{tcp}}})"),
        1.0,
    );
    fx.equals(
        &format!("sum(weir_tcp_connections_closed_total{{{tcp}}})"),
        1.0,
    );
    fx.equals(
        &format!(r#"sum(weir_tcp_received_bytes_total{{reporter="source",source_workload="web",destination_service="{API}",connection_security_policy="mutual_tls"}})"#),
        (TCP_LINE.len() + 1) as f64,
    );

    // Rates: Prometheus saw each series first with the counts above (a sidecar exports
    // only what was updated), so rates need a second wave of the same traffic.
    assert_eq!(all(fx.get(web, 10, &api_url("/hello"), None), "200"), 10);
    assert_eq!(all(fx.get(web, 1, &api_url("/admin"), None), "403"), 1);
    assert_eq!(
        all(
            fx.get(web, 2, &format!("http://{BROKEN}:8080/"), None),
            "503"
        ),
        2
    );
    assert_eq!(all(fx.get(web, 1, &call, None), "200"), 1);
    assert_eq!(fx.tcp(web, API, "7000"), format!("api: {TCP_LINE}"));
    // Request rate by caller, p99 from the histogram.
    let rates = fx.until(
        r#"sum by (source_workload) (rate(weir_requests_total{reporter="destination"}[1m]))"#,
        |s| {
            s.iter()
                .any(|s| s.label("source_workload") == "web" && s.value > 0.0)
        },
    );
    assert!(
        rates
            .iter()
            .all(|s| ["web", "api"].contains(&s.label("source_workload"))),
        "{rates:?}"
    );
    let p99 = fx.until(
        &format!(r#"histogram_quantile(0.99, sum by (le) (rate(weir_request_duration_milliseconds_bucket{{reporter="destination",destination_service="{API}"}}[1m])))"#),
        |s| s.len() == 1 && s[0].value.is_finite(),
    );
    assert!((0.0..=10_000.0).contains(&p99[0].value), "{p99:?}");

    // Access logs (Envoy writes its log files out every few seconds): errors only by
    // default (no 200 on web's or api's sidecar), every request on db's (its annotation
    // says all).
    let field = |line: &serde_json::Value, key: &str| -> String {
        match &line[key] {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    };
    let logged = |side: Side, what: &str, pick: &dyn Fn(&serde_json::Value) -> bool| {
        let end = Instant::now() + DEADLINE;
        loop {
            let log = fx.net.access_log(side);
            if let Some(line) = log.iter().find(|l| pick(l)) {
                return (line.clone(), log);
            }
            assert!(
                Instant::now() < end,
                "no access log line for {what} in {log:#?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    let (_, web_log) = logged(web, "the retried request", &|l| {
        field(l, "path") == "/status/503"
    });
    let (_, api_log) = logged(api, "a denial", &|l| field(l, "path") == "/admin");
    assert!(
        web_log
            .iter()
            .chain(&api_log)
            .all(|l| field(l, "response_code") != "200"),
        "an errors-only log has a 200: {web_log:#?} {api_log:#?}"
    );
    let broken = web_log
        .iter()
        .find(|l| field(l, "upstream_cluster").contains(BROKEN))
        .unwrap_or_else(|| panic!("no 503 line for broken in {web_log:#?}"));
    for (key, want) in [
        ("response_code", "503"),
        ("response_flags", "UH"),
        ("source_workload", "web"),
        ("destination_service", BROKEN),
        ("reporter", "source"),
        ("method", "GET"),
    ] {
        assert_eq!(field(broken, key), want, "{key} in {broken:#}");
    }
    assert!(
        !field(broken, "request_id").is_empty() && field(broken, "trace_id").len() == 32,
        "{broken:#}"
    );
    let retried = web_log
        .iter()
        .find(|l| field(l, "path") == "/status/503")
        .unwrap_or_else(|| panic!("no line for the retried request in {web_log:#?}"));
    assert_eq!(field(retried, "response_code"), "503", "{retried:#}");
    assert!(
        field(retried, "response_flags").contains("URX"),
        "{retried:#}"
    );
    assert_eq!(field(retried, "upstream_attempts"), "3", "{retried:#}");
    assert_eq!(field(retried, "route"), "retry-status", "{retried:#}");
    let denied = api_log
        .iter()
        .find(|l| field(l, "path") == "/admin")
        .unwrap_or_else(|| panic!("no denial line in {api_log:#?}"));
    assert_eq!(field(denied, "response_code"), "403", "{denied:#}");
    assert_eq!(field(denied, "source_principal"), WEB_ID, "{denied:#}");
    assert_eq!(field(denied, "source_workload"), "web", "{denied:#}");
    assert!(
        field(denied, "response_code_details")
            .starts_with("rbac_access_denied_matched_policy[backend/api-policy/no-admin"),
        "{denied:#}"
    );
    logged(fx.db, "a 200 (db logs every request)", &|l| {
        field(l, "path") == "/leaf" && field(l, "response_code") == "200"
    });

    // A trace across three services: web's client span, api's server span (its child),
    // api's client span to db, db's server span; service.name is each workload.
    let end = Instant::now() + DEADLINE;
    let trace = loop {
        let traces = telemetry::traces(&fx.net, "web").unwrap_or_default();
        let three = traces.into_iter().find(|t| {
            let services: Vec<&str> = t["processes"]
                .as_object()
                .into_iter()
                .flat_map(|p| p.values())
                .filter_map(|p| p["serviceName"].as_str())
                .collect();
            ["web", "api", "db"].iter().all(|s| services.contains(s))
        });
        if let Some(t) = three {
            break t;
        }
        assert!(
            Instant::now() < end,
            "no trace through web, api and db in Jaeger"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let spans = trace["spans"].as_array().unwrap();
    let service_of = |span: &serde_json::Value| {
        trace["processes"][span["processID"].as_str().unwrap_or("")]["serviceName"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let tag = |span: &serde_json::Value, key: &str| {
        span["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["key"] == key)
            .and_then(|t| t["value"].as_str().map(str::to_string))
            .unwrap_or_default()
    };
    let kind = |span: &serde_json::Value| tag(span, "span.kind");
    let web_client = spans
        .iter()
        .find(|s| service_of(s) == "web" && kind(s) == "client")
        .unwrap_or_else(|| panic!("no client span from web: {trace:#}"));
    let api_server = spans
        .iter()
        .find(|s| service_of(s) == "api" && kind(s) == "server")
        .unwrap_or_else(|| panic!("no server span from api: {trace:#}"));
    let parent = api_server["references"][0]["spanID"].as_str().unwrap_or("");
    assert_eq!(parent, web_client["spanID"].as_str().unwrap(), "{trace:#}");
    assert_eq!(
        tag(web_client, "weir.destination_service"),
        API,
        "{web_client:#}"
    );
    assert_eq!(
        tag(api_server, "weir.source_workload"),
        "web",
        "{api_server:#}"
    );
    assert!(
        spans
            .iter()
            .any(|s| service_of(s) == "db" && kind(s) == "server"),
        "{trace:#}"
    );

    // Every panel of the shipped dashboards evaluates, and has data, on this mesh.
    dashboards_evaluate(&fx);

    // `kubectl weir stat` reads the same series: api's golden signals, by caller.
    let cli = weir_tests::workspace_binary("kubectl-weir").expect("kubectl-weir is built");
    let prometheus = format!("http://{}", telemetry::PROMETHEUS_ADDR);
    let stat = |args: &[&str]| {
        let out = fx
            .net
            .command(Side::Peer, &[cli.to_str().unwrap()])
            .args(args)
            .args([
                "--prometheus",
                &prometheus,
                "--window",
                "5m",
                "-n",
                "backend",
            ])
            .env("NO_COLOR", "1")
            .output()
            .expect("kubectl-weir stat");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Rates need increases of series Prometheus already has (histograms are flushed every
    // 5 s): once it has them, more of the same traffic.
    fx.until(
        r#"sum(weir_request_duration_milliseconds_count{reporter="destination",destination_workload="api"})"#,
        |s| s.len() == 1 && s[0].value >= 29.0,
    );
    assert_eq!(all(fx.get(web, 20, &api_url("/hello"), None), "200"), 20);
    assert_eq!(all(fx.get(web, 2, &api_url("/status/503"), None), "503"), 2);
    let end = Instant::now() + DEADLINE;
    let report = loop {
        let report: serde_json::Value =
            serde_json::from_str(&stat(&["stat", "deploy", "api", "-o", "json"]))
                .unwrap_or_default();
        let ready = report["by_caller"].as_array().is_some_and(|rows| {
            rows.iter().any(|r| {
                r["from"] == "shop/web"
                    && r["p99_ms"].is_number()
                    && r["success_rate"].as_f64().is_some_and(|s| s < 1.0)
            })
        });
        if ready {
            break report;
        }
        assert!(Instant::now() < end, "kubectl weir stat: {report}");
        std::thread::sleep(Duration::from_millis(500));
    };
    let row = &report["rows"][0];
    assert_eq!(
        (row["namespace"].as_str(), row["name"].as_str()),
        (Some("backend"), Some("api")),
        "{report}"
    );
    let success = row["success_rate"].as_f64().unwrap();
    // 20 answered, 6 attempts answered 503 (two requests, each retried twice).
    assert!(success > 0.5 && success < 1.0, "{report}");
    assert!(row["rps"].as_f64().unwrap() > 0.0, "{report}");
    let table = stat(&["stat", "deploy", "api"]);
    assert!(
        table
            .lines()
            .next()
            .unwrap_or_default()
            .starts_with("NAMESPACE"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("backend") && l.contains("shop/web")),
        "{table}"
    );
}

/// Each `expr` of every panel of `config/observability/dashboards/*.json`, with the
/// dashboards' variables set to this mesh's `api`, returns data through Prometheus.
fn dashboards_evaluate(fx: &Fixture) {
    let dir = telemetry::repo_file("config/observability/dashboards");
    let mut checked = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
    entries.sort_by_key(|e| e.path());
    for entry in entries {
        let text = std::fs::read_to_string(entry.path()).unwrap();
        let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut panels: Vec<&serde_json::Value> = Vec::new();
        fn collect<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a serde_json::Value>) {
            for p in v["panels"].as_array().into_iter().flatten() {
                out.push(p);
                collect(p, out);
            }
        }
        collect(&dashboard, &mut panels);
        for panel in panels {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let Some(expr) = target["expr"].as_str() else {
                    continue;
                };
                let expr = expr
                    .replace("$__rate_interval", "1m")
                    .replace("${service}", API)
                    .replace("$service", API)
                    .replace("${namespace}", "backend")
                    .replace("$namespace", "backend")
                    .replace("${workload}", "api")
                    .replace("$workload", "api");
                let what = format!("{} / {}: {expr}", entry.path().display(), panel["title"]);
                fx.until(&expr, |s| !s.is_empty());
                eprintln!("dashboard panel has data: {what}");
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 10,
        "only {checked} dashboard queries found in {}",
        dir.display()
    );
}
