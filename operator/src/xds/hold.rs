//! A scoped proxy's first request for a virtual host, answered once its clusters are warm.
//!
//! ```text
//! VHDS request that grows the scope --> the Service's clusters (CDS) go now, the request
//!   is held (other virtual-host pushes wait with it)
//! EDS requests --> answered; an EDS acknowledgement marks the endpoints sent before it
//!   applied --> every cluster sent ahead applied (or HOLD_LIMIT) --> the held requests
//!   are answered, in order
//! ```
//!
//! Why: Envoy applies endpoints only after clusters (it pauses EDS meanwhile) and acks a
//! response once applied, so the clusters are warm when the virtual host's routes first
//! use them and Envoy does not ask for them by name, which it would never do again and
//! which would pin their Service (see `weir_core::scope`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use weir_core::ads;
use weir_core::{ResourceType, TypeSnapshot};

/// How long held requests wait at most: then they are answered, and the proxy may ask
/// for a cluster by name (which pins its Service).
const HOLD_LIMIT: Duration = Duration::from_millis(200);

/// Held virtual-host requests and the clusters they wait for (see the module docs).
pub(super) struct Held<R> {
    /// The requests, answered in order.
    pub(super) requests: Vec<R>,
    /// When they go out regardless.
    pub(super) deadline: tokio::time::Instant,
    /// Clusters sent ahead whose endpoints are not known applied.
    waiting: BTreeSet<Arc<str>>,
    /// Endpoints sent since the hold began.
    sent: BTreeSet<Arc<str>>,
    /// The virtual hosts the proxy was served before: what other pushes meanwhile send
    /// of that type (it is a wildcard subscription), so that nothing goes out ahead.
    pub(super) vhosts: Arc<TypeSnapshot>,
}

impl<R> Held<R> {
    pub(super) fn new(req: R, ahead: &[ads::Response], vhosts: Arc<TypeSnapshot>) -> Held<R> {
        Held {
            vhosts,
            requests: vec![req],
            deadline: tokio::time::Instant::now() + HOLD_LIMIT,
            waiting: ahead
                .iter()
                .filter(|r| r.type_ == ResourceType::Cluster)
                .flat_map(|r| r.resources.iter().map(|c| c.name.clone()))
                .collect(),
            sent: Default::default(),
        }
    }

    /// Holds one more request (Envoy may ask for a virtual host again meanwhile), with
    /// the clusters sent ahead of it.
    pub(super) fn join(&mut self, req: R, ahead: &[ads::Response]) {
        self.requests.push(req);
        self.waiting.extend(
            ahead
                .iter()
                .filter(|r| r.type_ == ResourceType::Cluster)
                .flat_map(|r| r.resources.iter().map(|c| c.name.clone())),
        );
    }

    /// Notes an answer (endpoints sent; whether the request acknowledged the endpoints
    /// sent before it); true when every cluster sent ahead has its endpoints applied.
    pub(super) fn note(&mut self, sent: Vec<Arc<str>>, acknowledged: bool) -> bool {
        if acknowledged {
            let applied = &self.sent;
            self.waiting.retain(|name| !applied.contains(name));
        }
        self.sent.extend(sent);
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::Any;

    fn clusters(names: &[&str]) -> ads::Response {
        let resource = |name: &str| weir_core::Resource::from_any(name, Any::default());
        ads::Response {
            type_: ResourceType::Cluster,
            version: 1,
            nonce: 1,
            resources: names.iter().map(|n| resource(n)).collect(),
            removed: Vec::new(),
        }
    }

    #[test]
    fn a_held_request_waits_until_every_cluster_sent_ahead_has_its_endpoints_applied() {
        let vhosts = Arc::new(TypeSnapshot::first(Default::default()));
        let mut held = Held::new("vhds", &[clusters(&["a", "b"])], vhosts);
        // An acknowledgement of endpoints sent before the hold counts for nothing.
        assert!(!held.note(Vec::new(), true));
        assert!(!held.note(vec!["a".into()], false));
        // Acknowledged: a is applied, b not sent yet.
        assert!(!held.note(vec!["b".into()], true));
        held.join("vhds again", &[clusters(&["c"])]);
        assert!(
            !held.note(vec!["c".into()], true),
            "c was sent with this answer"
        );
        assert!(held.note(Vec::new(), true));
        assert_eq!(held.requests, ["vhds", "vhds again"]);
    }
}
