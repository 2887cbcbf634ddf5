//! The operator against a real kube-apiserver (etcd, kube-apiserver, kube-controller-manager
//! and kubectl built from Go modules; `weir_tests::kube`), authenticated as the
//! `weir-operator` ServiceAccount of config/ with a token from the TokenRequest API, so the
//! shipped RBAC is enforced for real.
//!
//! One operator runs at a time (they share the Lease `weir-system/weir-operator` and write
//! status for every namespace); each test works in namespaces of its own and deletes its
//! policies before it lets the next operator run.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use weir_core::mesh::MESH_NAMESPACE;
use weir_core::testing;
use weir_operator::ControlPlane;
use weir_tests::kube::{
    can_run, installed, operator_slot, start_operator_as, wait_leading, Cluster, CuttableProxy,
};
use weir_tests::{eventually, policy_json, service_json, split_spec_json, to_json, DEADLINE};

/// A kubeconfig for ServiceAccount `sa` of weir-system (a TokenRequest token), optionally
/// through `server` (a proxy).
fn service_account_kubeconfig(
    cluster: &Cluster,
    sa: &str,
    server: Option<&str>,
) -> Result<std::path::PathBuf> {
    let token = cluster.token(MESH_NAMESPACE, sa, None)?;
    cluster.token_kubeconfig(&format!("{sa}-{}", std::process::id()), &token, server)
}

fn namespace(cluster: &Cluster, name: &str) -> Result<()> {
    cluster.apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))
}

/// Deletes a test's policies now (MeshStatus counts every namespace's) and its namespace
/// in the background.
fn clean_namespace(cluster: &Cluster, ns: &str) {
    let _ = cluster.kubectl(&["delete", "trafficpolicy", "--all", "-n", ns, "--wait=true"]);
    let _ = cluster.kubectl(&["delete", "namespace", ns, "--wait=false"]);
}

fn get(cluster: &Cluster, args: &[&str]) -> Option<Value> {
    cluster.kubectl_json(args).ok()
}

/// The condition of a policy, once its status describes the policy's generation.
fn condition(cluster: &Cluster, ns: &str, policy: &str, type_: &str) -> Option<Value> {
    let object = get(cluster, &["get", "trafficpolicy", policy, "-n", ns])?;
    weir_e2e::condition(&object, type_)
}

/// Waits until the policy's condition has `status` and `reason`; returns its message.
async fn wait_condition(
    cluster: &Cluster,
    ns: &str,
    policy: &str,
    type_: &str,
    status: &str,
    reason: &str,
) -> Result<String> {
    weir_tests::wait_condition(&format!("{ns}/{policy} {type_}"), status, reason, || {
        condition(cluster, ns, policy, type_)
    })
    .await
}

fn lease_holder(cluster: &Cluster) -> Option<String> {
    let lease = get(
        cluster,
        &["get", "lease", "weir-operator", "-n", MESH_NAMESPACE],
    )?;
    lease["spec"]["holderIdentity"].as_str().map(str::to_string)
}

#[test]
fn the_install_and_the_api_contract_hold_on_a_real_api_server() -> Result<()> {
    if !can_run("the_install_and_the_api_contract_hold_on_a_real_api_server") {
        return Ok(());
    }
    let cluster = installed();

    // The Deployment's pods are admitted under the namespace's restricted Pod Security
    // level (the ReplicaSet would report FailedCreate otherwise).
    let pods = cluster.poll("the operator's 2 pods", || {
        let pods = get(
            cluster,
            &[
                "get",
                "pods",
                "-n",
                MESH_NAMESPACE,
                "-l",
                "app.kubernetes.io/component=operator",
            ],
        )?;
        let n = pods["items"].as_array()?.len();
        (n == 2).then_some(n)
    })?;
    assert_eq!(pods, 2);

    // kubectl explain shows our descriptions.
    let explain = cluster.kubectl(&["explain", "trafficpolicy.spec.http"])?;
    assert!(
        explain.contains("Ordered HTTP rules for HTTP, HTTP/2 and gRPC ports"),
        "{explain}"
    );
    let explain = cluster.kubectl(&["explain", "trafficpolicy.spec.tcp.sniHosts"])?;
    assert!(explain.contains("TLS server names (SNI)"), "{explain}");

    // Every sample is accepted by the real server's strict decoding and validation.
    let samples = weir_tests::workspace_root().join("config/samples");
    for entry in std::fs::read_dir(&samples)? {
        let path = entry?.path();
        let file = path.to_string_lossy().into_owned();
        let args = ["apply", "--dry-run=server", "-f", &file];
        // The e2e test applies the same samples for real meanwhile: kubectl apply reads an
        // object, finds none, and the dry-run create meets the one just made. Once more
        // then (apply patches what exists); any other refusal fails at once.
        let dry_run = match cluster.kubectl(&args) {
            Err(err) if format!("{err:#}").contains("AlreadyExists") => cluster.kubectl(&args),
            other => other,
        };
        dry_run.with_context(|| format!("{file} is refused by the API server"))?;
    }

    // Each CEL rule refuses what it should, with our message.
    let dests = |ws: &[u32]| -> Value {
        json!(ws
            .iter()
            .map(|w| json!({"subset": "v1", "weight": w}))
            .collect::<Vec<_>>())
    };
    let subsets = json!([{"name": "v1", "labels": {"version": "v1"}}]);
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "weights 70/20",
            json!({"targetRef": {"service": "s"}, "subsets": subsets, "http": [{"destinations": dests(&[70, 20])}]}),
            "destination weights must sum to 100",
        ),
        (
            "a single weight of 50",
            json!({"targetRef": {"service": "s"}, "subsets": subsets, "http": [{"destinations": dests(&[50])}]}),
            "destination weights must sum to 100",
        ),
        (
            "tcp weights 60/30",
            json!({"targetRef": {"service": "s"}, "subsets": subsets, "tcp": [{"destinations": dests(&[60, 30])}]}),
            "destination weights must sum to 100",
        ),
        (
            "subset and service",
            json!({"targetRef": {"service": "s"}, "subsets": subsets, "http": [{"destinations": [{"subset": "v1", "service": "x"}]}]}),
            "set subset (of the target Service) or service (another Service), not both",
        ),
        (
            "a relative path",
            json!({"targetRef": {"service": "s"}, "http": [{"matches": [{"path": {"type": "Prefix", "value": "api"}}], "destinations": [{}]}]}),
            "an Exact or Prefix path must start with '/'",
        ),
        (
            "Present with a value",
            json!({"targetRef": {"service": "s"}, "http": [{"matches": [{"headers": [{"name": "x", "type": "Present", "value": "y"}]}], "destinations": [{}]}]}),
            "value is required, except with type Present where it must be omitted",
        ),
        (
            "a subset named twice",
            json!({"targetRef": {"service": "s"}, "subsets": [{"name": "v1", "labels": {"a": "b"}}, {"name": "v1", "labels": {"a": "c"}}]}),
            "subset names must be unique",
        ),
        (
            "a subset without labels",
            json!({"targetRef": {"service": "s"}, "subsets": [{"name": "v1", "labels": {}}]}),
            "a subset needs at least one label",
        ),
        (
            "grpc and path",
            json!({"targetRef": {"service": "s"}, "http": [{"matches": [{"path": {"type": "Exact", "value": "/x"}, "grpc": {"service": "a.B"}}], "destinations": [{}]}]}),
            "grpc and path both match the path",
        ),
        (
            "an empty grpc match",
            json!({"targetRef": {"service": "s"}, "http": [{"matches": [{"grpc": {}}], "destinations": [{}]}]}),
            "name a service, a method, or both",
        ),
        (
            "RingHash without a key",
            json!({"targetRef": {"service": "s"}, "loadBalancer": {"algorithm": "RingHash"}}),
            "RingHash and Maglev need consistentHash",
        ),
        (
            "two hash keys",
            json!({"targetRef": {"service": "s"}, "loadBalancer": {"algorithm": "Maglev", "consistentHash": {"header": "x-user", "sourceIp": true}}}),
            "hash by exactly one of header, cookie, sourceIp or queryParameter",
        ),
        (
            "an outlier detection that ejects nothing",
            json!({"targetRef": {"service": "s"}, "outlierDetection": {"interval": "5s"}}),
            "set consecutiveErrors (any 5xx), consecutiveGatewayErrors (502, 503, 504), or both",
        ),
        (
            "an HTTP and a gRPC abort",
            json!({"targetRef": {"service": "s"}, "http": [{"destinations": [{}], "fault": {"abort": {"httpStatus": 503, "grpcStatus": 14, "percent": 10}}}]}),
            "set httpStatus or grpcStatus, not both",
        ),
        (
            "an empty fault",
            json!({"targetRef": {"service": "s"}, "http": [{"destinations": [{}], "fault": {}}]}),
            "set delay, abort, or both",
        ),
        (
            "a mirror to nowhere",
            json!({"targetRef": {"service": "s"}, "http": [{"destinations": [{}], "mirror": {"percent": 10}}]}),
            "set subset (of the target Service) or service (another Service in the policy's namespace), one of them",
        ),
    ];
    for (what, spec, message) in cases {
        let policy = policy_json("default", "cel-check", spec);
        match cluster.kubectl_stdin(
            &["apply", "--dry-run=server", "-f", "-"],
            &policy.to_string(),
        ) {
            Err(err) => assert!(err.to_string().contains(message), "{what}: {err:#}"),
            Ok(out) => bail!("{what} was accepted by the API server: {out}"),
        }
    }

    // Printer columns, as the README shows them.
    namespace(cluster, "columns")?;
    cluster.apply(&policy_json(
        "columns",
        "reviews",
        split_spec_json("reviews"),
    ))?;
    let table = cluster.kubectl(&["get", "trafficpolicy", "-n", "columns"])?;
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "TARGET", "ACCEPTED", "PROGRAMMED", "AGE"],
        "{table}"
    );
    clean_namespace(cluster, "columns");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_e2e_scenarios_pass_with_the_operator_running_as_its_service_account() -> Result<()> {
    if !can_run("the_e2e_scenarios_pass_with_the_operator_running_as_its_service_account") {
        return Ok(());
    }
    let cluster = installed();
    let _slot = operator_slot().await;
    let plane = start_operator_as(cluster, "weir-operator", "weir-e2e", None).await?;
    wait_leading(&plane, DEADLINE).await?;
    assert_eq!(lease_holder(cluster).as_deref(), Some("weir-e2e"));
    let k = cluster.kubectl_client();
    let scenarios = tokio::task::spawn_blocking(move || -> Result<String> {
        weir_e2e::samples_accepted(&k)?;
        weir_e2e::cel_refuses_weights(&k)?;
        weir_e2e::unknown_subset(&k)?;
        weir_e2e::meshstatus_columns(&k)
    })
    .await?;
    let result = scenarios.and_then(|table| {
        // Status is owned by one field manager, written by server-side apply.
        let policy = cluster.kubectl_json(&[
            "get",
            "trafficpolicy",
            "reviews",
            "-n",
            "default",
            "--show-managed-fields",
        ])?;
        let managers: Vec<&str> = policy["metadata"]["managedFields"]
            .as_array()
            .context("no managedFields")?
            .iter()
            .filter(|m| m["subresource"] == "status")
            .filter_map(|m| m["manager"].as_str())
            .collect();
        assert_eq!(managers, ["weir-operator"], "{policy}");
        let operation: Vec<&str> = policy["metadata"]["managedFields"]
            .as_array()
            .context("no managedFields")?
            .iter()
            .filter(|m| m["subresource"] == "status")
            .filter_map(|m| m["operation"].as_str())
            .collect();
        assert_eq!(operation, ["Apply"]);
        Ok(table)
    });
    plane.stop().await;
    weir_e2e::cleanup_samples(&cluster.kubectl_client());
    let table = result?;
    println!("{table}");
    // A graceful stop gives the Lease up.
    assert_eq!(lease_holder(cluster).unwrap_or_default(), "");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_conditions_reach_the_api_with_reasons_fields_and_events() -> Result<()> {
    if !can_run("policy_conditions_reach_the_api_with_reasons_fields_and_events") {
        return Ok(());
    }
    let cluster = installed();
    let _slot = operator_slot().await;
    let ns = "conditions";
    namespace(cluster, ns)?;
    cluster.apply(&service_json(ns, "reviews", "10.96.10.10", 9080))?;
    cluster.apply(&service_json(ns, "ratings", "10.96.10.11", 9080))?;
    let plane = start_operator_as(cluster, "weir-operator", "weir-conditions", None).await?;
    wait_leading(&plane, DEADLINE).await?;
    let result = async {
        cluster.apply(&policy_json(ns, "canary", split_spec_json("reviews")))?;
        wait_condition(cluster, ns, "canary", "Accepted", "True", "Accepted").await?;
        wait_condition(cluster, ns, "canary", "ResolvedRefs", "True", "ResolvedRefs").await?;
        let programmed = wait_condition(cluster, ns, "canary", "Programmed", "False", "NoProxies").await?;
        assert!(programmed.contains("No proxy"), "{programmed}");
        let accepted = condition(cluster, ns, "canary", "Accepted").context("Accepted")?;
        assert_eq!(accepted["observedGeneration"], 1);

        // What the API server cannot check: the operator rejects it, with the field, the
        // fix, and a Warning Event.
        let cases = [
            ("subset", json!({"targetRef": {"service": "ratings"}, "subsets": [{"name": "v1", "labels": {"version": "v1"}}], "http": [{"destinations": [{"subset": "v3"}]}]}), "UnknownSubset", "v3"),
            ("regex", json!({"targetRef": {"service": "ratings", "port": 9080}, "http": [{"matches": [{"path": {"type": "RegularExpression", "value": "/api/(v1"}}], "destinations": [{}]}]}), "InvalidRegex", "spec.http[0].matches[0].path"),
            ("grpc-name", json!({"targetRef": {"service": "ratings"}, "http": [{"matches": [{"grpc": {"service": "shop/v1"}}], "destinations": [{}]}]}), "InvalidField", "spec.http[0].matches[0].grpc.service"),
        ];
        for (name, spec, reason, field) in cases {
            cluster.apply(&policy_json(ns, name, spec))?;
            let message = wait_condition(cluster, ns, name, "Accepted", "False", reason).await?;
            assert!(message.contains(field), "{name}: {message}");
            let event = eventually(&format!("a Warning Event for {name}"), DEADLINE, || async {
                let events = get(cluster, &["get", "events.events.k8s.io", "-n", ns, "--field-selector", &format!("regarding.name={name}")])?;
                events["items"].as_array()?.iter().find(|e| e["reason"] == reason).cloned()
            })
            .await?;
            assert_eq!(event["type"], "Warning");
            assert_eq!(event["reportingController"], "weir-operator");
            assert_eq!(event["regarding"]["kind"], "TrafficPolicy");
            cluster.kubectl(&["delete", "trafficpolicy", name, "-n", ns])?;
        }

        // Unresolved references: a destination Service that does not exist.
        cluster.apply(&policy_json(ns, "backend", json!({"targetRef": {"service": "ratings"}, "http": [{"destinations": [{"service": "ratings-v9"}]}]})))?;
        let message = wait_condition(cluster, ns, "backend", "ResolvedRefs", "False", "BackendNotFound").await?;
        assert!(message.contains("spec.http[0].destinations[0].service"), "{message}");

        // The target goes away and comes back.
        cluster.kubectl(&["delete", "service", "reviews", "-n", ns])?;
        let message = wait_condition(cluster, ns, "canary", "ResolvedRefs", "False", "TargetNotFound").await?;
        assert!(message.contains(&format!("{ns}/reviews")), "{message}");
        cluster.apply(&service_json(ns, "reviews", "10.96.10.10", 9080))?;
        wait_condition(cluster, ns, "canary", "ResolvedRefs", "True", "ResolvedRefs").await?;

        // An edit that keeps Accepted=True keeps its lastTransitionTime, at generation 2.
        let since = accepted["lastTransitionTime"].as_str().unwrap_or_default().to_string();
        weir_tests::kube::next_second_after(&since).await;
        let mut spec = split_spec_json("reviews");
        spec["http"][0]["destinations"][0]["weight"] = json!(50);
        spec["http"][0]["destinations"][1]["weight"] = json!(50);
        cluster.apply(&policy_json(ns, "canary", spec))?;
        let after = eventually("canary's status at generation 2", DEADLINE, || async {
            condition(cluster, ns, "canary", "Accepted").filter(|c| c["observedGeneration"] == 2)
        })
        .await?;
        assert_eq!(after["lastTransitionTime"].as_str(), Some(since.as_str()));

        // Of two policies on one port the older wins, whatever their names.
        let first = cluster.kubectl_json(&["get", "trafficpolicy", "canary", "-n", ns])?;
        weir_tests::kube::next_second_after(first["metadata"]["creationTimestamp"].as_str().unwrap_or_default()).await;
        cluster.apply(&policy_json(ns, "aa-second", split_spec_json("reviews")))?;
        let message = wait_condition(cluster, ns, "aa-second", "Accepted", "False", "Conflicted").await?;
        assert!(message.contains(&format!("{ns}/canary")) && message.contains("9080"), "{message}");
        cluster.kubectl(&["delete", "trafficpolicy", "canary", "-n", ns])?;
        wait_condition(cluster, ns, "aa-second", "Accepted", "True", "Accepted").await?;
        anyhow::Ok(())
    }
    .await;
    plane.stop().await;
    clean_namespace(cluster, ns);
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_rbac_rule_is_refused_by_the_api_server_and_counted() -> Result<()> {
    if !can_run("a_missing_rbac_rule_is_refused_by_the_api_server_and_counted") {
        return Ok(());
    }
    let cluster = installed();
    let _slot = operator_slot().await;
    // The shipped ClusterRole without one rule (status writes of TrafficPolicies), bound
    // to a second ServiceAccount that also gets the shipped Lease Role.
    let role_file = weir_tests::workspace_root().join("config/rbac/cluster_role.yaml");
    let mut role: Value = serde_saphyr::from_str(&std::fs::read_to_string(role_file)?)?;
    let rules = role["rules"].as_array_mut().context("rules")?;
    let before = rules.len();
    rules.retain(|r| {
        !r["resources"]
            .as_array()
            .is_some_and(|rs| rs.iter().any(|x| x == "trafficpolicies/status"))
    });
    assert_eq!(
        rules.len(),
        before - 1,
        "the shipped role grants trafficpolicies/status"
    );
    role["metadata"]["name"] = json!("weir-operator-minus-status");
    cluster.apply(&role)?;
    cluster
        .kubectl(&[
            "create",
            "serviceaccount",
            "weir-operator-minus",
            "-n",
            MESH_NAMESPACE,
        ])
        .ok();
    cluster.apply(&json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "weir-operator-minus-status"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "weir-operator-minus-status"},
        "subjects": [{"kind": "ServiceAccount", "name": "weir-operator-minus", "namespace": MESH_NAMESPACE}]}),
    )?;
    cluster.apply(&json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "weir-operator-minus-lease", "namespace": MESH_NAMESPACE},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "weir-operator-leader-election"},
        "subjects": [{"kind": "ServiceAccount", "name": "weir-operator-minus", "namespace": MESH_NAMESPACE}]}),
    )?;

    let ns = "rbac";
    namespace(cluster, ns)?;
    cluster.apply(&service_json(ns, "reviews", "10.96.11.10", 9080))?;
    cluster.apply(&policy_json(ns, "canary", split_spec_json("reviews")))?;
    let plane = start_operator_as(cluster, "weir-operator-minus", "weir-rbac", None).await?;
    let result = async {
        wait_leading(&plane, DEADLINE).await?;
        // The rest of its work is allowed (it lists, watches, leads); the status write is
        // refused, counted, and never lands.
        eventually("a refused status write", DEADLINE, || async {
            (plane.state.metrics.status_write_errors.get() > 0).then_some(())
        })
        .await?;
        assert!(
            condition(cluster, ns, "canary", "Accepted").is_none(),
            "status written without the rule"
        );
        let can = cluster.kubectl(&[
            "auth",
            "can-i",
            "patch",
            "trafficpolicies.weir.dev",
            "--subresource=status",
            "-n",
            ns,
            "--as=system:serviceaccount:weir-system:weir-operator-minus",
        ]);
        assert!(can.is_err(), "kubectl auth can-i says yes: {can:?}");
        anyhow::Ok(())
    }
    .await;
    plane.stop().await;
    clean_namespace(cluster, ns);
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_status_is_written_at_most_once_a_second_under_a_burst_of_500_policies() -> Result<()>
{
    if !can_run("mesh_status_is_written_at_most_once_a_second_under_a_burst_of_500_policies") {
        return Ok(());
    }
    let cluster = installed();
    let _slot = operator_slot().await;
    let ns = "burst";
    namespace(cluster, ns)?;
    let plane = start_operator_as(cluster, "weir-operator", "weir-burst", None).await?;
    let result = async {
        wait_leading(&plane, DEADLINE).await?;
        eventually("MeshStatus mesh", DEADLINE, || async {
            get(cluster, &["get", "meshstatus", "mesh"])
        })
        .await?;
        let before = plane.state.metrics.mesh_status_writes.get();
        let started = Instant::now();
        let items: Vec<Value> = (0..500)
            .map(|i| policy_json(ns, &format!("p{i:03}"), split_spec_json(&format!("svc{i}"))))
            .collect();
        let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
        cluster.kubectl_stdin(&["apply", "-f", "-"], &list.to_string())?;
        let status = eventually("MeshStatus counts all 500 policies", DEADLINE, || async {
            let mesh = get(cluster, &["get", "meshstatus", "mesh"])?;
            (mesh["status"]["policiesAccepted"] == 500).then_some(mesh["status"].clone())
        })
        .await?;
        let elapsed = started.elapsed();
        let writes = plane.state.metrics.mesh_status_writes.get() - before;
        assert_eq!(status["policiesRejected"], 0);
        let allowed = elapsed.as_secs() + 2;
        println!("{writes} MeshStatus writes in {elapsed:?}");
        assert!(
            writes >= 1 && writes <= allowed,
            "{writes} MeshStatus writes in {elapsed:?} (at most {allowed})"
        );
        anyhow::Ok(())
    }
    .await;
    plane.stop().await;
    clean_namespace(cluster, ns);
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_writes_a_lost_lease_stops_writes_and_a_stop_hands_over() -> Result<()> {
    if !can_run("only_the_leader_writes_a_lost_lease_stops_writes_and_a_stop_hands_over") {
        return Ok(());
    }
    let cluster = installed();
    let _slot = operator_slot().await;
    let ns = "leaders";
    namespace(cluster, ns)?;
    cluster.apply(&service_json(ns, "reviews", "10.96.12.10", 9080))?;
    let a = start_operator_as(cluster, "weir-operator", "weir-a", None).await?;
    wait_leading(&a, DEADLINE).await?;
    let b = start_operator_as(cluster, "weir-operator", "weir-b", None).await?;
    let result = async {
        eventually("b synced", DEADLINE, || async { b.state.is_synced().then_some(()) }).await?;
        cluster.apply(&policy_json(ns, "canary", split_spec_json("reviews")))?;
        wait_condition(cluster, ns, "canary", "Accepted", "True", "Accepted").await?;
        assert!(*a.leading.borrow() && !*b.leading.borrow());
        assert!(a.state.metrics.status_writes.get() > 0);
        assert_eq!(b.state.metrics.status_writes.get(), 0, "a follower wrote status");

        // A graceful stop releases the Lease: b takes over well before it would expire.
        let stopped = Instant::now();
        a.stop().await;
        wait_leading(&b, DEADLINE).await?;
        let takeover = stopped.elapsed();
        println!("takeover after a graceful stop: {takeover:?} (lease 2 s)");
        cluster.apply(&policy_json(ns, "canary", split_spec_json("ratings")))?;
        wait_condition(cluster, ns, "canary", "ResolvedRefs", "False", "TargetNotFound").await?;
        let lease = cluster.kubectl_json(&["get", "lease", "weir-operator", "-n", MESH_NAMESPACE])?;
        assert_eq!(lease["spec"]["holderIdentity"], "weir-b");

        // Someone else takes the Lease and keeps it: b stops writing at once.
        let intruder = |cluster: &Cluster| {
            // MicroTime: the API server wants exactly six fractional digits.
            let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(k8s_openapi::jiff::Timestamp::now());
            let patch = json!({"spec": {"holderIdentity": "intruder", "renewTime": now, "leaseDurationSeconds": 60}});
            cluster.kubectl(&["patch", "lease", "weir-operator", "-n", MESH_NAMESPACE, "--type=merge", "-p", &patch.to_string()])
        };
        intruder(cluster)?;
        let mut leading = b.leading.clone();
        tokio::time::timeout(Duration::from_secs(10), leading.wait_for(|l| !*l))
            .await
            .context("b kept leading after losing the Lease")??;
        let writes = b.state.metrics.status_writes.get();
        cluster.apply(&policy_json(ns, "canary", split_spec_json("reviews")))?;
        // An absence has to be observed over time: two seconds with changes to write.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(b.state.metrics.status_writes.get(), writes, "status written after the Lease was lost");
        anyhow::Ok(())
    }
    .await;
    b.stop().await;
    // Leave the Lease free for the next test.
    let _ = cluster.kubectl(&["delete", "lease", "weir-operator", "-n", MESH_NAMESPACE]);
    clean_namespace(cluster, ns);
    result
}

async fn ready(admin: SocketAddr) -> bool {
    reqwest::get(format!("http://{admin}/readyz"))
        .await
        .is_ok_and(|r| r.status().is_success())
}

fn spawn_operator(cluster: &Cluster, identity: &str) -> Result<weir_tests::kube::OperatorProcess> {
    let kubeconfig = service_account_kubeconfig(cluster, "weir-operator", None)?;
    weir_tests::kube::spawn_operator(&kubeconfig, identity, &cluster.dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_processes_elect_one_leader_survive_a_kill_and_release_on_sigterm() -> Result<()> {
    if !can_run("operator_processes_elect_one_leader_survive_a_kill_and_release_on_sigterm") {
        return Ok(());
    }
    let cluster = installed();
    let _slot = operator_slot().await;
    let ns = "processes";
    namespace(cluster, ns)?;
    cluster.apply(&service_json(ns, "reviews", "10.96.13.10", 9080))?;
    cluster.apply(&policy_json(ns, "canary", split_spec_json("reviews")))?;
    let result = async {
        let mut a = spawn_operator(cluster, "weir-pa")?;
        eventually("weir-pa leads", DEADLINE, || async {
            (lease_holder(cluster).as_deref() == Some("weir-pa")).then_some(())
        })
        .await?;
        let mut b = spawn_operator(cluster, "weir-pb")?;
        eventually("both replicas ready", DEADLINE, || async {
            (ready(a.admin).await && ready(b.admin).await).then_some(())
        })
        .await?;
        wait_condition(cluster, ns, "canary", "Accepted", "True", "Accepted").await?;

        // Killed: no release, so b waits for the Lease to expire, then takes it.
        a.child.start_kill()?;
        a.child.wait().await?;
        let killed = Instant::now();
        eventually("weir-pb takes over", DEADLINE, || async {
            (lease_holder(cluster).as_deref() == Some("weir-pb")).then_some(())
        })
        .await?;
        println!(
            "takeover after SIGKILL: {:?} (lease duration 2 s)",
            killed.elapsed()
        );
        cluster.apply(&policy_json(ns, "canary", split_spec_json("details")))?;
        wait_condition(
            cluster,
            ns,
            "canary",
            "ResolvedRefs",
            "False",
            "TargetNotFound",
        )
        .await?;

        // SIGTERM: a clean exit that gives the Lease up.
        let pid = b.child.id().context("b has no pid")?;
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        let status = tokio::time::timeout(DEADLINE, b.child.wait()).await??;
        assert!(status.success(), "weir-pb exited with {status}");
        assert_eq!(
            lease_holder(cluster).unwrap_or_default(),
            "",
            "the Lease was not released"
        );
        anyhow::Ok(())
    }
    .await;
    clean_namespace(cluster, ns);
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_restart_and_etcd_compaction_end_in_a_relist_that_catches_up() -> Result<()> {
    if !can_run("an_api_server_restart_and_etcd_compaction_end_in_a_relist_that_catches_up") {
        return Ok(());
    }
    let cluster = installed();
    let _slot = operator_slot().await;
    let ns = "relist";
    namespace(cluster, ns)?;
    cluster.apply(&service_json(ns, "reviews", "10.96.14.10", 9080))?;
    cluster.apply(&service_json(ns, "ratings", "10.96.14.11", 9080))?;
    let proxy = CuttableProxy::start(cluster.addr).await?;
    let server = format!("https://{}", proxy.addr);
    let plane = start_operator_as(cluster, "weir-operator", "weir-relist", Some(&server)).await?;
    let services = |plane: &ControlPlane| {
        let mut keys: Vec<String> = plane
            .state
            .keys(weir_core::Kind::Service)
            .into_iter()
            .filter(|k| k.namespace == ns)
            .map(|k| k.name)
            .collect();
        keys.sort();
        keys
    };
    let result = async {
        eventually("both Services", DEADLINE, || async {
            (services(&plane) == ["ratings", "reviews"]).then_some(())
        })
        .await?;
        // The operator loses the API server; meanwhile a Service goes and another comes,
        // the API server restarts and etcd's history is compacted past the operator's
        // resourceVersion: its watches must end in 410 Gone and a relist.
        proxy.cut();
        cluster.kubectl(&["delete", "service", "ratings", "-n", ns])?;
        cluster.apply(&service_json(ns, "details", "10.96.14.12", 9080))?;
        cluster.restart_apiserver()?;
        for i in 0..3 {
            cluster.apply(&service_json(
                ns,
                &format!("churn{i}"),
                &format!("10.96.14.2{i}"),
                9080,
            ))?;
            cluster.kubectl(&["delete", "service", &format!("churn{i}"), "-n", ns])?;
        }
        cluster.compact_etcd()?;
        proxy.restore();
        // The watchers back off exponentially while the API is gone (kube-runtime's default,
        // up to 30 s between attempts), so the relist may take that long to start.
        let restored = Instant::now();
        eventually("the relist", Duration::from_secs(90), || async {
            (services(&plane) == ["details", "reviews"]).then_some(())
        })
        .await?;
        println!("caught up {:?} after the API came back", restored.elapsed());
        assert!(
            plane.state.metrics.watch_errors.get() >= 1,
            "the outage was seen"
        );
        anyhow::Ok(())
    }
    .await;
    plane.stop().await;
    clean_namespace(cluster, ns);
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_means_the_initial_state_is_translated() -> Result<()> {
    if !can_run("ready_means_the_initial_state_is_translated") {
        return Ok(());
    }
    let cluster = installed();
    let _slot = operator_slot().await;
    let ns = "ready";
    namespace(cluster, ns)?;
    // Headless: 1,000 fixed ClusterIPs would collide, now and then, with one the API server
    // gave at random to a Service of the install (dynamic allocation uses the same range).
    let items: Vec<Value> = (0..1000)
        .map(|i| service_json(ns, &format!("svc{i}"), "None", 8080))
        .collect();
    cluster.kubectl_stdin(
        &["apply", "-f", "-"],
        &json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string(),
    )?;
    let plane = start_operator_as(cluster, "weir-operator", "weir-ready", None).await?;
    let result = async {
        eventually("/readyz", DEADLINE, || async {
            ready(plane.admin_addr).await.then_some(())
        })
        .await?;
        // Not eventually: the moment it is ready, everything listed is in the index.
        let held = plane
            .state
            .keys(weir_core::Kind::Service)
            .iter()
            .filter(|k| k.namespace == ns)
            .count();
        assert_eq!(held, 1000);
        anyhow::Ok(())
    }
    .await;
    plane.stop().await;
    let _ = cluster.kubectl(&["delete", "namespace", ns, "--wait=false"]);
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_pods_through_the_endpointslice_controller_to_envoy_routing_by_policy() -> Result<()> {
    use weir_tests::{Backend, Envoy};
    let test = "from_pods_through_the_endpointslice_controller_to_envoy_routing_by_policy";
    if !can_run(test) || !weir_tests::kube::local_pod_ips(test, &["198.18.0.2", "198.18.0.3"]) {
        return Ok(());
    }
    let cluster = installed();
    let _slot = operator_slot().await;
    let ns = "chain";
    namespace(cluster, ns)?;
    cluster.ensure_node("node-a", "zone-a")?;
    let v1 = Backend::start_on("reviews-v1", "198.18.0.2:0".parse()?, Default::default()).await?;
    let port = v1.addr.port();
    let _v2 = Backend::start_on(
        "reviews-v2",
        format!("198.18.0.3:{port}").parse()?,
        Default::default(),
    )
    .await?;
    // A Service with a selector, and its pods as a kubelet would report them.
    cluster.apply(&json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "reviews", "namespace": ns},
        "spec": {"selector": {"app": "reviews"}, "ports": [{"name": "http", "port": 9080, "targetPort": "http"}]}}),
    )?;
    for (version, ip) in [("v1", "198.18.0.2"), ("v2", "198.18.0.3")] {
        let name = format!("reviews-{version}");
        cluster.apply(&json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": {"app": "reviews", "version": version}},
            "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "shop/reviews:1",
                "ports": [{"name": "http", "containerPort": port}]}]}}),
        )?;
        cluster.set_pod_ready(ns, &name, ip)?;
    }
    // The real EndpointSlice controller makes the slice: both endpoints ready, the zone
    // from the Node.
    let slice = cluster.poll("the EndpointSlice with both pods ready", || {
        let slices = get(
            cluster,
            &[
                "get",
                "endpointslices",
                "-n",
                ns,
                "-l",
                "kubernetes.io/service-name=reviews",
            ],
        )?;
        let slice = slices["items"].as_array()?.first()?.clone();
        let ready = slice["endpoints"]
            .as_array()?
            .iter()
            .filter(|e| e["conditions"]["ready"] == true)
            .count();
        (ready == 2).then_some(slice)
    })?;
    assert_eq!(slice["endpoints"][0]["zone"], "zone-a", "{slice}");
    assert_eq!(slice["ports"][0]["port"], port, "{slice}");
    let policy = |w1: u32, w2: u32| {
        to_json(&testing::mk_policy(
            ns,
            "reviews",
            testing::mk_policy_spec("reviews", &[("v1", w1), ("v2", w2)]),
        ))
    };
    cluster.apply(&policy(0, 100))?;

    let plane = start_operator_as(cluster, "weir-operator", "weir-chain", None).await?;
    let result = async {
        wait_leading(&plane, DEADLINE).await?;
        let envoy = Envoy::start(
            "web-1.chain",
            plane.xds_addr,
            weir_core::bootstrap::XdsProtocol::Delta,
        )
        .await?;
        envoy.wait_all_on("reviews.chain", "reviews-v2").await?;
        let message =
            wait_condition(cluster, ns, "reviews", "Programmed", "True", "Programmed").await?;
        assert!(
            message.contains("ACKed by every connected proxy"),
            "{message}"
        );
        // An edit through the API reaches the same Envoy.
        cluster.apply(&policy(100, 0))?;
        envoy.wait_all_on("reviews.chain", "reviews-v1").await?;
        // Without a policy the Service round-robins over both pods; one that stops being
        // ready (its kubelet says so) leaves the rotation, through the EndpointSlice
        // controller and an EDS update.
        cluster.kubectl(&["delete", "trafficpolicy", "reviews", "-n", ns])?;
        eventually("both pods answering", DEADLINE, || async {
            let counts = envoy.send(20, "reviews.chain", "/", &[]).await.ok()?;
            (counts.contains_key("reviews-v1") && counts.contains_key("reviews-v2")).then_some(())
        })
        .await?;
        let not_ready = r#"{"status": {"conditions": [{"type": "Ready", "status": "False"}]}}"#;
        cluster.kubectl(&[
            "patch",
            "pod",
            "reviews-v2",
            "-n",
            ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            not_ready,
        ])?;
        envoy.wait_all_on("reviews.chain", "reviews-v1").await?;
        envoy.stop().await;
        anyhow::Ok(())
    }
    .await;
    plane.stop().await;
    clean_namespace(cluster, ns);
    result
}
