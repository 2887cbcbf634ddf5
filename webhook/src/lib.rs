//! Weir's sidecar injection.
//!
//! Today: [`capture`], the iptables rules that `weir-init` installs in a pod's network
//! namespace so that the application's TCP traffic goes through Envoy. Next (the
//! sidecar-injection issue): the pure Pod -> JSON patch logic, the HTTPS admission server and
//! `weir-webhook inject`, using the bootstrap generator in `weir-core`.
#![deny(warnings)]
#![forbid(unsafe_code)]

pub mod capture;
