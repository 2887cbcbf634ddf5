//! Envoy resources as the snapshot cache holds them: encoded once, named, and versioned by a
//! content hash so that the same input always yields the same version (also across operator
//! restarts, which lets a reconnecting delta client skip what it already has).

use bytes::Bytes;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use std::sync::{Arc, OnceLock};
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
    /// VHDS: virtual hosts of scoped proxies' route tables, by scope and on demand.
    VirtualHost,
    /// SDS: the workload's certificate and the trust bundle, per identity.
    Secret,
}

impl ResourceType {
    /// How many types there are: the length of a [`PerType`].
    pub const COUNT: usize = 6;

    /// All types, in the order Envoy should apply them (CDS first).
    pub const ALL: [ResourceType; ResourceType::COUNT] = [
        ResourceType::Cluster,
        ResourceType::Endpoint,
        ResourceType::Listener,
        ResourceType::Route,
        ResourceType::VirtualHost,
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
            ResourceType::VirtualHost => "type.googleapis.com/envoy.config.route.v3.VirtualHost",
            ResourceType::Secret => {
                "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
            }
        }
    }

    /// The type for a type URL.
    pub fn from_type_url(url: &str) -> Option<ResourceType> {
        ResourceType::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// Short name for metrics and debug output: cds, eds, lds, rds, vhds, sds.
    pub fn short(self) -> &'static str {
        match self {
            ResourceType::Cluster => "cds",
            ResourceType::Endpoint => "eds",
            ResourceType::Listener => "lds",
            ResourceType::Route => "rds",
            ResourceType::VirtualHost => "vhds",
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
        // VHDS starts with an empty subscription that means "what the server wants me to
        // have" (the proxy's scope), and adds names on demand.
        matches!(
            self,
            ResourceType::Cluster | ResourceType::Listener | ResourceType::VirtualHost
        )
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
    /// The resource packed as `Any`, with its wire forms (shared by every stream).
    pub body: Arc<Body>,
    /// Names a proxy asked for on demand (VHDS) that resolved to this resource: sent as
    /// its aliases, so that the requests waiting for them go on.
    pub aliases: Vec<Arc<str>>,
}

/// A packed resource and, made on first use and then shared by every stream that sends
/// it, the bytes it occupies in a response of either ADS variant.
#[derive(Debug, Default)]
pub struct Body {
    any: Any,
    delta_entry: OnceLock<Bytes>,
    sotw_entry: OnceLock<Bytes>,
}

impl PartialEq for Body {
    fn eq(&self, other: &Body) -> bool {
        self.any == other.any
    }
}

impl std::ops::Deref for Body {
    type Target = Any;
    fn deref(&self) -> &Any {
        &self.any
    }
}

/// Field numbers of the responses' repeated resources (envoy.service.discovery.v3).
const RESOURCES_FIELD: u32 = 2;
/// Fields of `Resource` (the delta entry).
const RESOURCE_VERSION_FIELD: u32 = 1;
const RESOURCE_BODY_FIELD: u32 = 2;
const RESOURCE_NAME_FIELD: u32 = 3;
const RESOURCE_ALIASES_FIELD: u32 = 4;

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
    pub fn from_any(name: impl Into<Arc<str>>, any: Any) -> Resource {
        let version = xxh3_64(&any.value);
        Resource {
            name: name.into(),
            version,
            body: Arc::new(Body {
                any,
                ..Default::default()
            }),
            aliases: Vec::new(),
        }
    }

    /// The version as sent on the wire.
    pub fn version_string(&self) -> String {
        format!("{:016x}", self.version)
    }

    /// Contribution of this resource to its type's version (order-independent).
    pub fn fingerprint(&self) -> u64 {
        let name = self.aliases.first().map_or(&*self.name, |a| &**a);
        xxh3_64(name.as_bytes()).rotate_left(17) ^ self.version
    }

    /// The resource as one entry of `DeltaDiscoveryResponse.resources` (field 2, holding a
    /// `Resource` with version, body and name), encoded once.
    pub fn delta_entry(&self) -> Bytes {
        if !self.aliases.is_empty() {
            // Per stream and rare (a first call): encoded when sent, not kept.
            return Bytes::from(self.encode_delta_entry());
        }
        self.body
            .delta_entry
            .get_or_init(|| Bytes::from(self.encode_delta_entry()))
            .clone()
    }

    fn encode_delta_entry(&self) -> Vec<u8> {
        use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
        let version = self.version_string();
        let any_len = self.body.any.encoded_len();
        let inner = field_len(version.len())
            + 1
            + encoded_len_varint(any_len as u64)
            + any_len
            + field_len(self.name.len())
            + self
                .aliases
                .iter()
                .map(|a| field_len(a.len()))
                .sum::<usize>();
        let mut buf = Vec::with_capacity(1 + encoded_len_varint(inner as u64) + inner);
        encode_key(RESOURCES_FIELD, WireType::LengthDelimited, &mut buf);
        encode_varint(inner as u64, &mut buf);
        prost::encoding::string::encode(RESOURCE_VERSION_FIELD, &version, &mut buf);
        prost::encoding::message::encode(RESOURCE_BODY_FIELD, &self.body.any, &mut buf);
        prost::encoding::string::encode(RESOURCE_NAME_FIELD, &self.name.to_string(), &mut buf);
        for alias in &self.aliases {
            prost::encoding::string::encode(RESOURCE_ALIASES_FIELD, &alias.to_string(), &mut buf);
        }
        buf
    }

    /// The resource as one entry of `DiscoveryResponse.resources` (field 2, the `Any`),
    /// encoded once.
    pub fn sotw_entry(&self) -> Bytes {
        self.body
            .sotw_entry
            .get_or_init(|| {
                let mut buf = Vec::with_capacity(8 + self.body.any.encoded_len());
                prost::encoding::message::encode(RESOURCES_FIELD, &self.body.any, &mut buf);
                Bytes::from(buf)
            })
            .clone()
    }
}

/// Bytes a length-delimited field of `len` bytes takes (one-byte key).
fn field_len(len: usize) -> usize {
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}
