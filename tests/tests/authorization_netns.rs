//! Authorization (TrafficPolicy `spec.authorization`, the MeshIdentity default and its
//! namespace and pod overrides), enforced by the server's sidecar, seen from real callers:
//! injected pods in network namespaces of their own (`shop/web`, `shop/admin`,
//! `other/robot`), real Envoys from the injected bootstraps, the real `weir-operator local`
//! over a directory whose files the tests rewrite, and one server workload `backend/api-0`
//! behind Service `backend/api` with four ports:
//!
//! | Service port        | container | application                                     |
//! |---------------------|-----------|-------------------------------------------------|
//! | `http` 8080         | 8080      | HTTP/1.1 and h2c, answers `api <version>`       |
//! | `grpc` 50051        | 50051     | gRPC `weir.test.Echo/{Say,Other}`               |
//! | `tcp-echo` 7000     | 7001      | line echo: `api: <line>`                        |
//! | `tcp-greet` 7100    | 7100      | server-first: writes a greeting on accept       |
//!
//! What a denial looks like: HTTP/1.1 and HTTP/2 `403 RBAC: access denied`; gRPC status 7
//! (PERMISSION_DENIED); TCP the connection closed with not one byte read, the server-first
//! greeting included. Each test sets up one mesh and runs its steps by rewriting files,
//! polling until every case of a step shows (then checking them all once more); a failed
//! step is recorded and the test goes on, failing at the end with every failed step.
//!
//! The policy also sets `connectionPool.maxRequestsPerConnection: 1`, so that the callers'
//! proxies open a connection to the server per request and each step tests what the
//! server's current configuration decides. That a policy edit also holds for the next
//! request over connections the callers' proxies keep open is tested on its own, in (5).
//!
//! (1) allow rules by service account, namespace, identity, path and method, headers, gRPC
//!     method and port; an allow rule with HTTP conditions allows nothing on a TCP port;
//!     allow rules without `defaultDeny` leave the rest to the workload default; the
//!     server's sidecar decides even for a caller that presents a mesh certificate itself,
//!     without a sidecar;
//! (2) deny wins over allow; a deny rule with HTTP conditions closes TCP connections;
//! (3) a plaintext caller of a PERMISSIVE server matches no identity condition of an allow
//!     rule, is denied by deny rules that name identities or namespaces, and is allowed by
//!     `unauthenticated: true` (which then allows only it; with `paths`, only there);
//! (4) workload defaults: MeshIdentity `AllowAuthenticated` and `Deny`, overridden by the
//!     namespace label, itself overridden by the pod annotation;
//! (5) Audit denies nothing (counted as shadow denials by the server's sidecar); switched
//!     to Enforce in the same file, the next requests are denied, also over the connections
//!     the callers' proxies opened under Audit.

use std::cell::RefCell;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};
use weir_core::identity::{CertificateAuthority, SpiffeId};
use weir_core::mesh::{DEFAULT_TRUST_DOMAIN, ENVOY_ADMIN_PORT, MTLS_MODE_KEY};
use weir_core::testing::mk_meshed_pod;
use weir_tests::netns::*;
use weir_tests::{
    named_port_slices, scratch_dir, service_with_ports, to_yaml, workspace_binary, write_file,
};

const API_IP: &str = "10.96.1.10";
const API_HOST: &str = "api.backend.svc.cluster.local";
const API_NAMES: &str = "api.backend.svc.cluster.local api.backend.svc";
/// The label (namespace) and annotation (pod) that override the mesh's default.
const DEFAULT_AUTHZ: &str = "weir.dev/default-authorization";
const GREETING: &str = "greeting-from-api";
const ECHO_LINE: &str = "authz-probe";
const DENIED_BODY: &str = "403 RBAC: access denied";
/// How long one step may take to show: xDS to every sidecar, listeners replaced.
const STEP_DEADLINE: Duration = Duration::from_secs(30);

/// The callers' HTTP/1.1 and TCP client, run by the system Python inside a namespace.
///
/// `http METHOD URL [NAME: VALUE]...` prints `<status> <first line of the body>`;
/// `tcp HOST PORT LINE` sends LINE and reads one line, `first HOST PORT` sends nothing and
/// reads one line (a server-first protocol): `OK <line>`, `CLOSED <bytes read> [<bytes>]`
/// when the connection ended (FIN or reset) first, `TIMEOUT <bytes read>` when it stayed
/// open and silent. Errors before a connection print `ERR <why>`.
const CLIENT: &str = r#"
import http.client, socket, sys, urllib.parse

def http_call(method, url, headers):
    u = urllib.parse.urlsplit(url)
    path = (u.path or "/") + ("?" + u.query if u.query else "")
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=5)
    try:
        hdrs = dict((h.split(":", 1)[0].strip(), h.split(":", 1)[1].strip()) for h in headers)
        body = b"" if method in ("POST", "PUT", "PATCH") else None
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        lines = resp.read().decode(errors="replace").splitlines()
        print(resp.status, lines[0] if lines else "")
    except Exception as err:
        print(f"ERR {type(err).__name__}: {err}")
    finally:
        conn.close()

def read_line(sock):
    sock.settimeout(3)
    data = b""
    try:
        while b"\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                return f"CLOSED {len(data)} {data!r}" if data else "CLOSED 0"
            data += chunk
    except socket.timeout:
        return f"TIMEOUT {len(data)} {data!r}"
    except OSError:
        return f"CLOSED {len(data)} {data!r}" if data else "CLOSED 0"
    return "OK " + data.decode(errors="replace").strip()

def tcp(host, port, line):
    try:
        sock = socket.create_connection((host, int(port)), timeout=5)
    except OSError as err:
        print(f"ERR {err}")
        return
    with sock:
        if line is not None:
            try:
                sock.sendall(line.encode() + b"\n")
            except OSError:
                pass
        print(read_line(sock))

if __name__ == "__main__":
    if sys.argv[1] == "http":
        http_call(sys.argv[2], sys.argv[3], sys.argv[4:])
    elif sys.argv[1] == "tcp":
        tcp(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        tcp(sys.argv[2], sys.argv[3], None)
"#;

/// One request or connection a caller makes.
#[derive(Debug, Clone, Copy)]
enum Probe {
    /// HTTP/1.1: method, path (and query), an optional header `Name: value`.
    Http(&'static str, &'static str, Option<&'static str>),
    /// HTTP/2 prior knowledge, `GET /`.
    H2c,
    /// A unary call of `weir.test.Echo/<method>`.
    Grpc(&'static str),
    /// A line to the echo port.
    Echo,
    /// A connection to the server-first port, sending nothing.
    Greet,
}

/// `GET path`.
const fn get(path: &'static str) -> Probe {
    Probe::Http("GET", path, None)
}

/// `GET path` with one header.
const fn get_with(path: &'static str, header: &'static str) -> Probe {
    Probe::Http("GET", path, Some(header))
}

/// What a case expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// The application answered.
    Allow,
    /// The server's sidecar denied: 403 / PERMISSION_DENIED / closed before any byte.
    Deny,
    /// HTTP only: refused by the mesh one way or another (a 4xx), never served.
    NotServed,
}

impl Want {
    fn accepts(self, probe: Probe, seen: &str) -> bool {
        match (self, probe) {
            (Want::Allow, Probe::Http(..) | Probe::H2c) => seen.starts_with("200 api "),
            (Want::Deny, Probe::Http(..) | Probe::H2c) => seen == DENIED_BODY,
            (Want::Allow, Probe::Grpc(method)) => seen == format!("api {method}"),
            (Want::Deny, Probe::Grpc(_)) => seen == "STATUS PermissionDenied",
            (Want::Allow, Probe::Echo) => seen == format!("OK api: {ECHO_LINE}"),
            (Want::Allow, Probe::Greet) => seen == format!("OK {GREETING}"),
            (Want::Deny, Probe::Echo | Probe::Greet) => seen == "CLOSED 0",
            (Want::NotServed, _) => seen
                .split(' ')
                .next()
                .and_then(|s| s.parse::<u16>().ok())
                .is_some_and(|s| (400..500).contains(&s)),
        }
    }
}

/// Someone who calls the server: a meshed pod (by Service name and ClusterIP, through its
/// sidecar) or a plaintext client outside the mesh (by pod IP and container port).
#[derive(Debug, Clone, Copy)]
struct Caller {
    name: &'static str,
    side: Side,
    meshed: bool,
}

/// One expectation of a step.
struct Case(Caller, Probe, Want);

/// Cases for every probe of a caller with one expectation.
fn all(caller: Caller, probes: &[Probe], want: Want) -> Vec<Case> {
    probes.iter().map(|p| Case(caller, *p, want)).collect()
}

/// Every protocol the server speaks.
const EVERY: [Probe; 5] = [
    get("/"),
    Probe::H2c,
    Probe::Grpc("Say"),
    Probe::Echo,
    Probe::Greet,
];

/// A meshed client pod: namespace, name, service account.
type Client = (&'static str, &'static str, &'static str);

/// One mesh: the operator on `dir`, the server pod in a host of its own, client pods.
struct Mesh {
    net: Net,
    dir: PathBuf,
    server: Side,
    server_ip: String,
    ca_dir: PathBuf,
    script: PathBuf,
    testapp: String,
    failures: RefCell<Vec<String>>,
}

impl Mesh {
    /// Starts the operator, the server (pod annotations `server_annotations`) and one
    /// injected pod per client (the first in the pod namespace, the others in hosts);
    /// returns the mesh and the callers, in the order given.
    fn start(
        label: &str,
        clients: &[Client],
        server_annotations: &[(&str, &str)],
    ) -> (Mesh, Vec<Caller>) {
        let mut net = Net::new(label);
        let server = net.add_host();
        let sides: Vec<Side> = (0..clients.len())
            .map(|i| if i == 0 { Side::Pod } else { net.add_host() })
            .collect();
        let (dir, ca_dir) = (
            scratch_dir(&format!("{label}-mesh")),
            scratch_dir(&format!("{label}-ca")),
        );
        let script = scratch_dir(&format!("{label}-client")).join("client.py");
        std::fs::write(&script, CLIENT).unwrap();
        let mut mesh = Mesh {
            server_ip: net.ip(server),
            net,
            dir,
            server,
            ca_dir,
            script,
            testapp: workspace_binary("weir-testapp")
                .unwrap()
                .to_string_lossy()
                .into_owned(),
            failures: RefCell::default(),
        };
        mesh.write_static(clients);
        mesh.write_server(server_annotations);
        mesh.no_policy();
        let net = &mut mesh.net;
        net.start_operator(&mesh.dir, &mesh.ca_dir, &[]);
        for (kind, port) in [("http", "8080"), ("grpc", "50051"), ("tcp", "7001")] {
            net.serve_app(server, &[kind, "api", &format!("0.0.0.0:{port}")]);
        }
        net.serve(server, 7100, GREETING);
        net.start_sidecar(server, &pod("backend", "api-0", "api"), &mesh.ca_dir);
        let mut callers = Vec::new();
        for ((ns, name, sa), side) in clients.iter().zip(sides) {
            net.start_sidecar(side, &pod(ns, name, sa), &mesh.ca_dir);
            net.hosts(side, &[(API_IP, API_NAMES)]);
            callers.push(Caller {
                name,
                side,
                meshed: true,
            });
        }
        (mesh, callers)
    }

    /// Service backend/api, its slices, the client pods and the three namespaces.
    fn write_static(&self, clients: &[Client]) {
        let svc = service_with_ports(
            "backend",
            "api",
            API_IP,
            &[
                ("http", 8080, None),
                ("grpc", 50051, Some("grpc")),
                ("tcp-echo", 7000, None),
                ("tcp-greet", 7100, None),
            ],
        );
        let slices = named_port_slices(
            "backend",
            "api",
            "api-0",
            &self.server_ip,
            &[
                ("http", 8080),
                ("grpc", 50051),
                ("tcp-echo", 7001),
                ("tcp-greet", 7100),
            ],
        );
        let pods: Vec<_> = clients
            .iter()
            .map(|(ns, name, sa)| mk_meshed_pod(ns, name, sa, &[("app", name)]))
            .collect();
        write_file(&self.dir, "api.yaml", &to_yaml(&[svc])).unwrap();
        write_file(&self.dir, "api-slices.yaml", &to_yaml(&slices)).unwrap();
        write_file(&self.dir, "clients.yaml", &to_yaml(&pods)).unwrap();
        for ns in ["backend", "shop", "other"] {
            self.namespace(ns, None);
        }
    }

    /// Writes the server pod with `annotations`.
    fn write_server(&self, annotations: &[(&str, &str)]) {
        let mut server = mk_meshed_pod("backend", "api-0", "api", &[("app", "api")]);
        let meta = server
            .metadata
            .annotations
            .get_or_insert_with(Default::default);
        for (k, v) in annotations {
            meta.insert(k.to_string(), v.to_string());
        }
        write_file(&self.dir, "api-0.yaml", &to_yaml(&[server])).unwrap();
    }

    /// Writes Namespace `name`, with `weir.dev/default-authorization: <default>` when given.
    fn namespace(&self, name: &str, default: Option<&str>) {
        let labels = default
            .map(|d| format!("\n  labels: {{{DEFAULT_AUTHZ}: {d}}}"))
            .unwrap_or_default();
        write_file(
            &self.dir,
            &format!("ns-{name}.yaml"),
            &format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}{labels}\n"),
        )
        .unwrap();
    }

    /// Writes the MeshIdentity with `spec.authorization.default`.
    fn mesh_default(&self, default: &str) {
        write_file(
            &self.dir,
            "mesh.yaml",
            &format!(
                "apiVersion: weir.dev/v1alpha1\nkind: MeshIdentity\nmetadata: {{name: mesh}}\nspec:\n  authorization: {{default: {default}}}\n"
            ),
        )
        .unwrap();
    }

    /// Writes the TrafficPolicy on Service backend/api with `authorization` (YAML of the
    /// field's value, unindented), calling proxies opening a connection per request: every
    /// request meets the server's current configuration (see [`Mesh::pooled_policy`]).
    fn policy(&self, authorization: &str) {
        self.write_policy(Some(authorization), true);
    }

    /// The TrafficPolicy without authorization (and with a connection per request).
    fn no_policy(&self) {
        self.write_policy(None, true);
    }

    /// As [`Mesh::policy`], calling proxies keeping their connections to the server.
    fn pooled_policy(&self, authorization: &str) {
        self.write_policy(Some(authorization), false);
    }

    fn write_policy(&self, authorization: Option<&str>, fresh_connections: bool) {
        let mut spec = String::from("  targetRef: {service: api}\n");
        if fresh_connections {
            spec.push_str("  connectionPool: {maxRequestsPerConnection: 1}\n");
        }
        if let Some(authorization) = authorization {
            spec.push_str("  authorization:\n");
            for line in authorization.trim().lines() {
                spec.push_str(&format!("    {line}\n"));
            }
        }
        write_file(
            &self.dir,
            "authz.yaml",
            &format!(
                "apiVersion: weir.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: api-authz, namespace: backend}}\nspec:\n{spec}"
            ),
        )
        .unwrap();
    }

    /// What a caller gets for a probe, as one line.
    fn observe(&self, caller: Caller, probe: Probe) -> String {
        // Meshed callers use the Service (name, ClusterIP, Service ports); plaintext ones the
        // pod (its IP, container ports).
        let (host, ip, echo_port) = if caller.meshed {
            (API_HOST, API_IP, "7000")
        } else {
            (self.server_ip.as_str(), self.server_ip.as_str(), "7001")
        };
        match probe {
            Probe::Http(method, path, header) => {
                let url = format!("http://{host}:8080{path}");
                let mut args = vec!["http", method, &url];
                args.extend(header);
                self.python(caller.side, &args)
            }
            Probe::H2c => self.app(
                caller.side,
                &[
                    "call",
                    "h2c",
                    &format!("{ip}:8080"),
                    &format!("{API_HOST}:8080"),
                ],
            ),
            Probe::Grpc(method) => self.app(
                caller.side,
                &[
                    "call",
                    "grpc",
                    &format!("{ip}:50051"),
                    &format!("{API_HOST}:50051"),
                    method,
                ],
            ),
            Probe::Echo => self.python(caller.side, &["tcp", ip, echo_port, ECHO_LINE]),
            Probe::Greet => self.python(caller.side, &["first", ip, "7100"]),
        }
    }

    fn python(&self, side: Side, args: &[&str]) -> String {
        let script = self.script.to_string_lossy();
        self.output(side, &["timeout", "20", PYTHON, &script], args)
    }

    fn app(&self, side: Side, args: &[&str]) -> String {
        self.output(side, &["timeout", "20", &self.testapp], args)
    }

    fn output(&self, side: Side, program: &[&str], args: &[&str]) -> String {
        let out = self
            .net
            .command(side, program)
            .args(args)
            .output()
            .expect("run a client");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Polls until every case shows what it expects (each on a fresh request or
    /// connection), within [`STEP_DEADLINE`]; then checks them all once more. A step that
    /// fails is recorded (what each case saw, the operator's view of the policy, the server
    /// sidecar's state) and the test goes on to the next: [`Mesh::finish`] fails it.
    fn expect(&self, step: &str, cases: &[Case]) {
        let end = Instant::now() + STEP_DEADLINE;
        'poll: loop {
            for (i, Case(caller, probe, want)) in cases.iter().enumerate() {
                let seen = self.observe(*caller, *probe);
                if !want.accepts(*probe, &seen) {
                    if Instant::now() > end {
                        self.fail(format!(
                            "{step}: timed out after {STEP_DEADLINE:?}; case {i} ({} {probe:?}) \
                             wants {want:?}, saw {seen:?}\n{}",
                            caller.name,
                            self.diagnostics(cases)
                        ));
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                    continue 'poll;
                }
            }
            break;
        }
        let wrong: Vec<String> = cases
            .iter()
            .filter_map(|Case(caller, probe, want)| {
                let seen = self.observe(*caller, *probe);
                (!want.accepts(*probe, &seen))
                    .then(|| format!("{} {probe:?} wants {want:?}, saw {seen:?}", caller.name))
            })
            .collect();
        if wrong.is_empty() {
            eprintln!("{step}: {} cases as expected", cases.len());
        } else {
            self.fail(format!(
                "{step}: every case right once, then wrong: {wrong:#?}\n{}",
                self.diagnostics(cases)
            ));
        }
    }

    /// Records a failure unless `ok`.
    /// The operator's `weir_authorization_denials_total` of backend/api-authz in `mode`.
    fn operator_denials(&self, mode: &str) -> u64 {
        let text = self.net.fetch(Side::Peer, "http://127.0.0.1:15099/metrics");
        text.lines()
            .filter(|l| l.starts_with("weir_authorization_denials_total{"))
            .filter(|l| {
                l.contains("namespace=\"backend\"")
                    && l.contains("policy=\"api-authz\"")
                    && l.contains(&format!("mode=\"{mode}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| v as u64)
            .sum()
    }

    fn check(&self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.fail(what());
        }
    }

    fn fail(&self, what: String) {
        eprintln!("FAILED {what}");
        self.failures.borrow_mut().push(what);
    }

    /// Fails the test when a step failed.
    fn finish(self) {
        let failures = self.failures.take();
        assert!(
            failures.is_empty(),
            "{} failed step(s):\n\n{}",
            failures.len(),
            failures.join("\n\n")
        );
    }

    /// `GET /` straight from the peer namespace to the server pod's HTTP port over mutual
    /// TLS, with a certificate the mesh CA issued for `namespace/sa` and no sidecar of the
    /// caller's own: `<status> <first line of the body>`.
    fn direct_http(&self, namespace: &str, sa: &str) -> String {
        let read = |f: &str| std::fs::read_to_string(self.ca_dir.join(f)).unwrap();
        let ca = CertificateAuthority::from_pem(&read("ca.crt"), &read("tls.key"), None).unwrap();
        let id = SpiffeId::new(DEFAULT_TRUST_DOMAIN, namespace, sa);
        let cert = ca
            .issue_workload(&id, Duration::from_secs(3600), SystemTime::now())
            .unwrap();
        let dir = scratch_dir(&format!("authz-direct-{sa}"));
        std::fs::write(dir.join("cert.pem"), &cert.chain_pem).unwrap();
        std::fs::write(dir.join("key.pem"), cert.key.pem()).unwrap();
        std::fs::write(dir.join("ca.pem"), read("ca.crt")).unwrap();
        let addr = format!("{}:8080", self.server_ip);
        self.app(Side::Peer, &["call", "mtls", &addr, &dir.to_string_lossy()])
    }

    /// What every case sees now, the policy's conditions, source errors, and the end of
    /// the server sidecar's log.
    fn diagnostics(&self, cases: &[Case]) -> String {
        let mut text = String::from("every case now:\n");
        for Case(caller, probe, want) in cases {
            let seen = self.observe(*caller, *probe);
            let mark = if want.accepts(*probe, &seen) {
                "ok "
            } else {
                "BAD"
            };
            text.push_str(&format!(
                "  {mark} {} {probe:?} wants {want:?}: {seen:?}\n",
                caller.name
            ));
        }
        let status = self.net.fetch(Side::Peer, "http://127.0.0.1:15099/status");
        match serde_json::from_str::<serde_json::Value>(&status) {
            Ok(v) => text.push_str(&format!(
                "operator: policies {}\nsource errors {}\n",
                v["policies"], v["source_errors"]
            )),
            Err(_) => text.push_str(&format!("operator /status: {status}\n")),
        }
        let stats = self.net.fetch(
            self.server,
            &format!("http://127.0.0.1:{ENVOY_ADMIN_PORT}/stats?filter=listener_manager|rbac|downstream_cx_active"),
        );
        text.push_str("server sidecar stats:\n");
        for line in stats.lines().filter(|l| !l.ends_with(": 0")) {
            text.push_str(&format!("  {line}\n"));
        }
        if let Some(log) = server_log() {
            let log_text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = log_text.lines().rev().take(15).collect();
            text.push_str(&format!(
                "server sidecar log {}, last lines:\n",
                log.display()
            ));
            for line in tail.iter().rev() {
                text.push_str(&format!("  {line}\n"));
            }
        }
        text
    }

    /// The server sidecar's RBAC denials so far: (enforced, shadow) — every counter whose
    /// name has `rbac.` and ends in `denied` (`shadow_denied` for the shadow ones).
    fn rbac_denials(&self) -> (u64, u64) {
        let text = self.net.fetch(
            self.server,
            &format!("http://127.0.0.1:{ENVOY_ADMIN_PORT}/stats?filter=rbac"),
        );
        let (mut enforced, mut shadow) = (0, 0);
        for (name, value) in text.lines().filter_map(|l| l.split_once(": ")) {
            let Ok(value) = value.trim().parse::<u64>() else {
                continue;
            };
            if !name.contains("rbac.") {
                continue;
            }
            if name.ends_with("shadow_denied") {
                shadow += value;
            } else if name.ends_with("denied") {
                enforced += value;
            }
        }
        (enforced, shadow)
    }
}

/// The server sidecar's log (`Net::start_sidecar` writes it in its mounts directory).
fn server_log() -> Option<PathBuf> {
    let prefix = format!("weir-mounts-api-0-{}-", std::process::id());
    std::fs::read_dir(std::env::temp_dir())
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path().join("envoy.log"))
        .find(|p| p.exists())
}

/// The pod the injector is given.
fn pod(ns: &str, name: &str, sa: &str) -> k8s_openapi::api::core::v1::Pod {
    serde_saphyr::from_str(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  serviceAccountName: {sa}\n  containers: [{{name: app, image: app:1}}]\n"
    ))
    .unwrap()
}

#[test]
fn allow_and_deny_rules_decide_by_caller_and_request_on_every_protocol() {
    if !can_run("allow_and_deny_rules_decide_by_caller_and_request_on_every_protocol") {
        return;
    }
    let (mesh, callers) = Mesh::start(
        "azr",
        &[
            ("shop", "web", "web"),
            ("shop", "admin", "admin"),
            ("other", "robot", "robot"),
        ],
        &[],
    );
    let [web, admin, robot] = [callers[0], callers[1], callers[2]];
    use Want::{Allow, Deny, NotServed};

    // No policy: the mesh default (AllowAll) lets everyone through, every protocol.
    let mut cases = all(web, &EVERY, Allow);
    cases.extend(all(admin, &EVERY, Allow));
    cases.extend(all(robot, &EVERY, Allow));
    mesh.expect("no policy", &cases);

    // Service accounts: only shop/web.
    mesh.policy(
        "
defaultDeny: true
allow:
- serviceAccounts: [shop/web]
",
    );
    let mut cases = all(web, &EVERY, Allow);
    cases.extend(all(admin, &EVERY, Deny));
    cases.extend(all(robot, &EVERY, Deny));
    mesh.expect("allow serviceAccounts", &cases);
    // The server's sidecar decides, whatever the caller's sidecar does: a certificate for
    // shop/admin presented straight to the server is denied, one for shop/web allowed.
    let own = mesh.direct_http("shop", "admin");
    mesh.check(own == DENIED_BODY, || {
        format!(
            "shop/admin's certificate straight to the server: wants {DENIED_BODY:?}, saw {own:?}"
        )
    });
    let own = mesh.direct_http("shop", "web");
    mesh.check(own.starts_with("200 api "), || {
        format!("shop/web's certificate straight to the server: wants 200, saw {own:?}")
    });

    // Namespaces: all of shop.
    mesh.policy(
        "
defaultDeny: true
allow:
- namespaces: [shop]
",
    );
    let mut cases = all(web, &[get("/"), Probe::Echo], Allow);
    cases.extend(all(admin, &EVERY, Allow));
    cases.extend(all(robot, &EVERY, Deny));
    mesh.expect("allow namespaces", &cases);

    // Identities, and a rule whose conditions must all hold (namespace AND account).
    mesh.policy(
        "
defaultDeny: true
allow:
- identities: [spiffe://cluster.local/ns/other/sa/robot]
- namespaces: [shop]
  serviceAccounts: [shop/admin, other/robot]
",
    );
    let mut cases = all(robot, &EVERY, Allow);
    cases.extend(all(
        admin,
        &[get("/"), Probe::Grpc("Say"), Probe::Echo],
        Allow,
    ));
    cases.extend(all(web, &EVERY, Deny));
    mesh.expect("allow identities; conditions of a rule all hold", &cases);

    // Paths (by segment, query aside) and methods; such a rule allows nothing on TCP ports.
    mesh.policy(
        "
defaultDeny: true
allow:
- paths: [/api]
  methods: [GET, PUT]
",
    );
    let mut cases = vec![
        Case(web, get("/api"), Allow),
        Case(web, get("/api/items"), Allow),
        Case(web, get("/api?page=2"), Allow),
        Case(web, get("/api/items?page=2"), Allow),
        Case(web, Probe::Http("PUT", "/api/items/7", None), Allow),
        Case(robot, get("/api/items"), Allow),
        Case(web, get("/apix"), Deny),
        Case(web, get("/"), Deny),
        Case(web, get("/other/api"), Deny),
        Case(web, Probe::Http("POST", "/api", None), Deny),
        Case(web, Probe::Http("DELETE", "/api/items/7", None), Deny),
        Case(web, Probe::H2c, Deny),
        Case(web, Probe::Grpc("Say"), Deny),
    ];
    cases.extend(all(web, &[Probe::Echo, Probe::Greet], Deny));
    cases.extend(all(robot, &[Probe::Echo, Probe::Greet], Deny));
    mesh.expect("allow paths and methods", &cases);

    // Headers: Exact, Present (with an account), Prefix, RegularExpression.
    mesh.policy(
        r#"
defaultDeny: true
allow:
- headers: [{name: x-role, type: Exact, value: admin}]
- serviceAccounts: [other/robot]
  headers: [{name: x-debug, type: Present}]
- headers: [{name: x-tenant, type: Prefix, value: acme-}]
- headers: [{name: x-build, type: RegularExpression, value: 'v[0-9]+\.[0-9]+'}]
"#,
    );
    let cases = vec![
        Case(web, get_with("/", "x-role: admin"), Allow),
        Case(web, get_with("/", "X-Role: admin"), Allow),
        Case(web, get_with("/", "x-role: user"), Deny),
        Case(web, get("/"), Deny),
        Case(web, get_with("/", "x-debug: 1"), Deny),
        Case(robot, get_with("/", "x-debug: 1"), Allow),
        Case(robot, get("/"), Deny),
        Case(admin, get_with("/", "x-tenant: acme-eu"), Allow),
        Case(admin, get_with("/", "x-tenant: globex-acme-"), Deny),
        Case(admin, get_with("/", "x-build: v12.3"), Allow),
        Case(admin, get_with("/", "x-build: v1.x"), Deny),
        Case(web, Probe::Echo, Deny),
        Case(robot, Probe::Greet, Deny),
    ];
    mesh.expect("allow headers", &cases);

    // gRPC: service and method, method of any service, every method of a service.
    mesh.policy(
        "
defaultDeny: true
allow:
- grpc: {service: weir.test.Echo, method: Say}
  serviceAccounts: [shop/web]
- grpc: {method: Other}
  serviceAccounts: [other/robot]
- grpc: {service: weir.test.Echo}
  serviceAccounts: [shop/admin]
",
    );
    let cases = vec![
        Case(web, Probe::Grpc("Say"), Allow),
        Case(web, Probe::Grpc("Other"), Deny),
        Case(robot, Probe::Grpc("Say"), Deny),
        Case(robot, Probe::Grpc("Other"), Allow),
        Case(admin, Probe::Grpc("Say"), Allow),
        Case(admin, Probe::Grpc("Other"), Allow),
        Case(web, get("/"), Deny),
        Case(admin, Probe::H2c, Deny),
        Case(admin, Probe::Echo, Deny),
        Case(web, Probe::Greet, Deny),
    ];
    mesh.expect("allow gRPC methods", &cases);

    // Ports of the Service, by number and by name (7000 is the Service's, 7001 the pod's).
    mesh.policy(
        "
defaultDeny: true
allow:
- ports: [8080, tcp-greet]
- ports: [7000]
  serviceAccounts: [shop/admin]
",
    );
    let mut cases = all(web, &[get("/"), Probe::H2c, Probe::Greet], Allow);
    cases.extend(all(web, &[Probe::Echo, Probe::Grpc("Say")], Deny));
    cases.extend(all(admin, &[Probe::Echo, Probe::Greet, get("/")], Allow));
    cases.push(Case(admin, Probe::Grpc("Say"), Deny));
    cases.push(Case(robot, Probe::Echo, Deny));
    mesh.expect("allow ports", &cases);

    // Deny wins over allow.
    mesh.policy(
        "
defaultDeny: true
allow:
- namespaces: [shop]
deny:
- serviceAccounts: [shop/admin]
- paths: [/private]
  ports: [http]
",
    );
    let mut cases = all(web, &EVERY, Allow);
    cases.push(Case(web, get("/private"), Deny));
    cases.push(Case(web, get("/private/x"), Deny));
    cases.push(Case(web, get("/privateer"), Allow));
    cases.extend(all(admin, &EVERY, Deny));
    cases.extend(all(robot, &[get("/"), Probe::Echo], Deny));
    mesh.expect("deny wins over allow", &cases);

    // Deny rules without defaultDeny: the rest is the default's (AllowAll). A deny rule
    // with HTTP conditions closes every TCP connection; gRPC is POST.
    mesh.policy(
        "
deny:
- paths: [/admin]
- namespaces: [other]
  methods: [POST]
",
    );
    let mut cases = vec![
        Case(web, get("/"), Allow),
        Case(web, Probe::Http("POST", "/", None), Allow),
        Case(web, get("/administrator"), Allow),
        Case(web, get("/admin"), Deny),
        Case(web, get("/admin/users"), Deny),
        Case(web, get("/admin?debug=1"), Deny),
        Case(web, get("/public/../admin"), NotServed),
        Case(web, Probe::Grpc("Say"), Allow),
        Case(web, Probe::H2c, Allow),
        Case(robot, get("/"), Allow),
        Case(robot, Probe::Http("POST", "/", None), Deny),
        Case(robot, Probe::Grpc("Say"), Deny),
    ];
    cases.extend(all(web, &[Probe::Echo, Probe::Greet], Deny));
    cases.extend(all(robot, &[Probe::Echo, Probe::Greet], Deny));
    mesh.expect("deny rules with HTTP conditions", &cases);

    // Allow rules without defaultDeny: who matches none is left to the default (AllowAll).
    mesh.policy(
        "
allow:
- serviceAccounts: [shop/web]
",
    );
    let mut cases = all(web, &EVERY, Allow);
    cases.extend(all(robot, &EVERY, Allow));
    cases.extend(all(admin, &[get("/"), Probe::Echo], Allow));
    mesh.expect("allow rules alone leave the rest to the default", &cases);

    // And no policy again: everyone.
    mesh.no_policy();
    let mut cases = all(admin, &EVERY, Allow);
    cases.extend(all(robot, &[get("/admin"), Probe::Echo], Allow));
    mesh.expect("policy removed", &cases);
    mesh.finish();
}

#[test]
fn plaintext_callers_and_workload_defaults() {
    if !can_run("plaintext_callers_and_workload_defaults") {
        return;
    }
    let permissive = [(MTLS_MODE_KEY, "PERMISSIVE")];
    let (mesh, callers) = Mesh::start("azp", &[("shop", "web", "web")], &permissive);
    let web = callers[0];
    let plain = Caller {
        name: "plaintext",
        side: Side::Peer,
        meshed: false,
    };
    let plain_probes = [get("/"), Probe::Grpc("Say"), Probe::Echo];
    use Want::{Allow, Deny};

    // PERMISSIVE, no policy, AllowAll: both.
    let mut cases = all(web, &EVERY, Allow);
    cases.extend(all(plain, &plain_probes, Allow));
    mesh.expect("no policy", &cases);

    // A deny rule naming an identity the plaintext caller cannot show denies it.
    mesh.policy(
        "
deny:
- identities: [spiffe://cluster.local/ns/other/sa/robot]
",
    );
    let mut cases = all(web, &EVERY, Allow);
    cases.extend(all(plain, &plain_probes, Deny));
    mesh.expect("deny identities: plaintext denied", &cases);

    // So does one naming a namespace, on the ports it names only.
    mesh.policy(
        "
deny:
- namespaces: [other]
  ports: [http]
",
    );
    let mut cases = all(web, &[get("/"), Probe::Echo], Allow);
    cases.push(Case(plain, get("/"), Deny));
    cases.extend(all(plain, &[Probe::Echo, Probe::Grpc("Say")], Allow));
    mesh.expect(
        "deny namespaces on one port: plaintext denied there",
        &cases,
    );

    // Identity conditions of allow rules never match it.
    mesh.policy(
        "
defaultDeny: true
allow:
- namespaces: [shop, other, backend, default]
- serviceAccounts: [shop/web]
- identities: [spiffe://cluster.local/ns/shop/sa/web]
",
    );
    let mut cases = all(web, &EVERY, Allow);
    cases.extend(all(plain, &plain_probes, Deny));
    mesh.expect("allow by identity: plaintext denied", &cases);

    // unauthenticated: true allows it, and only it.
    mesh.policy(
        "
defaultDeny: true
allow:
- unauthenticated: true
",
    );
    let mut cases = all(plain, &plain_probes, Allow);
    cases.extend(all(web, &EVERY, Deny));
    mesh.expect("allow unauthenticated", &cases);

    mesh.policy(
        "
defaultDeny: true
allow:
- unauthenticated: true
  paths: [/public]
- serviceAccounts: [shop/web]
",
    );
    let cases = vec![
        Case(plain, get("/public/index.html"), Allow),
        Case(plain, get("/"), Deny),
        Case(plain, Probe::Echo, Deny),
        Case(web, get("/"), Allow),
        Case(web, Probe::Echo, Allow),
    ];
    mesh.expect("allow unauthenticated on a path", &cases);

    // The mesh default AllowAuthenticated: any mesh identity, no plaintext.
    mesh.no_policy();
    mesh.mesh_default("AllowAuthenticated");
    let mut cases = all(web, &EVERY, Allow);
    cases.extend(all(plain, &plain_probes, Deny));
    mesh.expect("MeshIdentity AllowAuthenticated", &cases);

    // The mesh default Deny: nobody a policy does not allow...
    mesh.mesh_default("Deny");
    let mut cases = all(web, &EVERY, Deny);
    cases.extend(all(plain, &plain_probes, Deny));
    mesh.expect("MeshIdentity Deny", &cases);

    // ...and an allow rule (no defaultDeny) allows on top of it, on its port only.
    mesh.policy(
        "
allow:
- serviceAccounts: [shop/web]
  ports: [http]
",
    );
    let cases = vec![
        Case(web, get("/"), Allow),
        Case(web, Probe::H2c, Allow),
        Case(web, Probe::Echo, Deny),
        Case(web, Probe::Grpc("Say"), Deny),
        Case(plain, get("/"), Deny),
    ];
    mesh.expect("MeshIdentity Deny with an allow rule", &cases);
    mesh.no_policy();

    // The namespace label overrides the mesh...
    mesh.namespace("backend", Some("AllowAll"));
    let mut cases = all(web, &EVERY, Allow);
    cases.extend(all(plain, &plain_probes, Allow));
    mesh.expect("namespace label AllowAll over MeshIdentity Deny", &cases);

    // ...and the pod annotation the namespace.
    mesh.write_server(&[permissive[0], (DEFAULT_AUTHZ, "AllowAuthenticated")]);
    let mut cases = all(web, &EVERY, Allow);
    cases.extend(all(plain, &plain_probes, Deny));
    mesh.expect(
        "pod annotation AllowAuthenticated over namespace AllowAll",
        &cases,
    );

    mesh.write_server(&[permissive[0], (DEFAULT_AUTHZ, "Deny")]);
    let mut cases = all(web, &EVERY, Deny);
    cases.extend(all(plain, &plain_probes, Deny));
    mesh.expect("pod annotation Deny over namespace AllowAll", &cases);

    mesh.namespace("backend", Some("Deny"));
    mesh.write_server(&[permissive[0], (DEFAULT_AUTHZ, "AllowAll")]);
    let mut cases = all(web, &EVERY, Allow);
    cases.extend(all(plain, &plain_probes, Allow));
    mesh.expect("pod annotation AllowAll over namespace Deny", &cases);

    // Without the annotation the namespace's Deny applies.
    mesh.write_server(&permissive);
    let mut cases = all(web, &[get("/"), Probe::Echo], Deny);
    cases.push(Case(plain, get("/"), Deny));
    mesh.expect("namespace label Deny", &cases);
    mesh.finish();
}

#[test]
fn audit_denies_nothing_and_enforce_takes_over_on_the_next_request() {
    if !can_run("audit_denies_nothing_and_enforce_takes_over_on_the_next_request") {
        return;
    }
    let (mesh, callers) = Mesh::start(
        "aza",
        &[("shop", "web", "web"), ("other", "robot", "robot")],
        &[],
    );
    let [web, robot] = [callers[0], callers[1]];
    use Want::{Allow, Deny};
    let rules = |mode: &str| {
        format!(
            "
mode: {mode}
defaultDeny: true
allow:
- serviceAccounts: [shop/web]
deny:
- paths: [/secret]
  ports: [http]
"
        )
    };

    let mut cases = all(web, &EVERY, Allow);
    cases.extend(all(robot, &EVERY, Allow));
    mesh.expect("no policy", &cases);

    // Enforce first, so that the switch to Audit is something to see.
    mesh.policy(&rules("Enforce"));
    let mut cases = all(web, &EVERY, Allow);
    cases.push(Case(web, get("/secret"), Deny));
    cases.extend(all(robot, &EVERY, Deny));
    mesh.expect("Enforce", &cases);

    // Audit: everything through, deny rules included...
    mesh.policy(&rules("Audit"));
    let mut cases = all(web, &EVERY, Allow);
    cases.push(Case(web, get("/secret"), Allow));
    cases.extend(all(robot, &EVERY, Allow));
    mesh.expect("Audit", &cases);
    // ...and counted as what would have been denied, not as denied.
    let (enforced, shadow) = mesh.rbac_denials();
    let through = [
        mesh.observe(robot, get("/")),
        mesh.observe(robot, Probe::Echo),
        mesh.observe(web, get("/secret")),
    ];
    let (enforced_after, shadow_after) = mesh.rbac_denials();
    mesh.check(
        Allow.accepts(get("/"), &through[0])
            && Allow.accepts(Probe::Echo, &through[1])
            && Allow.accepts(get("/secret"), &through[2]),
        || format!("Audit lets through: {through:?}"),
    );
    mesh.check(enforced_after == enforced, || {
        format!("Audit denied nothing: enforced RBAC denials {enforced} -> {enforced_after}")
    });
    mesh.check(shadow_after >= shadow + 3, || {
        format!(
            "Audit counted the 2 requests and the connection it would deny: shadow denials \
             {shadow} -> {shadow_after}"
        )
    });

    // The callers' proxies keep their connections from here (the server's listener does not
    // change: same authorization), and open some under Audit.
    mesh.pooled_policy(&rules("Audit"));
    let pooled = |port: u16| {
        mesh.net.envoy_stat_in(
            robot.side,
            &format!("cluster.outbound|{port}||{API_HOST}.upstream_cx_active"),
        )
    };
    let end = Instant::now() + STEP_DEADLINE;
    while pooled(8080) == 0 || pooled(50051) == 0 {
        let answers = [
            mesh.observe(robot, get("/")),
            mesh.observe(robot, Probe::Grpc("Say")),
        ];
        if Instant::now() > end {
            mesh.fail(format!(
                "robot's proxy keeps no connection to the server (8080: {}, 50051: {}) after {answers:?}",
                pooled(8080),
                pooled(50051)
            ));
            break;
        }
    }

    // The same file switched to Enforce: the denied caller's next requests get 403 over the
    // connections its proxy opened under Audit, its new connections are closed.
    mesh.pooled_policy(&rules("Enforce"));
    let end = Instant::now() + STEP_DEADLINE;
    let mut allowed = 0;
    loop {
        let answer = mesh.observe(robot, get("/"));
        if answer == DENIED_BODY {
            break;
        }
        if !Allow.accepts(get("/"), &answer) || Instant::now() > end {
            mesh.fail(format!(
                "switching to Enforce: after {allowed} allowed requests, {answer:?}\n{}",
                mesh.diagnostics(&[Case(robot, get("/"), Deny)])
            ));
            break;
        }
        allowed += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("Enforce took over after {allowed} more allowed requests");
    let later: Vec<String> = (0..20)
        .flat_map(|_| [get("/"), Probe::Grpc("Say")])
        .map(|probe| mesh.observe(robot, probe))
        .collect();
    let through: Vec<&String> = later
        .iter()
        .filter(|a| a.as_str() != DENIED_BODY && a.as_str() != "STATUS PermissionDenied")
        .collect();
    mesh.check(through.is_empty(), || {
        format!(
            "after Enforce took over, {} of robot's next {} requests (HTTP/1.1 and gRPC, over its \
             proxy's pooled connections: 8080 {}, 50051 {}) were not denied: {through:?}\n{}",
            through.len(),
            later.len(),
            pooled(8080),
            pooled(50051),
            mesh.diagnostics(&[Case(robot, get("/"), Deny)])
        )
    });
    let mut cases = all(robot, &EVERY, Deny);
    cases.push(Case(web, get("/"), Allow));
    cases.push(Case(web, get("/secret"), Deny));
    cases.push(Case(web, Probe::Echo, Allow));
    mesh.expect("Enforce again", &cases);

    // The server's sidecar reported its denials to the operator (Envoy's access log
    // service, real Envoy to the operator): Audit ones and Enforce ones, each a series of
    // `weir_authorization_denials_total`.
    for mode in ["Audit", "Enforce"] {
        let end = Instant::now() + STEP_DEADLINE;
        loop {
            let seen = mesh.operator_denials(mode);
            if seen > 0 {
                eprintln!("operator counted {seen} {mode} denials of backend/api-authz");
                break;
            }
            if Instant::now() > end {
                mesh.fail(format!(
                    "the operator's weir_authorization_denials_total has no {mode} denial of backend/api-authz"
                ));
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    mesh.finish();
}
