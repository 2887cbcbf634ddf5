//! Pods: their labels, which decide subset membership. A label change dirties the endpoints
//! of the Services the pod backs.

use k8s_openapi::api::core::v1::Pod;
use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Index, IndexKind, Kind, ObjectKey};

impl IndexKind for Pod {
    fn apply(index: &mut Index, pod: Pod) {
        let key = Kind::Pod.key(&pod.metadata);
        let labels = pod.metadata.labels.unwrap_or_default();
        if index.pods.get(&key).map(|l| l.as_ref()) == Some(&labels) {
            return;
        }
        let labels = match index.label_sets.get(&labels) {
            Some(shared) => shared.clone(),
            None => {
                let labels = Arc::new(labels);
                index.label_sets.insert(labels.clone());
                labels
            }
        };
        if let Some(old) = index.pods.insert(key.clone(), labels) {
            index.release_labels(old);
        }
        index.dirty_pod_services(&key);
    }

    fn delete(index: &mut Index, key: &ObjectKey) {
        if let Some(old) = index.pods.remove(key) {
            index.release_labels(old);
            index.dirty_pod_services(key);
        }
    }

    fn keys(index: &Index) -> Vec<ObjectKey> {
        index.pods.keys().cloned().collect()
    }
}

impl Index {
    /// A Pod's labels.
    pub fn pod_labels(&self, key: &ObjectKey) -> Option<&BTreeMap<String, String>> {
        self.pods.get(key).map(|l| l.as_ref())
    }

    fn dirty_pod_services(&mut self, pod: &ObjectKey) {
        if let Some(services) = self.services_by_pod.get(pod) {
            self.dirty.endpoints.extend(services.iter().cloned());
        }
    }

    /// Drops a label set from the shared ones when no pod has it any more.
    fn release_labels(&mut self, labels: Arc<BTreeMap<String, String>>) {
        // One reference here, one in `label_sets`: the last pod with them is gone.
        if Arc::strong_count(&labels) == 2 {
            self.label_sets.remove(&labels);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Event;
    use crate::testing::mk_pod;
    use crate::Object;

    #[test]
    fn pods_with_the_same_labels_share_one_map_and_the_last_one_frees_it() {
        let mut index = Index::new();
        let v1 = [("app", "reviews"), ("version", "v1")];
        for name in ["a", "b", "c"] {
            index.apply(Event::apply(Object::Pod(mk_pod("default", name, &v1))));
        }
        assert_eq!(index.label_sets.len(), 1);
        let a = index.pods.get(&ObjectKey::new("default", "a")).unwrap();
        let c = index.pods.get(&ObjectKey::new("default", "c")).unwrap();
        assert!(Arc::ptr_eq(a, c));

        // Relabel one: a second set; delete the rest: only the relabelled one's set stays.
        let v2 = [("app", "reviews"), ("version", "v2")];
        index.apply(Event::apply(Object::Pod(mk_pod("default", "a", &v2))));
        assert_eq!(index.label_sets.len(), 2);
        for name in ["b", "c"] {
            index.apply(Event::Delete(Kind::Pod, ObjectKey::new("default", name)));
        }
        assert_eq!(index.label_sets.len(), 1);
        assert_eq!(
            index.pod_labels(&ObjectKey::new("default", "a")).unwrap()["version"],
            "v2"
        );
    }
}
