//! Authorization denials as the sidecars report them, kept bounded, for policy status and
//! metrics.
//!
//! ```text
//! sidecar: inbound access log, denials only, batched (1 s, 64 KiB)
//!   --gRPC AccessLogService/StreamAccessLogs on the xDS port--> ReportService
//!   --entry: policy id (Envoy's rbac_access_denied_matched_policy[..] or the shadow
//!     policy id; a refused TLS handshake: the workload's rules evaluated for the peer)
//!   --Denials::record--> per policy: counts per (caller, rule, protocol), at most
//!     MAX_CALLERS distinct, the rest counted in `others`; weir_authorization_denials_total
//! status writer --Denials::report--> TrafficPolicy status.denials (the SHOWN most frequent)
//! ```
//!
//! Entries are only counted for a policy that the reporting pod's own authorization holds,
//! so a report cannot name another workload's policy; where proxies authenticate, a report
//! counts only when it comes from an address of the pod it names. Memory does not grow with traffic:
//! at most `MAX_CALLERS` entries per policy, for the policies that exist. Counts start
//! empty at the operator's start and again when a policy changes mode.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::SystemTime;

use envoy_types::pb::envoy::config::core::v3::{address, Address};
use envoy_types::pb::envoy::data::accesslog::v3::{
    tls_properties::certificate_properties::subject_alt_name::San, AccessLogCommon,
};
use envoy_types::pb::envoy::service::accesslog::v3::{
    stream_access_logs_message::LogEntries, StreamAccessLogsMessage,
};
use envoy_types::pb::google::protobuf::{value::Kind, Struct};
use tonic::Status;
use weir_core::authorization::{Caller, Mode};
use weir_core::mesh::ACCESS_LOG_SERVICE;
use weir_core::translate::authorization::parse_policy_id;
use weir_core::ObjectKey;

use crate::mesh_state::MeshState;
use crate::xds::grpc::{self, RequestStream};

/// Distinct (caller, rule, protocol) entries kept per policy; when full, the least denied
/// one makes room.
pub const MAX_CALLERS: usize = 64;
/// How many the status shows.
pub const SHOWN: usize = 5;
/// A report message larger than this is refused.
const MAX_REPORT_BYTES: usize = 1024 * 1024;

/// One denial, as a report names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The policy that decided.
    pub policy: ObjectKey,
    /// Enforce (denied) or Audit (would have been).
    pub mode: Mode,
    /// Its rule.
    pub rule: String,
    /// The caller's SPIFFE ID; `None`: unauthenticated.
    pub caller: Option<String>,
    /// The source address of an unauthenticated caller (IP only).
    pub source: Option<String>,
    /// `http` or `tcp`.
    pub protocol: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CallerKey {
    caller: Option<String>,
    source: Option<String>,
    rule: String,
    protocol: &'static str,
}

#[derive(Debug, Clone, Copy)]
struct Count {
    count: u64,
    last: SystemTime,
}

#[derive(Debug)]
struct PolicyDenials {
    mode: Mode,
    since: SystemTime,
    total: u64,
    others: u64,
    callers: HashMap<CallerKey, Count>,
}

/// The denials of every policy.
#[derive(Debug, Default)]
pub struct Denials {
    policies: Mutex<HashMap<ObjectKey, PolicyDenials>>,
}

fn rfc3339(at: SystemTime) -> String {
    k8s_openapi::jiff::Timestamp::try_from(at)
        .map(|t| {
            t.round(k8s_openapi::jiff::Unit::Second)
                .unwrap_or(t)
                .to_string()
        })
        .unwrap_or_default()
}

impl Denials {
    /// Counts one denial (or `n` identical ones) seen at `at`.
    pub fn record(&self, denial: Denial, n: u64, at: SystemTime) {
        let mut policies = crate::sync::lock(&self.policies);
        let entry = policies
            .entry(denial.policy.clone())
            .or_insert_with(|| PolicyDenials {
                mode: denial.mode,
                since: at,
                total: 0,
                others: 0,
                callers: HashMap::new(),
            });
        if entry.mode != denial.mode {
            // The policy switched mode: what it denied before is another story.
            *entry = PolicyDenials {
                mode: denial.mode,
                since: at,
                total: 0,
                others: 0,
                callers: HashMap::new(),
            };
        }
        entry.total += n;
        let key = CallerKey {
            caller: denial.caller,
            source: denial.source,
            rule: denial.rule,
            protocol: denial.protocol,
        };
        if let Some(count) = entry.callers.get_mut(&key) {
            count.count += n;
            count.last = count.last.max(at);
            return;
        }
        if entry.callers.len() >= MAX_CALLERS {
            // Full: the least denied caller makes room (its count goes to `others`), so a
            // caller denied often keeps its place however many one-off callers come.
            let least = entry
                .callers
                .iter()
                .min_by_key(|(_, c)| (c.count, c.last))
                .map(|(k, c)| (k.clone(), c.count));
            if let Some((least, count)) = least {
                entry.callers.remove(&least);
                entry.others += count;
            }
        }
        entry.callers.insert(key, Count { count: n, last: at });
    }

    /// Keeps what `keep` says of each policy's counts (by policy and the mode counted).
    pub fn retain(&self, keep: impl Fn(&ObjectKey, Mode) -> bool) {
        crate::sync::lock(&self.policies).retain(|k, d| keep(k, d.mode));
    }

    /// What a policy's status says: the most frequent callers, the rest as a count.
    pub fn report(&self, policy: &ObjectKey) -> Option<weir_api::Denials> {
        let policies = crate::sync::lock(&self.policies);
        let entry = policies.get(policy)?;
        let mut callers: Vec<(&CallerKey, &Count)> = entry.callers.iter().collect();
        callers.sort_by(|a, b| {
            b.1.count
                .cmp(&a.1.count)
                .then_with(|| a.0.caller.cmp(&b.0.caller))
                .then_with(|| a.0.source.cmp(&b.0.source))
                .then_with(|| a.0.rule.cmp(&b.0.rule))
        });
        let hidden: u64 = callers.iter().skip(SHOWN).map(|(_, c)| c.count).sum();
        Some(weir_api::Denials {
            mode: match entry.mode {
                Mode::Enforce => weir_api::AuthorizationMode::Enforce,
                Mode::Audit => weir_api::AuthorizationMode::Audit,
            },
            callers: callers
                .into_iter()
                .take(SHOWN)
                .map(|(k, c)| weir_api::DeniedCaller {
                    caller: k.caller.clone().unwrap_or_else(|| "unauthenticated".into()),
                    source: k.source.clone(),
                    rule: k.rule.clone(),
                    protocol: k.protocol.into(),
                    count: c.count,
                    last_seen: rfc3339(c.last),
                })
                .collect(),
            others: entry.others + hidden,
            total: entry.total,
            since: Some(rfc3339(entry.since)),
        })
    }
}

/// The gRPC service sidecars stream their denial logs to.
#[derive(Debug, Clone)]
pub struct ReportService {
    state: Arc<MeshState>,
    /// Whether a report must come from its pod's own address (where proxies authenticate:
    /// the reports cluster carries no token, so the source address is what binds a report
    /// to the pod its node metadata names).
    check_source: bool,
}

impl ReportService {
    /// A service recording into `state`'s denials; with `check_source`, only reports sent
    /// from an address of the pod they name count.
    pub fn new(state: Arc<MeshState>, check_source: bool) -> Self {
        ReportService {
            state,
            check_source,
        }
    }
}

impl tonic::server::NamedService for ReportService {
    const NAME: &'static str = ACCESS_LOG_SERVICE;
}

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for ReportService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let state = self.state.clone();
        let check_source = self.check_source;
        Box::pin(async move {
            // Envoy's access log service answers nothing but the stream's end.
            Ok(grpc::report_stream(
                request,
                ACCESS_LOG_SERVICE,
                "StreamAccessLogs",
                MAX_REPORT_BYTES,
                move |source, messages, _| async move {
                    serve_reports(&state, check_source, source, messages).await
                },
            ))
        })
    }
}

/// One sidecar's denial reports: the pod its first message names (from one of its own
/// addresses, with `check_source`) and the denials of each message; the status the stream
/// ends with.
async fn serve_reports(
    state: &MeshState,
    check_source: bool,
    source: Option<String>,
    mut messages: RequestStream<StreamAccessLogsMessage>,
) -> Status {
    // The identifier comes with the first message of the stream.
    let mut pod: Option<ObjectKey> = None;
    loop {
        match messages.message().await {
            Ok(Some(message)) => {
                if let Some(node) = message.identifier.as_ref().and_then(|i| i.node.as_ref()) {
                    pod = crate::xds::identify(Some(node))
                        .ok()
                        .map(|(_, meta)| ObjectKey::new(meta.namespace, meta.pod))
                        .filter(|pod| {
                            !check_source || state.is_pod_address(pod, source.as_deref())
                        });
                }
                if let Some(pod) = &pod {
                    record_message(state, pod, message);
                }
            }
            Ok(None) => return Status::ok(""),
            Err(status) => return status,
        }
    }
}

/// Records the denials of one report message from `pod`'s sidecar.
fn record_message(state: &MeshState, pod: &ObjectKey, message: StreamAccessLogsMessage) {
    let Some(authz) = state.placement(pod).workload.authorization else {
        return;
    };
    // A report is taken at its word only as far as the pod's own authorization goes: the
    // policy and its mode, a rule that can deny, a caller that is a SPIFFE ID, a source
    // that is an address.
    let valid = |d: &Denial| {
        let rule_denies = |q: &weir_core::authorization::PortPolicy| {
            d.rule == weir_core::authorization::DEFAULT_DENY_RULE
                || d.rule == weir_core::authorization::DEFAULT_RULE
                || q.deny.iter().any(|r| r.name == d.rule)
        };
        authz.ports.iter().any(|p| {
            p.policies
                .iter()
                .any(|q| q.policy == d.policy && q.mode == d.mode && rule_denies(q))
        }) && d
            .caller
            .as_deref()
            .is_none_or(|c| c.len() <= 512 && weir_core::identity::SpiffeId::parse(c).is_ok())
            && d.source
                .as_deref()
                .is_none_or(|s| s.parse::<std::net::IpAddr>().is_ok())
    };
    let now = SystemTime::now();
    let mut denials = Vec::new();
    match message.log_entries {
        Some(LogEntries::HttpLogs(logs)) => {
            for entry in logs.log_entry {
                let details = entry
                    .response
                    .as_ref()
                    .map(|r| r.response_code_details.as_str())
                    .unwrap_or_default();
                let common = entry.common_properties.unwrap_or_default();
                let enforced = details
                    .strip_prefix("rbac_access_denied_matched_policy[")
                    .and_then(|d| d.strip_suffix(']'))
                    .map(str::to_string);
                let shadow = shadow_policy(&common, weir_core::mesh::HTTP_RBAC_FILTER);
                for (id, mode) in [(enforced, Mode::Enforce), (shadow, Mode::Audit)] {
                    if let Some(d) = id.and_then(|id| denial(&id, mode, &common, "http")) {
                        denials.push(d);
                    }
                }
            }
        }
        Some(LogEntries::TcpLogs(logs)) => {
            for entry in logs.log_entry {
                let common = entry.common_properties.unwrap_or_default();
                if let Some(d) = shadow_policy(&common, weir_core::mesh::NETWORK_RBAC_FILTER)
                    .and_then(|id| denial(&id, Mode::Audit, &common, "tcp"))
                {
                    denials.push(d);
                } else if !common.downstream_transport_failure_reason.is_empty() {
                    // A peer the restricted handshake refused: which rule, the operator
                    // works out from the workload's rules (Envoy names none).
                    let peer = peer_id(&common);
                    let port = local_port(&common);
                    let caller = peer
                        .as_deref()
                        .map_or(Caller::Unauthenticated, Caller::Mesh);
                    if let (Some(port), Some(_)) = (port, &peer) {
                        if let Some(d) = authz.decide(port, caller, None).denied {
                            if let Some(policy) = d.policy {
                                denials.push(Denial {
                                    policy,
                                    mode: Mode::Enforce,
                                    rule: d.rule,
                                    caller: peer.clone(),
                                    source: None,
                                    protocol: "tcp",
                                });
                            }
                        }
                    }
                }
            }
        }
        None => {}
    }
    // Only what the pod's own authorization holds, in the policy's current mode (a batch
    // from before a mode switch would otherwise start the old mode's counts again).
    for d in denials.into_iter().filter(|d| valid(d)) {
        let labels = crate::metrics::DenialLabels {
            namespace: d.policy.namespace.clone(),
            policy: d.policy.name.clone(),
            mode: d.mode.as_str(),
        };
        state
            .metrics
            .authorization_denials
            .get_or_create(&labels)
            .inc();
        state.denials.record(d, 1, now);
    }
}

/// The denial an entry names, from a policy id.
fn denial(
    id: &str,
    mode: Mode,
    common: &AccessLogCommon,
    protocol: &'static str,
) -> Option<Denial> {
    let (policy, rule, _) = parse_policy_id(id)?;
    let caller = peer_id(common);
    let source = caller.is_none().then(|| remote_ip(common)).flatten();
    Some(Denial {
        policy: policy?,
        mode,
        rule,
        caller,
        source,
        protocol,
    })
}

/// The shadow rules' effective policy id of an entry Envoy logged as a shadow denial.
fn shadow_policy(common: &AccessLogCommon, filter: &str) -> Option<String> {
    let fields: &Struct = common.metadata.as_ref()?.filter_metadata.get(filter)?;
    let string = |key: &str| match fields.fields.get(key)?.kind.as_ref()? {
        Kind::StringValue(s) => Some(s.clone()),
        _ => None,
    };
    (string("shadow_engine_result").as_deref() == Some("denied"))
        .then(|| string("shadow_effective_policy_id"))
        .flatten()
}

fn peer_id(common: &AccessLogCommon) -> Option<String> {
    common
        .tls_properties
        .as_ref()?
        .peer_certificate_properties
        .as_ref()?
        .subject_alt_name
        .iter()
        .find_map(|san| match &san.san {
            Some(San::Uri(uri)) => Some(uri.clone()),
            _ => None,
        })
}

fn socket(address: Option<&Address>) -> Option<(String, u16)> {
    match address?.address.as_ref()? {
        address::Address::SocketAddress(s) => match s.port_specifier {
            Some(
                envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(
                    p,
                ),
            ) => Some((s.address.clone(), u16::try_from(p).ok()?)),
            _ => Some((s.address.clone(), 0)),
        },
        _ => None,
    }
}

fn remote_ip(common: &AccessLogCommon) -> Option<String> {
    socket(common.downstream_remote_address.as_ref()).map(|(ip, _)| ip)
}

fn local_port(common: &AccessLogCommon) -> Option<u16> {
    socket(common.downstream_local_address.as_ref()).map(|(_, port)| port)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denial(caller: &str) -> Denial {
        Denial {
            policy: ObjectKey::new("backend", "api"),
            mode: Mode::Enforce,
            rule: "defaultDeny".into(),
            caller: Some(caller.into()),
            source: None,
            protocol: "http",
        }
    }

    #[test]
    fn a_flood_from_many_callers_keeps_a_bounded_table_and_counts_every_denial() {
        let denials = Denials::default();
        let now = SystemTime::now();
        for i in 0..10_000u64 {
            denials.record(
                denial(&format!("spiffe://cluster.local/ns/x/sa/c{}", i % 200)),
                1,
                now,
            );
        }
        let key = ObjectKey::new("backend", "api");
        assert_eq!(
            crate::sync::lock(&denials.policies)[&key].callers.len(),
            MAX_CALLERS
        );
        // A caller denied often after the table filled up still makes the list.
        for _ in 0..1_000 {
            denials.record(denial("spiffe://cluster.local/ns/x/sa/late"), 1, now);
        }
        let report = denials.report(&key).unwrap();
        assert_eq!(report.total, 11_000);
        assert_eq!(
            report.callers[0].caller,
            "spiffe://cluster.local/ns/x/sa/late"
        );
        assert_eq!(report.callers.len(), SHOWN);
        let shown: u64 = report.callers.iter().map(|c| c.count).sum();
        assert_eq!(shown + report.others, 11_000);
    }

    #[test]
    fn a_mode_change_starts_counting_again() {
        let denials = Denials::default();
        let now = SystemTime::now();
        denials.record(denial("spiffe://cluster.local/ns/x/sa/a"), 3, now);
        let mut audit = denial("spiffe://cluster.local/ns/x/sa/b");
        audit.mode = Mode::Audit;
        denials.record(audit, 1, now);
        let report = denials.report(&ObjectKey::new("backend", "api")).unwrap();
        assert_eq!(report.total, 1);
        assert_eq!(report.mode, weir_api::AuthorizationMode::Audit);
    }
}
