//! Incremental (delta) ADS: per type, the stream tracks the proxy's subscriptions and the
//! version of every resource it has, and sends only differences: changed resources and the
//! names of removed ones. A reconnecting proxy reports what it has
//! (`initial_resource_versions`) and is sent only what differs; versions are content hashes,
//! so this holds across operator restarts too.

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource as PbResource,
};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use weir_core::{ResourceType, Snapshot};

use super::{AdsProtocol, Gone, StreamCore};
use envoy_types::pb::envoy::config::core::v3::Node;

#[derive(Debug, Default)]
struct TypeStream {
    subscribed: bool,
    wildcard: bool,
    names: BTreeSet<String>,
    /// What the proxy has, by name: the version we sent (or it reported on reconnect).
    /// Names share the snapshot's allocations, so a stream costs a pointer per resource.
    has: HashMap<Arc<str>, u64>,
    nonce: Option<String>,
}

impl TypeStream {
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

/// A delta stream.
pub(crate) struct DeltaStream {
    core: StreamCore<DeltaDiscoveryResponse>,
    types: [TypeStream; 4],
}

impl AdsProtocol for DeltaStream {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    const NAME: &'static str = "delta";

    fn node(req: &DeltaDiscoveryRequest) -> Option<&Node> {
        req.node.as_ref()
    }

    fn new(core: StreamCore<DeltaDiscoveryResponse>) -> Self {
        DeltaStream {
            core,
            types: Default::default(),
        }
    }

    fn core(&self) -> &StreamCore<DeltaDiscoveryResponse> {
        &self.core
    }

    async fn on_request(
        &mut self,
        snapshot: &Snapshot,
        req: DeltaDiscoveryRequest,
    ) -> Result<(), Gone> {
        let Some(t) = ResourceType::from_type_url(&req.type_url) else {
            tracing::debug!(
                node = self.core.node,
                type_url = req.type_url,
                "ignoring request for a type Weir does not serve"
            );
            return Ok(());
        };
        let state = &mut self.types[t.idx()];
        // An ACK or NACK of the last response (answers to superseded ones are ignored). A
        // delta request may also change subscriptions, so handling goes on below.
        if !req.response_nonce.is_empty()
            && state.nonce.as_deref() == Some(req.response_nonce.as_str())
        {
            state.nonce = None;
            let nack = req.error_detail.as_ref().map(|e| e.message.as_str());
            self.core.record_answer(t, nack, None);
        }

        let first = !state.subscribed;
        let mut new_names = Vec::new();
        if first {
            state.subscribed = true;
            for (name, version) in &req.initial_resource_versions {
                // Unparseable versions count as "has something else", which forces a resend.
                let name = snapshot
                    .of(t)
                    .get_key_value(name.as_str())
                    .map(|(k, _)| k.clone())
                    .unwrap_or_else(|| name.as_str().into());
                state
                    .has
                    .insert(name, u64::from_str_radix(version, 16).unwrap_or(u64::MAX));
            }
            if req.resource_names_subscribe.is_empty() && t.is_wildcard_by_default() {
                state.wildcard = true;
            }
            self.core.proxy.update(|p| p.state(t).subscribed = true);
        }
        for name in &req.resource_names_subscribe {
            if name == "*" {
                state.wildcard = true;
            } else if state.names.insert(name.clone()) {
                new_names.push(name.clone());
            }
        }
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                state.wildcard = false;
            } else {
                state.names.remove(name);
            }
            if !state.wants(name) {
                state.has.remove(name.as_str());
            }
        }

        // Everything the proxy wants and does not have at the current version.
        let mut updates: Vec<Arc<str>> = Vec::new();
        let mut removed: Vec<String> = Vec::new();
        if first || !req.resource_names_subscribe.is_empty() {
            let candidates: Vec<Arc<str>> = if state.wildcard {
                snapshot.of(t).keys().cloned().collect()
            } else {
                state
                    .names
                    .iter()
                    .filter_map(|n| {
                        snapshot
                            .of(t)
                            .get_key_value(n.as_str())
                            .map(|(k, _)| k.clone())
                    })
                    .collect()
            };
            for name in candidates {
                let version = snapshot.of(t).get(&name).map(|r| r.version);
                if state.has.get(name.as_ref()).copied() != version {
                    updates.push(name);
                }
            }
            // What the proxy has (from before a reconnect) that no longer exists.
            removed.extend(
                state
                    .has
                    .keys()
                    .filter(|n| !snapshot.of(t).contains_key(n.as_ref()))
                    .map(|n| n.to_string()),
            );
            // Newly asked-for names that do not exist: say so, or Envoy waits for them.
            removed.extend(new_names.into_iter().filter(|n| {
                !snapshot.of(t).contains_key(n.as_str()) && !state.has.contains_key(n.as_str())
            }));
        }
        if first || !updates.is_empty() || !removed.is_empty() {
            return self.respond(snapshot, t, updates, removed).await;
        }
        Ok(())
    }

    async fn on_snapshot(&mut self, snapshot: &Snapshot, contiguous: bool) -> Result<(), Gone> {
        for t in ResourceType::ALL {
            let state = &self.types[t.idx()];
            if !state.subscribed {
                continue;
            }
            let (updates, removed): (Vec<Arc<str>>, Vec<String>) = if contiguous {
                let updates = snapshot.changed[t.idx()]
                    .iter()
                    .filter(|n| state.wants(n))
                    .filter(|n| {
                        state.has.get(n.as_ref()).copied()
                            != snapshot.of(t).get(*n).map(|r| r.version)
                    })
                    .cloned()
                    .collect();
                let removed = snapshot.removed[t.idx()]
                    .iter()
                    .filter(|n| state.has.contains_key(n.as_ref()))
                    .map(|n| n.to_string())
                    .collect();
                (updates, removed)
            } else {
                let updates = snapshot
                    .of(t)
                    .iter()
                    .filter(|(n, _)| state.wants(n))
                    .filter(|(n, r)| state.has.get(n.as_ref()).copied() != Some(r.version))
                    .map(|(n, _)| n.clone())
                    .collect();
                let removed = state
                    .has
                    .keys()
                    .filter(|n| !snapshot.of(t).contains_key(n.as_ref()))
                    .map(|n| n.to_string())
                    .collect();
                (updates, removed)
            };
            if !updates.is_empty() || !removed.is_empty() {
                self.respond(snapshot, t, updates, removed).await?;
            }
        }
        Ok(())
    }
}

impl DeltaStream {
    async fn respond(
        &mut self,
        snapshot: &Snapshot,
        t: ResourceType,
        updates: Vec<Arc<str>>,
        removed: Vec<String>,
    ) -> Result<(), Gone> {
        let state = &mut self.types[t.idx()];
        let mut resources = Vec::with_capacity(updates.len());
        for name in &updates {
            if let Some(r) = snapshot.of(t).get(name) {
                state.has.insert(name.clone(), r.version);
                resources.push(PbResource {
                    name: name.to_string(),
                    version: r.version_string(),
                    resource: Some((*r.body).clone()),
                    ..Default::default()
                });
            }
        }
        for name in &removed {
            state.has.remove(name.as_str());
        }
        let version = snapshot.version_string(t);
        let count = resources.len();
        let nonce = self.core.book_response(t, &version, count);
        state.nonce = Some(nonce.clone());
        let response = DeltaDiscoveryResponse {
            system_version_info: version,
            resources,
            type_url: t.type_url().to_string(),
            removed_resources: removed,
            nonce,
            ..Default::default()
        };
        self.core.send(response).await
    }
}
