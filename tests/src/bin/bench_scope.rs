//! `make bench` (scoping): what a scoped sidecar costs and what its first calls cost, with
//! real Envoy in network namespaces (real iptables, injected sidecars, STRICT mTLS).
//!
//! ```text
//! a mesh of N Services (HTTP 8080, one backend pod behind a sidecar)
//!   weir-operator local --proxy-scope learned|mesh
//!   a caller pod behind its sidecar: first calls to 10 Services (each a Service its sidecar
//!   has never held), then the same 10 again  --> per-request latency (measured in the client)
//!   --> the caller's Envoy RSS  --> first calls to 200 more Services: p50/p99 against
//!   repeated calls: what a first call adds
//! learned, 5000 Services: --scope-idle 30s; once the 210 called Services went dormant, the
//!   caller's Envoy RSS again, and the calls that wake them: p50/p99
//! ```
//!
//! Runs as root (network namespaces). Figures are printed and appended to
//! `target/bench/results.jsonl`.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::time::Duration;
use weir_tests::netns::{Net, Side};
use weir_tests::*;

/// Sends each URL of stdin (one per line) on a new connection and prints
/// `<status> <milliseconds>` per request.
const TIMED_CLIENT: &str = r#"
import http.client, sys, time, urllib.parse
for line in sys.stdin:
    u = urllib.parse.urlsplit(line.strip())
    start = time.perf_counter()
    try:
        conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=10)
        conn.request("GET", u.path or "/")
        status = conn.getresponse().status
        conn.close()
    except Exception:
        status = 0
    print(status, (time.perf_counter() - start) * 1000, flush=True)
"#;

fn cluster_ip(i: usize) -> String {
    format!("10.96.{}.{}", i / 250, 1 + i % 250)
}

fn write_mesh(dir: &Path, services: usize, backend_ip: &str) -> Result<()> {
    let mut out = String::new();
    for i in 0..services {
        out.push_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: svc{i}, namespace: bench}}\nspec:\n  clusterIP: {}\n  ports: [{{name: http, port: 8080, targetPort: 8080}}]\n---\n",
            cluster_ip(i)
        ));
        out.push_str(&format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: svc{i}-x, namespace: bench, labels: {{kubernetes.io/service-name: svc{i}}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: [{{addresses: [\"{backend_ip}\"], conditions: {{ready: true}}, targetRef: {{kind: Pod, name: backend-0, namespace: bench}}}}]\n---\n"
        ));
    }
    for pod in ["backend-0", "client"] {
        out.push_str(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: bench, annotations: {{weir.dev/injected: \"true\"}}}}\nspec: {{serviceAccountName: {pod}, containers: [{{name: app, image: app}}]}}\n---\n"
        ));
    }
    out.push_str("apiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n");
    write_file(dir, "mesh.yaml", &out)?;
    Ok(())
}

fn pod(name: &str) -> k8s_openapi::api::core::v1::Pod {
    serde_saphyr::from_str(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: bench}}\nspec:\n  serviceAccountName: {name}\n  containers: [{{name: app, image: app:1}}]\n"
    ))
    .expect("a pod")
}

/// Per URL: (status, milliseconds), measured inside the caller's namespace.
fn timed(net: &Net, script: &Path, urls: &[String]) -> Vec<(u16, f64)> {
    let input: String = urls.iter().map(|u| format!("{u}\n")).collect();
    let script = script.to_string_lossy();
    net.run_with_input(Side::Pod, &["timeout", "600", "python3", &script], &input)
        .lines()
        .filter_map(|l| {
            let (status, ms) = l.split_once(' ')?;
            Some((status.parse().ok()?, ms.parse().ok()?))
        })
        .collect()
}

fn urls(range: std::ops::Range<usize>) -> Vec<String> {
    range
        .map(|i| format!("http://{}:8080/", cluster_ip(i)))
        .collect()
}

/// The resident memory of the Envoy in a namespace, in MiB.
fn envoy_rss(net: &Net, side: Side) -> Result<f64> {
    let pids = std::process::Command::new("ip")
        .args(["netns", "pids", net.name(side)])
        .output()?;
    for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "envoy" {
            let pid: u32 = pid.parse()?;
            return Ok(proc_status_kib(pid, "VmRSS")? as f64 / 1024.0);
        }
    }
    bail!("no Envoy in {}", net.name(side))
}

fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

fn all_ok(what: &str, answers: &[(u16, f64)], expected: usize) -> Result<Vec<f64>> {
    if answers.len() != expected || answers.iter().any(|(s, _)| *s != 200) {
        let bad: Vec<u16> = answers
            .iter()
            .map(|(s, _)| *s)
            .filter(|s| *s != 200)
            .collect();
        bail!(
            "{what}: {} answers of {expected}, failures {bad:?}",
            answers.len()
        );
    }
    Ok(answers.iter().map(|(_, ms)| *ms).collect())
}

/// The operator's `--scope-idle` in this bench: longer than the calls before the shrink.
const SCOPE_IDLE: &str = "30s";

/// The 210 Services called go dormant: the caller's Envoy RSS before and after, and the
/// calls that wake them.
fn shrink(net: &Net, script: &Path) -> Result<Vec<serde_json::Value>> {
    std::thread::sleep(Duration::from_secs(2));
    let before = envoy_rss(net, Side::Pod).context("the caller's Envoy")?;
    let heap_before = envoy_allocated(net)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    while net.operator_metric("weir_scope_unused_services_total") < 210 {
        if std::time::Instant::now() > deadline {
            bail!(
                "the called Services did not go dormant ({} did)",
                net.operator_metric("weir_scope_unused_services_total")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // Envoy frees removed clusters lazily.
    std::thread::sleep(Duration::from_secs(3));
    let after = envoy_rss(net, Side::Pod).context("the caller's Envoy")?;
    let heap_after = envoy_allocated(net)?;
    let wakes = all_ok("wake calls", &timed(net, script, &urls(10..210)), 200)?;
    std::thread::sleep(Duration::from_secs(2));
    let repeats = all_ok("repeated calls", &timed(net, script, &urls(10..210)), 200)?;
    println!(
        "  after {SCOPE_IDLE} unused: caller's Envoy heap in use {heap_before:.1} -> {heap_after:.1} MiB (RSS {before:.1} -> {after:.1} MiB: its allocator keeps freed pages); the calls that wake them: p50 {:.1} ms, p99 {:.1} ms (then p99 {:.1} ms)",
        percentile(&wakes, 0.5),
        percentile(&wakes, 0.99),
        percentile(&repeats, 0.99)
    );
    Ok(vec![
        serde_json::json!({"run": "scope", "measure": "caller's Envoy heap in use with 210 Services called (5000 Services, learned)", "goal": "reported", "figure": heap_before, "unit": "MiB"}),
        serde_json::json!({"run": "scope", "measure": format!("caller's Envoy heap in use once they were unused for --scope-idle {SCOPE_IDLE}"), "goal": "back near its 10-called figure", "figure": heap_after, "unit": "MiB"}),
        serde_json::json!({"run": "scope", "measure": "a call to a dormant Service: added latency at p99", "goal": "<= 100 ms (as a first call)", "figure": percentile(&wakes, 0.99) - percentile(&repeats, 0.99), "unit": "ms"}),
    ])
}

/// The caller's Envoy heap in use (its admin `/memory`, `allocated`), MiB.
fn envoy_allocated(net: &Net) -> Result<f64> {
    let text = net.fetch(Side::Pod, "http://127.0.0.1:15000/memory");
    let memory: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("/memory: {text}"))?;
    let bytes: f64 = memory["allocated"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .context("/memory has no allocated")?;
    Ok(bytes / (1024.0 * 1024.0))
}

fn main() -> Result<()> {
    if !netns::can_run("bench_scope") {
        bail!("the scoping bench needs root (network namespaces)");
    }
    let mut lines = Vec::new();
    let mut baseline = None;
    println!("Scoped sidecars (real Envoy, network namespaces, STRICT mTLS):");
    for (services, scope) in [(10usize, "learned"), (5000, "learned"), (5000, "mesh")] {
        let mut net = Net::new("bscope");
        let backend = net.add_host();
        let dir = scratch_dir("bench-scope-mesh");
        let ca_dir = scratch_dir("bench-scope-ca");
        let script = scratch_dir("bench-scope-client").join("client.py");
        std::fs::write(&script, TIMED_CLIENT)?;
        write_mesh(&dir, services, &net.ip(backend))?;
        net.start_operator(
            &dir,
            &ca_dir,
            &["--proxy-scope", scope, "--scope-idle", SCOPE_IDLE],
        );
        net.serve_app(backend, &["http", "backend-0", "0.0.0.0:8080"]);
        net.start_sidecar(backend, &pod("backend-0"), &ca_dir);
        net.start_sidecar(Side::Pod, &pod("client"), &ca_dir);
        // The whole mesh reached the caller (mesh mode) before anything is measured.
        let deadline = std::time::Instant::now() + Duration::from_secs(300);
        while timed(&net, &script, &urls(services - 1..services))
            .first()
            .map(|a| a.0)
            != Some(200)
        {
            if std::time::Instant::now() > deadline {
                bail!("the mesh of {services} Services never answered");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let first = all_ok("first calls", &timed(&net, &script, &urls(0..10)), 10)?;
        // What the first calls set in motion (clusters, endpoints) settles first.
        std::thread::sleep(Duration::from_secs(2));
        let again = all_ok("repeated calls", &timed(&net, &script, &urls(0..10)), 10)?;
        // Envoy frees replaced configuration lazily.
        std::thread::sleep(Duration::from_secs(2));
        let rss = envoy_rss(&net, Side::Pod).context("the caller's Envoy")?;
        let heap = envoy_allocated(&net)?;
        println!(
            "  {services:>5} Services, --proxy-scope {scope:<7}: caller's Envoy {rss:6.1} MiB ({heap:.1} MiB heap in use) after calling 10 (first calls p50 {:.1} ms, repeated p50 {:.1} ms)",
            percentile(&first, 0.5),
            percentile(&again, 0.5)
        );
        if services == 10 {
            baseline = Some(rss);
        }
        let goal = match (services, scope, baseline) {
            (5000, "learned", Some(base)) => {
                format!("<= {:.1} MiB (1.2x the 10-Service mesh)", base * 1.2)
            }
            _ => "reported".into(),
        };
        lines.push(serde_json::json!({"run": "scope", "measure": format!("caller's Envoy RSS, {services} Services, --proxy-scope {scope}, 10 called"), "goal": goal, "figure": rss, "unit": "MiB"}));
        if services == 5000 {
            let firsts = all_ok("first calls", &timed(&net, &script, &urls(10..210)), 200)?;
            std::thread::sleep(Duration::from_secs(2));
            let repeats = all_ok("repeated calls", &timed(&net, &script, &urls(10..210)), 200)?;
            let added = percentile(&firsts, 0.99) - percentile(&repeats, 0.99);
            println!(
                "  first calls to 200 more Services: p50 {:.1} ms, p99 {:.1} ms; the same calls again: p50 {:.1} ms, p99 {:.1} ms; the first call adds {added:.1} ms at p99",
                percentile(&firsts, 0.5),
                percentile(&firsts, 0.99),
                percentile(&repeats, 0.5),
                percentile(&repeats, 0.99)
            );
            if scope == "learned" {
                lines.push(serde_json::json!({"run": "scope", "measure": "first call to a Service outside the scope: added latency at p99 (5000 Services)", "goal": "<= 100 ms", "figure": added, "unit": "ms"}));
            }
            lines.push(serde_json::json!({"run": "scope", "measure": format!("later calls p99 (5000 Services, --proxy-scope {scope})"), "goal": "as fast as --proxy-scope mesh", "figure": percentile(&repeats, 0.99), "unit": "ms"}));
            if scope == "learned" {
                lines.extend(shrink(&net, &script)?);
            }
        }
    }
    append_results(&lines)?;
    Ok(())
}
