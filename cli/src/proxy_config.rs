//! `proxy-config listeners|routes|clusters|endpoints|secrets POD`: what the operator serves
//! a proxy (`/debug/config?node=ID&bodies=true` of the replica it is connected to), as a
//! table or as the full resources in protobuf JSON (`-o json|yaml`). Secrets come without
//! their private key: the operator strips it before they leave it.

use anyhow::{bail, Context};
use base64::Engine;
use prost::Message;
use serde::Serialize;

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster as EnvoyCluster};
use envoy_types::pb::envoy::config::core::v3::{address, socket_address, Address, HealthStatus};
use envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint, ClusterLoadAssignment};
use envoy_types::pb::envoy::config::listener::v3::{filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, route, route_action::ClusterSpecifier,
    route_match::PathSpecifier, RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, HttpConnectionManager,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    secret, Secret, UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use weir_core::views::config::{ConfigView, ServedResource};
use weir_core::ResourceType;

use crate::cluster::{find_proxy, Cluster};
use crate::output::{self, Table};
use crate::{Global, Outcome};

/// What to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum What {
    /// Listeners and their filter chains.
    Listeners,
    /// Route tables: virtual hosts and routes.
    Routes,
    /// Clusters.
    Clusters,
    /// Endpoints of every cluster.
    Endpoints,
    /// Certificates and trust bundles (no private keys).
    Secrets,
}

impl What {
    fn resource_type(self) -> ResourceType {
        match self {
            What::Listeners => ResourceType::Listener,
            What::Routes => ResourceType::Route,
            What::Clusters => ResourceType::Cluster,
            What::Endpoints => ResourceType::Endpoint,
            What::Secrets => ResourceType::Secret,
        }
    }
}

/// `proxy-config` flags.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to show.
    #[arg(value_enum)]
    what: What,
    /// The pod (`POD`, `NS/POD` or its node id).
    pod: String,
    /// Only resources whose name contains this.
    #[arg(long)]
    name: Option<String>,
}

/// `-o json|yaml`: the served resources in full.
#[derive(Debug, Serialize)]
struct Served {
    node: String,
    #[serde(rename = "type")]
    type_: &'static str,
    version: String,
    resources: Vec<FullResource>,
}

#[derive(Debug, Serialize)]
struct FullResource {
    name: String,
    version: String,
    config: serde_json::Value,
}

pub async fn run(g: &Global, args: Args) -> Outcome {
    let cluster = Cluster::connect(g).await?;
    let proxies = cluster.proxies(&g.mesh_namespace).await?;
    let (operator, proxy) = find_proxy(&proxies, &args.pod, &cluster.namespace)?;
    let pods = cluster.operator_pods(&g.mesh_namespace).await?;
    let operator_pod = pods
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some(operator.as_str()))
        .context("the operator pod left")?;
    let node: String = proxy
        .node
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let view: ConfigView = cluster
        .admin_json(
            operator_pod,
            &format!("/debug/config?node={node}&bodies=true"),
        )
        .await?;
    let t = args.what.resource_type();
    let served = view
        .served
        .get(t.short())
        .with_context(|| format!("the operator did not report {}", t.short()))?;
    let mut resources: Vec<(String, Vec<u8>)> = Vec::new();
    for r in &served.resources {
        if args
            .name
            .as_ref()
            .is_some_and(|n| !r.name.contains(n.as_str()))
        {
            continue;
        }
        resources.push((r.name.clone(), body(r)?));
    }
    if g.output != output::Format::Table {
        let full = Served {
            node: view.node.clone(),
            type_: t.short(),
            version: served.version.clone(),
            resources: served
                .resources
                .iter()
                .filter(|r| {
                    args.name
                        .as_ref()
                        .is_none_or(|n| r.name.contains(n.as_str()))
                })
                .zip(&resources)
                .map(|(r, (_, bytes))| {
                    Ok(FullResource {
                        name: r.name.clone(),
                        version: r.version.clone(),
                        config: crate::envoy_json::to_json(t.type_url(), bytes)?,
                    })
                })
                .collect::<anyhow::Result<_>>()?,
        };
        output::structured(g.output, &full)?;
        return Ok(true);
    }
    // A scoped proxy's route tables get their virtual hosts over VHDS.
    let mut vhosts: Vec<(String, Vec<u8>)> = Vec::new();
    if let (What::Routes, Some(vhds)) = (
        args.what,
        view.served.get(ResourceType::VirtualHost.short()),
    ) {
        for r in &vhds.resources {
            if args
                .name
                .as_ref()
                .is_none_or(|n| r.name.contains(n.as_str()))
            {
                vhosts.push((r.name.clone(), body(r)?));
            }
        }
    }
    let table = match args.what {
        What::Listeners => listeners(&resources)?,
        What::Routes => routes(&resources, &vhosts)?,
        What::Clusters => clusters(&resources)?,
        What::Endpoints => endpoints(&resources)?,
        What::Secrets => secrets(&resources)?,
    };
    if table.is_empty() {
        println!("No {} served to {}.", t.short(), view.node);
    } else {
        table.print();
    }
    Ok(true)
}

fn body(r: &ServedResource) -> anyhow::Result<Vec<u8>> {
    let Some(b64) = &r.body else {
        bail!(
            "the operator sent {} without its body: is it older than this plugin?",
            r.name
        )
    };
    Ok(base64::engine::general_purpose::STANDARD.decode(b64)?)
}

fn listeners(resources: &[(String, Vec<u8>)]) -> anyhow::Result<Table> {
    let mut table = Table::new(&["LISTENER", "ADDRESS", "CHAIN", "MATCH", "DESTINATION"]);
    for (name, bytes) in resources {
        let listener = Listener::decode(bytes.as_slice())?;
        let addr = listener
            .address
            .as_ref()
            .map(address_text)
            .unwrap_or_default();
        let chains = listener
            .filter_chains
            .iter()
            .map(|c| (c.name.clone(), c))
            .chain(
                listener
                    .default_filter_chain
                    .as_ref()
                    .map(|c| (format!("{} (default)", c.name), c)),
            );
        for (chain_name, chain) in chains {
            table.row(vec![
                name.clone(),
                addr.clone(),
                chain_name,
                chain_match(chain),
                chain_destination(chain),
            ]);
        }
    }
    Ok(table)
}

fn address_text(a: &Address) -> String {
    match &a.address {
        Some(address::Address::SocketAddress(s)) => match s.port_specifier {
            Some(socket_address::PortSpecifier::PortValue(p)) => format!("{}:{p}", s.address),
            _ => s.address.clone(),
        },
        Some(address::Address::Pipe(p)) => p.path.clone(),
        _ => "-".into(),
    }
}

fn chain_match(chain: &FilterChain) -> String {
    let Some(m) = &chain.filter_chain_match else {
        return "everything else".into();
    };
    let mut parts = Vec::new();
    if let Some(port) = &m.destination_port {
        parts.push(format!("port {}", port.value));
    }
    if !m.prefix_ranges.is_empty() {
        let ips: Vec<String> = m
            .prefix_ranges
            .iter()
            .map(|r| match r.prefix_len.as_ref().map(|l| l.value) {
                Some(32) | None => r.address_prefix.clone(),
                Some(l) => format!("{}/{l}", r.address_prefix),
            })
            .collect();
        parts.push(format!("to {}", abbreviate(&ips, 3)));
    }
    if !m.server_names.is_empty() {
        parts.push(format!("SNI {}", abbreviate(&m.server_names, 2)));
    }
    if !m.application_protocols.is_empty() {
        parts.push(format!("ALPN {}", m.application_protocols.join(",")));
    }
    if !m.transport_protocol.is_empty() {
        parts.push(m.transport_protocol.clone());
    }
    if parts.is_empty() {
        "everything".into()
    } else {
        parts.join(", ")
    }
}

fn chain_destination(chain: &FilterChain) -> String {
    for f in &chain.filters {
        let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
            continue;
        };
        if any.type_url.ends_with("HttpConnectionManager") {
            if let Ok(hcm) = HttpConnectionManager::decode(any.value.as_slice()) {
                return match hcm.route_specifier {
                    Some(RouteSpecifier::Rds(rds)) => {
                        format!("HTTP, routes {}", rds.route_config_name)
                    }
                    Some(RouteSpecifier::RouteConfig(rc)) => {
                        format!("HTTP, inline routes {}", rc.name)
                    }
                    _ => "HTTP".into(),
                };
            }
        }
        if any.type_url.ends_with("TcpProxy") {
            if let Ok(proxy) = TcpProxy::decode(any.value.as_slice()) {
                return match proxy.cluster_specifier {
                    Some(tcp_proxy::ClusterSpecifier::Cluster(c)) => format!("TCP, {c}"),
                    Some(tcp_proxy::ClusterSpecifier::WeightedClusters(w)) => format!(
                        "TCP, {}",
                        w.clusters
                            .iter()
                            .map(|c| format!("{} {}", c.name, c.weight))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    _ => "TCP".into(),
                };
            }
        }
        if any.type_url.ends_with("DirectResponse") {
            return "direct response".into();
        }
    }
    chain
        .filters
        .iter()
        .map(|f| f.name.clone())
        .collect::<Vec<_>>()
        .join(", ")
}

fn abbreviate(items: &[String], keep: usize) -> String {
    if items.len() <= keep {
        items.join(",")
    } else {
        format!("{} +{} more", items[..keep].join(","), items.len() - keep)
    }
}

fn routes(resources: &[(String, Vec<u8>)], vhds: &[(String, Vec<u8>)]) -> anyhow::Result<Table> {
    let mut table = Table::new(&[
        "ROUTE TABLE",
        "VIRTUAL HOST",
        "DOMAINS",
        "ROUTE",
        "MATCH",
        "DESTINATION",
    ]);
    let mut rows = |table_name: &str, vh: &VirtualHost| {
        for r in &vh.routes {
            table.row(vec![
                table_name.to_string(),
                vh.name.clone(),
                abbreviate(&vh.domains, 1),
                r.name.clone(),
                r.r#match.as_ref().map(route_match).unwrap_or_default(),
                route_destination(r),
            ]);
        }
    };
    for (name, bytes) in resources {
        let config = RouteConfiguration::decode(bytes.as_slice())?;
        for vh in &config.virtual_hosts {
            rows(name, vh);
        }
    }
    // Envoy files a VHDS virtual host under the table named before the last slash of its
    // name; one fetched on demand may come twice (its own name and the name asked for).
    let mut seen = std::collections::BTreeSet::new();
    for (_, bytes) in vhds {
        let vh = VirtualHost::decode(bytes.as_slice())?;
        if !seen.insert(vh.name.clone()) {
            continue;
        }
        let table_name = vh.name.rsplit_once('/').map_or("", |(t, _)| t).to_string();
        rows(&format!("{table_name} (VHDS)"), &vh);
    }
    Ok(table)
}

fn route_match(m: &RouteMatch) -> String {
    let mut parts = vec![match &m.path_specifier {
        Some(PathSpecifier::Prefix(p)) => format!("prefix {p}"),
        Some(PathSpecifier::Path(p)) => format!("path {p}"),
        Some(PathSpecifier::SafeRegex(r)) => format!("regex {}", r.regex),
        Some(PathSpecifier::PathSeparatedPrefix(p)) => format!("prefix {p}/"),
        Some(other) => format!("{other:?}"),
        None => "any".into(),
    }];
    for h in &m.headers {
        let cond = match &h.header_match_specifier {
            Some(HeaderMatchSpecifier::StringMatch(sm)) => match &sm.match_pattern {
                Some(MatchPattern::Exact(v)) => format!("={v}"),
                Some(MatchPattern::Prefix(v)) => format!("^={v}"),
                Some(MatchPattern::Suffix(v)) => format!("$={v}"),
                Some(MatchPattern::SafeRegex(r)) => format!("~{}", r.regex),
                Some(MatchPattern::Contains(v)) => format!("*={v}"),
                _ => "?".into(),
            },
            Some(HeaderMatchSpecifier::PresentMatch(_)) => " present".into(),
            _ => String::new(),
        };
        parts.push(format!("{}{cond}", h.name));
    }
    for q in &m.query_parameters {
        parts.push(format!("?{}", q.name));
    }
    parts.join(" ")
}

fn route_destination(r: &envoy_types::pb::envoy::config::route::v3::Route) -> String {
    match &r.action {
        Some(route::Action::Route(action)) => match &action.cluster_specifier {
            Some(ClusterSpecifier::Cluster(c)) => c.clone(),
            Some(ClusterSpecifier::WeightedClusters(w)) => {
                let total: u32 = w
                    .clusters
                    .iter()
                    .map(|c| c.weight.as_ref().map_or(0, |v| v.value))
                    .sum();
                w.clusters
                    .iter()
                    .map(|c| {
                        let weight = c.weight.as_ref().map_or(0, |v| v.value);
                        format!(
                            "{} {}%",
                            c.name,
                            (weight * 100).checked_div(total).unwrap_or(0)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            }
            Some(other) => format!("{other:?}"),
            None => "-".into(),
        },
        Some(route::Action::Redirect(_)) => "redirect".into(),
        Some(route::Action::DirectResponse(d)) => format!("direct response {}", d.status),
        _ => "-".into(),
    }
}

fn clusters(resources: &[(String, Vec<u8>)]) -> anyhow::Result<Table> {
    let mut table = Table::new(&["CLUSTER", "DISCOVERY", "UPSTREAM", "TLS", "LIMITS"]);
    for (name, bytes) in resources {
        let c = EnvoyCluster::decode(bytes.as_slice())?;
        let discovery = match &c.cluster_discovery_type {
            Some(cluster::ClusterDiscoveryType::Type(t)) => cluster::DiscoveryType::try_from(*t)
                .map_or("?".into(), |d| d.as_str_name().to_string()),
            Some(cluster::ClusterDiscoveryType::ClusterType(t)) => t.name.clone(),
            None => "STATIC".into(),
        };
        let upstream = upstream_protocol(&c);
        table.row(vec![
            name.clone(),
            discovery,
            upstream,
            cluster_tls(&c),
            limits(&c),
        ]);
    }
    Ok(table)
}

/// `HTTP/2` or `HTTP/1.1` from the cluster's HTTP protocol options; `-` without them (TCP).
fn upstream_protocol(c: &EnvoyCluster) -> String {
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
        http_protocol_options::{explicit_http_config::ProtocolConfig, UpstreamProtocolOptions},
        HttpProtocolOptions,
    };
    let Some(any) = c
        .typed_extension_protocol_options
        .get(weir_core::mesh::HTTP_PROTOCOL_OPTIONS)
    else {
        return "-".into();
    };
    match HttpProtocolOptions::decode(any.value.as_slice())
        .ok()
        .and_then(|o| o.upstream_protocol_options)
    {
        Some(UpstreamProtocolOptions::ExplicitHttpConfig(e)) => match e.protocol_config {
            Some(ProtocolConfig::Http2ProtocolOptions(_)) => "HTTP/2".into(),
            _ => "HTTP/1.1".into(),
        },
        Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(_)) => "as downstream".into(),
        Some(UpstreamProtocolOptions::AutoConfig(_)) => "auto".into(),
        None => "HTTP/1.1".into(),
    }
}

fn cluster_tls(c: &EnvoyCluster) -> String {
    let sockets = c.transport_socket.iter().chain(
        c.transport_socket_matches
            .iter()
            .filter_map(|m| m.transport_socket.as_ref()),
    );
    for socket in sockets {
        let Some(
            envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
                any,
            ),
        ) = &socket.config_type
        else {
            continue;
        };
        if let Ok(tls) = UpstreamTlsContext::decode(any.value.as_slice()) {
            let sans: Vec<String> = tls
                .common_tls_context
                .as_ref()
                .and_then(|ctx| match &ctx.validation_context_type {
                    Some(envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType::CombinedValidationContext(v)) => v.default_validation_context.as_ref(),
                    _ => None,
                })
                .map(|v| {
                    v.match_typed_subject_alt_names
                        .iter()
                        .filter_map(|m| m.matcher.as_ref())
                        .filter_map(|m| match &m.match_pattern {
                            Some(MatchPattern::Exact(e)) => Some(e.clone()),
                            Some(MatchPattern::Prefix(p)) => Some(format!("{p}*")),
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default();
            return if sans.is_empty() {
                "TLS".into()
            } else {
                format!("mTLS, peer {}", abbreviate(&sans, 2))
            };
        }
    }
    "-".into()
}

fn limits(c: &EnvoyCluster) -> String {
    let mut parts = Vec::new();
    if let Some(t) = c
        .circuit_breakers
        .as_ref()
        .and_then(|cb| cb.thresholds.first())
    {
        if let Some(v) = &t.max_connections {
            parts.push(format!("conns {}", v.value));
        }
        if let Some(v) = &t.max_pending_requests {
            parts.push(format!("pending {}", v.value));
        }
        if let Some(v) = &t.max_requests {
            parts.push(format!("requests {}", v.value));
        }
    }
    if c.outlier_detection.is_some() {
        parts.push("outlier detection".into());
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

fn endpoints(resources: &[(String, Vec<u8>)]) -> anyhow::Result<Table> {
    let mut table = Table::new(&["CLUSTER", "ENDPOINT", "ZONE", "HEALTH", "WORKLOAD", "MTLS"]);
    for (name, bytes) in resources {
        let cla = ClusterLoadAssignment::decode(bytes.as_slice())?;
        if cla.endpoints.iter().all(|l| l.lb_endpoints.is_empty()) {
            table.row(vec![name.clone(), "(none ready)".into()]);
        }
        for locality in &cla.endpoints {
            let zone = locality
                .locality
                .as_ref()
                .map_or(String::new(), |l| l.zone.clone());
            for ep in &locality.lb_endpoints {
                let Some(lb_endpoint::HostIdentifier::Endpoint(e)) = &ep.host_identifier else {
                    continue;
                };
                // The operator serves ready endpoints only: UNKNOWN is Envoy's healthy.
                let health = match HealthStatus::try_from(ep.health_status) {
                    Ok(HealthStatus::Unknown) | Ok(HealthStatus::Healthy) => "ready".to_string(),
                    Ok(other) => other.as_str_name().to_lowercase(),
                    Err(_) => "?".into(),
                };
                let mtls = ep
                    .metadata
                    .as_ref()
                    .is_some_and(|m| !m.filter_metadata.is_empty());
                table.row(vec![
                    name.clone(),
                    e.address.as_ref().map(address_text).unwrap_or_default(),
                    if zone.is_empty() {
                        "-".into()
                    } else {
                        zone.clone()
                    },
                    health,
                    if e.hostname.is_empty() {
                        "-".into()
                    } else {
                        e.hostname.clone()
                    },
                    if mtls { "mutual_tls" } else { "plaintext" }.into(),
                ]);
            }
        }
    }
    Ok(table)
}

fn secrets(resources: &[(String, Vec<u8>)]) -> anyhow::Result<Table> {
    use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
    let mut table = Table::new(&["SECRET", "TYPE", "IDENTITY", "NOT AFTER", "EXPIRES IN"]);
    let now = output::now();
    for (name, bytes) in resources {
        let s = Secret::decode(bytes.as_slice())?;
        let (kind, pem) = match &s.r#type {
            Some(secret::Type::TlsCertificate(c)) => (
                "certificate",
                c.certificate_chain
                    .as_ref()
                    .and_then(|d| d.specifier.clone()),
            ),
            Some(secret::Type::ValidationContext(v)) => (
                "trust bundle",
                v.trusted_ca.as_ref().and_then(|d| d.specifier.clone()),
            ),
            _ => ("other", None),
        };
        let pem = match pem {
            Some(Specifier::InlineString(s)) => s.into_bytes(),
            Some(Specifier::InlineBytes(b)) => b,
            _ => Vec::new(),
        };
        let certs = crate::check::pem_certificates(&pem);
        let Some(first) = certs.first() else {
            table.row(vec![
                name.clone(),
                kind.into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]);
            continue;
        };
        let (identity, not_after) = crate::check::describe_certificate(first)?;
        let identity = if kind == "trust bundle" {
            format!("{} root(s): {identity}", certs.len())
        } else {
            identity
        };
        table.row(vec![
            name.clone(),
            kind.into(),
            identity,
            crate::check::rfc3339(not_after),
            if not_after > now {
                output::age(not_after - now)
            } else {
                output::paint("expired", output::Colour::Red)
            },
        ]);
    }
    Ok(table)
}
