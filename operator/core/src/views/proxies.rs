//! `GET /debug/proxies`: every connected proxy, in connection order, with what it was sent
//! and what it answered per resource type.
//!
//! ```json
//! [
//!   {
//!     "node": "web-7d4f.shop", "protocol": "delta",
//!     "namespace": "shop", "pod": "web-7d4f", "service_account": "storefront",
//!     "profile": "transparent, inbound strict, zone eu-1",
//!     "connected_at": 1796458506, "generation": 2,
//!     "types": {
//!       "cds": {"subscribed": true, "sent_version": "7823e8eb048825d7",
//!         "pending_nonce": null, "acked_version": "dd2441ca65b6ac95",
//!         "nack": "Invalid duration: ...", "pushes": 2, "resources_sent": 4},
//!       "eds": {"subscribed": true, "sent_version": "8bc44648a3c4c24f",
//!         "pending_nonce": null, "acked_version": "8bc44648a3c4c24f",
//!         "nack": null, "pushes": 1, "resources_sent": 3}
//!     }
//!   }
//! ]
//! ```
//!
//! `protocol` is `sotw` or `delta`; `profile` is `explicit:PORT` or `transparent, inbound
//! MODE`, then `, zone ZONE` when the pod has one. `types` holds, by short name (`cds`,
//! `eds`, `lds`, `rds`, `sds`), the types the proxy asked for or was sent.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One connected proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyView {
    /// Envoy node id.
    pub node: String,
    /// `sotw` or `delta`.
    pub protocol: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// The service account whose certificate the proxy is served.
    pub service_account: String,
    /// Capture mode and profile, e.g. `explicit:15001` or `transparent, inbound strict`.
    pub profile: String,
    /// When the stream opened (seconds since the epoch).
    pub connected_at: u64,
    /// Snapshot generation last looked at.
    pub generation: u64,
    /// By short type name, the types the proxy asked for or was sent.
    pub types: BTreeMap<String, TypeState>,
    /// When its workload certificate expires (seconds since the epoch), once issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_expires_at: Option<u64>,
    /// A scoped proxy's scope (see `weir_core::scope`); absent for a proxy that holds the
    /// whole mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<ScopeView>,
}

/// The Services a scoped proxy holds, as `namespace/name`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeView {
    /// Held with their clusters: the pod's own, its hint's, and those it used lately.
    pub services: Vec<String>,
    /// Learned, then unused for the operator's `--scope-idle`: their clusters left the
    /// proxy; the next call brings them back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dormant: Vec<String>,
    /// Of `services`, those that never go dormant: the proxy asked for one of their
    /// clusters by name (a TCP connection's), which Envoy never asks for again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pinned: Vec<String>,
}

/// What one proxy was sent of one type and what it answered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeState {
    /// The proxy asked for this type.
    pub subscribed: bool,
    /// Version of the last response sent.
    pub sent_version: Option<String>,
    /// Nonce of the last response sent, until the proxy answers it.
    pub pending_nonce: Option<String>,
    /// Last version the proxy ACKed.
    pub acked_version: Option<String>,
    /// Envoy's message for the last NACK, cleared by the next ACK.
    pub nack: Option<String>,
    /// Responses sent.
    pub pushes: u64,
    /// Resources sent, all responses together.
    pub resources_sent: u64,
    /// When the last response was sent (seconds since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<u64>,
    /// When the proxy last answered (ACK or NACK; seconds since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_at: Option<u64>,
    /// The version the operator serves the proxy's profile now: a proxy that ACKed an
    /// older one is stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_version: Option<String>,
}

impl TypeState {
    /// Neither waiting for an answer nor rejected.
    pub fn acked(&self) -> bool {
        self.pending_nonce.is_none() && self.nack.is_none()
    }

    /// `NACKED` (the last answer rejected), `STALE` (waiting for an answer, or holding an
    /// older version than the one served now) or `SYNCED`.
    pub fn sync(&self) -> &'static str {
        if self.nack.is_some() {
            "NACKED"
        } else if self.pending_nonce.is_some()
            || self.acked_version.is_none()
            || (self.latest_version.is_some() && self.latest_version != self.acked_version)
        {
            "STALE"
        } else {
            "SYNCED"
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::views::tests::{parses_as, round_trip};

    /// A proxy with one NACKed and one pending type.
    pub fn filled() -> ProxyView {
        ProxyView {
            node: "web-7d4f.shop".into(),
            protocol: "sotw".into(),
            namespace: "shop".into(),
            pod: "web-7d4f".into(),
            service_account: "storefront".into(),
            profile: "transparent, inbound strict, zone eu-1".into(),
            connected_at: 1_796_458_506,
            generation: 7,
            types: BTreeMap::from([
                (
                    "cds".to_string(),
                    TypeState {
                        subscribed: true,
                        sent_version: Some("7823e8eb048825d7".into()),
                        pending_nonce: None,
                        acked_version: Some("dd2441ca65b6ac95".into()),
                        nack: Some("Invalid duration".into()),
                        pushes: 2,
                        resources_sent: 4,
                        ..TypeState::default()
                    },
                ),
                (
                    "rds".to_string(),
                    TypeState {
                        subscribed: true,
                        sent_version: Some("ec41b2eb0e0fe445".into()),
                        pending_nonce: Some("3".into()),
                        pushes: 1,
                        resources_sent: 1,
                        ..TypeState::default()
                    },
                ),
            ]),
            certificate_expires_at: None,
            scope: Some(ScopeView {
                services: vec!["shop/reviews".into(), "shop/web".into()],
                dormant: vec!["shop/ratings".into()],
                pinned: vec!["shop/reviews".into()],
            }),
        }
    }

    #[test]
    fn a_type_is_synced_only_when_it_acked_what_is_served_now() {
        let acked = TypeState {
            subscribed: true,
            sent_version: Some("b".into()),
            acked_version: Some("b".into()),
            latest_version: Some("b".into()),
            ..TypeState::default()
        };
        assert_eq!(acked.sync(), "SYNCED");
        let behind = TypeState {
            latest_version: Some("c".into()),
            ..acked.clone()
        };
        assert_eq!(behind.sync(), "STALE", "a newer version is served");
        let waiting = TypeState {
            pending_nonce: Some("4".into()),
            ..acked.clone()
        };
        assert_eq!(waiting.sync(), "STALE", "no answer yet");
        let rejected = TypeState {
            nack: Some("bad".into()),
            ..acked
        };
        assert_eq!(rejected.sync(), "NACKED");
    }

    #[test]
    fn a_filled_proxy_round_trips() {
        round_trip(&vec![filled()]);
        assert!(!filled().types["cds"].acked(), "NACKed");
        assert!(!filled().types["rds"].acked(), "pending");
    }

    /// What `/debug/proxies` returned before the view types: a delta proxy that NACKed a
    /// cluster, trimmed to two types.
    const TODAY: &str = r#"[{
        "node": "cap", "protocol": "delta", "namespace": "default", "pod": "cap",
        "service_account": "default", "profile": "explicit:40971",
        "connected_at": 1796458506, "generation": 2,
        "types": {
            "cds": {"subscribed": true, "sent_version": "7823e8eb048825d7", "pending_nonce": null,
                "acked_version": "dd2441ca65b6ac95",
                "nack": "Invalid duration: Expected positive duration: goo.gle/debugproto   \nseconds: -1\n",
                "pushes": 2, "resources_sent": 4},
            "eds": {"subscribed": true, "sent_version": "8bc44648a3c4c24f", "pending_nonce": null,
                "acked_version": "8bc44648a3c4c24f", "nack": null, "pushes": 1, "resources_sent": 3}
        }
    }]"#;

    #[test]
    fn todays_document_parses() {
        let proxies: Vec<ProxyView> = parses_as(TODAY);
        assert_eq!(proxies[0].service_account, "default");
        assert!(proxies[0].types["cds"].nack.is_some());
        assert!(proxies[0].types["eds"].acked());
    }
}
