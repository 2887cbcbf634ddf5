//! Weir's pure core. Data flow:
//!
//! ```text
//! Event (apply/delete) -> Index (trimmed model, typed policies, dirty set)
//!   -> ServiceBinding (per Service port: the governing policy, destinations resolved)
//!   -> Translator (per-Service clusters, load assignments, virtual hosts)
//!   -> SnapshotBuilder (per-profile snapshots with change lists, checked)
//!   -> ads (per-connection xDS state machines: requests and snapshots in, responses out)
//! ```
//!
//! plus policy parsing and status ([`policy`], [`status`]) and bootstrap generation
//! ([`bootstrap`]). Nothing here does I/O: no Kubernetes client, no gRPC transport, no
//! sockets. The only outside types are Kubernetes objects (k8s-openapi) and Envoy messages
//! (envoy-types, used for its message types only).

pub mod ads;
pub mod binding;
pub mod bootstrap;
pub mod identity;
pub mod index;
pub mod mesh;
pub mod policy;
pub mod protocol;
pub mod resources;
pub mod snapshot;
pub mod status;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod translate;
pub mod yaml;

pub use index::{Event, Index, Kind, Object, ObjectKey};

/// Hash maps keyed by object names: ahash is several times faster than SipHash on these
/// keys and still randomly seeded, so names chosen by users cannot force collisions.
pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;
pub use resources::{PerType, Resource, ResourceType};
pub use snapshot::{Snapshot, SnapshotBuilder, TypeSnapshot};
pub use translate::{Capture, ProxyProfile, Zone};
