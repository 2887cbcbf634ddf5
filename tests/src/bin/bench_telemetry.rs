//! `make bench` (telemetry): what the mesh's metrics, access log and tracing cost a sidecar.
//!
//! ```text
//! (a) CPU: client (8 keep-alive HTTP/1.1 connections, paced to 1,000 req/s in total)
//!       --> Envoy 1.40 (--concurrency 2; static bootstrap: one HTTP connection manager from
//!           HttpChain as the outbound chain has it, the sidecar's stats_config)
//!       --> local backend (cluster outbound|8080||bench-backend..., Weir's cluster metadata)
//!     "off": no .telemetry(..); "on": .telemetry(http_logs(Outbound, access log = errors),
//!     tracing(Outbound, 1 %) -> cluster weir-tracing -> real Jaeger (OTLP/gRPC), or a
//!     closed port when Jaeger is not built). Run off, on, off, on; 3 s warm-up, then
//!     Envoy's utime + stime (/proc/<pid>/stat) over 20 s as % of one core, and VmRSS:
//!     the means, and on / off
//! (b) series and memory: weir-operator in-process (a 1,000-Service mesh, 5 endpoints
//!     each) --delta ADS--> one Envoy from the sidecar bootstrap (explicit capture) as it is
//!     (stats_config trims Envoy's own statistics), then one from the same bootstrap
//!     without stats_config; once every cluster is warm: VmRSS and the series admin
//!     /stats/prometheus exposes (non-comment, non-empty lines)
//! (c) after (a)'s last "on" run: the envoy_weir_* series in its /stats/prometheus, all of
//!     them for one destination and one response code
//! ```
//!
//! Figures are printed and appended to `target/bench/results.jsonl`.

use anyhow::{bail, Context, Result};
use envoy_types::pb::envoy::config::bootstrap::v3::{bootstrap, Admin, Bootstrap};
use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{
    address, socket_address, Address, Metadata, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use prost::Message;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_core::bootstrap::{BootstrapParams, ProxyMeta, XdsProtocol};
use weir_core::mesh::{METADATA_NAMESPACE, WORKLOAD_ENV, WORKLOAD_NAMESPACE_ENV};
use weir_core::translate::chain::{catch_all_virtual_host, HttpChain, Routes};
use weir_core::translate::telemetry::{self as tel, AccessLogMode, Side, Telemetry, TracingConfig};
use weir_core::{Capture, ObjectKey};
use weir_tests::*;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RATE: u64 = 1_000;
const CONNECTIONS: u64 = 8;
const WARM_UP: Duration = Duration::from_secs(3);
const WINDOW: Duration = Duration::from_secs(20);
const SAMPLING_PERCENT: f64 = 1.0;
const SERVICES: usize = 1000;
const WORKLOAD: &str = "bench";
const NAMESPACE: &str = "default";

fn socket(ip: &str, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port.into())),
            ..Default::default()
        })),
    }
}

fn string(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.into())),
    }
}

/// The backend's Service, as the mesh would name its cluster and label requests to it.
fn backend_service() -> ObjectKey {
    ObjectKey::new(NAMESPACE, "bench-backend")
}

/// The backend as a mesh cluster: Weir's name and metadata, the endpoint's host name its
/// workload (what the outbound labels read).
fn backend_cluster(backend: SocketAddr) -> Cluster {
    let svc = backend_service();
    let name = weir_core::names::cluster_name(&svc, 8080, None);
    let fields = [
        ("service", weir_core::names::fqdn(&svc)),
        ("service_name", svc.name.clone()),
        ("service_namespace", svc.namespace.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), string(&v)))
    .collect();
    Cluster {
        name: name.clone(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        connect_timeout: Some(weir_core::translate::pb::seconds(1)),
        metadata: Some(Metadata {
            filter_metadata: [(METADATA_NAMESPACE.to_string(), Struct { fields })]
                .into_iter()
                .collect(),
            ..Default::default()
        }),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name,
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(socket(&backend.ip().to_string(), backend.port())),
                        hostname: tel::endpoint_hostname(Some("bench-backend")),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The sidecar bootstrap's parameters (explicit capture, delta ADS, namespace default).
fn sidecar_params(node_id: &str, xds: SocketAddr) -> BootstrapParams {
    let (outbound, admin) = (free_port(), free_port());
    BootstrapParams {
        node_id: node_id.into(),
        meta: ProxyMeta {
            namespace: NAMESPACE.into(),
            pod: node_id.into(),
            service_account: None,
            capture: Capture::Explicit { port: outbound },
            zone: None,
            reports: true,
        },
        xds_address: xds.to_string(),
        protocol: XdsProtocol::Delta,
        admin_port: admin,
        sidecar: None,
        xds_tls: None,
        telemetry: Default::default(),
    }
}

/// The sidecar bootstrap's `stats_config`, as `{"stats_config": ..}` (JSON is YAML), to
/// merge over a static bootstrap with `--config-yaml`.
fn sidecar_stats_config() -> Result<String> {
    let json = weir_core::bootstrap::bootstrap(&sidecar_params("bench", "127.0.0.1:1".parse()?))?;
    let stats = json
        .get("stats_config")
        .context("the sidecar bootstrap has no stats_config")?;
    Ok(serde_json::json!({ "stats_config": stats }).to_string())
}

/// The static bootstrap of (a): the outbound HTTP chain on `port` to `backend`, with or
/// without telemetry.
fn static_bootstrap(
    port: u16,
    admin: u16,
    backend: SocketAddr,
    telemetry: Option<&Telemetry>,
) -> Bootstrap {
    let cluster = backend_cluster(backend);
    // The route table as the operator makes it: the caller's workload in headers.
    let route = RouteConfiguration {
        name: "outbound".into(),
        virtual_hosts: vec![catch_all_virtual_host("outbound", &cluster.name)],
        request_headers_to_add: tel::source_headers(),
        most_specific_header_mutations_wins: true,
        ..Default::default()
    };
    let mut chain = HttpChain::new("outbound", Routes::Inline(Box::new(route)))
        .filters(weir_core::translate::outbound::shaping::outbound_http_filters())
        .normalize_path();
    let mut clusters = vec![cluster];
    if let Some(telemetry) = telemetry {
        // WEIR_BENCH_TELEMETRY_PARTS (metrics,log,tracing; all by default) measures the
        // parts apart.
        let parts = std::env::var("WEIR_BENCH_TELEMETRY_PARTS")
            .unwrap_or_else(|_| "metrics,log,tracing".into());
        let mut logs = tel::http_logs(Side::Outbound, telemetry, &[], None);
        if !parts.contains("log") {
            logs.pop();
        }
        if !parts.contains("metrics") {
            logs.remove(0);
        }
        let tracing = tel::tracing(Side::Outbound, telemetry).filter(|_| parts.contains("tracing"));
        chain = chain.telemetry(logs, tracing);
        clusters.extend(tel::tracing_cluster(telemetry));
    }
    Bootstrap {
        admin: Some(Admin {
            address: Some(socket("127.0.0.1", admin)),
            ..Default::default()
        }),
        static_resources: Some(bootstrap::StaticResources {
            listeners: vec![Listener {
                name: "outbound".into(),
                address: Some(socket("127.0.0.1", port)),
                filter_chains: vec![chain.build("outbound", None, None)],
                ..Default::default()
            }],
            clusters,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The Envoy of one CPU run: the static bootstrap written where it runs, two workers,
/// the environment a sidecar's container gives it.
async fn start_proxy(dir: &Path, bootstrap: &Bootstrap, port: u16, admin: u16) -> Result<Envoy> {
    let path = dir.join("bootstrap.pb");
    std::fs::write(&path, bootstrap.encode_to_vec())?;
    let options = EnvoyOptions {
        concurrency: 2,
        log_level: "warn",
        config_yaml: Some(sidecar_stats_config()?),
        env: vec![
            (WORKLOAD_ENV.into(), WORKLOAD.into()),
            (WORKLOAD_NAMESPACE_ENV.into(), NAMESPACE.into()),
            (
                weir_core::mesh::OTEL_RESOURCE_ATTRIBUTES_ENV.into(),
                format!("service.name={WORKLOAD}"),
            ),
        ],
    };
    Envoy::start_from_with(&path, "bench-telemetry", port, admin, &options).await
}

/// Requests answered during a load run.
#[derive(Default)]
struct Counters {
    ok: AtomicU64,
    failed: AtomicU64,
}

/// `CONNECTIONS` keep-alive HTTP/1.1 clients, each paced to `RATE / CONNECTIONS` requests
/// per second, until `stop` is set.
fn start_load(
    port: u16,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Result<()>>> {
    let period = Duration::from_secs_f64(CONNECTIONS as f64 / RATE as f64);
    let start = tokio::time::Instant::now();
    (0..CONNECTIONS)
        .map(|i| {
            let (counters, stop) = (counters.clone(), stop.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .no_proxy()
                    .http1_only()
                    .pool_max_idle_per_host(1)
                    .build()?;
                let url = format!("http://127.0.0.1:{port}/api/orders");
                // Spread the connections' ticks over one period.
                let mut tick = tokio::time::interval_at(
                    start + period * i as u32 / CONNECTIONS as u32,
                    period,
                );
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let ok = match client.get(&url).send().await {
                        Ok(resp) => resp.status() == 200 && resp.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    let counter = if ok { &counters.ok } else { &counters.failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(())
            })
        })
        .collect()
}

/// One measured run of (a).
struct Run {
    cpu_percent: f64,
    rss_mib: f64,
    rate: f64,
}

/// Drives the load through `proxy`: warm-up, then CPU and RSS over the window.
async fn measure(proxy: &Envoy) -> Result<Run> {
    let pid = proxy.pid().context("Envoy has no pid")?;
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = start_load(proxy.outbound_port, counters.clone(), stop.clone());
    tokio::time::sleep(WARM_UP).await;
    let (cpu0, t0, ok0) = (
        cpu_time(pid)?,
        Instant::now(),
        counters.ok.load(Ordering::Relaxed),
    );
    tokio::time::sleep(WINDOW).await;
    let (cpu1, elapsed, ok1) = (
        cpu_time(pid)?,
        t0.elapsed(),
        counters.ok.load(Ordering::Relaxed),
    );
    let rss = proc_status_kib(pid, "VmRSS")?;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await??;
    }
    let failed = counters.failed.load(Ordering::Relaxed);
    anyhow::ensure!(
        failed == 0,
        "{failed} requests failed (of {}): the bench needs every request answered 200",
        failed + counters.ok.load(Ordering::Relaxed)
    );
    Ok(Run {
        cpu_percent: 100.0 * (cpu1 - cpu0).as_secs_f64() / elapsed.as_secs_f64(),
        rss_mib: rss as f64 / 1024.0,
        rate: (ok1 - ok0) as f64 / elapsed.as_secs_f64(),
    })
}

/// Jaeger (all-in-one, memory storage) on free loopback ports: the process and its
/// OTLP/gRPC and query ports.
struct Jaeger {
    child: tokio::process::Child,
    otlp: u16,
    query: u16,
}

/// Starts Jaeger when it is built; otherwise (or when it does not start) says why.
async fn start_jaeger(dir: &Path) -> std::result::Result<Jaeger, String> {
    let bin = telemetry::bin_dir()
        .map_err(|e| e.to_string())?
        .join("jaeger");
    if !bin.exists() {
        return Err(format!(
            "{} missing (`make telemetry` builds it)",
            bin.display()
        ));
    }
    let (otlp, otlp_http, query, query_grpc, health) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let config = telemetry::repo_file("tests/telemetry/jaeger/memory.yaml");
    let log = std::fs::File::create(dir.join("jaeger.log")).map_err(|e| e.to_string())?;
    let mut child = tokio::process::Command::new(&bin)
        .arg(format!("--config=file:{}", config.display()))
        .env("JAEGER_OTLP_GRPC", format!("127.0.0.1:{otlp}"))
        .env("JAEGER_OTLP_HTTP", format!("127.0.0.1:{otlp_http}"))
        .env("JAEGER_QUERY_HTTP", format!("127.0.0.1:{query}"))
        .env("JAEGER_QUERY_GRPC", format!("127.0.0.1:{query_grpc}"))
        .env("JAEGER_HEALTH", format!("127.0.0.1:{health}"))
        .env("JAEGER_LOG_LEVEL", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", bin.display()))?;
    let ready = eventually("Jaeger to be ready", DEADLINE, || async {
        let resp = reqwest::get(format!("http://127.0.0.1:{health}/status"))
            .await
            .ok()?;
        resp.status().is_success().then_some(())
    })
    .await;
    if let Err(err) = ready {
        let _ = child.kill().await;
        return Err(format!(
            "Jaeger did not start ({err}); log: {}",
            std::fs::read_to_string(dir.join("jaeger.log")).unwrap_or_default()
        ));
    }
    Ok(Jaeger { child, otlp, query })
}

impl Jaeger {
    /// The traces of the bench's workload Jaeger holds.
    async fn traces(&self) -> Result<usize> {
        let url = format!(
            "http://127.0.0.1:{}/api/traces?service={WORKLOAD}&lookback=1h&limit=100000",
            self.query
        );
        let json: serde_json::Value = reqwest::get(&url).await?.json().await?;
        Ok(json["data"].as_array().map_or(0, Vec::len))
    }
}

async fn prometheus_text(admin: u16) -> Result<String> {
    prometheus_text_query(admin, "").await
}

/// As [`prometheus_text`], with a query string (`?usedonly`: what the sidecar's
/// Prometheus port serves).
async fn prometheus_text_query(admin: u16, query: &str) -> Result<String> {
    let url = format!(
        "http://127.0.0.1:{admin}{}{query}",
        weir_core::mesh::PROMETHEUS_PATH
    );
    let resp = reqwest::get(&url).await?;
    anyhow::ensure!(resp.status() == 200, "{url}: {}", resp.status());
    Ok(resp.text().await?)
}

/// The series of a Prometheus text exposition: its non-comment, non-empty lines.
fn series(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

async fn cpu(lines: &mut Vec<serde_json::Value>) -> Result<()> {
    let dir = scratch_dir("bench-telemetry");
    let backend = backend::Backend::start("bench-backend", Default::default()).await?;
    let jaeger = start_jaeger(&dir).await;
    let (collector_port, collector) = match &jaeger {
        Ok(j) => (
            j.otlp,
            format!("a real Jaeger (OTLP/gRPC on 127.0.0.1:{})", j.otlp),
        ),
        Err(why) => {
            let port = free_port();
            (
                port,
                format!("a closed port, 127.0.0.1:{port} (no Jaeger: {why}); spans are dropped"),
            )
        }
    };
    let telemetry = Telemetry {
        access_log: AccessLogMode::Errors,
        tracing: Some(TracingConfig {
            host: "127.0.0.1".into(),
            port: collector_port,
            sampling_percent: SAMPLING_PERCENT,
        }),
    };
    println!(
        "  {RATE} req/s over {CONNECTIONS} keep-alive connections, {}s warm-up + {}s measured, Envoy --concurrency 2",
        WARM_UP.as_secs(),
        WINDOW.as_secs()
    );
    println!("  \"on\": access log errors, tracing {SAMPLING_PERCENT} % to {collector}");
    let mut runs: BTreeMap<bool, Vec<Run>> = BTreeMap::new();
    let mut traces: Option<usize> = None;
    let mut weir_series: Option<Vec<String>> = None;
    // Off and on interleaved, WEIR_BENCH_TELEMETRY_PAIRS times (the machine's noise
    // shows as much between runs as between the variants).
    let pairs = env_usize("WEIR_BENCH_TELEMETRY_PAIRS", 3);
    let order = (0..pairs).flat_map(|_| [false, true]);
    for (i, on) in order.enumerate() {
        let dir = scratch_dir(&format!("bench-telemetry-{i}"));
        let (port, admin) = (free_port(), free_port());
        let bootstrap = static_bootstrap(port, admin, backend.addr, on.then_some(&telemetry));
        let proxy = start_proxy(&dir, &bootstrap, port, admin).await?;
        let before = match &jaeger {
            Ok(j) => Some(j.traces().await?),
            Err(_) => None,
        };
        let run = measure(&proxy).await?;
        let label = if on { "on " } else { "off" };
        print!(
            "  run {} telemetry {label}: CPU {:5.1} % of a core, RSS {:5.1} MiB, {:.0} req/s",
            i + 1,
            run.cpu_percent,
            run.rss_mib,
            run.rate
        );
        if on {
            if let (Ok(j), Some(before)) = (&jaeger, before) {
                // The tracer exports in batches: give the last one a moment.
                tokio::time::sleep(Duration::from_secs(1)).await;
                let n = j.traces().await? - before;
                print!(", {n} traces in Jaeger");
                *traces.get_or_insert(0) += n;
            }
            let text = prometheus_text(proxy.admin_port).await?;
            weir_series = Some(
                series(&text)
                    .filter(|l| l.starts_with("envoy_weir_"))
                    .map(str::to_string)
                    .collect(),
            );
        }
        println!();
        runs.entry(on).or_default().push(run);
        proxy.stop().await;
    }
    if let Ok(mut j) = jaeger {
        let _ = j.child.kill().await;
    }
    let figure = |on: bool, f: fn(&Run) -> f64| mean(&runs[&on].iter().map(f).collect::<Vec<_>>());
    let (cpu_off, cpu_on) = (
        figure(false, |r| r.cpu_percent),
        figure(true, |r| r.cpu_percent),
    );
    let (rss_off, rss_on) = (figure(false, |r| r.rss_mib), figure(true, |r| r.rss_mib));
    let ratio = cpu_on / cpu_off;
    println!(
        "  mean of {pairs}: CPU off {cpu_off:.1} %, on {cpu_on:.1} % (on / off x{ratio:.2}, goal <= 1.10); RSS off {rss_off:.1} MiB, on {rss_on:.1} MiB"
    );
    if let Some(n) = traces {
        println!("  traces Jaeger received from the \"on\" runs: {n}");
    }
    let cpu_measure = |what: &str| format!("sidecar CPU at {RATE} req/s, telemetry {what}");
    lines.push(serde_json::json!({"run": "telemetry", "measure": cpu_measure("off"), "goal": "reported", "figure": cpu_off, "unit": "% of a core"}));
    lines.push(serde_json::json!({"run": "telemetry", "measure": cpu_measure("on (access log errors, tracing 1 %)"), "goal": "reported", "figure": cpu_on, "unit": "% of a core"}));
    lines.push(serde_json::json!({"run": "telemetry", "measure": format!("sidecar CPU at {RATE} req/s, telemetry on / off"), "goal": "<= 1.10", "figure": ratio, "unit": "x"}));
    lines.push(serde_json::json!({"run": "telemetry", "measure": format!("sidecar RSS at {RATE} req/s, telemetry off"), "goal": "reported", "figure": rss_off, "unit": "MiB"}));
    lines.push(serde_json::json!({"run": "telemetry", "measure": format!("sidecar RSS at {RATE} req/s, telemetry on"), "goal": "reported", "figure": rss_on, "unit": "MiB"}));

    println!("Telemetry: mesh metric series of one destination (after the last \"on\" run):");
    let weir = weir_series.context("no \"on\" run")?;
    let mut by_metric: BTreeMap<&str, usize> = BTreeMap::new();
    for line in &weir {
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        *by_metric.entry(base).or_default() += 1;
    }
    let codes: std::collections::BTreeSet<&str> = weir
        .iter()
        .filter_map(|l| l.split("response_code=\"").nth(1)?.split('"').next())
        .collect();
    let services: std::collections::BTreeSet<&str> = weir
        .iter()
        .filter_map(|l| l.split("destination_service=\"").nth(1)?.split('"').next())
        .collect();
    println!(
        "  {} envoy_weir_ series (destination services {services:?}, response codes {codes:?}): {}",
        weir.len(),
        by_metric
            .iter()
            .map(|(m, n)| format!("{m} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if codes.len() != 1 || services.len() != 1 {
        println!("  (not exactly one destination and one response code: the figure is not per pair and is not recorded)");
    } else {
        lines.push(serde_json::json!({"run": "telemetry", "measure": "mesh metric series per (destination, response code)", "goal": "reported", "figure": weir.len(), "unit": "series"}));
        // The byte histograms' buckets against what the sidecar's stats_config asks for.
        let config: serde_json::Value = serde_json::from_str(&sidecar_stats_config()?)?;
        let asked = config["stats_config"]["histogram_bucket_settings"][0]["buckets"]
            .as_array()
            .map(Vec::len);
        let buckets = |metric: &str| {
            weir.iter()
                .filter(|l| l.starts_with(&format!("{metric}_bucket{{")))
                .filter(|l| !l.contains("le=\"+Inf\""))
                .count()
        };
        let (request, response) = (
            buckets("envoy_weir_request_bytes"),
            buckets("envoy_weir_response_bytes"),
        );
        match asked {
            Some(asked) if asked == request && asked == response => println!(
                "  byte histograms: {asked} buckets each, as the sidecar's histogram_bucket_settings ask"
            ),
            Some(asked) => println!(
                "  byte histograms: request {request}, response {response} buckets; the sidecar's histogram_bucket_settings ask for {asked}: NOT applied"
            ),
            None => println!("  byte histograms: request {request}, response {response} buckets (the sidecar bootstrap sets no bucket settings)"),
        }
    }
    Ok(())
}

/// RSS (KiB) and Prometheus series (all, and those updated: what the sidecar's port
/// serves) of one Envoy from `bootstrap` (JSON), fed the mesh at `xds`, once every
/// cluster is warm.
async fn sidecar(
    mut bootstrap: serde_json::Value,
    params: &BootstrapParams,
    trimmed: bool,
) -> Result<(u64, usize, usize)> {
    if !trimmed {
        bootstrap
            .as_object_mut()
            .context("the bootstrap is not an object")?
            .remove("stats_config")
            .context("the sidecar bootstrap has no stats_config")?;
    }
    let dir = scratch_dir(if trimmed {
        "bench-telemetry-trimmed"
    } else {
        "bench-telemetry-full"
    });
    let path: PathBuf = dir.join("bootstrap.json");
    std::fs::write(&path, serde_json::to_string(&bootstrap)?)?;
    let Capture::Explicit { port } = params.meta.capture else {
        bail!("explicit capture expected");
    };
    let envoy = Envoy::start_from(&path, &params.node_id, port, params.admin_port).await?;
    eventually(
        "Envoy to apply every cluster",
        Duration::from_secs(120),
        || async {
            let active = envoy.stat("cluster_manager.active_clusters").await.ok()?;
            let warming = envoy.stat("cluster_manager.warming_clusters").await.ok()?;
            (active as usize >= SERVICES && warming == 0).then_some(())
        },
    )
    .await?;
    // Envoy frees the previous config's memory lazily; give it a moment, then read.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = proc_status_kib(envoy.pid().context("Envoy has no pid")?, "VmRSS")?;
    let n = series(&prometheus_text(envoy.admin_port).await?).count();
    let served = series(&prometheus_text_query(envoy.admin_port, "?usedonly").await?).count();
    envoy.stop().await;
    Ok((rss, n, served))
}

async fn series_and_memory(lines: &mut Vec<serde_json::Value>) -> Result<()> {
    let mesh = Mesh::start().await?;
    mesh.write("mesh.yaml", &bench_mesh_yaml(SERVICES, 5)?)?;
    let admin = mesh.plane.admin_addr;
    eventually(
        "the operator to load the mesh",
        Duration::from_secs(120),
        || async {
            (admin_json(admin, "/status").await.ok()?["objects"]["services"] == SERVICES)
                .then_some(())
        },
    )
    .await?;
    let mut figures = Vec::new();
    for trimmed in [true, false] {
        let node = if trimmed {
            "bench-trimmed"
        } else {
            "bench-full"
        };
        let params = sidecar_params(node, mesh.plane.xds_addr);
        let bootstrap = weir_core::bootstrap::bootstrap(&params)?;
        let (rss, n, served) = sidecar(bootstrap, &params, trimmed).await?;
        let what = if trimmed {
            "sidecar bootstrap (trimmed statistics)"
        } else {
            "without stats_config (all of Envoy's statistics)"
        };
        println!(
            "  {what:<48} RSS {:6.1} MiB, {n:>7} series ({served} updated, what port 15090 serves)",
            rss as f64 / 1024.0
        );
        if trimmed {
            lines.push(serde_json::json!({"run": "telemetry", "measure": format!("sidecar Prometheus series served (usedonly), {SERVICES} Services, no traffic"), "goal": "reported", "figure": served, "unit": "series"}));
        }
        figures.push((rss as f64 / 1024.0, n));
    }
    mesh.plane.stop().await;
    let ((rss_trim, n_trim), (rss_full, n_full)) = (figures[0], figures[1]);
    let saved_mib = rss_full - rss_trim;
    let saved_series = n_full as i64 - n_trim as i64;
    println!(
        "  saving: {saved_mib:.1} MiB ({:.0} % of RSS), {saved_series} series ({:.1} % of them)",
        100.0 * saved_mib / rss_full,
        100.0 * saved_series as f64 / n_full as f64
    );
    let m = |what: &str| format!("{what}, {SERVICES} Services");
    lines.push(serde_json::json!({"run": "telemetry", "measure": m("sidecar RSS, trimmed statistics"), "goal": "reported", "figure": rss_trim, "unit": "MiB"}));
    lines.push(serde_json::json!({"run": "telemetry", "measure": m("sidecar RSS, all Envoy statistics"), "goal": "reported", "figure": rss_full, "unit": "MiB"}));
    lines.push(serde_json::json!({"run": "telemetry", "measure": m("sidecar RSS saved by trimming statistics"), "goal": "reported", "figure": saved_mib, "unit": "MiB"}));
    lines.push(serde_json::json!({"run": "telemetry", "measure": m("sidecar Prometheus series, trimmed statistics"), "goal": "reported", "figure": n_trim, "unit": "series"}));
    lines.push(serde_json::json!({"run": "telemetry", "measure": m("sidecar Prometheus series, all Envoy statistics"), "goal": "reported", "figure": n_full, "unit": "series"}));
    lines.push(serde_json::json!({"run": "telemetry", "measure": m("sidecar Prometheus series saved by trimming statistics"), "goal": "reported", "figure": saved_series, "unit": "series"}));
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut lines = Vec::new();
    println!("Telemetry: sidecar CPU with and without telemetry (real Envoy 1.40, the outbound HTTP chain):");
    cpu(&mut lines).await?;
    if std::env::var_os("WEIR_BENCH_TELEMETRY_CPU_ONLY").is_some() {
        return Ok(());
    }
    println!("Telemetry: series and memory per sidecar, {SERVICES} Services x 5 endpoints (explicit capture, delta ADS):");
    series_and_memory(&mut lines).await?;
    append_results(&lines)?;
    Ok(())
}
