//! Real Envoy processes from Weir's bootstrap generator, and traffic through them.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use weir_core::bootstrap::{bootstrap_yaml, BootstrapParams, ProxyMeta, XdsProtocol};
use weir_core::Capture;

use crate::{envoy_bin, eventually, free_port, scratch_dir, DEADLINE};

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

/// How [`Envoy::start_from_with`] runs Envoy.
#[derive(Debug, Clone)]
pub struct EnvoyOptions {
    /// Worker threads.
    pub concurrency: u32,
    /// Envoy's log level.
    pub log_level: &'static str,
    /// YAML merged over the bootstrap file (`--config-yaml`).
    pub config_yaml: Option<String>,
    /// Environment variables.
    pub env: Vec<(String, String)>,
}

impl Default for EnvoyOptions {
    fn default() -> Self {
        EnvoyOptions {
            concurrency: 1,
            log_level: "info",
            config_yaml: None,
            env: Vec::new(),
        }
    }
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

    /// Starts Envoy from bootstrap parameters (explicit capture), once it is ready.
    pub async fn start_params(params: &BootstrapParams) -> Result<Envoy> {
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
        let options = EnvoyOptions::default();
        Self::start_from_with(bootstrap, node_id, outbound_port, admin_port, &options).await
    }

    /// As [`Envoy::start_from`], with worker threads, configuration merged over the file
    /// and an environment of its own (what a sidecar's container gives it).
    pub async fn start_from_with(
        bootstrap: &Path,
        node_id: &str,
        outbound_port: u16,
        admin_port: u16,
        options: &EnvoyOptions,
    ) -> Result<Envoy> {
        let log = bootstrap.with_file_name("envoy.log");
        let mut command = tokio::process::Command::new(envoy_bin()?);
        command.arg("-c").arg(bootstrap);
        if let Some(yaml) = &options.config_yaml {
            command.arg("--config-yaml").arg(yaml);
        }
        let child = command
            .args(["--disable-hot-restart", "--concurrency"])
            .arg(options.concurrency.to_string())
            .args(["--log-level", options.log_level, "--log-path"])
            .arg(&log)
            .envs(options.env.iter().map(|(k, v)| (k, v)))
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

/// `s` with every character but letters, digits and `_` escaped, for Envoy's stats filter.
pub(crate) fn regex_escape(s: &str) -> String {
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
            service_account: None,
            capture: Capture::Explicit {
                port: outbound_port,
            },
            zone: None,
            reports: true,
        },
        xds_address: xds_addr.to_string(),
        protocol,
        admin_port,
        sidecar: None,
        xds_tls: None,
        telemetry: Default::default(),
    }
}
