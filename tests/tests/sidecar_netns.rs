//! A sidecar without a cluster: a network namespace stands in for a pod. weir-init's rules
//! are applied for real, Envoy runs from the bootstrap the injector writes (transparent
//! capture) against the real `weir-operator local`, and the application calls a Service by
//! its cluster DNS name, unaware of Envoy:
//!
//! (a) its plain HTTP call is captured by Envoy and routed by a TrafficPolicy;
//! (b) calls into the pod pass through Envoy's inbound listener;
//! (c) Envoy's own connections are not captured again (else nothing would route at all).

use std::collections::BTreeMap;
use weir_tests::netns::*;
use weir_tests::{endpoint_yaml, envoy_bin, scratch_dir, service_yaml, write_file};
use weir_webhook::inject::{inject, MeshConfig, PROXY_CONTAINER};

const POLICY: &str = "apiVersion: weir.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: reviews, namespace: default}
spec:
  targetRef: {service: reviews}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  http:
  - matches: [{headers: [{name: end-user, type: Exact, value: jason}]}]
    destinations: [{subset: v2}]
  - destinations: [{subset: v1}]
";

#[test]
fn an_injected_sidecar_captures_and_routes_the_applications_traffic() {
    if !can_run("an_injected_sidecar_captures_and_routes_the_applications_traffic") {
        return;
    }
    let operator = weir_tests::workspace_binary("weir-operator").unwrap();
    let init = weir_tests::workspace_binary("weir-init").unwrap();
    let envoy = envoy_bin().expect("envoy");
    let mut net = Net::new("side");

    // The mesh, as local mode reads it: reviews v1 and v2 run on the peer host.
    let dir = scratch_dir("sidecar-mesh");
    write_file(
        &dir,
        "svc.yaml",
        &service_yaml("default", "reviews", "10.96.0.10", 9080),
    )
    .unwrap();
    for (version, port) in [("v1", 8081), ("v2", 8082)] {
        let addr = format!("{PEER_IP}:{port}").parse().unwrap();
        let pod = format!("reviews-{version}");
        write_file(
            &dir,
            &format!("{pod}.yaml"),
            &endpoint_yaml(
                "default",
                "reviews",
                &pod,
                &[("version", version)],
                addr,
                true,
            ),
        )
        .unwrap();
        net.serve_http(Side::Peer, port, &format!("reviews-{version}"));
    }
    write_file(&dir, "policy.yaml", POLICY).unwrap();
    let xds = format!("{PEER_IP}:15010");
    let dir_arg = dir.to_string_lossy().into_owned();
    let op = operator.to_string_lossy().into_owned();
    net.spawn(
        Side::Peer,
        &[
            &op,
            "local",
            "--dir",
            &dir_arg,
            "--xds-addr",
            &xds,
            "--admin-addr",
            "127.0.0.1:15099",
        ],
    );

    // The pod: what the injector writes for it.
    let pod: k8s_openapi::api::core::v1::Pod = serde_yaml::from_str(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: productpage, namespace: default}\nspec:\n  containers: [{name: app, image: app:1}]\n",
    )
    .unwrap();
    let injected = inject(
        &pod,
        "default",
        &MeshConfig {
            xds_address: xds.clone(),
            ..MeshConfig::default()
        },
    )
    .pod;
    let spec = injected.spec.expect("spec");
    let init_args = spec
        .init_containers
        .as_ref()
        .and_then(|c| c.iter().find(|c| c.name == "weir-init"))
        .and_then(|c| c.args.clone())
        .unwrap_or_default();
    let proxy = spec
        .init_containers
        .as_ref()
        .and_then(|c| c.iter().find(|c| c.name == PROXY_CONTAINER))
        .cloned()
        .expect("proxy");
    let args: Vec<String> = proxy
        .args
        .unwrap_or_default()
        .into_iter()
        .map(|a| {
            a.replace("$(POD_NAME)", "productpage")
                .replace("$(POD_NAMESPACE)", "default")
        })
        .collect();

    // The init container, then the sidecar (gid 1337, as injected; the capture test covers
    // uid 1337 as well), then the application.
    let init = init.to_string_lossy().into_owned();
    let mut init_cmd = vec![init.as_str()];
    init_cmd.extend(init_args.iter().map(String::as_str));
    let pod_ns = net.pod.clone();
    let mut full = vec!["ip", "netns", "exec", &pod_ns];
    full.extend(init_cmd);
    run(&full);
    let envoy = envoy.to_string_lossy().into_owned();
    let mut envoy_cmd = vec![
        "setpriv",
        "--regid",
        "1337",
        "--clear-groups",
        envoy.as_str(),
    ];
    envoy_cmd.extend(args.iter().map(String::as_str));
    net.spawn(Side::Pod, &envoy_cmd);
    net.hosts(
        Side::Pod,
        &[(
            "10.96.0.10",
            "reviews.default.svc.cluster.local reviews.default.svc reviews.default",
        )],
    );
    net.wait_for("the sidecar to be ready", || {
        net.get(Side::Pod, "http://127.0.0.1:15021/healthz/ready")
            .starts_with("200")
    });
    net.serve_http(Side::Pod, 8080, "productpage");

    // (a) The application's plain calls, by name and by ClusterIP, routed by the policy.
    let url = "http://reviews.default.svc.cluster.local:9080/";
    net.wait_for("the policy to route", || {
        net.get_with(Side::Pod, url, "end-user: jason") == "200 reviews-v2"
    });
    let mut seen = BTreeMap::new();
    for _ in 0..10 {
        *seen.entry(net.get(Side::Pod, url)).or_insert(0) += 1;
        *seen
            .entry(net.get(Side::Pod, "http://10.96.0.10:9080/"))
            .or_insert(0) += 1;
    }
    assert_eq!(
        seen,
        BTreeMap::from([("200 reviews-v1".to_string(), 20)]),
        "everyone but jason gets v1"
    );
    assert_eq!(
        net.get_with(Side::Pod, url, "end-user: jason"),
        "200 reviews-v2"
    );
    let outbound = net.get(
        Side::Pod,
        "http://127.0.0.1:15000/stats?filter=^http.outbound_9080.downstream_rq_total$",
    );
    assert!(
        outbound.starts_with("200 http.outbound_9080.downstream_rq_total:"),
        "{outbound}"
    );

    // (b) A call into the pod reaches the application through the inbound listener.
    assert_eq!(
        net.get(Side::Peer, &format!("http://{POD_IP}:8080/")),
        "200 productpage"
    );
    let inbound = net.get(
        Side::Pod,
        "http://127.0.0.1:15000/stats?filter=^listener.0.0.0.0_15006.downstream_cx_total$",
    );
    let count: u64 = inbound
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        count >= 1,
        "the inbound listener carried the call: {inbound}"
    );
}
