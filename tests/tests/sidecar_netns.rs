//! A sidecar without a cluster: a network namespace stands in for a pod. weir-init's rules
//! are applied for real, Envoy runs from the bootstrap the injector writes (transparent
//! capture) against the real `weir-operator local`, and the application calls a Service by
//! its cluster DNS name, unaware of Envoy:
//!
//! (a) its plain HTTP call is captured by Envoy and routed by a TrafficPolicy;
//! (b) calls into the pod pass through Envoy's inbound listener (the mesh is PERMISSIVE here:
//!     the caller has no sidecar; STRICT refusing it is the mTLS test's job);
//! (c) Envoy's own connections are not captured again (else nothing would route at all).

use std::collections::BTreeMap;
use weir_core::mesh::{ENVOY_ADMIN_PORT, INBOUND_CAPTURE_PORT};
use weir_tests::netns::*;
use weir_tests::{endpoint_yaml, scratch_dir, service_yaml, write_file};

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

const PERMISSIVE: &str = "apiVersion: weir.dev/v1alpha1
kind: MeshIdentity
metadata: {name: mesh}
spec:
  mtls: {mode: PERMISSIVE}
";

#[test]
fn an_injected_sidecar_captures_and_routes_the_applications_traffic() {
    if !can_run("an_injected_sidecar_captures_and_routes_the_applications_traffic") {
        return;
    }
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
    write_file(&dir, "mesh.yaml", PERMISSIVE).unwrap();
    // The operator in the peer namespace; the pod as the injector writes it (gid 1337 for
    // Envoy, as injected; the capture test covers uid 1337 as well).
    net.start_mesh_and_sidecar(
        &dir,
        &[(
            "10.96.0.10",
            "reviews.default.svc.cluster.local reviews.default.svc reviews.default",
        )],
    );
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
        &format!(
            "http://127.0.0.1:{ENVOY_ADMIN_PORT}/stats?filter=^http.outbound_9080.downstream_rq_total$"
        ),
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
        &format!("http://127.0.0.1:{ENVOY_ADMIN_PORT}/stats?filter=^listener.0.0.0.0_{INBOUND_CAPTURE_PORT}.downstream_cx_total$"),
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
