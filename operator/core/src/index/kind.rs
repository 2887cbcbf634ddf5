//! The kinds the index reads: for each, its API identity, its scope, how a source must watch
//! it, how an object is keyed, and how a JSON document becomes an [`Object`]. Both sources
//! (the Kubernetes watchers and the local directory) derive their work from this table, so a
//! new kind is added here and in its own module under `index/`, nowhere else.

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use weir_api::gateway_api::{GRPCRoute, HTTPRoute, GATEWAY_API_VERSION};
use weir_api::{MeshIdentity, TrafficPolicy};

use super::ObjectKey;

/// Declares [`Kind`] and [`Kind::ALL`] from one list of variants, so that a variant cannot
/// be added without being in `ALL` (every `match` below must then handle it too).
macro_rules! kinds {
    ($(#[$meta:meta])* pub enum Kind { $($(#[$variant_meta:meta])* $variant:ident,)+ }) => {
        $(#[$meta])*
        pub enum Kind {
            $($(#[$variant_meta])* $variant,)+
        }

        impl Kind {
            /// Every kind, in the order sources list them (the order of declaration).
            pub const ALL: [Kind; [$(Kind::$variant),+].len()] = [$(Kind::$variant),+];
        }
    };
}

kinds! {
    /// A kind the index understands.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub enum Kind {
        /// core/v1 Service.
        Service,
        /// discovery.k8s.io/v1 EndpointSlice.
        EndpointSlice,
        /// core/v1 Pod.
        Pod,
        /// weir.dev/v1alpha1 TrafficPolicy.
        TrafficPolicy,
        /// weir.dev/v1alpha1 MeshIdentity.
        MeshIdentity,
        /// core/v1 Namespace.
        Namespace,
        /// gateway.networking.k8s.io/v1 HTTPRoute (optional: Gateway API's CRDs).
        HttpRoute,
        /// gateway.networking.k8s.io/v1 GRPCRoute (optional: Gateway API's CRDs).
        GrpcRoute,
    }
}

/// Whether objects of a kind live in a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Namespaced: keyed by namespace and name.
    Namespaced,
    /// Cluster-scoped: keyed by name, with an empty namespace.
    Cluster,
}

/// What a watching source must ask the API server for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchMode {
    /// Whole objects.
    Full,
    /// Metadata only: the index keeps nothing else of these objects.
    Metadata,
}

/// A Kubernetes object the index understands.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum Object {
    /// core/v1 Service.
    Service(Service),
    /// discovery.k8s.io/v1 EndpointSlice.
    EndpointSlice(EndpointSlice),
    /// core/v1 Pod.
    Pod(Pod),
    /// weir.dev/v1alpha1 TrafficPolicy.
    TrafficPolicy(TrafficPolicy),
    /// weir.dev/v1alpha1 MeshIdentity.
    MeshIdentity(MeshIdentity),
    /// core/v1 Namespace.
    Namespace(Namespace),
    /// gateway.networking.k8s.io/v1 HTTPRoute.
    HttpRoute(HTTPRoute),
    /// gateway.networking.k8s.io/v1 GRPCRoute.
    GrpcRoute(GRPCRoute),
}

impl Kind {
    /// `apiVersion` as written in manifests.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Service | Kind::Pod | Kind::Namespace => "v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::TrafficPolicy | Kind::MeshIdentity => weir_api::API_VERSION,
            Kind::HttpRoute | Kind::GrpcRoute => GATEWAY_API_VERSION,
        }
    }

    /// `kind` as written in manifests.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Pod => "Pod",
            Kind::TrafficPolicy => "TrafficPolicy",
            Kind::HttpRoute => "HTTPRoute",
            Kind::GrpcRoute => "GRPCRoute",
            Kind::MeshIdentity => "MeshIdentity",
            Kind::Namespace => "Namespace",
        }
    }

    /// The resource's plural name in API paths.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::Pod => "pods",
            Kind::TrafficPolicy => "trafficpolicies",
            Kind::MeshIdentity => "meshidentities",
            Kind::Namespace => "namespaces",
            Kind::HttpRoute => "httproutes",
            Kind::GrpcRoute => "grpcroutes",
        }
    }

    /// Whether the kind's CRD is someone else's and may be absent: the Kubernetes source
    /// watches it only while the API serves it.
    pub fn optional(self) -> bool {
        matches!(self, Kind::HttpRoute | Kind::GrpcRoute)
    }

    /// Namespaced or cluster-scoped.
    pub fn scope(self) -> Scope {
        match self {
            Kind::MeshIdentity | Kind::Namespace => Scope::Cluster,
            _ => Scope::Namespaced,
        }
    }

    /// Whole objects or metadata only.
    pub fn watch_mode(self) -> WatchMode {
        match self {
            // Labels and annotations are all the index keeps of a Namespace.
            Kind::Namespace => WatchMode::Metadata,
            // A Pod's service account is in its spec (its identity).
            _ => WatchMode::Full,
        }
    }

    /// A label selector narrowing what a source lists, if any.
    pub fn label_selector(self) -> Option<&'static str> {
        match self {
            // Slices without the label belong to no Service; the index ignores them.
            Kind::EndpointSlice => Some(super::endpoint_slice::SERVICE_NAME_LABEL),
            _ => None,
        }
    }

    /// The kind of a manifest's `apiVersion` and `kind`.
    pub fn of(api_version: &str, kind: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.api_version() == api_version && k.name() == kind)
    }

    /// The key of an object of this kind: cluster-scoped kinds have an empty namespace,
    /// namespaced ones default to `default` as kubectl does.
    pub fn key(self, meta: &ObjectMeta) -> ObjectKey {
        let namespace = match self.scope() {
            Scope::Cluster => String::new(),
            Scope::Namespaced => meta.namespace.clone().unwrap_or_else(|| "default".into()),
        };
        ObjectKey::new(namespace, meta.name.clone().unwrap_or_default())
    }

    /// Decodes a JSON object of this kind; the error names the object and the field path.
    pub fn decode(self, json: serde_json::Value) -> Result<Object, String> {
        let name = json
            .pointer("/metadata/name")
            .and_then(|v| v.as_str())
            .unwrap_or("<unnamed>")
            .to_string();
        let kind = self.name();
        Ok(match self {
            Kind::Service => Object::Service(decode(json, kind, &name)?),
            Kind::EndpointSlice => Object::EndpointSlice(decode(json, kind, &name)?),
            Kind::Pod => Object::Pod(decode(json, kind, &name)?),
            Kind::TrafficPolicy => Object::TrafficPolicy(decode(json, kind, &name)?),
            Kind::HttpRoute => Object::HttpRoute(decode(json, kind, &name)?),
            Kind::GrpcRoute => Object::GrpcRoute(decode(json, kind, &name)?),
            Kind::MeshIdentity => Object::MeshIdentity(decode(json, kind, &name)?),
            Kind::Namespace => Object::Namespace(decode(json, kind, &name)?),
        })
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Object {
    /// The object's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Pod(_) => Kind::Pod,
            Object::TrafficPolicy(_) => Kind::TrafficPolicy,
            Object::HttpRoute(_) => Kind::HttpRoute,
            Object::GrpcRoute(_) => Kind::GrpcRoute,
            Object::MeshIdentity(_) => Kind::MeshIdentity,
            Object::Namespace(_) => Kind::Namespace,
        }
    }

    fn meta(&self) -> &ObjectMeta {
        match self {
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::TrafficPolicy(o) => &o.metadata,
            Object::HttpRoute(o) => &o.metadata,
            Object::GrpcRoute(o) => &o.metadata,
            Object::MeshIdentity(o) => &o.metadata,
            Object::Namespace(o) => &o.metadata,
        }
    }

    /// Kind and key of the object.
    pub fn id(&self) -> (Kind, ObjectKey) {
        let kind = self.kind();
        (kind, kind.key(self.meta()))
    }
}

/// A manifest document as a source reads it: one of ours, another kind (skipped), or an
/// error that names what to fix.
pub fn decode_document(json: serde_json::Value) -> Result<Option<Object>, String> {
    let field = |name: &str| {
        json.get(name)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let (api_version, kind) = (field("apiVersion"), field("kind"));
    if kind.is_empty() || api_version.is_empty() {
        return Err("document has no apiVersion or kind: every document needs both".into());
    }
    let Some(known) = Kind::of(&api_version, &kind) else {
        if matches!(kind.as_str(), "TrafficPolicy" | "MeshIdentity") {
            let name = json
                .pointer("/metadata/name")
                .and_then(|v| v.as_str())
                .unwrap_or("<unnamed>");
            return Err(format!(
                "{kind} {name}: apiVersion {api_version} is not served: use {}",
                weir_api::API_VERSION
            ));
        }
        return Ok(None);
    };
    let object = known.decode(json)?;
    if object.id().1.name.is_empty() {
        return Err(format!("{kind} has no metadata.name: name every object"));
    }
    Ok(Some(object))
}

fn decode<T: serde::de::DeserializeOwned>(
    json: serde_json::Value,
    kind: &str,
    name: &str,
) -> Result<T, String> {
    serde_path_to_error::deserialize(json).map_err(|err| {
        let path = err.path().to_string();
        format!("{kind} {name}: field {path}: {}", err.inner())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_decides_the_key_in_one_place() {
        let meta = ObjectMeta {
            name: Some("mesh".into()),
            namespace: Some("ignored".into()),
            ..Default::default()
        };
        assert_eq!(Kind::MeshIdentity.key(&meta), ObjectKey::new("", "mesh"));
        let meta = ObjectMeta {
            name: Some("reviews".into()),
            ..Default::default()
        };
        assert_eq!(
            Kind::Service.key(&meta),
            ObjectKey::new("default", "reviews")
        );
    }

    #[test]
    fn a_document_that_does_not_decode_names_the_object_and_field() {
        let json = serde_json::json!({
            "apiVersion": "weir.dev/v1alpha1",
            "kind": "TrafficPolicy",
            "metadata": {"name": "bad", "namespace": "default"},
            "spec": {"targetRef": {"service": "reviews"}, "http": [{"timeout": 5}]}
        });
        let err = decode_document(json).unwrap_err();
        assert!(err.contains("TrafficPolicy bad"), "{err}");
        assert!(err.contains("spec.http[0].timeout"), "{err}");
    }

    #[test]
    fn other_kinds_are_skipped_and_a_wrong_version_of_ours_is_named() {
        let deployment = serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}});
        assert!(decode_document(deployment).unwrap().is_none());
        let old = serde_json::json!({"apiVersion": "weir.dev/v1", "kind": "TrafficPolicy", "metadata": {"name": "x"}});
        let err = decode_document(old).unwrap_err();
        assert!(err.contains("use weir.dev/v1alpha1"), "{err}");
    }
}
