//! Load assignments: the ready endpoints of a Service port, optionally narrowed to the pods
//! of one subset.

use envoy_types::pb::envoy::config::core::v3::{
    address, socket_address::PortSpecifier, Address, Locality, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint::HostIdentifier, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};

/// A TCP socket address.
pub fn socket_address(ip: &str, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(socket_address_value(
            ip, port,
        ))),
    }
}

/// The socket address itself (what a bind config takes).
pub fn socket_address_value(ip: &str, port: u16) -> SocketAddress {
    SocketAddress {
        address: ip.to_string(),
        port_specifier: Some(PortSpecifier::PortValue(u32::from(port))),
        ..Default::default()
    }
}

/// The assignment for `cluster` with the given (ip, port) endpoints, in the order given.
pub fn load_assignment<'a>(
    cluster: &str,
    endpoints: impl IntoIterator<Item = (&'a str, u16)>,
) -> ClusterLoadAssignment {
    mesh_load_assignment(
        cluster,
        endpoints.into_iter().map(|(ip, port)| MeshEndpoint {
            ip,
            port,
            meshed: false,
            zone: None,
            workload: None,
        }),
    )
}

/// One endpoint of a mesh cluster, as [`mesh_load_assignment`] takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeshEndpoint<'a> {
    /// Address.
    pub ip: &'a str,
    /// Pod port.
    pub port: u16,
    /// Its pod carries a sidecar that takes mTLS.
    pub meshed: bool,
    /// Its zone.
    pub zone: Option<&'a str>,
    /// Its pod's workload (telemetry labels the requests it serves).
    pub workload: Option<&'a str>,
}

/// As [`load_assignment`], marking the endpoints whose pods carry a sidecar (the
/// cluster's mTLS transport socket applies to them), naming their workload (the host
/// name, for telemetry) and grouping them by zone (one locality per zone, endpoints without a zone
/// first).
pub fn mesh_load_assignment<'a>(
    cluster: &str,
    endpoints: impl IntoIterator<Item = MeshEndpoint<'a>>,
) -> ClusterLoadAssignment {
    let mut by_zone: std::collections::BTreeMap<Option<&str>, Vec<LbEndpoint>> = Default::default();
    for ep in endpoints {
        by_zone.entry(ep.zone).or_default().push(LbEndpoint {
            host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                address: Some(socket_address(ep.ip, ep.port)),
                hostname: super::telemetry::endpoint_hostname(ep.workload),
                ..Default::default()
            })),
            metadata: ep.meshed.then(super::mtls::meshed_endpoint_metadata),
            ..Default::default()
        });
    }
    ClusterLoadAssignment {
        cluster_name: cluster.to_string(),
        endpoints: by_zone
            .into_iter()
            .map(|(zone, lb_endpoints)| LocalityLbEndpoints {
                locality: zone.map(|zone| Locality {
                    zone: zone.to_string(),
                    ..Default::default()
                }),
                lb_endpoints,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// A load assignment as a proxy in `zone` sees it: the endpoints of its zone at priority 0
/// and the others at priority 1, so that Envoy sends everything to its own zone while
/// enough of it is healthy and fails over as it is ejected or goes. Unchanged (None) when
/// the zone has no endpoints here or has them all.
pub fn prefer_zone(cla: &ClusterLoadAssignment, zone: &str) -> Option<ClusterLoadAssignment> {
    let local = |l: &LocalityLbEndpoints| l.locality.as_ref().is_some_and(|l| l.zone == zone);
    let here = cla.endpoints.iter().filter(|l| local(l)).count();
    if here == 0 || here == cla.endpoints.len() {
        return None;
    }
    let mut out = cla.clone();
    for group in &mut out.endpoints {
        group.priority = if local(group) { 0 } else { 1 };
    }
    // Priorities in order, as Envoy expects them.
    out.endpoints.sort_by_key(|g| g.priority);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zones_and_priorities(cla: &ClusterLoadAssignment) -> Vec<(String, u32, usize)> {
        cla.endpoints
            .iter()
            .map(|g| {
                (
                    g.locality
                        .as_ref()
                        .map(|l| l.zone.clone())
                        .unwrap_or_default(),
                    g.priority,
                    g.lb_endpoints.len(),
                )
            })
            .collect()
    }

    #[test]
    fn endpoints_are_grouped_by_zone_and_a_zone_goes_first_for_its_proxies() {
        let ep = |ip, meshed, zone| MeshEndpoint {
            ip,
            port: 80,
            meshed,
            zone,
            workload: None,
        };
        let cla = mesh_load_assignment(
            "c",
            [
                ep("10.0.0.1", true, Some("a")),
                ep("10.0.0.2", true, Some("b")),
                ep("10.0.0.3", true, Some("a")),
                ep("10.0.0.4", false, None),
            ],
        );
        assert_eq!(
            zones_and_priorities(&cla),
            [("".into(), 0, 1), ("a".into(), 0, 2), ("b".into(), 0, 1)]
        );
        let in_b = prefer_zone(&cla, "b").unwrap();
        assert_eq!(
            zones_and_priorities(&in_b),
            [("b".into(), 0, 1), ("".into(), 1, 1), ("a".into(), 1, 2)]
        );
        // A zone with no endpoints here, or all of them: nothing to prefer.
        assert!(prefer_zone(&cla, "c").is_none());
        let only_a = mesh_load_assignment("c", [ep("10.0.0.1", true, Some("a"))]);
        assert!(prefer_zone(&only_a, "a").is_none());
    }
}
