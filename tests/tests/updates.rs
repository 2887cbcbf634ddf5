//! Changes to the mesh directory reach a running Envoy without restarting it: policy edits
//! (over SotW and delta), endpoint changes (as EDS-only pushes), and invalid policies that
//! are rejected while the previous config keeps serving.

use weir_core::bootstrap::XdsProtocol;
use weir_tests::*;

async fn edit_reaches_the_same_envoy(protocol: XdsProtocol) -> anyhow::Result<()> {
    let (mesh, _v1, _v2) = Mesh::with_reviews(Some([100, 0])).await?;
    let envoy = Envoy::start("edit", mesh.plane.xds_addr, protocol).await?;
    let pid = envoy.pid();
    envoy.wait_all_on("reviews:9080", "reviews-v1").await?;

    let edited_at = std::time::Instant::now();
    mesh.write(
        "policy.yaml",
        &split_policy_yaml("reviews", "reviews", &[("v1", 0), ("v2", 100)]),
    )?;
    envoy.wait_all_on("reviews:9080", "reviews-v2").await?;
    println!(
        "{protocol:?}: file edit to Envoy routing by it: {:?}",
        edited_at.elapsed()
    );
    assert_eq!(
        envoy.pid(),
        pid,
        "the same Envoy process serves the new policy"
    );
    assert!(
        envoy
            .stat("listener_manager.total_listeners_active")
            .await?
            >= 1
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_edit_reaches_envoy_without_restart_over_delta() -> anyhow::Result<()> {
    edit_reaches_the_same_envoy(XdsProtocol::Delta).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_edit_reaches_envoy_without_restart_over_sotw() -> anyhow::Result<()> {
    edit_reaches_the_same_envoy(XdsProtocol::Sotw).await
}

async fn endpoint_changes_are_eds_only(protocol: XdsProtocol) -> anyhow::Result<()> {
    let mesh = Mesh::start().await?;
    mesh.add_service("ratings", "10.96.0.30", 9080)?;
    // Two pods of one EndpointSlice share the target port, on two loopback addresses.
    let a = Backend::start_on("ratings-a", "127.0.0.2:0".parse()?, Behavior::default()).await?;
    let port = a.addr.port();
    let b = Backend::start_on(
        "ratings-b",
        format!("127.0.0.3:{port}").parse()?,
        Behavior::default(),
    )
    .await?;
    let slice = |endpoints: &[(&str, std::net::IpAddr)]| {
        slice_yaml("default", "ratings", "ratings-1", port, endpoints)
    };
    mesh.write("slice.yaml", &slice(&[("ratings-a", a.addr.ip())]))?;
    let node = format!("eds-{protocol:?}");
    let envoy = Envoy::start(&node, mesh.plane.xds_addr, protocol).await?;
    eventually("ratings-a to answer", DEADLINE, || async {
        let c = envoy.send(10, "ratings:9080", "/", &[]).await.ok()?;
        (c.get("ratings-a") == Some(&10)).then_some(())
    })
    .await?;
    let admin = mesh.plane.admin_addr;
    let before = eventually("the proxy to ACK everything", DEADLINE, || async {
        let status = mesh.status().await.ok()?;
        (status["status"]["proxiesInSync"] == 1).then_some(())?;
        pushes(admin, &node).await.ok()
    })
    .await?;

    // An endpoint added to the slice gets traffic.
    mesh.write(
        "slice.yaml",
        &slice(&[("ratings-a", a.addr.ip()), ("ratings-b", b.addr.ip())]),
    )?;
    eventually("ratings-b to get traffic", DEADLINE, || async {
        let c = envoy.send(20, "ratings:9080", "/", &[]).await.ok()?;
        c.contains_key("ratings-b").then_some(())
    })
    .await?;
    // An endpoint removed from the slice gets none.
    mesh.write("slice.yaml", &slice(&[("ratings-b", b.addr.ip())]))?;
    eventually("ratings-a to get no traffic", DEADLINE, || async {
        let c = envoy.send(20, "ratings:9080", "/", &[]).await.ok()?;
        (c.get("ratings-b") == Some(&20)).then_some(())
    })
    .await?;

    let after = pushes(admin, &node).await?;
    println!("{protocol:?} pushes before {before:?} after {after:?}");
    for t in ["cds", "lds", "rds"] {
        assert_eq!(
            before.get(t),
            after.get(t),
            "{t} was pushed for an endpoint change"
        );
    }
    let eds = after["eds"] - before["eds"];
    assert_eq!(eds, 2, "one EDS push per change");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_changes_move_traffic_with_eds_pushes_only_delta() -> anyhow::Result<()> {
    endpoint_changes_are_eds_only(XdsProtocol::Delta).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_changes_move_traffic_with_eds_pushes_only_sotw() -> anyhow::Result<()> {
    endpoint_changes_are_eds_only(XdsProtocol::Sotw).await
}

const BAD_WEIGHTS: &str = "apiVersion: weir.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: reviews, namespace: default}
spec:
  targetRef: {service: reviews}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  http:
  - destinations: [{subset: v1, weight: 70}, {subset: v2, weight: 20}]
";

const UNKNOWN_SUBSET: &str = "apiVersion: weir.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: reviews, namespace: default}
spec:
  targetRef: {service: reviews}
  subsets:
  - {name: v1, labels: {version: v1}}
  http:
  - destinations: [{subset: v9}]
";

const BAD_REGEX: &str = "apiVersion: weir.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: reviews, namespace: default}
spec:
  targetRef: {service: reviews}
  subsets:
  - {name: v1, labels: {version: v1}}
  http:
  - matches: [{path: {type: RegularExpression, value: '/api/(v1'}}]
    destinations: [{subset: v1}]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_policies_are_rejected_and_the_previous_config_keeps_serving() -> anyhow::Result<()>
{
    let (mesh, _v1, _v2) = Mesh::with_reviews(Some([0, 100])).await?;
    let envoy = Envoy::start("invalid", mesh.plane.xds_addr, XdsProtocol::Delta).await?;
    envoy.wait_all_on("reviews:9080", "reviews-v2").await?;

    for (yaml, reason, field) in [
        (BAD_WEIGHTS, "InvalidWeights", "spec.http[0].destinations"),
        (
            UNKNOWN_SUBSET,
            "UnknownSubset",
            "spec.http[0].destinations[0].subset",
        ),
        (
            BAD_REGEX,
            "InvalidRegex",
            "spec.http[0].matches[0].path.value",
        ),
    ] {
        mesh.write("policy.yaml", yaml)?;
        let accepted = eventually(&format!("{reason} in /status"), DEADLINE, || async {
            let conditions = mesh.policy_conditions("reviews").await.ok()?;
            conditions
                .into_iter()
                .find(|c| c["type"] == "Accepted" && c["reason"] == reason)
        })
        .await?;
        let message = accepted["message"].as_str().unwrap_or_default();
        println!("{reason}: {message}");
        assert_eq!(accepted["status"], false);
        assert!(
            message.starts_with(field),
            "the message names the field {field}: {message}"
        );
        assert!(message.contains("previous valid version"), "{message}");
        let status = mesh.status().await?;
        assert_eq!(status["status"]["policiesRejected"], 1, "{status}");
        // The last valid version (all on v2) keeps serving.
        let c = envoy.send(50, "reviews:9080", "/", &[]).await?;
        assert_eq!(c.get("reviews-v2"), Some(&50), "{reason}: {c:?}");
    }

    // A file that is not even YAML: reported with file and document; nothing changes.
    mesh.write(
        "policy.yaml",
        "apiVersion: weir.dev/v1alpha1\nkind: TrafficPolicy\n  metadata: [\n",
    )?;
    let error = eventually("the YAML error in /status", DEADLINE, || async {
        let status = mesh.status().await.ok()?;
        status["sourceErrors"].as_array()?.first().cloned()
    })
    .await?;
    assert!(
        error["source"]
            .as_str()
            .unwrap_or_default()
            .ends_with("policy.yaml"),
        "{error}"
    );
    assert_eq!(error["document"], 0);
    let c = envoy.send(50, "reviews:9080", "/", &[]).await?;
    assert_eq!(c.get("reviews-v2"), Some(&50), "{c:?}");
    Ok(())
}
