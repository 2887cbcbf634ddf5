//! `make bench` (part 2): push latency to many delta ADS streams.
//!
//! Starts the control plane on a directory with a mesh of Services, opens N delta streams that
//! behave like Envoy (wildcard CDS and LDS, EDS for every cluster, RDS for the route table,
//! ACK everything), changes one policy, and reports how long each stream took to receive
//! the new route table and how long until every stream had ACKed it. The operator runs as
//! its own process (the real binary, in local mode), so its memory per stream is measured
//! alone.

use anyhow::{Context, Result};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DeltaDiscoveryRequest,
};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use weir_core::ResourceType;
use weir_tests::*;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn node(i: usize) -> Node {
    let s = |v: &str| Value {
        kind: Some(Kind::StringValue(v.to_string())),
    };
    Node {
        id: format!("bench-{i}"),
        metadata: Some(Struct {
            fields: [
                ("NAMESPACE".to_string(), s("default")),
                ("POD_NAME".to_string(), s(&format!("bench-{i}"))),
                ("CAPTURE_MODE".to_string(), s("explicit")),
                ("OUTBOUND_PORT".to_string(), s("15001")),
            ]
            .into_iter()
            .collect(),
        }),
        ..Default::default()
    }
}

/// Shared between the bench and every client: when the change was made, and when each
/// client first saw a route table other than its first one.
#[derive(Default)]
struct Marks {
    changed_at: Option<Instant>,
    received: Vec<Duration>,
}

async fn client(
    i: usize,
    channel: tonic::transport::Channel,
    marks: Arc<Mutex<Marks>>,
) -> Result<()> {
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(16);
    let mut ads =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 << 20);
    let req = |t: ResourceType, subscribe: Vec<String>, nonce: String| DeltaDiscoveryRequest {
        type_url: t.type_url().to_string(),
        resource_names_subscribe: subscribe,
        response_nonce: nonce,
        ..Default::default()
    };
    let mut first = req(ResourceType::Cluster, vec![], String::new());
    first.node = Some(node(i));
    tx.send(first).await?;
    tx.send(req(ResourceType::Listener, vec![], String::new()))
        .await?;
    let mut inbound = ads
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut first_routes: Option<String> = None;
    let mut seen_change = false;
    while let Some(resp) = inbound.message().await? {
        let t = ResourceType::from_type_url(&resp.type_url).context("unknown type")?;
        let mut ack = req(t, vec![], resp.nonce.clone());
        match t {
            ResourceType::Cluster => {
                tx.send(ack).await?;
                let names = resp.resources.iter().map(|r| r.name.clone()).collect();
                ack = req(ResourceType::Endpoint, names, String::new());
            }
            ResourceType::Listener if first_routes.is_none() => {
                tx.send(ack).await?;
                ack = req(ResourceType::Route, vec!["outbound".into()], String::new());
            }
            ResourceType::Route => {
                let version = resp
                    .resources
                    .first()
                    .map(|r| r.version.clone())
                    .unwrap_or_default();
                match &first_routes {
                    None => first_routes = Some(version),
                    Some(v) if *v != version && !seen_change => {
                        seen_change = true;
                        let mut m = marks.lock().expect("marks lock");
                        if let Some(at) = m.changed_at {
                            m.received.push(at.elapsed());
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        tx.send(ack).await?;
    }
    Ok(())
}

fn report_client_error(i: usize, err: &anyhow::Error) {
    if !DONE.load(std::sync::atomic::Ordering::SeqCst) {
        eprintln!("client {i}: {err:#}");
    }
}

static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

async fn status(admin: SocketAddr) -> Option<serde_json::Value> {
    admin_json(admin, "/status").await.ok()
}

#[tokio::main]
async fn main() -> Result<()> {
    let streams = env_usize("WEIR_BENCH_STREAMS", 500);
    let services = env_usize("WEIR_BENCH_SERVICES", 1000);

    // The mesh as files, served by the real operator binary in its own process, so that its
    // memory can be read apart from the clients'.
    let dir = scratch_dir("bench-xds");
    let mut mesh = String::new();
    for s in 0..services {
        let name = format!("svc{s}");
        mesh.push_str(&service_yaml(
            "default",
            &name,
            &format!("10.96.{}.{}", s / 250, s % 250),
            8080,
        ));
        mesh.push_str("---\n");
        let ip: std::net::IpAddr = format!("10.1.{}.{}", s / 250, s % 250).parse()?;
        mesh.push_str(&slice_yaml(
            "default",
            &name,
            &format!("{name}-x"),
            8080,
            &[(&format!("{name}-0"), ip)],
        ));
        mesh.push_str("---\n");
    }
    write_file(&dir, "mesh.yaml", &mesh)?;
    let policy = |w: u32| split_policy_yaml("svc0", "svc0", &[("v1", w), ("v2", 100 - w)]);
    write_file(&dir, "policy.yaml", &policy(100))?;

    let (xds, admin): (SocketAddr, SocketAddr) = (
        format!("127.0.0.1:{}", free_port()).parse()?,
        format!("127.0.0.1:{}", free_port()).parse()?,
    );
    let mut operator = tokio::process::Command::new(workspace_binary("weir-operator")?)
        .args(["local", "--dir"])
        .arg(&dir)
        .args([
            "--xds-addr",
            &xds.to_string(),
            "--admin-addr",
            &admin.to_string(),
        ])
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .context("starting weir-operator")?;
    let pid = operator.id().context("operator pid")?;
    eventually(
        "the operator to load the mesh",
        Duration::from_secs(60),
        || async { (status(admin).await?["objects"]["services"] == services).then_some(()) },
    )
    .await?;
    let rss_before = rss_kib(pid);

    let url = format!("http://{xds}");
    let marks = Arc::new(Mutex::new(Marks::default()));
    let mut channels = Vec::new();
    for _ in 0..streams.div_ceil(100) {
        channels.push(
            tonic::transport::Endpoint::from_shared(url.clone())?
                .connect()
                .await?,
        );
    }
    let started = Instant::now();
    for i in 0..streams {
        let (channel, marks) = (channels[i / 100].clone(), marks.clone());
        tokio::spawn(async move {
            // Errors after the run (the operator is killed at the end) are not news.
            if let Err(err) = client(i, channel, marks).await {
                report_client_error(i, &err);
            }
        });
    }
    let in_sync = || async {
        let s = status(admin).await?;
        (s["status"]["proxiesConnected"] == streams && s["status"]["proxiesInSync"] == streams)
            .then_some(())
    };
    eventually(
        "every stream to ACK its initial config",
        Duration::from_secs(120),
        in_sync,
    )
    .await?;
    let connect_time = started.elapsed();
    let rss_peak = rss_kib(pid);
    // Let the allocator return what the initial pushes used transiently.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_after = rss_kib(pid);

    let changed_at = Instant::now();
    marks.lock().expect("marks lock").changed_at = Some(changed_at);
    write_file(&dir, "policy.yaml", &policy(50))?;
    eventually(
        "every stream to receive the new routes",
        Duration::from_secs(120),
        || {
            let marks = marks.clone();
            async move { (marks.lock().ok()?.received.len() == streams).then_some(()) }
        },
    )
    .await?;
    eventually(
        "every stream to ACK the new routes",
        Duration::from_secs(120),
        in_sync,
    )
    .await?;
    let all_acked = changed_at.elapsed();

    let mut received = marks.lock().expect("marks lock").received.clone();
    received.sort();
    println!("xDS push benchmark: {services} Services, {streams} delta streams (explicit profile), operator in its own process");
    println!("  initial config to all streams, ACKed:    {connect_time:?}");
    println!(
        "  policy file write -> new routes received: p50 {:?}  p99 {:?}  max {:?} (includes the file watch and the 10 ms debounce)",
        percentile(&received, 0.50),
        percentile(&received, 0.99),
        received.last().copied().unwrap_or_default()
    );
    println!("  policy file write -> every stream ACKed:  {all_acked:?}   (target: p99 < 1 s at 5,000 streams)");
    println!(
        "  operator resident memory: {} KiB with the mesh loaded, {} KiB right after the initial pushes, {} KiB settled: {:.1} KiB per stream (target < 50 KB)",
        rss_before,
        rss_peak,
        rss_after,
        rss_after.saturating_sub(rss_before) as f64 / streams as f64
    );
    DONE.store(true, std::sync::atomic::Ordering::SeqCst);
    operator.kill().await?;
    std::process::exit(0)
}
