//! MeshIdentity: the mesh's trust domain, CA source, workload certificate lifetime and
//! default mTLS mode. Only the one named `mesh` counts; without it, the defaults apply
//! (trust domain cluster.local, a generated CA, 24 h certificates, STRICT).

use std::time::Duration;
use weir_api::{CaSource, MeshIdentity, MtlsMode};

use super::{Index, IndexKind, Kind, ObjectKey};

/// The MeshIdentity that configures the mesh.
pub const MESH_IDENTITY_NAME: &str = "mesh";

/// The mesh's identity settings, with the defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityConfig {
    /// `spiffe://<trust_domain>/...`.
    pub trust_domain: String,
    /// Where the CA comes from.
    pub ca: CaSource,
    /// Lifetime of workload certificates.
    pub workload_ttl: Duration,
    /// Default inbound mTLS mode.
    pub mtls_mode: MtlsMode,
    /// What a workload allows where no policy decides.
    pub default_authorization: weir_api::DefaultAuthorization,
    /// What is wrong with the MeshIdentity, when something is (the defaults apply there).
    pub problem: Option<String>,
}

/// Workload certificates live at least this long (the CRD says the same).
pub const MIN_WORKLOAD_TTL: Duration = Duration::from_secs(60);
/// And at most this long.
pub const MAX_WORKLOAD_TTL: Duration = Duration::from_secs(720 * 3600);

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            trust_domain: crate::mesh::DEFAULT_TRUST_DOMAIN.into(),
            ca: CaSource::default(),
            workload_ttl: crate::mesh::DEFAULT_WORKLOAD_CERT_TTL,
            mtls_mode: MtlsMode::Strict,
            default_authorization: weir_api::DefaultAuthorization::AllowAll,
            problem: None,
        }
    }
}

impl IdentityConfig {
    /// The settings of a MeshIdentity; invalid values keep their defaults and say why.
    pub fn from_spec(spec: &weir_api::MeshIdentitySpec) -> IdentityConfig {
        let defaults = IdentityConfig::default();
        let mut problems = Vec::new();
        let trust_domain = if crate::identity::valid_trust_domain(&spec.trust_domain) {
            spec.trust_domain.clone()
        } else {
            problems.push(format!(
                "spec.trustDomain {:?} is not a valid trust domain: use lower-case letters, digits, '.', '-' and '_'",
                spec.trust_domain
            ));
            defaults.trust_domain
        };
        let workload_ttl = match spec.workload_cert_ttl.to_std() {
            Ok(ttl) if (MIN_WORKLOAD_TTL..=MAX_WORKLOAD_TTL).contains(&ttl) => ttl,
            Ok(ttl) => {
                problems.push(format!(
                    "spec.workloadCertTTL {ttl:?} is out of bounds: give 1m to 720h"
                ));
                defaults.workload_ttl
            }
            Err(err) => {
                problems.push(format!("spec.workloadCertTTL: {err}"));
                defaults.workload_ttl
            }
        };
        IdentityConfig {
            trust_domain,
            ca: spec.ca.clone(),
            workload_ttl,
            mtls_mode: spec.mtls.mode,
            default_authorization: spec.authorization.default,
            problem: (!problems.is_empty()).then(|| problems.join("; ")),
        }
    }
}

impl IndexKind for MeshIdentity {
    fn apply(index: &mut Index, identity: MeshIdentity) {
        let key = Kind::MeshIdentity.key(&identity.metadata);
        index.identities.insert(key.name, identity);
        index.identity_changed();
    }

    fn delete(index: &mut Index, key: &ObjectKey) {
        index.identities.remove(&key.name);
        index.identity_changed();
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

    /// The mesh's identity settings (from the MeshIdentity `mesh`, or the defaults).
    pub fn mesh_identity(&self) -> &IdentityConfig {
        &self.identity
    }

    /// Recomputes the settings; a new trust domain changes every cluster's peer checks.
    fn identity_changed(&mut self) {
        let config = self
            .identities
            .get(MESH_IDENTITY_NAME)
            .map(|m| IdentityConfig::from_spec(&m.spec))
            .unwrap_or_default();
        if config == self.identity {
            return;
        }
        if config.trust_domain != self.identity.trust_domain
            || config.mtls_mode != self.identity.mtls_mode
        {
            // Peer identities and which endpoints speak mTLS depend on both.
            self.mark_all_dirty();
        }
        self.identity = config;
        self.placement_changes.all = true;
    }
}
