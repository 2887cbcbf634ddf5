//! Failures on either side of the xDS stream: Envoy restarting, the operator restarting, and
//! Envoy rejecting config (NACK).

use anyhow::Context;
use envoy_types::pb::envoy::config::cluster::v3::{
    cluster::{ClusterDiscoveryType, DiscoveryType},
    Cluster,
};
use std::time::Duration;
use weir_core::bootstrap::XdsProtocol;
use weir_core::{Resource, ResourceType};
use weir_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_envoy_reconnects_and_gets_the_same_config() -> anyhow::Result<()> {
    let (mesh, _v1, _v2) = Mesh::with_reviews(Some([0, 100])).await?;
    for protocol in [XdsProtocol::Delta, XdsProtocol::Sotw] {
        let envoy = Envoy::start("restart", mesh.plane.xds_addr, protocol).await?;
        envoy.wait_all_on("reviews:9080", "reviews-v2").await?;
        let (outbound, admin) = (envoy.outbound_port, envoy.admin_port);
        envoy.stop().await;
        let envoy =
            Envoy::start_with("restart", mesh.plane.xds_addr, protocol, outbound, admin).await?;
        // Ready means Envoy has its listeners and clusters again; the first request must route.
        let c = envoy.send(20, "reviews:9080", "/", &[]).await?;
        assert_eq!(c.get("reviews-v2"), Some(&20), "{protocol:?}: {c:?}");
        envoy.stop().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_keeps_serving_while_the_operator_restarts_and_resyncs_after() -> anyhow::Result<()> {
    let (mesh, _v1, _v2) = Mesh::with_reviews(Some([0, 100])).await?;
    let xds = mesh.plane.xds_addr;
    let dir = mesh.dir.clone();
    let envoy = Envoy::start("operator-restart", xds, XdsProtocol::Delta).await?;
    envoy.wait_all_on("reviews:9080", "reviews-v2").await?;

    mesh.plane.stop().await;
    // With no operator, Envoy serves its last config.
    let c = envoy.send(50, "reviews:9080", "/", &[]).await?;
    assert_eq!(
        c.get("reviews-v2"),
        Some(&50),
        "Envoy kept its config without the operator: {c:?}"
    );
    // Change the policy while the operator is down; the new operator must deliver it.
    write_file(
        &dir,
        "policy.yaml",
        &split_policy_yaml("reviews", "reviews", &[("v1", 100), ("v2", 0)]),
    )?;

    let mesh = Mesh::start_in(dir, xds).await?;
    envoy.wait_all_on("reviews:9080", "reviews-v1").await?;
    let status = eventually(
        "the proxy to be in sync with the new operator",
        DEADLINE,
        || async {
            let s = mesh.status().await.ok()?;
            (s["status"]["proxiesInSync"] == 1).then_some(s)
        },
    )
    .await?;
    assert_eq!(status["status"]["proxiesConnected"], 1);
    Ok(())
}

/// A cluster Envoy refuses: its connect timeout must be positive.
fn rejected_cluster() -> Resource {
    let cluster = Cluster {
        name: "rejected-by-envoy".into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        connect_timeout: Some(envoy_types::pb::google::protobuf::Duration {
            seconds: -1,
            nanos: 0,
        }),
        ..Default::default()
    };
    Resource::new("rejected-by-envoy", &cluster)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_is_recorded_keeps_the_last_good_config_and_causes_no_resend() -> anyhow::Result<()>
{
    let (mesh, _v1, _v2) = Mesh::with_reviews(Some([0, 100])).await?;
    let admin = mesh.plane.admin_addr;
    for protocol in [XdsProtocol::Delta, XdsProtocol::Sotw] {
        let node = format!("nack-{protocol:?}");
        let envoy = Envoy::start(&node, mesh.plane.xds_addr, protocol).await?;
        envoy.wait_all_on("reviews:9080", "reviews-v2").await?;

        mesh.plane
            .state
            .insert_overlay(ResourceType::Cluster, rejected_cluster());
        let nack = eventually("the NACK in /debug/proxies", DEADLINE, || async {
            let proxies = admin_json(admin, "/debug/proxies").await.ok()?;
            let proxy = proxies
                .as_array()?
                .iter()
                .find(|p| p["node"] == node.as_str())?
                .clone();
            proxy["types"]["cds"]["nack"].as_str().map(str::to_string)
        })
        .await?;
        println!("{protocol:?} NACK: {nack}");
        assert!(
            nack.contains("positive duration"),
            "Envoy's own message: {nack}"
        );

        let status = mesh.status().await?;
        let problems = status["status"]["rejectedConfig"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let problem = problems
            .iter()
            .find(|p| p["node"] == node.as_str() && p["message"] == nack.as_str())
            .with_context(|| format!("the NACK in rejectedConfig: {status}"))?;
        assert_eq!(
            problem["typeUrl"], "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            "rejectedConfig names the xDS type URL, as the CRD documents"
        );
        let metrics = reqwest::get(format!("http://{admin}/metrics"))
            .await?
            .text()
            .await?;
        assert!(
            metrics.contains("weir_xds_nacks_total{type=\"cds\"}"),
            "{metrics}"
        );

        // The last good config keeps serving.
        let c = envoy.send(50, "reviews:9080", "/", &[]).await?;
        assert_eq!(c.get("reviews-v2"), Some(&50), "{c:?}");
        // And the rejected config is not sent again and again: watch the push count for a
        // while (an absence has to be observed over time).
        let before = pushes(admin, &node).await?;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let after = pushes(admin, &node).await?;
        assert_eq!(before, after, "{protocol:?}: no resend loop after a NACK");

        // Taking the rejected cluster away is a change like any other: it clears the NACK.
        mesh.plane
            .state
            .remove_overlay(ResourceType::Cluster, "rejected-by-envoy");
        eventually("the proxy to be back in sync", DEADLINE, || async {
            let s = mesh.status().await.ok()?;
            (s["status"]["proxiesInSync"] == 1 && s["status"]["rejectedConfig"].is_null())
                .then_some(())
        })
        .await?;
        envoy.stop().await;
    }
    Ok(())
}
