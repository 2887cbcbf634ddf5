//! Weir's sidecar injection.
//!
//! - [`capture`]: the iptables rules `weir-init` installs in a pod's network namespace so
//!   that the application's TCP traffic goes through Envoy.
//! - [`inject`]: Pod + namespace + mesh configuration -> injected Pod and JSON patch (pure),
//!   with [`annotations`] for per-pod overrides.
//! - [`manifests`]: the same on YAML manifests (`weir-webhook inject -f`).
//! - [`cli`]: the flags and `inject -f` that `weir-webhook` and `kubectl weir` share.
//! - [`server`]: the HTTPS AdmissionReview v1 server (`weir-webhook serve`).

pub mod annotations;
pub mod capture;
pub mod cli;
pub mod inject;
pub mod manifests;
pub mod server;
