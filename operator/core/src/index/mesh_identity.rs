//! MeshIdentity: the mesh's trust domain, CA and mTLS mode (cluster-scoped, one named
//! `mesh`). Kept as given; nothing is translated from it yet.

use weir_api::MeshIdentity;

use super::{Index, IndexKind, Kind, ObjectKey};

impl IndexKind for MeshIdentity {
    fn apply(index: &mut Index, identity: MeshIdentity) {
        let key = Kind::MeshIdentity.key(&identity.metadata);
        index.identities.insert(key.name, identity);
    }

    fn delete(index: &mut Index, key: &ObjectKey) {
        index.identities.remove(&key.name);
    }

    fn keys(index: &Index) -> Vec<ObjectKey> {
        index
            .identities
            .keys()
            .map(|name| ObjectKey::new("", name.clone()))
            .collect()
    }
}

impl Index {
    /// The MeshIdentity objects.
    pub fn identities(&self) -> impl Iterator<Item = &MeshIdentity> {
        self.identities.values()
    }
}
