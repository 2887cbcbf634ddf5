//! `make bench` (scoping, control plane): scoped proxies at mesh scale, measured from
//! outside the operator.
//!
//! ```text
//! a mesh of WEIR_BENCH_SERVICES (5,000) Services x 5 endpoints, a split policy on svc0
//!   weir-operator local (own process, --proxy-scope learned, the default)
//!   WEIR_BENCH_STREAMS (2,000) simulated scoped Envoys (transparent capture, delta), each
//!   asking on demand for the virtual hosts of 10-20 Services of its own (every tenth one
//!   includes svc0), EDS for the clusters it gets, ACKing everything
//!   --> operator RSS, time until every scope is served, what a stream holds
//!   --> one edit of svc0's policy: p50/p99 until the proxies holding svc0 receive it, and
//!       how many of the others received anything at all (none should)
//! ```

use anyhow::{Context, Result};
use envoy_types::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DeltaDiscoveryRequest,
};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use weir_core::ResourceType;
use weir_tests::*;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The Service whose policy is edited.
const EDITED: &str = "svc0.default.svc.cluster.local";

#[derive(Default)]
struct Shared {
    /// Streams whose scope is served whole (every virtual host asked for arrived).
    served: AtomicUsize,
    /// Clusters and virtual hosts held, summed over streams.
    held: AtomicUsize,
    edited_at: Mutex<Option<Instant>>,
    /// Per holder of svc0: the delay until its new virtual host arrived.
    received: Mutex<Vec<Duration>>,
    /// Streams that do not hold svc0 and received something after the edit.
    disturbed: AtomicUsize,
    done: AtomicBool,
}

/// The Services of stream `i`'s scope.
fn scope_of(i: usize, services: usize) -> Vec<usize> {
    let count = 10 + i % 11;
    let mut scope: Vec<usize> = (0..count)
        .map(|k| 1 + (i * 7919 + k * 104_729) % (services - 1))
        .collect();
    if i.is_multiple_of(10) {
        scope[0] = 0;
    }
    scope.sort_unstable();
    scope.dedup();
    scope
}

async fn scoped_client(
    i: usize,
    services: usize,
    channel: tonic::transport::Channel,
    shared: &Shared,
) -> Result<()> {
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(64);
    let mut ads =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 << 20);
    let req = xds_client::delta_request;
    let scope = scope_of(i, services);
    let holds_edited = scope.contains(&0);
    let aliases: Vec<String> = scope
        .iter()
        .map(|s| format!("outbound|8080/svc{s}.default:8080"))
        .collect();
    let mut first = req(ResourceType::Cluster, vec![], String::new());
    first.node = Some(xds_client::node("default", &format!("bench-{i}")));
    tx.send(first).await?;
    tx.send(req(ResourceType::VirtualHost, vec![], String::new()))
        .await?;
    tx.send(req(
        ResourceType::VirtualHost,
        aliases.clone(),
        String::new(),
    ))
    .await?;
    let mut inbound = ads
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut pending: std::collections::BTreeSet<String> = aliases.into_iter().collect();
    let mut counted = false;
    let mut held = 0usize;
    while let Some(resp) = inbound.message().await? {
        let t = ResourceType::from_type_url(&resp.type_url).context("unknown type")?;
        let edited_at = *shared.edited_at.lock().expect("lock");
        if let Some(at) = edited_at {
            if holds_edited {
                if t == ResourceType::VirtualHost
                    && resp.resources.iter().any(|r| r.name.contains(EDITED))
                {
                    shared.received.lock().expect("lock").push(at.elapsed());
                }
            } else {
                shared.disturbed.fetch_add(1, Ordering::Relaxed);
            }
        }
        let ack = req(t, vec![], resp.nonce.clone());
        tx.send(ack).await?;
        match t {
            ResourceType::Cluster => {
                held += resp.resources.len();
                let names: Vec<String> = resp.resources.iter().map(|r| r.name.clone()).collect();
                if !names.is_empty() {
                    tx.send(req(ResourceType::Endpoint, names, String::new()))
                        .await?;
                }
            }
            ResourceType::VirtualHost => {
                held += resp.resources.len();
                for r in &resp.resources {
                    pending.remove(&r.name);
                    for alias in &r.aliases {
                        pending.remove(alias);
                    }
                }
            }
            _ => {}
        }
        if pending.is_empty() && !counted {
            counted = true;
            shared.served.fetch_add(1, Ordering::Relaxed);
            shared.held.fetch_add(held, Ordering::Relaxed);
        }
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() -> Result<()> {
    let streams = env_usize("WEIR_BENCH_STREAMS", 2000);
    let services = env_usize("WEIR_BENCH_SERVICES", 5000);
    let dir = scratch_dir("bench-scope-xds");
    // The operator reads at most 64 MiB from one file: a large mesh is split at document
    // boundaries.
    let mesh = bench_mesh_yaml(services, 5)?;
    let mut part = String::new();
    let mut parts = 0;
    for doc in mesh.split_inclusive("---\n") {
        part.push_str(doc);
        if part.len() > 32 << 20 {
            write_file(&dir, &format!("mesh-{parts}.yaml"), &part)?;
            parts += 1;
            part.clear();
        }
    }
    write_file(&dir, &format!("mesh-{parts}.yaml"), &part)?;
    let policy = |w: u32| split_policy_yaml("svc0", "svc0", &[("v1", w), ("v2", 100 - w)]);
    write_file(&dir, "policy.yaml", &policy(100))?;
    let loading = Instant::now();
    let (mut operator, xds, admin) = spawn_local_operator(&dir)?;
    let pid = operator.id().context("operator pid")?;
    eventually(
        "the operator to load the mesh",
        Duration::from_secs(1800),
        || async {
            (admin_json(admin, "/status").await.ok()?["objects"]["services"] == services)
                .then_some(())
        },
    )
    .await?;
    let load_time = loading.elapsed();
    let rss_loaded = proc_status_kib(pid, "VmRSS")? as f64 / 1024.0;

    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{xds}"))?;
    let shared = Arc::new(Shared::default());
    let started = Instant::now();
    for i in 0..streams {
        let (endpoint, shared) = (endpoint.clone(), shared.clone());
        tokio::spawn(async move {
            let channel = endpoint.connect_lazy();
            if let Err(err) = scoped_client(i, services, channel, &shared).await {
                if !shared.done.load(Ordering::SeqCst) {
                    eprintln!("stream {i}: {err:#}");
                }
            }
        });
    }
    eventually("every scope to be served", Duration::from_secs(600), || {
        let shared = shared.clone();
        async move { (shared.served.load(Ordering::Relaxed) == streams).then_some(()) }
    })
    .await?;
    let all_served = started.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_connected = proc_status_kib(pid, "VmRSS")? as f64 / 1024.0;
    let held = shared.held.load(Ordering::Relaxed) as f64 / streams as f64;

    *shared.edited_at.lock().expect("lock") = Some(Instant::now());
    write_file(&dir, "policy.yaml", &policy(50))?;
    let holders = (0..streams).filter(|i| i.is_multiple_of(10)).count();
    eventually(
        "every holder of svc0 to receive the edit",
        Duration::from_secs(120),
        || {
            let shared = shared.clone();
            async move { (shared.received.lock().ok()?.len() >= holders).then_some(()) }
        },
    )
    .await?;
    // Time for a stray push to the others to show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut received = shared.received.lock().expect("lock").clone();
    received.sort();
    let disturbed = shared.disturbed.load(Ordering::Relaxed);
    shared.done.store(true, Ordering::SeqCst);
    let _ = operator.kill().await;

    let run = format!("scoped-{services}-{streams}");
    let rss_goal = if (services, streams) == (5000, 2000) {
        "<= 200 MiB"
    } else {
        "reported"
    };
    println!(
        "Scoped proxies ({run}): {services} Services x 5 endpoints, {streams} scoped delta streams of 10-20 Services each"
    );
    let lines = [
        (
            "mesh loaded and translated (local mode, from files)",
            "reported",
            ms(load_time),
            "ms",
        ),
        (
            "operator RSS with the mesh loaded",
            "reported",
            rss_loaded,
            "MiB",
        ),
        (
            "operator RSS with every scoped stream connected",
            rss_goal,
            rss_connected,
            "MiB",
        ),
        (
            "streams opened at once until every scope is served",
            "reported",
            ms(all_served),
            "ms",
        ),
        (
            "clusters and virtual hosts a scoped stream holds, mean",
            "bounded by its scope",
            held,
            "resources",
        ),
        (
            "policy edit -> the streams holding the Service receive it, p50",
            "-",
            ms(percentile(&received, 0.5)),
            "ms",
        ),
        (
            "policy edit -> the streams holding the Service receive it, p99",
            "< 1000 ms",
            ms(percentile(&received, 0.99)),
            "ms",
        ),
        (
            "policy edit -> responses to streams not holding the Service",
            "0",
            disturbed as f64,
            "responses",
        ),
    ];
    let mut json = Vec::new();
    for (measure, goal, figure, unit) in lines {
        println!("  {measure:<70} {figure:>10.1} {unit:<9} (goal {goal})");
        json.push(serde_json::json!({"run": run, "measure": measure, "goal": goal, "figure": figure, "unit": unit}));
    }
    append_results(&json)?;
    Ok(())
}
