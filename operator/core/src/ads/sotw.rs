//! State-of-the-world ADS for one connection: one stream, every type, a nonce per type.
//!
//! LDS and CDS responses carry every resource (the protocol requires it for wildcard
//! types); EDS and RDS responses carry only the requested resources that changed since they
//! were last sent. A request that answers a superseded response (stale nonce) is ignored
//! whole, subscription included, as the protocol says.

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use std::collections::BTreeSet;
use std::sync::Arc;

use super::{shared_name, Candidates, ConnectionState, Response, Step, Subscription};
use crate::resources::ResourceType;
use crate::snapshot::Snapshot;

/// A state-of-the-world connection.
#[derive(Debug, Default)]
pub struct SotwConnection {
    /// Per-type state.
    pub state: ConnectionState,
    /// Per type: the type version of the last full-state response (LDS and CDS).
    full_version: crate::resources::PerType<Option<u64>>,
}

impl super::Connection for SotwConnection {
    type Request = DiscoveryRequest;
    type Wire = DiscoveryResponse;
    const NAME: &'static str = "sotw";

    fn node(req: &DiscoveryRequest) -> Option<&envoy_types::pb::envoy::config::core::v3::Node> {
        req.node.as_ref()
    }

    /// Handles one request against the snapshot the connection serves now.
    fn resync(&mut self) {
        self.state.resync();
    }

    fn handle_request(&mut self, snapshot: &Snapshot, req: &DiscoveryRequest) -> Step {
        let mut step = Step::default();
        let Some(t) = ResourceType::from_type_url(&req.type_url) else {
            return step; // a type Weir does not serve
        };
        let state = &mut self.state.types[t];
        if !req.response_nonce.is_empty() {
            let error = req.error_detail.as_ref().map(|e| e.message.as_str());
            match state.take_answer(t, &req.response_nonce, error, &req.version_info) {
                Some(answer) => step.answer = Some(answer),
                None => return step, // stale: ignored whole
            }
        }
        let typed = &snapshot.types[t];
        let subscription = if req.resource_names.is_empty() && t.is_wildcard_by_default()
            || req.resource_names.iter().any(|n| n == "*")
        {
            Subscription {
                wildcard: true,
                names: super::names::intern(BTreeSet::new()),
            }
        } else {
            Subscription {
                wildcard: false,
                names: super::names::intern(
                    req.resource_names
                        .iter()
                        .map(|n| shared_name(typed, n))
                        .collect(),
                ),
            }
        };
        if state.subscribed && state.subscription == subscription {
            return step; // an ACK or NACK only
        }
        if !state.subscribed {
            step.subscribed = Some(t);
        }
        state.subscribed = true;
        state.subscription = subscription;
        // A new subscription gets everything it asks for.
        let all: Vec<Arc<str>> = typed
            .resources
            .keys()
            .filter(|n| state.subscription.wants(n))
            .cloned()
            .collect();
        step.responses.push(self.respond(snapshot, t, all, true));
        step
    }

    /// Pushes what a new snapshot changed, limited to what the proxy watches.
    fn handle_snapshot(&mut self, snapshot: &Snapshot) -> Vec<Response> {
        let mut out = Vec::new();
        for (t, candidates) in self.state.changed_types(snapshot) {
            let typed = &snapshot.types[t];
            let state = &self.state.types[t];
            if t.is_wildcard_by_default() && state.subscription.wildcard {
                if self.full_version[t] != Some(typed.version) {
                    let all = typed.resources.keys().cloned().collect();
                    out.push(self.respond(snapshot, t, all, true));
                } else {
                    self.state.types[t].sync(typed);
                }
                continue;
            }
            let names: Box<dyn Iterator<Item = &Arc<str>>> = match candidates {
                Candidates::Changed => Box::new(typed.changed.iter()),
                Candidates::All => Box::new(typed.resources.keys()),
            };
            let wanted: Vec<Arc<str>> = names
                .filter(|n| state.subscription.wants(n))
                .filter(|n| typed.resources.get(*n).map(|r| r.version) != state.has(n))
                .cloned()
                .collect();
            if wanted.is_empty() {
                self.state.types[t].sync(typed);
            } else {
                out.push(self.respond(snapshot, t, wanted, false));
            }
        }
        out
    }

    fn message(response: &Response) -> super::wire::Message {
        super::wire::sotw(response)
    }

    fn encode(response: Response) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: response.version_string(),
            resources: response
                .resources
                .into_iter()
                .map(|r| (*r.body).clone())
                .collect(),
            type_url: response.type_.type_url().to_string(),
            nonce: response.nonce.to_string(),
            ..Default::default()
        }
    }
}

impl SotwConnection {
    fn respond(
        &mut self,
        snapshot: &Snapshot,
        t: ResourceType,
        names: Vec<Arc<str>>,
        full: bool,
    ) -> Response {
        if full {
            self.full_version[t] = Some(snapshot.types[t].version);
        }
        self.state.respond(t, snapshot, names, Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ads::tests::{mk_base, mk_next, names};
    use crate::ads::{Answer, Connection};
    use envoy_types::pb::google::rpc::Status;
    use ResourceType::{Cluster, Endpoint, Listener};

    fn req(t: ResourceType, names: &[&str], nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: t.type_url().into(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    fn nack(t: ResourceType, nonce: u64) -> DiscoveryRequest {
        DiscoveryRequest {
            error_detail: Some(Status {
                message: "rejected".into(),
                ..Default::default()
            }),
            ..req(t, &[], &nonce.to_string())
        }
    }

    #[test]
    fn wildcard_cds_gets_everything_and_explicit_eds_only_what_it_names() {
        let snap = mk_base();
        let mut conn = SotwConnection::default();
        let step = conn.handle_request(&snap, &req(Cluster, &[], ""));
        assert_eq!(step.subscribed, Some(Cluster));
        assert_eq!(names(&step.responses[0]), ["a", "b"]);
        let step = conn.handle_request(&snap, &req(Endpoint, &["b"], ""));
        assert_eq!(names(&step.responses[0]), ["b"]);
    }

    #[test]
    fn an_ack_is_recorded_and_a_stale_nonce_is_ignored_whole() {
        let snap = mk_base();
        let mut conn = SotwConnection::default();
        let first = conn
            .handle_request(&snap, &req(Endpoint, &["a"], ""))
            .responses[0]
            .nonce;
        // The snapshot changes before the proxy answers: a second response supersedes it.
        let next = mk_next(&snap, &[(Endpoint, "a", "2")], &[]);
        let second = conn.handle_snapshot(&next)[0].nonce;
        // The answer to the first is stale, even though it asks for new names.
        let stale = conn.handle_request(&next, &req(Endpoint, &["a", "b"], &first.to_string()));
        assert_eq!(stale, Step::default());
        let ack = conn.handle_request(&next, &req(Endpoint, &["a"], &second.to_string()));
        assert!(matches!(
            ack.answer,
            Some(Answer::Ack {
                type_: Endpoint,
                ..
            })
        ));
        assert!(
            ack.responses.is_empty(),
            "an ACK with the same names sends nothing"
        );
    }

    #[test]
    fn a_nack_is_reported_and_not_answered_then_a_new_version_is_sent() {
        let snap = mk_base();
        let mut conn = SotwConnection::default();
        let nonce = conn.handle_request(&snap, &req(Cluster, &[], "")).responses[0].nonce;
        let step = conn.handle_request(&snap, &nack(Cluster, nonce));
        assert_eq!(
            step.answer,
            Some(Answer::Nack {
                type_: Cluster,
                message: "rejected".into()
            })
        );
        assert!(step.responses.is_empty(), "no resend after a NACK");
        let next = mk_next(&snap, &[(Cluster, "c", "1")], &[]);
        let pushed = conn.handle_snapshot(&next);
        assert_eq!(names(&pushed[0]), ["a", "b", "c"], "CDS is sent whole");
    }

    #[test]
    fn only_changed_subscribed_names_are_pushed_and_missed_generations_are_diffed() {
        let snap = mk_base();
        let mut conn = SotwConnection::default();
        conn.handle_request(&snap, &req(Endpoint, &["a"], ""));
        let next = mk_next(&snap, &[(Endpoint, "b", "2")], &[]);
        assert!(conn.handle_snapshot(&next).is_empty(), "b is not watched");
        let next2 = mk_next(&next, &[(Endpoint, "a", "2")], &[]);
        let skipped = mk_next(&next2, &[(Endpoint, "b", "3")], &[]);
        // Generation 2 of EDS was seen; 4 arrives: every name is compared.
        let pushed = conn.handle_snapshot(&skipped);
        assert_eq!(names(&pushed[0]), ["a"]);
    }

    #[test]
    fn changing_the_names_is_a_new_subscription_and_an_unchanged_type_sends_nothing() {
        let snap = mk_base();
        let mut conn = SotwConnection::default();
        let n = conn
            .handle_request(&snap, &req(Endpoint, &["a"], ""))
            .responses[0]
            .nonce;
        let step = conn.handle_request(&snap, &req(Endpoint, &["a", "b"], &n.to_string()));
        assert_eq!(names(&step.responses[0]), ["a", "b"]);
        let listeners = mk_next(&snap, &[(Listener, "l", "1")], &[]);
        assert!(
            conn.handle_snapshot(&listeners).is_empty(),
            "LDS is not subscribed"
        );
    }
}
