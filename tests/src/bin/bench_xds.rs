//! `make bench` (part 2): push latency to many delta ADS streams.
//!
//! Starts the control plane in-process with a mesh of Services, opens N delta streams that
//! behave like Envoy (wildcard CDS and LDS, EDS for every cluster, RDS for the route table,
//! ACK everything), changes one policy, and reports how long each stream took to receive
//! the new route table and how long until every stream had ACKed it. Also reports the
//! process's resident memory per stream (client and server together, so an upper bound).

use anyhow::{Context, Result};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DeltaDiscoveryRequest,
};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use weir_core::testing::*;
use weir_core::{Event, Object, ResourceType};
use weir_tests::*;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

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

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
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

#[tokio::main]
async fn main() -> Result<()> {
    let streams = env_usize("WEIR_BENCH_STREAMS", 500);
    let services = env_usize("WEIR_BENCH_SERVICES", 1000);
    let mesh = Mesh::start().await?;
    let engine = mesh.plane.engine.clone();
    let mut events = Vec::new();
    for s in 0..services {
        let name = format!("svc{s}");
        events.push(Event::apply(Object::Service(mk_service(
            "default",
            &name,
            &format!("10.96.{}.{}", s / 250, s % 250),
            &[8080],
        ))));
        events.push(Event::apply(Object::EndpointSlice(mk_slice(
            "default",
            &format!("{name}-x"),
            &name,
            "http",
            8080,
            &[(
                &format!("10.1.{}.{}", s / 250, s % 250),
                &format!("{name}-0"),
            )],
        ))));
    }
    engine.apply(events);
    let policy = |w: u32| {
        Event::apply(Object::TrafficPolicy(mk_policy(
            "default",
            "svc0",
            mk_policy_spec("svc0", &[("v1", w), ("v2", 100 - w)]),
        )))
    };
    engine.apply(vec![policy(100)]);

    let rss_before = rss_kib();
    let url = format!("http://{}", mesh.plane.xds_addr);
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
            if let Err(err) = client(i, channel, marks).await {
                eprintln!("client {i}: {err:#}");
            }
        });
    }
    let in_sync = |want: usize| {
        let engine = engine.clone();
        async move {
            let proxies = engine.proxies.list();
            (proxies.len() == want && proxies.iter().all(|p| p.in_sync() && p.types.len() == 4))
                .then_some(())
        }
    };
    eventually(
        "every stream to ACK its initial config",
        Duration::from_secs(120),
        || in_sync(streams),
    )
    .await?;
    let connect_time = started.elapsed();
    let rss_after = rss_kib();

    marks.lock().expect("marks lock").changed_at = Some(Instant::now());
    let changed_at = Instant::now();
    engine.apply(vec![policy(50)]);
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
        || in_sync(streams),
    )
    .await?;
    let all_acked = changed_at.elapsed();

    let mut received = marks.lock().expect("marks lock").received.clone();
    received.sort();
    println!("xDS push benchmark: {services} Services, {streams} delta streams (explicit profile)");
    println!("  initial config to all streams, ACKed:   {connect_time:?}");
    println!(
        "  policy change -> new routes received:   p50 {:?}  p99 {:?}  max {:?}",
        percentile(&received, 0.50),
        percentile(&received, 0.99),
        received.last().copied().unwrap_or_default()
    );
    println!("  policy change -> every stream ACKed:    {all_acked:?}   (target: p99 < 1 s at 5,000 streams)");
    println!(
        "  resident memory for the streams:        {} KiB total, {:.1} KiB per stream (client and server together; target < 50 KB server-side)",
        rss_after.saturating_sub(rss_before),
        rss_after.saturating_sub(rss_before) as f64 / streams as f64
    );
    mesh.plane.stop().await;
    std::process::exit(0)
}
