//! `weir-operator`: the Weir control plane.
//!
//! - `local --dir DIR`: runs without a cluster, on a directory of YAML manifests.
//! - `bootstrap ...`: prints an Envoy bootstrap for one workload.
#![deny(warnings)]
#![forbid(unsafe_code)]

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use weir_core::bootstrap::{bootstrap_yaml, BootstrapParams, ProxyMeta, XdsProtocol};
use weir_core::Capture;

// glibc malloc spends much of a full translation consolidating chunks; mimalloc halves it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "weir-operator",
    version,
    about = "The Weir service mesh control plane"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane on a directory of YAML manifests (Services, EndpointSlices,
    /// Pods, TrafficPolicies, MeshIdentities), re-reading it on change.
    Local {
        /// Directory of YAML manifests.
        #[arg(long)]
        dir: PathBuf,
        /// Address for ADS (gRPC).
        #[arg(long, default_value = "127.0.0.1:15010", env = "WEIR_XDS_ADDR")]
        xds_addr: SocketAddr,
        /// Address for the admin HTTP server.
        #[arg(long, default_value = "127.0.0.1:15090", env = "WEIR_ADMIN_ADDR")]
        admin_addr: SocketAddr,
    },
    /// Print an Envoy bootstrap (YAML) for one workload.
    Bootstrap {
        /// Envoy node id, unique per proxy.
        #[arg(long)]
        node_id: String,
        /// The workload's namespace.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// The workload's pod name.
        #[arg(long)]
        pod: String,
        /// The operator's xDS address, host:port.
        #[arg(long, default_value = "127.0.0.1:15010")]
        xds_addr: String,
        /// ADS variant.
        #[arg(long, value_enum, default_value_t = Protocol::Delta)]
        xds_protocol: Protocol,
        /// How traffic reaches Envoy.
        #[arg(long, value_enum, default_value_t = CaptureArg::Explicit)]
        capture: CaptureArg,
        /// Outbound listener port in explicit mode.
        #[arg(long, default_value_t = 15001)]
        outbound_port: u16,
        /// Envoy admin port (bound to 127.0.0.1).
        #[arg(long, default_value_t = 15000)]
        admin_port: u16,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Protocol {
    Delta,
    Sotw,
}

#[derive(Clone, Copy, ValueEnum)]
enum CaptureArg {
    Explicit,
    Transparent,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Local {
            dir,
            xds_addr,
            admin_addr,
        } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .with_writer(std::io::stderr)
                .init();
            let plane = weir_operator::LocalControlPlane::start(dir, xds_addr, admin_addr).await?;
            shutdown_signal()
                .await
                .context("waiting for a shutdown signal")?;
            tracing::info!("shutting down");
            plane.stop().await;
            Ok(())
        }
        Command::Bootstrap {
            node_id,
            namespace,
            pod,
            xds_addr,
            xds_protocol,
            capture,
            outbound_port,
            admin_port,
        } => {
            let params = BootstrapParams {
                node_id,
                meta: ProxyMeta {
                    namespace,
                    pod,
                    capture: match capture {
                        CaptureArg::Explicit => Capture::Explicit {
                            port: outbound_port,
                        },
                        CaptureArg::Transparent => Capture::Transparent,
                    },
                },
                xds_address: xds_addr,
                protocol: match xds_protocol {
                    Protocol::Delta => XdsProtocol::Delta,
                    Protocol::Sotw => XdsProtocol::Sotw,
                },
                admin_port,
                sidecar: None,
            };
            print!("{}", bootstrap_yaml(&params)?);
            Ok(())
        }
    }
}

async fn shutdown_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}
