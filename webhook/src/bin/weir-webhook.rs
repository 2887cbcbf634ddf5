//! `weir-webhook`: the sidecar injector.
//!
//! - `serve`: the HTTPS admission webhook (AdmissionReview v1 at `POST /inject`).
//! - `inject -f FILE` (or `-f -`): prints the manifests with their pods injected.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::io::Read;
use weir_webhook::inject::MeshConfig;

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

#[derive(clap::Args)]
struct MeshArgs {
    /// The Envoy image.
    #[arg(long, default_value_t = MeshConfig::default().proxy_image)]
    proxy_image: String,
    /// The weir-init image.
    #[arg(long, default_value_t = MeshConfig::default().init_image)]
    init_image: String,
    /// The operator's xDS address as pods reach it.
    #[arg(long, default_value_t = MeshConfig::default().xds_address)]
    xds_address: String,
    /// Inject Envoy as a regular container (for clusters before Kubernetes 1.29) instead of
    /// a native sidecar.
    #[arg(long)]
    no_native_sidecars: bool,
}

impl MeshArgs {
    fn config(self) -> MeshConfig {
        MeshConfig {
            proxy_image: self.proxy_image,
            init_image: self.init_image,
            xds_address: self.xds_address,
            native_sidecars: !self.no_native_sidecars,
            ..MeshConfig::default()
        }
    }
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
            let mut text = String::new();
            if file == "-" {
                std::io::stdin()
                    .read_to_string(&mut text)
                    .context("reading standard input")?;
            } else {
                text = std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?;
            }
            let (yaml, warnings) =
                weir_webhook::manifests::inject_manifests(&text, &mesh.config())?;
            for w in warnings {
                eprintln!("warning: {w}");
            }
            print!("{yaml}");
            Ok(())
        }
    }
}
