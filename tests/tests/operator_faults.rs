//! Faults a real API server cannot be made to produce on demand, against the in-process
//! fake (`weir_tests::fake_api`): requests that fail with 500, watches cut mid-stream, and
//! a stored object our types cannot decode (the real server's schema refuses those). Every
//! other operator behaviour is tested against a real kube-apiserver (`operator_kube.rs`).

use anyhow::Result;
use serde_json::{json, Value};
use weir_core::testing;
use weir_operator::k8s::KubeOptions;
use weir_operator::{ControlPlane, Options, Source};
use weir_tests::fake_api::{collections::*, FakeApi};
use weir_tests::{eventually, http_service, to_json, DEADLINE};

const NS: &str = "shop";

async fn start_operator(api: &FakeApi, identity: &str) -> Result<ControlPlane> {
    let options = KubeOptions {
        client: api.client()?,
        lease: weir_tests::kube::test_lease(identity),
    };
    let any = "127.0.0.1:0".parse()?;
    Ok(ControlPlane::start(Source::Kube(options), Options::new(any, any)).await?)
}

fn mk_service(name: &str, ip: &str, port: u16) -> Value {
    to_json(&http_service(NS, name, ip, port))
}

/// A policy; `spec` is JSON so that tests can also write what the typed spec cannot hold.
fn mk_policy(name: &str, spec: Value) -> Value {
    let mut policy = to_json(&testing::mk_policy(NS, name, Default::default()));
    policy["spec"] = spec;
    policy
}

/// A 90/10 split of `target` between subsets v1 and v2.
fn split_spec(target: &str) -> Value {
    to_json(&testing::mk_policy_spec(target, &[("v1", 90), ("v2", 10)]))
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
    eventually(
        &format!("{policy} {type_}={status} ({reason})"),
        DEADLINE,
        || async {
            let c = condition(api, policy, type_)?;
            (c["status"] == status && c["reason"] == reason)
                .then(|| c["message"].as_str().unwrap_or_default().to_string())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_requests_and_broken_watches_are_retried() -> Result<()> {
    let api = FakeApi::start().await?;
    api.apply(mk_service("reviews", "10.96.0.10", 9080));
    api.apply(mk_service("ratings", "10.96.0.11", 9080));
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
    api.apply(mk_service("details", "10.96.0.12", 9080));
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
    api.apply(mk_service("reviews", "10.96.0.10", 9080));
    let mut bad = mk_policy("bad", split_spec("reviews"));
    bad["spec"]["http"][0]["timeout"] = json!(5);
    api.apply(bad);
    api.apply(mk_policy("good", split_spec("reviews")));
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
    api.apply(mk_service("ratings", "10.96.0.11", 9080));
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
