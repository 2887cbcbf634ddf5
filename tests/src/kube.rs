//! A real Kubernetes control plane for tests: etcd, kube-apiserver, kube-controller-manager
//! and kubectl, built from Go modules by `tests/k8s/build.sh` (`make k8s`) into a cache
//! outside the checkout, started on free loopback ports with a temporary directory.
//!
//! ```text
//! Cluster::start: certificates (rcgen: CA, serving, admin client in system:masters,
//!   service-account signing key) -> etcd -> kube-apiserver (RBAC, SA issuer) ->
//!   kube-controller-manager (EndpointSlice, namespace, service account, garbage
//!   collector, Deployment, ReplicaSet controllers) -> admin kubeconfig
//! a reaper process watches the test process and stops everything (and removes the
//! directory) when it is gone, even after a panic or a SIGKILL
//! ```
//!
//! [`Cluster::shared`] gives every test of one test binary the same cluster; each test
//! works in its own namespaces. There is no kubelet: tests create Node objects and patch
//! Pod status (podIP, Ready) themselves.

use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use weir_core::mesh::MESH_NAMESPACE;

use crate::{free_port, scratch_dir, workspace_root};

/// The Kubernetes version `tests/k8s/go.mod` pins.
pub fn k8s_version() -> Result<String> {
    let go_mod = std::fs::read_to_string(workspace_root().join("tests/k8s/go.mod"))?;
    go_mod
        .lines()
        .map(|l| l.trim().trim_start_matches("require").trim())
        .find_map(|l| l.strip_prefix("k8s.io/kubernetes "))
        .map(|v| v.split_whitespace().next().unwrap_or_default().to_string())
        .context("tests/k8s/go.mod requires no k8s.io/kubernetes")
}

/// Where the binaries are: `WEIR_K8S_BIN`, else the default cache for the pinned version.
pub fn bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("WEIR_K8S_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let cache = match std::env::var_os("WEIR_K8S_CACHE") {
        Some(c) => PathBuf::from(c),
        None => PathBuf::from(std::env::var_os("HOME").context("no HOME")?).join(".cache/weir/k8s"),
    };
    Ok(cache.join(k8s_version()?))
}

/// Whether the binaries are built; in CI their absence is a failure, elsewhere a skip
/// that says how to build them.
pub fn can_run(test: &str) -> bool {
    crate::bins::built_binaries(
        test,
        bin_dir(),
        &[
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kubectl",
        ],
        "k8s",
    )
}

/// The test CA: it signs the API server's serving certificate, client certificates and
/// the webhook's serving certificate.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// The CA certificate, PEM.
    pub pem: String,
}

/// A certificate and its key, PEM.
pub struct Issued {
    /// Certificate.
    pub cert: String,
    /// Private key.
    pub key: String,
}

impl TestCa {
    fn new() -> Result<TestCa> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "weir test cluster CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(TestCa {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        })
    }

    /// A serving certificate for `names` (DNS names or IP addresses).
    pub fn serving(&self, names: &[&str]) -> Result<Issued> {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A client certificate for user `cn` in groups `orgs`.
    pub fn client(&self, cn: &str, orgs: &[&str]) -> Result<Issued> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        for org in orgs {
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationName, *org);
        }
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    fn issue(&self, params: rcgen::CertificateParams) -> Result<Issued> {
        let key = rcgen::KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

/// The running processes, restartable.
struct Processes {
    etcd: Child,
    apiserver: Child,
    controllers: Child,
}

/// A running control plane. See the module docs.
pub struct Cluster {
    /// Its temporary directory (certificates, kubeconfigs, etcd's data).
    pub dir: PathBuf,
    /// The binaries' directory.
    pub bin: PathBuf,
    /// `https://127.0.0.1:<port>`.
    pub server: String,
    /// The API server's address.
    pub addr: SocketAddr,
    /// etcd's client URL.
    pub etcd_url: String,
    /// The admin's kubeconfig (system:masters).
    pub admin: PathBuf,
    /// The CA everything is signed by.
    pub ca: TestCa,
    apiserver_args: Vec<String>,
    processes: Mutex<Processes>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("server", &self.server)
            .finish()
    }
}

static SHARED: OnceLock<Cluster> = OnceLock::new();

impl Cluster {
    /// The cluster of this test binary, started on first use.
    pub fn shared() -> &'static Cluster {
        SHARED.get_or_init(|| Cluster::start().expect("cannot start the test cluster"))
    }

    /// Starts etcd, kube-apiserver and kube-controller-manager; returns once the API
    /// server is ready and the default ServiceAccount exists.
    pub fn start() -> Result<Cluster> {
        let started = Instant::now();
        let bin = bin_dir()?;
        let dir = scratch_dir("k8s");
        let ca = TestCa::new()?;
        let write = |name: &str, text: &str| -> Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, text)?;
            Ok(path)
        };
        let ca_file = write("ca.crt", &ca.pem)?;
        let serving = ca.serving(&[
            "127.0.0.1",
            "localhost",
            "10.96.0.1",
            "kubernetes.default.svc",
        ])?;
        let serving_cert = write("serving.crt", &serving.cert)?;
        let serving_key = write("serving.key", &serving.key)?;
        let admin = ca.client("weir-admin", &["system:masters"])?;
        let sa_key = rcgen::KeyPair::generate()?;
        let sa_private = write("sa.key", &sa_key.serialize_pem())?;
        let sa_public = write("sa.pub", &sa_key.public_key_pem())?;

        let [etcd_client, etcd_peer, api_port] = distinct_ports();
        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        let path = |p: &Path| p.to_string_lossy().into_owned();
        let etcd_args = vec![
            "--name=weir-test".to_string(),
            format!("--data-dir={}", path(&dir.join("etcd"))),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"),
            format!("--initial-cluster=weir-test=http://127.0.0.1:{etcd_peer}"),
            "--initial-cluster-state=new".into(),
            "--unsafe-no-fsync".into(),
            "--log-level=warn".into(),
        ];
        let apiserver_args = vec![
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={api_port}"),
            "--advertise-address=127.0.0.1".into(),
            format!("--tls-cert-file={}", path(&serving_cert)),
            format!("--tls-private-key-file={}", path(&serving_key)),
            format!("--client-ca-file={}", path(&ca_file)),
            "--authorization-mode=RBAC".into(),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--service-account-key-file={}", path(&sa_public)),
            format!("--service-account-signing-key-file={}", path(&sa_private)),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            "--endpoint-reconciler-type=none".into(),
        ];
        let server = format!("https://127.0.0.1:{api_port}");
        let admin_path = dir.join("admin.kubeconfig");
        write_kubeconfig(&admin_path, &server, &ca.pem, Credentials::Cert(&admin))?;

        let log = |name: &str| -> Result<Stdio> {
            Ok(Stdio::from(std::fs::File::create(
                dir.join(format!("{name}.log")),
            )?))
        };
        let etcd = spawn(&bin.join("etcd"), &etcd_args, log("etcd")?)?;
        wait_etcd(&etcd_url, &dir)?;
        let apiserver = spawn(
            &bin.join("kube-apiserver"),
            &apiserver_args,
            log("kube-apiserver")?,
        )?;
        let controllers_args = vec![
            format!("--kubeconfig={}", path(&admin_path)),
            "--controllers=endpointslice-controller,namespace-controller,serviceaccount-controller,garbage-collector-controller,deployment-controller,replicaset-controller".into(),
            "--leader-elect=false".into(),
            "--secure-port=0".into(),
            format!("--root-ca-file={}", path(&ca_file)),
        ];
        let cluster = Cluster {
            dir: dir.clone(),
            bin: bin.clone(),
            server,
            addr: format!("127.0.0.1:{api_port}").parse()?,
            etcd_url,
            admin: admin_path,
            ca,
            apiserver_args,
            processes: Mutex::new(Processes {
                etcd,
                apiserver,
                controllers: spawn(
                    &bin.join("kube-controller-manager"),
                    &controllers_args,
                    log("kube-controller-manager")?,
                )?,
            }),
        };
        cluster.write_pids()?;
        cluster.start_reaper()?;
        cluster.wait_ready()?;
        cluster.poll("the default ServiceAccount", || {
            cluster
                .kubectl(&["get", "serviceaccount", "default", "-n", "default"])
                .is_ok()
                .then_some(())
        })?;
        eprintln!(
            "test cluster {} ready in {:.1} s ({})",
            cluster.server,
            started.elapsed().as_secs_f64(),
            cluster.dir.display()
        );
        Ok(cluster)
    }

    fn write_pids(&self) -> Result<()> {
        let p = self.processes.lock().unwrap_or_else(|e| e.into_inner());
        let pids = [&p.controllers, &p.apiserver, &p.etcd]
            .iter()
            .map(|c| c.id().to_string())
            .collect::<Vec<_>>()
            .join(" ");
        std::fs::write(self.dir.join("pids"), pids)?;
        Ok(())
    }

    /// A shell that outlives nothing: when this test process is gone, it stops the
    /// cluster (TERM, then KILL) and removes its directory (kept with WEIR_K8S_KEEP=1).
    fn start_reaper(&self) -> Result<()> {
        let dir = self.dir.to_string_lossy().into_owned();
        let remove = if std::env::var_os("WEIR_K8S_KEEP").is_some() {
            String::new()
        } else {
            format!("rm -rf '{dir}'")
        };
        let script = format!(
            "while kill -0 {me} 2>/dev/null; do sleep 0.5; done; \
             kill $(cat '{dir}/pids') 2>/dev/null; sleep 3; kill -9 $(cat '{dir}/pids') 2>/dev/null; \
             {remove}",
            me = std::process::id()
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the reaper")?;
        Ok(())
    }

    fn wait_ready(&self) -> Result<()> {
        self.poll("kube-apiserver /readyz", || {
            self.kubectl(&["get", "--raw", "/readyz"])
                .ok()
                .filter(|r| r.trim() == "ok")
                .map(|_| ())
        })
    }

    /// Polls `check` for up to a minute.
    pub fn poll<T>(&self, what: &str, mut check: impl FnMut() -> Option<T>) -> Result<T> {
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(v) = check() {
                return Ok(v);
            }
            if Instant::now() > end {
                bail!(
                    "timed out waiting for {what}; logs in {} (kept with WEIR_K8S_KEEP=1):\n{}",
                    self.dir.display(),
                    self.log_tails()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last lines of every process's log.
    pub fn log_tails(&self) -> String {
        ["etcd", "kube-apiserver", "kube-controller-manager"]
            .iter()
            .map(|name| {
                let text = std::fs::read_to_string(self.dir.join(format!("{name}.log")))
                    .unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                format!(
                    "--- {name}.log\n{}",
                    lines[lines.len().saturating_sub(8)..].join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Stops kube-apiserver and starts it again on the same port and etcd (what a control
    /// plane upgrade does to every watch); returns once it is ready.
    pub fn restart_apiserver(&self) -> Result<()> {
        {
            let mut p = self.processes.lock().unwrap_or_else(|e| e.into_inner());
            // TERM, then KILL: a graceful shutdown waits for in-flight requests for up to
            // the request timeout (60 s), and the controller manager's watches are in flight.
            let _ = Command::new("kill")
                .arg(p.apiserver.id().to_string())
                .status();
            let end = Instant::now() + Duration::from_secs(3);
            while p.apiserver.try_wait()?.is_none() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = p.apiserver.kill();
            let _ = p.apiserver.wait();
            let log = std::fs::OpenOptions::new()
                .append(true)
                .open(self.dir.join("kube-apiserver.log"))?;
            p.apiserver = spawn(
                &self.bin.join("kube-apiserver"),
                &self.apiserver_args,
                Stdio::from(log),
            )?;
        }
        self.write_pids()?;
        self.wait_ready()
    }

    /// Compacts etcd's history up to now: a watch resuming from before gets 410 Gone.
    pub fn compact_etcd(&self) -> Result<()> {
        let revision = |body: &str| -> Option<String> {
            let v: serde_json::Value = serde_json::from_str(body).ok()?;
            v["header"]["revision"].as_str().map(str::to_string)
        };
        let status = curl_post(
            &format!("{}/v3/kv/range", self.etcd_url),
            r#"{"key":"AA=="}"#,
        )?;
        let rev = revision(&status).with_context(|| format!("etcd answered {status}"))?;
        curl_post(
            &format!("{}/v3/kv/compaction", self.etcd_url),
            &format!(r#"{{"revision":"{rev}","physical":true}}"#),
        )?;
        Ok(())
    }

    /// kubectl as the admin; stdout, or the error with stderr.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.kubectl_with(&self.admin, args, None)
    }

    /// kubectl with `input` on stdin.
    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> Result<String> {
        self.kubectl_with(&self.admin, args, Some(input))
    }

    /// kubectl with another kubeconfig.
    pub fn kubectl_with(
        &self,
        kubeconfig: &Path,
        args: &[&str],
        input: Option<&str>,
    ) -> Result<String> {
        weir_e2e::Kubectl {
            program: self.bin.join("kubectl"),
            kubeconfig: Some(kubeconfig.to_path_buf()),
        }
        .run_stdin(args, input)
    }

    /// kubectl output parsed as JSON (`-o json` is added).
    pub fn kubectl_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        Ok(serde_json::from_str(&self.kubectl(&all)?)?)
    }

    /// `kubectl apply` of one object.
    pub fn apply(&self, object: &serde_json::Value) -> Result<()> {
        self.kubectl_stdin(&["apply", "-f", "-"], &object.to_string())?;
        Ok(())
    }

    /// The e2e scenarios' kubectl, as the cluster's admin.
    pub fn kubectl_client(&self) -> weir_e2e::Kubectl {
        weir_e2e::Kubectl {
            program: self.bin.join("kubectl"),
            kubeconfig: Some(self.admin.clone()),
        }
    }

    /// A token for a ServiceAccount from the TokenRequest API.
    pub fn token(
        &self,
        namespace: &str,
        service_account: &str,
        audience: Option<&str>,
    ) -> Result<String> {
        let mut args = vec![
            "create",
            "token",
            service_account,
            "-n",
            namespace,
            "--duration",
            "1h",
        ];
        if let Some(audience) = audience {
            args.extend(["--audience", audience]);
        }
        Ok(self.kubectl(&args)?.trim().to_string())
    }

    /// A token for a ServiceAccount bound to a Pod (as the kubelet projects one), for
    /// `audience`, from the TokenRequest API.
    pub fn pod_token(
        &self,
        namespace: &str,
        service_account: &str,
        pod: &str,
        audience: &str,
    ) -> Result<String> {
        Ok(self
            .kubectl(&[
                "create",
                "token",
                service_account,
                "-n",
                namespace,
                "--audience",
                audience,
                "--bound-object-kind",
                "Pod",
                "--bound-object-name",
                pod,
                "--duration",
                "1h",
            ])?
            .trim()
            .to_string())
    }

    /// A pod-bound service account token signed with the API server's own key, as
    /// TokenRequest makes them, but expired `ago` ago: the one token the API cannot hand
    /// out on request.
    pub fn expired_pod_token(
        &self,
        namespace: &str,
        service_account: &str,
        pod: &str,
        audience: &str,
        ago: Duration,
    ) -> Result<String> {
        use base64::Engine;
        use rcgen::SigningKey;
        let uid = |kind: &str, name: &str| -> Result<String> {
            let object = self.kubectl_json(&["get", kind, name, "-n", namespace])?;
            object["metadata"]["uid"]
                .as_str()
                .map(str::to_string)
                .context("no uid")
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let exp = now - ago.as_secs();
        let claims = serde_json::json!({
            "aud": [audience],
            "exp": exp,
            "iat": exp - 3600,
            "nbf": exp - 3600,
            "iss": "https://kubernetes.default.svc",
            "sub": format!("system:serviceaccount:{namespace}:{service_account}"),
            "kubernetes.io": {
                "namespace": namespace,
                "pod": {"name": pod, "uid": uid("pod", pod)?},
                "serviceaccount": {"name": service_account, "uid": uid("serviceaccount", service_account)?},
            },
        });
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let header = b64(br#"{"alg":"ES256","typ":"JWT"}"#);
        let payload = b64(claims.to_string().as_bytes());
        let signing_input = format!("{header}.{payload}");
        let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(self.dir.join("sa.key"))?)?;
        let der = key.sign(signing_input.as_bytes())?;
        Ok(format!("{signing_input}.{}", b64(&ecdsa_der_to_raw(&der)?)))
    }

    /// A kubeconfig that authenticates with `token`, written under the cluster's
    /// directory, pointing at `server` (the API server, or a proxy in front of it).
    pub fn token_kubeconfig(
        &self,
        name: &str,
        token: &str,
        server: Option<&str>,
    ) -> Result<PathBuf> {
        let path = self.dir.join(format!("{name}.kubeconfig"));
        write_kubeconfig(
            &path,
            server.unwrap_or(&self.server),
            &self.ca.pem,
            Credentials::Token(token),
        )?;
        Ok(path)
    }

    /// A kube client as the admin.
    pub async fn client(&self) -> Result<kube::Client> {
        client_from(&self.admin).await
    }

    /// A Node object, as a kubelet would register it (the EndpointSlice controller
    /// skips pods whose node does not exist).
    pub fn ensure_node(&self, name: &str, zone: &str) -> Result<()> {
        let node = serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone, "kubernetes.io/hostname": name}},
        });
        self.kubectl_stdin(&["apply", "-f", "-"], &node.to_string())?;
        Ok(())
    }

    /// Marks a Pod as running and ready at `ip`, as its kubelet would.
    pub fn set_pod_ready(&self, namespace: &str, pod: &str, ip: &str) -> Result<()> {
        let status = serde_json::json!({"status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [
                {"type": "Ready", "status": "True"},
                {"type": "ContainersReady", "status": "True"},
            ],
        }});
        self.kubectl(&[
            "patch",
            "pod",
            pod,
            "-n",
            namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ])?;
        Ok(())
    }
}

/// An ECDSA P-256 signature from DER (SEQUENCE of two INTEGERs) to JWS's r || s.
fn ecdsa_der_to_raw(der: &[u8]) -> Result<Vec<u8>> {
    let mut raw = Vec::with_capacity(64);
    let mut rest = der.get(2..).context("short signature")?; // SEQUENCE, length
    for _ in 0..2 {
        let len = *rest.get(1).context("short integer")? as usize;
        let int = rest.get(2..2 + len).context("short integer")?;
        let int = &int[int.len().saturating_sub(32)..];
        raw.extend(std::iter::repeat_n(0, 32 - int.len()));
        raw.extend_from_slice(int);
        rest = &rest[2 + len..];
    }
    Ok(raw)
}

/// One operator in this process at a time (they share the Lease and write the same
/// statuses); held across awaits.
pub async fn operator_slot() -> tokio::sync::MutexGuard<'static, ()> {
    static OPERATOR: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    OPERATOR.lock().await
}

/// The shared cluster with the CRDs and config/ installed (once per test binary).
pub fn installed() -> &'static Cluster {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    let cluster = Cluster::shared();
    INSTALL.call_once(|| {
        let k = cluster.kubectl_client();
        weir_e2e::install_crds(&k).expect("kubectl apply -f crds/");
        weir_e2e::install_config(&k).expect("kubectl apply -k config/");
    });
    cluster
}

/// A control plane in this process on the Kubernetes API of `client`, with [`test_lease`]
/// leases as `identity`.
pub async fn start_operator_on(
    client: kube::Client,
    identity: &str,
    options: weir_operator::Options,
) -> Result<weir_operator::ControlPlane> {
    let source = weir_operator::Source::Kube(weir_operator::k8s::KubeOptions {
        client,
        lease: test_lease(identity),
    });
    Ok(weir_operator::ControlPlane::start(source, options).await?)
}

/// A control plane in this process, signed in as ServiceAccount `sa` of the mesh namespace
/// (a TokenRequest token; `server` overrides the API server address), loopback addresses.
pub async fn start_operator_as(
    cluster: &Cluster,
    sa: &str,
    identity: &str,
    server: Option<&str>,
) -> Result<weir_operator::ControlPlane> {
    let token = cluster.token(MESH_NAMESPACE, sa, None)?;
    let kubeconfig =
        cluster.token_kubeconfig(&format!("{sa}-{}", std::process::id()), &token, server)?;
    start_operator_on(
        client_from(&kubeconfig).await?,
        identity,
        loopback_options(),
    )
    .await
}

/// A real Envoy for pod `namespace/pod` (ServiceAccount `sa`) of the cluster, as the
/// injector bootstraps it: ADS over TLS to `xds` verified against the mesh `root`, the
/// pod's TokenRequest token (audience `weir`) from a file, explicit capture.
pub async fn start_pod_envoy(
    cluster: &Cluster,
    xds: SocketAddr,
    root: &str,
    (namespace, sa, pod): (&str, &str, &str),
) -> Result<crate::Envoy> {
    use weir_core::mesh::ROOT_CERT_KEY;
    let files = scratch_dir(&format!("envoy-{pod}"));
    std::fs::write(files.join(ROOT_CERT_KEY), root)?;
    std::fs::write(
        files.join("token"),
        cluster.pod_token(namespace, sa, pod, weir_core::mesh::TOKEN_AUDIENCE)?,
    )?;
    let params = weir_core::bootstrap::BootstrapParams {
        node_id: format!("{pod}.{namespace}"),
        meta: weir_core::bootstrap::ProxyMeta {
            namespace: namespace.into(),
            pod: pod.into(),
            service_account: None,
            capture: weir_core::Capture::Explicit { port: free_port() },
            zone: None,
            reports: true,
        },
        xds_address: xds.to_string(),
        protocol: weir_core::bootstrap::XdsProtocol::Delta,
        admin_port: free_port(),
        sidecar: None,
        xds_tls: Some(weir_core::bootstrap::XdsTlsFiles {
            root_cert: files.join(ROOT_CERT_KEY).to_string_lossy().into_owned(),
            token: files.join("token").to_string_lossy().into_owned(),
        }),
        telemetry: Default::default(),
    };
    crate::Envoy::start_params(&params).await
}

/// Waits (bounded) until `plane` holds the leader Lease.
pub async fn wait_leading(plane: &weir_operator::ControlPlane, deadline: Duration) -> Result<()> {
    let mut leading = plane.leading.clone();
    tokio::time::timeout(deadline, leading.wait_for(|l| *l))
        .await
        .map_err(|_| anyhow::anyhow!("the operator never became leader"))??;
    Ok(())
}

/// Options with both addresses on 127.0.0.1, ports chosen by the system.
pub fn loopback_options() -> weir_operator::Options {
    let any = "127.0.0.1:0".parse().expect("an address");
    weir_operator::Options::new(any, any)
}

/// Lease settings for tests: 2 s leases, so takeovers happen within the test's patience.
pub fn test_lease(identity: &str) -> weir_operator::k8s::leader::LeaseSettings {
    weir_operator::k8s::leader::LeaseSettings {
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1500),
        retry_period: Duration::from_millis(200),
        ..weir_operator::k8s::leader::LeaseSettings::new(MESH_NAMESPACE, identity)
    }
}

/// A `weir-operator run` process.
pub struct OperatorProcess {
    /// The process (killed on drop).
    pub child: tokio::process::Child,
    /// Its admin address.
    pub admin: SocketAddr,
    /// Its xDS address.
    pub xds: SocketAddr,
}

/// Starts `weir-operator run` as `identity` with `kubeconfig` and a 2 s Lease; its log
/// goes to `log_dir/operator-<identity>.log`.
pub fn spawn_operator(
    kubeconfig: &Path,
    identity: &str,
    log_dir: &Path,
) -> Result<OperatorProcess> {
    let bin = crate::workspace_binary("weir-operator")?;
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    let xds: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    let log = std::fs::File::create(log_dir.join(format!("operator-{identity}.log")))?;
    let child = tokio::process::Command::new(bin)
        .args(["run", "--namespace", MESH_NAMESPACE, "--identity", identity])
        .args([
            "--lease-duration",
            "2s",
            "--renew-deadline",
            "1500ms",
            "--retry-period",
            "200ms",
        ])
        .args([
            "--admin-addr",
            &admin.to_string(),
            "--xds-addr",
            &xds.to_string(),
        ])
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?;
    Ok(OperatorProcess { child, admin, xds })
}

/// A kube client from a kubeconfig file.
pub async fn client_from(kubeconfig: &Path) -> Result<kube::Client> {
    let config = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(config, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

enum Credentials<'a> {
    Cert(&'a Issued),
    Token(&'a str),
}

fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca_pem: &str,
    credentials: Credentials,
) -> Result<()> {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let user = match credentials {
        Credentials::Cert(issued) => serde_json::json!({
            "client-certificate-data": b64(&issued.cert),
            "client-key-data": b64(&issued.key),
        }),
        Credentials::Token(token) => serde_json::json!({"token": token}),
    };
    let config = serde_json::json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)}}],
        "users": [{"name": "test", "user": user}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
        "current-context": "test",
    });
    std::fs::write(path, serde_saphyr::to_string(&config)?)?;
    Ok(())
}

/// Free loopback ports, all different (two lookups can return the same free port).
fn distinct_ports<const N: usize>() -> [u16; N] {
    let mut ports = [0; N];
    for i in 0..N {
        ports[i] = loop {
            let port = free_port();
            if !ports[..i].contains(&port) {
                break port;
            }
        };
    }
    ports
}

fn spawn(bin: &Path, args: &[String], log: Stdio) -> Result<Child> {
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

/// Waits for etcd's /health (the API server gives up on etcd after 20 s).
fn wait_etcd(url: &str, dir: &Path) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new("curl")
            .args(["-sS", "-m", "1", &format!("{url}/health")])
            .output()
            .context("running curl")?;
        if String::from_utf8_lossy(&out.stdout).contains("\"health\":\"true\"") {
            return Ok(());
        }
        if Instant::now() > end {
            let log = std::fs::read_to_string(dir.join("etcd.log")).unwrap_or_default();
            bail!("etcd did not become healthy at {url}:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn curl_post(url: &str, body: &str) -> Result<String> {
    let out = Command::new("curl")
        .args(["-sS", "-X", "POST", url, "-d", body])
        .output()
        .context("running curl")?;
    if !out.status.success() {
        bail!("POST {url}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A TCP proxy in front of the API server that a test can cut (every connection closed,
/// new ones refused) and restore: the operator loses the API server while the test keeps
/// changing the cluster through the admin's direct connection.
pub struct CuttableProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    generation: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl CuttableProxy {
    /// A proxy to `target` on a free loopback port.
    pub async fn start(target: SocketAddr) -> Result<CuttableProxy> {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let generation = std::sync::Arc::new(tokio::sync::watch::channel(0u64).0);
        let (task_cut, task_generation) = (cut.clone(), generation.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut downstream, _)) = listener.accept().await {
                if task_cut.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let mut cuts = task_generation.subscribe();
                tokio::spawn(async move {
                    let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut downstream, &mut upstream) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Ok(CuttableProxy {
            addr,
            cut,
            generation,
            task,
        })
    }

    /// Closes every connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Adds `ips` (as /32) to the loopback interface, so that backends can listen on addresses
/// the API server accepts as pod IPs (endpoints may not be in 127.0.0.0/8). Needs root:
/// returns false after saying why (in CI, fails).
pub fn local_pod_ips(test: &str, ips: &[&str]) -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test} cannot run in CI: not root"
        );
        eprintln!("SKIPPED {test}: adding pod IPs to lo needs root");
        return false;
    }
    for ip in ips {
        let out = Command::new("ip")
            .args(["addr", "add", &format!("{ip}/32"), "dev", "lo"])
            .output()
            .expect("run ip");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || err.contains("File exists") || err.contains("already assigned"),
            "ip addr add {ip}: {err}"
        );
    }
    true
}

/// Waits until the clock, in whole seconds as the API server writes timestamps, has moved
/// past `stamp` (so the next object created is strictly younger).
pub async fn next_second_after(stamp: &str) {
    loop {
        let now = k8s_openapi::jiff::Timestamp::now().as_second();
        let now = k8s_openapi::jiff::Timestamp::from_second(now)
            .unwrap_or_default()
            .to_string();
        if now.as_str() > stamp {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
