//! A local-mode control plane on a scratch directory, and what tests read from its admin
//! server.

use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::manifests::{endpoint_yaml, service_yaml, split_policy_yaml, write_file};
use crate::{eventually, scratch_dir, until_ready, Backend, Behavior, DEADLINE};

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
    /// Where the CA is kept, when xDS is served over TLS ([`Mesh::start_tls`]).
    pub ca_dir: Option<PathBuf>,
}

impl Mesh {
    /// Starts a control plane on an empty directory, on OS-chosen ports.
    pub async fn start() -> Result<Mesh> {
        let dir = scratch_dir("mesh");
        Self::start_in(dir, "127.0.0.1:0".parse()?).await
    }

    /// Starts a control plane on an empty directory serving xDS over TLS for 127.0.0.1, its
    /// CA kept in a scratch directory (`ca_dir`, root in `ca.crt`).
    pub async fn start_tls() -> Result<Mesh> {
        let (dir, ca_dir) = (scratch_dir("mesh"), scratch_dir("mesh-ca"));
        let options = weir_operator::Options {
            xds_names: vec!["127.0.0.1".into()],
            ca_dir: Some(ca_dir.clone()),
            ..weir_operator::Options::new("127.0.0.1:0".parse()?, "127.0.0.1:0".parse()?)
        };
        let mut mesh = Self::start_with(dir, options).await?;
        let root = ca_dir.join("ca.crt");
        eventually("the CA", DEADLINE, || {
            let root = root.clone();
            async move { root.exists().then_some(()) }
        })
        .await?;
        mesh.ca_dir = Some(ca_dir);
        Ok(mesh)
    }

    /// Starts a control plane on `dir`, serving xDS on `xds_addr`.
    pub async fn start_in(dir: PathBuf, xds_addr: SocketAddr) -> Result<Mesh> {
        let options = weir_operator::Options::new(xds_addr, "127.0.0.1:0".parse()?);
        Self::start_with(dir, options).await
    }

    async fn start_with(dir: PathBuf, options: weir_operator::Options) -> Result<Mesh> {
        let plane =
            weir_operator::ControlPlane::start(weir_operator::Source::Dir(dir.clone()), options)
                .await?;
        until_ready(plane.admin_addr).await?;
        Ok(Mesh {
            dir,
            plane,
            ca_dir: None,
        })
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
