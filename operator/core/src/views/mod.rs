//! The operator's admin documents as types: what `/status`, `/debug/proxies` and
//! `/debug/config` return. The operator builds and serializes them; a client (the kubectl
//! plugin) deserializes them with the same types.
//!
//! ```text
//! GET /status                -> status::MeshStatusView
//! GET /debug/proxies         -> Vec<proxies::ProxyView>
//! GET /debug/config?node=ID  -> config::ConfigView
//! ```
//!
//! Every type here is plain data (strings, numbers, options, maps) and depends on nothing
//! else in the core, so that the documents stay what they are when the core's own types
//! change; the operator converts into them. Field names are the contract and are tested
//! against literal documents: camelCase where a document follows Kubernetes status
//! (`/status` at the top and in `status`, the ports of `/debug/config`), snake_case where it
//! always has been (a policy's `observed_generation`, the object counts, the proxy records).

pub mod config;
pub mod proxies;
pub mod status;

#[cfg(test)]
pub(crate) mod tests {
    use serde::de::DeserializeOwned;
    use serde::Serialize;

    /// `value` survives serializing and deserializing unchanged.
    pub fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: &T) {
        let text = serde_json::to_string(value).expect("serializes");
        let back: T = serde_json::from_str(&text).expect("deserializes");
        assert_eq!(&back, value, "{text}");
    }

    /// `document` parses as a `T` that serializes back to the same document (no field
    /// dropped, renamed or added); returns the parsed value.
    pub fn parses_as<T: Serialize + DeserializeOwned>(document: &str) -> T {
        let parsed: T = serde_json::from_str(document).expect("parses");
        let expected: serde_json::Value = serde_json::from_str(document).expect("is JSON");
        assert_eq!(serde_json::to_value(&parsed).expect("serializes"), expected);
        parsed
    }
}
