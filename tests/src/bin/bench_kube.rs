//! `make bench` (part 3): the operator's memory with a large cluster loaded through the
//! Kubernetes watch path, and the same objects as files in local mode.
//!
//! Fills the in-process API server (`weir_tests::fake_api`) with SERVICES Services (default
//! 10,000), one EndpointSlice of ENDPOINTS_PER_SERVICE endpoints each (default 5: 50,000
//! endpoints), the Pods behind them (PODS=0 leaves them out) and POLICIES TrafficPolicies
//! (default 2,000), then starts the release operator as
//! its own process (`weir-operator run`, KUBECONFIG pointing at the fake) and waits until
//! `/status` counts every object. Reports the time to load and the operator's resident
//! memory (VmRSS) and peak (VmHWM) from /proc. Then writes the same objects as YAML files
//! (one per namespace, as a user's manifests would be) and does the same with
//! `weir-operator local`; the two sources should cost the same memory.

use anyhow::{Context, Result};
use serde_json::json;
use std::time::{Duration, Instant};
use weir_core::mesh::INJECTED_ANNOTATION;
use weir_tests::fake_api::FakeApi;
use weir_tests::*;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<()> {
    let services = env_usize("SERVICES", 10_000);
    let per_slice = env_usize("ENDPOINTS_PER_SERVICE", 5);
    let with_pods = env_usize("PODS", 1) != 0;
    let policies = env_usize("POLICIES", 2_000);
    let mut objects: Vec<serde_json::Value> = Vec::new();
    for i in 0..services {
        let ns = format!("ns{}", i % 50);
        let name = format!("svc{i}");
        objects.push(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
            "spec": {"clusterIP": format!("10.{}.{}.{}", 96 + i / 65536, (i / 256) % 256, i % 256),
                "selector": {"app": name}, "type": "ClusterIP",
                "ports": [{"name": "http", "port": 8080, "targetPort": 8080, "protocol": "TCP"}]}}));
        let mut endpoints = Vec::new();
        for j in 0..per_slice {
            let n = i * per_slice + j;
            let pod = format!("{name}-{j}");
            let version = if j == 0 { "v2" } else { "v1" };
            if with_pods {
                objects.push(json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod, "namespace": ns,
                    "labels": {"app": name, "version": version, "pod-template-hash": "7d4f9c8b5"},
                    "annotations": {INJECTED_ANNOTATION: "0.1.0"}},
                "spec": {"containers": [{"name": "app", "image": "registry.example/app:1.2.3",
                    "ports": [{"containerPort": 8080}]}], "nodeName": format!("node{}", n % 100)},
                "status": {"phase": "Running", "podIP": format!("10.{}.{}.{}", 128 + n / 65536, (n / 256) % 256, n % 256)}}));
            }
            endpoints.push(json!({"addresses": [format!("10.{}.{}.{}", 128 + n / 65536, (n / 256) % 256, n % 256)],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": format!("node{}", n % 100),
                "targetRef": {"kind": "Pod", "name": pod, "namespace": ns}}));
        }
        objects.push(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-abcde"), "namespace": ns,
                "labels": {"kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
            "addressType": "IPv4", "endpoints": endpoints,
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}));
    }
    for i in 0..policies.min(services) {
        objects.push(json!({"apiVersion": "weir.dev/v1alpha1", "kind": "TrafficPolicy",
            "metadata": {"name": format!("svc{i}-canary"), "namespace": format!("ns{}", i % 50)},
            "spec": {"targetRef": {"service": format!("svc{i}")},
                "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}],
                "http": [{"destinations": [{"subset": "v1", "weight": 80}, {"subset": "v2", "weight": 20}]}]}}));
    }
    let api = FakeApi::start().await?;
    for object in &objects {
        api.apply(object.clone());
    }
    let scratch = scratch_dir("bench-kube");
    let started = Instant::now();
    let mut operator = api.spawn_operator("weir-bench", &scratch)?;
    let pid = operator.child.id().context("no pid")?;
    let pods = if with_pods { services * per_slice } else { 0 };
    let want = (services, services, services * per_slice, pods);
    let status = format!("http://{}/status", operator.admin);
    eventually(
        "every object in the operator's index",
        Duration::from_secs(300),
        || async {
            let v: serde_json::Value = reqwest::get(&status).await.ok()?.json().await.ok()?;
            let o = &v["objects"];
            let got = (
                o["services"].as_u64()? as usize,
                o["endpoint_slices"].as_u64()? as usize,
                o["endpoints"].as_u64()? as usize,
                o["pods"].as_u64()? as usize,
            );
            (got == want && o["policies"].as_u64()? as usize == policies.min(services))
                .then_some(())
        },
    )
    .await?;
    let loaded = started.elapsed();
    // Let the first translation and status writes finish before reading steady memory.
    let mut rss = proc_status_kib(pid, "VmRSS")?;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        rss = proc_status_kib(pid, "VmRSS")?;
    }
    let peak = proc_status_kib(pid, "VmHWM")?;
    let cpu = cpu_time(pid)?;
    println!(
        "watch path: {services} Services, {services} EndpointSlices, {} endpoints, {} Pods (metadata), {} policies",
        services * per_slice,
        pods,
        policies.min(services)
    );
    println!(
        "  loaded and indexed in {:.2} s (operator CPU {:.2} s)",
        loaded.as_secs_f64(),
        cpu.as_secs_f64()
    );
    println!(
        "  operator RSS {:.1} MiB, peak {:.1} MiB",
        rss as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    operator.child.start_kill()?;
    let _ = operator.child.wait().await;

    // Local mode: the same objects as files.
    let dir = scratch_dir("bench-kube-local");
    let mut by_namespace: std::collections::BTreeMap<String, String> = Default::default();
    for object in &objects {
        let ns = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        let text = by_namespace.entry(ns).or_default();
        text.push_str(&serde_saphyr::to_string(object)?);
        text.push_str("---\n");
    }
    for (ns, text) in &by_namespace {
        write_file(&dir, &format!("{ns}.yaml"), text)?;
    }
    let admin = format!("127.0.0.1:{}", free_port());
    let started = Instant::now();
    let mut local = tokio::process::Command::new(workspace_binary("weir-operator")?)
        .args(["local", "--dir"])
        .arg(&dir)
        .args([
            "--xds-addr",
            &format!("127.0.0.1:{}", free_port()),
            "--admin-addr",
            &admin,
        ])
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .context("starting weir-operator local")?;
    let local_pid = local.id().context("no pid")?;
    let status = format!("http://{admin}/status");
    eventually(
        "local mode to load every object",
        Duration::from_secs(300),
        || async {
            let v: serde_json::Value = reqwest::get(&status).await.ok()?.json().await.ok()?;
            let o = &v["objects"];
            (o["services"].as_u64()? as usize == services
                && o["endpoints"].as_u64()? as usize == services * per_slice
                && o["policies"].as_u64()? as usize == policies.min(services))
            .then_some(())
        },
    )
    .await?;
    let local_loaded = started.elapsed();
    let mut local_rss = proc_status_kib(local_pid, "VmRSS")?;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        local_rss = proc_status_kib(local_pid, "VmRSS")?;
    }
    let local_peak = proc_status_kib(local_pid, "VmHWM")?;
    let local_cpu = cpu_time(local_pid)?;
    println!(
        "local mode, the same objects in {} files:",
        by_namespace.len()
    );
    println!(
        "  ready in {:.2} s (operator CPU {:.2} s; goal <= 2 s at 10,000 Services)",
        local_loaded.as_secs_f64(),
        local_cpu.as_secs_f64()
    );
    println!(
        "  operator RSS {:.1} MiB, peak {:.1} MiB: {:+.1}% against the watch path (goal: within 10%)",
        local_rss as f64 / 1024.0,
        local_peak as f64 / 1024.0,
        (local_rss as f64 - rss as f64) / rss as f64 * 100.0
    );
    local.start_kill()?;
    let figure = |measure: &str, goal: &str, figure: f64, unit: &str| serde_json::json!({"run": "kube", "measure": measure, "goal": goal, "figure": figure, "unit": unit});
    append_results(&[
        figure(
            "watch path: 10k Services, 50k endpoints, 2k policies: RSS",
            "-",
            rss as f64 / 1024.0,
            "MiB",
        ),
        figure(
            "watch path: loaded and indexed",
            "-",
            loaded.as_secs_f64() * 1000.0,
            "ms",
        ),
        figure(
            "local mode, same objects: RSS",
            "within 10% of the watch path",
            local_rss as f64 / 1024.0,
            "MiB",
        ),
        figure(
            "local mode, same objects: ready",
            "<= 2000 ms",
            local_loaded.as_secs_f64() * 1000.0,
            "ms",
        ),
    ])?;
    Ok(())
}
