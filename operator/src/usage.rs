//! What scoped sidecars use, from Envoy's load reports, so that their scopes shrink.
//!
//! ```text
//! ADS stream of a scoped proxy --Usage::register(node, pod)--> a cell for the node
//! sidecar: LRS stream on the reports cluster --first message: its node--> waits until the
//!   node has a cell (a scoped ADS stream) --> LoadStatsResponse {send_all_clusters,
//!   interval} --each report: scope::used_services--> the cell's Services used
//! ADS stream, every interval --Registration::take--> Scope::touch, Scope::shrink
//!   --> a new cut, without the Services unused for --scope-idle
//! ```
//!
//! A proxy that is not scoped (or an operator with `--scope-idle 0`) is never answered: its
//! Envoy holds the stream open and sends nothing. Where proxies authenticate, a report
//! counts only from an address of the pod its node names (the reports cluster carries no
//! token), like the denial reports.

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::service::load_stats::v3::{LoadStatsRequest, LoadStatsResponse};
use prost::Message;
use tokio::sync::watch;
use tonic::Status;
use weir_core::ads::wire;
use weir_core::mesh::LOAD_REPORTING_SERVICE;
use weir_core::ObjectKey;

use crate::mesh_state::MeshState;
use crate::xds::grpc::{self, Outgoing, RequestStream};

/// A load report larger than this is refused (a scoped proxy reports a few clusters).
const MAX_REPORT_BYTES: usize = 4 * 1024 * 1024;

/// The scoped proxies' cells, by node id, and how long a Service may go unused.
#[derive(Debug)]
pub struct Usage {
    idle: Mutex<Option<Duration>>,
    cells: Mutex<HashMap<String, Arc<Cell>>>,
    /// Bumped on every registration, for report streams waiting for their proxy.
    registered: watch::Sender<u64>,
}

/// The Services one proxy used since its stream last took them.
#[derive(Debug)]
struct Cell {
    pod: ObjectKey,
    used: Mutex<BTreeSet<ObjectKey>>,
    /// When its last report came.
    reported: Mutex<Option<std::time::Instant>>,
}

/// A scoped stream's place in [`Usage`], given back on drop.
#[derive(Debug)]
pub struct Registration {
    usage: Arc<Usage>,
    node: String,
    cell: Arc<Cell>,
    /// How long a Service may go unused, and how often the stream looks.
    pub idle: Duration,
    /// How often the proxy reports and the stream looks.
    pub interval: Duration,
}

impl Default for Usage {
    fn default() -> Self {
        Usage {
            idle: Mutex::new(Some(weir_core::mesh::DEFAULT_SCOPE_IDLE)),
            cells: Mutex::default(),
            registered: watch::channel(0).0,
        }
    }
}

impl Usage {
    /// Sets how long a learned Service may go unused before it leaves a scope (None:
    /// never); before any proxy connects (the operator's `--scope-idle`).
    pub fn set_idle(&self, idle: Option<Duration>) {
        *crate::sync::lock(&self.idle) = idle.filter(|d| !d.is_zero());
    }

    /// Registers the scoped stream of `node` (serving `pod`); None when scopes never shrink.
    pub fn register(self: &Arc<Self>, node: &str, pod: &ObjectKey) -> Option<Registration> {
        let idle = (*crate::sync::lock(&self.idle))?;
        let cell = Arc::new(Cell {
            pod: pod.clone(),
            used: Mutex::default(),
            reported: Mutex::default(),
        });
        crate::sync::lock(&self.cells).insert(node.to_string(), cell.clone());
        self.registered.send_modify(|n| *n += 1);
        Some(Registration {
            usage: self.clone(),
            node: node.to_string(),
            cell,
            idle,
            interval: weir_core::mesh::usage_report_interval(idle),
        })
    }

    /// The cell of `node`, when its scoped stream serves `pod`.
    fn cell(&self, node: &str, pod: &ObjectKey) -> Option<Arc<Cell>> {
        crate::sync::lock(&self.cells)
            .get(node)
            .filter(|cell| cell.pod == *pod)
            .cloned()
    }
}

impl Registration {
    /// The Services the proxy reported using since the last call; None when its reports
    /// stopped coming (none for two intervals): then nothing is known unused. With several
    /// replicas, a proxy's reports may reach another one than its ADS stream: its scope
    /// then does not shrink.
    pub fn take(&self) -> Option<BTreeSet<ObjectKey>> {
        let used = std::mem::take(&mut *crate::sync::lock(&self.cell.used));
        let reported = *crate::sync::lock(&self.cell.reported);
        reported
            .is_some_and(|at| at.elapsed() <= self.interval * 2 + Duration::from_secs(1))
            .then_some(used)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut cells = crate::sync::lock(&self.usage.cells);
        // A newer stream of the same node may have taken the place.
        if cells
            .get(&self.node)
            .is_some_and(|cell| Arc::ptr_eq(cell, &self.cell))
        {
            cells.remove(&self.node);
        }
    }
}

/// The gRPC service sidecars stream their load reports to.
#[derive(Debug, Clone)]
pub struct LoadReportService {
    state: Arc<MeshState>,
    /// Whether a report must come from its pod's own address.
    check_source: bool,
}

impl LoadReportService {
    /// A service feeding `state`'s usage; with `check_source`, only reports sent from an
    /// address of the pod they name count.
    pub fn new(state: Arc<MeshState>, check_source: bool) -> Self {
        LoadReportService {
            state,
            check_source,
        }
    }
}

impl tonic::server::NamedService for LoadReportService {
    const NAME: &'static str = LOAD_REPORTING_SERVICE;
}

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for LoadReportService {
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
            Ok(grpc::report_stream(
                request,
                LOAD_REPORTING_SERVICE,
                "StreamLoadStats",
                MAX_REPORT_BYTES,
                move |source, reports, tx| async move {
                    serve_reports(&state, check_source, source, reports, &tx).await
                },
            ))
        })
    }
}

/// One proxy's report stream: waits for its scoped ADS stream, asks for reports, records
/// them; the status the stream ends with.
async fn serve_reports(
    state: &MeshState,
    check_source: bool,
    source: Option<String>,
    mut reports: RequestStream<LoadStatsRequest>,
    tx: &tokio::sync::mpsc::Sender<Outgoing>,
) -> Status {
    let first = match reports.message().await {
        Ok(Some(first)) => first,
        Ok(None) => return Status::ok(""),
        Err(status) => return status,
    };
    let (node, meta) = match crate::xds::identify(first.node.as_ref()) {
        Ok(identity) => identity,
        Err(status) => return status,
    };
    let pod = ObjectKey::new(meta.namespace, meta.pod);
    if check_source && !state.is_pod_address(&pod, source.as_deref()) {
        return Status::permission_denied(format!(
            "load reports of pod {pod} must come from its own address"
        ));
    }
    let usage = &state.usage;
    let mut registered = usage.registered.subscribe();
    let interval = loop {
        if usage.cell(&node, &pod).is_some() {
            let idle = *crate::sync::lock(&usage.idle);
            if let Some(idle) = idle {
                break weir_core::mesh::usage_report_interval(idle);
            }
        }
        tokio::select! {
            changed = registered.changed() => if changed.is_err() {
                return Status::unavailable("the operator is shutting down");
            },
            // Envoy sends nothing more before it is answered; this notices it leaving.
            report = reports.message() => match report {
                Ok(Some(_)) => {}
                Ok(None) => return Status::ok(""),
                Err(status) => return status,
            },
        }
    };
    let answer = LoadStatsResponse {
        send_all_clusters: true,
        load_reporting_interval: Some(envoy_types::pb::google::protobuf::Duration {
            seconds: interval.as_secs() as i64,
            nanos: interval.subsec_nanos() as i32,
        }),
        ..Default::default()
    };
    if tx.send(Outgoing::Message(frame(&answer))).await.is_err() {
        return Status::ok("");
    }
    loop {
        match reports.message().await {
            Ok(Some(report)) => {
                // Looked up per report: the proxy's ADS stream may have reconnected.
                if let Some(cell) = usage.cell(&node, &pod) {
                    let used = weir_core::scope::used_services(&report.cluster_stats);
                    crate::sync::lock(&cell.used).extend(used);
                    *crate::sync::lock(&cell.reported) = Some(std::time::Instant::now());
                }
            }
            Ok(None) => return Status::ok(""),
            Err(status) => return status,
        }
    }
}

/// A message as one gRPC frame.
fn frame(message: &impl Message) -> wire::Message {
    let body = message.encode_to_vec();
    let mut prefix = BytesMut::with_capacity(wire::GRPC_PREFIX);
    prefix.put_u8(0); // not compressed
    prefix.put_u32(u32::try_from(body.len()).unwrap_or(u32::MAX));
    vec![prefix.freeze(), Bytes::from(body)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_reaches_the_scoped_stream_of_its_node_and_pod_only() {
        let usage = Arc::new(Usage::default());
        let pod = ObjectKey::new("shop", "web");
        let stream = usage.register("web.shop", &pod).expect("scopes shrink");
        assert!(usage
            .cell("web.shop", &ObjectKey::new("shop", "other"))
            .is_none());
        let cell = usage.cell("web.shop", &pod).expect("registered");
        assert_eq!(
            stream.take(),
            None,
            "no report yet: nothing is known unused"
        );
        cell.used
            .lock()
            .unwrap()
            .insert(ObjectKey::new("shop", "reviews"));
        *cell.reported.lock().unwrap() = Some(std::time::Instant::now());
        assert_eq!(
            stream.take().unwrap().into_iter().collect::<Vec<_>>(),
            [ObjectKey::new("shop", "reviews")]
        );
        assert_eq!(stream.take(), Some(BTreeSet::new()), "taken once");
        // A reconnect registers anew; the old stream's end leaves the new one in place.
        let newer = usage.register("web.shop", &pod).expect("scopes shrink");
        drop(stream);
        assert!(usage.cell("web.shop", &pod).is_some());
        drop(newer);
        assert!(usage.cell("web.shop", &pod).is_none());
    }

    #[test]
    fn scopes_that_never_shrink_register_nothing() {
        let usage = Arc::new(Usage::default());
        usage.set_idle(Some(Duration::ZERO));
        assert!(usage
            .register("web.shop", &ObjectKey::new("shop", "web"))
            .is_none());
    }
}
