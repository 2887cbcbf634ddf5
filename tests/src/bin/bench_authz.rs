//! `make bench` (authorization): what access control costs.
//!
//! ```text
//! (a) data plane: one real Envoy, the inbound HTTP chain Weir builds, to a local backend;
//!     the same load without the RBAC filter and with 64 rules that every request is
//!     checked against (none matches, so each request walks all of them): p50/p99 ratio
//! (b) control plane: weir-operator local (own process), a mesh of WEIR_BENCH_SERVICES
//!     Services, WEIR_BENCH_STREAMS transparent delta streams, one pod in ten backing the
//!     Service a policy with 64 authorization rules is written for: time until every
//!     affected stream received and ACKed its new inbound listener, and how many listener
//!     pushes the unaffected streams got (the goal: none); operator RSS per stream
//! ```
//!
//! Figures are printed and appended to `target/bench/results.jsonl`.

use anyhow::{Context, Result};
use envoy_types::pb::envoy::config::bootstrap::v3::{bootstrap, Admin, Bootstrap};
use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{address, socket_address, Address, SocketAddress};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DeltaDiscoveryRequest,
};
use prost::Message;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use weir_core::authorization::{
    Callers, HttpConditions, InboundAuthorization, Mode, PortAuthorization, PortPolicy, PortRule,
};
use weir_core::testing::{mk_policy, mk_service, mk_slice};
use weir_core::translate::chain::{catch_all_virtual_host, HttpChain, Routes};
use weir_core::{ObjectKey, ResourceType};
use weir_tests::*;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RULES: usize = 64;

fn socket(ip: &str, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port.into())),
            ..Default::default()
        })),
    }
}

/// 64 deny rules on paths no request takes, as a policy on the listener's port.
fn rules(port: u16) -> InboundAuthorization {
    InboundAuthorization {
        default: weir_api::DefaultAuthorization::AllowAll,
        default_from: weir_core::authorization::DefaultSource::Mesh,
        ports: vec![PortAuthorization {
            port,
            http: true,
            policies: vec![PortPolicy {
                policy: ObjectKey::new("bench", "authz"),
                mode: Mode::Enforce,
                default_deny: false,
                deny: (0..RULES)
                    .map(|i| PortRule {
                        name: format!("deny[{i}]"),
                        callers: Callers::Any,
                        http: Some(HttpConditions {
                            paths: vec![format!("/blocked/{i}")],
                            methods: vec![weir_core::routing::Method::Post],
                            ..Default::default()
                        }),
                    })
                    .collect(),
                allow: vec![],
            }],
        }],
    }
}

/// A bootstrap with the inbound HTTP chain on `port` to `backend`, RBAC or not.
fn bootstrap(port: u16, admin: u16, backend: SocketAddr, with_rules: bool) -> Bootstrap {
    // As a workload's inbound chain has it: the filter in the chain, the rules on the
    // route table's virtual host.
    let mut host = catch_all_virtual_host("inbound", "backend");
    if with_rules {
        let rbac =
            weir_core::translate::authorization::http_rbac_per_route(&rules(port), "cluster.local")
                .expect("64 rules deny something");
        host.typed_per_filter_config
            .insert(weir_core::mesh::HTTP_RBAC_FILTER.into(), rbac);
    }
    let route = RouteConfiguration {
        name: "inbound".into(),
        virtual_hosts: vec![host],
        ..Default::default()
    };
    let chain = HttpChain::new("bench", Routes::Inline(Box::new(route)))
        .normalize_path()
        .merge_slashes()
        .filters([weir_core::translate::authorization::http_rbac_filter()])
        .build("bench", None, None);
    Bootstrap {
        admin: Some(Admin {
            address: Some(socket("127.0.0.1", admin)),
            ..Default::default()
        }),
        static_resources: Some(bootstrap::StaticResources {
            listeners: vec![Listener {
                name: "inbound".into(),
                address: Some(socket("127.0.0.1", port)),
                filter_chains: vec![chain],
                ..Default::default()
            }],
            clusters: vec![Cluster {
                name: "backend".into(),
                cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                    cluster::DiscoveryType::Static as i32,
                )),
                connect_timeout: Some(weir_core::translate::pb::seconds(1)),
                load_assignment: Some(ClusterLoadAssignment {
                    cluster_name: "backend".into(),
                    endpoints: vec![LocalityLbEndpoints {
                        lb_endpoints: vec![LbEndpoint {
                            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(
                                Endpoint {
                                    address: Some(socket(
                                        &backend.ip().to_string(),
                                        backend.port(),
                                    )),
                                    ..Default::default()
                                },
                            )),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `requests` GETs over `connections` keep-alive connections: every latency, sorted.
async fn load(port: u16, connections: usize, requests: usize) -> Result<Vec<Duration>> {
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(requests)));
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (latencies, next) = (latencies.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()?;
            let url = format!("http://127.0.0.1:{port}/api/orders");
            while next.fetch_add(1, Ordering::Relaxed) < requests {
                let started = Instant::now();
                let response = client.get(&url).send().await?;
                anyhow::ensure!(response.status() == 200, "status {}", response.status());
                response.bytes().await?;
                latencies.lock().expect("latencies").push(started.elapsed());
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let mut all = std::mem::take(&mut *latencies.lock().expect("latencies"));
    all.sort_unstable();
    Ok(all)
}

async fn data_plane(lines: &mut Vec<serde_json::Value>) -> Result<()> {
    let backend = backend::Backend::start("bench-backend", Default::default()).await?;
    let mut figures = Vec::new();
    for with_rules in [false, true] {
        let dir = scratch_dir(if with_rules {
            "bench-authz-64"
        } else {
            "bench-authz-0"
        });
        let (port, admin) = (free_port(), free_port());
        let path = dir.join("bootstrap.pb");
        std::fs::write(
            &path,
            bootstrap(port, admin, backend.addr, with_rules).encode_to_vec(),
        )?;
        let envoy = Envoy::start_from(&path, "bench-authz", port, admin).await?;
        load(port, 4, 2_000).await?; // warm-up
        let latencies = load(port, 4, 20_000).await?;
        let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
        let rules = if with_rules { RULES } else { 0 };
        println!(
            "  {rules:>2} rules: p50 {:.3} ms, p99 {:.3} ms ({} requests, 4 connections)",
            ms(p50),
            ms(p99),
            latencies.len()
        );
        if with_rules {
            let denied = envoy.stat("http.bench.rbac.denied").await.unwrap_or(0);
            anyhow::ensure!(denied == 0, "the bench requests must all pass the rules");
        }
        figures.push((p50, p99));
        envoy.stop().await;
    }
    let p50_ratio = figures[1].0.as_secs_f64() / figures[0].0.as_secs_f64();
    let p99_ratio = figures[1].1.as_secs_f64() / figures[0].1.as_secs_f64();
    println!("  64 rules vs none: p50 x{p50_ratio:.2}, p99 x{p99_ratio:.2}");
    lines.push(serde_json::json!({"run": "authz", "measure": "request latency p50, 64 rules / none", "goal": "reported", "figure": p50_ratio, "unit": "x"}));
    lines.push(serde_json::json!({"run": "authz", "measure": "request latency p99, 64 rules / none", "goal": "reported", "figure": p99_ratio, "unit": "x"}));
    Ok(())
}

/// One transparent delta stream: CDS and LDS, everything ACKed; counts the listener
/// responses received after `edited` is set.
async fn client(
    i: usize,
    channel: tonic::transport::Channel,
    edited: Arc<AtomicBool>,
    after_edit: Arc<Vec<AtomicUsize>>,
    acked_at: Arc<Mutex<Vec<Option<Instant>>>>,
    ready: Arc<AtomicUsize>,
) -> Result<()> {
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(16);
    let mut ads =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 << 20);
    let req = |t: ResourceType, nonce: String| xds_client::delta_request(t, Vec::new(), nonce);
    let mut first = req(ResourceType::Cluster, String::new());
    first.node = Some(xds_client::node("default", &format!("bench-{i}")));
    tx.send(first).await?;
    tx.send(req(ResourceType::Listener, String::new())).await?;
    let mut inbound = ads
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut listeners_seen = false;
    while let Some(resp) = inbound.message().await? {
        let t = ResourceType::from_type_url(&resp.type_url).context("unknown type")?;
        if t == ResourceType::Listener {
            if !listeners_seen {
                listeners_seen = true;
                ready.fetch_add(1, Ordering::Relaxed);
            } else if edited.load(Ordering::Relaxed) {
                after_edit[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        tx.send(req(t, resp.nonce.clone())).await?;
        if t == ResourceType::Listener && edited.load(Ordering::Relaxed) {
            acked_at.lock().expect("acks")[i] = Some(Instant::now());
        }
    }
    Ok(())
}

async fn control_plane(lines: &mut Vec<serde_json::Value>) -> Result<()> {
    let streams = env_usize("WEIR_BENCH_STREAMS", 2000);
    let services = env_usize("WEIR_BENCH_SERVICES", 1000);
    let affected = streams / 10;
    let dir = scratch_dir("bench-authz-cp");
    let mut mesh = bench_mesh_yaml(services, 5)?;
    // The target Service, backed by pods bench-0 .. bench-<affected - 1>.
    let target = mk_service("default", "authz-target", "10.99.0.1", &[8080]);
    let pods: Vec<(String, String)> = (0..affected)
        .map(|i| {
            (
                format!("10.98.{}.{}", i / 250, i % 250 + 1),
                format!("bench-{i}"),
            )
        })
        .collect();
    let refs: Vec<(&str, &str)> = pods.iter().map(|(a, p)| (a.as_str(), p.as_str())).collect();
    let slice = mk_slice(
        "default",
        "authz-target-1",
        "authz-target",
        "http",
        8080,
        &refs,
    );
    for doc in [to_yaml(&[target]), to_yaml(&[slice])] {
        mesh.push_str("\n---\n");
        mesh.push_str(&doc);
    }
    write_file(&dir, "mesh.yaml", &mesh)?;

    // The operator in its own process (the release binary, local mode), so that its memory
    // and CPU are read apart from the clients'.
    let (mut operator, xds, admin) = spawn_local_operator(&dir)?;
    let pid = operator.id().context("operator pid")?;
    eventually(
        "the operator to load the mesh",
        Duration::from_secs(120),
        || async {
            (admin_json(admin, "/status").await.ok()?["objects"]["services"] == services + 1)
                .then_some(())
        },
    )
    .await?;
    let rss_before = proc_status_kib(pid, "VmRSS")?;
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{xds}"))?;
    let edited = Arc::new(AtomicBool::new(false));
    let after_edit: Arc<Vec<AtomicUsize>> =
        Arc::new((0..streams).map(|_| AtomicUsize::new(0)).collect());
    let acked_at = Arc::new(Mutex::new(vec![None; streams]));
    let ready = Arc::new(AtomicUsize::new(0));
    // Set before the operator is stopped: streams ending then are not errors.
    let stopping = Arc::new(AtomicBool::new(false));
    for i in 0..streams {
        let channel = endpoint.connect_lazy();
        let (edited, after_edit, acked_at, ready) = (
            edited.clone(),
            after_edit.clone(),
            acked_at.clone(),
            ready.clone(),
        );
        let stopping = stopping.clone();
        tokio::spawn(async move {
            let result = client(i, channel, edited, after_edit, acked_at, ready).await;
            match result {
                Err(err) if !stopping.load(Ordering::Relaxed) => eprintln!("stream {i}: {err:#}"),
                _ => {}
            }
        });
    }
    eventually(
        "every stream to get its listeners",
        Duration::from_secs(300),
        || async { (ready.load(Ordering::Relaxed) == streams).then_some(()) },
    )
    .await?;
    // Settle: the initial pushes done, then nothing is counted before the edit.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_loaded = proc_status_kib(pid, "VmRSS")?;

    let mut spec = weir_api::TrafficPolicySpec {
        target_ref: weir_api::TargetRef {
            service: "authz-target".into(),
            port: None,
        },
        ..Default::default()
    };
    spec.authorization = Some(weir_api::Authorization {
        mode: weir_api::AuthorizationMode::Enforce,
        default_deny: true,
        allow: (0..RULES)
            .map(|i| weir_api::AuthorizationRule {
                service_accounts: vec![format!("ns{i}/caller")],
                paths: vec![format!("/api/{i}")],
                ..Default::default()
            })
            .collect(),
        deny: vec![],
    });
    let policy = to_yaml(&[mk_policy("default", "authz", spec)]);
    let started = Instant::now();
    edited.store(true, Ordering::Relaxed);
    write_file(&dir, "authz.yaml", &policy)?;
    eventually(
        "every affected stream to ACK its new listener",
        Duration::from_secs(120),
        || async {
            let acks = acked_at.lock().expect("acks");
            acks[..affected].iter().all(Option::is_some).then_some(())
        },
    )
    .await?;
    let all_acked = {
        let acks = acked_at.lock().expect("acks");
        acks[..affected]
            .iter()
            .filter_map(|a| *a)
            .max()
            .context("no ack")?
            .duration_since(started)
    };
    // Anything the unaffected streams would get has had time to arrive.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let unaffected_pushes: usize = after_edit[affected..]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum();
    let per_stream = (rss_loaded.saturating_sub(rss_before)) as f64 / streams as f64;
    println!(
        "  policy with {RULES} rules, {streams} streams ({affected} affected): every affected stream ACKed in {:.0} ms; listener pushes to the {} unaffected: {unaffected_pushes}",
        ms(all_acked),
        streams - affected
    );
    println!("  operator RSS: {:.1} MiB loaded, {:.1} MiB with the streams ({per_stream:.1} KiB per stream)", rss_before as f64 / 1024.0, rss_loaded as f64 / 1024.0);
    lines.push(serde_json::json!({"run": "authz", "measure": format!("authorization edit -> every affected proxy ACKed ({affected} of {streams})"), "goal": "reported", "figure": ms(all_acked), "unit": "ms"}));
    lines.push(serde_json::json!({"run": "authz", "measure": "authorization edit -> listener pushes to unaffected proxies", "goal": "0", "figure": unaffected_pushes, "unit": "pushes"}));
    lines.push(serde_json::json!({"run": "authz", "measure": "operator RSS per transparent stream", "goal": "<= 50", "figure": per_stream, "unit": "KiB"}));
    stopping.store(true, Ordering::Relaxed);
    operator.kill().await.ok();
    anyhow::ensure!(
        unaffected_pushes == 0,
        "unaffected proxies were pushed listeners"
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut lines = Vec::new();
    println!("Authorization: request latency through the inbound HTTP chain (real Envoy 1.40):");
    data_plane(&mut lines).await?;
    println!("Authorization: a policy edit at scale (weir-operator local, simulated transparent proxies):");
    control_plane(&mut lines).await?;
    append_results(&lines)?;
    Ok(())
}
