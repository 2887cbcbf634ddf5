//! What each connected proxy has been sent and what it said back, per resource type. Each
//! stream owns its record (behind its own lock, so streams never contend); the registry only
//! lists them for `/debug/proxies` and the mesh status.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use weir_core::ads::{Answer, Response};
use weir_core::status::AckSummary;
use weir_core::views::proxies::{ProxyView, TypeState};
use weir_core::{PerType, ProxyProfile, ResourceType};

/// One connected proxy.
#[derive(Debug, Clone)]
pub struct ProxyRecord {
    /// Envoy node id.
    pub node: String,
    /// `sotw` or `delta`.
    pub protocol: &'static str,
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// The service account whose certificate the proxy is served.
    pub service_account: String,
    /// Capture mode and profile.
    pub profile: ProxyProfile,
    /// When the stream opened (seconds since the epoch).
    pub connected_at: u64,
    /// Snapshot generation last looked at.
    pub generation: u64,
    /// Per type (cds, eds, lds, rds), what the proxy was sent and answered.
    pub types: PerType<TypeState>,
    /// Per type, what the stream serves now (its workload's listeners, a scoped proxy's
    /// clusters and virtual hosts differ from its profile's): shared with the stream;
    /// None before its first view.
    pub serving: Option<PerType<Arc<weir_core::TypeSnapshot>>>,
    /// A scoped proxy's scope as last served.
    pub scope: Option<weir_core::views::proxies::ScopeView>,
}

/// Seconds since the epoch.
fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The profile as `/debug/proxies` writes it.
fn profile_string(p: &ProxyProfile) -> String {
    let mut text = match p.capture {
        weir_core::Capture::Transparent => format!("transparent, inbound {}", p.inbound.as_str()),
        weir_core::Capture::Explicit { port } => format!("explicit:{port}"),
    };
    if let Some(zone) = p.zone {
        text.push_str(&format!(", zone {zone}"));
    }
    text
}

impl ProxyRecord {
    /// The stream serves `view` now.
    pub fn serve(&mut self, view: &weir_core::Snapshot) {
        self.generation = view.generation;
        self.serving = Some(view.types.clone());
    }

    /// The record as `/debug/proxies` shows it: only the types the proxy asked for or was
    /// sent.
    pub fn view(&self) -> ProxyView {
        ProxyView {
            node: self.node.clone(),
            protocol: self.protocol.to_string(),
            namespace: self.namespace.clone(),
            pod: self.pod.clone(),
            service_account: self.service_account.clone(),
            profile: profile_string(&self.profile),
            connected_at: self.connected_at,
            generation: self.generation,
            types: self
                .types
                .iter()
                .filter(|(_, t)| t.subscribed || t.pushes > 0)
                .map(|(t, state)| (t.short().to_string(), state.clone()))
                .collect(),
            certificate_expires_at: None,
            scope: self.scope.clone().map(|mut scope| {
                // The Services whose clusters the stream serves.
                let served = self.serving.as_ref().map(|types| {
                    types[weir_core::ResourceType::Cluster]
                        .resources
                        .keys()
                        .filter_map(|name| weir_core::scope::service_of(name))
                        .map(|k| format!("{}/{}", k.namespace, k.name))
                        .collect::<std::collections::BTreeSet<_>>()
                });
                scope.services = served.into_iter().flatten().collect();
                scope
            }),
        }
    }

    /// Every subscribed type has ACKed its last response.
    pub fn in_sync(&self) -> bool {
        self.types
            .iter()
            .filter(|(_, s)| s.subscribed)
            .all(|(_, s)| s.acked())
    }

    /// Books a response sent.
    pub fn record_response(&mut self, response: &Response) {
        let s = &mut self.types[response.type_];
        s.sent_version = Some(response.version_string());
        s.pending_nonce = Some(response.nonce.to_string());
        s.pushes += 1;
        s.resources_sent += response.resources.len() as u64;
        s.sent_at = Some(now());
    }

    /// Records the proxy's answer to our last response of a type.
    pub fn record_answer(&mut self, answer: Answer) {
        let (t, nack, version) = match answer {
            Answer::Ack { type_, version } => (type_, None, version),
            Answer::Nack { type_, message } => (type_, Some(message), None),
        };
        let s = &mut self.types[t];
        s.pending_nonce = None;
        s.answered_at = Some(now());
        if nack.is_none() {
            s.acked_version = version.or_else(|| s.sent_version.clone());
        }
        s.nack = nack;
    }
}

/// A stream's handle on its record; unregisters on drop.
#[derive(Debug)]
pub struct ProxyHandle {
    id: u64,
    record: Arc<Mutex<ProxyRecord>>,
    registry: Arc<ProxyRegistry>,
}

impl ProxyHandle {
    /// Updates the record.
    pub fn update<R>(&self, f: impl FnOnce(&mut ProxyRecord) -> R) -> R {
        f(&mut crate::sync::lock(&self.record))
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        crate::sync::lock(&self.registry.proxies).remove(&self.id);
    }
}

/// All connected proxies.
#[derive(Debug, Default)]
pub struct ProxyRegistry {
    next_id: AtomicU64,
    proxies: Mutex<BTreeMap<u64, Arc<Mutex<ProxyRecord>>>>,
}

impl ProxyRegistry {
    /// Registers a new stream.
    pub fn register(
        self: &Arc<Self>,
        node: String,
        protocol: &'static str,
        meta: &weir_core::bootstrap::ProxyMeta,
        profile: ProxyProfile,
        service_account: &str,
    ) -> ProxyHandle {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let record = Arc::new(Mutex::new(ProxyRecord {
            node,
            protocol,
            namespace: meta.namespace.clone(),
            pod: meta.pod.clone(),
            service_account: service_account.to_string(),
            profile,
            connected_at: now(),
            generation: 0,
            types: PerType::default(),
            serving: None,
            scope: None,
        }));
        crate::sync::lock(&self.proxies).insert(id, record.clone());
        ProxyHandle {
            id,
            record,
            registry: self.clone(),
        }
    }

    /// A copy of every record, in connection order.
    pub fn list(&self) -> Vec<ProxyRecord> {
        let records: Vec<_> = crate::sync::lock(&self.proxies).values().cloned().collect();
        records
            .iter()
            .map(|r| crate::sync::lock(r).clone())
            .collect()
    }

    /// Number of open streams.
    pub fn len(&self) -> usize {
        crate::sync::lock(&self.proxies).len()
    }

    /// No open streams.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What `records` say about the route tables, for `Programmed`.
pub fn ack_summary(records: &[ProxyRecord]) -> AckSummary {
    AckSummary {
        proxies: records.len(),
        routes_acked: records.iter().all(|p| p.types[ResourceType::Route].acked()),
    }
}
