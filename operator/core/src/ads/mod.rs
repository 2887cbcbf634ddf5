//! The xDS protocol of one ADS connection, without I/O: a request or a new snapshot goes in,
//! responses (and what the proxy said of our last response) come out. The async driver in
//! the operator only moves messages; every protocol rule lives here and is unit-tested
//! without sockets.
//!
//! ```text
//! DiscoveryRequest / DeltaDiscoveryRequest --handle_request--> Step { answer, responses }
//! new Snapshot (per-type generations)      --handle_snapshot--> responses
//! Response --encode--> DiscoveryResponse / DeltaDiscoveryResponse
//! ```
//!
//! Both variants share [`TypeState`]: the subscription (wildcard and/or explicit names, an
//! interned set shared with every stream that asks for the same), the type snapshot the
//! proxy is in step with (shared with the snapshot cache: a stream keeps no per-resource
//! state of its own), and the nonce of the response awaiting an answer. A NACK is recorded
//! and never answered with a resend: the proxy keeps its last good config until the
//! snapshot changes again. [`wire`] turns responses into gRPC messages made of shared,
//! once-encoded pieces.

pub mod delta;
pub mod names;
pub mod sotw;
pub mod wire;

use std::sync::Arc;

use crate::resources::{PerType, Resource, ResourceType};
use crate::snapshot::{Snapshot, TypeSnapshot};

pub use delta::DeltaConnection;
pub use sotw::SotwConnection;

/// What the driver needs of either variant: requests in, responses out, and the wire form.
pub trait Connection: Default + Send + 'static {
    /// DiscoveryRequest or DeltaDiscoveryRequest.
    type Request: Send + 'static;
    /// DiscoveryResponse or DeltaDiscoveryResponse.
    type Wire: Send + 'static;
    /// `sotw` or `delta`.
    const NAME: &'static str;
    /// The node of a request (set on the first one).
    fn node(req: &Self::Request) -> Option<&envoy_types::pb::envoy::config::core::v3::Node>;
    /// Handles one request against the snapshot served now.
    fn handle_request(&mut self, snapshot: &Snapshot, req: &Self::Request) -> Step;
    /// Pushes what a new snapshot changed.
    fn handle_snapshot(&mut self, snapshot: &Snapshot) -> Vec<Response>;
    /// The response as prost would encode it (for tests and tools; streams send
    /// [`Connection::message`]).
    fn encode(response: Response) -> Self::Wire;
    /// The response as a gRPC message of shared pieces.
    fn message(response: &Response) -> wire::Message;
    /// The next snapshot does not follow the ones seen (the stream switched profiles):
    /// compare everything the proxy has with it.
    fn resync(&mut self);
    /// The names of clusters and virtual hosts a request asks for or says it holds, which
    /// a scoped proxy's scope learns from (delta only: SotW proxies are not scoped).
    fn requested_names(_req: &Self::Request) -> Option<(ResourceType, Vec<&str>)> {
        None
    }
    /// Of those, the ones the request subscribes to by name (not the ones it holds).
    fn subscribed_names(_req: &Self::Request) -> Vec<&str> {
        Vec::new()
    }
    /// The type a request is about (delta only, for scoped proxies).
    fn request_type(_req: &Self::Request) -> Option<ResourceType> {
        None
    }
}

/// A response to send, before encoding: what the state machine decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// The resource type.
    pub type_: ResourceType,
    /// The type's version (content hash of the whole type).
    pub version: u64,
    /// The nonce the proxy answers with.
    pub nonce: u64,
    /// Resources carried (shared with the snapshot).
    pub resources: Vec<Resource>,
    /// Names of removed resources (delta only).
    pub removed: Vec<Arc<str>>,
}

impl Response {
    /// The version as sent on the wire.
    pub fn version_string(&self) -> String {
        format!("{:016x}", self.version)
    }
}

/// What the proxy said about our last response of a type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Applied.
    Ack {
        /// The type.
        type_: ResourceType,
        /// The version it now runs (SotW says; delta does not).
        version: Option<String>,
    },
    /// Rejected, with Envoy's message; it keeps its last good config.
    Nack {
        /// The type.
        type_: ResourceType,
        /// Envoy's error message.
        message: String,
    },
}

/// The outcome of one request.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Step {
    /// The proxy's answer to our last response of the request's type, if it carried one.
    pub answer: Option<Answer>,
    /// The type the proxy subscribed to for the first time, if any.
    pub subscribed: Option<ResourceType>,
    /// Responses to send, in order.
    pub responses: Vec<Response>,
}

/// A proxy's subscription to one type: every resource (wildcard), named ones, or both
/// (delta allows a wildcard plus explicit names).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscription {
    /// Every resource of the type.
    pub wildcard: bool,
    /// Explicitly named resources (interned: see [`names`]).
    pub names: names::NameSet,
}

impl Subscription {
    /// Whether the proxy wants this resource.
    pub fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

/// Per-type protocol state of one connection, shared by both variants.
#[derive(Debug, Default)]
pub struct TypeState {
    /// The proxy asked for this type.
    pub subscribed: bool,
    /// What it asked for.
    pub subscription: Subscription,
    /// The type snapshot the proxy is in step with: of every name it wants, it has this
    /// snapshot's version (nothing where the snapshot lacks the name). Every response
    /// brings the proxy fully in step with the snapshot it was made from, so this one
    /// shared pointer stands for what would otherwise be a map of every name and version.
    pub synced: Arc<TypeSnapshot>,
    /// Compare the next snapshot whole instead of by its change list (the stream switched
    /// profiles, so generations do not follow).
    diff_all: bool,
    /// Nonce of the last response, until the proxy answers it.
    pub pending_nonce: Option<u64>,
}

impl TypeState {
    /// The version of `name` the proxy has, if any.
    pub fn has(&self, name: &str) -> Option<u64> {
        if !self.subscription.wants(name) {
            return None;
        }
        self.synced.resources.get(name).map(|r| r.version)
    }

    /// Records a proxy's answer when it answers our latest response of the type; answers
    /// to superseded responses are stale and ignored (None).
    fn take_answer(
        &mut self,
        type_: ResourceType,
        nonce: &str,
        error: Option<&str>,
        version: &str,
    ) -> Option<Answer> {
        if nonce.is_empty() || nonce.parse::<u64>().ok() != self.pending_nonce {
            return None;
        }
        self.pending_nonce = None;
        Some(match error {
            Some(message) => Answer::Nack {
                type_,
                message: message.to_string(),
            },
            None => Answer::Ack {
                type_,
                version: (!version.is_empty()).then(|| version.to_string()),
            },
        })
    }

    /// The names a new snapshot of the type may have changed for this connection: its
    /// change list when it directly follows the one the proxy is in step with, else every
    /// name; nothing when it is that one.
    fn candidates(&self, snapshot: &TypeSnapshot) -> Option<Candidates> {
        if self.diff_all {
            Some(Candidates::All)
        } else if snapshot.generation == self.synced.generation {
            None
        } else if self.synced.generation.checked_add(1) == Some(snapshot.generation) {
            Some(Candidates::Changed)
        } else {
            Some(Candidates::All)
        }
    }

    /// The proxy is in step with `snapshot` (it was sent every difference that mattered).
    fn sync(&mut self, snapshot: &Arc<TypeSnapshot>) {
        self.synced = snapshot.clone();
        self.diff_all = false;
    }
}

/// Which names of a new type snapshot to compare with what the proxy has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Candidates {
    /// The snapshot's change and removal lists.
    Changed,
    /// Everything: the connection missed generations.
    All,
}

/// Nonces and per-type state, the part both variants hold alike.
#[derive(Debug, Default)]
pub struct ConnectionState {
    /// Per-type state.
    pub types: PerType<TypeState>,
    next_nonce: u64,
}

impl ConnectionState {
    /// The next snapshot of every type is diffed whole against what the proxy has.
    pub fn resync(&mut self) {
        for t in ResourceType::ALL {
            self.types[t].diff_all = true;
        }
    }

    /// The subscribed types a new snapshot changed, with the names to compare for each.
    fn changed_types(&mut self, snapshot: &Snapshot) -> Vec<(ResourceType, Candidates)> {
        ResourceType::ALL
            .into_iter()
            .filter_map(|t| {
                let state = &self.types[t];
                if !state.subscribed {
                    return None;
                }
                state.candidates(&snapshot.types[t]).map(|c| (t, c))
            })
            .collect()
    }

    /// A response of type `t` carrying `updates` (those the snapshot has) and `removed`,
    /// which together bring the proxy in step with the snapshot; records that, and the
    /// nonce awaiting its answer.
    fn respond(
        &mut self,
        t: ResourceType,
        snapshot: &Snapshot,
        updates: Vec<Arc<str>>,
        removed: Vec<Arc<str>>,
    ) -> Response {
        let typed = &snapshot.types[t];
        let state = &mut self.types[t];
        let resources = one_per_name(
            updates
                .iter()
                .filter_map(|name| typed.resources.get(name).cloned()),
        );
        state.sync(typed);
        self.next_nonce += 1;
        state.pending_nonce = Some(self.next_nonce);
        Response {
            type_: t,
            version: typed.version,
            nonce: self.next_nonce,
            resources,
            removed,
        }
    }
}

/// The resources of a response, one per resource name: a virtual host and the on-demand
/// names that resolved to it (see `crate::scope`) are one entry with every alias, since
/// Envoy refuses a response that names a resource twice.
fn one_per_name(resources: impl Iterator<Item = Resource>) -> Vec<Resource> {
    let resources: Vec<Resource> = resources.collect();
    if resources.iter().all(|r| r.aliases.is_empty()) {
        // Every other response: names are the map's keys, distinct already.
        return resources;
    }
    let mut out: Vec<Resource> = Vec::new();
    let mut at: std::collections::HashMap<Arc<str>, usize> = std::collections::HashMap::new();
    for r in resources {
        match at.get(&r.name) {
            Some(&i) => {
                let aliases = r.aliases;
                out[i].aliases.extend(aliases);
            }
            None => {
                at.insert(r.name.clone(), out.len());
                out.push(r);
            }
        }
    }
    out
}

/// The name as the snapshot holds it (shared), or a new allocation for a name it lacks.
fn shared_name(snapshot: &TypeSnapshot, name: &str) -> Arc<str> {
    snapshot
        .resources
        .get_key_value(name)
        .map(|(k, _)| k.clone())
        .unwrap_or_else(|| name.into())
}

#[cfg(test)]
pub(crate) mod tests {
    //! Builders for the state machine tests: snapshots without translation.
    use super::*;
    use crate::snapshot::ResourceMap;
    use envoy_types::pb::google::protobuf::Any;

    /// A resource whose content is `body`.
    pub fn mk_resource(name: &str, body: &str) -> Resource {
        Resource::from_any(
            name,
            Any {
                type_url: "test".into(),
                value: body.as_bytes().to_vec(),
            },
        )
    }

    /// A first snapshot with the given (type, name, body) resources.
    pub fn mk_snapshot(resources: &[(ResourceType, &str, &str)]) -> Snapshot {
        let mut maps: PerType<ResourceMap> = PerType::default();
        for (t, name, body) in resources {
            maps[*t].insert(Arc::from(*name), mk_resource(name, body));
        }
        Snapshot {
            generation: 1,
            types: PerType::from_fn(|t| Arc::new(TypeSnapshot::first(maps[t].clone()))),
        }
    }

    /// The next snapshot: `upserts` set (type, name, body), `removals` removed.
    pub fn mk_next(
        prev: &Snapshot,
        upserts: &[(ResourceType, &str, &str)],
        removals: &[(ResourceType, &str)],
    ) -> Snapshot {
        let types = PerType::from_fn(|t| {
            let before = &prev.types[t];
            let ups: Vec<_> = upserts.iter().filter(|u| u.0 == t).collect();
            let rms: Vec<_> = removals.iter().filter(|r| r.0 == t).collect();
            if ups.is_empty() && rms.is_empty() {
                return before.clone();
            }
            let mut resources = before.resources.clone();
            for (_, name, body) in &ups {
                resources.insert(Arc::from(*name), mk_resource(name, body));
            }
            for (_, name) in &rms {
                resources.remove(*name);
            }
            Arc::new(TypeSnapshot {
                generation: before.generation + 1,
                version: resources.values().fold(0, |v, r| v ^ r.fingerprint()),
                changed: ups
                    .iter()
                    .map(|u| Arc::from(u.1))
                    .collect::<Vec<_>>()
                    .into(),
                removed: rms
                    .iter()
                    .map(|r| Arc::from(r.1))
                    .collect::<Vec<_>>()
                    .into(),
                resources,
            })
        });
        Snapshot {
            generation: prev.generation + 1,
            types,
        }
    }

    /// Two clusters with their load assignments, and a route table.
    pub fn mk_base() -> Snapshot {
        use ResourceType::{Cluster, Endpoint, Route};
        mk_snapshot(&[
            (Cluster, "a", "1"),
            (Cluster, "b", "1"),
            (Endpoint, "a", "1"),
            (Endpoint, "b", "1"),
            (Route, "r", "1"),
        ])
    }

    #[test]
    fn a_virtual_host_and_the_names_resolved_to_it_are_one_entry() {
        let real = mk_resource("outbound|80/a", "1");
        let mut asked = real.clone();
        asked.aliases = vec![Arc::from("outbound|80/a.ns:80")];
        let other = mk_resource("outbound|80/b", "1");
        let out = one_per_name([real, other, asked].into_iter());
        let names: Vec<&str> = out.iter().map(|r| r.name.as_ref()).collect();
        assert_eq!(names, ["outbound|80/a", "outbound|80/b"]);
        assert_eq!(out[0].aliases, [Arc::from("outbound|80/a.ns:80")]);
    }

    /// Names carried by a response.
    pub fn names(r: &Response) -> Vec<&str> {
        r.resources.iter().map(|r| r.name.as_ref()).collect()
    }
}
