//! `stat [deploy|svc|ns] [NAME] --prometheus URL`: golden signals per workload, Service or
//! namespace, and per caller, from the mesh's metrics in Prometheus (the names the shipped
//! scrape configuration stores: `weir_requests_total`, `weir_request_duration_milliseconds`).
//!
//! Workloads and namespaces are measured where requests arrive (`reporter="destination"`,
//! so only requests that reached a pod); Services where they leave
//! (`reporter="source"`: the caller's sidecar knows the Service it chose, and counts what
//! never reached a pod too, such as 503s for no healthy upstream).

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::output::{self, Table};
use crate::{Global, Outcome};

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Resource {
    /// Workloads (Deployments, StatefulSets...), as servers.
    #[value(alias = "deployment", alias = "workload", alias = "deployments")]
    Deploy,
    /// Services, as their callers see them.
    #[value(alias = "service", alias = "services")]
    Svc,
    /// Namespaces, as servers.
    #[value(alias = "namespace", alias = "namespaces")]
    Ns,
}

/// `stat` flags.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to measure.
    #[arg(value_enum, default_value_t = Resource::Deploy)]
    resource: Resource,
    /// One of them (all when omitted).
    name: Option<String>,
    /// The Prometheus server (http://HOST:PORT).
    #[arg(long, env = "WEIR_PROMETHEUS")]
    prometheus: String,
    /// The window rates and percentiles are computed over (PromQL duration).
    #[arg(long, default_value = "1m")]
    window: String,
}

/// One row: a resource, or a resource and one caller.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Row {
    /// Namespace.
    pub namespace: String,
    /// Workload, Service or namespace name.
    pub name: String,
    /// The caller (`namespace/workload`), in the by-caller rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Share of requests that did not fail (no 5xx, gRPC OK), 0..1.
    pub success_rate: Option<f64>,
    /// Requests per second.
    pub rps: f64,
    /// Latency percentiles in milliseconds.
    pub p50_ms: Option<f64>,
    /// 95th.
    pub p95_ms: Option<f64>,
    /// 99th.
    pub p99_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    rows: Vec<Row>,
    by_caller: Vec<Row>,
}

#[derive(Deserialize)]
struct QueryResponse {
    status: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    data: Option<QueryData>,
}

#[derive(Deserialize)]
struct QueryData {
    result: Vec<Sample>,
}

#[derive(Deserialize)]
struct Sample {
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

pub async fn run(g: &Global, args: Args) -> Outcome {
    let namespace = if g.all_namespaces {
        None
    } else {
        Some(g.namespace.clone().unwrap_or_else(|| "default".into()))
    };
    let (selector, group) = selector(args.resource, namespace.as_deref(), args.name.as_deref());
    let prometheus = args.prometheus.trim_end_matches('/');
    let http = reqwest::Client::new();
    let rows = measure(&http, prometheus, &selector, &group, &args.window, false).await?;
    let by_caller = measure(&http, prometheus, &selector, &group, &args.window, true).await?;
    let report = Report { rows, by_caller };
    if output::structured(g.output, &report)? {
        return Ok(true);
    }
    if report.rows.is_empty() {
        println!("No requests in the last {} for {selector}.", args.window);
        return Ok(true);
    }
    print_rows(&report.rows, false);
    if !report.by_caller.is_empty() {
        println!();
        print_rows(&report.by_caller, true);
    }
    Ok(true)
}

/// The PromQL selector and the labels rows are grouped by.
fn selector(
    resource: Resource,
    namespace: Option<&str>,
    name: Option<&str>,
) -> (String, Vec<&'static str>) {
    let (reporter, ns_label, name_label) = match resource {
        Resource::Deploy => (
            "destination",
            "destination_namespace",
            "destination_workload",
        ),
        Resource::Svc => (
            "source",
            "destination_service_namespace",
            "destination_service_name",
        ),
        Resource::Ns => (
            "destination",
            "destination_namespace",
            "destination_namespace",
        ),
    };
    let mut matchers = vec![format!("reporter=\"{reporter}\"")];
    match resource {
        Resource::Ns => {
            if let Some(n) = name.or(namespace) {
                matchers.push(format!("{ns_label}=\"{}\"", escape(n)));
            }
        }
        _ => {
            if let Some(ns) = namespace {
                matchers.push(format!("{ns_label}=\"{}\"", escape(ns)));
            }
            match name {
                Some(n) => matchers.push(format!("{name_label}=\"{}\"", escape(n))),
                None => matchers.push(format!("{name_label}!~\"|unknown\"")),
            }
        }
    }
    let group = if ns_label == name_label {
        vec![ns_label]
    } else {
        vec![ns_label, name_label]
    };
    (format!("{{{}}}", matchers.join(",")), group)
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

async fn measure(
    http: &reqwest::Client,
    prometheus: &str,
    selector: &str,
    group: &[&str],
    window: &str,
    by_caller: bool,
) -> anyhow::Result<Vec<Row>> {
    let mut by: Vec<&str> = group.to_vec();
    if by_caller {
        by.extend(["source_namespace", "source_workload"]);
    }
    let by_text = by.join(",");
    let inner = selector.trim_start_matches('{').trim_end_matches('}');
    let total = format!("sum by ({by_text}) (rate(weir_requests_total{selector}[{window}]))");
    let ok = format!(
        "sum by ({by_text}) (rate(weir_requests_total{{{inner},response_code!~\"5..\",grpc_response_status=~\"0|unknown|\"}}[{window}]))"
    );
    let quantile = |q: f64| {
        format!(
            "histogram_quantile({q}, sum by ({by_text},le) (rate(weir_request_duration_milliseconds_bucket{selector}[{window}])))"
        )
    };
    let key = |m: &BTreeMap<String, String>| -> Vec<String> {
        by.iter()
            .map(|l| m.get(*l).cloned().unwrap_or_default())
            .collect()
    };
    let mut rows: BTreeMap<Vec<String>, Row> = BTreeMap::new();
    for s in query(http, prometheus, &total).await? {
        let k = key(&s.metric);
        let row = rows.entry(k.clone()).or_default();
        row.namespace = k[0].clone();
        row.name = k
            .get(1)
            .filter(|_| group.len() > 1)
            .cloned()
            .unwrap_or_else(|| k[0].clone());
        if by_caller {
            row.from = Some(format!("{}/{}", k[k.len() - 2], k[k.len() - 1]));
        }
        row.rps = value(&s).unwrap_or(0.0);
    }
    rows.retain(|_, r| r.rps > 0.0);
    for s in query(http, prometheus, &ok).await? {
        if let Some(row) = rows.get_mut(&key(&s.metric)) {
            row.success_rate = value(&s).map(|v| (v / row.rps).min(1.0));
        }
    }
    for row in rows.values_mut() {
        row.success_rate.get_or_insert(0.0);
    }
    for (q, set) in [
        (
            0.5,
            (|r: &mut Row, v| r.p50_ms = v) as fn(&mut Row, Option<f64>),
        ),
        (0.95, |r: &mut Row, v| r.p95_ms = v),
        (0.99, |r: &mut Row, v| r.p99_ms = v),
    ] {
        for s in query(http, prometheus, &quantile(q)).await? {
            if let Some(row) = rows.get_mut(&key(&s.metric)) {
                set(row, value(&s));
            }
        }
    }
    Ok(rows.into_values().collect())
}

async fn query(
    http: &reqwest::Client,
    prometheus: &str,
    promql: &str,
) -> anyhow::Result<Vec<Sample>> {
    let url = reqwest::Url::parse_with_params(
        &format!("{prometheus}/api/v1/query"),
        &[("query", promql)],
    )
    .with_context(|| format!("--prometheus {prometheus:?} is not a URL"))?;
    let response = http
        .get(url)
        .send()
        .await
        .with_context(|| format!("querying Prometheus at {prometheus}"))?;
    let code = response.status();
    let text = response.text().await?;
    let parsed: QueryResponse = serde_json::from_str(&text)
        .with_context(|| format!("Prometheus answered {code}: {text:.300}"))?;
    if parsed.status != "success" {
        bail!(
            "Prometheus refused {promql}: {}",
            parsed.error.unwrap_or_default()
        );
    }
    Ok(parsed.data.map(|d| d.result).unwrap_or_default())
}

fn value(s: &Sample) -> Option<f64> {
    s.value.1.parse::<f64>().ok().filter(|v| v.is_finite())
}

fn print_rows(rows: &[Row], by_caller: bool) {
    let mut header = vec!["NAMESPACE", "NAME"];
    if by_caller {
        header.push("FROM");
    }
    header.extend(["SUCCESS", "RPS", "P50", "P95", "P99"]);
    let mut table = Table::new(&header);
    let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}ms"));
    for r in rows {
        let mut row = vec![r.namespace.clone(), r.name.clone()];
        if by_caller {
            row.push(r.from.clone().unwrap_or_default());
        }
        let success = r
            .success_rate
            .map_or("-".into(), |s| format!("{:.2}%", s * 100.0));
        let success = match r.success_rate {
            Some(s) if s < 0.95 => output::paint(&success, output::Colour::Red),
            _ => success,
        };
        row.extend([
            success,
            format!("{:.2}", r.rps),
            ms(r.p50_ms),
            ms(r.p95_ms),
            ms(r.p99_ms),
        ]);
        table.row(row);
    }
    table.print();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_measure_workloads_at_the_server_and_services_at_the_caller() {
        let (s, g) = selector(Resource::Deploy, Some("shop"), Some("web"));
        assert_eq!(
            s,
            r#"{reporter="destination",destination_namespace="shop",destination_workload="web"}"#
        );
        assert_eq!(g, ["destination_namespace", "destination_workload"]);
        let (s, _) = selector(Resource::Svc, None, None);
        assert_eq!(
            s,
            r#"{reporter="source",destination_service_name!~"|unknown"}"#
        );
        let (s, g) = selector(Resource::Ns, Some("default"), Some("shop"));
        assert_eq!(
            s,
            r#"{reporter="destination",destination_namespace="shop"}"#
        );
        assert_eq!(g, ["destination_namespace"]);
    }
}
