//! Real Prometheus and Jaeger for the observability tests, built from Go modules by
//! `tests/telemetry/build.sh` (`make telemetry`) into a cache outside the checkout, and
//! run in the peer network namespace (the node, which reaches every pod).
//!
//! ```text
//! prometheus_config(shipped scrape file, sidecars) --> the shipped job `weir-sidecars`
//!   with its relabelling kept and Kubernetes discovery replaced by a file of targets that
//!   carry the same __meta_kubernetes_pod_* labels Kubernetes would give
//! Net::spawn(Peer, prometheus_args | jaeger_args) --> servers on the peer's loopback
//! query(net, promql) / traces(net, service) --> JSON through the peer's HTTP client
//! ```

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

use crate::netns::{Net, Side};

/// Where the binaries are: `WEIR_TELEMETRY_BIN`, else the default cache for the pinned
/// versions.
pub fn bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("WEIR_TELEMETRY_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("telemetry");
    let required = |module: &str, path: &str| -> Result<String> {
        let text = std::fs::read_to_string(root.join(module).join("go.mod"))?;
        text.lines()
            .map(|l| l.trim().trim_start_matches("require").trim())
            .find_map(|l| {
                let (m, v) = l.split_once(' ')?;
                (m == path).then(|| v.split_whitespace().next().unwrap_or("").to_string())
            })
            .with_context(|| format!("tests/telemetry/{module}/go.mod requires no {path}"))
    };
    let prometheus = required("prometheus", "github.com/prometheus/prometheus")?;
    let jaeger = required("jaeger", "github.com/jaegertracing/jaeger")?;
    let cache = match std::env::var_os("WEIR_TELEMETRY_CACHE") {
        Some(c) => PathBuf::from(c),
        None => PathBuf::from(std::env::var_os("HOME").context("no HOME")?)
            .join(".cache/weir/telemetry"),
    };
    Ok(cache.join(format!("{prometheus}-{jaeger}")))
}

/// Whether Prometheus and Jaeger are built; in CI their absence is a failure, elsewhere a
/// skip that says how to build them.
pub fn can_run(test: &str) -> bool {
    crate::bins::built_binaries(test, bin_dir(), &["prometheus", "jaeger"], "telemetry")
}

/// A file of the repository, e.g. `config/observability/prometheus-scrape.yaml`.
pub fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// One scrape target as Kubernetes discovery would describe the sidecar of a pod.
pub struct SidecarTarget<'a> {
    /// Pod IP.
    pub ip: &'a str,
    /// Namespace.
    pub namespace: &'a str,
    /// Pod name.
    pub pod: &'a str,
}

/// Prometheus' configuration: the shipped scrape job `weir-sidecars` (relabelling as
/// shipped), its Kubernetes discovery replaced by a target file in `dir`, scraping every
/// `interval`. Returns the configuration file.
pub fn prometheus_config(dir: &Path, targets: &[SidecarTarget], interval: &str) -> Result<PathBuf> {
    let shipped =
        std::fs::read_to_string(repo_file("config/observability/prometheus-scrape.yaml"))?;
    let mut config: serde_json::Value = serde_saphyr::from_str(&shipped)?;
    let jobs = config["scrape_configs"]
        .as_array_mut()
        .context("the shipped configuration has no scrape_configs")?;
    let job = jobs
        .iter_mut()
        .find(|j| j["job_name"] == "weir-sidecars")
        .context("the shipped configuration has no job weir-sidecars")?;
    let job = job.as_object_mut().context("the job is not a mapping")?;
    if job.remove("kubernetes_sd_configs").is_none() {
        bail!("job weir-sidecars does not discover pods through Kubernetes");
    }
    let file_targets: Vec<serde_json::Value> = targets
        .iter()
        .map(|t| {
            serde_json::json!({
                "targets": [format!("{}:{}", t.ip, weir_core::mesh::PROMETHEUS_PORT)],
                "labels": {
                    "__meta_kubernetes_pod_ip": t.ip,
                    "__meta_kubernetes_namespace": t.namespace,
                    "__meta_kubernetes_pod_name": t.pod,
                    "__meta_kubernetes_pod_container_port_name": weir_core::mesh::METRICS_PORT_NAME,
                    "__meta_kubernetes_pod_container_port_number": weir_core::mesh::PROMETHEUS_PORT.to_string(),
                },
            })
        })
        .collect();
    let targets_file = dir.join("sidecars.json");
    std::fs::write(&targets_file, serde_json::to_string(&file_targets)?)?;
    job.insert(
        "file_sd_configs".into(),
        serde_json::json!([{"files": [targets_file], "refresh_interval": "1s"}]),
    );
    job.insert("scrape_interval".into(), interval.into());
    config["global"] =
        serde_json::json!({"scrape_interval": interval, "evaluation_interval": interval});
    let file = dir.join("prometheus.yml");
    // JSON is YAML.
    std::fs::write(&file, serde_json::to_string_pretty(&config)?)?;
    Ok(file)
}

/// Where Prometheus answers in the peer namespace.
pub const PROMETHEUS_ADDR: &str = "127.0.0.1:19090";
/// Jaeger's OTLP/gRPC receiver, on the peer's address (sidecars export to it).
pub const JAEGER_OTLP: &str = "10.200.0.3:4317";
/// Jaeger's query API in the peer namespace.
pub const JAEGER_QUERY: &str = "127.0.0.1:16686";
const JAEGER_HEALTH: &str = "127.0.0.1:13133";

/// Starts Prometheus with `config` in the peer namespace (data in `dir`); returns once
/// it is ready.
pub fn start_prometheus(net: &mut Net, config: &Path, dir: &Path) -> Result<()> {
    let bin = bin_dir()?.join("prometheus");
    let args = [
        bin.display().to_string(),
        format!("--config.file={}", config.display()),
        format!("--storage.tsdb.path={}", dir.join("data").display()),
        format!("--web.listen-address={PROMETHEUS_ADDR}"),
        // Targets are applied every 5 s by default: the test polls, but need not wait.
        "--scrape.discovery-reload-interval=100ms".into(),
        "--log.level=warn".into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    net.spawn(Side::Peer, &args);
    net.wait_for("Prometheus to be ready", || {
        net.get(Side::Peer, &format!("http://{PROMETHEUS_ADDR}/-/ready"))
            .starts_with("200")
    });
    Ok(())
}

/// Starts Jaeger (all-in-one, memory storage) in the peer namespace; returns once it is
/// ready.
pub fn start_jaeger(net: &mut Net) -> Result<()> {
    let bin = bin_dir()?.join("jaeger");
    let config = repo_file("tests/telemetry/jaeger/memory.yaml");
    let args = [
        "env".to_string(),
        format!("JAEGER_OTLP_GRPC={JAEGER_OTLP}"),
        "JAEGER_OTLP_HTTP=127.0.0.1:4318".into(),
        format!("JAEGER_QUERY_HTTP={JAEGER_QUERY}"),
        "JAEGER_QUERY_GRPC=127.0.0.1:16685".into(),
        format!("JAEGER_HEALTH={JAEGER_HEALTH}"),
        "JAEGER_LOG_LEVEL=warn".into(),
        bin.display().to_string(),
        format!("--config=file:{}", config.display()),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    net.spawn(Side::Peer, &args);
    net.wait_for("Jaeger to be ready", || {
        net.get(Side::Peer, &format!("http://{JAEGER_HEALTH}/status"))
            .starts_with("200")
    });
    Ok(())
}

/// Percent-encodes a query parameter.
pub fn encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// One series of an instant query: its labels and value.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Labels.
    pub labels: serde_json::Map<String, serde_json::Value>,
    /// Value (NaN when Prometheus says so).
    pub value: f64,
}

impl Sample {
    /// A label's value ("" when absent).
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).and_then(|v| v.as_str()).unwrap_or("")
    }
}

/// Evaluates `promql` now through Prometheus' HTTP API; an error names Prometheus' reason.
pub fn query(net: &Net, promql: &str) -> Result<Vec<Sample>> {
    let url = format!(
        "http://{PROMETHEUS_ADDR}/api/v1/query?query={}",
        encode(promql)
    );
    let body = net.fetch(Side::Peer, &url);
    let json: serde_json::Value =
        serde_json::from_str(&body).with_context(|| format!("{promql}: {body}"))?;
    if json["status"] != "success" {
        bail!("{promql}: {}", json["error"]);
    }
    let result = &json["data"]["result"];
    let samples = match json["data"]["resultType"].as_str() {
        Some("vector") => result
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| Sample {
                labels: s["metric"].as_object().cloned().unwrap_or_default(),
                value: value(&s["value"]),
            })
            .collect(),
        Some("scalar") => vec![Sample {
            labels: Default::default(),
            value: value(result),
        }],
        other => bail!("{promql}: result type {other:?}"),
    };
    Ok(samples)
}

fn value(pair: &serde_json::Value) -> f64 {
    pair[1]
        .as_str()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(f64::NAN)
}

/// The traces Jaeger holds for `service` (its v1 query API: `data[]` with `spans` and
/// `processes`).
pub fn traces(net: &Net, service: &str) -> Result<Vec<serde_json::Value>> {
    let url = format!(
        "http://{JAEGER_QUERY}/api/traces?service={}&lookback=1h&limit=100",
        encode(service)
    );
    let body = net.fetch(Side::Peer, &url);
    let json: serde_json::Value =
        serde_json::from_str(&body).with_context(|| format!("Jaeger: {body}"))?;
    Ok(json["data"].as_array().cloned().unwrap_or_default())
}
