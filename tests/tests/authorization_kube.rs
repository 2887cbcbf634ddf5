//! Authorization denials, from a sidecar's report to the TrafficPolicy status, against a real
//! kube-apiserver (`weir_tests::kube`) with the operator in this process, leading, as the
//! `weir-operator` ServiceAccount of config/ (the shipped RBAC is enforced).
//!
//! The test acts as the server's sidecar: it streams Envoy access log entries over
//! `envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs` to the operator's xDS
//! port, as the inbound RBAC filter logs them (Enforce: `403` with
//! `rbac_access_denied_matched_policy[<ns>/<policy>/<rule>@<port>]`; Audit: the shadow
//! engine's result and policy id in the filter's dynamic metadata), with the node of pod
//! `api-0` in the first message. The pod, its Service, an EndpointSlice naming it and the
//! policy are real API objects:
//!
//! - Audit denials show in `status.denials` (mode, caller, rule, protocol, count, the
//!   unauthenticated caller's source) and in `weir_authorization_denials_total`; switched to
//!   Enforce, counting starts again;
//! - a report naming a policy the pod does not hold (another namespace's, another Service's)
//!   or sent by a pod that does not back the target is not counted;
//! - a flood of 10,000 denials from 50 identities (and then 100 more identities) leaves a
//!   status of 5 callers whose counts and `others` add up to the total, and the operator's
//!   memory bounded.
//!
//! One operator at a time (they share the Lease); each test has namespaces of its own.

use anyhow::{bail, ensure, Context, Result};
use envoy_types::pb::envoy::config::core::v3::{
    address, socket_address, Address, Metadata, Node, SocketAddress,
};
use envoy_types::pb::envoy::data::accesslog::v3::{
    tls_properties::{
        certificate_properties::{subject_alt_name::San, SubjectAltName},
        CertificateProperties,
    },
    AccessLogCommon, HttpAccessLogEntry, HttpRequestProperties, HttpResponseProperties,
    TlsProperties,
};
use envoy_types::pb::envoy::service::accesslog::v3::{
    access_log_service_client::AccessLogServiceClient,
    stream_access_logs_message::{HttpAccessLogEntries, Identifier, LogEntries},
    StreamAccessLogsMessage, StreamAccessLogsResponse,
};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, UInt32Value, Value as PbValue};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use weir_core::authorization::Mode;
use weir_core::mesh::{DENIAL_LOG_NAME, HTTP_RBAC_FILTER, INJECTED_ANNOTATION, REPORTS_META};
use weir_core::ObjectKey;
use weir_operator::ControlPlane;
use weir_tests::kube::{
    can_run, installed, operator_slot, start_operator_as, wait_leading, Cluster,
};
use weir_tests::{eventually, xds_client, DEADLINE};

const ROBOT: &str = "spiffe://cluster.local/ns/other/sa/robot";
/// The pod port the Service's port 8080 reaches (the `@<port>` of policy ids).
const PORT: u16 = 8080;
/// Where unauthenticated callers come from.
const PLAIN_CALLER_IP: &str = "10.244.9.9";

/// kubectl from async code: the runtime's other workers keep the operator going.
fn kubectl_json(cluster: &Cluster, args: &[&str]) -> Option<Value> {
    tokio::task::block_in_place(|| cluster.kubectl_json(args)).ok()
}

fn apply(cluster: &Cluster, object: &Value) -> Result<()> {
    tokio::task::block_in_place(|| cluster.apply(object))
}

/// The server workload: namespace `ns`, ServiceAccount `api`, Service `api` (port 8080
/// `http`, no selector), Pod `api-0` (injected, running at `ip`) and an EndpointSlice of
/// the Service naming the pod.
fn server_workload(cluster: &Cluster, ns: &str, ip: &str) -> Result<()> {
    apply(
        cluster,
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
    )?;
    apply(
        cluster,
        &json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "api", "namespace": ns}}),
    )?;
    apply(cluster, &service(ns, "api"))?;
    apply(
        cluster,
        &json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "api-0", "namespace": ns, "labels": {"app": "api"},
                "annotations": {INJECTED_ANNOTATION: "0.1.0"}},
            "spec": {"serviceAccountName": "api",
                "containers": [{"name": "app", "image": "shop/api:1",
                    "ports": [{"name": "http", "containerPort": PORT}]}]}}),
    )?;
    tokio::task::block_in_place(|| cluster.set_pod_ready(ns, "api-0", ip))?;
    apply(
        cluster,
        &json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "api-0", "namespace": ns, "labels": {
                "kubernetes.io/service-name": "api",
                "endpointslice.kubernetes.io/managed-by": "weir-tests"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": PORT, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": true},
                "targetRef": {"kind": "Pod", "name": "api-0", "namespace": ns}}]}),
    )
}

/// A Service without a selector (its EndpointSlice is the test's), port 8080 `http`.
fn service(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
        "spec": {"ports": [{"name": "http", "port": PORT, "targetPort": PORT, "protocol": "TCP"}]}})
}

/// A TrafficPolicy on Service `target` that allows `shop/web` and denies the rest.
fn authz_policy(ns: &str, name: &str, target: &str, mode: &str) -> Value {
    json!({"apiVersion": "weir.dev/v1alpha1", "kind": "TrafficPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"targetRef": {"service": target},
            "authorization": {"mode": mode, "defaultDeny": true,
                "allow": [{"serviceAccounts": ["shop/web"]}]}}})
}

/// Deletes a test's policies now (MeshStatus counts every namespace's) and its namespaces
/// in the background.
fn clean_namespaces(cluster: &Cluster, namespaces: &[&str]) {
    for ns in namespaces {
        let _ = cluster.kubectl(&["delete", "trafficpolicy", "--all", "-n", ns, "--wait=true"]);
        let _ = cluster.kubectl(&["delete", "namespace", ns, "--wait=false"]);
    }
}

/// Waits until the operator's view of `pod` has `policy` in force on port 8080 in `mode`:
/// only then are its sidecar's reports about it counted.
async fn wait_pod_holds(
    plane: &ControlPlane,
    pod: &ObjectKey,
    policy: &ObjectKey,
    mode: Mode,
) -> Result<()> {
    eventually(
        &format!("{pod} holding {policy} in mode {}", mode.as_str()),
        DEADLINE,
        || async {
            let authz = plane.state.placement(pod).workload.authorization?;
            authz
                .ports
                .iter()
                .filter(|p| p.port == PORT)
                .flat_map(|p| &p.policies)
                .any(|p| p.policy == *policy && p.mode == mode)
                .then_some(())
        },
    )
    .await
}

/// `status.denials` of a policy, as the API server has it.
fn denials(cluster: &Cluster, ns: &str, policy: &str) -> Option<Value> {
    let object = kubectl_json(cluster, &["get", "trafficpolicy", policy, "-n", ns])?;
    let denials = object["status"]["denials"].clone();
    (!denials.is_null()).then_some(denials)
}

/// Polls the policy's `status.denials` until `check` accepts it (100 ms apart: each look
/// runs kubectl); on timeout says what the status showed last and what the operator holds.
async fn wait_denials(
    cluster: &Cluster,
    plane: &ControlPlane,
    ns: &str,
    policy: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let end = Instant::now() + DEADLINE;
    loop {
        let last = denials(cluster, ns, policy);
        if let Some(d) = last.as_ref().filter(|d| check(d)) {
            return Ok(d.clone());
        }
        if Instant::now() > end {
            let held = plane.state.denials.report(&ObjectKey::new(ns, policy));
            let writes = plane.state.metrics.status_writes.get();
            bail!(
                "timed out waiting for {ns}/{policy} status.denials: {what}; the status showed \
                 {last:?}; the operator holds {held:?} ({writes} status writes)"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The listed caller entry of `caller` with `rule` and `protocol`.
fn listed<'a>(denials: &'a Value, caller: &str, rule: &str, protocol: &str) -> Option<&'a Value> {
    denials["callers"]
        .as_array()?
        .iter()
        .find(|c| c["caller"] == caller && c["rule"] == rule && c["protocol"] == protocol)
}

/// `weir_authorization_denials_total{namespace, policy, mode}` from the admin /metrics;
/// `None` when the series does not exist.
async fn denial_metric(
    admin: SocketAddr,
    ns: &str,
    policy: &str,
    mode: &str,
) -> Result<Option<u64>> {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await?
        .error_for_status()?
        .text()
        .await?;
    let labels = [
        format!("namespace=\"{ns}\""),
        format!("policy=\"{policy}\""),
        format!("mode=\"{mode}\""),
    ];
    let Some(line) = text
        .lines()
        .filter(|l| l.starts_with("weir_authorization_denials_total{"))
        .find(|l| labels.iter().all(|label| l.contains(label.as_str())))
    else {
        return Ok(None);
    };
    let value = line.rsplit(' ').next().unwrap_or_default();
    let value: f64 = value
        .parse()
        .with_context(|| format!("metric line {line:?}"))?;
    Ok(Some(value as u64))
}

/// Every `weir_authorization_denials_total` series of namespace `ns`.
async fn denial_series(admin: SocketAddr, ns: &str) -> Result<Vec<String>> {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await?
        .text()
        .await?;
    let label = format!("namespace=\"{ns}\"");
    Ok(text
        .lines()
        .filter(|l| l.starts_with("weir_authorization_denials_total{") && l.contains(&label))
        .map(str::to_string)
        .collect())
}

/// How the inbound HTTP RBAC filter logged one request.
#[derive(Debug, Clone, Copy)]
enum Logged<'a> {
    /// Enforce: answered 403, the matched (deny-action) policy id in the details.
    Denied(&'a str),
    /// Audit: let through; the shadow rules would have denied it (their policy id).
    ShadowDenied(&'a str),
    /// Audit: let through, and the shadow rules allowed it as well.
    ShadowAllowed,
}

/// A policy id as the translation names RBAC policies: `<ns>/<policy>/<rule>@<port>`.
fn policy_id(ns: &str, policy: &str, rule: &str) -> String {
    format!("{ns}/{policy}/{rule}@{PORT}")
}

/// One HTTP access log entry of the server's inbound listener: from `caller` (a SPIFFE ID
/// from the peer certificate; `None`: plaintext from PLAIN_CALLER_IP) to `server_ip`.
fn http_entry(caller: Option<&str>, server_ip: &str, logged: Logged) -> HttpAccessLogEntry {
    let text = |s: &str| PbValue {
        kind: Some(Kind::StringValue(s.to_string())),
    };
    let socket = |ip: &str, port: u32| Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    };
    let (code, details, shadow) = match logged {
        Logged::Denied(id) => (
            403,
            format!("rbac_access_denied_matched_policy[{id}]"),
            None,
        ),
        Logged::ShadowDenied(id) => (200, "via_upstream".to_string(), Some(("denied", id))),
        Logged::ShadowAllowed => (200, "via_upstream".to_string(), Some(("allowed", ""))),
    };
    let metadata = shadow.map(|(result, id)| {
        let mut fields = HashMap::from([("shadow_engine_result".to_string(), text(result))]);
        if !id.is_empty() {
            fields.insert("shadow_effective_policy_id".to_string(), text(id));
        }
        Metadata {
            filter_metadata: HashMap::from([(HTTP_RBAC_FILTER.to_string(), Struct { fields })]),
            ..Default::default()
        }
    });
    let tls_properties = caller.map(|uri| TlsProperties {
        peer_certificate_properties: Some(CertificateProperties {
            subject_alt_name: vec![SubjectAltName {
                san: Some(San::Uri(uri.to_string())),
            }],
            ..Default::default()
        }),
        ..Default::default()
    });
    let remote = if caller.is_some() {
        "10.244.3.3"
    } else {
        PLAIN_CALLER_IP
    };
    HttpAccessLogEntry {
        common_properties: Some(AccessLogCommon {
            downstream_remote_address: Some(socket(remote, 41_000)),
            downstream_local_address: Some(socket(server_ip, u32::from(PORT))),
            tls_properties,
            metadata,
            ..Default::default()
        }),
        request: Some(HttpRequestProperties {
            authority: "api".to_string(),
            path: "/orders".to_string(),
            ..Default::default()
        }),
        response: Some(HttpResponseProperties {
            response_code: Some(UInt32Value { value: code }),
            response_code_details: details,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `n` identical entries.
fn entries(
    n: usize,
    caller: Option<&str>,
    server_ip: &str,
    logged: Logged,
) -> Vec<HttpAccessLogEntry> {
    vec![http_entry(caller, server_ip, logged); n]
}

/// A sidecar's report stream, as Envoy's gRPC access logger opens it: client streaming,
/// the node in the first message only, no response expected.
struct ReportStream {
    node: Option<Node>,
    tx: tokio::sync::mpsc::Sender<StreamAccessLogsMessage>,
    call: tokio::task::JoinHandle<
        std::result::Result<tonic::Response<StreamAccessLogsResponse>, tonic::Status>,
    >,
}

impl ReportStream {
    /// Opens a stream to the operator at `xds` (plaintext) as pod `ns/pod`'s sidecar.
    async fn open(xds: SocketAddr, ns: &str, pod: &str) -> Result<ReportStream> {
        let mut node = xds_client::node(ns, pod);
        if let Some(meta) = node.metadata.as_mut() {
            meta.fields.insert(
                REPORTS_META.to_string(),
                PbValue {
                    kind: Some(Kind::StringValue("1".into())),
                },
            );
        }
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{xds}"))?
            .connect()
            .await
            .with_context(|| format!("connecting to the operator's xDS port {xds}"))?;
        let mut client = AccessLogServiceClient::new(channel);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let call = tokio::spawn(async move {
            client
                .stream_access_logs(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        });
        Ok(ReportStream {
            node: Some(node),
            tx,
            call,
        })
    }

    /// Sends one message with `log_entry`.
    async fn send(&mut self, log_entry: Vec<HttpAccessLogEntry>) -> Result<()> {
        let identifier = self.node.take().map(|node| Identifier {
            node: Some(node),
            log_name: DENIAL_LOG_NAME.to_string(),
        });
        let message = StreamAccessLogsMessage {
            identifier,
            log_entries: Some(LogEntries::HttpLogs(HttpAccessLogEntries { log_entry })),
        };
        if self.tx.send(message).await.is_err() {
            // The call ended: say how.
            let ended = (&mut self.call).await?;
            bail!("the report stream ended early: {ended:?}");
        }
        Ok(())
    }

    /// Ends the stream and waits for the operator to end its side, which it does once it
    /// has counted every message sent: what was sent is all recorded when this returns.
    async fn close(self) -> Result<()> {
        drop(self.tx);
        let ended = tokio::time::timeout(DEADLINE, self.call)
            .await
            .context("the operator did not end the report stream")??;
        match ended {
            Ok(_) => Ok(()),
            // The service answers nothing (Envoy expects nothing): the stream ends OK
            // without a message, which tonic's client-streaming call reports as Internal.
            Err(status)
                if status.code() == tonic::Code::Internal
                    && status.message().contains("Missing response message") =>
            {
                Ok(())
            }
            Err(status) => bail!("the operator ended the report stream with {status:?}"),
        }
    }
}

/// VmRSS of this process (the operator runs in it), in KiB.
fn rss_kib() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS in /proc/self/status")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmRSS without a value")?
        .parse()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_and_enforce_denials_reach_the_policy_status_and_the_metric() -> Result<()> {
    let test = "audit_and_enforce_denials_reach_the_policy_status_and_the_metric";
    if !can_run(test) {
        return Ok(());
    }
    let cluster = installed();
    let _slot = operator_slot().await;
    let started = Instant::now();
    let (ns, elsewhere) = ("backend", "elsewhere");
    let api_ip = "10.244.1.10";
    server_workload(cluster, ns, api_ip)?;
    apply(cluster, &authz_policy(ns, "api-authz", "api", "Audit"))?;
    // Policies api-0 does not hold: another Service's in its namespace, and one of the
    // same name in another namespace (whose Service has no endpoints).
    apply(cluster, &service(ns, "web"))?;
    apply(cluster, &authz_policy(ns, "web-authz", "web", "Enforce"))?;
    apply(
        cluster,
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": elsewhere}}),
    )?;
    apply(cluster, &service(elsewhere, "api"))?;
    apply(
        cluster,
        &authz_policy(elsewhere, "api-authz", "api", "Enforce"),
    )?;

    let plane = start_operator_as(cluster, "weir-operator", "weir-authz", None).await?;
    let result = async {
        wait_leading(&plane, DEADLINE).await?;
        let pod = ObjectKey::new(ns, "api-0");
        let policy = ObjectKey::new(ns, "api-authz");
        wait_pod_holds(&plane, &pod, &policy, Mode::Audit).await?;
        println!("setup and operator leading: {:?}", started.elapsed());
        let admin = plane.admin_addr;
        let audit_id = policy_id(ns, "api-authz", "defaultDeny");

        // (1) Audit: three would-be denials of robot, one of a plaintext caller, and a
        // request the shadow rules allowed (not a denial).
        let step = Instant::now();
        let mut sidecar = ReportStream::open(plane.xds_addr, ns, "api-0").await?;
        let mut batch = entries(3, Some(ROBOT), api_ip, Logged::ShadowDenied(&audit_id));
        batch.push(http_entry(None, api_ip, Logged::ShadowDenied(&audit_id)));
        batch.push(http_entry(
            Some("spiffe://cluster.local/ns/shop/sa/web"),
            api_ip,
            Logged::ShadowAllowed,
        ));
        sidecar.send(batch).await?;
        let audit = wait_denials(
            cluster,
            &plane,
            ns,
            "api-authz",
            "Audit, robot 3, total 4",
            |d| {
                d["mode"] == "Audit"
                    && d["total"] == 4
                    && listed(d, ROBOT, "defaultDeny", "http").is_some_and(|c| c["count"] == 3)
            },
        )
        .await?;
        println!(
            "audit denials in the status after {:?}: {audit}",
            step.elapsed()
        );
        let robot = listed(&audit, ROBOT, "defaultDeny", "http").context("robot")?;
        assert!(
            robot["source"].is_null(),
            "a mesh caller has no source: {audit}"
        );
        assert!(
            robot["lastSeen"].as_str().is_some_and(|s| !s.is_empty()),
            "{audit}"
        );
        assert_eq!(
            audit["callers"][0]["caller"], ROBOT,
            "most frequent first: {audit}"
        );
        let plain = listed(&audit, "unauthenticated", "defaultDeny", "http")
            .with_context(|| format!("the plaintext caller: {audit}"))?;
        assert_eq!(plain["count"], 1, "{audit}");
        assert_eq!(plain["source"], PLAIN_CALLER_IP, "{audit}");
        assert_eq!(
            audit["callers"].as_array().map(Vec::len),
            Some(2),
            "{audit}"
        );
        assert_eq!(audit["others"], 0, "{audit}");
        let audit_since = audit["since"].as_str().context("since")?.to_string();
        assert_eq!(
            denial_metric(admin, ns, "api-authz", "Audit").await?,
            Some(4),
            "the Audit metric"
        );

        // The same stream keeps counting; the status follows (it is rewritten at most
        // every 3 s per policy).
        let step = Instant::now();
        sidecar
            .send(entries(
                2,
                Some(ROBOT),
                api_ip,
                Logged::ShadowDenied(&audit_id),
            ))
            .await?;
        wait_denials(cluster, &plane, ns, "api-authz", "robot 5, total 6", |d| {
            d["total"] == 6
                && listed(d, ROBOT, "defaultDeny", "http").is_some_and(|c| c["count"] == 5)
        })
        .await?;
        println!(
            "the next audit denials in the status after {:?}",
            step.elapsed()
        );
        assert_eq!(
            denial_metric(admin, ns, "api-authz", "Audit").await?,
            Some(6)
        );

        // (2) Enforce: the sidecar now answers 403; counting starts again.
        apply(cluster, &authz_policy(ns, "api-authz", "api", "Enforce"))?;
        wait_pod_holds(&plane, &pod, &policy, Mode::Enforce).await?;
        let step = Instant::now();
        sidecar
            .send(entries(2, Some(ROBOT), api_ip, Logged::Denied(&audit_id)))
            .await?;
        let enforce = wait_denials(
            cluster,
            &plane,
            ns,
            "api-authz",
            "Enforce, robot 2, total 2",
            |d| {
                d["mode"] == "Enforce"
                    && d["total"] == 2
                    && listed(d, ROBOT, "defaultDeny", "http").is_some_and(|c| c["count"] == 2)
            },
        )
        .await?;
        println!(
            "enforce denials in the status after {:?}: {enforce}",
            step.elapsed()
        );
        assert_eq!(
            enforce["callers"].as_array().map(Vec::len),
            Some(1),
            "the audit-time callers are gone: {enforce}"
        );
        assert_eq!(enforce["others"], 0, "{enforce}");
        let since = enforce["since"].as_str().context("since")?;
        assert!(
            since >= audit_since.as_str(),
            "since {since} before {audit_since}"
        );
        assert_eq!(
            denial_metric(admin, ns, "api-authz", "Enforce").await?,
            Some(2)
        );
        assert_eq!(
            denial_metric(admin, ns, "api-authz", "Audit").await?,
            Some(6),
            "the Audit series is a counter: it stays"
        );
        sidecar.close().await?;

        // (3) Reports the pod cannot make: policies it does not hold, in both forms...
        let mut forged = ReportStream::open(plane.xds_addr, ns, "api-0").await?;
        let foreign = policy_id(elsewhere, "api-authz", "defaultDeny");
        let other_service = policy_id(ns, "web-authz", "defaultDeny");
        let mut batch = entries(7, Some(ROBOT), api_ip, Logged::Denied(&foreign));
        batch.extend(entries(
            7,
            Some(ROBOT),
            api_ip,
            Logged::ShadowDenied(&foreign),
        ));
        batch.extend(entries(
            7,
            Some(ROBOT),
            api_ip,
            Logged::Denied(&other_service),
        ));
        forged.send(batch).await?;
        forged.close().await?;
        // ...and a pod that does not back Service api naming its policy.
        let mut stranger = ReportStream::open(plane.xds_addr, ns, "stranger-0").await?;
        stranger
            .send(entries(7, Some(ROBOT), api_ip, Logged::Denied(&audit_id)))
            .await?;
        stranger.close().await?;
        // Both streams were read to their end: nothing of them was counted.
        let series = denial_series(admin, elsewhere).await?;
        assert!(
            series.is_empty(),
            "another namespace's policy counted: {series:?}"
        );
        assert_eq!(
            denial_metric(admin, ns, "web-authz", "Enforce").await?,
            None
        );
        assert_eq!(
            denial_metric(admin, ns, "api-authz", "Enforce").await?,
            Some(2)
        );
        for key in [
            ObjectKey::new(elsewhere, "api-authz"),
            ObjectKey::new(ns, "web-authz"),
        ] {
            let report = plane.state.denials.report(&key);
            assert!(report.is_none(), "{key} has denials: {report:?}");
        }
        let kept = plane.state.denials.report(&policy).context("api-authz's")?;
        assert_eq!(kept.total, 2, "{kept:?}");
        // The status agrees (it could only have been written with denials counted).
        for (namespace, name) in [(elsewhere, "api-authz"), (ns, "web-authz")] {
            let d = denials(cluster, namespace, name);
            assert!(d.is_none(), "{namespace}/{name} status.denials: {d:?}");
        }
        let d = denials(cluster, ns, "api-authz").context("api-authz status.denials")?;
        assert_eq!(d["total"], 2, "{d}");
        println!("test done in {:?}", started.elapsed());
        anyhow::Ok(())
    }
    .await;
    plane.stop().await;
    clean_namespaces(cluster, &[ns, elsewhere]);
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_denials_keeps_the_status_short_and_the_operator_small() -> Result<()> {
    let test = "a_flood_of_denials_keeps_the_status_short_and_the_operator_small";
    if !can_run(test) {
        return Ok(());
    }
    let cluster = installed();
    let _slot = operator_slot().await;
    let started = Instant::now();
    let ns = "flood";
    let api_ip = "10.244.2.10";
    server_workload(cluster, ns, api_ip)?;
    apply(cluster, &authz_policy(ns, "api-authz", "api", "Enforce"))?;
    let plane = start_operator_as(cluster, "weir-operator", "weir-flood", None).await?;
    let result = async {
        wait_leading(&plane, DEADLINE).await?;
        let pod = ObjectKey::new(ns, "api-0");
        let policy = ObjectKey::new(ns, "api-authz");
        wait_pod_holds(&plane, &pod, &policy, Mode::Enforce).await?;
        let id = policy_id(ns, "api-authz", "defaultDeny");
        let identity =
            |i: usize| format!("spiffe://cluster.local/ns/flood-{}/sa/caller-{i}", i % 7);

        // 50 identities, identity i denied 151 + 2i times (10,000 in all, no two alike),
        // interleaved, 500 entries a message.
        let counts: Vec<usize> = (0..50).map(|i| 151 + 2 * i).collect();
        assert_eq!(counts.iter().sum::<usize>(), 10_000);
        let mut callers: Vec<usize> = Vec::with_capacity(10_000);
        for round in 0..counts[49] {
            callers.extend((0..50).filter(|i| counts[*i] > round));
        }
        let rss_before = rss_kib()?;
        let step = Instant::now();
        let mut sidecar = ReportStream::open(plane.xds_addr, ns, "api-0").await?;
        for chunk in callers.chunks(500) {
            let batch = chunk
                .iter()
                .map(|i| http_entry(Some(&identity(*i)), api_ip, Logged::Denied(&id)))
                .collect();
            sidecar.send(batch).await?;
        }
        sidecar.close().await?;
        let sent = step.elapsed();
        let total = |d: &Value| d["total"] == 10_000;
        let status = wait_denials(cluster, &plane, ns, "api-authz", "total 10,000", total).await?;
        println!(
            "10,000 denials from 50 identities sent in {sent:?}, in the status after {:?}",
            step.elapsed()
        );
        let shown = status["callers"].as_array().context("callers")?;
        assert_eq!(shown.len(), 5, "{status}");
        for (rank, caller) in shown.iter().enumerate() {
            let i = 49 - rank;
            assert_eq!(
                caller["caller"],
                identity(i).as_str(),
                "rank {rank}: {status}"
            );
            assert_eq!(caller["count"], counts[i], "rank {rank}: {status}");
            assert_eq!(caller["rule"], "defaultDeny");
            assert_eq!(caller["protocol"], "http");
        }
        let shown_sum: u64 = shown.iter().filter_map(|c| c["count"].as_u64()).sum();
        let others = status["others"].as_u64().context("others")?;
        assert_eq!(shown_sum + others, 10_000, "{status}");
        assert_eq!(status["mode"], "Enforce");
        assert_eq!(
            denial_metric(plane.admin_addr, ns, "api-authz", "Enforce").await?,
            Some(10_000)
        );

        // 100 identities never seen before, one denial each: past the operator's table of
        // 64 callers, counted in others.
        let step = Instant::now();
        let mut sidecar = ReportStream::open(plane.xds_addr, ns, "api-0").await?;
        let batch = (50..150)
            .map(|i| http_entry(Some(&identity(i)), api_ip, Logged::Denied(&id)))
            .collect();
        sidecar.send(batch).await?;
        sidecar.close().await?;
        let total = |d: &Value| d["total"] == 10_100;
        let status = wait_denials(cluster, &plane, ns, "api-authz", "total 10,100", total).await?;
        println!(
            "100 new identities in the status after {:?}",
            step.elapsed()
        );
        let shown = status["callers"].as_array().context("callers")?;
        assert_eq!(shown.len(), 5, "{status}");
        assert_eq!(shown[0]["caller"], identity(49).as_str(), "{status}");
        let shown_sum: u64 = shown.iter().filter_map(|c| c["count"].as_u64()).sum();
        let others = status["others"].as_u64().context("others")?;
        assert_eq!(shown_sum + others, 10_100, "{status}");
        assert_eq!(
            denial_metric(plane.admin_addr, ns, "api-authz", "Enforce").await?,
            Some(10_100)
        );

        let rss_after = rss_kib()?;
        let grown = rss_after.saturating_sub(rss_before);
        println!(
            "VmRSS of the process (the operator in it): {rss_before} KiB before, \
             {rss_after} KiB after: +{grown} KiB"
        );
        ensure!(
            grown < 50 * 1024,
            "the process grew by {grown} KiB over 10,100 denials ({rss_before} -> {rss_after} KiB)"
        );
        println!("test done in {:?}", started.elapsed());
        anyhow::Ok(())
    }
    .await;
    plane.stop().await;
    clean_namespaces(cluster, &[ns]);
    result
}
