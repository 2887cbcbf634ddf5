//! State-of-the-world ADS: one stream, four types, nonces per type.
//!
//! LDS and CDS responses carry every resource (the protocol requires it); EDS and RDS
//! responses carry only the requested resources that changed since they were last sent.

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use weir_core::{ResourceType, Snapshot};

use super::{AdsProtocol, Gone, StreamCore};
use envoy_types::pb::envoy::config::core::v3::Node;

#[derive(Debug, Default)]
struct TypeStream {
    subscribed: bool,
    /// None: every resource of the type.
    names: Option<BTreeSet<String>>,
    /// What was sent, by name, with its version (EDS and RDS).
    sent: HashMap<Arc<str>, u64>,
    /// Type version of the last full response (LDS and CDS).
    sent_type_version: Option<u64>,
    nonce: Option<String>,
}

/// A state-of-the-world stream.
pub(crate) struct SotwStream {
    core: StreamCore<DiscoveryResponse>,
    types: [TypeStream; 4],
}

impl AdsProtocol for SotwStream {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    const NAME: &'static str = "sotw";

    fn node(req: &DiscoveryRequest) -> Option<&Node> {
        req.node.as_ref()
    }

    fn new(core: StreamCore<DiscoveryResponse>) -> Self {
        SotwStream {
            core,
            types: Default::default(),
        }
    }

    fn core(&self) -> &StreamCore<DiscoveryResponse> {
        &self.core
    }

    async fn on_request(&mut self, snapshot: &Snapshot, req: DiscoveryRequest) -> Result<(), Gone> {
        let Some(t) = ResourceType::from_type_url(&req.type_url) else {
            tracing::debug!(
                node = self.core.node,
                type_url = req.type_url,
                "ignoring request for a type Weir does not serve"
            );
            return Ok(());
        };
        let state = &mut self.types[t.idx()];
        if !req.response_nonce.is_empty() {
            if state.nonce.as_deref() != Some(req.response_nonce.as_str()) {
                // An answer to a response that was since superseded: ignore it.
                return Ok(());
            }
            state.nonce = None;
            let nack = req.error_detail.as_ref().map(|e| e.message.as_str());
            self.core
                .record_answer(t, nack, Some(req.version_info.clone()));
        }
        let names = if req.resource_names.is_empty() && t.is_wildcard_by_default()
            || req.resource_names.iter().any(|n| n == "*")
        {
            None
        } else {
            Some(req.resource_names.iter().cloned().collect::<BTreeSet<_>>())
        };
        if !state.subscribed || state.names != names {
            if let Some(names) = &names {
                state.sent.retain(|k, _| names.contains(k.as_ref()));
            }
            state.subscribed = true;
            state.names = names;
            // A new subscription gets everything it asks for.
            let all: Vec<Arc<str>> = match &state.names {
                None => snapshot.of(t).keys().cloned().collect(),
                Some(names) => names
                    .iter()
                    .filter_map(|n| {
                        snapshot
                            .of(t)
                            .get_key_value(n.as_str())
                            .map(|(k, _)| k.clone())
                    })
                    .collect(),
            };
            self.core.proxy.update(|p| p.state(t).subscribed = true);
            return self.respond(snapshot, t, all, true).await;
        }
        Ok(())
    }

    async fn on_snapshot(&mut self, snapshot: &Snapshot, contiguous: bool) -> Result<(), Gone> {
        for t in ResourceType::ALL {
            let state = &self.types[t.idx()];
            if !state.subscribed {
                continue;
            }
            if t.is_wildcard_by_default() && state.names.is_none() {
                if state.sent_type_version != Some(snapshot.versions[t.idx()]) {
                    let all = snapshot.of(t).keys().cloned().collect();
                    self.respond(snapshot, t, all, true).await?;
                }
                continue;
            }
            let candidates: Vec<Arc<str>> = if contiguous {
                snapshot.changed[t.idx()].iter().cloned().collect()
            } else {
                snapshot.of(t).keys().cloned().collect()
            };
            let wanted: Vec<Arc<str>> = candidates
                .into_iter()
                .filter(|n| {
                    state
                        .names
                        .as_ref()
                        .is_none_or(|names| names.contains(n.as_ref()))
                })
                .filter(|n| snapshot.of(t).get(n).map(|r| r.version) != state.sent.get(n).copied())
                .collect();
            if !wanted.is_empty() {
                self.respond(snapshot, t, wanted, false).await?;
            }
        }
        Ok(())
    }
}

impl SotwStream {
    async fn respond(
        &mut self,
        snapshot: &Snapshot,
        t: ResourceType,
        names: Vec<Arc<str>>,
        full: bool,
    ) -> Result<(), Gone> {
        let state = &mut self.types[t.idx()];
        let mut resources = Vec::with_capacity(names.len());
        for name in &names {
            if let Some(r) = snapshot.of(t).get(name) {
                resources.push((*r.body).clone());
                state.sent.insert(name.clone(), r.version);
            }
        }
        if full {
            state.sent_type_version = Some(snapshot.versions[t.idx()]);
        }
        let version = snapshot.version_string(t);
        let count = resources.len();
        let nonce = self.core.book_response(t, &version, count);
        state.nonce = Some(nonce.clone());
        let response = DiscoveryResponse {
            version_info: version,
            resources,
            type_url: t.type_url().to_string(),
            nonce,
            ..Default::default()
        };
        self.core.send(response).await
    }
}
