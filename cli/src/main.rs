//! `kubectl weir`: a kubectl plugin for the Weir mesh.
//!
//! ```text
//! kubeconfig/context/-n ─> kube::Client ─┬─> API objects ──> weir_core (Index, binding, explain,
//!                                        │                   status) ──> analyze, explain
//!                                        ├─> API server proxy ─> operator pods' admin API
//!                                        │     (/debug/proxies, /debug/config, /status, /readyz)
//!                                        │     ──> proxy-status, proxy-config, check
//!                                        └─> checks (versions, CRDs, RBAC, webhook, CA, pods)
//! files (-f) ──> the same Index, no cluster ──> analyze, explain
//! Prometheus HTTP API ──> stat
//! ```
//!
//! Output is a table (colour only on a terminal, never with `NO_COLOR`), or the same data
//! as JSON or YAML with `-o`. The exit code is 1 when something is wrong (a failed check, a
//! NACK, an analysis error, a request predicted to fail), 2 when the command could not run.

#![forbid(unsafe_code)]

mod analyze;
mod check;
mod cluster;
mod envoy_json;
mod explain;
mod model;
mod output;
mod proxy_config;
mod proxy_status;
mod stat;

use clap::{Parser, Subcommand};
use output::Format;

#[derive(Parser)]
#[command(
    name = "kubectl-weir",
    bin_name = "kubectl weir",
    version,
    about = "Inspect and troubleshoot a Weir service mesh"
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// What every command shares, as kubectl spells it.
#[derive(Debug, Clone, clap::Args)]
pub struct Global {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true, env = "KUBECONFIG")]
    kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
    /// The namespace (default: the context's).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long, global = true)]
    all_namespaces: bool,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    /// The namespace Weir is installed in.
    #[arg(long, global = true, default_value = weir_core::mesh::MESH_NAMESPACE)]
    mesh_namespace: String,
}

#[derive(Subcommand)]
enum Command {
    /// Check that the cluster can run Weir (--pre) or that the installed mesh is healthy.
    Check(check::Args),
    /// Each proxy's sync state per resource type (SYNCED, STALE, NACKED).
    ProxyStatus(proxy_status::Args),
    /// What the operator serves a proxy: listeners, routes, clusters, endpoints, secrets.
    ProxyConfig(proxy_config::Args),
    /// Find problems in manifests (-f) or in the cluster, with the operator's own checks.
    Analyze(analyze::Args),
    /// Why a request from a pod to a Service gets the answer it gets.
    Explain(explain::Args),
    /// Golden signals (success rate, requests per second, latency) from Prometheus.
    Stat(stat::Args),
    /// Print manifests with their pods injected (as the webhook would).
    Inject(InjectArgs),
}

#[derive(clap::Args)]
struct InjectArgs {
    /// The manifest file, or - for standard input.
    #[arg(short = 'f', long = "filename")]
    file: String,
    #[command(flatten)]
    mesh: weir_webhook::cli::MeshArgs,
}

/// How a command ended: `Ok(true)` all is well, `Ok(false)` it found something wrong.
pub type Outcome = anyhow::Result<bool>;

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    let result = runtime.block_on(run(cli));
    let code = match result {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("{}: {e:#}", output::paint("error", output::Colour::Red));
            2
        }
    };
    std::process::exit(code);
}

async fn run(cli: Cli) -> Outcome {
    let g = cli.global;
    match cli.command {
        Command::Check(args) => check::run(&g, args).await,
        Command::ProxyStatus(args) => proxy_status::run(&g, args).await,
        Command::ProxyConfig(args) => proxy_config::run(&g, args).await,
        Command::Analyze(args) => analyze::run(&g, args).await,
        Command::Explain(args) => explain::run(&g, args).await,
        Command::Stat(args) => stat::run(&g, args).await,
        Command::Inject(args) => {
            print!(
                "{}",
                weir_webhook::cli::inject_file(&args.file, &args.mesh.config())?
            );
            Ok(true)
        }
    }
}
