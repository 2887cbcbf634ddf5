//! EndpointSlices: the ready endpoints of each Service, with the Pod behind each one (for
//! subsets). A slice change dirties its Service's endpoints only.

use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::{Index, IndexKind, Kind, ObjectKey};
use std::collections::BTreeSet;
use std::sync::Arc;

/// The label that ties a slice to its Service.
pub(crate) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// One endpoint of a slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointModel {
    /// The first address of the endpoint.
    pub address: String,
    /// Ready per the slice (absent means ready).
    pub ready: bool,
    /// The Pod behind the endpoint, when the slice says.
    pub pod: Option<ObjectKey>,
    /// Its zone (the EndpointSlice controller copies it from the pod's node).
    pub zone: Option<Arc<str>>,
}

/// What translation needs of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceModel {
    /// The Service the slice belongs to (label `kubernetes.io/service-name`).
    pub service: ObjectKey,
    /// Port name to port number.
    pub ports: Vec<(String, u16)>,
    /// Endpoints.
    pub endpoints: Vec<EndpointModel>,
}

impl IndexKind for EndpointSlice {
    fn apply(index: &mut Index, slice: EndpointSlice) {
        let key = Kind::EndpointSlice.key(&slice.metadata);
        let labels = slice.metadata.labels.as_ref();
        let Some(service_name) = labels.and_then(|l| l.get(SERVICE_NAME_LABEL)) else {
            // A slice without the label belongs to no Service: nothing routes to it.
            Self::delete(index, &key);
            return;
        };
        let service = ObjectKey::new(key.namespace.clone(), service_name.clone());
        let ports = slice
            .ports
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|p| Some((p.name.unwrap_or_default(), u16::try_from(p.port?).ok()?)))
            .collect();
        // FQDN slices name hosts, not addresses Envoy can connect to by IP.
        let by_ip = slice.address_type != "FQDN";
        let endpoints = slice
            .endpoints
            .into_iter()
            .filter(|_| by_ip)
            .filter_map(|ep| {
                let address = ep.addresses.into_iter().next()?;
                // Absent means ready; a terminating endpoint is not ready (its `serving`
                // may still be true, but it takes no new traffic).
                let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true)
                    && !ep
                        .conditions
                        .as_ref()
                        .and_then(|c| c.terminating)
                        .unwrap_or(false);
                let pod = ep
                    .target_ref
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| {
                        Some(ObjectKey::new(
                            r.namespace.unwrap_or_else(|| key.namespace.clone()),
                            r.name?,
                        ))
                    });
                Some(EndpointModel {
                    address,
                    ready,
                    pod,
                    zone: ep.zone.filter(|z| !z.is_empty()).map(Arc::from),
                })
            })
            .collect();
        let model = SliceModel {
            service: service.clone(),
            ports,
            endpoints,
        };
        let old = index.slices.get(&key);
        if old == Some(&model) {
            return;
        }
        // A pod's zone decides its proxy's profile, and the Services it backs its inbound
        // listener: say whose changed.
        let placed = |m: &SliceModel| -> BTreeSet<(ObjectKey, ObjectKey, Option<Arc<str>>)> {
            m.endpoints
                .iter()
                .filter_map(|e| Some((e.pod.clone()?, m.service.clone(), e.zone.clone())))
                .collect()
        };
        let before = old.map(placed).unwrap_or_default();
        let after = placed(&model);
        if old.is_some_and(|o| o.ports != model.ports) {
            // Named target ports resolve through the slice: authorization by port moves.
            index
                .placement_changes
                .pods
                .extend(after.iter().map(|(pod, _, _)| pod.clone()));
        }
        index.placement_changes.pods.extend(
            before
                .symmetric_difference(&after)
                .map(|(pod, _, _)| pod.clone()),
        );
        unlink(index, &key);
        for pod in model.endpoints.iter().filter_map(|e| e.pod.clone()) {
            let services = index.services_by_pod.entry(pod).or_default();
            if !services.contains(&service) {
                services.push(service.clone());
            }
        }
        index
            .slices_by_service
            .entry(service.clone())
            .or_default()
            .insert(key.clone());
        index.slices.insert(key, model);
        index.dirty.endpoints.insert(service);
    }

    fn delete(index: &mut Index, key: &ObjectKey) {
        let Some(old) = unlink(index, key) else {
            return;
        };
        // Its pods' zones are unknown now, and they back one Service less.
        index
            .placement_changes
            .pods
            .extend(old.endpoints.iter().filter_map(|e| e.pod.clone()));
    }

    fn keys(index: &Index) -> Vec<ObjectKey> {
        index.slices.keys().cloned().collect()
    }
}

/// Removes a slice and the links it made; the slice, if there was one.
fn unlink(index: &mut Index, key: &ObjectKey) -> Option<SliceModel> {
    let old = index.slices.remove(key)?;
    if let Some(set) = index.slices_by_service.get_mut(&old.service) {
        set.remove(key);
        if set.is_empty() {
            index.slices_by_service.remove(&old.service);
        }
    }
    // Forget pod -> service links no remaining slice of the service backs (one pass
    // over the remaining slices, not one per pod: Services can have thousands).
    let remaining: std::collections::HashSet<&ObjectKey> = index
        .slices_for(&old.service)
        .flat_map(|s| s.endpoints.iter().filter_map(|e| e.pod.as_ref()))
        .collect();
    let unlinked: Vec<&ObjectKey> = old
        .endpoints
        .iter()
        .filter_map(|e| e.pod.as_ref())
        .filter(|pod| !remaining.contains(pod))
        .collect();
    for pod in unlinked {
        if let Some(set) = index.services_by_pod.get_mut(pod) {
            set.retain(|s| *s != old.service);
            if set.is_empty() {
                index.services_by_pod.remove(pod);
            }
        }
    }
    index.dirty.endpoints.insert(old.service.clone());
    Some(old)
}

impl Index {
    /// A pod's zone, as the EndpointSlices of the Services it backs say (the EndpointSlice
    /// controller copies it from the pod's node); None for a pod that backs no Service or
    /// whose node has no zone.
    pub fn pod_zone(&self, pod: &ObjectKey) -> Option<Arc<str>> {
        self.pod_endpoints(pod).find_map(|e| e.zone.clone())
    }

    /// The addresses the EndpointSlices of the Services a pod backs give it.
    pub fn pod_addresses(&self, pod: &ObjectKey) -> Vec<String> {
        self.pod_endpoints(pod).map(|e| e.address.clone()).collect()
    }

    /// The pod's endpoints in the slices of the Services it backs.
    fn pod_endpoints<'a>(&'a self, pod: &'a ObjectKey) -> impl Iterator<Item = &'a EndpointModel> {
        self.services_by_pod
            .get(pod)
            .into_iter()
            .flatten()
            .flat_map(|svc| self.slices_for(svc))
            .flat_map(|slice| &slice.endpoints)
            .filter(move |e| e.pod.as_ref() == Some(pod))
    }

    /// The slices of a Service, in key order.
    pub fn slices_for<'a>(
        &'a self,
        service: &ObjectKey,
    ) -> impl Iterator<Item = &'a SliceModel> + 'a {
        self.slices_by_service
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(move |k| self.slices.get(k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Event;
    use crate::testing::mk_slice;
    use crate::Object;

    #[test]
    fn a_pod_in_two_slices_of_one_service_is_linked_once_and_unlinked_with_the_last() {
        let mut index = Index::new();
        for slice in ["s1", "s2"] {
            index.apply(Event::apply(Object::EndpointSlice(mk_slice(
                "default",
                slice,
                "reviews",
                "http",
                9080,
                &[("10.0.0.1", "p")],
            ))));
        }
        let pod = ObjectKey::new("default", "p");
        assert_eq!(
            index.services_by_pod[&pod],
            [ObjectKey::new("default", "reviews")]
        );
        index.apply(Event::Delete(
            Kind::EndpointSlice,
            ObjectKey::new("default", "s1"),
        ));
        assert_eq!(index.services_by_pod[&pod].len(), 1);
        index.apply(Event::Delete(
            Kind::EndpointSlice,
            ObjectKey::new("default", "s2"),
        ));
        assert!(!index.services_by_pod.contains_key(&pod));
    }
}
