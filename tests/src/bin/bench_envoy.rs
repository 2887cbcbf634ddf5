//! `make bench` (part 5): the data plane's side of mesh size. One real Envoy (explicit
//! capture, delta ADS) receives the configuration of meshes of 100, 1,000 and 5,000
//! Services (5 endpoints each); its resident memory is read once every cluster, listener
//! and route table is applied. Every sidecar in today's mesh holds the whole mesh: this is
//! the figure that per-proxy scoping will start from.

use anyhow::Result;
use std::time::Duration;
use weir_core::bootstrap::XdsProtocol;
use weir_tests::*;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

fn mesh_yaml(services: usize) -> Result<String> {
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
        let ips: Vec<(String, std::net::IpAddr)> = (0..5)
            .map(|e| {
                let n = s * 5 + e;
                Ok((
                    format!("{name}-{e}"),
                    format!("10.{}.{}.{}", 1 + n / 62500, (n / 250) % 250, n % 250).parse()?,
                ))
            })
            .collect::<Result<_>>()?;
        let ips: Vec<(&str, std::net::IpAddr)> =
            ips.iter().map(|(n, ip)| (n.as_str(), *ip)).collect();
        mesh.push_str(&slice_yaml(
            "default",
            &name,
            &format!("{name}-x"),
            8080,
            &ips,
        ));
        mesh.push_str("---\n");
    }
    Ok(mesh)
}

#[tokio::main]
async fn main() -> Result<()> {
    println!("Envoy 1.40 resident memory with the whole mesh's configuration (explicit capture, delta ADS):");
    let mut lines = Vec::new();
    for services in [100usize, 1000, 5000] {
        let mesh = Mesh::start().await?;
        mesh.write("mesh.yaml", &mesh_yaml(services)?)?;
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
        let rss = envoy.pid().map(rss_kib).unwrap_or(0);
        println!("  {services:>5} Services: {:>7.1} MiB", rss as f64 / 1024.0);
        lines.push(serde_json::json!({"run": "envoy", "measure": format!("Envoy RSS with {services} Services"), "goal": "reported", "figure": rss as f64 / 1024.0, "unit": "MiB"}));
        envoy.stop().await;
        mesh.plane.stop().await;
    }
    append_results(&lines)?;
    Ok(())
}
