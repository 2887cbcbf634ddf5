//! What each connected proxy has been sent and what it said back, per resource type. Each
//! stream owns its record (behind its own lock, so streams never contend); the registry only
//! lists them for `/debug/proxies` and the mesh status.

use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use weir_core::{ProxyProfile, ResourceType};

/// Per-type state of one proxy.
#[derive(Debug, Clone, Default, Serialize)]
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
}

/// One connected proxy.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyRecord {
    /// Envoy node id.
    pub node: String,
    /// `sotw` or `delta`.
    pub protocol: &'static str,
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Capture mode and profile.
    #[serde(serialize_with = "profile_string")]
    pub profile: ProxyProfile,
    /// When the stream opened (seconds since the epoch).
    pub connected_at: u64,
    /// Snapshot generation last looked at.
    pub generation: u64,
    /// cds, eds, lds, rds.
    pub types: BTreeMap<&'static str, TypeState>,
}

fn profile_string<S: serde::Serializer>(p: &ProxyProfile, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&match p.capture {
        weir_core::Capture::Transparent => "transparent".to_string(),
        weir_core::Capture::Explicit { port } => format!("explicit:{port}"),
    })
}

impl ProxyRecord {
    /// State of one type (created on first use).
    pub fn state(&mut self, t: ResourceType) -> &mut TypeState {
        self.types.entry(t.short()).or_default()
    }

    /// Every subscribed type has ACKed its last response.
    pub fn in_sync(&self) -> bool {
        self.types
            .values()
            .filter(|s| s.subscribed)
            .all(|s| s.pending_nonce.is_none() && s.nack.is_none())
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
        f(&mut self.record.lock().expect("proxy record lock poisoned"))
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        self.registry
            .proxies
            .lock()
            .expect("registry lock poisoned")
            .remove(&self.id);
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
    ) -> ProxyHandle {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let record = Arc::new(Mutex::new(ProxyRecord {
            node,
            protocol,
            namespace: meta.namespace.clone(),
            pod: meta.pod.clone(),
            profile: meta.profile(),
            connected_at: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            generation: 0,
            types: BTreeMap::new(),
        }));
        self.proxies
            .lock()
            .expect("registry lock poisoned")
            .insert(id, record.clone());
        ProxyHandle {
            id,
            record,
            registry: self.clone(),
        }
    }

    /// A copy of every record, in connection order.
    pub fn list(&self) -> Vec<ProxyRecord> {
        let records: Vec<_> = self
            .proxies
            .lock()
            .expect("registry lock poisoned")
            .values()
            .cloned()
            .collect();
        records
            .iter()
            .map(|r| r.lock().expect("proxy record lock poisoned").clone())
            .collect()
    }

    /// Number of open streams.
    pub fn len(&self) -> usize {
        self.proxies.lock().expect("registry lock poisoned").len()
    }

    /// No open streams.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
