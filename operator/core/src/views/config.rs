//! `GET /debug/config?node=ID`: what a connected proxy is served now. Its record (as in
//! `/debug/proxies`), the snapshot generation, per type every resource with its version and
//! size in bytes, and the protocol of every Service port with the rule that decided it.
//!
//! ```json
//! {
//!   "node": "cap",
//!   "generation": 2,
//!   "proxy": {"node": "cap", "protocol": "delta", "...": "as in /debug/proxies"},
//!   "served": {
//!     "cds": {"version": "7823e8eb048825d7", "resources": [
//!       {"name": "outbound|9080|v1|reviews.default.svc.cluster.local",
//!        "version": "ad72988325b0a58a", "bytes": 118}]},
//!     "sds": {"version": "0000000000000000", "resources": []}
//!   },
//!   "ports": [{"service": "default/reviews", "port": 9080, "protocol": "http",
//!     "decidedBy": "portName"}]
//! }
//! ```
//!
//! `&bodies=true` adds each resource's encoded protobuf (`body`, base64); `sds` holds the
//! proxy's workload secrets, never their private key.
//! `served` has every type by short name (`cds`, `eds`, `lds`, `rds`, `sds`), empty ones
//! too. `protocol` is one of `http`, `http2`, `grpc`, `tcp`, `tls`, `detect`; `decidedBy`
//! one of `appProtocol`, `portName`, `serverFirstPort`, `detection`. A node that is not
//! connected gets 404 and a line of text, not this document.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::proxies::ProxyView;

/// The whole `/debug/config` document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigView {
    /// The node asked about.
    pub node: String,
    /// Generation of the snapshot served to the node's profile.
    pub generation: u64,
    /// The proxy's record.
    pub proxy: ProxyView,
    /// By short type name, what the snapshot holds.
    pub served: BTreeMap<String, ServedType>,
    /// Every Service port's protocol.
    pub ports: Vec<PortView>,
}

/// What a snapshot holds of one type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedType {
    /// The type's version.
    pub version: String,
    /// Every resource, in name order.
    pub resources: Vec<ServedResource>,
}

/// One served resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedResource {
    /// Resource name.
    pub name: String,
    /// Its version (a hash of its body).
    pub version: String,
    /// Size of its encoded body.
    pub bytes: usize,
    /// With `&bodies=true`: the encoded protobuf message (standard base64), of the type
    /// the resource type names (`envoy.config.cluster.v3.Cluster` for `cds`...). Secrets
    /// come without their private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// A Service port's protocol and the rule that decided it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortView {
    /// `namespace/name` of the Service.
    pub service: String,
    /// The Service port.
    pub port: u16,
    /// The protocol, e.g. `grpc`.
    pub protocol: String,
    /// The rule, e.g. `appProtocol`.
    pub decided_by: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::proxies::tests::filled;
    use crate::views::tests::{parses_as, round_trip};

    #[test]
    fn a_filled_config_round_trips() {
        round_trip(&ConfigView {
            node: "web-7d4f.shop".into(),
            generation: 7,
            proxy: filled(),
            served: BTreeMap::from([
                (
                    "cds".to_string(),
                    ServedType {
                        version: "7823e8eb048825d7".into(),
                        resources: vec![ServedResource {
                            name: "outbound|9080||reviews.default.svc.cluster.local".into(),
                            version: "e562e9db7eb1d1b8".into(),
                            bytes: 114,
                            body: None,
                        }],
                    },
                ),
                (
                    "sds".to_string(),
                    ServedType {
                        version: "0000000000000000".into(),
                        resources: Vec::new(),
                    },
                ),
            ]),
            ports: vec![PortView {
                service: "default/greeter".into(),
                port: 50051,
                protocol: "grpc".into(),
                decided_by: "appProtocol".into(),
            }],
        });
    }

    /// What `/debug/config?node=cap` returned before the view types, trimmed to two types.
    const TODAY: &str = r#"{
        "generation": 2,
        "node": "cap",
        "ports": [{"decidedBy": "portName", "port": 9080, "protocol": "http",
            "service": "default/reviews"}],
        "proxy": {"connected_at": 1796458506, "generation": 2, "namespace": "default",
            "node": "cap", "pod": "cap", "profile": "explicit:40971", "protocol": "delta",
            "service_account": "default",
            "types": {"lds": {"acked_version": "423a4831e20eb0d3", "nack": null,
                "pending_nonce": null, "pushes": 1, "resources_sent": 1,
                "sent_version": "423a4831e20eb0d3", "subscribed": true}}},
        "served": {
            "cds": {"resources": [
                {"bytes": 118, "name": "outbound|9080|v1|reviews.default.svc.cluster.local",
                    "version": "ad72988325b0a58a"},
                {"bytes": 34, "name": "rejected-by-envoy", "version": "ca21af2af2dc5603"}],
                "version": "7823e8eb048825d7"},
            "sds": {"resources": [], "version": "0000000000000000"}
        }
    }"#;

    #[test]
    fn todays_document_parses() {
        let config: ConfigView = parses_as(TODAY);
        assert_eq!(config.ports[0].decided_by, "portName");
        assert_eq!(config.served["cds"].resources[1].bytes, 34);
        assert_eq!(config.proxy.profile, "explicit:40971");
    }
}
