//! `weir-webhook`: the sidecar injector.
//!
//! - `serve`: the HTTPS admission webhook (AdmissionReview v1 at `POST /inject`).
//! - `inject -f FILE` (or `-f -`): prints the manifests with their pods injected.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use weir_webhook::cli::MeshArgs;

#[derive(Parser)]
#[command(name = "weir-webhook", version, about = "The Weir sidecar injector")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the mutating admission webhook over HTTPS.
    Serve {
        /// Listen address.
        #[arg(long, default_value = "0.0.0.0:9443")]
        addr: std::net::SocketAddr,
        /// Serving certificate (PEM); re-read when it changes.
        #[arg(long, default_value = "/etc/weir/webhook/tls.crt")]
        tls_cert: std::path::PathBuf,
        /// Serving key (PEM); re-read when it changes.
        #[arg(long, default_value = "/etc/weir/webhook/tls.key")]
        tls_key: std::path::PathBuf,
        #[command(flatten)]
        mesh: MeshArgs,
    },
    /// Print manifests with the pods of Pods, Deployments, StatefulSets, DaemonSets,
    /// ReplicaSets, Jobs and CronJobs injected; other documents pass through.
    Inject {
        /// The manifest file, or - for standard input.
        #[arg(short = 'f', long = "filename")]
        file: String,
        #[command(flatten)]
        mesh: MeshArgs,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Serve {
            addr,
            tls_cert,
            tls_key,
            mesh,
        } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .init();
            let listener = std::net::TcpListener::bind(addr)
                .with_context(|| format!("cannot listen on {addr}"))?;
            tracing::info!(%addr, "serving AdmissionReview v1 at /inject");
            weir_webhook::server::serve(
                listener,
                tls_cert,
                tls_key,
                std::sync::Arc::new(mesh.config()),
            )
            .await
        }
        Command::Inject { file, mesh } => {
            print!("{}", weir_webhook::cli::inject_file(&file, &mesh.config())?);
            Ok(())
        }
    }
}
