//! The Weir sidecar injector. Empty until the sidecar-injection issue: it will turn a Pod,
//! its namespace and the mesh configuration into a JSON patch, using the bootstrap generator
//! in `weir-core`.
#![deny(warnings)]
#![forbid(unsafe_code)]
