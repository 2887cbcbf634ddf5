//! The cluster as kubectl reaches it, and the operator's admin API through the API
//! server's pod proxy (`/api/v1/namespaces/NS/pods/POD:PORT/proxy/...`): RBAC applies
//! (`get pods/proxy` in the mesh namespace), nothing is port-forwarded, and every replica
//! is asked (each serves the proxies connected to it).

use anyhow::{bail, Context};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde::de::DeserializeOwned;
use weir_core::views::proxies::ProxyView;

use crate::Global;

/// A client error in the API server's words (its Status message), without the debug dump.
pub fn api_error(e: kube::Error) -> anyhow::Error {
    match e {
        kube::Error::Api(status) => anyhow::anyhow!("{} ({})", status.message, status.reason),
        other => anyhow::Error::new(other),
    }
}

/// The label selector of the operator's pods (config/operator/deployment.yaml).
pub const OPERATOR_SELECTOR: &str =
    "app.kubernetes.io/name=weir,app.kubernetes.io/component=operator";
/// The name of the operator's admin port on its pods.
const ADMIN_PORT_NAME: &str = "http-admin";

/// A client and the namespace commands default to.
pub struct Cluster {
    /// The client.
    pub client: kube::Client,
    /// `-n`, else the context's namespace.
    pub namespace: String,
}

impl Cluster {
    /// Connects as kubectl would with these flags.
    pub async fn connect(g: &Global) -> anyhow::Result<Cluster> {
        let options = KubeConfigOptions {
            context: g.context.clone(),
            ..Default::default()
        };
        let config = match &g.kubeconfig {
            Some(path) => {
                let kubeconfig = Kubeconfig::read_from(path)
                    .with_context(|| format!("reading kubeconfig {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?
            }
            None if g.context.is_some() => kube::Config::from_kubeconfig(&options).await?,
            None => kube::Config::infer()
                .await
                .context("no kubeconfig found: set KUBECONFIG or --kubeconfig")?,
        };
        let namespace = g
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        Ok(Cluster {
            client: kube::Client::try_from(config)?,
            namespace,
        })
    }

    /// The operator's pods that have an address, by name.
    pub async fn operator_pods(&self, mesh_namespace: &str) -> anyhow::Result<Vec<Pod>> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), mesh_namespace);
        let mut list = pods
            .list(&ListParams::default().labels(OPERATOR_SELECTOR))
            .await
            .map_err(api_error)
            .with_context(|| format!("listing the operator's pods in {mesh_namespace}"))?
            .items;
        list.retain(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.pod_ip.as_deref())
                .is_some_and(|ip| !ip.is_empty())
        });
        list.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        Ok(list)
    }

    /// GET `path` of the admin API of operator pod `pod`.
    pub async fn admin_text(&self, pod: &Pod, path: &str) -> anyhow::Result<String> {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        let port = admin_port(pod);
        let uri = format!("/api/v1/namespaces/{namespace}/pods/{name}:{port}/proxy{path}");
        let request = http::Request::get(&uri).body(Vec::new())?;
        self.client
            .request_text(request)
            .await
            .map_err(api_error)
            .with_context(|| format!("GET {path} from operator pod {namespace}/{name}"))
    }

    /// GET `path` of an operator pod's admin API as JSON.
    pub async fn admin_json<T: DeserializeOwned>(
        &self,
        pod: &Pod,
        path: &str,
    ) -> anyhow::Result<T> {
        let text = self.admin_text(pod, path).await?;
        serde_json::from_str(&text).with_context(|| format!("reading {path}: {text:.200}"))
    }

    /// Every connected proxy, each with the operator pod it is connected to.
    pub async fn proxies(&self, mesh_namespace: &str) -> anyhow::Result<Vec<(String, ProxyView)>> {
        let pods = self.operator_pods(mesh_namespace).await?;
        if pods.is_empty() {
            bail!(
                "no running operator pod in namespace {mesh_namespace} (label {OPERATOR_SELECTOR}): \
                 is Weir installed? Run kubectl weir check"
            );
        }
        let mut out = Vec::new();
        for pod in &pods {
            let views: Vec<ProxyView> = self.admin_json(pod, "/debug/proxies").await?;
            let name = pod.metadata.name.clone().unwrap_or_default();
            out.extend(views.into_iter().map(|v| (name.clone(), v)));
        }
        out.sort_by(|a, b| (&a.1.namespace, &a.1.pod).cmp(&(&b.1.namespace, &b.1.pod)));
        Ok(out)
    }
}

/// The operator pod's admin port: its container port named `http-admin`, else the default.
fn admin_port(pod: &Pod) -> i32 {
    pod.spec
        .iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(ADMIN_PORT_NAME))
        .map_or(i32::from(weir_core::mesh::OPERATOR_ADMIN_PORT), |p| {
            p.container_port
        })
}

/// Finds a proxy by `POD`, `NS/POD`, `POD.NS` (its node id) or `POD -n NS`.
pub fn find_proxy<'a>(
    proxies: &'a [(String, ProxyView)],
    wanted: &str,
    namespace: &str,
) -> anyhow::Result<&'a (String, ProxyView)> {
    let (ns, pod) = match wanted.split_once('/') {
        Some((ns, pod)) => (ns, pod),
        None => (namespace, wanted),
    };
    proxies
        .iter()
        .find(|(_, p)| p.node == wanted)
        .or_else(|| {
            proxies
                .iter()
                .find(|(_, p)| p.namespace == ns && p.pod == pod)
        })
        .with_context(|| {
            format!(
                "no connected proxy for pod {ns}/{pod}: is the pod running with a sidecar? \
                 kubectl weir proxy-status -A lists the connected ones"
            )
        })
}
