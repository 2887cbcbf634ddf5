//! The install manifests in config/ agree with each other and with the binaries: every
//! kustomization entry exists and parses, names and ports line up (the injector's default
//! xDS address, the webhook Service), the Deployments are hardened as promised, and the
//! operator accepts the arguments its Deployment gives it. (Whether RBAC covers every
//! request is checked against real requests in operator_kube.rs.)

use anyhow::{Context, Result};
use serde_json::Value;
use std::path::Path;
use weir_core::mesh::{MESH_NAMESPACE, WEBHOOK_CONFIGURATION, WEBHOOK_TLS_SECRET};
use weir_tests::{workspace_binary, workspace_root};

fn load(path: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    weir_core::yaml::documents(&text)
        .into_iter()
        .map(|doc| doc.with_context(|| format!("{} does not parse", path.display())))
        .collect()
}

/// Every object a kustomization lists, with the file it came from.
fn kustomization(dir: &str) -> Result<Vec<Value>> {
    let dir = workspace_root().join(dir);
    let k = load(&dir.join("kustomization.yaml"))?.remove(0);
    let mut objects = Vec::new();
    for resource in k["resources"].as_array().context("no resources")? {
        let file = dir.join(resource.as_str().context("resource is not a path")?);
        assert!(
            file.exists(),
            "{} lists {} which does not exist",
            dir.display(),
            file.display()
        );
        objects.extend(load(&file)?);
    }
    Ok(objects)
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn assert_hardened(deployment: &Value) {
    let name = deployment["metadata"]["name"].as_str().unwrap();
    assert_eq!(deployment["spec"]["replicas"], 2, "{name}: replicas");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
    for c in pod["containers"].as_array().unwrap() {
        let sc = &c["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
        assert_eq!(sc["capabilities"]["drop"][0], "ALL", "{name}");
        assert!(
            c["resources"]["requests"]["memory"].is_string(),
            "{name}: requests"
        );
        assert!(
            c["resources"]["limits"]["memory"].is_string(),
            "{name}: limits"
        );
        assert!(
            c["readinessProbe"].is_object() && c["livenessProbe"].is_object(),
            "{name}: probes"
        );
    }
}

#[test]
fn the_operator_install_is_consistent_and_hardened() -> Result<()> {
    let objects = kustomization("config")?;
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
    ] {
        assert!(
            objects.iter().any(|o| o["kind"] == kind),
            "config/ installs no {kind}"
        );
    }
    for o in objects
        .iter()
        .filter(|o| o["kind"] != "Namespace" && !o["kind"].as_str().unwrap().starts_with("Cluster"))
    {
        assert_eq!(
            o["metadata"]["namespace"], MESH_NAMESPACE,
            "{:?}",
            o["metadata"]["name"]
        );
    }
    let deployment = find(&objects, "Deployment", "weir-operator");
    assert_hardened(deployment);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "weir-operator");
    let container = &pod["containers"][0];
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    // The allocator settings the binary gives itself: set here, the pod starts without
    // re-executing it.
    for (name, value) in weir_operator::ALLOCATOR_ENV {
        assert!(
            container["env"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["name"] == name && e["value"] == value),
            "the operator Deployment does not set {name}={value}"
        );
    }
    for binding in ["ClusterRoleBinding", "RoleBinding"] {
        let b = objects.iter().find(|o| o["kind"] == binding).unwrap();
        assert_eq!(b["subjects"][0]["name"], "weir-operator");
        assert_eq!(b["subjects"][0]["namespace"], MESH_NAMESPACE);
    }

    // Proxies injected with the defaults reach this Service.
    let default_xds = weir_webhook::inject::MeshConfig::default().xds_address;
    let service = find(&objects, "Service", "weir");
    let port = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "grpc-xds")
        .context("no grpc-xds port")?;
    assert_eq!(
        default_xds,
        format!("weir.weir-system.svc:{}", port["port"].as_u64().unwrap())
    );

    // The binary accepts the Deployment's arguments.
    let mut args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    args.push("--help".into());
    let out = std::process::Command::new(workspace_binary("weir-operator")?)
        .args(&args)
        .output()?;
    assert!(
        out.status.success(),
        "weir-operator {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn the_webhook_install_points_at_its_service_and_certificate() -> Result<()> {
    let objects = kustomization("config/webhook")?;
    let deployment = find(&objects, "Deployment", "weir-webhook");
    assert_hardened(deployment);
    let service = find(&objects, "Service", "weir-webhook");
    let config = find(
        &objects,
        "MutatingWebhookConfiguration",
        WEBHOOK_CONFIGURATION,
    );
    for webhook in config["webhooks"].as_array().unwrap() {
        let svc = &webhook["clientConfig"]["service"];
        assert_eq!(svc["name"], "weir-webhook");
        assert_eq!(svc["namespace"], MESH_NAMESPACE);
        assert_eq!(svc["port"], service["spec"]["ports"][0]["port"]);
        assert_eq!(webhook["failurePolicy"], "Fail");
    }
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(
        pod["volumes"][0]["secret"]["secretName"],
        WEBHOOK_TLS_SECRET
    );
    let args: Vec<&str> = pod["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let mount = pod["containers"][0]["volumeMounts"][0]["mountPath"]
        .as_str()
        .unwrap();
    assert!(
        args.contains(&format!("--tls-cert={mount}/tls.crt").as_str()),
        "{args:?}"
    );
    assert!(
        args.contains(&format!("--tls-key={mount}/tls.key").as_str()),
        "{args:?}"
    );
    Ok(())
}
