//! Compiles the Envoy API's `.proto` files that the `envoy-types` crate ships (the same
//! version whose Rust types the operator encodes with) into one descriptor set, so that
//! `proxy-config -o json` prints served resources as protobuf JSON, `Any`s expanded, like
//! Envoy's own config dump.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Folders (under `envoy/`) of the API the operator uses.
const ROOTS: [&str; 26] = [
    "config/accesslog/v3",
    "config/cluster/v3",
    "config/core/v3",
    "config/endpoint/v3",
    "config/grpc_credential/v3",
    "config/listener/v3",
    "config/rbac/v3",
    "config/route/v3",
    "config/trace/v3",
    "extensions/access_loggers",
    "extensions/filters/http/local_ratelimit/v3",
    "extensions/filters/http/rbac/v3",
    "extensions/filters/http/router/v3",
    "extensions/filters/listener/http_inspector/v3",
    "extensions/filters/listener/original_dst/v3",
    "extensions/filters/listener/tls_inspector/v3",
    "extensions/filters/network/direct_response/v3",
    "extensions/filters/network/http_connection_manager/v3",
    "extensions/filters/network/rbac/v3",
    "extensions/filters/network/tcp_proxy/v3",
    "extensions/matching/actions/transform_stat/v3",
    "extensions/matching/common_inputs/stats/v3",
    "extensions/tracers/opentelemetry",
    "extensions/transport_sockets/tls/v3",
    "extensions/upstreams/http/v3",
    // Last: it imports `envoy.extensions.filters.common.fault`, and once that package is
    // known protox resolves `common.ratelimit...` in other filters against it.
    "extensions/filters/http/fault/v3",
];

fn main() {
    let proto = envoy_types_dir().join("proto");
    println!("cargo:rerun-if-changed=build.rs");
    let includes: Vec<PathBuf> = [
        "data-plane-api",
        "xds",
        "googleapis",
        "protoc-gen-validate",
        "opentelemetry-proto",
        "cel-spec/proto",
        "client_model",
        "ratelimit/api",
    ]
    .iter()
    .map(|d| proto.join(d))
    .collect();
    // The messages the operator serves and every extension it configures inside them (the
    // `Any`s). Opening the whole API at once does not work: protox resolves names against
    // every package it has seen, and the crate ships a subset of the API.
    let mut files = Vec::new();
    for dir in ROOTS {
        let mut in_dir = Vec::new();
        collect(&proto.join("data-plane-api/envoy").join(dir), &mut in_dir);
        in_dir.sort();
        files.extend(in_dir);
    }
    let mut compiler = protox::Compiler::new(&includes).expect("include paths");
    compiler.include_imports(true);
    compiler
        .open_files(&files)
        .unwrap_or_else(|e| panic!("compiling Envoy's protos: {e:?}"));
    let set = compiler.file_descriptor_set();
    let out =
        PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("envoy-descriptors.bin");
    std::fs::write(&out, prost::Message::encode_to_vec(&set)).expect("writing the descriptor set");
}

/// Every `.proto` under `dir`.
fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
    {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
}

/// Where Cargo unpacked the `envoy-types` package this workspace locks.
fn envoy_types_dir() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--manifest-path",
        ])
        .arg(Path::new(&manifest).join("Cargo.toml"))
        .output()
        .expect("running cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
    let package = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "envoy-types")
        .expect("envoy-types among the packages");
    let manifest_path = package["manifest_path"].as_str().expect("a manifest path");
    Path::new(manifest_path)
        .parent()
        .expect("the package directory")
        .to_path_buf()
}
