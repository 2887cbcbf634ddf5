//! Incremental (delta) ADS for one connection: per type, the proxy's subscriptions and the
//! version of every resource it has; only differences are sent (changed resources and the
//! names of removed ones). A reconnecting proxy reports what it has
//! (`initial_resource_versions`) and is sent only what differs; versions are content
//! hashes, so this holds across operator restarts too.

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource as PbResource,
};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::{shared_name, Candidates, ConnectionState, Response, Step};
use crate::resources::{Resource, ResourceType};
use crate::snapshot::Snapshot;

/// A delta connection.
#[derive(Debug, Default)]
pub struct DeltaConnection {
    /// Per-type state.
    pub state: ConnectionState,
}

impl super::Connection for DeltaConnection {
    type Request = DeltaDiscoveryRequest;
    type Wire = DeltaDiscoveryResponse;
    const NAME: &'static str = "delta";

    fn node(
        req: &DeltaDiscoveryRequest,
    ) -> Option<&envoy_types::pb::envoy::config::core::v3::Node> {
        req.node.as_ref()
    }

    /// Handles one request against the snapshot the connection serves now.
    fn resync(&mut self) {
        self.state.resync();
    }

    fn handle_request(&mut self, snapshot: &Snapshot, req: &DeltaDiscoveryRequest) -> Step {
        let mut step = Step::default();
        let Some(t) = ResourceType::from_type_url(&req.type_url) else {
            return step; // a type Weir does not serve
        };
        let typed = &snapshot.types[t];
        let state = &mut self.state.types[t];
        // An answer to the last response (answers to superseded ones are ignored). A delta
        // request may also change subscriptions, so handling goes on below.
        let error = req.error_detail.as_ref().map(|e| e.message.as_str());
        step.answer = state.take_answer(t, &req.response_nonce, error, "");

        let first = !state.subscribed;
        let before = state.subscription.clone();
        // What a reconnecting proxy says it has (versions that do not parse count as
        // "something else", which forces a resend).
        let reported: HashMap<&str, u64> = req
            .initial_resource_versions
            .iter()
            .filter(|_| first)
            .map(|(n, v)| (n.as_str(), u64::from_str_radix(v, 16).unwrap_or(u64::MAX)))
            .collect();
        if first {
            step.subscribed = Some(t);
            state.subscribed = true;
            if req.resource_names_subscribe.is_empty() && t.is_wildcard_by_default() {
                state.subscription.wildcard = true;
            }
        }
        let mut names: Option<BTreeSet<Arc<str>>> = None;
        let mut new_names: Vec<Arc<str>> = Vec::new();
        for name in &req.resource_names_subscribe {
            if name == "*" {
                state.subscription.wildcard = true;
            } else {
                let name = shared_name(typed, name);
                let set = names.get_or_insert_with(|| (*before.names).clone());
                if set.insert(name.clone()) {
                    new_names.push(name);
                }
            }
        }
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                state.subscription.wildcard = false;
            } else {
                names
                    .get_or_insert_with(|| (*before.names).clone())
                    .remove(name.as_str());
            }
        }
        if let Some(set) = names {
            state.subscription.names = super::names::intern(set);
        }
        if !first && req.resource_names_subscribe.is_empty() {
            return step;
        }

        // What the proxy has: on its first request, what it reported; later, what it is in
        // step with, of the names it wanted before this request.
        let synced = state.synced.clone();
        let has = |n: &str| -> Option<u64> {
            if first {
                reported.get(n).copied()
            } else if before.wants(n) {
                synced.resources.get(n).map(|r| r.version)
            } else {
                None
            }
        };
        // Everything the proxy wants and does not have at the current version.
        let wanted: Box<dyn Iterator<Item = (&Arc<str>, &Resource)>> =
            if state.subscription.wildcard {
                Box::new(typed.resources.iter())
            } else {
                Box::new(
                    state
                        .subscription
                        .names
                        .iter()
                        .filter_map(|n| typed.resources.get_key_value(n)),
                )
            };
        let updates: Vec<Arc<str>> = wanted
            .filter(|(n, r)| has(n) != Some(r.version))
            .map(|(n, _)| n.clone())
            .collect();
        // What the proxy has that no longer exists, and newly asked-for names that do not
        // exist: say so, or Envoy waits for them.
        let mut removed: Vec<Arc<str>> = if first {
            reported
                .keys()
                .filter(|n| !typed.resources.contains_key(**n))
                .map(|n| shared_name(typed, n))
                .collect()
        } else if Arc::ptr_eq(&synced, typed) {
            Vec::new()
        } else {
            synced
                .resources
                .keys()
                .filter(|n| has(n).is_some() && !typed.resources.contains_key(*n))
                .cloned()
                .collect()
        };
        removed.extend(
            new_names
                .into_iter()
                .filter(|n| !typed.resources.contains_key(n) && has(n).is_none()),
        );
        if first || !updates.is_empty() || !removed.is_empty() {
            step.responses
                .push(self.state.respond(t, snapshot, updates, removed));
        } else {
            self.state.types[t].sync(typed);
        }
        step
    }

    /// Pushes what a new snapshot changed, limited to what the proxy watches.
    fn handle_snapshot(&mut self, snapshot: &Snapshot) -> Vec<Response> {
        let mut out = Vec::new();
        for (t, candidates) in self.state.changed_types(snapshot) {
            let typed = &snapshot.types[t];
            let state = &self.state.types[t];
            let version = |n: &str| typed.resources.get(n).map(|r| r.version);
            let (updates, removed): (Vec<Arc<str>>, Vec<Arc<str>>) = match candidates {
                Candidates::Changed => (
                    typed
                        .changed
                        .iter()
                        .filter(|n| state.subscription.wants(n) && state.has(n) != version(n))
                        .cloned()
                        .collect(),
                    typed
                        .removed
                        .iter()
                        .filter(|n| state.has(n).is_some())
                        .cloned()
                        .collect(),
                ),
                Candidates::All => (
                    typed
                        .resources
                        .iter()
                        .filter(|(n, r)| {
                            state.subscription.wants(n) && state.has(n) != Some(r.version)
                        })
                        .map(|(n, _)| n.clone())
                        .collect(),
                    state
                        .synced
                        .resources
                        .keys()
                        .filter(|n| state.has(n).is_some() && !typed.resources.contains_key(*n))
                        .cloned()
                        .collect(),
                ),
            };
            if !updates.is_empty() || !removed.is_empty() {
                out.push(self.state.respond(t, snapshot, updates, removed));
            } else {
                self.state.types[t].sync(typed);
            }
        }
        out
    }

    fn requested_names(req: &DeltaDiscoveryRequest) -> Option<(ResourceType, Vec<&str>)> {
        let t = ResourceType::from_type_url(&req.type_url)
            .filter(|t| matches!(t, ResourceType::Cluster | ResourceType::VirtualHost))?;
        let names: Vec<&str> = req
            .resource_names_subscribe
            .iter()
            .map(String::as_str)
            .chain(req.initial_resource_versions.keys().map(String::as_str))
            .filter(|n| *n != "*")
            .collect();
        (!names.is_empty()).then_some((t, names))
    }

    fn subscribed_names(req: &DeltaDiscoveryRequest) -> Vec<&str> {
        req.resource_names_subscribe
            .iter()
            .map(String::as_str)
            .filter(|n| *n != "*")
            .collect()
    }

    fn request_type(req: &DeltaDiscoveryRequest) -> Option<ResourceType> {
        ResourceType::from_type_url(&req.type_url)
    }

    fn message(response: &Response) -> super::wire::Message {
        super::wire::delta(response)
    }

    fn encode(response: Response) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            system_version_info: response.version_string(),
            resources: response
                .resources
                .into_iter()
                .map(|r| PbResource {
                    name: r.name.to_string(),
                    aliases: r.aliases.iter().map(|a| a.to_string()).collect(),
                    version: r.version_string(),
                    resource: Some((*r.body).clone()),
                    ..Default::default()
                })
                .collect(),
            type_url: response.type_.type_url().to_string(),
            removed_resources: response.removed.iter().map(|n| n.to_string()).collect(),
            nonce: response.nonce.to_string(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ads::tests::{mk_base, mk_next, mk_snapshot, names};
    use crate::ads::{Answer, Connection};
    use envoy_types::pb::google::rpc::Status;
    use ResourceType::{Cluster, Endpoint};

    fn req(
        t: ResourceType,
        subscribe: &[&str],
        unsubscribe: &[&str],
        nonce: &str,
    ) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: t.type_url().into(),
            resource_names_subscribe: subscribe.iter().map(|n| n.to_string()).collect(),
            resource_names_unsubscribe: unsubscribe.iter().map(|n| n.to_string()).collect(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    fn removed(r: &Response) -> Vec<&str> {
        r.removed.iter().map(|n| n.as_ref()).collect()
    }

    #[test]
    fn the_first_wildcard_request_gets_everything_and_an_empty_type_still_answers() {
        let snap = mk_snapshot(&[(Cluster, "a", "1")]);
        let mut conn = DeltaConnection::default();
        let step = conn.handle_request(&snap, &req(Cluster, &[], &[], ""));
        assert_eq!(names(&step.responses[0]), ["a"]);
        // LDS is empty, but Envoy waits for a first answer before it is initialised.
        let step = conn.handle_request(&snap, &req(ResourceType::Listener, &[], &[], ""));
        assert_eq!(step.responses.len(), 1);
        assert!(step.responses[0].resources.is_empty());
    }

    #[test]
    fn explicit_subscriptions_get_what_they_name_and_missing_names_are_said_removed() {
        let snap = mk_base();
        let mut conn = DeltaConnection::default();
        let step = conn.handle_request(&snap, &req(Endpoint, &["a", "zzz"], &[], ""));
        assert_eq!(names(&step.responses[0]), ["a"]);
        assert_eq!(removed(&step.responses[0]), ["zzz"]);
        let n = step.responses[0].nonce.to_string();
        let step = conn.handle_request(&snap, &req(Endpoint, &["b"], &[], &n));
        assert!(matches!(step.answer, Some(Answer::Ack { .. })));
        assert_eq!(names(&step.responses[0]), ["b"]);
    }

    #[test]
    fn an_unsubscribed_name_is_no_longer_pushed() {
        let snap = mk_base();
        let mut conn = DeltaConnection::default();
        conn.handle_request(&snap, &req(Endpoint, &["a", "b"], &[], ""));
        let step = conn.handle_request(&snap, &req(Endpoint, &[], &["b"], ""));
        assert!(step.responses.is_empty());
        let next = mk_next(&snap, &[(Endpoint, "a", "2"), (Endpoint, "b", "2")], &[]);
        let pushed = conn.handle_snapshot(&next);
        assert_eq!(names(&pushed[0]), ["a"]);
        // A wildcard can be dropped too: CDS "*" then unsubscribe "*".
        conn.handle_request(&snap, &req(Cluster, &["*"], &[], ""));
        conn.handle_request(&snap, &req(Cluster, &[], &["*"], ""));
        let next = mk_next(&next, &[(Cluster, "c", "1")], &[]);
        assert!(conn.handle_snapshot(&next).is_empty());
    }

    #[test]
    fn a_nack_then_a_new_version_sends_only_the_new_version() {
        let snap = mk_base();
        let mut conn = DeltaConnection::default();
        let n = conn
            .handle_request(&snap, &req(Cluster, &[], &[], ""))
            .responses[0]
            .nonce;
        let mut nack = req(Cluster, &[], &[], &n.to_string());
        nack.error_detail = Some(Status {
            message: "bad cluster".into(),
            ..Default::default()
        });
        let step = conn.handle_request(&snap, &nack);
        assert_eq!(
            step.answer,
            Some(Answer::Nack {
                type_: Cluster,
                message: "bad cluster".into()
            })
        );
        assert!(step.responses.is_empty(), "no resend after a NACK");
        let next = mk_next(&snap, &[(Cluster, "b", "2")], &[(Cluster, "a")]);
        let pushed = conn.handle_snapshot(&next);
        assert_eq!(names(&pushed[0]), ["b"]);
        assert_eq!(removed(&pushed[0]), ["a"]);
    }

    #[test]
    fn a_snapshot_that_changes_while_an_ack_is_pending_supersedes_the_nonce() {
        let snap = mk_base();
        let mut conn = DeltaConnection::default();
        let first = conn
            .handle_request(&snap, &req(Cluster, &[], &[], ""))
            .responses[0]
            .nonce;
        let next = mk_next(&snap, &[(Cluster, "a", "2")], &[]);
        let second = conn.handle_snapshot(&next)[0].nonce;
        assert_ne!(first, second);
        let late = conn.handle_request(&next, &req(Cluster, &[], &[], &first.to_string()));
        assert_eq!(
            late.answer, None,
            "an answer to a superseded response is stale"
        );
        let ack = conn.handle_request(&next, &req(Cluster, &[], &[], &second.to_string()));
        assert!(matches!(ack.answer, Some(Answer::Ack { .. })));
    }

    #[test]
    fn a_reconnect_with_initial_versions_gets_only_the_difference() {
        let snap = mk_base();
        let mut conn = DeltaConnection::default();
        let first = &conn
            .handle_request(&snap, &req(Cluster, &[], &[], ""))
            .responses[0];
        let a = first.resources[0].version_string();

        // The same proxy, after an operator restart: it has a (current) and old-x (gone),
        // and an outdated b.
        let mut fresh = DeltaConnection::default();
        let mut again = req(Cluster, &[], &[], "");
        again.initial_resource_versions = [
            ("a".to_string(), a),
            ("b".to_string(), "0000000000000001".to_string()),
            ("old-x".to_string(), "0000000000000002".to_string()),
        ]
        .into();
        let step = fresh.handle_request(&snap, &again);
        assert_eq!(names(&step.responses[0]), ["b"]);
        assert_eq!(removed(&step.responses[0]), ["old-x"]);
    }

    #[test]
    fn missed_generations_are_diffed_against_what_the_proxy_has() {
        let snap = mk_base();
        let mut conn = DeltaConnection::default();
        conn.handle_request(&snap, &req(Endpoint, &["a", "b"], &[], ""));
        let g2 = mk_next(&snap, &[(Endpoint, "a", "2")], &[]);
        let g3 = mk_next(&g2, &[(Endpoint, "a", "1")], &[(Endpoint, "b")]);
        // Generation 2 never reached this connection: a is back where it was, b is gone.
        let pushed = conn.handle_snapshot(&g3);
        assert_eq!(pushed.len(), 1);
        assert!(names(&pushed[0]).is_empty());
        assert_eq!(removed(&pushed[0]), ["b"]);
    }
}
