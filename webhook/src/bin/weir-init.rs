//! `weir-init`: the init container that makes a pod's TCP traffic go through its Envoy
//! sidecar. It programs the pod's `nat` table with one `iptables-restore` call and exits.
//! Needs only NET_ADMIN and NET_RAW. `--dry-run` prints the rules instead.

use anyhow::{bail, Context, Result};
use clap::Parser;
use std::io::Write;
use std::process::{Command, Stdio};
use weir_core::mesh;
use weir_webhook::capture::{self, iptables_rules, CaptureConfig};

#[derive(Parser)]
#[command(
    name = "weir-init",
    version,
    about = "Redirect a pod's TCP traffic through its Envoy sidecar"
)]
struct Args {
    /// Print the iptables-restore input instead of applying it.
    #[arg(long)]
    dry_run: bool,
    /// Envoy's uid and gid; their traffic is never captured.
    #[arg(long, default_value_t = mesh::PROXY_UID)]
    proxy_uid: u32,
    /// Port of Envoy's outbound listener.
    #[arg(long, default_value_t = mesh::OUTBOUND_CAPTURE_PORT)]
    outbound_port: u16,
    /// Port of Envoy's inbound listener.
    #[arg(long, default_value_t = mesh::INBOUND_CAPTURE_PORT)]
    inbound_port: u16,
    /// Inbound ports not to capture, comma-separated.
    #[arg(long, default_value = "")]
    exclude_inbound_ports: String,
    /// Outbound destination ports not to capture, comma-separated.
    #[arg(long, default_value = "")]
    exclude_outbound_ports: String,
    /// Outbound destination IPv4 CIDRs not to capture, comma-separated.
    #[arg(long, default_value = "")]
    exclude_outbound_cidrs: String,
    /// The iptables-restore binary (iptables-save is found beside it by name).
    #[arg(long, default_value = "iptables-restore")]
    iptables_restore: String,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let config = CaptureConfig {
        proxy_uid: args.proxy_uid,
        outbound_port: args.outbound_port,
        inbound_port: args.inbound_port,
        exclude_inbound_ports: capture::parse_ports(
            "--exclude-inbound-ports",
            &args.exclude_inbound_ports,
        )?,
        exclude_outbound_ports: capture::parse_ports(
            "--exclude-outbound-ports",
            &args.exclude_outbound_ports,
        )?,
        exclude_outbound_cidrs: capture::parse_cidrs(
            "--exclude-outbound-cidrs",
            &args.exclude_outbound_cidrs,
        )?,
    };
    if args.dry_run {
        print!("{}", iptables_rules(&config, ""));
        return Ok(());
    }
    // What is in place already (the pod may be restarting in the same network namespace).
    let save = args.iptables_restore.replace("-restore", "-save");
    let current = Command::new(&save)
        .args(["-t", "nat"])
        .output()
        .with_context(|| format!("cannot run {save}: the init image needs iptables"))?;
    if !current.status.success() {
        bail!(
            "{save} failed: {}; the container needs NET_ADMIN and NET_RAW",
            String::from_utf8_lossy(&current.stderr).trim()
        );
    }
    let rules = iptables_rules(&config, &String::from_utf8_lossy(&current.stdout));
    let mut child = Command::new(&args.iptables_restore)
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| {
            format!(
                "cannot run {}: the init image needs iptables (with iptables-restore)",
                args.iptables_restore
            )
        })?;
    child
        .stdin
        .take()
        .context("iptables-restore has no stdin")?
        .write_all(rules.as_bytes())
        .context("writing the rules to iptables-restore")?;
    let status = child.wait()?;
    if !status.success() {
        bail!(
            "{} failed ({status}); the container needs NET_ADMIN and NET_RAW. Rules were:\n{rules}",
            args.iptables_restore
        );
    }
    eprintln!(
        "weir-init: outbound TCP -> :{}, inbound TCP -> :{}",
        config.outbound_port, config.inbound_port
    );
    Ok(())
}
