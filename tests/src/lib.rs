//! Harness for tests, benchmarks and the demo that run real Envoy against a real Weir
//! control plane. One module per job:
//!
//! - [`wait`]: polling with a deadline (nothing sleeps in place of readiness);
//! - [`bins`]: the workspace, its binaries, Envoy, scratch directories, ports;
//! - [`backend`]: HTTP backends that answer with their own name; [`apps`]: servers and
//!   clients of every protocol (gRPC, h2c, TCP, TLS);
//! - [`manifests`]: typed builders serialized to YAML/JSON;
//! - [`envoy`]: Envoy processes from the bootstrap generator, and traffic through them;
//! - [`mesh`]: a local-mode control plane on a scratch directory;
//! - [`netns`]: network namespaces as pods; [`fake_api`]: an in-process API server for
//!   faults a real one cannot produce;
//! - [`kube`]: a real API server and its helpers; [`xds_client`]: a raw ADS client over TLS,
//!   for credentials Envoy cannot be made to send.

pub mod apps;
pub mod backend;
pub mod bins;
pub mod envoy;
pub mod fake_api;
pub mod gateway_api;
pub mod kube;
pub mod manifests;
pub mod mesh;
pub mod netns;
pub mod telemetry;
pub mod wait;
pub mod xds_client;

pub use backend::{Backend, Behavior};
pub use bins::*;
pub use envoy::{Envoy, EnvoyOptions};
pub use manifests::*;
pub use mesh::*;
pub use wait::*;
