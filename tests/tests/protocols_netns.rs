//! Every kind of traffic a pod's application sends, through its injected sidecar
//! (transparent capture, real iptables, real Envoy, the real operator in local mode), to
//! backends on another host, by ClusterIP:
//!
//! (a) Redis (a real redis-server when installed, else a line-protocol server): both ways;
//! (b) two TCP Services on one port reach their own backends;
//! (c) h2c and gRPC keep HTTP/2 to the backend;
//! (d) TLS passes through unterminated and the handshake completes with the real server;
//! (e) a headless Service's pod IP is reached directly;
//! (f) a weighted `tcp:` rule splits connections;
//! (g) an undeclared HTTP port is detected as HTTP, an undeclared server-first port falls
//!     back to TCP, a well-known server-first port is TCP at once;
//! (h) an address outside the mesh passes through untouched.

use std::collections::BTreeMap;
use weir_core::mesh::OUTBOUND_CAPTURE_PORT;
use weir_tests::netns::*;
use weir_tests::{pod_endpoint_yaml, scratch_dir, service_with_ports, to_yaml, write_file};

const SPLIT_POLICY: &str = "apiVersion: weir.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: split, namespace: default}
spec:
  targetRef: {service: split}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  tcp:
  - destinations:
    - {subset: v1, weight: 50}
    - {subset: v2, weight: 50}
";

/// A pod behind a Service: its name, its port on the peer, its labels.
type Endpoint<'a> = (&'a str, u16, &'a [(&'a str, &'a str)]);

/// A Service (ns default) and its endpoints.
struct Svc<'a> {
    name: &'a str,
    cluster_ip: &'a str,
    port: (&'a str, u16, Option<&'a str>),
    endpoints: &'a [Endpoint<'a>],
}

fn write_services(dir: &std::path::Path, services: &[Svc]) {
    for s in services {
        let svc = service_with_ports("default", s.name, s.cluster_ip, &[s.port]);
        write_file(dir, &format!("svc-{}.yaml", s.name), &to_yaml(&[svc])).unwrap();
        for (pod, port, labels) in s.endpoints {
            let addr = format!("{PEER_IP}:{port}").parse().unwrap();
            let yaml = pod_endpoint_yaml("default", s.name, s.port.0, pod, labels, addr, true);
            write_file(dir, &format!("ep-{pod}.yaml"), &yaml).unwrap();
        }
    }
}

fn has(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn every_protocol_an_application_speaks_passes_its_sidecar() {
    if !can_run("every_protocol_an_application_speaks_passes_its_sidecar") {
        return;
    }
    let mut net = Net::new("proto");
    let dir = scratch_dir("protocols-mesh");
    let services = [
        Svc {
            name: "cache",
            cluster_ip: "10.96.0.20",
            port: ("redis", 6379, None),
            endpoints: &[("cache-0", 6379, &[])],
        },
        Svc {
            name: "alpha",
            cluster_ip: "10.96.0.21",
            port: ("tcp-alpha", 7000, None),
            endpoints: &[("alpha-0", 7001, &[])],
        },
        Svc {
            name: "beta",
            cluster_ip: "10.96.0.22",
            port: ("tcp-beta", 7000, None),
            endpoints: &[("beta-0", 7002, &[])],
        },
        Svc {
            name: "api",
            cluster_ip: "10.96.0.23",
            port: ("api", 8080, Some("kubernetes.io/h2c")),
            endpoints: &[("api-0", 8080, &[])],
        },
        Svc {
            name: "greeter",
            cluster_ip: "10.96.0.24",
            port: ("grpc", 50051, Some("grpc")),
            endpoints: &[("greeter-0", 50051, &[])],
        },
        Svc {
            name: "ldap",
            cluster_ip: "10.96.0.25",
            port: ("tls-ldap", 636, None),
            endpoints: &[("ldap-0", 636, &[])],
        },
        Svc {
            name: "stateful",
            cluster_ip: "None",
            port: ("tcp-db", 9000, None),
            endpoints: &[("stateful-0", 9000, &[])],
        },
        Svc {
            name: "split",
            cluster_ip: "10.96.0.26",
            port: ("tcp-split", 7100, None),
            endpoints: &[
                ("split-v1", 7101, &[("version", "v1")]),
                ("split-v2", 7102, &[("version", "v2")]),
            ],
        },
        Svc {
            name: "legacy",
            cluster_ip: "10.96.0.27",
            port: ("web", 8081, None),
            endpoints: &[("legacy-0", 8081, &[])],
        },
        Svc {
            name: "banner",
            cluster_ip: "10.96.0.28",
            port: ("", 7200, None),
            endpoints: &[("banner-0", 7200, &[])],
        },
        Svc {
            name: "mysql",
            cluster_ip: "10.96.0.29",
            port: ("", 3306, None),
            endpoints: &[("mysql-0", 3306, &[])],
        },
    ];
    write_services(&dir, &services);
    write_file(&dir, "split-policy.yaml", SPLIT_POLICY).unwrap();

    // The backends, on the peer host.
    let redis = has("redis-server") && has("redis-cli");
    let peer = |port: u16| format!("0.0.0.0:{port}");
    if redis {
        let conf = dir.join("redis.conf");
        std::fs::write(
            &conf,
            "port 6379\nbind 0.0.0.0\nprotected-mode no\nsave \"\"\nappendonly no\n",
        )
        .unwrap();
        net.spawn(Side::Peer, &["redis-server", &conf.to_string_lossy()]);
    } else {
        eprintln!("redis-server is not installed: the cache is a line-protocol server");
        net.serve_app(Side::Peer, &["tcp", "cache", &peer(6379)]);
    }
    net.serve_app(Side::Peer, &["tcp", "alpha", &peer(7001)]);
    net.serve_app(Side::Peer, &["tcp", "beta", &peer(7002)]);
    net.serve_app(Side::Peer, &["http", "api", &peer(8080)]);
    net.serve_app(Side::Peer, &["grpc", "greeter", &peer(50051)]);
    let tls_dir = scratch_dir("protocols-tls");
    let tls_dir_arg = tls_dir.to_string_lossy().into_owned();
    let ldap = "ldap.default.svc.cluster.local";
    net.serve_app(
        Side::Peer,
        &[
            "tls",
            "ldap",
            &peer(636),
            "--dir",
            &tls_dir_arg,
            "--names",
            ldap,
        ],
    );
    net.serve_app(Side::Peer, &["tcp", "stateful-0", &peer(9000)]);
    net.serve_app(Side::Peer, &["tcp", "split-v1", &peer(7101)]);
    net.serve_app(Side::Peer, &["tcp", "split-v2", &peer(7102)]);
    net.serve_app(Side::Peer, &["http", "legacy", &peer(8081)]);
    net.serve(Side::Peer, 7200, "banner"); // server-first: it speaks as the client connects
    net.serve(Side::Peer, 3306, "mysql-greeting");
    net.serve(Side::Peer, 7300, "outside-the-mesh");
    let ca = tls_dir.join("ca.pem");
    net.wait_for("the TLS server's certificate", || ca.exists());

    net.start_mesh_and_sidecar(&dir, &[]);
    // Everything is routed once the last Service's chain answers.
    net.wait_for("the mesh's listeners", || {
        net.testapp(Side::Pod, &["call", "tcp", "10.96.0.22:7000", "ping"]) == "beta: ping"
    });

    // (a) Redis: a write and a read back, through the sidecar.
    if redis {
        let cli = |args: &[&str]| {
            let mut full = vec!["redis-cli", "-h", "10.96.0.20", "-p", "6379"];
            full.extend(args);
            String::from_utf8_lossy(&net.command(Side::Pod, &full).output().unwrap().stdout)
                .trim()
                .to_string()
        };
        assert_eq!(cli(&["SET", "mesh", "weir"]), "OK");
        assert_eq!(cli(&["GET", "mesh"]), "weir");
    } else {
        assert_eq!(
            net.testapp(Side::Pod, &["call", "tcp", "10.96.0.20:6379", "GET mesh"]),
            "cache: GET mesh"
        );
    }
    let tcp_cx = net.envoy_stat("tcp.outbound_6379_10.96.0.20.downstream_cx_total");
    assert!(
        tcp_cx >= 1,
        "the cache's connections went through the TCP proxy: {tcp_cx}"
    );

    // (b) Two TCP Services on port 7000: each ClusterIP reaches its own backend.
    assert_eq!(
        net.testapp(Side::Pod, &["call", "tcp", "10.96.0.21:7000", "hi"]),
        "alpha: hi"
    );
    assert_eq!(
        net.testapp(Side::Pod, &["call", "tcp", "10.96.0.22:7000", "hi"]),
        "beta: hi"
    );

    // (c) h2c and gRPC by ClusterIP, HTTP/2 all the way (the server says which version).
    assert_eq!(
        net.testapp(
            Side::Pod,
            &[
                "call",
                "h2c",
                "10.96.0.23:8080",
                "api.default.svc.cluster.local:8080"
            ]
        ),
        "200 api HTTP/2.0"
    );
    assert_eq!(
        net.testapp(
            Side::Pod,
            &[
                "call",
                "grpc",
                "10.96.0.24:50051",
                "greeter.default.svc.cluster.local:50051",
                "Say"
            ]
        ),
        "greeter Say"
    );

    // (d) TLS through the sidecar, unterminated: the client verifies the real server's
    // certificate, and the server saw the client's SNI.
    let ca_arg = ca.to_string_lossy().into_owned();
    assert_eq!(
        net.testapp(Side::Pod, &["call", "tls", "10.96.0.25:636", ldap, &ca_arg]),
        format!("ldap {ldap}")
    );

    // (e) A headless Service: the pod IP itself, by original destination.
    assert_eq!(
        net.testapp(
            Side::Pod,
            &["call", "tcp", &format!("{PEER_IP}:9000"), "hi"]
        ),
        "stateful-0: hi"
    );

    // (f) A weighted tcp: rule splits connections 50/50.
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..100 {
        let answer = net.testapp(Side::Pod, &["call", "tcp", "10.96.0.26:7100", "x"]);
        *counts.entry(answer).or_default() += 1;
    }
    println!("tcp split over 100 connections: {counts:?}");
    let v1 = counts.get("split-v1: x").copied().unwrap_or(0);
    let v2 = counts.get("split-v2: x").copied().unwrap_or(0);
    assert_eq!(v1 + v2, 100, "every connection answered: {counts:?}");
    assert!(
        (35..=65).contains(&v1),
        "50/50 within 15 points: {counts:?}"
    );

    // (g) Detection: HTTP on an undeclared port is routed as HTTP; a server-first protocol
    // on an undeclared port gets through once the inspector gives up; 3306 is TCP at once.
    assert_eq!(
        net.get(Side::Pod, "http://10.96.0.27:8081/"),
        "200 legacy HTTP/1.1"
    );
    let detected = net.envoy_stat("http.outbound_8081_http.downstream_rq_total");
    assert!(
        detected >= 1,
        "the undeclared port was detected as HTTP: {detected}"
    );
    assert_eq!(net.ask(Side::Pod, None, "10.96.0.28", 7200), "banner");
    assert_eq!(
        net.ask(Side::Pod, None, "10.96.0.29", 3306),
        "mysql-greeting"
    );
    let sniff_timeouts = net.envoy_stat(&format!(
        "listener.0.0.0.0_{OUTBOUND_CAPTURE_PORT}.downstream_listener_filter_remote_close"
    )) + net.envoy_stat(&format!(
        "listener.0.0.0.0_{OUTBOUND_CAPTURE_PORT}.downstream_pre_cx_timeout"
    ));
    println!("listener filter timeouts (the banner port): {sniff_timeouts}");

    // (h) Outside the mesh: untouched.
    assert_eq!(net.ask(Side::Pod, None, PEER_IP, 7300), "outside-the-mesh");
}
