//! Injection: a Pod, its namespace and the mesh configuration in, the injected Pod (and the
//! JSON patch that makes it) out. Pure: no I/O.
//!
//! ```text
//! decide (namespace, labels, annotations, hostNetwork, already injected?)
//!   -> annotations::parse (overrides, warnings)
//!   -> rewrite HTTP probes to the proxy's probe port and gRPC probes to a proxy port per
//!      application port (they keep working under strict mTLS)
//!   -> weir-init init container (iptables), weir-proxy sidecar (native or not), volumes
//!   -> json_patch::diff(original, injected)
//! ```

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapProjection, Container, ContainerPort, EnvVar, EnvVarSource, ExecAction,
    HTTPGetAction, Lifecycle, LifecycleHandler, ObjectFieldSelector, Pod, Probe,
    ProjectedVolumeSource, ResourceRequirements, SecurityContext, ServiceAccountTokenProjection,
    Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;
use weir_core::bootstrap::{
    bootstrap, BootstrapParams, GrpcProbeRoute, ProbeRoute, ProxyMeta, ProxyTelemetry,
    SidecarListeners, XdsProtocol, XdsTlsFiles,
};
use weir_core::mesh::{
    ENVOY_ADMIN_PORT, EXCLUDE_INBOUND_PORTS_ANNOTATION, GRPC_PROBE_PORTS, INJECTED_ANNOTATION,
    INJECT_KEY, MESH_NAMESPACE, METRICS_PORT_NAME, OTEL_RESOURCE_ATTRIBUTES_ENV, PROBE_PORT,
    PROMETHEUS_PATH, PROMETHEUS_PORT, PROMETHEUS_SCRAPE_ANNOTATIONS, PROXY_READY_PATH, PROXY_UID,
    ROOT_CA_CONFIGMAP, ROOT_CERT_KEY, TOKEN_AUDIENCE, WORKLOAD_ENV, WORKLOAD_NAMESPACE_ENV,
    XDS_PORT,
};
use weir_core::Capture;

use crate::annotations::{self, Overrides};

/// Name of the sidecar container.
pub const PROXY_CONTAINER: &str = "weir-proxy";
/// Name of the traffic-capture init container.
pub const INIT_CONTAINER: &str = "weir-init";
/// Namespaces never injected.
pub const NEVER_INJECTED: [&str; 4] = [
    "kube-system",
    "kube-public",
    "kube-node-lease",
    MESH_NAMESPACE,
];
/// Where the projected service account token is mounted.
pub const TOKEN_DIR: &str = "/var/run/secrets/weir/tokens";
/// Where the mesh root CA is mounted (the ConfigMap weir-root-ca; its key
/// [`ROOT_CERT_KEY`] is the file name).
pub const CA_DIR: &str = "/var/run/secrets/weir/ca";
/// The token file in [`TOKEN_DIR`].
pub const TOKEN_FILE: &str = "token";

/// Mesh-wide injection settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshConfig {
    /// The Envoy image.
    pub proxy_image: String,
    /// The weir-init image.
    pub init_image: String,
    /// The operator's xDS address as the proxy reaches it.
    pub xds_address: String,
    /// Inject Envoy as a native sidecar (an init container with restartPolicy Always,
    /// Kubernetes 1.29+); else as the first regular container.
    pub native_sidecars: bool,
    /// Default CPU request.
    pub cpu: String,
    /// Default memory request.
    pub memory: String,
    /// Default CPU limit.
    pub cpu_limit: String,
    /// Default memory limit.
    pub memory_limit: String,
    /// Default Envoy log level.
    pub log_level: String,
    /// Default Envoy worker threads.
    pub concurrency: u32,
    /// Recorded in the `weir.dev/injected` annotation.
    pub version: String,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            proxy_image: "envoyproxy/envoy:v1.40.0".into(),
            init_image: format!("ghcr.io/weir-mesh/weir-init:{}", env!("CARGO_PKG_VERSION")),
            xds_address: format!("weir.{MESH_NAMESPACE}.svc:{XDS_PORT}"),
            native_sidecars: true,
            cpu: "100m".into(),
            memory: "128Mi".into(),
            cpu_limit: "2".into(),
            memory_limit: "1Gi".into(),
            log_level: "warning".into(),
            concurrency: 2,
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

/// Why a pod is left as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// The namespace is never meshed.
    ProtectedNamespace(String),
    /// Pods on the host network cannot have their traffic captured.
    HostNetwork,
    /// The pod says `weir.dev/inject: "false"`.
    OptedOut,
    /// Neither the namespace nor the pod opted in.
    NotOptedIn,
    /// The pod carries a sidecar already.
    AlreadyInjected,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::ProtectedNamespace(ns) => write!(f, "namespace {ns} is never injected"),
            Skip::HostNetwork => f.write_str("pods with hostNetwork are not injected"),
            Skip::OptedOut => write!(f, "the pod opts out ({}: \"false\")", INJECT_KEY),
            Skip::NotOptedIn => write!(
                f,
                "neither the namespace (label {INJECT_KEY}=enabled) nor the pod ({}: \"true\") opts in",
                INJECT_KEY
            ),
            Skip::AlreadyInjected => f.write_str("the pod is injected already"),
        }
    }
}

/// The result of injecting one pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Injection {
    /// The injected pod.
    pub pod: Pod,
    /// Problems that did not stop injection (bad annotations, probes left alone).
    pub warnings: Vec<String>,
}

/// Whether a pod of `namespace` (with `namespace_labels`, when known) should be injected.
/// `namespace_labels: None` means "inject unless the pod opts out" (the CLI's behaviour).
pub fn decide(
    pod: &Pod,
    namespace: &str,
    namespace_labels: Option<&BTreeMap<String, String>>,
) -> Result<(), Skip> {
    if NEVER_INJECTED.contains(&namespace) {
        return Err(Skip::ProtectedNamespace(namespace.to_string()));
    }
    let spec = pod.spec.as_ref();
    if spec.and_then(|s| s.host_network).unwrap_or(false) {
        return Err(Skip::HostNetwork);
    }
    let annotations = pod.metadata.annotations.as_ref();
    let has = |name: &str| {
        spec.is_some_and(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
                .any(|c| c.name == name)
        })
    };
    if annotations.is_some_and(|a| a.contains_key(INJECTED_ANNOTATION)) || has(PROXY_CONTAINER) {
        return Err(Skip::AlreadyInjected);
    }
    match annotations
        .and_then(|a| a.get(INJECT_KEY))
        .map(String::as_str)
    {
        Some("false") => Err(Skip::OptedOut),
        Some("true") => Ok(()),
        _ => match namespace_labels {
            None => Ok(()),
            Some(labels) if labels.get(INJECT_KEY).map(String::as_str) == Some("enabled") => Ok(()),
            Some(_) => Err(Skip::NotOptedIn),
        },
    }
}

/// Injects a pod the caller decided to inject; its workload (what telemetry names it by)
/// is its owner's (see `weir_core::owner`).
pub fn inject(pod: &Pod, namespace: &str, config: &MeshConfig) -> Injection {
    inject_as(
        pod,
        namespace,
        config,
        &weir_core::owner::workload_name(&pod.metadata),
    )
}

/// As [`inject`], for a pod of `workload` (a pod template: the object that holds it).
pub fn inject_as(pod: &Pod, namespace: &str, config: &MeshConfig, workload: &str) -> Injection {
    let (overrides, mut warnings) = annotations::parse(
        pod.metadata
            .annotations
            .as_ref()
            .unwrap_or(&BTreeMap::new()),
    );
    let mut pod = pod.clone();
    let spec = pod.spec.get_or_insert_with(Default::default);
    let default_container = spec.containers.first().map(|c| c.name.clone());

    let (probes, grpc_probes) = rewrite_probes(&mut spec.containers, &mut warnings);
    // The ServiceAccount admission plugin has set it by the time webhooks run.
    let service_account = spec
        .service_account_name
        .clone()
        .filter(|sa| !sa.is_empty())
        .unwrap_or_else(|| "default".into());
    let proxy = proxy_container(
        config,
        &overrides,
        Identity {
            namespace,
            service_account: &service_account,
            workload,
        },
        probes,
        grpc_probes,
    );
    let init = init_container(config, &overrides);
    let init_containers = spec.init_containers.get_or_insert_with(Vec::new);
    if config.native_sidecars {
        init_containers.splice(0..0, [init, proxy]);
    } else {
        init_containers.insert(0, init);
        spec.containers.insert(0, proxy);
    }
    spec.volumes.get_or_insert_with(Vec::new).extend(volumes());

    let annotations = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(INJECTED_ANNOTATION.into(), config.version.clone());
    // Scraped by annotation-driven Prometheus configurations, unless the application
    // announces its own metrics (the PodMonitor finds the sidecar by port name anyway).
    if !PROMETHEUS_SCRAPE_ANNOTATIONS
        .iter()
        .any(|a| annotations.contains_key(*a))
    {
        let values = [
            "true".to_string(),
            PROMETHEUS_PORT.to_string(),
            PROMETHEUS_PATH.to_string(),
        ];
        for (key, value) in PROMETHEUS_SCRAPE_ANNOTATIONS.iter().zip(values) {
            annotations.insert(key.to_string(), value);
        }
    }
    if let Some(name) = default_container {
        // `kubectl logs` and `exec` go to the application, not the proxy.
        annotations
            .entry("kubectl.kubernetes.io/default-container".into())
            .or_insert(name);
    }
    Injection { pod, warnings }
}

/// Rewrites HTTP and gRPC probes of application containers to the proxy's ports; returns
/// routes the proxy must serve for them.
fn rewrite_probes(
    containers: &mut [Container],
    warnings: &mut Vec<String>,
) -> (Vec<ProbeRoute>, Vec<GrpcProbeRoute>) {
    let mut routes = Vec::new();
    let mut grpc_routes: Vec<GrpcProbeRoute> = Vec::new();
    for container in containers {
        let ports = container.ports.clone().unwrap_or_default();
        let name = container.name.clone();
        for (kind, probe) in [
            ("livez", &mut container.liveness_probe),
            ("readyz", &mut container.readiness_probe),
            ("startupz", &mut container.startup_probe),
        ] {
            if let Some(grpc) = probe.as_mut().and_then(|p| p.grpc.as_mut()) {
                rewrite_grpc_probe(grpc, &name, kind, &mut grpc_routes, warnings);
                continue;
            }
            let Some(get) = probe.as_mut().and_then(|p| p.http_get.as_mut()) else {
                continue;
            };
            if get.scheme.as_deref() == Some("HTTPS") {
                warnings.push(format!("container {name}: the HTTPS {kind} probe is left as it is; under strict mTLS it needs its port excluded ({})", EXCLUDE_INBOUND_PORTS_ANNOTATION));
                continue;
            }
            let app_port = match &get.port {
                IntOrString::Int(n) => u16::try_from(*n).ok(),
                IntOrString::String(named) => ports
                    .iter()
                    .find(|p| p.name.as_deref() == Some(named.as_str()))
                    .and_then(|p| u16::try_from(p.container_port).ok()),
            };
            let Some(app_port) = app_port else {
                warnings.push(format!("container {name}: the {kind} probe's port {:?} is not one of the container's ports; the probe is left as it is", get.port));
                continue;
            };
            let path = format!("/app-health/{name}/{kind}");
            routes.push(ProbeRoute {
                path: path.clone(),
                app_port,
                app_path: get.path.clone().unwrap_or_else(|| "/".into()),
            });
            get.port = IntOrString::Int(i32::from(PROBE_PORT));
            get.path = Some(path);
            get.host = None;
            get.scheme = Some("HTTP".into());
        }
    }
    (routes, grpc_routes)
}

/// Points a gRPC probe at the sidecar port serving its application port (one per
/// application port probed, from the reserved range).
fn rewrite_grpc_probe(
    grpc: &mut k8s_openapi::api::core::v1::GRPCAction,
    container: &str,
    kind: &str,
    routes: &mut Vec<GrpcProbeRoute>,
    warnings: &mut Vec<String>,
) {
    let Ok(app_port) = u16::try_from(grpc.port) else {
        warnings.push(format!("container {container}: the gRPC {kind} probe's port {} is not a port number; the probe is left as it is", grpc.port));
        return;
    };
    let listen_port = match routes.iter().find(|r| r.app_port == app_port) {
        Some(route) => route.listen_port,
        None => {
            let Some(listen_port) = GRPC_PROBE_PORTS.clone().nth(routes.len()) else {
                warnings.push(format!("container {container}: the gRPC {kind} probe of port {app_port} is left as it is: at most {} application ports can have gRPC probes rewritten", GRPC_PROBE_PORTS.len()));
                return;
            };
            routes.push(GrpcProbeRoute {
                listen_port,
                app_port,
            });
            listen_port
        }
    };
    grpc.port = i32::from(listen_port);
}

fn quantity(v: &str) -> Quantity {
    Quantity(v.to_string())
}

fn value_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn ready_probe(period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(PROXY_READY_PATH.into()),
            port: IntOrString::Int(i32::from(PROBE_PORT)),
            scheme: Some("HTTP".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Default::default()
    }
}

/// Who the proxy's pod is.
struct Identity<'a> {
    namespace: &'a str,
    service_account: &'a str,
    /// The pod's workload as users name it (see `weir_core::owner`).
    workload: &'a str,
}

fn proxy_container(
    config: &MeshConfig,
    o: &Overrides,
    id: Identity,
    probes: Vec<ProbeRoute>,
    grpc_probes: Vec<GrpcProbeRoute>,
) -> Container {
    let Identity {
        namespace,
        service_account,
        workload,
    } = id;
    // The pod's name is not known at admission (generateName), so the bootstrap uses the
    // kubelet's $(VAR) expansion of the container's own env vars.
    let params = BootstrapParams {
        node_id: "$(POD_NAME).$(POD_NAMESPACE)".into(),
        meta: ProxyMeta {
            namespace: namespace.to_string(),
            pod: "$(POD_NAME)".into(),
            service_account: Some(service_account.to_string()),
            capture: Capture::Transparent,
            // Not known before scheduling: the operator takes it from the EndpointSlices.
            zone: None,
            reports: true,
        },
        xds_address: config.xds_address.clone(),
        protocol: XdsProtocol::Delta,
        admin_port: ENVOY_ADMIN_PORT,
        sidecar: Some(SidecarListeners {
            probe_port: PROBE_PORT,
            prometheus_port: PROMETHEUS_PORT,
            probes,
            grpc_probes,
        }),
        // The operator is verified against the mesh root; the proxy proves its pod with the
        // projected token, which Envoy re-reads when it reconnects.
        xds_tls: Some(XdsTlsFiles {
            root_cert: format!("{CA_DIR}/{ROOT_CERT_KEY}"),
            token: format!("{TOKEN_DIR}/{TOKEN_FILE}"),
        }),
        telemetry: ProxyTelemetry {
            access_log: o.access_log,
            tracing_sampling: o.tracing_sampling,
        },
    };
    let bootstrap = bootstrap(&params)
        .map(|b| b.to_string())
        .unwrap_or_else(|err| {
            // The address comes from the mesh configuration, validated at startup; keep going
            // with a bootstrap Envoy will reject loudly rather than failing admission.
            format!("{{\"error\": {:?}}}", err.to_string())
        });
    let concurrency = o.concurrency.unwrap_or(config.concurrency).to_string();
    let log_level = o
        .log_level
        .clone()
        .unwrap_or_else(|| config.log_level.clone());
    let resources = ResourceRequirements {
        requests: Some(BTreeMap::from([
            (
                "cpu".into(),
                quantity(o.cpu.as_deref().unwrap_or(&config.cpu)),
            ),
            (
                "memory".into(),
                quantity(o.memory.as_deref().unwrap_or(&config.memory)),
            ),
        ])),
        limits: Some(BTreeMap::from([
            (
                "cpu".into(),
                quantity(o.cpu_limit.as_deref().unwrap_or(&config.cpu_limit)),
            ),
            (
                "memory".into(),
                quantity(o.memory_limit.as_deref().unwrap_or(&config.memory_limit)),
            ),
        ])),
        ..Default::default()
    };
    let (restart_policy, startup_probe, lifecycle) = if config.native_sidecars {
        (Some("Always".to_string()), Some(ready_probe(1, 600)), None)
    } else {
        // Kubernetes starts the next container only when this postStart hook returns: hold
        // the application until Envoy is ready (needs bash in the proxy image, as the
        // envoyproxy/envoy images have).
        let wait = format!(
            "for i in $(seq 1 600); do (exec 3<>/dev/tcp/127.0.0.1/{PROBE_PORT} && printf 'GET {PROXY_READY_PATH} HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q ' 200 ' <&3) 2>/dev/null && exit 0; sleep 0.1; done; exit 1"
        );
        let hook = LifecycleHandler {
            exec: Some(ExecAction {
                command: Some(vec!["/bin/bash".into(), "-c".into(), wait]),
            }),
            ..Default::default()
        };
        (
            None,
            None,
            Some(Lifecycle {
                post_start: Some(hook),
                ..Default::default()
            }),
        )
    };
    Container {
        name: PROXY_CONTAINER.into(),
        image: Some(config.proxy_image.clone()),
        args: Some(vec![
            "--config-yaml".into(),
            bootstrap,
            "--log-level".into(),
            log_level,
            "--concurrency".into(),
            concurrency,
            "--disable-hot-restart".into(),
            // The access log reaches `kubectl logs` within a second (Envoy's default: 10 s).
            "--file-flush-interval-msec".into(),
            "1000".into(),
        ]),
        env: Some(vec![
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            // What the sidecar's metrics, logs and spans name this pod by.
            value_env(WORKLOAD_ENV, workload),
            value_env(WORKLOAD_NAMESPACE_ENV, namespace),
            value_env(
                OTEL_RESOURCE_ATTRIBUTES_ENV,
                &format!(
                    "service.name={workload},service.namespace={namespace},k8s.namespace.name={namespace}"
                ),
            ),
        ]),
        ports: Some(vec![
            ContainerPort {
                name: Some("weir-probes".into()),
                container_port: i32::from(PROBE_PORT),
                protocol: Some("TCP".into()),
                ..Default::default()
            },
            ContainerPort {
                name: Some(METRICS_PORT_NAME.into()),
                container_port: i32::from(PROMETHEUS_PORT),
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        ]),
        resources: Some(resources),
        restart_policy,
        startup_probe,
        readiness_probe: Some(ready_probe(2, 3)),
        lifecycle,
        security_context: Some(SecurityContext {
            run_as_user: Some(i64::from(PROXY_UID)),
            run_as_group: Some(i64::from(PROXY_UID)),
            run_as_non_root: Some(true),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "weir-token".into(),
                mount_path: TOKEN_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: ROOT_CA_CONFIGMAP.into(),
                mount_path: CA_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
        ]),
        ..Default::default()
    }
}

fn init_container(config: &MeshConfig, o: &Overrides) -> Container {
    let mut args = Vec::new();
    let join = |v: Vec<String>| v.join(",");
    if !o.exclude_inbound_ports.is_empty() {
        args.extend([
            "--exclude-inbound-ports".to_string(),
            join(o.exclude_inbound_ports.iter().map(u16::to_string).collect()),
        ]);
    }
    if !o.exclude_outbound_ports.is_empty() {
        args.extend([
            "--exclude-outbound-ports".to_string(),
            join(
                o.exclude_outbound_ports
                    .iter()
                    .map(u16::to_string)
                    .collect(),
            ),
        ]);
    }
    if !o.exclude_outbound_cidrs.is_empty() {
        args.extend([
            "--exclude-outbound-cidrs".to_string(),
            join(
                o.exclude_outbound_cidrs
                    .iter()
                    .map(|c| c.to_string())
                    .collect(),
            ),
        ]);
    }
    Container {
        name: INIT_CONTAINER.into(),
        image: Some(config.init_image.clone()),
        args: (!args.is_empty()).then_some(args),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), quantity("10m")),
                ("memory".into(), quantity("16Mi")),
            ])),
            limits: Some(BTreeMap::from([
                ("cpu".into(), quantity("100m")),
                ("memory".into(), quantity("64Mi")),
            ])),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            // iptables needs root in the pod's network namespace, and only these two caps.
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn volumes() -> Vec<Volume> {
    vec![
        Volume {
            name: "weir-token".into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(TOKEN_AUDIENCE.into()),
                        expiration_seconds: Some(3600),
                        path: TOKEN_FILE.into(),
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: ROOT_CA_CONFIGMAP.into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: ROOT_CA_CONFIGMAP.into(),
                        // The operator keeps this ConfigMap in meshed namespaces. The proxy
                        // cannot verify the operator without it, so the kubelet holds the
                        // pod until it exists rather than start a proxy that cannot connect.
                        optional: Some(false),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
    ]
}

/// The JSON patch that turns `original` into `injected`.
pub fn patch(original: &Pod, injected: &Pod) -> json_patch::Patch {
    let from = serde_json::to_value(original).expect("a Pod always serializes");
    let to = serde_json::to_value(injected).expect("a Pod always serializes");
    json_patch::diff(&from, &to)
}
