//! `proxy-status [POD] [--watch]`: per proxy and resource type, SYNCED / STALE / NACKED,
//! from every operator replica's `/debug/proxies`.

use serde::Serialize;
use std::collections::BTreeMap;

use crate::cluster::{find_proxy, Cluster};
use crate::output::{self, age, now, Table};
use crate::{Global, Outcome};
use weir_core::views::proxies::{ProxyView, TypeState};

/// The resource types in the order the table shows them.
const TYPES: [&str; 5] = ["cds", "lds", "eds", "rds", "sds"];

/// `proxy-status` flags.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// One pod (`POD`, `NS/POD` or its node id): its types one per row, with versions,
    /// ages and NACK messages.
    pod: Option<String>,
    /// Print again every 2 seconds until interrupted.
    #[arg(short = 'w', long)]
    watch: bool,
}

/// One proxy as `-o json` prints it.
#[derive(Debug, Serialize)]
struct ProxyStatus<'a> {
    /// The operator replica it is connected to.
    operator: &'a str,
    #[serde(flatten)]
    proxy: &'a ProxyView,
    /// Per type: SYNCED, STALE or NACKED.
    sync: BTreeMap<&'a str, &'static str>,
}

pub async fn run(g: &Global, args: Args) -> Outcome {
    let cluster = Cluster::connect(g).await?;
    loop {
        let healthy = once(g, &args, &cluster).await?;
        if !args.watch {
            return Ok(healthy);
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        if g.output == output::Format::Table {
            println!();
        }
    }
}

async fn once(g: &Global, args: &Args, cluster: &Cluster) -> Outcome {
    let all = cluster.proxies(&g.mesh_namespace).await?;
    let selected: Vec<&(String, ProxyView)> = match &args.pod {
        Some(pod) => vec![find_proxy(&all, pod, &cluster.namespace)?],
        None => all
            .iter()
            .filter(|(_, p)| g.all_namespaces || p.namespace == cluster.namespace)
            .collect(),
    };
    let healthy = selected
        .iter()
        .all(|(_, p)| p.types.values().all(|t| t.nack.is_none()));
    let statuses: Vec<ProxyStatus> = selected
        .iter()
        .map(|(operator, proxy)| ProxyStatus {
            operator,
            proxy,
            sync: proxy
                .types
                .iter()
                .map(|(t, s)| (t.as_str(), s.sync()))
                .collect(),
        })
        .collect();
    if output::structured(g.output, &statuses)? {
        return Ok(healthy);
    }
    let now = now();
    if let Some((operator, proxy)) = args.pod.as_ref().and(selected.first().copied()) {
        println!(
            "{}  connected to {operator} over {} for {}, service account {}, {}",
            proxy.node,
            proxy.protocol,
            age(now.saturating_sub(proxy.connected_at)),
            proxy.service_account,
            proxy.profile
        );
        let mut table = Table::new(&["TYPE", "STATUS", "ACKED", "SERVED", "AGE", "MESSAGE"]);
        for t in TYPES {
            let Some(s) = proxy.types.get(t) else {
                continue;
            };
            table.row(vec![
                t.to_uppercase(),
                output::state(s.sync()),
                s.acked_version.clone().unwrap_or_else(|| "-".into()),
                s.latest_version.clone().unwrap_or_else(|| "-".into()),
                type_age(s, now),
                s.nack.as_deref().map(one_line).unwrap_or_default(),
            ]);
        }
        table.print();
        return Ok(healthy);
    }
    if selected.is_empty() {
        let scope = if g.all_namespaces {
            "any namespace".to_string()
        } else {
            format!("namespace {} (-A for all)", cluster.namespace)
        };
        println!("No proxies connected in {scope}.");
        return Ok(true);
    }
    let mut header = vec!["NAME"];
    header.extend(["CDS", "LDS", "EDS", "RDS", "SDS"]);
    header.extend(["OPERATOR", "VERSION", "AGE"]);
    let mut table = Table::new(&header);
    let mut nacks = Vec::new();
    for (operator, proxy) in &selected {
        let mut row = vec![proxy.node.clone()];
        for t in TYPES {
            row.push(match proxy.types.get(t) {
                Some(s) => output::state(s.sync()),
                None => "-".into(),
            });
            if let Some(message) = proxy.types.get(t).and_then(|s| s.nack.as_deref()) {
                nacks.push(format!(
                    "{} {}: {}",
                    proxy.node,
                    t.to_uppercase(),
                    one_line(message)
                ));
            }
        }
        // The listener version says which configuration the proxy runs.
        let lds = proxy.types.get("lds");
        row.push(operator.clone());
        row.push(
            lds.and_then(|s| s.acked_version.clone())
                .unwrap_or_else(|| "-".into()),
        );
        row.push(lds.map_or("-".into(), |s| type_age(s, now)));
        table.row(row);
    }
    table.print();
    for n in nacks {
        println!("{} {n}", output::state("NACKED"));
    }
    Ok(healthy)
}

/// How long ago the proxy last answered this type (or was sent it).
fn type_age(s: &TypeState, now: u64) -> String {
    s.answered_at
        .or(s.sent_at)
        .map_or("-".into(), |t| age(now.saturating_sub(t)))
}

/// Envoy's multi-line messages on one line.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}
