//! The hash map the core keys by object names.

/// Hash maps keyed by object names: ahash is several times faster than SipHash on these
/// keys and still randomly seeded, so names chosen by users cannot force collisions.
pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;
