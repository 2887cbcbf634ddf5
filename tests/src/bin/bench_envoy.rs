//! `make bench` (part 5): the data plane's side of mesh size. One real Envoy (explicit
//! capture, delta ADS) receives the configuration of meshes of 100, 1,000 and 5,000
//! Services (5 endpoints each); its resident memory is read once every cluster, listener
//! and route table is applied. Every sidecar in today's mesh holds the whole mesh: this is
//! the figure that per-proxy scoping will start from.

use anyhow::{Context, Result};
use std::time::Duration;
use weir_core::bootstrap::XdsProtocol;
use weir_tests::*;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<()> {
    println!("Envoy 1.40 resident memory with the whole mesh's configuration (explicit capture, delta ADS):");
    let mut lines = Vec::new();
    for services in [100usize, 1000, 5000] {
        let mesh = Mesh::start().await?;
        mesh.write("mesh.yaml", &bench_mesh_yaml(services, 5)?)?;
        let admin = mesh.plane.admin_addr;
        eventually(
            "the operator to load the mesh",
            Duration::from_secs(120),
            || async {
                (admin_json(admin, "/status").await.ok()?["objects"]["services"] == services)
                    .then_some(())
            },
        )
        .await?;
        let envoy = Envoy::start("bench-envoy", mesh.plane.xds_addr, XdsProtocol::Delta).await?;
        // Every cluster warm (EDS applied) and the route table in place.
        eventually(
            "Envoy to apply every cluster",
            Duration::from_secs(300),
            || async {
                let active = envoy.stat("cluster_manager.active_clusters").await.ok()?;
                let warming = envoy.stat("cluster_manager.warming_clusters").await.ok()?;
                (active as usize >= services && warming == 0).then_some(())
            },
        )
        .await?;
        // Envoy frees the previous config's memory lazily; give it a moment, then read.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss = proc_status_kib(envoy.pid().context("Envoy has no pid")?, "VmRSS")?;
        println!("  {services:>5} Services: {:>7.1} MiB", rss as f64 / 1024.0);
        lines.push(serde_json::json!({"run": "envoy", "measure": format!("Envoy RSS with {services} Services"), "goal": "reported", "figure": rss as f64 / 1024.0, "unit": "MiB"}));
        envoy.stop().await;
        mesh.plane.stop().await;
    }
    append_results(&lines)?;
    Ok(())
}
