//! The mesh's certificate authority at work: workload certificates per service account,
//! delivered as SDS secrets, renewed before they expire, and re-issued when the CA
//! rotates.
//!
//! ```text
//! CA source (kube: Secret weir-system/weir-ca or the Provided one; local: --ca-dir or
//!   generated) --set_ca--> Authority (CAs in force: the newest issues, all are trusted)
//! ADS stream of (namespace, service account) --subscribe--> watch of a TypeSnapshot with
//!   "workload" (certificate, chain, key) and "trust-bundle" (every root in force)
//! run(): at each workload's renewal time (about half-life, jittered) re-issue and publish;
//!   after a rotation's grace period drop the old roots and publish; forget workloads no
//!   stream watches
//! ```
//!
//! A CA rotation never breaks a connection, in three steps `rotation_grace` apart: the new
//! root joins every bundle (certificates unchanged, still from the old CA); then every
//! workload is re-issued by the new CA; then the old root leaves the bundles. Each proxy
//! thus trusts a root before any peer presents a certificate from it, and keeps trusting
//! the old one until no peer presents its certificates any more.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{watch, Notify};
use weir_core::identity::{renewal_at, secrets, CertificateAuthority, IssuedCert, SpiffeId};
use weir_core::mesh;
use weir_core::snapshot::{ResourceMap, TypeSnapshot};
use weir_core::status::CaProblem;

use crate::metrics::Metrics;

/// Links to older roots kept (one per rotation).
const MAX_LINKS: usize = 4;

/// How long old roots stay trusted after a rotation re-issued every workload.
pub const ROTATION_GRACE: Duration = Duration::from_secs(30);

/// A workload identity: namespace and service account.
pub type WorkloadKey = (String, String);

struct Workload {
    cert: Option<IssuedCert>,
    renew_at: SystemTime,
    tx: watch::Sender<Arc<TypeSnapshot>>,
}

/// Where a rotation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rotation {
    /// The new root is in every bundle; the old CA still issues until then.
    Propagating { reissue_at: SystemTime },
    /// Everything is re-issued by the new CA; old roots leave the bundles then.
    Draining { drop_old_roots_at: SystemTime },
}

struct State {
    /// Oldest first; all are trusted.
    cas: Vec<Arc<CertificateAuthority>>,
    /// Which of `cas` issues (the newest, except while a new root propagates).
    issuer: usize,
    rotation: Option<Rotation>,
    /// Why the CA source gives no usable CA, when it does not.
    problem: Option<CaProblem>,
    /// Cross-signed links from each newer CA to the one before it (newest first), served
    /// after the operator's own certificates so that proxies that started trusting an
    /// older root still verify the operator after rotations.
    links: Vec<String>,
    trust_domain: String,
    ttl: Duration,
    workloads: HashMap<WorkloadKey, Workload>,
}

/// The CA service. See the module docs.
pub struct Authority {
    state: Mutex<State>,
    metrics: Arc<Metrics>,
    wake: Notify,
    /// The roots in force, for those who publish them (ConfigMaps, the webhook's caBundle,
    /// the xDS server's clients).
    roots: watch::Sender<String>,
    rotation_grace: Duration,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authority")
    }
}

impl Authority {
    /// An authority without a CA yet (streams wait for one).
    pub fn new(metrics: Arc<Metrics>, rotation_grace: Duration) -> Authority {
        Authority {
            state: Mutex::new(State {
                cas: Vec::new(),
                issuer: 0,
                rotation: None,
                problem: None,
                links: Vec::new(),
                trust_domain: mesh::DEFAULT_TRUST_DOMAIN.into(),
                ttl: mesh::DEFAULT_WORKLOAD_CERT_TTL,
                workloads: HashMap::new(),
            }),
            metrics,
            wake: Notify::new(),
            roots: watch::channel(String::new()).0,
            rotation_grace,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    /// The trust domain and certificate lifetime; a new trust domain re-issues everything.
    pub fn set_config(&self, trust_domain: &str, ttl: Duration) {
        let mut state = self.lock();
        if state.trust_domain == trust_domain && state.ttl == ttl {
            return;
        }
        let reissue = state.trust_domain != trust_domain;
        state.trust_domain = trust_domain.to_string();
        state.ttl = ttl;
        if reissue {
            self.reissue_all(&mut state);
        }
        drop(state);
        self.wake.notify_one();
    }

    /// Installs the CA the source provides. The first one issues at once; a different one
    /// starts a rotation (see the module docs); the same CA again changes nothing.
    pub fn set_ca(&self, ca: CertificateAuthority) {
        let mut state = self.lock();
        state.problem = None;
        if state.cas.last().is_some_and(|c| c.cert_pem == ca.cert_pem) {
            return;
        }
        self.metrics
            .ca_expiry_seconds
            .set(seconds_until(ca.not_after));
        if let Some(previous) = state.cas.last() {
            match previous.cross_sign(&ca, SystemTime::now()) {
                Ok(link) => {
                    state.links.insert(0, link);
                    state.links.truncate(MAX_LINKS);
                }
                Err(err) => {
                    tracing::warn!(%err, "cannot link the new CA to the old one; proxies that only trust the old root reach the operator again once restarted")
                }
            }
        }
        state.cas.push(Arc::new(ca));
        if state.cas.len() == 1 {
            state.issuer = 0;
            self.publish_roots(&state);
            self.reissue_all(&mut state);
        } else {
            tracing::info!(
                "mesh CA rotating: the new root joins every bundle; re-issuing in {:?}",
                self.rotation_grace
            );
            state.rotation = Some(Rotation::Propagating {
                reissue_at: SystemTime::now() + self.rotation_grace,
            });
            self.publish_roots(&state);
            self.republish_all(&mut state);
        }
        drop(state);
        self.wake.notify_one();
    }

    /// The links from newer CAs to older ones (PEM, newest first), for storage: they are
    /// made at a rotation, when both keys are at hand, and are needed as long as proxies
    /// that trust an older root run.
    pub fn links(&self) -> Vec<String> {
        self.lock().links.clone()
    }

    /// Links kept from before a restart; expired ones and ones already known are skipped.
    pub fn add_links(&self, stored: &str) {
        let mut state = self.lock();
        let now = SystemTime::now();
        for link in weir_core::identity::pem_blocks(stored, "CERTIFICATE") {
            let live =
                weir_core::identity::CertInfo::parse(&link).is_some_and(|i| i.not_after > now);
            if live && !state.links.contains(&link) && state.links.len() < MAX_LINKS {
                state.links.push(link);
            }
        }
    }

    /// Records why the source has no usable CA (the CA in force, if any, keeps issuing).
    pub fn set_problem(&self, problem: CaProblem) {
        let mut state = self.lock();
        if state.problem.as_ref() != Some(&problem) {
            tracing::warn!(
                reason = problem.reason.as_str(),
                message = problem.message,
                "mesh CA problem"
            );
            state.problem = Some(problem);
        }
    }

    /// Why the source has no usable CA, if it has not.
    pub fn problem(&self) -> Option<CaProblem> {
        self.lock().problem.clone()
    }

    /// The roots in force (PEM), as they change.
    pub fn roots(&self) -> watch::Receiver<String> {
        self.roots.subscribe()
    }

    /// When the newest CA expires, if there is one.
    pub fn ca_expiry(&self) -> Option<SystemTime> {
        self.lock().cas.last().map(|c| c.not_after)
    }

    /// The issuing CA.
    pub fn issuing_ca(&self) -> Option<Arc<CertificateAuthority>> {
        let state = self.lock();
        state.cas.get(state.issuer).cloned()
    }

    /// A serving certificate from the issuing CA (the xDS server, the webhook), its chain
    /// followed by the links to older roots.
    pub fn issue_server(&self, names: &[String], ttl: Duration) -> Option<IssuedCert> {
        let (ca, links) = {
            let state = self.lock();
            (state.cas.get(state.issuer).cloned()?, state.links.concat())
        };
        match ca.issue_server(names, ttl, SystemTime::now()) {
            Ok(mut cert) => {
                cert.chain_pem.push_str(&links);
                Some(cert)
            }
            Err(err) => {
                tracing::error!(%err, "cannot issue a serving certificate");
                self.metrics.renewal_failures.inc();
                None
            }
        }
    }

    /// The secrets of a workload identity, issued on first use; they change when the
    /// certificate is renewed or the CA rotates.
    pub fn subscribe(
        &self,
        namespace: &str,
        service_account: &str,
    ) -> watch::Receiver<Arc<TypeSnapshot>> {
        let mut state = self.lock();
        let key = (namespace.to_string(), service_account.to_string());
        if let Some(w) = state.workloads.get(&key) {
            return w.tx.subscribe();
        }
        let (tx, rx) = watch::channel(Arc::new(TypeSnapshot::default()));
        state.workloads.insert(
            key.clone(),
            Workload {
                cert: None,
                renew_at: SystemTime::now(),
                tx,
            },
        );
        self.issue(&mut state, &key);
        drop(state);
        self.wake.notify_one();
        rx
    }

    /// The secrets a workload identity is served now and when its certificate expires,
    /// without issuing one (`None`: no proxy of it has asked).
    pub fn served_secrets(
        &self,
        namespace: &str,
        service_account: &str,
    ) -> Option<(Arc<TypeSnapshot>, Option<SystemTime>)> {
        let state = self.lock();
        let w = state
            .workloads
            .get(&(namespace.to_string(), service_account.to_string()))?;
        let secrets = w.tx.borrow().clone();
        Some((secrets, w.cert.as_ref().map(|c| c.not_after)))
    }

    /// Certificates issued since start.
    pub fn issued(&self) -> u64 {
        self.metrics.certificates_issued.get()
    }

    /// Renews what is due and ends rotations, until dropped.
    pub async fn run(self: Arc<Self>) {
        loop {
            let next = self.tick(SystemTime::now());
            let wait = next
                .and_then(|at| at.duration_since(SystemTime::now()).ok())
                .unwrap_or(Duration::from_secs(60))
                .min(Duration::from_secs(60));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    /// One pass: renew due workloads, end a rotation whose grace is over, forget unwatched
    /// workloads. Returns when the next thing is due.
    fn tick(&self, now: SystemTime) -> Option<SystemTime> {
        let mut state = self.lock();
        state.workloads.retain(|_, w| w.tx.receiver_count() > 0);
        match state.rotation {
            Some(Rotation::Propagating { reissue_at }) if reissue_at <= now => {
                state.issuer = state.cas.len() - 1;
                state.rotation = Some(Rotation::Draining {
                    drop_old_roots_at: now + self.rotation_grace,
                });
                tracing::info!("mesh CA rotating: every workload re-issued by the new CA");
                self.reissue_all(&mut state);
                // The serving certificates follow the issuer.
                self.publish_roots(&state);
            }
            Some(Rotation::Draining { drop_old_roots_at }) if drop_old_roots_at <= now => {
                let keep = state.cas.len() - 1;
                state.cas.drain(..keep);
                state.issuer = 0;
                state.rotation = None;
                tracing::info!("mesh CA rotation done: old roots dropped from every bundle");
                self.publish_roots(&state);
                self.republish_all(&mut state);
            }
            _ => {}
        }
        let due: Vec<WorkloadKey> = state
            .workloads
            .iter()
            .filter(|(_, w)| w.renew_at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            self.issue(&mut state, &key);
        }
        let earliest_expiry = state
            .workloads
            .values()
            .filter_map(|w| w.cert.as_ref().map(|c| c.not_after))
            .min();
        self.metrics
            .earliest_expiry_seconds
            .set(earliest_expiry.map(seconds_until).unwrap_or(0));
        state
            .workloads
            .values()
            .map(|w| w.renew_at)
            .chain(state.rotation.map(|r| match r {
                Rotation::Propagating { reissue_at } => reissue_at,
                Rotation::Draining { drop_old_roots_at } => drop_old_roots_at,
            }))
            .min()
    }

    fn reissue_all(&self, state: &mut State) {
        let keys: Vec<WorkloadKey> = state.workloads.keys().cloned().collect();
        for key in keys {
            self.issue(state, &key);
        }
    }

    /// Publishes every workload's secrets again (new bundle, same certificate).
    fn republish_all(&self, state: &mut State) {
        let keys: Vec<WorkloadKey> = state.workloads.keys().cloned().collect();
        for key in keys {
            self.publish(state, &key);
        }
    }

    /// Issues a workload's certificate from the issuing CA and publishes its secrets.
    fn issue(&self, state: &mut State, key: &WorkloadKey) {
        let Some(ca) = state.cas.get(state.issuer).cloned() else {
            return; // no CA yet: the stream waits, and set_ca issues
        };
        let id = SpiffeId::new(&state.trust_domain, &key.0, &key.1);
        let now = SystemTime::now();
        let ttl = state.ttl;
        let Some(workload) = state.workloads.get_mut(key) else {
            return;
        };
        match ca.issue_workload(&id, ttl, now) {
            Ok(cert) => {
                let lifetime = cert.not_after.duration_since(now).unwrap_or_default();
                workload.renew_at = renewal_at(now, lifetime, seed(key));
                workload.cert = Some(cert);
                self.metrics.certificates_issued.inc();
                tracing::debug!(%id, "workload certificate issued");
            }
            Err(err) => {
                // Keep the certificate that works; try again in a minute.
                tracing::error!(%id, %err, "cannot issue a workload certificate; retrying");
                self.metrics.renewal_failures.inc();
                workload.renew_at = now + Duration::from_secs(60);
                return;
            }
        }
        self.publish(state, key);
    }

    /// Publishes a workload's secrets: its certificate and the roots in force.
    fn publish(&self, state: &mut State, key: &WorkloadKey) {
        let bundle = bundle(state);
        let Some(workload) = state.workloads.get(key) else {
            return;
        };
        let Some(cert) = &workload.cert else {
            return;
        };
        let mut resources = ResourceMap::new();
        for r in [secrets::workload(cert), secrets::trust_bundle(&bundle)] {
            resources.insert(r.name.clone(), r);
        }
        workload.tx.send_modify(|current| {
            let version = resources.values().fold(0, |v, r| v ^ r.fingerprint());
            let changed: Vec<_> = resources
                .iter()
                .filter(|(n, r)| current.resources.get(*n).map(|o| o.version) != Some(r.version))
                .map(|(n, _)| n.clone())
                .collect();
            *current = Arc::new(TypeSnapshot {
                generation: current.generation + 1,
                version,
                resources,
                changed: changed.into(),
                removed: Arc::from(Vec::new()),
            });
        });
    }

    fn publish_roots(&self, state: &State) {
        self.roots.send_replace(bundle(state));
    }
}

/// Every root in force, deduplicated, oldest first.
fn bundle(state: &State) -> String {
    let mut roots: Vec<&str> = Vec::new();
    for ca in &state.cas {
        if !roots.contains(&ca.roots_pem.as_str()) {
            roots.push(&ca.roots_pem);
        }
    }
    roots.concat()
}

/// A stable per-workload number, so each one renews at its own moment.
fn seed(key: &WorkloadKey) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

fn seconds_until(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::now()) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_core::identity::CertInfo;

    fn cert_of(snapshot: &TypeSnapshot) -> String {
        use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
            secret::Type, Secret,
        };
        use prost::Message;
        let r = &snapshot.resources[secrets::WORKLOAD];
        let secret = Secret::decode(r.body.value.as_slice()).unwrap();
        let Some(Type::TlsCertificate(tls)) = secret.r#type else {
            panic!("not a certificate")
        };
        match tls.certificate_chain.unwrap().specifier.unwrap() {
            envoy_types::pb::envoy::config::core::v3::data_source::Specifier::InlineString(s) => s,
            other => panic!("{other:?}"),
        }
    }

    fn bundle_of(snapshot: &TypeSnapshot) -> usize {
        use prost::Message;
        let r = &snapshot.resources[secrets::TRUST_BUNDLE];
        let text = format!(
            "{:?}",
            envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret::decode(
                r.body.value.as_slice()
            )
            .unwrap()
        );
        text.matches("BEGIN CERTIFICATE").count()
    }

    #[tokio::test]
    async fn a_workload_gets_its_spiffe_id_and_a_rotation_adds_the_root_then_reissues_then_drops_the_old_root(
    ) {
        let authority = Authority::new(Arc::new(Metrics::new()), Duration::from_millis(0));
        let mut rx = authority.subscribe("shop", "cart");
        assert!(
            rx.borrow().resources.is_empty(),
            "no CA yet: nothing to serve"
        );
        authority.set_ca(
            CertificateAuthority::generate(mesh::DEFAULT_TRUST_DOMAIN, SystemTime::now()).unwrap(),
        );
        let first = rx.borrow_and_update().clone();
        let info = CertInfo::parse(&cert_of(&first)).unwrap();
        assert_eq!(info.uris, ["spiffe://cluster.local/ns/shop/sa/cart"]);
        assert_eq!(bundle_of(&first), 1);

        authority.set_ca(
            CertificateAuthority::generate(mesh::DEFAULT_TRUST_DOMAIN, SystemTime::now()).unwrap(),
        );
        let propagating = rx.borrow_and_update().clone();
        assert_eq!(
            bundle_of(&propagating),
            2,
            "the new root joins the bundle first"
        );
        assert_eq!(
            cert_of(&propagating),
            cert_of(&first),
            "still the old CA's certificate"
        );

        authority.tick(SystemTime::now() + Duration::from_secs(1));
        let reissued = rx.borrow_and_update().clone();
        assert_eq!(bundle_of(&reissued), 2, "both roots while peers switch");
        assert_ne!(
            cert_of(&reissued),
            cert_of(&first),
            "re-issued by the new CA"
        );

        authority.tick(SystemTime::now() + Duration::from_secs(2));
        let done = rx.borrow_and_update().clone();
        assert_eq!(
            bundle_of(&done),
            1,
            "the old root leaves after the grace period"
        );
        assert_eq!(cert_of(&done), cert_of(&reissued));
        assert_eq!(authority.issued(), 2);
    }

    #[tokio::test]
    async fn renewal_is_due_around_half_life_and_unwatched_workloads_are_forgotten() {
        let authority = Authority::new(Arc::new(Metrics::new()), ROTATION_GRACE);
        authority.set_config(mesh::DEFAULT_TRUST_DOMAIN, Duration::from_secs(100));
        authority.set_ca(
            CertificateAuthority::generate(mesh::DEFAULT_TRUST_DOMAIN, SystemTime::now()).unwrap(),
        );
        let rx = authority.subscribe("shop", "cart");
        let next = authority.tick(SystemTime::now()).unwrap();
        let in_secs = next
            .duration_since(SystemTime::now())
            .unwrap()
            .as_secs_f64();
        assert!(
            (35.0..=65.0).contains(&in_secs),
            "renewal in {in_secs} s of a 100 s life"
        );
        let before = rx.borrow().generation;
        authority.tick(SystemTime::now() + Duration::from_secs(70));
        assert!(rx.borrow().generation > before, "renewed when due");
        drop(rx);
        authority.tick(SystemTime::now());
        assert!(authority.lock().workloads.is_empty());
    }
}
