//! gRPC through real Envoy (explicit capture): a real tonic server and client, HTTP/2 all
//! the way to the backends, a 70/30 split, a method match, and a retried UNAVAILABLE.

use anyhow::Result;
use std::collections::BTreeMap;
use weir_core::bootstrap::XdsProtocol;
use weir_tests::apps::{call_grpc_on, grpc_channel, serve_grpc, EchoServer};
use weir_tests::*;

const POLICY: &str = r#"
apiVersion: weir.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: greeter, namespace: default}
spec:
  targetRef: {service: greeter}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  http:
  - name: other-on-v2
    matches:
    - grpc: {service: weir.test.Echo, method: Other}
    destinations: [{subset: v2}]
  - name: split
    destinations:
    - {subset: v1, weight: 70}
    - {subset: v2, weight: 30}
"#;

const RETRY_POLICY: &str = r#"
apiVersion: weir.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: flaky, namespace: default}
spec:
  targetRef: {service: flaky}
  http:
  - destinations: [{service: flaky}]
    retries: {attempts: 2, retryOn: [unavailable]}
"#;

/// Starts an echo server on `ip` (port chosen by the OS, or `port`) and joins it to
/// `service` as pod `name` with `labels`.
async fn join(
    mesh: &Mesh,
    service: &str,
    name: &str,
    labels: &[(&str, &str)],
    server: EchoServer,
    addr: std::net::SocketAddr,
) -> Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve_grpc(server, listener));
    mesh.write(
        &format!("ep-{name}.yaml"),
        &pod_endpoint_yaml("default", service, "grpc", name, labels, addr, true),
    )?;
    Ok(addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_splits_70_30_matches_a_method_and_retries_unavailable() -> Result<()> {
    let mesh = Mesh::start().await?;
    for (name, ip) in [("greeter", "10.96.0.50"), ("flaky", "10.96.0.51")] {
        mesh.write(
            &format!("svc-{name}.yaml"),
            &to_yaml(&[service_with_ports(
                "default",
                name,
                ip,
                &[("grpc", 50051, Some("grpc"))],
            )]),
        )?;
    }
    let v1 = join(
        &mesh,
        "greeter",
        "greeter-v1",
        &[("version", "v1")],
        EchoServer::new("greeter-v1", 0),
        "127.0.0.2:0".parse()?,
    )
    .await?;
    join(
        &mesh,
        "greeter",
        "greeter-v2",
        &[("version", "v2")],
        EchoServer::new("greeter-v2", 0),
        format!("127.0.0.3:{}", v1.port()).parse()?,
    )
    .await?;
    let flaky = EchoServer::new("flaky", 1);
    let flaky_calls = flaky.calls.clone();
    join(
        &mesh,
        "flaky",
        "flaky-1",
        &[],
        flaky,
        "127.0.0.4:0".parse()?,
    )
    .await?;
    mesh.write("policy.yaml", POLICY)?;
    mesh.write("retry.yaml", RETRY_POLICY)?;

    let envoy = Envoy::start("grpc", mesh.plane.xds_addr, XdsProtocol::Delta).await?;
    let outbound = format!("127.0.0.1:{}", envoy.outbound_port).parse()?;
    let channel = grpc_channel(outbound, "greeter:50051").await?;
    // The policy is in place once Other lands on v2 and Say reaches both subsets.
    eventually("the policy to route gRPC", DEADLINE, || {
        let channel = channel.clone();
        async move {
            let other = call_grpc_on(channel.clone(), "Other").await.ok()?;
            (other.server == "greeter-v2").then_some(())
        }
    })
    .await?;

    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..400 {
        let reply = call_grpc_on(channel.clone(), "Say").await?;
        *counts.entry(reply.server).or_default() += 1;
    }
    let v1_share = share(&counts, "greeter-v1");
    println!("gRPC 70/30 over 400 calls: {counts:?} -> v1 {v1_share:.1}%");
    assert_eq!(counts.values().sum::<usize>(), 400, "every call succeeded");
    assert!(
        (v1_share - 70.0).abs() <= 6.0,
        "v1 got {v1_share:.1}%, want 70±6"
    );

    for _ in 0..50 {
        let reply = call_grpc_on(channel.clone(), "Other").await?;
        assert_eq!(
            (reply.server.as_str(), reply.method.as_str()),
            ("greeter-v2", "Other")
        );
    }
    // HTTP/2 to the backends: gRPC needs it; an HTTP/1.1 upstream is what broke before.
    let h2 = envoy
        .stat("cluster.outbound|50051|v1|greeter.default.svc.cluster.local.upstream_cx_http2_total")
        .await?;
    let h1 = envoy
        .stat("cluster.outbound|50051|v1|greeter.default.svc.cluster.local.upstream_cx_http1_total")
        .await?;
    assert!(
        h2 >= 1 && h1 == 0,
        "upstream connections: http2 {h2}, http1 {h1}"
    );

    // /debug/config says why the port is gRPC.
    let config = admin_json(mesh.plane.admin_addr, "/debug/config?node=grpc").await?;
    let port = config["ports"]
        .as_array()
        .and_then(|ports| ports.iter().find(|p| p["service"] == "default/greeter"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (
            port["port"].as_u64(),
            port["protocol"].as_str(),
            port["decidedBy"].as_str()
        ),
        (Some(50051), Some("grpc"), Some("appProtocol")),
        "{config}"
    );

    // UNAVAILABLE once, then retried by the proxy: the client sees success. The proxy
    // has the retry policy once it is Programmed (ACKed by every proxy).
    eventually("the retry policy to be programmed", DEADLINE, || async {
        let conditions = mesh.policy_conditions("flaky").await.ok()?;
        conditions
            .iter()
            .any(|c| c["type"] == "Programmed" && c["status"] == true)
            .then_some(())
    })
    .await?;
    let flaky_channel = grpc_channel(outbound, "flaky:50051").await?;
    let reply = call_grpc_on(flaky_channel, "Say").await?;
    assert_eq!(reply.server, "flaky");
    let calls = flaky_calls.load(std::sync::atomic::Ordering::SeqCst);
    println!("flaky server: {calls} calls for the first call a client made");
    assert_eq!(calls, 2, "the UNAVAILABLE answer was retried once");
    Ok(())
}
