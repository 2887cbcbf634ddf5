//! `weir-operator`: the Weir control plane.
//!
//! - `run`: the operator in a cluster (or against the cluster in KUBECONFIG).
//! - `local --dir DIR`: runs without a cluster, on a directory of YAML manifests.
//! - `bootstrap ...`: prints an Envoy bootstrap for one workload.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use weir_core::bootstrap::{bootstrap_yaml, BootstrapParams, ProxyMeta, XdsProtocol, XdsTlsFiles};
use weir_core::mesh;
use weir_core::translate::telemetry::{self, AccessLogMode, Telemetry};
use weir_core::Capture;
use weir_operator::k8s::leader::LeaseSettings;
use weir_operator::k8s::KubeOptions;
use weir_operator::xds::conn::XdsLimits;
use weir_operator::{ControlPlane, Options, Source, ALLOCATOR_ENV};

// glibc malloc spends much of a full translation consolidating chunks; mimalloc halves it.
#[cfg(not(feature = "dhat-heap"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(feature = "dhat-heap")]
#[global_allocator]
static GLOBAL: dhat::Alloc = dhat::Alloc;

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
    /// Run the operator against the Kubernetes API (in-cluster config, or KUBECONFIG).
    Run {
        /// Address for ADS (gRPC).
        #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], mesh::XDS_PORT)), env = "WEIR_XDS_ADDR")]
        xds_addr: SocketAddr,
        /// Address for the admin HTTP server (probes, metrics, status).
        #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], mesh::OPERATOR_ADMIN_PORT)), env = "WEIR_ADMIN_ADDR")]
        admin_addr: SocketAddr,
        /// Namespace of the leader Lease (the operator's own namespace).
        #[arg(long, env = "POD_NAMESPACE", default_value = mesh::MESH_NAMESPACE)]
        namespace: String,
        /// This replica's identity in the Lease (its pod name).
        #[arg(long, env = "POD_NAME")]
        identity: Option<String>,
        /// Name of the leader Lease.
        #[arg(long, default_value = "weir-operator")]
        lease_name: String,
        /// How long an unrenewed Lease stays with its holder, e.g. 15s.
        #[arg(long, default_value = "15s", value_parser = parse_duration)]
        lease_duration: std::time::Duration,
        /// A leader that cannot renew for this long stops writing, e.g. 10s.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        renew_deadline: std::time::Duration,
        /// How often the Lease is read or renewed, e.g. 2s.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        retry_period: std::time::Duration,
        /// A name proxies dial the operator by, for its xDS serving certificate (repeat
        /// for several; DNS names or IP addresses).
        #[arg(long = "xds-name", default_values_t = default_xds_names())]
        xds_names: Vec<String>,
        /// Serve xDS to any client without checking its token. Only for debugging: anyone
        /// who reaches the port then gets the mesh's configuration and certificates.
        #[arg(long)]
        insecure_no_xds_auth: bool,
        /// Do not issue the webhook's serving certificate (Secret weir-webhook-tls) nor
        /// set its caBundle: you manage them (e.g. with cert-manager).
        #[arg(long)]
        no_webhook_cert: bool,
        /// How long each step of a CA rotation lasts (new root propagates, then workloads
        /// are re-issued, then the old root is dropped), e.g. 30s.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        ca_rotation_step: std::time::Duration,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        telemetry: TelemetryArgs,
    },
    /// Run the control plane on a directory of YAML manifests (Services, EndpointSlices,
    /// Pods, TrafficPolicies, MeshIdentities), re-reading it on change.
    Local {
        /// Directory of YAML manifests.
        #[arg(long)]
        dir: PathBuf,
        /// Address for ADS (gRPC).
        #[arg(long, default_value_t = SocketAddr::from(([127, 0, 0, 1], mesh::XDS_PORT)), env = "WEIR_XDS_ADDR")]
        xds_addr: SocketAddr,
        /// Address for the admin HTTP server.
        #[arg(long, default_value_t = SocketAddr::from(([127, 0, 0, 1], mesh::OPERATOR_ADMIN_PORT)), env = "WEIR_ADMIN_ADDR")]
        admin_addr: SocketAddr,
        /// Serve xDS over TLS, with a certificate from the mesh CA for this name (repeat
        /// for several; DNS names or IP addresses). Plaintext when not given.
        #[arg(long = "xds-name")]
        xds_names: Vec<String>,
        /// Keep the mesh CA in this directory (tls.crt, tls.key, ca.crt): generated there
        /// when absent, re-read when replaced. Without it the CA lives in memory.
        #[arg(long)]
        ca_dir: Option<PathBuf>,
        /// How long each step of a CA rotation lasts (new root propagates, then workloads
        /// are re-issued, then the old root is dropped), e.g. 30s.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        ca_rotation_step: std::time::Duration,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        telemetry: TelemetryArgs,
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
        #[arg(long, default_value_t = format!("127.0.0.1:{}", mesh::XDS_PORT))]
        xds_addr: String,
        /// ADS variant.
        #[arg(long, value_enum, default_value_t = Protocol::Delta)]
        xds_protocol: Protocol,
        /// How traffic reaches Envoy.
        #[arg(long, value_enum, default_value_t = CaptureArg::Explicit)]
        capture: CaptureArg,
        /// Outbound listener port in explicit mode.
        #[arg(long, default_value_t = mesh::OUTBOUND_CAPTURE_PORT)]
        outbound_port: u16,
        /// Envoy admin port (bound to 127.0.0.1).
        #[arg(long, default_value_t = mesh::ENVOY_ADMIN_PORT)]
        admin_port: u16,
        /// The workload's service account (used when the operator does not authenticate
        /// proxies; an authenticated proxy's comes from its token).
        #[arg(long)]
        service_account: Option<String>,
        /// The proxy's zone (topology.kubernetes.io/zone), for a proxy outside Kubernetes:
        /// it then prefers endpoints in this zone. In a cluster the operator takes the zone
        /// from the pod's EndpointSlices.
        #[arg(long)]
        zone: Option<String>,
        /// Connect over TLS, verifying the operator against this root certificate file
        /// (needs --token-file).
        #[arg(long, requires = "token_file")]
        xds_root_cert: Option<String>,
        /// Present this service account token (audience weir) to the operator; the file is
        /// read again on every reconnect.
        #[arg(long, requires = "xds_root_cert")]
        token_file: Option<String>,
    },
}

/// Bounds of the xDS server.
#[derive(clap::Args)]
struct LimitArgs {
    /// Open xDS connections at most; more are closed as they arrive (counted in
    /// weir_xds_refused_total{reason="connection_limit"}).
    #[arg(long, default_value_t = 10_000)]
    xds_max_connections: usize,
    /// Open ADS streams at most; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 10_000)]
    xds_max_streams: usize,
    /// A connection that opens no ADS stream within this long after the server first
    /// reads from it is closed (counted as reason="idle_timeout"), e.g. 20s.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    xds_idle_timeout: std::time::Duration,
    /// Largest xDS request accepted, in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    xds_max_request_bytes: usize,
    /// What a sidecar holds: `mesh`, every Service; `learned`, the Services its pod backs
    /// or names in `weir.dev/dependencies` and those it has called, fetching any other
    /// on its first call (transparent capture on delta xDS; others hold the mesh).
    #[arg(long, value_enum, default_value_t = ProxyScopeArg::Learned)]
    proxy_scope: ProxyScopeArg,
    /// With learned scopes: a Service a sidecar learned leaves its scope after going unused
    /// this long (its sidecar's load reports show no request or connection), e.g. 10m; its
    /// next call fetches it again. 0s: scopes never shrink.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    scope_idle: std::time::Duration,
}

/// `--proxy-scope`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ProxyScopeArg {
    /// Every Service of the mesh.
    Mesh,
    /// What the workload uses, learned; the rest on demand.
    Learned,
}

impl LimitArgs {
    fn limits(&self) -> XdsLimits {
        XdsLimits {
            max_connections: self.xds_max_connections,
            max_streams: self.xds_max_streams,
            idle_timeout: self.xds_idle_timeout,
            max_request_bytes: self.xds_max_request_bytes,
        }
    }
}

/// What every sidecar reports, sent over xDS (a pod's annotations override the access log
/// and the sampling).
#[derive(clap::Args)]
struct TelemetryArgs {
    /// Which requests sidecars log (JSON on their stdout) unless the pod says otherwise
    /// (`weir.dev/access-log`): all, errors (5xx, a response flag, a denial) or off.
    #[arg(long, default_value = "errors", value_parser = parse_access_log)]
    access_log: AccessLogMode,
    /// The OpenTelemetry collector sidecars export spans to (OTLP/gRPC), HOST:PORT, e.g.
    /// jaeger-collector.observability.svc:4317. No tracing without it.
    #[arg(long, value_parser = parse_host_port)]
    tracing_otlp_endpoint: Option<(String, u16)>,
    /// The percentage of requests a sidecar starts a trace for, 0 to 100, unless the pod
    /// says otherwise (`weir.dev/tracing-sampling`).
    #[arg(long, default_value_t = telemetry::DEFAULT_SAMPLING_PERCENT, value_parser = parse_percent)]
    tracing_sampling: f64,
}

impl TelemetryArgs {
    fn telemetry(&self) -> Telemetry {
        Telemetry {
            access_log: self.access_log,
            tracing: self.tracing_otlp_endpoint.clone().map(|(host, port)| {
                telemetry::TracingConfig {
                    host,
                    port,
                    sampling_percent: self.tracing_sampling,
                }
            }),
        }
    }
}

fn parse_access_log(s: &str) -> Result<AccessLogMode, String> {
    AccessLogMode::parse(s).ok_or_else(|| format!("{s:?}: expected all, errors or off"))
}

fn parse_host_port(s: &str) -> Result<(String, u16), String> {
    let bad = || format!("{s:?}: expected HOST:PORT, e.g. otel-collector.observability.svc:4317");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = port.parse::<u16>().map_err(|_| bad())?;
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

fn parse_percent(s: &str) -> Result<f64, String> {
    match s.trim_end_matches('%').parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!(
            "{s:?}: expected a percentage from 0 to 100, e.g. 1 or 0.5"
        )),
    }
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

fn main() -> Result<()> {
    with_allocator_env();
    run()
}

/// Re-executes this binary, same arguments and environment, with the settings of
/// [`ALLOCATOR_ENV`] it lacks: mimalloc reads them only at process start, and the operator
/// should hold the same memory however it is started (`weir-operator local` from a shell,
/// a benchmark, the Deployment). The new process has them all and goes on; so does this
/// one when the exec fails. Runs before any thread is started.
fn with_allocator_env() {
    use std::os::unix::process::CommandExt;
    let missing: Vec<(&str, &str)> = ALLOCATOR_ENV
        .into_iter()
        .filter(|(name, _)| std::env::var_os(name).is_none())
        .collect();
    if missing.is_empty() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new(exe);
    if let Some(arg0) = args.next() {
        command.arg0(arg0);
    }
    let err = command.args(args).envs(missing).exec();
    eprintln!("weir-operator: cannot re-execute with the allocator settings: {err}");
}

#[tokio::main]
async fn run() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            xds_addr,
            admin_addr,
            namespace,
            identity,
            lease_name,
            lease_duration,
            renew_deadline,
            retry_period,
            xds_names,
            insecure_no_xds_auth,
            no_webhook_cert,
            ca_rotation_step,
            limits,
            telemetry,
        } => {
            init_logging();
            let client = kube::Client::try_default()
                .await
                .context("cannot reach the Kubernetes API: run in a cluster, or set KUBECONFIG")?;
            let identity = match identity {
                Some(id) => id,
                None => hostname()?,
            };
            let lease = LeaseSettings {
                name: lease_name,
                lease_duration,
                renew_deadline,
                retry_period,
                ..LeaseSettings::new(namespace, identity)
            };
            let source = Source::Kube(KubeOptions { client, lease });
            let options = Options {
                xds_names,
                authenticate: !insecure_no_xds_auth,
                manage_webhook_cert: !no_webhook_cert,
                rotation_grace: ca_rotation_step,
                xds_limits: limits.limits(),
                telemetry: telemetry.telemetry(),
                scoped_proxies: limits.proxy_scope == ProxyScopeArg::Learned,
                scope_idle: Some(limits.scope_idle),
                ..Options::new(xds_addr, admin_addr)
            };
            serve(source, options).await
        }
        Command::Local {
            dir,
            xds_addr,
            admin_addr,
            xds_names,
            ca_dir,
            ca_rotation_step,
            limits,
            telemetry,
        } => {
            init_logging();
            let options = Options {
                xds_names,
                ca_dir,
                rotation_grace: ca_rotation_step,
                xds_limits: limits.limits(),
                telemetry: telemetry.telemetry(),
                scoped_proxies: limits.proxy_scope == ProxyScopeArg::Learned,
                scope_idle: Some(limits.scope_idle),
                ..Options::new(xds_addr, admin_addr)
            };
            serve(Source::Dir(dir), options).await
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
            service_account,
            zone,
            xds_root_cert,
            token_file,
        } => {
            let params = BootstrapParams {
                node_id,
                meta: ProxyMeta {
                    namespace,
                    pod,
                    service_account,
                    capture: match capture {
                        CaptureArg::Explicit => Capture::Explicit {
                            port: outbound_port,
                        },
                        CaptureArg::Transparent => Capture::Transparent,
                    },
                    zone,
                    reports: true,
                },
                xds_address: xds_addr,
                protocol: match xds_protocol {
                    Protocol::Delta => XdsProtocol::Delta,
                    Protocol::Sotw => XdsProtocol::Sotw,
                },
                admin_port,
                sidecar: None,
                xds_tls: xds_root_cert
                    .zip(token_file)
                    .map(|(root_cert, token)| XdsTlsFiles { root_cert, token }),
                telemetry: Default::default(),
            };
            print!("{}", bootstrap_yaml(&params)?);
            Ok(())
        }
    }
}

fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Runs the control plane until SIGTERM or Ctrl-C, then stops it gracefully.
async fn serve(source: Source, options: Options) -> Result<()> {
    #[cfg(feature = "dhat-heap")]
    let profiler = dhat::Profiler::new_heap();
    let plane = ControlPlane::start(source, options).await?;
    shutdown_signal()
        .await
        .context("waiting for a shutdown signal")?;
    // The heap as it is now, with every stream still connected.
    #[cfg(feature = "dhat-heap")]
    drop(profiler);
    tracing::info!("shutting down: closing xDS streams, releasing the Lease");
    plane.stop().await;
    Ok(())
}

/// The names of the operator's Service (config/operator/service.yaml).
fn default_xds_names() -> Vec<String> {
    [
        "weir.weir-system.svc",
        "weir.weir-system.svc.cluster.local",
        "weir.weir-system",
    ]
    .map(String::from)
    .to_vec()
}

fn hostname() -> Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("no --identity or POD_NAME, and cannot read the host name")?;
    Ok(name.trim().to_string())
}

/// A flag duration, written as in policies (`15s`, `500ms`, `1m30s`).
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    weir_api::Duration(text.to_string())
        .to_std()
        .map_err(|err| err.to_string())
}

async fn shutdown_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}
