#!/usr/bin/env python3
"""Per-proxy scoping, the prototype measure (issue 22): what each kind of configuration
costs a real Envoy 1.40, to choose what a scoped sidecar must still hold.

One Envoy per variant, started from a static bootstrap shaped like Weir's sidecar config
(EDS clusters become STATIC with 5 endpoints each, mTLS through an SDS secret, HTTP/2
options, circuit breakers; one virtual host per Service port with Weir's domains; one TCP
chain per ClusterIP:port for TCP Services). Its resident memory is read once the server
is LIVE. Prints a table and appends JSON lines to target/bench/results.jsonl.

Usage: scope_memory.py ENVOY_BIN
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

CALLED = 10  # Services the workload calls


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service(i):
    ns = f"ns{i % 50}"
    name = f"svc{i}"
    ip = f"10.{96 + i // 65536}.{(i // 256) % 256}.{i % 256}"
    return ns, name, ip


def cluster(i):
    ns, name, _ = service(i)
    return {
        "name": f"outbound|8080||{name}.{ns}.svc.cluster.local",
        "type": "STATIC",
        "connect_timeout": "1s",
        "circuit_breakers": {"thresholds": [{"max_connections": 1024, "max_requests": 1024}]},
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "common_tls_context": {
                    "tls_certificate_sds_secret_configs": [{"name": "workload"}],
                    "validation_context_sds_secret_config": {"name": "mesh-ca"},
                },
                "sni": f"outbound_.8080_._.{name}.{ns}.svc.cluster.local",
            },
        },
        "load_assignment": {
            "cluster_name": f"outbound|8080||{name}.{ns}.svc.cluster.local",
            "endpoints": [{
                "lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {
                        "address": f"10.200.{(i * 5 + k) // 256 % 256}.{(i * 5 + k) % 256}",
                        "port_value": 8080}}}}
                    for k in range(5)
                ]
            }],
        },
    }


def vhost(i):
    ns, name, ip = service(i)
    bare = [name, f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.cluster.local", ip]
    return {
        "name": f"{name}.{ns}.svc.cluster.local:8080",
        "domains": bare + [f"{d}:8080" for d in bare],
        "routes": [{
            "match": {"prefix": "/"},
            "route": {
                "cluster": f"outbound|8080||{name}.{ns}.svc.cluster.local",
                "timeout": "15s",
                "retry_policy": {"retry_on": "connect-failure,refused-stream", "num_retries": 2},
            },
        }],
    }


def tcp_chain(i):
    ns, name, ip = service(i)
    return {
        "filter_chain_match": {"destination_port": 9000, "prefix_ranges": [{"address_prefix": ip, "prefix_len": 32}]},
        "filters": [{
            "name": "envoy.filters.network.tcp_proxy",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "stat_prefix": f"outbound_9000_{name}",
                "cluster": f"outbound|9000||{name}.{ns}.svc.cluster.local",
            },
        }],
    }


def addressed_chain(services, port=9000):
    """One chain for the TCP ClusterIPs of every Service: the connection's original
    destination names the cluster (filter state `envoy.tcp_proxy.cluster`), so the chain
    does not grow per Service beyond one address range."""
    ranges = [{"address_prefix": service(i)[2], "prefix_len": 32} for i in services]
    return {
        "filter_chain_match": {"destination_port": port, "prefix_ranges": ranges},
        "filters": [
            {
                "name": "envoy.filters.network.set_filter_state",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.set_filter_state.v3.Config",
                    "on_new_connection": [{
                        "object_key": "envoy.tcp_proxy.cluster",
                        "format_string": {"text_format_source": {
                            "inline_string": "outbound-addr|%DOWNSTREAM_LOCAL_ADDRESS%"}},
                    }],
                },
            },
            {
                "name": "envoy.filters.network.tcp_proxy",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                    "stat_prefix": "outbound_tcp_by_address",
                    "cluster": "BlackHoleCluster",
                },
            },
        ],
    }


def bootstrap(admin_port, clusters, vhosts, tcp_chains, http_port, addressed=()):
    chains = [tcp_chain(i) for i in tcp_chains]
    if addressed:
        chains.append(addressed_chain(addressed))
    chains.append({
        "filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "outbound_http",
                "route_config": {
                    "name": "outbound|8080",
                    "validate_clusters": False,
                    "virtual_hosts": [vhost(i) for i in vhosts],
                },
                "http_filters": [{
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                }],
            },
        }],
    })
    return {
        "node": {"id": "scope-bench", "cluster": "bench"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "secrets": [
                {"name": "workload", "tls_certificate": {
                    "certificate_chain": {"filename": CERT}, "private_key": {"filename": KEY}}},
                {"name": "mesh-ca", "validation_context": {"trusted_ca": {"filename": CERT}}},
            ],
            "clusters": [cluster(i) for i in clusters],
            "listeners": [{
                "name": "outbound",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": http_port}},
                "filter_chains": chains,
            }],
        },
    }


def start(envoy, config, admin, label):
    """An Envoy with `config`, once LIVE (the caller stops it)."""
    d = tempfile.mkdtemp()
    path = os.path.join(d, "bootstrap.json")
    with open(path, "w") as f:
        json.dump(config, f)
    proc = subprocess.Popen(
        [envoy, "-c", path, "--concurrency", "2", "--disable-hot-restart",
         "--base-id", str(admin), "-l", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"{label}: Envoy exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=2) as r:
                if r.read().strip() == b"LIVE":
                    return proc
        except OSError:
            pass
        if time.time() > deadline:
            proc.kill()
            raise SystemExit(f"{label}: Envoy not LIVE within 300 s")
        time.sleep(0.2)


def check_addressed_chain(envoy):
    """The mechanism, for real: a connection to the chain's address reaches the cluster
    its destination address names (a TCP echo server behind `outbound-addr|IP:PORT`)."""
    import threading
    echo = socket.socket()
    echo.bind(("127.0.0.1", 0))
    echo.listen()
    echo_port = echo.getsockname()[1]

    def serve():
        while True:
            conn, _ = echo.accept()
            with conn:
                conn.sendall(b"echo:" + conn.recv(100))

    threading.Thread(target=serve, daemon=True).start()
    admin, listen = free_port(), free_port()
    config = bootstrap(admin, [], [], [], free_port())
    chain = addressed_chain([])
    chain["filter_chain_match"] = {}
    config["static_resources"]["listeners"].append({
        "name": "by-address",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}},
        "filter_chains": [chain],
    })
    config["static_resources"]["clusters"].append({
        "name": f"outbound-addr|127.0.0.1:{listen}",
        "type": "STATIC",
        "load_assignment": {"cluster_name": "x", "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": echo_port}}}}]}]},
    })
    proc = start(envoy, config, admin, "addressed chain")
    try:
        with socket.create_connection(("127.0.0.1", listen), timeout=5) as c:
            c.sendall(b"hello")
            got = c.recv(100)
        if got != b"echo:hello":
            raise SystemExit(f"the connection did not reach the cluster its address names: {got!r}")
        print("  a connection's destination address picked its cluster: ok")
    finally:
        proc.terminate()
        proc.wait()


def measure(envoy, label, clusters, vhosts, tcp_chains, addressed=()):
    admin = free_port()
    config = bootstrap(admin, clusters, vhosts, tcp_chains, free_port(), addressed)
    proc = start(envoy, config, admin, label)
    try:
        # Envoy frees the parsed bootstrap lazily: read after it settles.
        time.sleep(2)
        with open(f"/proc/{proc.pid}/status") as f:
            rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    finally:
        proc.terminate()
        proc.wait()
    return rss / 1024.0


def main():
    envoy = sys.argv[1]
    global CERT, KEY
    d = tempfile.mkdtemp()
    CERT, KEY = os.path.join(d, "c.pem"), os.path.join(d, "k.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", KEY, "-out", CERT, "-days", "1", "-subj", "/CN=bench"],
                   check=True, capture_output=True)
    check_addressed_chain(envoy)
    called = list(range(CALLED))
    rows = []
    for n in [10, 1000, 5000]:
        every = list(range(n))
        variants = [
            ("whole mesh (today)", every, every, [], []),
            ("clusters of the 10 called, every virtual host", called, every, [], []),
            ("clusters and virtual hosts of the 10 called", called, called, [], []),
            ("clusters of the 10 called, a TCP chain per Service", called, called, every, []),
            ("clusters of the 10 called, one TCP chain by address", called, called, [], every),
        ]
        for label, clusters, vhosts, chains, addressed in variants:
            if n == 10 and label != "whole mesh (today)":
                continue
            mib = measure(envoy, label, clusters, vhosts, chains, addressed)
            rows.append((n, label, mib))
            print(f"  {n:>5} Services  {label:<52} {mib:7.1f} MiB", flush=True)
    base = next(m for n, l, m in rows if n == 10)
    lines = [json.dumps({"run": "scope", "measure": f"Envoy RSS, {n} Services: {label}",
                         "goal": f"<= {1.2 * base:.1f} MiB (1.2x the 10-Service mesh)" if "10 called" in label else "reported",
                         "figure": round(mib, 1), "unit": "MiB"}) for n, label, mib in rows]
    os.makedirs("target/bench", exist_ok=True)
    with open("target/bench/results.jsonl", "a") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
