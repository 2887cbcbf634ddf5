//! Operator mode against an in-process API server (`weir_tests::fake_api`): the real kube
//! client, watchers, Lease elector and status writer, unchanged. Conditions and Events for
//! each outcome, server-side apply under one field manager, MeshStatus throttling, leader
//! election (only the leader writes, a lost Lease stops writes, takeover on SIGTERM and
//! on SIGKILL), and recovery from watch failures.

use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use weir_core::testing;
use weir_operator::k8s::leader::LeaseSettings;
use weir_operator::k8s::KubeOptions;
use weir_operator::{ControlPlane, Source};
use weir_tests::fake_api::{collections::*, next_second_after, FakeApi};
use weir_tests::{eventually, http_service, to_json, DEADLINE};

const NS: &str = "shop";

fn lease(identity: &str) -> LeaseSettings {
    LeaseSettings {
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1500),
        retry_period: Duration::from_millis(200),
        ..LeaseSettings::new("weir-system", identity)
    }
}

async fn start_operator(api: &FakeApi, identity: &str) -> Result<ControlPlane> {
    let options = KubeOptions {
        client: api.client()?,
        lease: lease(identity),
    };
    let any = "127.0.0.1:0".parse()?;
    Ok(ControlPlane::start(Source::Kube(options), any, any).await?)
}

async fn wait_leading(plane: &ControlPlane) -> Result<()> {
    let mut leading = plane.leading.clone();
    tokio::time::timeout(DEADLINE, leading.wait_for(|l| *l))
        .await
        .context("the operator never became leader")??;
    Ok(())
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
    let object = api.get(POLICIES, NS, policy)?;
    let generation = object["metadata"]["generation"].as_i64();
    if object["status"]["observedGeneration"].as_i64() != generation {
        return None;
    }
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
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

fn events_for(api: &FakeApi, policy: &str) -> Vec<Value> {
    api.list(EVENTS)
        .into_iter()
        .filter(|e| e["regarding"]["name"] == policy)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_conditions_are_written_by_server_side_apply_for_each_outcome() -> Result<()> {
    let api = FakeApi::start().await?;
    api.apply(mk_service("reviews", "10.96.0.10", 9080));
    api.apply(mk_service("ratings", "10.96.0.11", 9080));
    let plane = start_operator(&api, "weir-a").await?;
    wait_leading(&plane).await?;

    // Valid: Accepted and ResolvedRefs true; nothing connected, so not yet Programmed.
    api.apply(mk_policy("canary", split_spec("reviews")));
    wait_condition(&api, "canary", "Accepted", "True", "Accepted").await?;
    wait_condition(&api, "canary", "ResolvedRefs", "True", "ResolvedRefs").await?;
    let programmed = wait_condition(&api, "canary", "Programmed", "False", "NoProxies").await?;
    assert!(programmed.contains("No proxy"), "{programmed}");
    let object = api.get(POLICIES, NS, "canary").unwrap();
    let accepted = condition(&api, "canary", "Accepted").unwrap();
    assert_eq!(accepted["observedGeneration"], 1);
    assert!(accepted["lastTransitionTime"].is_string());
    let managers: Vec<&str> = object["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["subresource"] == "status")
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert_eq!(managers, ["weir-operator"]);
    let writes: Vec<_> = api
        .recorded()
        .into_iter()
        .filter(|r| r.path.ends_with("/trafficpolicies/canary/status"))
        .collect();
    assert!(!writes.is_empty());
    for w in &writes {
        assert_eq!(w.method, "PATCH");
        assert_eq!(w.field_manager(), Some("weir-operator"), "{}", w.query);
        assert!(w.query.contains("force=true"), "{}", w.query);
    }

    // Each rejection: reason, a message naming the field and the fix, and a Warning Event.
    let cases = [
        (
            "weights",
            json!({"targetRef": {"service": "reviews"}, "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}],
                "http": [{"destinations": [{"subset": "v1", "weight": 70}, {"subset": "v2", "weight": 20}]}]}),
            "InvalidWeights",
            "spec.http[0].destinations",
        ),
        (
            "subset",
            json!({"targetRef": {"service": "reviews"}, "subsets": [{"name": "v1", "labels": {"version": "v1"}}],
                "http": [{"destinations": [{"subset": "v3"}]}]}),
            "UnknownSubset",
            "v3",
        ),
        (
            "regex",
            json!({"targetRef": {"service": "reviews", "port": 9080},
                "http": [{"matches": [{"path": {"type": "RegularExpression", "value": "/api/(v1"}}], "destinations": [{}]}]}),
            "InvalidRegex",
            "spec.http[0].matches[0].path",
        ),
    ];
    for (name, spec, reason, field) in cases {
        api.apply(mk_policy(name, spec));
        let message = wait_condition(&api, name, "Accepted", "False", reason).await?;
        assert!(message.contains(field), "{name}: {message}");
        let events = eventually(&format!("an Event for {name}"), DEADLINE, || async {
            let events = events_for(&api, name);
            (!events.is_empty()).then_some(events)
        })
        .await?;
        assert_eq!(events[0]["type"], "Warning");
        assert_eq!(events[0]["reason"], reason);
        assert_eq!(events[0]["reportingController"], "weir-operator");
        assert_eq!(events[0]["regarding"]["kind"], "TrafficPolicy");
    }

    // Unresolved references: the target, and a destination Service.
    api.apply(mk_policy("nowhere", split_spec("details")));
    let message =
        wait_condition(&api, "nowhere", "ResolvedRefs", "False", "TargetNotFound").await?;
    assert!(
        message.contains("spec.targetRef.service") && message.contains("shop/details"),
        "{message}"
    );
    api.apply(mk_policy(
        "mirror",
        json!({"targetRef": {"service": "ratings"}, "http": [{"destinations": [{"service": "ratings-v9"}]}]}),
    ));
    let message =
        wait_condition(&api, "mirror", "ResolvedRefs", "False", "BackendNotFound").await?;
    assert!(
        message.contains("spec.http[0].destinations[0].service"),
        "{message}"
    );

    // A field Weir types but does not translate yet: accepted, with the reason saying so.
    api.apply(mk_service("catalog", "10.96.0.12", 9080));
    let mut spec = split_spec("catalog");
    spec["connectionPool"] = json!({"maxConnections": 10});
    api.apply(mk_policy("pool", spec));
    let message = wait_condition(&api, "pool", "Accepted", "True", "UnsupportedField").await?;
    assert!(message.contains("connectionPool"), "{message}");

    // A fix flips Accepted back and moves observedGeneration.
    // (on another Service: canary governs reviews, and two policies there would conflict)
    api.apply(mk_policy("weights", split_spec("details")));
    wait_condition(&api, "weights", "Accepted", "True", "Accepted").await?;
    assert_eq!(
        condition(&api, "weights", "Accepted").unwrap()["observedGeneration"],
        2
    );

    // An edit that keeps a condition's status keeps its lastTransitionTime.
    let since = accepted["lastTransitionTime"].as_str().unwrap().to_string();
    next_second_after(&since).await;
    let mut spec = split_spec("reviews");
    spec["http"][0]["destinations"][0]["weight"] = json!(50);
    spec["http"][0]["destinations"][1]["weight"] = json!(50);
    api.apply(mk_policy("canary", spec));
    eventually("canary's status at generation 2", DEADLINE, || async {
        condition(&api, "canary", "Accepted").filter(|c| c["observedGeneration"] == 2)
    })
    .await?;
    let after = condition(&api, "canary", "Accepted").unwrap();
    assert_eq!(after["lastTransitionTime"].as_str(), Some(since.as_str()));
    plane.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_then_recreated_target_moves_resolved_refs_false_then_true() -> Result<()> {
    let api = FakeApi::start().await?;
    api.apply(mk_service("reviews", "10.96.0.10", 9080));
    api.apply(mk_policy("canary", split_spec("reviews")));
    let plane = start_operator(&api, "weir-a").await?;
    wait_condition(&api, "canary", "ResolvedRefs", "True", "ResolvedRefs").await?;
    assert!(api.delete(SERVICES, NS, "reviews"));
    wait_condition(&api, "canary", "ResolvedRefs", "False", "TargetNotFound").await?;
    api.apply(mk_service("reviews", "10.96.0.10", 9080));
    wait_condition(&api, "canary", "ResolvedRefs", "True", "ResolvedRefs").await?;
    plane.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_policies_on_one_port_the_older_wins_and_the_other_is_conflicted() -> Result<()> {
    let api = FakeApi::start().await?;
    api.apply(mk_service("reviews", "10.96.0.10", 9080));
    // Older but its name sorts last: age decides before the name does. Timestamps have
    // whole seconds, so the second policy is created a second later.
    let first = api.apply(mk_policy("zz-first", split_spec("reviews")));
    next_second_after(first["metadata"]["creationTimestamp"].as_str().unwrap()).await;
    api.apply(mk_policy("aa-second", split_spec("reviews")));
    let created =
        |name| api.get(POLICIES, NS, name).unwrap()["metadata"]["creationTimestamp"].clone();
    assert!(created("zz-first").as_str() < created("aa-second").as_str());
    let plane = start_operator(&api, "weir-a").await?;
    wait_condition(&api, "zz-first", "Accepted", "True", "Accepted").await?;
    let message = wait_condition(&api, "aa-second", "Accepted", "False", "Conflicted").await?;
    assert!(
        message.contains("shop/zz-first") && message.contains("9080"),
        "{message}"
    );

    // The winner goes away: the other takes over.
    api.delete(POLICIES, NS, "zz-first");
    wait_condition(&api, "aa-second", "Accepted", "True", "Accepted").await?;
    plane.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_status_is_written_at_most_once_a_second_under_a_burst_of_1000_changes() -> Result<()>
{
    let api = FakeApi::start().await?;
    let plane = start_operator(&api, "weir-a").await?;
    wait_leading(&plane).await?;
    eventually("MeshStatus mesh", DEADLINE, || async {
        api.get(MESH_STATUSES, "", "mesh")
    })
    .await?;
    let mesh_writes = |api: &FakeApi| {
        api.recorded()
            .iter()
            .filter(|r| r.path.ends_with("/meshstatuses/mesh/status"))
            .count()
    };
    let before = mesh_writes(&api);
    let started = Instant::now();
    for i in 0..1000 {
        api.apply(mk_policy(
            &format!("p{i:04}"),
            split_spec(&format!("svc{i}")),
        ));
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let status = eventually("MeshStatus counts all 1000 policies", DEADLINE, || async {
        let mesh = api.get(MESH_STATUSES, "", "mesh")?;
        (mesh["status"]["policiesAccepted"] == 1000).then_some(mesh["status"].clone())
    })
    .await?;
    let elapsed = started.elapsed();
    let writes = mesh_writes(&api) - before;
    assert_eq!(status["policiesRejected"], 0);
    assert!(writes >= 1);
    // One write per started second at most (plus the one that may open the burst).
    let allowed = elapsed.as_secs() as usize + 2;
    assert!(
        writes <= allowed,
        "{writes} MeshStatus writes in {elapsed:?} (at most {allowed})"
    );
    plane.stop().await;
    Ok(())
}

fn status_writes(plane: &ControlPlane) -> u64 {
    plane.state.metrics.status_writes.get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_writes_and_a_stopped_leader_hands_over_at_once() -> Result<()> {
    let api = FakeApi::start().await?;
    api.apply(mk_service("reviews", "10.96.0.10", 9080));
    let a = start_operator(&api, "weir-a").await?;
    wait_leading(&a).await?;
    let b = start_operator(&api, "weir-b").await?;
    eventually("b synced", DEADLINE, || async {
        b.state.is_synced().then_some(())
    })
    .await?;

    api.apply(mk_policy("canary", split_spec("reviews")));
    wait_condition(&api, "canary", "Accepted", "True", "Accepted").await?;
    assert!(*a.leading.borrow() && !*b.leading.borrow());
    assert!(status_writes(&a) > 0);
    assert_eq!(status_writes(&b), 0, "a follower wrote status");
    let lease = api.get(LEASES, "weir-system", "weir-operator").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "weir-a");

    // A graceful stop releases the Lease: b takes over well before it would expire.
    let stopped = Instant::now();
    a.stop().await;
    wait_leading(&b).await?;
    let takeover = stopped.elapsed();
    assert!(
        takeover < Duration::from_secs(2),
        "takeover took {takeover:?}"
    );
    api.apply(mk_policy("canary", split_spec("ratings")));
    wait_condition(&api, "canary", "ResolvedRefs", "False", "TargetNotFound").await?;
    assert!(status_writes(&b) > 0);
    let lease = api.get(LEASES, "weir-system", "weir-operator").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "weir-b");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
    b.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_loses_the_lease_stops_writing_at_once() -> Result<()> {
    let api = FakeApi::start().await?;
    api.apply(mk_service("reviews", "10.96.0.10", 9080));
    let a = start_operator(&api, "weir-a").await?;
    wait_leading(&a).await?;
    api.apply(mk_policy("canary", split_spec("reviews")));
    wait_condition(&api, "canary", "Accepted", "True", "Accepted").await?;

    // Another holder takes the Lease and keeps renewing it.
    let api = &api;
    let intruder = {
        let api_lease = move || {
            let mut lease = api.get(LEASES, "weir-system", "weir-operator").unwrap();
            lease["spec"]["holderIdentity"] = json!("intruder");
            lease["spec"]["renewTime"] = json!(k8s_openapi::jiff::Timestamp::now().to_string());
            lease
        };
        api.apply(api_lease());
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                api.apply(api_lease());
            }
        }
    };
    let check = async {
        let mut leading = a.leading.clone();
        tokio::time::timeout(Duration::from_secs(5), leading.wait_for(|l| !*l))
            .await
            .context("a kept leading after losing the Lease")??;
        let writes = status_writes(&a);
        let recorded = api.recorded().len();
        // Changes that would need status writes: none may come.
        api.apply(mk_policy("canary", split_spec("ratings")));
        api.apply(mk_policy("second", split_spec("reviews")));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            status_writes(&a),
            writes,
            "status written after the Lease was lost"
        );
        let status_paths: Vec<_> = api.recorded()[recorded..]
            .iter()
            .filter(|r| r.path.contains("/status"))
            .map(|r| r.path.clone())
            .collect();
        assert!(status_paths.is_empty(), "{status_paths:?}");
        anyhow::Ok(())
    };
    tokio::select! {
        r = check => r?,
        _ = intruder => unreachable!(),
    }
    a.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_failures_are_retried_and_a_relist_catches_up_with_deletes() -> Result<()> {
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

    // History lost (as after an etcd compaction): the watcher must relist, and a delete
    // it never saw as an event must still reach the index.
    api.compact();
    api.break_watches();
    api.delete(SERVICES, NS, "ratings");
    api.compact();
    eventually(
        "the Service deleted while no watch was open",
        DEADLINE,
        || async { (services(&plane) == ["details", "reviews"]).then_some(()) },
    )
    .await?;
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

async fn ready(admin: std::net::SocketAddr) -> bool {
    reqwest::get(format!("http://{admin}/readyz"))
        .await
        .is_ok_and(|r| r.status().is_success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_processes_elect_one_leader_survive_a_kill_and_release_on_sigterm() -> Result<()> {
    let bin = weir_tests::workspace_binary("weir-operator")?;
    let scratch = weir_tests::scratch_dir("kube-processes");
    let api = FakeApi::start().await?;
    api.apply(mk_service("reviews", "10.96.0.10", 9080));
    api.apply(mk_policy("canary", split_spec("reviews")));

    let mut a = api.spawn_operator(&bin, "weir-a", &scratch)?;
    eventually("weir-a leads", DEADLINE, || async {
        (api.lease_holder().as_deref() == Some("weir-a")).then_some(())
    })
    .await?;
    let mut b = api.spawn_operator(&bin, "weir-b", &scratch)?;
    eventually(
        "both replicas ready (listed every kind)",
        DEADLINE,
        || async { (ready(a.admin).await && ready(b.admin).await).then_some(()) },
    )
    .await?;
    wait_condition(&api, "canary", "Accepted", "True", "Accepted").await?;
    // Both serve xDS; b follows as long as a renews.
    for _ in 0..10 {
        assert_eq!(api.lease_holder().as_deref(), Some("weir-a"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Killed: no release, so b waits for the Lease to expire, then takes it.
    a.child.start_kill()?;
    a.child.wait().await?;
    let killed = Instant::now();
    eventually("weir-b takes over", DEADLINE, || async {
        (api.lease_holder().as_deref() == Some("weir-b")).then_some(())
    })
    .await?;
    let takeover = killed.elapsed();
    eprintln!("takeover after SIGKILL: {takeover:?} (lease duration 2 s)");
    api.apply(mk_policy("canary", split_spec("details")));
    wait_condition(&api, "canary", "ResolvedRefs", "False", "TargetNotFound").await?;

    // SIGTERM: a clean exit that gives the Lease up.
    let pid = b.child.id().context("b has no pid")?;
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    let status = tokio::time::timeout(DEADLINE, b.child.wait()).await??;
    assert!(status.success(), "weir-b exited with {status}");
    assert_eq!(api.lease_holder(), None, "the Lease was not released");
    Ok(())
}

/// RBAC rules of a ClusterRole or Role manifest.
fn rules(file: &str) -> Result<Vec<serde_yaml::Value>> {
    let path = weir_tests::workspace_root().join("config/rbac").join(file);
    let role: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(&path)?)?;
    Ok(role["rules"].as_sequence().context("no rules")?.clone())
}

fn allows(
    rules: &[serde_yaml::Value],
    verb: &str,
    group: &str,
    resource: &str,
    name: Option<&str>,
) -> bool {
    let has = |v: &serde_yaml::Value, key: &str, want: &str| {
        v[key]
            .as_sequence()
            .is_some_and(|s| s.iter().any(|x| x.as_str() == Some(want)))
    };
    rules.iter().any(|r| {
        has(r, "verbs", verb)
            && has(r, "apiGroups", group)
            && has(r, "resources", resource)
            && (r["resourceNames"].is_null() || name.is_some_and(|n| has(r, "resourceNames", n)))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_the_operator_makes_is_allowed_by_the_shipped_rbac() -> Result<()> {
    let cluster = rules("cluster_role.yaml")?;
    let lease = rules("leader_election_role.yaml")?;
    let text = serde_yaml::to_string(&cluster)? + &serde_yaml::to_string(&lease)?;
    assert!(!text.contains('*'), "wildcards in the RBAC rules");

    let api = FakeApi::start().await?;
    api.apply(mk_service("reviews", "10.96.0.10", 9080));
    let plane = start_operator(&api, "weir-a").await?;
    wait_leading(&plane).await?;
    // Every kind of write: policy status, an Event, MeshStatus creation and status.
    let mut bad = split_spec("reviews");
    bad["http"][0]["destinations"][0]["weight"] = json!(10);
    api.apply(mk_policy("bad", bad));
    wait_condition(&api, "bad", "Accepted", "False", "InvalidWeights").await?;
    eventually("an Event", DEADLINE, || async {
        (!events_for(&api, "bad").is_empty()).then_some(())
    })
    .await?;
    eventually("MeshStatus status", DEADLINE, || async {
        api.get(MESH_STATUSES, "", "mesh")
            .filter(|m| m["status"]["policiesRejected"] == 1)
    })
    .await?;
    plane.stop().await;

    let mut denied = Vec::new();
    for request in api.recorded() {
        let (verb, group, resource, namespace, name) = request
            .authorization()
            .with_context(|| format!("unroutable request {}", request.path))?;
        let ok = if group == "coordination.k8s.io" {
            namespace == "weir-system" && allows(&lease, &verb, &group, &resource, name.as_deref())
        } else {
            allows(&cluster, &verb, &group, &resource, name.as_deref())
        };
        if !ok {
            denied.push(format!(
                "{verb} {group}/{resource} {namespace}/{}",
                name.unwrap_or_default()
            ));
        }
    }
    denied.dedup();
    assert!(denied.is_empty(), "the shipped RBAC denies: {denied:#?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_real_envoy_a_policy_from_the_api_routes_traffic_and_is_programmed() -> Result<()> {
    use weir_tests::{endpoint_yaml, service_yaml, split_policy_yaml, Backend, Envoy};
    let api = FakeApi::start().await?;
    api.apply_yaml(&service_yaml(NS, "reviews", "10.96.0.10", 9080))?;
    let v1 = Backend::start("reviews-v1", Default::default()).await?;
    let v2 = Backend::start("reviews-v2", Default::default()).await?;
    for (backend, version) in [(&v1, "v1"), (&v2, "v2")] {
        let labels = [("app", "reviews"), ("version", version)];
        api.apply_yaml(&endpoint_yaml(
            NS,
            "reviews",
            &backend.name,
            &labels,
            backend.addr,
            true,
        ))?;
    }
    let mut policy = split_policy_yaml("reviews", "reviews", &[("v1", 0), ("v2", 100)]);
    policy = policy.replace("namespace: default", &format!("namespace: {NS}"));
    api.apply_yaml(&policy)?;
    let plane = start_operator(&api, "weir-a").await?;
    wait_condition(&api, "reviews", "Programmed", "False", "NoProxies").await?;

    let envoy = Envoy::start(
        "web-1.shop",
        plane.xds_addr,
        weir_core::bootstrap::XdsProtocol::Delta,
    )
    .await?;
    envoy.wait_all_on("reviews.shop", "reviews-v2").await?;
    let message = wait_condition(&api, "reviews", "Programmed", "True", "Programmed").await?;
    assert!(
        message.contains("ACKed by every connected proxy"),
        "{message}"
    );

    // An edit through the API reaches the same Envoy.
    api.apply_yaml(
        &split_policy_yaml("reviews", "reviews", &[("v1", 100), ("v2", 0)])
            .replace("namespace: default", &format!("namespace: {NS}")),
    )?;
    envoy.wait_all_on("reviews.shop", "reviews-v1").await?;

    // A graceful stop closes the stream; Envoy keeps its last config and keeps routing.
    plane.stop().await;
    let counts = envoy.send(20, "reviews.shop", "/", &[]).await?;
    assert_eq!(counts.get("reviews-v1"), Some(&20), "{counts:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_means_the_initial_state_is_translated() -> Result<()> {
    let api = FakeApi::start().await?;
    for i in 0..3000 {
        api.apply(mk_service(
            &format!("svc{i}"),
            &format!("10.96.{}.{}", i / 256, i % 256),
            8080,
        ));
    }
    let plane = start_operator(&api, "weir-a").await?;
    eventually("/readyz", DEADLINE, || async {
        ready(plane.admin_addr).await.then_some(())
    })
    .await?;
    // Not eventually: the moment it is ready, everything listed is in the index.
    assert_eq!(plane.state.keys(weir_core::Kind::Service).len(), 3000);
    plane.stop().await;
    Ok(())
}
