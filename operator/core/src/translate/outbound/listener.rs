//! Outbound listeners for the two capture modes.
//!
//! - explicit: one listener on 127.0.0.1:<port> that takes plain HTTP (HTTP/1.1 or h2c)
//!   and routes by Host to any HTTP Service port in the mesh (local mode, no iptables).
//! - transparent: iptables sends outbound TCP to 15001 and inbound to 15006. The outbound
//!   listener picks a filter chain by the connection's original destination:
//!
//! ```text
//! port p, ClusterIP of an http/http2/grpc Service  --> HTTP (route table outbound|p, by Host)
//! port p, ClusterIP of an undeclared port           --> HTTP if the first bytes are HTTP
//!                                                       (http_inspector; one chain for every
//!                                                       such ClusterIP of p), else TCP
//! port p, ClusterIP of a tcp/tls Service            --> TCP proxy (spec.tcp split, or the
//!                                                       Service); TLS by SNI first
//! port p, any other address, SNI naming a tls Service --> TCP proxy to that Service
//! anything else (outside the mesh, headless pods)   --> passthrough, untouched
//! ```
//!
//! Inspectors run only on the ports that need them (filter_disabled by port), with a
//! bounded wait, so declared TCP and server-first ports never wait for client bytes. Every
//! chain comes from the builders of [`crate::translate::chain`].

use envoy_types::pb::envoy::config::core::v3::{CidrRange, TrafficDirection};
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, FilterChainMatch, Listener};
use std::collections::BTreeMap;

use super::shaping;
use crate::names;
use crate::protocol::Protocol;
use crate::translate::chain::{HttpChain, Routes, TcpChain};
use crate::translate::endpoint::socket_address;
use crate::translate::listener_filters::{
    http_inspector_on, original_dst, tls_inspector_on, DETECTION_TIMEOUT, OUTBOUND_CAPTURE_PORT,
};
use crate::translate::pb::u32v;
use crate::translate::port::{PortOutput, WeightedClusters};
use crate::translate::telemetry::{self, Side, Telemetry};

/// The explicit-mode listener.
pub fn explicit_outbound(port: u16, telemetry: &Telemetry) -> Listener {
    Listener {
        name: names::OUTBOUND_LISTENER.into(),
        address: Some(socket_address("127.0.0.1", port)),
        traffic_direction: TrafficDirection::Outbound as i32,
        filter_chains: vec![http_chain(
            "outbound",
            names::EXPLICIT_ROUTE_CONFIG,
            None,
            telemetry,
            false,
        )],
        ..Default::default()
    }
}

/// The transparent-mode outbound listener: filter chains for every Service port in the
/// mesh, by port, by ClusterIP and by protocol (see the module docs).
pub fn transparent_outbound(
    by_port: &BTreeMap<u16, Vec<&PortOutput>>,
    telemetry: &Telemetry,
    on_demand: bool,
) -> Listener {
    let mut chains = Vec::new();
    let (mut sniffed, mut with_sni) = (Vec::new(), Vec::new());
    for (port, outs) in by_port {
        let port = *port;
        let route_config = names::port_route_config(port);
        let http_ips: Vec<&str> = outs
            .iter()
            .filter(|o| {
                matches!(
                    o.protocol,
                    Protocol::Http | Protocol::Http2 | Protocol::Grpc
                )
            })
            .filter_map(|o| o.cluster_ip.as_deref())
            .collect();
        if !http_ips.is_empty() {
            let matched = chain_match(port, &http_ips);
            chains.push(http_chain(
                &format!("outbound_{port}"),
                &route_config,
                Some(matched),
                telemetry,
                on_demand,
            ));
        }
        // ClusterIPs of undeclared ports: one HTTP chain for all of them (the route table
        // is the port's), taken when the first bytes are HTTP.
        let mut sniffed_ips = Vec::new();
        for out in outs {
            let (Some(ip), Some(tcp)) = (out.cluster_ip.as_deref(), &out.tcp) else {
                continue;
            };
            let at = format!("{port}_{ip}");
            if out.protocol == Protocol::Detect {
                sniffed_ips.push(ip);
            }
            for (i, (hosts, split)) in tcp.by_sni.iter().enumerate() {
                let mut matched = chain_match(port, &[ip]);
                matched.server_names = hosts.clone();
                chains.push(tcp_chain(
                    &format!("outbound_{at}_sni{i}"),
                    split,
                    Some(matched),
                    telemetry,
                    on_demand,
                ));
            }
            chains.push(tcp_chain(
                &format!("outbound_{at}"),
                &tcp.default,
                Some(chain_match(port, &[ip])),
                telemetry,
                on_demand,
            ));
            if out.protocol == Protocol::Tls {
                // A TLS client that reached the Service by another address still names it.
                let matched = FilterChainMatch {
                    destination_port: Some(u32v(u32::from(port))),
                    server_names: tcp.hostnames.clone(),
                    ..Default::default()
                };
                chains.push(tcp_chain(
                    &format!("outbound_{at}_by_name"),
                    &tcp.default,
                    Some(matched),
                    telemetry,
                    on_demand,
                ));
                with_sni.push(port);
            }
            if !tcp.by_sni.is_empty() {
                with_sni.push(port);
            }
        }
        if !sniffed_ips.is_empty() {
            let mut matched = chain_match(port, &sniffed_ips);
            matched.application_protocols = vec!["http/1.1".into(), "h2c".into()];
            chains.push(http_chain(
                &format!("outbound_{port}_http"),
                &route_config,
                Some(matched),
                telemetry,
                on_demand,
            ));
            sniffed.push(port);
        }
    }
    let mut listener_filters = vec![original_dst()];
    with_sni.sort_unstable();
    with_sni.dedup();
    sniffed.sort_unstable();
    sniffed.dedup();
    if !with_sni.is_empty() {
        listener_filters.push(tls_inspector_on(&with_sni));
    }
    if !sniffed.is_empty() {
        listener_filters.push(http_inspector_on(&sniffed));
    }
    let inspecting = listener_filters.len() > 1;
    Listener {
        name: names::OUTBOUND_LISTENER.into(),
        address: Some(socket_address("0.0.0.0", OUTBOUND_CAPTURE_PORT)),
        traffic_direction: TrafficDirection::Outbound as i32,
        listener_filters,
        listener_filters_timeout: inspecting.then_some(DETECTION_TIMEOUT),
        continue_on_listener_filters_timeout: inspecting,
        filter_chains: chains,
        default_filter_chain: Some(tcp_chain(
            "passthrough",
            &vec![(names::PASSTHROUGH_CLUSTER.to_string(), 100)],
            None,
            telemetry,
            false,
        )),
        ..Default::default()
    }
}

/// A chain match on a destination port and exact addresses.
fn chain_match(port: u16, ips: &[&str]) -> FilterChainMatch {
    FilterChainMatch {
        destination_port: Some(u32v(u32::from(port))),
        prefix_ranges: ips
            .iter()
            .map(|ip| CidrRange {
                address_prefix: ip.to_string(),
                prefix_len: Some(u32v(if ip.contains(':') { 128 } else { 32 })),
            })
            .collect(),
        ..Default::default()
    }
}

/// An outbound HTTP chain: routes from the table `route_config`, with the shaping filters
/// (fault injection, local rate limits) before the router; reports as the source.
fn http_chain(
    name: &str,
    route_config: &str,
    matched: Option<FilterChainMatch>,
    telemetry: &Telemetry,
    on_demand: bool,
) -> FilterChain {
    let chain = HttpChain::new(name, Routes::Rds(route_config.into()))
        .filters(shaping::outbound_http_filters());
    let chain = if on_demand { chain.on_demand() } else { chain };
    chain
        .normalize_path()
        .telemetry(
            telemetry::http_logs(Side::Outbound, telemetry, &[], None),
            telemetry::tracing(Side::Outbound, telemetry),
        )
        .build(name, matched, None)
}

/// An outbound TCP chain splitting connections over `split`; reports as the source.
fn tcp_chain(
    name: &str,
    split: &WeightedClusters,
    matched: Option<FilterChainMatch>,
    telemetry: &Telemetry,
    on_demand: bool,
) -> FilterChain {
    let chain = TcpChain::new(name, split);
    let chain = if on_demand { chain.on_demand() } else { chain };
    chain
        .telemetry(telemetry::tcp_logs(Side::Outbound, telemetry, &[], None))
        .build(name, matched, None)
}
