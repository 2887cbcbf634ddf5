//! The outbound side of a sidecar: how the workload's calls reach the mesh.
//!
//! ```text
//! PortRoutes (binding) --route::virtual_host--> one virtual host per Service port
//!                      --shaping--> fault, mirror, hash, rate limit configs
//! PortOutputs          --listener--> the explicit listener, or the transparent outbound
//!                                    listener with a chain per port, address and SNI
//! ```

pub mod listener;
pub mod route;
pub mod shaping;
