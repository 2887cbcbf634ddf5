//! Gateway API routes against a real kube-apiserver (`weir_tests::kube`), with the operator
//! in this process, leading, as the `weir-operator` ServiceAccount of config/ (its RBAC is
//! enforced): it starts and is ready without Gateway API's CRDs, picks them up when they
//! are installed later (no restart), and writes each route's `status.parents` entry
//! (controller `weir.dev/mesh-controller`): Accepted and ResolvedRefs with the spec's
//! reasons and `observedGeneration`, beside another controller's entry, which it keeps;
//! a TrafficPolicy with rules on a routed port is Conflicted naming the route; MeshStatus
//! counts the routes.

use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use weir_api::gateway_api::MESH_CONTROLLER_NAME;
use weir_core::mesh::MESH_NAMESPACE;
use weir_tests::kube::{
    can_run, client_from, installed, loopback_options, operator_slot, start_operator_on,
    wait_leading, Cluster,
};

const NS: &str = "gamma-kube";

fn kubectl(cluster: &Cluster, args: &[&str]) -> Result<String> {
    tokio::task::block_in_place(|| cluster.kubectl(args))
}

fn apply(cluster: &Cluster, object: &Value) -> Result<()> {
    tokio::task::block_in_place(|| cluster.apply(object))
}

/// Polls (bounded) until `check` holds on `kubectl get ... -o json`.
async fn until(
    cluster: &Cluster,
    what: &str,
    args: &[&str],
    check: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = tokio::task::block_in_place(|| cluster.kubectl_json(args)).ok();
        if let Some(v) = seen.as_ref().filter(|v| check(v)) {
            return Ok(v.clone());
        }
        anyhow::ensure!(
            Instant::now() < end,
            "timed out waiting for {what}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Our entry of a route's `status.parents`.
fn ours(route: &Value) -> Option<Value> {
    route["status"]["parents"]
        .as_array()?
        .iter()
        .find(|p| p["controllerName"] == MESH_CONTROLLER_NAME)
        .cloned()
}

fn condition(entry: &Value, type_: &str) -> Option<(String, String)> {
    let c = entry["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?;
    Some((
        c["status"].as_str()?.to_string(),
        c["reason"].as_str()?.to_string(),
    ))
}

fn http_route(name: &str, parent: &str, backend: &str) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": parent, "port": 80}],
            "rules": [{"backendRefs": [{"name": backend, "port": 80}]}]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_are_read_once_their_crds_exist_and_get_status_per_parent() -> Result<()> {
    if !can_run("routes_are_read_once_their_crds_exist_and_get_status_per_parent") {
        return Ok(());
    }
    let cluster = installed();
    let _slot = operator_slot().await;
    let token =
        tokio::task::block_in_place(|| cluster.token(MESH_NAMESPACE, "weir-operator", None))?;
    let kubeconfig =
        tokio::task::block_in_place(|| cluster.token_kubeconfig("gamma-operator", &token, None))?;
    let plane = start_operator_on(
        client_from(&kubeconfig).await?,
        "weir-gamma-0",
        loopback_options(),
    )
    .await?;
    let result = async {
        wait_leading(&plane, Duration::from_secs(30)).await?;
        // Without Gateway API's CRDs the operator is ready all the same.
        let end = Instant::now() + Duration::from_secs(30);
        while !plane.state.is_synced() {
            anyhow::ensure!(Instant::now() < end, "not ready without the Gateway API CRDs");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        let _ = kubectl(cluster, &["create", "namespace", NS]);
        for svc in ["echo", "echo-v1"] {
            apply(cluster, &json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": svc, "namespace": NS},
                "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}))?;
        }
        // Gateway API's CRDs, from its Go module, installed after the operator started.
        let crds = weir_tests::gateway_api::dir()?.join("crds");
        for crd in ["httproutes", "grpcroutes", "referencegrants"] {
            let file = crds.join(format!("gateway.networking.k8s.io_{crd}.yaml"));
            kubectl(cluster, &["apply", "--server-side", "-f", &file.to_string_lossy()])?;
        }
        kubectl(cluster, &["wait", "--for=condition=Established", "crd/httproutes.gateway.networking.k8s.io", "--timeout=60s"])?;
        apply(cluster, &http_route("split", "echo", "echo-v1"))?;
        apply(cluster, &http_route("to-ghost", "echo", "ghost"))?;
        apply(cluster, &http_route("no-parent", "nothing-here", "echo-v1"))?;

        // Accepted and resolved, at the route's generation.
        let route = until(cluster, "split's status", &["get", "httproute", "split", "-n", NS], |r| {
            ours(r).is_some_and(|p| condition(&p, "ResolvedRefs").is_some())
        })
        .await?;
        let entry = ours(&route).context("our entry")?;
        assert_eq!(condition(&entry, "Accepted"), Some(("True".into(), "Accepted".into())), "{entry}");
        assert_eq!(condition(&entry, "ResolvedRefs"), Some(("True".into(), "ResolvedRefs".into())), "{entry}");
        assert_eq!(entry["parentRef"]["name"], "echo");
        assert_eq!(entry["conditions"][0]["observedGeneration"], route["metadata"]["generation"]);

        let ghost = until(cluster, "to-ghost's status", &["get", "httproute", "to-ghost", "-n", NS], |r| ours(r).is_some()).await?;
        let entry = ours(&ghost).unwrap();
        assert_eq!(condition(&entry, "Accepted"), Some(("True".into(), "Accepted".into())), "{entry}");
        assert_eq!(condition(&entry, "ResolvedRefs"), Some(("False".into(), "BackendNotFound".into())), "{entry}");
        let parentless = until(cluster, "no-parent's status", &["get", "httproute", "no-parent", "-n", NS], |r| ours(r).is_some()).await?;
        let entry = ours(&parentless).unwrap();
        assert_eq!(condition(&entry, "Accepted"), Some(("False".into(), "NoMatchingParent".into())), "{entry}");

        // Another controller's entry stays when ours is rewritten.
        let theirs = json!({"status": {"parents": [
            ours(&route).unwrap(),
            {"parentRef": {"name": "some-gateway"}, "controllerName": "example.com/gateway-controller",
             "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                "lastTransitionTime": "2026-12-05T00:00:00Z", "observedGeneration": 1}]}]}});
        kubectl(cluster, &["patch", "httproute", "split", "-n", NS, "--subresource=status", "--type=merge", "-p", &theirs.to_string()])?;
        let mut edited = http_route("split", "echo", "ghost");
        edited["spec"]["rules"][0]["backendRefs"][0]["name"] = json!("ghost");
        apply(cluster, &edited)?;
        let route = until(cluster, "split's new status", &["get", "httproute", "split", "-n", NS], |r| {
            ours(r).is_some_and(|p| condition(&p, "ResolvedRefs") == Some(("False".into(), "BackendNotFound".into())))
        })
        .await?;
        let controllers: Vec<&str> = route["status"]["parents"].as_array().unwrap().iter().filter_map(|p| p["controllerName"].as_str()).collect();
        assert!(controllers.contains(&"example.com/gateway-controller"), "{route}");
        assert_eq!(controllers.len(), 2, "{route}");
        assert_eq!(ours(&route).unwrap()["conditions"][0]["observedGeneration"], route["metadata"]["generation"]);

        // A TrafficPolicy with rules on the routed port yields to the route, and says so.
        apply(cluster, &json!({"apiVersion": "weir.dev/v1alpha1", "kind": "TrafficPolicy",
            "metadata": {"name": "echo-rules", "namespace": NS},
            "spec": {"targetRef": {"service": "echo"}, "http": [{"name": "all", "timeout": "1s", "destinations": [{}]}]}}))?;
        let policy = until(cluster, "the policy's status", &["get", "trafficpolicy", "echo-rules", "-n", NS], |p| {
            p["status"]["conditions"].as_array().is_some_and(|cs| cs.iter().any(|c| c["type"] == "Accepted" && c["reason"] == "Conflicted"))
        })
        .await?;
        let accepted = policy["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Accepted").unwrap();
        let message = accepted["message"].as_str().unwrap();
        assert!(message.contains("HTTPRoute gamma-kube/") && message.contains("Gateway API routes decide"), "{message}");

        // MeshStatus counts them: split and to-ghost accepted, no-parent not.
        until(cluster, "the route counts", &["get", "meshstatus", "mesh"], |m| {
            m["status"]["routesAccepted"] == 2 && m["status"]["routesRejected"] == 1
        })
        .await?;
        anyhow::Ok(())
    }
    .await;
    plane.stop().await;
    result?;

    // An operator whose ClusterRole does not let it read routes (upgraded without its
    // RBAC) is ready all the same, and says why it reads no routes.
    let role = kubectl(
        cluster,
        &["get", "clusterrole", "weir-operator", "-o", "json"],
    )?;
    let mut reduced: Value = serde_json::from_str(&role)?;
    reduced["rules"]
        .as_array_mut()
        .context("rules")?
        .retain(|r| r["apiGroups"][0] != "gateway.networking.k8s.io");
    reduced["metadata"]
        .as_object_mut()
        .context("metadata")?
        .remove("resourceVersion");
    apply(cluster, &reduced)?;
    let plane = start_operator_on(
        client_from(&kubeconfig).await?,
        "weir-gamma-1",
        loopback_options(),
    )
    .await?;
    let ready = async {
        let end = Instant::now() + Duration::from_secs(30);
        while !plane.state.is_synced() {
            anyhow::ensure!(Instant::now() < end, "not ready without RBAC for routes");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::Ok(())
    }
    .await;
    plane.stop().await;
    let restored: Value = serde_json::from_str(&role)?;
    let mut restored = restored;
    restored["metadata"]
        .as_object_mut()
        .context("metadata")?
        .remove("resourceVersion");
    apply(cluster, &restored)?;
    ready
}
