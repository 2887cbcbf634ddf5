//! The Weir operator: everything with I/O around the pure core.
//!
//! ```text
//! local::run (directory)  --+
//!                           +--Vec<Event>--> mesh_state::run_pipeline --> MeshState (index,
//! k8s::watch (API server) --+    translator, snapshots) --> xds (ADS, SotW and delta) --> Envoy
//!                                            admin (HTTP) reads the MeshState
//! k8s::leader (Lease) --> k8s::status writes policy conditions and MeshStatus (leader only)
//! ```

pub mod admin;
pub mod denials;
pub mod identity;
pub mod k8s;
pub mod local;
pub mod mesh_state;
pub mod metrics;
pub mod sync;
pub mod usage;
pub mod xds;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

pub use mesh_state::MeshState;

/// The allocator settings the operator runs with: mimalloc gives freed pages back to the
/// kernel at once and commits arena memory as it is used, so the RSS follows the live heap
/// (README, Performance). `weir-operator` re-executes itself with those its environment
/// lacks, however it is started.
pub const ALLOCATOR_ENV: [(&str, &str); 2] = [
    ("MIMALLOC_PURGE_DELAY", "0"),
    ("MIMALLOC_ARENA_EAGER_COMMIT", "0"),
];

/// Where the control plane's inputs come from.
#[derive(Debug)]
pub enum Source {
    /// A directory of YAML manifests (local mode).
    Dir(PathBuf),
    /// The Kubernetes API (operator mode).
    Kube(k8s::KubeOptions),
}

/// How the control plane serves, and how it proves and checks identities.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where ADS is served.
    pub xds_addr: SocketAddr,
    /// Where the admin HTTP server listens.
    pub admin_addr: SocketAddr,
    /// The names proxies dial the operator by (DNS names or IP addresses), put in its
    /// serving certificate; xDS is plaintext when there are none.
    pub xds_names: Vec<String>,
    /// Refuse proxies that do not prove their pod with a service account token (needs the
    /// Kubernetes API to review tokens).
    pub authenticate: bool,
    /// Local mode: the directory that keeps the CA (`tls.crt`, `tls.key`, `ca.crt`; generated
    /// there when absent, re-read when changed). Without it the CA lives in memory.
    pub ca_dir: Option<PathBuf>,
    /// Kubernetes mode: issue the webhook's serving certificate and keep its caBundle.
    pub manage_webhook_cert: bool,
    /// Length of each step of a CA rotation (see [`identity`]).
    pub rotation_grace: Duration,
    /// Bounds of the xDS server.
    pub xds_limits: xds::conn::XdsLimits,
    /// What every sidecar reports (metrics are always on; access log default, tracing).
    pub telemetry: weir_core::translate::telemetry::Telemetry,
    /// Scoped proxies: a transparent-capture sidecar on delta xDS holds the Services of
    /// its scope only and fetches the others on first use (see `weir_core::scope`).
    pub scoped_proxies: bool,
    /// A Service a scoped proxy learned leaves its scope after going unused this long
    /// (None: never).
    pub scope_idle: Option<Duration>,
}

impl Options {
    /// Plaintext xDS without authentication, on the given addresses.
    pub fn new(xds_addr: SocketAddr, admin_addr: SocketAddr) -> Options {
        Options {
            xds_addr,
            admin_addr,
            xds_names: Vec::new(),
            authenticate: false,
            ca_dir: None,
            manage_webhook_cert: false,
            rotation_grace: identity::ROTATION_GRACE,
            xds_limits: xds::conn::XdsLimits::default(),
            telemetry: Default::default(),
            scoped_proxies: true,
            scope_idle: Some(weir_core::mesh::DEFAULT_SCOPE_IDLE),
        }
    }
}

/// A running control plane.
#[derive(Debug)]
pub struct ControlPlane {
    /// Shared state, for tests and embedding.
    pub state: Arc<MeshState>,
    /// Where ADS is served.
    pub xds_addr: SocketAddr,
    /// Where the admin HTTP server is.
    pub admin_addr: SocketAddr,
    /// Whether this replica leads (always false in local mode, which writes no status).
    pub leading: watch::Receiver<bool>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Errors starting the control plane.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The directory is missing or not a directory.
    #[error("{0} is not a directory: give --dir a directory of YAML manifests")]
    NotADirectory(PathBuf),
    /// Authentication asked for without an API server to review tokens.
    #[error("proxy authentication needs the Kubernetes API (TokenReview): local mode cannot authenticate proxies")]
    AuthenticationNeedsKube,
    /// The xDS TLS setup failed.
    #[error("xDS TLS: {0}")]
    Tls(#[from] xds::tls::TlsError),
    /// An address could not be bound.
    #[error("cannot listen on {addr} for {what}: {source} (is another operator running? pick another address)")]
    Bind {
        /// xDS or admin.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

impl ControlPlane {
    /// Starts the source, the CA, the pipeline, the xDS server and the admin server.
    pub async fn start(source: Source, options: Options) -> Result<Self, StartError> {
        if let Source::Dir(dir) = &source {
            if !dir.is_dir() {
                return Err(StartError::NotADirectory(dir.clone()));
            }
            if options.authenticate {
                return Err(StartError::AuthenticationNeedsKube);
            }
        }
        let state = Arc::new(MeshState::with_rotation_grace(options.rotation_grace));
        state.set_telemetry(options.telemetry.clone());
        state.set_scoped_proxies(options.scoped_proxies);
        state.usage.set_idle(options.scope_idle);
        let tls = if options.xds_names.is_empty() {
            None
        } else {
            Some(xds::tls::XdsTls::new(options.xds_names.clone())?)
        };
        let (xds_listener, xds_addr) = listen("xDS", options.xds_addr).await?;
        let (admin_listener, admin_addr) = listen("admin", options.admin_addr).await?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let signal = move || {
            let mut rx = shutdown_rx.clone();
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }
        };
        let (tx, rx) = mpsc::channel(64);
        let mut tasks = Vec::new();
        let mut authenticator: xds::auth::Authenticator = None;
        let leading = match source {
            Source::Dir(dir) => {
                let stop = signal();
                let source_state = state.clone();
                tasks.push(tokio::spawn(async move {
                    tokio::select! {
                        _ = local::run(dir, source_state, tx) => {}
                        _ = stop => {}
                    }
                }));
                let stop = signal();
                let ca_state = state.clone();
                let ca_dir = options.ca_dir.clone();
                tasks.push(tokio::spawn(async move {
                    tokio::select! {
                        _ = local::run_ca(ca_state, ca_dir) => {}
                        _ = stop => {}
                    }
                }));
                tracing::warn!("local mode: proxies are not authenticated (no API server to review their tokens); anyone who reaches the xDS port gets the mesh's configuration and certificates");
                watch::channel(false).1
            }
            Source::Kube(kube_options) => {
                if options.authenticate {
                    authenticator = Some(Arc::new(xds::auth::TokenReviewer::new(
                        kube_options.client.clone(),
                    )));
                } else {
                    tracing::warn!("proxy authentication is OFF (--insecure-no-xds-auth): anyone who reaches the xDS port gets the mesh's configuration and certificates");
                }
                k8s::spawn(
                    kube_options,
                    options.manage_webhook_cert,
                    state.clone(),
                    tx,
                    signal.clone(),
                    &mut tasks,
                )
            }
        };
        tasks.push(tokio::spawn(mesh_state::run_pipeline(state.clone(), rx)));
        let authority = state.identity.clone();
        let stop = signal();
        tasks.push(tokio::spawn(async move {
            tokio::select! {
                _ = authority.run() => {}
                _ = stop => {}
            }
        }));
        if let Some(tls) = &tls {
            let (tls, authority, stop) = (tls.clone(), state.identity.clone(), signal());
            tasks.push(tokio::spawn(async move {
                tokio::select! {
                    _ = tls.run(authority) => {}
                    _ = stop => {}
                }
            }));
        }
        let xds_state = state.clone();
        let stop = signal();
        let limits = options.xds_limits;
        tasks.push(tokio::spawn(async move {
            if let Err(err) =
                xds::serve(xds_state, xds_listener, tls, authenticator, limits, stop).await
            {
                tracing::error!(%err, "xDS server failed");
            }
        }));
        let admin_state = state.clone();
        let stop = signal();
        tasks.push(tokio::spawn(async move {
            if let Err(err) = admin::serve(admin_state, admin_listener, stop).await {
                tracing::error!(%err, "admin server failed");
            }
        }));
        tracing::info!(%xds_addr, %admin_addr, tls = !options.xds_names.is_empty(), authenticate = options.authenticate, "control plane started");
        Ok(ControlPlane {
            state,
            xds_addr,
            admin_addr,
            leading,
            shutdown,
            tasks,
        })
    }

    /// Ends every xDS stream (proxies reconnect elsewhere or later), stops accepting new
    /// ones, releases the Lease if held, and stops every task, waiting at most
    /// [`STOP_GRACE`] for them.
    pub async fn stop(mut self) {
        self.state.close_streams();
        let _ = self.shutdown.send(true);
        let tasks = &mut self.tasks;
        let all_done = async {
            for task in tasks.iter_mut() {
                let _ = task.await;
            }
        };
        if tokio::time::timeout(STOP_GRACE, all_done).await.is_err() {
            tracing::warn!("tasks still running after {STOP_GRACE:?}; aborting them");
        }
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Accept queue length asked of the kernel (which caps it at net.core.somaxconn). The
/// default of 1024 overflows when thousands of proxies reconnect at once after a restart:
/// the excess SYNs are dropped and those proxies wait for their own retry.
const LISTEN_BACKLOG: u32 = 8192;

/// Binds `addr` and returns the listener with the address it got (port 0 picks one).
async fn listen(
    what: &'static str,
    addr: SocketAddr,
) -> Result<(tokio::net::TcpListener, SocketAddr), StartError> {
    let bind_error = |source| StartError::Bind { what, addr, source };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(bind_error)?;
    socket.set_reuseaddr(true).map_err(bind_error)?;
    socket.bind(addr).map_err(bind_error)?;
    let listener = socket.listen(LISTEN_BACKLOG).map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;
    Ok((listener, local))
}

/// How long [`ControlPlane::stop`] waits for streams and servers to wind down.
pub const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);
