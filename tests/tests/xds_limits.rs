//! The xDS server's bounds, as a client meets them: a connection over the cap is closed, a
//! stream over the cap is refused with RESOURCE_EXHAUSTED and a message naming the flag, a
//! connection that never opens a stream is closed after the idle timeout, and an
//! oversized request ends its stream; each is counted in weir_xds_refused_total.

use anyhow::{Context, Result};
use envoy_types::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use weir_core::mesh::OUTBOUND_CAPTURE_PORT;
use weir_core::ResourceType;
use weir_tests::*;

async fn refused(admin: SocketAddr, reason: &str) -> Option<u64> {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let prefix = format!("weir_xds_refused_total{{reason=\"{reason}\"}} ");
    Some(
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0),
    )
}

/// The refusal is RESOURCE_EXHAUSTED naming the flag that sets the limit, and it was
/// counted once under `reason`.
async fn exhausted(status: &tonic::Status, flag: &str, admin: SocketAddr, reason: &str) {
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains(flag), "{}", status.message());
    assert_eq!(refused(admin, reason).await, Some(1));
}

/// A delta stream that has sent its first request; the sender stays open with it.
type Responses = tonic::Streaming<DeltaDiscoveryResponse>;

async fn open_stream(
    xds: SocketAddr,
    id: &str,
) -> Result<(
    mpsc::Sender<DeltaDiscoveryRequest>,
    Result<Responses, tonic::Status>,
)> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{xds}"))?
        .connect()
        .await?;
    let (tx, rx) = mpsc::channel(4);
    tx.send(DeltaDiscoveryRequest {
        node: Some(weir_tests::xds_client::explicit_node(
            "default",
            id,
            OUTBOUND_CAPTURE_PORT,
        )),
        type_url: ResourceType::Cluster.type_url().to_string(),
        ..Default::default()
    })
    .await?;
    let response = AggregatedDiscoveryServiceClient::new(channel)
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .map(|r| r.into_inner());
    Ok((tx, response))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_xds_server_refuses_what_is_over_its_limits() -> Result<()> {
    let dir = scratch_dir("xds-limits");
    let mut options = weir_operator::Options::new("127.0.0.1:0".parse()?, "127.0.0.1:0".parse()?);
    options.xds_limits = weir_operator::xds::conn::XdsLimits {
        max_connections: 3,
        max_streams: 2,
        idle_timeout: Duration::from_secs(2),
        max_request_bytes: 64 << 10,
    };
    let plane =
        weir_operator::ControlPlane::start(weir_operator::Source::Dir(dir), options).await?;
    let (xds, admin) = (plane.xds_addr, plane.admin_addr);

    // Three idle connections fill the cap; a fourth is closed at once, before any timeout.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(tokio::net::TcpStream::connect(xds).await?);
    }
    eventually("the three connections to be counted", DEADLINE, || async {
        let text = reqwest::get(format!("http://{admin}/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .any(|l| l == "weir_xds_connections 3")
            .then_some(())
    })
    .await?;
    let mut fourth = tokio::net::TcpStream::connect(xds).await?;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(1), fourth.read(&mut buf))
        .await
        .context("the connection over the cap was not closed")?
        .unwrap_or(0);
    assert_eq!(n, 0, "the connection over the cap got data");
    assert_eq!(refused(admin, "connection_limit").await, Some(1));

    // The idle ones never open a stream (the server's HTTP/2 SETTINGS arrive, then
    // nothing): closed after the idle timeout.
    for mut conn in idle {
        let closed = tokio::time::timeout(DEADLINE, async {
            let mut all = [0u8; 1024];
            while let Ok(n) = conn.read(&mut all).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "an idle connection stayed open");
    }
    eventually("the idle closes to be counted", DEADLINE, || async {
        (refused(admin, "idle_timeout").await? == 3).then_some(())
    })
    .await?;

    // Two streams fit; the third is refused with RESOURCE_EXHAUSTED naming the flag.
    let (_tx1, first) = open_stream(xds, "one").await?;
    let (tx2, second) = open_stream(xds, "two").await?;
    let mut first = first?;
    let mut second = second?;
    let (_tx3, third) = open_stream(xds, "three").await?;
    let status = match third {
        Err(status) => status,
        Ok(mut stream) => stream
            .message()
            .await
            .expect_err("a third stream was served"),
    };
    exhausted(&status, "--xds-max-streams", admin, "stream_limit").await;
    // The two streams are served.
    first
        .message()
        .await?
        .context("no response on the first stream")?;
    second
        .message()
        .await?
        .context("no response on the second stream")?;

    // A request over the size limit ends its stream, counted.
    tx2.send(DeltaDiscoveryRequest {
        type_url: ResourceType::Endpoint.type_url().to_string(),
        resource_names_subscribe: (0..10_000)
            .map(|i| format!("outbound|8080||svc{i}.default.svc.cluster.local"))
            .collect(),
        ..Default::default()
    })
    .await?;
    let status = loop {
        match second.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => anyhow::bail!("the stream ended without a status"),
            Err(status) => break status,
        }
    };
    exhausted(
        &status,
        "--xds-max-request-bytes",
        admin,
        "request_too_large",
    )
    .await;
    plane.stop().await;
    Ok(())
}
