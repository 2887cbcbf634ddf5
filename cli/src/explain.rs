//! `explain FROM TO [--method M] [--path P] [-H 'name: value']... [--grpc svc/method]
//! [--port N] [-f FILE|DIR]...`: what the mesh does with one request, step by step, from
//! `weir_core::explain` over the model the translator uses (the cluster's objects, or the
//! manifests given).

use anyhow::Context;
use std::path::PathBuf;
use weir_core::explain::{explain, Explanation, Query};
use weir_core::routing::RequestFacts;

use crate::output::{self, paint, Colour};
use crate::{Global, Outcome};

/// `explain` flags.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The caller: a pod or a workload (`NAME`, `NS/NAME`, `deploy/NAME`).
    from: String,
    /// The destination: a Service (`name`, `name.ns`, FQDN) or ClusterIP, optionally
    /// `:PORT`.
    to: String,
    /// The HTTP method.
    #[arg(long, short = 'X', default_value = "GET")]
    method: String,
    /// The path, with its query if any.
    #[arg(long, default_value = "/")]
    path: String,
    /// A request header, `name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// A gRPC call, `package.Service/Method` (POST to its path, content-type
    /// application/grpc).
    #[arg(long)]
    grpc: Option<String>,
    /// The Service port, when TO has none and the Service has several.
    #[arg(long)]
    port: Option<u16>,
    /// Evaluate these manifests instead of the cluster's objects.
    #[arg(short = 'f', long = "filename")]
    files: Vec<PathBuf>,
}

pub async fn run(g: &Global, args: Args) -> Outcome {
    let (model, namespace) = if args.files.is_empty() {
        let cluster = crate::cluster::Cluster::connect(g).await?;
        (
            crate::model::from_cluster(&cluster.client).await?,
            cluster.namespace,
        )
    } else {
        let namespace = g.namespace.clone().unwrap_or_else(|| "default".into());
        (crate::model::from_files(&args.files), namespace)
    };
    for p in &model.problems {
        eprintln!(
            "{}: {}: {}",
            paint("warning", Colour::Yellow),
            p.origin,
            p.message
        );
    }
    let request = request(&args)?;
    let query = Query {
        from: args.from.clone(),
        namespace,
        to: args.to.clone(),
        port: args.port,
        request: Some(request),
    };
    let explanation = explain(&model.index, &query)?;
    let fine = explanation
        .outcome
        .iter()
        .all(|s| s.percent == 0.0 || matches!(s.result.as_str(), "forwarded" | "passthrough"));
    if !output::structured(g.output, &explanation)? {
        print!("{}", render(&explanation));
    }
    Ok(fine)
}

fn request(args: &Args) -> anyhow::Result<RequestFacts> {
    let mut headers = Vec::new();
    for h in &args.headers {
        let (name, value) = h
            .split_once(':')
            .with_context(|| format!("-H {h:?}: write a header as 'name: value'"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let (method, path) = match &args.grpc {
        Some(call) => {
            let call = call.trim_start_matches('/');
            anyhow::ensure!(
                call.contains('/'),
                "--grpc {call:?}: write the call as package.Service/Method"
            );
            if !headers.iter().any(|(n, _)| n == "content-type") {
                headers.push(("content-type".into(), "application/grpc".into()));
            }
            ("POST".to_string(), format!("/{call}"))
        }
        None => (args.method.to_ascii_uppercase(), args.path.clone()),
    };
    anyhow::ensure!(
        path.starts_with('/'),
        "--path {path:?}: a path starts with /"
    );
    Ok(RequestFacts {
        method,
        path,
        headers,
    })
}

/// The explanation as numbered steps.
pub fn render(e: &Explanation) -> String {
    let mut out = String::new();
    let mut step = 0;
    let mut heading = |out: &mut String, title: &str| {
        step += 1;
        out.push_str(&format!(
            "{}\n",
            paint(&format!("{step}. {title}"), Colour::Bold)
        ));
    };
    heading(&mut out, "Caller");
    out.push_str(&format!(
        "   {} (workload {}), {}, identity {}\n",
        e.source.pod,
        e.source.workload,
        if e.source.sidecar {
            "with a sidecar"
        } else {
            "WITHOUT a sidecar"
        },
        e.source.identity
    ));
    if let Some(d) = &e.destination {
        heading(&mut out, "Destination");
        out.push_str(&format!(
            "   Service {} port {}: protocol {} (decided by {})\n   outbound filter chain {}\n",
            d.service, d.port, d.protocol, d.decided_by, d.listener
        ));
        if let Some(route) = &d.route {
            out.push_str(&format!("   route table {route}\n"));
        }
        out.push_str(&format!(
            "   governed by {}\n",
            d.governed_by
                .as_deref()
                .unwrap_or("no routing source (the Service as a whole)")
        ));
    }
    if let Some(r) = &e.request {
        heading(&mut out, "Request");
        out.push_str(&format!("   {} {}\n", r.method, r.path));
        for (n, v) in &r.headers {
            out.push_str(&format!("   {n}: {v}\n"));
        }
    }
    if !e.rules.is_empty() {
        heading(&mut out, "Rules, in order (the first that matches wins)");
        for r in &e.rules {
            let verdict = if r.matched {
                paint("MATCH", Colour::Green)
            } else {
                paint("no", Colour::Yellow)
            };
            out.push_str(&format!(
                "   {verdict:<5} {} rule {}: {}{}\n",
                r.source,
                r.rule,
                r.match_,
                r.reason
                    .as_ref()
                    .map(|w| format!(" -> {w}"))
                    .unwrap_or_default()
            ));
        }
    }
    if !e.backends.is_empty() {
        heading(&mut out, "Backends");
        let total: u32 = e.backends.iter().map(|b| b.weight).sum();
        for b in &e.backends {
            out.push_str(&format!(
                "   {}% {}{} ({}, {})\n",
                (b.weight * 100).checked_div(total).unwrap_or(0),
                b.service,
                b.subset
                    .as_ref()
                    .map(|s| format!(" subset {s}"))
                    .unwrap_or_default(),
                b.cluster,
                b.resolution
            ));
            for ep in &b.endpoints {
                out.push_str(&format!(
                    "      {} {}{} {} {}\n",
                    ep.address,
                    if ep.ready {
                        paint("ready", Colour::Green)
                    } else {
                        paint("NOT READY", Colour::Red)
                    },
                    ep.zone
                        .as_ref()
                        .map(|z| format!(" zone {z}"))
                        .unwrap_or_default(),
                    ep.pod.as_deref().unwrap_or("-"),
                    ep.mtls
                ));
            }
            if !b.expected_identities.is_empty() {
                out.push_str(&format!(
                    "      mTLS: the caller's sidecar accepts {}\n",
                    b.expected_identities.join(", ")
                ));
            }
            if let Some(a) = &b.authorization {
                out.push_str(&format!("      authorization: {a}\n"));
            }
        }
    }
    if !e.settings.is_empty() {
        heading(&mut out, "Settings that apply");
        for s in &e.settings {
            out.push_str(&format!("   {s}\n"));
        }
    }
    heading(&mut out, "Outcome");
    for s in &e.outcome {
        let status = match (s.status, s.grpc_status) {
            (_, Some(g)) => format!(" (gRPC status {g})"),
            (Some(code), None) => format!(" ({code})"),
            _ => String::new(),
        };
        out.push_str(&format!(
            "   {:>5.1}% {}{status}: {}\n",
            s.percent,
            output::state(&s.result),
            s.detail
        ));
    }
    for n in &e.notes {
        out.push_str(&format!("   note: {n}\n"));
    }
    out
}
