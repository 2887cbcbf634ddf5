//! `check [--pre]`: can this cluster run Weir (`--pre`), and is the installed mesh healthy.
//! Each check is `ok`, `warn` or `FAIL`, and a failed one says what to do. Exit 1 on any
//! FAIL.
//!
//! ```text
//! --pre: /version (native sidecars), API groups, SelfSubjectAccessReviews for the install
//! after: CRDs (established, versions) -> operator pods (/readyz via the pod proxy) -> Lease
//!        -> webhook configuration (caBundle verifies the serving certificate; a dry-run
//!        Pod in a meshed namespace comes back injected) -> CA (/status) -> meshed pods
//!        (sidecar, connected, in sync, no NACK, certificate valid)
//! ```

use anyhow::Context;
use base64::Engine;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, PostParams};
use kube::CustomResourceExt;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use weir_core::mesh::{INJECTED_ANNOTATION, INJECT_KEY, WEBHOOK_CONFIGURATION, WEBHOOK_TLS_SECRET};
use weir_core::views::proxies::ProxyView;
use weir_core::views::status::MeshStatusView;

use crate::cluster::Cluster;
use crate::output::{self, Table};
use crate::{Global, Outcome};

/// `check` flags.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Before installing: the cluster's version, APIs and your permissions.
    #[arg(long)]
    pre: bool,
}

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What part of the mesh.
    pub area: &'static str,
    /// What was checked.
    pub name: String,
    /// `ok`, `warn` or `FAIL`.
    pub status: &'static str,
    /// What was found, and for a failure what to do.
    pub detail: String,
}

/// The oldest Kubernetes with native sidecars on by default (beta in 1.29, GA in 1.33).
const NATIVE_SIDECARS: (u32, u32) = (1, 29);
/// A CA or certificate closer to expiry than this is a warning.
const EXPIRY_WARNING_DAYS: u64 = 30;
/// The container the injector adds.
const PROXY_CONTAINER: &str = "weir-proxy";

#[derive(Default)]
struct Checks(Vec<Check>);

impl Checks {
    fn push(
        &mut self,
        area: &'static str,
        name: impl Into<String>,
        status: &'static str,
        detail: impl Into<String>,
    ) {
        self.0.push(Check {
            area,
            name: name.into(),
            status,
            detail: detail.into(),
        });
    }
    fn ok(&mut self, area: &'static str, name: impl Into<String>, detail: impl Into<String>) {
        self.push(area, name, "ok", detail);
    }
    fn warn(&mut self, area: &'static str, name: impl Into<String>, detail: impl Into<String>) {
        self.push(area, name, "warn", detail);
    }
    fn fail(&mut self, area: &'static str, name: impl Into<String>, detail: impl Into<String>) {
        self.push(area, name, "FAIL", detail);
    }
}

pub async fn run(g: &Global, args: Args) -> Outcome {
    let cluster = Cluster::connect(g).await?;
    let mut checks = Checks::default();
    if args.pre {
        pre(&cluster, g, &mut checks).await?;
    } else {
        installed(&cluster, g, &mut checks).await?;
    }
    let healthy = checks.0.iter().all(|c| c.status != "FAIL");
    if output::structured(g.output, &checks.0)? {
        return Ok(healthy);
    }
    let mut table = Table::new(&["AREA", "CHECK", "STATUS", "DETAIL"]);
    for c in &checks.0 {
        table.row(vec![
            c.area.to_string(),
            c.name.clone(),
            output::state(c.status),
            c.detail.clone(),
        ]);
    }
    table.print();
    let failed = checks.0.iter().filter(|c| c.status == "FAIL").count();
    if failed == 0 {
        println!("{} All checks passed.", output::state("ok"));
    } else {
        println!("{} {failed} check(s) failed.", output::state("FAIL"));
    }
    Ok(healthy)
}

async fn pre(cluster: &Cluster, g: &Global, checks: &mut Checks) -> anyhow::Result<()> {
    let version = cluster
        .client
        .apiserver_version()
        .await
        .context("GET /version")?;
    let minor: u32 = version.minor.trim_end_matches('+').parse().unwrap_or(0);
    let major: u32 = version.major.parse().unwrap_or(0);
    if (major, minor) >= NATIVE_SIDECARS {
        checks.ok(
            "cluster",
            "Kubernetes version",
            format!("{} (native sidecars available)", version.git_version),
        );
    } else {
        checks.warn(
            "cluster",
            "Kubernetes version",
            format!(
                "{}: no native sidecars before 1.29; run the webhook with --no-native-sidecars (the proxy then starts beside the app, not before it)",
                version.git_version
            ),
        );
    }
    let groups = cluster
        .client
        .list_api_groups()
        .await
        .context("listing API groups")?;
    for (group, version, why) in [
        ("apiextensions.k8s.io", "v1", "the CRDs"),
        (
            "admissionregistration.k8s.io",
            "v1",
            "the injection webhook",
        ),
        ("coordination.k8s.io", "v1", "leader election"),
        ("discovery.k8s.io", "v1", "EndpointSlices"),
        (
            "authentication.k8s.io",
            "v1",
            "proxies' tokens (TokenReview)",
        ),
    ] {
        let served = groups
            .groups
            .iter()
            .any(|g| g.name == group && g.versions.iter().any(|v| v.version == version));
        if served {
            checks.ok(
                "cluster",
                format!("API {group}/{version}"),
                format!("served ({why})"),
            );
        } else {
            checks.fail(
                "cluster",
                format!("API {group}/{version}"),
                format!("not served: Weir needs it for {why}; upgrade the cluster"),
            );
        }
    }
    let mesh_ns = g.mesh_namespace.as_str();
    for (verb, group, resource, namespace) in [
        (
            "create",
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            None,
        ),
        ("create", "rbac.authorization.k8s.io", "clusterroles", None),
        (
            "create",
            "rbac.authorization.k8s.io",
            "clusterrolebindings",
            None,
        ),
        (
            "create",
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
            None,
        ),
        ("create", "", "namespaces", None),
        ("create", "apps", "deployments", Some(mesh_ns)),
        ("create", "", "services", Some(mesh_ns)),
        ("create", "", "serviceaccounts", Some(mesh_ns)),
        (
            "create",
            "rbac.authorization.k8s.io",
            "roles",
            Some(mesh_ns),
        ),
        ("create", "policy", "poddisruptionbudgets", Some(mesh_ns)),
    ] {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(verb.into()),
                    group: Some(group.into()),
                    resource: Some(resource.into()),
                    namespace: namespace.map(str::to_string),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let api: Api<SelfSubjectAccessReview> = Api::all(cluster.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(crate::cluster::api_error)?;
        let allowed = answer.status.as_ref().is_some_and(|s| s.allowed);
        let what = format!(
            "{verb} {resource}{}",
            namespace.map(|n| format!(" in {n}")).unwrap_or_default()
        );
        if allowed {
            checks.ok("permissions", what, "allowed");
        } else {
            checks.fail(
                "permissions",
                what,
                "denied: install as a cluster admin (or ask one to run the install)",
            );
        }
    }
    Ok(())
}

async fn installed(cluster: &Cluster, g: &Global, checks: &mut Checks) -> anyhow::Result<()> {
    // A part that cannot be read (no permission, the API down) fails as a check of its
    // own; the other parts still run.
    let unreadable = |checks: &mut Checks, area: &'static str, e: anyhow::Error| {
        checks.fail(area, "read", format!("{e:#}: bind the weir-cli roles (config/rbac/cli_roles.yaml) or run as a cluster admin"));
    };
    if let Err(e) = crds(cluster, checks).await {
        unreadable(checks, "CRDs", e);
    }
    let pods = match operator(cluster, g, checks).await {
        Ok(pods) => pods,
        Err(e) => {
            unreadable(checks, "operator", e);
            Vec::new()
        }
    };
    if let Err(e) = leader(cluster, g, checks).await {
        unreadable(checks, "operator", e);
    }
    // Namespaces labelled for injection: the webhook is exercised in one, and their pods
    // are checked.
    let labelled = labelled_namespaces(cluster).await;
    if let Err(e) = webhook(cluster, g, &labelled, checks).await {
        unreadable(checks, "webhook", e);
    }
    let status = match pods.first() {
        Some(pod) => match cluster.admin_json::<MeshStatusView>(pod, "/status").await {
            Ok(status) => Some(status),
            Err(e) => {
                unreadable(checks, "CA", e);
                None
            }
        },
        None => None,
    };
    ca(status.as_ref(), checks);
    let proxies = if pods.is_empty() {
        Vec::new()
    } else {
        match cluster.proxies(&g.mesh_namespace).await {
            Ok(p) => p,
            Err(e) => {
                unreadable(checks, "pods", e);
                Vec::new()
            }
        }
    };
    if let Err(e) = meshed_pods(cluster, g, &labelled, &proxies, checks).await {
        unreadable(checks, "pods", e);
    }
    Ok(())
}

async fn crds(cluster: &Cluster, checks: &mut Checks) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(cluster.client.clone());
    for expected in [
        weir_api::TrafficPolicy::crd(),
        weir_api::MeshIdentity::crd(),
        weir_api::MeshStatus::crd(),
    ] {
        let name = expected.metadata.name.clone().unwrap_or_default();
        let want = served_versions(&expected);
        let Some(found) = api
            .get_opt(&name)
            .await
            .map_err(crate::cluster::api_error)?
        else {
            checks.fail("CRDs", name, "missing: kubectl apply -f crds/");
            continue;
        };
        let established = found
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Established" && c.status == "True");
        let served = served_versions(&found);
        let missing: Vec<&String> = want.iter().filter(|v| !served.contains(v)).collect();
        if !established {
            checks.fail(
                "CRDs",
                name,
                "not Established: kubectl describe crd shows why; re-apply crds/",
            );
        } else if !missing.is_empty() {
            checks.fail(
                "CRDs",
                name,
                format!(
                    "serves {} but this plugin's Weir needs {}: kubectl apply -f crds/ from the same release",
                    served.join(","),
                    want.join(",")
                ),
            );
        } else {
            checks.ok(
                "CRDs",
                name,
                format!("established, serving {}", served.join(",")),
            );
        }
    }
    // Gateway API's routes are optional: say whether the mesh reads them.
    for name in [
        "httproutes.gateway.networking.k8s.io",
        "grpcroutes.gateway.networking.k8s.io",
    ] {
        match api.get_opt(name).await.map_err(crate::cluster::api_error)? {
            Some(crd) if served_versions(&crd).iter().any(|v| v == "v1") => {
                checks.ok("CRDs", name, "installed, v1 served: the mesh reads these routes")
            }
            Some(crd) => checks.warn(
                "CRDs",
                name,
                format!(
                    "installed without v1 (serves {}): install Gateway API v1.6 or later for the mesh to read these routes",
                    served_versions(&crd).join(",")
                ),
            ),
            None => checks.ok("CRDs", name, "not installed (optional): no such routes are read"),
        }
    }
    Ok(())
}

fn served_versions(crd: &CustomResourceDefinition) -> Vec<String> {
    crd.spec
        .versions
        .iter()
        .filter(|v| v.served)
        .map(|v| v.name.clone())
        .collect()
}

async fn operator(cluster: &Cluster, g: &Global, checks: &mut Checks) -> anyhow::Result<Vec<Pod>> {
    let pods = cluster.operator_pods(&g.mesh_namespace).await?;
    let ready_pods: Vec<Pod> = pods.iter().filter(|p| pod_ready(p)).cloned().collect();
    if ready_pods.is_empty() {
        checks.fail(
            "operator",
            "replicas ready",
            format!(
                "no ready operator pod in {} ({} found): kubectl -n {} describe deploy/weir-operator and read its logs",
                g.mesh_namespace,
                pods.len(),
                g.mesh_namespace
            ),
        );
        return Ok(Vec::new());
    }
    checks.ok(
        "operator",
        "replicas ready",
        format!("{} of {}", ready_pods.len(), pods.len()),
    );
    let mut answering = Vec::new();
    for pod in &ready_pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        match cluster.admin_text(pod, "/readyz").await {
            Ok(_) => {
                checks.ok(
                    "operator",
                    format!("{name} /readyz"),
                    "ready (reached through the API server's pod proxy)",
                );
                answering.push(pod.clone());
            }
            Err(e) => checks.fail(
                "operator",
                format!("{name} /readyz"),
                format!(
                    "{e:#}: check that you may get pods/proxy in {} and the operator's logs",
                    g.mesh_namespace
                ),
            ),
        }
    }
    Ok(answering)
}

async fn leader(cluster: &Cluster, g: &Global, checks: &mut Checks) -> anyhow::Result<()> {
    let api: Api<Lease> = Api::namespaced(cluster.client.clone(), &g.mesh_namespace);
    let Some(lease) = api
        .get_opt("weir-operator")
        .await
        .map_err(crate::cluster::api_error)?
    else {
        checks.fail("operator", "leader", "no Lease weir-operator: no replica has led yet (statuses are not written); read the operator's logs");
        return Ok(());
    };
    let spec = lease.spec.unwrap_or_default();
    let holder = spec.holder_identity.unwrap_or_default();
    let duration = spec.lease_duration_seconds.unwrap_or(15) as i64;
    let renewed = spec.renew_time.map(|t| t.0.as_second());
    let now = output::now() as i64;
    match renewed {
        Some(at) if !holder.is_empty() && now - at <= duration + 5 => {
            checks.ok("operator", "leader", format!("{holder} (renewed {}s ago)", (now - at).max(0)));
        }
        _ => checks.fail(
            "operator",
            "leader",
            format!(
                "the Lease is not held (last holder {:?}): no replica writes statuses or CA material; read the operator's logs",
                holder
            ),
        ),
    }
    Ok(())
}

/// The namespaces labelled `weir.dev/inject=enabled`.
async fn labelled_namespaces(cluster: &Cluster) -> anyhow::Result<Vec<String>> {
    let namespaces: Api<Namespace> = Api::all(cluster.client.clone());
    Ok(namespaces
        .list(&ListParams::default().labels(&format!("{INJECT_KEY}=enabled")))
        .await
        .map_err(crate::cluster::api_error)?
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect())
}

/// The list's error again, for each check that needs the list.
fn listed(labelled: &anyhow::Result<Vec<String>>) -> anyhow::Result<&[String]> {
    labelled.as_deref().map_err(|e| anyhow::anyhow!("{e:#}"))
}

async fn webhook(
    cluster: &Cluster,
    g: &Global,
    labelled: &anyhow::Result<Vec<String>>,
    checks: &mut Checks,
) -> anyhow::Result<()> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(cluster.client.clone());
    let Some(config) = api
        .get_opt(WEBHOOK_CONFIGURATION)
        .await
        .map_err(crate::cluster::api_error)?
    else {
        checks.fail("webhook", "configuration", format!("MutatingWebhookConfiguration {WEBHOOK_CONFIGURATION} missing: kubectl apply -k config/"));
        return Ok(());
    };
    let hooks = config.webhooks.unwrap_or_default();
    checks.ok(
        "webhook",
        "configuration",
        format!("{WEBHOOK_CONFIGURATION} with {} webhook(s)", hooks.len()),
    );
    for hook in &hooks {
        let client_config = &hook.client_config;
        let bundle = client_config
            .ca_bundle
            .as_ref()
            .map(|b| b.0.clone())
            .unwrap_or_default();
        let name = format!("{} caBundle", hook.name);
        if bundle.is_empty() {
            checks.fail("webhook", name, "empty: the operator publishes the mesh roots there once it leads; check the operator");
            continue;
        }
        let verdict = match (&client_config.service, &client_config.url) {
            (Some(svc), _) => {
                let namespace = svc.namespace.as_str();
                let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), namespace);
                match secrets.get_opt(WEBHOOK_TLS_SECRET).await {
                    Ok(Some(secret)) => {
                        let chain = secret
                            .data
                            .as_ref()
                            .and_then(|d| d.get("tls.crt"))
                            .map(|b| b.0.clone())
                            .unwrap_or_default();
                        let host = format!("{}.{namespace}.svc", svc.name);
                        verify_chain(&bundle, &chain, &host)
                            .map(|_| format!("verifies the serving certificate in Secret {namespace}/{WEBHOOK_TLS_SECRET} for {host}"))
                    }
                    Ok(None) => Err(format!("no Secret {namespace}/{WEBHOOK_TLS_SECRET}: the leader writes it; check the operator")),
                    Err(kube::Error::Api(e)) if e.code == 403 => {
                        checks.warn("webhook", name, format!("cannot read Secret {namespace}/{WEBHOOK_TLS_SECRET} to verify it ({}); the dry run below exercises the real path", e.message));
                        continue;
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
            (None, Some(url)) => handshake(url, &bundle)
                .await
                .map(|_| format!("verifies the certificate {url} serves")),
            (None, None) => Err("the webhook has neither service nor url".into()),
        };
        match verdict {
            Ok(detail) => checks.ok("webhook", name, detail),
            Err(why) => checks.fail(
                "webhook",
                name,
                format!("does not verify the webhook's serving certificate: {why}; the API server will refuse to call it (restart the operator's leader to republish, or re-issue the webhook's certificate)"),
            ),
        }
    }
    // The real path: a dry-run Pod in a meshed namespace comes back injected.
    let meshed = listed(labelled)?
        .iter()
        .find(|n| **n != g.mesh_namespace)
        .cloned();
    let Some(namespace) = meshed else {
        checks.warn("webhook", "reachable", format!("no namespace labelled {INJECT_KEY}=enabled: label one to mesh it; the webhook was not exercised"));
        return Ok(());
    };
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &namespace);
    let probe: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"generateName": "weir-check-", "namespace": namespace},
        "spec": {"containers": [{"name": "app", "image": "weir-check"}]},
    }))?;
    match pods.create(&PostParams { dry_run: true, ..Default::default() }, &probe).await {
        Ok(pod) if injected(&pod) => checks.ok("webhook", "reachable", format!("a dry-run Pod in {namespace} came back with its sidecar")),
        Ok(_) => checks.fail("webhook", "reachable", format!("a dry-run Pod in {namespace} came back without a sidecar: the webhook configuration does not select it; re-apply config/webhook")),
        Err(kube::Error::Api(e)) if e.code == 403 && e.message.contains("cannot create resource") => checks.warn(
            "webhook",
            "reachable",
            format!("not exercised: you may not create pods in {namespace} (even as a dry run)"),
        ),
        Err(e) => checks.fail(
            "webhook",
            "reachable",
            format!(
                "a dry-run Pod in {namespace} was refused: {}; check the webhook pods and their certificate",
                crate::cluster::api_error(e)
            ),
        ),
    }
    Ok(())
}

fn injected(pod: &Pod) -> bool {
    let has_proxy = |cs: Option<&Vec<k8s_openapi::api::core::v1::Container>>| {
        cs.is_some_and(|cs| cs.iter().any(|c| c.name == PROXY_CONTAINER))
    };
    let spec = pod.spec.as_ref();
    has_proxy(spec.and_then(|s| s.init_containers.as_ref()))
        || has_proxy(spec.map(|s| &s.containers))
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

fn ca(status: Option<&MeshStatusView>, checks: &mut Checks) {
    let Some(status) = status else {
        checks.fail(
            "CA",
            "mesh CA",
            "no operator answered: see the operator checks above",
        );
        return;
    };
    let expiry = status.status.ca_expiry.as_deref().and_then(parse_rfc3339);
    let days = expiry.map(|e| (e as i64 - output::now() as i64) / 86_400);
    let detail = match (status.status.ca_expiry.as_deref(), days) {
        (Some(at), Some(d)) if d >= 0 => format!("valid until {at} ({d} days)"),
        (Some(at), _) => format!("expired at {at}"),
        _ => "no CA yet".into(),
    };
    if !status.ca.status {
        checks.fail(
            "CA",
            "mesh CA",
            format!("{}: {} ({detail})", status.ca.reason, status.ca.message),
        );
    } else if days.is_some_and(|d| d < EXPIRY_WARNING_DAYS as i64) {
        checks.warn(
            "CA",
            "mesh CA",
            format!("{detail}: rotate it soon (README, Identity and mTLS)"),
        );
    } else {
        checks.ok("CA", "mesh CA", detail);
    }
}

async fn meshed_pods(
    cluster: &Cluster,
    g: &Global,
    labelled: &anyhow::Result<Vec<String>>,
    proxies: &[(String, ProxyView)],
    checks: &mut Checks,
) -> anyhow::Result<()> {
    let api: Api<Pod> = if g.all_namespaces || g.namespace.is_none() {
        Api::all(cluster.client.clone())
    } else {
        Api::namespaced(cluster.client.clone(), &cluster.namespace)
    };
    let labelled = listed(labelled)?;
    let by_pod: BTreeMap<(String, String), &ProxyView> = proxies
        .iter()
        .map(|(_, p)| ((p.namespace.clone(), p.pod.clone()), p))
        .collect();
    let now = output::now();
    let mut count = 0;
    for pod in api
        .list(&ListParams::default())
        .await
        .map_err(crate::cluster::api_error)?
        .items
    {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let annotated = pod
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(INJECTED_ANNOTATION));
        let opted_out = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(INJECT_KEY))
            .is_some_and(|v| v == "false");
        let should = labelled.contains(&namespace) && !opted_out && namespace != g.mesh_namespace;
        if !annotated && !should {
            continue;
        }
        count += 1;
        let id = format!("{namespace}/{name}");
        if !injected(&pod) {
            checks.fail("pods", id, format!("no sidecar although its namespace is meshed: it was created before the label or while the webhook was down; kubectl -n {namespace} delete pod {name} (or rollout restart its workload)"));
            continue;
        }
        let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        if !running {
            checks.warn("pods", id, "not running yet: its proxy cannot connect");
            continue;
        }
        let Some(proxy) = by_pod.get(&(namespace.clone(), name.clone())) else {
            checks.fail("pods", id, format!("its proxy is not connected to any operator replica: kubectl -n {namespace} logs {name} -c {PROXY_CONTAINER}"));
            continue;
        };
        let nacked: Vec<String> = proxy
            .types
            .iter()
            .filter_map(|(t, s)| {
                s.nack.as_ref().map(|m| {
                    format!(
                        "{}: {}",
                        t.to_uppercase(),
                        m.split_whitespace().collect::<Vec<_>>().join(" ")
                    )
                })
            })
            .collect();
        if !nacked.is_empty() {
            checks.fail("pods", id, format!("its proxy rejected config ({}): the proxy keeps its last good config; kubectl weir proxy-status {namespace}/{name}, and report the message", nacked.join("; ")));
            continue;
        }
        let stale: Vec<String> = proxy
            .types
            .iter()
            .filter(|(_, s)| s.subscribed && s.sync() == "STALE")
            .map(|(t, _)| t.to_uppercase())
            .collect();
        match proxy.certificate_expires_at {
            Some(at) if at <= now => {
                checks.fail("pods", id, "its workload certificate expired: peers refuse it; check the operator's CA (CA check above)");
                continue;
            }
            None if proxy.types.contains_key("sds") => {
                checks.fail("pods", id, "connected but no workload certificate issued: check the CA above and the operator's logs");
                continue;
            }
            _ => {}
        }
        if !stale.is_empty() {
            checks.warn(
                "pods",
                id,
                format!(
                    "connected, {} not yet acknowledged (a push in flight, or the proxy is slow)",
                    stale.join(",")
                ),
            );
        } else {
            let cert = proxy
                .certificate_expires_at
                .map(|at| format!(", certificate valid for {}", output::age(at - now)))
                .unwrap_or_default();
            checks.ok("pods", id, format!("sidecar connected, in sync{cert}"));
        }
    }
    if count == 0 {
        checks.warn(
            "pods",
            "meshed pods",
            "none found: label a namespace weir.dev/inject=enabled and restart its workloads",
        );
    }
    Ok(())
}

/// Verifies `chain_pem` (leaf first) for `host` against the roots in `bundle_pem` as the
/// API server would.
fn verify_chain(bundle_pem: &[u8], chain_pem: &[u8], host: &str) -> Result<(), String> {
    use rustls::client::danger::ServerCertVerifier;
    let roots = root_store(bundle_pem)?;
    let chain = pem_certificates(chain_pem);
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err("the Secret holds no certificate".into());
    };
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| e.to_string())?;
    let name =
        rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    let leaf = rustls::pki_types::CertificateDer::from(leaf.clone());
    let intermediates: Vec<_> = intermediates
        .iter()
        .cloned()
        .map(rustls::pki_types::CertificateDer::from)
        .collect();
    verifier
        .verify_server_cert(
            &leaf,
            &intermediates,
            &name,
            &[],
            rustls::pki_types::UnixTime::now(),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn root_store(bundle_pem: &[u8]) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for der in pem_certificates(bundle_pem) {
        roots
            .add(rustls::pki_types::CertificateDer::from(der))
            .map_err(|e| format!("a caBundle certificate does not parse: {e}"))?;
    }
    if roots.is_empty() {
        return Err("the caBundle holds no PEM certificate".into());
    }
    Ok(roots)
}

/// A TLS handshake with `url`'s server, trusting only `bundle_pem`.
async fn handshake(url: &str, bundle_pem: &[u8]) -> Result<(), String> {
    let rest = url.strip_prefix("https://").ok_or("the url is not https")?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h.trim_matches(['[', ']']),
            p.parse::<u16>().map_err(|e| e.to_string())?,
        ),
        _ => (authority, 443),
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(root_store(bundle_pem)?)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::net::TcpStream::connect((host, port)),
    )
    .await
    .map_err(|_| format!("{authority} did not answer in 5 s"))?
    .map_err(|e| format!("cannot connect to {authority}: {e}"))?;
    let name =
        rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    connector
        .connect(name, tcp)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The DER certificates of a PEM text.
pub fn pem_certificates(pem: &[u8]) -> Vec<Vec<u8>> {
    let text = String::from_utf8_lossy(pem);
    let mut out = Vec::new();
    let mut inside: Option<String> = None;
    for line in text.lines() {
        let line = line.trim();
        if line == "-----BEGIN CERTIFICATE-----" {
            inside = Some(String::new());
        } else if line == "-----END CERTIFICATE-----" {
            if let Some(b64) = inside.take() {
                if let Ok(der) = base64::engine::general_purpose::STANDARD.decode(b64) {
                    out.push(der);
                }
            }
        } else if let Some(b64) = inside.as_mut() {
            b64.push_str(line);
        }
    }
    out
}

/// A certificate's identity (URI SANs, else DNS SANs, else subject) and its expiry.
pub fn describe_certificate(der: &[u8]) -> anyhow::Result<(String, u64)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| anyhow::anyhow!("{e}"))?;
    let not_after = cert.validity().not_after.timestamp().max(0) as u64;
    let mut uris = Vec::new();
    let mut dns = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::URI(u) => uris.push(u.to_string()),
                x509_parser::extensions::GeneralName::DNSName(d) => dns.push(d.to_string()),
                _ => {}
            }
        }
    }
    let identity = if !uris.is_empty() {
        uris.join(",")
    } else if !dns.is_empty() {
        dns.join(",")
    } else {
        cert.subject().to_string()
    };
    Ok((identity, not_after))
}

/// Seconds since the epoch as RFC 3339.
pub fn rfc3339(seconds: u64) -> String {
    weir_core::identity::rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds))
}

/// RFC 3339 (as the operator writes it) to seconds since the epoch.
fn parse_rfc3339(text: &str) -> Option<u64> {
    let t = k8s_openapi::jiff::Timestamp::from_str(text).ok()?;
    u64::try_from(t.as_second()).ok()
}

use std::str::FromStr;
