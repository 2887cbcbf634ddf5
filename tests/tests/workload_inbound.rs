//! Inbound config per workload, over a real ADS stream: a connected sidecar whose pod joins
//! a Service gets an inbound listener naming it, pushed on the stream it already has, and
//! a neighbour of the same profile that backs another Service keeps its own.

use anyhow::{Context, Result};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
};
use envoy_types::pb::google::protobuf::value::Kind;
use prost::Message;
use std::net::SocketAddr;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use weir_core::names::INBOUND_LISTENER;
use weir_core::ResourceType;
use weir_tests::*;

/// A meshed pod as the injector leaves it.
fn meshed_pod_yaml(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n  annotations:\n    {}: \"0.1.0\"\nspec:\n  serviceAccountName: {name}\n",
        weir_core::mesh::INJECTED_ANNOTATION
    )
}

/// A transparent-mode sidecar's delta stream subscribed to every listener.
struct Sidecar {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    responses: tonic::Streaming<DeltaDiscoveryResponse>,
}

impl Sidecar {
    async fn connect(xds: SocketAddr, pod: &str) -> Result<Sidecar> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{xds}"))?
            .connect()
            .await?;
        let (tx, rx) = mpsc::channel(4);
        tx.send(DeltaDiscoveryRequest {
            node: Some(xds_client::node("default", pod)),
            type_url: ResourceType::Listener.type_url().to_string(),
            ..Default::default()
        })
        .await?;
        let responses = AggregatedDiscoveryServiceClient::new(channel)
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Sidecar { tx, responses })
    }

    /// The Services the next inbound listener received names (ACKing every response).
    async fn next_inbound_services(&mut self) -> Result<Vec<String>> {
        loop {
            let response = tokio::time::timeout(DEADLINE, self.responses.message())
                .await
                .context("no listener push in time")??
                .context("the stream ended")?;
            self.tx
                .send(DeltaDiscoveryRequest {
                    type_url: response.type_url.clone(),
                    response_nonce: response.nonce.clone(),
                    ..Default::default()
                })
                .await?;
            let Some(inbound) = response
                .resources
                .iter()
                .find(|r| r.name == INBOUND_LISTENER)
            else {
                continue;
            };
            let any = inbound.resource.as_ref().context("a resource body")?;
            return Ok(services_named(&Listener::decode(any.value.as_slice())?));
        }
    }
}

/// What the listener's `weir` metadata says the workload backs.
fn services_named(listener: &Listener) -> Vec<String> {
    let Some(metadata) = &listener.metadata else {
        return Vec::new();
    };
    let Some(Kind::ListValue(list)) = metadata
        .filter_metadata
        .get("weir")
        .and_then(|s| s.fields.get("services"))
        .and_then(|v| v.kind.as_ref())
    else {
        return Vec::new();
    };
    list.values
        .iter()
        .filter_map(|v| match &v.kind {
            Some(Kind::StringValue(s)) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_joins_a_service_gets_its_own_inbound_listener_on_its_open_stream() -> Result<()>
{
    let dir = scratch_dir("workload-inbound");
    let mesh = [
        service_yaml("default", "api", "10.96.0.10", 8080),
        service_yaml("default", "web", "10.96.0.11", 8080),
        meshed_pod_yaml("api-0"),
        meshed_pod_yaml("web-0"),
        slice_yaml(
            "default",
            "web",
            "web-a",
            8080,
            &[("web-0", "10.1.0.2".parse()?)],
        ),
    ]
    .join("---\n");
    write_file(&dir, "mesh.yaml", &mesh)?;
    let options = weir_operator::Options::new("127.0.0.1:0".parse()?, "127.0.0.1:0".parse()?);
    let plane =
        weir_operator::ControlPlane::start(weir_operator::Source::Dir(dir.clone()), options)
            .await?;
    until_ready(plane.admin_addr).await?;

    let mut api = Sidecar::connect(plane.xds_addr, "api-0").await?;
    let mut web = Sidecar::connect(plane.xds_addr, "web-0").await?;
    assert_eq!(api.next_inbound_services().await?, Vec::<String>::new());
    assert_eq!(web.next_inbound_services().await?, ["default/web"]);

    // api-0 joins Service api while connected: its stream gets a new inbound listener.
    write_file(
        &dir,
        "api-slice.yaml",
        &slice_yaml(
            "default",
            "api",
            "api-a",
            8080,
            &[("api-0", "10.1.0.1".parse()?)],
        ),
    )?;
    assert_eq!(api.next_inbound_services().await?, ["default/api"]);
    // Its neighbour of the same profile was not pushed a listener: the next thing web-0
    // hears of is its own change.
    write_file(
        &dir,
        "web-slice-2.yaml",
        &slice_yaml(
            "default",
            "api",
            "api-b",
            8080,
            &[("web-0", "10.1.0.2".parse()?)],
        ),
    )?;
    assert_eq!(
        web.next_inbound_services().await?,
        ["default/api", "default/web"]
    );
    plane.stop().await;
    Ok(())
}
