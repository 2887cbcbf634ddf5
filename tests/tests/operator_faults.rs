//! Faults a real API server cannot be made to produce on demand, against the in-process
//! fake (`weir_tests::fake_api`): requests that fail with 500, watches cut mid-stream, and
//! a stored object our types cannot decode (the real server's schema refuses those). Every
//! other operator behaviour is tested against a real kube-apiserver (`operator_kube.rs`).

use anyhow::Result;
use serde_json::{json, Value};
use weir_operator::ControlPlane;
use weir_tests::fake_api::{collections::*, FakeApi};
use weir_tests::kube::{loopback_options, start_operator_on};
use weir_tests::{eventually, policy_json, service_json, split_spec_json, DEADLINE};

const NS: &str = "shop";

async fn start_operator(api: &FakeApi, identity: &str) -> Result<ControlPlane> {
    start_operator_on(api.client()?, identity, loopback_options()).await
}

/// The condition `type_` of a policy, once it has the generation the policy is at.
fn condition(api: &FakeApi, policy: &str, type_: &str) -> Option<Value> {
    weir_e2e::condition(&api.get(POLICIES, NS, policy)?, type_)
}

/// Waits until the policy's condition has `status` and `reason`; returns its message.
async fn wait_condition(
    api: &FakeApi,
    policy: &str,
    type_: &str,
    status: &str,
    reason: &str,
) -> Result<String> {
    weir_tests::wait_condition(&format!("{policy} {type_}"), status, reason, || {
        condition(api, policy, type_)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_requests_and_broken_watches_are_retried() -> Result<()> {
    let api = FakeApi::start().await?;
    api.apply(service_json(NS, "reviews", "10.96.0.10", 9080));
    api.apply(service_json(NS, "ratings", "10.96.0.11", 9080));
    let plane = start_operator(&api, "weir-a").await?;
    let services = |plane: &ControlPlane| {
        let mut keys: Vec<String> = plane
            .state
            .keys(weir_core::Kind::Service)
            .into_iter()
            .map(|k| k.name)
            .collect();
        keys.sort();
        keys
    };
    eventually("both Services", DEADLINE, || async {
        (services(&plane) == ["ratings", "reviews"]).then_some(())
    })
    .await?;

    // The API server goes away for a while: watches end, requests fail.
    api.fail_next("api/v1/services", 3);
    api.break_watches();
    api.apply(service_json(NS, "details", "10.96.0.12", 9080));
    eventually(
        "the Service created during the outage",
        DEADLINE,
        || async { (services(&plane) == ["details", "ratings", "reviews"]).then_some(()) },
    )
    .await?;
    assert!(plane.state.metrics.watch_errors.get() >= 1);
    plane.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_that_does_not_decode_is_reported_and_skipped() -> Result<()> {
    let api = FakeApi::start().await?;
    api.apply(service_json(NS, "reviews", "10.96.0.10", 9080));
    let mut bad = policy_json(NS, "bad", split_spec_json("reviews"));
    bad["spec"]["http"][0]["timeout"] = json!(5);
    api.apply(bad);
    api.apply(policy_json(NS, "good", split_spec_json("reviews")));
    let plane = start_operator(&api, "weir-a").await?;
    wait_condition(&api, "good", "Accepted", "True", "Accepted").await?;
    let errors = eventually("the decode error in status", DEADLINE, || async {
        let view = plane.state.mesh_status();
        (!view.source_errors.is_empty()).then_some(view.source_errors)
    })
    .await?;
    assert!(errors[0].source.contains("shop/bad"), "{errors:?}");
    assert!(
        errors[0].message.contains("spec.http[0].timeout"),
        "{errors:?}"
    );
    // The watch is alive: later objects still arrive.
    api.apply(service_json(NS, "ratings", "10.96.0.11", 9080));
    eventually("a later Service", DEADLINE, || async {
        plane
            .state
            .keys(weir_core::Kind::Service)
            .iter()
            .any(|k| k.name == "ratings")
            .then_some(())
    })
    .await?;
    plane.stop().await;
    Ok(())
}
