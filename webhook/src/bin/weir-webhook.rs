//! `weir-webhook`: the sidecar injector.
//!
//! - `inject -f FILE` (or `-f -`): prints the manifests with their pods injected.
#![deny(warnings)]
#![forbid(unsafe_code)]

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

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Inject { file, mesh } => {
            let mut text = String::new();
            if file == "-" {
                std::io::stdin()
                    .read_to_string(&mut text)
                    .context("reading standard input")?;
            } else {
                text = std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?;
            }
            let config = MeshConfig {
                proxy_image: mesh.proxy_image,
                init_image: mesh.init_image,
                xds_address: mesh.xds_address,
                native_sidecars: !mesh.no_native_sidecars,
                ..MeshConfig::default()
            };
            let (yaml, warnings) = weir_webhook::manifests::inject_manifests(&text, &config)?;
            for w in warnings {
                eprintln!("warning: {w}");
            }
            print!("{yaml}");
            Ok(())
        }
    }
}
