//! Services: how they are addressed (ClusterIP, headless, ExternalName) and their TCP ports
//! with the protocol hints users give (`appProtocol`, port names), which is what routing
//! needs of them.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Index, IndexKind, Kind, ObjectKey};

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// Port name (may be empty for a single-port Service).
    pub name: String,
    /// The Service port clients use.
    pub port: u16,
    /// The pod port, by number or by name.
    pub target_port: Option<IntOrString>,
    /// `appProtocol`, when given.
    pub app_protocol: Option<String>,
}

/// How clients reach a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addressing {
    /// A virtual IP (type ClusterIP, NodePort or LoadBalancer).
    ClusterIp(String),
    /// No virtual IP (`clusterIP: None`): clients reach pods by their own IPs and names.
    Headless,
    /// A DNS alias for a name outside the cluster (type ExternalName).
    ExternalName(String),
}

/// What translation needs of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceModel {
    /// ClusterIP, when allocated (not for headless or ExternalName Services).
    pub cluster_ip: Option<String>,
    /// How clients reach it.
    pub addressing: Addressing,
    /// TCP ports.
    pub ports: Vec<ServicePort>,
}

impl IndexKind for Service {
    fn apply(index: &mut Index, svc: Service) {
        let key = Kind::Service.key(&svc.metadata);
        let spec = svc.spec.unwrap_or_default();
        let cluster_ip = spec.cluster_ip.filter(|ip| !ip.is_empty() && ip != "None");
        let addressing = match (spec.type_.as_deref(), &spec.external_name, &cluster_ip) {
            (Some("ExternalName"), Some(name), _) if !name.is_empty() => {
                Addressing::ExternalName(name.trim_end_matches('.').to_string())
            }
            (_, _, Some(ip)) => Addressing::ClusterIp(ip.clone()),
            _ => Addressing::Headless,
        };
        let ports = spec
            .ports
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|p| {
                Some(ServicePort {
                    name: p.name.unwrap_or_default(),
                    port: u16::try_from(p.port).ok()?,
                    target_port: p.target_port,
                    app_protocol: p.app_protocol,
                })
            })
            .collect();
        let model = ServiceModel {
            cluster_ip,
            addressing,
            ports,
        };
        if index.services.get(&key) != Some(&model) {
            let ports_moved = index.services.get(&key).map(|m| &m.ports) != Some(&model.ports);
            index.services.insert(key.clone(), model);
            index.dirty_service(&key);
            if ports_moved && !index.policies_for(&key).is_empty() {
                // Authorization rules name Service ports: the pods' enforcement moves.
                index.authorization_moved(&std::collections::BTreeSet::from([key.clone()]));
            }
        }
    }

    fn delete(index: &mut Index, key: &ObjectKey) {
        if index.services.remove(key).is_some() {
            index.dirty_service(key);
        }
    }

    fn keys(index: &Index) -> Vec<ObjectKey> {
        index.services.keys().cloned().collect()
    }
}

impl Index {
    /// All Services, in key order.
    pub fn services(&self) -> impl Iterator<Item = (&ObjectKey, &ServiceModel)> {
        self.services.iter()
    }

    /// One Service.
    pub fn service(&self, key: &ObjectKey) -> Option<&ServiceModel> {
        self.services.get(key)
    }

    /// The Service whose ClusterIP is `address` (a scan: for a first call or a question,
    /// not for every request).
    pub fn service_at(&self, address: &str) -> Option<ObjectKey> {
        self.services
            .iter()
            .find(|(_, s)| s.cluster_ip.as_deref() == Some(address))
            .map(|(k, _)| k.clone())
    }

    /// Marks a Service dirty, and the targets of policies elsewhere that route to it: they
    /// see it appear or vanish.
    pub(super) fn dirty_service(&mut self, key: &ObjectKey) {
        self.dirty.services.insert(key.clone());
        let referrers = self.policies_by_backend.get(key).into_iter().flatten();
        let targets = referrers
            .filter_map(|p| self.policies.get(p))
            .flat_map(|e| e.targets.iter().cloned());
        self.dirty.services.extend(targets.collect::<Vec<_>>());
        let route_targets = self.route_referrers(key);
        self.dirty.services.extend(route_targets);
    }
}
