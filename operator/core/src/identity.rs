//! Workload identity: SPIFFE IDs, the mesh certificate authority, workload certificates
//! and when to renew them, and the SDS secrets that carry them to Envoy. Pure: the caller
//! supplies the time and persists the CA.
//!
//! ```text
//! CA material (generated, or PEM from a Secret / a directory)
//!   --CertificateAuthority--> issue(SpiffeId, ttl, now) --> WorkloadCert (ECDSA P-256,
//!                             URI SAN spiffe://<td>/ns/<ns>/sa/<sa>, chain, key)
//! WorkloadCert --secrets::workload--> Secret "workload" (SDS)
//! trust anchors --secrets::trust_bundle--> Secret "trust-bundle" (SDS)
//! renewal_at(issued, ttl, seed) --> about half-life, jittered per workload
//! ```
//!
//! Private keys live in [`PrivateKey`], whose Debug output is redacted, so a key can never
//! end up in a log line by accident.

use std::time::{Duration, SystemTime};

/// A SPIFFE ID of a workload: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    /// The trust domain, e.g. `cluster.local`.
    pub trust_domain: String,
    /// The workload's namespace.
    pub namespace: String,
    /// Its service account.
    pub service_account: String,
}

/// What is wrong with an identity or with CA material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// Not a SPIFFE ID of the `ns/<ns>/sa/<sa>` form.
    #[error("{0:?} is not a workload SPIFFE ID: expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>")]
    BadSpiffeId(String),
    /// A trust domain that cannot be a URI host.
    #[error("trust domain {0:?} is not valid: use lower-case letters, digits, '.', '-' and '_' (e.g. cluster.local)")]
    BadTrustDomain(String),
    /// The CA certificate or key does not parse or does not match.
    #[error("the CA {what} is not usable: {detail}")]
    BadCa {
        /// Which part.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Generation(String),
}

impl SpiffeId {
    /// The ID of a service account.
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> SpiffeId {
        SpiffeId {
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        }
    }

    /// Parses `spiffe://<td>/ns/<ns>/sa/<sa>`.
    pub fn parse(uri: &str) -> Result<SpiffeId, IdentityError> {
        let bad = || IdentityError::BadSpiffeId(uri.to_string());
        let rest = uri
            .strip_prefix(crate::mesh::SPIFFE_PREFIX)
            .ok_or_else(bad)?;
        let (trust_domain, path) = rest.split_once('/').ok_or_else(bad)?;
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            ["ns", ns, "sa", sa]
                if !ns.is_empty() && !sa.is_empty() && valid_trust_domain(trust_domain) =>
            {
                Ok(SpiffeId::new(trust_domain, ns, sa))
            }
            _ => Err(bad()),
        }
    }

    /// The URI of every identity in a trust domain, for prefix matching.
    pub fn trust_domain_prefix(trust_domain: &str) -> String {
        format!("{}{trust_domain}/", crate::mesh::SPIFFE_PREFIX)
    }
}

impl std::fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

/// Whether a trust domain can be the host of a SPIFFE URI (the SPIFFE spec's charset).
pub fn valid_trust_domain(td: &str) -> bool {
    !td.is_empty()
        && td.len() <= 255
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// A PEM private key: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey(String);

impl PrivateKey {
    /// The PEM text, for the one place that sends it to its owner.
    pub fn pem(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

/// A certificate issued by the mesh CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    /// The certificate, then the CA's chain up to (not including) the root, PEM.
    pub chain_pem: String,
    /// Its key.
    pub key: PrivateKey,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

/// A certificate authority that issues the mesh's certificates.
pub struct CertificateAuthority {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// The CA's own certificate, PEM.
    pub cert_pem: String,
    /// Certificates between the CA and the root, appended to issued chains (empty for a
    /// root CA).
    pub intermediates_pem: String,
    /// The trust anchors workloads verify peers against, PEM.
    pub roots_pem: String,
    /// When the CA certificate expires.
    pub not_after: SystemTime,
    /// The CA's key, PEM (for persisting a generated CA in its Secret).
    key: PrivateKey,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Lifetime of a generated root.
pub const GENERATED_ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Issued certificates start this long before now, for peers whose clocks run behind.
const BACKDATE: Duration = Duration::from_secs(60);

/// A time as RFC 3339 (UTC, whole seconds), as Kubernetes writes times.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    k8s_openapi::jiff::Timestamp::from_second(secs as i64)
        .unwrap_or_default()
        .to_string()
}

fn to_offset(t: SystemTime) -> time::OffsetDateTime {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn from_offset(t: time::OffsetDateTime) -> SystemTime {
    let secs = t.unix_timestamp();
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        SystemTime::UNIX_EPOCH
    }
}

fn generation_error(err: rcgen::Error) -> IdentityError {
    IdentityError::Generation(err.to_string())
}

impl CertificateAuthority {
    /// A new self-signed ECDSA P-256 root for `trust_domain`.
    pub fn generate(
        trust_domain: &str,
        now: SystemTime,
    ) -> Result<CertificateAuthority, IdentityError> {
        if !valid_trust_domain(trust_domain) {
            return Err(IdentityError::BadTrustDomain(trust_domain.to_string()));
        }
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).map_err(generation_error)?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "weir");
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("weir mesh root {trust_domain}"),
        );
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = to_offset(now - BACKDATE);
        params.not_after = to_offset(now + GENERATED_ROOT_VALIDITY);
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(generation_error)?;
        let cert = params.self_signed(&key).map_err(generation_error)?;
        let cert_pem = cert.pem();
        let key_pem = PrivateKey(key.serialize_pem());
        Ok(CertificateAuthority {
            not_after: from_offset(params.not_after),
            issuer: rcgen::Issuer::new(params, key),
            roots_pem: cert_pem.clone(),
            cert_pem,
            intermediates_pem: String::new(),
            key: key_pem,
        })
    }

    /// A CA from PEM, as cert-manager writes a Secret: `tls.crt` (the CA certificate,
    /// possibly followed by its chain), `tls.key`, and `ca.crt` (the root; the last
    /// certificate of `tls.crt` when absent). The key must belong to the certificate.
    pub fn from_pem(
        cert_pem: &str,
        key_pem: &str,
        root_pem: Option<&str>,
    ) -> Result<CertificateAuthority, IdentityError> {
        let bad = |what, detail: String| IdentityError::BadCa { what, detail };
        let certs = pem_blocks(cert_pem, "CERTIFICATE");
        let first = certs
            .first()
            .ok_or_else(|| bad("certificate (tls.crt)", "no PEM CERTIFICATE block".into()))?;
        let key =
            rcgen::KeyPair::from_pem(key_pem).map_err(|e| bad("key (tls.key)", e.to_string()))?;
        let info = CertInfo::parse(first)
            .ok_or_else(|| bad("certificate (tls.crt)", "not an X.509 certificate".into()))?;
        if !info.is_ca {
            return Err(bad(
                "certificate (tls.crt)",
                "it is not a CA certificate (basicConstraints CA:TRUE): give a root or an intermediate CA".into(),
            ));
        }
        if info.public_key != key.public_key_raw() {
            return Err(bad(
                "key (tls.key)",
                "it does not belong to the certificate in tls.crt: give the CA's own key".into(),
            ));
        }
        let roots_pem = match root_pem.filter(|r| !r.trim().is_empty()) {
            Some(root) => root.to_string(),
            None => certs.last().cloned().unwrap_or_default(),
        };
        // What a peer needs between a leaf and a trust anchor: the CA and its chain, less
        // whatever is itself an anchor.
        let intermediates_pem = certs
            .iter()
            .filter(|c| !roots_pem.contains(c.trim()))
            .cloned()
            .collect::<String>();
        let not_after = info.not_after;
        let issuer = rcgen::Issuer::from_ca_cert_pem(first, key)
            .map_err(|e| bad("certificate (tls.crt)", e.to_string()))?;
        Ok(CertificateAuthority {
            issuer,
            cert_pem: first.clone(),
            intermediates_pem,
            roots_pem,
            not_after,
            key: PrivateKey(key_pem.to_string()),
        })
    }

    /// The CA's key, for persisting the CA where it was generated.
    pub fn key(&self) -> &PrivateKey {
        &self.key
    }

    /// A workload certificate for `id`, valid for `ttl` from `now` (and a minute before).
    pub fn issue_workload(
        &self,
        id: &SpiffeId,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<IssuedCert, IdentityError> {
        let uri = id.to_string();
        let san = rcgen::SanType::URI(
            rcgen::string::Ia5String::try_from(uri.clone()).map_err(generation_error)?,
        );
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![san];
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyEncipherment,
        ];
        self.issue(params, ttl, now)
    }

    /// A serving certificate for DNS names and IP addresses (the xDS server, the webhook).
    pub fn issue_server(
        &self,
        names: &[String],
        ttl: Duration,
        now: SystemTime,
    ) -> Result<IssuedCert, IdentityError> {
        let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(generation_error)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(first) = names.first() {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, first.clone());
        }
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params, ttl, now)
    }

    fn issue(
        &self,
        mut params: rcgen::CertificateParams,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<IssuedCert, IdentityError> {
        // Never past the CA's own expiry: a chain is only as valid as its shortest link.
        let not_after = (now + ttl).min(self.not_after);
        params.not_before = to_offset(now - BACKDATE);
        params.not_after = to_offset(not_after);
        params.use_authority_key_identifier_extension = true;
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(generation_error)?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(generation_error)?;
        Ok(IssuedCert {
            chain_pem: format!("{}{}", cert.pem(), self.intermediates_pem),
            key: PrivateKey(key.serialize_pem()),
            not_before: from_offset(params.not_before),
            not_after: from_offset(params.not_after),
        })
    }
}

impl CertificateAuthority {
    /// A link from `newer` to this CA: `newer`'s certificate (same subject, same key, same
    /// key identifier) signed by this CA. A client that still trusts only this CA's root
    /// verifies a chain from `newer` through the link; one that trusts `newer` never needs
    /// it. Used to keep proxies started before a rotation able to reach the operator.
    pub fn cross_sign(
        &self,
        newer: &CertificateAuthority,
        now: SystemTime,
    ) -> Result<String, IdentityError> {
        let bad = |detail: String| IdentityError::Generation(format!("cross-signing: {detail}"));
        let (_, pem) = x509_parser::pem::parse_x509_pem(newer.cert_pem.as_bytes())
            .map_err(|e| bad(e.to_string()))?;
        let cert = pem.parse_x509().map_err(|e| bad(e.to_string()))?;
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        params.distinguished_name = distinguished_name(cert.subject());
        if let Ok(Some(ski)) = cert
            .get_extension_unique(&x509_parser::oid_registry::OID_X509_EXT_SUBJECT_KEY_IDENTIFIER)
        {
            if let x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(id) =
                ski.parsed_extension()
            {
                params.key_identifier_method = rcgen::KeyIdMethod::PreSpecified(id.0.to_vec());
            }
        }
        params.not_before = to_offset(now - BACKDATE);
        params.not_after = to_offset(self.not_after.min(newer.not_after));
        params.use_authority_key_identifier_extension = true;
        let subject_key =
            rcgen::KeyPair::from_pem(newer.key.pem()).map_err(|e| bad(e.to_string()))?;
        let link = params
            .signed_by(&subject_key, &self.issuer)
            .map_err(generation_error)?;
        Ok(link.pem())
    }
}

/// rcgen's form of a parsed subject, attribute by attribute, in order.
fn distinguished_name(name: &x509_parser::x509::X509Name<'_>) -> rcgen::DistinguishedName {
    use x509_parser::oid_registry as oids;
    let mut dn = rcgen::DistinguishedName::new();
    for attr in name.iter_attributes() {
        let oid = attr.attr_type();
        let Ok(value) = attr.as_str() else { continue };
        let ty = if *oid == oids::OID_X509_COMMON_NAME {
            rcgen::DnType::CommonName
        } else if *oid == oids::OID_X509_ORGANIZATION_NAME {
            rcgen::DnType::OrganizationName
        } else if *oid == oids::OID_X509_ORGANIZATIONAL_UNIT {
            rcgen::DnType::OrganizationalUnitName
        } else if *oid == oids::OID_X509_COUNTRY_NAME {
            rcgen::DnType::CountryName
        } else if *oid == oids::OID_X509_STATE_OR_PROVINCE_NAME {
            rcgen::DnType::StateOrProvinceName
        } else if *oid == oids::OID_X509_LOCALITY_NAME {
            rcgen::DnType::LocalityName
        } else {
            match oid.iter() {
                Some(arcs) => rcgen::DnType::CustomDnType(arcs.collect()),
                None => continue,
            }
        };
        dn.push(ty, value);
    }
    dn
}

/// What the mesh reads of an X.509 certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// basicConstraints CA:TRUE.
    pub is_ca: bool,
    /// End of validity.
    pub not_after: SystemTime,
    /// The raw public key.
    pub public_key: Vec<u8>,
    /// URI subject alternative names.
    pub uris: Vec<String>,
}

impl CertInfo {
    /// Parses the first certificate of a PEM text.
    pub fn parse(cert_pem: &str) -> Option<CertInfo> {
        use x509_parser::extensions::GeneralName;
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).ok()?;
        let cert = pem.parse_x509().ok()?;
        let secs = cert.validity().not_after.timestamp();
        let uris = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::URI(u) => Some(u.to_string()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(CertInfo {
            is_ca: cert.is_ca(),
            not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64),
            public_key: cert.public_key().subject_public_key.data.to_vec(),
            uris,
        })
    }
}

/// The PEM blocks of one label in a text, each with its armour.
pub fn pem_blocks(text: &str, label: &str) -> Vec<String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(&begin) {
        let Some(stop) = rest[start..].find(&end) else {
            break;
        };
        let block = &rest[start..start + stop + end.len()];
        out.push(format!("{block}\n"));
        rest = &rest[start + stop + end.len()..];
    }
    out
}

/// When a certificate issued at `issued` for `ttl` should be renewed: at half its life,
/// shifted by up to a tenth of the life either way by `seed` (a hash of the workload),
/// so that a mesh's certificates do not all renew at once.
pub fn renewal_at(issued: SystemTime, ttl: Duration, seed: u64) -> SystemTime {
    let half = ttl / 2;
    let spread = ttl / 10;
    // seed in [0, 2^64) mapped to [-spread, +spread].
    let fraction = (seed % 10_001) as f64 / 10_000.0; // 0..=1
    let offset = spread.mul_f64(fraction * 2.0);
    issued + half + offset - spread
}

/// SDS secrets: what Envoy reads its certificate and trust anchors from.
pub mod secrets {
    use envoy_types::pb::envoy::config::core::v3::{data_source::Specifier, DataSource};
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        secret::Type, CertificateValidationContext, Secret, TlsCertificate,
    };

    use super::IssuedCert;
    use crate::resources::Resource;

    /// The workload's own certificate and key.
    pub const WORKLOAD: &str = "workload";
    /// The trust anchors peers are verified against.
    pub const TRUST_BUNDLE: &str = "trust-bundle";

    fn inline(text: &str) -> Option<DataSource> {
        Some(DataSource {
            specifier: Some(Specifier::InlineString(text.to_string())),
            ..Default::default()
        })
    }

    /// The `workload` secret.
    pub fn workload(cert: &IssuedCert) -> Resource {
        Resource::new(
            WORKLOAD,
            &Secret {
                name: WORKLOAD.into(),
                r#type: Some(Type::TlsCertificate(TlsCertificate {
                    certificate_chain: inline(&cert.chain_pem),
                    private_key: inline(cert.key.pem()),
                    ..Default::default()
                })),
            },
        )
    }

    /// The `trust-bundle` secret (every root in force, during a CA rotation old and new).
    pub fn trust_bundle(roots_pem: &str) -> Resource {
        Resource::new(
            TRUST_BUNDLE,
            &Secret {
                name: TRUST_BUNDLE.into(),
                r#type: Some(Type::ValidationContext(CertificateValidationContext {
                    trusted_ca: inline(roots_pem),
                    ..Default::default()
                })),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    #[test]
    fn spiffe_ids_format_and_parse_and_refuse_other_shapes() {
        let id = SpiffeId::new("cluster.local", "shop", "cart");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/cart");
        assert_eq!(SpiffeId::parse(&id.to_string()).unwrap(), id);
        for bad in [
            "spiffe://cluster.local/ns/shop",
            "spiffe://cluster.local/sa/cart/ns/shop",
            "https://cluster.local/ns/shop/sa/cart",
            "spiffe://Cluster.Local/ns/shop/sa/cart",
            "spiffe://cluster.local/ns//sa/cart",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad}");
        }
        assert!(valid_trust_domain("example.org"));
        assert!(!valid_trust_domain("example.org:443"));
    }

    #[test]
    fn a_workload_certificate_carries_exactly_its_spiffe_id_and_the_ttl() {
        let ca = CertificateAuthority::generate("cluster.local", now()).unwrap();
        let id = SpiffeId::new("cluster.local", "shop", "cart");
        let cert = ca
            .issue_workload(&id, Duration::from_secs(3600), now())
            .unwrap();
        let info = CertInfo::parse(&cert.chain_pem).unwrap();
        assert_eq!(info.uris, ["spiffe://cluster.local/ns/shop/sa/cart"]);
        assert!(!info.is_ca);
        assert_eq!(cert.not_after, now() + Duration::from_secs(3600));
        assert_eq!(cert.not_before, now() - Duration::from_secs(60));
        assert!(cert.key.pem().contains("PRIVATE KEY"));
        assert_eq!(format!("{:?}", cert.key), "PrivateKey(<redacted>)");
        assert!(
            !format!("{cert:?}").contains("PRIVATE KEY"),
            "keys never show in Debug"
        );
    }

    #[test]
    fn a_ca_survives_its_pem_round_trip_and_keeps_issuing_for_the_same_root() {
        let ca = CertificateAuthority::generate("cluster.local", now()).unwrap();
        let again = CertificateAuthority::from_pem(&ca.cert_pem, ca.key().pem(), None).unwrap();
        assert_eq!(again.roots_pem, ca.roots_pem);
        assert_eq!(again.not_after, ca.not_after);
        let cert = again
            .issue_workload(
                &SpiffeId::new("cluster.local", "a", "b"),
                Duration::from_secs(60),
                now(),
            )
            .unwrap();
        assert_eq!(
            pem_blocks(&cert.chain_pem, "CERTIFICATE").len(),
            1,
            "a root signs leaves directly"
        );
        let other = CertificateAuthority::generate("other", now()).unwrap();
        let err =
            CertificateAuthority::from_pem(&other.cert_pem, ca.key().pem(), None).unwrap_err();
        assert!(
            err.to_string()
                .contains("does not belong to the certificate"),
            "{err}"
        );
        let not_ca = ca
            .issue_server(
                &["weir.weir-system.svc".into()],
                Duration::from_secs(60),
                now(),
            )
            .unwrap();
        let err =
            CertificateAuthority::from_pem(&not_ca.chain_pem, not_ca.key.pem(), None).unwrap_err();
        assert!(err.to_string().contains("not a CA certificate"), "{err}");
    }

    #[test]
    fn renewals_fall_around_half_life_and_spread_by_workload() {
        let ttl = Duration::from_secs(24 * 3600);
        let earliest = now() + ttl * 4 / 10;
        let latest = now() + ttl * 6 / 10;
        let mut seen = std::collections::BTreeSet::new();
        for seed in [0, 1, 4_999, 5_000, 10_000, u64::MAX, 123_456_789] {
            let at = renewal_at(now(), ttl, seed);
            assert!(at >= earliest && at <= latest, "{seed}: {at:?}");
            seen.insert(at);
        }
        assert!(seen.len() >= 5, "renewals spread: {seen:?}");
        assert_eq!(renewal_at(now(), ttl, 5_000), now() + ttl / 2);
    }

    #[test]
    fn certificates_never_outlive_their_ca() {
        let ca = CertificateAuthority::generate("cluster.local", now()).unwrap();
        let cert = ca
            .issue_workload(
                &SpiffeId::new("cluster.local", "a", "b"),
                GENERATED_ROOT_VALIDITY * 2,
                now(),
            )
            .unwrap();
        assert_eq!(cert.not_after, ca.not_after);
    }
}
