//! State-of-the-world ADS: one stream, four types, nonces per type.
//!
//! LDS and CDS responses carry every resource (the protocol requires it); EDS and RDS
//! responses carry only the requested resources that changed since they were last sent.

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};
use weir_core::{ResourceType, Snapshot};

use super::proxies::ProxyHandle;
use crate::engine::Engine;

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

struct Stream {
    engine: Arc<Engine>,
    node: String,
    proxy: ProxyHandle,
    types: [TypeStream; 4],
    nonce: u64,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
}

/// Runs one SotW stream until the proxy goes away.
pub async fn run(
    engine: Arc<Engine>,
    mut inbound: Streaming<DiscoveryRequest>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
) {
    let first = match inbound.message().await {
        Ok(Some(req)) => req,
        _ => return,
    };
    let (node, meta) = match super::identify(first.node.as_ref()) {
        Ok(id) => id,
        Err(status) => {
            tracing::warn!(%status, "refusing xDS stream");
            let _ = tx.send(Err(status)).await;
            return;
        }
    };
    let mut snapshots = engine.subscribe(meta.profile());
    let mut snapshot = snapshots.borrow_and_update().clone();
    let proxy = engine.proxies.register(node.clone(), "sotw", &meta);
    engine.metrics.connected_proxies.inc();
    tracing::info!(
        node,
        namespace = meta.namespace,
        pod = meta.pod,
        "proxy connected (sotw)"
    );
    let mut stream = Stream {
        engine: engine.clone(),
        node: node.clone(),
        proxy,
        types: Default::default(),
        nonce: 0,
        tx,
    };

    let closed = engine.closed();
    tokio::pin!(closed);
    let mut next = Some(first);
    loop {
        if let Some(req) = next.take() {
            if stream.on_request(&snapshot, req).await.is_err() {
                break;
            }
        }
        tokio::select! {
            _ = &mut closed => break,
            msg = inbound.message() => match msg {
                Ok(Some(req)) => next = Some(req),
                Ok(None) => break,
                Err(status) => {
                    tracing::debug!(node, %status, "stream ended");
                    break;
                }
            },
            changed = snapshots.changed() => {
                if changed.is_err() {
                    break;
                }
                let fresh = snapshots.borrow_and_update().clone();
                let contiguous = fresh.generation == snapshot.generation + 1;
                snapshot = fresh;
                if stream.on_snapshot(&snapshot, contiguous).await.is_err() {
                    break;
                }
            }
        }
    }
    engine.metrics.connected_proxies.dec();
    tracing::info!(node, "proxy disconnected (sotw)");
}

impl Stream {
    async fn on_request(&mut self, snapshot: &Snapshot, req: DiscoveryRequest) -> Result<(), ()> {
        let Some(t) = ResourceType::from_type_url(&req.type_url) else {
            tracing::debug!(
                node = self.node,
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
            match &req.error_detail {
                Some(err) => {
                    super::count_nack(&self.engine, &self.node, t, &err.message);
                    self.proxy.update(|p| {
                        let s = p.state(t);
                        s.pending_nonce = None;
                        s.nack = Some(err.message.clone());
                    });
                }
                None => self.proxy.update(|p| {
                    let s = p.state(t);
                    s.pending_nonce = None;
                    s.nack = None;
                    s.acked_version = Some(req.version_info.clone());
                }),
            }
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
            self.proxy.update(|p| p.state(t).subscribed = true);
            return self.respond(snapshot, t, all, true).await;
        }
        Ok(())
    }

    async fn on_snapshot(&mut self, snapshot: &Snapshot, contiguous: bool) -> Result<(), ()> {
        self.proxy.update(|p| p.generation = snapshot.generation);
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

    async fn respond(
        &mut self,
        snapshot: &Snapshot,
        t: ResourceType,
        names: Vec<Arc<str>>,
        full: bool,
    ) -> Result<(), ()> {
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
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        state.nonce = Some(nonce.clone());
        let version = snapshot.version_string(t);
        let count = resources.len();
        self.proxy.update(|p| {
            let s = p.state(t);
            s.sent_version = Some(version.clone());
            s.pending_nonce = Some(nonce.clone());
            s.pushes += 1;
            s.resources_sent += count as u64;
        });
        super::count_push(&self.engine, t, count);
        let response = DiscoveryResponse {
            version_info: version,
            resources,
            type_url: t.type_url().to_string(),
            nonce,
            ..Default::default()
        };
        self.tx.send(Ok(response)).await.map_err(|_| ())
    }
}
