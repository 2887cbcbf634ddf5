//! `make demo`: two versions of a service, a 90/10 TrafficPolicy, the real `weir-operator`
//! in local mode and a real Envoy; sends traffic, rewrites the policy to 50/50 under the
//! same Envoy, prints the splits and the mesh status, and stops everything.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use weir_tests::*;

const REQUESTS: usize = 500;

#[tokio::main]
async fn main() -> Result<()> {
    let root = workspace_root();
    let operator_bin = workspace_binary("weir-operator")?;
    let demo_dir = root.join("target/weir-demo");
    let _ = std::fs::remove_dir_all(&demo_dir);
    std::fs::create_dir_all(&demo_dir)?;
    let samples = root.join("config/samples");
    for sample in [
        "reviews-service.yaml",
        "trafficpolicy.yaml",
        "meshidentity.yaml",
    ] {
        std::fs::copy(samples.join(sample), demo_dir.join(sample))
            .with_context(|| format!("copying {sample}"))?;
    }

    println!("Weir demo: two versions of reviews, a 90/10 TrafficPolicy, one Envoy.\n");
    let v1 = Backend::start("reviews-v1", Behavior::default()).await?;
    let v2 = Backend::start("reviews-v2", Behavior::default()).await?;
    for (backend, version) in [(&v1, "v1"), (&v2, "v2")] {
        let pod = format!("reviews-{version}");
        write_file(
            &demo_dir,
            &format!("{pod}-endpoints.yaml"),
            &endpoint_yaml(
                "default",
                "reviews",
                &pod,
                &[("app", "reviews"), ("version", version)],
                backend.addr,
                true,
            ),
        )?;
        println!("  backend   {pod} on {}", backend.addr);
    }

    let (xds_port, admin_port) = (free_port(), free_port());
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse()?;
    let operator_log = demo_dir.join("operator.log");
    let mut operator = tokio::process::Command::new(&operator_bin)
        .args(["local", "--dir"])
        .arg(&demo_dir)
        .args([
            "--xds-addr",
            &format!("127.0.0.1:{xds_port}"),
            "--admin-addr",
            &admin.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&operator_log)?)
        .kill_on_drop(true)
        .spawn()
        .context("starting weir-operator")?;
    eventually("the operator to be ready", DEADLINE, || async {
        let resp = reqwest::get(format!("http://{admin}/readyz")).await.ok()?;
        resp.status().is_success().then_some(())
    })
    .await
    .with_context(|| format!("operator log: {}", operator_log.display()))?;
    println!(
        "  operator  weir-operator local --dir {} (xDS 127.0.0.1:{xds_port}, admin {admin})",
        rel(&demo_dir, &root)
    );

    // The bootstrap comes from the documented command.
    let (outbound_port, envoy_admin) = (free_port(), free_port());
    let bootstrap_args = [
        "bootstrap".to_string(),
        "--node-id=demo-client".into(),
        "--namespace=default".into(),
        "--pod=demo-client".into(),
        format!("--xds-addr=127.0.0.1:{xds_port}"),
        "--xds-protocol=delta".into(),
        "--capture=explicit".into(),
        format!("--outbound-port={outbound_port}"),
        format!("--admin-port={envoy_admin}"),
    ];
    let output = std::process::Command::new(&operator_bin)
        .args(&bootstrap_args)
        .output()?;
    if !output.status.success() {
        bail!(
            "weir-operator bootstrap failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let bootstrap = demo_dir.join("envoy/bootstrap.yaml");
    std::fs::create_dir_all(bootstrap.parent().expect("has a parent"))?;
    std::fs::write(&bootstrap, &output.stdout)?;
    let envoy = Envoy::start_from(&bootstrap, "demo-client", outbound_port, envoy_admin).await?;
    let pid = envoy.pid().unwrap_or_default();
    println!(
        "  envoy     pid {pid}, bootstrap from:\n            weir-operator {}",
        bootstrap_args.join(" ")
    );
    println!("            the client sends plain HTTP to 127.0.0.1:{outbound_port} with Host: reviews:9080\n");

    wait_in_sync(admin).await?;
    println!("Sending {REQUESTS} requests to reviews:9080 (policy: v1 90, v2 10):");
    print_split(&envoy.send(REQUESTS, "reviews:9080", "/", &[]).await?);
    let jason = envoy
        .send(20, "reviews:9080", "/", &[("end-user", "jason")])
        .await?;
    println!("  requests with end-user: jason -> {}\n", summary(&jason));

    println!("Rewriting config/samples' policy in the demo directory to 50/50 ...");
    let policy_path = demo_dir.join("trafficpolicy.yaml");
    let policy = std::fs::read_to_string(&policy_path)?
        .replace("{subset: v1, weight: 90}", "{subset: v1, weight: 50}")
        .replace("{subset: v2, weight: 10}", "{subset: v2, weight: 50}");
    let before = route_version(admin).await?;
    let started = Instant::now();
    write_file(&demo_dir, "trafficpolicy.yaml", &policy)?;
    eventually("Envoy to ACK the new routes", DEADLINE, || async {
        let now = route_version(admin).await.ok()?;
        (now != before).then_some(())
    })
    .await?;
    wait_in_sync(admin).await?;
    println!(
        "  from the file write to Envoy's ACK: {} ms; same Envoy process: {}\n",
        started.elapsed().as_millis(),
        if envoy.pid() == Some(pid) {
            format!("yes (pid {pid})")
        } else {
            "NO".into()
        }
    );
    println!("Sending {REQUESTS} requests to reviews:9080 (policy: v1 50, v2 50):");
    print_split(&envoy.send(REQUESTS, "reviews:9080", "/", &[]).await?);

    let status = admin_json(admin, "/status").await?;
    let s = &status["status"];
    println!("\nMesh status (what `kubectl get meshstatus` shows; here from {admin}/status):");
    println!("  PROXIES  INSYNC  ACCEPTED  REJECTED  CERTS  LASTPUSH");
    println!(
        "  {:<8} {:<7} {:<9} {:<9} {:<6} {}",
        s["proxiesConnected"].to_string(),
        s["proxiesInSync"].to_string(),
        s["policiesAccepted"].to_string(),
        s["policiesRejected"].to_string(),
        s["certificatesIssued"].to_string(),
        s["lastPush"].as_str().unwrap_or("-")
    );
    for policy in status["policies"].as_array().into_iter().flatten() {
        let conditions: Vec<String> = policy["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                format!(
                    "{}={} ({})",
                    c["type"].as_str().unwrap_or(""),
                    if c["status"] == true { "True" } else { "False" },
                    c["reason"].as_str().unwrap_or("")
                )
            })
            .collect();
        println!(
            "  TrafficPolicy {}/{}: {}",
            policy["namespace"].as_str().unwrap_or(""),
            policy["name"].as_str().unwrap_or(""),
            conditions.join(", ")
        );
    }

    println!("\nStopping Envoy, the operator and the backends.");
    envoy.stop().await;
    operator.kill().await?;
    drop((v1, v2));
    println!("Done. Logs: {}", rel(&demo_dir, &root));
    Ok(())
}

fn rel(path: &Path, root: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

async fn route_version(admin: std::net::SocketAddr) -> Result<String> {
    let proxies = admin_json(admin, "/debug/proxies").await?;
    Ok(proxies[0]["types"]["rds"]["acked_version"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

async fn wait_in_sync(admin: std::net::SocketAddr) -> Result<()> {
    eventually(
        "the proxy to be in sync",
        Duration::from_secs(30),
        || async {
            let status = admin_json(admin, "/status").await.ok()?;
            (status["status"]["proxiesInSync"] == 1).then_some(())
        },
    )
    .await
}

fn print_split(counts: &std::collections::BTreeMap<String, usize>) {
    for (name, n) in counts {
        let pct = share(counts, name);
        println!(
            "  {name:<12} {n:>4}  {pct:>5.1}%  {}",
            "#".repeat((pct / 2.0).round() as usize)
        );
    }
}

fn summary(counts: &std::collections::BTreeMap<String, usize>) -> String {
    counts
        .iter()
        .map(|(k, v)| format!("{v} to {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}
