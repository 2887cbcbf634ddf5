//! Translation: golden output for both capture modes, determinism, incremental updates and
//! policy precedence.

use envoy_types::pb::envoy::config::{
    cluster::v3::Cluster, endpoint::v3::ClusterLoadAssignment, listener::v3::Listener,
    route::v3::RouteConfiguration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use prost::Message;
use weir_api::{
    Destination, HeaderMatch, HttpMatch, PathMatch, PathMatchType, Retries, StringMatchType,
};
use weir_core::status::{policy_statuses, AckSummary, Reason};
use weir_core::testing::*;
use weir_core::{
    Capture, Event, Index, Object, ObjectKey, ProxyProfile, ResourceType, Snapshot, SnapshotBuilder,
};

fn apply(index: &mut Index, objects: Vec<Object>) {
    for o in objects {
        index.apply(Event::apply(o));
    }
}

/// Two services, one with a policy that uses every translated feature.
fn bookinfo() -> Vec<Object> {
    let mut spec = mk_policy_spec("reviews", &[("v1", 80), ("v2", 20)]);
    spec.http.insert(
        0,
        weir_api::HttpRule {
            name: Some("jason".into()),
            matches: vec![HttpMatch {
                path: Some(PathMatch {
                    match_type: PathMatchType::Prefix,
                    value: "/api/".into(),
                }),
                headers: vec![HeaderMatch {
                    name: "End-User".into(),
                    match_type: StringMatchType::Exact,
                    value: Some("jason".into()),
                }],
                method: Some(weir_api::HttpMethod::Get),
                ..Default::default()
            }],
            destinations: vec![Destination {
                subset: Some("v2".into()),
                ..Default::default()
            }],
            timeout: Some(weir_api::Duration("1500ms".into())),
            retries: Some(Retries {
                attempts: 3,
                per_try_timeout: Some(weir_api::Duration("500ms".into())),
                retry_on: vec![],
            }),
            request_headers: Some(weir_api::HeaderModifier {
                set: vec![weir_api::HeaderValue {
                    name: "x-canary".into(),
                    value: "true".into(),
                }],
                add: vec![],
                remove: vec!["x-debug".into()],
            }),
            ..Default::default()
        },
    );
    vec![
        Object::Service(mk_service("default", "reviews", "10.96.0.10", &[9080])),
        Object::Service(mk_service("default", "ratings", "10.96.0.11", &[9080, 80])),
        Object::Pod(mk_pod("default", "reviews-v1", &[("version", "v1")])),
        Object::Pod(mk_pod("default", "reviews-v2", &[("version", "v2")])),
        Object::EndpointSlice(mk_slice(
            "default",
            "reviews-abc",
            "reviews",
            "http",
            8080,
            &[("10.0.0.2", "reviews-v2"), ("10.0.0.1", "reviews-v1")],
        )),
        Object::EndpointSlice(mk_slice(
            "default",
            "ratings-abc",
            "ratings",
            "http",
            8080,
            &[("10.0.1.1", "ratings-1")],
        )),
        Object::TrafficPolicy(mk_policy("default", "reviews", spec)),
    ]
}

fn render(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    for t in ResourceType::ALL {
        for (name, r) in snapshot.of(t) {
            let bytes = r.body.value.as_slice();
            let text = match t {
                ResourceType::Cluster => format!("{:#?}", Cluster::decode(bytes).unwrap()),
                ResourceType::Endpoint => {
                    format!("{:#?}", ClusterLoadAssignment::decode(bytes).unwrap())
                }
                ResourceType::Listener => format!("{:#?}", Listener::decode(bytes).unwrap()),
                ResourceType::Route => format!("{:#?}", RouteConfiguration::decode(bytes).unwrap()),
            };
            out.push_str(&format!(
                "=== {} {name} ({})\n{text}\n",
                t.short(),
                r.version_string()
            ));
        }
    }
    out
}

fn check_golden(file: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(file);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} is missing: run with UPDATE_GOLDEN=1", path.display()));
    assert!(expected == actual, "{file} differs from the translation; if the change is intended, rerun with UPDATE_GOLDEN=1 and review the diff");
}

#[test]
fn golden_explicit_and_transparent() {
    for (file, capture) in [
        ("explicit.txt", Capture::Explicit { port: 15001 }),
        ("transparent.txt", Capture::Transparent),
    ] {
        let mut index = Index::new();
        apply(&mut index, bookinfo());
        let mut snapshots = SnapshotBuilder::new();
        snapshots.update(&mut index);
        let snapshot = snapshots.snapshot(ProxyProfile { capture });
        check_golden(file, &render(&snapshot));
    }
}

#[test]
fn output_does_not_depend_on_the_order_of_events() {
    let profile = ProxyProfile {
        capture: Capture::Transparent,
    };
    let build = |objects: Vec<Object>| {
        let mut index = Index::new();
        apply(&mut index, objects);
        let mut snapshots = SnapshotBuilder::new();
        snapshots.update(&mut index);
        snapshots.snapshot(profile)
    };
    let forward = build(bookinfo());
    let mut reversed = bookinfo();
    reversed.reverse();
    let backward = build(reversed);
    for t in ResourceType::ALL {
        assert_eq!(forward.types[t].version, backward.types[t].version);
    }
    assert_eq!(render(&forward), render(&backward));
}

#[test]
fn an_unchanged_input_changes_nothing() {
    let mut index = Index::new();
    apply(&mut index, bookinfo());
    let mut snapshots = SnapshotBuilder::new();
    snapshots.update(&mut index);
    snapshots.snapshot(ProxyProfile {
        capture: Capture::Transparent,
    });
    apply(&mut index, bookinfo());
    let (changes, published) = snapshots.update(&mut index);
    assert!(changes.is_empty(), "{changes:?}");
    assert!(published.is_empty());
}

#[test]
fn an_endpoint_change_touches_only_that_services_load_assignments() {
    let mut index = Index::new();
    apply(&mut index, bookinfo());
    let mut snapshots = SnapshotBuilder::new();
    snapshots.update(&mut index);
    let profile = ProxyProfile {
        capture: Capture::Explicit { port: 15001 },
    };
    let before = snapshots.snapshot(profile);

    // reviews-v2's pod leaves the slice.
    let slice = mk_slice(
        "default",
        "reviews-abc",
        "reviews",
        "http",
        8080,
        &[("10.0.0.1", "reviews-v1")],
    );
    index.apply(Event::apply(Object::EndpointSlice(slice)));
    let (changes, published) = snapshots.update(&mut index);
    assert!(
        changes.clusters.is_empty() && !changes.virtual_hosts_changed,
        "{changes:?}"
    );
    assert_eq!(
        changes
            .endpoints
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>(),
        vec![
            "outbound|9080||reviews.default.svc.cluster.local",
            "outbound|9080|v2|reviews.default.svc.cluster.local",
        ],
        "the whole-service and v2 assignments changed; v1's did not"
    );
    let (_, after) = &published[0];
    let after = after.as_ref().unwrap();
    assert_eq!(after.generation, before.generation + 1);
    for t in [
        ResourceType::Cluster,
        ResourceType::Listener,
        ResourceType::Route,
    ] {
        assert_eq!(
            after.types[t].version, before.types[t].version,
            "{t:?} version moved"
        );
        assert!(
            std::sync::Arc::ptr_eq(&after.types[t], &before.types[t]),
            "{t:?} was rebuilt"
        );
    }
    assert_eq!(after.types[ResourceType::Endpoint].changed.len(), 2);
    snapshots.check(profile, after).unwrap();
}

#[test]
fn a_pod_relabel_moves_it_between_subsets() {
    let mut index = Index::new();
    apply(&mut index, bookinfo());
    let mut snapshots = SnapshotBuilder::new();
    snapshots.update(&mut index);
    index.apply(Event::apply(Object::Pod(mk_pod(
        "default",
        "reviews-v2",
        &[("version", "v1")],
    ))));
    let (changes, _) = snapshots.update(&mut index);
    assert_eq!(
        changes.endpoints.len(),
        2,
        "v1 gains the pod, v2 loses it: {changes:?}"
    );
}

fn with_created(mut o: weir_api::TrafficPolicy, secs: i64) -> Object {
    o.metadata.creation_timestamp = Some(Time(
        k8s_openapi::jiff::Timestamp::from_second(secs).unwrap(),
    ));
    Object::TrafficPolicy(o)
}

#[test]
fn the_older_of_two_policies_on_a_port_wins_and_the_other_is_conflicted() {
    let mut index = Index::new();
    apply(&mut index, bookinfo());
    // "aaa" sorts first by name but is newer: age decides.
    let newer = mk_policy("default", "aaa", mk_policy_spec("reviews", &[("v1", 100)]));
    let older = mk_policy(
        "default",
        "reviews",
        mk_policy_spec("reviews", &[("v1", 50), ("v2", 50)]),
    );
    apply(
        &mut index,
        vec![
            with_created(newer, 2_000_000),
            with_created(older, 1_000_000),
        ],
    );
    let statuses = policy_statuses(&index, AckSummary::default());
    let aaa = statuses.iter().find(|s| s.name == "aaa").unwrap();
    assert_eq!(aaa.accepted().reason, Reason::Conflicted);
    assert!(
        aaa.accepted().message.contains("default/reviews"),
        "{}",
        aaa.accepted().message
    );
    assert!(!aaa.active);
    let reviews = statuses.iter().find(|s| s.name == "reviews").unwrap();
    assert!(reviews.accepted().status && reviews.active);
}

#[test]
fn a_deleted_then_recreated_target_moves_resolved_refs_false_then_true() {
    let mut index = Index::new();
    apply(&mut index, bookinfo());
    let resolved = |index: &Index| {
        let s = policy_statuses(index, AckSummary::default())
            .into_iter()
            .find(|s| s.name == "reviews")
            .unwrap();
        (s.conditions[1].status, s.conditions[1].reason)
    };
    assert_eq!(resolved(&index), (true, Reason::ResolvedRefs));
    index.apply(Event::Delete(
        weir_core::Kind::Service,
        ObjectKey::new("default", "reviews"),
    ));
    assert_eq!(resolved(&index), (false, Reason::TargetNotFound));
    index.apply(Event::apply(Object::Service(mk_service(
        "default",
        "reviews",
        "10.96.0.10",
        &[9080],
    ))));
    assert_eq!(resolved(&index), (true, Reason::ResolvedRefs));
}

#[test]
fn a_missing_backend_service_is_reported_with_its_field() {
    let mut index = Index::new();
    apply(&mut index, bookinfo());
    let mut spec = mk_policy_spec("ratings", &[]);
    spec.http = vec![mk_rule(vec![Destination {
        service: Some("ratings-v2".into()),
        ..Default::default()
    }])];
    apply(
        &mut index,
        vec![Object::TrafficPolicy(mk_policy("default", "ratings", spec))],
    );
    let s = policy_statuses(&index, AckSummary::default())
        .into_iter()
        .find(|s| s.name == "ratings")
        .unwrap();
    assert_eq!(s.conditions[1].reason, Reason::BackendNotFound);
    assert!(
        s.conditions[1]
            .message
            .starts_with("spec.http[0].destinations[0].service"),
        "{}",
        s.conditions[1].message
    );
}

#[test]
fn an_invalid_edit_keeps_serving_the_last_valid_version() {
    let mut index = Index::new();
    apply(&mut index, bookinfo());
    let mut snapshots = SnapshotBuilder::new();
    snapshots.update(&mut index);
    let profile = ProxyProfile {
        capture: Capture::Transparent,
    };
    let before = snapshots.snapshot(profile);
    let bad = mk_policy(
        "default",
        "reviews",
        mk_policy_spec("reviews", &[("v1", 70), ("v2", 20)]),
    );
    apply(&mut index, vec![Object::TrafficPolicy(bad)]);
    let (changes, published) = snapshots.update(&mut index);
    assert!(
        changes.is_empty() && published.is_empty(),
        "nothing is pushed for an invalid edit: {changes:?}"
    );
    let s = policy_statuses(&index, AckSummary::default())
        .into_iter()
        .find(|s| s.name == "reviews")
        .unwrap();
    assert_eq!(s.accepted().reason, Reason::InvalidWeights);
    assert!(s.active, "the previous version stays programmed");
    let now = snapshots.snapshot(profile);
    for t in ResourceType::ALL {
        assert_eq!(now.types[t].version, before.types[t].version);
    }
}

#[test]
fn a_policy_echoed_back_with_the_same_generation_dirties_nothing() {
    let mut index = Index::new();
    apply(&mut index, bookinfo());
    let mut policy = mk_policy(
        "default",
        "canary",
        mk_policy_spec("reviews", &[("v1", 50), ("v2", 50)]),
    );
    policy.metadata.generation = Some(3);
    index.apply(Event::apply(Object::TrafficPolicy(policy.clone())));
    assert!(!index.take_dirty().is_empty());

    // What a status write looks like from the watch: same generation, new status.
    let mut echoed = policy.clone();
    echoed.status = Some(Default::default());
    index.apply(Event::apply(Object::TrafficPolicy(echoed)));
    assert!(
        index.take_dirty().is_empty(),
        "a status-only change retranslated"
    );

    let mut edited = policy;
    edited.metadata.generation = Some(4);
    edited.spec = mk_policy_spec("reviews", &[("v1", 10), ("v2", 90)]);
    index.apply(Event::apply(Object::TrafficPolicy(edited)));
    assert!(!index.take_dirty().is_empty(), "a spec change was ignored");
}
