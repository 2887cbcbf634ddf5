//! `make bench` (part 2): the xDS server at mesh scale, measured from outside the operator.
//!
//! ```text
//! mesh files (Services x endpoints, policies, a churn file) --> weir-operator local (own process)
//!   N simulated Envoys, all opened at once (an operator restart): wildcard CDS + LDS,
//!   EDS for every cluster, RDS for the route table, ACK everything, reconnect on error
//!   --> storm time, resets, RSS per stream --> one policy edit: p50/p99 to receive, all ACKed
//!   --> churn: endpoint changes at a fixed rate: delivery p99, non-EDS pushes, CPU, RSS growth
//! ```
//!
//! Each figure is printed and appended to `target/bench/results.jsonl` for
//! `weir-bench-report` (the table and the plots). Settings come from the environment:
//! `WEIR_BENCH_STREAMS` (2000), `WEIR_BENCH_PROTOCOL` (delta or sotw), `WEIR_BENCH_SERVICES`
//! (1000), `WEIR_BENCH_ENDPOINTS` (5 per Service), `WEIR_BENCH_POLICIES` (200),
//! `WEIR_BENCH_CHURN_SECS` (60; 0 skips), `WEIR_BENCH_CHURN_RATE` (100 changes/s).

use anyhow::{Context, Result};
use envoy_types::pb::envoy::config::core::v3::address;
use envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint, ClusterLoadAssignment};
use envoy_types::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DeltaDiscoveryRequest,
    DiscoveryRequest,
};
use prost::Message;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use weir_core::mesh::OUTBOUND_CAPTURE_PORT;
use weir_core::ResourceType;
use weir_tests::*;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Services whose endpoints change during the churn phase, in a file of their own.
const CHURN_SERVICES: usize = 10;

/// What the clients report back to the bench.
#[derive(Default)]
struct Marks {
    /// When the policy was changed, and when each client first saw a new route table.
    changed_at: Option<Instant>,
    received: Vec<Duration>,
    /// When each churn change (by sequence number) was written, and each delivery's delay.
    churn_written: Vec<Instant>,
    churn_delays: Vec<Duration>,
}

/// Counters the clients bump without a lock.
#[derive(Default)]
struct Counters {
    /// Streams that ended with an error while the bench still needed them (then reopened).
    resets: AtomicUsize,
    /// Responses other than EDS received while endpoints churn.
    non_eds_during_churn: AtomicU64,
    eds_during_churn: AtomicU64,
}

struct Shared {
    marks: Mutex<Marks>,
    counters: Counters,
    churning: AtomicBool,
    done: AtomicBool,
}

/// The churn sequence number carried by an EDS resource of a churn Service: its first
/// endpoint's address is 10.200.(seq / 250).(seq % 250).
fn churn_seq(resource: &[u8]) -> Option<usize> {
    let cla = ClusterLoadAssignment::decode(resource).ok()?;
    let endpoint = cla.endpoints.first()?.lb_endpoints.first()?;
    let Some(lb_endpoint::HostIdentifier::Endpoint(e)) = &endpoint.host_identifier else {
        return None;
    };
    let Some(address::Address::SocketAddress(sa)) = e.address.as_ref()?.address.as_ref() else {
        return None;
    };
    let octets: Vec<usize> = sa
        .address
        .split('.')
        .filter_map(|o| o.parse().ok())
        .collect();
    (octets.len() == 4 && octets[0] == 10 && octets[1] == 200).then(|| octets[2] * 250 + octets[3])
}

impl Shared {
    fn route_version_seen(&self, first: &mut Option<String>, seen: &mut bool, version: String) {
        match first {
            None => *first = Some(version),
            Some(v) if *v != version && !*seen => {
                *seen = true;
                let mut m = self.marks.lock().expect("marks lock");
                if let Some(at) = m.changed_at {
                    m.received.push(at.elapsed());
                }
            }
            _ => {}
        }
    }

    fn count_during_churn(&self, t: ResourceType) {
        if self.churning.load(Ordering::Relaxed) {
            let counter = if t == ResourceType::Endpoint {
                &self.counters.eds_during_churn
            } else {
                &self.counters.non_eds_during_churn
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn churn_delivered(&self, seq: usize) {
        let mut m = self.marks.lock().expect("marks lock");
        if let Some(at) = m.churn_written.get(seq).copied() {
            m.churn_delays.push(at.elapsed());
        }
    }
}

/// One delta stream, as Envoy runs it.
async fn delta_client(i: usize, channel: tonic::transport::Channel, shared: &Shared) -> Result<()> {
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(16);
    let mut ads =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 << 20);
    let req = xds_client::delta_request;
    let mut first = req(ResourceType::Cluster, vec![], String::new());
    first.node = Some(xds_client::explicit_node(
        "default",
        &format!("bench-{i}"),
        OUTBOUND_CAPTURE_PORT,
    ));
    tx.send(first).await?;
    tx.send(req(ResourceType::Listener, vec![], String::new()))
        .await?;
    let mut inbound = ads
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let (mut first_routes, mut seen_change) = (None, false);
    while let Some(resp) = inbound.message().await? {
        let t = ResourceType::from_type_url(&resp.type_url).context("unknown type")?;
        shared.count_during_churn(t);
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
                let version = resp.resources.first().map(|r| r.version.clone());
                shared.route_version_seen(
                    &mut first_routes,
                    &mut seen_change,
                    version.unwrap_or_default(),
                );
            }
            ResourceType::Endpoint if shared.churning.load(Ordering::Relaxed) => {
                for r in resp.resources.iter().filter(|r| r.name.contains("churn")) {
                    if let Some(seq) = r.resource.as_ref().and_then(|a| churn_seq(&a.value)) {
                        shared.churn_delivered(seq);
                    }
                }
            }
            _ => {}
        }
        tx.send(ack).await?;
    }
    Ok(())
}

/// One state-of-the-world stream, as Envoy runs it.
async fn sotw_client(i: usize, channel: tonic::transport::Channel, shared: &Shared) -> Result<()> {
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(16);
    let mut ads =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 << 20);
    let req =
        |t: ResourceType, names: Vec<String>, version: String, nonce: String| DiscoveryRequest {
            type_url: t.type_url().to_string(),
            resource_names: names,
            version_info: version,
            response_nonce: nonce,
            ..Default::default()
        };
    let mut first = req(ResourceType::Cluster, vec![], String::new(), String::new());
    first.node = Some(xds_client::explicit_node(
        "default",
        &format!("bench-{i}"),
        OUTBOUND_CAPTURE_PORT,
    ));
    tx.send(first).await?;
    tx.send(req(
        ResourceType::Listener,
        vec![],
        String::new(),
        String::new(),
    ))
    .await?;
    let mut inbound = ads
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let (mut first_routes, mut seen_change) = (None, false);
    let mut eds_names: Vec<String> = Vec::new();
    while let Some(resp) = inbound.message().await? {
        let t = ResourceType::from_type_url(&resp.type_url).context("unknown type")?;
        shared.count_during_churn(t);
        let names = match t {
            ResourceType::Endpoint => eds_names.clone(),
            ResourceType::Route => vec!["outbound".into()],
            _ => vec![],
        };
        tx.send(req(t, names, resp.version_info.clone(), resp.nonce.clone()))
            .await?;
        match t {
            ResourceType::Cluster => {
                let mut names = Vec::with_capacity(resp.resources.len());
                for r in &resp.resources {
                    let c = envoy_types::pb::envoy::config::cluster::v3::Cluster::decode(
                        r.value.as_slice(),
                    )?;
                    names.push(c.name);
                }
                if names != eds_names {
                    eds_names = names;
                    tx.send(req(
                        ResourceType::Endpoint,
                        eds_names.clone(),
                        String::new(),
                        String::new(),
                    ))
                    .await?;
                }
            }
            ResourceType::Listener if first_routes.is_none() && !seen_change => {
                tx.send(req(
                    ResourceType::Route,
                    vec!["outbound".into()],
                    String::new(),
                    String::new(),
                ))
                .await?;
                first_routes = Some(String::new());
            }
            ResourceType::Route => {
                if first_routes.as_deref() == Some("") {
                    first_routes = None;
                }
                shared.route_version_seen(
                    &mut first_routes,
                    &mut seen_change,
                    resp.version_info.clone(),
                );
            }
            _ => {}
        }
    }
    Ok(())
}

/// A client that reopens its stream after an error, with Envoy's default backoff
/// (0.5 s base, jittered, up to 5 s here), until the bench is done.
async fn client(i: usize, endpoint: tonic::transport::Endpoint, sotw: bool, shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let channel = endpoint.connect_lazy();
        let result = if sotw {
            sotw_client(i, channel, &shared).await
        } else {
            delta_client(i, channel, &shared).await
        };
        if shared.done.load(Ordering::SeqCst) {
            return;
        }
        shared.counters.resets.fetch_add(1, Ordering::Relaxed);
        if let Err(err) = result {
            eprintln!("client {i}: {err:#} (reconnecting)");
        }
        let jitter = Duration::from_millis((i as u64 * 7919) % 500);
        tokio::time::sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The mesh as files: Services with their endpoints, policies, and the churn Services.
fn write_mesh(
    dir: &std::path::Path,
    services: usize,
    endpoints: usize,
    policies: usize,
) -> Result<()> {
    write_file(dir, "mesh.yaml", &bench_mesh_yaml(services, endpoints)?)?;
    let mut text = String::new();
    for p in 1..policies.min(services) {
        text.push_str(&split_policy_yaml(
            &format!("svc{p}"),
            &format!("svc{p}"),
            &[("v1", 90), ("v2", 10)],
        ));
        text.push_str("---\n");
    }
    write_file(dir, "policies.yaml", &text)?;
    let mut churn = String::new();
    for c in 0..CHURN_SERVICES {
        churn.push_str(&service_yaml(
            "default",
            &format!("churn{c}"),
            &format!("10.97.0.{c}"),
            8080,
        ));
        churn.push_str("---\n");
    }
    write_file(dir, "churn-services.yaml", &churn)?;
    write_churn(dir, 0, &mut [0; CHURN_SERVICES])
}

/// The churn Services' endpoints after change `seq`: change `seq` moved the first endpoint
/// of Service `seq % CHURN_SERVICES` to the address that encodes `seq`; `last` keeps every
/// Service's latest change.
fn write_churn(
    dir: &std::path::Path,
    seq: usize,
    last: &mut [usize; CHURN_SERVICES],
) -> Result<()> {
    last[seq % CHURN_SERVICES] = seq;
    let mut text = String::new();
    for (c, n) in last.iter().enumerate() {
        let ip: std::net::IpAddr = format!("10.200.{}.{}", n / 250, n % 250).parse()?;
        let name = format!("churn{c}");
        text.push_str(&slice_yaml(
            "default",
            &name,
            &format!("{name}-x"),
            8080,
            &[(&format!("{name}-0"), ip)],
        ));
        text.push_str("---\n");
    }
    write_file(dir, "churn-endpoints.yaml", &text)
}

/// Figures, printed and kept for the report.
struct Results {
    run: String,
    lines: Vec<serde_json::Value>,
}

impl Results {
    fn add(&mut self, measure: &str, goal: &str, figure: f64, unit: &str) {
        println!("  {measure:<58} {figure:>10.1} {unit:<8} (goal: {goal})");
        self.lines.push(serde_json::json!({
            "run": self.run, "measure": measure, "goal": goal, "figure": figure, "unit": unit,
        }));
    }

    fn save(&self) -> Result<()> {
        append_results(&self.lines)
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let streams = env_usize("WEIR_BENCH_STREAMS", 2000);
    let services = env_usize("WEIR_BENCH_SERVICES", 1000);
    let endpoints = env_usize("WEIR_BENCH_ENDPOINTS", 5);
    let policies = env_usize("WEIR_BENCH_POLICIES", 200);
    let churn_secs = env_usize("WEIR_BENCH_CHURN_SECS", 60);
    let churn_rate = env_usize("WEIR_BENCH_CHURN_RATE", 100).max(1);
    let sotw = std::env::var("WEIR_BENCH_PROTOCOL").is_ok_and(|p| p == "sotw");
    let protocol = if sotw { "sotw" } else { "delta" };

    let dir = scratch_dir("bench-xds");
    write_mesh(&dir, services, endpoints, policies)?;
    let policy = |w: u32| split_policy_yaml("svc0", "svc0", &[("v1", w), ("v2", 100 - w)]);
    write_file(&dir, "policy.yaml", &policy(100))?;
    let total_services = services + CHURN_SERVICES;

    // The operator in its own process (the release binary, local mode), so that its memory
    // and CPU are read apart from the clients'.
    let (mut operator, xds, admin) = spawn_local_operator(&dir)?;
    let pid = operator.id().context("operator pid")?;
    eventually(
        "the operator to load the mesh",
        Duration::from_secs(120),
        || async { (status(admin).await?["objects"]["services"] == total_services).then_some(()) },
    )
    .await?;
    let rss_before = proc_status_kib(pid, "VmRSS")?;

    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{xds}"))?;
    let shared = Arc::new(Shared {
        marks: Mutex::new(Marks::default()),
        counters: Counters::default(),
        churning: AtomicBool::new(false),
        done: AtomicBool::new(false),
    });
    // Every stream opened at once, on a connection of its own (as Envoys do after an
    // operator restart).
    let started = Instant::now();
    let storm_cpu_start = cpu_time(pid)?;
    for i in 0..streams {
        tokio::spawn(client(i, endpoint.clone(), sotw, shared.clone()));
    }
    let in_sync = || async {
        let s = status(admin).await?;
        (s["status"]["proxiesConnected"] == streams && s["status"]["proxiesInSync"] == streams)
            .then_some(())
    };
    eventually(
        "every stream to ACK its initial config",
        Duration::from_secs(300),
        in_sync,
    )
    .await?;
    let storm = started.elapsed();
    let storm_cpu = cpu_time(pid)?.saturating_sub(storm_cpu_start);
    let resets_in_storm = shared.counters.resets.load(Ordering::Relaxed);
    // Let the allocator return what the initial pushes used transiently.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_after = proc_status_kib(pid, "VmRSS")?;

    let changed_at = Instant::now();
    shared.marks.lock().expect("marks lock").changed_at = Some(changed_at);
    write_file(&dir, "policy.yaml", &policy(50))?;
    eventually(
        "every stream to receive the new routes",
        Duration::from_secs(120),
        || {
            let shared = shared.clone();
            async move { (shared.marks.lock().ok()?.received.len() == streams).then_some(()) }
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
    let mut received = shared.marks.lock().expect("marks lock").received.clone();
    received.sort();

    let run = format!("{protocol}-{streams}");
    println!(
        "xDS at scale ({run}): {services} Services x {endpoints} endpoints, {policies} policies, {streams} {protocol} streams, operator in its own process"
    );
    let mut results = Results {
        run,
        lines: Vec::new(),
    };
    let per_stream = rss_after.saturating_sub(rss_before) as f64 / streams as f64;
    results.add(
        "operator RSS with the mesh loaded",
        "-",
        rss_before as f64 / 1024.0,
        "MiB",
    );
    results.add(
        "operator RSS with every stream connected",
        "<= 150 MiB at 2,000",
        rss_after as f64 / 1024.0,
        "MiB",
    );
    results.add(
        "operator RSS growth per connected stream",
        "<= 50 KiB",
        per_stream,
        "KiB",
    );
    results.add(
        "reconnect storm: all streams opened at once until the last is in sync",
        "reported",
        ms(storm),
        "ms",
    );
    results.add(
        "reconnect storm: operator CPU time (the clients share the 2 cores)",
        "reported",
        ms(storm_cpu),
        "ms",
    );
    results.add(
        "reconnect storm: streams reset and reopened",
        "0",
        resets_in_storm as f64,
        "streams",
    );
    results.add(
        "policy edit -> new routes received, p50",
        "-",
        ms(percentile(&received, 0.5)),
        "ms",
    );
    results.add(
        "policy edit -> new routes received, p99",
        "< 1000 ms at 5,000",
        ms(percentile(&received, 0.99)),
        "ms",
    );
    results.add(
        "policy edit -> every stream ACKed",
        "< 1500 ms at 5,000",
        ms(all_acked),
        "ms",
    );

    if churn_secs > 0 && !sotw {
        let rss_start = proc_status_kib(pid, "VmRSS")?;
        let cpu_start = cpu_time(pid)?;
        shared.churning.store(true, Ordering::SeqCst);
        let churn_started = Instant::now();
        let changes = churn_secs * churn_rate;
        let mut ticker = tokio::time::interval(Duration::from_secs(1) / churn_rate as u32);
        let mut last = [0; CHURN_SERVICES];
        for seq in 1..=changes {
            ticker.tick().await;
            shared
                .marks
                .lock()
                .expect("marks lock")
                .churn_written
                .resize(seq + 1, Instant::now());
            write_churn(&dir, seq, &mut last)?;
        }
        // The last changes' deliveries, then the figures.
        tokio::time::sleep(Duration::from_secs(1)).await;
        shared.churning.store(false, Ordering::SeqCst);
        let elapsed = churn_started.elapsed();
        let cpu = cpu_time(pid)?.saturating_sub(cpu_start);
        let rss_end = proc_status_kib(pid, "VmRSS")?;
        let mut delays = std::mem::take(&mut shared.marks.lock().expect("marks lock").churn_delays);
        delays.sort();
        results.add(
            &format!("churn {churn_rate}/s for {churn_secs} s: deliveries counted"),
            "-",
            delays.len() as f64,
            "pushes",
        );
        results.add(
            "churn: endpoint change -> EDS received, p50",
            "-",
            ms(percentile(&delays, 0.5)),
            "ms",
        );
        results.add(
            "churn: endpoint change -> EDS received, p99",
            "< 200 ms",
            ms(percentile(&delays, 0.99)),
            "ms",
        );
        results.add(
            "churn: pushes other than EDS",
            "0",
            shared.counters.non_eds_during_churn.load(Ordering::Relaxed) as f64,
            "pushes",
        );
        results.add(
            "churn: operator CPU",
            "< 1 core",
            cpu.as_secs_f64() / elapsed.as_secs_f64(),
            "cores",
        );
        results.add(
            "churn: operator RSS growth over the run",
            "~0",
            (rss_end as f64 - rss_start as f64) / 1024.0,
            "MiB",
        );
    }
    results.save()?;

    shared.done.store(true, Ordering::SeqCst);
    // SIGTERM, as a graceful stop (a heap-profiling build writes its profile then).
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    if tokio::time::timeout(Duration::from_secs(60), operator.wait())
        .await
        .is_err()
    {
        operator.kill().await?;
    }
    std::process::exit(0)
}
