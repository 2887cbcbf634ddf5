//! Envoy resources as the snapshot cache holds them: encoded once, named, and versioned by a
//! content hash so that the same input always yields the same version (also across operator
//! restarts, which lets a reconnecting delta client skip what it already has).

use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use std::sync::Arc;
use xxhash_rust::xxh3::xxh3_64;

/// The xDS resource types Weir serves, in the order Envoy should apply them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    /// CDS.
    Cluster,
    /// EDS.
    Endpoint,
    /// LDS.
    Listener,
    /// RDS.
    Route,
    /// SDS: the workload's certificate and the trust bundle, per identity.
    Secret,
}

impl ResourceType {
    /// How many types there are: the length of a [`PerType`].
    pub const COUNT: usize = 5;

    /// All types, in the order Envoy should apply them (CDS first).
    pub const ALL: [ResourceType; ResourceType::COUNT] = [
        ResourceType::Cluster,
        ResourceType::Endpoint,
        ResourceType::Listener,
        ResourceType::Route,
        ResourceType::Secret,
    ];

    /// The type URL Envoy uses.
    pub fn type_url(self) -> &'static str {
        match self {
            ResourceType::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            ResourceType::Endpoint => {
                "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
            }
            ResourceType::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            ResourceType::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            ResourceType::Secret => {
                "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
            }
        }
    }

    /// The type for a type URL.
    pub fn from_type_url(url: &str) -> Option<ResourceType> {
        ResourceType::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// Short name for metrics and debug output: cds, eds, lds, rds, sds.
    pub fn short(self) -> &'static str {
        match self {
            ResourceType::Cluster => "cds",
            ResourceType::Endpoint => "eds",
            ResourceType::Listener => "lds",
            ResourceType::Route => "rds",
            ResourceType::Secret => "sds",
        }
    }

    /// Position in a [`PerType`].
    fn position(self) -> usize {
        self as usize
    }

    /// Whether a client subscribes to every resource of the type by default (SotW
    /// responses then carry the whole set).
    pub fn is_wildcard_by_default(self) -> bool {
        matches!(self, ResourceType::Cluster | ResourceType::Listener)
    }
}

impl std::fmt::Display for ResourceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.short())
    }
}

/// One value per resource type, indexed by the type itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PerType<T>([T; ResourceType::COUNT]);

impl<T> PerType<T> {
    /// A value for every type, made by `f`.
    pub fn from_fn(mut f: impl FnMut(ResourceType) -> T) -> PerType<T> {
        PerType(ResourceType::ALL.map(&mut f))
    }

    /// Every type with its value, in [`ResourceType::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (ResourceType, &T)> {
        ResourceType::ALL.into_iter().zip(self.0.iter())
    }
}

impl<T> std::ops::Index<ResourceType> for PerType<T> {
    type Output = T;
    fn index(&self, t: ResourceType) -> &T {
        &self.0[t.position()]
    }
}

impl<T> std::ops::IndexMut<ResourceType> for PerType<T> {
    fn index_mut(&mut self, t: ResourceType) -> &mut T {
        &mut self.0[t.position()]
    }
}

/// One encoded resource with its content version.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// Resource name.
    pub name: Arc<str>,
    /// Hash of the encoded body.
    pub version: u64,
    /// The resource packed as `Any`.
    pub body: Arc<Any>,
}

impl Resource {
    /// Encodes a message as a resource.
    pub fn new<M: Message + Name>(name: impl Into<Arc<str>>, message: &M) -> Resource {
        Resource::from_any(
            name,
            Any {
                type_url: M::type_url(),
                value: message.encode_to_vec(),
            },
        )
    }

    /// Wraps an already packed resource (also used by tests to serve arbitrary bytes).
    pub fn from_any(name: impl Into<Arc<str>>, body: Any) -> Resource {
        let version = xxh3_64(&body.value);
        Resource {
            name: name.into(),
            version,
            body: Arc::new(body),
        }
    }

    /// The version as sent on the wire.
    pub fn version_string(&self) -> String {
        format!("{:016x}", self.version)
    }

    /// Contribution of this resource to its type's version (order-independent).
    pub fn fingerprint(&self) -> u64 {
        xxh3_64(self.name.as_bytes()).rotate_left(17) ^ self.version
    }
}
