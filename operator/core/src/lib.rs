//! Weir's pure core. Data flow:
//!
//! ```text
//! Event (apply/delete) -> Index (trimmed model, each source parsed once into a RouteSet)
//!   -> ServiceBinding (per Service port: the routes of every source merged by precedence,
//!      backends resolved)
//!   -> Translator (per-Service clusters, load assignments, virtual hosts; keeps bindings)
//!   -> SnapshotBuilder (per-profile snapshots with change lists, checked; per-workload
//!      inbound listeners over them)
//!   -> ads (per-connection xDS state machines: requests and snapshots in, responses out)
//! status: the bindings and the index's verdicts -> conditions per source
//! ```
//!
//! The route model ([`routing`]) is what every routing source ([`sources`]) parses into;
//! [`conditions`] is the status vocabulary, [`status`] its builders; [`names`] the stable
//! resource names; [`bootstrap`] the sidecar's bootstrap. Nothing here does I/O: no Kubernetes client, no gRPC transport, no
//! sockets. The only outside types are Kubernetes objects (k8s-openapi) and Envoy messages
//! (envoy-types, used for its message types only).

pub mod ads;
pub mod authorization;
pub mod binding;
pub mod bootstrap;
pub mod conditions;
pub mod explain;
mod hash_map;
pub mod identity;
pub mod index;
pub mod mesh;
pub mod names;
pub mod object_key;
pub mod owner;
pub mod protocol;
pub mod resources;
pub mod routing;
pub mod scope;
pub mod snapshot;
pub mod sources;
pub mod status;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod translate;
pub mod views;
pub mod yaml;

pub use index::{Event, Index, Kind, Object, ObjectKey};

pub use resources::{PerType, Resource, ResourceType};
pub use snapshot::{Snapshot, SnapshotBuilder, TypeSnapshot, WorkloadListeners};
pub use translate::{Capture, ProxyProfile, Zone};
