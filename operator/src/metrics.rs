//! Prometheus metrics of the operator, exposed as text on the admin server's `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{
    counter::Counter, family::Family, gauge::Gauge, histogram::Histogram,
};
use prometheus_client::registry::Registry;

/// Labels of per-type xDS metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    /// cds, eds, lds or rds.
    pub r#type: &'static str,
}

/// Labels of refused xDS connections.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Why: for authentication failures no_token, invalid_token, expired,
    /// wrong_audience, not_bound_to_pod, pod_gone, metadata_mismatch, review_failed,
    /// tls_handshake; for refused or closed connections and streams connection_limit,
    /// stream_limit, idle_timeout, request_too_large.
    pub reason: &'static str,
}

/// Labels of authorization denials.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DenialLabels {
    /// The policy's namespace.
    pub namespace: String,
    /// The policy's name.
    pub policy: String,
    /// Enforce (denied) or Audit (would have been).
    pub mode: &'static str,
}

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    /// Responses sent to proxies, per type.
    pub pushes: Family<TypeLabels, Counter>,
    /// Resources carried by those responses, per type.
    pub pushed_resources: Family<TypeLabels, Counter>,
    /// NACKs received, per type.
    pub nacks: Family<TypeLabels, Counter>,
    /// Proxies with an open ADS stream.
    pub connected_proxies: Gauge,
    /// Seconds spent applying a batch of events and translating it.
    pub translation_seconds: Histogram,
    /// Snapshots published (one per profile per change).
    pub snapshots_published: Counter,
    /// Snapshots held back by the consistency check.
    pub snapshots_inconsistent: Counter,
    /// Source documents that failed to load (local mode: files).
    pub source_errors: Gauge,
    /// Kubernetes watch failures (each is retried with backoff).
    pub watch_errors: Counter,
    /// Status writes to the API server (policies and MeshStatus).
    pub status_writes: Counter,
    /// Status writes the API server refused or that failed (retried on the next pass).
    pub status_write_errors: Counter,
    /// Writes of the MeshStatus `mesh` status (throttled to one a second).
    pub mesh_status_writes: Counter,
    /// 1 while this replica holds the leader Lease.
    pub leader: Gauge,
    /// Workload certificates issued.
    pub certificates_issued: Counter,
    /// Certificate issuances or renewals that failed (each is retried).
    pub renewal_failures: Counter,
    /// Seconds until the earliest workload certificate served expires.
    pub earliest_expiry_seconds: Gauge,
    /// Seconds until the issuing CA expires.
    pub ca_expiry_seconds: Gauge,
    /// xDS connections refused because the proxy could not prove who it is, by reason.
    pub xds_auth_failures: Family<ReasonLabels, Counter>,
    /// Open xDS connections.
    pub xds_connections: Gauge,
    /// xDS connections and streams refused or closed by a limit, by reason.
    pub xds_refused: Family<ReasonLabels, Counter>,
    /// Requests and connections authorization denied (Enforce) or would have (Audit), as
    /// sidecars report them, per policy.
    pub authorization_denials: Family<DenialLabels, Counter>,
    /// Services that left a scoped proxy's scope because it stopped using them.
    pub scope_unused: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric registered under the `weir` prefix.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("weir");
        let pushes = Family::<TypeLabels, Counter>::default();
        let pushed_resources = Family::<TypeLabels, Counter>::default();
        let nacks = Family::<TypeLabels, Counter>::default();
        let connected_proxies = Gauge::default();
        let translation_seconds = Histogram::new([
            0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ]);
        let snapshots_published = Counter::default();
        let snapshots_inconsistent = Counter::default();
        let source_errors = Gauge::default();
        let watch_errors = Counter::default();
        let status_writes = Counter::default();
        let status_write_errors = Counter::default();
        let mesh_status_writes = Counter::default();
        let leader = Gauge::default();
        let certificates_issued = Counter::default();
        let renewal_failures = Counter::default();
        let earliest_expiry_seconds = Gauge::default();
        let ca_expiry_seconds = Gauge::default();
        let xds_auth_failures = Family::<ReasonLabels, Counter>::default();
        let xds_connections = Gauge::default();
        let xds_refused = Family::<ReasonLabels, Counter>::default();
        let authorization_denials = Family::<DenialLabels, Counter>::default();
        let scope_unused = Counter::default();
        registry.register(
            "scope_unused_services",
            "Services that left a scoped proxy's scope after going unused for --scope-idle",
            scope_unused.clone(),
        );
        registry.register(
            "authorization_denials",
            "Requests and connections denied (mode Enforce) or that would be (mode Audit), per policy, as sidecars report them",
            authorization_denials.clone(),
        );
        registry.register(
            "xds_pushes",
            "xDS responses sent to proxies",
            pushes.clone(),
        );
        registry.register(
            "xds_pushed_resources",
            "Resources carried by xDS responses",
            pushed_resources.clone(),
        );
        registry.register(
            "xds_nacks",
            "Config rejections (NACKs) received from proxies",
            nacks.clone(),
        );
        registry.register(
            "xds_connected_proxies",
            "Proxies with an open ADS stream",
            connected_proxies.clone(),
        );
        registry.register(
            "translation_seconds",
            "Time to apply a batch of changes and translate it",
            translation_seconds.clone(),
        );
        registry.register(
            "snapshots_published",
            "Per-profile snapshots published",
            snapshots_published.clone(),
        );
        registry.register(
            "snapshots_inconsistent",
            "Snapshots held back because they failed the consistency check",
            snapshots_inconsistent.clone(),
        );
        registry.register(
            "source_errors",
            "Source documents that currently fail to load",
            source_errors.clone(),
        );
        registry.register(
            "watch_errors",
            "Kubernetes watch failures, each retried with backoff",
            watch_errors.clone(),
        );
        registry.register(
            "status_writes",
            "Status writes to the Kubernetes API (policies and MeshStatus)",
            status_writes.clone(),
        );
        registry.register(
            "status_write_errors",
            "Status writes refused by the Kubernetes API or failed (each is retried)",
            status_write_errors.clone(),
        );
        registry.register(
            "mesh_status_writes",
            "Writes of the MeshStatus status (at most one a second)",
            mesh_status_writes.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        registry.register(
            "certificates_issued",
            "Workload certificates issued",
            certificates_issued.clone(),
        );
        registry.register(
            "certificate_renewal_failures",
            "Certificate issuances or renewals that failed (each is retried)",
            renewal_failures.clone(),
        );
        registry.register(
            "certificate_earliest_expiry_seconds",
            "Seconds until the earliest workload certificate served expires",
            earliest_expiry_seconds.clone(),
        );
        registry.register(
            "ca_expiry_seconds",
            "Seconds until the issuing mesh CA expires",
            ca_expiry_seconds.clone(),
        );
        registry.register(
            "xds_auth_failures",
            "xDS connections refused because the proxy could not prove who it is",
            xds_auth_failures.clone(),
        );
        registry.register(
            "xds_connections",
            "Open xDS connections",
            xds_connections.clone(),
        );
        registry.register(
            "xds_refused",
            "xDS connections and streams refused or closed by a limit (connection_limit, stream_limit, idle_timeout, request_too_large)",
            xds_refused.clone(),
        );
        Metrics {
            scope_unused,
            registry,
            pushes,
            pushed_resources,
            nacks,
            connected_proxies,
            translation_seconds,
            snapshots_published,
            snapshots_inconsistent,
            source_errors,
            watch_errors,
            status_writes,
            status_write_errors,
            mesh_status_writes,
            leader,
            certificates_issued,
            renewal_failures,
            earliest_expiry_seconds,
            ca_expiry_seconds,
            xds_auth_failures,
            xds_connections,
            xds_refused,
            authorization_denials,
        }
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
