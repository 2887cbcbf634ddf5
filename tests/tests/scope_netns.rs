//! Per-proxy scoping against real Envoy, in network namespaces with real iptables: an
//! operator run with `--proxy-scope learned` and a caller whose sidecar holds only what its
//! pod declares (`weir.dev/dependencies: details`) calls a Service it has never called, over
//! HTTP, gRPC and TCP, under STRICT mTLS, with the Service's TrafficPolicy (a header rule
//! and a split) in force on the very first request; afterwards its config holds that
//! Service and still not the Services it never called; a Service deleted from the mesh
//! leaves the scope; after an operator restart, calls keep working and a new first call is
//! still answered. With `--scope-idle`, a learned Service the caller stops using (its load
//! reports show no request and no open connection) leaves its sidecar, a declared one and
//! one with an open connection stay, and the next call fetches it again.

use std::path::Path;
use std::time::{Duration, Instant};
use weir_core::mesh::{ENVOY_ADMIN_PORT, INBOUND_CAPTURE_PORT};
use weir_core::testing::{mk_meshed_pod, mk_slice};
use weir_tests::netns::*;
use weir_tests::{scratch_dir, service_with_ports, to_yaml, write_file};

const REVIEWS_IP: &str = "10.96.4.10";
const RATINGS_IP: &str = "10.96.4.11";
const DETAILS_IP: &str = "10.96.4.12";
const REVIEWS: &str = "reviews.shop.svc.cluster.local";

const POLICY: &str = r#"apiVersion: weir.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: reviews, namespace: shop}
spec:
  targetRef: {service: reviews}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  http:
  - name: canary
    matches: [{headers: [{name: x-canary, type: Exact, value: "yes"}]}]
    destinations: [{subset: v2}]
  - name: split
    matches: [{path: {type: Prefix, value: /split}}]
    destinations:
    - {subset: v1, weight: 50}
    - {subset: v2, weight: 50}
  - name: rest
    destinations: [{subset: v1}]
"#;

/// The cluster names the caller's Envoy holds (its admin `/clusters`).
fn clusters(net: &Net) -> Vec<String> {
    let text = net.fetch(
        Side::Pod,
        &format!("http://127.0.0.1:{ENVOY_ADMIN_PORT}/clusters"),
    );
    let mut names: Vec<String> = text
        .lines()
        .filter_map(|l| l.split("::").next())
        .map(str::to_string)
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

fn holds(net: &Net, service: &str) -> bool {
    let suffix = format!("|{service}.shop.svc.cluster.local");
    clusters(net).iter().any(|c| c.ends_with(&suffix))
}

/// Polls `check` every 200 ms until it holds or `within` passes.
fn eventually(what: &str, within: Duration, check: impl Fn() -> Option<String>) {
    let deadline = Instant::now() + within;
    loop {
        match check() {
            None => return,
            Some(last) if Instant::now() > deadline => panic!("{what}: {last}"),
            Some(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

#[test]
fn a_scoped_sidecar_fetches_what_it_calls_with_mtls_and_policy_on_the_first_call() {
    if !can_run("a_scoped_sidecar_fetches_what_it_calls_with_mtls_and_policy_on_the_first_call") {
        return;
    }
    let (mut net, v1, v2, dir) = start_shop("scope", &["--proxy-scope", "learned"]);

    // Before any call: what the pod declares, nothing else.
    eventually(
        "the hinted Service is held from the start",
        Duration::from_secs(30),
        || (!holds(&net, "details")).then(|| format!("clusters: {:?}", clusters(&net))),
    );
    assert!(!holds(&net, "reviews"), "{:?}", clusters(&net));
    assert!(!holds(&net, "ratings"), "{:?}", clusters(&net));

    // The first call, with the header rule: v2, through mTLS (the servers are STRICT).
    let started = Instant::now();
    let first = net.get_with(
        Side::Pod,
        &format!("http://{REVIEWS}:8080/"),
        "x-canary: yes",
    );
    let first_took = started.elapsed();
    assert!(first.starts_with("200 reviews-v2"), "first call: {first}");
    eprintln!("first HTTP call to a Service outside the scope: {first_took:?}");
    let started = Instant::now();
    let second = net.get_with(
        Side::Pod,
        &format!("http://{REVIEWS}:8080/"),
        "x-canary: yes",
    );
    eprintln!("the next call: {:?}", started.elapsed());
    assert!(second.starts_with("200 reviews-v2"), "{second}");
    assert!(
        net.get(Side::Pod, &format!("http://{REVIEWS}:8080/"))
            .starts_with("200 reviews-v1"),
        "the catch-all rule"
    );
    // The split sends to both subsets.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let answer = net.get(Side::Pod, &format!("http://{REVIEWS}:8080/split"));
        assert!(answer.starts_with("200 reviews-v"), "{answer}");
        seen.insert(answer);
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen.len(), 2, "the split reaches both subsets: {seen:?}");
    let handshakes = net.envoy_stat_in(
        v2,
        &format!("listener.0.0.0.0_{INBOUND_CAPTURE_PORT}.ssl.handshake"),
    );
    assert!(handshakes > 0, "the caller's sidecar spoke mTLS to v2's");

    // gRPC and TCP to the same Service, each port's first call.
    let grpc = grpc_call(&net, "Say");
    assert!(grpc.starts_with("reviews-v"), "gRPC: {grpc}");
    let tcp = tcp_call(&net, "hello");
    assert!(tcp.contains("hello"), "TCP: {tcp}");

    // Afterwards: the Service is held; what was never called is not.
    let held = clusters(&net);
    for port in [8080, 50051, 9000] {
        let name = format!("outbound|{port}||{REVIEWS}");
        assert!(held.contains(&name), "{name} in {held:?}");
    }
    assert!(!holds(&net, "ratings"), "{held:?}");

    // What the operator says of the proxy is what it holds: every type in sync with what
    // its stream serves, and its served clusters those of its scope.
    eventually(
        "the caller's proxy in sync",
        Duration::from_secs(30),
        || {
            let text = net.fetch(Side::Peer, "http://127.0.0.1:15099/debug/proxies");
            let proxies: Vec<weir_core::views::proxies::ProxyView> =
                serde_json::from_str(&text).ok()?;
            let web = proxies.iter().find(|p| p.node == "web.shop")?;
            let unsynced: Vec<String> = web
                .types
                .iter()
                .filter(|(_, t)| t.subscribed && t.sync() != "SYNCED")
                .map(|(name, t)| format!("{name} {}", t.sync()))
                .collect();
            (!unsynced.is_empty()).then(|| format!("{unsynced:?}"))
        },
    );
    let config: serde_json::Value = serde_json::from_str(&net.fetch(
        Side::Peer,
        "http://127.0.0.1:15099/debug/config?node=web.shop",
    ))
    .expect("/debug/config is JSON");
    let served: Vec<&str> = config["served"]["cds"]["resources"]
        .as_array()
        .expect("the clusters served")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert!(
        served.contains(&format!("outbound|8080||{REVIEWS}").as_str()),
        "{served:?}"
    );
    assert!(!served.iter().any(|n| n.contains("ratings")), "{served:?}");

    // A Service deleted from the mesh leaves the scope.
    write_mesh(&dir, &net.ip(v1), &net.ip(v2), false);
    eventually(
        "details leaves the caller's config",
        Duration::from_secs(30),
        || holds(&net, "details").then(|| format!("clusters: {:?}", clusters(&net))),
    );

    // The operator restarts: what the proxy holds keeps working, and a first call to a
    // Service it never called is answered by the new operator.
    net.restart_operator();
    let answer = net.get(Side::Pod, &format!("http://{REVIEWS}:8080/"));
    assert!(answer.starts_with("200 reviews-v1"), "{answer}");
    eventually(
        "a first call after the restart",
        Duration::from_secs(30),
        || {
            let answer = net.get(Side::Pod, "http://ratings.shop.svc.cluster.local:8080/");
            (!answer.starts_with("200 ")).then_some(answer)
        },
    );
    assert!(holds(&net, "ratings"));
    assert!(holds(&net, "reviews"), "the scope survived the restart");
}

/// The shop mesh (see `write_mesh`) in network namespaces: an operator run with
/// `operator_args`, reviews v1 and v2 serving HTTP, gRPC and TCP behind their sidecars, and
/// the caller `web` (hint: details) whose /etc/hosts names the Services. Returns the net,
/// v1's and v2's sides and the mesh directory.
fn start_shop(label: &str, operator_args: &[&str]) -> (Net, Side, Side, std::path::PathBuf) {
    let mut net = Net::new(label);
    let (v1, v2) = (net.add_host(), net.add_host());
    let dir = scratch_dir(&format!("{label}-mesh"));
    let ca_dir = scratch_dir(&format!("{label}-ca"));
    write_mesh(&dir, &net.ip(v1), &net.ip(v2), true);
    net.start_operator(&dir, &ca_dir, operator_args);
    for (side, name) in [(v1, "reviews-v1"), (v2, "reviews-v2")] {
        net.serve_app(side, &["http", name, "0.0.0.0:8080"]);
        net.serve_app(side, &["grpc", name, "0.0.0.0:50051"]);
        net.serve_app(side, &["tcp", name, "0.0.0.0:9000"]);
        net.start_sidecar(side, &pod("shop", name, "reviews", None), &ca_dir);
    }
    net.start_sidecar(
        Side::Pod,
        &pod("shop", "web", "web", Some("details")),
        &ca_dir,
    );
    let names = |svc: &str| format!("{svc}.shop.svc.cluster.local {svc}.shop.svc {svc}.shop");
    net.hosts(
        Side::Pod,
        &[
            (REVIEWS_IP, &names("reviews")),
            (RATINGS_IP, &names("ratings")),
            (DETAILS_IP, &names("details")),
        ],
    );
    (net, v1, v2, dir)
}

/// A TCP connection through the caller's sidecar, held open until dropped.
struct OpenConnection(std::process::Child);

impl OpenConnection {
    /// Connects to `addr` from the pod and waits for one echo, so the connection is up.
    fn open(net: &Net, ip: &str, port: u16) -> OpenConnection {
        use std::io::BufRead;
        let script = format!(
            "import socket, sys, time\n\
             s = socket.create_connection(('{ip}', {port}), timeout=20)\n\
             s.sendall(b'held\\n')\n\
             print(s.recv(100).decode().strip(), flush=True)\n\
             time.sleep(3600)\n"
        );
        let mut child = net
            .command(Side::Pod, &[PYTHON, "-c", &script])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 in the pod");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the echo");
        assert!(
            line.contains("held"),
            "the held connection's echo: {line:?}"
        );
        OpenConnection(child)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_scope_shrinks_when_a_dependency_goes_unused_and_grows_again_on_the_next_call() {
    if !can_run("a_scope_shrinks_when_a_dependency_goes_unused_and_grows_again_on_the_next_call") {
        return;
    }
    let (net, _, _, _) = start_shop(
        "shrink",
        &["--proxy-scope", "learned", "--scope-idle", "3s"],
    );
    let ratings = "http://ratings.shop.svc.cluster.local:8080/";
    let canary = || {
        net.get_with(
            Side::Pod,
            &format!("http://{REVIEWS}:8080/"),
            "x-canary: yes",
        )
    };

    // Two Services learned by calling them: ratings over HTTP, reviews over HTTP and a
    // TCP connection that stays open (a database connection, say).
    assert!(net.get(Side::Pod, ratings).starts_with("200 "), "ratings");
    let first = canary();
    assert!(first.starts_with("200 reviews-v2"), "{first}");
    let held = OpenConnection::open(&net, REVIEWS_IP, 9000);
    assert!(holds(&net, "ratings") && holds(&net, "reviews"));

    // ratings, unused, leaves the proxy (its clusters; its virtual host stays, see
    // weir_core::scope); reviews, whose connection is open, stays; details, which the pod
    // declares, stays.
    eventually(
        "the unused Service leaves the scope",
        Duration::from_secs(30),
        || holds(&net, "ratings").then(|| format!("clusters: {:?}", clusters(&net))),
    );
    assert!(
        holds(&net, "reviews"),
        "a Service with an open connection stays: {:?}",
        clusters(&net)
    );
    assert!(holds(&net, "details"), "a declared Service stays");
    let scope = scope_of(&net, "web.shop");
    assert_eq!(scope.dormant, ["shop/ratings"], "{scope:?}");
    assert!(
        scope.services.contains(&"shop/details".to_string()),
        "{scope:?}"
    );
    let served_vhosts = || -> Vec<String> {
        let config: serde_json::Value = serde_json::from_str(&net.fetch(
            Side::Peer,
            "http://127.0.0.1:15099/debug/config?node=web.shop",
        ))
        .expect("/debug/config is JSON");
        config["served"]["vhds"]["resources"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|r| r["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let vhosts = served_vhosts();
    assert!(
        vhosts.iter().any(|n| n.contains("ratings")),
        "ratings' virtual host stays for its next call: {vhosts:?}"
    );

    // The connection closes: reviews goes unused and leaves too.
    drop(held);
    eventually(
        "the Service whose connection closed leaves the scope",
        Duration::from_secs(30),
        || holds(&net, "reviews").then(|| format!("clusters: {:?}", clusters(&net))),
    );
    assert!(net.operator_metric("weir_scope_unused_services_total") >= 2);

    // The next call to each brings it back, with mTLS and the policy: over HTTP (Envoy
    // asks for the wake name its kept virtual host now routes to), over TCP (it asks for
    // the cluster by name, which pins the Service: Envoy never asks for a name twice).
    let again = net.get(Side::Pod, ratings);
    assert!(again.starts_with("200 "), "ratings again: {again}");
    assert!(tcp_call(&net, "again").contains("again"), "TCP again");
    let again = canary();
    assert!(
        again.starts_with("200 reviews-v2"),
        "reviews again, with its header rule: {again}"
    );
    assert!(holds(&net, "ratings") && holds(&net, "reviews"));
    let scope = scope_of(&net, "web.shop");
    assert!(scope.dormant.is_empty(), "{scope:?}");
    assert_eq!(scope.pinned, ["shop/reviews"], "{scope:?}");

    // And again: a Service leaves and comes back as often as it goes unused.
    eventually(
        "ratings leaves a second time",
        Duration::from_secs(30),
        || holds(&net, "ratings").then(|| format!("clusters: {:?}", clusters(&net))),
    );
    assert!(
        holds(&net, "reviews"),
        "the Service the proxy asked for by name stays: {:?}",
        clusters(&net)
    );
    let again = net.get(Side::Pod, ratings);
    assert!(again.starts_with("200 "), "ratings a third time: {again}");
}

/// A proxy's scope as the operator's `/debug/proxies` shows it.
fn scope_of(net: &Net, node: &str) -> weir_core::views::proxies::ScopeView {
    let text = net.fetch(Side::Peer, "http://127.0.0.1:15099/debug/proxies");
    let proxies: Vec<weir_core::views::proxies::ProxyView> =
        serde_json::from_str(&text).expect("/debug/proxies is JSON");
    proxies
        .into_iter()
        .find(|p| p.node == node)
        .and_then(|p| p.scope)
        .unwrap_or_else(|| panic!("{node} has a scope: {text}"))
}

fn grpc_call(net: &Net, method: &str) -> String {
    let testapp = weir_tests::workspace_binary("weir-testapp").unwrap();
    let out = net
        .command(Side::Pod, &["timeout", "20"])
        .arg(&testapp)
        .args([
            "call",
            "grpc",
            &format!("{REVIEWS_IP}:50051"),
            &format!("{REVIEWS}:50051"),
            method,
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn tcp_call(net: &Net, text: &str) -> String {
    let testapp = weir_tests::workspace_binary("weir-testapp").unwrap();
    let out = net
        .command(Side::Pod, &["timeout", "20"])
        .arg(&testapp)
        .args(["call", "tcp", &format!("{REVIEWS_IP}:9000"), text])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Services reviews (HTTP, gRPC, TCP; pods v1 and v2), ratings (HTTP, on v1) and, when
/// `with_details`, details (HTTP, on v2); the caller `web`, whose annotation names details.
fn write_mesh(dir: &Path, v1_ip: &str, v2_ip: &str, with_details: bool) {
    let mut objects = vec![to_yaml(&[service_with_ports(
        "shop",
        "reviews",
        REVIEWS_IP,
        &[
            ("http", 8080, None),
            ("grpc", 50051, Some("grpc")),
            ("tcp", 9000, None),
        ],
    )])];
    objects.push(to_yaml(&[service_with_ports(
        "shop",
        "ratings",
        RATINGS_IP,
        &[("http", 8080, None)],
    )]));
    if with_details {
        objects.push(to_yaml(&[service_with_ports(
            "shop",
            "details",
            DETAILS_IP,
            &[("http", 8080, None)],
        )]));
    }
    for (name, version, ip) in [("reviews-v1", "v1", v1_ip), ("reviews-v2", "v2", v2_ip)] {
        objects.push(to_yaml(&[mk_meshed_pod(
            "shop",
            name,
            "reviews",
            &[("app", "reviews"), ("version", version)],
        )]));
        for (port_name, port) in [("http", 8080), ("grpc", 50051), ("tcp", 9000)] {
            objects.push(to_yaml(&[mk_slice(
                "shop",
                &format!("reviews-{name}-{port_name}"),
                "reviews",
                port_name,
                port,
                &[(ip, name)],
            )]));
        }
    }
    objects.push(to_yaml(&[mk_slice(
        "shop",
        "ratings-v1",
        "ratings",
        "http",
        8080,
        &[(v1_ip, "reviews-v1")],
    )]));
    if with_details {
        objects.push(to_yaml(&[mk_slice(
            "shop",
            "details-v2",
            "details",
            "http",
            8080,
            &[(v2_ip, "reviews-v2")],
        )]));
    }
    let mut web = mk_meshed_pod("shop", "web", "web", &[("app", "web")]);
    web.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(
            weir_core::mesh::DEPENDENCIES_KEY.to_string(),
            "details".to_string(),
        );
    objects.push(to_yaml(&[web]));
    objects.push("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n".to_string());
    write_file(dir, "mesh.yaml", &objects.join("---\n")).unwrap();
    write_file(dir, "policy.yaml", POLICY).unwrap();
}

fn pod(ns: &str, name: &str, sa: &str, hint: Option<&str>) -> k8s_openapi::api::core::v1::Pod {
    let annotations = hint
        .map(|h| format!("annotations: {{weir.dev/dependencies: {h}}}, "))
        .unwrap_or_default();
    serde_saphyr::from_str(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{{annotations}name: {name}, namespace: {ns}}}\nspec:\n  serviceAccountName: {sa}\n  containers: [{{name: app, image: app:1}}]\n"
    ))
    .unwrap()
}
