//! The sidecar the injector writes starts in real Envoy: its arguments and bootstrap (after
//! the kubelet's $(VAR) expansion) are accepted, it connects to the operator over TLS
//! (verified against the mesh root it mounts, presenting the token it mounts) under the
//! expanded node id and its pod's service account, and its probe listener reports it ready.

use std::process::Stdio;
use weir_core::mesh::{PROXY_READY_PATH, ROOT_CERT_KEY};
use weir_tests::*;
use weir_webhook::inject::{inject, MeshConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_injected_proxy_starts_connects_and_reports_ready() -> anyhow::Result<()> {
    let mesh = Mesh::start_tls().await?;
    let pod: k8s_openapi::api::core::v1::Pod = serde_saphyr::from_str(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop}\nspec:\n  serviceAccountName: storefront\n  containers:\n  - name: web\n    image: web:1\n",
    )?;
    let config = MeshConfig {
        xds_address: mesh.plane.xds_addr.to_string(),
        ..MeshConfig::default()
    };
    let injected = inject(&pod, "shop", &config).pod;
    let proxy = injected
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == "weir-proxy"))
        .cloned()
        .expect("a proxy container");
    let mut args = proxy.args.clone().expect("args");

    // What the kubelet does: $(VAR) in args from the container's env, and the mounts (the
    // mesh root from ConfigMap weir-root-ca, the projected token).
    let mounts = scratch_dir("injected-mounts");
    std::fs::copy(
        mesh.ca_dir.as_ref().expect("TLS mesh").join("ca.crt"),
        mounts.join(ROOT_CERT_KEY),
    )?;
    std::fs::write(mounts.join("token"), "a-projected-token")?;
    let mounts = mounts.to_string_lossy().into_owned();
    for arg in &mut args {
        *arg = arg
            .replace("$(POD_NAME)", "web-7d4f")
            .replace("$(POD_NAMESPACE)", "shop")
            .replace(weir_webhook::inject::CA_DIR, &mounts)
            .replace(weir_webhook::inject::TOKEN_DIR, &mounts);
    }
    // The sidecar's fixed ports (admin 15000, probes 15021, Prometheus 15090, and the
    // transparent listeners from xDS) belong to the pod's own network namespace; here they
    // are moved to free ports so the test never collides with anything on the machine.
    let (admin, probes, prometheus) = (free_port(), free_port(), free_port());
    let mut bootstrap: serde_json::Value = serde_json::from_str(&args[1])?;
    bootstrap["admin"]["address"]["socket_address"]["port_value"] = admin.into();
    for listener in bootstrap["static_resources"]["listeners"]
        .as_array_mut()
        .expect("listeners")
    {
        let port = if listener["name"] == "probes" {
            probes
        } else {
            prometheus
        };
        listener["address"]["socket_address"]["port_value"] = port.into();
    }
    for cluster in bootstrap["static_resources"]["clusters"]
        .as_array_mut()
        .expect("clusters")
    {
        if cluster["name"] == "weir-admin" {
            cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                ["socket_address"]["port_value"] = admin.into();
        }
    }
    // Transparent listeners bind 15001 and 15006; run this proxy as explicit instead, on a
    // free port. Everything else is as injected.
    let outbound = free_port();
    bootstrap["node"]["metadata"]["CAPTURE_MODE"] = "explicit".into();
    bootstrap["node"]["metadata"]["OUTBOUND_PORT"] = outbound.to_string().into();
    args[1] = bootstrap.to_string();

    let log = scratch_dir("injected").join("envoy.log");
    let mut child = tokio::process::Command::new(envoy_bin()?)
        .args(&args)
        .arg("--log-path")
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let ready_url = format!("http://127.0.0.1:{probes}{PROXY_READY_PATH}");
    let status = eventually("the probe listener to answer ready", DEADLINE, || async {
        let resp = reqwest::get(&ready_url).await.ok()?;
        (resp.status() == 200).then_some(resp.status())
    })
    .await;
    if let Ok(Some(exit)) = child.try_wait() {
        anyhow::bail!(
            "envoy exited ({exit}) with the injected args:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    status?;
    let proxies = admin_json(mesh.plane.admin_addr, "/debug/proxies").await?;
    assert_eq!(
        proxies[0]["node"], "web-7d4f.shop",
        "node id from the expanded bootstrap"
    );
    assert_eq!(proxies[0]["namespace"], "shop");
    assert_eq!(
        proxies[0]["service_account"], "storefront",
        "the pod's service account, from the bootstrap (local mode does not review tokens)"
    );
    child.kill().await?;
    Ok(())
}
