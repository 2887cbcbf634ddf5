//! Listener filters and listener-level settings both directions share: the original
//! destination, the TLS and HTTP inspectors (scoped to the ports that need them), and how
//! long inspection may wait.

use envoy_types::pb::envoy::config::listener::v3::{
    listener_filter::ConfigType as ListenerFilterConfig,
    listener_filter_chain_match_predicate::{MatchSet, Rule},
    ListenerFilter, ListenerFilterChainMatchPredicate,
};
use envoy_types::pb::envoy::extensions::filters::listener::http_inspector::v3::HttpInspector;
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::r#type::v3::Int32Range;
use envoy_types::pb::google::protobuf::{Any, Duration};
use envoy_types::util::pack_any;

use super::pb;

use crate::mesh::{HTTP_INSPECTOR_FILTER, ORIGINAL_DST_FILTER, TLS_INSPECTOR_FILTER};
pub use crate::mesh::{INBOUND_CAPTURE_PORT, OUTBOUND_CAPTURE_PORT};

/// How long the inspectors wait for a client's first bytes before the connection is
/// treated as TCP (a server-first protocol on an undeclared port waits this long once).
pub const DETECTION_TIMEOUT: Duration = pb::seconds(1);

/// Restores the connection's original destination (transparent mode).
pub fn original_dst() -> ListenerFilter {
    ListenerFilter {
        name: ORIGINAL_DST_FILTER.into(),
        config_type: Some(ListenerFilterConfig::TypedConfig(pack_any(OriginalDst {}))),
        ..Default::default()
    }
}

/// The TLS inspector on every connection.
pub fn tls_inspector() -> ListenerFilter {
    ListenerFilter {
        name: TLS_INSPECTOR_FILTER.into(),
        config_type: Some(ListenerFilterConfig::TypedConfig(pack_any(
            TlsInspector::default(),
        ))),
        ..Default::default()
    }
}

/// The TLS inspector for connections to `ports` only (sorted, distinct).
pub fn tls_inspector_on(ports: &[u16]) -> ListenerFilter {
    inspector(
        TLS_INSPECTOR_FILTER,
        pack_any(TlsInspector::default()),
        ports,
    )
}

/// The HTTP inspector for connections to `ports` only (sorted, distinct).
pub fn http_inspector_on(ports: &[u16]) -> ListenerFilter {
    inspector(
        HTTP_INSPECTOR_FILTER,
        pack_any(HttpInspector::default()),
        ports,
    )
}

/// A listener filter that runs only for connections to `ports` (sorted, distinct).
fn inspector(name: &str, config: Any, ports: &[u16]) -> ListenerFilter {
    // Consecutive ports as one range; Envoy wants an or_match of two rules or more.
    let mut ranges: Vec<Int32Range> = Vec::new();
    for port in ports.iter().map(|p| i32::from(*p)) {
        match ranges.last_mut() {
            Some(last) if last.end == port => last.end = port + 1,
            _ => ranges.push(Int32Range {
                start: port,
                end: port + 1,
            }),
        }
    }
    let mut rules: Vec<ListenerFilterChainMatchPredicate> = ranges
        .into_iter()
        .map(|range| ListenerFilterChainMatchPredicate {
            rule: Some(Rule::DestinationPortRange(range)),
        })
        .collect();
    let inspected = if rules.len() == 1 {
        rules.remove(0)
    } else {
        ListenerFilterChainMatchPredicate {
            rule: Some(Rule::OrMatch(MatchSet { rules })),
        }
    };
    ListenerFilter {
        name: name.into(),
        config_type: Some(ListenerFilterConfig::TypedConfig(config)),
        filter_disabled: Some(ListenerFilterChainMatchPredicate {
            rule: Some(Rule::NotMatch(Box::new(inspected))),
        }),
    }
}
